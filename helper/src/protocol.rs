//! The wire protocol between bangerd (the client) and banger-helper (the server).
//!
//! This module owns the request and response types and the frame codec. A frame is a
//! big-endian `u32` body length followed by that many bytes of JSON. Invariants:
//!
//! - No frame larger than [`MAX_FRAME_BYTES`] is ever read into memory: the length prefix is
//!   checked before the body is read, so a hostile or broken peer cannot make either side
//!   allocate more than 64 KiB per frame.
//! - Every request names the protocol version it was written for ([`RequestFrame::v`]). The
//!   set of requests is closed: there is deliberately no "run this command" request, and
//!   unknown fields or variants are refused rather than ignored, at every level (the frame,
//!   each request kind, the network spec), and so are duplicate fields. [`decode_request`] is
//!   the one way the server turns bytes into a request.
//! - Requests and responses are decoded through private *wire* enums whose every variant has
//!   braces: serde ignores `deny_unknown_fields` for the unit variants of an internally tagged
//!   enum (`{"op":"list_taps","x":1}` would decode as `ListTaps`), but a struct variant, even
//!   an empty one, refuses what it does not name. Both directions go through the wire enums
//!   with exhaustive conversions, so a new variant cannot be added to one side only.
//! - The protocol knows nothing about VMs or events; it speaks of bridges, taps and subnets.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this build speaks. Bump it when a request or response changes shape
/// or meaning. 2: networks come from the helper's configuration (`Networks`, and
/// `ensure_network` refused for a network the caller was not given); taps are the caller's.
/// 3: Firecracker launched through the jailer, and its kill and jail removal.
/// 4: `open_kvm`, `/dev/kvm` for a QEMU that runs as the caller.
pub const PROTOCOL_VERSION: u32 = 4;

/// Largest frame body either side accepts, in bytes. Requests are tiny; the cap exists so a
/// bad length prefix is refused instead of allocated.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// The host network banger's VMs live on: a bridge carrying the gateway address of a private
/// subnet, NATed to the outside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Name of the bridge (`banger` followed by up to 9 of `[a-z0-9]`).
    pub bridge: String,
    /// The bridge's own address, which guests use as their default gateway.
    pub gateway: Ipv4Addr,
    /// Length of the subnet prefix (16..=30).
    pub prefix_len: u8,
}

/// One of the caller's networks as the host has it now (the answer to [`Request::Networks`]):
/// what `banger doctor` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkState {
    /// The network as the helper's configuration gives it.
    pub spec: NetworkSpec,
    /// The bridge exists, is a bridge, and carries the gateway address.
    pub bridge: bool,
    /// banger's nftables table holds this network's masquerade rule.
    pub nat: bool,
}

/// One request as it travels: the version it was written for and the request itself. The
/// server decodes it with [`decode_request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    pub v: u32,
    #[serde(deserialize_with = "object_only")]
    pub request: Request,
}

