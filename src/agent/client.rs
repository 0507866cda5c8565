//! The host side of the agent protocol: [`AgentClient`] over any connected byte stream.
//!
//! The client does not know how it was connected. In production bangerd opens the VM's
//! Firecracker vsock socket, does the `CONNECT <port>` handshake and hands the stream over;
//! tests pass a unix socket to a local agent or an in-memory duplex.
//!
//! Requests on one client are sequential (`&mut self`). A command started with
//! [`AgentClient::exec`] owns the connection until its [`ExecEvent::Exited`] arrives; dropping
//! the [`Exec`] earlier leaves the connection in the middle of a stream, so the client refuses
//! further requests ([`AgentError::Unusable`]) and the caller drops it, which closes the
//! connection and makes the agent kill the command.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadHalf, WriteHalf};

#[cfg(doc)]
use super::protocol::MIN_PROTOCOL_VERSION;
use super::protocol::{
    AgentErrorBody, AgentMessage, ClientMessage, ErrorCode, ExecRequest, ExitStatus, FrameError,
    FrameKind, Health, MAX_CHUNK_LEN, PROTOCOL_VERSION, RawFrame, StdinMode, TTY_PROTOCOL_VERSION,
    read_frame, write_frame, write_message,
};

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent connection failed: {0}")]
    Frame(#[from] FrameError),
    #[error("the agent closed the connection")]
    Closed,
    #[error(
        "protocol mismatch with the guest agent: {detail}; use the agent built with this banger"
    )]
    VersionMismatch {
        client: u32,
        /// The agent's version, when it said it (an agent that refuses names it in `detail`).
        agent: Option<u32>,
        detail: String,
    },
    #[error("the agent refused: {} [{}]", .0.message, .0.code)]
    Remote(AgentErrorBody),
    #[error("the agent sent something this client cannot read: {0}")]
    Protocol(String),
    #[error("this agent connection was left in the middle of a command; open a new one")]
    Unusable,
}

impl AgentError {
    /// The agent's error code, when the agent itself refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            AgentError::Remote(body) => Some(body.code),
            _ => None,
        }
    }
}

/// What the agent said about itself in the hello exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    pub protocol: u32,
    pub agent_version: String,
}

/// Which output stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One thing a running command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command ended; nothing follows.
    Exited(ExitStatus),
}

