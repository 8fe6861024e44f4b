//! The transformer on a device ([`Backend`]): the frozen base and the LoRA adapters uploaded once, then the same
//! forward pass, LM head and backward pass as `network::Transformer`, op by op, on device buffers — for
//! `--device cuda`. On the reference backend (`kernels::backend::host`) it must give what the CPU path gives
//! (tests/device_model.rs); on a GPU each op is checked against its CPU kernel (`condlm info --devices
//! --check-kernels`).
//!
//! Every architecture the CPU path runs: the Llama family's block layout (Llama, SmolLM2/3, Qwen2, Mistral, Qwen3,
//! Gemma 3, Phi-3/4, OLMo 2/3: RMSNorm with Gemma's (1 + w), optional biases, q/k norms per head or over the whole
//! projection, post norms with or without pre-norms, GQA, RoPE with
//! a second base for sliding layers or LongRoPE's two sets and partial rotary dims, sliding windows, SwiGLU/GeGLU,
//! fused qkv and gate|up projections) and GPT-2 (LayerNorms, learned positions, GELU MLP); scoring, LoRA training
//! with dropout, full fine-tuning and decoding (a LongRoPE sequence that grows past its original context run again
//! from its start, as on the CPU).
pub mod block;
pub mod buffers;
pub mod delta_net;
pub mod kv_cache;
pub mod linear;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod rank_sums;
pub mod weights;

use super::batch::PackedBatch;
use super::batch::Row;
use super::config::Config;
use super::transformer::{Transformer, layer_seed, rerun_outgrown, set_rope_rows};
use crate::distributed::Collectives;
use crate::kernels::adamw::{AdamWConfig, AdamWScalars};
use crate::kernels::backend::{AdamWTensor, Backend, MatView, Values, ValuesMut};
use crate::kernels::gated_delta::{CHUNK, checkpoints, seq_table, sequences};
use crate::kernels::rope::RopeTable;
use anyhow::{Result, bail};
use block::{Attend, BlockArgs};
use buffers::{Buffers, HEAD_ROWS};
use kv_cache::{DevKvCache, LayerCache};
use rank_sums::{RankSums, ThroughHost};
use std::collections::HashMap;
use weights::{DevTensor, Weights};

/// Where the network runs (`--device`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    #[default]
    Cpu,
    /// The GPU of this ordinal (CUDA's numbering).
    Cuda(usize),
    /// The device path on the CPU's kernels (`kernels::backend::host`): slow, for checking what `cuda` runs
    /// (everything but the GPU kernels themselves) on a machine without a GPU.
    Reference,
}

impl std::str::FromStr for Placement {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once(':') {
            None if s == "cpu" => Ok(Placement::Cpu),
            None if s == "cuda" => Ok(Placement::Cuda(0)),
            None if s == "reference" => Ok(Placement::Reference),
            Some(("cuda", n)) => n.parse().map(Placement::Cuda).map_err(|_| format!("{n:?} is not a GPU number")),
            _ => Err(format!("{s:?} is not a device: use cpu, cuda, cuda:N or reference")),
        }
    }
}

/// As the flag spells it ("cpu", "cuda:1", "reference"): a training run's settings record it.
impl serde::Serialize for Placement {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Placement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Placement::Cpu => write!(f, "cpu"),
            Placement::Cuda(n) => write!(f, "cuda:{n}"),
            Placement::Reference => write!(f, "reference"),
        }
    }
}

/// The model on a GPU: the device model on the CUDA backend.
#[cfg(feature = "cuda")]
pub type OnGpu = DeviceModel<crate::kernels::cuda::backend::Cuda>;
/// Without the `cuda` feature [`open_gpu`] refuses, so this type is never built; naming one keeps the callers
/// free of feature gates.
#[cfg(not(feature = "cuda"))]
pub type OnGpu = DeviceModel<crate::kernels::backend::host::Host>;

/// `model` on GPU `ordinal`.
#[cfg(feature = "cuda")]
pub fn open_gpu(ordinal: usize, model: &Transformer) -> Result<OnGpu> {
    if let Some(s) = &model.config.delta_net {
        crate::kernels::cuda::ops::gated_delta::check_shape(s).map_err(anyhow::Error::msg)?;
    }
    DeviceModel::new(crate::kernels::cuda::backend::Cuda::open(ordinal)?, model)
}

/// Without the `cuda` feature: says how to get a build with it.
#[cfg(not(feature = "cuda"))]
pub fn open_gpu(_ordinal: usize, _model: &Transformer) -> Result<OnGpu> {
    bail!(
        "this condlm was built without CUDA: build it with `cargo build --release --features cuda` (no CUDA toolkit \
         is needed to build; the driver and libraries are loaded when it runs)"
    )
}

/// The RoPE table layer `i` rotates with: the sliding layers' own when the model has one (Gemma 3).
fn layer_rope<'a, R>(c: &Config, rope: &'a R, local: &'a Option<R>, i: usize) -> &'a R {
    match local {
        Some(local) if c.local_rope(i) => local,
        _ => rope,
    }
}

