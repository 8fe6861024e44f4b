//! Beam search with the semantics of Hugging Face transformers 5 (`GenerationMixin._beam_search`), step for step:
//!
//! - Each step, every running beam's logits go through log-softmax, then the logits processors (repetition
//!   penalty, no-repeat-n-gram — on the log-probabilities, as transformers does), and are added to the beam's
//!   running score (a sum of log-probabilities, f32). From all `num_beams × vocab` continuations the best
//!   `K = max(2, 1 + #stop ids) · num_beams` are kept, best first. At the first step only beam 0 exists (the
//!   others start at −1e9 in transformers, so none of their continuations can be chosen).
//! - A continuation *finishes* when its token is a stop id (EOS or an extra stop id), when it completes a stop
//!   string, or when it reaches the length limit (`max_new_tokens`, or the context window). Of the finished ones,
//!   only those among the first `num_beams` of the K may become hypotheses, scored
//!   `sum_logprobs / generated_len ** length_penalty`, where `generated_len` counts the new tokens including the
//!   stop token. The `num_beams` best hypotheses are kept. None are added once all `num_beams` slots are full
//!   and `early_stopping` is true, nor once the early-stop heuristic said no improvement is possible.
//! - The next running beams are the best `num_beams` of the K that did not finish.
//! - The early-stop heuristic (sticky): the best running score divided by `L ** length_penalty` (L = tokens
//!   generated so far, or `max_new_tokens` when `early_stopping` is "never" and length_penalty > 0) must beat the
//!   worst hypothesis once all slots are full.
//! - The search ends when the heuristic says no improvement is possible, or all slots are full with
//!   `early_stopping` true, or every kept continuation finished (the length limit).
//! - The result is the best hypothesis: its tokens, including the stop token that ended it.
//!
//! Running scores are f32 like transformers'; hypothesis scores (normalised by the length) f64, which a large
//! negative length_penalty needs; ties between equal scores go to the lower (beam, token) index. Where
//! transformers uses −1e9 as a stand-in for −∞ (an empty hypothesis slot in the heuristic, a finished continuation
//! among the running ones), condlm uses −∞: the two agree while every score stays above −1e9, and a search whose
//! scores fall below it (a large negative length_penalty: `sum · L^|lp|`) still ends at a real hypothesis rather
//! than stopping early on transformers' placeholder.
use super::sampling::{Scratch, log_softmax, no_repeat_ngram, repetition_penalty};

/// transformers' `early_stopping`: true (stop once `num_beams` hypotheses exist), false (the default: stop
/// when the best running beam, at its current length, cannot beat the worst hypothesis), or "never" (like false,
/// but assume the running beam could grow to the maximum length when length_penalty > 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlyStopping {
    True,
    False,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BeamParams {
    pub num_beams: usize,
    /// f64, like the Python float transformers raises the length to.
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    score: f32,
    beam: usize,
    token: u32,
    finished: bool,
}

/// One prompt's beam search state.
pub struct BeamSearch {
    p: BeamParams,
    keep: usize,
    prompt_len: usize,
    /// Generated-token limit: the search ends when a continuation reaches it.
    max_new: usize,
    /// Full sequences (prompt + generated) of the running beams; `next` is the double buffer.
    seqs: Vec<Vec<u32>>,
    next: Vec<Vec<u32>>,
    scores: Vec<f32>,
    /// Hypotheses (score, generated tokens), best first, at most num_beams.
    /// Finished hypotheses, best first, with their normalised scores in f64: `sum · L^|lp|` of a negative
    /// length_penalty leaves f32's range.
    hyps: Vec<(f64, Vec<u32>)>,
    heuristic_unsatisfied: bool,
    cands: Vec<Candidate>,
    order: Vec<usize>,
    /// Source beam of each new running beam, after a step.
    pub sources: Vec<usize>,
    done: bool,
    steps: usize,
}

