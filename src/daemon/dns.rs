//! bangerd's DNS server: `NAME.vm` answered from the projections on the bridge's address,
//! everything else forwarded to the host's resolvers, so that a guest can use the bridge's
//! address as its only name server.
//!
//! This module owns port 53 on the bridge's address (UDP and TCP), the answers given there,
//! and asking banger-helper to route the host's `.vm` lookups to it. It is started lazily:
//! at daemon start when the bridge already exists (guests booted by an earlier bangerd point
//! at it), and before any guest boots otherwise ([`crate::host::network::GuestDns`]). A
//! failure to bind is logged and kept for `dns.status`; guests then get the host's
//! resolvers, and the daemon carries on.
//!
//! ```text
//!  query ──▶ header? ── no (< 12 bytes, or a response) ──────────────▶ no answer
//!              │ yes
//!              ├─ source outside the bridge's subnet and loopback ───▶ REFUSED
//!              ├─ opcode other than QUERY ───────────────────────────▶ NOTIMP
//!              ├─ does not parse, or not exactly one question ───────▶ FORMERR
//!              ├─ name not under vm. ────────────────────────────────▶ forwarded upstream
//!              │                                                         (SERVFAIL when none answers)
//!              ├─ vm. itself ────────────────────────────────────────▶ NOERROR, no answer
//!              ├─ NAME.vm. with a VM holding an address ─────────────▶ A: its address;
//!              │                                                         other types: NOERROR, no answer
//!              └─ any other name under vm. ──────────────────────────▶ NXDOMAIN
//! ```
//!
//! Decisions:
//! - A VM's name answers its address for as long as the VM holds that address, which is
//!   from create to delete, running or stopped: the address is the VM's, like a host's on a
//!   LAN that is switched off, and a name that flips between an address and NXDOMAIN with
//!   every stop and start would be cached wrongly by everyone who asked. Answers live
//!   [`ANSWER_TTL_SECS`] seconds; negative answers carry no SOA, so nobody caches them.
//! - Names compare case-insensitively (VM names are lowercase DNS labels); the question is
//!   echoed as asked (its case too: some resolvers check it, 0x20 encoding).
//! - `vm.` itself exists (NOERROR, no data) so that a resolver that infers "nothing below"
//!   from an NXDOMAIN (RFC 8020) does not write off every VM's name.
//! - A packet whose header says it is a response is never answered (two servers could
//!   otherwise answer each other forever); nor is anything shorter than a header.
//! - Names under `vm.` are never forwarded: they are no one else's to answer.
//!
//! Invariants: no input makes it panic (a proptest throws random packets at [`answer`]);
//! every queue is bounded — forwards in flight ([`MAX_FORWARDS`]), TCP connections
//! ([`MAX_TCP_CONNECTIONS`]), the time a TCP client may idle ([`TCP_IDLE_TIMEOUT`]) and an
//! upstream may take ([`UPSTREAM_TIMEOUT`]); a lookup copies one address out of a view and
//! drops the guard before anything else happens.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_events::{Handle, Journal, Owner};
use banger_helper::DnsRoute;
use banger_projections::Projections;
use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::{DnsRouting, DnsStatusResult};
use crate::host::network::{GuestDns, GuestNetwork, HELPER_TIMEOUT, interface_exists};
use crate::host::vmm::BoxFuture;

/// The DNS port.
pub const DNS_PORT: u16 = banger_helper::protocol::DNS_PORT;
/// The domain bangerd answers: `NAME.vm`.
pub const VM_DOMAIN: &str = "vm";
/// How long a positive answer may be cached. Short: VMs come and go.
pub const ANSWER_TTL_SECS: u32 = 5;
/// The UDP payload bangerd says it takes, when the query uses EDNS (the size DNS flag day
/// 2020 settled on, which fits an unfragmented packet).
pub const EDNS_PAYLOAD: u16 = 1232;
/// How long one upstream resolver may take to answer a forwarded query.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once; beyond, a query gets SERVFAIL at once.
pub const MAX_FORWARDS: usize = 256;
/// TCP connections served at once; beyond, a new one is closed.
pub const MAX_TCP_CONNECTIONS: usize = 64;
/// How long a TCP client may take to send its next query.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most upstream resolvers asked (what a resolv.conf honours).
pub const MAX_UPSTREAMS: usize = 3;
/// How long the upstream list read from resolv.conf is used before it is read again.
const UPSTREAMS_TTL: Duration = Duration::from_secs(5);

/// What to do with one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// A well-formed query for a name outside `vm.`: the upstream resolvers answer it.
    Forward(Box<Message>),
    /// Not a query one can answer (shorter than a header, or a response): say nothing.
    Ignore,
}

/// Where a VM's name leads: its address, if a VM of that name holds one.
pub trait Names: Send + Sync {
    fn address_of(&self, name: &str) -> Option<Ipv4Addr>;
}

impl<F: Fn(&str) -> Option<Ipv4Addr> + Send + Sync> Names for F {
    fn address_of(&self, name: &str) -> Option<Ipv4Addr> {
        self(name)
    }
}

/// The names as the log knows them: a VM's name and the address in its ledger entries.
///
/// It holds the journal weakly: the DNS server must never keep the journal from closing when
/// bangerd exits (the final close is what leaves the log file clean). Once the journal is
/// gone every name is unknown.
pub struct JournalNames(pub std::sync::Weak<Journal<Projections>>);

