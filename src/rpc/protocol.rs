//! bangerd's wire protocol: newline-delimited JSON over a unix socket.
//!
//! A client writes one [`Request`] per line and reads [`Response`] lines back. A plain call gets
//! exactly one response carrying `result` or `error`. A streaming call (`events.follow`) gets
//! any number of responses carrying `item`, and ends with one carrying `result` (the stream is
//! done) or `error`. Requests on one connection are answered in order.
//!
//! ```text
//! → {"v":1,"id":7,"method":"vm.show","params":{"name":"dev"}}
//! ← {"v":1,"id":7,"op_id":"3f2a…","result":{…}}
//! ← {"v":1,"id":7,"op_id":"3f2a…","error":{"code":"not_found","message":"no VM named dev; …"}}
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// Version of this protocol. A request with another version gets `invalid_argument`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest request line the daemon reads; longer requests are refused without being parsed.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    pub id: u64,
    pub method: String,
    #[serde(default)]
    pub params: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub id: u64,
    /// The op id the daemon gave this request; it appears on the events the request caused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

/// Stable error codes. Scripts and agents match on these, so they never change meaning.
///
/// Three of them say "not now" and are told apart by what would change the answer:
/// - `busy`: another operation holds the target (or a stuck one blocks it); the same request
///   may succeed once that operation ends.
/// - `not_running`: the request needs a running VM and this one is stopped; start it first.
/// - `wrong_state`: the VM is in a settled state that does not allow the request (start or
///   set a running VM, stop a failed one); the message names the state and the way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    InvalidArgument,
    AlreadyExists,
    NotRunning,
    Busy,
    OperationFailed,
    Unavailable,
    Internal,
    WrongState,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::NotRunning => "not_running",
            ErrorCode::Busy => "busy",
            ErrorCode::OperationFailed => "operation_failed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::WrongState => "wrong_state",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it crosses the wire: a stable code and a message that says what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} [{code}]")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}
