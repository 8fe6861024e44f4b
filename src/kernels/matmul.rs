//! The one GEMM entry point of the engine: bounds checked on the strided views ([`super::mat`]), then our packed
//! GEMM underneath ([`super::gemm`]: AVX-512 / AVX2+FMA / portable micro-kernels picked at run time).
use super::compute::{Compute, compute};
use super::gemm::{Isa, gemm};
use super::gemm_bf16::{Bf16Isa, gemm_bf16};
use super::mat::{Mat, MatMut};

/// `out = a · b` (or `out += a · b` when `accumulate`).
pub fn matmul(out: MatMut, a: Mat, b: Mat, accumulate: bool) {
    assert!(a.cols == b.rows && out.rows == a.rows && out.cols == b.cols, "matmul: shape mismatch");
    a.check("lhs");
    b.check("rhs");
    if out.rows > 0 && out.cols > 0 {
        assert!((out.rows - 1) * out.row_stride + out.cols <= out.data.len(), "matmul: dst out of bounds");
    }
    gemm(Isa::best(), out, a, b, accumulate);
}

/// A product of the network's weight matrices — the base linears and the LM head, forward and backward, and
/// full fine-tuning's weight gradients — in the run's [`compute`]: f32 as [`matmul`], or with `--compute bf16`
/// both operands rounded to bf16 and the products accumulated in f32 ([`gemm_bf16`]). LoRA's own small
/// products, attention and everything else stay [`matmul`].
pub fn matmul_weights(out: MatMut, a: Mat, b: Mat, accumulate: bool) {
    if compute() == Compute::Bf16 {
        gemm_bf16(Bf16Isa::best(), out, a, b, accumulate);
    } else {
        matmul(out, a, b, accumulate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: Mat, b: Mat) -> Vec<f32> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0.0f64;
                for p in 0..a.cols {
                    s += a.data[i * a.row_stride + p * a.col_stride] as f64
                        * b.data[p * b.row_stride + j * b.col_stride] as f64;
                }
                out[i * b.cols + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn matches_naive_for_transposed_and_strided_views() {
        let a: Vec<f32> = (0..7 * 5).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
        let w: Vec<f32> = (0..9 * 5).map(|i| ((i * 13 % 7) as f32 - 3.0) / 2.0).collect();
        // x (7,5) · Wᵀ where W is (9,5), written into columns 2..11 of a (7,12) buffer.
        let mut buf = vec![1.0; 7 * 12];
        matmul(
            MatMut { data: &mut buf[2..], rows: 7, cols: 9, row_stride: 12 },
            Mat::new(&a, 7, 5),
            Mat::new(&w, 9, 5).t(),
            false,
        );
        let want = naive(Mat::new(&a, 7, 5), Mat::new(&w, 9, 5).t());
        for r in 0..7 {
            assert_eq!(&buf[r * 12..r * 12 + 2], &[1.0, 1.0]);
            assert_eq!(buf[r * 12 + 11], 1.0);
            for c in 0..9 {
                assert!((buf[r * 12 + 2 + c] - want[r * 9 + c]).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn accumulate_adds_to_destination() {
        let a = vec![1.0, 2.0, 3.0, 4.0];
        let b = vec![1.0, 0.0, 0.0, 1.0];
        let mut out = vec![10.0; 4];
        matmul(MatMut::new(&mut out, 2, 2), Mat::new(&a, 2, 2), Mat::new(&b, 2, 2), true);
        assert_eq!(out, vec![11.0, 12.0, 13.0, 14.0]);
    }
}
