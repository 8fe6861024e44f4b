//! Test helpers: a tiny deterministic RNG and a central finite-difference gradient checker.
//!
//! Every backward is checked the same way: pick a fixed random R of the forward output's shape, let
//! L = Σ out ⊙ R (summed in f64 from the f32 forward), and compare ∂L/∂input from the backward (fed dout = R)
//! with (L(x + h·e_i) − L(x − h·e_i)) / 2h for every element i of every input, as a relative error with an
//! absolute floor: |g_fd − g| ≤ rtol·|g_fd| + atol ([`Tol`]).  Each op justifies its (rtol, atol) and shows,
//! with [`assert_catches_sign_flip`], that a wrong sign on a small gradient element is caught.
//!
//! Error budget of the central difference, used by every op's justification (u = 2⁻²⁴ ≈ 6e-8, f32 unit
//! round-off): round-off — an output o_j the perturbation moves carries ≈ c·u·|o_j| of f32 error (c a few ulps
//! for the op's arithmetic), independently in L(x+h) and L(x−h), so g_fd errs by ≈ c·u·Σ_moved |o_j r_j| / (2h)
//! (outputs that do not move are bit-identical in both and cancel exactly; the f64 sum adds ≈ 1e-16·Σ|o r|);
//! truncation — h²/6·|∂³L/∂x_i³|, zero for ops linear in the input.

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

/// Acceptance bound of a finite-difference check: element i passes when |g_fd − g| ≤ rtol·|g_fd| + atol.
///
/// `atol` is the floor set by the error of the central difference itself (f32 round-off of the loss divided
/// by 2h, plus the h²/6·L''' truncation), so it must be justified per op from the magnitudes involved; `rtol`
/// covers the part of that error that grows with the gradient.  A gradient element with |g| ≥ 2·atol whose sign
/// is wrong errs by ≈ 2|g| > rtol·|g| + atol and is always reported (see [`assert_catches_sign_flip`]).
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub rtol: f64,
    pub atol: f64,
}

impl Tol {
    /// Whether the analytic `g` agrees with the finite difference `fd`.  NaN never agrees.
    pub fn accepts(&self, fd: f64, g: f64) -> bool {
        (fd - g).abs() <= self.rtol * fd.abs() + self.atol
    }
}

/// One element where the backward disagrees with the finite difference.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub index: usize,
    pub fd: f64,
    pub analytic: f64,
    /// rtol·|fd| + atol, the largest error that would have been accepted.
    pub bound: f64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}]: finite difference {:.6e} vs backward {:.6e} (|Δ| {:.2e} > bound {:.2e})",
            self.index,
            self.fd,
            self.analytic,
            (self.fd - self.analytic).abs(),
            self.bound
        )
    }
}

/// Central differences (L(x + h·e_i) − L(x − h·e_i)) / ((x_i + h) − (x_i − h)) for every element i.  The
/// denominator is the step actually taken as represented in f32, so rounding of x ± h itself adds no error.
pub fn finite_differences(x: &[f32], h: f32, mut loss: impl FnMut(&[f32]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let (plus, minus) = (x[i] + h, x[i] - h);
            xp[i] = plus;
            let lp = loss(&xp);
            xp[i] = minus;
            let lm = loss(&xp);
            xp[i] = x[i];
            (lp - lm) / (plus as f64 - minus as f64)
        })
        .collect()
}

/// Every element where `analytic` disagrees with `fd` under `tol`, in index order (empty when all agree).
pub fn mismatches(fd: &[f64], analytic: &[f32], tol: Tol) -> Vec<Mismatch> {
    assert_eq!(fd.len(), analytic.len(), "gradient length");
    fd.iter()
        .zip(analytic)
        .enumerate()
        .filter(|&(_, (&fd, &g))| !tol.accepts(fd, g as f64))
        .map(|(index, (&fd, &g))| Mismatch { index, fd, analytic: g as f64, bound: tol.rtol * fd.abs() + tol.atol })
        .collect()
}

/// Compares `analytic` with `fd`: Ok(largest |g_fd − g| − rtol·|g_fd|, i.e. the smallest atol that would still
/// pass) or Err(every mismatch).
pub fn compare(fd: &[f64], analytic: &[f32], tol: Tol) -> Result<f64, Vec<Mismatch>> {
    let bad = mismatches(fd, analytic, tol);
    if !bad.is_empty() {
        return Err(bad);
    }
    Ok(fd.iter().zip(analytic).map(|(&fd, &g)| (fd - g as f64).abs() - tol.rtol * fd.abs()).fold(0.0, f64::max))
}

/// Checks `analytic` = ∂loss/∂x element by element with central differences of step `h` and panics, listing the
/// first mismatches, if any element fails `tol`.  Also asserts the gradient is not trivially zero, so a check can
/// never pass vacuously.  Returns the finite differences, for [`assert_catches_sign_flip`].  The atol actually
/// needed is printed (visible with `--nocapture`).
pub fn check(name: &str, x: &[f32], analytic: &[f32], h: f32, tol: Tol, loss: impl FnMut(&[f32]) -> f64) -> Vec<f64> {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let fd = finite_differences(x, h, loss);
    match compare(&fd, analytic, tol) {
        Ok(needed) => {
            let largest = analytic.iter().fold(0.0f64, |m, &g| m.max((g as f64).abs()));
            assert!(largest > 1e-3, "{name}: gradient is (nearly) zero everywhere — the check would be vacuous");
            eprintln!(
                "{name}: {} elements pass |Δ| ≤ {:.0e}·|g_fd| + {:.0e}; atol needed {needed:.2e}, max |g| {largest:.2e}",
                x.len(),
                tol.rtol,
                tol.atol
            );
        }
        Err(bad) => {
            let shown: Vec<String> = bad.iter().take(5).map(|m| m.to_string()).collect();
            panic!("{name}: {} of {} elements disagree, e.g.\n  {}", bad.len(), x.len(), shown.join("\n  "));
        }
    }
    fd
}

