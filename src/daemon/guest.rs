//! The methods that reach into a running VM or read what it printed: `vm.exec`, `vm.health`
//! and `vm.ping` talk to the guest agent over the transport the VM's backend gives it (see
//! `crate::host::guest_agent`: Firecracker's vsock socket with its `CONNECT <port>`
//! handshake, or a stream of bangerd's session on a QEMU VM's virtio-serial port);
//! `vm.logs` streams the serial console file.
//!
//! None of these change anything bangerd owns, so none is an operation and none appends an
//! event: they read the projection to find the VM and its state, then talk to the guest.
//!
//! ```text
//!  vm.exec ──▶ VM known? ──no──▶ not_found
//!                 │ yes
//!                 ▼
//!            state running? ──no──▶ not_running ("start it with banger vm start NAME")
//!                 │ yes
//!                 ▼
//!  agent connect + hello ──fail──▶ unavailable (the agent does not answer; see vm logs)
//!                 │
//!                 ▼
//!   exec ──▶ stdout/stderr chunks as items ──▶ exited: result {pid, exit_code | signal}
//!     │           │
//!     │  client hangs up ──▶ the agent connection is dropped ──▶ the agent kills the command
//!     │
//!     └─ with `stdin` or `tty`: the client's lines after the request go to the agent at the
//!        same time as the command's output comes back — {"data"} … {"eof":true} to its stdin
//!        (a tty: what the user types), {"resize"} to its terminal, {"signal"} to it; the
//!        connection closes after the result
//! ```
//!
//! Invariants:
//! - One agent connection (a socket, or a stream of the VM's serial session) per request,
//!   never shared: a command's lifetime is exactly its connection's, which is what makes
//!   "the client went away" kill the command.
//! - A console stream never holds the whole file: it reads and sends bounded chunks.
//! - A followed console stream ends when the client hangs up, when bangerd shuts down, or when
//!   the VM is deleted (its id leaves the projection); a truncated or replaced console file
//!   (the VM was started again) is read again from its start.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use banger_events::{VmId, VmState};
use banger_projections::VmView;
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::Daemon;
use super::dispatch::{Cx, decode, encode};
use super::server::{Conn, Input, Output, ReadRequest};
use crate::agent::client::{AgentClient, AgentError, ExecEvent, ExecOutputs, ExecStdin};
use crate::agent::protocol::{
    ErrorCode as AgentCode, ExecRequest, ExitStatus, MIN_PROTOCOL_VERSION, StdinMode,
    TTY_PROTOCOL_VERSION, TtyRequest,
};
use crate::api::{
    EXEC_STDIN_CHUNK_BYTES, ExecStream, NameParams, VmExecInput, VmExecItem, VmExecParams,
    VmExecResult, VmHealthResult, VmLogsEnd, VmLogsItem, VmLogsParams, VmName, VmPingResult,
};
use crate::host::guest_agent::{AgentConnectError, AgentStream};
use crate::operations::BoxFuture;
use crate::operations::vm_common::agent_endpoint;
use crate::rpc::protocol::{ErrorCode, MAX_REQUEST_BYTES, PROTOCOL_VERSION, Response, RpcError};

/// How long connecting to the agent (vsock connect, `CONNECT` handshake, hello) may take. A
/// healthy agent answers in milliseconds; a guest that is still booting should fail fast with
/// a message rather than hang a terminal.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a followed console stream looks for new bytes. The console is a plain file
/// written by another process; polling it is simpler and more portable than inotify, and a
/// quarter second is below what a person notices in a scrolling log.
const LOGS_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Largest console chunk one item carries (before base64).
const LOGS_CHUNK_BYTES: usize = 64 * 1024;

/// The client name the agent logs for bangerd's connections.
const CLIENT_NAME: &str = "bangerd";

