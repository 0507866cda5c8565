//! `vm.workspace.import`: copies a host git checkout into a running VM's work disk (see
//! `crate::workspace` for the selection, the base manifest and the tree hash). Crash recovery
//! rolls it back.
//!
//! | step              | intent                                  | ensure                                                                 | undo |
//! |-------------------|-----------------------------------------|------------------------------------------------------------------------|------|
//! | `send`            | —                                       | stream the files the guest lacks (and deletions of what the host no longer has) into `--tar-receive GUEST_PATH` | nothing (the guest's files are no host resource) |
//! | `record-manifest` | file `vms/<id>/workspace-<op>.json`     | write the synced tree's base manifest (temporary file, fsync, rename)  | remove that file |
//!
//! Before the steps, under the VM's claim: the checkout is scanned (hashes reused from the
//! last base manifest where a file's identity is unchanged), the guest's manifest read, and
//! the difference planned. Only files whose (kind, mode, size, mtime, link) differ in the
//! guest are sent, so an unchanged re-import sends an empty tar. An import that would
//! overwrite (or delete) guest files changed since the last sync is refused, naming them,
//! unless forced. `WorkspaceImported` (host and guest paths, commit, tree hash, files and bytes
//! sent) commits with `OperationSucceeded`.
//!
//! Why `send` has no undo: it writes into the guest, not the host. A rolled-back import leaves
//! the guest with part of the new files, which is what the next import starts from (it
//! compares against the guest's own manifest); the VM's recorded workspace stays the previous
//! one, so status and exec's warning say the guest is not in sync.

use std::path::PathBuf;

use banger_events::{Event, Handle, OpId, OpKind, Target, VmId, VmState, WorkspaceImported};

use super::vm_common::file_handle;
use super::workspace_guest::{self, GuestLink};
use super::{BoxFuture, OpCx, OpError, OperationKind, Runner, Step, StepError, blocking};
use crate::workspace::{self as ws, BaseManifest, ImportPlan, Scan};

pub struct WorkspaceImport;

/// What a request asks.
#[derive(Clone, Debug)]
pub struct ImportRequest {
    pub vm: String,
    /// Any directory inside the checkout (absolute).
    pub host_path: PathBuf,
    /// Where in the guest; `None`: `/work/<checkout dir name>`.
    pub guest_path: Option<String>,
    pub force: bool,
}

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportSummary {
    pub host_path: String,
    pub guest_path: String,
    pub commit: String,
    pub tree_hash: String,
    /// Files and symlinks in the workspace.
    pub total_files: u64,
    /// What this import sent (an unchanged re-import sends nothing).
    pub files: u64,
    pub bytes: u64,
    pub deleted: u64,
    /// Bytes hashed on the host (files whose hash could not be reused).
    pub hashed_bytes: u64,
}

pub struct ImportState {
    pub vm_id: VmId,
    pub guest_path: String,
    pub scan: Scan,
    pub plan: ImportPlan,
    pub sent: Option<(u64, u64)>,
    pub deleted: u64,
}

const STEPS: &[&dyn Step<ImportState>] = &[&Send, &RecordManifest];

impl OperationKind for WorkspaceImport {
    const KIND: OpKind = OpKind::WorkspaceImport;
    type State = ImportState;

    fn steps() -> &'static [&'static dyn Step<ImportState>] {
        STEPS
    }

    fn finish(_: &OpCx<'_>, state: &ImportState) -> Vec<Event> {
        let (files, bytes) = state.sent.unwrap_or_default();
        vec![Event::WorkspaceImported(WorkspaceImported {
            vm_id: state.vm_id,
            host_path: state.scan.root.display().to_string(),
            guest_path: state.guest_path.clone(),
            commit: state.scan.commit.clone(),
            tree_hash: state.scan.tree_hash(),
            files,
            bytes,
        })]
    }

    fn after_failure(_: &Target) -> String {
        "the guest may hold part of the new files; the VM's recorded workspace is the previous \
         one (run the import again)"
            .to_owned()
    }
}

/// The default guest path of a checkout: `/work/<its directory's name>`.
pub fn default_guest_path(root: &std::path::Path) -> String {
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("workspace");
    format!("/work/{name}")
}

/// Checks a guest path: absolute, normalised, no `..`, not `/`.
pub fn check_guest_path(path: &str) -> Result<(), OpError> {
    let bad = |why: &str| {
        Err(OpError::InvalidArgument(format!(
            "guest path {path:?} {why}; give an absolute directory such as /work/project"
        )))
    };
    if !path.starts_with('/') {
        return bad("is not absolute");
    }
    if path.split('/').any(|c| c == ".." || c == ".") || path.contains("//") {
        return bad("is not normalised");
    }
    if path.trim_end_matches('/').is_empty() {
        return bad("is the guest's root");
    }
    if path.contains('\0') || path.len() > 4000 {
        return bad("is not a usable path");
    }
    Ok(())
}

