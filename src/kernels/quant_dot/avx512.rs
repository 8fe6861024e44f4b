//! The 512-bit integer kernels of [`super::dot_rows`] for the types real checkpoints are made of (Q4_0, Q4_1,
//! Q8_0, Q4_K, Q6_K): a block's bytes are unpacked in registers (nibble masks and lane shuffles, no scratch
//! copy) once for all rows of x, and meet 64 activations per multiply-add, on AVX512BW's `vpmaddubsw` /
//! `vpmaddwd` or VNNI's fused `vpdpbusd` / `vpdpwssd` ([`Madd`]). The other types run the AVX2 kernels.
//!
//! They form the integer lanes of the portable kernels and sum the floats in their order (`IntDot`): blocks
//! of 32 go two to a register, even blocks in lanes 0..8 and odd ones in lanes 8..16; a K-quant super-block's
//! 16 lanes meet its scales lane by lane, reduced once per row. Hence the same bits.
//!
//! Where the stored integers carry an offset (Q6_K's 32) these multiply the unsigned integers and subtract the
//! offset times the activations' sums, lane by lane as the portable kernels do: Σ sc·(u − 32)·x = Σ sc·u·x −
//! 32·Σ sc·Σx.
use super::{MAX_ROWS, Q8Rows, x86};
use crate::kernels::dequant::{GgmlType, QK_K};
use std::arch::x86_64::*;
use std::ops::Range;

// SAFETY (every `unsafe` block here): the functions run inlined into `dot_rows_bw` / `dot_rows_vnni`, whose
// target features the CPU has (`Isa::available`), and read inside a weight row (whole blocks) and inside the
// activations of the same columns (`dot_rows` checked both lengths; [`Acts`] holds their starts).

