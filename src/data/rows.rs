//! Plain JSON objects with string fields (the prompts of `generate --data`, the rows of `metrics`), with errors
//! that name file and line (or row). Training, evaluation and scoring rows go through [`super::records`] instead.
use super::records::json_row_texts;
use super::source::{DataSource, Reader};
use super::{csv_rows, parquet_rows};
use crate::input;
use anyhow::{Context, Result, bail};
use std::path::Path;

/// Every row of every file of `data` as (source, JSON object), every column kept: the lines of JSONL files
/// (`file:line`, see [`read_objects`]) and the rows of Parquet, CSV and TSV files (named as
/// [`super::parquet_rows`] and [`super::csv_rows`] name them). A file with no rows is an error.
pub fn read_source_objects(data: &DataSource, shape: &str) -> Result<Vec<(String, JsonObject)>> {
    let mut out = Vec::new();
    for path in &data.files {
        let before = out.len();
        let mut push = |source: String, text: &str| -> Result<()> {
            match serde_json::from_str(text) {
                Ok(serde_json::Value::Object(obj)) => out.push((source, obj)),
                _ => bail!("{source}: expected a row like {shape}"),
            }
            Ok(())
        };
        match data.format.reader(path) {
            Reader::Json => {
                let rows = read_objects(path, shape)?;
                out.extend(rows.into_iter().map(|(line, obj)| (format!("{}:{line}", path.display()), obj)));
            }
            Reader::Parquet => parquet_rows::for_each_row(path, None, &mut push)?,
            Reader::Delimited(d) => csv_rows::for_each_row(path, d, &mut push)?,
        }
        if out.len() == before {
            bail!("{}: no rows", path.display());
        }
    }
    Ok(out)
}

/// Every row of a JSONL file or JSON array as (1-based line, JSON object) ([`super::records::json_row_texts`]).
/// `shape` shows the expected object in the error for a row that is not one. A file with no rows is an error.
pub fn read_objects(path: &Path, shape: &str) -> Result<Vec<(usize, JsonObject)>> {
    parse_objects(&input::read_to_string(path, "data file")?, path, shape)
}

/// [`read_objects`] on the text of the file at `path`.
pub fn parse_objects(text: &str, path: &Path, shape: &str) -> Result<Vec<(usize, JsonObject)>> {
    let name = path.display().to_string();
    let mut out = Vec::new();
    for t in json_row_texts(text, &name)? {
        let v: serde_json::Value =
            serde_json::from_str(t.text).with_context(|| format!("{}: not valid JSON", t.source(&name)))?;
        let serde_json::Value::Object(obj) = v else {
            bail!("{}: expected a JSON object like {shape}", t.source(&name));
        };
        out.push((t.line, obj));
    }
    if out.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(out)
}

pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// The string field `name` of the row at `path:line`, or an error that names the file, the line and the fields
/// the row has.
pub fn string_field(obj: &JsonObject, name: &str, path: &Path, line: usize) -> Result<String> {
    field_of(obj, name, &format!("{}:{line}", path.display()))
}

/// The string field `name` of the row `source` names, or an error that names it and the fields the row has.
pub fn field_of(obj: &JsonObject, name: &str, source: &str) -> Result<String> {
    match obj.get(name) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Null) => {
            bail!("{source}: field \"{name}\" must be a string, got null (a missing value)")
        }
        Some(_) => bail!("{source}: field \"{name}\" must be a string"),
        None => bail!(
            "{source}: missing field \"{name}\" (found: {})",
            obj.keys().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "prompt" and "completion" of every row of a temporary JSONL file holding `text`.
    fn read(text: &str) -> Result<Vec<(usize, String, String)>> {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), text).unwrap();
        read_objects(tmp.path(), "{\"prompt\": ..., \"completion\": ...}")?
            .into_iter()
            .map(|(line, obj)| {
                let field = |name| string_field(&obj, name, tmp.path(), line);
                Ok((line, field("prompt")?, field("completion")?))
            })
            .collect()
    }

    #[test]
    fn reads_rows_and_skips_blank_lines() {
        let rows = read("{\"prompt\":\"a\",\"completion\":\"b\"}\n\n{\"prompt\":\"c\",\"completion\":\"\"}\n").unwrap();
        assert_eq!(rows, vec![(1, "a".into(), "b".into()), (3, "c".into(), "".into())]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = read("{\"prompt\":\"a\",\"completion\":\"b\"}\n[1,2]\n").unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("expected a JSON object"), "{e}");
        let e = read("{\"prompt\":\"a\"}\n").unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("missing field \"completion\""), "{e}");
        let e = format!("{:#}", read("{\"prompt\": \n").unwrap_err());
        assert!(e.contains(":1: not valid JSON"), "{e}");
        let e = read("{\"prompt\":1,\"completion\":\"b\"}\n").unwrap_err().to_string();
        assert!(e.contains("must be a string"), "{e}");
        let e = read("\n\n").unwrap_err().to_string();
        assert!(e.contains("no rows"), "{e}");
    }

    #[test]
    fn reads_json_arrays_and_drops_a_byte_order_mark() {
        let rows = read("\u{feff}{\"prompt\":\"a\",\"completion\":\"b\"}\n").unwrap();
        assert_eq!(rows, vec![(1, "a".into(), "b".into())]);
        let rows = read("[\n {\"prompt\":\"a\",\"completion\":\"b\"},\n {\"prompt\":\"c\",\"completion\":\"d\"}\n]\n")
            .unwrap();
        assert_eq!(rows, vec![(2, "a".into(), "b".into()), (3, "c".into(), "d".into())]);
    }
}
