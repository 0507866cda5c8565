//! The guest network as bangerd sees it: taps on the banger bridge, made and removed by the
//! root helper (`banger-helper`), which bangerd reaches over its unix socket.
//!
//! bangerd runs unprivileged, so every change to the host's network goes through the helper;
//! this module only decides *what* to ask for (tap names, the bridge, the subnet), and looks
//! up interfaces by name to skip asking when there is nothing to do.
//!
//! Invariants:
//! - A tap's name derives from its VM's id alone ([`tap_name`]), so a retried or recovered
//!   step finds the tap an earlier attempt made.
//! - The bridge, its address and banger's NAT table are ensured once per daemon process (the
//!   first time a tap is needed) and again after any failure, never assumed.
//! - A guest's name servers are decided when it boots ([`GuestNetwork::guest_name_servers`]):
//!   the configured ones, else bangerd's DNS server on the bridge's address once it serves
//!   there, else the host's own; never an address that answers nothing.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use banger_events::VmId;
use banger_helper::{HelperClient, HelperError, NetworkSpec};

use crate::config::NetworkConfig;

/// The default guest network's gateway, 172.30.0.1 (its subnet 172.30.0.0/24): the bridge's
/// address, and what banger-helper gives a user it has no `--network` for.
pub const GATEWAY: [u8; 4] = [172, 30, 0, 1];
pub const GUEST_PREFIX_LEN: u8 = 24;

/// The guests' subnet: the bridge's address (the guests' gateway) and the prefix length
/// (`network.gateway` in config.toml, which must be what banger-helper gives this user).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestSubnet {
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
}

impl Default for GuestSubnet {
    fn default() -> GuestSubnet {
        GuestSubnet {
            gateway: Ipv4Addr::from(GATEWAY),
            prefix_len: GUEST_PREFIX_LEN,
        }
    }
}

impl GuestSubnet {
    fn mask(self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix_len))
    }

    /// The network address.
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) & self.mask())
    }

    /// The dotted netmask (`255.255.255.0` for a /24), for the kernel's `ip=`.
    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// Every address a guest may have, lowest first: the subnet's hosts but the gateway.
    pub fn guest_addresses(self) -> impl Iterator<Item = Ipv4Addr> {
        let network = u32::from(self.network());
        let broadcast = network | !self.mask();
        let gateway = u32::from(self.gateway);
        (network + 1..broadcast)
            .filter(move |host| *host != gateway)
            .map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for GuestSubnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix_len)
    }
}

/// The tap of VM `vm_id`: `bt` and the id's low 52 bits in hex (15 bytes at most, the kernel's
/// limit for interface names; the helper only touches names of this shape).
pub fn tap_name(vm_id: VmId) -> String {
    format!("bt{:x}", vm_id.0 & ((1 << 52) - 1))
}

/// Opens a VM's tap for QEMU through banger-helper ([`crate::host::qemu::TapOpener`]):
/// bangerd and the QEMU it starts run as the owner, who may not open `/dev/net/tun`.
#[derive(Debug)]
pub struct HelperTaps(pub HelperClient);

impl crate::host::qemu::TapOpener for HelperTaps {
    fn open_tap<'a>(
        &'a self,
        tap: &'a str,
    ) -> crate::host::vmm::BoxFuture<'a, Result<std::os::fd::OwnedFd, String>> {
        Box::pin(async move {
            match tokio::time::timeout(HELPER_TIMEOUT, self.0.open_tap(tap)).await {
                Ok(Ok(fd)) => Ok(fd),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!(
                    "banger-helper at {} did not answer within {HELPER_TIMEOUT:?}",
                    self.0.socket().display()
                )),
            }
        })
    }
}

/// Opens `/dev/kvm` for QEMU through banger-helper ([`crate::host::qemu::KvmOpener`]): bangerd
/// and the QEMU it starts run as the owner, who may not open it on hardened hosts.
#[derive(Debug)]
pub struct HelperKvm(pub HelperClient);

impl crate::host::qemu::KvmOpener for HelperKvm {
    fn open_kvm(&self) -> crate::host::vmm::BoxFuture<'_, Result<std::os::fd::OwnedFd, String>> {
        Box::pin(async move {
            match tokio::time::timeout(HELPER_TIMEOUT, self.0.open_kvm()).await {
                Ok(Ok(fd)) => Ok(fd),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!(
                    "banger-helper at {} did not answer within {HELPER_TIMEOUT:?}",
                    self.0.socket().display()
                )),
            }
        })
    }
}

