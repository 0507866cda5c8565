//! Crash recovery, carried out. `plan_recovery` (projections) decides, from the log alone,
//! what to do with every operation that has no terminal event; this module does it through
//! the operation kinds' step tables, before bangerd takes requests.
//!
//! For each action it appends `RecoveryDecided` under the operation's *original* op id, then
//! the same events a live run would: `UndoStarted`/`UndoSucceeded`/`UndoFailed` and
//! `OperationRolledBack`/`OperationStuck` for a rollback; `StepStarted`/`StepSucceeded` and
//! `OperationSucceeded` (with the kind's domain events) for a roll-forward. So `banger events
//! --op ID` tells the whole story of an interrupted operation, restart included.
//!
//! Kinds whose step tables do not exist yet are left alone with a log line: recovering them
//! without their undo would be guessing.
//!
//! VM kinds: a rolled-back create also appends `VmRemoved` (its `rolled_back_events`), a
//! rolled-back start `VmStateChanged` → stopped. What recovery cannot see from the log — a
//! VM that the log says runs but whose VMM died while bangerd was down — is the daemon's
//! startup re-adoption pass, after recovery (`crate::daemon::supervisor`).

use banger_events::{
    Event, Handle, NewEvent, OpId, OpKind, OperationStuck, RecoveryDecided, RecoveryDecision, Seq,
    UndoFailed,
};
use banger_projections::{RecoveryAction, UndoStep, plan_recovery};

use super::kinds;
use super::{OpCx, OpError, OperationKind, Runner, Step, UndoOutcome, find_step};

/// What recovery did with one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub op_id: OpId,
    pub kind: OpKind,
    pub decision: RecoveryDecision,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    RolledBack,
    Succeeded,
    Stuck {
        step: String,
        error: String,
    },
    /// This build cannot recover the kind yet; the operation stays unresolved.
    NotImplemented,
}

/// Carries out the recovery plan of the current log. Stops at the first log error (the log
/// went read-only: nothing more can be recorded, so nothing more is done).
pub async fn recover(runner: &Runner) -> Result<Vec<Recovered>, OpError> {
    let plan = {
        let view = runner.journal().view();
        plan_recovery(&view)
    };
    for op_id in &plan.stuck {
        tracing::warn!(%op_id, "operation is stuck from an earlier run; it blocks its target until cleaned up (see `banger ops`)");
    }
    let mut report = Vec::with_capacity(plan.actions.len());
    for action in plan.actions {
        let (op_id, kind, decision) = (action.op_id(), action.kind(), action.decision());
        let outcome = recover_one(runner, action).await?;
        match &outcome {
            Outcome::NotImplemented => tracing::warn!(
                %op_id, %kind,
                "this build has no step table for {kind} operations, so it leaves this one unresolved (it blocks its target); a bangerd that knows the kind finishes it"
            ),
            other => {
                tracing::info!(%op_id, %kind, ?decision, outcome = ?other, "recovered operation")
            }
        }
        report.push(Recovered {
            op_id,
            kind,
            decision,
            outcome,
        });
    }
    Ok(report)
}

async fn recover_one(runner: &Runner, action: RecoveryAction) -> Result<Outcome, OpError> {
    match kinds::find(action.kind()) {
        Some(entry) => (entry.recover)(runner, action).await,
        None => Ok(Outcome::NotImplemented),
    }
}

