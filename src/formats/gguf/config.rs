//! The network's `Config` from GGUF metadata (`general.architecture` and its `<arch>.*` keys).
use super::file::{GgufFile, MetaValue};
use crate::formats::weights::{ROPE_FACTORS, ROPE_FREQS};
use crate::kernels::activation::GateAct;
use crate::network::config::{Config, DeltaNetShape, Family, LongRope, inv_freq};
use crate::network::llama3_rope::Llama3RopeScaling;
use crate::network::yarn_rope::YarnRope;
use anyhow::{Context, Result, bail};
use std::path::Path;

/// llama.cpp's fixed rules for what a GGUF has no key for, shared by the reader and the exporter.
pub mod llama_cpp_rules {
    /// Gemma 3 without a `sliding_window_pattern`: every 6th layer global, the others sliding.
    pub const GEMMA3_PATTERN: usize = 6;

    /// Whether layer `i` slides when every `every`-th layer is global (0: none is).
    pub fn slides(i: usize, every: usize) -> bool {
        every == 0 || !(i + 1).is_multiple_of(every)
    }

    /// Gemma 3's query_pre_attn_scalar as llama.cpp takes it: head_dim, or hidden/heads in the 62-layer 27B.
    pub fn gemma3_qk_scalar(layers: usize, hidden: usize, heads: usize, head_dim: usize) -> usize {
        if layers == 62 { hidden / heads.max(1) } else { head_dim }
    }

    /// OLMo 3 (`olmo2` in llama.cpp) without a `sliding_window_pattern`: every 4th layer global.
    pub const OLMO3_PATTERN: usize = 4;

    /// SmolLM3: RoPE skipped in every 4th layer.
    pub fn smollm3_skips_rope(i: usize) -> bool {
        (i + 1).is_multiple_of(4)
    }
}
use llama_cpp_rules::{GEMMA3_PATTERN, OLMO3_PATTERN, gemma3_qk_scalar, slides, smollm3_skips_rope};

