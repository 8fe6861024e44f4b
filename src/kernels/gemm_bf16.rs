//! The bf16 GEMM of `--compute bf16`: C (+)= A · B with both operands rounded to bf16 and the products
//! accumulated in f32 — the blocked loop, threads and edge tiles of the f32 GEMM (`gemm`), with kernels that
//! pack their panels in bf16 and multiply them the way AVX512-BF16's `vdpbf16ps` does ([`super::bf16`]):
//!
//! ```text
//! per depth block of C[i, j] (the f32 GEMM's blocks):  acc = 0
//!     for each pair of depths (2q, 2q+1) (an odd block ends with a zero pair):
//!         acc = fma(A[i, 2q+1], B[2q+1, j], acc);  acc = fma(A[i, 2q], B[2q, j], acc)     (DAZ, FTZ)
//! C[i, j] = (C[i, j] +) acc
//! ```
//!
//! - [`Bf16Isa::Native`] runs `vdpbf16ps` on panels of bf16 pairs.
//! - [`Bf16Isa::Emulated`] gives the same bits on any CPU: its panels hold the bf16 values as f32, each pair of
//!   depths swapped, and the f32 micro-kernel runs them in order — an f32 FMA of two bf16 values is exactly the
//!   instruction's step, except where a result would be tiny (below 2⁻¹²⁶), which the instruction flushes to
//!   zero. A sum of products whose last bits are all at least 2⁻¹²⁶ is a multiple of 2⁻¹²⁶, so it is never
//!   tiny: each panel records the smallest exponent of its values at each depth, and a tile whose depths could
//!   reach below that (tiny operands, ≈ |a·b| < 2⁻¹¹², which real activations and weights do not produce) runs a
//!   scalar kernel that flushes as the instruction does. Same speed as f32 otherwise (the f32 kernel, plus the
//!   rounding while packing).
//!
//! Both are bit-identical for any thread count, as the f32 GEMM is.
use super::bf16::{fma_ftz, native, round, widen};
use super::gemm::{Family, Isa, Kernel, MAX_TILE, gemm_with, pack, product};
use super::mat::{Mat, MatMut};
use std::marker::PhantomData;

/// Which kernels run a bf16 product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Isa {
    /// AVX512-BF16's `vdpbf16ps`: 8 × 32 tiles (8 × 16 for n ≤ 16).
    #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
    Native,
    /// The same bits with the f32 kernels of an [`Isa`] (see the module docs).
    Emulated(Isa),
}

impl Bf16Isa {
    /// The instructions when the CPU has them, else the emulation on the fastest f32 kernels.
    pub fn best() -> Bf16Isa {
        #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
        if native() {
            return Bf16Isa::Native;
        }
        Bf16Isa::Emulated(Isa::best())
    }

    /// Every way this CPU runs a bf16 product.
    pub fn available() -> Vec<Bf16Isa> {
        let mut all: Vec<Bf16Isa> = Isa::available().into_iter().map(Bf16Isa::Emulated).collect();
        #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
        if native() {
            all.push(Bf16Isa::Native);
        }
        all
    }
}

/// `out = a · b`, or `out += a · b` when `accumulate`, with a and b rounded to bf16 and f32 accumulation, on the
/// kernels of `isa` (one of [`Bf16Isa::available`]). Rows of `out` must not overlap.
pub fn gemm_bf16(isa: Bf16Isa, out: MatMut, a: Mat, b: Mat, accumulate: bool) {
    match isa {
        #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
        Bf16Isa::Native => {
            assert!(native(), "gemm_bf16: this CPU has no AVX512-BF16");
            if b.cols <= 16 {
                product::<native::Tile<8, 1>>(out, a, b, accumulate)
            } else {
                product::<native::Tile<8, 2>>(out, a, b, accumulate)
            }
        }
        Bf16Isa::Emulated(isa) => gemm_with::<Emulation>(isa, out, a, b, accumulate),
    }
}

/// Depths of a panel rounded up to whole pairs.
fn paired(kb: usize) -> usize {
    kb.next_multiple_of(2)
}

/// The emulation's kernels: [`Emulated`] on each f32 kernel.
struct Emulation;
impl Family for Emulation {
    type Of<K: Kernel> = Emulated<K>;
}

