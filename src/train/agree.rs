//! Before a data-parallel run starts, its ranks check that each of them loaded what it needs and that they were
//! given the same job. Ranks that train on other settings, data or weights would otherwise compute a wrong run
//! with exit 0, and ranks whose steps differ (another --max-steps, --eval-every, --zero1, …) would call other
//! collectives and wait for each other forever.
//!
//! Every rank makes a [`Job`] — the settings and run options that change the numbers or the collectives (paths
//! left out: they may differ between machines; what they hold is compared instead), the SHA-256 of the data and
//! of the rows read from it, the model's configuration, a fingerprint of its weights and of a resumed state — or
//! says why it could not load. [`agree`] gathers them on every rank (one collective, the run's first) and each
//! rank draws the same verdict from them: every rank goes on, or every rank returns the same
//! [`JobFailed`] naming the ranks that failed or differ, and in what. No rank waits for another, and rank 0 has
//! not touched the output folder yet.
use super::settings::TrainSettings;
use super::trainer::TrainState;
use crate::data::dataset::Dataset;
use crate::distributed::{Collectives, JobFailed};
use crate::formats::weights::Weights;
use crate::network::config::Config;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Settings that name files: they may differ between machines. What the files hold is compared instead (the
/// data's SHA-256 and rows, the model's configuration and weights); the output folder is rank 0's alone.
const PATHS: [&str; 6] = ["model", "data", "eval_data", "split", "eval_split", "output_dir"];

/// Weights (or a resumed state) of up to this many bytes are hashed whole: the tests' fixtures and small
/// models, where reading them once more costs less than loading them. Larger ones are sampled ([`hash_sampled`]).
const WHOLE_BYTES: usize = 64 << 20;
/// Windows hashed per tensor of a sampled checkpoint, and their size in bytes.
const WINDOWS: usize = 16;
const WINDOW: usize = 256;

/// One rank's account of its job: what must be the same on every rank for the ranks to compute one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    version: String,
    /// The settings and run options that change the numbers or the collectives, by name.
    settings: BTreeMap<String, Value>,
    /// SHA-256 of the training data files, and of the eval data files.
    data: String,
    eval_data: Option<String>,
    /// SHA-256 of the rows as this rank reads them: token ids and target ranges, training then eval.
    rows: String,
    /// The model's configuration, a field a line.
    config: String,
    /// SHA-256 of the weights' tensor table (names, dtypes, shapes) and of their bytes ([`hash_sampled`]).
    tensors: String,
    values: String,
    /// A resumed run's trainable values and moments, hashed as the weights.
    state: Option<String>,
}

impl Job {
    /// `options`: the run options (not saved with the settings) that change the numbers or the collectives.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        s: &TrainSettings,
        options: &[(&str, Value)],
        (data, eval_data): (String, Option<String>),
        (train, eval): (&Dataset, Option<&Dataset>),
        config: &Config,
        weights: &Weights,
        state: Option<&TrainState>,
    ) -> Result<Job> {
        let Value::Object(all) = serde_json::to_value(s)? else { unreachable!("settings serialize as a map") };
        let mut settings: BTreeMap<String, Value> = all.into_iter().filter(|(k, _)| !PATHS.contains(&&**k)).collect();
        settings.extend(options.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let (tensors, values) = hash_weights(weights)?;
        Ok(Job {
            version: env!("CARGO_PKG_VERSION").into(),
            settings,
            data,
            eval_data,
            rows: hash_rows(train, eval),
            config: format!("{config:#?}"),
            tensors,
            values,
            state: state.map(hash_state),
        })
    }
}

