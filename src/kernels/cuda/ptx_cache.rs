//! Compiled PTX (and machine code, where a driver refuses the PTX) kept on disk between runs. NVRTC spends seconds on the tensor-core attention kernels (unrolled over
//! their register tiles), and every `--device cuda` process would pay it at start; the driver keeps its own cache of
//! what it makes of the PTX. An entry is keyed by everything that decides the PTX — the program text, the
//! architecture, NVRTC's version and options — so a changed kernel, GPU or NVRTC compiles afresh, and it is used only
//! if it defines every kernel of its source. Folder: `CONDLM_CUDA_CACHE` (`0` turns the cache off), else
//! `$XDG_CACHE_HOME/condlm/ptx`, else `~/.cache/condlm/ptx`. A folder that cannot be read or written only costs the
//! compile: the run goes on without it.
use super::compile::{PtxError, compile, compile_cubin, nvrtc_version, options};
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
    let (bytes, nvrtc_s, from_cache) =
        cached(src, arch, dir, "ptx", is_ptx, || compile(src, arch).map(|p| p.to_src().into_bytes()))?;
    let ptx = Ptx::from_src(String::from_utf8(bytes).map_err(|e| PtxError::Broken(e.to_string()))?);
    Ok(Compiled { ptx, nvrtc_s, from_cache })
}

/// `src` as machine code for `arch` ([`compile_cubin`]): from the cache (its own entries beside the PTX), else by
/// NVRTC (and then stored). Returns the code and the seconds NVRTC took (0 from the cache).
pub fn machine_code(src: &Source, arch: &str) -> Result<(Vec<u8>, f64), PtxError> {
    machine_code_in(src, arch, folder().as_deref())
}

/// [`machine_code`] with the cache in `dir` (None: no cache).
pub fn machine_code_in(src: &Source, arch: &str, dir: Option<&Path>) -> Result<(Vec<u8>, f64), PtxError> {
    let (bytes, nvrtc_s, _) = cached(src, arch, dir, "cubin", is_machine_code, || compile_cubin(src, arch))?;
    Ok((bytes, nvrtc_s))
}

/// The entry `<source>-<arch>-<key>.<ext>` of `dir` if `complete` finds it whole, else `make`'s bytes, stored
/// there; with the seconds `make` took and whether they came from the cache.
fn cached(
    src: &Source,
    arch: &str,
    dir: Option<&Path>,
    ext: &str,
    complete: fn(&Source, &[u8]) -> bool,
    make: impl FnOnce() -> Result<Vec<u8>, PtxError>,
) -> Result<(Vec<u8>, f64, bool), PtxError> {
    let (major, minor) = nvrtc_version()?;
    let entry = dir.map(|dir| {
        let mut key = Sha256::new();
        for part in [src.program(), arch.to_string(), format!("{major}.{minor}"), options(arch).join(" ")] {
            key.update(part.as_bytes());
            key.update([0]);
        }
        let hex: String = key.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect();
        dir.join(format!("{}-{arch}-{hex}.{ext}", src.file.trim_end_matches(".cu")))
    });
    if let Some(bytes) = entry.as_ref().and_then(|p| std::fs::read(p).ok()).filter(|b| complete(src, b)) {
        return Ok((bytes, 0.0, true));
    }
    let t = Instant::now();
    let bytes = make()?;
    let nvrtc_s = t.elapsed().as_secs_f64();
    if let Some(path) = entry.filter(|_| complete(src, &bytes)) {
        store(&path, &bytes);
    }
    Ok((bytes, nvrtc_s, false))
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

/// Whether `bytes` are PTX that defines every kernel of `src` (a truncated or foreign file is not used or kept).
fn is_ptx(src: &Source, bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else { return false };
    text.contains(".version") && src.kernels.iter().all(|k| text.contains(&format!(".entry {k}(")))
}

/// Whether `bytes` are an ELF object naming every kernel of `src` in its symbols.
fn is_machine_code(src: &Source, bytes: &[u8]) -> bool {
    let names = |k: &&str| bytes.windows(k.len() + 1).any(|w| &w[..k.len()] == k.as_bytes() && w[k.len()] == 0);
    bytes.starts_with(b"\x7fELF") && src.kernels.iter().all(names)
}

/// Stores `bytes` at `path` through a temporary file renamed into place, so that a process reading it at the same
/// time sees the whole file or none; failures are ignored (the next run compiles again).
fn store(path: &Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) {
        use std::io::Write;
        if tmp.write_all(bytes).is_ok() {
            let _ = tmp.persist(path);
        }
    }
}
