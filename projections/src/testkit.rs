//! Builders for the unit tests: a log of envelopes with gapless sequence numbers and a fixed
//! clock, and one constructor per event so the tests read like the log they describe.

use banger_events::*;

use crate::Projections;

/// Milliseconds of the first event; each later one is a millisecond later.
pub const T0: u64 = 1_700_000_000_000;

#[derive(Default)]
pub struct Log {
    pub events: Vec<Envelope>,
}

impl Log {
    pub fn new() -> Self {
        Log::default()
    }

    /// Appends `event` and returns its sequence number.
    pub fn push(&mut self, op_id: Option<OpId>, event: Event) -> Seq {
        let seq = Seq(self.events.len() as u64 + 1);
        self.events.push(Envelope {
            seq,
            event_id: EventId(seq.0 as u128),
            op_id,
            cause: None,
            at_unix_ms: T0 + seq.0,
            schema_version: SCHEMA_VERSION,
            event,
        });
        seq
    }

    pub fn fold(&self) -> Projections {
        let mut state = Projections::default();
        for envelope in &self.events {
            state.apply(envelope);
        }
        state
    }

    /// A complete, successful `vm.create` of `vm_id` named `name` (left Stopped).
    pub fn create_vm(&mut self, op_id: OpId, vm_id: VmId, name: &str) {
        let op = Some(op_id);
        self.push(op, op_started(OpKind::VmCreate, vm_target(vm_id, name)));
        self.push(
            op,
            Event::VmDefined(VmDefined {
                vm_id,
                name: name.into(),
                spec: spec(),
            }),
        );
        self.push(op, step_started("prepare-rootfs", vec![file("/r")]));
        self.push(op, step_succeeded("prepare-rootfs", vec![file("/r")]));
        self.push(
            op,
            Event::VmStateChanged(VmStateChanged {
                vm_id,
                from: VmState::Creating,
                to: VmState::Stopped,
            }),
        );
        self.push(op, Event::OperationSucceeded(OperationSucceeded {}));
    }
}

pub fn spec() -> VmSpec {
    VmSpec {
        image: "debian".into(),
        kernel: "6.1".into(),
        vcpus: 2,
        memory_mib: 1024,
        root_disk_mib: 4096,
        work_disk_mib: 2048,
    }
}

pub fn vm_target(vm_id: VmId, name: &str) -> Target {
    Target::Vm {
        vm_id,
        name: name.into(),
    }
}

pub fn op_started(kind: OpKind, target: Target) -> Event {
    Event::OperationStarted(OperationStarted {
        kind,
        target,
        parameters: "{}".into(),
    })
}

pub fn step_started(step: &str, intent: Vec<Handle>) -> Event {
    Event::StepStarted(StepStarted {
        step: step.into(),
        intent,
    })
}

pub fn step_succeeded(step: &str, produced: Vec<Handle>) -> Event {
    Event::StepSucceeded(StepSucceeded {
        step: step.into(),
        produced,
    })
}

pub fn step_failed(step: &str, error: &str) -> Event {
    Event::StepFailed(StepFailed {
        step: step.into(),
        error: error.into(),
    })
}

pub fn undo_started(step: &str) -> Event {
    Event::UndoStarted(UndoStarted { step: step.into() })
}

pub fn undo_succeeded(step: &str) -> Event {
    Event::UndoSucceeded(UndoSucceeded { step: step.into() })
}

pub fn undo_failed(step: &str, error: &str) -> Event {
    Event::UndoFailed(UndoFailed {
        step: step.into(),
        error: error.into(),
    })
}

pub fn op_stuck(step: &str, error: &str) -> Event {
    Event::OperationStuck(OperationStuck {
        step: step.into(),
        error: error.into(),
    })
}

pub fn image_registered(name: &str) -> Event {
    Event::ImageRegistered(ImageRegistered {
        name: name.into(),
        rootfs_path: format!("/images/{name}.ext4"),
        kernel: Some("6.1".into()),
        size_bytes: 1 << 30,
        sha256: "ab".repeat(32),
        source: format!("catalog:{name}"),
    })
}

pub fn kernel_registered(name: &str) -> Event {
    Event::KernelRegistered(KernelRegistered {
        name: name.into(),
        kernel_path: format!("/kernels/{name}/vmlinux"),
        initrd_path: Some(format!("/kernels/{name}/initrd")),
        version: name.into(),
        sha256: "cd".repeat(32),
        source: format!("catalog:{name}"),
    })
}

pub fn daemon_started(boot_id: &str) -> Event {
    Event::DaemonStarted(DaemonStarted {
        boot_id: boot_id.into(),
        version: "0.1.0".into(),
        pid: 100,
    })
}

pub fn tap(name: &str) -> Handle {
    Handle::Tap { name: name.into() }
}

pub fn file(path: &str) -> Handle {
    Handle::File { path: path.into() }
}

pub fn process(pid: u32, start_time_ticks: u64) -> Handle {
    Handle::Process {
        pid,
        start_time_ticks,
    }
}
