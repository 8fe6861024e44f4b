//! Qwen3.5's Gated DeltaNet recurrence and the convolution before it on the GPU (gated_delta.cu), as
//! `kernels::gated_delta`'s causal_conv_silu_forward / _backward / _cached and delta_rule_forward / _backward /
//! _cached: the same layouts (the convolution's input the first conv_dim columns of rows of proj_width; the
//! recurrence's buffers head-major), sequence tables (`seq_table`) and saved states. The kernels trust the indices
//! (sequence starts, tables, slots): their upload's facts are checked first.
use super::indices::Indices;
use super::{CHUNK_ROWS, by_chunks, by_rows, column_scratch, elementwise, reduce};
use crate::kernels::cuda::device::Device;
use crate::kernels::gated_delta::{DeltaDims, DeltaNetShape};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtrMut, DriverError, LaunchConfig, PushKernelArg};

/// The longest key head the recurrence takes: gated_delta.cu's DELTA_MAX_DK (32 lanes × 8 rows each).
pub const MAX_KEY_DIM: usize = 256;
/// gated_delta.cu's DELTA_BWD_WARPS and DELTA_BWD_COLS: the backward's block holds every column of a head, at most
/// this many warps of at most this many columns each.
const BACKWARD_WARPS: usize = 16;
const BACKWARD_COLS: usize = 8;
/// Warps per block of the forward and decoding kernels, one column of S each.
const COLUMN_WARPS: usize = 8;

/// Whether the kernels take a Gated DeltaNet of shape `s` — key heads of at most [`MAX_KEY_DIM`], value heads of at
/// most the backward's columns — and if not, why, for the user.
pub fn check_shape(s: &DeltaNetShape) -> Result<(), String> {
    let most = BACKWARD_WARPS * BACKWARD_COLS;
    if s.k_head_dim > MAX_KEY_DIM || s.v_head_dim > most {
        return Err(format!(
            "the GPU's Gated DeltaNet kernels take key heads of up to {MAX_KEY_DIM} and value heads of up to {most} \
             features; this model's are {} and {} (linear_key_head_dim, linear_value_head_dim): run it on the CPU \
             (leave out --device)",
            s.k_head_dim, s.v_head_dim
        ));
    }
    Ok(())
}

/// Every kernel's values as ints; panics with `op` when one does not fit.
fn ints<const N: usize>(op: &str, v: [usize; N]) -> [i32; N] {
    v.map(|x| i32::try_from(x).unwrap_or_else(|_| panic!("{op}: {x} exceeds the kernels' ints")))
}

/// Checks the convolution's weights and input — w (conv_dim, K), x `rows` rows of proj_width holding the conv_dim
/// channels — and returns (rows, conv_dim, proj_width, K) as the kernels take them.
fn conv_shape(op: &str, s: &DeltaNetShape, rows: usize, x: usize, w: usize) -> [i32; 4] {
    let (c, p, kw) = (s.conv_dim(), s.proj_width(), s.conv_kernel);
    assert!(kw > 0 && c > 0 && c <= p, "{op}: a kernel of {kw} over {c} channels of rows of {p}");
    assert_eq!(w, c * kw, "{op}: w must hold ({c}, {kw}) values");
    assert_eq!(x, rows * p, "{op}: x must hold {rows} rows of {p}");
    let [rows, c, p, kw, _weights] = ints(op, [rows, c, p, kw, w]);
    [rows, c, p, kw]
}

