//! The tokenizer rebuilt from GGUF tokenizer metadata gives the same ids as transformers.
//!
//! Fixtures in `tests/fixtures/gguf_tokenizer/` come from `tests/fixtures/make_tokenizer_fixtures.py`:
//! small byte-level BPE vocabularies written into tiny GGUF files and loaded with
//! `AutoTokenizer.from_pretrained(dir, gguf_file=...)`, with the ids transformers produced.

use std::path::{Path, PathBuf};

use condlm::formats::gguf::tokenizer::{GgufVocab, tokenizer_from_gguf_vocab};
use serde::Deserialize;
use tokenizers::Tokenizer;

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    ids_with_special: Vec<u32>,
}

#[derive(Deserialize)]
struct Fixture {
    #[serde(flatten)]
    vocab: GgufVocab,
    cases: Vec<Case>,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_tokenizer")
}

fn load_fixture(path: &Path) -> Fixture {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn encode(tok: &Tokenizer, text: &str, special: bool) -> Vec<u32> {
    tok.encode(text, special).unwrap_or_else(|e| panic!("encode {text:?}: {e}")).get_ids().to_vec()
}

/// Checks every case; returns a description of each mismatch.
fn check_cases(name: &str, tok: &Tokenizer, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let ids = encode(tok, &case.text, false);
        if ids != case.ids {
            failures.push(format!("{name}: {:?}\n  ours:         {ids:?}\n  transformers: {:?}", case.text, case.ids));
        }
        let ids_sp = encode(tok, &case.text, true);
        if ids_sp != case.ids_with_special {
            failures.push(format!(
                "{name}: {:?} (add_special_tokens)\n  ours:         {ids_sp:?}\n  transformers: {:?}",
                case.text, case.ids_with_special
            ));
        }
        let decoded = tok.decode(&ids, false).expect("decode");
        if decoded != case.text {
            failures.push(format!("{name}: decode(encode({:?})) = {decoded:?}", case.text));
        }
    }
    failures
}

#[test]
fn matches_transformers_on_small_fixtures() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .expect("fixture dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let names: Vec<String> = paths.iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["smollm", "llama_bpe", "qwen2", "gpt2_eos"] {
        assert!(names.iter().any(|n| n == expected), "missing fixture {expected}");
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for (path, name) in paths.iter().zip(&names) {
        let fixture = load_fixture(path);
        assert!(!fixture.cases.is_empty(), "{name}: no cases");
        let tok = tokenizer_from_gguf_vocab(&fixture.vocab).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(tok.get_vocab_size(true), fixture.vocab.tokens.len(), "{name}: vocab size");
        failures.extend(check_cases(name, &tok, &fixture.cases));
        checked += fixture.cases.len();
    }
    assert!(failures.is_empty(), "{} mismatches out of {checked} cases:\n{}", failures.len(), failures.join("\n"));
}

/// The pre-tokenizers really differ on digits, and the fixtures exercise that.
#[test]
fn digit_grouping_differs_by_pre_type() {
    let fx = |n: &str| load_fixture(&fixture_dir().join(format!("{n}.json")));
    let llama = fx("llama_bpe");
    let qwen = fx("qwen2");
    let digits = |f: &Fixture| -> Vec<String> {
        let tok = tokenizer_from_gguf_vocab(&f.vocab).unwrap();
        let enc = tok.encode("12345 678", false).unwrap();
        enc.get_tokens().to_vec()
    };
    // Llama 3 groups up to three digits, Qwen2 splits every digit.
    assert_eq!(digits(&qwen), ["1", "2", "3", "4", "5", "Ġ", "6", "7", "8"]);
    assert!(digits(&llama).iter().all(|t| t.trim_start_matches('Ġ').len() <= 3), "{:?}", digits(&llama));
}

#[test]
fn special_tokens_and_bos() {
    let f = load_fixture(&fixture_dir().join("llama_bpe.json"));
    let tok = tokenizer_from_gguf_vocab(&f.vocab).unwrap();
    let id = |t: &str| f.vocab.tokens.iter().position(|x| x == t).unwrap() as u32;
    let ids = encode(&tok, "<|im_start|>user", true);
    assert_eq!(ids[0], f.vocab.bos_id.unwrap());
    assert_eq!(ids[1], id("<|im_start|>"));
    assert_eq!(tok.decode(&ids, true).unwrap(), "user", "special tokens are skipped on request");
}

