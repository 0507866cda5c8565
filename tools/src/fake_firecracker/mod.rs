//! The fake firecracker: a stand-in for Firecracker on hosts that cannot boot a guest (CI, PVM
//! machines), with Firecracker's command line, API and vsock protocol, that "boots" by running
//! banger's guest agent as a local process.
//!
//! This module owns the fake's process: its command line, its runtime, and its exit. The API
//! state machine lives in [`machine`], the HTTP framing in [`http`], the "guest" (console,
//! agent, vsock bridge) in [`guest`].
//!
//! # Fidelity
//!
//! Modelled on Firecracker v1.x (the swagger and the `vmm_config` types of its repository):
//!
//! - Command line: `--api-sock PATH` (default `/run/firecracker.socket`), `--id ID` (1–64
//!   letters, digits, `-`), `--config-file FILE` (boots at once), `--no-api` (requires
//!   `--config-file`), `--version`. Firecracker's other flags (`--log-path`, `--level`,
//!   `--boot-timer`, `--seccomp-filter`, `--no-seccomp`, `--metrics-path`, `--show-level`,
//!   `--show-log-origin`, `--module`, `--start-time-us`, `--start-time-cpu-us`,
//!   `--parent-cpu-time-us`, `--http-api-max-payload-size`, `--mmds-size-limit`,
//!   `--metadata`, `--enable-pci`) are accepted and ignored; any other argument exits 153 as
//!   Firecracker's argument parser does. An API socket path that already exists exits 1, and
//!   so does a `--config-file` that cannot be applied. An invalid `--id` exits 153 here;
//!   Firecracker v1.16.1 panics on it (SIGABRT), as it does on an unreadable config file.
//! - HTTP: micro_http's framing — `HTTP/1.1 204 ` with an empty reason phrase, `Server:
//!   Firecracker API`, keep-alive, `Content-Length` bodies, no chunked requests. A request
//!   micro_http cannot parse (an unsupported method or version, a payload over the limit)
//!   gets its `{ "error": "…" }` body, not a `fault_message`. The fake refuses `Expect` and
//!   chunked `Transfer-Encoding`, where micro_http answers `100 ` or ignores the encoding.
//!   A body with a deprecated field (`vsock_id`, `cpu_template`) gets `Deprecation: true`.
//! - Endpoints: `GET /`, `GET /version`, `GET|PUT|PATCH /machine-config`, `GET /vm/config`,
//!   `PUT /boot-source`, `PUT /drives/{id}`, `PUT /network-interfaces/{id}`, `PUT /vsock`,
//!   `PUT /logger`, `PUT /actions` (InstanceStart, SendCtrlAltDel, FlushMetrics),
//!   `PATCH /vm` (Paused, Resumed), and `PATCH /drives/{id}` and `PATCH
//!   /network-interfaces/{id}` before start only (refused, as Firecracker does; their
//!   post-boot updates are not modelled). Other paths answer 400 "Invalid request method
//!   and/or path", which for the endpoints banger never uses (balloon, mmds, snapshots,
//!   metrics…) is where the fake differs from the real one.
//! - Validation, with Firecracker's fault messages: bodies parse with the same serde types
//!   (unknown fields refused, required fields required, `vcpu_count` a u8), ids in paths are
//!   letters, digits and `_` and must equal the id in the body, vCPUs 1–32 (1 or even with
//!   SMT), memory above 0 (even with huge pages), the kernel and initrd must open, a drive's
//!   backing file must open (read-only or read-write as asked), one root drive, a guest MAC
//!   used once, a tap name used by one interface (Firecracker holds it open), the vsock
//!   `uds_path` is bound at `PUT /vsock` (so an existing file fails).
//! - State rules: configuration (machine-config, boot-source, drives, network-interfaces,
//!   vsock, logger) and InstanceStart are refused after start ("The requested operation is not
//!   supported after starting the microVM."); SendCtrlAltDel, FlushMetrics and PATCH /vm before
//!   start ("… before starting the microVM."); InstanceStart without a boot source fails.
//! - vsock: after boot, `uds_path` takes `CONNECT <port>\n` (case-insensitive, at most 32
//!   bytes), connects to the guest and answers `OK <host_port>\n` (host ports from 2^30 + 1,
//!   as Firecracker allocates them), then copies bytes both ways; when nothing listens in the
//!   guest, or the guest has not finished booting, the connection is closed without a word
//!   (at once; Firecracker waits up to its 2 s connection-request timeout first).
//! - Console: stdout is the serial console: boot lines ("Linux version …", the kernel command
//!   line with the `root=/dev/vda rw` Firecracker appends), then the agent's own output.
//! - Exit: SendCtrlAltDel stops the agent (SIGTERM, SIGKILL after 10 s), prints "reboot:
//!   Restarting system" and exits 0, as Firecracker does when the guest reboots with
//!   `reboot=k`. SIGTERM and SIGKILL kill the fake by their default action; the agent dies
//!   with it (it has `PR_SET_PDEATHSIG` = SIGKILL and is in the fake's process group).
//!
//! Taps are opened as Firecracker opens them (`/dev/net/tun`, TUNSETIFF) when an interface is
//! configured, and held until exit: a tap the user may not open, or one another VMM holds, is
//! refused with Firecracker's message. No packet is ever read from them.
//!
//! Not modelled: the guest kernel (boot arguments are printed, not interpreted), rate
//! limiters (accepted, ignored), guest-initiated vsock connections (`uds_path_PORT`),
//! vhost-user drives (refused), logger and metrics output. The guest agent dying does not stop the VM, as a crashed service in a
//! real guest would not; the console says it exited.
//!
//! # The guest agent
//!
//! With a vsock device, boot starts `$BANGER_FAKE_AGENT` (default: `banger-agent` next to
//! this executable) as `--listen unix:<uds_path>.guest` with `BANGER_AGENT_CID=<guest_cid>`,
//! stdin closed, its output on the console. Every guest vsock port maps to that one socket.
//! `BANGER_FAKE_AGENT=none` starts nothing, for tests that listen on `<uds_path>.guest`
//! themselves. Without a vsock device no agent starts. A default agent that does not exist is
//! reported on the console and the guest runs without one.
//!
//! # Fault knobs (environment)
//!
//! - `FAKE_FC_BOOT_DELAY_MS=N`: the guest takes N ms after InstanceStart (which answers at
//!   once, as Firecracker's does) before the agent starts; until then vsock connections are
//!   closed.
//! - `FAKE_FC_CRASH_ON_BOOT=1`: InstanceStart prints a panic line to the console and exits 1
//!   without answering.
//! - `FAKE_FC_REFUSE_API=TEXT`: every request whose `METHOD /path` contains TEXT answers 400
//!   with fault_message "fault injected: …" and changes nothing.
//! - `FAKE_FC_CONSOLE_FLOOD_BYTES=N`: once booted, the guest prints N bytes of numbered lines
//!   to its console, then `console flood done` (a guest flooding its console).
//!
//! # The guest's `/`
//!
//! The agent runs on the host, so it gets `BANGER_GUEST_ROOT`: the directory its tools treat
//! as the guest's `/` (the ssh setup writes `root/.ssh/authorized_keys` and reads
//! `etc/ssh/ssh_host_*_key.pub` there). `FAKE_FC_GUEST_ROOT=DIR` names it (a test that plays
//! an image with sshd prepares one); by default it is `fake-guest-root` beside the VM's
//! sockets, an image without sshd, removed with the VM.

