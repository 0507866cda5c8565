//! Firecracker started by banger-helper through the jailer, for a bangerd that may not open
//! `/dev/kvm` or `/dev/net/tun` (an ordinary user, as deployed).
//!
//! The helper runs the jailer for this user's VM (see `banger_helper::jail`): Firecracker runs
//! as bangerd's uid in a chroot the helper makes, with the device nodes it needs made inside.
//! Everything else is bangerd's, as the owner of that chroot:
//!
//! ```text
//!   spawn      VM_DIR/api.sock ─symlink─▶ JAIL/root/firecracker.socket (where the helper's
//!              `jail` answer says it will be); console log opened here, its descriptor
//!              passed to the helper ─▶ launched; wait until the socket answers
//!   configure  kernel, initrd, disks hard-linked into JAIL/root (the VM's own files: what the
//!              guest writes lands in them), the VMM log too; the API gets paths relative to
//!              the chroot; VM_DIR/vsock.sock ─symlink─▶ JAIL/root/vsock.sock
//!   start, shutdown, answers   Firecracker's API, as for any Firecracker
//!   kill       the helper (pid, start time and executable checked), which removes the jail
//! ```
//!
//! The symlinks keep every other part of banger unchanged: the log records the VM directory's
//! socket paths, as for a Firecracker bangerd starts itself, and they lead to the jail. What
//! this backend needs to know about a VM after a daemon restart is where those links point.
//!
//! Invariants: bangerd never asks for a path of its own to be opened by root (the console is a
//! descriptor, the links are made as bangerd's user); a writable disk is linked, never copied
//! (a copy would lose what the guest writes), so the jail directory must share the state
//! directory's filesystem and a link that cannot be made is an error that says so.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_helper::HelperClient;
use banger_helper::protocol::JAIL_API_SOCKET;

use super::firecracker::Logger;
use super::process::{self, Liveness};
use super::vmm::{
    AgentTransport, BoxFuture, CONSOLE_TAIL_BYTES, DriveSpec, FirecrackerVmm, KillOutcome,
    LaunchSpec, Launched, Spawned, Vmm, VmmError, VsockSpec, console_tail, kill_recorded,
    prepare_firecracker_launch,
};

/// The vsock socket in the chroot, relative to its root.
const JAIL_VSOCK: &str = "vsock.sock";
/// The VMM's own log in the chroot.
const JAIL_VMM_LOG: &str = "firecracker.log";

/// Firecracker through banger-helper's jailer.
#[derive(Clone, Debug)]
pub struct JailedFirecracker {
    helper: HelperClient,
    /// The API side: configure, start, shutdown, answers.
    api: FirecrackerVmm,
    pub api_ready_timeout: Duration,
}

impl JailedFirecracker {
    /// `binary` is what bangerd believes Firecracker is (for messages and the `auto` rule);
    /// the helper runs its own configured one.
    pub fn new(helper: HelperClient, binary: impl Into<PathBuf>) -> JailedFirecracker {
        let api = FirecrackerVmm::new(binary);
        JailedFirecracker {
            api_ready_timeout: api.api_ready_timeout,
            helper,
            api,
        }
    }

    pub fn binary(&self) -> &Path {
        &self.api.binary
    }

