//! Supervision of running VMs: noticing a VMM that ends without being asked to, re-adopting
//! VMMs that outlived a previous bangerd, and stopping VMs that sat idle too long.
//!
//! ```text
//!  launched here ──▶ watch_child: await the child ──┐
//!                                                   ├─▶ exit ─▶ asked for? (an operation on the VM
//!  re-adopted ─────▶ watch_adopted: poll pid +      │           is in flight, or the VM no longer
//!                    start time every 500 ms ───────┘           records this pid) ─▶ nothing
//!                                                                  │ no
//!                                                                  ▼
//!                                VmExited{pid, exit status, console tail} + VmStateChanged → stopped
//! ```
//!
//! Invariants:
//! - VMM processes run in their own process group (see `crate::host::vmm`), so bangerd's
//!   death does not take them along; a new bangerd re-adopts them at startup (after crash
//!   recovery, before the socket exists): alive with the recorded start time and its API
//!   socket answers → supervised again; otherwise `VmFoundDead` and the VM is stopped.
//! - The supervisor never signals a process it has not matched by pid *and* start time, and
//!   after an exit only signals the dead leader's process group (whose id cannot be reused
//!   while the group has members) to take stragglers such as the fake's guest agent along.
//! - An exit is reported once: the report names the pid, and the projection ignores a report
//!   about a pid the VM no longer records.
//! - An exit that looked asked for (an operation held the VM) is not lost when that operation
//!   then fails or stays stuck: after it ends, [`Supervisor::reconcile`] releases a recorded
//!   VMM that is gone, so a VM never keeps a dead pid.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_events::{
    Event, Handle, HandleReleased, Journal, NewEvent, Owner, Target, VmExited, VmFoundDead, VmId,
    VmState, VmStateChanged, VmmKind,
};
use banger_projections::{ProcessRef, Projections};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::Daemon;
use crate::host::backends::Backends;
use crate::host::network::interface_exists;
use crate::host::process::{self, Liveness};
use crate::host::vmm::{CONSOLE_TAIL_BYTES, Launched, console_tail};
use crate::operations::vm_common::{kill_vmm, recorded_vmm};
use crate::operations::vm_stop;
use crate::paths::Layout;

/// How often a re-adopted VMM (not our child, so no exit notification) is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(500);

/// Watches VMMs and remembers when each VM was last used.
pub struct Supervisor {
    journal: Arc<Journal<Projections>>,
    layout: Layout,
    /// The backends; each VM's recorded one tells whether its re-adopted VMM answers, and
    /// kills a deaf one.
    backends: Arc<Backends>,
    /// Last activity per VM: its start, and every exec, ping or health through bangerd.
    activity: Mutex<HashMap<VmId, Instant>>,
}

impl Supervisor {
    pub fn new(
        journal: Arc<Journal<Projections>>,
        layout: Layout,
        backends: Arc<Backends>,
    ) -> Supervisor {
        Supervisor {
            journal,
            layout,
            backends,
            activity: Mutex::default(),
        }
    }

