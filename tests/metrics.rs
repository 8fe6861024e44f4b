//! `condlm metrics` and `condlm::metrics` against sacreBLEU 2.6.0 and rouge-score 0.1.2 (+ NLTK 3.10.4's Porter
//! stemmer): reference values in `tests/fixtures/metrics/`, written by `tests/fixtures/make_metrics_fixtures.py`.
use condlm::metrics::bleu::{corpus_bleu, tokenize_13a};
use condlm::metrics::rouge::{corpus_rouge_l, porter_stem, rouge_l_per_hyp, tokenize};
use condlm::metrics::{evaluate, is_py_space, py_rstrip};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics").join(rel)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

/// Equality to 1e-9 (absolute; BLEU is on a 0–100 scale, so that is far below 1e-6 relative).
const TOL: f64 = 1e-9;

fn close(what: &str, got: f64, want: f64) -> f64 {
    let d = (got - want).abs();
    assert!(d <= TOL, "{what}: condlm {got} vs Python {want} (|Δ| = {d:e})");
    d
}

#[test]
fn fixture_cases_match_sacrebleu_and_rouge_score() {
    let e = expected();
    let mut worst: f64 = 0.0;
    for case in e["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let hyps = strings(&case["hyps"]);
        let refs: Vec<Vec<String>> = case["refs"].as_array().unwrap().iter().map(strings).collect();
        let want = &case["bleu"];
        let b = corpus_bleu(&hyps, &refs);
        worst = worst.max(close(&format!("{name} BLEU"), b.score, want["score"].as_f64().unwrap()));
        for (n, (g, w)) in b.precisions.iter().zip(f64s(&want["precisions"])).enumerate() {
            worst = worst.max(close(&format!("{name} precision {}", n + 1), *g, w));
        }
        worst = worst.max(close(&format!("{name} bp"), b.bp, want["bp"].as_f64().unwrap()));
        assert_eq!(b.sys_len, want["sys_len"].as_u64().unwrap(), "{name} sys_len");
        assert_eq!(b.ref_len, want["ref_len"].as_u64().unwrap(), "{name} ref_len");
        assert_eq!(b.counts.to_vec(), u64s(&want["counts"]), "{name} counts");
        assert_eq!(b.totals.to_vec(), u64s(&want["totals"]), "{name} totals");
        for (stem, key, per_key) in
            [(true, "rouge_l_stem", "per_hyp_stem"), (false, "rouge_l_nostem", "per_hyp_nostem")]
        {
            let per = rouge_l_per_hyp(&hyps, &refs, stem);
            for (i, (g, w)) in per.iter().zip(f64s(&case[per_key])).enumerate() {
                worst = worst.max(close(&format!("{name} {per_key}[{i}] ({:?})", hyps[i]), *g, w));
            }
            let mean = corpus_rouge_l(&hyps, &refs, stem);
            worst = worst.max(close(&format!("{name} {key}"), mean, case[key].as_f64().unwrap()));
            let report = evaluate(&hyps, &refs, stem);
            assert_eq!((report.bleu, report.rouge_l, report.n), (b.score, mean, hyps.len()));
        }
    }
    eprintln!("largest |condlm − Python| over all fixture values: {worst:e}");
}

#[test]
fn tokenizers_match_on_probe_strings() {
    let e = expected();
    for p in e["probes"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        assert_eq!(tokenize_13a(py_rstrip(text)), p["t13a"].as_str().unwrap(), "13a of {text:?}");
        assert_eq!(tokenize(text, false), strings(&p["rouge"]), "rouge tokens of {text:?}");
        assert_eq!(tokenize(text, true), strings(&p["rouge_stem"]), "stemmed rouge tokens of {text:?}");
    }
}

#[test]
fn python_whitespace_is_exactly_str_isspace() {
    let e = expected();
    let want: std::collections::BTreeSet<u32> =
        e["python_whitespace"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as u32).collect();
    let got: std::collections::BTreeSet<u32> =
        (0..=0x10FFFFu32).filter_map(char::from_u32).filter(|&c| is_py_space(c)).map(u32::from).collect();
    assert_eq!(got, want);
}

