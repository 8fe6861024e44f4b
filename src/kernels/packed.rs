//! A frozen weight matrix W (out, in) kept in its stored form — GGML blocks (Q4_0 … Q6_K, Q8_0), F16 or BF16 —
//! and the two products the network needs from it, computed by dequantizing panels of rows on the fly into a
//! reusable f32 tile that feeds the same kernels as a dense f32 matrix:
//!
//! ```text
//! forward   out (N, out) (+)= x (N, in) · Wᵀ     panels of W rows = column blocks of out
//! backward  dx  (N, in)  (+)= dy (N, out) · W    panels of W rows = depth blocks of the GEMM
//! ```
//!
//! Dequantized values are exactly the values a dense f32 copy would hold, and the panels are cut where the
//! dense kernels cut anyway (output columns are computed independently; the GEMM's depth blocks are
//! `gemm::depth_block(k)` rows), so both products are **bit-identical** to the dense path — a quantized base
//! costs memory only as its file does, never accuracy.
use super::compute::{Compute, compute};
use super::dequant::{GgmlType, dequantize};
use super::gemm::depth_block;
use super::mat::{Mat, MatMut};
use super::matmul::matmul_weights;
use super::matvec::{MAX_ROWS, SharedOut, column_blocks, is_dense, matmul_wt, matvec_blocks};
use super::quant_dot::gemm::{self, Acts, Panel};
use super::quant_dot::{self, Isa, Q8Rows};
use super::weight_bytes::SharedBytes;
use rayon::prelude::*;
use std::cell::RefCell;

/// Floats of one forward panel: as many output features as fit (at least 64), so narrow matrices run in one
/// GEMM call and wide ones in cache-sized panels.
const FORWARD_PANEL_FLOATS: usize = 1 << 20;

/// W (rows = out, cols = in) in `ty`'s bytes, rows laid end to end — its own, or a view of the memory-mapped
/// checkpoint (then the weights cost the file's pages, shared with the page cache, and no copy).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: SharedBytes,
}

