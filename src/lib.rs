//! condlm: conditional language models P(y | x) — load real checkpoints, score, train, generate.
//!
//! Layers, lowest first; a module imports only from its own top-level module and from layers below it
//! (ARCHITECTURE.md draws the map; tests/architecture.rs's `LAYERS` checks it):
//! 0. [`rng`] — deterministic random numbers.
//! 1. [`kernels`], [`output`], [`input`], [`progress`], [`distributed`] — math on slices, atomic file writes,
//!    regular-file reads, progress bars, collectives between the processes of a data-parallel run.
//! 2. [`network`] — the transformer as parameters and one forward/backward pass (training, scoring, decoding).
//! 3. [`tokenizer`] — text ↔ ids. 4. [`formats`] — checkpoint and adapter files in and out.
//! 5. [`data`] — (x, y) rows from files, chat templates, target masks.
//! 6. [`score`]. 7. [`train`], [`generate`], [`metrics`] — the jobs.
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