    /// Records activity on `vm_id` now (it resets the idle clock of auto-stop).
    pub fn touch(&self, vm_id: VmId) {
        self.activity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm_id, Instant::now());
    }

    /// Forgets the activity of VM `vm_id` (it was deleted, or its create rolled back).
    pub fn forget(&self, vm_id: VmId) {
        self.activity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&vm_id);
    }

    /// Forgets the activity of every VM not in `existing`, so the table stays as small as the
    /// set of VMs (a VM removed by crash recovery never reaches [`Supervisor::forget`]).
    pub fn forget_all_but(&self, existing: &HashSet<VmId>) {
        self.activity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|vm_id, _| existing.contains(vm_id));
    }

    /// How many VMs' activity is remembered (tests check that it stays bounded).
    pub fn tracked(&self) -> usize {
        self.activity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// When `vm_id` was last active; a VM never seen counts as active now.
    fn last_activity(&self, vm_id: VmId) -> Instant {
        *self
            .activity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(vm_id)
            .or_insert_with(Instant::now)
    }

    /// Supervises a VMM this process spawned: its exit status comes from the child.
    pub fn watch_child(
        self: &Arc<Self>,
        vm_id: VmId,
        launched: Launched,
        mut child: tokio::process::Child,
    ) {
        self.touch(vm_id);
        let this = self.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            take_group_along(launched.pid);
            let (code, signal) = match status {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    (status.code(), status.signal())
                }
                Err(error) => {
                    tracing::warn!(pid = launched.pid, %error, "cannot read the VMM's exit status");
                    (None, None)
                }
            };
            this.on_exit(vm_id, launched.pid, code, signal).await;
        });
    }

    /// Supervises a VMM a previous bangerd spawned: polled by pid and start time.
    pub fn watch_adopted(self: &Arc<Self>, vm_id: VmId, process: ProcessRef) {
        self.touch(vm_id);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ADOPTED_POLL).await;
                match process::liveness(process.pid, process.start_time_ticks) {
                    Ok(Liveness::Alive) => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(pid = process.pid, %error, "cannot check a VMM; assuming it runs");
                        continue;
                    }
                }
            }
            take_group_along(process.pid);
            // Not our child: its exit status is not ours to read.
            this.on_exit(vm_id, process.pid, None, None).await;
        });
    }

    /// A watched VMM is gone: report it, unless someone asked for it.
    async fn on_exit(&self, vm_id: VmId, pid: u32, exit_code: Option<i32>, signal: Option<i32>) {
        let from = {
            let view = self.journal.view();
            let Some(vm) = view.vms.get(&vm_id) else {
                return;
            };
            if vm.process.map(|p| p.pid) != Some(pid) {
                return;
            }
            let target = Target::Vm {
                vm_id,
                name: vm.name.clone(),
            };
            if view.blocking_op_for(&target).is_some() {
                // A stop, kill, delete or restart is under way: it asked for this exit.
                return;
            }
            vm.state
        };
        let tail = console_tail(&self.layout.vm_console_log(vm_id), CONSOLE_TAIL_BYTES);
        tracing::warn!(%vm_id, pid, ?exit_code, ?signal, "a VMM exited unexpectedly");
        let mut events = vec![NewEvent::new(Event::VmExited(VmExited {
            vm_id,
            pid,
            exit_code,
            signal,
            console_tail: tail,
        }))];
        if from != VmState::Stopped {
            events.push(NewEvent::new(Event::VmStateChanged(VmStateChanged {
                vm_id,
                from,
                to: VmState::Stopped,
            })));
        }
        if let Err(error) = self.journal.append(events).await {
            tracing::error!(%vm_id, %error, "cannot record a VMM's exit");
        }
    }

    /// After an operation on VM `vm_id` ended without succeeding. While it ran, the watchers
    /// took any exit of the VM's VMM as asked for; if the operation then failed, nobody
    /// recorded it, and the VM would keep a dead pid. So: a recorded VMM that is gone is
    /// released (the operation ended it, or it died meanwhile); a VM still marked running
    /// without it gets the exit report and is stopped. Likewise a recorded tap the host no
    /// longer has (a delete removed it before it failed) is released. Nothing happens while
    /// another operation holds the VM, or when its VMM lives.
    pub async fn reconcile(&self, vm_id: VmId) {
        let (process, state, vanished) = {
            let view = self.journal.view();
            let Some(vm) = view.vms.get(&vm_id) else {
                return;
            };
            let target = Target::Vm {
                vm_id,
                name: vm.name.clone(),
            };
            if view.blocking_op_for(&target).is_some() {
                return;
            }
            (vm.process, vm.state, taps_of(&view, vm_id))
        };
        let vanished = vanished_taps(vm_id, vanished);
        if !vanished.is_empty()
            && let Err(error) = self.journal.append(vanished).await
        {
            tracing::error!(%vm_id, %error, "cannot record a tap that is gone");
        }
        let Some(process) = process else {
            return;
        };
        if process::liveness(process.pid, process.start_time_ticks).ok() == Some(Liveness::Alive) {
            return;
        }
        if state == VmState::Running {
            return self.on_exit(vm_id, process.pid, None, None).await;
        }
        tracing::info!(%vm_id, pid = process.pid, %state, "the VM's VMM is gone; releasing it");
        let released = NewEvent::new(Event::HandleReleased(HandleReleased {
            handle: Handle::Process {
                pid: process.pid,
                start_time_ticks: process.start_time_ticks,
            },
        }));
        if let Err(error) = self.journal.append(vec![released]).await {
            tracing::error!(%vm_id, %error, "cannot record a VMM that is gone");
        }
    }

    /// At startup, after recovery: re-adopts every VMM the log says runs and that still does;
    /// reports the others dead and stops their VMs.
    pub async fn readopt(self: &Arc<Self>) {
        let vms: Vec<(VmId, String, VmState, Option<ProcessRef>, VmmKind)> = {
            let view = self.journal.view();
            view.vms
                .values()
                .filter(|vm| {
                    vm.process.is_some()
                        || matches!(
                            vm.state,
                            VmState::Running | VmState::Starting | VmState::Stopping
                        )
                })
                .map(|vm| (vm.id, vm.name.clone(), vm.state, vm.process, vm.vmm()))
                .collect()
        };
        for (vm_id, name, state, process, vmm) in vms {
            let mut events = Vec::new();
            let vmm = self.backends.get(vmm);
            if let Some(p) = process {
                let recorded = recorded_vmm(&self.layout, vm_id, p);
                let liveness = process::liveness(p.pid, p.start_time_ticks).ok();
                let answers = liveness == Some(Liveness::Alive) && vmm.answers(&recorded).await;
                if answers {
                    tracing::info!(vm = %name, pid = p.pid, "re-adopted a running VM");
                    self.watch_adopted(vm_id, p);
                    continue;
                }
                if liveness == Some(Liveness::Alive) {
                    // Ours (same start time) but deaf: it cannot be driven, so end it.
                    tracing::warn!(vm = %name, pid = p.pid, "the VMM runs but its API does not answer; killing it");
                    let _ = kill_vmm(vmm.as_ref(), &recorded).await;
                }
                tracing::warn!(vm = %name, pid = p.pid, "the VM's VMM died while bangerd was down");
                events.push(NewEvent::new(Event::VmFoundDead(VmFoundDead {
                    vm_id,
                    pid: p.pid,
                    start_time_ticks: p.start_time_ticks,
                })));
            }
            if state != VmState::Stopped {
                events.push(NewEvent::new(Event::VmStateChanged(VmStateChanged {
                    vm_id,
                    from: state,
                    to: VmState::Stopped,
                })));
            }
            if let Err(error) = self.journal.append(events).await {
                tracing::error!(vm = %name, %error, "cannot record a VM found dead");
                return;
            }
        }
        // Taps the host lost (a reboot, or a delete that removed one and then failed): the
        // log says so, and the next start makes the VM a tap again.
        let taps: Vec<(VmId, Vec<String>)> = {
            let view = self.journal.view();
            view.vms
                .keys()
                .map(|vm_id| (*vm_id, taps_of(&view, *vm_id)))
                .collect()
        };
        let vanished: Vec<NewEvent> = taps
            .into_iter()
            .flat_map(|(vm_id, taps)| vanished_taps(vm_id, taps))
            .collect();
        if !vanished.is_empty()
            && let Err(error) = self.journal.append(vanished).await
        {
            tracing::error!(%error, "cannot record taps that are gone");
        }
    }
}