/// The f32 kernel K on bf16 panels. A panel is `paired(kb) × width` f32 slots — the values rounded to bf16,
/// the depths of each pair swapped, a zero depth after an odd kb — then a header of one byte per depth: the
/// smallest biased exponent − 1 of the depth's values (255 when all are zero), in 16-slot units.
struct Emulated<K>(PhantomData<K>);

/// Slots of the header of a panel of `kb` depths.
fn header_len(kb: usize) -> usize {
    paired(kb).div_ceil(64) * 16
}

/// The bound of the module docs, on header bytes (exponent − 1): the products of two values with these exponents
/// have their last bits at 2⁻¹²⁶ or above, (Ea − 134) + (Eb − 134) ≥ −126.
const SAFE_EXPONENTS: u16 = 142 - 2;

impl<K: Kernel> Kernel for Emulated<K> {
    const MR: usize = K::MR;
    const NR: usize = K::NR;
    const DIRECT: bool = false;

    fn panel_len(kb: usize, width: usize) -> usize {
        paired(kb) * width + header_len(kb)
    }

    unsafe fn pack(dst: &mut [f32], width: usize, src: *const f32, w: usize, kb: usize, ll: usize, ld: usize) {
        // SAFETY: forwarded caller guarantees (the panel has room for kb · width f32 values).
        unsafe { K::pack(dst, width, src, w, kb, ll, ld) };
        let ke = paired(kb);
        dst[kb * width..ke * width].fill(0.0);
        let (values, header) = dst[..Self::panel_len(kb, width)].split_at_mut(ke * width);
        // SAFETY: the header's slots, viewed as bytes (4 per slot, any bit pattern is a valid f32 and u8).
        let exps = unsafe { std::slice::from_raw_parts_mut(header.as_mut_ptr().cast::<u8>(), ke) };
        for (pair, e) in values.chunks_exact_mut(2 * width).zip(exps.chunks_exact_mut(2)) {
            let (even, odd) = pair.split_at_mut(width);
            let (mut e_odd, mut e_even) = (u8::MAX, u8::MAX);
            for (x, y) in even.iter_mut().zip(odd.iter_mut()) {
                let (hi, lo) = (round(*y), round(*x));
                (*x, *y) = (widen(hi), widen(lo));
                e_odd = e_odd.min(exponent(hi));
                e_even = e_even.min(exponent(lo));
            }
            (e[0], e[1]) = (e_odd, e_even);
        }
    }

    unsafe fn tile(kb: usize, a: *const f32, lda: usize, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
        debug_assert!(lda == 0, "bf16 panels are always packed");
        let ke = paired(kb);
        // SAFETY: both panels end with their headers of ke bytes (see `pack`).
        let (ea, eb) = unsafe {
            let header = |p: *const f32, width: usize| std::slice::from_raw_parts(p.add(ke * width).cast::<u8>(), ke);
            (header(a, K::MR), header(b, K::NR))
        };
        let lowest = ea.iter().zip(eb).map(|(&x, &y)| x as u16 + y as u16).min().unwrap_or(u16::MAX);
        // SAFETY: forwarded caller guarantees; the panels hold ke depths.
        unsafe {
            if lowest >= SAFE_EXPONENTS {
                K::tile(ke, a, 0, b, c, ldc, load)
            } else {
                flushing_tile(K::MR, K::NR, ke, a, b, c, ldc, load)
            }
        }
    }
}

/// Header byte of a bf16 value: its biased exponent − 1, 255 for zero (which constrains nothing: a zero product
/// leaves the sum as it is). Rounded values are never denormal.
fn exponent(h: u16) -> u8 {
    ((h >> 7) as u8).wrapping_sub(1)
}

