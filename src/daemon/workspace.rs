//! `vm.workspace.import`, `vm.workspace.export` (operations: `operations/workspace_import.rs`,
//! `workspace_export.rs`) and `vm.workspace.status` (no operation: it reads the base manifest,
//! the host checkout and, unless `host_only`, the guest's manifest, and appends nothing).
//!
//! `host_only` is what `vm exec` asks before each command, so it stays cheap: no agent call, and
//! with the base manifest cached only the files whose identity changed are hashed. Without a
//! cached manifest it compares the commit alone and says so in `note`.

use std::path::PathBuf;
use std::sync::Arc;

use banger_events::Target;

use super::Daemon;
use super::dispatch::{Cx, op_error};
use super::vm::detached;
use crate::api::{
    VmName, WorkspaceExportParams, WorkspaceExportResult, WorkspaceImportParams,
    WorkspaceImportResult, WorkspaceStatusParams, WorkspaceStatusResult, WorkspaceSync,
};
use crate::operations::OpError;
use crate::operations::workspace_export::{self, ExportRequest};
use crate::operations::workspace_import::{self, ImportRequest, base_of, host_error};
use crate::rpc::protocol::RpcError;
use crate::workspace as ws;

fn check_name(name: &str) -> Result<(), RpcError> {
    VmName::parse(name)
        .map(drop)
        .map_err(|error| RpcError::invalid(error.to_string()))
}

fn absolute(path: &str, what: &str) -> Result<PathBuf, RpcError> {
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(RpcError::invalid(format!(
            "{what} {} must be absolute (the CLI makes it so)",
            path.display()
        )));
    }
    Ok(path)
}

pub async fn import(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: WorkspaceImportParams,
) -> Result<WorkspaceImportResult, RpcError> {
    check_name(&params.name)?;
    let request = ImportRequest {
        vm: params.name.clone(),
        host_path: absolute(&params.host_path, "the checkout path")?,
        guest_path: params.guest_path.clone(),
        force: params.force,
    };
    let result = detached(
        &daemon,
        &cx,
        &params.name,
        move |daemon: Arc<Daemon>, op_id| async move {
            workspace_import::run(&daemon.runner, op_id, &request).await
        },
    )
    .await?;
    if let Some(vm) = daemon
        .journal
        .view()
        .vm_by_name(&params.name)
        .map(|vm| vm.id)
    {
        daemon.touch_vm(vm);
    }
    Ok(result)
}

pub async fn export(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: WorkspaceExportParams,
) -> Result<WorkspaceExportResult, RpcError> {
    check_name(&params.name)?;
    let request = ExportRequest {
        vm: params.name.clone(),
        host_path: params
            .host_path
            .as_deref()
            .map(|p| absolute(p, "the checkout path"))
            .transpose()?,
        force: params.force,
    };
    detached(
        &daemon,
        &cx,
        &params.name,
        move |daemon: Arc<Daemon>, op_id| async move {
            workspace_export::run(&daemon.runner, op_id, &request).await
        },
    )
    .await
}

pub async fn status(
    daemon: Arc<Daemon>,
    _: Cx,
    params: WorkspaceStatusParams,
) -> Result<WorkspaceStatusResult, RpcError> {
    check_name(&params.name)?;
    let name = params.name.clone();
    let (vm_id, workspace, running) = {
        let view = daemon.journal.view();
        let vm = view.vm_by_name(&name).ok_or_else(|| {
            op_error(OpError::NotFound(format!(
                "no VM named {name}; see `banger vm list`"
            )))
        })?;
        (
            vm.id,
            vm.workspace.clone(),
            vm.state == banger_events::VmState::Running,
        )
    };
    let mut result = WorkspaceStatusResult {
        name: name.clone(),
        state: WorkspaceSync::None,
        host_path: String::new(),
        guest_path: String::new(),
        commit: String::new(),
        host_commit: String::new(),
        guest_changed: Vec::new(),
        host_changed: Vec::new(),
        guest_checked: false,
        imported_at_unix_ms: 0,
        note: None,
    };
    let Some(workspace) = workspace else {
        return Ok(result);
    };
    result.host_path = workspace.host_path.clone();
    result.guest_path = workspace.guest_path.clone();
    result.commit = workspace.commit.clone();
    result.imported_at_unix_ms = workspace.imported_at_unix_ms;
    let root = PathBuf::from(&workspace.host_path);
    let base = base_of(&daemon.runner, vm_id, Some(&workspace));
    let Some(base) = base else {
        let root = root.clone();
        result.host_commit = tokio::task::spawn_blocking(move || ws::head_commit(&root))
            .await
            .unwrap_or_default();
        result.state = if result.host_commit == result.commit {
            WorkspaceSync::InSync
        } else {
            WorkspaceSync::HostAhead
        };
        result.note = Some(
            "bangerd has no manifest of the last sync cached: only the commit was compared".into(),
        );
        return Ok(result);
    };
    if params.host_only || !running {
        let scan = {
            let base = base.clone();
            tokio::task::spawn_blocking(move || ws::scan(&root, Some(&base)))
                .await
                .map_err(|e| RpcError::internal(format!("scanning the checkout: {e}")))?
                .map_err(|e| op_error(host_error(e)))?
        };
        result.host_commit = scan.commit.clone();
        let host_changed: Vec<String> = ws::compare(
            &base,
            &scan,
            &banger_agent::tool_tree::TreeManifest {
                exists: true,
                entries: Vec::new(),
            },
            &Default::default(),
        )
        .host_changed
        .into_iter()
        .collect();
        result.host_changed = host_changed;
        result.state = if result.host_changed.is_empty() && result.host_commit == result.commit {
            WorkspaceSync::InSync
        } else {
            WorkspaceSync::HostAhead
        };
        if !running && !params.host_only {
            result.note = Some(format!(
                "vm {name} is not running: the guest's side was not looked at"
            ));
        }
        return Ok(result);
    }
    let target = Target::Vm {
        vm_id,
        name: name.clone(),
    };
    let compared = workspace_export::compare(&daemon.runner, vm_id, &target, &root, &base, &name)
        .await
        .map_err(op_error)?;
    result.host_commit = compared.scan.commit.clone();
    result.guest_checked = true;
    result.guest_changed = compared.comparison.guest_changed.into_iter().collect();
    result.host_changed = compared.comparison.host_changed.into_iter().collect();
    result.state = match (
        result.guest_changed.is_empty(),
        result.host_changed.is_empty(),
    ) {
        (true, true) => WorkspaceSync::InSync,
        (false, true) => WorkspaceSync::GuestAhead,
        (true, false) => WorkspaceSync::HostAhead,
        (false, false) => WorkspaceSync::Diverged,
    };
    Ok(result)
}
