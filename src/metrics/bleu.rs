//! Corpus BLEU exactly as `sacrebleu.corpus_bleu(hyps, refs)` with its defaults (sacreBLEU 2.x, checked against
//! 2.6.0): `BLEU(lowercase=False, tokenize="13a", smooth_method="exp", max_ngram_order=4, effective_order=False)`.
//!
//! Per sentence (`BLEU._compute_segment_statistics`): hypothesis and references are `rstrip()`ped and 13a-tokenized;
//! a reference n-gram's count is its largest count in any one reference; the hypothesis's n-gram counts are clipped
//! to those; the sentence's reference length is the one closest to the hypothesis length, the shorter on a tie.
//! Statistics are summed over the corpus, then `BLEU.compute_bleu` turns them into a score with the same float
//! operations in the same order as Python (so results agree to the last bit or so).
use super::{py_rstrip, py_split};
use std::collections::HashMap;

/// Largest n-gram order.
pub const MAX_ORDER: usize = 4;

/// sacreBLEU's `Tokenizer13a` (mteval-v13a): applied to a line already `rstrip()`ped, as BLEU does.
pub fn tokenize_13a(line: &str) -> String {
    let mut s = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if s.contains('&') {
        s = s.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    tokenize_regexp(&format!(" {s} "))
}

/// First substitution of `TokenizerRegexp`: `([\{-\~\[-\` -\&\(-\+\:-\@\/])` → ` \1 `.
fn is_split_symbol(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// Applies a two-character pattern like Python's `re.sub` (leftmost, non-overlapping matches, scanning on after
/// each match); `emit` writes the replacement of a matched pair.
fn sub_pairs(
    chars: &[char],
    matches: impl Fn(char, char) -> bool,
    emit: impl Fn(&mut Vec<char>, char, char),
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + 16);
    let mut i = 0;
    while i < chars.len() {
        if i + 1 < chars.len() && matches(chars[i], chars[i + 1]) {
            emit(&mut out, chars[i], chars[i + 1]);
            i += 2;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// sacreBLEU's `TokenizerRegexp.__call__`: four substitutions, then `' '.join(line.split())`.
fn tokenize_regexp(line: &str) -> String {
    let mut chars = Vec::with_capacity(line.len() + 16);
    for c in line.chars() {
        if is_split_symbol(c) {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }
    let digit = |c: char| c.is_ascii_digit();
    let dot_comma = |c: char| c == '.' || c == ',';
    // tokenize period and comma unless preceded by a digit: ([^0-9])([\.,]) → \1 \2
    let chars = sub_pairs(&chars, |a, b| !digit(a) && dot_comma(b), |o, a, b| o.extend([a, ' ', b, ' ']));
    // tokenize period and comma unless followed by a digit: ([\.,])([^0-9]) → ' \1 \2'
    let chars = sub_pairs(&chars, |a, b| dot_comma(a) && !digit(b), |o, a, b| o.extend([' ', a, ' ', b]));
    // tokenize dash when preceded by a digit: ([0-9])(-) → \1 \2
    let chars = sub_pairs(&chars, |a, b| digit(a) && b == '-', |o, a, b| o.extend([a, ' ', b, ' ']));
    let s: String = chars.into_iter().collect();
    py_split(&s).collect::<Vec<_>>().join(" ")
}

/// The tokens BLEU counts for one segment: `tokenize_13a(segment.rstrip()).split()`.
pub fn bleu_tokens(segment: &str) -> Vec<String> {
    py_split(&tokenize_13a(py_rstrip(segment))).map(str::to_string).collect()
}

/// Counts of every 1..=4-gram of `tokens`.
fn ngram_counts(tokens: &[String]) -> HashMap<&[String], u64> {
    let mut m = HashMap::new();
    for n in 1..=MAX_ORDER {
        for w in tokens.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

/// The reference length closest to `hyp_len`; the shorter of two equally close ones.
pub fn closest_ref_len(hyp_len: usize, ref_lens: &[usize]) -> usize {
    let mut best: Option<(usize, usize)> = None; // (diff, len)
    for &r in ref_lens {
        let diff = hyp_len.abs_diff(r);
        best = match best {
            Some((d, l)) if diff > d || (diff == d && r >= l) => Some((d, l)),
            _ => Some((diff, r)),
        };
    }
    best.map_or(0, |(_, l)| l)
}

/// BLEU's sufficient statistics; they add over sentences.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BleuStats {
    pub sys_len: u64,
    pub ref_len: u64,
    /// Clipped n-gram matches, orders 1..=4.
    pub correct: [u64; MAX_ORDER],
    /// Hypothesis n-grams, orders 1..=4.
    pub total: [u64; MAX_ORDER],
}

impl std::ops::AddAssign for BleuStats {
    fn add_assign(&mut self, o: Self) {
        self.sys_len += o.sys_len;
        self.ref_len += o.ref_len;
        for n in 0..MAX_ORDER {
            self.correct[n] += o.correct[n];
            self.total[n] += o.total[n];
        }
    }
}

/// Statistics of one hypothesis against its references (at least one).
pub fn segment_stats<R: AsRef<str>>(hyp: &str, refs: &[R]) -> BleuStats {
    assert!(!refs.is_empty(), "BLEU needs at least one reference per hypothesis");
    let ref_tokens: Vec<Vec<String>> = refs.iter().map(|r| bleu_tokens(r.as_ref())).collect();
    let mut ref_max: HashMap<&[String], u64> = HashMap::new();
    for toks in &ref_tokens {
        for (g, c) in ngram_counts(toks) {
            let e = ref_max.entry(g).or_insert(0);
            *e = (*e).max(c);
        }
    }
    let ref_lens: Vec<usize> = ref_tokens.iter().map(Vec::len).collect();
    let hyp_tokens = bleu_tokens(hyp);
    let mut s = BleuStats {
        sys_len: hyp_tokens.len() as u64,
        ref_len: closest_ref_len(hyp_tokens.len(), &ref_lens) as u64,
        ..Default::default()
    };
    for (g, c) in ngram_counts(&hyp_tokens) {
        let n = g.len() - 1;
        s.total[n] += c;
        if let Some(&r) = ref_max.get(g) {
            s.correct[n] += c.min(r);
        }
    }
    s
}

/// A BLEU result, with the fields of sacreBLEU's `BLEUScore`.
#[derive(Clone, Debug, PartialEq)]
pub struct Bleu {
    /// 0–100.
    pub score: f64,
    /// n-gram precisions in %, after smoothing (all 0 when nothing matched at all).
    pub precisions: [f64; MAX_ORDER],
    /// Brevity penalty.
    pub bp: f64,
    pub sys_len: u64,
    pub ref_len: u64,
    pub counts: [u64; MAX_ORDER],
    pub totals: [u64; MAX_ORDER],
}

/// sacreBLEU's `my_log`: log, with log(0) = -9999999999.
fn my_log(x: f64) -> f64 {
    if x == 0.0 { -9_999_999_999.0 } else { x.ln() }
}

impl BleuStats {
    /// `BLEU.compute_bleu(..., smooth_method="exp", effective_order=False)`.
    pub fn score(&self) -> Bleu {
        let (sys_len, ref_len) = (self.sys_len, self.ref_len);
        let mut bp = 1.0;
        if sys_len < ref_len {
            bp = if sys_len > 0 { (1.0 - ref_len as f64 / sys_len as f64).exp() } else { 0.0 };
        }
        let mut out = Bleu {
            score: 0.0,
            precisions: [0.0; MAX_ORDER],
            bp,
            sys_len,
            ref_len,
            counts: self.correct,
            totals: self.total,
        };
        // Early stop if there are no matches (sacreBLEU #141).
        if self.correct.iter().all(|&c| c == 0) {
            return out;
        }
        let mut smooth_mteval = 1.0f64;
        for n in 0..MAX_ORDER {
            if self.total[n] == 0 {
                break;
            }
            out.precisions[n] = if self.correct[n] == 0 {
                smooth_mteval *= 2.0;
                100.0 / (smooth_mteval * self.total[n] as f64)
            } else {
                100.0 * self.correct[n] as f64 / self.total[n] as f64
            };
        }
        let log_sum = out.precisions.iter().fold(0.0, |acc, &p| acc + my_log(p));
        out.score = bp * (log_sum / MAX_ORDER as f64).exp();
        out
    }
}

/// `sacrebleu.corpus_bleu(hyps, streams)` where `refs[i]` holds every reference of `hyps[i]` (any number ≥ 1 —
/// sacreBLEU's reference streams padded with `None`).
pub fn corpus_bleu<H: AsRef<str>, R: AsRef<str>>(hyps: &[H], refs: &[Vec<R>]) -> Bleu {
    assert_eq!(hyps.len(), refs.len(), "one list of references per hypothesis");
    let mut total = BleuStats::default();
    for (h, r) in hyps.iter().zip(refs) {
        total += segment_stats(h.as_ref(), r);
    }
    total.score()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        bleu_tokens(s)
    }

    #[test]
    fn tokenizer_13a_cases() {
        assert_eq!(tokenize_13a("Hello, world."), "Hello , world .");
        assert_eq!(tokenize_13a("3.14 and 3,000 but a.b, c."), "3.14 and 3,000 but a . b , c .");
        assert_eq!(tokenize_13a("20-25 a-b 9-"), "20 - 25 a-b 9 -");
        assert_eq!(tokenize_13a("&amp;lt; x&quot;"), "< x \"");
        assert_eq!(tokenize_13a("a <skipped> pre-\nfix\nend"), "a prefix end");
        assert_eq!(tokenize_13a("a.. b,,"), "a . . b , ,");
        assert_eq!(tokenize_13a("it's (ok)!"), "it's ( ok ) !");
        assert_eq!(toks("  \t"), Vec::<String>::new());
    }

    #[test]
    fn closest_reference_length_prefers_shorter_on_ties() {
        assert_eq!(closest_ref_len(6, &[4, 8]), 4);
        assert_eq!(closest_ref_len(6, &[8, 4]), 4);
        assert_eq!(closest_ref_len(6, &[9, 7, 5]), 5);
        assert_eq!(closest_ref_len(0, &[3, 2, 5]), 2);
        assert_eq!(closest_ref_len(10, &[3, 12, 8]), 8);
    }

    #[test]
    fn identical_hypothesis_scores_100() {
        let s = "The Eagle is a cheap coffee shop near Burger King.";
        let b = corpus_bleu(&[s], &[vec![s, "Something else entirely ."]]);
        assert!((b.score - 100.0).abs() < 1e-9, "{b:?}");
        assert_eq!((b.bp, b.precisions), (1.0, [100.0; 4]));
        assert_eq!((b.sys_len, b.ref_len), (11, 11));
    }

    #[test]
    fn no_matches_is_zero_via_early_exit() {
        let b = corpus_bleu(&["alpha beta gamma delta"], &[vec!["one two three four five"]]);
        assert_eq!(b.score, 0.0);
        assert_eq!(b.precisions, [0.0; 4]);
        assert_eq!(b.counts, [0; 4]);
        assert_eq!(b.totals, [4, 3, 2, 1]);
        assert!((b.bp - (1.0f64 - 5.0 / 4.0).exp()).abs() < 1e-15);
    }

    #[test]
    fn exp_smoothing_halves_each_missing_order() {
        // unigrams 5/5, bigrams 0/4, trigrams 0/3, 4-grams 0/2
        let b = corpus_bleu(&["mat the on sat cat"], &[vec!["the cat sat on the mat"]]);
        assert_eq!(b.counts, [5, 0, 0, 0]);
        assert_eq!(b.precisions, [100.0, 100.0 / (2.0 * 4.0), 100.0 / (4.0 * 3.0), 100.0 / (8.0 * 2.0)]);
        let bp = (1.0f64 - 6.0 / 5.0).exp();
        let expect = bp * ((100f64.ln() + 12.5f64.ln() + (100.0f64 / 12.0).ln() + 6.25f64.ln()) / 4.0).exp();
        assert!((b.score - expect).abs() < 1e-12, "{} vs {expect}", b.score);
    }

    #[test]
    fn hypothesis_shorter_than_every_reference() {
        let b = corpus_bleu(
            &["The Eagle is cheap."],
            &[vec!["The Eagle is a cheap coffee shop.", "The Eagle coffee shop is cheap and near Burger King."]],
        );
        assert_eq!((b.sys_len, b.ref_len), (5, 8));
        assert!((b.bp - (1.0f64 - 8.0 / 5.0).exp()).abs() < 1e-15);
        assert!(b.score > 0.0 && b.score < 100.0 * b.bp);
    }

    #[test]
    fn fewer_tokens_than_the_order_gives_zero_and_empty_corpus_has_zero_bp() {
        let b = corpus_bleu(&["a b"], &[vec!["a b c"]]);
        assert_eq!((b.score, b.precisions), (0.0, [100.0, 100.0, 0.0, 0.0]));
        let b = corpus_bleu(&["", "  "], &[vec!["a b"], vec!["c"]]);
        assert_eq!((b.score, b.bp, b.sys_len, b.ref_len), (0.0, 0.0, 0, 3));
    }

    #[test]
    fn counts_are_clipped_by_the_largest_count_in_one_reference() {
        let s = segment_stats("the the the the", &["the cat the", "the"]);
        assert_eq!(s.correct[0], 2);
        assert_eq!(s.total, [4, 3, 2, 1]);
    }
}
