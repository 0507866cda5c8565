//! QEMU's `microvm` machine as a [`Vmm`]: the backend for hosts where Firecracker cannot boot a
//! guest (no KVM, or KVM backed by PVM), with KVM where a stock guest runs and software
//! emulation (TCG) elsewhere.
//!
//! QEMU takes its whole machine on the command line, where Firecracker takes it over its API
//! after start. So the trait's three start-up steps map onto QEMU like this:
//!
//! ```text
//!  Vmm::spawn     qemu-system-x86_64 -S … (every device, the kernel, QMP): the machine is
//!                 built but its vCPUs wait ("prelaunch"); returns once the QMP socket accepts
//!  Vmm::configure a check, not a change: QMP answers, the state is prelaunch, paused or
//!                 running, and the process's command line is exactly what this spec gives
//!                 (a process launched for another spec is refused, never reused)
//!  Vmm::start     query-status; `cont` unless it already runs (idempotent)
//!  Vmm::shutdown  system_powerdown: the ACPI power button (Firecracker's Ctrl-Alt-Del); the
//!                 guest powers off and QEMU exits with it (`-no-reboot` turns a guest reboot
//!                 into an exit too, as with Firecracker)
//!  Vmm::kill      SIGKILL to the process group (as for every backend)
//!  Vmm::answers   same pid and start time, and query-status answers
//!  launched_for   processes whose command line has `-qmp unix:PATH,server=on,wait=off`
//! ```
//!
//! The command line (see [`QemuVmm::command_line`]):
//!
//! ```text
//!  qemu-system-x86_64 -name ID -M microvm,acpi=on,pit=on,pic=on,rtc=on
//!    -accel kvm -cpu host | -accel tcg,thread=multi -cpu max
//!    -smp VCPUS -m MEM_MIB -nodefaults -no-user-config -nographic -no-reboot -S
//!    -qmp unix:API_SOCKET,server=on,wait=off
//!    -chardev file,id=console,path=CONSOLE_LOG,append=on -serial chardev:console
//!    -kernel KERNEL [-initrd INITRD]
//!    -append "BOOT_ARGS banger.agent=serial root=/dev/vda rw [TCG timer args]"
//!    -drive id=rootfs,file=ROOT,format=raw,if=none -device virtio-blk-device,drive=rootfs
//!    -drive id=work,…                              -device virtio-blk-device,drive=work
//!    -netdev tap,id=net0,ifname=TAP,script=no,downscript=no
//!    -device virtio-net-device,netdev=net0,mac=MAC
//!    -device virtio-serial-device
//!    -chardev socket,id=agent,path=AGENT_SOCKET,server=on,wait=off
//!    -device virtserialport,chardev=agent,name=banger.agent
//! ```
//!
//! Why each choice: `pit=on` (without it Debian's kernel hangs calibrating the TSC under
//! TCG), `acpi=on` (virtio-mmio devices described by ACPI, as Firecracker 1.8+ does, so one
//! kernel bundle serves both), the TCG timer arguments (`tsc_early_khz=2000000
//! lpj=4000000 no_timer_check`: calibration under emulation hangs at random without them),
//! root first (it becomes `/dev/vda`; `root=/dev/vda rw` is what Firecracker adds for a root
//! drive), the serial console appended to the console log by QEMU itself while QEMU's own
//! stdout and stderr go to the VMM log, and the agent on a virtio-serial port because this
//! QEMU has no vhost-vsock here (see `banger_agent::mux`).
//!
//! Invariants: as for every [`Vmm`] (see `super::vmm`); besides, a launch never replaces a
//! live socket (QEMU would unlink it and take it over), and every path in a `-drive`,
//! `-chardev` or `-qmp` option has its commas doubled, QEMU's escape.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::kvm::{self, KvmSupport};
use super::process::{self, Liveness};
use super::qmp::{QmpClient, RunState};
use super::vmm::{
    AgentTransport, BoxFuture, CONSOLE_TAIL_BYTES, DEFAULT_API_READY_TIMEOUT, DEFAULT_KILL_TIMEOUT,
    LaunchSpec, Launched, Spawned, Vmm, VmmError, console_tail, describe_status, kill_recorded,
    millis, remove_stale_socket, validate_spec,
};

/// The environment variable that overrides the configured QEMU binary.
pub const QEMU_ENV: &str = "BANGER_QEMU";

