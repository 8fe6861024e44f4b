//! Llama 3.1's frequency-dependent RoPE rescaling (`rope_scaling.rope_type == "llama3"`) in its two spellings:
//! config.json's four numbers, which transformers turns into scaled inverse frequencies, and the per-frequency
//! divisors llama.cpp's converter writes as the `rope_freqs.weight` tensor of a GGUF. Llama 3.1/3.2/3.3 files of
//! either kind are read, and written, through the four numbers.
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

/// Where an inverse frequency falls: kept (short wavelengths), divided by `factor` (long ones), or between,
/// with the weight `smooth` of the kept value.
enum Band {
    Kept,
    Divided,
    Smooth(f32),
}

const TWO_PI: f32 = 2.0 * std::f32::consts::PI;

impl Llama3RopeScaling {
    /// In f32 as PyTorch computes transformers' and the converter's `2π / inv_freq` and `orig / wavelen`: a
    /// number over a tensor is the tensor's reciprocal times the number, which can differ from the quotient
    /// in the last bit.
    fn band(&self, inv_freq: f32) -> Band {
        let orig = self.original_max_position_embeddings;
        let wavelen = (1.0 / inv_freq) * TWO_PI;
        if wavelen < orig / self.high_freq_factor {
            Band::Kept
        } else if wavelen > orig / self.low_freq_factor {
            Band::Divided
        } else {
            Band::Smooth(
                ((1.0 / wavelen) * orig - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor),
            )
        }
    }

    /// Scales one inverse frequency the way transformers' `_compute_llama3_parameters` does.
    pub fn scale(&self, inv_freq: f32) -> f32 {
        match self.band(inv_freq) {
            Band::Kept => inv_freq,
            Band::Divided => inv_freq / self.factor,
            Band::Smooth(s) => (1.0 - s) * inv_freq / self.factor + s * inv_freq,
        }
    }

    /// The divisor of each of `inv_freq` (unscaled, one per rotated pair) in f32 as llama.cpp's converter computes
    /// the `rope_freqs.weight` it writes: llama.cpp divides each frequency by it.
    pub fn freq_factors(&self, inv_freq: &[f32]) -> Vec<f32> {
        inv_freq
            .iter()
            .map(|&f| match self.band(f) {
                Band::Kept => 1.0,
                Band::Divided => self.factor,
                Band::Smooth(s) => 1.0 / ((1.0 - s) / self.factor + s),
            })
            .collect()
    }

    /// The scaling whose [`Self::freq_factors`] are `factors` (a GGUF's `rope_freqs.weight`) for the unscaled
    /// `inv_freq`, or `None` when no Llama 3 scaling gives them (each within 1e-5 relative).
    ///
    /// Only the factors are stored, so the four numbers are recovered: `factor` is the largest divisor; the
    /// divisors between 1 and `factor` lie on 1/f = (1 − s)/factor + s with s = (orig/wavelength − low)/(high −
    /// low), a line in 1/wavelength whose slope and intercept give `original_max_position_embeddings` and
    /// `high_freq_factor` once `low_freq_factor` is 1 (every Llama 3.x release). With fewer than two such divisors
    /// the line is underdetermined, and Llama 3's own values (high 4, original 8192) are tried, then the original
    /// context that puts the one divisor where it is.
    pub fn from_freq_factors(factors: &[f32], inv_freq: &[f32]) -> Option<Self> {
        if factors.len() != inv_freq.len() || factors.iter().any(|f| !f.is_finite() || *f < 1.0) {
            return None;
        }
        let factor = factors.iter().copied().fold(1.0f32, f32::max);
        if factor == 1.0 {
            return None;
        }
        // (1/wavelength, s) of the divisors strictly between 1 and factor
        let smooth: Vec<(f64, f64)> = factors
            .iter()
            .zip(inv_freq)
            .filter(|(f, _)| **f > 1.0 && **f < factor)
            .map(|(&f, &w)| {
                let s = (1.0 / f as f64 - 1.0 / factor as f64) / (1.0 - 1.0 / factor as f64);
                (w as f64 / TWO_PI as f64, s)
            })
            .collect();
        let with = |high: f64, orig: f64| Llama3RopeScaling {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: high as f32,
            original_max_position_embeddings: orig as f32,
        };
        let mut candidates = vec![];
        if let (Some(&(x0, s0)), Some(&(x1, s1))) = (smooth.first(), smooth.last())
            && x0 != x1
        {
            // s = orig/(high − 1) · x − 1/(high − 1)
            let slope = (s1 - s0) / (x1 - x0);
            let intercept = s0 - slope * x0;
            if intercept < 0.0 {
                let high = 1.0 - 1.0 / intercept;
                candidates.push(with(high.round_if_close(), (slope * (high - 1.0)).round_if_close()));
            }
        }
        candidates.push(with(4.0, 8192.0));
        if let Some(&(x, s)) = smooth.first() {
            candidates.push(with(4.0, ((3.0 * s + 1.0) / x).round_if_close()));
        }
        candidates
            .into_iter()
            .find(|c| c.freq_factors(inv_freq).iter().zip(factors).all(|(a, b)| (a - b).abs() <= 1e-5 * b))
    }
}

