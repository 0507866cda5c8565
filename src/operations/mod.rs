//! Operations: everything bangerd does to the host, as named steps with undo, recorded in the
//! event log as they happen.
//!
//! This module owns the step runner ([`Runner`]), the per-target claims that keep two
//! operations off one target, the failpoints that crash tests use, and one file per operation
//! kind with its step table at the top. It does not own the RPC surface (that is
//! `crate::daemon`), and it never decides what to recover: `plan_recovery` in the projections
//! crate does, and [`recovery`] carries the plan out.
//!
//! How one operation runs ([`Runner::run`]):
//! ```text
//!  claim target ─▶ OperationStarted ─▶ for each step:
//!                                        StepStarted{intent} ─▶ ensure() ─▶ StepSucceeded{produced}
//!                                                                   │
//!                                                                   └─ error ─▶ StepFailed
//!                                                                                  │
//!   OperationSucceeded (+ the operation's domain events, in the same commit) ◀─────┼── all done
//!                                                                                  ▼
//!          for each started step, newest first: UndoStarted ─▶ undo(handles) ─▶ UndoSucceeded
//!                                                                     │
//!                            OperationRolledBack ◀── all undone       └─ error ─▶ UndoFailed
//!                                                                                  ─▶ OperationStuck
//! ```
//!
//! A kind may also put domain events in the commit of `OperationStarted`
//! ([`OperationKind::start_events`]: a VM being created is listed as `creating` at once) and
//! in the commit of `OperationRolledBack` ([`OperationKind::rolled_back_events`]: a rolled-back
//! create removes its VM), so that the views never disagree with the operation's status, in a
//! live run or in crash recovery.
//!
//! VM kinds (`vm_*.rs`) run against a [`vm_common::VmHost`] (the VMM backend, the config, the
//! network allocator) carried in their state; their undos need nothing but the log's handles,
//! which is what lets recovery run them.
//!
//! Invariants (they are what make crash recovery safe; tests pin them):
//! - A step's `StepStarted` with its intent is durable *before* its side effect begins, and
//!   the intent names everything the side effect may create. So after a crash at any point the
//!   log says what may exist, and recovery can undo it from the log alone.
//! - Host resource names derive from (target, op id) — never from a clock or a counter — so a
//!   retry or an undo after a crash finds exactly what the crashed attempt made.
//! - `ensure` is idempotent (running it twice is harmless) and `undo` is idempotent and
//!   tolerates absence (undoing what never happened succeeds). `undo` sees only the op id, the
//!   target and the handles the log recorded: nothing from the request that is not in the log.
//! - A failed step is undone too (with its intent): it may have half-happened.
//! - A failed undo ends the operation as *stuck*; it then blocks its target until someone
//!   intervenes, and `banger ops` shows it. [`retry`] runs its pending undos again
//!   (`banger ops retry`): rolled back when they succeed, stuck with the new error if not.
//! - If the log stops accepting appends in the middle of an operation, the runner stops at
//!   once without further side effects: whatever it did is covered by a durable intent, and
//!   recovery at the next start undoes it.
//! - One operation per target at a time: [`Runner::claim`] refuses a second (`busy`), in this
//!   process through the claim table and across restarts through the projection (an operation
//!   that is stuck, or still unresolved, blocks its target).

pub mod failpoints;
pub mod image_cache_prune;
pub mod image_delete;
pub mod image_promote;
pub mod image_pull;
pub mod image_register;
pub mod kernel_import;
pub mod kernel_pull;
pub mod kernel_remove;
pub mod kinds;
pub mod names;
pub mod recovery;
pub mod retry;
mod runner;
pub mod store;
pub mod tap_fill;
#[cfg(test)]
pub(crate) mod testing;
pub mod vm_common;
pub mod vm_create;
pub mod vm_delete;
pub mod vm_kill;
pub mod vm_set;
pub mod vm_ssh;
pub mod vm_start;
pub mod vm_stop;
pub mod workspace_export;
pub mod workspace_guest;
pub mod workspace_import;

use std::future::Future;
use std::pin::Pin;

use banger_events::{Event, Handle, LogError, OpId, OpKind, ResumeDecodeError, Target, VmId};

