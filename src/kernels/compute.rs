//! The run's compute precision (`--compute`): a process-wide choice, made once by the command line before any
//! product, that the products of the network's weight matrices consult.
use std::sync::atomic::{AtomicU8, Ordering};

/// How the products of the network's weight matrices are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compute {
    /// f32 operands, f32 accumulation: the reference bits.
    #[default]
    F32,
    /// Forward passes only (generate, score, eval): the products of a block-quantized base's matrices with
    /// activations rounded to 8 bits, in integer dot products on the stored blocks (llama.cpp's way; `quant_dot`).
    /// Decode steps take it on every block type, longer products on the K-quants.
    Int8,
    /// The GEMMs of the base linears and the LM head (forward, backward, and full fine-tuning's weight
    /// gradients): operands rounded to bf16, products accumulated in f32 (AVX512-BF16's `vdpbf16ps`, or its
    /// exact emulation: `gemm_bf16`).
    Bf16,
}

static COMPUTE: AtomicU8 = AtomicU8::new(Compute::F32 as u8);

/// Sets the compute of this process.
pub fn set_compute(c: Compute) {
    COMPUTE.store(c as u8, Ordering::Relaxed);
}

/// The compute set by [`set_compute`] (f32 unless set).
pub fn compute() -> Compute {
    match COMPUTE.load(Ordering::Relaxed) {
        x if x == Compute::Int8 as u8 => Compute::Int8,
        x if x == Compute::Bf16 as u8 => Compute::Bf16,
        _ => Compute::F32,
    }
}
