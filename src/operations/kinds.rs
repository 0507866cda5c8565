//! The one registry of operation kinds: which kinds this build has a step table for, and how
//! recovery and `banger ops retry` reach each table. Adding a kind is its file (step table at
//! the top) plus one line in [`KINDS`]; nothing else matches on [`OpKind`] to find steps.
//!
//! A kind missing here is one this build cannot finish: recovery leaves such an operation
//! unresolved (it keeps blocking its target) and a retry says a newer bangerd is needed —
//! guessing at undos without their table would be worse. The test at the bottom makes every
//! `OpKind` either registered or listed as knowingly absent, so a new variant cannot be
//! forgotten.

use banger_events::{OpId, OpKind, Seq, Target};
use banger_projections::{RecoveryAction, UndoStep};

use super::image_cache_prune::ImageCachePrune;
use super::image_delete::ImageDelete;
use super::image_promote::ImagePromote;
use super::image_pull::ImagePull;
use super::image_register::ImageRegister;
use super::kernel_import::KernelImport;
use super::kernel_pull::KernelPull;
use super::kernel_remove::KernelRemove;
use super::recovery::{self, Outcome};
use super::retry;
use super::tap_fill::TapFill;
use super::vm_create::VmCreate;
use super::vm_delete::VmDelete;
use super::vm_kill::VmKill;
use super::vm_set::VmSet;
use super::vm_start::VmStart;
use super::vm_stop::VmStop;
use super::workspace_export::WorkspaceExport;
use super::workspace_import::WorkspaceImport;
use super::{BoxFuture, OpError, OperationKind, Runner, UndoOutcome};

/// Every kind this build can run, recover and retry. Whether recovery rolls a kind back or
/// forward is policy, decided from the log by `plan_recovery` (projections); this table only
/// says where the steps are.
pub const KINDS: &[KindEntry] = &[
    KindEntry::of::<KernelImport>(),
    KindEntry::of::<KernelPull>(),
    KindEntry::of::<KernelRemove>(),
    KindEntry::of::<ImageRegister>(),
    KindEntry::of::<ImageDelete>(),
    KindEntry::of::<ImagePull>(),
    KindEntry::of::<ImagePromote>(),
    KindEntry::of::<ImageCachePrune>(),
    KindEntry::of::<VmCreate>(),
    KindEntry::of::<VmStart>(),
    KindEntry::of::<VmStop>(),
    KindEntry::of::<VmKill>(),
    KindEntry::of::<VmDelete>(),
    KindEntry::of::<VmSet>(),
    KindEntry::of::<TapFill>(),
    KindEntry::of::<WorkspaceImport>(),
    KindEntry::of::<WorkspaceExport>(),
];

/// A stuck operation whose pending undos are to run again.
pub struct RetryRequest<'a> {
    pub op_id: OpId,
    pub target: &'a Target,
    /// Sequence number of its `OperationStarted` (the cause of the events a retry appends).
    pub started: Seq,
    /// Its steps still to undo, newest first, with the handles each recorded.
    pub pending: Vec<UndoStep>,
    /// Why it was stuck, for the reason recorded when it rolls back.
    pub cause: &'a str,
}

/// How to reach one kind's step table without naming its type.
#[derive(Clone, Copy)]
pub struct KindEntry {
    pub kind: OpKind,
    /// Carries out a recovery action (roll back, roll forward, resume an undo).
    pub recover: for<'a> fn(&'a Runner, RecoveryAction) -> BoxFuture<'a, Result<Outcome, OpError>>,
    /// Runs the pending undos of a stuck operation again.
    pub retry:
        for<'a> fn(&'a Runner, RetryRequest<'a>) -> BoxFuture<'a, Result<UndoOutcome, OpError>>,
}

impl KindEntry {
    const fn of<K: OperationKind>() -> KindEntry {
        KindEntry {
            kind: K::KIND,
            recover: recover_boxed::<K>,
            retry: retry_boxed::<K>,
        }
    }
}

fn recover_boxed<K: OperationKind>(
    runner: &Runner,
    action: RecoveryAction,
) -> BoxFuture<'_, Result<Outcome, OpError>> {
    Box::pin(recovery::recover_kind::<K>(runner, action))
}

fn retry_boxed<'a, K: OperationKind>(
    runner: &'a Runner,
    request: RetryRequest<'a>,
) -> BoxFuture<'a, Result<UndoOutcome, OpError>> {
    Box::pin(retry::undo_again::<K>(runner, request))
}

/// The entry of `kind`, when this build has its step table.
pub fn find(kind: OpKind) -> Option<&'static KindEntry> {
    KINDS.iter().find(|entry| entry.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind is registered once, or knowingly absent: adding an `OpKind` variant fails to
    /// compile here until someone decides which.
    #[test]
    fn every_kind_is_registered_or_knowingly_absent() {
        for entry in KINDS {
            assert_eq!(
                KINDS.iter().filter(|e| e.kind == entry.kind).count(),
                1,
                "{} is registered twice",
                entry.kind
            );
        }
        for kind in OpKind::ALL {
            let absent_on_purpose = match kind {
                // A restart runs as a stop and then a start, each recorded on its own.
                OpKind::VmRestart => true,
                // Its operation is not built yet.
                OpKind::Teardown => true,
                OpKind::VmCreate
                | OpKind::VmStart
                | OpKind::VmStop
                | OpKind::VmKill
                | OpKind::VmDelete
                | OpKind::VmSet
                | OpKind::ImageRegister
                | OpKind::ImageDelete
                | OpKind::ImagePull
                | OpKind::ImagePromote
                | OpKind::ImageCachePrune
                | OpKind::KernelImport
                | OpKind::KernelPull
                | OpKind::KernelRemove
                | OpKind::TapFill
                | OpKind::WorkspaceImport
                | OpKind::WorkspaceExport => false,
            };
            assert_eq!(
                find(kind).is_none(),
                absent_on_purpose,
                "{kind}: registered and listed as absent disagree"
            );
        }
    }
}
