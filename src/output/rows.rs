//! JSONL results written row by row while a job runs, so an interrupted run keeps what it finished.
//!
//! To a file FILE: rows go to the sibling `FILE.partial`, flushed after every batch, which is renamed to FILE
//! once every row is written — FILE is complete or absent. A run that stops early leaves the partial; a re-run
//! with resume reads its complete lines back (a torn last line, cut mid-write, is dropped), lets the caller
//! check each against its own input, and appends the rest. To stdout: rows are printed as they finish.
//!
//! Everything that can refuse the destination (missing or read-only folder, an existing FILE, a partial the
//! user did not ask to resume) is checked by [`prepare`], before the job loads anything.
use anyhow::{Context, Result, anyhow, bail};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Where rows go, checked but not yet opened.
pub enum Destination {
    Stdout,
    File { path: PathBuf, partial: PathBuf, resume: bool },
}

/// `FILE.partial`: where the rows of FILE grow until they are complete.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Checks `out` (None = stdout) before any work: its folder exists and takes a new file; an existing FILE is
/// replaced only with `overwrite`; an existing `FILE.partial` is continued with `resume` or discarded with
/// `overwrite`, never silently.
pub fn prepare(out: Option<&Path>, overwrite: bool, resume: bool) -> Result<Destination> {
    let Some(path) = out else { return Ok(Destination::Stdout) };
    if path.is_dir() {
        bail!("--out {} is a folder; give the path of a file", path.display());
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!(
            "cannot write {}: folder {} is not writable (it does not exist); create it first",
            path.display(),
            dir.display()
        );
    }
    tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write {}: folder {} is not writable", path.display(), dir.display()))?;
    let partial = partial_path(path);
    if partial.exists() && !resume && !overwrite {
        bail!(
            "{} holds the rows of an interrupted run: pass --resume-output to continue it, or delete it (or pass \
             --overwrite) to start over",
            partial.display()
        );
    }
    if path.exists() && !overwrite {
        bail!("{} already exists: pass --overwrite to replace it, or choose another --out", path.display());
    }
    Ok(Destination::File { path: path.to_owned(), partial, resume })
}

impl Destination {
    /// Opens the destination. When resuming, each complete line of the partial is parsed and passed to
    /// `check(row index, row)`, whose results are returned (one per row already done); a line `check` refuses
    /// is an error naming it — it belongs to other input, or another run's settings.
    pub fn open<T>(self, mut check: impl FnMut(usize, &serde_json::Value) -> Result<T>) -> Result<(RowWriter, Vec<T>)> {
        let (path, partial, resume) = match self {
            Destination::Stdout => {
                return Ok((RowWriter { sink: BufWriter::new(Sink::Stdout(std::io::stdout())), target: None }, vec![]));
            }
            Destination::File { path, partial, resume } => (path, partial, resume),
        };
        let mut done = vec![];
        let file = if resume && partial.exists() {
            let text = std::fs::read(&partial).with_context(|| format!("cannot read {}", partial.display()))?;
            let mut kept = 0;
            // Only lines that end in a newline were written whole; a tail without one was cut mid-write.
            for (i, line) in text.split_inclusive(|&b| b == b'\n').filter(|l| l.ends_with(b"\n")).enumerate() {
                let refuse = |e: anyhow::Error| {
                    anyhow!(
                        "{}:{}: {e:#}; this partial output does not belong to this input and these settings: delete \
                         it (or pass --overwrite) to start over",
                        partial.display(),
                        i + 1
                    )
                };
                let row = serde_json::from_slice(line).map_err(|e| refuse(anyhow!("not a JSON row ({e})")))?;
                done.push(check(i, &row).map_err(refuse)?);
                kept += line.len();
            }
            let f = OpenOptions::new().append(true).open(&partial);
            let f = f.with_context(|| format!("cannot append to {}", partial.display()))?;
            f.set_len(kept as u64)
                .with_context(|| format!("cannot drop the torn last line of {}", partial.display()))?;
            eprintln!("{}: {} rows already done, continuing after them", partial.display(), done.len());
            f
        } else {
            if resume {
                eprintln!("no {} to resume: starting from the first row", partial.display());
            }
            File::create(&partial).with_context(|| format!("cannot write {}", partial.display()))?
        };
        let sink = BufWriter::new(Sink::File(file));
        Ok((RowWriter { sink, target: Some((partial, path)) }, done))
    }
}