/// Decoding steps of up to this many rows are recorded as graphs ([`DeviceModel::decode_blocks`]): one row per
/// running sequence; a longer prefill is compute-bound, and each distinct count would be a graph of its own.
const GRAPH_ROWS: usize = 256;

/// Decoding steps' graphs by (rows, rows attending over the cache): None for a key seen once, not yet recorded.
type StepGraphs<G> = HashMap<(usize, usize), Option<G>>;

/// A decoding pass's cache, and how many of its first rows attend over it ([`cache_split`]).
struct Decoding<'a, B: Backend> {
    cache: &'a mut DevKvCache<B>,
    cached_rows: usize,
}

impl<B: Backend> Decoding<'_, B> {
    fn reborrow(&mut self) -> Decoding<'_, B> {
        Decoding { cache: self.cache, cached_rows: self.cached_rows }
    }
}

/// Where a decoding pass's rows split: rows `k..` continue prompts that start at position 0 in this pass (each
/// slot's rows consecutive, at positions 0, 1, …: prompts admitted in this pass, or a LongRoPE sequence run again),
/// so they see only keys of this pass and attend as a packed batch; rows `..k` (running sequences' steps, which
/// the generator puts first) attend over the cache. Returns k (the row count when no row starts a prompt) and every
/// row's first row of its sequence — a packed batch's `seq_start`, a cached row's being itself.
fn cache_split(positions: &[u32], slots: &[u32]) -> (usize, Vec<u32>) {
    let n = positions.len();
    // The suffix may start at any prompt's first row after the last row that neither starts a prompt nor continues
    // the row before it.
    let continues = |i: usize| i > 0 && slots[i - 1] == slots[i] && positions[i - 1] + 1 == positions[i];
    let after = (0..n).rev().find(|&i| positions[i] != 0 && !continues(i)).map_or(0, |i| i + 1);
    let k = (after..n).find(|&i| positions[i] == 0).unwrap_or(n);
    let mut starts: Vec<u32> = (0..n as u32).collect();
    for i in k + 1..n {
        if positions[i] != 0 {
            starts[i] = starts[i - 1];
        }
    }
    (k, starts)
}

/// Decoding rows inside the vocabulary and the cache, checked on the host: a recorded graph's launches check
/// nothing when they are replayed.
fn check_rows<B: Backend>(rows: &[Row], vocab: usize, cache: &DevKvCache<B>) -> Result<()> {
    for r in rows {
        if r.token as usize >= vocab || r.slot as usize >= cache.slots || r.pos as usize >= cache.capacity {
            bail!(
                "decoding row (token {}, sequence {}, position {}) is outside the vocabulary ({vocab}) or the cache \
                 ({} sequences of {} positions)",
                r.token,
                r.slot,
                r.pos,
                cache.slots,
                cache.capacity
            );
        }
    }
    Ok(())
}

/// The model on a device, with the buffers of its largest batch so far.
pub struct DeviceModel<B: Backend> {
    pub backend: B,
    config: Config,
    norm_offset: f32,
    embed_scale: Option<f32>,
    layouts: Vec<crate::kernels::attention::QkvLayout>,
    weights: Weights<B>,
    rope: B::Rope,
    /// The sliding layers' table when they rotate with their own base (Gemma 3).
    rope_local: Option<B::Rope>,
    bufs: Option<Buffers<B>>,
    /// Rows of the current batch, and its token ids and positions on the host (the embeddings' backward groups rows
    /// by them).
    n: usize,
    tokens: Vec<u32>,
    positions: Vec<u32>,
    /// LongRoPE's table rows of the batch and their scratch (`set_rope_rows`), on the host.
    rope_rows: Vec<u32>,
    rope_longest: Vec<u32>,
    /// A packed batch's sequences and their table for the Gated DeltaNet (`kernels::gated_delta::seq_table`), on
    /// the host.
    seqs: Vec<(usize, usize)>,
    seq_table: Vec<u32>,
    /// Decoding's KV cache ([`Self::start_decoding`]).
    cache: Option<DevKvCache<B>>,
    /// Decoding steps' blocks recorded as graphs, by row count and how many rows attend over the cache
    /// ([`Self::decode_blocks`]); None once the backend records none.
    graphs: Option<StepGraphs<B::Graph>>,
    /// How [`Self::sum_grads`] sums over ranks, and its packing buffer with its length.
    rank_sums: Box<dyn RankSums<B>>,
    rank_flat: Option<(B::F32, usize)>,
    /// [`Self::grad_sq`]'s per-tensor sums on the device, and the host copy it reads them into (one per trainable
    /// tensor: which tensors train is fixed at upload).
    grad_sums: B::F64,
    grad_sums_host: Vec<f64>,
}

