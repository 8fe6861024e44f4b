//! A Hugging Face checkpoint's weights: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`, memory-mapped; tensors converted to f32 on request.
use crate::input::{self, FileBytes};
use anyhow::{Context, Result, bail};
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    bytes: FileBytes,
    header_len: usize,
    meta: Metadata,
}

pub struct SafetensorsFiles {
    shards: Vec<Shard>,
    /// tensor name → shard index
    index: HashMap<String, usize>,
}

/// One tensor's name, shape and stored dtype, for listings.
pub struct TensorSummary {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

impl SafetensorsFiles {
    /// Opens the weights of the HF folder `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            let text = input::read_to_string(&index_path, "shard index")?;
            shard_names(&index_path, &text)?.into_iter().map(|f| dir.join(f)).collect()
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json; \
                 this folder does not hold a Hugging Face safetensors checkpoint \
                 (PyTorch .bin checkpoints are not read: convert them with save_pretrained(safe_serialization=True))",
                dir.display()
            );
        };
        let mut shards = Vec::new();
        for path in files {
            let bytes = input::map(&path, "safetensors weights file")?;
            shards.push(Shard::read(path, bytes)?);
        }
        Self::of_shards(shards)
    }

    /// One safetensors file's bytes (what [`SafetensorsFiles::open`] does with each memory-mapped shard); `path`
    /// names the file in errors.
    pub fn from_bytes(path: &Path, bytes: FileBytes) -> Result<Self> {
        Self::of_shards(vec![Shard::read(path.to_path_buf(), bytes)?])
    }

    /// The shards with every tensor name indexed; a name in two shards is an error (which copy is meant?).
    fn of_shards(shards: Vec<Shard>) -> Result<Self> {
        let mut index = HashMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.meta.tensors().keys() {
                if let Some(first) = index.insert(name.clone(), i) {
                    bail!(
                        "tensor {name} is stored twice, in {} and in {}; which copy is the model's is not known: \
                         save the checkpoint again (transformers' save_pretrained stores each tensor once)",
                        shards[first].path.display(),
                        shard.path.display()
                    );
                }
            }
        }
        Ok(SafetensorsFiles { shards, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    /// The tensor's dtype, shape and bytes as stored; `None` if no shard has it.
    pub fn raw(&self, name: &str) -> Option<(Dtype, &[usize], &[u8])> {
        let &i = self.index.get(name)?;
        let shard = &self.shards[i];
        let info = shard.meta.info(name).expect("indexed tensor has metadata");
        let start = 8 + shard.header_len;
        Some((info.dtype, &info.shape, &shard.bytes[start + info.data_offsets.0..start + info.data_offsets.1]))
    }

    /// The tensor as f32 with its shape; `None` if no shard has it.
    pub fn load_f32(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let Some(&i) = self.index.get(name) else { return Ok(None) };
        let shard = &self.shards[i];
        let (dtype, shape, bytes) = self.raw(name).expect("indexed tensor");
        let data = match dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => bail!(
                "{}: tensor {name} has dtype {other:?}; only F32, F16 and BF16 weights are supported",
                shard.path.display()
            ),
        };
        Ok(Some((shape.to_vec(), data)))
    }

    /// Every tensor's name, shape and dtype, sorted by name.
    pub fn summaries(&self) -> Vec<TensorSummary> {
        let mut out: Vec<TensorSummary> = self
            .shards
            .iter()
            .flat_map(|shard| shard.meta.tensors())
            .map(|(name, info)| TensorSummary { name, shape: info.shape.clone(), dtype: format!("{:?}", info.dtype) })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// The shard files a `model.safetensors.index.json` (read from `index_path`, text `text`) lists in its
/// `weight_map`, sorted, each once. Each must be a plain file name: a shard lives beside the index, and a path
/// would let the index read (or, when downloading, write) any file on the machine.
pub fn shard_names(index_path: &Path, text: &str) -> Result<Vec<String>> {
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("{}: not valid JSON", index_path.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: no \"weight_map\" object; re-download the checkpoint", index_path.display()))?;
    let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_owned)).collect();
    names.sort_unstable();
    names.dedup();
    if let Some(bad) = names.iter().find(|f| Path::new(f).file_name() != Some(std::ffi::OsStr::new(f))) {
        bail!(
            "{}: shard {bad:?} is not a plain file name in the checkpoint folder; re-download the checkpoint",
            index_path.display()
        );
    }
    Ok(names)
}

impl Shard {
    /// The header of a safetensors file: `safetensors` checks that it is JSON of sane size and that the tensors'
    /// offsets tile the data exactly, each as long as its dtype and shape say, so every later slice is in bounds.
    fn read(path: PathBuf, bytes: FileBytes) -> Result<Shard> {
        let (header_len, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a valid safetensors file ({e}); it may be truncated — re-download it",
                path.display()
            )
        })?;
        Ok(Shard { path, bytes, header_len, meta })
    }
}