/// Everything a finished command wrote, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A connection to one agent, after a successful hello.
pub struct AgentClient<S> {
    reader: BufReader<ReadHalf<S>>,
    writer: WriteHalf<S>,
    agent: AgentInfo,
    next_nonce: u64,
    /// False once the connection is no longer at a request boundary (an [`Exec`] was dropped
    /// early, or a stream broke): any request would read the previous command's frames.
    usable: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> AgentClient<S> {
    /// Says hello over `stream` with this build's protocol version.
    pub async fn handshake(stream: S, client_name: &str) -> Result<AgentClient<S>, AgentError> {
        Self::handshake_as(stream, client_name, PROTOCOL_VERSION).await
    }

    /// Says hello in `protocol`: a host asks for the oldest version that has what it needs
    /// ([`MIN_PROTOCOL_VERSION`] for health, ping, sync and exec on pipes;
    /// [`TTY_PROTOCOL_VERSION`] for an exec with a tty), so that it keeps working with guests
    /// whose agent is older than itself. The connection then only offers that version's
    /// requests. Tests also use it to claim versions no agent speaks.
    pub async fn handshake_as(
        stream: S,
        client_name: &str,
        protocol: u32,
    ) -> Result<AgentClient<S>, AgentError> {
        let (reader, writer) = tokio::io::split(stream);
        let mut client = AgentClient {
            reader: BufReader::new(reader),
            writer,
            agent: AgentInfo {
                protocol: 0,
                agent_version: String::new(),
            },
            next_nonce: 1,
            usable: true,
        };
        let hello = ClientMessage::Hello {
            protocol,
            client: client_name.to_owned(),
        };
        match client.call(&hello).await {
            Ok(AgentMessage::Hello {
                protocol: agent,
                agent_version,
            }) if agent == protocol => {
                client.agent = AgentInfo {
                    protocol: agent,
                    agent_version,
                };
                Ok(client)
            }
            Ok(AgentMessage::Hello {
                protocol: agent, ..
            }) => Err(AgentError::VersionMismatch {
                client: protocol,
                agent: Some(agent),
                detail: format!(
                    "the agent answered with protocol {agent}, this client speaks {protocol}"
                ),
            }),
            Ok(other) => Err(unexpected("hello", &other)),
            Err(AgentError::Remote(body)) if body.code == ErrorCode::VersionMismatch => {
                // The agent's message names both versions; keep it whole for the user.
                Err(AgentError::VersionMismatch {
                    client: protocol,
                    agent: None,
                    detail: body.message,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The agent's protocol and version, from the hello.
    pub fn agent(&self) -> &AgentInfo {
        &self.agent
    }

    pub async fn health(&mut self) -> Result<Health, AgentError> {
        match self.call(&ClientMessage::Health).await? {
            AgentMessage::Health(health) => Ok(health),
            other => Err(unexpected("health", &other)),
        }
    }

    /// Measures one round trip through the agent.
    pub async fn ping(&mut self) -> Result<Duration, AgentError> {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        let started = Instant::now();
        match self.call(&ClientMessage::Ping { nonce }).await? {
            AgentMessage::Pong { nonce: echoed } if echoed == nonce => Ok(started.elapsed()),
            AgentMessage::Pong { nonce: echoed } => {
                self.usable = false;
                Err(AgentError::Protocol(format!(
                    "ping {nonce} answered with pong {echoed}"
                )))
            }
            other => Err(unexpected("ping", &other)),
        }
    }

    /// Flushes the guest's file systems (`sync(2)`); returns once the agent's sync returned.
    pub async fn sync(&mut self) -> Result<(), AgentError> {
        match self.call(&ClientMessage::Sync).await? {
            AgentMessage::Synced => Ok(()),
            other => Err(unexpected("sync", &other)),
        }
    }

    /// Starts a command and returns once it runs. Read its output with [`Exec::next`].
    ///
    /// A program that cannot be started is an [`AgentError::Remote`] with
    /// [`ErrorCode::SpawnFailed`]; the connection stays usable.
    ///
    /// With [`ExecRequest::tty`] the command runs on a pseudo-terminal: its output arrives as
    /// stdout only, [`Exec::write_stdin`] is what the user types, and [`Exec::resize`] follows
    /// the host terminal's size.
    pub async fn exec(&mut self, request: &ExecRequest) -> Result<Exec<'_, S>, AgentError> {
        if request.tty.is_some() && self.agent.protocol < TTY_PROTOCOL_VERSION {
            // An agent of protocol 1 would ignore the tty and run the command on pipes.
            return Err(AgentError::VersionMismatch {
                client: self.agent.protocol,
                agent: Some(self.agent.protocol),
                detail: format!(
                    "a command on a tty needs protocol {TTY_PROTOCOL_VERSION}, and this connection speaks protocol {} (agent {})",
                    self.agent.protocol, self.agent.agent_version
                ),
            });
        }
        let stdin_open = request.takes_stdin();
        match self.call(&ClientMessage::Exec(request.clone())).await? {
            AgentMessage::ExecStarted { pid } => {
                // Until `Exited` arrives the connection belongs to this command.
                self.usable = false;
                Ok(Exec {
                    client: self,
                    pid,
                    stdin_open,
                    status: None,
                })
            }
            other => Err(unexpected("exec", &other)),
        }
    }

    /// Runs a command to completion, feeding it `stdin` (which overrides `request.stdin`) and
    /// handing each output chunk to `on_output` as it arrives.
    pub async fn exec_with<F>(
        &mut self,
        request: &ExecRequest,
        stdin: Option<&[u8]>,
        mut on_output: F,
    ) -> Result<ExitStatus, AgentError>
    where
        F: FnMut(OutputStream, &[u8]),
    {
        let mut request = request.clone();
        request.stdin = if stdin.is_some() {
            StdinMode::Pipe
        } else {
            StdinMode::Null
        };
        let mut exec = self.exec(&request).await?;
        let Some(input) = stdin else {
            return exec.run_to_end(&mut on_output).await;
        };
        // Feed stdin while reading output: a command that writes before it has read all its
        // input would otherwise block on a full pipe while we block on a full socket.
        let (status, fed) = {
            let client = &mut *exec.client;
            let feed = async {
                send_stdin(&mut client.writer, input).await?;
                write_message(&mut client.writer, &ClientMessage::StdinClose).await?;
                Ok::<(), AgentError>(())
            };
            let drain = read_until_exit(&mut client.reader, &mut on_output);
            tokio::pin!(feed, drain);
            let mut fed = None;
            let status = loop {
                tokio::select! {
                    status = &mut drain => break status,
                    result = &mut feed, if fed.is_none() => fed = Some(result),
                }
            };
            // A command that did not read all its input is reported before the input ran
            // out; the agent drops the rest, so finishing the feed (and its stdin_close, which
            // the protocol wants either way) cannot block.
            let fed = match fed {
                Some(result) => result,
                None => feed.await,
            };
            (status, fed)
        };
        // The output side's error comes first: when the agent gives up on a command it says
        // why there, while the stdin side only sees a broken pipe.
        let status = status?;
        fed?;
        exec.stdin_open = false;
        exec.finish(status);
        Ok(status)
    }

    /// Runs a command to completion and returns everything it wrote.
    pub async fn exec_collect(
        &mut self,
        request: &ExecRequest,
        stdin: Option<&[u8]>,
    ) -> Result<ExecOutput, AgentError> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let status = self
            .exec_with(request, stdin, |stream, chunk| match stream {
                OutputStream::Stdout => stdout.extend_from_slice(chunk),
                OutputStream::Stderr => stderr.extend_from_slice(chunk),
            })
            .await?;
        Ok(ExecOutput {
            status,
            stdout,
            stderr,
        })
    }

    /// Sends one request and reads its one answer; an `error` answer becomes `Err`.
    async fn call(&mut self, message: &ClientMessage) -> Result<AgentMessage, AgentError> {
        if !self.usable {
            return Err(AgentError::Unusable);
        }
        write_message(&mut self.writer, message).await?;
        match read_message(&mut self.reader).await {
            Ok(AgentMessage::Error(body)) => Err(AgentError::Remote(body)),
            Ok(answer) => Ok(answer),
            Err(e) => {
                self.usable = false;
                Err(e)
            }
        }
    }
}

/// A command running in the guest, started by [`AgentClient::exec`].
pub struct Exec<'c, S> {
    client: &'c mut AgentClient<S>,
    pid: u32,
    stdin_open: bool,
    status: Option<ExitStatus>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Exec<'_, S> {
    /// The command's pid in the guest (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends bytes to the command's stdin (only with [`StdinMode::Pipe`]).
    ///
    /// The agent applies back-pressure: a command that does not read its stdin eventually
    /// blocks this call, so a caller that also needs output should feed stdin from the same
    /// task only in modest amounts, or use [`AgentClient::exec_with`].
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<(), AgentError> {
        if !self.stdin_open {
            return Err(AgentError::Protocol(
                "this command's stdin is not open".into(),
            ));
        }
        send_stdin(&mut self.client.writer, data).await
    }

    /// Ends the command's stdin. With [`StdinMode::Pipe`] the agent only reports the exit
    /// status after this, so that no stdin frame can arrive after the command is over.
    pub async fn close_stdin(&mut self) -> Result<(), AgentError> {
        if self.stdin_open {
            write_message(&mut self.client.writer, &ClientMessage::StdinClose).await?;
            self.stdin_open = false;
        }
        Ok(())
    }

    /// Sends `signal` to the command's process group (Ctrl-C forwarding, say); with a tty, to
    /// the terminal's foreground process group.
    pub async fn signal(&mut self, signal: Signal) -> Result<(), AgentError> {
        if self.status.is_some() {
            return Ok(());
        }
        send_signal(&mut self.client.writer, signal).await
    }

    /// Sets the size of the command's terminal (only with a tty); the guest's foreground
    /// process group gets SIGWINCH.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), AgentError> {
        if self.status.is_some() {
            return Ok(());
        }
        write_message(
            &mut self.client.writer,
            &ClientMessage::Resize { rows, cols },
        )
        .await?;
        Ok(())
    }

    /// The command's stdin and its output as two halves, so that one task can feed input
    /// and read output at once (`select!` over both): a command that writes before it has
    /// read all its input would otherwise block on a full pipe while the caller blocks on a
    /// full socket.
    pub fn split(&mut self) -> (ExecStdin<'_, S>, ExecOutputs<'_, S>) {
        let client = &mut *self.client;
        (
            ExecStdin {
                writer: &mut client.writer,
                open: &mut self.stdin_open,
            },
            ExecOutputs {
                reader: &mut client.reader,
                usable: &mut client.usable,
                status: &mut self.status,
            },
        )
    }

    /// The next chunk of output, or the exit status. After `Exited`, returns it again.
    pub async fn next(&mut self) -> Result<ExecEvent, AgentError> {
        if let Some(status) = self.status {
            return Ok(ExecEvent::Exited(status));
        }
        let event = next_event(&mut self.client.reader).await?;
        if let ExecEvent::Exited(status) = event {
            self.finish(status);
        }
        Ok(event)
    }

    /// Closes stdin and reads until the command exits, handing output to `on_output`.
    pub async fn run_to_end<F>(mut self, on_output: &mut F) -> Result<ExitStatus, AgentError>
    where
        F: FnMut(OutputStream, &[u8]),
    {
        self.close_stdin().await?;
        let status = read_until_exit(&mut self.client.reader, on_output).await?;
        self.finish(status);
        Ok(status)
    }

    fn finish(&mut self, status: ExitStatus) {
        self.status = Some(status);
        self.client.usable = true;
    }
}

/// The stdin half of a running command ([`Exec::split`]).
pub struct ExecStdin<'a, S> {
    writer: &'a mut WriteHalf<S>,
    open: &'a mut bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> ExecStdin<'_, S> {
    /// Sends bytes to the command's stdin (only with [`StdinMode::Pipe`]). Cancelling this in
    /// the middle leaves a partial frame: only do that when the command is abandoned.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), AgentError> {
        if !*self.open {
            return Err(AgentError::Protocol(
                "this command's stdin is not open".into(),
            ));
        }
        send_stdin(self.writer, data).await
    }

    /// Ends the command's stdin; harmless when it is already closed. On a tty this types the
    /// terminal's end-of-file character.
    pub async fn close(&mut self) -> Result<(), AgentError> {
        if *self.open {
            write_message(self.writer, &ClientMessage::StdinClose).await?;
            *self.open = false;
        }
        Ok(())
    }

    /// Sends `signal` to the command (see [`Exec::signal`]). One that crosses the command's
    /// exit is dropped by the agent.
    pub async fn signal(&mut self, signal: Signal) -> Result<(), AgentError> {
        send_signal(self.writer, signal).await
    }

    /// Sets the size of the command's terminal (see [`Exec::resize`]).
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), AgentError> {
        write_message(self.writer, &ClientMessage::Resize { rows, cols }).await?;
        Ok(())
    }
}

