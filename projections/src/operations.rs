//! Operations: every operation the log has seen, step by step, finished ones included.
//!
//! Lifecycle events are correlated to their operation by the envelope's `op_id`; one for an
//! operation id this state has not seen start (or with no op id) is ignored, and so is any
//! event for an operation that already finished.
//!
//! Operation status:
//! ```text
//!                 OperationSucceeded
//!   Running ──────────────────────────────────────────────▶ Succeeded
//!      │                 OperationRolledBack
//!      ├──────────────────────────────────────────────────▶ RolledBack
//!      │ UndoStarted                                            ▲
//!      ▼                 OperationRolledBack                    │
//!   RollingBack ────────────────────────────────────────────────┤
//!      │ OperationStuck (an undo failed)                        │
//!      ▼                 OperationRolledBack / Succeeded        │
//!   Stuck ──────────────── (someone intervened) ────────────────┘
//! ```
//! Succeeded and RolledBack are final. Stuck is not: it waits for an intervention, keeps
//! recording the step events of that intervention, and blocks new operations on its target
//! until a terminal event resolves it. `OperationStuck` can also arrive from Running.
//!
//! Step status:
//! ```text
//!   StepStarted        StepSucceeded                UndoStarted       UndoSucceeded
//!   ──────────▶ Started ────────────▶ Succeeded ─────────────▶ Undoing ────────────▶ Undone
//!                  │ StepFailed                        ▲          │ UndoFailed
//!                  └──────────▶ Failed ────────────────┘          └──────────▶ UndoFailed
//! ```
//! A step is found by name, scanning from the newest (an operation has a handful). A
//! `StepStarted` for a name already present is a retry (roll-forward re-runs a step): the entry
//! goes back to Started and its intent grows, so an undo still covers what the first attempt
//! meant to create. A `StepSucceeded` / `StepFailed` for a step never started is recorded as a
//! new entry, because its side effect may exist and recovery must know about it.
//!
//! No IO; the daemon's step tables give the steps their meaning, this module only keeps score.

use std::collections::BTreeMap;
use std::fmt;

use banger_events::{
    Envelope, Handle, OpId, OpKind, OperationRolledBack, OperationStarted, OperationStuck,
    RecoveryDecided, RecoveryDecision, Seq, StepFailed, StepStarted, StepSucceeded, Target,
    UndoFailed, UndoStarted, UndoSucceeded,
};
use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::Projections;
use crate::vms::ProcessRef;

/// One operation and its steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct OperationView {
    pub op_id: OpId,
    pub kind: OpKind,
    pub target: Target,
    /// The request's parameters as JSON.
    pub parameters: String,
    pub status: OpStatus,
    /// In the order they were first started.
    pub steps: Vec<StepView>,
    pub started_seq: Seq,
    pub started_at_unix_ms: u64,
    /// Sequence number of the terminal event (a stuck operation has one too).
    pub finished_seq: Option<Seq>,
    pub finished_at_unix_ms: Option<u64>,
    /// Why it failed: the failing step's error, or the stuck undo's, or the rollback reason.
    pub error: Option<String>,
    /// What crash recovery decided for it, when it had to.
    pub recovery: Option<RecoveryDecision>,
}

/// Where an operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    Running,
    RollingBack,
    Succeeded,
    RolledBack,
    Stuck,
}

impl OpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OpStatus::Running => "running",
            OpStatus::RollingBack => "rolling_back",
            OpStatus::Succeeded => "succeeded",
            OpStatus::RolledBack => "rolled_back",
            OpStatus::Stuck => "stuck",
        }
    }
}

impl fmt::Display for OpStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct StepView {
    pub name: String,
    pub status: StepStatus,
    /// What the step said it was about to create, before it tried.
    pub intent: Vec<Handle>,
    /// What it reported creating, once it succeeded.
    pub produced: Vec<Handle>,
    /// Why it (or its undo) failed.
    pub error: Option<String>,
}

