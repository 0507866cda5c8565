//! The stored layout of every enum that event frames or projection snapshots hold, pinned in
//! `golden/enum-layouts.pins`: one sample per variant, its bincode 2.0.1 bytes as hex.
//!
//! bincode is positional: a derived enum stores its variant's *index*, then the variant's
//! fields in order, so reordering, removing or re-laying-out a variant silently changes what
//! old logs and snapshots mean. The golden logs only catch that for variants they happen to
//! hold; these pins cover every variant.
//!
//! Adding a variant: the `match`es below are exhaustive, so the build fails until the new
//! variant has a name and a sample; then `BANGER_BLESS=1` appends its pin (and the golden
//! logs want it stored in a story too: `golden_logs_hold_every_variant`). Should a variant be
//! added without a sample anyway, the count check (`no_unpinned_variant`) still fails.

use std::fmt::Debug;

use banger_events::*;
use banger_projections::{OpStatus, StepStatus};
use banger_replay_tests::*;
use bincode::error::DecodeError;
use bincode::{Decode, Encode};

use super::pins::{Sample, verify};

const HEADER: &str = "\
# The bincode 2.0.1 bytes (standard configuration: varint integers, little endian), as hex, of
# one value of every variant of every enum stored in event frames or projection snapshots.
# Checked by replay-tests/tests/replay/golden/layouts.rs. BANGER_BLESS=1 only appends lines for
# new variants: a line that no longer matches is a persisted layout changed in place. Never edit
# a line to make the test pass; add a variant (at the end) or a V2 payload instead.
";

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!("{text:?} is not hex: odd length"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("{text:?} is not hex"))
        })
        .collect()
}

/// The pin of `value`: today's bytes, and a check that pinned bytes decode, whole, to it.
fn pin<T>(label: String, value: T) -> Sample
where
    T: Encode + Decode<()> + PartialEq + Debug + 'static,
{
    let bytes = bincode::encode_to_vec(&value, config()).expect("encodes");
    Sample {
        label,
        encoded: Some(hex(&bytes)),
        check: Box::new(move |pinned| {
            let bytes = unhex(pinned)?;
            let (decoded, used): (T, usize) = bincode::decode_from_slice(&bytes, config())
                .map_err(|e| format!("no longer decodes: {e}"))?;
            if used != bytes.len() {
                return Err(format!("decodes from {used} of its {} bytes", bytes.len()));
            }
            if decoded != value {
                return Err(format!("decodes to {decoded:?}, not {value:?}"));
            }
            Ok(())
        }),
    }
}

/// Pins for every sample of a derived enum, after checking that the samples are its
/// variants in declaration order (sample `i` is stored with variant index `i`) and that
/// there is no variant after the last one.
fn derived<T>(type_name: &str, samples: Vec<T>, name: fn(&T) -> &'static str) -> Vec<Sample>
where
    T: Encode + Decode<()> + PartialEq + Debug + 'static,
{
    for (index, sample) in samples.iter().enumerate() {
        let bytes = bincode::encode_to_vec(sample, config()).expect("encodes");
        assert_eq!(
            bytes.first().map(|b| usize::from(*b)),
            Some(index),
            "{type_name}: sample {index} ({}) should be variant {index}: list one sample per \
             variant, in declaration order",
            name(sample)
        );
    }
    no_unpinned_variant::<T>(type_name, samples.len());
    samples
        .into_iter()
        .map(|value| pin(format!("{type_name}::{}", name(&value)), value))
        .collect()
}

/// Variant index `count` must not exist: if it decodes (a unit variant) or runs out of
/// bytes (a variant with fields), `T` has a variant that no sample pins.
fn no_unpinned_variant<T: Decode<()>>(type_name: &str, count: usize) {
    let index = u8::try_from(count).expect("fewer than 251 variants: one varint byte");
    match bincode::decode_from_slice::<T, _>(&[index], config()) {
        Err(DecodeError::UnexpectedVariant { found, .. }) => assert_eq!(found, u32::from(index)),
        other => panic!(
            "{type_name} has a variant at index {count} that no sample pins ({:?}); add a \
             sample for it and bless",
            other.map(|_| ())
        ),
    }
}

fn op_kind_name(kind: &OpKind) -> &'static str {
    match kind {
        OpKind::VmCreate => "VmCreate",
        OpKind::VmStart => "VmStart",
        OpKind::VmStop => "VmStop",
        OpKind::VmRestart => "VmRestart",
        OpKind::VmKill => "VmKill",
        OpKind::VmDelete => "VmDelete",
        OpKind::VmSet => "VmSet",
        OpKind::ImageRegister => "ImageRegister",
        OpKind::ImagePull => "ImagePull",
        OpKind::ImageDelete => "ImageDelete",
        OpKind::ImagePromote => "ImagePromote",
        OpKind::ImageCachePrune => "ImageCachePrune",
        OpKind::KernelImport => "KernelImport",
        OpKind::KernelPull => "KernelPull",
        OpKind::KernelRemove => "KernelRemove",
        OpKind::Teardown => "Teardown",
        OpKind::TapFill => "TapFill",
        OpKind::WorkspaceImport => "WorkspaceImport",
        OpKind::WorkspaceExport => "WorkspaceExport",
    }
}

