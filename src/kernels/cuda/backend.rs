//! [`Backend`] on one GPU: buffers are `CudaSlice`s on the device's stream, each op the CUDA kernel (or cuBLAS
//! product, or driver copy) that mirrors what `backend::host::Host` calls on the CPU, on the same prefixes of the
//! same buffers. Everything runs in stream order on the device's one stream, so ops need no events between them.
//! The reads (`download`, `download_f64`) wait for the GPU; ops whose launches index rows check
//! what the indices' upload found (`IndexFacts`) instead of copying them back; `embedding_backward` groups its rows
//! by id on the host, from the ids in host memory, and copies that grouping to the device (the copy, from pageable
//! memory, may wait for the stream). Checked against `Host` op by op by `condlm info --devices --check-kernels`
//! (cli/backend_parity.rs). Ops that neither allocate nor copy to or from the host can be captured into a CUDA graph
//! (`begin_capture`, `end_capture`, `replay`): decoding replays a step's launches as one.
use super::device::Device;
use super::devices::probe;
use super::gemm::{Blas, GemmError};
use super::ops::delta_mixer::{self, InputsMut, InputsSaved};
use super::ops::gated_delta::{self, DeltaViews, DeltaViewsMut};
use super::ops::indices::{IndexFacts, Indices};
use super::ops::rope::RopeLayout;
use super::ops::rows::RowGroups;
use super::ops::{
    Elem, adamw, attention, bf16, column_scratch, cross_entropy, dequant, dropout, elementwise, glu, kv_cache, norm,
    reduce, rope, rows,
};
use super::profile::Profile;
use crate::kernels::activation::GateAct;
use crate::kernels::adamw::AdamWScalars;
use crate::kernels::attention::QkvLayout;
use crate::kernels::backend::{
    AdamWTensor, Backend, DeltaBufs, DeltaGrads, DeltaInputsMut, DeltaSaved, MatView, PackedView, RopeCols, Values,
    ValuesMut,
};
use crate::kernels::compute::{Compute, compute};
use crate::kernels::dequant::GgmlType;
use crate::kernels::dropout::mask_words;
use crate::kernels::gated_delta::{DeltaDims, DeltaNetShape};
use crate::kernels::rope::RopeTable;
use anyhow::{Context, Result, anyhow, bail};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode, CUstreamCaptureStatus};
use cudarc::driver::{
    CudaGraph, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DeviceRepr, DriverError, ValidAsZeroBits,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A RoPE table on the device: cos and sin, (rows, half) each, as `RopeTable` made them on the host.
pub struct CudaRope {
    pub cos: CudaSlice<f32>,
    pub sin: CudaSlice<f32>,
    pub half: usize,
    /// Distance between heads in a buffer row (the first 2·half features of each rotate).
    pub head_dim: usize,
}

/// Indices on the device and what their upload found (ops::indices): launches check them without a copy back.
pub struct CudaIndices {
    buf: CudaSlice<u32>,
    facts: IndexFacts,
}

impl CudaIndices {
    /// The first `n` uploaded indices.
    fn prefix(&self, n: usize, op: &str) -> Indices<'_> {
        Indices::prefix(&self.buf, self.facts, n, op)
    }
}

/// The CUDA backend: a GPU with its kernels loaded and a cuBLAS handle on its stream.
pub struct Cuda {
    device: Device,
    blas: Blas,
    /// `sum_squares`'s table and partials, held for one call at a time.
    reduce: Mutex<reduce::Scratch>,
    /// `embedding_backward`'s grouping of rows by id, host and device, held for one call at a time.
    groups: Mutex<RowGroups>,
    /// `adamw`'s table of tensor addresses (grown to the most tensors once).
    adamw_table: Mutex<CudaSlice<u64>>,
    /// `gemm_weights`' bf16 operands under `--compute bf16` (grown to the largest product once).
    bf16: Mutex<(CudaSlice<u16>, CudaSlice<u16>)>,
    /// The per-chunk column sums of norm weights' and biases' gradients and LoRA's dA (grown to the largest once).
    chunk_sums: Mutex<CudaSlice<f32>>,
    /// Weight matrices kept in their GGML blocks, decoded for a product (`gemm_packed`).
    packed: Mutex<PackedScratch>,
    /// How many times the bf16 operands' or the decoded weights' scratch was replaced: a graph recorded before
    /// names freed memory.
    bf16_moves: AtomicU64,
    /// Whether ops may be captured into CUDA graphs (`CONDLM_CUDA_GRAPHS=0` turns them off).
    graphs: bool,
    /// Whether `--compute bf16` runs attention on the tensor cores (`CONDLM_CUDA_MMA_ATTENTION=0` keeps it f32:
    /// for comparing with the CPU's bf16 mode, whose attention is f32, and for measuring what the tensor cores gain).
    mma_attention: bool,
    /// Whether `--compute bf16` keeps the MLP's activations in bf16 (`Backend::bf16_activations`;
    /// `CONDLM_CUDA_BF16_ACTIVATIONS=0` keeps them f32, as the CPU's, and measures what bf16 gains).
    bf16_activations: bool,
    /// `CONDLM_CUDA_PROFILE`'s per-op GPU times, printed when the backend is dropped.
    profile: Option<Mutex<Profile>>,
    /// A capture is under way: scratch must not grow (on a GPU with memory pools the allocation would become part
    /// of the graph, and the old scratch's free would fail).
    capturing: AtomicBool,
    /// Nanoseconds the host has waited in the reads for the GPU to finish what came before ([`Backend::waited_s`]).
    waited_ns: AtomicU64,
}

/// Where `gemm_packed` decodes a matrix kept in GGML blocks for cuBLAS: f32, or bf16 under `--compute bf16`
/// (grown to the largest matrix once), and which rows of which matrix each holds. The LM head's row chunks read the
/// same matrix one after another, forward and backward: it is decoded once, not per chunk.
struct PackedScratch {
    f32: CudaSlice<f32>,
    bf16: CudaSlice<u16>,
    /// What `f32` and `bf16` hold, once decoded outside a graph; None after a graph replay (its decodes ran).
    holds: [Option<Decoded>; 2],
}

/// A decoded stretch of a packed matrix: its blocks' device address, the byte it starts at, its values, their type.
#[derive(Clone, Copy, PartialEq)]
struct Decoded {
    words: u64,
    at: usize,
    n: usize,
    ty: GgmlType,
}

/// A CUDA graph of recorded ops, and which bf16 scratch it names ([`Cuda::bf16_moves`] when it was recorded).
pub struct CudaOps {
    graph: CudaGraph,
    bf16_moves: u64,
}

/// The first `n` values of a buffer; a buffer shorter than the op's arguments say is a bug in the caller.
fn pre<'a, T>(x: &'a CudaSlice<T>, n: usize, op: &str) -> CudaView<'a, T> {
    x.try_slice(..n).unwrap_or_else(|| panic!("{op}: {n} values asked of a buffer of {}", x.len()))
}

/// Losses loss_at..loss_at + rows of a buffer of them.
fn losses<'a>(loss: &'a mut CudaSlice<f64>, loss_at: usize, rows: usize, op: &str) -> CudaViewMut<'a, f64> {
    let len = loss.len();
    loss.try_slice_mut(loss_at..loss_at + rows)
        .unwrap_or_else(|| panic!("{op}: losses {loss_at}..{} asked of a buffer of {len}", loss_at + rows))
}

/// [`pre`], to write.
fn pre_mut<'a, T>(x: &'a mut CudaSlice<T>, n: usize, op: &str) -> CudaViewMut<'a, T> {
    let len = x.len();
    x.try_slice_mut(..n).unwrap_or_else(|| panic!("{op}: {n} values asked of a buffer of {len}"))
}

/// The shape of `gemm_packed`'s product for `dequant::packed_gemv`: c (m, n) = a (m, k) · Wᵀ with at most
/// `GEMV_MAX_ROWS` rows, W's view its first n whole rows (transposed), a and c row-major; None for any other
/// product.
fn gemv_shape(cv: MatView, av: MatView, wv: MatView, w: PackedView<Cuda>, at: usize) -> Option<dequant::Gemv> {
    let whole_rows = wv.trans && wv.offset == 0 && wv.ld == w.cols && wv.cols == w.cols;
    let rows_ok = !av.trans && !cv.trans && cv.rows == av.rows && cv.rows <= dequant::GEMV_MAX_ROWS;
    (whole_rows && rows_ok && av.cols == wv.cols && cv.cols == wv.rows).then_some(dequant::Gemv {
        m: cv.rows,
        n: cv.cols,
        k: av.cols,
        lda: av.ld,
        ldc: cv.ld,
        ty: w.ty,
        at,
    })
}

