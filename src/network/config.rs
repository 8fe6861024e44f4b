//! One `Config` for every supported architecture, read from an HF `config.json` or GGUF metadata.
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;

/// The two families the engine implements. Llama covers Llama 2/3, SmolLM2 and Mistral;
/// Qwen2 is the Llama block with q/k/v biases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// RMSNorm, RoPE, SwiGLU MLP, separate q/k/v projections.
    Llama,
    /// LayerNorm, learned positions, GELU-tanh MLP, fused c_attn, biases everywhere.
    Gpt2,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The architecture name as the checkpoint gives it, e.g. "LlamaForCausalLM" or GGUF "llama".
    pub architecture: String,
    pub family: Family,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Features of each head that RoPE rotates (the first ones; Phi-4-mini's `partial_rotary_factor` 0.75);
    /// `head_dim` for every other model.
    pub rotary_dim: usize,
    /// Phi-3's `longrope` (old name `su`) scaling: per-frequency factors, short or long by sequence length.
    pub longrope: Option<LongRope>,
    /// Biases on q/k/v (Qwen2, or Llama's `attention_bias`); GPT-2 has all biases regardless.
    pub qkv_bias: bool,
    /// Bias on the attention output projection (Llama's `attention_bias` also covers o_proj).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub tie_embeddings: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3's `q_norm`/`k_norm`).
    pub qk_norm: bool,
    /// Layers that skip RoPE (SmolLM3's `no_rope_layers` zeros); empty: every layer applies it.
    pub no_rope: Vec<bool>,
    /// Mistral-style sliding-window attention span; sequences longer than it are refused (not implemented).
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Llama 3.1's frequency-dependent RoPE rescaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

/// LongRoPE (`rope_scaling.type` = `longrope` or `su`), as transformers' `_compute_longrope_parameters` reads it:
/// inverse frequency i is 1 / (factor_i · θ^(2i/rotary_dim)), with the long factors for a sequence longer than
/// `original_max_positions` and the short ones otherwise; cos and sin are scaled by `attention_factor`.
#[derive(Clone, Debug, PartialEq)]
pub struct LongRope {
    pub short_factor: Vec<f32>,
    pub long_factor: Vec<f32>,
    pub original_max_positions: usize,
    pub attention_factor: f32,
}

/// The subset of HF config.json keys the supported models use (Llama/Mistral/Qwen2 and GPT-2 names).
#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5 nests rope_theta and the scaling type here.
    rope_parameters: Option<serde_json::Value>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    /// SmolLM3: 1 = the layer applies RoPE, 0 = it does not.
    no_rope_layers: Option<Vec<u8>>,
    no_rope_layer_interval: Option<usize>,
    /// Phi-3: the fraction of each head RoPE rotates (transformers ≥ 5 moves it into rope_parameters), and the
    /// pretraining context LongRoPE's factors are chosen against.
    partial_rotary_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    hidden_act: Option<String>,
    // GPT-2 names
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_inner: Option<usize>,
    n_positions: Option<usize>,
    layer_norm_epsilon: Option<f32>,
    activation_function: Option<String>,
}

const SUPPORTED: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, SmolLM3ForCausalLM, Phi3ForCausalLM, \
     GPT2LMHeadModel";

fn need<T>(v: Option<T>, key: &str, path: &Path) -> Result<T> {
    v.with_context(|| format!("{}: missing required key \"{key}\"", path.display()))
}

/// SmolLM3's layers without RoPE: `no_rope_layers` (1 = RoPE, 0 = none), else every `no_rope_layer_interval`-th
/// layer (transformers' default, 4).
fn smollm3_no_rope(c: &HfConfig, path: &Path) -> Result<Vec<bool>> {
    if c.use_sliding_window == Some(true) {
        bail!(
            "{}: use_sliding_window (SmolLM3's sliding-window layers) is not supported yet; set it to false if the \
             rows fit the window anyway",
            path.display()
        );
    }
    let layers = need(c.num_hidden_layers, "num_hidden_layers", path)?;
    match &c.no_rope_layers {
        Some(l) if l.len() < layers => bail!(
            "{}: no_rope_layers has {} entries for {layers} layers; it needs one per layer",
            path.display(),
            l.len()
        ),
        Some(l) => Ok(l[..layers].iter().map(|&r| r == 0).collect()),
        None => {
            let every = c.no_rope_layer_interval.unwrap_or(4).max(1);
            Ok((0..layers).map(|i| (i + 1) % every == 0).collect())
        }
    }
}

