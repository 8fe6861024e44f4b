//! Datasets of (x, y) pairs.
pub mod example;
pub mod rows;