use crate::host::guest_agent::AgentLinks;
use crate::host::network::GuestNetwork;
use crate::host::vmm::Vmm;
use crate::paths::Layout;

pub use failpoints::{FailpointError, Failpoints, Point};
pub use runner::{Claim, Runner, UndoOutcome};

/// A boxed future that can cross threads. Steps return these so that step tables can hold
/// steps of one operation as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What every step (and every undo) of an operation sees.
pub struct OpCx<'a> {
    pub op_id: OpId,
    pub kind: OpKind,
    pub target: &'a Target,
    pub layout: &'a Layout,
    /// Taps on the bridge, through the root helper.
    pub network: &'a GuestNetwork,
    /// The target VM's VMM backend, the one its log records (`VmBackendChosen`; Firecracker
    /// for a VM that recorded none, and for targets that are no VM): every start, stop and
    /// kill of a VMM goes through it, undos included.
    pub vmm: &'a dyn Vmm,
    /// bangerd's connections to guest agents (sessions of QEMU VMs' serial ports).
    pub agents: &'a AgentLinks,
}

/// One step of an operation whose in-memory state is `S`.
///
/// Steps are stateless unit structs listed in a static table; what a run knows lives in `S`
/// (filled by earlier steps) and in the handles the log recorded.
pub trait Step<S>: Send + Sync {
    /// The persisted step name. It is schema: a renamed step keeps its old name in
    /// [`Step::former_names`], so that logs written before the rename still recover.
    fn name(&self) -> &'static str;

    /// Names this step was recorded under by earlier builds.
    fn former_names(&self) -> &'static [&'static str] {
        &[]
    }

    /// The host resources this step is about to create, decided before any side effect and
    /// recorded in `StepStarted`. If the step fails or the daemon dies in the middle, `undo`
    /// gets exactly these.
    fn intent(&self, cx: &OpCx<'_>, state: &S) -> Vec<Handle>;

    /// Does the step's work, idempotently. Returns the handles it produced (recorded in
    /// `StepSucceeded`; a later `undo` gets these).
    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut S,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>>;

    /// Removes what the step made, given the handles the log recorded for it. Idempotent,
    /// succeeds when there is nothing to undo, and touches nothing the handles do not name.
    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>>;
}

/// One kind of operation: its step table and what it records when it succeeds.
pub trait OperationKind: 'static {
    const KIND: OpKind;

    /// What a run carries from step to step (validated request, checksums, …).
    type State: Send + Sync + 'static;

    /// The VMM backend a run uses when the log does not say yet: a create's choice, made
    /// before its `VmBackendChosen` is recorded. Every other kind finds its VM's backend in
    /// the log.
    fn vmm(_state: &Self::State) -> Option<banger_events::VmmKind> {
        None
    }

    /// The steps, in order.
    fn steps() -> &'static [&'static dyn Step<Self::State>];

    /// The domain events that make the result visible (`KernelRegistered`, …). They are
    /// appended in one commit with `OperationSucceeded`, so the views never show a half-done
    /// operation as done.
    fn finish(cx: &OpCx<'_>, state: &Self::State) -> Vec<Event>;

    /// Domain events appended in the same commit as `OperationStarted` (a VM being created
    /// shows up as `creating` at once; a VM being stopped shows as `stopping`). Empty for most
    /// kinds. They must describe an intention, never a host effect: no step has run yet.
    fn start_events(_cx: &OpCx<'_>, _state: &Self::State) -> Vec<Event> {
        Vec::new()
    }

    /// Domain events appended in the same commit as `OperationRolledBack`, whether the
    /// rollback happens in the run or in crash recovery, so they may depend on the target
    /// alone (recovery has no in-memory state). They undo what `start_events` said.
    fn rolled_back_events(_target: &Target) -> Vec<Event> {
        Vec::new()
    }

    /// What a failed run leaves, for its error message. Most kinds undo everything; a kind
    /// whose effects cannot be undone (delete) says what state it left and how to go on.
    fn after_failure(_target: &Target) -> String {
        "everything it had done was rolled back".to_owned()
    }

    /// Rebuilds the state of an interrupted run from what the log recorded (its target and
    /// parameters: a [`banger_events::ResumePayload`] for the kinds that need more than the
    /// target), so that crash recovery can roll it forward. Kinds that recovery rolls back
    /// never need it. An error leaves the operation stuck, with the error's message recorded
    /// as the reason.
    fn resume_state(_target: &Target, _parameters: &str) -> Result<Self::State, ResumeError> {
        Err(ResumeError::NotResumable { kind: Self::KIND })
    }
}