/// Phi-3's partial rotary factor and LongRoPE scaling, read as transformers' Phi3Config reads them: the top-level
/// `original_max_position_embeddings` (default 4096) wins over the one in the scaling; `factor` defaults to
/// max_position_embeddings / original, the attention factor to √(1 + ln factor / ln original) above 1.
fn phi3_rope(
    c: &HfConfig,
    rope: Option<&serde_json::Value>,
    head_dim: usize,
    path: &Path,
) -> Result<(usize, Option<LongRope>)> {
    let p = path.display();
    let partial = c.partial_rotary_factor.or_else(|| rope?.get("partial_rotary_factor")?.as_f64()).unwrap_or(1.0);
    let rotary_dim = (head_dim as f64 * partial) as usize;
    if !(partial > 0.0 && partial <= 1.0) || rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
        bail!(
            "{p}: partial_rotary_factor {partial} of head dim {head_dim} gives {rotary_dim} rotated features; \
             RoPE needs an even, non-zero count of at most the head dim"
        );
    }
    let Some(v) = rope else { return Ok((rotary_dim, None)) };
    match v.get("rope_type").or(v.get("type")).and_then(|t| t.as_str()).unwrap_or("") {
        "default" => return Ok((rotary_dim, None)),
        // transformers' Phi3Config reads the old names as longrope
        "longrope" | "su" | "yarn" => {}
        other => bail!("{p}: rope_scaling type \"{other}\" is not supported for Phi-3 (supported: longrope, su)"),
    }
    let factors = |key: &str| -> Result<Vec<f32>> {
        let list: Vec<f32> = v
            .get(key)
            .and_then(|l| l.as_array())
            .and_then(|l| l.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
            .with_context(|| format!("{p}: rope_scaling.{key} must be a list of numbers for longrope scaling"))?;
        if list.len() != rotary_dim / 2 {
            bail!(
                "{p}: rope_scaling.{key} has {} entries; rotary dim {rotary_dim} needs {}",
                list.len(),
                rotary_dim / 2
            );
        }
        Ok(list)
    };
    let original = c.original_max_position_embeddings.unwrap_or(4096);
    let max_positions = c.max_position_embeddings.unwrap_or(2048);
    let factor = v.get("factor").and_then(|f| f.as_f64()).unwrap_or(max_positions as f64 / original as f64);
    let attention_factor = match v.get("attention_factor").and_then(|f| f.as_f64()) {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    let longrope = LongRope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_positions: original,
        attention_factor: attention_factor as f32,
    };
    Ok((rotary_dim, Some(longrope)))
}

/// Token ids in config.json are a number, a list of numbers, or null.
fn token_ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

