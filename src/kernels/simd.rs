//! Hand-vectorized inner loops — dot products for decoding's matrix-vector products and attention, and exp for
//! softmax rows (decoding's attention, the LM head's cross-entropy) — with an AVX2+FMA path picked at run time
//! (the crate is built for baseline x86-64), and a portable fallback.

/// Σ a[i]·b[i] over the common length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time); both slices hold at least n values.
            return unsafe { dot_avx2(&a[..n], &b[..n]) };
        }
    }
    crate::kernels::attention::dot(&a[..n], &b[..n])
}

/// out[j] = x·w[j·k..(j+1)·k] for j < out.len() (k = x.len()): a matrix-vector product over consecutive weight
/// rows, four rows per pass so each load of x feeds four FMAs and four weight streams are in flight.
pub fn dots(out: &mut [f32], x: &[f32], w: &[f32]) {
    let k = x.len();
    assert!(w.len() >= out.len() * k, "dots: weights too short");
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: AVX2/FMA present (checked at run time); lengths asserted above.
            unsafe { dots_avx2(out, x, w) };
            return;
        }
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o = crate::kernels::attention::dot(x, &w[j * k..][..k]);
    }
}

/// out[j] = q·ks[j·hd..(j+1)·hd] · scale for every j < out.len().
pub fn dot_rows(out: &mut [f32], q: &[f32], ks: &[f32], scale: f32) {
    let hd = q.len();
    assert!(ks.len() >= out.len() * hd, "dot_rows: keys too short");
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            for (j, o) in out.iter_mut().enumerate() {
                // SAFETY: AVX2/FMA present; both slices hold hd values.
                *o = unsafe { dot_avx2(q, &ks[j * hd..][..hd]) } * scale;
            }
            return;
        }
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o = crate::kernels::attention::dot(q, &ks[j * hd..][..hd]) * scale;
    }
}

/// acc += Σ_j ps[j] · vs[j·hd..(j+1)·hd], hd = acc.len().
pub fn axpy_rows(acc: &mut [f32], ps: &[f32], vs: &[f32]) {
    let hd = acc.len();
    assert!(vs.len() >= ps.len() * hd, "axpy_rows: values too short");
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: AVX2/FMA present (checked at run time); lengths asserted above.
            unsafe { axpy_rows_avx2(acc, ps, vs) };
            return;
        }
    }
    for (j, &p) in ps.iter().enumerate() {
        for (a, x) in acc.iter_mut().zip(&vs[j * hd..][..hd]) {
            *a += p * x;
        }
    }
}

/// xs[i] ← exp(xs[i] − m); returns Σ xs[i] (after), summed in f32 over blocks of 256 and in f64 across blocks
/// (vocabularies reach 150k entries). For softmax rows (every xs[i] ≤ m); arguments below −88 give ≈ 1e-38
/// instead of 0 on the vector path.
pub fn exp_shifted(xs: &mut [f32], m: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
            return unsafe { exp_shifted_avx2(xs, m) };
        }
    }
    xs.chunks_mut(EXP_BLOCK)
        .map(|block| {
            let mut sum = 0.0f32;
            for x in block.iter_mut() {
                *x = (*x - m).exp();
                sum += *x;
            }
            sum as f64
        })
        .sum()
}

