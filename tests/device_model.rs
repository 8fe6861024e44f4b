//! The model on a device (`network::device`, what `--device cuda` runs) composed on the reference backend (the CPU
//! kernels behind `kernels::backend`): its log-probs, LoRA gradients (with dropout) and AdamW steps must equal the
//! CPU path's (`Transformer` + `train::objective`), and its gradients PyTorch + PEFT's (tests/fixtures/train). On a
//! GPU the same composition runs on the CUDA kernels, each checked against these CPU kernels by
//! `condlm info --devices --check-kernels`.
mod common;
use common::device_steps::{cpu_step, device_step, grads, model, rows, targets, with_lora, with_lora_rank};
use common::{fixture, load_f32_tensors, rel_err};
use condlm::data::example::Example;
use condlm::formats::load::load_model;
use condlm::formats::peft::load_adapter;
use condlm::kernels::adamw::AdamWConfig;
use condlm::kernels::backend::host::Host;
use condlm::network::adapters::set_full_finetune;
use condlm::network::batch::PackedBatch;
use condlm::network::device::DeviceModel;
use condlm::score::{OnCpu, score_encoded};
use condlm::train::optim::{Moments, adamw_update};

/// The Llama-layout fixtures: Llama (tied head), Qwen2 (q/k/v biases), Mistral (sliding window of 4, GQA), Qwen3
/// (per-head q/k norms), Gemma 3 (q/k norms, post norms, (1 + w) norms, GeGLU, scaled embeddings, sliding layers
/// with their own RoPE base), Phi-3 (fused qkv and gate|up), Phi-4 (those, LongRoPE past 16 positions, 3/4 of
/// each head rotated), GPT-2 (LayerNorms, learned positions, GELU MLP, biases everywhere), Qwen3.5 (Gated DeltaNet
/// layers, attention with an output gate, (1 + w) norms, a quarter of each head rotated).
const MODELS: &[&str] = &[
    "tiny-llama",
    "tiny-qwen2",
    "tiny-mistral",
    "tiny-qwen3",
    "tiny-gemma3",
    "tiny-phi3",
    "tiny-phi4",
    "tiny-gpt2",
    "tiny-qwen35",
];

