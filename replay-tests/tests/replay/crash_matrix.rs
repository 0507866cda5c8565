//! The crash matrix: every operation kind × every step of its table × every crash point,
//! against the real bangerd with the fake firecracker, each case on a fresh `BANGER_ROOT`.
//!
//! A case sets up what its operation needs (a kernel `k` and an image `img`, plus a VM `dev`
//! or a second kernel or image), starts the operation with `BANGER_FAILPOINT` set so that
//! bangerd aborts at the chosen place (abort, like SIGKILL, leaves nothing to clean up
//! after), restarts it without the failpoint, and checks:
//!
//! 1. every operation in the log ended: nothing in flight, each one succeeded or rolled back
//!    (no case injects an undo error, so *stuck* is a failure), and the interrupted one was
//!    finished the way its recovery decision says (roll forward → succeeded, roll back or
//!    resume undo → rolled back) with the domain state that outcome implies;
//! 2. the views match the host: a running VM's recorded VMM is alive with the recorded start
//!    time; every process whose command line names the test root belongs to the process group
//!    of a running VM's recorded VMM (so a stopped or removed VM has no VMM or agent left, and
//!    no unrecorded VMM survives); a VM that does not run records no process; `vms/`,
//!    `kernels/` and `images/` hold exactly
//!    the VMs, kernels and images the views list (so no `.staging-*`, `.removing-*` or
//!    orphaned VM directory), and the files the views name exist;
//! 3. nothing leaked: after the checks, killing the recorded VMM process groups and bangerd
//!    leaves no process that names the test root;
//! 4. no acknowledged event was lost: every event the client had seen before the crash (the
//!    fixture's answers, and what `events.follow` delivered up to the crash, the
//!    `OperationStarted` included) is still in the log at the same sequence number, and the
//!    log is gapless.
//!
//! Crash points ([`Point`]), for step `S` of kind `K`:
//!
//! | point       | `BANGER_FAILPOINT` (first run)         | then                                  |
//! |-------------|-----------------------------------------|---------------------------------------|
//! | `before`    | `K:S:before` (StepStarted durable)      | restart                               |
//! | `after`     | `K:S:after` (effect done, no StepSucceeded) | restart                           |
//! | `succeeded` | `K:S:succeeded` (StepSucceeded durable) | restart                               |
//! | `mid-undo`  | `K:LAST:error,K:S:undo-before`          | restart (the rollback resumes)        |
//! | `undo-twice`| `K:LAST:error,K:S:undo-after`           | restart (the undo of S runs again)    |
//! | `recovery`  | `K:S:after`                             | restart with `K:S:after,K:S:undo-before`: it dies in its recovery; restart again |
//!
//! `after` is also the idempotency sweep: an operation rolled forward runs step `S` again
//! over its own finished effect, and one rolled back undoes a finished effect from the
//! intent alone. `undo-twice` runs each undo twice; `recovery` runs a rolled-forward step
//! three times.
//!
//! The step names come from the log of a run of each operation without failpoints (its
//! `StepStarted` events), so a step added to a table is covered without touching this file.
//! One `#[test]` per operation kind; within one, `BANGER_CRASH_JOBS` cases (default 2) run at
//! once. Every case prints one summary line.

mod lab;
mod storm;

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger::api::{ImageListResult, KernelListResult, OperationsListResult, VmListResult, VmView};
use banger::host::process::{self, Liveness};
use banger::operations::tap_fill;
use banger::rpc::ClientError;
use banger_events::{
    Envelope, Event, Fold, Handle, OpId, OpKind, Owner, RecoveryDecision, VmState,
};
use banger_projections::{OpStatus, Projections};
use serde_json::{Value, json};

use lab::{Daemon, Inputs, Started, aborted, dir_names, processes_mentioning};

/// An operation kind of the matrix: what it needs set up, and how it is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    KernelImport,
    KernelRemove,
    ImageRegister,
    ImageDelete,
    VmCreate,
    VmStart,
    VmStop,
    VmKill,
    VmDelete,
    VmSet,
}

