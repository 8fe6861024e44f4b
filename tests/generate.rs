//! `condlm::generate` against transformers' `generate` (ids recorded by tests/fixtures/make_generate_fixtures.py),
//! the KV cache against the full forward pass, sampling filters against hand-computed distributions, and bad input.
mod common;
use common::{copy_fixture, decode_step_and_forward, fixture, long_context_llama};
use condlm::formats::load::{LoadedModel, load_model};
use condlm::formats::peft::load_adapter;
use condlm::generate::decoder::Decoder;
use condlm::generate::detok::Streamer;
use condlm::generate::sampling::{Scratch, draw, min_p, softmax, top_k, top_p, warp};
use condlm::generate::{
    BeamParams, EarlyStopping, Event, Finish, GenerateOptions, SamplingParams, Strategy, encode_prompt, generate,
};
use condlm::network::activations::Activations;
use condlm::network::batch::Row;
use condlm::network::device::Placement;
use serde_json::Value;
use std::collections::HashMap;

fn load(model: &str, adapter: Option<&str>) -> LoadedModel {
    let mut m = load_model(fixture(model).to_str().unwrap()).unwrap();
    if let Some(a) = adapter {
        load_adapter(&fixture(a), &mut m.model).unwrap();
    }
    m
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("generate/expected.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

/// The options transformers was called with.
fn options(case: &Value) -> GenerateOptions {
    let k = &case["kwargs"];
    let num_beams = k["num_beams"].as_u64().unwrap() as usize;
    let strategy = if num_beams > 1 {
        let early_stopping = match &k["early_stopping"] {
            Value::Bool(true) => EarlyStopping::True,
            Value::Bool(false) => EarlyStopping::False,
            Value::String(s) if s == "never" => EarlyStopping::Never,
            other => panic!("early_stopping {other}"),
        };
        Strategy::Beam(BeamParams {
            num_beams,
            length_penalty: k["length_penalty"].as_f64().unwrap_or(1.0),
            early_stopping,
        })
    } else {
        Strategy::Greedy
    };
    GenerateOptions {
        strategy,
        max_new_tokens: k["max_new_tokens"].as_u64().unwrap() as usize,
        repetition_penalty: k["repetition_penalty"].as_f64().unwrap_or(1.0) as f32,
        no_repeat_ngram_size: k["no_repeat_ngram_size"].as_u64().unwrap_or(0) as usize,
        stop_ids: ids(&case["stop_ids"]),
        stop_strings: vec![],
        batch: 1,
        prefill_tokens: 512,
        device: Placement::Cpu,
    }
}

/// Every recorded case, each prompt alone (batch 1) and all prompts of the same settings together (batch 4,
/// continuous batching with prefill of new prompts mixed into decode steps): identical token ids.
#[test]
fn ids_match_transformers_greedy_and_beam_search() {
    let cases = cases();
    let mut models: HashMap<String, LoadedModel> = HashMap::new();
    // Cases with the same model, adapter and options, in order.
    let mut groups: Vec<(String, Option<String>, GenerateOptions, Vec<&Value>)> = Vec::new();
    let (mut n, mut stops) = (0, 0);
    for c in &cases {
        let (model, adapter) = (c["model"].as_str().unwrap().to_string(), c["adapter"].as_str().map(str::to_owned));
        let key = format!("{model}+{adapter:?}");
        let m = models.entry(key.clone()).or_insert_with(|| load(&model, adapter.as_deref()));
        let prompt = encode_prompt(&m.tokenizer, c["prompt"].as_str().unwrap()).unwrap();
        assert_eq!(prompt, ids(&c["prompt_ids"]), "{}: prompt ids", c["name"]);
        let opts = options(c);
        let got = generate(&m.model, &m.tokenizer, &[prompt], &opts, |_| {}).unwrap();
        let want = ids(&c["output_ids"]);
        assert_eq!(got[0].ids, want, "{}: generated ids differ from transformers", c["name"]);
        let stopped = c["finish"] == "stop";
        assert_eq!(matches!(got[0].finish, Finish::Eos | Finish::StopId), stopped, "{}", c["name"]);
        n += 1;
        stops += stopped as usize;
        match groups.last_mut() {
            Some(g) if g.0 == model && g.1 == adapter && g.2 == opts => g.3.push(c),
            _ => groups.push((model, adapter, opts, vec![c])),
        }
    }
    assert!(n >= 140 && stops >= 20, "{n} cases, {stops} stopping early");
    let mut devices = 0;
    for (model, adapter, mut opts, group) in groups {
        let m = &models[&format!("{model}+{adapter:?}")];
        let prompts: Vec<Vec<u32>> = group.iter().map(|c| ids(&c["prompt_ids"])).collect();
        opts.batch = 4;
        opts.prefill_tokens = 64;
        let got = generate(&m.model, &m.tokenizer, &prompts, &opts, |_| {}).unwrap();
        for (g, c) in got.iter().zip(&group) {
            assert_eq!(g.ids, ids(&c["output_ids"]), "{} (batched): generated ids differ", c["name"]);
        }
        // The device path (`--device`, here on the reference backend), LongRoPE's sequences that grow past the
        // original context included.
        devices += m.model.config.longrope.is_some() as usize;
        let opts = GenerateOptions { device: Placement::Reference, ..opts };
        let got = generate(&m.model, &m.tokenizer, &prompts, &opts, |_| {}).unwrap();
        for (g, c) in got.iter().zip(&group) {
            assert_eq!(g.ids, ids(&c["output_ids"]), "{} (batched, device path): generated ids differ", c["name"]);
        }
    }
    assert!(devices > 0, "no LongRoPE case ran on the device path");
}

/// Decoding with the cache gives the logits of a full forward pass over the whole sequence, at every step, for
/// every architecture (and LoRA unmerged, and GGUF); several prompts prefilled in one call.
#[test]
fn kv_cache_logits_match_full_forward_at_every_step() {
    let specs: &[(&str, Option<&str>)] = &[
        ("tiny-llama", None),
        ("tiny-qwen2", None),
        ("tiny-gpt2", None),
        ("tiny-llama", Some("train/tiny-llama-lora-init")),
        ("tiny-qwen2", Some("train/tiny-qwen2-lora-init")),
        ("tiny-gpt2", Some("train/tiny-gpt2-lora-init")),
        ("tiny-llama-gguf/tiny-llama.gguf", None),
        ("tiny-qwen3", Some("tiny-qwen3/lora-init")),
        ("tiny-smollm3", None),
        ("tiny-gemma3", Some("tiny-gemma3/lora-init")),
        ("tiny-mistral", None),
        ("tiny-phi3", Some("tiny-phi3/lora-init")),
        ("tiny-phi4", None),
        ("tiny-qwen3-yarn", Some("tiny-qwen3-yarn/lora-init")),
        ("tiny-olmo2", Some("tiny-olmo2/lora-init")),
        ("tiny-olmo3", None),
        ("tiny-qwen35", Some("tiny-qwen35/lora-init")),
    ];
    for &(spec, adapter) in specs {
        let m = load(spec, adapter);
        let (model, vocab) = (&m.model, m.model.config.vocab_size);
        // Prompts of 1 to ~80 tokens: single rows, a short run, and a prefill long enough for two GEMM tiles.
        let long = "name: Blue Spice, eatType: coffee shop, area: city centre. A coffee shop in the city centre area \
                    called Blue Spice, near the river. It is family friendly.";
        let prompts: Vec<Vec<u32>> = ["name: Blue Spice, eatType: coffee shop", "Café £30", "x", long]
            .iter()
            .map(|p| m.tokenizer.encode(p).unwrap())
            .collect();
        let steps = 12;
        assert!(prompts[3].len() > 64, "{} tokens", prompts[3].len());
        let mut dec = Decoder::new(model, prompts.len(), 110, 160).unwrap();
        let mut seqs = prompts.clone();
        let mut acts = Activations::default();
        let mut worst = 0.0f32;
        for step in 0..=steps {
            let (got, want) = decode_step_and_forward(&mut dec, model, &seqs, step == 0, &mut acts);
            for (s, seq) in seqs.iter_mut().enumerate() {
                let (g, w) = (&got[s * vocab..][..vocab], &want[s * vocab..][..vocab]);
                let diff = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                worst = worst.max(diff);
                assert!(diff <= 1e-4, "{spec} {adapter:?} seq {s} step {step}: max |Δ logit| {diff}");
                // Continue with a token that is not the argmax half of the time, to leave the greedy path.
                let t = condlm::generate::sampling::argmax(g) as u32;
                seq.push(if step % 2 == 0 { t } else { (t * 7 + 3) % vocab as u32 });
            }
        }
        eprintln!("{spec} {adapter:?}: max |Δ logit| over {steps} steps: {worst:e}");
    }
}

#[test]
fn sampling_is_reproducible_and_independent_of_batching() {
    let m = load("tiny-llama", None);
    let prompts: Vec<Vec<u32>> = ["name: The", "name: Blue Spice, eatType: pub", "Café"]
        .iter()
        .map(|p| encode_prompt(&m.tokenizer, p).unwrap())
        .collect();
    let mut opts = GenerateOptions::greedy(20, m.tokenizer.eos_id);
    let params = SamplingParams { temperature: 0.9, top_k: 50, top_p: 0.95, min_p: 0.02, seed: 7 };
    opts.strategy = Strategy::Sample(params);
    let run = |opts: &GenerateOptions| generate(&m.model, &m.tokenizer, &prompts, opts, |_| {}).unwrap();
    let a = run(&opts);
    assert_eq!(a, run(&opts), "same seed, same output");
    opts.batch = 3;
    assert_eq!(a, run(&opts), "batching must not change draws");
    opts.strategy = Strategy::Sample(SamplingParams { seed: 8, ..params });
    let b = run(&opts);
    assert_ne!(a.iter().map(|g| &g.ids).collect::<Vec<_>>(), b.iter().map(|g| &g.ids).collect::<Vec<_>>());
    // Sampling differs from greedy decoding (temperature 0.9 over a random model's flat distribution).
    let greedy = run(&GenerateOptions::greedy(20, m.tokenizer.eos_id));
    assert_ne!(a[0].ids, greedy[0].ids);
}

/// Distribution p = softmax(ln q) = q for q = [0.05, 0.4, 0.1, 0.3, 0.15].
fn q_scores() -> Vec<f32> {
    [0.05f32, 0.4, 0.1, 0.3, 0.15].iter().map(|q| q.ln()).collect()
}

fn kept(scores: &[f32]) -> Vec<usize> {
    (0..scores.len()).filter(|&i| scores[i] > f32::NEG_INFINITY).collect()
}

fn assert_probs(scores: &[f32], want: &[f64]) {
    for (i, (g, w)) in softmax(scores).iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-6, "p[{i}] = {g}, want {w}");
    }
}

