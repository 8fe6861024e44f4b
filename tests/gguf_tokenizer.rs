//! The tokenizer rebuilt from GGUF tokenizer metadata gives the same ids as transformers.
//!
//! Fixtures in `tests/fixtures/gguf_tokenizer/` come from `tests/fixtures/make_tokenizer_fixtures.py`:
//! small byte-level BPE vocabularies written into tiny GGUF files and loaded with
//! `AutoTokenizer.from_pretrained(dir, gguf_file=...)`, with the ids transformers produced.
//! `spm/` holds the SentencePiece ones: llama.cpp's Llama-SPM and Phi-3 vocabulary test files (GGUF plus
//! `.inp`/`.out` strings → ids), a small Gemma 3 vocabulary cut from the real one, and transformers' ids for
//! each, plus transformers' ids for the real Gemma 3 270M GGUF (checked when that file is present).

use std::path::{Path, PathBuf};

use condlm::data::chat::{ChatTemplate, encode_chat, special_ids};
use condlm::data::records::{Fields, Record, parse_row};
use condlm::formats::gguf::file::GgufFile;
use condlm::formats::gguf::tokenizer::{GgufVocab, tokenizer_from_gguf_vocab};
use condlm::formats::load::gguf_vocab;
use condlm::generate::detok::Streamer;
use condlm::tokenizer::TextTokenizer;
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
    v.merges.clear(); // a SentencePiece file without merges: they come from the scores
    v.scores = vec![0.0; 3];
    let e = err(&v);
    assert!(e.contains("tokenizer.ggml.scores") && e.contains("tokenizer.ggml.tokens"), "{e}");

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

// ---- SentencePiece (tokenizer.ggml.model = "llama") ----

fn spm_dir() -> PathBuf {
    fixture_dir().join("spm")
}

#[derive(Deserialize)]
struct SpmCase {
    text: String,
    ids: Vec<u32>,
    ids_with_special: Vec<u32>,
    /// transformers' `decode(ids)`.
    decoded: String,
    /// transformers' `decode(ids_with_special, skip_special_tokens=True)`.
    decoded_skip_special: String,
}

/// transformers' ids for the strings, and either the vocabulary itself or the GGUF file it is in.
#[derive(Deserialize)]
struct SpmFixture {
    gguf: Option<String>,
    #[serde(flatten)]
    vocab: GgufVocab,
    cases: Vec<SpmCase>,
}

