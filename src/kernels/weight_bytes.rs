//! Where the bytes of the frozen matrices live: a view of the memory-mapped checkpoint at first, then — once the
//! model is assembled — one anonymous arena in 2 MB pages ([`gather_into_arena`]).
//!
//! Why the copy: decoding streams every weight once per token, so its speed is the speed of reading memory. From
//! a file mapping (4 KB pages) the hardware prefetchers stop at every page boundary and the TLB misses once per
//! 4 KB; from transparent huge pages a Q4_K row kernel read 15–16 GB/s instead of 13, Q6_K 20–21 instead of 12–16
//! (bench/decode_vs_llama_cpp.md). llama.cpp copies its repacked weights into anonymous memory for the same reason.
//! The file's pages are released behind the copy, tensor by tensor, so the resident size does not double.
use memmap2::{Advice, Mmap, MmapMut, UncheckedAdvice};
use rayon::prelude::*;
use std::ops::{Deref, Range};
use std::sync::Arc;

/// Memory a [`SharedBytes`] views.
pub trait Backing: Send + Sync {
    fn bytes(&self) -> &[u8];
    /// `range` will not be read again: a file mapping drops those pages from this process (a later read faults
    /// them back in from the file); memory of its own keeps them.
    fn release(&self, _range: Range<usize>) {}
}

impl Backing for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// The arena's memory: anonymous, so it is never released (for anonymous memory `MADV_DONTNEED` would zero the
/// pages under any view still reading them); it is freed when its last view goes.
struct Arena(Mmap);

impl Backing for Arena {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Drops `range` of a read-only file mapping from this process's memory; a later read faults the pages back in
/// from the file. A failure leaves the pages mapped, which is harmless.
///
/// # Safety
/// `map` maps a file and is never written: for anonymous memory `MADV_DONTNEED` would zero the pages.
pub unsafe fn release_file_pages(map: &Mmap, range: Range<usize>) {
    // SAFETY: forwarded to the caller: a file mapping, whose pages are re-read from the file.
    let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, range.len()) };
}

/// A range of shared bytes — a memory-mapped file, kept open while a view lives — or bytes of its own.
#[derive(Clone)]
pub struct SharedBytes {
    file: Arc<dyn Backing>,
    range: Range<usize>,
}

impl SharedBytes {
    /// `range` of `file`; panics if it lies outside (callers have checked it).
    pub fn new(file: Arc<dyn Backing>, range: Range<usize>) -> Self {
        assert!(range.end <= file.bytes().len(), "SharedBytes: range outside the file");
        SharedBytes { file, range }
    }

    /// Bytes of their own (not from a file).
    pub fn owned(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        SharedBytes { file: Arc::new(bytes), range: 0..len }
    }

    /// Releases this view's pages of a file mapping (see [`Backing::release`]): it will not be read again.
    pub fn release(&self) {
        self.file.release(self.range.clone());
    }

    /// Releases the pages of bytes `part` (relative to this view) of a file mapping (see [`Backing::release`]).
    fn release_part(&self, part: Range<usize>) {
        self.file.release(self.range.start + part.start..self.range.start + part.end);
    }
}

impl Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.file.bytes()[self.range.clone()]
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.range.len())
    }
}

impl PartialEq for SharedBytes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// Transparent huge pages are 2 MB on x86-64 and (with 4 KB base pages) on aarch64.
const HUGE_PAGE: usize = 2 << 20;
/// Each matrix starts on a cache line.
const ALIGN: usize = 64;

/// Moves every `SharedBytes` in `views` into one anonymous arena that asks for huge pages, releasing each source
/// as it is copied (file pages dropped, owned bytes freed as their last view goes), then freezes the arena
/// read-only. Errors (no memory for the arena) leave every view where it was.
pub fn gather_into_arena(views: &mut [&mut SharedBytes]) -> std::io::Result<()> {
    let offsets: Vec<usize> = views
        .iter()
        .scan(0usize, |end, v| {
            let at = end.next_multiple_of(ALIGN);
            *end = at + v.len();
            Some(at)
        })
        .collect();
    let Some(total) = views.last().map(|v| offsets[offsets.len() - 1] + v.len()) else { return Ok(()) };
    // One huge page more than needed, so that the arena can start on a huge-page boundary: untouched pages cost
    // nothing, and the kernel backs only 2 MB-aligned ranges with huge pages.
    let mut map = MmapMut::map_anon(total + HUGE_PAGE)?;
    let start = (HUGE_PAGE - map.as_ptr() as usize % HUGE_PAGE) % HUGE_PAGE;
    // Without THP support (or with it disabled) the advice fails and the arena is ordinary pages: still correct.
    let _ = map.advise_range(Advice::HugePage, start, total);
    // A huge page at a time, so that the copy never holds more than one page of a matrix twice; in parallel,
    // since most of the time goes to faulting in (zeroing) the arena's pages.
    let mut jobs: Vec<(&mut [u8], &SharedBytes, usize)> = Vec::new();
    let mut rest = &mut map[start..][..total];
    let mut end = 0;
    for (v, &at) in views.iter().zip(&offsets) {
        let (dest, tail) = std::mem::take(&mut rest)[at - end..].split_at_mut(v.len());
        (rest, end) = (tail, at + v.len());
        jobs.extend(dest.chunks_mut(HUGE_PAGE).enumerate().map(|(i, d)| (d, &**v, i * HUGE_PAGE)));
    }
    jobs.into_par_iter().for_each(|(dest, v, from)| {
        dest.copy_from_slice(&v[from..from + dest.len()]);
        v.release_part(from..from + dest.len());
    });
    let arena: Arc<dyn Backing> = Arc::new(Arena(map.make_read_only()?));
    for (v, &at) in views.iter_mut().zip(&offsets) {
        **v = SharedBytes::new(arena.clone(), start + at..start + at + v.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathering_keeps_every_byte_and_aligns_each_view() {
        let file = Arc::new((0..=255u8).cycle().take(10_000).collect::<Vec<u8>>());
        let mut a = SharedBytes::new(file.clone(), 3..1003);
        let mut b = SharedBytes::owned(vec![7; 77]);
        let mut c = SharedBytes::new(file.clone(), 9000..10_000);
        let before: Vec<Vec<u8>> = [&a, &b, &c].iter().map(|v| v.to_vec()).collect();
        gather_into_arena(&mut [&mut a, &mut b, &mut c]).unwrap();
        for (v, want) in [&a, &b, &c].iter().zip(&before) {
            assert_eq!(&v[..], &want[..]);
            assert_eq!(v.as_ptr() as usize % ALIGN, 0);
        }
        // The views share one arena, not the file.
        assert!(Arc::ptr_eq(&a.file, &c.file) && !std::ptr::addr_eq(Arc::as_ptr(&a.file), Arc::as_ptr(&file)));
        assert_eq!(a.as_ptr() as usize % HUGE_PAGE, 0);
        // Gathered again (the others left the arena, say): a fresh arena, and a view left behind in the old one
        // still reads its bytes — an arena is never released.
        gather_into_arena(&mut [&mut a, &mut c]).unwrap();
        for (v, want) in [&a, &b, &c].iter().zip(&before) {
            assert_eq!(&v[..], &want[..]);
        }
        assert!(!Arc::ptr_eq(&a.file, &b.file));
        gather_into_arena(&mut []).unwrap();
    }
}
