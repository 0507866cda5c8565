//! The crash matrix: every operation kind × every step of its table × every crash point,
//! against the real bangerd with the fake firecracker, each case on a fresh `BANGER_ROOT`.
//!
//! A case sets up what its operation needs (a kernel `k` and an image `img`, plus a VM `dev`
//! or a second kernel or image; for `image.cache.prune`, an image pulled from the loopback
//! registry, which fills the blob cache, and an older build's aside copy), starts the
//! operation with `BANGER_FAILPOINT` set so that bangerd aborts at the chosen place (abort,
//! like SIGKILL, leaves nothing to clean up after), restarts it without the failpoint, and
//! checks:
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
//!    orphaned VM directory), and the files the views name exist; the blob cache holds only
//!    blobs that hash to their names, no temporary download, and no aside copy of a prune
//!    that ended;
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
/// A real registry on loopback for the `image.pull` column: the banger crate's own test
/// support, shared rather than copied.
#[path = "../../../tests/integration/registry/support.rs"]
mod registry_support;
mod storm;

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger::api::{ImageListResult, KernelListResult, OperationsListResult, VmListResult, VmView};
use banger::host::firecracker::{FirecrackerClient, Method};
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
    KernelPull,
    KernelRemove,
    ImageRegister,
    ImageDelete,
    ImagePull,
    ImagePromote,
    ImageCachePrune,
    VmCreate,
    VmStart,
    VmStop,
    VmKill,
    VmDelete,
    VmSet,
    WorkspaceImport,
    WorkspaceExport,
}

/// The checkout and the guest directory of a workspace case, under the case's own root (the
/// fake's guest is the host: its guest path is a directory of the test's).
fn workspace_dirs(root: &Path) -> (PathBuf, PathBuf) {
    (root.join("ws/app"), root.join("ws/guest/app"))
}

/// A small git checkout: two tracked files, an untracked one, a symlink.
fn make_checkout(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).expect("checkout dir");
    std::fs::write(dir.join("src/a.txt"), "host\n").expect("a file");
    std::fs::write(dir.join("b.txt"), "b\n").expect("a file");
    std::fs::write(dir.join("untracked.txt"), "u\n").expect("a file");
    std::os::unix::fs::symlink("src/a.txt", dir.join("link")).expect("a symlink");
    for args in [&["init", "-q"][..], &["add", "src", "b.txt", "link"]] {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .status()
            .expect("git");
        assert!(status.success(), "git {args:?}");
    }
}

impl Op {
    fn kind(self) -> OpKind {
        match self {
            Op::KernelImport => OpKind::KernelImport,
            Op::KernelPull => OpKind::KernelPull,
            Op::KernelRemove => OpKind::KernelRemove,
            Op::ImageRegister => OpKind::ImageRegister,
            Op::ImageDelete => OpKind::ImageDelete,
            Op::ImagePull => OpKind::ImagePull,
            Op::ImagePromote => OpKind::ImagePromote,
            Op::ImageCachePrune => OpKind::ImageCachePrune,
            Op::VmCreate => OpKind::VmCreate,
            Op::VmStart => OpKind::VmStart,
            Op::VmStop => OpKind::VmStop,
            Op::VmKill => OpKind::VmKill,
            Op::VmDelete => OpKind::VmDelete,
            Op::VmSet => OpKind::VmSet,
            Op::WorkspaceImport => OpKind::WorkspaceImport,
            Op::WorkspaceExport => OpKind::WorkspaceExport,
        }
    }

    /// Whether the column runs VMs (and so needs a test network, and root).
    fn runs_vms(self) -> bool {
        !matches!(
            self,
            Op::KernelImport
                | Op::KernelPull
                | Op::KernelRemove
                | Op::ImageRegister
                | Op::ImageDelete
                | Op::ImagePull
                | Op::ImageCachePrune
        )
    }

