//! Golden logs: logs written by an earlier build, checked in, that every later build must
//! decode and project exactly as recorded.
//!
//! Per story `NAME` in `replay-tests/golden/`:
//! - `NAME.frames`: the stored frames in the dump container (see the crate docs);
//! - `NAME.redb`: the same frames in a real redb file (with a projection snapshot half-way,
//!   or where the story's `snapshot_after` says), when it is small;
//! - `NAME.projections.json`: the projections after the last event, pretty JSON;
//! - `NAME.plan.json`: `plan_recovery` of that state, pretty JSON.
//!
//! And the pin files ([`pins`]), which freeze stored forms one sample at a time:
//! `enum-layouts.pins` ([`layouts`]: every variant of every enum stored in frames or
//! snapshots) and `resume-parameters.pins` ([`resume`]: every resume payload version, and the
//! bare JSON of older builds).
//!
//! The test only reads these. `BANGER_BLESS=1` rewrites the story files from
//! `src/stories.rs` first, and appends pins for new samples (never changing a pin; see the
//! README): an explicit act whose diff a reviewer reads.

mod layouts;
mod pins;
mod resume;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_events::*;
use banger_projections::{Projections, plan_recovery};
use banger_replay_tests::*;

use crate::common::*;

/// A redb file larger than this is not checked in; the frame dump still is.
const MAX_REDB_BYTES: usize = 300 * 1024;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}

fn blessing() -> bool {
    std::env::var("BANGER_BLESS").is_ok_and(|v| v == "1")
}

fn pretty<T: serde::Serialize>(value: &T) -> String {
    let mut json = serde_json::to_string_pretty(value).expect("serializes");
    json.push('\n');
    json
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "cannot read golden file {}: {e}\n(golden files are created with \
             `BANGER_BLESS=1 cargo test -p banger-replay-tests golden`; see replay-tests/README.md)",
            path.display()
        )
    })
}

/// Rewrites the golden files of `story` from its current definition.
fn bless(story: &stories::Story) {
    let dir = golden_dir();
    std::fs::create_dir_all(&dir).expect("golden dir");
    let frames = story.log.frames();
    let state: Projections = fold(story.log.envelopes());
    std::fs::write(
        dir.join(format!("{}.frames", story.name)),
        write_dump(&frames),
    )
    .expect("write frames");
    std::fs::write(
        dir.join(format!("{}.projections.json", story.name)),
        pretty(&state),
    )
    .expect("write projections");
    std::fs::write(
        dir.join(format!("{}.plan.json", story.name)),
        pretty(&plan_recovery(&state)),
    )
    .expect("write plan");

    // The redb file: the first half of the events (or as many as the story says) with a
    // snapshot of the state after them, then the rest, as two transactions.
    let scratch = tempfile::tempdir().expect("tempdir");
    let path = scratch.path().join("log.redb");
    {
        let log = RedbLog::open(&path).expect("create redb");
        let half = story.snapshot_after.unwrap_or(frames.len() / 2);
        let head: Projections = fold(&story.log.envelopes()[..half]);
        let snapshot = SnapshotRecord {
            seq: Seq(half as u64),
            format: <Projections as Fold>::SNAPSHOT_FORMAT,
            bytes: head.encode_snapshot(),
        };
        log.commit(&frames[..half], Some(&snapshot))
            .expect("commit head");
        log.commit(&frames[half..], None).expect("commit tail");
    }
    let bytes = std::fs::read(&path).expect("read redb");
    let target = dir.join(format!("{}.redb", story.name));
    if bytes.len() <= MAX_REDB_BYTES {
        std::fs::write(&target, bytes).expect("write redb");
    } else if target.exists() {
        std::fs::remove_file(&target).expect("remove stale redb");
    }
    println!("blessed golden/{}.*", story.name);
}

