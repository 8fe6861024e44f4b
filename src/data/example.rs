//! A training/scoring example: token ids plus which of them are targets (y tokens, EOS included).
use crate::network::batch::PackedBatch;
use crate::tokenizer::TextTokenizer;
use anyhow::Result;
use std::borrow::Borrow;
use std::ops::Range;

#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// Ranges of `ids` that are y tokens: increasing, disjoint, never containing position 0
    /// (a token needs a context to be predicted from).
    pub targets: Vec<Range<usize>>,
}

impl Example {
    /// x then y: every token from `y_start` on is a target.
    pub fn pair(ids: Vec<u32>, y_start: usize) -> Self {
        let targets = std::iter::once(y_start.max(1)..ids.len()).collect();
        Example { ids, targets }
    }

    /// x and y tokenized **separately** and joined as `prefix + enc(x) + enc(y) + [EOS]`, so the x/y boundary
    /// is exact by construction; y and EOS are the targets.
    pub fn encode_pair(tok: &TextTokenizer, x: &str, y: &str) -> Result<Self> {
        let (ids, y_start) = tok.encode_pair(x, y)?;
        Ok(Example::pair(ids, y_start))
    }

    /// Where y starts (the first target), or the end if there is none.
    pub fn y_start(&self) -> usize {
        self.targets.first().map_or(self.ids.len(), |r| r.start)
    }

    pub fn n_targets(&self) -> usize {
        self.targets.iter().map(|r| r.len()).sum()
    }
}

/// Row t−1's hidden state predicts token t: the (hidden row, target id) pairs of every y token of
/// `rows`, packed as in `batch`.
pub fn target_rows<E: Borrow<Example>>(rows: &[E], batch: &PackedBatch, sel: &mut Vec<usize>, targets: &mut Vec<u32>) {
    sel.clear();
    targets.clear();
    for (e, range) in rows.iter().map(Borrow::borrow).zip(&batch.seqs) {
        for t in e.targets.iter().flat_map(|r| r.clone()) {
            sel.push(range.start + t - 1);
            targets.push(e.ids[t]);
        }
    }
}