/// The QEMU binary when the configuration names none.
pub const DEFAULT_QEMU_BINARY: &str = "qemu-system-x86_64";

/// The machine: microvm with ACPI (virtio-mmio devices described as Firecracker 1.8+ does),
/// the PIT (TSC calibration), the PIC and the RTC.
pub const MACHINE: &str = "microvm,acpi=on,pit=on,pic=on,rtc=on";

/// What a guest kernel needs under TCG: without a known TSC frequency and loops-per-jiffy,
/// calibrating them under emulation hangs at random.
pub const TCG_KERNEL_ARGS: &str = "tsc_early_khz=2000000 lpj=4000000 no_timer_check";

/// The name of the guest agent's virtio-serial port (what the agent's `serial:` listener
/// looks for).
pub const AGENT_PORT_NAME: &str = banger_agent::serial::AGENT_PORT_NAME;

/// How QEMU runs the guest's vCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation, where KVM runs a stock guest.
    Kvm,
    /// Software emulation: slower, runs anywhere.
    Tcg,
}

impl Accel {
    /// KVM where it runs a stock guest, TCG otherwise.
    pub fn for_host(support: &KvmSupport) -> Accel {
        if support.runs_stock_guests() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Who opens a VM's tap for QEMU: banger-helper, which may open `/dev/net/tun` where bangerd
/// and the QEMU it starts (both the owner) may not.
pub trait TapOpener: Send + Sync + std::fmt::Debug {
    /// A descriptor attached to tap `tap`.
    fn open_tap<'a>(
        &'a self,
        tap: &'a str,
    ) -> super::vmm::BoxFuture<'a, Result<std::os::fd::OwnedFd, String>>;
}

/// Who opens `/dev/kvm` for QEMU: banger-helper, where the owner may not (QEMU 8.2+ takes the
/// device as a descriptor).
pub trait KvmOpener: Send + Sync + std::fmt::Debug {
    /// A descriptor of `/dev/kvm`.
    fn open_kvm(&self) -> super::vmm::BoxFuture<'_, Result<std::os::fd::OwnedFd, String>>;
}

/// The descriptor number QEMU is told its tap has (`-netdev tap,fd=3`).
const TAP_FD: std::os::fd::RawFd = 3;

/// The descriptor number `/dev/kvm` has in QEMU, and the fd set `-add-fd` puts it in
/// (`-accel kvm,device=/dev/fdset/4`).
const KVM_FD: std::os::fd::RawFd = 4;
const KVM_FDSET: u32 = 4;

/// The first QEMU whose KVM accelerator takes its device by path, so by descriptor through
/// `/dev/fdset/N` (the accelerator's `device` property).
pub const KVM_DEVICE_PROPERTY_SINCE: (u32, u32) = (8, 2);

/// QEMU's microvm.
#[derive(Clone, Debug)]
pub struct QemuVmm {
    pub binary: PathBuf,
    pub accel: Accel,
    /// How long a freshly spawned QEMU may take before its QMP socket accepts.
    pub api_ready_timeout: Duration,
    /// Deadline of one QMP exchange.
    pub request_timeout: Duration,
    /// Added to the environment QEMU inherits.
    pub envs: Vec<(String, String)>,
    /// When set, a VM's tap reaches QEMU as a descriptor this opens (`fd=3`), instead of QEMU
    /// opening `/dev/net/tun` by the tap's name (which needs root or access to the device).
    pub tap_opener: Option<std::sync::Arc<dyn TapOpener>>,
    /// When set (and the accelerator is KVM), `/dev/kvm` reaches QEMU as a descriptor this
    /// opens (`fd=4`, fd set 4), instead of QEMU opening it (which needs root or access).
    pub kvm_opener: Option<std::sync::Arc<dyn KvmOpener>>,
}

impl QemuVmm {
    pub fn new(binary: impl Into<PathBuf>, accel: Accel) -> QemuVmm {
        QemuVmm {
            binary: binary.into(),
            accel,
            api_ready_timeout: DEFAULT_API_READY_TIMEOUT,
            request_timeout: super::qmp::DEFAULT_QMP_TIMEOUT,
            envs: Vec::new(),
            tap_opener: None,
            kvm_opener: None,
        }
    }

    /// KVM, its device opened by `opener` and passed to QEMU as a descriptor (QEMU 8.2+).
    pub fn with_kvm_opener(mut self, opener: std::sync::Arc<dyn KvmOpener>) -> QemuVmm {
        self.accel = Accel::Kvm;
        self.kvm_opener = Some(opener);
        self
    }