enum Sink {
    Stdout(std::io::Stdout),
    File(File),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stdout(s) => s.write(buf),
            Sink::File(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.flush(),
            Sink::File(f) => f.flush(),
        }
    }
}

/// Appends JSON rows, one a line; [`RowWriter::flush`] after each batch makes them durable against an
/// interruption, [`RowWriter::finish`] puts the complete file in place.
pub struct RowWriter {
    sink: BufWriter<Sink>,
    /// (partial, final path) when writing a file.
    target: Option<(PathBuf, PathBuf)>,
}

impl RowWriter {
    fn name(&self) -> String {
        self.target.as_ref().map_or("stdout".into(), |(p, _)| p.display().to_string())
    }

    pub fn push(&mut self, row: &serde_json::Value) -> Result<()> {
        let mut line = row.to_string();
        line.push('\n');
        self.sink.write_all(line.as_bytes()).with_context(|| format!("cannot write {}", self.name()))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.sink.flush().with_context(|| format!("cannot write {}", self.name()))
    }

    /// Every row is written: flush, and rename the partial file into place (synced first, so FILE never
    /// appears with rows missing).
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        let Some((partial, path)) = self.target.take() else { return Ok(()) };
        if let Sink::File(f) = self.sink.get_ref() {
            f.sync_all().with_context(|| format!("cannot write {}", partial.display()))?;
        }
        std::fs::rename(&partial, &path)
            .with_context(|| format!("cannot move {} to {}", partial.display(), path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<serde_json::Value> {
        (0..n).map(|i| serde_json::json!({"row": i})).collect()
    }

    fn check(i: usize, v: &serde_json::Value) -> Result<usize> {
        if v["row"] != i {
            bail!("row {} where row {i} was expected", v["row"]);
        }
        Ok(i)
    }

    #[test]
    fn a_resumed_partial_drops_its_torn_line_and_ends_as_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        let (mut w, done) = prepare(Some(&out), false, false).unwrap().open(check).unwrap();
        assert!(done.is_empty());
        for r in rows(2) {
            w.push(&r).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        // The process died in the middle of row 2.
        let partial = partial_path(&out);
        let mut f = OpenOptions::new().append(true).open(&partial).unwrap();
        f.write_all(b"{\"ro").unwrap();
        assert!(!out.exists());
        let e = prepare(Some(&out), false, false).err().unwrap().to_string();
        assert!(e.contains("out.jsonl.partial") && e.contains("--resume-output"), "{e}");
        let (mut w, done) = prepare(Some(&out), false, true).unwrap().open(check).unwrap();
        assert_eq!(done, vec![0, 1]);
        for r in &rows(4)[2..] {
            w.push(r).unwrap();
        }
        w.finish().unwrap();
        let want: String = rows(4).iter().map(|r| format!("{r}\n")).collect();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), want);
        assert!(!partial.exists());
        let e = prepare(Some(&out), false, false).err().unwrap().to_string();
        assert!(e.contains("already exists") && e.contains("--overwrite"), "{e}");
        assert!(prepare(Some(&out), true, false).is_ok());
    }

    #[test]
    fn a_partial_of_other_input_is_refused_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        std::fs::write(partial_path(&out), "{\"row\": 0}\n{\"row\": 5}\n").unwrap();
        let e = prepare(Some(&out), false, true).unwrap().open(check).err().unwrap().to_string();
        assert!(e.contains("out.jsonl.partial:2") && e.contains("row 5") && e.contains("delete it"), "{e}");
    }
}
