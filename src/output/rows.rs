//! JSONL results written row by row while a job runs, so an interrupted run keeps what it finished.
//!
//! To a file FILE: rows go to the sibling `FILE.partial`, flushed after every batch, which is renamed to FILE
//! once every row is written — FILE is complete or absent, and holds the rows only. Beside the partial,
//! `FILE.partial.json` records what its rows depend on (a [`Fingerprint`]: command, settings, model and adapter,
//! a hash of each input row); it is written before the first row and removed once FILE is in place. A run that
//! stops early leaves both; a re-run with resume compares the fingerprint with its own (another setting, model or
//! adapter is refused, naming what differs), reads the complete lines back (a torn last line, cut mid-write, is
//! dropped), checks each against its input row's hash and lets the caller check it too, and appends the rest. A
//! partial without a fingerprint (written by an older condlm) is refused: nothing says what its rows came from.
//! To stdout, or to an existing path that is not a regular file (`/dev/null`, `/dev/stdout`, a named pipe, a shell's
//! `>(…)`): rows are written as they finish, with nothing to rename or resume.
//!
//! Everything that can refuse the destination (missing or read-only folder, an existing FILE, a partial the
//! user did not ask to resume or one without a fingerprint) is checked by [`prepare`], before the job loads
//! anything; [`Destination::check_settings`] compares the settings as soon as the caller knows them.
use super::fingerprint::{FORMAT, Fingerprint};
use anyhow::{Context, Result, anyhow, bail};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Where rows go, checked but not yet opened.
pub enum Destination {
    Stdout,
    /// An existing device, pipe or socket, written in place.
    Stream(PathBuf),
    File {
        path: PathBuf,
        partial: PathBuf,
        resume: bool,
    },
}

/// `FILE.partial`: where the rows of FILE grow until they are complete.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// `FILE.partial.json`: what the rows of `FILE.partial` depend on (a [`Fingerprint`]).
pub fn fingerprint_path(path: &Path) -> PathBuf {
    fingerprint_path_of_partial(&partial_path(path))
}

/// Whether the partial at `partial` holds at least one complete line (a row to keep).
fn has_rows(partial: &Path) -> Result<bool> {
    let mut f = match File::open(partial) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", partial.display())),
    };
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf).with_context(|| format!("cannot read {}", partial.display()))? {
            0 => return Ok(false),
            n if buf[..n].contains(&b'\n') => return Ok(true),
            _ => {}
        }
    }
}

/// What to do with a partial that cannot be resumed.
fn start_over(partial: &Path) -> String {
    let fingerprint = fingerprint_path_of_partial(partial);
    let also = if fingerprint.exists() { format!(" and {}", fingerprint.display()) } else { String::new() };
    format!("delete {}{also} (or pass --overwrite instead of --resume-output) to start over", partial.display())
}

fn fingerprint_path_of_partial(partial: &Path) -> PathBuf {
    let mut name = partial.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// The fingerprint recorded beside `partial`, which holds rows: a missing one (an older condlm's partial) or an
/// unreadable one is an error saying what to do.
fn recorded(partial: &Path) -> Result<Fingerprint> {
    let path = fingerprint_path_of_partial(partial);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} has no {}: it was written by an older condlm, which did not record the settings, model and input \
             its rows come from, so they cannot be checked against this run's; {}",
            partial.display(),
            path.display(),
            start_over(partial)
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let fp: Fingerprint = serde_json::from_slice(&text).map_err(|e| {
        anyhow!("{}: not a fingerprint of condlm's partial outputs ({e}); {}", path.display(), start_over(partial))
    })?;
    if fp.format != FORMAT {
        bail!("{}: written by another version of condlm ({}); {}", path.display(), fp.format, start_over(partial));
    }
    Ok(fp)
}