#[test]
fn top_k_top_p_min_p_match_hand_computed_distributions() {
    let mut s = Scratch::new(5);
    // top-k 2: {1: 0.4, 3: 0.3} renormalised to 4/7, 3/7.
    let mut x = q_scores();
    top_k(&mut x, 2, &mut s);
    assert_eq!(kept(&x), vec![1, 3]);
    assert_probs(&x, &[0.0, 4.0 / 7.0, 0.0, 3.0 / 7.0, 0.0]);
    // top-p 0.75: sorted 0.4, 0.3 (0.7 < 0.75), 0.15 (0.85 ≥ 0.75) → keep {1, 3, 4}.
    let mut x = q_scores();
    top_p(&mut x, 0.75, &mut s);
    assert_eq!(kept(&x), vec![1, 3, 4]);
    assert_probs(&x, &[0.0, 0.4 / 0.85, 0.0, 0.3 / 0.85, 0.15 / 0.85]);
    // top-p 0.65: 0.4, then 0.3 reaches 0.7 ≥ 0.65 → {1, 3}; top-p 0.3: the top token alone.
    let mut x = q_scores();
    top_p(&mut x, 0.65, &mut s);
    assert_eq!(kept(&x), vec![1, 3]);
    let mut x = q_scores();
    top_p(&mut x, 0.3, &mut s);
    assert_eq!(kept(&x), vec![1]);
    // min-p 0.3: threshold 0.3·0.4 = 0.12 → keep 0.4, 0.3, 0.15.
    let mut x = q_scores();
    min_p(&mut x, 0.3);
    assert_eq!(kept(&x), vec![1, 3, 4]);
    // min-p 0.3 after temperature 2: p ∝ √q; threshold 0.3·√0.4 ≈ 0.1897 (in √-units): √0.05 = 0.224 stays.
    let mut x = q_scores();
    warp(&mut x, &SamplingParams { temperature: 2.0, min_p: 0.3, ..Default::default() }, &mut s);
    assert_eq!(kept(&x), vec![0, 1, 2, 3, 4]);
    let sq: Vec<f64> = [0.05f64, 0.4, 0.1, 0.3, 0.15].iter().map(|q| q.sqrt()).collect();
    let z: f64 = sq.iter().sum();
    assert_probs(&x, &sq.iter().map(|v| v / z).collect::<Vec<_>>());
    // transformers' order: top-k 3 → {1, 3, 4} (0.4, 0.3, 0.15 → 0.47, 0.35, 0.18), then top-p 0.8 → {1, 3}.
    let mut x = q_scores();
    warp(&mut x, &SamplingParams { top_k: 3, top_p: 0.8, ..Default::default() }, &mut s);
    assert_eq!(kept(&x), vec![1, 3]);
    assert_probs(&x, &[0.0, 4.0 / 7.0, 0.0, 3.0 / 7.0, 0.0]);
    // Draws follow the kept distribution: u below 4/7 → token 1, above → token 3.
    assert_eq!(draw(&x, 0.57), 1);
    assert_eq!(draw(&x, 0.58), 3);
    // Empirical frequencies of 20k seeded draws match p within 1.5 %.
    let mut counts = [0usize; 5];
    for i in 0..20_000 {
        counts[draw(&x, condlm::rng::uniform(3, 0, i))] += 1;
    }
    assert!((counts[1] as f64 / 20_000.0 - 4.0 / 7.0).abs() < 0.015, "{counts:?}");
    assert_eq!(counts[0] + counts[2] + counts[4], 0);
}