impl<B: Backend> DeviceModel<B> {
    /// Uploads `model` (its base, adapters and their trainability) to `backend`.
    pub fn new(backend: B, model: &Transformer) -> Result<Self> {
        let c = model.config.clone();
        let rope = backend.upload_rope(&c.rope_table(c.max_positions))?;
        let local = c.rope_local_inv_freq().map(|f| backend.upload_rope(&RopeTable::new(&f, c.max_positions)));
        let weights = Weights::upload(&backend, model)?;
        let trained = weights.tensors().filter(|t| t.train.is_some()).count();
        Ok(DeviceModel {
            grad_sums: backend.alloc_f64(trained)?,
            grad_sums_host: vec![0.0; trained],
            norm_offset: model.norm_offset(),
            embed_scale: model.embed_scale(),
            layouts: (0..c.num_layers).map(|i| model.layout(i)).collect(),
            config: c,
            weights,
            rope,
            rope_local: local.transpose()?,
            backend,
            bufs: None,
            n: 0,
            tokens: vec![],
            positions: vec![],
            rope_rows: vec![],
            rope_longest: vec![],
            seqs: vec![],
            seq_table: vec![],
            cache: None,
            graphs: Some(HashMap::new()),
            rank_sums: Box::new(ThroughHost::default()),
            rank_flat: None,
        })
    }

    /// How the gradients are summed over ranks from now on (through host memory unless set).
    pub fn set_rank_sums(&mut self, sums: Box<dyn RankSums<B>>) {
        self.rank_sums = sums;
    }

    /// Data-parallel: every trainable tensor's gradient ← its sum over the ranks of `world`, in buckets of up to
    /// `bucket_values` values (every rank calls it after its backward passes of the step).
    pub fn sum_grads(&mut self, world: &dyn Collectives, bucket_values: usize) -> Result<()> {
        let (be, w, flat) = (&self.backend, &mut self.weights, &mut self.rank_flat);
        rank_sums::sum_grads(be, w, flat, &mut *self.rank_sums, world, bucket_values)
    }

    /// Training buffers for micro-batches of up to `rows` rows starting up to `checkpoints` 16-row chunks, allocated
    /// now rather than by the first step that needs them (the recurrence's saved states only where the model has a
    /// Gated DeltaNet).
    pub fn reserve(&mut self, rows: usize, checkpoints: usize) -> Result<()> {
        let checkpoints = if self.config.delta_net.is_some() { checkpoints } else { 0 };
        self.prepare(rows, true, checkpoints)
    }

    /// Buffers for `rows` rows, and for training `checkpoints` saved states per Gated DeltaNet head (reallocated
    /// only for a larger batch, or for training after inference).
    fn prepare(&mut self, rows: usize, training: bool, checkpoints: usize) -> Result<()> {
        let fits = self.bufs.as_ref().is_some_and(|b| {
            b.capacity >= rows && (b.training || !training) && (!training || b.checkpoints >= checkpoints)
        });
        if !fits {
            self.forget_graphs(); // they name the old buffers
            // Training buffers stay training buffers (an evaluation during a run that outgrows them must not leave
            // the next step to make them again), for at least as many saved states.
            let old = self.bufs.take().map(|b| (b.training, b.checkpoints)); // the old ones freed first
            let (training, checkpoints) = match old {
                Some((true, kept)) => (true, checkpoints.max(kept)),
                _ => (training, checkpoints),
            };
            let capacity = rows.next_multiple_of(64);
            let (be, c, w) = (&self.backend, &self.config, &self.weights);
            // Batches of the same rows vary in how many sequences they pack (a state per 16 rows of each): a
            // quarter to spare, so that a later step rarely makes the buffers anew.
            let checkpoints = (checkpoints + checkpoints / 4).max(capacity / CHUNK).next_multiple_of(8);
            self.bufs = Some(Buffers::new(be, c, w, capacity, training, checkpoints)?);
        }
        Ok(())
    }

    /// Runs a packed batch; `step_seed` is Some while training (LoRA dropout on, every block's activations kept).
    /// Afterwards the final-normed hidden states are on the device for [`Self::target_logprobs`] and
    /// [`Self::loss_backward`].
    pub fn forward(&mut self, batch: &PackedBatch, step_seed: Option<u64>) -> Result<()> {
        batch.check(&self.config)?;
        let checkpoints = match self.config.delta_net {
            Some(_) => {
                sequences(&mut self.seqs, &batch.seq_start);
                seq_table(&mut self.seq_table, &self.seqs);
                checkpoints(&self.seqs)
            }
            None => 0,
        };
        self.prepare(batch.len(), step_seed.is_some(), checkpoints)?;
        let bufs = self.bufs.as_mut().expect("prepared");
        self.backend.upload_u32(&mut bufs.seq_start, &batch.seq_start)?;
        if self.config.delta_net.is_some() {
            self.backend.upload_u32(&mut bufs.delta_seqs, &self.seq_table)?;
        }
        self.upload_rows(&batch.tokens, &batch.positions, &batch.seq_start)?;
        self.run_blocks(step_seed, None)
    }

