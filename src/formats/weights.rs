//! Tensors by their Hugging Face names, from safetensors or GGUF. A GGUF file is translated on
//! the fly: llama.cpp names → HF names, Q/K rows un-permuted for Llama, GPT-2 weights back to Conv1D (in, out).
use super::gguf::file::GgufFile;
use super::gguf::qwen35;
use super::safetensors_files::SafetensorsFiles;
use crate::kernels::dequant::GgmlType;
use crate::kernels::packed::PackedMatrix;
use crate::kernels::weight_bytes::SharedBytes;
use crate::network::config::{Config, DeltaNetShape, Family};
use anyhow::{Result, bail};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub enum Weights {
    Safetensors {
        dir: PathBuf,
        files: SafetensorsFiles,
    },
    Gguf {
        file: GgufFile,
        path: PathBuf,
        arch: String,
        num_heads: usize,
        num_kv_heads: usize,
        /// The model's layers (a file may hold more: Qwen3.5's multi-token-prediction block after them).
        num_layers: usize,
        /// The file's `block_count`: the model's layers plus any multi-token-prediction blocks.
        stored_blocks: usize,
        delta_net: Option<DeltaNetShape>,
    },
}

/// A tensor in its Hugging Face shape, converted to f32.
pub struct HfTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Weights {
    /// The checkpoint path, for messages.
    pub fn path(&self) -> &Path {
        match self {
            Weights::Safetensors { dir, .. } => dir,
            Weights::Gguf { path, .. } => path,
        }
    }

