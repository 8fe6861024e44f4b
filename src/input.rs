//! Opening the files condlm reads. Only regular files are read: a folder, a named pipe (FIFO), a device
//! (`/dev/zero`, `/dev/urandom`) or a socket given where a file is expected is refused with a message saying what
//! it is, so a wrong path can never block on a pipe that no one writes, or read an endless device until memory
//! runs out.
use anyhow::{Context, Result, bail};
use memmap2::Mmap;
use std::fs::{File, FileType};
use std::io::Read;
use std::ops::Deref;
use std::path::Path;

/// What a file that is not a regular file is, for messages.
fn kind(t: &FileType) -> &'static str {
    if t.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// Opens `path` for reading after checking (symlinks followed) that it is a regular file: opening a FIFO would
/// block until something writes to it. `what` names the file in errors, e.g. "data file".
pub fn open_regular(path: &Path, what: &str) -> Result<File> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{what} {} is {}, not a regular file; pass the path of a {what}",
            path.display(),
            kind(&meta.file_type())
        );
    }
    File::open(path).with_context(|| format!("cannot open {what} {}", path.display()))
}

/// The whole of a regular UTF-8 text file (see [`open_regular`]); bytes that are not UTF-8 are an error naming
/// their line.
pub fn read_to_string(path: &Path, what: &str) -> Result<String> {
    let mut bytes = Vec::new();
    open_regular(path, what)?
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
        let column = 1 + good.iter().rev().take_while(|&&b| b != b'\n').count();
        let byte = e.as_bytes()[good.len()];
        anyhow::anyhow!(
            "{}:{line}: {what} is not UTF-8 text (byte 0x{byte:02x} at byte {column} of the line); save the file as \
             UTF-8",
            path.display()
        )
    })
}

/// The bytes of a file: memory-mapped when read from disk, owned when they were already in memory (tests, fuzzing).
pub enum FileBytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl AsRef<[u8]> for FileBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

/// Memory-maps a regular file (see [`open_regular`]).
pub fn map(path: &Path, what: &str) -> Result<FileBytes> {
    let file = open_regular(path, what)?;
    // SAFETY: the map is read-only. As with any mmap, the file must not be truncated or modified by another
    // process while it is open; readers bounds-check every access against the length of the map taken here.
    let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot memory-map {what} {}", path.display()))?;
    Ok(FileBytes::Mapped(mmap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_is_not_utf8_is_named_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        std::fs::write(&path, b"{\"a\": 1}\n{\"a\": \"caf\xe9\"}\n").unwrap();
        let e = read_to_string(&path, "data file").unwrap_err().to_string();
        assert!(e.contains("rows.jsonl:2:") && e.contains("byte 0xe9 at byte 11 of the line"), "{e}");
        std::fs::write(&path, "{\"a\": \"café\"}\n").unwrap();
        assert_eq!(read_to_string(&path, "data file").unwrap(), "{\"a\": \"café\"}\n");
    }
}
