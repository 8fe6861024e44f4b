//! y = x·Wᵀ + b (+ (α/r)·B·A·dropout(x) when a LoRA adapter is attached), forward and backward.
//! W is stored (out, in) — nn.Linear's layout; GPT-2's Conv1D weights are transposed on load. A frozen W may be
//! kept packed (GGML blocks, F16, BF16: [`crate::kernels::packed`]); its products are the same bits.
use super::lora::{Dropout, Lora, LoraActs};
use super::param::Param;
use crate::kernels::mat::{Mat, MatMut};
use crate::kernels::matmul::matmul_weights;
use rayon::prelude::*;

pub struct Linear {
    /// HF module path, e.g. "model.layers.0.self_attn.q_proj" (PEFT keys derive from it).
    pub name: String,
    pub w: Param,
    pub b: Option<Param>,
    pub lora: Option<Lora>,
    pub in_dim: usize,
    pub out_dim: usize,
}

/// Where a linear layer's output lives — rows of `out_dim` values, `row_stride` apart (q, k and v write column
/// blocks of one shared buffer) — and whether the layer overwrites it or adds to it (a residual stream).
pub struct Strided<'a> {
    pub data: &'a mut [f32],
    pub row_stride: usize,
    pub accumulate: bool,
}

impl<'a> Strided<'a> {
    /// The layer's output replaces what is there.
    pub fn write(data: &'a mut [f32], row_stride: usize) -> Self {
        Strided { data, row_stride, accumulate: false }
    }

    /// The layer's output is added to what is there.
    pub fn add(data: &'a mut [f32], row_stride: usize) -> Self {
        Strided { data, row_stride, accumulate: true }
    }
}

impl Linear {
    /// out = x·Wᵀ + b + LoRA, or out += … (see [`Strided`]). x: (N, in).
    /// `dropout`: Some while training (LoRA dropout on, masks from its seed), None at inference.
    pub fn forward(&self, out: Strided, x: &[f32], n: usize, la: &mut LoraActs, dropout: Option<Dropout>) {
        let Strided { data: out, row_stride, accumulate } = out;
        let dst = MatMut { data: &mut *out, rows: n, cols: self.out_dim, row_stride };
        self.w.matrix().matmul_wt(dst, Mat::new(&x[..n * self.in_dim], n, self.in_dim), accumulate);
        if let Some(b) = &self.b {
            add_bias(out, row_stride, n, &b.data);
        }
        if let Some(lora) = &self.lora {
            lora.forward(out, row_stride, x, n, la, dropout);
        }
    }

    /// dy of this layer inside a buffer with `row_stride` (N rows).
    pub fn grad_view<'a>(&self, dy: &'a [f32], row_stride: usize, n: usize) -> Mat<'a> {
        Mat { data: dy, rows: n, cols: self.out_dim, row_stride, col_stride: 1 }
    }

    /// Backward of `forward`: dx += dy·W (+ LoRA path) when `dx` is given; dW, db, dA, dB accumulate
    /// into whichever of them are trainable. dy: (N, out), possibly a column block of a wider buffer.
    /// `x_drop`: the scratch the training forward used (see [`Dropout`]).
    pub fn backward(&mut self, dx: Option<&mut [f32]>, dy: Mat, x: &[f32], la: &mut LoraActs, x_drop: &mut Vec<f32>) {
        let (n, dy_mat, dy_stride) = (dy.rows, dy, dy.row_stride);
        let dy = dy.data;
        if let Some(g) = &mut self.w.grad {
            // dW (out, in) += dyᵀ · x
            matmul_weights(MatMut::new(g, self.out_dim, self.in_dim), dy_mat.t(), Mat::new(x, n, self.in_dim), true);
        }
        if let Some(g) = self.b.as_mut().and_then(|b| b.grad.as_mut()) {
            g.par_iter_mut().enumerate().for_each(|(c, g)| {
                *g += (0..n).map(|r| dy[r * dy_stride + c]).sum::<f32>();
            });
        }
        if let Some(dx) = dx {
            if let Some(lora) = &mut self.lora {
                lora.backward(Some(&mut *dx), dy_mat, x, n, la, x_drop);
            }
            // dx (N, in) += dy · W
            self.w.matrix().matmul_dx(MatMut::new(dx, n, self.in_dim), dy_mat, true);
        } else if let Some(lora) = &mut self.lora {
            lora.backward(None, dy_mat, x, n, la, x_drop);
        }
    }

    /// Every tensor of this layer, base and adapter.
    pub fn params_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        let lora = self.lora.as_mut().map(|l| [&mut l.a, &mut l.b]);
        std::iter::once(&mut self.w).chain(self.b.as_mut()).chain(lora.into_iter().flatten())
    }
}

/// out[r] += b for every row.
fn add_bias(out: &mut [f32], row_stride: usize, n: usize, b: &[f32]) {
    for r in 0..n {
        for (o, bv) in out[r * row_stride..][..b.len()].iter_mut().zip(b) {
            *o += bv;
        }
    }
}
