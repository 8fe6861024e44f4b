//! One AdamW step on the GPU (adamw.cu), as `kernels::adamw::adamw_step`, from the same f32 scalars.
use super::elementwise;
use crate::kernels::adamw::AdamWScalars;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, PushKernelArg};

/// w, m, v updated in place from the gradient g. All of one length.
pub fn adamw_step(
    d: &Device,
    w: &mut CudaViewMut<f32>,
    g: &CudaView<f32>,
    m: &mut CudaViewMut<f32>,
    v: &mut CudaViewMut<f32>,
    s: &AdamWScalars,
) -> Result<(), DriverError> {
    let n = w.len();
    assert!(g.len() == n && m.len() == n && v.len() == n, "adamw_step: shapes");
    let mut b = d.stream.launch_builder(d.function("adamw_step"));
    b.arg(w).arg(g).arg(m).arg(v).arg(&n);
    b.arg(&s.decay).arg(&s.one_minus_b1).arg(&s.b2).arg(&s.one_minus_b2).arg(&s.step_size).arg(&s.bc2_sqrt);
    b.arg(&s.eps);
    // SAFETY: element-wise over n values of slices of length n.
    unsafe { b.launch(elementwise(n)) }.map(drop)
}