/// The depthwise causal convolution and SiLU over a packed batch: pre = Σ_j w[·, j]·x[t − K + 1 + j] within each
/// row's sequence (seq_start), out = silu(pre). x (N, proj_width), its first conv_dim columns read; w (conv_dim, K);
/// out, pre (N, conv_dim).
pub fn conv_forward(
    d: &Device,
    out: &mut CudaViewMut<f32>,
    pre: &mut CudaViewMut<f32>,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    seq_start: &Indices,
    s: &DeltaNetShape,
) -> Result<(), DriverError> {
    let (op, rows) = ("delta_conv_forward", seq_start.len());
    let [rows_i, c, p, kw] = conv_shape(op, s, rows, x.len(), w.len());
    let n = rows * s.conv_dim();
    assert!(out.len() == n && pre.len() == n, "{op}: out and pre must hold {rows} rows of {c}");
    if rows == 0 {
        return Ok(());
    }
    assert!(seq_start.facts.at_or_before, "{op}: a seq_start lies after its row: not a packed batch");
    let mut b = d.stream.launch_builder(d.function("delta_conv_forward"));
    b.arg(out).arg(pre).arg(x).arg(w).arg(&seq_start.view).arg(&rows_i).arg(&c).arg(&p).arg(&kw);
    // SAFETY: (t, c), t < N, c < conv_dim, reads seq_start[t] (N of them), w[c·K..][..K] and column c of rows
    // seq_start[t]..=t (≤ t: checked) of x (N rows of proj_width ≥ conv_dim, checked), and writes pre and out at
    // t·conv_dim + c (N rows of conv_dim, checked).
    unsafe { b.launch(by_rows(rows, s.conv_dim())) }.map(drop)
}

/// Backward of [`conv_forward`]: `dout` (N, conv_dim) becomes ∂L/∂pre; dx's first conv_dim columns (N, proj_width)
/// **+=** ∂L/∂x; dw (conv_dim, K) **+=** ∂L/∂w when given, summed by chunks of rows in `partials`
/// (`column_scratch(N, conv_dim·K)` values).
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    d: &Device,
    dx: &mut CudaViewMut<f32>,
    dw: Option<&mut CudaViewMut<f32>>,
    dout: &mut CudaViewMut<f32>,
    pre: &CudaView<f32>,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    seq_start: &Indices,
    s: &DeltaNetShape,
    partials: &mut CudaViewMut<f32>,
) -> Result<(), DriverError> {
    let (op, rows) = ("delta_conv_backward", seq_start.len());
    let [rows_i, c, p, kw] = conv_shape(op, s, rows, x.len(), w.len());
    let (n, weights) = (rows * s.conv_dim(), s.conv_dim() * s.conv_kernel);
    assert!(dout.len() == n && pre.len() == n, "{op}: dout and pre must hold {rows} rows of {c}");
    assert_eq!(dx.len(), x.len(), "{op}: dx must hold {rows} rows of {p}");
    if rows == 0 {
        return Ok(());
    }
    assert!(seq_start.facts.at_or_before, "{op}: a seq_start lies after its row: not a packed batch");
    let mut b = d.stream.launch_builder(d.function("delta_conv_dpre"));
    b.arg(&mut *dout).arg(pre).arg(&n);
    // SAFETY: element-wise over the n values of dout and pre (lengths checked).
    unsafe { b.launch(elementwise(n)) }?;
    let dpre = dout.as_view();
    let mut b = d.stream.launch_builder(d.function("delta_conv_backward_dx"));
    b.arg(dx).arg(&dpre).arg(w).arg(&seq_start.view).arg(&rows_i).arg(&c).arg(&p).arg(&kw);
    // SAFETY: (s, c) reads rows s..s + K − 1 (< N) of dpre's column c, w[c·K..][..K] and seq_start there, and
    // adds to dx at s·proj_width + c: all inside the checked lengths.
    unsafe { b.launch(by_rows(rows, s.conv_dim())) }?;
    let Some(dw) = dw else { return Ok(()) };
    assert_eq!(dw.len(), weights, "{op}: dw must hold ({c}, {kw}) values");
    assert!(partials.len() >= column_scratch(rows, weights), "{op}: scratch of {}", partials.len());
    let ((cfg, chunks), chunk_rows) = (by_chunks(rows, weights), CHUNK_ROWS as i32);
    let mut b = d.stream.launch_builder(d.function("delta_conv_backward_dw"));
    b.arg(&mut *partials).arg(&dpre).arg(x).arg(&seq_start.view).arg(&rows_i).arg(&c).arg(&p).arg(&kw);
    b.arg(&chunk_rows);
    // SAFETY: thread (c·K + j, chunk) reads column c of its chunk's rows t < N of dpre, seq_start[t] and x's row
    // t − K + 1 + j when it is ≥ seq_start[t] (≥ 0, checked), and writes partials[chunk·conv_dim·K + c·K + j] <
    // column_scratch(N, conv_dim·K) ≤ partials.len() (checked).
    unsafe { b.launch(cfg) }?;
    reduce::add_chunk_sums(d, dw, &partials.as_view(), chunks)
}

