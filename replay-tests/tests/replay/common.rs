//! What the test modules share: the seeded proptest runner, journal options, strategies, the
//! recovery executor and consistency checks of a projection through its public API.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use banger_events::*;
use banger_projections::{Projections, RecoveryAction, RecoveryPlan};
use banger_replay_tests::Rng;
use banger_replay_tests::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Default seed of every property test; `BANGER_PROPTEST_SEED` overrides it.
pub const DEFAULT_SEED: u64 = 0xB46E_2026_0001;

/// A proptest runner with a fixed seed (printed), a fixed number of cases, no shrinking
/// timeout and no regression files: the test never writes anything. Each property mixes its
/// own `salt` into the seed so that properties do not all see the same inputs.
///
/// `BANGER_PROPTEST_CASES` multiplies the case counts (e.g. `BANGER_PROPTEST_CASES=10` for a
/// long soak run); the default keeps the whole binary well under a minute.
pub fn runner(salt: u64, cases: u32) -> TestRunner {
    let seed = seed_from_env("BANGER_PROPTEST_SEED", DEFAULT_SEED);
    let scale = std::env::var("BANGER_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let mixed = Rng::new(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64();
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(
            &Rng::new(mixed.wrapping_add(i as u64))
                .next_u64()
                .to_le_bytes(),
        );
    }
    let config = Config {
        cases: cases.saturating_mul(scale),
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// Runs `test` on `strategy` with [`runner`], panicking with the minimal failing input.
pub fn check<S: Strategy>(
    name: &str,
    salt: u64,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = runner(salt, cases);
    if let Err(error) = runner.run(&strategy, test) {
        panic!("{name} failed (reproduce with the BANGER_PROPTEST_SEED printed above): {error}");
    }
}

/// Generator knobs as a strategy: sizes shrink towards small logs.
pub fn gen_config(max_ops: usize) -> impl Strategy<Value = (u64, GenConfig)> {
    (
        any::<u64>(),
        1..=max_ops,
        1usize..=5,
        0u32..=40,
        0u32..=30,
        0u32..=20,
        any::<bool>(),
    )
        .prop_map(
            |(seed, ops, max_concurrent, fail, undo_fail, crash, unfinished)| {
                (
                    seed,
                    GenConfig {
                        ops,
                        max_concurrent,
                        fail_percent: fail,
                        undo_fail_percent: undo_fail,
                        crash_per_mille: crash,
                        unfinished_at_end: unfinished,
                    },
                )
            },
        )
}

/// Journal options for tests: a fixed clock and id seed, small snapshots.
pub fn journal_options(snapshot_every_events: u64) -> JournalOptions {
    JournalOptions {
        snapshot_every_events,
        clock: Arc::new(|| T0_MS),
        id_seed: Some(7),
        ..JournalOptions::default()
    }
}

pub fn open_journal(log: Arc<dyn EventLog>, snapshot_every_events: u64) -> Journal<Projections> {
    Journal::open(log, journal_options(snapshot_every_events)).expect("journal opens")
}

/// Carries out a recovery plan the way the daemon would, as events: each action's
/// `RecoveryDecided`, then the undo of each listed step (releasing its handles) and
/// `OperationRolledBack`, or the resumed step and `OperationSucceeded`. With
/// `undo_fail_percent`, an undo fails now and then and the operation ends stuck instead.
pub fn execute(
    plan: &RecoveryPlan,
    rng: &mut Rng,
    undo_fail_percent: u32,
) -> Vec<(Option<OpId>, Event)> {
    let mut out = Vec::new();
    for action in &plan.actions {
        let op = action.op_id();
        let here = Some(op);
        out.push((
            here,
            Event::RecoveryDecided(RecoveryDecided {
                op_id: op,
                decision: action.decision(),
                reason: "replay-tests executor".into(),
            }),
        ));
        match action {
            RecoveryAction::RollBack { undo, .. } | RecoveryAction::ResumeUndo { undo, .. } => {
                let mut stuck = false;
                for step in undo {
                    out.push((
                        here,
                        Event::UndoStarted(UndoStarted {
                            step: step.step.clone(),
                        }),
                    ));
                    if rng.percent(undo_fail_percent) {
                        let error = format!("undo of {} failed", step.step);
                        out.push((
                            here,
                            Event::UndoFailed(UndoFailed {
                                step: step.step.clone(),
                                error: error.clone(),
                            }),
                        ));
                        out.push((
                            here,
                            Event::OperationStuck(OperationStuck {
                                step: step.step.clone(),
                                error,
                            }),
                        ));
                        stuck = true;
                        break;
                    }
                    for handle in &step.handles {
                        out.push((
                            here,
                            Event::HandleReleased(HandleReleased {
                                handle: handle.clone(),
                            }),
                        ));
                    }
                    out.push((
                        here,
                        Event::UndoSucceeded(UndoSucceeded {
                            step: step.step.clone(),
                        }),
                    ));
                }
                if !stuck {
                    out.push((
                        here,
                        Event::OperationRolledBack(OperationRolledBack {
                            reason: "recovered after a crash".into(),
                        }),
                    ));
                }
            }
            RecoveryAction::RollForward { resume_from, .. } => {
                if let Some(step) = resume_from {
                    out.push((
                        here,
                        Event::StepStarted(StepStarted {
                            step: step.clone(),
                            intent: Vec::new(),
                        }),
                    ));
                    out.push((
                        here,
                        Event::StepSucceeded(StepSucceeded {
                            step: step.clone(),
                            produced: Vec::new(),
                        }),
                    ));
                }
                out.push((here, Event::OperationSucceeded(OperationSucceeded {})));
            }
        }
    }
    out
}

/// `envelopes` continued by `events`.
pub fn continued(envelopes: &[Envelope], events: Vec<(Option<OpId>, Event)>) -> Vec<Envelope> {
    let mut log = Scenario::from_envelopes(envelopes.to_vec());
    for (op, event) in events {
        log.push(op, event);
    }
    log.into_envelopes()
}

/// The projection's derived indexes agree with its maps, as seen through its queries.
pub fn check_queries(state: &Projections) -> Result<(), TestCaseError> {
    let in_flight: Vec<OpId> = state.in_flight().map(|op| op.op_id).collect();
    let expected: Vec<OpId> = state
        .operations
        .values()
        .filter(|op| op.is_in_flight())
        .map(|op| op.op_id)
        .collect();
    prop_assert_eq!(in_flight, expected, "in_flight() disagrees with the map");
    let stuck: Vec<OpId> = state.stuck().map(|op| op.op_id).collect();
    let expected: Vec<OpId> = state
        .operations
        .values()
        .filter(|op| op.status == banger_projections::OpStatus::Stuck)
        .map(|op| op.op_id)
        .collect();
    prop_assert_eq!(stuck, expected, "stuck() disagrees with the map");
    let mut by_owner: BTreeMap<String, BTreeSet<Handle>> = BTreeMap::new();
    let mut owners = Vec::new();
    for (handle, view) in &state.handles {
        by_owner
            .entry(format!("{:?}", view.owner))
            .or_default()
            .insert(handle.clone());
        owners.push(view.owner);
    }
    for owner in owners {
        let listed: BTreeSet<Handle> = state.handles_of(owner).map(|(h, _)| h.clone()).collect();
        prop_assert_eq!(
            Some(&listed),
            by_owner.get(&format!("{owner:?}")),
            "handles_of({:?}) disagrees with the ledger",
            owner
        );
    }
    Ok(())
}
