//! `banger_events::repair` on real redb files damaged the way the corruption tests damage
//! them: bit flips in stored frames, files cut short, a file whose writer was killed.
//!
//! What must hold, always: the damaged file ends up at the backup path byte for byte as it
//! was found (or, when the repair refuses, stays at its own path byte for byte); the repaired
//! log holds exactly the original's intact prefix, frame for frame, then one `LogRepaired` at
//! the first lost seq naming the loss and the backup; and a journal opens it writable, with
//! the view of that prefix, and takes appends.

use std::path::Path;
use std::sync::Arc;

use banger_events::frame::HEADER_LEN;
use banger_events::repair::{self, Diagnosis, Outcome, RepairError, RepairOptions};
use banger_events::*;
use banger_projections::Projections;
use banger_replay_tests::*;

use crate::common::*;

const NOW_MS: u64 = 1_777_404_777_000;

fn options() -> RepairOptions {
    RepairOptions {
        now_unix_ms: NOW_MS,
        id_seed: Some(11),
    }
}

/// The story the damage is done to: every kind of operation event, an old-layout event.
fn story() -> Vec<Envelope> {
    stories::all()
        .into_iter()
        .find(|s| s.name == "images-and-kernels")
        .expect("story exists")
        .log
        .envelopes()
        .to_vec()
}

fn flip(bytes: &mut [u8], bit: usize) {
    bytes[bit / 8] ^= 1 << (bit % 8);
}

/// A damaged file that [`repair::repair`] was run on, and what came of it.
struct Trial<'a> {
    what: String,
    /// The file as it was found (damaged), before the repair.
    found: Vec<u8>,
    dir: &'a Path,
}

impl Trial<'_> {
    fn path(&self) -> std::path::PathBuf {
        self.dir.join("events.redb")
    }

    fn backup(&self) -> std::path::PathBuf {
        self.dir.join("events.redb.damaged-test")
    }

    /// Writes the damaged bytes and repairs them.
    fn run(&self) -> Result<Outcome, RepairError> {
        let _ = std::fs::remove_file(self.backup());
        // The write-ahead file the previous trial's repaired log got when it was opened: it
        // belongs to that log, not to these bytes.
        let _ = std::fs::remove_file(wal::path_for(&self.path()));
        std::fs::write(self.path(), &self.found).unwrap();
        repair::repair(&self.path(), &self.backup(), options())
    }

    /// The checks every repaired trial must pass. `original` are the events as written (the
    /// repaired log must start with exactly its first frames), `last_written` the file's last
    /// seq.
    fn check_repaired(&self, outcome: &Outcome, original: &[Envelope], expect_lost: Option<Seq>) {
        let what = &self.what;
        let Outcome::Repaired(repaired) = outcome else {
            panic!("{what}: expected a repair, got {outcome:?}");
        };
        let first_lost = repaired.damage.first_lost_seq;
        if let Some(expected) = expect_lost {
            assert_eq!(first_lost, expected, "{what}: first lost seq");
        }
        // The backup is the damaged file, byte for byte; nothing else is left behind.
        assert_eq!(repaired.backup_path, self.backup(), "{what}");
        let backup = std::fs::read(self.backup()).expect("the backup exists");
        assert!(
            backup == self.found,
            "{what}: the backup differs from the damaged file"
        );
        let mut left: Vec<String> = std::fs::read_dir(self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["events.redb", "events.redb.damaged-test"],
            "{what}: files left in the directory"
        );

        // The repaired log: the intact prefix, frame for frame, then LogRepaired.
        let kept = first_lost.0 as usize - 1;
        assert!(kept <= original.len(), "{what}: kept {kept}");
        let log = RedbLog::open(self.path()).expect("the repaired log opens");
        assert_eq!(log.read_only_reason(), None, "{what}");
        let stored = log
            .read_frames(Seq(1), Seq(u64::MAX), usize::MAX)
            .expect("read the repaired log's frames");
        assert_eq!(stored.len(), kept + 1, "{what}: stored frames");
        assert_eq!(
            stored[..kept],
            frames_of(&original[..kept]),
            "{what}: the kept frames are not the original's, byte for byte"
        );
        let events = log
            .read(Seq(1), Seq(u64::MAX), usize::MAX)
            .expect("the repaired log reads whole");
        assert_eq!(events[..kept], as_read(&original[..kept]), "{what}");
        let repair_event = &events[kept];
        assert_eq!(repair_event, &repaired.event, "{what}");
        assert_eq!(repair_event.seq, first_lost, "{what}");
        assert_eq!(repair_event.at_unix_ms, NOW_MS, "{what}");
        match &repair_event.event {
            Event::LogRepaired(e) => {
                assert_eq!(e.first_lost_seq, first_lost, "{what}");
                assert_eq!(e.backup_path, self.backup().display().to_string(), "{what}");
                assert!(
                    e.reason.contains(&format!("seq {first_lost}")),
                    "{what}: the reason does not name seq {first_lost}: {}",
                    e.reason
                );
                if let Some(last) = e.last_stored_seq {
                    assert!(
                        last >= first_lost,
                        "{what}: lost range {first_lost}..{last}"
                    );
                }
            }
            other => panic!("{what}: the last event is {other:?}"),
        }

        // A journal takes it as sound: writable, the view of what was kept, appends go on.
        let journal = open_journal(Arc::new(log), 1 << 20);
        assert_eq!(journal.health(), Health::Writable, "{what}");
        assert_eq!(journal.last_seq(), first_lost, "{what}");
        assert_eq!(
            *journal.view(),
            fold::<Projections>(&events),
            "{what}: view of the repaired log"
        );
        let appended = journal
            .append_blocking(vec![NewEvent::new(Event::DaemonStopped(DaemonStopped {
                reason: "after repair".into(),
            }))])
            .expect("append to the repaired log");
        assert_eq!(appended[0].seq, first_lost.next(), "{what}");
        assert_eq!(journal.verify_all(), Ok(first_lost.0 + 1), "{what}");
        journal.close();
    }

    /// The checks of a refused repair: the file is where it was, byte for byte, and nothing
    /// else was left behind.
    fn check_untouched(&self) {
        let what = &self.what;
        let now = std::fs::read(self.path()).expect("the damaged file is still there");
        assert!(now == self.found, "{what}: the refused file was changed");
        let names: Vec<String> = std::fs::read_dir(self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["events.redb"], "{what}: files left behind");
    }
}