pub fn target_name(target: &Target) -> &'static str {
    match target {
        Target::Vm { .. } => "Vm",
        Target::Image { .. } => "Image",
        Target::Kernel { .. } => "Kernel",
        Target::Host => "Host",
        Target::ImageCache => "ImageCache",
    }
}

pub fn handle_name(handle: &Handle) -> &'static str {
    match handle {
        Handle::Tap { .. } => "Tap",
        Handle::Ip { .. } => "Ip",
        Handle::Mac { .. } => "Mac",
        Handle::VsockCid { .. } => "VsockCid",
        Handle::LoopDevice { .. } => "LoopDevice",
        Handle::Process { .. } => "Process",
        Handle::Socket { .. } => "Socket",
        Handle::File { .. } => "File",
        Handle::Directory { .. } => "Directory",
    }
}

pub fn owner_name(owner: &Owner) -> &'static str {
    match owner {
        Owner::Vm(_) => "Vm",
        Owner::Op(_) => "Op",
        Owner::Daemon => "Daemon",
    }
}

pub fn vm_state_name(state: &VmState) -> &'static str {
    match state {
        VmState::Creating => "Creating",
        VmState::Stopped => "Stopped",
        VmState::Starting => "Starting",
        VmState::Running => "Running",
        VmState::Stopping => "Stopping",
        VmState::Deleting => "Deleting",
        VmState::Failed => "Failed",
    }
}

pub fn vmm_kind_name(vmm: &VmmKind) -> &'static str {
    match vmm {
        VmmKind::Firecracker => "Firecracker",
        VmmKind::Qemu => "Qemu",
    }
}

pub fn decision_name(decision: &RecoveryDecision) -> &'static str {
    match decision {
        RecoveryDecision::RollBack => "RollBack",
        RecoveryDecision::RollForward => "RollForward",
        RecoveryDecision::ResumeUndo => "ResumeUndo",
    }
}

pub fn op_status_name(status: &OpStatus) -> &'static str {
    match status {
        OpStatus::Running => "Running",
        OpStatus::RollingBack => "RollingBack",
        OpStatus::Succeeded => "Succeeded",
        OpStatus::RolledBack => "RolledBack",
        OpStatus::Stuck => "Stuck",
    }
}

pub fn step_status_name(status: &StepStatus) -> &'static str {
    match status {
        StepStatus::Started => "Started",
        StepStatus::Succeeded => "Succeeded",
        StepStatus::Failed => "Failed",
        StepStatus::Undoing => "Undoing",
        StepStatus::Undone => "Undone",
        StepStatus::UndoFailed => "UndoFailed",
    }
}