trait RoundIfClose {
    /// The nearest integer when within 1e-3 of it, or 1e-6 relative (the four numbers are integers in every
    /// release; a fit leaves rounding noise), else the value.
    fn round_if_close(self) -> Self;
}

impl RoundIfClose for f64 {
    fn round_if_close(self) -> f64 {
        if (self - self.round()).abs() < 1e-3f64.max(1e-6 * self.abs()) { self.round() } else { self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv_freq(theta: f32, d: usize) -> Vec<f32> {
        (0..d / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32)).collect()
    }

    /// Llama 3.2 1B's numbers (config.json) give the rope_freqs llama.cpp's converter writes for them
    /// (`conversion/llama.py`, run with torch): 1 for short wavelengths, three in the smooth band, then 32.
    #[test]
    fn freq_factors_are_the_converters() {
        let s = Llama3RopeScaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let f = s.freq_factors(&inv_freq(500000.0, 64));
        assert_eq!(f.len(), 32);
        assert!(f[..15].iter().all(|&v| v == 1.0), "{f:?}");
        // the converter's values (torch f32: 1.6513293, 3.2922628, 9.666731), bit for bit
        assert_eq!(f[15..18], [0x3fd35ec2, 0x4052b46f, 0x411aaaee].map(f32::from_bits));
        assert!(f[18..].iter().all(|&v| v == 32.0), "{f:?}");
        // each smooth divisor turns the unscaled frequency into transformers' scaled one
        for (w, d) in inv_freq(500000.0, 64).into_iter().zip(&f) {
            assert!(((w / d) - s.scale(w)).abs() <= 1e-6 * s.scale(w), "{w} / {d} vs {}", s.scale(w));
        }
    }

    #[test]
    fn the_four_numbers_come_back_from_the_factors() {
        for (theta, d, factor, high, orig) in [
            (500000.0, 64, 32.0, 4.0, 8192.0),  // Llama 3.2 1B/3B
            (500000.0, 128, 8.0, 4.0, 8192.0),  // Llama 3.1 8B
            (10000.0, 32, 8.0, 4.0, 32.0),      // tests/fixtures/tiny-llama31
            (10000.0, 16, 8.0, 2.0, 100.0),     // one smooth divisor, other numbers: not recovered uniquely
            (500000.0, 64, 16.0, 8.0, 16384.0), // a fit
        ] {
            let s = Llama3RopeScaling {
                factor,
                low_freq_factor: 1.0,
                high_freq_factor: high,
                original_max_position_embeddings: orig,
            };
            let w = inv_freq(theta, d);
            let back = Llama3RopeScaling::from_freq_factors(&s.freq_factors(&w), &w).expect("a fit");
            // whatever numbers come back give the same divisors
            for (a, b) in back.freq_factors(&w).iter().zip(s.freq_factors(&w)) {
                assert!((a - b).abs() <= 1e-5 * b, "{theta} {d}: {back:?} vs {s:?}");
            }
            if d >= 32 {
                assert_eq!(back, s);
            }
        }
    }

    #[test]
    fn factors_of_another_scheme_are_refused() {
        let w = inv_freq(10000.0, 16);
        assert!(Llama3RopeScaling::from_freq_factors(&[1.0; 8], &w).is_none(), "no scaling at all");
        let rising: Vec<f32> = (0..8).map(|i| 1.0 + i as f32 * 0.5).collect();
        assert!(Llama3RopeScaling::from_freq_factors(&rising, &w).is_none());
        assert!(Llama3RopeScaling::from_freq_factors(&[0.5; 8], &w).is_none());
        assert!(Llama3RopeScaling::from_freq_factors(&[2.0; 4], &w).is_none(), "wrong length");
    }
}