/// Decodes a golden dump with today's decoder: every frame must be accepted, under keys
/// 1, 2, 3…
fn decode_dump(name: &str, frames: &[(Seq, Vec<u8>)]) -> Vec<Envelope> {
    frames
        .iter()
        .enumerate()
        .map(|(i, (seq, bytes))| {
            assert_eq!(*seq, Seq(i as u64 + 1), "{name}: keys are not gapless");
            decode_checked(*seq, bytes)
                .unwrap_or_else(|e| panic!("{name}: golden frame {seq} no longer decodes: {e}"))
        })
        .collect()
}

/// Every golden log decodes, projects and plans exactly as recorded, from the frame dump,
/// through a journal over an in-memory log, and from the checked-in redb file (whose
/// snapshot must be either used correctly or ignored).
fn golden_logs_decode_and_project_exactly_as_recorded() {
    let stories = stories::all();
    if blessing() {
        for story in &stories {
            bless(story);
        }
    }
    let dir = golden_dir();
    for story in &stories {
        let name = story.name;
        let frames = read_dump(&read(&dir.join(format!("{name}.frames"))))
            .unwrap_or_else(|e| panic!("{name}.frames: {e}"));
        assert!(!frames.is_empty(), "{name}: empty golden log");
        let envelopes = decode_dump(name, &frames);
        let state: Projections = fold(&envelopes);

        let expected_json =
            String::from_utf8(read(&dir.join(format!("{name}.projections.json")))).unwrap();
        assert_eq!(
            pretty(&state),
            expected_json,
            "{name}: the projections of a golden log changed"
        );
        let expected_plan =
            String::from_utf8(read(&dir.join(format!("{name}.plan.json")))).unwrap();
        assert_eq!(
            pretty(&plan_recovery(&state)),
            expected_plan,
            "{name}: the recovery plan of a golden log changed"
        );
        let from_json: Projections =
            serde_json::from_str(&expected_json).expect("golden projections JSON reads back");
        assert_eq!(
            from_json, state,
            "{name}: JSON does not read back to the state"
        );

        // Through the journal, over the same frames in memory.
        let memory = Arc::new(MemoryLog::from_frames(frames.clone()));
        let journal = open_journal(memory, 1 << 20);
        assert_eq!(journal.health(), Health::Writable, "{name}");
        assert_eq!(*journal.view(), state, "{name}: journal view");
        assert_eq!(journal.verify_all(), Ok(frames.len() as u64));
        journal.close();

        // From the real redb file, copied first: opening a redb file writes to it.
        let redb_path = dir.join(format!("{name}.redb"));
        if redb_path.exists() {
            let scratch = tempfile::tempdir().unwrap();
            let copy = scratch.path().join("log.redb");
            std::fs::copy(&redb_path, &copy).unwrap();
            let log = RedbLog::open(&copy).unwrap_or_else(|e| panic!("{name}.redb: {e}"));
            let stored = log
                .read_frames(Seq(1), Seq(u64::MAX), usize::MAX)
                .expect("read frames");
            assert_eq!(
                stored, frames,
                "{name}.redb holds other frames than {name}.frames"
            );
            assert_eq!(
                rebuild::<Projections>(&log).expect("rebuild"),
                state,
                "{name}.redb"
            );
            let journal = open_journal(Arc::new(log), 1 << 20);
            assert_eq!(journal.health(), Health::Writable, "{name}.redb");
            assert_eq!(*journal.view(), state, "{name}.redb: view after open");
            assert_eq!(journal.verify_all(), Ok(frames.len() as u64));
            println!(
                "{name}.redb opened with snapshot {:?}",
                journal.open_report().snapshot_seq
            );
        } else {
            assert!(
                std::fs::metadata(dir.join(format!("{name}.frames")))
                    .map(|m| m.len() as usize > MAX_REDB_BYTES / 2)
                    .unwrap_or(false),
                "{name}: a small golden log should also be checked in as {name}.redb"
            );
        }
    }
}