fn load_spm_fixture(path: &Path) -> SpmFixture {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tokenizer metadata of a GGUF file, read the way `condlm` reads it.
fn vocab_of_gguf(path: &Path) -> GgufVocab {
    let file = GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    gguf_vocab(&file).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

/// A fixture's tokenizer: from the committed GGUF it names, or from the vocabulary it carries.
fn spm_tokenizer(fixture: &SpmFixture) -> (GgufVocab, Tokenizer) {
    let vocab = match &fixture.gguf {
        Some(name) => vocab_of_gguf(&spm_dir().join(name)), // an absolute path stays as it is
        None => fixture.vocab.clone(),
    };
    let tok = tokenizer_from_gguf_vocab(&vocab).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(tok.get_vocab_size(true), vocab.tokens.len(), "no added token past the vocabulary");
    (vocab, tok)
}

/// Ids with and without BOS/EOS, and decoding (whole, special tokens skipped, and streamed token by token
/// the way `generate` prints) against transformers; returns a description of each mismatch.
fn check_spm_cases(name: &str, vocab: &GgufVocab, tok: &Tokenizer, cases: &[SpmCase]) -> Vec<String> {
    let text_tok = TextTokenizer::new(tok.clone(), vocab.eos_id.unwrap(), None, None).unwrap();
    let mut failures = Vec::new();
    let mut differ = |what: &str, text: &str, ours: &dyn std::fmt::Debug, theirs: &dyn std::fmt::Debug| {
        failures.push(format!("{name}: {text:?} ({what})\n  ours:         {ours:?}\n  transformers: {theirs:?}"));
    };
    for case in cases {
        let ids = encode(tok, &case.text, false);
        if ids != case.ids {
            differ("ids", &case.text, &ids, &case.ids);
        }
        let ids_sp = encode(tok, &case.text, true);
        if ids_sp != case.ids_with_special {
            differ("add_special_tokens", &case.text, &ids_sp, &case.ids_with_special);
        }
        let decoded = tok.decode(&case.ids, false).unwrap();
        if decoded != case.decoded {
            differ("decode", &case.text, &decoded, &case.decoded);
        }
        let skipped = tok.decode(&case.ids_with_special, true).unwrap();
        if skipped != case.decoded_skip_special {
            differ("decode skipping special tokens", &case.text, &skipped, &case.decoded_skip_special);
        }
        let mut streamer = Streamer::new(&text_tok, &[]);
        for &id in &case.ids {
            streamer.push(id).unwrap();
        }
        streamer.flush().unwrap();
        if streamer.text() != case.decoded {
            differ("streamed decode", &case.text, &streamer.text(), &case.decoded);
        }
    }
    failures
}

fn assert_spm_fixture(file: &str) -> usize {
    let fixture = load_spm_fixture(&spm_dir().join(file));
    assert!(!fixture.cases.is_empty(), "{file}: no cases");
    let (vocab, tok) = spm_tokenizer(&fixture);
    let failures = check_spm_cases(file, &vocab, &tok, &fixture.cases);
    assert!(failures.is_empty(), "{} mismatches of {}:\n{}", failures.len(), fixture.cases.len(), failures.join("\n"));
    fixture.cases.len()
}

/// llama.cpp's Llama-SPM vocabulary (Llama 2's): llama.cpp's inputs, tricky strings, E2E rows.
#[test]
fn llama_spm_matches_transformers() {
    let n = assert_spm_fixture("llama-spm.json");
    assert!(n > 90, "{n}");
}

/// llama.cpp's Phi-3 vocabulary: the same SentencePiece model, but general.architecture = phi3 makes
/// transformers prepend "▁" in a normalizer instead of Metaspace.
#[test]
fn phi3_spm_matches_transformers() {
    let n = assert_spm_fixture("phi-3.json");
    assert!(n > 90, "{n}");
}

/// A 2 119-token vocabulary cut out of Gemma 3's (file order kept, so its merges are Gemma's), no
/// add_bos_token key (BOS is added) and add_eos_token = true.
#[test]
fn gemma3_small_vocab_matches_transformers() {
    let fixture = load_spm_fixture(&spm_dir().join("gemma3_small.json"));
    assert_eq!((fixture.vocab.add_bos, fixture.vocab.add_eos), (None, Some(true)));
    let (vocab, tok) = spm_tokenizer(&fixture);
    let failures = check_spm_cases("gemma3_small", &vocab, &tok, &fixture.cases);
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    // The fixture does exercise Gemma's particulars: "  " is spelled "▁▁" in the model, "\n\n" is one added
    // token, <start_of_turn> is special, and both BOS and EOS are added.
    let bos = vocab.bos_id.unwrap();
    let eos = vocab.eos_id.unwrap();
    let ids = encode(&tok, "a  b\n\n<start_of_turn>", true);
    let pieces: Vec<&str> = ids.iter().map(|&i| vocab.tokens[i as usize].as_str()).collect();
    assert_eq!((ids[0], ids[ids.len() - 1]), (bos, eos), "{pieces:?}");
    assert!(pieces.contains(&"\n\n") && pieces.contains(&"<start_of_turn>"), "{pieces:?}");
    assert!(pieces.iter().any(|p| p.contains("  ") || p.contains("▁▁")), "{pieces:?}");
}

/// llama.cpp's test vectors (`ggml-vocab-*.gguf.inp` → `.out`, tokenized without BOS and without parsing
/// special tokens). We follow transformers, which differs from llama.cpp on Llama-SPM for text starting
/// with a space (see `formats/gguf/tokenizer_spm.rs`); everything else must be llama.cpp's ids.
#[test]
fn llama_cpp_spm_test_vectors() {
    for (name, json) in [("ggml-vocab-llama-spm.gguf", "llama-spm.json"), ("ggml-vocab-phi-3.gguf", "phi-3.json")] {
        let path = spm_dir().join(name);
        let tok = tokenizer_from_gguf_vocab(&vocab_of_gguf(&path)).unwrap();
        let raw = std::fs::read_to_string(path.with_extension("gguf.inp")).unwrap();
        const SEP: &str = "\n__ggml_vocab_test__\n";
        let inputs: Vec<&str> = raw.strip_suffix(SEP).unwrap_or(&raw).split(SEP).collect();
        let outputs = std::fs::read_to_string(path.with_extension("gguf.out")).unwrap();
        let expected: Vec<Vec<u32>> =
            outputs.lines().map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect()).collect();
        assert_eq!(inputs.len(), expected.len(), "{name}: .inp and .out disagree on the number of tests");
        assert!(inputs.len() > 40, "{name}: {} tests", inputs.len());
        let transformers = load_spm_fixture(&spm_dir().join(json));
        let mut same = 0;
        for (text, llama_cpp) in inputs.iter().zip(&expected) {
            let ours = encode(&tok, text, false);
            let case = transformers.cases.iter().find(|c| c.text == *text).expect("input in the fixture");
            assert_eq!(ours, case.ids, "{name} {text:?}: transformers");
            if &ours == llama_cpp {
                same += 1;
            } else {
                assert!(
                    name.contains("llama-spm") && text.starts_with(' '),
                    "{name} {text:?}: ours {ours:?}, llama.cpp {llama_cpp:?}: an undocumented difference"
                );
                // SentencePiece's extra prefix "▁" (29871) is the whole difference.
                let mut sp = vec![29871];
                sp.extend(&ours);
                let spm_reading = encode(&tok, &format!(" {text}"), false);
                assert!(
                    llama_cpp == &spm_reading || llama_cpp == &sp,
                    "{name} {text:?}: ours {ours:?}, llama.cpp {llama_cpp:?}"
                );
            }
        }
        eprintln!("{name}: {same} of {} llama.cpp test vectors identical", inputs.len());
        if name.contains("phi-3") {
            assert_eq!(same, inputs.len());
        }
    }
}

/// The real Gemma 3 270M GGUF (`bash ../shared/models/fetch.sh gemma3`), read from CONDLM_GEMMA3_GGUF or
/// ~/.cache/condlm/models/gemma-3-270m-q4_k_m.gguf; skipped with a message when absent. The committed ids
/// (tricky strings, llama.cpp's inputs, 100 E2E rows) are transformers'.
#[test]
fn gemma3_real_gguf_matches_transformers() {
    let path = std::env::var_os("CONDLM_GEMMA3_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/condlm/models/gemma-3-270m-q4_k_m.gguf")
    });
    if !path.exists() {
        eprintln!("SKIPPED: {} is absent (bash ../shared/models/fetch.sh gemma3)", path.display());
        return;
    }
    let vocab = vocab_of_gguf(&path);
    assert_eq!((vocab.model.as_str(), vocab.arch.as_deref(), vocab.tokens.len()), ("llama", Some("gemma3"), 262_144));
    let start = std::time::Instant::now();
    let tok = tokenizer_from_gguf_vocab(&vocab).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("gemma3: tokenizer built in {:.2} s", start.elapsed().as_secs_f64());
    assert_eq!(tok.get_vocab_size(true), vocab.tokens.len());
    let text_tok = TextTokenizer::new(tok.clone(), vocab.eos_id.unwrap(), None, None).unwrap();
    assert_eq!((text_tok.prefix.as_slice(), text_tok.eos_id), ([2].as_slice(), 1), "<bos> before x, <eos> after y");
    let fixture = load_spm_fixture(&spm_dir().join("gemma3_real.json"));
    let failures = check_spm_cases("gemma3", &vocab, &tok, &fixture.cases);
    assert!(failures.is_empty(), "{} mismatches of {}:\n{}", failures.len(), fixture.cases.len(), failures.join("\n"));
}