#[test]
fn stop_strings_cut_the_text_and_streaming_agrees() {
    let m = load("tiny-llama", None);
    let prompt = encode_prompt(&m.tokenizer, "name: Blue Spice, eatType: coffee shop").unwrap();
    let free = generate(&m.model, &m.tokenizer, std::slice::from_ref(&prompt), &GenerateOptions::greedy(24, 2), |_| {})
        .unwrap()
        .remove(0);
    assert_eq!(free.finish, Finish::Length);
    // A stop string from the middle of the free-running text.
    let chars: Vec<char> = free.text.chars().collect();
    let mid = chars.len() / 2;
    let stop: String = chars[mid..mid + 3].iter().collect();
    let cut = &free.text[..free.text.find(&stop).unwrap()];
    let mut opts = GenerateOptions::greedy(24, 2);
    opts.stop_strings = vec![stop.clone(), "never appears ∑".into()];
    let mut streamed = String::new();
    let g = generate(&m.model, &m.tokenizer, &[prompt], &opts, |e| {
        if let Event::Text { text, .. } = e {
            streamed.push_str(text);
        }
    })
    .unwrap()
    .remove(0);
    assert_eq!(g.finish, Finish::StopString);
    assert_eq!(g.text, cut, "text stops before the stop string {stop:?}");
    assert_eq!(streamed, cut, "streamed text must not show the stop string");
    // The ids run up to the token that completed the stop string.
    assert!(free.ids.starts_with(&g.ids) && g.ids.len() < free.ids.len());
    let before = m.tokenizer.decode(&g.ids[..g.ids.len() - 1]).unwrap();
    assert!(!before.contains(&stop) && m.tokenizer.decode(&g.ids).unwrap().contains(&stop));
}

