//! The gradient sum of a data-parallel step, in buckets, started during the backward pass as PyTorch DDP does.
//!
//! A step's gradients form one stream in the order the backward pass finishes them: block L−1's trainable tensors
//! (each block's in `for_each_param_mut` order), then block L−2's, …, block 0's, then the tensors outside the
//! blocks (embeddings, final norm, head), which are final only when the backward returns. Bucket k is the stream's
//! values k·len..(k+1)·len (a tensor may straddle two buckets): packed into a buffer, summed over the ranks with a
//! non-blocking allreduce, unpacked back into the gradients. With `overlap`, the last micro-batch's backward packs
//! each block as soon as it is done and starts every bucket that fills, and polls the started sums between blocks
//! (MPI moves data only inside its calls); without, all of it happens after the backward. Either way the buckets,
//! and the order they start in, are the same on every rank: the sums are the same bits.
//!
//! Earlier micro-batches of the step only accumulate locally: a gradient is final after the last one.
use crate::distributed::{Collectives, Pending};
use crate::network::param::Param;
use crate::network::transformer::Transformer;
use std::collections::VecDeque;
use std::time::Instant;

/// How the gradients are summed over the ranks (not part of the math: any choice gives the same numbers).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradSumOptions {
    /// Start the sums during the last micro-batch's backward pass.
    pub overlap: bool,
    /// Values per bucket.
    pub bucket_values: usize,
}

impl Default for GradSumOptions {
    fn default() -> Self {
        // Off: on CPU the overlap does not pay (bench/mpi/results.md): shared-memory MPI copies on the cores the
        // backward pass uses and progresses only inside MPI calls (no progress thread).
        GradSumOptions { overlap: false, bucket_values: 1 << 20 }
    }
}

/// Buckets whose sums may be in flight at once; one more fills meanwhile. Starting one more waits for the
/// oldest: memory stays at (MAX_IN_FLIGHT + 1) buckets here, and as many receive buffers in the backend.
const MAX_IN_FLIGHT: usize = 8;

/// The state of one step's sums; the buffers are reused from step to step (no allocation once warm).
pub struct GradSums {
    pub options: GradSumOptions,
    /// Where each unit's gradients start in the stream (unit u < L: block L−1−u; unit L: the rest), then the
    /// stream's length. Empty until the first step.
    starts: Vec<usize>,
    /// Stream values packed so far this step.
    packed: usize,
    /// Units packed so far this step.
    units: usize,
    /// The bucket being filled (bucket `packed / len`), if any.
    filling: Option<Vec<f32>>,
    /// Started sums, oldest first, with the stream position of their bucket.
    in_flight: VecDeque<(usize, Pending)>,
    free: Vec<Vec<f32>>,
    /// Seconds this step spent on its sums (packing, starting, polling, waiting, unpacking).
    pub secs: f64,
}

impl GradSums {
    pub fn new(options: GradSumOptions) -> Self {
        GradSums {
            options,
            starts: vec![],
            packed: 0,
            units: 0,
            filling: None,
            in_flight: VecDeque::new(),
            free: vec![],
            secs: 0.0,
        }
    }

    /// Before a step's micro-batches.
    pub fn begin(&mut self, model: &mut Transformer) {
        assert!(self.in_flight.is_empty() && self.filling.is_none(), "the previous step's sums were not finished");
        if self.starts.is_empty() {
            let (l, mut at) = (model.blocks.len(), 0);
            for u in 0..=l {
                self.starts.push(at);
                for_each_grad(model, u, |g| at += g.len());
            }
            self.starts.push(at);
        }
        (self.packed, self.units, self.secs) = (0, 0, 0.0);
    }

    /// Block `block`'s gradients are final: packs them, starts the buckets they fill, and lets the started sums
    /// progress, unpacking those that are done.
    pub fn after_block(&mut self, world: &dyn Collectives, model: &mut Transformer, block: usize) {
        let t0 = Instant::now();
        debug_assert_eq!(block, model.blocks.len() - 1 - self.units, "the backward pass runs the blocks last to first");
        self.pack_unit(world, model);
        while let Some((_, p)) = self.in_flight.front() {
            if !world.test_sum(p) {
                break;
            }
            self.unpack_oldest(world, model);
        }
        self.secs += t0.elapsed().as_secs_f64();
    }