/// Why an interrupted operation cannot be rolled forward from what the log recorded. The
/// message ends up in the stuck operation (`banger ops`), so it names the underlying error.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("this build has no way to resume {kind} operations")]
    NotResumable { kind: OpKind },
    #[error("{0}")]
    Parameters(#[from] ResumeDecodeError),
    #[error("it targets {target}, not {expected}")]
    WrongTarget { target: String, expected: String },
    #[error("its parameters are about vm {recorded}, but it targets vm {target}")]
    OtherVm { recorded: VmId, target: VmId },
}

/// Finds the step called `name` (now or by an earlier build) in `K`'s table.
pub fn find_step<K: OperationKind>(name: &str) -> Option<&'static dyn Step<K::State>> {
    K::steps()
        .iter()
        .copied()
        .find(|step| step.name() == name || step.former_names().contains(&name))
}

/// Why a step (or an undo) failed. The message is recorded in the log as it displays.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
    #[error("injected by failpoint {0}")]
    Failpoint(String),
}

impl From<crate::host::disk::DiskError> for StepError {
    fn from(error: crate::host::disk::DiskError) -> Self {
        match error {
            crate::host::disk::DiskError::Io { what, source } => StepError::Io { what, source },
            tool @ crate::host::disk::DiskError::Tool { .. } => StepError::Other(tool.to_string()),
        }
    }
}

impl StepError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        StepError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Why an operation request did not succeed. Each variant maps to one RPC error code.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Busy(String),
    /// The request needs a running VM and this one is stopped.
    #[error("{0}")]
    NotRunning(String),
    /// The target's (settled) state does not allow the request: start a running VM, set a
    /// running one, stop a failed one. The message names the state and what to do.
    #[error("{0}")]
    WrongState(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{kind} failed at step {step}: {error}; {after}")]
    Failed {
        kind: OpKind,
        step: String,
        error: String,
        /// What the failure left and what to do ([`OperationKind::after_failure`]).
        after: String,
    },
    #[error(
        "{kind} failed at step {step} ({error}), and undoing step {undo_step} failed too: {undo_error}; operation {op_id} is stuck and blocks its target — see `banger ops`"
    )]
    Stuck {
        op_id: OpId,
        kind: OpKind,
        step: String,
        error: String,
        undo_step: String,
        undo_error: String,
    },
    /// `banger ops retry`: an undo of the stuck operation failed again.
    #[error(
        "undoing step {step} of operation {op_id} failed again: {error}; it stays stuck and blocks its target — deal with the cause and run `banger ops retry {op_id}` again"
    )]
    StillStuck {
        op_id: OpId,
        step: String,
        error: String,
    },
    #[error("cannot record the operation in the event log: {0}")]
    Log(#[source] LogError),
    #[error("{0}")]
    Internal(String),
}

impl From<LogError> for OpError {
    fn from(error: LogError) -> Self {
        OpError::Log(error)
    }
}

/// Runs blocking filesystem work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, StepError> + Send + 'static,
) -> Result<T, StepError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StepError::Other(format!("{what} did not finish: {error}")))?
}

/// The step invariants, checked on every operation kind against a real directory: running a
/// step's `ensure` twice is the same as once, undoing twice is the same as once, and undoing
/// what never happened succeeds and removes nothing.
#[cfg(test)]
mod invariant_tests {
    use std::fs;
    use std::path::Path;

    use banger_events::{OpId, Target};

    use super::*;