#[test]
fn beam_search_stops_at_stop_strings() {
    let m = load("tiny-gpt2", None);
    let prompt = encode_prompt(&m.tokenizer, "name: The Eagle, eatType: coffee shop").unwrap();
    let beam = Strategy::Beam(BeamParams { num_beams: 4, length_penalty: 1.0, early_stopping: EarlyStopping::True });
    let opts = GenerateOptions { strategy: beam, stop_ids: vec![], ..GenerateOptions::greedy(20, 0) };
    let free = generate(&m.model, &m.tokenizer, std::slice::from_ref(&prompt), &opts, |_| {}).unwrap().remove(0);
    assert_eq!(free.finish, Finish::Length);
    let chars: Vec<char> = free.text.chars().collect();
    let stop: String = chars[chars.len() / 3..chars.len() / 3 + 2].iter().collect();
    let opts = GenerateOptions { stop_strings: vec![stop.clone()], ..opts };
    let g = generate(&m.model, &m.tokenizer, &[prompt], &opts, |_| {}).unwrap().remove(0);
    // Hypotheses that meet the stop string finish there; here the best one is such a hypothesis.
    assert_eq!(g.finish, Finish::StopString);
    assert!(!g.text.contains(&stop), "{:?} contains {stop:?}", g.text);
    let full = m.tokenizer.decode(&g.ids).unwrap();
    assert!(full.contains(&stop) && full.starts_with(&g.text));
    assert!(!m.tokenizer.decode(&g.ids[..g.ids.len() - 1]).unwrap().contains(&stop));
}

#[test]
fn streaming_handles_characters_split_across_tokens() {
    let m = load("tiny-llama", None);
    let text = "Café £30 — naïve 日本語 🙂 done";
    let ids = m.tokenizer.encode(text).unwrap();
    // The byte-level vocabulary splits these characters: some tokens are not valid UTF-8 alone.
    assert!(ids.iter().any(|&t| m.tokenizer.decode(&[t]).unwrap().contains('\u{FFFD}')));
    let mut s = Streamer::new(&m.tokenizer, &[]);
    let mut out = String::new();
    for &t in &ids {
        s.push(t).unwrap();
        let piece = s.printable(false);
        assert!(!piece.contains('\u{FFFD}'), "emitted a broken character: {piece:?}");
        out.push_str(piece);
    }
    s.flush().unwrap();
    out.push_str(s.printable(true));
    assert_eq!(out, text);
    // Held back while the end could start a stop string, released when it does not.
    let stop = vec!["£30 —".to_string()];
    let mut s = Streamer::new(&m.tokenizer, &stop);
    let mut out = String::new();
    for &t in &ids {
        if s.push(t).unwrap() {
            break;
        }
        out.push_str(s.printable(false));
        assert!(!out.contains('£'), "{out:?}");
    }
    out.push_str(s.printable(true));
    assert_eq!(out, "Café ");
    assert_eq!(s.text(), "Café ");
}

