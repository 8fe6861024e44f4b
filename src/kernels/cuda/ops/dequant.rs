//! GGML blocks decoded on the GPU (dequant.cu), as `kernels::dequant`: a weight matrix kept in its stored blocks,
//! decoded into scratch before a product.
use super::{Elem, elementwise};
use crate::kernels::cuda::device::Device;
use crate::kernels::dequant::GgmlType;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, PushKernelArg};

/// Whether dequant.cu decodes `ty`: the block-quantized types. (F16 and BF16 matrices are as small as their bf16
/// copy, which a product reads without decoding: they are not kept packed.)
pub fn decodes(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// out[..n] = the first n values of the `ty` blocks in `words` (the bytes as little-endian u32 words), f32 or
/// rounded to bf16.
pub fn dequantize<T: Elem>(
    d: &Device,
    out: &mut CudaViewMut<T>,
    words: &CudaView<u32>,
    ty: GgmlType,
    n: usize,
) -> Result<(), DriverError> {
    assert!(decodes(ty), "dequantize: {ty} is not a block type dequant.cu decodes");
    let (block, bytes) = (ty.block_size(), ty.bytes_for(n as u64).expect("a matrix's size") as usize);
    assert!(n.is_multiple_of(block), "dequantize: {n} values are not whole {ty} blocks");
    assert!(out.len() >= n && words.len() * 4 >= bytes, "dequantize: {n} {ty} values, buffers too short");
    if n == 0 {
        return Ok(());
    }
    let name = if T::BF16 { "dequantize_bf16" } else { "dequantize_f32" };
    let (ty, block, n64) = (ty.id() as i32, block as i32, n as u64);
    let mut b = d.stream.launch_builder(d.function(name));
    b.arg(out).arg(words).arg(&ty).arg(&block).arg(&n64);
    // SAFETY: value i < n reads bytes [i / block · type_size, (i / block + 1) · type_size) ⊂ [0, bytes) of words
    // (at least `bytes` long, checked) and writes out[i] (out holds n, checked).
    unsafe { b.launch(elementwise(n)) }.map(drop)
}