/// Whether these kernels handle `ty` (else the AVX2 ones do).
pub(super) fn handles(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn dot_rows_bw(ty: GgmlType, w: &[u8], xs: &Q8Rows, rows: Range<usize>, out: &mut [f32]) {
    dot_rows_with::<Bw>(ty, w, xs, rows, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn dot_rows_vnni(ty: GgmlType, w: &[u8], xs: &Q8Rows, rows: Range<usize>, out: &mut [f32]) {
    dot_rows_with::<Vnni>(ty, w, xs, rows, out)
}

/// How integer products are summed: AVX512BW's multiply-adds or VNNI's fused ones (the same integers).
pub(super) trait Madd {
    /// Per i32 lane, the sum of its 4 byte products u·x (u unsigned, x signed, |u·x pair| < 2¹⁵).
    fn dot4(u: __m512i, x: __m512i) -> __m512i;
    /// acc + [`Self::dot4`].
    #[inline(always)]
    fn dot4_acc(acc: __m512i, u: __m512i, x: __m512i) -> __m512i {
        unsafe { _mm512_add_epi32(acc, Self::dot4(u, x)) }
    }
    /// acc + per i32 lane the sum of its 2 word products p·s.
    fn madd_acc(acc: __m512i, p: __m512i, s: __m512i) -> __m512i;
}

pub(super) struct Bw;

impl Madd for Bw {
    #[inline(always)]
    fn dot4(u: __m512i, x: __m512i) -> __m512i {
        unsafe { _mm512_madd_epi16(_mm512_maddubs_epi16(u, x), _mm512_set1_epi16(1)) }
    }

    #[inline(always)]
    fn madd_acc(acc: __m512i, p: __m512i, s: __m512i) -> __m512i {
        unsafe { _mm512_add_epi32(acc, _mm512_madd_epi16(p, s)) }
    }
}

pub(super) struct Vnni;

impl Madd for Vnni {
    #[inline(always)]
    fn dot4(u: __m512i, x: __m512i) -> __m512i {
        unsafe { _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, x) }
    }

    #[inline(always)]
    fn dot4_acc(acc: __m512i, u: __m512i, x: __m512i) -> __m512i {
        unsafe { _mm512_dpbusd_epi32(acc, u, x) }
    }

    #[inline(always)]
    fn madd_acc(acc: __m512i, p: __m512i, s: __m512i) -> __m512i {
        unsafe { _mm512_dpwssd_epi32(acc, p, s) }
    }
}

/// [`Madd::dot4`] for signed w (|w| ≤ 128): |w| times x with w's sign.
#[inline(always)]
fn dot4_signed<M: Madd>(w: __m512i, x: __m512i) -> __m512i {
    unsafe {
        let negative = _mm512_movepi8_mask(w);
        M::dot4(_mm512_abs_epi8(w), _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x))
    }
}

/// The rows of x of one call: where each row's integers, block scales and sums start.
struct Acts {
    n: usize,
    q: [*const i8; MAX_ROWS],
    d: [*const f32; MAX_ROWS],
    sums: [*const i32; MAX_ROWS],
    /// Blocks of 32: (d, d · Σ q) per block.
    d_dsum: [*const f32; MAX_ROWS],
}

impl Acts {
    fn new(xs: &Q8Rows, rows: Range<usize>) -> Acts {
        let mut a = Acts {
            n: rows.len(),
            q: [std::ptr::null(); MAX_ROWS],
            d: [std::ptr::null(); MAX_ROWS],
            sums: [std::ptr::null(); MAX_ROWS],
            d_dsum: [std::ptr::null(); MAX_ROWS],
        };
        for (i, r) in rows.enumerate() {
            (a.q[i], a.d[i], a.sums[i]) = (xs.q(r).as_ptr(), xs.d(r).as_ptr(), xs.sums(r).as_ptr());
            if xs.block == 32 {
                a.d_dsum[i] = xs.d_dsum(r).as_ptr();
            }
        }
        a
    }
}

/// Every weight row of `w` against the rows of x; a single row of x (a decode step) gets its own copy of the
/// kernels, with its accumulators in registers.
#[inline(always)]
fn dot_rows_with<M: Madd>(ty: GgmlType, w: &[u8], xs: &Q8Rows, rows: Range<usize>, out: &mut [f32]) {
    let acts = Acts::new(xs, rows);
    if acts.n == 1 {
        rows_of::<M, 1>(ty, w, xs.cols, &acts, out)
    } else {
        rows_of::<M, MAX_ROWS>(ty, w, xs.cols, &acts, out)
    }
}

#[inline(always)]
fn rows_of<M: Madd, const N: usize>(ty: GgmlType, w: &[u8], cols: usize, acts: &Acts, out: &mut [f32]) {
    let n = acts.n.min(N);
    let rb = cols / ty.block_size() * ty.type_size();
    let m = w.len() / rb;
    // Each type's kernel compiled on its own (block layout and sizes known at compile time).
    let each_row = |out: &mut [f32], kernel: &dyn Fn(&[u8], &mut [f32; N])| {
        let mut res = [0.0f32; N];
        for (o, row) in w.chunks_exact(rb).enumerate() {
            kernel(row, &mut res);
            for (i, &v) in res[..n].iter().enumerate() {
                out[i * m + o] = v;
            }
        }
    };
    match ty {
        GgmlType::Q4_K => each_row(out, &|row, res| q4_k_row::<M, N>(row, acts, n, res)),
        GgmlType::Q6_K => each_row(out, &|row, res| q6_k_row::<M, N>(row, acts, n, res)),
        GgmlType::Q4_0 => each_row(out, &|row, res| legacy_row::<M, N, { GgmlType::Q4_0.id() }>(row, acts, n, res)),
        GgmlType::Q4_1 => each_row(out, &|row, res| legacy_row::<M, N, { GgmlType::Q4_1.id() }>(row, acts, n, res)),
        GgmlType::Q8_0 => each_row(out, &|row, res| legacy_row::<M, N, { GgmlType::Q8_0.id() }>(row, acts, n, res)),
        _ => unreachable!("{ty}: not an AVX-512 kernel type (`handles`)"),
    }
}

/// 16 f32 lanes summed as `tree16`: lanes l and l + 8, then the 8-lane tree.
#[inline(always)]
fn tree16(v: __m512) -> f32 {
    unsafe {
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        x86::sum(_mm256_add_ps(_mm512_castps512_ps256(v), high))
    }
}

/// Word indices for `vpermw`: 64 values of `group`-sized groups starting at group `first`, one word per pair of
/// values (what `vpmaddubsw` leaves), so each pair meets its group's scale.
const fn scale_index(first: usize, group: usize) -> [i16; 32] {
    let mut idx = [0i16; 32];
    let mut w = 0;
    while w < 32 {
        idx[w] = (first + 2 * w / group) as i16;
        w += 1;
    }
    idx
}

/// Q4_K: sub-blocks of 32, four to a 64-value vector pair.
static Q4_K_SCALES: [[i16; 32]; 4] = [scale_index(0, 32), scale_index(2, 32), scale_index(4, 32), scale_index(6, 32)];
/// Q6_K: groups of 16, four to a 64-value vector.
static Q6_K_SCALES: [[i16; 32]; 4] = [scale_index(0, 16), scale_index(4, 16), scale_index(8, 16), scale_index(12, 16)];

#[inline(always)]
fn load_index(idx: &[i16; 32]) -> __m512i {
    unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) }
}