#[test]
fn bad_input_gives_clear_errors() {
    let m = load("tiny-llama", None);
    let (model, tok) = (&m.model, &m.tokenizer);
    let opts = GenerateOptions::greedy(8, tok.eos_id);
    // Empty prompt, tokenizer without BOS.
    assert!(tok.prefix.is_empty());
    let e = encode_prompt(tok, "").unwrap_err().to_string();
    assert!(e.contains("empty") && e.contains("BOS"), "{e}");
    let e = generate(model, tok, &[vec![]], &opts, |_| {}).unwrap_err().to_string();
    assert!(e.contains("prompt 0 is empty"), "{e}");
    // Prompt as long as the context window (128): no room to generate.
    let long = vec![5u32; model.config.max_positions];
    let e = generate(model, tok, &[vec![5, 6], long], &opts, |_| {}).unwrap_err().to_string();
    assert!(e.contains("prompt 1 has 128 tokens") && e.contains("context window is 128"), "{e}");
    // A prompt that fits but leaves fewer positions than max_new_tokens stops at the window.
    let near = vec![5u32; model.config.max_positions - 3];
    let no_stop = GenerateOptions { stop_ids: vec![], ..GenerateOptions::greedy(50, 0) };
    let g = generate(model, tok, &[near], &no_stop, |_| {}).unwrap();
    assert_eq!((g[0].ids.len(), g[0].finish), (3, Finish::Length));
    // Stop strings: empty, or not producible by the tokenizer.
    let mut o = opts.clone();
    o.stop_strings = vec![String::new()];
    let e = generate(model, tok, &[vec![5]], &o, |_| {}).unwrap_err().to_string();
    assert!(e.contains("stop string is empty"), "{e}");
    let word_level = tokenizers::Tokenizer::from_bytes(
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"[UNK]":0,"a":1,"b":2},"unk_token":"[UNK]"}}"#,
    )
    .unwrap();
    let wl = condlm::tokenizer::TextTokenizer::new(word_level, 0, None, None).unwrap();
    let e = condlm::generate::detok::check_stop_strings(&wl, &["zz".to_string()]).unwrap_err().to_string();
    assert!(e.contains("cannot be produced"), "{e}");
    // Out-of-vocabulary ids and bad settings.
    let e = generate(model, tok, &[vec![5, 999]], &opts, |_| {}).unwrap_err().to_string();
    assert!(e.contains("token id 999"), "{e}");
    let mut o = opts.clone();
    o.stop_ids.push(400);
    assert!(generate(model, tok, &[vec![5]], &o, |_| {}).unwrap_err().to_string().contains("stop token id 400"));
    let mut o = opts.clone();
    o.strategy = Strategy::Sample(SamplingParams { temperature: 0.0, ..Default::default() });
    assert!(generate(model, tok, &[vec![5]], &o, |_| {}).unwrap_err().to_string().contains("temperature"));
    o.strategy = Strategy::Sample(SamplingParams { top_p: 0.0, ..Default::default() });
    assert!(generate(model, tok, &[vec![5]], &o, |_| {}).unwrap_err().to_string().contains("top-p"));
    o.strategy = Strategy::Beam(BeamParams { num_beams: 1, length_penalty: 1.0, early_stopping: EarlyStopping::True });
    assert!(generate(model, tok, &[vec![5]], &o, |_| {}).unwrap_err().to_string().contains("at least 2 beams"));
    let mut o = opts.clone();
    o.max_new_tokens = 0;
    assert!(generate(model, tok, &[vec![5]], &o, |_| {}).unwrap_err().to_string().contains("at least 1"));
}

#[global_allocator]
static ALLOC: common::alloc_count::Counting = common::alloc_count::Counting;

/// Once the decoder and the processors' scratch exist, decode steps (forward over the cache, LoRA unmerged,
/// repetition penalty, n-gram blocking, temperature/top-k/top-p/min-p, draw) allocate nothing.
#[test]
fn decode_steps_allocate_nothing() {
    decode_steps_allocate_nothing_with("tiny-llama", "train/tiny-llama-lora-init");
    // Qwen3.5: its Gated DeltaNet layers decode from their slots' states
    decode_steps_allocate_nothing_with("tiny-qwen35", "tiny-qwen35/lora-init");
}

