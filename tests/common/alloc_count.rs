//! A global allocator that counts heap allocations made by threads that opted in (`TRACK`), so tests running
//! in parallel in the same binary do not disturb the count. A test binary installs it with
//! `#[global_allocator] static ALLOC: common::alloc_count::Counting = common::alloc_count::Counting;`.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Counting;
pub static COUNT: AtomicUsize = AtomicUsize::new(0);
thread_local! { pub static TRACK: Cell<bool> = const { Cell::new(false) }; }

fn note() {
    if TRACK.with(|t| t.get()) {
        COUNT.fetch_add(1, Ordering::Relaxed);
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
    rayon::ThreadPoolBuilder::new().num_threads(1).start_handler(|_| TRACK.with(|t| t.set(true))).build().unwrap()
}

/// Heap allocations made by `f` on a counted thread (call it inside `counted_pool().install`).
pub fn allocations_in<R>(f: impl FnOnce() -> R) -> (usize, R) {
    TRACK.with(|t| t.set(true));
    COUNT.store(0, Ordering::SeqCst);
    let r = f();
    (COUNT.load(Ordering::SeqCst), r)
}
