//! How far `--compute int8` moves decoding's log-probs from the f32 path: teacher-forces E2E rows token by
//! token through the decoder (the matrix-vector kernels decoding runs) on the stored base, once per compute,
//! and compares log p(y_t | y_<t, x) of the reference tokens and the greedy choices.
//! Usage: int8_agreement MODEL DATA.jsonl ROWS
use anyhow::{Context, Result};
use condlm::data::dataset::{DataOptions, load_dataset};
use condlm::formats::load::load_model;
use condlm::generate::decoder::Decoder;
use condlm::kernels::compute::{Compute, set_compute};
use condlm::network::batch::Row;
use std::path::Path;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, data, rows] = args.as_slice() else {
        anyhow::bail!("usage: int8_agreement MODEL DATA.jsonl ROWS");
    };
    let n: usize = rows.parse().context("ROWS must be a number")?;
    let m = load_model(model)?;
    let rows = load_dataset(Path::new(data), &m.tokenizer, &DataOptions::default())?.examples;
    let (mut tokens, mut max_diff, mut sum_diff, mut same_argmax) = (0usize, 0.0f64, 0.0f64, 0usize);
    let (mut nll_f32, mut nll_int8) = (0.0f64, 0.0f64);
    for e in rows.iter().take(n) {
        let [f32_run, int8_run] = [Compute::F32, Compute::Int8].map(|c| {
            set_compute(c);
            teacher_forced(&m.model, &e.ids, &e.targets)
        });
        for ((lp_a, arg_a), (lp_b, arg_b)) in f32_run?.into_iter().zip(int8_run?) {
            let d = (lp_a - lp_b).abs();
            (tokens, sum_diff, max_diff) = (tokens + 1, sum_diff + d, max_diff.max(d));
            (nll_f32, nll_int8) = (nll_f32 - lp_a, nll_int8 - lp_b);
            same_argmax += usize::from(arg_a == arg_b);
        }
    }
    let t = tokens as f64;
    println!(
        "{n} rows, {tokens} y tokens: |Δ log p| mean {:.5} max {:.5}; NLL f32 {:.5} int8 {:.5} (Δ {:+.5}); \
         greedy token agreement {:.2} %",
        sum_diff / t,
        max_diff,
        nll_f32 / t,
        nll_int8 / t,
        (nll_int8 - nll_f32) / t,
        100.0 * same_argmax as f64 / t
    );
    Ok(())
}

/// (log p of the reference token, argmax) at every target position, feeding the row one token per call.
fn teacher_forced(
    model: &condlm::network::transformer::Transformer,
    ids: &[u32],
    targets: &[std::ops::Range<usize>],
) -> Result<Vec<(f64, u32)>> {
    let mut dec = Decoder::new(model, 1, ids.len(), 1)?;
    let mut out = Vec::new();
    for (pos, &token) in ids.iter().enumerate().take(ids.len() - 1) {
        let logits = dec.forward(&[Row { slot: 0, pos: pos as u32, token }], &[0])?;
        let next = pos + 1;
        if targets.iter().any(|r| r.contains(&next)) {
            let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
            let arg = logits.iter().enumerate().fold(0, |a, (i, &l)| if l > logits[a] { i } else { a });
            out.push((logits[ids[next] as usize] as f64 - lse, arg as u32));
        }
    }
    Ok(out)
}
