//! Datasets of (x, y) pairs: file formats (prompt/completion, Alpaca, chat), chat templates, tokenization
//! with target masks, truncation, statistics and the split by prompt.
pub mod chat;
pub mod dataset;
pub mod example;
pub mod records;
pub mod rows;
pub mod show;
