//! The measured speed of the attention kernels on a GPU (`info --devices --check-kernels`): forward and backward over
//! a packed batch of 16 sequences at SmolLM2-135M's, Qwen2.5-1.5B's and Gemma 3's heads, in f32 (attention.cu) and
//! in bf16 on the tensor cores (attention_mma.cu) — what `--compute bf16` gains in attention, beside the GEMM peak.
//! Rows per sequence: 300, or `CONDLM_ATTENTION_SPEED_ROWS` (the CUDA emulator of tests/cuda_emulated.rs runs them on
//! the CPU).
use anyhow::{Result, anyhow};
use condlm::kernels::attention::QkvLayout;
use condlm::kernels::cuda::device::Device;
use condlm::kernels::cuda::ops::attention::{Precision, attention_backward, attention_forward, tensor_cores};
use condlm::kernels::cuda::ops::indices::{self, Indices};
use std::time::Instant;

/// Sequences in the batch, and passes timed after one untimed (module and cache warm-up).
const SEQUENCES: usize = 16;
const REPS: usize = 5;

/// Prints one line per layout and precision: milliseconds per forward and backward, and TFLOP/s counted as
/// FlashAttention's papers count them (forward 4·head_dim per (query, key) pair a query sees, per head; backward 2.5
/// times that), so that the numbers compare with theirs.
pub fn run(d: &Device) -> Result<()> {
    let rows_per =
        match std::env::var("CONDLM_ATTENTION_SPEED_ROWS") {
            Ok(v) => v.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| {
                anyhow!("CONDLM_ATTENTION_SPEED_ROWS={v} is not a positive integer (unset it for 300)")
            })?,
            Err(_) => 300,
        };
    let rows = SEQUENCES * rows_per;
    let seq_start: Vec<u32> = (0..rows).map(|i| (i - i % rows_per) as u32).collect();
    let s = &d.stream;
    let gstart = indices::upload(s, &seq_start)?;
    let gstart = Indices::prefix(&gstart.0, gstart.1, rows, "attention speed");
    let shapes = [("SmolLM2-135M", 9, 3, 64), ("Qwen2.5-1.5B", 12, 2, 128), ("Gemma 3 270M", 4, 1, 256)];
    for (name, heads, kv_heads, head_dim) in shapes {
        let l = QkvLayout {
            row_len: (heads + 2 * kv_heads) * head_dim,
            q_col: 0,
            k_col: heads * head_dim,
            v_col: (heads + kv_heads) * head_dim,
            n_heads: heads,
            n_kv_heads: kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: usize::MAX,
        };
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n).map(|i| ((i * 2_654_435_761 + seed) % 1000) as f32 / 1000.0 - 0.5).collect()
        };
        let qkv = s.clone_htod(&values(rows * l.row_len, 1))?;
        let datt = s.clone_htod(&values(rows * heads * head_dim, 2))?;
        let mut out = s.alloc_zeros::<f32>(rows * heads * head_dim)?;
        let mut dqkv = s.alloc_zeros::<f32>(rows * l.row_len)?;
        let mut stats = s.alloc_zeros::<f32>(rows * heads * 3)?;
        let pairs = SEQUENCES * rows_per * (rows_per + 1) / 2;
        let forward_flops = 4.0 * (head_dim * heads * pairs) as f64;
        for precision in [Precision::F32, Precision::Bf16] {
            let kernels = match tensor_cores(d, head_dim, precision) {
                Some(m) => format!("bf16 on tensor cores (attention_mma.cu, mma{m})"),
                None => "f32 (attention.cu)".to_string(),
            };
            let mut timed = [0.0f64; 2];
            for rep in 0..=REPS {
                let t = Instant::now();
                let (mut o, mut st) = (out.as_view_mut(), stats.as_view_mut());
                attention_forward(d, &mut o, Some(&mut st), &qkv.as_view(), l, &gstart, precision)?;
                s.synchronize()?;
                let forward = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let (mut dq, mut st) = (dqkv.as_view_mut(), stats.as_view_mut());
                attention_backward(
                    d,
                    &mut dq,
                    &mut st,
                    &datt.as_view(),
                    &qkv.as_view(),
                    &out.as_view(),
                    l,
                    &gstart,
                    precision,
                )?;
                s.synchronize()?;
                if rep > 0 {
                    timed[0] += forward / REPS as f64;
                    timed[1] += t.elapsed().as_secs_f64() / REPS as f64;
                }
            }
            let tflops = 3.5 * forward_flops / (timed[0] + timed[1]) / 1e12;
            out!(
                "speed  cuda:{} attention {name} heads ({heads}/{kv_heads} of {head_dim}), {SEQUENCES} × {rows_per} rows, \
                 {kernels}: forward {:.3} ms, backward {:.3} ms, {tflops:.2} TFLOP/s (mean of {REPS})",
                d.gpu.ordinal,
                timed[0] * 1e3,
                timed[1] * 1e3
            );
        }
    }
    Ok(())
}