impl PackedMatrix {
    /// Wraps `bytes`; fails, saying why, when they are not `rows` rows of `cols` values of `ty`.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, bytes: SharedBytes) -> Result<Self, String> {
        if !cols.is_multiple_of(ty.block_size()) {
            return Err(format!("rows of {cols} values do not divide into {ty} blocks of {}", ty.block_size()));
        }
        let want = (cols / ty.block_size()).checked_mul(ty.type_size()).and_then(|b| b.checked_mul(rows));
        if want != Some(bytes.len()) {
            return Err(format!("{rows} × {cols} {ty} values need {want:?} bytes, not {}", bytes.len()));
        }
        Ok(PackedMatrix { ty, rows, cols, bytes })
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.type_size()
    }

    /// Rows `r0..r0 + out.len() / cols` as f32 into `out` (in parallel over rows when `parallel`).
    pub fn dequantize_rows(&self, r0: usize, out: &mut [f32], parallel: bool) {
        let (cols, rb) = (self.cols, self.row_bytes());
        let one = |(i, row): (usize, &mut [f32])| {
            let src = &self.bytes[(r0 + i) * rb..][..rb];
            dequantize(self.ty, src, row).expect("PackedMatrix::new checked the block layout");
        };
        if parallel {
            out.par_chunks_mut(cols).enumerate().for_each(one);
        } else {
            out.chunks_mut(cols).enumerate().for_each(one);
        }
    }

    /// The first non-finite value as (row, column, value). Only the 16-bit floats that can be non-finite are
    /// read: a block's values are its f16 scales times small integers, finite exactly when the scales are (at most
    /// 65504 · 63 · 31 in magnitude); F16 and BF16 values are checked as stored. The one row that fails is then
    /// dequantized to name the value.
    pub fn first_non_finite(&self) -> Option<(usize, usize, f32)> {
        let (rb, ty) = (self.row_bytes(), self.ty);
        let (halves, non_finite): (&[usize], fn(u16) -> bool) = match ty {
            GgmlType::F16 => (&[0], |h| h & 0x7C00 == 0x7C00),
            GgmlType::BF16 => (&[0], |h| h & 0x7F80 == 0x7F80),
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => (&[0], |h| h & 0x7C00 == 0x7C00),
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => (&[0, 2], |h| h & 0x7C00 == 0x7C00),
            GgmlType::Q6_K => (&[208], |h| h & 0x7C00 == 0x7C00),
            GgmlType::F32 => unreachable!("F32 matrices are never packed"),
        };
        let unit = if ty.block_size() == 1 { 2 } else { ty.type_size() };
        let row_fails = |r: usize| {
            let row = &self.bytes[r * rb..][..rb];
            row.chunks_exact(unit).any(|b| halves.iter().any(|&i| non_finite(u16::from_le_bytes([b[i], b[i + 1]]))))
        };
        (0..self.rows).into_par_iter().with_min_len(64).find_map_first(|r| {
            if !row_fails(r) {
                return None;
            }
            let mut row = vec![0.0; self.cols];
            self.dequantize_rows(r, &mut row, false);
            let c = row.iter().position(|v| !v.is_finite())?;
            Some((r, c, row[c]))
        })
    }

    /// Every value as f32 (rows, cols).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        self.dequantize_rows(0, &mut out, true);
        out
    }

    /// Reorders whole rows: row i of the result is row `order[i]` of self (Llama's Q/K permutation).
    pub fn permute_rows(&self, order: &[usize]) -> Self {
        let rb = self.row_bytes();
        let bytes = order.iter().flat_map(|&r| &self.bytes[r * rb..(r + 1) * rb]).copied().collect();
        PackedMatrix { bytes: SharedBytes::owned(bytes), ..*self }
    }

    /// out (N, rows) = x (N, cols) · Wᵀ, or out += … when `accumulate`; bit-identical to
    /// [`matmul_wt`] on the dequantized matrix.
    pub fn matmul_wt(&self, out: MatMut, x: Mat, accumulate: bool) {
        assert!(x.cols == self.cols && out.cols == self.rows, "PackedMatrix::matmul_wt: shape mismatch");
        if x.rows <= MAX_ROWS && is_dense(x) && compute() == Compute::Int8 && quant_dot::supports(self.ty) {
            self.matvec_int8(out, x, accumulate);
            return;
        }
        if x.rows <= MAX_ROWS && is_dense(x) {
            // Decoding: each block of output features dequantizes its own rows on its own thread.
            let cols = self.cols;
            matvec_blocks(out, x, accumulate, |o0, o1, f| {
                with_tile((o1 - o0) * cols, |w| {
                    self.dequantize_rows(o0, w, false);
                    f(w)
                })
            });
            return;
        }
        if is_dense(x) && compute() == Compute::Int8 && gemm::handles(self.ty) {
            self.gemm_int8(out, x, accumulate);
            return;
        }
        self.gemm_wt(out, x, accumulate);
    }

    /// out (N, rows) (+)= x · Wᵀ for many rows of x under `--compute int8` (prefill): x rounded to 8 bits once,
    /// each panel of [`gemm::PANEL`] weight rows unpacked once for all of them (see [`gemm`]).
    fn gemm_int8(&self, out: MatMut, x: Mat, accumulate: bool) {
        thread_local! {
            static PANEL: RefCell<(Panel, Vec<f32>)> = RefCell::new(Default::default());
            static ACTS: RefCell<Acts> = RefCell::new(Acts::default());
        }
        let (isa, rb, n) = (Isa::best(), self.row_bytes(), x.rows);
        let row_stride = out.row_stride;
        assert!(n == 0 || (n - 1) * row_stride + self.rows <= out.data.len(), "gemm_int8: out of bounds");
        let dst = SharedOut::new(out.data);
        // Taken out of the thread-local while the tasks below read it (one of them may run on this thread).
        let mut acts = ACTS.take();
        acts.quantize(self.ty, &x.data[..n * self.cols], self.cols);
        (0..self.rows.div_ceil(gemm::PANEL)).into_par_iter().for_each(|b| {
            let (o0, o1) = (b * gemm::PANEL, ((b + 1) * gemm::PANEL).min(self.rows));
            PANEL.with_borrow_mut(|(panel, vals)| {
                panel.pack(self.ty, &self.bytes[o0 * rb..o1 * rb], self.cols);
                vals.resize(n * gemm::PANEL, 0.0);
                gemm::panel_rows(isa, panel, &acts, 0..n, vals);
                for (r, v) in vals.chunks_exact(gemm::PANEL).enumerate() {
                    // SAFETY: row r, columns o0..o1 lie inside `out` (asserted above); tasks own disjoint
                    // column blocks.
                    let o = unsafe { dst.slice(r * row_stride + o0, o1 - o0) };
                    if accumulate {
                        o.iter_mut().zip(v).for_each(|(o, v)| *o += v);
                    } else {
                        o.copy_from_slice(&v[..o1 - o0]);
                    }
                }
            });
        });
        ACTS.set(acts);
    }

    /// out (N ≤ [`MAX_ROWS`], rows) (+)= x · Wᵀ with x rounded to 8 bits and integer dot products on the stored
    /// blocks (`--compute int8`, see [`quant_dot`]).
    fn matvec_int8(&self, out: MatMut, x: Mat, accumulate: bool) {
        let (isa, rb, n) = (Isa::best(), self.row_bytes(), x.rows);
        with_q8(|xs| {
            xs.quantize(self.ty, &x.data[..n * self.cols], self.cols);
            column_blocks(out, accumulate, |o0, o1, block| {
                quant_dot::dot_rows(isa, self.ty, &self.bytes[o0 * rb..o1 * rb], xs, 0..n, block);
            });
        });
    }

    /// As [`Self::matmul_wt`], always through the GEMM (whatever the rows of x): bit-identical to
    /// `matmul(out, x, Wᵀ)` on the dequantized matrix.
    pub fn gemm_wt(&self, out: MatMut, x: Mat, accumulate: bool) {
        assert!(x.cols == self.cols && out.cols == self.rows, "PackedMatrix::gemm_wt: shape mismatch");
        let MatMut { data, rows: n, row_stride, .. } = out;
        let panel = (FORWARD_PANEL_FLOATS / self.cols.max(1)).max(64).min(self.rows);
        with_tile(panel * self.cols, |tile| {
            for r0 in (0..self.rows).step_by(panel.max(1)) {
                let r1 = (r0 + panel).min(self.rows);
                let w = &mut tile[..(r1 - r0) * self.cols];
                self.dequantize_rows(r0, w, true);
                let dst = MatMut { data: &mut data[r0..], rows: n, cols: r1 - r0, row_stride };
                matmul_weights(dst, x, Mat::new(w, r1 - r0, self.cols).t(), accumulate);
            }
        });
    }

    /// dx (N, cols) (+)= dy (N, rows) · W, bit-identical to [`crate::kernels::matmul::matmul`] on the dequantized
    /// matrix: the panels are the GEMM's own depth blocks.
    pub fn matmul_dx(&self, dx: MatMut, dy: Mat, accumulate: bool) {
        assert!(dy.cols == self.rows && dx.cols == self.cols, "PackedMatrix::matmul_dx: shape mismatch");
        let kc = depth_block(self.rows);
        let MatMut { data, rows: n, row_stride, .. } = dx;
        with_tile(kc.min(self.rows) * self.cols, |tile| {
            for r0 in (0..self.rows).step_by(kc.max(1)) {
                let r1 = (r0 + kc).min(self.rows);
                let w = &mut tile[..(r1 - r0) * self.cols];
                self.dequantize_rows(r0, w, true);
                let dy_block = Mat { data: &dy.data[r0 * dy.col_stride..], cols: r1 - r0, ..dy };
                let dst = MatMut { data: &mut *data, rows: n, cols: self.cols, row_stride };
                matmul_weights(dst, dy_block, Mat::new(w, r1 - r0, self.cols), accumulate || r0 > 0);
            }
        });
    }
}

