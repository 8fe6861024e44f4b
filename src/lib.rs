//! condlm: conditional language models P(y | x) — load real checkpoints, score, train, generate.
pub mod data;
pub mod demo;
pub mod generate;
pub mod kernels;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod output;
pub mod peft;
pub mod rng;
pub mod score;
pub mod train;
