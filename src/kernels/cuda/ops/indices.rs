//! Index values on the device (token ids, positions, sequence starts, row numbers, targets) with what the host knew
//! of them when it copied them there. A launch checks these facts against its bounds instead of copying the
//! indices back, which would stall the stream at every op.
use crate::kernels::gated_delta::CHUNK;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DriverError};
use std::sync::Arc;

/// Facts about indices v[..len], found on the host as they were uploaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexFacts {
    /// How many were uploaded; a launch may read at most these.
    pub len: usize,
    /// The largest (0 for none).
    pub max: u32,
    /// No value twice.
    pub distinct: bool,
    /// v[i] ≤ i for every i: each row's sequence starts at or before it (a packed batch's `seq_start`).
    pub at_or_before: bool,
    /// Read as `kernels::gated_delta::seq_table`'s triples (start, end, first checkpoint) — non-empty sequences one
    /// after another, each's checkpoints numbered on from the last's — how many checkpoints they number; None when
    /// `v` is no such table. Any whole number of its first triples numbers at most these.
    pub seq_checkpoints: Option<usize>,
}

impl IndexFacts {
    /// What a launch may assume of `v`.
    pub fn of(v: &[u32]) -> Self {
        let mut sorted = v.to_vec();
        sorted.sort_unstable();
        IndexFacts {
            len: v.len(),
            max: sorted.last().copied().unwrap_or(0),
            distinct: sorted.windows(2).all(|w| w[0] != w[1]),
            at_or_before: v.iter().enumerate().all(|(i, &s)| s as usize <= i),
            seq_checkpoints: seq_checkpoints(v),
        }
    }
}

/// The checkpoints `v` numbers as a sequence table ([`IndexFacts::seq_checkpoints`]).
fn seq_checkpoints(v: &[u32]) -> Option<usize> {
    if !v.len().is_multiple_of(3) {
        return None;
    }
    let (mut end, mut ck) = (0, 0);
    for t in v.chunks_exact(3) {
        let (s, e) = (t[0] as usize, t[1] as usize);
        if s < end || e <= s || t[2] as usize != ck {
            return None;
        }
        (end, ck) = (e, ck + (e - s).div_ceil(CHUNK));
    }
    Some(ck)
}

/// A prefix of uploaded indices and the facts of the upload (which hold for any prefix of it).
pub struct Indices<'a> {
    pub view: CudaView<'a, u32>,
    pub facts: IndexFacts,
}

impl<'a> Indices<'a> {
    /// The first `n` of the indices `facts` describes in `buf`.
    pub fn prefix(buf: &'a CudaSlice<u32>, facts: IndexFacts, n: usize, op: &str) -> Self {
        assert!(n <= facts.len, "{op}: {n} indices asked, {} uploaded", facts.len);
        Indices { view: buf.slice(..n), facts }
    }

    pub fn len(&self) -> usize {
        self.view.len()
    }

    pub fn is_empty(&self) -> bool {
        self.view.len() == 0
    }

    /// Panics unless every index names one of `rows` rows (the kernels trust them).
    pub fn check_below(&self, rows: usize, op: &str) {
        assert!(self.is_empty() || (self.facts.max as usize) < rows, "{op}: index {} past {rows} rows", self.facts.max);
    }
}

/// `v` copied to the device with its facts (what a caller without a backend, `--check-kernels`, uses).
pub fn upload(stream: &Arc<CudaStream>, v: &[u32]) -> Result<(CudaSlice<u32>, IndexFacts), DriverError> {
    Ok((stream.clone_htod(v)?, IndexFacts::of(v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gated_delta::seq_table;

    #[test]
    fn facts_of_indices() {
        let f = IndexFacts::of(&[0, 0, 2, 2, 4]);
        assert_eq!(f, IndexFacts { len: 5, max: 4, distinct: false, at_or_before: true, seq_checkpoints: None });
        let f = IndexFacts::of(&[3, 1]);
        assert!(f.distinct && !f.at_or_before && f.max == 3);
        let none = IndexFacts { len: 0, max: 0, distinct: true, at_or_before: true, seq_checkpoints: Some(0) };
        assert_eq!(IndexFacts::of(&[]), none);
    }

    #[test]
    fn sequence_tables_and_their_checkpoints() {
        let mut table = vec![];
        seq_table(&mut table, &[(0, 37), (37, 38), (38, 54)]);
        assert_eq!(IndexFacts::of(&table).seq_checkpoints, Some(3 + 1 + 1));
        for bad in [
            vec![0, 5, 0, 4, 9, 1],    // overlapping sequences
            vec![0, 5, 0, 5, 5, 1],    // an empty one
            vec![0, 17, 0, 17, 20, 1], // checkpoints numbered wrong: 17 rows take two
            vec![0, 5],
        ] {
            assert_eq!(IndexFacts::of(&bad).seq_checkpoints, None, "{bad:?}");
        }
    }
}
