//! A LoRA adapter as llama.cpp's adapter GGUF (what `convert_lora_to_gguf.py` writes and `llama-cli --lora`
//! loads): `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and for every adapted
//! matrix `<gguf name>.lora_a` (ne = [in, r]) and `<gguf name>.lora_b` (ne = [r, out]), B's rows permuted
//! like the base matrix's for Llama q/k, and Qwen3.5's value heads tiled like the base's (B's rows, out_proj's A
//! columns).
//!
//! llama.cpp scales every adapter by `alpha / r` (r read from each `lora_a`). condlm's scale may differ per
//! matrix (rsLoRA's α/√r, PEFT rank/alpha patterns), so each B is multiplied by `scale · r / alpha`: 1 exactly
//! for a plain adapter, whose tensors are then written as they are.
use super::export::{ExportTensor, Source};
use super::file::MetaValue;
use super::qwen35;
use crate::formats::weights::{Permute, hf_to_gguf, permuted_heads, qk_row_order};
use crate::kernels::dequant::GgmlType;
use crate::network::lora::Lora;
use crate::network::transformer::Transformer;
use anyhow::{Context, Result, bail};
use std::borrow::Cow;

/// The `adapter.lora.alpha` written: the first adapter's α-equivalent (scale · r).
pub fn lora_alpha(model: &Transformer) -> Result<f32> {
    let first = adapters(model).next().context("the model has no LoRA adapters attached")?;
    Ok(first.1.scale * first.1.rank as f32)
}

/// The metadata of an adapter file for a base of architecture `arch`.
pub fn adapter_metadata(arch: &str, name: &str, alpha: f32) -> Vec<(String, MetaValue)> {
    vec![
        ("general.architecture".into(), MetaValue::Str(arch.into())),
        ("general.type".into(), MetaValue::Str("adapter".into())),
        ("general.name".into(), MetaValue::Str(name.into())),
        ("adapter.type".into(), MetaValue::Str("lora".into())),
        ("adapter.lora.alpha".into(), MetaValue::F32(alpha)),
    ]
}

/// Every adapted linear layer: (its HF weight name, its adapter).
fn adapters(model: &Transformer) -> impl Iterator<Item = (&str, &Lora)> {
    model.blocks.iter().flat_map(|b| b.linears()).filter_map(|l| Some((l.w.name.as_str(), l.lora.as_ref()?)))
}

/// The `lora_a`/`lora_b` tensors of every adapter in `ty` (F32, F16 or BF16), for adapter alpha `alpha`.
pub fn adapter_tensors<'a>(
    model: &'a Transformer,
    arch: &str,
    ty: GgmlType,
    alpha: f32,
) -> Result<Vec<ExportTensor<'a>>> {
    if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        bail!("a LoRA adapter GGUF holds F32, F16 or BF16 tensors (llama.cpp applies them unquantized), not {ty}");
    }
    let c = &model.config;
    let mut out = Vec::new();
    for (weight, lora) in adapters(model) {
        let name = hf_to_gguf(weight, arch).with_context(|| format!("{weight} has no llama.cpp name in {arch}"))?;
        let factor = lora.scale * lora.rank as f32 / alpha;
        let b = match factor == 1.0 {
            true => Cow::Borrowed(&lora.b.data[..]),
            false => Cow::Owned(lora.b.data.iter().map(|v| v * factor).collect()),
        };
        // B's rows are the base matrix's output rows: permuted like them for Llama q/k, Qwen3.5's value heads tiled;
        // A's columns are its input columns, tiled like out_proj's
        let delta_net = c.delta_net.as_ref().filter(|_| arch == "qwen35");
        let order = match (permuted_heads(weight, arch, c.num_heads, c.num_kv_heads), delta_net) {
            (Some(heads), _) => Some(qk_row_order(lora.b.shape[0], heads, Permute::ToGguf)?),
            (None, Some(s)) => qwen35::row_order(weight, s, lora.b.shape[0], qwen35::Direction::ToGguf),
            (None, None) => None,
        };
        let a = match delta_net.filter(|s| qwen35::reorders_columns(weight, s)) {
            Some(s) => {
                Source::F32(Cow::Owned(qwen35::to_gguf(weight, &mut lora.a.shape.clone(), lora.a.data.clone(), s)?))
            }
            None => Source::F32(Cow::Borrowed(&lora.a.data)),
        };
        out.push(ExportTensor {
            name: format!("{name}.lora_a"),
            shape: lora.a.shape.clone(),
            ty,
            source: a,
            order: None,
        });
        let b = Source::F32(b);
        out.push(ExportTensor { name: format!("{name}.lora_b"), shape: lora.b.shape.clone(), ty, source: b, order });
    }
    Ok(out)
}
