//! What rows a model or adapter was trained on, recorded by `condlm train` in the metadata of the safetensors
//! file it writes (`condlm.trained_on`, e.g. "prompt/completion" or "chat"; PEFT and transformers ignore it), and
//! carried on by `merge`. Exports read it to present prompts as training did: an adapter trained on
//! prompt/completion rows of a ChatML model must get raw prompts in Ollama, not the chat template.
use super::resolve::ModelFiles;
use super::safetensors_files::shard_names;
use crate::data::dataset::DataStats;
use crate::data::records::Format;
use crate::input;
use anyhow::{Context, Result};
use safetensors::tensor::SafeTensors;
use std::path::Path;

/// The safetensors metadata key.
pub const KEY: &str = "condlm.trained_on";

/// The row formats a training run saw (at least one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrainedOn {
    pub pairs: bool,
    pub alpaca: bool,
    pub chats: bool,
}

const FORMATS: [Format; 3] = [Format::Pair, Format::Alpaca, Format::Chat];

impl TrainedOn {
    pub fn of(stats: &DataStats) -> Self {
        TrainedOn { pairs: stats.pairs > 0, alpaca: stats.alpaca > 0, chats: stats.chats > 0 }
    }

    fn has(&self, f: Format) -> bool {
        match f {
            Format::Pair => self.pairs,
            Format::Alpaca => self.alpaca,
            Format::Chat => self.chats,
        }
    }

    /// The metadata value: the formats' names, comma-separated ("prompt/completion, chat").
    pub fn value(&self) -> String {
        FORMATS.iter().filter(|&&f| self.has(f)).map(|f| f.name()).collect::<Vec<_>>().join(", ")
    }

    /// Reads a metadata value back; None when it names no format condlm knows (a later version's record).
    pub fn parse(value: &str) -> Option<Self> {
        let mut t = TrainedOn::default();
        for name in value.split(", ") {
            match FORMATS.iter().find(|f| f.name() == name)? {
                Format::Pair => t.pairs = true,
                Format::Alpaca => t.alpaca = true,
                Format::Chat => t.chats = true,
            }
        }
        Some(t)
    }

    /// The record in a safetensors file, if it has one.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        let bytes = input::map(path, "safetensors file")?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        Ok(meta.metadata().as_ref().and_then(|m| m.get(KEY)).and_then(|v| Self::parse(v)))
    }

    /// The record of what `model` (loaded from `files`) was last trained on: `adapter`'s when one is applied,
    /// else the HF folder's (a full fine-tune or a merge by condlm); None for GGUF files and other models.
    pub fn of_model(files: &ModelFiles, adapter: Option<&Path>) -> Result<Option<Self>> {
        if let Some(adapter) = adapter {
            return Self::read(&adapter.join("adapter_model.safetensors"));
        }
        match files {
            ModelFiles::HfDir(dir) => {
                let single = dir.join("model.safetensors");
                let index = dir.join("model.safetensors.index.json");
                let first = if single.is_file() {
                    single
                } else {
                    let text = input::read_to_string(&index, "shard index")?;
                    match shard_names(&index, &text)?.first() {
                        Some(name) => dir.join(name),
                        None => return Ok(None),
                    }
                };
                Self::read(&first)
            }
            ModelFiles::Gguf(_) => Ok(None),
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
            TrainedOn { pairs: true, alpaca: true, chats: true },
        ] {
            assert_eq!(TrainedOn::parse(&t.value()), Some(t), "{}", t.value());
        }
        assert_eq!(TrainedOn { pairs: true, chats: true, ..Default::default() }.value(), "prompt/completion, chat");
        assert_eq!(TrainedOn::parse("poems"), None);
    }
}
