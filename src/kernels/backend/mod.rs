//! Where a forward and backward pass runs: device buffers and the ops of a transformer step, behind one trait,
//! so that the model on a device (`network::device`) is written once. Two implementations:
//! - [`host::Host`]: the CPU kernels on `Vec`s. It is the reference the device model is tested against without
//!   a GPU (tests/device_model.rs): the same composition of ops must give what `network::Transformer` gives.
//! - `cuda::backend::Cuda` (feature `cuda`): the CUDA kernels of `cuda/cu/` and cuBLAS, each checked against the
//!   CPU kernel it mirrors by `condlm info --devices --check-kernels`.
//!
//! Buffers are allocated once at their largest size and reused (a caching arena on the GPU); every op works on
//! a prefix of its buffers whose length the arguments give, so a smaller batch needs no new allocation.
pub mod host;

use super::activation::GateAct;
use super::adamw::AdamWScalars;
use super::attention::QkvLayout;
use super::dequant::GgmlType;
use super::gated_delta::DeltaNetShape;
use super::rope::RopeTable;
use anyhow::{Result, bail};

/// A matrix inside a buffer: `rows` × `cols` stored row-major from `offset` with row stride `ld`; `trans` reads
/// it transposed (a view, never a copy), so its logical shape is (cols, rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatView {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub trans: bool,
}

impl MatView {
    /// A dense (rows, cols) matrix at the start of a buffer.
    pub fn dense(rows: usize, cols: usize) -> Self {
        MatView { offset: 0, rows, cols, ld: cols, trans: false }
    }

    /// Columns `col..col + cols` of the first `rows` rows of a buffer of rows of `ld`.
    pub fn columns(rows: usize, col: usize, cols: usize, ld: usize) -> Self {
        MatView { offset: col, rows, cols, ld, trans: false }
    }

    /// The transpose, as a view.
    pub fn t(self) -> Self {
        MatView { trans: !self.trans, ..self }
    }

    /// (rows, cols) as read.
    pub fn shape(&self) -> (usize, usize) {
        if self.trans { (self.cols, self.rows) } else { (self.rows, self.cols) }
    }

    /// One past the last element the view touches (0 when empty).
    pub fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 { 0 } else { self.offset + (self.rows - 1) * self.ld + self.cols }
    }
}

/// A buffer of values a product or an element-wise op reads: f32, or kept in bf16 (a weight's copy, or under
/// `--compute bf16` on a device the MLP's activations: [`Backend::bf16_activations`]).
pub enum Values<'a, B: Backend + ?Sized> {
    F32(&'a B::F32),
    Bf16(&'a B::Bf16),
}

impl<B: Backend + ?Sized> Clone for Values<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend + ?Sized> Copy for Values<'_, B> {}

/// A buffer an op writes: f32, or bf16 (values computed in f32, then rounded).
pub enum ValuesMut<'a, B: Backend + ?Sized> {
    F32(&'a mut B::F32),
    Bf16(&'a mut B::Bf16),
}

impl<B: Backend + ?Sized> ValuesMut<'_, B> {
    /// A shorter-lived handle on the same buffer.
    pub fn reborrow(&mut self) -> ValuesMut<'_, B> {
        match self {
            ValuesMut::F32(x) => ValuesMut::F32(&mut **x),
            ValuesMut::Bf16(x) => ValuesMut::Bf16(&mut **x),
        }
    }
}

/// Where the rotated heads sit in a buffer's rows: `heads` heads from column `col` of rows of `row_len`.
#[derive(Clone, Copy, Debug)]
pub struct RopeCols {
    pub row_len: usize,
    pub col: usize,
    pub heads: usize,
}

/// The ops of a transformer's training step and forward pass on some device. Every op is asynchronous with
/// respect to the host except the reads ([`Backend::download`], [`Backend::download_f64`]), which wait for what
/// came before. Shapes are checked by the implementation (a wrong shape is a bug in the caller: it panics).
pub trait Backend {
    /// A buffer of f32 values on the device.
    type F32;
    /// A buffer of f64 values (per-row losses).
    type F64;
    /// A buffer of u32 values (token ids, positions, row indices).
    type U32;
    /// A dropout mask (one bit per element, as `kernels::dropout`).
    type Mask;
    /// A RoPE table's cos and sin on the device.
    type Rope;
    /// A buffer of bf16 values (their bits, `kernels::bf16::round`'s rounding): the weight matrices that
    /// `--compute bf16`'s products read, kept in their operand type rather than rounded on every call.
    type Bf16;
    /// Ops recorded to run again with one call ([`Self::begin_capture`]).
    type Graph;

    /// Where it runs, for messages: "cpu (reference)", "cuda:0 (NVIDIA H200)".
    fn name(&self) -> String;

