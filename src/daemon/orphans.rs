//! Orphans: host resources that carry banger's names but that the log does not know.
//!
//! The log is supposed to know everything banger made: every step records its intent before
//! its side effect. Yet a repaired log has lost the events after its damage (a VM directory,
//! a published kernel, a tap, a running VMM may remain from them), and a host can gain
//! leftovers by hand. An orphan is one of these, found on the host and named by nobody in the
//! ledger:
//!
//! - a tap named like banger's (`bt` + hex), as banger-helper lists them (or, with no helper,
//!   as this namespace shows them);
//! - an entry of the state directory's `vms/`, `kernels/` or `images/`;
//! - a process whose command line names a socket under `vms/` (a VMM launched for this state
//!   directory, or what it started), with its process group.
//!
//! Known means: a live VM, image or kernel (and its directory), a handle in the ledger, or a
//! handle named by any step of an unresolved operation (running, rolling back or stuck), whose
//! own rollback owns it; a process of a VM that such an operation targets is left to it too.
//!
//! ```text
//!  look at the host ──▶ copy what the log knows ──▶ orphans = host − known
//!  (IO, no view held)   (view guard, no IO)          (pure: `unknown`)
//!
//!  remove: claim the target (kernel/image name) ─▶ look again under the claim ─▶ still an
//!          orphan? remove it (idempotent) ─▶ OrphanFound { handle, action } in the log
//! ```
//!
//! Invariants:
//! - The host is looked at *before* the view is copied. Every side effect of banger is preceded
//!   by a durable intent, so anything the look found was recorded before the copy: a resource
//!   made meanwhile is never taken for an orphan. (One that an operation finished with and
//!   removed meanwhile may be listed; removing it then finds nothing, which is fine.)
//! - Removing takes the claim an operation on the same name would take (kernels and images:
//!   their names are reused; VM ids, taps and processes never are) and decides again under it,
//!   so a removal never races an operation that is about to use the name.
//! - Removals are idempotent and tolerate absence; each one is recorded as an `OrphanFound`
//!   event, with what was done (or why it failed), under the request's op id.
//! - Nothing here holds a view guard across IO (see the lock rule in docs/ARCHITECTURE.md).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_events::{Event, Handle, NewEvent, OpId, OpKind, OrphanFound, Target};
use banger_projections::Projections;

use super::Daemon;
use crate::api::{OrphanFailure, OrphanView};
use crate::host::network::{GuestNetwork, TapSource, tap_name};
use crate::host::process::{self, Liveness, SocketUser};
use crate::paths::Layout;

/// How long a removed VMM may take to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// What `remove` says of each orphan it removed.
pub const REMOVED: &str = "removed by `banger doctor --fix`";

/// What the host has that carries banger's names.
#[derive(Clone, Debug, Default)]
pub struct HostScan {
    pub taps: Vec<String>,
    pub tap_source: Option<TapSource>,
    /// Entries of `vms/`, `kernels/` and `images/`: path, and whether it is a directory.
    pub entries: Vec<(PathBuf, bool)>,
    pub processes: Vec<SocketUser>,
}

/// What the log knows, copied out of the view.
#[derive(Clone, Debug, Default)]
pub struct Known {
    taps: BTreeSet<String>,
    /// Paths named by a VM, image, kernel, handle or unresolved step; an entry is known when
    /// it is one of them, inside one, or holds one.
    paths: Vec<PathBuf>,
    /// (pid, start time) of every process handle.
    processes: BTreeSet<(u32, u64)>,
    /// VM directories whose VM an unresolved operation targets: their processes are that
    /// operation's business.
    busy_vm_dirs: BTreeSet<PathBuf>,
}

