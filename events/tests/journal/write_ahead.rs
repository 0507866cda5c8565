//! The write-ahead file in front of the redb log, on real files and real processes: events
//! durable only there survive a SIGKILL of their writer and reach redb on reopen; a torn last
//! record is ignored, a damaged one in the middle is corruption; older cycles are never
//! replayed; a log opened without writing reads the file's events in place; checkpoints make
//! redb hold everything by itself.
//!
//! A "killed" state is made in-process the way `replay-tests` makes a killed writer's file:
//! the bytes of the log and of its write-ahead file are copied while the writer still has
//! them open, which is what they are on disk when its process dies (SIGKILL leaves the page
//! cache as it was). The SIGKILL test does it for real, with a child process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use banger_events::repair::{self, Diagnosis};
use banger_events::*;

use super::{GatedLog, Tally, event, options};

fn frames(first: u64, count: u64) -> Vec<(Seq, Vec<u8>)> {
    (first..first + count)
        .map(|seq| {
            let envelope = Envelope {
                seq: Seq(seq),
                event_id: EventId(seq as u128),
                op_id: None,
                cause: None,
                at_unix_ms: 1,
                schema_version: SCHEMA_VERSION,
                event: event(seq).event,
            };
            (Seq(seq), frame::encode(&envelope))
        })
        .collect()
}

fn all_frames(log: &dyn EventLog) -> Vec<(Seq, Vec<u8>)> {
    log.read_frames(Seq(1), Seq(u64::MAX), usize::MAX).unwrap()
}

/// The two files of a log, as bytes.
#[derive(Clone)]
struct Files {
    log: Vec<u8>,
    write_ahead: Vec<u8>,
}

impl Files {
    fn write_to(&self, dir: &Path) -> PathBuf {
        let path = dir.join("events.redb");
        std::fs::write(&path, &self.log).unwrap();
        std::fs::write(wal::path_for(&path), &self.write_ahead).unwrap();
        path
    }

    fn read_from(path: &Path) -> Files {
        Files {
            log: std::fs::read(path).unwrap(),
            write_ahead: std::fs::read(wal::path_for(path)).unwrap(),
        }
    }
}

/// The files of a log whose writer committed `batches` (and checkpointed after the batches
/// numbered in `checkpoint_after`), copied while it still had them open.
fn killed_after(batches: &[(u64, u64)], checkpoint_after: &[usize]) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.redb");
    let log = RedbLog::open(&path).unwrap();
    for (index, (first, count)) in batches.iter().enumerate() {
        log.commit(&frames(*first, *count), None).unwrap();
        if checkpoint_after.contains(&index) {
            log.checkpoint().unwrap();
        }
    }
    let files = Files::read_from(&path);
    drop(log);
    files
}

/// Offset of the record holding `seq` in a write-ahead file written one record per block.
fn block_of(record: u64) -> usize {
    (wal::BLOCK * record) as usize
}

/// Opens the log alone, without its write-ahead file (a copy in another directory): what
/// redb holds by itself.
fn redb_alone(log_bytes: &[u8]) -> Seq {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alone.redb");
    std::fs::write(&path, log_bytes).unwrap();
    let log = RedbLog::open(&path).unwrap();
    log.last_seq().unwrap()
}