/// Where a step stands. See the diagram in the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Started,
    Succeeded,
    Failed,
    Undoing,
    Undone,
    UndoFailed,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Started => "started",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Undoing => "undoing",
            StepStatus::Undone => "undone",
            StepStatus::UndoFailed => "undo_failed",
        }
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl OperationView {
    /// The step the operation is at: the newest step while going forward; while rolling back
    /// (or stuck), the newest step not yet undone — the one being undone or next in line.
    pub fn current_step(&self) -> Option<&StepView> {
        match self.status {
            OpStatus::RollingBack | OpStatus::Stuck => self
                .steps
                .iter()
                .rev()
                .find(|step| step.status != StepStatus::Undone)
                .or(self.steps.last()),
            _ => self.steps.last(),
        }
    }

    /// Succeeded or rolled back: nothing more will happen to it. A stuck operation is *not*
    /// finished; it waits for someone.
    pub fn is_finished(&self) -> bool {
        matches!(self.status, OpStatus::Succeeded | OpStatus::RolledBack)
    }

    /// Running or rolling back.
    pub fn is_in_flight(&self) -> bool {
        matches!(self.status, OpStatus::Running | OpStatus::RollingBack)
    }

    /// In flight or stuck: it still blocks its target.
    pub fn is_unresolved(&self) -> bool {
        !self.is_finished()
    }

    /// The newest step called `name`.
    pub fn step(&self, name: &str) -> Option<&StepView> {
        self.steps.iter().rev().find(|step| step.name == name)
    }

    /// The newest step called `name`, created with `status` if there is none. (Always
    /// `Some`; an `Option` rather than an index that could panic.)
    fn step_or_insert(&mut self, name: &str, status: StepStatus) -> Option<&mut StepView> {
        let index = match self.steps.iter().rposition(|step| step.name == name) {
            Some(index) => index,
            None => {
                self.steps.push(StepView {
                    name: name.to_owned(),
                    status,
                    intent: Vec::new(),
                    produced: Vec::new(),
                    error: None,
                });
                self.steps.len().saturating_sub(1)
            }
        };
        self.steps.get_mut(index)
    }

    fn step_mut(&mut self, name: &str) -> Option<&mut StepView> {
        self.steps.iter_mut().rev().find(|step| step.name == name)
    }

    fn finish(&mut self, status: OpStatus, envelope: &Envelope) {
        self.status = status;
        self.finished_seq = Some(envelope.seq);
        self.finished_at_unix_ms = Some(envelope.at_unix_ms);
    }
}

fn extend_unique(into: &mut Vec<Handle>, from: &[Handle]) {
    for handle in from {
        if !into.contains(handle) {
            into.push(handle.clone());
        }
    }
}

/// The unfinished operation `op_id`, if the envelope names one. A free function over the map,
/// so that callers can still reach the VMs while holding the operation.
fn open_op(
    operations: &mut BTreeMap<OpId, OperationView>,
    op_id: Option<OpId>,
) -> Option<&mut OperationView> {
    operations.get_mut(&op_id?).filter(|op| !op.is_finished())
}

impl Projections {
    pub(crate) fn operation_started(&mut self, envelope: &Envelope, e: &OperationStarted) {
        let Some(op_id) = envelope.op_id else {
            return;
        };
        if self.operations.contains_key(&op_id) {
            // Op ids are never reused; a repeated start is a duplicate and the first stands.
            return;
        }
        self.operations.insert(
            op_id,
            OperationView {
                op_id,
                kind: e.kind,
                target: e.target.clone(),
                parameters: e.parameters.clone(),
                status: OpStatus::Running,
                steps: Vec::new(),
                started_seq: envelope.seq,
                started_at_unix_ms: envelope.at_unix_ms,
                finished_seq: None,
                finished_at_unix_ms: None,
                error: None,
                recovery: None,
            },
        );
        self.index.unresolved_ops.insert(op_id);
    }

