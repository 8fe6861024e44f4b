//! CSV and TSV files → rows as JSON object text (one string per column, in header order), streamed, so that
//! `records` reads them exactly as it reads JSONL.
//!
//! The first line names the columns. Fields may be quoted with `"` (RFC 4180, as Python's `csv` and pandas
//! write them, TSV included), so a quoted field can hold the delimiter, newlines and `""` for a quote. Every cell
//! is a string (an empty cell is an empty string), except the `messages` and `tools` columns of chat data, whose
//! cells are JSON text (as `json.dumps` writes it). Rows are named `file:LINE`, the line where the row starts.
use anyhow::{Result, anyhow, bail};
use std::path::Path;

/// Columns whose cells hold JSON (the turns of a chat and its tool list), not plain text.
const JSON_COLUMNS: &[&str] = &["messages", "tools"];

/// Calls `row(source, json_object_text)` for each row of the CSV/TSV file at `path` (`delimiter` `,` or tab).
pub fn for_each_row(path: &Path, delimiter: u8, mut row: impl FnMut(String, &str) -> Result<()>) -> Result<()> {
    let name = path.display();
    let file = crate::input::open_regular(path, "data file")?;
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).from_reader(file);
    let headers = reader.headers().map_err(|e| describe(&name.to_string(), &csv::StringRecord::new(), e))?.clone();
    for (i, h) in headers.iter().enumerate() {
        if headers.iter().take(i).any(|earlier| earlier == h) {
            bail!("{name}:1: column \"{h}\" appears twice in the header; rename one");
        }
    }
    let mut record = csv::StringRecord::new();
    let mut text = String::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(describe(&name.to_string(), &headers, e)),
        }
        let source = format!("{name}:{}", record.position().map_or(0, |p| p.line()));
        text.clear();
        text.push('{');
        for (i, (column, cell)) in headers.iter().zip(record.iter()).enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&serde_json::Value::from(column).to_string());
            text.push(':');
            if JSON_COLUMNS.contains(&column) {
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(cell) {
                    bail!(
                        "{source}: column \"{column}\" is not valid JSON ({e}); in CSV a chat's turns are one cell of \
                         JSON text, as json.dumps writes them"
                    );
                }
                text.push_str(cell);
            } else {
                text.push_str(&serde_json::Value::from(cell).to_string());
            }
        }
        text.push('}');
        row(source, &text)?;
    }
}

/// A csv error as `file:line: what happened`, naming the column where the csv crate says which field.
fn describe(name: &str, headers: &csv::StringRecord, e: csv::Error) -> anyhow::Error {
    let line = |p: Option<&csv::Position>| p.map_or(String::new(), |p| format!(":{}", p.line()));
    match e.kind() {
        csv::ErrorKind::UnequalLengths { pos, expected_len, len } => anyhow!(
            "{name}{}: {len} fields where the header has {expected_len}; check the quoting (a \" that is never \
             closed runs on over the following lines) and the delimiter (see --data-format)",
            line(pos.as_ref())
        ),
        csv::ErrorKind::Utf8 { pos, err } => {
            let column = headers.get(err.field()).map_or(String::new(), |c| format!(" (column \"{c}\")"));
            anyhow!("{name}{}: field {}{column} is not UTF-8 text: {err}", line(pos.as_ref()), err.field() + 1)
        }
        _ => anyhow!("{name}: cannot read it as CSV: {e}"),
    }
}
