//! `vm.set`: changes the vCPUs, memory or work-disk size of a stopped VM.
//!
//! | step               | intent                     | ensure                                                 | undo    |
//! |--------------------|----------------------------|--------------------------------------------------------|---------|
//! | `resize-work-disk` | file `vms/<id>/work.ext4`  | when growing: extend the file (sparse) to the new size, | nothing |
//! |                    |                            | `e2fsck -f -p`, `resize2fs`; a no-op at the right size  |         |
//!
//! The undo is deliberately nothing: a grown ext4 cannot be shrunk back safely, and a work
//! disk larger than its spec says is harmless (the next `vm set` grows it to at least the new
//! size, and ext4 resizing to the current size is a no-op). Shrinking is refused up front.
//! Domain event: `VmChanged` with the new spec, with `OperationSucceeded`. Recovery rolls
//! `vm.set` back, which leaves the spec as it was.

use banger_events::{Event, Handle, OpId, OpKind, Target, VmChanged, VmId, VmSpec, VmState};

use super::vm_common::file_handle;
use super::vm_create::check_shape;
use super::{BoxFuture, OpCx, OpError, OperationKind, Runner, Step, StepError, blocking};
use crate::api::VmSetParams;
use crate::host::disk::{DiskError, run_tool};

const MIB: u64 = 1024 * 1024;

pub struct VmSet;

pub struct SetState {
    pub vm_id: VmId,
    pub old: VmSpec,
    pub new: VmSpec,
}

const STEPS: &[&dyn Step<SetState>] = &[&ResizeWorkDisk];

impl OperationKind for VmSet {
    const KIND: OpKind = OpKind::VmSet;
    type State = SetState;

    fn steps() -> &'static [&'static dyn Step<SetState>] {
        STEPS
    }

    fn finish(_: &OpCx<'_>, state: &SetState) -> Vec<Event> {
        vec![Event::VmChanged(VmChanged {
            vm_id: state.vm_id,
            spec: state.new.clone(),
        })]
    }
}

/// Handles `vm.set`.
pub async fn run(runner: &Runner, op_id: OpId, params: &VmSetParams) -> Result<(), OpError> {
    let name = params.name.as_str();
    if params.vcpus.is_none() && params.memory_mib.is_none() && params.work_disk_mib.is_none() {
        return Err(OpError::InvalidArgument(
            "nothing to change: give vcpus, memory_mib or work_disk_mib".into(),
        ));
    }
    let vm_id = super::vm_stop::vm_id_by_name(runner, name)?;
    let claim = runner.claim(
        op_id,
        OpKind::VmSet,
        Target::Vm {
            vm_id,
            name: name.to_owned(),
        },
        Vec::new(),
    )?;
    let state = {
        let view = runner.journal().view();
        let vm = view.vms.get(&vm_id).ok_or_else(|| {
            OpError::NotFound(format!("no VM named {name}; see `banger vm list`"))
        })?;
        match vm.state {
            VmState::Stopped => {}
            VmState::Running | VmState::Starting => {
                return Err(OpError::WrongState(format!(
                    "vm {name} is running; stop it first (banger vm stop {name})"
                )));
            }
            other => {
                return Err(OpError::WrongState(format!(
                    "vm {name} is {other}; only a stopped VM can be changed (see `banger vm show {name}`)"
                )));
            }
        }
        let mut new = vm.spec.clone();
        new.vcpus = params.vcpus.unwrap_or(new.vcpus);
        new.memory_mib = params.memory_mib.unwrap_or(new.memory_mib);
        new.work_disk_mib = params.work_disk_mib.unwrap_or(new.work_disk_mib);
        check_shape(new.vcpus, new.memory_mib, new.work_disk_mib)?;
        if new.work_disk_mib < vm.spec.work_disk_mib {
            return Err(OpError::InvalidArgument(format!(
                "the work disk of vm {name} is {} MiB; shrinking it to {} MiB is not supported (only growing is)",
                vm.spec.work_disk_mib, new.work_disk_mib
            )));
        }
        SetState {
            vm_id,
            old: vm.spec.clone(),
            new,
        }
    };
    let parameters = serde_json::to_string(params).unwrap_or_default();
    runner.run::<VmSet>(&claim, parameters, state).await?;
    Ok(())
}

struct ResizeWorkDisk;

impl Step<SetState> for ResizeWorkDisk {
    fn name(&self) -> &'static str {
        "resize-work-disk"
    }

    fn intent(&self, cx: &OpCx<'_>, state: &SetState) -> Vec<Handle> {
        vec![file_handle(&cx.layout.vm_work_disk(state.vm_id))]
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut SetState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        let path = cx.layout.vm_work_disk(state.vm_id);
        let grow = state.new.work_disk_mib > state.old.work_disk_mib;
        let bytes = state.new.work_disk_mib.saturating_mul(MIB);
        Box::pin(async move {
            if !grow {
                return Ok(Vec::new());
            }
            let produced = vec![file_handle(&path)];
            blocking("growing the work disk", move || {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| StepError::io(format!("cannot open {}", path.display()), e))?;
                let len = file
                    .metadata()
                    .map_err(|e| StepError::io(format!("cannot stat {}", path.display()), e))?
                    .len();
                if len < bytes {
                    file.set_len(bytes)
                        .map_err(|e| StepError::io(format!("cannot grow {}", path.display()), e))?;
                }
                drop(file);
                // resize2fs insists on a freshly checked filesystem. e2fsck -p exits 1 when
                // it fixed something harmless, which is fine too.
                match run_tool("e2fsck", &["-f", "-p"], &path) {
                    Err(DiskError::Tool { status, .. }) if status == "exit status: 1" => {}
                    other => other?,
                }
                Ok(run_tool("resize2fs", &[], &path)?)
            })
            .await?;
            Ok(produced)
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
