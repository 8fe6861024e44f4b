//! A Hugging Face checkpoint's weights: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`, memory-mapped; tensors converted to f32 on request.
use anyhow::{Context, Result, bail};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
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
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path)
                .with_context(|| format!("cannot read {}", index_path.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", index_path.display()))?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).with_context(|| {
                format!("{}: no \"weight_map\" object; re-download the checkpoint", index_path.display())
            })?;
            let mut names: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(|f| dir.join(f)).collect()
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json; \
                 this folder does not hold a Hugging Face safetensors checkpoint \
                 (PyTorch .bin checkpoints are not read: convert them with save_pretrained(safe_serialization=True))",
                dir.display()
            );
        };
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let file = File::open(&path).with_context(|| {
                format!("cannot open {} (listed in the checkpoint); re-download the checkpoint", path.display())
            })?;
            // SAFETY: the file is opened read-only; a checkpoint changing under a running process is unsupported.
            let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
            let (header_len, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not a valid safetensors file ({e}); it may be truncated — re-download it",
                    path.display()
                )
            })?;
            for name in meta.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push(Shard { path, mmap, header_len, meta });
        }
        Ok(SafetensorsFiles { shards, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    /// The tensor as f32 with its shape; `None` if no shard has it.
    pub fn load_f32(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let Some(&i) = self.index.get(name) else { return Ok(None) };
        let shard = &self.shards[i];
        let info = shard.meta.info(name).expect("indexed tensor has metadata");
        let start = 8 + shard.header_len;
        let bytes = &shard.mmap[start + info.data_offsets.0..start + info.data_offsets.1];
        let data = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => bail!(
                "{}: tensor {name} has dtype {other:?}; only F32, F16 and BF16 weights are supported",
                shard.path.display()
            ),
        };
        Ok(Some((info.shape.clone(), data)))
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
