//! The VM view: what each live VM is (name, spec), where it is in its lifecycle, and its VMM
//! process.
//!
//! ```text
//!   VmDefined ──▶ present (state Creating) ── VmStateChanged ──▶ state = `to`
//!                    │                                            (the log is believed; `from`
//!                    │                                             is not checked)
//!                    └── VmRemoved ──▶ gone, with every handle it owned
//! ```
//!
//! The VM's process (`VmView::process`) is the one VMM process the VM runs. It is set by
//! - `HandleAcquired { owner: Vm(id), handle: Process }`, and
//! - a `Process` handle in a `StepSucceeded`'s output, under an operation whose target is the
//!   VM (the boot step of create / start / restart records the firecracker it launched there,
//!   so the view does not depend on the daemon also appending a `HandleAcquired`).
//!
//! It is cleared, and the VM's `Process` handle in the ledger released with it, when
//! - `VmExited` or `VmFoundDead` name the recorded pid (a report about an older pid does not
//!   clear a newer process),
//! - `VmStateChanged` reaches `Stopped` (a stopped VM has no VMM, by definition),
//! - `HandleReleased` releases that process handle,
//! - `UndoSucceeded` undoes the step that produced it.
//!
//! Events about a VM this state does not know (never defined, or already removed) are ignored.
//! No IO: whether a recorded pid is still alive is the daemon's question, not this module's.

use banger_events::{
    Handle, OpId, Owner, Seq, VmBackendChosen, VmChanged, VmDefined, VmExited, VmFoundDead,
    VmHostKeyRecorded, VmId, VmSpec, VmState, VmStateChanged, VmmKind, WorkspaceExported,
    WorkspaceImported,
};
use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::Projections;

/// One live VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct VmView {
    pub id: VmId,
    pub name: String,
    pub spec: VmSpec,
    pub state: VmState,
    pub defined_seq: Seq,
    pub defined_at_unix_ms: u64,
    /// Time of the last event that changed this view.
    pub changed_at_unix_ms: u64,
    /// The VMM process, while the VM has one.
    pub process: Option<ProcessRef>,
    /// How the VMM process last ended on its own.
    pub last_exit: Option<ExitView>,
    /// The daemon found the VM's process gone when it started; cleared by the next start.
    pub found_dead: bool,
    /// The VMM that runs it and why (`VmBackendChosen`); `None` for a VM defined before
    /// banger recorded one, which runs on Firecracker (see [`VmView::vmm`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<VmBackend>,
    /// The checkout last imported into the VM (`WorkspaceImported`), updated by exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceView>,
    /// The ssh host key recorded at the first boot whose guest presented one
    /// (`VmHostKeyRecorded`); `None` until then (an image without sshd never has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<HostKeyView>,
}

/// A VM's workspace: which host checkout is where in the guest, as of the last import (or
/// export, which moves `tree_hash` to what the host holds after it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
pub struct WorkspaceView {
    pub host_path: String,
    pub guest_path: String,
    /// The checkout's HEAD at the import; empty when it had no commit.
    pub commit: String,
    pub tree_hash: String,
    pub imported_at_unix_ms: u64,
    /// The last export, when there was one since the import.
    pub exported_at_unix_ms: Option<u64>,
    /// The operation (the import, or a later export) whose manifest of the synced tree
    /// bangerd keeps as a cache (`vms/<id>/workspace-<op>.json`): the base that tells guest
    /// changes from host changes.
    pub manifest_op: Option<OpId>,
}

/// A VM's recorded ssh host key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
pub struct HostKeyView {
    pub algorithm: String,
    pub public_key: String,
    pub fingerprint_sha256: String,
    pub recorded_seq: Seq,
}

/// Which VMM runs a VM, and why it was chosen.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
pub struct VmBackend {
    pub vmm: VmmKind,
    pub reason: String,
}

impl VmView {
    /// The VMM that runs this VM: the recorded one, or Firecracker for a VM defined before
    /// backends were recorded (the only backend those builds had).
    pub fn vmm(&self) -> VmmKind {
        self.backend
            .as_ref()
            .map_or(VmmKind::Firecracker, |backend| backend.vmm)
    }
}

