//! The wire protocol between the host and `banger-agent`, shared by both sides.
//!
//! # Frames
//!
//! Everything on a connection is a frame: a big-endian length, one kind byte, and a payload.
//!
//! ```text
//!  0                   4        5                               4 + len
//!  +-------------------+--------+--------------------------------+
//!  | len: u32 (BE)     | kind   | payload: len - 1 bytes         |
//!  +-------------------+--------+--------------------------------+
//!  len counts the kind byte and the payload: 1 <= len <= MAX_FRAME_LEN (1 MiB)
//!
//!  kind 0x01  message  payload is one JSON object, {"type": "...", ...}
//!  kind 0x02  stdout   payload is raw bytes a command wrote to its stdout   (agent → host)
//!  kind 0x03  stderr   payload is raw bytes a command wrote to its stderr   (agent → host)
//!  kind 0x04  stdin    payload is raw bytes for the command's stdin         (host → agent)
//! ```
//!
//! Control messages are JSON so they stay readable in a packet dump and easy to extend; command
//! output and input travel as raw bytes so binary data is never mangled or inflated.
//!
//! A length is checked against [`MAX_FRAME_LEN`] *before* anything is allocated, so a hostile or
//! confused peer cannot make either side reserve gigabytes. A length of zero (no kind byte) is
//! malformed.
//!
//! # Conversation
//!
//! ```text
//!  host                                   agent
//!   | -- hello {protocol: 2, client} -----> |   first frame, always
//!   | <-- hello {protocol: 2, agent_version} |   or error {code: version_mismatch}, then close
//!   |                                        |
//!   | -- health | ping {nonce} | sync -----> |   any number of requests, one at a time
//!   | <-- health | pong {nonce} | synced --- |   (or error {code, message}; the connection lives on)
//!   |                                        |
//!   | -- exec {argv, env, cwd, stdin, tty} > |
//!   | <-- exec_started {pid} --------------- |   or error {code: spawn_failed | bad_request}
//!   | -- stdin bytes … stdin_close --------> |   only when exec asked for stdin: "pipe" or a tty
//!   | -- signal {signal} ------------------> |   optional, any time while it runs
//!   | -- resize {rows, cols} --------------> |   optional, only with a tty
//!   | <-- stdout / stderr bytes … ---------- |   as the command writes them (a tty: stdout only)
//!   | <-- exited {status} ------------------ |   after the command exited and its output was
//!   |                                        |   forwarded (see below)
//!   | -- (stdin bytes …) stdin_close ------> |   with a stdin pipe or a tty, if not sent yet:
//!   |                                        |   the agent drops them without an answer
//! ```
//!
//! `exited` does not wait for `stdin_close`: a command that ignores its stdin ends when it
//! ends, however long the host's input would have lasted. A host with a stdin pipe (or a tty)
//! sends `stdin_close` once, before or after `exited`, and nothing else of the command's after
//! it. A `signal` or `resize` that crosses `exited` on the wire is dropped too.
//!
//! Without a tty the command's stdin is `/dev/null` or a pipe, its stdout and stderr two pipes,
//! and it is over when it exited and both pipes reached end of file (a background process that
//! keeps them open keeps the exec going, as with ssh). A `signal` goes to its process group.
//!
//! With `tty: {rows, cols, term}` the agent opens a pseudo-terminal of that size and starts the
//! command as the leader of a new session whose controlling terminal it is, with stdin, stdout
//! and stderr on it; `TERM` is `term`. Everything the command writes comes back as stdout
//! frames (the terminal merges the two streams, and turns `\n` into `\r\n` as terminals do);
//! stdin frames are what the user typed, raw, so the terminal's line discipline in the guest
//! echoes, edits lines and turns ^C into SIGINT. `resize` sets the terminal's size, which
//! sends SIGWINCH to its foreground process group; `signal` goes to that foreground process
//! group (where a ^C typed on it would go), or the command's own when there is none;
//! `stdin_close` types the terminal's end-of-file character (^D). The command is over when it
//! exited: what it wrote is forwarded, then `exited` goes out without waiting for background
//! processes that still hold the terminal (as ssh -t does); they get the terminal's hangup.
//!
//! Closing the connection while a command runs kills the command's whole process group, and
//! with a tty every process of its session.
//!
//! # Versions
//!
//! Each protocol version only adds to the one before: version 2 added `tty` to exec and the
//! `resize` message ([`TTY_PROTOCOL_VERSION`]). An agent serves clients from
//! [`MIN_PROTOCOL_VERSION`] to [`PROTOCOL_VERSION`] and answers the hello with the client's
//! version; a client refuses an agent that answers with another version than the one it asked
//! for, and an older agent refuses a newer client. So the host asks for the oldest version
//! that has what a request needs (bangerd: version 1, except for an exec with a tty), which
//! keeps guests whose agent is older than the host working, and a request the guest cannot
//! honour (a tty, which an agent of version 1 would silently ignore) is refused with a
//! `version_mismatch` naming both versions, never sent.
//!
//! Errors the agent sends carry a stable [`ErrorCode`]. Malformed JSON, an unknown frame kind or
//! an unknown request type are answered with an error and the connection stays usable, because
//! the framing is intact. An oversized length or a missing hello ends the connection after the
//! error, because nothing after it can be trusted to be a frame boundary.

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version of this protocol (see "Versions" above): what this client asks for, and the newest
/// the agent serves.
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest client version the agent still serves (every later version only adds to it).
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The first version with `tty` on exec and the `resize` message.
pub const TTY_PROTOCOL_VERSION: u32 = 2;

