//! The agent as the guest's init (PID 1), when the image has no init of its own: the initrd's
//! init executes `/.banger/banger-agent` as PID 1 (see [`crate::boot`] and
//! `docs/ARCHITECTURE.md`, "The boot contract").
//!
//! PID 1 is a small synchronous supervisor, and the agent that serves the host is its child
//! (this same binary, started again, so not PID 1):
//!
//! ```text
//!  PID 1 (this module, no tokio)                 child: banger-agent (cli::run, tokio)
//!  ──────────────────────────────                ─────────────────────────────────────
//!  mount /proc /sys /dev /dev/pts /dev/shm
//!        /run /tmp; hostname; lo and eth0;
//!        resolv.conf; the work disk
//!  block signals, Ctrl-Alt-Del → SIGINT
//!  watch power buttons (ACPI) → SIGPWR
//!  start the agent ────────────────────────────▶ serves the host; runs commands
//!  start sshd if the image has /usr/sbin/sshd
//!  loop: reap every child (orphans too);
//!        restart the agent (and sshd) if it ends
//!  SIGINT/SIGTERM/SIGPWR/SIGUSR2/SIGRTMIN+4:
//!        TERM everyone, wait, KILL, sync,
//!        unmount, power off (banger.halt=)
//! ```
//!
//! Why two processes: an init must reap every orphan with `waitpid(-1)`, and doing that in the
//! agent's own process would steal the exit statuses of the commands tokio is waiting for.
//!
//! Invariants: a failure of one duty (a mount, the network, the work disk) is said on the
//! console and the others still run: a guest whose network failed must still answer the host;
//! PID 1 never exits (that would panic the kernel): it halts the machine instead; signals are
//! blocked before any thread starts, so they all reach the one `sigtimedwait` loop.

use std::ffi::{CString, OsString};
use std::fs;
use std::io::{self, Read};
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::reboot::set_cad_enabled;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, sethostname, sync};

use crate::boot::{GuestBootArgs, Ipv4Cidr};
use crate::initrd::{halt_machine, is_mount_point, say};

macro_rules! say {
    ($($arg:tt)*) => { say("banger-agent", format_args!($($arg)*)) };
}

/// How long the guest's processes get between SIGTERM and SIGKILL at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long PID 1 waits for eth0 and the work disk to appear (their modules were loaded by
/// the initrd, so they are normally there already).
const DEVICE_WAIT: Duration = Duration::from_secs(5);

/// The signals that ask PID 1 to shut the guest down: SIGINT is what the kernel sends for
/// Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) once it is told not to reboot at once; SIGPWR
/// comes from the power-button watcher (QEMU's `system_powerdown`); SIGTERM, SIGUSR2 and
/// SIGRTMIN+4 are what `kill 1`, busybox's `poweroff` and systemd's `poweroff` send.
fn shutdown_signals() -> Vec<libc::c_int> {
    vec![
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGPWR,
        libc::SIGUSR2,
        libc::SIGRTMIN() + 4,
    ]
}

/// The agent as PID 1. `args` are the arguments it was started with (without the program
/// name); the serving child gets them too, so whoever starts the agent as init can choose how
/// it listens.
pub fn main(args: Vec<OsString>) -> ! {
    say!(
        "version {} running as init (PID 1)",
        crate::server::AGENT_VERSION
    );
    let signals = block_signals();
    if let Err(e) = set_cad_enabled(false) {
        say!("cannot turn Ctrl-Alt-Del into a signal: {e}");
    }
    mount_kernel_filesystems();
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_else(|e| {
        say!("cannot read /proc/cmdline ({e}): no hostname, network or work disk");
        String::new()
    });
    let boot = GuestBootArgs::parse(&cmdline);
    apply_boot_args(&boot);
    watch_power_buttons();
    supervise(args, &signals, &boot)
}

/// `banger-agent --setup-guest`: what PID 1 does with the kernel command line's `banger.*`
/// arguments (hostname, eth0, name servers, the work disk), for an image whose own init
/// starts the agent as a service. Idempotent (a restarted service runs it again). False when
/// the command line cannot be read.
pub fn setup_guest() -> bool {
    match fs::read_to_string("/proc/cmdline") {
        Ok(cmdline) => {
            apply_boot_args(&GuestBootArgs::parse(&cmdline));
            true
        }
        Err(e) => {
            say!("cannot read /proc/cmdline ({e}): no hostname, network or work disk");
            false
        }
    }
}

