//! condlm: conditional language models P(y | x) — load real checkpoints, score, train, generate.
pub mod kernels;
pub mod model;
