//! `vm.workspace.export`: brings a VM's workspace changes back into the host checkout it was
//! imported from. The guest is untrusted: its tar goes through the hardened extraction into a
//! staging directory inside the checkout, and only the paths asked for are applied. Crash
//! recovery rolls it back (the host files it replaced are put back).
//!
//! | step              | intent                                   | ensure                                                                 | undo |
//! |-------------------|------------------------------------------|------------------------------------------------------------------------|------|
//! | `fetch`           | dir `<checkout>/.banger-export-<op>`     | the guest's changed files (`--tar-send --paths-from-stdin`) extracted under its `new/` (no `..`, nothing absolute, no symlink out of the checkout or written through, no device, at most 1 GiB a file), and `plan.json`: what to write and delete | remove the directory |
//! | `apply`           | dir `<checkout>/.banger-export-<op>`     | each staged file renamed into the checkout, the file it replaces moved to `backup/` first; each deletion moved to `backup/` (`workspace::apply_export`, idempotent) | put every backup back and the applied files into `new/` (`unapply_export`) |
//! | `record-manifest` | file `vms/<id>/workspace-<op>.json`      | the new base: the old one with the exported paths as the host now has them | remove that file |
//!
//! What is exported, decided under the VM's claim before the steps: every path the guest
//! changed, added or deleted since the last sync (its manifest against the base), leaving out
//! new guest paths the checkout ignores (build output). A path the host also changed since the
//! sync is a conflict: the export is refused, naming them all, unless `--force` (the guest
//! wins). A file deleted in the guest is deleted on the host (it was in the import and the
//! host did not change it since, or it would be a conflict). After success the staging
//! directory is removed and `WorkspaceExported` (paths written, the synced tree's new hash)
//! commits with `OperationSucceeded`. An export needs the base manifest of the VM's recorded
//! workspace: without it (no import, or the cache is gone) it is refused with the way on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use banger_agent::tar_stream::Limits;
use banger_agent::tool_tree::ExtractOptions;
use banger_events::{Event, Handle, OpId, OpKind, Target, VmId, WorkspaceExported};

use super::store::dir_handle;
use super::vm_common::file_handle;
use super::workspace_guest::{self, GuestLink};
use super::workspace_import::{
    base_of, guest_error, host_error, link, name_some, own_manifest, prune_manifests, running_vm,
    undo_manifest,
};
use super::{BoxFuture, OpCx, OpError, OperationKind, Runner, Step, StepError, blocking};
use crate::workspace::{self as ws, BaseManifest, ExportPlan};

pub struct WorkspaceExport;

#[derive(Clone, Debug)]
pub struct ExportRequest {
    pub vm: String,
    /// The checkout to export into; `None`: the one the workspace was imported from.
    pub host_path: Option<PathBuf>,
    pub force: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportSummary {
    pub host_path: String,
    pub guest_path: String,
    pub written: Vec<String>,
    pub deleted: Vec<String>,
    /// Host changes the export overwrote (`--force` only).
    pub overwritten: Vec<String>,
    pub tree_hash: String,
}

pub struct ExportState {
    pub vm_id: VmId,
    pub root: PathBuf,
    pub guest_path: String,
    pub base: BaseManifest,
    /// Guest paths to fetch (changed or new in the guest).
    pub fetch: Vec<String>,
    /// Paths the guest deleted.
    pub deleted_in_guest: Vec<String>,
    pub plan: Option<ExportPlan>,
    pub new_base: Option<BaseManifest>,
}

const STEPS: &[&dyn Step<ExportState>] = &[&Fetch, &Apply, &RecordManifest];

impl OperationKind for WorkspaceExport {
    const KIND: OpKind = OpKind::WorkspaceExport;
    type State = ExportState;

    fn steps() -> &'static [&'static dyn Step<ExportState>] {
        STEPS
    }

    fn finish(_: &OpCx<'_>, state: &ExportState) -> Vec<Event> {
        let plan = state.plan.clone().unwrap_or_default();
        vec![Event::WorkspaceExported(WorkspaceExported {
            vm_id: state.vm_id,
            host_path: state.root.display().to_string(),
            guest_path: state.guest_path.clone(),
            files_written: (plan.writes.len() + plan.deletes.len()) as u64,
            tree_hash: state
                .new_base
                .as_ref()
                .map(|b| b.tree_hash.clone())
                .unwrap_or_default(),
        })]
    }

    fn after_failure(_: &Target) -> String {
        "the checkout's files were put back as they were".to_owned()
    }
}