/// A fixture's batch: rows of {"input_ids", "n_prompt_tokens"}, as the PyTorch scripts wrote them.
fn fixture_rows(rows: &serde_json::Value) -> Vec<Example> {
    let row = |r: &serde_json::Value| {
        let ids = r["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        Example::pair(ids, r["n_prompt_tokens"].as_u64().unwrap() as usize)
    };
    rows.as_array().unwrap().iter().map(row).collect()
}

#[test]
fn device_logprobs_equal_the_cpu_path() {
    for name in MODELS {
        for m in [model(name), with_lora(model(name), 0.1)] {
            let rows = rows(m.config.vocab_size as u32);
            let cpu: Vec<f32> = score_encoded(&mut OnCpu::new(&m), &rows, 8, |_| {}).unwrap().concat();
            let mut dev = DeviceModel::new(Host, &m).unwrap();
            // Two batches, the larger first: the second reuses its buffers.
            for part in [&rows[..], &rows[1..3]] {
                let batch = PackedBatch::new(&part.iter().map(|e| e.ids.clone()).collect::<Vec<_>>());
                let (sel, t) = targets(part, &batch);
                let mut lp = vec![0.0; sel.len()];
                dev.forward(&batch, None).unwrap();
                dev.target_logprobs(&sel, &t, &mut lp).unwrap();
                // The second batch is rows 1 and 2: its targets follow row 0's.
                let want = if part.len() == rows.len() { &cpu[..] } else { &cpu[rows[0].n_targets()..][..lp.len()] };
                let e = rel_err(&lp, want);
                assert!(e < 1e-5, "{name}: device log-probs off the CPU path's by {e:e}");
            }
        }
    }
}

/// Inference runs every block on one layer's buffers, whose adapter slots must serve every block's: a Qwen3.5 whose
/// first layer is attention (tiny-qwen35's blocks rotated) has no Gated DeltaNet projection in_proj_a in block 0,
/// yet the later layers' in_proj_a adapters must apply (they were silently left out).
#[test]
fn device_logprobs_when_the_first_block_lacks_a_later_blocks_adapter_slot() {
    let rotated = |mut m: condlm::network::transformer::Transformer| {
        m.blocks.rotate_left(3);
        m.config.linear_layers.rotate_left(3);
        m
    };
    let m = with_lora(rotated(model("tiny-qwen35")), 0.0);
    assert!(!m.config.is_linear_layer(0) && m.config.is_linear_layer(1), "attention first, then a Gated DeltaNet");
    let rows = rows(m.config.vocab_size as u32);
    let cpu: Vec<f32> = score_encoded(&mut OnCpu::new(&m), &rows, 8, |_| {}).unwrap().concat();
    let batch = PackedBatch::new(&rows.iter().map(|e| e.ids.clone()).collect::<Vec<_>>());
    let (sel, t) = targets(&rows, &batch);
    let mut lp = vec![0.0; sel.len()];
    let mut dev = DeviceModel::new(Host, &m).unwrap();
    dev.forward(&batch, None).unwrap();
    dev.target_logprobs(&sel, &t, &mut lp).unwrap();
    let e = rel_err(&lp, &cpu);
    assert!(e < 1e-5, "device log-probs off the CPU path's by {e:e}");
}

/// Inference runs every block on one layer's buffers: an adapter on the later blocks only (PEFT's
/// `layers_to_transform`), the last at twice the rank (`rank_pattern`), must still be applied, in full — and so
/// when the pass runs on a training pass's buffers (a layer per block), as evaluation during training does.
#[test]
fn device_logprobs_with_adapters_on_some_layers_at_several_ranks() {
    for name in MODELS {
        let mut m = with_lora(model(name), 0.0);
        let mut wide = with_lora_rank(model(name), 0.0, 8);
        let last = m.blocks.len() - 1;
        assert!(last >= 1, "{name}: a fixture of one block");
        for (l, w) in m.blocks[last].linears_mut().zip(wide.blocks[last].linears_mut()) {
            l.lora = w.lora.take();
        }
        m.blocks[0].linears_mut().for_each(|l| l.lora = None);
        let rows = rows(m.config.vocab_size as u32);
        let cpu: Vec<f32> = score_encoded(&mut OnCpu::new(&m), &rows, 8, |_| {}).unwrap().concat();
        let base: Vec<f32> = score_encoded(&mut OnCpu::new(&model(name)), &rows, 8, |_| {}).unwrap().concat();
        assert!(rel_err(&cpu, &base) > 1e-3, "{name}: the adapters change nothing, so the check could not fail");
        let mut dev = DeviceModel::new(Host, &m).unwrap();
        let batch = PackedBatch::new(&rows.iter().map(|e| e.ids.clone()).collect::<Vec<_>>());
        let (sel, t) = targets(&rows, &batch);
        for pass in ["inference buffers", "a training step's buffers"] {
            if pass != "inference buffers" {
                device_step(&mut dev, &rows, 3, 0.0); // gradients only: the weights stay as they are
            }
            let mut lp = vec![0.0; sel.len()];
            dev.forward(&batch, None).unwrap();
            dev.target_logprobs(&sel, &t, &mut lp).unwrap();
            let e = rel_err(&lp, &cpu);
            assert!(e < 1e-5, "{name}, {pass}: device log-probs off the CPU path's by {e:e}");
        }
    }
}

#[test]
fn device_lora_gradients_equal_the_cpu_path_with_dropout() {
    for name in MODELS {
        let mut cpu = with_lora(model(name), 0.1);
        let rows = rows(cpu.config.vocab_size as u32);
        let mut dev = DeviceModel::new(Host, &cpu).unwrap();
        for (seed, smoothing) in [(5, 0.0), (6, 0.1)] {
            let want_loss = cpu_step(&mut cpu, &rows, seed, smoothing);
            let loss = device_step(&mut dev, &rows, seed, smoothing);
            assert!((loss - want_loss).abs() / want_loss < 1e-6, "{name}: loss {loss} vs CPU {want_loss}");
            let want = grads(&mut cpu);
            let mut copy = with_lora(model(name), 0.1);
            dev.download_into(&mut copy, true).unwrap();
            let got = grads(&mut copy);
            assert_eq!(got.len(), want.len(), "{name}: trainable tensors");
            let linears: usize = cpu.blocks.iter_mut().map(|b| b.linears_mut().count()).sum();
            assert_eq!(got.len(), 2 * linears, "{name}: A and B of every linear layer");
            for ((n, g), (_, w)) in got.iter().zip(&want) {
                let e = rel_err(g, w);
                assert!(e < 1e-5, "{name} seed {seed}: {n} gradient off the CPU path's by {e:e}");
            }
            cpu.params_mut().into_iter().for_each(|p| p.zero_grad());
            dev.adamw(&AdamWConfig::default(), 0.0, 1, None).unwrap(); // zeroes the device's gradients
        }
    }
}

/// A batch of more rows than the LM head computes at once (`HEAD_ROWS`): its chunks' losses gather in one buffer
/// at their rows' offsets, read once — log-probs, loss and gradients still the CPU path's.
#[test]
fn batches_past_one_head_chunk_equal_the_cpu_path() {
    let mut cpu = with_lora(model("tiny-llama"), 0.0);
    let vocab = cpu.config.vocab_size as u32;
    let rows: Vec<Example> = (0..12u32)
        .map(|r| Example::pair((0..100).map(|i| (i * 31 + r * 17 + 5) % vocab).collect(), 3 + r as usize))
        .collect();
    let total: usize = rows.iter().map(Example::n_targets).sum();
    assert!(total > 2 * condlm::network::device::buffers::HEAD_ROWS, "{total} targets: three chunks or more");
    let mut dev = DeviceModel::new(Host, &cpu).unwrap();
    let want_lp: Vec<f32> = score_encoded(&mut OnCpu::new(&cpu), &rows, 12, |_| {}).unwrap().concat();
    let batch = PackedBatch::new(&rows.iter().map(|e| e.ids.clone()).collect::<Vec<_>>());
    let (sel, t) = targets(&rows, &batch);
    let mut lp = vec![0.0; sel.len()];
    dev.forward(&batch, None).unwrap();
    dev.target_logprobs(&sel, &t, &mut lp).unwrap();
    assert!(rel_err(&lp, &want_lp) < 1e-5, "log-probs off by {:e}", rel_err(&lp, &want_lp));
    let (want_loss, loss) = (cpu_step(&mut cpu, &rows, 9, 0.0), device_step(&mut dev, &rows, 9, 0.0));
    assert!((loss - want_loss).abs() / want_loss < 1e-6, "loss {loss} vs CPU {want_loss}");
    let mut copy = with_lora(model("tiny-llama"), 0.0);
    dev.download_into(&mut copy, true).unwrap();
    for ((n, g), (_, w)) in grads(&mut copy).iter().zip(&grads(&mut cpu)) {
        assert!(rel_err(g, w) < 1e-5, "{n} gradient off the CPU path's by {:e}", rel_err(g, w));
    }
}

#[test]
fn device_lora_gradients_match_pytorch_peft() {
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("train/expected.json")).unwrap()).unwrap();
    for name in ["tiny-llama", "tiny-qwen2"] {
        let mut m = model(name);
        load_adapter(&fixture(&format!("train/{name}-lora-init")), &mut m).unwrap();
        let rows = fixture_rows(&exp["batch"][name]["rows"]);
        let mut dev = DeviceModel::new(Host, &m).unwrap();
        let loss = device_step(&mut dev, &rows, 0, 0.0);
        let want_loss = exp["models"][name]["loss"].as_f64().unwrap();
        assert!((loss - want_loss).abs() / want_loss < 1e-5, "{name}: loss {loss} vs PEFT {want_loss}");
        dev.download_into(&mut m, true).unwrap();
        let want = load_f32_tensors(&fixture(&format!("train/{name}-lora-grads.safetensors")));
        let mut seen = 0;
        for p in m.params_mut() {
            let Some(g) = &p.grad else { continue };
            let (_, w) = &want[&format!("base_model.model.{}", p.name)];
            let e = rel_err(g, w);
            assert!(e <= 1e-4, "{name}: {} off PEFT's gradient by {e:e}", p.name);
            seen += 1;
        }
        assert_eq!(seen, want.len() - 1, "{name}: every reference gradient compared");
    }
}