    /// A zeroed buffer of `n` values.
    fn alloc(&self, n: usize) -> Result<Self::F32>;
    fn alloc_f64(&self, n: usize) -> Result<Self::F64>;
    fn alloc_u32(&self, n: usize) -> Result<Self::U32>;
    /// A mask for `n` elements.
    fn alloc_mask(&self, n: usize) -> Result<Self::Mask>;
    fn alloc_bf16(&self, n: usize) -> Result<Self::Bf16>;
    fn upload_rope(&self, t: &RopeTable) -> Result<Self::Rope>;
    /// dst[..src.len()] = src.
    fn upload(&self, dst: &mut Self::F32, src: &[f32]) -> Result<()>;
    fn upload_u32(&self, dst: &mut Self::U32, src: &[u32]) -> Result<()>;
    /// dst[..src.len()] = src rounded to bf16.
    fn upload_bf16(&self, dst: &mut Self::Bf16, src: &[f32]) -> Result<()>;
    /// dst[..n] = src[..n] rounded to bf16 (a trained weight's operand copy, after its optimizer step).
    fn round_bf16(&self, dst: &mut Self::Bf16, src: &Self::F32, n: usize) -> Result<()>;
    /// dst = src[..dst.len()], after everything queued before.
    fn download(&self, src: &Self::F32, dst: &mut [f32]) -> Result<()>;
    fn download_f64(&self, src: &Self::F64, dst: &mut [f64]) -> Result<()>;
    /// Seconds the host has waited in the reads for the device to finish what came before, since the backend was
    /// made (0 where nothing runs asynchronously). Beside a training step's time: near 0, the host's launches bound
    /// the step (the device idles between them); a larger share, the device was behind — a lower bound of that, as
    /// a launch blocks uncounted once the device's queue is full.
    fn waited_s(&self) -> f64;

    /// x[..n] = 0.
    fn zero(&self, x: &mut Self::F32, n: usize) -> Result<()>;
    /// dst[..n] = src[..n].
    fn copy(&self, dst: &mut Self::F32, src: &Self::F32, n: usize) -> Result<()>;
    /// dst[..n] += src[..n].
    fn add(&self, dst: &mut Self::F32, src: &Self::F32, n: usize) -> Result<()>;
    /// The view `dv` of dst = the view `sv` of src (same shape, neither transposed): a column block of rows
    /// gathered into a dense buffer, or scattered back.
    fn copy_view(&self, dst: &mut Self::F32, dv: MatView, src: &Self::F32, sv: MatView) -> Result<()>;
    /// dst[..n] = s · src[..n].
    fn scale(&self, dst: &mut Self::F32, src: &Self::F32, n: usize, s: f32) -> Result<()>;
    /// x[..n] *= s.
    fn scale_in_place(&self, x: &mut Self::F32, n: usize, s: f32) -> Result<()>;
    /// out[i] = Σ xs[i].0[..xs[i].1]², each summed in f64, without waiting: the sums of every tensor come back in
    /// one [`Backend::download_f64`] (one wait per gradient norm, and two launches on a GPU, not two per tensor).
    fn sum_squares(&self, out: &mut Self::F64, xs: &[(&Self::F32, usize)]) -> Result<()>;