/// bangerd's DNS server, as the network sees it (`crate::daemon::dns` implements it): asked,
/// before a guest boots, to serve on the bridge's address.
pub trait GuestDns: Send + Sync {
    /// Serves on the bridge's address, starting to if it does not yet (idempotent; a failure
    /// is logged and kept for `dns.status`), and says whether it now does.
    fn ensure_serving(&self) -> crate::host::vmm::BoxFuture<'_, bool>;
}

/// bangerd's side of the guest network.
pub struct GuestNetwork {
    helper: HelperClient,
    spec: NetworkSpec,
    /// `network.guest_dns`: name servers every guest gets, when set.
    guest_dns: Vec<Ipv4Addr>,
    /// bangerd's DNS server, once the daemon made one.
    dns: OnceLock<Arc<dyn GuestDns>>,
    /// Set once the bridge and NAT have been ensured by this process.
    ensured: AtomicBool,
    /// Set once the helper answered this process; cleared when it stops answering.
    helper_seen: AtomicBool,
    /// Serialises starting a helper (see [`GuestNetwork::ensure_helper`]).
    starting: tokio::sync::Mutex<()>,
}

impl GuestNetwork {
    pub fn new(config: &NetworkConfig) -> GuestNetwork {
        GuestNetwork {
            helper: HelperClient::new(config.helper_socket.clone()),
            spec: NetworkSpec {
                bridge: config.bridge.clone(),
                gateway: config.subnet.gateway,
                prefix_len: config.subnet.prefix_len,
            },
            guest_dns: config.guest_dns.clone(),
            dns: OnceLock::new(),
            ensured: AtomicBool::new(false),
            helper_seen: AtomicBool::new(false),
            starting: tokio::sync::Mutex::new(()),
        }
    }

    /// A network whose helper never answers: for tests of steps that never reach it.
    #[cfg(test)]
    pub fn unreachable_for_tests() -> GuestNetwork {
        GuestNetwork::new(&NetworkConfig {
            helper_socket: PathBuf::from("/nonexistent/banger-helper.sock"),
            bridge: crate::config::DEFAULT_BRIDGE.to_owned(),
            tap_pool: 0,
            guest_dns: Vec::new(),
            subnet: GuestSubnet::default(),
        })
    }

    /// The bridge every tap joins.
    pub fn bridge(&self) -> &str {
        &self.spec.bridge
    }

    /// The bridge's address: the guests' gateway, and where bangerd's DNS server listens.
    pub fn gateway(&self) -> Ipv4Addr {
        self.spec.gateway
    }

    /// The guests' subnet and gateway.
    pub fn guest_subnet(&self) -> GuestSubnet {
        GuestSubnet {
            gateway: self.spec.gateway,
            prefix_len: self.spec.prefix_len,
        }
    }

    /// The bridge's subnet: network address and prefix length.
    pub fn subnet(&self) -> (Ipv4Addr, u8) {
        let mask = u32::MAX << (32 - u32::from(self.spec.prefix_len));
        (
            Ipv4Addr::from(u32::from(self.spec.gateway) & mask),
            self.spec.prefix_len,
        )
    }

    pub fn helper(&self) -> &HelperClient {
        &self.helper
    }

    /// Hands the network bangerd's DNS server; the first one given stays.
    pub fn set_dns(&self, dns: Arc<dyn GuestDns>) {
        let _ = self.dns.set(dns);
    }

    /// The name servers a guest booting now is given (its `banger.dns=`): `network.guest_dns`
    /// when configured; else bangerd's DNS server on the bridge's address, which answers
    /// `NAME.vm` and forwards the rest, once it serves there; else, where it cannot (port 53
    /// taken, no helper to bind it), the host's resolvers, as before bangerd answered DNS.
    /// Asked after the VM's tap exists, so the bridge and its address do too.
    pub async fn guest_name_servers(&self) -> Vec<Ipv4Addr> {
        if !self.guest_dns.is_empty() {
            return self.guest_dns.clone();
        }
        if let Some(dns) = self.dns.get()
            && dns.ensure_serving().await
        {
            return vec![self.spec.gateway];
        }
        host_name_servers(&self.spec.gateway)
    }

