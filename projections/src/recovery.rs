//! Crash recovery, decided as data: [`plan_recovery`] turns the state after the last event into
//! one action for every operation that has no terminal event. The daemon carries the actions
//! out (through its step tables) and records each decision as a `RecoveryDecided` event.
//!
//! # The table
//!
//! Policy by operation kind ([`policy`]):
//!
//! | Operation kind                                      | Policy       | Why                                       |
//! |-----------------------------------------------------|--------------|-------------------------------------------|
//! | `vm.create`, `vm.start`, `vm.restart`, `vm.set`     | roll back    | half a VM is worse than none; the user retries |
//! | `image.register`, `image.pull`, `image.promote`     | roll back    | a half-written image must not be published |
//! | `kernel.import`, `kernel.pull`                      | roll back    | same, for kernels                         |
//! | `vm.stop`, `vm.kill`, `vm.delete`                   | roll forward | the user asked for less; finish removing  |
//! | `image.delete`, `image.cache.prune`, `kernel.remove`| roll forward | same                                      |
//! | `teardown`                                          | roll forward | same                                      |
//! | `tap.fill`                                          | roll back    | a spare tap not in the ledger is a leak   |
//! | `vm.workspace.import`, `vm.workspace.export`        | roll back    | an export puts the host files it replaced back; an import's guest files stay for the next import to reconcile |
//!
//! `vm.restart` is a stop followed by a start; it is treated as its start half. The daemon's
//! undo table has nothing to undo for the stop half's steps, so rolling back a restart leaves
//! the VM stopped.
//!
//! Action by operation status (`action_for`):
//!
//! | Status        | Policy       | Action                                                     |
//! |---------------|--------------|------------------------------------------------------------|
//! | `running`     | roll back    | [`RecoveryAction::RollBack`]: undo steps, newest first     |
//! | `running`     | roll forward | [`RecoveryAction::RollForward`]: completed steps + resume point |
//! | `rolling_back`| either       | [`RecoveryAction::ResumeUndo`]: finish the undo already begun |
//! | `stuck`       | either       | none; listed in [`RecoveryPlan::stuck`] for the daemon to report |
//! | `succeeded`, `rolled_back` | — | none: finished                                        |
//!
//! An operation already rolling back finishes rolling back whatever its kind: the daemon
//! decided that while it knew why, and undoing is always allowed to complete.
//!
//! Which steps an undo covers, by step status ([`undo_needed`]):
//!
//! | Step status    | Undo? | Why                                                           |
//! |----------------|-------|---------------------------------------------------------------|
//! | `started`      | yes   | the side effect may have happened; its intent lists what to remove |
//! | `succeeded`    | yes   | it happened; its output lists what to remove               |
//! | `failed`       | yes   | a failed step may have left part of its effect             |
//! | `undoing`      | yes   | the crash came mid-undo; undos are idempotent              |
//! | `undo_failed`  | yes   | the daemon died before declaring the operation stuck; retry |
//! | `undone`       | no    | already undone                                             |
//!
//! Where a roll-forward resumes, by step status ([`forward`]): `succeeded` steps are reported
//! as completed; the first step in any other status (`started` or `failed` in practice) is
//! where the daemon resumes, re-running it (every step's `do` is an idempotent ensure). With no
//! such step, the daemon continues after the last completed step.
//!
//! Invariants: every unresolved operation gets exactly one action or one `stuck` entry; the
//! plan is a pure function of the state (no IO, no clock), ordered by when each operation
//! started, so the same log always recovers the same way.

use banger_events::{Handle, OpId, OpKind, RecoveryDecision, Target};
use serde::{Deserialize, Serialize};

use crate::Projections;
use crate::operations::{OpStatus, OperationView, StepStatus, StepView};

/// What to do about every unfinished operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPlan {
    /// One per running or rolling-back operation, oldest first.
    pub actions: Vec<RecoveryAction>,
    /// Stuck operations, oldest first: no action, but the daemon reports them.
    pub stuck: Vec<OpId>,
}

