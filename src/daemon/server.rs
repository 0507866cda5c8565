//! The socket server: accepts connections, reads request lines with a hard size cap, and
//! writes responses. What a request means is [`super::dispatch`]'s business.
//!
//! Invariants:
//! - A connection never buffers more than [`MAX_REQUEST_BYTES`] of one request: a longer line
//!   is answered `invalid_argument` and the connection closed (after discarding the rest of
//!   the line, within a bound, so that the client's write completes and it reads the answer).
//! - Requests on one connection are answered in order, one at a time; connections are
//!   independent tasks, so a slow or stuck client only ever holds up itself.
//! - A connection whose peer went away is dropped without disturbing anything else: an
//!   operation it started runs on in its own task.
//! - On shutdown the accept loop stops, idle connections close at once, a connection in the
//!   middle of a request finishes it, and streams end.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::task::TaskTracker;

use super::{DRAIN_TIMEOUT, Daemon, dispatch};
use crate::rpc::protocol::{MAX_REQUEST_BYTES, PROTOCOL_VERSION, Response, RpcError};

/// After an oversized request, at most this much more of it is read and thrown away before
/// the connection is closed, and for at most [`DISCARD_TIMEOUT`].
const DISCARD_LIMIT_BYTES: usize = 64 * 1024 * 1024;
const DISCARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until shutdown, then waits (bounded) for open ones to finish.
pub async fn serve(daemon: Arc<Daemon>, listener: UnixListener) {
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            biased;
            _ = daemon.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(daemon.clone(), stream));
                }
                Err(error) => {
                    // Typically EMFILE: back off a little instead of spinning on the error.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "some connections were still busy {} s after shutdown began; closing them",
            DRAIN_TIMEOUT.as_secs()
        );
    }
}

/// One client connection: requests in, responses out, until either side ends it.
async fn connection(daemon: Arc<Daemon>, stream: UnixStream) {
    if !peer_allowed(&stream) {
        return;
    }
    let (read, write) = stream.into_split();
    let mut conn = Conn {
        input: Input {
            reader: BufReader::with_capacity(64 * 1024, read),
            watching: true,
        },
        output: Output {
            writer: write,
            dead: false,
            close_after: false,
        },
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = tokio::select! {
            biased;
            _ = daemon.shutdown.cancelled() => return,
            read = conn.input.read_request(&mut line) => read,
        };
        match read {
            Err(_) | Ok(ReadRequest::Eof) => return,
            Ok(ReadRequest::TooLong { ended }) => {
                let error = RpcError::invalid(format!(
                    "request larger than 1 MiB (the limit is {MAX_REQUEST_BYTES} bytes); send smaller requests — files travel as paths, not contents"
                ));
                let _ = conn.output.send(&error_response(0, None, error)).await;
                if !ended {
                    conn.input.discard_line().await;
                }
                return;
            }
            Ok(ReadRequest::Line) => {}
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let response = dispatch::handle(&daemon, &mut conn, &line).await;
        if conn.output.dead {
            return;
        }
        if conn.output.send(&response).await.is_err() || conn.output.close_after {
            return;
        }
    }
}

/// Only the daemon's own user (and root) may talk to it. The socket's mode already says so;
/// this is the second lock on the same door, in case the mode is ever loosened by hand.
fn peer_allowed(stream: &UnixStream) -> bool {
    let me = nix::unistd::getuid().as_raw();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == me || cred.uid() == 0 => true,
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), "refused a connection from another user");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "cannot tell who connected; refusing");
            false
        }
    }
}

/// A response carrying an error.
pub(crate) fn error_response(id: u64, op_id: Option<String>, error: RpcError) -> Response {
    Response {
        v: PROTOCOL_VERSION,
        id,
        op_id,
        item: None,
        result: None,
        error: Some(error),
    }
}

/// A response carrying a result.
pub(crate) fn result_response(id: u64, op_id: Option<String>, result: Value) -> Response {
    Response {
        v: PROTOCOL_VERSION,
        id,
        op_id,
        item: None,
        result: Some(result),
        error: None,
    }
}