fn decode_steps_allocate_nothing_with(model: &str, adapter: &str) {
    let m = load(model, Some(adapter));
    let pool = common::alloc_count::counted_pool();
    let vocab = m.model.config.vocab_size;
    let params = SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.9, min_p: 0.01, seed: 1 };
    let (allocs, steps) = pool.install(|| {
        let mut dec = Decoder::new(&m.model, 3, 100, 64).unwrap();
        let mut s = Scratch::new(vocab);
        let mut seqs: Vec<Vec<u32>> = (0..3).map(|_| Vec::with_capacity(100)).collect();
        for (i, q) in seqs.iter_mut().enumerate() {
            q.extend([5 + i as u32, 40, 41, 42]);
        }
        let mut rows = Vec::with_capacity(64);
        let mut logit_rows = Vec::with_capacity(3);
        let mut work = vec![0.0f32; 3 * vocab];
        let mut run = |seqs: &mut Vec<Vec<u32>>, prefill: bool| {
            rows.clear();
            logit_rows.clear();
            for (k, q) in seqs.iter().enumerate() {
                let from = if prefill { 0 } else { q.len() - 1 };
                for (pos, &token) in q.iter().enumerate().skip(from) {
                    rows.push(Row { slot: k as u32, pos: pos as u32, token });
                }
                logit_rows.push(rows.len() - 1);
            }
            let l = dec.forward(&rows, &logit_rows).unwrap();
            work[..l.len()].copy_from_slice(l);
            for (k, q) in seqs.iter_mut().enumerate() {
                let w = &mut work[k * vocab..][..vocab];
                condlm::generate::sampling::repetition_penalty(w, q, 1.2, &mut s);
                condlm::generate::sampling::no_repeat_ngram(w, q, 3);
                warp(w, &params, &mut s);
                let t = draw(w, condlm::rng::uniform(1, k as u64, q.len() as u64));
                q.push(t as u32);
            }
        };
        run(&mut seqs, true);
        for _ in 0..3 {
            run(&mut seqs, false); // LoRA scratch reaches its size
        }
        let steps = 40;
        common::alloc_count::allocations_in(|| {
            for _ in 0..steps {
                run(&mut seqs, false);
            }
            steps
        })
    });
    assert_eq!(allocs, 0, "{model}: {allocs} heap allocations in {steps} decode steps");
}

fn condlm_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_condlm")).args(["--threads", "2"]).args(args).output().unwrap()
}

