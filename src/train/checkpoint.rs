//! Step checkpoints: trainable tensors, AdamW moments, step counter (which fixes the schedule
//! position, the data cursor and every dropout mask — all pure functions of seed and step) and the
//! run's settings. Written atomically; the last K are kept, plus the best by eval loss.
use super::optim::Moments;
use super::settings::TrainSettings;
use super::trainer::TrainState;
use crate::formats::hf_export::OutTensor;
use crate::output::write_dir_atomic_with;
use anyhow::{Context, Result, bail};
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const STATE_JSON: &str = "state.json";
const TENSORS: &str = "state.safetensors";

/// What `state.json` records besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    pub format: u32,
    pub step: u64,
    pub settings: TrainSettings,
    /// Trainable tensor names in order.
    pub tensors: Vec<String>,
    /// Best eval NLL so far and its step.
    pub best_eval: Option<(f64, u64)>,
    /// SHA-256 of the training (and eval) data the run reads, so a resume notices changed data.
    #[serde(default)]
    pub data_sha256: Option<String>,
    /// The base model's fingerprint (`model_fingerprint`), so a resume notices another model.
    #[serde(default)]
    pub model_fingerprint: Option<String>,
    /// The token of the earlier run this run set aside with `--overwrite` (`output_dir::SetAside`), so that
    /// `--resume` carries on only the folder this run set aside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// What a checkpoint records about its run besides the trainer's state.
pub struct RunRecord<'a> {
    pub settings: &'a TrainSettings,
    pub best_eval: Option<(f64, u64)>,
    pub data_sha256: &'a str,
    pub model_fingerprint: &'a str,
    pub replaces: Option<&'a str>,
}

pub fn checkpoints_dir(output_dir: &Path) -> PathBuf {
    output_dir.join("checkpoints")
}

fn step_dir(output_dir: &Path, step: u64) -> PathBuf {
    checkpoints_dir(output_dir).join(format!("step-{step:07}"))
}

/// Writes the checkpoint of step `step` — each trainable tensor's (name, values, moments) — streamed to disk
/// without a copy of the state, then prunes old ones.
pub fn save(output_dir: &Path, step: u64, tensors: &[(&str, &[f32], &Moments)], run: &RunRecord) -> Result<PathBuf> {
    let (m_names, v_names): (Vec<String>, Vec<String>) =
        tensors.iter().map(|(n, ..)| (format!("{n}.exp_avg"), format!("{n}.exp_avg_sq"))).unzip();
    let mut views: Vec<(&str, OutTensor)> = Vec::with_capacity(3 * tensors.len());
    for (i, (name, data, m)) in tensors.iter().enumerate() {
        views.push((name, OutTensor::new(vec![data.len()], data)));
        views.push((&m_names[i], OutTensor::new(vec![data.len()], &m.m)));
        views.push((&v_names[i], OutTensor::new(vec![data.len()], &m.v)));
    }
    let meta = CheckpointMeta {
        format: 1,
        step,
        settings: run.settings.clone(),
        tensors: tensors.iter().map(|t| t.0.to_string()).collect(),
        best_eval: run.best_eval,
        data_sha256: Some(run.data_sha256.to_string()),
        model_fingerprint: Some(run.model_fingerprint.to_string()),
        replaces: run.replaces.map(str::to_string),
    };
    let dir = step_dir(output_dir, step);
    write_dir_atomic_with(&dir, |tmp| {
        safetensors::serialize_to_file(views, None, &tmp.join(TENSORS))
            .with_context(|| format!("cannot write {}/{TENSORS}", dir.display()))?;
        std::fs::write(tmp.join(STATE_JSON), serde_json::to_vec_pretty(&meta)?)
            .with_context(|| format!("cannot write {}/{STATE_JSON}", dir.display()))
    })?;
    prune(output_dir, run.settings.keep_last.max(1), run.best_eval.map(|b| b.1))?;
    Ok(dir)
}

