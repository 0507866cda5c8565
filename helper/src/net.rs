//! The host side effects: bridge, taps, addresses, forwarding and banger's nftables table.
//!
//! This module owns every syscall the helper makes on the network. It is only ever called by
//! the server with arguments that already passed [`crate::validate`]. Invariants:
//!
//! - Every operation is an idempotent "ensure" or a removal that treats absence as success, so
//!   bangerd may repeat any request after a crash without harm.
//! - It touches only interfaces whose names match banger's patterns, and refuses to take over
//!   or delete one of those names when it belongs to a different kind of interface (a tap name
//!   that is not a tap, a bridge name that is not a bridge).
//! - In nftables it touches only the `ip banger` table, always in one `nft -f -` transaction,
//!   so the table is replaced atomically and other tables are never read or written.
//! - Links, addresses and masters go through rtnetlink; taps are created with the tun ioctls
//!   because the kernel cannot create a tun/tap device over netlink.
//! - DNS sockets are bound only on an address the named banger bridge carries, port 53
//!   (checked here against the kernel's view, after `validate` checked the shapes); the
//!   resolver is told about the bridge only through `resolvectl` at a fixed path, only when
//!   systemd-resolved runs, and only from the host's own network namespace (pid 1's): from any
//!   other namespace an interface name would designate a different link than resolved sees.

use std::fs::OpenOptions;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::packet_core::Nla;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};
use tokio::io::AsyncWriteExt;

use crate::networks::Networks;
use crate::protocol::{NetworkSpec, NetworkState};
use crate::validate::{self, Subnet};

/// Why an operation was not carried out; maps onto the protocol's error kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    /// Nothing was done because the request would take over or harm something not banger's.
    Refused(String),
    /// The operation was attempted and the host said no.
    Failed(String),
}

type OpResult<T> = Result<T, OpError>;

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::Refused(message) | OpError::Failed(message) => f.write_str(message),
        }
    }
}

/// Where nft is looked up. A fixed list, not `$PATH`: a root helper must not run whatever
/// binary the environment happens to put first.
const NFT_CANDIDATES: &[&str] = &["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"];

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Where resolvectl is looked up: a fixed list, for the reason nft's is.
const RESOLVECTL_CANDIDATES: &[&str] = &["/usr/bin/resolvectl", "/bin/resolvectl"];

/// The runtime directory systemd-resolved keeps while it runs.
const RESOLVED_RUNTIME_DIR: &str = "/run/systemd/resolve";

/// How long one resolvectl call may take (it is one D-Bus round trip).
const RESOLVECTL_TIMEOUT: Duration = Duration::from_secs(10);

/// The domain routed to banger's DNS server.
pub const VM_DOMAIN: &str = "vm";

// IFLA_TUN_* attributes inside IFLA_INFO_DATA of a "tun" link (linux/if_link.h). The netlink
// crate does not decode them, so they are read from the raw attributes.
const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PERSIST: u16 = 6;

/// What the helper needs to know about one interface.
#[derive(Debug, Clone)]
struct Link {
    index: u32,
    name: String,
    kind: Option<InfoKind>,
    up: bool,
    controller: Option<u32>,
    tun: TunInfo,
}

/// The tun driver's view of a tun/tap link, as reported over netlink.
#[derive(Debug, Clone, Default)]
struct TunInfo {
    /// IFF_TUN or IFF_TAP; `None` when the kernel did not report it.
    mode: Option<u8>,
    persist: Option<bool>,
    /// `None` when the device has no owner (any CAP_NET_ADMIN process may attach).
    owner: Option<u32>,
}