#[test]
fn events_only_in_the_write_ahead_file_are_replayed_into_redb_on_open() {
    let files = killed_after(&[(1, 3), (4, 1), (5, 2)], &[]);
    assert_eq!(
        redb_alone(&files.log),
        Seq(0),
        "the test needs events that only the write-ahead file holds"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = files.write_to(dir.path());
    let log = RedbLog::open(&path).unwrap();
    assert_eq!(log.read_only_reason(), None);
    assert_eq!(log.replayed_from_write_ahead(), 6);
    assert_eq!(all_frames(&log), frames(1, 6));
    drop(log);
    // Now redb holds them durably by itself.
    assert_eq!(redb_alone(&std::fs::read(&path).unwrap()), Seq(6));
    let journal =
        Journal::<Tally>::open(Arc::new(RedbLog::open(&path).unwrap()), options()).unwrap();
    assert_eq!(journal.health(), Health::Writable);
    assert_eq!(journal.view().count, 6);
    assert_eq!(
        journal.append_blocking(vec![event(7)]).unwrap()[0].seq,
        Seq(7)
    );
}

#[test]
fn a_torn_last_record_is_ignored() {
    let mut files = killed_after(&[(1, 2), (3, 1), (4, 3)], &[]);
    // The third record, the last written, torn: its payload half old.
    let torn = block_of(3) + 40;
    files.write_ahead[torn..torn + 8].copy_from_slice(&[0; 8]);
    let dir = tempfile::tempdir().unwrap();
    let path = files.write_to(dir.path());
    let log = RedbLog::open(&path).unwrap();
    assert_eq!(log.read_only_reason(), None, "a torn tail is not damage");
    assert_eq!(all_frames(&log), frames(1, 3));
    let journal = Journal::<Tally>::open(Arc::new(log), options()).unwrap();
    assert_eq!(journal.health(), Health::Writable);
    assert_eq!(
        journal.append_blocking(vec![event(9)]).unwrap()[0].seq,
        Seq(4),
        "the torn record's seqs were never acknowledged: they are given out again"
    );
}

#[test]
fn a_damaged_record_in_the_middle_is_corruption_and_nothing_is_changed() {
    let mut files = killed_after(&[(1, 2), (3, 1), (4, 3), (7, 1)], &[]);
    // The second record (seq 3) damaged; the ones after it are intact.
    files.write_ahead[block_of(2) + 40] ^= 0x20;
    let dir = tempfile::tempdir().unwrap();
    let path = files.write_to(dir.path());
    let log = RedbLog::open(&path).unwrap();
    let reason = log
        .read_only_reason()
        .expect("a damaged record is corruption: the log opens read-only");
    assert!(
        reason.contains("seq 3") && reason.contains("write-ahead"),
        "{reason}"
    );
    assert_eq!(
        log.last_seq().unwrap(),
        Seq(7),
        "the intact records after it count"
    );
    let journal = Journal::<Tally>::open(Arc::new(log), options()).unwrap();
    let Health::ReadOnly { reason } = journal.health() else {
        panic!("the journal must be read-only")
    };
    assert!(reason.contains("seq 3"), "{reason}");
    assert_eq!(journal.view().count, 2, "everything before the damage");
    assert!(matches!(
        journal.verify_all(),
        Err(LogError::Corrupt { seq: Seq(3), .. })
    ));
    drop(journal);
    let now = Files::read_from(&path);
    assert!(
        now.write_ahead == files.write_ahead,
        "the damaged write-ahead file was changed"
    );
    // `banger events repair` sees the same damage.
    match repair::diagnose(&path).unwrap() {
        Diagnosis::Damaged(damage) => {
            assert_eq!(damage.first_lost_seq, Seq(3));
            assert_eq!(damage.last_stored_seq, Some(Seq(7)));
        }
        other => panic!("diagnosed {other:?}"),
    }
}

#[test]
fn a_repair_keeps_the_write_ahead_file_with_the_damaged_log() {
    let mut files = killed_after(&[(1, 2), (3, 1), (4, 3), (7, 1)], &[0]);
    files.write_ahead[block_of(2) + 40] ^= 0x20;
    let dir = tempfile::tempdir().unwrap();
    let path = files.write_to(dir.path());
    let backup = dir.path().join("events.redb.damaged-test");
    let outcome = repair::repair(
        &path,
        &backup,
        repair::RepairOptions {
            now_unix_ms: 5,
            id_seed: Some(1),
        },
    )
    .unwrap();
    let repair::Outcome::Repaired(repaired) = outcome else {
        panic!("expected a repair, got {outcome:?}")
    };
    assert_eq!(repaired.damage.first_lost_seq, Seq(4));
    let backup_write_ahead = wal::path_for(&backup);
    assert_eq!(
        repaired.backup_write_ahead_path.as_deref(),
        Some(backup_write_ahead.as_path())
    );
    assert!(
        std::fs::read(&backup).unwrap() == files.log,
        "the backup is the damaged log"
    );
    assert!(
        std::fs::read(&backup_write_ahead).unwrap() == files.write_ahead,
        "and its write-ahead file"
    );
    assert!(
        !wal::path_for(&path).exists(),
        "the damaged log's write-ahead file does not stay beside the repaired log"
    );
    let log = RedbLog::open(&path).unwrap();
    assert_eq!(log.read_only_reason(), None);
    let stored = all_frames(&log);
    assert_eq!(
        stored[..3],
        frames(1, 3),
        "the intact prefix, frame for frame"
    );
    assert_eq!(stored.len(), 4, "then the LogRepaired event");
}

#[test]
fn records_of_an_older_cycle_are_not_replayed() {
    // Ten records, a checkpoint, then two more: they overwrite blocks 1 and 2, and blocks
    // 3..=10 still hold seqs 3..=10 of the cycle before.
    let batches: Vec<(u64, u64)> = (1..=12).map(|seq| (seq, 1)).collect();
    let files = killed_after(&batches, &[9]);
    assert_eq!(redb_alone(&files.log), Seq(10));
    let dir = tempfile::tempdir().unwrap();
    let path = files.write_to(dir.path());
    let log = RedbLog::open(&path).unwrap();
    assert_eq!(log.read_only_reason(), None);
    assert_eq!(log.replayed_from_write_ahead(), 2, "only seqs 11 and 12");
    assert_eq!(all_frames(&log), frames(1, 12));
    drop(log);
    // The same with the new cycle's last record torn: behind it, stale records only.
    let mut torn = files.clone();
    torn.write_ahead[block_of(2) + 40] ^= 0x20;
    let dir = tempfile::tempdir().unwrap();
    let path = torn.write_to(dir.path());
    let log = RedbLog::open(&path).unwrap();
    assert_eq!(
        log.read_only_reason(),
        None,
        "a torn tail before stale records"
    );
    assert_eq!(all_frames(&log), frames(1, 11));
}

#[test]
fn a_log_opened_without_writing_reads_the_write_ahead_files_events_in_place() {
    // A log file closed cleanly at seq 3, and a write-ahead file holding 4..=6 after it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    {
        let log = RedbLog::open(&path).unwrap();
        log.commit(&frames(1, 3), None).unwrap();
    }
    let clean_log = std::fs::read(&path).unwrap();
    let write_ahead = {
        let log = RedbLog::open(&path).unwrap();
        log.commit(&frames(4, 2), None).unwrap();
        log.commit(&frames(6, 1), None).unwrap();
        let bytes = std::fs::read(wal::path_for(&path)).unwrap();
        drop(log);
        bytes
    };
    let files = Files {
        log: clean_log,
        write_ahead,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = files.write_to(dir.path());
    let log = RedbLog::open_untouched(&path)
        .unwrap()
        .expect("a cleanly closed file opens without redb's repair");
    assert_eq!(log.last_seq().unwrap(), Seq(6));
    assert_eq!(log.len().unwrap(), 6);
    assert_eq!(all_frames(&log), frames(1, 6));
    assert_eq!(log.read(Seq(2), Seq(5), 10).unwrap().len(), 4);
    assert!(log.commit(&frames(7, 1), None).is_err());
    drop(log);
    assert_eq!(
        repair::diagnose(&path).unwrap(),
        Diagnosis::Intact { events: 6 }
    );
    let now = Files::read_from(&path);
    assert!(
        now.log == files.log && now.write_ahead == files.write_ahead,
        "reading changed the files"
    );
}

#[test]
fn a_checkpoint_makes_redb_hold_everything_and_restarts_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let log = RedbLog::open(&path).unwrap();
    assert_eq!(log.checkpoint_state(), CheckpointState::Clean);
    log.commit(&frames(1, 2), None).unwrap();
    log.commit(&frames(3, 1), None).unwrap();
    assert_eq!(log.checkpoint_state(), CheckpointState::Pending);
    assert_eq!(redb_alone(&std::fs::read(&path).unwrap()), Seq(0));
    log.checkpoint().unwrap();
    assert_eq!(log.checkpoint_state(), CheckpointState::Clean);
    assert_eq!(
        redb_alone(&std::fs::read(&path).unwrap()),
        Seq(3),
        "after a checkpoint redb holds every event by itself"
    );
    log.commit(&frames(4, 1), None).unwrap();
    let bytes = std::fs::read(wal::path_for(&path)).unwrap();
    let first_seq_at = |block: usize| {
        u64::from_le_bytes(
            bytes[block_of(block as u64) + 16..][..8]
                .try_into()
                .unwrap(),
        )
    };
    assert_eq!(first_seq_at(1), 4, "the next record starts the file over");
    assert_eq!(first_seq_at(2), 3, "behind it, the older cycle");
    assert_eq!(
        bytes.len() as u64,
        RedbOptions::default().write_ahead_bytes,
        "the file keeps its allocated size"
    );
}

