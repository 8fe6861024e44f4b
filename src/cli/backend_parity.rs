//! The CUDA backend against the reference backend, op by op (`info --devices --check-kernels`): every `Backend`
//! op run on `Cuda` and on `Host` from the same random buffers at awkward sizes — prefixes shorter than their
//! buffers, gemm views with offsets and row strides in all four transpose combinations — and the whole buffers
//! compared, so that an element written past a prefix or a view shows too. Ops of one rounding per element
//! (copies, scale, bias, gathers, scatters, dropout: the mask bits included) must match exactly; the others
//! within kernel_parity's tolerances (FMA contraction, another summation order, CUDA's exp/tanh/sqrt).
//!
//! Every check is generic over the backend, so the test below runs them with `Host` on both sides: that checks
//! the scenarios themselves (shapes, prefixes) without a GPU.
use super::comparisons::{Check, Compared, DIFFERING, REL, compare, run_checks};
use super::kernel_parity::{attention_layouts, random, seq_starts};
use anyhow::Result;
use condlm::formats::gguf::quantize::quantize;
use condlm::kernels::activation::GateAct;
use condlm::kernels::adamw::{AdamWConfig, AdamWScalars};
use condlm::kernels::attention::QkvLayout;
use condlm::kernels::backend::host::Host;
use condlm::kernels::backend::{
    AdamWTensor, Backend, DeltaBufs, DeltaGrads, DeltaInputsMut, DeltaSaved, MatView, PackedView, RopeCols, Values,
    ValuesMut, words_of,
};
use condlm::kernels::bf16::widen;
use condlm::kernels::compute::{Compute, compute, set_compute};
use condlm::kernels::cuda::backend::Cuda;
use condlm::kernels::dequant::GgmlType;
use condlm::kernels::gated_delta::{DeltaNetShape, checkpoints, seq_table, sequences};
use condlm::kernels::rope::RopeTable;
use condlm::rng::{stream_key, uniform};

/// What the checks need beyond [`Backend`]: a dropout mask and a bf16 buffer back on the host, to compare their
/// bits.
pub trait ReadMask: Backend {
    fn read_mask(&self, m: &Self::Mask) -> Result<Vec<u64>>;
    fn read_bf16(&self, h: &Self::Bf16) -> Result<Vec<u16>>;
}

impl ReadMask for Host {
    fn read_mask(&self, m: &Vec<u64>) -> Result<Vec<u64>> {
        Ok(m.clone())
    }

    fn read_bf16(&self, h: &Vec<u16>) -> Result<Vec<u16>> {
        Ok(h.clone())
    }
}

impl ReadMask for Cuda {
    fn read_mask(&self, m: &cudarc::driver::CudaSlice<u64>) -> Result<Vec<u64>> {
        Ok(self.device().stream.clone_dtoh(m)?)
    }

    fn read_bf16(&self, h: &cudarc::driver::CudaSlice<u16>) -> Result<Vec<u16>> {
        Ok(self.device().stream.clone_dtoh(h)?)
    }
}

/// Runs every check of `dev` against `Host`, one line each; returns how many failed.
pub fn run(dev: &Cuda) -> Result<usize> {
    run_checks(&format!("backend cuda:{}", dev.device().gpu.ordinal), dev, &checks())
}

/// Every check, by the ops it covers.
fn checks<B: ReadMask>() -> [(&'static str, Check<B>); 30] {
    [
        ("upload/download/zero/copy", copies),
        ("scale/add/copy_view", scale),
        ("sum_squares", sum_squares),
        ("gemm", gemm),
        ("gemm_weights/gemm_bf16 (bf16)", gemm_bf16),
        ("gemm_packed", gemm_packed),
        ("add_bias", add_bias),
        ("add_column_sums", column_sums),
        ("embedding/gather_rows", gather),
        ("embedding_backward", embedding_backward),
        ("scatter_add_rows", scatter),
        ("rmsnorm", rmsnorm),
        ("layernorm", layernorm),
        ("rope", rope),
        ("attention", attention),
        ("kv_store", kv_store),
        ("cached_attention", cached_attention),
        ("copy_within", copy_within),
        ("glu", glu),
        ("gelu", gelu),
        ("cross_entropy_rows", cross_entropy),
        ("dropout/lora_dropout_dx/lora_dropout_da", dropout),
        ("sigmoid_gate", sigmoid_gate),
        ("delta_conv_forward/backward/cached", delta_conv),
        ("delta_inputs_forward/backward", delta_inputs),
        ("delta_rule_forward/backward/cached", delta_rule),
        ("delta_norm_forward/backward", delta_norm),
        ("bf16 activations: gemm_bf16/rmsnorm/glu/cross_entropy/dropout/lora_dropout (bf16)", bf16_activations),
        ("adamw", adamw),
        ("empty ops", empty),
    ]
}

/// Named outputs of one run of a scenario, each a whole buffer downloaded.
type Outs = Vec<(String, Vec<f32>)>;

/// A buffer holding `v`.
fn up<B: Backend>(b: &B, v: &[f32]) -> Result<B::F32> {
    let mut x = b.alloc(v.len())?;
    b.upload(&mut x, v)?;
    Ok(x)
}

/// A bf16 buffer holding `v` rounded.
fn up_bf16<B: Backend>(b: &B, v: &[f32]) -> Result<B::Bf16> {
    let mut x = b.alloc_bf16(v.len())?;
    b.upload_bf16(&mut x, v)?;
    Ok(x)
}

/// A bf16 buffer's values, widened.
fn down_bf16<B: ReadMask>(b: &B, x: &B::Bf16) -> Result<Vec<f32>> {
    Ok(b.read_bf16(x)?.into_iter().map(widen).collect())
}

fn up_u32<B: Backend>(b: &B, v: &[u32]) -> Result<B::U32> {
    let mut x = b.alloc_u32(v.len())?;
    b.upload_u32(&mut x, v)?;
    Ok(x)
}

/// The first `n` values of `x`.
fn down<B: Backend>(b: &B, x: &B::F32, n: usize) -> Result<Vec<f32>> {
    let mut v = vec![0.0; n];
    b.download(x, &mut v)?;
    Ok(v)
}

/// Compares each output of the device with the reference's of the same name.
fn compare_outs(all: &mut Vec<Compared>, cpu: &Outs, dev: &Outs, tol: f64) {
    for ((name, c), (_, d)) in cpu.iter().zip(dev) {
        compare(all, name, d, c, tol);
    }
}

/// `n` indices below `below` from stream `stream` (repeats possible).
fn indices(n: usize, below: usize, stream: u64) -> Vec<u32> {
    (0..n as u64).map(|i| (uniform(15, stream, i) * below as f64) as u32).collect()
}

/// Upload (a prefix, into a zeroed buffer), download (a prefix), zero and copy (prefixes of random buffers).
fn copies_on<B: Backend>(b: &B) -> Result<Outs> {
    let (x, y) = (random(1000, 30, 1.0), random(1000, 31, 1.0));
    let mut buf = b.alloc(1000)?;
    b.upload(&mut buf, &x[..777])?;
    let uploaded = down(b, &buf, 900)?;
    let mut z = up(b, &x)?;
    b.zero(&mut z, 333)?;
    let mut c = up(b, &y)?;
    b.copy(&mut c, &z, 555)?;
    Ok(vec![
        ("upload 777/1000, download 900".into(), uploaded),
        ("zero 333/1000".into(), down(b, &z, 1000)?),
        ("copy 555/1000".into(), down(b, &c, 1000)?),
    ])
}

fn copies<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    compare_outs(all, &copies_on(&Host)?, &copies_on(dev)?, 0.0);
    Ok(())
}

fn scale_on<B: Backend>(b: &B) -> Result<Outs> {
    let (x, y) = (random(1100, 32, 3.0), random(1100, 33, 1.0));
    let (gx, mut gy) = (up(b, &x)?, up(b, &y)?);
    b.scale(&mut gy, &gx, 1001, -0.37)?;
    let mut gx = gx;
    b.scale_in_place(&mut gx, 1001, 1.9)?;
    let mut outs =
        vec![("scale 1001/1100".into(), down(b, &gy, 1100)?), ("scale_in_place 1001/1100".into(), down(b, &gx, 1100)?)];
    b.add(&mut gy, &gx, 1003)?;
    outs.push(("add 1003/1100".into(), down(b, &gy, 1100)?));
    // A 7×5 column block (ld 12, from column 3) gathered dense after 2 values, then scattered to another block.
    let (bv, dense) = (MatView::columns(7, 3, 5, 12), MatView { offset: 2, ..MatView::dense(7, 5) });
    b.copy_view(&mut gy, dense, &gx, bv)?;
    b.copy_view(&mut gx, MatView { offset: 200, ..MatView::columns(7, 1, 5, 9) }, &gy, dense)?;
    outs.push(("copy_view gather, then scatter".into(), down(b, &gx, 1100)?));
    Ok(outs)
}

fn scale<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    compare_outs(all, &scale_on(&Host)?, &scale_on(dev)?, 0.0);
    Ok(())
}

/// Sizes below one block, below the first launch's grid of threads, and past it (threads taking several values).
fn sum_squares<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    let x = random(100_100, 34, 2.0);
    let (cpu, gpu) = (up(&Host, &x)?, up(dev, &x)?);
    let sizes = [0, 5, 1000, 100_003];
    // Every size in one call, each to its own sum, read back once at the end (as the gradient norm does).
    let (mut cpu_sums, mut gpu_sums) = (Host.alloc_f64(sizes.len())?, dev.alloc_f64(sizes.len())?);
    Host.sum_squares(&mut cpu_sums, &sizes.map(|n| (&cpu, n)))?;
    dev.sum_squares(&mut gpu_sums, &sizes.map(|n| (&gpu, n)))?;
    let mut gpu_read = vec![f64::NAN; sizes.len()];
    dev.download_f64(&gpu_sums, &mut gpu_read)?;
    for (slot, &n) in sizes.iter().enumerate() {
        let (c, g) = (cpu_sums[slot], gpu_read[slot]);
        let err = if (g - c).is_nan() { f64::INFINITY } else { (g - c).abs() / c.abs().max(f64::MIN_POSITIVE) };
        // The squares are exact in f64; only the order of the sums differs.
        all.push(Compared { name: format!("sum_squares {n}/100100 (f64)"), measure: REL, err, tol: 1e-12 });
    }
    Ok(())
}

/// One product of views: a (m, k), b (k, n), c (m, n) as read, each inside a longer buffer at an offset with a
/// row stride past its columns; `ta`/`tb` store a or b transposed.
struct GemmCase {
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    accumulate: bool,
    through: Through,
}

