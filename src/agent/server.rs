//! The guest side: what `banger-agent` does with each connection.
//!
//! [`Agent`] holds what every connection shares (start time, the clean base environment for
//! commands, the process groups of running commands). [`Listener`] accepts connections on a
//! unix socket (under the fake firecracker), on AF_VSOCK (in a Firecracker guest), or as the
//! streams the host opens through the multiplexer on a virtio-serial port (in a QEMU guest,
//! see [`crate::mux`]); each connection is served by its own task, so one slow command never
//! delays another connection.
//!
//! Inside a connection two tasks cooperate:
//!
//! ```text
//!   socket ──read_frames task──▶ channel ──▶ Conn (requests, exec loop) ──▶ socket
//!                 │                               ▲
//!                 └──── `gone` token (EOF/error) ─┘  kills the running command's group
//! ```
//!
//! Frames are read in a task of their own because reading a frame is not cancel-safe, and the
//! exec loop has to `select!` between the client, the command's two output pipes and its exit.
//! The `gone` token is separate from the channel so that a vanished client is noticed even
//! while the exec loop has stopped taking frames (it does that when the command is not reading
//! its stdin: back-pressure instead of unbounded buffering). In that state nobody reads the
//! socket, so the reader task watches a duplicate of it for the peer's hangup (EPOLLRDHUP)
//! while it waits for room in the channel.
//!
//! A command on pipes is over when it exited and both its output pipes reached end of file (a
//! background process that keeps them open keeps the exec going, as with ssh). A command on a
//! pseudo-terminal (see [`crate::pty`]) is over when it exited: what it wrote is read from the
//! master until nothing is left, and background processes still holding the terminal do not
//! hold up the end (as with ssh -t); they get its hangup when the master closes. Only then does
//! `exited` go out. With a stdin pipe or a tty the host may still be sending input (a command
//! that does not read its stdin must not wait for input that may never end): stdin frames
//! after `exited`, the `stdin_close` that ends them, and any `signal` or `resize` that crossed
//! `exited` on the wire are dropped (see [`Leftovers`]), so no frame of this command can reach
//! the next request or get an answer that the next request would read as its own.
//!
//! Invariants:
//! - Every command runs in its own process group (on a tty: its own session), and leaves none
//!   behind when its client goes: a closed connection, a broken write or a protocol violation
//!   during exec kills the whole group (every process of the session) with SIGKILL and reaps
//!   the command before the connection task ends.
//! - Bad input from the host is answered with an error frame and never panics the agent; only
//!   an oversized frame, a missing hello, a version mismatch or a violation during exec ends
//!   the connection, and no input ends the agent.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt as _, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use nix::sys::signal::{Signal, killpg};
use nix::sys::socket::{AddressFamily, Backlog, Shutdown, SockFlag, SockType, VsockAddr};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, Interest, ReadBuf};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::protocol::{
    AgentErrorBody, AgentMessage, ClientMessage, ErrorCode, ExecRequest, ExitStatus, FrameError,
    FrameKind, Health, MAX_CHUNK_LEN, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, RawFrame, StdinMode,
    TtyRequest, read_frame, write_frame, write_message,
};
use super::pty;
use super::serial::{self, SerialPort};

/// The agent's version, reported in the hello and in health.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `PATH` of the clean environment commands start from.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the agent listens: `unix:/path/to/socket`, `vsock:PORT`, `serial:NAME` (the
/// virtio-serial port of that name, multiplexed: see [`crate::mux`]), or `auto`: whichever
/// transport this guest's VMM gave it (see [`ListenAddr::resolve_auto`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Vsock { port: u32 },
    Serial { name: String },
    Auto,
}

/// What a VMM that gives the agent a virtio-serial port puts on the kernel command line, so
/// that an agent listening on `auto` waits for that port (whose name arrives a moment after
/// boot) instead of taking vsock.
pub const SERIAL_KERNEL_ARG: &str = "banger.agent=serial";

impl ListenAddr {
    /// `auto` in a guest: the agent's virtio-serial port when the kernel command line says
    /// there is one ([`SERIAL_KERNEL_ARG`]) or the port is there already, else vsock on the
    /// agent's port. Any other address is itself.
    pub fn resolve_auto(self, kernel_cmdline: &str, serial_port_present: bool) -> ListenAddr {
        if self != ListenAddr::Auto {
            return self;
        }
        let asked = kernel_cmdline
            .split_whitespace()
            .any(|arg| arg == SERIAL_KERNEL_ARG);
        if asked || serial_port_present {
            ListenAddr::Serial {
                name: serial::AGENT_PORT_NAME.to_owned(),
            }
        } else {
            ListenAddr::Vsock {
                port: crate::protocol::AGENT_VSOCK_PORT,
            }
        }
    }

    /// [`ListenAddr::resolve_auto`] with this guest's `/proc/cmdline` and ports.
    pub fn resolve(self) -> ListenAddr {
        if self != ListenAddr::Auto {
            return self;
        }
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let present = serial::find_port(
            Path::new(serial::SYS_VIRTIO_PORTS),
            serial::AGENT_PORT_NAME,
            std::time::Duration::ZERO,
        )
        .is_ok();
        self.resolve_auto(&cmdline, present)
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/banger-agent.sock".into());
            }
            Ok(ListenAddr::Unix(PathBuf::from(path)))
        } else if let Some(port) = s.strip_prefix("vsock:") {
            let port = port
                .parse()
                .map_err(|_| format!("vsock port {port:?} is not a number from 0 to 4294967295"))?;
            Ok(ListenAddr::Vsock { port })
        } else if s == "auto" {
            Ok(ListenAddr::Auto)
        } else if let Some(name) = s.strip_prefix("serial:") {
            if name.is_empty() || name.contains('/') {
                return Err(format!(
                    "serial: needs a port name such as serial:{}, not {name:?}",
                    serial::AGENT_PORT_NAME
                ));
            }
            Ok(ListenAddr::Serial {
                name: name.to_owned(),
            })
        } else {
            Err(format!(
                "listen address {s:?} must be unix:PATH, vsock:PORT, serial:NAME or auto"
            ))
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Vsock { port } => write!(f, "vsock:{port}"),
            ListenAddr::Serial { name } => write!(f, "serial:{name}"),
            ListenAddr::Auto => f.write_str("auto"),
        }
    }
}