/// The vsock port the agent listens on inside a guest.
pub const AGENT_VSOCK_PORT: u32 = 10789;

/// Largest value of a frame's length field (kind byte plus payload).
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Largest stdout, stderr or stdin payload either side sends. Well below [`MAX_FRAME_LEN`] so a
/// chunk never has to be split, and small enough that output shows up promptly.
pub const MAX_CHUNK_LEN: usize = 64 * 1024;

/// The kind byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Message = 0x01,
    Stdout = 0x02,
    Stderr = 0x03,
    Stdin = 0x04,
}

impl FrameKind {
    pub fn from_byte(byte: u8) -> Option<FrameKind> {
        match byte {
            0x01 => Some(FrameKind::Message),
            0x02 => Some(FrameKind::Stdout),
            0x03 => Some(FrameKind::Stderr),
            0x04 => Some(FrameKind::Stdin),
            _ => None,
        }
    }
}

/// One frame as read off the wire. The kind stays a raw byte so that a reader can report an
/// unknown kind and carry on with the next frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    pub kind: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn kind(&self) -> Option<FrameKind> {
        FrameKind::from_byte(self.kind)
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection in the middle of a frame")]
    Truncated,
    #[error("frame of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    #[error("empty frame (a frame needs at least its kind byte)")]
    Empty,
}

/// Reads one frame. `Ok(None)` means the peer closed the connection cleanly between frames.
///
/// Not cancel-safe: dropping the future part-way loses the bytes already read. Callers that
/// need to `select!` on incoming frames read them in a task of their own.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<RawFrame>, FrameError> {
    let mut header = [0u8; 4];
    // The first byte tells a clean close (EOF before any byte) from a truncated header.
    let first = reader.read(&mut header[..1]).await?;
    if first == 0 {
        return Ok(None);
    }
    read_exact_or_truncated(reader, &mut header[1..]).await?;
    let len = u32::from_be_bytes(header);
    if len as u64 > MAX_FRAME_LEN as u64 {
        return Err(FrameError::TooLarge {
            len: len.into(),
            max: MAX_FRAME_LEN,
        });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let mut kind = [0u8; 1];
    read_exact_or_truncated(reader, &mut kind).await?;
    // Safe to allocate: `len` was bounded above.
    let mut payload = vec![0u8; len as usize - 1];
    read_exact_or_truncated(reader, &mut payload).await?;
    Ok(Some(RawFrame {
        kind: kind[0],
        payload,
    }))
}

