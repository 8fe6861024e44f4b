//! The rows of a forward pass: a packed batch (several sequences end to end, no padding) for training and
//! scoring, or decoding rows (token, position, cache slot) for the KV-cache path.
use super::config::Config;
use anyhow::{Result, bail};

/// Rows of several sequences packed end to end; row i sits at position `positions[i]` of the
/// sequence that starts at row `seq_start[i]`.
#[derive(Default)]
pub struct PackedBatch {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub seq_start: Vec<u32>,
    /// Row range of each sequence.
    pub seqs: Vec<std::ops::Range<usize>>,
}

impl PackedBatch {
    pub fn new(seqs: &[Vec<u32>]) -> Self {
        let mut b = PackedBatch { tokens: vec![], positions: vec![], seq_start: vec![], seqs: vec![] };
        b.pack(seqs.iter().map(|s| &s[..]));
        b
    }

    /// Replaces the contents with `seqs`, reusing the buffers (no allocation once they are large enough).
    pub fn pack<'a>(&mut self, seqs: impl Iterator<Item = &'a [u32]>) {
        self.tokens.clear();
        self.positions.clear();
        self.seq_start.clear();
        self.seqs.clear();
        for s in seqs {
            let start = self.tokens.len();
            self.tokens.extend_from_slice(s);
            self.positions.extend(0..s.len() as u32);
            self.seq_start.extend(std::iter::repeat_n(start as u32, s.len()));
            self.seqs.push(start..self.tokens.len());
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Checks the batch against a model's vocabulary and context window before any kernel runs (the kernels
    /// index tables with these values).
    pub fn check(&self, c: &Config) -> Result<()> {
        if let Some(&bad) = self.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            bail!("token id {bad} is outside the model's vocabulary of {} entries", c.vocab_size);
        }
        if let Some(s) = self.seqs.iter().find(|s| s.len() > c.max_positions) {
            bail!("a sequence of {} tokens exceeds the model's context window of {}", s.len(), c.max_positions);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// One decoding row: `token` at position `pos` of KV-cache slot `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub slot: u32,
    pub pos: u32,
    pub token: u32,
}