/// A bound, listening socket, or the opened virtio-serial port whose multiplexer yields
/// connections.
pub enum Listener {
    Unix(UnixListener),
    Vsock(VsockListener),
    Serial(SerialPort),
}

impl Listener {
    /// Binds `addr` (`auto` resolved first). A stale unix socket file (left by an agent that
    /// was killed) is replaced; any other file at that path is an error, never deleted.
    pub fn bind(addr: &ListenAddr) -> io::Result<Listener> {
        match &addr.clone().resolve() {
            ListenAddr::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() {
                        std::fs::remove_file(path)?;
                    }
                }
                let listener = UnixListener::bind(path)
                    .map_err(|e| annotate(e, &format!("bind {}", path.display())))?;
                Ok(Listener::Unix(listener))
            }
            ListenAddr::Vsock { port } => Ok(Listener::Vsock(VsockListener::bind(*port)?)),
            ListenAddr::Serial { name } => Ok(Listener::Serial(SerialPort::open_named(
                name,
                serial::PORT_APPEAR_TIMEOUT,
            )?)),
            ListenAddr::Auto => unreachable!("resolved above"),
        }
    }
}

/// Shared state of a running agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    state: Arc<State>,
}

struct State {
    started: Instant,
    cid: Option<u32>,
    /// The environment every command starts from (see [`ExecRequest`] for why it is clean).
    base_env: Vec<(String, String)>,
    home: PathBuf,
    /// Process groups (or, on a tty, sessions) of the commands running now, by their leader's
    /// pid, so a shutting-down agent can kill them.
    running: Mutex<HashMap<i32, Scope>>,
    next_conn: AtomicU64,
}

impl Agent {
    /// `cid` is the vsock CID the agent was told it has (the fake passes `BANGER_AGENT_CID`).
    pub fn new(cid: Option<u32>) -> Agent {
        let (user, home) = current_user();
        let mut base_env = vec![
            ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
            ("HOME".to_owned(), home.clone()),
        ];
        if let Some(user) = user {
            base_env.push(("USER".to_owned(), user.clone()));
            base_env.push(("LOGNAME".to_owned(), user));
        }
        // Only the fake firecracker sets it (the agent then runs on the host): the tools the
        // host runs through exec must find "the guest's /" there, not touch the host's.
        if let Some(root) = std::env::var(crate::tool_ssh::GUEST_ROOT_ENV)
            .ok()
            .filter(|root| !root.is_empty())
        {
            base_env.push((crate::tool_ssh::GUEST_ROOT_ENV.to_owned(), root));
        }
        Agent {
            state: Arc::new(State {
                started: Instant::now(),
                cid,
                base_env,
                home: PathBuf::from(home),
                running: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    /// Accepts connections forever, each served in its own task. Returns only when accepting
    /// fails in a way that retrying cannot fix.
    pub async fn serve(&self, listener: Listener) -> io::Result<()> {
        if let Listener::Serial(port) = listener {
            let agent = self.clone();
            crate::mux::serve_guest(port.into_port()?, move |stream| {
                let agent = agent.clone();
                tokio::spawn(async move { agent.serve_connection(stream).await });
            })
            .await;
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the virtio-serial port closed",
            ));
        }
        loop {
            let accepted = match &listener {
                Listener::Unix(l) => l.accept().await.map(|(stream, _)| {
                    let agent = self.clone();
                    tokio::spawn(async move { agent.serve_connection(stream).await });
                }),
                Listener::Vsock(l) => l.accept().await.map(|stream| {
                    let agent = self.clone();
                    tokio::spawn(async move { agent.serve_connection(stream).await });
                }),
                Listener::Serial(_) => unreachable!("served above"),
            };
            if let Err(e) = accepted {
                // Running out of descriptors or memory is transient: the connections that hold
                // them end eventually. Anything else means the listener itself is broken.
                match e.raw_os_error() {
                    Some(
                        libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOBUFS
                        | libc::ENOMEM
                        | libc::ECONNABORTED,
                    ) => {
                        warn!("accept failed, retrying: {e}");
                        tokio::task::yield_now().await;
                    }
                    _ => return Err(e),
                }
            }
        }
    }

    /// Serves one connection until the client closes it or breaks the protocol: a unix or
    /// vsock socket, or one stream of the virtio-serial port's multiplexer.
    pub async fn serve_connection<S: Connection>(&self, stream: S) {
        let id = self.state.next_conn.fetch_add(1, Ordering::Relaxed);
        let hangup = stream.hangup_watch();
        let (reader, writer) = tokio::io::split(stream);
        let (tx, frames) = mpsc::channel(4);
        let gone = CancellationToken::new();
        let reader_task = tokio::spawn(read_frames(reader, tx, gone.clone(), hangup));
        let mut conn = Conn {
            state: &self.state,
            frames,
            gone,
            writer,
            leftovers: Leftovers::Nothing,
        };
        match conn.run().await {
            Ok(()) => debug!(conn = id, "connection closed"),
            Err(end) => info!(conn = id, "connection ended: {end}"),
        }
        // Close our direction now: the socket itself only closes once the reader task has
        // dropped its half too, and the client should not wait for that.
        let _ = conn.writer.shutdown().await;
        reader_task.abort();
    }

    /// Kills the process group (on a tty, the session) of every running command (used when
    /// the agent shuts down).
    pub fn kill_running(&self) {
        // Copied out: killing a session reads /proc, which is no work for under a lock.
        let running: Vec<(i32, Scope)> = self
            .state
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(&leader, &scope)| (leader, scope))
            .collect();
        for (leader, scope) in running {
            match scope {
                Scope::Group => {
                    let _ = killpg(Pid::from_raw(leader), Signal::SIGKILL);
                }
                Scope::Session => pty::kill_session(leader, false),
            }
        }
    }
}

/// Reads frames off the socket into the channel until EOF or an error; then raises `gone`.
async fn read_frames<R>(
    reader: R,
    tx: mpsc::Sender<Result<RawFrame, FrameError>>,
    gone: CancellationToken,
    hangup: HangupWatch,
) where
    R: AsyncRead + Unpin,
{
    let mut reader = BufReader::new(reader);
    loop {
        let item = match read_frame(&mut reader).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => break,
            // An empty frame does not break the framing: the next bytes are the next header.
            Err(FrameError::Empty) => Err(FrameError::Empty),
            Err(e) => {
                // Queue the error before raising `gone`, so the exec loop, which looks in the
                // queue when it sees `gone`, can tell the client why. If the queue is full (the
                // exec loop is not taking frames), raise `gone` first: the loop must learn that
                // the client is done even so.
                if let Err(mpsc::error::TrySendError::Full(item)) = tx.try_send(Err(e)) {
                    gone.cancel();
                    let _ = tx.send(item).await;
                }
                break;
            }
        };
        let delivered = match tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            // The exec loop is not taking frames (its command is not reading stdin), so nobody
            // reads the socket and its end of file would go unseen: watch for the hangup
            // instead, or a command that neither reads nor writes would outlive its client.
            Err(mpsc::error::TrySendError::Full(item)) => tokio::select! {
                sent = tx.send(item) => sent.is_ok(),
                () = hangup.wait() => false,
            },
        };
        if !delivered {
            break;
        }
    }
    gone.cancel();
}