#[test]
fn device_adamw_steps_follow_the_cpu_trainer() {
    let cfg = AdamWConfig::default();
    let mut cpu = with_lora(model("tiny-qwen2"), 0.05);
    let rows = rows(cpu.config.vocab_size as u32);
    let mut dev = DeviceModel::new(Host, &cpu).unwrap();
    let mut moments: Vec<Moments> =
        cpu.params_mut().into_iter().filter(|p| p.is_trainable()).map(|p| Moments::zeros(p.data.len())).collect();
    for step in 1..=5u64 {
        let (lr, seed) = (2e-2, 100 + step);
        let want = cpu_step(&mut cpu, &rows, seed, 0.0);
        let got = device_step(&mut dev, &rows, seed, 0.0);
        assert!((got - want).abs() / want < 1e-5, "step {step}: device loss {got} vs CPU {want}");
        let norm = dev.grad_sq().unwrap().sqrt();
        let trainable: Vec<_> = cpu.params_mut().into_iter().filter(|p| p.is_trainable()).collect();
        let want_norm = trainable
            .iter()
            .map(|p| p.grad.as_ref().unwrap().iter().map(|&g| g as f64 * g as f64).sum::<f64>())
            .sum::<f64>()
            .sqrt();
        assert!((norm - want_norm).abs() / want_norm < 1e-5, "step {step}: gradient norm {norm} vs {want_norm}");
        for (p, mom) in trainable.into_iter().zip(&mut moments) {
            let c = if p.decays() { cfg } else { AdamWConfig { weight_decay: 0.0, ..cfg } };
            adamw_update(p, mom, &c, lr, step);
            p.zero_grad();
        }
        dev.adamw(&cfg, lr, step, None).unwrap();
    }
    let mut copy = with_lora(model("tiny-qwen2"), 0.05);
    dev.download_into(&mut copy, false).unwrap();
    for (a, b) in copy.params_mut().into_iter().zip(cpu.params_mut()) {
        let e = rel_err(&a.data, &b.data);
        assert!(e < 1e-5, "{}: weights after 5 steps off the CPU trainer's by {e:e}", a.name);
    }
}

