//! CSV and TSV files → rows as JSON object text (one string per column, in header order), streamed, so that
//! `records` reads them exactly as it reads JSONL.
//!
//! The first line names the columns. Fields may be quoted with `"` (RFC 4180, as Python's `csv` and pandas
//! write them, TSV included), so a quoted field can hold the delimiter, newlines and `""` for a quote. Every cell
//! is a string (an empty cell is an empty string), except the `messages` and `tools` columns of chat data, whose
//! cells are JSON text (as `json.dumps` writes it). Rows are named `file:LINE`, the line where the row starts.
use anyhow::{Result, anyhow, bail};
use std::cell::RefCell;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

/// Columns whose cells hold JSON (the turns of a chat and its tool list), not plain text.
const JSON_COLUMNS: &[&str] = &["messages", "tools"];

/// Calls `row(source, json_object_text)` for each row of the CSV/TSV file at `path` (`delimiter` `,` or tab).
pub fn for_each_row(path: &Path, delimiter: u8, mut row: impl FnMut(String, &str) -> Result<()>) -> Result<()> {
    let name = path.display();
    let file = crate::input::open_regular(path, "data file")?;
    let lines = Rc::new(RefCell::new(LineEnds::default()));
    let counted = CountLines { inner: file, ends: lines.clone(), at: 0 };
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).from_reader(counted);
    let line_of = |p: Option<&csv::Position>| p.map_or(0, |p| lines.borrow_mut().line_at(p.byte()));
    let headers =
        reader.headers().map_err(|e| describe(&name.to_string(), &csv::StringRecord::new(), e, line_of))?.clone();
    // One column whose name holds the other delimiter: the file is the other kind.
    if let [only] = &headers.iter().collect::<Vec<_>>()[..] {
        let (other, kind, flag) = if delimiter == b',' { ('\t', "tab", "tsv") } else { (',', "comma", "csv") };
        if only.contains(other) {
            bail!(
                "{name}:1: the header is one column, {only:?}, with {kind}s inside: the file is {kind}-separated; \
                 pass --data-format {flag} (or name it .{flag})"
            );
        }
    }
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
            Err(e) => return Err(describe(&name.to_string(), &headers, e, line_of)),
        }
        let source = format!("{name}:{}", line_of(record.position()));
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
fn describe(
    name: &str,
    headers: &csv::StringRecord,
    e: csv::Error,
    line_of: impl Fn(Option<&csv::Position>) -> u64,
) -> anyhow::Error {
    let line = |p: Option<&csv::Position>| p.map_or(String::new(), |p| format!(":{}", line_of(Some(p))));
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

/// The line numbers of rows, counted from the bytes as the csv reader reads them: the csv crate's own count is
/// off by one on CRLF files and after blank lines (rust-csv#395), and a row's name must be the line an editor
/// shows. A line ends at "\n", "\r\n" or a lone "\r". A record's position is where the reader started on it,
/// which may be on the line ends before it (the previous row's, blank lines): the row starts after them.
#[derive(Default)]
struct LineEnds {
    /// Offsets just past each line end read and not yet counted, in order.
    pending: std::collections::VecDeque<u64>,
    /// Line ends before the last row asked about.
    counted: u64,
    /// Runs of line-end bytes ("\r", "\n") read, as [start, end), not yet passed.
    runs: std::collections::VecDeque<(u64, u64)>,
    /// The start of the run the last byte read belongs to.
    open_run: Option<u64>,
    /// The last byte read was a "\r" whose line end is not known yet ("\r\n" ends after the "\n").
    cr_at: Option<u64>,
}

impl LineEnds {
    /// The 1-based line of the row whose record starts at byte `offset` (asked in increasing order, once read).
    fn line_at(&mut self, offset: u64) -> u64 {
        while self.runs.front().is_some_and(|&(_, end)| end <= offset) {
            self.runs.pop_front();
        }
        let start = match self.runs.front() {
            Some(&(run, end)) if run <= offset => end,
            _ if self.open_run.is_some_and(|run| run <= offset) => u64::MAX,
            _ => offset,
        };
        while self.pending.front().is_some_and(|&end| end <= start) {
            self.pending.pop_front();
            self.counted += 1;
        }
        // A lone "\r" last read, the row after it.
        self.counted + 1 + u64::from(self.cr_at.is_some_and(|at| at < start))
    }

    fn read(&mut self, from: u64, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let at = from + i as u64;
            let ends_line = matches!(b, b'\r' | b'\n');
            match (ends_line, self.open_run) {
                (true, None) => self.open_run = Some(at),
                (false, Some(run)) => {
                    self.runs.push_back((run, at));
                    self.open_run = None;
                }
                _ => {}
            }
            if let Some(cr) = self.cr_at.take() {
                if b == b'\n' {
                    self.pending.push_back(at + 1);
                    continue;
                }
                self.pending.push_back(cr + 1);
            }
            match b {
                b'\n' => self.pending.push_back(at + 1),
                b'\r' => self.cr_at = Some(at),
                _ => {}
            }
        }
    }
}

/// The data file as the csv reader reads it, its line ends noted in [`LineEnds`].
struct CountLines<R> {
    inner: R,
    ends: Rc<RefCell<LineEnds>>,
    at: u64,
}

impl<R: Read> Read for CountLines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ends.borrow_mut().read(self.at, &buf[..n]);
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `file:LINE` name of every row of a CSV file with this text.
    fn lines_of(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.csv");
        std::fs::write(&path, text).unwrap();
        let mut out = vec![];
        for_each_row(&path, b',', |source, _| {
            out.push(source.rsplit(':').next().unwrap().to_string());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn rows_are_named_by_the_line_they_start_on_whatever_the_line_ends() {
        assert_eq!(lines_of("prompt,completion\na,b\nc,d\n"), ["2", "3"]);
        assert_eq!(lines_of("prompt,completion\r\na,b\r\nc,d\r\n"), ["2", "3"]);
        assert_eq!(lines_of("prompt,completion\ra,b\rc,d\r"), ["2", "3"]);
        assert_eq!(lines_of("prompt,completion\n\n\na,b\n\nc,d"), ["4", "6"]);
        assert_eq!(lines_of("prompt,completion\r\n\"a\r\nx\",b\r\nc,d\r\n"), ["2", "4"]);
    }

    #[test]
    fn a_file_of_the_other_delimiter_is_named_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.csv");
        std::fs::write(&path, "prompt\tcompletion\na\tb\n").unwrap();
        let e = for_each_row(&path, b',', |_, _| Ok(())).unwrap_err().to_string();
        assert!(e.contains("rows.csv:1") && e.contains("tab-separated") && e.contains("--data-format tsv"), "{e}");
        std::fs::write(&path, "prompt,completion\na,b\n").unwrap();
        let e = for_each_row(&path, b'\t', |_, _| Ok(())).unwrap_err().to_string();
        assert!(e.contains("comma-separated") && e.contains("--data-format csv"), "{e}");
    }
}