/// The checker must catch a wrong sign on a small gradient element: negates the analytic gradient at the element
/// with the smallest |g| that is still ≥ 2·atol (anything smaller is inside the floor by design) and asserts
/// [`mismatches`] reports exactly that element.  The element must be well below 1 in size — where the old measure
/// |Δ|/max(1, |g|) was absolute.  Then asserts the same for every element with |g| ≥ 2·atol, one flip at a time.
pub fn assert_catches_sign_flip(name: &str, fd: &[f64], analytic: &[f32], tol: Tol) {
    let visible = |g: f32| (g as f64).abs() >= 2.0 * tol.atol;
    let (i, g) = analytic
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, g)| visible(g))
        .min_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .unwrap_or_else(|| panic!("{name}: no gradient element is above 2·atol = {:.1e}", 2.0 * tol.atol));
    assert!(
        g.abs() < 0.05,
        "{name}: smallest visible |g| = {:.2e} is not small; pick data with small gradients",
        g.abs()
    );
    let mut flipped = analytic.to_vec();
    flipped[i] = -g;
    let bad = mismatches(fd, &flipped, tol);
    assert_eq!(
        bad.iter().map(|m| m.index).collect::<Vec<_>>(),
        vec![i],
        "{name}: a sign flip of element {i} (g = {g:.3e}) must be reported, and only it"
    );
    for (j, &gj) in analytic.iter().enumerate() {
        if visible(gj) {
            assert!(!tol.accepts(fd[j], -gj as f64), "{name}: sign flip of element {j} (g = {gj:.3e}) was accepted");
        }
    }
    let hidden = analytic.iter().filter(|&&g| !visible(g)).count();
    let zero = analytic.iter().filter(|&&g| g == 0.0).count();
    eprintln!(
        "{name}: sign flip of element {i} (g = {g:.3e}) caught ({}); {hidden} of {} elements below 2·atol ({zero} zero)",
        bad[0],
        analytic.len()
    );
}

/// Scales column `col` of the row-major `r` (rows of `width`) by 1e-3.  Used as the output weights R, it makes the
/// gradient elements that sum R over rows (a norm's dw/db, an embedding row) small, so every check has small
/// gradient elements for [`assert_catches_sign_flip`] to flip.
pub fn small_column(mut r: Vec<f32>, width: usize, col: usize) -> Vec<f32> {
    r.iter_mut().skip(col).step_by(width).for_each(|v| *v *= 1e-3);
    r
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

#[cfg(test)]
mod tests {
    use super::*;

    /// L = Σ c_i·x_i³ / 3 (f64 throughout): g_i = c_i·x_i², with one element of gradient 5e-5.  At h = 1e-3 the
    /// truncation error c·h²/3 is ≤ 7e-7 and f64 round-off negligible, far inside the floor of 2e-5.
    fn cubic(c: &[f64]) -> impl Fn(&[f32]) -> f64 + '_ {
        move |x| x.iter().zip(c).map(|(&x, &c)| c * (x as f64).powi(3) / 3.0).sum()
    }

    #[test]
    fn relative_measure_catches_a_sign_flip_the_old_measure_accepted() {
        let (x, c) = ([0.5f32, -1.0, 2.0, 1.0], [2.0, 0.5, 1.0, 5e-5]);
        let g: Vec<f32> = x.iter().zip(&c).map(|(&x, &c)| (c * (x as f64).powi(2)) as f32).collect();
        let tol = Tol { rtol: 1e-4, atol: 2e-5 };
        let fd = check("cubic", &x, &g, 1e-3, tol, cubic(&c));
        // The old measure |Δ| / max(1, |g|) ≤ 2e-4 accepts g[3] = 5e-5 with the wrong sign (|Δ| = 1e-4) …
        let old_err = (fd[3] + g[3] as f64).abs() / (g[3] as f64).abs().max(1.0);
        assert!(old_err < 2e-4, "{old_err}");
        // … the relative measure with a floor of 2e-5 reports it, and only it.
        let mut flipped = g.clone();
        flipped[3] = -g[3];
        let bad = compare(&fd, &flipped, tol).unwrap_err();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].index, 3);
        assert_catches_sign_flip("cubic", &fd, &g, tol);
    }

    #[test]
    #[should_panic(expected = "1 of 4 elements disagree")]
    fn check_panics_on_a_wrong_gradient_element() {
        let (x, c) = ([0.5f32, -1.0, 2.0, 1.0], [2.0, 0.5, 1.0, 5e-5]);
        let g = [0.5f32, 0.5, 4.0, -5e-5];
        check("cubic", &x, &g, 1e-3, Tol { rtol: 1e-4, atol: 2e-5 }, cubic(&c));
    }

    #[test]
    #[should_panic(expected = "no gradient element is above 2·atol")]
    fn sign_flip_check_refuses_a_floor_that_hides_every_element() {
        let (fd, g) = ([0.5, -0.25], [0.5f32, -0.25]);
        assert_catches_sign_flip("loose", &fd, &g, Tol { rtol: 1e-4, atol: 1.0 });
    }

    #[test]
    #[should_panic(expected = "must be reported")]
    fn sign_flip_check_fails_when_the_relative_part_hides_a_flip() {
        // rtol ≥ 2 accepts any flip: the check must notice.
        let (fd, g) = ([1e-3, 0.5], [1e-3f32, 0.5]);
        assert_catches_sign_flip("rtol too loose", &fd, &g, Tol { rtol: 3.0, atol: 1e-6 });
    }
}