/// The 6-bit scales and mins of a Q4_K super-block (`dequant::scale_min_k4` for all 8 sub-blocks at once, on
/// the 12 bytes at b[4..16] as three words a, b, c): bytes 0..8 of the result are the scales, 8..16 the mins.
#[inline(always)]
fn scales_and_mins_k4(b: &[u8]) -> __m128i {
    assert!(b.len() >= 20);
    unsafe {
        let v = _mm_loadu_si128(b.as_ptr().add(4).cast()); // a b c (and 4 bytes of qs)
        let low6 = _mm_and_si128(v, _mm_set1_epi32(0x3F3F_3F3F)); // scales 0..4, mins 0..4
        // Scales and mins 4..8: the nibbles of c below, bits 6..7 of a (scales) and b (mins) on top.
        let c = _mm_shuffle_epi32(v, 0b10_10_10_10);
        let c = _mm_and_si128(_mm_srlv_epi32(c, _mm_set_epi32(4, 4, 4, 0)), _mm_set1_epi32(0x0F0F_0F0F));
        let top = _mm_slli_epi32(_mm_and_si128(_mm_srli_epi32(v, 6), _mm_set1_epi32(0x0303_0303)), 4);
        _mm_unpacklo_epi32(low6, _mm_or_si128(c, top)) // scales 0..4, scales 4..8, mins 0..4, mins 4..8
    }
}

/// init + the 16 integer lanes of a K-quant super-block (4 chunks of 64 unsigned integers w, their scales sc)
/// against the 256 activations at q, in two chains (integer sums: any order gives the same lanes).
#[inline(always)]
fn chunk_sums<M: Madd>(w: &[__m512i; 4], sc: &[__m512i; 4], q: *const i8, init: __m512i) -> __m512i {
    unsafe {
        let part = |k: usize, acc| {
            M::madd_acc(acc, _mm512_maddubs_epi16(w[k], _mm512_loadu_si512(q.add(64 * k).cast())), sc[k])
        };
        _mm512_add_epi32(part(2, part(0, init)), part(3, part(1, _mm512_setzero_si512())))
    }
}

/// Σ_s (d·dx_s)·Σ_j sc_j Σ q·x − (dmin·dx_s)·Σ_j m_j Σ x over the super-blocks s of a Q4_K row, for n rows of x.
#[inline(always)]
fn q4_k_row<M: Madd, const N: usize>(row: &[u8], acts: &Acts, n: usize, res: &mut [f32; N]) {
    let mut acc = [unsafe { _mm512_setzero_ps() }; N];
    for (s, b) in row.chunks_exact(GgmlType::Q4_K.type_size()).enumerate() {
        let scales_mins = scales_and_mins_k4(b);
        unsafe {
            // d and dmin, widened together.
            let d_dmin = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            // The super-block as 4 × 64 integers and their scales, once for all rows.
            let scales = _mm512_castsi128_si512(_mm_cvtepu8_epi16(scales_mins));
            let nibble = _mm512_set1_epi8(0x0F);
            let mut w = [_mm512_setzero_si512(); 4];
            let mut sc = [_mm512_setzero_si512(); 4];
            for h in 0..2 {
                // 64 bytes of qs: low nibbles are sub-blocks 4h and 4h + 2, high nibbles 4h + 1 and 4h + 3.
                let qs = _mm512_loadu_si512(b.as_ptr().add(16 + 64 * h).cast());
                let low = _mm512_and_si512(qs, nibble);
                let high = _mm512_and_si512(_mm512_srli_epi16(qs, 4), nibble);
                w[2 * h] = _mm512_shuffle_i64x2(low, high, 0b01_00_01_00); // sub-blocks 4h, 4h + 1
                w[2 * h + 1] = _mm512_shuffle_i64x2(low, high, 0b11_10_11_10); // 4h + 2, 4h + 3
            }
            for (k, sc) in sc.iter_mut().enumerate() {
                *sc = _mm512_permutexvar_epi16(load_index(&Q4_K_SCALES[k]), scales);
            }
            // Lane l's min: that of group l's sub-block, l / 2.
            let mins = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(scales_mins, scales_mins));
            for (i, acc) in acc[..n].iter_mut().enumerate() {
                let q = acts.q[i].add(QK_K * s);
                let isum = chunk_sums::<M>(&w, &sc, q, _mm512_setzero_si512());
                let msum = _mm512_mullo_epi32(mins, _mm512_loadu_si512(acts.sums[i].add(16 * s).cast()));
                let (scale, min_scale) = {
                    let both = _mm_mul_ps(d_dmin, _mm_set1_ps(*acts.d[i].add(s))); // d·dx, dmin·dx
                    (_mm512_broadcastss_ps(both), _mm512_broadcastss_ps(_mm_movehdup_ps(both)))
                };
                let scaled = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(isum));
                let min_terms = _mm512_mul_ps(min_scale, _mm512_cvtepi32_ps(msum));
                *acc = _mm512_add_ps(*acc, _mm512_sub_ps(scaled, min_terms));
            }
        }
    }
    for (r, &acc) in res.iter_mut().zip(&acc[..n]) {
        *r = tree16(acc);
    }
}