pub mod guest;
pub mod http;
pub mod machine;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use guest::{AgentChoice, Guest, Knobs};
use machine::{Effect, Machine};

/// What `GET /version` and `--version` report.
pub const VERSION: &str = "1.10.1-fake";

/// Firecracker's exit code for command-line errors.
const EXIT_ARG_PARSING: u8 = 153;
/// Firecracker's exit code for a `--config-file` it cannot apply: `FcExitCode::GenericError`
/// (v1.16.1; its 152, `BadConfiguration`, is only for a bad `--level`).
const EXIT_GENERIC_ERROR: u8 = 1;

const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";
const DEFAULT_ID: &str = "anonymous-instance";

/// The parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub api_sock: PathBuf,
    pub id: String,
    pub config_file: Option<PathBuf>,
    pub no_api: bool,
    pub version: bool,
}

/// Flags Firecracker takes with a value that the fake accepts and ignores.
const IGNORED_WITH_VALUE: &[&str] = &[
    "log-path",
    "level",
    "module",
    "metrics-path",
    "seccomp-filter",
    "start-time-us",
    "start-time-cpu-us",
    "parent-cpu-time-us",
    "http-api-max-payload-size",
    "mmds-size-limit",
    "metadata",
];
/// Firecracker flags without a value that the fake accepts and ignores.
const IGNORED_FLAGS: &[&str] = &[
    "boot-timer",
    "no-seccomp",
    "show-level",
    "show-log-origin",
    "enable-pci",
];