#[test]
fn a_half_full_write_ahead_file_asks_for_a_checkpoint_and_a_full_one_commits_directly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let log = RedbLog::open_with(
        &path,
        RedbOptions {
            write_ahead_bytes: 17 * wal::BLOCK,
            ..Default::default()
        },
    )
    .unwrap();
    for seq in 1..=7 {
        log.commit(&frames(seq, 1), None).unwrap();
        assert_eq!(log.checkpoint_state(), CheckpointState::Pending, "{seq}");
    }
    log.commit(&frames(8, 1), None).unwrap();
    assert_eq!(log.checkpoint_state(), CheckpointState::Due);
    // Nobody checkpoints: once the file has no room, a commit is durable in redb itself.
    for seq in 9..=20 {
        log.commit(&frames(seq, 1), None).unwrap();
    }
    assert!(redb_alone(&std::fs::read(&path).unwrap()) >= Seq(16));
    assert_eq!(all_frames(&log), frames(1, 20));
    // A batch too big for a quarter of the file goes to redb directly.
    let big: Vec<_> = frames(21, 500);
    log.commit(&big, None).unwrap();
    assert_eq!(log.checkpoint_state(), CheckpointState::Clean);
    assert_eq!(redb_alone(&std::fs::read(&path).unwrap()), Seq(520));
}

