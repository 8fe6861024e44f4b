//! A model as one GGUF file that llama.cpp (and Ollama, LM Studio) loads: what llama.cpp's
//! `convert_hf_to_gguf.py` writes for the architectures condlm supports — llama.cpp tensor names, Q/K rows
//! permuted for `llama`, Llama 3.1's RoPE scaling as `rope_freqs.weight`, linear and YaRN `rope.scaling.*` keys,
//! Gemma 3's norms with their 1 added, Phi-3's LongRoPE factors as tensors, GPT-2's Conv1D weights as (out, in), the
//! hyper-parameters under `<arch>.*`, the tokenizer under `tokenizer.*` — with the weights in the type asked for.
//! What llama.cpp fixes without a key (`config::llama_cpp_rules`, YaRN's ramp, OLMo's heads, biases and single RoPE
//! base) is checked: a model it would run otherwise is refused.
//!
//! Tensor types follow llama.cpp's rules: one-dimensional tensors (norms, biases) stay F32; the output matrix
//! (`output.weight`, or `token_embd.weight` when the embeddings are tied) is Q6_K when the type asked for has
//! fewer than 8 bits, as `llama-quantize` does; a matrix whose rows do not divide into the type's blocks takes
//! llama.cpp's fallback (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, then F16 when even 32 does not divide).
use super::config::llama_cpp_rules::{GEMMA3_PATTERN, gemma3_qk_scalar, slides, smollm3_skips_rope};
use super::file::MetaValue;
use super::quantize::quantize;
use super::qwen35;
use super::writer::{TensorData, TensorToWrite, write_gguf};
use crate::formats::hf_export::base_params;
use crate::formats::weights::{
    Permute, ROPE_FACTORS, ROPE_FREQS, gguf_adds_one, hf_to_gguf, permuted_heads, qk_row_order,
};
use crate::kernels::dequant::GgmlType;
use crate::kernels::packed::PackedMatrix;
use crate::network::config::{Config, Family, inv_freq};
use crate::network::param::Param;
use crate::network::transformer::Transformer;
use crate::network::yarn_rope::{DEFAULT_BETAS, YarnRope};
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;

/// The llama.cpp architecture name (`general.architecture`) of a config: Mistral is written as `llama`, as
/// llama.cpp's converter does.
pub fn gguf_arch(c: &Config) -> Result<&'static str> {
    if !c.no_rope.is_empty() {
        check_smollm3_no_rope(c)?;
    }
    if c.sandwich_norms {
        check_gemma3_scale(c)?;
    }
    if let Some(y) = &c.yarn {
        check_yarn(y)?;
    }
    Ok(match (c.family, c.architecture.as_str()) {
        (Family::Gpt2, _) => "gpt2",
        (Family::Llama, "Gemma3ForCausalLM" | "gemma3") => "gemma3",
        (Family::Llama, "Qwen2ForCausalLM" | "qwen2") => "qwen2",
        (Family::Llama, "Qwen3ForCausalLM" | "qwen3") => "qwen3",
        (Family::Llama, "SmolLM3ForCausalLM" | "smollm3") => "smollm3",
        (Family::Llama, "Qwen3_5ForCausalLM" | "Qwen3_5ForConditionalGeneration" | "qwen3_5_text" | "qwen35") => {
            check_qwen35(c)?;
            "qwen35"
        }
        (Family::Llama, "Olmo2ForCausalLM" | "Olmo3ForCausalLM" | "olmo2" | "olmo3") => {
            check_olmo(c)?;
            "olmo2"
        }
        (Family::Llama, _) if c.fused_projections() => "phi3",
        (Family::Llama, _) => "llama",
    })
}

