//! The journal over real redb files and over the in-memory log: ordering, durability, group
//! commit, subscriptions, snapshots, corruption and the errors users meet.

mod conditional;
mod fold_after_commit;
mod gated;
mod queue;
mod subscriptions;
mod write_ahead;

use std::collections::HashSet;
use std::sync::Arc;

use banger_events::*;
use gated::GatedLog;

/// A fold that remembers enough to compare states: how many events, the last seq, and a
/// running hash of every event's kind and seq.
#[derive(Default, Debug, Clone, PartialEq, bincode::Encode, bincode::Decode)]
struct Tally {
    count: u64,
    last: u64,
    hash: u64,
}

impl Fold for Tally {
    const SNAPSHOT_FORMAT: u32 = 1;

    fn apply(&mut self, envelope: &Envelope) {
        self.count += 1;
        self.last = envelope.seq.0;
        self.hash = self.hash.rotate_left(5) ^ (envelope.seq.0 * 31 + envelope.event.kind() as u64);
    }

    fn encode_snapshot(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, bincode::config::standard()).expect("encode")
    }

    fn decode_snapshot(bytes: &[u8]) -> Option<Self> {
        bincode::decode_from_slice(bytes, bincode::config::standard())
            .ok()
            .map(|(tally, _)| tally)
    }
}

fn event(n: u64) -> NewEvent {
    NewEvent::new(Event::KernelRemoved(KernelRemoved {
        name: format!("k{n}"),
    }))
}

fn redb_journal(path: &std::path::Path, options: JournalOptions) -> Journal<Tally> {
    let log = RedbLog::open(path).expect("open redb log");
    Journal::open(Arc::new(log), options).expect("open journal")
}

/// Polls a future once, without a runtime: enough to queue an append (a queue with room takes
/// it at the first poll) and to see that it is still waiting.
fn poll_once<F: Future + ?Sized>(future: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
    future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

fn options() -> JournalOptions {
    JournalOptions {
        clock: Arc::new(|| 1_700_000_000_000),
        id_seed: Some(1),
        ..Default::default()
    }
}

#[test]
fn appends_are_gapless_durable_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let appended = {
        let journal = redb_journal(&path, options());
        let mut all = Vec::new();
        for n in 0..5 {
            all.extend(
                journal
                    .append_blocking(vec![event(n), event(n + 100)])
                    .unwrap(),
            );
        }
        assert_eq!(journal.last_seq(), Seq(10));
        assert_eq!(journal.view().count, 10);
        all
    };
    let seqs: Vec<u64> = appended.iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    let journal = redb_journal(&path, options());
    assert_eq!(
        journal.read(Seq(1), Seq(10), 100).unwrap(),
        appended,
        "what was acknowledged is what is read back"
    );
    assert_eq!(journal.view().count, 10);
    let more = journal.append_blocking(vec![event(7)]).unwrap();
    assert_eq!(more[0].seq, Seq(11));
}

#[test]
fn op_id_and_cause_are_kept() {
    let journal: Journal<Tally> = Journal::open(Arc::new(MemoryLog::new()), options()).unwrap();
    let op = OpId(0xfeed);
    let first = journal
        .append_blocking(vec![NewEvent::in_op(op, event(1).event)])
        .unwrap();
    let second = journal
        .append_blocking(vec![
            NewEvent::in_op(op, event(2).event).caused_by(first[0].seq),
        ])
        .unwrap();
    assert_eq!(second[0].op_id, Some(op));
    assert_eq!(second[0].cause, Some(Seq(1)));
    assert_eq!(second[0].at_unix_ms, 1_700_000_000_000);
    assert_ne!(first[0].event_id, second[0].event_id);
}

