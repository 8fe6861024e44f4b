//! One `Config` for every supported architecture, read from an HF `config.json` or GGUF metadata.
use crate::kernels::activation::GateAct;
pub use crate::kernels::gated_delta::DeltaNetShape;
use crate::kernels::rope::RopeTable;
use crate::network::llama3_rope::Llama3RopeScaling;
use crate::network::yarn_rope::YarnRope;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;

/// The two families the engine implements. Llama covers Llama 2/3, SmolLM2, Mistral, Qwen2/3, SmolLM3 and Gemma 3,
/// whose differences are the flags of [`Config`] (biases, q/k norms, windows, Gemma's norms and GeGLU).
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
    /// YaRN scaling (Qwen2.5's 128k files, Qwen3's long context).
    pub yarn: Option<YarnRope>,
    /// Biases on q/k/v (Qwen2, or Llama's `attention_bias`); GPT-2 has all biases regardless.
    pub qkv_bias: bool,
    /// Bias on the attention output projection (Llama's `attention_bias` also covers o_proj).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub tie_embeddings: bool,
    /// RMSNorm of q and k before RoPE (Qwen3's `q_norm`/`k_norm`): per head, or with `qk_norm_whole` over each row's
    /// whole projection, all heads together (OLMo 2/3).
    pub qk_norm: bool,
    pub qk_norm_whole: bool,
    /// Layers that skip RoPE (SmolLM3's `no_rope_layers` zeros); empty: every layer applies it.
    pub no_rope: Vec<bool>,
    /// Sliding-window attention span (Mistral, Gemma 3's local layers): a position sees the `sliding_window`
    /// most recent positions, itself included.
    pub sliding_window: Option<usize>,
    /// Which layers are sliding layers (Gemma 3's `layer_types`); empty: every layer, when there is a window.
    pub sliding_layers: Vec<bool>,
    /// RoPE base of the sliding layers when it differs from `rope_theta` (Gemma 3's local layers).
    pub rope_local_theta: Option<f32>,
    /// Linear RoPE scaling (position interpolation): the frequencies of `rope_theta`'s layers divided by this
    /// factor (every layer, or the global ones where sliding layers have their own base: Gemma 3 4B/12B/27B's 8).
    pub rope_linear_factor: Option<f32>,
    /// q·k multiplier before the softmax when it is not 1/√head_dim (Gemma 3: query_pre_attn_scalar^-½).
    pub attn_scale: Option<f32>,
    /// The activation of the gated MLP (Llama family): act(gate) ⊙ up.
    pub mlp_act: GateAct,
    /// RMSNorm weights are stored zero-centred and applied as (1 + w) (Gemma).
    pub norm_plus_one: bool,
    /// Gemma 3's block: RMSNorms on the attention and MLP outputs before they join the residual stream
    /// (`post_attention_layernorm`, `post_feedforward_layernorm`); its pre-MLP norm is `pre_feedforward_layernorm`.
    pub sandwich_norms: bool,
    /// Whether the attention and MLP inputs are normed (every model but OLMo 2/3, whose blocks norm only the
    /// sublayers' outputs: `sandwich_norms` without the pre-norms).
    pub pre_norms: bool,
    /// Token embeddings multiplied by √hidden_size (Gemma).
    pub scale_embeddings: bool,
    /// Qwen3.5's linear-attention layers (`layer_types` "linear_attention"): a Gated DeltaNet in place of
    /// attention; empty: none.
    pub linear_layers: Vec<bool>,
    /// The Gated DeltaNet's shape when the model has linear-attention layers.
    pub delta_net: Option<DeltaNetShape>,
    /// Qwen3.5's multimodal RoPE sections (`mrope_section`: features per position axis), kept to be written back;
    /// text has one position on every axis, so they rotate as one table. Empty for other models.
    pub rope_sections: Vec<usize>,
    /// Qwen3.5's attention output gate: q_proj yields, per head, the query then a gate g, and attention's output
    /// is multiplied by σ(g) before o_proj.
    pub attn_output_gate: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
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
    /// Gemma 3 (and transformers ≥ 4.53 for every model with windows): "sliding_attention" / "full_attention".
    layer_types: Option<Vec<String>>,
    sliding_window_pattern: Option<usize>,
    /// Qwen2: layers from this index on use the window (when use_sliding_window).
    max_window_layers: Option<usize>,
    rope_local_base_freq: Option<f32>,
    query_pre_attn_scalar: Option<f32>,
    hidden_activation: Option<String>,
    final_logit_softcapping: Option<f32>,
    attn_logit_softcapping: Option<f32>,
    use_bidirectional_attention: Option<bool>,
    /// Phi-3: the fraction of each head RoPE rotates (transformers ≥ 5 moves it into rope_parameters), and the
    /// pretraining context LongRoPE's factors are chosen against.
    partial_rotary_factor: Option<f64>,
    #[serde(default, deserialize_with = "whole_number")]
    original_max_position_embeddings: Option<usize>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    hidden_act: Option<String>,
    /// Qwen3.5's Gated DeltaNet
    linear_conv_kernel_dim: Option<usize>,
    linear_key_head_dim: Option<usize>,
    linear_value_head_dim: Option<usize>,
    linear_num_key_heads: Option<usize>,
    linear_num_value_heads: Option<usize>,
    full_attention_interval: Option<usize>,
    // GPT-2 names
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_inner: Option<usize>,
    n_positions: Option<usize>,
    layer_norm_epsilon: Option<f32>,
    activation_function: Option<String>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
}