/// The running VM called `name`, its id and its recorded workspace.
pub(crate) fn running_vm(
    runner: &Runner,
    name: &str,
) -> Result<(VmId, Option<banger_projections::WorkspaceView>), OpError> {
    let view = runner.journal().view();
    let vm = view
        .vm_by_name(name)
        .ok_or_else(|| OpError::NotFound(format!("no VM named {name}; see `banger vm list`")))?;
    if vm.state != VmState::Running {
        return Err(OpError::NotRunning(format!(
            "vm {name} is {}, not running; start it with `banger vm start {name}`",
            vm.state.as_str()
        )));
    }
    Ok((vm.id, vm.workspace.clone()))
}

/// The base manifest of a VM's recorded workspace, when its cache is there and sound.
pub(crate) fn base_of(
    runner: &Runner,
    vm_id: VmId,
    workspace: Option<&banger_projections::WorkspaceView>,
) -> Option<BaseManifest> {
    let workspace = workspace?;
    let op = workspace.manifest_op?;
    ws::read_base(
        &manifest_path(runner.layout(), vm_id, op),
        &workspace.tree_hash,
    )
}

pub(crate) fn manifest_path(layout: &crate::paths::Layout, vm_id: VmId, op: OpId) -> PathBuf {
    layout.vm_dir(vm_id).join(format!("workspace-{op}.json"))
}

pub(crate) fn link<'a>(runner: &'a Runner, vm_id: VmId, target: &Target) -> GuestLink<'a> {
    GuestLink {
        agents: runner.agents(),
        layout: runner.layout(),
        vm_id,
        transport: runner.vmm_for(target).agent_transport(),
    }
}

pub(crate) fn guest_error(name: &str, error: workspace_guest::GuestTreeError) -> OpError {
    match error {
        workspace_guest::GuestTreeError::Connect(_) => {
            OpError::Unavailable(format!("vm {name}: {error}; see `banger vm logs {name}`"))
        }
        other => OpError::Unavailable(format!("vm {name}: {other}")),
    }
}

pub(crate) fn host_error(error: ws::WorkspaceError) -> OpError {
    match error {
        ws::WorkspaceError::NotACheckout { .. } | ws::WorkspaceError::Refused(_) => {
            OpError::InvalidArgument(error.to_string())
        }
        other => OpError::Internal(other.to_string()),
    }
}

