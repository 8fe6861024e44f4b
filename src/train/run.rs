//! A whole training run, top to bottom: load model and data, attach adapters, loop over
//! optimizer steps with evaluation, metrics and checkpoints, then write the adapter or model.
use super::checkpoint;
use super::optim::AdamWConfig;
use super::plot::plot_losses;
use super::settings::TrainSettings;
use super::trainer::{StepStats, TrainConfig, TrainState, Trainer};
use crate::data::dataset::{DataOptions, Dataset, load_dataset, split_by_prompt};
use crate::data::example::Example;
use crate::formats::hf_export::save_hf_folder;
use crate::formats::load::{LoadedModel, load_model};
use crate::formats::peft::save_adapter;
use crate::network::adapters::{attach, set_full_finetune};
use crate::network::lora::LoraConfig;
use crate::network::transformer::Transformer;
use crate::progress;
use crate::score::{Totals, row_scores, score_encoded};
use crate::tokenizer::TextTokenizer;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How a run ended, for the one-line summary.
pub struct RunSummary {
    pub steps: u64,
    pub first_loss: f64,
    pub last_loss: f64,
    pub eval_before: Option<Totals>,
    pub eval_after: Option<Totals>,
    pub tokens_per_s: f64,
    pub output: PathBuf,
    pub stopped_early: bool,
}

/// Rows per evaluation forward pass.
const EVAL_BATCH: usize = 16;

pub fn lora_config(s: &TrainSettings) -> LoraConfig {
    LoraConfig {
        rank: s.lora_r,
        alpha: s.lora_alpha,
        dropout: s.lora_dropout,
        rslora: s.rslora,
        targets: s.lora_targets.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
    }
}

/// Token-weighted NLL of `data` under the model's current weights (no dropout).
pub fn evaluate(model: &Transformer, data: &[Example]) -> Result<Totals> {
    let lps = score_encoded(model, data, EVAL_BATCH, |_| {})?;
    Ok(Totals::of(&row_scores(&lps)))
}

fn load_data(s: &TrainSettings, tok: &TextTokenizer, max_positions: usize) -> Result<(Dataset, Option<Dataset>)> {
    let opts = DataOptions {
        prompt_field: s.prompt_field.clone(),
        completion_field: s.completion_field.clone(),
        max_len: s.max_len.min(max_positions),
    };
    let all = load_dataset(&s.data, tok, &opts)?;
    let (train, eval) = match (&s.eval_data, s.eval_fraction) {
        (Some(path), _) => (all, Some(load_dataset(path, tok, &opts)?)),
        (None, f) if f > 0.0 => {
            let (train, eval) = split_by_prompt(all, f, s.seed);
            (train, Some(eval))
        }
        _ => (all, None),
    };
    if train.examples.is_empty() {
        bail!("{}: no training rows left (all were empty or truncated away)", s.data.display());
    }
    eprintln!("{}", train.stats.describe(&format!("train ({})", s.data.display())));
    if let Some(e) = &eval {
        eprintln!("{}", e.stats.describe("eval"));
    }
    Ok((train, eval))
}

/// The order rows are visited in epoch `epoch`: a permutation that is a pure function of
/// (seed, epoch), so the data cursor of a checkpoint is just the step number.
fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut keyed: Vec<(u64, usize)> = (0..n)
        .map(|i| (crate::rng::mix(crate::rng::mix(seed ^ epoch.wrapping_mul(0xA24B_AED4)) ^ i as u64), i))
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}

struct Metrics {
    file: std::fs::File,
}

impl Metrics {
    fn open(dir: &Path, append: bool) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Metrics { file })
    }

    fn log(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}")?;
        Ok(())
    }

    fn log_eval(&mut self, step: u64, t: &Totals) -> Result<()> {
        self.log(serde_json::json!({"step": step, "eval_nll": t.nll_per_token(), "eval_ppl": t.perplexity(), "eval_tokens": t.tokens}))
    }
}

/// (step, value) points of a curve.
type Curve = Vec<(u64, f64)>;

/// Reads metrics.jsonl back for the plot: (step, train loss) and (step, eval NLL).
fn read_curves(dir: &Path) -> (Curve, Curve) {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    let (mut train, mut eval) = (vec![], vec![]);
    for v in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        let step = v["step"].as_u64().unwrap_or(0);
        if let Some(l) = v["loss"].as_f64() {
            train.push((step, l));
        }
        if let Some(e) = v["eval_nll"].as_f64() {
            eval.push((step, e));
        }
    }
    (train, eval)
}

