//! Conditional appends: the precondition is checked by the writer on a projection holding every
//! event committed before it, right before sequence numbers are assigned, so a check and its
//! append are one step.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use banger_events::*;

use super::{GatedLog, Tally, damaged_log, event, options, poll_once};

fn expect_count(tally: &Tally, count: u64) -> Result<(), u64> {
    if tally.count == count {
        Ok(())
    } else {
        Err(tally.count)
    }
}

#[tokio::test]
async fn a_conditional_append_sees_every_append_queued_before_it() {
    let log = Arc::new(GatedLog::new(MemoryLog::new()));
    let journal = Journal::<Tally>::open(log.clone(), options()).unwrap();
    log.hold_commits();
    let mut first = pin!(journal.append(vec![event(0)]));
    assert!(poll_once(first.as_mut()).is_pending());
    log.wait_for_held_commits(1);

    // Queued in this order while the first commit is held, so that a writer taking all of
    // them as one batch would check both conditions against the projection of one event.
    let mut plain = pin!(journal.append(vec![event(1)]));
    let mut sees_plain = pin!(journal.append_if(vec![event(2)], |t: &Tally| expect_count(t, 2)));
    let mut stale = pin!(journal.append_if(vec![event(3)], |t: &Tally| expect_count(t, 2)));
    let mut after_refusal = pin!(journal.append(vec![event(4)]));
    assert!(poll_once(plain.as_mut()).is_pending());
    assert!(poll_once(sees_plain.as_mut()).is_pending());
    assert!(poll_once(stale.as_mut()).is_pending());
    assert!(poll_once(after_refusal.as_mut()).is_pending());
    assert_eq!(journal.queued_requests(), 4);
    log.release_commits();

    assert_eq!(first.await.unwrap()[0].seq, Seq(1));
    assert_eq!(plain.await.unwrap()[0].seq, Seq(2));
    let appended = sees_plain
        .await
        .unwrap()
        .expect("its check saw both earlier appends");
    assert_eq!(appended[0].seq, Seq(3));
    assert_eq!(
        stale.await.unwrap(),
        Err(3),
        "refused, with what the check saw"
    );
    assert_eq!(
        after_refusal.await.unwrap()[0].seq,
        Seq(4),
        "a refusal takes no sequence number and does not affect its neighbours"
    );
    assert_eq!(journal.view().count, 4);
    let stored = journal.read(Seq(1), Seq(10), 10).unwrap();
    assert_eq!(
        stored.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        [0, 1, 2, 4].map(|n| event(n).event),
        "the refused event was never stored"
    );
}

/// Counts claims (`KernelRemoved` named `claim-ROUND-RACER`) apart from noise.
#[derive(Default, Debug, Clone, PartialEq)]
struct Claims {
    claims: u64,
    noise: u64,
}

impl Fold for Claims {
    const SNAPSHOT_FORMAT: u32 = 1;

    fn apply(&mut self, envelope: &Envelope) {
        match &envelope.event {
            Event::KernelRemoved(removed) if removed.name.starts_with("claim-") => self.claims += 1,
            _ => self.noise += 1,
        }
    }

    fn encode_snapshot(&self) -> Vec<u8> {
        [self.claims.to_le_bytes(), self.noise.to_le_bytes()].concat()
    }

    fn decode_snapshot(bytes: &[u8]) -> Option<Self> {
        Some(Claims {
            claims: u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?),
            noise: u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?),
        })
    }
}

fn claim(round: u64, racer: usize) -> NewEvent {
    NewEvent::new(Event::KernelRemoved(KernelRemoved {
        name: format!("claim-{round}-{racer}"),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_racing_conditional_appends_wins() {
    const ROUNDS: u64 = 40;
    const RACERS: usize = 6;
    const NOISE_PER_WRITER: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let log = RedbLog::open(dir.path().join("events.redb")).unwrap();
    let journal = Arc::new(Journal::<Claims>::open(Arc::new(log), options()).unwrap());
    let racing = Arc::new(AtomicBool::new(true));
    // Unconditional appends keep landing in the same group commits as the racers.
    let noise: Vec<_> = (0..2)
        .map(|w| {
            let journal = journal.clone();
            let racing = racing.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while n < NOISE_PER_WRITER || racing.load(Ordering::SeqCst) {
                    journal.append(vec![event(w * 100_000 + n)]).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    // Every round, all racers start together and each claims the round: the claim is valid
    // only while the previous round is the last one claimed.
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|racer| {
            let journal = journal.clone();
            let start = start.clone();
            tokio::spawn(async move {
                let mut won = Vec::new();
                for round in 1..=ROUNDS {
                    start.wait().await;
                    let outcome = journal
                        .append_if(vec![claim(round, racer)], move |c: &Claims| {
                            if c.claims == round - 1 {
                                Ok(())
                            } else {
                                Err(c.claims)
                            }
                        })
                        .await
                        .unwrap();
                    match outcome {
                        Ok(_) => won.push(round),
                        Err(seen) => assert_eq!(seen, round, "a loser saw the winner's claim"),
                    }
                }
                won
            })
        })
        .collect();
    let mut winners = vec![0; ROUNDS as usize + 1];
    for racer in racers {
        for round in racer.await.unwrap() {
            winners[round as usize] += 1;
        }
    }
    racing.store(false, Ordering::SeqCst);
    let mut noise_total = 0;
    for writer in noise {
        noise_total += writer.await.unwrap();
    }
    assert!(
        winners[1..].iter().all(|&n| n == 1),
        "exactly one winner per round: {winners:?}"
    );
    let view = journal.view().clone();
    assert_eq!(
        view,
        Claims {
            claims: ROUNDS,
            noise: noise_total
        }
    );
    let stored = journal
        .read(Seq(1), journal.last_seq(), usize::MAX)
        .unwrap();
    let claimed_rounds: Vec<u64> = stored
        .iter()
        .filter_map(|e| match &e.event {
            Event::KernelRemoved(k) => k
                .name
                .strip_prefix("claim-")
                .map(|rest| rest.split('-').next().and_then(|r| r.parse().ok()).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(
        claimed_rounds,
        (1..=ROUNDS).collect::<Vec<_>>(),
        "the log holds one claim per round, in order"
    );
}

#[test]
fn a_check_that_panics_appends_nothing_and_the_journal_goes_on() {
    let journal = Journal::<Tally>::open(Arc::new(MemoryLog::new()), options()).unwrap();
    journal.append_blocking(vec![event(1)]).unwrap();
    let error = journal
        .append_if_blocking(vec![event(2)], |_: &Tally| -> Result<(), ()> {
            panic!("a bug in a check")
        })
        .unwrap_err();
    assert_eq!(error, LogError::CheckPanicked("a bug in a check".into()));
    assert_eq!(journal.health(), Health::Writable);
    assert_eq!(journal.last_seq(), Seq(1));
    let next = journal
        .append_if_blocking(vec![event(3)], |t: &Tally| expect_count(t, 1))
        .unwrap()
        .unwrap();
    assert_eq!(next[0].seq, Seq(2));
}

#[test]
fn a_read_only_journal_refuses_conditional_appends_without_checking() {
    let (log, _) = damaged_log(3, 5);
    let journal: Journal<Tally> = Journal::open(log, options()).unwrap();
    let error = journal
        .append_if_blocking(vec![event(9)], |_: &Tally| -> Result<(), ()> {
            panic!("the check must not run")
        })
        .unwrap_err();
    assert!(matches!(error, LogError::ReadOnly { .. }), "{error}");
}