#[test]
fn concurrent_writers_share_commits_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let log = Arc::new(GatedLog::new(RedbLog::open(&path).unwrap()));
    let journal = Arc::new(Journal::<Tally>::open(log.clone(), options()).unwrap());
    let writers = 16;
    let per_writer = 50;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                (0..per_writer)
                    .map(|n| {
                        journal
                            .append_blocking(vec![event(w * 1000 + n)])
                            .unwrap()
                            .remove(0)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acknowledged: Vec<Envelope> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let total = writers * per_writer;
    assert_eq!(journal.last_seq(), Seq(total));
    let seqs: HashSet<u64> = acknowledged.iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs.len() as u64, total, "every append got its own seq");
    let stored = journal.read(Seq(1), Seq(total), usize::MAX).unwrap();
    for envelope in &acknowledged {
        assert_eq!(&stored[(envelope.seq.0 - 1) as usize], envelope);
    }
    let commits = log.commits();
    assert!(
        commits <= total as usize,
        "at most one commit per event ({commits} commits)"
    );
    println!("{total} events in {commits} commits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_catches_up_then_follows_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(redb_journal(&dir.path().join("events.redb"), options()));
    for n in 0..300 {
        journal.append(vec![event(n)]).await.unwrap();
    }
    // Subscribe from the middle while writers keep appending: the switch from catch-up to
    // live must neither skip nor repeat.
    let mut from_middle = journal.subscribe(Seq(150));
    let mut from_start = journal.subscribe(Seq::ZERO);
    let writer = {
        let journal = journal.clone();
        tokio::spawn(async move {
            for n in 0..500 {
                journal.append(vec![event(n), event(n + 1)]).await.unwrap();
            }
        })
    };
    for expected in 151..=1300 {
        let envelope = from_middle.next().await.unwrap();
        assert_eq!(envelope.seq, Seq(expected));
    }
    for expected in 1..=1300 {
        assert_eq!(from_start.next().await.unwrap().seq, Seq(expected));
    }
    writer.await.unwrap();
    assert_eq!(journal.last_seq(), Seq(1300));
}

#[tokio::test]
async fn subscription_ends_when_the_journal_closes() {
    let journal: Journal<Tally> = Journal::open(Arc::new(MemoryLog::new()), options()).unwrap();
    journal.append(vec![event(1)]).await.unwrap();
    let mut subscription = journal.subscribe(Seq::ZERO);
    assert_eq!(subscription.next().await.unwrap().seq, Seq(1));
    journal.close();
    assert_eq!(subscription.next().await, Err(LogError::Closed));
}

#[test]
fn snapshots_make_reopening_replay_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let options = JournalOptions {
        snapshot_every_events: 100,
        ..options()
    };
    let before = {
        let journal = redb_journal(&path, options.clone());
        for n in 0..1050 {
            journal.append_blocking(vec![event(n)]).unwrap();
        }
        journal.view().clone()
    };
    let journal = redb_journal(&path, options);
    let report = journal.open_report().clone();
    assert_eq!(report.last_seq, Seq(1050));
    let snapshot = report.snapshot_seq.expect("a snapshot was written");
    assert!(
        report.replayed < 100,
        "replayed {} events after snapshot {snapshot}",
        report.replayed
    );
    assert_eq!(
        *journal.view(),
        before,
        "snapshot + tail equals the state before closing"
    );
    drop(journal);
    let full: Tally = rebuild(&RedbLog::open(&path).unwrap()).unwrap();
    assert_eq!(full, before, "full replay equals snapshot + tail");
}

#[test]
fn a_snapshot_of_another_format_is_ignored() {
    let log = Arc::new(MemoryLog::new());
    {
        let journal: Journal<Tally> = Journal::open(
            log.clone(),
            JournalOptions {
                snapshot_every_events: 3,
                ..options()
            },
        )
        .unwrap();
        for n in 0..10 {
            journal.append_blocking(vec![event(n)]).unwrap();
        }
    }
    let mut snapshot = log.latest_snapshot().unwrap().unwrap();
    snapshot.format = 99;
    log.commit(&[], Some(&snapshot)).unwrap();
    let journal: Journal<Tally> = Journal::open(log, options()).unwrap();
    assert_eq!(journal.open_report().snapshot_seq, None);
    assert_eq!(journal.open_report().replayed, 10);
    assert_eq!(journal.view().count, 10);
}

fn damaged_log(bad_seq: u64, total: u64) -> (Arc<MemoryLog>, Vec<(Seq, Vec<u8>)>) {
    let source = Arc::new(MemoryLog::new());
    {
        let journal: Journal<NoFold> = Journal::open(source.clone(), options()).unwrap();
        for n in 0..total {
            journal.append_blocking(vec![event(n)]).unwrap();
        }
    }
    let mut frames = source.frames();
    let body = frames[(bad_seq - 1) as usize].1.len() - 1;
    frames[(bad_seq - 1) as usize].1[body] ^= 0x10;
    (Arc::new(MemoryLog::from_frames(frames.clone())), frames)
}