#[test]
fn the_journal_checkpoints_when_idle_and_when_closing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let idle = JournalOptions {
        checkpoint_idle_ms: 20,
        ..options()
    };
    let log = Arc::new(GatedLog::new(RedbLog::open(&path).unwrap()));
    let journal = Journal::<Tally>::open(log.clone(), idle).unwrap();
    for n in 0..5 {
        journal.append_blocking(vec![event(n)]).unwrap();
    }
    log.wait_for_checkpoints(1);
    assert_eq!(
        redb_alone(&std::fs::read(&path).unwrap()),
        Seq(5),
        "after the idle checkpoint redb holds every event by itself"
    );
    journal.close();

    let path = dir.path().join("closing.redb");
    let never_idle = JournalOptions {
        checkpoint_idle_ms: 3_600_000,
        ..options()
    };
    let journal =
        Journal::<Tally>::open(Arc::new(RedbLog::open(&path).unwrap()), never_idle).unwrap();
    for n in 0..5 {
        journal.append_blocking(vec![event(n)]).unwrap();
    }
    assert_eq!(redb_alone(&std::fs::read(&path).unwrap()), Seq(0));
    journal.close();
    assert_eq!(redb_alone(&std::fs::read(&path).unwrap()), Seq(5));
}

#[test]
fn the_write_ahead_file_has_the_logs_permissions_and_is_preallocated() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    drop(RedbLog::open(&path).unwrap());
    std::fs::remove_file(wal::path_for(&path)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    drop(RedbLog::open(&path).unwrap());
    let meta = std::fs::metadata(wal::path_for(&path)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), RedbOptions::default().write_ahead_bytes);
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 >= meta.len(),
        "allocated with real zeros, not a sparse file"
    );
}

#[test]
fn a_write_ahead_file_of_another_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    drop(RedbLog::open(&path).unwrap());
    // The log moved away without its write-ahead file: no new log is started beside it.
    std::fs::rename(&path, dir.path().join("moved.redb")).unwrap();
    match RedbLog::open(&path) {
        Err(error @ LogError::ForeignWriteAhead { .. }) => {
            assert!(error.to_string().contains("move"), "{error}")
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a new log was started beside another log's write-ahead file"),
    }
    assert!(!path.exists(), "no log was created");
    // Another log's file beside this one is not replayed into it.
    drop(RedbLog::open(dir.path().join("other.redb")).unwrap());
    std::fs::rename(dir.path().join("moved.redb"), &path).unwrap();
    std::fs::rename(
        wal::path_for(&dir.path().join("other.redb")),
        wal::path_for(&path),
    )
    .unwrap();
    let before = Files::read_from(&path);
    assert!(matches!(
        RedbLog::open(&path),
        Err(LogError::ForeignWriteAhead { .. })
    ));
    assert!(matches!(
        RedbLog::open_untouched(&path),
        Err(LogError::ForeignWriteAhead { .. })
    ));
    let after = Files::read_from(&path);
    assert!(after.write_ahead == before.write_ahead);
}

#[test]
fn without_a_write_ahead_file_each_commit_is_durable_in_redb() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let log = RedbLog::open_with(
        &path,
        RedbOptions {
            write_ahead: false,
            ..Default::default()
        },
    )
    .unwrap();
    log.commit(&frames(1, 2), None).unwrap();
    assert_eq!(log.checkpoint_state(), CheckpointState::Clean);
    assert_eq!(redb_alone(&std::fs::read(&path).unwrap()), Seq(2));
    assert!(!wal::path_for(&path).exists());
}

