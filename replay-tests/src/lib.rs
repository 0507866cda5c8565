//! Shared helpers for banger's replay tests: a seeded PRNG, a [`Scenario`] builder that writes
//! logs readably, a generator of valid (and of nonsensical) event sequences, the frame-dump
//! container the golden logs are stored in, and the golden stories themselves.
//!
//! Everything here is deterministic: the same seed gives the same envelopes, byte for byte
//! (event ids and timestamps come from the sequence number, never from a clock or the OS).
//!
//! # The frame-dump container (`*.frames` files in `golden/`)
//!
//! ```text
//!  0          8          12
//!  ┌──────────┬──────────┬─────────────────────────────────────────────┐
//!  │ BGFRAMES │ version  │ record*                                     │
//!  └──────────┴──────────┴─────────────────────────────────────────────┘
//!   magic      u32 le = 1
//!
//!  record:  seq (u64 le) │ length (u32 le) │ `length` bytes: one stored frame, verbatim
//! ```
//!
//! The frames are exactly what [`banger_events::EventLog`] stores under each key (header, crc32,
//! bincode body; see `banger_events::frame`). The container adds no checksum of its own: the
//! frames carry theirs, and the point of a golden log is that *today's decoder* must accept
//! yesterday's frames. Records end at the end of the file; a partial record is an error.
//!
//! # The generator
//!
//! [`generate`] plays a small model of the daemon: a world of VMs, images and kernels, and
//! operations planned from it as step tables (intent and produced handles, facts recorded
//! after each step and while undoing it). Each operation gets a fate — succeed, fail at a step
//! and roll back, or get stuck when an undo fails — and its events are interleaved with those
//! of up to `max_concurrent` others, never two on the same target (as the daemon refuses). Now
//! and then the daemon "crashes": a new one starts (sometimes after a host reboot, finding
//! running VMs dead) and finishes every interrupted operation the way the recovery table says
//! (create/start/set/pull/register/import roll back, stop/kill/delete/removals/prune roll
//! forward, anything already undoing resumes its undo). With `unfinished_at_end`, the log may
//! end in the middle of everything. [`generate_detailed`] also returns the model's view of
//! the end state, which the tests compare with the projections.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::Path;

use banger_events::frame;
use banger_events::*;

pub mod stories;

/// Timestamp of the first event of every scenario; each later event is one second later.
pub const T0_MS: u64 = 1_700_000_000_000;

// ---- seeds and the PRNG -----------------------------------------------------------------------

/// A seed from the environment variable `var` (decimal or `0x` hex), else `default`. The seed
/// is printed, so that a failing run says how to reproduce it.
pub fn seed_from_env(var: &str, default: u64) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|text| parse_u64(text.trim()))
        .unwrap_or(default);
    println!("{var}={seed:#x} (set {var} to reproduce or to explore another seed)");
    seed
}

fn parse_u64(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// splitmix64: tiny, fast, and good enough to drive test generators. Not for anything else.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// An index into a slice of `len` items (0 when empty).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u32) -> bool {
        self.below(100) < u64::from(percent)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.index(items.len()))
        }
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }
}

// ---- the scenario builder ---------------------------------------------------------------------

/// A log under construction: gapless sequence numbers, deterministic event ids and timestamps,
/// and each operation event's `cause` pointing at its `OperationStarted`.
///
/// ```text
/// use banger_events::*;
/// use banger_replay_tests::*;
///
/// let mut s = Scenario::new();
/// s.daemon_started("boot-1", 100);
/// let op = OpId(1);
/// s.start_op(op, OpKind::ImagePull, Target::Image { name: "debian".into() }, "{}");
/// s.step(op, "fetch-layers", vec![dir("/var/cache/banger/blobs")]);
/// s.succeed(op);
/// assert_eq!(s.last_seq(), Seq(4));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Scenario {
    envelopes: Vec<Envelope>,
    op_starts: BTreeMap<OpId, Seq>,
}

impl Scenario {
    pub fn new() -> Scenario {
        Scenario::default()
    }

    /// Continues a log: `envelopes` must be numbered 1, 2, 3… (as a Scenario numbers them).
    pub fn from_envelopes(envelopes: Vec<Envelope>) -> Scenario {
        let mut op_starts = BTreeMap::new();
        for envelope in &envelopes {
            if let (Some(op), Event::OperationStarted(_)) = (envelope.op_id, &envelope.event) {
                op_starts.entry(op).or_insert(envelope.seq);
            }
        }
        Scenario {
            envelopes,
            op_starts,
        }
    }

    pub fn len(&self) -> usize {
        self.envelopes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.envelopes.is_empty()
    }

    pub fn last_seq(&self) -> Seq {
        Seq(self.envelopes.len() as u64)
    }

    pub fn envelopes(&self) -> &[Envelope] {
        &self.envelopes
    }

    pub fn into_envelopes(self) -> Vec<Envelope> {
        self.envelopes
    }

    /// The stored frames of this log, keyed by sequence number.
    pub fn frames(&self) -> Vec<(Seq, Vec<u8>)> {
        frames_of(&self.envelopes)
    }

    /// Appends `event` (inside operation `op_id`, if given) and returns its sequence number.
    pub fn push(&mut self, op_id: Option<OpId>, event: Event) -> Seq {
        let seq = Seq(self.envelopes.len() as u64 + 1);
        let cause = op_id.and_then(|op| self.op_starts.get(&op).copied());
        if let (Some(op), Event::OperationStarted(_)) = (op_id, &event) {
            self.op_starts.insert(op, seq);
        }
        self.envelopes.push(envelope(seq, op_id, cause, event));
        seq
    }

    /// Appends an event that belongs to no operation.
    pub fn fact(&mut self, event: Event) -> Seq {
        self.push(None, event)
    }

    /// Appends an event of operation `op`.
    pub fn in_op(&mut self, op: OpId, event: Event) -> Seq {
        self.push(Some(op), event)
    }

    pub fn daemon_started(&mut self, boot_id: &str, pid: u32) -> Seq {
        self.fact(Event::DaemonStarted(DaemonStarted {
            boot_id: boot_id.into(),
            version: "0.1.0".into(),
            pid,
        }))
    }

    pub fn daemon_stopped(&mut self, reason: &str) -> Seq {
        self.fact(Event::DaemonStopped(DaemonStopped {
            reason: reason.into(),
        }))
    }

    pub fn start_op(&mut self, op: OpId, kind: OpKind, target: Target, parameters: &str) -> Seq {
        self.in_op(
            op,
            Event::OperationStarted(OperationStarted {
                kind,
                target,
                parameters: parameters.into(),
            }),
        )
    }

    pub fn step_started(&mut self, op: OpId, step: &str, intent: Vec<Handle>) -> Seq {
        self.in_op(
            op,
            Event::StepStarted(StepStarted {
                step: step.into(),
                intent,
            }),
        )
    }

    pub fn step_succeeded(&mut self, op: OpId, step: &str, produced: Vec<Handle>) -> Seq {
        self.in_op(
            op,
            Event::StepSucceeded(StepSucceeded {
                step: step.into(),
                produced,
            }),
        )
    }

    /// A step that started with `handles` as its intent and produced exactly them.
    pub fn step(&mut self, op: OpId, step: &str, handles: Vec<Handle>) -> Seq {
        self.step_started(op, step, handles.clone());
        self.step_succeeded(op, step, handles)
    }

    pub fn step_failed(&mut self, op: OpId, step: &str, error: &str) -> Seq {
        self.in_op(
            op,
            Event::StepFailed(StepFailed {
                step: step.into(),
                error: error.into(),
            }),
        )
    }

    pub fn undo_started(&mut self, op: OpId, step: &str) -> Seq {
        self.in_op(op, Event::UndoStarted(UndoStarted { step: step.into() }))
    }

    pub fn undo_succeeded(&mut self, op: OpId, step: &str) -> Seq {
        self.in_op(
            op,
            Event::UndoSucceeded(UndoSucceeded { step: step.into() }),
        )
    }

    /// An undo that started and succeeded.
    pub fn undo(&mut self, op: OpId, step: &str) -> Seq {
        self.undo_started(op, step);
        self.undo_succeeded(op, step)
    }

    pub fn undo_failed(&mut self, op: OpId, step: &str, error: &str) -> Seq {
        self.in_op(
            op,
            Event::UndoFailed(UndoFailed {
                step: step.into(),
                error: error.into(),
            }),
        )
    }