/// Which product a [`GemmCase`] runs.
#[derive(Clone, Copy)]
enum Through {
    Gemm,
    /// `gemm_weights`: the run's compute.
    Weights,
    /// `gemm_bf16`, b uploaded as bf16 (`upload_bf16`), or uploaded as f32 and rounded on the device
    /// (`round_bf16`).
    Bf16Upload,
    Bf16Round,
    /// `gemm_scaled` by [`SCALE`] (c dense, overwritten).
    Scaled,
    /// `gemm_bf16` on a kept in bf16 and b in f32 (rounded by the product): into f32 c, or by [`SCALE`] into bf16
    /// c (the MLP's activations kept in bf16).
    Bf16A,
    Bf16Out,
}

/// `gemm_scaled`'s factor in the checks.
const SCALE: f32 = 0.37;

impl GemmCase {
    /// The view of an operand read as (rows, cols), stored transposed when `trans`, from `offset` with `pad`
    /// extra values per stored row.
    fn view(rows: usize, cols: usize, trans: bool, offset: usize, pad: usize) -> MatView {
        let (r, c) = if trans { (cols, rows) } else { (rows, cols) };
        let v = MatView { offset, rows: r, cols: c, ld: c + pad, trans: false };
        if trans { v.t() } else { v }
    }

    fn views(&self) -> (MatView, MatView, MatView) {
        let av = Self::view(self.m, self.k, self.ta, 3, 5);
        let bv = Self::view(self.k, self.n, self.tb, 2, 3);
        let cv = match self.through {
            Through::Scaled => MatView::dense(self.m, self.n),
            _ => MatView { offset: 4, rows: self.m, cols: self.n, ld: self.n + 2, trans: false },
        };
        (cv, av, bv)
    }

    /// "gemm aᵀ·b += m 37 n 29 k 45": ᵀ marks an operand stored transposed.
    fn name(&self) -> String {
        let t = |yes: bool| if yes { "ᵀ" } else { "" };
        let (m, n, k, acc) = (self.m, self.n, self.k, if self.accumulate { " +=" } else { "" });
        let op = match self.through {
            Through::Gemm => "gemm".to_string(),
            Through::Weights => format!("gemm_weights ({:?})", compute()),
            Through::Bf16Upload => "gemm_bf16 (b by upload_bf16)".to_string(),
            Through::Bf16Round => "gemm_bf16 (b by round_bf16)".to_string(),
            Through::Scaled => format!("gemm_scaled ({SCALE})"),
            Through::Bf16A => "gemm_bf16 (a bf16, b f32, c f32)".to_string(),
            Through::Bf16Out => format!("gemm_bf16 (a bf16, b f32, c bf16, alpha {SCALE})"),
        };
        format!("{op} a{}·b{}{acc} m {m} n {n} k {k}", t(self.ta), t(self.tb))
    }

    fn run<B: ReadMask>(&self, b: &B) -> Result<Vec<f32>> {
        let (cv, av, bv) = self.views();
        let (a, bb, c0) = (random(av.end() + 7, 40, 1.0), random(bv.end() + 5, 41, 1.0), random(cv.end() + 6, 42, 1.0));
        let (ga, gb, mut gc) = (up(b, &a)?, up(b, &bb)?, up(b, &c0)?);
        let mut b16 = b.alloc_bf16(bb.len())?;
        match self.through {
            Through::Gemm => b.gemm(&mut gc, cv, &ga, av, &gb, bv, self.accumulate)?,
            Through::Weights => b.gemm_weights(&mut gc, cv, &ga, av, &gb, bv, self.accumulate)?,
            Through::Scaled => b.gemm_scaled(&mut gc, cv, &ga, av, &gb, bv, SCALE)?,
            Through::Bf16Upload | Through::Bf16Round => {
                match self.through {
                    Through::Bf16Upload => b.upload_bf16(&mut b16, &bb)?,
                    _ => b.round_bf16(&mut b16, &gb, bb.len())?,
                }
                let (a, b16) = (Values::F32(&ga), Values::Bf16(&b16));
                b.gemm_bf16(ValuesMut::F32(&mut gc), cv, a, av, b16, bv, 1.0, self.accumulate)?
            }
            Through::Bf16A => {
                let a16 = up_bf16(b, &a)?;
                let (a, bf) = (Values::Bf16(&a16), Values::F32(&gb));
                b.gemm_bf16(ValuesMut::F32(&mut gc), cv, a, av, bf, bv, 1.0, self.accumulate)?
            }
            Through::Bf16Out => {
                let (a16, mut c16) = (up_bf16(b, &a)?, up_bf16(b, &c0)?);
                let (a, bf) = (Values::Bf16(&a16), Values::F32(&gb));
                b.gemm_bf16(ValuesMut::Bf16(&mut c16), cv, a, av, bf, bv, SCALE, self.accumulate)?;
                return down_bf16(b, &c16);
            }
        }
        down(b, &gc, c0.len())
    }
}

/// All four transpose combinations at a small odd shape and at one past cuBLAS's small tiles, = and +=; and
/// k = 0 (c zeroed, or left as it is when accumulating).
fn gemm<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for (m, n, k) in [(37, 29, 45), (70, 130, 300)] {
        for (i, (ta, tb)) in [(false, false), (false, true), (true, false), (true, true)].into_iter().enumerate() {
            let case = GemmCase { m, n, k, ta, tb, accumulate: i % 2 == 1, through: Through::Gemm };
            compare(all, &case.name(), &case.run(dev)?, &case.run(&Host)?, 1e-5);
            // Scaled: c overwritten, dense (the tail past it stays).
            let case = GemmCase { accumulate: false, through: Through::Scaled, ..case };
            compare(all, &case.name(), &case.run(dev)?, &case.run(&Host)?, 1e-5);
        }
    }
    for accumulate in [false, true] {
        let case = GemmCase { m: 9, n: 11, k: 0, ta: false, tb: true, accumulate, through: Through::Gemm };
        compare(all, &case.name(), &case.run(dev)?, &case.run(&Host)?, 0.0);
    }
    Ok(())
}

/// `check` run with the process's compute set to `--compute bf16`, restored after.
fn under_bf16(check: impl FnOnce() -> Result<()>) -> Result<()> {
    let before = compute();
    set_compute(Compute::Bf16);
    let r = check();
    set_compute(before);
    r
}

/// `gemm_weights` under `--compute bf16` (operands rounded to bf16 on both sides, products summed in f32 in
/// different orders), and `gemm_bf16` on b kept in bf16 against the host's `gemm_weights` on b's f32 values: the
/// four transposes at two shapes.
fn gemm_bf16<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    under_bf16(|| {
        for (m, n, k) in [(37, 29, 45), (70, 130, 300)] {
            for (i, (ta, tb)) in [(false, false), (false, true), (true, false), (true, true)].into_iter().enumerate() {
                let case = |through| GemmCase { m, n, k, ta, tb, accumulate: i % 2 == 1, through };
                let host = case(Through::Weights).run(&Host)?;
                for through in [Through::Weights, Through::Bf16Upload, Through::Bf16Round] {
                    compare(all, &case(through).name(), &case(through).run(dev)?, &host, 1e-5);
                }
            }
        }
        Ok(())
    })
}

/// How [`gemm_packed_on`] multiplies the (24, 512) packed matrix: the identity by it (c then holds the decoded
/// matrix itself, transposed), or `m` random rows (in rows of 519, from value 2) by its stored rows
/// `first..first + n`, transposed, into c (m, n) in rows of n + 3 from value 5, = or +=; a and c each f32 or bf16
/// (`a16`, `c16`: activations kept in bf16). A product of up to 32 rows reads the blocks themselves on a device (a
/// decoding step's; 8 rows a block), one of more decodes the matrix first (only the rows of a slice).
#[derive(Clone, Copy)]
enum PackedCase {
    Decoded,
    Product { m: usize, first: usize, n: usize, accumulate: bool, a16: bool, c16: bool },
}

const PACKED_CASES: [PackedCase; 12] = {
    use PackedCase::Product as P;
    [
        PackedCase::Decoded,
        P { m: 40, first: 0, n: 24, accumulate: false, a16: false, c16: false },
        P { m: 40, first: 0, n: 24, accumulate: true, a16: false, c16: false },
        P { m: 40, first: 8, n: 12, accumulate: true, a16: true, c16: true },
        P { m: 1, first: 0, n: 24, accumulate: false, a16: false, c16: false },
        P { m: 5, first: 8, n: 12, accumulate: true, a16: false, c16: false },
        P { m: 8, first: 3, n: 21, accumulate: false, a16: true, c16: true },
        P { m: 2, first: 0, n: 24, accumulate: true, a16: true, c16: true },
        P { m: 3, first: 0, n: 24, accumulate: true, a16: true, c16: false },
        P { m: 4, first: 5, n: 19, accumulate: false, a16: false, c16: true },
        P { m: 13, first: 3, n: 21, accumulate: true, a16: false, c16: false },
        P { m: 32, first: 0, n: 24, accumulate: false, a16: true, c16: false },
    ]
};

fn gemm_packed_on<B: ReadMask>(b: &B, ty: GgmlType, case: PackedCase) -> Result<Outs> {
    let (rows, cols) = (24, 512);
    let w = quantize(ty, &random(rows * cols, 181, 1.0))?;
    let words = up_u32(b, &words_of(&w))?;
    let w = PackedView { words: &words, ty, rows, cols };
    let name = |what: String| format!("gemm_packed {ty} {what} ({:?})", compute());
    let PackedCase::Product { m, first, n, accumulate, a16, c16 } = case else {
        let eye: Vec<f32> = (0..cols * cols).map(|i| if i / cols == i % cols { 1.0 } else { 0.0 }).collect();
        let (a, mut c) = (up(b, &eye)?, up(b, &random(cols * rows + 5, 183, 1.0))?);
        let (cv, av, wv) = (MatView::dense(cols, rows), MatView::dense(cols, cols), MatView::dense(rows, cols).t());
        b.gemm_packed(ValuesMut::F32(&mut c), cv, Values::F32(&a), av, w, wv, false)?;
        return Ok(vec![(name("decoded".into()), down(b, &c, cols * rows + 5)?)]);
    };
    let av = MatView { offset: 2, rows: m, cols, ld: cols + 7, trans: false };
    let cv = MatView { offset: 5, rows: m, cols: n, ld: n + 3, trans: false };
    let wv = MatView { offset: first * cols, rows: n, cols, ld: cols, trans: true };
    let (a, c) = (random(av.end(), 182, 1.0), random(cv.end() + 4, 183, 1.0));
    let kind = |bf16: bool| if bf16 { "bf16" } else { "f32" };
    let what = format!(
        "{m} rows × stored rows {first}..{}{}, {} a, {} c",
        first + n,
        if accumulate { " +=" } else { "" },
        kind(a16),
        kind(c16)
    );
    let (a32, a16v) = (up(b, &a)?, up_bf16(b, &a)?);
    let a = if a16 { Values::Bf16(&a16v) } else { Values::F32(&a32) };
    if !c16 {
        let mut c = up(b, &c)?;
        b.gemm_packed(ValuesMut::F32(&mut c), cv, a, av, w, wv, accumulate)?;
        return Ok(vec![(name(what), down(b, &c, cv.end() + 4)?)]);
    }
    let mut c = up_bf16(b, &c)?;
    b.gemm_packed(ValuesMut::Bf16(&mut c), cv, a, av, w, wv, accumulate)?;
    Ok(vec![(name(what), down_bf16(b, &c)?)])
}