/// One connection, split so that a stream can watch for the peer hanging up while it writes.
pub struct Conn {
    pub(crate) input: Input,
    pub(crate) output: Output,
}

pub(crate) struct Input {
    reader: BufReader<OwnedReadHalf>,
    /// False once the peer sent more while a stream was running: that is a pipelined request,
    /// left unread for after the stream, so the reader is no longer a hang-up signal.
    watching: bool,
}

pub(crate) struct Output {
    writer: OwnedWriteHalf,
    /// The peer is gone: nothing more is written.
    pub(crate) dead: bool,
    /// Close the connection once the current response is written: what the client sent after
    /// its request cannot be trusted to be the next request (an exec's unread stdin).
    pub(crate) close_after: bool,
}

pub(crate) enum ReadRequest {
    Line,
    Eof,
    /// Over the limit; `ended` when its newline was already read.
    TooLong {
        ended: bool,
    },
}

impl Input {
    /// Reads one request line (without its newline) into `line`, never holding more than
    /// [`MAX_REQUEST_BYTES`]. Cancel-safe: bytes are consumed from the reader only as they are
    /// moved into `line`. Also reads the lines a request sends after itself (`vm.exec`'s
    /// stdin), under the same limit.
    pub(crate) async fn read_request(&mut self, line: &mut Vec<u8>) -> io::Result<ReadRequest> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                // A last request without a newline still counts; then end of stream.
                return Ok(if line.is_empty() {
                    ReadRequest::Eof
                } else {
                    ReadRequest::Line
                });
            }
            match available.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    if line.len() + end > MAX_REQUEST_BYTES {
                        self.reader.consume(end + 1);
                        return Ok(ReadRequest::TooLong { ended: true });
                    }
                    line.extend_from_slice(&available[..end]);
                    self.reader.consume(end + 1);
                    return Ok(ReadRequest::Line);
                }
                None => {
                    let taken = available.len();
                    if line.len() + taken > MAX_REQUEST_BYTES {
                        self.reader.consume(taken);
                        return Ok(ReadRequest::TooLong { ended: false });
                    }
                    line.extend_from_slice(available);
                    self.reader.consume(taken);
                }
            }
        }
    }

    /// Reads and drops the rest of an oversized line, within a byte and time bound.
    async fn discard_line(&mut self) {
        let discard = async {
            let mut dropped = 0usize;
            while dropped < DISCARD_LIMIT_BYTES {
                let Ok(available) = self.reader.fill_buf().await else {
                    return;
                };
                if available.is_empty() {
                    return;
                }
                if let Some(end) = available.iter().position(|b| *b == b'\n') {
                    self.reader.consume(end + 1);
                    return;
                }
                let taken = available.len();
                dropped += taken;
                self.reader.consume(taken);
            }
        };
        let _ = tokio::time::timeout(DISCARD_TIMEOUT, discard).await;
    }

    /// Resolves when the peer has hung up (end of stream or a read error). If it sends a
    /// request instead, that request is left for later and this never resolves.
    pub(crate) async fn hung_up(&mut self) {
        loop {
            if !self.watching {
                std::future::pending::<()>().await;
            }
            match self.reader.fill_buf().await {
                Ok([]) | Err(_) => return,
                Ok(_) => self.watching = false,
            }
        }
    }
}

impl Output {
    /// Writes one response line. A failure marks the connection dead.
    pub(crate) async fn send(&mut self, response: &Response) -> io::Result<()> {
        if self.dead {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut bytes = match serde_json::to_vec(response) {
            Ok(bytes) => bytes,
            Err(error) => {
                let fallback = error_response(
                    response.id,
                    response.op_id.clone(),
                    RpcError::internal(format!("cannot encode the response: {error}")),
                );
                serde_json::to_vec(&fallback).map_err(io::Error::other)?
            }
        };
        bytes.push(b'\n');
        let written = self.writer.write_all(&bytes).await;
        if written.is_err() {
            self.dead = true;
        }
        written
    }
}