impl RecoveryPlan {
    /// True when there is nothing to recover and nothing stuck.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.stuck.is_empty()
    }
}

/// How to finish one operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RecoveryAction {
    /// Undo these steps, in this order (newest first), then record the operation rolled back.
    RollBack {
        op_id: OpId,
        kind: OpKind,
        target: Target,
        undo: Vec<UndoStep>,
    },
    /// The operation was already rolling back: undo these remaining steps, in this order.
    ResumeUndo {
        op_id: OpId,
        kind: OpKind,
        target: Target,
        undo: Vec<UndoStep>,
    },
    /// Re-run the operation's steps from `resume_from` (or from after the last of `completed`
    /// when `None`), then record it succeeded.
    RollForward {
        op_id: OpId,
        kind: OpKind,
        target: Target,
        /// Names of the steps that succeeded, in the order they ran.
        completed: Vec<String>,
        resume_from: Option<String>,
    },
}

/// One step to undo, with every handle it may have created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoStep {
    pub step: String,
    /// What it produced, then what it intended and did not report producing; no duplicates.
    pub handles: Vec<Handle>,
}

impl RecoveryAction {
    pub fn op_id(&self) -> OpId {
        match self {
            RecoveryAction::RollBack { op_id, .. }
            | RecoveryAction::ResumeUndo { op_id, .. }
            | RecoveryAction::RollForward { op_id, .. } => *op_id,
        }
    }

    pub fn kind(&self) -> OpKind {
        match self {
            RecoveryAction::RollBack { kind, .. }
            | RecoveryAction::ResumeUndo { kind, .. }
            | RecoveryAction::RollForward { kind, .. } => *kind,
        }
    }

    pub fn target(&self) -> &Target {
        match self {
            RecoveryAction::RollBack { target, .. }
            | RecoveryAction::ResumeUndo { target, .. }
            | RecoveryAction::RollForward { target, .. } => target,
        }
    }

    /// The decision to record in `RecoveryDecided`.
    pub fn decision(&self) -> RecoveryDecision {
        match self {
            RecoveryAction::RollBack { .. } => RecoveryDecision::RollBack,
            RecoveryAction::ResumeUndo { .. } => RecoveryDecision::ResumeUndo,
            RecoveryAction::RollForward { .. } => RecoveryDecision::RollForward,
        }
    }
}

/// Which way an interrupted operation of a kind is finished. The first table above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    RollBack,
    RollForward,
}

/// The first table of the module documentation, row for row.
pub fn policy(kind: OpKind) -> Policy {
    match kind {
        OpKind::VmCreate | OpKind::VmStart | OpKind::VmRestart | OpKind::VmSet => Policy::RollBack,
        OpKind::ImageRegister | OpKind::ImagePull | OpKind::ImagePromote => Policy::RollBack,
        OpKind::KernelImport | OpKind::KernelPull => Policy::RollBack,
        OpKind::VmStop | OpKind::VmKill | OpKind::VmDelete => Policy::RollForward,
        OpKind::ImageDelete | OpKind::ImageCachePrune | OpKind::KernelRemove => Policy::RollForward,
        OpKind::Teardown => Policy::RollForward,
        OpKind::TapFill => Policy::RollBack,
        OpKind::WorkspaceImport | OpKind::WorkspaceExport => Policy::RollBack,
    }
}

/// The plan for `state`: see the module documentation.
pub fn plan_recovery(state: &Projections) -> RecoveryPlan {
    let mut unresolved: Vec<&OperationView> = state.unresolved().collect();
    unresolved.sort_by_key(|op| (op.started_seq, op.op_id));
    let mut plan = RecoveryPlan::default();
    for op in unresolved {
        match action_for(op) {
            Some(action) => plan.actions.push(action),
            None if op.status == OpStatus::Stuck => plan.stuck.push(op.op_id),
            None => {}
        }
    }
    plan
}