/// Hostname, network and work disk from the boot arguments; each failure is said and the
/// rest goes on.
fn apply_boot_args(boot: &GuestBootArgs) {
    for problem in &boot.problems {
        say!("{problem}");
    }
    if let Some(hostname) = &boot.hostname {
        match sethostname(hostname) {
            Ok(()) => say!("hostname {hostname}"),
            Err(e) => say!("cannot set the hostname {hostname}: {e}"),
        }
    }
    configure_network(boot);
    mount_work_disk(boot);
}

/// The set of signals PID 1 handles, blocked in this thread (and so in every thread started
/// later) so that `sigtimedwait` receives them. A blocked signal also reaches PID 1 when its
/// disposition is the default, which the kernel otherwise drops for init.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; the pointers are valid.
    unsafe {
        let mut set: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for signal in shutdown_signals() {
            libc::sigaddset(&mut set, signal);
        }
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The filesystems every Linux userland expects. Already mounted is fine (the initrd moved
/// /proc, /sys and /dev here); any other failure is said and skipped.
fn mount_kernel_filesystems() {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let noexec = nodev | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 7] = [
        ("proc", "/proc", "proc", noexec, None),
        ("sysfs", "/sys", "sysfs", noexec, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0620,ptmxmode=0666"),
        ),
        ("tmpfs", "/dev/shm", "tmpfs", nodev, Some("mode=1777")),
        ("tmpfs", "/run", "tmpfs", nodev, Some("mode=0755")),
        ("tmpfs", "/tmp", "tmpfs", nodev, Some("mode=1777")),
    ];
    for (source, target, fstype, flags, data) in mounts {
        if let Err(e) = fs::create_dir_all(target) {
            say!("cannot make {target}: {e}; {fstype} not mounted there");
            continue;
        }
        // The initrd moved /proc, /sys and /dev here already; mounting again would stack a
        // second copy rather than fail.
        if is_mount_point(Path::new(target)) {
            continue;
        }
        match mount(Some(source), target, Some(fstype), flags, data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => say!("cannot mount {fstype} on {target}: {e}"),
        }
    }
    // What udev would make: programs use /dev/fd (bash's process substitution) and the
    // standard stream links.
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if fs::symlink_metadata(link).is_err()
            && let Err(e) = std::os::unix::fs::symlink(target, link)
        {
            say!("cannot link {link} to {target}: {e}");
        }
    }
}

/// Brings up lo, and eth0 with the address, gateway and name servers of the command line.
fn configure_network(boot: &GuestBootArgs) {
    if let Err(e) = interface_up("lo") {
        say!("cannot bring up lo: {e}");
    }
    let Some(ip) = boot.ip else {
        say!("no banger.ip= on the command line: eth0 left unconfigured");
        return;
    };
    if !wait_for_path(Path::new("/sys/class/net/eth0"), DEVICE_WAIT) {
        say!(
            "eth0 did not appear within {} s (is virtio_net loaded and a NIC attached?)",
            DEVICE_WAIT.as_secs()
        );
        return;
    }
    match configure_interface("eth0", ip, boot.gateway) {
        Ok(()) => match boot.gateway {
            Some(gateway) => say!("eth0 {ip} via {gateway}"),
            None => say!("eth0 {ip}, no gateway"),
        },
        Err(e) => say!("cannot configure eth0 as {ip}: {e}"),
    }
    if !boot.dns.is_empty() {
        match write_resolv_conf(&boot.dns) {
            Ok(()) => {}
            Err(e) => say!("cannot write /etc/resolv.conf: {e}"),
        }
    }
}

/// Replaces `/etc/resolv.conf` (a symlink into a resolver the image will not run is replaced
/// too) with the name servers banger gave.
fn write_resolv_conf(servers: &[Ipv4Addr]) -> io::Result<()> {
    let mut text = String::from("# written by banger-agent from the kernel command line\n");
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    fs::create_dir_all("/etc")?;
    let path = Path::new("/etc/resolv.conf");
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(path)?;
    }
    fs::write(path, text)
}

