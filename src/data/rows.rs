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
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read data file {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{n}: not valid JSON", path.display()))?;
        let obj = v.as_object().with_context(|| {
            format!("{}:{n}: expected a JSON object like {{\"prompt\": ..., \"completion\": ...}}", path.display())
        })?;
        let field = |name: &str| -> Result<String> {
            match obj.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(_) => bail!("{}:{n}: field \"{name}\" must be a string", path.display()),
                None => bail!(
                    "{}:{n}: missing field \"{name}\" (found: {})",
                    path.display(),
                    obj.keys().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ")
                ),
            }
        };
        out.push(Pair { prompt: field("prompt")?, completion: field("completion")?, line: n });
    }
    if out.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(out)
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