    pub(crate) fn step_started(&mut self, op_id: Option<OpId>, e: &StepStarted) {
        let Some(op) = open_op(&mut self.operations, op_id) else {
            return;
        };
        let Some(step) = op.step_or_insert(&e.step, StepStatus::Started) else {
            return;
        };
        step.status = StepStatus::Started;
        step.error = None;
        extend_unique(&mut step.intent, &e.intent);
    }

    pub(crate) fn step_succeeded(&mut self, op_id: Option<OpId>, e: &StepSucceeded) {
        let Some(op) = open_op(&mut self.operations, op_id) else {
            return;
        };
        let Some(step) = op.step_or_insert(&e.step, StepStatus::Succeeded) else {
            return;
        };
        step.status = StepStatus::Succeeded;
        step.error = None;
        extend_unique(&mut step.produced, &e.produced);
        // A VM operation's step that launched a process launched the VM's VMM.
        if let Target::Vm { vm_id, .. } = op.target
            && let Some(process) = e
                .produced
                .iter()
                .find(|h| matches!(h, Handle::Process { .. }))
        {
            self.set_vm_process(vm_id, process);
        }
    }

    pub(crate) fn step_failed(&mut self, op_id: Option<OpId>, e: &StepFailed) {
        let Some(op) = open_op(&mut self.operations, op_id) else {
            return;
        };
        let Some(step) = op.step_or_insert(&e.step, StepStatus::Failed) else {
            return;
        };
        step.status = StepStatus::Failed;
        step.error = Some(e.error.clone());
        op.error = Some(e.error.clone());
    }

    pub(crate) fn undo_started(&mut self, op_id: Option<OpId>, e: &UndoStarted) {
        let Some(op) = open_op(&mut self.operations, op_id) else {
            return;
        };
        // A stuck operation stays stuck while someone retries its undo: only a terminal event
        // resolves it.
        if op.status == OpStatus::Running {
            op.status = OpStatus::RollingBack;
        }
        if let Some(step) = op.step_mut(&e.step) {
            step.status = StepStatus::Undoing;
        }
    }

    pub(crate) fn undo_succeeded(&mut self, op_id: Option<OpId>, e: &UndoSucceeded) {
        let Some(op) = open_op(&mut self.operations, op_id) else {
            return;
        };
        let vm_id = match op.target {
            Target::Vm { vm_id, .. } => Some(vm_id),
            _ => None,
        };
        let Some(step) = op.step_mut(&e.step) else {
            return;
        };
        step.status = StepStatus::Undone;
        // Undoing the step that launched the VM's process ended that process.
        let Some(vm_id) = vm_id else {
            return;
        };
        let Some(process) = self.vms.get(&vm_id).and_then(|vm| vm.process) else {
            return;
        };
        let was_this_steps = step
            .produced
            .iter()
            .chain(&step.intent)
            .any(|handle| Some(process) == ProcessRef::of(handle));
        if was_this_steps {
            self.clear_vm_process(vm_id, Some(process.pid));
        }
    }

    pub(crate) fn undo_failed(&mut self, op_id: Option<OpId>, e: &UndoFailed) {
        let Some(op) = open_op(&mut self.operations, op_id) else {
            return;
        };
        if op.status == OpStatus::Running {
            op.status = OpStatus::RollingBack;
        }
        if let Some(step) = op.step_mut(&e.step) {
            step.status = StepStatus::UndoFailed;
            step.error = Some(e.error.clone());
        }
    }

    pub(crate) fn operation_succeeded(&mut self, envelope: &Envelope) {
        let Some(op) = open_op(&mut self.operations, envelope.op_id) else {
            return;
        };
        op.finish(OpStatus::Succeeded, envelope);
        let op_id = op.op_id;
        self.retire(op_id);
    }

    /// Moves a just-finished operation from the unresolved set to the retirement queue, and
    /// forgets the oldest finished operations beyond the retention limit.
    fn retire(&mut self, op_id: OpId) {
        self.index.unresolved_ops.remove(&op_id);
        self.index.finished_ops.push_back(op_id);
        while self.index.finished_ops.len() > crate::RETAINED_FINISHED_OPERATIONS {
            if let Some(oldest) = self.index.finished_ops.pop_front() {
                self.operations.remove(&oldest);
            }
        }
    }

