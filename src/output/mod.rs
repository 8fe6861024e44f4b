//! Output files are written whole or not at all: to a temporary sibling, flushed to disk, then renamed; a folder
//! replaces an earlier one by an atomic exchange where the file system has one (Linux), so the output's name always
//! holds a whole output. Temporaries are named after their output (`.condlm-tmp-NAME-…`): a write that finishes
//! deletes those an earlier, killed write of the same output left. Row-by-row results
//! (JSONL that grows while a job runs, kept when it is interrupted) are [`rows`]; what such rows depend on, checked
//! when a run continues them, is a [`fingerprint::Fingerprint`].
pub mod fingerprint;
pub mod rows;

use anyhow::{Context, Result, bail};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// Temporary outputs being written: what [`remove_partial_outputs_on_signal`]'s watcher deletes.
static BEING_WRITTEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn being_written() -> MutexGuard<'static, Vec<PathBuf>> {
    BEING_WRITTEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temporary output listed in [`BEING_WRITTEN`] while it lives.
struct BeingWritten(PathBuf);

impl BeingWritten {
    fn new(path: &Path) -> Self {
        being_written().push(path.to_path_buf());
        BeingWritten(path.to_path_buf())
    }
}

impl Drop for BeingWritten {
    fn drop(&mut self) {
        being_written().retain(|p| *p != self.0);
    }
}

/// For a command that writes one large output and has no interruption of its own (merge, export-gguf): on SIGINT
/// or SIGTERM the temporary file or folder being written is deleted and the process exits (130, 143). Without
/// this a signal ends the process before tempfile's cleanup runs, leaving a hidden partial output as large as
/// the model at every interruption.
pub fn remove_partial_outputs_on_signal() -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            // Held until the exit, so no write lists or unlists a temporary output meanwhile.
            let partial = being_written();
            for p in partial.iter() {
                let _ = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
            }
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}

/// Refuses an output `out` that is, or lies inside, one of `inputs` (the model, the data, the adapter), before
/// anything is written: with --overwrite it would destroy what the command reads.
pub fn check_not_an_input(out: &Path, inputs: &[&Path]) -> Result<()> {
    // The same answer whether `out` exists yet or not: its folder resolved, its name joined.
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (Ok(dir), Some(name)) = (parent.canonicalize(), out.file_name()) else { return Ok(()) };
    let out_c = dir.join(name);
    if let Some(input) = inputs.iter().find(|i| i.canonicalize().is_ok_and(|i| out_c.starts_with(i))) {
        bail!(
            "--out {} is, or lies inside, an input of this command ({}); write elsewhere",
            out.display(),
            input.display()
        );
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary sibling file renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| Ok(w.write_all(bytes)?))
}

/// As [`write_atomic`], with `fill` streaming the contents into a buffered writer of the temporary file (for
/// files too large to build in memory).
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("cannot write {}: folder {} does not exist; create it first", path.display(), dir.display());
    }
    // Named for condlm and the output: a file a SIGKILL leaves behind says whose it is.
    let tmp = shared(tempfile::Builder::new().prefix(&temp_prefix(TMP, path)).rand_bytes(SUFFIX_LEN), 0o666)
        .tempfile_in(dir)
        .with_context(|| format!("cannot write {}: folder {} is not writable", path.display(), dir.display()))?;
    let _listed = BeingWritten::new(tmp.path());
    let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
    fill(&mut w).with_context(|| format!("cannot write {}", path.display()))?;
    w.into_inner().map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error()))?;
    tmp.as_file().sync_all().with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path).map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error))?;
    sync_folder(dir);
    remove_leftovers(path);
    Ok(())
}

/// Prefix of a file or folder being written, until it is renamed to its output's name.
const TMP: &str = "tmp";
/// What every temporary's name starts with ([`temp_prefix`] of [`TMP`], and [`delete_folder`]'s).
pub const TEMP_PREFIX: &str = ".condlm-tmp-";
/// Prefix of an earlier output folder moved aside while the new one takes its name (where no exchange exists).
const OLD: &str = "old";

/// `.condlm-KIND-NAME-` for the output `path`; tempfile adds [`SUFFIX_LEN`] random letters and digits. A name
/// too long for that to fit in a file name (255 bytes) is cut and followed by a hash of the whole name, so two long
/// names that share a beginning still differ.
fn temp_prefix(kind: &str, path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let short = if name.len() <= 200 {
        name
    } else {
        let cut = (0..=150).rev().find(|&i| name.is_char_boundary(i)).unwrap_or(0);
        // FNV-1a: stable across runs and builds, unlike std's hasher.
        let hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
        format!("{}~{hash:016x}", &name[..cut])
    };
    format!(".condlm-{kind}-{short}-")
}

