//! `kernel.pull`: fetches a kernel from the catalog (`crate::kernel::catalog`), makes it a
//! bundle, and registers it. Crash recovery rolls it back.
//!
//! | step        | intent                     | ensure                                                | undo                                    |
//! |-------------|----------------------------|-------------------------------------------------------|-----------------------------------------|
//! | `download`  | dir `kernels/.staging-<op>`| the marked staging dir; GET the entry's URL into       | remove the staging dir                  |
//! |             |                            | `download.partial`, size and sha256 checked while it  |                                         |
//! |             |                            | streams, renamed `download` once they match (kept if   |                                         |
//! |             |                            | already there: only a verified file gets that name)   |                                         |
//! | `unpack`    | dir `kernels/.staging-<op>`| `bundle/` made afresh from the download: a Debian      | remove the staging dir                  |
//! |             |                            | package converted (the embedded static agent as the   |                                         |
//! |             |                            | initrd's init), a bundle tarball unpacked (hardened); |                                         |
//! |             |                            | then the op's marker in `bundle/`                     |                                         |
//! | `set-aside` | dir `kernels/.removing-<op>`| with `--force`: `kernels/<name>` renamed aside (gone  | rename it back if still aside and       |
//! |             |                            | already: fine); without: nothing                      | nothing took its place                  |
//! | `publish`   | dir `kernels/<name>`       | rename `bundle/` to `kernels/<name>`, then remove the | remove `kernels/<name>` if this op made |
//! |             |                            | staging dir                                           | it (its marker)                         |
//!
//! On success `KernelRegistered` (source `catalog:<name> <url>`, the vmlinux's sha256 and the
//! release from the bundle's manifest) is appended with `OperationSucceeded`, and only then is
//! the replaced kernel (`.removing-<op>`) deleted: deleting it in a step would leave nothing
//! to roll back to if the daemon died before the final commit. If it dies in that window the
//! directory is an orphan (`banger doctor --fix` removes it).
//!
//! Everything a pull makes before it publishes lives in its own `.staging-<op>` directory
//! (named from the op id, so an undo after a crash finds it): the download, the agent written
//! out for the conversion, the conversion's and the unpacking's own temporary directories.
//! Nothing is published before the download's sha256 matched the catalog's.

use std::path::PathBuf;
use std::sync::Arc;

use banger_events::{Event, Handle, KernelRegistered, OpId, OpKind, Target, VmState};
use banger_projections::KernelView;

use super::kernel_import::{undo_publish, undo_staging};
use super::store::{self, dir_handle};
use super::{BoxFuture, OpCx, OpError, OperationKind, Runner, Step, StepError, blocking, names};
use crate::api::KernelPullProgress;
use crate::kernel::fetch::{self, Expected};
use crate::kernel::{BundleManifest, CatalogKernel, KernelError};

/// Marker type of the operation kind.
pub struct KernelPull;

/// Where a pull reports its progress (the request's stream, or nowhere). Must not block.
pub type Progress = Arc<dyn Fn(KernelPullProgress) + Send + Sync>;

/// The names inside a pull's staging directory.
const DOWNLOAD: &str = "download";
const AGENT: &str = "agent";
const BUNDLE: &str = "bundle";

/// What a run of `kernel.pull` carries between steps.
pub struct State {
    pub name: String,
    /// The catalog entry, its URL as the mirrors rewrote it.
    pub entry: CatalogKernel,
    /// `--force` over a registered kernel: `set-aside` moves it away.
    pub force: bool,
    pub http: reqwest::Client,
    pub progress: Progress,
    /// Filled by `unpack`.
    pub manifest: Option<BundleManifest>,
}

const STEPS: &[&dyn Step<State>] = &[&Download, &Unpack, &SetAside, &Publish];

impl OperationKind for KernelPull {
    const KIND: OpKind = OpKind::KernelPull;
    type State = State;

    fn steps() -> &'static [&'static dyn Step<State>] {
        STEPS
    }

    fn finish(cx: &OpCx<'_>, state: &State) -> Vec<Event> {
        let dir = cx.layout.kernel_dir(&state.name);
        let Some(manifest) = &state.manifest else {
            // `unpack` always fills it before `publish` can succeed.
            return Vec::new();
        };
        vec![Event::KernelRegistered(KernelRegistered {
            name: state.name.clone(),
            kernel_path: dir.join(&manifest.vmlinux.path).display().to_string(),
            initrd_path: Some(dir.join(&manifest.initrd.path).display().to_string()),
            version: manifest.version.clone(),
            sha256: manifest.vmlinux.sha256.clone(),
            source: source_of(&state.name, state.entry.url()),
        })]
    }
}

/// The `source` a pulled kernel is registered with: `catalog:<name> <url>`.
pub fn source_of(name: &str, url: &str) -> String {
    format!("catalog:{name} {url}")
}

/// Whether a registered kernel's `source` says it was pulled from catalog entry `name`.
pub fn pulled_from(source: &str, name: &str) -> bool {
    source
        .strip_prefix("catalog:")
        .and_then(|rest| rest.split(' ').next())
        == Some(name)
}