/// The child of [`acknowledged_events_survive_a_sigkill_of_their_writer`]: appends from four
/// threads (group commit) until seq 300, printing every acknowledged seq, then says "done" and
/// waits to be killed, with no checkpoint made.
#[test]
#[ignore = "a helper process of acknowledged_events_survive_a_sigkill_of_their_writer, not a test"]
fn write_ahead_child_writer() {
    let Ok(path) = std::env::var("BANGER_WAL_TEST_LOG") else {
        return;
    };
    let options = JournalOptions {
        checkpoint_idle_ms: 3_600_000,
        ..options()
    };
    let journal =
        Arc::new(Journal::<Tally>::open(Arc::new(RedbLog::open(&path).unwrap()), options).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                for n in 0.. {
                    let seq = journal
                        .append_blocking(vec![event(w * 1_000_000 + n)])
                        .unwrap()[0]
                        .seq;
                    println!("acked {seq}");
                    if seq >= Seq(300) {
                        break;
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    println!("done");
    loop {
        std::thread::park();
    }
}

/// SIGKILLs and reaps its child when dropped, so that a failing test leaves no process behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_events_survive_a_sigkill_of_their_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "write_ahead::write_ahead_child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BANGER_WAL_TEST_LOG", &path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut acked = Vec::new();
    for line in BufReader::new(child.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(seq) = line.strip_prefix("acked ") {
            acked.push(seq.parse::<u64>().unwrap());
        }
        if line == "done" {
            break;
        }
    }
    assert!(
        acked.len() >= 300,
        "the child writer stopped early: {acked:?}"
    );
    drop(child);
    let highest = *acked.iter().max().unwrap();
    let files = Files::read_from(&path);
    assert!(
        redb_alone(&files.log) < Seq(highest),
        "the test needs acknowledged events that only the write-ahead file holds"
    );
    // Read without writing (through a copy, as `banger events repair` does): all there.
    match repair::diagnose(&path).unwrap() {
        Diagnosis::Intact { events } => assert!(events >= highest, "{events} < {highest}"),
        other => panic!("diagnosed {other:?}"),
    }
    let log = RedbLog::open(&path).unwrap();
    assert!(log.replayed_from_write_ahead() > 0);
    let last = log.last_seq().unwrap();
    assert!(
        last >= Seq(highest),
        "acknowledged up to {highest}, reopened at {last}"
    );
    let journal = Journal::<Tally>::open(Arc::new(log), options()).unwrap();
    assert_eq!(journal.health(), Health::Writable);
    assert_eq!(journal.verify_all(), Ok(last.0));
    let read = journal.read(Seq(1), last, usize::MAX).unwrap();
    for seq in &acked {
        assert_eq!(read[(*seq - 1) as usize].seq, Seq(*seq));
    }
    drop(journal);
    assert!(
        redb_alone(&std::fs::read(&path).unwrap()) >= Seq(highest),
        "after reopening, redb holds them by itself"
    );
}

/// Commits wait in memory (the tail) until a checkpoint moves them into redb: readers racing
/// the checkpoints must find every event in one place or the other, never in neither.
#[test]
fn readers_never_miss_an_event_while_checkpoints_move_the_tail_into_redb() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(RedbLog::open(dir.path().join("events.redb")).unwrap());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (log, done) = (log.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let last = log.last_seq().unwrap();
                    let stored = all_frames(log.as_ref());
                    assert!(stored.len() as u64 >= last.0, "{} < {last}", stored.len());
                    for (index, (seq, _)) in stored.iter().enumerate() {
                        assert_eq!(seq.0, index as u64 + 1, "a gap in what was read");
                    }
                    assert!(log.len().unwrap() >= last.0);
                    assert_eq!(
                        log.read(Seq(1), last, usize::MAX).unwrap().len() as u64,
                        last.0
                    );
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for seq in 1..=400 {
        log.commit(&frames(seq, 1), None).unwrap();
        if seq % 7 == 0 {
            log.checkpoint().unwrap();
        }
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(all_frames(log.as_ref()), frames(1, 400));
}

/// A projection snapshot committed with a batch waits in the tail with it: readable at once,
/// in redb after the checkpoint.
#[test]
fn a_snapshot_in_the_tail_is_read_back_and_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let log = RedbLog::open(&path).unwrap();
    let snapshot = SnapshotRecord {
        seq: Seq(2),
        format: 1,
        bytes: b"state".to_vec(),
    };
    log.commit(&frames(1, 2), None).unwrap();
    log.commit(&frames(3, 1), Some(&snapshot)).unwrap();
    assert_eq!(log.latest_snapshot().unwrap(), Some(snapshot.clone()));
    log.checkpoint().unwrap();
    assert_eq!(log.latest_snapshot().unwrap(), Some(snapshot.clone()));
    drop(log);
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("alone.redb");
    std::fs::copy(&path, &alone).unwrap();
    assert_eq!(
        RedbLog::open(&alone).unwrap().latest_snapshot().unwrap(),
        Some(snapshot),
        "stored in redb itself"
    );
}