/// llama.cpp runs SmolLM3 without RoPE in every 4th layer (SmolLM3-3B's `no_rope_layers`) and has no key for
/// another pattern.
fn check_smollm3_no_rope(c: &Config) -> Result<()> {
    let skipped = |i: usize| !c.rope_in(i);
    if (0..c.num_layers).any(|i| skipped(i) != smollm3_skips_rope(i)) {
        let layers: Vec<usize> = (0..c.num_layers).filter(|&i| skipped(i)).collect();
        bail!(
            "the model skips RoPE in layers {layers:?} (no_rope_layers in config.json), but llama.cpp runs a \
             SmolLM3 without RoPE in every 4th layer and a GGUF cannot say otherwise: llama.cpp would compute another \
             model. `condlm merge` writes it as a Hugging Face folder instead"
        );
    }
    Ok(())
}

/// llama.cpp has no key for Gemma 3's q·k scale: it takes 1/√head_dim, or 1/√(hidden/heads) for the 62-layer
/// 27B. A model whose `query_pre_attn_scalar` gives another scale would run with the wrong one.
fn check_gemma3_scale(c: &Config) -> Result<()> {
    let implied = gemma3_qk_scalar(c.num_layers, c.hidden_size, c.num_heads, c.head_dim) as f32;
    let scale = c.attn_scale.unwrap_or(1.0 / (c.head_dim as f32).sqrt());
    let scalar = 1.0 / (scale * scale);
    if (scalar - implied).abs() > 1e-3 * implied {
        bail!(
            "the model scales q·k by query_pre_attn_scalar {scalar} (config.json), but llama.cpp runs a Gemma 3 of \
             {} layers with {implied} and a GGUF cannot say otherwise: llama.cpp would compute another model. \
             `condlm merge` writes it as a Hugging Face folder instead",
            c.num_layers
        );
    }
    Ok(())
}

/// llama.cpp's qwen35 takes the value heads as wide as the key heads (`ssm.state_size`; every release has 128 for
/// both) and has no key for another width.
fn check_qwen35(c: &Config) -> Result<()> {
    if let Some(s) = c.delta_net.filter(|s| s.k_head_dim != s.v_head_dim) {
        bail!(
            "the model's Gated DeltaNet has value heads of {} and key heads of {} (linear_value_head_dim, \
             linear_key_head_dim), but llama.cpp's qwen35 takes both as wide and a GGUF cannot say otherwise: llama.cpp \
             would refuse the file. `condlm merge` writes it as a Hugging Face folder instead",
            s.v_head_dim,
            s.k_head_dim
        );
    }
    Ok(())
}

/// What llama.cpp's olmo2 fixes without a key: heads hidden / heads wide, no biases (it loads none: a file with
/// them fails to load), and one RoPE base on every layer (it reads `rope.freq_base_swa` but rotates the sliding
/// layers with `rope.freq_base`).
fn check_olmo(c: &Config) -> Result<()> {
    let refuse = |what: String| {
        bail!(
            "{what}, which llama.cpp's olmo2 cannot run (a GGUF has no key for it): it would compute another model or \
             refuse the file. `condlm merge` writes it as a Hugging Face folder instead"
        )
    };
    if c.head_dim * c.num_heads != c.hidden_size {
        let implied = c.hidden_size / c.num_heads.max(1);
        let width = c.head_dim;
        return refuse(format!(
            "the model's heads are {width} wide (head_dim in config.json), not hidden / heads = {implied}"
        ));
    }
    if c.qkv_bias || c.o_bias || c.mlp_bias {
        return refuse("the model has biases (attention_bias in config.json)".into());
    }
    if let Some(local) = c.rope_local_theta.filter(|&t| t != c.rope_theta) {
        return refuse(format!(
            "the model's sliding layers rotate with RoPE base {local} and its full-attention layers with {}",
            c.rope_theta
        ));
    }
    Ok(())
}

