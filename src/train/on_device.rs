//! Training on a device (`--device cuda`): the trainer (`Trainer::use_device`) hands each micro-batch, the gradient
//! norm, clipping and AdamW to the model on the device (`network::device`), and evaluation scores on it too. The
//! trainable values and moments come back to the host model only for a checkpoint or the outputs
//! (`Trainer::sync_to_host`), which then read it exactly as on the CPU.
use super::optim::{AdamWConfig, Moments};
use crate::data::example::{Example, target_rows};
use crate::distributed::Collectives;
#[cfg(feature = "cuda")]
use crate::distributed::local_rank;
use crate::kernels::backend::Backend;
use crate::kernels::backend::host::Host;
use crate::network::batch::PackedBatch;
use crate::network::device::{DeviceModel, Placement, open_gpu};
use crate::network::transformer::Transformer;
use crate::score::Scorer;
#[cfg(feature = "cuda")]
use anyhow::Context;
use anyhow::Result;
use std::borrow::Borrow;

/// What the trainer asks of a model on a device (implemented for the device model on every backend).
pub trait DeviceStep {
    /// Where it runs, for messages.
    fn name(&self) -> String;
    /// Forward, the LM head's cross-entropy on rows `sel` (next tokens `targets`, each weighted by
    /// `token_weight`), backward: gradients accumulate on the device. Returns the summed unweighted loss.
    fn forward_backward(
        &mut self,
        batch: &PackedBatch,
        sel: &[usize],
        targets: &[u32],
        token_weight: f32,
        label_smoothing: f32,
        step_seed: u64,
    ) -> Result<f64>;
    /// Buffers for training micro-batches of up to `rows` tokens starting up to `checkpoints` 16-row chunks,
    /// allocated now (`Trainer::reserve_device`).
    fn reserve(&mut self, rows: usize, checkpoints: usize) -> Result<()>;
    /// Data-parallel: every gradient ← its sum over the ranks of `world`, in buckets of up to `bucket_values`
    /// values (each rank after its backward passes).
    fn sum_grads(&mut self, world: &dyn Collectives, bucket_values: usize) -> Result<()>;
    /// Σ g² of every trainable tensor.
    fn grad_sq(&mut self) -> Result<f64>;
    /// AdamW on every trainable tensor from its gradient scaled by `clip` (if any), gradients zeroed after.
    fn adamw(&mut self, cfg: &AdamWConfig, lr: f64, t: u64, clip: Option<f32>) -> Result<()>;
    /// The trainable tensors' values into `model`.
    fn download_values(&self, model: &mut Transformer) -> Result<()>;
    /// The moments of every trainable tensor, in parameter order.
    fn moments(&self) -> Result<Vec<Moments>>;
    /// `model`'s trainable values and these moments onto the device (a resumed run).
    fn set_state(&mut self, model: &mut Transformer, moments: &[Moments]) -> Result<()>;
    /// Scoring rows on the device with the current weights (evaluation during training).
    fn scorer(&mut self) -> &mut dyn Scorer;
    /// Seconds the host has waited for the device in reads so far (`Backend::waited_s`).
    fn waited_s(&self) -> f64;
}

impl<B: Backend> DeviceStep for DeviceModel<B> {
    fn name(&self) -> String {
        DeviceModel::name(self)
    }

    fn forward_backward(
        &mut self,
        batch: &PackedBatch,
        sel: &[usize],
        targets: &[u32],
        token_weight: f32,
        label_smoothing: f32,
        step_seed: u64,
    ) -> Result<f64> {
        self.forward(batch, Some(step_seed))?;
        self.loss_backward(sel, targets, token_weight, label_smoothing)
    }

    fn reserve(&mut self, rows: usize, checkpoints: usize) -> Result<()> {
        DeviceModel::reserve(self, rows, checkpoints)
    }

    fn sum_grads(&mut self, world: &dyn Collectives, bucket_values: usize) -> Result<()> {
        DeviceModel::sum_grads(self, world, bucket_values)
    }