/// Recovers one operation of kind `K` (reached through [`kinds::KINDS`]).
pub(super) async fn recover_kind<K: OperationKind>(
    runner: &Runner,
    action: RecoveryAction,
) -> Result<Outcome, OpError> {
    let op_id = action.op_id();
    let (started, parameters, last_step, produced) = {
        let view = runner.journal().view();
        let Some(op) = view.operations.get(&op_id) else {
            return Err(OpError::Internal(format!(
                "recovery planned operation {op_id}, which the views do not have"
            )));
        };
        let produced: Vec<(String, Vec<Handle>)> = op
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.produced.clone()))
            .collect();
        (
            op.started_seq,
            op.parameters.clone(),
            op.steps.last().map(|s| s.name.clone()),
            produced,
        )
    };
    let decision = action.decision();
    let reason = match &last_step {
        Some(step) => format!("bangerd stopped during step {step}"),
        None => "bangerd stopped before the first step".to_owned(),
    };
    let target = action.target().clone();
    let vmm = runner.vmm_for(&target);
    let cx = OpCx {
        op_id,
        kind: K::KIND,
        target: &target,
        layout: runner.layout(),
        network: runner.network(),
        vmm: vmm.as_ref(),
        agents: runner.agents(),
    };
    runner
        .journal()
        .append(vec![
            NewEvent::in_op(
                op_id,
                Event::RecoveryDecided(RecoveryDecided {
                    op_id,
                    decision,
                    reason: reason.clone(),
                }),
            )
            .caused_by(started),
        ])
        .await?;
    match action {
        RecoveryAction::RollBack { undo, .. } | RecoveryAction::ResumeUndo { undo, .. } => {
            roll_back::<K>(
                runner,
                &cx,
                started,
                undo,
                &format!("{reason}; rolled back at restart"),
            )
            .await
        }
        RecoveryAction::RollForward {
            completed,
            resume_from,
            ..
        } => {
            let state = match K::resume_state(&target, &parameters) {
                Ok(state) => state,
                // Nothing has run yet in this attempt, so stuck is the truthful end: the
                // message names what did not decode, for whoever looks at `banger ops`.
                Err(error) => {
                    return stuck(
                        runner,
                        &cx,
                        started,
                        resume_from.as_deref().unwrap_or("resume"),
                        &format!("cannot resume from what the log recorded: {error}"),
                    )
                    .await;
                }
            };
            let steps = K::steps();
            let position = |name: &str| steps.iter().position(|s| s.name() == name);
            let first = match &resume_from {
                Some(name) => position(name),
                None => Some(
                    completed
                        .last()
                        .and_then(|name| position(name))
                        .map_or(0, |i| i + 1),
                ),
            };
            let Some(first) = first else {
                return stuck(
                    runner,
                    &cx,
                    started,
                    resume_from.as_deref().unwrap_or("resume"),
                    "this build of bangerd does not know the step to resume from",
                )
                .await;
            };
            let mut done: Vec<(&'static dyn Step<K::State>, Vec<Handle>)> = Vec::new();
            for name in &completed {
                if let Some(step) = find_step::<K>(name) {
                    let handles = produced
                        .iter()
                        .rev()
                        .find(|(n, _)| n == name)
                        .map(|(_, h)| h.clone())
                        .unwrap_or_default();
                    done.push((step, handles));
                }
            }
            match runner
                .roll_forward::<K>(&cx, started, done, first, state)
                .await
            {
                Ok(()) => Ok(Outcome::Succeeded),
                Err(OpError::Failed { .. }) => Ok(Outcome::RolledBack),
                Err(OpError::Stuck {
                    undo_step,
                    undo_error,
                    ..
                }) => Ok(Outcome::Stuck {
                    step: undo_step,
                    error: undo_error,
                }),
                Err(other) => Err(other),
            }
        }
    }
}

