//! Subscriptions read the log off the async runtime's workers, and stay exact (no event skipped
//! or repeated) however often `next()` is cancelled.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use banger_events::*;

use super::{GatedLog, Tally, event, options};

/// Turns a hang into a failure; never used to let something else happen.
const WATCHDOG: Duration = Duration::from_secs(60);

#[test]
fn a_subscription_reads_the_log_off_the_async_workers() {
    let log = Arc::new(GatedLog::new(MemoryLog::new()));
    let journal = Arc::new(Journal::<Tally>::open(log.clone(), options()).unwrap());
    journal.append_blocking(vec![event(1)]).unwrap();
    let (done, finished) = mpsc::channel();
    let runtime = {
        let log = log.clone();
        let journal = journal.clone();
        std::thread::spawn(move || {
            // One worker thread: a read done inline on it would stop every task.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let outcome = runtime.block_on(async move {
                let mut subscription = journal.subscribe(Seq::ZERO);
                log.hold_reads();
                let follower = tokio::spawn(async move { subscription.next().await });
                let waiter = log.clone();
                tokio::task::spawn_blocking(move || waiter.wait_for_held_read())
                    .await
                    .unwrap();
                // The read waits for the "disk"; this task still runs.
                let appended = journal.append(vec![event(2)]).await.unwrap();
                log.release_reads();
                (follower.await.unwrap().unwrap().seq, appended[0].seq)
            });
            let _ = done.send(outcome);
        })
    };
    let outcome = finished.recv_timeout(WATCHDOG);
    log.release_reads();
    let (first, appended) = outcome.expect("reading the log blocked the runtime's only worker");
    runtime.join().unwrap();
    assert_eq!((first, appended), (Seq(1), Seq(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_next_neither_loses_nor_repeats_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let log = RedbLog::open(dir.path().join("events.redb")).unwrap();
    let journal = Arc::new(Journal::<Tally>::open(Arc::new(log), options()).unwrap());
    // More than one read's worth stored, then more arriving while the subscription catches up.
    for chunk in 0..15 {
        let batch = (0..100).map(|n| event(chunk * 100 + n)).collect();
        journal.append(batch).await.unwrap();
    }
    let writer = {
        let journal = journal.clone();
        tokio::spawn(async move {
            for n in 0..250 {
                journal
                    .append((0..4).map(|i| event(n * 4 + i)).collect())
                    .await
                    .unwrap();
            }
        })
    };
    let mut subscription = journal.subscribe(Seq::ZERO);
    let mut expected = Seq(1);
    let mut cancelled = 0u64;
    while expected <= Seq(2500) {
        assert_eq!(subscription.position(), expected);
        // A zero timeout cancels `next()` whenever the event is not ready at the first poll,
        // as a `select!` with a busier branch would.
        match tokio::time::timeout(Duration::ZERO, subscription.next()).await {
            Ok(envelope) => {
                assert_eq!(envelope.unwrap().seq, expected);
                expected = expected.next();
            }
            Err(_) => {
                cancelled += 1;
                tokio::task::yield_now().await;
            }
        }
    }
    writer.await.unwrap();
    assert!(cancelled > 0, "the test cancelled no read");
    println!("{cancelled} cancelled calls to next()");
}