/// Parses Firecracker's command line (`--name value` and `--name=value`).
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        api_sock: PathBuf::from(DEFAULT_API_SOCK),
        id: DEFAULT_ID.to_string(),
        config_file: None,
        no_api: false,
        version: false,
    };
    let mut seen = std::collections::HashSet::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(format!("Found argument '{arg}' which wasn't expected."));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (flag.to_string(), None),
        };
        if !seen.insert(name.clone()) {
            return Err(format!(
                "The argument '{name}' was provided more than once."
            ));
        }
        let takes_value = matches!(name.as_str(), "api-sock" | "id" | "config-file")
            || IGNORED_WITH_VALUE.contains(&name.as_str());
        let value = if takes_value {
            match inline.or_else(|| args.next()) {
                Some(value) => Some(value),
                None => return Err(format!("The argument '{name}' requires a value.")),
            }
        } else if inline.is_some() {
            return Err(format!("The argument '{name}' does not take a value."));
        } else {
            None
        };
        match (name.as_str(), value) {
            ("api-sock", Some(v)) => parsed.api_sock = PathBuf::from(v),
            ("id", Some(v)) => parsed.id = v,
            ("config-file", Some(v)) => parsed.config_file = Some(PathBuf::from(v)),
            ("no-api", None) => parsed.no_api = true,
            ("version", None) => parsed.version = true,
            (other, _) if IGNORED_WITH_VALUE.contains(&other) || IGNORED_FLAGS.contains(&other) => {
            }
            (other, _) => return Err(format!("Found argument '{other}' which wasn't expected.")),
        }
    }
    if parsed.no_api && parsed.config_file.is_none() {
        return Err("Argument 'config-file' required, but not found.".to_string());
    }
    validate_instance_id(&parsed.id)?;
    Ok(parsed)
}

/// Firecracker's `validate_instance_id`.
fn validate_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!(
            "Invalid instance ID: Invalid len ({});  the length must be between 1 and 64",
            id.len()
        ));
    }
    if let Some((i, c)) = id
        .chars()
        .enumerate()
        .find(|(_, c)| !(*c == '-' || c.is_alphanumeric()))
    {
        return Err(format!(
            "Invalid instance ID: Invalid char ({c}) at position {i}"
        ));
    }
    Ok(())
}

/// The fake's `main`.
pub fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("Arguments parsing error: {message}");
            return ExitCode::from(EXIT_ARG_PARSING);
        }
    };
    if args.version {
        println!("Firecracker v{VERSION}\n");
        return ExitCode::SUCCESS;
    }
    let knobs = match Knobs::from_env() {
        Ok(knobs) => knobs,
        Err(message) => {
            eprintln!("fake-firecracker: {message}");
            return ExitCode::from(1);
        }
    };
    // One thread: the fake is a small I/O multiplexer, dozens run side by side in the
    // benchmarks, and PR_SET_PDEATHSIG is tied to the thread that spawns the agent, which
    // must therefore live as long as the process.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("fake-firecracker: cannot start a runtime: {err}");
            return ExitCode::from(1);
        }
    };
    ExitCode::from(runtime.block_on(run(args, knobs)))
}

async fn run(args: Args, knobs: Knobs) -> u8 {
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<u8>();
    let mut machine = Machine::new(&args.id, knobs.refuse_api.clone());
    machine.open_taps = true;
    let machine = Arc::new(Mutex::new(machine));
    let guest = Arc::new(Guest::new(knobs, exit_tx));

    // Firecracker binds its API socket before it applies a config file.
    if !args.no_api {
        if args.api_sock.exists() {
            eprintln!(
                "Failed to open the API socket at: {}. Check that it is not already used.",
                args.api_sock.display()
            );
            return 1;
        }
        let listener = match UnixListener::bind(&args.api_sock) {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!(
                    "Failed to open the API socket at: {}. Check that it is not already used. \
                     ({err})",
                    args.api_sock.display()
                );
                return 1;
            }
        };
        tokio::spawn(serve_api(listener, machine.clone(), guest.clone()));
    }

    if let Some(path) = &args.config_file {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) => {
                // Firecracker panics here (an `expect`, so SIGABRT); the fake just fails.
                eprintln!("Unable to open or read from the configuration file: {err}");
                return EXIT_GENERIC_ERROR;
            }
        };
        let applied = lock(&machine).apply_config_json(&text);
        if let Err(message) = applied {
            eprintln!(
                "Failed to build MicroVM from Json: Configuration for VMM from one single json \
                 failed: {message}"
            );
            return EXIT_GENERIC_ERROR;
        }
        if guest.knobs.crash_on_boot {
            guest.crash_on_boot();
        }
        guest.boot(&machine);
    }

    // Runs until the guest powers off (or a fatal error); signals end the process by their
    // default action.
    exit_rx.recv().await.unwrap_or(0)
}

