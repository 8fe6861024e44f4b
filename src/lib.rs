//! condlm: conditional language models P(y | x) — load real checkpoints, score, train, generate.
//!
//! Layers, lowest first; a module imports only from its own layer's lower files and from layers below it
//! (ARCHITECTURE.md draws the map; tests/architecture.rs checks it):
//! 0. [`kernels`], [`rng`], [`output`], [`input`], [`progress`], [`distributed`] — math on slices, deterministic
//!    random numbers, atomic file writes, regular-file reads, progress bars, collectives between the processes of
//!    a data-parallel run.
//! 1. [`network`] — the transformer as parameters and one forward/backward pass (training, scoring, decoding).
//! 2. [`tokenizer`], then [`formats`] — text ↔ ids; checkpoint and adapter files in and out.
//! 3. [`data`] — (x, y) rows from files, chat templates, target masks.
//! 4. [`score`], then [`train`], [`generate`], [`metrics`] — the jobs.
//!
//! The command line (`src/cli/`, in the binary) sits on top.
pub mod distributed;
pub mod input;
pub mod kernels;
pub mod output;
pub mod progress;
pub mod rng;

pub mod network;

pub mod formats;
pub mod tokenizer;

pub mod data;

pub mod generate;
pub mod metrics;
pub mod score;
pub mod train;
