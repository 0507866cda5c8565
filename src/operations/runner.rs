//! The step runner and the claim table. See the module documentation of
//! [`crate::operations`] for the event sequence and the invariants.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use banger_events::{
    Event, Handle, Health, Journal, NewEvent, OpId, OpKind, OperationRolledBack, OperationStarted,
    OperationStuck, OperationSucceeded, Seq, StepFailed, StepStarted, StepSucceeded, Target,
    UndoFailed, UndoStarted, UndoSucceeded,
};
use banger_projections::{OpStatus, Projections};

use super::failpoints::{Failpoints, Point};
use super::{OpCx, OpError, OperationKind, Step, StepError};
use crate::host::backends::Backends;
use crate::host::guest_agent::AgentLinks;
use crate::host::network::GuestNetwork;
use crate::host::vmm::Vmm;
use crate::paths::Layout;

/// Runs operations: claims their targets, executes their steps, records every step in the
/// log, and rolls back on failure. One per daemon, shared by every request.
pub struct Runner {
    journal: Arc<Journal<Projections>>,
    layout: Layout,
    network: Arc<GuestNetwork>,
    backends: Arc<Backends>,
    agents: Arc<AgentLinks>,
    failpoints: Failpoints,
    claims: Arc<ClaimTable>,
    closing: AtomicBool,
}

/// Targets held by operations running in this process.
#[derive(Default)]
struct ClaimTable {
    held: Mutex<HashMap<Target, Holder>>,
}

#[derive(Clone, Copy, Debug)]
enum Holder {
    /// The operation that acts on the target.
    Exclusive { op_id: OpId, kind: OpKind },
    /// How many running operations read the target and need it to stay as it is (an image
    /// being registered with a kernel keeps that kernel from being removed meanwhile).
    Shared { count: usize },
}

impl ClaimTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Target, Holder>> {
        // Every mutation is a single insert or remove, so a poisoned table is still whole.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The right to run one operation on a target. Dropping it releases the target (and the
/// shared claims), whether the operation succeeded, rolled back or got stuck.
pub struct Claim {
    pub op_id: OpId,
    pub kind: OpKind,
    pub target: Target,
    shared: Vec<Target>,
    table: Arc<ClaimTable>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut held = self.table.lock();
        held.remove(&self.target);
        for target in &self.shared {
            if let Some(Holder::Shared { count }) = held.get_mut(target) {
                *count -= 1;
                if *count == 0 {
                    held.remove(target);
                }
            }
        }
    }
}

/// What a step run left to undo: a step and the handles to undo it with.
struct Done<S: 'static> {
    step: &'static dyn Step<S>,
    handles: Vec<Handle>,
}

impl Runner {
    pub fn new(
        journal: Arc<Journal<Projections>>,
        layout: Layout,
        network: Arc<GuestNetwork>,
        backends: Arc<Backends>,
        agents: Arc<AgentLinks>,
        failpoints: Failpoints,
    ) -> Self {
        Runner {
            journal,
            layout,
            network,
            backends,
            agents,
            failpoints,
            claims: Arc::default(),
            closing: AtomicBool::new(false),
        }
    }

    pub fn journal(&self) -> &Arc<Journal<Projections>> {
        &self.journal
    }

