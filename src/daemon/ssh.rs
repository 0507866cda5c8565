//! Keeps banger's own known_hosts file (`<config>/ssh/known_hosts`, see `crate::host::ssh`)
//! equal to the projection: one `NAME.vm ALGORITHM KEY` line per VM with a recorded host key.
//! It is rewritten (atomically) at startup and whenever a VM is defined, gets its host key
//! recorded or goes away, so that `banger vm ssh` and the `Host *.vm` entry of `banger
//! ssh-config` always check against the keys banger recorded, and a deleted VM's name stops
//! matching any key.
//!
//! Invariants: the file is derived from the log alone (a bangerd that starts rewrites it from
//! the projection, whatever the previous one left); the view guard is dropped before any IO;
//! nothing here appends events.

use std::sync::Arc;

use banger_events::Event;
use banger_projections::Projections;

use super::Daemon;
use crate::host::ssh::{KnownHost, SshFiles};

/// The known_hosts entries the projection gives.
pub fn known_hosts_of(view: &Projections) -> Vec<KnownHost> {
    let mut entries: Vec<KnownHost> = view
        .vms
        .values()
        .filter_map(|vm| {
            vm.host_key.as_ref().map(|key| KnownHost {
                vm_name: vm.name.clone(),
                algorithm: key.algorithm.clone(),
                public_key: key.public_key.clone(),
            })
        })
        .collect();
    entries.sort();
    entries
}

/// Whether `event` may change what known_hosts holds.
fn touches_known_hosts(event: &Event) -> bool {
    matches!(
        event,
        Event::VmDefined(_) | Event::VmHostKeyRecorded(_) | Event::VmRemoved(_)
    )
}

/// Starts the task that keeps known_hosts current; it ends when bangerd shuts down.
pub fn spawn_known_hosts_keeper(daemon: &Arc<Daemon>) {
    let daemon = daemon.clone();
    tokio::spawn(async move {
        let files = SshFiles::new(&daemon.layout);
        let mut subscription = daemon.journal.subscribe(daemon.journal.last_seq());
        let mut written: Option<Vec<KnownHost>> = None;
        loop {
            let entries = known_hosts_of(&daemon.journal.view());
            // Forget the ssh status of VMs that are gone (outside the view guard).
            let live: std::collections::HashSet<_> =
                daemon.journal.view().vms.keys().copied().collect();
            daemon.vms.ssh.retain(|vm_id| live.contains(&vm_id));
            if written.as_ref() != Some(&entries) {
                let (files, wanted) = (files.clone(), entries.clone());
                // No known_hosts is needed before a VM has a key: none is made until then.
                let write = tokio::task::spawn_blocking(move || {
                    if wanted.is_empty() && !files.known_hosts().exists() {
                        return Ok(false);
                    }
                    files.write_known_hosts(&wanted)
                })
                .await;
                match write {
                    Ok(Ok(changed)) => {
                        if changed {
                            tracing::debug!(hosts = entries.len(), "known_hosts rewritten");
                        }
                        written = Some(entries);
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "cannot write banger's known_hosts; `banger vm ssh` may refuse VMs until it is written")
                    }
                    Err(error) => tracing::warn!(%error, "the known_hosts task failed"),
                }
            }
            loop {
                let next = tokio::select! {
                    _ = daemon.shutdown.cancelled() => return,
                    next = subscription.next() => next,
                };
                match next {
                    Ok(envelope) if touches_known_hosts(&envelope.event) => break,
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "known_hosts stops following the log");
                        return;
                    }
                }
            }
        }
    });
}