    async fn spawn_inner(&self, spec: &LaunchSpec) -> Result<Spawned, VmmError> {
        let console = prepare_firecracker_launch(spec).await?;
        // The link to the jail's API socket is made before the launch (where the jail will be
        // follows from the helper's configuration): a bangerd that dies right after the launch
        // leaves a VM directory whose link leads recovery to the VMM (`launched_for`).
        let helper_error = |error: banger_helper::HelperError| VmmError::Spawn {
            binary: self.api.binary.clone(),
            source: io::Error::other(error.to_string()),
        };
        let jail = self.helper.jail().await.map_err(helper_error)?.ok_or_else(|| {
            helper_error(banger_helper::HelperError::Refused {
                message: "this banger-helper launches no Firecracker: start it with --jailer, --firecracker and --jail-dir (`banger system install --jailer …`)".into(),
            })
        })?;
        let root = banger_helper::jail::jail_path(
            &jail.dir,
            &jail.firecracker,
            nix::unistd::geteuid().as_raw(),
            &spec.id,
        )
        .join("root");
        link_socket(&spec.api_socket, &root.join(JAIL_API_SOCKET))?;
        let jailed = self
            .helper
            .launch_firecracker(&spec.id, &console)
            .await
            .map_err(helper_error)?;
        let launched = Launched {
            pid: jailed.pid,
            start_time_ticks: jailed.start_time_ticks,
            api_socket: spec.api_socket.clone(),
        };
        let ready = async {
            if jailed.root != root {
                link_socket(&spec.api_socket, &jailed.root.join(JAIL_API_SOCKET))?;
            }
            self.wait_api_ready(&launched, spec).await
        }
        .await;
        match ready {
            Ok(()) => Ok(Spawned {
                launched,
                child: None,
            }),
            Err(error) => {
                let _ = self.kill_inner(&launched).await;
                Err(error)
            }
        }
    }

