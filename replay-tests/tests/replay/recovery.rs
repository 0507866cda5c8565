//! `plan_recovery` finishes every open operation: carrying out its actions (with the executor
//! in `common`) leaves nothing in flight, and planning again finds nothing to do — also when
//! recovery itself is interrupted after any of its events and planned again.

use std::collections::BTreeSet;

use banger_events::*;
use banger_projections::{OpStatus, Projections, RecoveryAction, RecoveryPlan, plan_recovery};
use banger_replay_tests::Rng;
use banger_replay_tests::*;
use proptest::prelude::*;

use crate::common::*;

/// The plan covers every unresolved operation exactly once: in-flight ones with an action,
/// stuck ones in `stuck`.
fn check_plan_covers(state: &Projections, plan: &RecoveryPlan) -> Result<(), TestCaseError> {
    let acted: Vec<OpId> = plan.actions.iter().map(RecoveryAction::op_id).collect();
    let acted_set: BTreeSet<OpId> = acted.iter().copied().collect();
    prop_assert_eq!(acted.len(), acted_set.len(), "an operation got two actions");
    let in_flight: BTreeSet<OpId> = state.in_flight().map(|op| op.op_id).collect();
    prop_assert_eq!(&acted_set, &in_flight, "actions vs operations in flight");
    let stuck: BTreeSet<OpId> = state.stuck().map(|op| op.op_id).collect();
    let planned_stuck: BTreeSet<OpId> = plan.stuck.iter().copied().collect();
    prop_assert_eq!(&planned_stuck, &stuck, "stuck list");
    Ok(())
}

/// Plans, executes, folds, and checks that recovery finished: returns the recovered log.
fn recover(
    envelopes: &[Envelope],
    rng: &mut Rng,
    undo_fail_percent: u32,
) -> Result<Vec<Envelope>, TestCaseError> {
    let state: Projections = fold(envelopes);
    let plan = plan_recovery(&state);
    check_plan_covers(&state, &plan)?;
    let stuck_before: BTreeSet<OpId> = plan.stuck.iter().copied().collect();
    let recovered = continued(envelopes, execute(&plan, rng, undo_fail_percent));
    let after: Projections = fold(&recovered);
    check_queries(&after)?;
    let left: Vec<OpId> = after.in_flight().map(|op| op.op_id).collect();
    prop_assert!(
        left.is_empty(),
        "still in flight after recovery: {:?}",
        left
    );
    let replan = plan_recovery(&after);
    prop_assert!(
        replan.actions.is_empty(),
        "planning again still acts: {:?}",
        replan.actions
    );
    // Stuck operations stay stuck; new ones are exactly those whose undo the executor failed.
    let stuck_after: BTreeSet<OpId> = replan.stuck.iter().copied().collect();
    prop_assert!(stuck_before.is_subset(&stuck_after));
    for op in &plan.actions {
        let status = after.operations.get(&op.op_id()).map(|view| view.status);
        prop_assert!(
            matches!(
                status,
                Some(OpStatus::Succeeded | OpStatus::RolledBack | OpStatus::Stuck)
            ),
            "{} ended {:?}",
            op.op_id(),
            status
        );
        prop_assert_eq!(
            after.operations.get(&op.op_id()).and_then(|v| v.recovery),
            Some(op.decision())
        );
    }
    Ok(recovered)
}

fn recovery_plans_terminate_every_open_operation() {
    check(
        "recovery_plans_terminate_every_open_operation",
        11,
        96,
        (gen_config(40), 0u32..=30, any::<u64>()),
        |((seed, mut config), undo_fail, exec_seed)| {
            config.unfinished_at_end = true;
            let log = generate(seed, &config);
            recover(log.envelopes(), &mut Rng::new(exec_seed), undo_fail)?;
            Ok(())
        },
    );
}

/// Even nonsense (events out of order, unknown ids) leaves a state whose plan finishes
/// everything.
fn recovery_plans_terminate_operations_of_junk_logs() {
    check(
        "recovery_plans_terminate_operations_of_junk_logs",
        12,
        96,
        (any::<u64>(), 1usize..200, 0u32..=30),
        |(seed, len, undo_fail)| {
            recover(&junk(seed, len), &mut Rng::new(seed), undo_fail)?;
            Ok(())
        },
    );
}

/// Crash during recovery: cut the recovery's own events after every one of them, plan again
/// from there, and carry that out. Whatever the cut, nothing is left in flight.
fn recovery_interrupted_at_every_event_still_terminates() {
    check(
        "recovery_interrupted_at_every_event_still_terminates",
        13,
        24,
        (gen_config(24), any::<u64>()),
        |((seed, mut config), exec_seed)| {
            config.unfinished_at_end = true;
            config.crash_per_mille = 0;
            let log = generate(seed, &config);
            let base = log.envelopes();
            let plan = plan_recovery(&fold::<Projections>(base));
            let events = execute(&plan, &mut Rng::new(exec_seed), 0);
            for cut in 0..=events.len() {
                let interrupted = continued(base, events[..cut].to_vec());
                recover(&interrupted, &mut Rng::new(exec_seed ^ cut as u64), 0)?;
            }
            Ok(())
        },
    );
}