/// The length of tempfile's random suffix.
const SUFFIX_LEN: usize = 6;

/// The siblings of `path` named `.condlm-KIND-NAME-` + a random suffix: what writes of it left. The suffix must
/// be exactly tempfile's, so another output's temporaries (`model-2`'s beside `model`'s) never match.
fn temp_siblings(kind: &str, path: &Path) -> Vec<PathBuf> {
    let prefix = temp_prefix(kind, path);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let ours = |name: &str| {
        name.strip_prefix(&prefix)
            .is_some_and(|s| s.len() == SUFFIX_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric()))
    };
    entries.flatten().filter(|e| ours(&e.file_name().to_string_lossy())).map(|e| e.path()).collect()
}

/// Deletes what killed writes of `path` left beside it, now that `path` holds a whole output: partial or
/// complete temporaries, and earlier versions a kill left aside after the new one took the name. Best effort: a
/// leftover that stays is harmless.
fn remove_leftovers(path: &Path) {
    for p in temp_siblings(TMP, path).into_iter().chain(temp_siblings(OLD, path)) {
        let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
    }
}

/// Deletes folder `dir` by renaming it to `.condlm-tmp-TAG` beside it first: a kill while deleting then leaves a
/// temporary, which the next run removes, not a half-deleted folder under its real name. Err names the folder
/// still there.
pub fn delete_folder(dir: &Path, tag: &str) -> Result<(), (PathBuf, std::io::Error)> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let doomed = parent.join(format!("{TEMP_PREFIX}{tag}"));
    let _ = std::fs::remove_dir_all(&doomed); // a leftover of the same name
    std::fs::rename(dir, &doomed).map_err(|e| (dir.to_path_buf(), e))?;
    std::fs::remove_dir_all(&doomed).map_err(|e| (doomed, e))
}

/// Refuses to write `path` while an earlier version of it sits aside from an interrupted replacement (a kill
/// between its two renames, on a file system without an atomic exchange): the name is free, but the user's
/// output is not gone, and a new one must not silently take its place.
pub fn check_no_interrupted_replacement(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    if let Some(old) = temp_siblings(OLD, path).first() {
        bail!(
            "{} is missing, but {} holds its earlier version, moved aside by an interrupted replacement; move it \
             back to {} (or delete it), then run again",
            path.display(),
            old.display(),
            path.display()
        );
    }
    Ok(())
}

