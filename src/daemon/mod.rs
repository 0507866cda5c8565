//! bangerd: the daemon that owns the event log, the projections and all orchestration.
//!
//! This module owns the daemon's life: startup (directories, the one-daemon-per-state-dir
//! lock, the log, `DaemonStarted`, crash recovery, the socket), the RPC server
//! ([`server`]), the one dispatch table ([`dispatch`]) and the method handlers
//! ([`handlers`], [`follow`]), the web [`dashboard`], and shutdown. What operations do to
//! the host lives in [`crate::operations`].
//!
//! ```text
//!  start ─▶ config ─▶ dirs ─▶ pid lock ─▶ open log + journal ─▶ DaemonStarted ─▶ recovery
//!        ─▶ re-adopt running VMs (supervisor) ─▶ bind socket
//!                                                                                    │
//!   exit 0 ◀─ remove socket ◀─ close journal ◀─ DaemonStopped ◀─ drain ◀── serve ◀───┘
//!                                                                  ▲
//!                                  SIGTERM / SIGINT / daemon.shutdown
//! ```
//!
//! Invariants:
//! - At most one bangerd per state directory: the flock on `bangerd.pid` is taken before the
//!   log is opened and held until the process exits. Holding it is what makes removing a
//!   stale socket file safe.
//! - Recovery runs before the socket exists, so no request ever sees a half-recovered store;
//!   so does re-adoption, so no request sees a VM as running whose VMM died meanwhile.
//! - A read-only log (corruption found) does not stop the daemon: reads are served, every
//!   write is answered `unavailable` with the reason, and `daemon.ping` says why.
//! - Operations run in tasks of their own, detached from the connection that asked: a client
//!   that disconnects never cancels an operation between two steps. Shutdown waits for them.
//! - `DaemonStopped` is the last event a clean shutdown appends.

pub mod dashboard;
pub mod dispatch;
pub mod dns;
pub mod ensure;
pub mod follow;
pub mod guest;
pub mod handlers;
pub mod images;
pub mod kernels;
pub(crate) mod lock;
pub mod orphans;
pub mod progress;
pub mod server;
pub mod ssh;
pub mod stats;
pub mod supervisor;
pub mod tap_pool;
pub mod vm;
pub mod workspace;

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_events::{
    DaemonStarted, DaemonStopped, Event, Health, IdGenerator, Journal, JournalOptions, LogError,
    NewEvent, RedbLog,
};
use banger_projections::Projections;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::host::backends::Backends;
use crate::host::guest_agent::AgentLinks;
use crate::host::network::GuestNetwork;
use crate::host::qemu::QemuVmm;
use crate::host::vmm::FirecrackerVmm;
use crate::operations::image_pull::ImageHost;
use crate::operations::vm_common::VmHost;
use crate::operations::{FailpointError, Failpoints, Runner, recovery};
use crate::paths::{Layout, PathsError};

/// This build's version, as `daemon.ping` and `DaemonStarted` report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long shutdown waits for open connections to finish their current request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Command-line choices of bangerd.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Use the system layout (/var/lib/banger, /run/banger…) instead of the user's.
    pub system: bool,
}

/// Why bangerd could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Paths(#[from] PathsError),
    #[error(transparent)]
    Failpoints(#[from] FailpointError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "bangerd is already running for {} ({}); stop it first (`banger system restart`, or kill that pid)",
        state_dir.display(), PidText(*pid)
    )]
    AlreadyRunning {
        state_dir: PathBuf,
        pid: Option<u32>,
    },
    #[error("cannot open the event log {}: {source}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: LogError,
    },
    #[error(
        "the socket path {} is {len} bytes long, more than a unix socket allows (107); use a shorter BANGER_ROOT or XDG_RUNTIME_DIR",
        path.display()
    )]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("cannot listen on {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("{0}")]
    Images(String),
    #[error("cannot catch SIGTERM and SIGINT: {0}")]
    Signals(#[source] io::Error),
}

struct PidText(Option<u32>);

impl fmt::Display for PidText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("pid unknown"),
        }
    }
}