impl BeamSearch {
    /// `n_stop_ids` is the number of distinct stop token ids (EOS included); `max_new` the generated-token limit.
    pub fn new(prompt: &[u32], p: BeamParams, n_stop_ids: usize, max_new: usize) -> Self {
        let nb = p.num_beams;
        let keep = (1 + n_stop_ids).max(2) * nb;
        let cap = prompt.len() + max_new;
        let mk = || {
            let mut v = Vec::with_capacity(cap);
            v.extend_from_slice(prompt);
            v
        };
        BeamSearch {
            p,
            keep,
            prompt_len: prompt.len(),
            max_new,
            seqs: (0..nb).map(|_| mk()).collect(),
            next: (0..nb).map(|_| mk()).collect(),
            scores: vec![0.0; nb],
            hyps: Vec::with_capacity(nb + 1),
            heuristic_unsatisfied: true,
            cands: Vec::with_capacity(keep + 1),
            order: Vec::with_capacity(keep),
            sources: vec![0; nb],
            done: max_new == 0,
            steps: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Beams with logits expected at the next step: 1 at the first step, then num_beams.
    pub fn live_beams(&self) -> usize {
        if self.steps == 0 { 1 } else { self.p.num_beams }
    }

    /// The full sequence of running beam `b`.
    pub fn seq(&self, b: usize) -> &[u32] {
        &self.seqs[b]
    }

    /// Tokens in each running sequence (prompt + generated).
    pub fn len(&self) -> usize {
        self.seqs[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One step. `logits` holds `live_beams()` rows of `vocab` values (overwritten by the processed
    /// log-probabilities). `finishes(beam, token)` says whether appending `token` to running beam `beam` hits a
    /// stop id or stop string (the length limit is handled here). Afterwards `sources[b]` is the beam the new
    /// running beam b continues, and `seq(b)` ends with its new token.
    pub fn step(
        &mut self,
        logits: &mut [f32],
        vocab: usize,
        repetition: f32,
        ngram: usize,
        s: &mut Scratch,
        mut finishes: impl FnMut(&[u32], u32) -> bool,
    ) {
        let nb = self.p.num_beams;
        let live = self.live_beams();
        // b. log-probs, processors, running scores.
        for (b, row) in logits.chunks_exact_mut(vocab).take(live).enumerate() {
            log_softmax(row);
            repetition_penalty(row, &self.seqs[b], repetition, s);
            no_repeat_ngram(row, &self.seqs[b], ngram);
            let sc = self.scores[b];
            for v in row.iter_mut() {
                *v += sc;
            }
        }
        // c. top K continuations over all live beams, best first (ties: lower flat index first).
        self.cands.clear();
        for (b, row) in logits.chunks_exact(vocab).take(live).enumerate() {
            for (t, &v) in row.iter().enumerate() {
                if v.is_nan() || (self.cands.len() == self.keep && v <= self.cands[self.keep - 1].score) {
                    continue;
                }
                let at = self.cands.partition_point(|c| c.score >= v);
                self.cands.insert(at, Candidate { score: v, beam: b, token: t as u32, finished: false });
                self.cands.truncate(self.keep);
            }
        }
        // d. which continuations finish.
        let gen_len = self.len() + 1 - self.prompt_len;
        let at_limit = gen_len >= self.max_new;
        for c in &mut self.cands {
            c.finished = at_limit || finishes(&self.seqs[c.beam], c.token);
        }
        // f. (uses the state of the previous step) new hypotheses from the first num_beams candidates.
        let full = self.hyps.len() == nb && self.p.early_stopping == EarlyStopping::True;
        if !full && self.heuristic_unsatisfied {
            let denom = (gen_len as f64).powf(self.p.length_penalty);
            for c in self.cands.iter().take(nb).filter(|c| c.finished) {
                let score = c.score as f64 / denom;
                if score.is_nan() || score == f64::NEG_INFINITY {
                    continue;
                }
                let at = self.hyps.partition_point(|h| h.0 >= score);
                if at < nb {
                    let mut ids = self.seqs[c.beam][self.prompt_len..].to_vec();
                    ids.push(c.token);
                    self.hyps.insert(at, (score, ids));
                    self.hyps.truncate(nb);
                }
            }
        }
        // e. next running beams: the best num_beams after finished ones are pushed down by −1e9.
        let masked = |c: &Candidate| if c.finished { f32::NEG_INFINITY } else { c.score };
        self.order.clear();
        self.order.extend(0..self.cands.len());
        let cands = &self.cands;
        self.order.sort_by(|&a, &b| masked(&cands[b]).total_cmp(&masked(&cands[a])).then(a.cmp(&b)));
        for (chosen, &i) in self.order.iter().take(nb).enumerate() {
            let c = self.cands[i];
            self.sources[chosen] = c.beam;
            let dst = &mut self.next[chosen];
            dst.clear();
            dst.extend_from_slice(&self.seqs[c.beam]);
            dst.push(c.token);
            self.scores[chosen] = masked(&c);
        }
        std::mem::swap(&mut self.seqs, &mut self.next);
        self.steps += 1;
        // g. early-stop heuristic and the end condition.
        let generated = self.len() - self.prompt_len;
        let l = if self.p.early_stopping == EarlyStopping::Never && self.p.length_penalty > 0.0 {
            self.max_new
        } else {
            generated
        };
        let best = self.scores[0] as f64 / (l as f64).powf(self.p.length_penalty);
        let all_full = self.hyps.len() == nb;
        let worst = if all_full { self.hyps[nb - 1].0 } else { f64::NEG_INFINITY };
        self.heuristic_unsatisfied &= best > worst;
        let all_finished = self.cands.iter().all(|c| c.finished);
        self.done =
            !self.heuristic_unsatisfied || (all_full && self.p.early_stopping == EarlyStopping::True) || all_finished;
    }

    /// The best hypothesis: (score, generated tokens including the stop token). Falls back to the best running
    /// beam if no hypothesis exists (reached only when every continuation scored −∞).
    pub fn best(&self) -> (f64, &[u32]) {
        match self.hyps.first() {
            Some((s, ids)) => (*s, ids),
            None => (self.scores[0] as f64, &self.seqs[0][self.prompt_len..]),
        }
    }
}