/// Products that alternate between two Q4_K matrices of one shape (so one address tells them apart) and between
/// rows of one, with a decoding step's few rows between them: the decoded matrix a product reuses is always the one
/// it reads (the LM head's row chunks reuse theirs).
fn gemm_packed_reuse_on<B: ReadMask>(b: &B) -> Result<Outs> {
    let (rows, cols, ty) = (24, 512, GgmlType::Q4_K);
    let w1 = up_u32(b, &words_of(&quantize(ty, &random(rows * cols, 184, 1.0))?))?;
    let w2 = up_u32(b, &words_of(&quantize(ty, &random(rows * cols, 185, 1.0))?))?;
    let mut outs = vec![];
    for (i, (w, first, n, m)) in
        [(&w1, 0, 24, 40), (&w1, 0, 24, 40), (&w1, 8, 12, 40), (&w1, 0, 24, 2), (&w2, 0, 24, 40), (&w1, 0, 24, 40)]
            .into_iter()
            .enumerate()
    {
        let w = PackedView { words: w, ty, rows, cols };
        let (av, cv) = (MatView::dense(m, cols), MatView::dense(m, n));
        let wv = MatView { offset: first * cols, rows: n, cols, ld: cols, trans: true };
        let (a, mut c) = (up(b, &random(av.end(), 186 + i as u64, 1.0))?, up(b, &vec![0.0; cv.end()])?);
        b.gemm_packed(ValuesMut::F32(&mut c), cv, Values::F32(&a), av, w, wv, false)?;
        outs.push((format!("gemm_packed reused, product {i} ({:?})", compute()), down(b, &c, cv.end())?));
    }
    Ok(outs)
}

/// Every block type the device keeps packed, in f32 and under `--compute bf16`: the decoded matrix bit for bit
/// (an identity's product, exact in f32 and of bf16 values), and the products of [`PACKED_CASES`] (a bf16 c within
/// one bf16 rounding; a bf16 a is read as it is, a product with one a bf16 product).
fn gemm_packed<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    let run = |all: &mut Vec<Compared>| -> Result<()> {
        for ty in GgmlType::ALL.into_iter().filter(|&t| t != GgmlType::F32 && dev.keeps_packed(t)) {
            for case in PACKED_CASES {
                let tol = match case {
                    PackedCase::Decoded => 0.0,
                    PackedCase::Product { c16, .. } => {
                        if c16 {
                            1e-2
                        } else {
                            1e-5
                        }
                    }
                };
                compare_outs(all, &gemm_packed_on(&Host, ty, case)?, &gemm_packed_on(dev, ty, case)?, tol);
            }
        }
        if dev.keeps_packed(GgmlType::Q4_K) {
            compare_outs(all, &gemm_packed_reuse_on(&Host)?, &gemm_packed_reuse_on(dev)?, 1e-5);
        }
        Ok(())
    };
    run(all)?;
    under_bf16(|| run(all))
}

fn add_bias_on<B: Backend>(b: &B) -> Result<Outs> {
    let ov = MatView { offset: 5, rows: 13, cols: 17, ld: 23, trans: false };
    let (out, bias) = (random(ov.end() + 9, 43, 1.0), random(20, 44, 1.0));
    let (mut gout, gbias) = (up(b, &out)?, up(b, &bias)?);
    b.add_bias(&mut gout, ov, &gbias)?;
    Ok(vec![("add_bias 13×17 view, ld 23".into(), down(b, &gout, out.len())?)])
}

fn add_bias<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    compare_outs(all, &add_bias_on(&Host)?, &add_bias_on(dev)?, 0.0);
    Ok(())
}

/// A bias's gradient: the column sums of a 29×19 view (offset 7, ld 26) and of a 1000×300 one (offset 3, ld 301:
/// more columns than a block has threads, long columns) added into the first columns of longer buffers.
fn column_sums_on<B: Backend>(b: &B) -> Result<Outs> {
    let mut outs = vec![];
    for (i, dyv) in [
        MatView { offset: 7, rows: 29, cols: 19, ld: 26, trans: false },
        MatView { offset: 3, rows: 1000, cols: 300, ld: 301, trans: false },
    ]
    .into_iter()
    .enumerate()
    {
        let s = 86 + 2 * i as u64;
        let (dy, db) = (up(b, &random(dyv.end() + 5, s, 3.0))?, random(dyv.cols + 6, s + 1, 1.0));
        let mut gdb = up(b, &db)?;
        b.add_column_sums(&mut gdb, &dy, dyv)?;
        let name = format!("add_column_sums {}×{}, ld {}", dyv.rows, dyv.cols, dyv.ld);
        outs.push((name, down(b, &gdb, db.len())?));
    }
    Ok(outs)
}

/// Up to one chunk of rows (64) the device adds as the CPU does, bit for bit; longer columns are summed by chunks,
/// the chunks' sums added in order: within float rounding.
fn column_sums<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for ((name, cpu), (_, gpu)) in column_sums_on(&Host)?.iter().zip(&column_sums_on(dev)?) {
        compare(all, name, gpu, cpu, if name.contains("1000×") { 1e-5 } else { 0.0 });
    }
    Ok(())
}

/// The embedding lookup with and without a scale, and a gather of rows (repeats allowed), each writing 13 rows
/// of a longer buffer.
fn gather_on<B: Backend>(b: &B) -> Result<Outs> {
    let (vocab, dim, n) = (50, 24, 13);
    let (table, out0, ids) = (random(vocab * dim + 7, 45, 1.0), random(20 * dim, 46, 1.0), indices(20, vocab, 47));
    let (gtable, gids) = (up(b, &table)?, up_u32(b, &ids)?);
    let mut outs = vec![];
    for scale in [None, Some(1.7f32)] {
        let mut gout = up(b, &out0)?;
        b.embedding(&mut gout, &gtable, &gids, n, dim, scale)?;
        outs.push((
            format!("embedding 13/20 rows, scale {}", scale.map_or("none".into(), |s| s.to_string())),
            down(b, &gout, out0.len())?,
        ));
    }
    let (src, dim) = (random(40 * 33, 48, 1.0), 33);
    let (gsrc, gidx) = (up(b, &src)?, up_u32(b, &indices(20, 40, 49))?);
    let mut gout = up(b, &random(20 * dim, 50, 1.0))?;
    b.gather_rows(&mut gout, &gsrc, &gidx, 17, dim)?;
    outs.push(("gather_rows 17/20 rows of 33".into(), down(b, &gout, 20 * dim)?));
    Ok(outs)
}

fn gather<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    compare_outs(all, &gather_on(&Host)?, &gather_on(dev)?, 0.0);
    Ok(())
}

/// The embedding's backward into the table: the first n of 45 uploaded ids (unsorted, most repeated, some rows of
/// the table untouched) added into a table of 50 rows with 5 values to spare, three calls in a row (n 37, 45, 3:
/// the device's grouping scratch grown, then reused with stale values past what it holds); then rows of 300 (more
/// than a block has threads), one id at least 20 times among 30 rows. First, 500 distinct ids (a shuffled table of
/// 512 rows, as full fine-tuning meets in a batch of varied text): the grouping holds n + 2·m + 1 values, the most
/// it ever holds, and a scratch sized by n alone was short.
fn embedding_backward_on<B: Backend>(b: &B) -> Result<Outs> {
    let mut outs = vec![];
    let (vocab, dim, n) = (512, 8, 500);
    let mut ids: Vec<u32> = (0..vocab as u32).collect();
    ids.sort_by_key(|&i| (uniform(16, 96, i as u64) * 1e9) as u64);
    ids.truncate(n);
    let (gids, dout) = (up_u32(b, &ids)?, up(b, &random(n * dim, 97, 1.0))?);
    let mut table = up(b, &random(vocab * dim, 98, 1.0))?;
    b.embedding_backward(&mut table, &dout, &gids, &ids, n, dim)?;
    outs.push(("embedding_backward 500 distinct, table 512×8".into(), down(b, &table, vocab * dim)?));
    let (vocab, dim) = (50, 24);
    let mut ids = indices(45, 11, 90);
    (ids[3], ids[40]) = (49, 49);
    let (gids, dout) = (up_u32(b, &ids)?, up(b, &random(45 * dim + 3, 91, 1.0))?);
    let mut table = up(b, &random(vocab * dim + 5, 92, 1.0))?;
    for n in [37, 45, 3] {
        b.embedding_backward(&mut table, &dout, &gids, &ids, n, dim)?;
        outs.push((format!("embedding_backward {n}/45, table 50×24"), down(b, &table, vocab * dim + 5)?));
    }
    let (vocab, dim, n) = (7, 300, 30);
    let ids: Vec<u32> = (0..n as u64).map(|i| if i % 3 != 2 { 2 } else { (uniform(15, 93, i) * 7.0) as u32 }).collect();
    let (gids, dout) = (up_u32(b, &ids)?, up(b, &random(n * dim, 94, 1.0))?);
    let mut table = up(b, &random(vocab * dim, 95, 1.0))?;
    b.embedding_backward(&mut table, &dout, &gids, &ids, n, dim)?;
    outs.push(("embedding_backward 30, table 7×300".into(), down(b, &table, vocab * dim)?));
    Ok(outs)
}

fn embedding_backward<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    compare_outs(all, &embedding_backward_on(&Host)?, &embedding_backward_on(dev)?, 0.0);
    Ok(())
}

/// 17 rows added into distinct rows of 40 (a shuffle's first 17).
fn scatter_on<B: Backend>(b: &B) -> Result<Outs> {
    let dim = 33;
    let mut order: Vec<u32> = (0..40).collect();
    order.sort_by_key(|&i| (uniform(15, 51, i as u64) * 1e9) as u64);
    let (dst, src) = (random(40 * dim, 52, 1.0), random(20 * dim, 53, 1.0));
    let (mut gdst, gsrc, gidx) = (up(b, &dst)?, up(b, &src)?, up_u32(b, &order[..20])?);
    b.scatter_add_rows(&mut gdst, &gsrc, &gidx, 17, dim)?;
    Ok(vec![("scatter_add_rows 17/20 rows into 40".into(), down(b, &gdst, dst.len())?)])
}

fn scatter<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    compare_outs(all, &scatter_on(&Host)?, &scatter_on(dev)?, 0.0);
    Ok(())
}