/// Refuses `recorded` unless `now` has its command and settings: the error lists what differs.
fn same_settings(partial: &Path, recorded: &Fingerprint, now: &Fingerprint) -> Result<()> {
    let differences = recorded.differences(now);
    if differences.is_empty() {
        return Ok(());
    }
    bail!(
        "{} was written with other settings than this run's, so its rows are not the ones this run would \
         write:\n  {}\nRun with the settings it was written with to continue it, or {}",
        partial.display(),
        differences.join("\n  "),
        start_over(partial)
    )
}

/// Checks `out` (None = stdout) before any work: its folder exists and takes a new file; an existing FILE is
/// replaced only with `overwrite`; an existing `FILE.partial` is continued with `resume` or discarded with
/// `overwrite`, never silently.
pub fn prepare(out: Option<&Path>, overwrite: bool, resume: bool) -> Result<Destination> {
    let Some(path) = out else { return Ok(Destination::Stdout) };
    if path.is_dir() {
        bail!("--out {} is a folder; give the path of a file", path.display());
    }
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        if resume {
            bail!(
                "--resume-output: {} is not a regular file (a device or a pipe); there is nothing to resume",
                path.display()
            );
        }
        return Ok(Destination::Stream(path.to_owned()));
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
    // A partial beside an existing file is an interrupted --overwrite of it: continuing it replaces the file.
    if path.exists() && !overwrite && !(resume && partial.exists()) {
        bail!("{} already exists: pass --overwrite to replace it, or choose another --out", path.display());
    }
    if resume && has_rows(&partial)? {
        recorded(&partial)?;
    }
    Ok(Destination::File { path: path.to_owned(), partial, resume })
}

impl Destination {
    /// Whether rows go to a file (which records what they depend on), not stdout.
    pub fn is_file(&self) -> bool {
        matches!(self, Destination::File { .. })
    }

    /// Refuses to resume a partial written with another command or other settings than `now`'s (its rows are
    /// not compared here): called as soon as the settings are known, before the model loads. Nothing to check
    /// when not resuming.
    pub fn check_settings(&self, now: &Fingerprint) -> Result<()> {
        match self {
            Destination::File { partial, resume: true, .. } if has_rows(partial)? => {
                same_settings(partial, &recorded(partial)?, now)
            }
            _ => Ok(()),
        }
    }