/// Σ_s (d·dx_s)·Σ_g sc_g Σ (q − 32)·x over the super-blocks s of a Q6_K row, for n rows of x.
#[inline(always)]
fn q6_k_row<M: Madd, const N: usize>(row: &[u8], acts: &Acts, n: usize, res: &mut [f32; N]) {
    let mut acc = [unsafe { _mm512_setzero_ps() }; N];
    for (s, b) in row.chunks_exact(GgmlType::Q6_K.type_size()).enumerate() {
        let d = x86::f16c(b, 208);
        unsafe {
            // The super-block as 4 × 64 unsigned integers and their scales, once for all rows.
            let sc_bytes = _mm_loadu_si128(b.as_ptr().add(192).cast());
            let scales = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(sc_bytes));
            let (nibble, two_bits) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x03));
            let mut w = [_mm512_setzero_si512(); 4];
            let mut sc = [_mm512_setzero_si512(); 4];
            for h in 0..2 {
                // ql[64h..64h + 64]: low nibbles are values 128h..128h + 64, high nibbles the next 64; their top
                // 2 bits are bit pairs 0, 1, 2, 3 of qh[32h..32h + 32] (pairs 0 and 1, then 2 and 3, per half).
                let ql = _mm512_loadu_si512(b.as_ptr().add(64 * h).cast());
                let qh = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * h).cast());
                let qh = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
                let top = |bits: __m512i| _mm512_slli_epi16(_mm512_and_si512(bits, two_bits), 4);
                w[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, nibble), top(qh));
                let high = _mm512_and_si512(_mm512_srli_epi16(ql, 4), nibble);
                w[2 * h + 1] = _mm512_or_si512(high, top(_mm512_srli_epi16(qh, 4)));
            }
            for (k, sc) in sc.iter_mut().enumerate() {
                *sc = _mm512_permutexvar_epi16(load_index(&Q6_K_SCALES[k]), scales);
            }
            // 32 · sc_l per lane l (= group l), for − 32 · sc_l · Σx_l.
            let offset_scales = _mm512_slli_epi32(_mm512_cvtepi8_epi32(sc_bytes), 5);
            for (i, acc) in acc[..n].iter_mut().enumerate() {
                let q = acts.q[i].add(QK_K * s);
                let sums = _mm512_loadu_si512(acts.sums[i].add(16 * s).cast());
                let offsets = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_mullo_epi32(offset_scales, sums));
                let isum = chunk_sums::<M>(&w, &sc, q, offsets);
                let dx = *acts.d[i].add(s);
                *acc = _mm512_add_ps(*acc, _mm512_mul_ps(_mm512_set1_ps(d * dx), _mm512_cvtepi32_ps(isum)));
            }
        }
    }
    for (r, &acc) in res.iter_mut().zip(&acc[..n]) {
        *r = tree16(acc);
    }
}