/// Larger sets of transformers ids written outside the repository (`make_tokenizer_fixtures.py --spm-full-out
/// DIR`: every E2E row for each SentencePiece GGUF), named by CONDLM_SPM_CASES=a.json,b.json; skipped when unset.
#[test]
fn spm_cases_from_env() {
    let Ok(list) = std::env::var("CONDLM_SPM_CASES") else {
        eprintln!("SKIPPED: CONDLM_SPM_CASES is not set");
        return;
    };
    for file in list.split(',').map(PathBuf::from) {
        let fixture = load_spm_fixture(&file);
        let (vocab, tok) = spm_tokenizer(&fixture);
        let failures = check_spm_cases(&file.display().to_string(), &vocab, &tok, &fixture.cases);
        assert!(
            failures.is_empty(),
            "{} mismatches of {}:\n{}",
            failures.len(),
            fixture.cases.len(),
            failures.join("\n")
        );
        eprintln!("{}: {} strings identical to transformers", file.display(), fixture.cases.len());
    }
}

#[derive(Deserialize)]
struct ChatCase {
    messages: serde_json::Value,
    text: String,
    ids: Vec<u32>,
    target: Vec<bool>,
}

#[derive(Deserialize)]
struct ChatFixture {
    template: String,
    cases: Vec<ChatCase>,
}

