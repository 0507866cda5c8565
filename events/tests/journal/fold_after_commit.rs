//! The writer folds a batch into the projection only after its commit returned: readers never
//! wait for the disk, never see what is not durable, and a failed commit leaves the views as
//! they were. Snapshots, taken from the folded state, describe exactly the state after their
//! seq.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use banger_events::*;

use super::{GatedLog, Tally, event, options};

/// Turns a hang into a failure: how long a test waits for something that must happen at once
/// before it declares that it never will. Never used to let something else happen.
const WATCHDOG: Duration = Duration::from_secs(60);

#[test]
fn a_reader_does_not_wait_for_a_commit_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(GatedLog::new(
        RedbLog::open(dir.path().join("events.redb")).unwrap(),
    ));
    let journal = Arc::new(Journal::<Tally>::open(log.clone(), options()).unwrap());
    journal.append_blocking(vec![event(1)]).unwrap();
    let before = journal.view().clone();

    // The next commit is slow, as an fsync on a busy disk is.
    log.hold_commits();
    let appender = {
        let journal = journal.clone();
        std::thread::spawn(move || journal.append_blocking(vec![event(2)]))
    };
    log.wait_for_held_commits(1);

    let (seen, see) = mpsc::channel();
    let reader = {
        let journal = journal.clone();
        std::thread::spawn(move || {
            let view = journal.view();
            let _ = seen.send((view.clone(), journal.last_seq()));
        })
    };
    let during = see.recv_timeout(WATCHDOG);
    // Released whatever happened, so that a failure does not leave the writer stuck.
    log.release_commits();
    let (view, last_seq) = during.expect("view() waited for a commit (an fsync) to finish");
    assert_eq!(view, before, "the batch being committed is not visible yet");
    assert_eq!(last_seq, Seq(1));

    let appended = appender.join().unwrap().unwrap();
    reader.join().unwrap();
    assert_eq!(appended[0].seq, Seq(2));
    assert_eq!(journal.view().count, 2, "acknowledged means folded");
    assert_eq!(journal.last_seq(), Seq(2));
}