/// Mounts the work disk that `banger.work=` names, waiting a little for it to appear.
fn mount_work_disk(boot: &GuestBootArgs) {
    let Some(device) = &boot.work_device else {
        return;
    };
    let target = boot.work_mount();
    if is_mount_point(Path::new(target)) {
        return;
    }
    if !wait_for_path(Path::new(device), DEVICE_WAIT) {
        say!(
            "the work disk {device} did not appear within {} s",
            DEVICE_WAIT.as_secs()
        );
        return;
    }
    if let Err(e) = fs::create_dir_all(target) {
        say!("cannot make {target} for the work disk: {e}");
        return;
    }
    match mount(
        Some(device.as_str()),
        target,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) => say!("work disk {device} on {target}"),
        Err(e) => say!("cannot mount the work disk {device} on {target}: {e}"),
    }
}

fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let started = Instant::now();
    while !path.exists() {
        if started.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// An AF_INET datagram socket: the handle the interface ioctls go through.
fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket has no memory preconditions; a non-negative result is a new fd we own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { mem::zeroed() };
    if name.len() >= request.ifr_name.len() || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(request)
}

fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes); this is how the
    // interface ioctls take an IPv4 address.
    unsafe { mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

fn ioctl<T>(socket: &OwnedFd, request: libc::c_ulong, argument: &mut T) -> io::Result<()> {
    // SAFETY: every caller passes the structure its request reads or writes.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), request as _, argument as *mut T) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn interface_up(name: &str) -> io::Result<()> {
    let socket = inet_socket()?;
    set_up(&socket, name)
}

fn set_up(socket: &OwnedFd, name: &str) -> io::Result<()> {
    let mut request = ifreq(name)?;
    ioctl(socket, libc::SIOCGIFFLAGS, &mut request)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    ioctl(socket, libc::SIOCSIFFLAGS, &mut request)
}

/// Address, netmask, up, default route: the ioctls `ifconfig` and `route` use, because a
/// container image has no `ip` binary and netlink would need a crate the agent does not carry.
fn configure_interface(name: &str, ip: Ipv4Cidr, gateway: Option<Ipv4Addr>) -> io::Result<()> {
    let socket = inet_socket()?;
    let mut request = ifreq(name)?;
    request.ifr_ifru.ifru_addr = sockaddr(ip.address);
    ioctl(&socket, libc::SIOCSIFADDR, &mut request)?;
    let mut request = ifreq(name)?;
    request.ifr_ifru.ifru_netmask = sockaddr(ip.netmask());
    ioctl(&socket, libc::SIOCSIFNETMASK, &mut request)?;
    set_up(&socket, name)?;
    if let Some(gateway) = gateway {
        let device = CString::new(name).map_err(io::Error::other)?;
        // SAFETY: rtentry is plain data apart from rt_dev, set below to a string that
        // outlives the ioctl.
        let mut route: libc::rtentry = unsafe { mem::zeroed() };
        route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr(gateway);
        route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        route.rt_dev = device.as_ptr().cast_mut();
        match ioctl(&socket, libc::SIOCADDRT, &mut route) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            other => other?,
        }
    }
    Ok(())
}

/// One thread per input device, reading key events: a power button press (QEMU's
/// `system_powerdown` arrives through the ACPI power button, with the initrd's `button` and
/// `evdev` modules) becomes SIGPWR to PID 1, the graceful shutdown.
fn watch_power_buttons() {
    let Ok(entries) = fs::read_dir("/dev/input") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("event") {
            continue;
        }
        let path = entry.path();
        let spawned = std::thread::Builder::new()
            .name("power-button".into())
            .spawn(move || watch_input_device(&path));
        if let Err(e) = spawned {
            say!("cannot watch {}: {e}", entry.path().display());
        }
    }
}

fn watch_input_device(path: &Path) {
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    // struct input_event on 64-bit Linux: a 16-byte timeval, then type, code and value.
    const EVENT_SIZE: usize = 24;
    let Ok(mut device) = fs::File::open(path) else {
        return;
    };
    let mut event = [0u8; EVENT_SIZE];
    while device.read_exact(&mut event).is_ok() {
        let kind = u16::from_ne_bytes([event[16], event[17]]);
        let code = u16::from_ne_bytes([event[18], event[19]]);
        let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
        if kind == EV_KEY && code == KEY_POWER && value == 1 {
            // SAFETY: kill has no memory preconditions; PID 1 sends itself a blocked signal.
            unsafe {
                libc::kill(1, libc::SIGPWR);
            }
        }
    }
}

