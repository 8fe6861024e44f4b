//! The optimizer step the training loop drives: micro-batches → exact token-weighted loss and
//! gradients → clipping → AdamW → schedule. State export/import makes checkpoints exact.
//!
//! Data-parallel (`step_on` with several ranks): every rank holds the step's rows and takes its shard of each
//! micro-batch; each y token is still weighted by 1 / (y tokens of the whole step), counted on all rows, so the
//! gradients summed over ranks are the single-process gradients up to summation order. The sums run in buckets,
//! after the backward pass or, as an option, during the last micro-batch's ([`super::grad_sums`]).
//!
//! ZeRO stage 1 ([`Trainer::shard_optimizer`]): the trainable elements, in model order, are split into one
//! contiguous part per rank; a rank keeps the AdamW moments of its part only, updates only those values, then
//! every part is broadcast from its owner. AdamW is element-wise, so the values are those of the unsharded run.
use super::grad_sums::{GradSumOptions, GradSums};
use super::objective::{ObjectiveScratch, forward_backward, forward_backward_with};
use super::on_device::{DeviceStep, OnDevice};
use super::optim::{
    AdamWConfig, Moments, NORM_CHUNK, adamw_update, adamw_update_slice, add_grad_sq, clip_coef, scale_grad,
};
use super::schedule::{Schedule, lr_factor};
use crate::data::example::Example;
use crate::distributed::{Collectives, Everywhere, Single, shard};
use crate::kernels::gated_delta::CHUNK;
use crate::network::transformer::Transformer;
use crate::score::{OnCpu, Scorer, score_encoded};
use anyhow::{Result, anyhow, bail};
use std::borrow::Borrow;
use std::ops::Range;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip; None = no clipping.
    pub max_grad_norm: Option<f64>,
    pub label_smoothing: f32,
    pub seed: u64,
    /// Activation checkpointing (see [`ObjectiveScratch::recompute_activations`]).
    pub checkpoint_activations: bool,
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Σ y-token loss / Σ y tokens over all micro-batches of the step.
    pub loss: f64,
    pub y_tokens: usize,
    /// Tokens processed (x and y).
    pub tokens: usize,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// Seconds spent on collectives outside the computation (gradient sums: packing, polling, waiting,
    /// unpacking; ZeRO-1 broadcasts); 0 on one process. With the sums overlapped, this includes waiting for the
    /// slowest rank.
    pub comm_s: f64,
    /// Seconds this rank waited for the slowest rank to finish its micro-batches (a barrier before the sums when
    /// they are not overlapped; 0 otherwise).
    pub wait_s: f64,
    /// On a device: seconds the host waited for it in the step's reads (each micro-batch's loss, the gradient
    /// norm, gradients summed through the host); near 0, the host's launches bound the step (`Backend::waited_s`).
    /// 0 on the reference backend, None on the CPU path.
    pub device_wait_s: Option<f64>,
}

/// Trainable tensors, their moments and the step counter — everything a checkpoint needs
/// besides the frozen base.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    pub step: u64,
    /// (name, values, moments) of each trainable tensor, in model order.
    pub tensors: Vec<(String, Vec<f32>, Moments)>,
}

pub struct Trainer {
    pub model: Transformer,
    pub cfg: TrainConfig,
    /// Optimizer steps taken.
    pub step: u64,
    /// AdamW moments of each trainable tensor, in model order (under ZeRO-1, of this rank's part of it).
    moments: Vec<Moments>,
    zero1: Option<Zero1>,
    /// The gradient sums of a multi-rank step.
    sums: GradSums,
    scratch: ObjectiveScratch,
    /// Partial sums of the gradient norm (see `optim::add_grad_sq`), sized for the largest tensor.
    norm_partials: Vec<f64>,
    /// Where the steps run when not on the CPU ([`Self::use_device`]).
    device: Option<OnDevice>,
}

impl Trainer {
    /// `model` already has its trainable tensors chosen (gradient buffers present).
    pub fn new(mut model: Transformer, cfg: TrainConfig) -> Result<Self> {
        let (mut moments, mut largest) = (vec![], 0);
        model.for_each_param_mut(|p| {
            if p.is_trainable() {
                moments.push(Moments::zeros(p.data.len()));
                largest = largest.max(p.data.len());
            }
        });
        if moments.is_empty() {
            bail!("nothing to train: no tensor is trainable");
        }
        let norm_partials = vec![0.0; largest.div_ceil(NORM_CHUNK)];
        let mut scratch = ObjectiveScratch::default();
        scratch.recompute_activations = cfg.checkpoint_activations;
        let sums = GradSums::new(GradSumOptions::default());
        Ok(Trainer { model, cfg, step: 0, moments, scratch, norm_partials, zero1: None, sums, device: None })
    }

