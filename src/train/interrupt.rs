//! SIGINT (Ctrl-C) and SIGTERM during training. The first one asks the step loop to finish its step, write a
//! checkpoint and stop; a second one ends the process at once. Exit codes follow the shell's 128 + signal
//! convention: 130 for SIGINT, 143 for SIGTERM.
use anyhow::Result;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
}

impl Signal {
    pub fn exit_code(self) -> i32 {
        match self {
            Signal::Int => 130,
            Signal::Term => 143,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        }
    }
}

/// Watches for the two signals while it lives. Once it is dropped, any later signal ends the process at once
/// (as the default handlers would).
pub struct Interrupt {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
    /// Set by the first signal; arms the immediate exit on the next one.
    any: Arc<AtomicBool>,
}

impl Interrupt {
    /// Installs the handlers; `resume` is the command that continues the run, which a second signal prints as it
    /// ends the process.
    pub fn install(resume: &str) -> Result<Self> {
        let (int, term, any) = (Arc::default(), Arc::default(), Arc::<AtomicBool>::default());
        // Made now: a signal handler may not allocate.
        let said: &'static [u8] =
            format!("\nstopped at once (a second signal); continue from the last checkpoint with: {resume}\n")
                .into_bytes()
                .leak();
        for (sig, flag) in [(SIGINT, &int), (SIGTERM, &term)] {
            let code = if sig == SIGINT { Signal::Int } else { Signal::Term }.exit_code();
            // Order matters: the shutdown checks `any` before this signal sets it.
            shutdown_on_second(sig, code, Arc::clone(&any), said)?;
            signal_hook::flag::register(sig, Arc::clone(&any))?;
            signal_hook::flag::register(sig, Arc::clone(flag))?;
        }
        Ok(Interrupt { int, term, any })
    }

    /// The signal received so far, if any (SIGTERM first: it usually means the machine is going away).
    pub fn requested(&self) -> Option<Signal> {
        if self.term.load(Ordering::SeqCst) {
            Some(Signal::Term)
        } else if self.int.load(Ordering::SeqCst) {
            Some(Signal::Int)
        } else {
            None
        }
    }
}

/// On signal `sig` after `armed` is set: `said` to stderr, then the process ends with `code` at once.
fn shutdown_on_second(sig: i32, code: i32, armed: Arc<AtomicBool>, said: &'static [u8]) -> Result<()> {
    #[cfg(unix)]
    {
        let action = move || {
            if armed.load(Ordering::SeqCst) {
                // SAFETY: write(2) and _exit(2) are async-signal-safe; `said` is a static buffer.
                unsafe {
                    libc::write(2, said.as_ptr().cast(), said.len());
                    libc::_exit(code);
                }
            }
        };
        // SAFETY: the action only loads an atomic and calls the two async-signal-safe functions above.
        unsafe { signal_hook::low_level::register(sig, action) }?;
    }
    #[cfg(not(unix))]
    {
        let _ = said;
        signal_hook::flag::register_conditional_shutdown(sig, code, armed)?;
    }
    Ok(())
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        self.any.store(true, Ordering::SeqCst);
    }
}