impl Link {
    fn from_message(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            controller: None,
            tun: TunInfo::default(),
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Controller(index) => link.controller = Some(index),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind),
                            LinkInfo::Data(InfoData::Tun(nlas)) => {
                                for nla in nlas {
                                    let mut value = vec![0u8; nla.value_len()];
                                    nla.emit_value(&mut value);
                                    match (nla.kind(), value.as_slice()) {
                                        (IFLA_TUN_OWNER, [a, b, c, d]) => {
                                            link.tun.owner =
                                                Some(u32::from_ne_bytes([*a, *b, *c, *d]))
                                        }
                                        (IFLA_TUN_TYPE, [t]) => link.tun.mode = Some(*t),
                                        (IFLA_TUN_PERSIST, [p]) => link.tun.persist = Some(*p != 0),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    fn is_bridge(&self) -> bool {
        self.kind == Some(InfoKind::Bridge)
    }

    /// A tun-driver device in tap mode. Older kernels do not report the mode; then the kind
    /// alone decides.
    fn is_tap(&self) -> bool {
        self.kind == Some(InfoKind::Tun)
            && self.tun.mode.is_none_or(|m| i32::from(m) == libc::IFF_TAP)
    }

    fn describe_kind(&self) -> String {
        match &self.kind {
            Some(InfoKind::Tun) => "a tun device (not a tap)".to_string(),
            Some(kind) => format!("a {kind} interface"),
            None => "an interface of no particular kind (for example a physical NIC or loopback)"
                .to_string(),
        }
    }
}

/// Formats a netlink failure as the errno it carries, which is what a person can act on.
fn netlink_failure(what: &str, err: rtnetlink::Error) -> OpError {
    let detail = match &err {
        rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => {
            io::Error::from_raw_os_error(-msg.raw_code()).to_string()
        }
        other => other.to_string(),
    };
    OpError::Failed(format!("{what} failed: {detail}."))
}

fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => Some(-msg.raw_code()),
        _ => None,
    }
}

/// The helper's handle on the host network of the namespace it was started in.
pub struct Host {
    handle: Handle,
}

impl Host {
    /// Opens the rtnetlink socket. Must be called inside a tokio runtime: the connection runs as
    /// a task on it.
    pub fn connect() -> io::Result<Host> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Host { handle })
    }

    async fn find_link(&self, name: &str) -> OpResult<Option<Link>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(Link::from_message(msg))),
            Ok(None) => Ok(None),
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(netlink_failure(&format!("looking up interface {name}"), e)),
        }
    }

    async fn all_links(&self) -> OpResult<Vec<Link>> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| netlink_failure("listing interfaces", e))?;
        Ok(links.into_iter().map(Link::from_message).collect())
    }

    /// Sets the link up and, when given, its master; a no-op when both already hold.
    async fn set_up(&self, link: &Link, controller: Option<u32>) -> OpResult<()> {
        if link.up && (controller.is_none() || link.controller == controller) {
            return Ok(());
        }
        let mut msg = LinkUnspec::new_with_index(link.index).up();
        if let Some(index) = controller {
            msg = msg.controller(index);
        }
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|e| netlink_failure(&format!("bringing up {}", link.name), e))
    }

    /// See [`crate::HelperClient::ensure_network`]. `spec` is one of `networks` (the server
    /// checked it).
    pub async fn ensure_network(
        &self,
        spec: &NetworkSpec,
        subnet: Subnet,
        networks: &Networks,
    ) -> OpResult<()> {
        let bridge = self.ensure_bridge(&spec.bridge).await?;
        self.set_up(&bridge, None).await?;
        self.ensure_only_address(&bridge, spec.gateway, spec.prefix_len)
            .await?;
        std::fs::write(IP_FORWARD, "1").map_err(|e| {
            OpError::Failed(format!(
                "Enabling IPv4 forwarding (writing 1 to {IP_FORWARD}) failed: {e}."
            ))
        })?;
        let mut present = self.present_networks(networks, None).await?;
        if !present.iter().any(|(bridge, _)| *bridge == spec.bridge) {
            present.push((spec.bridge.clone(), subnet));
        }
        run_nft(&nat_ruleset(&present)).await
    }

    /// Whether each of `networks` is in place: its bridge with the gateway address, and its
    /// masquerade rule in banger's table. Reads only; a missing nft is an error (the network
    /// cannot be made without it).
    pub async fn network_states(&self, networks: &[NetworkSpec]) -> OpResult<Vec<NetworkState>> {
        let table = list_banger_table().await?;
        let mut states = Vec::new();
        for spec in networks {
            let bridge = match self.find_link(&spec.bridge).await? {
                Some(link) if link.is_bridge() => {
                    self.ipv4_addresses(&link).await?.contains(&spec.gateway)
                }
                _ => false,
            };
            let nat = match (&table, validate::network_spec(spec)) {
                (Some(table), Ok(subnet)) => table.contains(&format!(
                    "ip saddr {subnet} oifname != \"{}\" masquerade",
                    spec.bridge
                )),
                _ => false,
            };
            states.push(NetworkState {
                spec: spec.clone(),
                bridge,
                nat,
            });
        }
        Ok(states)
    }

    /// The configured networks whose bridge exists now (but `except`), with their subnets: the
    /// ones whose rules banger's table holds. Derived from the kernel each time, so the helper
    /// keeps no state across its own restarts.
    async fn present_networks(
        &self,
        networks: &Networks,
        except: Option<&str>,
    ) -> OpResult<Vec<(String, Subnet)>> {
        let mut present = Vec::new();
        for assigned in networks.all() {
            if Some(assigned.spec.bridge.as_str()) == except {
                continue;
            }
            if self
                .find_link(&assigned.spec.bridge)
                .await?
                .is_some_and(|link| link.is_bridge())
            {
                present.push((assigned.spec.bridge.clone(), assigned.subnet));
            }
        }
        Ok(present)
    }

    async fn ensure_bridge(&self, name: &str) -> OpResult<Link> {
        match self.find_link(name).await? {
            Some(link) if link.is_bridge() => return Ok(link),
            Some(link) => {
                return Err(OpError::Refused(format!(
                    "Interface {name} exists and is {}, not a bridge; banger will not take it over. Remove it or configure another bridge name.",
                    link.describe_kind()
                )));
            }
            None => {}
        }
        match self
            .handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
        {
            Ok(()) => {}
            // Someone (another helper request, or a person) created it between the lookup and
            // the add; the second lookup decides whether it is usable.
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(netlink_failure(&format!("Creating bridge {name}"), e)),
        }
        match self.find_link(name).await? {
            Some(link) if link.is_bridge() => Ok(link),
            _ => Err(OpError::Failed(format!(
                "Bridge {name} was created but cannot be found again; check `ip link show {name}`."
            ))),
        }
    }

    /// The bridge is banger's: its IPv4 addresses are exactly the gateway. Stale addresses from
    /// an earlier subnet are removed so they do not leave a second route behind.
    async fn ensure_only_address(
        &self,
        bridge: &Link,
        gateway: Ipv4Addr,
        prefix_len: u8,
    ) -> OpResult<()> {
        let addresses: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(bridge.index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| {
                netlink_failure(&format!("Listing the addresses of {}", bridge.name), e)
            })?;
        let mut present = false;
        for msg in addresses {
            if msg.header.family != AddressFamily::Inet || msg.header.index != bridge.index {
                continue;
            }
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            });
            if addr == Some(gateway) && msg.header.prefix_len == prefix_len {
                present = true;
                continue;
            }
            let shown = addr.map_or_else(|| "?".to_string(), |a| a.to_string());
            self.handle
                .address()
                .del(msg.clone())
                .execute()
                .await
                .map_err(|e| {
                    netlink_failure(
                        &format!(
                            "Removing stale address {shown}/{} from {}",
                            msg.header.prefix_len, bridge.name
                        ),
                        e,
                    )
                })?;
        }
        if present {
            return Ok(());
        }
        match self
            .handle
            .address()
            .add(bridge.index, IpAddr::V4(gateway), prefix_len)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(netlink_failure(
                &format!("Adding address {gateway}/{prefix_len} to {}", bridge.name),
                e,
            )),
        }
    }

    /// See [`crate::HelperClient::ensure_tap`]. `owner` is the caller's uid from SO_PEERCRED.
    pub async fn ensure_tap(&self, tap: &str, bridge: &str, owner: u32) -> OpResult<()> {
        let bridge_link = match self.find_link(bridge).await? {
            Some(link) if link.is_bridge() => link,
            Some(link) => {
                return Err(OpError::Refused(format!(
                    "Interface {bridge} is {}, not a bridge; taps can only be attached to banger's bridge.",
                    link.describe_kind()
                )));
            }
            None => {
                return Err(OpError::Failed(format!(
                    "Bridge {bridge} does not exist, so tap {tap} cannot be attached to it; set up the network first (ensure_network, or `banger doctor` to check)."
                )));
            }
        };
        let needs_attach = match self.find_link(tap).await? {
            Some(link) if !link.is_tap() => {
                return Err(OpError::Refused(format!(
                    "Interface {tap} exists and is {}, not a tap; banger will not take it over. Remove it by hand if it is a leftover.",
                    link.describe_kind()
                )));
            }
            Some(link) => {
                refuse_foreign_tap(&link, owner)?;
                link.tun.owner != Some(owner) || link.tun.persist == Some(false)
            }
            None => true,
        };
        if needs_attach {
            make_persistent_tap(tap, owner).map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::EBUSY) {
                    " The tap is open by a running process (a VMM); stop it before changing the tap's owner."
                } else {
                    ""
                };
                OpError::Failed(format!("Creating persistent tap {tap} owned by uid {owner} through /dev/net/tun failed: {e}.{hint}"))
            })?;
        }
        let link = self.find_link(tap).await?.ok_or_else(|| {
            OpError::Failed(format!(
                "Tap {tap} was created but cannot be found again; check `ip link show {tap}`."
            ))
        })?;
        self.set_up(&link, Some(bridge_link.index)).await?;
        // Read the result back: the caller relies on the owner to open the tap without root.
        match self.find_link(tap).await? {
            Some(link)
                if link.is_tap()
                    && link.up
                    && link.controller == Some(bridge_link.index)
                    // A kernel too old to report tun details (no mode) cannot be checked.
                    && (link.tun.mode.is_none() || link.tun.owner == Some(owner)) =>
            {
                Ok(())
            }
            Some(link) => Err(OpError::Failed(format!(
                "Tap {tap} does not have the expected state after setup (up: {}, master index: {:?}, owner: {:?}, wanted master {bridge} and owner {owner}).",
                link.up, link.controller, link.tun.owner
            ))),
            None => Err(OpError::Failed(format!(
                "Tap {tap} disappeared while it was being set up; try again."
            ))),
        }
    }

    /// See [`crate::HelperClient::open_tap`]: only a tap `caller` owns (an unowned one must be
    /// claimed with `ensure_tap` first), attached as Firecracker and QEMU attach theirs.
    pub async fn open_tap(&self, tap: &str, caller: u32) -> OpResult<OwnedFd> {
        let link = match self.find_link(tap).await? {
            Some(link) if link.is_tap() => link,
            Some(link) => {
                return Err(OpError::Refused(format!(
                    "Interface {tap} is {}, not a tap.",
                    link.describe_kind()
                )));
            }
            None => {
                return Err(OpError::Failed(format!(
                    "Tap {tap} does not exist; make it first (ensure_tap)."
                )));
            }
        };
        if link.tun.owner != Some(caller) {
            refuse_foreign_tap(&link, caller)?;
            return Err(OpError::Refused(format!(
                "Tap {tap} has no owner; claim it with ensure_tap before opening it."
            )));
        }
        attach_tap(tap).map_err(|e| {
            OpError::Failed(format!(
                "Opening tap {tap} through /dev/net/tun failed: {e}."
            ))
        })
    }

    /// See [`crate::HelperClient::delete_tap`]. `caller` is the asker's uid.
    pub async fn delete_tap(&self, tap: &str, caller: u32) -> OpResult<()> {
        let link = match self.find_link(tap).await? {
            None => return Ok(()),
            Some(link) if !link.is_tap() => {
                return Err(OpError::Refused(format!(
                    "Interface {tap} is {}, not a tap; banger deletes only its own taps. Remove it by hand if it is a leftover.",
                    link.describe_kind()
                )));
            }
            Some(link) => link,
        };
        refuse_foreign_tap(&link, caller)?;
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(netlink_failure(&format!("Deleting tap {tap}"), e)),
        }
    }

    /// See [`crate::HelperClient::list_taps`]: the taps `caller` owns, and those nobody owns
    /// (which [`refuse_foreign_tap`] lets anyone claim or delete: a leftover made by hand).
    pub async fn list_taps(&self, caller: u32) -> OpResult<Vec<String>> {
        let mut taps: Vec<String> = self
            .all_links()
            .await?
            .into_iter()
            .filter(|l| l.is_tap() && validate::is_tap_name(&l.name))
            .filter(|l| l.tun.owner.is_none_or(|owner| owner == caller))
            .map(|l| l.name)
            .collect();
        taps.sort();
        Ok(taps)
    }

    /// See [`crate::HelperClient::remove_network`]. `bridge` is one of `networks` (the server
    /// checked it); the others' rules stay.
    pub async fn remove_network(&self, bridge: &str, networks: &Networks) -> OpResult<()> {
        if self
            .find_link(bridge)
            .await?
            .is_some_and(|link| link.is_bridge())
        {
            unroute_dns(bridge).await;
        }
        match self.find_link(bridge).await? {
            None => {}
            Some(link) if !link.is_bridge() => {
                return Err(OpError::Refused(format!(
                    "Interface {bridge} is {}, not a bridge; banger removes only its own bridge.",
                    link.describe_kind()
                )));
            }
            Some(link) => match self.handle.link().del(link.index).execute().await {
                Ok(()) => {}
                Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => {}
                Err(e) => return Err(netlink_failure(&format!("Deleting bridge {bridge}"), e)),
            },
        }
        let remaining = self.present_networks(networks, Some(bridge)).await?;
        if remaining.is_empty() {
            // Declaring the table first makes the delete succeed when the table is absent, in
            // the same transaction.
            run_nft("table ip banger {}\ndelete table ip banger\n").await
        } else {
            run_nft(&nat_ruleset(&remaining)).await
        }
    }

    /// The bridge `bridge` exists, is a bridge, and carries `address`: the only place
    /// [`Host::bind_dns`] and [`Host::route_dns`] act on.
    async fn require_bridge_address(&self, bridge: &str, address: Ipv4Addr) -> OpResult<()> {
        let link = match self.find_link(bridge).await? {
            Some(link) if link.is_bridge() => link,
            Some(link) => {
                return Err(OpError::Refused(format!(
                    "Interface {bridge} is {}, not a bridge; banger's DNS server serves only on banger's bridge.",
                    link.describe_kind()
                )));
            }
            None => {
                return Err(OpError::Failed(format!(
                    "Bridge {bridge} does not exist, so nothing can listen on its address; set up the network first (ensure_network)."
                )));
            }
        };
        let addresses = self.ipv4_addresses(&link).await?;
        if addresses.contains(&address) {
            return Ok(());
        }
        let shown: Vec<String> = addresses.iter().map(Ipv4Addr::to_string).collect();
        Err(OpError::Refused(format!(
            "{address} is not an address of bridge {bridge} (it has: {}); banger-helper binds the DNS port and routes DNS only for the bridge's own address.",
            if shown.is_empty() {
                "none".to_owned()
            } else {
                shown.join(", ")
            }
        )))
    }

    async fn ipv4_addresses(&self, link: &Link) -> OpResult<Vec<Ipv4Addr>> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| netlink_failure(&format!("Listing the addresses of {}", link.name), e))?;
        Ok(messages
            .iter()
            .filter(|msg| {
                msg.header.family == AddressFamily::Inet && msg.header.index == link.index
            })
            .filter_map(|msg| {
                let local = msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                local.or_else(|| {
                    msg.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    })
                })
            })
            .collect())
    }

    /// See [`crate::HelperClient::bind_dns`]: a UDP socket and a listening TCP socket on
    /// `address`:`port`, in that order.
    pub async fn bind_dns(
        &self,
        bridge: &str,
        address: Ipv4Addr,
        port: u16,
    ) -> OpResult<Vec<OwnedFd>> {
        self.require_bridge_address(bridge, address).await?;
        let at = SocketAddrV4::new(address, port);
        let udp = std::net::UdpSocket::bind(at).map_err(|e| bind_failure("UDP", at, &e))?;
        // std sets SO_REUSEADDR on listeners, so a restarted bangerd is not kept from the
        // port by the previous one's connections in TIME_WAIT.
        let tcp = std::net::TcpListener::bind(at).map_err(|e| bind_failure("TCP", at, &e))?;
        Ok(vec![OwnedFd::from(udp), OwnedFd::from(tcp)])
    }

    /// See [`crate::HelperClient::route_dns`]. `Ok(Some(reason))` when there is nothing to
    /// tell (no systemd-resolved, or another network namespace than the host's).
    pub async fn route_dns(&self, bridge: &str, address: Ipv4Addr) -> OpResult<Option<String>> {
        self.require_bridge_address(bridge, address).await?;
        let resolvectl = match resolved_unavailable() {
            Err(reason) => return Ok(Some(reason)),
            Ok(resolvectl) => resolvectl,
        };
        for args in resolvectl_route_args(bridge, address) {
            run_resolvectl(&resolvectl, &args).await?;
        }
        Ok(None)
    }
}