/// llama.cpp runs YaRN with its ramp between 32 and 1 rotations, ends rounded outward, and reads no key for
/// other ones on these architectures.
fn check_yarn(y: &YarnRope) -> Result<()> {
    if (y.beta_fast, y.beta_slow) != DEFAULT_BETAS || !y.truncate {
        bail!(
            "the model's YaRN scaling has beta_fast {}, beta_slow {}, truncate {} (config.json), but llama.cpp runs \
             YaRN with 32, 1 and true on this architecture and a GGUF cannot say otherwise: llama.cpp would compute \
             another model. `condlm merge` writes it as a Hugging Face folder instead",
            y.beta_fast,
            y.beta_slow,
            y.truncate
        );
    }
    Ok(())
}

/// The `rope.scaling.*` keys of linear scaling and of YaRN as llama.cpp reads them (Llama 3.1's and LongRoPE's
/// scaling are tensors). YaRN's attention factor is the paper's default for the factor times
/// `rope.scaling.attn_factor`, written only when the model's differs from that default.
fn rope_scaling_metadata(c: &Config, key: &dyn Fn(&str) -> String) -> Vec<(String, MetaValue)> {
    let mut m = vec![];
    if let Some(k) = c.rope_linear_factor {
        m.push((key("rope.scaling.type"), MetaValue::Str("linear".into())));
        m.push((key("rope.scaling.factor"), MetaValue::F32(k)));
    }
    if let Some(y) = &c.yarn {
        m.extend([
            (key("rope.scaling.type"), MetaValue::Str("yarn".into())),
            (key("rope.scaling.factor"), MetaValue::F32(y.factor)),
            (key("rope.scaling.original_context_length"), MetaValue::U32(y.original_max_positions as u32)),
        ]);
        let default = YarnRope::llama_cpp_attention_factor(y.factor, 1.0);
        if y.attention_factor != default {
            m.push((key("rope.scaling.attn_factor"), MetaValue::F32(y.attention_factor / default)));
        }
    }
    m
}

/// `general.file_type` (llama.cpp's `llama_ftype`) of a file whose matrices are mostly `ty`.
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q4_K => 14, // Q4_K_S: every matrix Q4_K
        GgmlType::Q5_K => 16, // Q5_K_S
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
    }
}

