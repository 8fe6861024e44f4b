//! Corpus metrics for generated completions against reference completions: sacreBLEU's default corpus BLEU
//! ([`bleu`]) and Google `rouge-score`'s ROUGE-L F-measure ([`rouge`]), both written from the Python sources and
//! checked against them (`tests/metrics.rs`, fixtures from `tests/fixtures/make_metrics_fixtures.py`).
//!
//! What `condlm metrics` computes, with `hyps[i]` the hypothesis for prompt i and `refs[i]` every reference
//! completion whose row has exactly the same prompt string:
//!
//! - **BLEU** = `sacrebleu.corpus_bleu(hyps, ref_streams).score` with every default (sacreBLEU 2.x signature
//!   `nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp`): 13a tokenization, n-grams up to 4 clipped by their largest
//!   count in any one reference, brevity penalty against the sum over sentences of the reference length closest to
//!   the hypothesis length (ties: the shorter), "exp" smoothing, 0–100 scale. Also reported: the four n-gram
//!   precisions (%), BP, `sys_len`, `ref_len`.
//! - **ROUGE-L** = mean over hypotheses of `RougeScorer(["rougeL"], use_stemmer=True).score_multi(refs[i],
//!   hyps[i])["rougeL"].fmeasure`, i.e. per hypothesis the best LCS F1 over its references (rouge-score's
//!   tokenizer: lowercase, runs of `[a-z0-9]`, NLTK's Porter stemmer on tokens longer than 3 characters), then the
//!   plain average; 0–1 scale. Stemming is what GEM-metrics uses for E2E; `use_stemmer=False` (rouge-score's and
//!   Hugging Face `evaluate`'s default) is available as an option.
pub mod bleu;
pub mod rouge;

use crate::data::prompts::{prompt_of, reply_of};
use crate::data::rows::{read_objects, string_field};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// Python's `str.isspace()`: what `str.split()` and `str.rstrip()` (no arguments) treat as whitespace. That is
/// Unicode White_Space (Rust's `char::is_whitespace`) plus the ASCII separators U+001C..U+001F.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()`: the non-empty runs between whitespace.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

/// Python's `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// One JSONL row reduced to the two fields we read.
#[derive(Clone, Debug, PartialEq)]
pub struct TextRow {
    pub prompt: String,
    pub text: String,
    /// 1-based line in the file, for messages.
    pub line: usize,
}

/// Reads every non-blank line of a JSONL file; each must be an object with string fields `prompt_field` and
/// `text_field` (other fields are ignored), or a chat or Alpaca row as `generate --data` reads them: its prompt
/// is then its turns before the reply (Alpaca's prompt), and with `replies` its text, where `text_field` is
/// absent, the reply it holds (a reference file of training rows). Errors name the file and line.
pub fn read_rows(path: &Path, prompt_field: &str, text_field: &str, replies: bool) -> Result<Vec<TextRow>> {
    read_objects(path, &format!("{{\"{prompt_field}\": ..., \"{text_field}\": ...}}"))?
        .into_iter()
        .map(|(line, obj)| {
            let formatted = match obj.get(prompt_field) {
                Some(p) => p.is_array() || obj.contains_key("messages"),
                None => obj.contains_key("messages") || obj.contains_key("instruction"),
            };
            let source = format!("{}:{line}", path.display());
            let prompt = if formatted {
                prompt_of(&obj, prompt_field, &source)?.key()
            } else {
                string_field(&obj, prompt_field, path, line)?
            };
            // A reference row's own text where it has one, else (a chat, conversational or Alpaca row) its reply.
            let text = if formatted && replies && !obj.get(text_field).is_some_and(|t| t.is_string()) {
                reply_of(&obj, prompt_field, text_field).with_context(|| {
                    format!(
                        "{source}: no reference to score against: a chat must end in an assistant turn, a \
                         conversational completion start with an assistant's text, an Alpaca row have an \"output\""
                    )
                })?
            } else {
                string_field(&obj, text_field, path, line)?
            };
            Ok(TextRow { prompt, text, line })
        })
        .collect()
}

/// Hypotheses matched with their references.
#[derive(Clone, Debug, Default)]
pub struct Paired {
    /// One hypothesis per distinct prompt, in hypothesis-file order.
    pub hyps: Vec<String>,
    /// `refs[i]`: every reference text whose prompt equals hypothesis i's, in reference-file order.
    pub refs: Vec<Vec<String>>,
    /// Hypothesis rows skipped because an earlier row had the same prompt and the same text.
    pub duplicates: usize,
    /// Distinct reference prompts that have no hypothesis (not scored).
    pub unscored_prompts: usize,
}

fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX { s.to_string() } else { format!("{}…", s.chars().take(MAX).collect::<String>()) }
}

