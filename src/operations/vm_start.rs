//! `vm.start`: boots a stopped VM from the disks it already has.
//!
//! | step                 | intent                           | ensure                         | undo                               |
//! |----------------------|----------------------------------|--------------------------------|------------------------------------|
//! | `network`            | the VM's tap                     | the tap exists on the bridge (a host reboot removes taps) | nothing: the VM owns its tap until delete |
//! | `launch-vmm`         | sockets `api.sock`, `vsock.sock` | see [`super::vm_common`]       | kill the VMM, remove the sockets   |
//! | `configure`          | —                                | see [`super::vm_common`]       | nothing                            |
//! | `instance-start`     | —                                | see [`super::vm_common`]       | nothing                            |
//! | `wait-for-agent`     | —                                | see [`super::vm_common`]       | nothing                            |
//! | `ssh-setup`          | —                                | best effort, see [`super::vm_ssh`] | nothing                        |
//!
//! Domain events: `VmStateChanged` stopped → starting with `OperationStarted`;
//! `HandleAcquired` (the VMM process and the tap, owned by the VM), `VmHostKeyRecorded` (when
//! `ssh-setup` learned a first host key) and starting → running with `OperationSucceeded`; starting → stopped with `OperationRolledBack` (live or in recovery,
//! which rolls starts back). The VM keeps the IP, MAC and CID it got at create.

use std::path::PathBuf;
use std::sync::Arc;

use banger_events::{
    Event, Handle, HandleAcquired, OpId, OpKind, Owner, Target, VmState, VmStateChanged,
};

use super::vm_common::{
    Allocation, BootState, Configure, InstanceStart, LaunchVmm, Network, VmHost, WaitForAgent,
};
use super::vm_ssh::SshSetup;
use super::{Claim, OpCx, OpError, OperationKind, Runner, Step};

pub struct VmStart;

const STEPS: &[&dyn Step<BootState>] = &[
    &Network {
        remove_on_undo: false,
    },
    &LaunchVmm,
    &Configure,
    &InstanceStart,
    &WaitForAgent,
    &SshSetup,
];

impl OperationKind for VmStart {
    const KIND: OpKind = OpKind::VmStart;
    type State = BootState;

    fn steps() -> &'static [&'static dyn Step<BootState>] {
        STEPS
    }

    fn start_events(_: &OpCx<'_>, state: &BootState) -> Vec<Event> {
        vec![Event::VmStateChanged(VmStateChanged {
            vm_id: state.vm_id,
            from: VmState::Stopped,
            to: VmState::Starting,
        })]
    }

    fn finish(_: &OpCx<'_>, state: &BootState) -> Vec<Event> {
        let mut events = Vec::new();
        // Acquiring a handle the VM already holds changes nothing; a VM created before it had
        // a tap gets its tap recorded here.
        if let Some(tap) = &state.tap {
            events.push(Event::HandleAcquired(HandleAcquired {
                owner: Owner::Vm(state.vm_id),
                handle: Handle::Tap { name: tap.clone() },
            }));
        }
        if let Some(launched) = &state.launched {
            events.push(Event::HandleAcquired(HandleAcquired {
                owner: Owner::Vm(state.vm_id),
                handle: Handle::Process {
                    pid: launched.pid,
                    start_time_ticks: launched.start_time_ticks,
                },
            }));
        }
        if let Some(key) = &state.host_key {
            events.push(Event::VmHostKeyRecorded(key.clone()));
        }
        events.push(Event::VmStateChanged(VmStateChanged {
            vm_id: state.vm_id,
            from: VmState::Starting,
            to: VmState::Running,
        }));
        events
    }

    fn rolled_back_events(target: &Target) -> Vec<Event> {
        match target {
            Target::Vm { vm_id, .. } => vec![Event::VmStateChanged(VmStateChanged {
                vm_id: *vm_id,
                from: VmState::Starting,
                to: VmState::Stopped,
            })],
            _ => Vec::new(),
        }
    }
}

/// Checks a `vm.start` of VM `name`, claims it, and runs the start.
pub async fn run(
    runner: &Runner,
    host: &Arc<VmHost>,
    op_id: OpId,
    name: &str,
) -> Result<BootState, OpError> {
    let (claim, state) = prepare(runner, host, op_id, name)?;
    let parameters = serde_json::json!({ "vm_id": state.vm_id, "name": name }).to_string();
    runner.run::<VmStart>(&claim, parameters, state).await
}

fn prepare(
    runner: &Runner,
    host: &Arc<VmHost>,
    op_id: OpId,
    name: &str,
) -> Result<(Claim, BootState), OpError> {
    let vm_id = super::vm_stop::vm_id_by_name(runner, name)?;
    let kernel_wanted = runner
        .journal()
        .view()
        .vms
        .get(&vm_id)
        .map(|vm| vm.spec.kernel.clone());
    // A shared claim on the kernel it boots (a VM's kernel never changes): `kernel.remove`
    // cannot take it away mid-boot.
    let claim = runner.claim(
        op_id,
        OpKind::VmStart,
        Target::Vm {
            vm_id,
            name: name.to_owned(),
        },
        kernel_wanted
            .iter()
            .map(|name| Target::Kernel { name: name.clone() })
            .collect(),
    )?;
    let view = runner.journal().view();
    let vm = view
        .vms
        .get(&vm_id)
        .ok_or_else(|| OpError::NotFound(format!("no VM named {name}; see `banger vm list`")))?;

    match vm.state {
        VmState::Stopped => {}
        VmState::Running | VmState::Starting => {
            return Err(OpError::WrongState(format!(
                "vm {name} is already running; to boot it afresh use `banger vm restart {name}`"
            )));
        }
        other => {
            return Err(OpError::WrongState(format!(
                "vm {name} is {other}; only a stopped VM can be started (see `banger vm show {name}`)"
            )));
        }
    }
    let allocation = Allocation::from_handles(view.handles_of(Owner::Vm(vm_id)).map(|(h, _)| h))
        .ok_or_else(|| {
            OpError::Internal(format!(
                "vm {name} holds no IP and vsock CID in the log; delete and create it again"
            ))
        })?;
    let tap = view
        .handles_of(Owner::Vm(vm_id))
        .find_map(|(handle, _)| match handle {
            Handle::Tap { name } => Some(name.clone()),
            _ => None,
        });
    let kernel = view.kernels.get(&vm.spec.kernel).ok_or_else(|| {
        OpError::NotFound(format!(
            "vm {name} boots kernel {}, which is no longer registered; import it again (`banger kernel import {} --from DIR`)",
            vm.spec.kernel, vm.spec.kernel
        ))
    })?;
    let state = BootState {
        host: host.clone(),
        vm_id,
        name: name.to_owned(),
        spec: vm.spec.clone(),
        vmm: vm.vmm(),
        vmm_reason: vm
            .backend
            .as_ref()
            .map(|backend| backend.reason.clone())
            .unwrap_or_default(),
        image_rootfs: PathBuf::new(),
        kernel_path: PathBuf::from(&kernel.kernel_path),
        initrd_path: kernel.initrd_path.as_ref().map(PathBuf::from),
        allocation: Some(allocation),
        tap,
        dns: Vec::new(),
        launched: None,
        child: None,
        host_key: None,
    };
    Ok((claim, state))
}