/// Runs (or, with `resume`, continues) a training run. `stop_after` ends this invocation after
/// that many steps with a checkpoint, as an interruption would.
pub fn train(s: TrainSettings, resume: Option<&Path>, stop_after: Option<u64>) -> Result<RunSummary> {
    let (s, resumed) = settings_and_state(s, resume)?;
    prepare_output_dir(&s.output_dir, resumed.is_some())?;
    let LoadedModel { files, mut model, tokenizer } = load_model(&s.model)?;
    let (train_set, eval_set) = load_data(&s, &tokenizer, model.config.max_positions)?;
    let lcfg = lora_config(&s);
    if s.full {
        set_full_finetune(&mut model, s.freeze_embeddings);
    } else {
        attach(&mut model, &lcfg, s.seed)?;
    }
    let plan = Plan::new(&s, train_set.examples.len());
    let mut trainer = Trainer::new(model, train_config(&s, plan.total_steps))?;
    let mut best_eval = None;
    if let Some((meta, state)) = resumed {
        trainer.import_state(state)?;
        best_eval = meta.best_eval;
    }
    let steps = StepLoop { s: &s, plan, train_set: &train_set, eval_set: eval_set.as_ref(), stop_after };
    let progress = steps.run(&mut trainer, best_eval)?;

    let out = &s.output_dir;
    let output = if progress.stopped_early {
        checkpoint::list(out).pop().map(|c| c.1).unwrap_or(out.clone())
    } else if s.full {
        let dir = out.join("model");
        save_hf_folder(&dir, &trainer.model, &tokenizer, &files)?;
        dir
    } else {
        let dir = out.join("adapter");
        save_adapter(&dir, &trainer.model, &lcfg, &s.model)?;
        dir
    };
    let (train_curve, eval_curve) = read_curves(out);
    if !train_curve.is_empty() {
        plot_losses(&out.join("loss.png"), &format!("condlm: {}", s.model), &train_curve, &eval_curve)?;
    }
    Ok(RunSummary {
        steps: trainer.step,
        first_loss: progress.first_loss,
        last_loss: progress.last_loss,
        eval_before: progress.eval_before,
        eval_after: progress.eval_after,
        tokens_per_s: progress.tokens as f64 / progress.train_secs,
        output,
        stopped_early: progress.stopped_early,
    })
}

/// The settings to run with (a resumed run's own, from its checkpoint) and the state to resume from.
fn settings_and_state(
    s: TrainSettings,
    resume: Option<&Path>,
) -> Result<(TrainSettings, Option<(checkpoint::CheckpointMeta, TrainState)>)> {
    let (s, resumed) = match resume {
        Some(p) => {
            let (meta, state) = checkpoint::load(p)?;
            (meta.settings.clone(), Some((meta, state)))
        }
        None => (s, None),
    };
    s.validate()?;
    Ok((s, resumed))
}

