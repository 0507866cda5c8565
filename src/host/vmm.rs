//! The virtual machine monitor behind a trait: how banger starts, configures, boots, stops and
//! kills one VM's VMM process.
//!
//! [`Vmm`] is the seam where Firecracker (real or the project's fake, which share a command line
//! and an API) and QEMU's `microvm` machine (`super::qemu`) sit side by side; bangerd picks one
//! per VM at run time (`crate::vmms`), so the trait is object safe (`Arc<dyn Vmm>`) and its
//! methods return boxed futures.
//!
//! The lifecycle of one VMM process, as the operations' steps drive it:
//!
//! ```text
//!   spawn ──▶ API socket answers ──▶ configure ──▶ start ──▶ running ──▶ shutdown ─▶ exited
//!     │              │                   │            │          │                      ▲
//!     └── fails: the process is killed before the error returns ─┴──────── kill ────────┘
//! ```
//!
//! [`Launched`] (pid, `/proc` start time, API socket) is plain data that operations record in
//! the event log; every later call works from it alone, so a VMM re-adopted after a daemon
//! restart is driven exactly like one started by this process. The [`tokio::process::Child`]
//! in [`Spawned`] is only for the process that started it: awaiting it is how that process
//! learns the exit status (and reaps the zombie); dropping it hands reaping to tokio.
//!
//! Invariants:
//! - a VMM is started in its own process group, with stdin closed and stdout and stderr (the
//!   guest serial console and the VMM's own messages) appended to the console log file;
//! - no signal reaches a process whose start time differs from the recorded one (pid reuse);
//! - every step is an idempotent ensure: a stale socket file nobody listens on is removed,
//!   starting a started instance succeeds, killing a dead process succeeds;
//! - a failed [`Vmm::launch`] leaves no process behind.

use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::firecracker::{
    BootSource, Drive, FirecrackerClient, FirecrackerError, InstanceState, MachineConfig,
    NetworkInterface, Vsock,
};
use super::process::{self, Liveness};

/// A boxed future, so that [`Vmm`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The environment variable that overrides the configured firecracker binary.
pub const FIRECRACKER_ENV: &str = "BANGER_FIRECRACKER";

/// The guest network interface id banger gives Firecracker (the guest sees it as eth0).
pub const NET_IFACE_ID: &str = "eth0";

