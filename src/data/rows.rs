//! Plain JSONL objects with string fields (the prompts of `generate --data`, the rows of `metrics`), with errors
//! that name file and line. Training, evaluation and scoring rows go through [`super::records`] instead.
use crate::input;
use anyhow::{Context, Result, bail};
use std::path::Path;

/// Every non-blank line of a JSONL file as (1-based line, JSON object). `shape` shows the expected object in the
/// error for a line that is not one. A file with no rows is an error.
pub fn read_objects(path: &Path, shape: &str) -> Result<Vec<(usize, JsonObject)>> {
    parse_objects(&input::read_to_string(path, "data file")?, path, shape)
}

/// [`read_objects`] on the text of the file at `path`.
pub fn parse_objects(text: &str, path: &Path, shape: &str) -> Result<Vec<(usize, JsonObject)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{n}: not valid JSON", path.display()))?;
        let serde_json::Value::Object(obj) = v else {
            bail!("{}:{n}: expected a JSON object like {shape}", path.display());
        };
        out.push((n, obj));
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
    match obj.get(name) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => bail!("{}:{line}: field \"{name}\" must be a string", path.display()),
        None => bail!(
            "{}:{line}: missing field \"{name}\" (found: {})",
            path.display(),
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
}