    /// A pass's rows to the device: token ids, positions and (LongRoPE) their rows of the RoPE table. The batch's
    /// `seq_start` (packed) or `slots` (decoding) are there already; `seq_keys` are they on the host.
    fn upload_rows(&mut self, tokens: &[u32], positions: &[u32], seq_keys: &[u32]) -> Result<()> {
        self.n = tokens.len();
        self.tokens.clear();
        self.tokens.extend_from_slice(tokens);
        self.positions.clear();
        self.positions.extend_from_slice(positions);
        let (be, c) = (&self.backend, &self.config);
        let bufs = self.bufs.as_mut().expect("prepared");
        be.upload_u32(&mut bufs.tokens, tokens)?;
        be.upload_u32(&mut bufs.positions, positions)?;
        let long_after = c.longrope.as_ref().map(|l| l.original_max_positions);
        if long_after.is_some() {
            let (rows, longest) = (&mut self.rope_rows, &mut self.rope_longest);
            set_rope_rows(rows, longest, positions, seq_keys, long_after, c.max_positions);
            be.upload_u32(&mut bufs.rope_rows, rows)?;
        }
        Ok(())
    }

    /// The block loop of every pass (as `Transformer::run_blocks`) on the uploaded rows: embeddings, each block —
    /// attending within the packed batch, or over `cache` when decoding — then the final norm into `hidden`. Only
    /// launches: no allocation, no copy to or from the host (so a decoding step's can be recorded as a graph).
    fn run_blocks(&mut self, step_seed: Option<u64>, mut decoding: Option<Decoding<B>>) -> Result<()> {
        let (be, c, w, n) = (&self.backend, &self.config, &self.weights, self.n);
        let bufs = self.bufs.as_mut().expect("prepared");
        let d = c.hidden_size;
        let long_after = c.longrope.as_ref().map(|l| l.original_max_positions);
        be.embedding(&mut bufs.x, &w.embed.w, &bufs.tokens, n, d, self.embed_scale)?;
        if let Some(p) = &w.pos_embed {
            // GPT-2: x += the positions' rows, gathered into `hidden` (free until the final norm).
            be.embedding(&mut bufs.hidden, &p.w, &bufs.positions, n, d, None)?;
            be.add(&mut bufs.x, &bufs.hidden, n * d)?;
        }
        // Each row's row of the RoPE table: its position, or LongRoPE's row.
        let rope_rows = if long_after.is_some() { &bufs.rope_rows } else { &bufs.positions };
        for (i, blk) in w.blocks.iter().enumerate() {
            let args = BlockArgs {
                n,
                hidden: d,
                ffn: c.intermediate_size,
                layout: self.layouts[i],
                norm_offset: self.norm_offset,
                norm_eps: c.norm_eps,
                act: c.mlp_act,
                qk_norm_whole: c.qk_norm_whole,
                attn_output_gate: c.attn_output_gate,
                delta_net: c.delta_net,
                delta_seqs: &bufs.delta_seqs,
                n_seqs: self.seqs.len(),
                rope: c.rope_in(i).then_some((layer_rope(c, &self.rope, &self.rope_local, i), rope_rows)),
                seq_start: &bufs.seq_start,
                seed: step_seed.map(|s| layer_seed(s, i)),
            };
            let attend = match decoding.as_mut() {
                None => Attend::Packed,
                Some(Decoding { cache, cached_rows }) => {
                    let (capacity, layer) = (cache.capacity, &mut cache.layers[i]);
                    let (slots, positions, cached_rows) = (&bufs.slots, &bufs.positions, *cached_rows);
                    match layer {
                        LayerCache::Attention { k, v } => {
                            Attend::Cached { k, v, slots, positions, capacity, cached_rows }
                        }
                        LayerCache::Recurrent { conv, state } => Attend::Recurrent { conv, state, slots, positions },
                    }
                }
            };
            // A training pass's buffers hold a layer per block (each with its own LoRA slots), and an inference
            // pass may run on them; inference-sized buffers hold one layer that serves every block.
            let l = &mut bufs.layers[if bufs.training { i } else { 0 }];
            blk.forward(be, &mut bufs.x, l, &mut bufs.linear, &mut bufs.wide, &args, attend)?;
        }
        be.copy(&mut bufs.x_final_in, &bufs.x, n * d)?;
        let (off, eps) = (self.norm_offset, c.norm_eps);
        let (mean, rstd) = (&mut bufs.final_mean, &mut bufs.final_rstd);
        w.final_norm.forward(be, &mut bufs.hidden, mean, rstd, &bufs.x, n, d, off, eps)
    }

    /// Allocates the KV cache of decoding: `slots` sequences of `capacity` positions.
    pub fn start_decoding(&mut self, slots: usize, capacity: usize) -> Result<()> {
        self.forget_graphs(); // they name the old cache
        self.cache = None; // free an earlier one first
        self.cache = Some(DevKvCache::new(&self.backend, &self.config, slots, capacity)?);
        Ok(())
    }

    /// Drops the recorded decoding graphs (before the buffers they name go).
    fn forget_graphs(&mut self) {
        if let Some(g) = &mut self.graphs {
            g.clear();
        }
    }