#[test]
fn device_full_finetuning_gradients_equal_the_cpu_path_and_pytorch() {
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("train/expected.json")).unwrap()).unwrap();
    for name in MODELS {
        // Against the CPU path on ragged rows, embeddings trained or frozen.
        for freeze_embeddings in [false, true] {
            let mut cpu = model(name);
            set_full_finetune(&mut cpu, freeze_embeddings);
            let rows = rows(cpu.config.vocab_size as u32);
            let mut dev = DeviceModel::new(Host, &cpu).unwrap();
            let want_loss = cpu_step(&mut cpu, &rows, 3, 0.1);
            let loss = device_step(&mut dev, &rows, 3, 0.1);
            assert!((loss - want_loss).abs() / want_loss < 1e-6, "{name}: loss {loss} vs CPU {want_loss}");
            let mut copy = model(name);
            set_full_finetune(&mut copy, freeze_embeddings);
            dev.download_into(&mut copy, true).unwrap();
            let (got, want) = (grads(&mut copy), grads(&mut cpu));
            assert_eq!(got.len(), want.len(), "{name}: trainable tensors");
            for ((n, g), (_, w)) in got.iter().zip(&want) {
                let e = rel_err(g, w);
                assert!(e < 1e-5, "{name}: {n} gradient off the CPU path's by {e:e}");
            }
        }
        // Against PyTorch autograd on the fixtures' batch (train/ has reference gradients for these two).
        if !["tiny-llama", "tiny-qwen2"].contains(name) {
            continue;
        }
        let mut m = model(name);
        set_full_finetune(&mut m, false);
        let rows = fixture_rows(&exp["batch"][name]["rows"]);
        let mut dev = DeviceModel::new(Host, &m).unwrap();
        device_step(&mut dev, &rows, 0, 0.0);
        dev.download_into(&mut m, true).unwrap();
        let want = load_f32_tensors(&fixture(&format!("train/{name}-full-grads.safetensors")));
        let mut seen = 0;
        for p in m.params_mut() {
            let Some(g) = &p.grad else { continue };
            let (_, w) = &want[&p.name];
            let e = rel_err(g, w);
            assert!(e <= 1e-4, "{name}: {} off PyTorch's gradient by {e:e}", p.name);
            seen += 1;
        }
        assert_eq!(seen, want.len() - 1, "{name}: every reference gradient compared");
    }
}