    pub(crate) fn operation_rolled_back(&mut self, envelope: &Envelope, e: &OperationRolledBack) {
        let Some(op) = open_op(&mut self.operations, envelope.op_id) else {
            return;
        };
        op.finish(OpStatus::RolledBack, envelope);
        // The failing step's error says more than the summary; keep it when there is one.
        if op.error.is_none() {
            op.error = Some(e.reason.clone());
        }
        let op_id = op.op_id;
        self.retire(op_id);
    }

    pub(crate) fn operation_stuck(&mut self, envelope: &Envelope, e: &OperationStuck) {
        let Some(op) = open_op(&mut self.operations, envelope.op_id) else {
            return;
        };
        op.finish(OpStatus::Stuck, envelope);
        op.error = Some(e.error.clone());
        if let Some(step) = op.step_mut(&e.step)
            && step.status != StepStatus::Undone
        {
            step.status = StepStatus::UndoFailed;
            step.error = Some(e.error.clone());
        }
        // Still unresolved: it stays in the index.
    }

    pub(crate) fn recovery_decided(&mut self, e: &RecoveryDecided) {
        if let Some(op) = self.operations.get_mut(&e.op_id) {
            op.recovery = Some(e.decision);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;
    use banger_events::*;

    const OP: Option<OpId> = Some(OpId(7));

    fn pull_started(log: &mut Log) -> Seq {
        log.push(
            OP,
            op_started(
                OpKind::ImagePull,
                Target::Image {
                    name: "debian".into(),
                },
            ),
        )
    }

    fn op(state: &Projections) -> &OperationView {
        &state.operations[&OpId(7)]
    }

    #[test]
    fn started_operation_is_running_and_in_flight() {
        let mut log = Log::new();
        let seq = pull_started(&mut log);
        let state = log.fold();
        let op = op(&state);
        assert_eq!(op.kind, OpKind::ImagePull);
        assert_eq!(op.status, OpStatus::Running);
        assert_eq!(op.started_seq, seq);
        assert_eq!(op.started_at_unix_ms, T0 + seq.0);
        assert_eq!(op.parameters, "{}");
        assert!(op.current_step().is_none());
        assert!(!op.is_finished() && op.is_in_flight());
        assert_eq!(state.in_flight().count(), 1);
        assert_eq!(state.stuck().count(), 0);
    }

    #[test]
    fn steps_progress_and_succeeded_op_is_finished() {
        let mut log = Log::new();
        pull_started(&mut log);
        log.push(OP, step_started("fetch", vec![file("/cache/blob")]));
        let state = log.fold();
        let step = op(&state).current_step().unwrap();
        assert_eq!(
            (step.name.as_str(), step.status),
            ("fetch", StepStatus::Started)
        );
        assert_eq!(step.intent, vec![file("/cache/blob")]);

        log.push(OP, step_succeeded("fetch", vec![file("/cache/blob")]));
        log.push(OP, step_started("unpack", vec![]));
        log.push(OP, step_succeeded("unpack", vec![file("/img.ext4")]));
        let end = log.push(OP, Event::OperationSucceeded(OperationSucceeded {}));
        let state = log.fold();
        let op = op(&state);
        assert_eq!(op.status, OpStatus::Succeeded);
        assert_eq!(op.finished_seq, Some(end));
        assert_eq!(op.finished_at_unix_ms, Some(T0 + end.0));
        assert!(op.is_finished());
        let names: Vec<_> = op
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.status))
            .collect();
        assert_eq!(
            names,
            vec![
                ("fetch", StepStatus::Succeeded),
                ("unpack", StepStatus::Succeeded)
            ]
        );
        assert_eq!(op.current_step().unwrap().produced, vec![file("/img.ext4")]);
        assert_eq!(state.in_flight().count(), 0);
        // Finished operations are kept.
        assert_eq!(state.operations.len(), 1);
    }

