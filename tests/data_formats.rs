//! Data formats, chat templates, target masks, truncation and the split, against the references that
//! tests/fixtures/make_data_fixtures.py wrote with transformers (tests/fixtures/data/).
#![allow(clippy::single_range_in_vec_init)]
mod common;

use common::fixture;
use condlm::data::chat::{ChatTemplate, GenerationPrompt, encode_chat, special_ids};
use condlm::data::dataset::{DataOptions, Dataset, load_dataset, split_by_prompt};
use condlm::data::example::Example;
use condlm::data::records::{Fields, Format, Record, read_rows};
use condlm::data::show::{Paint, render_example};
use condlm::tokenizer::TextTokenizer;
use minijinja::Value;
use std::collections::HashSet;
use std::path::PathBuf;

fn tiny_tokenizer() -> TextTokenizer {
    TextTokenizer::from_hf_dir(&fixture("tiny-llama"), None).unwrap()
}

fn with_template(name: &str) -> TextTokenizer {
    let mut tok = tiny_tokenizer();
    tok.chat_template = Some(std::fs::read_to_string(fixture("data").join(name)).unwrap());
    tok
}

/// The same tokenizer, but with a BOS (`<|endoftext|>`) forced in front of every text.
fn tokenizer_with_bos() -> TextTokenizer {
    let t = tiny_tokenizer();
    let tok = TextTokenizer::new(t.inner, t.eos_id, Some(0), t.chat_template).unwrap();
    assert_eq!(tok.prefix, vec![0]);
    tok
}

/// expected.json parsed as template values (object key order kept, as transformers sees it).
fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("data/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn seq(v: &Value) -> Vec<Value> {
    v.try_iter().unwrap().collect()
}

fn ints(v: &Value) -> Vec<u32> {
    seq(v).iter().map(|x| x.as_i64().unwrap() as u32).collect()
}

fn mask(e: &Example) -> Vec<u32> {
    let mut m = vec![0; e.ids.len()];
    for r in &e.targets {
        m[r.clone()].iter_mut().for_each(|t| *t = 1);
    }
    m
}

fn opts(max_len: usize) -> DataOptions {
    DataOptions { max_len, ..Default::default() }
}

