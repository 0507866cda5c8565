//! Keeps `network.tap_pool` spare taps made, so that a new VM's `network` step finds its tap
//! ready instead of waiting for the root helper. The pool lives in the log: a spare is a tap
//! the ledger gives to the daemon (see [`crate::operations::tap_fill`]).
//!
//! A top-up runs after every create that succeeded, and at startup (after recovery) when the
//! pool is in use — the ledger has spares or VMs; a host that never ran a VM gets no taps
//! from banger until it asks for one. It first
//! releases, with an event, every spare the host no longer has (a reboot removes taps), then
//! runs one `tap.fill` operation for what is missing. Fills target the host, so two top-ups
//! never run at once: a second one finds the host claimed and leaves the work to the first,
//! which looks again until the pool is full. A failed fill (no helper, say) is logged and not
//! retried until the next trigger: creates then make their own taps, and say why if they
//! cannot.

use std::sync::Arc;

use banger_events::{Event, Handle, HandleReleased, NewEvent, VmId};
use banger_projections::Projections;

use super::Daemon;
use crate::host::network::{interface_exists, tap_name};
use crate::operations::tap_fill::{self, FillState, TapFill};
use crate::operations::{OpError, OperationKind};

/// Whether banger runs VMs here (it has VMs or spare taps), so that the pool is kept full.
pub fn in_use(view: &Projections) -> bool {
    !view.vms.is_empty() || !tap_fill::pool_taps(view).is_empty()
}

/// Starts a top-up in the background (tracked, so shutdown waits for it).
pub fn spawn_top_up(daemon: &Arc<Daemon>) {
    if daemon.vms.config.network.tap_pool == 0 {
        return;
    }
    let running = daemon.clone();
    daemon.ops.spawn(async move {
        if let Err(error) = top_up(&running).await {
            tracing::warn!(%error, "could not top up the pool of spare taps; new VMs will make their own");
        }
    });
}

/// Fills the pool up to its size; see the module documentation.
pub async fn top_up(daemon: &Daemon) -> Result<(), OpError> {
    release_vanished(daemon).await?;
    loop {
        let missing = {
            let free = tap_fill::free_taps(&daemon.journal.view(), &daemon.vms.reserved_taps());
            daemon
                .vms
                .config
                .network
                .tap_pool
                .saturating_sub(free.len())
        };
        if missing == 0 || daemon.shutdown.is_cancelled() {
            return Ok(());
        }
        let taps = fresh_names(daemon, missing);
        let op_id = daemon.ids.op_id();
        let claim = match daemon
            .runner
            .claim(op_id, TapFill::KIND, tap_fill::target(), Vec::new())
        {
            Ok(claim) => claim,
            // Another top-up holds the host; it keeps going until the pool is full.
            Err(OpError::Busy(_)) => return Ok(()),
            Err(error) => return Err(error),
        };
        let state = FillState { taps };
        let parameters = serde_json::to_string(&state).unwrap_or_default();
        daemon
            .runner
            .run::<TapFill>(&claim, parameters, state)
            .await?;
    }
}

/// Releases the spares the host no longer has, so that the pool is made again.
async fn release_vanished(daemon: &Daemon) -> Result<(), OpError> {
    let gone: Vec<NewEvent> = tap_fill::pool_taps(&daemon.journal.view())
        .into_iter()
        .filter(|name| !interface_exists(name))
        .map(|name| {
            tracing::info!(tap = %name, "a spare tap is gone from the host; releasing it");
            NewEvent::new(Event::HandleReleased(HandleReleased {
                handle: Handle::Tap { name },
            }))
        })
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    daemon
        .journal
        .append(gone)
        .await
        .map(drop)
        .map_err(|error| {
            OpError::Internal(format!(
                "cannot record the spare taps that are gone: {error}"
            ))
        })
}

/// `count` tap names nobody uses: random, so that they cannot be confused with a VM's own
/// `bt<vm id>`, and checked against the ledger and the host.
fn fresh_names(daemon: &Daemon, count: usize) -> Vec<String> {
    let view = daemon.journal.view();
    let mut names: Vec<String> = Vec::with_capacity(count);
    while names.len() < count {
        let name = tap_name(VmId(daemon.ids.next_u64()));
        let taken = names.contains(&name)
            || interface_exists(&name)
            || view
                .handles
                .contains_key(&Handle::Tap { name: name.clone() });
        if !taken {
            names.push(name);
        }
    }
    names
}