/// Why a guest request failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("no VM named {name}; see `banger vm list`")]
    NotFound { name: String },
    #[error("VM {name} is {}, not running; {}", state.as_str(), not_running_advice(name, *state))]
    NotRunning { name: String, state: VmState },
    #[error(
        "cannot reach the guest agent of {name}: {source}; see `banger vm logs {name}` for what the guest printed"
    )]
    Connect {
        name: String,
        #[source]
        source: AgentConnectError,
    },
    #[error("the guest agent of {name} failed: {source}")]
    Agent {
        name: String,
        #[source]
        source: AgentError,
    },
    #[error("cannot read the console of {name} ({}): {source}", path.display())]
    Console {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<GuestError> for RpcError {
    fn from(error: GuestError) -> RpcError {
        let code = match &error {
            GuestError::NotFound { .. } => ErrorCode::NotFound,
            GuestError::NotRunning { .. } => ErrorCode::NotRunning,
            GuestError::Connect { .. } => ErrorCode::Unavailable,
            GuestError::Agent { source, .. } => match source.code() {
                Some(AgentCode::BadRequest) => ErrorCode::InvalidArgument,
                Some(AgentCode::SpawnFailed) => ErrorCode::OperationFailed,
                _ => ErrorCode::Unavailable,
            },
            GuestError::Console { .. } => ErrorCode::Internal,
        };
        RpcError::new(code, error.to_string())
    }
}

/// What someone who asked a VM that is not running should do, by the state it is in.
fn not_running_advice(name: &str, state: VmState) -> String {
    match state {
        VmState::Stopped => format!("start it with `banger vm start {name}`"),
        VmState::Creating | VmState::Starting => {
            format!("it is booting; wait for `banger vm show {name}` to say running, then retry")
        }
        VmState::Stopping => {
            format!("it is being stopped; `banger vm start {name}` once it is stopped")
        }
        VmState::Deleting => "it is being deleted".to_owned(),
        VmState::Failed | VmState::Running => {
            format!("`banger vm show {name}` says what happened to it")
        }
    }
}

fn console_path(daemon: &Daemon, vm_id: VmId) -> PathBuf {
    daemon.layout.vm_console_log(vm_id)
}

/// Records that someone used the VM, so auto-stop leaves it alone.
pub(super) fn touch(daemon: &Daemon, vm_id: VmId) {
    daemon.touch_vm(vm_id);
}

/// The VM called `name`, as the projection has it now.
fn find_vm(daemon: &Daemon, name: &str) -> Result<VmView, GuestError> {
    daemon
        .journal
        .view()
        .vm_by_name(name)
        .cloned()
        .ok_or_else(|| GuestError::NotFound {
            name: name.to_owned(),
        })
}

/// The running VM called `name`.
pub(super) fn running_vm(daemon: &Daemon, name: &str) -> Result<VmView, GuestError> {
    let vm = find_vm(daemon, name)?;
    if vm.state != VmState::Running {
        return Err(GuestError::NotRunning {
            name: vm.name,
            state: vm.state,
        });
    }
    Ok(vm)
}

/// A fresh connection to the VM's agent, after the hello in `protocol` (the oldest version
/// that has what the request needs, so that guests with an older agent keep working): over
/// vsock, or a new stream of the VM's serial session, as its backend gives it.
pub(super) async fn connect_agent(
    daemon: &Daemon,
    vm: &VmView,
    protocol: u32,
) -> Result<AgentClient<AgentStream>, GuestError> {
    let transport = daemon.vms.backends.get(vm.vmm()).agent_transport();
    let endpoint = agent_endpoint(&daemon.layout, vm.id, transport);
    let connect = async {
        let stream = daemon
            .vms
            .agents
            .connect(&endpoint, AGENT_CONNECT_TIMEOUT)
            .await
            .map_err(|source| GuestError::Connect {
                name: vm.name.clone(),
                source,
            })?;
        AgentClient::handshake_as(stream, CLIENT_NAME, protocol)
            .await
            .map_err(|source| GuestError::Agent {
                name: vm.name.clone(),
                source,
            })
    };
    // The vsock connect has its own deadline; this one also bounds an agent that accepts and
    // then never says hello.
    match tokio::time::timeout(AGENT_CONNECT_TIMEOUT * 2, connect).await {
        Ok(result) => result,
        Err(_) => Err(GuestError::Agent {
            name: vm.name.clone(),
            source: AgentError::Protocol(format!(
                "no hello within {} s",
                (AGENT_CONNECT_TIMEOUT * 2).as_secs()
            )),
        }),
    }
}

pub(super) fn name_of(params: &NameParams) -> Result<VmName, RpcError> {
    VmName::parse(&params.name).map_err(|error| RpcError::invalid(error.to_string()))
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

// ---- vm.health, vm.ping -----------------------------------------------------------------------

pub async fn health(
    daemon: Arc<Daemon>,
    _: Cx,
    params: NameParams,
) -> Result<VmHealthResult, RpcError> {
    let name = name_of(&params)?;
    let vm = running_vm(&daemon, name.as_str())?;
    let mut agent = connect_agent(&daemon, &vm, MIN_PROTOCOL_VERSION).await?;
    let agent_error = |source| GuestError::Agent {
        name: vm.name.clone(),
        source,
    };
    let rtt = agent.ping().await.map_err(agent_error)?;
    let health = agent.health().await.map_err(agent_error)?;
    touch(&daemon, vm.id);
    Ok(VmHealthResult {
        name: vm.name,
        health,
        rtt_us: micros(rtt),
    })
}

pub async fn ping(
    daemon: Arc<Daemon>,
    _: Cx,
    params: NameParams,
) -> Result<VmPingResult, RpcError> {
    let name = name_of(&params)?;
    let vm = running_vm(&daemon, name.as_str())?;
    let mut agent = connect_agent(&daemon, &vm, MIN_PROTOCOL_VERSION).await?;
    let rtt = agent.ping().await.map_err(|source| GuestError::Agent {
        name: vm.name.clone(),
        source,
    })?;
    touch(&daemon, vm.id);
    Ok(VmPingResult {
        name: vm.name,
        agent_version: agent.agent().agent_version.clone(),
        rtt_us: micros(rtt),
    })
}

// ---- streams ----------------------------------------------------------------------------------

/// How a stream's writing loop went on.
enum Sent {
    Ok,
    /// The client hung up, or bangerd is shutting down: end the stream now.
    Gone,
}

/// Sends one item of the stream `cx` answers, unless the client hangs up or bangerd shuts
/// down first.
async fn send_item<T: Serialize>(
    daemon: &Daemon,
    cx: &Cx,
    conn: &mut Conn,
    item: &T,
) -> Result<Sent, RpcError> {
    let response = item_response(cx, item)?;
    tokio::select! {
        biased;
        _ = daemon.shutdown.cancelled() => Ok(Sent::Gone),
        _ = conn.input.hung_up() => Ok(Sent::Gone),
        sent = conn.output.send(&response) => Ok(if sent.is_err() { Sent::Gone } else { Sent::Ok }),
    }
}

/// One item of the stream `cx` answers.
fn item_response<T: Serialize>(cx: &Cx, item: &T) -> Result<Response, RpcError> {
    Ok(Response {
        v: PROTOCOL_VERSION,
        id: cx.request_id,
        op_id: Some(cx.op_id.to_string()),
        item: Some(encode(item)?),
        result: None,
        error: None,
    })
}

/// The client went away: end the stream without an answer (nobody would read it).
fn hung_up(conn: &mut Conn) -> Value {
    conn.output.dead = true;
    Value::Null
}

fn shutting_down() -> RpcError {
    RpcError::new(
        ErrorCode::Unavailable,
        "bangerd is shutting down; the stream ended there",
    )
}

// ---- vm.exec ----------------------------------------------------------------------------------

/// The dispatch table's entry point for `vm.exec`.
pub fn exec_handler<'c>(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: Value,
    conn: &'c mut Conn,
) -> BoxFuture<'c, Result<Value, RpcError>> {
    Box::pin(async move {
        // Looked at before decoding: even a request too malformed to decode may be followed
        // by input lines, which must not be read as requests.
        if params.get("stdin") == Some(&Value::Bool(true))
            || params.get("tty").is_some_and(|tty| !tty.is_null())
        {
            conn.output.close_after = true;
        }
        let params: VmExecParams = decode(cx.method, params)?;
        exec(daemon, cx, params, conn).await
    })
}

