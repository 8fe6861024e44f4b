//! Whole rows moved by an index on the GPU (rows.cu), as `kernels::backend::host`'s embedding, gather_rows,
//! scatter_add_rows and embedding_backward: the same bits. The kernels trust the indices: their upload's facts are
//! checked first (the embedding's backward checks the ids it groups on the host).
use super::indices::Indices;
use super::per_row;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DriverError, PushKernelArg};

/// out[k] = src[idx[k]] · scale for the k < idx.len() rows of `dim`: an embedding lookup (src the (vocab, dim)
/// table, scale Gemma's √dim or 1) or a plain gather (scale 1). out: (idx.len(), dim).
pub fn gather_rows(
    d: &Device,
    out: &mut CudaViewMut<f32>,
    src: &CudaView<f32>,
    idx: &Indices,
    dim: usize,
    scale: f32,
) -> Result<(), DriverError> {
    let n = idx.len();
    assert!(dim > 0 && dim <= i32::MAX as usize && out.len() == n * dim, "gather_rows: out shape ({n} rows of {dim})");
    if n == 0 {
        return Ok(());
    }
    idx.check_below(src.len() / dim, "gather_rows");
    let dim_i = dim as i32;
    let mut b = d.stream.launch_builder(d.function("gather_rows"));
    b.arg(out).arg(src).arg(&idx.view).arg(&dim_i).arg(&scale);
    // SAFETY: block k reads idx[k] (k < n) and row idx[k] of src (checked to lie in it), writes row k of out
    // (n rows of dim, checked).
    unsafe { b.launch(per_row(n)) }.map(drop)
}

/// dst[idx[k]] += src[k] for the k < idx.len() rows of `dim`, the indices distinct. src: (idx.len(), dim).
pub fn scatter_add_rows(
    d: &Device,
    dst: &mut CudaViewMut<f32>,
    src: &CudaView<f32>,
    idx: &Indices,
    dim: usize,
) -> Result<(), DriverError> {
    let n = idx.len();
    assert!(
        dim > 0 && dim <= i32::MAX as usize && src.len() == n * dim,
        "scatter_add_rows: src shape ({n} rows of {dim})"
    );
    if n == 0 {
        return Ok(());
    }
    idx.check_below(dst.len() / dim, "scatter_add_rows");
    assert!(idx.facts.distinct, "scatter_add_rows: an index appears twice (the rows it adds to must be distinct)");
    let dim_i = dim as i32;
    let mut b = d.stream.launch_builder(d.function("scatter_add_rows"));
    b.arg(dst).arg(src).arg(&idx.view).arg(&dim_i);
    // SAFETY: block k reads row k of src (n rows, checked) and adds it to row idx[k] of dst, checked to lie in it;
    // the indices are distinct (checked), so no two blocks write one row.
    unsafe { b.launch(per_row(n)) }.map(drop)
}

/// The scratch of [`embedding_backward`], kept from call to call (grown, never shrunk, so that a warm call
/// allocates nothing): a batch's rows grouped by the table row they add to, on the host and copied to the device.
#[derive(Default)]
pub struct RowGroups {
    /// id << 32 | row for each row, sorted: by id, then by row.
    keyed: Vec<u64>,
    /// rows (n) | ids (m, distinct, increasing) | offsets (m + 1): group g adds the rows
    /// rows[offsets[g]..offsets[g + 1]], increasing, to table row ids[g].
    host: Vec<u32>,
    /// `host`'s copy (3·n + 1 values for the largest n so far: n + 2·m + 1 with m ≤ n distinct ids).
    dev: Option<CudaSlice<u32>>,
}

impl RowGroups {
    /// Groups the rows i < ids.len() by ids[i] into `host`; returns the number of groups (distinct ids).
    fn group(&mut self, ids: &[u32]) -> usize {
        let n = ids.len();
        assert!(n < u32::MAX as usize, "embedding_backward: {n} rows exceed u32 row numbers");
        self.keyed.clear();
        self.keyed.extend(ids.iter().enumerate().map(|(i, &id)| (id as u64) << 32 | i as u64));
        // The keys are distinct (each holds its row), so the unstable sort orders them as a stable one would.
        self.keyed.sort_unstable();
        let keyed = &self.keyed;
        let starts = |k: &usize| *k == 0 || keyed[*k] >> 32 != keyed[*k - 1] >> 32;
        let h = &mut self.host;
        h.clear();
        h.extend(keyed.iter().map(|&k| k as u32));
        h.extend((0..n).filter(starts).map(|k| (keyed[k] >> 32) as u32));
        let m = h.len() - n;
        h.extend((0..n).filter(starts).map(|k| k as u32));
        h.push(n as u32);
        m
    }
}