/// A process as the log recorded it: the pid and its start time, so that a reused pid is not
/// mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
pub struct ProcessRef {
    pub pid: u32,
    pub start_time_ticks: u64,
}

impl ProcessRef {
    /// The `Handle::Process` this reference stands for.
    pub fn handle(self) -> Handle {
        Handle::Process {
            pid: self.pid,
            start_time_ticks: self.start_time_ticks,
        }
    }

    pub(crate) fn of(handle: &Handle) -> Option<ProcessRef> {
        match *handle {
            Handle::Process {
                pid,
                start_time_ticks,
            } => Some(ProcessRef {
                pid,
                start_time_ticks,
            }),
            _ => None,
        }
    }
}

/// The last unrequested exit of a VM's VMM process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ExitView {
    pub pid: u32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The last lines of the serial console, to say why.
    pub console_tail: String,
    pub seq: Seq,
    pub at_unix_ms: u64,
}

impl Projections {
    pub(crate) fn vm_defined(&mut self, seq: Seq, at: u64, e: &VmDefined) {
        // Ids are never reused, so a second definition is a duplicate: the first one stands.
        self.vms.entry(e.vm_id).or_insert_with(|| VmView {
            id: e.vm_id,
            name: e.name.clone(),
            spec: e.spec.clone(),
            state: VmState::Creating,
            defined_seq: seq,
            defined_at_unix_ms: at,
            changed_at_unix_ms: at,
            process: None,
            last_exit: None,
            found_dead: false,
            backend: None,
            workspace: None,
            host_key: None,
        });
    }

    pub(crate) fn workspace_imported(&mut self, at: u64, op: Option<OpId>, e: &WorkspaceImported) {
        if let Some(vm) = self.vms.get_mut(&e.vm_id) {
            vm.workspace = Some(WorkspaceView {
                host_path: e.host_path.clone(),
                guest_path: e.guest_path.clone(),
                commit: e.commit.clone(),
                tree_hash: e.tree_hash.clone(),
                imported_at_unix_ms: at,
                exported_at_unix_ms: None,
                manifest_op: op,
            });
            vm.changed_at_unix_ms = at;
        }
    }

    /// An export brings the host to the guest's state: the recorded tree hash follows, so the
    /// host checkout no longer looks newer than the VM's copy. An export into another
    /// checkout than the imported one leaves the record alone.
    pub(crate) fn workspace_exported(&mut self, at: u64, op: Option<OpId>, e: &WorkspaceExported) {
        if let Some(vm) = self.vms.get_mut(&e.vm_id)
            && let Some(workspace) = &mut vm.workspace
            && workspace.host_path == e.host_path
        {
            workspace.tree_hash = e.tree_hash.clone();
            workspace.exported_at_unix_ms = Some(at);
            workspace.manifest_op = op;
            vm.changed_at_unix_ms = at;
        }
    }

    pub(crate) fn vm_backend_chosen(&mut self, at: u64, e: &VmBackendChosen) {
        if let Some(vm) = self.vms.get_mut(&e.vm_id) {
            vm.backend = Some(VmBackend {
                vmm: e.vmm,
                reason: e.reason.clone(),
            });
            vm.changed_at_unix_ms = at;
        }
    }

    /// The first recorded key stands: a later event about another key (which bangerd never
    /// appends: it refuses a changed key) does not replace it.
    pub(crate) fn vm_host_key_recorded(&mut self, seq: Seq, at: u64, e: &VmHostKeyRecorded) {
        if let Some(vm) = self.vms.get_mut(&e.vm_id)
            && vm.host_key.is_none()
        {
            vm.host_key = Some(HostKeyView {
                algorithm: e.algorithm.clone(),
                public_key: e.public_key.clone(),
                fingerprint_sha256: e.fingerprint_sha256.clone(),
                recorded_seq: seq,
            });
            vm.changed_at_unix_ms = at;
        }
    }

    pub(crate) fn vm_changed(&mut self, at: u64, e: &VmChanged) {
        if let Some(vm) = self.vms.get_mut(&e.vm_id) {
            vm.spec = e.spec.clone();
            vm.changed_at_unix_ms = at;
        }
    }

