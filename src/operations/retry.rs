//! `daemon.operations.retry` (`banger ops retry OP_ID`): runs the pending undos of a stuck
//! operation again.
//!
//! An operation is stuck when one of its undos failed: the log says which steps are not undone
//! yet and which handles each one recorded, and the operation blocks its target until someone
//! intervenes. Once the cause is dealt with (a mount released, a permission fixed, a daemon
//! restarted without the failpoint that failed the undo), a retry runs, newest first, every
//! step whose undo is still needed ([`banger_projections::recovery::undo_list`], the list
//! crash recovery uses) through [`Runner::undo_steps`], the one undo pass that live rollback
//! and recovery share. So it records what they record, under the stuck operation's own op id:
//!
//! ```text
//!  stuck ──▶ UndoStarted ─▶ undo(handles) ─▶ UndoSucceeded … ─▶ OperationRolledBack (+ the
//!    ▲                            │                              kind's rolled_back_events)
//!    └── OperationStuck ◀─ UndoFailed ◀─ error                   ⇒ the target is free again
//! ```
//!
//! The projection keeps the operation stuck (and its target blocked) until one of the two
//! terminal events lands, so a retry that dies half-way leaves it stuck, and retrying again is
//! always safe: undos are idempotent.
//!
//! A retry is not an operation of its own — it finishes one — but it claims the operation's
//! target ([`Runner::claim_stuck`]) like one, so two retries, or a retry and anything else,
//! never run on one target at once.

use banger_events::{Handle, OpId};
use banger_projections::recovery::undo_list;
use banger_projections::{OpStatus, OperationView, UndoStep};

use super::kinds::{self, RetryRequest};
use super::{OpCx, OpError, OperationKind, Runner, Step, UndoOutcome, find_step};

/// Retries the undos of stuck operation `op_id`. `Ok` when they all succeeded and the
/// operation is rolled back; [`OpError::StillStuck`] when one failed again.
pub async fn retry(runner: &Runner, op_id: OpId) -> Result<(), OpError> {
    let (kind, target) = {
        let view = runner.journal().view();
        let op = stuck_op(view.operations.get(&op_id), op_id)?;
        (op.kind, op.target.clone())
    };
    let _claim = runner.claim_stuck(op_id, kind, target.clone())?;
    // Read again under the claim: another retry may have finished it since the first look.
    let (started, pending, cause) = {
        let view = runner.journal().view();
        let op = stuck_op(view.operations.get(&op_id), op_id)?;
        let cause = match (op.current_step(), op.error.as_deref()) {
            (Some(step), Some(error)) => format!("undoing step {} had failed: {error}", step.name),
            _ => "an undo had failed".to_owned(),
        };
        (op.started_seq, undo_list(&op.steps), cause)
    };
    tracing::info!(%op_id, %kind, steps = pending.len(), "retrying the undos of a stuck operation");
    let entry = kinds::find(kind).ok_or_else(|| {
        OpError::Unavailable(format!(
            "this bangerd has no step table for {kind} operations, so it cannot undo operation {op_id}; a newer bangerd may"
        ))
    })?;
    let request = RetryRequest {
        op_id,
        target: &target,
        started,
        pending,
        cause: &cause,
    };
    let outcome = (entry.retry)(runner, request).await?;
    match outcome {
        UndoOutcome::RolledBack => {
            tracing::info!(%op_id, "the retried undos succeeded; the operation is rolled back");
            Ok(())
        }
        UndoOutcome::Stuck { step, error } => Err(OpError::StillStuck { op_id, step, error }),
    }
}

/// The operation, when it is stuck; otherwise the error that says what it is instead.
fn stuck_op(op: Option<&OperationView>, op_id: OpId) -> Result<&OperationView, OpError> {
    let op = op.ok_or_else(|| {
        OpError::NotFound(format!("no operation {op_id}; see `banger ops --all`"))
    })?;
    if op.status != OpStatus::Stuck {
        return Err(OpError::WrongState(format!(
            "operation {op_id} ({}) is {}, not stuck; only a stuck operation's undos are retried (see `banger ops`)",
            op.kind, op.status
        )));
    }
    Ok(op)
}

/// Runs the pending undos of a stuck operation of kind `K` (reached through
/// [`kinds::KINDS`]).
pub(super) async fn undo_again<K: OperationKind>(
    runner: &Runner,
    request: RetryRequest<'_>,
) -> Result<UndoOutcome, OpError> {
    let RetryRequest {
        op_id,
        target,
        started,
        pending,
        cause,
    } = request;
    let mut steps: Vec<(&'static dyn Step<K::State>, Vec<Handle>)> =
        Vec::with_capacity(pending.len());
    for UndoStep { step, handles } in pending {
        let found = find_step::<K>(&step).ok_or_else(|| {
            // Nothing is recorded: the operation stays stuck exactly as it was.
            OpError::Unavailable(format!(
                "operation {op_id} needs step {step} undone, which this bangerd does not know; a bangerd that does can retry it"
            ))
        })?;
        steps.push((found, handles));
    }
    let vmm = runner.vmm_for(target);
    let cx = OpCx {
        op_id,
        kind: K::KIND,
        target,
        layout: runner.layout(),
        network: runner.network(),
        vmm: vmm.as_ref(),
        agents: runner.agents(),
    };
    let reason = format!("{cause}; rolled back by `banger ops retry`");
    runner
        .undo_steps(&cx, started, steps, &reason, K::rolled_back_events(target))
        .await
}