/// Bit flips in the header, crc and body of frames at the start, middle and end of a log
/// written in one transaction: each is repaired to exactly the frames before it.
fn a_bit_flip_is_repaired_to_the_intact_prefix_and_the_damaged_file_kept() {
    let original = story();
    let frames = frames_of(&original);
    let dir = tempfile::tempdir().unwrap();
    let pristine = {
        let path = dir.path().join("pristine.redb");
        write_redb(&path, &frames).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        bytes
    };
    let last = frames.len() - 1;
    let mut repaired = 0;
    for index in [0, 1, last / 3, last / 2, last - 1, last] {
        let (seq, frame) = &frames[index];
        let offsets = find_all(&pristine, frame);
        assert_eq!(offsets.len(), 1, "frame {seq} is stored once");
        for bit in [
            4 * 8 + 1,                                         // version
            13 * 8 + 2,                                        // crc
            (HEADER_LEN + (frame.len() - HEADER_LEN) / 2) * 8, // body
            frame.len() * 8 - 1,                               // last byte
        ] {
            let mut found = pristine.clone();
            flip(&mut found[offsets[0]..], bit);
            let trial = Trial {
                what: format!("seq {seq}, bit {bit}"),
                found,
                dir: dir.path(),
            };
            match trial.run() {
                Ok(outcome) => {
                    trial.check_repaired(&outcome, &original, Some(*seq));
                    repaired += 1;
                }
                Err(error) => panic!("{}: repair failed: {error}", trial.what),
            }
            std::fs::remove_file(trial.path()).unwrap();
            std::fs::remove_file(trial.backup()).unwrap();
        }
    }
    println!("{repaired} flipped logs repaired");
}