    /// Whether `/dev/kvm` reaches QEMU as a descriptor.
    fn kvm_by_descriptor(&self) -> bool {
        self.accel == Accel::Kvm && self.kvm_opener.is_some()
    }

    /// Taps are opened by `opener` and passed to QEMU as a descriptor.
    pub fn with_tap_opener(mut self, opener: std::sync::Arc<dyn TapOpener>) -> QemuVmm {
        self.tap_opener = Some(opener);
        self
    }

    /// `BANGER_QEMU` when set and not empty, else `configured`; the accelerator this host
    /// allows.
    pub fn from_env_or(configured: impl Into<PathBuf>) -> QemuVmm {
        let binary = match std::env::var_os(QEMU_ENV) {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => configured.into(),
        };
        QemuVmm::new(binary, Accel::for_host(&kvm::probe()))
    }

    fn qmp(&self, vm: &Launched) -> QmpClient {
        QmpClient::new(&vm.api_socket).with_timeout(self.request_timeout)
    }

    /// The whole command line for `spec`, without the program. [`Vmm::configure`] compares
    /// it with the running process's, so it must depend on nothing but `spec` and `self`.
    pub fn command_line(&self, spec: &LaunchSpec) -> Result<Vec<OsString>, VmmError> {
        validate_qemu_spec(spec)?;
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |parts: &[&OsStr]| args.extend(parts.iter().map(|p| p.to_os_string()));
        let kvm_from_fdset = format!("kvm,device=/dev/fdset/{KVM_FDSET}");
        let cpu = match self.accel {
            Accel::Kvm if self.kvm_by_descriptor() => (kvm_from_fdset.as_str(), "host"),
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg,thread=multi", "max"),
        };
        push(&["-name".as_ref(), spec.id.as_ref()]);
        if self.kvm_by_descriptor() {
            push(&[
                "-add-fd".as_ref(),
                format!("fd={KVM_FD},set={KVM_FDSET}").as_ref(),
            ]);
        }
        push(&[
            "-M".as_ref(),
            MACHINE.as_ref(),
            "-accel".as_ref(),
            cpu.0.as_ref(),
            "-cpu".as_ref(),
            cpu.1.as_ref(),
            "-smp".as_ref(),
            spec.vcpus.to_string().as_ref(),
            "-m".as_ref(),
            format!("{}M", spec.mem_mib).as_ref(),
            "-nodefaults".as_ref(),
            "-no-user-config".as_ref(),
            "-nographic".as_ref(),
            "-no-reboot".as_ref(),
            "-S".as_ref(),
            "-qmp".as_ref(),
            &qmp_argument(&spec.api_socket),
            "-chardev".as_ref(),
            &option_with_path("file,id=console,path=", &spec.console_log, ",append=on"),
            "-serial".as_ref(),
            "chardev:console".as_ref(),
            "-kernel".as_ref(),
            spec.kernel.as_os_str(),
        ]);
        if let Some(initrd) = &spec.initrd {
            push(&["-initrd".as_ref(), initrd.as_os_str()]);
        }
        push(&["-append".as_ref(), self.kernel_args(spec).as_ref()]);
        // Root first: the first virtio-blk device is /dev/vda.
        let mut drives: Vec<_> = spec.drives.iter().collect();
        drives.sort_by_key(|drive| !drive.root);
        for drive in drives {
            let readonly = if drive.read_only { ",readonly=on" } else { "" };
            push(&[
                "-drive".as_ref(),
                &option_with_path(
                    &format!("id={},format=raw,if=none{readonly},file=", drive.id),
                    &drive.path,
                    "",
                ),
                "-device".as_ref(),
                format!("virtio-blk-device,drive={}", drive.id).as_ref(),
            ]);
        }
        if let Some(net) = &spec.net {
            let mac = net
                .mac
                .as_ref()
                .map(|mac| format!(",mac={mac}"))
                .unwrap_or_default();
            // With an opener the tap arrives as a descriptor; QEMU reads its name and flags
            // from it (TUNGETIFF). Either way the spec alone decides the line (see above).
            let netdev = if self.tap_opener.is_some() {
                format!("tap,id=net0,fd={TAP_FD}")
            } else {
                format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap)
            };
            push(&[
                "-netdev".as_ref(),
                netdev.as_ref(),
                "-device".as_ref(),
                format!("virtio-net-device,netdev=net0{mac}").as_ref(),
            ]);
        }
        if let Some(agent) = &spec.agent_serial {
            push(&[
                "-device".as_ref(),
                "virtio-serial-device".as_ref(),
                "-chardev".as_ref(),
                &option_with_path("socket,id=agent,path=", agent, ",server=on,wait=off"),
                "-device".as_ref(),
                format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}").as_ref(),
            ]);
        }
        Ok(args)
    }

    /// The kernel command line QEMU passes: the spec's, plus what Firecracker adds for a root
    /// drive, plus (with an agent port) what tells an agent listening on `auto` to take the
    /// virtio-serial port, plus the timer arguments TCG needs.
    pub fn kernel_args(&self, spec: &LaunchSpec) -> String {
        let mut args = spec.boot_args.clone();
        if spec.agent_serial.is_some() {
            args.push(' ');
            args.push_str(banger_agent::server::SERIAL_KERNEL_ARG);
        }
        if let Some(root) = spec.drives.iter().find(|drive| drive.root) {
            args.push_str(if root.read_only {
                " root=/dev/vda ro"
            } else {
                " root=/dev/vda rw"
            });
        }
        if self.accel == Accel::Tcg {
            args.push(' ');
            args.push_str(TCG_KERNEL_ARGS);
        }
        args
    }

    async fn spawn_inner(&self, spec: &LaunchSpec) -> Result<Spawned, VmmError> {
        let args = self.command_line(spec)?;
        let sockets = [Some(&spec.api_socket), spec.agent_serial.as_ref()];
        for dir in sockets
            .iter()
            .flatten()
            .filter_map(|path| path.parent())
            .chain(spec.console_log.parent())
            .chain(spec.vmm_log.as_deref().and_then(Path::parent))
        {
            std::fs::create_dir_all(dir).map_err(|source| VmmError::Prepare {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        // QEMU unlinks an existing socket path and binds anew: a live one would be taken
        // from whoever serves it. Refuse that; remove what nobody serves.
        remove_stale_socket("the QMP socket", &spec.api_socket).await?;
        if let Some(agent) = &spec.agent_serial {
            remove_stale_socket("the agent socket", agent).await?;
        }
        // QEMU's own messages (stdout, stderr) go to the VMM log; the guest's serial console
        // is written by QEMU's file chardev to the console log. Without a VMM log they share
        // the console log, appended to by both.
        let output_log = spec.vmm_log.as_ref().unwrap_or(&spec.console_log);
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(output_log)
            .map_err(|source| VmmError::Prepare {
                path: output_log.clone(),
                source,
            })?;
        let output_err = output.try_clone().map_err(|source| VmmError::Prepare {
            path: output_log.clone(),
            source,
        })?;
        let tap = match (&self.tap_opener, &spec.net) {
            (Some(opener), Some(net)) => Some(opener.open_tap(&net.tap).await.map_err(
                |reason| VmmError::Spawn {
                    binary: self.binary.clone(),
                    source: std::io::Error::other(format!(
                        "the VM's tap {} could not be opened for QEMU: {reason}",
                        net.tap
                    )),
                },
            )?),
            _ => None,
        };
        let kvm = match &self.kvm_opener {
            Some(opener) if self.kvm_by_descriptor() => {
                Some(opener.open_kvm().await.map_err(|reason| VmmError::Spawn {
                    binary: self.binary.clone(),
                    source: std::io::Error::other(format!(
                        "{} could not be opened for QEMU: {reason}",
                        super::kvm::KVM_DEVICE
                    )),
                })?)
            }
            _ => None,
        };
        // Each descriptor moves to a number above QEMU's (close-on-exec), so that the child
        // can put every one at its place without one overwriting another.
        let spawn_error = |source| VmmError::Spawn {
            binary: self.binary.clone(),
            source,
        };
        let mut passed = Vec::new();
        for (fd, target) in [(tap, TAP_FD), (kvm, KVM_FD)] {
            if let Some(fd) = fd {
                let moved = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))
                    .map_err(|errno| spawn_error(std::io::Error::from(errno)))?;
                // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
                let moved =
                    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(moved) };
                passed.push((moved, target));
            }
        }
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(&args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(output_err))
            // Its own group, as for Firecracker: a Ctrl-C aimed at bangerd does not reach VMs.
            .process_group(0)
            .kill_on_drop(false);
        if !passed.is_empty() {
            use std::os::fd::AsRawFd;
            let pairs: Vec<(std::os::fd::RawFd, std::os::fd::RawFd)> = passed
                .iter()
                .map(|(fd, target)| (fd.as_raw_fd(), *target))
                .collect();
            // SAFETY: dup2 is async-signal-safe and `pairs` was allocated before the fork; the
            // sources stay open in the parent until after the spawn, all above 9, and dup2
            // leaves each target without close-on-exec.
            unsafe {
                command.pre_exec(move || {
                    for &(source, target) in &pairs {
                        if libc::dup2(source, target) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().map_err(|source| VmmError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        // QEMU holds its tap and KVM now; bangerd keeps no copy.
        drop(passed);
        let pid = child.id().ok_or_else(|| VmmError::Spawn {
            binary: self.binary.clone(),
            source: std::io::Error::other("the process exited at once"),
        })?;
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
        match self.wait_qmp_ready(&mut child, spec, output_log).await {
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

    /// Polls the QMP socket until QMP answers, the process exits, or the deadline passes.
    async fn wait_qmp_ready(
        &self,
        child: &mut tokio::process::Child,
        spec: &LaunchSpec,
        output_log: &Path,
    ) -> Result<(), VmmError> {
        let deadline = Instant::now() + self.api_ready_timeout;
        let mut pause = Duration::from_millis(1);
        let qmp = QmpClient::new(&spec.api_socket).with_timeout(self.request_timeout);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(VmmError::ExitedEarly {
                    binary: self.binary.clone(),
                    status: describe_status(status),
                    console_tail: console_tail(output_log, CONSOLE_TAIL_BYTES),
                });
            }
            // The socket exists before QEMU's main loop serves it: ask, not just connect.
            if tokio::net::UnixStream::connect(&spec.api_socket)
                .await
                .is_ok()
                && qmp.query_status().await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VmmError::ApiNotReady {
                    binary: self.binary.clone(),
                    socket: spec.api_socket.clone(),
                    timeout_ms: millis(self.api_ready_timeout),
                    console_tail: console_tail(output_log, CONSOLE_TAIL_BYTES),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    async fn configure_inner(&self, vm: &Launched, spec: &LaunchSpec) -> Result<(), VmmError> {
        let expected = self.command_line(spec)?;
        let state = self
            .qmp(vm)
            .query_status()
            .await
            .map_err(qmp_error("ask QEMU for its state"))?;
        if !matches!(
            state,
            RunState::Prelaunch | RunState::Paused | RunState::Running
        ) {
            return Err(VmmError::Mismatch(format!(
                "QEMU (pid {}) is {}, not ready to boot",
                vm.pid,
                state.as_str()
            )));
        }
        let running = process_arguments(vm.pid).map_err(|source| VmmError::Process {
            pid: vm.pid,
            source,
        })?;
        if running.get(1..) != Some(&expected[..]) {
            return Err(VmmError::Mismatch(format!(
                "QEMU (pid {}) was launched with another machine than this VM's spec gives; \
                 it is left alone, launch the VM again",
                vm.pid
            )));
        }
        Ok(())
    }

    async fn start_inner(&self, vm: &Launched) -> Result<(), VmmError> {
        let qmp = self.qmp(vm);
        match qmp
            .query_status()
            .await
            .map_err(qmp_error("ask QEMU for its state"))?
        {
            RunState::Running => Ok(()),
            RunState::Prelaunch | RunState::Paused => {
                qmp.cont().await.map_err(qmp_error("start the guest"))
            }
            other => Err(VmmError::Mismatch(format!(
                "QEMU (pid {}) is {}, it cannot start the guest",
                vm.pid,
                other.as_str()
            ))),
        }
    }
}

fn qmp_error(step: &'static str) -> impl Fn(super::qmp::QmpError) -> VmmError {
    move |source| VmmError::Qmp {
        step,
        source,
        console_tail: String::new(),
    }
}

impl Vmm for QemuVmm {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn agent_transport(&self) -> AgentTransport {
        AgentTransport::VirtioSerial
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
            self.qmp(vm)
                .system_powerdown()
                .await
                .map_err(qmp_error("press the ACPI power button"))
        })
    }

    fn answers<'a>(&'a self, vm: &'a Launched) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            vm.liveness().ok() == Some(Liveness::Alive) && self.qmp(vm).query_status().await.is_ok()
        })
    }

    fn launched_for<'a>(&'a self, control_socket: &'a Path) -> BoxFuture<'a, Vec<Launched>> {
        let socket = control_socket.to_path_buf();
        Box::pin(async move {
            let wanted = qmp_argument(&socket);
            // A scan of all of /proc: off the async workers.
            let found = tokio::task::spawn_blocking(move || {
                process::processes_with_argument("-qmp", &wanted)
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

/// `binary --version`'s major and minor version ("QEMU emulator version 10.0.2 (…)").
pub async fn version(binary: &Path) -> Result<(u32, u32), String> {
    let output = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {} --version ({e})", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version(&text).ok_or_else(|| {
        format!(
            "{} --version did not say its version ({}: {:?})",
            binary.display(),
            output.status,
            text.lines().next().unwrap_or("")
        )
    })
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let rest = text.lines().next()?.split("version ").nth(1)?;
    let mut numbers = rest
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    Some((numbers.next()?.ok()?, numbers.next()?.ok()?))
}

/// Whether QEMU at `binary` should get KVM through banger-helper: `Ok` where this process
/// cannot open `/dev/kvm` (`own`), the host's KVM runs stock guests, this QEMU takes its
/// device as a descriptor (8.2+) and `opener` hands one over; else why not, as a sentence.
pub async fn kvm_through_helper(
    binary: &Path,
    own: &KvmSupport,
    opener: &dyn KvmOpener,
) -> Result<(), String> {
    if !matches!(own, KvmSupport::NoAccess(_)) {
        return Err(format!(
            "banger-helper's /dev/kvm is not needed: {}",
            own.describe()
        ));
    }
    let device = kvm::probe_device();
    if !device.runs_stock_guests() {
        return Err(device.describe());
    }
    let (major, minor) = version(binary).await?;
    if (major, minor) < KVM_DEVICE_PROPERTY_SINCE {
        let (since_major, since_minor) = KVM_DEVICE_PROPERTY_SINCE;
        return Err(format!(
            "{}; QEMU {major}.{minor} opens it itself, by its path (QEMU {since_major}.{since_minor} or later takes it from banger-helper)",
            own.describe()
        ));
    }
    opener
        .open_kvm()
        .await
        .map(drop)
        .map_err(|why| format!("banger-helper did not give /dev/kvm ({why})"))
}

/// QEMU's limits beyond the common ones: no vsock device here (the agent is on
/// virtio-serial), and tap names and MACs that cannot break out of their option.
fn validate_qemu_spec(spec: &LaunchSpec) -> Result<(), VmmError> {
    validate_spec(spec)?;
    let invalid = |msg: String| Err(VmmError::InvalidSpec(msg));
    if let Some(vsock) = &spec.vsock {
        return invalid(format!(
            "this QEMU backend gives the guest no vsock device (socket {}); its agent is reached over virtio-serial",
            vsock.uds_path.display()
        ));
    }
    if let Some(net) = &spec.net {
        if net.tap.is_empty()
            || net.tap.len() > 15
            || !net
                .tap
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return invalid(format!(
                "tap name {:?} must be 1 to 15 letters, digits, - and _",
                net.tap
            ));
        }
        if let Some(mac) = &net.mac
            && !(mac.len() == 17
                && mac.chars().enumerate().all(|(i, c)| {
                    if i % 3 == 2 {
                        c == ':'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                }))
        {
            return invalid(format!("MAC {mac:?} must look like aa:bb:cc:dd:ee:ff"));
        }
    }
    if spec.boot_args.contains('\n') {
        return invalid("the kernel command line has a newline".to_owned());
    }
    Ok(())
}

/// `-qmp`'s value for `socket`: also what identifies a QEMU in the process table.
pub fn qmp_argument(socket: &Path) -> OsString {
    option_with_path("unix:", socket, ",server=on,wait=off")
}

/// `prefix` + `path` with its commas doubled (QEMU's escape in option strings) + `suffix`.
fn option_with_path(prefix: &str, path: &Path, suffix: &str) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut bytes = prefix.as_bytes().to_vec();
    for &byte in path.as_os_str().as_bytes() {
        bytes.push(byte);
        if byte == b',' {
            bytes.push(b',');
        }
    }
    bytes.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(bytes)
}

/// The command line of `pid` from `/proc`, argument by argument.
fn process_arguments(pid: u32) -> std::io::Result<Vec<OsString>> {
    use std::os::unix::ffi::OsStringExt;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(raw
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| OsString::from_vec(arg.to_vec()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::vmm::{DriveSpec, NetSpec, VsockSpec};

    fn spec(dir: &Path) -> LaunchSpec {
        LaunchSpec {
            id: "vm-1".into(),
            api_socket: dir.join("api.sock"),
            console_log: dir.join("console.log"),
            vmm_log: Some(dir.join("vmm.log")),
            vcpus: 2,
            mem_mib: 256,
            kernel: dir.join("vmlinux"),
            initrd: Some(dir.join("initrd")),
            boot_args: "console=ttyS0".into(),
            drives: vec![
                DriveSpec {
                    id: "work".into(),
                    path: dir.join("work.ext4"),
                    root: false,
                    read_only: false,
                },
                DriveSpec {
                    id: "rootfs".into(),
                    path: dir.join("root,1.ext4"),
                    root: true,
                    read_only: false,
                },
            ],
            net: Some(NetSpec {
                tap: "bt1".into(),
                mac: Some("02:fc:ac:1e:00:02".into()),
            }),
            vsock: None,
            agent_serial: Some(dir.join("agent.sock")),
        }
    }

    fn text(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[derive(Debug)]
    struct NoTaps;

    impl TapOpener for NoTaps {
        fn open_tap<'a>(
            &'a self,
            tap: &'a str,
        ) -> crate::host::vmm::BoxFuture<'a, Result<std::os::fd::OwnedFd, String>> {
            Box::pin(async move { Err(format!("no tap {tap} here")) })
        }
    }

    #[test]
    fn with_a_tap_opener_the_tap_is_a_descriptor_and_a_failed_open_spawns_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let vmm = QemuVmm::new("/nonexistent/qemu", Accel::Tcg)
            .with_tap_opener(std::sync::Arc::new(NoTaps));
        let line = text(&vmm.command_line(&spec(dir.path())).unwrap());
        assert!(line.contains("-netdev tap,id=net0,fd=3 "), "{line}");
        assert!(!line.contains("ifname"), "{line}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = runtime
            .block_on(vmm.spawn(&spec(dir.path())))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tap bt1 could not be opened for QEMU: no tap bt1 here"),
            "{error}"
        );
    }

    /// A `/dev/kvm` stand-in: any file, for the command line and the descriptor plumbing.
    #[derive(Debug)]
    struct KvmFile(PathBuf);

    impl KvmOpener for KvmFile {
        fn open_kvm(
            &self,
        ) -> crate::host::vmm::BoxFuture<'_, Result<std::os::fd::OwnedFd, String>> {
            Box::pin(async move {
                std::fs::File::open(&self.0)
                    .map(std::os::fd::OwnedFd::from)
                    .map_err(|e| e.to_string())
            })
        }
    }

    #[derive(Debug)]
    struct TapFile(PathBuf);

    impl TapOpener for TapFile {
        fn open_tap<'a>(
            &'a self,
            _tap: &'a str,
        ) -> crate::host::vmm::BoxFuture<'a, Result<std::os::fd::OwnedFd, String>> {
            Box::pin(async move {
                std::fs::File::open(&self.0)
                    .map(std::os::fd::OwnedFd::from)
                    .map_err(|e| e.to_string())
            })
        }
    }

    #[test]
    fn with_a_kvm_opener_kvm_is_the_descriptor_in_fd_set_4() {
        let dir = Path::new("/v");
        let vmm = QemuVmm::new("qemu", Accel::Tcg)
            .with_kvm_opener(std::sync::Arc::new(KvmFile("/dev/null".into())));
        let line = text(&vmm.command_line(&spec(dir)).unwrap());
        assert!(
            line.starts_with(
                "-name vm-1 -add-fd fd=4,set=4 -M microvm,acpi=on,pit=on,pic=on,rtc=on \
                 -accel kvm,device=/dev/fdset/4 -cpu host "
            ),
            "{line}"
        );
        assert!(
            !line.contains("tsc_early_khz"),
            "KVM needs no TCG timer arguments: {line}"
        );
    }

    #[tokio::test]
    async fn the_tap_and_kvm_reach_qemu_at_descriptors_3_and_4() {
        let dir = tempfile::tempdir().unwrap();
        let tap = dir.path().join("tap-stand-in");
        let kvm = dir.path().join("kvm-stand-in");
        std::fs::write(&tap, "").unwrap();
        std::fs::write(&kvm, "").unwrap();
        // A "QEMU" that says what its descriptors 3 and 4 are, then exits: spawn reports its
        // output.
        let fake = dir.path().join("fake-qemu");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"fd3=$(readlink /proc/$$/fd/3) fd4=$(readlink /proc/$$/fd/4)\"\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let vmm = QemuVmm::new(&fake, Accel::Tcg)
            .with_tap_opener(std::sync::Arc::new(TapFile(tap.clone())))
            .with_kvm_opener(std::sync::Arc::new(KvmFile(kvm.clone())));
        let error = vmm.spawn(&spec(dir.path())).await.map(|_| ()).unwrap_err();
        let VmmError::ExitedEarly { console_tail, .. } = error else {
            panic!("unexpected: {error}");
        };
        assert!(
            console_tail.contains(&format!("fd3={} fd4={}", tap.display(), kvm.display())),
            "{console_tail}"
        );
    }

    #[test]
    fn the_version_is_read_from_qemus_first_line() {
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)\nCopyright"),
            Some((10, 0))
        );
        assert_eq!(
            parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some((7, 2))
        );
        assert_eq!(parse_version("QEMU emulator version 8.2.0"), Some((8, 2)));
        assert!((7, 2) < KVM_DEVICE_PROPERTY_SINCE && (8, 2) >= KVM_DEVICE_PROPERTY_SINCE);
        assert_eq!(parse_version("cat (GNU coreutils) 9.1"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn the_command_line_describes_the_whole_machine() {
        let dir = Path::new("/v");
        let tcg = QemuVmm::new("qemu", Accel::Tcg);
        let line = text(&tcg.command_line(&spec(dir)).unwrap());
        assert_eq!(
            line,
            "-name vm-1 -M microvm,acpi=on,pit=on,pic=on,rtc=on -accel tcg,thread=multi -cpu max \
             -smp 2 -m 256M -nodefaults -no-user-config -nographic -no-reboot -S \
             -qmp unix:/v/api.sock,server=on,wait=off \
             -chardev file,id=console,path=/v/console.log,append=on -serial chardev:console \
             -kernel /v/vmlinux -initrd /v/initrd \
             -append console=ttyS0 banger.agent=serial root=/dev/vda rw tsc_early_khz=2000000 lpj=4000000 no_timer_check \
             -drive id=rootfs,format=raw,if=none,file=/v/root,,1.ext4 -device virtio-blk-device,drive=rootfs \
             -drive id=work,format=raw,if=none,file=/v/work.ext4 -device virtio-blk-device,drive=work \
             -netdev tap,id=net0,ifname=bt1,script=no,downscript=no \
             -device virtio-net-device,netdev=net0,mac=02:fc:ac:1e:00:02 \
             -device virtio-serial-device -chardev socket,id=agent,path=/v/agent.sock,server=on,wait=off \
             -device virtserialport,chardev=agent,name=banger.agent"
        );
        let kvm = QemuVmm::new("qemu", Accel::Kvm);
        let line = text(&kvm.command_line(&spec(dir)).unwrap());
        assert!(line.contains("-accel kvm -cpu host"), "{line}");
        assert!(!line.contains("tsc_early_khz"), "{line}");
    }

    #[test]
    fn what_qemu_cannot_give_or_could_misread_is_refused() {
        let dir = Path::new("/v");
        let vmm = QemuVmm::new("qemu", Accel::Tcg);
        let mut with_vsock = spec(dir);
        with_vsock.vsock = Some(VsockSpec {
            cid: 3,
            uds_path: dir.join("vsock.sock"),
        });
        let mut bad_tap = spec(dir);
        bad_tap.net.as_mut().unwrap().tap = "bt1,script=/x".into();
        let mut bad_mac = spec(dir);
        bad_mac.net.as_mut().unwrap().mac = Some("02:fc,x".into());
        for case in [with_vsock, bad_tap, bad_mac] {
            assert!(
                matches!(vmm.command_line(&case), Err(VmmError::InvalidSpec(_))),
                "{case:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_qemu_that_exits_at_once_is_reported_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        // GNU cat refuses -name and exits 1: a VMM that dies at start-up.
        let err = QemuVmm::new("cat", Accel::Tcg)
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
                assert!(console_tail.contains("invalid option"), "{console_tail}");
            }
            other => panic!("unexpected: {other}"),
        }
        // Its output went to the VMM log, not the guest's console.
        assert!(!dir.path().join("console.log").exists());
    }
}