    pub fn network(&self) -> &GuestNetwork {
        &self.network
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn backends(&self) -> &Arc<Backends> {
        &self.backends
    }

    pub fn agents(&self) -> &AgentLinks {
        &self.agents
    }

    /// The backend of `target`'s VM as the log records it (Firecracker for a VM that
    /// recorded none, and for targets that are no VM).
    pub fn vmm_for(&self, target: &Target) -> Arc<dyn Vmm> {
        let kind = match target {
            Target::Vm { vm_id, .. } => self
                .journal
                .view()
                .vms
                .get(vm_id)
                .map_or(banger_events::VmmKind::Firecracker, |vm| vm.vmm()),
            _ => banger_events::VmmKind::Firecracker,
        };
        self.backends.get(kind).clone()
    }

    pub fn failpoints(&self) -> &Failpoints {
        &self.failpoints
    }

    /// Refuses new operations from now on (the daemon is shutting down). Running ones finish.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Claims `target` for operation `op_id` of `kind`, and `shared` targets for reading.
    ///
    /// `busy` when another operation holds the target (or holds one of `shared` exclusively),
    /// or when the log has an unresolved (stuck, or never finished) operation on it;
    /// `unavailable` when the log is read-only or the daemon is shutting down. Check the
    /// request against the views *after* claiming: only then can nothing change under you.
    pub fn claim(
        &self,
        op_id: OpId,
        kind: OpKind,
        target: Target,
        shared: Vec<Target>,
    ) -> Result<Claim, OpError> {
        self.claim_except(op_id, kind, target, shared, None)
    }

    /// Claims the target of stuck operation `op_id` so that its undos can be run again
    /// (`banger ops retry`): as [`Runner::claim`], except that the stuck operation itself does
    /// not block its target — it is the one being finished. An operation running in this
    /// process, or an older unresolved one on the same target, still does.
    pub fn claim_stuck(&self, op_id: OpId, kind: OpKind, target: Target) -> Result<Claim, OpError> {
        self.claim_except(op_id, kind, target, Vec::new(), Some(op_id))
    }

    fn claim_except(
        &self,
        op_id: OpId,
        kind: OpKind,
        target: Target,
        shared: Vec<Target>,
        except: Option<OpId>,
    ) -> Result<Claim, OpError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(OpError::Unavailable(
                "bangerd is shutting down and takes no new operations; start it again and retry"
                    .into(),
            ));
        }
        if let Health::ReadOnly { reason } = self.journal.health() {
            return Err(OpError::Unavailable(format!(
                "bangerd cannot record operations: {reason}"
            )));
        }
        {
            let view = self.journal.view();
            for wanted in std::iter::once(&target).chain(&shared) {
                if let Some(op) = view.blocking_op_for(wanted)
                    && Some(op.op_id) != except
                {
                    let step = op
                        .current_step()
                        .map(|s| format!(" at step {}", s.name))
                        .unwrap_or_default();
                    let why = op.error.as_deref().unwrap_or("no error recorded");
                    return Err(OpError::Busy(match op.status {
                        OpStatus::Stuck => format!(
                            "{wanted} is blocked by stuck operation {} ({}{step}: {why}); deal with the cause, then run `banger ops retry {}` (see `banger ops`)",
                            op.op_id, op.kind, op.op_id
                        ),
                        _ => format!(
                            "{wanted} is busy: operation {} ({}) is unfinished{step}; see `banger ops`",
                            op.op_id, op.kind
                        ),
                    }));
                }
            }
        }
        let mut held = self.claims.lock();
        let busy = |target: &Target, holder: &Holder| match holder {
            Holder::Exclusive { op_id, kind } => OpError::Busy(format!(
                "{target} is busy: operation {op_id} ({kind}) is running on it; wait for it to finish (see `banger ops`) and retry"
            )),
            Holder::Shared { .. } => OpError::Busy(format!(
                "{target} is busy: an operation that uses it is running; wait for it to finish (see `banger ops`) and retry"
            )),
        };
        if let Some(holder) = held.get(&target) {
            return Err(busy(&target, holder));
        }
        for wanted in &shared {
            if let Some(holder @ Holder::Exclusive { .. }) = held.get(wanted) {
                return Err(busy(wanted, holder));
            }
        }
        held.insert(target.clone(), Holder::Exclusive { op_id, kind });
        for wanted in &shared {
            match held
                .entry(wanted.clone())
                .or_insert(Holder::Shared { count: 0 })
            {
                Holder::Shared { count } => *count += 1,
                // Checked above, under the same lock.
                Holder::Exclusive { .. } => {}
            }
        }
        Ok(Claim {
            op_id,
            kind,
            target,
            shared,
            table: self.claims.clone(),
        })
    }

    /// Runs operation `K` under `claim`: records it, runs every step, and on failure undoes
    /// what was done. Returns the final state on success.
    pub async fn run<K: OperationKind>(
        &self,
        claim: &Claim,
        parameters: String,
        mut state: K::State,
    ) -> Result<K::State, OpError> {
        debug_assert_eq!(claim.kind, K::KIND);
        let vmm = match K::vmm(&state) {
            Some(kind) => self.backends.get(kind).clone(),
            None => self.vmm_for(&claim.target),
        };
        let cx = OpCx {
            op_id: claim.op_id,
            kind: K::KIND,
            target: &claim.target,
            layout: &self.layout,
            network: &self.network,
            vmm: vmm.as_ref(),
            agents: &self.agents,
        };
        let mut opening = vec![Event::OperationStarted(OperationStarted {
            kind: K::KIND,
            target: claim.target.clone(),
            parameters,
        })];
        opening.extend(K::start_events(&cx, &state));
        let started = self.record(&cx, None, opening).await?;
        tracing::info!(kind = %K::KIND, target = %claim.target, "operation started");
        self.run_steps::<K>(&cx, started, &mut state, 0, Vec::new())
            .await?;
        Ok(state)
    }

    /// Finishes an operation that crash recovery decided to roll forward: runs the steps from
    /// index `resume_from` to the end. `completed` are the steps that had succeeded, with the
    /// handles they produced: if a resumed step fails, they are undone too. `state` is rebuilt
    /// by [`OperationKind::resume_state`].
    pub async fn roll_forward<K: OperationKind>(
        &self,
        cx: &OpCx<'_>,
        started: Seq,
        completed: Vec<(&'static dyn Step<K::State>, Vec<Handle>)>,
        resume_from: usize,
        mut state: K::State,
    ) -> Result<(), OpError> {
        let done = completed
            .into_iter()
            .map(|(step, handles)| Done { step, handles })
            .collect();
        self.run_steps::<K>(cx, started, &mut state, resume_from, done)
            .await
    }

    async fn run_steps<K: OperationKind>(
        &self,
        cx: &OpCx<'_>,
        started: Seq,
        state: &mut K::State,
        first: usize,
        mut done: Vec<Done<K::State>>,
    ) -> Result<(), OpError> {
        let steps = K::steps();
        for step in steps.iter().copied().skip(first) {
            let name = step.name();
            let intent = step.intent(cx, state);
            self.record(
                cx,
                Some(started),
                vec![Event::StepStarted(StepStarted {
                    step: name.to_owned(),
                    intent: intent.clone(),
                })],
            )
            .await?;
            tracing::debug!(step = name, ?intent, "step started");
            self.failpoints.crash_if_set(cx.kind, name, Point::Before);
            let result = if self.failpoints.is_set(cx.kind, name, Point::Error) {
                Err(StepError::Failpoint(Failpoints::name(
                    cx.kind,
                    name,
                    Point::Error,
                )))
            } else {
                step.ensure(cx, state).await
            };
            match result {
                Ok(produced) => {
                    self.failpoints.crash_if_set(cx.kind, name, Point::After);
                    self.record(
                        cx,
                        Some(started),
                        vec![Event::StepSucceeded(StepSucceeded {
                            step: name.to_owned(),
                            produced: produced.clone(),
                        })],
                    )
                    .await?;
                    tracing::debug!(step = name, ?produced, "step succeeded");
                    self.failpoints
                        .crash_if_set(cx.kind, name, Point::Succeeded);
                    done.push(Done {
                        step,
                        handles: produced,
                    });
                }
                Err(error) => {
                    let error = error.to_string();
                    tracing::warn!(step = name, %error, "step failed; rolling back");
                    self.record(
                        cx,
                        Some(started),
                        vec![Event::StepFailed(StepFailed {
                            step: name.to_owned(),
                            error: error.clone(),
                        })],
                    )
                    .await?;
                    // The failed step may have half-happened: undo it too, from its intent.
                    done.push(Done {
                        step,
                        handles: intent,
                    });
                    let undo: Vec<(&'static dyn Step<K::State>, Vec<Handle>)> = done
                        .into_iter()
                        .rev()
                        .map(|d| (d.step, d.handles))
                        .collect();
                    let reason = format!("step {name} failed: {error}");
                    let closing = K::rolled_back_events(cx.target);
                    return match self.undo_steps(cx, started, undo, &reason, closing).await? {
                        UndoOutcome::RolledBack => Err(OpError::Failed {
                            kind: cx.kind,
                            step: name.to_owned(),
                            error,
                            after: K::after_failure(cx.target),
                        }),
                        UndoOutcome::Stuck {
                            step,
                            error: undo_error,
                        } => Err(OpError::Stuck {
                            op_id: cx.op_id,
                            kind: cx.kind,
                            step: name.to_owned(),
                            error,
                            undo_step: step,
                            undo_error,
                        }),
                    };
                }
            }
        }
        let mut events = K::finish(cx, state);
        events.push(Event::OperationSucceeded(OperationSucceeded {}));
        self.record(cx, Some(started), events).await?;
        tracing::info!(kind = %cx.kind, target = %cx.target, "operation succeeded");
        Ok(())
    }

    /// Undoes `steps` in the order given (newest first), recording each undo, then ends the
    /// operation: `OperationRolledBack` with `reason`, or `OperationStuck` at the first undo
    /// that fails. Shared by in-process rollback and crash recovery. `closing` (the kind's
    /// [`OperationKind::rolled_back_events`]) goes in the commit of `OperationRolledBack`.
    pub async fn undo_steps<S: 'static>(
        &self,
        cx: &OpCx<'_>,
        started: Seq,
        steps: Vec<(&'static dyn Step<S>, Vec<Handle>)>,
        reason: &str,
        closing: Vec<Event>,
    ) -> Result<UndoOutcome, OpError> {
        for (step, handles) in steps {
            let name = step.name();
            self.record(
                cx,
                Some(started),
                vec![Event::UndoStarted(UndoStarted {
                    step: name.to_owned(),
                })],
            )
            .await?;
            self.failpoints
                .crash_if_set(cx.kind, name, Point::UndoBefore);
            let result = if self.failpoints.is_set(cx.kind, name, Point::UndoError) {
                Err(StepError::Failpoint(Failpoints::name(
                    cx.kind,
                    name,
                    Point::UndoError,
                )))
            } else {
                step.undo(cx, &handles).await
            };
            match result {
                Ok(()) => {
                    self.failpoints
                        .crash_if_set(cx.kind, name, Point::UndoAfter);
                    self.record(
                        cx,
                        Some(started),
                        vec![Event::UndoSucceeded(UndoSucceeded {
                            step: name.to_owned(),
                        })],
                    )
                    .await?;
                }
                Err(error) => {
                    let error = error.to_string();
                    tracing::error!(step = name, %error, "undo failed; the operation is stuck");
                    self.record(
                        cx,
                        Some(started),
                        vec![
                            Event::UndoFailed(UndoFailed {
                                step: name.to_owned(),
                                error: error.clone(),
                            }),
                            Event::OperationStuck(OperationStuck {
                                step: name.to_owned(),
                                error: error.clone(),
                            }),
                        ],
                    )
                    .await?;
                    return Ok(UndoOutcome::Stuck {
                        step: name.to_owned(),
                        error,
                    });
                }
            }
        }
        let mut events = vec![Event::OperationRolledBack(OperationRolledBack {
            reason: reason.to_owned(),
        })];
        events.extend(closing);
        self.record(cx, Some(started), events).await?;
        tracing::info!(kind = %cx.kind, target = %cx.target, %reason, "operation rolled back");
        Ok(UndoOutcome::RolledBack)
    }

    /// Appends `events` for `cx`'s operation and returns the sequence number of the last.
    pub(crate) async fn record(
        &self,
        cx: &OpCx<'_>,
        cause: Option<Seq>,
        events: Vec<Event>,
    ) -> Result<Seq, OpError> {
        let batch = events
            .into_iter()
            .map(|event| {
                let new = NewEvent::in_op(cx.op_id, event);
                match cause {
                    Some(seq) => new.caused_by(seq),
                    None => new,
                }
            })
            .collect();
        let appended = self.journal.append(batch).await.map_err(|error| {
            tracing::error!(%error, "cannot record an operation event; stopping the operation (recovery will finish it)");
            OpError::Log(error)
        })?;
        Ok(appended.last().map(|e| e.seq).unwrap_or_default())
    }
}

/// How an undo pass ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UndoOutcome {
    RolledBack,
    Stuck { step: String, error: String },
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::operations::BoxFuture;

    fn runner() -> Runner {
        crate::operations::testing::runner(
            crate::operations::testing::memory_journal(),
            Path::new("/nonexistent"),
        )
    }

    fn kernel(name: &str) -> Target {
        Target::Kernel { name: name.into() }
    }

    fn image(name: &str) -> Target {
        Target::Image { name: name.into() }
    }

    #[test]
    fn one_operation_per_target_and_shared_claims_exclude_owners() {
        let runner = runner();
        let import = runner
            .claim(OpId(1), OpKind::KernelImport, kernel("k"), vec![])
            .unwrap();
        let busy = runner.claim(OpId(2), OpKind::KernelRemove, kernel("k"), vec![]);
        assert!(
            matches!(&busy, Err(OpError::Busy(m)) if m.contains(&OpId(1).to_string())),
            "{:?}",
            busy.err()
        );
        // Reading a target that another operation owns is refused too.
        let reader = runner.claim(
            OpId(3),
            OpKind::ImageRegister,
            image("a"),
            vec![kernel("k")],
        );
        assert!(matches!(reader, Err(OpError::Busy(_))));
        drop(import);

        let a = runner
            .claim(
                OpId(3),
                OpKind::ImageRegister,
                image("a"),
                vec![kernel("k")],
            )
            .unwrap();
        let b = runner
            .claim(
                OpId(4),
                OpKind::ImageRegister,
                image("b"),
                vec![kernel("k")],
            )
            .unwrap();
        assert!(matches!(
            runner.claim(OpId(5), OpKind::KernelRemove, kernel("k"), vec![]),
            Err(OpError::Busy(_))
        ));
        drop(a);
        assert!(matches!(
            runner.claim(OpId(5), OpKind::KernelRemove, kernel("k"), vec![]),
            Err(OpError::Busy(_))
        ));
        drop(b);
        let remove = runner
            .claim(OpId(5), OpKind::KernelRemove, kernel("k"), vec![])
            .unwrap();
        drop(remove);

        runner.close();
        assert!(matches!(
            runner.claim(OpId(6), OpKind::KernelRemove, kernel("k"), vec![]),
            Err(OpError::Unavailable(_))
        ));
    }

    /// A toy operation: three steps that log what they do; the one named in `fail` fails.
    struct Toy;

    #[derive(Debug, Default)]
    struct ToyState {
        fail: &'static str,
        done: Vec<String>,
    }

    struct ToyStep(&'static str);

    static UNDONE: StdMutex<Vec<String>> = StdMutex::new(Vec::new());

    impl Step<ToyState> for ToyStep {
        fn name(&self) -> &'static str {
            self.0
        }

        fn intent(&self, _: &OpCx<'_>, _: &ToyState) -> Vec<Handle> {
            vec![Handle::File {
                path: format!("/intent/{}", self.0),
            }]
        }

        fn ensure<'a>(
            &'a self,
            _: &'a OpCx<'a>,
            state: &'a mut ToyState,
        ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
            Box::pin(async move {
                if state.fail == self.0 {
                    return Err(StepError::Other(format!("{} broke", self.0)));
                }
                state.done.push(self.0.to_owned());
                Ok(vec![Handle::File {
                    path: format!("/made/{}", self.0),
                }])
            })
        }

        fn undo<'a>(
            &'a self,
            cx: &'a OpCx<'a>,
            handles: &'a [Handle],
        ) -> BoxFuture<'a, Result<(), StepError>> {
            Box::pin(async move {
                if matches!(cx.target, Target::Kernel { name } if name == "undo-fails")
                    && self.0 == "b"
                {
                    return Err(StepError::Other("cannot undo b".into()));
                }
                let mut undone = UNDONE.lock().unwrap_or_else(|e| e.into_inner());
                undone.push(format!("{}:{:?}", self.0, handles));
                Ok(())
            })
        }
    }

    impl OperationKind for Toy {
        const KIND: OpKind = OpKind::KernelImport;
        type State = ToyState;

        fn steps() -> &'static [&'static dyn Step<ToyState>] {
            &[&ToyStep("a"), &ToyStep("b"), &ToyStep("c")]
        }

        fn finish(_: &OpCx<'_>, state: &ToyState) -> Vec<Event> {
            vec![Event::KernelRemoved(banger_events::KernelRemoved {
                name: state.done.join(","),
            })]
        }
    }

    fn names(runner: &Runner, op_id: OpId) -> Vec<String> {
        runner
            .journal
            .read(Seq(1), runner.journal.last_seq(), 1000)
            .unwrap()
            .into_iter()
            .filter(|e| e.op_id == Some(op_id))
            .map(|e| match &e.event {
                Event::StepStarted(s) => format!("start {}", s.step),
                Event::StepSucceeded(s) => format!("ok {}", s.step),
                Event::StepFailed(s) => format!("fail {}", s.step),
                Event::UndoStarted(s) => format!("undo {}", s.step),
                Event::UndoSucceeded(s) => format!("undone {}", s.step),
                Event::UndoFailed(s) => format!("undo-fail {}", s.step),
                other => other.name().to_owned(),
            })
            .collect()
    }

    #[tokio::test]
    async fn steps_run_in_order_and_failures_undo_in_reverse_with_the_failed_step_first() {
        let runner = runner();
        let claim = runner
            .claim(OpId(1), OpKind::KernelImport, kernel("ok"), vec![])
            .unwrap();
        let state = runner
            .run::<Toy>(&claim, "{}".into(), ToyState::default())
            .await
            .unwrap();
        assert_eq!(state.done, ["a", "b", "c"]);
        assert_eq!(
            names(&runner, OpId(1)),
            [
                "operation_started",
                "start a",
                "ok a",
                "start b",
                "ok b",
                "start c",
                "ok c",
                "kernel_removed",
                "operation_succeeded"
            ]
        );
        drop(claim);

        let claim = runner
            .claim(OpId(2), OpKind::KernelImport, kernel("fails"), vec![])
            .unwrap();
        let state = ToyState {
            fail: "c",
            ..ToyState::default()
        };
        let error = runner.run::<Toy>(&claim, "{}".into(), state).await;
        assert!(
            matches!(&error, Err(OpError::Failed { step, .. }) if step == "c"),
            "{error:?}"
        );
        assert_eq!(
            names(&runner, OpId(2)),
            [
                "operation_started",
                "start a",
                "ok a",
                "start b",
                "ok b",
                "start c",
                "fail c",
                "undo c",
                "undone c",
                "undo b",
                "undone b",
                "undo a",
                "undone a",
                "operation_rolled_back"
            ]
        );
        // The failed step is undone from its intent, the others from what they produced.
        let undone = UNDONE.lock().unwrap().clone();
        assert!(
            undone
                .iter()
                .any(|u| u.starts_with("c:") && u.contains("/intent/c"))
        );
        assert!(
            undone
                .iter()
                .any(|u| u.starts_with("a:") && u.contains("/made/a"))
        );
        drop(claim);

        let claim = runner
            .claim(OpId(3), OpKind::KernelImport, kernel("undo-fails"), vec![])
            .unwrap();
        let state = ToyState {
            fail: "c",
            ..ToyState::default()
        };
        let error = runner.run::<Toy>(&claim, "{}".into(), state).await;
        assert!(
            matches!(&error, Err(OpError::Stuck { undo_step, .. }) if undo_step == "b"),
            "{error:?}"
        );
        let events = names(&runner, OpId(3));
        assert_eq!(
            &events[events.len() - 3..],
            ["undo b", "undo-fail b", "operation_stuck"]
        );
        drop(claim);
        // A stuck operation blocks its target, even with no claim held.
        let blocked = runner.claim(OpId(4), OpKind::KernelRemove, kernel("undo-fails"), vec![]);
        assert!(
            matches!(&blocked, Err(OpError::Busy(m)) if m.contains("stuck")),
            "{:?}",
            blocked.err()
        );
    }
}
