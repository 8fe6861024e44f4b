//! The data files of a dataset folder (a local folder or a Hugging Face hub snapshot) grouped into splits by the
//! hub's naming conventions, and the choice of one split.
//!
//! A file's split is the name of its folder when that is a split word (`data/train/0000.parquet`,
//! `en/test/part-1.jsonl`), else the start of its file name up to the first `-` or `.` (`train.jsonl`,
//! `data/train-00000-of-00002.parquet`, `train_sft-00001-of-00003.parquet`). Folders above the split other than
//! `data` name a configuration: its splits are called `config/split` (`en/train`), and `--split train` picks
//! `en/train` when only one configuration has a train split. When no split name starts with a split word (one
//! `alpaca_data.json`, say), every file is `train`, as on the hub. The shards of a split are read in the order of
//! their paths (`-00000-of-00002` before `-00001-of-00002`).
use anyhow::{Result, bail};
use std::collections::BTreeMap;

/// Extensions of data files; everything else in a dataset folder (README.md, scripts, images) is not data.
pub const DATA_EXTENSIONS: &[&str] = &["parquet", "jsonl", "json", "csv", "tsv"];

/// JSON files `datasets` writes beside the data, never rows.
const METADATA_FILES: &[&str] = &["dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json"];

/// Words the hub reads as split names (its `datasets.data_files` keywords).
const SPLIT_WORDS: &[&str] =
    &["train", "training", "validation", "valid", "val", "dev", "test", "testing", "eval", "evaluation"];

/// Whether `rel` (a path relative to the dataset folder, `/`-separated) is a data file.
pub fn is_data_file(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    !rel.split('/').any(|c| c.starts_with('.'))
        && ext.is_some_and(|e| DATA_EXTENSIONS.contains(&e.as_str()))
        && !METADATA_FILES.contains(&name)
}

/// The split of one data file: `(configuration, split)`.
fn split_of(rel: &str) -> (String, String) {
    let mut dirs: Vec<&str> = rel.split('/').collect();
    let name = dirs.pop().unwrap_or_default();
    let word = name.split(['-', '.']).next().unwrap_or_default();
    let split = match dirs.last() {
        Some(d) if SPLIT_WORDS.contains(d) || word.is_empty() || word.bytes().all(|b| b.is_ascii_digit()) => {
            dirs.pop().unwrap_or_default()
        }
        _ => word,
    };
    let config: Vec<&str> = dirs.into_iter().skip_while(|d| *d == "data").collect();
    (config.join("/"), split.to_string())
}

/// The data files among `files` (relative paths) grouped by split name (`split` or `config/split`), each
/// split's files in path order.
pub fn group_splits(files: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut data: Vec<&String> = files.iter().filter(|f| is_data_file(f)).collect();
    data.sort();
    let named: Vec<(String, &String)> = data
        .into_iter()
        .map(|f| {
            let (config, split) = split_of(f);
            (if config.is_empty() { split } else { format!("{config}/{split}") }, f)
        })
        .collect();
    let any_split_word =
        named.iter().any(|(n, _)| SPLIT_WORDS.iter().any(|w| n.rsplit('/').next().unwrap_or(n).starts_with(w)));
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, f) in named {
        out.entry(if any_split_word { name } else { "train".into() }).or_default().push(f.clone());
    }
    out
}

/// One line per split: its name and files (the first few), for errors.
pub fn describe(groups: &BTreeMap<String, Vec<String>>) -> String {
    if groups.is_empty() {
        return format!("no data files (none ending in .{})", DATA_EXTENSIONS.join(", ."));
    }
    let line = |(name, files): (&String, &Vec<String>)| {
        let more = if files.len() > 3 { format!(", … {} files in all", files.len()) } else { String::new() };
        format!("  {name}: {}{more}", files.iter().take(3).cloned().collect::<Vec<_>>().join(", "))
    };
    format!("splits present:\n{}", groups.iter().map(line).collect::<Vec<_>>().join("\n"))
}

/// The shard numbering of a file name `…-NNNNN-of-TTTTT…`: (the name before the number, number, total).
fn shard_of(rel: &str) -> Option<(&str, usize, usize)> {
    let (before, after) = rel.rsplit_once("-of-")?;
    let (stem, index) = before.rsplit_once('-')?;
    let total: String = after.chars().take_while(char::is_ascii_digit).collect();
    Some((stem, index.parse().ok()?, total.parse().ok()?))
}

/// Refuses a split whose shards (`train-00000-of-00003.parquet`, …) are not all there: reading the ones present
/// would train or score on part of the data without a word.
fn check_shards(split: &str, files: &[String]) -> Result<()> {
    let mut sets: BTreeMap<(&str, usize), Vec<usize>> = BTreeMap::new();
    for (stem, index, total) in files.iter().filter_map(|f| shard_of(f)) {
        sets.entry((stem, total)).or_default().push(index);
    }
    for ((stem, total), present) in sets {
        // A total far beyond the files is no shard numbering; shards count from 0 (the hub's way) or from 1.
        if total > 16 * files.len().max(64) {
            continue;
        }
        let first = usize::from(present.contains(&total) && !present.contains(&0));
        let missing: Vec<String> = (first..total + first)
            .filter(|i| !present.contains(i))
            .map(|i| format!("{stem}-{i:05}-of-{total:05}"))
            .collect();
        if !missing.is_empty() {
            bail!(
                "split \"{split}\" has {} of its {total} shards: missing {}; download the rest (or pass the files \
                 you want as --data)",
                total - missing.len(),
                missing.join(", ")
            );
        }
    }
    Ok(())
}

