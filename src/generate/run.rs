//! The generation driver: many prompts through one [`Decoder`], with continuous batching.
//!
//! Up to `batch` prompts run at once, each in its own cache slots (one, or `num_beams` under beam search).
//! Every forward call holds one decode row per running sequence plus the whole prompts of newly admitted ones
//! (their prefill, up to `prefill_tokens` prompt tokens per call), so a finished prompt's slots are refilled at
//! the next step. Each prompt's draws come from its own random stream (`rng::uniform(seed, prompt index, step)`)
//! and rows do not interact, so batching changes results at most through float rounding.
use super::beam::BeamSearch;
use super::decoder::Decoder;
use super::detok::{Streamer, check_stop_strings};
use super::sampling::{Scratch, argmax, draw, no_repeat_ngram, repetition_penalty, uniform, warp};
use super::{Finish, GenerateOptions, Generation, Strategy, context_len};
use crate::network::batch::Row;
use crate::network::transformer::Transformer;
use crate::tokenizer::TextTokenizer;
use anyhow::{Result, bail};

/// What [`generate`] reports while it runs.
pub enum Event<'a> {
    /// Greedy and sampling: token `id` was generated for prompt `prompt` (before its text is known).
    Token { prompt: usize, id: u32 },
    /// New text of prompt `prompt`: greedy and sampling stream it token by token (held back while it could be
    /// the start of a stop string); beam search gives the whole text when the prompt is done.
    Text { prompt: usize, text: &'a str },
    /// Prompt `prompt` is finished.
    Done { prompt: usize, generation: &'a Generation },
}

/// One sequence decoded greedily or by sampling.
struct Single<'t> {
    prompt: usize,
    slot: usize,
    seq: Vec<u32>,
    prompt_len: usize,
    max_new: usize,
    streamer: Streamer<'t>,
}

/// One prompt's beams.
struct Beams {
    prompt: usize,
    prompt_len: usize,
    /// Cache slot of each running beam.
    phys: Vec<usize>,
    new_phys: Vec<usize>,
    claimed: Vec<bool>,
    search: BeamSearch,
}

enum Task<'t> {
    Single(Single<'t>),
    Beam(Beams),
}

impl Task<'_> {
    fn group_slot(&self, nb: usize) -> usize {
        match self {
            Task::Single(s) => s.slot,
            Task::Beam(b) => b.phys.iter().copied().min().unwrap_or(0) / nb,
        }
    }
}

/// Generates a continuation of every prompt (token ids, e.g. from [`super::encode_prompt`]); `on_event`
/// sees text as it is produced and each finished prompt. Returns the generations in prompt order.
pub fn generate(
    model: &Transformer,
    tok: &TextTokenizer,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    mut on_event: impl FnMut(Event),
) -> Result<Vec<Generation>> {
    generate_from(model, tok, prompts, 0, opts, |e| {
        on_event(e);
        Ok(())
    })
}