/// Groups the references by prompt (exact string equality) and gives each hypothesis its group.
///
/// A hypothesis whose prompt has no reference is an error naming its line. Several hypothesis rows with the same
/// prompt: identical texts count once (e.g. greedy generation run on a file with one row per reference); different
/// texts are an error naming both lines, since which one to score would be a guess.
pub fn pair(hyps: &[TextRow], refs: &[TextRow], hyp_path: &Path, ref_path: &Path) -> Result<Paired> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for r in refs {
        let k = *index.entry(r.prompt.as_str()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[k].push(r.text.clone());
    }
    let mut seen: HashMap<&str, &TextRow> = HashMap::new();
    let mut out = Paired::default();
    for h in hyps {
        let Some(&k) = index.get(h.prompt.as_str()) else {
            bail!(
                "{}:{}: no reference row in {} has this prompt: \"{}\"",
                hyp_path.display(),
                h.line,
                ref_path.display(),
                shorten(&h.prompt)
            );
        };
        if let Some(first) = seen.get(h.prompt.as_str()) {
            if first.text == h.text {
                out.duplicates += 1;
                continue;
            }
            bail!(
                "{}:{}: prompt already has a different hypothesis at line {}; give one hypothesis per prompt (a \
                 prompt repeated in generate's --data gets one output per row: sampled outputs differ, greedy or \
                 beam search ones do not)",
                hyp_path.display(),
                h.line,
                first.line
            );
        }
        seen.insert(&h.prompt, h);
        out.hyps.push(h.text.clone());
        out.refs.push(groups[k].clone());
    }
    out.unscored_prompts = groups.len() - seen.len();
    Ok(out)
}

/// The JSON line `condlm metrics` prints (fields in this order).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// sacreBLEU corpus BLEU, 0–100.
    pub bleu: f64,
    /// ROUGE-L F-measure, 0–1: mean over hypotheses of the best F over that hypothesis's references.
    pub rouge_l: f64,
    /// Hypotheses scored.
    pub n: usize,
    /// References used (summed over hypotheses).
    pub refs: usize,
    /// BLEU's 1..4-gram precisions, in % (after smoothing, as sacreBLEU reports them).
    pub precisions: [f64; 4],
    /// BLEU's brevity penalty.
    pub bp: f64,
    /// Hypothesis tokens (13a).
    pub sys_len: u64,
    /// Effective reference tokens: per hypothesis, the reference length closest to its length (ties: shorter).
    pub ref_len: u64,
    /// Matched (clipped) n-grams per order.
    pub counts: [u64; 4],
    /// Hypothesis n-grams per order.
    pub totals: [u64; 4],
    /// sacreBLEU's signature for the BLEU computed (without its version field).
    pub bleu_signature: String,
    /// Whether ROUGE-L stemmed tokens with the Porter stemmer (`use_stemmer`).
    pub rouge_stemmer: bool,
}

impl Report {
    /// sacreBLEU's verbose line, then ROUGE-L and counts.
    pub fn summary(&self) -> String {
        let precs = self.precisions.iter().map(|p| format!("{p:.1}")).collect::<Vec<_>>().join("/");
        let ratio = if self.ref_len > 0 { self.sys_len as f64 / self.ref_len as f64 } else { 0.0 };
        format!(
            "BLEU = {:.2} {precs} (BP = {:.3} ratio = {ratio:.3} hyp_len = {} ref_len = {}) | ROUGE-L F = {:.4} \
             ({}) | {} hypotheses, {} references ({:.1} per hypothesis)",
            self.bleu,
            self.bp,
            self.sys_len,
            self.ref_len,
            self.rouge_l,
            if self.rouge_stemmer { "stemmed" } else { "no stemmer" },
            self.n,
            self.refs,
            self.refs as f64 / self.n.max(1) as f64
        )
    }
}