impl Names for JournalNames {
    fn address_of(&self, name: &str) -> Option<Ipv4Addr> {
        let journal = self.0.upgrade()?;
        let view = journal.view();
        let vm = view.vm_by_name(name)?;
        view.handles_of(Owner::Vm(vm.id))
            .find_map(|(handle, _)| match handle {
                Handle::Ip { addr } => Some(Ipv4Addr::from(*addr)),
                _ => None,
            })
    }
}

/// The DNS header's fields this server needs before anything else is parsed.
struct RawHeader {
    id: u16,
    is_response: bool,
    op_code: u8,
    recursion_desired: bool,
}

fn raw_header(packet: &[u8]) -> Option<RawHeader> {
    let [id_hi, id_lo, flags, ..] = *packet.get(..12)? else {
        return None;
    };
    Some(RawHeader {
        id: u16::from_be_bytes([id_hi, id_lo]),
        is_response: flags & 0x80 != 0,
        op_code: (flags >> 3) & 0x0f,
        recursion_desired: flags & 0x01 != 0,
    })
}

/// The answer to `packet`, a query that arrived from `source`. Pure: the names come from
/// `names`, and nothing here does IO.
pub fn answer(packet: &[u8], source: IpAddr, subnet: (Ipv4Addr, u8), names: &dyn Names) -> Verdict {
    let Some(header) = raw_header(packet) else {
        return Verdict::Ignore;
    };
    if header.is_response {
        return Verdict::Ignore;
    }
    let bare = |code: ResponseCode| {
        let mut reply = Message::error_msg(header.id, OpCode::from_u8(header.op_code), code);
        reply.metadata.recursion_desired = header.recursion_desired;
        reply.metadata.recursion_available = true;
        encode(&reply)
    };
    if !allowed_source(source, subnet) {
        return bare(ResponseCode::Refused);
    }
    if OpCode::from_u8(header.op_code) != OpCode::Query {
        return bare(ResponseCode::NotImp);
    }
    let Ok(query) = Message::from_vec(packet) else {
        return bare(ResponseCode::FormErr);
    };
    let [question] = query.queries.as_slice() else {
        return bare(ResponseCode::FormErr);
    };
    let labels: Vec<&[u8]> = question.name().iter().collect();
    let Some((last, below)) = labels.split_last() else {
        // The root: not ours.
        return Verdict::Forward(Box::new(query));
    };
    if !last.eq_ignore_ascii_case(VM_DOMAIN.as_bytes()) {
        return Verdict::Forward(Box::new(query));
    }
    if !matches!(question.query_class(), DNSClass::IN | DNSClass::ANY) {
        return encode(&reply_to(&query, ResponseCode::Refused));
    }
    let address = match below {
        // `vm.` itself: it exists, and has no records of its own.
        [] => None,
        [label] => {
            let name = std::str::from_utf8(label).ok().map(str::to_ascii_lowercase);
            match name.and_then(|name| names.address_of(&name)) {
                Some(address) => Some(address),
                None => return encode(&reply_to(&query, ResponseCode::NXDomain)),
            }
        }
        _ => return encode(&reply_to(&query, ResponseCode::NXDomain)),
    };
    let mut reply = reply_to(&query, ResponseCode::NoError);
    if let Some(address) = address
        && matches!(question.query_type(), RecordType::A | RecordType::ANY)
    {
        reply.add_answer(Record::from_rdata(
            question.name().clone(),
            ANSWER_TTL_SECS,
            RData::A(A(address)),
        ));
    }
    encode(&reply)
}

/// A reply to `query` with `code`, echoing its question; authoritative (this server owns
/// `vm.`), with recursion available (it forwards the rest).
fn reply_to(query: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.checking_disabled = query.metadata.checking_disabled;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.metadata.response_code = code;
    reply.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    reply
}

/// SERVFAIL for a query no upstream answered.
pub fn server_failure(query: &Message) -> Vec<u8> {
    let mut reply = reply_to(query, ResponseCode::ServFail);
    reply.metadata.authoritative = false;
    match encode(&reply) {
        Verdict::Reply(bytes) => bytes,
        _ => Vec::new(),
    }
}

fn encode(message: &Message) -> Verdict {
    match message.to_vec() {
        Ok(bytes) => Verdict::Reply(bytes),
        // Nothing this server builds fails to encode; if it did, silence is the safe answer.
        Err(_) => Verdict::Ignore,
    }
}

/// Only guests (the bridge's subnet, which includes the host's own address on it) and this
/// host's loopback may ask: the forwarder is nobody else's open resolver.
fn allowed_source(source: IpAddr, (network, prefix_len): (Ipv4Addr, u8)) -> bool {
    let source = match source {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return v6.is_loopback(),
        },
        v4 => v4,
    };
    match source {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len.min(32)))
                .unwrap_or(0);
            v4.is_loopback() || u32::from(v4) & mask == u32::from(network) & mask
        }
        IpAddr::V6(_) => false,
    }
}