/// The output half of a running command ([`Exec::split`]).
pub struct ExecOutputs<'a, S> {
    reader: &'a mut BufReader<ReadHalf<S>>,
    usable: &'a mut bool,
    status: &'a mut Option<ExitStatus>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> ExecOutputs<'_, S> {
    /// As [`Exec::next`]: the next chunk of output, or the exit status (again, once exited).
    pub async fn next(&mut self) -> Result<ExecEvent, AgentError> {
        if let Some(status) = *self.status {
            return Ok(ExecEvent::Exited(status));
        }
        let event = next_event(self.reader).await?;
        if let ExecEvent::Exited(status) = event {
            *self.status = Some(status);
            // Whatever stdin was left unsent, the agent drops; see the protocol module.
            *self.usable = true;
        }
        Ok(event)
    }
}

async fn read_until_exit<R, F>(reader: &mut R, on_output: &mut F) -> Result<ExitStatus, AgentError>
where
    R: AsyncRead + Unpin,
    F: FnMut(OutputStream, &[u8]),
{
    loop {
        match next_event(reader).await? {
            ExecEvent::Stdout(chunk) => on_output(OutputStream::Stdout, &chunk),
            ExecEvent::Stderr(chunk) => on_output(OutputStream::Stderr, &chunk),
            ExecEvent::Exited(status) => return Ok(status),
        }
    }
}

