//! The int8 compute path of decoding (`--compute int8`), llama.cpp's way of multiplying block-quantized weights
//! by a few rows of activations: each row of x is rounded to 8-bit blocks ([`Q8Rows`]: one f32 scale per 32
//! values for Q4_0 … Q8_0, per 256 for the K-quants, as llama.cpp's Q8_0 / Q8_K), and each weight block's
//! integers meet them in integer dot products, the block's float scales applied once per block:
//!
//! ```text
//! Q4_0 … Q8_0   Σ_b  d_b·dx_b · Σ_i w_i q_i  +  m_b · dx_b Σ_i q_i                 blocks of 32
//! Q4_K, Q5_K    d·dx · Σ_g sc_g Σ_i w_i q_i  −  dmin·dx · Σ_j m_j Σ_i q_i           super-blocks of 256
//! Q6_K          d·dx · Σ_g sc_g Σ_i (w_i − 32) q_i                                   (g: groups of 16)
//! ```
//!
//! The integer sums run on 512-bit AVX-512 kernels (`quant_dot_avx512`: with VNNI's `vpdpbusd` / `vpdpwssd`
//! where the CPU has them), AVX2 (`vpmaddubsw` / `vpmaddwd`) or portable kernels picked at run time
//! ([`Isa::best`]); all give the same integers and sum the floats in the same order, hence the same bits. Against the f32
//! path the only difference is the rounding of x to 8 bits — the accuracy cost measured in
//! bench/decode_vs_llama_cpp.md — so the path is opt-in. Weights are read once, as stored: 4.5–6.6 bits a value
//! instead of the 32 of a dequantized tile.
use super::dequant::{GgmlType, QK_K, f16_at, scale_min_k4};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::OnceLock;

/// Whether [`dot_rows`] handles weights of `ty` (the block-quantized types).
pub fn supports(ty: GgmlType) -> bool {
    ty.block_size() > 1
}

/// Values per activation block for weights of `ty`: 256 for the K-quants, 32 otherwise.
pub(super) fn act_block(ty: GgmlType) -> usize {
    if ty.block_size() == QK_K { QK_K } else { 32 }
}

/// n rows of x (n, cols) rounded to 8-bit blocks: q ≈ x / d with |q| ≤ 127, d = max|x| / 127 per block, and
/// the sum of q over every 16 values (the min and offset terms need Σ q).
#[derive(Default)]
pub struct Q8Rows {
    block: usize,
    cols: usize,
    d: Vec<f32>,
    q: Vec<i8>,
    sums: Vec<i32>,
    /// Blocks of 32 only: (d, d · Σ q) of each block side by side — d · Σ q for the min terms of Q4_1 / Q5_1,
    /// both together because the AVX-512 kernels load them per block pair.
    d_dsum: Vec<f32>,
}

impl Q8Rows {
    /// Quantizes x (x.len() / cols rows) in blocks for weights of `ty`, reusing this value's buffers.
    pub fn quantize(&mut self, ty: GgmlType, x: &[f32], cols: usize) {
        let block = act_block(ty);
        assert!(cols.is_multiple_of(block) && x.len().is_multiple_of(cols), "Q8Rows: ragged rows");
        self.block = block;
        self.cols = cols;
        self.d.resize(x.len() / block, 0.0);
        self.q.resize(x.len(), 0);
        self.sums.resize(x.len() / 16, 0);
        // Rows in parallel when there are many (a prefill); one block at a time within a row.
        let rows = x.par_chunks(cols).zip(self.q.par_chunks_mut(cols));
        let rows = rows.zip(self.d.par_chunks_mut(cols / block)).zip(self.sums.par_chunks_mut(cols / 16));
        rows.with_min_len(8).for_each(|(((x, q), d), sums)| {
            for ((xb, qb), d) in x.chunks_exact(block).zip(q.chunks_exact_mut(block)).zip(d) {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
                *d = amax / 127.0;
                for (q, &v) in qb.iter_mut().zip(xb) {
                    *q = (v * id).round() as i8;
                }
            }
            for (s, q) in sums.iter_mut().zip(q.chunks_exact(16)) {
                *s = q.iter().map(|&v| v as i32).sum();
            }
        });
        self.d_dsum.clear();
        if block == 32 {
            let pairs = self.d.iter().zip(self.sums.chunks_exact(2));
            self.d_dsum.extend(pairs.flat_map(|(&d, s)| [d, d * (s[0] + s[1]) as f32]));
        }
    }

