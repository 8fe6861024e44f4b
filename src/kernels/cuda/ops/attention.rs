//! Causal GQA attention on the GPU, as `kernels::attention`'s forward and backward: the same `QkvLayout` (columns
//! of q, k, v in the projection rows, heads, the model's scale, the sliding window) and the same packed batch
//! (`seq_start[i]`: the first row of row i's sequence, on the device). Two sets of kernels: attention.cu's, f32
//! throughout (the reference bits), and attention_mma.cu's, bf16 operands on the tensor cores, which
//! [`Precision::Bf16`] asks for and [`tensor_cores`] grants.
use super::indices::Indices;
use crate::kernels::attention::QkvLayout;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DevicePtrMut, DriverError, LaunchConfig, PushKernelArg};

/// Threads per block of attention.cu's kernels: ATT_WARPS warps.
const THREADS: u32 = 4 * 32;
/// attention.cu's ATT_ROWS: rows per block (query rows of the forward and of dq, key rows of dk and dv).
const BLOCK_ROWS: usize = 8;
/// The head sizes attention_mma.cu's kernels come in (their names end in the size).
const MMA_HEAD_DIMS: [usize; 3] = [64, 128, 256];

/// How a kernel's blocks cover the rows: `rows` per block (16 per warp of an mma kernel, `rows / 16` warps),
/// `threads` per block, and the slices of the output features (grid z).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Blocks {
    rows: usize,
    threads: u32,
    slices: u32,
}

/// attention.cu's blocks: ATT_ROWS rows, ATT_WARPS warps, every feature.
const F32_BLOCKS: Blocks = Blocks { rows: BLOCK_ROWS, threads: THREADS, slices: 1 };

/// attention_mma.cu's `Tiling<HD>` for head size `hd` (one of [`MMA_HEAD_DIMS`]): the blocks of the forward, of
/// dq, and of dk and dv. Heads of 256 split their output features into two slices of 128 and take fewer warps per
/// dq and dk/dv block (their fragments and tiles would not fit otherwise).
fn mma_blocks(hd: usize) -> [Blocks; 3] {
    let warps = |w: u32, slices: u32| Blocks { rows: 16 * w as usize, threads: 32 * w, slices };
    match hd {
        256 => [warps(4, 2), warps(2, 2), warps(1, 2)],
        _ => [warps(4, 1); 3],
    }
}

/// How attention's products are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 operands and sums (attention.cu): the CPU path's bits up to summation order.
    F32,
    /// q, k, v, dO and the softmax's P and dS rounded to bf16, products on the tensor cores summed in f32
    /// (attention_mma.cu), where [`tensor_cores`] allows; f32 elsewhere.
    Bf16,
}

/// The head size of the attention_mma.cu kernels that `precision` runs on this GPU for heads of `head_dim`
/// features: the smallest of [`MMA_HEAD_DIMS`] that holds it, on compute capability 8.0 or later (bf16 `mma.sync`);
/// None for f32 and older GPUs (attention.cu's kernels).
pub fn tensor_cores(d: &Device, head_dim: usize, precision: Precision) -> Option<usize> {
    let capable = d.gpu.compute_capability.0 >= 8;
    (precision == Precision::Bf16 && capable).then(|| MMA_HEAD_DIMS.into_iter().find(|&m| head_dim <= m)).flatten()
}
/// attention.cu's ATT_MAX_HEAD_DIM and kv_cache.cu's KV_MAX_HEAD_DIM.
const MAX_HEAD_DIM: usize = 256;

/// What the attention kernels (attention.cu, kv_cache.cu) trust of a layout's heads: query heads sharing the kv
/// heads evenly, within a grid's 65 535, each of 1..=MAX_HEAD_DIM features (`limit` names the kernel's constant).
pub(super) fn check_heads(op: &str, l: &QkvLayout, limit: &str) {
    assert!(
        l.n_kv_heads > 0 && l.n_heads.is_multiple_of(l.n_kv_heads) && l.n_heads <= 65_535,
        "{op}: {} query heads do not share {} kv heads evenly (or exceed a grid's 65 535)",
        l.n_heads,
        l.n_kv_heads
    );
    assert!(
        (1..=MAX_HEAD_DIM).contains(&l.head_dim),
        "{op}: head_dim {} outside 1..={MAX_HEAD_DIM} (raise {limit} and MAX_HEAD_DIM in ops/attention.rs)",
        l.head_dim
    );
}

/// A layout's values as the kernels take them (ints), once its shapes are checked against a batch.
struct Args {
    rows: usize,
    row_len: i32,
    q_col: i32,
    k_col: i32,
    v_col: i32,
    n_heads: i32,
    n_kv_heads: i32,
    head_dim: i32,
    /// The window clamped to the batch (a window past it is full causal attention), so that it fits an int.
    window: i32,
}