/// Gemma 3's chat template (`<start_of_turn>model … <end_of_turn>`, system text folded into the first user
/// turn, list contents) on the Gemma vocabulary: condlm's turn-by-turn ids equal transformers' tokenization
/// of the whole rendering, and the targets are exactly the tokens of each answer (trimmed, as the template
/// writes it) plus its `<end_of_turn>`, found by transformers' character offsets. No EOS is appended: the
/// template's `<end_of_turn>` is the stop token.
#[test]
fn gemma3_chat_template_masks_assistant_turns() {
    let vocab = load_spm_fixture(&spm_dir().join("gemma3_small.json")).vocab;
    let chat: ChatFixture =
        serde_json::from_str(&std::fs::read_to_string(spm_dir().join("gemma3_chat.json")).unwrap()).unwrap();
    let inner = tokenizer_from_gguf_vocab(&vocab).unwrap();
    let tok = TextTokenizer::new(inner, vocab.eos_id.unwrap(), None, Some(chat.template.clone())).unwrap();
    let template = ChatTemplate::for_tokenizer(&tok).unwrap().unwrap();
    let special = special_ids(&tok);
    let end_of_turn = vocab.tokens.iter().position(|t| t == "<end_of_turn>").unwrap() as u32;
    for case in &chat.cases {
        let line = serde_json::json!({ "messages": case.messages }).to_string();
        let row = parse_row(&line, &Fields::default()).unwrap();
        let Record::Chat { messages, tools, context_turns } = &row.record else { panic!("not a chat: {line}") };
        let c = encode_chat(&tok, &template, messages, *context_turns, tools.as_ref(), &special).unwrap();
        assert_eq!(tok.decode(&c.ids).unwrap(), case.text, "rendering");
        assert_eq!(c.ids, case.ids, "{:?}", case.text);
        assert_eq!(c.target, case.target, "{:?}", case.text);
        assert_eq!(c.ids.iter().filter(|&&i| i == tok.eos_id).count(), 0, "no EOS appended");
        let last_target = c.target.iter().rposition(|&t| t).unwrap();
        assert_eq!(c.ids[last_target], end_of_turn);
    }
}

/// `condlm inspect` shows SentencePiece tokens with their leading space (which Llama's decoder strips from a
/// token decoded alone) and byte-fallback tokens as their byte.
#[test]
fn inspect_shows_sentencepiece_tokens() {
    let vocab = vocab_of_gguf(&spm_dir().join("ggml-vocab-llama-spm.gguf"));
    let inner = tokenizer_from_gguf_vocab(&vocab).unwrap();
    let tok = TextTokenizer::new(inner, vocab.eos_id.unwrap(), None, None).unwrap();
    let shown = |text: &str| -> Vec<String> {
        tok.encode(text).unwrap().iter().map(|&id| condlm::data::show::token_text(&tok, id)).collect()
    };
    assert_eq!(shown("Hello world\n"), [" Hello", " world", "\\n"]);
    // 🦙 has no token of its own: four byte-fallback tokens.
    assert_eq!(shown("🦙"), [" ", "\\xF0", "\\x9F", "\\xA6", "\\x99"]);
}

/// y after x is tokenized as inside x + y (SentencePiece's dummy prefix "▁" goes only where the joined text has
/// it): `enc(x) + enc_after(y)` equals `enc(x + y)` wherever the boundary falls between tokens (a space or newline
/// there, or an added token). Llama's vocabulary prefixes with Metaspace("first"): never after the start; Phi-3's
/// with a Prepend normalizer: after every added token too. Before, y always gained a "▁" (a space inserted).
#[test]
fn a_completion_continues_its_prompt_without_a_dummy_prefix() {
    let cases = [
        ("Translate: cat\n", "Katze"),
        ("Translate: cat", " Katze"),
        ("name: The Eagle\n\n", "Eat type: coffee shop"),
        ("hi</s>", "Hello there"),
        ("<|user|>\nhi<|end|>\n<|assistant|>", "Hello"),
        ("<|user|>\nhi<|end|>\n<|assistant|>", " Hello"),
        ("<|user|>\nhi", " there<|end|>\nmore text<|end|>"),
    ];
    for file in ["llama-spm.json", "phi-3.json"] {
        let (_, inner) = spm_tokenizer(&load_spm_fixture(&spm_dir().join(file)));
        let tok = TextTokenizer::new(inner, 2, None, None).unwrap();
        let mut differs = 0;
        for (x, y) in cases {
            let ex = tok.encode(x).unwrap();
            let mut split = ex.clone();
            split.extend(tok.encode_after(y, ex.last().copied()).unwrap());
            assert_eq!(split, tok.encode(&format!("{x}{y}")).unwrap(), "{file}: {x:?} + {y:?}");
            differs += usize::from(tok.encode_after(y, ex.last().copied()).unwrap() != tok.encode(y).unwrap());
        }
        assert!(differs >= 2, "{file}: no case needed the continuation ({differs})");
        // A text at the start keeps its prefix.
        assert_eq!(tok.encode_after("Katze", None).unwrap(), tok.encode("Katze").unwrap(), "{file}");
    }
}