/// The closed set of things the helper does. Decoded and encoded as the private `WireRequest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "WireRequest", into = "WireRequest")]
pub enum Request {
    /// Answered with [`Response::Version`] whatever version the request names, so a client can
    /// always learn what the helper speaks.
    Version,
    EnsureNetwork {
        spec: NetworkSpec,
    },
    EnsureTap {
        tap: String,
        bridge: String,
    },
    DeleteTap {
        tap: String,
    },
    ListTaps,
    RemoveNetwork {
        bridge: String,
    },
    /// A UDP socket and a listening TCP socket bound to `address`:`port`, handed to the
    /// caller. Only port [`DNS_PORT`], and only an address the bridge `bridge` carries: what
    /// bangerd needs to answer its guests' DNS queries without CAP_NET_BIND_SERVICE. Answered
    /// with [`Response::DnsSockets`], the descriptors following the frame (see
    /// [`crate::fds`]).
    BindDns {
        bridge: String,
        address: Ipv4Addr,
        port: u16,
    },
    /// Queries for names under `vm.` go to `address` on `bridge`: systemd-resolved's per-link
    /// DNS server and routing-only domain `~vm` (`resolvectl dns|domain|default-route`).
    /// Answered [`Response::Done`], or [`Response::Skipped`] where the host has no
    /// systemd-resolved to tell (nothing is done then). Removing the network reverts it.
    RouteDns {
        bridge: String,
        address: Ipv4Addr,
    },
    /// The networks banger-helper's configuration gives the caller, with their state on the
    /// host (answered [`Response::Networks`]): what `EnsureNetwork` may ask for.
    Networks,
    /// A descriptor of the caller's own tap `tap`, opened on `/dev/net/tun` (answered
    /// [`Response::TapFd`], the descriptor following the frame): what a VMM running as the
    /// caller, which may not open `/dev/net/tun` itself, is handed for the VM's NIC.
    OpenTap {
        tap: String,
    },
    /// A descriptor of `/dev/kvm` (answered [`Response::KvmFd`], the descriptor following the
    /// frame): what a QEMU running as the caller, who may not open `/dev/kvm` (root's alone on
    /// hardened hosts), is handed (`-add-fd` and `-accel kvm,device=/dev/fdset/N`, QEMU 8.2+).
    /// It gives the caller KVM and nothing else: what banger-helper exists to give an allowed
    /// user.
    OpenKvm,
    /// Firecracker for the caller's VM `vm`, through the jailer configured with the helper's
    /// `--jailer`: the caller's uid and gid, a chroot of its own under the helper's
    /// `--jail-dir`, `/dev/kvm` and `/dev/net/tun` made inside, the API socket at
    /// [`JAIL_API_SOCKET`] in the chroot. The frame is followed by one descriptor (as
    /// [`crate::fds`] sends them): the console log, a regular file the caller owns, opened
    /// for writing, which becomes the VMM's stdout and stderr. Answered
    /// [`Response::Launched`] once the process runs Firecracker.
    LaunchFirecracker {
        vm: String,
    },
    /// SIGKILLs the Firecracker this helper launched for the caller's VM `vm`, identified by
    /// `pid` *and* its start time (field 22 of `/proc/PID/stat`) *and* its executable being
    /// the jail's: a process that is gone, or whose pid was reused, is left alone (answered
    /// [`Response::Done`]); one that is not that VM's VMM, or not the caller's, is refused.
    /// Then removes the jail ([`Request::RemoveJail`]).
    KillVmm {
        vm: String,
        pid: u32,
        start_time_ticks: u64,
    },
    /// Removes the caller's jail of VM `vm` (its chroot and cgroup) once no process runs from
    /// it; an absent one is fine.
    RemoveJail {
        vm: String,
    },
    /// Whether this helper launches Firecracker, and with what (answered [`Response::Jail`]).
    Jail,
}

/// Where, inside its chroot, a jailed Firecracker listens for its API: relative to the
/// chroot's root, which is the jailed process's working directory (the jailer's and the
/// fake jailer's alike).
pub const JAIL_API_SOCKET: &str = "firecracker.socket";

/// The only port [`Request::BindDns`] binds: DNS.
pub const DNS_PORT: u16 = 53;

/// How a [`Request`] travels. Unit variants are written `Version {}`, not `Version`, because
/// only a struct variant refuses unknown fields when the enum is internally tagged (see the
/// module docs); the JSON is the same (`{"op":"version"}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum WireRequest {
    Version {},
    EnsureNetwork {
        #[serde(deserialize_with = "object_only")]
        spec: NetworkSpec,
    },
    EnsureTap {
        tap: String,
        bridge: String,
    },
    DeleteTap {
        tap: String,
    },
    ListTaps {},
    RemoveNetwork {
        bridge: String,
    },
    BindDns {
        bridge: String,
        address: Ipv4Addr,
        port: u16,
    },
    RouteDns {
        bridge: String,
        address: Ipv4Addr,
    },
    Networks {},
    OpenTap {
        tap: String,
    },
    OpenKvm {},
    LaunchFirecracker {
        vm: String,
    },
    KillVmm {
        vm: String,
        pid: u32,
        start_time_ticks: u64,
    },
    RemoveJail {
        vm: String,
    },
    Jail {},
}

