//! `banger vm workspace import|export|status`, and the two places other verbs use workspaces:
//! `vm run` importing the checkout it was started in ([`import_for_run`]) and `vm exec`'s
//! one-line warning when the VM's copy is older than the host checkout ([`warn_if_stale`]).
//!
//! The CLI sends absolute paths; bangerd (the same user, on the same host) reads the checkout
//! itself and streams it to the guest agent, so no file content crosses the CLI's socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::args::{
    WorkspaceCommand, WorkspaceExportArgs, WorkspaceImportArgs, WorkspaceStatusArgs,
};
use super::connect::call;
use super::error::CliError;
use super::output::{json, line};
use crate::api::{
    VmName, WorkspaceExportParams, WorkspaceExportResult, WorkspaceImportParams,
    WorkspaceImportResult, WorkspaceStatusParams, WorkspaceStatusResult, WorkspaceSync,
};
use crate::size::format_bytes;

pub async fn run(command: WorkspaceCommand) -> Result<(), CliError> {
    match command {
        WorkspaceCommand::Import(args) => import(args).await,
        WorkspaceCommand::Export(args) => export(args).await,
        WorkspaceCommand::Status(args) => status(args).await,
    }
}

fn absolute(path: Option<PathBuf>) -> Result<PathBuf, CliError> {
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::message(format!("cannot read the current directory: {e}")))?;
    Ok(match path {
        Some(path) if path.is_absolute() => path,
        Some(path) => cwd.join(path),
        None => cwd,
    })
}

fn text(path: &Path) -> Result<String, CliError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| CliError::message(format!("{} is not UTF-8", path.display())))
}

async fn import(args: WorkspaceImportArgs) -> Result<(), CliError> {
    let result = import_call(
        &args.name,
        &absolute(args.path)?,
        args.guest_path,
        args.force,
    )
    .await?;
    if args.json {
        return json(&result);
    }
    line(import_line(&args.name, &result))
}

async fn import_call(
    name: &VmName,
    host_path: &Path,
    guest_path: Option<String>,
    force: bool,
) -> Result<WorkspaceImportResult, CliError> {
    call(
        "vm.workspace.import",
        &WorkspaceImportParams {
            name: name.to_string(),
            host_path: text(host_path)?,
            guest_path,
            force,
        },
    )
    .await
}

fn import_line(name: &VmName, result: &WorkspaceImportResult) -> String {
    let commit = if result.commit.is_empty() {
        "no commit".to_owned()
    } else {
        format!("commit {}", &result.commit[..result.commit.len().min(12)])
    };
    let sent = if result.files == 0 && result.deleted == 0 {
        "unchanged, nothing sent".to_owned()
    } else {
        format!(
            "{} file(s), {} sent{}",
            result.files,
            format_bytes(result.bytes),
            if result.deleted > 0 {
                format!(", {} deleted", result.deleted)
            } else {
                String::new()
            }
        )
    };
    format!(
        "imported {} into {name}:{} ({} files, {commit}; {sent})",
        result.host_path, result.guest_path, result.total_files
    )
}

async fn export(args: WorkspaceExportArgs) -> Result<(), CliError> {
    let host_path = match args.path {
        Some(path) => Some(text(&absolute(Some(path))?)?),
        None => None,
    };
    let result: WorkspaceExportResult = call(
        "vm.workspace.export",
        &WorkspaceExportParams {
            name: args.name.to_string(),
            host_path,
            force: args.force,
        },
    )
    .await?;
    if args.json {
        return json(&result);
    }
    if result.written.is_empty() && result.deleted.is_empty() {
        return line(format!(
            "nothing to export: {}:{} has no changes since the last sync",
            args.name, result.guest_path
        ));
    }
    let mut lines = vec![format!(
        "exported {}:{} into {}: {} written, {} deleted",
        args.name,
        result.guest_path,
        result.host_path,
        result.written.len(),
        result.deleted.len()
    )];
    lines.extend(result.written.iter().map(|p| format!("  M {p}")));
    lines.extend(result.deleted.iter().map(|p| format!("  D {p}")));
    if !result.overwritten.is_empty() {
        lines.push(format!(
            "  (--force: {} host change(s) overwritten)",
            result.overwritten.len()
        ));
    }
    line(lines.join("\n"))
}

async fn status(args: WorkspaceStatusArgs) -> Result<(), CliError> {
    let result: WorkspaceStatusResult = call(
        "vm.workspace.status",
        &WorkspaceStatusParams {
            name: args.name.to_string(),
            host_only: false,
        },
    )
    .await?;
    if args.json {
        return json(&result);
    }
    if result.state == WorkspaceSync::None {
        return line(format!(
            "{}: no workspace imported (banger vm workspace import {} in a checkout)",
            args.name, args.name
        ));
    }
    let mut lines = vec![format!(
        "{}: {} ({} <-> {}:{})",
        args.name,
        result.state.as_str(),
        result.host_path,
        args.name,
        result.guest_path
    )];
    if result.commit != result.host_commit {
        lines.push(format!(
            "  imported at commit {}, the checkout is at {}",
            short(&result.commit),
            short(&result.host_commit)
        ));
    }
    for (side, paths) in [
        ("guest", &result.guest_changed),
        ("host", &result.host_changed),
    ] {
        if !paths.is_empty() {
            lines.push(format!("  changed in the {side}: {}", paths.len()));
            lines.extend(paths.iter().take(20).map(|p| format!("    {p}")));
            if paths.len() > 20 {
                lines.push(format!("    … and {} more", paths.len() - 20));
            }
        }
    }
    if let Some(note) = &result.note {
        lines.push(format!("  note: {note}"));
    }
    line(lines.join("\n"))
}

fn short(commit: &str) -> &str {
    if commit.is_empty() {
        "(none)"
    } else {
        &commit[..commit.len().min(12)]
    }
}

/// `vm run`'s import: when the current directory is in a git checkout, import it and return
/// its guest path (the command's working directory). Outside a checkout: `None`, silently.
pub async fn import_for_run(name: &VmName) -> Result<Option<String>, CliError> {
    let cwd = absolute(None)?;
    if crate::workspace::checkout_root(&cwd).is_err() {
        return Ok(None);
    }
    let result = import_call(name, &cwd, None, false).await?;
    eprintln!("{}", import_line(name, &result));
    Ok(Some(result.guest_path))
}

/// `vm exec`'s warning: one line on stderr when the VM's workspace is older than the host
/// checkout it came from. Cheap (no guest call) and silent on any error or after a second.
pub async fn warn_if_stale(name: &VmName) {
    let params = WorkspaceStatusParams {
        name: name.to_string(),
        host_only: true,
    };
    let ask = call::<_, WorkspaceStatusResult>("vm.workspace.status", &params);
    let Ok(Ok(result)) = tokio::time::timeout(Duration::from_secs(1), ask).await else {
        return;
    };
    if result.state == WorkspaceSync::HostAhead {
        let what = if result.host_changed.is_empty() {
            format!("its commit moved to {}", short(&result.host_commit))
        } else {
            format!("{} file(s) changed", result.host_changed.len())
        };
        eprintln!(
            "banger: warning: {name}'s workspace {} is older than {} ({what}); `banger vm workspace import {name}` to update it",
            result.guest_path, result.host_path
        );
    }
}
