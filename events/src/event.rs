//! The typed events of the whole product and the envelope that carries them.
//!
//! These types are persisted schema. Bincode is positional, so:
//! - a payload struct never gains, loses or reorders a field in place — add a new event kind
//!   (`FooV2`) and convert the old one on read (see [`Event::upgrade`]);
//! - an enum used inside a payload (`OpKind`, `Handle`, …) only ever gains variants at its end;
//! - an event kind code is never reused, renumbered or renamed.
//!
//! The `golden` logs in `replay-tests/` fail loudly if any of this is broken by accident, and
//! `replay-tests/golden/enum-layouts.pins` holds the bytes of every variant of every enum here
//! (and of the projection enums that snapshots store), whether or not a log holds it.

use std::fmt;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ids::{EventId, OpId, Seq, VmId};

/// Version of the envelope layout written by this build. A log whose meta says a higher version
/// was written by a newer banger and is refused.
pub const SCHEMA_VERSION: u16 = 1;

/// One event as stored: where it sits in the log, what caused it, when, and what happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct Envelope {
    /// Gapless position in the log, starting at 1.
    pub seq: Seq,
    pub event_id: EventId,
    /// The operation (or request) this event belongs to.
    pub op_id: Option<OpId>,
    /// The event that led to this one, when there is one (a step's event points at the
    /// operation's start; a recovery decision at the step it rolls back).
    pub cause: Option<Seq>,
    /// Wall-clock time of the append, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub schema_version: u16,
    pub event: Event,
}

/// What kind of operation an `OperationStarted` opens. Append new kinds at the end only.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Encode, Decode,
)]
/// In JSON, the name users see (`vm.create`), the same as [`OpKind::as_str`].
pub enum OpKind {
    #[serde(rename = "vm.create")]
    VmCreate,
    #[serde(rename = "vm.start")]
    VmStart,
    #[serde(rename = "vm.stop")]
    VmStop,
    #[serde(rename = "vm.restart")]
    VmRestart,
    #[serde(rename = "vm.kill")]
    VmKill,
    #[serde(rename = "vm.delete")]
    VmDelete,
    #[serde(rename = "vm.set")]
    VmSet,
    #[serde(rename = "image.register")]
    ImageRegister,
    #[serde(rename = "image.pull")]
    ImagePull,
    #[serde(rename = "image.delete")]
    ImageDelete,
    #[serde(rename = "image.promote")]
    ImagePromote,
    #[serde(rename = "image.cache.prune")]
    ImageCachePrune,
    #[serde(rename = "kernel.import")]
    KernelImport,
    #[serde(rename = "kernel.pull")]
    KernelPull,
    #[serde(rename = "kernel.remove")]
    KernelRemove,
    #[serde(rename = "teardown")]
    Teardown,
    /// Tops up the pool of spare taps (owned by the daemon) that new VMs take their tap from.
    #[serde(rename = "tap.fill")]
    TapFill,
    /// Copies a host git checkout into a VM's work disk (`vm workspace import`).
    #[serde(rename = "vm.workspace.import")]
    WorkspaceImport,
    /// Copies a VM's workspace changes back into the host checkout (`vm workspace export`).
    #[serde(rename = "vm.workspace.export")]
    WorkspaceExport,
}

