//! `vm.stop`: stops a running VM gracefully — the guest syncs its disks, gets Ctrl-Alt-Del
//! (QEMU: the ACPI power button), and has `stop_timeout` to power off before its VMM is killed. The timeout is the request's
//! `timeout_ms` when it gives one, else the configured `timeouts.stop`; either way it is
//! recorded in the operation's parameters (`stop_timeout_ms`).
//!
//! | step              | intent | ensure                                                            | undo    |
//! |-------------------|--------|-------------------------------------------------------------------|---------|
//! | `sync-guest`      | —      | best effort: the guest agent's `sync` (2 s), so no write is lost  | nothing |
//! | `shutdown`        | —      | Ctrl-Alt-Del through the API, wait up to `stop_timeout` for the   | nothing |
//! |                   |        | recorded process to be gone, then SIGKILL it (pid + start time); |         |
//! |                   |        | a timeout of 0 skips Ctrl-Alt-Del and kills at once. Once the     |         |
//! |                   |        | VMM is gone its socket files are removed, so a later failure     |         |
//! |                   |        | leaves no dead VMM's sockets behind                               |         |
//! | `release-sockets` | —      | remove the VMM's API socket and the agent's (vsock, or serial),  | nothing |
//! |                   |        | again (idempotent)                                                |         |
//!
//! Every step is harmless on a VM whose process is already gone, so crash recovery rolls
//! stops forward: it rebuilds the state from the operation's parameters (a `stop.v1` resume
//! payload recording the process, the timeout and why, or the bare JSON of older builds; see
//! `banger_events::resume`) and runs the remaining steps. Parameters that do not decode, or
//! that are about another VM, leave the operation stuck with that error.
//!
//! Domain events: running → stopping with `OperationStarted`; `HandleReleased` (the process)
//! and stopping → stopped with `OperationSucceeded`; stopping → running with
//! `OperationRolledBack` (only a process that survives SIGKILL gets there).

use std::time::Duration;

use banger_events::{
    Event, Handle, HandleReleased, OpId, OpKind, Owner, RecordedProcess, ResumePayload,
    StopResumeV1, Target, VmId, VmState, VmStateChanged,
};
use banger_projections::ProcessRef;

use super::vm_common::{
    agent_endpoint, kill_vmm, path_in_vms, recorded_vmm, remove_file_if_present, target_vm,
};
use super::{BoxFuture, Claim, OpCx, OpError, OperationKind, ResumeError, Runner, Step, StepError};
use crate::agent::client::AgentClient;
use crate::host::process;

pub struct VmStop;

const STEPS: &[&dyn Step<StopState>] = &[&SyncGuest, &Shutdown, &ReleaseSockets];

/// What stop, kill and delete know; recorded whole as the operation's parameters (a
/// `stop.v1` [`ResumePayload`]), so that recovery can finish the operation from the log alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopState {
    pub vm_id: VmId,
    pub name: String,
    /// The state the VM was in when the operation began.
    pub from: VmState,
    /// The VMM process to end, when the VM had one.
    pub process: Option<ProcessRef>,
    pub stop_timeout_ms: u64,
    /// Why (auto-stop says "idle for …"); `None` when a user asked.
    pub reason: Option<String>,
    /// The VM's tap, from the ledger (`vm.delete` removes it); `None` in parameters
    /// recorded before VMs had taps.
    pub tap: Option<String>,
}

impl StopState {
    /// The `OperationStarted` parameters: this state as the newest stop resume payload.
    pub fn parameters(&self) -> String {
        ResumePayload::StopV1(StopResumeV1 {
            vm_id: self.vm_id,
            name: self.name.clone(),
            from: self.from,
            process: self.process.map(|p| RecordedProcess {
                pid: p.pid,
                start_time_ticks: p.start_time_ticks,
            }),
            stop_timeout_ms: self.stop_timeout_ms,
            reason: self.reason.clone(),
            tap: self.tap.clone(),
        })
        .encode()
    }

    /// The state recorded in an operation's parameters: a stop resume payload, or the bare
    /// state older builds wrote (the decoder converts it).
    pub fn from_parameters(parameters: &str) -> Result<StopState, ResumeError> {
        match ResumePayload::decode(parameters)? {
            ResumePayload::StopV1(stop) => Ok(StopState {
                vm_id: stop.vm_id,
                name: stop.name,
                from: stop.from,
                process: stop.process.map(|p| ProcessRef {
                    pid: p.pid,
                    start_time_ticks: p.start_time_ticks,
                }),
                stop_timeout_ms: stop.stop_timeout_ms,
                reason: stop.reason,
                tap: stop.tap,
            }),
        }
    }