    async fn wait_api_ready(&self, vm: &Launched, spec: &LaunchSpec) -> Result<(), VmmError> {
        let deadline = Instant::now() + self.api_ready_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if tokio::net::UnixStream::connect(&spec.api_socket)
                .await
                .is_ok()
            {
                return Ok(());
            }
            match vm.liveness() {
                Ok(Liveness::Alive) => {}
                other => {
                    return Err(VmmError::ExitedEarly {
                        binary: self.api.binary.clone(),
                        status: format!("{other:?}"),
                        console_tail: console_tail(&spec.console_log, CONSOLE_TAIL_BYTES),
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(VmmError::ApiNotReady {
                    binary: self.api.binary.clone(),
                    socket: spec.api_socket.clone(),
                    timeout_ms: self.api_ready_timeout.as_millis() as u64,
                    console_tail: console_tail(&spec.console_log, CONSOLE_TAIL_BYTES),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    async fn configure_inner(&self, vm: &Launched, spec: &LaunchSpec) -> Result<(), VmmError> {
        let root = jail_root(&spec.api_socket)?;
        let link = |from: &Path, name: &str, writable: bool| link_into(from, &root, name, writable);
        let mut jailed = spec.clone();
        jailed.kernel = link(&spec.kernel, "kernel", false)?;
        if let Some(initrd) = &spec.initrd {
            jailed.initrd = Some(link(initrd, "initrd", false)?);
        }
        jailed.drives = spec
            .drives
            .iter()
            .map(|drive| {
                Ok(DriveSpec {
                    path: link(
                        &drive.path,
                        &format!("drive-{}", drive.id),
                        !drive.read_only,
                    )?,
                    ..drive.clone()
                })
            })
            .collect::<Result<_, VmmError>>()?;
        let mut vsock_on_host = None;
        if let Some(vsock) = &spec.vsock {
            let in_jail = root.join(JAIL_VSOCK);
            link_socket(&vsock.uds_path, &in_jail)?;
            vsock_on_host = Some(in_jail);
            jailed.vsock = Some(VsockSpec {
                cid: vsock.cid,
                uds_path: PathBuf::from(JAIL_VSOCK),
            });
        }
        if let Some(vmm_log) = &spec.vmm_log {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(vmm_log)
                .map_err(|source| VmmError::Prepare {
                    path: vmm_log.clone(),
                    source,
                })?;
            let log = link(vmm_log, JAIL_VMM_LOG, true)?;
            self.api
                .client(vm)
                .put_logger(&Logger {
                    log_path: Some(log),
                    level: None,
                    show_level: None,
                    show_log_origin: None,
                })
                .await
                .map_err(|source| VmmError::Api {
                    step: "set the VMM's log",
                    source,
                    console_tail: String::new(),
                })?;
        }
        self.api
            .configure_api(vm, &jailed, vsock_on_host.as_deref())
            .await
    }

    async fn kill_inner(&self, vm: &Launched) -> Result<KillOutcome, VmmError> {
        let id = vm_id_of(&vm.api_socket)?;
        let before = vm.liveness().map_err(|source| VmmError::Process {
            pid: vm.pid,
            source,
        })?;
        match self.helper.kill_vmm(&id, vm.pid, vm.start_time_ticks).await {
            Ok(()) if before == Liveness::Alive => Ok(KillOutcome::Killed),
            Ok(()) => Ok(KillOutcome::AlreadyDead(before)),
            // Not a VMM the helper launched (one this bangerd started itself before it was
            // configured to go through the helper): ours to kill as its owner.
            Err(banger_helper::HelperError::Refused { message }) => {
                tracing::info!(pid = vm.pid, %message, "the helper did not kill it; killing it as its owner");
                kill_recorded(vm, super::vmm::DEFAULT_KILL_TIMEOUT).await
            }
            Err(error) => Err(VmmError::Process {
                pid: vm.pid,
                source: io::Error::other(error.to_string()),
            }),
        }
    }
}

impl Vmm for JailedFirecracker {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn agent_transport(&self) -> AgentTransport {
        AgentTransport::Vsock
    }

    fn spawn<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Result<Spawned, VmmError>> {
        Box::pin(self.spawn_inner(spec))
    }

    fn configure<'a>(
        &'a self,
        vm: &'a Launched,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(self.configure_inner(vm, spec))
    }

    fn start<'a>(&'a self, vm: &'a Launched) -> BoxFuture<'a, Result<(), VmmError>> {
        self.api.start(vm)
    }

    fn shutdown<'a>(&'a self, vm: &'a Launched) -> BoxFuture<'a, Result<(), VmmError>> {
        self.api.shutdown(vm)
    }

    fn kill<'a>(&'a self, vm: &'a Launched) -> BoxFuture<'a, Result<KillOutcome, VmmError>> {
        Box::pin(self.kill_inner(vm))
    }

    fn answers<'a>(&'a self, vm: &'a Launched) -> BoxFuture<'a, bool> {
        self.api.answers(vm)
    }

    /// The jail's Firecracker, found by its executable (the jail's copy) among this user's
    /// processes: the VM directory's API socket link says which jail.
    fn launched_for<'a>(&'a self, control_socket: &'a Path) -> BoxFuture<'a, Vec<Launched>> {
        let socket = control_socket.to_path_buf();
        Box::pin(async move {
            let Ok(root) = jail_root(&socket) else {
                return Vec::new();
            };
            tokio::task::spawn_blocking(move || {
                processes_running_jail_binary(&root)
                    .into_iter()
                    .map(|(pid, start_time_ticks)| Launched {
                        pid,
                        start_time_ticks,
                        api_socket: socket.clone(),
                    })
                    .collect()
            })
            .await
            .unwrap_or_default()
        })
    }

    /// As for any VMM, and once it is gone its jail goes too (best effort: the next launch
    /// or kill of the VM clears a jail left behind).
    fn wait_dead<'a>(
        &'a self,
        vm: &'a Launched,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<bool, VmmError>> {
        Box::pin(async move {
            let dead = process::wait_dead(vm.pid, vm.start_time_ticks, timeout)
                .await
                .map_err(|source| VmmError::Process {
                    pid: vm.pid,
                    source,
                })?;
            if dead
                && let Ok(id) = vm_id_of(&vm.api_socket)
                && let Err(error) = self.helper.remove_jail(&id).await
            {
                tracing::warn!(vm = %id, %error, "could not remove the jail of a VMM that is gone");
            }
            Ok(dead)
        })
    }
}

/// Whether banger-helper starts this bangerd's Firecracker VMs: `helper` says yes, `bangerd`
/// no; `auto` says yes for a bangerd that is not root whose helper answers that it has a
/// jailer (asked once, at start). Without one, Firecracker would need this user's own
/// `/dev/net/tun`, and the `auto` VMM rule judges that.
pub async fn firecracker_through_helper(
    config: &crate::config::Config,
    helper: &banger_helper::HelperClient,
) -> bool {
    use crate::config::FirecrackerLaunch;
    match config.firecracker_launch {
        FirecrackerLaunch::Helper => true,
        FirecrackerLaunch::Bangerd => false,
        FirecrackerLaunch::Auto if nix::unistd::geteuid().is_root() => false,
        FirecrackerLaunch::Auto => {
            match tokio::time::timeout(std::time::Duration::from_secs(2), helper.jail()).await {
                Ok(Ok(Some(_))) => true,
                Ok(Ok(None)) => {
                    tracing::info!(
                        "banger-helper has no jailer: Firecracker VMs need this user's own /dev/kvm and /dev/net/tun"
                    );
                    false
                }
                Ok(Err(error)) => {
                    tracing::info!(%error, "cannot ask banger-helper whether it starts Firecracker");
                    false
                }
                Err(_) => {
                    tracing::info!(
                        "banger-helper did not say in time whether it starts Firecracker"
                    );
                    false
                }
            }
        }
    }
}

/// The VM id a control socket belongs to: the name of the VM directory it lies in (the id
/// the launch gave the helper).
fn vm_id_of(api_socket: &Path) -> Result<String, VmmError> {
    api_socket
        .parent()
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            VmmError::InvalidSpec(format!("{} is not in a VM directory", api_socket.display()))
        })
}

/// The chroot a jailed VMM's API socket link points into.
fn jail_root(api_socket: &Path) -> Result<PathBuf, VmmError> {
    let target = fs::read_link(api_socket).map_err(|source| VmmError::Prepare {
        path: api_socket.to_path_buf(),
        source,
    })?;
    target
        .parent()
        .filter(|root| root.is_absolute())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            VmmError::InvalidSpec(format!(
                "{} does not lead into a jail ({})",
                api_socket.display(),
                target.display()
            ))
        })
}

/// `link` becomes a symlink to `target` (a socket in the jail), replacing what was there.
fn link_socket(link: &Path, target: &Path) -> Result<(), VmmError> {
    match fs::remove_file(link) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(VmmError::Prepare {
                path: link.to_path_buf(),
                source,
            });
        }
    }
    std::os::unix::fs::symlink(target, link).map_err(|source| VmmError::Prepare {
        path: link.to_path_buf(),
        source,
    })
}