/// The golden logs keep covering the old payload layout: the image story stores an
/// `ImageRegisteredV1` frame (kind 40) that decodes into today's `ImageRegistered`.
fn golden_logs_keep_an_old_layout_event() {
    let name = "images-and-kernels";
    let frames = read_dump(&read(&golden_dir().join(format!("{name}.frames")))).unwrap();
    let old: Vec<&(Seq, Vec<u8>)> = frames
        .iter()
        .filter(|(_, f)| f.get(6..8) == Some(&40u16.to_le_bytes()[..]))
        .collect();
    assert_eq!(old.len(), 1, "{name} should hold one kind-40 frame");
    let (seq, bytes) = old[0];
    let envelope = decode_checked(*seq, bytes).expect("decodes");
    let Event::ImageRegistered(image) = envelope.event else {
        panic!(
            "kind 40 decoded to {:?}, not an upgraded ImageRegistered",
            envelope.event
        );
    };
    assert_eq!(image.kernel, None);
    assert_eq!(image.sha256, "");
    assert_eq!(image.source, format!("register:{}", image.rootfs_path));
}

/// The golden logs keep roll-forward parameters of both formats: the bare JSON of older builds
/// and the `stop.v1` payload. Each decodes to a payload about its operation's VM (what crash
/// recovery resumes a stop, kill or delete from; `golden/resume-parameters.pins` pins the
/// formats themselves).
fn golden_logs_keep_resume_parameters_of_every_format() {
    let name = "rare-operations";
    let frames = read_dump(&read(&golden_dir().join(format!("{name}.frames")))).unwrap();
    let (mut bare, mut versioned) = (0, 0);
    for envelope in decode_dump(name, &frames) {
        let Event::OperationStarted(started) = envelope.event else {
            continue;
        };
        if !matches!(
            started.kind,
            OpKind::VmStop | OpKind::VmKill | OpKind::VmDelete
        ) {
            continue;
        }
        let Target::Vm { vm_id, .. } = started.target else {
            panic!("{name}: a {} of {}", started.kind, started.target);
        };
        let decoded = ResumePayload::decode(&started.parameters)
            .unwrap_or_else(|e| panic!("{name}: {}: {e}", started.parameters));
        let ResumePayload::StopV1(stop) = decoded;
        assert_eq!(stop.vm_id, vm_id, "{name}: {}", started.parameters);
        if started.parameters.starts_with(r#"{"resume":"stop.v1","#) {
            versioned += 1;
        } else {
            bare += 1;
        }
    }
    assert_eq!(
        (bare, versioned),
        (2, 3),
        "{name}: bare and stop.v1 parameters"
    );
}

/// Every event kind this build knows is stored, in its current layout, in some golden log: a
/// kind added later must be added to a story and blessed, so that its layout is frozen too.
fn golden_logs_cover_every_event_kind() {
    let mut seen = std::collections::BTreeSet::new();
    for story in stories::all() {
        let frames = read_dump(&read(&golden_dir().join(format!("{}.frames", story.name))))
            .expect("dump reads");
        for (_, frame) in frames {
            if let Some(kind) = frame.get(6..8) {
                seen.insert(u16::from_le_bytes([kind[0], kind[1]]));
            }
        }
    }
    let missing: Vec<&str> = Event::KNOWN_KINDS
        .iter()
        .filter(|kind| !seen.contains(kind))
        .filter_map(|kind| Event::kind_name(*kind))
        .collect();
    assert!(
        missing.is_empty(),
        "event kinds no golden log stores: {missing:?} — add them to a story in \
         src/stories.rs and bless"
    );
}