impl Op {
    fn kind(self) -> OpKind {
        match self {
            Op::KernelImport => OpKind::KernelImport,
            Op::KernelRemove => OpKind::KernelRemove,
            Op::ImageRegister => OpKind::ImageRegister,
            Op::ImageDelete => OpKind::ImageDelete,
            Op::VmCreate => OpKind::VmCreate,
            Op::VmStart => OpKind::VmStart,
            Op::VmStop => OpKind::VmStop,
            Op::VmKill => OpKind::VmKill,
            Op::VmDelete => OpKind::VmDelete,
            Op::VmSet => OpKind::VmSet,
        }
    }

    /// The fixture (kernel `k`, image `img`) and what this operation needs on top of it.
    async fn set_up(self, daemon: &Daemon, inputs: &Inputs) {
        let kernel = json!({"name": "k", "from": inputs.kernel_dir.display().to_string()});
        call_ok(daemon, "kernel.import", kernel).await;
        let image =
            json!({"name": "img", "rootfs": inputs.rootfs.display().to_string(), "kernel": "k"});
        call_ok(daemon, "image.register", image).await;
        match self {
            Op::KernelImport | Op::ImageRegister | Op::VmCreate => {}
            Op::KernelRemove => {
                let k2 = json!({"name": "k2", "from": inputs.kernel_dir.display().to_string()});
                call_ok(daemon, "kernel.import", k2).await;
            }
            Op::ImageDelete => {
                let img2 = json!({"name": "img2", "rootfs": inputs.rootfs.display().to_string()});
                call_ok(daemon, "image.register", img2).await;
            }
            Op::VmStop | Op::VmKill | Op::VmDelete => {
                call_ok(daemon, "vm.create", json!({"name": "dev", "image": "img"})).await;
            }
            Op::VmStart | Op::VmSet => {
                call_ok(daemon, "vm.create", json!({"name": "dev", "image": "img"})).await;
                call_ok(daemon, "vm.stop", json!({"name": "dev"})).await;
            }
        }
    }

    /// The request that the case interrupts.
    fn request(self, inputs: &Inputs) -> (&'static str, Value) {
        let dev = json!({"name": "dev"});
        match self {
            Op::KernelImport => (
                "kernel.import",
                json!({"name": "k2", "from": inputs.kernel_dir.display().to_string()}),
            ),
            Op::KernelRemove => ("kernel.remove", json!({"name": "k2"})),
            Op::ImageRegister => (
                "image.register",
                json!({"name": "img2", "rootfs": inputs.rootfs.display().to_string(), "kernel": "k"}),
            ),
            Op::ImageDelete => ("image.delete", json!({"name": "img2"})),
            Op::VmCreate => ("vm.create", json!({"name": "dev", "image": "img"})),
            Op::VmStart => ("vm.start", dev),
            Op::VmStop => ("vm.stop", dev),
            Op::VmKill => ("vm.kill", dev),
            Op::VmDelete => ("vm.delete", dev),
            Op::VmSet => (
                "vm.set",
                json!({"name": "dev", "vcpus": 2, "work_disk_mib": 96}),
            ),
        }
    }