/// The `general.*` and `<arch>.*` keys of a model file.
pub fn model_metadata(c: &Config, arch: &str, name: &str, ty: GgmlType) -> Vec<(String, MetaValue)> {
    let u32_of = |n: usize| MetaValue::U32(n as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let mut m = vec![
        ("general.architecture".to_string(), MetaValue::Str(arch.to_string())),
        ("general.type".to_string(), MetaValue::Str("model".into())),
        ("general.name".to_string(), MetaValue::Str(name.to_string())),
        ("general.file_type".to_string(), MetaValue::U32(file_type(ty))),
        ("general.quantization_version".to_string(), MetaValue::U32(2)),
        (key("context_length"), u32_of(c.max_positions)),
        (key("embedding_length"), u32_of(c.hidden_size)),
        (key("block_count"), u32_of(c.num_layers)),
        (key("feed_forward_length"), u32_of(c.intermediate_size)),
        (key("attention.head_count"), u32_of(c.num_heads)),
    ];
    if c.family == Family::Llama {
        m.extend([
            (key("attention.head_count_kv"), u32_of(c.num_kv_heads)),
            (key("rope.freq_base"), MetaValue::F32(c.rope_theta)),
            (key("attention.layer_norm_rms_epsilon"), MetaValue::F32(c.norm_eps)),
        ]);
    }
    match c.family {
        Family::Gpt2 => m.push((key("attention.layer_norm_epsilon"), MetaValue::F32(c.norm_eps))),
        Family::Llama if arch == "gemma3" => {
            // what llama.cpp's converter writes for Gemma 3 (no vocab_size or rope.dimension_count)
            m.extend([
                (key("attention.key_length"), u32_of(c.head_dim)),
                (key("attention.value_length"), u32_of(c.head_dim)),
            ]);
            if let Some(theta) = c.rope_local_theta {
                m.push((key("rope.freq_base_swa"), MetaValue::F32(theta)));
            }
            // llama.cpp scales the global layers by it (its sliding layers keep a scale of 1)
            m.extend(rope_scaling_metadata(c, &key));
            if let Some(window) = c.sliding_window {
                m.push((key("attention.sliding_window"), u32_of(window)));
                // llama.cpp's default: every 6th layer global; any other pattern as one flag per layer
                let sliding: Vec<bool> = (0..c.num_layers).map(|i| c.window(i).is_some()).collect();
                if sliding.iter().enumerate().any(|(i, &s)| s != slides(i, GEMMA3_PATTERN)) {
                    let flags = sliding.into_iter().map(MetaValue::Bool).collect();
                    m.push((key("attention.sliding_window_pattern"), MetaValue::Array(flags)));
                }
            }
        }
        Family::Llama if arch == "olmo2" => {
            // what llama.cpp's converter writes for OLMo 2 and 3 (no vocab_size, head sizes or
            // rope.dimension_count); OLMo 3's window with one flag per layer and the sliding layers' base
            if let Some(window) = c.sliding_window {
                let flags = (0..c.num_layers).map(|i| MetaValue::Bool(c.window(i).is_some())).collect();
                m.extend([
                    (key("rope.freq_base_swa"), MetaValue::F32(c.rope_local_theta.unwrap_or(c.rope_theta))),
                    (key("attention.sliding_window"), u32_of(window)),
                    (key("attention.sliding_window_pattern"), MetaValue::Array(flags)),
                ]);
            }
            m.extend(rope_scaling_metadata(c, &key));
        }
        Family::Llama if arch == "qwen35" => m.extend(qwen35_metadata(c, &key)),
        Family::Llama if arch == "phi3" => {
            // what llama.cpp's converter writes for Phi-3 (its LongRoPE factors are tensors)
            // without LongRoPE llama.cpp does not use it: transformers' Phi3Config default, as the converter writes
            let original = c.longrope.as_ref().map_or(4096, |l| l.original_max_positions);
            m.extend([
                (key("rope.scaling.original_context_length"), u32_of(original)),
                (key("rope.dimension_count"), u32_of(c.rotary_dim)),
                (key("attention.sliding_window"), u32_of(c.sliding_window.unwrap_or(0))),
            ]);
            if let Some(l) = &c.longrope {
                m.push((key("rope.scaling.attn_factor"), MetaValue::F32(l.attention_factor)));
            }
        }
        Family::Llama => {
            m.extend([
                (key("attention.key_length"), u32_of(c.head_dim)),
                (key("attention.value_length"), u32_of(c.head_dim)),
                (key("vocab_size"), u32_of(c.vocab_size)),
                (key("rope.dimension_count"), u32_of(c.head_dim)),
            ]);
            m.extend(rope_scaling_metadata(c, &key));
        }
    }
    m
}

/// What llama.cpp's converter writes for Qwen3.5: head sizes, the rotary features and their multimodal sections
/// (transformers' default [11, 11, 10] when the model has none), the Gated DeltaNet's `ssm.*` shape, and which
/// layers are linear attention (a flag per layer, which llama.cpp reads first, and the interval).
fn qwen35_metadata(c: &Config, key: &dyn Fn(&str) -> String) -> Vec<(String, MetaValue)> {
    let u32_of = |n: usize| MetaValue::U32(n as u32);
    // (as i32, as the converter writes them)
    let i32_of = |n: usize| MetaValue::I32(n as i32);
    let mut sections: Vec<MetaValue> = match c.rope_sections.is_empty() {
        true => [11, 11, 10].map(i32_of).to_vec(),
        false => c.rope_sections.iter().map(|&n| i32_of(n)).collect(),
    };
    sections.resize(4, i32_of(0));
    let mut m = vec![
        (key("attention.key_length"), u32_of(c.head_dim)),
        (key("attention.value_length"), u32_of(c.head_dim)),
        (key("rope.dimension_sections"), MetaValue::Array(sections)),
        (key("rope.dimension_count"), u32_of(c.rotary_dim)),
    ];
    if let Some(s) = &c.delta_net {
        // the interval the layers follow (the first attention layer's place), else the converter's default 4
        let first = (0..c.num_layers).find(|&i| !c.is_linear_layer(i)).map_or(4, |i| i + 1);
        let regular = (0..c.num_layers).all(|i| c.is_linear_layer(i) != (i + 1).is_multiple_of(first));
        m.extend([
            (key("ssm.conv_kernel"), u32_of(s.conv_kernel)),
            (key("ssm.state_size"), u32_of(s.k_head_dim)),
            (key("ssm.group_count"), u32_of(s.k_heads)),
            (key("ssm.time_step_rank"), u32_of(s.v_heads)),
            (key("ssm.inner_size"), u32_of(s.value_dim())),
            (
                key("attention.recurrent_layers"),
                MetaValue::Array((0..c.num_layers).map(|i| MetaValue::Bool(c.is_linear_layer(i))).collect()),
            ),
            (key("full_attention_interval"), u32_of(if regular { first } else { 4 })),
        ]);
    }
    m.extend(rope_scaling_metadata(c, key));
    m
}

/// Whether `ty` stores fewer than 8 bits per weight (the types after which llama-quantize keeps the output
/// matrix in Q6_K).
fn below_8_bits(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K)
}