    /// The fixture (kernel `k`, image `img`) and what this operation needs on top of it.
    async fn set_up(self, daemon: &Daemon, inputs: &Inputs) {
        let kernel = json!({"name": "k", "from": inputs.kernel_dir.display().to_string()});
        call_ok(daemon, "kernel.import", kernel).await;
        let image =
            json!({"name": "img", "rootfs": inputs.rootfs.display().to_string(), "kernel": "k"});
        call_ok(daemon, "image.register", image).await;
        match self {
            Op::KernelImport | Op::ImageRegister | Op::ImagePull | Op::VmCreate => {}
            Op::KernelRemove => {
                let k2 = json!({"name": "k2", "from": inputs.kernel_dir.display().to_string()});
                call_ok(daemon, "kernel.import", k2).await;
            }
            // The case is a force-pull over a pulled kernel: every step does something.
            Op::KernelPull => {
                call_ok(daemon, "kernel.pull", json!({"name": "pulled"})).await;
            }
            Op::ImageDelete => {
                let img2 = json!({"name": "img2", "rootfs": inputs.rootfs.display().to_string()});
                call_ok(daemon, "image.register", img2).await;
            }
            // A cache the pull of img2 filled, and the aside copy an older build's crashed
            // prune left beside it: every step has something to do.
            Op::ImageCachePrune => {
                let (method, params) = Op::ImagePull.request(inputs, daemon.root());
                call_ok(daemon, method, params).await;
                lab::older_prune_leftover(&daemon.layout());
            }
            Op::VmStop | Op::VmKill | Op::VmDelete => {
                call_ok(daemon, "vm.create", json!({"name": "dev", "image": "img"})).await;
            }
            Op::VmStart | Op::VmSet | Op::ImagePromote => {
                call_ok(daemon, "vm.create", json!({"name": "dev", "image": "img"})).await;
                call_ok(daemon, "vm.stop", json!({"name": "dev"})).await;
            }
            // A running VM and a checkout; for an export, imported and then edited in the
            // guest (a change, an addition and a deletion), so that every step has work.
            Op::WorkspaceImport | Op::WorkspaceExport => {
                call_ok(daemon, "vm.create", json!({"name": "dev", "image": "img"})).await;
                let (checkout, guest) = workspace_dirs(daemon.root());
                make_checkout(&checkout);
                if self == Op::WorkspaceExport {
                    let (method, params) = Op::WorkspaceImport.request(inputs, daemon.root());
                    call_ok(daemon, method, params).await;
                    std::fs::write(guest.join("src/a.txt"), "guest\n").expect("guest edit");
                    std::fs::write(guest.join("new.txt"), "new\n").expect("guest file");
                    std::fs::remove_file(guest.join("b.txt")).expect("guest deletion");
                }
            }
        }
    }