impl Known {
    /// Copies what the log knows out of `view`. No IO: this runs under the view guard.
    pub fn from_view(view: &Projections, layout: &Layout) -> Known {
        let mut known = Known::default();
        let add = |known: &mut Known, handle: &Handle| match handle {
            Handle::Tap { name } => {
                known.taps.insert(name.clone());
            }
            Handle::File { path } | Handle::Directory { path } | Handle::Socket { path } => {
                known.paths.push(PathBuf::from(path));
            }
            Handle::Process {
                pid,
                start_time_ticks,
            } => {
                known.processes.insert((*pid, *start_time_ticks));
            }
            Handle::Ip { .. }
            | Handle::Mac { .. }
            | Handle::VsockCid { .. }
            | Handle::LoopDevice { .. } => {}
        };
        for vm in view.vms.values() {
            known.paths.push(layout.vm_dir(vm.id));
            known.taps.insert(tap_name(vm.id));
            if let Some(process) = vm.process {
                known
                    .processes
                    .insert((process.pid, process.start_time_ticks));
            }
        }
        for image in view.images.values() {
            known.paths.push(layout.image_dir(&image.name));
            known.paths.push(PathBuf::from(&image.rootfs_path));
        }
        for kernel in view.kernels.values() {
            known.paths.push(layout.kernel_dir(&kernel.name));
            known.paths.push(PathBuf::from(&kernel.kernel_path));
        }
        for handle in view.handles.keys() {
            add(&mut known, handle);
        }
        for op in view.unresolved() {
            for step in &op.steps {
                for handle in step.intent.iter().chain(&step.produced) {
                    add(&mut known, handle);
                }
            }
            match &op.target {
                Target::Vm { vm_id, .. } => {
                    known.busy_vm_dirs.insert(layout.vm_dir(*vm_id));
                    known.taps.insert(tap_name(*vm_id));
                }
                Target::Kernel { name } => known.paths.push(layout.kernel_dir(name)),
                Target::Image { name } => known.paths.push(layout.image_dir(name)),
                Target::Host | Target::ImageCache => {}
            }
        }
        known
    }

    fn knows_path(&self, entry: &Path) -> bool {
        self.paths
            .iter()
            .any(|known| known.starts_with(entry) || entry.starts_with(known))
    }
}

/// Looks at the host: taps, the store's entries, processes naming a socket under `vms/`.
pub async fn scan_host(layout: &Layout, network: &GuestNetwork) -> HostScan {
    let (taps, source) = network.list_taps().await;
    let layout = layout.clone();
    let (entries, processes) = tokio::task::spawn_blocking(move || {
        let mut entries = Vec::new();
        for dir in [layout.vms_dir(), layout.kernels_dir(), layout.images_dir()] {
            let Ok(read) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in read.flatten() {
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                entries.push((entry.path(), is_dir));
            }
        }
        entries.sort();
        let processes = process::processes_with_sockets_under(&layout.vms_dir());
        (entries, processes)
    })
    .await
    .unwrap_or_default();
    HostScan {
        taps,
        tap_source: Some(source),
        entries,
        processes,
    }
}

/// The orphans: what `host` has that `known` does not. Pure.
pub fn unknown(host: &HostScan, known: &Known, layout: &Layout) -> Vec<OrphanView> {
    let mut orphans = Vec::new();
    for tap in &host.taps {
        if !known.taps.contains(tap) {
            let by_hand = match host.tap_source {
                Some(TapSource::Local) => format!("sudo ip link delete {tap}"),
                _ => format!(
                    "sudo ip link delete {tap} (or `banger doctor --fix`, through banger-helper)"
                ),
            };
            orphans.push(OrphanView {
                handle: Handle::Tap { name: tap.clone() },
                what: format!("tap {tap}"),
                remove_with: by_hand,
            });
        }
    }
    for (path, is_dir) in &host.entries {
        if known.knows_path(path) {
            continue;
        }
        let text = path.display().to_string();
        orphans.push(if *is_dir {
            OrphanView {
                handle: Handle::Directory { path: text.clone() },
                what: format!("directory {text}"),
                remove_with: format!("rm -rf {}", shell_quote(&text)),
            }
        } else {
            OrphanView {
                handle: Handle::File { path: text.clone() },
                what: format!("file {text}"),
                remove_with: format!("rm -f {}", shell_quote(&text)),
            }
        });
    }
    // A process is known when its record is, when it belongs to the process group of a known
    // VMM (what the VMM started), or when its VM is an unresolved operation's business.
    let vms_dir = layout.vms_dir();
    let vm_dir_of = |socket: &Path| {
        socket
            .strip_prefix(&vms_dir)
            .ok()
            .and_then(|rest| rest.components().next())
            .map(|first| vms_dir.join(first))
    };
    let known_groups: BTreeSet<i32> = host
        .processes
        .iter()
        .filter(|p| known.processes.contains(&(p.pid, p.start_time_ticks)))
        .map(|p| p.pid as i32)
        .collect();
    let orphan_leaders: BTreeSet<i32> = host
        .processes
        .iter()
        .filter(|p| p.pgrp == p.pid as i32)
        .map(|p| p.pid as i32)
        .collect();
    for p in &host.processes {
        let known_process = known.processes.contains(&(p.pid, p.start_time_ticks))
            || known_groups.contains(&p.pgrp)
            || vm_dir_of(&p.socket).is_some_and(|dir| known.busy_vm_dirs.contains(&dir));
        // A member of an orphan VMM's group goes with its leader.
        let follows_leader = p.pgrp != p.pid as i32 && orphan_leaders.contains(&p.pgrp);
        if known_process || follows_leader {
            continue;
        }
        orphans.push(OrphanView {
            handle: Handle::Process {
                pid: p.pid,
                start_time_ticks: p.start_time_ticks,
            },
            what: format!(
                "process {} (a VMM for {}: its command line names that socket)",
                p.pid,
                p.socket.display()
            ),
            remove_with: if p.pgrp == p.pid as i32 {
                format!("kill -KILL -- -{}", p.pid)
            } else {
                format!("kill -KILL {}", p.pid)
            },
        });
    }
    orphans
}

