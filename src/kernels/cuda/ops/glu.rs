//! The MLP activations on the GPU (glu.cu), as `kernels::activation`'s glu_forward / glu_backward and
//! gelu_tanh_forward / gelu_tanh_backward, and Qwen3.5's attention output gate (sigmoid_gate_forward / _backward).
use super::{Elem, by_rows, elementwise};
use crate::kernels::activation::GateAct;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, PushKernelArg};

/// The kernel's `act` argument: 0 for SiLU (SwiGLU), 1 for the tanh GELU (GeGLU).
fn act_arg(act: GateAct) -> i32 {
    match act {
        GateAct::Silu => 0,
        GateAct::GeluTanh => 1,
    }
}

/// out (rows, f) = act(gate) ⊙ up, gate and up side by side in gate_up (rows, 2·f): each row's gate in columns
/// [0, f), its up in [f, 2f). f32 or bf16 ([`Elem`]).
pub fn glu_forward<T: Elem>(
    d: &Device,
    out: &mut CudaViewMut<T>,
    gate_up: &CudaView<T>,
    f: usize,
    act: GateAct,
) -> Result<(), DriverError> {
    let (rows, act) = (glu_rows(out.len(), f, gate_up.len()), act_arg(act));
    let name = if T::BF16 { "glu_forward_bf16" } else { "glu_forward" };
    let mut b = d.stream.launch_builder(d.function(name));
    let [r, fi] = [rows, f].map(|x| x as i32);
    b.arg(out).arg(gate_up).arg(&r).arg(&fi).arg(&act);
    // SAFETY: (row, c) of (rows, f) reads gate_up[2·row·f + c] and [.. + f] < 2·rows·f = its length, and writes
    // out[row·f + c] < rows·f = its length (both checked by glu_rows).
    unsafe { b.launch(by_rows(rows, f)) }.map(drop)
}

/// dgate = dout ⊙ up ⊙ act'(gate), dup = dout ⊙ act(gate), written side by side in dgate_up (rows, 2·f) as gate_up
/// holds gate and up; dout (rows, f). f32 or bf16.
pub fn glu_backward<T: Elem>(
    d: &Device,
    dgate_up: &mut CudaViewMut<T>,
    dout: &CudaView<T>,
    gate_up: &CudaView<T>,
    f: usize,
    act: GateAct,
) -> Result<(), DriverError> {
    let rows = glu_rows(dout.len(), f, gate_up.len());
    assert_eq!(dgate_up.len(), gate_up.len(), "glu_backward: shapes");
    let name = if T::BF16 { "glu_backward_bf16" } else { "glu_backward" };
    let mut b = d.stream.launch_builder(d.function(name));
    let [r, fi, act] = [rows as i32, f as i32, act_arg(act)];
    b.arg(dgate_up).arg(dout).arg(gate_up).arg(&r).arg(&fi).arg(&act);
    // SAFETY: as glu_forward's, dgate_up of gate_up's length.
    unsafe { b.launch(by_rows(rows, f)) }.map(drop)
}

/// The rows of a GLU over `n` = rows·f values whose gate|up holds `both` = 2n; panics on other shapes.
fn glu_rows(n: usize, f: usize, both: usize) -> usize {
    assert!(f > 0 && n.is_multiple_of(f) && both == 2 * n, "glu: {n} values of rows {f} wide, gate|up of {both}");
    assert!(n / f <= i32::MAX as usize && f <= i32::MAX as usize, "glu: {n} values too many for one launch");
    n / f
}

/// out = gelu(x) (the tanh approximation; GPT-2's MLP). Both of one length.
pub fn gelu_forward(d: &Device, out: &mut CudaViewMut<f32>, x: &CudaView<f32>) -> Result<(), DriverError> {
    let n = out.len();
    assert_eq!(x.len(), n, "gelu_forward: shapes");
    let mut b = d.stream.launch_builder(d.function("gelu_forward"));
    b.arg(out).arg(x).arg(&n);
    // SAFETY: element-wise over n values of slices of length n.
    unsafe { b.launch(elementwise(n)) }.map(drop)
}

/// dx = dout ⊙ gelu'(x) (overwritten). All of one length.
pub fn gelu_backward(
    d: &Device,
    dx: &mut CudaViewMut<f32>,
    dout: &CudaView<f32>,
    x: &CudaView<f32>,
) -> Result<(), DriverError> {
    let n = dx.len();
    assert!(dout.len() == n && x.len() == n, "gelu_backward: shapes");
    let mut b = d.stream.launch_builder(d.function("gelu_backward"));
    b.arg(dx).arg(dout).arg(x).arg(&n);
    // SAFETY: element-wise over n values of slices of length n.
    unsafe { b.launch(elementwise(n)) }.map(drop)
}

/// out = x ⊙ σ(gate) (Qwen3.5's attention output gate). All of one length.
pub fn sigmoid_gate_forward(
    d: &Device,
    out: &mut CudaViewMut<f32>,
    x: &CudaView<f32>,
    gate: &CudaView<f32>,
) -> Result<(), DriverError> {
    let n = out.len();
    assert!(x.len() == n && gate.len() == n, "sigmoid_gate_forward: shapes");
    let mut b = d.stream.launch_builder(d.function("sigmoid_gate_forward"));
    b.arg(out).arg(x).arg(gate).arg(&n);
    // SAFETY: element-wise over n values of slices of length n.
    unsafe { b.launch(elementwise(n)) }.map(drop)
}

/// dx = dout ⊙ σ(gate), dgate = dout ⊙ x ⊙ σ(gate)(1 − σ(gate)) (overwritten). All of one length.
pub fn sigmoid_gate_backward(
    d: &Device,
    dx: &mut CudaViewMut<f32>,
    dgate: &mut CudaViewMut<f32>,
    dout: &CudaView<f32>,
    x: &CudaView<f32>,
    gate: &CudaView<f32>,
) -> Result<(), DriverError> {
    let n = dout.len();
    assert!(dx.len() == n && dgate.len() == n && x.len() == n && gate.len() == n, "sigmoid_gate_backward: shapes");
    let mut b = d.stream.launch_builder(d.function("sigmoid_gate_backward"));
    b.arg(dx).arg(dgate).arg(dout).arg(x).arg(gate).arg(&n);
    // SAFETY: element-wise over n values of slices of length n.
    unsafe { b.launch(elementwise(n)) }.map(drop)
}