    fn grad_sq(&mut self) -> Result<f64> {
        DeviceModel::grad_sq(self)
    }

    fn adamw(&mut self, cfg: &AdamWConfig, lr: f64, t: u64, clip: Option<f32>) -> Result<()> {
        DeviceModel::adamw(self, cfg, lr, t, clip)
    }

    fn download_values(&self, model: &mut Transformer) -> Result<()> {
        self.download_into(model, false)
    }

    fn moments(&self) -> Result<Vec<Moments>> {
        Ok(DeviceModel::moments(self)?.into_iter().map(|(m, v)| Moments { m, v }).collect())
    }

    fn set_state(&mut self, model: &mut Transformer, moments: &[Moments]) -> Result<()> {
        let pairs: Vec<(&[f32], &[f32])> = moments.iter().map(|m| (&m.m[..], &m.v[..])).collect();
        DeviceModel::set_state(self, model, &pairs)
    }

    fn scorer(&mut self) -> &mut dyn Scorer {
        self
    }

    fn waited_s(&self) -> f64 {
        DeviceModel::waited_s(self)
    }
}

/// The model on `placement`, or None for the CPU path, as this process's part of `world`. With several ranks,
/// each takes its own GPU — `cuda:N` is the first of a machine's ranks, the k-th rank on the machine takes
/// cuda:(N + k) — and the gradients are summed by NCCL (or through host memory where NCCL is missing).
pub fn open(placement: Placement, model: &Transformer, world: &dyn Collectives) -> Result<Option<Box<dyn DeviceStep>>> {
    Ok(match placement {
        Placement::Cpu => None,
        Placement::Cuda(first) => Some(on_gpu(first, model, world)?),
        Placement::Reference => Some(Box::new(DeviceModel::new(Host, model)?)),
    })
}

#[cfg(feature = "cuda")]
fn on_gpu(first: usize, model: &Transformer, world: &dyn Collectives) -> Result<Box<dyn DeviceStep>> {
    let multi = world.size() > 1;
    let ordinal = first + if multi { local_rank().unwrap_or(world.rank()) } else { 0 };
    let mut m = open_gpu(ordinal, model).with_context(|| match multi {
        true => format!(
            "rank {} of {} opens cuda:{ordinal} (cuda:{first} + its rank on this machine)",
            world.rank(),
            world.size()
        ),
        false => format!("opening cuda:{ordinal}"),
    })?;
    if multi {
        let sums = crate::network::device::nccl::rank_sums(&m.backend, world)?;
        m.set_rank_sums(sums);
    }
    Ok(Box::new(m))
}

#[cfg(not(feature = "cuda"))]
fn on_gpu(first: usize, model: &Transformer, _: &dyn Collectives) -> Result<Box<dyn DeviceStep>> {
    Ok(Box::new(open_gpu(first, model)?))
}

/// A trainer's device and the host-side buffers of its micro-batches.
pub struct OnDevice {
    pub step: Box<dyn DeviceStep>,
    /// The device's values and moments have moved past the host's (`Trainer::sync_to_host` brings them back).
    pub host_stale: bool,
    batch: PackedBatch,
    sel: Vec<usize>,
    targets: Vec<u32>,
}

impl OnDevice {
    pub fn new(step: Box<dyn DeviceStep>) -> Self {
        OnDevice { step, host_stale: false, batch: PackedBatch::default(), sel: vec![], targets: vec![] }
    }

    /// One micro-batch's forward and backward (as `objective::forward_backward`); returns its summed loss.
    pub fn micro_batch<E: Borrow<Example>>(
        &mut self,
        rows: &[E],
        token_weight: f32,
        label_smoothing: f32,
        step_seed: u64,
    ) -> Result<f64> {
        self.batch.pack(rows.iter().map(|e| &e.borrow().ids[..]));
        target_rows(rows, &self.batch, &mut self.sel, &mut self.targets);
        self.step.forward_backward(&self.batch, &self.sel, &self.targets, token_weight, label_smoothing, step_seed)
    }
}
