//! `--data` → the files to read and how: a data file, a dataset folder, or a hub dataset id `org/name` found in
//! the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub) and downloaded into it
//! when online. Folders and hub datasets are grouped into splits by [`super::splits`]; `--split` picks one.
use super::splits::{DATA_EXTENSIONS, choose, describe, group_splits};
use crate::formats::resolve::{hub_cache_dir, is_offline, looks_like_hub_id};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `--data-format`: how to read data files. `auto` goes by extension (.parquet, .csv, .tsv; anything else is
/// JSON: JSONL, or one JSON array when the text starts with `[`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    #[default]
    Auto,
    Jsonl,
    Json,
    Parquet,
    Csv,
    Tsv,
}

/// The reader of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// JSONL or a JSON array (told apart by the text).
    Json,
    Parquet,
    /// CSV or TSV with this delimiter.
    Delimited(u8),
}

impl DataFormat {
    /// The reader for `path` under this setting.
    pub fn reader(self, path: &Path) -> Reader {
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
        match self {
            DataFormat::Jsonl | DataFormat::Json => Reader::Json,
            DataFormat::Parquet => Reader::Parquet,
            DataFormat::Csv => Reader::Delimited(b','),
            DataFormat::Tsv => Reader::Delimited(b'\t'),
            DataFormat::Auto => match ext.as_deref() {
                Some("parquet") => Reader::Parquet,
                Some("csv") => Reader::Delimited(b','),
                Some("tsv") => Reader::Delimited(b'\t'),
                _ => Reader::Json,
            },
        }
    }
}

/// Splits read when `--split` is not given: training (and `inspect`) reads `train` …
pub const TRAIN_SPLITS: &[&str] = &["train"];
/// … and evaluation and scoring the first of these that the dataset has.
pub const EVAL_SPLITS: &[&str] = &["validation", "valid", "val", "dev", "test"];

/// Files to read, in order, as one dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSource {
    /// What the user asked for, for logs: the path, or `spec, split NAME`.
    pub label: String,
    pub files: Vec<PathBuf>,
    pub format: DataFormat,
}

impl From<&Path> for DataSource {
    /// One local file, its format told by its extension.
    fn from(path: &Path) -> Self {
        DataSource { label: path.display().to_string(), files: vec![path.to_path_buf()], format: DataFormat::Auto }
    }
}

impl From<&PathBuf> for DataSource {
    fn from(path: &PathBuf) -> Self {
        path.as_path().into()
    }
}

impl From<&DataSource> for DataSource {
    fn from(s: &DataSource) -> Self {
        s.clone()
    }
}

/// Resolves a `--data` argument: a file (then `split` must be `None`), a dataset folder or a hub dataset id,
/// whose split `split` (else the first of `defaults` present) is read.
pub fn resolve_data(spec: &str, format: DataFormat, split: Option<&str>, defaults: &[&str]) -> Result<DataSource> {
    let path = Path::new(spec);
    if path.is_file() {
        if let Some(s) = split {
            bail!("{spec}: --split {s} applies to a dataset folder or hub dataset, not to one file; drop --split");
        }
        return Ok(DataSource { format, ..path.into() });
    }
    if path.is_dir() {
        return from_folder(spec, path, format, split, defaults);
    }
    if path.exists() {
        // A FIFO or a device: refused here (with what it is) rather than blocked on later.
        crate::input::open_regular(path, "data file")?;
    }
    // `data/train.jsonl` that is not there is a missing file, not a hub id.
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    if !looks_like_hub_id(spec) || ext.is_some_and(|e| DATA_EXTENSIONS.contains(&e.as_str())) {
        bail!("{spec}: no such file or folder (pass a data file, a dataset folder, or a hub dataset id org/name)");
    }
    let cache = hub_cache_dir();
    if let Some(snapshot) = cached_snapshot(spec, &cache) {
        // A snapshot may hold only part of the dataset (`huggingface-cli download --include ...`).
        return from_folder(spec, &snapshot, format, split, defaults).map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\n(the cache holds the files downloaded so far; `huggingface-cli download --repo-type dataset \
                 {spec}` fetches the rest)"
            )
        });
    }
    let how = format!(
        "get it with `huggingface-cli download --repo-type dataset {spec}` (or `hf download --repo-type dataset \
         {spec}`) on a connected machine and copy the cache folder {}, or pass local data files to --data",
        cache.display()
    );
    if is_offline() {
        bail!("{spec}: dataset not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set; {how}", cache.display());
    }
    download(spec, &cache, format, split, defaults).map_err(|e| {
        anyhow::anyhow!(
            "{spec}: dataset not in the Hugging Face cache at {} and downloading failed ({e:#}); {how}",
            cache.display()
        )
    })
}