    /// Runs every step of `K` twice, then undoes them all twice in reverse, and checks that
    /// the store ends as it began.
    async fn run_twice_undo_twice<K: OperationKind>(
        layout: &Layout,
        target: Target,
        mut state: K::State,
    ) {
        let network = crate::host::network::GuestNetwork::unreachable_for_tests();
        let cx = OpCx {
            op_id: OpId(0xabc),
            kind: K::KIND,
            target: &target,
            layout,
            network: &network,
            vmm: &crate::operations::testing::unlaunchable_vmm(),
            agents: &crate::host::guest_agent::AgentLinks::new(),
        };
        let before = snapshot(&layout.state_dir);
        let mut done = Vec::new();
        for step in K::steps() {
            let first = step
                .ensure(&cx, &mut state)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", step.name()));
            let second = step
                .ensure(&cx, &mut state)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", step.name()));
            assert_eq!(first, second, "{}: ensure twice differs", step.name());
            done.push((step, first));
        }
        let after = snapshot(&layout.state_dir);
        assert_ne!(before, after, "the operation did something");
        for (step, handles) in done.iter().rev() {
            step.undo(&cx, handles)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", step.name()));
            step.undo(&cx, handles)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", step.name()));
        }
        assert_eq!(snapshot(&layout.state_dir), before, "undo left traces");
    }

    /// Undoes every step from its intent when nothing happened: nothing fails, nothing
    /// changes.
    async fn undo_of_nothing<K: OperationKind>(layout: &Layout, target: Target, state: K::State) {
        let network = crate::host::network::GuestNetwork::unreachable_for_tests();
        let cx = OpCx {
            op_id: OpId(0xdef),
            kind: K::KIND,
            target: &target,
            layout,
            network: &network,
            vmm: &crate::operations::testing::unlaunchable_vmm(),
            agents: &crate::host::guest_agent::AgentLinks::new(),
        };
        let before = snapshot(&layout.state_dir);
        for step in K::steps().iter().rev() {
            let intent = step.intent(&cx, &state);
            step.undo(&cx, &intent)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", step.name()));
        }
        assert_eq!(snapshot(&layout.state_dir), before);
    }

