//! `condlm info`: what a checkpoint is — architecture, sizes, tensors, tokenizer.
use anyhow::Result;
use clap::Args;
use condlm::formats::load::{load_tokenizer, open_weights};
use condlm::formats::resolve::resolve;
use condlm::formats::weights::Weights;
use condlm::network::config::{Config, Family};
use std::collections::BTreeMap;

/// Describe a checkpoint: architecture, layer/head/hidden sizes, parameters, tensor types, tokenizer.
#[derive(Args)]
pub struct InfoArgs {
    /// An HF checkpoint folder, a .gguf file, or a hub id org/name.
    model: String,
    /// Also list every tensor with its shape and type.
    #[arg(long)]
    tensors: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let files = resolve(&a.model)?;
    let (c, weights) = open_weights(&files)?;
    let tok = load_tokenizer(&files, &c, &weights)?;
    println!("model         {}", files.path().display());
    println!("architecture  {} ({:?} family)", c.architecture, c.family);
    println!("layers        {}", c.num_layers);
    println!("hidden        {} (intermediate {})", c.hidden_size, c.intermediate_size);
    let qk_norm = if c.qk_norm { ", per-head q/k RMSNorm" } else { "" };
    println!("heads         {} query, {} key/value, head dim {}{qk_norm}", c.num_heads, c.num_kv_heads, c.head_dim);
    println!("parameters    {} ({:.1} M)", c.num_parameters(), c.num_parameters() as f64 / 1e6);
    println!("context       {} positions", c.max_positions);
    if c.family == Family::Llama {
        println!("rope          {}", rope_text(&c));
    }
    if c.fused_projections() {
        println!("projections   fused qkv_proj and gate_up_proj");
    }
    println!("vocabulary    {} (tokenizer: {})", c.vocab_size, tok.vocab_size());
    println!("tied head     {}", c.tie_embeddings);
    let name = |id: u32| tok.inner.id_to_token(id).unwrap_or_else(|| "?".into());
    let bos = tok.prefix.iter().map(|&i| format!("{} ({i})", name(i))).collect::<Vec<_>>().join(" ");
    println!("BOS added     {}", if bos.is_empty() { "none".into() } else { bos });
    println!("EOS           {} ({})", name(tok.eos_id), tok.eos_id);
    println!("chat template {}", if tok.chat_template.is_some() { "present" } else { "absent" });
    let mut rows: Vec<(String, Vec<usize>, String)> = match &weights {
        Weights::Safetensors { files, .. } => {
            files.summaries().into_iter().map(|s| (s.name, s.shape, s.dtype)).collect()
        }
        Weights::Gguf { file, .. } => file
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.dims.iter().map(|&d| d as usize).collect(), t.ty.name().to_string()))
            .collect(),
    };
    rows.sort();
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, ty) in &rows {
        *by_type.entry(ty).or_default() += 1;
    }
    let types: Vec<String> = by_type.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
    println!("tensors       {} ({})", rows.len(), types.join(", "));
    if a.tensors {
        for (n, shape, ty) in &rows {
            println!("  {n:50} {ty:6} {shape:?}");
        }
    }
    Ok(())
}

/// RoPE's base, the features it rotates, its scaling and the layers without it.
fn rope_text(c: &Config) -> String {
    let mut t = format!("θ {}", c.rope_theta);
    if c.rotary_dim != c.head_dim {
        t += &format!(", partial: the first {} of {} features of each head", c.rotary_dim, c.head_dim);
    }
    match (&c.rope_scaling, &c.longrope) {
        (Some(s), _) => t += &format!(", llama3 scaling (factor {})", s.factor),
        (None, Some(l)) => {
            let past = l.original_max_positions;
            t += &format!(
                ", longrope scaling (long factors past {past} positions, attention factor {:.4})",
                l.attention_factor
            )
        }
        (None, None) => {}
    }
    let skipped = c.no_rope.iter().filter(|&&n| n).count();
    if skipped > 0 {
        t += &format!(", none in {skipped} of {} layers", c.num_layers);
    }
    t
}