/// Hard-links `from` into the chroot `root` as `name` and returns the path the VMM sees it
/// by (relative to the chroot's root, its working directory). A file that cannot be linked
/// (another filesystem) is copied when the VMM only reads it; a writable one is an error.
fn link_into(from: &Path, root: &Path, name: &str, writable: bool) -> Result<PathBuf, VmmError> {
    let to = root.join(name);
    let prepare = |source| VmmError::Prepare {
        path: to.clone(),
        source,
    };
    match fs::remove_file(&to) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(prepare(source)),
    }
    match fs::hard_link(from, &to) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(libc::EXDEV) && !writable => {
            super::disk::clone_or_copy(from, &to)
                .map_err(|e| prepare(io::Error::other(e.to_string())))?;
        }
        Err(error) if error.raw_os_error() == Some(libc::EXDEV) => {
            return Err(prepare(io::Error::other(format!(
                "{} cannot be linked into the jail: banger-helper's --jail-dir must be on the \
                 filesystem of banger's state directory, so that what the guest writes lands \
                 in the VM's own disk",
                from.display()
            ))));
        }
        Err(source) => return Err(prepare(source)),
    }
    Ok(PathBuf::from(name))
}

/// The processes (pid, start time) whose executable is the jail's copy of Firecracker: the
/// executable file directly in `root` whose name contains "firecracker".
fn processes_running_jail_binary(root: &Path) -> Vec<(u32, u64)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let binaries: Vec<(u64, u64)> = entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.contains("firecracker") && !name.contains('.'))
        })
        .filter_map(|entry| fs::symlink_metadata(entry.path()).ok())
        .filter(|meta| meta.is_file())
        .map(|meta| (meta.dev(), meta.ino()))
        .collect();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/exe"))
                .is_ok_and(|meta| binaries.contains(&(meta.dev(), meta.ino())))
        })
        .filter_map(|pid| {
            let ticks = process::proc_start_time_ticks(pid).ok()?;
            (process::liveness(pid, ticks).ok()? == Liveness::Alive).then_some((pid, ticks))
        })
        .collect()
}
