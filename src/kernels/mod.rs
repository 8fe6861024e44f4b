//! CPU kernels. Each op's forward lives beside its backward; shapes are in the doc comments.
pub mod activation;
pub mod attention;
pub mod embedding;
pub mod lm_head;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod simd;

#[cfg(test)]
mod finite_diff;
