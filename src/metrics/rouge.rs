//! ROUGE-L as Google's `rouge-score` (0.1.2) computes it: `RougeScorer(["rougeL"], use_stemmer=...)`.
//!
//! Tokens (`rouge_score.tokenize.tokenize`): `text.lower()`, every run of characters outside `[a-z0-9]` becomes a
//! space, split; with the stemmer, tokens longer than 3 characters go through NLTK's `PorterStemmer()` (default
//! mode `NLTK_EXTENSIONS`, checked against NLTK 3.10.4). ROUGE-L of a target (reference) and a prediction: LCS
//! length over tokens; precision = LCS / |prediction|, recall = LCS / |target|, F = 2PR / (P + R); all 0 when
//! either side has no tokens. Several targets (`score_multi`): the one with the largest F (first on ties).
use std::collections::HashMap;
use std::sync::OnceLock;

/// rouge-score's tokenizer.
pub fn tokenize(text: &str, stem: bool) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut cur = String::new();
    // Lowercasing char by char is exact here: only the ASCII letters and digits of the result are kept, and the
    // one context-dependent mapping (Greek final sigma) never yields any.
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            cur.push(c);
        } else if !cur.is_empty() {
            tokens.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    if stem {
        for t in &mut tokens {
            if t.len() > 3 {
                *t = porter_stem(t);
            }
        }
        tokens.retain(|t| !t.is_empty());
    }
    tokens
}

/// Precision, recall and F-measure, as rouge-score's `Score`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RougeScore {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

/// Length of the longest common subsequence.
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(cur[j]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// `rouge_scorer._score_lcs(target_tokens, prediction_tokens)`.
pub fn rouge_l_tokens(target: &[String], prediction: &[String]) -> RougeScore {
    if target.is_empty() || prediction.is_empty() {
        return RougeScore::default();
    }
    let lcs = lcs_len(target, prediction) as f64;
    let precision = lcs / prediction.len() as f64;
    let recall = lcs / target.len() as f64;
    let fmeasure = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    RougeScore { precision, recall, fmeasure }
}

/// `RougeScorer(["rougeL"], use_stemmer=stem).score(target, prediction)["rougeL"]`.
pub fn rouge_l(target: &str, prediction: &str, stem: bool) -> RougeScore {
    rouge_l_tokens(&tokenize(target, stem), &tokenize(prediction, stem))
}

/// `RougeScorer(["rougeL"], use_stemmer=stem).score_multi(targets, prediction)["rougeL"]`: the score against the
/// target with the largest F-measure (the first of equal ones). Panics on an empty `targets`, like rouge-score.
pub fn rouge_l_multi<R: AsRef<str>>(targets: &[R], prediction: &str, stem: bool) -> RougeScore {
    assert!(!targets.is_empty(), "ROUGE-L needs at least one reference per hypothesis");
    let pred = tokenize(prediction, stem);
    let mut best: Option<RougeScore> = None;
    for t in targets {
        let s = rouge_l_tokens(&tokenize(t.as_ref(), stem), &pred);
        if best.is_none_or(|b| s.fmeasure > b.fmeasure) {
            best = Some(s);
        }
    }
    best.unwrap_or_default()
}

/// Per hypothesis, [`rouge_l_multi`]'s F-measure.
pub fn rouge_l_per_hyp<H: AsRef<str>, R: AsRef<str>>(hyps: &[H], refs: &[Vec<R>], stem: bool) -> Vec<f64> {
    assert_eq!(hyps.len(), refs.len(), "one list of references per hypothesis");
    hyps.iter().zip(refs).map(|(h, r)| rouge_l_multi(r, h.as_ref(), stem).fmeasure).collect()
}

/// Mean over hypotheses (summed in order, then divided) of the best F-measure over each one's references;
/// 0 for no hypotheses.
pub fn corpus_rouge_l<H: AsRef<str>, R: AsRef<str>>(hyps: &[H], refs: &[Vec<R>], stem: bool) -> f64 {
    let per = rouge_l_per_hyp(hyps, refs, stem);
    if per.is_empty() { 0.0 } else { per.iter().fold(0.0, |a, &f| a + f) / per.len() as f64 }
}

// ---------------------------------------------------------------------------------------------------------------
// NLTK's Porter stemmer, mode NLTK_EXTENSIONS (nltk/stem/porter.py), on words as char vectors.

type Word = Vec<char>;

fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
}

/// Consonant flags of every position: a 'y' is a consonant iff it starts the word or follows a vowel.
fn consonant_flags(w: &[char]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let f = if is_vowel(c) {
            false
        } else if c == 'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(f);
    }
    flags
}

fn is_consonant(w: &[char], i: usize) -> bool {
    consonant_flags(&w[..=i])[i]
}

/// m in [C](VC){m}[V].
fn measure(stem: &[char]) -> usize {
    consonant_flags(stem).windows(2).filter(|p| !p[0] && p[1]).count()
}

