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
        if let Some(from) = self.exit_to_report(vm_id, pid) {
            self.record_exit(vm_id, pid, exit_code, signal, from).await;
        }
    }

    /// The state VM `vm_id` is in when the exit of its VMM `pid` is worth reporting: the VM
    /// exists, still records `pid`, and no operation holds it (a stop, kill, delete or restart
    /// under way asked for this exit).
    fn exit_to_report(&self, vm_id: VmId, pid: u32) -> Option<VmState> {
        let view = self.journal.view();
        unclaimed_vm(&view, vm_id)
            .filter(|vm| vm.process.map(|p| p.pid) == Some(pid))
            .map(|vm| vm.state)
    }

    /// Records the exit of VM `vm_id`'s VMM `pid`, seen while the VM was `from`, if that still
    /// holds where the sequence number is assigned: a restart that began since launched another
    /// VMM, and this report must not stop its VM.
    async fn record_exit(
        &self,
        vm_id: VmId,
        pid: u32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        from: VmState,
    ) {
        let tail = console_tail(&self.layout.vm_console_log(vm_id), CONSOLE_TAIL_BYTES);
        tracing::warn!(%vm_id, pid, ?exit_code, ?signal, "a VMM exited unexpectedly");
        let events = exit_events(vm_id, pid, exit_code, signal, tail, from);
        let recorded = self
            .journal
            .append_if(events, move |view: &Projections| {
                match unclaimed_vm(view, vm_id) {
                    Some(vm) if vm.process.map(|p| p.pid) == Some(pid) && vm.state == from => {
                        Ok(())
                    }
                    _ => Err(()),
                }
            })
            .await;
        match recorded {
            Ok(Ok(_)) => {}
            Ok(Err(())) => {
                tracing::info!(%vm_id, pid, "the VM changed before its VMM's exit was recorded; not recording it");
            }
            Err(error) => tracing::error!(%vm_id, %error, "cannot record a VMM's exit"),
        }
    }

    /// After an operation on VM `vm_id` ended without succeeding. While it ran, the watchers
    /// took any exit of the VM's VMM as asked for; if the operation then failed, nobody
    /// recorded it, and the VM would keep a dead pid. So: a recorded VMM that is gone is
    /// released (the operation ended it, or it died meanwhile); a VM still marked running
    /// without it gets the exit report and is stopped. Likewise a recorded tap the host no
    /// longer has (a delete removed it before it failed) is released. Nothing happens while
    /// another operation holds the VM, or when its VMM lives — checked again where each event
    /// is appended, since an operation may begin between the look and the append.
    pub async fn reconcile(&self, vm_id: VmId) {
        let (process, state, taps) = {
            let view = self.journal.view();
            let Some(vm) = unclaimed_vm(&view, vm_id) else {
                return;
            };
            (vm.process, vm.state, taps_of(&view, vm_id))
        };
        let vanished = vanished_taps(vm_id, taps);
        if !vanished.is_empty() {
            let released: Vec<Handle> = vanished
                .iter()
                .filter_map(|new| match &new.event {
                    Event::HandleReleased(released) => Some(released.handle.clone()),
                    _ => None,
                })
                .collect();
            let recorded = self
                .journal
                .append_if(vanished, move |view: &Projections| {
                    let still_the_vms = released.iter().all(|handle| {
                        view.handles
                            .get(handle)
                            .is_some_and(|held| held.owner == Owner::Vm(vm_id))
                    });
                    if unclaimed_vm(view, vm_id).is_some() && still_the_vms {
                        Ok(())
                    } else {
                        Err(())
                    }
                })
                .await;
            if let Err(error) = recorded {
                tracing::error!(%vm_id, %error, "cannot record a tap that is gone");
            }
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
            handle: process.handle(),
        }));
        let recorded = self
            .journal
            .append_if(
                vec![released],
                move |view: &Projections| match unclaimed_vm(view, vm_id) {
                    Some(vm) if vm.process == Some(process) => Ok(()),
                    _ => Err(()),
                },
            )
            .await;
        if let Err(error) = recorded {
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

/// VM `vm_id`, unless it is gone or an operation holds it (running, unresolved or stuck).
fn unclaimed_vm(view: &Projections, vm_id: VmId) -> Option<&banger_projections::VmView> {
    let vm = view.vms.get(&vm_id)?;
    let target = Target::Vm {
        vm_id,
        name: vm.name.clone(),
    };
    view.blocking_op_for(&target).is_none().then_some(vm)
}

/// What an unasked-for exit of VM `vm_id`'s VMM `pid` records: the report, and the VM
/// stopped (from `from`).
fn exit_events(
    vm_id: VmId,
    pid: u32,
    exit_code: Option<i32>,
    signal: Option<i32>,
    console_tail: String,
    from: VmState,
) -> Vec<NewEvent> {
    let mut events = vec![NewEvent::new(Event::VmExited(VmExited {
        vm_id,
        pid,
        exit_code,
        signal,
        console_tail,
    }))];
    if from != VmState::Stopped {
        events.push(NewEvent::new(Event::VmStateChanged(VmStateChanged {
            vm_id,
            from,
            to: VmState::Stopped,
        })));
    }
    events
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

/// How often the consoles of running VMs are checked against `vm.console_max`. A guest that
/// floods its console can write at most this long's worth past the cap.
const CONSOLE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Keeps every running VM's serial console within `vm.console_max`, dropping the oldest
/// output (see [`crate::host::console`]). Runs until the daemon shuts down.
pub fn spawn_console_keeper(daemon: Arc<Daemon>) {
    let max_bytes = daemon.vms.config.vm.console_max_bytes;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = daemon.shutdown.cancelled() => return,
                _ = tokio::time::sleep(CONSOLE_CHECK_EVERY) => {}
            }
            // Every VM with a VMM writes its console; copied out of the view before any IO.
            let consoles: Vec<(VmId, std::path::PathBuf)> = daemon
                .journal
                .view()
                .vms
                .values()
                .filter(|vm| vm.process.is_some())
                .map(|vm| (vm.id, daemon.layout.vm_console_log(vm.id)))
                .collect();
            if consoles.is_empty() {
                continue;
            }
            let capped = tokio::task::spawn_blocking(move || {
                consoles
                    .into_iter()
                    .map(|(vm_id, path)| (vm_id, crate::host::console::cap(&path, max_bytes)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (vm_id, outcome) in capped {
                match outcome {
                    Ok(crate::host::console::Capped::Within) => {}
                    Ok(done) => tracing::debug!(%vm_id, ?done, "dropped old console output"),
                    Err(error) => {
                        tracing::warn!(%vm_id, %error, "cannot keep the console within vm.console_max")
                    }
                }
            }
        }
    });
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

    use super::*;

    /// The activity table holds only VMs that exist: a deleted VM is forgotten, and a sweep
    /// forgets every VM the views no longer have (removed by crash recovery, say).
    #[test]
    fn activity_is_forgotten_with_the_vm() {
        let journal = crate::operations::testing::memory_journal();
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

    /// The window between deciding to report an exit and recording it: a restart that lands
    /// there gives the VM a new VMM, and the stale report must not stop the VM (it would be
    /// shown stopped while its new VMM runs, orphaned).
    #[tokio::test]
    async fn an_exit_report_overtaken_by_a_restart_is_not_recorded() {
        use banger_events::{HandleAcquired, VmDefined};

        let journal = crate::operations::testing::memory_journal();
        let vm_id = VmId(7);
        let process = |pid| Handle::Process {
            pid,
            start_time_ticks: 1,
        };
        let running_with = |pid| {
            vec![
                NewEvent::new(Event::VmStateChanged(VmStateChanged {
                    vm_id,
                    from: VmState::Stopped,
                    to: VmState::Running,
                })),
                NewEvent::new(Event::HandleAcquired(HandleAcquired {
                    owner: Owner::Vm(vm_id),
                    handle: process(pid),
                })),
            ]
        };
        journal
            .append(vec![NewEvent::new(Event::VmDefined(VmDefined {
                vm_id,
                name: "dev".into(),
                spec: crate::operations::testing::small_spec("k"),
            }))])
            .await
            .unwrap();
        journal.append(running_with(100)).await.unwrap();
        let supervisor = Supervisor::new(
            journal.clone(),
            Layout::rooted(std::path::Path::new("/none")),
            crate::operations::testing::unlaunchable_backends(),
        );

        let from = supervisor
            .exit_to_report(VmId(7), 100)
            .expect("pid 100 is the VM's, and nothing holds the VM");
        // The restart lands here: the VM stops, starts again, and runs pid 200.
        journal
            .append(vec![NewEvent::new(Event::VmStateChanged(VmStateChanged {
                vm_id,
                from: VmState::Running,
                to: VmState::Stopped,
            }))])
            .await
            .unwrap();
        journal.append(running_with(200)).await.unwrap();
        supervisor
            .record_exit(vm_id, 100, None, Some(9), from)
            .await;

        let vm = journal.view().vms[&vm_id].clone();
        assert_eq!(
            vm.state,
            VmState::Running,
            "the stale report stopped the VM"
        );
        assert_eq!(vm.process.map(|p| p.pid), Some(200));
        assert!(vm.last_exit.is_none(), "{:?}", vm.last_exit);

        // The report of the current VMM's exit is recorded and stops the VM.
        let from = supervisor.exit_to_report(vm_id, 200).unwrap();
        supervisor
            .record_exit(vm_id, 200, None, Some(9), from)
            .await;
        let view = journal.view();
        assert_eq!(view.vms[&vm_id].state, VmState::Stopped);
        assert_eq!(
            view.vms[&vm_id].last_exit.as_ref().map(|e| e.pid),
            Some(200)
        );
    }
}
