//! Decoding over a KV cache on the GPU (kv_cache.cu), as `kernels::backend::host`'s kv_store (rows' keys and
//! values into the cache, as `network::kv_cache::KvCache::write`) and `kernels::kv_attention::cached_attention`:
//! the same `QkvLayout`, the caches laid out `[slot][kv_head][position][head_dim]` with `capacity` positions per
//! slot. The kernels trust the slots and positions: their upload's facts are checked against the caches first.
use super::attention::check_heads;
use super::indices::Indices;
use super::per_row;
use crate::kernels::attention::QkvLayout;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, LaunchConfig, PushKernelArg};

/// Threads per block of cached_attention: kv_cache.cu's KV_WARPS warps.
const THREADS: u32 = 4 * 32;

/// Checks what both kernels trust of the rows and the caches — `slots` and `positions` as many (N ≤ what each
/// upload held), qkv N rows of `row_len`, the heads at each of `cols` (column, heads) inside the rows, every
/// position below `capacity` and every slot inside both caches (of `cache_lens` values) — and returns N. Nothing
/// about the indices is checked for an empty batch (no launch).
#[allow(clippy::too_many_arguments)]
fn checked(
    op: &str,
    l: &QkvLayout,
    cols: &[(usize, usize)],
    qkv: usize,
    slots: &Indices,
    positions: &Indices,
    capacity: usize,
    cache_lens: [usize; 2],
) -> usize {
    let rows = slots.len();
    assert_eq!(positions.len(), rows, "{op}: {rows} slots but {} positions", positions.len());
    assert!(l.n_kv_heads > 0 && l.head_dim > 0 && capacity > 0, "{op}: no kv heads, empty heads or no capacity");
    for &(col, heads) in cols {
        assert!(
            col + heads * l.head_dim <= l.row_len,
            "{op}: columns {col}.. of {heads} heads outside rows of {}",
            l.row_len
        );
    }
    assert!(
        qkv == rows * l.row_len && rows <= i32::MAX as usize && l.row_len <= i32::MAX as usize,
        "{op}: qkv holds {qkv} values, not {rows} rows of {}",
        l.row_len
    );
    let per_slot = l.n_kv_heads.checked_mul(capacity).and_then(|v| v.checked_mul(l.head_dim));
    let per_slot = per_slot.filter(|&v| capacity <= i32::MAX as usize && v <= isize::MAX as usize);
    let per_slot = per_slot.unwrap_or_else(|| panic!("{op}: capacity {capacity} too large"));
    if rows == 0 {
        return 0;
    }
    let n_slots = cache_lens[0].min(cache_lens[1]) / per_slot;
    slots.check_below(n_slots, op);
    assert!(
        (positions.facts.max as usize) < capacity,
        "{op}: position {} past the cache's {capacity}",
        positions.facts.max
    );
    rows
}

/// Rows' keys and values into the caches: for i < N and kv head h, k_cache[slots[i], h, positions[i]] = row i's
/// head h at `l.k_col`, v_cache likewise from `l.v_col`. qkv (N, row_len). Exact copies; the (slot, position)
/// pairs are assumed distinct (as a batch's rows are: each a new token of its slot) — two rows at one pair would
/// race, each element ending as one of theirs.
#[allow(clippy::too_many_arguments)]
pub fn kv_store(
    d: &Device,
    k_cache: &mut CudaViewMut<f32>,
    v_cache: &mut CudaViewMut<f32>,
    qkv: &CudaView<f32>,
    l: QkvLayout,
    slots: &Indices,
    positions: &Indices,
    capacity: usize,
) -> Result<(), DriverError> {
    let op = "kv_store";
    let cols = [(l.k_col, l.n_kv_heads), (l.v_col, l.n_kv_heads)];
    let cache_lens = [k_cache.len(), v_cache.len()];
    let rows = checked(op, &l, &cols, qkv.len(), slots, positions, capacity, cache_lens);
    if rows == 0 {
        return Ok(());
    }
    let [row_len, k_col, v_col, n_kv_heads, head_dim, capacity] =
        [l.row_len, l.k_col, l.v_col, l.n_kv_heads, l.head_dim, capacity].map(|v| v as i32);
    let mut b = d.stream.launch_builder(d.function("kv_store"));
    b.arg(k_cache).arg(v_cache).arg(qkv).arg(&slots.view).arg(&positions.view).arg(&row_len).arg(&k_col);
    b.arg(&v_col).arg(&n_kv_heads).arg(&head_dim).arg(&capacity);
    // SAFETY: block i reads slots[i] and positions[i] (i < N, both views of N) and row i's k and v columns of
    // qkv (inside its N rows, checked), and writes head_dim values per kv head at position positions[i] (below
    // capacity, checked) of slot slots[i] (below the slots both caches hold, checked) of k_cache and v_cache.
    unsafe { b.launch(per_row(rows)) }.map(drop)
}

/// out (N, n_heads·head_dim): row i's query heads (at `l.q_col` of qkv (N, row_len)) attend to positions
/// first..=positions[i] of slot slots[i] of the caches, first = max(0, positions[i] + 1 − window), query head h
/// reading kv head h / (n_heads / n_kv_heads): softmax(q·kᵀ·scale) · v. Row i's key and value must already be
/// in the caches ([`kv_store`]).
#[allow(clippy::too_many_arguments)]
pub fn cached_attention(
    d: &Device,
    out: &mut CudaViewMut<f32>,
    qkv: &CudaView<f32>,
    k_cache: &CudaView<f32>,
    v_cache: &CudaView<f32>,
    l: QkvLayout,
    slots: &Indices,
    positions: &Indices,
    capacity: usize,
) -> Result<(), DriverError> {
    let op = "cached_attention";
    check_heads(op, &l, "KV_MAX_HEAD_DIM in kv_cache.cu");
    assert!(l.window > 0, "{op}: a window of 0 positions sees nothing");
    let cols = [(l.q_col, l.n_heads)];
    let cache_lens = [k_cache.len(), v_cache.len()];
    let rows = checked(op, &l, &cols, qkv.len(), slots, positions, capacity, cache_lens);
    assert_eq!(out.len(), rows * l.n_heads * l.head_dim, "{op}: out shape");
    if rows == 0 {
        return Ok(());
    }
    // The window clamped to the capacity (no position sees further back than it), so that it fits an int.
    let [row_len, q_col, n_heads, n_kv_heads, head_dim, capacity, window] =
        [l.row_len, l.q_col, l.n_heads, l.n_kv_heads, l.head_dim, capacity, l.window.min(capacity)].map(|v| v as i32);
    let mut b = d.stream.launch_builder(d.function("cached_attention"));
    b.arg(out).arg(qkv).arg(k_cache).arg(v_cache).arg(&slots.view).arg(&positions.view).arg(&row_len).arg(&q_col);
    b.arg(&n_heads).arg(&n_kv_heads).arg(&head_dim).arg(&capacity).arg(&l.scale).arg(&window);
    let grid =
        LaunchConfig { grid_dim: (rows as u32, l.n_heads as u32, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: block (i, h) reads slots[i] and positions[i] (i < N, both views of N), row i's q of head h (inside
    // qkv, checked), and positions first..=positions[i] (below capacity, checked) of kv head h / group (< n_kv_heads:
    // the heads divide evenly, checked) of slot slots[i] (below the slots both caches hold, checked) in k_cache and
    // v_cache; it writes row i, head h of out (length checked).
    unsafe { b.launch(grid) }.map(drop)
}
