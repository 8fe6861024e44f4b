//! Logits processors and token choice with Hugging Face transformers' semantics, applied in its order:
//! repetition penalty → no-repeat-n-gram → (sampling only) temperature → top-k → top-p → min-p → draw.
//!
//! Every function works in place on one row of scores and allocates nothing: scratch lives in [`Scratch`],
//! sized to the vocabulary once.
use crate::rng;

/// Sampling settings. A filter is off at its neutral value: top_k 0, top_p 1, min_p 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// Divides the scores before filtering (transformers' `TemperatureLogitsWarper`); must be > 0.
    pub temperature: f32,
    /// Keep the k highest scores (ties with the k-th kept); 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of most probable tokens whose mass reaches top_p; 1 = off.
    pub top_p: f32,
    /// Drop tokens whose probability is below min_p × the top probability; 0 = off.
    pub min_p: f32,
    /// Seed of the counter-based generator: the draw of step t of prompt i is `rng::uniform(seed, i, t)`.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 0 }
    }
}

impl SamplingParams {
    /// The filters' ranges: top-p in (0, 1], min-p in [0, 1) (1 would keep only the most probable token:
    /// greedy decoding); NaN is in no range.
    pub fn check_filters(&self) -> anyhow::Result<()> {
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            anyhow::bail!("top-p must be in (0, 1] (got {}); 1 is off", self.top_p);
        }
        if !(self.min_p >= 0.0 && self.min_p < 1.0) {
            anyhow::bail!("min-p must be in [0, 1) (got {}); 0 is off", self.min_p);
        }
        Ok(())
    }
}

/// Reusable buffers for the processors (vocabulary-sized, allocated once).
pub struct Scratch {
    order: Vec<u32>,
    vals: Vec<f32>,
    seen: Vec<u32>,
    epoch: u32,
}

