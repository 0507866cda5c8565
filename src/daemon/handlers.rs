//! The handlers of plain (non-streaming) methods. Reads answer from the projections as they
//! stand; writes hand the request to its operation in [`crate::operations`], in a task of
//! its own so that the client hanging up cannot cut an operation between two steps.

use std::future::Future;
use std::sync::Arc;

use banger_events::{Health, OpId, Owner};
use banger_projections::{ImageView, KernelView, OperationView};

use super::dispatch::{Cx, op_error};
use super::{Daemon, VERSION};
use crate::api::{
    HandleEntry, ImageListResult, ImageRegisterParams, KernelImportParams, KernelListResult,
    NameParams, NoParams, OperationsListParams, OperationsListResult, OperationsRetryParams,
    OperationsRetryResult, OrphansRemoveResult, OrphansResult, PingResult, RemoveResult,
    ShutdownResult, VmListResult, VmShowResult,
};
use crate::operations::{
    OpError, Runner, image_delete, image_register, kernel_import, kernel_remove, retry,
};
use crate::rpc::protocol::{ErrorCode, PROTOCOL_VERSION, RpcError};

pub async fn ping(daemon: Arc<Daemon>, _: Cx, _: NoParams) -> Result<PingResult, RpcError> {
    Ok(PingResult {
        version: VERSION.to_owned(),
        protocol: PROTOCOL_VERSION,
        pid: std::process::id(),
        last_seq: daemon.journal.last_seq(),
        log_health: match daemon.journal.health() {
            Health::Writable => "writable".to_owned(),
            Health::ReadOnly { reason } => format!("read-only: {reason}"),
        },
        uptime_ms: u64::try_from(daemon.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        state_dir: daemon.layout.state_dir.display().to_string(),
        shutting_down: daemon.shutdown.is_cancelled(),
    })
}

/// `daemon.orphans`: host resources with banger's names that the log does not know.
pub async fn orphans(daemon: Arc<Daemon>, _: Cx, _: NoParams) -> Result<OrphansResult, RpcError> {
    Ok(OrphansResult {
        orphans: super::orphans::find(&daemon).await,
    })
}

/// `daemon.orphans.remove`: removes them, recording each removal in the log.
pub async fn orphans_remove(
    daemon: Arc<Daemon>,
    cx: Cx,
    _: NoParams,
) -> Result<OrphansRemoveResult, RpcError> {
    if let Health::ReadOnly { reason } = daemon.journal.health() {
        return Err(RpcError::new(
            ErrorCode::Unavailable,
            format!("bangerd cannot record removals: {reason}"),
        ));
    }
    // Detached like an operation: a client that hangs up must not cut a removal off from
    // its record. Shutdown waits for it.
    let op_id = cx.op_id;
    let task = daemon.ops.spawn(tracing::Instrument::instrument(
        {
            let daemon = daemon.clone();
            async move { super::orphans::remove(&daemon, op_id).await }
        },
        cx.span.clone(),
    ));
    let (removed, failed) = task.await.map_err(|error| {
        RpcError::internal(format!(
            "the removal's task ended abnormally: {error}; see bangerd's log"
        ))
    })?;
    Ok(OrphansRemoveResult { removed, failed })
}

pub async fn shutdown(daemon: Arc<Daemon>, _: Cx, _: NoParams) -> Result<ShutdownResult, RpcError> {
    // The answer is still written: the connection finishes the request it is in before it
    // notices the shutdown.
    daemon.begin_shutdown("asked by daemon.shutdown");
    Ok(ShutdownResult {
        pid: std::process::id(),
    })
}

pub async fn operations_list(
    daemon: Arc<Daemon>,
    _: Cx,
    params: OperationsListParams,
) -> Result<OperationsListResult, RpcError> {
    let view = daemon.journal.view();
    let mut operations: Vec<OperationView> = if params.all {
        view.operations.values().cloned().collect()
    } else {
        view.unresolved().cloned().collect()
    };
    operations.sort_by_key(|op| (op.started_seq, op.op_id));
    Ok(OperationsListResult { operations })
}

pub async fn operations_retry(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: OperationsRetryParams,
) -> Result<OperationsRetryResult, RpcError> {
    let op_id = params.op_id;
    detached(&daemon, &cx, move |runner: Arc<Runner>, _| async move {
        retry::retry(&runner, op_id).await
    })
    .await?;
    // While it was stuck the operation held its VM, so an exit of the VM's VMM looked asked
    // for; now that it is rolled back, the VM is reconciled with its VMM.
    let target = daemon
        .journal
        .view()
        .operations
        .get(&op_id)
        .map(|op| op.target.clone());
    if let Some(banger_events::Target::Vm { vm_id, .. }) = target {
        daemon.supervisor.reconcile(vm_id).await;
    }
    let view = daemon.journal.view();
    let operation = view.operations.get(&op_id).cloned().ok_or_else(|| {
        RpcError::internal(format!(
            "operation {op_id} was rolled back and then left the views; see `banger events --op {op_id}`"
        ))
    })?;
    Ok(OperationsRetryResult { operation })
}

pub async fn vm_list(daemon: Arc<Daemon>, _: Cx, _: NoParams) -> Result<VmListResult, RpcError> {
    let view = daemon.journal.view();
    Ok(VmListResult {
        vms: view.vms.values().cloned().collect(),
    })
}

pub async fn vm_show(
    daemon: Arc<Daemon>,
    _: Cx,
    params: NameParams,
) -> Result<VmShowResult, RpcError> {
    let mut result = {
        let view = daemon.journal.view();
        let Some(vm) = view.vm_by_name(&params.name) else {
            return Err(RpcError::not_found(format!(
                "no VM named {}; see `banger vm list`",
                params.name
            )));
        };
        VmShowResult {
            vm: vm.clone(),
            handles: view
                .handles_of(Owner::Vm(vm.id))
                .map(|(handle, held)| HandleEntry {
                    handle: handle.clone(),
                    view: held.clone(),
                })
                .collect(),
            operations: view.operations_on_vm(vm.id).cloned().collect(),
            ssh: None,
        }
    };
    // After the view guard is dropped: the status table is a lock of its own.
    result.ssh = daemon.vms.ssh.status(result.vm.id);
    Ok(result)
}

/// `network.status`: banger-helper as this bangerd reaches it (for `banger doctor`).
pub async fn network_status(
    daemon: Arc<Daemon>,
    _: Cx,
    _: NoParams,
) -> Result<crate::api::NetworkStatusResult, RpcError> {
    Ok(daemon.runner.network().status().await)
}

pub async fn image_list(
    daemon: Arc<Daemon>,
    _: Cx,
    _: NoParams,
) -> Result<ImageListResult, RpcError> {
    let view = daemon.journal.view();
    Ok(ImageListResult {
        images: view.images.values().cloned().collect(),
    })
}

pub async fn image_show(
    daemon: Arc<Daemon>,
    _: Cx,
    params: NameParams,
) -> Result<ImageView, RpcError> {
    daemon
        .journal
        .view()
        .images
        .get(&params.name)
        .cloned()
        .ok_or_else(|| {
            RpcError::not_found(format!(
                "no image named {}; see `banger image list`",
                params.name
            ))
        })
}

pub async fn kernel_list(
    daemon: Arc<Daemon>,
    _: Cx,
    _: NoParams,
) -> Result<KernelListResult, RpcError> {
    let view = daemon.journal.view();
    Ok(KernelListResult {
        kernels: view.kernels.values().cloned().collect(),
    })
}

pub async fn kernel_show(
    daemon: Arc<Daemon>,
    _: Cx,
    params: NameParams,
) -> Result<KernelView, RpcError> {
    daemon
        .journal
        .view()
        .kernels
        .get(&params.name)
        .cloned()
        .ok_or_else(|| {
            RpcError::not_found(format!(
                "no kernel named {}; see `banger kernel list`",
                params.name
            ))
        })
}

pub async fn kernel_import(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: KernelImportParams,
) -> Result<KernelView, RpcError> {
    detached(&daemon, &cx, move |runner, op_id| async move {
        kernel_import::run(&runner, op_id, params).await
    })
    .await
}

pub async fn kernel_remove(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: NameParams,
) -> Result<RemoveResult, RpcError> {
    let name = params.name.clone();
    detached(&daemon, &cx, move |runner, op_id| async move {
        kernel_remove::run(&runner, op_id, params.name).await
    })
    .await?;
    Ok(RemoveResult { name })
}

pub async fn image_register(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: ImageRegisterParams,
) -> Result<ImageView, RpcError> {
    detached(&daemon, &cx, move |runner, op_id| async move {
        image_register::run(&runner, op_id, params).await
    })
    .await
}

pub async fn image_delete(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: NameParams,
) -> Result<RemoveResult, RpcError> {
    let name = params.name.clone();
    detached(&daemon, &cx, move |runner, op_id| async move {
        image_delete::run(&runner, op_id, params.name).await
    })
    .await?;
    Ok(RemoveResult { name })
}

/// Runs an operation in a task of its own (tracked, so shutdown waits for it) and waits for
/// its outcome. If the caller goes away, the task runs on to its end.
pub(crate) async fn detached<T, F, Fut>(
    daemon: &Daemon,
    cx: &Cx,
    operation: F,
) -> Result<T, RpcError>
where
    T: Send + 'static,
    F: FnOnce(Arc<Runner>, OpId) -> Fut,
    Fut: Future<Output = Result<T, OpError>> + Send + 'static,
{
    let task = daemon.ops.spawn(tracing::Instrument::instrument(
        operation(daemon.runner.clone(), cx.op_id),
        cx.span.clone(),
    ));
    match task.await {
        Ok(result) => result.map_err(op_error),
        Err(error) => Err(RpcError::internal(format!(
            "the operation's task ended abnormally: {error}; see bangerd's log"
        ))),
    }
}