    pub fn succeed(&mut self, op: OpId) -> Seq {
        self.in_op(op, Event::OperationSucceeded(OperationSucceeded {}))
    }

    pub fn roll_back(&mut self, op: OpId, reason: &str) -> Seq {
        self.in_op(
            op,
            Event::OperationRolledBack(OperationRolledBack {
                reason: reason.into(),
            }),
        )
    }

    pub fn stuck(&mut self, op: OpId, step: &str, error: &str) -> Seq {
        self.in_op(
            op,
            Event::OperationStuck(OperationStuck {
                step: step.into(),
                error: error.into(),
            }),
        )
    }

    pub fn recovery_decided(&mut self, op: OpId, decision: RecoveryDecision, reason: &str) -> Seq {
        self.in_op(
            op,
            Event::RecoveryDecided(RecoveryDecided {
                op_id: op,
                decision,
                reason: reason.into(),
            }),
        )
    }

    pub fn vm_defined(&mut self, op: Option<OpId>, vm_id: VmId, name: &str, spec: VmSpec) -> Seq {
        self.push(
            op,
            Event::VmDefined(VmDefined {
                vm_id,
                name: name.into(),
                spec,
            }),
        )
    }

    pub fn vm_backend(&mut self, op: Option<OpId>, vm_id: VmId, vmm: VmmKind, reason: &str) -> Seq {
        self.push(
            op,
            Event::VmBackendChosen(VmBackendChosen {
                vm_id,
                vmm,
                reason: reason.into(),
            }),
        )
    }

    pub fn vm_state(&mut self, op: Option<OpId>, vm_id: VmId, from: VmState, to: VmState) -> Seq {
        self.push(
            op,
            Event::VmStateChanged(VmStateChanged { vm_id, from, to }),
        )
    }

    pub fn vm_removed(&mut self, op: Option<OpId>, vm_id: VmId) -> Seq {
        self.push(op, Event::VmRemoved(VmRemoved { vm_id }))
    }

    pub fn acquire(&mut self, op: Option<OpId>, owner: Owner, handle: Handle) -> Seq {
        self.push(op, Event::HandleAcquired(HandleAcquired { owner, handle }))
    }

    pub fn release(&mut self, op: Option<OpId>, handle: Handle) -> Seq {
        self.push(op, Event::HandleReleased(HandleReleased { handle }))
    }
}

fn envelope(seq: Seq, op_id: Option<OpId>, cause: Option<Seq>, event: Event) -> Envelope {
    Envelope {
        seq,
        event_id: EventId((0xB4_6E_u128 << 64) | u128::from(seq.0)),
        op_id,
        cause,
        at_unix_ms: T0_MS + seq.0 * 1000,
        schema_version: SCHEMA_VERSION,
        event,
    }
}

/// Envelopes for `events` in the order given, numbered from 1 (no causes).
pub fn resequence(events: impl IntoIterator<Item = (Option<OpId>, Event)>) -> Vec<Envelope> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, (op_id, event))| envelope(Seq(i as u64 + 1), op_id, None, event))
        .collect()
}

/// The frames of `envelopes`, keyed by each envelope's own sequence number.
pub fn frames_of(envelopes: &[Envelope]) -> Vec<(Seq, Vec<u8>)> {
    envelopes
        .iter()
        .map(|envelope| (envelope.seq, frame::encode(envelope)))
        .collect()
}

/// `envelopes` as a reader gets them back from the log: superseded payload layouts upgraded
/// (see `Event::upgrade`).
pub fn as_read(envelopes: &[Envelope]) -> Vec<Envelope> {
    envelopes
        .iter()
        .map(|envelope| Envelope {
            event: envelope.event.clone().upgrade(),
            ..envelope.clone()
        })
        .collect()
}

/// Folds `envelopes` in order into a fresh `F`.
pub fn fold<F: Fold>(envelopes: &[Envelope]) -> F {
    let mut state = F::default();
    for envelope in envelopes {
        state.apply(envelope);
    }
    state
}

/// A real redb log at `path` holding exactly `frames`, written in one durable redb transaction
/// (so each frame exists once in the file, and nowhere else: no write-ahead file). The frames
/// are not checked: corruption tests use this to store damaged logs.
pub fn write_redb(path: &Path, frames: &[(Seq, Vec<u8>)]) -> Result<(), LogError> {
    let log = RedbLog::open_with(path, redb_alone())?;
    log.commit(frames, None)
}

/// Options for a log whose every commit is a durable redb commit, with no write-ahead file:
/// for the tests of redb's own damage and repair, which need the events in the redb file.
pub fn redb_alone() -> banger_events::RedbOptions {
    banger_events::RedbOptions {
        write_ahead: false,
        ..Default::default()
    }
}

/// Every offset at which `needle` occurs in `haystack`.
pub fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return Vec::new();
    }
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(offset, _)| offset)
        .collect()
}

// ---- handles, targets and specs ---------------------------------------------------------------

pub fn vm_target(vm_id: VmId, name: &str) -> Target {
    Target::Vm {
        vm_id,
        name: name.into(),
    }
}

pub fn spec(image: &str, kernel: &str) -> VmSpec {
    VmSpec {
        image: image.into(),
        kernel: kernel.into(),
        vcpus: 2,
        memory_mib: 1024,
        root_disk_mib: 4096,
        work_disk_mib: 2048,
    }
}

pub fn tap(name: &str) -> Handle {
    Handle::Tap { name: name.into() }
}

pub fn ip(addr: [u8; 4]) -> Handle {
    Handle::Ip { addr }
}

pub fn mac(addr: [u8; 6]) -> Handle {
    Handle::Mac { addr }
}

pub fn cid(cid: u32) -> Handle {
    Handle::VsockCid { cid }
}

pub fn file(path: &str) -> Handle {
    Handle::File { path: path.into() }
}

pub fn dir(path: &str) -> Handle {
    Handle::Directory { path: path.into() }
}

pub fn socket(path: &str) -> Handle {
    Handle::Socket { path: path.into() }
}

pub fn loop_device(path: &str) -> Handle {
    Handle::LoopDevice { path: path.into() }
}

pub fn process(pid: u32, start_time_ticks: u64) -> Handle {
    Handle::Process {
        pid,
        start_time_ticks,
    }
}

// ---- the frame-dump container -----------------------------------------------------------------

pub const DUMP_MAGIC: [u8; 8] = *b"BGFRAMES";
pub const DUMP_VERSION: u32 = 1;

/// A frame dump that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpError(pub String);

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad frame dump: {}", self.0)
    }
}

impl std::error::Error for DumpError {}

/// Serialises stored frames into the dump container (see the module docs).
pub fn write_dump(frames: &[(Seq, Vec<u8>)]) -> Vec<u8> {
    let total: usize = frames.iter().map(|(_, f)| 12 + f.len()).sum();
    let mut out = Vec::with_capacity(12 + total);
    out.extend_from_slice(&DUMP_MAGIC);
    out.extend_from_slice(&DUMP_VERSION.to_le_bytes());
    for (seq, frame) in frames {
        out.extend_from_slice(&seq.0.to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(frame);
    }
    out
}

/// Reads a dump back into its frames, verbatim (nothing is decoded or checked here).
pub fn read_dump(bytes: &[u8]) -> Result<Vec<(Seq, Vec<u8>)>, DumpError> {
    let rest = bytes
        .strip_prefix(&DUMP_MAGIC)
        .ok_or_else(|| DumpError("missing BGFRAMES magic".into()))?;
    let (version, mut rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| DumpError("missing version".into()))?;
    let version = u32::from_le_bytes(*version);
    if version != DUMP_VERSION {
        return Err(DumpError(format!("unknown dump version {version}")));
    }
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let (seq, tail) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| DumpError(format!("partial record after {} frames", frames.len())))?;
        let (len, tail) = tail
            .split_first_chunk::<4>()
            .ok_or_else(|| DumpError(format!("partial record after {} frames", frames.len())))?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(DumpError(format!(
                "record {} says {len} bytes, {} remain",
                frames.len() + 1,
                tail.len()
            )));
        }
        let (frame, tail) = tail.split_at(len);
        frames.push((Seq(u64::from_le_bytes(*seq)), frame.to_vec()));
        rest = tail;
    }
    Ok(frames)
}

// ---- the generator of valid sequences ---------------------------------------------------------

