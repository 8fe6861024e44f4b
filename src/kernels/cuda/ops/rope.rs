//! RoPE on the GPU (rope.cu), as `kernels::rope`: in place, in the rotate-half layout, with the cos/sin tables of
//! a `RopeTable` copied to the device ((·, half) each).
use super::indices::Indices;
use super::per_row;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, PushKernelArg};

/// Where the heads sit in a buffer's rows: `heads` heads of `head_dim` features from column `col` of rows of
/// `row_len`, the first 2·`half` features of each rotating.
#[derive(Clone, Copy, Debug)]
pub struct RopeLayout {
    pub row_len: usize,
    pub col: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub half: usize,
}

/// Rotates (forward) or rotates back (the backward, on gradients) the heads of every row in place; row k
/// uses table row positions[k].
pub fn rope(
    d: &Device,
    backward: bool,
    buf: &mut CudaViewMut<f32>,
    l: RopeLayout,
    positions: &Indices,
    cos: &CudaView<f32>,
    sin: &CudaView<f32>,
) -> Result<(), DriverError> {
    let rows = positions.len();
    assert!(buf.len() == rows * l.row_len, "rope: buffer shape");
    assert!(l.col + (l.heads - 1) * l.head_dim + 2 * l.half <= l.row_len && 2 * l.half <= l.head_dim, "rope: layout");
    assert!(cos.len() == sin.len() && cos.len().is_multiple_of(l.half), "rope: tables");
    // The kernel trusts the positions to lie in the tables: check what their upload found.
    positions.check_below(cos.len() / l.half, "rope (positions vs the table's rows)");
    let [row_len, col, heads, head_dim, half] = [l.row_len, l.col, l.heads, l.head_dim, l.half].map(|v| v as i32);
    let name = if backward { "rope_backward" } else { "rope_forward" };
    let mut b = d.stream.launch_builder(d.function(name));
    b.arg(buf).arg(&row_len).arg(&col).arg(&heads).arg(&head_dim).arg(&half).arg(&positions.view).arg(cos).arg(sin);
    // SAFETY: block k touches row k's heads inside buf (layout checked) and reads table row positions[k],
    // checked to lie in cos and sin.
    unsafe { b.launch(per_row(rows)) }.map(drop)
}
