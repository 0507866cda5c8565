//! `tap.fill`: tops up the pool of spare taps, so that a new VM's `network` step takes a tap
//! that already exists instead of waiting for the root helper.
//!
//! | step        | intent                       | ensure                                            | undo                |
//! |-------------|------------------------------|---------------------------------------------------|---------------------|
//! | `make-taps` | taps `bt…` (fresh random names) | each tap exists, owned by this user, on the bridge (banger-helper) | remove them |
//!
//! Domain events: one `HandleAcquired { owner: Daemon, handle: Tap }` per tap with
//! `OperationSucceeded`; that ledger entry is what makes a tap a spare. Recovery rolls an
//! interrupted fill back (a tap the ledger does not hold would leak).
//!
//! The pool's life, all of it in the log:
//!
//! ```text
//!  tap.fill ──▶ owner Daemon (spare) ──vm.create `allocate` names it──▶ reserved by that create
//!                     ▲                                                   │ succeeded: HandleAcquired
//!                     └────────────── rolled back (nothing to undo) ◀─────┤ owner Vm (the VM's tap)
//!                                                                         ▼
//!                                                vm.delete `release-tap` removes it
//! ```
//!
//! A spare is free when the ledger gives it to the daemon, no unresolved operation's step
//! names it (a create that took it and has not ended), and no create of this process has it
//! reserved ([`free_taps`]).

use std::collections::{BTreeSet, HashSet};

use banger_events::{Event, Handle, HandleAcquired, OpKind, Owner, Target};
use banger_projections::Projections;
use serde::{Deserialize, Serialize};

use super::vm_common::release_taps;
use super::{BoxFuture, OpCx, OperationKind, Step, StepError};

pub struct TapFill;

/// The taps one fill makes, named before the operation starts (and recorded in its
/// parameters and its step's intent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FillState {
    pub taps: Vec<String>,
}

const STEPS: &[&dyn Step<FillState>] = &[&MakeTaps];

impl OperationKind for TapFill {
    const KIND: OpKind = OpKind::TapFill;
    type State = FillState;

    fn steps() -> &'static [&'static dyn Step<FillState>] {
        STEPS
    }

    fn finish(_: &OpCx<'_>, state: &FillState) -> Vec<Event> {
        state
            .taps
            .iter()
            .map(|name| {
                Event::HandleAcquired(HandleAcquired {
                    owner: Owner::Daemon,
                    handle: Handle::Tap { name: name.clone() },
                })
            })
            .collect()
    }
}

/// What a fill targets: the host (one fill at a time).
pub fn target() -> Target {
    Target::Host
}

struct MakeTaps;

impl Step<FillState> for MakeTaps {
    fn name(&self) -> &'static str {
        "make-taps"
    }

    fn intent(&self, _: &OpCx<'_>, state: &FillState) -> Vec<Handle> {
        state
            .taps
            .iter()
            .map(|name| Handle::Tap { name: name.clone() })
            .collect()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut FillState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            for name in &state.taps {
                cx.network
                    .ensure_tap(name)
                    .await
                    .map_err(|error| StepError::Other(error.to_string()))?;
            }
            Ok(self.intent(cx, state))
        })
    }

    fn undo<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        handles: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(release_taps(cx, handles))
    }
}

/// The spare taps free to take, sorted: the daemon's taps in the ledger, less those an
/// unresolved operation's steps name and those in `reserved`.
pub fn free_taps(view: &Projections, reserved: &HashSet<String>) -> Vec<String> {
    let mut busy: HashSet<&str> = reserved.iter().map(String::as_str).collect();
    for op in view.unresolved() {
        for step in &op.steps {
            for handle in step.intent.iter().chain(&step.produced) {
                if let Handle::Tap { name } = handle {
                    busy.insert(name);
                }
            }
        }
    }
    let free: BTreeSet<String> = view
        .handles_of(Owner::Daemon)
        .filter_map(|(handle, _)| match handle {
            Handle::Tap { name } if !busy.contains(name.as_str()) => Some(name.clone()),
            _ => None,
        })
        .collect();
    free.into_iter().collect()
}

/// Every tap the ledger gives to the daemon (spare or reserved).
pub fn pool_taps(view: &Projections) -> Vec<String> {
    view.handles_of(Owner::Daemon)
        .filter_map(|(handle, _)| match handle {
            Handle::Tap { name } => Some(name.clone()),
            _ => None,
        })
        .collect()
}