#[test]
fn lowercasing_to_ascii_alphanumerics_matches_python() {
    // rouge-score keeps only [a-z0-9] of text.lower(): every code point whose lowercase holds such characters
    // must lowercase exactly as in Python (e.g. U+0130 → "i\u{307}", KELVIN SIGN → "k").
    let e = expected();
    let want: Vec<(u32, String)> = e["lower_alnum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_str().unwrap().to_string()))
        .collect();
    let got: Vec<(u32, String)> = (0..=0x10FFFFu32)
        .filter_map(char::from_u32)
        .map(|c| (u32::from(c), c.to_lowercase().collect::<String>()))
        .filter(|(_, low)| low.chars().any(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn porter_stemmer_matches_nltk() {
    let text = std::fs::read_to_string(fixture("porter.tsv")).unwrap();
    let mut n = 0;
    let mut bad = Vec::new();
    for line in text.lines() {
        let (word, stem) = line.split_once('\t').unwrap();
        if porter_stem(word) != stem {
            bad.push(format!("{word}: condlm {} vs nltk {stem}", porter_stem(word)));
        }
        n += 1;
    }
    assert!(n > 10_000, "{n} words");
    assert!(
        bad.is_empty(),
        "{} of {n} words differ:\n{}",
        bad.len(),
        bad.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
}

fn condlm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_condlm")).arg("metrics").args(args).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn cli_prints_python_values_as_one_json_line() {
    let e = expected();
    let case = &e["cases"][0];
    assert_eq!(case["name"], "cli_e2e");
    let (hyp, refs) = (fixture("gen.jsonl"), fixture("rows.jsonl"));
    for (flags, key) in [(&[][..], "rouge_l_stem"), (&["--no-stemmer"][..], "rouge_l_nostem")] {
        let mut args =
            vec!["--hyp", hyp.to_str().unwrap(), "--ref", refs.to_str().unwrap(), "--hyp-field", "completion"];
        args.extend_from_slice(flags);
        let (ok, stdout, stderr) = condlm(&args);
        assert!(ok, "{stderr}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        let got: Value = serde_json::from_str(&stdout).unwrap();
        let want = &case["bleu"];
        close("bleu", got["bleu"].as_f64().unwrap(), want["score"].as_f64().unwrap());
        close("rouge_l", got["rouge_l"].as_f64().unwrap(), case[key].as_f64().unwrap());
        close("bp", got["bp"].as_f64().unwrap(), want["bp"].as_f64().unwrap());
        for (g, w) in f64s(&got["precisions"]).into_iter().zip(f64s(&want["precisions"])) {
            close("precision", g, w);
        }
        for k in ["sys_len", "ref_len", "counts", "totals"] {
            assert_eq!(got[k], want[k], "{k}");
        }
        assert_eq!(got["n"], 60);
        assert_eq!(
            got["refs"],
            case["refs"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().len()).sum::<usize>()
        );
        assert_eq!(got["bleu_signature"], "nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp");
        assert_eq!(got["rouge_stemmer"], flags.is_empty());
        assert!(stderr.contains(&format!("BLEU = {:.2} ", want["score"].as_f64().unwrap())), "{stderr}");
        assert!(stderr.contains("3 prompts of") && stderr.contains("not scored"), "{stderr}");
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn cli_custom_fields_duplicates_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let refs = write(
        d,
        "refs.jsonl",
        "{\"mr\":\"p1\",\"text\":\"The Eagle is a cheap coffee shop.\"}\n\
         {\"mr\":\"p1\",\"text\":\"A cheap coffee shop called The Eagle.\"}\n\
         {\"mr\":\"p2\",\"text\":\"Zizzi is a pub.\"}\n",
    );
    // Custom field names; a repeated identical row counts once; an identical hypothesis scores 100.
    let hyps = write(
        d,
        "hyps.jsonl",
        "{\"mr\":\"p1\",\"gen\":\"The Eagle is a cheap coffee shop.\"}\n\n\
         {\"mr\":\"p1\",\"gen\":\"The Eagle is a cheap coffee shop.\"}\n",
    );
    let base = ["--hyp", &hyps, "--ref", &refs, "--prompt-field", "mr", "--hyp-field", "gen", "--ref-field", "text"];
    let (ok, stdout, stderr) = condlm(&base);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert!((v["bleu"].as_f64().unwrap() - 100.0).abs() < 1e-9, "{v}");
    assert_eq!((v["rouge_l"].as_f64().unwrap(), v["n"].as_u64().unwrap(), v["refs"].as_u64().unwrap()), (1.0, 1, 2));
    assert!(stderr.contains("1 repeated hypothesis rows") && stderr.contains("1 prompts of"), "{stderr}");

    // A prompt without references: error naming the line.
    let bad = write(d, "bad1.jsonl", "{\"mr\":\"p1\",\"gen\":\"x\"}\n{\"mr\":\"p9\",\"gen\":\"y\"}\n");
    let (ok, _, stderr) =
        condlm(&["--hyp", &bad, "--ref", &refs, "--prompt-field", "mr", "--hyp-field", "gen", "--ref-field", "text"]);
    assert!(!ok && stderr.contains("bad1.jsonl:2:") && stderr.contains("\"p9\""), "{stderr}");
    // Two different hypotheses for one prompt: error naming both lines.
    let bad = write(d, "bad2.jsonl", "{\"mr\":\"p1\",\"gen\":\"x\"}\n{\"mr\":\"p1\",\"gen\":\"y\"}\n");
    let (ok, _, stderr) =
        condlm(&["--hyp", &bad, "--ref", &refs, "--prompt-field", "mr", "--hyp-field", "gen", "--ref-field", "text"]);
    assert!(!ok && stderr.contains("bad2.jsonl:2:") && stderr.contains("line 1"), "{stderr}");
    // Default field names absent: the missing field is named with the line.
    let (ok, _, stderr) = condlm(&["--hyp", &hyps, "--ref", &refs]);
    assert!(!ok && stderr.contains("hyps.jsonl:1: missing field \"prompt\""), "{stderr}");
    // Not JSON.
    let bad = write(d, "bad3.jsonl", "{\"mr\":\"p1\",\"gen\":\"x\"}\nnot json\n");
    let (ok, _, stderr) =
        condlm(&["--hyp", &bad, "--ref", &refs, "--prompt-field", "mr", "--hyp-field", "gen", "--ref-field", "text"]);
    assert!(!ok && stderr.contains("bad3.jsonl:2: not valid JSON"), "{stderr}");
    // Empty file.
    let empty = write(d, "empty.jsonl", "\n");
    let (ok, _, stderr) = condlm(&["--hyp", &empty, "--ref", &refs]);
    assert!(!ok && stderr.contains("no rows"), "{stderr}");
}

#[test]
fn edge_cases() {
    // Zero matches with exp smoothing: sacreBLEU exits early with score 0 and zero precisions.
    let b = corpus_bleu(&["alpha beta gamma delta"], &[vec!["one two three four five"]]);
    assert_eq!((b.score, b.precisions, b.counts), (0.0, [0.0; 4], [0; 4]));
    // Hypothesis shorter than every reference: BP against the closest (the shortest) one.
    let b = corpus_bleu(
        &["The Eagle is cheap."],
        &[vec!["The Eagle is a cheap coffee shop.", "A much longer reference sentence than the other one here."]],
    );
    assert_eq!((b.sys_len, b.ref_len), (5, 8));
    assert!((b.bp - (1.0f64 - 8.0 / 5.0).exp()).abs() < 1e-15);
    // Identical hypothesis and reference: 100 and ROUGE-L 1.
    let s = "Zizzi is a family-friendly pub in the city centre.";
    let r = evaluate(&[s], &[vec![s]], true);
    assert!((r.bleu - 100.0).abs() < 1e-9 && r.rouge_l == 1.0 && r.bp == 1.0, "{r:?}");
    // Empty hypothesis: BLEU 0 with BP 0, ROUGE-L 0.
    let r = evaluate(&[""], &[vec!["a b c d"]], true);
    assert_eq!((r.bleu, r.bp, r.rouge_l, r.sys_len, r.ref_len), (0.0, 0.0, 0.0, 0, 4));
}

#[test]
fn the_default_hypothesis_is_what_generate_writes() {
    // generate's rows keep the input's reference "completion" beside the "generation": scoring the former would
    // give BLEU 100 for any model.
    let d = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let refs = write("refs.jsonl", "{\"prompt\": \"p\", \"completion\": \"the cat sat on the mat today\"}\n");
    let hyps = write(
        "gen.jsonl",
        "{\"prompt\": \"p\", \"completion\": \"the cat sat on the mat today\", \"generation\": \"a dog ran\"}\n",
    );
    let (ok, stdout, stderr) = condlm(&["--hyp", &hyps, "--ref", &refs]);
    assert!(ok, "{stderr}");
    let got: Value = serde_json::from_str(&stdout).unwrap();
    assert!(got["bleu"].as_f64().unwrap() < 1.0 && got["rouge_l"].as_f64().unwrap() < 0.5, "{got}");
}