pub fn event_name(event: &Event) -> &'static str {
    match event {
        Event::OperationStarted(_) => "OperationStarted",
        Event::StepStarted(_) => "StepStarted",
        Event::StepSucceeded(_) => "StepSucceeded",
        Event::StepFailed(_) => "StepFailed",
        Event::UndoStarted(_) => "UndoStarted",
        Event::UndoSucceeded(_) => "UndoSucceeded",
        Event::UndoFailed(_) => "UndoFailed",
        Event::OperationSucceeded(_) => "OperationSucceeded",
        Event::OperationRolledBack(_) => "OperationRolledBack",
        Event::OperationStuck(_) => "OperationStuck",
        Event::VmDefined(_) => "VmDefined",
        Event::VmChanged(_) => "VmChanged",
        Event::VmStateChanged(_) => "VmStateChanged",
        Event::VmExited(_) => "VmExited",
        Event::VmRemoved(_) => "VmRemoved",
        Event::VmFoundDead(_) => "VmFoundDead",
        Event::VmBackendChosen(_) => "VmBackendChosen",
        Event::WorkspaceImported(_) => "WorkspaceImported",
        Event::WorkspaceExported(_) => "WorkspaceExported",
        Event::VmHostKeyRecorded(_) => "VmHostKeyRecorded",
        Event::ImageRegisteredV1(_) => "ImageRegisteredV1",
        Event::ImageRegistered(_) => "ImageRegistered",
        Event::ImageRemoved(_) => "ImageRemoved",
        Event::ImageCachePruned(_) => "ImageCachePruned",
        Event::KernelRegistered(_) => "KernelRegistered",
        Event::KernelRemoved(_) => "KernelRemoved",
        Event::HandleAcquired(_) => "HandleAcquired",
        Event::HandleReleased(_) => "HandleReleased",
        Event::DaemonStarted(_) => "DaemonStarted",
        Event::DaemonStopped(_) => "DaemonStopped",
        Event::RecoveryDecided(_) => "RecoveryDecided",
        Event::OrphanFound(_) => "OrphanFound",
        Event::LogRepaired(_) => "LogRepaired",
    }
}

const VM: VmId = VmId(0x57eb_0001);
const OP: OpId = OpId(0x0c03);

fn handles() -> Vec<Handle> {
    vec![
        tap("bt57eb0001"),
        ip([172, 30, 0, 2]),
        mac([0x06, 0xbe, 0x60, 0, 0, 2]),
        cid(3),
        loop_device("/dev/loop7"),
        // A start time above 2^16, so that its varint takes the u32 form.
        process(1_200, 4_000_000),
        socket("/run/user/1000/banger/vms/57eb0001/api.sock"),
        file("/var/lib/banger/vms/57eb0001/root.ext4"),
        dir("/var/lib/banger/kernels/6.1"),
    ]
}