/// Elements summed in f32 before the running sum moves to f64.
const EXP_BLOCK: usize = 256;

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (all loads): i + 32 ≤ n, i + 8 ≤ n respectively, so every load reads inside both slices.
    unsafe {
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * j));
                let y = _mm256_loadu_ps(pb.add(i + 8 * j));
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let hi = _mm256_extractf128_ps(s, 1);
        let lo = _mm256_castps256_ps128(s);
        let q = _mm_add_ps(hi, lo);
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        let mut total = _mm_cvtss_f32(q);
        while i < n {
            total += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        total
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(out: &mut [f32], x: &[f32], w: &[f32]) {
    use std::arch::x86_64::*;
    let k = x.len();
    let full = k / 8 * 8;
    let (px, pw) = (x.as_ptr(), w.as_ptr());
    let hsum = |v: __m256| -> f32 {
        let q = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)))
    };
    let mut j = 0;
    // SAFETY (all loads): columns c + 8 ≤ full ≤ k or c < k, rows j + 3 < out.len() with w.len() ≥ out.len()·k.
    unsafe {
        while j + 4 <= out.len() {
            let r = [pw.add(j * k), pw.add((j + 1) * k), pw.add((j + 2) * k), pw.add((j + 3) * k)];
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut c = 0;
            while c < full {
                let xv = _mm256_loadu_ps(px.add(c));
                for (a, row) in acc.iter_mut().zip(r) {
                    *a = _mm256_fmadd_ps(xv, _mm256_loadu_ps(row.add(c)), *a);
                }
                c += 8;
            }
            for (t, (a, row)) in acc.iter().zip(r).enumerate() {
                let mut s = hsum(*a);
                for c in full..k {
                    s += *px.add(c) * *row.add(c);
                }
                out[j + t] = s;
            }
            j += 4;
        }
        while j < out.len() {
            out[j] = dot_avx2(x, std::slice::from_raw_parts(pw.add(j * k), k));
            j += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_rows_avx2(acc: &mut [f32], ps: &[f32], vs: &[f32]) {
    use std::arch::x86_64::*;
    let hd = acc.len();
    let (pa, pv) = (acc.as_mut_ptr(), vs.as_ptr());
    let full = hd / 8 * 8;
    // SAFETY (all accesses): columns c + 8 ≤ full ≤ hd, or c < hd in the tail; rows j < ps.len() with
    // vs.len() ≥ ps.len()·hd (asserted by the caller).
    unsafe {
        let mut j = 0;
        // Two value rows per pass: fewer loads and stores of the accumulator.
        while j + 2 <= ps.len() {
            let (p0, p1) = (_mm256_set1_ps(ps[j]), _mm256_set1_ps(ps[j + 1]));
            let (r0, r1) = (pv.add(j * hd), pv.add((j + 1) * hd));
            let mut c = 0;
            while c < full {
                let a = _mm256_loadu_ps(pa.add(c));
                let a = _mm256_fmadd_ps(p0, _mm256_loadu_ps(r0.add(c)), a);
                let a = _mm256_fmadd_ps(p1, _mm256_loadu_ps(r1.add(c)), a);
                _mm256_storeu_ps(pa.add(c), a);
                c += 8;
            }
            for c in full..hd {
                *pa.add(c) += ps[j] * *r0.add(c) + ps[j + 1] * *r1.add(c);
            }
            j += 2;
        }
        if j < ps.len() {
            let p0 = _mm256_set1_ps(ps[j]);
            let r0 = pv.add(j * hd);
            let mut c = 0;
            while c < full {
                let a = _mm256_fmadd_ps(p0, _mm256_loadu_ps(r0.add(c)), _mm256_loadu_ps(pa.add(c)));
                _mm256_storeu_ps(pa.add(c), a);
                c += 8;
            }
            for c in full..hd {
                *pa.add(c) += ps[j] * *r0.add(c);
            }
        }
    }
}

/// Cephes' expf, eight lanes: exp(x) = 2^n · e^r with n = round(x·log2 e), r = x − n·ln 2 (in two parts), e^r by
/// a degree-5 polynomial; about 1 ulp.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(xs: &mut [f32], m: f32) -> f64 {
    use std::arch::x86_64::*;
    let n = xs.len();
    let p = xs.as_mut_ptr();
    let mv = _mm256_set1_ps(m);
    let (hi, lo) = (_mm256_set1_ps(88.376_26), _mm256_set1_ps(-88.376_26));
    let log2e = _mm256_set1_ps(std::f32::consts::LOG2_E);
    let (c1, c2) = (_mm256_set1_ps(0.693_359_4), _mm256_set1_ps(-2.121_944_4e-4));
    let coef = [1.987_569_1e-4f32, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];
    let one = _mm256_set1_ps(1.0);
    let mut acc = _mm256_setzero_ps();
    let mut total = 0.0f64;
    let mut lanes = [0.0f32; 8];
    let mut i = 0;
    // SAFETY (all accesses): i + 8 ≤ n in the vector loop, i < n in the tail.
    unsafe {
        while i + 8 <= n {
            let x = _mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mv);
            let x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
            let fx = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            let r = _mm256_fnmadd_ps(fx, c2, _mm256_fnmadd_ps(fx, c1, x));
            let mut y = _mm256_set1_ps(coef[0]);
            for &c in &coef[1..] {
                y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
            }
            y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, one));
            let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)),
                23,
            ));
            let e = _mm256_mul_ps(y, pow2);
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
            if i % EXP_BLOCK == 0 {
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
                total += lanes.iter().sum::<f32>() as f64;
                acc = _mm256_setzero_ps();
            }
        }
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        total += lanes.iter().sum::<f32>() as f64;
        while i < n {
            let e = (*p.add(i) - m).exp();
            *p.add(i) = e;
            total += e as f64;
            i += 1;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_shifted_matches_libm() {
        let mut xs: Vec<f32> = (0..203).map(|i| -0.37 * i as f32 + 1.5).collect();
        let want: Vec<f64> = xs.iter().map(|&x| ((x - 1.5) as f64).exp()).collect();
        let sum = exp_shifted(&mut xs, 1.5);
        for (g, w) in xs.iter().zip(&want) {
            assert!((*g as f64 - w).abs() <= 2e-7 * w.max(1e-30) + 1e-37, "{g} vs {w}");
        }
        assert!((sum - want.iter().sum::<f64>()).abs() < 1e-6);
        // A vocabulary-sized row: the sum stays accurate to ~1e-7 relative (f32 only within blocks of 256).
        let mut row: Vec<f32> = (0..150_001).map(|i| -0.013 * (i % 97) as f32).collect();
        let want: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        let sum = exp_shifted(&mut row, 0.0);
        assert!((sum - want).abs() < 1e-6 * want, "{sum} vs {want}");
    }

    #[test]
    fn dot_matches_f64_for_all_tail_lengths() {
        for n in 0..80 {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-4, "n = {n}");
            // axpy_rows with rows (0.25·a, 0.25·a, a): b + 1.5·a; dot_rows.
            let mut acc = b.clone();
            let three: Vec<f32> = a.iter().chain(&a).chain(&a).copied().collect();
            axpy_rows(&mut acc, &[0.25, 0.25, 1.0], &three);
            for ((x, y), z) in acc.iter().zip(&a).zip(&b) {
                assert!((x - (z + 1.5 * y)).abs() < 1e-5);
            }
            let two = &three[..2 * n];
            let mut d = [0.0f32; 2];
            dot_rows(&mut d, &b, two, 2.0);
            assert!((d[1] as f64 - 2.0 * want).abs() < 2e-4, "n = {n}");
            // dots over 6 weight rows (one pass of four, two single rows).
            let six: Vec<f32> = (0..6).flat_map(|_| b.iter().copied()).collect();
            let mut d6 = [0.0f32; 6];
            dots(&mut d6, &a, &six);
            assert!(d6.iter().all(|&v| (v as f64 - want).abs() < 1e-4), "n = {n}: {d6:?} vs {want}");
        }
    }
}