#[test]
fn a_failed_commit_leaves_the_views_exactly_as_they_were() {
    // A journal opened from a snapshot, with a damaged event behind it (opening only checks
    // the tail; the background verification has not reached it yet). Rebuilding the
    // projection from the log after a failed commit would fail here, so a projection that
    // was changed before the commit could not be put back.
    let source = Arc::new(MemoryLog::new());
    {
        let journal: Journal<Tally> = Journal::open(
            source.clone(),
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
    let mut frames = source.frames();
    frames[1].1[20] ^= 1;
    let damaged = MemoryLog::from_frames(frames.clone());
    damaged
        .commit(&[], source.latest_snapshot().unwrap().as_ref())
        .unwrap();
    let log = Arc::new(GatedLog::new(damaged));
    let journal: Journal<Tally> = Journal::open(log.clone(), options()).unwrap();
    assert_eq!(journal.health(), Health::Writable);
    journal.append_blocking(vec![event(12)]).unwrap();
    let before = journal.view().clone();
    assert_eq!(before.count, 13);

    log.fail_next_commit(LogError::Storage("disk full".into()));
    let error = journal
        .append_blocking(vec![event(13), event(14)])
        .unwrap_err();
    assert_eq!(error, LogError::Storage("disk full".into()));
    assert_eq!(
        *journal.view(),
        before,
        "the views are exactly as before the failed commit"
    );
    assert_eq!(journal.last_seq(), Seq(13));
    let Health::ReadOnly { reason } = journal.health() else {
        panic!("a failed commit must make the journal read-only");
    };
    assert!(reason.contains("disk full"), "the error is named: {reason}");
    let refused = journal.append_blocking(vec![event(15)]).unwrap_err();
    assert!(
        matches!(&refused, LogError::ReadOnly { reason } if reason.contains("disk full")),
        "{refused}"
    );
    assert_eq!(
        log.inner.last_seq().unwrap(),
        Seq(13),
        "nothing more was stored"
    );
}

#[test]
fn a_failed_commit_is_not_acknowledged_not_visible_and_stops_writes() {
    let log = Arc::new(GatedLog::new(MemoryLog::new()));
    let journal: Journal<Tally> = Journal::open(log.clone(), options()).unwrap();
    journal.append_blocking(vec![event(1)]).unwrap();
    journal.append_blocking(vec![event(2)]).unwrap();
    log.fail_next_commit(LogError::Storage("disk full".into()));
    let error = journal.append_blocking(vec![event(3)]).unwrap_err();
    assert_eq!(error, LogError::Storage("disk full".into()));
    assert_eq!(
        journal.view().count,
        2,
        "the projection shows only durable events"
    );
    assert_eq!(journal.last_seq(), Seq(2));
    assert!(matches!(
        journal.append_blocking(vec![event(4)]),
        Err(LogError::ReadOnly { .. })
    ));
    assert_eq!(log.inner.last_seq().unwrap(), Seq(2));
}

/// The state after `seq`, folded from the stored events.
fn tally_until(log: &dyn EventLog, seq: Seq) -> Tally {
    let mut tally = Tally::default();
    let (applied, error) = replay_into(log, &mut tally, Seq(1), seq);
    assert_eq!((applied, error), (seq.0, None));
    tally
}

#[test]
fn every_snapshot_is_the_state_after_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let options = JournalOptions {
        snapshot_every_events: 7,
        ..options()
    };
    let log = Arc::new(GatedLog::new(RedbLog::open(&path).unwrap()));
    let journal = Arc::new(Journal::<Tally>::open(log.clone(), options.clone()).unwrap());
    // Writers of batches of different sizes, so commits hold varying numbers of events and
    // snapshots fall in the middle of group commits.
    let writers: Vec<_> = (1..=6u64)
        .map(|w| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                for n in 0..40 {
                    let batch: Vec<_> = (0..w).map(|i| event(w * 10_000 + n * 10 + i)).collect();
                    let appended = journal.append_blocking(batch).unwrap();
                    let last = appended.last().unwrap().seq;
                    assert!(
                        journal.view().last >= last.0,
                        "acknowledged only once folded"
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let total = journal.last_seq();
    assert_eq!(total, Seq(40 * (1..=6).sum::<u64>()));
    let snapshots = log.snapshots();
    assert!(snapshots.len() > 10, "{} snapshots", snapshots.len());
    for (snapshot, stored_through) in &snapshots {
        assert_eq!(snapshot.format, Tally::SNAPSHOT_FORMAT);
        let state = Tally::decode_snapshot(&snapshot.bytes).unwrap();
        assert_eq!(
            state,
            tally_until(log.as_ref(), snapshot.seq),
            "snapshot at {} is the state after it",
            snapshot.seq
        );
        assert!(
            snapshot.seq <= *stored_through,
            "a snapshot is never stored without the events it covers"
        );
    }
    Arc::try_unwrap(journal).ok().unwrap().close();
    drop(log);

    let reopened =
        Journal::<Tally>::open(Arc::new(RedbLog::open(&path).unwrap()), options).unwrap();
    let report = reopened.open_report().clone();
    assert!(report.snapshot_seq.is_some());
    let view = reopened.view().clone();
    assert_eq!(view.count, total.0);
    drop(reopened);
    assert_eq!(
        view,
        rebuild::<Tally>(&RedbLog::open(&path).unwrap()).unwrap(),
        "snapshot + tail is the full replay"
    );
}

#[test]
fn a_snapshot_still_waiting_for_a_commit_is_stored_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    let options = JournalOptions {
        snapshot_every_events: 10,
        ..options()
    };
    let before = {
        let journal =
            Journal::<Tally>::open(Arc::new(RedbLog::open(&path).unwrap()), options.clone())
                .unwrap();
        // The tenth event makes a snapshot due; no commit follows it to carry it.
        for n in 0..10 {
            journal.append_blocking(vec![event(n)]).unwrap();
        }
        let before = journal.view().clone();
        journal.close();
        before
    };
    let journal = Journal::<Tally>::open(Arc::new(RedbLog::open(&path).unwrap()), options).unwrap();
    assert_eq!(journal.open_report().snapshot_seq, Some(Seq(10)));
    assert_eq!(journal.open_report().replayed, 0);
    assert_eq!(*journal.view(), before);
}