/// A long-running child PID 1 keeps alive: the agent, and sshd where the image has one.
struct Service {
    name: &'static str,
    program: PathBuf,
    args: Vec<OsString>,
    running: Option<(Pid, Instant)>,
    start_at: Instant,
    backoff: Duration,
}

impl Service {
    fn new(name: &'static str, program: impl Into<PathBuf>, args: Vec<OsString>) -> Service {
        Service {
            name,
            program: program.into(),
            args,
            running: None,
            start_at: Instant::now(),
            backoff: Duration::from_secs(1),
        }
    }

    /// Starts it if it is not running and its back-off has passed.
    fn ensure_started(&mut self) {
        if self.running.is_some() || Instant::now() < self.start_at {
            return;
        }
        match spawn(&self.program, &self.args) {
            Ok(pid) => self.running = Some((pid, Instant::now())),
            Err(e) => {
                say!(
                    "cannot start {} ({}): {e}; retrying in {} s",
                    self.name,
                    self.program.display(),
                    self.backoff.as_secs()
                );
                self.delay_restart();
            }
        }
    }

    /// Notes that `pid` ended, if it was this service, and schedules the restart: at once for
    /// one that ran a while, less and less often for one that keeps failing.
    fn reaped(&mut self, pid: Pid, status: &str) {
        let Some((own, started)) = self.running else {
            return;
        };
        if own != pid {
            return;
        }
        self.running = None;
        say!("{} ended ({status}); restarting it", self.name);
        if started.elapsed() > Duration::from_secs(60) {
            self.backoff = Duration::from_secs(1);
            self.start_at = Instant::now();
        } else {
            self.delay_restart();
        }
    }

    fn delay_restart(&mut self) {
        self.start_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
    }
}