/// Handles `vm.workspace.export`.
pub async fn run(
    runner: &Runner,
    op_id: OpId,
    request: &ExportRequest,
) -> Result<ExportSummary, OpError> {
    let name = request.vm.as_str();
    let (vm_id, _) = running_vm(runner, name)?;
    let target = Target::Vm {
        vm_id,
        name: name.to_owned(),
    };
    let claim = runner.claim(op_id, OpKind::WorkspaceExport, target.clone(), Vec::new())?;
    let (vm_id, workspace) = running_vm(runner, name)?;
    let Some(recorded) = workspace.clone() else {
        return Err(OpError::WrongState(format!(
            "vm {name} has no workspace to export; import one first (banger vm workspace import {name})"
        )));
    };
    let root = match &request.host_path {
        Some(path) => ws::checkout_root(path).map_err(host_error)?,
        None => PathBuf::from(&recorded.host_path),
    };
    if root.display().to_string() != recorded.host_path {
        return Err(OpError::InvalidArgument(format!(
            "vm {name}'s workspace was imported from {}, not {}; export into that checkout",
            recorded.host_path,
            root.display()
        )));
    }
    let Some(base) = base_of(runner, vm_id, workspace.as_ref()) else {
        return Err(OpError::WrongState(format!(
            "bangerd has no manifest of vm {name}'s last workspace sync (its cache under the VM's \
             directory is gone), so it cannot tell guest changes from host ones; import again \
             (banger vm workspace import {name} {}) — after exporting what you need by hand",
            recorded.host_path
        )));
    };
    let comparison = compare(runner, vm_id, &target, &root, &base, name).await?;
    let conflicts = comparison.comparison.conflicts();
    if !conflicts.is_empty() && !request.force {
        return Err(OpError::WrongState(format!(
            "refusing to overwrite {} host file(s) changed since the import: {}; export with \
             --force to let the guest's version win, or keep the host's and re-import",
            conflicts.len(),
            name_some(&conflicts)
        )));
    }
    let guest_now: BTreeSet<String> = comparison.guest_entries;
    let (fetch, deleted_in_guest): (Vec<String>, Vec<String>) = comparison
        .comparison
        .guest_changed
        .iter()
        .cloned()
        .partition(|path| guest_now.contains(path));
    let parameters = serde_json::json!({
        "host_path": root.display().to_string(),
        "guest_path": recorded.guest_path,
        "force": request.force,
    })
    .to_string();
    let state = ExportState {
        vm_id,
        root,
        guest_path: recorded.guest_path.clone(),
        base,
        fetch,
        deleted_in_guest,
        plan: None,
        new_base: None,
    };
    let state = runner
        .run::<WorkspaceExport>(&claim, parameters, state)
        .await?;
    let staging = ws::staging_dir(&state.root, &op_id.to_string());
    let _ = std::fs::remove_dir_all(&staging);
    prune_manifests(runner.layout(), vm_id, op_id);
    let plan = state.plan.clone().unwrap_or_default();
    Ok(ExportSummary {
        host_path: state.root.display().to_string(),
        guest_path: state.guest_path.clone(),
        written: plan.writes,
        deleted: plan.deletes,
        overwritten: conflicts,
        tree_hash: state
            .new_base
            .as_ref()
            .map(|b| b.tree_hash.clone())
            .unwrap_or_default(),
    })
}

/// A comparison with the guest's current paths beside it.
pub(crate) struct Compared {
    pub comparison: ws::Comparison,
    pub guest_entries: BTreeSet<String>,
    pub scan: ws::Scan,
}

/// Compares the base with the host and the guest now.
pub(crate) async fn compare(
    runner: &Runner,
    vm_id: VmId,
    target: &Target,
    root: &Path,
    base: &BaseManifest,
    name: &str,
) -> Result<Compared, OpError> {
    let guest = workspace_guest::manifest(link(runner, vm_id, target), &base.guest_path)
        .await
        .map_err(|e| guest_error(name, e))?;
    let root = root.to_path_buf();
    let base = base.clone();
    tokio::task::spawn_blocking(move || {
        let scan = ws::scan(&root, Some(&base))?;
        let new_paths = ws::guest_new_paths(Some(&base), &guest);
        let ignored = ws::ignored(&root, &new_paths)?;
        let comparison = ws::compare(&base, &scan, &guest, &ignored);
        let guest_entries = guest.entries.into_iter().map(|e| e.path).collect();
        Ok(Compared {
            comparison,
            guest_entries,
            scan,
        })
    })
    .await
    .map_err(|e| OpError::Internal(format!("comparing the workspace: {e}")))?
    .map_err(host_error)
}

fn staging_of(cx: &OpCx<'_>, state: &ExportState) -> PathBuf {
    ws::staging_dir(&state.root, &cx.op_id.to_string())
}

/// The staging directory a handle names, checked to be one.
fn staging_from(handles: &[Handle]) -> Result<Option<PathBuf>, StepError> {
    for handle in handles {
        if let Handle::Directory { path } = handle {
            let path = PathBuf::from(path);
            if !ws::is_staging_dir(&path) {
                return Err(StepError::Other(format!(
                    "refusing to undo {}: not an export staging directory",
                    path.display()
                )));
            }
            return Ok(Some(path));
        }
    }
    Ok(None)
}

struct Fetch;