/// The emulation's tile where a result could be tiny: each step flushed as `vdpbf16ps` does ([`fma_ftz`]).
///
/// # Safety
/// `a` and `b` hold packed panels of `ke` depths, `mr` and `nr` wide; the mr × nr tile at `c` is writable.
#[allow(clippy::too_many_arguments)]
unsafe fn flushing_tile(
    mr: usize,
    nr: usize,
    ke: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    let mut acc = [0.0f32; MAX_TILE];
    // SAFETY: the caller's guarantees.
    let (a, b) = unsafe { (std::slice::from_raw_parts(a, ke * mr), std::slice::from_raw_parts(b, ke * nr)) };
    for (ap, bp) in a.chunks_exact(mr).zip(b.chunks_exact(nr)) {
        for (row, &x) in acc.chunks_exact_mut(nr).zip(ap) {
            for (s, &y) in row.iter_mut().zip(bp) {
                *s = fma_ftz(x, y, *s);
            }
        }
    }
    for (i, row) in acc.chunks_exact(nr).take(mr).enumerate() {
        // SAFETY: row i of the tile is writable (caller's guarantee).
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), nr) };
        for (d, &s) in dst.iter_mut().zip(row) {
            *d = if load { *d + s } else { s };
        }
    }
}

/// Slot q·width + l of a packed f32 panel (kb depths × width) rounded to bf16 pairs in place: the pair of
/// depth 2q + 1 (high half) and depth 2q (low half: `vdpbf16ps`'s layout) of line l, a zero depth after an odd
/// kb. It reads rows 2q and 2q + 1 and writes row q ≤ 2q: row by row, nothing is overwritten before it is read.
#[inline(always)]
fn pair_line(dst: &mut [f32], width: usize, kb: usize, q: usize, l: usize) {
    let lo = round(dst[2 * q * width + l]) as u32;
    let hi = if 2 * q + 1 < kb { round(dst[(2 * q + 1) * width + l]) as u32 } else { 0 };
    dst[q * width + l] = f32::from_bits(hi << 16 | lo);
}

/// The `vdpbf16ps` micro-kernel: MR rows × NV vectors of 16 columns, the accumulators in registers.
#[cfg(all(target_arch = "x86_64", feature = "avx512"))]
mod native {
    use super::{Kernel, native, pack, pair_line, paired};
    use std::arch::x86_64::*;

    pub(super) struct Tile<const MR: usize, const NV: usize>;

    impl<const MR: usize, const NV: usize> Kernel for Tile<MR, NV> {
        const MR: usize = MR;
        const NR: usize = 16 * NV;
        const DIRECT: bool = false;

        /// Room for the f32 values packing starts from; the pairs take the first half.
        fn panel_len(kb: usize, width: usize) -> usize {
            paired(kb) * width
        }

        unsafe fn pack(dst: &mut [f32], width: usize, src: *const f32, w: usize, kb: usize, ll: usize, ld: usize) {
            // SAFETY: forwarded caller guarantees; a CPU with AVX512-BF16 has AVX.
            unsafe { pack(dst, width, src, w, kb, ll, ld, true) };
            if native() {
                // SAFETY: the CPU has AVX512-BF16.
                unsafe { pair_panel_native(dst, width, kb) };
            } else {
                // Only the layout test packs native panels where the instruction is missing.
                (0..kb.div_ceil(2)).for_each(|q| (0..width).for_each(|l| pair_line(dst, width, kb, q, l)));
            }
        }

        unsafe fn tile(kb: usize, a: *const f32, _lda: usize, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
            // SAFETY: forwarded caller guarantees; this kernel runs only where `native()` holds.
            unsafe { tile::<MR, NV>(kb.div_ceil(2), a.cast(), b.cast(), c, ldc, load) }
        }
    }