async fn read_exact_or_truncated<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), FrameError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e)),
    }
}

/// Writes one frame and flushes it. The header and payload go out in one buffer so a frame
/// is never interleaved with another writer's bytes at the syscall level.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    kind: FrameKind,
    payload: &[u8],
) -> Result<(), FrameError> {
    let len = payload.len() + 1;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME_LEN,
        });
    }
    let mut buf = Vec::with_capacity(4 + len);
    // `len <= MAX_FRAME_LEN` fits in a u32.
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    buf.push(kind as u8);
    buf.extend_from_slice(payload);
    writer.write_all(&buf).await?;
    writer.flush().await?;
    Ok(())
}

/// Serialises `message` as JSON and writes it as a message frame.
pub async fn write_message<W: AsyncWrite + Unpin, M: Serialize>(
    writer: &mut W,
    message: &M,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(message)
        .map_err(|e| FrameError::Io(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    write_frame(writer, FrameKind::Message, &body).await
}

/// What the host sends. `stdin_close`, `signal` and `resize` are only valid while a command
/// runs (`resize` only with a tty); everything else only while none does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Hello {
        protocol: u32,
        /// Who is calling, for the agent's log (e.g. "bangerd 0.1.0").
        client: String,
    },
    Health,
    Ping {
        nonce: u64,
    },
    Exec(ExecRequest),
    Sync,
    /// No more stdin: the agent closes the command's stdin once what was sent is written.
    StdinClose,
    /// Sends a signal to the running command's process group (with a tty: to the terminal's
    /// foreground process group).
    Signal {
        signal: i32,
    },
    /// The host's terminal changed size: the agent sets the command's terminal to it, which
    /// sends SIGWINCH to the terminal's foreground process group. Protocol 2.
    Resize {
        rows: u16,
        cols: u16,
    },
}

impl ClientMessage {
    /// Every `type` tag the agent understands, to tell an unknown request from a malformed one.
    pub const TYPES: &'static [&'static str] = &[
        "hello",
        "health",
        "ping",
        "exec",
        "sync",
        "stdin_close",
        "signal",
        "resize",
    ];
}

/// What the agent sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    Hello {
        protocol: u32,
        agent_version: String,
    },
    Health(Health),
    Pong {
        nonce: u64,
    },
    ExecStarted {
        pid: u32,
    },
    Exited {
        status: ExitStatus,
    },
    Synced,
    Error(AgentErrorBody),
}

/// Where a command's stdin comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdinMode {
    /// `/dev/null`: the command sees end of file at once.
    #[default]
    Null,
    /// A pipe fed by stdin frames; the host must end it with `stdin_close`.
    Pipe,
}

/// A command to run in the guest.
///
/// The environment is *not* the agent's: the command starts from a small clean base
/// (`PATH`, `HOME`, `USER`, `LOGNAME` of the user the agent runs as) and `env` is added on top,
/// overriding the base where names collide. That way a command behaves the same in a real guest
/// (where the agent's environment is whatever init gave it) and under the fake firecracker
/// (where the agent would otherwise leak the host's environment), and nothing of the agent's own
/// configuration (`BANGER_AGENT_CID`, log settings) reaches the command.
///
/// `cwd` must be an absolute path to a directory; without it the command runs in `HOME`
/// (or `/` when `HOME` is not a directory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub stdin: StdinMode,
    /// Run the command on a pseudo-terminal (protocol 2). With one, `stdin` is ignored: the
    /// terminal is the command's stdin, fed by stdin frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtyRequest>,
}

/// The pseudo-terminal an exec asks for: its size and the terminal type the host's terminal
/// is (`TERM`), so that full-screen programs in the guest draw for the right terminal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtyRequest {
    pub rows: u16,
    pub cols: u16,
    /// `TERM` for the command (the request's `env` may still override it); none: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