    /// Checks the domain state an ended operation of this kind must leave: `succeeded`
    /// says whether it succeeded (else it rolled back).
    fn check_outcome(self, world: &World, succeeded: bool) -> Result<(), String> {
        let kernels: BTreeSet<&str> = world
            .kernels
            .kernels
            .iter()
            .map(|k| k.name.as_str())
            .collect();
        let images: BTreeSet<&str> = world
            .images
            .images
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        let dev = world.vms.vms.iter().find(|vm| vm.name == "dev");
        let state = dev.map(|vm| vm.state);
        let want = |ok: bool, what: String| if ok { Ok(()) } else { Err(what) };
        match (self, succeeded) {
            (Op::KernelImport, s) | (Op::KernelRemove, s) => {
                let present = (self == Op::KernelImport) == s;
                want(
                    kernels.contains("k2") == present && kernels.contains("k"),
                    format!("kernels {kernels:?}: k2 should be present: {present}"),
                )
            }
            (Op::ImageRegister, s) | (Op::ImageDelete, s) => {
                let present = (self == Op::ImageRegister) == s;
                want(
                    images.contains("img2") == present && images.contains("img"),
                    format!("images {images:?}: img2 should be present: {present}"),
                )
            }
            (Op::VmCreate, true) | (Op::VmStart, true) => want(
                state == Some(VmState::Running),
                format!("dev should run: {state:?}"),
            ),
            // A stop or kill rolls back only after an injected error in its last step, when
            // the VMM is already gone: the restarted daemon finds it dead and says so.
            (Op::VmStop, false) | (Op::VmKill, false) => want(
                state == Some(VmState::Running)
                    || (state == Some(VmState::Stopped) && dev.is_some_and(|vm| vm.found_dead)),
                format!("dev should run, or be stopped as found dead: {dev:?}"),
            ),
            (Op::VmCreate, false) | (Op::VmDelete, true) => {
                want(dev.is_none(), format!("dev should be gone: {state:?}"))
            }
            (Op::VmStart, false) | (Op::VmStop, true) | (Op::VmKill, true) => want(
                state == Some(VmState::Stopped),
                format!("dev should be stopped: {state:?}"),
            ),
            // Only an injected error in `remove-files` rolls a delete back, before any file
            // went: the VM stays, failed (or stopped once the restart found its VMM dead).
            (Op::VmDelete, false) => want(
                matches!(state, Some(VmState::Failed | VmState::Stopped)),
                format!("dev should be failed or stopped: {dev:?}"),
            ),
            (Op::VmSet, s) => {
                let spec = dev.map(|vm| (vm.state, vm.spec.vcpus, vm.spec.work_disk_mib));
                let (vcpus, disk) = if s { (2, 96) } else { (1, 64) };
                want(
                    spec == Some((VmState::Stopped, vcpus, disk)),
                    format!(
                        "dev should be stopped with {vcpus} vCPUs and a {disk} MiB work disk: {spec:?}"
                    ),
                )
            }
        }
    }
}

/// Where in a step the daemon dies. See the table in the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    Before,
    After,
    Succeeded,
    MidUndo,
    UndoTwice,
    Recovery,
}

const POINTS: [Point; 6] = [
    Point::Before,
    Point::After,
    Point::Succeeded,
    Point::MidUndo,
    Point::UndoTwice,
    Point::Recovery,
];

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::Before => "before",
            Point::After => "after",
            Point::Succeeded => "succeeded",
            Point::MidUndo => "mid-undo",
            Point::UndoTwice => "undo-twice",
            Point::Recovery => "recovery",
        }
    }
}

/// One cell of the matrix.
#[derive(Clone, Debug)]
struct Case {
    op: Op,
    step: String,
    /// The last step of the table: where `mid-undo` and `undo-twice` inject their error.
    last: String,
    point: Point,
}

impl Case {
    fn name(&self) -> String {
        format!("{}:{}:{}", self.op.kind(), self.step, self.point.name())
    }

    /// `BANGER_FAILPOINT` of the run that is interrupted.
    fn first_failpoint(&self) -> String {
        let (k, s, last) = (self.op.kind(), &self.step, &self.last);
        match self.point {
            Point::Before => format!("{k}:{s}:before"),
            Point::After | Point::Recovery => format!("{k}:{s}:after"),
            Point::Succeeded => format!("{k}:{s}:succeeded"),
            Point::MidUndo => format!("{k}:{last}:error,{k}:{s}:undo-before"),
            Point::UndoTwice => format!("{k}:{last}:error,{k}:{s}:undo-after"),
        }
    }

    /// `BANGER_FAILPOINT` of the restart whose recovery is interrupted, if any: the step is
    /// either undone (roll back: dies before its undo) or run again (roll forward: dies after
    /// its effect), whichever recovery does first.
    fn recovery_failpoint(&self) -> Option<String> {
        let (k, s) = (self.op.kind(), &self.step);
        (self.point == Point::Recovery).then(|| format!("{k}:{s}:after,{k}:{s}:undo-before"))
    }
}

/// What the daemon shows after recovery.
struct World {
    ops: OperationsListResult,
    vms: VmListResult,
    kernels: KernelListResult,
    images: ImageListResult,
}

async fn call_ok(daemon: &Daemon, method: &str, params: Value) -> Value {
    match daemon.call::<Value>(method, params.clone()).await {
        Ok(value) => value,
        Err(error) => panic!(
            "{method} {params}: {error}\nbangerd's output:\n{}",
            daemon.output()
        ),
    }
}

