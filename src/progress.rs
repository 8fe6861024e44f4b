//! Progress bars on stderr, all drawn the same way.
use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps drawn with `template` (indicatif's syntax, e.g.
/// `"{spinner} scoring {pos}/{len} rows [{bar:30}] {per_sec} ETA {eta}"`) and `=> ` as its fill.
/// The template is a literal of the program, so a malformed one is a bug, not an input error.
pub fn bar(len: u64, template: &'static str) -> ProgressBar {
    let style = ProgressStyle::with_template(template).expect("static progress template").progress_chars("=> ");
    ProgressBar::new(len).with_style(style)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bar_counts_to_its_length() {
        let b = super::bar(3, "{bar:10} {pos}/{len}");
        b.inc(2);
        assert_eq!((b.position(), b.length()), (2, Some(3)));
    }
}