impl From<WireRequest> for Request {
    fn from(wire: WireRequest) -> Request {
        match wire {
            WireRequest::Version {} => Request::Version,
            WireRequest::EnsureNetwork { spec } => Request::EnsureNetwork { spec },
            WireRequest::EnsureTap { tap, bridge } => Request::EnsureTap { tap, bridge },
            WireRequest::DeleteTap { tap } => Request::DeleteTap { tap },
            WireRequest::ListTaps {} => Request::ListTaps,
            WireRequest::RemoveNetwork { bridge } => Request::RemoveNetwork { bridge },
            WireRequest::BindDns {
                bridge,
                address,
                port,
            } => Request::BindDns {
                bridge,
                address,
                port,
            },
            WireRequest::RouteDns { bridge, address } => Request::RouteDns { bridge, address },
            WireRequest::Networks {} => Request::Networks,
            WireRequest::OpenTap { tap } => Request::OpenTap { tap },
            WireRequest::OpenKvm {} => Request::OpenKvm,
            WireRequest::LaunchFirecracker { vm } => Request::LaunchFirecracker { vm },
            WireRequest::KillVmm {
                vm,
                pid,
                start_time_ticks,
            } => Request::KillVmm {
                vm,
                pid,
                start_time_ticks,
            },
            WireRequest::RemoveJail { vm } => Request::RemoveJail { vm },
            WireRequest::Jail {} => Request::Jail,
        }
    }
}

impl From<Request> for WireRequest {
    fn from(request: Request) -> WireRequest {
        match request {
            Request::Version => WireRequest::Version {},
            Request::EnsureNetwork { spec } => WireRequest::EnsureNetwork { spec },
            Request::EnsureTap { tap, bridge } => WireRequest::EnsureTap { tap, bridge },
            Request::DeleteTap { tap } => WireRequest::DeleteTap { tap },
            Request::ListTaps => WireRequest::ListTaps {},
            Request::RemoveNetwork { bridge } => WireRequest::RemoveNetwork { bridge },
            Request::BindDns {
                bridge,
                address,
                port,
            } => WireRequest::BindDns {
                bridge,
                address,
                port,
            },
            Request::RouteDns { bridge, address } => WireRequest::RouteDns { bridge, address },
            Request::Networks => WireRequest::Networks {},
            Request::OpenTap { tap } => WireRequest::OpenTap { tap },
            Request::OpenKvm => WireRequest::OpenKvm {},
            Request::LaunchFirecracker { vm } => WireRequest::LaunchFirecracker { vm },
            Request::KillVmm {
                vm,
                pid,
                start_time_ticks,
            } => WireRequest::KillVmm {
                vm,
                pid,
                start_time_ticks,
            },
            Request::RemoveJail { vm } => WireRequest::RemoveJail { vm },
            Request::Jail => WireRequest::Jail {},
        }
    }
}

/// Decodes one request frame's body, refusing anything that is not exactly a request of this
/// protocol: unknown or duplicate fields at any level, unknown kinds, a missing version,
/// trailing bytes. The error names what was wrong (for an unknown field, the field). The
/// version's *value* is the server's to judge, so that a request of another version can be
/// answered with the version this helper speaks.
pub fn decode_request(body: &[u8]) -> Result<RequestFrame, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let frame = object_only(&mut deserializer)?;
    deserializer.end()?;
    Ok(frame)
}

/// Deserializes `T` from a JSON object and nothing else. serde's derived structs (and
/// internally tagged enums) also accept their fields as a positional array
/// (`[1,{"op":"list_taps"}]`), a second spelling of every request with no names to check;
/// requests have exactly one.
fn object_only<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ObjectVisitor<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            // Whatever T asks of this deserializer, it can only be handed the map.
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }

    deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
}