    /// Runs decoding rows over the KV cache (their k, v land in it; rows checked by the caller, as `Decoder`
    /// does) and writes the logits of the rows `logit_rows` (indices into `rows`) into out (logit_rows.len(),
    /// vocab).
    pub fn decode(&mut self, rows: &[Row], logit_rows: &[usize], out: &mut [f32]) -> Result<()> {
        let mut cache = self.cache.take().expect("start_decoding before decode");
        let r = self.decode_with(rows, logit_rows, out, &mut cache);
        self.cache = Some(cache);
        r
    }

    fn decode_with(
        &mut self,
        rows: &[Row],
        logit_rows: &[usize],
        out: &mut [f32],
        cache: &mut DevKvCache<B>,
    ) -> Result<()> {
        check_rows(rows, self.config.vocab_size, cache)?;
        let mut tokens: Vec<u32> = rows.iter().map(|r| r.token).collect();
        let mut positions: Vec<u32> = rows.iter().map(|r| r.pos).collect();
        let mut slots: Vec<u32> = rows.iter().map(|r| r.slot).collect();
        for r in rows {
            cache.write_token(r.slot, r.pos, r.token);
        }
        if let Some(l) = &self.config.longrope {
            // A sequence outgrowing the short set runs again from its start, its earlier tokens as rows after
            // these (the logit rows index the first ones), as the CPU decoder does.
            let cached = |slot, pos| cache.token(slot, pos);
            rerun_outgrown(&mut tokens, &mut positions, &mut slots, l.original_max_positions, cached);
        }
        self.prepare(tokens.len(), false, 0)?;
        let bufs = self.bufs.as_mut().expect("prepared");
        self.backend.upload_u32(&mut bufs.slots, &slots)?;
        let (cached_rows, starts) = cache_split(&positions, &slots);
        if cached_rows < tokens.len() {
            self.backend.upload_u32(&mut bufs.seq_start, &starts)?;
        }
        self.upload_rows(&tokens, &positions, &slots)?;
        self.decode_blocks(Decoding { cache, cached_rows })?;
        let (be, c, head) = (&self.backend, &self.config, self.weights.head());
        let bufs = self.bufs.as_mut().expect("prepared");
        let (d, vocab) = (c.hidden_size, c.vocab_size);
        let per = HEAD_ROWS.min(bufs.capacity);
        for (k, chunk) in logit_rows.chunks(per).enumerate() {
            let (m, idx): (usize, Vec<u32>) = (chunk.len(), chunk.iter().map(|&r| r as u32).collect());
            be.upload_u32(&mut bufs.head.idx, &idx)?;
            be.gather_rows(&mut bufs.head.rows, &bufs.hidden, &bufs.head.idx, m, d)?;
            let (mv, hv, lv) = (MatView::dense(m, d), MatView::dense(vocab, d), MatView::dense(m, vocab));
            head.product(
                be,
                ValuesMut::F32(&mut bufs.head.logits),
                lv,
                Values::F32(&bufs.head.rows),
                mv,
                hv.t(),
                false,
            )?;
            be.download(&bufs.head.logits, &mut out[k * per * vocab..][..m * vocab])?;
        }
        Ok(())
    }

    /// A decoding step's [`Self::run_blocks`] on its uploaded rows: run as ops the first time a step has its
    /// number of rows, recorded as a graph the second time (the first has made whatever the ops grow, such as
    /// cuBLAS's plans), then replayed — one launch instead of hundreds, whose launch costs a small model's decoding
    /// step is mostly made of. Graph or not, the same kernels run on the same buffers. A graph that cannot be
    /// recorded turns them off for this model, with a warning; the step then runs as ops.
    fn decode_blocks(&mut self, mut d: Decoding<B>) -> Result<()> {
        // Which attention kernel runs is part of what is recorded.
        let key = (self.n, d.cached_rows);
        let Some(graphs) = self.graphs.as_mut().filter(|_| key.0 <= GRAPH_ROWS) else {
            return self.run_blocks(None, Some(d));
        };
        match graphs.get(&key) {
            Some(Some(g)) if self.backend.replay(g)? => return Ok(()),
            Some(_) => {} // seen once, or recorded before the backend's scratch moved: record it (again)
            None => {
                self.run_blocks(None, Some(d))?;
                // Noted only once it ran: what the ops grow has grown, so the next such step can be recorded.
                if let Some(g) = &mut self.graphs {
                    g.insert(key, None);
                }
                return Ok(());
            }
        }
        if !self.backend.begin_capture()? {
            self.graphs = None;
            return self.run_blocks(None, Some(d));
        }
        let recorded = self.run_blocks(None, Some(d.reborrow()));
        // Ended whatever happened, so the stream leaves capture mode.
        let graph = self.backend.end_capture();
        let replayed = recorded.and(graph).and_then(|g| match self.backend.replay(&g)? {
            true => Ok(g),
            false => bail!("the graph was stale as soon as it was recorded"),
        });
        match replayed {
            Ok(g) => {
                self.graphs.as_mut().expect("on").insert(key, Some(g));
                Ok(())
            }
            Err(e) => {
                eprintln!(
                    "warning: {}: decoding without CUDA graphs, which could not be recorded: {e:#} \
                     (CONDLM_CUDA_GRAPHS=0 does not try)",
                    self.backend.name()
                );
                self.graphs = None;
                self.run_blocks(None, Some(d))
            }
        }
    }

