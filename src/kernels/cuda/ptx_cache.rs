//! Compiled PTX kept on disk between runs. NVRTC spends seconds on the tensor-core attention kernels (unrolled over
//! their register tiles), and every `--device cuda` process would pay it at start; the driver keeps its own cache of
//! what it makes of the PTX. An entry is keyed by everything that decides the PTX — the program text, the
//! architecture, NVRTC's version and options — so a changed kernel, GPU or NVRTC compiles afresh, and it is used only
//! if it defines every kernel of its source. Folder: `CONDLM_CUDA_CACHE` (`0` turns the cache off), else
//! `$XDG_CACHE_HOME/condlm/ptx`, else `~/.cache/condlm/ptx`. A folder that cannot be read or written only costs the
//! compile: the run goes on without it.
use super::compile::{PtxError, compile, nvrtc_version, options};
use super::sources::Source;
use cudarc::nvrtc::Ptx;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A source's PTX for one architecture, and where it came from.
pub struct Compiled {
    pub ptx: Ptx,
    /// Seconds NVRTC took; 0 when the PTX came from the cache.
    pub nvrtc_s: f64,
    pub from_cache: bool,
}

/// `src` compiled for `arch`: from the cache when an entry for exactly this text, architecture and NVRTC is there,
/// else by NVRTC (and then stored).
pub fn compiled(src: &Source, arch: &str) -> Result<Compiled, PtxError> {
    compiled_in(src, arch, folder().as_deref())
}

/// [`compiled`] with the cache in `dir` (None: no cache).
pub fn compiled_in(src: &Source, arch: &str, dir: Option<&Path>) -> Result<Compiled, PtxError> {
    let (major, minor) = nvrtc_version()?;
    let entry = dir.map(|dir| {
        let mut key = Sha256::new();
        for part in [src.program(), arch.to_string(), format!("{major}.{minor}"), options(arch).join(" ")] {
            key.update(part.as_bytes());
            key.update([0]);
        }
        let hex: String = key.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect();
        dir.join(format!("{}-{arch}-{hex}.ptx", src.file.trim_end_matches(".cu")))
    });
    if let Some(text) = entry.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).filter(|t| complete(src, t)) {
        return Ok(Compiled { ptx: Ptx::from_src(text), nvrtc_s: 0.0, from_cache: true });
    }
    let t = Instant::now();
    let ptx = compile(src, arch)?;
    let nvrtc_s = t.elapsed().as_secs_f64();
    if let Some(path) = entry {
        store(&path, &ptx.to_src(), src);
    }
    Ok(Compiled { ptx, nvrtc_s, from_cache: false })
}

/// The cache folder, or None when `CONDLM_CUDA_CACHE=0` (or no home is known).
fn folder() -> Option<PathBuf> {
    match std::env::var_os("CONDLM_CUDA_CACHE") {
        Some(v) if v == "0" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(base.join("condlm").join("ptx"))
        }
    }
}

/// Whether `text` is PTX that defines every kernel of `src` (a truncated or foreign file is not used or kept).
fn complete(src: &Source, text: &str) -> bool {
    text.contains(".version") && src.kernels.iter().all(|k| text.contains(&format!(".entry {k}(")))
}

/// Stores `text` at `path` through a temporary file renamed into place, so that a process reading it at the same
/// time sees the whole file or none; failures are ignored (the next run compiles again).
fn store(path: &Path, text: &str, src: &Source) {
    let Some(dir) = path.parent() else { return };
    if !complete(src, text) || std::fs::create_dir_all(dir).is_err() {
        return;
    }
    if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
        use std::io::Write;
        if tmp.write_all(text.as_bytes()).is_ok() {
            let _ = tmp.persist(path);
        }
    }
}
