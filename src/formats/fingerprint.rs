//! Fingerprints of the files a result depends on, for runs that continue earlier work: a resumed `train` (its
//! checkpoint records the base model's) and a resumed `score`/`generate` output (its partial records the model's
//! and the adapter's, file by file).
//!
//! A file's fingerprint is a SHA-256 of its size and contents: whole up to 4 MiB (configs, tokenizers, most
//! adapters), else 64 evenly spaced 64 KiB samples, the first and the last included. Reading 4 MiB of a
//! multi-GB checkpoint costs milliseconds where hashing it all costs as much as loading it, and two checkpoints
//! condlm would load differently (other weights, shapes, dtypes, header) differ in the sampled bytes or in the
//! header, which the first sample holds. Contents, not modification times: a model copied or moved with its run
//! is the same model.
use super::resolve::ModelFiles;
use super::safetensors_files::shard_names;
use crate::input;
use anyhow::{Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const WHOLE_UP_TO: u64 = 4 << 20;
const SAMPLES: u64 = 64;
const SAMPLE_BYTES: u64 = 64 << 10;

/// The files loading a model reads: the GGUF file, or an HF folder's config, chat template, tokenizer files and
/// weights (one file, or the index and its shards). Names a folder may lack are included (see
/// [`file_fingerprint`]'s "absent").
pub fn model_files(files: &ModelFiles) -> Result<Vec<PathBuf>> {
    let dir = match files {
        ModelFiles::Gguf(path) => return Ok(vec![path.clone()]),
        ModelFiles::HfDir(dir) => dir,
    };
    let mut out: Vec<PathBuf> = ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
        .iter()
        .map(|n| dir.join(n))
        .collect();
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.exists() || !index.is_file() {
        out.push(single);
    } else {
        let text = input::read_to_string(&index, "shard index")?;
        out.extend(shard_names(&index, &text)?.into_iter().map(|n| dir.join(n)));
        out.push(index);
    }
    Ok(out)
}

/// One file's fingerprint: "sha256 HEX" of its size and contents (whole, or sampled above 4 MiB); "absent" or
/// "not a file" where there is none.
pub fn file_fingerprint(path: &Path) -> Result<String> {
    let read_err = || format!("cannot read {}", path.display());
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok("absent".into()),
        Err(e) => return Err(e).with_context(read_err),
    };
    if !meta.is_file() {
        return Ok("not a file".into());
    }
    let size = meta.len();
    let mut f = std::fs::File::open(path).with_context(read_err)?;
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    if size <= WHOLE_UP_TO {
        std::io::copy(&mut f, &mut h).with_context(read_err)?;
    } else {
        let mut buf = vec![0u8; SAMPLE_BYTES as usize];
        for i in 0..SAMPLES {
            f.seek(SeekFrom::Start((size - SAMPLE_BYTES) * i / (SAMPLES - 1))).with_context(read_err)?;
            f.read_exact(&mut buf).with_context(read_err)?;
            h.update(&buf);
        }
    }
    Ok(format!("sha256 {:x}", h.finalize()))
}

/// The identity of a checkpoint or adapter at `path`: the path made absolute (links resolved) and what each of
/// its files holds ([`file_fingerprint`]): the files `names` of a folder, or the file `path` itself. A name that is
/// not there is recorded as absent (the loader then says what is missing).
pub fn files_identity(path: &Path, names: &[String]) -> Result<Value> {
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut files = serde_json::Map::new();
    if resolved.is_file() {
        let name = resolved.file_name().map_or("file".into(), |n| n.to_string_lossy().into_owned());
        files.insert(name, file_fingerprint(&resolved)?.into());
    } else {
        for name in names {
            files.insert(name.clone(), file_fingerprint(&resolved.join(name))?.into());
        }
    }
    Ok(serde_json::json!({ "path": resolved.display().to_string(), "files": files }))
}

/// The model's fingerprint: one SHA-256 over its files' names and fingerprints ([`model_files`]).
pub fn model_fingerprint(files: &ModelFiles) -> Result<String> {
    let mut h = Sha256::new();
    for path in model_files(files)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        h.update(format!("{name}\0{}\0", file_fingerprint(&path)?).as_bytes());
    }
    Ok(format!("{:x}", h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_anywhere_sampled_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("m.gguf");
        let mut bytes: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&gguf, &bytes).unwrap();
        let files = ModelFiles::Gguf(gguf.clone());
        let first = model_fingerprint(&files).unwrap();
        assert_eq!(model_fingerprint(&files).unwrap(), first);
        // In the first, a middle and the last sample.
        for at in [0, (5_000_000 - SAMPLE_BYTES as usize) * 31 / 63 + 5, 4_999_999] {
            bytes[at] ^= 1;
            std::fs::write(&gguf, &bytes).unwrap();
            assert_ne!(model_fingerprint(&files).unwrap(), first, "byte {at}");
            bytes[at] ^= 1;
        }
        std::fs::write(&gguf, &bytes[..4_999_999]).unwrap();
        assert_ne!(model_fingerprint(&files).unwrap(), first, "a shorter file");
    }

    #[test]
    fn small_files_are_known_by_all_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, "{}").unwrap();
        let id = file_fingerprint(&p).unwrap();
        assert!(id.starts_with("sha256 "), "{id}");
        std::fs::write(&p, "{ }").unwrap();
        assert_ne!(file_fingerprint(&p).unwrap(), id);
        assert_eq!(file_fingerprint(&dir.path().join("missing")).unwrap(), "absent");
        assert_eq!(file_fingerprint(dir.path()).unwrap(), "not a file");
    }

    #[test]
    fn a_folder_is_known_by_its_path_and_each_named_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let v = files_identity(dir.path(), &["config.json".into(), "tokenizer.json".into()]).unwrap();
        assert_eq!(v["files"]["config.json"], file_fingerprint(&dir.path().join("config.json")).unwrap());
        assert_eq!(v["files"]["tokenizer.json"], "absent");
        assert_eq!(v["path"], std::fs::canonicalize(dir.path()).unwrap().display().to_string());
    }
}
