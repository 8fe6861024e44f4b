//! The bucketed gradient sums of a data-parallel step (`train::grad_sums`), without MPI: a loopback backend stands
//! for 2 ranks that computed the same shard (each sum is 2 × the buffer), keeps every started sum in flight until
//! it is polled twice, and counts its calls. A step on rows [x, x, y, y] as rank 0 of 2 (shards [x], [y]) must then
//! equal one process's step on the same rows; overlapping the sums with the backward pass or not must give the same
//! bits; and once warm, an overlapped step allocates nothing.
mod common;
use common::alloc_count::{allocations_in, counted_pool};
use common::{fixture, rel_err};
use condlm::data::dataset::{DataOptions, Dataset, load_dataset};
use condlm::distributed::{Collectives, Pending, Single};
use condlm::formats::load::load_model;
use condlm::network::adapters::{attach, set_full_finetune};
use condlm::network::lora::LoraConfig;
use condlm::train::grad_sums::GradSumOptions;
use condlm::train::optim::AdamWConfig;
use condlm::train::schedule::Schedule;
use condlm::train::trainer::{TrainConfig, Trainer};
use std::cell::{Cell, RefCell};

#[global_allocator]
static ALLOC: common::alloc_count::Counting = common::alloc_count::Counting;

/// A started sum's buffer and how many times it was polled (None: a free entry).
type Started = Option<(Vec<f32>, u32)>;

/// Rank 0 of `RANKS` identical ranks; sums started stay in flight until tested twice.
struct Loopback {
    sums: RefCell<Vec<Started>>,
    /// test_sum calls, and the most sums in flight at once.
    tests: Cell<usize>,
    most_in_flight: Cell<usize>,
}

const RANKS: usize = 2;

impl Loopback {
    fn new() -> Self {
        // room for every sum the trainer keeps in flight, so that the backend allocates nothing once warm
        Loopback { sums: RefCell::new(Vec::with_capacity(64)), tests: Cell::new(0), most_in_flight: Cell::new(0) }
    }
}

impl Collectives for Loopback {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        RANKS
    }
    fn sum_f32(&self, buf: &mut [f32]) {
        buf.iter_mut().for_each(|v| *v *= RANKS as f32);
    }
    fn sum_f64(&self, buf: &mut [f64]) {
        buf.iter_mut().for_each(|v| *v *= RANKS as f64);
    }
    fn broadcast_f32(&self, _: &mut [f32], _: usize) {}
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        panic!("abort({code})")
    }
    fn start_sum_f32(&self, buf: Vec<f32>) -> Pending {
        let mut t = self.sums.borrow_mut();
        let slot = t.iter().position(Option::is_none).unwrap_or_else(|| {
            t.push(None);
            t.len() - 1
        });
        t[slot] = Some((buf, 0));
        self.most_in_flight.set(self.most_in_flight.get().max(t.iter().flatten().count()));
        Pending::in_flight(slot)
    }
    fn test_sum(&self, p: &Pending) -> bool {
        self.tests.set(self.tests.get() + 1);
        let mut t = self.sums.borrow_mut();
        let (_, polls) = t[p.id().unwrap()].as_mut().unwrap();
        *polls += 1;
        *polls >= 2
    }
    fn wait_sum(&self, p: Pending) -> Vec<f32> {
        let (mut buf, _) = self.sums.borrow_mut()[p.id().unwrap()].take().unwrap();
        self.sum_f32(&mut buf);
        buf
    }
}

fn data() -> (Dataset, condlm::network::transformer::Transformer) {
    let m = load_model(fixture("tiny-llama").to_str().unwrap()).unwrap();
    let opts = DataOptions { prompt_field: "prompt".into(), completion_field: "completion".into(), max_len: 128 };
    (load_dataset(&fixture("train_rows.jsonl"), &m.tokenizer, &opts).unwrap(), m.model)
}