    /// Opens the destination; `now` is what this run's rows depend on (its `rows`, one hash per input row,
    /// whose sources are `sources`). When resuming, the partial's fingerprint must have `now`'s settings, and
    /// each complete line must be of an input row whose hash is the same now; it is parsed and passed to
    /// `check(row index, row)`, whose results are returned (one per row already done); a line refused is an
    /// error naming it — it belongs to other input, or another run's settings. `now` is recorded beside the
    /// partial before any row is written.
    pub fn open<T>(
        self,
        now: &Fingerprint,
        sources: &[String],
        mut check: impl FnMut(usize, &serde_json::Value) -> Result<T>,
    ) -> Result<(RowWriter, Vec<T>)> {
        let (path, partial, resume) = match self {
            Destination::Stdout => {
                let sink = BufWriter::new(Sink::Stdout(std::io::stdout()));
                return Ok((RowWriter { sink, name: "stdout".into(), target: None }, vec![]));
            }
            Destination::Stream(path) => {
                let f = OpenOptions::new().write(true).open(&path);
                let f = f.with_context(|| format!("cannot write {}", path.display()))?;
                return Ok((
                    RowWriter { sink: BufWriter::new(Sink::File(f)), name: path.display().to_string(), target: None },
                    vec![],
                ));
            }
            Destination::File { path, partial, resume } => (path, partial, resume),
        };
        let fingerprint = fingerprint_path_of_partial(&partial);
        let record = || {
            let mut json = serde_json::to_vec(now).expect("a fingerprint is JSON");
            json.push(b'\n');
            super::write_atomic(&fingerprint, &json)
        };
        let mut done = vec![];
        let file = if resume && has_rows(&partial)? {
            let then = recorded(&partial)?;
            same_settings(&partial, &then, now)?;
            let text = std::fs::read(&partial).with_context(|| format!("cannot read {}", partial.display()))?;
            let mut kept = 0;
            // Only lines that end in a newline were written whole; a tail without one was cut mid-write.
            for (i, line) in text.split_inclusive(|&b| b == b'\n').filter(|l| l.ends_with(b"\n")).enumerate() {
                let refuse = |e: anyhow::Error| {
                    anyhow!(
                        "{}:{}: {e:#}; this partial output does not belong to this input and these settings: {}",
                        partial.display(),
                        i + 1,
                        start_over(&partial)
                    )
                };
                let row = serde_json::from_slice(line).map_err(|e| refuse(anyhow!("not a JSON row ({e})")))?;
                done.push(check(i, &row).map_err(refuse)?);
                match (then.rows.get(i), now.rows.get(i)) {
                    (Some(a), Some(b)) if a == b => {}
                    (Some(_), Some(_)) => {
                        let source = sources.get(i).map_or(format!("row {}", i + 1), String::clone);
                        return Err(refuse(anyhow!(
                            "{source} of the input is not the row this line was computed from (it was edited since)"
                        )));
                    }
                    (None, _) => return Err(refuse(anyhow!("more rows than the input it was written from had"))),
                    (_, None) => {
                        return Err(refuse(anyhow!("row {}, but the input has only {} rows", i + 1, now.rows.len())));
                    }
                }
                kept += line.len();
            }
            let f = OpenOptions::new().append(true).open(&partial);
            let f = f.with_context(|| format!("cannot append to {}", partial.display()))?;
            f.set_len(kept as u64)
                .with_context(|| format!("cannot drop the torn last line of {}", partial.display()))?;
            // The input may have grown past the kept rows: the record covers the rows this run writes.
            record()?;
            eprintln!("{}: {} rows already done, continuing after them", partial.display(), done.len());
            f
        } else {
            if resume {
                eprintln!("no {} to resume: starting from the first row", partial.display());
            }
            // Emptied first, then recorded: a partial never holds rows its record does not describe.
            let f = File::create(&partial).with_context(|| format!("cannot write {}", partial.display()))?;
            record()?;
            f
        };
        let sink = BufWriter::new(Sink::File(file));
        Ok((RowWriter { sink, name: partial.display().to_string(), target: Some((partial, path)) }, done))
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
    /// What the rows are written to, for messages.
    name: String,
    /// (partial, final path) when writing a file.
    target: Option<(PathBuf, PathBuf)>,
}

impl RowWriter {
    pub fn push(&mut self, row: &serde_json::Value) -> Result<()> {
        let mut line = row.to_string();
        line.push('\n');
        self.sink.write_all(line.as_bytes()).with_context(|| format!("cannot write {}", self.name))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.sink.flush().with_context(|| format!("cannot write {}", self.name))
    }

    /// Every row is written: flush, rename the partial file into place (synced first, so FILE never appears
    /// with rows missing), then remove its fingerprint.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        let Some((partial, path)) = self.target.take() else { return Ok(()) };
        if let Sink::File(f) = self.sink.get_ref() {
            f.sync_all().with_context(|| format!("cannot write {}", partial.display()))?;
        }
        std::fs::rename(&partial, &path)
            .with_context(|| format!("cannot move {} to {}", partial.display(), path.display()))?;
        // FILE is complete: a fingerprint left by a failure here describes no partial and is replaced by the
        // next run's.
        let fingerprint = fingerprint_path_of_partial(&partial);
        match std::fs::remove_file(&fingerprint) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                eprintln!("warning: cannot remove {} ({e}); it is no longer needed", fingerprint.display())
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fingerprint::row_hash;

    fn rows(n: usize) -> Vec<serde_json::Value> {
        (0..n).map(|i| serde_json::json!({"row": i})).collect()
    }