/// The resolvers queries outside `vm.` go to.
pub enum Upstreams {
    /// The `nameserver` lines of a resolv.conf (`/etc/resolv.conf`), re-read every few
    /// seconds. A loopback resolver (systemd-resolved's 127.0.0.53) is fine: bangerd runs on
    /// the host.
    ResolvConf {
        path: PathBuf,
        /// Addresses never forwarded to: bangerd's own (a resolv.conf naming the bridge's
        /// address would make every forward a loop).
        exclude: Vec<IpAddr>,
        cache: Mutex<Option<(Instant, Vec<SocketAddr>)>>,
    },
    /// Fixed servers (tests).
    Fixed(Vec<SocketAddr>),
}

impl Upstreams {
    pub fn resolv_conf(path: impl Into<PathBuf>, exclude: Vec<IpAddr>) -> Upstreams {
        Upstreams::ResolvConf {
            path: path.into(),
            exclude,
            cache: Mutex::new(None),
        }
    }

    /// The servers to ask, in order.
    pub fn servers(&self) -> Vec<SocketAddr> {
        match self {
            Upstreams::Fixed(servers) => servers.clone(),
            Upstreams::ResolvConf {
                path,
                exclude,
                cache,
            } => {
                let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((read_at, servers)) = cache.as_ref()
                    && read_at.elapsed() < UPSTREAMS_TTL
                {
                    return servers.clone();
                }
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let servers = parse_resolv_conf(&text, exclude);
                *cache = Some((Instant::now(), servers.clone()));
                servers
            }
        }
    }
}

/// The `nameserver` addresses of a resolv.conf, port 53, at most [`MAX_UPSTREAMS`], without
/// `exclude` and the unspecified address.
pub fn parse_resolv_conf(text: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        // A link-local IPv6 server may carry a zone (`fe80::1%eth0`); the zone is dropped.
        .filter_map(|word| word.split('%').next()?.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified() && !exclude.contains(ip))
        .take(MAX_UPSTREAMS)
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .collect()
}

/// Asks each upstream in turn over UDP, [`UPSTREAM_TIMEOUT`] each, and returns the first
/// answer to this query (same id, a response); `None` when none answered.
pub async fn forward_udp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = raw_header(query)?.id;
    for upstream in upstreams {
        // A socket per query and upstream: a fresh random port, and connect() keeps out
        // datagrams from anyone but that upstream.
        let local: SocketAddr = match upstream {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(socket) = UdpSocket::bind(local).await else {
            continue;
        };
        if socket.connect(upstream).await.is_err() || socket.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 65535];
        let wait = async {
            loop {
                match socket.recv(&mut buf).await {
                    Ok(len) => {
                        if raw_header(&buf[..len]).is_some_and(|h| h.id == id && h.is_response) {
                            return Some(len);
                        }
                    }
                    // ICMP port unreachable (nobody listens there): the next upstream.
                    Err(_) => return None,
                }
            }
        };
        if let Ok(Some(len)) = tokio::time::timeout(UPSTREAM_TIMEOUT, wait).await {
            buf.truncate(len);
            return Some(buf);
        }
    }
    None
}

/// As [`forward_udp`], over TCP (two-byte length prefixes): for a client that asked over
/// TCP, usually because the UDP answer was truncated.
pub async fn forward_tcp(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    let id = raw_header(query)?.id;
    let len = u16::try_from(query.len()).ok()?;
    for upstream in upstreams {
        let exchange = async {
            let mut stream = TcpStream::connect(upstream).await.ok()?;
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(query);
            stream.write_all(&framed).await.ok()?;
            read_tcp_message(&mut stream).await.ok().flatten()
        };
        if let Ok(Some(reply)) = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await
            && raw_header(&reply).is_some_and(|h| h.id == id && h.is_response)
        {
            return Some(reply);
        }
    }
    None
}

/// One length-prefixed message; `None` at a clean end of stream.
async fn read_tcp_message(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

/// What one server answers with: the names, who may ask, where the rest goes.
pub struct Responder {
    pub names: Arc<dyn Names>,
    pub subnet: (Ipv4Addr, u8),
    pub upstreams: Upstreams,
    forwards: Arc<Semaphore>,
}

impl Responder {
    pub fn new(names: Arc<dyn Names>, subnet: (Ipv4Addr, u8), upstreams: Upstreams) -> Responder {
        Responder {
            names,
            subnet,
            upstreams,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
        }
    }
}

/// Serves `socket` until `shutdown`.
pub async fn serve_udp(socket: UdpSocket, responder: Arc<Responder>, shutdown: CancellationToken) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 65535];
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, peer) = match received {
            Ok(received) => received,
            Err(error) => {
                // Transient (an ICMP error reported on the socket, a lack of buffers): a
                // DNS server keeps serving.
                tracing::debug!(%error, "receiving a DNS query failed");
                continue;
            }
        };
        let packet = &buf[..len];
        match answer(
            packet,
            peer.ip(),
            responder.subnet,
            responder.names.as_ref(),
        ) {
            Verdict::Reply(bytes) => {
                let _ = socket.send_to(&bytes, peer).await;
            }
            Verdict::Ignore => {}
            Verdict::Forward(query) => {
                let Ok(slot) = responder.forwards.clone().try_acquire_owned() else {
                    let _ = socket.send_to(&server_failure(&query), peer).await;
                    continue;
                };
                let packet = packet.to_vec();
                let socket = socket.clone();
                let responder = responder.clone();
                tokio::spawn(async move {
                    let upstreams = responder.upstreams.servers();
                    let reply = match forward_udp(&packet, &upstreams).await {
                        Some(reply) => reply,
                        None => server_failure(&query),
                    };
                    let _ = socket.send_to(&reply, peer).await;
                    drop(slot);
                });
            }
        }
    }
}

