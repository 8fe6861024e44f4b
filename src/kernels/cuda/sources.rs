//! The CUDA C sources of the backend's kernels, compiled at run time by NVRTC (`compile`): one file per
//! op (forward beside backward, as in `kernels/`), each mirroring the CPU kernel named in its header comment —
//! same formulas, epsilons and conventions — so the GPU path can be checked against the CPU path. Every file is
//! compiled with [`COMMON`] in front of it (block reductions; NVRTC gets no include path).

/// One `.cu` file and the `extern "C"` kernels it defines (the names a module load looks up).
#[derive(Clone, Copy, Debug)]
pub struct Source {
    /// The file name under src/kernels/cuda/cu/, which compile errors name.
    pub file: &'static str,
    pub text: &'static str,
    pub kernels: &'static [&'static str],
}

/// Helpers put in front of every source (src/kernels/cuda/cu/common.cuh).
pub const COMMON: Source = Source { file: "common.cuh", text: include_str!("cu/common.cuh"), kernels: &[] };

/// Every kernel source, in the order of a block's forward pass (decoding's KV cache after attention, then Qwen3.5's
/// Gated DeltaNet, the mixer of its linear-attention layers), then the loss and the optimizer; then the backend's
/// plumbing (`backend::Cuda`): element-wise ops and a bias's gradient, row gathers and scatters (the embedding and its
/// backward), dropout, the f64 sum of squares.
pub const SOURCES: &[Source] = &[
    Source {
        file: "rmsnorm.cu",
        text: include_str!("cu/rmsnorm.cu"),
        kernels: &["rmsnorm_forward", "rmsnorm_forward_bf16", "rmsnorm_backward_dx", "rmsnorm_backward_dw"],
    },
    Source {
        file: "layernorm.cu",
        text: include_str!("cu/layernorm.cu"),
        kernels: &["layernorm_forward", "layernorm_backward_dx", "layernorm_backward_dwdb"],
    },
    Source { file: "rope.cu", text: include_str!("cu/rope.cu"), kernels: &["rope_forward", "rope_backward"] },
    Source {
        file: "attention.cu",
        text: include_str!("cu/attention.cu"),
        kernels: &["attention_forward", "attention_backward_dq", "attention_backward_dkv"],
    },
    Source {
        file: "attention_mma.cu",
        text: include_str!("cu/attention_mma.cu"),
        kernels: &[
            "attention_forward_mma64",
            "attention_forward_mma128",
            "attention_forward_mma256",
            "attention_backward_dq_mma64",
            "attention_backward_dq_mma128",
            "attention_backward_dq_mma256",
            "attention_backward_dkv_mma64",
            "attention_backward_dkv_mma128",
            "attention_backward_dkv_mma256",
        ],
    },
    Source { file: "kv_cache.cu", text: include_str!("cu/kv_cache.cu"), kernels: &["kv_store", "cached_attention"] },
    Source {
        file: "gated_delta.cu",
        text: include_str!("cu/gated_delta.cu"),
        kernels: &[
            "delta_conv_forward",
            "delta_conv_dpre",
            "delta_conv_backward_dx",
            "delta_conv_backward_dw",
            "delta_conv_cached",
            "delta_rule_forward",
            "delta_rule_backward_dk128",
            "delta_rule_backward_dk256",
            "delta_rule_cached",
        ],
    },
    Source {
        file: "delta_mixer.cu",
        text: include_str!("cu/delta_mixer.cu"),
        kernels: &[
            "delta_inputs_forward",
            "delta_inputs_backward",
            "delta_decay_grads_partial",
            "delta_norm_forward",
            "delta_norm_backward",
            "delta_norm_backward_dw",
        ],
    },
    Source {
        file: "glu.cu",
        text: include_str!("cu/glu.cu"),
        kernels: &[
            "glu_forward",
            "glu_forward_bf16",
            "glu_backward",
            "glu_backward_bf16",
            "gelu_forward",
            "gelu_backward",
            "sigmoid_gate_forward",
            "sigmoid_gate_backward",
        ],
    },
    Source {
        file: "cross_entropy.cu",
        text: include_str!("cu/cross_entropy.cu"),
        kernels: &["cross_entropy_rows", "cross_entropy_rows_bf16"],
    },
    Source { file: "adamw.cu", text: include_str!("cu/adamw.cu"), kernels: &["adamw_tensors"] },
    Source { file: "bf16.cu", text: include_str!("cu/bf16.cu"), kernels: &["to_bf16"] },
    Source {
        file: "dequant.cu",
        text: include_str!("cu/dequant.cu"),
        kernels: &[
            "dequantize_f32",
            "dequantize_bf16",
            "packed_gemv_f32_f32",
            "packed_gemv_f32_bf16",
            "packed_gemv_bf16_f32",
            "packed_gemv_bf16_bf16",
        ],
    },
    Source {
        file: "elementwise.cu",
        text: include_str!("cu/elementwise.cu"),
        kernels: &["scale", "scale_in_place", "add_bias", "add_column_sums", "add_in_place", "copy_view"],
    },
    Source {
        file: "rows.cu",
        text: include_str!("cu/rows.cu"),
        kernels: &["gather_rows", "scatter_add_rows", "embedding_backward"],
    },
    Source {
        file: "dropout.cu",
        text: include_str!("cu/dropout.cu"),
        kernels: &[
            "dropout_forward",
            "dropout_forward_bf16",
            "dropout_again",
            "dropout_backward",
            "dropout_lora_dx",
            "dropout_lora_dx_bf16",
            "dropout_lora_da_partial",
            "dropout_lora_da_partial_bf16",
        ],
    },
    Source {
        file: "reduce.cu",
        text: include_str!("cu/reduce.cu"),
        kernels: &["sum_squares_partial", "sum_partials", "add_chunk_sums"],
    },
];

impl Source {
    /// The text NVRTC compiles: [`COMMON`], then this file, each after a `#line` directive so that the compile
    /// log names the file and line where an error is.
    pub fn program(&self) -> String {
        format!("#line 1 \"{}\"\n{}\n#line 1 \"{}\"\n{}", COMMON.file, COMMON.text, self.file, self.text)
    }
}
