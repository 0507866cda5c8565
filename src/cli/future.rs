//! Verbs that are in the command tree before their work exists.
//!
//! Each answers with one line, `banger <verb>: not implemented yet (arrives with <what>)`, and
//! exit status 2: nothing pretends to work, and a script or agent can tell "not there yet" (2)
//! from "it failed" (1). When a verb lands, its arm here moves to a real command module.

use super::args::SystemCommand;
use super::error::CliError;

const SYSTEMD: &str = "the systemd install";

fn later(verb: &'static str, arrives_with: &'static str) -> CliError {
    CliError::NotImplemented { verb, arrives_with }
}

pub fn system(command: &SystemCommand) -> CliError {
    match command {
        SystemCommand::Install => later("system install", SYSTEMD),
        SystemCommand::Status => later("system status", SYSTEMD),
        SystemCommand::Restart => later("system restart", SYSTEMD),
        SystemCommand::Uninstall => later("system uninstall", SYSTEMD),
    }
}