/// dtable[ids[i]] += dout[i] for the rows i < ids.len() of `dim`, each table row's additions in increasing i, as
/// `kernels::embedding::embedding_backward` (the same additions in the same order: its bits) with no atomics. The
/// rows are grouped by id on the host from `ids` (the batch's ids in host memory) into `groups`, whose device copy
/// the kernel reads: one block per distinct id. dout: (ids.len(), dim); dtable: rows of `dim`, every id one of them
/// (checked here: the kernel trusts them). The copy is from pageable memory: it may wait for the stream.
pub fn embedding_backward(
    d: &Device,
    dtable: &mut CudaViewMut<f32>,
    dout: &CudaView<f32>,
    ids: &[u32],
    dim: usize,
    groups: &mut RowGroups,
) -> Result<(), DriverError> {
    let n = ids.len();
    assert!(
        dim > 0 && dim <= i32::MAX as usize && dout.len() == n * dim,
        "embedding_backward: dout shape ({n} rows of {dim})"
    );
    if n == 0 {
        return Ok(());
    }
    let table_rows = dtable.len() / dim;
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= table_rows) {
        panic!("embedding_backward: id {id} past the table's {table_rows} rows");
    }
    let m = groups.group(ids);
    let len = groups.host.len();
    debug_assert_eq!(len, n + 2 * m + 1);
    if groups.dev.as_ref().is_none_or(|b| b.len() < len) {
        groups.dev = Some(d.stream.alloc_zeros::<u32>(3 * n + 1)?);
    }
    let dev = groups.dev.as_mut().expect("allocated above");
    d.stream.memcpy_htod(&groups.host[..], &mut dev.slice_mut(..len))?;
    let (rows, group_ids, offsets) = (dev.slice(..n), dev.slice(n..n + m), dev.slice(n + m..len));
    let dim_i = dim as i32;
    let mut b = d.stream.launch_builder(d.function("embedding_backward"));
    b.arg(dtable).arg(dout).arg(&rows).arg(&group_ids).arg(&offsets).arg(&dim_i);
    // SAFETY: block g < m reads offsets[g] and offsets[g + 1] (m + 1 values), made on the host with
    // offsets[0] = 0 ≤ … ≤ offsets[m] = n, so it reads rows[k] for k < n (n values), each a row number below n: row
    // rows[k] of dout ((n, dim), checked). It writes table row ids[g] (m values), an id checked to lie in dtable;
    // the group ids are distinct, so no two blocks write one row. dtable and dout are distinct buffers (a `&mut`
    // and a `&` borrow); the grouping's copy precedes the launch on the stream, and a later call's copy follows it.
    unsafe { b.launch(per_row(m)) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::embedding::embedding_backward as cpu_embedding_backward;

    /// The kernel's additions, as it makes them from a grouping, on the CPU.
    fn by_groups(dtable: &mut [f32], dout: &[f32], ids: &[u32], dim: usize) {
        let mut g = RowGroups::default();
        let (n, m) = (ids.len(), g.group(ids));
        assert_eq!(g.host.len(), n + 2 * m + 1);
        let (rows, rest) = g.host.split_at(n);
        let (group_ids, offsets) = rest.split_at(m);
        assert!(group_ids.windows(2).all(|w| w[0] < w[1]), "distinct ids");
        for (k, &id) in group_ids.iter().enumerate() {
            let members = &rows[offsets[k] as usize..offsets[k + 1] as usize];
            assert!(members.windows(2).all(|w| w[0] < w[1]), "rows in increasing order");
            assert!(members.iter().all(|&r| ids[r as usize] == id), "rows of the group's id");
            for j in 0..dim {
                let mut acc = dtable[id as usize * dim + j];
                for &r in members {
                    acc += dout[r as usize * dim + j];
                }
                dtable[id as usize * dim + j] = acc;
            }
        }
        assert_eq!(offsets[m] as usize, n, "every row in one group");
    }

    #[test]
    fn grouped_rows_add_in_the_cpu_order() {
        let dim = 3;
        let ids = [5u32, 1, 5, 0, 9, 1, 5, 5, 2, 0];
        // Magnitudes far apart, so that another order of the additions would round differently.
        let dout: Vec<f32> =
            (0..ids.len() * dim).map(|i| (1.0 + i as f32 * 0.37) * 10f32.powi(i as i32 % 9 - 4)).collect();
        let table: Vec<f32> = (0..10 * dim).map(|i| (i as f32 * 0.11).sin()).collect();
        let (mut cpu, mut grouped) = (table.clone(), table);
        cpu_embedding_backward(Some(&mut cpu), None, &dout, &ids, &[], dim);
        by_groups(&mut grouped, &dout, &ids, dim);
        assert_eq!(
            cpu.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            grouped.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let mut g = RowGroups::default();
        assert_eq!(g.group(&ids), 5);
        assert_eq!(g.host, [3, 9, 1, 5, 8, 0, 2, 6, 7, 4, /* ids */ 0, 1, 2, 5, 9, /* offsets */ 0, 2, 4, 5, 9, 10]);
        assert_eq!(g.group(&[]), 0);
        assert_eq!(g.host, [0], "no rows: one offset");
    }
}