/// A `kernel.pull` request, with its catalog entry already looked up.
pub struct Request {
    pub name: String,
    pub entry: CatalogKernel,
    pub force: bool,
    pub progress: Progress,
}

/// Handles a `kernel.pull`: claims the kernel's name, checks it may be (re)placed, runs the
/// steps, and removes the replaced kernel once the new one is registered.
pub async fn run(runner: &Runner, op_id: OpId, request: Request) -> Result<KernelView, OpError> {
    let Request {
        name,
        entry,
        force,
        progress,
    } = request;
    names::validate("kernel", &name).map_err(OpError::InvalidArgument)?;
    let http = fetch::http_client().map_err(|e| OpError::Internal(e.to_string()))?;
    let target = Target::Kernel { name: name.clone() };
    let claim = runner.claim(op_id, OpKind::KernelPull, target, Vec::new())?;
    // Only a registered kernel is replaced: a directory of that name that banger has no
    // record of is not banger's to delete (publishing over it fails and says so).
    let replace = {
        let view = runner.journal().view();
        let existing = view.kernels.get(&name);
        if let Some(existing) = existing {
            if !force {
                let from = if pulled_from(&existing.source, &name) {
                    "pulled already".to_owned()
                } else {
                    format!("already registered (source {})", existing.source)
                };
                return Err(OpError::AlreadyExists(format!(
                    "kernel {name} is {from}; `banger kernel pull {name} --force` replaces it"
                )));
            }
            // A running VM booted these files; replacing them under it would make its
            // record lie about what it runs. Stopped VMs boot the new kernel next time.
            let running: Vec<&str> = view
                .vms
                .values()
                .filter(|vm| vm.spec.kernel == name)
                .filter(|vm| !matches!(vm.state, VmState::Stopped | VmState::Failed))
                .map(|vm| vm.name.as_str())
                .collect();
            if !running.is_empty() {
                return Err(OpError::Busy(format!(
                    "kernel {name} is booted by VM(s) {} that are not stopped; stop them first (`banger vm stop {}`), then pull with --force again",
                    running.join(", "),
                    running.join(" ")
                )));
            }
        }
        existing.is_some()
    };
    let parameters = serde_json::json!({
        "name": name,
        "kind": entry.kind(),
        "url": entry.url(),
        "sha256": entry.sha256(),
        "size_bytes": entry.size_bytes(),
        "force": force,
    })
    .to_string();
    let state = State {
        name: name.clone(),
        entry,
        force: replace,
        http,
        progress,
        manifest: None,
    };
    runner.run::<KernelPull>(&claim, parameters, state).await?;
    // Registered: the replaced kernel (if any) is garbage now.
    let aside = runner.layout().kernel_removal_dir(op_id);
    let removed = tokio::task::spawn_blocking(move || store::remove_dir_if_present(&aside)).await;
    if let Ok(Err(error)) | Err(error) = removed.map_err(|e| StepError::Other(e.to_string())) {
        tracing::warn!(%error, "could not remove the replaced kernel; `banger doctor --fix` will");
    }
    runner
        .journal()
        .view()
        .kernels
        .get(&name)
        .cloned()
        .ok_or_else(|| OpError::Internal("the pulled kernel is missing from the views".into()))
}

fn staging(cx: &OpCx<'_>) -> PathBuf {
    cx.layout.kernel_staging_dir(cx.op_id)
}

fn kernel_error(error: KernelError) -> StepError {
    StepError::Other(error.to_string())
}

struct Download;