    /// Where the checkpoint's config comes from, for messages that ask to check it against the tensors.
    pub fn config_source(&self) -> &'static str {
        match self {
            Weights::Safetensors { .. } => "config.json",
            Weights::Gguf { .. } => "the GGUF metadata (block_count, sizes)",
        }
    }

    /// The config's layer count and vocabulary checked against the tensors' names and the embedding's rows, from
    /// the headers alone: what `train --dry-run` and `info`, which load no weights, can check (loading checks
    /// every tensor).
    pub fn check_layout(&self, c: &Config) -> Result<()> {
        let (path, source) = (self.path().display(), self.config_source());
        let layer_of = |n: &str| -> Option<usize> {
            let rest = match c.family {
                Family::Gpt2 => n.strip_prefix("transformer.h.").or_else(|| n.strip_prefix("h.")),
                Family::Llama => n.strip_prefix(c.text_prefix()).and_then(|r| r.strip_prefix(".layers.")),
            }?;
            rest.split('.').next()?.parse().ok()
        };
        let names = self.hf_names()?;
        let mut layers = BTreeSet::new();
        for (name, layer) in names.iter().filter_map(|n| Some((n, layer_of(n)?))) {
            if layer >= c.num_layers {
                bail!(
                    "{path}: tensor \"{name}\" is of layer {layer}, but the model has {} layers; check that {source} \
                     matches the weights",
                    c.num_layers
                );
            }
            layers.insert(layer);
        }
        if let Some(missing) = (0..c.num_layers).find(|l| !layers.contains(l)) {
            bail!(
                "{path}: the model has {} layers, but no tensor of layer {missing}; check that {source} matches the \
                 weights",
                c.num_layers
            );
        }
        let embed = match c.family {
            Family::Gpt2 => names.iter().find(|n| *n == "transformer.wte.weight" || *n == "wte.weight"),
            Family::Llama => {
                let e = format!("{}.embed_tokens.weight", c.text_prefix());
                names.iter().find(|n| **n == e)
            }
        };
        if let Some(rows) = embed.and_then(|e| self.rows(e))
            && rows != c.vocab_size
        {
            bail!("{path}: the embedding has {rows} rows, but the vocabulary {} tokens; check {source}", c.vocab_size);
        }
        Ok(())
    }

    /// The first dimension of `hf_name` in its HF shape, from the header.
    fn rows(&self, hf_name: &str) -> Option<usize> {
        match self {
            Weights::Safetensors { files, .. } => files.raw(hf_name).and_then(|(_, shape, _)| shape.first().copied()),
            Weights::Gguf { file, arch, .. } => {
                file.tensor(&hf_to_gguf(hf_name, arch)?)?.dims.last().map(|&d| d as usize)
            }
        }
    }

    /// Every tensor name, in HF naming; a GGUF tensor with no HF counterpart is an error.
    pub fn hf_names(&self) -> Result<Vec<String>> {
        match self {
            Weights::Safetensors { files, .. } => Ok(files.names().map(str::to_owned).collect()),
            Weights::Gguf { file, path, arch, num_layers, stored_blocks, .. } => file
                .tensors
                .iter()
                .filter(|t| {
                    !ROPE_TENSORS.contains(&t.name.as_str()) && !in_mtp_blocks(&t.name, *num_layers, *stored_blocks)
                })
                .map(|t| {
                    gguf_to_hf(&t.name, arch).ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: tensor \"{}\" is not part of a {arch} model as condlm knows it; \
                             the file may be for an unsupported variant",
                            path.display(),
                            t.name
                        )
                    })
                })
                .collect(),
        }
    }

    /// Loads `hf_name` as f32 in its HF shape; `None` if the checkpoint lacks it.
    pub fn load(&self, hf_name: &str) -> Result<Option<HfTensor>> {
        match self {
            Weights::Safetensors { files, .. } => {
                Ok(files.load_f32(hf_name)?.map(|(shape, data)| HfTensor { shape, data }))
            }
            Weights::Gguf { file, arch, num_heads, num_kv_heads, delta_net, .. } => {
                let Some(name) = hf_to_gguf(hf_name, arch) else { return Ok(None) };
                let Some(info) = file.tensor(&name) else { return Ok(None) };
                let mut shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
                let mut data = file.tensor_f32(&name)?;
                if gguf_adds_one(&name, arch) {
                    data.iter_mut().for_each(|v| *v -= 1.0);
                }
                if let Some(s) = delta_net {
                    data = qwen35::from_gguf(hf_name, &mut shape, data, s)?;
                }
                if let Some(heads) = permuted_heads(hf_name, arch, *num_heads, *num_kv_heads) {
                    data = permute_qk_rows(&data, &shape, heads, Permute::FromGguf)?;
                }
                if arch == "gpt2" && shape.len() == 2 && is_gpt2_conv1d(hf_name) {
                    data = transpose(&data, shape[0], shape[1]);
                    shape.swap(0, 1);
                }
                Ok(Some(HfTensor { shape, data }))
            }
        }
    }
}

/// How the weight matrices of the blocks are kept in memory (the embeddings, norms and biases are always f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BaseDtype {
    /// As the checkpoint stores them: GGUF blocks (Q4_K, Q8_0, …), F16 or BF16 stay packed, F32 stays F32.
    /// The products are bit-identical to f32's; only memory differs.
    #[default]
    Stored,
    /// Every matrix as f32 (4 bytes per weight).
    F32,
    /// Every matrix rounded to bf16 (2 bytes per weight; changes the values unless they were bf16).
    Bf16,
}