struct TempData {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn temp_file(name: &str, text: &str) -> TempData {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    TempData { _dir: dir, path }
}

fn load_err(tok: &TextTokenizer, name: &str, text: &str) -> (String, PathBuf) {
    let t = temp_file(name, text);
    let e = load_dataset(&t.path, tok, &opts(usize::MAX)).expect_err("must fail");
    (format!("{e:#}"), t.path.clone())
}

// (a) Loss masks equal transformers' assistant masks (a ChatML template with {% generation %} tags).
#[test]
fn chat_masks_match_transformers() {
    let tok = with_template("chatml_generation.jinja");
    let ds = load_dataset(&fixture("data/chats.jsonl"), &tok, &opts(usize::MAX)).unwrap();
    let refs = seq(&expected().get_attr("masks").unwrap());
    assert_eq!(ds.examples.len(), refs.len());
    for (i, r) in refs.iter().enumerate() {
        let e = &ds.examples[i];
        let want_ids = ints(&r.get_attr("input_ids").unwrap());
        let want_mask = ints(&r.get_attr("assistant_masks").unwrap());
        assert_eq!(e.ids, want_ids, "row {i}: ids");
        assert_eq!(mask(e), want_mask, "row {i}: target mask");
        // The end-of-turn token is a target; the newline after it is not.
        let last = e.targets.last().unwrap();
        assert_eq!(e.ids[last.end - 1], 2, "<|im_end|> closes the last target run");
        assert_eq!(last.end, e.ids.len() - 1, "the final newline is context");
        assert_eq!(ds.info[i].format, Format::Chat);
        assert!(ds.sources[i].ends_with(&format!("chats.jsonl:{}", i + 1)), "{}", ds.sources[i]);
    }
    assert_eq!(ds.stats.chats, 4);
}

// (b) Templates render exactly as transformers renders them (SmolLM2's real one, Llama-3-style and
// Qwen2-style templates with tools), with and without the generation prompt.
#[test]
fn templates_render_like_transformers() {
    let renders = seq(&expected().get_attr("renders").unwrap());
    assert!(renders.len() >= 40);
    let mut seen = HashSet::new();
    for (i, r) in renders.iter().enumerate() {
        let name = r.get_attr("template").unwrap().to_string();
        let source = std::fs::read_to_string(fixture("data").join(&name)).unwrap();
        let bos = r.get_attr("bos_token").unwrap().to_string();
        let eos = r.get_attr("eos_token").unwrap().to_string();
        let t = ChatTemplate::new(&source, &bos, &eos).unwrap();
        let messages = seq(&r.get_attr("messages").unwrap());
        let tools = r.get_attr("tools").unwrap();
        let tools = if tools.is_none() { None } else { Some(tools) };
        let add_gen = r.get_attr("add_generation_prompt").unwrap().is_true();
        let prompt = if add_gen { GenerationPrompt::Add } else { GenerationPrompt::Omit };
        let got = t.render(&messages, tools.as_ref(), prompt).unwrap();
        let want = r.get_attr("text").unwrap().to_string();
        assert_eq!(got, want, "rendering {i}: {name}, add_generation_prompt={add_gen}");
        seen.insert((name, add_gen, tools.is_some()));
    }
    for t in ["smollm2.jinja", "llama3_style.jinja", "qwen2_style.jinja", "chatml_generation.jinja"] {
        assert!(seen.contains(&(t.to_string(), true, false)) && seen.contains(&(t.to_string(), false, false)), "{t}");
    }
    assert!(seen.contains(&("llama3_style.jinja".to_string(), false, true)));
    assert!(seen.contains(&("qwen2_style.jinja".to_string(), false, true)));
}

/// A model's own template gets the tokenizer's BOS text as `bos_token` even where the tokenizer puts no BOS before
/// texts (tiny-llama: `add_bos_token: false`), as transformers passes it: Llama-3-style templates begin with it.
#[test]
fn the_tokenizers_template_gets_its_bos_token_as_transformers_gives_it() {
    let renders = seq(&expected().get_attr("renders").unwrap());
    let mut checked = 0;
    for r in renders.iter().filter(|r| r.get_attr("template").unwrap().to_string() == "llama3_style.jinja") {
        let tok = with_template("llama3_style.jinja");
        assert!(tok.prefix.is_empty());
        let t = ChatTemplate::for_tokenizer(&tok).unwrap().unwrap();
        let tools = r.get_attr("tools").unwrap();
        let tools = if tools.is_none() { None } else { Some(tools) };
        let add_gen = r.get_attr("add_generation_prompt").unwrap().is_true();
        let prompt = if add_gen { GenerationPrompt::Add } else { GenerationPrompt::Omit };
        let got = t.render(&seq(&r.get_attr("messages").unwrap()), tools.as_ref(), prompt).unwrap();
        let want = r.get_attr("text").unwrap().to_string();
        assert!(want.starts_with("<|endoftext|>"), "{want}");
        assert_eq!(got, want);
        checked += 1;
    }
    assert!(checked >= 2, "{checked}");
}

/// Every template splits every conversation into segments whose concatenation is the full rendering, with the
/// assistant answers (and end-of-turn tokens) as targets.
#[test]
fn segments_reassemble_the_rendering() {
    let tok = tiny_tokenizer();
    let special = special_ids(&tok);
    let rows = read_rows(&fixture("data/chats.jsonl"), &Fields::default()).unwrap();
    for name in ["smollm2.jinja", "llama3_style.jinja", "qwen2_style.jinja", "chatml_generation.jinja"] {
        let source = std::fs::read_to_string(fixture("data").join(name)).unwrap();
        let t = ChatTemplate::new(&source, "<|endoftext|>", "<|im_end|>").unwrap();
        for row in &rows {
            let Record::Chat { messages, tools, context_turns } = &row.record else { panic!() };
            let values: Vec<Value> = messages.iter().map(|m| m.value.clone()).collect();
            let full = t.render(&values, None, GenerationPrompt::Omit).unwrap();
            let c = encode_chat(&tok, &t, messages, *context_turns, tools.as_ref(), &special).unwrap();
            // The tiny vocabulary has no special <|eot_id|>: with no end-of-turn token, EOS is appended.
            let want = if name == "llama3_style.jinja" { format!("{full}<|im_end|>") } else { full };
            assert_eq!(tok.decode(&c.ids).unwrap(), want, "{name} {}", row.source);
            let targets: Vec<u32> = c.ids.iter().zip(&c.target).filter(|(_, t)| **t).map(|(i, _)| *i).collect();
            let text = tok.decode(&targets).unwrap();
            let answers = messages.iter().filter(|m| m.content.contains("Trailing")).count();
            if answers > 0 && !["qwen2_style.jinja", "llama3_style.jinja"].contains(&name) {
                // Trailing spaces of the content stay inside the target, before the end-of-turn token (the
                // Qwen2- and Llama-3-style templates strip them).
                assert!(text.contains("Trailing spaces  "), "{name}: {text:?}");
            }
            let last = messages.last().unwrap().content.trim();
            assert!(text.contains(last), "{name}: {text:?} lacks {last:?}");
            assert!(c.last_turn_start > 0 && c.target[c.last_turn_start]);
        }
    }
}

#[test]
fn tool_conversations_encode() {
    let e = expected();
    let r = seq(&e.get_attr("renders").unwrap())
        .into_iter()
        .find(|r| {
            r.get_attr("template").unwrap().as_str() == Some("qwen2_style.jinja")
                && !r.get_attr("tools").unwrap().is_none()
                && !r.get_attr("add_generation_prompt").unwrap().is_true()
        })
        .unwrap();
    let row = format!(
        "{{\"messages\": {}, \"tools\": {}}}\n",
        serde_json::to_string(&r.get_attr("messages").unwrap()).unwrap(),
        serde_json::to_string(&r.get_attr("tools").unwrap()).unwrap()
    );
    let tok = with_template("qwen2_style.jinja");
    let t = temp_file("tools.jsonl", &row);
    let ds = load_dataset(&t.path, &tok, &opts(usize::MAX)).unwrap();
    let e0 = &ds.examples[0];
    assert_eq!(tok.decode(&e0.ids).unwrap(), r.get_attr("text").unwrap().to_string());
    // Two assistant turns: the tool call and the final answer.
    assert_eq!(e0.targets.len(), 2);
    let call = tok.decode(&e0.ids[e0.targets[0].clone()]).unwrap();
    assert!(call.starts_with("<tool_call>") && call.ends_with("</tool_call><|im_end|>"), "{call:?}");
}

// (c) Alpaca rows (a JSON array) get Stanford Alpaca's prompts.
#[test]
fn alpaca_prompts_are_stanfords() {
    let path = fixture("data/alpaca.json");
    let rows = read_rows(&path, &Fields::default()).unwrap();
    let refs = seq(&expected().get_attr("alpaca").unwrap());
    assert_eq!(rows.len(), refs.len());
    for (row, r) in rows.iter().zip(&refs) {
        let Record::Pair { prompt, completion } = &row.record else { panic!() };
        assert_eq!(row.format, Format::Alpaca);
        assert_eq!(prompt, &r.get_attr("prompt").unwrap().to_string());
        assert_eq!(completion, &r.get_attr("completion").unwrap().to_string());
    }
    assert!(rows[0].source.ends_with("alpaca.json:2 (element 0)"), "{}", rows[0].source);
    assert!(rows[2].source.ends_with("alpaca.json:12 (element 2)"), "{}", rows[2].source);
    let tok = tiny_tokenizer();
    let ds = load_dataset(&path, &tok, &opts(usize::MAX)).unwrap();
    for (e, row) in ds.examples.iter().zip(&rows) {
        let Record::Pair { prompt, completion } = &row.record else { panic!() };
        let x = tok.encode(prompt).unwrap();
        assert_eq!(e.ids[..x.len()], x[..]);
        assert_eq!(e.targets, vec![x.len()..e.ids.len()]);
        assert_eq!(tok.decode(&e.ids[x.len()..e.ids.len() - 1]).unwrap(), *completion);
        assert_eq!(*e.ids.last().unwrap(), tok.eos_id);
    }
    assert_eq!(ds.stats.alpaca, 3);
}

#[test]
fn pairs_follow_the_objective_and_configured_fields() {
    let tok = tokenizer_with_bos();
    let t = temp_file("f.jsonl", "{\"q\": \"name[A]\", \"a\": \" A is\", \"prompt\": \"ignored\"}\n");
    let o = DataOptions { prompt_field: "q".into(), completion_field: "a".into(), max_len: usize::MAX };
    let ds = load_dataset(&t.path, &tok, &o).unwrap();
    let mut want = vec![0];
    want.extend(tok.encode("name[A]").unwrap());
    let y_start = want.len();
    want.extend(tok.encode(" A is").unwrap());
    want.push(tok.eos_id);
    assert_eq!(ds.examples[0], Example::pair(want, y_start));
}

// (d) Truncation keeps y: x is cut from the left first, y from the right only when it alone does not fit.
#[test]
fn truncation_keeps_y() {
    let tok = tokenizer_with_bos();
    let x = "name[The Eagle], eatType[coffee shop], food[French], priceRange[£20-25]";
    let y = " The Eagle is a coffee shop.";
    let (nx, ny) = (tok.encode(x).unwrap().len(), tok.encode(y).unwrap().len() + 1);
    let rows = format!(
        "{}\n{}\n{}\n",
        serde_json::json!({"prompt": x, "completion": y}),
        serde_json::json!({"prompt": "a", "completion": y}),
        serde_json::json!({"prompt": x, "completion": y.repeat(4)}),
    );
    let t = temp_file("trunc.jsonl", &rows);
    let full = load_dataset(&t.path, &tok, &opts(usize::MAX)).unwrap();
    assert_eq!((full.stats.truncated_x, full.stats.truncated_y), (0, 0));

    let max_len = 1 + ny + 5;
    let ds = load_dataset(&t.path, &tok, &opts(max_len)).unwrap();
    assert!(ds.examples.iter().all(|e| e.ids.len() <= max_len));
    let e0 = &ds.examples[0];
    let f0 = &full.examples[0];
    assert_eq!(e0.ids[0], 0, "BOS kept");
    assert_eq!(e0.ids[1..], f0.ids[f0.ids.len() - (max_len - 1)..], "x cut from the left");
    assert_eq!(e0.n_targets(), ny, "y whole");
    assert_eq!((ds.info[0].cut.x, ds.info[0].cut.y), (nx - 5, 0));
    assert_eq!(ds.examples[1], full.examples[1], "short rows untouched");
    let e2 = &ds.examples[2];
    let f2 = &full.examples[2];
    assert_eq!(e2.ids.len(), max_len);
    assert_eq!(e2.ids[1..], f2.ids[f2.y_start()..f2.y_start() + max_len - 1], "x gone, y's start kept");
    assert_eq!(e2.targets, vec![1..max_len]);
    assert_eq!(ds.info[2].cut, condlm::data::dataset::Cut { x: nx, y: f2.n_targets() - (max_len - 1) });
    assert_eq!((ds.stats.truncated_x, ds.stats.truncated_y, ds.stats.rows_without_targets), (2, 1, 0));
    assert_eq!(ds.stats.y_tokens, ds.examples.iter().map(|e| e.n_targets()).sum::<usize>());
    assert!(ds.stats.max_x + ds.stats.max_y <= max_len + nx);

    // Without a BOS prefix, one x token stays as context for y's first token.
    let tok = tiny_tokenizer();
    let ds = load_dataset(&t.path, &tok, &opts(ny)).unwrap();
    let e2 = &ds.examples[2];
    assert_eq!(e2.targets, vec![1..ny]);
    assert_eq!(e2.ids[0], *tok.encode(x).unwrap().last().unwrap());

    // max_len 1 leaves no room for y: every row is dropped, which is an error.
    let e = format!("{:#}", load_dataset(&t.path, &tokenizer_with_bos(), &opts(1)).unwrap_err());
    assert!(e.contains("none of the 3 rows") && e.contains("trunc.jsonl:1"), "{e}");
}

// (e) The split never puts one prompt on both sides, and is deterministic in the seed.
#[test]
fn split_by_prompt_keeps_prompts_together() {
    let tok = tiny_tokenizer();
    let all = load_dataset(&fixture("data/pairs.jsonl"), &tok, &opts(usize::MAX)).unwrap();
    assert_eq!((all.stats.rows, all.stats.prompts), (24, 8));
    let x_of =
        |d: &Dataset| -> HashSet<Vec<u32>> { d.examples.iter().map(|e| e.ids[..e.y_start()].to_vec()).collect() };
    let mut splits = HashSet::new();
    for seed in 0..20 {
        let (train, eval) = split_by_prompt(all.clone(), 0.25, seed);
        assert_eq!(train.examples.len() + eval.examples.len(), 24);
        assert_eq!(eval.stats.prompts, 2, "a quarter of 8 prompts");
        assert_eq!(eval.examples.len(), 6);
        assert!(x_of(&train).is_disjoint(&x_of(&eval)), "seed {seed}: a prompt on both sides");
        let (t2, e2) = split_by_prompt(all.clone(), 0.25, seed);
        assert_eq!((t2.sources, e2.sources.clone()), (train.sources.clone(), eval.sources.clone()), "deterministic");
        assert_eq!(train.stats.rows + eval.stats.rows, 24);
        splits.insert(e2.sources);
    }
    assert!(splits.len() > 5, "the seed changes the split");
    // Reordering the file does not change which prompts are held out.
    let text = std::fs::read_to_string(fixture("data/pairs.jsonl")).unwrap();
    let t = temp_file("rev.jsonl", &(text.lines().rev().collect::<Vec<_>>().join("\n") + "\n"));
    let rev = load_dataset(&t.path, &tok, &opts(usize::MAX)).unwrap();
    let (_, a) = split_by_prompt(all.clone(), 0.25, 7);
    let (_, b) = split_by_prompt(rev, 0.25, 7);
    assert_eq!(x_of(&a), x_of(&b));
    // Small fractions still hold out one prompt; fraction 0 holds out none.
    assert_eq!(split_by_prompt(all.clone(), 0.01, 1).1.stats.prompts, 1);
    assert!(split_by_prompt(all.clone(), 0.0, 1).1.examples.is_empty());
}

#[test]
fn chats_split_by_their_context() {
    let tok = with_template("chatml_generation.jinja");
    let row = |sys: &str, a: &str| {
        serde_json::json!({"messages": [
            {"role": "system", "content": sys}, {"role": "user", "content": "q"}, {"role": "assistant", "content": a}
        ]})
        .to_string()
    };
    let mut text = String::new();
    for s in 0..6 {
        for a in 0..3 {
            text.push_str(&row(&format!("s{s}"), &format!("answer {a}")));
            text.push('\n');
        }
    }
    let t = temp_file("chats.jsonl", &text);
    let all = load_dataset(&t.path, &tok, &opts(usize::MAX)).unwrap();
    assert_eq!(all.stats.prompts, 6);
    let (train, eval) = split_by_prompt(all, 0.5, 3);
    let keys = |d: &Dataset| d.info.iter().map(|i| i.key).collect::<HashSet<_>>();
    assert!(keys(&train).is_disjoint(&keys(&eval)));
    assert_eq!((train.examples.len(), eval.examples.len()), (9, 9));
}

// (f) Every bad input names file:line (or file:line (element i) in a JSON array) and says what was expected.
#[test]
fn bad_rows_name_file_and_line() {
    let tok = with_template("chatml_generation.jinja");
    let good = r#"{"prompt": "a", "completion": "b"}"#;
    let cases: &[(&str, &[&str])] = &[
        (r#"{"prompt": "#, &["not valid JSON"]),
        ("[1, 2]", &["expected a JSON object", "got an array"]),
        ("\"text\"", &["expected a JSON object", "got a string"]),
        (r#"{"prompt": "a"}"#, &["missing field \"completion\"", "found \"prompt\""]),
        (r#"{"completion": "a"}"#, &["missing field \"prompt\""]),
        (r#"{"prompt": "a", "completion": 3}"#, &["\"completion\"", "must be a string, got a number"]),
        (r#"{"prompt": ["a"], "completion": "b"}"#, &["\"prompt\" is a list", "\"completion\" must be one too"]),
        (
            r#"{"prompt": ["a"], "completion": [{"role": "assistant", "content": "b"}]}"#,
            &["messages[0] must be an object"],
        ),
        (r#"{"prompt": "a", "completion": ["b"]}"#, &["\"completion\"", "must be a string, got an array"]),
        (r#"{"prompt": "a", "completion": ""}"#, &["\"completion\" is empty", "only EOS"]),
        (r#"{"text": "a"}"#, &["missing fields", "\"messages\"", "\"instruction\"", "found \"text\""]),
        (r#"{"instruction": "a", "output": ""}"#, &["\"output\" is empty"]),
        (r#"{"instruction": "a"}"#, &["missing field \"output\""]),
        (r#"{"output": "a"}"#, &["missing field \"instruction\""]),
        (r#"{"instruction": "a", "input": 1, "output": "b"}"#, &["\"input\"", "must be a string"]),
        (r#"{"messages": "hi"}"#, &["\"messages\" must be an array"]),
        (r#"{"messages": []}"#, &["\"messages\" is empty"]),
        (r#"{"messages": [1]}"#, &["messages[0] must be an object"]),
        (r#"{"messages": [{"content": "a"}]}"#, &["messages[0] has no \"role\""]),
        (
            r#"{"messages": [{"role": "human", "content": "a"}]}"#,
            &["unknown role \"human\"", "system, user, assistant, tool"],
        ),
        (r#"{"messages": [{"role": "user"}]}"#, &["messages[0] (user) has no \"content\""]),
        (r#"{"messages": [{"role": "user", "content": [{"type": "text"}]}]}"#, &["content must be a string"]),
        (
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}"#,
            &["empty assistant turn"],
        ),
        (
            r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]}"#,
            &["no assistant turn", "system, user"],
        ),
    ];
    for (row, wants) in cases {
        let (e, path) = load_err(&tok, "bad.jsonl", &format!("{good}\n\n{row}\n{good}\n"));
        let at = format!("{}:3: ", path.display());
        assert!(e.contains(&at), "{row}: {e}");
        for w in *wants {
            assert!(e.contains(w), "{row}: {e:?} lacks {w:?}");
        }
    }
    // JSON arrays: the element's line and index.
    let (e, path) = load_err(&tok, "bad.json", &format!("[\n  {good},\n  {good},\n  7\n]\n"));
    assert!(e.contains(&format!("{}:4 (element 2): expected a JSON object", path.display())), "{e}");
    let (e, _) = load_err(&tok, "bad.json", "[\n {\"prompt\": 1,\n]");
    assert!(e.contains("bad.json: not valid JSON") && e.contains("line 3"), "{e}");
    let (e, _) = load_err(&tok, "empty.jsonl", "\n\n");
    assert!(e.contains("empty.jsonl: no rows"), "{e}");
    // Encoding errors name the row too.
    let (e, path) = load_err(&tok, "e.jsonl", &format!("{good}\n{{\"prompt\": \"\", \"completion\": \"b\"}}\n"));
    assert!(e.contains(&format!("{}:2: empty prompt", path.display())), "{e}");
}

#[test]
fn chat_template_problems_name_row_and_template() {
    let chat = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#;
    let pair = r#"{"prompt": "a", "completion": "b"}"#;
    // No template at all (tiny-gpt2 has none): pairs are fine, a chat row is an error.
    let gpt2 = TextTokenizer::from_hf_dir(&fixture("tiny-gpt2"), None).unwrap();
    let (e, path) = load_err(&gpt2, "c.jsonl", &format!("{pair}\n{chat}\n"));
    assert!(e.contains(&format!("{}:2: ", path.display())) && e.contains("no chat template"), "{e}");
    // A template whose renderings are not prefixes of each other.
    let mut tok = tiny_tokenizer();
    tok.chat_template = Some(
        "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m.role }}: {{ m.content }}\n{% endfor %}\
         {% if add_generation_prompt %}assistant: {% endif %}"
            .into(),
    );
    let (e, path) = load_err(&tok, "c.jsonl", &format!("{chat}\n"));
    assert!(e.contains(&format!("{}:1: ", path.display())), "{e}");
    assert!(e.contains("not prefix-stable") && e.contains("template starting `{% for m in messages %}"), "{e}");
    // raise_exception in the template.
    tok.chat_template = Some("{{ raise_exception('Roles must alternate') }}".into());
    let (e, _) = load_err(&tok, "c.jsonl", &format!("{chat}\n"));
    assert!(e.contains("c.jsonl:1: ") && e.contains("Roles must alternate"), "{e}");
    // A template that does not compile.
    tok.chat_template = Some("{% for m in messages %}".into());
    let (e, _) = load_err(&tok, "c.jsonl", &format!("{chat}\n"));
    assert!(e.contains("does not compile"), "{e}");
}

#[test]
fn template_without_end_token_gets_eos() {
    let mut tok = tiny_tokenizer();
    tok.chat_template = Some(
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: \
         {% endif %}"
            .into(),
    );
    let chat = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b c"}, {"role": "user", "content": "d"}, {"role": "assistant", "content": "e"}]}"#;
    let t = temp_file("c.jsonl", &format!("{chat}\n"));
    let ds = load_dataset(&t.path, &tok, &opts(usize::MAX)).unwrap();
    let e = &ds.examples[0];
    assert_eq!(tok.decode(&e.ids).unwrap(), "user: a\nassistant: b c\nuser: d\nassistant: e<|im_end|>");
    let t0 = tok.decode(&e.ids[e.targets[0].clone()]).unwrap();
    let t1 = tok.decode(&e.ids[e.targets[1].clone()]).unwrap();
    assert_eq!((t0.as_str(), t1.as_str()), ("b c", "e<|im_end|>"));
}

#[test]
fn inspect_shows_labels() {
    let tok = tiny_tokenizer();
    let e = Example::pair(tok.encode("ab£").unwrap().into_iter().chain([2]).collect(), 1);
    let plain = render_example(&tok, &e, Paint::Plain).unwrap();
    assert!(plain.starts_with("[x]") && plain.contains("[Y]") && plain.ends_with("<|im_end|>"), "{plain}");
    let tok = with_template("chatml_generation.jinja");
    let ds = load_dataset(&fixture("data/chats.jsonl"), &tok, &opts(usize::MAX)).unwrap();
    let plain = render_example(&tok, &ds.examples[0], Paint::Plain).unwrap();
    assert!(plain.starts_with("[x]<|im_start|>·") && plain.contains("[Y]"), "{plain}");
    assert!(plain.ends_with("<|im_end|>[x]\\n"), "{plain}");
    let colour = render_example(&tok, &ds.examples[0], Paint::Color).unwrap();
    assert!(colour.contains("\u{1b}[") && !colour.contains("[Y]"));
}

// Parquet, CSV and TSV (tests/fixtures/data_formats/, written by make_data_format_fixtures.py) give the records
// and the encoded rows of the JSONL file with the same examples.

fn formats_fixture(name: &str) -> PathBuf {
    fixture("data_formats").join(name)
}

#[test]
fn parquet_csv_and_tsv_read_as_their_jsonl() {
    let tok = with_template("chatml_generation.jinja");
    let cases = [
        ("pairs.jsonl", &["pairs.parquet", "pairs.csv", "pairs.tsv"][..]),
        ("alpaca.jsonl", &["alpaca.parquet", "alpaca.csv"]),
        ("chat.jsonl", &["chat.parquet", "chat.csv"]),
        ("large.jsonl", &["large.parquet"]),
    ];
    for (reference, others) in cases {
        let want = read_rows(&formats_fixture(reference), &Fields::default()).unwrap();
        let want_ds = load_dataset(&formats_fixture(reference), &tok, &opts(usize::MAX)).unwrap();
        for other in others {
            let got = read_rows(&formats_fixture(other), &Fields::default()).unwrap();
            assert_eq!(got.len(), want.len(), "{other}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.format, w.format, "{}", g.source);
                // Debug shows every string and the message objects with their key order.
                assert_eq!(format!("{:?}", g.record), format!("{:?}", w.record), "{}", g.source);
            }
            let ds = load_dataset(&formats_fixture(other), &tok, &opts(usize::MAX)).unwrap();
            assert_eq!(ds.examples, want_ds.examples, "{other}");
            assert_eq!(ds.stats, want_ds.stats, "{other}");
        }
    }
    let large = read_rows(&formats_fixture("large.parquet"), &Fields::default()).unwrap();
    let Record::Pair { completion, .. } = &large[0].record else { panic!() };
    assert!(completion.len() > 64 << 10);
}

#[test]
fn rows_of_parquet_and_csv_are_named_by_row_group_and_line() {
    let rows = read_rows(&formats_fixture("pairs.parquet"), &Fields::default()).unwrap();
    assert!(rows[3].source.ends_with("pairs.parquet: row 3 (row group 1, row 1)"), "{}", rows[3].source);
    assert!(rows[5].source.ends_with("row 5 (row group 2, row 1)"), "{}", rows[5].source);
    // Row 2 of pairs.csv spans lines 3 to 5 (quoted newlines), so row 3 starts on line 6.
    let rows = read_rows(&formats_fixture("pairs.csv"), &Fields::default()).unwrap();
    let lines: Vec<&str> = rows.iter().map(|r| r.source.rsplit(':').next().unwrap()).collect();
    assert_eq!(lines, ["2", "3", "6", "7", "8", "9"]);
}

/// Runs the binary; returns (success, stdout, stderr). A panic fails the test.
fn run_condlm(args: &[&str], env: &[(&str, &std::path::Path)]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_condlm"));
    cmd.args(args).env_remove("HF_HOME").env("HF_HUB_OFFLINE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.success(), stdout, stderr)
}

fn inspect(data: &str, extra: &[&str], env: &[(&str, &std::path::Path)]) -> (bool, String, String) {
    let model = fixture("tiny-llama");
    let mut args = vec!["inspect", "--model", model.to_str().unwrap(), "--data", data, "--color", "never"];
    args.extend(extra);
    run_condlm(&args, env)
}

#[test]
fn inspect_shows_every_format_as_its_jsonl() {
    let tokens_and_stats = |file: &str, format: &[&str]| {
        let path = formats_fixture(file);
        let (ok, out, err) = inspect(path.to_str().unwrap(), &[&["--rows", "9"][..], format].concat(), &[]);
        assert!(ok, "{file}: {err}");
        // Row headers name the file and row; the rest must not depend on the format.
        out.lines()
            .filter(|l| !l.starts_with("row "))
            .map(|l| l.replace(path.to_str().unwrap(), "DATA"))
            .collect::<Vec<_>>()
    };
    let want = tokens_and_stats("pairs.jsonl", &[]);
    assert!(want.iter().any(|l| l.starts_with("DATA: 6 rows")), "{want:?}");
    for other in ["pairs.parquet", "pairs.csv", "pairs.tsv"] {
        assert_eq!(tokens_and_stats(other, &[]), want, "{other}");
    }
    // --data-format overrides the extension.
    let tmp = tempfile::tempdir().unwrap();
    let renamed = tmp.path().join("pairs.dat");
    std::fs::copy(formats_fixture("pairs.tsv"), &renamed).unwrap();
    let (ok, out, err) = inspect(renamed.to_str().unwrap(), &["--data-format", "tsv"], &[]);
    assert!(ok && out.contains("6 rows"), "{out}{err}");
}

/// A hub cache with `datasets--org--name`: train (one shard) and test (two shards), as huggingface_hub lays it out.
fn hub_cache() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("datasets--org--name");
    let snap = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(snap.join("data")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
    std::fs::write(snap.join("README.md"), "# a dataset card\n").unwrap();
    for (from, to) in [
        ("pairs.parquet", "train-00000-of-00001.parquet"),
        ("alpaca.parquet", "test-00000-of-00002.parquet"),
        ("chat.parquet", "test-00001-of-00002.parquet"),
    ] {
        std::fs::copy(formats_fixture(from), snap.join("data").join(to)).unwrap();
    }
    tmp
}

#[test]
fn hub_datasets_are_read_by_split_from_the_cache() {
    let cache = hub_cache();
    let env = [("HF_HUB_CACHE", cache.path())];
    let (ok, out, err) = inspect("org/name", &["--split", "test", "--rows", "5"], &env);
    assert!(ok, "{err}");
    assert!(out.contains("org/name, split test: 5 rows (3 Alpaca, 2 chat)"), "{out}");
    let first = out.lines().find(|l| l.starts_with("row 1:")).unwrap();
    assert!(first.contains("data/test-00000-of-00002.parquet: row 0 (row group 0, row 0)"), "{first}");
    let fourth = out.lines().find(|l| l.starts_with("row 4:")).unwrap();
    assert!(fourth.contains("data/test-00001-of-00002.parquet: row 0"), "{fourth}");
    // inspect reads train by default; eval reads validation, else test.
    let (ok, out, err) = inspect("org/name", &[], &env);
    assert!(ok && out.contains("org/name, split train: 6 rows (6 prompt/completion)"), "{out}{err}");
    let model = fixture("tiny-llama");
    let (ok, out, err) = run_condlm(&["eval", "--model", model.to_str().unwrap(), "--data", "org/name"], &env);
    assert!(ok && out.contains("\"rows\":5"), "{out}{err}");
    // A missing split lists the splits and files present; a missing dataset says how to download it.
    let (ok, _, err) = inspect("org/name", &["--split", "validation"], &env);
    assert!(!ok && err.contains("no split \"validation\""), "{err}");
    assert!(err.contains("test: data/test-00000-of-00002.parquet, data/test-00001-of-00002.parquet"), "{err}");
    assert!(err.contains("train: data/train-00000-of-00001.parquet"), "{err}");
    let (ok, _, err) = inspect("org/other", &[], &env);
    assert!(!ok && err.contains("huggingface-cli download --repo-type dataset org/other"), "{err}");
}

#[test]
fn bad_data_files_name_file_and_row() {
    let tmp = tempfile::tempdir().unwrap();
    let fails = |path: &std::path::Path, words: &[&str]| {
        let (ok, _, err) = inspect(path.to_str().unwrap(), &[], &[]);
        assert!(!ok, "{} must fail", path.display());
        for w in words {
            assert!(err.contains(w), "{} should say {w:?}: {err}", path.display());
        }
    };
    let whole = std::fs::read(formats_fixture("pairs.parquet")).unwrap();
    let cut = tmp.path().join("cut.parquet");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    fails(&cut, &["cut.parquet", "not a readable Parquet file"]);
    fails(&formats_fixture("no_prompt.parquet"), &["no_prompt.parquet", "\"question\", \"answer\"", "--prompt-field"]);
    fails(
        &formats_fixture("null_completion.parquet"),
        &["null_completion.parquet: row 3 (row group 1, row 1)", "\"completion\"", "null"],
    );
    let csv = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let unbalanced = csv("quote.csv", "prompt,completion\na,b\n\"c,d\ne,f\n");
    fails(&unbalanced, &["quote.csv:3", "quoting"]);
    fails(&csv("empty.csv", "prompt,completion\na,b\nc,\n"), &["empty.csv:3", "\"completion\" is empty"]);
    fails(&csv("chat.csv", "messages\n[{\"role\": \"user\"\n"), &["chat.csv:2", "column \"messages\"", "JSON"]);
    fails(&csv("cols.csv", "q,a\nx,y\n"), &["cols.csv:2", "missing fields"]);
    let latin1 = tmp.path().join("latin1.csv");
    std::fs::write(&latin1, b"prompt,completion\na,b\nc,caf\xe9\n").unwrap();
    fails(&latin1, &["latin1.csv:3", "column \"completion\"", "not UTF-8"]);
}

#[test]
fn training_on_a_dataset_folder_hashes_every_shard_for_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(formats_fixture("pairs.parquet"), data.join("train-00000-of-00002.parquet")).unwrap();
    std::fs::copy(formats_fixture("pairs.csv"), data.join("train-00001-of-00002.csv")).unwrap();
    let (out, model) = (tmp.path().join("run"), fixture("tiny-llama"));
    let (out_s, model_s, data_s) = (out.to_str().unwrap(), model.to_str().unwrap(), data.to_str().unwrap());
    let args = ["train", "--model", model_s, "--data", data_s, "--output-dir", out_s, "--max-steps", "4"];
    let more = ["--batch-size", "4", "--lora-r", "2", "--save-every", "1", "--stop-after-steps", "2"];
    let (ok, _, err) = run_condlm(&[&args[..], &more].concat(), &[]);
    assert!(ok, "{err}");
    assert!(err.contains("train (") && err.contains(", split train): 12 rows"), "{err}");
    // The second shard changes: the resumed run must notice.
    let mut text = std::fs::read_to_string(data.join("train-00001-of-00002.csv")).unwrap();
    text.push_str("one more,\" row\"\n");
    std::fs::write(data.join("train-00001-of-00002.csv"), text).unwrap();
    let (ok, _, err) = run_condlm(&["train", "--resume", out_s], &[]);
    assert!(!ok && err.contains("data changed"), "{err}");
}

#[test]
fn generate_reads_parquet_and_csv_prompts_like_jsonl() {
    let model = fixture("tiny-llama");
    let generations = |file: &str| {
        let path = formats_fixture(file);
        let args = ["generate", "--model", model.to_str().unwrap(), "--data", path.to_str().unwrap()];
        let (ok, out, err) = run_condlm(&[&args[..], &["--max-new-tokens", "4"]].concat(), &[]);
        assert!(ok, "{file}: {err}");
        out.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["prompt"].clone(), v["completion"].clone(), v["generation"].clone())
            })
            .collect::<Vec<_>>()
    };
    let want = generations("pairs.jsonl");
    assert_eq!(want.len(), 6);
    for other in ["pairs.parquet", "pairs.csv", "pairs.tsv"] {
        assert_eq!(generations(other), want, "{other}");
    }
}
