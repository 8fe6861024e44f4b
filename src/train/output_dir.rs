//! A training run's output folder over its life. A fresh run never mixes with an earlier one: without
//! `--overwrite` it refuses a folder that holds a run's files; with it, the earlier run is first *set aside*
//! (renamed into a hidden sibling inside the folder) and deleted only once the new run has written its result
//! (adapter/ or model/). A new run that stops to be resumed (a signal, `--stop-after-steps`, a crash) leaves it set
//! aside, and `--resume` carries it on to that point; a new run that fails puts it back (its own checkpoints, if it
//! has any, moved to a visible `failed-run-*` folder beside it). Nothing an earlier run made is deleted before the
//! new result exists, and no input of the run may live inside what would be replaced.
//!
//! The set-aside folder holds a random token, written before anything moves into it, and every checkpoint of the
//! run that set it aside records that token: `--resume` carries on a set-aside folder only when the output
//! folder's latest checkpoint names it. A kill among the renames of setting aside or of putting back leaves
//! folders that do not match, which are never deleted: the user is told to move the earlier run back.
use super::checkpoint;
use crate::output::TEMP_PREFIX;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// What a run writes into its output folder; these, and nothing else, are replaced by `--overwrite`.
pub const RUN_FILES: [&str; 5] = ["checkpoints", "adapter", "model", "metrics.jsonl", "loss.png"];

/// Prefix of the hidden folder holding an earlier run while a `--overwrite` run has no result yet.
const ASIDE_PREFIX: &str = ".condlm-replaced-";

/// Prefix of the folder a failed `--overwrite` run's checkpoints are moved to when the earlier run comes back.
const FAILED_PREFIX: &str = "failed-run-";

/// The file in a set-aside folder holding its token.
const TOKEN_FILE: &str = ".condlm-token";

/// Run folders this process holds the lock of, with the open folders that hold it (until the process ends).
static LOCKED: std::sync::Mutex<Vec<(PathBuf, std::fs::File)>> = std::sync::Mutex::new(Vec::new());

/// Takes the lock of run folder `out` for the rest of this process, if it exists: Unix `flock` on the folder
/// itself (no file is made; the kernel drops it when the process ends, however it ends; a file system without
/// locks gets none). A folder another `train` holds is refused: two runs in one folder would write the same
/// checkpoints, and cleaning up one's temporaries would break the other's writes.
pub fn lock(out: &Path) -> Result<()> {
    if !cfg!(unix) || !out.is_dir() {
        return Ok(());
    }
    let key = out.canonicalize().unwrap_or_else(|_| out.to_path_buf());
    let mut locked = LOCKED.lock().unwrap_or_else(|e| e.into_inner());
    if locked.iter().any(|(p, _)| *p == key) {
        return Ok(());
    }
    let folder = std::fs::File::open(out).with_context(|| format!("cannot open {} to lock it", out.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(folder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                bail!(
                    "{} is in use by another condlm train; wait for it to end or stop it, or choose another \
                     --output-dir",
                    out.display()
                );
            }
        }
    }
    locked.push((key, folder));
    Ok(())
}

/// The run files present in `out`.
fn present(out: &Path) -> Vec<PathBuf> {
    RUN_FILES.iter().map(|n| out.join(n)).filter(|p| p.exists()).collect()
}

/// An earlier run left set aside by an interrupted `--overwrite`, if any. An empty one (its contents moved back
/// by hand, as the error suggests, or none moved in yet) is no run: it is removed.
fn leftover_aside(out: &Path) -> Option<PathBuf> {
    let aside =
        std::fs::read_dir(out).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(ASIDE_PREFIX)) && p.is_dir()
        })?;
    let empty = std::fs::read_dir(&aside).is_ok_and(|d| d.flatten().all(|e| e.file_name() == TOKEN_FILE));
    if empty && remove_emptied(&aside).is_ok() {
        return None;
    }
    Some(aside)
}

