//! The fake's "guest": the serial console (the fake's stdout), the guest agent run as a local
//! process, and the bridge from Firecracker's host-side vsock protocol to that agent.
//!
//! Invariants:
//! - every console line is written and flushed whole, so a reader of the console log never
//!   sees half a line from the fake;
//! - the agent can never outlive the fake: it is in the fake's process group and gets
//!   SIGKILL when the fake dies (`PR_SET_PDEATHSIG`);
//! - a `CONNECT` is answered `OK` only after the guest side accepted; otherwise the host's
//!   connection is closed without a word, as Firecracker does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use super::lock;
use super::machine::Machine;

/// How long a guest gets to shut down after Ctrl-Alt-Del before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a host connection may take to send its `CONNECT` line.
const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// Firecracker reads at most this many bytes of a `CONNECT` line.
const MAX_CONNECT_LINE: usize = 32;

/// Which agent boot starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentChoice {
    /// `BANGER_FAKE_AGENT=none`: nothing; a test listens on `<uds_path>.guest` itself.
    None,
    /// `BANGER_FAKE_AGENT=PATH`.
    Path(PathBuf),
    /// `banger-agent` next to the fake's executable; tolerated when absent.
    Default(PathBuf),
}

/// The fault knobs and agent choice, read once from the environment.
#[derive(Clone, Debug)]
pub struct Knobs {
    pub boot_delay: Duration,
    pub crash_on_boot: bool,
    pub refuse_api: Option<String>,
    pub agent: AgentChoice,
    /// Bytes of console output the guest prints once booted, as a guest stuck in a loop would.
    pub console_flood_bytes: u64,
}

/// The running agent, as far as pause and shutdown need it.
struct Agent {
    pid: u32,
    /// Becomes `true` once the agent has exited and been reaped.
    exited: watch::Receiver<bool>,
}

pub struct Guest {
    pub knobs: Knobs,
    exit: mpsc::UnboundedSender<u8>,
    booted_at: Mutex<Option<Instant>>,
    agent: Mutex<Option<Agent>>,
    shutting_down: AtomicBool,
}

