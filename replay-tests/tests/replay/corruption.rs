//! Corruption, on real redb files: bit flips in stored frames, truncated files, missing and
//! duplicated sequence numbers, unknown event kinds, damaged snapshots.
//!
//! What must hold, always: a damaged record is reported as `Corrupt` naming its sequence
//! number (or redb refuses the file); no read ever returns an event that differs from the one
//! written; the journal turns read-only and refuses appends; the stored events are never
//! modified or truncated.

use std::path::Path;
use std::sync::Arc;

use banger_events::frame::HEADER_LEN;
use banger_events::*;
use banger_projections::Projections;
use banger_replay_tests::*;

use crate::common::*;

/// The small log the flip tests damage: the image and kernel story (every frame kind of an
/// operation, an old-layout event).
fn small_log() -> Scenario {
    stories::all()
        .into_iter()
        .find(|s| s.name == "images-and-kernels")
        .expect("story exists")
        .log
}

/// The bytes of a redb file holding `frames`, written in one transaction.
fn redb_bytes(frames: &[(Seq, Vec<u8>)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pristine.redb");
    write_redb(&path, frames).expect("write redb");
    std::fs::read(&path).unwrap()
}

/// Bits to flip in a frame of `len` bytes: in the magic, version, kind, length and crc
/// fields of the header, and at the start, middle and end of the body.
fn bit_positions(len: usize) -> Vec<usize> {
    let body_mid = HEADER_LEN + (len - HEADER_LEN) / 2;
    vec![
        0,
        4 * 8 + 1,
        6 * 8 + 3,
        9 * 8 + 5,
        13 * 8 + 2,
        HEADER_LEN * 8,
        body_mid * 8 + 4,
        len * 8 - 1,
    ]
}

fn flip(bytes: &mut [u8], bit: usize) {
    bytes[bit / 8] ^= 1 << (bit % 8);
}

fn expect_corrupt_at(result: Result<impl std::fmt::Debug, LogError>, seq: Seq, what: &str) {
    match result {
        Err(LogError::Corrupt { seq: found, .. }) if found == seq => {}
        other => panic!("{what}: expected Corrupt at seq {seq}, got {other:?}"),
    }
}

/// Checks one damaged file: `damaged_index` is the index of the damaged event, `damaged` its
/// frame as now stored. Returns false when redb refused to open the file.
fn check_damaged_file(
    path: &Path,
    envelopes: &[Envelope],
    frames: &[(Seq, Vec<u8>)],
    damaged_index: usize,
    damaged: &[u8],
    what: &str,
) -> bool {
    let seq = Seq(damaged_index as u64 + 1);
    let last = Seq(envelopes.len() as u64);
    let log = match RedbLog::open(path) {
        Ok(log) => log,
        Err(_) => return false,
    };
    // The log reports the damaged record, by sequence number.
    expect_corrupt_at(log.read(Seq(1), last, usize::MAX), seq, what);
    let (prefix, error) = log.read_prefix(Seq(1), last, usize::MAX);
    assert_eq!(prefix, envelopes[..damaged_index], "{what}: good prefix");
    expect_corrupt_at(error.map_or(Ok(()), Err), seq, what);
    // Every other event still reads back exactly as written.
    for (i, envelope) in envelopes.iter().enumerate() {
        let one = log.read(envelope.seq, envelope.seq, 1);
        if i == damaged_index {
            expect_corrupt_at(one, seq, what);
        } else {
            assert_eq!(one.as_deref(), Ok(std::slice::from_ref(envelope)), "{what}");
        }
    }
    // The journal opens read-only on the good prefix, names the seq, refuses appends.
    let journal = open_journal(Arc::new(log), 1 << 20);
    match journal.health() {
        Health::ReadOnly { reason } => assert!(
            reason.contains(&format!("seq {seq}")),
            "{what}: reason does not name seq {seq}: {reason}"
        ),
        Health::Writable => panic!("{what}: journal writable over a corrupt log"),
    }
    assert_eq!(journal.open_report().last_seq, Seq(seq.0 - 1), "{what}");
    let prefix_state: Projections = fold(&envelopes[..damaged_index]);
    assert_eq!(
        *journal.view(),
        prefix_state,
        "{what}: view of the good prefix"
    );
    expect_corrupt_at(journal.verify_all(), seq, what);
    let append =
        journal.append_blocking(vec![NewEvent::new(Event::DaemonStopped(DaemonStopped {
            reason: "test".into(),
        }))]);
    assert!(
        matches!(append, Err(LogError::ReadOnly { .. })),
        "{what}: append on a corrupt log: {append:?}"
    );
    journal.close();
    // Nothing was rewritten or dropped: the same frames, the damaged one included, are stored.
    let log = RedbLog::open(path).expect("reopens");
    let stored = log
        .read_frames(Seq(1), Seq(u64::MAX), usize::MAX)
        .expect("raw frames read");
    assert_eq!(stored.len(), frames.len(), "{what}: stored frame count");
    for (i, ((key, bytes), (seq, original))) in stored.iter().zip(frames).enumerate() {
        assert_eq!(key, seq, "{what}");
        let expected: &[u8] = if i == damaged_index {
            damaged
        } else {
            original
        };
        assert_eq!(
            bytes.as_slice(),
            expected,
            "{what}: stored frame {seq} changed"
        );
    }
    true
}

/// Flip single bits (header, crc and body) of every stored frame in a real redb file: each
/// flip is reported as corruption of exactly that event, never accepted.
fn every_bit_flip_in_a_stored_frame_is_caught_naming_its_seq() {
    let log = small_log();
    let envelopes = &as_read(log.envelopes());
    let frames = log.frames();
    let pristine = redb_bytes(&frames);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.redb");
    let (mut trials, mut refused) = (0, 0);
    for (i, (seq, frame)) in frames.iter().enumerate() {
        let offsets = find_all(&pristine, frame);
        assert_eq!(offsets.len(), 1, "frame {seq} stored once in the file");
        for bit in bit_positions(frame.len()) {
            let mut file = pristine.clone();
            flip(&mut file[offsets[0]..], bit);
            let mut damaged = frame.clone();
            flip(&mut damaged, bit);
            std::fs::write(&path, &file).unwrap();
            let what = format!("seq {seq}, bit {bit} of {}", frame.len() * 8);
            trials += 1;
            if !check_damaged_file(&path, envelopes, &frames, i, &damaged, &what) {
                refused += 1;
            }
        }
    }
    println!("{trials} bit flips, {refused} refused by redb, the rest reported as Corrupt");
}

/// After a corrupt log was opened, checked, refused an append and closed, the file is exactly
/// as it was found: a damaged log is evidence, and nothing may touch it.
fn a_corrupt_log_file_is_left_byte_for_byte_as_found() {
    let log = small_log();
    let frames = log.frames();
    let pristine = redb_bytes(&frames);
    let (seq, frame) = &frames[4];
    let offset = find_all(&pristine, frame)[0];
    let mut file = pristine.clone();
    flip(&mut file[offset..], (HEADER_LEN + 3) * 8);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.redb");
    std::fs::write(&path, &file).unwrap();
    {
        let redb = RedbLog::open(&path).expect("opens");
        let journal = open_journal(Arc::new(redb), 1 << 20);
        expect_corrupt_at(journal.verify_all(), *seq, "verify_all");
        assert!(journal.append_blocking(Vec::new()).is_err());
        journal.close();
    }
    let after = std::fs::read(&path).unwrap();
    let changed: Vec<usize> = (0..after.len().min(file.len()))
        .filter(|&i| after[i] != file[i])
        .collect();
    assert!(
        after.len() == file.len() && changed.is_empty(),
        "the corrupt log file was modified: {} → {} bytes, {} bytes differ (first at {:?})",
        file.len(),
        after.len(),
        changed.len(),
        changed.first()
    );
}

/// A log written by the journal in many small transactions, with snapshots: damage behind
/// the snapshot is not seen by opening (only the tail is read) but by `verify_all`, damage in
/// the tail by opening; both name the seq and stop writes.
fn bit_flips_behind_or_after_the_snapshot_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    let source = small_log();
    let written = {
        let journal = open_journal(Arc::new(RedbLog::open(&path).unwrap()), 10);
        let mut written = Vec::new();
        for chunk in source.envelopes().chunks(3) {
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
    let full: Projections = fold(&written);
    let pristine = std::fs::read(&path).unwrap();
    let snapshot_seq = {
        let journal = open_journal(Arc::new(RedbLog::open(&path).unwrap()), 10);
        journal.open_report().snapshot_seq.expect("a snapshot")
    };
    // Opening and closing rewrote redb's bookkeeping; start every trial from the same bytes.
    std::fs::write(&path, &pristine).unwrap();
    let frames = frames_of(&written);
    for (i, (seq, frame)) in frames.iter().enumerate() {
        let offsets = find_all(&pristine, frame);
        assert!(!offsets.is_empty(), "frame {seq} is in the file");
        let bit = (HEADER_LEN + (frame.len() - HEADER_LEN) / 2) * 8 + 1;
        let mut file = pristine.clone();
        // Flip every copy: redb may still hold stale copies of a page in free space.
        for offset in &offsets {
            flip(&mut file[*offset..], bit);
        }
        std::fs::write(&path, &file).unwrap();
        let Ok(redb) = RedbLog::open(&path) else {
            continue;
        };
        let journal = open_journal(Arc::new(redb), 10);
        if *seq <= snapshot_seq {
            assert_eq!(
                journal.health(),
                Health::Writable,
                "seq {seq} is behind the snapshot"
            );
            assert_eq!(*journal.view(), full, "seq {seq}: view from the snapshot");
        } else {
            assert!(
                matches!(journal.health(), Health::ReadOnly { reason } if reason.contains(&format!("seq {seq}"))),
                "seq {seq}: opening reads the tail and must see the damage"
            );
            let prefix: Projections = fold(&written[..i]);
            assert_eq!(
                *journal.view(),
                prefix,
                "seq {seq}: view of the good prefix"
            );
        }
        expect_corrupt_at(
            journal.verify_all(),
            *seq,
            &format!("verify_all, seq {seq}"),
        );
        assert!(matches!(journal.health(), Health::ReadOnly { .. }));
        assert!(matches!(
            journal.append_blocking(vec![NewEvent::new(Event::DaemonStopped(DaemonStopped {
                reason: "x".into()
            }))]),
            Err(LogError::ReadOnly { .. })
        ));
    }
}

/// A file cut short anywhere is refused, or opens and reports corruption or fewer events —
/// never a panic, and never an event that differs from the one written.
fn a_truncated_file_is_refused_or_read_without_changed_events() {
    let log = small_log();
    let envelopes = &as_read(log.envelopes());
    let frames = log.frames();
    let pristine = redb_bytes(&frames);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.redb");
    // Zero bytes is its own test below.
    let mut lengths: Vec<usize> = vec![1, 7, 64, 511, 512, 513];
    lengths.extend((1..=pristine.len() / 4096).flat_map(|page| [page * 4096 - 1, page * 4096]));
    lengths.extend([pristine.len() / 3, pristine.len() / 2, pristine.len() - 1]);
    lengths.sort_unstable();
    lengths.dedup();
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for len in lengths.into_iter().filter(|&l| l < pristine.len()) {
        std::fs::write(&path, &pristine[..len]).unwrap();
        let outcome = std::panic::catch_unwind(|| {
            let redb = match RedbLog::open(&path) {
                Ok(redb) => redb,
                Err(_) => return "refused by RedbLog::open",
            };
            let (prefix, error) = redb.read_prefix(Seq(1), Seq(u64::MAX), usize::MAX);
            assert!(
                prefix.len() <= envelopes.len() && prefix == envelopes[..prefix.len()],
                "cut at {len}: read an event that differs from the one written"
            );
            let journal = match Journal::<Projections>::open(Arc::new(redb), journal_options(8)) {
                Ok(journal) => journal,
                Err(_) => return "refused by Journal::open",
            };
            let visible = journal.last_seq().0 as usize;
            assert!(visible <= envelopes.len(), "cut at {len}");
            assert_eq!(
                *journal.view(),
                fold::<Projections>(&envelopes[..visible]),
                "cut at {len}: view is not a fold of written events"
            );
            match (error, journal.verify_all()) {
                (None, Ok(n)) if n as usize == envelopes.len() => "opened intact",
                (None, Ok(_)) => {
                    println!("cut at {len} bytes opened with {visible} events");
                    "opened with fewer events"
                }
                (_, Err(e)) if e.is_corruption() => "opened, corruption reported",
                _ => "opened, storage error reported",
            }
        });
        match outcome {
            Ok(outcome) => *outcomes.entry(outcome).or_default() += 1,
            Err(_) => panic!("truncating the file to {len} bytes made something panic"),
        }
    }
    println!("truncation outcomes: {outcomes:?}");
    assert!(
        !outcomes.contains_key("opened with fewer events"),
        "a truncated file opened as a shorter, healthy log: events were silently lost"
    );
}

/// A log file emptied to zero bytes (a botched copy or restore, `> events.redb`) is not a
/// new log: taking it for one would forget every VM, image and handle without a word.
fn an_emptied_log_file_is_refused_not_taken_for_a_new_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    write_redb(&path, &small_log().frames()).unwrap();
    std::fs::write(&path, b"").unwrap();
    match RedbLog::open(&path) {
        Err(_) => {}
        Ok(log) => panic!(
            "an emptied log file opened as a new log with {:?} events",
            log.len()
        ),
    }
}

/// Frames with one sequence number left out: every way to read the log names the missing seq.
fn a_missing_sequence_number_is_corruption_naming_it() {
    let log = small_log();
    let frames = log.frames();
    let last = Seq(frames.len() as u64);
    // The last one cannot be told from a shorter log; every other one can.
    for drop in 0..frames.len() - 1 {
        let seq = Seq(drop as u64 + 1);
        let mut holed = frames.clone();
        holed.remove(drop);
        let memory = MemoryLog::from_frames(holed.clone());
        expect_corrupt_at(memory.read(Seq(1), last, usize::MAX), seq, "memory read");
        let journal = open_journal(Arc::new(memory), 1 << 20);
        assert!(
            matches!(journal.health(), Health::ReadOnly { reason } if reason.contains(&format!("seq {seq}"))),
            "missing {seq}: {:?}",
            journal.health()
        );
        expect_corrupt_at(journal.verify_all(), seq, "memory verify_all");
        assert!(journal.append_blocking(Vec::new()).is_err());
    }
    // The same through a real redb file, written with EventLog::commit, for a few positions.
    for drop in [0, 1, frames.len() / 2, frames.len() - 2] {
        let seq = Seq(drop as u64 + 1);
        let mut holed = frames.clone();
        holed.remove(drop);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("holed.redb");
        write_redb(&path, &holed).unwrap();
        let redb = RedbLog::open(&path).unwrap();
        expect_corrupt_at(redb.read(Seq(1), last, usize::MAX), seq, "redb read");
        let journal = open_journal(Arc::new(redb), 1 << 20);
        assert!(matches!(journal.health(), Health::ReadOnly { .. }));
        expect_corrupt_at(journal.verify_all(), seq, "redb verify_all");
    }
}

/// A frame stored twice (under its own key and the next one), or the log shifted by a
/// duplicate: the first key whose frame says another seq is named.
fn a_duplicated_sequence_number_is_corruption_naming_it() {
    let log = small_log();
    let frames = log.frames();
    for dup in 0..frames.len() - 1 {
        let next = Seq(dup as u64 + 2);
        // (a) frame `dup` replaces the next one.
        let mut replaced = frames.clone();
        replaced[dup + 1].1 = frames[dup].1.clone();
        // (b) frame `dup` inserted again, everything after it shifted by one key.
        let mut shifted: Vec<(Seq, Vec<u8>)> = frames[..=dup].to_vec();
        shifted.extend(
            frames[dup..]
                .iter()
                .enumerate()
                .map(|(i, (_, f))| (Seq(dup as u64 + 2 + i as u64), f.clone())),
        );
        for (how, damaged) in [("replaced", replaced), ("shifted", shifted)] {
            let last = Seq(damaged.len() as u64);
            let memory = MemoryLog::from_frames(damaged.clone());
            expect_corrupt_at(memory.read(Seq(1), last, usize::MAX), next, how);
            let journal = open_journal(Arc::new(memory), 1 << 20);
            expect_corrupt_at(journal.verify_all(), next, how);
            assert!(matches!(journal.health(), Health::ReadOnly { .. }), "{how}");
            if dup % 9 == 0 {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("dup.redb");
                write_redb(&path, &damaged).unwrap();
                let redb = RedbLog::open(&path).unwrap();
                let journal = open_journal(Arc::new(redb), 1 << 20);
                assert!(
                    matches!(journal.health(), Health::ReadOnly { reason } if reason.contains(&format!("seq {next}"))),
                    "{how} duplicate of {}: {:?}",
                    dup + 1,
                    journal.health()
                );
                expect_corrupt_at(journal.verify_all(), next, how);
            }
        }
    }
}

/// A frame with a valid crc and an event kind this build does not know (a newer banger wrote
/// it): opening fails with `UnknownKind`, not `Corrupt`, wherever the frame sits.
fn an_unknown_event_kind_refuses_to_open() {
    let log = small_log();
    let frames = log.frames();
    for index in [0, frames.len() / 2, frames.len() - 1] {
        let seq = Seq(index as u64 + 1);
        let mut forged = frames.clone();
        let frame = &mut forged[index].1;
        frame[6..8].copy_from_slice(&999u16.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&frame[..12]);
        crc.update(&frame[HEADER_LEN..]);
        let crc = crc.finalize();
        frame[12..16].copy_from_slice(&crc.to_le_bytes());

        let memory: Arc<dyn EventLog> = Arc::new(MemoryLog::from_frames(forged.clone()));
        let result = Journal::<Projections>::open(memory, journal_options(1 << 20)).map(|_| ());
        assert_eq!(
            result,
            Err(LogError::UnknownKind { seq, kind: 999 }),
            "memory log, forged seq {seq}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("newer.redb");
        write_redb(&path, &forged).unwrap();
        let redb: Arc<dyn EventLog> = Arc::new(RedbLog::open(&path).unwrap());
        let result = Journal::<Projections>::open(redb, journal_options(1 << 20)).map(|_| ());
        assert_eq!(
            result,
            Err(LogError::UnknownKind { seq, kind: 999 }),
            "redb log, forged seq {seq}"
        );
        let message = LogError::UnknownKind { seq, kind: 999 }.to_string();
        assert!(
            message.contains("999") && message.contains("newer"),
            "{message}"
        );
    }
}

/// Writes `envelopes` through a journal with snapshots every `every` events; returns the path's
/// written envelopes and the full-replay state.
fn journal_written(path: &Path, every: u64) -> (Vec<Envelope>, Projections) {
    let source = stories::all()
        .into_iter()
        .find(|s| s.name == "vm-lifecycle")
        .expect("story")
        .log;
    let journal = open_journal(Arc::new(RedbLog::open(path).unwrap()), every);
    let mut written = Vec::new();
    for chunk in source.envelopes().chunks(7) {
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
    let state = fold(&written);
    (written, state)
}

/// A snapshot with a bad checksum (in redb's record or in the projection's own), in another
/// format, undecodable, or claiming to be past the end of the log is ignored: opening replays
/// the whole log and gets exactly the full-replay state.
fn damaged_or_foreign_snapshots_are_ignored_and_the_log_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap.redb");
    let (written, full) = journal_written(&path, 16);
    let last = Seq(written.len() as u64);
    let snapshot_seq = {
        let journal = open_journal(Arc::new(RedbLog::open(&path).unwrap()), 16);
        assert_eq!(*journal.view(), full);
        journal.open_report().snapshot_seq.expect("snapshot used")
    };
    let pristine = std::fs::read(&path).unwrap();
    let head: Projections = fold(&written[..snapshot_seq.0 as usize]);
    let snapshot = head.encode_snapshot();
    let offsets = find_all(&pristine, &snapshot);
    assert!(!offsets.is_empty(), "the snapshot bytes are in the file");

    let reopen_ignores_snapshot = |file: &[u8], what: &str| {
        std::fs::write(&path, file).unwrap();
        let journal = open_journal(Arc::new(RedbLog::open(&path).unwrap()), 1 << 20);
        assert_eq!(
            journal.open_report().snapshot_seq,
            None,
            "{what}: snapshot was used"
        );
        assert_eq!(journal.open_report().replayed, last.0, "{what}");
        assert_eq!(*journal.view(), full, "{what}: not the full replay");
        assert_eq!(journal.health(), Health::Writable, "{what}");
    };

    // Damage inside the projection bytes (covered by both crcs), in redb's stored crc
    // (the 4 bytes before them) and in the stored format (the 4 before that).
    let mid = snapshot.len() as isize / 2;
    for (what, delta, bit) in [
        ("snapshot body", mid, 3),
        ("snapshot magic", 0, 0),
        ("stored crc", -3, 5),
        ("stored format", -8, 0),
    ] {
        let mut file = pristine.clone();
        for offset in &offsets {
            let at = offset.checked_add_signed(delta).expect("inside the file");
            flip(&mut file[at..], bit);
        }
        reopen_ignores_snapshot(&file, what);
    }

    // A snapshot written in another format, one that does not decode, one past the end.
    for (what, record) in [
        (
            "another format",
            SnapshotRecord {
                seq: last,
                format: <Projections as Fold>::SNAPSHOT_FORMAT + 1,
                bytes: full.encode_snapshot(),
            },
        ),
        (
            "undecodable bytes",
            SnapshotRecord {
                seq: last,
                format: <Projections as Fold>::SNAPSHOT_FORMAT,
                bytes: b"BPRJ not a projection".to_vec(),
            },
        ),
        (
            "past the end of the log",
            SnapshotRecord {
                seq: Seq(last.0 + 5),
                format: <Projections as Fold>::SNAPSHOT_FORMAT,
                bytes: full.encode_snapshot(),
            },
        ),
    ] {
        std::fs::write(&path, &pristine).unwrap();
        {
            let redb = RedbLog::open(&path).unwrap();
            redb.commit(&[], Some(&record)).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        reopen_ignores_snapshot(&bytes, what);
    }
}

/// A file whose writer was killed, with damage in its latest commit: redb's repair on open
/// would fall back to the commit before (losing the latest commit's events, acknowledged
/// ones included, without a word). Opening fails instead, naming the way on (`banger events
/// repair`), and the file keeps every byte.
fn a_damaged_latest_commit_is_not_rolled_back_silently() {
    let frames = small_log().frames();
    let dir = tempfile::tempdir().unwrap();
    let half = frames.len() / 2;
    let found = crate::repair::unclean_with_flip(dir.path(), &frames, half, &frames[half + 1].1);
    let path = dir.path().join("events.redb");
    std::fs::write(&path, &found).unwrap();
    match RedbLog::open(&path) {
        Err(LogError::Storage(message)) => {
            assert!(
                message.contains("latest commit") && message.contains("banger events repair"),
                "{message}"
            )
        }
        Err(other) => panic!("opened with the wrong error: {other:?}"),
        Ok(log) => panic!(
            "a damaged latest commit opened, with {:?} events",
            log.last_seq()
        ),
    }
    let after = std::fs::read(&path).unwrap();
    let changed = after.iter().zip(&found).filter(|(a, b)| a != b).count();
    assert!(
        after.len() == found.len() && changed == 0,
        "opening the damaged file modified it: {} → {} bytes, {changed} bytes differ",
        found.len(),
        after.len()
    );
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync every_bit_flip_in_a_stored_frame_is_caught_naming_its_seq,
        sync a_corrupt_log_file_is_left_byte_for_byte_as_found,
        sync bit_flips_behind_or_after_the_snapshot_are_caught,
        sync a_truncated_file_is_refused_or_read_without_changed_events,
        sync an_emptied_log_file_is_refused_not_taken_for_a_new_log,
        sync a_missing_sequence_number_is_corruption_naming_it,
        sync a_duplicated_sequence_number_is_corruption_naming_it,
        sync an_unknown_event_kind_refuses_to_open,
        sync damaged_or_foreign_snapshots_are_ignored_and_the_log_replayed,
        sync a_damaged_latest_commit_is_not_rolled_back_silently,
    ]
}