const SUPPORTED: &str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, \
                         Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration (its text model), SmolLM3ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM, Olmo2ForCausalLM, Olmo3ForCausalLM, \
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

/// Gemma 3's RoPE (global base, local base, linear factor of the global layers): `rope_parameters` by layer type
/// (transformers ≥ 5), else `rope_theta` / `rope_local_base_freq` and `rope_scaling` (applied to the global
/// layers, as transformers reads the older configs), else transformers' defaults (1e6, 1e4). The rotary type is
/// default, or linear (the 4B+ models: × 8) on the global layers; any other is an error naming the key.
fn gemma3_rope(c: &HfConfig, path: &Path) -> Result<(f32, f32, Option<f32>)> {
    let by_type = |t: &str| c.rope_parameters.as_ref().and_then(|p| p.get(t)).filter(|v| !v.is_null());
    let mut linear = None;
    for (key, v, global) in [
        ("rope_scaling", c.rope_scaling.as_ref().filter(|v| !v.is_null()), true),
        ("rope_parameters.full_attention", by_type("full_attention"), true),
        ("rope_parameters.sliding_attention", by_type("sliding_attention"), false),
    ] {
        let kind = v.and_then(|v| v.get("rope_type").or(v.get("type"))).and_then(|t| t.as_str());
        match kind {
            None | Some("default") => {}
            Some("linear") if global => {
                let factor = v.and_then(|v| v.get("factor")?.as_f64()).with_context(|| {
                    format!("{}: {key} has rope_type \"linear\" without a numeric factor", path.display())
                })?;
                if !(factor.is_finite() && factor > 0.0) {
                    bail!("{}: {key}.factor is {factor}; linear RoPE scaling needs a positive factor", path.display());
                }
                linear = (factor != 1.0).then_some(factor as f32);
            }
            Some(kind) => {
                bail!("{}: {key} has rope_type \"{kind}\", which condlm does not support for Gemma 3", path.display())
            }
        }
    }
    let theta = |t: &str| by_type(t).and_then(|v| v.get("rope_theta")?.as_f64()).map(|v| v as f32);
    Ok((
        theta("full_attention").or(c.rope_theta).unwrap_or(1_000_000.0),
        theta("sliding_attention").or(c.rope_local_base_freq).unwrap_or(10_000.0),
        linear,
    ))
}

/// OLMo 3's RoPE as transformers' Olmo3Config reads it: the same base on both kinds of layer (default 500 000;
/// `rope_parameters.<type>.rope_theta`, or the top-level `rope_theta`) and YaRN on the full-attention layers only
/// (`rope_parameters.full_attention`, or the top-level `rope_scaling` that transformers moves there).
fn olmo3_rope(c: &HfConfig, max_positions: usize, path: &Path) -> Result<(f32, f32, Scaling)> {
    let by_type = |t: &str| c.rope_parameters.as_ref().and_then(|p| p.get(t)).filter(|v| !v.is_null());
    if c.rope_parameters.as_ref().is_some_and(|p| p.get("rope_type").is_some() || p.get("type").is_some()) {
        bail!(
            "{}: rope_parameters of an OLMo 3 must be given per layer type (\"full_attention\", \
             \"sliding_attention\"); transformers ignores a flat one",
            path.display()
        );
    }
    // transformers 5 updates the nested full-attention object with a legacy rope_scaling
    let legacy = c.rope_scaling.as_ref().filter(|v| !v.is_null());
    let merged = match (by_type("full_attention"), legacy) {
        (Some(serde_json::Value::Object(nested)), Some(serde_json::Value::Object(scaling))) => {
            let mut m = nested.clone();
            m.extend(scaling.clone());
            Some(serde_json::Value::Object(m))
        }
        _ => None,
    };
    let full = merged.as_ref().or(by_type("full_attention")).or(legacy);
    let sliding = by_type("sliding_attention");
    let sliding_kind = sliding.and_then(|v| v.get("rope_type").or(v.get("type"))).and_then(|t| t.as_str());
    if let Some(other) = sliding_kind.filter(|&k| k != "default") {
        bail!(
            "{}: rope_parameters.sliding_attention has rope_type \"{other}\"; OLMo 3's sliding layers take plain RoPE",
            path.display()
        );
    }
    let full_key = if by_type("full_attention").is_some() { "rope_parameters.full_attention" } else { "rope_scaling" };
    let scaling = parse_rope_scaling(full, full_key, c.original_max_position_embeddings, max_positions, path)?;
    let theta = |v: Option<&serde_json::Value>| v.and_then(|v| v.get("rope_theta")?.as_f64()).map(|v| v as f32);
    let base = c.rope_theta.unwrap_or(500_000.0);
    Ok((theta(full).unwrap_or(base), theta(sliding).unwrap_or(base), scaling))
}