    pub fn rows(&self) -> usize {
        self.q.len() / self.cols.max(1)
    }

    pub(super) fn q(&self, r: usize) -> &[i8] {
        &self.q[r * self.cols..][..self.cols]
    }

    pub(super) fn d(&self, r: usize) -> &[f32] {
        let nb = self.cols / self.block;
        &self.d[r * nb..][..nb]
    }

    /// (d, d · Σ q) per block of 32, interleaved (blocks of 32 only).
    pub(super) fn d_dsum(&self, r: usize) -> &[f32] {
        &self.d_dsum[2 * r * self.cols / 32..][..2 * self.cols / 32]
    }

    pub(super) fn sums(&self, r: usize) -> &[i32] {
        &self.sums[r * self.cols / 16..][..self.cols / 16]
    }
}

/// The kernels, one implementation per instruction set. Weights and activations are signed bytes with
/// |w| ≤ 128 and |x| ≤ 127 (what [`Q8Rows`] and the unpacking give), so no 16-bit pair sum overflows. All
/// implementations form the same integers and sum the floats in the same order, so all give the same bits:
///
/// - Blocks of 32 accumulate into two sets of 8 f32 lanes (even blocks, odd blocks: what one 512-bit register
///   holds), lane l taking the integer sum of values 4l..4l+4 times the block's scale (a multiply then an add,
///   never fused); the two sets are added lane by lane, then summed by [`IntDot::sum`]'s tree.
/// - A K-quant super-block forms 16 integer lanes (`dot_lanes`: lane l holds values 64k + 4l..64k + 4l + 4 of
///   the 4 chunks k of 64, as a 512-bit register does), which meet the super-block's float scales lane by lane
///   in 16 f32 accumulators, summed at the end of the row by [`tree16`].
trait IntDot {
    type Acc: Copy;
    fn zero() -> Self::Acc;
    /// acc + scale · (Σ_{i ∈ 4l..4l+4} w[i]·x[i])_l over one block of 32.
    fn block(acc: Self::Acc, w: &[i8; 32], x: &[i8], scale: f32) -> Self::Acc;
    /// a + b, lane by lane.
    fn add(a: Self::Acc, b: Self::Acc) -> Self::Acc;
    /// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)).
    fn sum(acc: Self::Acc) -> f32;
    /// Lane l: Σ_k Σ_{i ∈ 64k+4l..64k+4l+4} sc[i / 16]·u[i]·x[i] over 256 values, u unsigned (≤ 63).
    fn dot_lanes(u: &[i8; 256], x: &[i8], sc: &[i16; 16]) -> [i32; 16];
    /// The little-endian f16 at b[i..i + 2] as f32.
    fn f16(b: &[u8], i: usize) -> f32 {
        f16_at(b, i)
    }
}