    /// Positions 0..len of cache slot `from` copied into slot `to` (beam search).
    pub fn copy_slot(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        let cache = self.cache.as_mut().expect("start_decoding before copy_slot");
        cache.copy_slot(&self.backend, from, to, len)
    }

    /// The LM head over the selected rows, HEAD_ROWS at a time: gathers them, computes their logits, and hands
    /// `visit(backend, buffers, head tensor, first row of the chunk, rows in it)` the chunk after the loss rows ran
    /// (`cross_entropy_rows` with `token_weight`, `label_smoothing`: dlogits in `head.logits`, or in bf16 in
    /// `head.dlogits_bf16` where that has room; the losses of every chunk gather in `head.loss`, rows[k]'s at k, to
    /// be read once — a read waits for the GPU).
    fn head_chunks(
        &mut self,
        rows: &[usize],
        targets: &[u32],
        token_weight: f32,
        label_smoothing: f32,
        mut visit: impl FnMut(&B, &mut Buffers<B>, &mut DevTensor<B>, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let (be, c, head) = (&self.backend, &self.config, self.weights.head_mut());
        let bufs = self.bufs.as_mut().expect("a forward pass first");
        let (d, vocab) = (c.hidden_size, c.vocab_size);
        let mut idx = Vec::with_capacity(HEAD_ROWS);
        for (k, chunk) in rows.chunks(HEAD_ROWS.min(bufs.capacity)).enumerate() {
            let m = chunk.len();
            idx.clear();
            idx.extend(chunk.iter().map(|&r| r as u32));
            let start = k * HEAD_ROWS.min(bufs.capacity);
            be.upload_u32(&mut bufs.head.idx, &idx)?;
            be.upload_u32(&mut bufs.head.targets, &targets[start..start + m])?;
            be.gather_rows(&mut bufs.head.rows, &bufs.hidden, &bufs.head.idx, m, d)?;
            let (mv, hv) = (MatView::dense(m, d), MatView::dense(vocab, d));
            let (logits, rows) = (ValuesMut::F32(&mut bufs.head.logits), Values::F32(&bufs.head.rows));
            head.product(be, logits, MatView::dense(m, vocab), rows, mv, hv.t(), false)?;
            let bf16 = bufs.bf16_dlogits();
            let (h, w, eps) = (&mut bufs.head, token_weight, label_smoothing);
            match bf16 {
                true => be.cross_entropy_rows_bf16(
                    &h.logits,
                    &mut h.dlogits_bf16,
                    &mut h.loss,
                    start,
                    &h.targets,
                    m,
                    vocab,
                    w,
                    eps,
                )?,
                false => be.cross_entropy_rows(&mut h.logits, &mut h.loss, start, &h.targets, m, vocab, w, eps)?,
            }
            visit(be, bufs, head, start, m)?;
        }
        Ok(())
    }

    /// log P(targets[k] | row rows[k]) into out[k], after a forward pass.
    pub fn target_logprobs(&mut self, rows: &[usize], targets: &[u32], out: &mut [f32]) -> Result<()> {
        self.head_chunks(rows, targets, 1.0, 0.0, |_, _, _, _, _| Ok(()))?;
        let mut loss = vec![0.0f64; rows.len()];
        self.backend.download_f64(&self.bufs.as_ref().expect("a forward pass first").head.loss, &mut loss)?;
        for (o, l) in out.iter_mut().zip(&loss) {
            *o = -*l as f32;
        }
        Ok(())
    }

    /// After a training forward pass: the LM head's cross-entropy on the selected rows (as
    /// `kernels::lm_head::cross_entropy_backward`, each token's loss weighted by `token_weight` in the
    /// gradient), then the backward pass through every block; LoRA gradients accumulate. Returns the summed
    /// unweighted loss.
    pub fn loss_backward(
        &mut self,
        rows: &[usize],
        targets: &[u32],
        token_weight: f32,
        label_smoothing: f32,
    ) -> Result<f64> {
        let (n, d) = (self.n, self.config.hidden_size);
        {
            let bufs = self.bufs.as_mut().expect("a forward pass first");
            let g = bufs.grads.as_mut().expect("a training forward pass first");
            self.backend.zero(&mut g.dhidden, n * d)?;
        }
        let vocab = self.config.vocab_size;
        self.head_chunks(rows, targets, token_weight, label_smoothing, |be, bufs, head, _, m| {
            let bf16 = bufs.bf16_dlogits();
            let h = &mut bufs.head;
            let (mv, lv, hv) = (MatView::dense(m, d), MatView::dense(m, vocab), MatView::dense(vocab, d));
            let dlogits = if bf16 { Values::Bf16(&h.dlogits_bf16) } else { Values::F32(&h.logits) };
            if let Some(g) = head.train.as_mut().map(|t| &mut t.g) {
                // dhead (vocab, d) += dlogitsᵀ · rows
                match dlogits {
                    Values::F32(dl) => be.gemm_weights(g, hv, dl, lv.t(), &h.rows, mv, true)?,
                    dl => be.gemm_bf16(ValuesMut::F32(g), hv, dl, lv.t(), Values::F32(&h.rows), mv, 1.0, true)?,
                }
            }
            // dlogits · head, into the gathered rows (no longer needed), then added to their rows of dhidden.
            head.product(be, ValuesMut::F32(&mut h.rows), mv, dlogits, lv, hv, false)?;
            let g = bufs.grads.as_mut().expect("training buffers");
            be.scatter_add_rows(&mut g.dhidden, &h.rows, &h.idx, m, d)
        })?;
        self.backward()?;
        // Read after the backward pass is queued, so the GPU is not left idle while the host waits. Summed chunk by
        // chunk.
        let mut loss = vec![0.0f64; rows.len()];
        self.backend.download_f64(&self.bufs.as_ref().expect("a forward pass first").head.loss, &mut loss)?;
        let chunk = HEAD_ROWS.min(self.bufs.as_ref().expect("a forward pass first").capacity);
        Ok(loss.chunks(chunk).map(|c| c.iter().sum::<f64>()).sum())
    }

    /// The blocks' backward pass from `dhidden`.
    fn backward(&mut self) -> Result<()> {
        let (be, c, n) = (&self.backend, &self.config, self.n);
        let bufs = self.bufs.as_mut().expect("a forward pass first");
        let d = c.hidden_size;
        let g = bufs.grads.as_mut().expect("a training forward pass first");
        be.zero(&mut g.dx, n * d)?;
        let (w, off) = (&mut self.weights, self.norm_offset);
        let (mean, rstd) = (&bufs.final_mean, &bufs.final_rstd);
        w.final_norm.backward(be, &mut g.dx, &g.dhidden, &bufs.x_final_in, mean, rstd, n, d, off)?;
        let rope_rows = if c.longrope.is_some() { &bufs.rope_rows } else { &bufs.positions };
        for i in (0..w.blocks.len()).rev() {
            let args = BlockArgs {
                n,
                hidden: d,
                ffn: c.intermediate_size,
                layout: self.layouts[i],
                norm_offset: off,
                norm_eps: c.norm_eps,
                act: c.mlp_act,
                qk_norm_whole: c.qk_norm_whole,
                attn_output_gate: c.attn_output_gate,
                delta_net: c.delta_net,
                delta_seqs: &bufs.delta_seqs,
                n_seqs: self.seqs.len(),
                rope: c.rope_in(i).then_some((layer_rope(c, &self.rope, &self.rope_local, i), rope_rows)),
                seq_start: &bufs.seq_start,
                seed: None,
            };
            w.blocks[i].backward(be, &mut bufs.layers[i], g, &mut bufs.linear, &mut bufs.wide, &args)?;
        }
        let pos = w.pos_embed.as_mut().and_then(|p| p.train.as_mut());
        if let (Some(s), true) = (self.embed_scale, w.embed.train.is_some() || pos.is_some()) {
            be.scale_in_place(&mut g.dx, n * d, s)?;
        }
        if let Some(t) = &mut w.embed.train {
            be.embedding_backward(&mut t.g, &g.dx, &bufs.tokens, &self.tokens, n, d)?;
        }
        if let Some(t) = pos {
            be.embedding_backward(&mut t.g, &g.dx, &bufs.positions, &self.positions, n, d)?;
        }
        Ok(())
    }

    /// Σ g² over every trainable tensor (f64), in parameter order: the gradient norm's square. Each tensor's sum
    /// goes to its slot of a device buffer, read back once.
    pub fn grad_sq(&mut self) -> Result<f64> {
        let xs: Vec<_> = self.weights.tensors().filter_map(|t| t.train.as_ref().map(|g| (&g.g, t.len))).collect();
        self.backend.sum_squares(&mut self.grad_sums, &xs)?;
        self.backend.download_f64(&self.grad_sums, &mut self.grad_sums_host)?;
        Ok(self.grad_sums_host.iter().sum())
    }

    /// One AdamW step of every trainable tensor at learning rate `lr`, 1-based step `t` (weight decay on
    /// matrices only), from the gradients scaled by `clip` if any (as scaling them first would), then the gradients
    /// zeroed.
    pub fn adamw(&mut self, cfg: &AdamWConfig, lr: f64, t: u64, clip: Option<f32>) -> Result<()> {
        let decay = AdamWScalars::new(cfg, lr, t);
        let mut tensors: Vec<AdamWTensor<B>> = self
            .weights
            .tensors_mut()
            .filter_map(|p| {
                let t = p.train.as_mut()?;
                p.grad_zero = true; // the step zeroes every gradient
                // A trained matrix's bf16 copy is made from its new values (frozen ones have no f32 values).
                let (w, bf16, n, decays) = (&mut p.w, p.bf16.as_mut(), p.len, p.decays);
                Some(AdamWTensor { w, g: &mut t.g, m: &mut t.m, v: &mut t.v, n, decays, bf16 })
            })
            .collect();
        self.backend.adamw(&mut tensors, clip.unwrap_or(1.0), &decay)
    }

    /// Where it runs.
    pub fn name(&self) -> String {
        self.backend.name()
    }

    /// Seconds the host has waited for the device in reads so far (`Backend::waited_s`).
    pub fn waited_s(&self) -> f64 {
        self.backend.waited_s()
    }

    /// AdamW's moments (m, v) of every trainable tensor, in parameter order.
    pub fn moments(&self) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        let mut out = vec![];
        for (t, g) in self.weights.tensors().filter_map(|t| t.train.as_ref().map(|g| (t, g))) {
            let (mut m, mut v) = (vec![0.0; t.len], vec![0.0; t.len]);
            self.backend.download(&g.m, &mut m)?;
            self.backend.download(&g.v, &mut v)?;
            out.push((m, v));
        }
        Ok(out)
    }