/// Longest `TERM` value an exec may ask for (real ones are a few dozen bytes).
pub const MAX_TERM_LEN: usize = 128;

impl ExecRequest {
    /// A request for `argv` with no extra environment, the default directory and no stdin.
    pub fn new<I, A>(argv: I) -> ExecRequest
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            ..ExecRequest::default()
        }
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> ExecRequest {
        self.env.insert(name.into(), value.into());
        self
    }

    pub fn cwd(mut self, cwd: impl Into<String>) -> ExecRequest {
        self.cwd = Some(cwd.into());
        self
    }

    pub fn stdin(mut self, mode: StdinMode) -> ExecRequest {
        self.stdin = mode;
        self
    }

    /// Runs the command on a pseudo-terminal of `rows` x `cols` with `TERM=term`.
    pub fn tty(mut self, rows: u16, cols: u16, term: Option<&str>) -> ExecRequest {
        self.tty = Some(TtyRequest {
            rows,
            cols,
            term: term.map(str::to_owned),
        });
        self
    }

    /// Whether the host may send stdin frames for this command (a stdin pipe, or a tty).
    pub fn takes_stdin(&self) -> bool {
        self.tty.is_some() || self.stdin == StdinMode::Pipe
    }

    /// Checks what the agent checks before spawning, so a caller can fail early with the same
    /// message.
    pub fn validate(&self) -> Result<(), String> {
        let Some(program) = self.argv.first() else {
            return Err("exec needs a program: argv is empty".into());
        };
        if program.is_empty() {
            return Err("exec needs a program: argv[0] is empty".into());
        }
        if let Some(arg) = self.argv.iter().find(|a| a.contains('\0')) {
            return Err(format!("argument {arg:?} contains a NUL byte"));
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(format!("invalid environment variable name {name:?}"));
            }
            if value.contains('\0') {
                return Err(format!("environment variable {name} contains a NUL byte"));
            }
        }
        if let Some(cwd) = &self.cwd
            && (!cwd.starts_with('/') || cwd.contains('\0'))
        {
            return Err(format!(
                "working directory {cwd:?} must be an absolute path"
            ));
        }
        if let Some(TtyRequest {
            term: Some(term), ..
        }) = &self.tty
            && (term.is_empty()
                || term.len() > MAX_TERM_LEN
                || !term.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(format!(
                "terminal type {term:?} must be 1 to {MAX_TERM_LEN} printable ASCII characters"
            ));
        }
        Ok(())
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The status a shell would report: the code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => match nix::sys::signal::Signal::try_from(signal) {
                Ok(name) => write!(f, "killed by signal {signal} ({name})"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
        }
    }
}

/// The agent's answer to `health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// The agent binary's version (its crate version).
    pub agent_version: String,
    pub protocol: u32,
    pub hostname: String,
    /// The vsock CID the agent was told it has (`BANGER_AGENT_CID`), if any.
    pub cid: Option<u32>,
    /// Time since the agent started.
    pub agent_uptime_ms: u64,
    /// Time since the (guest) kernel booted, from `/proc/uptime`.
    pub system_uptime_ms: u64,
    /// 1, 5 and 15 minute load averages from `/proc/loadavg`.
    pub load: [f64; 3],
    /// `MemTotal` and `MemAvailable` from `/proc/meminfo`.
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
}