/// Existing checkpoint folders, oldest first.
pub fn list(output_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(checkpoints_dir(output_dir))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let step = e.file_name().to_str()?.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// A run resumed from the checkpoint of `step` abandons the later ones, of its earlier course: left in place, a
/// plain `--resume` would go back to them, and pruning would count them. They are renamed
/// `checkpoints/superseded-step-N` (kept: nothing is deleted before the new course has a result); returns their
/// (step, new path).
pub fn set_aside_later(output_dir: &Path, step: u64) -> Result<Vec<(u64, PathBuf)>> {
    let mut moved = vec![];
    for (later, dir) in list(output_dir).into_iter().filter(|(s, _)| *s > step) {
        let mut to = checkpoints_dir(output_dir).join(format!("superseded-step-{later:07}"));
        for n in 2.. {
            if !to.exists() {
                break;
            }
            to = checkpoints_dir(output_dir).join(format!("superseded-step-{later:07}-{n}"));
        }
        std::fs::rename(&dir, &to).with_context(|| format!("cannot move {} aside", dir.display()))?;
        moved.push((later, to));
    }
    Ok(moved)
}

fn prune(output_dir: &Path, keep: usize, best_step: Option<u64>) -> Result<()> {
    let all = list(output_dir);
    let n = all.len();
    for (step, dir) in all.into_iter().take(n.saturating_sub(keep)) {
        if Some(step) != best_step {
            // Never a damaged checkpoint under a checkpoint's name, even if killed while deleting.
            crate::output::delete_folder(&dir, &format!("pruned-step-{step:07}"))
                .map_err(|(left, e)| anyhow::anyhow!("cannot remove old checkpoint {}: {e}", left.display()))?;
        }
    }
    Ok(())
}

/// The run folder of `path` as [`load`] takes it: a checkpoint folder's run (`RUN/checkpoints/step-N`), or `path`.
pub fn run_folder(path: &Path) -> PathBuf {
    match path.parent().and_then(Path::parent) {
        Some(run) if path.join(STATE_JSON).is_file() => run.to_path_buf(),
        _ => path.to_path_buf(),
    }
}

/// Reads a checkpoint folder, or the latest checkpoint of an output folder. When the latest is damaged, the
/// error names the newest earlier checkpoint that reads cleanly (resuming from it is the user's choice).
pub fn load(path: &Path) -> Result<(CheckpointMeta, TrainState)> {
    if path.join(STATE_JSON).is_file() {
        return load_dir(path);
    }
    if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-")) && path.is_dir() {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let run = absolute.parent().and_then(Path::parent).unwrap_or(&absolute).to_path_buf();
        let intact = list(&run).into_iter().rev().find(|(_, d)| load_dir(d).is_ok());
        bail!(
            "{}: damaged checkpoint ({STATE_JSON} is missing, as a kill while it was deleted leaves it); {}",
            path.display(),
            match intact {
                Some((_, d)) =>
                    format!("the newest intact one is {}: continue from it with --resume {}", d.display(), d.display()),
                None => format!("no checkpoint of {} is intact", run.display()),
            }
        );
    }
    let mut all = list(path);
    let Some((_, latest)) = all.pop() else {
        bail!("{}: neither a checkpoint folder nor an output folder with checkpoints", path.display());
    };
    load_dir(&latest).map_err(|e| match all.iter().rev().find(|(_, d)| load_dir(d).is_ok()) {
        Some((_, intact)) => e.context(format!(
            "the latest checkpoint is damaged; the earlier checkpoint {} is intact: continue from it with --resume {}",
            intact.display(),
            intact.display()
        )),
        None => e.context("the latest checkpoint is damaged and no earlier one is intact"),
    })
}

/// The settings a resume from `path` (as [`load`] takes it) continues with, read without the tensors; None where
/// [`load`] would not read that checkpoint (it then says why).
pub fn settings_of(path: &Path) -> Option<TrainSettings> {
    let dir = if path.join(STATE_JSON).is_file() { path.to_path_buf() } else { list(path).pop()?.1 };
    read_meta(&dir).ok().map(|m| m.settings)
}

/// The token of the earlier run that the run of `output_dir`'s latest checkpoint set aside, if any.
pub fn replaces(output_dir: &Path) -> Option<String> {
    read_meta(&list(output_dir).pop()?.1).ok()?.replaces
}

fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
    let meta_path = dir.join(STATE_JSON);
    serde_json::from_str(&crate::input::read_to_string(&meta_path, "checkpoint state")?)
        .with_context(|| format!("{}: not a condlm checkpoint", meta_path.display()))
}

fn load_dir(dir: &Path) -> Result<(CheckpointMeta, TrainState)> {
    let meta = read_meta(dir)?;
    let tpath = dir.join(TENSORS);
    let bytes = crate::input::map(&tpath, "checkpoint tensors file")?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: damaged checkpoint ({e})", tpath.display()))?;
    let get = |name: &str| -> Result<Vec<f32>> {
        let t = st.tensor(name).map_err(|_| anyhow::anyhow!("{}: tensor {name} is missing", tpath.display()))?;
        if t.dtype() != Dtype::F32 {
            bail!("{}: tensor {name} has dtype {:?}, a condlm checkpoint holds F32", tpath.display(), t.dtype());
        }
        let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: tensor {name} holds a non-finite value ({} at index {i}): the checkpoint is damaged",
                tpath.display(),
                v[i]
            );
        }
        Ok(v)
    };
    let tensors = meta
        .tensors
        .iter()
        .map(|n| {
            Ok((n.clone(), get(n)?, Moments { m: get(&format!("{n}.exp_avg"))?, v: get(&format!("{n}.exp_avg_sq"))? }))
        })
        .collect::<Result<_>>()?;
    let state = TrainState { step: meta.step, tensors };
    Ok((meta, state))
}
