//! How the CLI shows a kernel pull's progress items (`kernel pull`, and `vm create`/`vm run`
//! when they pull their kernel on first use): on a terminal, one line rewritten in place with
//! the bytes downloaded; otherwise plain lines (the start, every tenth, the end), so a log
//! stays readable. Then "converting" (or "unpacking") while the bundle is made.

use std::io::{IsTerminal, Write};

use super::error::CliError;
use crate::api::KernelPullProgress;
use crate::kernel::catalog::KIND_DEBIAN_PACKAGE;
use crate::size::format_bytes;

/// Where the lines go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
}

pub struct PullDisplay {
    sink: Sink,
    terminal: bool,
    /// The download being shown: (kernel, tenths already printed).
    download: Option<(String, u64)>,
    /// A terminal line is open (written with `\r`, no newline yet).
    open_line: bool,
}

impl PullDisplay {
    pub fn new(sink: Sink) -> PullDisplay {
        let terminal = match sink {
            Sink::Stdout => std::io::stdout().is_terminal(),
            Sink::Stderr => std::io::stderr().is_terminal(),
        };
        PullDisplay {
            sink,
            terminal,
            download: None,
            open_line: false,
        }
    }

    /// Shows one progress item.
    pub fn show(&mut self, item: &KernelPullProgress) -> Result<(), CliError> {
        match item {
            KernelPullProgress::KernelDownload {
                name,
                url,
                done_bytes,
                total_bytes,
            } => {
                let total = (*total_bytes).max(1);
                let tenths = done_bytes.saturating_mul(10) / total;
                let percent = done_bytes.saturating_mul(100) / total;
                let started = self.download.as_ref().is_some_and(|(n, _)| n == name);
                if !started {
                    self.end_line()?;
                    self.write(&format!(
                        "pulling kernel {name}: downloading {} from {url}\n",
                        format_bytes(*total_bytes)
                    ))?;
                    self.download = Some((name.clone(), 0));
                }
                let printed = self.download.as_ref().map_or(0, |(_, t)| *t);
                if self.terminal {
                    self.write(&format!(
                        "\r  {} of {} ({percent}%)   ",
                        format_bytes(*done_bytes),
                        format_bytes(*total_bytes)
                    ))?;
                    self.open_line = true;
                } else if tenths > printed {
                    self.write(&format!(
                        "  {} of {} ({percent}%)\n",
                        format_bytes(*done_bytes),
                        format_bytes(*total_bytes)
                    ))?;
                }
                if let Some((_, shown)) = &mut self.download {
                    *shown = (*shown).max(tenths);
                }
                Ok(())
            }
            KernelPullProgress::KernelConvert { name, kind } => {
                self.end_line()?;
                self.download = None;
                let what = if kind == KIND_DEBIAN_PACKAGE {
                    "converting the Debian package into a bundle (vmlinux, initrd, modules)"
                } else {
                    "unpacking the bundle"
                };
                self.write(&format!("pulling kernel {name}: {what}…\n"))
            }
        }
    }

    /// Shows a stream item if it is a kernel pull's; other items (of other kinds of progress)
    /// are left alone.
    pub fn show_value(&mut self, item: &serde_json::Value) -> Result<(), CliError> {
        match serde_json::from_value::<KernelPullProgress>(item.clone()) {
            Ok(item) => self.show(&item),
            Err(_) => Ok(()),
        }
    }

    /// Ends an open terminal line.
    pub fn end_line(&mut self) -> Result<(), CliError> {
        if self.open_line {
            self.open_line = false;
            self.write("\n")?;
        }
        Ok(())
    }

    fn write(&self, text: &str) -> Result<(), CliError> {
        let result = match self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            }
            Sink::Stderr => {
                let mut err = std::io::stderr().lock();
                err.write_all(text.as_bytes()).and_then(|()| err.flush())
            }
        };
        result.map_err(CliError::Output)
    }
}