/// The taps VM `vm_id` holds in the ledger.
fn taps_of(view: &Projections, vm_id: VmId) -> Vec<String> {
    view.handles_of(Owner::Vm(vm_id))
        .filter_map(|(handle, _)| match handle {
            Handle::Tap { name } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// `HandleReleased` for each of VM `vm_id`'s `taps` that the host does not have. It looks at
/// the host, so it runs with no view guard held (see the lock order in docs/ARCHITECTURE.md).
fn vanished_taps(vm_id: VmId, taps: Vec<String>) -> Vec<NewEvent> {
    taps.into_iter()
        .filter(|name| !interface_exists(name))
        .map(|name| {
            tracing::info!(%vm_id, tap = %name, "the VM's tap is gone from the host; releasing it");
            NewEvent::new(Event::HandleReleased(HandleReleased {
                handle: Handle::Tap { name },
            }))
        })
        .collect()
}

/// After a group leader's exit, SIGKILLs what is left of its process group.
fn take_group_along(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
    }
}

/// Stops VMs idle longer than `idle_stop_after`, as `vm.stop` operations whose parameters say
/// why. Runs until the daemon shuts down; does nothing when auto-stop is off.
pub fn spawn_idle_sweep(daemon: Arc<Daemon>) {
    let Some(idle_after) = daemon.vms.config.vm.idle_stop_after else {
        return;
    };
    let every = (idle_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = daemon.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            // Copied out of the view first: the activity table has a lock of its own, and no
            // lock is taken under a view guard.
            let (candidates, existing): (Vec<(VmId, String)>, HashSet<VmId>) = {
                let view = daemon.journal.view();
                let candidates = view
                    .vms
                    .values()
                    .filter(|vm| vm.state == VmState::Running)
                    .filter(|vm| {
                        view.blocking_op_for(&Target::Vm {
                            vm_id: vm.id,
                            name: vm.name.clone(),
                        })
                        .is_none()
                    })
                    .map(|vm| (vm.id, vm.name.clone()))
                    .collect();
                (candidates, view.vms.keys().copied().collect())
            };
            daemon.supervisor.forget_all_but(&existing);
            let idle: Vec<(String, Duration)> = candidates
                .into_iter()
                .filter_map(|(vm_id, name)| {
                    let idle = daemon.supervisor.last_activity(vm_id).elapsed();
                    (idle > idle_after).then_some((name, idle))
                })
                .collect();
            for (name, idle) in idle {
                let op_id = daemon.ids.op_id();
                let reason = format!(
                    "idle for {} s (idle_stop_after is {} s)",
                    idle.as_secs(),
                    idle_after.as_secs()
                );
                tracing::info!(vm = %name, %reason, "auto-stopping an idle VM");
                let runner = daemon.runner.clone();
                let timeout = daemon.vms.config.stop_timeout;
                daemon.ops.spawn(async move {
                    if let Err(error) =
                        vm_stop::run(&runner, op_id, &name, timeout, Some(reason)).await
                    {
                        tracing::warn!(vm = %name, %error, "auto-stop failed");
                    }
                });
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use banger_events::{JournalOptions, MemoryLog};

    use super::*;

    /// The activity table holds only VMs that exist: a deleted VM is forgotten, and a sweep
    /// forgets every VM the views no longer have (removed by crash recovery, say).
    #[test]
    fn activity_is_forgotten_with_the_vm() {
        let journal =
            Arc::new(Journal::open(Arc::new(MemoryLog::new()), JournalOptions::default()).unwrap());
        let supervisor = Supervisor::new(
            journal,
            Layout::rooted(std::path::Path::new("/none")),
            Arc::new(crate::host::backends::Backends::firecracker_at(
                "/nonexistent/firecracker",
            )),
        );
        for id in 0..100 {
            supervisor.touch(VmId(id));
        }
        supervisor.forget(VmId(0));
        assert_eq!(supervisor.tracked(), 99);
        let existing: HashSet<VmId> = [VmId(5), VmId(6), VmId(1000)].into();
        supervisor.forget_all_but(&existing);
        assert_eq!(supervisor.tracked(), 2);
    }
}
