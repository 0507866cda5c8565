//! The client bangerd uses to ask banger-helper for privileged network operations.
//!
//! This module owns the caller's side of the protocol: one short-lived connection per request,
//! the same name rules the server applies (so a bad name fails before any connection), and the
//! mapping of the helper's answers onto [`HelperError`]. It holds no state besides the socket
//! path, so a restarted helper is picked up by the next call.

use std::io;
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;

use crate::protocol::{
    self, ErrorKind, NetworkSpec, PROTOCOL_VERSION, Request, RequestFrame, Response,
};
use crate::validate;

/// Why a helper request did not succeed. Every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error(
        "banger-helper is not reachable at {}: start it as root (`sudo banger-helper --socket {} --allow-uid $(id -u)`)",
        socket.display(),
        socket.display()
    )]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Refused before anything was done: the caller is not allowed, or an argument broke a rule.
    #[error("banger-helper refused the request: {message}")]
    Refused { message: String },
    /// The privileged operation was attempted and failed.
    #[error("banger-helper could not do it: {message}")]
    Failed { message: String },
    /// The two sides did not understand each other.
    #[error("banger-helper protocol error: {message}")]
    Protocol { message: String },
}

/// A handle on the helper's socket. Cheap to clone; connects per request.
#[derive(Clone, Debug)]
pub struct HelperClient {
    socket: PathBuf,
}

impl HelperClient {
    pub fn new(socket: impl Into<PathBuf>) -> HelperClient {
        HelperClient {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Protocol version the helper speaks (a ping).
    pub async fn version(&self) -> Result<u32, HelperError> {
        match self.call(Request::Version).await? {
            Response::Version { version } => Ok(version),
            other => Err(unexpected(&other)),
        }
    }

    /// Bridge `spec.bridge` exists (created if absent), is up and has exactly the address
    /// gateway/prefix_len; IPv4 forwarding is on; nftables table `ip banger` holds exactly the
    /// NAT (masquerade of the subnet leaving through any other interface) and forward rules.
    /// Idempotent; replaces only banger's own table, atomically.
    pub async fn ensure_network(&self, spec: &NetworkSpec) -> Result<(), HelperError> {
        self.call_done(Request::EnsureNetwork { spec: spec.clone() })
            .await
    }

    /// A persistent tap named `tap`, owned by the caller's uid (as the helper sees it through
    /// SO_PEERCRED), attached to `bridge`, link up. Idempotent; an existing interface of that
    /// name that is not a tap is refused.
    pub async fn ensure_tap(&self, tap: &str, bridge: &str) -> Result<(), HelperError> {
        self.call_done(Request::EnsureTap {
            tap: tap.to_string(),
            bridge: bridge.to_string(),
        })
        .await
    }

    /// Deletes the tap; absent is success. Refuses an interface that is not a tap.
    pub async fn delete_tap(&self, tap: &str) -> Result<(), HelperError> {
        self.call_done(Request::DeleteTap {
            tap: tap.to_string(),
        })
        .await
    }

    /// Names of banger taps (tap devices whose names match the tap pattern), sorted.
    pub async fn list_taps(&self) -> Result<Vec<String>, HelperError> {
        match self.call(Request::ListTaps).await? {
            Response::Taps { taps } => Ok(taps),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes the bridge and banger's nft table (absent is fine). For uninstall and tests.
    pub async fn remove_network(&self, bridge: &str) -> Result<(), HelperError> {
        self.call_done(Request::RemoveNetwork {
            bridge: bridge.to_string(),
        })
        .await
    }

    async fn call_done(&self, request: Request) -> Result<(), HelperError> {
        match self.call(request).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn call(&self, request: Request) -> Result<Response, HelperError> {
        // The server checks again; checking here too gives the same message without a round trip.
        validate::request(&request)
            .map_err(|invalid| HelperError::Refused { message: invalid.0 })?;
        let mut stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| HelperError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                })?;
        let frame = RequestFrame {
            v: PROTOCOL_VERSION,
            request,
        };
        protocol::write_json(&mut stream, &frame)
            .await
            .map_err(|e| self.broken(e))?;
        let body = protocol::read_frame(&mut stream).await.map_err(|e| self.broken(e))?.ok_or_else(|| {
            HelperError::Protocol {
                message: format!(
                    "banger-helper at {} closed the connection without answering; check its log (journalctl -u banger-helper).",
                    self.socket.display()
                ),
            }
        })?;
        let response: Response = serde_json::from_slice(&body).map_err(|e| HelperError::Protocol {
            message: format!(
                "the answer from banger-helper could not be decoded ({e}); install matching banger and banger-helper binaries (`banger system install`)."
            ),
        })?;
        match response {
            Response::Error { kind, message } => Err(match kind {
                ErrorKind::Refused => HelperError::Refused { message },
                ErrorKind::Failed => HelperError::Failed { message },
                ErrorKind::Protocol => HelperError::Protocol { message },
            }),
            ok => Ok(ok),
        }
    }

    fn broken(&self, e: protocol::FrameError) -> HelperError {
        HelperError::Protocol {
            message: format!(
                "the connection to banger-helper at {} broke ({e}); check that it is running (`banger doctor`).",
                self.socket.display()
            ),
        }
    }
}

fn unexpected(response: &Response) -> HelperError {
    HelperError::Protocol {
        message: format!(
            "banger-helper gave an answer that does not fit the request ({response:?}); install matching banger and banger-helper binaries (`banger system install`)."
        ),
    }
}