    /// The request that the case interrupts.
    fn request(self, inputs: &Inputs, root: &Path) -> (&'static str, Value) {
        let dev = json!({"name": "dev"});
        match self {
            Op::KernelImport => (
                "kernel.import",
                json!({"name": "k2", "from": inputs.kernel_dir.display().to_string()}),
            ),
            Op::KernelRemove => ("kernel.remove", json!({"name": "k2"})),
            Op::KernelPull => ("kernel.pull", json!({"name": "pulled", "force": true})),
            Op::ImageRegister => (
                "image.register",
                json!({"name": "img2", "rootfs": inputs.rootfs.display().to_string(), "kernel": "k"}),
            ),
            Op::ImageDelete => ("image.delete", json!({"name": "img2"})),
            Op::ImagePull => (
                "image.pull",
                json!({"reference": inputs.image_reference(), "name": "img2", "kernel": "k"}),
            ),
            Op::ImagePromote => ("image.promote", json!({"vm": "dev", "name": "img2"})),
            Op::ImageCachePrune => ("image.cache.prune", json!({})),
            Op::VmCreate => ("vm.create", json!({"name": "dev", "image": "img"})),
            Op::VmStart => ("vm.start", dev),
            Op::VmStop => ("vm.stop", dev),
            Op::VmKill => ("vm.kill", dev),
            Op::VmDelete => ("vm.delete", dev),
            Op::VmSet => (
                "vm.set",
                json!({"name": "dev", "vcpus": 2, "work_disk_mib": 96}),
            ),
            Op::WorkspaceImport => {
                let (checkout, guest) = workspace_dirs(root);
                (
                    "vm.workspace.import",
                    json!({"name": "dev", "host_path": checkout, "guest_path": guest}),
                )
            }
            Op::WorkspaceExport => ("vm.workspace.export", dev),
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
            // Replaced or rolled back to the one it replaced: there either way, and its
            // files are checked against the views by `check_host`.
            (Op::KernelPull, _) => want(
                kernels.contains("pulled") && kernels.contains("k"),
                format!("kernels {kernels:?}: pulled and k should be present"),
            ),
            // A promote leaves its VM as it found it, stopped, whatever its outcome.
            (Op::ImagePromote, s) => want(
                images.contains("img2") == s
                    && images.contains("img")
                    && state == Some(VmState::Stopped),
                format!("images {images:?}: img2 should be present: {s}; dev stopped: {state:?}"),
            ),
            // Rolled forward or back, no blob from before the prune is left: a rollback (only
            // after an injected error in `delete-aside`) deletes what was set aside too. Only
            // the older build's leftover survives a rollback (`delete-aside` never ran). The
            // pulled image does not need the cache.
            (Op::ImageCachePrune, s) => {
                let leftovers: &[&str] = if s { &[] } else { &[lab::OLDER_PRUNE_LEFTOVER] };
                want(
                    world.cache_blobs.is_empty()
                        && world.cache_asides == leftovers
                        && images.contains("img2")
                        && images.contains("img"),
                    format!(
                        "cached blobs {:?}, aside copies {:?} (expected {leftovers:?}), \
                         images {images:?}",
                        world.cache_blobs, world.cache_asides
                    ),
                )
            }
            (Op::ImageRegister | Op::ImagePull, s) | (Op::ImageDelete, s) => {
                let present = (self == Op::ImageDelete) != s;
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
            // Imported or not, the VM runs on; the view records the workspace exactly when the
            // import succeeded.
            (Op::WorkspaceImport, s) => want(
                state == Some(VmState::Running)
                    && dev.is_some_and(|vm| vm.workspace.is_some() == s),
                format!("dev should run with a workspace recorded: {s}: {dev:?}"),
            ),
            // Exported: the guest's edit, addition and deletion are in the checkout. Rolled
            // back: the checkout is as it was. Either way no staging directory is left.
            (Op::WorkspaceExport, s) => {
                let checkout = &world.checkout;
                let expected = if s {
                    ("guest\n", false, true)
                } else {
                    ("host\n", true, false)
                };
                want(
                    state == Some(VmState::Running)
                        && (checkout.a.as_str(), checkout.b, checkout.new) == expected
                        && checkout.staging.is_empty(),
                    format!("checkout {checkout:?}, expected (a, b, new) = {expected:?}"),
                )
            }
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

/// What the daemon shows after recovery, and what the blob cache holds.
struct World {
    ops: OperationsListResult,
    vms: VmListResult,
    kernels: KernelListResult,
    images: ImageListResult,
    /// The names under the cache's `blobs/sha256/`.
    cache_blobs: Vec<String>,
    /// The aside copies of prunes beside the cache.
    cache_asides: Vec<String>,
    /// A workspace case's checkout.
    checkout: Checkout,
}

/// What a workspace case's checkout holds.
#[derive(Debug, Default)]
struct Checkout {
    a: String,
    b: bool,
    new: bool,
    staging: Vec<String>,
}

fn checkout_of(root: &Path) -> Checkout {
    let (dir, _) = workspace_dirs(root);
    Checkout {
        a: std::fs::read_to_string(dir.join("src/a.txt")).unwrap_or_default(),
        b: dir.join("b.txt").exists(),
        new: dir.join("new.txt").exists(),
        staging: dir_names(&dir)
            .into_iter()
            .filter(|n| n.starts_with(".banger-export-"))
            .collect(),
    }
}

/// Calls `method`, reading a streaming method's items (`image.pull`'s progress) to its end.
async fn call_any(daemon: &Daemon, method: &str, params: Value) -> Result<Value, ClientError> {
    if method != "image.pull" {
        return daemon.call::<Value>(method, params).await;
    }
    let mut stream = daemon.client().await.stream(method, &params).await?;
    loop {
        match stream.next::<Value>().await? {
            banger::rpc::StreamEvent::Item(_) => {}
            banger::rpc::StreamEvent::End(result) => return Ok(result),
        }
    }
}

async fn call_ok(daemon: &Daemon, method: &str, params: Value) -> Value {
    match call_any(daemon, method, params.clone()).await {
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
    let cache = daemon.layout().oci_cache_dir();
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
        cache_blobs: dir_names(&cache.join("blobs/sha256")),
        cache_asides: dir_names(cache.parent().expect("the cache has a parent"))
            .into_iter()
            .filter(|name| name.starts_with(".oci.pruning-"))
            .collect(),
        checkout: checkout_of(daemon.root()),
    }
}

/// Runs `op` once without failpoints on a fresh root and returns its step names in the
/// order the log shows them started. The run is checked like a case's end state.
async fn discover_steps(op: Op, inputs: &Inputs) -> Vec<String> {
    let mut daemon = Daemon::with_network(op.runs_vms());
    daemon.add_config(&inputs.config());
    daemon.start_ready(None);
    op.set_up(&daemon, inputs).await;
    let (method, params) = op.request(inputs, daemon.root());
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
    let mut daemon = Daemon::with_network(case.op.runs_vms());
    daemon.add_config(&inputs.config());
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
    let (method, params) = case.op.request(inputs, daemon.root());
    let answer = call_any(daemon, method, params).await;
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
    // What the follower was sent before the crash is acknowledged to the outside world; it may
    // be nothing of this operation (delivery trails the commit, and the abort can come first).
    let followed = follower.await.map_err(|e| format!("the follower: {e}"))?;
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

    // The operation the failpoint interrupted: its `OperationStarted` was durable before any
    // step could crash, so the log has it after `last`.
    let op_id = daemon
        .events()
        .await
        .into_iter()
        .filter(|e| e.seq.0 > last)
        .find_map(|e| match &e.event {
            Event::OperationStarted(s) if s.kind == case.op.kind() => e.op_id,
            _ => None,
        })
        .ok_or("the log holds no OperationStarted of the interrupted operation")?;
    let mut world = world(daemon).await;
    let outcome = check_ended(&world, op_id, case.op, true)?;
    check_host(daemon, &world).await?;
    check_acknowledged(daemon, &acknowledged).await?;
    if case.op == Op::VmCreate && !world.vms.vms.iter().any(|vm| vm.name == "dev") {
        check_create_again(daemon).await?;
        world = self::world(daemon).await;
        check_host(daemon, &world).await?;
    }
    teardown(daemon, &world).await?;
    Ok(outcome)
}

/// After a rolled-back create, its name and its address are free again: a create of the same
/// name succeeds and gets the first guest address, its MAC and the first vsock CID (the
/// fixture has no other VM, and allocation takes the lowest free), and its VMM received them
/// (checked by [`check_allocations`] through [`check_host`] afterwards).
async fn check_create_again(daemon: &Daemon) -> Result<(), String> {
    let created: banger::api::VmCreateResult = daemon
        .call("vm.create", json!({"name": "dev", "image": "img"}))
        .await
        .map_err(|e| format!("creating dev again after the rollback: {e}"))?;
    let vm_id = created.vm_id;
    let ledger = ledger(daemon).await;
    let mut held: Vec<Handle> = ledger
        .handles_of(Owner::Vm(vm_id))
        .map(|(handle, _)| handle.clone())
        .filter(|h| {
            matches!(
                h,
                Handle::Ip { .. } | Handle::Mac { .. } | Handle::VsockCid { .. }
            )
        })
        .collect();
    held.sort();
    let mut first = vec![
        Handle::Ip {
            addr: [172, 30, 0, 2],
        },
        Handle::Mac {
            addr: [0x02, 0xfc, 172, 30, 0, 2],
        },
        Handle::VsockCid { cid: 3 },
    ];
    first.sort();
    if held != first {
        return Err(format!(
            "dev created again holds {held:?}, not the first address {first:?}"
        ));
    }
    Ok(())
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
    check_blob_cache(&layout, world)?;
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
    // A daemon without a test network has no helper: it cannot have made a tap.
    let taps = daemon
        .network
        .as_ref()
        .map(|n| n.taps())
        .unwrap_or_default();
    if taps != recorded {
        return Err(format!(
            "the host has taps {taps:?}, the ledger {recorded:?}"
        ));
    }
    if let Some(network) = &daemon.network {
        check_bridge_and_nat(network, &recorded)?;
    }
    check_allocations(daemon, world, &ledger).await?;
    check_sockets(daemon, world)?;
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

/// The guest network every case's namespace must show (see `banger::host::network`).
const BRIDGE: &str = "banger0";
const GATEWAY: &str = "172.30.0.1";
const NAT_RULE: &str = "ip saddr 172.30.0.0/24 oifname != \"banger0\" masquerade";

/// The bridge and NAT as they must be in the case's network namespace: the only banger
/// bridge is `banger0`; every tap is on it; and once any tap exists (so a `network` step or a
/// pool fill succeeded, which ensures the network first, and nothing ever removes it) the
/// bridge carries the gateway address and banger's nftables table holds the masquerade rule.
/// A bridge made by an ensure that a crash cut short may exist before then, but whatever
/// exists must be right: a bridge with an address has the gateway's, and a table holds the
/// rule.
fn check_bridge_and_nat(network: &lab::Network, taps: &[String]) -> Result<(), String> {
    let links: Value = serde_json::from_str(&network.run("ip", &["-d", "-j", "link", "show"])?)
        .map_err(|e| format!("ip -j link show: {e}"))?;
    let links = links.as_array().cloned().unwrap_or_default();
    let mut bridge = false;
    for link in &links {
        let name = link["ifname"].as_str().unwrap_or_default();
        if name.starts_with("banger") {
            if name != BRIDGE {
                return Err(format!("an unexpected banger link {name}: {link}"));
            }
            if link["linkinfo"]["info_kind"] != "bridge" {
                return Err(format!("{BRIDGE} is not a bridge: {link}"));
            }
            bridge = true;
        }
        if taps.iter().any(|tap| tap == name) && link["master"] != BRIDGE {
            return Err(format!("tap {name} is not on {BRIDGE}: {link}"));
        }
    }
    if taps.is_empty() && !bridge {
        return Ok(());
    }
    if !bridge {
        return Err(format!("taps {taps:?} exist but there is no {BRIDGE}"));
    }
    let addresses: Value =
        serde_json::from_str(&network.run("ip", &["-j", "-4", "addr", "show", "dev", BRIDGE])?)
            .map_err(|e| format!("ip -j addr show: {e}"))?;
    let local: Vec<(String, u64)> = addresses[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["local"].as_str().unwrap_or_default().to_owned(),
                a["prefixlen"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    // `nft list table` fails when there is no table: an ensure cut short may not have made it.
    let table = network
        .run("nft", &["list", "table", "ip", "banger"])
        .unwrap_or_default();
    if taps.is_empty() {
        if !(local.is_empty() || local == [(GATEWAY.to_owned(), 24)]) {
            return Err(format!("{BRIDGE} has addresses {local:?}"));
        }
        if !table.is_empty() && !table.contains(NAT_RULE) {
            return Err(format!(
                "banger's nftables table lacks the NAT rule:\n{table}"
            ));
        }
        return Ok(());
    }
    if local != [(GATEWAY.to_owned(), 24)] {
        return Err(format!(
            "{BRIDGE} has addresses {local:?}, not {GATEWAY}/24 alone"
        ));
    }
    if !table.contains(NAT_RULE) {
        return Err(format!(
            "banger's nftables table lacks `{NAT_RULE}`:\n{table}"
        ));
    }
    Ok(())
}

/// Guest addresses, MACs and vsock CIDs are held exactly as the ledger says: each VM holds
/// one address, the MAC derived from it and one CID; nobody else holds any (no VM that is
/// gone, no operation that ended, not the daemon); and the VMM of every running VM was given
/// exactly its VM's: `ip=` on the kernel command line, the MAC on the VM's own tap, the CID
/// (as the VMM reports them, `GET /vm/config`).
async fn check_allocations(
    daemon: &Daemon,
    world: &World,
    ledger: &Projections,
) -> Result<(), String> {
    for (handle, view) in &ledger.handles {
        if matches!(
            handle,
            Handle::Ip { .. } | Handle::Mac { .. } | Handle::VsockCid { .. }
        ) && !matches!(view.owner, Owner::Vm(id) if world.vms.vms.iter().any(|vm| vm.id == id))
        {
            return Err(format!(
                "{handle:?} is held by {:?}, which is no VM",
                view.owner
            ));
        }
    }
    for vm in &world.vms.vms {
        let held: Vec<&Handle> = ledger
            .handles_of(Owner::Vm(vm.id))
            .map(|(handle, _)| handle)
            .collect();
        let ips: Vec<[u8; 4]> = held
            .iter()
            .filter_map(|h| match h {
                Handle::Ip { addr } => Some(*addr),
                _ => None,
            })
            .collect();
        let macs: Vec<[u8; 6]> = held
            .iter()
            .filter_map(|h| match h {
                Handle::Mac { addr } => Some(*addr),
                _ => None,
            })
            .collect();
        let cids: Vec<u32> = held
            .iter()
            .filter_map(|h| match h {
                Handle::VsockCid { cid } => Some(*cid),
                _ => None,
            })
            .collect();
        let taps: Vec<&str> = held
            .iter()
            .filter_map(|h| match h {
                Handle::Tap { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let ([ip], [mac], [cid]) = (ips.as_slice(), macs.as_slice(), cids.as_slice()) else {
            return Err(format!(
                "{} should hold one address, MAC and CID: {ips:?} {macs:?} {cids:?}",
                vm.name
            ));
        };
        let [a, b, c, d] = *ip;
        if *mac != [0x02, 0xfc, a, b, c, d] {
            return Err(format!("{} holds MAC {mac:?} for address {ip:?}", vm.name));
        }
        if vm.state != VmState::Running {
            continue;
        }
        let client = FirecrackerClient::new(daemon.layout().vm_api_socket(vm.id));
        let response = client
            .request(Method::Get, "/vm/config", None)
            .await
            .map_err(|e| format!("{}: GET /vm/config from its VMM: {e}", vm.name))?;
        let config: Value = serde_json::from_slice(&response.body)
            .map_err(|e| format!("{}: GET /vm/config: {e}", vm.name))?;
        let ip_arg = format!("ip={a}.{b}.{c}.{d}::{GATEWAY}:255.255.255.0::eth0:off");
        let boot_args = config["boot-source"]["boot_args"]
            .as_str()
            .unwrap_or_default();
        if !boot_args.split(' ').any(|arg| arg == ip_arg) {
            return Err(format!(
                "{}'s VMM has kernel command line {boot_args:?}, without {ip_arg}",
                vm.name
            ));
        }
        let mac_text = mac
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let interface = &config["network-interfaces"][0];
        if interface["guest_mac"] != mac_text.as_str()
            || taps != [interface["host_dev_name"].as_str().unwrap_or_default()]
        {
            return Err(format!(
                "{}'s VMM has interface {interface}; the ledger says MAC {mac_text} on {taps:?}",
                vm.name
            ));
        }
        if config["vsock"]["guest_cid"] != json!(cid) {
            return Err(format!(
                "{}'s VMM has vsock {}; the ledger says CID {cid}",
                vm.name, config["vsock"]
            ));
        }
    }
    Ok(())
}

/// The blob cache holds only verified blobs (each hashes to its name) and no download a
/// crashed bangerd left half done (the restarted one sweeps them); no prune that ended left
/// its aside copy (rolled forward it deleted it, rolled back its undo did).
fn check_blob_cache(layout: &banger::paths::Layout, world: &World) -> Result<(), String> {
    use sha2::Digest as _;
    let cache = layout.oci_cache_dir();
    let blobs = cache.join("blobs/sha256");
    for name in dir_names(&blobs) {
        let bytes = std::fs::read(blobs.join(&name)).map_err(|e| format!("blob {name}: {e}"))?;
        let actual: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if actual != name {
            return Err(format!("cached blob {name} hashes to {actual}"));
        }
    }
    let temp = dir_names(&cache.join("tmp"));
    if !temp.is_empty() {
        return Err(format!("temporary downloads left in the cache: {temp:?}"));
    }
    for op in &world.ops.operations {
        if op.kind != OpKind::ImageCachePrune {
            continue;
        }
        let aside = banger::registry::cache::prune_aside(&cache, &op.op_id.to_string())
            .map_err(|e| e.to_string())?;
        if aside.exists() {
            return Err(format!(
                "prune {} ended {} but left its aside copy {}",
                op.op_id,
                op.status,
                aside.display()
            ));
        }
    }
    Ok(())
}

/// No stale sockets in VM directories: a VM that does not run has none, and a running one
/// only its VMM's API socket and vsock socket (and, under the fake, the guest side of the
/// vsock, `v.sock.guest`-style, which the fake's "guest" listens on).
fn check_sockets(daemon: &Daemon, world: &World) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let layout = daemon.layout();
    for vm in &world.vms.vms {
        let mut allowed = Vec::new();
        if vm.state == VmState::Running {
            let vsock = layout.vm_vsock_socket(vm.id);
            let mut guest = vsock.clone().into_os_string();
            guest.push(".guest");
            allowed = vec![layout.vm_api_socket(vm.id), vsock, guest.into()];
        }
        let entries = std::fs::read_dir(layout.vm_dir(vm.id))
            .map_err(|e| format!("{}'s directory: {e}", vm.name))?;
        for entry in entries.flatten() {
            let is_socket = entry.file_type().is_ok_and(|t| t.is_socket());
            if is_socket && !allowed.contains(&entry.path()) {
                return Err(format!(
                    "{} ({:?}) has a stale socket {}",
                    vm.name,
                    vm.state,
                    entry.path().display()
                ));
            }
        }
    }
    Ok(())
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
    lab::binaries();
    let inputs = Arc::new(if matches!(op, Op::ImagePull | Op::ImageCachePrune) {
        Inputs::with_registry()
    } else {
        Inputs::new()
    });
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

fn crash_matrix_kernel_import() {
    matrix(Op::KernelImport);
}

fn crash_matrix_kernel_pull() {
    matrix(Op::KernelPull);
}

fn crash_matrix_kernel_remove() {
    matrix(Op::KernelRemove);
}

fn crash_matrix_image_register() {
    matrix(Op::ImageRegister);
}

fn crash_matrix_image_delete() {
    matrix(Op::ImageDelete);
}

fn crash_matrix_image_pull() {
    matrix(Op::ImagePull);
}

fn crash_matrix_image_promote() {
    matrix(Op::ImagePromote);
}

fn crash_matrix_image_cache_prune() {
    matrix(Op::ImageCachePrune);
}

fn crash_matrix_vm_create() {
    matrix(Op::VmCreate);
}

fn crash_matrix_vm_start() {
    matrix(Op::VmStart);
}

fn crash_matrix_vm_stop() {
    matrix(Op::VmStop);
}

fn crash_matrix_vm_kill() {
    matrix(Op::VmKill);
}

fn crash_matrix_vm_delete() {
    matrix(Op::VmDelete);
}

fn crash_matrix_vm_set() {
    matrix(Op::VmSet);
}

fn crash_matrix_workspace_import() {
    matrix(Op::WorkspaceImport);
}

fn crash_matrix_workspace_export() {
    matrix(Op::WorkspaceExport);
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    // The kernel and image columns run no VM (but promote's), so they need no test network
    // (nor root).
    let mut tests = banger_test_harness::tests![
        sync crash_matrix_kernel_import,
        sync crash_matrix_kernel_pull,
        sync crash_matrix_kernel_remove,
        sync crash_matrix_image_register,
        sync crash_matrix_image_delete,
        sync crash_matrix_image_pull,
        sync crash_matrix_image_promote needs(Root),
        sync crash_matrix_image_cache_prune,
        sync crash_matrix_vm_create needs(Root),
        sync crash_matrix_vm_start needs(Root),
        sync crash_matrix_vm_stop needs(Root),
        sync crash_matrix_vm_kill needs(Root),
        sync crash_matrix_vm_delete needs(Root),
        sync crash_matrix_vm_set needs(Root),
        sync crash_matrix_workspace_import needs(Root),
        sync crash_matrix_workspace_export needs(Root),
    ];
    tests.extend(storm::tests());
    tests
}