/// An error the agent reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// Stable error codes: callers match on these, so they never change meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The hello carried another protocol version. The connection is closed.
    VersionMismatch,
    /// A length over [`MAX_FRAME_LEN`]. The connection is closed.
    FrameTooLarge,
    /// An empty frame, an unknown frame kind or a message that is not JSON.
    BadFrame,
    /// A well-formed request of a known type with invalid content.
    BadRequest,
    /// A message `type` the agent does not know.
    UnknownRequest,
    /// A message that is not valid now (no hello first, stdin without a running command…).
    Unexpected,
    /// The command could not be started (missing program, bad working directory…).
    SpawnFailed,
    /// Something failed inside the agent.
    Internal,
    /// A code this side does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownRequest => "unknown_request",
            ErrorCode::Unexpected => "unexpected",
            ErrorCode::SpawnFailed => "spawn_failed",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trip_and_limits() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Stdout, &[0, 255, 10])
            .await
            .unwrap();
        assert_eq!(buf, [0, 0, 0, 4, 2, 0, 255, 10]);
        let mut reader = &buf[..];
        let frame = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(
            frame,
            RawFrame {
                kind: 2,
                payload: vec![0, 255, 10]
            }
        );
        assert!(read_frame(&mut reader).await.unwrap().is_none());

        let mut huge = &u32::MAX.to_be_bytes()[..];
        assert!(matches!(
            read_frame(&mut huge).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut empty = &[0u8, 0, 0, 0][..];
        assert!(matches!(
            read_frame(&mut empty).await,
            Err(FrameError::Empty)
        ));
        let mut cut = &[0u8, 0, 0, 9, 1, b'{'][..];
        assert!(matches!(
            read_frame(&mut cut).await,
            Err(FrameError::Truncated)
        ));
        let mut cut_header = &[0u8, 0][..];
        assert!(matches!(
            read_frame(&mut cut_header).await,
            Err(FrameError::Truncated)
        ));
    }

    #[test]
    fn messages_have_the_documented_shape() {
        let exec = ClientMessage::Exec(ExecRequest::new(["true"]));
        let json = serde_json::to_value(&exec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "exec", "argv": ["true"], "env": {}, "cwd": null, "stdin": "null"})
        );
        let exited = AgentMessage::Exited {
            status: ExitStatus::Signal(9),
        };
        assert_eq!(
            serde_json::to_string(&exited).unwrap(),
            r#"{"type":"exited","status":{"signal":9}}"#
        );
        let unknown: AgentErrorBody =
            serde_json::from_str(r#"{"code":"from_the_future","message":"x"}"#).unwrap();
        assert_eq!(unknown.code, ErrorCode::Unknown);
    }

    #[test]
    fn a_tty_is_protocol_2_and_its_term_is_checked() {
        let exec = ClientMessage::Exec(ExecRequest::new(["sh"]).tty(24, 80, Some("xterm")));
        assert_eq!(
            serde_json::to_value(&exec).unwrap(),
            serde_json::json!({"type": "exec", "argv": ["sh"], "env": {}, "cwd": null,
                               "stdin": "null", "tty": {"rows": 24, "cols": 80, "term": "xterm"}})
        );
        let resize = ClientMessage::Resize {
            rows: 50,
            cols: 132,
        };
        assert_eq!(
            serde_json::to_string(&resize).unwrap(),
            r#"{"type":"resize","rows":50,"cols":132}"#
        );
        assert!(ClientMessage::TYPES.contains(&"resize"));
        assert!(ExecRequest::new(["sh"]).tty(1, 1, None).takes_stdin());
        assert!(!ExecRequest::new(["sh"]).takes_stdin());
        assert!(
            ExecRequest::new(["sh"])
                .tty(24, 80, Some("xterm-256color"))
                .validate()
                .is_ok()
        );
        for bad in ["", "x term", "a\nb", &"x".repeat(MAX_TERM_LEN + 1)] {
            let error = ExecRequest::new(["sh"])
                .tty(24, 80, Some(bad))
                .validate()
                .expect_err(bad);
            assert!(error.contains("terminal type"), "{error}");
        }
        // Version 2 is the first with a tty, and the agent still serves version 1.
        assert_eq!(
            (MIN_PROTOCOL_VERSION, TTY_PROTOCOL_VERSION, PROTOCOL_VERSION),
            (1, 2, 2)
        );
    }
}