/// 100 rows of 300 in buffers of 106 rows (dw's column sums over two chunks of rows); offset 0 with dw, Gemma's
/// offset 1 without.
fn rmsnorm_on<B: Backend>(b: &B, offset: f32, with_dw: bool) -> Result<Outs> {
    let (rows, dim, cap) = (100, 300, 106);
    let x = up(b, &random(cap * dim, 54, 2.0))?;
    let w = up(b, &random(dim + 5, 55, 1.0))?;
    let dout = up(b, &random(cap * dim, 56, 1.0))?;
    let (mut out, mut rstd) = (up(b, &random(cap * dim, 57, 1.0))?, up(b, &random(cap, 58, 1.0))?);
    b.rmsnorm_forward(&mut out, &mut rstd, &x, &w, rows, dim, offset, 1e-6)?;
    let (mut dx, mut dw) = (up(b, &random(cap * dim, 59, 0.5))?, up(b, &random(dim + 5, 60, 0.5))?);
    b.rmsnorm_backward(&mut dx, with_dw.then_some(&mut dw), &dout, &x, &w, &rstd, rows, dim, offset)?;
    let name = |what: &str| format!("rmsnorm {what} (offset {offset})");
    let mut outs = vec![
        (name("forward out"), down(b, &out, cap * dim)?),
        (name("forward rstd"), down(b, &rstd, cap)?),
        (name("backward dx"), down(b, &dx, cap * dim)?),
    ];
    if with_dw {
        outs.push((name("backward dw"), down(b, &dw, dim + 5)?));
    }
    Ok(outs)
}

fn rmsnorm<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for (offset, with_dw) in [(0.0, true), (1.0, false)] {
        compare_outs(all, &rmsnorm_on(&Host, offset, with_dw)?, &rmsnorm_on(dev, offset, with_dw)?, 1e-5);
    }
    Ok(())
}

/// 100 rows of 300 in buffers of 106 rows (the weight gradients' column sums over two chunks of rows); with dw
/// and db, then with neither.
fn layernorm_on<B: Backend>(b: &B, grads: bool) -> Result<Outs> {
    let (rows, dim, cap) = (100, 300, 106);
    let x = up(b, &random(cap * dim, 154, 2.0))?;
    let (w, bias) = (up(b, &random(dim + 5, 155, 1.0))?, up(b, &random(dim + 5, 161, 1.0))?);
    let dout = up(b, &random(cap * dim, 156, 1.0))?;
    let mut out = up(b, &random(cap * dim, 157, 1.0))?;
    let (mut mean, mut rstd) = (up(b, &random(cap, 158, 1.0))?, up(b, &random(cap, 162, 1.0))?);
    b.layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w, &bias, rows, dim, 1e-5)?;
    let mut dx = up(b, &random(cap * dim, 159, 0.5))?;
    let (mut dw, mut db) = (up(b, &random(dim + 5, 160, 0.5))?, up(b, &random(dim + 5, 163, 0.5))?);
    let (gw, gb) = (grads.then_some(&mut dw), grads.then_some(&mut db));
    b.layernorm_backward(&mut dx, gw, gb, &dout, &x, &w, &mean, &rstd, rows, dim)?;
    let name = |what: &str| format!("layernorm {what} (weight grads {grads})");
    Ok(vec![
        (name("forward out"), down(b, &out, cap * dim)?),
        (name("forward mean"), down(b, &mean, cap)?),
        (name("forward rstd"), down(b, &rstd, cap)?),
        (name("backward dx"), down(b, &dx, cap * dim)?),
        (name("backward dw"), down(b, &dw, dim + 5)?),
        (name("backward db"), down(b, &db, dim + 5)?),
    ])
}

fn layernorm<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for grads in [true, false] {
        compare_outs(all, &layernorm_on(&Host, grads)?, &layernorm_on(dev, grads)?, 1e-5);
    }
    Ok(())
}

/// 3 heads of 64 from column 5 (the first 48 features rotating: partial rotary), 29 rows of a buffer of 33.
fn rope_on<B: Backend>(b: &B, backward: bool) -> Result<Outs> {
    let (half, max_pos, rows, cap) = (24, 50, 29, 33);
    let cols = RopeCols { row_len: 5 + 3 * 64 + 7, col: 5, heads: 3 };
    let inv_freq: Vec<f32> = (0..half).map(|i| 10000f32.powf(-(i as f32) / half as f32)).collect();
    let table = b.upload_rope(&RopeTable::with_sets(&[&inv_freq], max_pos, 64, 1.1))?;
    let positions = up_u32(b, &indices(cap, max_pos, 61))?;
    let mut buf = up(b, &random(cap * cols.row_len, 62, 1.0))?;
    b.rope(backward, &mut buf, rows, cols, &positions, &table)?;
    let name = if backward { "rope backward" } else { "rope forward" };
    Ok(vec![(format!("{name} 29/33 rows, partial"), down(b, &buf, cap * cols.row_len)?)])
}

fn rope<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for backward in [false, true] {
        compare_outs(all, &rope_on(&Host, backward)?, &rope_on(dev, backward)?, 1e-6);
    }
    Ok(())
}

/// kernel_parity's layouts (GQA with q, k, v out of order; a window; heads of 256 and of 160) over the first 63
/// rows (sequences of 1, 37, 20, 5) of buffers of 70.
fn attention_on<B: Backend>(b: &B, l: QkvLayout) -> Result<Outs> {
    let cap = 70;
    let starts = seq_starts(&[1, 37, 20, 5, 7]);
    let rows = 63;
    let aw = l.n_heads * l.head_dim;
    let (qkv, seq_start) = (up(b, &random(cap * l.row_len, 63, 2.0))?, up_u32(b, &starts)?);
    let (mut out, mut stats) = (up(b, &random(cap * aw, 64, 1.0))?, b.alloc(cap * l.n_heads * 3)?);
    b.attention_forward(&mut out, Some(&mut stats), &qkv, l, &seq_start, rows)?;
    let datt = up(b, &random(cap * aw, 65, 1.0))?;
    let mut dqkv = up(b, &random(cap * l.row_len, 66, 1.0))?;
    b.attention_backward(&mut dqkv, &mut stats, &datt, &qkv, &out, l, &seq_start, rows)?;
    let window = if l.window < rows { format!(", window {}", l.window) } else { String::new() };
    let name = format!("{}/{}×{}{window}", l.n_heads, l.n_kv_heads, l.head_dim);
    Ok(vec![
        (format!("attention forward {name}"), down(b, &out, cap * aw)?),
        (format!("attention backward {name}"), down(b, &dqkv, cap * l.row_len)?),
    ])
}

/// Each layout in f32, then under `--compute bf16`, where the device's attention rounds its operands to bf16 (the
/// tensor-core kernels) and the host's stays f32: the acceptance's bf16 tolerance, 2e-2.
fn attention<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for (_, l) in attention_layouts() {
        compare_outs(all, &attention_on(&Host, l)?, &attention_on(dev, l)?, 1e-5);
    }
    under_bf16(|| {
        for (_, l) in attention_layouts() {
            let mut on_host = attention_on(&Host, l)?;
            on_host.iter_mut().for_each(|(name, _)| name.push_str(" (--compute bf16)"));
            compare_outs(all, &on_host, &attention_on(dev, l)?, 2e-2);
        }
        Ok(())
    })
}

/// The KV cache's layout of the checks: GQA (4 query heads, 2 kv heads) of 48 features (not a multiple of a
/// warp), v, k and q out of order in rows with columns to spare; the caches hold 4 slots of 40 positions.
fn kv_layout(window: usize) -> QkvLayout {
    QkvLayout {
        row_len: 391,
        q_col: 195,
        k_col: 98,
        v_col: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 48,
        scale: 0.2,
        window,
    }
}
const KV_CAPACITY: usize = 40;
/// Values of a cache: 4 slots, and 7 to spare (not a whole slot).
const KV_CACHE_LEN: usize = 4 * 2 * KV_CAPACITY * 48 + 7;

/// The first 9 of 12 uploaded rows stored, slots and positions out of order (position 0 and capacity − 1
/// among them), into random caches: both caches compared whole.
fn kv_store_on<B: Backend>(b: &B) -> Result<Outs> {
    let l = kv_layout(usize::MAX);
    let slots = [2, 0, 3, 0, 1, 2, 3, 1, 0, 1, 2, 3];
    let positions = [5, 39, 0, 7, 12, 6, 1, 3, 0, 20, 30, 33];
    let (qkv, gslots, gpositions) =
        (up(b, &random(12 * l.row_len, 100, 1.0))?, up_u32(b, &slots)?, up_u32(b, &positions)?);
    let (mut k, mut v) = (up(b, &random(KV_CACHE_LEN, 101, 1.0))?, up(b, &random(KV_CACHE_LEN, 102, 1.0))?);
    b.kv_store(&mut k, &mut v, &qkv, l, &gslots, &gpositions, 9, KV_CAPACITY)?;
    Ok(vec![
        ("kv_store 9/12 rows, k cache".into(), down(b, &k, KV_CACHE_LEN)?),
        ("kv_store 9/12 rows, v cache".into(), down(b, &v, KV_CACHE_LEN)?),
    ])
}

fn kv_store<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    compare_outs(all, &kv_store_on(&Host)?, &kv_store_on(dev)?, 0.0);
    Ok(())
}

/// A decoding step over random caches: a prefill of 20 rows of slot 1 (positions 10..30: the CPU's GEMM path,
/// RUN_MIN rows or more) then single decode rows of slots 0, 2 and 3 (positions 37, 5, 0), the first 23 of 26
/// uploaded rows; their keys and values stored (kv_store), then attention over the caches into a buffer of 26
/// rows. With a window of 24 (the prefill's last rows and the decode row at 37 see only part of their slot) and
/// without one.
fn cached_attention_on<B: Backend>(b: &B, window: usize) -> Result<Outs> {
    let l = kv_layout(window);
    let (rows, cap_rows, aw) = (23, 26, l.n_heads * l.head_dim);
    let mut slots = vec![1; 20];
    let mut positions: Vec<u32> = (10..30).collect();
    slots.extend([0, 2, 3, 3, 2, 0]);
    positions.extend([37, 5, 0, 1, 6, 38]);
    let (gslots, gpositions) = (up_u32(b, &slots)?, up_u32(b, &positions)?);
    let qkv = up(b, &random(cap_rows * l.row_len, 103, 2.0))?;
    let (mut k, mut v) = (up(b, &random(KV_CACHE_LEN, 104, 2.0))?, up(b, &random(KV_CACHE_LEN, 105, 1.0))?);
    b.kv_store(&mut k, &mut v, &qkv, l, &gslots, &gpositions, rows, KV_CAPACITY)?;
    let mut out = up(b, &random(cap_rows * aw, 106, 1.0))?;
    b.cached_attention(&mut out, &qkv, &k, &v, l, &gslots, &gpositions, rows, KV_CAPACITY)?;
    let name = if window < KV_CAPACITY { format!(", window {window}") } else { String::new() };
    Ok(vec![(format!("cached_attention 4/2×48, prefill 20 + decode 3{name}"), down(b, &out, cap_rows * aw)?)])
}