    pub(crate) fn vm_state_changed(&mut self, at: u64, e: &VmStateChanged) {
        let Some(vm) = self.vms.get_mut(&e.vm_id) else {
            return;
        };
        vm.state = e.to;
        vm.changed_at_unix_ms = at;
        match e.to {
            VmState::Starting | VmState::Running => vm.found_dead = false,
            VmState::Stopped => self.clear_vm_process(e.vm_id, None),
            _ => {}
        }
    }

    pub(crate) fn vm_exited(&mut self, seq: Seq, at: u64, e: &VmExited) {
        let Some(vm) = self.vms.get_mut(&e.vm_id) else {
            return;
        };
        vm.last_exit = Some(ExitView {
            pid: e.pid,
            exit_code: e.exit_code,
            signal: e.signal,
            console_tail: e.console_tail.clone(),
            seq,
            at_unix_ms: at,
        });
        vm.changed_at_unix_ms = at;
        self.clear_vm_process(e.vm_id, Some(e.pid));
    }

    pub(crate) fn vm_found_dead(&mut self, at: u64, e: &VmFoundDead) {
        let Some(vm) = self.vms.get_mut(&e.vm_id) else {
            return;
        };
        vm.found_dead = true;
        vm.changed_at_unix_ms = at;
        self.clear_vm_process(e.vm_id, Some(e.pid));
    }

    pub(crate) fn vm_removed(&mut self, vm_id: VmId) {
        self.vms.remove(&vm_id);
        self.release_all_of(Owner::Vm(vm_id));
    }

    /// Records `handle` as the VM's VMM process (no-op for other handles or unknown VMs).
    pub(crate) fn set_vm_process(&mut self, vm_id: VmId, handle: &Handle) {
        if let (Some(vm), Some(process)) = (self.vms.get_mut(&vm_id), ProcessRef::of(handle)) {
            vm.process = Some(process);
        }
    }

    /// The VM's process is gone: forget it, and release its ledger entry when the VM held it.
    /// With `pid`, only a process with that pid is forgotten.
    pub(crate) fn clear_vm_process(&mut self, vm_id: VmId, pid: Option<u32>) {
        let Some(vm) = self.vms.get_mut(&vm_id) else {
            return;
        };
        let Some(process) = vm.process else {
            return;
        };
        if pid.is_some_and(|pid| pid != process.pid) {
            return;
        }
        vm.process = None;
        let handle = process.handle();
        if self
            .handles
            .get(&handle)
            .is_some_and(|view| view.owner == Owner::Vm(vm_id))
        {
            self.release_handle(&handle);
        }
    }

