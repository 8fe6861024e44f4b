//! Our forward pass against transformers on tiny random checkpoints (fixtures from make_fixtures.py):
//! full logits of a ragged batch run packed together, and log P(y | x) of real E2E rows.
mod common;
use common::{expected_json, fixture, max_abs_diff, reference_sequences};
use condlm::data::dataset::DataOptions;
use condlm::formats::load::load_model;
use condlm::kernels::lm_head::{HeadScratch, logits};
use condlm::network::activations::Activations;
use condlm::network::batch::PackedBatch;
use condlm::network::transformer::Mode;
use condlm::score::{OnCpu, load_rows, row_scores, score_encoded};

/// (fixture folder with expected files, --model argument)
const MODELS: &[(&str, &str)] = &[
    ("tiny-llama", "tiny-llama"),
    ("tiny-qwen2", "tiny-qwen2"),
    ("tiny-gpt2", "tiny-gpt2"),
    ("tiny-llama-sharded", "tiny-llama-sharded"),
    ("tiny-llama-gguf", "tiny-llama-gguf/tiny-llama.gguf"),
];

#[test]
fn packed_ragged_batch_logits_match_transformers() {
    for (dir, spec) in MODELS {
        let m = load_model(fixture(spec).to_str().unwrap()).unwrap();
        let refs = reference_sequences(dir);
        let seqs: Vec<Vec<u32>> = refs.iter().map(|(ids, _)| ids.clone()).collect();
        let batch = PackedBatch::new(&seqs);
        let mut acts = Activations::default();
        m.model.forward(&batch, &mut acts, Mode::Infer);
        let d = m.model.config.hidden_size;
        let rows: Vec<usize> = (0..batch.len()).collect();
        let ours = logits(&acts.x[..batch.len() * d], d, m.model.head(), &rows, &mut HeadScratch::default());
        let vocab = m.model.config.vocab_size;
        for ((_, want), range) in refs.iter().zip(&batch.seqs) {
            let got = &ours[range.start * vocab..range.end * vocab];
            let diff = max_abs_diff(got, want);
            eprintln!("{dir}: max |Δ logit| {diff:e}");
            assert!(diff <= 1e-4, "{dir}: max |Δ logit| = {diff}");
        }
    }
}

#[test]
fn score_matches_transformers_log_probs_and_token_ids() {
    for (dir, spec) in MODELS {
        let m = load_model(fixture(spec).to_str().unwrap()).unwrap();
        let exp = expected_json(dir);
        let opts = DataOptions { max_len: m.model.config.max_positions, ..DataOptions::default() };
        let enc = load_rows(&fixture("score_rows.jsonl"), &m.tokenizer, &opts).unwrap().examples;
        let lps = score_encoded(&mut OnCpu::new(&m.model), &enc, 3, |_| {}).unwrap();
        let scores = row_scores(&lps);
        for (k, want) in exp["score"]["rows"].as_array().unwrap().iter().enumerate() {
            let ids: Vec<u32> =
                want["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(enc[k].ids, ids, "{dir} row {k}: token ids differ from transformers");
            assert_eq!(enc[k].y_start(), want["n_prompt_tokens"].as_u64().unwrap() as usize, "{dir} row {k}");
            assert_eq!(scores[k].tokens, want["n_y_tokens"].as_u64().unwrap() as usize);
            for (t, w) in lps[k].iter().zip(want["token_logprobs"].as_array().unwrap()) {
                assert!((*t as f64 - w.as_f64().unwrap()).abs() < 1e-4, "{dir} row {k}: {t} vs {w}");
            }
            let total = want["total_logprob"].as_f64().unwrap();
            assert!((scores[k].logprob - total).abs() < 1e-3, "{dir} row {k}: {} vs {total}", scores[k].logprob);
        }
    }
}