impl Weights {
    /// Bytes the model's weights take in memory, by the type they are kept in, when its matrices are kept as
    /// `base` says — from the tensor table alone: what the memory plan counts before loading.
    pub fn resident_bytes(&self, base: BaseDtype) -> BTreeMap<&'static str, usize> {
        let block_matrix = |name: &str, dims: usize| dims == 2 && (name.contains(".layers.") || name.contains(".h."));
        // what `Stored` keeps packed: every matrix but GPT-2's position table
        let packable = |name: &str, dims: usize| dims == 2 && !name.ends_with("wpe.weight");
        let mut kept = BTreeMap::new();
        let mut add = |ty: &'static str, bytes: usize| *kept.entry(ty).or_default() += bytes;
        match self {
            Weights::Safetensors { files, .. } => {
                for t in files.summaries() {
                    let n: usize = t.shape.iter().product();
                    let dims = t.shape.len();
                    match (base, t.dtype.as_str()) {
                        (BaseDtype::Stored, ty @ ("F16" | "BF16"))
                            if packable(&t.name, dims) && !is_gpt2_conv1d(&t.name) =>
                        {
                            add(if ty == "F16" { "F16" } else { "BF16" }, 2 * n)
                        }
                        (BaseDtype::Bf16, _) if block_matrix(&t.name, dims) => add("BF16", 2 * n),
                        _ => add("F32", 4 * n),
                    }
                }
            }
            Weights::Gguf { file, arch, .. } => {
                for t in &file.tensors {
                    let n = t.n_elements() as usize;
                    let hf = gguf_to_hf(&t.name, arch).unwrap_or_default();
                    let dims = t.dims.len();
                    match base {
                        BaseDtype::Stored if packable(&hf, dims) && t.ty != GgmlType::F32 => {
                            add(t.ty.name(), t.n_bytes().unwrap_or(4 * n as u64) as usize)
                        }
                        BaseDtype::Bf16 if block_matrix(&hf, dims) => add("BF16", 2 * n),
                        _ => add("F32", 4 * n),
                    }
                }
            }
        }
        kept
    }

    /// Matrix `hf_name` as an (out, in) [`PackedMatrix`] in its stored form — a GGUF tensor that is not F32, or
    /// an F16/BF16 safetensors tensor — with Llama's Q/K rows un-permuted; `None` when absent, stored as F32, or
    /// in a layout that needs a transpose (GPT-2's Conv1D in safetensors), which the f32 path handles.
    pub fn load_packed(&self, hf_name: &str) -> Result<Option<PackedMatrix>> {
        let (ty, rows, cols, bytes) = match self {
            Weights::Safetensors { files, .. } => {
                let Some((dtype, shape, bytes)) = files.raw(hf_name) else { return Ok(None) };
                let ty = match dtype {
                    Dtype::F16 => GgmlType::F16,
                    Dtype::BF16 => GgmlType::BF16,
                    _ => return Ok(None),
                };
                if shape.len() != 2 || is_gpt2_conv1d(hf_name) {
                    return Ok(None);
                }
                (ty, shape[0], shape[1], SharedBytes::owned(bytes.to_vec()))
            }
            Weights::Gguf { file, arch, delta_net, .. } => {
                let Some(info) = hf_to_gguf(hf_name, arch).and_then(|n| file.tensor(&n)) else { return Ok(None) };
                // out_proj's value heads are reordered across its columns, which blocks cannot be: the f32 path
                let by_columns = delta_net.as_ref().is_some_and(|s| qwen35::reorders_columns(hf_name, s));
                if info.ty == GgmlType::F32 || info.dims.len() != 2 || by_columns {
                    return Ok(None);
                }
                (info.ty, info.dims[1] as usize, info.dims[0] as usize, file.tensor_shared(info)?)
            }
        };
        let packed = PackedMatrix::new(ty, rows, cols, bytes)
            .map_err(|e| anyhow::anyhow!("{}: tensor {hf_name}: {e}", self.path().display()))?;
        Ok(Some(match self {
            Weights::Gguf { arch, num_heads, num_kv_heads, delta_net, .. } => {
                let order = match (permuted_heads(hf_name, arch, *num_heads, *num_kv_heads), delta_net) {
                    (Some(heads), _) => Some(qk_row_order(rows, heads, Permute::FromGguf)?),
                    (None, Some(s)) => qwen35::row_order(hf_name, s, rows, qwen35::Direction::FromGguf),
                    (None, None) => None,
                };
                match order {
                    Some(order) => {
                        let permuted = packed.permute_rows(&order);
                        // the file's copy is not read again: its pages leave the process's memory
                        packed.bytes.release();
                        permuted
                    }
                    None => packed,
                }
            }
            Weights::Safetensors { .. } => packed,
        }))
    }
}