/// `dequant::packed_gemv` on the views' buffers from their offsets, whichever of f32 and bf16 a and c are.
#[allow(clippy::too_many_arguments)]
fn packed_gemv(
    d: &Device,
    c: ValuesMut<Cuda>,
    cv: MatView,
    a: Values<Cuda>,
    av: MatView,
    words: &CudaView<u32>,
    s: &dequant::Gemv,
    accumulate: bool,
    round: bool,
) -> Result<(), DriverError> {
    let (co, ao) = (cv.offset.., av.offset..);
    // (Four arms: a and c each f32 or bf16, four instances of the generic launch.)
    match (c, a) {
        (ValuesMut::F32(c), Values::F32(a)) => {
            dequant::packed_gemv(d, &mut c.slice_mut(co), &a.slice(ao), words, s, accumulate, round)
        }
        (ValuesMut::Bf16(c), Values::F32(a)) => {
            dequant::packed_gemv(d, &mut c.slice_mut(co), &a.slice(ao), words, s, accumulate, round)
        }
        (ValuesMut::F32(c), Values::Bf16(a)) => {
            dequant::packed_gemv(d, &mut c.slice_mut(co), &a.slice(ao), words, s, accumulate, round)
        }
        (ValuesMut::Bf16(c), Values::Bf16(a)) => {
            dequant::packed_gemv(d, &mut c.slice_mut(co), &a.slice(ao), words, s, accumulate, round)
        }
    }
}

/// A Gated DeltaNet's head-major buffers (`v_heads` heads of `rows` rows) as views of their prefixes.
fn delta_views<'a>(x: DeltaBufs<'a, Cuda>, rows: usize, s: &DeltaNetShape, op: &str) -> DeltaViews<'a> {
    let (n, dk, dv) = (s.v_heads * rows, s.k_head_dim, s.v_head_dim);
    DeltaViews {
        q: pre(x.q, n * dk, op),
        k: pre(x.k, n * dk, op),
        v: pre(x.v, n * dv, op),
        g: pre(x.g, n, op),
        beta: pre(x.beta, n, op),
    }
}

/// [`delta_views`], to write.
fn delta_views_mut<'a>(
    [q, k, v, g, beta]: [&'a mut CudaSlice<f32>; 5],
    rows: usize,
    s: &DeltaNetShape,
    op: &str,
) -> DeltaViewsMut<'a> {
    let (n, dk, dv) = (s.v_heads * rows, s.k_head_dim, s.v_head_dim);
    DeltaViewsMut {
        q: pre_mut(q, n * dk, op),
        k: pre_mut(k, n * dk, op),
        v: pre_mut(v, n * dv, op),
        g: pre_mut(g, n, op),
        beta: pre_mut(beta, n, op),
    }
}

/// The recurrence's head dims.
fn delta_dims(s: &DeltaNetShape) -> DeltaDims {
    DeltaDims { dk: s.k_head_dim, dv: s.v_head_dim }
}

impl Cuda {
    /// Opens GPU `ordinal` (`cuda:N`): probes the driver, compiles and loads every kernel for the GPU's
    /// architecture (NVRTC), makes the cuBLAS handle.
    pub fn open(ordinal: usize) -> Result<Cuda> {
        let driver = probe().map_err(|why| anyhow!("the CUDA backend cannot start: {why}"))?;
        let Some(gpu) = driver.gpus.get(ordinal) else {
            match driver.gpus.len() {
                0 => bail!(
                    "cuda:{ordinal}: the driver (CUDA {}.{}) sees no CUDA device: check CUDA_VISIBLE_DEVICES and \
                     `nvidia-smi`",
                    driver.cuda_version.0,
                    driver.cuda_version.1
                ),
                n => bail!(
                    "cuda:{ordinal} does not exist: the driver sees {n} GPU(s), cuda:0 to cuda:{} (`condlm info \
                     --devices` lists them)",
                    n - 1
                ),
            }
        };
        let (device, _) = Device::open(gpu)?;
        Cuda::new(device)
    }

    /// The backend on an opened device (which keeps its kernels): makes the cuBLAS handle and the scratch.
    pub fn new(device: Device) -> Result<Cuda> {
        let blas = Blas::new(&device)?;
        let reduce = Mutex::new(
            reduce::Scratch::new(&device).context("allocating the gradient norm's scratch on the GPU failed")?,
        );
        let bf16 = Mutex::new((zeros(&device, 1, "u16")?, zeros(&device, 1, "u16")?));
        let (f32, bf16_decoded) = (zeros(&device, 1, "f32 (decoded weights)")?, zeros(&device, 1, "u16")?);
        let packed = Mutex::new(PackedScratch { f32, bf16: bf16_decoded, holds: [None; 2] });
        let adamw_table = Mutex::new(zeros(&device, 1, "u64 (AdamW's tensor table)")?);
        let chunk_sums = Mutex::new(zeros(&device, 1, "f32 (column sums' scratch)")?);
        let on = |var: &str| std::env::var(var).map_or(true, |v| v != "0");
        let (graphs, mma_attention) = (on("CONDLM_CUDA_GRAPHS"), on("CONDLM_CUDA_MMA_ATTENTION"));
        let bf16_activations = on("CONDLM_CUDA_BF16_ACTIVATIONS");
        let groups = Mutex::new(RowGroups::default());
        let profile = Profile::from_env(&device.ctx).map(Mutex::new);
        let (bf16_moves, capturing) = (AtomicU64::new(0), AtomicBool::new(false));
        Ok(Cuda {
            device,
            blas,
            reduce,
            groups,
            bf16,
            packed,
            adamw_table,
            chunk_sums,
            bf16_moves,
            graphs,
            mma_attention,
            bf16_activations,
            profile,
            capturing,
            waited_ns: AtomicU64::new(0),
        })
    }

    /// A read: `copy` queued on the stream, then a wait for it and everything before, counted in
    /// [`Backend::waited_s`] (a copy into pageable memory already waits for the work queued before it).
    fn read(&self, op: &str, copy: impl FnOnce(&Arc<CudaStream>) -> Result<(), DriverError>) -> Result<()> {
        let (t0, s) = (std::time::Instant::now(), &self.device.stream);
        let r = copy(s).and_then(|()| s.synchronize());
        self.waited_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.ran(op, r)
    }

    /// Attention's precision under the run's `--compute`: bf16 operands on the tensor cores with `--compute bf16`
    /// (the GEMMs' contract extended to attention's products, as PyTorch's bf16 attention), f32 otherwise.
    fn attention_precision(&self) -> attention::Precision {
        let bf16 = compute() == Compute::Bf16 && self.mma_attention;
        if bf16 { attention::Precision::Bf16 } else { attention::Precision::F32 }
    }

    /// The stored matrix of the view `v` of `src` rounded to bf16 into `scratch` (grown to fit), dense; returns
    /// the view of it that reads as `v` did.
    fn rounded(&self, scratch: &mut CudaSlice<u16>, src: &CudaSlice<f32>, v: MatView) -> Result<MatView> {
        let dense = MatView { offset: 0, ld: v.cols, ..v };
        if scratch.len() < v.rows * v.cols {
            if self.capturing.load(Ordering::Relaxed) {
                bail!("the bf16 operands' scratch would grow during a CUDA graph capture (a step not run before)");
            }
            *scratch = zeros(&self.device, v.rows * v.cols, "u16 (bf16 operands)")?;
            self.bf16_moves.fetch_add(1, Ordering::Relaxed);
        }
        self.ran("to_bf16", bf16::to_bf16(&self.device, &mut scratch.as_view_mut(), &src.as_view(), v))?;
        Ok(dense)
    }