/// Removes the base manifests of a VM other than `keep` (best effort: they are a cache).
pub(crate) fn prune_manifests(layout: &crate::paths::Layout, vm_id: VmId, keep: OpId) {
    let keep = format!("workspace-{keep}.json");
    let Ok(entries) = std::fs::read_dir(layout.vm_dir(vm_id)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("workspace-") && name.ends_with(".json") && name != keep {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Handles `vm.workspace.import`.
pub async fn run(
    runner: &Runner,
    op_id: OpId,
    request: &ImportRequest,
) -> Result<ImportSummary, OpError> {
    let name = request.vm.as_str();
    let root = ws::checkout_root(&request.host_path).map_err(host_error)?;
    let guest_path = match &request.guest_path {
        Some(path) => path.trim_end_matches('/').to_owned(),
        None => default_guest_path(&root),
    };
    check_guest_path(&guest_path)?;
    let (vm_id, _) = running_vm(runner, name)?;
    let target = Target::Vm {
        vm_id,
        name: name.to_owned(),
    };
    let claim = runner.claim(op_id, OpKind::WorkspaceImport, target.clone(), Vec::new())?;
    // Decided under the claim: nothing else changes this VM's workspace meanwhile.
    let (vm_id, workspace) = running_vm(runner, name)?;
    let base = base_of(runner, vm_id, workspace.as_ref()).filter(|base| {
        base.host_path == root.display().to_string() && base.guest_path == guest_path
    });
    let link = link(runner, vm_id, &target);
    let guest = workspace_guest::manifest(link, &guest_path)
        .await
        .map_err(|e| guest_error(name, e))?;
    let scan = {
        let root = root.clone();
        let base = base.clone();
        tokio::task::spawn_blocking(move || ws::scan(&root, base.as_ref()))
            .await
            .map_err(|e| OpError::Internal(format!("scanning the checkout: {e}")))?
            .map_err(host_error)?
    };
    let plan = ws::plan_import(&scan, &guest, base.as_ref());
    if !plan.guest_changes_lost.is_empty() && !request.force {
        return Err(OpError::WrongState(format!(
            "importing into vm {name} would overwrite or delete {} file(s) changed in the guest \
             since the last sync: {}; export them first (banger vm workspace export {name}) or \
             import with --force",
            plan.guest_changes_lost.len(),
            name_some(&plan.guest_changes_lost)
        )));
    }
    let parameters = serde_json::json!({
        "host_path": root.display().to_string(),
        "guest_path": guest_path,
        "force": request.force,
    })
    .to_string();
    let state = ImportState {
        vm_id,
        guest_path,
        scan,
        plan,
        sent: None,
        deleted: 0,
    };
    let state = runner
        .run::<WorkspaceImport>(&claim, parameters, state)
        .await?;
    prune_manifests(runner.layout(), vm_id, op_id);
    let (files, bytes) = state.sent.unwrap_or_default();
    Ok(ImportSummary {
        host_path: state.scan.root.display().to_string(),
        guest_path: state.guest_path.clone(),
        commit: state.scan.commit.clone(),
        tree_hash: state.scan.tree_hash(),
        total_files: state.scan.entries.len() as u64,
        files,
        bytes,
        deleted: state.deleted,
        hashed_bytes: state.scan.hashed_bytes,
    })
}

/// Up to ten names, then how many more.
pub(crate) fn name_some(paths: &[String]) -> String {
    let mut text = paths
        .iter()
        .take(10)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > 10 {
        text.push_str(&format!(" and {} more", paths.len() - 10));
    }
    text
}

struct Send;

impl Step<ImportState> for Send {
    fn name(&self) -> &'static str {
        "send"
    }

    fn intent(&self, _: &OpCx<'_>, _: &ImportState) -> Vec<Handle> {
        Vec::new()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut ImportState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            let link = GuestLink {
                agents: cx.agents,
                layout: cx.layout,
                vm_id: state.vm_id,
                transport: cx.vmm.agent_transport(),
            };
            if state.plan.send.is_empty() && state.plan.delete.is_empty() {
                state.sent = Some((0, 0));
                return Ok(Vec::new());
            }
            let scan = state.scan.clone();
            let plan = state.plan.clone();
            let (sent, summary) = workspace_guest::receive(link, &state.guest_path, move |out| {
                ws::write_import(&scan, &plan, out).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| StepError::Other(e.to_string()))?;
            state.sent = Some(sent);
            state.deleted = summary.deleted;
            Ok(Vec::new())
        })
    }

    fn undo<'a>(
        &'a self,
        _: &'a OpCx<'a>,
        _: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async { Ok(()) })
    }
}

struct RecordManifest;

fn vm_of(target: &Target) -> Option<VmId> {
    match target {
        Target::Vm { vm_id, .. } => Some(*vm_id),
        _ => None,
    }
}

/// The base manifest file of operation `cx.op_id` (an import's or an export's).
pub(crate) fn own_manifest(cx: &OpCx<'_>) -> Option<PathBuf> {
    vm_of(cx.target).map(|vm_id| manifest_path(cx.layout, vm_id, cx.op_id))
}

/// Undoes a `record-manifest` step: removes the manifest files its handles name, and only
/// files named like a base manifest inside the VM's directory.
pub(crate) fn undo_manifest<'a>(
    cx: &'a OpCx<'a>,
    handles: &'a [Handle],
) -> BoxFuture<'a, Result<(), StepError>> {
    let vms_dir = cx.layout.vms_dir();
    let handles = handles.to_vec();
    Box::pin(blocking("removing a workspace manifest", move || {
        for handle in &handles {
            let Handle::File { path } = handle else {
                continue;
            };
            let path = PathBuf::from(path);
            let named_right = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("workspace-") && n.ends_with(".json"));
            if !named_right || !path.starts_with(&vms_dir) {
                return Err(StepError::Other(format!(
                    "refusing to remove {}: not a workspace manifest of a VM",
                    path.display()
                )));
            }
            super::store::remove_file_if_present(&path)?;
            super::store::remove_file_if_present(&path.with_extension("json.partial"))?;
        }
        Ok(())
    }))
}

impl Step<ImportState> for RecordManifest {
    fn name(&self) -> &'static str {
        "record-manifest"
    }

    fn intent(&self, cx: &OpCx<'_>, _: &ImportState) -> Vec<Handle> {
        own_manifest(cx)
            .map(|p| vec![file_handle(&p)])
            .unwrap_or_default()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut ImportState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let path = own_manifest(cx);
        let base = BaseManifest::new(
            &state.scan.root,
            &state.guest_path,
            state.scan.entries.values().cloned().collect(),
        );
        Box::pin(async move {
            let path = path.ok_or_else(|| StepError::Other("an import targets a VM".into()))?;
            let handles = vec![file_handle(&path)];
            blocking("writing the workspace manifest", move || {
                ws::write_base(&path, &base).map_err(|e| StepError::Other(e.to_string()))
            })
            .await?;
            Ok(handles)
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        undo_manifest(cx, handles)
    }
}
