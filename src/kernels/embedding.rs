//! Token (and learned position) embedding lookup.
use rayon::prelude::*;

/// out[i] = table[ids[i]] (+ pos_table[positions[i]]).  table: (V, dim); out: (N, dim).
/// Ids were validated against V when the batch was built.
pub fn embedding_forward(
    out: &mut [f32],
    ids: &[u32],
    table: &[f32],
    positions: &[u32],
    pos_table: Option<&[f32]>,
    dim: usize,
) {
    out.par_chunks_mut(dim).enumerate().for_each(|(i, row)| {
        let t = ids[i] as usize * dim;
        row.copy_from_slice(&table[t..t + dim]);
        if let Some(pt) = pos_table {
            let p = positions[i] as usize * dim;
            for (o, v) in row.iter_mut().zip(&pt[p..p + dim]) {
                *o += v;
            }
        }
    });
}