    #[test]
    fn failure_then_rollback() {
        let mut log = Log::new();
        pull_started(&mut log);
        log.push(OP, step_started("fetch", vec![]));
        log.push(OP, step_succeeded("fetch", vec![file("/blob")]));
        log.push(OP, step_started("unpack", vec![file("/img.ext4")]));
        log.push(OP, step_failed("unpack", "disk full"));
        let state = log.fold();
        assert_eq!(op(&state).error.as_deref(), Some("disk full"));
        assert_eq!(op(&state).status, OpStatus::Running);
        assert_eq!(
            op(&state).step("unpack").unwrap().status,
            StepStatus::Failed
        );

        log.push(OP, undo_started("unpack"));
        let state = log.fold();
        assert_eq!(op(&state).status, OpStatus::RollingBack);
        assert_eq!(
            op(&state).current_step().unwrap().status,
            StepStatus::Undoing
        );
        assert_eq!(state.in_flight().count(), 1);

        log.push(OP, undo_succeeded("unpack"));
        log.push(OP, undo_started("fetch"));
        let state = log.fold();
        let current = op(&state).current_step().unwrap();
        assert_eq!(
            (current.name.as_str(), current.status),
            ("fetch", StepStatus::Undoing)
        );

        log.push(OP, undo_succeeded("fetch"));
        log.push(
            OP,
            Event::OperationRolledBack(OperationRolledBack {
                reason: "unpack failed".into(),
            }),
        );
        let state = log.fold();
        let op = op(&state);
        assert_eq!(op.status, OpStatus::RolledBack);
        assert!(op.is_finished());
        assert_eq!(op.error.as_deref(), Some("disk full"), "the cause is kept");
        assert!(op.steps.iter().all(|s| s.status == StepStatus::Undone));
    }

    #[test]
    fn rollback_without_a_failing_step_records_its_reason() {
        let mut log = Log::new();
        pull_started(&mut log);
        log.push(
            OP,
            Event::OperationRolledBack(OperationRolledBack {
                reason: "cancelled".into(),
            }),
        );
        assert_eq!(op(&log.fold()).error.as_deref(), Some("cancelled"));
    }

    #[test]
    fn failed_undo_makes_the_op_stuck_until_resolved() {
        let mut log = Log::new();
        pull_started(&mut log);
        log.push(OP, step_started("fetch", vec![]));
        log.push(OP, step_failed("fetch", "404"));
        log.push(OP, undo_started("fetch"));
        log.push(OP, undo_failed("fetch", "EBUSY"));
        let state = log.fold();
        assert_eq!(
            op(&state).step("fetch").unwrap().status,
            StepStatus::UndoFailed
        );
        assert_eq!(
            op(&state).step("fetch").unwrap().error.as_deref(),
            Some("EBUSY")
        );
        assert_eq!(op(&state).status, OpStatus::RollingBack);

        let stuck_at = log.push(OP, op_stuck("fetch", "EBUSY"));
        let state = log.fold();
        let stuck = op(&state);
        assert_eq!(stuck.status, OpStatus::Stuck);
        assert_eq!(stuck.error.as_deref(), Some("EBUSY"));
        assert_eq!(stuck.finished_seq, Some(stuck_at));
        assert!(!stuck.is_finished() && !stuck.is_in_flight() && stuck.is_unresolved());
        assert_eq!(stuck.current_step().unwrap().name, "fetch");
        assert_eq!(state.in_flight().count(), 0);
        assert_eq!(state.stuck().count(), 1);
        assert!(
            state
                .blocking_op_for(&Target::Image {
                    name: "debian".into()
                })
                .is_some()
        );

        // Someone retries the undo: still stuck until the terminal event.
        log.push(OP, undo_started("fetch"));
        assert_eq!(op(&log.fold()).status, OpStatus::Stuck);
        log.push(OP, undo_succeeded("fetch"));
        log.push(
            OP,
            Event::OperationRolledBack(OperationRolledBack {
                reason: "resolved by hand".into(),
            }),
        );
        let state = log.fold();
        assert_eq!(op(&state).status, OpStatus::RolledBack);
        assert_eq!(state.stuck().count(), 0);
        assert!(state.unresolved().next().is_none());
    }

