//! Tensors by their Hugging Face names, from safetensors or GGUF. A GGUF file is translated on
//! the fly: llama.cpp names → HF names, Q/K rows un-permuted for Llama, GPT-2 weights back to Conv1D (in, out).
use super::gguf::file::GgufFile;
use super::safetensors_files::SafetensorsFiles;
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

pub enum Weights {
    Safetensors { dir: PathBuf, files: SafetensorsFiles },
    Gguf { file: GgufFile, path: PathBuf, arch: String, num_heads: usize, num_kv_heads: usize },
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

    /// Every tensor name, in HF naming; a GGUF tensor with no HF counterpart is an error.
    pub fn hf_names(&self) -> Result<Vec<String>> {
        match self {
            Weights::Safetensors { files, .. } => Ok(files.names().map(str::to_owned).collect()),
            Weights::Gguf { file, path, arch, .. } => file
                .tensors
                .iter()
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
            Weights::Gguf { file, arch, num_heads, num_kv_heads, .. } => {
                let Some(name) = hf_to_gguf(hf_name, arch) else { return Ok(None) };
                let Some(info) = file.tensor(&name) else { return Ok(None) };
                let mut shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
                let mut data = file.tensor_f32(&name)?;
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
    if arch != "llama" {
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
    let rows = shape[0];
    let cols: usize = shape[1..].iter().product();
    if n_heads == 0 || !rows.is_multiple_of(2 * n_heads) {
        bail!("cannot permute a tensor of {rows} rows into {n_heads} heads");
    }
    let hd = rows / n_heads;
    let mut out = vec![0.0; data.len()];
    for h in 0..n_heads {
        for j in 0..hd / 2 {
            for s in 0..2 {
                let gguf = (h * hd + 2 * j + s) * cols;
                let hf = (h * hd + s * (hd / 2) + j) * cols;
                let (src, dst) = if dir == Permute::FromGguf { (gguf, hf) } else { (hf, gguf) };
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    Ok(out)
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
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
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
fn tables(arch: &str) -> (NameTable, NameTable, &'static str) {
    match arch {
        "gpt2" => (GPT2_GLOBAL, GPT2_LAYER, "transformer.h."),
        _ => (LLAMA_GLOBAL, LLAMA_LAYER, "model.layers."),
    }
}

/// The llama.cpp name of HF tensor `hf` in architecture `arch` (a GGUF architecture name).
pub fn hf_to_gguf(hf: &str, arch: &str) -> Option<String> {
    let (global, layer, prefix) = tables(arch);
    if let Some((_, g)) = global.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let (n, rest) = hf.strip_prefix(prefix)?.split_once('.')?;
    let (_, g) = layer.iter().find(|(h, _)| *h == rest)?;
    Some(format!("blk.{n}.{g}"))
}

fn gguf_to_hf(gguf: &str, arch: &str) -> Option<String> {
    let (global, layer, prefix) = tables(arch);
    if let Some((h, _)) = global.iter().find(|(_, g)| *g == gguf) {
        return Some(h.to_string());
    }
    let (n, rest) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let (h, _) = layer.iter().find(|(_, g)| *g == rest)?;
    Some(format!("{prefix}{n}.{h}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in ["llama", "gpt2"] {
            let (global, layer, prefix) = tables(arch);
            for (h, _) in global {
                assert_eq!(gguf_to_hf(&hf_to_gguf(h, arch).unwrap(), arch).unwrap(), *h);
            }
            for (h, _) in layer {
                let name = format!("{prefix}7.{h}");
                assert_eq!(gguf_to_hf(&hf_to_gguf(&name, arch).unwrap(), arch).unwrap(), name);
            }
        }
        assert_eq!(hf_to_gguf("model.layers.3.mlp.up_proj.weight", "qwen2").unwrap(), "blk.3.ffn_up.weight");
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
