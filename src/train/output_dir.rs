//! A training run's output folder over its life. A fresh run never mixes with an earlier one: without
//! `--overwrite` it refuses a folder that holds a run's files; with it, the earlier run is first *set aside*
//! (renamed into a hidden sibling inside the folder) and deleted only once the new run has written its result
//! (adapter/ or model/). A new run that stops to be resumed (a signal, `--stop-after-steps`, a crash) leaves it set
//! aside, and `--resume` carries it on to that point; a new run that fails puts it back (its own checkpoints, if it
//! has any, moved to a visible `failed-run-*` folder beside it). Nothing an earlier run made is deleted before the
//! new result exists, and no input of the run may live inside what would be replaced.
use super::checkpoint;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// What a run writes into its output folder; these, and nothing else, are replaced by `--overwrite`.
pub const RUN_FILES: [&str; 5] = ["checkpoints", "adapter", "model", "metrics.jsonl", "loss.png"];

/// Prefix of the hidden folder holding an earlier run while a `--overwrite` run has no result yet.
const ASIDE_PREFIX: &str = ".condlm-replaced-";

/// Prefix of the folder a failed `--overwrite` run's checkpoints are moved to when the earlier run comes back.
const FAILED_PREFIX: &str = "failed-run-";

/// The run files present in `out`.
fn present(out: &Path) -> Vec<PathBuf> {
    RUN_FILES.iter().map(|n| out.join(n)).filter(|p| p.exists()).collect()
}

/// An earlier run left set aside by an interrupted `--overwrite`, if any. An empty one (its contents moved back
/// by hand, as the error suggests) is no run: it is removed.
fn leftover_aside(out: &Path) -> Option<PathBuf> {
    let aside =
        std::fs::read_dir(out).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(ASIDE_PREFIX)) && p.is_dir()
        })?;
    let empty = std::fs::read_dir(&aside).is_ok_and(|mut d| d.next().is_none());
    if empty && std::fs::remove_dir(&aside).is_ok() {
        return None;
    }
    Some(aside)
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

/// Checks, before anything is loaded, that a run may write into `out`: a resumed run continues its own
/// files; a fresh one needs a folder without a run's files, or `overwrite`, and none of `inputs` (model,
/// data, config paths) may lie inside the files `overwrite` would replace.
pub fn check(out: &Path, resuming: bool, overwrite: bool, inputs: &[&Path]) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--output-dir {}: exists and is not a folder; choose another --output-dir", out.display());
    }
    if let Some(aside) = leftover_aside(out) {
        let new_run = !checkpoint::list(out).is_empty();
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
        move_into(existing, &aside)?;
        Ok(Some(SetAside { out: out.to_path_buf(), aside }))
    }

    /// The earlier run an interrupted `--overwrite` run left set aside in `out`, which its `--resume` carries on.
    pub fn adopt(out: &Path) -> Option<SetAside> {
        leftover_aside(out).map(|aside| SetAside { out: out.to_path_buf(), aside })
    }

    /// The hidden folder holding the earlier run.
    pub fn path(&self) -> &Path {
        &self.aside
    }

    /// The new run has written its result: the earlier run goes. A failure to delete it is a warning (the new
    /// result stands), and a later `--resume` deletes it.
    pub fn discard(self) {
        if let Err(e) = std::fs::remove_dir_all(&self.aside) {
            eprintln!(
                "warning: cannot remove the replaced run in {}: {e}; delete it, or run --resume {} again",
                self.aside.display(),
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
            let to = self.out.join(from.file_name().expect("entries have names"));
            std::fs::rename(&from, &to).with_context(|| format!("cannot move {} back", from.display()))?;
        }
        std::fs::remove_dir(&self.aside).with_context(|| format!("cannot remove {}", self.aside.display()))?;
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
        std::fs::create_dir_all(dir.path().join("checkpoints/step-0000002")).unwrap();
        let err = check(dir.path(), false, true, &[]).unwrap_err().to_string();
        assert!(err.contains("--resume") && err.contains("move its contents back"), "{err}");
        check(dir.path(), true, false, &[]).unwrap();
        drop(aside);
        let aside = SetAside::adopt(dir.path()).expect("the leftover run is found");
        let failed = aside.restore().unwrap().expect("the failed run's checkpoints are kept");
        assert!(failed.join("checkpoints/step-0000002").is_dir() && !dir.path().join("checkpoints").exists());
        assert!(dir.path().join("adapter/adapter_config.json").is_file());
        std::fs::remove_dir_all(failed).unwrap();

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
}