/// [`generate`] for `prompts` that continue a longer list at index `first`: prompt i samples from random stream
/// `first + i`, as it would in a run over the whole list (so a run resumed after `first` prompts draws what an
/// uninterrupted run would). An error from `on_event` (e.g. the output cannot be written) stops generation.
/// Non-finite logits stop it with [`NonFiniteLogits`].
pub fn generate_from(
    model: &Transformer,
    tok: &TextTokenizer,
    prompts: &[Vec<u32>],
    first: usize,
    opts: &GenerateOptions,
    mut on_event: impl FnMut(Event) -> Result<()>,
) -> Result<Vec<Generation>> {
    let vocab = model.config.vocab_size;
    opts.validate(vocab)?;
    check_stop_strings(tok, &opts.stop_strings)?;
    let ctx = context_len(model);
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            bail!("prompt {i} is empty (no tokens): the first generated token would have no context");
        }
        if p.len() >= ctx {
            bail!(
                "prompt {i} has {} tokens, but the model's context window is {ctx}: no room to generate; shorten it",
                p.len()
            );
        }
        if let Some(&t) = p.iter().find(|&&t| t as usize >= vocab) {
            bail!("prompt {i}: token id {t} is outside the model's vocabulary of {vocab} entries");
        }
    }
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    let nb = opts.num_beams();
    let groups = opts.batch.min(prompts.len());
    let slots = groups * nb;
    let max_new = |p: &[u32]| opts.max_new_tokens.min(ctx - p.len());
    let capacity = prompts.iter().map(|p| p.len() + max_new(p)).max().unwrap_or(1);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let max_rows = opts.prefill_tokens.max(longest) + slots;
    let mut dec = Decoder::on(model, slots, capacity, max_rows, opts.device)?;
    let mut scratch = Scratch::new(vocab);
    let mut work = vec![0.0f32; slots * vocab];
    let mut rows: Vec<Row> = Vec::with_capacity(max_rows);
    let mut logit_rows: Vec<usize> = Vec::with_capacity(slots);
    // (task index, first logit row, number of logit rows) of this call.
    let mut owners: Vec<(usize, usize, usize)> = Vec::with_capacity(groups);
    let mut free: Vec<usize> = (0..groups).rev().collect();
    let mut tasks: Vec<Task> = Vec::with_capacity(groups);
    let mut results: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut next_prompt = 0;
    let mut finished: Vec<usize> = Vec::with_capacity(groups);
    let stop_ids = &opts.stop_ids;
    let stop_strings = &opts.stop_strings;
    loop {
        rows.clear();
        logit_rows.clear();
        owners.clear();
        for (ti, t) in tasks.iter().enumerate() {
            let start = logit_rows.len();
            match t {
                Task::Single(s) => {
                    logit_rows.push(rows.len());
                    let pos = s.seq.len() - 1;
                    rows.push(Row { slot: s.slot as u32, pos: pos as u32, token: s.seq[pos] });
                }
                Task::Beam(b) => {
                    for (k, &slot) in b.phys.iter().enumerate() {
                        let seq = b.search.seq(k);
                        logit_rows.push(rows.len());
                        rows.push(Row { slot: slot as u32, pos: (seq.len() - 1) as u32, token: seq[seq.len() - 1] });
                    }
                }
            }
            owners.push((ti, start, logit_rows.len() - start));
        }
        // Admit new prompts into free slots, their whole prompt as prefill rows.
        let mut prefill = 0;
        while next_prompt < prompts.len() && !free.is_empty() {
            let p = &prompts[next_prompt];
            if prefill > 0 && prefill + p.len() > opts.prefill_tokens {
                break;
            }
            let group = free.pop().expect("non-empty");
            let first_slot = group * nb;
            for (pos, &token) in p.iter().enumerate() {
                rows.push(Row { slot: first_slot as u32, pos: pos as u32, token });
            }
            owners.push((tasks.len(), logit_rows.len(), 1));
            logit_rows.push(rows.len() - 1);
            prefill += p.len();
            tasks.push(match opts.strategy {
                Strategy::Beam(bp) => Task::Beam(Beams {
                    prompt: next_prompt,
                    prompt_len: p.len(),
                    phys: (first_slot..first_slot + nb).collect(),
                    new_phys: vec![0; nb],
                    claimed: vec![false; nb],
                    search: BeamSearch::new(p, bp, stop_ids.len(), max_new(p)),
                }),
                _ => Task::Single(Single {
                    prompt: next_prompt,
                    slot: first_slot,
                    seq: {
                        let mut v = Vec::with_capacity(p.len() + max_new(p));
                        v.extend_from_slice(p);
                        v
                    },
                    prompt_len: p.len(),
                    max_new: max_new(p),
                    streamer: Streamer::new(tok, stop_strings),
                }),
            });
            next_prompt += 1;
        }
        if rows.is_empty() {
            break;
        }
        let logits = dec.forward(&rows, &logit_rows)?;
        work[..logits.len()].copy_from_slice(logits);

        finished.clear();
        for &(ti, row, n) in &owners {
            let w = &mut work[row * vocab..(row + n) * vocab];
            // Checked before the processors, which set scores to -inf on purpose.
            if w.iter().any(|v| !v.is_finite()) {
                let prompt = match &tasks[ti] {
                    Task::Single(s) => s.prompt,
                    Task::Beam(b) => b.prompt,
                };
                return Err(NonFiniteLogits { prompt }.into());
            }
            match &mut tasks[ti] {
                Task::Single(s) => {
                    repetition_penalty(w, &s.seq, opts.repetition_penalty, &mut scratch);
                    no_repeat_ngram(w, &s.seq, opts.no_repeat_ngram_size);
                    let step = s.seq.len() - s.prompt_len;
                    let token = match &opts.strategy {
                        Strategy::Sample(p) => {
                            warp(w, p, &mut scratch);
                            draw(w, uniform(p.seed, (first + s.prompt) as u64, step as u64))
                        }
                        _ => argmax(w),
                    } as u32;
                    s.seq.push(token);
                    on_event(Event::Token { prompt: s.prompt, id: token })?;
                    let mut finish = None;
                    if stop_ids.contains(&token) {
                        finish = Some(if token == tok.eos_id { Finish::Eos } else { Finish::StopId });
                    } else if s.streamer.push(token)? {
                        finish = Some(Finish::StopString);
                    } else if step + 1 >= s.max_new {
                        finish = Some(Finish::Length);
                    }
                    if finish.is_some_and(|f| f != Finish::StopString) && s.streamer.flush()? {
                        finish = Some(Finish::StopString);
                    }
                    let text = s.streamer.printable(finish.is_some());
                    if !text.is_empty() {
                        on_event(Event::Text { prompt: s.prompt, text })?;
                    }
                    if let Some(finish) = finish {
                        let g = Generation {
                            ids: s.seq[s.prompt_len..].to_vec(),
                            text: s.streamer.text().to_string(),
                            finish,
                            score: None,
                        };
                        on_event(Event::Done { prompt: s.prompt, generation: &g })?;
                        results[s.prompt] = Some(g);
                        finished.push(ti);
                    }
                }
                Task::Beam(b) => {
                    let prompt_len = b.prompt_len;
                    let finishes = |seq: &[u32], t: u32| {
                        stop_ids.contains(&t)
                            || (!stop_strings.is_empty() && {
                                let mut ids = seq[prompt_len..].to_vec();
                                ids.push(t);
                                tok.decode(&ids).is_ok_and(|s| stop_strings.iter().any(|x| s.contains(x.as_str())))
                            })
                    };
                    b.search.step(w, vocab, opts.repetition_penalty, opts.no_repeat_ngram_size, &mut scratch, finishes);
                    if b.search.is_done() {
                        let g = beam_generation(tok, &b.search, stop_ids, stop_strings)?;
                        if !g.text.is_empty() {
                            on_event(Event::Text { prompt: b.prompt, text: &g.text })?;
                        }
                        on_event(Event::Done { prompt: b.prompt, generation: &g })?;
                        results[b.prompt] = Some(g);
                        finished.push(ti);
                    } else {
                        reorder(b, &mut dec)?;
                    }
                }
            }
        }
        for &ti in finished.iter().rev() {
            let t = tasks.remove(ti);
            free.push(t.group_slot(nb));
        }
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.ok_or_else(|| anyhow::anyhow!("prompt {i} was not generated")))
        .collect()
}