fn frame_dumps_round_trip_and_reject_damage() {
    let frames = stories::all().remove(0).log.frames();
    let dump = write_dump(&frames);
    assert_eq!(read_dump(&dump), Ok(frames.clone()));
    assert_eq!(read_dump(&write_dump(&[])), Ok(Vec::new()));
    for len in [0, 7, 11, 13, 20, dump.len() - 1] {
        assert!(
            read_dump(&dump[..len]).is_err(),
            "a dump cut at {len} bytes"
        );
    }
    let mut other_version = dump.clone();
    other_version[8] = 2;
    assert!(read_dump(&other_version).is_err());
}

/// golden/ holds only what the stories and the pin tests check: a stray file means a story
/// was renamed or removed without its files, which would then silently stop being checked.
fn golden_dir_holds_only_known_files() {
    let mut expected: std::collections::BTreeSet<String> =
        ["enum-layouts.pins", "resume-parameters.pins"]
            .map(String::from)
            .into();
    for story in stories::all() {
        for ext in ["frames", "redb", "projections.json", "plan.json"] {
            expected.insert(format!("{}.{ext}", story.name));
        }
    }
    for entry in std::fs::read_dir(golden_dir()).expect("golden dir exists") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(expected.contains(&name), "unexpected file golden/{name}");
    }
}

/// The pinned variant names of the enums whose type name is in `types` (from the pin samples,
/// which cover every variant).
fn pinned_variants(types: &[&str]) -> BTreeSet<String> {
    layouts::samples()
        .into_iter()
        .map(|sample| sample.label)
        .filter(|label| types.iter().any(|t| label.starts_with(&format!("{t}::"))))
        .collect()
}

/// The variants of the enums nested in `event` that it stores. Exhaustive, so that a new event
/// kind must say which enums it holds.
fn nested_variants(event: &Event, seen: &mut BTreeSet<String>) {
    let mut handles = |handles: &[Handle]| {
        for handle in handles {
            seen.insert(format!("Handle::{}", layouts::handle_name(handle)));
        }
    };
    let mut more = Vec::new();
    match event {
        Event::OperationStarted(e) => {
            more.push(format!("OpKind::{:?}", e.kind));
            more.push(format!("Target::{}", layouts::target_name(&e.target)));
        }
        Event::StepStarted(e) => handles(&e.intent),
        Event::StepSucceeded(e) => handles(&e.produced),
        Event::HandleAcquired(e) => {
            handles(std::slice::from_ref(&e.handle));
            more.push(format!("Owner::{}", layouts::owner_name(&e.owner)));
        }
        Event::HandleReleased(e) => handles(std::slice::from_ref(&e.handle)),
        Event::OrphanFound(e) => handles(std::slice::from_ref(&e.handle)),
        Event::VmStateChanged(e) => {
            more.push(format!("VmState::{}", layouts::vm_state_name(&e.from)));
            more.push(format!("VmState::{}", layouts::vm_state_name(&e.to)));
        }
        Event::RecoveryDecided(e) => {
            more.push(format!(
                "RecoveryDecision::{}",
                layouts::decision_name(&e.decision)
            ));
        }
        Event::VmBackendChosen(e) => {
            more.push(format!("VmmKind::{}", layouts::vmm_kind_name(&e.vmm)));
        }
        Event::StepFailed(_)
        | Event::UndoStarted(_)
        | Event::UndoSucceeded(_)
        | Event::UndoFailed(_)
        | Event::OperationSucceeded(_)
        | Event::OperationRolledBack(_)
        | Event::OperationStuck(_)
        | Event::VmDefined(_)
        | Event::VmChanged(_)
        | Event::VmExited(_)
        | Event::VmRemoved(_)
        | Event::VmFoundDead(_)
        | Event::WorkspaceImported(_)
        | Event::WorkspaceExported(_)
        | Event::VmHostKeyRecorded(_)
        | Event::ImageRegisteredV1(_)
        | Event::ImageRegistered(_)
        | Event::ImageRemoved(_)
        | Event::ImageCachePruned(_)
        | Event::KernelRegistered(_)
        | Event::KernelRemoved(_)
        | Event::DaemonStarted(_)
        | Event::DaemonStopped(_)
        | Event::LogRepaired(_) => {}
    }
    seen.extend(more);
}