async fn next_event<R: AsyncRead + Unpin>(reader: &mut R) -> Result<ExecEvent, AgentError> {
    let frame = read_frame(reader).await?.ok_or(AgentError::Closed)?;
    match frame.kind() {
        Some(FrameKind::Stdout) => Ok(ExecEvent::Stdout(frame.payload)),
        Some(FrameKind::Stderr) => Ok(ExecEvent::Stderr(frame.payload)),
        Some(FrameKind::Message) => match decode(&frame)? {
            AgentMessage::Exited { status } => Ok(ExecEvent::Exited(status)),
            AgentMessage::Error(body) => Err(AgentError::Remote(body)),
            other => Err(unexpected("a running command", &other)),
        },
        _ => Err(AgentError::Protocol(format!(
            "unexpected frame kind {:#04x} during a command",
            frame.kind
        ))),
    }
}

async fn send_signal<W: AsyncWrite + Unpin>(
    writer: &mut W,
    signal: Signal,
) -> Result<(), AgentError> {
    write_message(
        writer,
        &ClientMessage::Signal {
            signal: signal as i32,
        },
    )
    .await?;
    Ok(())
}

async fn send_stdin<W: AsyncWrite + Unpin>(writer: &mut W, data: &[u8]) -> Result<(), AgentError> {
    for chunk in data.chunks(MAX_CHUNK_LEN) {
        write_frame(writer, FrameKind::Stdin, chunk).await?;
    }
    Ok(())
}

async fn read_message<R: AsyncRead + Unpin>(reader: &mut R) -> Result<AgentMessage, AgentError> {
    let frame = read_frame(reader).await?.ok_or(AgentError::Closed)?;
    if frame.kind() != Some(FrameKind::Message) {
        return Err(AgentError::Protocol(format!(
            "expected a message frame, got kind {:#04x}",
            frame.kind
        )));
    }
    decode(&frame)
}

fn decode(frame: &RawFrame) -> Result<AgentMessage, AgentError> {
    serde_json::from_slice(&frame.payload)
        .map_err(|e| AgentError::Protocol(format!("undecodable message: {e}")))
}

fn unexpected(request: &str, answer: &AgentMessage) -> AgentError {
    AgentError::Protocol(format!("unexpected answer to {request}: {answer:?}"))
}
