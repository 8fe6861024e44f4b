//! The CUDA kernels against the CPU kernels they mirror, on one GPU (`info --devices --check-kernels`): small
//! random inputs (odd sizes, so that partial blocks run), each output compared as max |GPU − CPU| / max |CPU|.
//! The tolerances allow for FMA contraction, another summation order and CUDA's own exp/tanh/sqrt.
use super::comparisons::{Check, Compared, REL, compare, run_checks};
use anyhow::Result;
use condlm::kernels::activation::{GateAct, glu_backward as cpu_glu_backward, glu_forward as cpu_glu_forward};
use condlm::kernels::adamw::{AdamWConfig, AdamWScalars, adamw_step as cpu_adamw_step};
use condlm::kernels::attention::{
    QkvLayout, attention_backward as cpu_attention_backward, attention_forward as cpu_attention_forward,
};
use condlm::kernels::bf16::{round, rounded};
use condlm::kernels::cuda::device::Device;
use condlm::kernels::cuda::gemm::{Blas, GemmShape};
use condlm::kernels::cuda::ops::adamw::{Tensor, adamw_tensors};
use condlm::kernels::cuda::ops::attention::{Precision, attention_backward, attention_forward, tensor_cores};
use condlm::kernels::cuda::ops::column_scratch;
use condlm::kernels::cuda::ops::cross_entropy::cross_entropy_rows;
use condlm::kernels::cuda::ops::glu::{glu_backward, glu_forward};
use condlm::kernels::cuda::ops::indices::{self, Indices};
use condlm::kernels::cuda::ops::norm::{rmsnorm_backward, rmsnorm_forward};
use condlm::kernels::cuda::ops::rope::{RopeLayout, rope};
use condlm::kernels::gemm_bf16::{Bf16Isa, gemm_bf16};
use condlm::kernels::lm_head::{HeadScratch, cross_entropy_backward};
use condlm::kernels::mat::{Mat, MatMut};
use condlm::kernels::matmul::matmul;
use condlm::kernels::norm::{rmsnorm_backward as cpu_rmsnorm_backward, rmsnorm_forward as cpu_rmsnorm_forward};
use condlm::kernels::packed::MatrixRef;
use condlm::kernels::rope::{RopeTable, rope_backward, rope_forward};
use condlm::rng::uniform;

/// Runs every comparison on `d`, printing one line each as its op finishes (an op that fails to run is a line
/// too, and the others still run); returns how many failed.
pub fn run(d: &Device) -> Result<usize> {
    let checks: [(&str, Check<Device>); 7] = [
        ("gemm", gemm),
        ("rmsnorm", rmsnorm),
        ("rope", rope_check),
        ("attention", attention),
        ("glu", glu),
        ("cross_entropy", cross_entropy),
        ("adamw", adamw),
    ];
    run_checks(&format!("parity cuda:{}", d.gpu.ordinal), d, &checks)
}

/// A packed batch's seq_start of sequences of these lengths: each row's first row of its sequence.
pub(super) fn seq_starts(lengths: &[usize]) -> Vec<u32> {
    let mut at = 0;
    lengths
        .iter()
        .flat_map(|&n| {
            let first = at as u32;
            at += n;
            std::iter::repeat_n(first, n)
        })
        .collect()
}

/// `n` values uniform in [−scale, scale) from stream `stream`.
pub(super) fn random(n: usize, stream: u64, scale: f32) -> Vec<f32> {
    (0..n as u64).map(|i| ((uniform(15, stream, i) * 2.0 - 1.0) as f32) * scale).collect()
}