    /// From now on the steps run on `dev` (the model on a device, made from this trainer's model), starting from
    /// the trainer's values and moments (a resumed run's, after [`Self::import_state`]). One process only.
    pub fn use_device(&mut self, mut dev: Box<dyn DeviceStep>) -> Result<()> {
        if self.zero1.is_some() {
            bail!("--zero1 shards the optimizer over MPI ranks; a run on a device is one process");
        }
        dev.set_state(&mut self.model, &self.moments)?;
        self.device = Some(OnDevice::new(dev));
        Ok(())
    }

    /// On a device: its buffers sized now for micro-batches of up to `rows` tokens whose rows start up to
    /// `checkpoints` 16-row chunks in all (the largest this run forms: [`micro_batch_extent`]), then a forward and
    /// backward pass of `largest` (the run's largest micro-batch) with every token's weight 0 — gradients += 0 — and
    /// `eval` (its largest evaluation batch) scored once, so that the backend's scratch grows to what the run needs
    /// too: a run too large for the device fails before its first step, and no later step or evaluation (a resumed
    /// run's first comes after steps) allocates. Nothing on the CPU path.
    pub fn reserve_device(
        &mut self,
        rows: usize,
        checkpoints: usize,
        largest: &[&Example],
        eval: &[Example],
    ) -> Result<()> {
        let Some(d) = &mut self.device else { return Ok(()) };
        d.step.reserve(rows, checkpoints)?;
        if !largest.is_empty() {
            d.micro_batch(largest, 0.0, 0.0, self.cfg.seed)?;
        }
        if !eval.is_empty() {
            score_encoded(d.step.scorer(), eval, eval.len(), |_| {})?;
        }
        Ok(())
    }