async fn roll_back<K: OperationKind>(
    runner: &Runner,
    cx: &OpCx<'_>,
    started: Seq,
    undo: Vec<UndoStep>,
    reason: &str,
) -> Result<Outcome, OpError> {
    let mut steps: Vec<(&'static dyn Step<K::State>, Vec<Handle>)> = Vec::with_capacity(undo.len());
    for UndoStep { step, handles } in undo {
        match find_step::<K>(&step) {
            Some(found) => steps.push((found, handles)),
            None => {
                return stuck(
                    runner,
                    cx,
                    started,
                    &step,
                    "this build of bangerd does not know the step, so it cannot undo it",
                )
                .await;
            }
        }
    }
    let closing = K::rolled_back_events(cx.target);
    match runner
        .undo_steps(cx, started, steps, reason, closing)
        .await?
    {
        UndoOutcome::RolledBack => Ok(Outcome::RolledBack),
        UndoOutcome::Stuck { step, error } => Ok(Outcome::Stuck { step, error }),
    }
}

/// Ends an operation as stuck at `step` without trying anything.
async fn stuck(
    runner: &Runner,
    cx: &OpCx<'_>,
    started: Seq,
    step: &str,
    error: &str,
) -> Result<Outcome, OpError> {
    tracing::error!(op_id = %cx.op_id, step, error, "recovery cannot finish the operation; marking it stuck");
    runner
        .record(
            cx,
            Some(started),
            vec![
                Event::UndoFailed(UndoFailed {
                    step: step.to_owned(),
                    error: error.to_owned(),
                }),
                Event::OperationStuck(OperationStuck {
                    step: step.to_owned(),
                    error: error.to_owned(),
                }),
            ],
        )
        .await?;
    Ok(Outcome::Stuck {
        step: step.to_owned(),
        error: error.to_owned(),
    })
}

/// Recovery of roll-forward operations from the parameters the log recorded: today's resume
/// payloads, the bare JSON older builds wrote, and parameters that do not decode at all.
#[cfg(test)]
mod tests {
    use std::path::Path;

    use banger_events::{
        OperationStarted, StepStarted, Target, VmDefined, VmId, VmSpec, VmState, VmStateChanged,
    };
    use banger_projections::OpStatus;

    use super::*;
    use crate::operations::vm_stop::StopState;
    use crate::paths::Layout;

    const VM: VmId = VmId(0x57eb_0001);
    const OP: OpId = OpId(0x0c03);

    /// Parameters of a `vm.stop` as builds before versioned resume payloads wrote them (the
    /// same text is pinned in replay-tests/golden/resume-parameters.pins). No process, so the
    /// roll-forward signals nothing on this machine.
    const LEGACY: &str = r#"{"vm_id":"0000000057eb0001","name":"web","from":"running","process":null,"stop_timeout_ms":30000,"reason":null,"tap":"bt57eb0001"}"#;
    /// The same, from the builds before VMs had taps (no `tap`, no `reason`).
    const LEGACY_BEFORE_TAPS: &str = r#"{"vm_id":"0000000057eb0001","name":"web","from":"running","process":null,"stop_timeout_ms":30000}"#;

    fn runner(root: &Path) -> Runner {
        std::fs::create_dir_all(Layout::rooted(root).vm_dir(VM)).expect("the VM's directory");
        crate::operations::testing::runner(crate::operations::testing::memory_journal(), root)
    }

    /// A running VM, and a `vm.stop` of it with `parameters` that bangerd left after its
    /// first step (the state a crash in `shutdown` leaves).
    async fn interrupted_stop(runner: &Runner, parameters: &str) {
        let target = Target::Vm {
            vm_id: VM,
            name: "web".into(),
        };
        let spec = VmSpec {
            image: "debian-12".into(),
            kernel: "6.1".into(),
            vcpus: 1,
            memory_mib: 256,
            root_disk_mib: 1024,
            work_disk_mib: 64,
        };
        let state = |from, to| {
            Event::VmStateChanged(VmStateChanged {
                vm_id: VM,
                from,
                to,
            })
        };
        runner
            .journal()
            .append(vec![
                NewEvent::new(Event::VmDefined(VmDefined {
                    vm_id: VM,
                    name: "web".into(),
                    spec,
                })),
                NewEvent::new(state(VmState::Creating, VmState::Running)),
                NewEvent::in_op(
                    OP,
                    Event::OperationStarted(OperationStarted {
                        kind: OpKind::VmStop,
                        target,
                        parameters: parameters.to_owned(),
                    }),
                ),
                NewEvent::in_op(OP, state(VmState::Running, VmState::Stopping)),
                NewEvent::in_op(
                    OP,
                    Event::StepStarted(StepStarted {
                        step: "sync-guest".into(),
                        intent: Vec::new(),
                    }),
                ),
                NewEvent::in_op(
                    OP,
                    Event::StepSucceeded(banger_events::StepSucceeded {
                        step: "sync-guest".into(),
                        produced: Vec::new(),
                    }),
                ),
                NewEvent::in_op(
                    OP,
                    Event::StepStarted(StepStarted {
                        step: "shutdown".into(),
                        intent: Vec::new(),
                    }),
                ),
            ])
            .await
            .expect("append");
    }

    /// The names of the events recovery appended for `OP`, after the interrupted run's.
    fn recorded_after_crash(runner: &Runner) -> Vec<String> {
        let journal = runner.journal();
        let events = journal
            .read(Seq(1), journal.last_seq(), 1000)
            .expect("read");
        let decided = events
            .iter()
            .position(|e| matches!(e.event, Event::RecoveryDecided(_)))
            .expect("recovery recorded its decision");
        events[decided..]
            .iter()
            .filter(|e| e.op_id == Some(OP))
            .map(|e| match &e.event {
                Event::StepStarted(s) => format!("start {}", s.step),
                Event::StepSucceeded(s) => format!("ok {}", s.step),
                Event::UndoFailed(s) => format!("undo-fail {}", s.step),
                Event::VmStateChanged(s) => format!("vm {}", s.to),
                other => other.name().to_owned(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_stop_recorded_with_the_parameters_of_older_builds_rolls_forward() {
        let current = StopState::from_parameters(LEGACY).expect("legacy decodes");
        // Today's writer, for comparison: the versioned payload of the same state.
        for parameters in [LEGACY, LEGACY_BEFORE_TAPS, &current.parameters()] {
            let dir = tempfile::tempdir().unwrap();
            let runner = runner(dir.path());
            interrupted_stop(&runner, parameters).await;

            let report = recover(&runner).await.expect("recovery runs");
            assert_eq!(
                report,
                [Recovered {
                    op_id: OP,
                    kind: OpKind::VmStop,
                    decision: RecoveryDecision::RollForward,
                    outcome: Outcome::Succeeded,
                }],
                "{parameters}"
            );
            assert_eq!(
                recorded_after_crash(&runner),
                [
                    "recovery_decided",
                    "start shutdown",
                    "ok shutdown",
                    "start release-sockets",
                    "ok release-sockets",
                    "vm stopped",
                    "operation_succeeded",
                ],
                "{parameters}"
            );
            let view = runner.journal().view();
            assert_eq!(view.vms[&VM].state, VmState::Stopped, "{parameters}");
        }
    }

    #[tokio::test]
    async fn parameters_that_do_not_decode_leave_the_operation_stuck_saying_why() {
        let other_vm = LEGACY.replace("57eb0001", "57eb0002");
        let cases = [
            // Cut short: a torn write, or a hand-edited log.
            (
                &LEGACY[..40],
                "cannot resume from what the log recorded: the parameters are not JSON: EOF while parsing",
            ),
            (
                r#"{"resume":"stop.v7"}"#,
                "the resume payload does not decode: unknown variant `stop.v7`, expected `stop.v1`",
            ),
            (
                r#"{"vm_id":"0000000057eb0001","name":"web"}"#,
                "do not decode: missing field `from`",
            ),
            (
                other_vm.as_str(),
                "its parameters are about vm 0000000057eb0002, but it targets vm 0000000057eb0001",
            ),
        ];
        for (parameters, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let runner = runner(dir.path());
            interrupted_stop(&runner, parameters).await;

            let report = recover(&runner).await.expect("recovery runs");
            let [Recovered { outcome, .. }] = report.as_slice() else {
                panic!("{parameters}: one operation recovered, not {report:?}");
            };
            let Outcome::Stuck { step, error } = outcome else {
                panic!("{parameters}: stuck, not {outcome:?}");
            };
            assert_eq!(step, "shutdown", "{parameters}");
            assert!(error.contains(expected), "{parameters}: {error}");
            // Nothing ran: the operation went straight from the decision to stuck.
            assert_eq!(
                recorded_after_crash(&runner),
                ["recovery_decided", "undo-fail shutdown", "operation_stuck"],
                "{parameters}"
            );
            let view = runner.journal().view();
            let op = &view.operations[&OP];
            assert_eq!(op.status, OpStatus::Stuck, "{parameters}");
            assert!(
                op.error.as_deref().is_some_and(|e| e.contains(expected)),
                "{parameters}: {:?}",
                op.error
            );
            assert_eq!(view.vms[&VM].state, VmState::Stopping, "{parameters}");
        }
    }
}