/// Flushes every file under `dir` to disk, then the folder itself (Unix; elsewhere the file system's own order
/// is all there is: Windows cannot flush a file opened to read or open a folder at all).
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                sync_tree(&entry.path())?;
            } else {
                std::fs::File::open(entry.path())?.sync_all()?;
            }
        }
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Flushes folder `dir`'s entries (a rename into it) to disk, best effort: the output is already complete.
fn sync_folder(dir: &Path) {
    #[cfg(unix)]
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Swaps the names of two paths in one step (Linux's `renameat2(RENAME_EXCHANGE)`); Err where the system or file
/// system has no such call, and the caller falls back to two renames.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let (a, b) = (c(a)?, c(b)?);
        // Through syscall(2): glibc has a wrapper only from 2.28 on, and an older one must still link.
        // SAFETY: two NUL-terminated paths that outlive the call; no memory is shared with the kernel after it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
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
    check_no_interrupted_replacement(dir)?;
    let tmp = shared(tempfile::Builder::new().prefix(&temp_prefix(TMP, dir)).rand_bytes(SUFFIX_LEN), 0o777)
        .tempdir_in(parent)
        .with_context(|| format!("cannot write {}: folder {} is not writable", dir.display(), parent.display()))?;
    let listed = BeingWritten::new(tmp.path());
    fill(tmp.path())?;
    share_files(tmp.path()).with_context(|| format!("cannot write {}", dir.display()))?;
    sync_tree(tmp.path()).with_context(|| format!("cannot write {}", dir.display()))?;
    // Complete from here: an interruption leaves it (and the earlier output) rather than deleting either.
    drop(listed);
    let tmp_path = tmp.keep();
    let moved = |e: std::io::Error| {
        anyhow::anyhow!("cannot move the output into {} ({e}); it is complete in {}", dir.display(), tmp_path.display())
    };
    if !dir.exists() {
        std::fs::rename(&tmp_path, dir).map_err(moved)?;
    } else if exchange(&tmp_path, dir).is_ok() {
        // The new output took the name in one step; the earlier one is now the temporary, deleted below.
    } else {
        // The earlier output moves aside, the new one in: a kill between the two leaves the name free and the
        // earlier output aside, which the next write of it refuses to pass over (`check_no_interrupted_replacement`).
        let aside = tempfile::Builder::new()
            .prefix(&temp_prefix(OLD, dir))
            .rand_bytes(SUFFIX_LEN)
            .tempdir_in(parent)
            .map_err(moved)?
            .keep();
        std::fs::rename(dir, &aside).map_err(moved)?;
        std::fs::rename(&tmp_path, dir).map_err(moved)?;
        std::fs::remove_dir_all(&aside).with_context(|| format!("cannot remove the earlier {}", aside.display()))?;
    }
    sync_folder(parent);
    remove_leftovers(dir);
    Ok(())
}

#[cfg(test)]
mod replace_tests {
    use super::*;

    /// A folder written over an earlier one replaces it whole, and leaves nothing beside it; while a temporary
    /// output is being written it is listed for the signal watcher, and unlisted after.
    #[test]
    fn a_folder_replaces_the_earlier_one_and_nothing_is_left_beside_it() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        write_dir_atomic(&out, &[("a", b"1".to_vec()), ("b", b"1".to_vec())]).unwrap();
        let mut written = PathBuf::new();
        write_dir_atomic_with(&out, |tmp| {
            assert!(being_written().iter().any(|p| p == tmp), "the temporary folder is listed while written");
            written = tmp.to_path_buf();
            write_files(tmp, &out, &[("a", b"2".to_vec())])
        })
        .unwrap();
        assert!(!being_written().contains(&written));
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"2");
        assert!(!out.join("b").exists(), "the earlier folder's files are gone with it");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["out"]);
    }

    /// What killed writes left — a partial temporary of a file, a complete temporary folder — goes when a write of
    /// the same output finishes; another output's temporaries stay. An earlier version left aside by a kill between
    /// two renames blocks the next write of its output until the user moves it back.
    #[test]
    fn leftovers_of_killed_writes_go_and_an_output_left_aside_blocks() {
        let d = tempfile::tempdir().unwrap();
        let (file, dir) = (d.path().join("m.gguf"), d.path().join("model"));
        let stale = [
            temp_prefix(TMP, &file) + "a1b2c3",
            temp_prefix(TMP, &dir) + "d4e5f6",
            temp_prefix(TMP, &d.path().join("model-2")) + "g7h8i9",
        ];
        std::fs::write(d.path().join(&stale[0]), b"part").unwrap();
        std::fs::create_dir(d.path().join(&stale[1])).unwrap();
        std::fs::write(d.path().join(&stale[2]), b"other").unwrap();
        write_atomic(&file, b"x").unwrap();
        write_dir_atomic(&dir, &[("a", b"1".to_vec())]).unwrap();
        write_dir_atomic(&dir, &[("a", b"2".to_vec())]).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, [stale[2].as_str(), "m.gguf", "model"]);
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"2");

        let old = d.path().join(temp_prefix(OLD, &dir) + "j0k1l2");
        std::fs::rename(&dir, &old).unwrap();
        let e = write_dir_atomic(&dir, &[("a", b"3".to_vec())]).unwrap_err().to_string();
        assert!(e.contains("holds its earlier version") && e.contains("move it back"), "{e}");
        assert_eq!(std::fs::read(old.join("a")).unwrap(), b"2", "the earlier output is untouched");
        // Moved back, the output is written again; an earlier version left beside a present output (a kill while
        // it was deleted) goes with the write.
        std::fs::rename(&old, &dir).unwrap();
        let stale_old = d.path().join(temp_prefix(OLD, &dir) + "m3n4o5");
        std::fs::create_dir(&stale_old).unwrap();
        write_dir_atomic(&dir, &[("a", b"3".to_vec())]).unwrap();
        assert!(!stale_old.exists());
    }

    /// Long names (in bytes: 80 CJK characters are 240) fit in a file name, and two that share their first 200
    /// bytes still get different temporaries.
    #[test]
    fn long_output_names_are_written_and_kept_apart() {
        let d = tempfile::tempdir().unwrap();
        let long = "模".repeat(80);
        write_dir_atomic(&d.path().join(&long), &[("a", b"1".to_vec())]).unwrap();
        write_dir_atomic(&d.path().join(&long), &[("a", b"2".to_vec())]).unwrap();
        assert_eq!(std::fs::read(d.path().join(&long).join("a")).unwrap(), b"2");
        let (a, b) = (d.path().join(long.clone() + "a"), d.path().join(long.clone() + "b"));
        assert_ne!(temp_prefix(TMP, &a), temp_prefix(TMP, &b));
        assert!(temp_prefix(TMP, &a).len() + SUFFIX_LEN <= 255);
    }

    #[test]
    fn a_file_in_a_missing_folder_is_refused_by_the_folder_s_name() {
        let d = tempfile::tempdir().unwrap();
        let e = write_atomic(&d.path().join("mf/m.gguf"), b"x").unwrap_err().to_string();
        assert!(e.ends_with("mf does not exist; create it first"), "{e}");
    }
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
