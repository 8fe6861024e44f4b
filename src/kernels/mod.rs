//! CPU kernels, and the CUDA backend's (`cuda`, feature `cuda`). Each op's forward lives beside its backward;
//! shapes are in the doc comments.
pub mod activation;
pub mod adamw;
pub mod attention;
pub mod backend;
pub mod bf16;
pub mod compute;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod delta_mixer;
pub mod dequant;
pub mod dropout;
pub mod embedding;
pub mod gated_delta;
pub mod gemm;
pub mod gemm_bf16;
pub mod kv_attention;
pub mod lm_head;
pub mod mat;
pub mod matmul;
pub mod matvec;
pub mod norm;
pub mod packed;
pub mod quant_dot;
pub mod rope;
pub mod simd;
pub mod weight_bytes;

#[cfg(test)]
pub(crate) mod finite_diff;

/// Grows a reusable buffer to at least `n` values (never shrinks): buffers reach their largest size once and
/// are reused after that.
pub fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}