/// Serves `listener` until `shutdown`: each connection a sequence of length-prefixed
/// queries, answered in order.
pub async fn serve_tcp(
    listener: TcpListener,
    responder: Arc<Responder>,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of descriptors, say: keep accepting, after a breath.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let responder = responder.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = serve_tcp_connection(stream, peer, &responder) => {}
            }
            drop(slot);
        });
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, peer: SocketAddr, responder: &Responder) {
    loop {
        let packet =
            match tokio::time::timeout(TCP_IDLE_TIMEOUT, read_tcp_message(&mut stream)).await {
                Ok(Ok(Some(packet))) => packet,
                _ => return,
            };
        let reply = match answer(
            &packet,
            peer.ip(),
            responder.subnet,
            responder.names.as_ref(),
        ) {
            Verdict::Reply(bytes) => bytes,
            Verdict::Ignore => return,
            Verdict::Forward(query) => {
                let Ok(_slot) = responder.forwards.try_acquire() else {
                    return;
                };
                let upstreams = responder.upstreams.servers();
                match forward_tcp(&packet, &upstreams).await {
                    Some(reply) => reply,
                    None => server_failure(&query),
                }
            }
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Who bound port 53.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BoundBy {
    /// bangerd itself (root, or allowed to bind low ports).
    Bangerd,
    /// banger-helper, which passed the sockets.
    Helper,
}

/// bangerd's DNS server on the bridge's address: started once, on first need.
pub struct DnsService {
    /// Itself, for the tasks it starts (the network holds it as a `GuestDns`).
    this: std::sync::Weak<DnsService>,
    /// Weak: the network holds this service and it holds the network, so a strong journal
    /// here would outlive bangerd's shutdown and keep the log from its final close.
    journal: std::sync::Weak<Journal<Projections>>,
    network: Arc<GuestNetwork>,
    shutdown: CancellationToken,
    /// Held while starting, so that two boots do not both bind; `Some` once serving.
    serving: tokio::sync::Mutex<Option<BoundBy>>,
    /// What `dns.status` reports. A leaf lock: held for a copy or an assignment.
    status: Mutex<DnsStatusResult>,
}

impl DnsService {
    pub fn new(
        journal: Arc<Journal<Projections>>,
        network: Arc<GuestNetwork>,
        shutdown: CancellationToken,
    ) -> Arc<DnsService> {
        let address = network.gateway();
        Arc::new_cyclic(|this| DnsService {
            this: this.clone(),
            journal: Arc::downgrade(&journal),
            network,
            shutdown,
            serving: tokio::sync::Mutex::new(None),
            status: Mutex::new(DnsStatusResult {
                address: address.to_string(),
                serving: false,
                bound_by: None,
                error: None,
                host_routing: None,
            }),
        })
    }

    /// Makes the network ask this server before guests boot, and starts serving now when the
    /// bridge exists already (VMs booted by an earlier bangerd use it).
    pub fn install(self: &Arc<Self>) {
        self.network.set_dns(self.clone());
        if interface_exists(self.network.bridge()) {
            let service = self.clone();
            tokio::spawn(async move { service.ensure().await });
        }
    }

    pub fn status(&self) -> DnsStatusResult {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_status(&self, change: impl FnOnce(&mut DnsStatusResult)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Serves on the bridge's address, binding port 53 the first time (and again after a
    /// failure); whether it serves.
    pub async fn ensure(self: &Arc<Self>) -> bool {
        let mut serving = self.serving.lock().await;
        if serving.is_some() {
            return true;
        }
        let address = self.network.gateway();
        let (udp, tcp, bound_by) = match self.bind(address).await {
            Ok(bound) => bound,
            Err(error) => {
                tracing::warn!(%address, %error, "bangerd's DNS server cannot serve on the bridge; guests get the host's name servers instead");
                self.set_status(|status| {
                    status.serving = false;
                    status.error = Some(error);
                });
                return false;
            }
        };
        let responder = Arc::new(Responder::new(
            Arc::new(JournalNames(self.journal.clone())),
            self.network.subnet(),
            Upstreams::resolv_conf("/etc/resolv.conf", vec![IpAddr::V4(address)]),
        ));
        tokio::spawn(serve_udp(udp, responder.clone(), self.shutdown.clone()));
        tokio::spawn(serve_tcp(tcp, responder, self.shutdown.clone()));
        *serving = Some(bound_by);
        drop(serving);
        tracing::info!(%address, bound_by = ?bound_by, "serving DNS for .vm names on the bridge");
        self.set_status(|status| {
            status.serving = true;
            status.error = None;
            status.bound_by = Some(
                match bound_by {
                    BoundBy::Bangerd => "bangerd",
                    BoundBy::Helper => "banger-helper",
                }
                .to_owned(),
            );
        });
        // The host's own lookups of `.vm`: in the background, a boot does not wait for it.
        let service = self.clone();
        tokio::spawn(async move { service.route(address).await });
        true
    }

    /// Binds port 53 on `address`: itself when it may, through banger-helper otherwise.
    async fn bind(&self, address: Ipv4Addr) -> Result<(UdpSocket, TcpListener, BoundBy), String> {
        let at = SocketAddr::from((address, DNS_PORT));
        let (udp, tcp, bound_by) = match std::net::UdpSocket::bind(at) {
            Ok(udp) => {
                let tcp = std::net::TcpListener::bind(at)
                    .map_err(|e| format!("cannot bind TCP {at}: {e}"))?;
                (udp, tcp, BoundBy::Bangerd)
            }
            Err(denied) if denied.kind() == std::io::ErrorKind::PermissionDenied => {
                let helper = self.network.helper();
                let sockets = tokio::time::timeout(
                    HELPER_TIMEOUT,
                    helper.bind_dns(self.network.bridge(), address, DNS_PORT),
                )
                .await
                .map_err(|_| {
                    format!(
                        "banger-helper ({}) did not bind {at} within {}s",
                        helper.socket().display(),
                        HELPER_TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| {
                    format!("bangerd may not bind {at} ({denied}), and banger-helper could not bind it either: {e}")
                })?;
                (sockets.udp, sockets.tcp, BoundBy::Helper)
            }
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                    format!(
                        "; another program holds it (a DNS server on every address, such as dnsmasq?): `ss -lnp 'sport = :{DNS_PORT}'` shows which"
                    )
                } else {
                    String::new()
                };
                return Err(format!("cannot bind UDP {at}: {e}{hint}"));
            }
        };
        let adopt = |e: std::io::Error| format!("cannot use the sockets bound on {at}: {e}");
        udp.set_nonblocking(true).map_err(adopt)?;
        tcp.set_nonblocking(true).map_err(adopt)?;
        Ok((
            UdpSocket::from_std(udp).map_err(adopt)?,
            TcpListener::from_std(tcp).map_err(adopt)?,
            bound_by,
        ))
    }

    /// Asks banger-helper to route the host's `.vm` lookups here, and records the outcome.
    async fn route(&self, address: Ipv4Addr) {
        let helper = self.network.helper();
        let outcome = match tokio::time::timeout(
            HELPER_TIMEOUT,
            helper.route_dns(self.network.bridge(), address),
        )
        .await
        {
            Ok(Ok(DnsRoute::Routed)) => DnsRouting::Routed,
            Ok(Ok(DnsRoute::Skipped { reason })) => DnsRouting::Skipped { reason },
            Ok(Err(error)) => DnsRouting::Failed {
                error: error.to_string(),
            },
            Err(_) => DnsRouting::Failed {
                error: format!(
                    "banger-helper ({}) did not answer within {}s",
                    helper.socket().display(),
                    HELPER_TIMEOUT.as_secs()
                ),
            },
        };
        match &outcome {
            DnsRouting::Routed => {
                tracing::info!(
                    bridge = self.network.bridge(),
                    "the host resolves .vm names through systemd-resolved"
                )
            }
            DnsRouting::Skipped { reason } => {
                tracing::info!(%reason, "the host does not route .vm names to bangerd")
            }
            DnsRouting::Failed { error } => {
                tracing::warn!(%error, "routing the host's .vm lookups to bangerd failed")
            }
        }
        self.set_status(|status| status.host_routing = Some(outcome));
    }
}

impl GuestDns for DnsService {
    fn ensure_serving(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            // `ensure` wants the Arc: the tasks it starts outlive the call.
            match self.this.upgrade() {
                Some(this) => this.ensure().await,
                None => false,
            }
        })
    }
}

/// `dns.status`: what the DNS server does, for `banger doctor` and people.
pub async fn status(
    daemon: Arc<super::Daemon>,
    _: super::dispatch::Cx,
    _: crate::api::NoParams,
) -> Result<DnsStatusResult, crate::rpc::protocol::RpcError> {
    Ok(daemon.dns.status())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, Query};
    use hickory_proto::rr::Name;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;

    const DEV: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
    const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 30, 0, 0), 24);
    const GUEST: IpAddr = IpAddr::V4(Ipv4Addr::new(172, 30, 0, 7));

    fn names() -> impl Names {
        |name: &str| (name == "dev").then_some(DEV)
    }

    fn query_message(name: &str, record_type: RecordType) -> Message {
        let mut message = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
        message
    }

    fn query(name: &str, record_type: RecordType) -> Vec<u8> {
        query_message(name, record_type).to_vec().unwrap()
    }

    /// The reply `answer` gives, decoded; panics on anything but a reply.
    fn reply(packet: &[u8]) -> Message {
        reply_from(packet, GUEST)
    }

    fn reply_from(packet: &[u8], source: IpAddr) -> Message {
        match answer(packet, source, SUBNET, &names()) {
            Verdict::Reply(bytes) => Message::from_vec(&bytes).expect("a reply decodes"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn addresses(message: &Message) -> Vec<Ipv4Addr> {
        message
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::A(A(address)) => Some(*address),
                _ => None,
            })
            .collect()
    }

    /// A raw header: id 0x0102, the given flag bytes and counts, then `rest`.
    fn raw(flags: [u8; 2], counts: [u16; 4], rest: &[u8]) -> Vec<u8> {
        let mut packet = vec![0x01, 0x02, flags[0], flags[1]];
        for count in counts {
            packet.extend_from_slice(&count.to_be_bytes());
        }
        packet.extend_from_slice(rest);
        packet
    }

    #[test]
    fn a_vm_name_answers_its_address_whatever_the_case_and_final_dot() {
        for name in ["dev.vm.", "dev.vm", "DEV.VM.", "Dev.Vm"] {
            let reply = reply(&query(name, RecordType::A));
            assert_eq!(reply.metadata.id, 0xbeef);
            assert_eq!(reply.metadata.message_type, MessageType::Response);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NoError,
                "{name}"
            );
            assert!(reply.metadata.authoritative && reply.metadata.recursion_available);
            assert!(reply.metadata.recursion_desired, "RD is copied");
            assert_eq!(addresses(&reply), [DEV], "{name}");
            assert_eq!(reply.answers[0].ttl, ANSWER_TTL_SECS);
            // The question and the answer's owner name as asked, case included (0x20); on
            // the wire every name ends with the root.
            let asked = format!("{}.", name.trim_end_matches('.'));
            assert_eq!(reply.queries[0].name().to_ascii(), asked);
            assert_eq!(reply.answers[0].name.to_ascii(), asked);
        }
    }

    #[test]
    fn other_record_types_of_a_vm_name_are_answered_with_no_data() {
        for record_type in [
            RecordType::AAAA,
            RecordType::MX,
            RecordType::TXT,
            RecordType::CNAME,
            RecordType::HTTPS,
        ] {
            let reply = reply(&query("dev.vm.", record_type));
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
            assert!(reply.answers.is_empty(), "{record_type}: {reply:?}");
        }
        // ANY gets what there is.
        assert_eq!(addresses(&reply(&query("dev.vm.", RecordType::ANY))), [DEV]);
    }

    #[test]
    fn unknown_names_under_vm_are_nxdomain_and_vm_itself_exists() {
        for name in ["nope.vm.", "x.dev.vm.", "a.b.c.vm.", "de.vm."] {
            let reply = reply(&query(name, RecordType::A));
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{name}"
            );
            assert!(reply.answers.is_empty());
            assert!(reply.metadata.authoritative);
        }
        // Labels no VM name can be, in raw bytes: UTF-8, a dot, a NUL inside a label.
        for label in [&b"d\xc3\xa9v"[..], b"de.v", b"de\0v", b"\xff\xfe"] {
            let mut question = vec![label.len() as u8];
            question.extend_from_slice(label);
            question.extend_from_slice(b"\x02vm\x00\x00\x01\x00\x01");
            let reply = reply(&raw([0x01, 0x00], [1, 0, 0, 0], &question));
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{label:?}"
            );
        }
        // `vm.` itself: NOERROR and nothing, so that no resolver writes off what is below.
        let apex = reply(&query("vm.", RecordType::A));
        assert_eq!(apex.metadata.response_code, ResponseCode::NoError);
        assert!(apex.answers.is_empty());
        // A VM whose name is gone (deleted): NXDOMAIN.
        let nobody = |_: &str| None;
        match answer(&query("dev.vm.", RecordType::A), GUEST, SUBNET, &nobody) {
            Verdict::Reply(bytes) => assert_eq!(
                Message::from_vec(&bytes).unwrap().metadata.response_code,
                ResponseCode::NXDomain
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_outside_vm_are_forwarded_and_names_under_it_never() {
        for name in [
            "example.com.",
            "vm.example.com.",
            "dev.vm.example.com.",
            "vmx.",
            ".",
        ] {
            match answer(&query(name, RecordType::A), GUEST, SUBNET, &names()) {
                Verdict::Forward(message) => {
                    assert_eq!(message.queries[0].name().to_ascii(), name)
                }
                other => panic!("{name}: expected a forward, got {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_packets_get_formerr_when_a_header_can_be_read_and_nothing_otherwise() {
        for short in [
            &[][..],
            &[0x01],
            &[0x01, 0x02, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(answer(short, GUEST, SUBNET, &names()), Verdict::Ignore);
        }
        let cases = [
            // One question announced, none there.
            raw([0x01, 0x00], [1, 0, 0, 0], &[]),
            // A question cut short.
            raw([0x01, 0x00], [1, 0, 0, 0], b"\x03dev\x02vm"),
            // A label pointing at itself.
            raw([0x01, 0x00], [1, 0, 0, 0], &[0xc0, 12, 0, 1, 0, 1]),
            // No question at all, and two questions.
            raw([0x01, 0x00], [0, 0, 0, 0], &[]),
            raw(
                [0x01, 0x00],
                [2, 0, 0, 0],
                b"\x03dev\x02vm\x00\x00\x01\x00\x01\x03dev\x02vm\x00\x00\x01\x00\x01",
            ),
            // Garbage after a header.
            raw([0x01, 0x00], [0xffff, 0xffff, 0, 0], &[0xff; 40]),
        ];
        for packet in cases {
            let reply = reply(&packet);
            assert_eq!(reply.metadata.id, 0x0102, "{packet:?}");
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::FormErr,
                "{packet:?}"
            );
            assert_eq!(reply.metadata.message_type, MessageType::Response);
        }
        // A response (QR set) is never answered, however it looks.
        let mut response = query("dev.vm.", RecordType::A);
        response[2] |= 0x80;
        assert_eq!(answer(&response, GUEST, SUBNET, &names()), Verdict::Ignore);
    }

    #[test]
    fn opcodes_other_than_query_are_refused_as_not_implemented() {
        for op_code in [1u8, 2, 4, 5, 6, 15] {
            let mut packet = query("dev.vm.", RecordType::A);
            packet[2] = (packet[2] & 0x87) | (op_code << 3);
            let reply = reply(&packet);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NotImp,
                "opcode {op_code}"
            );
            assert_eq!(reply.metadata.op_code, OpCode::from_u8(op_code));
            assert!(reply.answers.is_empty());
        }
    }

    #[test]
    fn only_guests_and_loopback_may_ask() {
        let packet = query("dev.vm.", RecordType::A);
        for source in [
            IpAddr::V4(Ipv4Addr::new(172, 30, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(172, 30, 0, 254)),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv4Addr::new(172, 30, 0, 9).to_ipv6_mapped()),
        ] {
            assert_eq!(addresses(&reply_from(&packet, source)), [DEV], "{source}");
        }
        for source in [
            IpAddr::V4(Ipv4Addr::new(172, 30, 1, 2)),
            IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)),
            IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
            IpAddr::V6("2001:db8::1".parse().unwrap()),
        ] {
            let reply = reply_from(&packet, source);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::Refused,
                "{source}"
            );
            assert!(reply.answers.is_empty());
            // Nor forwarded for them.
            assert!(matches!(
                answer(
                    &query("example.com.", RecordType::A),
                    source,
                    SUBNET,
                    &names()
                ),
                Verdict::Reply(_)
            ));
        }
    }

    #[test]
    fn edns_is_answered_with_edns_and_other_classes_are_refused() {
        let mut message = query_message("dev.vm.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        message.set_edns(edns);
        let reply = reply(&message.to_vec().unwrap());
        assert_eq!(
            reply.edns.as_ref().map(|e| e.max_payload()),
            Some(EDNS_PAYLOAD)
        );
        assert_eq!(addresses(&reply), [DEV]);
        assert!(
            reply_from(&query("dev.vm.", RecordType::A), GUEST)
                .edns
                .is_none()
        );

        let mut chaos = query_message("dev.vm.", RecordType::TXT);
        chaos.queries[0].set_query_class(DNSClass::CH);
        let refused = reply_from(&chaos.to_vec().unwrap(), GUEST);
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn resolv_conf_gives_at_most_three_servers_on_port_53() {
        let text = "# comment\nsearch example.com\nnameserver 127.0.0.53\noptions edns0\n\
                    nameserver   10.0.0.2  \nnameserver fe80::1%eth0\nnameserver 172.30.0.1\n\
                    nameserver 0.0.0.0\nnameserver bogus\nnameserver 9.9.9.9\nnameserver 1.1.1.1\n";
        let servers = parse_resolv_conf(text, &[IpAddr::V4(Ipv4Addr::new(172, 30, 0, 1))]);
        let expected: Vec<SocketAddr> = ["127.0.0.53:53", "10.0.0.2:53", "[fe80::1]:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(servers, expected);
        assert!(parse_resolv_conf("", &[]).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// Whatever arrives, the server never panics; what it sends back is a response to
        /// that packet's id.
        #[test]
        fn random_packets_never_crash_the_server(packet in proptest::collection::vec(any::<u8>(), 0..600)) {
            check_verdict(&packet);
        }

        /// The same, from real queries with bytes changed: the parser's interesting edges.
        #[test]
        fn mangled_queries_never_crash_the_server(
            name in prop_oneof![Just("dev.vm."), Just("nope.vm."), Just("example.com."), Just("vm.")],
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut packet = query(name, RecordType::A);
            for (at, byte) in flips {
                let at = at.index(packet.len());
                packet[at] = byte;
            }
            packet.truncate(cut.index(packet.len() + 1));
            check_verdict(&packet);
        }
    }

    fn check_verdict(packet: &[u8]) {
        match answer(packet, GUEST, SUBNET, &names()) {
            Verdict::Reply(bytes) => {
                assert!(packet.len() >= 12);
                assert_eq!(bytes[..2], packet[..2], "the reply carries the query's id");
                assert_eq!(bytes[2] & 0x80, 0x80, "the reply is a response");
                Message::from_vec(&bytes).expect("every reply decodes");
            }
            Verdict::Forward(message) => {
                assert_eq!(message.queries.len(), 1);
                assert_eq!(message.metadata.op_code, OpCode::Query);
            }
            Verdict::Ignore => assert!(packet.len() < 12 || packet[2] & 0x80 != 0),
        }
    }

    /// A fake upstream resolver on loopback: answers every query for `example.com.` with
    /// 93.184.216.34, after first sending a datagram with the wrong id (which the forwarder
    /// must skip).
    async fn fake_udp_upstream() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
                let query = Message::from_vec(&buf[..len]).unwrap();
                let mut wrong = upstream_reply(&query);
                wrong.metadata.id = query.metadata.id.wrapping_add(1);
                let _ = socket.send_to(&wrong.to_vec().unwrap(), peer).await;
                let _ = socket
                    .send_to(&upstream_reply(&query).to_vec().unwrap(), peer)
                    .await;
            }
        });
        at
    }

    fn upstream_reply(query: &Message) -> Message {
        let mut reply = Message::response(query.metadata.id, OpCode::Query);
        reply.add_queries(query.queries.iter().cloned());
        reply.add_answer(Record::from_rdata(
            query.queries[0].name().clone(),
            300,
            RData::A(A(Ipv4Addr::new(93, 184, 216, 34))),
        ));
        reply
    }

    async fn fake_tcp_upstream() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    while let Ok(Some(packet)) = read_tcp_message(&mut stream).await {
                        let query = Message::from_vec(&packet).unwrap();
                        let reply = upstream_reply(&query).to_vec().unwrap();
                        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&reply);
                        if stream.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        at
    }

    /// A loopback port nobody listens on (UDP: ICMP says so; TCP: refused).
    fn dead_port() -> SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    }

    #[tokio::test]
    async fn the_forwarder_asks_upstreams_in_turn_and_takes_the_matching_answer() {
        let fake = fake_udp_upstream().await;
        let packet = query("example.com.", RecordType::A);
        let reply = forward_udp(&packet, &[dead_port(), fake])
            .await
            .expect("forwarded");
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.id, 0xbeef);
        assert_eq!(addresses(&reply), [Ipv4Addr::new(93, 184, 216, 34)]);
        assert_eq!(forward_udp(&packet, &[dead_port()]).await, None);
        assert_eq!(forward_udp(&packet, &[]).await, None);

        let fake = fake_tcp_upstream().await;
        let reply = forward_tcp(&packet, &[dead_port(), fake])
            .await
            .expect("forwarded");
        assert_eq!(
            addresses(&Message::from_vec(&reply).unwrap()),
            [Ipv4Addr::new(93, 184, 216, 34)]
        );
        assert_eq!(forward_tcp(&packet, &[dead_port()]).await, None);
    }

    async fn udp_exchange(server: SocketAddr, packet: &[u8]) -> Message {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(packet, server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (len, _) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        Message::from_vec(&buf[..len]).unwrap()
    }

    async fn tcp_exchange(stream: &mut TcpStream, packet: &[u8]) -> Message {
        let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(packet);
        stream.write_all(&framed).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), read_tcp_message(stream))
            .await
            .expect("an answer in time")
            .unwrap()
            .expect("a message");
        Message::from_vec(&reply).unwrap()
    }

    #[tokio::test]
    async fn the_server_answers_vm_names_and_forwards_the_rest_over_udp_and_tcp() {
        let responder = Arc::new(Responder::new(
            Arc::new(names()),
            SUBNET,
            Upstreams::Fixed(vec![fake_udp_upstream().await]),
        ));
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (udp_at, tcp_at) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let udp_task = tokio::spawn(serve_udp(udp, responder.clone(), shutdown.clone()));
        let tcp_responder = Arc::new(Responder::new(
            Arc::new(names()),
            SUBNET,
            Upstreams::Fixed(vec![fake_tcp_upstream().await]),
        ));
        let tcp_task = tokio::spawn(serve_tcp(tcp, tcp_responder, shutdown.clone()));

        let reply = udp_exchange(udp_at, &query("dev.vm.", RecordType::A)).await;
        assert_eq!(addresses(&reply), [DEV]);
        let reply = udp_exchange(udp_at, &query("gone.vm.", RecordType::A)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        let reply = udp_exchange(udp_at, &query("example.com.", RecordType::A)).await;
        assert_eq!(addresses(&reply), [Ipv4Addr::new(93, 184, 216, 34)]);
        // Garbage gets FORMERR, and the server goes on serving.
        let reply = udp_exchange(udp_at, &raw([0x01, 0x00], [1, 0, 0, 0], &[0xc0])).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

        // Several queries on one TCP connection, local and forwarded.
        let mut stream = TcpStream::connect(tcp_at).await.unwrap();
        let reply = tcp_exchange(&mut stream, &query("DEV.vm.", RecordType::A)).await;
        assert_eq!(addresses(&reply), [DEV]);
        let reply = tcp_exchange(&mut stream, &query("example.com.", RecordType::A)).await;
        assert_eq!(addresses(&reply), [Ipv4Addr::new(93, 184, 216, 34)]);
        let reply = tcp_exchange(&mut stream, &query("dev.vm.", RecordType::AAAA)).await;
        assert_eq!(
            (reply.metadata.response_code, reply.answers.len()),
            (ResponseCode::NoError, 0)
        );

        // No upstream answers: SERVFAIL, with the question.
        let lonely = Arc::new(Responder::new(
            Arc::new(names()),
            SUBNET,
            Upstreams::Fixed(vec![dead_port()]),
        ));
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let lonely_at = udp.local_addr().unwrap();
        tokio::spawn(serve_udp(udp, lonely, shutdown.clone()));
        let reply = udp_exchange(lonely_at, &query("example.com.", RecordType::A)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(reply.queries.len(), 1);

        shutdown.cancel();
        udp_task.await.unwrap();
        tcp_task.await.unwrap();
    }
}