    /// c = a · b (or c += a · b when `accumulate`), each operand a view of its buffer; c is not transposed.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        c: &mut Self::F32,
        cv: MatView,
        a: &Self::F32,
        av: MatView,
        b: &Self::F32,
        bv: MatView,
        accumulate: bool,
    ) -> Result<()>;
    /// c = s · (a · b) on views as [`Backend::gemm`]'s, c overwritten: by default the product, then c's view
    /// scaled in place, as the CPU computes LoRA's scaled factors; a GPU scales the sums before it stores them
    /// (cuBLAS's α: one launch and one rounding fewer). c's view must be dense (offset 0, ld = cols).
    #[allow(clippy::too_many_arguments)]
    fn gemm_scaled(
        &self,
        c: &mut Self::F32,
        cv: MatView,
        a: &Self::F32,
        av: MatView,
        b: &Self::F32,
        bv: MatView,
        s: f32,
    ) -> Result<()> {
        assert!(cv == MatView::dense(cv.rows, cv.cols), "gemm_scaled: c's view {cv:?} is not dense");
        self.gemm(c, cv, a, av, b, bv, false)?;
        self.scale_in_place(c, cv.rows * cv.cols, s)
    }
    /// [`Backend::gemm`] for a product of the network's weight matrices (the base linears and the LM head, forward
    /// and backward, and their gradients) in the run's compute, as `kernels::matmul::matmul_weights`: f32, or
    /// with `--compute bf16` both operands rounded to bf16 and the products summed in f32. LoRA's own products,
    /// attention and the rest stay [`Backend::gemm`].
    #[allow(clippy::too_many_arguments)]
    fn gemm_weights(
        &self,
        c: &mut Self::F32,
        cv: MatView,
        a: &Self::F32,
        av: MatView,
        b: &Self::F32,
        bv: MatView,
        accumulate: bool,
    ) -> Result<()>;
    /// A product with bf16 operands and f32 sums, as `kernels::gemm_bf16`: c = alpha · (a · b) (or c += when
    /// `accumulate`) on views as [`Backend::gemm`]'s. An f32 operand is rounded to bf16 where the product reads it
    /// (so on two f32 operands it is [`Backend::gemm_weights`] under `--compute bf16`, alpha aside); a bf16 one is
    /// read as it is. A bf16 c gets the f32 result rounded (its old values added first when accumulating).
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    /// Whether a frozen weight matrix stored as `ty` stays in its blocks on this device, its products through
    /// [`Self::gemm_packed`]; else it is dequantized when uploaded.
    fn keeps_packed(&self, _ty: GgmlType) -> bool {
        false
    }
    /// c (+)= a · wv for a weight matrix kept in its stored blocks, wv a view of it: the product
    /// `network::device::weights::DevTensor::product` computes for the dense matrix the blocks decode to (as
    /// `kernels::dequant`), its bf16 rounding under `--compute bf16` — the same values, memory as the file's. The
    /// matrix is decoded into scratch of the backend's own before its product.
    #[allow(clippy::too_many_arguments)]
    fn gemm_packed(
        &self,
        _c: ValuesMut<Self>,
        _cv: MatView,
        _a: Values<Self>,
        _av: MatView,
        w: PackedView<Self>,
        _wv: MatView,
        _accumulate: bool,
    ) -> Result<()> {
        bail!("{}: no kernels for {} weights kept in their blocks", self.name(), w.ty)
    }
    /// Whether the device model keeps the blocks' normed inputs and the MLP's activations and their gradients in bf16
    /// under `--compute bf16` (`network::device::buffers`), every product that reads or writes one then a bf16
    /// product. The CPU path keeps
    /// f32 activations, and so does [`host::Host`], which is tested against it; a GPU halves their memory traffic.
    fn bf16_activations(&self) -> bool {
        false
    }
    /// Every row of the view `ov` += b (b: ov.cols values).
    fn add_bias(&self, out: &mut Self::F32, ov: MatView, b: &Self::F32) -> Result<()>;
    /// db[c] += Σ_r dy[r, c] over the rows of the view `dyv` (a bias's gradient): each column summed from 0 in row
    /// order, then added, as `network::linear`'s backward does.
    fn add_column_sums(&self, db: &mut Self::F32, dy: &Self::F32, dyv: MatView) -> Result<()>;

    /// out[i] = table[ids[i]] · scale (scale 1 when None), i < n; table (vocab, dim).
    fn embedding(
        &self,
        out: &mut Self::F32,
        table: &Self::F32,
        ids: &Self::U32,
        n: usize,
        dim: usize,
        scale: Option<f32>,
    ) -> Result<()>;
    /// As `kernels::embedding::embedding_backward` into the table only: dtable[ids[i]] += dout[i] for i < n rows of
    /// `dim`, each table row's additions in row order. `ids_host` holds the same ids as `ids`, in host memory: an
    /// implementation may group the rows by id from it rather than read them back.
    #[allow(clippy::too_many_arguments)]
    fn embedding_backward(
        &self,
        dtable: &mut Self::F32,
        dout: &Self::F32,
        ids: &Self::U32,
        ids_host: &[u32],
        n: usize,
        dim: usize,
    ) -> Result<()>;
    /// As `kernels::norm::rmsnorm_forward` on `rows` rows of `dim` (w: dim values).
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_forward(
        &self,
        out: &mut Self::F32,
        rstd: &mut Self::F32,
        x: &Self::F32,
        w: &Self::F32,
        rows: usize,
        dim: usize,
        offset: f32,
        eps: f32,
    ) -> Result<()>;
    /// [`Self::rmsnorm_forward`] with `out` kept in bf16 (rounded; the blocks' normed inputs under
    /// [`Self::bf16_activations`]).
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_forward_bf16(
        &self,
        out: &mut Self::Bf16,
        rstd: &mut Self::F32,
        x: &Self::F32,
        w: &Self::F32,
        rows: usize,
        dim: usize,
        offset: f32,
        eps: f32,
    ) -> Result<()>;
    /// As `kernels::norm::rmsnorm_backward`: dx **+=**, dw **+=** when given.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dx: &mut Self::F32,
        dw: Option<&mut Self::F32>,
        dout: &Self::F32,
        x: &Self::F32,
        w: &Self::F32,
        rstd: &Self::F32,
        rows: usize,
        dim: usize,
        offset: f32,
    ) -> Result<()>;
    /// As `kernels::norm::layernorm_forward` on `rows` rows of `dim` (GPT-2): mean and 1/std saved.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(
        &self,
        out: &mut Self::F32,
        mean: &mut Self::F32,
        rstd: &mut Self::F32,
        x: &Self::F32,
        w: &Self::F32,
        b: &Self::F32,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()>;
    /// As `kernels::norm::layernorm_backward`: dx **+=**, dw and db **+=** when given.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        dx: &mut Self::F32,
        dw: Option<&mut Self::F32>,
        db: Option<&mut Self::F32>,
        dout: &Self::F32,
        x: &Self::F32,
        w: &Self::F32,
        mean: &Self::F32,
        rstd: &Self::F32,
        rows: usize,
        dim: usize,
    ) -> Result<()>;
    /// As `kernels::rope`'s forward (or backward) on `rows` rows of `buf`; row i uses table row `table_rows[i]`.
    fn rope(
        &self,
        backward: bool,
        buf: &mut Self::F32,
        rows: usize,
        cols: RopeCols,
        table_rows: &Self::U32,
        t: &Self::Rope,
    ) -> Result<()>;
    /// As `kernels::attention::attention_forward` over `rows` packed rows. `stats` (rows · n_heads · 3 values), for
    /// a pass whose [`Self::attention_backward`] follows: what it needs of the forward's softmax (a backend may
    /// keep nothing there and recompute it).
    fn attention_forward(
        &self,
        out: &mut Self::F32,
        stats: Option<&mut Self::F32>,
        qkv: &Self::F32,
        l: QkvLayout,
        seq_start: &Self::U32,
        rows: usize,
    ) -> Result<()>;
    /// As `kernels::attention::attention_backward`: dq, dk, dv **written** at their columns of dqkv. `stats`: what
    /// [`Self::attention_forward`] left there for the same qkv (the backward may write to it too).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dqkv: &mut Self::F32,
        stats: &mut Self::F32,
        datt: &Self::F32,
        qkv: &Self::F32,
        att: &Self::F32,
        l: QkvLayout,
        seq_start: &Self::U32,
        rows: usize,
    ) -> Result<()>;
    /// Rows' keys and values into a layer's KV cache, as `network::kv_cache::KvCache::write`: row i's k and v (the k,
    /// v columns of its qkv row) go to position positions[i] of slot slots[i]. The caches are laid out
    /// `[slot][kv_head][position][head_dim]` with `capacity` positions per slot (`kernels::kv_attention::KvLayer`).
    #[allow(clippy::too_many_arguments)]
    fn kv_store(
        &self,
        k_cache: &mut Self::F32,
        v_cache: &mut Self::F32,
        qkv: &Self::F32,
        l: QkvLayout,
        slots: &Self::U32,
        positions: &Self::U32,
        rows: usize,
        capacity: usize,
    ) -> Result<()>;
    /// As `kernels::kv_attention::cached_attention`: row i's query heads attend to positions 0..=positions[i] of
    /// slot slots[i] of the cache (within the layout's window). out (rows, n_heads·head_dim).
    #[allow(clippy::too_many_arguments)]
    fn cached_attention(
        &self,
        out: &mut Self::F32,
        qkv: &Self::F32,
        k_cache: &Self::F32,
        v_cache: &Self::F32,
        l: QkvLayout,
        slots: &Self::U32,
        positions: &Self::U32,
        rows: usize,
        capacity: usize,
    ) -> Result<()>;
    /// buf[to..to + n] = buf[from..from + n] (the ranges do not overlap): a cache slot copied to another.
    fn copy_within(&self, buf: &mut Self::F32, from: usize, to: usize, n: usize) -> Result<()>;
    /// As `kernels::activation::gelu_tanh_forward` on n values (GPT-2's MLP).
    fn gelu_forward(&self, out: &mut Self::F32, x: &Self::F32, n: usize) -> Result<()>;
    /// As `kernels::activation::gelu_tanh_backward`: dx = (overwritten).
    fn gelu_backward(&self, dx: &mut Self::F32, dout: &Self::F32, x: &Self::F32, n: usize) -> Result<()>;
    /// out (rows, f) = act(gate) ⊙ up as `kernels::activation::glu_forward`, from gate and up side by side in
    /// gate_up (rows, 2·f): each row's gate in columns [0, f), its up in [f, 2f) — what one product with the gate
    /// and up weights one above the other writes.
    fn glu_forward(&self, out: &mut Self::F32, gate_up: &Self::F32, rows: usize, f: usize, act: GateAct) -> Result<()>;
    /// [`Self::glu_forward`] on values kept in bf16 (computed in f32, out rounded).
    fn glu_forward_bf16(
        &self,
        out: &mut Self::Bf16,
        gate_up: &Self::Bf16,
        rows: usize,
        f: usize,
        act: GateAct,
    ) -> Result<()>;
    /// As `kernels::activation::glu_backward`: dgate and dup written side by side in dgate_up (rows, 2·f), as
    /// gate_up holds gate and up; dout (rows, f).
    #[allow(clippy::too_many_arguments)]
    fn glu_backward(
        &self,
        dgate_up: &mut Self::F32,
        dout: &Self::F32,
        gate_up: &Self::F32,
        rows: usize,
        f: usize,
        act: GateAct,
    ) -> Result<()>;
    /// [`Self::glu_backward`] on values kept in bf16 (computed in f32, dgate and dup rounded).
    #[allow(clippy::too_many_arguments)]
    fn glu_backward_bf16(
        &self,
        dgate_up: &mut Self::Bf16,
        dout: &Self::Bf16,
        gate_up: &Self::Bf16,
        rows: usize,
        f: usize,
        act: GateAct,
    ) -> Result<()>;
    /// out[k] = src[idx[k]] for k < n rows of `dim`.
    fn gather_rows(&self, out: &mut Self::F32, src: &Self::F32, idx: &Self::U32, n: usize, dim: usize) -> Result<()>;
    /// dst[idx[k]] += src[k] for k < n rows of `dim` (the indices distinct).
    fn scatter_add_rows(
        &self,
        dst: &mut Self::F32,
        src: &Self::F32,
        idx: &Self::U32,
        n: usize,
        dim: usize,
    ) -> Result<()>;
    /// The loss rows of the LM head, as `kernels::lm_head::cross_entropy_row` on `rows` rows of `vocab` logits:
    /// loss[loss_at + r] in f64 (a batch's losses gather in one buffer, read once), logits[r] turned into dlogits in
    /// place.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_rows(
        &self,
        logits: &mut Self::F32,
        loss: &mut Self::F64,
        loss_at: usize,
        targets: &Self::U32,
        rows: usize,
        vocab: usize,
        token_weight: f32,
        label_smoothing: f32,
    ) -> Result<()>;
    /// [`Self::cross_entropy_rows`] with the dlogits rounded to bf16 into `dlogits`, the logits left as they are
    /// (the head's products under [`Self::bf16_activations`] read them in bf16).
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_rows_bf16(
        &self,
        logits: &Self::F32,
        dlogits: &mut Self::Bf16,
        loss: &mut Self::F64,
        loss_at: usize,
        targets: &Self::U32,
        rows: usize,
        vocab: usize,
        token_weight: f32,
        label_smoothing: f32,
    ) -> Result<()>;
    /// As `kernels::dropout::dropout_forward` on n values (the mask drawn from `key`).
    fn dropout_forward(
        &self,
        x_drop: &mut Self::F32,
        keep: &mut Self::Mask,
        x: &Self::F32,
        n: usize,
        p: f32,
        key: u64,
    ) -> Result<()>;
    /// [`Self::dropout_forward`] on values kept in bf16: the same mask, x_drop rounded.
    fn dropout_forward_bf16(
        &self,
        x_drop: &mut Self::Bf16,
        keep: &mut Self::Mask,
        x: &Self::Bf16,
        n: usize,
        p: f32,
        key: u64,
    ) -> Result<()>;
    /// As `kernels::dropout::dropout_again`.
    fn dropout_again(&self, x_drop: &mut Self::F32, keep: &Self::Mask, x: &Self::F32, n: usize, p: f32) -> Result<()>;
    /// As `kernels::dropout::dropout_backward`: dx **+=**.
    fn dropout_backward(&self, dx: &mut Self::F32, t: &Self::F32, keep: &Self::Mask, n: usize, p: f32) -> Result<()>;
    /// LoRA's dA through its dropout: g (r, in) **+=** duᵀ · dropout(x), du (n, r), x (n, in), `keep` the mask of
    /// [`Self::dropout_forward`] over n·in values; `shape` (n, in, r). This default makes dropout(x) again into the
    /// scratch `x_drop` (n·in) with [`Self::dropout_again`] and multiplies, as the CPU does; a GPU makes each value
    /// where the product reads it, leaving `x_drop` alone: two passes over (n, in) fewer.
    #[allow(clippy::too_many_arguments)]
    fn lora_dropout_da(
        &self,
        g: &mut Self::F32,
        x_drop: &mut Self::F32,
        du: &Self::F32,
        x: &Self::F32,
        keep: &Self::Mask,
        shape: (usize, usize, usize),
        p: f32,
    ) -> Result<()> {
        let (n, inp, r) = shape;
        self.dropout_again(x_drop, keep, x, n * inp, p)?;
        self.gemm(g, MatView::dense(r, inp), du, MatView::dense(n, r).t(), x_drop, MatView::dense(n, inp), true)
    }
    /// LoRA's input gradient through its dropout: dx (n, in) **+=** keep ⊙ (du·a) / (1 − p), du (n, r), a (r, in),
    /// `keep` the mask of [`Self::dropout_forward`] over n·in values; `shape` (n, in, r). This default computes
    /// du·a into the scratch `t` (n·in) and calls [`Self::dropout_backward`] on it, as the CPU does; a GPU fuses
    /// the product (r terms per element) into the masked add, leaving `t` alone: two passes over (n, in) fewer.
    #[allow(clippy::too_many_arguments)]
    fn lora_dropout_dx(
        &self,
        dx: &mut Self::F32,
        t: &mut Self::F32,
        du: &Self::F32,
        a: &Self::F32,
        keep: &Self::Mask,
        shape: (usize, usize, usize),
        p: f32,
    ) -> Result<()> {
        let (n, inp, r) = shape;
        self.gemm(t, MatView::dense(n, inp), du, MatView::dense(n, r), a, MatView::dense(r, inp), false)?;
        self.dropout_backward(dx, t, keep, n * inp, p)
    }
    /// [`Self::lora_dropout_da`] for an x kept in bf16, as a bf16 product: g (r, in) **+=** duᵀ · dropout(x) with
    /// du and dropout(x) rounded to bf16, f32 sums.
    #[allow(clippy::too_many_arguments)]
    fn lora_dropout_da_bf16(
        &self,
        g: &mut Self::F32,
        du: &Self::F32,
        x: &Self::Bf16,
        keep: &Self::Mask,
        shape: (usize, usize, usize),
        p: f32,
    ) -> Result<()>;
    /// [`Self::lora_dropout_dx`] into a dx kept in bf16, as a bf16 product: dx (n, in) = bf16(dx + keep ⊙ (du·a) /
    /// (1 − p)), du and a rounded to bf16, f32 sums.
    #[allow(clippy::too_many_arguments)]
    fn lora_dropout_dx_bf16(
        &self,
        dx: &mut Self::Bf16,
        du: &Self::F32,
        a: &Self::F32,
        keep: &Self::Mask,
        shape: (usize, usize, usize),
        p: f32,
    ) -> Result<()>;
    /// As `kernels::activation::sigmoid_gate_forward` on n values: out = x ⊙ σ(gate).
    fn sigmoid_gate_forward(&self, out: &mut Self::F32, x: &Self::F32, gate: &Self::F32, n: usize) -> Result<()>;
    /// As `kernels::activation::sigmoid_gate_backward` on n values (dx, dgate written).
    fn sigmoid_gate_backward(
        &self,
        dx: &mut Self::F32,
        dgate: &mut Self::F32,
        dout: &Self::F32,
        x: &Self::F32,
        gate: &Self::F32,
        n: usize,
    ) -> Result<()>;

    // The Gated DeltaNet (Qwen3.5's linear attention) between its input projections and out_proj, op by op as
    // `network::delta_net` composes them. `proj`: the projections' outputs, `rows` rows of `s.proj_width()`.

    /// As `kernels::gated_delta::causal_conv_silu_forward` on proj's first conv_dim columns: out, pre (rows,
    /// conv_dim); w (conv_dim, K).
    #[allow(clippy::too_many_arguments)]
    fn delta_conv_forward(
        &self,
        out: &mut Self::F32,
        pre: &mut Self::F32,
        proj: &Self::F32,
        w: &Self::F32,
        seq_start: &Self::U32,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()>;
    /// As `kernels::gated_delta::causal_conv_silu_backward`: dproj's first conv_dim columns **+=**, dw **+=** when
    /// given; `dout` (rows, conv_dim) is overwritten by ∂L/∂pre.
    #[allow(clippy::too_many_arguments)]
    fn delta_conv_backward(
        &self,
        dproj: &mut Self::F32,
        dw: Option<&mut Self::F32>,
        dout: &mut Self::F32,
        pre: &Self::F32,
        proj: &Self::F32,
        w: &Self::F32,
        seq_start: &Self::U32,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()>;
    /// As `kernels::gated_delta::causal_conv_silu_cached`: decoding rows in order, row i after the last K−1 input
    /// rows of slot slots[i] in `hist` (slots, K−1, conv_dim) — zeros at position 0 — which it advances.
    #[allow(clippy::too_many_arguments)]
    fn delta_conv_cached(
        &self,
        out: &mut Self::F32,
        pre: &mut Self::F32,
        proj: &Self::F32,
        w: &Self::F32,
        hist: &mut Self::F32,
        slots: &Self::U32,
        positions: &Self::U32,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()>;
    /// As `kernels::delta_mixer::inputs_forward`: the recurrence's inputs from the convolution's output `conv` (rows,
    /// conv_dim), proj's b and a columns, dt_bias and A_log (v_heads).
    #[allow(clippy::too_many_arguments)]
    fn delta_inputs_forward(
        &self,
        x: DeltaInputsMut<Self>,
        conv: &Self::F32,
        proj: &Self::F32,
        dt_bias: &Self::F32,
        a_log: &Self::F32,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()>;
    /// As `kernels::delta_mixer::inputs_backward`: `dconv` (rows, conv_dim) and dproj's b and a columns written;
    /// ∂dt_bias and ∂A_log **+=** when given.
    #[allow(clippy::too_many_arguments)]
    fn delta_inputs_backward(
        &self,
        dconv: &mut Self::F32,
        dproj: &mut Self::F32,
        ddt_bias: Option<&mut Self::F32>,
        da_log: Option<&mut Self::F32>,
        d: DeltaBufs<Self>,
        saved: DeltaSaved<Self>,
        dt_bias: &Self::F32,
        a_log: &Self::F32,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()>;
    /// As `kernels::gated_delta::delta_rule_forward` over the `n_seqs` sequences of `seqs`
    /// (`kernels::gated_delta::seq_table`'s triples): o (v_heads, rows, dv); `saved` (v_heads, checkpoints, dk·dv)
    /// when given.
    #[allow(clippy::too_many_arguments)]
    fn delta_rule_forward(
        &self,
        o: &mut Self::F32,
        saved: Option<&mut Self::F32>,
        x: DeltaBufs<Self>,
        seqs: &Self::U32,
        n_seqs: usize,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()>;
    /// As `kernels::gated_delta::delta_rule_backward` from `d_o` (v_heads, rows, dv) and the states
    /// [`Self::delta_rule_forward`] saved: every gradient of `d` written.
    #[allow(clippy::too_many_arguments)]
    fn delta_rule_backward(
        &self,
        d: DeltaGrads<Self>,
        d_o: &Self::F32,
        x: DeltaBufs<Self>,
        saved: &Self::F32,
        seqs: &Self::U32,
        n_seqs: usize,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()>;
    /// As `kernels::gated_delta::delta_rule_cached`: decoding rows in order, row i from the state of slot slots[i]
    /// in `state` (slots, v_heads, dk·dv) — zero at position 0 — which it advances.
    #[allow(clippy::too_many_arguments)]
    fn delta_rule_cached(
        &self,
        o: &mut Self::F32,
        x: DeltaBufs<Self>,
        state: &mut Self::F32,
        slots: &Self::U32,
        positions: &Self::U32,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()>;
    /// As `kernels::delta_mixer::gated_norm_forward`: y (rows, value_dim), 1/rms in `rstd` (rows, v_heads), from o
    /// (head-major), proj's z columns and w (v_head_dim).
    #[allow(clippy::too_many_arguments)]
    fn delta_norm_forward(
        &self,
        y: &mut Self::F32,
        rstd: &mut Self::F32,
        o: &Self::F32,
        proj: &Self::F32,
        w: &Self::F32,
        rows: usize,
        s: &DeltaNetShape,
        eps: f32,
    ) -> Result<()>;
    /// As `kernels::delta_mixer::gated_norm_backward`: dproj's z columns and `d_o` written, ∂w **+=** when given.
    #[allow(clippy::too_many_arguments)]
    fn delta_norm_backward(
        &self,
        dproj: &mut Self::F32,
        d_o: &mut Self::F32,
        dw: Option<&mut Self::F32>,
        dy: &Self::F32,
        o: &Self::F32,
        rstd: &Self::F32,
        proj: &Self::F32,
        w: &Self::F32,
        rows: usize,
        s: &DeltaNetShape,
    ) -> Result<()>;

    /// One AdamW step of every tensor (as `kernels::adamw::adamw_step` on its first n values, from its gradient
    /// times `grad_scale` — clipping's coefficient, or 1; one that does not decay takes `s.decay` as 1), each
    /// gradient zeroed after and its bf16 copy, if it has one, made from the new values: one launch on a GPU for
    /// all of them.
    fn adamw(&self, tensors: &mut [AdamWTensor<'_, Self>], grad_scale: f32, s: &AdamWScalars) -> Result<()>;

    /// Starts recording the ops that follow into a graph instead of running them (CUDA graphs: a decode step's
    /// hundreds of launches replayed as one). Ok(false) where the backend records none: the ops then run as
    /// usual. Only ops that neither allocate nor copy to or from the host can be recorded.
    fn begin_capture(&self) -> Result<bool>;
    /// Ends the recording [`Self::begin_capture`] started: the recorded ops, to [`Self::replay`]. An error leaves
    /// nothing recorded (the ops since the start did not run).
    fn end_capture(&self) -> Result<Self::Graph>;
    /// Runs a graph's ops again, on the buffers and with the arguments they were recorded with (buffers the caller
    /// owns must still be the same). Ok(false): scratch of the backend's own that the graph used was replaced
    /// since, so it ran nothing — record it again.
    fn replay(&self, graph: &Self::Graph) -> Result<bool>;
}

/// A frozen weight matrix (rows, cols) on a device in its stored GGML blocks (`kernels::packed::PackedMatrix`): the
/// rows' bytes end to end in u32 words ([`words_of`]), read by [`Backend::gemm_packed`].
pub struct PackedView<'a, B: Backend + ?Sized> {
    pub words: &'a B::U32,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
}

impl<B: Backend + ?Sized> Clone for PackedView<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend + ?Sized> Copy for PackedView<'_, B> {}

/// Bytes as little-endian u32 words, the last zero-padded: how a packed matrix travels in a `Backend::U32` buffer.
pub fn words_of(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks(4).map(|c| c.iter().rev().fold(0, |w, &b| (w << 8) | b as u32)).collect()
}

/// A Gated DeltaNet's recurrence inputs on a device, head-major (as `kernels::gated_delta::DeltaIn`): q, k
/// (v_heads, rows, dk), v (v_heads, rows, dv), g, β (v_heads, rows); or their gradients, read.
pub struct DeltaBufs<'a, B: Backend + ?Sized> {
    pub q: &'a B::F32,
    pub k: &'a B::F32,
    pub v: &'a B::F32,
    pub g: &'a B::F32,
    pub beta: &'a B::F32,
}

impl<B: Backend + ?Sized> Clone for DeltaBufs<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend + ?Sized> Copy for DeltaBufs<'_, B> {}

/// The gradients of [`DeltaBufs`], written.
pub struct DeltaGrads<'a, B: Backend + ?Sized> {
    pub dq: &'a mut B::F32,
    pub dk: &'a mut B::F32,
    pub dv: &'a mut B::F32,
    pub dg: &'a mut B::F32,
    pub dbeta: &'a mut B::F32,
}

/// [`DeltaBufs`] to write, and 1/‖q‖, 1/‖k‖ per row and key head (rows, k_heads)
/// (`kernels::delta_mixer::InputsMut`).
pub struct DeltaInputsMut<'a, B: Backend + ?Sized> {
    pub q: &'a mut B::F32,
    pub k: &'a mut B::F32,
    pub v: &'a mut B::F32,
    pub g: &'a mut B::F32,
    pub beta: &'a mut B::F32,
    pub q_rnorm: &'a mut B::F32,
    pub k_rnorm: &'a mut B::F32,
}

/// What [`Backend::delta_inputs_backward`] reads of the forward pass (`kernels::delta_mixer::InputsSaved`).
pub struct DeltaSaved<'a, B: Backend + ?Sized> {
    pub x: DeltaBufs<'a, B>,
    pub q_rnorm: &'a B::F32,
    pub k_rnorm: &'a B::F32,
    pub conv: &'a B::F32,
    pub proj: &'a B::F32,
}

/// One trainable tensor of [`Backend::adamw`]: values, gradient, moments, their length, and whether weight decay
/// applies.
pub struct AdamWTensor<'a, B: Backend + ?Sized> {
    pub w: &'a mut B::F32,
    pub g: &'a mut B::F32,
    pub m: &'a mut B::F32,
    pub v: &'a mut B::F32,
    pub n: usize,
    pub decays: bool,
    /// A bf16 copy to write from the new values (`--compute bf16`'s copy of a trained weight matrix), rounded as
    /// `kernels::bf16::round`: in the step's own pass over the values on a GPU, rather than one more per tensor.
    pub bf16: Option<&'a mut B::Bf16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_hold_the_bytes_in_order() {
        assert_eq!(words_of(&[1, 2, 3, 4, 5]), vec![0x0403_0201, 5]);
        let w = words_of(&[9, 8, 7, 6, 5, 4]);
        let back: Vec<u8> = w.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(&back[..6], &[9, 8, 7, 6, 5, 4]);
    }

    #[test]
    fn views_know_their_shape_and_extent() {
        let v = MatView::columns(3, 4, 2, 10);
        assert_eq!(v.shape(), (3, 2));
        assert_eq!(v.t().shape(), (2, 3));
        assert_eq!(v.end(), 4 + 2 * 10 + 2);
        assert_eq!(MatView::dense(0, 5).end(), 0);
    }
}