    /// What recovery resumes a stop, kill or delete from: the recorded parameters, which must
    /// be about the VM the operation targets (anything else would stop the wrong VM).
    pub fn resume(target: &Target, parameters: &str) -> Result<StopState, ResumeError> {
        let Target::Vm { vm_id, .. } = target else {
            return Err(ResumeError::WrongTarget {
                target: target.to_string(),
                expected: "a vm".to_owned(),
            });
        };
        let state = StopState::from_parameters(parameters)?;
        if state.vm_id != *vm_id {
            return Err(ResumeError::OtherVm {
                recorded: state.vm_id,
                target: *vm_id,
            });
        }
        Ok(state)
    }
}

impl OperationKind for VmStop {
    const KIND: OpKind = OpKind::VmStop;
    type State = StopState;

    fn steps() -> &'static [&'static dyn Step<StopState>] {
        STEPS
    }

    fn start_events(_: &OpCx<'_>, state: &StopState) -> Vec<Event> {
        vec![to_stopping(state)]
    }

    fn finish(_: &OpCx<'_>, state: &StopState) -> Vec<Event> {
        stopped_events(state)
    }

    fn rolled_back_events(target: &Target) -> Vec<Event> {
        back_to_running(target)
    }

    fn resume_state(target: &Target, parameters: &str) -> Result<StopState, ResumeError> {
        StopState::resume(target, parameters)
    }
}

pub(crate) fn to_stopping(state: &StopState) -> Event {
    Event::VmStateChanged(VmStateChanged {
        vm_id: state.vm_id,
        from: state.from,
        to: VmState::Stopping,
    })
}

pub(crate) fn stopped_events(state: &StopState) -> Vec<Event> {
    let mut events = Vec::new();
    if let Some(process) = state.process {
        events.push(Event::HandleReleased(HandleReleased {
            handle: process.handle(),
        }));
    }
    events.push(Event::VmStateChanged(VmStateChanged {
        vm_id: state.vm_id,
        from: VmState::Stopping,
        to: VmState::Stopped,
    }));
    events
}

pub(crate) fn back_to_running(target: &Target) -> Vec<Event> {
    match target {
        Target::Vm { vm_id, .. } => vec![Event::VmStateChanged(VmStateChanged {
            vm_id: *vm_id,
            from: VmState::Stopping,
            to: VmState::Running,
        })],
        _ => Vec::new(),
    }
}

/// The id of the live VM called `name`.
pub fn vm_id_by_name(runner: &Runner, name: &str) -> Result<VmId, OpError> {
    runner
        .journal()
        .view()
        .vm_by_name(name)
        .map(|vm| vm.id)
        .ok_or_else(|| OpError::NotFound(format!("no VM named {name}; see `banger vm list`")))
}

/// Claims VM `name` for `kind` and describes it; refuses a VM that has nothing to stop unless
/// `any_state`.
pub fn prepare(
    runner: &Runner,
    op_id: OpId,
    kind: OpKind,
    name: &str,
    stop_timeout: Duration,
    reason: Option<String>,
    any_state: bool,
) -> Result<(Claim, StopState), OpError> {
    let vm_id = vm_id_by_name(runner, name)?;
    let claim = runner.claim(
        op_id,
        kind,
        Target::Vm {
            vm_id,
            name: name.to_owned(),
        },
        Vec::new(),
    )?;
    let view = runner.journal().view();
    let vm = view
        .vms
        .get(&vm_id)
        .ok_or_else(|| OpError::NotFound(format!("no VM named {name}; see `banger vm list`")))?;
    // The claim is held, so no operation is running on the VM: its state is a settled one
    // (running, stopped or failed).
    if !any_state {
        match vm.state {
            VmState::Running => {}
            VmState::Stopped => {
                return Err(OpError::NotRunning(format!(
                    "vm {name} is already stopped; start it with `banger vm start {name}`"
                )));
            }
            other => {
                return Err(OpError::WrongState(format!(
                    "vm {name} is {other}, not running, so there is nothing to {verb}; `banger vm show {name}` says what happened, `banger vm delete {name}` removes it",
                    verb = if kind == OpKind::VmKill {
                        "kill"
                    } else {
                        "stop"
                    },
                )));
            }
        }
    }
    Ok((
        claim,
        StopState {
            vm_id,
            name: name.to_owned(),
            from: vm.state,
            process: vm.process,
            stop_timeout_ms: u64::try_from(stop_timeout.as_millis()).unwrap_or(u64::MAX),
            reason,
            tap: view
                .handles_of(Owner::Vm(vm_id))
                .find_map(|(handle, _)| match handle {
                    Handle::Tap { name } => Some(name.clone()),
                    _ => None,
                }),
        },
    ))
}

/// Handles `vm.stop` (and the auto-stop sweep, which gives a reason).
pub async fn run(
    runner: &Runner,
    op_id: OpId,
    name: &str,
    stop_timeout: Duration,
    reason: Option<String>,
) -> Result<(), OpError> {
    let (claim, state) = prepare(
        runner,
        op_id,
        OpKind::VmStop,
        name,
        stop_timeout,
        reason,
        false,
    )?;
    let parameters = state.parameters();
    runner.run::<VmStop>(&claim, parameters, state).await?;
    Ok(())
}

