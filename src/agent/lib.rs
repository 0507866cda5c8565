//! The guest agent (`banger-agent`) and the host's client for it: the `banger-agent` package,
//! which the `banger` crate re-exports as `banger::agent`.
//!
//! - [`protocol`]: the frame codec and the messages, shared by both sides. Its docs hold the
//!   frame layout and the conversation.
//! - [`client`]: [`AgentClient`], used by bangerd over a stream it already connected (through
//!   Firecracker's vsock unix socket, or a local agent under the fake firecracker).
//! - [`server`]: [`Agent`], what runs in the guest: health, ping, exec with streamed output
//!   (on pipes, or on a pseudo-terminal), sync; each connection in its own task; no command
//!   outlives its connection.
//! - [`pty`]: the pseudo-terminal of an exec with a tty: the pair, the session the command
//!   leads, window sizes, and killing a whole session.
//! - [`mux`]: many agent connections over one byte stream (the virtio-serial port a QEMU
//!   guest has instead of vsock): the host opens a stream per request, the guest serves each
//!   with the same `serve_connection`; sessions, flow control, limits.
//! - [`serial`]: the guest's end of that port (found by name under
//!   `/sys/class/virtio-ports`, read and written by two threads).
//!
//! - [`cli`]: the program: arguments (by hand, no clap), logging, runtime, signals. Two thin
//!   binaries call it: `banger-agent` of the `banger` package (what `cargo install` installs)
//!   and `banger-guest-agent` of this one (what `tools/build-agent.sh` links statically).
//!
//! - [`tool_stats`] and [`tool_ports`]: `banger-agent --stats` and `--ports`, tools that
//!   bangerd runs through `exec` (`/proc/self/exe --stats`) and that print one JSON document.
//! - [`tool_tree`]: the workspace tools (`--tar-receive`, `--tar-send`, `--tree-manifest`),
//!   run through `exec` as `/proc/self/exe --TOOL`, and the safe extraction the host uses
//!   for a guest's export; [`tar_stream`]: the minimal strict tar format they speak.
//! - Tools: modes of the agent binary that the host runs through exec
//!   (`/proc/self/exe --TOOL`): [`tool_ssh`] (`--ssh-setup`: authorized keys in, host keys
//!   out) and [`tool_tcp`] (`--tcp-connect`: a TCP connection in the guest as a byte pipe).
//!
//! - [`boot`]: the boot contract (fixed paths, the kernel command line banger writes);
//!   [`initrd`]: the program as the kernel bundle's initrd init; [`pid1`]: the agent as the
//!   guest's init when the image has none. `cli::main` picks them when run as PID 1.
//!
//! This package is what goes into every guest, statically linked, so it depends on little:
//! tokio without the daemon's `fs` and `time` features, nix, serde, tracing; never redb,
//! rtnetlink, clap or anything of banger's daemon (`tests/build.rs` checks it). The client lives
//! here too because it needs nothing the agent does not already pull, and keeping it beside
//! the protocol and the server keeps the two sides in one crate's tests.
//!
//! Invariants: nothing here touches the event log or knows about VMs; the agent trusts its
//! peer to be the host (there is no authentication: only the host can reach a guest's vsock),
//! but never trusts its input to be well formed.

pub mod boot;
pub mod cli;
pub mod client;
pub mod initrd;
pub mod mux;
pub mod pid1;
pub mod protocol;
pub mod pty;
pub mod serial;
pub mod server;
pub mod tar_stream;
pub mod tool_ports;
pub mod tool_ssh;
pub mod tool_stats;
pub mod tool_tcp;
pub mod tool_tree;

pub use client::{AgentClient, AgentError, AgentInfo, Exec, ExecEvent, ExecOutput, OutputStream};
pub use protocol::{
    AGENT_VSOCK_PORT, ErrorCode, ExecRequest, ExitStatus, Health, PROTOCOL_VERSION, StdinMode,
    TtyRequest,
};
pub use server::{AGENT_VERSION, Agent, ListenAddr, Listener};