impl Request {
    /// Short name used in the helper's log lines.
    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Version => "version",
            Request::EnsureNetwork { .. } => "ensure_network",
            Request::EnsureTap { .. } => "ensure_tap",
            Request::DeleteTap { .. } => "delete_tap",
            Request::ListTaps => "list_taps",
            Request::RemoveNetwork { .. } => "remove_network",
            Request::BindDns { .. } => "bind_dns",
            Request::RouteDns { .. } => "route_dns",
            Request::Networks => "networks",
            Request::OpenTap { .. } => "open_tap",
            Request::OpenKvm => "open_kvm",
            Request::LaunchFirecracker { .. } => "launch_firecracker",
            Request::KillVmm { .. } => "kill_vmm",
            Request::RemoveJail { .. } => "remove_jail",
            Request::Jail => "jail",
        }
    }
}

/// The helper's answer to one request. Decoded and encoded as the private `WireResponse`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "WireResponse", into = "WireResponse")]
pub enum Response {
    Version {
        version: u32,
    },
    Done,
    Taps {
        taps: Vec<String>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// The answer to [`Request::BindDns`]: the UDP and the TCP socket follow the frame, in
    /// that order, as `SCM_RIGHTS` on one byte ([`crate::fds`]).
    DnsSockets,
    /// Nothing was done because this host lacks what the request needs (for
    /// [`Request::RouteDns`]: systemd-resolved); `reason` says what and what follows.
    Skipped {
        reason: String,
    },
    /// The answer to [`Request::Networks`].
    Networks {
        networks: Vec<NetworkState>,
    },
    /// The answer to [`Request::OpenTap`]: the tap's descriptor follows the frame
    /// ([`crate::fds`]).
    TapFd,
    /// The answer to [`Request::OpenKvm`]: `/dev/kvm`'s descriptor follows the frame
    /// ([`crate::fds`]).
    KvmFd,
    /// The answer to [`Request::LaunchFirecracker`]: the VMM's process, and the chroot it
    /// sees as `/` (owned by the caller), where its API socket is [`JAIL_API_SOCKET`].
    Launched {
        pid: u32,
        start_time_ticks: u64,
        root: std::path::PathBuf,
    },
    /// The answer to [`Request::Jail`]: `None` when this helper launches no Firecracker.
    Jail {
        jail: Option<JailState>,
    },
}

/// What a helper that launches Firecracker runs, and where the jails go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailState {
    pub jailer: std::path::PathBuf,
    pub firecracker: std::path::PathBuf,
    pub dir: std::path::PathBuf,
}

