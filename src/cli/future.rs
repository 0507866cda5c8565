//! Verbs that are in the command tree before their work exists.
//!
//! Each answers with one line, `banger <verb>: not implemented yet (arrives with <what>)`, and
//! exit status 2: nothing pretends to work, and a script or agent can tell "not there yet" (2)
//! from "it failed" (1). When a verb lands, its arm here moves to a real command module.

use super::args::{SystemCommand, VmCommand, WorkspaceCommand};
use super::error::CliError;

const AGENT: &str = "stats and ports from the guest agent";
const WORKSPACES: &str = "workspaces";
const SYSTEMD: &str = "the systemd install";

fn later(verb: &'static str, arrives_with: &'static str) -> CliError {
    CliError::NotImplemented { verb, arrives_with }
}

/// The answer of a `vm` verb that does not work yet.
pub fn vm(command: &VmCommand) -> CliError {
    match command {
        // `cli::vm` runs these itself and never sends them here.
        VmCommand::List(_)
        | VmCommand::Show(_)
        | VmCommand::Create(_)
        | VmCommand::Start(_)
        | VmCommand::Stop(_)
        | VmCommand::Restart(_)
        | VmCommand::Kill(_)
        | VmCommand::Delete(_)
        | VmCommand::Set(_)
        | VmCommand::Logs(_)
        | VmCommand::Exec(_)
        | VmCommand::Health(_)
        | VmCommand::Ping(_)
        | VmCommand::Ssh(_)
        | VmCommand::SshProxy(_)
        | VmCommand::Run(_) => {
            CliError::message("internal: this vm verb is dispatched by cli::vm, not cli::future")
        }
        VmCommand::Stats(_) => later("vm stats", AGENT),
        VmCommand::Ports(_) => later("vm ports", AGENT),
        VmCommand::Workspace(WorkspaceCommand::Import(_)) => {
            later("vm workspace import", WORKSPACES)
        }
        VmCommand::Workspace(WorkspaceCommand::Export(_)) => {
            later("vm workspace export", WORKSPACES)
        }
        VmCommand::Workspace(WorkspaceCommand::Status(_)) => {
            later("vm workspace status", WORKSPACES)
        }
    }
}

pub fn system(command: &SystemCommand) -> CliError {
    match command {
        SystemCommand::Install => later("system install", SYSTEMD),
        SystemCommand::Status => later("system status", SYSTEMD),
        SystemCommand::Restart => later("system restart", SYSTEMD),
        SystemCommand::Uninstall => later("system uninstall", SYSTEMD),
    }
}

pub fn update() -> CliError {
    later("update", "signed releases")
}
