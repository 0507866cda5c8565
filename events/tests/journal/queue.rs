//! The writer's request queue is bounded: when it is full, appends wait for room instead of
//! growing memory without limit.

use std::pin::Pin;
use std::sync::Arc;

use banger_events::*;

use super::{GatedLog, Tally, event, options, poll_once};

const BOUND: usize = 3;

#[tokio::test]
async fn a_full_queue_makes_appends_wait_until_it_drains() {
    let log = Arc::new(GatedLog::new(MemoryLog::new()));
    let journal = Arc::new(
        Journal::<Tally>::open(
            log.clone(),
            JournalOptions {
                max_queued_requests: BOUND,
                ..options()
            },
        )
        .unwrap(),
    );
    // The writer takes the first request and stays inside its commit.
    log.hold_commits();
    let mut first = Box::pin(journal.append(vec![event(0)]));
    assert!(poll_once(first.as_mut()).is_pending());
    log.wait_for_held_commits(1);
    assert_eq!(journal.queued_requests(), 0);

    type Append<'a> = Pin<Box<dyn Future<Output = Result<Vec<Envelope>, LogError>> + 'a>>;
    let mut waiting: Vec<Append> = (1..=BOUND as u64 + 2)
        .map(|n| Box::pin(journal.append(vec![event(n)])) as Append)
        .collect();
    for append in &mut waiting {
        assert!(poll_once(append.as_mut()).is_pending());
    }
    assert_eq!(
        journal.queued_requests(),
        BOUND,
        "the queue holds at most its bound; the other appends wait for room"
    );
    // A blocking caller waits too, and goes on once there is room.
    let blocking = {
        let journal = journal.clone();
        std::thread::spawn(move || journal.append_blocking(vec![event(99)]))
    };

    log.release_commits();
    let mut seqs = vec![first.await.unwrap()[0].seq.0];
    for append in waiting {
        seqs.push(append.await.unwrap()[0].seq.0);
    }
    seqs.push(blocking.join().unwrap().unwrap()[0].seq.0);
    seqs.sort();
    let total = BOUND as u64 + 4;
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    assert_eq!(journal.queued_requests(), 0);
    assert_eq!(journal.view().count, total);
}

#[tokio::test]
async fn an_append_dropped_while_waiting_for_room_appends_nothing() {
    let log = Arc::new(GatedLog::new(MemoryLog::new()));
    let journal = Journal::<Tally>::open(
        log.clone(),
        JournalOptions {
            max_queued_requests: 1,
            ..options()
        },
    )
    .unwrap();
    log.hold_commits();
    let mut first = Box::pin(journal.append(vec![event(0)]));
    assert!(poll_once(first.as_mut()).is_pending());
    log.wait_for_held_commits(1);
    let mut queued = Box::pin(journal.append(vec![event(1)]));
    assert!(poll_once(queued.as_mut()).is_pending());
    let mut gives_up = Box::pin(journal.append(vec![event(2)]));
    assert!(poll_once(gives_up.as_mut()).is_pending());
    assert_eq!(journal.queued_requests(), 1);
    drop(gives_up);
    log.release_commits();
    first.await.unwrap();
    queued.await.unwrap();
    assert_eq!(journal.last_seq(), Seq(2));
    let stored = journal.read(Seq(1), Seq(5), 5).unwrap();
    assert_eq!(
        stored.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        [event(0).event, event(1).event]
    );
}