    /// The tap `tap` exists, belongs to this user and sits on the bridge (which exists, with
    /// NAT to the outside). Idempotent.
    pub async fn ensure_tap(&self, tap: &str) -> Result<(), NetworkError> {
        self.ensure_helper().await?;
        if !self.ensured.load(Ordering::Acquire) {
            self.ask(
                "set up the bridge and NAT",
                self.helper.ensure_network(&self.spec),
            )
            .await?;
            self.ensured.store(true, Ordering::Release);
        }
        let result = self
            .ask(
                &format!("create tap {tap}"),
                self.helper.ensure_tap(tap, &self.spec.bridge),
            )
            .await;
        if result.is_err() {
            // Someone may have removed the bridge: check it again next time.
            self.ensured.store(false, Ordering::Release);
        }
        result
    }

    /// Removes the tap; absence is fine.
    ///
    /// Asked of the helper even when the tap does not exist yet: a bangerd that died may have
    /// left a request to make it queued in the helper, and the helper runs requests in order,
    /// so this removal comes after it (see the helper's server). Only when no helper answers
    /// is an absent tap taken as removed — with no helper, nothing can be making it.
    pub async fn release_tap(&self, tap: &str) -> Result<(), NetworkError> {
        if interface_exists(tap) {
            self.ensure_helper().await?;
        }
        match self
            .ask(&format!("remove tap {tap}"), self.helper.delete_tap(tap))
            .await
        {
            Err(NetworkError::Helper {
                source: HelperError::Unreachable { .. },
                ..
            }) if !interface_exists(tap) => Ok(()),
            other => other,
        }
    }

    /// The helper answers. When it does not and bangerd itself runs as root (a host where
    /// everything runs as root, like CI machines), bangerd starts `banger-helper` the way the
    /// CLI starts bangerd: from its own directory, or `$PATH`, on the configured socket,
    /// allowing root, in a process group of its own so that it outlives bangerd. It is the
    /// same narrow helper, validating everything it is asked. `BANGER_NO_AUTOSTART=1` turns
    /// this off; an unprivileged bangerd never tries (it could not start a root helper).
    async fn ensure_helper(&self) -> Result<(), NetworkError> {
        if self.helper_seen.load(Ordering::Acquire) {
            return Ok(());
        }
        let _starting = self.starting.lock().await;
        let answer = self.ask_version().await;
        let answer = match answer {
            Err(NetworkError::Helper {
                source: HelperError::Unreachable { .. },
                ..
            }) if may_start_helper() => {
                let socket = self.helper.socket().to_path_buf();
                tokio::task::spawn_blocking(move || start_helper(&socket))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|started| started)
                    .map_err(|reason| NetworkError::Start {
                        socket: self.helper.socket().to_path_buf(),
                        reason,
                    })?;
                self.ask_version().await
            }
            other => other,
        };
        answer?;
        self.helper_seen.store(true, Ordering::Release);
        Ok(())
    }

    async fn ask_version(&self) -> Result<(), NetworkError> {
        self.ask("reach banger-helper", async {
            self.helper.version().await.map(drop)
        })
        .await
    }

    /// One request to the helper, bounded: a helper that hangs must not hang the operation
    /// (which holds its VM) forever.
    async fn ask(
        &self,
        what: &str,
        request: impl Future<Output = Result<(), HelperError>>,
    ) -> Result<(), NetworkError> {
        let socket = self.helper.socket().to_path_buf();
        match tokio::time::timeout(HELPER_TIMEOUT, request).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => {
                if matches!(source, HelperError::Unreachable { .. }) {
                    // It went away: look for it (and maybe start it) before the next request.
                    self.helper_seen.store(false, Ordering::Release);
                }
                Err(NetworkError::Helper {
                    what: what.to_owned(),
                    socket,
                    source,
                })
            }
            Err(_) => Err(NetworkError::Timeout {
                what: what.to_owned(),
                socket,
            }),
        }
    }
}