/// cuBLAS's x·Wᵀ against `matmul` (f32) and `gemm_bf16` (bf16 operands, the same rounded bits on both sides:
/// only the order of the f32 sums differs), at an odd shape and at a SmolLM2 and a Qwen2.5-1.5B MLP shape.
fn gemm(d: &Device, all: &mut Vec<Compared>) -> Result<()> {
    let blas = Blas::new(d)?;
    let s = &d.stream;
    for (m, k, n, accumulate) in [(37, 100, 33, true), (64, 576, 1536, false), (163, 1536, 8960, true)] {
        let shape = GemmShape { m, n, k };
        let (a, b, c0) = (random(m * k, 17, 1.0), random(n * k, 18, 0.1), random(m * n, 19, 1.0));
        let (ga, gb) = (s.clone_htod(&a)?, s.clone_htod(&b)?);
        let (ha, hb): (Vec<u16>, Vec<u16>) =
            (a.iter().map(|&v| round(v)).collect(), b.iter().map(|&v| round(v)).collect());
        let (ga16, gb16) = (s.clone_htod(&ha)?, s.clone_htod(&hb)?);
        let (mut cpu, mut cpu16) = (c0.clone(), c0.clone());
        matmul(MatMut::new(&mut cpu, m, n), Mat::new(&a, m, k), Mat::new(&b, n, k).t(), accumulate);
        gemm_bf16(
            Bf16Isa::best(),
            MatMut::new(&mut cpu16, m, n),
            Mat::new(&a, m, k),
            Mat::new(&b, n, k).t(),
            accumulate,
        );
        let (mut gc, mut gc16) = (s.clone_htod(&c0)?, s.clone_htod(&c0)?);
        blas.gemm(&mut gc, &ga, &gb, shape, accumulate)?;
        blas.gemm(&mut gc16, &ga16, &gb16, shape, accumulate)?;
        let what = format!("{m}×{k}·({n}×{k})ᵀ{}", if accumulate { " +=" } else { "" });
        compare(all, &format!("gemm f32 {what}"), &s.clone_dtoh(&gc)?, &cpu, 1e-5);
        compare(all, &format!("gemm bf16 {what}"), &s.clone_dtoh(&gc16)?, &cpu16, 1e-3);
    }
    Ok(())
}

fn rmsnorm(d: &Device, all: &mut Vec<Compared>) -> Result<()> {
    // 137 rows: dw's column sums over three chunks of rows.
    let (rows, dim, eps) = (137, 300, 1e-6);
    for offset in [0.0f32, 1.0] {
        let (x, w, dout, dx0, dw0) = (
            random(rows * dim, 1, 2.0),
            random(dim, 2, 1.0),
            random(rows * dim, 3, 1.0),
            random(rows * dim, 4, 0.5),
            random(dim, 5, 0.5),
        );
        let (mut out, mut rstd) = (vec![0.0; rows * dim], vec![0.0; rows]);
        cpu_rmsnorm_forward(&mut out, &mut rstd, &x, &w, offset, eps);
        let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
        cpu_rmsnorm_backward(&mut dx, Some(&mut dw), &dout, &x, &w, offset, &rstd);
        let s = &d.stream;
        let (gx, gw, gdout) = (s.clone_htod(&x)?, s.clone_htod(&w)?, s.clone_htod(&dout)?);
        let (mut gout, mut grstd) = (s.alloc_zeros::<f32>(rows * dim)?, s.alloc_zeros::<f32>(rows)?);
        rmsnorm_forward(
            d,
            &mut gout.as_view_mut(),
            &mut grstd.as_view_mut(),
            &gx.as_view(),
            &gw.as_view(),
            offset,
            eps,
        )?;
        let (mut gdx, mut gdw) = (s.clone_htod(&dx0)?, s.clone_htod(&dw0)?);
        let (gx, gw, gdout, grstd) = (gx.as_view(), gw.as_view(), gdout.as_view(), grstd.as_view());
        let (mut gdx, mut gdw, mut scratch) =
            (gdx.as_view_mut(), gdw.as_view_mut(), s.alloc_zeros::<f32>(column_scratch(rows, dim))?);
        rmsnorm_backward(d, &mut gdx, Some(&mut gdw), &gdout, &gx, &gw, offset, &grstd, &mut scratch.as_view_mut())?;
        compare(all, &format!("rmsnorm_forward out (offset {offset})"), &s.clone_dtoh(&gout)?, &out, 1e-6);
        compare(all, &format!("rmsnorm_forward rstd (offset {offset})"), &s.clone_dtoh(&grstd)?, &rstd, 1e-6);
        compare(all, &format!("rmsnorm_backward dx (offset {offset})"), &s.clone_dtoh(&gdx)?, &dx, 1e-5);
        compare(all, &format!("rmsnorm_backward dw (offset {offset})"), &s.clone_dtoh(&gdw)?, &dw, 1e-5);
    }
    Ok(())
}