/// `loaded` on every rank of `world` if every rank loaded (`Ok`) and all were given the same job (`job` of
/// their `T`); else [`JobFailed`] on every rank, naming the ranks that failed or differ. One collective,
/// which every rank calls once, loaded or not. One process: `loaded` as it is.
pub fn agree<T>(world: &dyn Collectives, loaded: Result<T>, job: impl Fn(&T) -> &Job) -> Result<T> {
    if world.size() == 1 {
        return loaded;
    }
    let mine: std::result::Result<&Job, String> = loaded.as_ref().map(&job).map_err(|e| format!("{e:#}"));
    let bytes = serde_json::to_vec(&mine).expect("a job serializes");
    let all: Vec<std::result::Result<Job, String>> = world
        .gather_bytes(&bytes)
        .iter()
        .map(|b| {
            serde_json::from_slice(b).unwrap_or_else(|e| {
                Err(format!("its account of the job cannot be read ({e}): does it run another condlm?"))
            })
        })
        .collect();
    match verdict(&all) {
        Some(report) => Err(JobFailed(report).into()),
        None => loaded,
    }
}

/// What is wrong with the ranks' jobs, if anything: the ranks that failed to load (each with its error), else
/// how each rank's job differs from rank 0's. The same text on every rank.
fn verdict(all: &[std::result::Result<Job, String>]) -> Option<String> {
    let size = all.len();
    let failed: Vec<String> = all
        .iter()
        .enumerate()
        .filter_map(|(r, j)| j.as_ref().err().map(|e| format!("error (rank {r} of {size}): {e}")))
        .collect();
    if !failed.is_empty() {
        return Some(format!("{}\nno rank started training; nothing was written", failed.join("\n")));
    }
    let jobs: Vec<&Job> = all.iter().flatten().collect();
    let differences: Vec<String> = jobs.iter().enumerate().skip(1).flat_map(|(r, j)| differ(r, j, jobs[0])).collect();
    (!differences.is_empty()).then(|| {
        format!(
            "error: the ranks were not given the same job (every rank must run the same settings on the same data \
             and model; paths may differ):\n  {}\nno rank started training; nothing was written",
            differences.join("\n  ")
        )
    })
}

/// How rank `r`'s job differs from rank 0's, a line each.
fn differ(r: usize, j: &Job, zero: &Job) -> Vec<String> {
    let mut d = vec![];
    if j.version != zero.version {
        d.push(format!("rank {r} runs condlm {} vs {} on rank 0", j.version, zero.version));
    }
    let keys: std::collections::BTreeSet<&String> = j.settings.keys().chain(zero.settings.keys()).collect();
    let show = |v: Option<&Value>| match v {
        None | Some(Value::Null) => "unset".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let settings: Vec<String> = keys
        .into_iter()
        .filter(|k| j.settings.get(*k) != zero.settings.get(*k))
        .map(|k| format!("{k} {} vs {}", show(j.settings.get(k)), show(zero.settings.get(k))))
        .collect();
    if !settings.is_empty() {
        d.push(format!("rank {r} has other settings than rank 0: {}", settings.join(", ")));
    }
    if j.data != zero.data {
        d.push(format!("rank {r}'s training data differs from rank 0's (SHA-256 {} vs {})", j.data, zero.data));
    }
    if j.eval_data != zero.eval_data {
        let sha = |e: &Option<String>| e.clone().unwrap_or_else(|| "none".into());
        d.push(format!(
            "rank {r}'s eval data differs from rank 0's (SHA-256 {} vs {})",
            sha(&j.eval_data),
            sha(&zero.eval_data)
        ));
    }
    // Other data or settings make other rows anyway; the same data read into other rows is the tokenizer's doing.
    if j.rows != zero.rows && d.is_empty() {
        d.push(format!(
            "rank {r} reads other rows from the same data than rank 0 (token ids or targets differ: another \
             tokenizer or chat template?)"
        ));
    }
    if j.config != zero.config {
        let (a, b): (Vec<&str>, Vec<&str>) = (j.config.lines().collect(), zero.config.lines().collect());
        let fields: Vec<String> = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x != y)
            .take(4)
            .map(|(x, y)| format!("{} vs {}", x.trim().trim_end_matches(','), y.trim().trim_end_matches(',')))
            .collect();
        d.push(format!("rank {r}'s model has another configuration than rank 0's: {}", fields.join("; ")));
    } else if j.tensors != zero.tensors {
        d.push(format!("rank {r}'s model weights have other tensors than rank 0's (names, dtypes or shapes)"));
    } else if j.values != zero.values {
        d.push(format!(
            "rank {r}'s model weights differ from rank 0's (another checkpoint with the same tensors: SHA-256 {} vs \
             {})",
            j.values, zero.values
        ));
    }
    if j.state != zero.state && j.settings.get("resumed_at_step") == zero.settings.get("resumed_at_step") {
        d.push(format!("rank {r} resumes another checkpoint than rank 0 (its trainable values or moments differ)"));
    }
    d
}