impl Scratch {
    pub fn new(vocab: usize) -> Self {
        Scratch { order: Vec::with_capacity(vocab), vals: Vec::with_capacity(vocab), seen: vec![0; vocab], epoch: 0 }
    }
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: for every distinct token of `seq` (prompt and generated),
/// a positive score is divided by `penalty`, a negative one multiplied by it. 1 = off.
pub fn repetition_penalty(scores: &mut [f32], seq: &[u32], penalty: f32, s: &mut Scratch) {
    if penalty == 1.0 {
        return;
    }
    s.epoch = s.epoch.wrapping_add(1);
    if s.epoch == 0 {
        s.seen.fill(0);
        s.epoch = 1;
    }
    for &t in seq {
        let t = t as usize;
        if t < scores.len() && s.seen[t] != s.epoch {
            s.seen[t] = s.epoch;
            let v = scores[t];
            scores[t] = if v < 0.0 { v * penalty } else { v / penalty };
        }
    }
}

/// transformers' `NoRepeatNGramLogitsProcessor`: a token that would complete an n-gram already present in `seq`
/// (prompt included) gets score −∞. 0 = off.
pub fn no_repeat_ngram(scores: &mut [f32], seq: &[u32], n: usize) {
    if n == 0 || seq.len() < n {
        return;
    }
    let prefix = &seq[seq.len() + 1 - n..];
    for w in seq.windows(n) {
        if &w[..n - 1] == prefix
            && let Some(s) = scores.get_mut(w[n - 1] as usize)
        {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// Index of the highest score (the first one on ties, like `torch.argmax`).
pub fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in scores.iter().enumerate() {
        if v > scores[best] || scores[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Temperature, top-k, top-p and min-p (transformers' warpers, in its order) on one row of scores:
/// removed tokens get −∞.
pub fn warp(scores: &mut [f32], p: &SamplingParams, s: &mut Scratch) {
    if p.temperature != 1.0 {
        // Shifted by the maximum first (softmax is unchanged): a tiny temperature then sends the others towards −∞
        // instead of overflowing every positive score to +∞, where the draw could no longer tell them apart.
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let shift = if max.is_finite() { max } else { 0.0 };
        for v in scores.iter_mut() {
            *v = (*v - shift) / p.temperature;
        }
    }
    if p.top_k > 0 && p.top_k < scores.len() {
        top_k(scores, p.top_k, s);
    }
    if p.top_p < 1.0 {
        top_p(scores, p.top_p, s);
    }
    if p.min_p > 0.0 {
        min_p(scores, p.min_p);
    }
}

/// `TopKLogitsWarper`: scores below the k-th highest become −∞ (ties with it stay).
pub fn top_k(scores: &mut [f32], k: usize, s: &mut Scratch) {
    let k = k.min(scores.len());
    if k == 0 {
        return;
    }
    s.vals.clear();
    s.vals.extend_from_slice(scores);
    let (_, kth, _) = s.vals.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = *kth;
    for v in scores.iter_mut() {
        if *v < kth {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// `TopPLogitsWarper` (min_tokens_to_keep = 1): with the tokens sorted by ascending score and c_i the
/// cumulative softmax probability up to and including token i, tokens with c_i ≤ 1 − top_p become −∞; the most
/// probable token always stays. Equivalently: keep the most probable tokens until their mass reaches top_p.
pub fn top_p(scores: &mut [f32], top_p: f32, s: &mut Scratch) {
    s.order.clear();
    s.order.extend((0..scores.len() as u32).filter(|&i| scores[i as usize] > f32::NEG_INFINITY));
    if s.order.len() <= 1 {
        return;
    }
    // Ascending by score; ties by id so the result does not depend on the sort.
    s.order.sort_unstable_by(|&a, &b| scores[a as usize].total_cmp(&scores[b as usize]).then(a.cmp(&b)));
    let max = scores[*s.order.last().expect("non-empty") as usize];
    let total: f64 = s.order.iter().map(|&i| ((scores[i as usize] - max) as f64).exp()).sum();
    let threshold = (1.0 - top_p as f64) as f32;
    let mut cum = 0.0f64;
    let last = s.order.len() - 1;
    for (rank, &i) in s.order.iter().enumerate() {
        cum += ((scores[i as usize] - max) as f64).exp() / total;
        if rank == last || (cum as f32) > threshold {
            break;
        }
        scores[i as usize] = f32::NEG_INFINITY;
    }
}

/// `MinPLogitsWarper` (min_tokens_to_keep = 1): tokens with probability < min_p × max probability become −∞.
pub fn min_p(scores: &mut [f32], min_p: f32) {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if max == f32::NEG_INFINITY {
        return;
    }
    // p_i < min_p · p_max  ⇔  exp(s_i − max) < min_p (the softmax normaliser cancels).
    for v in scores.iter_mut() {
        if ((*v - max) as f64).exp() < min_p as f64 {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// Draws a token from softmax(scores) with the uniform number `u` ∈ [0, 1): inverse CDF over token ids in
/// increasing order, accumulated in f64. Tokens at −∞ have probability 0 and are never drawn.
pub fn draw(scores: &[f32], u: f64) -> usize {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let total: f64 = scores.iter().map(|&v| ((v - max) as f64).exp()).sum();
    let target = u * total;
    let mut cum = 0.0;
    let mut last_positive = argmax(scores);
    for (i, &v) in scores.iter().enumerate() {
        let p = ((v - max) as f64).exp();
        if p > 0.0 {
            cum += p;
            last_positive = i;
            if cum > target {
                return i;
            }
        }
    }
    last_positive
}

/// The uniform number of step `step` of prompt `stream`.
pub fn uniform(seed: u64, stream: u64, step: u64) -> f64 {
    rng::uniform(seed, stream, step)
}

/// log-softmax of one row in place, f32 values: x − max − log Σ exp(x − max). The sum is kept in f64: over a
/// vocabulary of 50 000–260 000 terms an f32 running sum loses the small ones (a beam's log-prob 2e-4 too high per
/// token on SmolLM2, against `score`'s), where torch's blocked reduction stays close to exact.
pub fn log_softmax(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = row.iter().map(|&v| (v - max).exp() as f64).sum();
    let lse = sum.ln() as f32;
    for v in row.iter_mut() {
        *v = *v - max - lse;
    }
}

/// The probabilities softmax(scores), for tests and reports.
pub fn softmax(scores: &[f32]) -> Vec<f64> {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let e: Vec<f64> = scores.iter().map(|&v| ((v - max) as f64).exp()).collect();
    let total: f64 = e.iter().sum();
    e.into_iter().map(|x| x / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_over_a_large_vocabulary_is_exact_to_f32() {
        // One likely token among 200 000 unlikely ones: their many small terms are what an f32 running sum drops.
        let mut row: Vec<f32> = (0..200_000).map(|i| (i % 97) as f32 * 0.01 - 9.0).collect();
        row[123] = 3.0;
        let max = 3.0f64;
        let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        let want: Vec<f64> = row.iter().map(|&v| v as f64 - lse).collect();
        log_softmax(&mut row);
        for (i, (&got, &w)) in row.iter().zip(&want).enumerate() {
            assert!((got as f64 - w).abs() < 2e-6, "token {i}: {got} vs {w}");
        }
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_once_per_token() {
        let mut s = Scratch::new(4);
        let mut x = vec![2.0, -1.0, 3.0, 0.5];
        repetition_penalty(&mut x, &[0, 1, 0, 0], 2.0, &mut s);
        assert_eq!(x, vec![1.0, -2.0, 3.0, 0.5]);
        repetition_penalty(&mut x, &[0], 2.0, &mut s);
        assert_eq!(x[0], 0.5);
    }

    #[test]
    fn no_repeat_ngram_bans_completions_of_seen_ngrams() {
        // Bigrams seen: (5,6), (6,7), (7,5). The sequence ends in 5, so 6 is banned.
        let mut x = vec![0.0; 8];
        no_repeat_ngram(&mut x, &[5, 6, 7, 5], 2);
        assert_eq!(x.iter().filter(|v| v.is_infinite()).count(), 1);
        assert!(x[6].is_infinite());
        // Trigrams: ends with (7, 5); (7,5,?) never completed → nothing banned.
        let mut x = vec![0.0; 8];
        no_repeat_ngram(&mut x, &[5, 6, 7, 5], 3);
        assert!(x.iter().all(|v| v.is_finite()));
        // Too short for any n-gram.
        no_repeat_ngram(&mut x, &[1, 2], 3);
        assert!(x.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn draw_follows_the_cdf() {
        let scores = [0.0f32, f32::NEG_INFINITY, (3.0f32).ln()];
        // p = [0.25, 0, 0.75]
        assert_eq!(draw(&scores, 0.0), 0);
        assert_eq!(draw(&scores, 0.2499), 0);
        assert_eq!(draw(&scores, 0.2501), 2);
        assert_eq!(draw(&scores, 0.9999999), 2);
    }

    #[test]
    fn a_tiny_temperature_samples_the_most_probable_token() {
        // 1e-40 overflowed every positive score to +∞, and the draw took the first of them (id 0 here).
        let mut s = Scratch::new(4);
        let p = SamplingParams { temperature: 1e-40, ..Default::default() };
        let mut x = vec![1.0f32, 0.5, 3.0, -2.0];
        warp(&mut x, &p, &mut s);
        assert!(x.iter().all(|v| !v.is_nan()), "{x:?}");
        for u in [0.0, 0.5, 0.9999] {
            assert_eq!(draw(&x, u), 2);
        }
    }
}