/// Knobs of [`generate`].
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Operations started in total (recoveries of crashed ones do not count).
    pub ops: usize,
    /// Most operations in flight at once.
    pub max_concurrent: usize,
    /// Chance that an operation which can roll back fails at one of its steps.
    pub fail_percent: u32,
    /// Chance that, while rolling back, an undo fails (the operation then gets stuck).
    pub undo_fail_percent: u32,
    /// Chance in a thousand, at each event while something is in flight, that the daemon
    /// crashes and a new one starts and recovers (rolls back or forward) what was in flight.
    pub crash_per_mille: u32,
    /// When true, the log may end with operations in flight (a crash nobody recovered yet).
    pub unfinished_at_end: bool,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            ops: 24,
            max_concurrent: 4,
            fail_percent: 20,
            undo_fail_percent: 10,
            crash_per_mille: 6,
            unfinished_at_end: true,
        }
    }
}

/// Which way the daemon finishes an operation of `kind` that a crash interrupted, as the
/// generator models it: create, start, set, pull, register and import roll back; stop, kill,
/// delete, removals, prune and teardown roll forward.
pub fn rolls_forward(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::VmStop
            | OpKind::VmKill
            | OpKind::VmDelete
            | OpKind::ImageDelete
            | OpKind::ImageCachePrune
            | OpKind::KernelRemove
            | OpKind::Teardown
    )
}

/// A valid log, deterministic from `seed`: several operations interleaved, made of steps with
/// intents and produced handles; some succeed, some fail and roll back, some get stuck, some are
/// interrupted by a daemon crash and recovered after the restart, and (with
/// `unfinished_at_end`) some are still in flight when the log ends. Between them: VM state
/// changes, handle acquisitions and releases, VMs that exit on their own, daemon restarts.
///
/// "Valid" means what the daemon could have written: at most one unresolved operation per
/// target, steps in order, undo in reverse order, one terminal event per operation.
pub fn generate(seed: u64, config: &GenConfig) -> Scenario {
    generate_detailed(seed, config).log
}

/// A generated log and what the generator believes it left behind, to check the projections
/// against a second, independent model.
#[derive(Clone, Debug)]
pub struct Generated {
    pub log: Scenario,
    /// Operations still in flight when the log ends.
    pub in_flight: BTreeSet<OpId>,
    /// Operations that ended stuck.
    pub stuck: BTreeSet<OpId>,
    /// VMs with no unresolved operation: their name, state, VMM process and owned handles.
    pub idle_vms: BTreeMap<VmId, ModelVm>,
    /// VMs that exist with an unresolved operation on them.
    pub busy_vms: BTreeSet<VmId>,
    /// Images and kernels present, with no unresolved operation on their name.
    pub idle_images: BTreeSet<String>,
    pub idle_kernels: BTreeSet<String>,
    /// Image and kernel names with an unresolved operation (`image:NAME`, `kernel:NAME`).
    pub busy_names: BTreeSet<String>,
}

/// The generator's idea of an idle VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelVm {
    pub name: String,
    pub state: VmState,
    pub spec: VmSpec,
    pub process: Option<Handle>,
    /// Disks, network handles and the process, sorted.
    pub handles: BTreeSet<Handle>,
}

/// [`generate`], with the generator's final model.
pub fn generate_detailed(seed: u64, config: &GenConfig) -> Generated {
    let mut world = World::new(seed, config.clone());
    world.run();
    let idle_vms = world
        .vms
        .iter()
        .filter(|(_, vm)| !vm.busy)
        .map(|(id, vm)| {
            let handles = vm
                .disks
                .iter()
                .chain(&vm.net)
                .chain(&vm.process)
                .cloned()
                .collect();
            (
                *id,
                ModelVm {
                    name: vm.name.clone(),
                    state: vm.state,
                    spec: vm.spec.clone(),
                    process: vm.process.clone(),
                    handles,
                },
            )
        })
        .collect();
    let busy_names = world.busy.clone();
    Generated {
        in_flight: world.runs.iter().map(|run| run.op).collect(),
        stuck: world.stuck.clone(),
        busy_vms: world
            .vms
            .iter()
            .filter(|(_, vm)| vm.busy)
            .map(|(id, _)| *id)
            .collect(),
        idle_images: world
            .images
            .iter()
            .filter(|n| !busy_names.contains(&format!("image:{n}")))
            .cloned()
            .collect(),
        idle_kernels: world
            .kernels
            .iter()
            .filter(|n| !busy_names.contains(&format!("kernel:{n}")))
            .cloned()
            .collect(),
        idle_vms,
        busy_names,
        log: world.log,
    }
}

/// Nonsense: `len` events of every kind in random order, about random (and often unknown)
/// operations, VMs and handles, plus a shuffled valid log. Folding it must not panic.
pub fn junk(seed: u64, len: usize) -> Vec<Envelope> {
    let mut rng = Rng::new(seed ^ 0x6A75_6E6B);
    let valid = generate(
        seed,
        &GenConfig {
            ops: 8,
            ..GenConfig::default()
        },
    );
    let mut events: Vec<(Option<OpId>, Event)> = valid
        .into_envelopes()
        .into_iter()
        .map(|e| (e.op_id, e.event))
        .collect();
    while events.len() < len {
        let op_id = match rng.below(4) {
            0 => None,
            _ => Some(OpId(rng.below(6))),
        };
        events.push((op_id, random_event(&mut rng)));
    }
    rng.shuffle(&mut events);
    events.truncate(len.max(1));
    resequence(events)
}

fn random_event(rng: &mut Rng) -> Event {
    const STEPS: [&str; 4] = ["prepare-rootfs", "network", "launch-vmm", "x"];
    const STATES: [VmState; 7] = [
        VmState::Creating,
        VmState::Stopped,
        VmState::Starting,
        VmState::Running,
        VmState::Stopping,
        VmState::Deleting,
        VmState::Failed,
    ];
    let step = rng.pick(&STEPS).copied().unwrap_or("x").to_string();
    let vm_id = VmId(rng.below(4));
    let name = format!("vm-{}", rng.below(3));
    let handle = random_handle(rng);
    let state = |rng: &mut Rng| rng.pick(&STATES).copied().unwrap_or(VmState::Failed);
    let owner = match rng.below(3) {
        0 => Owner::Vm(vm_id),
        1 => Owner::Op(OpId(rng.below(6))),
        _ => Owner::Daemon,
    };
    let kind = rng.pick(&OpKind::ALL).copied().unwrap_or(OpKind::VmCreate);
    let target = match rng.below(5) {
        0 => vm_target(vm_id, &name),
        1 => Target::Image {
            name: "debian".into(),
        },
        2 => Target::Kernel { name: "6.1".into() },
        3 => Target::ImageCache,
        _ => Target::Host,
    };
    match rng.below(32) {
        31 => Event::VmHostKeyRecorded(VmHostKeyRecorded {
            vm_id,
            algorithm: "ssh-ed25519".into(),
            public_key: format!("AAAAkey{}", rng.below(3)),
            fingerprint_sha256: "SHA256:x".into(),
        }),
        30 => Event::WorkspaceExported(WorkspaceExported {
            vm_id,
            host_path: "/h/app".into(),
            guest_path: "/work/app".into(),
            files_written: rng.below(10),
            tree_hash: "t2".into(),
        }),
        29 => Event::WorkspaceImported(WorkspaceImported {
            vm_id,
            host_path: "/h/app".into(),
            guest_path: "/work/app".into(),
            commit: "c".into(),
            tree_hash: "t".into(),
            files: rng.below(100),
            bytes: rng.below(1 << 20),
        }),
        28 => Event::ImageCachePruned(ImageCachePruned {
            bytes: rng.below(1 << 30),
            blobs: rng.below(100),
        }),
        27 => Event::VmBackendChosen(VmBackendChosen {
            vm_id,
            vmm: rng.pick(&VmmKind::ALL).copied().unwrap_or(VmmKind::Qemu),
            reason: "r".into(),
        }),
        0 => Event::OperationStarted(OperationStarted {
            kind,
            target,
            parameters: "{}".into(),
        }),
        1 => Event::StepStarted(StepStarted {
            step,
            intent: vec![handle],
        }),
        2 => Event::StepSucceeded(StepSucceeded {
            step,
            produced: vec![handle],
        }),
        3 => Event::StepFailed(StepFailed {
            step,
            error: "e".into(),
        }),
        4 => Event::UndoStarted(UndoStarted { step }),
        5 => Event::UndoSucceeded(UndoSucceeded { step }),
        6 => Event::UndoFailed(UndoFailed {
            step,
            error: "e".into(),
        }),
        7 => Event::OperationSucceeded(OperationSucceeded {}),
        8 => Event::OperationRolledBack(OperationRolledBack { reason: "r".into() }),
        9 => Event::OperationStuck(OperationStuck {
            step,
            error: "e".into(),
        }),
        10 => Event::VmDefined(VmDefined {
            vm_id,
            name,
            spec: spec("debian", "6.1"),
        }),
        11 => Event::VmChanged(VmChanged {
            vm_id,
            spec: spec("alpine", "6.6"),
        }),
        12 => Event::VmStateChanged(VmStateChanged {
            vm_id,
            from: state(rng),
            to: state(rng),
        }),
        13 => Event::VmExited(VmExited {
            vm_id,
            pid: rng.below(5) as u32,
            exit_code: Some(1),
            signal: None,
            console_tail: String::new(),
        }),
        14 => Event::VmRemoved(VmRemoved { vm_id }),
        15 => Event::VmFoundDead(VmFoundDead {
            vm_id,
            pid: rng.below(5) as u32,
            start_time_ticks: rng.below(3),
        }),
        16 => Event::ImageRegisteredV1(ImageRegisteredV1 {
            name: "debian".into(),
            rootfs_path: "/r".into(),
            size_bytes: 1,
        }),
        17 => Event::ImageRegistered(ImageRegistered {
            name: "debian".into(),
            rootfs_path: "/r".into(),
            kernel: Some("6.1".into()),
            size_bytes: 1,
            sha256: String::new(),
            source: "register:/r".into(),
        }),
        18 => Event::ImageRemoved(ImageRemoved {
            name: "debian".into(),
        }),
        19 => Event::KernelRegistered(KernelRegistered {
            name: "6.1".into(),
            kernel_path: "/k".into(),
            initrd_path: None,
            version: "6.1".into(),
            sha256: String::new(),
            source: "import:/k".into(),
        }),
        20 => Event::KernelRemoved(KernelRemoved { name: "6.1".into() }),
        21 => Event::HandleAcquired(HandleAcquired { owner, handle }),
        22 => Event::HandleReleased(HandleReleased { handle }),
        23 => Event::DaemonStarted(DaemonStarted {
            boot_id: format!("boot-{}", rng.below(2)),
            version: "0.1.0".into(),
            pid: 1,
        }),
        24 => Event::DaemonStopped(DaemonStopped { reason: "r".into() }),
        25 => Event::RecoveryDecided(RecoveryDecided {
            op_id: OpId(rng.below(6)),
            decision: match rng.below(3) {
                0 => RecoveryDecision::RollBack,
                1 => RecoveryDecision::RollForward,
                _ => RecoveryDecision::ResumeUndo,
            },
            reason: "r".into(),
        }),
        _ => Event::OrphanFound(OrphanFound {
            handle,
            action: "removed".into(),
        }),
    }
}