/// Q4_0, Q4_1, Q8_0: blocks b and b + 1 (when `pair`, else zeros) as the 64 integers of one register: the
/// stored nibbles (Q4_0 without its offset of 8, Q4_1), or Q8_0's signed bytes.
#[inline(always)]
fn legacy_weights(ty: GgmlType, b0: &[u8], b1: &[u8], pair: bool) -> __m512i {
    unsafe {
        if ty == GgmlType::Q8_0 {
            let high = if pair { _mm256_loadu_si256(b1.as_ptr().add(2).cast()) } else { _mm256_setzero_si256() };
            return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(b0.as_ptr().add(2).cast())), high, 1);
        }
        let off = if ty == GgmlType::Q4_0 { 2 } else { 4 };
        let q1 = if pair { _mm_loadu_si128(b1.as_ptr().add(off).cast()) } else { _mm_setzero_si128() };
        let qs = _mm256_set_m128i(q1, _mm_loadu_si128(b0.as_ptr().add(off).cast()));
        let nibble = _mm256_set1_epi8(0x0F);
        let (low, high) = (_mm256_and_si256(qs, nibble), _mm256_and_si256(_mm256_srli_epi16(qs, 4), nibble));
        // [low b, low b+1, high b, high b+1] → [low b, high b, low b+1, high b+1]: values in order.
        let both = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
        _mm512_shuffle_i64x2(both, both, 0b11_01_10_00)
    }
}

/// Σ_b (d_b·dx_b)·Σ w·x (+ m_b·dx_b·Σ x for Q4_1) over the blocks of a Q4_0 / Q4_1 / Q8_0 row, two blocks a
/// step, for n rows of x.
#[inline(always)]
fn legacy_row<M: Madd, const N: usize, const T: u32>(row: &[u8], acts: &Acts, n: usize, res: &mut [f32; N]) {
    let ty = GgmlType::from_id(T).expect("a GGML type id");
    let ts = ty.type_size();
    let blocks = row.len() / ts;
    let with_min = ty == GgmlType::Q4_1;
    let mut acc = [unsafe { _mm512_setzero_ps() }; N];
    // The min terms m·dx·Σq of even blocks in lane 1, of odd ones in lane 3.
    let mut min_terms = [unsafe { _mm_setzero_ps() }; N];
    for b in (0..blocks).step_by(2) {
        let pair = b + 1 < blocks;
        let b0 = &row[b * ts..][..ts];
        let b1 = if pair { &row[(b + 1) * ts..][..ts] } else { b0 };
        let w = legacy_weights(ty, b0, b1, pair);
        unsafe {
            // Both blocks' f16 header (d, and m for Q4_1) widened at once: d0 m0 d1 m1 (zeros past the row).
            let header = |b: &[u8]| {
                let h = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if with_min { h } else { h & 0xFFFF }
            };
            let (h0, h1) = (header(b0), if pair { header(b1) } else { 0 });
            let dm = _mm_cvtph_ps(_mm_set_epi32(0, 0, h1, h0));
            let spread = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
            for i in 0..n {
                let q = acts.q[i].add(32 * b);
                let x = if pair { _mm512_loadu_si512(q.cast()) } else { _mm512_maskz_loadu_epi8(0xFFFF_FFFF, q) };
                let lanes = match ty {
                    GgmlType::Q4_1 => M::dot4(w, x),
                    // Σ (u − 8)·x = Σ u·x − Σ 8·x, lane by lane.
                    GgmlType::Q4_0 => _mm512_sub_epi32(M::dot4(w, x), M::dot4(_mm512_set1_epi8(8), x)),
                    _ => dot4_signed::<M>(w, x),
                };
                // The activations' dx_b, dx_b·Σq_b, dx_b+1, dx_b+1·Σq_b+1 times d0 m0 d1 m1.
                let dd = acts.d_dsum[i].add(2 * b);
                let dd = if pair { _mm_loadu_ps(dd) } else { _mm_castpd_ps(_mm_load_sd(dd.cast())) };
                let products = _mm_mul_ps(dm, dd);
                let scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(products));
                acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(scale, _mm512_cvtepi32_ps(lanes)));
                if with_min {
                    min_terms[i] = _mm_add_ps(min_terms[i], products);
                }
            }
        }
    }
    for ((r, &acc), &mt) in res.iter_mut().zip(&acc[..n]).zip(&min_terms[..n]) {
        let [_, even, _, odd] = unsafe { std::mem::transmute::<__m128, [f32; 4]>(mt) };
        *r = tree16(acc) + (even + odd);
    }
}