    /// A bf16 product's operand: a bf16 buffer as it is, or an f32 one rounded into `scratch` ([`Self::rounded`]).
    fn operand<'a>(
        &self,
        scratch: &'a mut CudaSlice<u16>,
        v: Values<'a, Self>,
        view: MatView,
    ) -> Result<(&'a CudaSlice<u16>, MatView)> {
        match v {
            Values::Bf16(h) => Ok((h, view)),
            Values::F32(x) => {
                let dense = self.rounded(scratch, x, view)?;
                Ok((scratch, dense))
            }
        }
    }

    /// An RMSNorm's forward (`Backend::rmsnorm_forward`) on (rows, dim), out in f32 or bf16.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm<T: Elem>(
        &self,
        op: &str,
        out: &mut CudaSlice<T>,
        rstd: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        (rows, dim): (usize, usize),
        offset: f32,
        eps: f32,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let (mut o, mut r) = (pre_mut(out, rows * dim, op), pre_mut(rstd, rows, op));
        let (x, w) = (pre(x, rows * dim, op), pre(w, dim, op));
        self.ran(op, norm::rmsnorm_forward(&self.device, &mut o, &mut r, &x, &w, offset, eps))
    }

    /// LoRA's dA through its dropout (`Backend::lora_dropout_da`), x in f32 or bf16 (a bf16 product then).
    #[allow(clippy::too_many_arguments)]
    fn lora_da<T: Elem>(
        &self,
        op: &str,
        g: &mut CudaSlice<f32>,
        du: &CudaSlice<f32>,
        x: &CudaSlice<T>,
        keep: &CudaSlice<u64>,
        shape: (usize, usize, usize),
        p: f32,
    ) -> Result<()> {
        let ((n, inp, r), need) = (shape, dropout::lora_da_scratch(shape));
        let mut partials = self.chunk_scratch(need)?;
        let (mut gv, mut pv) = (pre_mut(g, r * inp, op), pre_mut(&mut partials, need, op));
        let (du, x) = (pre(du, n * r, op), pre(x, n * inp, op));
        let keep = keep.as_view();
        self.ran(op, dropout::dropout_lora_da(&self.device, &mut gv, &mut pv, &du, &x, &keep, shape, p))
    }

    /// LoRA's input gradient through its dropout (`Backend::lora_dropout_dx`), dx in f32 or bf16.
    #[allow(clippy::too_many_arguments)]
    fn lora_dx<T: Elem>(
        &self,
        op: &str,
        dx: &mut CudaSlice<T>,
        du: &CudaSlice<f32>,
        a: &CudaSlice<f32>,
        keep: &CudaSlice<u64>,
        shape: (usize, usize, usize),
        p: f32,
    ) -> Result<()> {
        let (n, inp, r) = shape;
        let (mut d, du, a) = (pre_mut(dx, n * inp, op), pre(du, n * r, op), pre(a, r * inp, op));
        self.ran(op, dropout::dropout_lora_dx(&self.device, &mut d, &du, &a, &keep.as_view(), shape, p))
    }

    /// The column sums' scratch with at least `need` values (grown once to the largest).
    fn chunk_scratch(&self, need: usize) -> Result<MutexGuard<'_, CudaSlice<f32>>> {
        let mut s = self.chunk_sums.lock().unwrap_or_else(PoisonError::into_inner);
        if s.len() < need {
            if self.capturing.load(Ordering::Relaxed) {
                bail!("the column sums' scratch would grow during a CUDA graph capture");
            }
            *s = zeros(&self.device, need, "f32 (column sums' scratch)")?;
        }
        Ok(s)
    }

    /// The GPU, its stream and kernels.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A driver error of `op` as an error naming the GPU and the op. Launches are asynchronous: an error can
    /// belong to an earlier kernel that faulted.
    fn ran<T>(&self, op: &str, r: Result<T, DriverError>) -> Result<T> {
        let r = r.with_context(|| {
            format!(
                "cuda:{}: {op} failed (launches are asynchronous: the fault may be an earlier op's; \
                 CUDA_LAUNCH_BLOCKING=1 makes the failing op report it)",
                self.device.gpu.ordinal
            )
        });
        self.note(op, r)
    }

    /// A cuBLAS product's result, noted as `name` in the profile.
    fn product(&self, name: &str, r: Result<(), GemmError>) -> Result<()> {
        self.note(name, r.map_err(anyhow::Error::from))
    }

    /// `r`, and `op` noted in the profile (`CONDLM_CUDA_PROFILE`) when it succeeded outside a graph capture.
    fn note<T>(&self, op: &str, r: Result<T>) -> Result<T> {
        let v = r?;
        if let Some(p) = &self.profile
            && !self.capturing.load(Ordering::Relaxed)
        {
            let mut p = p.lock().unwrap_or_else(PoisonError::into_inner);
            p.after(&self.device.stream, op).with_context(|| format!("cuda profile: recording after {op} failed"))?;
        }
        Ok(v)
    }
}

/// `n` zeroed values (at least one: the driver refuses empty allocations; ops use prefixes, so a longer buffer
/// is harmless).
fn zeros<T: DeviceRepr + ValidAsZeroBits>(d: &Device, n: usize, what: &str) -> Result<CudaSlice<T>> {
    d.stream.alloc_zeros::<T>(n.max(1)).with_context(|| {
        format!(
            "cuda:{}: allocating {n} {what} values failed: is the GPU out of memory (a smaller batch or sequence \
             length needs less) or in use by another process?",
            d.gpu.ordinal
        )
    })
}

impl Backend for Cuda {
    type F32 = CudaSlice<f32>;
    type F64 = CudaSlice<f64>;
    type U32 = CudaIndices;
    type Mask = CudaSlice<u64>;
    type Rope = CudaRope;
    type Bf16 = CudaSlice<u16>;
    type Graph = CudaOps;

    fn name(&self) -> String {
        format!("cuda:{} ({})", self.device.gpu.ordinal, self.device.gpu.name)
    }

    fn alloc(&self, n: usize) -> Result<CudaSlice<f32>> {
        zeros(&self.device, n, "f32")
    }

    fn alloc_f64(&self, n: usize) -> Result<CudaSlice<f64>> {
        zeros(&self.device, n, "f64")
    }

    fn alloc_u32(&self, n: usize) -> Result<CudaIndices> {
        Ok(CudaIndices { buf: zeros(&self.device, n, "u32")?, facts: IndexFacts::of(&[]) })
    }

    fn alloc_bf16(&self, n: usize) -> Result<CudaSlice<u16>> {
        zeros(&self.device, n, "bf16")
    }

    fn alloc_mask(&self, n: usize) -> Result<CudaSlice<u64>> {
        zeros(&self.device, mask_words(n), "u64 (dropout mask)")
    }

    fn upload_rope(&self, t: &RopeTable) -> Result<CudaRope> {
        let s = &self.device.stream;
        let (cos, sin) =
            (self.ran("upload_rope", s.clone_htod(&t.cos))?, self.ran("upload_rope", s.clone_htod(&t.sin))?);
        Ok(CudaRope { cos, sin, half: t.half, head_dim: t.head_dim })
    }

    fn upload(&self, dst: &mut CudaSlice<f32>, src: &[f32]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let mut d = pre_mut(dst, src.len(), "upload");
        self.ran("upload", self.device.stream.memcpy_htod(src, &mut d))
    }

    fn upload_u32(&self, dst: &mut CudaIndices, src: &[u32]) -> Result<()> {
        dst.facts = IndexFacts::of(src);
        if src.is_empty() {
            return Ok(());
        }
        let mut d = pre_mut(&mut dst.buf, src.len(), "upload_u32");
        self.ran("upload_u32", self.device.stream.memcpy_htod(src, &mut d))
    }

    fn upload_bf16(&self, dst: &mut CudaSlice<u16>, src: &[f32]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // Rounded on the host: half the bytes cross the bus.
        let bits: Vec<u16> = src.iter().map(|&v| crate::kernels::bf16::round(v)).collect();
        let mut d = pre_mut(dst, src.len(), "upload_bf16");
        self.ran("upload_bf16", self.device.stream.memcpy_htod(&bits, &mut d))
    }

    fn round_bf16(&self, dst: &mut CudaSlice<u16>, src: &CudaSlice<f32>, n: usize) -> Result<()> {
        let op = "round_bf16";
        let r = bf16::to_bf16(&self.device, &mut pre_mut(dst, n, op), &pre(src, n, op), MatView::dense(1, n));
        self.ran(op, r)
    }

    /// A copy into pageable memory returns when it is done, after everything queued before it; the synchronize
    /// makes that explicit whatever memory `dst` is.
    fn download(&self, src: &CudaSlice<f32>, dst: &mut [f32]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.read("download", |s| s.memcpy_dtoh(&pre(src, dst.len(), "download"), dst))
    }

