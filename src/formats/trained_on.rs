//! What rows a model or adapter was trained on, recorded by `condlm train` next to the weights it writes
//! (`condlm.json`: `{"trained_on": ["prompt/completion"]}`; PEFT and transformers ignore the file), and carried on
//! by `merge`. Exports read it to present prompts as training did: an adapter trained on prompt/completion rows of
//! a ChatML model must get raw prompts in Ollama, not the chat template. (Not in the safetensors metadata: its
//! keys are written in hash order, which would make two identical runs write different bytes.)
use super::gguf::file::GgufFile;
use super::resolve::ModelFiles;
use crate::input;
use crate::kernels::dequant::GgmlType;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::Path;

/// The file's name, in an adapter or HF model folder.
pub const FILE: &str = "condlm.json";

/// The row formats a training run saw (at least one), and the fingerprint of the base it trained
/// ([`super::fingerprint::model_fingerprint`]), by which an adapter knows its base under another name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrainedOn {
    pub pairs: bool,
    pub alpaca: bool,
    pub chats: bool,
    pub base_fingerprint: Option<String>,
    /// A full fine-tune's: the block-quantized type the base's weight matrices were stored in (a GGUF's, e.g.
    /// Q4_K), so that an export can warn where rounding the fine-tuned values loses what training did
    /// (`condlm export-gguf`).
    pub quantized_base: Option<GgmlType>,
}

/// The formats' names in the file (those of `data::records::Format`).
const PAIRS: &str = "prompt/completion";
const ALPACA: &str = "Alpaca";
const CHAT: &str = "chat";

impl TrainedOn {
    /// The formats' names ("prompt/completion", "Alpaca", "chat"), in that order.
    pub fn names(&self) -> Vec<&'static str> {
        [(self.pairs, PAIRS), (self.alpaca, ALPACA), (self.chats, CHAT)]
            .into_iter()
            .filter(|t| t.0)
            .map(|t| t.1)
            .collect()
    }

    /// The contents of `condlm.json`.
    pub fn file_bytes(&self) -> Vec<u8> {
        let mut v = json!({ "trained_on": self.names() });
        if let Some(f) = &self.base_fingerprint {
            v["base_model_fingerprint"] = f.as_str().into();
        }
        if let Some(t) = self.quantized_base {
            v["base_model_quantized_as"] = t.name().into();
        }
        let mut bytes = serde_json::to_vec_pretty(&v).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Reads a record back; None when it names a format condlm does not know (a later version's record).
    fn parse(v: &Value) -> Option<Self> {
        let mut t = TrainedOn::default();
        for name in v["trained_on"].as_array()? {
            match name.as_str()? {
                PAIRS => t.pairs = true,
                ALPACA => t.alpaca = true,
                CHAT => t.chats = true,
                _ => return None,
            }
        }
        t.base_fingerprint = v["base_model_fingerprint"].as_str().map(str::to_string);
        t.quantized_base = v["base_model_quantized_as"].as_str().and_then(GgmlType::from_name);
        Some(t)
    }

    /// The record in folder `dir`, if it has one.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let v: Value = serde_json::from_str(&input::read_to_string(&path, "training record")?)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        Ok(Self::parse(&v))
    }

    /// The block-quantized type of the weight matrices of the model in `files`: a GGUF's (its first attention
    /// matrix's), or what the record of an HF folder a run wrote says its own base was; None for unquantized ones.
    pub fn quantized_matrices(files: &ModelFiles) -> Result<Option<GgmlType>> {
        let ty = match files {
            ModelFiles::Gguf(path) => {
                let g = GgufFile::open(path)?;
                let first = g.tensors.iter().find(|t| t.name.starts_with("blk.0.attn_") && t.dims.len() == 2);
                first.map(|t| t.ty)
            }
            ModelFiles::HfDir(dir) => Self::read(dir)?.and_then(|t| t.quantized_base),
        };
        Ok(ty.filter(|t| !matches!(t, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)))
    }

    /// The record of what `model` (loaded from `files`) was last trained on: `adapter`'s when one is applied,
    /// else the HF folder's (a full fine-tune or a merge by condlm); None for GGUF files and other models.
    pub fn of_model(files: &ModelFiles, adapter: Option<&Path>) -> Result<Option<Self>> {
        match (adapter, files) {
            (Some(adapter), _) => Self::read(adapter),
            (None, ModelFiles::HfDir(dir)) => Self::read(dir),
            (None, ModelFiles::Gguf(_)) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_reads_back_as_written() {
        for t in [
            TrainedOn { pairs: true, ..Default::default() },
            TrainedOn { alpaca: true, ..Default::default() },
            TrainedOn { chats: true, ..Default::default() },
            TrainedOn {
                pairs: true,
                alpaca: true,
                chats: true,
                base_fingerprint: Some("ab12".into()),
                quantized_base: Some(GgmlType::Q4_K),
            },
        ] {
            let v: Value = serde_json::from_slice(&t.file_bytes()).unwrap();
            assert_eq!(TrainedOn::parse(&v), Some(t.clone()), "{v}");
        }
        let both = TrainedOn { pairs: true, chats: true, ..Default::default() };
        assert_eq!(both.names(), ["prompt/completion", "chat"]);
        assert_eq!(TrainedOn::parse(&json!({"trained_on": ["poems"]})), None);
    }
}
