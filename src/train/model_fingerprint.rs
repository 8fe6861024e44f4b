//! A resumed run must continue on the base model it started from: an adapter's steps, or a full fine-tune's
//! moments, mean nothing on other weights or another tokenizer. The checkpoint records a fingerprint of the
//! model's files, and a resume compares it.
//!
//! The fingerprint is a SHA-256 over every file that defines the model (config, tokenizer files, weights; or the
//! GGUF file): its name, size and contents — whole for files up to 4 MiB, else 64 evenly spaced 64 KiB samples
//! (the first and last included). Reading 4 MiB of a multi-GB checkpoint costs milliseconds, and any two
//! checkpoints condlm would load differently (other weights, shapes, dtypes, header or vocabulary) differ in the
//! sampled bytes or the header, which the first sample holds.
use crate::formats::resolve::ModelFiles;
use crate::formats::safetensors_files::shard_names;
use crate::input;
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const WHOLE_UP_TO: u64 = 4 << 20;
const SAMPLES: u64 = 64;
const SAMPLE_BYTES: u64 = 64 << 10;

/// The fingerprint of the model in `files`.
pub fn model_fingerprint(files: &ModelFiles) -> Result<String> {
    let mut h = Sha256::new();
    for path in defining_files(files)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let mut f = input::open_regular(&path, "model file")?;
        let size = f.metadata().with_context(|| format!("cannot read {}", path.display()))?.len();
        h.update(format!("{name}\0{size}\0").as_bytes());
        let read_err = || format!("cannot read {}", path.display());
        if size <= WHOLE_UP_TO {
            std::io::copy(&mut f, &mut h).with_context(read_err)?;
            continue;
        }
        let mut buf = vec![0u8; SAMPLE_BYTES as usize];
        for i in 0..SAMPLES {
            let at = (size - SAMPLE_BYTES) * i / (SAMPLES - 1);
            f.seek(SeekFrom::Start(at)).with_context(read_err)?;
            f.read_exact(&mut buf).with_context(read_err)?;
            h.update(&buf);
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The files whose contents make the model: the GGUF file, or an HF folder's config, tokenizer files and weights.
fn defining_files(files: &ModelFiles) -> Result<Vec<PathBuf>> {
    let dir = match files {
        ModelFiles::Gguf(path) => return Ok(vec![path.clone()]),
        ModelFiles::HfDir(dir) => dir,
    };
    let mut out: Vec<PathBuf> = ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"]
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect();
    let index = dir.join("model.safetensors.index.json");
    if !dir.join("model.safetensors").is_file() && index.is_file() {
        let text = input::read_to_string(&index, "shard index")?;
        out.extend(shard_names(&index, &text)?.into_iter().map(|n| dir.join(n)));
    }
    Ok(out)
}

/// Refuses a resume on another model than the run started from (`then`: the checkpoint's record; None for
/// checkpoints written before condlm recorded it).
pub fn check_same_model(model: &Path, then: Option<&str>, now: &str) -> Result<()> {
    match then {
        Some(then) if then != now => bail!(
            "the base model changed since this run started: {} is not the model the checkpoint was trained on \
             (its config, tokenizer or weights differ). Resume with the model the run started from, or start a new \
             run on this one",
            model.display()
        ),
        _ => Ok(()),
    }
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
        // The first, a middle and the last sample.
        for at in [0, (5_000_000 - SAMPLE_BYTES as usize) * 31 / 63 + 5, 4_999_999] {
            bytes[at] ^= 1;
            std::fs::write(&gguf, &bytes).unwrap();
            assert_ne!(model_fingerprint(&files).unwrap(), first, "byte {at}");
            bytes[at] ^= 1;
        }
        std::fs::write(&gguf, &bytes[..4_999_999]).unwrap();
        assert_ne!(model_fingerprint(&files).unwrap(), first, "a shorter file");
        assert!(check_same_model(&gguf, Some(&first), &first).is_ok());
        assert!(check_same_model(&gguf, None, "other").is_ok());
        let err = check_same_model(&gguf, Some(&first), "other").unwrap_err().to_string();
        assert!(err.contains("m.gguf") && err.contains("base model changed"), "{err}");
    }
}