/// One event of every kind, in kind-code order.
fn events() -> Vec<Event> {
    let step = || "launch-vmm".to_owned();
    vec![
        Event::OperationStarted(OperationStarted {
            kind: OpKind::VmStop,
            target: vm_target(VM, "web"),
            parameters: r#"{"name":"web"}"#.into(),
        }),
        Event::StepStarted(StepStarted {
            step: step(),
            intent: vec![socket("/run/api.sock")],
        }),
        Event::StepSucceeded(StepSucceeded {
            step: step(),
            produced: vec![process(1_200, 4_000)],
        }),
        Event::StepFailed(StepFailed {
            step: step(),
            error: "boom".into(),
        }),
        Event::UndoStarted(UndoStarted { step: step() }),
        Event::UndoSucceeded(UndoSucceeded { step: step() }),
        Event::UndoFailed(UndoFailed {
            step: step(),
            error: "busy".into(),
        }),
        Event::OperationSucceeded(OperationSucceeded {}),
        Event::OperationRolledBack(OperationRolledBack {
            reason: "step failed".into(),
        }),
        Event::OperationStuck(OperationStuck {
            step: step(),
            error: "busy".into(),
        }),
        Event::VmDefined(VmDefined {
            vm_id: VM,
            name: "web".into(),
            spec: spec("debian-12", "6.1"),
        }),
        Event::VmChanged(VmChanged {
            vm_id: VM,
            spec: spec("debian-12", "6.6"),
        }),
        Event::VmStateChanged(VmStateChanged {
            vm_id: VM,
            from: VmState::Running,
            to: VmState::Stopping,
        }),
        Event::VmExited(VmExited {
            vm_id: VM,
            pid: 1_200,
            exit_code: Some(1),
            signal: None,
            console_tail: "panic".into(),
        }),
        Event::VmRemoved(VmRemoved { vm_id: VM }),
        Event::VmFoundDead(VmFoundDead {
            vm_id: VM,
            pid: 1_200,
            start_time_ticks: 4_000,
        }),
        Event::VmBackendChosen(VmBackendChosen {
            vm_id: VM,
            vmm: VmmKind::Qemu,
            reason: "no usable KVM".into(),
        }),
        Event::VmHostKeyRecorded(VmHostKeyRecorded {
            vm_id: VM,
            algorithm: "ssh-ed25519".into(),
            public_key: "AAAAC3NzaC1lZDI1NTE5AAAAIA".into(),
            fingerprint_sha256: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU".into(),
        }),
        Event::WorkspaceImported(WorkspaceImported {
            vm_id: VM,
            host_path: "/home/u/src/app".into(),
            guest_path: "/work/app".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            tree_hash: "ab".repeat(32),
            files: 10_000,
            bytes: 104_857_600,
        }),
        Event::WorkspaceExported(WorkspaceExported {
            vm_id: VM,
            host_path: "/home/u/src/app".into(),
            guest_path: "/work/app".into(),
            files_written: 3,
            tree_hash: "cd".repeat(32),
        }),
        Event::ImageRegisteredV1(ImageRegisteredV1 {
            name: "alpine".into(),
            rootfs_path: "/i/alpine.ext4".into(),
            size_bytes: 1 << 20,
        }),
        Event::ImageRegistered(ImageRegistered {
            name: "debian-12".into(),
            rootfs_path: "/i/debian-12.ext4".into(),
            kernel: Some("6.1".into()),
            size_bytes: 1 << 30,
            sha256: "d3".into(),
            source: "oci:debian:12".into(),
        }),
        Event::ImageRemoved(ImageRemoved {
            name: "alpine".into(),
        }),
        Event::ImageCachePruned(ImageCachePruned {
            bytes: 1_288_490_189,
            blobs: 47,
        }),
        Event::KernelRegistered(KernelRegistered {
            name: "6.1".into(),
            kernel_path: "/k/6.1/vmlinux".into(),
            initrd_path: None,
            version: "6.1.0".into(),
            sha256: "5e".into(),
            source: "import:/k".into(),
        }),
        Event::KernelRemoved(KernelRemoved { name: "6.1".into() }),
        Event::HandleAcquired(HandleAcquired {
            owner: Owner::Op(OP),
            handle: tap("bt1"),
        }),
        Event::HandleReleased(HandleReleased { handle: tap("bt1") }),
        Event::DaemonStarted(DaemonStarted {
            boot_id: "b00t".into(),
            version: "0.1.0".into(),
            pid: 812,
        }),
        Event::DaemonStopped(DaemonStopped {
            reason: "SIGTERM".into(),
        }),
        Event::RecoveryDecided(RecoveryDecided {
            op_id: OP,
            decision: RecoveryDecision::ResumeUndo,
            reason: "crashed".into(),
        }),
        Event::OrphanFound(OrphanFound {
            handle: tap("bt9"),
            action: "removed".into(),
        }),
        Event::LogRepaired(LogRepaired {
            first_lost_seq: Seq(41),
            last_stored_seq: Some(Seq(300)),
            reason: "crc32 mismatch".into(),
            backup_path: "/var/lib/banger/events.redb.damaged-20260428T193257Z".into(),
        }),
    ]
}