/// The snapshot folder `refs/main` points to in the cache, if it is there.
fn cached_snapshot(id: &str, cache: &Path) -> Option<PathBuf> {
    let repo = cache.join(format!("datasets--{}", id.replace('/', "--")));
    let rev = std::fs::read_to_string(repo.join("refs").join("main")).ok()?;
    let dir = repo.join("snapshots").join(rev.trim());
    dir.is_dir().then_some(dir)
}

/// The chosen split of the data files under `dir` (a local folder or a hub snapshot).
fn from_folder(
    spec: &str,
    dir: &Path,
    format: DataFormat,
    split: Option<&str>,
    defaults: &[&str],
) -> Result<DataSource> {
    let mut rel = Vec::new();
    list_files(dir, "", &mut rel)?;
    let groups = group_splits(&rel);
    if groups.is_empty() {
        bail!("{spec} ({}): {}", dir.display(), describe(&groups));
    }
    let (name, files) =
        choose(&groups, split, defaults).map_err(|e| anyhow::anyhow!("{spec} ({}): {e}", dir.display()))?;
    Ok(DataSource {
        label: format!("{spec}, split {name}"),
        files: files.iter().map(|f| dir.join(f)).collect(),
        format,
    })
}

/// Every file below `dir` (symlinks followed, as the hub cache links snapshots to blobs), as paths relative to
/// the top folder, `/`-separated.
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: cannot list folder: {e}", dir.display()))?;
    for e in entries {
        let e = e.map_err(|e| anyhow::anyhow!("{}: cannot list folder: {e}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let path = e.path();
        if path.is_dir() {
            list_files(&path, &rel, out)?;
        } else {
            // Not only regular files: a FIFO or a broken link named like data is refused when read, not skipped.
            out.push(rel);
        }
    }
    Ok(())
}

/// Lists the hub dataset's files, then downloads the chosen split into the cache.
fn download(id: &str, cache: &Path, format: DataFormat, split: Option<&str>, defaults: &[&str]) -> Result<DataSource> {
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf()))
        .with_progress(true)
        .build()?;
    let repo = api.dataset(id.to_string());
    let names: Vec<String> = repo.info()?.siblings.into_iter().map(|s| s.rfilename).collect();
    let groups = group_splits(&names);
    let (name, files) = choose(&groups, split, defaults)?;
    let files = files.iter().map(|f| repo.get(f)).collect::<Result<Vec<_>, _>>()?;
    Ok(DataSource { label: format!("{id}, split {name}"), files, format })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_extension_unless_forced() {
        assert_eq!(DataFormat::Auto.reader(Path::new("a/b.PARQUET")), Reader::Parquet);
        assert_eq!(DataFormat::Auto.reader(Path::new("b.tsv")), Reader::Delimited(b'\t'));
        assert_eq!(DataFormat::Auto.reader(Path::new("b.txt")), Reader::Json);
        assert_eq!(DataFormat::Csv.reader(Path::new("b.jsonl")), Reader::Delimited(b','));
    }

    #[test]
    fn a_folder_is_read_by_split_and_a_file_refuses_split() {
        let tmp = tempfile::tempdir().unwrap();
        for f in ["train.jsonl", "test.jsonl"] {
            std::fs::write(tmp.path().join(f), "{}").unwrap();
        }
        let spec = tmp.path().to_str().unwrap();
        let s = resolve_data(spec, DataFormat::Auto, None, EVAL_SPLITS).unwrap();
        assert_eq!(s.files, [tmp.path().join("test.jsonl")]);
        assert!(s.label.ends_with(", split test"), "{}", s.label);
        let file = tmp.path().join("train.jsonl");
        let e = resolve_data(file.to_str().unwrap(), DataFormat::Auto, Some("x"), &[]).unwrap_err().to_string();
        assert!(e.contains("drop --split"), "{e}");
        let e = resolve_data("data/missing.jsonl", DataFormat::Auto, None, &[]).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
    }
}
