//! What can go wrong in a CLI command, how it is printed, and which exit status it gives.
//!
//! Exit statuses: 0 success, 1 failure, 2 usage errors (so that a script can tell "you asked
//! for something that does not exist" from "it failed"), 3 `system install` that installed
//! but could not start the services. An error is printed once, as one line: `banger: error: ` followed by its chain of
//! causes; an RPC error ends with its stable code in brackets, e.g. `[not_found]`.

use std::error::Error as StdError;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::rpc::{ClientError, ErrorCode};

pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `system install` wrote the units and the metadata but could not start the services
    /// (no systemd here): status 3, so that a script can tell "installed, not running" from
    /// a failure.
    #[error("{0}")]
    NotStarted(String),
    /// Input that the command line parser could not catch (a path that does not exist, an
    /// ambiguous id prefix).
    #[error("{0}")]
    Usage(String),
    /// Nothing answers on the socket and bangerd was not (or could not be) started.
    #[error("{message}")]
    DaemonUnavailable { message: String },
    /// A call to bangerd failed: the daemon said no (with a code), or the connection broke.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing to stdout failed. A closed pipe (`banger events | head`) is not an error.
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    /// A command run in a VM (`vm exec`) ended unsuccessfully: banger exits with the same
    /// status (128 + N for signal N), quietly, as a shell would.
    #[error("the command exited with status {code}")]
    CommandStatus { code: i32 },
    /// A command that reports problems itself (`banger doctor`) found some: status 1,
    /// quietly, since its output already says what they are.
    #[error("{count} problem(s) found")]
    ProblemsFound { count: usize },
    /// Anything else, with what was being done and why it failed.
    #[error("{context}")]
    Failed {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl CliError {
    pub fn failed(context: impl Into<String>, source: impl Into<BoxError>) -> CliError {
        CliError::Failed {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    pub fn message(context: impl Into<String>) -> CliError {
        CliError::Failed {
            context: context.into(),
            source: None,
        }
    }

    pub fn not_found_path(what: &str, path: PathBuf) -> CliError {
        CliError::Usage(format!("{what} {} does not exist", path.display()))
    }

    /// The RPC error code, when bangerd answered with an error.
    pub fn rpc_code(&self) -> Option<ErrorCode> {
        match self {
            CliError::Client(ClientError::Rpc(error)) => Some(error.code),
            _ => None,
        }
    }

    /// True when the command should end quietly with success: its reader went away.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(error) if error.kind() == std::io::ErrorKind::BrokenPipe)
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            _ if self.is_broken_pipe() => ExitCode::SUCCESS,
            CliError::Usage(_) => ExitCode::from(2),
            CliError::NotStarted(_) => ExitCode::from(3),
            // Statuses outside 1..=255 cannot be an exit status; they still mean failure.
            CliError::CommandStatus { code } => match u8::try_from(*code) {
                Ok(status) if status != 0 => ExitCode::from(status),
                _ => ExitCode::FAILURE,
            },
            _ => ExitCode::FAILURE,
        }
    }

    /// The text to print on stderr, without a trailing newline; `None` for nothing at all.
    pub fn report(&self) -> Option<String> {
        match self {
            _ if self.is_broken_pipe() => None,
            // The command already said what it had to say on its own stderr.
            CliError::CommandStatus { .. } => None,
            // The command's own output lists the problems.
            CliError::ProblemsFound { .. } => None,
            // Not an error of banger's: the install is in place.
            CliError::NotStarted(message) => Some(format!("banger: {message}")),
            _ => Some(format!("banger: error: {}", chain(self))),
        }
    }
}

/// The error and its causes on one line, joined by ": ". A cause whose text its parent
/// already quotes (the usual `"cannot open X: {source}"` style) is not repeated.
pub fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let part = current.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::RpcError;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn the_chain_is_printed_once() {
        let io = std::io::Error::other("disk on fire");
        let error = CliError::failed("cannot import kernel k1", Quoting(io));
        assert_eq!(
            error.report().as_deref(),
            Some("banger: error: cannot import kernel k1: outer: disk on fire")
        );
    }

    #[test]
    fn rpc_errors_carry_their_code() {
        let error = CliError::Client(ClientError::Rpc(RpcError::not_found(
            "no image named x; see `banger image list`",
        )));
        assert_eq!(error.rpc_code(), Some(ErrorCode::NotFound));
        assert_eq!(
            error.report().as_deref(),
            Some("banger: error: no image named x; see `banger image list` [not_found]")
        );
        assert_eq!(error.exit_code(), ExitCode::FAILURE);
    }

    #[test]
    fn an_install_that_could_not_start_has_its_own_status() {
        let error = CliError::NotStarted("installed but not started: no systemd".into());
        assert_eq!(
            error.report().as_deref(),
            Some("banger: installed but not started: no systemd")
        );
        assert_eq!(error.exit_code(), ExitCode::from(3));
    }

    #[test]
    fn a_closed_pipe_ends_quietly() {
        let error = CliError::Output(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(error.report(), None);
        assert_eq!(error.exit_code(), ExitCode::SUCCESS);
    }
}
