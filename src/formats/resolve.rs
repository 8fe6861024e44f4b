//! `--model` → files on disk: an HF folder, a `.gguf` file, or a hub id `org/name` found in
//! the standard Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)
//! and downloaded into it when online.
use super::safetensors_files::shard_names;
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelFiles {
    /// A folder with config.json, safetensors weights and tokenizer files.
    HfDir(PathBuf),
    /// A single GGUF file (weights, config and tokenizer in its metadata).
    Gguf(PathBuf),
}

impl ModelFiles {
    pub fn path(&self) -> &Path {
        match self {
            ModelFiles::HfDir(p) | ModelFiles::Gguf(p) => p,
        }
    }
}

/// The files an HF checkpoint needs, besides the weights.
const HF_FILES: &[&str] = &["config.json", "tokenizer.json", "tokenizer_config.json"];

pub fn hub_cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Ok(home) = std::env::var("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache").join("huggingface").join("hub")
}

/// Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids downloads.
pub fn is_offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes" | "ON")))
}

/// Resolves a `--model` argument.
pub fn resolve(spec: &str) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.is_file() {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            return Ok(ModelFiles::Gguf(path.to_path_buf()));
        }
        bail!("{spec}: a model file must be a .gguf file; for Hugging Face checkpoints pass the folder");
    }
    if path.is_dir() {
        return resolve_dir(path);
    }
    if path.exists() {
        // A FIFO or a device: refused here (with what it is) rather than blocked on or read forever later.
        crate::input::open_regular(path, "model file")?;
    }
    if !looks_like_hub_id(spec) {
        bail!("{spec}: no such file or folder (pass an HF checkpoint folder, a .gguf file, or a hub id org/name)");
    }
    resolve_hub(spec, &hub_cache_dir())
}

/// Whether a spec that is not a path on disk reads as a hub repository id `org/name`.
pub fn looks_like_hub_id(spec: &str) -> bool {
    spec.split('/').count() == 2
        && !spec.starts_with('.')
        && !spec.starts_with('/')
        && spec.split('/').all(|p| !p.is_empty())
}

fn resolve_dir(dir: &Path) -> Result<ModelFiles> {
    if dir.join("config.json").is_file() {
        return Ok(ModelFiles::HfDir(dir.to_path_buf()));
    }
    let mut ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot list folder: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")))
        .collect();
    ggufs.sort();
    match ggufs.len() {
        1 => Ok(ModelFiles::Gguf(ggufs.remove(0))),
        0 if dir.join("model/config.json").is_file() => bail!(
            "{}: no config.json here, but a model in {}: a `condlm train --full` run folder; pass that",
            dir.display(),
            dir.join("model").display()
        ),
        0 => bail!("{}: no config.json and no .gguf file; this is not a model folder", dir.display()),
        _ => bail!(
            "{}: several .gguf files ({}); pass the one you want as --model FILE",
            dir.display(),
            ggufs.iter().filter_map(|p| p.file_name()?.to_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Finds `id` in the hub cache at `cache`; downloads what is missing unless offline.
pub fn resolve_hub(id: &str, cache: &Path) -> Result<ModelFiles> {
    let repo = hf_hub::Cache::new(cache.to_path_buf()).model(id.to_string());
    if let Some(config) = repo.get("config.json") {
        let dir = config.parent().expect("a cached file lives in a snapshot folder").to_path_buf();
        let weights_cached =
            repo.get("model.safetensors").is_some() || repo.get("model.safetensors.index.json").is_some();
        if weights_cached && HF_FILES.iter().all(|f| repo.get(f).is_some() || *f == "tokenizer_config.json") {
            return Ok(ModelFiles::HfDir(dir));
        }
    }
    let how = format!(
        "get it with `huggingface-cli download {id}` (or `hf download {id}`) on a connected machine and copy the \
         cache folder {}, or pass a local checkpoint folder or .gguf file to --model",
        cache.display()
    );
    if is_offline() {
        bail!("{id}: not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set; {how}", cache.display());
    }
    download(id, cache).map_err(|e| {
        anyhow::anyhow!(
            "{id}: not in the Hugging Face cache at {} and downloading failed ({e}); {how}",
            cache.display()
        )
    })
}

fn download(id: &str, cache: &Path) -> Result<ModelFiles> {
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf()))
        .with_progress(true)
        .build()?;
    let repo = api.model(id.to_string());
    let config = repo.get("config.json")?;
    repo.get("tokenizer.json")?;
    // Optional: not every repository has it; eos then comes from config.json.
    let _ = repo.get("tokenizer_config.json");
    if repo.get("model.safetensors").is_err() {
        let index = repo.get("model.safetensors.index.json")?;
        for shard in shard_names(&index, &crate::input::read_to_string(&index, "shard index")?)? {
            repo.get(&shard)?;
        }
    }
    Ok(ModelFiles::HfDir(config.parent().expect("snapshot folder").to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out a cache the way huggingface_hub does: refs/main → commit, snapshots/<commit>/files.
    fn fake_cache(root: &Path, id: &str, files: &[&str]) -> PathBuf {
        let repo = root.join(format!("models--{}", id.replace('/', "--")));
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123").unwrap();
        for f in files {
            std::fs::write(snap.join(f), "{}").unwrap();
        }
        snap
    }

    #[test]
    fn finds_a_cached_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = fake_cache(tmp.path(), "org/tiny", &["config.json", "tokenizer.json", "model.safetensors"]);
        assert_eq!(resolve_hub("org/tiny", tmp.path()).unwrap(), ModelFiles::HfDir(snap));
    }

    #[test]
    fn missing_weights_offline_is_a_helpful_error() {
        let tmp = tempfile::tempdir().unwrap();
        fake_cache(tmp.path(), "org/tiny", &["config.json", "tokenizer.json"]);
        // SAFETY: tests in this module do not read this variable concurrently with another writer.
        unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
        let err = resolve_hub("org/tiny", tmp.path()).unwrap_err().to_string();
        assert!(err.contains("HF_HUB_OFFLINE") && err.contains("huggingface-cli download org/tiny"), "{err}");
    }

    #[test]
    fn a_folder_with_one_gguf_resolves_to_it() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("m.gguf"), b"").unwrap();
        assert_eq!(resolve_dir(tmp.path()).unwrap(), ModelFiles::Gguf(tmp.path().join("m.gguf")));
        std::fs::write(tmp.path().join("n.gguf"), b"").unwrap();
        assert!(resolve_dir(tmp.path()).unwrap_err().to_string().contains("m.gguf, n.gguf"));
    }
}