async fn exec(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: VmExecParams,
    conn: &mut Conn,
) -> Result<Value, RpcError> {
    let input = match (&params.tty, params.stdin) {
        (Some(_), _) => InputMode::Tty,
        (None, true) => InputMode::Stdin,
        (None, false) => InputMode::None,
    };
    if input != InputMode::None {
        // Input lines may follow the request whatever happens to it (a refusal included), and
        // they are not requests: the connection ends with this answer.
        conn.output.close_after = true;
    }
    let request = ExecRequest {
        argv: params.argv,
        env: params.env,
        cwd: params.cwd,
        stdin: if input == InputMode::None {
            StdinMode::Null
        } else {
            StdinMode::Pipe
        },
        tty: params.tty.map(|tty| TtyRequest {
            rows: tty.rows,
            cols: tty.cols,
            term: tty.term,
        }),
    };
    // Refuse a bad request before touching the VM, with the agent's own wording.
    request.validate().map_err(RpcError::invalid)?;
    let vm = running_vm(&daemon, params.name.as_str())?;
    let protocol = if request.tty.is_some() {
        TTY_PROTOCOL_VERSION
    } else {
        MIN_PROTOCOL_VERSION
    };
    let mut agent = connect_agent(&daemon, &vm, protocol).await?;
    let agent_error = |source| GuestError::Agent {
        name: vm.name.clone(),
        source,
    };
    touch(&daemon, vm.id);
    let mut running = agent.exec(&request).await.map_err(agent_error)?;
    let pid = running.pid();
    tracing::debug!(pid, vm = %vm.name, ?input, "command started in the guest");
    let ended = {
        let (mut stdin, mut output) = running.split();
        let Conn {
            input: client_in,
            output: client_out,
        } = &mut *conn;
        // Two halves driven together: the client's stdin lines go to the agent while the
        // command's output comes back, so neither direction can block the other. Neither
        // future is dropped half-way unless the exec is over (or abandoned, which drops the
        // agent connection and kills the command), so a half-read frame is never resumed.
        let feed = feed_input(client_in, &mut stdin, input);
        let drain = relay_output(&daemon, &cx, client_out, &mut output, vm.id);
        tokio::pin!(feed, drain);
        tokio::select! {
            biased;
            _ = daemon.shutdown.cancelled() => return Err(shutting_down()),
            fed = &mut feed => Ended::Input(fed),
            drained = &mut drain => Ended::Output(drained.map_err(agent_error)?),
        }
    };
    let status = match ended {
        Ended::Output(Relayed::Exited(status)) => status,
        Ended::Output(Relayed::Gone) if daemon.shutdown.is_cancelled() => {
            return Err(shutting_down());
        }
        Ended::Output(Relayed::Gone) | Ended::Input(Fed::HungUp) => {
            tracing::debug!(
                pid,
                "client hung up; dropping the agent connection kills the command"
            );
            return Ok(hung_up(conn));
        }
        Ended::Input(Fed::Refused(error)) => {
            tracing::debug!(pid, %error, "bad input from the client; the command is killed");
            return Err(error);
        }
    };
    touch(&daemon, vm.id);
    let (exit_code, signal) = match status {
        ExitStatus::Code(code) => (Some(code), None),
        ExitStatus::Signal(signal) => (None, Some(signal)),
    };
    encode(VmExecResult {
        pid,
        exit_code,
        signal,
    })
}