/// Accepts API connections; each is served on its own task, one request at a time.
async fn serve_api(listener: UnixListener, machine: Arc<Mutex<Machine>>, guest: Arc<Guest>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, machine.clone(), guest.clone()));
            }
            Err(err) => {
                eprintln!("fake-firecracker: API accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_connection(mut stream: UnixStream, machine: Arc<Mutex<Machine>>, guest: Arc<Guest>) {
    let mut conn = http::Connection::default();
    loop {
        let request = match conn.read_request(&mut stream).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(http::BadRequest(message)) => {
                let body = http::parse_error_body(&message);
                let _ = http::write_response(&mut stream, 400, false, Some(&body)).await;
                return;
            }
        };
        let reply = lock(&machine).handle(&request.method, &request.path, request.body.as_deref());
        if reply.effect == Some(Effect::Boot) && guest.knobs.crash_on_boot {
            guest.crash_on_boot();
        }
        if http::write_response(
            &mut stream,
            reply.status,
            reply.deprecated,
            reply.body.as_deref(),
        )
        .await
        .is_err()
        {
            return;
        }
        match reply.effect {
            None => {}
            Some(Effect::Boot) => guest.boot(&machine),
            Some(Effect::CtrlAltDel) => guest.ctrl_alt_del(),
            Some(Effect::Pause) => guest.pause(),
            Some(Effect::Resume) => guest.resume(),
        }
    }
}

/// The machine's lock; a panic while holding it already ended the process's usefulness.
fn lock(machine: &Mutex<Machine>) -> std::sync::MutexGuard<'_, Machine> {
    machine
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AgentChoice {
    fn from_env() -> Result<AgentChoice, String> {
        match std::env::var_os("BANGER_FAKE_AGENT") {
            Some(value) if value == "none" => Ok(AgentChoice::None),
            Some(value) if !value.is_empty() => Ok(AgentChoice::Path(PathBuf::from(value))),
            _ => {
                let exe = std::env::current_exe()
                    .map_err(|err| format!("cannot find my own executable: {err}"))?;
                let dir = exe.parent().unwrap_or(std::path::Path::new("/"));
                Ok(AgentChoice::Default(dir.join("banger-agent")))
            }
        }
    }
}

impl Knobs {
    fn from_env() -> Result<Knobs, String> {
        let boot_delay = match std::env::var("FAKE_FC_BOOT_DELAY_MS") {
            Ok(ms) => Duration::from_millis(
                ms.trim()
                    .parse()
                    .map_err(|_| format!("FAKE_FC_BOOT_DELAY_MS={ms:?} is not a number"))?,
            ),
            Err(_) => Duration::ZERO,
        };
        let crash_on_boot = std::env::var("FAKE_FC_CRASH_ON_BOOT").is_ok_and(|v| v == "1");
        let refuse_api = std::env::var("FAKE_FC_REFUSE_API")
            .ok()
            .filter(|v| !v.is_empty());
        let console_flood_bytes = match std::env::var("FAKE_FC_CONSOLE_FLOOD_BYTES") {
            Ok(bytes) => bytes
                .trim()
                .parse()
                .map_err(|_| format!("FAKE_FC_CONSOLE_FLOOD_BYTES={bytes:?} is not a number"))?,
            Err(_) => 0,
        };
        Ok(Knobs {
            boot_delay,
            crash_on_boot,
            refuse_api,
            console_flood_bytes,
            agent: AgentChoice::from_env()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn firecrackers_command_line() {
        let parsed = args(&["--api-sock", "/tmp/a.sock", "--id", "vm-1", "--boot-timer"]).unwrap();
        assert_eq!(parsed.api_sock, PathBuf::from("/tmp/a.sock"));
        assert_eq!(parsed.id, "vm-1");
        assert!(!parsed.no_api);
        let parsed = args(&["--no-api", "--config-file=/c.json", "--level", "Debug"]).unwrap();
        assert!(parsed.no_api);
        assert_eq!(parsed.config_file, Some(PathBuf::from("/c.json")));
    }

    #[test]
    fn command_line_errors() {
        assert!(
            args(&["--no-api"])
                .unwrap_err()
                .contains("'config-file' required")
        );
        assert!(args(&["--bogus"]).is_err());
        assert!(args(&["stray"]).is_err());
        assert!(args(&["--api-sock"]).is_err());
        assert!(args(&["--id", "a", "--id", "b"]).is_err());
        assert!(
            args(&["--id", "bad_id"])
                .unwrap_err()
                .contains("Invalid char (_)")
        );
        assert!(args(&["--id", &"x".repeat(65)]).is_err());
        assert!(args(&["--no-api=1", "--config-file", "c"]).is_err());
    }
}