/// Which layers use the sliding window: `layer_types` when given; else Gemma 3's `sliding_window_pattern` (every
/// n-th layer global, default 6), OLMo 3's every 4th layer global, Qwen2's `max_window_layers` (layers from it on
/// slide), or every layer (Mistral).
fn sliding_layers(
    c: &HfConfig,
    is_gemma3: bool,
    is_olmo3: bool,
    is_qwen: bool,
    layers: usize,
    path: &Path,
) -> Result<Vec<bool>> {
    if let Some(types) = &c.layer_types {
        if types.len() < layers {
            bail!("{}: layer_types has {} entries for {layers} layers", path.display(), types.len());
        }
        return types[..layers]
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => bail!("{}: layer_types entry \"{other}\" is not supported", path.display()),
            })
            .collect();
    }
    Ok(if is_gemma3 || is_olmo3 {
        let every = if is_olmo3 { 4 } else { c.sliding_window_pattern.unwrap_or(6).max(1) };
        (0..layers).map(|i| (i + 1) % every != 0).collect()
    } else if is_qwen {
        let from = c.max_window_layers.unwrap_or(28);
        (0..layers).map(|i| i >= from).collect()
    } else {
        vec![true; layers]
    })
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
    let rotary_dim = partial_rotary_dim(c, rope, head_dim, 1.0, path)?;
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

/// The features of each head RoPE rotates: `partial_rotary_factor` (top level, else in the RoPE object, else
/// `default`) of the head dim, as transformers truncates it.
fn partial_rotary_dim(
    c: &HfConfig,
    rope: Option<&serde_json::Value>,
    head_dim: usize,
    default: f64,
    path: &Path,
) -> Result<usize> {
    let partial = c.partial_rotary_factor.or_else(|| rope?.get("partial_rotary_factor")?.as_f64()).unwrap_or(default);
    let rotary_dim = (head_dim as f64 * partial) as usize;
    if !(partial > 0.0 && partial <= 1.0) || rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
        bail!(
            "{}: partial_rotary_factor {partial} of head dim {head_dim} gives {rotary_dim} rotated features; \
             RoPE needs an even, non-zero count of at most the head dim",
            path.display()
        );
    }
    Ok(rotary_dim)
}

/// Qwen3.5's multimodal checkpoint class: condlm runs its text model and keeps the rest (the vision tower, the
/// multi-token-prediction block) as it is.
pub const MULTIMODAL_QWEN35: &str = "Qwen3_5ForConditionalGeneration";

/// The text model's keys of a multimodal Qwen3.5 config.json (`text_config`), under the checkpoint's class name; its
/// top-level `tie_word_embeddings` is the one transformers ties by.
fn qwen35_text_config(text: &str, path: &Path) -> Result<HfConfig> {
    let raw: serde_json::Value = serde_json::from_str(text)?;
    let mut t = match raw.get("text_config") {
        Some(serde_json::Value::Object(t)) => t.clone(),
        _ => bail!("{}: a {MULTIMODAL_QWEN35} config without a \"text_config\" object", path.display()),
    };
    t.insert("architectures".into(), serde_json::json!([MULTIMODAL_QWEN35]));
    if let Some(tie) = raw.get("tie_word_embeddings") {
        t.insert("tie_word_embeddings".into(), tie.clone());
    }
    serde_json::from_value(serde_json::Value::Object(t))
        .with_context(|| format!("{}: text_config is not a valid Qwen3.5 text config", path.display()))
}

/// Qwen3.5's `mrope_section` (transformers' default [11, 11, 10]).
fn mrope_section(rope: Option<&serde_json::Value>, path: &Path) -> Result<Vec<usize>> {
    match rope.and_then(|r| r.get("mrope_section")) {
        None => Ok(vec![11, 11, 10]),
        Some(v) => serde_json::from_value(v.clone()).with_context(|| {
            format!("{}: rope_parameters.mrope_section is {v}; it must be a list of counts", path.display())
        }),
    }
}