fn tiny_vocab() -> GgufVocab {
    // A byte-level vocabulary: the 256 byte spellings, "Ġh", "hi", "Ġhi", and a few specials.
    let mut tokens: Vec<String> = Vec::new();
    let mut push = |t: &str| tokens.push(t.to_string());
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        if printable {
            push(&char::from(b).to_string());
        }
    }
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        if !printable {
            push(&char::from_u32(256 + n).unwrap().to_string());
            n += 1;
        }
    }
    for t in ["Ġh", "hi", "Ġhi", "<|endoftext|>", "<｜User｜>", "<think>"] {
        push(t);
    }
    let mut token_types = vec![1; tokens.len()];
    let len = tokens.len();
    token_types[len - 3] = 3;
    token_types[len - 2] = 3;
    token_types[len - 1] = 4;
    GgufVocab {
        model: "gpt2".into(),
        pre: Some("qwen2".into()),
        tokens,
        token_types,
        merges: vec!["Ġ h".into(), "Ġh i".into(), "h i".into()],
        bos_id: Some(len as u32 - 3),
        eos_id: Some(len as u32 - 3),
        add_bos: Some(true),
        ..Default::default()
    }
}

#[test]
fn tiny_vocab_specials_user_defined_and_out_of_alphabet_control() {
    let v = tiny_vocab();
    let tok = tokenizer_from_gguf_vocab(&v).unwrap();
    let id = |t: &str| v.tokens.iter().position(|x| x == t).unwrap() as u32;
    let ids = encode(&tok, "<｜User｜>hi hi<think>", true);
    assert_eq!(ids, [id("<|endoftext|>"), id("<｜User｜>"), id("hi"), id("Ġhi"), id("<think>")]);
    assert_eq!(tok.get_vocab_size(true), v.tokens.len());
    assert_eq!(tok.decode(&ids[1..], false).unwrap(), "<｜User｜>hi hi<think>");
    // <think> is user-defined: kept when skipping special tokens.
    assert_eq!(tok.decode(&ids, true).unwrap(), "hi hi<think>");
    // Bytes outside any merge still encode (byte-level BPE has no unknown token).
    let ids = encode(&tok, "é🙂\n", false);
    assert_eq!(ids.len(), 2 + 4 + 1);
    assert_eq!(tok.decode(&ids, false).unwrap(), "é🙂\n");
}

fn err(v: &GgufVocab) -> String {
    format!("{:#}", tokenizer_from_gguf_vocab(v).unwrap_err())
}

#[test]
fn errors_name_the_metadata_key() {
    let good = tiny_vocab();

    let mut v = good.clone();
    v.token_types.pop();
    let e = err(&v);
    assert!(e.contains("tokenizer.ggml.token_type") && e.contains("tokenizer.ggml.tokens"), "{e}");

    let mut v = good.clone();
    v.merges.push("h zz".into());
    let e = err(&v);
    assert!(e.contains("tokenizer.ggml.merges[3]") && e.contains("\"zz\""), "{e}");

    let mut v = good.clone();
    v.merges.push("i h".into());
    let e = err(&v);
    assert!(e.contains("tokenizer.ggml.merges[3]") && e.contains("\"ih\""), "{e}");

    let mut v = good.clone();
    v.merges.push("hi".into());
    let e = err(&v);
    assert!(e.contains("tokenizer.ggml.merges[3]"), "{e}");

    let mut v = good.clone();
    v.bos_id = Some(100_000);
    let e = err(&v);
    assert!(e.contains("tokenizer.ggml.bos_token_id"), "{e}");

    let mut v = good.clone();
    v.tokens.clear();
    v.token_types.clear();
    let e = err(&v);
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");

    let mut v = good.clone();
    v.model = "llama".into();
    let e = err(&v);
    assert!(e.contains("tokenizer.ggml.model") && e.contains("not supported yet"), "{e}");

    let mut v = good;
    v.model = "bert".into();
    let e = err(&v);
    assert!(e.contains("tokenizer.ggml.model"), "{e}");
}

/// Against the real SmolLM2-135M-Instruct GGUF. The JSON (tokenizer metadata + transformers ids for
/// 100 E2E strings and the tricky strings) is written by
/// `python tests/fixtures/make_tokenizer_fixtures.py --real PATH/SmolLM2-135M-Instruct.Q4_1.gguf`
/// to /tmp/smollm2_tok.json; run with
/// `CONDLM_SMOLLM2_TOKENIZER_JSON=/tmp/smollm2_tok.json cargo test --test gguf_tokenizer -- --ignored`.
#[test]
#[ignore = "needs CONDLM_SMOLLM2_TOKENIZER_JSON (see make_tokenizer_fixtures.py --real)"]
fn matches_transformers_on_real_smollm2() {
    let path = std::env::var("CONDLM_SMOLLM2_TOKENIZER_JSON")
        .expect("set CONDLM_SMOLLM2_TOKENIZER_JSON to the JSON written by --real");
    let fixture = load_fixture(Path::new(&path));
    assert!(fixture.cases.len() >= 100, "expected at least 100 cases");
    let tok = tokenizer_from_gguf_vocab(&fixture.vocab).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(tok.get_vocab_size(true), fixture.vocab.tokens.len());
    let failures = check_cases("smollm2", &tok, &fixture.cases);
    assert!(
        failures.is_empty(),
        "{} mismatches out of {} cases:\n{}",
        failures.len(),
        fixture.cases.len(),
        failures.join("\n")
    );
    eprintln!("smollm2: {} cases identical to transformers", fixture.cases.len());
}