/// Which half of an exec ended it.
enum Ended {
    Input(Fed),
    Output(Relayed),
}

/// How the client's side of an exec ended (it never ends while the client is connected and
/// behaving, even after its stdin's end).
enum Fed {
    HungUp,
    /// An input line that is not a [`VmExecInput`], or not one this exec takes: the exec is
    /// refused with this error.
    Refused(RpcError),
}

/// What the client of an exec sends after its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InputMode {
    /// Nothing: the connection is only watched for the client hanging up.
    None,
    /// Stdin lines, and signals.
    Stdin,
    /// What the user types on a terminal, resizes and signals.
    Tty,
}

/// How the command's side of an exec ended.
enum Relayed {
    Exited(ExitStatus),
    /// The client stopped taking output (its connection broke), or bangerd is shutting down.
    Gone,
}

/// Forwards the client's input lines to the agent — stdin until the line with `eof`, resizes
/// (with a tty) and signals until the command is over — and ends when the client hangs up or
/// sends something this exec does not take. With [`InputMode::None`] it only watches.
async fn feed_input(
    input: &mut Input,
    stdin: &mut ExecStdin<'_, AgentStream>,
    mode: InputMode,
) -> Fed {
    if mode == InputMode::None {
        input.hung_up().await;
        return Fed::HungUp;
    }
    let mut line = Vec::new();
    let mut stdin_open = true;
    loop {
        line.clear();
        match input.read_request(&mut line).await {
            Err(_) | Ok(ReadRequest::Eof) => return Fed::HungUp,
            Ok(ReadRequest::TooLong { .. }) => {
                return Fed::Refused(RpcError::invalid(format!(
                    "a vm.exec input line is over the {MAX_REQUEST_BYTES}-byte limit; send {EXEC_STDIN_CHUNK_BYTES} bytes of input per line"
                )));
            }
            Ok(ReadRequest::Line) => {}
        }
        let chunk: VmExecInput = match serde_json::from_slice(&line) {
            Ok(chunk) => chunk,
            Err(error) => {
                return Fed::Refused(RpcError::invalid(format!(
                    "after a vm.exec request with stdin or a tty, every line must be input like {{\"data\":\"aGkK\"}}, {{\"eof\":true}}, {{\"resize\":{{\"rows\":24,\"cols\":80}}}} or {{\"signal\":2}}: {error}"
                )));
            }
        };
        if let Err(why) = check_input(&chunk, mode, stdin_open) {
            return Fed::Refused(RpcError::invalid(why));
        }
        stdin_open &= !chunk.eof;
        let sent = async {
            if !chunk.data.is_empty() {
                stdin.write(&chunk.data).await?;
            }
            if let Some(size) = chunk.resize {
                stdin.resize(size.rows, size.cols).await?;
            }
            if let Some(signal) = chunk.signal.and_then(|n| Signal::try_from(n).ok()) {
                stdin.signal(signal).await?;
            }
            if chunk.eof {
                stdin.close().await?;
            }
            Ok::<(), AgentError>(())
        };
        if let Err(error) = sent.await {
            // The agent connection broke; the output side reports why. Input that follows is
            // read no more, and the connection closes after the answer.
            tracing::debug!(%error, "cannot forward input to the agent");
            input.hung_up().await;
            return Fed::HungUp;
        }
    }
}