impl Config {
    /// Reads an HF `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let c: HfConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid Hugging Face config.json", path.display()))?;
        let architecture = c
            .architectures
            .first()
            .cloned()
            .or(c.model_type.clone())
            .with_context(|| format!("{}: neither \"architectures\" nor \"model_type\" is set", path.display()))?;
        let family = match architecture.as_str() {
            "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM" | "Qwen3ForCausalLM"
            | "SmolLM3ForCausalLM" | "Phi3ForCausalLM" | "llama" | "mistral" | "qwen2" | "qwen3" | "smollm3"
            | "phi3" => Family::Llama,
            "GPT2LMHeadModel" | "gpt2" => Family::Gpt2,
            other => bail!("{}: architecture \"{other}\" is not supported (supported: {SUPPORTED})", path.display()),
        };
        let is_qwen2 = architecture.to_lowercase().starts_with("qwen2");
        let is_qwen3 = architecture.to_lowercase().starts_with("qwen3");
        let is_smollm3 = architecture.to_lowercase().starts_with("smollm3");
        let is_phi3 = architecture.to_lowercase().starts_with("phi3");
        let bos = token_ids(&c.bos_token_id).first().copied();
        let eos = token_ids(&c.eos_token_id);
        let cfg = match family {
            Family::Llama => {
                if let Some(act) = &c.hidden_act
                    && act != "silu"
                {
                    bail!("{}: hidden_act \"{act}\" is not supported (only \"silu\")", path.display());
                }
                let hidden = need(c.hidden_size, "hidden_size", path)?;
                let heads = need(c.num_attention_heads, "num_attention_heads", path)?;
                // Phi-3 has no biases, whatever attention_bias / mlp_bias say (transformers reads neither for it)
                let attention_bias = !is_phi3 && c.attention_bias.unwrap_or(false);
                let head_dim = c.head_dim.unwrap_or(hidden / heads.max(1));
                let rope = c.rope_scaling.as_ref().or(c.rope_parameters.as_ref()).filter(|v| !v.is_null());
                let (rotary_dim, longrope) = match is_phi3 {
                    true => phi3_rope(&c, rope, head_dim, path)?,
                    false => (head_dim, None),
                };
                Config {
                    architecture,
                    family,
                    hidden_size: hidden,
                    intermediate_size: need(c.intermediate_size, "intermediate_size", path)?,
                    num_layers: need(c.num_hidden_layers, "num_hidden_layers", path)?,
                    num_heads: heads,
                    num_kv_heads: c.num_key_value_heads.unwrap_or(heads),
                    head_dim,
                    vocab_size: need(c.vocab_size, "vocab_size", path)?,
                    max_positions: c.max_position_embeddings.unwrap_or(2048),
                    norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
                    rope_theta: c
                        .rope_theta
                        .or_else(|| c.rope_parameters.as_ref()?.get("rope_theta")?.as_f64().map(|v| v as f32))
                        .unwrap_or(10000.0),
                    rope_scaling: if is_phi3 { None } else { parse_rope_scaling(rope, path)? },
                    rotary_dim,
                    longrope,
                    qkv_bias: is_qwen2 || attention_bias,
                    o_bias: attention_bias,
                    qk_norm: is_qwen3,
                    no_rope: if is_smollm3 { smollm3_no_rope(&c, path)? } else { vec![] },
                    mlp_bias: !is_phi3 && c.mlp_bias.unwrap_or(false),
                    tie_embeddings: c.tie_word_embeddings.unwrap_or(false),
                    sliding_window: c.sliding_window.filter(|_| c.use_sliding_window != Some(false)),
                    bos_token_id: bos,
                    eos_token_ids: eos,
                }
            }
            Family::Gpt2 => {
                if let Some(act) = &c.activation_function
                    && !matches!(act.as_str(), "gelu_new" | "gelu_pytorch_tanh")
                {
                    bail!(
                        "{}: activation_function \"{act}\" is not supported (only gelu_new / gelu_pytorch_tanh)",
                        path.display()
                    );
                }
                let hidden = need(c.n_embd, "n_embd", path)?;
                let heads = need(c.n_head, "n_head", path)?;
                Config {
                    architecture,
                    family,
                    hidden_size: hidden,
                    intermediate_size: c.n_inner.unwrap_or(4 * hidden),
                    num_layers: need(c.n_layer, "n_layer", path)?,
                    num_heads: heads,
                    num_kv_heads: heads,
                    head_dim: hidden / heads.max(1),
                    vocab_size: need(c.vocab_size, "vocab_size", path)?,
                    max_positions: need(c.n_positions, "n_positions", path)?,
                    norm_eps: c.layer_norm_epsilon.unwrap_or(1e-5),
                    rope_theta: 0.0,
                    rope_scaling: None,
                    rotary_dim: hidden / heads.max(1),
                    longrope: None,
                    qkv_bias: true,
                    o_bias: true,
                    qk_norm: false,
                    no_rope: vec![],
                    mlp_bias: true,
                    tie_embeddings: c.tie_word_embeddings.unwrap_or(true),
                    sliding_window: None,
                    bos_token_id: bos,
                    eos_token_ids: eos,
                }
            }
        };
        cfg.validate().with_context(|| format!("{}: inconsistent model config", path.display()))?;
        Ok(cfg)
    }

    /// Phi-3's fused `qkv_proj` and `gate_up_proj` (gate rows first, then up) instead of separate projections.
    pub fn fused_projections(&self) -> bool {
        self.architecture.get(..4).is_some_and(|a| a.eq_ignore_ascii_case("phi3"))
    }

    /// Whether layer `i` applies RoPE.
    pub fn rope_in(&self, i: usize) -> bool {
        !self.no_rope.get(i).copied().unwrap_or(false)
    }

    /// Checks the shape relations the kernels rely on.
    pub fn validate(&self) -> Result<()> {
        let nonzero = [
            ("hidden size", self.hidden_size),
            ("intermediate size", self.intermediate_size),
            ("layers", self.num_layers),
            ("attention heads", self.num_heads),
            ("key/value heads", self.num_kv_heads),
            ("head dim", self.head_dim),
            ("vocab size", self.vocab_size),
            ("max positions", self.max_positions),
        ];
        for (what, v) in nonzero {
            if v == 0 {
                bail!("{what} is 0");
            }
        }
        // Far above any real model, and low enough that products of dimensions (parameter counts, buffer sizes)
        // cannot overflow: a damaged or hostile config fails here, not in an allocation.
        let limits = [
            ("hidden size", self.hidden_size, 1 << 20),
            ("intermediate size", self.intermediate_size, 1 << 22),
            ("layers", self.num_layers, 1 << 12),
            ("attention heads", self.num_heads, 1 << 16),
            ("head dim", self.head_dim, 1 << 16),
            ("vocab size", self.vocab_size, 1 << 24),
            ("max positions", self.max_positions, 1 << 26),
        ];
        for (what, v, max) in limits {
            if v > max {
                bail!("{what} is {v}, above the {max} condlm accepts: the config is damaged");
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            bail!("{} attention heads are not a multiple of {} key/value heads", self.num_heads, self.num_kv_heads);
        }
        if self.family == Family::Llama && !self.head_dim.is_multiple_of(2) {
            bail!("RoPE needs an even head dim, got {}", self.head_dim);
        }
        if self.family == Family::Llama
            && (self.rotary_dim == 0 || self.rotary_dim > self.head_dim || !self.rotary_dim.is_multiple_of(2))
        {
            bail!("RoPE needs an even rotary dim of at most the head dim {}, got {}", self.head_dim, self.rotary_dim);
        }
        if self.family == Family::Gpt2 && self.num_heads * self.head_dim != self.hidden_size {
            bail!("n_embd {} is not divisible by n_head {}", self.hidden_size, self.num_heads);
        }
        Ok(())
    }

    /// RoPE inverse frequencies (rotary_dim/2), as transformers computes them in f32; `long`: LongRoPE's set for
    /// sequences longer than its original context (the same set without LongRoPE).
    pub fn rope_inv_freq(&self, long: bool) -> Vec<f32> {
        let d = self.rotary_dim;
        let base = (0..d / 2).map(|i| self.rope_theta.powf((2 * i) as f32 / d as f32));
        match (&self.rope_scaling, &self.longrope) {
            (_, Some(l)) => {
                let ext = if long { &l.long_factor } else { &l.short_factor };
                base.zip(ext).map(|(b, e)| 1.0 / (e * b)).collect()
            }
            (None, None) => base.map(|b| 1.0 / b).collect(),
            (Some(s), None) => base.map(|b| s.scale(1.0 / b)).collect(),
        }
    }

    /// Parameter count as the checkpoint stores it (tied head counted once).
    pub fn num_parameters(&self) -> usize {
        let (d, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        let head = if self.tie_embeddings { 0 } else { v * d };
        let per_layer = match self.family {
            Family::Llama => {
                let attn = d * (q + 2 * kv) + q * d;
                let bias = if self.qkv_bias { q + 2 * kv } else { 0 } + if self.o_bias { d } else { 0 };
                let mlp = 3 * d * f + if self.mlp_bias { 2 * f + d } else { 0 };
                let qk_norm = if self.qk_norm { 2 * self.head_dim } else { 0 };
                attn + bias + mlp + 2 * d + qk_norm
            }
            Family::Gpt2 => (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 4 * d,
        };
        let norms = match self.family {
            Family::Llama => d,
            Family::Gpt2 => 2 * d + self.max_positions * d,
        };
        v * d + head + self.num_layers * per_layer + norms
    }
}

fn parse_rope_scaling(v: Option<&serde_json::Value>, path: &Path) -> Result<Option<Llama3RopeScaling>> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    let kind = v.get("rope_type").or(v.get("type")).and_then(|t| t.as_str()).unwrap_or("");
    match kind {
        "default" => Ok(None),
        "llama3" => serde_json::from_value(v.clone())
            .map(Some)
            .with_context(|| format!("{}: rope_scaling of type llama3 lacks a field", path.display())),
        other => {
            bail!("{}: rope_scaling type \"{other}\" is not supported (supported: llama3, or none)", path.display())
        }
    }
}

impl Llama3RopeScaling {
    /// Scales one inverse frequency the way transformers' `_compute_llama3_parameters` does.
    fn scale(&self, inv_freq: f32) -> f32 {
        let two_pi = 2.0 * std::f32::consts::PI;
        let low_wavelen = self.original_max_position_embeddings / self.low_freq_factor;
        let high_wavelen = self.original_max_position_embeddings / self.high_freq_factor;
        let wavelen = two_pi / inv_freq;
        if wavelen < high_wavelen {
            inv_freq
        } else if wavelen > low_wavelen {
            inv_freq / self.factor
        } else {
            let smooth = (self.original_max_position_embeddings / wavelen - self.low_freq_factor)
                / (self.high_freq_factor - self.low_freq_factor);
            (1.0 - smooth) * inv_freq / self.factor + smooth * inv_freq
        }
    }
}
