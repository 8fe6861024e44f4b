//! Dropout on an (N, in) input as LoRA applies it (PEFT's `lora_dropout`): each element kept with probability
//! 1 − p and scaled by 1/(1 − p), its mask one bit per element (set = kept) in u64 words. The mask is a pure
//! function of (key, element index), so it depends on neither the thread count nor the device
//! (`cuda/cu/dropout.cu` draws the same bits).
use crate::rng;
use rayon::prelude::*;

/// Elements per parallel task (a multiple of 64: each task owns whole mask words).
const CHUNK: usize = 1 << 14;

/// Words of mask for `n` elements.
pub fn mask_words(n: usize) -> usize {
    n.div_ceil(64)
}

/// x_drop = dropout(x), drawing the mask into `keep`: element i is kept when `uniform_at(key, i)` ≥ p.
/// x, x_drop: (n); keep: (mask_words(n)).
pub fn dropout_forward(x_drop: &mut [f32], keep: &mut [u64], x: &[f32], p: f32, key: u64) {
    assert!(x_drop.len() == x.len() && keep.len() == mask_words(x.len()), "dropout_forward: shapes");
    let (p, keep_scale) = (p as f64, 1.0 / (1.0 - p));
    x_drop.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).zip(keep.par_chunks_mut(CHUNK / 64)).enumerate().for_each(
        |(c, ((d, x), bits))| {
            bits.fill(0);
            for (i, (d, &v)) in d.iter_mut().zip(x).enumerate() {
                let kept = rng::uniform_at(key, (c * CHUNK + i) as u64) >= p;
                *d = if kept { v * keep_scale } else { 0.0 };
                bits[i / 64] |= (kept as u64) << (i % 64);
            }
        },
    );
}

/// x_drop = dropout(x) again from the mask [`dropout_forward`] drew: the same values, no random numbers.
pub fn dropout_again(x_drop: &mut [f32], keep: &[u64], x: &[f32], p: f32) {
    assert!(x_drop.len() == x.len() && keep.len() >= mask_words(x.len()), "dropout_again: shapes");
    let keep_scale = 1.0 / (1.0 - p);
    x_drop.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).zip(keep.par_chunks(CHUNK / 64)).for_each(
        |((d, x), bits)| {
            for (i, (d, &v)) in d.iter_mut().zip(x).enumerate() {
                *d = if bits[i / 64] >> (i % 64) & 1 == 1 { v * keep_scale } else { 0.0 };
            }
        },
    );
}

/// Backward of dropout: dx **+=** keep ⊙ t / (1 − p), t = ∂L/∂dropout(x). dx, t: (n).
pub fn dropout_backward(dx: &mut [f32], t: &[f32], keep: &[u64], p: f32) {
    assert!(dx.len() == t.len() && keep.len() >= mask_words(t.len()), "dropout_backward: shapes");
    let keep_scale = 1.0 / (1.0 - p);
    dx.par_chunks_mut(CHUNK).zip(t.par_chunks(CHUNK)).zip(keep.par_chunks(CHUNK / 64)).for_each(|((d, t), bits)| {
        for (i, (d, tv)) in d.iter_mut().zip(t).enumerate() {
            if bits[i / 64] >> (i % 64) & 1 == 1 {
                *d += tv * keep_scale;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_the_one_the_values_show_and_survives_a_redraw() {
        let n = CHUNK + 77; // two tasks, a partial word
        let x: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
        let (mut d, mut keep) = (vec![0.0; n], vec![0; mask_words(n)]);
        dropout_forward(&mut d, &mut keep, &x, 0.25, 42);
        let kept = (0..n).filter(|&i| keep[i / 64] >> (i % 64) & 1 == 1).count();
        assert!((kept as f64 / n as f64 - 0.75).abs() < 0.02, "kept {kept} of {n}");
        for i in 0..n {
            let bit = keep[i / 64] >> (i % 64) & 1 == 1;
            assert_eq!(bit, rng::uniform_at(42, i as u64) >= 0.25, "element {i}");
            assert_eq!(d[i], if bit { x[i] * (1.0 / 0.75f32) } else { 0.0 }, "element {i}");
        }
        let mut again = vec![0.0; n];
        dropout_again(&mut again, &keep, &x, 0.25);
        assert_eq!(again, d);
        let mut dx = vec![1.0; n];
        dropout_backward(&mut dx, &x, &keep, 0.25);
        for i in 0..n {
            assert_eq!(dx[i], 1.0 + d[i], "element {i}");
        }
    }
}
