//! Times our GEMM (`condlm::kernels::matmul::matmul`) against the `gemm` crate, side by side in one process, on
//! the products of one SmolLM2-135M training step (hidden 576, ffn 1536, vocab 49152, LoRA r 16, N = 1024
//! tokens, a 64-row LM-head chunk). Prints GFLOP/s (median of the reps) and ours / gemm per shape.
//! Usage: cargo run --release --example gemm_bench -- [--threads N] [--reps R] [--filter TEXT] [--mkn M,K,N]
//!   [--isa scalar|avx2|avx512]   (ours with a slower kernel family than `matmul` picks, e.g. to time fallbacks)
use condlm::kernels::gemm::{Isa, gemm};
use condlm::kernels::mat::{Mat, MatMut};
use condlm::kernels::matmul::matmul;
use std::time::Instant;

/// How an operand is stored: as is (row-major), or as the transpose view of a row-major buffer.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    RowMajor,
    Transposed,
}
use Layout::*;

struct Shape {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    a: Layout,
    b: Layout,
    accumulate: bool,
}

const fn shape(name: &'static str, m: usize, k: usize, n: usize, a: Layout, b: Layout, accumulate: bool) -> Shape {
    Shape { name, m, k, n, a, b, accumulate }
}

const SHAPES: &[Shape] = &[
    shape("fwd x·Wᵀ  576→1536", 1024, 576, 1536, RowMajor, Transposed, false),
    shape("fwd x·Wᵀ  1536→576", 1024, 1536, 576, RowMajor, Transposed, false),
    shape("fwd x·Wᵀ  576→576", 1024, 576, 576, RowMajor, Transposed, false),
    shape("bwd dy·W  1536→576", 1024, 1536, 576, RowMajor, RowMajor, true),
    shape("bwd dy·W  576→1536", 1024, 576, 1536, RowMajor, RowMajor, true),
    shape("dW += dyᵀ·x", 1536, 1024, 576, Transposed, RowMajor, true),
    shape("head x·Hᵀ", 64, 576, 49152, RowMajor, Transposed, false),
    shape("head dl·H", 64, 49152, 576, RowMajor, RowMajor, false),
    shape("head dH += dlᵀ·x", 49152, 64, 576, Transposed, RowMajor, true),
    shape("lora x·Aᵀ 576→16", 1024, 576, 16, RowMajor, Transposed, false),
    shape("lora x·Aᵀ 1536→16", 1024, 1536, 16, RowMajor, Transposed, false),
    shape("lora u·Bᵀ", 1024, 16, 576, RowMajor, Transposed, true),
    shape("small 16 rows", 16, 576, 576, RowMajor, Transposed, false),
];

/// The `gemm` crate called exactly as condlm's matmul called it before it had its own GEMM.
fn gemm_crate(out: MatMut, a: Mat, b: Mat, accumulate: bool) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let parallelism = if m * n * k >= 1 << 18 && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    assert!(out.data.len() >= (m - 1) * out.row_stride + n);
    // SAFETY: the views are built in this file to cover exactly their buffers; `out` is borrowed mutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.data.as_mut_ptr(),
            1,
            out.row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

fn fill(len: usize, seed: u64) -> Vec<f32> {
    (0..len).map(|i| condlm::rng::uniform(seed, 0, i as u64) as f32 - 0.5).collect()
}