/// A connection the agent serves: a byte stream that can also tell, while nobody reads it,
/// that its peer hung up (see [`HangupWatch`]).
pub trait Connection: AsyncRead + AsyncWrite + Send + 'static {
    fn hangup_watch(&self) -> HangupWatch;
}

impl Connection for tokio::net::UnixStream {
    fn hangup_watch(&self) -> HangupWatch {
        HangupWatch::for_socket(self.as_fd())
    }
}

impl Connection for VsockStream {
    fn hangup_watch(&self) -> HangupWatch {
        HangupWatch::for_socket(self.as_fd())
    }
}

impl Connection for crate::mux::MuxStream {
    fn hangup_watch(&self) -> HangupWatch {
        HangupWatch::Token(self.peer_closed())
    }
}

/// Notices that the peer closed the connection without reading from it. For a socket: a
/// duplicate of it registered with the reactor, woken when data arrives (ignored) or when the
/// peer shuts down its side (EPOLLRDHUP, which unix and vsock sockets both report). For a
/// multiplexed stream: the token its multiplexer raises on the peer's EOF or RESET.
pub enum HangupWatch {
    Socket(Option<AsyncFd<OwnedFd>>),
    Token(CancellationToken),
}

impl HangupWatch {
    fn for_socket(socket: BorrowedFd<'_>) -> HangupWatch {
        let fd = socket
            .try_clone_to_owned()
            .and_then(|fd| register(fd, Interest::READABLE));
        if let Err(e) = &fd {
            warn!("cannot watch the connection for hangups: {e}");
        }
        HangupWatch::Socket(fd.ok())
    }

    async fn wait(&self) {
        let fd = match self {
            HangupWatch::Token(token) => return token.cancelled().await,
            HangupWatch::Socket(Some(fd)) => fd,
            HangupWatch::Socket(None) => return std::future::pending().await,
        };
        loop {
            match fd.readable().await {
                Ok(guard) if guard.ready().is_read_closed() => return,
                // Edge-triggered: this waits for the next arrival, it does not spin.
                Ok(mut guard) => guard.clear_ready(),
                Err(_) => return,
            }
        }
    }
}

/// What `wait(2)` said, as the protocol reports it. It reports only exits and deaths by signal
/// (stopped children are not reported without WUNTRACED), so the last arm never happens.
fn exit_status(exited: std::process::ExitStatus) -> ExitStatus {
    match (exited.code(), exited.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        (None, None) => ExitStatus::Code(-1),
    }
}

/// Why a connection ended early.
#[derive(Debug)]
enum End {
    /// The client went away (EOF, reset, failed write).
    Gone(String),
    /// The agent refused to go on after telling the client why.
    Refused(AgentErrorBody),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Gone(why) => write!(f, "client gone: {why}"),
            End::Refused(body) => write!(f, "refused: {} [{}]", body.message, body.code),
        }
    }
}

impl From<FrameError> for End {
    fn from(e: FrameError) -> End {
        End::Gone(e.to_string())
    }
}

/// A frame from the client, sorted.
enum Incoming {
    Message(ClientMessage),
    Stdin(Vec<u8>),
    /// Bad input: answer with this error; `fatal` when the connection cannot go on.
    Refused {
        body: AgentErrorBody,
        fatal: bool,
    },
}

fn refused(code: ErrorCode, message: impl Into<String>, fatal: bool) -> Incoming {
    Incoming::Refused {
        body: AgentErrorBody {
            code,
            message: message.into(),
        },
        fatal,
    }
}

fn classify(frame: Result<RawFrame, FrameError>) -> Result<Incoming, End> {
    let frame = match frame {
        Ok(frame) => frame,
        Err(FrameError::TooLarge { len, max }) => {
            return Ok(refused(
                ErrorCode::FrameTooLarge,
                format!(
                    "frame of {len} bytes is over the {max}-byte limit; closing the connection"
                ),
                true,
            ));
        }
        Err(FrameError::Empty) => {
            return Ok(refused(
                ErrorCode::BadFrame,
                "empty frame (no kind byte)",
                false,
            ));
        }
        Err(e) => return Err(End::from(e)),
    };
    match frame.kind() {
        Some(FrameKind::Message) => Ok(parse_message(&frame.payload)),
        Some(FrameKind::Stdin) => Ok(Incoming::Stdin(frame.payload)),
        Some(kind @ (FrameKind::Stdout | FrameKind::Stderr)) => Ok(refused(
            ErrorCode::BadFrame,
            format!("{kind:?} frames only go from the agent to the host"),
            false,
        )),
        None => Ok(refused(
            ErrorCode::BadFrame,
            format!("unknown frame kind {:#04x}", frame.kind),
            false,
        )),
    }
}