/// Decoding rows through [`conv_forward`], in order: row i after the last K − 1 input rows of slot slots[i] in
/// `hist` (slots, K − 1, conv_dim), zeros at position 0, which it advances. x (N, proj_width); out, pre (N,
/// conv_dim). Neither allocates nor copies: a CUDA graph may hold it.
#[allow(clippy::too_many_arguments)]
pub fn conv_cached(
    d: &Device,
    out: &mut CudaViewMut<f32>,
    pre: &mut CudaViewMut<f32>,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    hist: &mut CudaViewMut<f32>,
    slots: &Indices,
    positions: &Indices,
    s: &DeltaNetShape,
) -> Result<(), DriverError> {
    let (op, rows) = ("delta_conv_cached", slots.len());
    let [rows_i, c, p, kw] = conv_shape(op, s, rows, x.len(), w.len());
    let n = rows * s.conv_dim();
    assert!(out.len() == n && pre.len() == n, "{op}: out and pre must hold {rows} rows of {c}");
    assert_eq!(positions.len(), rows, "{op}: {rows} slots but {} positions", positions.len());
    if rows == 0 {
        return Ok(());
    }
    // A kernel of 1 keeps no rows: hist is not read.
    if let Some(n_slots) = hist.len().checked_div((s.conv_kernel - 1) * s.conv_dim()) {
        slots.check_below(n_slots, op);
    }
    let mut b = d.stream.launch_builder(d.function("delta_conv_cached"));
    b.arg(out).arg(pre).arg(x).arg(w).arg(hist).arg(&slots.view).arg(&positions.view).arg(&rows_i).arg(&c);
    b.arg(&p).arg(&kw);
    // SAFETY: channel c reads row r's slot and position (r < N, both views of N), column c of x's row r and
    // w[c·K..][..K], reads and writes hist[slot][j][c], j < K − 1 (slots below those hist holds: checked; none read
    // when K = 1), and writes pre and out at r·conv_dim + c (lengths checked).
    unsafe { b.launch(elementwise(s.conv_dim())) }.map(drop)
}

/// The recurrence's head-major inputs, or their gradients (as `kernels::gated_delta::DeltaIn`): q, k (heads, N,
/// dk), v (heads, N, dv), g, β (heads, N).
pub struct DeltaViews<'a> {
    pub q: CudaView<'a, f32>,
    pub k: CudaView<'a, f32>,
    pub v: CudaView<'a, f32>,
    pub g: CudaView<'a, f32>,
    pub beta: CudaView<'a, f32>,
}

/// [`DeltaViews`] to write.
pub struct DeltaViewsMut<'a> {
    pub q: CudaViewMut<'a, f32>,
    pub k: CudaViewMut<'a, f32>,
    pub v: CudaViewMut<'a, f32>,
    pub g: CudaViewMut<'a, f32>,
    pub beta: CudaViewMut<'a, f32>,
}

