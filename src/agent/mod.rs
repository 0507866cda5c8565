//! The guest agent (`banger-agent`) and the host's client for it.
//!
//! - [`protocol`]: the frame codec and the messages, shared by both sides. Its docs hold the
//!   frame layout and the conversation.
//! - [`client`]: [`AgentClient`], used by bangerd over a stream it already connected (through
//!   Firecracker's vsock unix socket, or a local agent under the fake firecracker).
//! - [`server`]: [`Agent`], what runs in the guest: health, ping, exec with streamed output,
//!   sync; each connection in its own task; no command outlives its connection.
//!
//! The `banger-agent` binary (`src/bin/banger-agent.rs`) only parses its arguments, binds the
//! listener, prints `banger-agent ready on ADDR` on stdout once it accepts connections (so a
//! parent process can wait for that line instead of polling), and serves until SIGTERM or
//! SIGINT, when it kills every running command's process group and exits.
//!
//! Invariants: nothing here touches the event log or knows about VMs; the agent trusts its
//! peer to be the host (there is no authentication: only the host can reach a guest's vsock),
//! but never trusts its input to be well formed.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{AgentClient, AgentError, AgentInfo, Exec, ExecEvent, ExecOutput, OutputStream};
pub use protocol::{
    AGENT_VSOCK_PORT, ErrorCode, ExecRequest, ExitStatus, Health, PROTOCOL_VERSION, StdinMode,
};
pub use server::{AGENT_VERSION, Agent, ListenAddr, Listener};