/// Err("holds a non-finite value, NaN at element i of n") for the first value that is not finite. One pass, no copy.
pub fn check_finite(data: &[f32]) -> std::result::Result<(), String> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(format!("holds a non-finite value, {} at element {i} of {}", data[i], data.len())),
        None => Ok(()),
    }
}

/// GPT-2's Conv1D modules store (in, out); llama.cpp's converter stores them transposed.
pub fn is_gpt2_conv1d(hf_name: &str) -> bool {
    hf_name.ends_with(".weight")
        && ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"].iter().any(|m| hf_name.contains(m))
}

/// (rows, cols) row-major → (cols, rows) row-major.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Which way [`permute_qk_rows`] goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Permute {
    /// HF → GGUF, as llama.cpp's converter writes Llama Q/K projections.
    ToGguf,
    /// GGUF → HF.
    FromGguf,
}

/// The head count whose rows llama.cpp's converter permutes in tensor `hf_name` (a Llama q/k projection
/// weight or bias), or `None` for every other tensor and architecture.
pub fn permuted_heads(hf_name: &str, arch: &str, num_heads: usize, num_kv_heads: usize) -> Option<usize> {
    // llama.cpp's converter permutes for the architectures it runs with interleaved rotary pairs
    if !matches!(arch, "llama" | "smollm3") {
        return None;
    }
    if hf_name.contains("self_attn.q_proj.") {
        Some(num_heads)
    } else if hf_name.contains("self_attn.k_proj.") {
        Some(num_kv_heads)
    } else {
        None
    }
}

/// llama.cpp's `permute` of Q/K projection rows (interleaved rotary pairs vs. rotate-half halves) and
/// its inverse: within each head, GGUF row `2j + s` holds HF row `s·(head_dim/2) + j`.
pub fn permute_qk_rows(data: &[f32], shape: &[usize], n_heads: usize, dir: Permute) -> Result<Vec<f32>> {
    let cols: usize = shape[1..].iter().product();
    let order = qk_row_order(shape[0], n_heads, dir)?;
    Ok(order.iter().flat_map(|&r| &data[r * cols..(r + 1) * cols]).copied().collect())
}

/// The source row of every destination row of [`permute_qk_rows`].
pub fn qk_row_order(rows: usize, n_heads: usize, dir: Permute) -> Result<Vec<usize>> {
    if n_heads == 0 || !rows.is_multiple_of(2 * n_heads) {
        bail!("cannot permute a tensor of {rows} rows into {n_heads} heads");
    }
    let hd = rows / n_heads;
    let mut order = vec![0; rows];
    for h in 0..n_heads {
        for j in 0..hd / 2 {
            for s in 0..2 {
                let gguf = h * hd + 2 * j + s;
                let hf = h * hd + s * (hd / 2) + j;
                let (src, dst) = if dir == Permute::FromGguf { (gguf, hf) } else { (hf, gguf) };
                order[dst] = src;
            }
        }
    }
    Ok(order)
}

/// (HF name, llama.cpp name) pairs.
type NameTable = &'static [(&'static str, &'static str)];

