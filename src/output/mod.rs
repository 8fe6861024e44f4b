//! Output files are written whole or not at all: to a temporary sibling, then renamed. Row-by-row results
//! (JSONL that grows while a job runs, kept when it is interrupted) are [`rows`].
pub mod rows;

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary sibling file renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| Ok(w.write_all(bytes)?))
}

/// As [`write_atomic`], with `fill` streaming the contents into a buffered writer of the temporary file (for
/// files too large to build in memory).
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write {}: folder {} is not writable", path.display(), dir.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
    fill(&mut w).with_context(|| format!("cannot write {}", path.display()))?;
    w.into_inner().map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error()))?;
    tmp.persist(path).map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Writes the files of folder `dir` into a temporary sibling folder, then renames it into place
/// (replacing an existing `dir`), so readers never see a half-written folder.
pub fn write_dir_atomic(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    write_dir_atomic_with(dir, |tmp| write_files(tmp, dir, files))
}

/// Writes `files` into the temporary folder `tmp` of the output folder `dir` (named in errors).
pub fn write_files(tmp: &Path, dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    for (name, bytes) in files {
        std::fs::write(tmp.join(name), bytes).with_context(|| format!("cannot write {}/{name}", dir.display()))?;
    }
    Ok(())
}

/// As [`write_dir_atomic`], with `fill` writing the files into the temporary folder it is given (for files
/// streamed to disk rather than built in memory).
pub fn write_dir_atomic_with(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create folder {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".condlm-tmp-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot write {}: folder {} is not writable", dir.display(), parent.display()))?;
    fill(tmp.path())?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    let tmp_path = tmp.keep();
    std::fs::rename(&tmp_path, dir).with_context(|| format!("cannot move output into {}", dir.display()))?;
    Ok(())
}