/// Starts a child with a clean signal mask, a PATH (the kernel gives init none) and no stdin;
/// its output goes to the console like PID 1's.
fn spawn(program: &Path, args: &[OsString]) -> io::Result<Pid> {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("PATH", crate::server::DEFAULT_PATH)
        .stdin(Stdio::null());
    // SAFETY: the hook only calls pthread_sigmask, which is async-signal-safe. Without it the
    // child would inherit PID 1's blocked signals (std does not reset the mask), and SIGTERM
    // would never reach it.
    unsafe {
        command.pre_exec(|| {
            let mut empty: libc::sigset_t = mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = command.spawn()?;
    // The child is reaped by the loop's waitpid(-1), not through `Child`, which is dropped
    // without waiting.
    Ok(Pid::from_raw(child.id() as i32))
}

/// The OpenSSH server, when the image has one: host keys made if missing (`ssh-keygen -A`),
/// its privilege-separation directory made, then run in the foreground, logging to the
/// console. None when the image has no sshd.
fn ssh_service() -> Option<Service> {
    const SSHD: &str = "/usr/sbin/sshd";
    let executable = fs::metadata(SSHD).is_ok_and(|m| {
        m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
    });
    if !executable {
        return None;
    }
    if let Err(e) = fs::create_dir_all("/run/sshd") {
        say!("cannot make /run/sshd: {e}");
    }
    let keygen = Command::new("/usr/bin/ssh-keygen")
        .arg("-A")
        .env("PATH", crate::server::DEFAULT_PATH)
        .stdin(Stdio::null())
        .status();
    if let Err(e) = keygen {
        say!("cannot make sshd's host keys with ssh-keygen -A: {e}");
    }
    // ssh-keygen was reaped by `status`; nothing else runs yet, so no orphan was stolen.
    say!("starting sshd (the image has {SSHD})");
    Some(Service::new("sshd", SSHD, vec!["-D".into(), "-e".into()]))
}

/// Waits for signals forever: reaps children, restarts the services when they end, shuts down
/// on request.
fn supervise(args: Vec<OsString>, signals: &libc::sigset_t, boot: &GuestBootArgs) -> ! {
    // The agent is this binary again: not PID 1, so it serves.
    let mut services = vec![Service::new("the agent", "/proc/self/exe", args)];
    services.extend(ssh_service());
    loop {
        for service in &mut services {
            service.ensure_started();
        }
        let signal = wait_signal(signals, Duration::from_secs(1));
        if let Some(signal) = signal
            && shutdown_signals().contains(&signal)
        {
            shutdown(&signal_name(signal), boot);
        }
        for (pid, status) in reap() {
            for service in &mut services {
                service.reaped(pid, &status);
            }
        }
    }
}

fn wait_signal(signals: &libc::sigset_t, timeout: Duration) -> Option<libc::c_int> {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the set and the timeout are valid for the call; no siginfo is asked for.
    let signal = unsafe { libc::sigtimedwait(signals, std::ptr::null_mut(), &timeout) };
    (signal > 0).then_some(signal)
}

/// Reaps every child that has ended, orphans included, returning each with its status.
fn reap() -> Vec<(Pid, String)> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => reaped.push((pid, format!("exit status {code}"))),
            Ok(WaitStatus::Signaled(pid, signal, _)) => {
                reaped.push((pid, format!("killed by {signal}")))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(_) => {}
        }
    }
}

fn signal_name(signal: libc::c_int) -> String {
    match signal {
        libc::SIGINT => "Ctrl-Alt-Del".to_owned(),
        libc::SIGPWR => "the power button".to_owned(),
        libc::SIGTERM => "SIGTERM".to_owned(),
        libc::SIGUSR2 => "SIGUSR2 (poweroff)".to_owned(),
        other if other == libc::SIGRTMIN() + 4 => "SIGRTMIN+4 (poweroff)".to_owned(),
        other => format!("signal {other}"),
    }
}

/// The graceful end: every process is asked to stop, then killed after [`STOP_GRACE`];
/// filesystems are synced and unmounted (the root remounted read-only), then the machine
/// halts as the command line says.
fn shutdown(reason: &str, boot: &GuestBootArgs) -> ! {
    say!("shutting down ({reason})");
    // SAFETY: kill(-1) signals every process but init; no memory is involved.
    unsafe {
        libc::kill(-1, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && has_children() {
        reap();
        std::thread::sleep(Duration::from_millis(50));
    }
    if has_children() {
        say!(
            "processes still running after {} s: killing them",
            STOP_GRACE.as_secs()
        );
        // SAFETY: as above.
        unsafe {
            libc::kill(-1, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && has_children() {
            reap();
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    sync();
    unmount_all();
    halt_machine("banger-agent", boot.halt)
}

/// Whether any child (orphans included) is left: `waitid` answers ECHILD when none is.
/// (`waitpid` refuses WNOWAIT, so it cannot ask without reaping.)
fn has_children() -> bool {
    // SAFETY: siginfo_t is plain data that waitid fills; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { mem::zeroed() };
    // SAFETY: info is valid for writes for the call.
    let result = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    !(result < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD))
}

/// Unmounts what can be (innermost first) and remounts the root read-only, so the disks are
/// clean when the VM ends.
fn unmount_all() {
    // The kernel's own filesystems hold no data and stay: unmounting /proc would hide the
    // list this walks.
    let kernel_owned = |point: &str| {
        point == "/"
            || ["/proc", "/sys", "/dev"]
                .iter()
                .any(|kept| point == *kept || point.starts_with(&format!("{kept}/")))
    };
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let points: Vec<String> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(unescape_mount_path)
        .filter(|point| !kernel_owned(point))
        .collect();
    for point in points.iter().rev() {
        if let Err(e) = umount2(point.as_str(), MntFlags::empty())
            && !matches!(e, Errno::EINVAL | Errno::EBUSY | Errno::ENOENT)
        {
            say!("cannot unmount {point}: {e}");
        }
    }
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        say!("cannot remount / read-only: {e}");
    }
    sync();
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount_path("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mount_path("/trailing\\04"), "/trailing\\04");
    }

    #[test]
    fn interface_requests_refuse_names_that_do_not_fit() {
        assert!(ifreq("eth0").is_ok());
        assert!(ifreq("a-name-far-too-long").is_err());
        let request = ifreq("eth0").unwrap();
        assert_eq!(
            request.ifr_name[..5],
            [b'e' as _, b't' as _, b'h' as _, b'0' as _, 0]
        );
    }

    #[test]
    fn addresses_are_in_network_order() {
        let raw = sockaddr(Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(raw.sa_family, libc::AF_INET as libc::sa_family_t);
        // sa_data: two port bytes, then the address as written.
        assert_eq!(raw.sa_data[2..6], [172u8 as _, 30, 0, 2]);
    }
}