impl GuestNetwork {
    /// What banger-helper says, bounded in time and never starting one: for `network.status`
    /// (`banger doctor`).
    pub async fn status(&self) -> crate::api::NetworkStatusResult {
        use crate::api::{GivenNetwork, HelperStatus};
        let wanted = banger_helper::protocol::PROTOCOL_VERSION;
        let bounded =
            |what: &str| format!("banger-helper did not answer {what} within {HELPER_TIMEOUT:?}");
        let helper = match tokio::time::timeout(HELPER_TIMEOUT, self.helper.version()).await {
            Err(_) => HelperStatus::Unreachable {
                error: bounded("its version"),
            },
            Ok(Err(error @ HelperError::Unreachable { .. })) => HelperStatus::Unreachable {
                error: error.to_string(),
            },
            Ok(Err(error @ HelperError::Refused { .. })) => HelperStatus::Refused {
                error: error.to_string(),
            },
            Ok(Err(error)) => HelperStatus::Failed {
                error: error.to_string(),
            },
            Ok(Ok(version)) if version != wanted => HelperStatus::Incompatible { version, wanted },
            Ok(Ok(version)) => {
                match tokio::time::timeout(HELPER_TIMEOUT, self.helper.networks()).await {
                    Err(_) => HelperStatus::Failed {
                        error: bounded("its networks"),
                    },
                    Ok(Err(error)) => HelperStatus::Failed {
                        error: error.to_string(),
                    },
                    Ok(Ok(states)) => HelperStatus::Answers {
                        version,
                        networks: states
                            .into_iter()
                            .map(|state| GivenNetwork {
                                bridge: state.spec.bridge,
                                gateway: format!(
                                    "{}/{}",
                                    state.spec.gateway, state.spec.prefix_len
                                ),
                                bridge_up: state.bridge,
                                nat: state.nat,
                            })
                            .collect(),
                    },
                }
            }
        };
        crate::api::NetworkStatusResult {
            helper_socket: self.helper.socket().display().to_string(),
            bridge: self.spec.bridge.clone(),
            gateway: format!("{}/{}", self.spec.gateway, self.spec.prefix_len),
            starts_helper: may_start_helper(),
            helper,
        }
    }

    /// The names of banger's taps on the host (`bt` + hex), and who said so. banger-helper
    /// lists them when one answers (it sees the namespace the taps are made in, and reports
    /// only taps); otherwise the interfaces of this process's namespace with a tap's name
    /// are listed (through `if_nameindex`, not `/sys/class/net`, which shows the namespace
    /// sysfs was mounted in). Never starts a helper: a listing is not worth one.
    pub async fn list_taps(&self) -> (Vec<String>, TapSource) {
        if let Ok(Ok(taps)) = tokio::time::timeout(LIST_TIMEOUT, self.helper.list_taps()).await {
            return (taps, TapSource::Helper);
        }
        let mut taps: Vec<String> = nix::net::if_::if_nameindex()
            .map(|interfaces| {
                interfaces
                    .iter()
                    .filter_map(|interface| interface.name().to_str().ok().map(str::to_owned))
                    .filter(|name| banger_helper::validate::is_tap_name(name))
                    .collect()
            })
            .unwrap_or_default();
        taps.sort();
        taps.dedup();
        (taps, TapSource::Local)
    }
}

/// Where [`GuestNetwork::list_taps`] got its list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapSource {
    Helper,
    /// No helper answered; the names were read in bangerd's own network namespace.
    Local,
}

/// How long a helper may take to list taps before the local list is used instead.
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one helper request may take. Creating a tap or loading banger's nftables table
/// takes milliseconds; this only bounds a helper that stopped answering.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// The host's name servers, from `/etc/resolv.conf`, without loopback ones (a host's local
/// resolver, 127.0.0.53 say, is not reachable from a guest); `gateway` (the bridge's
/// address) when none is left.
pub fn host_name_servers(gateway: &Ipv4Addr) -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers: Vec<Ipv4Addr> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .filter(|addr| !addr.is_loopback() && !addr.is_unspecified())
        .take(3)
        .collect();
    if servers.is_empty() {
        vec![*gateway]
    } else {
        servers
    }
}

/// Whether a network interface of that name exists in this process's network namespace.
/// Asked through a socket (`if_nametoindex`), not `/sys/class/net`: sysfs shows the namespace
/// it was mounted in, which need not be this process's.
pub fn interface_exists(name: &str) -> bool {
    !name.is_empty() && nix::net::if_::if_nametoindex(name).is_ok()
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot {what} through banger-helper ({}): {source}", socket.display())]
    Helper {
        what: String,
        socket: PathBuf,
        #[source]
        source: HelperError,
    },
    #[error(
        "cannot {what}: banger-helper ({}) did not answer within {}s; check that it is running, and restart it",
        socket.display(),
        HELPER_TIMEOUT.as_secs()
    )]
    Timeout { what: String, socket: PathBuf },
    #[error("banger-helper does not answer at {}, and bangerd (running as root) could not start it: {reason}", socket.display())]
    Start { socket: PathBuf, reason: String },
}