fn rope_check(d: &Device, all: &mut Vec<Compared>) -> Result<()> {
    let (half, heads, col, max_pos) = (24, 3, 5, 50);
    let l = RopeLayout { row_len: col + heads * 64 + 7, col, heads, head_dim: 64, half };
    let inv_freq: Vec<f32> = (0..half).map(|i| 10000f32.powf(-(i as f32) / half as f32)).collect();
    let table = RopeTable::with_sets(&[&inv_freq], max_pos, l.head_dim, 1.1);
    let positions: Vec<u32> = (0..29u64).map(|i| (uniform(15, 6, i) * max_pos as f64) as u32).collect();
    let x = random(positions.len() * l.row_len, 7, 1.0);
    let s = &d.stream;
    let (gpos, gcos, gsin) = (indices::upload(s, &positions)?, s.clone_htod(&table.cos)?, s.clone_htod(&table.sin)?);
    let gpos = Indices::prefix(&gpos.0, gpos.1, positions.len(), "rope");
    for backward in [false, true] {
        let mut cpu = x.clone();
        let f = if backward { rope_backward } else { rope_forward };
        f(&mut cpu, l.row_len, l.col, l.heads, &positions, &table);
        let mut gbuf = s.clone_htod(&x)?;
        rope(d, backward, &mut gbuf.as_view_mut(), l, &gpos, &gcos.as_view(), &gsin.as_view())?;
        let name = if backward { "rope_backward" } else { "rope_forward (partial, scaled)" };
        compare(all, name, &s.clone_dtoh(&gbuf)?, &cpu, 1e-6);
    }
    Ok(())
}

/// The attention checks' layouts, each with its own scale: GQA (6 query heads over 2, q/k/v columns out of order
/// in rows padded past them); a sliding window of 16 over 4 heads of 96 features (not a multiple of a half-warp's
/// 16 lanes); Gemma 3's widest heads, 256 features (the kernels' ATT_MAX_HEAD_DIM), 4 query heads on 1; and heads
/// of 160 in a window of 24, which the tensor cores' 256-feature kernels take with their second slice part-filled.
pub fn attention_layouts() -> [(&'static str, QkvLayout); 4] {
    let gqa = QkvLayout {
        row_len: 655,
        q_col: 136,
        k_col: 520,
        v_col: 3,
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 64,
        scale: 0.125,
        window: usize::MAX,
    };
    let windowed = QkvLayout {
        row_len: 1152,
        q_col: 0,
        k_col: 384,
        v_col: 768,
        n_heads: 4,
        n_kv_heads: 4,
        head_dim: 96,
        scale: 0.3,
        window: 16,
    };
    let wide = QkvLayout {
        row_len: 1536,
        q_col: 0,
        k_col: 1024,
        v_col: 1280,
        n_heads: 4,
        n_kv_heads: 1,
        head_dim: 256,
        scale: 0.0625,
        window: usize::MAX,
    };
    // Heads of 256 split their outputs into two slices of 128 on the tensor cores; 160 leaves the second part-filled.
    let sliced = QkvLayout {
        row_len: 1300,
        q_col: 10,
        k_col: 650,
        v_col: 970,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 160,
        scale: 0.08,
        window: 24,
    };
    [
        ("GQA 6/2 heads of 64", gqa),
        ("4 heads of 96, window 16", windowed),
        ("GQA 4/1 heads of 256", wide),
        ("GQA 4/2 heads of 160, window 24", sliced),
    ]
}

/// Each layout in f32 (against the CPU kernels, 1e-5) and in bf16 (the tensor-core kernels where
/// `tensor_cores` runs them, else attention.cu's: against the CPU kernels on q, k, v and dO rounded to bf16, so
/// that only the rounding of P and dS and the summation order are left: 1e-2).
fn attention(d: &Device, all: &mut Vec<Compared>) -> Result<()> {
    let seq_start = seq_starts(&[1, 37, 100, 5]);
    let rows = seq_start.len();
    let s = &d.stream;
    let gstart = indices::upload(s, &seq_start)?;
    let gstart = Indices::prefix(&gstart.0, gstart.1, seq_start.len(), "attention");
    for ((name, l), precision) in
        attention_layouts().into_iter().flat_map(|x| [(x, Precision::F32), (x, Precision::Bf16)])
    {
        let mma = tensor_cores(d, l.head_dim, precision);
        let (name, tol) = match (precision, mma) {
            (Precision::F32, _) => (name.to_string(), 1e-5),
            (_, Some(m)) => (format!("{name}, bf16 on tensor cores (mma{m})"), 1e-2),
            (_, None) => (format!("{name}, bf16 in f32 (no tensor-core kernel)"), 1e-5),
        };
        let cpu_in =
            |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| if mma.is_some() { rounded(x) } else { x }).collect() };
        let qkv = random(rows * l.row_len, 20, 2.0);
        let mut cpu = vec![0.0; rows * l.n_heads * l.head_dim];
        cpu_attention_forward(&mut cpu, &cpu_in(&qkv), l, &seq_start);
        let (gqkv, mut gout) = (s.clone_htod(&qkv)?, s.alloc_zeros::<f32>(cpu.len())?);
        let mut stats = s.alloc_zeros::<f32>(rows * l.n_heads * 3)?;
        let (mut o, mut st) = (gout.as_view_mut(), stats.as_view_mut());
        attention_forward(d, &mut o, Some(&mut st), &gqkv.as_view(), l, &gstart, precision)?;
        compare(all, &format!("attention_forward {name}"), &s.clone_dtoh(&gout)?, &cpu, tol);
        // The backward writes only the q, k, v columns: dqkv starts random so that the others are checked too.
        let (datt, dqkv0) = (random(cpu.len(), 21, 1.0), random(qkv.len(), 22, 1.0));
        let mut dqkv = dqkv0.clone();
        cpu_attention_backward(&mut dqkv, &cpu_in(&datt), &cpu_in(&qkv), &cpu, l, &seq_start);
        let (gdatt, mut gdqkv) = (s.clone_htod(&datt)?, s.clone_htod(&dqkv0)?);
        let (gdatt, gqkv, gout) = (gdatt.as_view(), gqkv.as_view(), gout.as_view());
        let mut gd = gdqkv.as_view_mut();
        attention_backward(d, &mut gd, &mut stats.as_view_mut(), &gdatt, &gqkv, &gout, l, &gstart, precision)?;
        let gpu = s.clone_dtoh(&gdqkv)?;
        let (aw, kw) = (l.n_heads * l.head_dim, l.n_kv_heads * l.head_dim);
        let mut other = vec![true; l.row_len];
        for (part, col, width) in [("dq", l.q_col, aw), ("dk", l.k_col, kw), ("dv", l.v_col, kw)] {
            other[col..col + width].fill(false);
            let pick =
                |b: &[f32]| -> Vec<f32> { b.chunks(l.row_len).flat_map(|r| r[col..col + width].to_vec()).collect() };
            compare(all, &format!("attention_backward {part} {name}"), &pick(&gpu), &pick(&dqkv), tol);
        }
        let rest = |b: &[f32]| -> Vec<f32> {
            b.iter().enumerate().filter(|(i, _)| other[i % l.row_len]).map(|(_, v)| *v).collect()
        };
        compare(all, &format!("attention_backward untouched {name}"), &rest(&gpu), &rest(&dqkv), 0.0);
    }
    Ok(())
}

