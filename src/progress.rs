//! Progress bars on stderr, all drawn the same way.
use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps drawn with `template` (indicatif's syntax, e.g.
/// `"{spinner} scoring {pos}/{len} rows [{bar:30}] {per_sec} ETA {eta}"`) and `=> ` as its fill.
/// The template is a literal of the program, so a malformed one is a bug, not an input error.
pub fn bar(len: u64, template: &'static str) -> ProgressBar {
    let style = ProgressStyle::with_template(template).expect("static progress template").progress_chars("=> ");
    ProgressBar::new(len).with_style(style)
}

/// A line for the log of a job drawing `bar`: above the bar on a terminal; on stderr where the bar is not drawn (a
/// pipe, a log file), where indicatif would drop it.
pub fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Where no bar is drawn, a job of `total` steps logs a plain line every this many steps (and at its last).
pub fn log_every(total: u64) -> u64 {
    (total / 20).clamp(1, 100)
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