/// The end of a K-quant row: lanes l and l + 8 added, then [`IntDot::sum`]'s tree over the 8.
fn tree16(a: &[f32; 16]) -> f32 {
    let l: [f32; 8] = std::array::from_fn(|i| a[i] + a[i + 8]);
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

struct Portable;

fn idot(w: &[i8], x: &[i8]) -> i32 {
    w.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum()
}

impl IntDot for Portable {
    type Acc = [f32; 8];

    fn zero() -> [f32; 8] {
        [0.0; 8]
    }

    #[inline(always)]
    fn block(mut acc: [f32; 8], w: &[i8; 32], x: &[i8], scale: f32) -> [f32; 8] {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += scale * idot(&w[4 * l..4 * l + 4], &x[4 * l..4 * l + 4]) as f32;
        }
        acc
    }

    fn add(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|l| a[l] + b[l])
    }

    fn sum(l: [f32; 8]) -> f32 {
        ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
    }

    #[inline(always)]
    fn dot_lanes(u: &[i8; 256], x: &[i8], sc: &[i16; 16]) -> [i32; 16] {
        std::array::from_fn(|l| {
            let at = |k: usize| {
                let i = 64 * k + 4 * l;
                sc[i / 16] as i32 * idot(&u[i..i + 4], &x[i..i + 4])
            };
            at(0) + at(1) + at(2) + at(3)
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::IntDot;
    use std::arch::x86_64::*;

    // SAFETY (every `unsafe` block here): the functions run inlined into `dot_rows_avx2` and the AVX-512 kernels,
    // whose target features the CPU has (checked by `Isa::available`), and read 32 bytes at w and x, which
    // callers pass (asserted).

    /// |w| and x with w's sign, the unsigned × signed operands of `vpmaddubsw` (|w|·sign(w)x = w·x).
    #[inline(always)]
    unsafe fn operands(w: *const i8, x: *const i8) -> (__m256i, __m256i) {
        unsafe {
            let (w, x) = (_mm256_loadu_si256(w.cast()), _mm256_loadu_si256(x.cast()));
            (_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
        }
    }

    /// The lane tree of [`IntDot::sum`].
    #[inline(always)]
    pub(super) fn sum(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); // l0+l4 … l3+l7
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s)); // (l0+l4)+(l2+l6), (l1+l5)+(l3+l7)
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }

    /// An f16 widened by the F16C instruction (`half` does not inline into the kernels).
    #[inline(always)]
    pub(super) fn f16c(b: &[u8], i: usize) -> f32 {
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes([b[i], b[i + 1]]) as i32))) }
    }

    /// acc + scale · lanes, multiplied then added (as the portable kernel).
    #[inline(always)]
    fn add_scaled(acc: __m256, lanes: __m256i, scale: f32) -> __m256 {
        unsafe { _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(lanes))) }
    }

    pub struct Avx2;

    impl IntDot for Avx2 {
        type Acc = __m256;

        #[inline(always)]
        fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }

        #[inline(always)]
        fn block(acc: __m256, w: &[i8; 32], x: &[i8], scale: f32) -> __m256 {
            assert!(x.len() >= 32);
            unsafe {
                let (a, b) = operands(w.as_ptr(), x.as_ptr());
                add_scaled(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)), scale)
            }
        }

        #[inline(always)]
        fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }

        #[inline(always)]
        fn sum(acc: __m256) -> f32 {
            sum(acc)
        }

        #[inline(always)]
        fn dot_lanes(u: &[i8; 256], x: &[i8], sc: &[i16; 16]) -> [i32; 16] {
            assert!(x.len() >= 256);
            unsafe {
                // Lanes 0..8 from the first 32 values of each chunk of 64, lanes 8..16 from the second.
                let mut acc = [_mm256_setzero_si256(); 2];
                for c in 0..8 {
                    let u = _mm256_loadu_si256(u.as_ptr().add(32 * c).cast());
                    let x = _mm256_loadu_si256(x.as_ptr().add(32 * c).cast());
                    // 16 pair sums: lanes 0..8 are group 2c, lanes 8..16 group 2c + 1.
                    let pairs = _mm256_maddubs_epi16(u, x);
                    let s = _mm256_set_m128i(_mm_set1_epi16(sc[2 * c + 1]), _mm_set1_epi16(sc[2 * c]));
                    acc[c % 2] = _mm256_add_epi32(acc[c % 2], _mm256_madd_epi16(pairs, s));
                }
                std::mem::transmute::<[__m256i; 2], [i32; 16]>(acc)
            }
        }

        #[inline(always)]
        fn f16(b: &[u8], i: usize) -> f32 {
            f16c(b, i)
        }
    }
}

/// An instruction set for the integer kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2,
    /// 512-bit kernels on AVX512BW (`vpmaddubsw` / `vpmaddwd`).
    Avx512,
    /// The same with VNNI's fused `vpdpbusd` / `vpdpwssd`.
    Avx512Vnni,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni];

    /// Whether this CPU runs `self`.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("f16c") && has!("fma");
            let avx512 = avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl");
            match self {
                Isa::Portable => true,
                Isa::Avx2 => avx2,
                Isa::Avx512 => avx512,
                Isa::Avx512Vnni => avx512 && has!("avx512vnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        matches!(self, Isa::Portable)
    }

    /// The fastest instruction set this CPU has.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| Isa::ALL.into_iter().rev().find(|i| i.available()).unwrap_or(Isa::Portable))
    }
}

/// Most rows of x one [`dot_rows`] call takes (the kernels keep accumulators per row of x).
pub const MAX_ROWS: usize = crate::kernels::matvec::MAX_ROWS;

