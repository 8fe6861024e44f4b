//! Datasets of (x, y) pairs.
pub mod rows;