fn view(data: &[f32], rows: usize, cols: usize, layout: Layout) -> Mat<'_> {
    match layout {
        RowMajor => Mat::new(data, rows, cols),
        Transposed => Mat::new(data, cols, rows).t(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds per call of `f` and of `g`, medians over `reps` timed batches (each ≥ 20 ms), the batches of the
/// two interleaved so that drifts in clock speed or memory state hit both alike.
fn time2(reps: usize, mut f: impl FnMut(), mut g: impl FnMut()) -> (f64, f64) {
    fn calibrate(f: &mut impl FnMut()) -> usize {
        f();
        let t = Instant::now();
        f();
        ((0.02 / t.elapsed().as_secs_f64().max(1e-9)) as usize).clamp(1, 10_000)
    }
    fn batch(f: &mut impl FnMut(), inner: usize) -> f64 {
        let t = Instant::now();
        for _ in 0..inner {
            f();
        }
        t.elapsed().as_secs_f64() / inner as f64
    }
    let (nf, ng) = (calibrate(&mut f), calibrate(&mut g));
    let (mut tf, mut tg) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        tf.push(batch(&mut f, nf));
        tg.push(batch(&mut g, ng));
    }
    (median(&mut tf), median(&mut tg))
}

fn cpu() -> (String, String) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map_or(String::from("?"), |(_, v)| v.trim().to_string())
    };
    let flags = field("flags");
    let simd: Vec<&str> = flags.split_whitespace().filter(|f| f.contains("avx") || *f == "fma").collect();
    (field("model name"), simd.join(" "))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let threads: usize = arg("--threads").map_or(2, |v| v.parse().expect("--threads N"));
    let reps: usize = arg("--reps").map_or(7, |v| v.parse().expect("--reps R"));
    let filter = arg("--filter").unwrap_or_default();
    let isa = arg("--isa").map_or(Isa::best(), |name| {
        *Isa::available()
            .iter()
            .find(|i| format!("{i:?}").eq_ignore_ascii_case(&name))
            .unwrap_or_else(|| panic!("--isa {name}: this CPU runs {:?}", Isa::available()))
    });
    let (model, flags) = cpu();
    println!("CPU: {model}\nflags: {flags}\nthreads: {threads}, reps: {reps} (median), our kernels: {isa:?}\n");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    // Half a second of work first, so that the first shape does not run at a lower clock.
    pool.install(|| {
        let x = fill(512 * 512, 3);
        let mut y = vec![0.0; 512 * 512];
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < 0.5 {
            matmul(MatMut::new(&mut y, 512, 512), Mat::new(&x, 512, 512), Mat::new(&x, 512, 512), false);
        }
    });
    // --mkn M,K,N: time one extra row-major product instead of the lists.
    let custom: Vec<Shape> = arg("--mkn")
        .map(|v| {
            let d: Vec<usize> = v.split(',').map(|x| x.parse().expect("--mkn M,K,N")).collect();
            vec![shape("custom", d[0], d[1], d[2], RowMajor, RowMajor, true)]
        })
        .unwrap_or_default();
    let lists: Vec<(&str, &[Shape])> =
        if custom.is_empty() { vec![("SmolLM2-135M training step", SHAPES)] } else { vec![("custom", &custom[..])] };
    for (title, shapes) in lists {
        println!("{title}:");
        table(&pool, isa, shapes.iter().filter(|s| s.name.contains(&filter)), reps);
    }
}

/// Times each shape, prints its row, then the geometric mean and the worst of ours / gemm.
fn table<'a>(pool: &rayon::ThreadPool, isa: Isa, shapes: impl Iterator<Item = &'a Shape>, reps: usize) {
    println!(
        "{:<22} {:>6} {:>6} {:>6} {:>4} {:>10} {:>10} {:>7} {:>9}",
        "shape", "m", "k", "n", "acc", "ours GF/s", "gemm GF/s", "ratio", "max err"
    );
    let mut log_sum = 0.0;
    let mut count = 0;
    let mut worst = (f64::INFINITY, "");
    for s in shapes {
        let a = fill(s.m * s.k, 1);
        let b = fill(s.k * s.n, 2);
        let (av, bv) = (view(&a, s.m, s.k, s.a), view(&b, s.k, s.n, s.b));
        let mut ours = vec![0.0; s.m * s.n];
        let mut theirs = vec![0.0; s.m * s.n];
        let (t_ours, t_theirs, err) = pool.install(|| {
            // One unaccumulated call of each: the results must agree to f32 rounding.
            gemm(isa, MatMut::new(&mut ours, s.m, s.n), av, bv, false);
            gemm_crate(MatMut::new(&mut theirs, s.m, s.n), av, bv, false);
            let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
            let err = ours.iter().zip(&theirs).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
            let (t_ours, t_theirs) = time2(
                reps,
                || gemm(isa, MatMut::new(&mut ours, s.m, s.n), av, bv, s.accumulate),
                || gemm_crate(MatMut::new(&mut theirs, s.m, s.n), av, bv, s.accumulate),
            );
            (t_ours, t_theirs, err)
        });
        let flop = 2.0 * (s.m * s.n * s.k) as f64;
        let ratio = t_theirs / t_ours;
        println!(
            "{:<22} {:>6} {:>6} {:>6} {:>4} {:>10.1} {:>10.1} {:>6.2}x {:>9.1e}",
            s.name,
            s.m,
            s.k,
            s.n,
            if s.accumulate { "+=" } else { "=" },
            flop / t_ours / 1e9,
            flop / t_theirs / 1e9,
            ratio,
            err
        );
        log_sum += ratio.ln();
        count += 1;
        if ratio < worst.0 {
            worst = (ratio, s.name);
        }
    }
    if count > 0 {
        let mean = (log_sum / count as f64).exp();
        println!("geometric mean ours/gemm: {mean:.3}x   worst: {:.2}x ({})\n", worst.0, worst.1);
    }
}
