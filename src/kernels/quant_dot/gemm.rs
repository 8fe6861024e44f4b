//! Int8 products of many rows of x with K-quant weights (Q4_K, Q5_K, Q6_K): the prefill of `generate
//! --compute int8`. The row kernels of [`super::dot_rows`] unpack a weight block for at most 16 rows of x; here a
//! panel of 32 weight rows (output features) is unpacked once, for every row of x, into the order of a 4-byte
//! dot product per 32-bit lane (`vpdpbusd`: 16 output features × 4 consecutive values per 512-bit register),
//! so each multiply-add instruction does 64 useful products and the weights are touched once:
//!
//! ```text
//! per super-block s, row r, output feature c (all integers exact):
//!   T = Σ_g sc_g · Σ_{i ∈ g} u_i · x_i        groups g of 16 values (Q4_K, Q5_K: pairs of groups share sc)
//!   E = Σ_g (offset · sc_g) · Σ_{i ∈ g} x_i   Q6_K's stored offset of 32 (0 for Q4_K, Q5_K)
//!   N = Σ_j m_j · Σ_{i ∈ j} x_i               the mins of the sub-blocks j of 32 (Q4_K, Q5_K)
//!   acc_rc += (d·dx)·f32(T − E) − (dmin·dx)·f32(N)      a multiply, a multiply, a subtract, an add
//! ```
//!
//! Every implementation forms the same integers and these float operations in this order, so the portable,
//! AVX2 and AVX-512 kernels give the same bits. Against the row kernels of decoding the float order differs (they
//! keep 16 lanes per row), as the f32 GEMM and a dot product differ.
use super::{Isa, Portable, Q8Rows, k_quads, k_scales};
use crate::kernels::dequant::{GgmlType, QK_K};
use std::ops::Range;

/// Output features per panel: two 512-bit registers of 32-bit lanes.
pub const PANEL: usize = 32;
/// Words of one super-block of a panel: 64 quads × 32 features, 4 values each.
const BLOCK_WORDS: usize = 64 * PANEL;

/// Whether [`panel_rows`] handles weights of `ty`.
pub fn handles(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K)
}

/// Up to [`PANEL`] weight rows, unpacked for the kernels (missing rows are zeros: their outputs are 0).
#[derive(Default)]
pub struct Panel {
    ty: Option<GgmlType>,
    blocks: usize,
    /// [block][quad t (64)][feature c]: the unsigned integers u of values 4t..4t + 4, one byte each.
    u: Vec<u32>,
    /// [block][group g (16)][feature]: the scale of each group of 16 values.
    sc: Vec<i32>,
    /// [block][pair p (8)][feature]: (offset·sc_2p, offset·sc_2p+1) as two i16 in one lane (`vpmaddwd`'s pairs).
    off: Vec<i32>,
    /// [block][pair p (4)][feature]: (m_2p, m_2p+1), the mins of sub-blocks 2p and 2p + 1, as two i16.
    mins: Vec<i32>,
    /// [block][feature]
    d: Vec<f32>,
    dmin: Vec<f32>,
}

/// Two i16 in one i32 lane, `lo` in the low half (values are |v| ≤ 4096 by construction).
fn pair(lo: i32, hi: i32) -> i32 {
    (lo as i16 as u16 as u32 | (hi as i16 as u16 as u32) << 16) as i32
}

/// Rows of x quantized for the K-quants ([`Q8Rows`]), with the activation sums the offset and min terms take,
/// as the i16 pairs `vpmaddwd` multiplies: per row and super-block, 8 pairs of sums of 16 values, then 4 pairs of
/// sums of 32.
#[derive(Default)]
pub struct Acts {
    pub xs: Q8Rows,
    pairs: Vec<i32>,
}