    /// After the backward pass: packs and starts what is left, then waits for every sum and unpacks it.
    pub fn finish(&mut self, world: &dyn Collectives, model: &mut Transformer) {
        let t0 = Instant::now();
        while self.units < self.starts.len() - 1 {
            self.pack_unit(world, model);
        }
        while !self.in_flight.is_empty() {
            self.unpack_oldest(world, model);
        }
        self.secs += t0.elapsed().as_secs_f64();
    }

    /// Packs the next unit's gradients, starting each bucket as it fills (the stream's last one may be short).
    fn pack_unit(&mut self, world: &dyn Collectives, model: &mut Transformer) {
        self.units += 1;
        let (len, total, end) =
            (self.options.bucket_values, self.starts[self.starts.len() - 1], self.starts[self.units]);
        while self.packed < end {
            let bucket = self.packed / len * len;
            let bucket_end = (bucket + len).min(total);
            let mut buf = match self.filling.take() {
                Some(b) => b,
                None => self.take_free(world, model),
            };
            buf.resize(bucket_end - bucket, 0.0);
            let upto = bucket_end.min(end);
            copy(&self.starts, model, self.packed, &mut buf[self.packed - bucket..upto - bucket], true);
            self.packed = upto;
            if upto == bucket_end {
                self.in_flight.push_back((bucket, world.start_sum_f32(buf)));
            } else {
                self.filling = Some(buf);
            }
        }
    }

    /// A bucket to fill: a free one, a new one while fewer than MAX_IN_FLIGHT exist, else the oldest in flight
    /// once its sum is back and unpacked.
    fn take_free(&mut self, world: &dyn Collectives, model: &mut Transformer) -> Vec<f32> {
        if let Some(b) = self.free.pop() {
            return b;
        }
        if self.in_flight.len() < MAX_IN_FLIGHT {
            return Vec::with_capacity(self.options.bucket_values);
        }
        self.unpack_oldest(world, model);
        self.free.pop().expect("the bucket just unpacked")
    }

    /// Waits for the oldest started sum and copies it into the gradients.
    fn unpack_oldest(&mut self, world: &dyn Collectives, model: &mut Transformer) {
        let (at, p) = self.in_flight.pop_front().expect("a started sum");
        let mut sums = world.wait_sum(p);
        copy(&self.starts, model, at, &mut sums, false);
        self.free.push(sums);
    }
}

/// Visits each gradient of unit `u` (u < L: block L−1−u; u = L: the tensors outside the blocks) in stream order.
fn for_each_grad(model: &mut Transformer, u: usize, mut f: impl FnMut(&mut [f32])) {
    let l = model.blocks.len();
    let mut visit = |p: &mut Param| {
        if let Some(g) = &mut p.grad {
            f(g);
        }
    };
    if u < l { model.blocks[l - 1 - u].for_each_param_mut(&mut visit) } else { model.for_each_outer_param_mut(visit) }
}

/// Copies stream values at..at + buf.len() from the gradients into `buf` (`pack`) or back.
fn copy(starts: &[usize], model: &mut Transformer, at: usize, buf: &mut [f32], pack: bool) {
    let end = at + buf.len();
    for u in 0..starts.len() - 1 {
        if starts[u + 1] <= at || starts[u] >= end {
            continue;
        }
        let mut pos = starts[u];
        for_each_grad(model, u, |g| {
            let (lo, hi) = (pos.max(at), (pos + g.len()).min(end));
            if lo < hi {
                let (g, b) = (&mut g[lo - pos..hi - pos], &mut buf[lo - at..hi - at]);
                if pack { b.copy_from_slice(g) } else { g.copy_from_slice(b) }
            }
            pos += g.len();
        });
    }
}