/// A log written by the journal in many transactions, with snapshots (so stale page copies
/// and a snapshot sit in the file): damage before, at and after the snapshot is repaired to
/// the prefix, and the snapshot of the damaged file is not carried over.
fn damage_behind_the_snapshot_is_repaired_too() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("written.redb");
    let written = {
        let journal = open_journal(Arc::new(RedbLog::open(&source).unwrap()), 10);
        let mut written = Vec::new();
        for chunk in story().chunks(3) {
            let batch = chunk
                .iter()
                .map(|e| NewEvent {
                    op_id: e.op_id,
                    cause: e.cause,
                    event: e.event.clone(),
                })
                .collect();
            written.extend(journal.append_blocking(batch).expect("append"));
        }
        journal.close();
        written
    };
    let pristine = std::fs::read(&source).unwrap();
    std::fs::remove_file(&source).unwrap();
    // Closed cleanly, so redb holds every event: the trials are about damage to redb's file.
    std::fs::remove_file(wal::path_for(&source)).unwrap();
    let frames = frames_of(&written);
    for index in [2, frames.len() / 2, frames.len() - 1] {
        let (seq, frame) = &frames[index];
        let mut found = pristine.clone();
        let bit = (HEADER_LEN + (frame.len() - HEADER_LEN) / 2) * 8 + 1;
        // Every copy: redb may keep stale copies of a page in its free space.
        for offset in find_all(&pristine, frame) {
            flip(&mut found[offset..], bit);
        }
        let trial = Trial {
            what: format!("journal-written log, seq {seq}"),
            found,
            dir: dir.path(),
        };
        let outcome = trial
            .run()
            .unwrap_or_else(|e| panic!("{}: {e}", trial.what));
        trial.check_repaired(&outcome, &written, Some(*seq));
        let log = RedbLog::open(trial.path()).unwrap();
        assert_eq!(log.latest_snapshot(), Ok(None), "{}", trial.what);
        drop(log);
        std::fs::remove_file(trial.path()).unwrap();
        std::fs::remove_file(trial.backup()).unwrap();
    }
}