/// Prompt `prompt` (an index into the prompts given) got a NaN or infinite next-token score.
#[derive(Debug)]
pub struct NonFiniteLogits {
    pub prompt: usize,
}

impl NonFiniteLogits {
    /// The message, with the prompt named by `name` (e.g. `file:line`).
    pub fn describe(&self, name: &str) -> String {
        format!(
            "{name}: the model's next-token scores are not finite (NaN or inf): the model or adapter holds \
             non-finite values, and any token chosen from them would be garbage; repair or re-create the weights"
        )
    }
}

impl std::fmt::Display for NonFiniteLogits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe(&format!("prompt {}", self.prompt)))
    }
}

impl std::error::Error for NonFiniteLogits {}

/// Points each new running beam at a cache slot holding its source beam's keys and values: a source's slot is
/// taken over by the first new beam that continues it (no copy); further beams continuing the same source get a
/// slot nobody continues, filled by copying.
fn reorder(b: &mut Beams, dec: &mut Decoder) -> Result<()> {
    let nb = b.phys.len();
    let cached = b.search.len() - 1; // the new tokens are not in the cache yet
    b.claimed.fill(false);
    for k in 0..nb {
        let s = b.search.sources[k];
        if b.claimed[s] {
            b.new_phys[k] = usize::MAX;
        } else {
            b.claimed[s] = true;
            b.new_phys[k] = b.phys[s];
        }
    }
    let mut free = (0..nb).filter(|&s| !b.claimed[s]).map(|s| b.phys[s]);
    for k in 0..nb {
        if b.new_phys[k] == usize::MAX {
            let slot = free.next().expect("as many unclaimed slots as duplicate sources");
            dec.copy_slot(b.phys[b.search.sources[k]], slot, cached)?;
            b.new_phys[k] = slot;
        }
    }
    std::mem::swap(&mut b.phys, &mut b.new_phys);
    Ok(())
}

fn beam_generation(
    tok: &TextTokenizer,
    search: &BeamSearch,
    stop_ids: &[u32],
    stop_strings: &[String],
) -> Result<Generation> {
    let (score, ids) = search.best();
    let last = ids.last().copied();
    let stopped_by_id = last.is_some_and(|t| stop_ids.contains(&t));
    let text_ids = if stopped_by_id { &ids[..ids.len() - 1] } else { ids };
    let mut streamer = Streamer::new(tok, stop_strings);
    for &t in text_ids {
        streamer.push(t)?;
    }
    streamer.flush()?;
    let finish = match last {
        Some(t) if stopped_by_id && t == tok.eos_id => Finish::Eos,
        _ if stopped_by_id => Finish::StopId,
        _ if streamer.stopped() => Finish::StopString,
        _ => Finish::Length,
    };
    Ok(Generation { ids: ids.to_vec(), text: streamer.text().to_string(), finish, score: Some(score) })
}