/// Removes a set-aside folder that holds nothing but its token.
fn remove_emptied(aside: &Path) -> Result<()> {
    match std::fs::remove_file(aside.join(TOKEN_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", aside.join(TOKEN_FILE).display()));
        }
        _ => {}
    }
    std::fs::remove_dir(aside).with_context(|| format!("cannot remove {}", aside.display()))
}

/// Whether `aside` is the folder that the run of `out`'s latest checkpoint set aside (their tokens match): its
/// token, or "" for a folder an older condlm set aside (no token file, and a latest checkpoint that records none:
/// this version writes the token before it moves anything, so its own such folders are empty and removed).
fn set_aside_by_latest(out: &Path, aside: &Path) -> Option<String> {
    match std::fs::read_to_string(aside.join(TOKEN_FILE)) {
        Ok(token) => (checkpoint::replaces(out)? == token).then_some(token),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let older = !checkpoint::list(out).is_empty() && checkpoint::replaces(out).is_none();
            older.then(String::new)
        }
        Err(_) => None,
    }
}

/// A token no other set-aside folder has had: process id and time.
fn new_token() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// A folder in `out` named `prefix` and this process's id, with a counter when that name is taken (a container's
/// process ids repeat).
fn unique_dir(out: &Path, prefix: &str) -> Result<PathBuf> {
    for n in 0.. {
        let name = if n == 0 {
            format!("{prefix}{}", std::process::id())
        } else {
            format!("{prefix}{}-{n}", std::process::id())
        };
        let dir = out.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    unreachable!("some counter is free")
}

/// Moves `files` into folder `to` (renames only).
fn move_into(files: Vec<PathBuf>, to: &Path) -> Result<()> {
    for p in files {
        let dest = to.join(p.file_name().expect("run files have names"));
        std::fs::rename(&p, &dest).with_context(|| format!("cannot move {} to {}", p.display(), to.display()))?;
    }
    Ok(())
}

/// Deletes what killed condlm processes left in the run folder `out` and its checkpoints/ (temporaries, partial
/// or complete but never renamed into place, and folders renamed to be deleted), and checkpoints/ when that
/// leaves it empty: so that moving a set-aside run back into `out` works.
fn remove_leftovers(out: &Path) {
    let checkpoints = checkpoint::checkpoints_dir(out);
    // Only what a run writes: another command's temporaries (a `score --out` into this folder) are not ours.
    let run_files: Vec<&str> = RUN_FILES.iter().copied().chain(["replaced"]).collect();
    for (dir, names) in [(out, &run_files[..]), (&checkpoints, &["step", "pruned"][..])] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(TEMP_PREFIX) else { continue };
            if names.iter().any(|n| rest.starts_with(&format!("{n}-"))) {
                let p = e.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
    }
    let _ = std::fs::remove_dir(&checkpoints); // only when empty
}

/// Checks, before anything is loaded, that a run may write into `out`: a resumed run continues its own
/// files; a fresh one needs a folder without a run's files, or `overwrite`, and none of `inputs` (model,
/// data, config paths) may lie inside the files `overwrite` would replace. The folder is locked for this process
/// ([`lock`]), then killed runs' temporaries are deleted; nothing else is changed.
pub fn check(out: &Path, resuming: bool, overwrite: bool, inputs: &[&Path]) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--output-dir {}: exists and is not a folder; choose another --output-dir", out.display());
    }
    lock(out)?;
    remove_leftovers(out);
    if let Some(aside) = leftover_aside(out) {
        let new_run = set_aside_by_latest(out, &aside).is_some();
        if !(resuming && new_run) {
            let what = if new_run {
                format!(
                    "continue the new run with --resume {} (the earlier run is deleted once it finishes), or keep \
                     the earlier run: delete the new run's files ({}) and move its contents back into {}",
                    out.display(),
                    RUN_FILES.join(", "),
                    out.display()
                )
            } else {
                format!("move its contents back into {} to keep that run, or delete it, then run again", out.display())
            };
            bail!(
                "{} holds {}, an earlier run that an interrupted --overwrite set aside; {what}",
                out.display(),
                aside.display()
            );
        }
    }
    if resuming {
        return Ok(());
    }
    let existing = present(out);
    if existing.is_empty() {
        return Ok(());
    }
    if !overwrite {
        let names: Vec<String> =
            existing.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into()).collect();
        let hint = if checkpoint::list(out).is_empty() {
            String::new()
        } else {
            format!("continue it with --resume {}, ", out.display())
        };
        bail!(
            "{} already holds a training run ({}); {hint}replace it with --overwrite (kept until the new run has \
             written its result), or choose another --output-dir",
            out.display(),
            names.join(", ")
        );
    }
    for input in inputs {
        let Ok(input_c) = input.canonicalize() else { continue };
        for file in &existing {
            if let Ok(file_c) = file.canonicalize()
                && input_c.starts_with(&file_c)
            {
                bail!(
                    "{} is an input of this run but lies inside {}, which --overwrite would replace; copy it elsewhere \
                     or choose another --output-dir",
                    input.display(),
                    file.display()
                );
            }
        }
    }
    Ok(())
}