fn contains_vowel(stem: &[char]) -> bool {
    consonant_flags(stem).iter().any(|&c| !c)
}

/// *d: ends with a double consonant.
fn ends_double_consonant(w: &[char]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

/// *o: ends consonant-vowel-consonant, the last not w, x or y; or (NLTK) is a two-letter vowel-consonant word.
fn ends_cvc(w: &[char]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], 'w' | 'x' | 'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

fn ends_with(w: &[char], suffix: &str) -> bool {
    let s: Vec<char> = suffix.chars().collect();
    w.ends_with(&s)
}

fn strip(w: &[char], suffix: &str) -> Word {
    w[..w.len() - suffix.chars().count()].to_vec()
}

fn cat(stem: &[char], tail: &str) -> Word {
    stem.iter().copied().chain(tail.chars()).collect()
}

type Cond<'a> = &'a dyn Fn(&[char]) -> bool;

/// `_apply_rule_list`: the first rule whose suffix the word ends with decides — replaced if its condition holds on
/// the stem, otherwise the word is returned unchanged.
fn apply_rules(w: &[char], rules: &[(&str, &str, Option<Cond>)]) -> Word {
    for &(suffix, replacement, cond) in rules {
        if ends_with(w, suffix) {
            let stem = strip(w, suffix);
            return if cond.is_none_or(|c| c(&stem)) { cat(&stem, replacement) } else { w.to_vec() };
        }
    }
    w.to_vec()
}

fn positive_measure(stem: &[char]) -> bool {
    measure(stem) > 0
}

fn measure_gt_1(stem: &[char]) -> bool {
    measure(stem) > 1
}

fn step1a(w: &[char]) -> Word {
    if ends_with(w, "ies") && w.len() == 4 {
        return cat(&strip(w, "ies"), "ie");
    }
    apply_rules(w, &[("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)])
}

fn step1b(w: &[char]) -> Word {
    if ends_with(w, "ied") {
        return cat(&strip(w, "ied"), if w.len() == 4 { "ie" } else { "i" });
    }
    if ends_with(w, "eed") {
        let stem = strip(w, "eed");
        return if measure(&stem) > 0 { cat(&stem, "ee") } else { w.to_vec() };
    }
    let mut stem = None;
    for suffix in ["ed", "ing"] {
        if ends_with(w, suffix) {
            let s = strip(w, suffix);
            if contains_vowel(&s) {
                stem = Some(s);
                break;
            }
        }
    }
    let Some(s) = stem else { return w.to_vec() };
    for (suffix, replacement) in [("at", "ate"), ("bl", "ble"), ("iz", "ize")] {
        if ends_with(&s, suffix) {
            return cat(&strip(&s, suffix), replacement);
        }
    }
    if ends_double_consonant(&s) {
        let last = s[s.len() - 1];
        return if matches!(last, 'l' | 's' | 'z') { s } else { s[..s.len() - 1].to_vec() };
    }
    if measure(&s) == 1 && ends_cvc(&s) { cat(&s, "e") } else { s }
}

fn step1c(w: &[char]) -> Word {
    let cond = |stem: &[char]| stem.len() > 1 && is_consonant(stem, stem.len() - 1);
    apply_rules(w, &[("y", "i", Some(&cond))])
}

fn step2(w: &[char]) -> Word {
    if ends_with(w, "alli") && positive_measure(&strip(w, "alli")) {
        return step2(&cat(&strip(w, "alli"), "al"));
    }
    let pm: Cond = &positive_measure;
    let logi = |_: &[char]| positive_measure(&w[..w.len() - 3]);
    apply_rules(
        w,
        &[
            ("ational", "ate", Some(pm)),
            ("tional", "tion", Some(pm)),
            ("enci", "ence", Some(pm)),
            ("anci", "ance", Some(pm)),
            ("izer", "ize", Some(pm)),
            ("bli", "ble", Some(pm)),
            ("alli", "al", Some(pm)),
            ("entli", "ent", Some(pm)),
            ("eli", "e", Some(pm)),
            ("ousli", "ous", Some(pm)),
            ("ization", "ize", Some(pm)),
            ("ation", "ate", Some(pm)),
            ("ator", "ate", Some(pm)),
            ("alism", "al", Some(pm)),
            ("iveness", "ive", Some(pm)),
            ("fulness", "ful", Some(pm)),
            ("ousness", "ous", Some(pm)),
            ("aliti", "al", Some(pm)),
            ("iviti", "ive", Some(pm)),
            ("biliti", "ble", Some(pm)),
            ("fulli", "ful", Some(pm)),
            ("logi", "log", Some(&logi)),
        ],
    )
}

fn step3(w: &[char]) -> Word {
    let pm: Cond = &positive_measure;
    apply_rules(
        w,
        &[
            ("icate", "ic", Some(pm)),
            ("ative", "", Some(pm)),
            ("alize", "al", Some(pm)),
            ("iciti", "ic", Some(pm)),
            ("ical", "ic", Some(pm)),
            ("ful", "", Some(pm)),
            ("ness", "", Some(pm)),
        ],
    )
}

fn step4(w: &[char]) -> Word {
    let m: Cond = &measure_gt_1;
    let ion = |stem: &[char]| measure(stem) > 1 && matches!(stem.last(), Some('s' | 't'));
    apply_rules(
        w,
        &[
            ("al", "", Some(m)),
            ("ance", "", Some(m)),
            ("ence", "", Some(m)),
            ("er", "", Some(m)),
            ("ic", "", Some(m)),
            ("able", "", Some(m)),
            ("ible", "", Some(m)),
            ("ant", "", Some(m)),
            ("ement", "", Some(m)),
            ("ment", "", Some(m)),
            ("ent", "", Some(m)),
            ("ion", "", Some(&ion)),
            ("ou", "", Some(m)),
            ("ism", "", Some(m)),
            ("ate", "", Some(m)),
            ("iti", "", Some(m)),
            ("ous", "", Some(m)),
            ("ive", "", Some(m)),
            ("ize", "", Some(m)),
        ],
    )
}

fn step5a(w: &[char]) -> Word {
    if ends_with(w, "e") {
        let stem = strip(w, "e");
        let m = measure(&stem);
        if m > 1 || (m == 1 && !ends_cvc(&stem)) {
            return stem;
        }
    }
    w.to_vec()
}

fn step5b(w: &[char]) -> Word {
    let cond = |_: &[char]| measure(&w[..w.len() - 1]) > 1;
    apply_rules(w, &[("ll", "l", Some(&cond))])
}

/// NLTK's irregular forms (NLTK_EXTENSIONS): word → stem, bypassing the rules.
fn irregular(word: &str) -> Option<&'static str> {
    static POOL: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let forms: [(&str, &[&str]); 12] = [
            ("sky", &["sky", "skies"]),
            ("die", &["dying"]),
            ("lie", &["lying"]),
            ("tie", &["tying"]),
            ("news", &["news"]),
            ("inning", &["innings", "inning"]),
            ("outing", &["outings", "outing"]),
            ("canning", &["cannings", "canning"]),
            ("howe", &["howe"]),
            ("proceed", &["proceed"]),
            ("exceed", &["exceed"]),
            ("succeed", &["succeed"]),
        ];
        forms.iter().flat_map(|&(stem, words)| words.iter().map(move |&w| (w, stem))).collect()
    });
    pool.get(word).copied()
}

/// `nltk.stem.porter.PorterStemmer().stem(word)` (mode NLTK_EXTENSIONS, lowercasing first).
pub fn porter_stem(word: &str) -> String {
    let lower = word.to_lowercase();
    if let Some(s) = irregular(&lower) {
        return s.to_string();
    }
    if word.chars().count() <= 2 {
        return lower;
    }
    let mut w: Word = lower.chars().collect();
    for step in [step1a, step1b, step1c, step2, step3, step4, step5a, step5b] {
        w = step(&w);
    }
    w.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_keeps_ascii_alphanumeric_runs() {
        assert_eq!(tokenize("The Café's 20-25£, ok!", false), ["the", "caf", "s", "20", "25", "ok"]);
        assert_eq!(tokenize("İstanbul \u{212a}", false), ["i", "stanbul", "k"]);
        assert_eq!(tokenize("restaurants serving", true), ["restaur", "serv"]);
        assert!(tokenize(" ... ", true).is_empty());
    }

    #[test]
    fn porter_examples_from_the_paper_and_nltk() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("enjoy", "enjoy"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("adoption", "adopt"),
            ("controlling", "control"),
            ("dying", "die"),
            ("skies", "sky"),
            ("news", "news"),
            ("is", "is"),
        ] {
            assert_eq!(porter_stem(w), s, "{w}");
        }
    }

    #[test]
    fn lcs_and_f_measure() {
        let t = |s: &str| tokenize(s, false);
        assert_eq!(lcs_len(&t("a b c d e"), &t("a x c e")), 3);
        let r = rouge_l("a b c d e", "a x c e", false);
        assert_eq!((r.precision, r.recall), (0.75, 0.6));
        assert!((r.fmeasure - 2.0 * 0.75 * 0.6 / 1.35).abs() < 1e-15);
        assert_eq!(rouge_l("", "a", false), RougeScore::default());
        assert_eq!(rouge_l("a", "...", false), RougeScore::default());
        let r = rouge_l("The cat sat.", "the CAT sat", true);
        assert_eq!(r.fmeasure, 1.0);
    }

    #[test]
    fn multi_reference_takes_the_best_f() {
        let best = rouge_l_multi(&["x y z", "a b c", "a b"], "a b c", false);
        assert_eq!(best.fmeasure, 1.0);
        let s = corpus_rouge_l(&["a b c", "q"], &[vec!["x", "a b c"], vec!["r"]], false);
        assert_eq!(s, 0.5);
    }
}