    /// The fingerprint of a run over `n` input rows whose texts are "text {i}", with `--seed seed`.
    fn fingerprint(n: usize, seed: u64) -> Fingerprint {
        let mut fp = Fingerprint::new("generate");
        fp.set("--seed", seed);
        fp.rows = (0..n).map(|i| row_hash(format!("text {i}").as_bytes())).collect();
        fp
    }

    fn sources(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("in.jsonl:{}", i + 1)).collect()
    }

    fn check(i: usize, v: &serde_json::Value) -> Result<usize> {
        if v["row"] != i {
            bail!("row {} where row {i} was expected", v["row"]);
        }
        Ok(i)
    }

    /// Writes rows 0..n of a run with `fp` and leaves them as an interrupted run would.
    fn interrupted(out: &Path, fp: &Fingerprint, n: usize) {
        let (mut w, _) = prepare(Some(out), true, false).unwrap().open(fp, &sources(4), check).unwrap();
        for r in rows(n) {
            w.push(&r).unwrap();
        }
        w.flush().unwrap();
    }

    /// Resumes the partial of `out` (rows 0 and 1 done) with `fp`, writes rows 2 and 3, finishes, and checks that
    /// FILE holds the four rows.
    fn resume_and_finish(out: &Path, fp: &Fingerprint) {
        let dest = prepare(Some(out), false, true).unwrap();
        dest.check_settings(fp).unwrap();
        let (mut w, done) = dest.open(fp, &sources(4), check).unwrap();
        assert_eq!(done, vec![0, 1]);
        for r in &rows(4)[2..] {
            w.push(r).unwrap();
        }
        w.finish().unwrap();
        let want: String = rows(4).iter().map(|r| format!("{r}\n")).collect();
        assert_eq!(std::fs::read_to_string(out).unwrap(), want);
    }