impl Guest {
    pub fn new(knobs: Knobs, exit: mpsc::UnboundedSender<u8>) -> Guest {
        Guest {
            knobs,
            exit,
            booted_at: Mutex::new(None),
            agent: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Writes one line to the serial console, with a kernel-style timestamp once booted.
    pub fn console(&self, line: &str) {
        let booted_at = *self.booted_at.lock().unwrap_or_else(|p| p.into_inner());
        let text = match booted_at {
            Some(at) => {
                let t = at.elapsed();
                format!("[{:5}.{:06}] {line}\n", t.as_secs(), t.subsec_micros())
            }
            None => format!("{line}\n"),
        };
        let mut out = std::io::stdout().lock();
        // The console is best effort: a closed stdout must not take the VM down.
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// `FAKE_FC_CRASH_ON_BOOT`: dies the way a panicking Firecracker does, mid-request.
    pub fn crash_on_boot(&self) -> ! {
        self.console(
            "thread 'fc_vmm' panicked at src/vmm/src/builder.rs: fake-firecracker: \
             FAKE_FC_CRASH_ON_BOOT=1 (injected crash during InstanceStart)",
        );
        std::process::exit(1);
    }

    /// Starts the guest: boot lines now, the agent (and vsock answers) after the boot delay.
    /// The machine must already be in the Running state.
    pub fn boot(self: &Arc<Self>, machine: &Arc<Mutex<Machine>>) {
        *self.booted_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let (cmdline, devices, vsock, summary) = {
            let mut m = lock(machine);
            let vsock = m.vsock.as_mut().map(|device| {
                (
                    device.config.guest_cid,
                    PathBuf::from(&device.config.uds_path),
                    device.listener.take(),
                )
            });
            let summary = format!(
                "fake-firecracker: instance {}, {} vCPUs, {} MiB",
                m.id, m.machine_config.vcpu_count, m.machine_config.mem_size_mib
            );
            (m.kernel_cmdline(), m.device_lines(), vsock, summary)
        };
        self.console(&format!(
            "Linux version 6.1.0-fake (fake-firecracker@banger) #1 SMP (fake-firecracker {})",
            super::VERSION
        ));
        self.console(&format!("Command line: {cmdline}"));
        self.console(&summary);
        for line in devices.values() {
            self.console(line);
        }
        let Some((cid, uds_path, listener)) = vsock else {
            let guest = self.clone();
            tokio::spawn(async move {
                guest.settle_boot().await;
            });
            return;
        };
        self.console(&format!(
            "NET: Registered PF_VSOCK protocol family (guest cid {cid}, host socket {})",
            uds_path.display()
        ));
        let guest_socket = guest_socket_path(&uds_path);
        // The bridge runs from the start but closes connections until the guest has
        // "booted": Firecracker closes them too while the guest's vsock driver is not up,
        // though only after its 2 s connection-request timeout.
        let ready = Arc::new(AtomicBool::new(false));
        if let Some(listener) = listener {
            self.serve_vsock(listener, guest_socket.clone(), ready.clone());
        }
        let guest = self.clone();
        tokio::spawn(async move {
            guest.settle_boot().await;
            guest.start_agent(cid, &guest_socket);
            ready.store(true, Ordering::SeqCst);
        });
    }

    /// The rest of the boot: the boot delay knob, then init.
    async fn settle_boot(&self) {
        if !self.knobs.boot_delay.is_zero() {
            tokio::time::sleep(self.knobs.boot_delay).await;
        }
        self.console("Run /sbin/init as init process");
        if self.knobs.console_flood_bytes > 0 {
            self.flood_console(self.knobs.console_flood_bytes);
        }
    }

    /// `FAKE_FC_CONSOLE_FLOOD_BYTES`: numbered 64-byte lines, then `console flood done`.
    fn flood_console(&self, bytes: u64) {
        let mut out = std::io::stdout().lock();
        let mut line = 0u64;
        let mut written = 0u64;
        while written < bytes {
            let text = format!("flood {line:016} {}\n", "x".repeat(40));
            if out.write_all(text.as_bytes()).is_err() {
                return;
            }
            written += text.len() as u64;
            line += 1;
        }
        let _ = out.flush();
        drop(out);
        self.console("console flood done");
    }

    /// Spawns the agent on `<uds_path>.guest` and a task that notices its exit.
    fn start_agent(self: &Arc<Self>, cid: u32, guest_socket: &Path) {
        let binary = match &self.knobs.agent {
            AgentChoice::None => return,
            AgentChoice::Path(path) => path.clone(),
            AgentChoice::Default(path) if !path.exists() => {
                self.console(&format!(
                    "fake-firecracker: no guest agent at {}; the guest runs without one",
                    path.display()
                ));
                return;
            }
            AgentChoice::Default(path) => path.clone(),
        };
        // A socket file left by an earlier agent would make its bind fail.
        let _ = std::fs::remove_file(guest_socket);
        let mut listen = std::ffi::OsString::from("unix:");
        listen.push(guest_socket);
        // The agent runs on the host, as root in the tests: what it does to "the guest's /"
        // (ssh setup writes /root/.ssh and /etc/ssh) goes to a directory standing for it —
        // `FAKE_FC_GUEST_ROOT`, or one beside the VM's sockets, removed with the VM.
        let guest_root = std::env::var_os("FAKE_FC_GUEST_ROOT")
            .filter(|root| !root.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                guest_socket
                    .parent()
                    .unwrap_or(Path::new("/nonexistent"))
                    .join("fake-guest-root")
            });
        let _ = std::fs::create_dir_all(&guest_root);
        let mut command = tokio::process::Command::new(&binary);
        command
            .arg("--listen")
            .arg(listen)
            .env("BANGER_AGENT_CID", cid.to_string())
            .env("BANGER_GUEST_ROOT", &guest_root)
            .stdin(Stdio::null())
            .kill_on_drop(false);
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe calls (prctl, getppid).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The fake died between fork and prctl: the signal will never come.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("fake-firecracker exited"));
                }
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                self.console(&format!(
                    "fake-firecracker: cannot start the guest agent {}: {err}",
                    binary.display()
                ));
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        let (exited_tx, exited_rx) = watch::channel(false);
        *self.agent.lock().unwrap_or_else(|p| p.into_inner()) = Some(Agent {
            pid,
            exited: exited_rx,
        });
        self.console(&format!("banger-agent started (pid {pid})"));
        let guest = self.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exited_tx.send(true);
            if !guest.shutting_down.load(Ordering::SeqCst) {
                let status = match status {
                    Ok(status) => status.to_string(),
                    Err(err) => err.to_string(),
                };
                guest.console(&format!("banger-agent exited ({status})"));
            }
        });
    }

    /// Accepts host connections on the vsock socket and bridges each to the guest socket.
    fn serve_vsock(
        self: &Arc<Self>,
        listener: std::os::unix::net::UnixListener,
        guest: PathBuf,
        ready: Arc<AtomicBool>,
    ) {
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| UnixListener::from_std(listener))
        {
            Ok(listener) => listener,
            Err(err) => {
                self.console(&format!("fake-firecracker: vsock socket unusable: {err}"));
                return;
            }
        };
        let guest = Arc::new(guest);
        // Firecracker numbers host-side ports upwards from 2^30.
        let next_port = Arc::new(AtomicU32::new(1 << 30));
        tokio::spawn(async move {
            loop {
                let Ok((host, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if !ready.load(Ordering::SeqCst) {
                    drop(host);
                    continue;
                }
                let guest = guest.clone();
                let next_port = next_port.clone();
                tokio::spawn(async move {
                    let _ = bridge(host, &guest, &next_port).await;
                });
            }
        });
    }

    /// SendCtrlAltDel: the guest shuts down, then Firecracker exits 0.
    pub fn ctrl_alt_del(self: &Arc<Self>) {
        if self.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let guest = self.clone();
        tokio::spawn(async move {
            guest.console("systemd-shutdown: received Ctrl-Alt-Del, powering off");
            let agent = guest.agent.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(mut agent) = agent {
                let pid = Pid::from_raw(agent.pid as i32);
                // A paused guest resumes to shut down.
                let _ = kill(pid, Signal::SIGCONT);
                let _ = kill(pid, Signal::SIGTERM);
                let waited = tokio::time::timeout(SHUTDOWN_GRACE, agent.exited.wait_for(|e| *e));
                if waited.await.is_err() {
                    guest.console("banger-agent did not stop in time; killing it");
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = agent.exited.wait_for(|e| *e).await;
                }
            }
            guest.console("reboot: Restarting system");
            let _ = guest.exit.send(0);
        });
    }

    /// PATCH /vm Paused: the guest's processes stop running.
    pub fn pause(&self) {
        self.signal_agent(Signal::SIGSTOP);
    }

    /// PATCH /vm Resumed.
    pub fn resume(&self) {
        self.signal_agent(Signal::SIGCONT);
    }

    fn signal_agent(&self, signal: Signal) {
        let agent = self.agent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(agent) = agent.as_ref()
            && !*agent.exited.borrow()
        {
            let _ = kill(Pid::from_raw(agent.pid as i32), signal);
        }
    }
}