/// An earlier run moved aside by `--overwrite`, until the new run either writes its result ([`SetAside::discard`])
/// or fails ([`SetAside::restore`]).
pub struct SetAside {
    out: PathBuf,
    aside: PathBuf,
    token: String,
}

impl SetAside {
    /// Moves the run files of `out` into a hidden folder inside it (renames only: nothing is copied or
    /// deleted). None when there is nothing to set aside.
    pub fn take(out: &Path) -> Result<Option<SetAside>> {
        let existing = present(out);
        if existing.is_empty() {
            return Ok(None);
        }
        let aside = unique_dir(out, ASIDE_PREFIX)?;
        let token = new_token();
        let token_file = aside.join(TOKEN_FILE);
        std::fs::write(&token_file, &token).with_context(|| format!("cannot write {}", token_file.display()))?;
        move_into(existing, &aside)?;
        Ok(Some(SetAside { out: out.to_path_buf(), aside, token }))
    }

    /// The earlier run that the interrupted `--overwrite` run of `out`'s latest checkpoint set aside, which its
    /// `--resume` carries on. None when there is none, or when the set-aside folder is not that run's.
    pub fn adopt(out: &Path) -> Option<SetAside> {
        let aside = leftover_aside(out)?;
        let token = set_aside_by_latest(out, &aside)?;
        Some(SetAside { out: out.to_path_buf(), aside, token })
    }

    /// The token the new run's checkpoints record (none for a folder an older condlm set aside).
    pub fn token(&self) -> Option<&str> {
        Some(self.token.as_str()).filter(|t| !t.is_empty())
    }

    /// The hidden folder holding the earlier run.
    pub fn path(&self) -> &Path {
        &self.aside
    }

    /// The new run has written its result: the earlier run goes. A failure to delete it is a warning (the new
    /// result stands), and a later `--resume` deletes it.
    pub fn discard(self) {
        // Never a half-deleted run that looks set aside, even if killed while deleting.
        if let Err((left, e)) = crate::output::delete_folder(&self.aside, &format!("replaced-{}", std::process::id())) {
            eprintln!(
                "warning: cannot remove the replaced run in {}: {e}; delete it, or run --resume {} again",
                left.display(),
                self.out.display()
            );
        }
    }