/// Parses a message, telling malformed JSON, an unknown type and a bad request apart.
fn parse_message(payload: &[u8]) -> Incoming {
    let value: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(value) => value,
        Err(e) => {
            return refused(
                ErrorCode::BadFrame,
                format!("message is not valid JSON: {e}"),
                false,
            );
        }
    };
    let Some(kind) = value.get("type").and_then(|t| t.as_str()) else {
        return refused(
            ErrorCode::BadRequest,
            "message has no string \"type\" field",
            false,
        );
    };
    if !ClientMessage::TYPES.contains(&kind) {
        return refused(
            ErrorCode::UnknownRequest,
            format!(
                "unknown request type {kind:?}; this agent ({AGENT_VERSION}, protocol {PROTOCOL_VERSION}) knows {}",
                ClientMessage::TYPES.join(", ")
            ),
            false,
        );
    }
    let kind = kind.to_owned();
    match serde_json::from_value(value) {
        Ok(message) => Incoming::Message(message),
        Err(e) => refused(
            ErrorCode::BadRequest,
            format!("invalid {kind} request: {e}"),
            false,
        ),
    }
}

struct Conn<'a, W> {
    state: &'a State,
    frames: mpsc::Receiver<Result<RawFrame, FrameError>>,
    gone: CancellationToken,
    writer: W,
    /// What of the last command may still arrive after its `exited`, to be dropped.
    leftovers: Leftovers,
}

/// Frames of a finished command that may still be on their way, because the host sent them
/// before it read `exited`: they are dropped without an answer, since an answer would be read
/// as the next request's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leftovers {
    Nothing,
    /// `signal` and `resize`, until the next request.
    Controls,
    /// The command took stdin (a pipe or a tty) and was over before the host sent
    /// `stdin_close`: stdin frames, `signal` and `resize` until that `stdin_close` (or the
    /// next request).
    StdinAndControls,
}

