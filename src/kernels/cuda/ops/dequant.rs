//! GGML blocks decoded on the GPU (dequant.cu), as `kernels::dequant`: a weight matrix kept in its stored blocks,
//! decoded into scratch before a product, or multiplied straight from its blocks by a decoding step's few rows.
use super::{Elem, elementwise};
use crate::kernels::cuda::device::Device;
use crate::kernels::dequant::GgmlType;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, LaunchConfig, PushKernelArg};

/// Whether dequant.cu decodes `ty`: the block-quantized types. (F16 and BF16 matrices are as small as their bf16
/// copy, which a product reads without decoding: they are not kept packed.)
pub fn decodes(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// Values that share a scale in every block type: a thread's unit of decoding (dequant.cu's GROUP).
const GROUP: usize = 16;

/// The rows of a one block of [`packed_gemv`] multiplies (dequant.cu's GEMV_ROWS).
const GEMV_ROWS: usize = 8;

/// The most rows of a that [`packed_gemv`] takes: a decoding step's (up to 4 groups of [`GEMV_ROWS`], one launch,
/// each group reading the blocks again — still less traffic than a decoded matrix written and read).
pub const GEMV_MAX_ROWS: usize = 4 * GEMV_ROWS;

/// Blocks of `ty` from byte `at` of `words` (bytes as little-endian u32 words) holding `n` values: checks that they
/// are whole blocks inside the buffer. Returns the block's value count.
fn check_blocks(words: &CudaView<u32>, at: usize, ty: GgmlType, n: usize, op: &str) -> usize {
    assert!(decodes(ty), "{op}: {ty} is not a block type dequant.cu decodes");
    let block = ty.block_size();
    assert!(n.is_multiple_of(block) && block.is_multiple_of(GROUP), "{op}: {n} values are not whole {ty} blocks");
    let bytes = ty.bytes_for(n as u64).expect("a matrix's size") as usize;
    assert!(words.len() * 4 >= at + bytes, "{op}: {n} {ty} values from byte {at}, the buffer is too short");
    block
}

/// out[..n] = the n values of the `ty` blocks from byte `at` of `words` (the bytes as little-endian u32 words), f32
/// or rounded to bf16.
pub fn dequantize<T: Elem>(
    d: &Device,
    out: &mut CudaViewMut<T>,
    words: &CudaView<u32>,
    at: usize,
    ty: GgmlType,
    n: usize,
) -> Result<(), DriverError> {
    let block = check_blocks(words, at, ty, n, "dequantize");
    assert!(out.len() >= n, "dequantize: {n} values, the output holds {}", out.len());
    if n == 0 {
        return Ok(());
    }
    let name = if T::BF16 { "dequantize_bf16" } else { "dequantize_f32" };
    let (at, ty, block, n64) = (at as u64, ty.id() as i32, block as i32, n as u64);
    let mut b = d.stream.launch_builder(d.function(name));
    b.arg(out).arg(words).arg(&at).arg(&ty).arg(&block).arg(&n64);
    // SAFETY: run g < n / 16 reads block g·16 / block's bytes from byte `at` (inside words, checked) and writes
    // out[16g..16g + 16] (out holds n, checked).
    unsafe { b.launch(elementwise(n / GROUP)) }.map(drop)
}

/// The operands of [`packed_gemv`]: c (m, n) in rows of `ldc`, a (m, k) in rows of `lda`, W (n, k) in `ty` blocks
/// from byte `at` of `words`.
pub struct Gemv {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldc: usize,
    pub ty: GgmlType,
    pub at: usize,
}

/// c (+)= a·Wᵀ for at most [`GEMV_MAX_ROWS`] rows of a, W read straight from its blocks (each value as [`dequantize`]
/// decodes it); with `round` both operands are rounded to bf16 first, as a bf16 product reads them. a and c f32 or
/// bf16 ([`Elem`]).
pub fn packed_gemv<Ta: Elem, Tc: Elem>(
    d: &Device,
    c: &mut CudaViewMut<Tc>,
    a: &CudaView<Ta>,
    words: &CudaView<u32>,
    s: &Gemv,
    accumulate: bool,
    round: bool,
) -> Result<(), DriverError> {
    let block = check_blocks(words, s.at, s.ty, s.n * s.k, "packed_gemv");
    assert!(s.k.is_multiple_of(block), "packed_gemv: rows of {} values are not whole {} blocks", s.k, s.ty);
    assert!(s.m <= GEMV_MAX_ROWS, "packed_gemv: {} rows of a, at most {GEMV_MAX_ROWS}", s.m);
    assert!(s.lda >= s.k && s.ldc >= s.n, "packed_gemv: leading dimensions {} {} below {} {}", s.lda, s.ldc, s.k, s.n);
    let need = |rows: usize, ld: usize, cols: usize| if rows == 0 { 0 } else { (rows - 1) * ld + cols };
    assert!(a.len() >= need(s.m, s.lda, s.k) && c.len() >= need(s.m, s.ldc, s.n), "packed_gemv: a or c too short");
    if s.m == 0 || s.n == 0 {
        return Ok(());
    }
    const WARPS: usize = 8;
    let cfg = LaunchConfig {
        grid_dim: (s.n.div_ceil(WARPS) as u32, s.m.div_ceil(GEMV_ROWS) as u32, 1),
        block_dim: (32 * WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let (at, ty, block) = (s.at as u64, s.ty.id() as i32, block as i32);
    let [m, n, k, lda, ldc] = [s.m, s.n, s.k, s.lda, s.ldc].map(|x| i32::try_from(x).expect("a GEMV dimension"));
    let (accumulate, round) = (accumulate as i32, round as i32);
    let name = match (Ta::BF16, Tc::BF16) {
        (false, false) => "packed_gemv_f32_f32",
        (false, true) => "packed_gemv_f32_bf16",
        (true, false) => "packed_gemv_bf16_f32",
        (true, true) => "packed_gemv_bf16_bf16",
    };
    let mut b = d.stream.launch_builder(d.function(name));
    b.arg(c).arg(a).arg(words).arg(&at).arg(&ty).arg(&block);
    b.arg(&m).arg(&n).arg(&k).arg(&lda).arg(&ldc).arg(&accumulate).arg(&round);
    // SAFETY: output o < n reads W's row o (blocks inside words from `at`, checked), a's m rows of k (checked
    // against lda) and writes c[r·ldc + o] for r < m (checked against ldc).
    unsafe { b.launch(cfg) }.map(drop)
}
