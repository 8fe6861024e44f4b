//! Every setting of a training run, with its default; read from a TOML file (`--config`) and
//! overridden by command-line flags. The resolved settings are saved with each checkpoint.
use super::schedule::Schedule;
use crate::data::source::{DataFormat, DataSource, EVAL_SPLITS, TRAIN_SPLITS, resolve_data};
use crate::formats::weights::BaseDtype;
use crate::kernels::compute::Compute;
use crate::network::device::Placement;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSettings {
    pub model: String,
    /// Training rows: a data file, a dataset folder or a hub dataset id (see `data::source`).
    pub data: String,
    /// How data files are read (by extension unless set).
    pub data_format: DataFormat,
    /// Split of `data` when it is a folder or hub dataset (default: train).
    pub split: Option<String>,
    /// Validation rows, read like `data`; otherwise `eval_fraction` of the prompts are held out.
    pub eval_data: Option<String>,
    /// Split of `eval_data` when it is a folder or hub dataset (default: validation, else test, …).
    pub eval_split: Option<String>,
    pub eval_fraction: f64,
    pub output_dir: PathBuf,
    pub prompt_field: String,
    pub completion_field: String,
    /// Full fine-tuning instead of LoRA.
    pub full: bool,
    pub freeze_embeddings: bool,
    pub lora_r: usize,
    pub lora_alpha: f32,
    pub lora_dropout: f32,
    /// Comma-separated module names (q_proj,v_proj,…) or "all-linear".
    pub lora_targets: String,
    pub rslora: bool,
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides `epochs`).
    pub max_steps: Option<usize>,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub max_len: usize,
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables clipping.
    pub max_grad_norm: f64,
    pub label_smoothing: f32,
    pub seed: u64,
    /// Evaluate every N steps (0: at the end of each epoch only).
    pub eval_every: usize,
    /// Write a checkpoint every N steps (0: only at the end).
    pub save_every: usize,
    /// Checkpoints kept (besides the best by eval loss).
    pub keep_last: usize,
    /// How the frozen base's block matrices are kept in memory.
    pub base_dtype: BaseDtype,
    /// Keep only each block's input in the forward pass and recompute the rest in the backward pass.
    pub checkpoint_activations: bool,
    /// How the weight products compute (`--compute`) and where the steps run (`--device`): a resumed run keeps
    /// them unless given again.
    pub compute: Compute,
    pub device: Placement,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            model: String::new(),
            data: String::new(),
            data_format: DataFormat::Auto,
            split: None,
            eval_data: None,
            eval_split: None,
            eval_fraction: 0.0,
            output_dir: PathBuf::from("condlm-out"),
            prompt_field: "prompt".into(),
            completion_field: "completion".into(),
            full: false,
            freeze_embeddings: false,
            lora_r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.05,
            lora_targets: "all-linear".into(),
            rslora: false,
            lr: 2e-4,
            schedule: Schedule::Cosine,
            warmup_steps: 0,
            epochs: 1,
            max_steps: None,
            batch_size: 8,
            grad_accum: 1,
            max_len: 1024,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            label_smoothing: 0.0,
            seed: 42,
            eval_every: 0,
            save_every: 100,
            keep_last: 2,
            base_dtype: BaseDtype::Stored,
            checkpoint_activations: false,
            compute: Compute::F32,
            device: Placement::Cpu,
        }
    }
}

impl TrainSettings {
    /// The local paths among model, data, eval data and output folder made absolute, so that the checkpoint's
    /// settings name the same files whatever folder `--resume` is run from (a hub id stays as it is).
    pub fn with_absolute_paths(mut self) -> Result<Self> {
        let absolute = |p: &str| -> Result<String> {
            if !Path::new(p).exists() {
                return Ok(p.to_string());
            }
            let abs = std::path::absolute(p).with_context(|| format!("cannot resolve the path {p}"))?;
            Ok(abs.to_string_lossy().into_owned())
        };
        self.model = absolute(&self.model)?;
        self.data = absolute(&self.data)?;
        self.eval_data = self.eval_data.as_deref().map(absolute).transpose()?;
        self.output_dir = std::path::absolute(&self.output_dir)
            .with_context(|| format!("cannot resolve the path {}", self.output_dir.display()))?;
        Ok(self)
    }

    /// Defaults overlaid with a TOML file.
    pub fn from_toml(path: &Path) -> Result<Self> {
        let text = crate::input::read_to_string(path, "config file")?;
        Self::from_toml_str(&text, path)
    }

    /// Defaults overlaid with the text of a TOML file; `origin` names the file in errors.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", origin.display()))
    }

    /// The files of the training data and of the eval data, if any.
    pub fn data_sources(&self) -> Result<(DataSource, Option<DataSource>)> {
        let data = resolve_data(&self.data, self.data_format, self.split.as_deref(), TRAIN_SPLITS)?;
        let eval = self.eval_data.as_deref().map(|e| {
            resolve_data(e, self.data_format, self.eval_split.as_deref(), EVAL_SPLITS)
                .map_err(|err| anyhow::anyhow!("--eval-data: {err:#}"))
        });
        Ok((data, eval.transpose()?))
    }

    /// What a new run (not one resumed, whose settings were accepted when it started) must not combine.
    pub fn check_new_run(&self) -> Result<()> {
        if self.prompt_field == self.completion_field {
            bail!(
                "--prompt-field and --completion-field are both \"{}\": x and y would be the same text; name two \
                 different fields",
                self.prompt_field
            );
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        if self.model.is_empty() {
            bail!("no model: pass --model (or set model in the --config file)");
        }
        if self.data.is_empty() {
            bail!("no training data: pass --data (or set data in the --config file)");
        }
        if self.eval_split.is_some() && self.eval_data.is_none() {
            bail!("--eval-split names a split of --eval-data; pass --eval-data too (or drop --eval-split)");
        }

        let positive = [("batch-size", self.batch_size), ("grad-accum", self.grad_accum), ("max-len", self.max_len)];
        for (name, v) in positive {
            if v == 0 {
                bail!("--{name} must be at least 1");
            }
        }
        if self.max_steps.is_none() && self.epochs == 0 {
            bail!("--epochs must be at least 1 (or give --max-steps)");
        }
        if self.max_steps == Some(0) {
            bail!("--max-steps must be at least 1");
        }
        if !self.full {
            if self.lora_r == 0 {
                bail!("--lora-r must be at least 1");
            }
            if !(self.lora_alpha > 0.0 && self.lora_alpha.is_finite()) {
                bail!("--lora-alpha must be a positive number, got {}", self.lora_alpha);
            }
            if !(0.0..1.0).contains(&self.lora_dropout) {
                bail!("--lora-dropout must be in [0, 1), got {}", self.lora_dropout);
            }
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            bail!("--weight-decay must be a number ≥ 0, got {}", self.weight_decay);
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            bail!("--max-grad-norm must be a number ≥ 0 (0 turns clipping off), got {}", self.max_grad_norm);
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            bail!("--eval-fraction must be in [0, 1), got {}", self.eval_fraction);
        }
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            bail!("--label-smoothing must be in [0, 1], got {}", self.label_smoothing);
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr must be a positive number, got {}", self.lr);
        }
        Ok(())
    }
}
