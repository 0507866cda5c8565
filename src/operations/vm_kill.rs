//! `vm.kill`: ends a VM's VMM at once (SIGKILL to its process group), without asking the
//! guest. Shares its steps and state with [`super::vm_stop`].
//!
//! | step              | intent | ensure                                                     | undo    |
//! |-------------------|--------|------------------------------------------------------------|---------|
//! | `kill`            | —      | SIGKILL the recorded process (pid + start time) and wait   | nothing |
//! |                   |        | until it is gone (a dead or reused pid is left alone), then |         |
//! |                   |        | remove its socket files                                     |         |
//! | `release-sockets` | —      | remove the VMM's API socket and the agent's (vsock, serial) | nothing |
//!
//! Recovery rolls kills forward from the parameters, like stops. Domain events are the
//! stop's: → stopping at the start; `HandleReleased` + stopping → stopped at the end.

use banger_events::{Event, OpId, OpKind, Target};

use super::vm_stop::{
    KillVmm, ReleaseSockets, StopState, back_to_running, prepare, stopped_events, to_stopping,
};
use super::{OpCx, OpError, OperationKind, ResumeError, Runner, Step};

pub struct VmKill;

const STEPS: &[&dyn Step<StopState>] = &[&KillVmm, &ReleaseSockets];

impl OperationKind for VmKill {
    const KIND: OpKind = OpKind::VmKill;
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

/// Handles `vm.kill`.
pub async fn run(runner: &Runner, op_id: OpId, name: &str) -> Result<(), OpError> {
    let (claim, state) = prepare(
        runner,
        op_id,
        OpKind::VmKill,
        name,
        std::time::Duration::ZERO,
        None,
        false,
    )?;
    let parameters = state.parameters();
    runner.run::<VmKill>(&claim, parameters, state).await?;
    Ok(())
}
