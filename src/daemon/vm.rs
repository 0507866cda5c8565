//! The handlers of the VM lifecycle methods: `vm.create`, `vm.start`, `vm.stop`,
//! `vm.restart`, `vm.kill`, `vm.delete`, `vm.set`. Each checks and claims through its
//! operation in [`crate::operations`], runs it in a task of its own (tracked, so shutdown
//! waits; detached, so a client hanging up cannot cut it between two steps), hands a VMM it
//! launched to the [`super::supervisor`], and answers with the VM as the views show it.
//!
//! `vm.restart` is two operations, a `vm.stop` then a `vm.start`, each recorded, recovered
//! and shown on its own: a crash between them leaves the VM stopped, which is what a
//! rolled-back restart would leave too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use banger_events::{OpId, VmId, VmState};
use banger_projections::VmView;

use super::Daemon;
use super::dispatch::{Cx, op_error};
use crate::api::{
    MAX_STOP_TIMEOUT_MS, NameParams, VmCreateParams, VmCreateResult, VmDeleteResult, VmResult,
    VmSetParams, VmStopParams,
};
use crate::operations::vm_common::BootState;
use crate::operations::{OpError, vm_create, vm_delete, vm_kill, vm_set, vm_start, vm_stop};
use crate::rpc::protocol::RpcError;

/// The dispatch table's entry point for `vm.create`: a stream when the request asks for
/// progress (a kernel pulled on first use, see [`super::ensure`]), one answer otherwise.
pub fn create_handler<'c>(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: serde_json::Value,
    conn: &'c mut super::server::Conn,
) -> crate::operations::BoxFuture<'c, Result<serde_json::Value, RpcError>> {
    Box::pin(async move {
        let params: VmCreateParams = super::dispatch::decode(cx.method, params)?;
        let (reporter, listener) = super::progress::channel();
        let enabled = params.progress;
        let work = async {
            super::ensure::ensure_for_create(&daemon, &params, &reporter).await?;
            create(daemon.clone(), cx.clone(), params).await
        };
        super::dispatch::encode(super::progress::forward(&cx, conn, listener, enabled, work).await?)
    })
}

pub async fn create(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: VmCreateParams,
) -> Result<VmCreateResult, RpcError> {
    let vm_id = daemon.ids.vm_id();
    let prepared = vm_create::prepare(&daemon.runner, &daemon.vms, cx.op_id, vm_id, &params)
        .map_err(op_error)?;
    let name = prepared.name.clone();
    let task = {
        let daemon = daemon.clone();
        daemon.clone().ops.spawn(tracing::Instrument::instrument(
            async move {
                let state = vm_create::execute(&daemon.runner, prepared).await?;
                supervise(&daemon, state);
                // It may have taken a spare tap.
                super::tap_pool::spawn_top_up(&daemon);
                Ok::<(), OpError>(())
            },
            cx.span.clone(),
        ))
    };
    if !params.no_wait {
        join(task).await?;
    }
    let vm = daemon.journal.view().vms.get(&vm_id).cloned();
    Ok(VmCreateResult {
        op_id: cx.op_id,
        vm_id,
        name,
        vm,
    })
}

pub async fn start(daemon: Arc<Daemon>, cx: Cx, params: NameParams) -> Result<VmResult, RpcError> {
    start_op(&daemon, &cx, cx.op_id, &params.name).await?;
    vm_result(&daemon, &params.name)
}

pub async fn stop(daemon: Arc<Daemon>, cx: Cx, params: VmStopParams) -> Result<VmResult, RpcError> {
    let timeout = stop_timeout(&daemon, &params)?;
    stop_op(&daemon, &cx, &params.name, timeout).await?;
    vm_result(&daemon, &params.name)
}

pub async fn restart(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: VmStopParams,
) -> Result<VmResult, RpcError> {
    let timeout = stop_timeout(&daemon, &params)?;
    let running = daemon
        .journal
        .view()
        .vm_by_name(&params.name)
        .map(|vm| vm.state != VmState::Stopped)
        .ok_or_else(|| {
            RpcError::not_found(format!("no VM named {}; see `banger vm list`", params.name))
        })?;
    if running {
        stop_op(&daemon, &cx, &params.name, timeout).await?;
    }
    // The start half is an operation of its own, with an op id of its own.
    let start_id = daemon.ids.op_id();
    start_op(&daemon, &cx, start_id, &params.name).await?;
    vm_result(&daemon, &params.name)
}

/// The grace a stop gives its guest: the request's `timeout_ms` (checked against
/// [`MAX_STOP_TIMEOUT_MS`]) or the configured `timeouts.stop`.
fn stop_timeout(daemon: &Daemon, params: &VmStopParams) -> Result<Duration, RpcError> {
    match params.timeout_ms {
        None => Ok(daemon.vms.config.stop_timeout),
        Some(ms) if ms <= MAX_STOP_TIMEOUT_MS => Ok(Duration::from_millis(ms)),
        Some(ms) => Err(RpcError::invalid(format!(
            "a stop timeout of {ms} ms is longer than the limit of one hour ({MAX_STOP_TIMEOUT_MS} ms); give a shorter one, or 0 to kill at once"
        ))),
    }
}