impl<W: AsyncWrite + Unpin> Conn<'_, W> {
    async fn run(&mut self) -> Result<(), End> {
        let Some(first) = self.frames.recv().await else {
            return Ok(());
        };
        match classify(first)? {
            // Each version only adds to the one before, so an older client is served in its
            // own version (and never sends what it lacks).
            Incoming::Message(ClientMessage::Hello { protocol, client })
                if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol) =>
            {
                debug!(client, protocol, "hello");
                let hello = AgentMessage::Hello {
                    protocol,
                    agent_version: AGENT_VERSION.to_owned(),
                };
                self.send(&hello).await?;
            }
            Incoming::Message(ClientMessage::Hello { protocol, client }) => {
                warn!(
                    client,
                    protocol, "refused a client that speaks another protocol version"
                );
                return self
                    .refuse(
                        ErrorCode::VersionMismatch,
                        format!(
                            "this agent ({AGENT_VERSION}) speaks protocol {PROTOCOL_VERSION} (and serves \
                             clients of {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}), the client ({client}) \
                             speaks protocol {protocol}"
                        ),
                    )
                    .await;
            }
            Incoming::Refused { body, .. } => return self.refuse(body.code, body.message).await,
            _ => {
                return self
                    .refuse(ErrorCode::Unexpected, "the first message must be hello")
                    .await;
            }
        }
        loop {
            let Some(frame) = self.frames.recv().await else {
                return Ok(());
            };
            match classify(frame)? {
                // Input for a command that finished before the host closed its stdin.
                Incoming::Stdin(_) if self.leftovers == Leftovers::StdinAndControls => {}
                Incoming::Message(ClientMessage::StdinClose)
                    if self.leftovers == Leftovers::StdinAndControls =>
                {
                    self.leftovers = Leftovers::Nothing;
                }
                // A signal or resize that crossed the command's `exited`.
                Incoming::Message(ClientMessage::Signal { .. } | ClientMessage::Resize { .. })
                    if self.leftovers != Leftovers::Nothing => {}
                Incoming::Message(message) => {
                    self.leftovers = Leftovers::Nothing;
                    self.handle(message).await?
                }
                Incoming::Stdin(_) => {
                    self.error(ErrorCode::Unexpected, "stdin frame while no command runs")
                        .await?
                }
                Incoming::Refused { body, fatal: true } => {
                    return self.refuse(body.code, body.message).await;
                }
                Incoming::Refused { body, fatal: false } => {
                    self.send(&AgentMessage::Error(body)).await?
                }
            }
        }
    }

    async fn handle(&mut self, message: ClientMessage) -> Result<(), End> {
        match message {
            ClientMessage::Hello { .. } => {
                self.error(ErrorCode::Unexpected, "hello was already exchanged")
                    .await
            }
            ClientMessage::Health => match health(self.state) {
                Ok(health) => self.send(&AgentMessage::Health(health)).await,
                Err(message) => self.error(ErrorCode::Internal, message).await,
            },
            ClientMessage::Ping { nonce } => self.send(&AgentMessage::Pong { nonce }).await,
            ClientMessage::Sync => match tokio::task::spawn_blocking(nix::unistd::sync).await {
                Ok(()) => self.send(&AgentMessage::Synced).await,
                Err(e) => {
                    self.error(ErrorCode::Internal, format!("sync failed: {e}"))
                        .await
                }
            },
            ClientMessage::Exec(request) => self.exec(request).await,
            ClientMessage::StdinClose
            | ClientMessage::Signal { .. }
            | ClientMessage::Resize { .. } => {
                self.error(
                    ErrorCode::Unexpected,
                    "no command is running on this connection",
                )
                .await
            }
        }
    }

    async fn exec(&mut self, request: ExecRequest) -> Result<(), End> {
        if let Err(message) = request.validate() {
            return self.error(ErrorCode::BadRequest, message).await;
        }
        let program = &request.argv[0];
        let cwd = match &request.cwd {
            Some(cwd) => PathBuf::from(cwd),
            None if self.state.home.is_dir() => self.state.home.clone(),
            None => PathBuf::from("/"),
        };
        // Checked here because spawn reports a missing directory exactly like a missing
        // program (ENOENT), and the user needs to know which one it was.
        if let Err(why) = check_dir(&cwd) {
            return self
                .error(
                    ErrorCode::SpawnFailed,
                    format!(
                        "cannot run `{program}`: working directory {}: {why}",
                        cwd.display()
                    ),
                )
                .await;
        }
        if let Some(tty) = &request.tty {
            return self.exec_tty(&request, tty, &cwd).await;
        }
        let piped = request.stdin == StdinMode::Pipe;
        let mut command = tokio::process::Command::new(program);
        command
            .args(&request.argv[1..])
            .env_clear()
            .envs(self.state.base_env.iter().map(|(k, v)| (k, v)))
            .envs(&request.env)
            .current_dir(&cwd)
            .stdin(if piped { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that everything it starts can be killed with it.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                return self
                    .error(
                        ErrorCode::SpawnFailed,
                        format!("cannot run `{program}`: {e}"),
                    )
                    .await;
            }
        };
        let (Some(pid), Some(mut stdout), Some(mut stderr)) =
            (child.id(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill().await;
            return self
                .error(
                    ErrorCode::Internal,
                    format!("`{program}` started without its pipes"),
                )
                .await;
        };
        let group = RunningGroup::register(self.state, pid, Scope::Group);
        debug!(pid, ?request.argv, "exec started");

        let mut stdin_tx = match child.stdin.take() {
            Some(stdin) => {
                let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
                tokio::spawn(feed_stdin(stdin, rx));
                Some(tx)
            }
            None => None,
        };
        let mut stdin_closed = !piped;
        // A stdin chunk the command has not taken yet. While one waits, no further frames are
        // read from the client, which pushes back on a host that writes faster than the
        // command reads.
        let mut pending: Option<Vec<u8>> = None;
        let mut status: Option<std::process::ExitStatus> = None;
        let (mut out_done, mut err_done) = (false, false);
        let mut out_buf = vec![0u8; MAX_CHUNK_LEN];
        let mut err_buf = vec![0u8; MAX_CHUNK_LEN];

        let outcome = match self.send(&AgentMessage::ExecStarted { pid }).await {
            Err(end) => Err(end),
            Ok(()) => loop {
                // Done only when the command exited, its output was forwarded to the end (a
                // background process that keeps the pipes open keeps the exec going, as with
                // ssh), and no stdin frame can still be on its way.
                if status.is_some() && out_done && err_done {
                    // A command that exited without reading all its stdin is over now, not
                    // when the host runs out of input (which may be never: a pipe that stays
                    // open). Stdin frames already on their way, and the stdin_close that ends
                    // them, are dropped after `exited` (see `Leftovers`).
                    self.leftovers = if stdin_closed {
                        Leftovers::Controls
                    } else {
                        Leftovers::StdinAndControls
                    };
                    break Ok(());
                }
                if stdin_closed && stdin_tx.is_some() {
                    // Dropping the sender lets the feeder write what it holds, then close the
                    // pipe. (Nothing is pending: stdin_close is only read when nothing is.)
                    stdin_tx = None;
                }
                tokio::select! {
                    _ = self.gone.cancelled() => break Err(self.why_gone()),
                    read = stdout.read(&mut out_buf), if !out_done => match read {
                        Ok(0) | Err(_) => out_done = true,
                        Ok(n) => {
                            if let Err(e) = write_frame(&mut self.writer, FrameKind::Stdout, &out_buf[..n]).await {
                                break Err(End::from(e));
                            }
                        }
                    },
                    read = stderr.read(&mut err_buf), if !err_done => match read {
                        Ok(0) | Err(_) => err_done = true,
                        Ok(n) => {
                            if let Err(e) = write_frame(&mut self.writer, FrameKind::Stderr, &err_buf[..n]).await {
                                break Err(End::from(e));
                            }
                        }
                    },
                    exited = child.wait(), if status.is_none() => match exited {
                        Ok(exited) => status = Some(exited),
                        Err(e) => break Err(End::Refused(AgentErrorBody {
                            code: ErrorCode::Internal,
                            message: format!("waiting for `{program}` failed: {e}"),
                        })),
                    },
                    permit = reserve(&stdin_tx), if pending.is_some() => {
                        // Without a permit the command closed its stdin (or exited): what it
                        // did not read is dropped, as a pipe would.
                        if let (Some(permit), Some(data)) = (permit, pending.take()) {
                            permit.send(data);
                        }
                    }
                    frame = self.frames.recv(), if pending.is_none() => {
                        let Some(frame) = frame else {
                            break Err(End::Gone("closed during exec".into()));
                        };
                        match classify(frame) {
                            Err(end) => break Err(end),
                            Ok(Incoming::Stdin(data)) if !stdin_closed => {
                                if stdin_tx.is_some() {
                                    pending = Some(data);
                                }
                            }
                            Ok(Incoming::Message(ClientMessage::StdinClose)) if !stdin_closed => {
                                stdin_closed = true;
                            }
                            Ok(Incoming::Message(ClientMessage::Signal { signal })) => match Signal::try_from(signal) {
                                Ok(signal) => {
                                    let _ = killpg(Pid::from_raw(group.pgid), signal);
                                }
                                Err(_) => break Err(End::Refused(AgentErrorBody {
                                    code: ErrorCode::BadRequest,
                                    message: format!("{signal} is not a signal number"),
                                })),
                            },
                            Ok(Incoming::Refused { body, .. }) => break Err(End::Refused(body)),
                            Ok(_) => break Err(End::Refused(AgentErrorBody {
                                code: ErrorCode::Unexpected,
                                message: "while a command runs only stdin, stdin_close and signal may be sent \
                                          (stdin only with stdin: pipe, and not after stdin_close; resize only \
                                          with a tty)"
                                    .into(),
                            })),
                        }
                    },
                }
            },
        };

        match (outcome, status) {
            (Ok(()), Some(exited)) => {
                drop(group);
                let status = exit_status(exited);
                debug!(pid, %status, "exec finished");
                self.send(&AgentMessage::Exited { status }).await
            }
            (outcome, status) => {
                // Kill the whole group: the command and whatever it started.
                let _ = killpg(Pid::from_raw(group.pgid), Signal::SIGKILL);
                if status.is_none() {
                    let _ = child.wait().await;
                }
                drop(group);
                self.end_killed(pid, outcome, "process group").await
            }
        }
    }

    /// How an exec whose command was killed (its `what`: process group or session) ends: the
    /// client told why when the agent refused to go on, and the reason logged.
    async fn end_killed(
        &mut self,
        pid: u32,
        outcome: Result<(), End>,
        what: &str,
    ) -> Result<(), End> {
        let end = match outcome {
            Err(end) => end,
            // Unreachable: the loops only finish with a status. Keep the agent alive and
            // honest about it anyway.
            Ok(()) => End::Refused(AgentErrorBody {
                code: ErrorCode::Internal,
                message: "exec ended without an exit status".into(),
            }),
        };
        info!(pid, "killed the command's {what}: {end}");
        if let End::Refused(body) = &end {
            let _ = self.send(&AgentMessage::Error(body.clone())).await;
        }
        Err(end)
    }

    /// An exec on a pseudo-terminal (see the protocol's docs and [`crate::pty`]): the command
    /// leads a session whose controlling terminal is the pty's slave; its output is read from
    /// the master, input frames are written to it, `resize` sets its size and `signal` goes to
    /// its foreground process group.
    async fn exec_tty(
        &mut self,
        request: &ExecRequest,
        tty: &TtyRequest,
        cwd: &Path,
    ) -> Result<(), End> {
        let program = &request.argv[0];
        let pty::PtyPair { master, slave } = match pty::open(tty.rows, tty.cols) {
            Ok(pair) => pair,
            Err(e) => {
                return self
                    .error(
                        ErrorCode::SpawnFailed,
                        format!("cannot run `{program}` on a terminal: {e}"),
                    )
                    .await;
            }
        };
        let stdio = || slave.try_clone().map(Stdio::from);
        let (stdin, stdout, stderr) = match (stdio(), stdio(), stdio()) {
            (Ok(stdin), Ok(stdout), Ok(stderr)) => (stdin, stdout, stderr),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return self
                    .error(
                        ErrorCode::SpawnFailed,
                        format!("cannot run `{program}` on a terminal: {e}"),
                    )
                    .await;
            }
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(&request.argv[1..])
            .env_clear()
            .envs(self.state.base_env.iter().map(|(k, v)| (k, v)))
            .envs(tty.term.as_ref().map(|term| ("TERM", term)))
            .envs(&request.env)
            .current_dir(cwd)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        // SAFETY: the closure only makes async-signal-safe calls (see the function).
        unsafe {
            command.as_std_mut().pre_exec(pty::become_session_leader);
        }
        let spawned = command.spawn();
        // The agent keeps no descriptor of the slave (the command holds its own), so the
        // master reads end of file once the command and whatever it started let go of it.
        drop(command);
        drop(slave);
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                return self
                    .error(
                        ErrorCode::SpawnFailed,
                        format!("cannot run `{program}`: {e}"),
                    )
                    .await;
            }
        };
        let Some(pid) = child.id() else {
            let _ = child.kill().await;
            return self
                .error(
                    ErrorCode::Internal,
                    format!("`{program}` started without a pid"),
                )
                .await;
        };
        let group = RunningGroup::register(self.state, pid, Scope::Session);
        debug!(pid, ?request.argv, rows = tty.rows, cols = tty.cols, "exec started on a tty");

        let mut status: Option<std::process::ExitStatus> = None;
        let mut out_done = false;
        let mut stdin_closed = false;
        // Input the terminal has not taken yet, and how much of it it took. While some waits,
        // no further frames are read from the client: back-pressure, as with a stdin pipe.
        let mut pending: Option<(Vec<u8>, usize)> = None;
        let mut buf = vec![0u8; MAX_CHUNK_LEN];

        let outcome = match self.send(&AgentMessage::ExecStarted { pid }).await {
            Err(end) => Err(end),
            Ok(()) => loop {
                if status.is_some() {
                    // The command exited: forward what it wrote that is still in the
                    // terminal, without waiting for background processes that hold it.
                    if !out_done && let Err(end) = self.drain_tty(&master, &mut buf).await {
                        break Err(end);
                    }
                    self.leftovers = if stdin_closed {
                        Leftovers::Controls
                    } else {
                        Leftovers::StdinAndControls
                    };
                    break Ok(());
                }
                tokio::select! {
                    _ = self.gone.cancelled() => break Err(self.why_gone()),
                    read = master.read(&mut buf), if !out_done => match read {
                        Ok(0) | Err(_) => out_done = true,
                        Ok(n) => {
                            if let Err(e) = write_frame(&mut self.writer, FrameKind::Stdout, &buf[..n]).await {
                                break Err(End::from(e));
                            }
                        }
                    },
                    exited = child.wait() => match exited {
                        Ok(exited) => status = Some(exited),
                        Err(e) => break Err(End::Refused(AgentErrorBody {
                            code: ErrorCode::Internal,
                            message: format!("waiting for `{program}` failed: {e}"),
                        })),
                    },
                    written = write_pending(&master, &pending), if pending.is_some() => match written {
                        Ok(n) => {
                            if let Some((data, at)) = &mut pending {
                                *at += n;
                                if *at >= data.len() {
                                    pending = None;
                                }
                            }
                        }
                        // The terminal is gone (every process let go of it): its input with it.
                        Err(_) => pending = None,
                    },
                    frame = self.frames.recv(), if pending.is_none() => {
                        let Some(frame) = frame else {
                            break Err(End::Gone("closed during exec".into()));
                        };
                        match classify(frame) {
                            Err(end) => break Err(end),
                            Ok(Incoming::Stdin(data)) if !stdin_closed => {
                                if !data.is_empty() {
                                    pending = Some((data, 0));
                                }
                            }
                            Ok(Incoming::Message(ClientMessage::StdinClose)) if !stdin_closed => {
                                // What a user typing ^D does: end of file for a reader in
                                // canonical mode, a plain byte for one in raw mode.
                                stdin_closed = true;
                                pending = Some((vec![master.eof_char()], 0));
                            }
                            Ok(Incoming::Message(ClientMessage::Resize { rows, cols })) => {
                                if let Err(e) = master.resize(rows, cols) {
                                    debug!(pid, "resize to {rows}x{cols} failed: {e}");
                                }
                            }
                            Ok(Incoming::Message(ClientMessage::Signal { signal })) => match Signal::try_from(signal) {
                                Ok(signal) => {
                                    // Where the terminal would send it: its foreground group
                                    // (a job the shell runs), else the command's own.
                                    let target = master.foreground_group().unwrap_or(Pid::from_raw(group.pgid));
                                    let _ = killpg(target, signal);
                                }
                                Err(_) => break Err(End::Refused(AgentErrorBody {
                                    code: ErrorCode::BadRequest,
                                    message: format!("{signal} is not a signal number"),
                                })),
                            },
                            Ok(Incoming::Refused { body, .. }) => break Err(End::Refused(body)),
                            Ok(_) => break Err(End::Refused(AgentErrorBody {
                                code: ErrorCode::Unexpected,
                                message: "while a command runs on a tty only stdin, stdin_close, signal and resize \
                                          may be sent (stdin not after stdin_close)"
                                    .into(),
                            })),
                        }
                    },
                }
            },
        };

        match (outcome, status) {
            (Ok(()), Some(exited)) => {
                drop(group);
                // Closing the master hangs the terminal up for whatever still holds it.
                drop(master);
                let status = exit_status(exited);
                debug!(pid, %status, "exec on a tty finished");
                self.send(&AgentMessage::Exited { status }).await
            }
            (outcome, status) => {
                // Kill the whole session: the command, and every job and process it started.
                pty::kill_session(group.pgid, status.is_some());
                if status.is_none() {
                    let _ = child.wait().await;
                }
                drop(group);
                self.end_killed(pid, outcome, "session").await
            }
        }
    }

    /// Forwards what the terminal holds now, until it has nothing more or has sent
    /// [`MAX_TTY_DRAIN_BYTES`] (a background process that keeps printing must not hold up
    /// the end of the command).
    async fn drain_tty(&mut self, master: &pty::Master, buf: &mut [u8]) -> Result<(), End> {
        let mut sent = 0usize;
        while sent < MAX_TTY_DRAIN_BYTES {
            match master.read_now(buf) {
                Ok(Some(0)) | Ok(None) | Err(_) => return Ok(()),
                Ok(Some(n)) => {
                    write_frame(&mut self.writer, FrameKind::Stdout, &buf[..n]).await?;
                    sent += n;
                }
            }
        }
        Ok(())
    }

    /// Why the client is gone during exec: a frame error it caused (to report), or a close.
    fn why_gone(&mut self) -> End {
        while let Ok(item) = self.frames.try_recv() {
            if item.is_err() {
                return match classify(item) {
                    Ok(Incoming::Refused { body, .. }) => End::Refused(body),
                    Ok(_) => End::Gone("closed during exec".into()),
                    Err(end) => end,
                };
            }
        }
        End::Gone("closed during exec".into())
    }

    async fn send(&mut self, message: &AgentMessage) -> Result<(), End> {
        write_message(&mut self.writer, message)
            .await
            .map_err(End::from)
    }

    async fn error(&mut self, code: ErrorCode, message: impl Into<String>) -> Result<(), End> {
        self.send(&AgentMessage::Error(AgentErrorBody {
            code,
            message: message.into(),
        }))
        .await
    }

    /// Sends an error and ends the connection.
    async fn refuse(&mut self, code: ErrorCode, message: impl Into<String>) -> Result<(), End> {
        let body = AgentErrorBody {
            code,
            message: message.into(),
        };
        self.send(&AgentMessage::Error(body.clone())).await?;
        let _ = self.writer.shutdown().await;
        Err(End::Refused(body))
    }
}