impl Step<State> for Download {
    fn name(&self) -> &'static str {
        "download"
    }

    fn intent(&self, cx: &OpCx<'_>, _: &State) -> Vec<Handle> {
        vec![dir_handle(&staging(cx))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let dir = staging(cx);
        let op_id = cx.op_id;
        Box::pin(async move {
            let download = dir.join(DOWNLOAD);
            let made = {
                let dir = dir.clone();
                blocking("making the staging directory", move || {
                    // Kept when this operation made it already: it may hold the download.
                    if store::marker_of(&dir) != Some(op_id) {
                        store::create_marked_dir(&dir, op_id)?;
                    }
                    Ok(dir.join(DOWNLOAD).is_file())
                })
                .await?
            };
            if !made {
                let name = state.name.clone();
                let url = state.entry.url().to_owned();
                let total_bytes = state.entry.size_bytes();
                let progress = state.progress.clone();
                let report = move |done_bytes: u64| {
                    progress(KernelPullProgress::KernelDownload {
                        name: name.clone(),
                        url: url.clone(),
                        done_bytes,
                        total_bytes,
                    })
                };
                fetch::download(
                    &state.http,
                    state.entry.url(),
                    Expected {
                        sha256: state.entry.sha256(),
                        size_bytes: state.entry.size_bytes(),
                    },
                    &download,
                    &report,
                )
                .await
                .map_err(kernel_error)?;
            }
            Ok(vec![dir_handle(&dir)])
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(undo_staging(
            cx.layout.kernels_dir(),
            cx.op_id,
            handles.to_vec(),
        ))
    }
}

struct Unpack;

impl Step<State> for Unpack {
    fn name(&self) -> &'static str {
        "unpack"
    }

    fn intent(&self, cx: &OpCx<'_>, _: &State) -> Vec<Handle> {
        vec![dir_handle(&staging(cx))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let dir = staging(cx);
        let op_id = cx.op_id;
        let entry = state.entry.clone();
        (state.progress)(KernelPullProgress::KernelConvert {
            name: state.name.clone(),
            kind: entry.kind().to_owned(),
        });
        Box::pin(async move {
            let handles = vec![dir_handle(&dir)];
            let manifest = blocking("making the bundle", move || {
                let bundle = dir.join(BUNDLE);
                // Afresh: an earlier attempt may have left half a bundle.
                store::remove_dir_if_present(&bundle)?;
                let download = dir.join(DOWNLOAD);
                let manifest = match &entry {
                    CatalogKernel::DebianPackage(package) => {
                        let agent = dir.join(AGENT);
                        crate::static_agent::write_to(&agent).map_err(|e| {
                            StepError::io(format!("cannot write {}", agent.display()), e)
                        })?;
                        let made = crate::kernel::bundle_from_debian_entry(
                            package, &download, &agent, &bundle,
                        );
                        store::remove_file_if_present(&agent)?;
                        made.map_err(kernel_error)?
                    }
                    CatalogKernel::Bundle(tarball) => {
                        let file = std::fs::File::open(&download).map_err(|e| {
                            StepError::io(format!("cannot open {}", download.display()), e)
                        })?;
                        crate::kernel::unpack_bundle(file, &tarball.tarball_sha256, &bundle)
                            .map_err(kernel_error)?
                    }
                };
                std::fs::write(bundle.join(store::MARKER), format!("{op_id}\n"))
                    .map_err(|e| StepError::io(format!("cannot mark {}", bundle.display()), e))?;
                Ok(manifest)
            })
            .await?;
            state.manifest = Some(manifest);
            Ok(handles)
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(undo_staging(
            cx.layout.kernels_dir(),
            cx.op_id,
            handles.to_vec(),
        ))
    }
}

struct SetAside;

impl Step<State> for SetAside {
    fn name(&self) -> &'static str {
        "set-aside"
    }

    fn intent(&self, cx: &OpCx<'_>, _: &State) -> Vec<Handle> {
        vec![dir_handle(&cx.layout.kernel_removal_dir(cx.op_id))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let published = cx.layout.kernel_dir(&state.name);
        let aside = cx.layout.kernel_removal_dir(cx.op_id);
        let force = state.force;
        Box::pin(async move {
            if !force {
                return Ok(Vec::new());
            }
            let dir = aside.clone();
            blocking("moving the replaced kernel aside", move || {
                store::move_aside(&published, &dir)
            })
            .await?;
            Ok(vec![dir_handle(&aside)])
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        let store_dir = cx.layout.kernels_dir();
        let published = match cx.target {
            Target::Kernel { name } if names::validate("kernel", name).is_ok() => {
                Some(cx.layout.kernel_dir(name))
            }
            _ => None,
        };
        let handles = handles.to_vec();
        Box::pin(async move {
            blocking("moving the replaced kernel back", move || {
                let asides = store::dirs_in_store(&handles, &store_dir)?;
                if asides.is_empty() {
                    return Ok(());
                }
                let published = published.ok_or_else(|| {
                    StepError::Other("the operation's target is not a kernel".into())
                })?;
                for aside in asides {
                    store::move_back(&aside, &published)?;
                }
                Ok(())
            })
            .await
        })
    }
}

struct Publish;

impl Step<State> for Publish {
    fn name(&self) -> &'static str {
        "publish"
    }

    fn intent(&self, cx: &OpCx<'_>, state: &State) -> Vec<Handle> {
        vec![dir_handle(&cx.layout.kernel_dir(&state.name))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut State,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let dir = staging(cx);
        let published = cx.layout.kernel_dir(&state.name);
        let op_id = cx.op_id;
        Box::pin(async move {
            let target = published.clone();
            blocking("publishing the kernel", move || {
                store::publish(&dir.join(BUNDLE), &target, op_id)?;
                // The download and what the conversion left: not needed any more.
                store::remove_dir_if_present(&dir)
            })
            .await?;
            Ok(vec![dir_handle(&published)])
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(undo_publish(
            cx.layout.kernels_dir(),
            cx.op_id,
            handles.to_vec(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_names_the_entry_and_the_url() {
        let source = source_of("debian-12-cloud", "https://snapshot.debian.org/file/ab");
        assert_eq!(
            source,
            "catalog:debian-12-cloud https://snapshot.debian.org/file/ab"
        );
        assert!(pulled_from(&source, "debian-12-cloud"));
        assert!(!pulled_from(&source, "debian-12"));
        assert!(!pulled_from("import:/x", "debian-12-cloud"));
    }
}