/// The second table of the module documentation, row for row.
fn action_for(op: &OperationView) -> Option<RecoveryAction> {
    let (op_id, kind, target) = (op.op_id, op.kind, op.target.clone());
    match (op.status, policy(op.kind)) {
        (OpStatus::Running, Policy::RollBack) => Some(RecoveryAction::RollBack {
            op_id,
            kind,
            target,
            undo: undo_list(&op.steps),
        }),
        (OpStatus::Running, Policy::RollForward) => {
            let mut completed = Vec::new();
            let mut resume_from = None;
            for step in &op.steps {
                match forward(step.status) {
                    Forward::Completed => completed.push(step.name.clone()),
                    Forward::ResumeHere => {
                        if resume_from.is_none() {
                            resume_from = Some(step.name.clone());
                        }
                    }
                }
            }
            Some(RecoveryAction::RollForward {
                op_id,
                kind,
                target,
                completed,
                resume_from,
            })
        }
        (OpStatus::RollingBack, _) => Some(RecoveryAction::ResumeUndo {
            op_id,
            kind,
            target,
            undo: undo_list(&op.steps),
        }),
        (OpStatus::Stuck | OpStatus::Succeeded | OpStatus::RolledBack, _) => None,
    }
}

/// The third table of the module documentation, row for row.
pub fn undo_needed(status: StepStatus) -> bool {
    match status {
        StepStatus::Started => true,
        StepStatus::Succeeded => true,
        StepStatus::Failed => true,
        StepStatus::Undoing => true,
        StepStatus::UndoFailed => true,
        StepStatus::Undone => false,
    }
}

/// Where a step leaves a roll-forward: the last paragraph of the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    Completed,
    ResumeHere,
}

pub fn forward(status: StepStatus) -> Forward {
    match status {
        StepStatus::Succeeded => Forward::Completed,
        StepStatus::Started
        | StepStatus::Failed
        | StepStatus::Undoing
        | StepStatus::Undone
        | StepStatus::UndoFailed => Forward::ResumeHere,
    }
}

