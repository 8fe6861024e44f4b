//! Reading `{"prompt": x, "completion": y}` rows from JSONL, with errors that name file and line.
use anyhow::{Context, Result, bail};
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub prompt: String,
    pub completion: String,
    /// 1-based line in the source file, for messages.
    pub line: usize,
}

/// Reads every non-blank line of a JSONL file as a pair.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>> {
    read_objects(path, "{\"prompt\": ..., \"completion\": ...}")?
        .into_iter()
        .map(|(line, obj)| {
            let prompt = string_field(&obj, "prompt", path, line)?;
            Ok(Pair { prompt, completion: string_field(&obj, "completion", path, line)?, line })
        })
        .collect()
}

/// Every non-blank line of a JSONL file as (1-based line, JSON object). `shape` shows the expected object in the
/// error for a line that is not one. A file with no rows is an error.
pub fn read_objects(path: &Path, shape: &str) -> Result<Vec<(usize, JsonObject)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read data file {}", path.display()))?;
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

    fn read(text: &str) -> Result<Vec<Pair>> {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), text).unwrap();
        read_pairs(tmp.path())
    }

    #[test]
    fn reads_rows_and_skips_blank_lines() {
        let rows = read("{\"prompt\":\"a\",\"completion\":\"b\"}\n\n{\"prompt\":\"c\",\"completion\":\"\"}\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[1].prompt.as_str(), rows[1].completion.as_str(), rows[1].line), ("c", "", 3));
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
    }
}