/// A weight matrix W (rows, cols) as the kernels read it: dense f32 or packed. The packed products are the
/// dense ones' bits.
#[derive(Clone, Copy)]
pub enum MatrixRef<'a> {
    Dense { data: &'a [f32], rows: usize, cols: usize },
    Packed(&'a PackedMatrix),
}

impl MatrixRef<'_> {
    pub fn rows(self) -> usize {
        match self {
            MatrixRef::Dense { rows, .. } => rows,
            MatrixRef::Packed(p) => p.rows,
        }
    }

    pub fn cols(self) -> usize {
        match self {
            MatrixRef::Dense { cols, .. } => cols,
            MatrixRef::Packed(p) => p.cols,
        }
    }

    /// out (N, rows) (+)= x · Wᵀ, by the matrix-vector kernel for few rows of x ([`matmul_wt`], in f32 whatever
    /// the compute: it is memory-bound), else by the GEMM.
    pub fn matmul_wt(self, out: MatMut, x: Mat, accumulate: bool) {
        match self {
            MatrixRef::Dense { data, rows, cols } if x.rows <= MAX_ROWS && is_dense(x) => {
                matmul_wt(out, x, &data[..rows * cols], accumulate)
            }
            MatrixRef::Dense { .. } => self.gemm_wt(out, x, accumulate),
            MatrixRef::Packed(p) => p.matmul_wt(out, x, accumulate),
        }
    }

    /// out (N, rows) (+)= x · Wᵀ, always by the GEMM.
    pub fn gemm_wt(self, out: MatMut, x: Mat, accumulate: bool) {
        match self {
            MatrixRef::Dense { data, rows, cols } => matmul_weights(out, x, Mat::new(data, rows, cols).t(), accumulate),
            MatrixRef::Packed(p) => p.gemm_wt(out, x, accumulate),
        }
    }

    /// dx (N, cols) (+)= dy (N, rows) · W.
    pub fn matmul_dx(self, dx: MatMut, dy: Mat, accumulate: bool) {
        match self {
            MatrixRef::Dense { data, rows, cols } => matmul_weights(dx, dy, Mat::new(data, rows, cols), accumulate),
            MatrixRef::Packed(p) => p.matmul_dx(dx, dy, accumulate),
        }
    }

    /// Row `r` into `out` (cols values): an embedding lookup.
    pub fn row(self, r: usize, out: &mut [f32]) {
        match self {
            MatrixRef::Dense { data, cols, .. } => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
            MatrixRef::Packed(p) => p.dequantize_rows(r, out, false),
        }
    }
}