pub async fn kill(daemon: Arc<Daemon>, cx: Cx, params: NameParams) -> Result<VmResult, RpcError> {
    let name = params.name.clone();
    detached(
        &daemon,
        &cx,
        &params.name,
        move |daemon: Arc<Daemon>, op_id| async move {
            vm_kill::run(&daemon.runner, op_id, &name).await
        },
    )
    .await?;
    vm_result(&daemon, &params.name)
}

pub async fn delete(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: NameParams,
) -> Result<VmDeleteResult, RpcError> {
    let name = params.name.clone();
    let state = detached(
        &daemon,
        &cx,
        &params.name,
        move |daemon: Arc<Daemon>, op_id| async move {
            vm_delete::run(&daemon.runner, op_id, &name).await
        },
    )
    .await?;
    daemon.supervisor.forget(state.vm_id);
    Ok(VmDeleteResult {
        name: params.name,
        vm_id: state.vm_id,
    })
}

pub async fn set(daemon: Arc<Daemon>, cx: Cx, params: VmSetParams) -> Result<VmResult, RpcError> {
    let name = params.name.clone();
    detached(
        &daemon,
        &cx,
        &name,
        move |daemon: Arc<Daemon>, op_id| async move {
            vm_set::run(&daemon.runner, op_id, &params).await
        },
    )
    .await?;
    vm_result(&daemon, &name)
}

async fn start_op(daemon: &Arc<Daemon>, cx: &Cx, op_id: OpId, name: &str) -> Result<(), RpcError> {
    let name = name.to_owned();
    let task = {
        let daemon = daemon.clone();
        daemon.clone().ops.spawn(tracing::Instrument::instrument(
            async move {
                let state = vm_start::run(&daemon.runner, &daemon.vms, op_id, &name).await?;
                supervise(&daemon, state);
                Ok::<(), OpError>(())
            },
            cx.span.clone(),
        ))
    };
    join(task).await
}

async fn stop_op(
    daemon: &Arc<Daemon>,
    cx: &Cx,
    name: &str,
    timeout: Duration,
) -> Result<(), RpcError> {
    let vm = name.to_owned();
    let name = name.to_owned();
    detached(
        daemon,
        cx,
        &vm,
        move |daemon: Arc<Daemon>, op_id| async move {
            vm_stop::run(&daemon.runner, op_id, &name, timeout, None).await
        },
    )
    .await
}

/// Hands the VMM a create or start launched to the supervisor: by its child handle when this
/// process spawned it, else (banger-helper launched it) by pid and start time.
fn supervise(daemon: &Daemon, state: BootState) {
    match (state.launched, state.child) {
        (Some(launched), Some(child)) => {
            daemon.supervisor.watch_child(state.vm_id, launched, child);
        }
        (Some(launched), None) => daemon.supervisor.watch_adopted(
            state.vm_id,
            banger_projections::ProcessRef {
                pid: launched.pid,
                start_time_ticks: launched.start_time_ticks,
            },
        ),
        (None, _) => {}
    }
}

/// Runs an operation on VM `name` in a tracked task of its own and waits for its outcome.
/// When it fails, the supervisor reconciles the VM with its VMM (see
/// [`super::supervisor::Supervisor::reconcile`]).
pub(super) async fn detached<T, F, Fut>(
    daemon: &Arc<Daemon>,
    cx: &Cx,
    name: &str,
    operation: F,
) -> Result<T, RpcError>
where
    T: Send + 'static,
    F: FnOnce(Arc<Daemon>, OpId) -> Fut,
    Fut: Future<Output = Result<T, OpError>> + Send + 'static,
{
    let vm = vm_id(daemon, name);
    let running = operation(daemon.clone(), cx.op_id);
    let task = {
        let daemon = daemon.clone();
        daemon.clone().ops.spawn(tracing::Instrument::instrument(
            async move {
                let result = running.await;
                if result.is_err()
                    && let Some(vm) = vm
                {
                    daemon.supervisor.reconcile(vm).await;
                }
                result
            },
            cx.span.clone(),
        ))
    };
    join(task).await
}

async fn join<T>(task: tokio::task::JoinHandle<Result<T, OpError>>) -> Result<T, RpcError> {
    match task.await {
        Ok(result) => result.map_err(op_error),
        Err(error) => Err(RpcError::internal(format!(
            "the operation's task ended abnormally: {error}; see bangerd's log"
        ))),
    }
}

fn vm_result(daemon: &Daemon, name: &str) -> Result<VmResult, RpcError> {
    let vm: Option<VmView> = daemon.journal.view().vm_by_name(name).cloned();
    vm.map(|vm| VmResult { vm })
        .ok_or_else(|| RpcError::not_found(format!("no VM named {name}; see `banger vm list`")))
}

/// The id of VM `name`, for other handlers (guest RPCs touch it for auto-stop).
pub fn vm_id(daemon: &Daemon, name: &str) -> Option<VmId> {
    daemon.journal.view().vm_by_name(name).map(|vm| vm.id)
}
