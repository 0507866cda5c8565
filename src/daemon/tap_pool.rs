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
use crate::operations::vm_common::VmHost;
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
        let missing = missing_spares(&daemon.vms);
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

/// How many spare taps the pool lacks: its size less the spares neither an unresolved
/// operation nor a running create of this process holds.
fn missing_spares(host: &VmHost) -> usize {
    // The reservations first: no lock is taken while a view guard is held (a create holds the
    // reservations' lock while it reads the view, so the other order can deadlock as soon as
    // the journal's writer waits for the view).
    let reserved = host.reserved_taps();
    let free = tap_fill::free_taps(&host.journal.view(), &reserved);
    host.config.network.tap_pool.saturating_sub(free.len())
}

/// Releases the spares the host no longer has, so that the pool is made again. A spare a
/// create took meanwhile (its `allocate` step recorded it) is left to that create: the release
/// is appended only if every spare it names is still free where the sequence number is
/// assigned, and otherwise waits for the next top-up.
async fn release_vanished(daemon: &Daemon) -> Result<(), OpError> {
    // Copied out of the view before looking at the host: no IO under a view guard.
    let reserved = daemon.vms.reserved_taps();
    let spares = tap_fill::free_taps(&daemon.journal.view(), &reserved);
    let gone: Vec<String> = spares
        .into_iter()
        .filter(|name| !interface_exists(name))
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    for name in &gone {
        tracing::info!(tap = %name, "a spare tap is gone from the host; releasing it");
    }
    let events = gone
        .iter()
        .map(|name| {
            NewEvent::new(Event::HandleReleased(HandleReleased {
                handle: Handle::Tap { name: name.clone() },
            }))
        })
        .collect();
    let recorded = daemon
        .journal
        .append_if(events, move |view: &Projections| {
            let free = tap_fill::free_taps(view, &reserved);
            if gone.iter().all(|name| free.contains(name)) {
                Ok(())
            } else {
                Err(())
            }
        })
        .await
        .map_err(|error| {
            OpError::Internal(format!(
                "cannot record the spare taps that are gone: {error}"
            ))
        })?;
    if recorded.is_err() {
        tracing::info!(
            "a spare tap that is gone was taken by a create meanwhile; leaving it to that create"
        );
    }
    Ok(())
}

/// `count` tap names nobody uses: random, so that they cannot be confused with a VM's own
/// `bt<vm id>`, and checked against the ledger and the host.
fn fresh_names(daemon: &Daemon, count: usize) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(count);
    while names.len() < count {
        let name = tap_name(VmId(daemon.ids.next_u64()));
        // The ledger (a short view guard) and then the host (no guard held while looking).
        let in_ledger = daemon
            .journal
            .view()
            .handles
            .contains_key(&Handle::Tap { name: name.clone() });
        if !in_ledger && !names.contains(&name) && !interface_exists(&name) {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use banger_events::{HandleAcquired, OpId, Owner};

    use super::*;
    use crate::config::Config;
    use crate::host::backends::Backends;
    use crate::host::guest_agent::AgentLinks;
    use crate::paths::Layout;

    /// Pool top-ups, creates taking spares and appends, all at once, never deadlock. The
    /// deadlock this pins: a top-up held a view guard while waiting for the reservations' lock,
    /// a create held that lock while waiting for a view guard, and the journal's writer,
    /// waiting for the write lock, kept the create's read from being granted (std's `RwLock`
    /// queues new readers behind a waiting writer), so every append hung.
    #[test]
    fn top_ups_creates_and_appends_never_deadlock() {
        const ROUNDS: usize = 20_000;
        let journal = crate::operations::testing::memory_journal();
        let mut config = Config::default();
        config.network.tap_pool = 4;
        let host = Arc::new(VmHost::new(
            Arc::new(Backends::firecracker_at("/nonexistent/firecracker")),
            Arc::new(AgentLinks::new()),
            config,
            journal.clone(),
            Layout::rooted(std::path::Path::new("/nonexistent")),
        ));
        let done = Arc::new(AtomicBool::new(false));
        let workers = vec![
            {
                let host = host.clone();
                std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        std::hint::black_box(missing_spares(&host));
                    }
                })
            },
            {
                let host = host.clone();
                std::thread::spawn(move || {
                    for round in 0..ROUNDS as u64 {
                        let op_id = OpId(round);
                        std::hint::black_box(host.take_spare_tap(op_id));
                        host.release_reservation(op_id);
                    }
                })
            },
            {
                let journal = journal.clone();
                std::thread::spawn(move || {
                    for round in 0..ROUNDS as u64 {
                        let tap = Handle::Tap {
                            name: tap_name(VmId(round % 8)),
                        };
                        let event = if round % 16 < 8 {
                            Event::HandleAcquired(HandleAcquired {
                                owner: Owner::Daemon,
                                handle: tap,
                            })
                        } else {
                            Event::HandleReleased(HandleReleased { handle: tap })
                        };
                        journal.append_blocking(vec![NewEvent::new(event)]).unwrap();
                    }
                })
            },
        ];
        let watchdog = {
            let done = done.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !done.load(Ordering::SeqCst) {
                    if Instant::now() > deadline {
                        // A deadlocked test would otherwise hang the whole run.
                        eprintln!("deadlock: top-ups, creates and appends stopped making progress");
                        std::process::abort();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        for worker in workers {
            worker.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        watchdog.join().unwrap();
    }
}