    fn download_f64(&self, src: &CudaSlice<f64>, dst: &mut [f64]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.read("download_f64", |s| s.memcpy_dtoh(&pre(src, dst.len(), "download_f64"), dst))
    }

    fn waited_s(&self) -> f64 {
        self.waited_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }

    fn zero(&self, x: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.ran("zero", self.device.stream.memset_zeros(&mut pre_mut(x, n, "zero")))
    }

    fn copy(&self, dst: &mut CudaSlice<f32>, src: &CudaSlice<f32>, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let s = &self.device.stream;
        self.ran("copy", s.memcpy_dtod(&pre(src, n, "copy"), &mut pre_mut(dst, n, "copy")))
    }

    fn scale(&self, dst: &mut CudaSlice<f32>, src: &CudaSlice<f32>, n: usize, s: f32) -> Result<()> {
        let r = elementwise::scale(&self.device, &mut pre_mut(dst, n, "scale"), &pre(src, n, "scale"), s);
        self.ran("scale", r)
    }

    fn add(&self, dst: &mut CudaSlice<f32>, src: &CudaSlice<f32>, n: usize) -> Result<()> {
        self.ran("add", elementwise::add(&self.device, &mut pre_mut(dst, n, "add"), &pre(src, n, "add")))
    }

    fn copy_view(&self, dst: &mut CudaSlice<f32>, dv: MatView, src: &CudaSlice<f32>, sv: MatView) -> Result<()> {
        self.ran("copy_view", elementwise::copy_view(&self.device, &mut dst.as_view_mut(), dv, &src.as_view(), sv))
    }

    fn scale_in_place(&self, x: &mut CudaSlice<f32>, n: usize, s: f32) -> Result<()> {
        let r = elementwise::scale_in_place(&self.device, &mut pre_mut(x, n, "scale_in_place"), s);
        self.ran("scale_in_place", r)
    }

    fn sum_squares(&self, out: &mut CudaSlice<f64>, xs: &[(&CudaSlice<f32>, usize)]) -> Result<()> {
        let op = "sum_squares";
        let views: Vec<_> = xs.iter().map(|&(x, n)| pre(x, n, op)).collect();
        // The scratch is rewritten by every call before its launches read it (stream order): one left by a
        // panicking call is as good as any.
        let mut scratch = self.reduce.lock().unwrap_or_else(PoisonError::into_inner);
        self.ran(op, reduce::sum_squares(&self.device, &mut out.as_view_mut(), &views, &mut scratch))
    }

    fn gemm(
        &self,
        c: &mut CudaSlice<f32>,
        cv: MatView,
        a: &CudaSlice<f32>,
        av: MatView,
        b: &CudaSlice<f32>,
        bv: MatView,
        accumulate: bool,
    ) -> Result<()> {
        self.product("gemm f32", self.blas.matmul(c, cv, a, av, b, bv, 1.0, accumulate))
    }

    fn gemm_scaled(
        &self,
        c: &mut CudaSlice<f32>,
        cv: MatView,
        a: &CudaSlice<f32>,
        av: MatView,
        b: &CudaSlice<f32>,
        bv: MatView,
        s: f32,
    ) -> Result<()> {
        self.product("gemm f32", self.blas.matmul(c, cv, a, av, b, bv, s, false))
    }

    fn gemm_weights(
        &self,
        c: &mut CudaSlice<f32>,
        cv: MatView,
        a: &CudaSlice<f32>,
        av: MatView,
        b: &CudaSlice<f32>,
        bv: MatView,
        accumulate: bool,
    ) -> Result<()> {
        if compute() != Compute::Bf16 {
            return self.gemm(c, cv, a, av, b, bv, accumulate);
        }
        // Both operands rounded to bf16 into dense scratch (the stored matrices, transposes kept as views), then
        // cuBLAS with bf16 operands and f32 sums.
        let mut scratch = self.bf16.lock().unwrap_or_else(PoisonError::into_inner);
        let (sa, sb) = &mut *scratch;
        let da = self.rounded(sa, a, av)?;
        let db = self.rounded(sb, b, bv)?;
        self.product("gemm bf16", self.blas.matmul(c, cv, &*sa, da, &*sb, db, 1.0, accumulate))
    }

    fn gemm_bf16(
        &self,
        c: ValuesMut<Self>,
        cv: MatView,
        a: Values<Self>,
        av: MatView,
        b: Values<Self>,
        bv: MatView,
        alpha: f32,
        accumulate: bool,
    ) -> Result<()> {
        let mut scratch = self.bf16.lock().unwrap_or_else(PoisonError::into_inner);
        let (sa, sb) = &mut *scratch;
        let (a, av) = self.operand(sa, a, av)?;
        let (b, bv) = self.operand(sb, b, bv)?;
        let r = match c {
            ValuesMut::F32(c) => self.blas.matmul(c, cv, a, av, b, bv, alpha, accumulate),
            ValuesMut::Bf16(c) => self.blas.matmul(c, cv, a, av, b, bv, alpha, accumulate),
        };
        self.product("gemm bf16", r)
    }

    fn bf16_activations(&self) -> bool {
        self.bf16_activations
    }

    fn keeps_packed(&self, ty: GgmlType) -> bool {
        dequant::decodes(ty)
    }

    /// Decodes only the stored rows `wv` touches, into scratch that remembers them for the next product of the
    /// same rows (the LM head's row chunks); up to `GEMV_MAX_ROWS` rows times Wᵀ read the blocks themselves
    /// (`dequant::packed_gemv`), no scratch.
    fn gemm_packed(
        &self,
        c: ValuesMut<Self>,
        cv: MatView,
        a: Values<Self>,
        av: MatView,
        w: PackedView<Self>,
        wv: MatView,
        accumulate: bool,
    ) -> Result<()> {
        let first = wv.offset / w.cols;
        let rows = wv.end().div_ceil(w.cols).max(first) - first;
        let (n, at) = (rows * w.cols, w.ty.bytes_for((first * w.cols) as u64).expect("a matrix's size") as usize);
        let wv = MatView { offset: wv.offset - first * w.cols, ..wv };
        let words_len = (at + w.ty.bytes_for(n as u64).expect("a matrix's size") as usize).div_ceil(4);
        let words = pre(&w.words.buf, words_len, "gemm_packed");
        let bf16 = compute() == Compute::Bf16;
        let round = bf16 || matches!(a, Values::Bf16(_)) || matches!(c, ValuesMut::Bf16(_));
        if let Some(s) = gemv_shape(cv, av, wv, w, at) {
            return self.ran("packed_gemv", packed_gemv(&self.device, c, cv, a, av, &words, &s, accumulate, round));
        }
        let mut scratch = self.packed.lock().unwrap_or_else(PoisonError::into_inner);
        let PackedScratch { f32: f, bf16: h, holds } = &mut *scratch;
        let capturing = self.capturing.load(Ordering::Relaxed);
        if (if bf16 { h.len() } else { f.len() }) < n {
            if capturing {
                bail!("the decoded weights' scratch would grow during a CUDA graph capture (a step not run before)");
            }
            match bf16 {
                true => *h = zeros(&self.device, n, "u16 (decoded weights)")?,
                false => *f = zeros(&self.device, n, "f32 (decoded weights)")?,
            }
            holds[bf16 as usize] = None;
            self.bf16_moves.fetch_add(1, Ordering::Relaxed);
        }
        // A capture records the decode whatever the scratch holds now: its replay runs later, on whatever it holds
        // then (and leaves `holds` unknown: `replay`).
        let key = Some(Decoded { words: w.words.buf.device_ptr(&self.device.stream).0, at, n, ty: w.ty });
        if capturing || holds[bf16 as usize] != key {
            let r = match bf16 {
                true => dequant::dequantize(&self.device, &mut h.as_view_mut(), &words, at, w.ty, n),
                false => dequant::dequantize(&self.device, &mut f.as_view_mut(), &words, at, w.ty, n),
            };
            self.ran("dequantize", r)?;
            if !capturing {
                holds[bf16 as usize] = key;
            }
        }
        if bf16 {
            return self.gemm_bf16(c, cv, a, av, Values::Bf16(h), wv, 1.0, accumulate);
        }
        match (c, a) {
            (ValuesMut::F32(c), Values::F32(a)) => self.gemm_weights(c, cv, a, av, f, wv, accumulate),
            (c, a) => self.gemm_bf16(c, cv, a, av, Values::F32(f), wv, 1.0, accumulate),
        }
    }