    #[test]
    fn a_resumed_partial_drops_its_torn_line_and_ends_as_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        let fp = fingerprint(4, 7);
        let (mut w, done) = prepare(Some(&out), false, false).unwrap().open(&fp, &sources(4), check).unwrap();
        assert!(done.is_empty());
        assert!(fingerprint_path(&out).exists(), "recorded before the first row");
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
        resume_and_finish(&out, &fp);
        // FILE holds the rows only; the fingerprint is gone with the partial.
        assert!(!partial.exists() && !fingerprint_path(&out).exists());
        let e = prepare(Some(&out), false, false).err().unwrap().to_string();
        assert!(e.contains("already exists") && e.contains("--overwrite"), "{e}");
        assert!(prepare(Some(&out), true, false).is_ok());
    }

    /// A run that --overwrite an existing file and was interrupted leaves the file and a partial: --resume-output
    /// alone continues it (as the message says), and the finished rows replace the file.
    #[test]
    fn an_interrupted_overwrite_resumes_without_overwrite_again() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        std::fs::write(&out, "old\n").unwrap();
        interrupted(&out, &fingerprint(4, 7), 2);
        let e = prepare(Some(&out), false, false).err().unwrap().to_string();
        assert!(e.contains("--resume-output"), "{e}");
        resume_and_finish(&out, &fingerprint(4, 7));
    }

    #[test]
    fn a_partial_of_other_settings_is_refused_naming_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        interrupted(&out, &fingerprint(4, 7), 2);
        let dest = prepare(Some(&out), false, true).unwrap();
        let e = dest.check_settings(&fingerprint(4, 8)).err().unwrap().to_string();
        assert!(
            e.contains("other settings") && e.contains("--seed: 7 then, 8 now") && e.contains("--overwrite"),
            "{e}"
        );
        let e = dest.open(&fingerprint(4, 8), &sources(4), check).err().unwrap().to_string();
        assert!(e.contains("--seed: 7 then, 8 now"), "{e}");
        // Refused, not discarded: the rows are still there to resume with the right settings.
        let (_, done) = prepare(Some(&out), false, true).unwrap().open(&fingerprint(4, 7), &sources(4), check).unwrap();
        assert_eq!(done, vec![0, 1]);
    }

    #[test]
    fn an_edited_input_row_is_refused_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        let fp = fingerprint(4, 7);
        interrupted(&out, &fp, 3);
        let mut edited = fp.clone();
        edited.rows[1] = row_hash(b"text 1, edited");
        let e = prepare(Some(&out), false, true).unwrap().open(&edited, &sources(4), check).err().unwrap().to_string();
        assert!(
            e.contains("out.jsonl.partial:2") && e.contains("in.jsonl:2 of the input") && e.contains("edited"),
            "{e}"
        );
        // Rows past the kept ones may change (or be added): they are written by this run.
        let mut grown = fingerprint(6, 7);
        grown.rows[4] = row_hash(b"new");
        let (_, done) = prepare(Some(&out), false, true).unwrap().open(&grown, &sources(6), check).unwrap();
        assert_eq!(done, vec![0, 1, 2]);
        let recorded: Fingerprint = serde_json::from_slice(&std::fs::read(fingerprint_path(&out)).unwrap()).unwrap();
        assert_eq!(recorded, grown, "the record describes the rows this run writes");
        // Fewer input rows than kept lines.
        let e = prepare(Some(&out), false, true).unwrap().open(&fingerprint(2, 7), &sources(2), check).err().unwrap();
        assert!(e.to_string().contains("the input has only 2 rows"), "{e}");
    }

    #[test]
    fn a_partial_without_a_fingerprint_is_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        std::fs::write(partial_path(&out), "{\"row\": 0}\n").unwrap();
        let e = prepare(Some(&out), false, true).err().unwrap().to_string();
        assert!(e.contains("older condlm") && e.contains("out.jsonl.partial.json") && e.contains("--overwrite"), "{e}");
        std::fs::write(fingerprint_path(&out), "{}").unwrap();
        let e = prepare(Some(&out), false, true).err().unwrap().to_string();
        assert!(e.contains("not a fingerprint"), "{e}");
        // A partial without a complete line keeps nothing: it starts over, whatever its record.
        std::fs::write(partial_path(&out), "{\"ro").unwrap();
        let (_, done) = prepare(Some(&out), false, true).unwrap().open(&fingerprint(1, 0), &sources(1), check).unwrap();
        assert!(done.is_empty());
        assert_eq!(std::fs::read(partial_path(&out)).unwrap(), b"");
    }

    #[test]
    fn a_partial_of_other_input_is_refused_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        let fp = fingerprint(4, 7);
        interrupted(&out, &fp, 0);
        std::fs::write(partial_path(&out), "{\"row\": 0}\n{\"row\": 5}\n").unwrap();
        let e = prepare(Some(&out), false, true).unwrap().open(&fp, &sources(4), check).err().unwrap().to_string();
        assert!(e.contains("out.jsonl.partial:2") && e.contains("row 5") && e.contains("delete"), "{e}");
    }

    #[test]
    fn a_device_or_pipe_is_written_in_place() {
        // `--out /dev/null` (and /dev/stdout, a named pipe): an existing file that is not a regular one
        let dev_null = Path::new("/dev/null");
        assert!(matches!(prepare(Some(dev_null), false, false).unwrap(), Destination::Stream(_)));
        let (mut w, done) =
            prepare(Some(dev_null), false, false).unwrap().open(&fingerprint(2, 0), &sources(2), check).unwrap();
        assert!(done.is_empty());
        rows(2).iter().for_each(|r| w.push(r).unwrap());
        w.finish().unwrap();
        assert!(!std::fs::metadata(dev_null).unwrap().is_file(), "/dev/null is still a device");
        assert!(!partial_path(dev_null).exists());
        let e = prepare(Some(dev_null), false, true).err().unwrap().to_string();
        assert!(e.contains("nothing to resume"), "{e}");
        // a regular file is still refused without --overwrite
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(prepare(Some(file.path()), false, false).err().unwrap().to_string().contains("--overwrite"));
    }
}
