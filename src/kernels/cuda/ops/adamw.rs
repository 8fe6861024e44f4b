//! AdamW on the GPU (adamw.cu): one step of every trainable tensor in one launch, each as
//! `kernels::adamw::adamw_step` from the same f32 scalars, its gradient zeroed after — one launch per optimizer
//! step instead of two per tensor (a model's hundreds of LoRA tensors made the launches, not the math, the cost).
use super::{THREADS, upload_table};
use crate::kernels::adamw::AdamWScalars;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaSlice, CudaViewMut, DevicePtrMut, DriverError, LaunchConfig, PushKernelArg};

/// One tensor of [`adamw_tensors`]: values, gradient, moments (all of one length), whether weight decay
/// applies, and a bf16 copy (of that length) to write from the new values.
pub struct Tensor<'a> {
    pub w: CudaViewMut<'a, f32>,
    pub g: CudaViewMut<'a, f32>,
    pub m: CudaViewMut<'a, f32>,
    pub v: CudaViewMut<'a, f32>,
    pub decays: bool,
    pub bf16: Option<CudaViewMut<'a, u16>>,
}

/// Values per tensor in the kernel's table: w, g, m, v addresses, n, decays, the bf16 copy's address (0: none), the
/// tensor's first block.
const ROW: usize = 8;

/// Blocks of a tensor of n values: one per 4 · THREADS values (a thread steps over 4), at least 1, at most 4 096.
fn blocks_for(n: usize) -> usize {
    n.div_ceil(THREADS as usize * 4).clamp(1, 4096)
}

/// Every tensor's w, m, v updated in place from its gradient times `grad_scale`, the gradient then zeroed and the
/// bf16 copy (if any) rounded from the new w; a tensor that does not decay takes `s.decay` as 1. `table`: device scratch for the tensors' addresses, grown to
/// fit.
pub fn adamw_tensors(
    d: &Device,
    table: &mut CudaSlice<u64>,
    tensors: &mut [Tensor],
    grad_scale: f32,
    s: &AdamWScalars,
) -> Result<(), DriverError> {
    if tensors.is_empty() {
        return Ok(());
    }
    assert!(tensors.len() <= i32::MAX as usize, "adamw_tensors: {} tensors", tensors.len());
    let count = tensors.len() as i32;
    let mut rows = Vec::with_capacity(tensors.len() * ROW);
    let mut blocks = 0;
    // The addresses' guards (cudarc's stream-order records) live until the launch is queued.
    let mut guards = Vec::with_capacity(tensors.len() * 5);
    for (i, t) in tensors.iter_mut().enumerate() {
        let n = t.w.len();
        let copy = t.bf16.as_ref().is_none_or(|h| h.len() == n);
        assert!(t.g.len() == n && t.m.len() == n && t.v.len() == n && copy, "adamw_tensors: tensor {i}: shapes");
        for buf in [&mut t.w, &mut t.g, &mut t.m, &mut t.v] {
            let (ptr, guard) = buf.device_ptr_mut(&d.stream);
            rows.push(ptr);
            guards.push(guard);
        }
        rows.extend([n as u64, t.decays as u64]);
        match &mut t.bf16 {
            Some(h) => {
                let (ptr, guard) = h.device_ptr_mut(&d.stream);
                rows.push(ptr);
                guards.push(guard);
            }
            None => rows.push(0),
        }
        rows.push(blocks as u64);
        blocks += blocks_for(n);
    }
    assert!(blocks <= u32::MAX as usize, "adamw_tensors: {blocks} blocks exceed a grid");
    let table = upload_table(d, table, &rows)?;
    let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let mut b = d.stream.launch_builder(d.function("adamw_tensors"));
    b.arg(&table)
        .arg(&count)
        .arg(&grad_scale)
        .arg(&s.decay)
        .arg(&s.one_minus_b1)
        .arg(&s.b2)
        .arg(&s.one_minus_b2)
        .arg(&s.step_size);
    b.arg(&s.bc2_sqrt).arg(&s.eps);
    // SAFETY: a block of tensor y (the table's firsts partition the grid's blocks, ascending from 0) reads and writes
    // elements < n of tensor y's four buffers (and its bf16 copy, if any), whose addresses and common length
    // (checked) the table holds, in tensors that are distinct `&mut` views.
    unsafe { b.launch(cfg) }?;
    drop(guards);
    Ok(())
}