    fn add_bias(&self, out: &mut CudaSlice<f32>, ov: MatView, b: &CudaSlice<f32>) -> Result<()> {
        let r = elementwise::add_bias(&self.device, &mut out.as_view_mut(), ov, &pre(b, ov.cols, "add_bias"));
        self.ran("add_bias", r)
    }

    fn add_column_sums(&self, db: &mut CudaSlice<f32>, dy: &CudaSlice<f32>, dyv: MatView) -> Result<()> {
        let (op, need) = ("add_column_sums", column_scratch(dyv.rows, dyv.cols));
        let mut scratch = self.chunk_scratch(need)?;
        let (mut db, mut s) = (pre_mut(db, dyv.cols, op), pre_mut(&mut scratch, need, op));
        self.ran(op, elementwise::add_column_sums(&self.device, &mut db, &dy.as_view(), dyv, &mut s))
    }

    fn embedding(
        &self,
        out: &mut CudaSlice<f32>,
        table: &CudaSlice<f32>,
        ids: &CudaIndices,
        n: usize,
        dim: usize,
        scale: Option<f32>,
    ) -> Result<()> {
        let (mut o, ids) = (pre_mut(out, n * dim, "embedding"), ids.prefix(n, "embedding"));
        let r = rows::gather_rows(&self.device, &mut o, &table.as_view(), &ids, dim, scale.unwrap_or(1.0));
        self.ran("embedding", r)
    }

    /// Groups the rows by id on the host from `ids_host` (the kernel reads that grouping, not `ids`).
    fn embedding_backward(
        &self,
        dtable: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        ids: &CudaIndices,
        ids_host: &[u32],
        n: usize,
        dim: usize,
    ) -> Result<()> {
        let op = "embedding_backward";
        assert!(n <= ids.facts.len, "{op}: {n} ids asked, {} uploaded", ids.facts.len);
        assert!(n <= ids_host.len(), "{op}: {n} ids asked, {} in host memory", ids_host.len());
        let dout = pre(dout, n * dim, op);
        // The scratch is rewritten by every call before its launch: one left by a panicking call is as good as any.
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let r =
            rows::embedding_backward(&self.device, &mut dtable.as_view_mut(), &dout, &ids_host[..n], dim, &mut groups);
        self.ran(op, r)
    }

    fn rmsnorm_forward(
        &self,
        out: &mut CudaSlice<f32>,
        rstd: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        rows: usize,
        dim: usize,
        offset: f32,
        eps: f32,
    ) -> Result<()> {
        self.rmsnorm("rmsnorm_forward", out, rstd, x, w, (rows, dim), offset, eps)
    }

    fn rmsnorm_forward_bf16(
        &self,
        out: &mut CudaSlice<u16>,
        rstd: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        rows: usize,
        dim: usize,
        offset: f32,
        eps: f32,
    ) -> Result<()> {
        self.rmsnorm("rmsnorm_forward_bf16", out, rstd, x, w, (rows, dim), offset, eps)
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        dw: Option<&mut CudaSlice<f32>>,
        dout: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        rows: usize,
        dim: usize,
        offset: f32,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let op = "rmsnorm_backward";
        let (mut dx, mut dw) = (pre_mut(dx, rows * dim, op), dw.map(|g| pre_mut(g, dim, op)));
        let (dout, x, w, rstd) =
            (pre(dout, rows * dim, op), pre(x, rows * dim, op), pre(w, dim, op), pre(rstd, rows, op));
        let need = if dw.is_some() { column_scratch(rows, dim) } else { 0 };
        let mut scratch = self.chunk_scratch(need)?;
        let mut s = pre_mut(&mut scratch, need, op);
        let r = norm::rmsnorm_backward(&self.device, &mut dx, dw.as_mut(), &dout, &x, &w, offset, &rstd, &mut s);
        self.ran(op, r)
    }

    fn layernorm_forward(
        &self,
        out: &mut CudaSlice<f32>,
        mean: &mut CudaSlice<f32>,
        rstd: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let op = "layernorm_forward";
        let (mut o, mut m, mut r) = (pre_mut(out, rows * dim, op), pre_mut(mean, rows, op), pre_mut(rstd, rows, op));
        let (x, w, b) = (pre(x, rows * dim, op), pre(w, dim, op), pre(b, dim, op));
        self.ran(op, norm::layernorm_forward(&self.device, &mut o, &mut m, &mut r, &x, &w, &b, eps))
    }