/// SHA-256 of the rows: each one's token ids and target ranges, the training rows then the eval rows.
fn hash_rows(train: &Dataset, eval: Option<&Dataset>) -> String {
    let mut h = Sha256::new();
    for set in std::iter::once(train).chain(eval) {
        h.update((set.examples.len() as u64).to_le_bytes());
        for e in &set.examples {
            h.update((e.ids.len() as u64).to_le_bytes());
            e.ids.iter().for_each(|id| h.update(id.to_le_bytes()));
            for t in &e.targets {
                h.update((t.start as u64).to_le_bytes());
                h.update((t.end as u64).to_le_bytes());
            }
        }
    }
    format!("{:x}", h.finalize())
}

/// SHA-256 of the weights' tensor table (name, dtype, shape of each tensor, in name order) and of their bytes as
/// stored: every byte for a checkpoint of up to [`WHOLE_BYTES`], else each tensor's length and [`WINDOWS`] windows
/// of it ([`hash_sampled`]).
///
/// Why sampled: hashing every byte of a large model would read the whole checkpoint (GBs) once more before the
/// run starts. Weights that differ between ranks are in practice another checkpoint — another fine-tune, revision,
/// quantization or model — which differs in nearly every value, so a few windows per tensor tell it apart, and
/// the table catches another architecture or dtype. Not caught: a few bytes of a large file altered in place.
fn hash_weights(weights: &Weights) -> Result<(String, String)> {
    let mut tensors: Vec<(String, String, Vec<usize>, &[u8])> = match weights {
        Weights::Safetensors { files, .. } => files
            .names()
            .filter_map(|n| files.raw(n).map(|(ty, shape, b)| (n.to_string(), format!("{ty:?}"), shape.to_vec(), b)))
            .collect(),
        Weights::Gguf { file, .. } => file
            .tensors
            .iter()
            .map(|t| Ok((t.name.clone(), t.ty.name().to_string(), t.shape(), file.tensor_bytes(t)?)))
            .collect::<Result<_>>()?,
    };
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let whole = tensors.iter().map(|t| t.3.len()).sum::<usize>() <= WHOLE_BYTES;
    let (mut table, mut values) = (Sha256::new(), Sha256::new());
    for (name, ty, shape, bytes) in &tensors {
        table.update(format!("{name} {ty} {shape:?}\n"));
        hash_sampled(&mut values, bytes, whole);
    }
    Ok((format!("{:x}", table.finalize()), format!("{:x}", values.finalize())))
}

/// A resumed state's trainable values and moments (with their names and the step), hashed as the weights.
fn hash_state(state: &TrainState) -> String {
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let total: usize = state.tensors.iter().map(|t| 12 * t.1.len()).sum();
    let mut h = Sha256::new();
    h.update(state.step.to_le_bytes());
    for (name, values, moments) in &state.tensors {
        h.update(format!("{name}\n"));
        for v in [values, &moments.m, &moments.v] {
            // Sampled, only the windows are converted.
            match total <= WHOLE_BYTES {
                true => hash_sampled(&mut h, &bytes(v), true),
                false => {
                    h.update((v.len() as u64).to_le_bytes());
                    let n = WINDOW / 4;
                    for at in windows(v.len(), n) {
                        h.update(bytes(&v[at..(at + n).min(v.len())]));
                    }
                }
            }
        }
    }
    format!("{:x}", h.finalize())
}

