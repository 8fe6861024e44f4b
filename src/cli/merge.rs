//! `condlm merge`: fold a PEFT LoRA adapter into its base model and write the result as a Hugging Face
//! checkpoint folder (config.json, model.safetensors in F32, tokenizer files) that transformers loads
//! with `AutoModelForCausalLM.from_pretrained(out)` and condlm with `--model out`.
//!
//! `--out` handling: the folder is written atomically (a temporary sibling folder, then renamed), so
//! it is complete or absent — a failed merge (adapter for another base, unreadable files, a folder
//! that cannot be written) leaves no output behind. An `--out` that does not exist or is an empty
//! folder is written; an existing non-empty folder (including the output of an earlier merge) is
//! replaced only with `--force`, because replacing means deleting what is there. `--out` may never
//! be, or contain, the base model or the adapter, even with `--force`.
use anyhow::{Context, Result};
use clap::Args;
use condlm::formats::hf_export::{check_out_dir, save_hf_folder};
use condlm::formats::load::load_model;
use condlm::formats::peft::load_adapter;
use condlm::network::adapters;
use std::path::{Path, PathBuf};

/// Merge a PEFT LoRA adapter into its base model (W += (α/r)·B·A) and save a Hugging Face checkpoint folder.
#[derive(Args)]
pub struct MergeArgs {
    /// Base model: an HF checkpoint folder, a .gguf file, or a hub id org/name (from the HF cache, downloaded when online).
    #[arg(long)]
    model: String,
    /// PEFT adapter folder (adapter_config.json + adapter_model.safetensors), trained for this base model.
    #[arg(long)]
    adapter: PathBuf,
    /// Output folder for the merged checkpoint (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists and is not empty (its contents are deleted).
    #[arg(long)]
    force: bool,
}

pub fn run(a: MergeArgs) -> Result<()> {
    let model_path = Path::new(&a.model);
    let mut protected = vec![a.adapter.as_path()];
    if model_path.exists() {
        protected.push(model_path);
    }
    check_out_dir(&a.out, a.force, &protected)?;
    let start = std::time::Instant::now();
    let mut m = load_model(&a.model)?;
    check_out_dir(&a.out, a.force, &[m.files.path()])?;
    let cfg = load_adapter(&a.adapter, &mut m.model)?;
    warn_on_other_base(&a.adapter, &a.model);
    let adapted = m.model.blocks.iter().flat_map(|b| b.linears()).filter(|l| l.lora.is_some()).count();
    adapters::merge(&mut m.model);
    save_hf_folder(&a.out, &m.model, &m.tokenizer, &m.files)
        .with_context(|| format!("cannot write the merged model to {}", a.out.display()))?;
    eprintln!(
        "merged {adapted} LoRA adapters (r={}, alpha={}{}) from {} into {} -> {} ({} parameters, F32, {:.1}s)",
        cfg.rank,
        cfg.alpha,
        if cfg.rslora { ", rsLoRA" } else { "" },
        a.adapter.display(),
        a.model,
        a.out.display(),
        m.model.config.num_parameters(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A note (not an error) when the adapter says it was trained on a different base: base models are
/// often moved or renamed, but the same sizes do not make a Qwen2 adapter right for a Llama model.
fn warn_on_other_base(adapter: &Path, model: &str) {
    let Ok(text) = std::fs::read_to_string(adapter.join("adapter_config.json")) else { return };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return };
    let Some(base) = v.get("base_model_name_or_path").and_then(|b| b.as_str()).filter(|b| !b.is_empty()) else {
        return;
    };
    // The model as given, and for a file (a .gguf) also its folder: PEFT records the folder a GGUF was loaded from.
    let model_path = Path::new(model);
    let mut candidates = vec![model_path.to_path_buf()];
    if model_path.is_file() {
        candidates.extend(model_path.parent().map(Path::to_path_buf));
    }
    let last = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf()).file_name().map(|n| n.to_owned());
    let base_path = Path::new(base);
    let same = base == model
        || candidates.iter().any(|c| {
            c.canonicalize().ok().zip(base_path.canonicalize().ok()).is_some_and(|(x, y)| x == y)
                || (last(c).is_some() && last(c) == last(base_path))
        });
    if !same {
        eprintln!(
            "note: {} says it was trained on base model \"{base}\", not \"{model}\"; the shapes match, \
             so it was merged anyway",
            adapter.display()
        );
    }
}