/// What every handler shares.
pub struct Daemon {
    pub layout: Layout,
    pub journal: Arc<Journal<Projections>>,
    pub runner: Arc<Runner>,
    /// Op ids for requests.
    pub ids: IdGenerator,
    pub started: Instant,
    /// Cancelled when the daemon starts shutting down: the accept loop stops, idle
    /// connections close and streams end.
    pub shutdown: CancellationToken,
    /// Why it is shutting down, recorded in `DaemonStopped`.
    stop_reason: Mutex<Option<String>>,
    /// Running operations; shutdown waits for them.
    pub ops: TaskTracker,
    /// What VM operations run against: the VMM backend, the configuration.
    pub vms: Arc<VmHost>,
    /// What image pulls share: the registry client and blob cache, the catalog.
    pub images: Arc<ImageHost>,
    /// Watches VMMs; knows when each VM was last used.
    pub supervisor: Arc<supervisor::Supervisor>,
    /// The DNS server for `NAME.vm` on the bridge's address.
    pub dns: Arc<dns::DnsService>,
}

impl Daemon {
    /// Records activity on VM `vm_id` (exec, ping, health…): it resets the VM's idle clock.
    pub fn touch_vm(&self, vm_id: banger_events::VmId) {
        self.supervisor.touch(vm_id);
    }

    /// Starts shutting down, for `reason` (the first reason given wins).
    pub fn begin_shutdown(&self, reason: &str) {
        {
            let mut stop = self.stop_reason.lock().unwrap_or_else(|e| e.into_inner());
            if stop.is_none() {
                *stop = Some(reason.to_owned());
            }
        }
        tracing::info!(reason, "shutting down");
        self.runner.close();
        self.shutdown.cancel();
    }

    fn stop_reason(&self) -> String {
        self.stop_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "stopped".into())
    }
}

/// Runs bangerd to completion: the body of the `bangerd` binary.
pub fn main(options: Options) -> ExitCode {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bangerd")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&DaemonError::Runtime(error)),
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &DaemonError) -> ExitCode {
    tracing::error!(%error, "bangerd cannot start");
    eprintln!("bangerd: {error}");
    ExitCode::FAILURE
}

/// Logs go to stderr, filtered by `BANGER_LOG` (tracing's env-filter syntax; default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BANGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: the CLI sends bangerd's output to a file.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .try_init();
}

