//! Data-parallel training on devices: after every rank's backward pass, each trainable tensor's gradient is
//! summed over the ranks, on the device. Small gradients (LoRA's factors, norms) are packed into buckets of a
//! flat buffer so that one sum covers many tensors; a gradient larger than a bucket is summed where it is.
//!
//! How a bucket is summed is a [`RankSums`]: [`ThroughHost`] (any backend: download, the job's host collectives,
//! upload) or, on GPUs, NCCL (`network::device::nccl`) straight between the devices.
use super::weights::Weights;
use crate::distributed::Collectives;
use crate::kernels::backend::{Backend, MatView};
use anyhow::{Context, Result};
use std::ops::Range;

/// How a buffer on a device is summed over the ranks of a job.
pub trait RankSums<B: Backend> {
    /// For messages: "NCCL", "host memory and MPI".
    fn name(&self) -> &'static str;
    /// buf[..n] ← Σ over the ranks of `world` of buf[..n]; every rank calls it in the same order with the same
    /// n, and every rank gets the same bits.
    fn sum(&mut self, be: &B, buf: &mut B::F32, n: usize, world: &dyn Collectives) -> Result<()>;
}

/// Sums through host memory: the values downloaded, summed by the job's collectives (MPI), uploaded back.
#[derive(Default)]
pub struct ThroughHost {
    staging: Vec<f32>,
}

impl<B: Backend> RankSums<B> for ThroughHost {
    fn name(&self) -> &'static str {
        "host memory and MPI"
    }

    fn sum(&mut self, be: &B, buf: &mut B::F32, n: usize, world: &dyn Collectives) -> Result<()> {
        self.staging.resize(n, 0.0);
        be.download(buf, &mut self.staging)?;
        world.sum_f32(&mut self.staging);
        be.upload(buf, &self.staging)
    }
}

/// The tensors (indices into `lens`, in order) summed together: consecutive tensors packed while they fit in
/// `cap` values; a tensor longer than `cap` alone (summed in place, not packed).
pub fn buckets(lens: &[usize], cap: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = vec![];
    let mut filled = 0;
    for (i, &len) in lens.iter().enumerate() {
        match out.last_mut() {
            Some(last) if filled + len <= cap && lens[last.start] <= cap => {
                last.end = i + 1;
                filled += len;
            }
            _ => {
                out.push(i..i + 1);
                filled = len;
            }
        }
    }
    out
}

/// Every trainable tensor's gradient in `w` summed over the ranks of `world` by `sums`, in buckets of up to
/// `bucket_values` values; `flat` is the packing buffer and its length (allocated for the fullest bucket).
pub fn sum_grads<B: Backend>(
    be: &B,
    w: &mut Weights<B>,
    flat: &mut Option<(B::F32, usize)>,
    sums: &mut dyn RankSums<B>,
    world: &dyn Collectives,
    bucket_values: usize,
) -> Result<()> {
    let mut grads: Vec<(&str, usize, &mut B::F32)> =
        w.tensors_mut().filter_map(|t| Some((t.name.as_str(), t.len, &mut t.train.as_mut()?.g))).collect();
    let lens: Vec<usize> = grads.iter().map(|g| g.1).collect();
    let plan = buckets(&lens, bucket_values);
    let packed = plan.iter().filter(|b| b.len() > 1).map(|b| lens[b.clone()].iter().sum::<usize>()).max();
    if let Some(need) = packed.filter(|&need| flat.as_ref().is_none_or(|f| f.1 < need)) {
        *flat = None; // free a smaller one first
        *flat = Some((be.alloc(need).context("allocating the buffer of the gradient sums")?, need));
    }
    let how = sums.name();
    for bucket in plan {
        let part = &mut grads[bucket];
        let first = part[0].0.to_string();
        let summing = || format!("summing the gradients from {first} on over {} ranks ({how})", world.size());
        if let [(_, len, g)] = part {
            sums.sum(be, g, *len, world).with_context(summing)?;
            continue;
        }
        let total: usize = part.iter().map(|g| g.1).sum();
        let f = &mut flat.as_mut().expect("allocated for the fullest bucket").0;
        let at = |offset: usize, len: usize| MatView { offset, ..MatView::dense(1, len) };
        let mut offset = 0;
        for (_, len, g) in part.iter() {
            be.copy_view(f, at(offset, *len), g, MatView::dense(1, *len))?;
            offset += len;
        }
        sums.sum(be, f, total, world).with_context(summing)?;
        offset = 0;
        for (_, len, g) in part.iter_mut() {
            be.copy_view(g, MatView::dense(1, *len), f, at(offset, *len))?;
            offset += *len;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::buckets;

    #[test]
    fn buckets_pack_small_tensors_in_order_and_leave_large_ones_alone() {
        assert!(buckets(&[], 10).is_empty());
        assert_eq!(buckets(&[3, 3, 3, 3], 10), vec![0..3, 3..4]);
        assert_eq!(buckets(&[3, 12, 3, 10, 1], 10), vec![0..1, 1..2, 2..3, 3..4, 4..5]);
        assert_eq!(buckets(&[4, 6, 11, 2, 2], 10), vec![0..2, 2..3, 3..5]);
        // Every tensor once, in order; a bucket of several fits the cap.
        let lens: Vec<usize> = (0..200).map(|i| (i * 37 % 23) + usize::from(i % 17 == 0) * 40).collect();
        let b = buckets(&lens, 30);
        assert_eq!(b.first().unwrap().start, 0);
        assert_eq!(b.last().unwrap().end, lens.len());
        for w in b.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for r in &b {
            assert!(r.len() == 1 || lens[r.clone()].iter().sum::<usize>() <= 30, "{r:?}");
        }
    }
}
