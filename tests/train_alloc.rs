//! Once its buffers have grown to the step's size, an optimizer step — forward, LM head + cross-entropy,
//! backward, gradient norm and clipping, AdamW — allocates nothing on the heap: LoRA (with dropout, every linear
//! layer adapted) and full fine-tuning, with gradient accumulation over two micro-batches.
mod common;
use common::alloc_count::{allocations_in, counted_pool};
use common::fixture;
use condlm::data::dataset::{DataOptions, load_dataset};
use condlm::formats::load::load_model;
use condlm::network::adapters::{attach, set_full_finetune};
use condlm::network::lora::LoraConfig;
use condlm::train::optim::AdamWConfig;
use condlm::train::schedule::Schedule;
use condlm::train::trainer::{TrainConfig, Trainer};

#[global_allocator]
static ALLOC: common::alloc_count::Counting = common::alloc_count::Counting;

fn steps_allocate_nothing(name: &str, lora: bool) {
    let m = load_model(fixture(name).to_str().unwrap()).unwrap();
    let opts = DataOptions { prompt_field: "prompt".into(), completion_field: "completion".into(), max_len: 128 };
    let data = load_dataset(&fixture("train_rows.jsonl"), &m.tokenizer, &opts).unwrap();
    let rows = &data.examples[..4];
    let labels = &data.sources[..4];
    let mut model = m.model;
    if lora {
        let cfg = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.1, rslora: false, targets: vec!["all-linear".into()] };
        attach(&mut model, &cfg, 3).unwrap();
    } else {
        set_full_finetune(&mut model, false);
    }
    let cfg = TrainConfig {
        lr: 1e-3,
        schedule: Schedule::Cosine,
        warmup_steps: 1,
        total_steps: 10,
        adamw: AdamWConfig::default(),
        max_grad_norm: Some(1e-3), // small enough that clipping runs
        label_smoothing: 0.1,
        seed: 1,
        checkpoint_activations: false,
    };
    let (allocs, losses) = counted_pool().install(|| {
        let mut t = Trainer::new(model, cfg).unwrap();
        t.step(rows, 2, labels).unwrap(); // warm-up: buffers grow to this step's size
        allocations_in(|| (0..3).map(|_| t.step(rows, 2, labels).unwrap().loss).fold(0.0, |a, l| a + l))
    });
    assert!(losses.is_finite());
    assert_eq!(allocs, 0, "{name} (LoRA: {lora}): {allocs} heap allocations in 3 training steps");
}

#[test]
fn lora_steps_allocate_nothing() {
    steps_allocate_nothing("tiny-llama", true);
    steps_allocate_nothing("tiny-qwen35", true);
}

#[test]
fn full_finetuning_steps_allocate_nothing() {
    steps_allocate_nothing("tiny-gpt2", false);
    steps_allocate_nothing("tiny-qwen35", false);
}
