//! `condlm merge`: fold a PEFT LoRA adapter into its base model and write the result as a Hugging Face
//! checkpoint folder (config.json, model.safetensors in F32, tokenizer files) that transformers loads
//! with `AutoModelForCausalLM.from_pretrained(out)` and condlm with `--model out`.
//!
//! `--out` handling: the folder is written atomically (a temporary sibling folder, then renamed), so
//! it is complete or absent — a failed merge (adapter for another base, unreadable files, a folder
//! that cannot be written) leaves no output behind. An `--out` that does not exist or is an empty
//! folder is written; an existing non-empty folder (the output of an earlier merge) is replaced only
//! with `--force`, because replacing means deleting what is there, and only when it holds nothing but a
//! model folder's files (any other file says the folder is something else). `--out` may never be, or
//! contain, the base model or the adapter, even with `--force`.
use super::AdapterArgs;
use anyhow::{Context, Result};
use clap::Args;
use condlm::formats::hf_export::{check_out_dir, save_hf_folder};
use condlm::formats::load::load_model;
use condlm::formats::trained_on::TrainedOn;
use condlm::network::adapters;
use std::path::{Path, PathBuf};

/// Merge a PEFT LoRA adapter into its base model (W += (α/r)·B·A) and save a Hugging Face checkpoint folder.
#[derive(Args)]
#[command(mut_arg("adapter", |a| a.required(true).help(
    "PEFT adapter folder (adapter_config.json + adapter_model.safetensors), trained for this base model (required)"
)))]
pub struct MergeArgs {
    /// Base model: an HF checkpoint folder, a .gguf file, or a hub id org/name (from the HF cache, downloaded when online).
    #[arg(long)]
    model: String,
    #[command(flatten)]
    adapter: AdapterArgs,
    /// Output folder for the merged checkpoint (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it holds an earlier model folder (its files are deleted; a folder holding any other file is
    /// refused all the same) [default: off: a non-empty --out is an error].
    #[arg(long, visible_alias = "overwrite")]
    force: bool,
}

pub fn run(a: MergeArgs) -> Result<()> {
    condlm::output::remove_partial_outputs_on_signal()?;
    let model_path = Path::new(&a.model);
    let adapter = a.adapter.adapter.as_deref().context("--adapter is required")?;
    let mut protected = vec![adapter];
    if model_path.exists() {
        protected.push(model_path);
    }
    check_out_dir(&a.out, a.force, &protected)?;
    let start = std::time::Instant::now();
    let mut m = load_model(&a.model)?;
    check_out_dir(&a.out, a.force, &[m.files.path()])?;
    let cfg = a.adapter.apply(&a.model, &mut m)?.context("--adapter is required")?.lora;
    let adapted = m.model.blocks.iter().flat_map(|b| b.linears()).filter(|l| l.lora.is_some()).count();
    adapters::merge(&mut m.model)?;
    let trained_on = TrainedOn::read(adapter)?;
    save_hf_folder(&a.out, &m.model, &m.tokenizer, &m.files, trained_on)
        .with_context(|| format!("cannot write the merged model to {}", a.out.display()))?;
    eprintln!(
        "merged {adapted} LoRA adapters (r={}, alpha={}{}) from {} into {} -> {} ({} parameters, F32, {:.1}s)",
        cfg.rank,
        cfg.alpha,
        if cfg.rslora { ", rsLoRA" } else { "" },
        adapter.display(),
        a.model,
        a.out.display(),
        m.model.config.num_parameters(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