/// Refuses to start a fresh run over an earlier one, then makes sure the folder exists.
fn prepare_output_dir(out: &Path, resuming: bool) -> Result<()> {
    if !resuming && !checkpoint::list(out).is_empty() {
        bail!(
            "{} already holds a training run (checkpoints/); continue it with --resume {}, start afresh with --overwrite, \
             or choose another --output-dir",
            out.display(),
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create output folder {}", out.display()))
}

fn train_config(s: &TrainSettings, total_steps: usize) -> TrainConfig {
    TrainConfig {
        lr: s.lr,
        schedule: s.schedule,
        warmup_steps: s.warmup_steps,
        total_steps,
        adamw: AdamWConfig { weight_decay: s.weight_decay, ..AdamWConfig::default() },
        max_grad_norm: (s.max_grad_norm > 0.0).then_some(s.max_grad_norm),
        label_smoothing: s.label_smoothing,
        seed: s.seed,
    }
}

/// How the rows divide into steps.
#[derive(Clone, Copy)]
struct Plan {
    rows_per_step: usize,
    steps_per_epoch: usize,
    total_steps: usize,
}

impl Plan {
    fn new(s: &TrainSettings, rows: usize) -> Self {
        let rows_per_step = s.batch_size * s.grad_accum;
        let steps_per_epoch = rows.div_ceil(rows_per_step);
        Plan { rows_per_step, steps_per_epoch, total_steps: s.max_steps.unwrap_or(s.epochs * steps_per_epoch) }
    }

    fn epoch_of(&self, done_steps: u64) -> f64 {
        done_steps as f64 / self.steps_per_epoch as f64
    }
}

/// What the loop reports back. Throughput counts optimizer steps only (not evaluation or checkpoint writing).
struct Progress {
    tokens: usize,
    train_secs: f64,
    first_loss: f64,
    last_loss: f64,
    eval_before: Option<Totals>,
    eval_after: Option<Totals>,
    stopped_early: bool,
}

/// The optimizer steps of one invocation, with their metrics, evaluations and checkpoints.
struct StepLoop<'a> {
    s: &'a TrainSettings,
    plan: Plan,
    train_set: &'a Dataset,
    eval_set: Option<&'a Dataset>,
    stop_after: Option<u64>,
}

impl StepLoop<'_> {
    fn evaluate(&self, t: &Trainer) -> Result<Option<Totals>> {
        self.eval_set.map(|e| evaluate(&t.model, &e.examples)).transpose()
    }

    fn run(&self, trainer: &mut Trainer, mut best_eval: Option<(f64, u64)>) -> Result<Progress> {
        let (s, plan) = (self.s, self.plan);
        let (start_step, total) = (trainer.step, plan.total_steps as u64);
        let mut metrics = Metrics::open(&s.output_dir, start_step > 0)?;
        let eval_before = if start_step == 0 { self.evaluate(trainer)? } else { None };
        if let Some(t) = eval_before {
            metrics.log_eval(0, &t)?;
        }
        let bar = progress::bar(total, "{bar:30} step {pos}/{len} {msg} ETA {eta}");
        bar.set_position(start_step);
        let mut p = Progress {
            tokens: 0,
            train_secs: 0.0,
            first_loss: f64::NAN,
            last_loss: f64::NAN,
            eval_before,
            eval_after: None,
            stopped_early: false,
        };
        let end = self.stop_after.map_or(total, |k| (start_step + k).min(total));
        // This epoch's rows (and their labels) in visiting order; each step takes the next slice.
        let mut epoch: (u64, Vec<&Example>, Vec<&str>) = (u64::MAX, vec![], vec![]);
        for step in start_step..end {
            if epoch.0 != step / plan.steps_per_epoch as u64 {
                epoch = self.epoch_rows(step / plan.steps_per_epoch as u64);
            }
            let at = (step % plan.steps_per_epoch as u64) as usize * plan.rows_per_step;
            let take = at..(at + plan.rows_per_step).min(epoch.1.len());
            let t0 = Instant::now();
            let st: StepStats = trainer.step(&epoch.1[take.clone()], s.batch_size, &epoch.2[take])?;
            let step_s = t0.elapsed().as_secs_f64();
            (p.train_secs, p.tokens, p.last_loss) = (p.train_secs + step_s, p.tokens + st.tokens, st.loss);
            if p.first_loss.is_nan() {
                p.first_loss = st.loss;
            }
            let (done, tps) = (step + 1, p.tokens as f64 / p.train_secs);
            metrics.log(serde_json::json!({
                "step": done, "epoch": plan.epoch_of(done), "loss": st.loss, "lr": st.lr,
                "grad_norm": st.grad_norm, "tokens": st.tokens, "y_tokens": st.y_tokens,
                "step_s": step_s, "tokens_per_s": tps,
            }))?;
            let (epoch_now, loss, lr) = (plan.epoch_of(done), st.loss, st.lr);
            bar.set_message(format!("epoch {epoch_now:.2} loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
            bar.set_position(done);

            let epoch_end = done % plan.steps_per_epoch as u64 == 0 || done == total;
            let eval_due = (s.eval_every > 0 && done % s.eval_every as u64 == 0) || epoch_end;
            let mut improved = false;
            if eval_due && let Some(t) = self.evaluate(trainer)? {
                metrics.log_eval(done, &t)?;
                bar.println(format!(
                    "step {done}: eval NLL {:.4}, perplexity {:.3}",
                    t.nll_per_token(),
                    t.perplexity()
                ));
                if best_eval.is_none_or(|(b, _)| t.nll_per_token() < b) {
                    best_eval = Some((t.nll_per_token(), done));
                    improved = true;
                }
                p.eval_after = Some(t);
            }
            let interrupted = self.stop_after.is_some() && done == end && done < total;
            let save_due = s.save_every > 0 && done % s.save_every as u64 == 0;
            if improved || interrupted || done == total || save_due {
                checkpoint::save(&s.output_dir, &trainer.export_state(), s, best_eval)?;
            }
            p.stopped_early = interrupted;
        }
        bar.finish_and_clear();
        Ok(p)
    }

    /// Epoch `e`'s rows and their labels, in its visiting order.
    fn epoch_rows(&self, e: u64) -> (u64, Vec<&Example>, Vec<&str>) {
        let d = self.train_set;
        let order = epoch_order(d.examples.len(), self.s.seed, e);
        (e, order.iter().map(|&i| &d.examples[i]).collect(), order.iter().map(|&i| d.sources[i].as_str()).collect())
    }
}