/// Why an input line is not one this exec takes, if it is not.
fn check_input(chunk: &VmExecInput, mode: InputMode, stdin_open: bool) -> Result<(), String> {
    if !stdin_open && !chunk.data.is_empty() {
        return Err("vm.exec input after its eof: stdin was already closed".into());
    }
    if chunk.resize.is_some() && mode != InputMode::Tty {
        return Err(
            "a vm.exec resize line needs an exec with a tty (\"tty\":{\"rows\":…,\"cols\":…})"
                .into(),
        );
    }
    if let Some(signal) = chunk.signal
        && Signal::try_from(signal).is_err()
    {
        return Err(format!("{signal} is not a signal number"));
    }
    Ok(())
}

/// Sends the command's output to the client as stream items until it exits.
async fn relay_output(
    daemon: &Daemon,
    cx: &Cx,
    client: &mut Output,
    output: &mut ExecOutputs<'_, AgentStream>,
    vm_id: VmId,
) -> Result<Relayed, AgentError> {
    loop {
        let event = output.next().await?;
        // A long command that keeps printing is activity too: auto-stop must not cut it.
        touch(daemon, vm_id);
        let item = match event {
            ExecEvent::Stdout(data) => VmExecItem {
                stream: ExecStream::Stdout,
                data,
            },
            ExecEvent::Stderr(data) => VmExecItem {
                stream: ExecStream::Stderr,
                data,
            },
            ExecEvent::Exited(status) => return Ok(Relayed::Exited(status)),
        };
        let response = match item_response(cx, &item) {
            Ok(response) => response,
            // Output always encodes; if it ever did not, the client cannot be told in-stream.
            Err(_) => return Ok(Relayed::Gone),
        };
        if client.send(&response).await.is_err() {
            return Ok(Relayed::Gone);
        }
    }
}

// ---- vm.logs ----------------------------------------------------------------------------------

/// The dispatch table's entry point for `vm.logs`.
pub fn logs_handler<'c>(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: Value,
    conn: &'c mut Conn,
) -> BoxFuture<'c, Result<Value, RpcError>> {
    Box::pin(async move {
        let params: VmLogsParams = decode(cx.method, params)?;
        logs(daemon, cx, params, conn).await
    })
}

/// The console file as this stream has it open.
struct Console {
    file: tokio::fs::File,
    /// (device, inode), to notice the file being replaced.
    identity: (u64, u64),
    offset: u64,
}