/// Qwen3.5's layer kinds and Gated DeltaNet shape, as Qwen3_5TextConfig reads them: `layer_types`
/// ("linear_attention" / "full_attention"), else every `full_attention_interval`-th layer (default 4) full.
fn qwen35_linear_layers(c: &HfConfig, layers: usize, path: &Path) -> Result<(Vec<bool>, Option<DeltaNetShape>)> {
    let linear = match &c.layer_types {
        Some(types) if types.len() < layers => {
            bail!("{}: layer_types has {} entries for {layers} layers", path.display(), types.len())
        }
        Some(types) => types[..layers]
            .iter()
            .map(|t| match t.as_str() {
                "linear_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => bail!(
                    "{}: layer_types entry \"{other}\" is not a Qwen3.5 layer (linear_attention, full_attention)",
                    path.display()
                ),
            })
            .collect::<Result<Vec<bool>>>()?,
        None => {
            let every = c.full_attention_interval.unwrap_or(4).max(1);
            (0..layers).map(|i| (i + 1) % every != 0).collect()
        }
    };
    let shape = DeltaNetShape {
        k_heads: c.linear_num_key_heads.unwrap_or(16),
        v_heads: c.linear_num_value_heads.unwrap_or(32),
        k_head_dim: c.linear_key_head_dim.unwrap_or(128),
        v_head_dim: c.linear_value_head_dim.unwrap_or(128),
        conv_kernel: c.linear_conv_kernel_dim.unwrap_or(4),
    };
    Ok((linear, Some(shape)))
}

/// A count that config.json may spell as an integer or a whole float (32 or 32.0, as Python writes either).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<usize>, D::Error> {
    match Option::<f64>::deserialize(d)? {
        None => Ok(None),
        Some(v) if v >= 0.0 && v.fract() == 0.0 && v < 1e15 => Ok(Some(v as usize)),
        Some(v) => Err(serde::de::Error::custom(format!("{v} is not a whole number ≥ 0"))),
    }
}

/// Token ids in config.json are a number, a list of numbers, or null; an id beyond u32 (no vocabulary has one)
/// becomes u32::MAX, which the vocabulary check then refuses, instead of wrapping onto a real token.
fn token_ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    let id = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![id(x)]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(id).collect(),
        _ => vec![],
    }
}