fn alive(process: Option<ProcessRef>) -> Option<ProcessRef> {
    process.filter(|p| {
        process::liveness(p.pid, p.start_time_ticks).ok() == Some(process::Liveness::Alive)
    })
}

struct SyncGuest;

impl Step<StopState> for SyncGuest {
    fn name(&self) -> &'static str {
        "sync-guest"
    }

    fn intent(&self, _: &OpCx<'_>, _: &StopState) -> Vec<Handle> {
        Vec::new()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut StopState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            if alive(state.process).is_none() {
                return Ok(Vec::new());
            }
            let endpoint = agent_endpoint(cx.layout, state.vm_id, cx.vmm.agent_transport());
            let sync = async {
                let stream = cx
                    .agents
                    .connect(&endpoint, Duration::from_secs(2))
                    .await
                    .map_err(|e| e.to_string())?;
                let mut client = AgentClient::handshake(stream, "bangerd")
                    .await
                    .map_err(|e| e.to_string())?;
                client.sync().await.map_err(|e| e.to_string())
            };
            // Best effort: a guest that cannot sync is still stopped; its writes since the
            // last sync may be lost, which the log line says.
            match tokio::time::timeout(Duration::from_secs(2), sync).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(vm = %state.name, %error, "guest sync failed; stopping anyway")
                }
                Err(_) => tracing::warn!(vm = %state.name, "guest sync timed out; stopping anyway"),
            }
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

struct Shutdown;

impl Step<StopState> for Shutdown {
    fn name(&self) -> &'static str {
        "shutdown"
    }

    fn intent(&self, _: &OpCx<'_>, _: &StopState) -> Vec<Handle> {
        Vec::new()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut StopState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            let Some(p) = alive(state.process) else {
                release_sockets(cx)?;
                return Ok(Vec::new());
            };
            let vmm = recorded_vmm(cx.layout, state.vm_id, p);
            if state.stop_timeout_ms == 0 {
                // No grace asked for: asking the guest to power off in no time would only
                // race the kill.
                tracing::info!(vm = %state.name, "stop timeout 0: killing the VMM at once");
            } else if let Err(error) = cx.vmm.shutdown(&vmm).await {
                tracing::warn!(vm = %state.name, %error, "the graceful shutdown request failed; killing the VMM");
            } else {
                let timeout = Duration::from_millis(state.stop_timeout_ms);
                let gone = cx
                    .vmm
                    .wait_dead(&vmm, timeout)
                    .await
                    .map_err(|e| StepError::Other(format!("cannot watch the VMM: {e}")))?;
                if gone {
                    release_sockets(cx)?;
                    return Ok(Vec::new());
                }
                tracing::warn!(vm = %state.name, timeout_ms = state.stop_timeout_ms,
                    "the guest did not power off in time; killing the VMM");
            }
            kill_vmm(cx.vmm, &vmm).await?;
            release_sockets(cx)?;
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

/// Removes the socket files of VM `cx.target`'s VMM (API, vsock or serial agent socket, and
/// the fake's guest side).
/// Every step that ends a VMM calls it as soon as the VMM is gone, so that an operation
/// failing in a later step never leaves a dead VMM's sockets behind.
fn release_sockets(cx: &OpCx<'_>) -> Result<(), StepError> {
    let vm_id = target_vm(cx)?;
    // The agent's serial socket too (QEMU's): the session with it ends with the VMM.
    cx.agents.forget(&cx.layout.vm_agent_socket(vm_id));
    for socket in [
        cx.layout.vm_api_socket(vm_id),
        cx.layout.vm_vsock_socket(vm_id),
        cx.layout.vm_agent_socket(vm_id),
    ] {
        let socket = path_in_vms(cx.layout, &socket.display().to_string())?;
        remove_file_if_present(&socket)?;
        let mut guest = socket.into_os_string();
        guest.push(".guest");
        remove_file_if_present(std::path::Path::new(&guest))?;
    }
    Ok(())
}

/// Ends the VMM at once: SIGKILL to the recorded process's group. Shared by kill and delete.
pub(crate) struct KillVmm;

impl Step<StopState> for KillVmm {
    fn name(&self) -> &'static str {
        "kill"
    }

    fn intent(&self, _: &OpCx<'_>, _: &StopState) -> Vec<Handle> {
        Vec::new()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut StopState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            if let Some(p) = state.process {
                kill_vmm(cx.vmm, &recorded_vmm(cx.layout, state.vm_id, p)).await?;
            }
            release_sockets(cx)?;
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

/// Removes the socket files a dead VMM leaves. Shared by stop and kill.
pub(crate) struct ReleaseSockets;

impl Step<StopState> for ReleaseSockets {
    fn name(&self) -> &'static str {
        "release-sockets"
    }

    fn intent(&self, _: &OpCx<'_>, _: &StopState) -> Vec<Handle> {
        Vec::new()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        _: &'a mut StopState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            release_sockets(cx)?;
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
