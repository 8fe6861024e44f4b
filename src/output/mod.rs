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
    let tmp = shared(&mut tempfile::Builder::new(), 0o666)
        .tempfile_in(dir)
        .with_context(|| format!("cannot write {}: folder {} is not writable", path.display(), dir.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
    fill(&mut w).with_context(|| format!("cannot write {}", path.display()))?;
    w.into_inner().map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error()))?;
    tmp.persist(path).map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

/// A temporary file or folder made as other programs make theirs — `mode` (0o666, 0o777) less the umask — rather
/// than tempfile's owner-only default, since it becomes the output: a model folder or GGUF file that servers,
/// containers and other users read.
fn shared<'a, 'p, 's>(b: &'a mut tempfile::Builder<'p, 's>, mode: u32) -> &'a mut tempfile::Builder<'p, 's> {
    #[cfg(unix)]
    b.permissions(std::os::unix::fs::PermissionsExt::from_mode(mode));
    #[cfg(not(unix))]
    let _ = mode;
    b
}

/// The files of `folder` (made by [`shared`]) given the mode a plain file gets, the folder's less execute: some
/// libraries write theirs owner-only (safetensors' `serialize_to_file`).
fn share_files(folder: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(folder)?.permissions().mode() & 0o666;
        for entry in std::fs::read_dir(folder)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = folder;
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
    let tmp = shared(tempfile::Builder::new().prefix(".condlm-tmp-"), 0o777)
        .tempdir_in(parent)
        .with_context(|| format!("cannot write {}: folder {} is not writable", dir.display(), parent.display()))?;
    fill(tmp.path())?;
    share_files(tmp.path()).with_context(|| format!("cannot write {}", dir.display()))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    let tmp_path = tmp.keep();
    std::fs::rename(&tmp_path, dir).with_context(|| format!("cannot move output into {}", dir.display()))?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Outputs get the modes any program's new files and folders get (the umask's), not owner-only ones.
    #[test]
    fn outputs_are_made_as_plain_files_and_folders_are() {
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        std::fs::write(d.path().join("plain"), b"x").unwrap();
        std::fs::create_dir(d.path().join("plain-dir")).unwrap();
        write_atomic(&d.path().join("out"), b"x").unwrap();
        write_dir_atomic_with(&d.path().join("out-dir"), |tmp| {
            write_files(tmp, tmp, &[("f", b"x".to_vec())])?;
            // as a library may write one
            std::fs::set_permissions(tmp.join("f"), std::fs::Permissions::from_mode(0o600))?;
            Ok(())
        })
        .unwrap();
        assert_eq!(mode(&d.path().join("out")), mode(&d.path().join("plain")));
        assert_eq!(mode(&d.path().join("out-dir")), mode(&d.path().join("plain-dir")));
        assert_eq!(mode(&d.path().join("out-dir/f")), mode(&d.path().join("plain")));
    }
}