/// How long a freshly spawned VMM may take before its API socket accepts.
pub const DEFAULT_API_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Vmm::kill`] waits for a SIGKILLed process to be gone.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of the console log errors quote.
pub const CONSOLE_TAIL_BYTES: usize = 2048;

/// Everything needed to start one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// The VMM's instance id: 1 to 64 letters, digits and `-` (Firecracker's `--id` rule).
    pub id: String,
    pub api_socket: PathBuf,
    /// Appended to, never truncated: it is the VM's serial console across restarts.
    pub console_log: PathBuf,
    /// The VMM's own log (Firecracker's `--log-path`). Without it Firecracker logs to its
    /// stdout, and its lines would mix into the serial console.
    #[serde(default)]
    pub vmm_log: Option<PathBuf>,
    pub vcpus: u8,
    pub mem_mib: u32,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The whole kernel command line (console, guest IP…).
    pub boot_args: String,
    pub drives: Vec<DriveSpec>,
    pub net: Option<NetSpec>,
    pub vsock: Option<VsockSpec>,
    /// The host-side unix socket of the guest agent's virtio-serial port (QEMU: a chardev
    /// server the VMM creates; the guest sees the port named `banger.agent`). Backends
    /// without virtio-serial (Firecracker) refuse a spec that has one.
    #[serde(default)]
    pub agent_serial: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveSpec {
    /// Letters, digits and `_`.
    pub id: String,
    pub path: PathBuf,
    pub root: bool,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    /// The host tap device.
    pub tap: String,
    /// The guest's MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockSpec {
    pub cid: u32,
    /// The host-side unix socket of the guest's vsock (`CONNECT <port>` handshake).
    pub uds_path: PathBuf,
}

/// How the host reaches a VM's guest agent, which depends on what its VMM gives the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentTransport {
    /// vsock, through Firecracker's host-side unix socket (`CONNECT <port>` / `OK <port>`):
    /// one socket connection per request.
    Vsock,
    /// A virtio-serial port named `banger.agent` behind a unix socket, multiplexed
    /// (`banger_agent::mux`): one connection per VM, one stream per request.
    VirtioSerial,
}

/// A running VMM as the event log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: tells this process apart from a later one with its pid.
    pub start_time_ticks: u64,
    pub api_socket: PathBuf,
}

impl Launched {
    pub fn liveness(&self) -> io::Result<Liveness> {
        process::liveness(self.pid, self.start_time_ticks)
    }
}

/// A VMM this process started: the record, and the child handle that yields its exit status
/// (`None` when another process started it for us — banger-helper's jailer — so its exit is
/// watched by pid and start time, as a re-adopted VMM's is).
#[derive(Debug)]
pub struct Spawned {
    pub launched: Launched,
    pub child: Option<tokio::process::Child>,
}

/// What [`Vmm::kill`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillOutcome {
    /// It ran; it was sent SIGKILL and is gone now.
    Killed,
    /// Nothing to kill: it had exited, or its pid is gone or belongs to another process.
    AlreadyDead(Liveness),
}

/// Why a VMM step failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("invalid VM launch spec: {0}")]
    InvalidSpec(String),
    #[error(
        "{what} {} is held by a running process; stop that VM first or pick another path",
        path.display()
    )]
    SocketInUse { what: &'static str, path: PathBuf },
    #[error("cannot prepare {}: {source}", path.display())]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start {}: {source}", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} exited ({status}) before its API socket answered; console tail:\n{console_tail}", binary.display())]
    ExitedEarly {
        binary: PathBuf,
        status: String,
        console_tail: String,
    },
    #[error(
        "{}'s API socket {} did not answer within {timeout_ms} ms; console tail:\n{console_tail}",
        binary.display(), socket.display()
    )]
    ApiNotReady {
        binary: PathBuf,
        socket: PathBuf,
        timeout_ms: u64,
        console_tail: String,
    },
    #[error("{step}: {source}")]
    Api {
        step: &'static str,
        #[source]
        source: FirecrackerError,
        /// The console log's end when the step failed (a VMM that died mid-request says why
        /// there). Kept out of the message, for the caller to record or show.
        console_tail: String,
    },
    #[error("{step}: {source}")]
    Qmp {
        step: &'static str,
        #[source]
        source: super::qmp::QmpError,
        /// As for [`VmmError::Api`].
        console_tail: String,
    },
    #[error("{0}")]
    Mismatch(String),
    #[error("process {pid}: {source}")]
    Process {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("process {pid} still runs {timeout_ms} ms after SIGKILL")]
    KillTimeout { pid: u32, timeout_ms: u64 },
}

impl VmmError {
    /// Fills in the console tail of a [`VmmError::Api`] that has none yet.
    pub fn with_console_tail(mut self, console_log: &Path) -> VmmError {
        if let VmmError::Api { console_tail, .. } | VmmError::Qmp { console_tail, .. } = &mut self
            && console_tail.is_empty()
        {
            *console_tail = console_tail_of(console_log);
        }
        self
    }
}

fn console_tail_of(console_log: &Path) -> String {
    console_tail(console_log, CONSOLE_TAIL_BYTES)
}

/// One VMM backend.
pub trait Vmm: Send + Sync {
    /// A short name for messages and `banger doctor`: "firecracker", "qemu".
    fn name(&self) -> &'static str;

    /// How the host reaches the guest agent of a VM this backend runs.
    fn agent_transport(&self) -> AgentTransport;

    /// Starts the VMM process and waits until its control socket accepts connections.
    fn spawn<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Result<Spawned, VmmError>>;

    /// Gives the spawned VMM its machine, kernel, drives, network interface and vsock.
    fn configure<'a>(
        &'a self,
        vm: &'a Launched,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<(), VmmError>>;

    /// Boots the configured guest. Succeeds on an instance that already runs.
    fn start<'a>(&'a self, vm: &'a Launched) -> BoxFuture<'a, Result<(), VmmError>>;

    /// Asks the guest to shut down (Ctrl-Alt-Del) and returns at once; the process exits when
    /// the guest has. Pair it with [`Vmm::wait_dead`] and [`Vmm::kill`] for a bounded stop.
    fn shutdown<'a>(&'a self, vm: &'a Launched) -> BoxFuture<'a, Result<(), VmmError>>;

    /// spawn + configure + start. On failure the process is killed before the error returns,
    /// so nothing is left running.
    fn launch<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Result<Spawned, VmmError>> {
        Box::pin(async move {
            let mut spawned = self.spawn(spec).await?;
            let configured = async {
                self.configure(&spawned.launched, spec).await?;
                self.start(&spawned.launched).await
            }
            .await;
            match configured {
                Ok(()) => Ok(spawned),
                Err(err) => {
                    // Best effort: the configure error is the one worth reporting.
                    if let Err(kill_err) = self.kill(&spawned.launched).await {
                        tracing::warn!(pid = spawned.launched.pid, error = %kill_err,
                            "could not kill a VMM whose launch failed");
                    }
                    // Reap it now rather than leave it to tokio's orphan queue.
                    if let Some(child) = spawned.child.as_mut() {
                        let _ = child.wait().await;
                    }
                    // Read after the process is gone, so its last words are in the file.
                    Err(err.with_console_tail(&spec.console_log))
                }
            }
        })
    }

    /// SIGKILLs the VMM's process group (a VMM's helpers, such as the fake's guest agent, go
    /// with it) and waits until the process is gone. Killing a process that is already dead,
    /// or whose pid was reused, succeeds without sending anything.
    fn kill<'a>(&'a self, vm: &'a Launched) -> BoxFuture<'a, Result<KillOutcome, VmmError>> {
        Box::pin(kill_recorded(vm, DEFAULT_KILL_TIMEOUT))
    }

    /// Whether the VMM recorded as `vm` still runs (same pid *and* start time) and answers on
    /// its control socket: what re-adopting it after a daemon restart requires.
    fn answers<'a>(&'a self, vm: &'a Launched) -> BoxFuture<'a, bool>;

    /// The VMMs this backend started for `control_socket`, found by their command lines:
    /// what undoes a launch that crashed before the VMM's pid reached the log.
    fn launched_for<'a>(&'a self, control_socket: &'a Path) -> BoxFuture<'a, Vec<Launched>>;

    /// Waits up to `timeout` for the VMM process to be gone; returns whether it is.
    fn wait_dead<'a>(
        &'a self,
        vm: &'a Launched,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<bool, VmmError>> {
        Box::pin(async move {
            process::wait_dead(vm.pid, vm.start_time_ticks, timeout)
                .await
                .map_err(|source| VmmError::Process {
                    pid: vm.pid,
                    source,
                })
        })
    }
}

/// [`Vmm::kill`]'s body, usable without a backend (recovery kills what the log names).
pub async fn kill_recorded(vm: &Launched, timeout: Duration) -> Result<KillOutcome, VmmError> {
    let process_error = |source| VmmError::Process {
        pid: vm.pid,
        source,
    };
    let before = process::signal_recorded(vm.pid, vm.start_time_ticks, Signal::SIGKILL)
        .map_err(process_error)?;
    if before != Liveness::Alive {
        return Ok(KillOutcome::AlreadyDead(before));
    }
    if process::wait_dead(vm.pid, vm.start_time_ticks, timeout)
        .await
        .map_err(process_error)?
    {
        Ok(KillOutcome::Killed)
    } else {
        Err(VmmError::KillTimeout {
            pid: vm.pid,
            timeout_ms: millis(timeout),
        })
    }
}

/// Firecracker, or anything with its command line and API (the fake).
#[derive(Clone, Debug)]
pub struct FirecrackerVmm {
    pub binary: PathBuf,
    pub api_ready_timeout: Duration,
    /// Per-request deadline for API calls.
    pub request_timeout: Duration,
    /// Added to the environment the VMM inherits (the fake's knobs, in tests).
    pub envs: Vec<(String, String)>,
}

impl FirecrackerVmm {
    pub fn new(binary: impl Into<PathBuf>) -> FirecrackerVmm {
        FirecrackerVmm {
            binary: binary.into(),
            api_ready_timeout: DEFAULT_API_READY_TIMEOUT,
            request_timeout: super::firecracker::DEFAULT_REQUEST_TIMEOUT,
            envs: Vec::new(),
        }
    }

    /// Sets one environment variable for the VMM processes this backend starts.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> FirecrackerVmm {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// `BANGER_FIRECRACKER` when set and not empty, else `configured` (from the config file).
    pub fn from_env_or(configured: impl Into<PathBuf>) -> FirecrackerVmm {
        match std::env::var_os(FIRECRACKER_ENV) {
            Some(path) if !path.is_empty() => FirecrackerVmm::new(path),
            _ => FirecrackerVmm::new(configured),
        }
    }

    pub(crate) fn client(&self, vm: &Launched) -> FirecrackerClient {
        FirecrackerClient::new(&vm.api_socket).with_timeout(self.request_timeout)
    }

    async fn spawn_inner(&self, spec: &LaunchSpec) -> Result<Spawned, VmmError> {
        let console = prepare_firecracker_launch(spec).await?;
        let console_err = console.try_clone().map_err(|source| VmmError::Prepare {
            path: spec.console_log.clone(),
            source,
        })?;

        let mut command = tokio::process::Command::new(&self.binary);
        command
            .arg("--api-sock")
            .arg(&spec.api_socket)
            .arg("--id")
            .arg(&spec.id);
        if let Some(vmm_log) = &spec.vmm_log {
            // Firecracker opens the log path without creating it.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(vmm_log)
                .map_err(|source| VmmError::Prepare {
                    path: vmm_log.clone(),
                    source,
                })?;
            command.arg("--log-path").arg(vmm_log);
        }
        command
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(console))
            .stderr(Stdio::from(console_err))
            // Its own group: a Ctrl-C aimed at a foreground bangerd does not reach VMs, and
            // killing the group takes the VMM's helpers along.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|source| VmmError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        let pid = child.id().ok_or_else(|| VmmError::Spawn {
            binary: self.binary.clone(),
            source: io::Error::other("the process exited at once"),
        })?;
        // Read before anything can reap it: a zombie still has its stat file.
        let start_time_ticks = match process::proc_start_time_ticks(pid) {
            Ok(ticks) => ticks,
            Err(source) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(VmmError::Process { pid, source });
            }
        };
        let launched = Launched {
            pid,
            start_time_ticks,
            api_socket: spec.api_socket.clone(),
        };
        match self.wait_api_ready(&mut child, spec).await {
            Ok(()) => Ok(Spawned {
                launched,
                child: Some(child),
            }),
            Err(err) => {
                let _ = kill_recorded(&launched, DEFAULT_KILL_TIMEOUT).await;
                let _ = child.wait().await;
                Err(err)
            }
        }
    }

    /// Polls the API socket until it accepts, the process exits, or the deadline passes.
    async fn wait_api_ready(
        &self,
        child: &mut tokio::process::Child,
        spec: &LaunchSpec,
    ) -> Result<(), VmmError> {
        let deadline = Instant::now() + self.api_ready_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if tokio::net::UnixStream::connect(&spec.api_socket)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(VmmError::ExitedEarly {
                    binary: self.binary.clone(),
                    status: describe_status(status),
                    console_tail: console_tail(&spec.console_log, CONSOLE_TAIL_BYTES),
                });
            }
            if Instant::now() >= deadline {
                return Err(VmmError::ApiNotReady {
                    binary: self.binary.clone(),
                    socket: spec.api_socket.clone(),
                    timeout_ms: millis(self.api_ready_timeout),
                    console_tail: console_tail(&spec.console_log, CONSOLE_TAIL_BYTES),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    async fn configure_inner(&self, vm: &Launched, spec: &LaunchSpec) -> Result<(), VmmError> {
        let vsock_on_host = spec.vsock.as_ref().map(|vsock| vsock.uds_path.clone());
        self.configure_api(vm, spec, vsock_on_host.as_deref()).await
    }

    /// Configures the VMM through its API from `spec`, whose paths are as the VMM sees them
    /// (a jailed one sees its chroot); `vsock_on_host` is where the vsock socket lies as this
    /// process sees it, checked for a stale file first.
    pub(crate) async fn configure_api(
        &self,
        vm: &Launched,
        spec: &LaunchSpec,
        vsock_on_host: Option<&Path>,
    ) -> Result<(), VmmError> {
        let client = self.client(vm);
        let api = |step: &'static str| {
            let console_log = spec.console_log.clone();
            move |source| VmmError::Api {
                step,
                source,
                console_tail: console_tail(&console_log, CONSOLE_TAIL_BYTES),
            }
        };
        client
            .put_machine_config(&MachineConfig::new(spec.vcpus, spec.mem_mib))
            .await
            .map_err(api("configure the machine"))?;
        client
            .put_boot_source(&BootSource {
                kernel_image_path: spec.kernel.clone(),
                boot_args: Some(spec.boot_args.clone()),
                initrd_path: spec.initrd.clone(),
            })
            .await
            .map_err(api("set the boot source"))?;
        for drive in &spec.drives {
            client
                .put_drive(&Drive {
                    drive_id: drive.id.clone(),
                    path_on_host: drive.path.clone(),
                    is_root_device: drive.root,
                    is_read_only: drive.read_only,
                    partuuid: None,
                    cache_type: None,
                    io_engine: None,
                })
                .await
                .map_err(api("attach a drive"))?;
        }
        if let Some(net) = &spec.net {
            client
                .put_network_interface(&NetworkInterface {
                    iface_id: NET_IFACE_ID.to_string(),
                    host_dev_name: net.tap.clone(),
                    guest_mac: net.mac.clone(),
                })
                .await
                .map_err(api("attach the network interface"))?;
        }
        if let Some(vsock) = &spec.vsock {
            // Firecracker binds uds_path itself and fails if the file exists: a file left by
            // an earlier attempt that nobody serves is removed. A live one stays; if it is
            // this VMM's own device (configure run twice), Firecracker replaces it, and if it
            // is anybody else's, Firecracker refuses and says so.
            remove_if_stale(vsock_on_host.unwrap_or(&vsock.uds_path)).await?;
            client
                .put_vsock(&Vsock {
                    guest_cid: vsock.cid,
                    uds_path: vsock.uds_path.clone(),
                })
                .await
                .map_err(api("attach the vsock device"))?;
        }
        Ok(())
    }

    async fn start_inner(&self, vm: &Launched) -> Result<(), VmmError> {
        let client = self.client(vm);
        let api = |step| {
            move |source| VmmError::Api {
                step,
                source,
                console_tail: String::new(),
            }
        };
        let info = client
            .describe_instance()
            .await
            .map_err(api("ask the VMM for its state"))?;
        if info.state != InstanceState::NotStarted {
            return Ok(());
        }
        client
            .instance_start()
            .await
            .map_err(api("start the instance"))
    }
}

impl Vmm for FirecrackerVmm {
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
        Box::pin(self.start_inner(vm))
    }

    fn shutdown<'a>(&'a self, vm: &'a Launched) -> BoxFuture<'a, Result<(), VmmError>> {
        Box::pin(async move {
            self.client(vm)
                .send_ctrl_alt_del()
                .await
                .map_err(|source| VmmError::Api {
                    step: "send Ctrl-Alt-Del",
                    source,
                    console_tail: String::new(),
                })
        })
    }

    fn answers<'a>(&'a self, vm: &'a Launched) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            vm.liveness().ok() == Some(Liveness::Alive)
                && self.client(vm).describe_instance().await.is_ok()
        })
    }

    fn launched_for<'a>(&'a self, control_socket: &'a Path) -> BoxFuture<'a, Vec<Launched>> {
        let socket = control_socket.to_path_buf();
        Box::pin(async move {
            let wanted = socket.clone();
            // A scan of all of /proc: off the async workers.
            let found = tokio::task::spawn_blocking(move || {
                process::processes_with_argument("--api-sock", wanted.as_os_str())
            })
            .await
            .unwrap_or_default();
            found
                .into_iter()
                .map(|(pid, start_time_ticks)| Launched {
                    pid,
                    start_time_ticks,
                    api_socket: socket.clone(),
                })
                .collect()
        })
    }
}

/// What every Firecracker launch does first, whoever starts the process: the spec checked
/// (with no virtio-serial port: Firecracker's guests reach the agent over vsock), the VM's
/// directories made, a stale API socket removed (a live one refused), and the console log
/// opened for appending, for the VMM's stdout and stderr.
pub(crate) async fn prepare_firecracker_launch(
    spec: &LaunchSpec,
) -> Result<std::fs::File, VmmError> {
    validate_spec(spec)?;
    if let Some(serial) = &spec.agent_serial {
        return Err(VmmError::InvalidSpec(format!(
            "firecracker has no virtio-serial port for the agent socket {}; its guests reach the agent over vsock",
            serial.display()
        )));
    }
    for dir in [spec.api_socket.parent(), spec.console_log.parent()]
        .into_iter()
        .flatten()
    {
        std::fs::create_dir_all(dir).map_err(|source| VmmError::Prepare {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    remove_stale_socket("the API socket", &spec.api_socket).await?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.console_log)
        .map_err(|source| VmmError::Prepare {
            path: spec.console_log.clone(),
            source,
        })
}

/// The rules every backend keeps (Firecracker's, which QEMU's limits also allow), checked
/// before anything is started so that a bad spec changes nothing on the host.
pub(crate) fn validate_spec(spec: &LaunchSpec) -> Result<(), VmmError> {
    let invalid = |msg: String| Err(VmmError::InvalidSpec(msg));
    if spec.id.is_empty()
        || spec.id.len() > 64
        || !spec
            .id
            .chars()
            .all(|c| c == '-' || c.is_ascii_alphanumeric())
    {
        return invalid(format!(
            "VMM id {:?} must be 1 to 64 letters, digits and -",
            spec.id
        ));
    }
    if spec.vcpus == 0 || spec.vcpus > 32 {
        return invalid(format!("{} vCPUs: use 1 to 32", spec.vcpus));
    }
    if spec.mem_mib == 0 {
        return invalid("0 MiB of memory".to_string());
    }
    if spec.drives.iter().filter(|d| d.root).count() > 1 {
        return invalid("more than one root drive".to_string());
    }
    for drive in &spec.drives {
        if drive.id.is_empty()
            || !drive
                .id
                .chars()
                .all(|c| c == '_' || c.is_ascii_alphanumeric())
        {
            return invalid(format!(
                "drive id {:?} must be letters, digits and _",
                drive.id
            ));
        }
    }
    if let Some(vsock) = &spec.vsock
        && vsock.cid < 3
    {
        return invalid(format!(
            "vsock CID {} is reserved; use 3 or more",
            vsock.cid
        ));
    }
    // sun_path holds 108 bytes including the terminating NUL.
    let sockets = [
        Some(&spec.api_socket),
        spec.vsock.as_ref().map(|v| &v.uds_path),
        spec.agent_serial.as_ref(),
    ];
    for socket in sockets.into_iter().flatten() {
        if socket.as_os_str().len() > 107 {
            return invalid(format!(
                "socket path {} is longer than a unix socket path may be (107 bytes)",
                socket.display()
            ));
        }
    }
    Ok(())
}

/// Removes `path` when it is a socket file nobody accepts on; refuses when somebody does.
pub(crate) async fn remove_stale_socket(what: &'static str, path: &Path) -> Result<(), VmmError> {
    match remove_if_stale(path).await? {
        SocketFile::Live => Err(VmmError::SocketInUse {
            what,
            path: path.to_path_buf(),
        }),
        SocketFile::Absent | SocketFile::Removed => Ok(()),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SocketFile {
    Absent,
    Removed,
    /// Somebody accepts connections on it; left alone.
    Live,
}

async fn remove_if_stale(path: &Path) -> Result<SocketFile, VmmError> {
    let prepare = |source| VmmError::Prepare {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(SocketFile::Absent),
        Err(source) => return Err(prepare(source)),
        Ok(_) => {}
    }
    // tokio's connect: a listener with a full backlog would block std's on an async worker.
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Ok(SocketFile::Live);
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(SocketFile::Removed),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(SocketFile::Absent),
        Err(source) => Err(prepare(source)),
    }
}

/// The last `max_bytes` of a console log, from a line start, as text. Empty when the file
/// cannot be read: a missing console must not hide the error it was meant to explain.
pub fn console_tail(path: &Path, max_bytes: usize) -> String {
    let read = || -> io::Result<Vec<u8>> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(max_bytes as u64);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        if start > 0
            && let Some(newline) = buf.iter().position(|&b| b == b'\n')
        {
            buf.drain(..=newline);
        }
        Ok(buf)
    };
    match read() {
        Ok(buf) => String::from_utf8_lossy(&buf).trim_end().to_string(),
        Err(_) => String::new(),
    }
}

/// "exit status 1" or "killed by SIGKILL".
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> LaunchSpec {
        LaunchSpec {
            id: "vm-1".into(),
            api_socket: dir.join("api.sock"),
            console_log: dir.join("console.log"),
            vmm_log: None,
            vcpus: 1,
            mem_mib: 128,
            kernel: dir.join("vmlinux"),
            initrd: None,
            boot_args: "console=ttyS0".into(),
            drives: vec![],
            net: None,
            vsock: None,
            agent_serial: None,
        }
    }

    #[test]
    fn bad_specs_are_refused_before_anything_happens() {
        let dir = tempfile::tempdir().unwrap();
        let good = spec(dir.path());
        assert!(validate_spec(&good).is_ok());
        let cases: Vec<LaunchSpec> = vec![
            LaunchSpec {
                id: "has space".into(),
                ..good.clone()
            },
            LaunchSpec {
                vcpus: 33,
                ..good.clone()
            },
            LaunchSpec {
                mem_mib: 0,
                ..good.clone()
            },
            LaunchSpec {
                drives: vec![
                    DriveSpec {
                        id: "a".into(),
                        path: "/a".into(),
                        root: true,
                        read_only: false,
                    },
                    DriveSpec {
                        id: "b".into(),
                        path: "/b".into(),
                        root: true,
                        read_only: false,
                    },
                ],
                ..good.clone()
            },
            LaunchSpec {
                vsock: Some(VsockSpec {
                    cid: 2,
                    uds_path: "/v".into(),
                }),
                ..good.clone()
            },
            LaunchSpec {
                api_socket: PathBuf::from(format!("/{}", "x".repeat(120))),
                ..good.clone()
            },
        ];
        for case in cases {
            assert!(
                matches!(validate_spec(&case), Err(VmmError::InvalidSpec(_))),
                "{case:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_stale_socket_is_removed_and_a_live_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        remove_stale_socket("x", &path).await.unwrap(); // absent: nothing to do
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(
            remove_stale_socket("x", &path).await,
            Err(VmmError::SocketInUse { .. })
        ));
        drop(listener); // the file stays; nobody accepts any more
        remove_stale_socket("x", &path).await.unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn console_tail_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, "first line\nsecond line\nthird\n").unwrap();
        assert_eq!(console_tail(&path, 1000), "first line\nsecond line\nthird");
        assert_eq!(console_tail(&path, 10), "third");
        assert_eq!(console_tail(&dir.path().join("absent"), 10), "");
    }

    #[tokio::test]
    async fn a_binary_that_exits_at_once_is_reported_with_its_console() {
        let dir = tempfile::tempdir().unwrap();
        // GNU cat refuses --api-sock on stderr and exits 1: a VMM that dies at start-up.
        // (A script written here could hit ETXTBSY while other tests fork.)
        let err = FirecrackerVmm::new("cat")
            .spawn(&spec(dir.path()))
            .await
            .unwrap_err();
        match err {
            VmmError::ExitedEarly {
                status,
                console_tail,
                ..
            } => {
                assert_eq!(status, "exit status 1");
                assert!(console_tail.contains("api-sock"), "{console_tail}");
            }
            other => panic!("unexpected: {other}"),
        }
    }

    #[tokio::test]
    async fn killing_a_dead_record_is_a_no_op() {
        let vm = Launched {
            pid: 1 << 23,
            start_time_ticks: 1,
            api_socket: "/nonexistent".into(),
        };
        let vmm = FirecrackerVmm::new("/nonexistent/firecracker");
        assert_eq!(
            vmm.kill(&vm).await.unwrap(),
            KillOutcome::AlreadyDead(Liveness::Gone)
        );
    }
}
