//! The host's terminal while a command runs on a terminal in the guest (`vm exec -t`, the
//! shell of `vm run`): raw mode, and the terminal's size.
//!
//! In raw mode every key goes through as typed — ^C, ^Z, ^D and arrow keys are bytes for the
//! guest's terminal, whose line discipline turns them into signals, suspends and end of file
//! for the program there — and nothing is echoed here (the guest echoes).
//!
//! Invariant: the terminal's modes are put back on every way out while [`RawMode`] is held —
//! its drop (a normal return, an error, a panic that unwinds), a panic hook (a panic wherever
//! it happens, before its message is printed, so the message is readable), and the signals
//! that would otherwise end banger with the terminal left raw (SIGINT, SIGTERM, SIGHUP,
//! SIGQUIT) are caught by the caller for as long as the guard lives.

use std::io;
use std::os::fd::AsFd;
use std::sync::{Mutex, Once};

use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

/// The modes to put back, for the panic hook: set while a [`RawMode`] is held.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Stdin's terminal in raw mode; its modes come back when this is dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode.
    pub fn enter() -> io::Result<RawMode> {
        install_panic_hook();
        let stdin = io::stdin();
        let saved = tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        *SAVED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(saved.clone());
        if let Err(error) = tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw) {
            SAVED
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            return Err(error.into());
        }
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore(&self.saved);
        SAVED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
    }
}

/// Puts `modes` back on stdin's terminal; a terminal that is gone (hung up) has nothing to
/// put back.
fn restore(modes: &Termios) {
    let _ = tcsetattr(io::stdin().as_fd(), SetArg::TCSADRAIN, modes);
}

/// Restores the saved modes on a panic, then lets the usual hook print it.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // try_lock: a panic while the lock is held must not deadlock its own report.
            if let Ok(saved) = SAVED.try_lock()
                && let Some(modes) = saved.as_ref()
            {
                restore(modes);
            }
            previous(info);
        }));
    });
}

/// The size of the terminal banger runs on, as (rows, cols): stdin's, else stdout's or
/// stderr's (`-tt` with a pipe for stdin); `None` when none is a terminal with a size.
pub fn size() -> Option<(u16, u16)> {
    let (stdin, stdout, stderr) = (io::stdin(), io::stdout(), io::stderr());
    [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()]
        .into_iter()
        .filter_map(|fd| crate::agent::pty::size(fd).ok())
        .find(|&(rows, cols)| rows > 0 && cols > 0)
}

/// The terminal type to give the guest: `TERM` here, when it is one the agent takes.
pub fn term() -> Option<String> {
    std::env::var("TERM").ok().filter(|term| {
        !term.is_empty()
            && term.len() <= crate::agent::protocol::MAX_TERM_LEN
            && term.bytes().all(|b| b.is_ascii_graphic())
    })
}