    /// The new run failed: the earlier run comes back. The failed run's files go, unless it wrote checkpoints:
    /// then they move to a `failed-run-*` folder in `out`, returned, for the user to look at or delete.
    pub fn restore(self) -> Result<Option<PathBuf>> {
        let failed = present(&self.out);
        let kept = if checkpoint::list(&self.out).is_empty() {
            for p in failed {
                let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                removed.with_context(|| format!("cannot remove {}", p.display()))?;
            }
            None
        } else {
            let to = unique_dir(&self.out, FAILED_PREFIX)?;
            move_into(failed, &to)?;
            Some(to)
        };
        for entry in std::fs::read_dir(&self.aside).with_context(|| format!("cannot list {}", self.aside.display()))? {
            let from = entry?.path();
            let name = from.file_name().expect("entries have names");
            if name != TOKEN_FILE {
                std::fs::rename(&from, self.out.join(name))
                    .with_context(|| format!("cannot move {} back", from.display()))?;
            }
        }
        remove_emptied(&self.aside)?;
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("adapter")).unwrap();
        std::fs::write(dir.path().join("adapter/adapter_config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), "{\"step\":1}\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        dir
    }

    #[test]
    fn a_folder_with_a_run_needs_overwrite() {
        let dir = run_folder();
        let err = check(dir.path(), false, false, &[]).unwrap_err().to_string();
        assert!(err.contains("already holds a training run") && err.contains("adapter, metrics.jsonl"), "{err}");
        check(dir.path(), false, true, &[]).unwrap();
        check(dir.path(), true, false, &[]).unwrap();
    }

    #[test]
    fn an_input_inside_the_replaced_files_is_refused() {
        let dir = run_folder();
        let err = check(dir.path(), false, true, &[&dir.path().join("adapter")]).unwrap_err().to_string();
        assert!(err.contains("lies inside") && err.contains("adapter"), "{err}");
        check(dir.path(), false, true, &[&dir.path().join("notes.txt")]).unwrap();
    }

    /// Writes the checkpoint of `step` in `out`, recording `replaces`.
    fn checkpoint_at(out: &Path, step: u64, replaces: Option<&str>) {
        let settings = crate::train::settings::TrainSettings::default();
        let run = checkpoint::RunRecord {
            settings: &settings,
            best_eval: None,
            data_sha256: "",
            model_fingerprint: "",
            replaces,
        };
        let moments = crate::train::optim::Moments::zeros(1);
        checkpoint::save(out, step, &[("w", &[0.0], &moments)], &run).unwrap();
    }

    #[test]
    fn set_aside_restores_or_discards_and_leaves_other_files() {
        let dir = run_folder();
        let aside = SetAside::take(dir.path()).unwrap().unwrap();
        assert!(present(dir.path()).is_empty());
        let err = check(dir.path(), false, false, &[]).unwrap_err().to_string();
        assert!(err.contains("interrupted --overwrite"), "{err}");
        std::fs::write(dir.path().join("metrics.jsonl"), "new\n").unwrap();
        std::fs::write(dir.path().join("loss.png"), "new").unwrap();
        assert_eq!(aside.restore().unwrap(), None, "no checkpoint: nothing of the failed run is kept");
        assert!(!dir.path().join("loss.png").exists(), "the failed run's files go");
        assert_eq!(std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap(), "{\"step\":1}\n");
        assert!(dir.path().join("adapter/adapter_config.json").is_file());
        assert!(leftover_aside(dir.path()).is_none());

        // A new run with checkpoints of its own: resumable while the earlier run stays aside, and if it fails its
        // checkpoints move to a failed-run folder as the earlier run comes back.
        let aside = SetAside::take(dir.path()).unwrap().unwrap();
        checkpoint_at(dir.path(), 2, aside.token());
        let err = check(dir.path(), false, true, &[]).unwrap_err().to_string();
        assert!(err.contains("--resume") && err.contains("move its contents back"), "{err}");
        check(dir.path(), true, false, &[]).unwrap();
        drop(aside);
        let aside = SetAside::adopt(dir.path()).expect("the leftover run is found");
        let failed = aside.restore().unwrap().expect("the failed run's checkpoints are kept");
        assert!(failed.join("checkpoints/step-0000002").is_dir() && !dir.path().join("checkpoints").exists());
        assert!(dir.path().join("adapter/adapter_config.json").is_file());
        std::fs::remove_dir_all(failed).unwrap();
        assert!(leftover_aside(dir.path()).is_none(), "the token file does not keep the folder");

        SetAside::take(dir.path()).unwrap().unwrap().discard();
        // An emptied set-aside folder (its contents moved back by hand) is no run, and goes.
        std::fs::create_dir(dir.path().join(format!("{ASIDE_PREFIX}9"))).unwrap();
        assert!(leftover_aside(dir.path()).is_none() && !dir.path().join(format!("{ASIDE_PREFIX}9")).exists());
        // A taken name gets a counter.
        let (a, b) = (unique_dir(dir.path(), FAILED_PREFIX).unwrap(), unique_dir(dir.path(), FAILED_PREFIX).unwrap());
        assert_ne!(a, b);
        std::fs::remove_dir(a).unwrap();
        std::fs::remove_dir(b).unwrap();
        assert!(present(dir.path()).is_empty() && leftover_aside(dir.path()).is_none());
        assert_eq!(std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(), "mine");
    }

    /// A kill while the earlier run moves back leaves its checkpoints in the output folder and the rest set aside.
    /// Those checkpoints do not name the set-aside folder: `--resume` must not carry it on (its end would delete
    /// the earlier run's result), and the user is told to move the rest back.
    #[test]
    fn resume_carries_on_only_the_folder_its_own_run_set_aside() {
        let dir = run_folder();
        checkpoint_at(dir.path(), 5, None);
        let aside = SetAside::take(dir.path()).unwrap().unwrap();
        checkpoint_at(dir.path(), 1, aside.token());
        // The earlier run's checkpoints came back, its adapter and metrics not yet; the failed run's went.
        std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
        std::fs::rename(aside.path().join("checkpoints"), dir.path().join("checkpoints")).unwrap();
        assert!(SetAside::adopt(dir.path()).is_none(), "the checkpoints are the earlier run's");
        let err = check(dir.path(), true, false, &[]).unwrap_err().to_string();
        assert!(err.contains("move its contents back") && !err.contains("continue the new run"), "{err}");
        assert!(aside.path().join("adapter/adapter_config.json").is_file(), "nothing is deleted");
        // A checkpoint written with another run's token is no match either.
        checkpoint_at(dir.path(), 6, Some("another run"));
        assert!(SetAside::adopt(dir.path()).is_none());
    }

    /// A kill during the new run's first checkpoint leaves only a temporary in checkpoints/; a kill while the
    /// replaced run is deleted leaves a renamed temporary. Neither is a run: the next check removes them, and
    /// moving the set-aside run back then works as the error says.
    #[test]
    fn killed_writes_leave_nothing_that_blocks_putting_the_earlier_run_back() {
        let dir = run_folder();
        checkpoint_at(dir.path(), 5, None);
        let aside = SetAside::take(dir.path()).unwrap().unwrap();
        let partial = checkpoint::checkpoints_dir(dir.path()).join(".condlm-tmp-step-0000001-x");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("state.safetensors"), b"part").unwrap();
        std::fs::create_dir_all(dir.path().join(".condlm-tmp-replaced-7/adapter")).unwrap();
        let foreign = dir.path().join(".condlm-tmp-scores.jsonl-a1b2c3");
        std::fs::write(&foreign, "another command's").unwrap();
        let err = check(dir.path(), true, false, &[]).unwrap_err().to_string();
        assert!(foreign.exists(), "only a run's own temporaries go");
        std::fs::remove_file(&foreign).unwrap();
        assert!(err.contains("move its contents back"), "{err}");
        assert!(!dir.path().join("checkpoints").exists() && !dir.path().join(".condlm-tmp-replaced-7").exists());
        for e in std::fs::read_dir(aside.path()).unwrap().flatten().filter(|e| e.file_name() != TOKEN_FILE) {
            std::fs::rename(e.path(), dir.path().join(e.file_name())).unwrap();
        }
        check(dir.path(), false, true, &[]).unwrap();
        assert!(leftover_aside(dir.path()).is_none(), "the emptied folder goes");
        assert_eq!(checkpoint::list(dir.path()).len(), 1, "the earlier run's checkpoint is back");

        // discard leaves nothing behind
        let aside = SetAside::take(dir.path()).unwrap().unwrap();
        aside.discard();
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["notes.txt"]);
    }
}