/// How much of what a command on a tty left in its terminal is forwarded after it exited. The
/// terminal buffers a few dozen KiB at most (a writer blocks beyond that), so only a background
/// process printing on and on reaches this.
const MAX_TTY_DRAIN_BYTES: usize = 1024 * 1024;

/// Writes the pending input's rest to the terminal (see `exec_tty`).
async fn write_pending(
    master: &pty::Master,
    pending: &Option<(Vec<u8>, usize)>,
) -> io::Result<usize> {
    match pending {
        Some((data, at)) => master.write(&data[*at..]).await,
        None => std::future::pending().await,
    }
}

/// Waits for room in the stdin channel; `None` when there is no stdin or the feeder is gone.
async fn reserve(tx: &Option<mpsc::Sender<Vec<u8>>>) -> Option<mpsc::Permit<'_, Vec<u8>>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => None,
    }
}

/// Writes stdin chunks to the command until the channel closes, then closes its stdin.
async fn feed_stdin(mut stdin: tokio::process::ChildStdin, mut chunks: mpsc::Receiver<Vec<u8>>) {
    while let Some(chunk) = chunks.recv().await {
        if stdin.write_all(&chunk).await.is_err() {
            // The command closed its end: drop the rest (the exec loop sees the channel close).
            return;
        }
    }
}

