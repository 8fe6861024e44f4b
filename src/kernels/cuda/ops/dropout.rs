//! Dropout on the GPU (dropout.cu), as `kernels::dropout`: the same mask bits (one per element, kept when
//! `rng::uniform_at(key, i) >= p`, in u64 words) and the same values.
use super::{Elem, THREADS, by_rows, elementwise, reduce};
use crate::kernels::cuda::device::Device;
use crate::kernels::dropout::mask_words;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, LaunchConfig, PushKernelArg};

/// 1/(1 − p) rounded as `kernels::dropout` rounds it (in f32), for the kernels to multiply by.
fn keep_scale(p: f32) -> f32 {
    1.0 / (1.0 - p)
}

/// x_drop = dropout(x), drawing the mask into keep. x, x_drop: (n), f32 or bf16 ([`Elem`]); keep: (mask_words(n)).
pub fn dropout_forward<T: Elem>(
    d: &Device,
    x_drop: &mut CudaViewMut<T>,
    keep: &mut CudaViewMut<u64>,
    x: &CudaView<T>,
    p: f32,
    key: u64,
) -> Result<(), DriverError> {
    let n = x.len();
    assert!(x_drop.len() == n && keep.len() == mask_words(n), "dropout_forward: shapes");
    let (p64, scale) = (p as f64, keep_scale(p));
    let name = if T::BF16 { "dropout_forward_bf16" } else { "dropout_forward" };
    let mut b = d.stream.launch_builder(d.function(name));
    b.arg(x_drop).arg(keep).arg(x).arg(&n).arg(&p64).arg(&scale).arg(&key);
    // SAFETY: a warp per 32-bit half h < 2·mask_words(n) of the mask (its 32 lanes element 32·h + lane each): lane
    // 0 writes the half, inside keep's mask_words(n) words; lanes below n write x_drop[i] and read x[i], inside
    // the views (lengths checked). THREADS is a multiple of 32, so every warp is whole, as the vote requires.
    unsafe { b.launch(elementwise(64 * mask_words(n))) }.map(drop)
}

/// x_drop = dropout(x) again from the mask [`dropout_forward`] drew. x, x_drop: (n); keep: ≥ mask_words(n).
pub fn dropout_again(
    d: &Device,
    x_drop: &mut CudaViewMut<f32>,
    keep: &CudaView<u64>,
    x: &CudaView<f32>,
    p: f32,
) -> Result<(), DriverError> {
    let n = x.len();
    assert!(x_drop.len() == n && keep.len() >= mask_words(n), "dropout_again: shapes");
    let scale = keep_scale(p);
    let mut b = d.stream.launch_builder(d.function("dropout_again"));
    b.arg(x_drop).arg(keep).arg(x).arg(&n).arg(&scale);
    // SAFETY: element-wise over n values; element i reads keep[i / 64] < mask_words(n) ≤ keep.len().
    unsafe { b.launch(elementwise(n)) }.map(drop)
}

/// dx **+=** keep ⊙ t / (1 − p). dx, t: (n); keep: ≥ mask_words(n).
pub fn dropout_backward(
    d: &Device,
    dx: &mut CudaViewMut<f32>,
    t: &CudaView<f32>,
    keep: &CudaView<u64>,
    p: f32,
) -> Result<(), DriverError> {
    let n = t.len();
    assert!(dx.len() == n && keep.len() >= mask_words(n), "dropout_backward: shapes");
    let scale = keep_scale(p);
    let mut b = d.stream.launch_builder(d.function("dropout_backward"));
    b.arg(dx).arg(t).arg(keep).arg(&n).arg(&scale);
    // SAFETY: element-wise over n values; element i reads keep[i / 64] < mask_words(n) ≤ keep.len().
    unsafe { b.launch(elementwise(n)) }.map(drop)
}