fn cached_attention<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for window in [24, usize::MAX] {
        compare_outs(all, &cached_attention_on(&Host, window)?, &cached_attention_on(dev, window)?, 1e-5);
    }
    Ok(())
}

/// A cache slot copied forwards and backwards within one buffer (ranges adjacent, and one ending at the buffer's
/// end), and an empty copy.
fn copy_within_on<B: Backend>(b: &B) -> Result<Outs> {
    let n = 1000;
    let mut buf = up(b, &random(n, 107, 1.0))?;
    b.copy_within(&mut buf, 50, 400, 300)?;
    b.copy_within(&mut buf, 700, 400, 300)?;
    b.copy_within(&mut buf, 3, 777, 223)?;
    b.copy_within(&mut buf, 10, 10, 0)?;
    Ok(vec![("copy_within forwards, backwards, to the end, empty".into(), down(b, &buf, n)?)])
}

fn copy_within<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    compare_outs(all, &copy_within_on(&Host)?, &copy_within_on(dev)?, 0.0);
    Ok(())
}

/// 97 rows of an MLP 103 wide (gate and up side by side in each row of gate_up), in buffers longer than that.
fn glu_on<B: Backend>(b: &B, act: GateAct) -> Result<Outs> {
    let (rows, f, cap) = (97, 103, 10_100);
    let gate_up = up(b, &glu_inputs(rows, f, 2 * cap))?;
    let dout = up(b, &random(cap, 69, 1.0))?;
    let mut out = up(b, &random(cap, 70, 1.0))?;
    b.glu_forward(&mut out, &gate_up, rows, f, act)?;
    let mut dgate_up = up(b, &random(2 * cap, 71, 1.0))?;
    b.glu_backward(&mut dgate_up, &dout, &gate_up, rows, f, act)?;
    Ok(vec![
        (format!("glu forward {act:?}"), down(b, &out, cap)?),
        (format!("glu backward dgate|dup {act:?}"), down(b, &dgate_up, 2 * cap)?),
    ])
}

/// rows of gate (up to ±6) and up (±2) side by side, f each, then values up to `cap` past them.
fn glu_inputs(rows: usize, f: usize, cap: usize) -> Vec<f32> {
    let (gate, upv, rest) = (random(rows * f, 67, 6.0), random(rows * f, 68, 2.0), random(cap, 66, 1.0));
    let rows_of = gate.chunks(f).zip(upv.chunks(f)).flat_map(|(g, u)| g.iter().chain(u));
    rows_of.chain(&rest[2 * rows * f..]).copied().collect()
}

/// GPT-2's ungated GELU: 10 007 values of buffers of 10 100.
fn gelu_on<B: Backend>(b: &B) -> Result<Outs> {
    let (n, cap) = (10_007, 10_100);
    let (x, dout) = (up(b, &random(cap, 167, 6.0))?, up(b, &random(cap, 169, 1.0))?);
    let (mut out, mut dx) = (up(b, &random(cap, 170, 1.0))?, up(b, &random(cap, 171, 1.0))?);
    b.gelu_forward(&mut out, &x, n)?;
    b.gelu_backward(&mut dx, &dout, &x, n)?;
    Ok(vec![("gelu forward".into(), down(b, &out, cap)?), ("gelu backward".into(), down(b, &dx, cap)?)])
}

fn gelu<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    compare_outs(all, &gelu_on(&Host)?, &gelu_on(dev)?, 1e-6);
    Ok(())
}

fn glu<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for act in [GateAct::Silu, GateAct::GeluTanh] {
        compare_outs(all, &glu_on(&Host, act)?, &glu_on(dev, act)?, 1e-6);
    }
    Ok(())
}

/// Qwen3.5's attention output gate: 10 007 values of buffers of 10 100.
fn sigmoid_gate_on<B: Backend>(b: &B) -> Result<Outs> {
    let (n, cap) = (10_007, 10_100);
    let (x, gate, dout) =
        (up(b, &random(cap, 172, 2.0))?, up(b, &random(cap, 173, 6.0))?, up(b, &random(cap, 174, 1.0))?);
    let mut out = up(b, &random(cap, 175, 1.0))?;
    b.sigmoid_gate_forward(&mut out, &x, &gate, n)?;
    let (mut dx, mut dgate) = (up(b, &random(cap, 176, 1.0))?, up(b, &random(cap, 177, 1.0))?);
    b.sigmoid_gate_backward(&mut dx, &mut dgate, &dout, &x, &gate, n)?;
    Ok(vec![
        ("sigmoid_gate forward".into(), down(b, &out, cap)?),
        ("sigmoid_gate backward dx".into(), down(b, &dx, cap)?),
        ("sigmoid_gate backward dgate".into(), down(b, &dgate, cap)?),
    ])
}

fn sigmoid_gate<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    compare_outs(all, &sigmoid_gate_on(&Host)?, &sigmoid_gate_on(dev)?, 1e-6);
    Ok(())
}

/// The Gated DeltaNet shapes of the checks, each with the sequences of its packed batch: v_heads = 2 × k_heads,
/// key heads past a warp's 32 lanes and longer than the value heads, a convolution of 4, sequences of one row and
/// of more than two chunks (37 > 2·CHUNK); one value head per key head, dk < dv (more value columns than the
/// backward's warps: two per warp), a convolution of 1 (no history), a sequence of three chunks; and a key head past
/// 128 features (the backward's kernel of 8 rows per lane), one sequence of two chunks.
const DELTA_SHAPES: [(DeltaNetShape, &[usize]); 3] = [
    (DeltaNetShape { k_heads: 2, v_heads: 4, k_head_dim: 40, v_head_dim: 12, conv_kernel: 4 }, &[37, 1, 9]),
    (DeltaNetShape { k_heads: 2, v_heads: 2, k_head_dim: 16, v_head_dim: 24, conv_kernel: 1 }, &[5, 40]),
    (DeltaNetShape { k_heads: 1, v_heads: 1, k_head_dim: 160, v_head_dim: 8, conv_kernel: 2 }, &[20]),
];

/// Rows past a batch that its buffers hold (their tails must stay as they are).
const DELTA_SPARE: usize = 5;

/// Decoding rows of the checks, (slot, position), the first 9 of 11 uploaded, over 4 slots: slot 1 restarts at
/// position 0 and runs three rows in a row, slot 2 runs two rows apart, slot 3 restarts, slot 0 runs one.
const DECODE_ROWS: [(u32, u32); 11] =
    [(2, 5), (1, 0), (1, 1), (1, 2), (0, 7), (2, 6), (3, 0), (1, 3), (3, 1), (0, 3), (2, 9)];
const DECODE_SLOTS: usize = 4;

/// [`DECODE_ROWS`]' slots and positions on a backend, and how many rows run.
fn decode_rows<B: Backend>(b: &B) -> Result<(B::U32, B::U32, usize)> {
    let (slots, positions): (Vec<u32>, Vec<u32>) = DECODE_ROWS.into_iter().unzip();
    Ok((up_u32(b, &slots)?, up_u32(b, &positions)?, 9))
}

/// The convolution and SiLU over a packed batch (the first rows of a longer seq_start) and its backward, with dw and
/// without; then decoding rows ([`DECODE_ROWS`]) over random histories of each slot's last inputs.
fn delta_conv_on<B: Backend>(b: &B, s: &DeltaNetShape, lengths: &[usize]) -> Result<Outs> {
    let (c, p, kw) = (s.conv_dim(), s.proj_width(), s.conv_kernel);
    let rows: usize = lengths.iter().sum();
    let cap = rows + DELTA_SPARE;
    let seq_start = up_u32(b, &seq_starts(&[lengths, &[DELTA_SPARE]].concat()))?;
    let (proj, w) = (up(b, &random(cap * p, 180, 1.0))?, up(b, &random(c * kw + 3, 181, 0.7))?);
    let (mut out, mut pre) = (up(b, &random(cap * c, 182, 1.0))?, up(b, &random(cap * c, 183, 1.0))?);
    b.delta_conv_forward(&mut out, &mut pre, &proj, &w, &seq_start, rows, s)?;
    let (mut dproj, mut dw) = (up(b, &random(cap * p, 184, 1.0))?, up(b, &random(c * kw + 3, 185, 1.0))?);
    let mut dout = up(b, &random(cap * c, 186, 1.0))?;
    b.delta_conv_backward(&mut dproj, Some(&mut dw), &mut dout, &pre, &proj, &w, &seq_start, rows, s)?;
    let (mut dproj_only, mut dout_only) = (up(b, &random(cap * p, 187, 1.0))?, up(b, &random(cap * c, 188, 1.0))?);
    b.delta_conv_backward(&mut dproj_only, None, &mut dout_only, &pre, &proj, &w, &seq_start, rows, s)?;
    let (slots, positions, steps) = decode_rows(b)?;
    let hist_len = DECODE_SLOTS * (kw - 1) * c + 7;
    let mut hist = up(b, &random(hist_len, 189, 1.0))?;
    let (mut step_out, mut step_pre) = (up(b, &random(cap * c, 190, 1.0))?, up(b, &random(cap * c, 191, 1.0))?);
    b.delta_conv_cached(&mut step_out, &mut step_pre, &proj, &w, &mut hist, &slots, &positions, steps, s)?;
    let name = |what: &str| format!("delta_conv {what} (K {kw}, {rows}/{cap} rows)");
    Ok(vec![
        (name("forward out"), down(b, &out, cap * c)?),
        (name("forward pre"), down(b, &pre, cap * c)?),
        (name("backward dproj"), down(b, &dproj, cap * p)?),
        (name("backward dw"), down(b, &dw, c * kw + 3)?),
        (name("backward dpre"), down(b, &dout, cap * c)?),
        (name("backward dproj, no dw"), down(b, &dproj_only, cap * p)?),
        (name("cached out"), down(b, &step_out, cap * c)?),
        (name("cached pre"), down(b, &step_pre, cap * c)?),
        (name("cached history"), down(b, &hist, hist_len)?),
    ])
}

fn delta_conv<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for (s, lengths) in &DELTA_SHAPES {
        compare_outs(all, &delta_conv_on(&Host, s, lengths)?, &delta_conv_on(dev, s, lengths)?, 1e-5);
    }
    Ok(())
}