    /// What scores rows with the current weights: the device's model when training on one, else the CPU path.
    pub fn scorer(&mut self) -> Box<dyn Scorer + '_> {
        match &mut self.device {
            Some(d) => Box::new(d.step.scorer()),
            None => Box::new(OnCpu::new(&self.model)),
        }
    }

    /// Brings the trainable values and AdamW moments back from the device into `model` and the trainer (before a
    /// checkpoint or the outputs are written); nothing to do on the CPU, or when nothing changed since.
    pub fn sync_to_host(&mut self) -> Result<()> {
        if let Some(d) = self.device.as_mut().filter(|d| d.host_stale) {
            d.step.download_values(&mut self.model)?;
            self.moments = d.step.moments()?;
            d.host_stale = false;
        }
        Ok(())
    }

    /// How a multi-rank step sums its gradients (the same numbers either way).
    pub fn set_grad_sums(&mut self, options: GradSumOptions) {
        self.sums.options = options;
    }

    /// ZeRO-1 over `world`: from now on this rank keeps (and updates) the moments of its part of the trainable
    /// elements only. Call before [`Self::import_state`] and the first step; every rank calls it.
    pub fn shard_optimizer(&mut self, world: &dyn Collectives) {
        let sizes = self.trainable_sizes();
        let z = Zero1 { total: sizes.iter().sum(), rank: world.rank(), ranks: world.size() };
        let mut at = 0;
        self.moments = sizes
            .iter()
            .map(|&len| {
                let own = z.part(at..at + len, z.rank);
                at += len;
                Moments::zeros(own.len())
            })
            .collect();
        self.zero1 = Some(z);
    }

    fn trainable_sizes(&mut self) -> Vec<usize> {
        self.model.params_mut().into_iter().filter(|p| p.is_trainable()).map(|p| p.data.len()).collect()
    }

    /// One optimizer step over `rows`, in micro-batches of `micro_batch` rows (gradient accumulation). `labels`
    /// name each row (e.g. "data.jsonl:17") for errors. Once the buffers have grown to the step's size, a step
    /// allocates nothing.
    pub fn step<E: Borrow<Example>>(
        &mut self,
        rows: &[E],
        micro_batch: usize,
        labels: &[impl AsRef<str>],
    ) -> Result<StepStats> {
        self.step_on(&Single, rows, micro_batch, labels)
    }

    /// [`Self::step`] as one rank of `world`: every rank passes the same `rows` (the whole step) and computes
    /// its shard of each micro-batch; gradients and loss are summed over ranks before clipping and the update.
    pub fn step_on<E: Borrow<Example>>(
        &mut self,
        world: &dyn Collectives,
        rows: &[E],
        micro_batch: usize,
        labels: &[impl AsRef<str>],
    ) -> Result<StepStats> {
        let y_tokens: usize = rows.iter().map(|e| e.borrow().n_targets()).sum();
        if y_tokens == 0 {
            let names: Vec<&str> = labels.iter().map(|l| l.as_ref()).collect();
            // Every rank holds the whole step's rows: every rank stops here.
            return Err(Everywhere::error(anyhow!(
                "a training step has no completion tokens to learn from (rows: {})",
                names.join(", ")
            )));
        }
        let lr =
            self.cfg.lr * lr_factor(self.cfg.schedule, self.step as usize, self.cfg.warmup_steps, self.cfg.total_steps);
        let waited_before = self.device.as_ref().map(|d| d.step.waited_s());
        let (multi, overlap) = (world.size() > 1, self.sums.options.overlap);
        if multi && self.device.is_none() {
            self.sums.begin(&mut self.model);
        }
        let loss = self.accumulate_gradients(world, rows, micro_batch, 1.0 / y_tokens as f32)?;
        let t0 = Instant::now();
        if multi && !overlap {
            world.barrier();
        }
        let wait_s = t0.elapsed().as_secs_f64();
        let (loss, mut comm_s) = match multi {
            false => (loss, 0.0),
            true => {
                let t0 = Instant::now();
                let grads_s = match &mut self.device {
                    Some(d) => {
                        d.step.sum_grads(world, self.sums.options.bucket_values)?;
                        t0.elapsed().as_secs_f64()
                    }
                    None => {
                        self.sums.finish(world, &mut self.model);
                        self.sums.secs
                    }
                };
                let t0 = Instant::now();
                let loss = world.sum_scalar(loss);
                (loss, grads_s + t0.elapsed().as_secs_f64())
            }
        };
        let grad_norm = self.grad_norm()?;
        if !(grad_norm.is_finite() && loss.is_finite()) {
            let cause = if self.step == 0 {
                "before any update, so the cause is the model (a weight that is NaN or inf, or values that overflow) \
                 or the data, not the learning rate"
            } else {
                "the weights are left as they were after the previous step; the learning rate is likely too high: \
                 lower it, add --warmup-steps, and keep --max-grad-norm on"
            };
            // The summed loss and the norm of the summed gradient: the same on every rank.
            return Err(Everywhere::error(anyhow!(
                "the loss is {loss} and the gradient norm {grad_norm} at step {}: {cause}",
                self.step + 1
            )));
        }
        let clip = self.cfg.max_grad_norm.and_then(|max| clip_coef(grad_norm, max));
        self.update(lr, clip)?;
        let t0 = Instant::now();
        self.broadcast_parts(world);
        comm_s += t0.elapsed().as_secs_f64();
        let tokens = rows.iter().map(|e| e.borrow().ids.len()).sum();
        let device_wait_s = waited_before.zip(self.device.as_ref()).map(|(w, d)| d.step.waited_s() - w);
        Ok(StepStats { loss: loss / y_tokens as f64, y_tokens, tokens, grad_norm, lr, comm_s, wait_s, device_wait_s })
    }

    /// Forward and backward of this rank's shard of every micro-batch, each y token's loss weighted by
    /// `token_weight`; returns Σ per-token loss of the shards. With several ranks and overlap, the backward of
    /// this rank's last non-empty shard starts the gradient sums block by block.
    fn accumulate_gradients<E: Borrow<Example>>(
        &mut self,
        world: &dyn Collectives,
        rows: &[E],
        micro_batch: usize,
        weight: f32,
    ) -> Result<f64> {
        let overlap_at = match world.size() > 1 && self.sums.options.overlap {
            true => micro_batch_shards(rows, micro_batch, world).rposition(|mb| !mb.is_empty()),
            false => None,
        };
        let mut loss = 0.0;
        for (k, mb) in micro_batch_shards(rows, micro_batch, world).enumerate() {
            if mb.is_empty() {
                continue;
            }
            let (smoothing, s) = (self.cfg.label_smoothing, &mut self.scratch);
            let seed = crate::rng::mix(self.cfg.seed ^ crate::rng::mix(self.step * 1_000_003 + k as u64));
            if let Some(d) = &mut self.device {
                loss += d.micro_batch(mb, weight, smoothing, seed)?;
                continue;
            }
            loss += match overlap_at == Some(k) {
                false => forward_backward(&mut self.model, mb, weight, smoothing, s, seed)?,
                true => {
                    let sums = &mut self.sums;
                    let after_block = |m: &mut Transformer, i| sums.after_block(world, m, i);
                    forward_backward_with(&mut self.model, mb, weight, smoothing, s, seed, after_block)?
                }
            };
        }
        Ok(loss)
    }

    /// √(Σ g²) over every trainable tensor, in model order.
    fn grad_norm(&mut self) -> Result<f64> {
        if let Some(d) = &mut self.device {
            return Ok(d.step.grad_sq()?.sqrt());
        }
        let mut total = 0.0;
        let partials = &mut self.norm_partials;
        self.model.for_each_param_mut(|p| add_grad_sq(&mut total, p, partials));
        Ok(total.sqrt())
    }

    /// Clips (scales every gradient by `clip`, if any), takes the AdamW step at learning rate `lr`, zeroes the
    /// gradients and counts the step.
    fn update(&mut self, lr: f64, clip: Option<f32>) -> Result<()> {
        let t = self.step + 1;
        if let Some(d) = &mut self.device {
            d.step.adamw(&self.cfg.adamw, lr, t, clip)?;
            d.host_stale = true;
            self.step = t;
            return Ok(());
        }
        let decay = self.cfg.adamw;
        let no_decay = AdamWConfig { weight_decay: 0.0, ..decay };
        let mut moments = self.moments.iter_mut();
        let (zero1, mut at) = (&self.zero1, 0);
        self.model.for_each_param_mut(|p| {
            if !p.is_trainable() {
                return;
            }
            if let Some(coef) = clip {
                scale_grad(p, coef);
            }
            let m = moments.next().expect("one set of moments per trainable tensor");
            let cfg = if p.decays() { &decay } else { &no_decay };
            match zero1 {
                None => adamw_update(p, m, cfg, lr, t),
                Some(z) => {
                    let own = z.part(at..at + p.data.len(), z.rank);
                    let g = &p.grad.as_ref().expect("a trainable tensor has a gradient")[own.clone()];
                    adamw_update_slice(&mut p.data[own], g, m, cfg, lr, t);
                }
            }
            at += p.data.len();
            p.zero_grad();
        });
        self.step = t;
        Ok(())
    }

    /// ZeRO-1: every rank's updated part to every rank (nothing to do unsharded).
    fn broadcast_parts(&mut self, world: &dyn Collectives) {
        let Some(z) = &self.zero1 else { return };
        let mut at = 0;
        self.model.for_each_param_mut(|p| {
            if !p.is_trainable() {
                return;
            }
            for q in 0..z.ranks {
                let part = z.part(at..at + p.data.len(), q);
                if !part.is_empty() {
                    world.broadcast_f32(&mut p.data[part], q);
                }
            }
            at += p.data.len();
        });
    }

    /// ZeRO-1: the whole moments of every trainable tensor, on rank 0 (what a checkpoint writes; rank 0's own
    /// parts move into them, so its peak is the unsharded moments'); an empty list on the other ranks, which send
    /// their parts. None unsharded. Every rank calls it; rank 0 hands the list back to [`Self::keep_own_parts`].
    pub fn gather_moments(&mut self, world: &dyn Collectives) -> Option<Vec<Moments>> {
        let sizes = self.trainable_sizes();
        let z = self.zero1.as_ref()?;
        let (mut at, mut out, mut scratch) = (0, vec![], vec![]);
        for (len, own) in sizes.into_iter().zip(&mut self.moments) {
            let mut whole = if z.rank == 0 { Moments::zeros(len) } else { Moments::zeros(0) };
            for q in 0..z.ranks {
                let part = z.part(at..at + len, q);
                if part.is_empty() {
                    continue;
                }
                for (mine, all) in [(&mut own.m, &mut whole.m), (&mut own.v, &mut whole.v)] {
                    match (z.rank == q, z.rank == 0) {
                        (true, true) => {
                            all[part.clone()].copy_from_slice(mine);
                            *mine = vec![];
                        }
                        _ if q == 0 => {} // rank 0's own part: nobody else needs it
                        (true, false) => world.broadcast_f32(mine, q),
                        (false, true) => world.broadcast_f32(&mut all[part.clone()], q),
                        (false, false) => {
                            scratch.resize(part.len(), 0.0);
                            world.broadcast_f32(&mut scratch, q);
                        }
                    }
                }
            }
            at += len;
            if z.rank == 0 {
                out.push(whole);
            }
        }
        Some(out)
    }

    /// ZeRO-1 on rank 0 after a checkpoint: takes its own parts back out of `gathered`, freeing it tensor by
    /// tensor.
    pub fn keep_own_parts(&mut self, gathered: Vec<Moments>) {
        let (sizes, Some(z)) = (self.trainable_sizes(), &self.zero1) else { return };
        let mut at = 0;
        for ((len, own), whole) in sizes.into_iter().zip(&mut self.moments).zip(gathered) {
            let part = z.part(at..at + len, z.rank);
            *own = Moments { m: whole.m[part.clone()].to_vec(), v: whole.v[part].to_vec() };
            at += len;
        }
    }

    /// (name, values, moments) of each trainable tensor, borrowed: what a checkpoint writes, without a copy.
    pub fn trainable_state(&mut self) -> Vec<(&str, &[f32], &Moments)> {
        let params = self.model.params_mut().into_iter().filter(|p| p.is_trainable());
        params.zip(&self.moments).map(|(p, m)| (p.name.as_str(), p.data.as_slice(), m)).collect()
    }

    /// Restores a state exported from a trainer over the same model and trainable set.
    pub fn import_state(&mut self, state: TrainState) -> Result<()> {
        let mut params: Vec<_> = self.model.params_mut().into_iter().filter(|p| p.is_trainable()).collect();
        if params.len() != state.tensors.len() {
            bail!("checkpoint holds {} trainable tensors, this run trains {}", state.tensors.len(), params.len());
        }
        let mut at = 0;
        for ((p, m), (name, data, mom)) in params.iter_mut().zip(&mut self.moments).zip(state.tensors) {
            if p.name != name || p.data.len() != data.len() {
                bail!("checkpoint tensor {name} does not match this run's {} ({} values)", p.name, p.data.len());
            }
            *m = match &self.zero1 {
                None => mom,
                Some(z) => {
                    let own = z.part(at..at + data.len(), z.rank);
                    Moments { m: mom.m[own.clone()].to_vec(), v: mom.v[own].to_vec() }
                }
            };
            at += data.len();
            p.data = data;
        }
        self.step = state.step;
        Ok(())
    }
}