/// Whether this bangerd may start a helper itself: it runs as root, and
/// `BANGER_NO_AUTOSTART` is not set.
fn may_start_helper() -> bool {
    nix::unistd::geteuid().is_root()
        && std::env::var_os("BANGER_NO_AUTOSTART")
            .is_none_or(|value| value.is_empty() || value == "0")
}

/// How long a started helper may take to listen.
const HELPER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts `banger-helper` on `socket` (see [`GuestNetwork::ensure_helper`]) and waits until it
/// listens. Its output goes to `<socket>.log`.
fn start_helper(socket: &Path) -> Result<(), String> {
    use std::os::unix::process::CommandExt;

    let binary = helper_binary().ok_or_else(|| {
        "banger-helper is not installed next to bangerd or on PATH (`cargo install --locked --path .` installs it with bangerd)".to_owned()
    })?;
    let dir = socket
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", socket.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut log_path = socket.as_os_str().to_owned();
    log_path.push(".log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", Path::new(&log_path).display()))?;
    tracing::info!(binary = %binary.display(), socket = %socket.display(), "starting banger-helper");
    let mut child = std::process::Command::new(&binary)
        .arg("--socket")
        .arg(socket)
        .arg("--allow-uid")
        .arg("0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let deadline = std::time::Instant::now() + HELPER_START_TIMEOUT;
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "it exited ({status}) before listening; see {}",
                Path::new(&log_path).display()
            ));
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "it did not listen within {HELPER_START_TIMEOUT:?}; see {}",
                Path::new(&log_path).display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Reaped when it exits, so that it never lingers as a zombie of bangerd.
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// `banger-helper` beside this executable (how `cargo install` and a build directory lay
/// them out), else the first on `PATH`.
fn helper_binary() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("banger-helper")))
        .filter(|path| path.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("banger-helper"))
                .find(|path| path.is_file())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_the_kernel_limit_and_the_helper_pattern() {
        for id in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            let name = tap_name(VmId(id));
            assert!(name.len() <= 15, "{name}");
            assert!(banger_helper::validate::tap_name(&name).is_ok(), "{name}");
        }
        assert_eq!(tap_name(VmId(0xabc)), "btabc");
        // Only the low 52 bits count.
        assert_eq!(tap_name(VmId(0xfff0_0000_0000_0abc)), "btabc");
    }

    #[test]
    fn the_default_subnet_is_the_one_banger_helper_gives_by_default() {
        let helper = banger_helper::networks::default_network();
        let default = GuestSubnet::default();
        assert_eq!(
            (helper.gateway, helper.prefix_len),
            (default.gateway, default.prefix_len)
        );
        assert_eq!(helper.bridge, crate::config::DEFAULT_BRIDGE);
    }

    #[test]
    fn guests_get_every_host_address_but_the_gateway() {
        let default = GuestSubnet::default();
        let addresses: Vec<Ipv4Addr> = default.guest_addresses().collect();
        assert_eq!(addresses.len(), 253);
        assert_eq!(addresses[0], Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(addresses[252], Ipv4Addr::new(172, 30, 0, 254));
        assert_eq!(default.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(default.to_string(), "172.30.0.0/24");
        // A gateway in the middle of a /22: every other host address, broadcast excluded.
        let wide = GuestSubnet {
            gateway: Ipv4Addr::new(10, 44, 1, 7),
            prefix_len: 22,
        };
        let addresses: Vec<Ipv4Addr> = wide.guest_addresses().collect();
        assert_eq!(addresses.len(), 1021);
        assert_eq!(addresses[0], Ipv4Addr::new(10, 44, 0, 1));
        assert!(!addresses.contains(&wide.gateway));
        assert_eq!(*addresses.last().unwrap(), Ipv4Addr::new(10, 44, 3, 254));
        assert_eq!(wide.netmask(), Ipv4Addr::new(255, 255, 252, 0));
        let tiny = GuestSubnet {
            gateway: Ipv4Addr::new(192, 168, 9, 1),
            prefix_len: 30,
        };
        assert_eq!(
            tiny.guest_addresses().collect::<Vec<_>>(),
            [Ipv4Addr::new(192, 168, 9, 2)]
        );
    }

    #[test]
    fn interfaces_are_looked_up_by_name() {
        assert!(interface_exists("lo"));
        assert!(!interface_exists(""));
        assert!(!interface_exists(".."));
        assert!(!interface_exists("bt0-not-there"));
    }
}