/// How a [`Response`] travels: braces on every variant, for the reason [`WireRequest`] has them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
enum WireResponse {
    Version {
        version: u32,
    },
    Done {},
    Taps {
        taps: Vec<String>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
    DnsSockets {},
    Skipped {
        reason: String,
    },
    Networks {
        networks: Vec<NetworkState>,
    },
    TapFd {},
    KvmFd {},
    Launched {
        pid: u32,
        start_time_ticks: u64,
        root: std::path::PathBuf,
    },
    Jail {
        jail: Option<JailState>,
    },
}

impl From<WireResponse> for Response {
    fn from(wire: WireResponse) -> Response {
        match wire {
            WireResponse::Version { version } => Response::Version { version },
            WireResponse::Done {} => Response::Done,
            WireResponse::Taps { taps } => Response::Taps { taps },
            WireResponse::Error { kind, message } => Response::Error { kind, message },
            WireResponse::DnsSockets {} => Response::DnsSockets,
            WireResponse::Skipped { reason } => Response::Skipped { reason },
            WireResponse::Networks { networks } => Response::Networks { networks },
            WireResponse::TapFd {} => Response::TapFd,
            WireResponse::KvmFd {} => Response::KvmFd,
            WireResponse::Launched {
                pid,
                start_time_ticks,
                root,
            } => Response::Launched {
                pid,
                start_time_ticks,
                root,
            },
            WireResponse::Jail { jail } => Response::Jail { jail },
        }
    }
}

impl From<Response> for WireResponse {
    fn from(response: Response) -> WireResponse {
        match response {
            Response::Version { version } => WireResponse::Version { version },
            Response::Done => WireResponse::Done {},
            Response::Taps { taps } => WireResponse::Taps { taps },
            Response::Error { kind, message } => WireResponse::Error { kind, message },
            Response::DnsSockets => WireResponse::DnsSockets {},
            Response::Skipped { reason } => WireResponse::Skipped { reason },
            Response::Networks { networks } => WireResponse::Networks { networks },
            Response::TapFd => WireResponse::TapFd {},
            Response::KvmFd => WireResponse::KvmFd {},
            Response::Launched {
                pid,
                start_time_ticks,
                root,
            } => WireResponse::Launched {
                pid,
                start_time_ticks,
                root,
            },
            Response::Jail { jail } => WireResponse::Jail { jail },
        }
    }
}

/// Why a request was not carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was refused before anything was done: the caller is not allowed, or an
    /// argument broke a rule.
    Refused,
    /// The privileged operation was attempted and failed.
    Failed,
    /// The frame could not be understood (bad length, bad JSON, unknown version).
    Protocol,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Failed => "failed",
            ErrorKind::Protocol => "protocol",
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame body. `Ok(None)` means the peer closed the connection cleanly between
/// frames; a close anywhere else is [`FrameError::Truncated`].
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len_bytes = [0u8; 4];
    let mut filled = 0;
    while filled < len_bytes.len() {
        let n = reader.read(&mut len_bytes[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let len = u32::from_be_bytes(len_bytes) as usize;
    // Checked before allocating or reading: the body of an oversized frame never enters memory.
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(body))
}

/// Writes one frame (length prefix and body) and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    body: &[u8],
) -> Result<(), FrameError> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len: body.len() });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Serializes `value` as JSON and writes it as one frame.
pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    value: &T,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(value).map_err(|e| FrameError::Io(std::io::Error::other(e)))?;
    write_frame(writer, &body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Vec::new();
        let req = RequestFrame {
            v: PROTOCOL_VERSION,
            request: Request::DeleteTap { tap: "bt1".into() },
        };
        write_json(&mut buf, &req).await.unwrap();
        write_json(
            &mut buf,
            &RequestFrame {
                v: 1,
                request: Request::ListTaps,
            },
        )
        .await
        .unwrap();
        let mut reader = buf.as_slice();
        let first = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<RequestFrame>(&first).unwrap(), req);
        let second = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(
            serde_json::from_slice::<RequestFrame>(&second)
                .unwrap()
                .request,
            Request::ListTaps
        );
        assert!(
            read_frame(&mut reader).await.unwrap().is_none(),
            "clean end of stream"
        );
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_the_body() {
        // Only the prefix exists: a reader that tried to read the body would see Truncated.
        let prefix = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
        let mut reader = &prefix[..];
        match read_frame(&mut reader).await {
            Err(FrameError::TooLarge { len }) => assert_eq!(len, MAX_FRAME_BYTES + 1),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let huge = u32::MAX.to_be_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..]).await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn largest_allowed_frame_is_read() {
        let body = vec![b' '; MAX_FRAME_BYTES];
        let bytes = frame(&body);
        assert_eq!(
            read_frame(&mut bytes.as_slice())
                .await
                .unwrap()
                .unwrap()
                .len(),
            MAX_FRAME_BYTES
        );
        let mut sink = Vec::new();
        assert!(matches!(
            write_frame(&mut sink, &vec![0; MAX_FRAME_BYTES + 1]).await,
            Err(FrameError::TooLarge { .. })
        ));
        assert!(sink.is_empty(), "nothing is written for a refused frame");
    }

    #[tokio::test]
    async fn truncated_frames_are_errors() {
        assert!(matches!(
            read_frame(&mut &[0u8, 0][..]).await,
            Err(FrameError::Truncated)
        ));
        let mut bytes = frame(b"{\"v\":1}");
        bytes.truncate(bytes.len() - 2);
        assert!(matches!(
            read_frame(&mut bytes.as_slice()).await,
            Err(FrameError::Truncated)
        ));
    }

    #[test]
    fn json_shape_is_stable() {
        let req = RequestFrame {
            v: 1,
            request: Request::EnsureNetwork {
                spec: NetworkSpec {
                    bridge: "banger0".into(),
                    gateway: Ipv4Addr::new(172, 30, 0, 1),
                    prefix_len: 24,
                },
            },
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"v":1,"request":{"op":"ensure_network","spec":{"bridge":"banger0","gateway":"172.30.0.1","prefix_len":24}}}"#
        );
        let err = Response::Error {
            kind: ErrorKind::Refused,
            message: "no".into(),
        };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"result":"error","kind":"refused","message":"no"}"#
        );
    }

    /// One valid request of every kind. `samples_cover_every_kind` fails when a kind the
    /// decoder accepts has no sample here, so every test below covers a new kind too.
    fn every_kind() -> Vec<Request> {
        vec![
            Request::Version,
            Request::EnsureNetwork {
                spec: NetworkSpec {
                    bridge: "banger0".into(),
                    gateway: Ipv4Addr::new(10, 77, 0, 1),
                    prefix_len: 24,
                },
            },
            Request::EnsureTap {
                tap: "bt1".into(),
                bridge: "banger0".into(),
            },
            Request::DeleteTap { tap: "bt1".into() },
            Request::ListTaps,
            Request::RemoveNetwork {
                bridge: "banger0".into(),
            },
            Request::BindDns {
                bridge: "banger0".into(),
                address: Ipv4Addr::new(10, 77, 0, 1),
                port: DNS_PORT,
            },
            Request::RouteDns {
                bridge: "banger0".into(),
                address: Ipv4Addr::new(10, 77, 0, 1),
            },
            Request::Networks,
            Request::OpenTap { tap: "bt1".into() },
            Request::OpenKvm,
            Request::LaunchFirecracker {
                vm: "0123456789abcdef".into(),
            },
            Request::KillVmm {
                vm: "0123456789abcdef".into(),
                pid: 4242,
                start_time_ticks: 77,
            },
            Request::RemoveJail {
                vm: "0123456789abcdef".into(),
            },
            Request::Jail,
        ]
    }

    /// The request's JSON object (`{"op":…,…}`) and its fields other than `op`.
    fn request_json(request: &Request) -> (String, Vec<String>) {
        let json = serde_json::to_string(request).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let fields = value
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "op")
            .cloned()
            .collect();
        (json, fields)
    }

    /// `request` (a JSON object) with `extra` (`"name":value`) added as its last member.
    fn with_member(request: &str, extra: &str) -> String {
        let body = request.strip_suffix('}').unwrap();
        format!("{body},{extra}}}")
    }

    fn frame_of(request: &str) -> String {
        format!(r#"{{"v":1,"request":{request}}}"#)
    }

    fn refused(body: &str) -> String {
        match decode_request(body.as_bytes()) {
            Ok(frame) => panic!("{body} must be refused, but decodes as {frame:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn samples_cover_every_kind() {
        // The decoder's own list of kinds, as serde reports it for an unknown one.
        let message = refused(r#"{"v":1,"request":{"op":"no_such_op"}}"#);
        let listed = message
            .split_once("expected one of ")
            .unwrap_or_else(|| panic!("no list of kinds in {message:?}"))
            .1;
        let mut kinds: Vec<&str> = listed.split('`').skip(1).step_by(2).collect();
        kinds.sort_unstable();
        let mut sampled: Vec<&str> = every_kind().iter().map(Request::op_name).collect();
        sampled.sort_unstable();
        assert_eq!(kinds, sampled, "every kind needs a sample in every_kind()");
        for request in every_kind() {
            let value = serde_json::to_value(&request).unwrap();
            assert_eq!(
                value["op"],
                request.op_name(),
                "op_name matches the wire name"
            );
        }
    }

    #[test]
    fn every_kind_round_trips() {
        for request in every_kind() {
            let frame = RequestFrame {
                v: PROTOCOL_VERSION,
                request,
            };
            let json = serde_json::to_vec(&frame).unwrap();
            assert_eq!(decode_request(&json).unwrap(), frame);
        }
        // Kinds without arguments are written without braces' worth of fields, as before.
        assert_eq!(
            serde_json::to_string(&Request::ListTaps).unwrap(),
            r#"{"op":"list_taps"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Version).unwrap(),
            r#"{"op":"version"}"#
        );
    }

    #[test]
    fn an_unknown_field_is_refused_in_every_kind_naming_it() {
        let samples = every_kind();
        // Every field some kind has: each must be refused by the kinds that do not have it.
        let mut all_fields: Vec<String> = samples.iter().flat_map(|r| request_json(r).1).collect();
        all_fields.sort();
        all_fields.dedup();
        for request in &samples {
            let (json, fields) = request_json(request);
            let strangers = all_fields
                .iter()
                .filter(|f| !fields.contains(f))
                .map(String::as_str)
                .chain(["x", "uid", "argv", "v"]);
            for stranger in strangers {
                let body = frame_of(&with_member(&json, &format!(r#""{stranger}":"bt2""#)));
                let message = refused(&body);
                assert!(
                    message.contains(&format!("unknown field `{stranger}`")),
                    "{body}: {message}"
                );
            }
            // Also when the unknown field comes before the kind's name.
            let body = frame_of(&json.replacen('{', r#"{"x":1,"#, 1));
            assert!(refused(&body).contains("unknown field `x`"), "{body}");
        }
    }

    #[test]
    fn unknown_fields_are_refused_in_the_frame_and_the_network_spec() {
        let message = refused(r#"{"v":1,"request":{"op":"list_taps"},"uid":0}"#);
        assert!(message.contains("unknown field `uid`"), "{message}");
        let message = refused(
            r#"{"v":1,"request":{"op":"ensure_network","spec":{"bridge":"banger0","gateway":"10.77.0.1","prefix_len":24,"nat":false}}}"#,
        );
        assert!(message.contains("unknown field `nat`"), "{message}");
    }

    #[test]
    fn duplicate_and_missing_fields_are_refused_in_every_kind() {
        for request in every_kind() {
            let (json, fields) = request_json(&request);
            // A second `op` must not choose another kind, whichever comes first.
            let message = refused(&frame_of(&with_member(&json, r#""op":"version""#)));
            assert!(
                message.contains("duplicate field `op`"),
                "{json}: {message}"
            );
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            for field in &fields {
                let again = format!(r#""{field}":{}"#, value[field]);
                let message = refused(&frame_of(&with_member(&json, &again)));
                assert!(
                    message.contains(&format!("duplicate field `{field}`")),
                    "{json}: {message}"
                );
                let mut without = value.clone();
                without.as_object_mut().unwrap().remove(field);
                let message = refused(&frame_of(&without.to_string()));
                assert!(
                    message.contains(&format!("missing field `{field}`")),
                    "{without}: {message}"
                );
            }
        }
        let message = refused(r#"{"v":1,"v":1,"request":{"op":"list_taps"}}"#);
        assert!(message.contains("duplicate field `v`"), "{message}");
        let message = refused(
            r#"{"v":1,"request":{"op":"ensure_network","spec":{"bridge":"banger0","bridge":"banger1","gateway":"10.77.0.1","prefix_len":24}}}"#,
        );
        assert!(message.contains("duplicate field `bridge`"), "{message}");
    }

    #[test]
    fn unknown_kinds_and_malformed_frames_are_refused() {
        for (bad, expected) in [
            (
                r#"{"v":1,"request":{"op":"run_command","argv":["sh"]}}"#,
                "unknown variant `run_command`",
            ),
            (r#"{"v":1,"request":{"op":"ListTaps"}}"#, "unknown variant"),
            (r#"{"v":1,"request":{"tap":"bt1"}}"#, "missing field `op`"),
            (r#"{"v":1,"request":{"op":null}}"#, "invalid type"),
            (r#"{"v":1,"request":"list_taps"}"#, "invalid type"),
            (r#"{"v":1,"request":null}"#, "invalid type"),
            (r#"{"v":1}"#, "missing field `request`"),
            (r#"{"request":{"op":"list_taps"}}"#, "missing field `v`"),
            (r#"{"v":"1","request":{"op":"list_taps"}}"#, "invalid type"),
            (r#"{"v":1.0,"request":{"op":"list_taps"}}"#, "invalid type"),
            (r#"{"v":-1,"request":{"op":"list_taps"}}"#, "invalid value"),
            (
                r#"{"v":4294967296,"request":{"op":"list_taps"}}"#,
                "invalid value",
            ),
            (
                r#"{"v":1,"request":{"op":"delete_tap","tap":7}}"#,
                "invalid type",
            ),
            (
                r#"{"v":1,"request":{"op":"list_taps"}} {}"#,
                "trailing characters",
            ),
            // Positional arrays: no names, so no unknown names to refuse; not a request.
            (r#"[1,{"op":"list_taps"}]"#, "expected a JSON object"),
            (
                r#"{"v":1,"request":["list_taps"]}"#,
                "expected a JSON object",
            ),
            (
                r#"{"v":1,"request":["delete_tap","bt1"]}"#,
                "expected a JSON object",
            ),
            (
                r#"{"v":1,"request":{"op":"ensure_network","spec":["banger0","10.77.0.1",24]}}"#,
                "expected a JSON object",
            ),
            ("", "EOF"),
        ] {
            let message = refused(bad);
            assert!(message.contains(expected), "{bad}: {message}");
        }
        // The version's value is the server's to judge (it answers `version` to any), so the
        // decoder accepts any u32.
        let frame = decode_request(br#"{"v":99,"request":{"op":"version"}}"#).unwrap();
        assert_eq!((frame.v, frame.request), (99, Request::Version));
    }

    #[test]
    fn responses_are_as_strict_as_requests() {
        for response in [
            Response::Version { version: 1 },
            Response::Done,
            Response::Taps {
                taps: vec!["bt1".into()],
            },
            Response::Error {
                kind: ErrorKind::Failed,
                message: "no".into(),
            },
            Response::DnsSockets,
            Response::Skipped {
                reason: "no systemd-resolved".into(),
            },
            Response::Networks {
                networks: vec![NetworkState {
                    spec: NetworkSpec {
                        bridge: "banger0".into(),
                        gateway: Ipv4Addr::new(172, 30, 0, 1),
                        prefix_len: 24,
                    },
                    bridge: true,
                    nat: false,
                }],
            },
            Response::TapFd,
            Response::KvmFd,
            Response::Launched {
                pid: 4242,
                start_time_ticks: 77,
                root: "/var/lib/banger/jail/firecracker/1000-0123456789abcdef/root".into(),
            },
            Response::Jail { jail: None },
            Response::Jail {
                jail: Some(JailState {
                    jailer: "/usr/local/bin/jailer".into(),
                    firecracker: "/usr/local/bin/firecracker".into(),
                    dir: "/var/lib/banger-jail".into(),
                }),
            },
        ] {
            let json = serde_json::to_string(&response).unwrap();
            assert_eq!(serde_json::from_str::<Response>(&json).unwrap(), response);
            let bad = with_member(&json, r#""x":1"#);
            let message = serde_json::from_str::<Response>(&bad)
                .unwrap_err()
                .to_string();
            assert!(message.contains("unknown field `x`"), "{bad}: {message}");
        }
        assert_eq!(
            serde_json::to_string(&Response::Done).unwrap(),
            r#"{"result":"done"}"#
        );
    }
}