impl OpKind {
    /// The name users see (`vm.create`), matching the RPC method that starts it.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::VmCreate => "vm.create",
            OpKind::VmStart => "vm.start",
            OpKind::VmStop => "vm.stop",
            OpKind::VmRestart => "vm.restart",
            OpKind::VmKill => "vm.kill",
            OpKind::VmDelete => "vm.delete",
            OpKind::VmSet => "vm.set",
            OpKind::ImageRegister => "image.register",
            OpKind::ImagePull => "image.pull",
            OpKind::ImageDelete => "image.delete",
            OpKind::ImagePromote => "image.promote",
            OpKind::ImageCachePrune => "image.cache.prune",
            OpKind::KernelImport => "kernel.import",
            OpKind::KernelPull => "kernel.pull",
            OpKind::KernelRemove => "kernel.remove",
            OpKind::Teardown => "teardown",
            OpKind::TapFill => "tap.fill",
            OpKind::WorkspaceImport => "vm.workspace.import",
            OpKind::WorkspaceExport => "vm.workspace.export",
        }
    }

    pub const ALL: [OpKind; 19] = [
        OpKind::VmCreate,
        OpKind::VmStart,
        OpKind::VmStop,
        OpKind::VmRestart,
        OpKind::VmKill,
        OpKind::VmDelete,
        OpKind::VmSet,
        OpKind::ImageRegister,
        OpKind::ImagePull,
        OpKind::ImageDelete,
        OpKind::ImagePromote,
        OpKind::ImageCachePrune,
        OpKind::KernelImport,
        OpKind::KernelPull,
        OpKind::KernelRemove,
        OpKind::Teardown,
        OpKind::TapFill,
        OpKind::WorkspaceImport,
        OpKind::WorkspaceExport,
    ];
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operation acts on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Target {
    Vm {
        vm_id: VmId,
        name: String,
    },
    Image {
        name: String,
    },
    Kernel {
        name: String,
    },
    Host,
    /// The OCI blob cache that image pulls share (`image cache prune`). Its own target, not
    /// the host's: a prune must exclude another prune, but neither a pull (the cache is safe
    /// against a prune by construction) nor a tap pool fill.
    ImageCache,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Vm { name, .. } => write!(f, "vm {name}"),
            Target::Image { name } => write!(f, "image {name}"),
            Target::Kernel { name } => write!(f, "kernel {name}"),
            Target::Host => f.write_str("host"),
            Target::ImageCache => f.write_str("image cache"),
        }
    }
}

/// A host resource that a step created or is about to create. Steps record these as intent
/// before a side effect and as output after it; undo and recovery act on nothing else.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Encode, Decode,
)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Handle {
    Tap {
        name: String,
    },
    Ip {
        addr: [u8; 4],
    },
    Mac {
        addr: [u8; 6],
    },
    VsockCid {
        cid: u32,
    },
    LoopDevice {
        path: String,
    },
    /// A process; the start time (in clock ticks since boot, field 22 of /proc/PID/stat) tells a
    /// reused pid apart from the process that was recorded.
    Process {
        pid: u32,
        start_time_ticks: u64,
    },
    Socket {
        path: String,
    },
    File {
        path: String,
    },
    Directory {
        path: String,
    },
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handle::Tap { name } => write!(f, "tap {name}"),
            Handle::Ip { addr: [a, b, c, d] } => write!(f, "ip {a}.{b}.{c}.{d}"),
            Handle::Mac { addr } => write!(
                f,
                "mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                addr[0], addr[1], addr[2], addr[3], addr[4], addr[5]
            ),
            Handle::VsockCid { cid } => write!(f, "vsock cid {cid}"),
            Handle::LoopDevice { path } => write!(f, "loop {path}"),
            Handle::Process {
                pid,
                start_time_ticks,
            } => write!(f, "pid {pid} (started at tick {start_time_ticks})"),
            Handle::Socket { path } => write!(f, "socket {path}"),
            Handle::File { path } => write!(f, "file {path}"),
            Handle::Directory { path } => write!(f, "dir {path}"),
        }
    }
}

/// Who holds a host handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Owner {
    Vm(VmId),
    Op(OpId),
    Daemon,
}

/// Lifecycle of a VM as the log records it.
///
/// ```text
///            create ok              start               agent answers
///  Creating ───────────▶ Stopped ─────────▶ Starting ─────────────────▶ Running
///     │                  ▲    ▲                │                         │  │
///     │ rolled back      │    └── exited ──────┴──── stop / kill / exit ─┘  │
///     ▼                  │                                                 │
///  (removed)             └──────────────────── Stopping ◀──────────────────┘
///
///  any state ── delete ──▶ Deleting ──▶ (removed)
///  any state ── unrecoverable failure ──▶ Failed
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Creating,
    Stopped,
    Starting,
    Running,
    Stopping,
    Deleting,
    Failed,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Creating => "creating",
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Deleting => "deleting",
            VmState::Failed => "failed",
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The user-settable shape of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
pub struct VmSpec {
    pub image: String,
    pub kernel: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub root_disk_mib: u64,
    pub work_disk_mib: u64,
}