    fn layernorm_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        dw: Option<&mut CudaSlice<f32>>,
        db: Option<&mut CudaSlice<f32>>,
        dout: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        mean: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let op = "layernorm_backward";
        let mut dx = pre_mut(dx, rows * dim, op);
        let (mut dw, mut db) = (dw.map(|g| pre_mut(g, dim, op)), db.map(|g| pre_mut(g, dim, op)));
        let (dout, x, w) = (pre(dout, rows * dim, op), pre(x, rows * dim, op), pre(w, dim, op));
        let (mean, rstd) = (pre(mean, rows, op), pre(rstd, rows, op));
        let need = if dw.is_some() || db.is_some() { 2 * column_scratch(rows, dim) } else { 0 };
        let mut scratch = self.chunk_scratch(need)?;
        let mut s = pre_mut(&mut scratch, need, op);
        let (dw, db) = (dw.as_mut(), db.as_mut());
        let r = norm::layernorm_backward(&self.device, &mut dx, dw, db, &dout, &x, &w, &mean, &rstd, &mut s);
        self.ran(op, r)
    }

    fn rope(
        &self,
        backward: bool,
        buf: &mut CudaSlice<f32>,
        rows: usize,
        cols: RopeCols,
        table_rows: &CudaIndices,
        t: &CudaRope,
    ) -> Result<()> {
        if rows == 0 || cols.heads == 0 {
            return Ok(());
        }
        let l =
            RopeLayout { row_len: cols.row_len, col: cols.col, heads: cols.heads, head_dim: t.head_dim, half: t.half };
        let (mut b, positions) = (pre_mut(buf, rows * cols.row_len, "rope"), table_rows.prefix(rows, "rope"));
        let r = rope::rope(&self.device, backward, &mut b, l, &positions, &t.cos.as_view(), &t.sin.as_view());
        self.ran(if backward { "rope backward" } else { "rope forward" }, r)
    }

    fn attention_forward(
        &self,
        out: &mut CudaSlice<f32>,
        stats: Option<&mut CudaSlice<f32>>,
        qkv: &CudaSlice<f32>,
        l: QkvLayout,
        seq_start: &CudaIndices,
        rows: usize,
    ) -> Result<()> {
        let op = "attention_forward";
        let mut o = pre_mut(out, rows * l.n_heads * l.head_dim, op);
        let mut stats = stats.map(|s| pre_mut(s, rows * l.n_heads * 3, op));
        let (qkv, starts) = (pre(qkv, rows * l.row_len, op), seq_start.prefix(rows, op));
        let p = self.attention_precision();
        self.ran(op, attention::attention_forward(&self.device, &mut o, stats.as_mut(), &qkv, l, &starts, p))
    }

    fn attention_backward(
        &self,
        dqkv: &mut CudaSlice<f32>,
        stats: &mut CudaSlice<f32>,
        datt: &CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        att: &CudaSlice<f32>,
        l: QkvLayout,
        seq_start: &CudaIndices,
        rows: usize,
    ) -> Result<()> {
        let op = "attention_backward";
        let (aw, rl) = (l.n_heads * l.head_dim, l.row_len);
        let (mut dqkv, mut stats) = (pre_mut(dqkv, rows * rl, op), pre_mut(stats, rows * l.n_heads * 3, op));
        let (datt, qkv, att) = (pre(datt, rows * aw, op), pre(qkv, rows * rl, op), pre(att, rows * aw, op));
        let starts = seq_start.prefix(rows, op);
        let p = self.attention_precision();
        let r = attention::attention_backward(&self.device, &mut dqkv, &mut stats, &datt, &qkv, &att, l, &starts, p);
        self.ran(op, r)
    }

    fn kv_store(
        &self,
        k_cache: &mut CudaSlice<f32>,
        v_cache: &mut CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        l: QkvLayout,
        slots: &CudaIndices,
        positions: &CudaIndices,
        rows: usize,
        capacity: usize,
    ) -> Result<()> {
        let op = "kv_store";
        let (mut k, mut v) = (k_cache.as_view_mut(), v_cache.as_view_mut());
        let (qkv, slots, positions) =
            (pre(qkv, rows * l.row_len, op), slots.prefix(rows, op), positions.prefix(rows, op));
        self.ran(op, kv_cache::kv_store(&self.device, &mut k, &mut v, &qkv, l, &slots, &positions, capacity))
    }

    fn cached_attention(
        &self,
        out: &mut CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        k_cache: &CudaSlice<f32>,
        v_cache: &CudaSlice<f32>,
        l: QkvLayout,
        slots: &CudaIndices,
        positions: &CudaIndices,
        rows: usize,
        capacity: usize,
    ) -> Result<()> {
        let op = "cached_attention";
        let mut o = pre_mut(out, rows * l.n_heads * l.head_dim, op);
        let (qkv, slots, positions) =
            (pre(qkv, rows * l.row_len, op), slots.prefix(rows, op), positions.prefix(rows, op));
        let (k, v) = (k_cache.as_view(), v_cache.as_view());
        let r = kv_cache::cached_attention(&self.device, &mut o, &qkv, &k, &v, l, &slots, &positions, capacity);
        self.ran(op, r)
    }

    /// A driver copy between two views of the buffer, split where the later range starts (so that the views
    /// hold the two ranges apart, as the borrow rules want).
    fn copy_within(&self, buf: &mut CudaSlice<f32>, from: usize, to: usize, n: usize) -> Result<()> {
        let op = "copy_within";
        assert!(from + n <= to || to + n <= from, "{op}: overlapping ranges");
        let len = buf.len();
        assert!(from.max(to) + n <= len, "{op}: {n} values at {from} or {to} past a buffer of {len}");
        if n == 0 {
            return Ok(());
        }
        let (mut head, mut tail) = buf.split_at_mut(from.max(to));
        let r = if from < to {
            // [from, from + n) ends at or before `to`, where the tail starts.
            self.device.stream.memcpy_dtod(&head.slice(from..from + n), &mut tail.slice_mut(..n))
        } else {
            self.device.stream.memcpy_dtod(&tail.slice(..n), &mut head.slice_mut(to..to + n))
        };
        self.ran(op, r)
    }

    fn gelu_forward(&self, out: &mut CudaSlice<f32>, x: &CudaSlice<f32>, n: usize) -> Result<()> {
        let op = "gelu_forward";
        self.ran(op, glu::gelu_forward(&self.device, &mut pre_mut(out, n, op), &pre(x, n, op)))
    }

    fn gelu_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let op = "gelu_backward";
        self.ran(op, glu::gelu_backward(&self.device, &mut pre_mut(dx, n, op), &pre(dout, n, op), &pre(x, n, op)))
    }

    fn glu_forward(
        &self,
        out: &mut CudaSlice<f32>,
        gate_up: &CudaSlice<f32>,
        rows: usize,
        f: usize,
        act: GateAct,
    ) -> Result<()> {
        let (op, n) = ("glu_forward", rows * f);
        let (mut o, gate_up) = (pre_mut(out, n, op), pre(gate_up, 2 * n, op));
        self.ran(op, glu::glu_forward(&self.device, &mut o, &gate_up, f, act))
    }

    fn glu_forward_bf16(
        &self,
        out: &mut CudaSlice<u16>,
        gate_up: &CudaSlice<u16>,
        rows: usize,
        f: usize,
        act: GateAct,
    ) -> Result<()> {
        let (op, n) = ("glu_forward_bf16", rows * f);
        let (mut o, gate_up) = (pre_mut(out, n, op), pre(gate_up, 2 * n, op));
        self.ran(op, glu::glu_forward(&self.device, &mut o, &gate_up, f, act))
    }

    fn glu_backward(
        &self,
        dgate_up: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        gate_up: &CudaSlice<f32>,
        rows: usize,
        f: usize,
        act: GateAct,
    ) -> Result<()> {
        let (op, n) = ("glu_backward", rows * f);
        let (mut d, dout, gate_up) = (pre_mut(dgate_up, 2 * n, op), pre(dout, n, op), pre(gate_up, 2 * n, op));
        self.ran(op, glu::glu_backward(&self.device, &mut d, &dout, &gate_up, f, act))
    }

    fn glu_backward_bf16(
        &self,
        dgate_up: &mut CudaSlice<u16>,
        dout: &CudaSlice<u16>,
        gate_up: &CudaSlice<u16>,
        rows: usize,
        f: usize,
        act: GateAct,
    ) -> Result<()> {
        let (op, n) = ("glu_backward_bf16", rows * f);
        let (mut d, dout, gate_up) = (pre_mut(dgate_up, 2 * n, op), pre(dout, n, op), pre(gate_up, 2 * n, op));
        self.ran(op, glu::glu_backward(&self.device, &mut d, &dout, &gate_up, f, act))
    }

    fn gather_rows(
        &self,
        out: &mut CudaSlice<f32>,
        src: &CudaSlice<f32>,
        idx: &CudaIndices,
        n: usize,
        dim: usize,
    ) -> Result<()> {
        let (mut o, idx) = (pre_mut(out, n * dim, "gather_rows"), idx.prefix(n, "gather_rows"));
        self.ran("gather_rows", rows::gather_rows(&self.device, &mut o, &src.as_view(), &idx, dim, 1.0))
    }

    fn scatter_add_rows(
        &self,
        dst: &mut CudaSlice<f32>,
        src: &CudaSlice<f32>,
        idx: &CudaIndices,
        n: usize,
        dim: usize,
    ) -> Result<()> {
        let (src, idx) = (pre(src, n * dim, "scatter_add_rows"), idx.prefix(n, "scatter_add_rows"));
        self.ran("scatter_add_rows", rows::scatter_add_rows(&self.device, &mut dst.as_view_mut(), &src, &idx, dim))
    }

    fn cross_entropy_rows(
        &self,
        logits: &mut CudaSlice<f32>,
        loss: &mut CudaSlice<f64>,
        loss_at: usize,
        targets: &CudaIndices,
        rows: usize,
        vocab: usize,
        token_weight: f32,
        label_smoothing: f32,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let op = "cross_entropy_rows";
        let mut loss = losses(loss, loss_at, rows, op);
        let (mut l, targets) = (pre_mut(logits, rows * vocab, op), targets.prefix(rows, op));
        let r =
            cross_entropy::cross_entropy_rows(&self.device, &mut l, &mut loss, &targets, token_weight, label_smoothing);
        self.ran(op, r)
    }

    fn cross_entropy_rows_bf16(
        &self,
        logits: &CudaSlice<f32>,
        dlogits: &mut CudaSlice<u16>,
        loss: &mut CudaSlice<f64>,
        loss_at: usize,
        targets: &CudaIndices,
        rows: usize,
        vocab: usize,
        token_weight: f32,
        label_smoothing: f32,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let op = "cross_entropy_rows_bf16";
        let mut loss = losses(loss, loss_at, rows, op);
        let (l, mut dl) = (pre(logits, rows * vocab, op), pre_mut(dlogits, rows * vocab, op));
        let t = targets.prefix(rows, op);
        let (w, eps) = (token_weight, label_smoothing);
        self.ran(op, cross_entropy::cross_entropy_rows_bf16(&self.device, &l, &mut dl, &mut loss, &t, w, eps))
    }

    fn dropout_forward(
        &self,
        x_drop: &mut CudaSlice<f32>,
        keep: &mut CudaSlice<u64>,
        x: &CudaSlice<f32>,
        n: usize,
        p: f32,
        key: u64,
    ) -> Result<()> {
        let op = "dropout_forward";
        let (mut d, mut k, x) = (pre_mut(x_drop, n, op), pre_mut(keep, mask_words(n), op), pre(x, n, op));
        self.ran(op, dropout::dropout_forward(&self.device, &mut d, &mut k, &x, p, key))
    }

    fn dropout_forward_bf16(
        &self,
        x_drop: &mut CudaSlice<u16>,
        keep: &mut CudaSlice<u64>,
        x: &CudaSlice<u16>,
        n: usize,
        p: f32,
        key: u64,
    ) -> Result<()> {
        let op = "dropout_forward_bf16";
        let (mut d, mut k, x) = (pre_mut(x_drop, n, op), pre_mut(keep, mask_words(n), op), pre(x, n, op));
        self.ran(op, dropout::dropout_forward(&self.device, &mut d, &mut k, &x, p, key))
    }

    fn dropout_again(
        &self,
        x_drop: &mut CudaSlice<f32>,
        keep: &CudaSlice<u64>,
        x: &CudaSlice<f32>,
        n: usize,
        p: f32,
    ) -> Result<()> {
        let op = "dropout_again";
        let (mut d, x) = (pre_mut(x_drop, n, op), pre(x, n, op));
        self.ran(op, dropout::dropout_again(&self.device, &mut d, &keep.as_view(), &x, p))
    }

    fn dropout_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        t: &CudaSlice<f32>,
        keep: &CudaSlice<u64>,
        n: usize,
        p: f32,
    ) -> Result<()> {
        let op = "dropout_backward";
        let (mut d, t) = (pre_mut(dx, n, op), pre(t, n, op));
        self.ran(op, dropout::dropout_backward(&self.device, &mut d, &t, &keep.as_view(), p))
    }

    fn lora_dropout_da(
        &self,
        g: &mut CudaSlice<f32>,
        _x_drop: &mut CudaSlice<f32>,
        du: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        keep: &CudaSlice<u64>,
        shape: (usize, usize, usize),
        p: f32,
    ) -> Result<()> {
        self.lora_da("lora_dropout_da", g, du, x, keep, shape, p)
    }

    fn lora_dropout_dx(
        &self,
        dx: &mut CudaSlice<f32>,
        _t: &mut CudaSlice<f32>,
        du: &CudaSlice<f32>,
        a: &CudaSlice<f32>,
        keep: &CudaSlice<u64>,
        shape: (usize, usize, usize),
        p: f32,
    ) -> Result<()> {
        self.lora_dx("lora_dropout_dx", dx, du, a, keep, shape, p)
    }

    fn lora_dropout_da_bf16(
        &self,
        g: &mut CudaSlice<f32>,
        du: &CudaSlice<f32>,
        x: &CudaSlice<u16>,
        keep: &CudaSlice<u64>,
        shape: (usize, usize, usize),
        p: f32,
    ) -> Result<()> {
        self.lora_da("lora_dropout_da_bf16", g, du, x, keep, shape, p)
    }

    fn lora_dropout_dx_bf16(
        &self,
        dx: &mut CudaSlice<u16>,
        du: &CudaSlice<f32>,
        a: &CudaSlice<f32>,
        keep: &CudaSlice<u64>,
        shape: (usize, usize, usize),
        p: f32,
    ) -> Result<()> {
        self.lora_dx("lora_dropout_dx_bf16", dx, du, a, keep, shape, p)
    }

    fn sigmoid_gate_forward(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        gate: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let op = "sigmoid_gate_forward";
        let (mut o, x, gate) = (pre_mut(out, n, op), pre(x, n, op), pre(gate, n, op));
        self.ran(op, glu::sigmoid_gate_forward(&self.device, &mut o, &x, &gate))
    }

    fn sigmoid_gate_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        dgate: &mut CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        gate: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let op = "sigmoid_gate_backward";
        let (mut dx, mut dg) = (pre_mut(dx, n, op), pre_mut(dgate, n, op));
        let (dout, x, gate) = (pre(dout, n, op), pre(x, n, op), pre(gate, n, op));
        self.ran(op, glu::sigmoid_gate_backward(&self.device, &mut dx, &mut dg, &dout, &x, &gate))
    }

    fn delta_conv_forward(
        &self,
        out: &mut CudaSlice<f32>,
        conv_pre: &mut CudaSlice<f32>,
        proj: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        seq_start: &CudaIndices,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()> {
        let (op, c) = ("delta_conv_forward", s.conv_dim());
        let (mut o, mut p) = (pre_mut(out, rows * c, op), pre_mut(conv_pre, rows * c, op));
        let (x, w) = (pre(proj, rows * s.proj_width(), op), pre(w, c * s.conv_kernel, op));
        let starts = seq_start.prefix(rows, op);
        self.ran(op, gated_delta::conv_forward(&self.device, &mut o, &mut p, &x, &w, &starts, s))
    }

    fn delta_conv_backward(
        &self,
        dproj: &mut CudaSlice<f32>,
        dw: Option<&mut CudaSlice<f32>>,
        dout: &mut CudaSlice<f32>,
        conv_pre: &CudaSlice<f32>,
        proj: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        seq_start: &CudaIndices,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()> {
        let (op, c, p, weights) = ("delta_conv_backward", s.conv_dim(), s.proj_width(), s.conv_dim() * s.conv_kernel);
        let (mut dx, mut dw, mut dout) =
            (pre_mut(dproj, rows * p, op), dw.map(|g| pre_mut(g, weights, op)), pre_mut(dout, rows * c, op));
        let (cp, x, w) = (pre(conv_pre, rows * c, op), pre(proj, rows * p, op), pre(w, weights, op));
        let starts = seq_start.prefix(rows, op);
        let need = if dw.is_some() { column_scratch(rows, weights) } else { 0 };
        let mut scratch = self.chunk_scratch(need)?;
        let mut sc = pre_mut(&mut scratch, need, op);
        let r =
            gated_delta::conv_backward(&self.device, &mut dx, dw.as_mut(), &mut dout, &cp, &x, &w, &starts, s, &mut sc);
        self.ran(op, r)
    }

    fn delta_conv_cached(
        &self,
        out: &mut CudaSlice<f32>,
        conv_pre: &mut CudaSlice<f32>,
        proj: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        hist: &mut CudaSlice<f32>,
        slots: &CudaIndices,
        positions: &CudaIndices,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()> {
        let (op, c) = ("delta_conv_cached", s.conv_dim());
        let (mut o, mut p) = (pre_mut(out, rows * c, op), pre_mut(conv_pre, rows * c, op));
        let (x, w) = (pre(proj, rows * s.proj_width(), op), pre(w, c * s.conv_kernel, op));
        let (slots, positions) = (slots.prefix(rows, op), positions.prefix(rows, op));
        let mut h = hist.as_view_mut();
        self.ran(op, gated_delta::conv_cached(&self.device, &mut o, &mut p, &x, &w, &mut h, &slots, &positions, s))
    }

    fn delta_inputs_forward(
        &self,
        x: DeltaInputsMut<Self>,
        conv: &CudaSlice<f32>,
        proj: &CudaSlice<f32>,
        dt_bias: &CudaSlice<f32>,
        a_log: &CudaSlice<f32>,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()> {
        let op = "delta_inputs_forward";
        let DeltaInputsMut { q, k, v, g, beta, q_rnorm, k_rnorm } = x;
        let mut out = InputsMut {
            x: delta_views_mut([q, k, v, g, beta], rows, s, op),
            q_rnorm: pre_mut(q_rnorm, rows * s.k_heads, op),
            k_rnorm: pre_mut(k_rnorm, rows * s.k_heads, op),
        };
        let (conv, proj) = (pre(conv, rows * s.conv_dim(), op), pre(proj, rows * s.proj_width(), op));
        let (dt, al) = (pre(dt_bias, s.v_heads, op), pre(a_log, s.v_heads, op));
        self.ran(op, delta_mixer::inputs_forward(&self.device, &mut out, &conv, &proj, &dt, &al, rows, s))
    }

    fn delta_inputs_backward(
        &self,
        dconv: &mut CudaSlice<f32>,
        dproj: &mut CudaSlice<f32>,
        ddt_bias: Option<&mut CudaSlice<f32>>,
        da_log: Option<&mut CudaSlice<f32>>,
        d: DeltaBufs<Self>,
        saved: DeltaSaved<Self>,
        dt_bias: &CudaSlice<f32>,
        a_log: &CudaSlice<f32>,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()> {
        let (op, c, p, hv) = ("delta_inputs_backward", s.conv_dim(), s.proj_width(), s.v_heads);
        let (mut dc, mut dp) = (pre_mut(dconv, rows * c, op), pre_mut(dproj, rows * p, op));
        let (mut ddt, mut dal) = (ddt_bias.map(|g| pre_mut(g, hv, op)), da_log.map(|g| pre_mut(g, hv, op)));
        let grads = delta_views(d, rows, s, op);
        let saved = InputsSaved {
            x: delta_views(saved.x, rows, s, op),
            q_rnorm: pre(saved.q_rnorm, rows * s.k_heads, op),
            k_rnorm: pre(saved.k_rnorm, rows * s.k_heads, op),
            conv: pre(saved.conv, rows * c, op),
            proj: pre(saved.proj, rows * p, op),
        };
        let (dt, al) = (pre(dt_bias, hv, op), pre(a_log, hv, op));
        let need = if ddt.is_some() || dal.is_some() { column_scratch(rows, 2 * hv) } else { 0 };
        let mut scratch = self.chunk_scratch(need)?;
        let mut sc = pre_mut(&mut scratch, need, op);
        let (ddt, dal) = (ddt.as_mut(), dal.as_mut());
        let r = delta_mixer::inputs_backward(
            &self.device,
            &mut dc,
            &mut dp,
            ddt,
            dal,
            &grads,
            &saved,
            &dt,
            &al,
            rows,
            s,
            &mut sc,
        );
        self.ran(op, r)
    }

    fn delta_rule_forward(
        &self,
        o: &mut CudaSlice<f32>,
        saved: Option<&mut CudaSlice<f32>>,
        x: DeltaBufs<Self>,
        seqs: &CudaIndices,
        n_seqs: usize,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()> {
        let op = "delta_rule_forward";
        let mut o = pre_mut(o, s.v_heads * rows * s.v_head_dim, op);
        let mut saved = saved.map(|sv| sv.as_view_mut());
        let (x, seqs) = (delta_views(x, rows, s, op), seqs.prefix(3 * n_seqs, op));
        let r =
            gated_delta::rule_forward(&self.device, &mut o, saved.as_mut(), &x, &seqs, rows, s.v_heads, delta_dims(s));
        self.ran(op, r)
    }

    fn delta_rule_backward(
        &self,
        d: DeltaGrads<Self>,
        d_o: &CudaSlice<f32>,
        x: DeltaBufs<Self>,
        saved: &CudaSlice<f32>,
        seqs: &CudaIndices,
        n_seqs: usize,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()> {
        let op = "delta_rule_backward";
        let mut grads = delta_views_mut([d.dq, d.dk, d.dv, d.dg, d.dbeta], rows, s, op);
        let (d_o, x) = (pre(d_o, s.v_heads * rows * s.v_head_dim, op), delta_views(x, rows, s, op));
        let (saved, seqs) = (saved.as_view(), seqs.prefix(3 * n_seqs, op));
        let (hv, dims) = (s.v_heads, delta_dims(s));
        let r = gated_delta::rule_backward(&self.device, &mut grads, &d_o, &x, &saved, &seqs, rows, hv, dims);
        self.ran(op, r)
    }

    fn delta_rule_cached(
        &self,
        o: &mut CudaSlice<f32>,
        x: DeltaBufs<Self>,
        state: &mut CudaSlice<f32>,
        slots: &CudaIndices,
        positions: &CudaIndices,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()> {
        let op = "delta_rule_cached";
        let (mut o, x) = (pre_mut(o, s.v_heads * rows * s.v_head_dim, op), delta_views(x, rows, s, op));
        let (slots, positions, mut st) = (slots.prefix(rows, op), positions.prefix(rows, op), state.as_view_mut());
        let (hv, dims) = (s.v_heads, delta_dims(s));
        self.ran(op, gated_delta::rule_cached(&self.device, &mut o, &x, &mut st, &slots, &positions, hv, dims))
    }

    fn delta_norm_forward(
        &self,
        y: &mut CudaSlice<f32>,
        rstd: &mut CudaSlice<f32>,
        o: &CudaSlice<f32>,
        proj: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        rows: usize,
        s: &DeltaNetShape,
        eps: f32,
    ) -> Result<()> {
        let (op, hv, dv) = ("delta_norm_forward", s.v_heads, s.v_head_dim);
        let (mut y, mut r) = (pre_mut(y, rows * s.value_dim(), op), pre_mut(rstd, rows * hv, op));
        let (o, p, w) = (pre(o, hv * rows * dv, op), pre(proj, rows * s.proj_width(), op), pre(w, dv, op));
        self.ran(op, delta_mixer::norm_forward(&self.device, &mut y, &mut r, &o, &p, &w, rows, s, eps))
    }

    fn delta_norm_backward(
        &self,
        dproj: &mut CudaSlice<f32>,
        d_o: &mut CudaSlice<f32>,
        dw: Option<&mut CudaSlice<f32>>,
        dy: &CudaSlice<f32>,
        o: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        proj: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()> {
        let (op, hv, dv, p) = ("delta_norm_backward", s.v_heads, s.v_head_dim, s.proj_width());
        let (mut dp, mut dout) = (pre_mut(dproj, rows * p, op), pre_mut(d_o, hv * rows * dv, op));
        let mut dw = dw.map(|g| pre_mut(g, dv, op));
        let (dy, o, r) = (pre(dy, rows * s.value_dim(), op), pre(o, hv * rows * dv, op), pre(rstd, rows * hv, op));
        let (proj, w) = (pre(proj, rows * p, op), pre(w, dv, op));
        let need = if dw.is_some() { column_scratch(rows * hv, dv) } else { 0 };
        let mut scratch = self.chunk_scratch(need)?;
        let mut sc = pre_mut(&mut scratch, need, op);
        let r = delta_mixer::norm_backward(
            &self.device,
            &mut dp,
            &mut dout,
            dw.as_mut(),
            &dy,
            &o,
            &r,
            &proj,
            &w,
            rows,
            s,
            &mut sc,
        );
        self.ran(op, r)
    }

    fn adamw(&self, tensors: &mut [AdamWTensor<'_, Self>], grad_scale: f32, s: &AdamWScalars) -> Result<()> {
        let op = "adamw";
        let mut views: Vec<adamw::Tensor> = tensors
            .iter_mut()
            .map(|t| adamw::Tensor {
                w: pre_mut(t.w, t.n, op),
                g: pre_mut(t.g, t.n, op),
                m: pre_mut(t.m, t.n, op),
                v: pre_mut(t.v, t.n, op),
                decays: t.decays,
                bf16: t.bf16.as_deref_mut().map(|h| pre_mut(h, t.n, op)),
            })
            .collect();
        // The table is rewritten by every call before its launch reads it (stream order).
        let mut table = self.adamw_table.lock().unwrap_or_else(PoisonError::into_inner);
        self.ran(op, adamw::adamw_tensors(&self.device, &mut table, &mut views, grad_scale, s))
    }

    /// Captures this thread's work on the stream (thread-local mode: a call CUDA refuses during a capture, such as
    /// a synchronize, fails in this thread only).
    fn begin_capture(&self) -> Result<bool> {
        if !self.graphs {
            return Ok(false);
        }
        let mode = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        self.ran("begin_capture", self.device.stream.begin_capture(mode))?;
        self.capturing.store(true, Ordering::Relaxed);
        Ok(true)
    }

    fn end_capture(&self) -> Result<CudaOps> {
        self.capturing.store(false, Ordering::Relaxed);
        let bf16_moves = self.bf16_moves.load(Ordering::Relaxed);
        let (s, flags) = (&self.device.stream, CUgraphInstantiate_flags(0));
        let ended = match s.end_capture(flags) {
            // cudarc reports an error an earlier call left (a failed free, say) before it ends the capture: end it
            // now (that error is consumed), so the stream runs ops again, and report the first.
            Err(e) if s.capture_status().is_ok_and(|c| c != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE) => {
                drop(s.end_capture(flags));
                Err(e)
            }
            ended => ended,
        };
        match self.ran("end_capture", ended)? {
            Some(graph) => Ok(CudaOps { graph, bf16_moves }),
            None => bail!("cuda:{}: capturing a graph gave none", self.device.gpu.ordinal),
        }
    }

    fn replay(&self, g: &CudaOps) -> Result<bool> {
        if g.bf16_moves != self.bf16_moves.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let ordinal = self.device.gpu.ordinal;
        // The graph's decodes of packed matrices, if any, overwrite the decoded weights' scratch.
        self.packed.lock().unwrap_or_else(PoisonError::into_inner).holds = [None; 2];
        let r = g.graph.launch().with_context(|| {
            format!("cuda:{ordinal}: replaying a CUDA graph failed (CONDLM_CUDA_GRAPHS=0 decodes without them)")
        });
        self.note("graph replay", r)?;
        Ok(true)
    }
}

impl Drop for Cuda {
    /// The profile's table, when `CONDLM_CUDA_PROFILE` asked for one.
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            let name = format!("cuda:{}", self.device.gpu.ordinal);
            eprint!("{}", p.lock().unwrap_or_else(PoisonError::into_inner).report(&name));
        }
    }
}
