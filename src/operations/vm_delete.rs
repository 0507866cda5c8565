//! `vm.delete`: kills a VM's VMM if it runs, removes its directory (disks, sockets, console)
//! and forgets it. Irreversible.
//!
//! | step           | intent      | ensure                                                      | undo    |
//! |----------------|-------------|-------------------------------------------------------------|---------|
//! | `kill`         | —           | SIGKILL the recorded process (pid + start time), if any, and remove its socket files | nothing |
//! | `release-tap`  | the VM's tap | remove the VM's tap (the ledger's, recorded in the parameters; `bt<vm id>` when none was) through banger-helper; a missing one is fine (no helper needed) | nothing |
//! | `remove-files` | dir `vms/<id>` | remove the VM directory; a missing one is fine           | nothing (irreversible) |
//!
//! Recovery rolls deletes forward from the parameters. Domain events: → deleting with
//! `OperationStarted`; `VmRemoved` (which releases every handle the VM held: IP, MAC, CID,
//! tap, process, directory) with `OperationSucceeded`; → failed with `OperationRolledBack` (a
//! directory that cannot be removed; `vm delete` again retries).

use banger_events::{Event, Handle, OpId, OpKind, Target, VmRemoved, VmState, VmStateChanged};

use super::store::{self, dir_handle};
use super::vm_common::{release_taps, target_vm};
use super::vm_stop::{KillVmm, StopState, prepare};
use super::{
    BoxFuture, OpCx, OpError, OperationKind, ResumeError, Runner, Step, StepError, blocking,
};
use crate::host::network::tap_name;

pub struct VmDelete;

const STEPS: &[&dyn Step<StopState>] = &[&KillVmm, &ReleaseTap, &RemoveFiles];

impl OperationKind for VmDelete {
    const KIND: OpKind = OpKind::VmDelete;
    type State = StopState;

    fn steps() -> &'static [&'static dyn Step<StopState>] {
        STEPS
    }

    fn start_events(_: &OpCx<'_>, state: &StopState) -> Vec<Event> {
        vec![Event::VmStateChanged(VmStateChanged {
            vm_id: state.vm_id,
            from: state.from,
            to: VmState::Deleting,
        })]
    }

    fn finish(_: &OpCx<'_>, state: &StopState) -> Vec<Event> {
        vec![Event::VmRemoved(VmRemoved { vm_id: state.vm_id })]
    }

    fn rolled_back_events(target: &Target) -> Vec<Event> {
        match target {
            Target::Vm { vm_id, .. } => vec![Event::VmStateChanged(VmStateChanged {
                vm_id: *vm_id,
                from: VmState::Deleting,
                to: VmState::Failed,
            })],
            _ => Vec::new(),
        }
    }

    fn after_failure(target: &Target) -> String {
        let name = match target {
            Target::Vm { name, .. } => name.as_str(),
            _ => "NAME",
        };
        format!(
            "a delete cannot be undone: the VM's VMM (if it had one) is gone and the VM is marked failed; fix the cause and run `banger vm delete {name}` again"
        )
    }

    fn resume_state(target: &Target, parameters: &str) -> Result<StopState, ResumeError> {
        StopState::resume(target, parameters)
    }
}

/// Handles `vm.delete`.
pub async fn run(runner: &Runner, op_id: OpId, name: &str) -> Result<StopState, OpError> {
    let (claim, state) = prepare(
        runner,
        op_id,
        OpKind::VmDelete,
        name,
        std::time::Duration::ZERO,
        None,
        true,
    )?;
    let parameters = state.parameters();
    runner.run::<VmDelete>(&claim, parameters, state).await
}

/// The tap is the one the ledger gave the VM, recorded in the parameters so that recovery
/// finds it; a VM with none recorded gets the name its own tap would have ([`tap_name`]).
struct ReleaseTap;

fn vm_tap(state: &StopState) -> String {
    state.tap.clone().unwrap_or_else(|| tap_name(state.vm_id))
}

impl Step<StopState> for ReleaseTap {
    fn name(&self) -> &'static str {
        "release-tap"
    }

    fn intent(&self, _: &OpCx<'_>, state: &StopState) -> Vec<Handle> {
        vec![Handle::Tap {
            name: vm_tap(state),
        }]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut StopState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            let tap = [Handle::Tap {
                name: vm_tap(state),
            }];
            release_taps(cx, &tap).await?;
            Ok(Vec::new())
        })
    }

    fn undo<'a>(
        &'a self,
        _: &'a OpCx<'a>,
        _: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        // A removed tap is not put back: delete is rolled forward, never back.
        Box::pin(async { Ok(()) })
    }
}

struct RemoveFiles;

impl Step<StopState> for RemoveFiles {
    fn name(&self) -> &'static str {
        "remove-files"
    }

    fn intent(&self, cx: &OpCx<'_>, state: &StopState) -> Vec<Handle> {
        vec![dir_handle(&cx.layout.vm_dir(state.vm_id))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        _: &'a mut StopState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            let dir = cx.layout.vm_dir(target_vm(cx)?);
            blocking("removing the VM directory", move || {
                store::remove_dir_if_present(&dir)
            })
            .await?;
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