/// The type a tensor of GGUF name `name` and row-major `shape` is stored in when the file's type is `ty`.
pub fn tensor_type(name: &str, shape: &[usize], ty: GgmlType, tied: bool) -> GgmlType {
    // llama.cpp keeps a Gated DeltaNet's small convolution in F32, as the converter and llama-quantize do
    if shape.len() < 2 || name.ends_with("ssm_conv1d.weight") {
        return GgmlType::F32;
    }
    let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
    let mut t = if is_output && below_8_bits(ty) { GgmlType::Q6_K } else { ty };
    let row = shape[shape.len() - 1];
    while !row.is_multiple_of(t.block_size()) {
        t = match t {
            GgmlType::Q4_K => GgmlType::Q5_0,
            GgmlType::Q5_K => GgmlType::Q5_1,
            GgmlType::Q6_K => GgmlType::Q8_0,
            _ => GgmlType::F16,
        };
    }
    t
}

/// One tensor of the exported file: its GGUF name, row-major shape and type, where its values come from, and
/// the row order llama.cpp expects (Llama's Q/K permutation), applied when the tensor is written.
pub struct ExportTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    pub source: Source<'a>,
    /// Row i of the file is row `order[i]` of the source.
    pub order: Option<Vec<usize>>,
}

/// The values of an exported tensor.
pub enum Source<'a> {
    F32(Cow<'a, [f32]>),
    /// A matrix kept packed: its blocks are copied as they are when the file's type is theirs (no second
    /// rounding), else dequantized and converted.
    Packed(&'a PackedMatrix),
}

impl<'a> ExportTensor<'a> {
    /// A one-dimensional F32 tensor of `values` (the RoPE tensors).
    fn vector(name: &str, values: Cow<'a, [f32]>) -> Self {
        ExportTensor {
            name: name.to_string(),
            shape: vec![values.len()],
            ty: GgmlType::F32,
            source: Source::F32(values),
            order: None,
        }
    }

    /// The tensor's bytes in the file.
    pub fn bytes(&self) -> Result<Vec<u8>> {
        let row = self.shape.last().copied().unwrap_or(1);
        match &self.source {
            Source::Packed(m) if m.ty == self.ty => {
                Ok(self.order.as_ref().map_or_else(|| m.bytes.to_vec(), |o| m.permute_rows(o).bytes.to_vec()))
            }
            Source::Packed(m) => encode(&reorder(&m.to_f32(), row, self.order.as_deref()), row, self.ty),
            Source::F32(v) => encode(&reorder(v, row, self.order.as_deref()), row, self.ty),
        }
    }
}

/// Rows of `values` in `order` (when given).
fn reorder<'a>(values: &'a [f32], row: usize, order: Option<&[usize]>) -> Cow<'a, [f32]> {
    match order {
        Some(o) => Cow::Owned(o.iter().flat_map(|&r| &values[r * row..(r + 1) * row]).copied().collect()),
        None => Cow::Borrowed(values),
    }
}

