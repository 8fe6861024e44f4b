//! Writes the full logits condlm computes for the first rows of a dataset, for the committed
//! real-model comparison with transformers (scripts/check_smollm2.py).
//! Usage: dump_logits MODEL DATA.jsonl ROWS OUT.safetensors
use anyhow::{Context, Result};
use condlm::data::dataset::{DataOptions, load_dataset};
use condlm::formats::load::load_model;
use condlm::kernels::lm_head::{HeadScratch, logits};
use condlm::network::activations::Activations;
use condlm::network::batch::PackedBatch;
use condlm::network::transformer::Mode;
use safetensors::{Dtype, tensor::TensorView};
use std::path::Path;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, data, rows, out] = args.as_slice() else {
        anyhow::bail!("usage: dump_logits MODEL DATA.jsonl ROWS OUT.safetensors");
    };
    let n: usize = rows.parse().context("ROWS must be a number")?;
    let m = load_model(model)?;
    let rows = load_dataset(Path::new(data), &m.tokenizer, &DataOptions::default())?.examples;
    let d = m.model.config.hidden_size;
    let mut tensors: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = Vec::new();
    let mut acts = Activations::default();
    for (i, e) in rows.iter().take(n).enumerate() {
        let batch = PackedBatch::new(std::slice::from_ref(&e.ids));
        m.model.forward(&batch, &mut acts, Mode::Infer);
        let all: Vec<usize> = (0..batch.len()).collect();
        let l = logits(&acts.x[..batch.len() * d], d, m.model.head(), &all, &mut HeadScratch::default());
        let ids: Vec<u8> = e.ids.iter().flat_map(|&t| (t as i64).to_le_bytes()).collect();
        tensors.push((format!("ids.{i}"), vec![e.ids.len()], Dtype::I64, ids));
        tensors.push((format!("y_start.{i}"), vec![1], Dtype::I64, (e.y_start() as i64).to_le_bytes().to_vec()));
        let lb: Vec<u8> = l.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((format!("logits.{i}"), vec![e.ids.len(), m.model.config.vocab_size], Dtype::F32, lb));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, shape, dt, bytes)| (name.clone(), TensorView::new(*dt, shape.clone(), bytes).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, Path::new(out))?;
    Ok(())
}