fn random_handle(rng: &mut Rng) -> Handle {
    let n = rng.below(3);
    match rng.below(9) {
        0 => tap(&format!("bgtap{n}")),
        1 => ip([10, 77, 0, n as u8]),
        2 => mac([6, 0, 0, 0, 0, n as u8]),
        3 => cid(3 + n as u32),
        4 => loop_device(&format!("/dev/loop{n}")),
        5 => process(100 + n as u32, n),
        6 => socket(&format!("/run/s{n}")),
        7 => file(&format!("/f{n}")),
        _ => dir(&format!("/d{n}")),
    }
}

/// What the generator knows of a VM.
#[derive(Clone, Debug)]
struct VmModel {
    name: String,
    state: VmState,
    spec: VmSpec,
    /// An operation on it is unresolved (running, or stuck for good).
    busy: bool,
    disks: Vec<Handle>,
    net: Vec<Handle>,
    process: Option<Handle>,
}

/// One step of a planned operation and the domain events around it.
#[derive(Clone, Debug)]
struct StepPlan {
    name: &'static str,
    intent: Vec<Handle>,
    produced: Vec<Handle>,
    /// Facts recorded right after the step succeeded (handles acquired, released…).
    after: Vec<Event>,
    /// Facts recorded while undoing the step.
    undo: Vec<Event>,
}

impl StepPlan {
    fn new(name: &'static str) -> StepPlan {
        StepPlan {
            name,
            intent: Vec::new(),
            produced: Vec::new(),
            after: Vec::new(),
            undo: Vec::new(),
        }
    }

    fn handles(mut self, handles: Vec<Handle>) -> StepPlan {
        self.intent = handles.clone();
        self.produced = handles;
        self
    }
}

/// How the world changes when an operation ends.
#[derive(Clone, Debug)]
enum Effect {
    None,
    VmState {
        vm_id: VmId,
        state: VmState,
        process: Option<Handle>,
    },
    VmSpec {
        vm_id: VmId,
        spec: VmSpec,
    },
    VmGone(VmId),
    Image(String, bool),
    Kernel(String, bool),
}

#[derive(Clone, Debug)]
struct Plan {
    kind: OpKind,
    target: Target,
    parameters: String,
    /// Facts right after `OperationStarted`.
    start: Vec<Event>,
    steps: Vec<StepPlan>,
    /// Facts before `OperationSucceeded`.
    success: Vec<Event>,
    /// Facts before `OperationRolledBack`.
    rollback: Vec<Event>,
    on_success: Effect,
    on_rollback: Effect,
}

/// An operation in flight in the generator.
#[derive(Debug)]
struct Run {
    op: OpId,
    plan: Plan,
    script: VecDeque<Event>,
    /// Step indexes in the order they started (a re-run after a crash is listed once).
    started: Vec<usize>,
    succeeded: BTreeSet<usize>,
    failed: bool,
    undoing: bool,
    undone: BTreeSet<usize>,
}

impl Run {
    fn step_index(&self, name: &str) -> Option<usize> {
        self.plan.steps.iter().position(|s| s.name == name)
    }

    /// Keeps track of where the operation is, from the events it emitted.
    fn observe(&mut self, event: &Event) {
        match event {
            Event::StepStarted(e) => {
                if let Some(i) = self.step_index(&e.step)
                    && !self.started.contains(&i)
                {
                    self.started.push(i);
                }
            }
            Event::StepSucceeded(e) => {
                if let Some(i) = self.step_index(&e.step) {
                    self.succeeded.insert(i);
                }
            }
            Event::StepFailed(_) => self.failed = true,
            Event::UndoStarted(_) => self.undoing = true,
            Event::UndoSucceeded(e) => {
                if let Some(i) = self.step_index(&e.step) {
                    self.undone.insert(i);
                }
            }
            _ => {}
        }
    }
}

struct World {
    rng: Rng,
    config: GenConfig,
    log: Scenario,
    vms: BTreeMap<VmId, VmModel>,
    images: BTreeSet<String>,
    kernels: BTreeSet<String>,
    /// Image, kernel and host targets with an unresolved operation.
    busy: BTreeSet<String>,
    runs: Vec<Run>,
    stuck: BTreeSet<OpId>,
    spawned: usize,
    next_op: u64,
    next_vm: u64,
    next_net: u32,
    next_pid: u32,
    boot: u32,
    ticks: u64,
}

const IMAGE_NAMES: [&str; 4] = ["debian-12", "alpine-3.20", "ubuntu-24.04", "fedora-40"];
const KERNEL_NAMES: [&str; 3] = ["6.1", "6.6", "6.12"];

fn target_key(target: &Target) -> Option<String> {
    match target {
        Target::Vm { .. } => None,
        Target::Image { name } => Some(format!("image:{name}")),
        Target::Kernel { name } => Some(format!("kernel:{name}")),
        Target::Host => Some("host".into()),
        Target::ImageCache => Some("image-cache".into()),
    }
}

impl World {
    fn new(seed: u64, config: GenConfig) -> World {
        World {
            rng: Rng::new(seed),
            config,
            log: Scenario::new(),
            vms: BTreeMap::new(),
            images: BTreeSet::new(),
            kernels: BTreeSet::new(),
            busy: BTreeSet::new(),
            runs: Vec::new(),
            stuck: BTreeSet::new(),
            spawned: 0,
            next_op: 1,
            next_vm: 1,
            next_net: 0,
            next_pid: 4000,
            boot: 0,
            ticks: 1000,
        }
    }