/// (HF suffix inside a layer, llama.cpp suffix) for the Llama family.
const LLAMA_LAYER: NameTable = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.o_proj.bias", "attn_output.bias"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];
/// The pre-MLP norm: Llama's post_attention_layernorm.
const LLAMA_MLP_NORM: NameTable = &[("post_attention_layernorm.weight", "ffn_norm.weight")];
/// The norms of the sublayers' outputs (Gemma 3, OLMo 2/3): there post_attention_layernorm norms the attention
/// output.
const POST_NORMS: NameTable = &[
    ("post_attention_layernorm.weight", "post_attention_norm.weight"),
    ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
];
/// Gemma 3's pre-MLP norm.
const GEMMA3_MLP_NORM: NameTable = &[("pre_feedforward_layernorm.weight", "ffn_norm.weight")];
/// Phi-3's layer: q|k|v as one matrix, gate|up as one (llama.cpp's `ffn_up`, twice the MLP width).
const PHI3_LAYER: NameTable = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.qkv_proj.weight", "attn_qkv.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];
const LLAMA_GLOBAL: NameTable = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];
const GPT2_LAYER: NameTable = &[
    ("ln_1.weight", "attn_norm.weight"),
    ("ln_1.bias", "attn_norm.bias"),
    ("attn.c_attn.weight", "attn_qkv.weight"),
    ("attn.c_attn.bias", "attn_qkv.bias"),
    ("attn.c_proj.weight", "attn_output.weight"),
    ("attn.c_proj.bias", "attn_output.bias"),
    ("ln_2.weight", "ffn_norm.weight"),
    ("ln_2.bias", "ffn_norm.bias"),
    ("mlp.c_fc.weight", "ffn_up.weight"),
    ("mlp.c_fc.bias", "ffn_up.bias"),
    ("mlp.c_proj.weight", "ffn_down.weight"),
    ("mlp.c_proj.bias", "ffn_down.bias"),
];
const GPT2_GLOBAL: NameTable = &[
    ("transformer.wte.weight", "token_embd.weight"),
    ("transformer.wpe.weight", "position_embd.weight"),
    ("transformer.ln_f.weight", "output_norm.weight"),
    ("transformer.ln_f.bias", "output_norm.bias"),
    ("lm_head.weight", "output.weight"),
];

/// (global names, per-layer names, HF layer prefix) of an architecture.
fn tables(arch: &str) -> (NameTable, &'static [NameTable], &'static str) {
    match arch {
        "gpt2" => (GPT2_GLOBAL, &[GPT2_LAYER], "transformer.h."),
        "gemma3" => (LLAMA_GLOBAL, &[LLAMA_LAYER, POST_NORMS, GEMMA3_MLP_NORM], "model.layers."),
        "olmo2" => (LLAMA_GLOBAL, &[LLAMA_LAYER, POST_NORMS], "model.layers."),
        "phi3" => (LLAMA_GLOBAL, &[PHI3_LAYER], "model.layers."),
        "qwen35" => (LLAMA_GLOBAL, &[LLAMA_LAYER, qwen35::LAYER_NAMES], "model.layers."),
        _ => (LLAMA_GLOBAL, &[LLAMA_LAYER, LLAMA_MLP_NORM], "model.layers."),
    }
}

/// The llama.cpp name of HF tensor `hf` in architecture `arch` (a GGUF architecture name).
pub fn hf_to_gguf(hf: &str, arch: &str) -> Option<String> {
    let (global, layer, prefix) = tables(arch);
    // a multimodal Qwen3.5's text model (llama.cpp's converter writes it alone)
    let text = hf.strip_prefix("model.language_model.").map(|rest| format!("model.{rest}"));
    let hf = text.as_deref().unwrap_or(hf);
    if let Some((_, g)) = global.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let (n, rest) = hf.strip_prefix(prefix)?.split_once('.')?;
    let (_, g) = layer.iter().flat_map(|t| t.iter()).find(|(h, _)| *h == rest)?;
    Some(format!("blk.{n}.{g}"))
}

fn gguf_to_hf(gguf: &str, arch: &str) -> Option<String> {
    let (global, layer, prefix) = tables(arch);
    if let Some((h, _)) = global.iter().find(|(_, g)| *g == gguf) {
        return Some(h.to_string());
    }
    let (n, rest) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let (h, _) = layer.iter().flat_map(|t| t.iter()).find(|(_, g)| *g == rest)?;
    Some(format!("{prefix}{n}.{h}"))
}