/// `n` rows of `dim` values of L2 norm `norm`: the recurrence's k (norm 1) and q (dk^-½), as the model makes them.
fn unit_rows(n: usize, dim: usize, stream: u64, norm: f32) -> Vec<f32> {
    let mut v = random(n * dim, stream, 1.0);
    for r in v.chunks_exact_mut(dim) {
        let scale = norm / r.iter().map(|x| x * x).sum::<f32>().sqrt();
        r.iter_mut().for_each(|x| *x *= scale);
    }
    v
}

/// The recurrence's head-major buffers on a backend ([`DeltaBufs`]), room for `cap` rows of every value head.
struct DeltaHeads<B: Backend> {
    q: B::F32,
    k: B::F32,
    v: B::F32,
    g: B::F32,
    beta: B::F32,
}

impl<B: Backend> DeltaHeads<B> {
    /// Random values from streams `seed`...
    fn random(b: &B, s: &DeltaNetShape, cap: usize, seed: u64) -> Result<Self> {
        let n = s.v_heads * cap;
        let (dk, dv) = (s.k_head_dim, s.v_head_dim);
        Ok(DeltaHeads {
            q: up(b, &random(n * dk, seed, 1.0))?,
            k: up(b, &random(n * dk, seed + 1, 1.0))?,
            v: up(b, &random(n * dv, seed + 2, 1.0))?,
            g: up(b, &random(n, seed + 3, 1.0))?,
            beta: up(b, &random(n, seed + 4, 1.0))?,
        })
    }

    /// [`Self::random`] as the recurrence's inputs are (a contraction, whose states stay bounded): q and k rows
    /// L2-normed, q × dk^-½, decays g in [−1, −0.05), β in [0.1, 0.9).
    fn inputs(b: &B, s: &DeltaNetShape, cap: usize, seed: u64) -> Result<Self> {
        let n = s.v_heads * cap;
        let dk = s.k_head_dim;
        let shift = |v: Vec<f32>, by: f32| v.into_iter().map(|x| x + by).collect::<Vec<_>>();
        Ok(DeltaHeads {
            q: up(b, &unit_rows(n, dk, seed, (dk as f32).powf(-0.5)))?,
            k: up(b, &unit_rows(n, dk, seed + 1, 1.0))?,
            v: up(b, &random(n * s.v_head_dim, seed + 2, 1.0))?,
            g: up(b, &shift(random(n, seed + 3, 0.475), -0.525))?,
            beta: up(b, &shift(random(n, seed + 4, 0.4), 0.5))?,
        })
    }

    fn bufs(&self) -> DeltaBufs<'_, B> {
        DeltaBufs { q: &self.q, k: &self.k, v: &self.v, g: &self.g, beta: &self.beta }
    }

    fn grads(&mut self) -> DeltaGrads<'_, B> {
        DeltaGrads { dq: &mut self.q, dk: &mut self.k, dv: &mut self.v, dg: &mut self.g, dbeta: &mut self.beta }
    }

    /// Each buffer whole, named `what` and its part.
    fn down(&self, b: &B, s: &DeltaNetShape, cap: usize, what: &str) -> Result<Outs> {
        let n = s.v_heads * cap;
        let (dk, dv) = (s.k_head_dim, s.v_head_dim);
        let parts =
            [("q", &self.q, dk), ("k", &self.k, dk), ("v", &self.v, dv), ("g", &self.g, 1), ("β", &self.beta, 1)];
        parts.into_iter().map(|(part, x, dim)| Ok((format!("{what} {part}"), down(b, x, n * dim)?))).collect()
    }
}

/// The recurrence's inputs from a convolution's output and the projections, over `rows` rows of buffers with
/// [`DELTA_SPARE`] more, and the backward from random gradients (∂dt_bias, ∂A_log added to random values): rows
/// past one chunk of the column sums.
fn delta_inputs_on<B: Backend>(b: &B, s: &DeltaNetShape, rows: usize) -> Result<Outs> {
    let (c, p, hv, hk) = (s.conv_dim(), s.proj_width(), s.v_heads, s.k_heads);
    let cap = rows + DELTA_SPARE;
    let (conv, proj) = (up(b, &random(cap * c, 192, 1.0))?, up(b, &random(cap * p, 193, 3.0))?);
    let (dt_bias, a_log) = (up(b, &random(hv + 2, 194, 1.0))?, up(b, &random(hv + 2, 195, 1.0))?);
    let mut x = DeltaHeads::random(b, s, cap, 196)?;
    let (mut q_rnorm, mut k_rnorm) = (up(b, &random(cap * hk, 201, 1.0))?, up(b, &random(cap * hk, 202, 1.0))?);
    let out = DeltaInputsMut {
        q: &mut x.q,
        k: &mut x.k,
        v: &mut x.v,
        g: &mut x.g,
        beta: &mut x.beta,
        q_rnorm: &mut q_rnorm,
        k_rnorm: &mut k_rnorm,
    };
    b.delta_inputs_forward(out, &conv, &proj, &dt_bias, &a_log, rows, s)?;
    let d = DeltaHeads::random(b, s, cap, 203)?;
    let (mut dconv, mut dproj) = (up(b, &random(cap * c, 208, 1.0))?, up(b, &random(cap * p, 209, 1.0))?);
    let (mut ddt, mut da_log) = (up(b, &random(hv + 2, 210, 1.0))?, up(b, &random(hv + 2, 211, 1.0))?);
    let saved = DeltaSaved { x: x.bufs(), q_rnorm: &q_rnorm, k_rnorm: &k_rnorm, conv: &conv, proj: &proj };
    let (dt, al) = (Some(&mut ddt), Some(&mut da_log));
    b.delta_inputs_backward(&mut dconv, &mut dproj, dt, al, d.bufs(), saved, &dt_bias, &a_log, rows, s)?;
    let what = format!("delta_inputs ({hk}/{hv} heads of {}, {rows}/{cap} rows)", s.k_head_dim);
    let mut outs = x.down(b, s, cap, &format!("{what} forward"))?;
    outs.extend([
        (format!("{what} forward 1/‖q‖"), down(b, &q_rnorm, cap * hk)?),
        (format!("{what} forward 1/‖k‖"), down(b, &k_rnorm, cap * hk)?),
        (format!("{what} backward dconv"), down(b, &dconv, cap * c)?),
        (format!("{what} backward dproj"), down(b, &dproj, cap * p)?),
        (format!("{what} backward ∂dt_bias"), down(b, &ddt, hv + 2)?),
        (format!("{what} backward ∂A_log"), down(b, &da_log, hv + 2)?),
    ]);
    Ok(outs)
}

fn delta_inputs<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for (s, _) in &DELTA_SHAPES {
        compare_outs(all, &delta_inputs_on(&Host, s, 100)?, &delta_inputs_on(dev, s, 100)?, 1e-5);
    }
    Ok(())
}

/// The recurrence over a packed batch — forward with saved states and without, backward from random ∂o — and
/// decoding rows ([`DECODE_ROWS`]) from random states of each slot.
fn delta_rule_on<B: Backend>(b: &B, s: &DeltaNetShape, lengths: &[usize]) -> Result<Outs> {
    let (hv, dk, dv) = (s.v_heads, s.k_head_dim, s.v_head_dim);
    let rows: usize = lengths.iter().sum();
    let cap = rows + DELTA_SPARE;
    let (mut seqs, mut table) = (vec![], vec![]);
    sequences(&mut seqs, &seq_starts(lengths));
    seq_table(&mut table, &seqs);
    let (gseqs, saved_len) = (up_u32(b, &table)?, hv * checkpoints(&seqs) * dk * dv + 11);
    let x = DeltaHeads::inputs(b, s, cap, 212)?;
    let (mut o, mut saved) = (up(b, &random(hv * cap * dv, 217, 1.0))?, up(b, &random(saved_len, 218, 1.0))?);
    b.delta_rule_forward(&mut o, Some(&mut saved), x.bufs(), &gseqs, lengths.len(), rows, s)?;
    let mut o_only = up(b, &random(hv * cap * dv, 219, 1.0))?;
    b.delta_rule_forward(&mut o_only, None, x.bufs(), &gseqs, lengths.len(), rows, s)?;
    let d_o = up(b, &random(hv * cap * dv, 220, 1.0))?;
    let mut d = DeltaHeads::random(b, s, cap, 221)?;
    b.delta_rule_backward(d.grads(), &d_o, x.bufs(), &saved, &gseqs, lengths.len(), rows, s)?;
    let (slots, positions, steps) = decode_rows(b)?;
    let state_len = DECODE_SLOTS * hv * dk * dv + 5;
    let step_x = DeltaHeads::inputs(b, s, DECODE_ROWS.len(), 226)?;
    let step_len = hv * DECODE_ROWS.len() * dv;
    let (mut state, mut step_o) = (up(b, &random(state_len, 231, 0.5))?, up(b, &random(step_len, 232, 1.0))?);
    b.delta_rule_cached(&mut step_o, step_x.bufs(), &mut state, &slots, &positions, steps, s)?;
    let what = format!("delta_rule ({hv} heads, dk {dk}, dv {dv}, sequences {lengths:?})");
    let mut outs = vec![
        (format!("{what} forward o"), down(b, &o, hv * cap * dv)?),
        (format!("{what} forward saved states"), down(b, &saved, saved_len)?),
        (format!("{what} forward o, no states"), down(b, &o_only, hv * cap * dv)?),
    ];
    outs.extend(d.down(b, s, cap, &format!("{what} backward ∂"))?);
    outs.extend([
        (format!("{what} cached o ({steps} decoding rows)"), down(b, &step_o, step_len)?),
        (format!("{what} cached states"), down(b, &state, state_len)?),
    ]);
    Ok(outs)
}

fn delta_rule<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for (s, lengths) in &DELTA_SHAPES {
        compare_outs(all, &delta_rule_on(&Host, s, lengths)?, &delta_rule_on(dev, s, lengths)?, 1e-5);
    }
    Ok(())
}

