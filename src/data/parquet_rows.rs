//! Parquet files → rows as JSON object text (columns and struct fields in schema order, as a JSONL writer would
//! have written them), read one row group at a time and only the columns a row can use, so that
//! `records` reads them exactly as it reads JSONL.
//!
//! Rows are named `file: row I (row group G, row R)`, all 0-based (as pyarrow counts). Strings (dictionary
//! encoded or not) and UTF-8 binary are JSON strings, lists are arrays, structs and maps are objects, numbers and
//! booleans are themselves, null is null; other types (dates, decimals, timestamps) become their text.
use anyhow::{Result, anyhow, bail};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;
use std::fmt::Write;
use std::path::Path;

/// Calls `row(source, json_object_text)` for each row of the Parquet file at `path`, reading only the top-level
/// columns named in `columns` (a file with none of them is an error listing its columns), or all of them.
pub fn for_each_row(
    path: &Path,
    columns: Option<&[&str]>,
    mut row: impl FnMut(String, &str) -> Result<()>,
) -> Result<()> {
    let name = path.display();
    let file = crate::input::open_regular(path, "data file")?;
    let reader = SerializedFileReader::new(file).map_err(|e| {
        anyhow!("{name}: not a readable Parquet file ({e}); it may be truncated or not Parquet (see --data-format)")
    })?;
    let schema = reader.metadata().file_metadata().schema();
    let wanted = |name: &str| columns.is_none_or(|c| c.contains(&name));
    let fields: Vec<_> = schema.get_fields().iter().filter(|t| wanted(t.name())).cloned().collect();
    if let (true, Some(columns)) = (fields.is_empty(), columns) {
        bail!(
            "{name}: none of the columns rows are read from ({}); the file has {}. Name the prompt and completion \
             columns with --prompt-field and --completion-field",
            columns.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", "),
            schema.get_fields().iter().map(|t| format!("\"{}\"", t.name())).collect::<Vec<_>>().join(", ")
        );
    }
    let projection = Type::group_type_builder(schema.name()).with_fields(fields).build()?;
    let mut index = 0usize;
    let mut text = String::new();
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(|e| anyhow!("{name}: row group {g}: cannot read it ({e})"))?;
        let rows = group
            .get_row_iter(Some(projection.clone()))
            .map_err(|e| anyhow!("{name}: row group {g}: cannot read it ({e})"))?;
        for (r, value) in rows.enumerate() {
            let source = format!("{name}: row {index} (row group {g}, row {r})");
            let value = value.map_err(|e| anyhow!("{source}: cannot decode it ({e}); the file is damaged"))?;
            text.clear();
            write_object(value.get_column_iter(), &mut text).map_err(|e| anyhow!("{source}: {e}"))?;
            row(source, &text)?;
            index += 1;
        }
    }
    Ok(())
}

/// Fields as a JSON object, in order.
fn write_object<'a>(fields: impl Iterator<Item = (&'a String, &'a Field)>, out: &mut String) -> Result<(), String> {
    out.push('{');
    for (i, (key, value)) in fields.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(key, out);
        out.push(':');
        write_field(value, out).map_err(|e| format!("column \"{key}\": {e}"))?;
    }
    out.push('}');
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.push_str(&serde_json::Value::from(s).to_string());
}

fn write_field(f: &Field, out: &mut String) -> Result<(), String> {
    match f {
        Field::Null => out.push_str("null"),
        Field::Str(s) => write_string(s, out),
        Field::Bytes(b) => {
            let s = std::str::from_utf8(b.data()).map_err(|_| "binary data that is not UTF-8 text".to_string())?;
            write_string(s, out);
        }
        Field::Bool(v) => out.push_str(if *v { "true" } else { "false" }),
        Field::Byte(_)
        | Field::Short(_)
        | Field::Int(_)
        | Field::Long(_)
        | Field::UByte(_)
        | Field::UShort(_)
        | Field::UInt(_)
        | Field::ULong(_) => {
            let _ = write!(out, "{f}");
        }
        // Non-finite numbers have no JSON form: null, as Python's pandas writes them.
        Field::Float(v) => out.push_str(&serde_json::Value::from(*v).to_string()),
        Field::Double(v) => out.push_str(&serde_json::Value::from(*v).to_string()),
        Field::Group(row) => write_object(row.get_column_iter(), out)?,
        Field::ListInternal(list) => {
            out.push('[');
            for (i, e) in list.elements().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_field(e, out).map_err(|e| format!("element {i}: {e}"))?;
            }
            out.push(']');
        }
        Field::MapInternal(map) => {
            out.push('{');
            for (i, (k, v)) in map.entries().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let key = match k {
                    Field::Str(s) => s.clone(),
                    other => other.to_string(),
                };
                write_string(&key, out);
                out.push(':');
                write_field(v, out).map_err(|e| format!("key \"{key}\": {e}"))?;
            }
            out.push('}');
        }
        other => write_string(&other.to_string(), out),
    }
    Ok(())
}