    fn run(&mut self) {
        self.daemon_start(true);
        // A bound on the loop, far above what any configuration needs.
        let max_iterations = 10_000 + self.config.ops * 200;
        for _ in 0..max_iterations {
            let all_spawned = self.spawned >= self.config.ops;
            if all_spawned && self.runs.is_empty() {
                if self.rng.percent(50) {
                    self.log.daemon_stopped("SIGTERM");
                }
                break;
            }
            if all_spawned && self.config.unfinished_at_end && self.rng.percent(4) {
                break; // the daemon dies here and nobody has recovered yet
            }
            let roll = self.rng.below(100);
            if !all_spawned
                && self.runs.len() < self.config.max_concurrent.max(1)
                && (self.runs.is_empty() || roll < 30)
            {
                self.spawn();
            } else if roll < 40 && self.rng.percent(25) {
                self.noise();
            } else if !self.runs.is_empty()
                && self.rng.below(1000) < u64::from(self.config.crash_per_mille)
            {
                self.crash_and_recover();
            } else if !self.runs.is_empty() {
                let i = self.rng.index(self.runs.len());
                self.advance(i);
            } else if all_spawned {
                break;
            } else {
                // Nothing could be spawned (every target busy) and nothing runs: give up
                // spawning rather than spin.
                self.spawned += 1;
            }
        }
    }

    fn daemon_start(&mut self, reboot: bool) {
        if reboot {
            self.boot += 1;
        }
        let boot_id = format!("boot-{:04}", self.boot);
        let pid = 100 + self.rng.below(900) as u32;
        self.log.daemon_started(&boot_id, pid);
        self.log.acquire(
            None,
            Owner::Daemon,
            socket("/run/user/1000/banger/bangerd.sock"),
        );
    }

    /// A fact with no operation: a VM exits on its own, an orphan is found, a clean restart.
    fn noise(&mut self) {
        let choice = match self.rng.below(5) {
            4 => 1,
            n if n < 2 && !self.runs.is_empty() => 0,
            n => n % 3,
        };
        match choice {
            0 => {
                let running: Vec<VmId> = self
                    .vms
                    .iter()
                    .filter(|(_, vm)| !vm.busy && vm.state == VmState::Running)
                    .map(|(id, _)| *id)
                    .collect();
                let Some(&vm_id) = self.rng.pick(&running) else {
                    return;
                };
                let Some(vm) = self.vms.get_mut(&vm_id) else {
                    return;
                };
                let process = vm.process.take();
                vm.state = VmState::Stopped;
                let pid = match process {
                    Some(Handle::Process { pid, .. }) => pid,
                    _ => 0,
                };
                self.log.fact(Event::VmExited(VmExited {
                    vm_id,
                    pid,
                    exit_code: Some(0),
                    signal: None,
                    console_tail: "reboot: Power down".into(),
                }));
                self.log
                    .vm_state(None, vm_id, VmState::Running, VmState::Stopped);
                if let Some(process) = process {
                    self.log.release(None, process);
                }
            }
            1 => {
                let n = self.rng.below(1000);
                self.log.fact(Event::OrphanFound(OrphanFound {
                    handle: tap(&format!("bgtap-stale{n}")),
                    action: "removed".into(),
                }));
            }
            _ => {
                if self.runs.is_empty() {
                    self.log.daemon_stopped("SIGTERM");
                    self.daemon_start(false);
                }
            }
        }
    }

    fn new_op(&mut self) -> OpId {
        // Spread op ids out so they do not sort like sequence numbers.
        let n = self.next_op;
        self.next_op += 1;
        OpId(n.wrapping_mul(0x9E37_79B9) & 0xffff_ffff)
    }

    fn new_pid(&mut self) -> Handle {
        self.next_pid += 1 + self.rng.below(50) as u32;
        self.ticks += 1 + self.rng.below(10_000);
        process(self.next_pid, self.ticks)
    }

    /// Starts an operation whose target is free, chosen at random among those possible now.
    fn spawn(&mut self) {
        self.spawned += 1;
        let Some(plan) = self.random_plan() else {
            return;
        };
        let op = self.new_op();
        let fail_at = if !rolls_forward(plan.kind)
            && !plan.steps.is_empty()
            && self.rng.percent(self.config.fail_percent)
        {
            Some(self.rng.index(plan.steps.len()))
        } else {
            None
        };
        let undo_fail = self.rng.percent(self.config.undo_fail_percent);
        // Mark the target busy until the operation ends.
        match &plan.target {
            Target::Vm { vm_id, .. } => {
                if let Some(vm) = self.vms.get_mut(vm_id) {
                    vm.busy = true;
                }
            }
            other => {
                if let Some(key) = target_key(other) {
                    self.busy.insert(key);
                }
            }
        }
        self.log
            .start_op(op, plan.kind, plan.target.clone(), &plan.parameters.clone());
        let mut script: VecDeque<Event> = plan.start.iter().cloned().collect();
        let undo_fail_at = if undo_fail { fail_at } else { None };
        script.extend(self.forward(&plan, 0, fail_at, undo_fail_at));
        self.runs.push(Run {
            op,
            plan,
            script,
            started: Vec::new(),
            succeeded: BTreeSet::new(),
            failed: false,
            undoing: false,
            undone: BTreeSet::new(),
        });
    }

    /// The events from step `from` on: each step started and succeeded (or, at `fail_at`,
    /// failed and followed by the rollback), then the success facts and `OperationSucceeded`.
    fn forward(
        &mut self,
        plan: &Plan,
        from: usize,
        fail_at: Option<usize>,
        undo_fail_at: Option<usize>,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        for (i, step) in plan.steps.iter().enumerate().skip(from) {
            out.push(Event::StepStarted(StepStarted {
                step: step.name.into(),
                intent: step.intent.clone(),
            }));
            if fail_at == Some(i) {
                out.push(Event::StepFailed(StepFailed {
                    step: step.name.into(),
                    error: format!("{} failed: injected failure", step.name),
                }));
                let order: Vec<usize> = (0..=i).rev().collect();
                // The failing undo is one of the steps being undone, chosen by `undo_fail_at`.
                let fail_undo = undo_fail_at.map(|k| order.get(k % order.len()).copied());
                out.extend(self.rollback(plan, &order, fail_undo.flatten()));
                return out;
            }
            out.push(Event::StepSucceeded(StepSucceeded {
                step: step.name.into(),
                produced: step.produced.clone(),
            }));
            out.extend(step.after.iter().cloned());
        }
        out.extend(plan.success.iter().cloned());
        out.push(Event::OperationSucceeded(OperationSucceeded {}));
        out
    }

    /// Undo of the steps in `order`, then the rollback facts and `OperationRolledBack` — or,
    /// when the undo of step `fail` fails, `UndoFailed` and `OperationStuck`.
    fn rollback(&mut self, plan: &Plan, order: &[usize], fail: Option<usize>) -> Vec<Event> {
        let mut out = Vec::new();
        for &i in order {
            let Some(step) = plan.steps.get(i) else {
                continue;
            };
            out.push(Event::UndoStarted(UndoStarted {
                step: step.name.into(),
            }));
            if fail == Some(i) {
                let error = format!("undo of {} failed: device busy", step.name);
                out.push(Event::UndoFailed(UndoFailed {
                    step: step.name.into(),
                    error: error.clone(),
                }));
                out.push(Event::OperationStuck(OperationStuck {
                    step: step.name.into(),
                    error,
                }));
                return out;
            }
            out.extend(step.undo.iter().cloned());
            out.push(Event::UndoSucceeded(UndoSucceeded {
                step: step.name.into(),
            }));
        }
        out.extend(plan.rollback.iter().cloned());
        out.push(Event::OperationRolledBack(OperationRolledBack {
            reason: "a step failed".into(),
        }));
        out
    }

    /// Emits the next event of run `i`; when that was its last, applies its effect.
    fn advance(&mut self, i: usize) {
        let Some(run) = self.runs.get_mut(i) else {
            return;
        };
        let Some(event) = run.script.pop_front() else {
            return;
        };
        run.observe(&event);
        let op = run.op;
        let terminal = match &event {
            Event::OperationSucceeded(_) => Some(Some(true)),
            Event::OperationRolledBack(_) => Some(Some(false)),
            Event::OperationStuck(_) => Some(None),
            _ => None,
        };
        self.log.in_op(op, event);
        if let Some(outcome) = terminal {
            let run = self.runs.remove(i);
            match outcome {
                Some(true) => self.finish(&run.plan, run.plan.on_success.clone()),
                Some(false) => self.finish(&run.plan, run.plan.on_rollback.clone()),
                // Stuck: the target stays busy for good.
                None => {
                    self.stuck.insert(run.op);
                }
            }
        }
    }

