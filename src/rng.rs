//! Counter-based randomness: every random number is a pure function of (seed, stream, index), so
//! runs are reproducible for any thread count and resuming needs no saved generator state.

/// SplitMix64's finaliser: a well-mixed 64-bit hash.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1) for element `index` of stream (`seed`, `stream`).
pub fn uniform(seed: u64, stream: u64, index: u64) -> f64 {
    uniform_at(stream_key(seed, stream), index)
}

/// The key of stream (`seed`, `stream`), hoisted out of per-element loops.
pub fn stream_key(seed: u64, stream: u64) -> u64 {
    mix(seed ^ mix(stream))
}

/// `uniform(seed, stream, index)` given `key = stream_key(seed, stream)`.
pub fn uniform_at(key: u64, index: u64) -> f64 {
    (mix(key ^ index) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A stable 64-bit id for a name (FNV-1a), to derive per-tensor streams.
pub fn stream_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_and_roughly_uniform() {
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|i| uniform(7, 3, i)).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = xs.iter().sum::<f64>() / n as f64;
        let below = xs.iter().filter(|&&x| x < 0.25).count() as f64 / n as f64;
        assert!((mean - 0.5).abs() < 0.01 && (below - 0.25).abs() < 0.01);
        assert_ne!(uniform(7, 3, 0), uniform(8, 3, 0));
        assert_ne!(uniform(7, 3, 0), uniform(7, 4, 0));
    }
}