/// The steps still to undo, newest first, each with its handles. Recovery's rollbacks use
/// it, and so does `banger ops retry` for a stuck operation.
pub fn undo_list(steps: &[StepView]) -> Vec<UndoStep> {
    steps
        .iter()
        .rev()
        .filter(|step| undo_needed(step.status))
        .map(|step| {
            let mut handles = Vec::with_capacity(step.produced.len() + step.intent.len());
            for handle in step.produced.iter().chain(&step.intent) {
                if !handles.contains(handle) {
                    handles.push(handle.clone());
                }
            }
            UndoStep {
                step: step.name.clone(),
                handles,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;
    use banger_events::*;

    const OP: OpId = OpId(0x10);

    fn target_for(kind: OpKind) -> Target {
        match kind.as_str().split('.').next() {
            Some("vm") => vm_target(VmId(1), "dev"),
            Some("image") => Target::Image {
                name: "debian".into(),
            },
            Some("kernel") => Target::Kernel { name: "6.1".into() },
            _ => Target::Host,
        }
    }

    /// An operation of `kind` whose steps `a` and `b` succeeded, then `events` (about step
    /// `c` and the undo), and no terminal event.
    fn interrupted(kind: OpKind, events: Vec<Event>) -> Projections {
        let mut log = Log::new();
        let op = Some(OP);
        log.push(op, op_started(kind, target_for(kind)));
        log.push(op, step_started("a", vec![file("/a")]));
        log.push(op, step_succeeded("a", vec![file("/a")]));
        log.push(op, step_started("b", vec![tap("tb")]));
        log.push(op, step_succeeded("b", vec![tap("tb"), process(9, 90)]));
        for event in events {
            log.push(op, event);
        }
        log.fold()
    }

    fn undo_names(action: &RecoveryAction) -> Vec<&str> {
        match action {
            RecoveryAction::RollBack { undo, .. } | RecoveryAction::ResumeUndo { undo, .. } => {
                undo.iter().map(|u| u.step.as_str()).collect()
            }
            RecoveryAction::RollForward { .. } => panic!("not an undo: {action:?}"),
        }
    }

    fn single_action(state: &Projections) -> RecoveryAction {
        let plan = plan_recovery(state);
        assert!(plan.stuck.is_empty());
        assert_eq!(plan.actions.len(), 1, "{plan:?}");
        plan.actions.into_iter().next().unwrap()
    }

    /// The step situations the tables distinguish, as events after steps a and b succeeded.
    fn situations() -> Vec<(&'static str, Vec<Event>)> {
        vec![
            ("all steps succeeded", vec![]),
            (
                "c started, not finished",
                vec![step_started("c", vec![file("/c")])],
            ),
            (
                "c failed",
                vec![
                    step_started("c", vec![file("/c")]),
                    step_failed("c", "boom"),
                ],
            ),
        ]
    }

    #[test]
    fn policy_table_covers_every_kind() {
        let roll_back = [
            OpKind::VmCreate,
            OpKind::VmStart,
            OpKind::VmRestart,
            OpKind::VmSet,
            OpKind::ImageRegister,
            OpKind::ImagePull,
            OpKind::ImagePromote,
            OpKind::KernelImport,
            OpKind::KernelPull,
            OpKind::TapFill,
            OpKind::WorkspaceImport,
            OpKind::WorkspaceExport,
        ];
        for kind in OpKind::ALL {
            let expected = if roll_back.contains(&kind) {
                Policy::RollBack
            } else {
                Policy::RollForward
            };
            assert_eq!(policy(kind), expected, "{kind}");
        }
    }

    #[test]
    fn roll_back_kinds_undo_every_touched_step_newest_first() {
        for kind in OpKind::ALL
            .into_iter()
            .filter(|k| policy(*k) == Policy::RollBack)
        {
            for (situation, events) in situations() {
                let action = single_action(&interrupted(kind, events.clone()));
                assert_eq!(
                    action.decision(),
                    RecoveryDecision::RollBack,
                    "{kind} {situation}"
                );
                assert_eq!(action.op_id(), OP);
                assert_eq!(action.kind(), kind);
                assert_eq!(action.target(), &target_for(kind));
                let expected = if events.is_empty() {
                    vec!["b", "a"]
                } else {
                    vec!["c", "b", "a"]
                };
                assert_eq!(undo_names(&action), expected, "{kind} {situation}");
            }
        }
    }

    #[test]
    fn undo_handles_are_produced_then_intent_without_duplicates() {
        let state = interrupted(
            OpKind::VmStart,
            vec![step_started("c", vec![file("/c1"), file("/c2")])],
        );
        let RecoveryAction::RollBack { undo, .. } = single_action(&state) else {
            panic!("expected a rollback");
        };
        assert_eq!(
            undo,
            vec![
                UndoStep {
                    step: "c".into(),
                    handles: vec![file("/c1"), file("/c2")],
                },
                UndoStep {
                    step: "b".into(),
                    handles: vec![tap("tb"), process(9, 90)],
                },
                UndoStep {
                    step: "a".into(),
                    handles: vec![file("/a")],
                },
            ]
        );
    }

    #[test]
    fn roll_forward_kinds_report_completed_steps_and_the_resume_point() {
        for kind in OpKind::ALL
            .into_iter()
            .filter(|k| policy(*k) == Policy::RollForward)
        {
            for (situation, events) in situations() {
                let resumes = !events.is_empty();
                let action = single_action(&interrupted(kind, events));
                assert_eq!(
                    action,
                    RecoveryAction::RollForward {
                        op_id: OP,
                        kind,
                        target: target_for(kind),
                        completed: vec!["a".into(), "b".into()],
                        resume_from: resumes.then(|| "c".into()),
                    },
                    "{kind} {situation}"
                );
                assert_eq!(action.decision(), RecoveryDecision::RollForward);
            }
        }
    }

    #[test]
    fn an_operation_with_no_steps_still_gets_an_action() {
        for kind in OpKind::ALL {
            let mut log = Log::new();
            log.push(Some(OP), op_started(kind, target_for(kind)));
            let action = single_action(&log.fold());
            match action {
                RecoveryAction::RollBack { undo, .. } => assert!(undo.is_empty()),
                RecoveryAction::RollForward {
                    completed,
                    resume_from,
                    ..
                } => assert!(completed.is_empty() && resume_from.is_none()),
                RecoveryAction::ResumeUndo { .. } => panic!("{kind}: nothing was undoing"),
            }
        }
    }

    #[test]
    fn mid_undo_resumes_with_the_steps_not_yet_undone_for_every_kind() {
        for kind in OpKind::ALL {
            // c failed; c undone; b's undo started and the daemon died.
            let state = interrupted(
                kind,
                vec![
                    step_started("c", vec![file("/c")]),
                    step_failed("c", "boom"),
                    undo_started("c"),
                    undo_succeeded("c"),
                    undo_started("b"),
                ],
            );
            let action = single_action(&state);
            assert_eq!(action.decision(), RecoveryDecision::ResumeUndo, "{kind}");
            assert_eq!(undo_names(&action), vec!["b", "a"], "{kind}");
        }
    }

    #[test]
    fn an_undo_failed_without_stuck_is_retried() {
        let state = interrupted(
            OpKind::ImagePull,
            vec![undo_started("b"), undo_failed("b", "EBUSY")],
        );
        assert_eq!(undo_names(&single_action(&state)), vec!["b", "a"]);
    }

    #[test]
    fn stuck_operations_are_listed_not_acted_on() {
        for kind in OpKind::ALL {
            let state = interrupted(
                kind,
                vec![
                    undo_started("b"),
                    undo_failed("b", "EBUSY"),
                    op_stuck("b", "EBUSY"),
                ],
            );
            let plan = plan_recovery(&state);
            assert!(plan.actions.is_empty(), "{kind}");
            assert_eq!(plan.stuck, vec![OP], "{kind}");
        }
    }

    #[test]
    fn finished_operations_need_nothing() {
        let mut log = Log::new();
        log.create_vm(OpId(1), VmId(1), "dev");
        log.push(Some(OpId(2)), op_started(OpKind::ImagePull, Target::Host));
        log.push(
            Some(OpId(2)),
            Event::OperationRolledBack(OperationRolledBack { reason: "x".into() }),
        );
        let plan = plan_recovery(&log.fold());
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn actions_follow_the_order_operations_started_in() {
        let mut log = Log::new();
        // Op ids deliberately out of order with start order.
        for (op, kind) in [
            (OpId(30), OpKind::VmDelete),
            (OpId(10), OpKind::VmCreate),
            (OpId(20), OpKind::ImagePull),
        ] {
            log.push(Some(op), op_started(kind, target_for(kind)));
        }
        log.push(Some(OpId(40)), op_started(OpKind::KernelPull, Target::Host));
        log.push(Some(OpId(40)), op_stuck("x", "y"));
        log.push(
            Some(OpId(5)),
            op_started(OpKind::KernelRemove, Target::Host),
        );
        log.push(Some(OpId(5)), op_stuck("x", "y"));
        let plan = plan_recovery(&log.fold());
        let order: Vec<OpId> = plan.actions.iter().map(RecoveryAction::op_id).collect();
        assert_eq!(order, vec![OpId(30), OpId(10), OpId(20)]);
        assert_eq!(plan.stuck, vec![OpId(40), OpId(5)]);
    }

    #[test]
    fn plan_serializes_with_an_action_tag() {
        let state = interrupted(OpKind::VmDelete, vec![]);
        let json = serde_json::to_value(plan_recovery(&state)).unwrap();
        assert_eq!(json["actions"][0]["action"], "roll_forward");
        assert_eq!(json["actions"][0]["kind"], "vm.delete");
        let back: RecoveryPlan = serde_json::from_value(json).unwrap();
        assert_eq!(back, plan_recovery(&state));
    }
}