/// The gated RMSNorm over `rows` rows of buffers with [`DELTA_SPARE`] more, and its backward with ∂w (its column
/// sums over several chunks of (row, head) pairs) and without.
fn delta_norm_on<B: Backend>(b: &B, s: &DeltaNetShape, rows: usize) -> Result<Outs> {
    let (hv, dv, p, vd) = (s.v_heads, s.v_head_dim, s.proj_width(), s.value_dim());
    let cap = rows + DELTA_SPARE;
    let (o, proj, w) = (
        up(b, &random(hv * cap * dv, 233, 2.0))?,
        up(b, &random(cap * p, 234, 3.0))?,
        up(b, &random(dv + 3, 235, 1.0))?,
    );
    let (mut y, mut rstd) = (up(b, &random(cap * vd, 236, 1.0))?, up(b, &random(cap * hv, 237, 1.0))?);
    b.delta_norm_forward(&mut y, &mut rstd, &o, &proj, &w, rows, s, 1e-6)?;
    let dy = up(b, &random(cap * vd, 238, 1.0))?;
    let (mut dproj, mut d_o, mut dw) = (
        up(b, &random(cap * p, 239, 1.0))?,
        up(b, &random(hv * cap * dv, 240, 1.0))?,
        up(b, &random(dv + 3, 241, 1.0))?,
    );
    b.delta_norm_backward(&mut dproj, &mut d_o, Some(&mut dw), &dy, &o, &rstd, &proj, &w, rows, s)?;
    let mut d_o_only = up(b, &random(hv * cap * dv, 242, 1.0))?;
    b.delta_norm_backward(&mut dproj, &mut d_o_only, None, &dy, &o, &rstd, &proj, &w, rows, s)?;
    let name = |what: &str| format!("delta_norm {what} ({hv} heads of {dv}, {rows}/{cap} rows)");
    Ok(vec![
        (name("forward y"), down(b, &y, cap * vd)?),
        (name("forward rstd"), down(b, &rstd, cap * hv)?),
        (name("backward dproj"), down(b, &dproj, cap * p)?),
        (name("backward d_o"), down(b, &d_o, hv * cap * dv)?),
        (name("backward dw"), down(b, &dw, dv + 3)?),
        (name("backward d_o, no dw"), down(b, &d_o_only, hv * cap * dv)?),
    ])
}

fn delta_norm<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for (s, _) in &DELTA_SHAPES {
        compare_outs(all, &delta_norm_on(&Host, s, 100)?, &delta_norm_on(dev, s, 100)?, 1e-5);
    }
    Ok(())
}

/// 5 rows of 1000 logits in buffers of 7 rows, their losses from the second value of 8; the losses as f32 next
/// to the dlogits (their error, relative to the largest loss, is far below f32's).
fn cross_entropy_on<B: Backend>(b: &B, smoothing: f32) -> Result<Outs> {
    let (rows, vocab, cap) = (5, 1000, 7);
    let mut logits = up(b, &random(cap * vocab, 73, 8.0))?;
    let (mut loss, targets) = (b.alloc_f64(cap + 1)?, up_u32(b, &indices(cap, vocab, 74))?);
    b.cross_entropy_rows(&mut logits, &mut loss, 1, &targets, rows, vocab, 0.37, smoothing)?;
    let mut l = vec![0.0; cap + 1];
    b.download_f64(&loss, &mut l)?;
    Ok(vec![
        (format!("cross_entropy_rows loss (ε {smoothing})"), l.iter().map(|&v| v as f32).collect()),
        (format!("cross_entropy_rows dlogits (ε {smoothing})"), down(b, &logits, cap * vocab)?),
    ])
}

fn cross_entropy<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for smoothing in [0.0, 0.1] {
        compare_outs(all, &cross_entropy_on(&Host, smoothing)?, &cross_entropy_on(dev, smoothing)?, 1e-6);
    }
    Ok(())
}

/// n values of buffers 100 longer: the forward (values and mask words, those past n's included), the same
/// values again from the mask, and the backward's dx +=.
fn dropout_on<B: ReadMask>(b: &B, n: usize) -> Result<(Outs, Vec<u64>)> {
    let (cap, p, key) = (n + 100, 0.3, stream_key(7, 99));
    let x = up(b, &random(cap, 75, 1.0))?;
    let (mut dropped, mut keep) = (up(b, &random(cap, 76, 1.0))?, b.alloc_mask(cap)?);
    b.dropout_forward(&mut dropped, &mut keep, &x, n, p, key)?;
    let mut again = up(b, &random(cap, 77, 1.0))?;
    b.dropout_again(&mut again, &keep, &x, n, p)?;
    let (t, mut dx) = (up(b, &random(cap, 78, 1.0))?, up(b, &random(cap, 79, 1.0))?);
    b.dropout_backward(&mut dx, &t, &keep, n, p)?;
    let outs = vec![
        (format!("dropout forward {n}/{cap}"), down(b, &dropped, cap)?),
        (format!("dropout again {n}/{cap}"), down(b, &again, cap)?),
        (format!("dropout backward {n}/{cap}"), down(b, &dx, cap)?),
    ];
    Ok((outs, b.read_mask(&keep)?))
}

/// A partial last word, and more than one of the CPU's parallel chunks.
fn dropout<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for n in [1000, 40_013] {
        let ((cpu, cpu_mask), (gpu, gpu_mask)) = (dropout_on(&Host, n)?, dropout_on(dev, n)?);
        compare_outs(all, &cpu, &gpu, 0.0);
        let differ =
            cpu_mask.iter().zip(&gpu_mask).filter(|(c, g)| c != g).count() + cpu_mask.len().abs_diff(gpu_mask.len());
        all.push(Compared {
            name: format!("dropout mask {n} (words)"),
            measure: DIFFERING,
            err: differ as f64,
            tol: 0.0,
        });
    }
    // The product summed in another order than the reference's GEMM: within kernel_parity's f32 tolerance.
    // Shapes of one chunk of rows and of du's columns, and of several of each with partial last ones.
    for shape in [(7, 33, 1), (37, 301, 16), (300, 70, 37)] {
        compare_outs(all, &lora_dropout_on(&Host, shape)?, &lora_dropout_on(dev, shape)?, 1e-5);
    }
    Ok(())
}

/// LoRA's products through its dropout at `shape` (rows, in, r), a mask drawn over rows·in values of longer
/// buffers: dx += keep ⊙ (du·a) / (1 − p), dx a prefix of one (its tail must stay), and dA += duᵀ · dropout(x).
fn lora_dropout_on<B: Backend>(b: &B, (rows, inp, r): (usize, usize, usize)) -> Result<Outs> {
    let (n, cap, p) = (rows * inp, rows * inp + 50, 0.2);
    let (x, mut x_drop, mut keep) = (up(b, &random(cap, 110, 1.0))?, b.alloc(cap)?, b.alloc_mask(cap)?);
    b.dropout_forward(&mut x_drop, &mut keep, &x, n, p, stream_key(8, 3))?;
    let (du, a) = (up(b, &random(rows * r + 9, 111, 1.0))?, up(b, &random(r * inp + 11, 112, 1.0))?);
    let (mut dx, mut t) = (up(b, &random(cap, 113, 1.0))?, b.alloc(cap)?);
    b.lora_dropout_dx(&mut dx, &mut t, &du, &a, &keep, (rows, inp, r), p)?;
    let mut da = up(b, &random(r * inp + 13, 114, 1.0))?;
    b.lora_dropout_da(&mut da, &mut t, &du, &x, &keep, (rows, inp, r), p)?;
    Ok(vec![
        (format!("lora_dropout_dx ({rows}, {inp}, r {r}) {n}/{cap}"), down(b, &dx, cap)?),
        (
            format!("lora_dropout_da ({rows}, {inp}, r {r}) += {}/{}", r * inp, r * inp + 13),
            down(b, &da, r * inp + 13)?,
        ),
    ])
}

/// The ops of the MLP's activations kept in bf16 (`Backend::bf16_activations`) on both sides: a bf16 output may
/// differ by one rounding (an ulp, 2⁻⁸ of the largest value: 1e-2), f32 sums of bf16 products within 1e-5; the
/// dropout's values and mask bit for bit.
fn bf16_activations<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    for (m, n, k) in [(37, 29, 45), (70, 130, 300)] {
        for (i, (ta, tb)) in [(false, false), (false, true), (true, false), (true, true)].into_iter().enumerate() {
            for (through, tol) in [(Through::Bf16A, 1e-5), (Through::Bf16Out, 1e-2)] {
                let case = GemmCase { m, n, k, ta, tb, accumulate: i % 2 == 1, through };
                compare(all, &case.name(), &case.run(dev)?, &case.run(&Host)?, tol);
            }
        }
    }
    for offset in [0.0, 1.0] {
        let (cpu, gpu) = (rmsnorm_bf16_on(&Host, offset)?, rmsnorm_bf16_on(dev, offset)?);
        for ((name, c), (_, g)) in cpu.iter().zip(&gpu) {
            compare(all, name, g, c, if name.contains("rstd") { 1e-5 } else { 1e-2 });
        }
    }
    for act in [GateAct::Silu, GateAct::GeluTanh] {
        compare_outs(all, &glu_bf16_on(&Host, act)?, &glu_bf16_on(dev, act)?, 1e-2);
    }
    for smoothing in [0.0, 0.1] {
        let (cpu, gpu) = (cross_entropy_bf16_on(&Host, smoothing)?, cross_entropy_bf16_on(dev, smoothing)?);
        for ((name, c), (_, g)) in cpu.iter().zip(&gpu) {
            compare(all, name, g, c, if name.contains("loss") || name.contains("logits left") { 1e-6 } else { 1e-2 });
        }
    }
    for shape in [(7, 33, 1), (37, 301, 16), (300, 70, 37)] {
        let ((cpu, cpu_mask), (gpu, gpu_mask)) =
            (lora_dropout_bf16_on(&Host, shape)?, lora_dropout_bf16_on(dev, shape)?);
        for ((name, c), (_, g)) in cpu.iter().zip(&gpu) {
            let tol = if name.starts_with("dropout_forward_bf16") {
                0.0
            } else if name.contains("_dx") {
                1e-2
            } else {
                1e-5
            };
            compare(all, name, g, c, tol);
        }
        let differ = cpu_mask.iter().zip(&gpu_mask).filter(|(c, g)| c != g).count();
        all.push(Compared {
            name: format!("dropout_forward_bf16 mask {shape:?} (words)"),
            measure: DIFFERING,
            err: differ as f64,
            tol: 0.0,
        });
    }
    Ok(())
}

/// [`rmsnorm_on`]'s forward into a bf16 output.
fn rmsnorm_bf16_on<B: ReadMask>(b: &B, offset: f32) -> Result<Outs> {
    let (rows, dim, cap) = (100, 300, 106);
    let (x, w) = (up(b, &random(cap * dim, 54, 2.0))?, up(b, &random(dim + 5, 55, 1.0))?);
    let (mut out, mut rstd) = (up_bf16(b, &random(cap * dim, 57, 1.0))?, up(b, &random(cap, 58, 1.0))?);
    b.rmsnorm_forward_bf16(&mut out, &mut rstd, &x, &w, rows, dim, offset, 1e-6)?;
    Ok(vec![
        (format!("rmsnorm_forward_bf16 out (offset {offset})"), down_bf16(b, &out)?),
        (format!("rmsnorm_forward_bf16 rstd (offset {offset})"), down(b, &rstd, cap)?),
    ])
}