/// Checks that head-major buffers of lengths [q, k, v, g, β] hold `heads` heads of `rows` rows, and the head dims
/// the kernels take (1 ≤ dk ≤ [`MAX_KEY_DIM`], dv ≥ 1); returns (rows, dk, dv) as ints.
pub(super) fn check_heads(op: &str, lens: [usize; 5], heads: usize, rows: usize, dims: DeltaDims) -> [i32; 3] {
    let (dk, dv) = (dims.dk, dims.dv);
    assert!(
        (1..=MAX_KEY_DIM).contains(&dk) && dv > 0,
        "{op}: key heads of {dk} outside 1..={MAX_KEY_DIM} (gated_delta.cu's DELTA_MAX_DK: 32 lanes × 8 rows each), \
         or value heads of {dv}"
    );
    let n = heads * rows;
    assert_eq!(lens, [n * dk, n * dk, n * dv, n, n], "{op}: q, k, v, g, β must hold {heads} heads of {rows} rows");
    ints(op, [rows, dk, dv])
}

impl DeltaViews<'_> {
    fn lens(&self) -> [usize; 5] {
        [self.q.len(), self.k.len(), self.v.len(), self.g.len(), self.beta.len()]
    }
}

/// Checks a sequence table of the batch's `rows` rows (`kernels::gated_delta::seq_table`: triples (start, end, first
/// checkpoint)) and returns its sequences and the checkpoints it numbers — at most those of the upload, which the
/// kernels find from the table's last triple.
fn sequences(op: &str, seqs: &Indices, rows: usize) -> (usize, usize) {
    assert!(seqs.len().is_multiple_of(3), "{op}: a sequence table of {} values is not triples", seqs.len());
    let checkpoints = seqs.facts.seq_checkpoints.unwrap_or_else(|| {
        panic!("{op}: the sequences are no kernels::gated_delta::seq_table (in order, non-empty, checkpoints numbered)")
    });
    assert!(seqs.is_empty() || seqs.facts.max as usize <= rows, "{op}: a sequence ends past the batch's {rows} rows");
    (seqs.len() / 3, checkpoints)
}

