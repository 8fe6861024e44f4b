//! Loads a model (HF folder, .gguf file or hub id) and saves it as a Hugging Face checkpoint folder
//! (config.json, model.safetensors in F32, tokenizer files), for scripts/check_export_transformers.py.
//! Usage: export_hf MODEL OUT_DIR
use anyhow::Result;
use condlm::formats::hf_export::save_hf_folder;
use condlm::formats::load::load_model;
use std::path::Path;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, out] = args.as_slice() else {
        anyhow::bail!("usage: export_hf MODEL OUT_DIR");
    };
    let m = load_model(model)?;
    save_hf_folder(Path::new(out), &m.model, &m.tokenizer, &m.files, None)?;
    eprintln!("saved {model} as an HF folder in {out}");
    Ok(())
}