/// What a running command's leader leads: the process group of a command on pipes, or the
/// session of a command on a tty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Group,
    Session,
}

/// A running command's process group (or session), registered with the agent while it lives.
struct RunningGroup<'a> {
    state: &'a State,
    pgid: i32,
}

impl<'a> RunningGroup<'a> {
    fn register(state: &'a State, pid: u32, scope: Scope) -> RunningGroup<'a> {
        // Pids fit in i32 (the kernel's pid_max is at most 2^22).
        let pgid = pid as i32;
        state
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(pgid, scope);
        RunningGroup { state, pgid }
    }
}

impl Drop for RunningGroup<'_> {
    fn drop(&mut self) {
        self.state
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.pgid);
    }
}

fn check_dir(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err("not a directory".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The user the agent runs as, from `/etc/passwd`: (name, home). Read directly rather than
/// through getpwuid(3), which a static glibc binary cannot use (NSS needs dlopen).
fn current_user() -> (Option<String>, String) {
    let uid = nix::unistd::getuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 6 && fields[2].parse() == Ok(uid) {
            return (Some(fields[0].to_owned()), fields[5].to_owned());
        }
    }
    let home = if uid == 0 { "/root" } else { "/" };
    (None, home.to_owned())
}

/// Gathers health from /proc. These are small in-memory files, so reading them inline does
/// not block the runtime in any way that matters.
fn health(state: &State) -> Result<Health, String> {
    let read =
        |path: &str| std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
    let hostname = read("/proc/sys/kernel/hostname")?.trim().to_owned();
    let uptime = read("/proc/uptime")?;
    let system_uptime_s: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("cannot parse /proc/uptime: {uptime:?}"))?;
    let loadavg = read("/proc/loadavg")?;
    let loads: Vec<f64> = loadavg
        .split_whitespace()
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect();
    let [l1, l5, l15] = loads[..] else {
        return Err(format!("cannot parse /proc/loadavg: {loadavg:?}"));
    };
    let meminfo = read("/proc/meminfo")?;
    let mem_kib = |name: &str| {
        meminfo
            .lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(':')?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .ok_or_else(|| format!("/proc/meminfo has no {name}"))
    };
    Ok(Health {
        agent_version: AGENT_VERSION.to_owned(),
        protocol: PROTOCOL_VERSION,
        hostname,
        cid: state.cid,
        agent_uptime_ms: u64::try_from(state.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        system_uptime_ms: (system_uptime_s * 1000.0) as u64,
        load: [l1, l5, l15],
        mem_total_bytes: mem_kib("MemTotal")? * 1024,
        mem_available_bytes: mem_kib("MemAvailable")? * 1024,
    })
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// An AF_VSOCK listening socket, for the agent inside a real guest.
///
/// tokio has no vsock type, so this is the minimum on top of [`AsyncFd`]: a non-blocking
/// socket, `accept4`, and a stream whose reads and writes are plain read(2)/write(2).
/// It cannot be exercised on machines without vhost-vsock; everything above it is tested
/// through the unix listener, which hands the same server code a stream of the same shape.
pub struct VsockListener {
    fd: AsyncFd<OwnedFd>,
}

impl VsockListener {
    /// Listens on `port` for any CID (the host reaches the guest as CID 3+, itself being 2).
    pub fn bind(port: u32) -> io::Result<VsockListener> {
        let fd = nix::sys::socket::socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| {
            annotate(
                e.into(),
                "create a vsock socket (is the vsock driver loaded?)",
            )
        })?;
        nix::sys::socket::bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))
            .map_err(|e| annotate(e.into(), &format!("bind vsock port {port}")))?;
        nix::sys::socket::listen(&fd, Backlog::MAXCONN)
            .map_err(|e| annotate(e.into(), "listen on vsock"))?;
        Ok(VsockListener {
            fd: register(fd, Interest::READABLE | Interest::WRITABLE)?,
        })
    }

    pub async fn accept(&self) -> io::Result<VsockStream> {
        loop {
            let mut guard = self.fd.readable().await?;
            let accepted = guard.try_io(|fd| {
                nix::sys::socket::accept4(
                    fd.as_raw_fd(),
                    SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                )
                .map_err(io::Error::from)
            });
            match accepted {
                Ok(Ok(raw)) => {
                    // SAFETY: accept4 just returned this descriptor and nothing else owns it.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    return Ok(VsockStream {
                        fd: register(fd, Interest::READABLE | Interest::WRITABLE)?,
                    });
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Registers a non-blocking descriptor with tokio's reactor.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is open until it is dropped and always reports the same descriptor;
    // the `AsyncFd` owns it from here on.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// One accepted vsock connection.
pub struct VsockStream {
    fd: AsyncFd<OwnedFd>,
}

impl AsFd for VsockStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

impl AsyncRead for VsockStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for VsockStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref().as_fd(), buf).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the socket; there is no buffer to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            nix::sys::socket::shutdown(self.fd.as_raw_fd(), Shutdown::Write)
                .map_err(io::Error::from),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "unix:/tmp/a.sock".parse(),
            Ok(ListenAddr::Unix("/tmp/a.sock".into()))
        );
        assert_eq!("vsock:10789".parse(), Ok(ListenAddr::Vsock { port: 10789 }));
        assert!("vsock:x".parse::<ListenAddr>().is_err());
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("tcp:1".parse::<ListenAddr>().is_err());
        assert_eq!(ListenAddr::Vsock { port: 5 }.to_string(), "vsock:5");
        assert_eq!("auto".parse(), Ok(ListenAddr::Auto));
        assert_eq!(
            "serial:banger.agent".parse(),
            Ok(ListenAddr::Serial {
                name: "banger.agent".into()
            })
        );
        assert!("serial:".parse::<ListenAddr>().is_err());
        assert!("serial:../x".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn auto_takes_the_transport_the_vmm_gave() {
        let serial = ListenAddr::Serial {
            name: serial::AGENT_PORT_NAME.into(),
        };
        let vsock = ListenAddr::Vsock {
            port: crate::protocol::AGENT_VSOCK_PORT,
        };
        let qemu = "console=ttyS0 banger.agent=serial root=/dev/vda rw";
        assert_eq!(ListenAddr::Auto.resolve_auto(qemu, false), serial);
        assert_eq!(ListenAddr::Auto.resolve_auto("console=ttyS0", true), serial);
        assert_eq!(ListenAddr::Auto.resolve_auto("console=ttyS0", false), vsock);
        assert_eq!(
            ListenAddr::Auto.resolve_auto("banger.agent=serialx", false),
            vsock
        );
        let unix = ListenAddr::Unix("/tmp/a.sock".into());
        assert_eq!(unix.clone().resolve_auto(qemu, true), unix);
    }
}