/// dx (rows, in) **+=** keep ⊙ (du·a) / (1 − p): LoRA's input gradient through its dropout, du (rows, r), a (r, in),
/// keep ≥ mask_words(rows·in) — [`dropout_backward`] of the product, the product never stored. A dx in bf16
/// makes it a bf16 product (du and a rounded as operands, dx rounded after the add).
#[allow(clippy::too_many_arguments)]
pub fn dropout_lora_dx<T: Elem>(
    d: &Device,
    dx: &mut CudaViewMut<T>,
    du: &CudaView<f32>,
    a: &CudaView<f32>,
    keep: &CudaView<u64>,
    (rows, inp, r): (usize, usize, usize),
    p: f32,
) -> Result<(), DriverError> {
    let n = rows * inp;
    assert!(
        dx.len() == n && du.len() == rows * r && a.len() == r * inp && keep.len() >= mask_words(n),
        "dropout_lora_dx: shapes"
    );
    assert!(inp <= i32::MAX as usize && r <= i32::MAX as usize, "dropout_lora_dx: in {inp} or r {r} too large");
    let (scale, [inp32, r32]) = (keep_scale(p), [inp, r].map(|v| v as i32));
    let name = if T::BF16 { "dropout_lora_dx_bf16" } else { "dropout_lora_dx" };
    let mut b = d.stream.launch_builder(d.function(name));
    b.arg(dx).arg(du).arg(a).arg(keep).arg(&rows).arg(&inp32).arg(&r32).arg(&scale);
    // SAFETY: element (row, col) of (rows, in), i = row·in + col, reads keep[i / 64] (< mask_words(n)), du[row·r + j]
    // and a[j·in + col] for j < r (inside du's rows·r and a's r·in values) and writes dx[i] (n values).
    unsafe { b.launch(by_rows(rows, inp)) }.map(drop)
}

/// Rows per block of `dropout_lora_da_partial` and du's columns per block: dropout.cu's LORA_DA_ROWS, LORA_DA_R.
const DA_ROWS: usize = 128;
const DA_R: usize = 16;

/// Values of the scratch [`dropout_lora_da`] needs at `shape` (rows, in, r): one (r, in) sum per chunk of rows.
pub fn lora_da_scratch((rows, inp, r): (usize, usize, usize)) -> usize {
    rows.div_ceil(DA_ROWS) * r * inp
}

/// g (r, in) **+=** duᵀ · dropout(x): LoRA's dA through its dropout, du (rows, r), x (rows, in), keep ≥
/// mask_words(rows·in) — the product of `dropout_again`'s values, never stored; `partials` ≥
/// [`lora_da_scratch`] values. Two launches: per-chunk sums, then their sum in chunk order (the same bits every run).
/// An x in bf16 makes it a bf16 product (du and dropout(x) rounded as operands, f32 sums).
#[allow(clippy::too_many_arguments)]
pub fn dropout_lora_da<T: Elem>(
    d: &Device,
    g: &mut CudaViewMut<f32>,
    partials: &mut CudaViewMut<f32>,
    du: &CudaView<f32>,
    x: &CudaView<T>,
    keep: &CudaView<u64>,
    shape: (usize, usize, usize),
    p: f32,
) -> Result<(), DriverError> {
    let (rows, inp, r) = shape;
    let (n, chunks) = (rows * inp, rows.div_ceil(DA_ROWS));
    assert!(
        g.len() == r * inp && du.len() == rows * r && x.len() == n && keep.len() >= mask_words(n),
        "dropout_lora_da: shapes"
    );
    assert!(partials.len() >= lora_da_scratch(shape), "dropout_lora_da: scratch of {} values", partials.len());
    assert!(inp <= i32::MAX as usize && chunks <= 65_535 && r.div_ceil(DA_R) <= 65_535, "dropout_lora_da: {shape:?}");
    if n == 0 || r == 0 {
        return Ok(());
    }
    let (scale, [inp32, r32]) = (keep_scale(p), [inp, r].map(|v| v as i32));
    let name = if T::BF16 { "dropout_lora_da_partial_bf16" } else { "dropout_lora_da_partial" };
    let mut b = d.stream.launch_builder(d.function(name));
    b.arg(&mut *partials).arg(du).arg(x).arg(keep).arg(&rows).arg(&inp32).arg(&r32).arg(&scale);
    let grid = (inp.div_ceil(THREADS as usize) as u32, chunks as u32, r.div_ceil(DA_R) as u32);
    let cfg = LaunchConfig { grid_dim: grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: block (bx, c, z) reads du's rows c·DA_ROWS.. (< rows) at columns z·DA_R.. (< r), and, for its columns
    // col < in, x and keep at those rows' elements (< rows·in); it writes partials[(c·r + j)·in + col], j < r, below
    // chunks·r·in ≤ partials.len() (checked).
    unsafe { b.launch(cfg) }?;
    reduce::add_chunk_sums(d, g, &partials.as_view(), chunks)
}