impl Console {
    /// Opens the console file; `Ok(None)` when it does not exist (yet).
    async fn open(path: &std::path::Path) -> std::io::Result<Option<Console>> {
        use std::os::unix::fs::MetadataExt;
        let file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let meta = file.metadata().await?;
        Ok(Some(Console {
            file,
            identity: (meta.dev(), meta.ino()),
            offset: 0,
        }))
    }

    /// True when the path now names another file, or this one shrank below what was read:
    /// either way the console started over.
    async fn restarted(&self, path: &std::path::Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match tokio::fs::metadata(path).await {
            Ok(meta) => (meta.dev(), meta.ino()) != self.identity || meta.len() < self.offset,
            Err(_) => false,
        }
    }

    /// Reads what is there now, up to one chunk. Output dropped to keep the console within
    /// `vm.console_max` (a hole at the front, see `crate::host::console`) is skipped: the
    /// offset jumps to the oldest output kept.
    async fn read_chunk(&mut self) -> std::io::Result<Vec<u8>> {
        let std_file = self.file.try_clone().await?.into_std().await;
        let offset = self.offset;
        let data =
            tokio::task::spawn_blocking(move || crate::host::console::data_from(&std_file, offset))
                .await
                .map_err(std::io::Error::other)??;
        if let Some(data) = data
            && data > self.offset
        {
            self.offset = self.file.seek(SeekFrom::Start(data)).await?;
        }
        let mut buf = vec![0u8; LOGS_CHUNK_BYTES];
        let read = self.file.read(&mut buf).await?;
        buf.truncate(read);
        Ok(buf)
    }
}

async fn logs(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: VmLogsParams,
    conn: &mut Conn,
) -> Result<Value, RpcError> {
    let vm = find_vm(&daemon, params.name.as_str())?;
    let path = console_path(&daemon, vm.id);
    let console_error = |source| GuestError::Console {
        name: vm.name.clone(),
        path: path.clone(),
        source,
    };
    let mut console = Console::open(&path).await.map_err(console_error)?;
    if let (Some(console), Some(tail)) = (console.as_mut(), params.tail_bytes) {
        let len = console.file.metadata().await.map_err(console_error)?.len();
        let start = len.saturating_sub(tail);
        console.offset = console
            .file
            .seek(SeekFrom::Start(start))
            .await
            .map_err(console_error)?;
    }
    // Without `follow`, the stream ends at the end of the file as it was when asked.
    let end = match (&console, params.follow) {
        (Some(console), false) => Some(console.file.metadata().await.map_err(console_error)?.len()),
        (None, false) => return logs_end(0),
        (_, true) => None,
    };
    loop {
        if let Some(open) = console.as_mut() {
            let chunk = open.read_chunk().await.map_err(console_error)?;
            if !chunk.is_empty() {
                let offset = open.offset;
                open.offset += chunk.len() as u64;
                let item = VmLogsItem {
                    offset,
                    data: chunk,
                };
                match send_item(&daemon, &cx, conn, &item).await? {
                    Sent::Ok => {}
                    Sent::Gone if daemon.shutdown.is_cancelled() => return Err(shutting_down()),
                    Sent::Gone => return Ok(hung_up(conn)),
                }
                if let Some(end) = end
                    && open.offset >= end
                {
                    return logs_end(open.offset);
                }
                continue;
            }
            if let Some(end) = end {
                // The file ended before the length it had (truncated meanwhile): done.
                return logs_end(open.offset.min(end));
            }
        }
        // Caught up, following: wait for more, for the VM to go away, or for the client to.
        tokio::select! {
            biased;
            _ = daemon.shutdown.cancelled() => return Err(shutting_down()),
            _ = conn.input.hung_up() => return Ok(hung_up(conn)),
            _ = tokio::time::sleep(LOGS_POLL_INTERVAL) => {}
        }
        if !daemon.journal.view().vms.contains_key(&vm.id) {
            let offset = console.as_ref().map_or(0, |c| c.offset);
            return encode(VmLogsEnd {
                offset,
                deleted: true,
            });
        }
        let reopen = match &console {
            None => true,
            Some(open) => open.restarted(&path).await,
        };
        if reopen && let Some(fresh) = Console::open(&path).await.map_err(console_error)? {
            console = Some(fresh);
        }
    }
}

/// The end of a console stream that reached `offset` (the VM still exists).
fn logs_end(offset: u64) -> Result<Value, RpcError> {
    encode(VmLogsEnd {
        offset,
        deleted: false,
    })
}