/// The golden crash story, interrupted at every event of its recovery, by hand: the plan
/// that follows each cut always names the same operations, each with the same decision.
fn crash_story_recovers_from_every_cut_of_its_recovery() {
    let story = stories::all()
        .into_iter()
        .find(|s| s.name == "crash-mid-create")
        .expect("the crash story exists");
    let base = story.log.envelopes();
    let plan = plan_recovery(&fold::<Projections>(base));
    assert_eq!(plan.actions.len(), 4, "{plan:#?}");
    assert_eq!(plan.stuck.len(), 1, "{plan:#?}");
    let events = execute(&plan, &mut Rng::new(0), 0);
    for cut in 0..=events.len() {
        let interrupted = continued(base, events[..cut].to_vec());
        let state: Projections = fold(&interrupted);
        let replan = plan_recovery(&state);
        for action in &replan.actions {
            let first = plan
                .actions
                .iter()
                .find(|a| a.op_id() == action.op_id())
                .unwrap_or_else(|| panic!("cut {cut}: new action {action:?}"));
            // An interrupted rollback resumes its undo; otherwise the decision is unchanged.
            let expected = match (first.decision(), &action) {
                (RecoveryDecision::RollBack, RecoveryAction::ResumeUndo { .. }) => {
                    RecoveryDecision::ResumeUndo
                }
                (decision, _) => decision,
            };
            assert_eq!(action.decision(), expected, "cut {cut}: {action:?}");
        }
        let result = recover(&interrupted, &mut Rng::new(1), 0);
        assert!(result.is_ok(), "cut {cut}: {result:?}");
    }
}

/// The generator recovers from its crashes by its own rules (see `rolls_forward` and the crate
/// docs). At every crash in a generated log, `plan_recovery` of the log up to the restart must
/// decide the same for each operation, and undo the same steps in the same order.
fn generator_recoveries_agree_with_plan_recovery() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let compared = AtomicUsize::new(0);
    check(
        "generator_recoveries_agree_with_plan_recovery",
        14,
        64,
        gen_config(40).prop_map(|(seed, mut config)| {
            config.crash_per_mille = config.crash_per_mille.max(10);
            (seed, config)
        }),
        |(seed, config)| {
            let log = generate(seed, &config);
            let all = log.envelopes();
            let restarts: Vec<usize> = all
                .iter()
                .enumerate()
                .filter(|(_, e)| matches!(e.event, Event::DaemonStarted(_)))
                .map(|(i, _)| i)
                .collect();
            for (n, &start) in restarts.iter().enumerate() {
                let end = restarts.get(n + 1).copied().unwrap_or(all.len());
                let plan = plan_recovery(&fold::<Projections>(&all[..start]));
                for envelope in &all[start..end] {
                    let Event::RecoveryDecided(decided) = &envelope.event else {
                        continue;
                    };
                    let Some(action) = plan.actions.iter().find(|a| a.op_id() == decided.op_id)
                    else {
                        return Err(TestCaseError::fail(format!(
                            "seq {}: the generator recovered {} but the plan has no action \
                             for it: {plan:?}",
                            envelope.seq, decided.op_id
                        )));
                    };
                    compared.fetch_add(1, Ordering::Relaxed);
                    prop_assert_eq!(
                        decided.decision,
                        action.decision(),
                        "seq {}: decision for {}",
                        envelope.seq,
                        decided.op_id
                    );
                    if let RecoveryAction::RollBack { undo, .. }
                    | RecoveryAction::ResumeUndo { undo, .. } = action
                    {
                        let undone: Vec<&str> = all[envelope.seq.0 as usize..end]
                            .iter()
                            .filter(|e| e.op_id == Some(decided.op_id))
                            .filter_map(|e| match &e.event {
                                Event::UndoStarted(u) => Some(u.step.as_str()),
                                _ => None,
                            })
                            .collect();
                        let planned: Vec<&str> = undo.iter().map(|u| u.step.as_str()).collect();
                        prop_assert!(
                            planned.starts_with(&undone),
                            "seq {}: {} undid {:?}, the plan says {:?}",
                            envelope.seq,
                            decided.op_id,
                            undone,
                            planned
                        );
                    }
                }
            }
            Ok(())
        },
    );
    let compared = compared.into_inner();
    println!("{compared} recovery decisions compared");
    assert!(compared > 50, "too few crashes to compare: {compared}");
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync recovery_plans_terminate_every_open_operation,
        sync recovery_plans_terminate_operations_of_junk_logs,
        sync recovery_interrupted_at_every_event_still_terminates,
        sync crash_story_recovers_from_every_cut_of_its_recovery,
        sync generator_recoveries_agree_with_plan_recovery,
    ]
}
