//! A LoRA adapter as llama.cpp's adapter GGUF (what `convert_lora_to_gguf.py` writes and `llama-cli --lora`
//! loads): `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and for every adapted
//! matrix `<gguf name>.lora_a` (ne = [in, r]) and `<gguf name>.lora_b` (ne = [r, out]), B's rows permuted
//! like the base matrix's for Llama q/k.
//!
//! llama.cpp scales every adapter by `alpha / r` (r read from each `lora_a`). condlm's scale may differ per
//! matrix (rsLoRA's α/√r, PEFT rank/alpha patterns), so each B is multiplied by `scale · r / alpha`: 1 exactly
//! for a plain adapter, whose tensors are then written as they are.
use super::dequant::GgmlType;
use super::export::ExportTensor;
use super::file::MetaValue;
use crate::formats::weights::{Permute, hf_to_gguf, permute_qk_rows, permuted_heads};
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
        let mut b = Cow::Borrowed(&lora.b.data[..]);
        if let Some(heads) = permuted_heads(weight, arch, c.num_heads, c.num_kv_heads) {
            b = Cow::Owned(permute_qk_rows(&b, &lora.b.shape, heads, Permute::ToGguf)?);
        }
        if factor != 1.0 {
            b = Cow::Owned(b.iter().map(|v| v * factor).collect());
        }
        out.push(ExportTensor {
            name: format!("{name}.lora_a"),
            shape: lora.a.shape.clone(),
            ty,
            values: Cow::Borrowed(&lora.a.data),
        });
        out.push(ExportTensor { name: format!("{name}.lora_b"), shape: lora.b.shape.clone(), ty, values: b });
    }
    Ok(out)
}