thread_local! {
    /// The f32 tile panels are dequantized into: grown once to the largest panel, then reused.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's quantized activations (buffers reused from call to call).
fn with_q8<R>(f: impl FnOnce(&mut Q8Rows) -> R) -> R {
    thread_local! {
        static Q8: RefCell<Q8Rows> = RefCell::new(Q8Rows::default());
    }
    let mut q = Q8.with(|q| std::mem::take(&mut *q.borrow_mut()));
    let r = f(&mut q);
    Q8.with(|t| *t.borrow_mut() = q);
    r
}

/// Runs `f` on this thread's tile of at least `len` floats. A product called from inside `f` (the GEMM on
/// another rayon thread) never touches this thread's tile while `f` holds it: the tile is taken out first.
fn with_tile<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut tile = TILE.with(|t| std::mem::take(&mut *t.borrow_mut()));
    super::grow(&mut tile, len);
    let r = f(&mut tile[..len]);
    TILE.with(|t| *t.borrow_mut() = tile);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    // The bit-identity of both products with the dense path, for every type, is tests/quantized_base.rs (it
    // needs the quantizers of `formats`).

    #[test]
    fn bad_layouts_are_refused() {
        let zeros = |n| SharedBytes::owned(vec![0; n]);
        assert!(PackedMatrix::new(GgmlType::Q4_K, 2, 128, zeros(144)).unwrap_err().contains("divide"));
        assert!(PackedMatrix::new(GgmlType::Q8_0, 2, 64, zeros(100)).unwrap_err().contains("136"));
    }

    /// The int8 GEMM of a prefill writes every panel into its columns of a strided output, partial panels and
    /// accumulation included: against the f64 product of the dequantized weights and the 8-bit activations.
    #[test]
    fn int8_gemm_fills_the_strided_output() {
        use crate::kernels::quant_dot::gemm::tests::{activations, weights};
        let (rows, cols, n, stride) = (40, 512, 19, 45);
        for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
            let m = PackedMatrix::new(ty, rows, cols, SharedBytes::owned(weights(ty, rows, cols, 3, None))).unwrap();
            let x = activations(n * cols, 5);
            let mut acts = Acts::default();
            acts.quantize(ty, &x, cols);
            let w = m.to_f32();
            let exact = |r: usize, c: usize| -> f64 {
                let xq = |k: usize| acts.xs.q(r)[k] as f64 * acts.xs.d(r)[k / 256] as f64;
                (0..cols).map(|k| w[c * cols + k] as f64 * xq(k)).sum()
            };
            for accumulate in [false, true] {
                let mut out = vec![1.0f32; (n - 1) * stride + rows + 1];
                m.gemm_int8(
                    MatMut { data: &mut out, rows: n, cols: rows, row_stride: stride },
                    Mat::new(&x, n, cols),
                    accumulate,
                );
                for r in 0..n {
                    for c in 0..rows {
                        let want = exact(r, c) + if accumulate { 1.0 } else { 0.0 };
                        let got = out[r * stride + c] as f64;
                        assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "{ty} r{r} c{c}: {got} vs {want}");
                    }
                    // the columns past the matrix stay as they were
                    if r + 1 < n {
                        assert!(out[r * stride + rows..(r + 1) * stride].iter().all(|&v| v == 1.0));
                    }
                }
            }
        }
    }

    /// The scale-only scan finds the value a full dequantization finds first — on random bytes, whose f16 fields
    /// are non-finite now and then — and nothing in all-zero matrices.
    #[test]
    fn the_first_non_finite_value_is_the_one_full_dequantization_finds() {
        use crate::kernels::quant_dot::gemm::tests::random_bytes;
        for ty in GgmlType::ALL.into_iter().filter(|&t| t != GgmlType::F32) {
            let (rows, cols) = (40, 512);
            let len = rows * cols / ty.block_size() * ty.type_size();
            for seed in 0..6 {
                let m = PackedMatrix::new(ty, rows, cols, SharedBytes::owned(random_bytes(len, seed))).unwrap();
                let all = m.to_f32();
                let want = all.iter().position(|v| !v.is_finite()).map(|i| (i / cols, i % cols, all[i].to_bits()));
                let got = m.first_non_finite().map(|(r, c, v)| (r, c, v.to_bits()));
                assert_eq!(got, want, "{ty}, seed {seed}");
            }
            let zeros = PackedMatrix::new(ty, rows, cols, SharedBytes::owned(vec![0; len])).unwrap();
            assert_eq!(zeros.first_non_finite(), None, "{ty}");
        }
    }

    #[test]
    fn permuting_rows_moves_whole_rows() {
        let bytes: Vec<u8> = (0..3 * 34).map(|i| (i % 7) as u8).collect();
        let m = PackedMatrix::new(GgmlType::Q8_0, 3, 32, SharedBytes::owned(bytes.clone())).unwrap();
        let p = m.permute_rows(&[2, 0, 1]);
        assert_eq!(&p.bytes[..34], &bytes[68..]);
        assert_eq!(&p.bytes[34..68], &bytes[..34]);
    }
}
