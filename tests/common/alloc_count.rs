//! A global allocator that counts heap allocations made by threads that opted in (`TRACK`), so tests running
//! in parallel in the same binary do not disturb the count. A test binary installs it with
//! `#[global_allocator] static ALLOC: common::alloc_count::Counting = common::alloc_count::Counting;`.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Counting;
thread_local! {
    /// Whether this thread's allocations are counted, and how many it made. Per thread, so two tests of one
    /// binary counting at the same time do not see each other's allocations.
    pub static TRACK: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}
/// Allocations of every counted thread together (for tests whose work spreads over several threads; such tests
/// must not run at the same time as each other).
pub static TOTAL: AtomicUsize = AtomicUsize::new(0);

fn note() {
    if TRACK.with(|t| t.get()) {
        COUNT.with(|c| c.set(c.get() + 1));
        TOTAL.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

/// A one-thread rayon pool whose thread is counted. One worker: the same code paths run (rayon still splits the
/// work), but no work-stealing, whose bookkeeping (crossbeam's epoch registration of a thread that steals for
/// the first time) may allocate at moments independent of the code under test.
pub fn counted_pool() -> rayon::ThreadPool {
    counted_pool_of(1)
}

/// A rayon pool of `threads` counted threads.
pub fn counted_pool_of(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).start_handler(|_| TRACK.with(|t| t.set(true))).build().unwrap()
}

/// Heap allocations made by `f` on this thread (call it inside `counted_pool().install`, whose one thread runs
/// all the parallel work too).
pub fn allocations_in<R>(f: impl FnOnce() -> R) -> (usize, R) {
    TRACK.with(|t| t.set(true));
    COUNT.with(|c| c.set(0));
    let r = f();
    (COUNT.with(|c| c.get()), r)
}