/// Reads GGUF metadata (`general.architecture` and its `<arch>.*` keys) and tensor presence.
pub fn config_from_gguf(g: &GgufFile, path: &Path) -> Result<Config> {
    if g.opt_str("general.type")? == Some("adapter") {
        bail!(
            "{}: a LoRA adapter in llama.cpp's format (general.type = adapter), not a model: give llama.cpp its base \
             model with --lora; condlm reads adapters as PEFT folders (the adapter/ a `condlm train` run wrote)",
            path.display()
        );
    }
    let arch = g.get_str("general.architecture")?.to_string();
    let family = match arch.as_str() {
        "llama" | "qwen2" | "qwen3" | "gemma3" | "phi3" | "smollm3" | "olmo2" | "qwen35" => Family::Llama,
        "gpt2" => Family::Gpt2,
        other => {
            bail!(
                "{}: GGUF architecture \"{other}\" is not supported (supported: llama, qwen2, qwen3, gemma3, phi3, \
                 smollm3, olmo2, qwen35, gpt2)",
                path.display()
            )
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = g.get_usize(&key("embedding_length"))?;
    let heads = g.get_usize(&key("attention.head_count"))?;
    let kv_heads = g.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(heads);
    let head_dim = g.opt_usize(&key("attention.key_length"))?.unwrap_or(hidden / heads.max(1));
    let vocab_size = match g.opt_usize(&key("vocab_size"))? {
        Some(n) => n,
        None => g
            .tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .with_context(|| format!("{}: no vocab size and no token_embd.weight tensor", path.display()))?
            as usize,
    };
    // Qwen3.5's multi-token-prediction block, when the converter kept it, comes after the model's layers
    let mtp = g.opt_usize(&key("nextn_predict_layers"))?.unwrap_or(0);
    let layers = g.get_usize(&key("block_count"))?.saturating_sub(mtp);
    let (gemma3, olmo2, qwen35) = (arch == "gemma3", arch == "olmo2", arch == "qwen35");
    let (linear_layers, delta_net) = match qwen35 {
        true => qwen35_layers(g, &key, layers, path)?,
        false => (vec![], None),
    };
    // Gemma 3 as llama.cpp runs it: the sliding layers per `sliding_window_pattern` (every 6th layer global when
    // absent), their RoPE base `rope.freq_base_swa` (10 000 when absent), q·k scaled by 1/√head_dim — by
    // 1/√(hidden/heads) in the 62-layer 27B, whose query_pre_attn_scalar is that.
    // Without a window (the converter writes none for a pattern of 1) llama.cpp runs every layer global, on
    // `rope.freq_base`. OLMo 3 (llama.cpp's `olmo2` with a window) likewise, every 4th layer global by default,
    // its sliding layers without RoPE scaling, on `rope.freq_base` as llama.cpp's graph rotates them (whatever
    // `rope.freq_base_swa` says).
    let sliding_window = g.opt_usize(&key("attention.sliding_window"))?.filter(|&w| (gemma3 || olmo2) && w > 0);
    let pattern = if olmo2 { OLMO3_PATTERN } else { GEMMA3_PATTERN };
    if olmo2 && g.tensor("blk.0.attn_q_norm.weight").is_none() {
        bail!(
            "{}: an olmo2 model without blk.0.attn_q_norm.weight: OLMo norms q and k in every layer (llama.cpp \
             refuses the file too); re-convert it from the Hugging Face checkpoint",
            path.display()
        );
    }
    let sliding_layers = match sliding_window {
        Some(_) => sliding_layers(g, path, &key("attention.sliding_window_pattern"), layers, pattern)?,
        None => vec![],
    };
    // as config.json's query_pre_attn_scalar gives it
    let scalar = gemma3_qk_scalar(layers, hidden, heads, head_dim);
    let attn_scale = gemma3.then(|| (scalar as f64).powf(-0.5) as f32);
    let max_positions = g.get_usize(&key("context_length"))?;
    let (rope_linear_factor, yarn) = match rope_scaling_type(g, path, &key, &arch, max_positions)? {
        RopeScaling::None => (None, None),
        RopeScaling::Linear(k) => (Some(k), None),
        RopeScaling::Yarn(y) => (None, Some(y)),
    };
    let rope_theta = g.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);
    let rope_scaling = llama3_scaling(g, path, rope_theta, head_dim)?;
    let rotary_dim = g.opt_usize(&key("rope.dimension_count"))?.unwrap_or(head_dim);
    let longrope = longrope(g, &key, rotary_dim, max_positions)?;
    // SmolLM3 as llama.cpp runs it: every 4th layer without RoPE
    let no_rope = match arch.as_str() {
        "smollm3" => (0..layers).map(smollm3_skips_rope).collect(),
        _ => vec![],
    };
    let eps_key = match family {
        Family::Llama => key("attention.layer_norm_rms_epsilon"),
        Family::Gpt2 => key("attention.layer_norm_epsilon"),
    };
    let cfg = Config {
        family,
        hidden_size: hidden,
        intermediate_size: g.get_usize(&key("feed_forward_length"))?,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        vocab_size,
        max_positions,
        norm_eps: g.get_f32(&eps_key)?,
        rope_theta,
        rope_scaling,
        rotary_dim,
        longrope,
        yarn,
        qkv_bias: family == Family::Gpt2 || g.tensor("blk.0.attn_q.bias").is_some(),
        o_bias: family == Family::Gpt2 || g.tensor("blk.0.attn_output.bias").is_some(),
        mlp_bias: family == Family::Gpt2 || g.tensor("blk.0.ffn_up.bias").is_some(),
        tie_embeddings: g.tensor("output.weight").is_none(),
        // (Qwen3.5's first layers are linear attention; its attention layers norm q and k)
        qk_norm: qwen35 || g.tensor("blk.0.attn_q_norm.weight").is_some(),
        // llama.cpp's olmo2 norms q and k over all heads together
        qk_norm_whole: olmo2,
        no_rope,
        sliding_window,
        sliding_layers,
        rope_local_theta: match sliding_window {
            // llama.cpp's olmo2 reads rope.freq_base_swa but rotates every layer with rope.freq_base
            Some(_) if olmo2 => Some(rope_theta),
            Some(_) => Some(g.opt_f32(&key("rope.freq_base_swa"))?.unwrap_or(10_000.0)),
            None => None,
        },
        rope_linear_factor,
        attn_scale,
        mlp_act: if gemma3 { GateAct::GeluTanh } else { GateAct::Silu },
        norm_plus_one: gemma3 || qwen35,
        sandwich_norms: gemma3 || olmo2,
        pre_norms: !olmo2,
        scale_embeddings: gemma3,
        linear_layers,
        delta_net,
        rope_sections: match g.get(&key("rope.dimension_sections")) {
            Some(MetaValue::Array(v)) if qwen35 => rope_sections(v, &key("rope.dimension_sections"))?,
            _ => vec![],
        },
        attn_output_gate: qwen35,
        bos_token_id: g.opt_u32("tokenizer.ggml.bos_token_id")?,
        eos_token_ids: g.opt_u32("tokenizer.ggml.eos_token_id")?.into_iter().collect(),
        architecture: arch,
    };
    cfg.validate().with_context(|| format!("{}: inconsistent model metadata", path.display()))?;
    Ok(cfg)
}

/// Qwen3.5's layer kinds — `attention.recurrent_layers` (a flag per layer), else every `full_attention_interval`-th
/// layer attention (default 4) — and its Gated DeltaNet's shape from the `ssm.*` keys, as llama.cpp reads them.
fn qwen35_layers(
    g: &GgufFile,
    key: &dyn Fn(&str) -> String,
    layers: usize,
    path: &Path,
) -> Result<(Vec<bool>, Option<DeltaNetShape>)> {
    let linear = match g.get(&key("attention.recurrent_layers")) {
        Some(MetaValue::Array(flags)) => {
            let flags: Option<Vec<bool>> = flags.iter().map(|v| v.as_bool()).collect();
            match flags {
                Some(f) if f.len() >= layers => f[..layers].to_vec(),
                _ => bail!(
                    "{}: {} must hold a flag per layer ({layers})",
                    path.display(),
                    key("attention.recurrent_layers")
                ),
            }
        }
        _ => {
            let every = g.opt_usize(&key("full_attention_interval"))?.unwrap_or(4).max(1);
            (0..layers).map(|i| !(i + 1).is_multiple_of(every)).collect()
        }
    };
    let v_heads = g.get_usize(&key("ssm.time_step_rank"))?;
    let inner = g.get_usize(&key("ssm.inner_size"))?;
    if v_heads == 0 || !inner.is_multiple_of(v_heads) {
        bail!("{}: ssm.inner_size {inner} is not a multiple of ssm.time_step_rank {v_heads}", path.display());
    }
    let shape = DeltaNetShape {
        k_heads: g.get_usize(&key("ssm.group_count"))?,
        v_heads,
        k_head_dim: g.get_usize(&key("ssm.state_size"))?,
        v_head_dim: inner / v_heads,
        conv_kernel: g.get_usize(&key("ssm.conv_kernel"))?,
    };
    Ok((linear, Some(shape)))
}

/// Which layers slide: `sliding_window_pattern` as llama.cpp reads it — one flag per layer (a bool, or an integer:
/// non-zero slides), or N for "every Nth layer is global" (0: none is) — and every `default`-th layer global when
/// the key is absent.
fn sliding_layers(g: &GgufFile, path: &Path, key: &str, layers: usize, default: usize) -> Result<Vec<bool>> {
    let every = match g.get(key) {
        Some(MetaValue::Array(flags)) => {
            let flag = |v: &MetaValue| v.as_bool().or_else(|| v.as_i64().map(|n| n != 0));
            let parsed: Option<Vec<bool>> = flags.iter().map(flag).collect();
            return match parsed {
                Some(f) if f.len() == layers => Ok(f),
                _ => bail!(
                    "{}: {key} holds {} values; it needs one flag (bool or integer) per layer ({layers}), or one number",
                    path.display(),
                    flags.len()
                ),
            };
        }
        Some(_) => g.get_usize(key)?,
        None => default,
    };
    Ok((0..layers).map(|i| slides(i, every)).collect())
}

/// What `rope.scaling.type` asks for, as condlm applies it.
enum RopeScaling {
    None,
    /// Position interpolation (Gemma 3 4B/12B/27B: × 8 on their global layers, as llama.cpp applies it).
    Linear(f32),
    Yarn(YarnRope),
}

/// `rope.scaling.type` as llama.cpp reads it: linear when absent, with `rope.scaling.factor` (absent or 0: 1) — on
/// every layer, or on the global ones where sliding layers have their own table (Gemma 3, OLMo 3); YaRN on the
/// Llama-family architectures but Gemma 3 and Phi-3, with llama.cpp's fixed ramp (it reads no `yarn_beta_*` keys
/// for them), `rope.scaling.original_context_length` (the context length when absent or 0) and its attention
/// factor, the paper's default for the factor times `rope.scaling.attn_factor`. Other kinds — linear on Phi-3, YaRN
/// on Gemma 3 or Phi-3, an `attn_factor` without YaRN (llama.cpp scales cos and sin by it whatever the kind) — are
/// refused rather than read as another model; LongRoPE's factors are tensors, read with the rest of the config.
fn rope_scaling_type(
    g: &GgufFile,
    path: &Path,
    key: &dyn Fn(&str) -> String,
    arch: &str,
    max_positions: usize,
) -> Result<RopeScaling> {
    let kind = g.opt_str(&key("rope.scaling.type"))?.unwrap_or("linear");
    let factor = g.opt_f32(&key("rope.scaling.factor"))?.filter(|&f| f != 0.0).unwrap_or(1.0);
    let attn_factor = g.opt_f32(&key("rope.scaling.attn_factor"))?.unwrap_or(1.0);
    let refuse = |what: &str| {
        bail!(
            "{}: {} is \"{kind}\" with factor {factor}{what}: condlm does not apply that RoPE scaling on this \
             architecture ({arch}), and without it would compute another model than llama.cpp does",
            path.display(),
            key("rope.scaling.type")
        )
    };
    match kind {
        "longrope" if arch == "phi3" => Ok(RopeScaling::None),
        "yarn" if !matches!(arch, "gemma3" | "phi3") => {
            if !(factor.is_finite() && factor >= 1.0) {
                bail!(
                    "{}: {} is {factor}: YaRN's factor stretches the context, a finite number ≥ 1",
                    path.display(),
                    key("rope.scaling.factor")
                );
            }
            if factor == 1.0 && attn_factor == 1.0 {
                return Ok(RopeScaling::None);
            }
            let original = g.opt_usize(&key("rope.scaling.original_context_length"))?.filter(|&o| o != 0);
            let (beta_fast, beta_slow) = crate::network::yarn_rope::DEFAULT_BETAS;
            Ok(RopeScaling::Yarn(YarnRope {
                factor,
                original_max_positions: original.unwrap_or(max_positions),
                beta_fast,
                beta_slow,
                attention_factor: YarnRope::llama_cpp_attention_factor(factor, attn_factor),
                truncate: true,
            }))
        }
        _ if attn_factor != 1.0 && arch != "phi3" => {
            refuse(&format!(" and {} {attn_factor}", key("rope.scaling.attn_factor")))
        }
        "none" => Ok(RopeScaling::None),
        _ if factor == 1.0 => Ok(RopeScaling::None),
        "linear" if arch != "phi3" && factor.is_finite() && factor > 0.0 => Ok(RopeScaling::Linear(factor)),
        _ => refuse(""),
    }
}

/// Llama 3.1's RoPE scaling from the per-frequency divisors llama.cpp's converter stores as
/// `rope_freqs.weight`, or `None` without that tensor.
fn llama3_scaling(g: &GgufFile, path: &Path, theta: f32, head_dim: usize) -> Result<Option<Llama3RopeScaling>> {
    if g.tensor(ROPE_FREQS).is_none() {
        return Ok(None);
    }
    let factors = g.tensor_f32(ROPE_FREQS)?;
    if factors.len() == head_dim / 2 && factors.iter().all(|&f| f == 1.0) {
        return Ok(None); // a scaling factor of 1: no scaling
    }
    let scaling = Llama3RopeScaling::from_freq_factors(&factors, &inv_freq(theta, head_dim));
    scaling.map(Some).with_context(|| {
        let odd = match factors.iter().position(|f| !f.is_finite()) {
            Some(i) => format!("divisor {i} is {}", factors[i]),
            None => format!("{:?}…", &factors[..factors.len().min(4)]),
        };
        format!(
            "{}: {ROPE_FREQS} holds {} per-frequency RoPE divisors ({odd}) that are not Llama 3's rope scaling, the \
             only kind condlm reads (head_dim {head_dim} needs {}, between 1 and the scaling factor)",
            path.display(),
            factors.len(),
            head_dim / 2
        )
    })
}

/// Phi-3's LongRoPE from a GGUF: the `rope_factors_long`/`rope_factors_short` tensors, the original context and
/// the attention factor (transformers' default √(1 + ln(context / original) / ln original) when absent); `None`
/// without the tensors.
fn longrope(
    g: &GgufFile,
    key: &dyn Fn(&str) -> String,
    rotary_dim: usize,
    max_positions: usize,
) -> Result<Option<LongRope>> {
    let [long, short] = ROPE_FACTORS;
    if g.tensor(long).is_none() {
        return Ok(None);
    }
    let (long_factor, short_factor) = (g.tensor_f32(long)?, g.tensor_f32(short)?);
    for (name, f) in [(long, &long_factor), (short, &short_factor)] {
        if f.len() != rotary_dim / 2 {
            bail!("{name} has {} factors; {rotary_dim} rotated features need {}", f.len(), rotary_dim / 2);
        }
    }
    let original = g.get_usize(&key("rope.scaling.original_context_length"))?;
    let scale = max_positions as f64 / original as f64;
    let attention_factor = match g.opt_f32(&key("rope.scaling.attn_factor"))? {
        Some(a) => a,
        None if scale <= 1.0 => 1.0,
        None => (1.0 + scale.ln() / (original as f64).ln()).sqrt() as f32,
    };
    Ok(Some(LongRope { short_factor, long_factor, original_max_positions: original, attention_factor }))
}

/// Qwen3.5's `rope.dimension_sections`: whole numbers ≥ 0, trailing zeros dropped.
fn rope_sections(v: &[MetaValue], key: &str) -> Result<Vec<usize>> {
    let mut sections = v
        .iter()
        .map(|x| x.as_i64().and_then(|n| usize::try_from(n).ok()))
        .collect::<Option<Vec<usize>>>()
        .with_context(|| format!("{key} holds a value that is not a whole number ≥ 0: the GGUF metadata is damaged"))?;
    while sections.last() == Some(&0) {
        sections.pop();
    }
    Ok(sections)
}