    fn finish(&mut self, plan: &Plan, effect: Effect) {
        match &plan.target {
            Target::Vm { vm_id, .. } => {
                if let Some(vm) = self.vms.get_mut(vm_id) {
                    vm.busy = false;
                }
            }
            other => {
                if let Some(key) = target_key(other) {
                    self.busy.remove(&key);
                }
            }
        }
        match effect {
            Effect::None => {}
            Effect::VmState {
                vm_id,
                state,
                process,
            } => {
                if let Some(vm) = self.vms.get_mut(&vm_id) {
                    vm.state = state;
                    vm.process = process;
                }
            }
            Effect::VmSpec { vm_id, spec } => {
                if let Some(vm) = self.vms.get_mut(&vm_id) {
                    vm.spec = spec;
                }
            }
            Effect::VmGone(vm_id) => {
                self.vms.remove(&vm_id);
            }
            Effect::Image(name, present) => {
                if present {
                    self.images.insert(name);
                } else {
                    self.images.remove(&name);
                }
            }
            Effect::Kernel(name, present) => {
                if present {
                    self.kernels.insert(name);
                } else {
                    self.kernels.remove(&name);
                }
            }
        }
    }

    /// The daemon dies with operations in flight; a new one starts (after a host reboot, half
    /// the time) and finishes each of them: rolls back what was rolling back or cannot be
    /// finished, rolls forward what should complete.
    fn crash_and_recover(&mut self) {
        let reboot = self.rng.percent(50);
        // Now and then the crash also damaged the log, and `banger events repair` ran before
        // the next start: its event comes first (what it lost is not in this log; recovery
        // works from what is). Drawn from the boot count, so the seeded draws stay as they were.
        if reboot && self.boot % 3 == 2 {
            let first_lost_seq = self.log.last_seq().next();
            self.log.fact(Event::LogRepaired(LogRepaired {
                first_lost_seq,
                last_stored_seq: Some(Seq(first_lost_seq.0 + 2)),
                reason: format!("seq {first_lost_seq} is damaged: crc32 mismatch"),
                backup_path: "/var/lib/banger/events.redb.damaged-20260101T000000Z".into(),
            }));
        }
        self.daemon_start(reboot);
        {
            // Every VMM died with the host; without a reboot, some died while the daemon was
            // down.
            let candidates: Vec<VmId> = self
                .vms
                .iter()
                .filter(|(_, vm)| !vm.busy && vm.process.is_some())
                .map(|(id, _)| *id)
                .collect();
            let dead: Vec<VmId> = candidates
                .into_iter()
                .filter(|_| reboot || self.rng.percent(30))
                .collect();
            for vm_id in dead {
                let Some(vm) = self.vms.get_mut(&vm_id) else {
                    continue;
                };
                let Some(process) = vm.process.take() else {
                    continue;
                };
                let from = vm.state;
                vm.state = VmState::Stopped;
                if let Handle::Process {
                    pid,
                    start_time_ticks,
                } = process
                {
                    self.log.fact(Event::VmFoundDead(VmFoundDead {
                        vm_id,
                        pid,
                        start_time_ticks,
                    }));
                }
                self.log.vm_state(None, vm_id, from, VmState::Stopped);
                self.log.release(None, process);
            }
        }
        let mut runs = std::mem::take(&mut self.runs);
        runs.sort_by_key(|run| run.op);
        for run in &mut runs {
            run.script.clear();
            let forward = rolls_forward(run.plan.kind) && !run.failed && !run.undoing;
            let decision = if forward {
                RecoveryDecision::RollForward
            } else if run.undoing {
                RecoveryDecision::ResumeUndo
            } else {
                RecoveryDecision::RollBack
            };
            run.script
                .push_back(Event::RecoveryDecided(RecoveryDecided {
                    op_id: run.op,
                    decision,
                    reason: "the daemon restarted while the operation was in flight".into(),
                }));
            let plan = run.plan.clone();
            if forward {
                let from = (0..plan.steps.len())
                    .find(|i| !run.succeeded.contains(i))
                    .unwrap_or(plan.steps.len());
                let events = self.forward(&plan, from, None, None);
                run.script.extend(events);
            } else {
                // Undo every step that started (its intent says what it may have made), newest
                // first, except those already undone.
                let order: Vec<usize> = run
                    .started
                    .iter()
                    .rev()
                    .copied()
                    .filter(|i| !run.undone.contains(i))
                    .collect();
                let fail = if self.rng.percent(self.config.undo_fail_percent) {
                    self.rng.pick(&order).copied()
                } else {
                    None
                };
                let events = self.rollback(&plan, &order, fail);
                run.script.extend(events);
            }
        }
        self.runs = runs;
    }

    fn free_vms(&self, states: &[VmState]) -> Vec<VmId> {
        self.vms
            .iter()
            .filter(|(_, vm)| !vm.busy && states.contains(&vm.state))
            .map(|(id, _)| *id)
            .collect()
    }

    /// An operation that is possible now: kinds are tried in a random (weighted) order until
    /// one has a free target, so that rarer situations (a running VM to stop) are used when
    /// they arise.
    fn random_plan(&mut self) -> Option<Plan> {
        const WEIGHTED: [u8; 21] = [
            0, 0, 1, 1, 1, 1, 2, 2, 3, 4, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
        ];
        let mut order = WEIGHTED.to_vec();
        self.rng.shuffle(&mut order);
        let mut tried = BTreeSet::new();
        for choice in order {
            if !tried.insert(choice) {
                continue;
            }
            let plan = match choice {
                0 => self.plan_vm_create(),
                1 => self.plan_vm_start(),
                2 => self.plan_vm_stop(OpKind::VmStop),
                3 => self.plan_vm_stop(OpKind::VmKill),
                4 => self.plan_vm_delete(),
                5 => self.plan_vm_set(),
                6 => self.plan_image_add(),
                7 => self.plan_image_delete(),
                8 => self.plan_kernel_add(),
                9 => self.plan_kernel_remove(),
                10 => self.plan_prune(),
                11 => self.plan_vm_stop(OpKind::VmStop),
                13 => self.plan_workspace(OpKind::WorkspaceImport),
                14 => self.plan_workspace(OpKind::WorkspaceExport),
                _ => self.plan_vm_start(),
            };
            if plan.is_some() {
                return plan;
            }
        }
        None
    }