/// A bind of the DNS port that failed, said so that a person can find the culprit.
fn bind_failure(protocol: &str, at: SocketAddrV4, e: &io::Error) -> OpError {
    let hint = match e.raw_os_error() {
        Some(libc::EADDRINUSE) => format!(
            " Another program holds that port (a DNS server listening on every address, such as dnsmasq?): `ss -lnp 'sport = :{}'` shows it.",
            at.port()
        ),
        Some(libc::EADDRNOTAVAIL) => {
            " The address left the bridge meanwhile; try again.".to_owned()
        }
        _ => String::new(),
    };
    OpError::Failed(format!("Binding {protocol} {at} failed: {e}.{hint}"))
}

/// What `resolvectl` is run with to send names under `vm.` to `address`, and only those:
/// the link's DNS server, `~vm` as its only (routing-only) domain, and never the default
/// route for other names.
pub fn resolvectl_route_args(bridge: &str, address: Ipv4Addr) -> [Vec<String>; 3] {
    [
        vec!["dns".into(), bridge.into(), address.to_string()],
        vec!["domain".into(), bridge.into(), format!("~{VM_DOMAIN}")],
        vec!["default-route".into(), bridge.into(), "false".into()],
    ]
}

/// The resolvectl to run, or why systemd-resolved cannot be told anything from here.
fn resolved_unavailable() -> Result<PathBuf, String> {
    // First whether there is a resolver to tell at all: the plainer reason where there is none.
    if !Path::new(RESOLVED_RUNTIME_DIR).is_dir() {
        return Err(format!(
            "systemd-resolved is not running ({RESOLVED_RUNTIME_DIR} is absent); `.vm` names resolve inside VMs, and on the host only by asking the bridge's address directly"
        ));
    }
    // The link is named by interface name, which resolvectl turns into an index in *this*
    // namespace; resolved serves the host's. Anything but the host's namespace would point
    // resolved at an unrelated interface.
    match shares_pid1_network_namespace() {
        Ok(true) => {}
        Ok(false) => {
            return Err("banger-helper runs in a network namespace other than the host's (pid 1's), where systemd-resolved's links are not these; `.vm` names are not routed from the host".to_owned());
        }
        Err(e) => {
            return Err(format!(
                "banger-helper cannot tell whether it runs in the host's network namespace ({e}); `.vm` names are not routed from the host"
            ));
        }
    }
    RESOLVECTL_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            format!(
                "systemd-resolved runs but resolvectl was not found (looked in {}); install systemd-resolved's tools",
                RESOLVECTL_CANDIDATES.join(", ")
            )
        })
}

