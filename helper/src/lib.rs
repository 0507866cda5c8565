//! banger-helper: the narrow root helper.
//!
//! bangerd runs unprivileged and asks this helper, over a unix socket, for a closed set of
//! privileged network operations: banger's bridge and NAT table, the taps its VMs use, the DNS
//! port on the bridge's address, and routing `.vm` names to it in systemd-resolved.
//!
//! Code map:
//! - [`protocol`]: request/response types and the length-prefixed JSON frame codec.
//! - [`validate`]: the naming and subnet rules, pure.
//! - [`networks`]: which network each allowed user may have (the helper's own configuration).
//! - [`cli`]: the `banger-helper` command line (the binary is `src/bin/banger-helper.rs` of
//!   the `banger` package, so that one `cargo install` installs it with bangerd).
//! - [`client`]: [`HelperClient`], what bangerd calls.
//! - [`server`]: the socket server (SO_PEERCRED allow-list, validation, dispatch).
//! - [`fds`]: descriptors passed over the socket (`SCM_RIGHTS`): the DNS sockets the helper
//!   binds on port 53 for bangerd.
//! - [`jail`]: Firecracker launched through the jailer for a caller, and killed only when the
//!   pid, start time, uid and executable say it is that caller's VM's VMM.
//! - [`kvm`]: `/dev/kvm` opened for a QEMU that runs as the caller, checked at both ends.
//! - [`net`]: the only code that touches the host network (rtnetlink, tun ioctls, nft).
//! - [`sandbox`]: a helper in a throwaway network namespace, for tests and benchmarks.
//!
//! Invariants: the helper knows nothing about VMs' state or events; there is no "run this
//! command" request (the only process it starts is its own configured jailer, for a VM id); every argument is validated before any syscall; the caller's identity comes from
//! SO_PEERCRED, never from the request; a caller gets only the networks the helper's own
//! configuration gives its uid, and touches only the taps it owns.

pub mod cli;
pub mod client;
pub mod fds;
pub mod jail;
pub mod kvm;
pub mod net;
pub mod networks;
pub mod protocol;
pub mod sandbox;
pub mod server;
pub mod validate;

pub use client::{DnsRoute, DnsSockets, HelperClient, HelperError, JailedLaunch};
pub use protocol::{NetworkSpec, NetworkState};