/// out[i·m + o] = W_o · x_(rows.start + i) for the m weight rows W_o of `w` (rows of ty, xs.cols values each,
/// end to end) and at most [`MAX_ROWS`] rows of x, `xs` quantized for `ty`, on the integer kernels of `isa`
/// (which this CPU must have: see [`Isa::available`]). Each weight block is unpacked once for all rows of x.
pub fn dot_rows(isa: Isa, ty: GgmlType, w: &[u8], xs: &Q8Rows, rows: Range<usize>, out: &mut [f32]) {
    assert!(isa.available(), "{isa:?} is not available on this CPU");
    assert!(supports(ty) && xs.block == act_block(ty), "dot_rows: activations quantized for another type");
    let rb = xs.cols / ty.block_size() * ty.type_size();
    assert!(rb > 0 && w.len().is_multiple_of(rb), "dot_rows: weights of another row length");
    assert!(rows.len() <= MAX_ROWS && rows.end <= xs.rows(), "dot_rows: rows outside x");
    assert!(out.len() == rows.len() * (w.len() / rb), "dot_rows: out of another size");
    match isa {
        Isa::Portable => dot_rows_with::<Portable>(ty, w, xs, rows, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F/BW/VL (asserted above).
        Isa::Avx512 if avx512::handles(ty) => unsafe { avx512::dot_rows_bw(ty, w, xs, rows, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F/BW/VL and VNNI (asserted above).
        Isa::Avx512Vnni if avx512::handles(ty) => unsafe { avx512::dot_rows_vnni(ty, w, xs, rows, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (asserted above; every AVX-512 CPU has it too).
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni => unsafe { dot_rows_avx2(ty, w, xs, rows, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the portable kernels exist off x86-64"),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod gemm;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_avx2(ty: GgmlType, w: &[u8], xs: &Q8Rows, rows: Range<usize>, out: &mut [f32]) {
    dot_rows_with::<x86::Avx2>(ty, w, xs, rows, out)
}

/// [`dot_row_of`] for `ty` over every weight row, compiled for each type (the unpacking of a block is then
/// straight-line code).
#[inline(always)]
fn dot_rows_with<I: IntDot>(ty: GgmlType, w: &[u8], xs: &Q8Rows, rows: Range<usize>, out: &mut [f32]) {
    let rb = xs.cols / ty.block_size() * ty.type_size();
    let m = w.len() / rb;
    for (o, row) in w.chunks_exact(rb).enumerate() {
        for (i, r) in rows.clone().enumerate() {
            macro_rules! each {
                ($($t:ident),*) => {
                    match ty {
                        $(GgmlType::$t => dot_row_of::<I, { GgmlType::$t.id() }>(row, xs, r),)*
                        _ => unreachable!("{ty} is not block-quantized"),
                    }
                };
            }
            out[i * m + o] = each!(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K);
        }
    }
}

/// W_row · x_r (the portable and AVX2 kernels unpack the row again for each row of x).
#[inline(always)]
fn dot_row_of<I: IntDot, const T: u32>(row: &[u8], xs: &Q8Rows, r: usize) -> f32 {
    let ty = GgmlType::from_id(T).expect("a GGML type id");
    let ts = ty.type_size();
    let (q, dx) = (xs.q(r), xs.d(r));
    if ty.block_size() == QK_K {
        let (mut u, mut sc, mut mins) = ([0i8; QK_K], [0i16; 16], [0i16; 8]);
        let mut acc = [0.0f32; 16];
        for (s, b) in row.chunks_exact(ts).enumerate() {
            let (d, dmin, offset) = unpack_k::<I>(ty, b, &mut u, &mut sc, &mut mins);
            let mut lanes = I::dot_lanes(&u, &q[QK_K * s..], &sc);
            let sums = &xs.sums(r)[16 * s..][..16];
            let (scale, min_scale) = (d * dx[s], dmin * dx[s]);
            for (l, (acc, lane)) in acc.iter_mut().zip(&mut lanes).enumerate() {
                // Lane l also takes group l's offset (Q6_K's 32) and its sub-block's min, times Σx of group l.
                *lane -= offset * sc[l] as i32 * sums[l];
                *acc += scale * *lane as f32 - min_scale * (mins[l / 2] as i32 * sums[l]) as f32;
            }
        }
        tree16(&acc)
    } else {
        // Even and odd blocks accumulate apart (see `IntDot`), the min terms too.
        let mut w = [0i8; 32];
        let (mut acc, mut min_terms) = ([I::zero(), I::zero()], [0.0f32; 2]);
        let with_min = matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1);
        for ((b, blk), &dx) in row.chunks_exact(ts).enumerate().zip(dx) {
            let (d, m) = unpack_legacy::<I>(ty, blk, &mut w);
            acc[b % 2] = I::block(acc[b % 2], &w, &q[32 * b..], d * dx);
            if with_min {
                min_terms[b % 2] += m * xs.d_dsum(r)[2 * b + 1];
            }
        }
        I::sum(I::add(acc[0], acc[1])) + (min_terms[0] + min_terms[1])
    }
}

/// One block of 32 of Q4_0 … Q8_0 as integers w (value = d·w + m) and (d, m).
#[inline(always)]
fn unpack_legacy<I: IntDot>(ty: GgmlType, b: &[u8], w: &mut [i8; 32]) -> (f32, f32) {
    let nibbles = |qs: &[u8], w: &mut [i8; 32], high: u32, off: i8| {
        for j in 0..16 {
            let (h0, h1) = (((high >> j) & 1) << 4, ((high >> (j + 16)) & 1) << 4);
            w[j] = ((qs[j] & 0x0F) | h0 as u8) as i8 - off;
            w[j + 16] = ((qs[j] >> 4) | h1 as u8) as i8 - off;
        }
    };
    let qh = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    match ty {
        GgmlType::Q4_0 => nibbles(&b[2..18], w, 0, 8),
        GgmlType::Q4_1 => nibbles(&b[4..20], w, 0, 0),
        GgmlType::Q5_0 => nibbles(&b[6..22], w, qh(2), 16),
        GgmlType::Q5_1 => nibbles(&b[8..24], w, qh(4), 0),
        GgmlType::Q8_0 => w.iter_mut().zip(&b[2..34]).for_each(|(w, &q)| *w = q as i8),
        _ => unreachable!("{ty} is not a block-of-32 type"),
    }
    let m = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) { I::f16(b, 2) } else { 0.0 };
    (I::f16(b, 0), m)
}

/// One K-quant super-block as unsigned integers u, the scale of each group of 16 and (Q4_K, Q5_K) the min of
/// each sub-block of 32; returns (d, dmin, offset): value = d·sc·(u − offset) − dmin·m.
#[inline(always)]
fn unpack_k<I: IntDot>(
    ty: GgmlType,
    b: &[u8],
    w: &mut [i8; QK_K],
    sc: &mut [i16; 16],
    mins: &mut [i16; 8],
) -> (f32, f32, i32) {
    let mut quads = [0u32; 64];
    k_quads(ty, b, &mut quads);
    for (w, q) in w.chunks_exact_mut(4).zip(quads) {
        w.copy_from_slice(&q.to_le_bytes().map(|v| v as i8));
    }
    k_scales::<I>(ty, b, sc, mins)
}

/// The scales of a K-quant super-block: of each group of 16 values and (Q4_K, Q5_K) the min of each sub-block
/// of 32; returns (d, dmin, offset) as [`unpack_k`].
#[inline(always)]
fn k_scales<I: IntDot>(ty: GgmlType, b: &[u8], sc: &mut [i16; 16], mins: &mut [i16; 8]) -> (f32, f32, i32) {
    match ty {
        GgmlType::Q4_K | GgmlType::Q5_K => {
            for j in 0..8 {
                let (s, m) = scale_min_k4(j, &b[4..16]);
                sc[2 * j] = s as i16;
                sc[2 * j + 1] = s as i16;
                mins[j] = m as i16;
            }
            (I::f16(b, 0), I::f16(b, 2), 0)
        }
        GgmlType::Q6_K => {
            for (sc, &s) in sc.iter_mut().zip(&b[192..208]) {
                *sc = s as i8 as i16;
            }
            mins.fill(0);
            (I::f16(b, 208), 0.0, 32)
        }
        _ => unreachable!("{ty} is not a K-quant"),
    }
}

/// The unsigned integers of a K-quant super-block, 4 to a little-endian word: word t holds values 4t..4t + 4.
/// Word operations: each stored word gives whole quads (nibble masks, shifted high bits).
#[inline(always)]
fn k_quads(ty: GgmlType, b: &[u8], quads: &mut [u32; 64]) {
    const NIBBLES: u32 = 0x0F0F_0F0F;
    let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    match ty {
        GgmlType::Q4_K | GgmlType::Q5_K => {
            // chunk c of 32 bytes: low nibbles are sub-block 2c (values 64c..64c + 32), high ones 2c + 1
            let (qs, qh) = if ty == GgmlType::Q4_K { (16, None) } else { (48, Some(16)) };
            for c in 0..4 {
                for i in 0..8 {
                    let w = word(qs + 32 * c + 4 * i);
                    let fifth = |j: usize| qh.map_or(0, |qh| ((word(qh + 4 * i) >> j) & 0x0101_0101) << 4);
                    quads[16 * c + i] = (w & NIBBLES) | fifth(2 * c);
                    quads[16 * c + 8 + i] = ((w >> 4) & NIBBLES) | fifth(2 * c + 1);
                }
            }
        }
        GgmlType::Q6_K => {
            // half h: value l (of 128) takes its low 4 bits from ql[l % 64] (nibble l / 64), its high 2 from
            // qh[l % 32] (pair l / 32)
            for h in 0..2 {
                for i in 0..8 {
                    let (ql0, ql1, qh) = (word(64 * h + 4 * i), word(64 * h + 32 + 4 * i), word(128 + 32 * h + 4 * i));
                    let high = |shift: u32| ((qh >> shift) & 0x0303_0303) << 4;
                    quads[32 * h + i] = (ql0 & NIBBLES) | high(0);
                    quads[32 * h + 8 + i] = (ql1 & NIBBLES) | high(2);
                    quads[32 * h + 16 + i] = ((ql0 >> 4) & NIBBLES) | high(4);
                    quads[32 * h + 24 + i] = ((ql1 >> 4) & NIBBLES) | high(6);
                }
            }
        }
        _ => unreachable!("{ty} is not a K-quant"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random bytes.
    fn bytes(n: usize, seed: usize) -> Vec<u8> {
        (0..n).map(|i| (((i + seed * 7919) * 2654435761usize) >> 13) as u8).collect()
    }

    /// The AVX2 block and lane kernels give the portable ones' results, on the extremes too (w = −128 or
    /// u = 63, |x| = 127, |sc| = 128): a wrong lane order, sign trick or overflow shows as a different sum.
    /// (The AVX-512 kernels work on whole rows: `row_products_match_the_dequantized_weights`.)
    #[test]
    fn avx2_blocks_agree_with_the_portable_ones() {
        if !Isa::Avx2.available() {
            eprintln!("AVX2: not on this CPU, not tested");
            return;
        }
        for seed in 0..20 {
            let mut w: [i8; 256] = std::array::from_fn(|i| bytes(256, seed)[i] as i8);
            let mut u: [i8; 256] = std::array::from_fn(|i| (bytes(256, seed + 300)[i] % 64) as i8);
            let mut x: Vec<i8> = bytes(256, seed + 100).iter().map(|&b| (b as i8).max(-127)).collect();
            let mut sc: [i16; 16] = std::array::from_fn(|i| bytes(16, seed + 200)[i] as i8 as i16);
            if seed == 0 {
                w.fill(-128);
                u.fill(63);
                x.fill(-127);
                sc.fill(-128);
            }
            let want = (Portable::dot_lanes(&u, &x, &sc), blocks::<Portable>(&w, &x));
            // SAFETY: the CPU has AVX2 (checked above).
            let got = unsafe { avx2(&w, &u, &x, &sc) };
            assert_eq!(got.0, want.0, "dot_lanes, seed {seed}");
            assert_eq!(got.1.to_bits(), want.1.to_bits(), "blocks, seed {seed}: {} vs {}", got.1, want.1);
        }
    }

    /// The 8 blocks of 32 accumulated with distinct scales, even and odd apart.
    #[inline(always)]
    fn blocks<I: IntDot>(w: &[i8; 256], x: &[i8]) -> f32 {
        let mut acc = [I::zero(), I::zero()];
        for b in 0..8 {
            acc[b % 2] =
                I::block(acc[b % 2], w[32 * b..32 * b + 32].try_into().unwrap(), &x[32 * b..], 0.37 + b as f32);
        }
        I::sum(I::add(acc[0], acc[1]))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    fn avx2(w: &[i8; 256], u: &[i8; 256], x: &[i8], sc: &[i16; 16]) -> ([i32; 16], f32) {
        (x86::Avx2::dot_lanes(u, x, sc), blocks::<x86::Avx2>(w, x))
    }

    /// A weight row of `ty`: pseudo-random bytes, or all `fill` (0xFF, 0x80: the largest integers, −128 scales),
    /// with finite positive f16 scales.
    fn weight_row(ty: GgmlType, cols: usize, fill: Option<u8>, seed: usize) -> Vec<u8> {
        let n = cols / ty.block_size() * ty.type_size();
        let mut row = fill.map_or_else(|| bytes(n, seed), |b| vec![b; n]);
        for blk in row.chunks_exact_mut(ty.type_size()) {
            let offs: &[usize] = match ty {
                GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
                GgmlType::Q6_K => &[208],
                _ => &[0, 2],
            };
            for &o in offs {
                blk[o + 1] = 0x30 | (blk[o + 1] & 0x07); // f16 in [0.125, 1): finite, positive
            }
        }
        row
    }

    /// Weight rows of every type (random, and the extremes of `weight_row`) against rows of x: each instruction
    /// set's products equal the portable ones bit for bit, and the portable ones are the f32 product of the
    /// dequantized row with the 8-bit-rounded x (an independent evaluation of the same math), within float
    /// rounding. Rows hold an odd number of blocks (a 512-bit kernel takes two at a time).
    #[test]
    fn row_products_match_the_dequantized_weights() {
        for isa in Isa::ALL.into_iter().filter(|i| !i.available()) {
            eprintln!("{isa:?}: not on this CPU, not tested");
        }
        for ty in GgmlType::ALL.into_iter().filter(|&t| supports(t)) {
            let cols = if ty.block_size() == QK_K { 3 * QK_K } else { 17 * 32 };
            for (fill, extreme_x) in [(None, false), (Some(0xFF), true), (Some(0x80), true), (Some(0x80), false)] {
                let w = [weight_row(ty, cols, fill, ty.id() as usize), weight_row(ty, cols, None, 7)].concat();
                check_rows(ty, &w, cols, extreme_x);
            }
        }
    }

    fn check_rows(ty: GgmlType, w: &[u8], cols: usize, extreme_x: bool) {
        let wf = super::super::dequant::dequantize_to_vec(ty, w).unwrap();
        let (n, m) = (3, wf.len() / cols);
        let x: Vec<f32> = (0..n * cols)
            .map(|i| if extreme_x { -1.0 - (i % 2) as f32 * 1e-3 } else { ((i * 37 % 101) as f32 - 50.0) / 17.0 })
            .collect();
        let mut xs = Q8Rows::default();
        xs.quantize(ty, &x, cols);
        let mut want = vec![0.0; n * m];
        dot_rows(Isa::Portable, ty, w, &xs, 0..n, &mut want);
        let block = act_block(ty);
        for r in 0..n {
            let xq: Vec<f64> = (0..cols).map(|i| xs.q(r)[i] as f64 * xs.d(r)[i / block] as f64).collect();
            for (o, wf) in wf.chunks_exact(cols).enumerate() {
                let exact: f64 = wf.iter().zip(&xq).map(|(&w, &v)| w as f64 * v).sum();
                let scale: f64 = wf.iter().zip(&xq).map(|(&w, &v)| (w as f64 * v).abs()).sum();
                let got = want[r * m + o] as f64;
                assert!((got - exact).abs() <= 1e-5 * scale, "{ty} x row {r}, w row {o}: {got} vs {exact}");
            }
            // and the rounding of x itself stays within half a step
            for i in 0..cols {
                assert!((xq[i] - x[r * cols + i] as f64).abs() <= 0.5001 * xs.d(r)[i / block] as f64);
            }
        }
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let mut got = vec![0.0; n * m];
            dot_rows(isa, ty, w, &xs, 0..n, &mut got);
            assert!(same(&got, &want), "{ty} {isa:?}: {got:?} vs {want:?}");
            // rows of x from an offset, and one row (the decode step): the same products
            dot_rows(isa, ty, w, &xs, 1..3, &mut got[..2 * m]);
            assert!(same(&got[..2 * m], &want[m..]), "{ty} {isa:?}, x rows 1..3");
            dot_rows(isa, ty, w, &xs, 2..3, &mut got[..m]);
            assert!(same(&got[..m], &want[2 * m..]), "{ty} {isa:?}, x row 2");
        }
    }
}