/// How ZeRO-1 splits the trainable elements (all tensors end to end, in model order) among the ranks.
struct Zero1 {
    total: usize,
    rank: usize,
    ranks: usize,
}

impl Zero1 {
    /// The part of the tensor at `tensor` (its elements' range end to end) that rank `q` owns, as a range
    /// inside the tensor (empty when it owns none of it).
    fn part(&self, tensor: Range<usize>, q: usize) -> Range<usize> {
        let owned = shard(self.total, q, self.ranks);
        let (start, end) = (owned.start.max(tensor.start), owned.end.min(tensor.end));
        if start < end { start - tensor.start..end - tensor.start } else { 0..0 }
    }
}

/// This rank's shard of each micro-batch of `micro_batch` rows of a step's `rows` (empty where it has none), in
/// order: what [`Trainer::step_on`] runs on this rank.
pub fn micro_batch_shards<'a, E>(
    rows: &'a [E],
    micro_batch: usize,
    world: &dyn Collectives,
) -> impl DoubleEndedIterator<Item = &'a [E]> + ExactSizeIterator {
    let (rank, size) = (world.rank(), world.size());
    rows.chunks(micro_batch.max(1)).map(move |mb| &mb[shard(mb.len(), rank, size)])
}

/// The tokens of a micro-batch shard and the 16-row chunks its rows start (`gated_delta::checkpoints`: the states a
/// Gated DeltaNet's backward keeps per head).
pub fn micro_batch_extent<E: Borrow<Example>>(shard: &[E]) -> (usize, usize) {
    let lens = shard.iter().map(|e| e.borrow().ids.len());
    (lens.clone().sum(), lens.map(|n| n.div_ceil(CHUNK)).sum())
}