    fn plan_vm_create(&mut self) -> Option<Plan> {
        if self.vms.len() >= 4 {
            return None;
        }
        let n = self.next_vm;
        self.next_vm += 1;
        let vm_id = VmId(0x1000 + n);
        // Names are reused now and then, after the VM that held them was deleted.
        let name = format!("vm-{}", self.rng.below(n.min(8)) + 1);
        if self.vms.values().any(|vm| vm.name == name) {
            return None;
        }
        let image = self.rng.pick(&IMAGE_NAMES).copied().unwrap_or("debian-12");
        let kernel = self.rng.pick(&KERNEL_NAMES).copied().unwrap_or("6.1");
        let vm_spec = spec(image, kernel);
        let net_n = self.next_net;
        self.next_net += 1;
        let base = format!("/var/lib/banger/vms/{vm_id}");
        let disks = vec![
            file(&format!("{base}/root.ext4")),
            file(&format!("{base}/work.ext4")),
        ];
        let net = vec![
            tap(&format!("bgtap{net_n}")),
            ip([10, 77, (net_n / 250) as u8, (net_n % 250 + 2) as u8]),
            mac([0x06, 0xbe, 0x60, 0, (net_n >> 8) as u8, net_n as u8]),
            cid(3 + net_n),
        ];
        let owner = Owner::Vm(vm_id);
        let acquire = |handles: &[Handle]| -> Vec<Event> {
            handles
                .iter()
                .map(|h| {
                    Event::HandleAcquired(HandleAcquired {
                        owner,
                        handle: h.clone(),
                    })
                })
                .collect()
        };
        let release = |handles: &[Handle]| -> Vec<Event> {
            handles
                .iter()
                .map(|h| Event::HandleReleased(HandleReleased { handle: h.clone() }))
                .collect()
        };
        let mut rootfs = StepPlan::new("prepare-rootfs").handles(disks[..1].to_vec());
        rootfs.after = acquire(&disks[..1]);
        rootfs.undo = release(&disks[..1]);
        let mut work = StepPlan::new("prepare-work-disk").handles(disks[1..].to_vec());
        work.after = acquire(&disks[1..]);
        work.undo = release(&disks[1..]);
        let mut network = StepPlan::new("network").handles(net.clone());
        network.after = acquire(&net);
        network.undo = release(&net);
        self.vms.insert(
            vm_id,
            VmModel {
                name: name.clone(),
                state: VmState::Creating,
                spec: vm_spec.clone(),
                busy: true,
                disks,
                net,
                process: None,
            },
        );
        Some(Plan {
            kind: OpKind::VmCreate,
            target: vm_target(vm_id, &name),
            parameters: format!(r#"{{"name":"{name}","image":"{image}","kernel":"{kernel}"}}"#),
            start: vec![
                Event::VmDefined(VmDefined {
                    vm_id,
                    name: name.clone(),
                    spec: vm_spec,
                }),
                Event::VmBackendChosen(VmBackendChosen {
                    vm_id,
                    vmm: if vm_id.0.is_multiple_of(2) {
                        VmmKind::Firecracker
                    } else {
                        VmmKind::Qemu
                    },
                    reason: "generated".into(),
                }),
            ],
            steps: vec![rootfs, work, network],
            success: vec![Event::VmStateChanged(VmStateChanged {
                vm_id,
                from: VmState::Creating,
                to: VmState::Stopped,
            })],
            rollback: vec![Event::VmRemoved(VmRemoved { vm_id })],
            on_success: Effect::VmState {
                vm_id,
                state: VmState::Stopped,
                process: None,
            },
            on_rollback: Effect::VmGone(vm_id),
        })
    }

    fn plan_vm_start(&mut self) -> Option<Plan> {
        let candidates = self.free_vms(&[VmState::Stopped]);
        let vm_id = *self.rng.pick(&candidates)?;
        let name = self.vms.get(&vm_id)?.name.clone();
        let pid = self.new_pid();
        let api = socket(&format!("/run/user/1000/banger/{vm_id}/api.sock"));
        let mut launch = StepPlan::new("launch-vmm");
        launch.intent = vec![api.clone()];
        launch.produced = vec![api, pid.clone()];
        launch.after = vec![Event::HandleAcquired(HandleAcquired {
            owner: Owner::Vm(vm_id),
            handle: pid.clone(),
        })];
        launch.undo = vec![Event::HandleReleased(HandleReleased {
            handle: pid.clone(),
        })];
        Some(Plan {
            kind: OpKind::VmStart,
            target: vm_target(vm_id, &name),
            parameters: format!(r#"{{"name":"{name}"}}"#),
            start: vec![Event::VmStateChanged(VmStateChanged {
                vm_id,
                from: VmState::Stopped,
                to: VmState::Starting,
            })],
            steps: vec![launch, StepPlan::new("wait-for-agent")],
            // A boot records the guest's ssh host key with its success (the projection keeps
            // the first one: later boots of the same VM add nothing new).
            success: vec![
                Event::VmHostKeyRecorded(VmHostKeyRecorded {
                    vm_id,
                    algorithm: "ssh-ed25519".into(),
                    public_key: format!("AAAAC3NzaC1lZDI1NTE5{}", vm_id.0),
                    fingerprint_sha256: format!("SHA256:generated{}", vm_id.0),
                }),
                Event::VmStateChanged(VmStateChanged {
                    vm_id,
                    from: VmState::Starting,
                    to: VmState::Running,
                }),
            ],
            rollback: vec![Event::VmStateChanged(VmStateChanged {
                vm_id,
                from: VmState::Starting,
                to: VmState::Stopped,
            })],
            on_success: Effect::VmState {
                vm_id,
                state: VmState::Running,
                process: Some(pid),
            },
            on_rollback: Effect::VmState {
                vm_id,
                state: VmState::Stopped,
                process: None,
            },
        })
    }

    fn plan_vm_stop(&mut self, kind: OpKind) -> Option<Plan> {
        let candidates = self.free_vms(&[VmState::Running]);
        let vm_id = *self.rng.pick(&candidates)?;
        let vm = self.vms.get(&vm_id)?;
        let name = vm.name.clone();
        let release: Vec<Event> = vm
            .process
            .iter()
            .map(|h| Event::HandleReleased(HandleReleased { handle: h.clone() }))
            .collect();
        let steps = if kind == OpKind::VmKill {
            let mut kill = StepPlan::new("kill-vmm");
            kill.after = release;
            vec![kill]
        } else {
            let mut shutdown = StepPlan::new("shutdown");
            shutdown.after = release;
            vec![StepPlan::new("sync-workspace"), shutdown]
        };
        Some(Plan {
            kind,
            target: vm_target(vm_id, &name),
            parameters: format!(r#"{{"name":"{name}"}}"#),
            start: vec![Event::VmStateChanged(VmStateChanged {
                vm_id,
                from: VmState::Running,
                to: VmState::Stopping,
            })],
            steps,
            success: vec![Event::VmStateChanged(VmStateChanged {
                vm_id,
                from: VmState::Stopping,
                to: VmState::Stopped,
            })],
            rollback: Vec::new(),
            on_success: Effect::VmState {
                vm_id,
                state: VmState::Stopped,
                process: None,
            },
            on_rollback: Effect::None,
        })
    }

    fn plan_vm_delete(&mut self) -> Option<Plan> {
        let candidates = self.free_vms(&[VmState::Stopped, VmState::Running]);
        let vm_id = *self.rng.pick(&candidates)?;
        let vm = self.vms.get(&vm_id)?.clone();
        let release = |handles: &[Handle]| -> Vec<Event> {
            handles
                .iter()
                .map(|h| Event::HandleReleased(HandleReleased { handle: h.clone() }))
                .collect()
        };
        let mut steps = Vec::new();
        if let Some(process) = &vm.process {
            let mut stop = StepPlan::new("stop-vmm");
            stop.after = release(std::slice::from_ref(process));
            steps.push(stop);
        }
        let mut disks = StepPlan::new("remove-disks");
        disks.intent = vm.disks.clone();
        disks.after = release(&vm.disks);
        steps.push(disks);
        let mut net = StepPlan::new("release-network");
        net.intent = vm.net.clone();
        net.after = release(&vm.net);
        steps.push(net);
        Some(Plan {
            kind: OpKind::VmDelete,
            target: vm_target(vm_id, &vm.name),
            parameters: format!(r#"{{"name":"{}"}}"#, vm.name),
            start: vec![Event::VmStateChanged(VmStateChanged {
                vm_id,
                from: vm.state,
                to: VmState::Deleting,
            })],
            steps,
            success: vec![Event::VmRemoved(VmRemoved { vm_id })],
            rollback: Vec::new(),
            on_success: Effect::VmGone(vm_id),
            on_rollback: Effect::None,
        })
    }

    /// A workspace import or export into a running VM: its steps as their tables record them,
    /// its event in the commit of `OperationSucceeded`. The VM's state does not change.
    fn plan_workspace(&mut self, kind: OpKind) -> Option<Plan> {
        let candidates = self.free_vms(&[VmState::Running]);
        let vm_id = *self.rng.pick(&candidates)?;
        let vm = self.vms.get(&vm_id)?;
        let manifest = file(&format!("/var/lib/banger/vms/{vm_id}/workspace-op.json"));
        let staging = dir("/home/u/src/app/.banger-export-op");
        let (steps, success) = if kind == OpKind::WorkspaceImport {
            (
                vec![
                    StepPlan::new("send"),
                    StepPlan::new("record-manifest").handles(vec![manifest]),
                ],
                Event::WorkspaceImported(WorkspaceImported {
                    vm_id,
                    host_path: "/home/u/src/app".into(),
                    guest_path: "/work/app".into(),
                    commit: format!("{:040x}", self.rng.next_u64()),
                    tree_hash: format!("{:064x}", self.rng.next_u64()),
                    files: self.rng.below(10_000),
                    bytes: self.rng.below(100 << 20),
                }),
            )
        } else {
            (
                vec![
                    StepPlan::new("fetch").handles(vec![staging.clone()]),
                    StepPlan::new("apply").handles(vec![staging]),
                    StepPlan::new("record-manifest").handles(vec![manifest]),
                ],
                Event::WorkspaceExported(WorkspaceExported {
                    vm_id,
                    host_path: "/home/u/src/app".into(),
                    guest_path: "/work/app".into(),
                    files_written: self.rng.below(50),
                    tree_hash: format!("{:064x}", self.rng.next_u64()),
                }),
            )
        };
        Some(Plan {
            kind,
            target: vm_target(vm_id, &vm.name),
            parameters: r#"{"force":false,"guest_path":"/work/app","host_path":"/home/u/src/app"}"#
                .into(),
            start: Vec::new(),
            steps,
            success: vec![success],
            rollback: Vec::new(),
            on_success: Effect::None,
            on_rollback: Effect::None,
        })
    }

    fn plan_vm_set(&mut self) -> Option<Plan> {
        let candidates = self.free_vms(&[VmState::Stopped]);
        let vm_id = *self.rng.pick(&candidates)?;
        let vm = self.vms.get(&vm_id)?;
        let mut new_spec = vm.spec.clone();
        new_spec.vcpus = 1 + self.rng.below(8) as u32;
        new_spec.root_disk_mib += 1024;
        let root = vm.disks.first().cloned();
        let mut resize = StepPlan::new("resize-root-disk");
        resize.intent = root.into_iter().collect();
        // The new spec is recorded by a step of its own, so that undoing it restores the old.
        let mut apply = StepPlan::new("apply-spec");
        apply.after = vec![Event::VmChanged(VmChanged {
            vm_id,
            spec: new_spec.clone(),
        })];
        apply.undo = vec![Event::VmChanged(VmChanged {
            vm_id,
            spec: vm.spec.clone(),
        })];
        Some(Plan {
            kind: OpKind::VmSet,
            target: vm_target(vm_id, &vm.name),
            parameters: format!(r#"{{"name":"{}","vcpus":{}}}"#, vm.name, new_spec.vcpus),
            start: Vec::new(),
            steps: vec![resize, apply],
            success: Vec::new(),
            rollback: Vec::new(),
            on_success: Effect::VmSpec {
                vm_id,
                spec: new_spec,
            },
            on_rollback: Effect::None,
        })
    }

    fn free_name(&mut self, names: &[&'static str], prefix: &str, present: bool) -> Option<String> {
        let set = if prefix == "image" {
            &self.images
        } else {
            &self.kernels
        };
        let candidates: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| {
                set.contains(*n) == present && !self.busy.contains(&format!("{prefix}:{n}"))
            })
            .collect();
        self.rng.pick(&candidates).map(|n| n.to_string())
    }

    fn plan_image_add(&mut self) -> Option<Plan> {
        let name = self.free_name(&IMAGE_NAMES, "image", false)?;
        let rootfs = format!("/var/lib/banger/images/{name}.ext4");
        let pull = self.rng.percent(60);
        let (kind, steps, registered) = if pull {
            let blobs = dir("/var/cache/banger/oci/blobs");
            let registered = Event::ImageRegistered(ImageRegistered {
                name: name.clone(),
                rootfs_path: rootfs.clone(),
                kernel: Some("6.1".into()),
                size_bytes: 512 << 20,
                sha256: format!("{:064x}", self.rng.next_u64()),
                source: format!(
                    "oci:docker.io/library/{name}@sha256:{:016x}",
                    self.rng.next_u64()
                ),
            });
            (
                OpKind::ImagePull,
                vec![
                    StepPlan::new("resolve-manifest"),
                    StepPlan::new("fetch-layers").handles(vec![blobs]),
                    StepPlan::new("build-rootfs").handles(vec![file(&rootfs)]),
                ],
                registered,
            )
        } else {
            // Sometimes in the old layout: a log written before images named their kernel.
            let registered = if self.rng.percent(30) {
                Event::ImageRegisteredV1(ImageRegisteredV1 {
                    name: name.clone(),
                    rootfs_path: rootfs.clone(),
                    size_bytes: 256 << 20,
                })
            } else {
                Event::ImageRegistered(ImageRegistered {
                    name: name.clone(),
                    rootfs_path: rootfs.clone(),
                    kernel: None,
                    size_bytes: 256 << 20,
                    sha256: String::new(),
                    source: format!("register:{rootfs}"),
                })
            };
            (
                OpKind::ImageRegister,
                vec![StepPlan::new("copy-rootfs").handles(vec![file(&rootfs)])],
                registered,
            )
        };
        // Publishing is a step of its own, so that rolling back after it unpublishes.
        let mut steps = steps;
        let mut publish = StepPlan::new("publish");
        publish.after = vec![registered];
        publish.undo = vec![Event::ImageRemoved(ImageRemoved { name: name.clone() })];
        steps.push(publish);
        Some(Plan {
            kind,
            target: Target::Image { name: name.clone() },
            parameters: format!(r#"{{"name":"{name}"}}"#),
            start: Vec::new(),
            steps,
            success: Vec::new(),
            rollback: Vec::new(),
            on_success: Effect::Image(name, true),
            on_rollback: Effect::None,
        })
    }

    fn plan_image_delete(&mut self) -> Option<Plan> {
        let name = self.free_name(&IMAGE_NAMES, "image", true)?;
        Some(Plan {
            kind: OpKind::ImageDelete,
            target: Target::Image { name: name.clone() },
            parameters: format!(r#"{{"name":"{name}"}}"#),
            start: Vec::new(),
            steps: vec![StepPlan::new("remove-rootfs")],
            success: vec![Event::ImageRemoved(ImageRemoved { name: name.clone() })],
            rollback: Vec::new(),
            on_success: Effect::Image(name, false),
            on_rollback: Effect::None,
        })
    }

    fn plan_kernel_add(&mut self) -> Option<Plan> {
        let name = self.free_name(&KERNEL_NAMES, "kernel", false)?;
        let base = format!("/var/lib/banger/kernels/{name}");
        let pull = self.rng.percent(50);
        let mut steps = if pull {
            vec![
                StepPlan::new("download").handles(vec![file(&format!("{base}.tar.zst.part"))]),
                StepPlan::new("extract").handles(vec![dir(&base)]),
            ]
        } else {
            vec![StepPlan::new("copy-kernel").handles(vec![dir(&base)])]
        };
        let mut publish = StepPlan::new("publish");
        publish.after = vec![Event::KernelRegistered(KernelRegistered {
            name: name.clone(),
            kernel_path: format!("{base}/vmlinux"),
            initrd_path: Some(format!("{base}/initrd.img")),
            version: name.clone(),
            sha256: format!("{:064x}", self.rng.next_u64()),
            source: if pull {
                format!("catalog:debian-cloud-{name}")
            } else {
                format!("import:/home/dev/kernels/{name}")
            },
        })];
        publish.undo = vec![Event::KernelRemoved(KernelRemoved { name: name.clone() })];
        steps.push(publish);
        Some(Plan {
            kind: if pull {
                OpKind::KernelPull
            } else {
                OpKind::KernelImport
            },
            target: Target::Kernel { name: name.clone() },
            parameters: format!(r#"{{"name":"{name}"}}"#),
            start: Vec::new(),
            steps,
            success: Vec::new(),
            rollback: Vec::new(),
            on_success: Effect::Kernel(name, true),
            on_rollback: Effect::None,
        })
    }

    fn plan_kernel_remove(&mut self) -> Option<Plan> {
        let name = self.free_name(&KERNEL_NAMES, "kernel", true)?;
        Some(Plan {
            kind: OpKind::KernelRemove,
            target: Target::Kernel { name: name.clone() },
            parameters: format!(r#"{{"name":"{name}"}}"#),
            start: Vec::new(),
            steps: vec![StepPlan::new("remove-files")],
            success: vec![Event::KernelRemoved(KernelRemoved { name: name.clone() })],
            rollback: Vec::new(),
            on_success: Effect::Kernel(name, false),
            on_rollback: Effect::None,
        })
    }

    fn plan_prune(&mut self) -> Option<Plan> {
        if self.busy.contains("image-cache") {
            return None;
        }
        let aside = dir("/var/cache/banger/.oci.pruning-op");
        Some(Plan {
            kind: OpKind::ImageCachePrune,
            target: Target::ImageCache,
            parameters: "{}".into(),
            start: Vec::new(),
            steps: vec![
                StepPlan::new("rename-aside").handles(vec![aside.clone()]),
                StepPlan::new("delete-aside"),
            ],
            success: vec![Event::ImageCachePruned(ImageCachePruned {
                bytes: 3 << 20,
                blobs: 4,
            })],
            rollback: Vec::new(),
            on_success: Effect::None,
            on_rollback: Effect::None,
        })
    }
}
