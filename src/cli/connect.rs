//! Reaching bangerd, and starting it in user mode when nothing answers.
//!
//! ```text
//!  connect ──▶ socket answers? ── yes ──▶ client
//!                  │ no (no socket file, or a stale one: connection refused)
//!                  ▼
//!  systemd runs this user's bangerd (`system install`)? ── yes ──▶ error: systemctl start
//!                  │ no
//!                  ▼
//!  BANGER_NO_AUTOSTART=1? ── yes ──▶ error: how to start bangerd
//!                  │ no
//!                  ▼
//!  spawn bangerd (next to this executable, else on PATH), detached: new session, stdin null,
//!  stdout and stderr appended to <state>/bangerd.out
//!                  │
//!                  ▼
//!  poll daemon.ping until it answers (≤ 5 s) ──▶ client
//!                  │ deadline passed, or bangerd exited and still nothing answers
//!                  ▼
//!  error: what happened, where its output is, how to start it by hand
//! ```
//!
//! The socket is the layout's ([`layout`]): `BANGER_ROOT`'s, else that of the bangerd
//! `banger system install` runs for this user (its metadata, `/etc/banger/install.json`,
//! names the owner), else the user's XDG one.
//!
//! Two CLIs starting bangerd at the same moment are harmless: only one bangerd can hold the
//! state directory, the other exits at once, and both CLIs then reach the one that won.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::error::CliError;
use crate::api::PingResult;
use crate::paths::Layout;
use crate::rpc::{Client, ClientError};

/// How long the CLI waits for a bangerd it started to answer.
const AUTOSTART_TIMEOUT: Duration = Duration::from_secs(5);
/// After the started bangerd exited, how long to keep polling: another CLI's bangerd may have
/// won the state directory and be about to answer.
const AFTER_EXIT_GRACE: Duration = Duration::from_secs(1);
/// Between two pings while waiting. Short, because a start usually takes tens of ms.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// One ping attempt; a daemon that accepts but never answers must not hang the wait.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// The layout this CLI talks to: `BANGER_ROOT`'s; else, when `banger system install` runs
/// bangerd for this user, the service's (its socket is under `/run/bangerd`); else the
/// user's XDG directories.
pub fn layout() -> Result<Layout, CliError> {
    if let Some(layout) = installed_layout() {
        return Ok(layout);
    }
    Layout::from_env()
        .map_err(|error| CliError::failed("cannot tell where banger keeps its state", error))
}

/// The system-installed bangerd's layout, when it runs for this user and `BANGER_ROOT` does
/// not point elsewhere.
fn installed_layout() -> Option<Layout> {
    if std::env::var_os("BANGER_ROOT").is_some_and(|root| !root.is_empty()) {
        return None;
    }
    crate::system::installed_layout_for(
        &crate::system::SystemRoot::from_env(),
        nix::unistd::getuid().as_raw(),
    )
}

/// A connection to bangerd, starting it first if nothing answers (unless autostart is off).
pub async fn connect() -> Result<Client, CliError> {
    let layout = layout()?;
    let socket = layout.socket_path();
    match Client::connect(&socket).await {
        Ok(client) => return Ok(client),
        Err(ClientError::Connect { source, .. }) if nobody_home(&source) => {}
        Err(other) => return Err(other.into()),
    }
    // systemd runs this user's bangerd: one started here would not be the service (another
    // socket, and the service would find the state directory taken when it starts).
    if installed_layout().is_some() {
        return Err(CliError::DaemonUnavailable {
            message: format!(
                "bangerd is not running (nothing answers on {}); it is installed as a systemd service: `sudo systemctl start {}`, and `banger system status` says more",
                socket.display(),
                crate::system::BANGERD_UNIT
            ),
        });
    }
    if autostart_disabled() {
        return Err(CliError::DaemonUnavailable {
            message: format!(
                "bangerd is not running (nothing answers on {}) and autostart is off (BANGER_NO_AUTOSTART is set); {}",
                socket.display(),
                how_to_start()
            ),
        });
    }
    autostart(&layout).await?;
    Ok(Client::connect(&socket).await?)
}

/// A connection to bangerd if one is running; never starts it (for `banger version`).
pub async fn connect_if_running() -> Result<Option<Client>, CliError> {
    let layout = layout()?;
    match Client::connect(&layout.socket_path()).await {
        Ok(client) => Ok(Some(client)),
        Err(ClientError::Connect { source, .. }) if nobody_home(&source) => Ok(None),
        Err(other) => Err(other.into()),
    }
}