/// Decoding on the device (`generate --device`): prefills and decode steps of several slots in one call give the
/// CPU decoder's logits, and greedy and beam-search generation the CPU's ids (beam search copies cache slots).
#[test]
fn device_decoding_equals_the_cpu_decoder() {
    use condlm::generate::decoder::Decoder;
    use condlm::generate::{BeamParams, EarlyStopping, GenerateOptions, Strategy, generate};
    use condlm::network::batch::Row;
    use condlm::network::device::Placement;
    for name in MODELS {
        let m = with_lora(model(name), 0.0);
        let vocab = m.config.vocab_size as u32;
        let (mut cpu, mut dev) =
            (Decoder::new(&m, 3, 40, 64).unwrap(), Decoder::on(&m, 3, 40, 64, Placement::Reference).unwrap());
        // Slot 0: a 9-token prefill; slot 2: a 5-token prefill in the same call; then decode steps of both.
        let mut rows: Vec<Row> = (0..9).map(|p| Row { slot: 0, pos: p, token: (p * 31 + 7) % vocab }).collect();
        rows.extend((0..5).map(|p| Row { slot: 2, pos: p, token: (p * 17 + 3) % vocab }));
        let mut logit_rows = vec![8, 13];
        for step in 0..6u32 {
            let want = cpu.forward(&rows, &logit_rows).unwrap().to_vec();
            let got = dev.forward(&rows, &logit_rows).unwrap().to_vec();
            let e = rel_err(&got, &want);
            assert!(e < 1e-5, "{name} step {step}: device logits off the CPU decoder's by {e:e}");
            rows = vec![
                Row { slot: 0, pos: 9 + step, token: step * 5 % vocab },
                Row { slot: 2, pos: 5 + step, token: step * 11 % vocab },
            ];
            logit_rows = vec![0, 1];
        }
        let tok = load_model(fixture(name).to_str().unwrap()).unwrap().tokenizer;
        let prompts: Vec<Vec<u32>> = vec![vec![3, 9, 27, 81 % vocab], vec![5, 1, 4]];
        let beam =
            Strategy::Beam(BeamParams { num_beams: 3, length_penalty: 1.0, early_stopping: EarlyStopping::True });
        for strategy in [Strategy::Greedy, beam] {
            let opts = GenerateOptions { strategy, batch: 2, stop_ids: vec![], ..GenerateOptions::greedy(12, 0) };
            let cpu_ids: Vec<Vec<u32>> =
                generate(&m, &tok, &prompts, &opts, |_| {}).unwrap().into_iter().map(|g| g.ids).collect();
            let opts = GenerateOptions { device: Placement::Reference, ..opts };
            let dev_ids: Vec<Vec<u32>> =
                generate(&m, &tok, &prompts, &opts, |_| {}).unwrap().into_iter().map(|g| g.ids).collect();
            assert_eq!(dev_ids, cpu_ids, "{name}: generated ids on the device path");
            assert!(cpu_ids.iter().all(|ids| ids.len() == 12), "{name}: 12 tokens each");
        }
    }
}

