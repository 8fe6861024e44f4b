//! The network's `Config` from GGUF metadata (`general.architecture` and its `<arch>.*` keys).
use super::file::GgufFile;
use crate::kernels::activation::GateAct;
use crate::network::config::{Config, Family};
use anyhow::{Context, Result, bail};
use std::path::Path;

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
        "llama" | "qwen2" | "qwen3" | "gemma3" => Family::Llama,
        "gpt2" => Family::Gpt2,
        other => {
            bail!(
                "{}: GGUF architecture \"{other}\" is not supported (supported: llama, qwen2, qwen3, gemma3, gpt2)",
                path.display()
            )
        }
    };
    if g.tensor("rope_freqs.weight").is_some() {
        bail!(
            "{}: per-frequency RoPE factors (rope_freqs.weight, Llama 3.1 scaling) are not supported yet",
            path.display()
        );
    }
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
    let layers = g.get_usize(&key("block_count"))?;
    let gemma3 = arch == "gemma3";
    // Gemma 3 as llama.cpp (and transformers' GGUF loader) run it: every 6th layer global, the others sliding
    // with RoPE base 10 000, q·k scaled by 1/√head_dim (query_pre_attn_scalar = head_dim in the small models).
    let sliding_window = g.opt_usize(&key("attention.sliding_window"))?.filter(|_| gemma3);
    let sliding_layers = match g.opt_usize(&key("attention.sliding_window_pattern"))? {
        _ if !gemma3 => vec![],
        pattern => (0..layers).map(|i| (i + 1) % pattern.unwrap_or(6).max(1) != 0).collect(),
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
        max_positions: g.get_usize(&key("context_length"))?,
        norm_eps: g.get_f32(&eps_key)?,
        rope_theta: g.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
        rope_scaling: None,
        rotary_dim: head_dim,
        longrope: None,
        qkv_bias: family == Family::Gpt2 || g.tensor("blk.0.attn_q.bias").is_some(),
        o_bias: family == Family::Gpt2 || g.tensor("blk.0.attn_output.bias").is_some(),
        mlp_bias: family == Family::Gpt2 || g.tensor("blk.0.ffn_up.bias").is_some(),
        tie_embeddings: g.tensor("output.weight").is_none(),
        qk_norm: g.tensor("blk.0.attn_q_norm.weight").is_some(),
        no_rope: vec![],
        sliding_window,
        sliding_layers,
        rope_local_theta: gemma3.then_some(10_000.0),
        attn_scale: None,
        mlp_act: if gemma3 { GateAct::GeluTanh } else { GateAct::Silu },
        norm_plus_one: gemma3,
        sandwich_norms: gemma3,
        scale_embeddings: gemma3,
        bos_token_id: g.opt_u32("tokenizer.ggml.bos_token_id")?,
        eos_token_ids: g.opt_u32("tokenizer.ggml.eos_token_id")?.into_iter().collect(),
        architecture: arch,
    };
    cfg.validate().with_context(|| format!("{}: inconsistent model metadata", path.display()))?;
    Ok(cfg)
}