/// Adds `bytes` to `h`: its length, then every byte (`whole`, or a tensor no longer than the windows), else
/// [`WINDOWS`] windows of [`WINDOW`] bytes spread evenly over it, the first at its start and the last at its end.
fn hash_sampled(h: &mut Sha256, bytes: &[u8], whole: bool) {
    h.update((bytes.len() as u64).to_le_bytes());
    if whole || bytes.len() <= WINDOWS * WINDOW {
        h.update(bytes);
        return;
    }
    for at in windows(bytes.len(), WINDOW) {
        h.update(&bytes[at..at + WINDOW]);
    }
}

/// Starts of [`WINDOWS`] windows of `width` spread evenly over `len` items (fewer, overlapping, when short).
fn windows(len: usize, width: usize) -> impl Iterator<Item = usize> {
    let last = len.saturating_sub(width);
    (0..WINDOWS).map(move |i| last * i / (WINDOWS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        let settings = [("lr", serde_json::json!(1e-3)), ("max_steps", serde_json::json!(10)), ("seed", 42.into())];
        Job {
            version: "0.1.0".into(),
            settings: settings.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            data: "aaaa".into(),
            eval_data: None,
            rows: "rows".into(),
            config: "Config {\n    hidden_size: 64,\n    num_layers: 2,\n}".into(),
            tensors: "table".into(),
            values: "values".into(),
            state: None,
        }
    }

    #[test]
    fn the_same_job_on_every_rank_goes_on() {
        assert_eq!(verdict(&[Ok(job()), Ok(job()), Ok(job())]), None);
    }

    #[test]
    fn a_rank_that_failed_to_load_is_named_with_its_error() {
        let v = verdict(&[Ok(job()), Err("data.jsonl: no such file".into())]).unwrap();
        assert!(v.contains("error (rank 1 of 2): data.jsonl: no such file"), "{v}");
        assert!(v.contains("nothing was written"), "{v}");
    }

    #[test]
    fn each_difference_names_the_rank_and_what_differs() {
        let mut other = job();
        other.settings.insert("lr".into(), serde_json::json!(5e-2));
        other.settings.insert("max_steps".into(), Value::Null);
        other.data = "bbbb".into();
        other.rows = "other rows".into();
        other.config = "Config {\n    hidden_size: 64,\n    num_layers: 4,\n}".into();
        let v = verdict(&[Ok(job()), Ok(job()), Ok(other)]).unwrap();
        assert!(v.contains("rank 2 has other settings than rank 0: lr 0.05 vs 0.001, max_steps unset vs 10"), "{v}");
        assert!(v.contains("rank 2's training data differs from rank 0's (SHA-256 bbbb vs aaaa)"), "{v}");
        assert!(v.contains("rank 2's model has another configuration than rank 0's: num_layers: 4 vs num_layers: 2"));
        assert!(!v.contains("rank 1") && !v.contains("other rows"), "{v}");
    }

    #[test]
    fn the_same_data_read_into_other_rows_and_other_weights_are_named() {
        let mut other = job();
        other.rows = "other".into();
        other.values = "other values".into();
        let v = verdict(&[Ok(job()), Ok(other)]).unwrap();
        assert!(v.contains("rank 1 reads other rows from the same data than rank 0"), "{v}");
        assert!(v.contains("rank 1's model weights differ from rank 0's"), "{v}");
    }

    #[test]
    fn sampled_hashes_see_a_changed_window_and_the_length() {
        let a: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let hash = |b: &[u8], whole| {
            let mut h = Sha256::new();
            hash_sampled(&mut h, b, whole);
            format!("{:x}", h.finalize())
        };
        let mut b = a.clone();
        b[a.len() - 1] ^= 1; // in the last window
        assert_ne!(hash(&a, false), hash(&b, false));
        assert_ne!(hash(&a, false), hash(&a[..a.len() - 1], false));
        let mut c = a.clone();
        c[50_000] ^= 1; // between windows: only the whole hash sees it
        assert_eq!(hash(&a, false), hash(&c, false));
        assert_ne!(hash(&a, true), hash(&c, true));
        assert_eq!(windows(1000, 256).last(), Some(744));
        assert_eq!(windows(1000, 256).next(), Some(0));
    }
}
