//! What a VM needs, made present before it is created: [`ensure_kernel`] pulls a kernel the
//! catalog has and this host has not (the default kernel on first use). Each pull is a
//! `kernel.pull` operation of its own (its own op id, recorded and recovered like any), run
//! detached from the request; its progress goes to the request's stream through a
//! [`Reporter`].
//!
//! ```text
//!  vm.create ─▶ ensure_for_create ─▶ ensure_kernel(name) ─▶ registered? ── yes ─▶ create
//!                                            │ no
//!                                            ▼
//!                              in the catalog? ── no ─▶ create (which says what is missing)
//!                                            │ yes
//!                                            ▼
//!                      kernel.pull ── busy (another pull of it runs) ─▶ wait, look again
//! ```
//!
//! Invariant: two requests that need the same missing kernel pull it once: the second finds
//! the name claimed, waits for that pull to end, and then finds the kernel (or pulls again if
//! that pull failed, reporting its own error).

use std::sync::Arc;
use std::time::Duration;

use banger_events::{OpId, Target};
use banger_projections::KernelView;

use super::Daemon;
use super::dispatch::op_error;
use super::progress::Reporter;
use crate::api::{KernelPullParams, VmCreateParams};
use crate::kernel::{Catalog, CatalogKernel};
use crate::operations::{kernel_pull, vm_create};
use crate::rpc::protocol::{ErrorCode, RpcError};

/// How often a request waiting for another pull of the same kernel looks again.
const WAIT_FOR_OTHER_PULL: Duration = Duration::from_millis(250);

/// The catalog as this daemon's configuration makes it (read at each use: an edit of the
/// user's catalog file applies to the next pull).
pub async fn catalog(daemon: &Daemon) -> Result<Catalog, RpcError> {
    let config = daemon.vms.config.kernels.clone();
    tokio::task::spawn_blocking(move || {
        Catalog::effective(config.catalog.as_deref(), &config.mirrors)
    })
    .await
    .map_err(|e| RpcError::internal(format!("reading the kernel catalog: {e}")))?
    .map_err(|e| RpcError::new(ErrorCode::Unavailable, e.to_string()))
}

/// Looks `name` up in the catalog.
pub fn entry(catalog: &Catalog, name: &str) -> Result<CatalogKernel, RpcError> {
    catalog.get(name).cloned().ok_or_else(|| {
        RpcError::not_found(format!(
            "the kernel catalog has no kernel named {name}; `banger kernel list --available` lists what it has"
        ))
    })
}

/// Runs one `kernel.pull` operation (op id `op_id`) detached from the caller, reporting its
/// progress to `reporter`, and waits for it.
pub async fn pull(
    daemon: &Arc<Daemon>,
    op_id: OpId,
    span: &tracing::Span,
    params: KernelPullParams,
    reporter: &Reporter,
) -> Result<KernelView, RpcError> {
    let entry = entry(&catalog(daemon).await?, &params.name)?;
    let reporter = reporter.clone();
    let request = kernel_pull::Request {
        name: params.name,
        entry,
        force: params.force,
        progress: Arc::new(move |item| reporter.report(&item)),
    };
    let runner = daemon.runner.clone();
    let task = daemon.ops.spawn(tracing::Instrument::instrument(
        async move { kernel_pull::run(&runner, op_id, request).await },
        span.clone(),
    ));
    match task.await {
        Ok(result) => result.map_err(op_error),
        Err(error) => Err(RpcError::internal(format!(
            "the kernel pull's task ended abnormally: {error}; see bangerd's log"
        ))),
    }
}

/// Makes kernel `name` present: registered already, or pulled now when the catalog has it.
/// A kernel the catalog does not have is left for the caller to report.
pub async fn ensure_kernel(
    daemon: &Arc<Daemon>,
    name: &str,
    reporter: &Reporter,
) -> Result<(), RpcError> {
    loop {
        if daemon.journal.view().kernels.contains_key(name) {
            return Ok(());
        }
        if catalog(daemon).await?.get(name).is_none() {
            return Ok(());
        }
        let op_id = daemon.ids.op_id();
        let span = tracing::info_span!("ensure_kernel", %op_id, kernel = name);
        tracing::info!(parent: &span, "pulling kernel {name} on first use");
        let params = KernelPullParams {
            name: name.to_owned(),
            force: false,
            progress: true,
        };
        match pull(daemon, op_id, &span, params, reporter).await {
            Ok(_) => return Ok(()),
            // Another pull got there first.
            Err(error) if error.code == ErrorCode::AlreadyExists => return Ok(()),
            Err(error) if error.code == ErrorCode::Busy && !blocked_for_good(daemon, name) => {
                tokio::select! {
                    () = tokio::time::sleep(WAIT_FOR_OTHER_PULL) => {}
                    () = daemon.shutdown.cancelled() => return Err(error),
                }
            }
            Err(error) => {
                return Err(RpcError::new(
                    error.code,
                    format!("pulling kernel {name}: {}", error.message),
                ));
            }
        }
    }
}

/// Whether kernel `name` is blocked by an operation that waiting will not end (a stuck one),
/// rather than by one running now.
fn blocked_for_good(daemon: &Daemon, name: &str) -> bool {
    let target = Target::Kernel {
        name: name.to_owned(),
    };
    daemon
        .journal
        .view()
        .blocking_op_for(&target)
        .is_some_and(|op| op.status == banger_projections::OpStatus::Stuck)
}

/// What `vm.create` needs before it runs: its kernel (the request's, else its image's, else
/// the configured default), pulled when the catalog has it and this host has not. A create of
/// an image that is not registered is left to fail with its own message.
pub async fn ensure_for_create(
    daemon: &Arc<Daemon>,
    params: &VmCreateParams,
    reporter: &Reporter,
) -> Result<(), RpcError> {
    let kernel = {
        let view = daemon.journal.view();
        let Some(image) = view.images.get(&params.image) else {
            return Ok(());
        };
        params
            .kernel
            .clone()
            .unwrap_or_else(|| vm_create::kernel_of(image, &daemon.vms.config))
    };
    ensure_kernel(daemon, &kernel, reporter).await
}