    /// Replaces every trainable tensor's values with `model`'s (by name) and its moments with `moments` (in
    /// parameter order): a resumed run's state.
    pub fn set_state(&mut self, model: &mut Transformer, moments: &[(&[f32], &[f32])]) -> Result<()> {
        let host = model.params_mut();
        let trainables: Vec<_> = self.weights.tensors_mut().filter(|t| t.train.is_some()).collect();
        if trainables.len() != moments.len() {
            bail!("{} sets of moments for {} trainable tensors", moments.len(), trainables.len());
        }
        for (t, (m, v)) in trainables.into_iter().zip(moments) {
            let Some(p) = host.iter().find(|p| p.name == t.name) else {
                bail!("the device holds {} but the model has no such tensor", t.name)
            };
            let g = t.train.as_mut().expect("filtered");
            self.backend.upload(&mut t.w, &p.data)?;
            self.backend.upload(&mut g.m, m)?;
            self.backend.upload(&mut g.v, v)?;
            t.refresh_bf16(&self.backend)?;
        }
        Ok(())
    }

    /// Copies every trainable tensor's values — and its gradient into the host's gradient buffer when
    /// `with_grads` — into `model` (the one it was uploaded from), by name.
    pub fn download_into(&self, model: &mut Transformer, with_grads: bool) -> Result<()> {
        let mut host = model.params_mut();
        for (t, tg) in self.weights.tensors().filter_map(|t| t.train.as_ref().map(|g| (t, g))) {
            let Some(p) = host.iter_mut().find(|p| p.name == t.name) else {
                bail!("the device holds {} but the model has no such tensor", t.name)
            };
            self.backend.download(&t.w, &mut p.data)?;
            if let (true, Some(g)) = (with_grads, p.grad.as_mut()) {
                self.backend.download(&tg.g, g)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_rows_split_into_cached_steps_and_packed_prompts() {
        // Whole prompts only: all packed.
        assert_eq!(cache_split(&[0, 1, 2, 0, 1], &[3, 3, 3, 1, 1]), (0, vec![0, 0, 0, 3, 3]));
        assert_eq!(cache_split(&[0], &[2]), (0, vec![0]));
        // Steps only: all cached.
        assert_eq!(cache_split(&[5, 9], &[0, 1]), (2, vec![0, 1]));
        // Steps, then prompts admitted beside them (the generator's order).
        assert_eq!(cache_split(&[5, 9, 0, 1, 0], &[0, 1, 2, 2, 3]), (2, vec![0, 1, 2, 2, 4]));
        // A LongRoPE rerun: slot 0's step at 3, its positions 0..3 again after it.
        assert_eq!(cache_split(&[3, 7, 0, 1, 2], &[0, 1, 0, 0, 0]), (2, vec![0, 1, 2, 2, 2]));
        // Rows after a prompt that do not continue it (a gap, another slot) keep everything before them cached.
        for (p, s, k) in [(&[0, 2][..], &[0, 0][..], 2), (&[0, 1], &[0, 1], 2), (&[0, 5, 0], &[0, 1, 2], 2)] {
            assert_eq!(cache_split(p, s).0, k, "{p:?} {s:?}");
        }
    }

    #[test]
    fn placements_parse_and_print() {
        let all = [("cpu", Placement::Cpu), ("cuda", Placement::Cuda(0)), ("cuda:3", Placement::Cuda(3))];
        for (s, p) in all.into_iter().chain([("reference", Placement::Reference)]) {
            assert_eq!(s.parse(), Ok(p));
        }
        assert_eq!(Placement::Cuda(3).to_string(), "cuda:3");
        assert!("cuda:x".parse::<Placement>().unwrap_err().contains("not a GPU number"));
        assert!("gpu".parse::<Placement>().unwrap_err().contains("cpu, cuda, cuda:N or reference"));
    }
}