/// No socket file, or a socket file left behind by a bangerd that is gone.
fn nobody_home(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

fn autostart_disabled() -> bool {
    std::env::var_os("BANGER_NO_AUTOSTART")
        .is_some_and(|value| !value.is_empty() && value != "0" && value != "false")
}

/// The sentence that tells a person how to get bangerd running by hand.
fn how_to_start() -> String {
    // Under BANGER_ROOT the daemon must be given the same root, or it serves another state.
    let root = std::env::var_os("BANGER_ROOT")
        .filter(|root| !root.is_empty())
        .map(|root| format!("BANGER_ROOT={} ", Path::new(&root).display()))
        .unwrap_or_default();
    format!(
        "start it: run `{root}bangerd` in another terminal, or `banger system install` to run it as a service"
    )
}

async fn autostart(layout: &Layout) -> Result<(), CliError> {
    let bangerd = find_bangerd().ok_or_else(|| CliError::DaemonUnavailable {
        message: format!(
            "bangerd is not running and banger cannot find the bangerd program (looked next to {} and on PATH); install bangerd beside banger, or {}",
            current_exe_dir().map_or_else(|| "this executable".to_owned(), |dir| dir.display().to_string()),
            how_to_start()
        ),
    })?;
    let mut child = spawn_detached(&bangerd, layout)?;
    let output = layout.daemon_output_path();
    let started = Instant::now();
    let mut deadline = started + AUTOSTART_TIMEOUT;
    let mut exited: Option<ExitStatus> = None;
    loop {
        if ping(layout).await {
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "started bangerd"
            );
            return Ok(());
        }
        if exited.is_none()
            && let Ok(Some(status)) = child.try_wait()
        {
            exited = Some(status);
            deadline = deadline.min(Instant::now() + AFTER_EXIT_GRACE);
        }
        if Instant::now() >= deadline {
            return Err(CliError::DaemonUnavailable {
                message: start_failure(&bangerd, &child, exited, &output),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Starts bangerd so that it outlives this CLI and the terminal: its own session (no
/// controlling terminal, so no SIGHUP when the terminal closes), no stdin, output appended to a
/// file in the state directory for `banger doctor` and for people to read.
pub(crate) fn spawn_detached(bangerd: &Path, layout: &Layout) -> Result<Child, CliError> {
    let output_path = layout.daemon_output_path();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&layout.state_dir)
        .map_err(|error| {
            CliError::failed(
                format!(
                    "cannot create the state directory {}",
                    layout.state_dir.display()
                ),
                error,
            )
        })?;
    let output = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&output_path)
        .map_err(|error| {
            CliError::failed(
                format!(
                    "cannot open bangerd's output file {}",
                    output_path.display()
                ),
                error,
            )
        })?;
    let stderr = output
        .try_clone()
        .map_err(|error| CliError::failed("cannot duplicate bangerd's output file", error))?;
    let mut command = Command::new(bangerd);
    command.stdin(Stdio::null()).stdout(output).stderr(stderr);
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2), which
    // is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    command
        .spawn()
        .map_err(|error| CliError::failed(format!("cannot start {}", bangerd.display()), error))
}

/// True when bangerd answers `daemon.ping` now.
async fn ping(layout: &Layout) -> bool {
    ping_answer(layout).await.is_some()
}

/// bangerd's answer to `daemon.ping` on a fresh connection, or `None` when nothing answers
/// within a second. Never starts bangerd.
pub async fn ping_answer(layout: &Layout) -> Option<PingResult> {
    let attempt = async {
        let mut client = Client::connect(&layout.socket_path()).await?;
        client
            .call::<_, PingResult>("daemon.ping", &serde_json::json!({}))
            .await
    };
    match tokio::time::timeout(PING_TIMEOUT, attempt).await {
        Ok(Ok(answer)) => Some(answer),
        _ => None,
    }
}

fn start_failure(
    bangerd: &Path,
    child: &Child,
    exited: Option<ExitStatus>,
    output: &Path,
) -> String {
    let what = match exited {
        Some(status) => format!("exited ({status}) without answering"),
        None => format!("did not answer within {} s", AUTOSTART_TIMEOUT.as_secs()),
    };
    let tail = last_lines(output, 5);
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!("; it said: {tail}")
    };
    format!(
        "banger started {} (pid {}) but it {what}{tail}; its output is in {}; {}",
        bangerd.display(),
        child.id(),
        output.display(),
        how_to_start()
    )
}

/// The last `count` non-empty lines of a file, joined by " | " to fit an error line.
fn last_lines(path: &Path, count: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(count)..].join(" | ")
}

fn current_exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}

/// bangerd next to this executable (how releases and `cargo build` lay them out), else the
/// first executable `bangerd` on PATH.
fn find_bangerd() -> Option<PathBuf> {
    let beside = current_exe_dir().map(|dir| dir.join("bangerd"));
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("bangerd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(on_path)
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// One call on a fresh connection (starting bangerd if need be).
pub async fn call<P: serde::Serialize, R: serde::de::DeserializeOwned>(
    method: &str,
    params: &P,
) -> Result<R, CliError> {
    let mut client = connect().await?;
    Ok(client.call(method, params).await?)
}