impl Step<ExportState> for Fetch {
    fn name(&self) -> &'static str {
        "fetch"
    }

    fn intent(&self, cx: &OpCx<'_>, state: &ExportState) -> Vec<Handle> {
        vec![dir_handle(&staging_of(cx, state))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut ExportState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            let staging = staging_of(cx, state);
            let handles = vec![dir_handle(&staging)];
            let new = staging.join("new");
            {
                let staging = staging.clone();
                let new = new.clone();
                blocking("making the export's staging directory", move || {
                    super::store::remove_dir_if_present(&staging)?;
                    std::fs::create_dir_all(&new)
                        .map_err(|e| StepError::io(format!("creating {}", new.display()), e))
                })
                .await?;
            }
            let options = ExtractOptions {
                limits: Limits {
                    max_file_bytes: ws::EXPORT_MAX_FILE_BYTES,
                    max_entries: ws::EXPORT_MAX_ENTRIES,
                    ..Limits::default()
                },
                allow_escaping_symlinks: false,
                list_paths: true,
            };
            let link = GuestLink {
                agents: cx.agents,
                layout: cx.layout,
                vm_id: state.vm_id,
                transport: cx.vmm.agent_transport(),
            };
            let summary = if state.fetch.is_empty() {
                Default::default()
            } else {
                workspace_guest::fetch(link, &state.guest_path, &state.fetch, &new, options)
                    .await
                    .map_err(|e| StepError::Other(e.to_string()))?
            };
            // The guest answers for exactly what was asked; anything else is refused whole.
            let asked: BTreeSet<&str> = state.fetch.iter().map(String::as_str).collect();
            if let Some(extra) = summary
                .written
                .iter()
                .chain(&summary.deletions)
                .find(|p| !asked.contains(p.as_str()))
            {
                return Err(StepError::Other(format!(
                    "the guest sent {extra:?}, which was not asked for; nothing was exported"
                )));
            }
            let mut deletes = state.deleted_in_guest.clone();
            // Deleted between the manifest and the fetch: the tool says so.
            deletes.extend(summary.deletions.iter().cloned());
            deletes.sort();
            deletes.dedup();
            let plan = ExportPlan {
                writes: summary.written.clone(),
                deletes,
            };
            {
                let staging = staging.clone();
                let plan = plan.clone();
                blocking("writing the export's plan", move || {
                    ws::write_plan(&staging, &plan).map_err(|e| StepError::Other(e.to_string()))
                })
                .await?;
            }
            state.plan = Some(plan);
            Ok(handles)
        })
    }

    fn undo<'a>(
        &'a self,
        _: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        let staging = staging_from(handles);
        Box::pin(blocking(
            "removing the export's staging directory",
            move || match staging? {
                Some(staging) => super::store::remove_dir_if_present(&staging),
                None => Ok(()),
            },
        ))
    }
}

struct Apply;

impl Step<ExportState> for Apply {
    fn name(&self) -> &'static str {
        "apply"
    }

    fn intent(&self, cx: &OpCx<'_>, state: &ExportState) -> Vec<Handle> {
        vec![dir_handle(&staging_of(cx, state))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut ExportState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let staging = staging_of(cx, state);
        let root = state.root.clone();
        Box::pin(async move {
            let handles = vec![dir_handle(&staging)];
            blocking("applying the export", move || {
                ws::apply_export(&root, &staging).map_err(|e| StepError::Other(e.to_string()))
            })
            .await?;
            Ok(handles)
        })
    }

    fn undo<'a>(
        &'a self,
        _: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        let staging = staging_from(handles);
        Box::pin(blocking(
            "putting the checkout's files back",
            move || match staging? {
                Some(staging) => {
                    ws::unapply_export(&staging).map_err(|e| StepError::Other(e.to_string()))
                }
                None => Ok(()),
            },
        ))
    }
}

struct RecordManifest;

impl Step<ExportState> for RecordManifest {
    fn name(&self) -> &'static str {
        "record-manifest"
    }

    fn intent(&self, cx: &OpCx<'_>, _: &ExportState) -> Vec<Handle> {
        own_manifest(cx)
            .map(|p| vec![file_handle(&p)])
            .unwrap_or_default()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut ExportState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let path = own_manifest(cx);
        let root = state.root.clone();
        let guest_path = state.guest_path.clone();
        let base = state.base.clone();
        let plan = state.plan.clone().unwrap_or_default();
        Box::pin(async move {
            let path = path.ok_or_else(|| StepError::Other("an export targets a VM".into()))?;
            let handles = vec![file_handle(&path)];
            let new_base = blocking("writing the workspace manifest", move || {
                // The exported paths as the host has them now (their mtimes are the guest's).
                let rescanned = ws::scan_paths(&root, plan.writes.iter().cloned(), None)
                    .map_err(|e| StepError::Other(e.to_string()))?;
                let changed: BTreeSet<&String> = plan.writes.iter().chain(&plan.deletes).collect();
                let mut entries: Vec<_> = base
                    .entries
                    .into_iter()
                    .filter(|e| !changed.contains(&e.path))
                    .collect();
                entries.extend(rescanned.entries.into_values());
                let new_base = BaseManifest::new(&root, &guest_path, entries);
                ws::write_base(&path, &new_base).map_err(|e| StepError::Other(e.to_string()))?;
                Ok(new_base)
            })
            .await?;
            state.new_base = Some(new_base);
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
