//! Datasets of (x, y) pairs: file formats (prompt/completion, Alpaca, chat), chat templates, tokenization
//! with target masks, truncation, statistics and the split by prompt; data files in JSONL, JSON, Parquet, CSV
//! and TSV, from a path, a dataset folder or the Hugging Face hub.
pub mod chat;
pub mod csv_rows;
pub mod dataset;
pub mod example;
pub mod parquet_rows;
pub mod prompts;
pub mod records;
pub mod rows;
pub mod show;
pub mod source;
pub mod splits;
