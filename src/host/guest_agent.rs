//! Connections to a VM's guest agent, over whichever transport its VMM gives the guest: one
//! protocol (`banger_agent::protocol`), two ways in.
//!
//! - Firecracker: the guest's vsock, through Firecracker's host-side unix socket and its
//!   `CONNECT <port>` / `OK <port>` handshake; a fresh socket connection per request.
//! - QEMU: a virtio-serial port behind the unix socket `vms/<id>/agent.sock`. QEMU lends that
//!   port to one host connection at a time, so bangerd keeps one connection per VM
//!   ([`AgentLinks`]) and multiplexes every request over it as a stream of its own
//!   (`banger_agent::mux`). A request finds the VM's session alive and opens a stream, or
//!   connects again (a new session: the guest resets whatever the old one left) when the
//!   session ended — the VM stopped, bangerd restarted, the agent restarted.
//!
//! Either way the caller gets an [`AgentStream`] with the meaning of one agent connection:
//! dropping it ends the request, and the agent kills a command whose connection went away.
//!
//! Invariants: every connect is bounded by the caller's deadline; one VM's session lock is a
//! leaf (held across its own connect, never with a view guard or another lock); sessions
//! that ended are dropped from the table on the next connect, so it holds no more than one
//! entry per VM in use.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use banger_agent::mux::{MuxClient, MuxError, MuxStream};
use banger_agent::protocol::AGENT_VSOCK_PORT;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

use super::firecracker::{VsockError, vsock_connect_timeout};
use super::vmm::AgentTransport;

/// One connection to a guest agent.
pub enum AgentStream {
    Vsock(UnixStream),
    Serial(MuxStream),
}

impl AsyncRead for AgentStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentStream::Vsock(stream) => Pin::new(stream).poll_read(cx, buf),
            AgentStream::Serial(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AgentStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AgentStream::Vsock(stream) => Pin::new(stream).poll_write(cx, buf),
            AgentStream::Serial(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentStream::Vsock(stream) => Pin::new(stream).poll_flush(cx),
            AgentStream::Serial(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AgentStream::Vsock(stream) => Pin::new(stream).poll_shutdown(cx),
            AgentStream::Serial(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// Why no connection to the agent could be made.
#[derive(Debug, thiserror::Error)]
pub enum AgentConnectError {
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("cannot connect to the agent socket {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Link(#[from] MuxError),
    #[error("the guest agent did not answer on {} within {timeout_ms} ms", path.display())]
    Timeout { path: PathBuf, timeout_ms: u64 },
}

/// Where one VM's agent is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentEndpoint {
    pub transport: AgentTransport,
    /// Firecracker's vsock socket.
    pub vsock_socket: PathBuf,
    /// QEMU's virtio-serial chardev socket.
    pub serial_socket: PathBuf,
}

impl AgentEndpoint {
    /// The socket this endpoint's transport uses.
    pub fn socket(&self) -> &Path {
        match self.transport {
            AgentTransport::Vsock => &self.vsock_socket,
            AgentTransport::VirtioSerial => &self.serial_socket,
        }
    }
}

/// bangerd's sessions with the agents of QEMU VMs, one per VM, and the way to connect to any
/// VM's agent.
#[derive(Default)]
pub struct AgentLinks {
    links: Mutex<HashMap<PathBuf, Arc<SerialLink>>>,
}

impl AgentLinks {
    pub fn new() -> AgentLinks {
        AgentLinks::default()
    }

    /// A new connection to the agent at `endpoint`, within `timeout`.
    pub async fn connect(
        &self,
        endpoint: &AgentEndpoint,
        timeout: Duration,
    ) -> Result<AgentStream, AgentConnectError> {
        match endpoint.transport {
            AgentTransport::Vsock => {
                vsock_connect_timeout(&endpoint.vsock_socket, AGENT_VSOCK_PORT, timeout)
                    .await
                    .map(AgentStream::Vsock)
                    .map_err(AgentConnectError::from)
            }
            AgentTransport::VirtioSerial => {
                let link = self.link(&endpoint.serial_socket);
                match tokio::time::timeout(timeout, link.open()).await {
                    Ok(result) => result.map(AgentStream::Serial),
                    Err(_) => Err(AgentConnectError::Timeout {
                        path: endpoint.serial_socket.clone(),
                        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    }),
                }
            }
        }
    }

    /// Ends the session with the agent behind `socket`, if there is one (its VM stopped or
    /// went away). Streams of it fail; the next connect starts a new session.
    pub fn forget(&self, socket: &Path) {
        self.lock().remove(socket);
    }

    /// How many sessions are held (tests check that it stays bounded).
    pub fn sessions(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<SerialLink>>> {
        // Each mutation is one insert, remove or retain: a poisoned table is still whole.
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn link(&self, socket: &Path) -> Arc<SerialLink> {
        let mut links = self.lock();
        // Sessions that ended are kept by nobody: drop them (the one asked for is made
        // again below when it was one of them).
        links.retain(|_, link| link.alive_or_busy());
        links
            .entry(socket.to_path_buf())
            .or_insert_with(|| {
                Arc::new(SerialLink {
                    socket: socket.to_path_buf(),
                    session: tokio::sync::Mutex::new(None),
                })
            })
            .clone()
    }
}

/// One VM's session, made on first use and made again when it ended.
struct SerialLink {
    socket: PathBuf,
    /// Held while a request opens its stream, so that concurrent requests after a drop wait
    /// for one reconnect instead of each making one (the chardev takes one client anyway).
    session: tokio::sync::Mutex<Option<MuxClient>>,
}

impl SerialLink {
    /// Whether the link is worth keeping: a session is alive, or someone is connecting.
    fn alive_or_busy(&self) -> bool {
        match self.session.try_lock() {
            Ok(session) => session.as_ref().is_some_and(|s| s.closed().is_none()),
            Err(_) => true,
        }
    }

    async fn open(&self) -> Result<MuxStream, AgentConnectError> {
        let mut session = self.session.lock().await;
        if let Some(client) = session.as_ref() {
            match client.open() {
                Ok(stream) => return Ok(stream),
                Err(MuxError::TooManyStreams) => return Err(MuxError::TooManyStreams.into()),
                Err(error) => {
                    tracing::debug!(socket = %self.socket.display(), %error, "agent session ended; connecting again");
                }
            }
        }
        *session = None;
        let transport = UnixStream::connect(&self.socket).await.map_err(|source| {
            AgentConnectError::Socket {
                path: self.socket.clone(),
                source,
            }
        })?;
        let client = MuxClient::connect(transport).await?;
        tracing::debug!(socket = %self.socket.display(), session = client.session(), "agent session open");
        let stream = client.open()?;
        *session = Some(client);
        Ok(stream)
    }
}
