//! RMSNorm on the GPU (rmsnorm.cu), as `kernels::norm`'s rmsnorm_forward / rmsnorm_backward.
use super::{THREADS, per_row};
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, LaunchConfig, PushKernelArg};

/// out[r] = (offset + w) ⊙ (x[r] · rstd[r]); rstd saved. x, out: (rows, dim); w: (dim); rstd: (rows).
pub fn rmsnorm_forward(
    d: &Device,
    out: &mut CudaViewMut<f32>,
    rstd: &mut CudaViewMut<f32>,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    offset: f32,
    eps: f32,
) -> Result<(), DriverError> {
    let (dim, rows) = (w.len(), rstd.len());
    assert!(x.len() == rows * dim && out.len() == rows * dim, "rmsnorm_forward: shapes");
    let dim_i = dim as i32;
    let mut b = d.stream.launch_builder(d.function("rmsnorm_forward"));
    b.arg(out).arg(rstd).arg(x).arg(w).arg(&offset).arg(&eps).arg(&dim_i);
    // SAFETY: each block reads row blockIdx.x of x (rows · dim values) and w (dim), writes that row of out and
    // rstd[blockIdx.x]: all inside the slices, whose lengths are checked above.
    unsafe { b.launch(per_row(rows)) }.map(drop)
}

/// dx **+=** ∂L/∂x and, when given, dw **+=** ∂L/∂w. dout, x, dx: (rows, dim); w, dw: (dim); rstd: (rows).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    d: &Device,
    dx: &mut CudaViewMut<f32>,
    dw: Option<&mut CudaViewMut<f32>>,
    dout: &CudaView<f32>,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    offset: f32,
    rstd: &CudaView<f32>,
) -> Result<(), DriverError> {
    let (dim, rows) = (w.len(), rstd.len());
    assert!(dx.len() == rows * dim && dout.len() == rows * dim && x.len() == rows * dim, "rmsnorm_backward: shapes");
    let (dim_i, rows_i) = (dim as i32, rows as i32);
    let mut b = d.stream.launch_builder(d.function("rmsnorm_backward_dx"));
    b.arg(&mut *dx).arg(dout).arg(x).arg(w).arg(&offset).arg(rstd).arg(&dim_i);
    // SAFETY: as rmsnorm_forward: one block per row inside the checked slices.
    unsafe { b.launch(per_row(rows)) }?;
    if let Some(dw) = dw {
        assert_eq!(dw.len(), dim, "rmsnorm_backward: dw shape");
        let cfg = LaunchConfig {
            grid_dim: ((dim as u32).div_ceil(THREADS), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = d.stream.launch_builder(d.function("rmsnorm_backward_dw"));
        b.arg(dw).arg(dout).arg(x).arg(rstd).arg(&rows_i).arg(&dim_i);
        // SAFETY: thread j < dim reads column j of the (rows, dim) buffers and rstd, and writes dw[j].
        unsafe { b.launch(cfg) }?;
    }
    Ok(())
}