/// Whether this process is in pid 1's network namespace. Comparing `/proc/1/ns/net` with
/// `/proc/self/ns/net` needs ptrace access to pid 1, which root without `CAP_SYS_PTRACE` (the
/// helper under its unit) does not have. So: an abstract unix socket bound here under a
/// name nothing else uses is looked for among the unix sockets of pid 1's namespace
/// (`/proc/1/net/unix`, readable by all); abstract names live in one namespace each.
pub fn shares_pid1_network_namespace() -> io::Result<bool> {
    use std::os::linux::net::SocketAddrExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    let name = format!("banger-helper-netns-probe-{}-{nanos:x}", std::process::id());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let _probe = std::os::unix::net::UnixDatagram::bind_addr(&address)?;
    let table = std::fs::read_to_string("/proc/1/net/unix")?;
    let listed = format!("@{name}");
    Ok(table
        .lines()
        .any(|line| line.split_whitespace().last() == Some(listed.as_str())))
}

/// Forgets what [`Host::route_dns`] told systemd-resolved about `bridge`; nothing to do
/// where it could not have told it anything. Best effort: the bridge is about to go, and
/// resolved forgets a link that goes anyway.
async fn unroute_dns(bridge: &str) {
    if let Ok(resolvectl) = resolved_unavailable()
        && let Err(OpError::Failed(error) | OpError::Refused(error)) =
            run_resolvectl(&resolvectl, &["revert".to_owned(), bridge.to_owned()]).await
    {
        tracing::warn!(bridge, %error, "could not revert systemd-resolved's settings of the bridge");
    }
}