/// Every sample, in pin-file order.
pub(super) fn samples() -> Vec<Sample> {
    let mut all = Vec::new();
    all.extend(derived("OpKind", OpKind::ALL.to_vec(), op_kind_name));
    all.extend(derived(
        "Target",
        vec![
            vm_target(VM, "web"),
            Target::Image {
                name: "debian-12".into(),
            },
            Target::Kernel { name: "6.1".into() },
            Target::Host,
            Target::ImageCache,
        ],
        target_name,
    ));
    all.extend(derived("Handle", handles(), handle_name));
    all.extend(derived(
        "Owner",
        vec![Owner::Vm(VM), Owner::Op(OP), Owner::Daemon],
        owner_name,
    ));
    all.extend(derived(
        "VmState",
        vec![
            VmState::Creating,
            VmState::Stopped,
            VmState::Starting,
            VmState::Running,
            VmState::Stopping,
            VmState::Deleting,
            VmState::Failed,
        ],
        vm_state_name,
    ));
    all.extend(derived(
        "RecoveryDecision",
        vec![
            RecoveryDecision::RollBack,
            RecoveryDecision::RollForward,
            RecoveryDecision::ResumeUndo,
        ],
        decision_name,
    ));
    all.extend(derived("VmmKind", VmmKind::ALL.to_vec(), vmm_kind_name));
    all.extend(derived(
        "OpStatus",
        vec![
            OpStatus::Running,
            OpStatus::RollingBack,
            OpStatus::Succeeded,
            OpStatus::RolledBack,
            OpStatus::Stuck,
        ],
        op_status_name,
    ));
    all.extend(derived(
        "StepStatus",
        vec![
            StepStatus::Started,
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Undoing,
            StepStatus::Undone,
            StepStatus::UndoFailed,
        ],
        step_status_name,
    ));
    // `Event` is not derived: it stores its kind code (see `define_events!`), so its
    // completeness is checked against the codes this build knows.
    let events = events();
    let sampled: Vec<u16> = events.iter().map(Event::kind).collect();
    assert_eq!(
        sampled,
        Event::KNOWN_KINDS,
        "one Event sample per kind code, in code order"
    );
    all.extend(
        events
            .into_iter()
            .map(|event| pin(format!("Event::{}", event_name(&event)), event)),
    );
    all
}

/// Every variant of every stored enum is pinned, byte for byte, in both directions.
fn every_variant_of_every_stored_enum_keeps_its_layout() {
    verify(
        &super::golden_dir().join("enum-layouts.pins"),
        HEADER,
        &samples(),
    );
}

/// Guards the guard: the checks above notice what they exist to notice.
fn the_layout_pins_notice_a_changed_variant() {
    // A reordered enum stores another index: the check decodes the pinned bytes to another
    // value and says so.
    let sample = pin("VmState::Failed".into(), VmState::Failed);
    let reordered = hex(&bincode::encode_to_vec(VmState::Deleting, config()).unwrap());
    let error = (sample.check)(&reordered).unwrap_err();
    assert!(error.contains("decodes to Deleting, not Failed"), "{error}");
    // Bytes left over mean the pinned layout had more fields than today's.
    let error = (sample.check)(&format!("{}00", sample.encoded.unwrap())).unwrap_err();
    assert!(error.contains("decodes from 1 of its 2 bytes"), "{error}");
    // One sample short of the variants is noticed.
    let missing = std::panic::catch_unwind(|| no_unpinned_variant::<VmState>("VmState", 6));
    assert!(missing.is_err(), "a seventh variant with no sample");
    let missing = std::panic::catch_unwind(|| no_unpinned_variant::<Handle>("Handle", 8));
    assert!(
        missing.is_err(),
        "a ninth variant (with fields) with no sample"
    );
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(super) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync every_variant_of_every_stored_enum_keeps_its_layout,
        sync the_layout_pins_notice_a_changed_variant,
    ]
}