    #[test]
    fn retried_step_keeps_one_entry_with_the_union_of_intents() {
        let mut log = Log::new();
        pull_started(&mut log);
        log.push(OP, step_started("fetch", vec![file("/a")]));
        log.push(OP, step_failed("fetch", "flaky"));
        log.push(OP, step_started("fetch", vec![file("/a"), file("/b")]));
        let state = log.fold();
        let op = op(&state);
        assert_eq!(op.steps.len(), 1);
        let step = &op.steps[0];
        assert_eq!(step.status, StepStatus::Started);
        assert_eq!(step.error, None);
        assert_eq!(step.intent, vec![file("/a"), file("/b")]);
    }

    #[test]
    fn events_for_unknown_or_finished_ops_are_ignored() {
        let mut log = Log::new();
        // Before its OperationStarted, and without any op id.
        log.push(OP, step_succeeded("early", vec![]));
        log.push(None, step_started("anonymous", vec![]));
        log.push(None, Event::OperationSucceeded(OperationSucceeded {}));
        pull_started(&mut log);
        assert!(op(&log.fold()).steps.is_empty());

        log.push(OP, Event::OperationSucceeded(OperationSucceeded {}));
        log.push(OP, step_started("late", vec![]));
        log.push(OP, op_stuck("late", "x"));
        log.push(
            OP,
            Event::OperationRolledBack(OperationRolledBack { reason: "x".into() }),
        );
        let state = log.fold();
        assert!(op(&state).steps.is_empty());
        assert_eq!(op(&state).status, OpStatus::Succeeded);

        // A repeated OperationStarted does not reset the op.
        log.push(OP, op_started(OpKind::VmKill, Target::Host));
        assert_eq!(op(&log.fold()).kind, OpKind::ImagePull);
    }

    #[test]
    fn step_results_without_a_start_are_still_recorded() {
        let mut log = Log::new();
        pull_started(&mut log);
        log.push(OP, step_succeeded("fetch", vec![file("/blob")]));
        log.push(OP, step_failed("unpack", "bad tar"));
        log.push(OP, undo_succeeded("never-started"));
        let state = log.fold();
        let steps: Vec<_> = op(&state)
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.status))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("fetch", StepStatus::Succeeded),
                ("unpack", StepStatus::Failed)
            ]
        );
    }

    #[test]
    fn recovery_decision_is_recorded() {
        let mut log = Log::new();
        pull_started(&mut log);
        log.push(
            None,
            Event::RecoveryDecided(RecoveryDecided {
                op_id: OpId(7),
                decision: RecoveryDecision::RollBack,
                reason: "daemon restarted".into(),
            }),
        );
        assert_eq!(op(&log.fold()).recovery, Some(RecoveryDecision::RollBack));
    }

    #[test]
    fn statuses_print_as_they_serialize() {
        for status in [
            OpStatus::Running,
            OpStatus::RollingBack,
            OpStatus::Succeeded,
            OpStatus::RolledBack,
            OpStatus::Stuck,
        ] {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::String(status.to_string())
            );
        }
        for status in [
            StepStatus::Started,
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Undoing,
            StepStatus::Undone,
            StepStatus::UndoFailed,
        ] {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::String(status.to_string())
            );
        }
        assert_eq!(OpStatus::RollingBack.to_string(), "rolling_back");
    }

    #[test]
    fn operation_view_json_round_trips() {
        let mut log = Log::new();
        pull_started(&mut log);
        log.push(OP, step_started("fetch", vec![file("/a")]));
        let state = log.fold();
        let json = serde_json::to_string(op(&state)).unwrap();
        let back: OperationView = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, op(&state));
    }
}