impl Config {
    /// Reads an HF `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut c: HfConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid Hugging Face config.json", path.display()))?;
        if c.architectures.first().map(String::as_str) == Some(MULTIMODAL_QWEN35) {
            c = qwen35_text_config(&text, path)?;
        }
        let architecture = c
            .architectures
            .first()
            .cloned()
            .or(c.model_type.clone())
            .with_context(|| format!("{}: neither \"architectures\" nor \"model_type\" is set", path.display()))?;
        let family = match architecture.as_str() {
            "LlamaForCausalLM"
            | "MistralForCausalLM"
            | "Qwen2ForCausalLM"
            | "Qwen3ForCausalLM"
            | "SmolLM3ForCausalLM"
            | "Gemma3ForCausalLM"
            | "Phi3ForCausalLM"
            | "Olmo2ForCausalLM"
            | "Olmo3ForCausalLM"
            | "Qwen3_5ForCausalLM"
            | "Qwen3_5ForConditionalGeneration"
            | "llama"
            | "mistral"
            | "qwen2"
            | "qwen3"
            | "smollm3"
            | "gemma3_text"
            | "phi3"
            | "olmo2"
            | "olmo3"
            | "qwen3_5_text" => Family::Llama,
            "GPT2LMHeadModel" | "gpt2" => Family::Gpt2,
            "Gemma3ForConditionalGeneration" | "gemma3" => bail!(
                "{}: {architecture} is Gemma 3's multimodal checkpoint; condlm reads the text model only \
                 (Gemma3ForCausalLM, e.g. gemma-3-270m or gemma-3-1b, or a GGUF of the text weights)",
                path.display()
            ),
            other => bail!("{}: architecture \"{other}\" is not supported (supported: {SUPPORTED})", path.display()),
        };
        let lower = architecture.to_lowercase();
        if lower.starts_with("olmo3") {
            let raw: serde_json::Value = serde_json::from_str(&text)?;
            if raw.get("sliding_window").is_some_and(|w| w.is_null()) {
                bail!(
                    "{}: sliding_window is null, but an OLMo 3 slides on its sliding_attention layers (transformers \
                     cannot run it without a window either): give the window's length (4096 in every release)",
                    path.display()
                );
            }
        }
        let (is_qwen2, is_qwen3) = (lower.starts_with("qwen2"), lower.starts_with("qwen3"));
        let (is_smollm3, is_gemma3) = (lower.starts_with("smollm3"), lower.starts_with("gemma3"));
        let (is_phi3, is_llama) = (lower.starts_with("phi3"), lower.starts_with("llama"));
        let (is_olmo2, is_olmo3) = (lower.starts_with("olmo2"), lower.starts_with("olmo3"));
        let is_qwen35 = lower.starts_with("qwen3_5");
        let bos = token_ids(&c.bos_token_id).first().copied();
        let eos = token_ids(&c.eos_token_id);
        let cfg = match family {
            Family::Llama => {
                for (key, v) in [
                    ("final_logit_softcapping", c.final_logit_softcapping),
                    ("attn_logit_softcapping", c.attn_logit_softcapping),
                ] {
                    if let Some(v) = v {
                        bail!("{}: {key} = {v} (Gemma 2's logit soft-capping) is not supported", path.display());
                    }
                }
                if c.use_bidirectional_attention == Some(true) {
                    bail!("{}: use_bidirectional_attention = true (an encoder) is not supported", path.display());
                }
                let mlp_act = match c.hidden_activation.as_deref().or(c.hidden_act.as_deref()) {
                    None if is_gemma3 => GateAct::GeluTanh,
                    None | Some("silu") => GateAct::Silu,
                    Some("gelu_pytorch_tanh") => GateAct::GeluTanh,
                    Some(act) => {
                        bail!("{}: hidden_act \"{act}\" is not supported (silu, or gelu_pytorch_tanh)", path.display())
                    }
                };
                let hidden = need(c.hidden_size, "hidden_size", path)?;
                let heads = need(c.num_attention_heads, "num_attention_heads", path)?;
                let layers = need(c.num_hidden_layers, "num_hidden_layers", path)?;
                // Phi-3 has no biases, whatever attention_bias / mlp_bias say (transformers reads neither for it)
                let attention_bias = !is_phi3 && c.attention_bias.unwrap_or(false);
                let head_dim = c.head_dim.unwrap_or(if is_gemma3 || is_qwen35 { 256 } else { hidden / heads.max(1) });
                // transformers 5 takes a legacy rope_scaling in place of rope_parameters
                let (rope, rope_key) = match c.rope_scaling.as_ref().filter(|v| !v.is_null()) {
                    Some(v) => (Some(v), "rope_scaling"),
                    None => (c.rope_parameters.as_ref().filter(|v| !v.is_null()), "rope_parameters"),
                };
                let (rotary_dim, longrope) = match (is_phi3, is_qwen35) {
                    (true, _) => phi3_rope(&c, rope, head_dim, path)?,
                    // Qwen3_5TextConfig's default rotates a quarter of each head
                    (false, true) => (partial_rotary_dim(&c, rope, head_dim, 0.25, path)?, None),
                    (false, false) => (head_dim, None),
                };
                let max_positions = c.max_position_embeddings.unwrap_or(if is_qwen35 { 32768 } else { 2048 });
                let (linear_layers, delta_net) = match is_qwen35 {
                    true => qwen35_linear_layers(&c, layers, path)?,
                    false => (vec![], None),
                };
                let (rope_theta, rope_local_theta, rope_scaling, yarn, rope_linear_factor) = if is_gemma3 {
                    let (global, local, linear) = gemma3_rope(&c, path)?;
                    (global, Some(local), None, None, linear)
                } else if is_olmo3 {
                    let (global, local, s) = olmo3_rope(&c, max_positions, path)?;
                    (global, Some(local), s.llama3, s.yarn, s.linear)
                } else {
                    // the scaling object's own rope_theta first, as transformers 5's standardize_rope_params keeps it;
                    // then the top-level one; then the class default (SmolLM3Config's is 2e6)
                    let theta = rope
                        .and_then(|r| r.get("rope_theta")?.as_f64())
                        .map(|v| v as f32)
                        .or(c.rope_theta)
                        .unwrap_or(if is_smollm3 { 2_000_000.0 } else { 10_000.0 });
                    let scaling = match is_phi3 {
                        true => Scaling::default(),
                        false => {
                            let original = c.original_max_position_embeddings;
                            parse_rope_scaling(rope, rope_key, original, max_positions, path)?
                        }
                    };
                    (theta, None, scaling.llama3, scaling.yarn, scaling.linear)
                };
                // Qwen2/Qwen3 keep their window off unless use_sliding_window says so; Mistral, Phi-3 and Gemma 3
                // use it; Llama has none (transformers ignores a sliding_window key in its config).
                let sliding_window = match (is_qwen2 || is_qwen3 || is_smollm3, c.use_sliding_window) {
                    _ if is_llama || is_olmo2 => None,
                    // Olmo3Config's default window (an explicit null is refused above)
                    _ if is_olmo3 => c.sliding_window.or(Some(4096)),
                    (true, Some(true)) | (false, None | Some(true)) => c.sliding_window,
                    _ => None,
                };

                Config {
                    architecture,
                    family,
                    hidden_size: hidden,
                    intermediate_size: need(c.intermediate_size, "intermediate_size", path)?,
                    num_layers: layers,
                    num_heads: heads,
                    num_kv_heads: c.num_key_value_heads.unwrap_or(heads),
                    head_dim,
                    vocab_size: need(c.vocab_size, "vocab_size", path)?,
                    max_positions,
                    norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
                    rope_theta,
                    rope_scaling,
                    rotary_dim,
                    longrope,
                    yarn,
                    qkv_bias: is_qwen2 || attention_bias,
                    o_bias: attention_bias,
                    qk_norm: is_qwen3 || is_gemma3 || is_olmo2 || is_olmo3,
                    qk_norm_whole: is_olmo2 || is_olmo3,
                    no_rope: if is_smollm3 { smollm3_no_rope(&c, path)? } else { vec![] },
                    mlp_bias: !is_phi3 && c.mlp_bias.unwrap_or(false),
                    tie_embeddings: c.tie_word_embeddings.unwrap_or(is_gemma3),
                    sliding_layers: if sliding_window.is_some() || is_gemma3 || is_olmo3 {
                        sliding_layers(&c, is_gemma3, is_olmo3, is_qwen2 || is_qwen3, layers, path)?
                    } else {
                        vec![]
                    },
                    sliding_window,
                    rope_local_theta,
                    rope_linear_factor,
                    attn_scale: is_gemma3.then(|| (c.query_pre_attn_scalar.unwrap_or(256.0) as f64).powf(-0.5) as f32),
                    mlp_act,
                    norm_plus_one: is_gemma3 || is_qwen35,
                    sandwich_norms: is_gemma3 || is_olmo2 || is_olmo3,
                    pre_norms: !(is_olmo2 || is_olmo3),
                    scale_embeddings: is_gemma3,
                    linear_layers,
                    delta_net,
                    rope_sections: match is_qwen35 {
                        true => mrope_section(rope, path)?,
                        false => vec![],
                    },
                    attn_output_gate: is_qwen35,
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
                // Both change the scores' scale from 1/√head_dim (reorder_and_upcast_attn changes only precision).
                if c.scale_attn_weights == Some(false) {
                    bail!(
                        "{}: scale_attn_weights = false (unscaled attention scores) is not supported",
                        path.display()
                    );
                }
                if c.scale_attn_by_inverse_layer_idx == Some(true) {
                    bail!(
                        "{}: scale_attn_by_inverse_layer_idx = true (scores scaled by 1/(layer + 1)) is not supported",
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
                    yarn: None,
                    qkv_bias: true,
                    o_bias: true,
                    qk_norm: false,
                    qk_norm_whole: false,
                    no_rope: vec![],
                    mlp_bias: true,
                    tie_embeddings: c.tie_word_embeddings.unwrap_or(true),
                    sliding_window: None,
                    sliding_layers: vec![],
                    rope_local_theta: None,
                    rope_linear_factor: None,
                    attn_scale: None,
                    mlp_act: GateAct::GeluTanh,
                    norm_plus_one: false,
                    sandwich_norms: false,
                    pre_norms: true,
                    scale_embeddings: false,
                    linear_layers: vec![],
                    delta_net: None,
                    rope_sections: vec![],
                    attn_output_gate: false,
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

    /// Whether layer `i` applies RoPE (never in GPT-2, whose positions are learned embeddings).
    pub fn rope_in(&self, i: usize) -> bool {
        self.family == Family::Llama && !self.no_rope.get(i).copied().unwrap_or(false)
    }

    /// The attention window of layer `i`, if it slides.
    pub fn window(&self, i: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.sliding_layers.get(i).copied().unwrap_or(true))
    }

    /// The prefix of the text model's tensors: `model`, or `model.language_model` in a multimodal checkpoint.
    pub fn text_prefix(&self) -> &'static str {
        if self.architecture == MULTIMODAL_QWEN35 { "model.language_model" } else { "model" }
    }

    /// Whether the checkpoint may hold tensors condlm does not run and keeps as they are: Qwen3.5's
    /// multi-token-prediction block, and a multimodal checkpoint's vision tower.
    pub fn keeps_tensors_as_is(&self) -> bool {
        self.architecture.starts_with("Qwen3_5")
    }

    /// Whether the checkpoint's tensor `name` is one of those ([`Self::keeps_tensors_as_is`]).
    pub fn is_kept_as_is(&self, name: &str) -> bool {
        let vision = self.architecture == MULTIMODAL_QWEN35 && name.starts_with("model.visual.");
        self.keeps_tensors_as_is() && (vision || name.starts_with("mtp."))
    }

    /// Whether layer `i` is a Gated DeltaNet (Qwen3.5's linear attention) rather than attention.
    pub fn is_linear_layer(&self, i: usize) -> bool {
        self.linear_layers.get(i).copied().unwrap_or(false)
    }

    /// Whether layer `i` rotates with the local RoPE base (a sliding layer of a model that has one).
    pub fn local_rope(&self, i: usize) -> bool {
        self.rope_local_theta.is_some() && self.sliding_layers.get(i) == Some(&true)
    }

    /// Checks the shape relations the kernels rely on.
    pub fn validate(&self) -> Result<()> {
        // Named by their keys in config.json and in a GGUF's metadata.
        const HIDDEN: &str = "hidden size (hidden_size; GGUF: embedding_length)";
        const FFN: &str = "intermediate size (intermediate_size; GGUF: feed_forward_length)";
        const LAYERS: &str = "layers (num_hidden_layers; GGUF: block_count)";
        const HEADS: &str = "attention heads (num_attention_heads; GGUF: attention.head_count)";
        const KV_HEADS: &str = "key/value heads (num_key_value_heads; GGUF: attention.head_count_kv)";
        const HEAD_DIM: &str = "head dim (head_dim; GGUF: attention.key_length)";
        const VOCAB: &str = "vocab size (vocab_size; GGUF: the token list)";
        const POSITIONS: &str = "max positions (max_position_embeddings; GGUF: context_length)";
        let nonzero = [
            (HIDDEN, self.hidden_size),
            (FFN, self.intermediate_size),
            (LAYERS, self.num_layers),
            (HEADS, self.num_heads),
            (KV_HEADS, self.num_kv_heads),
            (HEAD_DIM, self.head_dim),
            (VOCAB, self.vocab_size),
            (POSITIONS, self.max_positions),
        ];
        for (what, v) in nonzero {
            if v == 0 {
                bail!("{what} is 0");
            }
        }
        // Far above any real model, and low enough that products of dimensions (parameter counts, buffer sizes)
        // cannot overflow: a damaged or hostile config fails here, not in an allocation.
        let limits = [
            (HIDDEN, self.hidden_size, 1 << 20),
            (FFN, self.intermediate_size, 1 << 22),
            (LAYERS, self.num_layers, 1 << 12),
            (HEADS, self.num_heads, 1 << 16),
            (HEAD_DIM, self.head_dim, 1 << 16),
            (VOCAB, self.vocab_size, 1 << 24),
            (POSITIONS, self.max_positions, 1 << 26),
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
        if !(self.norm_eps >= 0.0 && self.norm_eps.is_finite()) {
            bail!(
                "the norm epsilon (rms_norm_eps, layer_norm_epsilon) is {}: it must be a finite number ≥ 0",
                self.norm_eps
            );
        }
        if self.family == Family::Llama {
            for theta in std::iter::once(self.rope_theta).chain(self.rope_local_theta) {
                if !(theta > 0.0 && theta.is_finite()) {
                    bail!("the RoPE base (rope_theta, rope.freq_base) is {theta}: it must be a finite number > 0");
                }
            }
        }
        if let Some(s) = &self.delta_net {
            let dims = [
                ("linear_num_key_heads", s.k_heads, 1 << 12),
                ("linear_num_value_heads", s.v_heads, 1 << 12),
                ("linear_key_head_dim", s.k_head_dim, 1 << 12),
                ("linear_value_head_dim", s.v_head_dim, 1 << 12),
                ("linear_conv_kernel_dim", s.conv_kernel, 1 << 8),
            ];
            for (key, v, max) in dims {
                if v == 0 || v > max {
                    bail!("{key} is {v}: it must be between 1 and {max}");
                }
            }
            if !s.v_heads.is_multiple_of(s.k_heads) {
                bail!("linear_num_value_heads {} is not a multiple of linear_num_key_heads {}", s.v_heads, s.k_heads);
            }
        }
        if self.sliding_window == Some(0) {
            bail!("the sliding window is 0 positions: give its length, or null for none");
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
        if let Some(y) = &self.yarn {
            return y.inv_freq(self.rope_theta, d);
        }
        match (&self.rope_scaling, &self.longrope) {
            (_, Some(l)) => {
                let ext = if long { &l.long_factor } else { &l.short_factor };
                let base = (0..d / 2).map(|i| self.rope_theta.powf((2 * i) as f32 / d as f32));
                base.zip(ext).map(|(b, e)| 1.0 / (e * b)).collect()
            }
            (None, None) => match self.rope_linear_factor {
                Some(k) => inv_freq(self.rope_theta, d).into_iter().map(|f| f / k).collect(),
                None => inv_freq(self.rope_theta, d),
            },
            (Some(s), None) => inv_freq(self.rope_theta, d).into_iter().map(|f| s.scale(f)).collect(),
        }
    }

    /// The RoPE table of `rows` positions: one set, or LongRoPE's short then long set, scaled by LongRoPE's or
    /// YaRN's attention factor, rotating the first rotary_dim features of each head.
    pub fn rope_table(&self, rows: usize) -> RopeTable {
        let (short, long) = (self.rope_inv_freq(false), self.rope_inv_freq(true));
        let sets: &[&[f32]] = if self.longrope.is_some() { &[&short, &long] } else { &[&short] };
        let scale = match (&self.longrope, &self.yarn) {
            (Some(l), _) => l.attention_factor,
            (None, Some(y)) => y.attention_factor,
            (None, None) => 1.0,
        };
        RopeTable::with_sets(sets, rows, self.head_dim, scale)
    }

    /// The sliding layers' inverse frequencies when they have their own base (Gemma 3), unscaled.
    pub fn rope_local_inv_freq(&self) -> Option<Vec<f32>> {
        self.rope_local_theta.map(|theta| inv_freq(theta, self.head_dim))
    }

    /// Parameter count as the checkpoint stores it (tied head counted once).
    pub fn num_parameters(&self) -> usize {
        let (d, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) = (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim);
        let head = if self.tie_embeddings { 0 } else { v * d };
        // (the attention's tensors, the rest of the block)
        let (attn, rest) = match self.family {
            Family::Llama => {
                let gate = if self.attn_output_gate { d * q } else { 0 };
                let bias = if self.qkv_bias { q + 2 * kv } else { 0 } + if self.o_bias { d } else { 0 };
                let qk_norm = match (self.qk_norm, self.qk_norm_whole) {
                    (false, _) => 0,
                    (true, false) => 2 * self.head_dim,
                    (true, true) => q + kv,
                };
                let mlp = 3 * d * f + if self.mlp_bias { 2 * f + d } else { 0 };
                let norms = 2 * d * (usize::from(self.sandwich_norms) + usize::from(self.pre_norms));
                (d * (q + 2 * kv) + q * d + gate + bias + qk_norm, mlp + norms)
            }
            Family::Gpt2 => (0, (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 4 * d),
        };
        // a linear-attention layer has a Gated DeltaNet in place of attention
        let delta_net = self.delta_net.map_or(0, |s| {
            let proj = d * s.proj_width() + s.value_dim() * d;
            proj + s.conv_dim() * s.conv_kernel + 2 * s.v_heads + s.v_head_dim
        });
        let blocks: usize =
            (0..self.num_layers).map(|i| rest + if self.is_linear_layer(i) { delta_net } else { attn }).sum();
        let norms = match self.family {
            Family::Llama => d,
            Family::Gpt2 => 2 * d + self.max_positions * d,
        };
        v * d + head + blocks + norms
    }
}

/// 1 / theta^(2i / d) for i < d/2, in f32 as transformers computes it: RoPE's inverse frequencies unscaled.
pub fn inv_freq(theta: f32, d: usize) -> Vec<f32> {
    (0..d / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32)).collect()
}

/// The RoPE scaling a Llama-family config.json asks for (Gemma 3's and Phi-3's are read by their own functions).
#[derive(Default)]
struct Scaling {
    llama3: Option<Llama3RopeScaling>,
    yarn: Option<YarnRope>,
    /// Linear (position interpolation): the frequencies divided by it.
    linear: Option<f32>,
}

/// The RoPE scaling of a Llama-family config: Llama 3.1's, YaRN, linear, or none. `key` names the object in errors
/// (`rope_scaling`, `rope_parameters`, …).
fn parse_rope_scaling(
    v: Option<&serde_json::Value>,
    key: &str,
    top_level_original: Option<usize>,
    max_positions: usize,
    path: &Path,
) -> Result<Scaling> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(Scaling::default()) };
    let kind = v.get("rope_type").or(v.get("type")).and_then(|t| t.as_str()).unwrap_or("");
    let what = format!("{}: {key}", path.display());
    match kind {
        "" | "default" => Ok(Scaling::default()),
        "llama3" => serde_json::from_value(v.clone())
            .map(|s| Scaling { llama3: Some(s), ..Default::default() })
            .with_context(|| format!("{what} of type llama3 lacks a field")),
        "yarn" => {
            let yarn = YarnRope::from_json(v, top_level_original, max_positions, &what)?;
            Ok(Scaling { yarn: Some(yarn), ..Default::default() })
        }
        "linear" => match v.get("factor").and_then(|f| f.as_f64()) {
            Some(f) if f.is_finite() && f > 0.0 => {
                Ok(Scaling { linear: (f != 1.0).then_some(f as f32), ..Default::default() })
            }
            _ => {
                let f = v.get("factor").map_or("absent".to_string(), |f| f.to_string());
                bail!("{what}.factor is {f}: linear RoPE scaling needs a positive number")
            }
        },
        other => {
            bail!("{what} has type \"{other}\", which is not supported (supported: llama3, yarn, linear, or default)")
        }
    }
}
