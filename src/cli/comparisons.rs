//! Device results against the CPU's, one printed line each: what `--check-kernels` (op by op) and
//! `--check-device` (a whole model) report.
use anyhow::Result;

/// One comparison: its name, the normalized error (how, in words: [`MAX_REL`], [`NORM_REL`], [`REL`] or [`DIFFERING`]) and the
/// tolerance.
pub struct Compared {
    pub name: String,
    pub measure: &'static str,
    pub err: f64,
    pub tol: f64,
}

/// [`max_rel_err`]'s name in a report line.
pub const MAX_REL: &str = "max |Δ|/max |cpu|";
/// [`norm_rel_err`]'s.
pub const NORM_REL: &str = "‖Δ‖/‖cpu‖";
/// A scalar's relative error.
pub const REL: &str = "|Δ|/|cpu|";
/// How many elements differ, where they must be equal.
pub const DIFFERING: &str = "differing";

/// A check of some ops on `D`: pushes its comparisons as it makes them.
pub type Check<D> = fn(&D, &mut Vec<Compared>) -> Result<()>;

/// Runs `checks` on `d`, one line per comparison after `label`, and one per check that fails to run (the
/// others still run); returns how many failed.
pub fn run_checks<D>(label: &str, d: &D, checks: &[(&str, Check<D>)]) -> Result<usize> {
    let mut failed = 0;
    for (op, check) in checks {
        let mut done = vec![];
        let result = check(d, &mut done);
        for c in &done {
            let ok = c.err <= c.tol;
            failed += usize::from(!ok);
            let verdict = if ok { "OK" } else { "FAILED" };
            out!("{label} {:38} {} {:.1e} (tol {:.0e}) {verdict}", c.name, c.measure, c.err, c.tol);
        }
        if let Err(e) = result {
            out!("{label} {op} FAILED to run: {e:#}");
            failed += 1;
        }
    }
    Ok(failed)
}

/// max |got − want| / max |want|; a NaN on either side, or a length mismatch, is an infinite error (f64::max
/// alone would drop a NaN).
pub fn max_rel_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let err =
        got.iter().zip(want).map(|(g, c)| (g - c).abs() as f64).map(|e| if e.is_nan() { f64::INFINITY } else { e });
    let scale = want.iter().map(|c| c.abs() as f64).fold(f64::MIN_POSITIVE, f64::max);
    err.fold(0.0, f64::max) / scale
}

/// ‖got − want‖ / ‖want‖ (Euclidean, in f64): the relative error of the whole, where single elements may
/// stray further (bf16 rounding); a NaN or a length mismatch is an infinite error.
pub fn norm_rel_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let diff: f64 = got.iter().zip(want).map(|(g, w)| (*g as f64 - *w as f64).powi(2)).sum();
    let scale: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    let err = (diff / scale.max(f64::MIN_POSITIVE)).sqrt();
    if err.is_nan() { f64::INFINITY } else { err }
}

/// Pushes `got` against `want` as [`max_rel_err`].
pub fn compare(all: &mut Vec<Compared>, name: &str, got: &[f32], want: &[f32], tol: f64) {
    all.push(Compared { name: name.into(), measure: MAX_REL, err: max_rel_err(got, want), tol });
}

#[cfg(test)]
mod tests {
    use super::{max_rel_err, norm_rel_err};

    #[test]
    fn a_nan_or_a_length_mismatch_is_an_infinite_error() {
        assert_eq!(max_rel_err(&[1.0, 2.5], &[1.0, 2.0]), 0.25);
        assert_eq!(norm_rel_err(&[3.0, 4.0], &[0.0, 4.0]), 0.75);
        for err in [max_rel_err, norm_rel_err] {
            assert_eq!(err(&[f32::NAN, 2.0], &[1.0, 2.0]), f64::INFINITY);
            assert_eq!(err(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        }
    }
}
