//! `CONDLM_CUDA_PROFILE=1`: where a run's GPU time goes, op by op, printed when the backend is dropped (the end of
//! the command). An event is recorded on the stream after every op; the stream runs ops in order, so the time
//! between an op's event and the one before it is that op's — plus any wait of the GPU for the host's next launch,
//! which is how a host-bound phase shows. Every [`FOLD_EVERY`] events the host waits for the last one and folds
//! the times into per-op totals, reusing the events: a little of the overlap between host and GPU is lost, so
//! profile a run apart from the one whose tokens/s count. Ops inside a CUDA graph capture are not recorded (a
//! replayed graph is one op: "graph replay").
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DriverError};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Events recorded between two folds.
const FOLD_EVERY: usize = 2048;

/// The per-op totals and the events not folded yet.
pub struct Profile {
    ctx: Arc<CudaContext>,
    /// Op names and the events recorded after them, in stream order, since the last fold.
    pending: Vec<(String, CudaEvent)>,
    /// The last event folded: the start of the first pending op.
    last: Option<CudaEvent>,
    /// Events to record again.
    free: Vec<CudaEvent>,
    /// Per op: calls and milliseconds.
    totals: BTreeMap<String, (u64, f64)>,
}

impl Profile {
    /// A profile when `CONDLM_CUDA_PROFILE` is set to anything but 0.
    pub fn from_env(ctx: &Arc<CudaContext>) -> Option<Profile> {
        let on = std::env::var("CONDLM_CUDA_PROFILE").is_ok_and(|v| v != "0");
        on.then(|| Profile { ctx: ctx.clone(), pending: vec![], last: None, free: vec![], totals: BTreeMap::new() })
    }

    /// Records that `op` was just queued on `stream`.
    pub fn after(&mut self, stream: &CudaStream, op: &str) -> Result<(), DriverError> {
        let event = match self.free.pop() {
            Some(e) => e,
            // Timing events (the default flags disable timing).
            None => self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?,
        };
        event.record(stream)?;
        self.pending.push((op.to_string(), event));
        if self.pending.len() >= FOLD_EVERY {
            self.fold()?;
        }
        Ok(())
    }

    /// Waits for the pending events and adds the time between each and the one before to its op.
    fn fold(&mut self) -> Result<(), DriverError> {
        for (op, event) in std::mem::take(&mut self.pending) {
            let ms = match &self.last {
                Some(start) => start.elapsed_ms(&event)? as f64,
                None => 0.0,
            };
            let t = self.totals.entry(op).or_default();
            t.0 += 1;
            t.1 += ms;
            if let Some(done) = self.last.replace(event) {
                self.free.push(done);
            }
        }
        Ok(())
    }

    /// The table: per op, its calls, milliseconds and share of the whole, most time first.
    pub fn report(&mut self, device: &str) -> String {
        if let Err(e) = self.fold() {
            return format!("cuda profile ({device}): reading its events failed: {e}");
        }
        let total: f64 = self.totals.values().map(|t| t.1).sum();
        let calls: u64 = self.totals.values().map(|t| t.0).sum();
        let mut rows: Vec<_> = self.totals.iter().collect();
        rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        let mut out = format!(
            "cuda profile ({device}, CONDLM_CUDA_PROFILE): {calls} ops, {total:.1} ms of GPU time between them \
             (waits for the host included)\n  {:32} {:>8} {:>10} {:>6}\n",
            "op", "calls", "ms", "%"
        );
        for (op, (n, ms)) in rows {
            let share = if total > 0.0 { 100.0 * ms / total } else { 0.0 };
            out += &format!("  {op:32} {n:>8} {ms:>10.2} {share:>6.1}\n");
        }
        out
    }
}
