//! A synthetic but realistic stream of events: VMs created, started, stopped and deleted by
//! operations made of steps, with host handles acquired and released. Deterministic from a
//! seed, so two runs fold to the same state.

use banger_events::*;

/// Produces `count` events (operations are cut off at the end, like a crash would).
pub fn synthetic_events(count: usize, seed: u64) -> Vec<NewEvent> {
    let ids = IdGenerator::seeded(seed);
    let mut out = Vec::with_capacity(count + 16);
    let mut live: std::collections::VecDeque<(VmId, String)> = Default::default();
    let mut n = 0u64;
    while out.len() < count {
        n += 1;
        if live.len() >= 256 {
            let (vm_id, name) = live.pop_front().expect("non-empty");
            lifecycle_tail(&mut out, &ids, vm_id, &name, n);
        } else {
            let vm_id = ids.vm_id();
            let name = format!("vm-{n}");
            create(&mut out, &ids, vm_id, &name, n);
            live.push_back((vm_id, name));
        }
    }
    out.truncate(count);
    out
}

fn create(out: &mut Vec<NewEvent>, ids: &IdGenerator, vm_id: VmId, name: &str, n: u64) {
    let op = ids.op_id();
    let target = Target::Vm {
        vm_id,
        name: name.to_owned(),
    };
    let ip = [10, 0, (n >> 8) as u8, n as u8];
    let tap = Handle::Tap {
        name: format!("bgr{n:x}"),
    };
    let disk = Handle::File {
        path: format!("/var/lib/banger/vms/{vm_id}/root.ext4"),
    };
    let spec = VmSpec {
        image: "debian-bookworm".into(),
        kernel: "6.1".into(),
        vcpus: 2,
        memory_mib: 1024,
        root_disk_mib: 4096,
        work_disk_mib: 8192,
    };
    let ev = |event| NewEvent::in_op(op, event);
    out.push(ev(Event::OperationStarted(OperationStarted {
        kind: OpKind::VmCreate,
        target,
        parameters: format!("{{\"name\":\"{name}\"}}"),
    })));
    out.push(ev(Event::VmDefined(VmDefined {
        vm_id,
        name: name.to_owned(),
        spec,
    })));
    for (step, handle) in [
        ("allocate-ip", Handle::Ip { addr: ip }),
        ("clone-root-disk", disk),
        ("get-tap", tap),
    ] {
        out.push(ev(Event::StepStarted(StepStarted {
            step: step.into(),
            intent: vec![handle.clone()],
        })));
        out.push(ev(Event::StepSucceeded(StepSucceeded {
            step: step.into(),
            produced: vec![handle.clone()],
        })));
        out.push(ev(Event::HandleAcquired(HandleAcquired {
            owner: Owner::Vm(vm_id),
            handle,
        })));
    }
    out.push(ev(Event::VmStateChanged(VmStateChanged {
        vm_id,
        from: VmState::Creating,
        to: VmState::Stopped,
    })));
    out.push(ev(Event::OperationSucceeded(OperationSucceeded {})));
}

fn lifecycle_tail(out: &mut Vec<NewEvent>, ids: &IdGenerator, vm_id: VmId, name: &str, n: u64) {
    let target = Target::Vm {
        vm_id,
        name: name.to_owned(),
    };
    let start = ids.op_id();
    let process = Handle::Process {
        pid: (n % 4_000_000) as u32 + 100,
        start_time_ticks: n,
    };
    out.push(NewEvent::in_op(
        start,
        Event::OperationStarted(OperationStarted {
            kind: OpKind::VmStart,
            target: target.clone(),
            parameters: "{}".into(),
        }),
    ));
    out.push(NewEvent::in_op(
        start,
        Event::StepStarted(StepStarted {
            step: "launch-vmm".into(),
            intent: vec![],
        }),
    ));
    out.push(NewEvent::in_op(
        start,
        Event::StepSucceeded(StepSucceeded {
            step: "launch-vmm".into(),
            produced: vec![process.clone()],
        }),
    ));
    out.push(NewEvent::in_op(
        start,
        Event::HandleAcquired(HandleAcquired {
            owner: Owner::Vm(vm_id),
            handle: process.clone(),
        }),
    ));
    out.push(NewEvent::in_op(
        start,
        Event::VmStateChanged(VmStateChanged {
            vm_id,
            from: VmState::Stopped,
            to: VmState::Running,
        }),
    ));
    out.push(NewEvent::in_op(
        start,
        Event::OperationSucceeded(OperationSucceeded {}),
    ));
    let delete = ids.op_id();
    out.push(NewEvent::in_op(
        delete,
        Event::OperationStarted(OperationStarted {
            kind: OpKind::VmDelete,
            target,
            parameters: "{}".into(),
        }),
    ));
    out.push(NewEvent::in_op(
        delete,
        Event::HandleReleased(HandleReleased { handle: process }),
    ));
    out.push(NewEvent::in_op(
        delete,
        Event::VmStateChanged(VmStateChanged {
            vm_id,
            from: VmState::Running,
            to: VmState::Deleting,
        }),
    ));
    out.push(NewEvent::in_op(
        delete,
        Event::VmRemoved(VmRemoved { vm_id }),
    ));
    out.push(NewEvent::in_op(
        delete,
        Event::OperationSucceeded(OperationSucceeded {}),
    ));
}