/// The GGUF tensor of Llama 3.1's RoPE scaling (per-frequency divisors).
pub const ROPE_FREQS: &str = "rope_freqs.weight";
/// LongRoPE's factors in a Phi-3 GGUF (the long set, the short set).
pub const ROPE_FACTORS: [&str; 2] = ["rope_factors_long.weight", "rope_factors_short.weight"];
/// The GGUF tensors that are part of the config, not weights.
const ROPE_TENSORS: [&str; 3] = [ROPE_FREQS, ROPE_FACTORS[0], ROPE_FACTORS[1]];

/// Whether the GGUF stores tensor `gguf_name` as 1 + the HF value: Gemma's and Qwen3.5's RMSNorm weights, which
/// HF keeps zero-centred and llama.cpp's converter writes with the 1 added (not Qwen3.5's gated norm, which HF
/// applies as w).
pub fn gguf_adds_one(gguf_name: &str, arch: &str) -> bool {
    let norm = gguf_name.ends_with("norm.weight");
    match arch {
        "gemma3" => norm,
        "qwen35" => norm && !gguf_name.ends_with("ssm_norm.weight"),
        _ => false,
    }
}

/// Whether `gguf_name` belongs to a block in `layers..stored_blocks` (Qwen3.5's multi-token-prediction block, which
/// llama.cpp's converter appends and condlm does not use). A block past `block_count` is not skipped: it is an
/// unknown tensor, so a file whose `block_count` was lowered is refused rather than run as a shallower model.
fn in_mtp_blocks(gguf_name: &str, layers: usize, stored_blocks: usize) -> bool {
    let block = gguf_name.strip_prefix("blk.").and_then(|r| r.split_once('.')).and_then(|(n, _)| n.parse().ok());
    block.is_some_and(|b: usize| (layers..stored_blocks).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in ["llama", "gpt2", "gemma3", "phi3", "olmo2", "qwen35"] {
            let (global, layer, prefix) = tables(arch);
            for (h, _) in global {
                assert_eq!(gguf_to_hf(&hf_to_gguf(h, arch).unwrap(), arch).unwrap(), *h);
            }
            for (h, _) in layer.iter().flat_map(|t| t.iter()) {
                let name = format!("{prefix}7.{h}");
                assert_eq!(gguf_to_hf(&hf_to_gguf(&name, arch).unwrap(), arch).unwrap(), name);
            }
        }
        assert_eq!(hf_to_gguf("model.layers.3.mlp.up_proj.weight", "qwen2").unwrap(), "blk.3.ffn_up.weight");
        let pre_mlp = |arch| hf_to_gguf("model.layers.0.post_attention_layernorm.weight", arch).unwrap();
        assert_eq!(
            (pre_mlp("llama"), pre_mlp("gemma3")),
            ("blk.0.ffn_norm.weight".into(), "blk.0.post_attention_norm.weight".into())
        );
        assert!(gguf_to_hf("blk.0.something_else.weight", "llama").is_none());
    }

    #[test]
    fn permute_is_llama_cpp_permute_and_its_inverse() {
        // llama.cpp: reshape(n_head, 2, hd/2, cols).swapaxes(1, 2) — build that permutation and invert it.
        let (n_heads, hd, cols) = (2, 4, 3);
        let hf: Vec<f32> = (0..n_heads * hd * cols).map(|i| i as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..n_heads {
            for s in 0..2 {
                for j in 0..hd / 2 {
                    let src = (h * hd + s * hd / 2 + j) * cols;
                    let dst = (h * hd + j * 2 + s) * cols;
                    gguf[dst..dst + cols].copy_from_slice(&hf[src..src + cols]);
                }
            }
        }
        let shape = [n_heads * hd, cols];
        assert_eq!(permute_qk_rows(&gguf, &shape, n_heads, Permute::FromGguf).unwrap(), hf);
        assert_eq!(permute_qk_rows(&hf, &shape, n_heads, Permute::ToGguf).unwrap(), gguf);
    }
}
