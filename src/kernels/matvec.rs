//! out (+)= x·Wᵀ — the product of every linear layer and of the LM head — with W (out, in) row-major as
//! nn.Linear stores it. Up to [`MAX_ROWS`] rows of x (decode steps, beams, small batches) it runs a
//! matrix-vector kernel that streams each weight row once for all rows (the product is memory-bound there, and
//! a GEMM's packing would cost more than it saves); more rows go to the GEMM.
use super::mat::{Mat, MatMut};
use super::matmul::matmul;
use super::simd::dots;
use rayon::prelude::*;

/// Up to this many rows of x, the matrix-vector kernel; above, the GEMM.
pub const MAX_ROWS: usize = 16;
/// Output features per parallel task: the task's weight rows stay in cache from one row of x to the next.
const CHUNK: usize = 64;

/// out (n, out_dim) = x (n, in)·Wᵀ, or out += x·Wᵀ when `accumulate`. x is dense row-major; `out` may be a
/// column block of a wider buffer (its row stride).
pub fn matmul_wt(out: MatMut, x: Mat, w: &[f32], accumulate: bool) {
    let (n, in_dim, out_dim) = (x.rows, x.cols, out.cols);
    let w = Mat::new(&w[..out_dim * in_dim], out_dim, in_dim);
    if n > MAX_ROWS || !is_dense(x) {
        matmul(out, x, w.t(), accumulate);
        return;
    }
    matvec_blocks(out, x, accumulate, |o0, o1, f| f(&w.data[o0 * in_dim..o1 * in_dim]));
}

/// Whether x is dense row-major (what the matrix-vector kernel reads).
pub fn is_dense(x: Mat) -> bool {
    x.col_stride == 1 && x.row_stride == x.cols
}

/// The matrix-vector kernel of [`matmul_wt`] for dense x of at most [`MAX_ROWS`] rows, with the weight rows of
/// each block of [`CHUNK`] output features supplied by `rows(o0, o1, f)`, which calls `f` with W[o0..o1]
/// (a slice of a dense W, or a block dequantized on the fly): blocks run in parallel, and each element is the
/// same dot product whichever supplies the rows.
pub fn matvec_blocks(
    out: MatMut,
    x: Mat,
    accumulate: bool,
    rows: impl Fn(usize, usize, &mut dyn FnMut(&[f32])) + Sync,
) {
    let (n, in_dim) = (x.rows, x.cols);
    assert!(out.rows == n && x.data.len() >= n * in_dim, "matmul_wt: shape mismatch");
    column_blocks(out, accumulate, |o0, o1, block| {
        rows(o0, o1, &mut |w| {
            for r in 0..n {
                dots(&mut block[r * (o1 - o0)..][..o1 - o0], &x.data[r * in_dim..][..in_dim], &w[..(o1 - o0) * in_dim]);
            }
        })
    });
}

/// Fills `out` (n, out_dim) (or adds to it when `accumulate`) by blocks of [`CHUNK`] columns in parallel:
/// `block(o0, o1, b)` writes columns o0..o1 of every row into b (n, o1 − o0), row-major. n ≤ [`MAX_ROWS`].
pub fn column_blocks(out: MatMut, accumulate: bool, block: impl Fn(usize, usize, &mut [f32]) + Sync) {
    let (n, out_dim) = (out.rows, out.cols);
    assert!(n <= MAX_ROWS, "column_blocks: {n} rows, more than {MAX_ROWS}");
    if n > 0 && out_dim > 0 {
        assert!((n - 1) * out.row_stride + out_dim <= out.data.len(), "matmul_wt: dst out of bounds");
    }
    let row_stride = out.row_stride;
    let dst = SharedOut::new(out.data);
    (0..out_dim.div_ceil(CHUNK)).into_par_iter().for_each(|b| {
        let (o0, o1) = (b * CHUNK, ((b + 1) * CHUNK).min(out_dim));
        let mut buf = [0.0f32; CHUNK * MAX_ROWS];
        let buf = &mut buf[..n * (o1 - o0)];
        block(o0, o1, buf);
        for (r, vals) in buf.chunks_exact(o1 - o0).enumerate() {
            // SAFETY: row r, columns o0..o1 of `out` lie inside its slice (asserted above), and no other task
            // writes these columns: tasks own disjoint column blocks.
            let o = unsafe { dst.slice(r * row_stride + o0, o1 - o0) };
            if accumulate {
                o.iter_mut().zip(vals).for_each(|(o, v)| *o += v);
            } else {
                o.copy_from_slice(vals);
            }
        }
    });
}

/// The output pointer, shared by tasks that write disjoint column blocks.
#[derive(Clone, Copy)]
pub(super) struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (see `matmul_wt`); the pointer outlives the parallel loop.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(super) fn new(out: &mut [f32]) -> Self {
        SharedOut(out.as_mut_ptr())
    }

    /// `len` elements from `offset`.
    ///
    /// # Safety
    /// They lie inside the slice the pointer came from, and no other task touches them meanwhile.
    pub(super) unsafe fn slice<'a>(self, offset: usize, len: usize) -> &'a mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], n: usize, k: usize, m: usize) -> Vec<f64> {
        (0..n * m).map(|i| (0..k).map(|p| x[i / m * k + p] as f64 * w[i % m * k + p] as f64).sum()).collect()
    }

    /// Both sides of the dispatch (few rows: the matrix-vector kernel; many: the GEMM) give x·Wᵀ, into a column
    /// block of a wider buffer, overwriting or accumulating.
    #[test]
    fn few_and_many_rows_match_the_reference() {
        let (k, m) = (37, 150); // not multiples of the SIMD width or CHUNK
        for n in [1, 3, MAX_ROWS, MAX_ROWS + 1, 40] {
            let x: Vec<f32> = (0..n * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let w: Vec<f32> = (0..m * k).map(|i| ((i * 11 % 17) as f32 - 8.0) / 7.0).collect();
            let want = reference(&x, &w, n, k, m);
            for accumulate in [false, true] {
                let stride = m + 5;
                let mut buf = vec![1.0f32; n * stride];
                let out = MatMut { data: &mut buf[2..], rows: n, cols: m, row_stride: stride };
                matmul_wt(out, Mat::new(&x, n, k), &w, accumulate);
                for r in 0..n {
                    assert_eq!(&buf[r * stride..][..2], &[1.0, 1.0], "n={n}: columns before the block");
                    for c in 0..m {
                        let got = buf[r * stride + 2 + c] as f64;
                        let expect = want[r * m + c] + if accumulate { 1.0 } else { 0.0 };
                        assert!(
                            (got - expect).abs() < 1e-4 * (1.0 + expect.abs()),
                            "n={n} ({r},{c}): {got} vs {expect}"
                        );
                    }
                    assert!(buf[r * stride + 2 + m..(r + 1) * stride].iter().all(|&v| v == 1.0));
                }
            }
        }
    }
}