/// Every variant of every enum that events store is stored in some golden log, so that each
/// is decoded from bytes an earlier build wrote and projected as recorded — not only pinned
/// on its own. A variant added later must be added to a story and blessed.
fn golden_logs_hold_every_variant_of_every_enum_in_events() {
    let mut seen = BTreeSet::new();
    for story in stories::all() {
        let path = golden_dir().join(format!("{}.frames", story.name));
        let frames = read_dump(&read(&path)).expect("dump reads");
        for envelope in decode_dump(story.name, &frames) {
            nested_variants(&envelope.event, &mut seen);
        }
    }
    let wanted = pinned_variants(&[
        "OpKind",
        "Target",
        "Handle",
        "Owner",
        "VmState",
        "RecoveryDecision",
        "VmmKind",
    ]);
    let missing: Vec<&String> = wanted.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "variants no golden log stores: {missing:?} — add them to a story in src/stories.rs \
         and bless"
    );
}

/// The snapshot in each golden redb file, when this build's snapshot format, decodes to
/// exactly the state of the events before it (a snapshot that decodes to a wrong state would
/// be believed). Between them they hold every variant of the enums only snapshots store.
fn golden_snapshots_decode_to_the_state_they_were_taken_at() {
    let mut seen = BTreeSet::new();
    for story in stories::all() {
        let name = story.name;
        let redb_path = golden_dir().join(format!("{name}.redb"));
        if !redb_path.exists() {
            continue;
        }
        let scratch = tempfile::tempdir().unwrap();
        let copy = scratch.path().join("log.redb");
        std::fs::copy(&redb_path, &copy).unwrap();
        let log = RedbLog::open(&copy).unwrap_or_else(|e| panic!("{name}.redb: {e}"));
        let snapshot = log
            .latest_snapshot()
            .expect("read snapshot")
            .unwrap_or_else(|| panic!("{name}.redb holds no snapshot"));
        if snapshot.format != <Projections as Fold>::SNAPSHOT_FORMAT {
            println!(
                "{name}.redb: snapshot format {} is not this build's; it is replayed instead",
                snapshot.format
            );
            continue;
        }
        let decoded = Projections::decode_snapshot(&snapshot.bytes)
            .unwrap_or_else(|| panic!("{name}.redb: its snapshot no longer decodes"));
        let frames = read_dump(&read(&golden_dir().join(format!("{name}.frames")))).unwrap();
        let envelopes = decode_dump(name, &frames);
        let before: Projections = fold(&envelopes[..snapshot.seq.0 as usize]);
        assert_eq!(
            decoded, before,
            "{name}.redb: its snapshot decodes to another state"
        );
        for op in decoded.operations.values() {
            seen.insert(format!("OpStatus::{}", layouts::op_status_name(&op.status)));
            for step in &op.steps {
                seen.insert(format!(
                    "StepStatus::{}",
                    layouts::step_status_name(&step.status)
                ));
            }
        }
    }
    let wanted = pinned_variants(&["OpStatus", "StepStatus"]);
    let missing: Vec<&String> = wanted.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "variants no golden snapshot stores: {missing:?} — make a story hold them in its first \
         half and bless"
    );
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync golden_logs_decode_and_project_exactly_as_recorded,
        sync golden_logs_keep_an_old_layout_event,
        sync golden_logs_cover_every_event_kind,
        sync frame_dumps_round_trip_and_reject_damage,
        sync golden_dir_holds_only_known_files,
        sync golden_logs_keep_resume_parameters_of_every_format,
        sync golden_logs_hold_every_variant_of_every_enum_in_events,
        sync golden_snapshots_decode_to_the_state_they_were_taken_at,
    ]
    .into_iter()
    .chain(layouts::tests())
    .chain(resume::tests())
    .collect()
}