impl Args {
    /// One block per `b.rows` rows of each of `heads` heads and each slice of the features.
    fn grid(&self, b: Blocks, heads: i32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.rows.div_ceil(b.rows) as u32, heads as u32, b.slices),
            block_dim: (b.threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// Checks what every launch trusts — head counts, head size, q/k/v columns inside the rows, buffer lengths, and
/// each row's sequence starting at or before it (what seq_start's upload found) — and returns the
/// kernels' arguments; None for an empty batch (no launch).
fn checked(op: &str, l: &QkvLayout, qkv: usize, seq_start: &Indices) -> Result<Option<Args>, DriverError> {
    let (rows, hd) = (seq_start.len(), l.head_dim);
    let (aw, kw) = (l.n_heads * hd, l.n_kv_heads * hd);
    check_heads(op, l, "ATT_MAX_HEAD_DIM in attention.cu");
    assert!(
        l.q_col + aw <= l.row_len && l.k_col + kw <= l.row_len && l.v_col + kw <= l.row_len,
        "{op}: q/k/v columns outside rows of {}",
        l.row_len
    );
    assert!(
        qkv == rows * l.row_len && rows <= i32::MAX as usize,
        "{op}: qkv holds {qkv} values, not {rows} rows of {}",
        l.row_len
    );
    if rows == 0 {
        return Ok(None);
    }
    assert!(seq_start.facts.at_or_before, "{op}: a seq_start lies after its row: not a packed batch");
    let [row_len, q_col, k_col, v_col, n_heads, n_kv_heads, head_dim, window] =
        [l.row_len, l.q_col, l.k_col, l.v_col, l.n_heads, l.n_kv_heads, hd, l.window.min(rows)].map(|v| v as i32);
    Ok(Some(Args { rows, row_len, q_col, k_col, v_col, n_heads, n_kv_heads, head_dim, window }))
}

/// out (N, n_heads·head_dim) = softmax(q·kᵀ·scale, causal, within the window) · v per head; qkv (N, row_len);
/// seq_start (N). `stats` (N·n_heads·3), for a pass whose backward follows: each (row, head)'s softmax max and
/// sum, the first two of its three values, which [`attention_backward`] reads.
pub fn attention_forward(
    d: &Device,
    out: &mut CudaViewMut<f32>,
    stats: Option<&mut CudaViewMut<f32>>,
    qkv: &CudaView<f32>,
    l: QkvLayout,
    seq_start: &Indices,
    precision: Precision,
) -> Result<(), DriverError> {
    let Some(a) = checked("attention_forward", &l, qkv.len(), seq_start)? else { return Ok(()) };
    assert_eq!(out.len(), a.rows * l.n_heads * l.head_dim, "attention_forward: out shape");
    if let Some(st) = &stats {
        assert_eq!(st.len(), a.rows * l.n_heads * 3, "attention_forward: stats must hold N·n_heads·3 values");
    }
    let mma = tensor_cores(d, l.head_dim, precision);
    let name = match mma {
        None => "attention_forward",
        Some(64) => "attention_forward_mma64",
        Some(128) => "attention_forward_mma128",
        Some(_) => "attention_forward_mma256",
    };
    let rows = a.rows as i32;
    // stats' address (its guard, cudarc's stream-order record, lives until the launch is queued), or null: the
    // kernels keep no statistics.
    let (stats, _guard) = match stats {
        Some(st) => {
            let (ptr, guard) = st.device_ptr_mut(&d.stream);
            (ptr, Some(guard))
        }
        None => (0, None),
    };
    let mut b = d.stream.launch_builder(d.function(name));
    b.arg(out).arg(&stats).arg(qkv).arg(&seq_start.view).arg(&rows).arg(&a.row_len).arg(&a.q_col).arg(&a.k_col);
    b.arg(&a.v_col).arg(&a.n_heads).arg(&a.n_kv_heads).arg(&a.head_dim).arg(&l.scale).arg(&a.window);
    let grid = a.grid(mma.map_or(F32_BLOCKS, |m| mma_blocks(m)[0]), a.n_heads);
    // SAFETY: block (b, h, z) reads its rows (< N) of q of head h and, of kv head h / group, k and v of rows from
    // its first row's first key (seq_start ≤ row, checked) to its last row, all inside qkv (columns checked), and
    // writes its rows' head h of out (length checked), features of slice z below head_dim, and (slice 0, when
    // stats is not null) stats[(i·n_heads + h)·3..][..2] of its rows (length checked). An mma kernel's head
    // size holds head_dim (tensor_cores), and its grid has that size's slices (mma_blocks).
    unsafe { b.launch(grid) }.map(drop)
}

/// Backward of [`attention_forward`]: dqkv (N, row_len) gets dq, dk, dv **written** (=) at the q, k, v columns,
/// every other column left as it is; datt (N, n_heads·head_dim) is ∂L/∂out, att the forward's out; stats
/// (N·n_heads·3) the forward's (each (row, head)'s softmax max and sum), to which the first launch adds dO·O as the
/// third value, for the second.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    d: &Device,
    dqkv: &mut CudaViewMut<f32>,
    stats: &mut CudaViewMut<f32>,
    datt: &CudaView<f32>,
    qkv: &CudaView<f32>,
    att: &CudaView<f32>,
    l: QkvLayout,
    seq_start: &Indices,
    precision: Precision,
) -> Result<(), DriverError> {
    let Some(a) = checked("attention_backward", &l, qkv.len(), seq_start)? else { return Ok(()) };
    let (aw, kw) = (l.n_heads * l.head_dim, l.n_kv_heads * l.head_dim);
    assert!(
        dqkv.len() == qkv.len() && datt.len() == a.rows * aw && att.len() == a.rows * aw,
        "attention_backward: dqkv, datt, att shapes ({} rows)",
        a.rows
    );
    assert_eq!(stats.len(), a.rows * l.n_heads * 3, "attention_backward: stats must hold N·n_heads·3 values");
    // The two launches write q columns, then k and v columns, of dqkv from different blocks: they must not overlap.
    let ranges = [(l.q_col, l.q_col + aw), (l.k_col, l.k_col + kw), (l.v_col, l.v_col + kw)];
    for (x, &(x0, x1)) in ranges.iter().enumerate() {
        for &(y0, y1) in &ranges[x + 1..] {
            assert!(x1 <= y0 || y1 <= x0, "attention_backward: q, k and v columns overlap");
        }
    }
    let mma = tensor_cores(d, l.head_dim, precision);
    let [_, dq_blocks, dkv_blocks] = mma.map_or([F32_BLOCKS; 3], mma_blocks);
    let rows = a.rows as i32;
    let name = match mma {
        None => "attention_backward_dq",
        Some(64) => "attention_backward_dq_mma64",
        Some(128) => "attention_backward_dq_mma128",
        Some(_) => "attention_backward_dq_mma256",
    };
    let mut b = d.stream.launch_builder(d.function(name));
    b.arg(&mut *dqkv).arg(&mut *stats).arg(datt).arg(qkv).arg(att).arg(&seq_start.view).arg(&rows).arg(&a.row_len);
    b.arg(&a.q_col).arg(&a.k_col).arg(&a.v_col).arg(&a.n_heads).arg(&a.n_kv_heads).arg(&a.head_dim).arg(&l.scale);
    b.arg(&a.window);
    // SAFETY: block (b, h, z) reads what the forward's block (b, h, z) reads plus its rows' head h of datt and att
    // and stats[(i·n_heads + h)·3..][..2] (lengths checked), writes those rows' dq columns of head h (slice z's) in
    // dqkv and, in slice 0, stats[(i·n_heads + h)·3 + 2].
    unsafe { b.launch(a.grid(dq_blocks, a.n_heads)) }?;
    let stats = stats.as_view();
    let name = match mma {
        None => "attention_backward_dkv",
        Some(64) => "attention_backward_dkv_mma64",
        Some(128) => "attention_backward_dkv_mma128",
        Some(_) => "attention_backward_dkv_mma256",
    };
    let mut b = d.stream.launch_builder(d.function(name));
    b.arg(dqkv).arg(&stats).arg(datt).arg(qkv).arg(&seq_start.view).arg(&rows).arg(&a.row_len).arg(&a.q_col);
    b.arg(&a.k_col).arg(&a.v_col).arg(&a.n_heads).arg(&a.n_kv_heads).arg(&a.head_dim).arg(&l.scale).arg(&a.window);
    // SAFETY: block (b, g, z) reads its key rows (< N) and the rows after them up to the last key's
    // sequence end (seq_start checked to be packed at or before each row) or row N — q, datt and the stats of the
    // group's heads — and writes its key rows' dk and dv columns of kv head g (slice z's), disjoint from dq
    // (checked above).
    unsafe { b.launch(a.grid(dkv_blocks, a.n_kv_heads)) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `mma_blocks` mirrors attention_mma.cu's `Tiling<HD>`: a drift would launch blocks of the wrong warps or
    /// slices (rows left out, or read past).
    #[test]
    fn blocks_follow_the_kernels_tiling() {
        let src = include_str!("../cu/attention_mma.cu");
        for hd in MMA_HEAD_DIMS {
            let at = src.find(&format!("struct Tiling<{hd}> {{")).expect("a Tiling per head size");
            let body = &src[at..at + src[at..].find('}').unwrap()];
            let value = |name: &str| -> usize {
                let rest = &body[body.find(&format!(" {name} = ")).unwrap_or_else(|| panic!("{name} in {body}"))..];
                rest[name.len() + 4..].split([',', ';']).next().unwrap().trim().parse().unwrap()
            };
            let slices = (hd / value("OD")) as u32;
            let blocks = |w: usize| Blocks { rows: 16 * w, threads: 32 * w as u32, slices };
            let expected = [blocks(value("W")), blocks(value("DQ_W")), blocks(value("DKV_W"))];
            assert_eq!(mma_blocks(hd), expected, "head size {hd}: forward, dq, dk and dv");
        }
    }
}
