//! The arithmetic of AVX512-BF16, as Intel's SDM specifies it, in scalar f32 — the definition the bf16 GEMM
//! (`gemm_bf16`) reproduces bit for bit on CPUs without the instructions:
//!
//! ```text
//! vcvtne2ps2bf16  f32 → bf16: round to nearest even; a denormal becomes a zero of its sign; a NaN stays a
//!                 (quiet) NaN; a value past the largest bf16 becomes an infinity
//! vdpbf16ps       per f32 lane j, for the pair of bf16 (a₂ⱼ, a₂ⱼ₊₁) · (b₂ⱼ, b₂ⱼ₊₁):
//!                     acc = fma(a₂ⱼ₊₁, b₂ⱼ₊₁, acc)    then    acc = fma(a₂ⱼ, b₂ⱼ, acc)
//!                 each an f32 FMA with round to nearest even, denormal inputs read as zero (DAZ) and a tiny
//!                 result flushed to a zero of its sign (FTZ); MXCSR is neither read nor written
//! ```
//!
//! "Tiny" is the SDM's underflow test: the result rounded to 24 bits *as though the exponent were unbounded* lies
//! below the smallest normal f32 (2⁻¹²⁶). A plain FMA rounds a result just below 2⁻¹²⁶ up to 2⁻¹²⁶ on the
//! denormal grid, where the instruction returns zero: [`fma_ftz`] tells the two apart.

/// The bits of x rounded to bf16 as `vcvtne2ps2bf16` does.
#[inline(always)]
pub fn round(x: f32) -> u16 {
    let bits = x.to_bits();
    let (sign, exp, frac) = (bits & 0x8000_0000, bits & 0x7f80_0000, bits & 0x007f_ffff);
    let out = if exp == 0 {
        sign // zero, or a denormal flushed to a zero of its sign
    } else if exp == 0x7f80_0000 {
        if frac == 0 { bits } else { bits | 0x0040_0000 } // infinity; NaN made quiet, its top bits kept
    } else {
        // Round to nearest even on the low 16 bits (a carry may reach the exponent: up to infinity).
        bits + 0x7fff + ((bits >> 16) & 1)
    };
    (out >> 16) as u16
}

/// The f32 value of bf16 bits (exact).
#[inline(always)]
pub fn widen(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// x rounded to bf16, as an f32.
#[inline(always)]
pub fn rounded(x: f32) -> f32 {
    widen(round(x))
}

/// One step of `vdpbf16ps`: acc + a·b rounded once, a tiny result flushed to a zero of its sign. `a` and `b`
/// are bf16 values (never denormal: [`round`] flushes them) and `acc` a previous result (never denormal), so
/// DAZ has nothing left to do.
#[inline(always)]
pub fn fma_ftz(a: f32, b: f32, acc: f32) -> f32 {
    let r = a.mul_add(b, acc);
    if r.abs() > f32::MIN_POSITIVE || r.is_nan() || r == 0.0 {
        return r;
    }
    // |r| ≤ 2⁻¹²⁶: is the result tiny with an unbounded exponent? a·b (16 significant bits) is exact in f64,
    // and rounding the f64 sum of it and acc to f32 rounds correctly (53 ≥ 2·24 + 2 bits); scaled by 2⁶⁴ the
    // f32 rounding is in the normal range, i.e. at 24 bits whatever the exponent.
    const SCALE: f64 = 18446744073709551616.0; // 2⁶⁴
    let v = (a as f64 * b as f64 + acc as f64) * SCALE;
    if ((v as f32).abs() as f64) < f32::MIN_POSITIVE as f64 * SCALE { 0.0f32.copysign(v as f32) } else { r }
}

/// Whether this CPU runs AVX512-BF16 (and this build has the AVX-512 kernels that use it).
pub fn native() -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(all(target_arch = "x86_64", feature = "avx512")))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_half_on_normal_values_and_the_sdm_at_the_edges() {
        // Normal values: the `half` crate's round-to-nearest-even conversion, an independent implementation.
        for i in 0..200_000u64 {
            let x = ((crate::rng::uniform(11, 0, i) - 0.5) * 2f64.powi((i % 200) as i32 - 100)) as f32;
            if x.is_normal() && rounded(x).is_finite() {
                assert_eq!(round(x), half::bf16::from_f32(x).to_bits(), "{x:e}");
            }
        }
        // Ties go to even: 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷ → 1; 1 + 3·2⁻⁸ → 1 + 2⁻⁶.
        assert_eq!(rounded(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(rounded(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        // Denormals become zeros of their sign (`half` would keep them).
        assert_eq!(round(1e-40).to_le_bytes(), [0, 0]);
        assert_eq!(round(-1e-40), 0x8000);
        // The largest f32 rounds up to infinity; infinities stay; NaN stays NaN, made quiet.
        assert_eq!(rounded(f32::MAX), f32::INFINITY);
        assert_eq!(rounded(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert_eq!(round(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert!(rounded(f32::NAN).is_nan());
    }

    #[test]
    fn fma_flushes_results_tiny_before_the_denormal_rounding() {
        let p = |e: i32| 2f32.powi(e);
        // Normal results are the plain FMA's.
        assert_eq!(fma_ftz(1.5, 3.0, 0.25), 4.75);
        assert_eq!(fma_ftz(p(-70), p(-50), 0.0), p(-120));
        // A denormal result, exact or not, becomes a zero of its sign.
        assert_eq!(fma_ftz(p(-70), p(-60), 0.0).to_bits(), 0);
        assert_eq!(fma_ftz(-p(-70), p(-60), 0.0).to_bits(), 0x8000_0000);
        assert_eq!(fma_ftz(p(-64), p(-63), -p(-126)).to_bits(), 0x8000_0000); // 2⁻¹²⁷ − 2⁻¹²⁶ = −2⁻¹²⁷
        // 2⁻¹²⁶ − 2⁻¹⁵⁰ rounds to 2⁻¹²⁶ on the denormal grid, but is tiny with an unbounded exponent: zero.
        assert_eq!(p(-75).mul_add(-p(-75), p(-126)), p(-126));
        assert_eq!(fma_ftz(p(-75), -p(-75), p(-126)).to_bits(), 0);
        // 2⁻¹²⁶ − 2⁻¹⁵² rounds to 2⁻¹²⁶ even at 24 bits: not tiny.
        assert_eq!(fma_ftz(p(-76), -p(-76), p(-126)), p(-126));
        // Exactly 2⁻¹²⁶ is normal.
        assert_eq!(fma_ftz(p(-63), p(-63), 0.0), p(-126));
    }
}