#[test]
fn corruption_opens_read_only_names_the_seq_and_changes_nothing() {
    let (log, frames) = damaged_log(5, 8);
    let journal: Journal<Tally> = Journal::open(log.clone(), options()).unwrap();
    let Health::ReadOnly { reason } = journal.health() else {
        panic!("a corrupt log must be read-only")
    };
    assert!(reason.contains("seq 5"), "{reason}");
    assert_eq!(
        journal.view().count,
        4,
        "the projection holds everything before the bad record"
    );
    let refused = journal.append_blocking(vec![event(99)]).unwrap_err();
    assert!(matches!(refused, LogError::ReadOnly { .. }), "{refused}");
    assert_eq!(
        journal.read(Seq(1), Seq(8), 100).unwrap().len(),
        4,
        "reads stop before the bad record"
    );
    assert!(matches!(
        journal.verify_all(),
        Err(LogError::Corrupt { seq: Seq(5), .. })
    ));
    assert_eq!(log.frames(), frames, "nothing was truncated or rewritten");
}

#[test]
fn a_missing_sequence_number_is_corruption() {
    let writer_log = Arc::new(MemoryLog::new());
    {
        let journal: Journal<NoFold> = Journal::open(writer_log.clone(), options()).unwrap();
        for n in 0..6 {
            journal.append_blocking(vec![event(n)]).unwrap();
        }
    }
    let mut frames = writer_log.frames();
    frames.remove(2); // seq 3 vanishes
    let journal: Journal<Tally> =
        Journal::open(Arc::new(MemoryLog::from_frames(frames)), options()).unwrap();
    let Health::ReadOnly { reason } = journal.health() else {
        panic!("a gap must make the log read-only")
    };
    assert!(reason.contains("seq 3"), "{reason}");
    assert!(matches!(
        journal.verify_all(),
        Err(LogError::Corrupt { seq: Seq(3), .. })
    ));
}

#[test]
fn verify_all_finds_corruption_behind_a_snapshot() {
    let log = Arc::new(MemoryLog::new());
    {
        let journal: Journal<Tally> = Journal::open(
            log.clone(),
            JournalOptions {
                snapshot_every_events: 5,
                ..options()
            },
        )
        .unwrap();
        for n in 0..12 {
            journal.append_blocking(vec![event(n)]).unwrap();
        }
    }
    let mut frames = log.frames();
    frames[1].1[20] ^= 1;
    let damaged = Arc::new(MemoryLog::from_frames(frames));
    damaged
        .commit(&[], log.latest_snapshot().unwrap().as_ref())
        .unwrap();
    let journal: Journal<Tally> = Journal::open(damaged, options()).unwrap();
    assert_eq!(
        journal.health(),
        Health::Writable,
        "opening only checks the tail after the snapshot"
    );
    assert!(matches!(
        journal.verify_all(),
        Err(LogError::Corrupt { seq: Seq(2), .. })
    ));
    assert!(matches!(journal.health(), Health::ReadOnly { .. }));
}

#[test]
fn an_unknown_event_kind_refuses_to_open() {
    let source = Arc::new(MemoryLog::new());
    {
        let journal: Journal<NoFold> = Journal::open(source.clone(), options()).unwrap();
        journal.append_blocking(vec![event(1), event(2)]).unwrap();
    }
    let mut frames = source.frames();
    let frame = &mut frames[1].1;
    frame[6..8].copy_from_slice(&900u16.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame[0..12]);
    hasher.update(&frame[16..]);
    let crc = hasher.finalize();
    frame[12..16].copy_from_slice(&crc.to_le_bytes());
    let error = Journal::<Tally>::open(Arc::new(MemoryLog::from_frames(frames)), options())
        .err()
        .unwrap();
    assert_eq!(
        error,
        LogError::UnknownKind {
            seq: Seq(2),
            kind: 900
        }
    );
    assert!(error.to_string().contains("newer banger"), "{error}");
}

#[test]
fn a_log_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    drop(RedbLog::open(&path).unwrap());
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            meta.insert("schema", (SCHEMA_VERSION + 1).to_le_bytes().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let error = RedbLog::open(&path).err().unwrap();
    assert_eq!(
        error,
        LogError::NewerLog {
            found: SCHEMA_VERSION + 1,
            supported: SCHEMA_VERSION
        }
    );
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let _first = RedbLog::open(&path).unwrap();
    assert_eq!(RedbLog::open(&path).err(), Some(LogError::Locked));
}
