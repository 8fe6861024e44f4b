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

/// The whole of a regular UTF-8 text file (see [`open_regular`]).
pub fn read_to_string(path: &Path, what: &str) -> Result<String> {
    let mut text = String::new();
    open_regular(path, what)?
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {what} {} (it must be UTF-8 text)", path.display()))?;
    Ok(text)
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
