//! The RPC between the CLI and bangerd: wire protocol and client.

pub mod client;
pub mod protocol;

pub use client::{Client, ClientError, Stream, StreamEvent, StreamInput};
pub use protocol::{ErrorCode, MAX_REQUEST_BYTES, PROTOCOL_VERSION, Request, Response, RpcError};
