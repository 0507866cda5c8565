//! The client bangerd uses to ask banger-helper for privileged network operations.
//!
//! This module owns the caller's side of the protocol: one short-lived connection per request,
//! the same name rules the server applies (so a bad name fails before any connection), and the
//! mapping of the helper's answers onto [`HelperError`]. It holds no state besides the socket
//! path, so a restarted helper is picked up by the next call.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;

use crate::protocol::{
    self, ErrorKind, NetworkSpec, NetworkState, PROTOCOL_VERSION, Request, RequestFrame, Response,
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

/// The sockets [`HelperClient::bind_dns`] hands over, bound by the helper.
#[derive(Debug)]
pub struct DnsSockets {
    pub udp: std::net::UdpSocket,
    /// Already listening.
    pub tcp: std::net::TcpListener,
}

/// A Firecracker the helper launched ([`HelperClient::launch_firecracker`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailedLaunch {
    pub pid: u32,
    pub start_time_ticks: u64,
    /// Its chroot, owned by the caller: where the caller links the kernel and disks, and
    /// where the VMM's sockets appear.
    pub root: PathBuf,
}

/// What [`HelperClient::route_dns`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsRoute {
    /// systemd-resolved sends names under `vm.` to the address.
    Routed,
    /// Nothing was done; the reason says why (no systemd-resolved on this host, say).
    Skipped { reason: String },
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
    /// NAT (masquerade of the subnet leaving through any other interface) and forward rules of
    /// every configured network whose bridge exists, this one included. Refused unless `spec`
    /// is exactly one of the networks the helper's configuration gives the caller
    /// ([`HelperClient::networks`]). Idempotent; replaces only banger's own table, atomically.
    pub async fn ensure_network(&self, spec: &NetworkSpec) -> Result<(), HelperError> {
        self.call_done(Request::EnsureNetwork { spec: spec.clone() })
            .await
    }

    /// A persistent tap named `tap`, owned by the caller's uid (as the helper sees it through
    /// SO_PEERCRED), attached to `bridge` (one of the caller's bridges), link up. Idempotent; a
    /// tap another uid owns is refused, never taken over; an existing interface of that
    /// name that is not a tap is refused.
    pub async fn ensure_tap(&self, tap: &str, bridge: &str) -> Result<(), HelperError> {
        self.call_done(Request::EnsureTap {
            tap: tap.to_string(),
            bridge: bridge.to_string(),
        })
        .await
    }

    /// Deletes the tap; absent is success. Refuses an interface that is not a tap, and a tap
    /// another uid owns.
    pub async fn delete_tap(&self, tap: &str) -> Result<(), HelperError> {
        self.call_done(Request::DeleteTap {
            tap: tap.to_string(),
        })
        .await
    }

    /// Names of the caller's banger taps (tap devices whose names match the tap pattern and
    /// whose owner is the caller's uid, or that have no owner), sorted.
    pub async fn list_taps(&self) -> Result<Vec<String>, HelperError> {
        match self.call(Request::ListTaps).await? {
            Response::Taps { taps } => Ok(taps),
            other => Err(unexpected(&other)),
        }
    }

    /// A descriptor attached to the caller's tap `tap`, opened by the helper on
    /// `/dev/net/tun` (which the caller may not open) and passed over the socket: for a VMM
    /// that runs as the caller (QEMU's `-netdev tap,fd=N`). What arrives is checked to be a
    /// tap of that name (`TUNGETIFF`).
    pub async fn open_tap(&self, tap: &str) -> Result<OwnedFd, HelperError> {
        let (response, stream) = self
            .exchange(Request::OpenTap {
                tap: tap.to_owned(),
            })
            .await?;
        if response != Response::TapFd {
            return Err(unexpected(&response));
        }
        let fd = self.one_descriptor(&stream, "a tap").await?;
        match tap_name_of(&fd) {
            Ok(name) if name == tap => Ok(fd),
            Ok(name) => Err(HelperError::Protocol {
                message: format!("banger-helper passed tap {name:?} when {tap} was asked for"),
            }),
            Err(e) => Err(HelperError::Protocol {
                message: format!("banger-helper passed a descriptor that is not a tap ({e})"),
            }),
        }
    }

    /// `/dev/kvm`, opened by the helper (where the caller may not open it) and passed over the
    /// socket: for a QEMU that runs as the caller (`-accel kvm,device=/dev/fdset/N`). What
    /// arrives is checked to be KVM's device.
    pub async fn open_kvm(&self) -> Result<OwnedFd, HelperError> {
        let (response, stream) = self.exchange(Request::OpenKvm).await?;
        if response != Response::KvmFd {
            return Err(unexpected(&response));
        }
        let fd = self.one_descriptor(&stream, "/dev/kvm").await?;
        crate::kvm::check_kvm(&fd)
            .map(|()| fd)
            .map_err(|why| HelperError::Protocol {
                message: format!("banger-helper passed a descriptor for /dev/kvm, but {why}"),
            })
    }

    /// The one descriptor that follows an answer carrying `what` (a tap, /dev/kvm): exactly
    /// one, or a protocol error saying what arrived.
    async fn one_descriptor(
        &self,
        stream: &UnixStream,
        what: &str,
    ) -> Result<OwnedFd, HelperError> {
        let mut fds = crate::fds::recv_fds(stream)
            .await
            .map_err(|e| HelperError::Protocol {
                message: format!(
                    "banger-helper at {} answered with {what} but it did not arrive ({e})",
                    self.socket.display()
                ),
            })?;
        let count = fds.len();
        match (fds.pop(), count) {
            (Some(fd), 1) => Ok(fd),
            _ => Err(HelperError::Protocol {
                message: format!(
                    "banger-helper at {} passed {count} descriptors for {what}",
                    self.socket.display()
                ),
            }),
        }
    }

    /// The networks banger-helper's configuration gives this caller's uid (the only ones
    /// [`HelperClient::ensure_network`] may ask for), with whether each one's bridge and NAT
    /// are in place now.
    pub async fn networks(&self) -> Result<Vec<NetworkState>, HelperError> {
        match self.call(Request::Networks).await? {
            Response::Networks { networks } => Ok(networks),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes the bridge and its rules from banger's nft table, leaving the other configured
    /// networks' (absent is fine). Only one of the caller's own bridges. For uninstall and tests.
    pub async fn remove_network(&self, bridge: &str) -> Result<(), HelperError> {
        self.call_done(Request::RemoveNetwork {
            bridge: bridge.to_string(),
        })
        .await
    }

    /// A UDP socket and a listening TCP socket bound to `address`:`port`, made by the helper
    /// (which can bind port 53 where bangerd cannot) and passed over its socket. The helper
    /// binds only port 53, and only an address bridge `bridge` carries. What arrives is checked
    /// to be exactly that before it is returned.
    pub async fn bind_dns(
        &self,
        bridge: &str,
        address: Ipv4Addr,
        port: u16,
    ) -> Result<DnsSockets, HelperError> {
        let (response, stream) = self
            .exchange(Request::BindDns {
                bridge: bridge.to_owned(),
                address,
                port,
            })
            .await?;
        if response != Response::DnsSockets {
            return Err(unexpected(&response));
        }
        let fds = crate::fds::recv_fds(&stream).await.map_err(|e| HelperError::Protocol {
            message: format!(
                "banger-helper at {} answered with sockets but they did not arrive ({e}); install matching banger and banger-helper binaries (`banger system install`).",
                self.socket.display()
            ),
        })?;
        let expected = SocketAddr::V4(SocketAddrV4::new(address, port));
        dns_sockets(fds, expected).map_err(|message| HelperError::Protocol {
            message: format!("banger-helper at {} {message}", self.socket.display()),
        })
    }

    /// Names under `vm.` resolve through `address` on the host: systemd-resolved's per-link DNS
    /// on `bridge` (where resolved runs; [`DnsRoute::Skipped`] says why not otherwise).
    pub async fn route_dns(
        &self,
        bridge: &str,
        address: Ipv4Addr,
    ) -> Result<DnsRoute, HelperError> {
        match self
            .call(Request::RouteDns {
                bridge: bridge.to_owned(),
                address,
            })
            .await?
        {
            Response::Done => Ok(DnsRoute::Routed),
            Response::Skipped { reason } => Ok(DnsRoute::Skipped { reason }),
            other => Err(unexpected(&other)),
        }
    }

    /// Firecracker for VM `vm`, launched by the helper through its configured jailer as this
    /// caller's uid, with `console` (a file this caller owns, open for writing) as its stdout
    /// and stderr. Returns once the process runs Firecracker; its API socket is then
    /// [`crate::protocol::JAIL_API_SOCKET`] under [`JailedLaunch::root`], or soon will be.
    pub async fn launch_firecracker(
        &self,
        vm: &str,
        console: &std::fs::File,
    ) -> Result<JailedLaunch, HelperError> {
        let request = Request::LaunchFirecracker { vm: vm.to_owned() };
        let console = console.try_clone().map_err(|e| HelperError::Protocol {
            message: format!("cannot pass the console log to banger-helper: {e}"),
        })?;
        match self
            .exchange_passing(request, vec![OwnedFd::from(console)])
            .await?
            .0
        {
            Response::Launched {
                pid,
                start_time_ticks,
                root,
            } => Ok(JailedLaunch {
                pid,
                start_time_ticks,
                root,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// SIGKILLs the Firecracker the helper launched for VM `vm` if it is process `pid` started
    /// at `start_time_ticks` (one that is gone, or a reused pid, is left alone), waits until it
    /// is gone, and removes its jail.
    pub async fn kill_vmm(
        &self,
        vm: &str,
        pid: u32,
        start_time_ticks: u64,
    ) -> Result<(), HelperError> {
        self.call_done(Request::KillVmm {
            vm: vm.to_owned(),
            pid,
            start_time_ticks,
        })
        .await
    }

    /// Whether this helper launches Firecracker (`None`: it was started without `--jailer`),
    /// and with which jailer and Firecracker, into which jail directory.
    pub async fn jail(&self) -> Result<Option<crate::protocol::JailState>, HelperError> {
        match self.call(Request::Jail).await? {
            Response::Jail { jail } => Ok(jail),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes VM `vm`'s jail once its Firecracker is gone; refused while it runs.
    pub async fn remove_jail(&self, vm: &str) -> Result<(), HelperError> {
        self.call_done(Request::RemoveJail { vm: vm.to_owned() })
            .await
    }

    async fn call_done(&self, request: Request) -> Result<(), HelperError> {
        match self.call(request).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn call(&self, request: Request) -> Result<Response, HelperError> {
        self.exchange(request).await.map(|(response, _)| response)
    }

    /// One request and its answer, and the connection, which may carry more (descriptors).
    async fn exchange(&self, request: Request) -> Result<(Response, UnixStream), HelperError> {
        self.exchange_passing(request, Vec::new()).await
    }

    /// [`HelperClient::exchange`], with `fds` sent right after the request's frame.
    async fn exchange_passing(
        &self,
        request: Request,
        fds: Vec<OwnedFd>,
    ) -> Result<(Response, UnixStream), HelperError> {
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
        if !fds.is_empty() {
            crate::fds::send_fds(&stream, &fds)
                .await
                .map_err(|e| self.broken(e.into()))?;
        }
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
            ok => Ok((ok, stream)),
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

/// The descriptors of a `dns_sockets` answer as the sockets they must be: a UDP socket and a
/// listening TCP socket, both bound to `expected`. The error completes "banger-helper at X …".
fn dns_sockets(fds: Vec<OwnedFd>, expected: SocketAddr) -> Result<DnsSockets, String> {
    use nix::sys::socket::{SockType, getsockopt, sockopt};

    let count = fds.len();
    let [udp, tcp]: [OwnedFd; 2] = fds.try_into().map_err(|_| {
        format!("passed {count} descriptors where a UDP and a TCP socket were asked for.")
    })?;
    let kind = |fd: &OwnedFd| getsockopt(fd, sockopt::SockType).ok();
    let listening = getsockopt(&tcp, sockopt::AcceptConn).unwrap_or(false);
    if kind(&udp) != Some(SockType::Datagram) || kind(&tcp) != Some(SockType::Stream) || !listening
    {
        return Err(
            "passed descriptors that are not a UDP socket and a listening TCP socket.".into(),
        );
    }
    let udp = std::net::UdpSocket::from(udp);
    let tcp = std::net::TcpListener::from(tcp);
    for (protocol, bound) in [("UDP", udp.local_addr()), ("TCP", tcp.local_addr())] {
        match bound {
            Ok(at) if at == expected => {}
            other => {
                return Err(format!(
                    "passed a {protocol} socket bound to {other:?} where {expected} was asked for."
                ));
            }
        }
    }
    Ok(DnsSockets { udp, tcp })
}

fn unexpected(response: &Response) -> HelperError {
    HelperError::Protocol {
        message: format!(
            "banger-helper gave an answer that does not fit the request ({response:?}); install matching banger and banger-helper binaries (`banger system install`)."
        ),
    }
}

/// The name of the tap `fd` is attached to (`TUNGETIFF`), or an error when it is no tap.
fn tap_name_of(fd: &OwnedFd) -> io::Result<String> {
    use std::os::fd::AsRawFd;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF fills one ifreq, which lives across the call.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNGETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: reading the flags member the kernel just wrote.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    if flags & libc::IFF_TAP as libc::c_short == 0 {
        return Err(io::Error::other("a tun device, not a tap"));
    }
    let name: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&name).into_owned())
}