    /// Rounds a packed f32 panel of kb depths × width to bf16 pairs in place ([`pair_line`]; the pairs take the
    /// first ⌈kb/2⌉ · width slots): 16 lines at a time by the instruction itself (`vcvtneps2bf16` rounds as
    /// `bf16::round` does; the tests against the emulation hold it to that), the last lines of a narrow panel
    /// one by one.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn pair_panel_native(dst: &mut [f32], width: usize, kb: usize) {
        assert!(dst.len() >= kb * width, "pair_panel: panel too short");
        let full = width / 16 * 16;
        for q in 0..kb.div_ceil(2) {
            for l in (0..full).step_by(16) {
                // SAFETY: rows 2q (and 2q + 1 < kb) at lines l..l + 16 < width lie in dst (asserted).
                unsafe {
                    let row = |r: usize| _mm512_cvtneps_pbh(_mm512_loadu_ps(dst.as_ptr().add(r * width + l)));
                    let widen = |h: __m256bh| _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(h));
                    let lo = widen(row(2 * q));
                    let hi = if 2 * q + 1 < kb {
                        _mm512_slli_epi32(widen(row(2 * q + 1)), 16)
                    } else {
                        _mm512_setzero_si512()
                    };
                    _mm512_storeu_si512(dst.as_mut_ptr().add(q * width + l).cast(), _mm512_or_si512(lo, hi));
                }
            }
            for l in full..width {
                pair_line(dst, width, kb, q, l);
            }
        }
    }

    /// Σ over `pairs` pairs of depths of A's pairs (broadcast) · B's (NV vectors of 16 columns), into C.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const MR: usize, const NV: usize>(
        pairs: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        load: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for q in 0..pairs {
            // SAFETY: q·NR + (v + 1)·16 ≤ pairs · NR slots at `b`, q·MR + i < pairs · MR at `a`; the casts
            // reinterpret 64 bytes as 32 bf16 values.
            let bv: [__m512bh; NV] = std::array::from_fn(|v| unsafe {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add((q * NV + v) * 16).cast()))
            });
            for (i, row) in acc.iter_mut().enumerate() {
                let ai =
                    unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.add(q * MR + i) as i32)) };
                for (s, &x) in row.iter_mut().zip(&bv) {
                    *s = _mm512_dpbf16_ps(*s, ai, x);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, &s) in row.iter().enumerate() {
                // SAFETY: the MR × NR tile at `c` (row stride ldc) is writable.
                unsafe {
                    let dst = c.add(i * ldc + v * 16);
                    let s = if load { _mm512_add_ps(_mm512_loadu_ps(dst), s) } else { s };
                    _mm512_storeu_ps(dst, s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::{depth_block, gemm};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        (0..len).map(|i| (2.0 * crate::rng::uniform(seed, 0, i as u64) - 1.0) as f32).collect()
    }

    /// How small test values are.
    #[derive(Clone, Copy, Debug)]
    enum Scale {
        /// Uniform in (−1, 1).
        Unit,
        /// Every 7th value scaled into 2⁻⁸⁰…2⁻⁴⁰: some products are tiny, sums seldom are.
        SomeTiny,
        /// Every value scaled by 2⁻⁶³: sums of products hover around 2⁻¹²⁶ and are often flushed.
        AllTiny,
    }

    /// Random values at `scale`, every 13th zero.
    fn values(len: usize, seed: u64, scale: Scale) -> Vec<f32> {
        let mut v = random(len, seed);
        for (i, x) in v.iter_mut().enumerate() {
            *x *= match scale {
                _ if i % 13 == 5 => 0.0,
                Scale::SomeTiny if i % 7 == 3 => 2f32.powi(-40 - (i % 41) as i32),
                Scale::AllTiny => 2f32.powi(-63),
                _ => 1.0,
            };
        }
        v
    }

    /// x rounded to bf16 as the SDM's pseudocode writes it (an integer add of the rounding bias), for values
    /// that are normal or zero.
    fn sdm_round(x: f32) -> f32 {
        let bits = x.to_bits();
        if bits & 0x7f80_0000 == 0 {
            return f32::from_bits(bits & 0x8000_0000);
        }
        f32::from_bits((bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff_0000)
    }

    /// acc + a·b rounded once, flushed to a zero of its sign when tiny with an unbounded exponent — the scaled
    /// computation (exact: no test value overflows) puts the result in the normal range.
    fn sdm_fma(a: f32, b: f32, acc: f32) -> f32 {
        let r = a.mul_add(b, acc);
        let scaled = (a * 2f32.powi(40)).mul_add(b * 2f32.powi(40), acc * 2f32.powi(80));
        if scaled != 0.0 && scaled.abs() < f32::MIN_POSITIVE * 2f32.powi(80) { 0.0f32.copysign(scaled) } else { r }
    }

    /// C (m × n, row-major) computed element by element as the module docs write it.
    fn reference(a: Mat, b: Mat, c0: &[f32], accumulate: bool) -> Vec<f32> {
        let (m, n, k) = (a.rows, b.cols, a.cols);
        let at = |i: usize, p: usize| sdm_round(a.data[i * a.row_stride + p * a.col_stride]);
        let bt = |p: usize, j: usize| sdm_round(b.data[p * b.row_stride + j * b.col_stride]);
        let kc = if k == 0 { 1 } else { depth_block(k) };
        let mut c = c0.to_vec();
        for i in 0..m {
            for j in 0..n {
                let mut sum = accumulate.then_some(c0[i * n + j]);
                for pc in (0..k).step_by(kc) {
                    let kb = kc.min(k - pc);
                    let mut acc = 0.0f32;
                    for q in 0..kb.div_ceil(2) {
                        for p in [2 * q + 1, 2 * q] {
                            let (x, y) = if p < kb { (at(i, pc + p), bt(pc + p, j)) } else { (0.0, 0.0) };
                            acc = sdm_fma(x, y, acc);
                        }
                    }
                    sum = Some(sum.map_or(acc, |s| s + acc));
                }
                c[i * n + j] = sum.unwrap_or(0.0);
            }
        }
        c
    }

    /// (m, k, n) with transposed-A / transposed-B views: edge tiles, odd depths, several depth and column blocks.
    const SHAPES: &[(usize, usize, usize, bool, bool)] = &[
        (1, 1, 1, false, false),
        (7, 0, 9, false, true),
        (37, 71, 53, false, true),
        (9, 70, 16, false, false),
        (33, 41, 5, true, false),
        (50, 30, 20, false, true),
        (20, 901, 40, false, true), // three depth blocks of 301: odd
        (3, 5, 2100, true, false),
    ];

    fn operands(m: usize, k: usize, n: usize, scale: Scale, seed: u64) -> (Vec<f32>, Vec<f32>) {
        (values(m * k, seed, scale), values(k * n, seed + 1, scale))
    }

    fn views<'a>(ab: &'a (Vec<f32>, Vec<f32>), m: usize, k: usize, n: usize, at: bool, bt: bool) -> (Mat<'a>, Mat<'a>) {
        let a = if at { Mat::new(&ab.0, k, m).t() } else { Mat::new(&ab.0, m, k) };
        let b = if bt { Mat::new(&ab.1, n, k).t() } else { Mat::new(&ab.1, k, n) };
        (a, b)
    }

    fn same_bits(x: &[f32], y: &[f32]) -> bool {
        x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()) && x.len() == y.len()
    }

    #[test]
    fn every_kernel_matches_the_scalar_definition_bit_for_bit() {
        if !native() {
            eprintln!("note: this CPU has no AVX512-BF16: the vdpbf16ps kernel is not tested here, the emulation is");
        }
        for isa in Bf16Isa::available() {
            for &(m, k, n, at, bt) in SHAPES {
                for scale in [Scale::Unit, Scale::SomeTiny, Scale::AllTiny] {
                    let ab = operands(m, k, n, scale, 3);
                    let (a, b) = views(&ab, m, k, n, at, bt);
                    for accumulate in [false, true] {
                        let c0 = random(m * n, 4);
                        let mut c = c0.clone();
                        gemm_bf16(isa, MatMut::new(&mut c, m, n), a, b, accumulate);
                        let want = reference(a, b, &c0, accumulate);
                        assert!(same_bits(&c, &want), "{isa:?} {m}×{k}×{n} {scale:?} acc={accumulate}");
                    }
                }
            }
        }
    }

    /// The instruction's underflow rule and pair order on one element: 2⁻¹²⁶ from the odd depth, then
    /// −2⁻¹⁵⁰ from the even one is tiny with an unbounded exponent: zero. (Even first would give 2⁻¹²⁶; a plain FMA
    /// chain 2⁻¹²⁶ too.)
    #[test]
    fn a_sum_just_below_the_normal_range_is_flushed() {
        let p = |e: i32| 2f32.powi(e);
        let (a, b) = ([p(-75), p(-63)], [-p(-75), p(-63)]);
        for isa in Bf16Isa::available() {
            let mut c = [1.0f32];
            gemm_bf16(isa, MatMut::new(&mut c, 1, 1), Mat::new(&a, 1, 2), Mat::new(&b, 2, 1), false);
            assert_eq!(c[0].to_bits(), 0, "{isa:?}");
        }
    }

    /// The native kernel's panels, multiplied pair by pair in scalar code as `vdpbf16ps` does (high halves
    /// first), give the definition's bits: the layout is checked on any CPU; the instruction itself where the CPU
    /// has it (the test above, through `Bf16Isa::available`).
    #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
    #[test]
    fn native_panels_hold_the_pairs_the_instruction_expects() {
        if !is_x86_feature_detected!("avx") {
            return;
        }
        type T = native::Tile<8, 2>;
        let (m, k, n) = (8, 37, 32);
        let ab = operands(m, k, n, Scale::SomeTiny, 9);
        let mut pa = vec![0.0f32; T::panel_len(k, 8)];
        let mut pb = vec![0.0f32; T::panel_len(k, 32)];
        // SAFETY: A (8 × 37, row-major) and B (37 × 32, row-major) are in bounds; this CPU has AVX.
        unsafe {
            T::pack(&mut pa, 8, ab.0.as_ptr(), 8, k, k, 1);
            T::pack(&mut pb, 32, ab.1.as_ptr(), 32, k, 1, 32);
        }
        let half = |slot: f32, hi: bool| widen(if hi { (slot.to_bits() >> 16) as u16 } else { slot.to_bits() as u16 });
        let mut c = vec![0.0f32; m * n];
        for (i, j) in (0..m).flat_map(|i| (0..n).map(move |j| (i, j))) {
            let mut acc = 0.0;
            for q in 0..k.div_ceil(2) {
                for hi in [true, false] {
                    acc = fma_ftz(half(pa[q * 8 + i], hi), half(pb[q * 32 + j], hi), acc);
                }
            }
            c[i * n + j] = acc;
        }
        let (a, b) = views(&ab, m, k, n, false, false);
        assert!(same_bits(&c, &reference(a, b, &vec![0.0; m * n], false)));
    }

    #[test]
    fn within_bf16_rounding_of_the_f32_product() {
        let (m, k, n) = (64, 300, 96);
        let ab = operands(m, k, n, Scale::Unit, 5);
        let (a, b) = views(&ab, m, k, n, false, true);
        let mut low = vec![0.0; m * n];
        gemm_bf16(Bf16Isa::best(), MatMut::new(&mut low, m, n), a, b, false);
        let mut full = vec![0.0; m * n];
        gemm(Isa::best(), MatMut::new(&mut full, m, n), a, b, false);
        let mut worst = 0.0f64;
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut mag) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let t = ab.0[i * k + p] as f64 * ab.1[j * k + p] as f64;
                    exact += t;
                    mag += t.abs();
                }
                // Each operand within 2⁻⁹ relative, so each product within 2⁻⁸ + 2⁻¹⁸; f32 sums on top.
                let bound = (2f64.powi(-8) + 2f64.powi(-18) + 2.0 * (k + 2) as f64 * f32::EPSILON as f64) * mag;
                let (l, f) = (low[i * n + j] as f64, full[i * n + j] as f64);
                assert!((l - exact).abs() <= bound, "C[{i},{j}] = {l}, exact {exact}, bound {bound}");
                assert!((f - exact).abs() <= 2.0 * (k + 2) as f64 * f32::EPSILON as f64 * mag);
                worst = worst.max((l - f).abs() / mag);
            }
        }
        // Rounding errors of random signs cancel: far below the bound, far above f32's.
        assert!(worst > 1e-5 && worst < 2f64.powi(-8), "worst relative difference {worst}");
    }

    #[test]
    fn bit_identical_for_any_thread_count() {
        let cases = [(200, 300, 260, false, true), (2048, 64, 40, false, true), (20, 100, 3000, false, false)];
        for isa in Bf16Isa::available() {
            for &(m, k, n, at, bt) in &cases {
                let ab = operands(m, k, n, Scale::SomeTiny, 6);
                let (a, b) = views(&ab, m, k, n, at, bt);
                let run = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let mut c = random(m * n, 8);
                    pool.install(|| gemm_bf16(isa, MatMut::new(&mut c, m, n), a, b, true));
                    c
                };
                let one = run(1);
                for threads in [2, 3, 4] {
                    assert!(same_bits(&one, &run(threads)), "{isa:?} {m}×{k}×{n}, {threads} threads");
                }
            }
        }
    }
}