/// BLEU and ROUGE-L of `hyps[i]` against `refs[i]` (each non-empty). `stem`: ROUGE-L's `use_stemmer`.
pub fn evaluate<H: AsRef<str>, R: AsRef<str>>(hyps: &[H], refs: &[Vec<R>], stem: bool) -> Report {
    let b = bleu::corpus_bleu(hyps, refs);
    let rouge_l = rouge::corpus_rouge_l(hyps, refs, stem);
    let first = refs.first().map_or(0, Vec::len);
    let nrefs = if refs.iter().all(|r| r.len() == first) { first.to_string() } else { "var".to_string() };
    Report {
        bleu: b.score,
        rouge_l,
        n: hyps.len(),
        refs: refs.iter().map(Vec::len).sum(),
        precisions: b.precisions,
        bp: b.bp,
        sys_len: b.sys_len,
        ref_len: b.ref_len,
        counts: b.counts,
        totals: b.totals,
        bleu_signature: format!("nrefs:{nrefs}|case:mixed|eff:no|tok:13a|smooth:exp"),
        rouge_stemmer: stem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(prompt: &str, text: &str, line: usize) -> TextRow {
        TextRow { prompt: prompt.into(), text: text.into(), line }
    }

    #[test]
    fn python_whitespace_helpers() {
        assert_eq!(py_split(" a\u{1c}b\u{a0}c\t\n").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(py_split("").count(), 0);
        assert_eq!(py_rstrip("x \u{1f}\u{3000}\n"), "x");
        assert!(!is_py_space('\u{180e}') && !is_py_space('\u{200b}') && is_py_space('\u{85}'));
    }

    #[test]
    fn pairs_by_prompt_and_handles_duplicates() {
        let refs = [row("p1", "a", 1), row("p2", "b", 2), row("p1", "c", 3), row("p3", "d", 4)];
        let hyps = [row("p2", "x", 1), row("p1", "y", 2), row("p2", "x", 3)];
        let p = pair(&hyps, &refs, Path::new("h"), Path::new("r")).unwrap();
        assert_eq!(p.hyps, ["x", "y"]);
        assert_eq!(p.refs, [vec!["b"], vec!["a", "c"]]);
        assert_eq!((p.duplicates, p.unscored_prompts), (1, 1));

        let hyps = [row("p2", "x", 1), row("p2", "z", 5)];
        let e = pair(&hyps, &refs, Path::new("h"), Path::new("r")).unwrap_err().to_string();
        assert!(e.contains("h:5:") && e.contains("line 1"), "{e}");
        let hyps = [row("p1", "x", 1), row("nope", "z", 7)];
        let e = pair(&hyps, &refs, Path::new("h"), Path::new("r")).unwrap_err().to_string();
        assert!(e.contains("h:7:") && e.contains("\"nope\""), "{e}");
    }

    #[test]
    fn reads_custom_fields_and_names_bad_lines() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), "{\"mr\":\"a\",\"gen\":\"b\",\"x\":1}\n\n{\"mr\":\"c\",\"gen\":\"\"}\n").unwrap();
        let rows = read_rows(tmp.path(), "mr", "gen", false).unwrap();
        assert_eq!(rows, [row("a", "b", 1), row("c", "", 3)]);
        let e = read_rows(tmp.path(), "prompt", "gen", false).unwrap_err().to_string();
        assert!(e.contains(":1: missing field \"prompt\""), "{e}");
        std::fs::write(tmp.path(), "{\"mr\":\"a\",\"gen\":null}\n").unwrap();
        let e = read_rows(tmp.path(), "mr", "gen", false).unwrap_err().to_string();
        assert!(e.contains(":1: field \"gen\" must be a string"), "{e}");
    }

    /// A reference file of training rows (chats, Alpaca, TRL's conversational rows) pairs with generate's rows of
    /// the same prompts, whether generate read the chats with their replies or without; a conversational
    /// completion's reference is its first turn, the one generated from its prompt.
    #[test]
    fn chat_and_alpaca_references_pair_with_their_generations() {
        let (refs, hyps) = (tempfile::NamedTempFile::new().unwrap(), tempfile::NamedTempFile::new().unwrap());
        let (user, other) = (r#"{"role":"user","content":"u"}"#, r#"{"content":"v","role":"user"}"#);
        let said = |text: &str| format!(r#"{{"role":"assistant","content":"{text}"}}"#);
        let rows = [
            format!(r#"{{"messages":[{user},{}]}}"#, said("r1")),
            format!(r#"{{"messages":[{user},{}]}}"#, said("r2")),
            r#"{"instruction":"i","output":"r3"}"#.to_string(),
            format!(r#"{{"prompt":[{other}],"completion":[{},{user},{}]}}"#, said("r4"), said("later")),
        ];
        std::fs::write(refs.path(), rows.join("\n")).unwrap();
        let generated = [
            format!(r#"{{"messages":[{user}],"generation":"g1"}}"#),
            r#"{"instruction":"i","generation":"g3"}"#.to_string(),
            // generate writes its rows' keys in its own order
            r#"{"generation":"g4","prompt":[{"role":"user","content":"v"}]}"#.to_string(),
        ];
        std::fs::write(hyps.path(), generated.join("\n")).unwrap();
        let (r, h) = (
            read_rows(refs.path(), "prompt", "completion", true).unwrap(),
            read_rows(hyps.path(), "prompt", "generation", false).unwrap(),
        );
        let p = pair(&h, &r, hyps.path(), refs.path()).unwrap();
        assert_eq!(p.hyps, ["g1", "g3", "g4"]);
        assert_eq!(p.refs, [vec!["r1", "r2"], vec!["r3"], vec!["r4"]]);
        // Hypotheses are never a row's own reply.
        let e = read_rows(refs.path(), "prompt", "generation", false).unwrap_err().to_string();
        assert!(e.contains(":1: missing field \"generation\""), "{e}");
        // A chat that differs only in a tool call is another prompt.
        let calls = |f: &str| {
            format!(
                r#"{{"messages":[{user},{{"role":"assistant","tool_calls":[{{"function":{{"name":"{f}"}}}}]}},{{"role":"tool","content":"1"}}],"generation":"{f}"}}"#
            )
        };
        std::fs::write(hyps.path(), [calls("a"), calls("b")].join("\n")).unwrap();
        let h = read_rows(hyps.path(), "prompt", "generation", false).unwrap();
        assert_ne!(h[0].prompt, h[1].prompt);
    }
}