/// The spare taps a daemon of these tests keeps (the default `network.tap_pool`).
const TAP_POOL: usize = 2;

/// The views, once bangerd is quiet: no operation runs, and the pool of spare taps is full
/// (or was never needed: no VM, no spare). After a restart or a create, bangerd tops up its
/// pool in the background; that operation must have run and ended too.
async fn world(daemon: &Daemon) -> World {
    let deadline = Instant::now() + lab::DEADLINE;
    loop {
        let unresolved: OperationsListResult =
            serde_json::from_value(call_ok(daemon, "daemon.operations.list", json!({})).await)
                .expect("operations");
        let running = unresolved
            .operations
            .iter()
            .any(|op| op.status == OpStatus::Running);
        let ledger = ledger(daemon).await;
        let spares = tap_fill::pool_taps(&ledger).len();
        let pool_settled = spares == TAP_POOL || (ledger.vms.is_empty() && spares == 0);
        if !running && pool_settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bangerd never settled: {spares} spare taps, operations {:?}\n{}",
            unresolved.operations,
            daemon.output()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    World {
        ops: serde_json::from_value(
            call_ok(daemon, "daemon.operations.list", json!({"all": true})).await,
        )
        .expect("operations"),
        vms: serde_json::from_value(call_ok(daemon, "vm.list", json!({})).await).expect("vms"),
        kernels: serde_json::from_value(call_ok(daemon, "kernel.list", json!({})).await)
            .expect("kernels"),
        images: serde_json::from_value(call_ok(daemon, "image.list", json!({})).await)
            .expect("images"),
    }
}

/// Runs `op` once without failpoints on a fresh root and returns its step names in the
/// order the log shows them started. The run is checked like a case's end state.
async fn discover_steps(op: Op, inputs: &Inputs) -> Vec<String> {
    let mut daemon = Daemon::new();
    daemon.start_ready(None);
    op.set_up(&daemon, inputs).await;
    let (method, params) = op.request(inputs);
    call_ok(&daemon, method, params).await;
    let events = daemon.events().await;
    let op_id = events
        .iter()
        .rev()
        .find_map(|e| match &e.event {
            Event::OperationStarted(s) if s.kind == op.kind() => e.op_id,
            _ => None,
        })
        .expect("the operation's OperationStarted");
    let mut steps: Vec<String> = Vec::new();
    for envelope in events.iter().filter(|e| e.op_id == Some(op_id)) {
        if let Event::StepStarted(started) = &envelope.event
            && !steps.contains(&started.step)
        {
            steps.push(started.step.clone());
        }
    }
    assert!(!steps.is_empty(), "{} ran no step", op.kind());
    let world = world(&daemon).await;
    let checked = check_ended(&world, op_id, op, false)
        .and(check_host(&daemon, &world).await)
        .and(teardown(&mut daemon, &world).await);
    if let Err(problem) = checked {
        panic!(
            "{} without failpoints: {problem}\nbangerd's output:\n{}",
            op.kind(),
            daemon.output()
        );
    }
    steps
}

/// Runs one case; `Ok` carries the summary line, `Err` what went wrong.
async fn run_case(case: &Case, inputs: &Inputs) -> Result<String, String> {
    let started_at = Instant::now();
    let mut daemon = Daemon::new();
    let result = run_case_on(case, inputs, &mut daemon).await;
    let elapsed = started_at.elapsed().as_millis();
    match result {
        Ok(outcome) => Ok(format!(
            "crash matrix: {:<16} {:<20} {:<11} → {outcome} ({elapsed} ms)",
            case.op.kind().as_str(),
            case.step,
            case.point.name()
        )),
        Err(problem) => Err(format!(
            "crash matrix: {} FAILED: {problem}\nroot: {}\nbangerd's output:\n{}",
            case.name(),
            daemon.root().display(),
            daemon.output()
        )),
    }
}

async fn run_case_on(case: &Case, inputs: &Inputs, daemon: &mut Daemon) -> Result<String, String> {
    let failpoint = case.first_failpoint();
    // The fixture runs operations of several kinds (kernel.import, image.register, vm.create,
    // …), maybe of the case's own: set it up without the failpoint, then restart cleanly with
    // it (a clean stop leaves nothing to recover; VMs run on and are re-adopted).
    daemon.start_ready(None);
    case.op.set_up(daemon, inputs).await;
    daemon.shutdown().await;
    daemon.start_ready(Some(&failpoint));

    // Everything acknowledged so far, and a live subscription that records what it is sent.
    let mut acknowledged = daemon.events().await;
    let last = acknowledged.last().map(|e| e.seq.0).unwrap_or(0);
    let follower = daemon.follow_from(last).await;
    let (method, params) = case.op.request(inputs);
    let answer = daemon.call::<Value>(method, params).await;
    if !matches!(answer, Err(ClientError::Closed | ClientError::Io(_))) {
        return Err(format!(
            "failpoint {failpoint} did not crash bangerd: {method} answered {answer:?}"
        ));
    }
    let status = daemon.wait_exit().await;
    if !aborted(&status) {
        return Err(format!(
            "bangerd ended with {status}, not by the failpoint's abort"
        ));
    }
    let followed = follower.await.map_err(|e| format!("the follower: {e}"))?;
    let op_id = followed
        .iter()
        .find_map(|e| match &e.event {
            Event::OperationStarted(s) if s.kind == case.op.kind() => e.op_id,
            _ => None,
        })
        .ok_or("events.follow never delivered the operation's OperationStarted")?;
    acknowledged.extend(followed.into_iter().filter(|e| e.seq.0 > last));

    if let Some(second) = case.recovery_failpoint() {
        match daemon.start(Some(&second)) {
            Started::Exited(status) if aborted(&status) => {}
            Started::Exited(status) => {
                return Err(format!("the recovering bangerd ended with {status}"));
            }
            Started::Ready => {
                return Err(format!("failpoint {second} did not fire during recovery"));
            }
        }
    }
    daemon.start_ready(None);

    let world = world(daemon).await;
    let outcome = check_ended(&world, op_id, case.op, true)?;
    check_host(daemon, &world).await?;
    check_acknowledged(daemon, &acknowledged).await?;
    teardown(daemon, &world).await?;
    Ok(outcome)
}

/// Check 1: every operation ended; the interrupted one (`op_id`) the way its recovery
/// decision says, leaving the domain state that implies. Returns "status (decision)".
fn check_ended(world: &World, op_id: OpId, op: Op, crashed: bool) -> Result<String, String> {
    for view in &world.ops.operations {
        if !matches!(view.status, OpStatus::Succeeded | OpStatus::RolledBack) {
            return Err(format!(
                "operation {} ({}) is {} after recovery: {view:?}",
                view.op_id, view.kind, view.status
            ));
        }
    }
    let view = world
        .ops
        .operations
        .iter()
        .find(|v| v.op_id == op_id)
        .ok_or_else(|| format!("operation {op_id} is not in the views"))?;
    let succeeded = view.status == OpStatus::Succeeded;
    match (crashed, view.recovery) {
        (false, None) if succeeded => {}
        (false, other) => return Err(format!("a plain run ended {} ({other:?})", view.status)),
        (true, None) => {
            return Err("no recovery decision recorded for the interrupted operation".into());
        }
        (true, Some(RecoveryDecision::RollForward)) if succeeded => {}
        (true, Some(RecoveryDecision::RollBack | RecoveryDecision::ResumeUndo)) if !succeeded => {}
        (true, Some(decision)) => {
            return Err(format!(
                "recovery decided {decision:?} but the operation is {}",
                view.status
            ));
        }
    }
    op.check_outcome(world, succeeded)?;
    Ok(format!(
        "{}{}",
        view.status,
        view.recovery
            .map(|d| format!(" ({d:?})"))
            .unwrap_or_default()
    ))
}

/// Check 2: the views match the host. Processes are polled (an agent dies shortly after its
/// VMM, by PDEATHSIG).
async fn check_host(daemon: &Daemon, world: &World) -> Result<(), String> {
    let layout = daemon.layout();
    let vm_dir_name = |vm: &VmView| {
        layout
            .vm_dir(vm.id)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let mut listed: Vec<String> = world.vms.vms.iter().map(vm_dir_name).collect();
    listed.sort();
    let on_disk = dir_names(&layout.vms_dir());
    if listed != on_disk {
        return Err(format!("vms/ holds {on_disk:?}, the views list {listed:?}"));
    }
    for vm in &world.vms.vms {
        for disk in [layout.vm_root_disk(vm.id), layout.vm_work_disk(vm.id)] {
            if !disk.exists() {
                return Err(format!("{} has no {}", vm.name, disk.display()));
            }
        }
        match (vm.state, vm.process) {
            (VmState::Running, Some(p)) => {
                let liveness = process::liveness(p.pid, p.start_time_ticks);
                if liveness.as_ref().ok() != Some(&Liveness::Alive) {
                    return Err(format!(
                        "{} is running but its VMM {} is {liveness:?}",
                        vm.name, p.pid
                    ));
                }
            }
            (VmState::Stopped | VmState::Failed, None) => {}
            (state, process) => {
                return Err(format!("{} is {state:?} with process {process:?}", vm.name));
            }
        }
    }
    let kernels: Vec<String> = world
        .kernels
        .kernels
        .iter()
        .map(|k| k.name.clone())
        .collect();
    let on_disk = dir_names(&layout.kernels_dir());
    if sorted(kernels.clone()) != on_disk {
        return Err(format!(
            "kernels/ holds {on_disk:?}, the views list {kernels:?}"
        ));
    }
    for kernel in &world.kernels.kernels {
        if !std::path::Path::new(&kernel.kernel_path).exists() {
            return Err(format!(
                "kernel {} has no {}",
                kernel.name, kernel.kernel_path
            ));
        }
    }
    let images: Vec<String> = world.images.images.iter().map(|i| i.name.clone()).collect();
    let on_disk = dir_names(&layout.images_dir());
    if sorted(images.clone()) != on_disk {
        return Err(format!(
            "images/ holds {on_disk:?}, the views list {images:?}"
        ));
    }
    for image in &world.images.images {
        if !std::path::Path::new(&image.rootfs_path).exists() {
            return Err(format!("image {} has no {}", image.name, image.rootfs_path));
        }
    }
    // Taps: the host has exactly the taps the ledger holds (VMs' and spare ones), and every
    // running VM has one.
    let ledger = ledger(daemon).await;
    let mut recorded: Vec<String> = ledger
        .handles
        .keys()
        .filter_map(|handle| match handle {
            Handle::Tap { name } => Some(name.clone()),
            _ => None,
        })
        .collect();
    recorded.sort();
    let taps = daemon.network.taps();
    if taps != recorded {
        return Err(format!(
            "the host has taps {taps:?}, the ledger {recorded:?}"
        ));
    }
    for vm in &world.vms.vms {
        let has_tap = ledger
            .handles_of(Owner::Vm(vm.id))
            .any(|(handle, _)| matches!(handle, Handle::Tap { .. }));
        if vm.state == VmState::Running && !has_tap {
            return Err(format!("{} is running without a tap", vm.name));
        }
    }
    // Every process naming the root belongs to a running VM's recorded VMM group.
    let groups: BTreeSet<i32> = world
        .vms
        .vms
        .iter()
        .filter_map(|vm| vm.process.map(|p| p.pid as i32))
        .collect();
    let deadline = Instant::now() + lab::DEADLINE;
    loop {
        let strays: Vec<(u32, i32)> = processes_mentioning(daemon.root())
            .into_iter()
            .filter(|(_, pgrp)| !groups.contains(pgrp))
            .collect();
        if strays.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let described: Vec<String> = strays.iter().map(|(pid, _)| describe(*pid)).collect();
            return Err(format!(
                "processes outside every running VM's VMM group: {described:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The whole log folded into the views, for what no RPC lists (the ledger of handles).
async fn ledger(daemon: &Daemon) -> Projections {
    let mut state = Projections::default();
    for envelope in daemon.events().await {
        state.apply(&envelope);
    }
    state
}

/// Check 4: every acknowledged event is in the log at its sequence number; the log has no gap.
async fn check_acknowledged(daemon: &Daemon, acknowledged: &[Envelope]) -> Result<(), String> {
    let log = daemon.events().await;
    for (index, envelope) in log.iter().enumerate() {
        if envelope.seq.0 != index as u64 + 1 {
            return Err(format!("the log has a gap before seq {}", envelope.seq));
        }
    }
    for seen in acknowledged {
        let stored = log.get(seen.seq.0 as usize - 1);
        let same = stored.map(|s| serde_json::to_value(s).ok() == serde_json::to_value(seen).ok());
        if same != Some(true) {
            return Err(format!(
                "acknowledged event {} was {seen:?}, the log now has {stored:?}",
                seen.seq
            ));
        }
    }
    Ok(())
}

/// Check 3: stops bangerd, kills the recorded VMM process groups of running VMs, and then
/// insists that no process names the root.
async fn teardown(daemon: &mut Daemon, world: &World) -> Result<(), String> {
    daemon.kill();
    for vm in &world.vms.vms {
        if let Some(p) = vm.process
            && process::liveness(p.pid, p.start_time_ticks).ok() == Some(Liveness::Alive)
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(p.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let deadline = Instant::now() + lab::DEADLINE;
    loop {
        let left = processes_mentioning(daemon.root());
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let described: Vec<String> = left.iter().map(|(pid, _)| describe(*pid)).collect();
            return Err(format!("leaked past teardown: {described:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// A process for an error message: pid and command line.
fn describe(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    format!(
        "{pid}: {}",
        String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .trim_end()
    )
}

/// Runs the whole column of `op`: discovers its steps, then every step × point with
/// `BANGER_CRASH_JOBS` cases at once; prints one line per case and fails with every failed
/// case's story.
fn matrix(op: Op) {
    if let Some(reason) = lab::skip_reason() {
        eprintln!("{reason}");
        return;
    }
    lab::binaries();
    let inputs = Arc::new(Inputs::new());
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    };
    let steps = runtime().block_on(discover_steps(op, &inputs));
    let last = steps.last().expect("a step").clone();
    let cases: VecDeque<Case> = steps
        .iter()
        .flat_map(|step| {
            POINTS.iter().map(|&point| Case {
                op,
                step: step.clone(),
                last: last.clone(),
                point,
            })
        })
        .collect();
    let total = cases.len();
    println!(
        "crash matrix: {} — {} steps {steps:?} × {} points = {total} cases",
        op.kind(),
        steps.len(),
        POINTS.len()
    );
    let jobs = std::env::var("BANGER_CRASH_JOBS")
        .ok()
        .and_then(|j| j.parse::<usize>().ok())
        .filter(|&j| j > 0)
        .unwrap_or(2);
    let queue = Arc::new(Mutex::new(cases));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..jobs.min(total))
        .map(|_| {
            let (queue, failures, inputs) = (queue.clone(), failures.clone(), inputs.clone());
            std::thread::spawn(move || {
                let runtime = runtime();
                loop {
                    let Some(case) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
                    else {
                        return;
                    };
                    match runtime.block_on(run_case(&case, &inputs)) {
                        Ok(line) => println!("{line}"),
                        Err(story) => {
                            println!("crash matrix: {} FAILED", case.name());
                            failures
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(story);
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a crash-matrix worker panicked");
    }
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        failures.is_empty(),
        "{} of {total} {} cases failed:\n\n{}",
        failures.len(),
        op.kind(),
        failures.join("\n\n")
    );
}

#[test]
fn crash_matrix_kernel_import() {
    matrix(Op::KernelImport);
}

#[test]
fn crash_matrix_kernel_remove() {
    matrix(Op::KernelRemove);
}

#[test]
fn crash_matrix_image_register() {
    matrix(Op::ImageRegister);
}

#[test]
fn crash_matrix_image_delete() {
    matrix(Op::ImageDelete);
}

#[test]
fn crash_matrix_vm_create() {
    matrix(Op::VmCreate);
}

#[test]
fn crash_matrix_vm_start() {
    matrix(Op::VmStart);
}

#[test]
fn crash_matrix_vm_stop() {
    matrix(Op::VmStop);
}

#[test]
fn crash_matrix_vm_kill() {
    matrix(Op::VmKill);
}

#[test]
fn crash_matrix_vm_delete() {
    matrix(Op::VmDelete);
}

#[test]
fn crash_matrix_vm_set() {
    matrix(Op::VmSet);
}