/// Where the agent listens: `<uds_path>.guest`.
pub fn guest_socket_path(uds_path: &Path) -> PathBuf {
    let mut path = uds_path.as_os_str().to_owned();
    path.push(".guest");
    PathBuf::from(path)
}

/// One host connection: `CONNECT <port>\n`, connect to the guest, `OK <n>\n`, copy.
async fn bridge(mut host: UnixStream, guest: &Path, next_port: &AtomicU32) -> std::io::Result<()> {
    let Ok(Ok(Some(_port))) =
        tokio::time::timeout(CONNECT_LINE_TIMEOUT, read_connect(&mut host)).await
    else {
        return Ok(()); // malformed or slow: dropped, as Firecracker does
    };
    // Every guest port reaches the agent's one socket.
    let Ok(mut guest) = UnixStream::connect(guest).await else {
        return Ok(()); // nothing listens in the guest: close without a word
    };
    let host_port = next_port.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
    host.write_all(format!("OK {host_port}\n").as_bytes())
        .await?;
    tokio::io::copy_bidirectional(&mut host, &mut guest).await?;
    Ok(())
}

/// Reads a `CONNECT <port>` line one byte at a time (what follows belongs to the guest) and
/// parses it as Firecracker does: whitespace-separated, the verb case-insensitive.
async fn read_connect(host: &mut UnixStream) -> std::io::Result<Option<u32>> {
    let mut line = Vec::with_capacity(MAX_CONNECT_LINE);
    let mut byte = [0u8; 1];
    while line.len() < MAX_CONNECT_LINE {
        if host.read(&mut byte).await? == 0 {
            return Ok(None);
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    Ok(parse_connect(&line))
}

pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    if !text.ends_with('\n') {
        return None;
    }
    let mut words = text.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("connect") {
        return None;
    }
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52\n"), Some(52));
        assert_eq!(parse_connect(b"connect 1024\n"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52"), None);
        assert_eq!(parse_connect(b"CONNECT x\n"), None);
        assert_eq!(parse_connect(b"OPEN 52\n"), None);
        assert_eq!(parse_connect(b"\n"), None);
    }

    #[test]
    fn the_agent_socket_sits_beside_the_vsock_socket() {
        assert_eq!(
            guest_socket_path(Path::new("/run/vm/v.sock")),
            PathBuf::from("/run/vm/v.sock.guest")
        );
    }
}
