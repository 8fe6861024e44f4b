//! Test helpers: a tiny deterministic RNG and a central finite-difference gradient checker.
//!
//! Every backward is checked the same way: pick a fixed random R of the forward output's shape, let
//! L = Σ out ⊙ R (summed in f64 from the f32 forward), and compare ∂L/∂input from the backward (fed dout = R)
//! with (L(x + h·e_i) − L(x − h·e_i)) / 2h for every element i of every input.

/// SplitMix64: deterministic, dependency-free, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [−1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// `n` values uniform in [−scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }

    /// Uniform integer in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Σ out ⊙ r in f64.
pub fn weighted_sum(out: &[f32], r: &[f32]) -> f64 {
    assert_eq!(out.len(), r.len());
    out.iter().zip(r).map(|(&o, &r)| o as f64 * r as f64).sum()
}

/// Checks `analytic` = ∂loss/∂x element by element with central differences of step `h`.
/// Error measure: |g_fd − g| / max(1, |g|) ≤ `tol`. Returns the largest error seen (printed too, visible with
/// `--nocapture`). The step actually taken is (x+h) − (x−h) as represented in f32, so rounding of x ± h itself
/// adds no error. Also asserts the gradient is not trivially zero, so a check can never pass vacuously.
pub fn check(name: &str, x: &[f32], analytic: &[f32], h: f32, tol: f64, mut loss: impl FnMut(&[f32]) -> f64) -> f64 {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let mut xp = x.to_vec();
    let mut worst = 0.0f64;
    let mut largest = 0.0f64;
    for i in 0..x.len() {
        let (plus, minus) = (x[i] + h, x[i] - h);
        xp[i] = plus;
        let lp = loss(&xp);
        xp[i] = minus;
        let lm = loss(&xp);
        xp[i] = x[i];
        let fd = (lp - lm) / (plus as f64 - minus as f64);
        let g = analytic[i] as f64;
        let err = (fd - g).abs() / g.abs().max(1.0);
        assert!(
            err <= tol,
            "{name}[{i}]: finite difference {fd:.6e} vs backward {g:.6e} (error {err:.2e} > {tol:.0e})"
        );
        worst = worst.max(err);
        largest = largest.max(g.abs());
    }
    assert!(largest > 1e-3, "{name}: gradient is (nearly) zero everywhere — the check would be vacuous");
    eprintln!("{name}: {} elements, max error {worst:.2e} (tol {tol:.0e}, max |g| {largest:.2e})", x.len());
    worst
}

/// Asserts two buffers are identical bit for bit.
pub fn assert_bits_eq(name: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{name}: length");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x.to_bits() == y.to_bits(), "{name}[{i}]: {x:e} vs {y:e} differ between runs");
    }
}

/// Runs `f` inside a dedicated rayon pool of `threads` threads.
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon pool").install(f)
}