impl Acts {
    /// Quantizes x (x.len() / cols rows) for weights of `ty`, reusing this value's buffers.
    pub fn quantize(&mut self, ty: GgmlType, x: &[f32], cols: usize) {
        assert!(handles(ty), "Acts::quantize: {ty} is not a K-quant");
        self.xs.quantize(ty, x, cols);
        self.pairs.clear();
        for r in 0..self.xs.rows() {
            for s in self.xs.sums(r).chunks_exact(16) {
                let s32: [i32; 8] = std::array::from_fn(|j| s[2 * j] + s[2 * j + 1]);
                self.pairs.extend((0..8).map(|k| pair(s[2 * k], s[2 * k + 1])));
                self.pairs.extend((0..4).map(|k| pair(s32[2 * k], s32[2 * k + 1])));
            }
        }
    }

    /// The 12 pairs of row r, super-block s.
    fn pairs(&self, r: usize, s: usize) -> &[i32] {
        &self.pairs[(r * self.xs.cols / QK_K + s) * 12..][..12]
    }
}

impl Panel {
    /// Unpacks the weight rows in `w` (≤ [`PANEL`] rows of `cols` values of `ty`, end to end).
    pub fn pack(&mut self, ty: GgmlType, w: &[u8], cols: usize) {
        assert!(handles(ty) && cols.is_multiple_of(QK_K), "Panel::pack: {ty} rows of {cols} values");
        let (nb, ts) = (cols / QK_K, ty.type_size());
        let rows = w.len() / (nb * ts);
        assert!(rows <= PANEL && w.len() == rows * nb * ts, "Panel::pack: not whole rows");
        self.ty = Some(ty);
        self.blocks = nb;
        // A full panel overwrites every entry; a partial one leaves zeros in the features it lacks.
        let partial = rows < PANEL;
        fn size<T: Copy + Default>(v: &mut Vec<T>, len: usize, zero: bool) {
            if zero {
                v.clear();
            }
            v.resize(len, T::default());
        }
        for (v, len) in [(&mut self.sc, 16), (&mut self.off, 8), (&mut self.mins, 4)] {
            size(v, nb * len * PANEL, partial);
        }
        size(&mut self.u, nb * BLOCK_WORDS, partial);
        size(&mut self.d, nb * PANEL, partial);
        size(&mut self.dmin, nb * PANEL, partial);
        let (mut quads, mut sc, mut mins) = ([0u32; 64], [0i16; 16], [0i16; 8]);
        // Row by row: the weights stream from memory in their order (measured faster than block by block).
        for (c, row) in w.chunks_exact(nb * ts).enumerate() {
            for (s, b) in row.chunks_exact(ts).enumerate() {
                k_quads(ty, b, &mut quads);
                for (t, &q) in quads.iter().enumerate() {
                    self.u[s * BLOCK_WORDS + t * PANEL + c] = q;
                }
                let (d, dmin, offset) = k_scales::<Portable>(ty, b, &mut sc, &mut mins);
                for (g, &sc) in sc.iter().enumerate() {
                    self.sc[(s * 16 + g) * PANEL + c] = sc as i32;
                }
                for p in 0..8 {
                    let (a, b) = (offset * sc[2 * p] as i32, offset * sc[2 * p + 1] as i32);
                    self.off[(s * 8 + p) * PANEL + c] = pair(a, b);
                }
                for p in 0..4 {
                    self.mins[(s * 4 + p) * PANEL + c] = pair(mins[2 * p] as i32, mins[2 * p + 1] as i32);
                }
                self.d[s * PANEL + c] = d;
                self.dmin[s * PANEL + c] = dmin;
            }
        }
    }
}