/// Files cut short at many places. redb opens none of them (the file is shorter than its
/// header says), so the repair finds the frames in the file's bytes: those cut before any
/// frame are refused, changing nothing; the rest are repaired to a prefix of what was written
/// — never a log that holds an event that differs from the one written, and never "intact"
/// with events missing.
fn a_truncated_file_is_repaired_to_a_prefix_or_refused_unchanged() {
    let original = story();
    let frames = frames_of(&original);
    let dir = tempfile::tempdir().unwrap();
    let pristine = {
        let path = dir.path().join("pristine.redb");
        write_redb(&path, &frames).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        bytes
    };
    let mut lengths: Vec<usize> = vec![1, 512, 4096];
    lengths.extend((1..=pristine.len() / 4096).map(|page| page * 4096 + 100));
    lengths.extend([pristine.len() / 3, pristine.len() / 2, pristine.len() - 1]);
    lengths.sort_unstable();
    lengths.dedup();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for len in lengths.into_iter().filter(|&l| l < pristine.len()) {
        let trial = Trial {
            what: format!("cut at {len} of {} bytes", pristine.len()),
            found: pristine[..len].to_vec(),
            dir: dir.path(),
        };
        let outcome = match trial.run() {
            Err(RepairError::Unreadable { .. }) => {
                trial.check_untouched();
                "refused: not one intact frame in it".to_owned()
            }
            Err(other) => panic!("{}: {other}", trial.what),
            Ok(Outcome::Intact { events }) => {
                assert_eq!(
                    events as usize,
                    original.len(),
                    "{}: a truncated file passed as an intact, shorter log",
                    trial.what
                );
                trial.check_untouched();
                "intact (the cut was in free space)".to_owned()
            }
            Ok(outcome) => {
                trial.check_repaired(&outcome, &original, None);
                std::fs::remove_file(trial.backup()).unwrap();
                "repaired".to_owned()
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
        std::fs::remove_file(trial.path()).unwrap();
    }
    println!("truncation outcomes: {outcomes:?}");
    assert!(
        outcomes.contains_key("repaired"),
        "no cut was repaired: the raw scan found nothing"
    );
}

/// A damaged log whose writer was killed: redb must repair such a file before it can be read
/// (which writes), and when the damage is in the latest commit its repair falls back to the
/// commit before. The repair works on a copy, so the file is kept byte for byte, and counts
/// the latest commit's events as lost from the first one it could not read.
fn a_damaged_log_left_open_by_a_killed_writer_is_repaired_from_a_copy() {
    let original = story();
    let frames = frames_of(&original);
    let dir = tempfile::tempdir().unwrap();
    let half = frames.len() / 2;
    let damaged = &frames[half + 3].1;
    let found = unclean_with_flip(dir.path(), &frames, half, damaged);
    let trial = Trial {
        what: "unclean file".into(),
        found,
        dir: dir.path(),
    };
    std::fs::write(trial.path(), &trial.found).unwrap();
    assert!(
        matches!(RedbLog::open_untouched(trial.path()), Ok(None)),
        "the test file must need redb's repair to be read"
    );
    let outcome = trial.run().unwrap_or_else(|e| panic!("{e}"));
    // The second commit (from `half`) is the one redb drops.
    trial.check_repaired(&outcome, &original, Some(Seq(half as u64 + 1)));
    let Outcome::Repaired(repaired) = outcome else {
        unreachable!("checked above")
    };
    assert_eq!(repaired.damage.last_stored_seq, None);
    assert!(
        repaired.damage.reason.contains("latest commit"),
        "{}",
        repaired.damage.reason
    );
}

/// The bytes a log has when its writer is killed right after committing `frames` in two
/// transactions (the first `split` of them, then the rest), copied while the writer still has
/// the file open, with a bit of every stored copy of `damaged` flipped.
pub(crate) fn unclean_with_flip(
    dir: &Path,
    frames: &[(Seq, Vec<u8>)],
    split: usize,
    damaged: &[u8],
) -> Vec<u8> {
    let path = dir.join("open.redb");
    let unclean = {
        // Durable redb commits: the events must be in the redb file itself.
        let log = RedbLog::open_with(&path, banger_replay_tests::redb_alone()).unwrap();
        log.commit(&frames[..split], None).unwrap();
        log.commit(&frames[split..], None).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        drop(log);
        std::fs::remove_file(&path).unwrap();
        bytes
    };
    let mut found = unclean.clone();
    let offsets = find_all(&unclean, damaged);
    assert!(!offsets.is_empty(), "the damaged frame is in the file");
    for offset in offsets {
        flip(&mut found[offset..], (HEADER_LEN + 2) * 8);
    }
    found
}

/// A sound log is left alone: nothing is renamed, written or added.
fn an_intact_log_is_left_alone() {
    let original = story();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    write_redb(&path, &frames_of(&original)).unwrap();
    let trial = Trial {
        what: "intact log".into(),
        found: std::fs::read(&path).unwrap(),
        dir: dir.path(),
    };
    assert_eq!(
        repair::diagnose(&path).unwrap(),
        Diagnosis::Intact {
            events: original.len() as u64
        }
    );
    match trial.run() {
        Ok(Outcome::Intact { events }) => assert_eq!(events as usize, original.len()),
        other => panic!("an intact log: {other:?}"),
    }
    trial.check_untouched();
}

/// What is not damage is refused without a change: a frame of a kind a newer banger wrote,
/// a missing log, and a backup name that is taken.
fn what_is_not_damage_is_refused_and_nothing_changes() {
    let original = story();
    let mut frames = frames_of(&original);
    let dir = tempfile::tempdir().unwrap();
    // An intact frame of kind 999 (a newer banger's event).
    let frame = &mut frames[5].1;
    frame[6..8].copy_from_slice(&999u16.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame[..12]);
    crc.update(&frame[HEADER_LEN..]);
    let crc = crc.finalize();
    frame[12..16].copy_from_slice(&crc.to_le_bytes());
    let path = dir.path().join("events.redb");
    write_redb(&path, &frames).unwrap();
    let trial = Trial {
        what: "newer kind".into(),
        found: std::fs::read(&path).unwrap(),
        dir: dir.path(),
    };
    match trial.run() {
        Err(RepairError::Newer { source }) => {
            assert_eq!(
                source,
                LogError::UnknownKind {
                    seq: Seq(6),
                    kind: 999
                }
            );
        }
        other => panic!("a newer banger's log: {other:?}"),
    }
    trial.check_untouched();

    // A damaged log whose backup name is taken.
    let mut damaged = frames_of(&original);
    damaged[3].1[HEADER_LEN + 1] ^= 0x10;
    std::fs::remove_file(&path).unwrap();
    write_redb(&path, &damaged).unwrap();
    let found = std::fs::read(&path).unwrap();
    let backup = dir.path().join("taken");
    std::fs::write(&backup, b"someone else's file").unwrap();
    match repair::repair(&path, &backup, options()) {
        Err(RepairError::BackupExists { .. }) => {}
        other => panic!("a taken backup name: {other:?}"),
    }
    assert!(std::fs::read(&path).unwrap() == found, "the log changed");
    assert_eq!(std::fs::read(&backup).unwrap(), b"someone else's file");

    let missing = dir.path().join("none.redb");
    match repair::repair(&missing, &dir.path().join("b"), options()) {
        Err(RepairError::Missing { .. }) => {}
        other => panic!("a missing log: {other:?}"),
    }
    assert!(!missing.exists());
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync a_bit_flip_is_repaired_to_the_intact_prefix_and_the_damaged_file_kept,
        sync damage_behind_the_snapshot_is_repaired_too,
        sync a_truncated_file_is_repaired_to_a_prefix_or_refused_unchanged,
        sync a_damaged_log_left_open_by_a_killed_writer_is_repaired_from_a_copy,
        sync an_intact_log_is_left_alone,
        sync what_is_not_damage_is_refused_and_nothing_changes,
    ]
}
