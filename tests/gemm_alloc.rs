//! Once warm, `matmul` allocates nothing: its packing buffers are per-thread and reused, and its threads split
//! work through rayon's allocation-free `join`. Counted with a global allocator that counts only on threads
//! that opted in (the pool's workers and the test thread while measuring).
use condlm::kernels::gemm::{Isa, gemm};
use condlm::kernels::mat::{Mat, MatMut};
use condlm::kernels::matmul::matmul;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

mod common;
use common::alloc_count::{TOTAL, TRACK, counted_pool_of};

#[global_allocator]
static ALLOC: common::alloc_count::Counting = common::alloc_count::Counting;

/// The tests share the one total: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// (m, k, n, a transposed (like dyᵀ), b transposed (like Wᵀ), accumulate): small and large, narrow and wide,
/// one-thread and parallel, every kernel edge case.
const SHAPES: &[(usize, usize, usize, bool, bool, bool)] = &[
    (1, 7, 3, false, false, false),
    (37, 71, 53, false, true, true),
    (256, 576, 384, false, true, false),   // forward x·Wᵀ
    (256, 384, 576, false, false, true),   // backward dy·W
    (384, 256, 576, true, false, true),    // weight gradient dyᵀ·x
    (64, 576, 4000, false, true, false),   // LM-head-like: wide
    (2000, 64, 96, true, false, true),     // tall, shallow
    (512, 576, 16, false, true, false),    // LoRA x·Aᵀ: narrow
    (512, 16, 576, false, true, true),     // LoRA u·Bᵀ: shallow
    (150, 900, 2100, false, false, false), // several blocks of every kind
];

fn buffers() -> Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    SHAPES.iter().map(|&(m, k, n, ..)| (vec![0.5; m * k], vec![0.25; k * n], vec![0.0; m * n])).collect()
}

/// Runs every shape once through `matmul` and through `gemm` with each available kernel family.
fn run_all(bufs: &mut [(Vec<f32>, Vec<f32>, Vec<f32>)], isas: &[Isa]) {
    for (&(m, k, n, at, bt, acc), (a, b, c)) in SHAPES.iter().zip(bufs.iter_mut()) {
        let a = if at { Mat::new(a, k, m).t() } else { Mat::new(a, m, k) };
        let b = if bt { Mat::new(b, n, k).t() } else { Mat::new(b, k, n) };
        matmul(MatMut::new(c, m, n), a, b, acc);
        for &isa in isas {
            gemm(isa, MatMut::new(c, m, n), a, b, acc);
        }
    }
}

/// Allocations while running every shape `reps` times in `pool`, after warming each worker up.
fn allocations(pool: &rayon::ThreadPool, reps: usize) -> usize {
    let isas = Isa::available();
    let mut bufs = buffers();
    // Warm up: every worker runs a product itself (which sizes its packing buffer), then the whole set runs.
    pool.broadcast(|_| run_all(&mut buffers()[..1], &isas));
    pool.install(|| run_all(&mut bufs, &isas));
    pool.install(|| {
        TRACK.with(|t| t.set(true));
        TOTAL.store(0, Ordering::SeqCst);
        for _ in 0..reps {
            run_all(&mut bufs, &isas);
        }
        TRACK.with(|t| t.set(false));
        TOTAL.load(Ordering::SeqCst)
    })
}

/// One worker: every product runs whole on it.
#[test]
fn warm_products_allocate_nothing_on_one_thread() {
    let _serial = SERIAL.lock().unwrap();
    let allocs = allocations(&counted_pool_of(1), 5);
    assert_eq!(allocs, 0, "{allocs} heap allocations in 5 rounds of {} products", SHAPES.len());
}

/// Two workers splitting each large product between them (so parts are stolen and run on either thread).
#[test]
fn warm_products_allocate_nothing_on_two_threads() {
    let _serial = SERIAL.lock().unwrap();
    let allocs = allocations(&counted_pool_of(2), 20);
    assert_eq!(allocs, 0, "{allocs} heap allocations in 20 rounds of {} products", SHAPES.len());
}