    /// Every path under `dir` with its content.
    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    out.push((path.display().to_string(), Vec::new()));
                    stack.push(path);
                } else {
                    out.push((
                        path.display().to_string(),
                        fs::read(&path).unwrap_or_default(),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    fn setup() -> (tempfile::TempDir, Layout, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::rooted(&dir.path().join("root"));
        fs::create_dir_all(layout.kernels_dir()).unwrap();
        fs::create_dir_all(layout.images_dir()).unwrap();
        let source = dir.path().join("source");
        fs::create_dir_all(&source).unwrap();
        fs::write(source.join("vmlinux"), b"kernel Linux version 6.1 (x)\0").unwrap();
        fs::write(source.join("initrd.img"), b"initrd").unwrap();
        fs::write(source.join("rootfs.ext4"), vec![7u8; 100_000]).unwrap();
        (dir, layout, source)
    }

    fn import_state(source: &Path) -> kernel_import::State {
        kernel_import::State {
            name: "k".into(),
            from: source.to_path_buf(),
            vmlinux: source.join("vmlinux"),
            compressed: false,
            initrd: Some(source.join("initrd.img")),
            modules: None,
            bundle: None,
            version_hint: None,
            sha256: String::new(),
            version: String::new(),
        }
    }

    fn register_state(source: &Path) -> image_register::State {
        image_register::State {
            name: "i".into(),
            rootfs: source.join("rootfs.ext4"),
            kernel: None,
            source: "register:test".into(),
            sha256: String::new(),
            size_bytes: 0,
        }
    }

    #[tokio::test]
    async fn store_operations_are_idempotent_and_their_undo_tolerates_absence() {
        let network = crate::host::network::GuestNetwork::unreachable_for_tests();
        let (_dir, layout, source) = setup();
        let kernel = Target::Kernel { name: "k".into() };
        let image = Target::Image { name: "i".into() };
        run_twice_undo_twice::<kernel_import::KernelImport>(
            &layout,
            kernel.clone(),
            import_state(&source),
        )
        .await;
        run_twice_undo_twice::<image_register::ImageRegister>(
            &layout,
            image.clone(),
            register_state(&source),
        )
        .await;
        undo_of_nothing::<kernel_import::KernelImport>(
            &layout,
            kernel.clone(),
            import_state(&source),
        )
        .await;
        undo_of_nothing::<image_register::ImageRegister>(
            &layout,
            image.clone(),
            register_state(&source),
        )
        .await;

        // Removals: publish something to remove first (outside the snapshot's "before").
        fs::create_dir_all(layout.kernel_dir("k")).unwrap();
        fs::write(layout.kernel_dir("k").join("vmlinux"), b"k").unwrap();
        fs::create_dir_all(layout.image_dir("i")).unwrap();
        fs::write(layout.image_dir("i").join("rootfs.ext4"), b"i").unwrap();
        let cx_state = kernel_remove::State { name: "k".into() };
        let cx = OpCx {
            op_id: OpId(7),
            kind: OpKind::KernelRemove,
            target: &kernel,
            layout: &layout,
            network: &network,
            vmm: &crate::operations::testing::unlaunchable_vmm(),
            agents: &crate::host::guest_agent::AgentLinks::new(),
        };
        let mut state = cx_state;
        for step in <kernel_remove::KernelRemove as OperationKind>::steps() {
            step.ensure(&cx, &mut state).await.unwrap();
            step.ensure(&cx, &mut state).await.unwrap();
        }
        assert!(!layout.kernel_dir("k").exists());
        assert!(fs::read_dir(layout.kernels_dir()).unwrap().next().is_none());
        let cx = OpCx {
            op_id: OpId(8),
            kind: OpKind::ImageDelete,
            target: &image,
            layout: &layout,
            network: &network,
            vmm: &crate::operations::testing::unlaunchable_vmm(),
            agents: &crate::host::guest_agent::AgentLinks::new(),
        };
        let mut state = image_delete::State { name: "i".into() };
        let steps = <image_delete::ImageDelete as OperationKind>::steps();
        // Move aside, undo it twice: the image is back where it was.
        let aside = steps[0].ensure(&cx, &mut state).await.unwrap();
        assert!(!layout.image_dir("i").exists());
        steps[0].undo(&cx, &aside).await.unwrap();
        steps[0].undo(&cx, &aside).await.unwrap();
        assert_eq!(
            fs::read(layout.image_dir("i").join("rootfs.ext4")).unwrap(),
            b"i"
        );
        undo_of_nothing::<image_delete::ImageDelete>(
            &layout,
            image,
            image_delete::State { name: "i".into() },
        )
        .await;
    }

    #[tokio::test]
    async fn undo_never_removes_what_another_operation_published() {
        let network = crate::host::network::GuestNetwork::unreachable_for_tests();
        let (_dir, layout, source) = setup();
        let kernel = Target::Kernel { name: "k".into() };
        let mut state = import_state(&source);
        let mine = OpCx {
            op_id: OpId(1),
            kind: OpKind::KernelImport,
            target: &kernel,
            layout: &layout,
            network: &network,
            vmm: &crate::operations::testing::unlaunchable_vmm(),
            agents: &crate::host::guest_agent::AgentLinks::new(),
        };
        for step in <kernel_import::KernelImport as OperationKind>::steps() {
            step.ensure(&mine, &mut state).await.unwrap();
        }
        // Another operation's undo, given the same published path (a crash between its intent
        // and its rename, say), leaves this kernel alone.
        let theirs = OpCx {
            op_id: OpId(2),
            ..mine
        };
        let publish = kernel_import::KernelImport::steps()[2];
        let intent = publish.intent(&theirs, &state);
        publish.undo(&theirs, &intent).await.unwrap();
        assert!(layout.kernel_dir("k").join("vmlinux").exists());
    }

    /// A small bundle served over loopback, and the pull state that fetches it.
    fn served_bundle(
        dir: &Path,
    ) -> (
        banger_test_harness::http::FileServer,
        crate::kernel::CatalogKernel,
    ) {
        use crate::kernel::{BundleFile, BundleManifest, BundleSource, CatalogEntry};
        let bundle = dir.join("bundle");
        fs::create_dir_all(&bundle).unwrap();
        let file = |name: &str, bytes: &[u8]| {
            fs::write(bundle.join(name), bytes).unwrap();
            BundleFile {
                path: name.to_owned(),
                sha256: crate::kernel::bundle::sha256_hex(bytes),
                size: bytes.len() as u64,
            }
        };
        let manifest = BundleManifest {
            format: 1,
            version: "6.1.0-test".into(),
            arch: "x86_64".into(),
            source: BundleSource::DebianPackage {
                package: "linux-image-6.1.0-test".into(),
                version: "1".into(),
                sha256: "00".repeat(32),
                url: None,
            },
            vmlinux: file("vmlinux", b"new vmlinux"),
            bzimage: file("vmlinuz", b"bz"),
            initrd: file("initrd.img", b"initrd"),
            config: None,
            modules: vec![],
            modules_missing: vec![],
            agent_sha256: "11".repeat(32),
            firecracker_min_version: "1.8.0".into(),
        };
        fs::write(
            bundle.join("manifest.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let packed = crate::kernel::pack_bundle(&bundle, "p", &dir.join("dist")).unwrap();
        let server = banger_test_harness::http::FileServer::start();
        server.serve(
            "/p.tar.zst",
            banger_test_harness::http::Reply::bytes(fs::read(&packed.path).unwrap()),
        );
        let entry = crate::kernel::CatalogKernel::Bundle(CatalogEntry {
            name: "p".into(),
            kind: "bundle".into(),
            version: "6.1.0-test".into(),
            arch: "x86_64".into(),
            tarball_url: server.url("/p.tar.zst"),
            tarball_sha256: packed.sha256,
            size_bytes: packed.size,
            description: String::new(),
        });
        (server, entry)
    }

    fn pull_state(entry: &crate::kernel::CatalogKernel, force: bool) -> kernel_pull::State {
        kernel_pull::State {
            name: "p".into(),
            entry: entry.clone(),
            force,
            http: crate::kernel::fetch::http_client().unwrap(),
            progress: std::sync::Arc::new(|_| {}),
            manifest: None,
        }
    }

    #[tokio::test]
    async fn a_pull_is_idempotent_and_its_undo_restores_what_it_replaced() {
        let (dir, layout, _) = setup();
        let (server, entry) = served_bundle(dir.path());
        let target = Target::Kernel { name: "p".into() };
        run_twice_undo_twice::<kernel_pull::KernelPull>(
            &layout,
            target.clone(),
            pull_state(&entry, false),
        )
        .await;
        undo_of_nothing::<kernel_pull::KernelPull>(
            &layout,
            target.clone(),
            pull_state(&entry, true),
        )
        .await;
        // The download happened once: the second `download` kept the verified file.
        assert_eq!(server.requests("/p.tar.zst"), 1);

        // Forced over a kernel another operation published: replaced, then put back by the
        // undo, byte for byte.
        let old = layout.kernel_dir("p");
        store::create_marked_dir(&old, OpId(0x77)).unwrap();
        fs::write(old.join("vmlinux"), b"old vmlinux").unwrap();
        let network = crate::host::network::GuestNetwork::unreachable_for_tests();
        let cx = OpCx {
            op_id: OpId(0x78),
            kind: OpKind::KernelPull,
            target: &target,
            layout: &layout,
            network: &network,
            vmm: &crate::operations::testing::unlaunchable_vmm(),
            agents: &crate::host::guest_agent::AgentLinks::new(),
        };
        let mut state = pull_state(&entry, true);
        let mut done = Vec::new();
        for step in <kernel_pull::KernelPull as OperationKind>::steps() {
            done.push((step, step.ensure(&cx, &mut state).await.unwrap()));
        }
        assert_eq!(fs::read(old.join("vmlinux")).unwrap(), b"new vmlinux");
        for (step, handles) in done.iter().rev() {
            step.undo(&cx, handles).await.unwrap();
            step.undo(&cx, handles).await.unwrap();
        }
        assert_eq!(fs::read(old.join("vmlinux")).unwrap(), b"old vmlinux");
        assert_eq!(store::marker_of(&old), Some(OpId(0x77)));
        let names: Vec<String> = fs::read_dir(layout.kernels_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["p"]);
    }
}