async fn run_resolvectl(resolvectl: &Path, args: &[String]) -> OpResult<()> {
    let run = tokio::process::Command::new(resolvectl)
        .args(args)
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let shown = format!("{} {}", resolvectl.display(), args.join(" "));
    let output = tokio::time::timeout(RESOLVECTL_TIMEOUT, run)
        .await
        .map_err(|_| {
            OpError::Failed(format!(
                "`{shown}` did not finish within {RESOLVECTL_TIMEOUT:?}; is systemd-resolved hanging?"
            ))
        })?
        .map_err(|e| OpError::Failed(format!("Running `{shown}` failed: {e}.")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(OpError::Failed(format!(
            "`{shown}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// A descriptor attached to the existing tap `name` (`TUNSETIFF` with `IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR`, as Firecracker opens its taps; QEMU reads the flags back with
/// `TUNGETIFF`), close-on-exec.
fn attach_tap(name: &str) -> io::Result<OwnedFd> {
    tun_attached(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR).map(OwnedFd::from)
}

/// Creates (or re-attaches to) the tap, sets its owner and makes it persistent. The file
/// descriptor is closed on return; persistence keeps the device.
fn make_persistent_tap(name: &str, owner: u32) -> io::Result<()> {
    let tun = tun_attached(name, libc::IFF_TAP | libc::IFF_NO_PI)?;
    let fd = tun.as_raw_fd();
    // SAFETY: fd is an open /dev/net/tun descriptor; both ioctls take their argument by value.
    unsafe {
        if libc::ioctl(fd, libc::TUNSETOWNER, libc::c_ulong::from(owner)) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `/dev/net/tun` opened close-on-exec and attached to interface `name` with `flags`
/// (`TUNSETIFF`: made when absent, attached to when it exists).
fn tun_attached(name: &str, flags: libc::c_int) -> io::Result<std::fs::File> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value (empty name, no flags).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    // Validated names are at most 15 bytes, so the terminating NUL always fits.
    if bytes.len() >= ifr.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: the descriptor is an open /dev/net/tun and ifr a valid, initialised ifreq that
    // lives across the call.
    if unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(tun)
}

/// The refusal for a tap whose owner is a uid other than `caller`: one user never deletes,
/// re-owns or opens another's tap. A tap with no owner (only root can attach to it) is not
/// anyone's and may be claimed.
fn refuse_foreign_tap(link: &Link, caller: u32) -> OpResult<()> {
    match link.tun.owner {
        Some(owner) if owner != caller => Err(OpError::Refused(format!(
            "Tap {} belongs to uid {owner}, not to uid {caller}; banger-helper never hands one user's tap to another.",
            link.name
        ))),
        _ => Ok(()),
    }
}

/// banger's whole nftables table for the networks whose bridges exist, replaced in one
/// transaction: each subnet masqueraded when it leaves through another interface, each bridge's
/// traffic forwarded out and its replies back in, and nothing forwarded from one banger bridge
/// to another (one user's guests cannot reach another's). Only validated values reach this
/// text: bridge names match `banger[a-z0-9]*` and subnets are formatted from integers, so
/// nothing in it can inject nft syntax.
pub fn nat_ruleset(networks: &[(String, Subnet)]) -> String {
    let mut postrouting = String::new();
    let mut forward = String::new();
    for (bridge, _) in networks {
        for (other, _) in networks.iter().filter(|(other, _)| other != bridge) {
            forward.push_str(&format!(
                "\t\tiifname \"{bridge}\" oifname \"{other}\" drop\n"
            ));
        }
    }
    for (bridge, subnet) in networks {
        postrouting.push_str(&format!(
            "\t\tip saddr {subnet} oifname != \"{bridge}\" masquerade\n"
        ));
        forward.push_str(&format!(
            "\t\tiifname \"{bridge}\" accept\n\t\toifname \"{bridge}\" ct state established,related accept\n"
        ));
    }
    format!(
        "table ip banger {{}}
delete table ip banger
table ip banger {{
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
{postrouting}	}}
	chain forward {{
		type filter hook forward priority filter; policy accept;
{forward}	}}
}}
"
    )
}

fn find_nft() -> Option<PathBuf> {
    NFT_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
}

/// `nft list table ip banger`: the table's text, or `None` when there is no such table.
async fn list_banger_table() -> OpResult<Option<String>> {
    let nft = find_nft().ok_or_else(|| {
        OpError::Failed(format!(
            "nft was not found (looked in {}); install nftables (for example `apt-get install nftables`).",
            NFT_CANDIDATES.join(", ")
        ))
    })?;
    let output = tokio::process::Command::new(&nft)
        .args(["list", "table", "ip", "banger"])
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| OpError::Failed(format!("Running {} failed: {e}.", nft.display())))?;
    if output.status.success() {
        return Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()));
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No such file or directory") {
        return Ok(None);
    }
    Err(OpError::Failed(format!(
        "nft could not list banger's table ({}): {}",
        output.status,
        stderr.trim()
    )))
}

async fn run_nft(script: &str) -> OpResult<()> {
    let nft = find_nft().ok_or_else(|| {
        OpError::Failed(format!(
            "nft was not found (looked in {}); install nftables (for example `apt-get install nftables`).",
            NFT_CANDIDATES.join(", ")
        ))
    })?;
    let mut child = tokio::process::Command::new(&nft)
        .args(["-f", "-"])
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| OpError::Failed(format!("Starting {} failed: {e}.", nft.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await.map_err(|e| {
            OpError::Failed(format!("Writing banger's ruleset to nft failed: {e}."))
        })?;
        // Dropping stdin closes it, which is what tells nft the script is complete.
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| OpError::Failed(format!("Waiting for nft failed: {e}.")))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(OpError::Failed(format!(
            "nft refused banger's ruleset ({}): {}",
            output.status,
            stderr.trim()
        )))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn pid_1s_network_namespace_is_told_apart_without_ptrace() {
        // These tests run in pid 1's network namespace (CI's machine, a developer's host).
        assert!(shares_pid1_network_namespace().unwrap());
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        // A thread of its own in a new network namespace (root only): told apart.
        let elsewhere = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            shares_pid1_network_namespace().unwrap()
        })
        .join()
        .unwrap();
        assert!(!elsewhere);
    }

    use super::*;

    #[test]
    fn ruleset_replaces_only_banger_table() {
        let subnet = validate::network_spec(&NetworkSpec {
            bridge: "banger0".into(),
            gateway: Ipv4Addr::new(10, 9, 0, 1),
            prefix_len: 24,
        })
        .unwrap();
        let other = validate::network_spec(&NetworkSpec {
            bridge: "banger1".into(),
            gateway: Ipv4Addr::new(10, 10, 0, 1),
            prefix_len: 24,
        })
        .unwrap();
        let script = nat_ruleset(&[("banger0".into(), subnet), ("banger1".into(), other)]);
        assert!(
            script.starts_with("table ip banger {}\ndelete table ip banger\ntable ip banger {")
        );
        assert!(script.contains("ip saddr 10.9.0.0/24 oifname != \"banger0\" masquerade"));
        assert!(script.contains("ip saddr 10.10.0.0/24 oifname != \"banger1\" masquerade"));
        assert!(script.contains("oifname \"banger0\" ct state established,related accept"));
        // Between two networks nothing is forwarded, and the drops come before any accept.
        let drop = script
            .find("iifname \"banger0\" oifname \"banger1\" drop")
            .unwrap();
        assert!(script.contains("iifname \"banger1\" oifname \"banger0\" drop"));
        assert!(drop < script.find("accept\n").unwrap(), "{script}");
        // Every table statement names banger's table and nothing else.
        for line in script.lines().filter(|l| l.contains("table")) {
            assert!(line.contains("table ip banger"), "{line}");
        }
    }

    #[test]
    fn resolved_is_told_the_bridge_serves_vm_and_nothing_else() {
        let args = resolvectl_route_args("banger0", Ipv4Addr::new(172, 30, 0, 1));
        let lines: Vec<String> = args.iter().map(|a| a.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "dns banger0 172.30.0.1",
                "domain banger0 ~vm",
                "default-route banger0 false"
            ]
        );
    }
}