/// Quotes `text` for a POSIX shell when it needs it.
fn shell_quote(text: &str) -> String {
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The orphans now: the host first, then the view (see the module's invariants).
pub async fn find(daemon: &Daemon) -> Vec<OrphanView> {
    find_with(&daemon.layout, daemon.runner.network(), daemon).await
}

async fn find_with(layout: &Layout, network: &GuestNetwork, daemon: &Daemon) -> Vec<OrphanView> {
    let host = scan_host(layout, network).await;
    let known = Known::from_view(&daemon.journal.view(), layout);
    unknown(&host, &known, layout)
}

/// At startup (after recovery): says in bangerd's output what `banger doctor` will list.
pub async fn report_at_start(daemon: &Daemon) {
    let orphans = find(daemon).await;
    for orphan in &orphans {
        tracing::warn!(
            what = %orphan.what,
            remove_with = %orphan.remove_with,
            "a host resource carries banger's name but the log does not know it; `banger doctor` lists it, `banger doctor --fix` removes it"
        );
    }
    if !orphans.is_empty() {
        tracing::warn!(count = orphans.len(), "orphans found at startup");
    }
}

/// Removes every orphan, each under the claim an operation on its name would take and only
/// if it is still an orphan then, and records each removal (or failure) in the log.
pub async fn remove(daemon: &Daemon, op_id: OpId) -> (Vec<OrphanView>, Vec<OrphanFailure>) {
    let layout = &daemon.layout;
    let network = daemon.runner.network();
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for orphan in find(daemon).await {
        // Kernel and image names come back with the next import: hold the name meanwhile.
        let target = store_target(&orphan.handle, layout);
        let claim = match target {
            Some(target) => {
                match daemon
                    .runner
                    .claim(op_id, OpKind::Teardown, target, Vec::new())
                {
                    Ok(claim) => Some(claim),
                    Err(error) => {
                        failed.push(OrphanFailure {
                            orphan,
                            error: format!("left in place: {error}"),
                        });
                        continue;
                    }
                }
            }
            None => None,
        };
        // Decide again, under the claim, from a fresh look.
        let still = find_with(layout, network, daemon)
            .await
            .into_iter()
            .any(|now| now.handle == orphan.handle);
        if !still {
            continue;
        }
        let outcome = remove_one(&orphan.handle, network).await;
        drop(claim);
        let action = match &outcome {
            Ok(()) => REMOVED.to_owned(),
            Err(error) => format!("left in place: removing it failed: {error}"),
        };
        let recorded = daemon
            .journal
            .append(vec![NewEvent::in_op(
                op_id,
                Event::OrphanFound(OrphanFound {
                    handle: orphan.handle.clone(),
                    action,
                }),
            )])
            .await;
        match (outcome, recorded) {
            (Ok(()), Ok(_)) => removed.push(orphan),
            (Ok(()), Err(error)) => failed.push(OrphanFailure {
                orphan,
                error: format!("removed, but the log did not record it: {error}"),
            }),
            (Err(error), _) => failed.push(OrphanFailure { orphan, error }),
        }
    }
    (removed, failed)
}

/// The kernel or image whose name an orphan in the store holds, if any.
fn store_target(handle: &Handle, layout: &Layout) -> Option<Target> {
    let (Handle::Directory { path } | Handle::File { path }) = handle else {
        return None;
    };
    let path = Path::new(path);
    let name = path.file_name()?.to_str()?.to_owned();
    if name.starts_with('.') {
        // Staging and removal directories are named by op ids, never reused.
        return None;
    }
    match path.parent()? {
        dir if dir == layout.kernels_dir() => Some(Target::Kernel { name }),
        dir if dir == layout.images_dir() => Some(Target::Image { name }),
        _ => None,
    }
}

/// Removes one orphan; absence counts as removed.
async fn remove_one(handle: &Handle, network: &GuestNetwork) -> Result<(), String> {
    match handle {
        Handle::Tap { name } => network
            .release_tap(name)
            .await
            .map_err(|error| error.to_string()),
        Handle::Directory { path } => {
            let path = PathBuf::from(path);
            tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    Err(format!("cannot remove {}: {error}", path.display()))
                }
                _ => Ok(()),
            })
            .await
            .map_err(|error| error.to_string())?
        }
        Handle::File { path } | Handle::Socket { path } => match std::fs::remove_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("cannot remove {path}: {error}"))
            }
            _ => Ok(()),
        },
        Handle::Process {
            pid,
            start_time_ticks,
        } => {
            let (pid, ticks) = (*pid, *start_time_ticks);
            match process::signal_recorded(pid, ticks, nix::sys::signal::Signal::SIGKILL) {
                Ok(Liveness::Alive) => {}
                // Gone already, or the pid is someone else's now: nothing of ours to kill.
                Ok(_) => return Ok(()),
                Err(error) => return Err(format!("cannot kill pid {pid}: {error}")),
            }
            match process::wait_dead(pid, ticks, KILL_TIMEOUT).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!(
                    "pid {pid} still runs {}s after SIGKILL",
                    KILL_TIMEOUT.as_secs()
                )),
                Err(error) => Err(format!("cannot watch pid {pid}: {error}")),
            }
        }
        Handle::Ip { .. }
        | Handle::Mac { .. }
        | Handle::VsockCid { .. }
        | Handle::LoopDevice { .. } => {
            Err(format!("{handle} is not something an orphan sweep removes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use banger_events::{
        Envelope, EventId, Fold, HandleAcquired, KernelRegistered, OpKind, OperationStarted, Owner,
        Seq, StepStarted, VmDefined, VmId, VmSpec,
    };

    use super::*;

    fn fold(events: Vec<(Option<OpId>, Event)>) -> Projections {
        let mut state = Projections::default();
        for (i, (op_id, event)) in events.into_iter().enumerate() {
            state.apply(&Envelope {
                seq: Seq(i as u64 + 1),
                event_id: EventId(i as u128),
                op_id,
                cause: None,
                at_unix_ms: 0,
                schema_version: 1,
                event,
            });
        }
        state
    }

    fn user(pid: u32, ticks: u64, pgrp: i32, socket: &str) -> SocketUser {
        SocketUser {
            pid,
            start_time_ticks: ticks,
            pgrp,
            socket: PathBuf::from(socket),
        }
    }

    /// What the log knows is never an orphan — a VM's directory, tap and VMM (and what its
    /// VMM started), a spare tap, a kernel, what an unfinished operation intends or targets —
    /// and everything else with banger's names is, once.
    #[test]
    fn orphans_are_what_the_host_has_and_the_log_does_not_know() {
        let layout = Layout::rooted(Path::new("/s"));
        let vm = VmId(0xab);
        let import = OpId(0x77);
        let staging = "/s/state/kernels/.staging-0000000000000077";
        let view = fold(vec![
            (
                None,
                Event::VmDefined(VmDefined {
                    vm_id: vm,
                    name: "dev".into(),
                    spec: VmSpec {
                        image: "img".into(),
                        kernel: "k1".into(),
                        vcpus: 1,
                        memory_mib: 128,
                        root_disk_mib: 64,
                        work_disk_mib: 64,
                    },
                }),
            ),
            (
                None,
                Event::HandleAcquired(HandleAcquired {
                    owner: Owner::Vm(vm),
                    handle: Handle::Process {
                        pid: 100,
                        start_time_ticks: 5,
                    },
                }),
            ),
            (
                None,
                Event::HandleAcquired(HandleAcquired {
                    owner: Owner::Daemon,
                    handle: Handle::Tap {
                        name: "bt99".into(),
                    },
                }),
            ),
            (
                None,
                Event::KernelRegistered(KernelRegistered {
                    name: "k1".into(),
                    kernel_path: "/s/state/kernels/k1/vmlinux".into(),
                    initrd_path: None,
                    version: String::new(),
                    sha256: String::new(),
                    source: "import:/k".into(),
                }),
            ),
            (
                Some(import),
                Event::OperationStarted(OperationStarted {
                    kind: OpKind::KernelImport,
                    target: Target::Kernel { name: "k2".into() },
                    parameters: "{}".into(),
                }),
            ),
            (
                Some(import),
                Event::StepStarted(StepStarted {
                    step: "stage".into(),
                    intent: vec![Handle::Directory {
                        path: staging.into(),
                    }],
                }),
            ),
        ]);
        let host = HostScan {
            taps: vec!["bt77".into(), "bt99".into(), "btab".into()],
            tap_source: Some(TapSource::Helper),
            entries: vec![
                (PathBuf::from("/s/state/vms/00000000000000ab"), true),
                (PathBuf::from("/s/state/vms/00000000000000cd"), true),
                (PathBuf::from("/s/state/kernels/k1"), true),
                (PathBuf::from(staging), true),
                (PathBuf::from("/s/state/kernels/k2"), true),
                (PathBuf::from("/s/state/images/x.partial"), false),
            ],
            processes: vec![
                user(100, 5, 100, "/s/state/vms/00000000000000ab/api.sock"),
                user(101, 6, 100, "/s/state/vms/00000000000000ab/vsock.sock_1024"),
                user(200, 7, 200, "/s/state/vms/00000000000000cd/api.sock"),
                user(201, 8, 200, "/s/state/vms/00000000000000cd/vsock.sock_1024"),
                user(300, 9, 300, "/s/state/vms/00000000000000ab/api.sock"),
            ],
        };
        let known = Known::from_view(&view, &layout);
        let orphans: Vec<String> = unknown(&host, &known, &layout)
            .into_iter()
            .map(|o| format!("{} | {}", o.what, o.remove_with))
            .collect();
        assert_eq!(
            orphans,
            [
                "tap bt77 | sudo ip link delete bt77 (or `banger doctor --fix`, through banger-helper)",
                "directory /s/state/vms/00000000000000cd | rm -rf /s/state/vms/00000000000000cd",
                "file /s/state/images/x.partial | rm -f /s/state/images/x.partial",
                "process 200 (a VMM for /s/state/vms/00000000000000cd/api.sock: its command line names that socket) | kill -KILL -- -200",
                "process 300 (a VMM for /s/state/vms/00000000000000ab/api.sock: its command line names that socket) | kill -KILL -- -300",
            ]
        );
    }

    #[test]
    fn removal_holds_the_names_that_come_back() {
        let layout = Layout::rooted(Path::new("/s"));
        let dir = |path: &str| Handle::Directory { path: path.into() };
        assert_eq!(
            store_target(&dir("/s/state/kernels/k2"), &layout),
            Some(Target::Kernel { name: "k2".into() })
        );
        assert_eq!(
            store_target(&dir("/s/state/images/img"), &layout),
            Some(Target::Image { name: "img".into() })
        );
        assert_eq!(
            store_target(&dir("/s/state/kernels/.staging-1"), &layout),
            None
        );
        assert_eq!(
            store_target(&dir("/s/state/vms/00000000000000cd"), &layout),
            None
        );
        assert_eq!(
            store_target(&Handle::Tap { name: "bt1".into() }, &layout),
            None
        );
    }

    #[test]
    fn removal_commands_quote_what_a_shell_would_split() {
        assert_eq!(shell_quote("/s/state/vms/00ab"), "/s/state/vms/00ab");
        assert_eq!(shell_quote("/s/it's here"), r"'/s/it'\''s here'");
    }
}