/// 97 rows of an MLP 103 wide: gate and up side by side in each row of gate_up (rows, 2·103), as the device keeps
/// them, against the CPU kernels on gate and up apart.
fn glu(d: &Device, all: &mut Vec<Compared>) -> Result<()> {
    let (rows, f) = (97, 103);
    let n = rows * f;
    let (gate, up, dout) = (random(n, 8, 6.0), random(n, 9, 2.0), random(n, 10, 1.0));
    let gate_up: Vec<f32> = gate.chunks(f).zip(up.chunks(f)).flat_map(|(g, u)| g.iter().chain(u)).copied().collect();
    let s = &d.stream;
    let (ggate_up, gdout) = (s.clone_htod(&gate_up)?, s.clone_htod(&dout)?);
    for act in [GateAct::Silu, GateAct::GeluTanh] {
        let mut out = vec![0.0; n];
        cpu_glu_forward(&mut out, &gate, &up, act);
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        cpu_glu_backward(&mut dg, &mut du, &dout, &gate, &up, act);
        let mut gout = s.alloc_zeros::<f32>(n)?;
        glu_forward(d, &mut gout.as_view_mut(), &ggate_up.as_view(), f, act)?;
        let mut gd = s.alloc_zeros::<f32>(2 * n)?;
        glu_backward(d, &mut gd.as_view_mut(), &gdout.as_view(), &ggate_up.as_view(), f, act)?;
        let gd = s.clone_dtoh(&gd)?;
        let half = |h: usize| -> Vec<f32> { gd.chunks(2 * f).flat_map(|r| &r[h * f..][..f]).copied().collect() };
        compare(all, &format!("glu_forward {act:?}"), &s.clone_dtoh(&gout)?, &out, 1e-6);
        compare(all, &format!("glu_backward dgate {act:?}"), &half(0), &dg, 1e-6);
        compare(all, &format!("glu_backward dup {act:?}"), &half(1), &du, 1e-6);
    }
    Ok(())
}

