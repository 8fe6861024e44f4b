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
    pub fn install() -> Result<Self> {
        let (int, term, any) = (Arc::default(), Arc::default(), Arc::<AtomicBool>::default());
        for (sig, flag) in [(SIGINT, &int), (SIGTERM, &term)] {
            let code = if sig == SIGINT { Signal::Int } else { Signal::Term }.exit_code();
            // Order matters: the shutdown checks `any` before this signal sets it.
            signal_hook::flag::register_conditional_shutdown(sig, code, Arc::clone(&any))?;
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

impl Drop for Interrupt {
    fn drop(&mut self) {
        self.any.store(true, Ordering::SeqCst);
    }
}