/// Starts, serves until told to stop, and stops cleanly.
pub async fn run(options: Options) -> Result<(), DaemonError> {
    let layout = if options.system {
        Layout::system()
    } else {
        Layout::from_env()?
    };
    let signals = Signals::install()?;
    let failpoints = Failpoints::from_env()?;
    if !failpoints.is_empty() {
        tracing::warn!(
            ?failpoints,
            "failpoints are set (BANGER_FAILPOINT): this daemon will crash on purpose"
        );
    }
    let config = Config::load(&layout.config_path())?;
    let images = Arc::new(ImageHost::new(&config, &layout).map_err(DaemonError::Images)?);
    prepare_dirs(&layout)?;
    let lock = lock::PidLock::acquire(&layout.daemon_lock_path(), &layout.state_dir)?;

    let journal = Arc::new(open_journal(&layout.log_path())?);
    let network = Arc::new(GuestNetwork::new(&config.network));
    let firecracker = FirecrackerVmm::from_env_or(config.firecracker.clone());
    // QEMU gets its tap from banger-helper: bangerd need not be able to open /dev/net/tun,
    // which is root's alone on hardened hosts. So is /dev/kvm: a QEMU that takes it as a
    // descriptor gets it from banger-helper too.
    let mut qemu = QemuVmm::from_env_or(config.qemu.clone()).with_tap_opener(Arc::new(
        crate::host::network::HelperTaps(network.helper().clone()),
    ));
    let own_kvm = crate::host::kvm::probe();
    let helper_kvm = Arc::new(crate::host::network::HelperKvm(network.helper().clone()));
    match crate::host::qemu::kvm_through_helper(&qemu.binary, &own_kvm, &*helper_kvm).await {
        Ok(()) => {
            tracing::info!("QEMU runs guests under KVM, its /dev/kvm opened by banger-helper");
            qemu = qemu.with_kvm_opener(helper_kvm);
        }
        Err(why) if matches!(own_kvm, crate::host::kvm::KvmSupport::NoAccess(_)) => {
            tracing::info!("QEMU emulates (TCG): {why}");
        }
        Err(_) => {}
    }
    let mut backends = Backends::new(firecracker.clone(), qemu);
    // Firecracker opens /dev/kvm and /dev/net/tun itself: an unprivileged bangerd has
    // banger-helper start it through the jailer, which makes them inside the VM's chroot.
    if crate::host::jailed::firecracker_through_helper(&config, network.helper()).await {
        backends = backends.with_jailed_firecracker(crate::host::jailed::JailedFirecracker::new(
            network.helper().clone(),
            firecracker.binary,
        ));
    }
    let backends = Arc::new(backends);
    let agents = Arc::new(AgentLinks::new());
    let runner = Arc::new(Runner::new(
        journal.clone(),
        layout.clone(),
        network.clone(),
        backends.clone(),
        agents.clone(),
        failpoints,
    ));
    record_start_and_recover(&journal, &runner).await;
    // A download a killed bangerd was in the middle of left a temporary file in the cache.
    {
        let images = images.clone();
        let _ =
            tokio::task::spawn_blocking(move || images.registry.cache().sweep_stale_temp_files())
                .await;
    }
    let vms = Arc::new(VmHost::new(
        backends.clone(),
        agents,
        config,
        journal.clone(),
        layout.clone(),
    ));
    let supervisor = Arc::new(supervisor::Supervisor::new(
        journal.clone(),
        layout.clone(),
        backends,
    ));
    // Before the socket exists: nobody sees a VM as running whose VMM is gone.
    if journal.health() == Health::Writable {
        supervisor.readopt().await;
    }

    let socket = layout.socket_path();
    let listener = bind(&socket)?;
    tracing::info!(socket = %socket.display(), pid = std::process::id(), version = VERSION, "bangerd ready");

    let shutdown = CancellationToken::new();
    // Before serving: a guest booted by an earlier bangerd may be asking already.
    let dns = dns::DnsService::new(journal.clone(), network, shutdown.clone());
    dns.install();
    let daemon = Arc::new(Daemon {
        layout: layout.clone(),
        journal: journal.clone(),
        runner: runner.clone(),
        ids: IdGenerator::new(),
        started: Instant::now(),
        shutdown,
        stop_reason: Mutex::new(None),
        ops: TaskTracker::new(),
        vms,
        images,
        supervisor,
        dns,
    });
    spawn_verify(journal.clone());
    supervisor::spawn_idle_sweep(daemon.clone());
    supervisor::spawn_console_keeper(daemon.clone());
    ssh::spawn_known_hosts_keeper(&daemon);
    if journal.health() == Health::Writable && tap_pool::in_use(&journal.view()) {
        tap_pool::spawn_top_up(&daemon);
    }
    let signal_watch = spawn_signal_watch(daemon.clone(), signals);
    // After recovery, and after a repair above all: say what the log does not know about.
    // In the background, so that a slow helper does not delay serving.
    {
        let daemon = daemon.clone();
        tokio::spawn(async move { orphans::report_at_start(&daemon).await });
    }
    let dashboard = dashboard::start(&daemon).await;

    server::serve(daemon.clone(), listener).await;

    // It holds the daemon (and so the journal) until its last connection ends.
    if let Some(dashboard) = dashboard {
        dashboard.stop().await;
    }

    // Shutdown: connections are drained; let running operations finish, then close the log.
    daemon.ops.close();
    daemon.ops.wait().await;
    let reason = daemon.stop_reason();
    if journal.health() == Health::Writable
        && let Err(error) = journal
            .append(vec![NewEvent::new(Event::DaemonStopped(DaemonStopped {
                reason: reason.clone(),
            }))])
            .await
    {
        tracing::warn!(%error, "cannot record DaemonStopped");
    }
    // The signal watcher holds the daemon too; it ends on the shutdown it saw or caused.
    let _ = signal_watch.await;
    drop(daemon);
    drop(runner);
    match Arc::try_unwrap(journal) {
        Ok(journal) => journal.close(),
        // Something still holds it (a request that outlived the drain). Every acknowledged
        // append is already durable, so exiting without the final close loses nothing.
        Err(_) => tracing::warn!("the journal is still in use at exit; exiting without closing it"),
    }
    if let Err(error) = std::fs::remove_file(&socket)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(%error, socket = %socket.display(), "cannot remove the socket");
    }
    drop(lock);
    tracing::info!(%reason, "bangerd stopped");
    Ok(())
}