/// out[i·PANEL + c] = W_c · x_(rows.start + i) for the panel's weight rows c and the rows of x, on the kernels of
/// `isa` (which this CPU must have). `x` holds the rows quantized for the panel's type.
pub fn panel_rows(isa: Isa, p: &Panel, x: &Acts, rows: Range<usize>, out: &mut [f32]) {
    assert!(isa.available(), "{isa:?} is not available on this CPU");
    let xs = &x.xs;
    assert!(p.ty.is_some(), "panel_rows: the panel was never packed");
    assert!(xs.block == QK_K && xs.cols == p.blocks * QK_K, "panel_rows: activations of another shape");
    assert!(rows.end <= xs.rows() && out.len() == rows.len() * PANEL, "panel_rows: rows outside x or out");
    match isa {
        Isa::Portable => portable_rows(p, xs, rows, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 (asserted above).
        Isa::Avx2 => unsafe { portable_rows_avx2(p, xs, rows, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F/BW/VL (asserted above).
        Isa::Avx512 => unsafe { avx512::rows_bw(p, x, rows, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512F/BW/VL and VNNI (asserted above).
        Isa::Avx512Vnni => unsafe { avx512::rows_vnni(p, x, rows, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the portable kernels exist off x86-64"),
    }
}

/// The portable kernels compiled for AVX2: the compiler vectorizes the loops over the 32 features, the same
/// operations on each, hence the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn portable_rows_avx2(p: &Panel, xs: &Q8Rows, rows: Range<usize>, out: &mut [f32]) {
    portable_rows(p, xs, rows, out)
}

#[inline(always)]
fn portable_rows(p: &Panel, xs: &Q8Rows, rows: Range<usize>, out: &mut [f32]) {
    for (r, o) in rows.zip(out.chunks_exact_mut(PANEL)) {
        let (q, dx, sums) = (xs.q(r), xs.d(r), xs.sums(r));
        let mut acc = [0.0f32; PANEL];
        for s in 0..p.blocks {
            let (x, sums) = (&q[QK_K * s..][..QK_K], &sums[16 * s..][..16]);
            let u = &p.u[s * BLOCK_WORDS..][..BLOCK_WORDS];
            let mut t = [0i32; PANEL];
            for g in 0..16 {
                let mut a = [0i32; PANEL];
                for quad in 4 * g..4 * g + 4 {
                    let xq = &x[4 * quad..][..4];
                    for (a, uc) in a.iter_mut().zip(&u[quad * PANEL..][..PANEL]) {
                        *a += (0..4).map(|i| (uc >> (8 * i) & 0xFF) as i32 * xq[i] as i32).sum::<i32>();
                    }
                }
                let sc = &p.sc[(s * 16 + g) * PANEL..][..PANEL];
                t.iter_mut().zip(a).zip(sc).for_each(|((t, a), sc)| *t += a * sc);
            }
            let halves = |v: i32| (v as i16 as i32, v >> 16);
            let s32: [i32; 8] = std::array::from_fn(|j| sums[2 * j] + sums[2 * j + 1]);
            let (d, dmin) = (&p.d[s * PANEL..][..PANEL], &p.dmin[s * PANEL..][..PANEL]);
            for c in 0..PANEL {
                let e: i32 = (0..8)
                    .map(|k| {
                        let (lo, hi) = halves(p.off[(s * 8 + k) * PANEL + c]);
                        lo * sums[2 * k] + hi * sums[2 * k + 1]
                    })
                    .sum();
                let n: i32 = (0..4)
                    .map(|k| {
                        let (lo, hi) = halves(p.mins[(s * 4 + k) * PANEL + c]);
                        lo * s32[2 * k] + hi * s32[2 * k + 1]
                    })
                    .sum();
                acc[c] += (d[c] * dx[s]) * (t[c] - e) as f32 - (dmin[c] * dx[s]) * n as f32;
            }
        }
        o.copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::avx512::{Bw, Madd, Vnni};
    use super::{Acts, BLOCK_WORDS, PANEL, Panel, QK_K};
    use crate::kernels::dequant::GgmlType;
    use std::arch::x86_64::*;
    use std::ops::Range;

    // SAFETY (every `unsafe` block here): the functions run inlined into `rows_bw` / `rows_vnni`, whose target
    // features the CPU has (`panel_rows` asserted it), and read inside the panel's buffers (whole blocks, `pack`
    // sized them) and inside the rows of x (`panel_rows` checked their shape).

    /// Rows of x per kernel call: 4 rows × 2 registers of features = 8 independent multiply-add chains.
    const MR: usize = 4;

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn rows_bw(p: &Panel, x: &Acts, rows: Range<usize>, out: &mut [f32]) {
        rows_with::<Bw>(p, x, rows, out)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn rows_vnni(p: &Panel, x: &Acts, rows: Range<usize>, out: &mut [f32]) {
        rows_with::<Vnni>(p, x, rows, out)
    }

    #[inline(always)]
    fn rows_with<M: Madd>(p: &Panel, x: &Acts, rows: Range<usize>, out: &mut [f32]) {
        let mut r = rows.start;
        for o in out.chunks_mut(MR * PANEL) {
            // Q6_K: a scale per 16 values (4 quads) and the offset term; Q4_K, Q5_K: a scale per 32, the mins.
            macro_rules! rows_of {
                ($q6:expr) => {
                    match o.len() / PANEL {
                        4 => group::<M, 4, $q6>(p, x, r, o),
                        3 => group::<M, 3, $q6>(p, x, r, o),
                        2 => group::<M, 2, $q6>(p, x, r, o),
                        _ => group::<M, 1, $q6>(p, x, r, o),
                    }
                };
            }
            match p.ty == Some(GgmlType::Q6_K) {
                true => rows_of!(true),
                false => rows_of!(false),
            }
            r += MR;
        }
    }

    /// NR rows of x from r0 over the whole panel.
    #[inline(always)]
    fn group<M: Madd, const NR: usize, const Q6: bool>(p: &Panel, x: &Acts, r0: usize, out: &mut [f32]) {
        let (xs, quads) = (&x.xs, if Q6 { 4 } else { 8 });
        unsafe {
            let zero = _mm512_setzero_si512();
            let mut acc = [[_mm512_setzero_ps(); 2]; NR];
            for s in 0..p.blocks {
                let xq: [*const i8; NR] = std::array::from_fn(|i| xs.q(r0 + i)[QK_K * s..].as_ptr());
                let u = p.u[s * BLOCK_WORDS..].as_ptr();
                let mut t = [[zero; 2]; NR];
                for g in (0..64).step_by(quads) {
                    let mut a = [[zero; 2]; NR];
                    for quad in g..g + quads {
                        let w0 = _mm512_loadu_si512(u.add(quad * PANEL).cast());
                        let w1 = _mm512_loadu_si512(u.add(quad * PANEL + 16).cast());
                        for i in 0..NR {
                            let xb = _mm512_set1_epi32(xq[i].add(4 * quad).cast::<i32>().read_unaligned());
                            a[i][0] = M::dot4_acc(a[i][0], w0, xb);
                            a[i][1] = M::dot4_acc(a[i][1], w1, xb);
                        }
                    }
                    // the scale of the group of 16 that starts at quad g
                    let sc = p.sc[(s * 16 + g / 4) * PANEL..].as_ptr();
                    let sc = [_mm512_loadu_si512(sc.cast()), _mm512_loadu_si512(sc.add(16).cast())];
                    for i in 0..NR {
                        for j in 0..2 {
                            t[i][j] = _mm512_add_epi32(t[i][j], _mm512_mullo_epi32(a[i][j], sc[j]));
                        }
                    }
                }
                let (d, dmin) = (p.d[s * PANEL..].as_ptr(), p.dmin[s * PANEL..].as_ptr());
                for i in 0..NR {
                    let pairs = x.pairs(r0 + i, s);
                    let dx = _mm512_set1_ps(xs.d(r0 + i)[s]);
                    for j in 0..2 {
                        let (mut e, mut n) = (zero, zero);
                        if Q6 {
                            for (k, &xp) in pairs[..8].iter().enumerate() {
                                let w = _mm512_loadu_si512(p.off[(s * 8 + k) * PANEL + 16 * j..].as_ptr().cast());
                                e = M::madd_acc(e, w, _mm512_set1_epi32(xp));
                            }
                        } else {
                            for (k, &xp) in pairs[8..].iter().enumerate() {
                                let w = _mm512_loadu_si512(p.mins[(s * 4 + k) * PANEL + 16 * j..].as_ptr().cast());
                                n = M::madd_acc(n, w, _mm512_set1_epi32(xp));
                            }
                        }
                        let scale = _mm512_mul_ps(_mm512_loadu_ps(d.add(16 * j)), dx);
                        let min_scale = _mm512_mul_ps(_mm512_loadu_ps(dmin.add(16 * j)), dx);
                        let te = _mm512_cvtepi32_ps(_mm512_sub_epi32(t[i][j], e));
                        let v =
                            _mm512_sub_ps(_mm512_mul_ps(scale, te), _mm512_mul_ps(min_scale, _mm512_cvtepi32_ps(n)));
                        acc[i][j] = _mm512_add_ps(acc[i][j], v);
                    }
                }
            }
            for (i, o) in out.chunks_exact_mut(PANEL).enumerate() {
                _mm512_storeu_ps(o.as_mut_ptr(), acc[i][0]);
                _mm512_storeu_ps(o.as_mut_ptr().add(16), acc[i][1]);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::dequant::dequantize;

    pub(crate) fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    /// Random weight blocks with small finite scales (d and dmin f16 ≈ 0.001..0.06), or every byte `fill`.
    pub(crate) fn weights(ty: GgmlType, rows: usize, cols: usize, seed: u64, fill: Option<u8>) -> Vec<u8> {
        let ts = ty.type_size();
        let mut w = match fill {
            Some(b) => vec![b; rows * cols / QK_K * ts],
            None => random_bytes(rows * cols / QK_K * ts, seed),
        };
        for b in w.chunks_exact_mut(ts) {
            let d_at: &[usize] = if ty == GgmlType::Q6_K { &[ts - 2] } else { &[0, 2] };
            for &at in d_at {
                let h = half::f16::from_f32(0.001 + (b[at] as f32) / 4096.0).to_bits().to_le_bytes();
                b[at..at + 2].copy_from_slice(&h);
            }
        }
        w
    }

    pub(crate) fn activations(n: usize, seed: u64) -> Vec<f32> {
        random_bytes(n, seed).iter().map(|&b| (b as f32 - 127.5) / 40.0).collect()
    }

    /// Every instruction set this CPU has gives the portable kernel's bits; the portable kernel gives the f64
    /// product of the dequantized weights and the 8-bit activations, for partial panels and odd row counts.
    #[test]
    fn panel_products_match_the_dequantized_weights_on_every_isa() {
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
            for (rows, n, fill) in [(32, 9, None), (7, 1, None), (32, 5, Some(0xFF)), (20, 4, Some(0x80))] {
                let cols = 3 * QK_K;
                let w = weights(ty, rows, cols, rows as u64 + n as u64, fill);
                let x = activations(n * cols, 7);
                let mut acts = Acts::default();
                acts.quantize(ty, &x, cols);
                let xs = &acts.xs;
                let mut p = Panel::default();
                p.pack(ty, &w, cols);
                let mut want = vec![0.0; n * PANEL];
                panel_rows(Isa::Portable, &p, &acts, 0..n, &mut want);
                let mut dense = vec![0.0; rows * cols];
                dequantize(ty, &w, &mut dense).unwrap();
                for r in 0..n {
                    let xq: Vec<f64> = (0..cols).map(|k| xs.q(r)[k] as f64 * xs.d(r)[k / QK_K] as f64).collect();
                    for c in 0..PANEL {
                        let exact: f64 = match c < rows {
                            true => dense[c * cols..][..cols].iter().zip(&xq).map(|(&w, x)| w as f64 * x).sum(),
                            false => 0.0,
                        };
                        let row = &dense[(c % rows) * cols..][..cols];
                        let scale: f64 = row.iter().zip(&xq).map(|(&w, x)| (w as f64 * x).abs()).sum();
                        let got = want[r * PANEL + c] as f64;
                        assert!((got - exact).abs() <= 1e-5 * scale.max(1.0), "{ty} r{r} c{c}: {got} vs {exact}");
                    }
                }
                for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
                    for range in [0..n, n / 2..n] {
                        let mut got = vec![0.0; range.len() * PANEL];
                        panel_rows(isa, &p, &acts, range.clone(), &mut got);
                        let same =
                            want[range.start * PANEL..].iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{ty} {isa:?} rows {range:?} ({rows} weight rows, fill {fill:?})");
                    }
                }
            }
        }
    }
}