/// `values` (rows of `row` values) in `ty`'s bytes, rows quantized in parallel; an error names the row.
pub fn encode(values: &[f32], row: usize, ty: GgmlType) -> Result<Vec<u8>> {
    let rows_per_task = (1 << 16) / row.max(1) + 1;
    let parts: Vec<Vec<u8>> = values
        .par_chunks(rows_per_task * row.max(1))
        .enumerate()
        .map(|(i, chunk)| {
            quantize(ty, chunk).with_context(|| {
                let first = i * rows_per_task;
                format!("rows {first}..{} as {ty}", first + chunk.len() / row.max(1))
            })
        })
        .collect::<Result<_>>()?;
    Ok(parts.concat())
}

/// The base tensors of `model` under llama.cpp names, in the type `ty` asks for. Adapters must be merged
/// first. A matrix kept packed in the file's type is copied block for block.
pub fn model_tensors<'a>(model: &'a Transformer, arch: &str, ty: GgmlType) -> Result<Vec<ExportTensor<'a>>> {
    let c = &model.config;
    let mut out = Vec::new();
    // the RoPE tensors first, where llama.cpp's converter puts them
    if let Some(l) = &c.longrope {
        for (name, factors) in ROPE_FACTORS.iter().zip([&l.long_factor, &l.short_factor]) {
            out.push(ExportTensor::vector(name, Cow::Borrowed(factors)));
        }
    }
    if let Some(s) = &c.rope_scaling {
        let factors = s.freq_factors(&inv_freq(c.rope_theta, c.rotary_dim));
        out.push(ExportTensor::vector(ROPE_FREQS, Cow::Owned(factors)));
    }
    for p in base_params(model) {
        out.push(model_tensor(p, c, arch, ty)?);
    }
    Ok(out)
}

fn model_tensor<'a>(p: &'a Param, c: &Config, arch: &str, ty: GgmlType) -> Result<ExportTensor<'a>> {
    let name = hf_to_gguf(&p.name, arch)
        .with_context(|| format!("tensor {} has no llama.cpp name in a {arch} model", p.name))?;
    let mut shape = p.shape.clone();
    let mut order = permuted_heads(&p.name, arch, c.num_heads, c.num_kv_heads)
        .map(|heads| qk_row_order(p.shape[0], heads, Permute::ToGguf))
        .transpose()?;
    let delta_net = c.delta_net.as_ref().filter(|_| arch == "qwen35");
    let source = match (&p.packed, delta_net) {
        // a matrix in blocks keeps them where the value heads move as whole rows
        (Some(m), Some(s)) if !qwen35::reorders_columns(&p.name, s) => {
            order = qwen35::row_order(&p.name, s, m.rows, qwen35::Direction::ToGguf);
            Source::Packed(m)
        }
        // the Gated DeltaNet's other tensors, stored otherwise in llama.cpp's layout (out_proj's columns included)
        (_, Some(s)) if qwen35::is_delta_net_tensor(&p.name) => {
            Source::F32(Cow::Owned(qwen35::to_gguf(&p.name, &mut shape, p.values().into_owned(), s)?))
        }
        (Some(m), _) => Source::Packed(m),
        // Gemma's and Qwen3.5's (1 + w) norms are stored with the 1 added, as the converter writes them
        (None, _) if gguf_adds_one(&name, arch) => Source::F32(Cow::Owned(p.data.iter().map(|v| v + 1.0).collect())),
        (None, _) => Source::F32(Cow::Borrowed(&p.data)),
    };
    let ty = tensor_type(&name, &shape, ty, c.tie_embeddings);
    Ok(ExportTensor { name, shape, ty, source, order })
}