/// Opens the redb log and the journal over it (which folds the projections).
fn open_journal(log_path: &Path) -> Result<Journal<Projections>, DaemonError> {
    let log_error = |source| DaemonError::Log {
        path: log_path.to_path_buf(),
        source,
    };
    let log = RedbLog::open(log_path).map_err(log_error)?;
    let journal = Journal::<Projections>::open(Arc::new(log), JournalOptions::default())
        .map_err(log_error)?;
    let report = journal.open_report();
    tracing::info!(
        log = %log_path.display(),
        last_seq = %report.last_seq,
        snapshot = ?report.snapshot_seq,
        replayed = report.replayed,
        "event log open"
    );
    Ok(journal)
}

/// Appends `DaemonStarted` and carries out crash recovery, when the log takes writes. A
/// failure here does not stop the daemon: it serves reads, and refuses writes with the reason.
async fn record_start_and_recover(journal: &Journal<Projections>, runner: &Runner) {
    if let Health::ReadOnly { reason } = journal.health() {
        tracing::error!(%reason, "the event log is read-only: serving reads only, refusing every write; crash recovery skipped");
        return;
    }
    let started = DaemonStarted {
        boot_id: boot_id(),
        version: VERSION.to_owned(),
        pid: std::process::id(),
    };
    if let Err(error) = journal
        .append(vec![NewEvent::new(Event::DaemonStarted(started))])
        .await
    {
        tracing::error!(%error, "cannot record DaemonStarted; serving reads only");
        return;
    }
    match recovery::recover(runner).await {
        Ok(recovered) if recovered.is_empty() => {}
        Ok(recovered) => tracing::info!(operations = recovered.len(), "crash recovery done"),
        Err(error) => tracing::error!(%error, "crash recovery stopped; serving reads only"),
    }
}

/// Creates the state, cache and runtime directories; the runtime directory (which holds the
/// socket) is made 0700 so that only the owner can reach the socket.
fn prepare_dirs(layout: &Layout) -> Result<(), DaemonError> {
    for dir in [&layout.state_dir, &layout.cache_dir, &layout.runtime_dir] {
        std::fs::create_dir_all(dir).map_err(|source| DaemonError::CreateDir {
            path: dir.clone(),
            source,
        })?;
    }
    std::fs::set_permissions(&layout.runtime_dir, std::fs::Permissions::from_mode(0o700)).map_err(
        |source| DaemonError::CreateDir {
            path: layout.runtime_dir.clone(),
            source,
        },
    )
}

/// Binds the socket, replacing a stale socket file (safe: the pid lock says no other bangerd
/// of this state directory is alive), and makes it 0600.
fn bind(socket: &Path) -> Result<UnixListener, DaemonError> {
    let len = socket.as_os_str().len();
    if len > 107 {
        return Err(DaemonError::SocketPathTooLong {
            path: socket.to_path_buf(),
            len,
        });
    }
    let bind_error = |source| DaemonError::Bind {
        path: socket.to_path_buf(),
        source,
    };
    match std::fs::remove_file(socket) {
        Ok(()) => tracing::info!(socket = %socket.display(), "removed a stale socket"),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(bind_error(error)),
    }
    let listener = UnixListener::bind(socket).map_err(bind_error)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

/// The kernel's boot id: a different one in the log means the host rebooted since.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|id| id.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Opening the journal checks only the events after the snapshot; check the whole log once,
/// in the background. Corruption found makes the journal read-only (and ping shows why).
fn spawn_verify(journal: Arc<Journal<Projections>>) {
    tokio::task::spawn_blocking(move || match journal.verify_all() {
        Ok(checked) => tracing::info!(events = checked, "event log verified"),
        Err(error) => tracing::error!(%error, "event log verification failed; writes are refused"),
    });
}

/// SIGTERM and SIGINT, caught. Installed before the socket exists, so that nobody who can
/// reach the daemon can see it die of a signal's default action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, DaemonError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(DaemonError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?,
        })
    }
}

/// SIGTERM and SIGINT start a clean shutdown.
fn spawn_signal_watch(daemon: Arc<Daemon>, signals: Signals) -> tokio::task::JoinHandle<()> {
    let Signals { mut term, mut int } = signals;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = daemon.shutdown.cancelled() => return,
        };
        daemon.begin_shutdown(&format!("received {name}"));
    })
}