#[test]
fn cli_streams_a_prompt_and_generates_for_rows() {
    let m = load("tiny-llama", None);
    let model = fixture("tiny-llama");
    let model = model.to_str().unwrap();
    let prompt = "name: Blue Spice, eatType: coffee shop";
    let ids = encode_prompt(&m.tokenizer, prompt).unwrap();
    let want = generate(&m.model, &m.tokenizer, &[ids], &GenerateOptions::greedy(12, m.tokenizer.eos_id), |_| {})
        .unwrap()
        .remove(0);
    let out = condlm_cli(&["generate", "--model", model, "--prompt", prompt, "--max-new-tokens", "12"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{}\n", want.text));
    assert!(stderr.contains("new tokens, finish: length") && stderr.contains("decode"), "{stderr}");

    // --data: rows keep their other fields; ids equal the library's; batching does not change them; a repeated
    // prompt is decoded once and its output given to each of its rows.
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.jsonl");
    let prompts = ["name: The Eagle", "name: Blue Spice, area: riverside", "name: The Eagle", "Café £"];
    let text: String =
        prompts.iter().enumerate().map(|(i, p)| format!("{{\"prompt\": {p:?}, \"id\": {i}}}\n")).collect();
    std::fs::write(&rows, text).unwrap();
    let dst = dir.path().join("gen.jsonl");
    let out = condlm_cli(&[
        "generate",
        "--model",
        model,
        "--data",
        rows.to_str().unwrap(),
        "--out",
        dst.to_str().unwrap(),
        "--ids",
        "--batch",
        "2",
        "--max-new-tokens",
        "10",
        "--num-beams",
        "3",
        "--length-penalty",
        "0.9",
        "--no-repeat-ngram-size",
        "3",
        "--early-stopping",
        "true",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("4 rows (3 distinct prompts)"), "{stderr}");
    let got: Vec<Value> =
        std::fs::read_to_string(&dst).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got.len(), prompts.len());
    let opts = GenerateOptions {
        strategy: Strategy::Beam(BeamParams { num_beams: 3, length_penalty: 0.9, early_stopping: EarlyStopping::True }),
        no_repeat_ngram_size: 3,
        ..GenerateOptions::greedy(10, m.tokenizer.eos_id)
    };
    for (i, (row, p)) in got.iter().zip(prompts).enumerate() {
        let ids = encode_prompt(&m.tokenizer, p).unwrap();
        let want = generate(&m.model, &m.tokenizer, std::slice::from_ref(&ids), &opts, |_| {}).unwrap().remove(0);
        assert_eq!(row["id"], i);
        assert_eq!(row["prompt"], p);
        assert_eq!(self::ids(&row["prompt_ids"]), ids);
        assert_eq!(self::ids(&row["generated_ids"]), want.ids);
        assert_eq!(row["generation"], want.text.as_str());
        assert_eq!(row["finish_reason"], want.finish.as_str());
        assert_eq!(row["new_tokens"], want.ids.len());
        assert!(row["score"].is_number());
    }
}

/// A large negative --length-penalty drives normalised scores below transformers' −1e9 placeholder
/// (`sum · L^4`); the search must still run to a real hypothesis (here the length limit, with --ignore-eos) rather
/// than stop early and report the running beam as "length".
#[test]
fn beam_search_with_a_large_negative_length_penalty_ends_at_a_real_hypothesis() {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.jsonl");
    std::fs::write(&rows, "{\"prompt\": \"hi\"}\n").unwrap();
    let model = fixture("tiny-llama");
    // −40: `sum · 100^40` is far outside f32's range as well.
    for (lp, below) in [("-4", -1e9), ("-40", -1e80)] {
        let dst = dir.path().join(format!("gen{lp}.jsonl"));
        let out = condlm_cli(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--data",
            rows.to_str().unwrap(),
            "--out",
            dst.to_str().unwrap(),
            "--num-beams",
            "3",
            "--length-penalty",
            lp,
            "--max-new-tokens",
            "100",
            "--ignore-eos",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let row: Value = serde_json::from_str(std::fs::read_to_string(&dst).unwrap().trim()).unwrap();
        assert_eq!(row["new_tokens"], 100, "{row}");
        assert_eq!(row["finish_reason"], "length");
        assert!(row["score"].as_f64().unwrap() < below, "the regime under test: {row}");
    }
}

#[test]
fn cli_chat_renders_the_template_like_transformers() {
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny-qwen2/expected.json")).unwrap()).unwrap();
    let chat = &exp["chat_template"];
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.jsonl");
    std::fs::write(&rows, format!("{{\"prompt\": {}}}\n", chat["messages"][0]["content"])).unwrap();
    let dst = dir.path().join("gen.jsonl");
    let model = fixture("tiny-qwen2");
    let out = condlm_cli(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--chat",
        "--data",
        rows.to_str().unwrap(),
        "--out",
        dst.to_str().unwrap(),
        "--ids",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0.7",
        "--top-p",
        "0.9",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let row: Value = serde_json::from_str(std::fs::read_to_string(&dst).unwrap().trim()).unwrap();
    assert_eq!(
        ids(&row["prompt_ids"]),
        ids(&chat["generation_prompt_ids"]),
        "chat prompt ids differ from transformers'"
    );
    // tiny-gpt2 has no chat template: a clear error.
    let out = condlm_cli(&["generate", "--model", fixture("tiny-gpt2").to_str().unwrap(), "--chat", "--prompt", "hi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no chat template"), "{stderr}");
}

/// Chat and Alpaca rows are continued from the ids training puts before their completion: transformers'
/// generation prompt for a one-turn chat, and `score --per-token`'s context of the last reply for a longer one.
#[test]
fn chat_and_alpaca_rows_are_continued_where_training_put_their_completion() {
    let exp: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny-llama/expected.json")).unwrap()).unwrap();
    let chat = &exp["chat_template"];
    let (user, reply) = (&chat["messages"][0], &chat["messages"][1]);
    let longer = serde_json::json!([{"role": "system", "content": "Be brief."}, user, reply,
        {"role": "user", "content": "and the food?"}, {"role": "assistant", "content": "Italian."}]);
    let alpaca = serde_json::json!({"instruction": "Describe it.", "input": "name: Blue Spice"});
    // TRL's conversational prompt/completion: the prompt's answer is context, the completion's the target.
    let conversational = serde_json::json!({"prompt": longer.as_array().unwrap()[..4], "completion": [longer[4]]});
    let rows = [
        serde_json::json!({"messages": chat["messages"]}),
        serde_json::json!({"messages": [user]}),
        serde_json::json!({"messages": longer}),
        alpaca.clone(),
        conversational.clone(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rows.jsonl");
    std::fs::write(&data, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let (gen_out, score_out) = (dir.path().join("gen.jsonl"), dir.path().join("score.jsonl"));
    // Alpaca's prompt is longer than the fixture's 128 positions.
    let model = long_context_llama(dir.path());
    let model = model.to_str().unwrap();
    let (d, g) = (data.to_str().unwrap(), gen_out.to_str().unwrap());
    let out = condlm_cli(&["generate", "--model", model, "--data", d, "--out", g, "--ids", "--max-new-tokens", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gen_rows: Vec<Value> =
        std::fs::read_to_string(&gen_out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(ids(&gen_rows[0]["prompt_ids"]), ids(&chat["generation_prompt_ids"]), "chat ending in a reply");
    assert_eq!(ids(&gen_rows[1]["prompt_ids"]), ids(&chat["generation_prompt_ids"]), "chat ending in a user turn");
    assert_eq!(gen_rows[2]["messages"], longer, "the row's fields are written back");
    // Training's context of the last reply: score's ids before the last run of target positions.
    let mut answered = alpaca.clone();
    answered["output"] = "Blue Spice.".into();
    let scored = [&rows[2], &answered, &conversational];
    std::fs::write(&data, scored.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let s = score_out.to_str().unwrap();
    let out = condlm_cli(&["score", "--model", model, "--data", d, "--out", s, "--per-token"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let score_rows: Vec<Value> =
        std::fs::read_to_string(&score_out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last_run = |scored: &Value| {
        let positions = ids(&scored["target_positions"]);
        let start = positions.iter().rposition(|&p| positions.first() != Some(&p) && !positions.contains(&(p - 1)));
        positions[start.unwrap_or(0)..].to_vec()
    };
    for (scored, generated) in score_rows.iter().zip([&gen_rows[2], &gen_rows[3], &gen_rows[4]]) {
        let start = last_run(scored)[0] as usize;
        assert_eq!(ids(&generated["prompt_ids"]), ids(&scored["ids"])[..start], "{}", scored["source"]);
    }
    // The conversational row is the chat with its last answer alone as the target.
    assert_eq!(score_rows[2]["ids"], score_rows[0]["ids"]);
    assert_eq!(ids(&score_rows[2]["target_positions"]), last_run(&score_rows[0]));
}

#[test]
fn cli_help_documents_every_flag_with_its_default_and_rejects_bad_flags() {
    let out = condlm_cli(&["generate", "--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--adapter",
        "--prompt",
        "--data",
        "--prompt-field",
        "--out",
        "--chat",
        "--max-new-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--min-p",
        "--seed",
        "--repetition-penalty",
        "--no-repeat-ngram-size",
        "--num-beams",
        "--length-penalty",
        "--early-stopping",
        "--stop <",
        "--stop-id",
        "--ignore-eos",
        "--batch",
        "--ids",
        "--compute",
    ] {
        let at = help.find(&format!("\n      {flag}")).unwrap_or_else(|| panic!("{flag} missing from --help")) + 7;
        let entry = &help[at..];
        let end = entry[2..].find("\n      --").map_or(entry.len(), |e| e + 2);
        assert!(entry[..end].contains("[default: "), "{flag} has no default in --help: {}", &entry[..end]);
    }
    let model = fixture("tiny-llama");
    let model = model.to_str().unwrap();
    let out = condlm_cli(&["generate", "--model", model, "--prompt", "x", "--top-k", "5"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("set --temperature > 0"));
    let out = condlm_cli(&["generate", "--model", model, "--prompt", ""]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("prompt is empty"));
    let out = condlm_cli(&["generate", "--model", model, "--prompt", "x", "--stop", ""]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop string is empty"));
}

/// `--compute int8` runs the integer kernels on a block-quantized base (the fixture's Q8_0 matrices; their
/// numbers are tested in `kernels::quant_dot`); both computes print the memory plan with the KV cache.
#[test]
fn cli_int8_compute_generates_and_prints_the_memory_plan() {
    let model = fixture("tiny-llama-gguf/tiny-llama.gguf");
    let run = |compute: &str| {
        let args = ["generate", "--model", model.to_str().unwrap(), "--prompt", "hello", "--max-new-tokens", "6"];
        let out = condlm_cli(&[&args[..], &["--compute", compute, "--ignore-eos"]].concat());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "--compute {compute}: {err}");
        assert!(err.contains("KV cache") && err.contains("1 sequence ×"), "{err}");
        assert!(err.contains("+ 6 new tokens"), "{err}");
    };
    run("int8");
    run("f32");
    let out = condlm_cli(&["generate", "--model", model.to_str().unwrap(), "--prompt", "x", "--compute", "int4"]);
    assert!(!out.status.success());
}

/// A chat template that does not compile stops only what needs it: text prompts are still continued.
#[test]
fn a_broken_chat_template_stops_only_chat_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_fixture("tiny-qwen2", &dir.path().join("m"));
    std::fs::write(model.join("chat_template.jinja"), "{% for m in messages %}{{ m.content }").unwrap();
    let m = model.to_str().unwrap();
    let out = condlm_cli(&["generate", "--model", m, "--prompt", "name: Blue Spice", "--max-new-tokens", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = condlm_cli(&["generate", "--model", m, "--chat", "--prompt", "hi", "--max-new-tokens", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("chat template"), "{stderr}");
}

/// `--prompt-field` names the rows' x as train's does: the same prompt ids from a renamed field.
#[test]
fn a_renamed_prompt_field_gives_the_same_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama");
    let m = model.to_str().unwrap();
    let mut ids_of = vec![];
    for (field, row) in [("prompt", r#"{"prompt": "name: Blue Spice"}"#), ("q", r#"{"q": "name: Blue Spice"}"#)] {
        let (data, out) = (dir.path().join(format!("{field}.jsonl")), dir.path().join(format!("{field}-gen.jsonl")));
        std::fs::write(&data, row).unwrap();
        let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
        let args = ["generate", "--model", m, "--data", d, "--prompt-field", field, "--out", o, "--ids"];
        let run = condlm_cli(&[&args[..], &["--max-new-tokens", "2"]].concat());
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let row: Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
        ids_of.push(ids(&row["prompt_ids"]));
    }
    assert_eq!(ids_of[0], ids_of[1]);
    assert!(ids_of[0].len() > 1, "{:?}", ids_of[0]);
}