/// The grid of the column kernels: (`outer`, heads or 1, groups of [`COLUMN_WARPS`] columns).
fn by_columns(op: &str, outer: (usize, usize), dv: usize) -> LaunchConfig {
    let groups = dv.div_ceil(COLUMN_WARPS);
    assert!(outer.1 <= 65_535 && groups <= 65_535, "{op}: {} heads of {dv} exceed a grid", outer.1);
    let [x] = ints(op, [outer.0]);
    LaunchConfig {
        grid_dim: (x as u32, outer.1 as u32, groups as u32),
        block_dim: (32 * COLUMN_WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The recurrence of every head over the `seqs` of a packed batch of `rows` rows, each sequence from a zero state:
/// o (heads, N, dv); `saved` (heads, checkpoints, dk·dv), when given, receives each head's state at the start of
/// every chunk of a sequence (`kernels::gated_delta::CHUNK` rows).
#[allow(clippy::too_many_arguments)]
pub fn rule_forward(
    d: &Device,
    o: &mut CudaViewMut<f32>,
    saved: Option<&mut CudaViewMut<f32>>,
    x: &DeltaViews,
    seqs: &Indices,
    rows: usize,
    heads: usize,
    dims: DeltaDims,
) -> Result<(), DriverError> {
    let op = "delta_rule_forward";
    let [rows_i, dk, dv] = check_heads(op, x.lens(), heads, rows, dims);
    assert_eq!(o.len(), heads * rows * dims.dv, "{op}: o must hold {heads} heads of {rows} rows of {dv}");
    let (n_seqs, checkpoints) = sequences(op, seqs, rows);
    if let Some(sv) = &saved {
        let need = heads * checkpoints * dims.dk * dims.dv;
        assert!(sv.len() >= need, "{op}: saved holds {} values, the states need {need}", sv.len());
    }
    if n_seqs == 0 || heads == 0 {
        return Ok(());
    }
    // saved's address (its guard, cudarc's stream-order record, lives until the launch is queued), or null.
    let (saved, _guard) = match saved {
        Some(sv) => {
            let (ptr, guard) = sv.device_ptr_mut(&d.stream);
            (ptr, Some(guard))
        }
        None => (0, None),
    };
    let [n_seqs_i] = ints(op, [n_seqs]);
    let mut b = d.stream.launch_builder(d.function("delta_rule_forward"));
    b.arg(o).arg(&saved).arg(&x.q).arg(&x.k).arg(&x.v).arg(&x.g).arg(&x.beta).arg(&seqs.view).arg(&n_seqs_i);
    b.arg(&rows_i).arg(&dk).arg(&dv);
    // SAFETY: block (sequence, h, group) reads its triple and the last (n_seqs triples in the view), the rows
    // start..end ≤ N (checked) of head h of q, k, v, g, β and writes them in o (each holding heads·N rows: checked);
    // saved, when not null, at head h's checkpoints first..first + chunks of the sequence, below the checkpoints of
    // the first n_seqs triples ≤ those of the upload (checked), times dk·dv within saved (checked).
    unsafe { b.launch(by_columns(op, (n_seqs, heads), dims.dv)) }.map(drop)
}

/// Backward of [`rule_forward`] from `d_o` (heads, N, dv) and the states it saved: every gradient of `grads` written.
/// Value heads of at most [`BACKWARD_WARPS`]·[`BACKWARD_COLS`] = 128 features.
#[allow(clippy::too_many_arguments)]
pub fn rule_backward(
    d: &Device,
    grads: &mut DeltaViewsMut,
    d_o: &CudaView<f32>,
    x: &DeltaViews,
    saved: &CudaView<f32>,
    seqs: &Indices,
    rows: usize,
    heads: usize,
    dims: DeltaDims,
) -> Result<(), DriverError> {
    let op = "delta_rule_backward";
    let [rows_i, dk, dv] = check_heads(op, x.lens(), heads, rows, dims);
    let g = &grads;
    let lens = [g.q.len(), g.k.len(), g.v.len(), g.g.len(), g.beta.len()];
    check_heads(op, lens, heads, rows, dims);
    assert_eq!(d_o.len(), heads * rows * dims.dv, "{op}: d_o must hold {heads} heads of {rows} rows of {dv}");
    let most = BACKWARD_WARPS * BACKWARD_COLS;
    assert!(
        dims.dv <= most,
        "{op}: value heads of {dv} exceed {most} (gated_delta.cu's DELTA_BWD_WARPS × DELTA_BWD_COLS columns of ∂L/∂S \
         per block)"
    );
    let (n_seqs, checkpoints) = sequences(op, seqs, rows);
    let need = heads * checkpoints * dims.dk * dims.dv;
    assert!(saved.len() >= need, "{op}: saved holds {} values, the states need {need}", saved.len());
    if n_seqs == 0 || heads == 0 {
        return Ok(());
    }
    let [n_seqs_i] = ints(op, [n_seqs]);
    // Key heads of ≤ 128 take the kernel of 4 rows per lane: half the registers for ∂L/∂S.
    let name = if dims.dk <= 128 { "delta_rule_backward_dk128" } else { "delta_rule_backward_dk256" };
    let mut b = d.stream.launch_builder(d.function(name));
    b.arg(&mut grads.q).arg(&mut grads.k).arg(&mut grads.v).arg(&mut grads.g).arg(&mut grads.beta).arg(d_o);
    b.arg(&x.q).arg(&x.k).arg(&x.v).arg(&x.g).arg(&x.beta).arg(saved).arg(&seqs.view).arg(&n_seqs_i).arg(&rows_i);
    b.arg(&dk).arg(&dv);
    let warps = BACKWARD_WARPS.min(dims.dv);
    assert!(heads <= 65_535, "{op}: {heads} heads exceed a grid");
    let cfg = LaunchConfig {
        grid_dim: (n_seqs_i as u32, heads as u32, 1),
        block_dim: (32 * warps as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: block (sequence, h) reads what rule_forward's blocks of the sequence read, d_o's rows there, and
    // saved at head h's checkpoints of the sequence (inside saved: checked as in rule_forward); it writes the
    // sequence's rows start..end ≤ N of head h of every gradient (each heads·N rows: checked). warps·BACKWARD_COLS
    // ≥ dv (checked) columns, dk ≤ MAX_KEY_DIM.
    unsafe { b.launch(cfg) }.map(drop)
}

/// Decoding rows through the recurrence, in order: row i from the state of slot slots[i] in `state` (slots, heads,
/// dk·dv), zero at position 0, which it advances; o (heads, N, dv). Neither allocates nor copies: a CUDA graph may
/// hold it.
#[allow(clippy::too_many_arguments)]
pub fn rule_cached(
    d: &Device,
    o: &mut CudaViewMut<f32>,
    x: &DeltaViews,
    state: &mut CudaViewMut<f32>,
    slots: &Indices,
    positions: &Indices,
    heads: usize,
    dims: DeltaDims,
) -> Result<(), DriverError> {
    let (op, rows) = ("delta_rule_cached", slots.len());
    let [rows_i, dk, dv] = check_heads(op, x.lens(), heads, rows, dims);
    assert_eq!(o.len(), heads * rows * dims.dv, "{op}: o must hold {heads} heads of {rows} rows of {dv}");
    assert_eq!(positions.len(), rows, "{op}: {rows} slots but {} positions", positions.len());
    if rows == 0 || heads == 0 {
        return Ok(());
    }
    slots.check_below(state.len() / (heads * dims.dk * dims.dv), op);
    let [heads_i] = ints(op, [heads]);
    let mut b = d.stream.launch_builder(d.function("delta_rule_cached"));
    b.arg(o).arg(state).arg(&x.q).arg(&x.k).arg(&x.v).arg(&x.g).arg(&x.beta).arg(&slots.view).arg(&positions.view);
    b.arg(&rows_i).arg(&heads_i).arg(&dk).arg(&dv);
    // SAFETY: block (h, group) reads each row's slot and position (N of each), the row's head h of q, k, v, g, β and
    // writes it in o (heads·N rows: checked), and reads and writes column j of head h in the row's slot of state
    // (slots below those state holds: checked).
    unsafe { b.launch(by_columns(op, (heads, 1), dims.dv)) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gated_delta::CHUNK;

    /// The limits here are gated_delta.cu's: a drift would let a kernel read past its registers or shared memory.
    #[test]
    fn shapes_past_the_kernels_are_refused_with_the_way_out() {
        let s = DeltaNetShape { k_heads: 16, v_heads: 32, k_head_dim: 128, v_head_dim: 128, conv_kernel: 4 };
        assert_eq!(check_shape(&s), Ok(()), "Qwen3.5's heads");
        let wide = check_shape(&DeltaNetShape { v_head_dim: 192, ..s }).unwrap_err();
        assert!(wide.contains("192") && wide.contains("leave out --device"), "{wide}");
        assert!(check_shape(&DeltaNetShape { k_head_dim: 512, ..s }).is_err());
    }

    #[test]
    fn limits_follow_the_kernels() {
        let src = include_str!("../cu/gated_delta.cu");
        let define = |name: &str| -> usize {
            let at = src.find(&format!("#define {name} ")).unwrap_or_else(|| panic!("{name} in gated_delta.cu"));
            src[at + name.len() + 9..].split_whitespace().next().unwrap().parse().unwrap()
        };
        assert_eq!(define("DELTA_MAX_DK"), MAX_KEY_DIM);
        assert_eq!(define("DELTA_CHUNK"), CHUNK);
        assert_eq!((define("DELTA_BWD_WARPS"), define("DELTA_BWD_COLS")), (BACKWARD_WARPS, BACKWARD_COLS));
    }
}