/// Which VMM runs a VM. Persisted (bincode stores the variant's index): append new backends
/// at the end only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum VmmKind {
    Firecracker,
    /// QEMU's `microvm` machine (KVM where it runs a stock guest, TCG elsewhere).
    Qemu,
}

impl VmmKind {
    pub const ALL: [VmmKind; 2] = [VmmKind::Firecracker, VmmKind::Qemu];

    /// The name users type (`--vmm qemu`) and see.
    pub fn as_str(self) -> &'static str {
        match self {
            VmmKind::Firecracker => "firecracker",
            VmmKind::Qemu => "qemu",
        }
    }
}

impl fmt::Display for VmmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How recovery chose to finish an operation that had no terminal event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryDecision {
    /// Undo the completed steps in reverse order.
    RollBack,
    /// Finish the remaining steps.
    RollForward,
    /// The operation was already rolling back: undo what is left.
    ResumeUndo,
}

// ---- operation lifecycle payloads -------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct OperationStarted {
    pub kind: OpKind,
    pub target: Target,
    /// The request's parameters as JSON, for audit and for `banger ops`. A kind that crash
    /// recovery rolls forward from more than its target records a versioned
    /// [`ResumePayload`](crate::ResumePayload) here, which is persisted schema too.
    pub parameters: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct StepStarted {
    pub step: String,
    /// The host resources this step is about to create (names and paths are decided before the
    /// side effect, so a crash in the middle can still be undone).
    pub intent: Vec<Handle>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct StepSucceeded {
    pub step: String,
    /// The handles the step produced (pids with start times, allocated names, paths).
    pub produced: Vec<Handle>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct StepFailed {
    pub step: String,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct UndoStarted {
    pub step: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct UndoSucceeded {
    pub step: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct UndoFailed {
    pub step: String,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct OperationSucceeded {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct OperationRolledBack {
    pub reason: String,
}

/// An undo failed: the operation can neither finish nor roll back on its own. It stays visible
/// in `banger ops` and blocks further operations on its target until someone intervenes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct OperationStuck {
    pub step: String,
    pub error: String,
}

// ---- domain payloads --------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct VmDefined {
    pub vm_id: VmId,
    pub name: String,
    pub spec: VmSpec,
}

/// Which VMM runs the VM, chosen when it was created (`--vmm`, or the `auto` rule), and why.
/// A create appends it in the commit of its `OperationStarted`, beside `VmDefined`, so the
/// VM is never seen without it; a VM defined by a build that recorded none runs on
/// Firecracker, the only backend those builds had. Its own event rather than a field of
/// `VmDefined`, whose layout is frozen, and so that a later change of backend can say so too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct VmBackendChosen {
    pub vm_id: VmId,
    pub vmm: VmmKind,
    /// Why this backend: "asked for with --vmm", or what `auto` found on the host.
    pub reason: String,
}

/// The ssh host key the guest presented at a boot, as bangerd recorded it: what banger's own
/// known_hosts file says the VM's sshd must show, so that `banger vm ssh` knows the key
/// instead of trusting it on first use. Appended by a boot (`vm.create`, `vm.start`) in the
/// commit of its `OperationSucceeded`, only when the VM has no recorded key yet: a guest that
/// later presents another key is not recorded over the first (bangerd warns, `vm show` says
/// so, and ssh refuses the changed key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct VmHostKeyRecorded {
    pub vm_id: VmId,
    /// The key's type as OpenSSH names it: `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`.
    pub algorithm: String,
    /// The public key blob in base64, as in a `.pub` file and a known_hosts line.
    pub public_key: String,
    /// `SHA256:` and the unpadded base64 of the blob's SHA-256, as `ssh-keygen -l` prints it.
    pub fingerprint_sha256: String,
}

/// A `vm.workspace.import` finished: the checkout at `host_path` (at `commit`, empty when it
/// has none) is at `guest_path` in the VM. `tree_hash` is sha256 over every (path, mode,
/// content hash) of what the guest now holds from the checkout, `files` and `bytes` what this
/// import actually sent (an unchanged re-import sends nothing). In the commit of the
/// operation's `OperationSucceeded`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct WorkspaceImported {
    pub vm_id: VmId,
    pub host_path: String,
    pub guest_path: String,
    pub commit: String,
    pub tree_hash: String,
    pub files: u64,
    pub bytes: u64,
}

/// A `vm.workspace.export` finished: `files_written` files (deletions included) came back
/// from `guest_path` into the checkout at `host_path`, whose tree then hashes to `tree_hash`
/// (so `vm exec` does not take the export for a host change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct WorkspaceExported {
    pub vm_id: VmId,
    pub host_path: String,
    pub guest_path: String,
    pub files_written: u64,
    pub tree_hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct VmChanged {
    pub vm_id: VmId,
    pub spec: VmSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct VmStateChanged {
    pub vm_id: VmId,
    pub from: VmState,
    pub to: VmState,
}

/// The VMM process of a VM ended without being asked to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct VmExited {
    pub vm_id: VmId,
    pub pid: u32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// The last lines of the serial console, to say why.
    pub console_tail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct VmRemoved {
    pub vm_id: VmId,
}

/// At daemon start, a VM's recorded VMM process was gone (or its pid now belongs to another
/// process).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct VmFoundDead {
    pub vm_id: VmId,
    pub pid: u32,
    pub start_time_ticks: u64,
}

/// Layout of `ImageRegistered` before images named their kernel. Kept so that logs written then
/// still open; [`Event::upgrade`] turns it into an [`ImageRegistered`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ImageRegisteredV1 {
    pub name: String,
    pub rootfs_path: String,
    pub size_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ImageRegistered {
    pub name: String,
    pub rootfs_path: String,
    /// Kernel this image boots with by default, when it names one.
    pub kernel: Option<String>,
    pub size_bytes: u64,
    /// sha256 of the rootfs file, hex; empty when it was not computed.
    pub sha256: String,
    /// Where it came from: `register:<path>`, `oci:<ref>@<digest>`, `catalog:<name>`.
    pub source: String,
}

impl From<ImageRegisteredV1> for ImageRegistered {
    fn from(old: ImageRegisteredV1) -> Self {
        ImageRegistered {
            source: format!("register:{}", old.rootfs_path),
            name: old.name,
            rootfs_path: old.rootfs_path,
            kernel: None,
            size_bytes: old.size_bytes,
            sha256: String::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ImageRemoved {
    pub name: String,
}

/// What an `image.cache.prune` deleted, in the commit of its `OperationSucceeded`: the bytes of
/// every file and the number of blobs among them. A prune rolled forward after a crash counts
/// only what its resumed run deleted (nothing, when its `delete-aside` step had finished).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ImageCachePruned {
    pub bytes: u64,
    pub blobs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct KernelRegistered {
    pub name: String,
    pub kernel_path: String,
    pub initrd_path: Option<String>,
    pub version: String,
    pub sha256: String,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct KernelRemoved {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct HandleAcquired {
    pub owner: Owner,
    pub handle: Handle,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct HandleReleased {
    pub handle: Handle,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct DaemonStarted {
    /// /proc/sys/kernel/random/boot_id: a different value means the host rebooted and no
    /// process recorded before can still be alive.
    pub boot_id: String,
    pub version: String,
    pub pid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct DaemonStopped {
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct RecoveryDecided {
    pub op_id: OpId,
    pub decision: RecoveryDecision,
    pub reason: String,
}

/// A host resource that carries banger's naming but that no live record owns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct OrphanFound {
    pub handle: Handle,
    /// What was done about it ("removed", "left in place: …").
    pub action: String,
}

/// `banger events repair` replaced a damaged log: this event follows the intact events it
/// kept, so its own seq is the first one lost. The damaged file is kept, untouched, at
/// `backup_path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct LogRepaired {
    /// The first sequence number that could not be read intact (this event's own seq).
    pub first_lost_seq: Seq,
    /// The highest sequence number the damaged file stored, as far as could be told: the end
    /// of the lost range. `None` when the file did not say.
    pub last_stored_seq: Option<Seq>,
    /// Why the events from `first_lost_seq` on were not kept (the reader's error).
    pub reason: String,
    /// Where the damaged file was moved, byte for byte as it was found.
    pub backup_path: String,
}

macro_rules! define_events {
    ($( $(#[$doc:meta])* $code:literal => $variant:ident($payload:ty) = $name:literal, )+) => {
        /// Everything that can happen, as a closed set of typed events. The number before each
        /// variant is its persisted kind code.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum Event {
            $( $(#[$doc])* $variant($payload), )+
        }

        impl Event {
            /// The persisted kind code of this event.
            pub fn kind(&self) -> u16 {
                match self { $( Event::$variant(_) => $code, )+ }
            }

            /// The snake_case name used in JSON and on the command line.
            pub fn name(&self) -> &'static str {
                Self::kind_name(self.kind()).unwrap_or("unknown")
            }

            /// The name of a kind code, or `None` when this build does not know it.
            pub fn kind_name(kind: u16) -> Option<&'static str> {
                match kind {
                    $( $code => Some($name), )+
                    _ => None,
                }
            }

            /// Every kind code this build can decode.
            pub const KNOWN_KINDS: &'static [u16] = &[$($code),+];
        }

        impl Encode for Event {
            fn encode<E: bincode::enc::Encoder>(&self, encoder: &mut E) -> Result<(), bincode::error::EncodeError> {
                self.kind().encode(encoder)?;
                match self { $( Event::$variant(payload) => payload.encode(encoder), )+ }
            }
        }

        impl<Context> Decode<Context> for Event {
            fn decode<D: bincode::de::Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, bincode::error::DecodeError> {
                let kind = u16::decode(decoder)?;
                match kind {
                    $( $code => Ok(Event::$variant(<$payload>::decode(decoder)?)), )+
                    other => Err(bincode::error::DecodeError::OtherString(format!("unknown event kind {other}"))),
                }
            }
        }
        bincode::impl_borrow_decode!(Event);
    };
}

define_events! {
    // Operation lifecycle: 1..=19.
    1 => OperationStarted(OperationStarted) = "operation_started",
    2 => StepStarted(StepStarted) = "step_started",
    3 => StepSucceeded(StepSucceeded) = "step_succeeded",
    4 => StepFailed(StepFailed) = "step_failed",
    5 => UndoStarted(UndoStarted) = "undo_started",
    6 => UndoSucceeded(UndoSucceeded) = "undo_succeeded",
    7 => UndoFailed(UndoFailed) = "undo_failed",
    8 => OperationSucceeded(OperationSucceeded) = "operation_succeeded",
    9 => OperationRolledBack(OperationRolledBack) = "operation_rolled_back",
    10 => OperationStuck(OperationStuck) = "operation_stuck",
    // VMs: 20..=39.
    20 => VmDefined(VmDefined) = "vm_defined",
    21 => VmChanged(VmChanged) = "vm_changed",
    22 => VmStateChanged(VmStateChanged) = "vm_state_changed",
    23 => VmExited(VmExited) = "vm_exited",
    24 => VmRemoved(VmRemoved) = "vm_removed",
    25 => VmFoundDead(VmFoundDead) = "vm_found_dead",
    26 => VmBackendChosen(VmBackendChosen) = "vm_backend_chosen",
    27 => VmHostKeyRecorded(VmHostKeyRecorded) = "vm_host_key_recorded",
    28 => WorkspaceImported(WorkspaceImported) = "workspace_imported",
    29 => WorkspaceExported(WorkspaceExported) = "workspace_exported",
    // Images and kernels: 40..=59.
    40 => ImageRegisteredV1(ImageRegisteredV1) = "image_registered_v1",
    41 => ImageRegistered(ImageRegistered) = "image_registered",
    42 => ImageRemoved(ImageRemoved) = "image_removed",
    43 => ImageCachePruned(ImageCachePruned) = "image_cache_pruned",
    45 => KernelRegistered(KernelRegistered) = "kernel_registered",
    46 => KernelRemoved(KernelRemoved) = "kernel_removed",
    // Host handles: 60..=69.
    60 => HandleAcquired(HandleAcquired) = "handle_acquired",
    61 => HandleReleased(HandleReleased) = "handle_released",
    // Daemon and recovery: 70..=89.
    70 => DaemonStarted(DaemonStarted) = "daemon_started",
    71 => DaemonStopped(DaemonStopped) = "daemon_stopped",
    72 => RecoveryDecided(RecoveryDecided) = "recovery_decided",
    73 => OrphanFound(OrphanFound) = "orphan_found",
    74 => LogRepaired(LogRepaired) = "log_repaired",
}

impl Event {
    /// Converts a superseded payload layout into the current one. Readers call this so that
    /// nothing past the decoder ever sees an old layout.
    pub fn upgrade(self) -> Event {
        match self {
            Event::ImageRegisteredV1(old) => Event::ImageRegistered(old.into()),
            current => current,
        }
    }

    /// The VM this event is about, when it is about one.
    pub fn vm_id(&self) -> Option<VmId> {
        match self {
            Event::OperationStarted(OperationStarted {
                target: Target::Vm { vm_id, .. },
                ..
            }) => Some(*vm_id),
            Event::VmDefined(e) => Some(e.vm_id),
            Event::VmChanged(e) => Some(e.vm_id),
            Event::VmStateChanged(e) => Some(e.vm_id),
            Event::VmExited(e) => Some(e.vm_id),
            Event::VmRemoved(e) => Some(e.vm_id),
            Event::VmFoundDead(e) => Some(e.vm_id),
            Event::VmBackendChosen(e) => Some(e.vm_id),
            Event::VmHostKeyRecorded(e) => Some(e.vm_id),
            Event::WorkspaceImported(e) => Some(e.vm_id),
            Event::WorkspaceExported(e) => Some(e.vm_id),
            Event::HandleAcquired(HandleAcquired {
                owner: Owner::Vm(vm_id),
                ..
            }) => Some(*vm_id),
            _ => None,
        }
    }

    /// True for the events that end an operation.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::OperationSucceeded(_) | Event::OperationRolledBack(_) | Event::OperationStuck(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_codes_are_unique_and_named() {
        let mut seen = std::collections::HashSet::new();
        for kind in Event::KNOWN_KINDS {
            assert!(seen.insert(*kind), "kind {kind} used twice");
            assert!(Event::kind_name(*kind).is_some());
        }
        assert_eq!(Event::kind_name(1), Some("operation_started"));
        assert_eq!(Event::kind_name(41), Some("image_registered"));
        assert_eq!(Event::kind_name(999), None);
    }

    #[test]
    fn op_kinds_print_as_users_type_them() {
        for kind in OpKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn json_tag_matches_kind_name() {
        let event = Event::ImageRemoved(ImageRemoved { name: "x".into() });
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], event.name());
        let event = Event::ImageRegisteredV1(ImageRegisteredV1 {
            name: "x".into(),
            rootfs_path: "/r".into(),
            size_bytes: 1,
        });
        assert_eq!(serde_json::to_value(&event).unwrap()["type"], event.name());
    }
}