/// The split to read: `requested` (`--split`), else the first of `defaults` that is present. A bare split name
/// also matches `config/split` when exactly one configuration has it; its shards must all be there. Returns
/// (split name, files).
pub fn choose<'a>(
    groups: &'a BTreeMap<String, Vec<String>>,
    requested: Option<&str>,
    defaults: &[&str],
) -> Result<(&'a str, &'a [String])> {
    let (split, files) = choose_split(groups, requested, defaults)?;
    check_shards(split, files)?;
    Ok((split, files))
}

fn choose_split<'a>(
    groups: &'a BTreeMap<String, Vec<String>>,
    requested: Option<&str>,
    defaults: &[&str],
) -> Result<(&'a str, &'a [String])> {
    let find = |want: &str| -> Result<Option<(&'a str, &'a [String])>> {
        if let Some((k, v)) = groups.get_key_value(want) {
            return Ok(Some((k.as_str(), v.as_slice())));
        }
        let hits: Vec<_> = groups.iter().filter(|(k, _)| k.rsplit_once('/').is_some_and(|(_, s)| s == want)).collect();
        match hits.as_slice() {
            [] => Ok(None),
            [(k, v)] => Ok(Some((k.as_str(), v.as_slice()))),
            _ => bail!(
                "split \"{want}\" is in several configurations ({}); pass --split with the one you want",
                hits.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    };
    match requested {
        Some(want) => find(want)?
            .ok_or_else(|| anyhow::anyhow!("no split \"{want}\"; pass --split with one of the {}", describe(groups))),
        None => {
            for d in defaults {
                if let Some(hit) = find(d)? {
                    return Ok(hit);
                }
            }
            bail!(
                "no split \"{}\" (the default here); pass --split with one of the {}",
                defaults.join("\", \""),
                describe(groups)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(files: &[&str]) -> BTreeMap<String, Vec<String>> {
        group_splits(&files.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn hub_layouts_group_into_splits() {
        let g = groups(&[
            "README.md",
            ".gitattributes",
            "data/train-00001-of-00002.parquet",
            "data/train-00000-of-00002.parquet",
            "data/test-00000-of-00001.parquet",
            "validation.jsonl",
            "extra/dev/0000.parquet",
            "dataset_info.json",
        ]);
        let names: Vec<&str> = g.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["extra/dev", "test", "train", "validation"]);
        assert_eq!(g["train"], ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]);
        assert_eq!(choose(&g, None, &["validation", "test"]).unwrap().0, "validation");
        assert_eq!(choose(&g, Some("dev"), &[]).unwrap().0, "extra/dev");
        let e = choose(&g, Some("nope"), &[]).unwrap_err().to_string();
        assert!(e.contains("no split \"nope\"") && e.contains("data/test-00000-of-00001.parquet"), "{e}");
    }

    #[test]
    fn configurations_and_files_without_split_words() {
        let g = groups(&["en/train-0.parquet", "fr/train-0.parquet", "fr/test-0.parquet"]);
        assert_eq!(choose(&g, Some("test"), &[]).unwrap().0, "fr/test");
        assert!(choose(&g, Some("train"), &[]).unwrap_err().to_string().contains("en/train, fr/train"));
        let g = groups(&["alpaca_data.json"]);
        assert_eq!(g["train"], ["alpaca_data.json"]);
        let g = groups(&["data/train_sft-00000-of-00001.parquet", "data/test_sft-00000-of-00001.parquet"]);
        assert!(g.contains_key("train_sft") && g.contains_key("test_sft"));
    }

    #[test]
    fn a_split_missing_shards_is_refused_naming_them() {
        let g = groups(&["data/train-00000-of-00003.parquet", "data/train-00002-of-00003-a1b2.parquet"]);
        let e = choose(&g, Some("train"), &[]).unwrap_err().to_string();
        assert!(e.contains("2 of its 3 shards") && e.contains("missing data/train-00001-of-00003"), "{e}");
        let g = groups(&["train-00000-of-00002.jsonl", "train-00001-of-00002.jsonl", "test-0.jsonl"]);
        assert_eq!(choose(&g, None, &["train"]).unwrap().1.len(), 2);
        // numbered from 1, whole; and a number after -of- far beyond the files is no shard set
        let g = groups(&["train-1-of-2.jsonl", "train-2-of-2.jsonl"]);
        assert_eq!(choose(&g, None, &["train"]).unwrap().1.len(), 2);
        let g = groups(&["train-0-of-300000000.jsonl"]);
        assert_eq!(choose(&g, None, &["train"]).unwrap().1.len(), 1);
    }
}
