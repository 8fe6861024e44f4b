//! Runs N LoRA (or full) optimizer steps on consecutive batches of a JSONL file and prints each
//! step's loss — the condlm side of the training rows of bench/bench.py (loss agreement, tokens/s, peak RSS).
//! Usage: train_steps MODEL DATA.jsonl (ADAPTER_DIR | full) STEPS BATCH LR
use anyhow::{Context, Result};
use condlm::data::dataset::{DataOptions, load_dataset};
use condlm::formats::load::load_model;
use condlm::formats::peft::load_adapter;
use condlm::network::adapters::set_full_finetune;
use condlm::train::optim::AdamWConfig;
use condlm::train::schedule::Schedule;
use condlm::train::trainer::{TrainConfig, Trainer};
use std::path::Path;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, data, adapter, steps, batch, lr] = args.as_slice() else {
        anyhow::bail!("usage: train_steps MODEL DATA.jsonl (ADAPTER_DIR | full) STEPS BATCH LR");
    };
    let (steps, batch, lr): (usize, usize, f64) =
        (steps.parse().context("STEPS")?, batch.parse().context("BATCH")?, lr.parse().context("LR")?);
    let mut m = load_model(model)?;
    if adapter == "full" {
        set_full_finetune(&mut m.model, false);
    } else {
        load_adapter(Path::new(adapter), &mut m.model)?;
    }
    let ds = load_dataset(Path::new(data), &m.tokenizer, &DataOptions::default())?;
    let rows = &ds.examples;
    let cfg = TrainConfig {
        lr,
        schedule: Schedule::Constant,
        warmup_steps: 0,
        total_steps: steps,
        adamw: AdamWConfig::default(),
        max_grad_norm: None,
        label_smoothing: 0.0,
        seed: 0,
        checkpoint_activations: false,
    };
    let mut trainer = Trainer::new(m.model, cfg)?;
    let (mut tokens, mut secs) = (0usize, 0.0f64);
    for s in 0..steps {
        // The same batches as peft_bench.py: rows (s·B + k) mod len.
        let idx: Vec<usize> = (0..batch).map(|k| (s * batch + k) % rows.len()).collect();
        let mb: Vec<_> = idx.iter().map(|&i| &rows[i]).collect();
        let labels: Vec<&str> = idx.iter().map(|&i| ds.sources[i].as_str()).collect();
        let t0 = std::time::Instant::now();
        let st = trainer.step(&mb, batch, &labels)?;
        let dt = t0.elapsed().as_secs_f64();
        if s > 0 {
            tokens += st.tokens;
            secs += dt;
        }
        println!("{}", serde_json::json!({"step": s, "loss": st.loss, "tokens": st.tokens, "secs": dt}));
    }
    println!("{}", serde_json::json!({"tokens_per_s": tokens as f64 / secs, "peak_rss_mib": peak_rss_mib()}));
    Ok(())
}