/// Writes metadata and tensors as GGUF to `out`, each tensor's bytes made (in parallel over rows) only when
/// the writer reaches it; `on_tensor` is called after each.
pub fn write_export(
    out: impl Write,
    metadata: &[(String, MetaValue)],
    tensors: &[ExportTensor<'_>],
    on_tensor: impl Fn(),
) -> Result<()> {
    let meta: Vec<(&str, MetaValue)> = metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let on_tensor = &on_tensor;
    let writes: Vec<TensorToWrite<'_>> = tensors
        .iter()
        .map(|t| TensorToWrite {
            name: &t.name,
            dims: t.shape.iter().rev().map(|&d| d as u64).collect(),
            ty: t.ty,
            data: TensorData::Lazy(Box::new(move || {
                let bytes = t.bytes();
                on_tensor();
                bytes
            })),
        })
        .collect();
    write_gguf(out, &meta, &writes)
}

/// "211 Q5_0, 61 F32" for a summary line.
pub fn type_counts(tensors: &[ExportTensor<'_>]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in tensors {
        *counts.entry(t.ty.name()).or_default() += 1;
    }
    counts.iter().map(|(t, n)| format!("{n} {t}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_llama_quantize() {
        // norms and biases stay F32
        assert_eq!(tensor_type("blk.0.attn_norm.weight", &[576], GgmlType::Q4_K, true), GgmlType::F32);
        // rows of 1536 take Q4_K; rows of 576 (not a multiple of 256) fall back to Q5_0
        assert_eq!(tensor_type("blk.0.ffn_down.weight", &[576, 1536], GgmlType::Q4_K, true), GgmlType::Q4_K);
        assert_eq!(tensor_type("blk.0.ffn_up.weight", &[1536, 576], GgmlType::Q4_K, true), GgmlType::Q5_0);
        // the output matrix is Q6_K below 8 bits (the tied embedding when there is no output.weight)
        assert_eq!(tensor_type("output.weight", &[100, 512], GgmlType::Q4_0, false), GgmlType::Q6_K);
        assert_eq!(tensor_type("token_embd.weight", &[100, 512], GgmlType::Q4_0, true), GgmlType::Q6_K);
        assert_eq!(tensor_type("token_embd.weight", &[100, 512], GgmlType::Q4_0, false), GgmlType::Q4_0);
        assert_eq!(tensor_type("token_embd.weight", &[100, 576], GgmlType::Q4_0, true), GgmlType::Q8_0);
        assert_eq!(tensor_type("output.weight", &[100, 512], GgmlType::Q8_0, false), GgmlType::Q8_0);
        // rows that not even 32 divides are F16
        assert_eq!(tensor_type("blk.0.attn_q.weight", &[64, 40], GgmlType::Q8_0, false), GgmlType::F16);
        assert_eq!(tensor_type("blk.0.attn_q.weight", &[64, 40], GgmlType::BF16, false), GgmlType::BF16);
    }

    #[test]
    fn encode_names_the_row_that_fails() {
        let mut v = vec![0.5f32; 64 * 3];
        v[64 * 2 + 5] = f32::NAN;
        assert_eq!(encode(&v[..128], 64, GgmlType::Q8_0).unwrap(), quantize(GgmlType::Q8_0, &v[..128]).unwrap());
        let e = format!("{:#}", encode(&v, 64, GgmlType::Q8_0).unwrap_err());
        assert!(e.contains("rows 0..3") && e.contains("NaN"), "{e}");
    }
}