/// The CPU reference is the fused head itself with an identity head (vocab × vocab): its logits are the hidden
/// rows exactly, and its dhidden the dlogits exactly.
fn cross_entropy(d: &Device, all: &mut Vec<Compared>) -> Result<()> {
    let (rows, vocab, weight) = (5, 1000, 0.37f32);
    let logits = random(rows * vocab, 11, 8.0);
    let targets: Vec<u32> = (0..rows as u64).map(|i| (uniform(15, 12, i) * vocab as f64) as u32).collect();
    let mut identity = vec![0.0f32; vocab * vocab];
    identity.iter_mut().step_by(vocab + 1).for_each(|v| *v = 1.0);
    let head = MatrixRef::Dense { data: &identity, rows: vocab, cols: vocab };
    let s = &d.stream;
    let gtargets = indices::upload(s, &targets)?;
    let gtargets = Indices::prefix(&gtargets.0, gtargets.1, targets.len(), "cross_entropy");
    for smoothing in [0.0f32, 0.1] {
        let mut dlogits = vec![0.0; rows * vocab];
        let all_rows: Vec<usize> = (0..rows).collect();
        let loss = cross_entropy_backward(
            &logits,
            vocab,
            head,
            &all_rows,
            &targets,
            weight,
            smoothing,
            &mut dlogits,
            None,
            &mut HeadScratch::default(),
        );
        let (mut glogits, mut gloss) = (s.clone_htod(&logits)?, s.alloc_zeros::<f64>(rows)?);
        cross_entropy_rows(d, &mut glogits.as_view_mut(), &mut gloss.as_view_mut(), &gtargets, weight, smoothing)?;
        let gpu_loss: f64 = s.clone_dtoh(&gloss)?.iter().sum();
        let rel = ((gpu_loss - loss) / loss).abs();
        all.push(Compared {
            name: format!("cross_entropy_rows loss (ε {smoothing})"),
            measure: REL,
            err: rel,
            tol: 1e-6,
        });
        compare(all, &format!("cross_entropy_rows dlogits (ε {smoothing})"), &s.clone_dtoh(&glogits)?, &dlogits, 1e-6);
    }
    Ok(())
}

fn adamw(d: &Device, all: &mut Vec<Compared>) -> Result<()> {
    let n = 10_007;
    let (w, g, m) = (random(n, 13, 1.0), random(n, 14, 0.1), random(n, 15, 0.01));
    let v: Vec<f32> = random(n, 16, 1e-3).iter().map(|x| x.abs()).collect();
    let step = AdamWScalars::new(&AdamWConfig::default(), 1e-3, 3);
    let (mut cpu_w, mut cpu_m, mut cpu_v) = (w.clone(), m.clone(), v.clone());
    // Clipping's coefficient scales the gradient first, in f32, on both sides.
    let clip = 0.37f32;
    let clipped: Vec<f32> = g.iter().map(|&x| x * clip).collect();
    cpu_adamw_step(&mut cpu_w, &clipped, &mut cpu_m, &mut cpu_v, &step);
    let s = &d.stream;
    let (mut gw, mut gg, mut gm, mut gv) = (s.clone_htod(&w)?, s.clone_htod(&g)?, s.clone_htod(&m)?, s.clone_htod(&v)?);
    let mut table = s.alloc_zeros::<u64>(1)?;
    let one = Tensor {
        w: gw.as_view_mut(),
        g: gg.as_view_mut(),
        m: gm.as_view_mut(),
        v: gv.as_view_mut(),
        decays: true,
        bf16: None,
    };
    adamw_tensors(d, &mut table, &mut [one], clip, &step)?;
    compare(all, "adamw_tensors w", &s.clone_dtoh(&gw)?, &cpu_w, 1e-6);
    compare(all, "adamw_tensors m", &s.clone_dtoh(&gm)?, &cpu_m, 1e-6);
    compare(all, "adamw_tensors v", &s.clone_dtoh(&gv)?, &cpu_v, 1e-6);
    compare(all, "adamw_tensors g (zeroed)", &s.clone_dtoh(&gg)?, &vec![0.0; n], 0.0);
    Ok(())
}