/// LongRoPE on the device decoder (Phi-4's long set past 16 positions): a sequence prefilled past 16 decodes as
/// the CPU decoder does; so does one that grows past 16 while decoding (its cached keys rotated with the short set:
/// both decoders run it again from its start), beside a sequence that stays short.
#[test]
fn device_decoding_with_longrope() {
    use condlm::generate::decoder::Decoder;
    use condlm::network::batch::Row;
    use condlm::network::device::Placement;
    let m = model("tiny-phi4");
    let long_after = m.config.longrope.as_ref().unwrap().original_max_positions as u32;
    let vocab = m.config.vocab_size as u32;
    let (mut cpu, mut dev) =
        (Decoder::new(&m, 2, 40, 64).unwrap(), Decoder::on(&m, 2, 40, 64, Placement::Reference).unwrap());
    let prefill = |slot: u32, len: u32| (0..len).map(move |p| Row { slot, pos: p, token: (p * 13 + slot) % vocab });
    let mut rows: Vec<Row> = prefill(0, long_after + 4).collect();
    for step in 0..3 {
        let last = rows.len() - 1;
        let want = cpu.forward(&rows, &[last]).unwrap().to_vec();
        let got = dev.forward(&rows, &[last]).unwrap().to_vec();
        assert!(rel_err(&got, &want) < 1e-5, "step {step}: off the CPU decoder's by {:e}", rel_err(&got, &want));
        rows = vec![Row { slot: 0, pos: long_after + 4 + step, token: step + 1 }];
    }
    // Slot 1 prefilled to 16 positions, then decoded past them beside slot 0 (still long) in the same passes.
    let mut rows: Vec<Row> = prefill(1, long_after - 2).collect();
    for step in 0..5 {
        let logit_rows: Vec<usize> = (0..rows.len()).rev().take(2).collect();
        let want = cpu.forward(&rows, &logit_rows).unwrap().to_vec();
        let got = dev.forward(&rows, &logit_rows).unwrap().to_vec();
        assert!(
            rel_err(&got, &want) < 1e-5,
            "crossing, step {step}: off the CPU decoder's by {:e}",
            rel_err(&got, &want)
        );
        let pos = long_after - 2 + step;
        rows = vec![Row { slot: 0, pos: long_after + 6 + step, token: 2 }, Row { slot: 1, pos, token: step + 3 }];
    }
}

/// The newer families on the device path against PyTorch autograd (the fixtures of tests/families.rs): LoRA and
/// full fine-tuning gradients within 1e-4, the loss within 1e-5 — Qwen3's q/k norms, SmolLM3's layers without
/// RoPE, Gemma 3's post norms and local RoPE base, Mistral's window, Phi-3's fused projections, Phi-4's LongRoPE,
/// YaRN, OLMo 2/3's blocks, Qwen3.5's Gated DeltaNet and gated attention.
#[test]
fn device_gradients_of_the_newer_families_match_pytorch() {
    let names =
        ["tiny-qwen3", "tiny-smollm3", "tiny-gemma3", "tiny-mistral", "tiny-phi3", "tiny-phi4", "tiny-qwen3-yarn"];
    for name in names.into_iter().chain(["tiny-qwen35"]) {
        let exp = common::expected_json(name);
        let rows = fixture_rows(&exp["rows"]);
        for (full, file, prefix, loss_key) in
            [(false, "lora-grads", "base_model.model.", "lora_loss"), (true, "full-grads", "", "full_loss")]
        {
            let mut m = model(name);
            match full {
                true => set_full_finetune(&mut m, false),
                false => drop(load_adapter(&fixture(&format!("{name}/lora-init")), &mut m).unwrap()),
            }
            let mut dev = DeviceModel::new(Host, &m).unwrap();
            let loss = device_step(&mut dev, &rows, 0, 0.0);
            let want_loss = exp[loss_key].as_f64().unwrap();
            assert!((loss - want_loss).abs() / want_loss < 1e-5, "{name} {file}: loss {loss} vs {want_loss}");
            dev.download_into(&mut m, true).unwrap();
            let want = load_f32_tensors(&fixture(&format!("{name}/{file}.safetensors")));
            let mut seen = 0;
            for p in m.params_mut() {
                let Some(g) = &p.grad else { continue };
                let (_, w) = &want[&format!("{prefix}{}", p.name)];
                let e = rel_err(g, w);
                assert!(e <= 1e-4, "{name} {file}: {} off PyTorch's gradient by {e:e}", p.name);
                seen += 1;
            }
            assert_eq!(seen, want.len() - 1, "{name} {file}: every reference gradient compared");
        }
    }
}