    /// Called when `handle` left the ledger or was undone: if it was the VM's process, the VM
    /// no longer has one.
    pub(crate) fn forget_vm_process_if(&mut self, vm_id: VmId, handle: &Handle) {
        if let Some(vm) = self.vms.get_mut(&vm_id)
            && vm.process.is_some()
            && vm.process == ProcessRef::of(handle)
        {
            vm.process = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ProcessRef;
    use crate::testkit::*;
    use banger_events::*;

    fn state_changed(vm_id: VmId, from: VmState, to: VmState) -> Event {
        Event::VmStateChanged(VmStateChanged { vm_id, from, to })
    }

    fn acquired_process(vm_id: VmId, pid: u32, ticks: u64) -> Event {
        Event::HandleAcquired(HandleAcquired {
            owner: Owner::Vm(vm_id),
            handle: process(pid, ticks),
        })
    }

    fn exited(vm_id: VmId, pid: u32) -> Event {
        Event::VmExited(VmExited {
            vm_id,
            pid,
            exit_code: None,
            signal: Some(9),
            console_tail: "Kernel panic".into(),
        })
    }

    #[test]
    fn defined_vm_starts_creating_with_its_spec() {
        let mut log = Log::new();
        let seq = log.push(
            None,
            Event::VmDefined(VmDefined {
                vm_id: VmId(1),
                name: "dev".into(),
                spec: spec(),
            }),
        );
        let state = log.fold();
        let vm = state.vm_by_name("dev").expect("defined");
        assert_eq!(vm.id, VmId(1));
        assert_eq!(vm.state, VmState::Creating);
        assert_eq!(vm.spec, spec());
        assert_eq!(vm.defined_seq, seq);
        assert_eq!(vm.defined_at_unix_ms, T0 + seq.0);
        assert_eq!(vm.changed_at_unix_ms, T0 + seq.0);
        assert!(vm.process.is_none() && vm.last_exit.is_none() && !vm.found_dead);
        assert!(state.vm_by_name("other").is_none());
    }

    #[test]
    fn a_second_definition_of_the_same_id_is_ignored() {
        let mut log = Log::new();
        log.create_vm(OpId(1), VmId(1), "dev");
        log.push(
            None,
            Event::VmDefined(VmDefined {
                vm_id: VmId(1),
                name: "imposter".into(),
                spec: spec(),
            }),
        );
        let state = log.fold();
        assert_eq!(state.vms[&VmId(1)].name, "dev");
        assert_eq!(state.vms[&VmId(1)].state, VmState::Stopped);
    }

    #[test]
    fn changed_and_state_changed_update_the_view() {
        let mut log = Log::new();
        log.create_vm(OpId(1), VmId(1), "dev");
        let mut bigger = spec();
        bigger.vcpus = 8;
        log.push(
            None,
            Event::VmChanged(VmChanged {
                vm_id: VmId(1),
                spec: bigger.clone(),
            }),
        );
        let seq = log.push(
            None,
            state_changed(VmId(1), VmState::Stopped, VmState::Starting),
        );
        let state = log.fold();
        let vm = &state.vms[&VmId(1)];
        assert_eq!(vm.spec, bigger);
        assert_eq!(vm.state, VmState::Starting);
        assert_eq!(vm.changed_at_unix_ms, T0 + seq.0);
    }

    #[test]
    fn handle_acquired_sets_the_process_and_exit_clears_it() {
        let mut log = Log::new();
        log.create_vm(OpId(1), VmId(1), "dev");
        log.push(None, acquired_process(VmId(1), 42, 1000));
        let state = log.fold();
        assert_eq!(
            state.vms[&VmId(1)].process,
            Some(ProcessRef {
                pid: 42,
                start_time_ticks: 1000
            })
        );

        let seq = log.push(None, exited(VmId(1), 42));
        let state = log.fold();
        let vm = &state.vms[&VmId(1)];
        assert!(vm.process.is_none());
        let exit = vm.last_exit.as_ref().expect("exit recorded");
        assert_eq!((exit.pid, exit.signal, exit.seq), (42, Some(9), seq));
        assert_eq!(exit.console_tail, "Kernel panic");
        assert!(
            state.handles.is_empty(),
            "the dead process's handle is released"
        );
    }

    #[test]
    fn an_exit_of_an_older_pid_keeps_the_current_process() {
        let mut log = Log::new();
        log.create_vm(OpId(1), VmId(1), "dev");
        log.push(None, acquired_process(VmId(1), 43, 2000));
        log.push(None, exited(VmId(1), 42));
        let state = log.fold();
        let vm = &state.vms[&VmId(1)];
        assert_eq!(vm.process.map(|p| p.pid), Some(43));
        assert_eq!(vm.last_exit.as_ref().map(|e| e.pid), Some(42));
    }

    #[test]
    fn a_boot_steps_output_sets_the_process_and_its_undo_clears_it() {
        let mut log = Log::new();
        log.create_vm(OpId(1), VmId(1), "dev");
        let op = Some(OpId(2));
        log.push(op, op_started(OpKind::VmStart, vm_target(VmId(1), "dev")));
        log.push(op, step_started("boot", vec![]));
        log.push(op, step_succeeded("boot", vec![tap("t"), process(7, 70)]));
        let state = log.fold();
        assert_eq!(state.vms[&VmId(1)].process.map(|p| p.pid), Some(7));

        log.push(op, step_failed("wait-for-agent", "timeout"));
        log.push(op, undo_started("boot"));
        log.push(op, undo_succeeded("boot"));
        let state = log.fold();
        assert!(state.vms[&VmId(1)].process.is_none());
    }

    #[test]
    fn the_first_recorded_host_key_stands() {
        let mut log = Log::new();
        log.create_vm(OpId(1), VmId(1), "dev");
        let recorded = |key: &str| {
            Event::VmHostKeyRecorded(VmHostKeyRecorded {
                vm_id: VmId(1),
                algorithm: "ssh-ed25519".into(),
                public_key: key.into(),
                fingerprint_sha256: format!("SHA256:{key}"),
            })
        };
        assert!(log.fold().vms[&VmId(1)].host_key.is_none());
        let seq = log.push(None, recorded("AAAAfirst"));
        log.push(None, recorded("AAAAsecond"));
        let state = log.fold();
        let key = state.vms[&VmId(1)].host_key.as_ref().expect("recorded");
        assert_eq!(
            (key.public_key.as_str(), key.recorded_seq),
            ("AAAAfirst", seq)
        );
        // A key for a VM this state does not know is ignored.
        let mut log = Log::new();
        log.push(None, recorded("AAAAorphan"));
        assert!(log.fold().vms.is_empty());
    }

    #[test]
    fn releasing_the_process_handle_clears_the_process() {
        let mut log = Log::new();
        log.create_vm(OpId(1), VmId(1), "dev");
        log.push(None, acquired_process(VmId(1), 42, 1000));
        log.push(
            None,
            Event::HandleReleased(HandleReleased {
                handle: process(42, 1000),
            }),
        );
        assert!(log.fold().vms[&VmId(1)].process.is_none());
    }

    #[test]
    fn stopped_clears_the_process_and_starting_clears_found_dead() {
        let mut log = Log::new();
        log.create_vm(OpId(1), VmId(1), "dev");
        log.push(None, acquired_process(VmId(1), 42, 1000));
        log.push(
            None,
            state_changed(VmId(1), VmState::Running, VmState::Stopped),
        );
        let state = log.fold();
        assert!(state.vms[&VmId(1)].process.is_none());
        assert!(state.handles.is_empty());

        log.push(None, acquired_process(VmId(1), 50, 5000));
        log.push(
            None,
            Event::VmFoundDead(VmFoundDead {
                vm_id: VmId(1),
                pid: 50,
                start_time_ticks: 5000,
            }),
        );
        let state = log.fold();
        let vm = &state.vms[&VmId(1)];
        assert!(vm.found_dead);
        assert!(vm.process.is_none());

        log.push(
            None,
            state_changed(VmId(1), VmState::Stopped, VmState::Starting),
        );
        assert!(!log.fold().vms[&VmId(1)].found_dead);
    }

    #[test]
    fn removed_vm_disappears_and_later_events_about_it_are_ignored() {
        let mut log = Log::new();
        log.create_vm(OpId(1), VmId(1), "dev");
        log.push(None, acquired_process(VmId(1), 42, 1000));
        log.push(None, Event::VmRemoved(VmRemoved { vm_id: VmId(1) }));
        log.push(
            None,
            state_changed(VmId(1), VmState::Stopped, VmState::Running),
        );
        log.push(None, exited(VmId(1), 42));
        log.push(
            None,
            Event::VmChanged(VmChanged {
                vm_id: VmId(1),
                spec: spec(),
            }),
        );
        let state = log.fold();
        assert!(state.vms.is_empty());
        assert!(state.handles.is_empty());
    }

    #[test]
    fn vm_view_serializes_state_in_snake_case() {
        let mut log = Log::new();
        log.create_vm(OpId(1), VmId(0xab), "dev");
        let state = log.fold();
        let json = serde_json::to_value(&state.vms[&VmId(0xab)]).unwrap();
        assert_eq!(json["state"], "stopped");
        assert_eq!(json["id"], "00000000000000ab");
        assert_eq!(json["process"], serde_json::Value::Null);
    }

    #[test]
    fn process_ref_round_trips_through_its_handle() {
        let process = ProcessRef {
            pid: 1,
            start_time_ticks: 2,
        };
        assert_eq!(ProcessRef::of(&process.handle()), Some(process));
        assert_eq!(ProcessRef::of(&tap("t")), None);
    }
}