/// [`cross_entropy_on`] with the dlogits into a bf16 buffer: the losses, the dlogits, and the logits (left as they
/// were).
fn cross_entropy_bf16_on<B: ReadMask>(b: &B, smoothing: f32) -> Result<Outs> {
    let (rows, vocab, cap) = (5, 1000, 7);
    let logits = up(b, &random(cap * vocab, 73, 8.0))?;
    let mut dlogits = up_bf16(b, &random(cap * vocab, 74, 1.0))?;
    let (mut loss, targets) = (b.alloc_f64(cap + 1)?, up_u32(b, &indices(cap, vocab, 74))?);
    b.cross_entropy_rows_bf16(&logits, &mut dlogits, &mut loss, 1, &targets, rows, vocab, 0.37, smoothing)?;
    let mut l = vec![0.0; cap + 1];
    b.download_f64(&loss, &mut l)?;
    Ok(vec![
        (format!("cross_entropy_rows_bf16 loss (ε {smoothing})"), l.iter().map(|&v| v as f32).collect()),
        (format!("cross_entropy_rows_bf16 dlogits (ε {smoothing})"), down_bf16(b, &dlogits)?),
        (format!("cross_entropy_rows_bf16 logits left (ε {smoothing})"), down(b, &logits, cap * vocab)?),
    ])
}

/// [`glu_on`] on bf16 buffers.
fn glu_bf16_on<B: ReadMask>(b: &B, act: GateAct) -> Result<Outs> {
    let (rows, f, cap) = (97, 103, 10_100);
    let gate_up = up_bf16(b, &glu_inputs(rows, f, 2 * cap))?;
    let dout = up_bf16(b, &random(cap, 69, 1.0))?;
    let mut out = up_bf16(b, &random(cap, 70, 1.0))?;
    b.glu_forward_bf16(&mut out, &gate_up, rows, f, act)?;
    let mut dgate_up = up_bf16(b, &random(2 * cap, 71, 1.0))?;
    b.glu_backward_bf16(&mut dgate_up, &dout, &gate_up, rows, f, act)?;
    Ok(vec![
        (format!("glu_forward_bf16 {act:?}"), down_bf16(b, &out)?),
        (format!("glu_backward_bf16 dgate|dup {act:?}"), down_bf16(b, &dgate_up)?),
    ])
}

/// [`lora_dropout_on`] with x and dx kept in bf16 (dropout_forward_bf16 drawing the mask): the dropped values, dx,
/// dA; and the mask.
fn lora_dropout_bf16_on<B: ReadMask>(b: &B, (rows, inp, r): (usize, usize, usize)) -> Result<(Outs, Vec<u64>)> {
    let (n, cap, p) = (rows * inp, rows * inp + 50, 0.2);
    let (x, mut x_drop, mut keep) = (up_bf16(b, &random(cap, 110, 1.0))?, b.alloc_bf16(cap)?, b.alloc_mask(cap)?);
    b.dropout_forward_bf16(&mut x_drop, &mut keep, &x, n, p, stream_key(8, 3))?;
    let (du, a) = (up(b, &random(rows * r + 9, 111, 1.0))?, up(b, &random(r * inp + 11, 112, 1.0))?);
    let mut dx = up_bf16(b, &random(cap, 113, 1.0))?;
    b.lora_dropout_dx_bf16(&mut dx, &du, &a, &keep, (rows, inp, r), p)?;
    let mut da = up(b, &random(r * inp + 13, 114, 1.0))?;
    b.lora_dropout_da_bf16(&mut da, &du, &x, &keep, (rows, inp, r), p)?;
    let outs = vec![
        (format!("dropout_forward_bf16 ({rows}, {inp}) {n}/{cap}"), down_bf16(b, &x_drop)?),
        (format!("lora_dropout_dx_bf16 ({rows}, {inp}, r {r}) {n}/{cap}"), down_bf16(b, &dx)?),
        (
            format!("lora_dropout_da_bf16 ({rows}, {inp}, r {r}) += {}/{}", r * inp, r * inp + 13),
            down(b, &da, r * inp + 13)?,
        ),
    ];
    Ok((outs, b.read_mask(&keep)?))
}

/// Three tensors in one call: a long one that decays, a short one that does not, and a prefix of a longer buffer;
/// the gradients (zeroed by the step) are compared too.
fn adamw_on<B: Backend>(b: &B) -> Result<Outs> {
    let cap = 10_100;
    let mut bufs = vec![];
    for (i, seed) in [80u64, 90, 100].into_iter().enumerate() {
        let v: Vec<f32> = random(cap, seed + 3, 1e-3).iter().map(|x| x.abs()).collect();
        let (w, g, m) = (random(cap, seed, 1.0), random(cap, seed + 1, 0.1), random(cap, seed + 2, 0.01));
        bufs.push((i, up(b, &w)?, up(b, &g)?, up(b, &m)?, up(b, &v)?));
    }
    let shapes = [(10_007, true), (33, false), (10_099, true)];
    let mut tensors: Vec<AdamWTensor<B>> = bufs
        .iter_mut()
        .map(|(i, w, g, m, v)| AdamWTensor { w, g, m, v, n: shapes[*i].0, decays: shapes[*i].1, bf16: None })
        .collect();
    // A clipping coefficient, applied to every gradient before the step.
    b.adamw(&mut tensors, 0.37, &AdamWScalars::new(&AdamWConfig::default(), 1e-3, 3))?;
    let mut outs = vec![];
    for (i, w, g, m, v) in &bufs {
        for (what, buf) in [("w", w), ("g", g), ("m", m), ("v", v)] {
            outs.push((format!("adamw tensor {i} {what}"), down(b, buf, cap)?));
        }
    }
    Ok(outs)
}

fn adamw<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    compare_outs(all, &adamw_on(&Host)?, &adamw_on(dev)?, 1e-6);
    all.push(adamw_bf16_copy(dev)?);
    Ok(())
}

/// A tensor's bf16 copy written by the step: `bf16::round` of the step's own new values (whatever rounding those
/// took), its tail past n untouched — the count of elements where it is not.
fn adamw_bf16_copy<B: ReadMask>(b: &B) -> Result<Compared> {
    let (n, cap) = (5_003, 5_100);
    let (mut w, mut g) = (up(b, &random(cap, 120, 1.0))?, up(b, &random(cap, 121, 0.1))?);
    let (mut m, mut v) = (up(b, &random(cap, 122, 0.01))?, up(b, &vec![1e-4; cap])?);
    let mut h = b.alloc_bf16(cap)?;
    let t = AdamWTensor { w: &mut w, g: &mut g, m: &mut m, v: &mut v, n, decays: true, bf16: Some(&mut h) };
    b.adamw(&mut [t], 1.0, &AdamWScalars::new(&AdamWConfig::default(), 1e-2, 1))?;
    let (w, h) = (down(b, &w, n)?, b.read_bf16(&h)?);
    let wrong = (0..cap).filter(|&i| h[i] != if i < n { condlm::kernels::bf16::round(w[i]) } else { 0 }).count();
    Ok(Compared {
        name: format!("adamw's bf16 copy {n}/{cap} (values)"),
        measure: DIFFERING,
        err: wrong as f64,
        tol: 0.0,
    })
}

/// Every op on zero rows or values leaves its buffers as they are (and launches nothing that could fail).
fn empty_on<B: Backend>(b: &B) -> Result<Outs> {
    let x = up(b, &random(64, 84, 1.0))?;
    let ids = up_u32(b, &[0; 4])?;
    let mut y = up(b, &random(64, 85, 1.0))?;
    let mut keep = b.alloc_mask(64)?;
    b.scale(&mut y, &x, 0, 2.0)?;
    b.rmsnorm_forward(&mut y, &mut b.alloc(4)?, &x, &x, 0, 8, 0.0, 1e-6)?;
    b.layernorm_forward(&mut y, &mut b.alloc(4)?, &mut b.alloc(4)?, &x, &x, &x, 0, 8, 1e-5)?;
    b.layernorm_backward(&mut y, None, None, &x, &x, &x, &x, &x, 0, 8)?;
    b.gelu_forward(&mut y, &x, 0)?;
    b.embedding(&mut y, &x, &ids, 0, 8, None)?;
    b.scatter_add_rows(&mut y, &x, &ids, 0, 8)?;
    b.add_column_sums(&mut y, &x, MatView { offset: 3, rows: 0, cols: 8, ld: 8, trans: false })?;
    b.embedding_backward(&mut y, &x, &ids, &[], 0, 8)?;
    b.glu_forward(&mut y, &x, 0, 8, GateAct::Silu)?;
    b.dropout_forward(&mut y, &mut keep, &x, 0, 0.5, 1)?;
    b.cross_entropy_rows(&mut y, &mut b.alloc_f64(4)?, 4, &ids, 0, 8, 1.0, 0.0)?;
    b.gemm(&mut y, MatView::dense(0, 8), &x, MatView::dense(0, 8), &x, MatView::dense(8, 8), false)?;
    let l = kv_layout(usize::MAX);
    let (mut k, mut v) = (up(b, &random(8, 108, 1.0))?, up(b, &random(8, 109, 1.0))?);
    b.kv_store(&mut k, &mut v, &x, l, &ids, &ids, 0, KV_CAPACITY)?;
    b.cached_attention(&mut y, &x, &k, &v, l, &ids, &ids, 0, KV_CAPACITY)?;
    b.copy_within(&mut y, 60, 2, 0)?;
    // Decoding's ops of a Gated DeltaNet layer (those the reference also takes on no rows).
    let s = DeltaNetShape { k_heads: 1, v_heads: 1, k_head_dim: 2, v_head_dim: 2, conv_kernel: 2 };
    let (mut z, mut state) = (up(b, &random(64, 243, 1.0))?, up(b, &random(8, 244, 1.0))?);
    let heads = DeltaBufs { q: &x, k: &x, v: &x, g: &x, beta: &x };
    b.sigmoid_gate_forward(&mut y, &x, &x, 0)?;
    b.delta_conv_cached(&mut y, &mut z, &x, &x, &mut state, &ids, &ids, 0, &s)?;
    b.delta_rule_cached(&mut y, heads, &mut state, &ids, &ids, 0, &s)?;
    b.delta_norm_forward(&mut y, &mut z, &x, &x, &x, 0, &s, 1e-6)?;
    Ok(vec![
        ("empty ops leave their buffers".into(), [down(b, &y, 64)?, down(b, &z, 64)?].concat()),
        ("empty kv_store leaves the caches".into(), [down(b, &k, 8)?, down(b, &v, 8)?].concat()),
        ("empty Gated DeltaNet steps leave the states".into(), down(b, &state, 8)?),
    ])
}

fn empty<B: ReadMask>(dev: &B, all: &mut Vec<Compared>) -> Result<()> {
    compare_outs(all, &empty_on(&Host)?, &empty_on(dev)?, 0.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scenarios run on the CPU (shapes, prefixes and views fit their buffers), and the reference agrees
    /// with itself — what `--check-kernels` then runs against a GPU.
    #[test]
    fn every_check_runs_on_the_reference() {
        assert_eq!(run_checks("backend host", &Host, &checks()).unwrap(), 0);
    }
}