fn trainer(full: bool) -> Trainer {
    let (_, mut model) = data();
    if full {
        set_full_finetune(&mut model, false);
    } else {
        let cfg = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, rslora: false, targets: vec!["all-linear".into()] };
        attach(&mut model, &cfg, 3).unwrap();
    }
    let cfg = TrainConfig {
        lr: 1e-3,
        schedule: Schedule::Cosine,
        warmup_steps: 1,
        total_steps: 10,
        adamw: AdamWConfig::default(),
        max_grad_norm: Some(1.0),
        label_smoothing: 0.0,
        seed: 1,
        checkpoint_activations: false,
    };
    Trainer::new(model, cfg).unwrap()
}

/// Losses of 3 steps on rows [x, x, y, y] in micro-batches of 2, and the trained tensors.
fn run(world: &dyn Collectives, full: bool, sums: Option<GradSumOptions>) -> (Vec<f64>, Vec<Vec<f32>>) {
    let (data, _) = data();
    let mut t = trainer(full);
    if let Some(o) = sums {
        t.set_grad_sums(o);
    }
    let mut losses = vec![];
    for s in 0..3 {
        let (x, y) = (&data.examples[2 * s], &data.examples[2 * s + 1]);
        losses.push(t.step_on(world, &[x, x, y, y], 2, &["x", "x", "y", "y"]).unwrap().loss);
    }
    (losses, t.trainable_state().into_iter().map(|(_, v, _)| v.to_vec()).collect())
}

/// Buckets of 300 values: many per block, more than may be in flight at once.
fn small_buckets(overlap: bool) -> Option<GradSumOptions> {
    Some(GradSumOptions { overlap, bucket_values: 300 })
}

fn two_ranks_equal_one_process(full: bool) {
    let (one, w_one) = run(&Single, full, None);
    for sums in [None, small_buckets(true), small_buckets(false)] {
        let (two, w_two) = run(&Loopback::new(), full, sums);
        for (a, b) in one.iter().zip(&two) {
            assert!((a - b).abs() <= 1e-6 * a.abs(), "full {full}, {sums:?}: losses {one:?} vs {two:?}");
        }
        for (a, b) in w_one.iter().zip(&w_two) {
            assert!(rel_err(b, a) <= 1e-6, "full {full}, {sums:?}: weights differ by {}", rel_err(b, a));
        }
    }
}

#[test]
fn two_ranks_sum_to_the_one_process_step_lora() {
    two_ranks_equal_one_process(false);
}

#[test]
fn two_ranks_sum_to_the_one_process_step_full() {
    two_ranks_equal_one_process(true);
}

#[test]
fn overlap_on_and_off_give_the_same_bits() {
    for full in [false, true] {
        let (on, off) = (Loopback::new(), Loopback::new());
        let (a, wa) = run(&on, full, small_buckets(true));
        let (b, wb) = run(&off, full, small_buckets(false));
        assert_eq!(a, b, "full {full}");
        assert!(wa == wb, "full {full}: trained tensors differ");
        // overlapped: polled during the backward pass, several sums in flight but never more than the bound
        assert!(on.tests.get() > 0 && off.tests.get() == 0, "{} {}", on.tests.get(), off.tests.get());
        assert!((2..=8).contains(&on.most_in_flight.get()), "{}", on.most_in_flight.get());
    }
}

#[test]
fn overlapped_steps_allocate_nothing() {
    let (data, _) = data();
    let rows = [&data.examples[0], &data.examples[0], &data.examples[1], &data.examples[1]];
    let (allocs, (loss, tests)) = counted_pool().install(|| {
        let (world, mut t) = (Loopback::new(), trainer(true));
        t.set_grad_sums(small_buckets(true).unwrap());
        t.step_on(&world, &rows, 2, &["x"; 4]).unwrap(); // warm-up: buffers grow to this step's size
        let (allocs, loss) =
            allocations_in(|| (0..3).map(|_| t.step_on(&world, &rows, 2, &["x"; 4]).unwrap().loss).sum::<f64>());
        (allocs, (loss, world.tests.get()))
    });
    assert!(loss.is_finite() && tests > 0);
    assert_eq!(allocs, 0, "{allocs} heap allocations in 3 overlapped steps");
}
