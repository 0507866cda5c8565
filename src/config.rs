//! bangerd's configuration: defaults for new VMs, timeouts, and where the VMM lives.
//!
//! Read from `config.toml` in the config directory (see [`crate::paths`]). A missing file means
//! every default; an unknown key or a bad value is an error that names the file and the key,
//! because a typo that silently falls back to a default is worse than a refusal.
//!
//! ```toml
//! [vm]
//! vcpus = 2
//! memory = "1GiB"          # sizes: "512M", "4GiB", a bare number is MiB
//! work_disk = "8GiB"
//! idle_stop_after = "2h"   # durations: "30s", "5m", "2h", "1d", a bare number is seconds; "0" = never
//! console_max = "16MiB"    # the serial console kept per VM: older output is dropped (at least 1 MiB)
//! vmm = "auto"             # the VMM of new VMs: auto, firecracker or qemu (`vm create --vmm` wins)
//!
//! [timeouts]
//! boot = "30s"             # InstanceStart until the guest agent answers
//! stop = "15s"             # Ctrl-Alt-Del until the VMM is killed
//!
//! [firecracker]
//! binary = "/usr/local/bin/firecracker"   # BANGER_FIRECRACKER overrides it
//! launch = "auto"   # who starts Firecracker: bangerd, helper (banger-helper's jailer), or
//!                   # auto: bangerd when it runs as root, else banger-helper
//!
//! [qemu]
//! binary = "qemu-system-x86_64"           # BANGER_QEMU overrides it
//!
//! [network]
//! helper_socket = "/run/banger/helper.sock"   # banger-helper's socket; BANGER_HELPER_SOCKET overrides it
//! bridge = "banger0"                          # the bridge every VM's tap joins
//! tap_pool = 2                                # spare taps kept ready for new VMs (0: none)
//! guest_dns = ["1.1.1.1"]                     # name servers new VMs get instead of bangerd's on the bridge
//! gateway = "172.30.0.1/24"                   # the bridge's address and the guests' subnet (as banger-helper gives it)
//!
//! [dashboard]
//! enabled = true           # the web dashboard on 127.0.0.1 (`banger dashboard` prints its link)
//! port = 7707              # 0: any free port, preferring the one the previous run had
//! [kernels]
//! default = "debian-12-cloud"          # the kernel of a VM whose request and image name none
//! catalog = "/srv/banger/kernels.json" # more catalog entries (same format as the embedded one)
//! mirror = "http://127.0.0.1:8080/"    # replaces scheme and host of every catalog URL
//! [kernels.mirrors]                    # or by prefix (the longest match wins over `mirror`)
//! "https://snapshot.debian.org/" = "http://mirror.internal/snapshot/"
//! [images]
//! headroom = "1GiB"         # free space a pulled image's filesystem keeps beyond its content
//! headroom_percent = 10     # and this much more, as a percentage of the content
//! max_size = "64GiB"        # the largest image a pull may build (content that expands further is refused)
//! catalog = "/etc/banger/images.json"   # more catalog entries, over the embedded ones (same format)
//!
//! [registry]
//! insecure = ["127.0.0.1:5000"]           # registries reached over plain HTTP (all others: HTTPS only)
//! [registry.mirrors]
//! "docker.io" = "127.0.0.1:5000"          # a registry host rewritten to a mirror (same path, no fallback)
//! ```
//!
//! Registry credentials are not configured here: they come from the user's docker config file
//! (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, its `auths`), as `docker login`
//! writes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::host::backends::VmmChoice;
use crate::size::parse_size;

const MIB: u64 = 1024 * 1024;

/// The effective configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub vm: VmDefaults,
    pub boot_timeout: Duration,
    pub stop_timeout: Duration,
    /// The firecracker binary; `BANGER_FIRECRACKER` wins over the file.
    pub firecracker: PathBuf,
    /// Who starts Firecracker ([`FirecrackerLaunch`]).
    pub firecracker_launch: FirecrackerLaunch,
    /// The QEMU binary (`qemu-system-x86_64`); `BANGER_QEMU` wins over the file.
    pub qemu: PathBuf,
    pub network: NetworkConfig,
    pub dashboard: DashboardConfig,
    pub kernels: KernelsConfig,
    pub images: ImagesConfig,
    pub registry: RegistrySettings,
}

/// How pulled images are built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagesConfig {
    /// Free space beyond the content (and its metadata) in a pulled image's filesystem.
    pub headroom_bytes: u64,
    /// More free space, as a percentage of the content.
    pub headroom_percent: u32,
    /// The largest image a pull builds; a layer that expands past it is refused.
    pub max_size_bytes: u64,
    /// A catalog file whose entries are added to the embedded ones (and replace those of the
    /// same name).
    pub catalog: Option<PathBuf>,
}

/// `[registry]`: how pulls reach OCI registries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Registry host → mirror host.
    pub mirrors: BTreeMap<String, String>,
}

/// The kernel catalog: the default kernel, more entries, mirrors (see `crate::kernel::catalog`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelsConfig {
    /// The kernel of a VM whose request and image name none, pulled on first use.
    pub default: String,
    /// A catalog file whose entries are added to the embedded catalog's.
    pub catalog: Option<PathBuf>,
    pub mirrors: crate::kernel::Mirrors,
}

/// The web dashboard bangerd serves on the loopback interface (`crate::daemon::dashboard`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DashboardConfig {
    pub enabled: bool,
    /// The TCP port on 127.0.0.1; 0 lets bangerd pick a free one (the previous run's port
    /// when it is free, so that pages left open reconnect to a restarted bangerd).
    pub port: u16,
}

/// The default of `dashboard.port`.
pub const DEFAULT_DASHBOARD_PORT: u16 = 7707;

/// Where the root helper listens and which bridge VMs join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// banger-helper's socket; `BANGER_HELPER_SOCKET` wins over the file.
    pub helper_socket: PathBuf,
    /// The bridge taps are attached to (the helper only accepts names starting `banger`).
    pub bridge: String,
    /// How many spare taps bangerd keeps made, so that a create does not wait for the helper.
    pub tap_pool: usize,
    /// The name servers a booting VM is given. Empty (the default): bangerd's own DNS server
    /// on the bridge's address (`NAME.vm` names, the rest forwarded to the host's resolvers),
    /// or the host's resolvers where it cannot serve.
    pub guest_dns: Vec<std::net::Ipv4Addr>,
    /// The bridge's address and the guests' subnet (`network.gateway`, `"172.30.0.1/24"` by
    /// default): what banger-helper's configuration gives this user. Guests get addresses in
    /// it; changing it leaves existing VMs with addresses of the old one (recreate them).
    pub subnet: crate::host::network::GuestSubnet,
}

/// The most name servers `network.guest_dns` may list (what a resolv.conf honours).
pub const MAX_GUEST_DNS: usize = 3;

/// The most spare taps `network.tap_pool` may ask for.
pub const MAX_TAP_POOL: usize = 64;

/// `network.gateway`: the bridge's address with the subnet's prefix (`"172.31.0.1/24"`),
/// under the rules banger-helper applies (RFC 1918, /16 to /30, a host address).
fn parse_gateway(text: &str, bridge: &str) -> Result<crate::host::network::GuestSubnet, String> {
    let shape = || {
        format!(
            "network.gateway is {text:?}; write the bridge's address and the subnet's prefix length, as \"172.30.0.1/24\""
        )
    };
    let (address, prefix) = text.split_once('/').ok_or_else(shape)?;
    let gateway: std::net::Ipv4Addr = address.parse().map_err(|_| shape())?;
    let prefix_len: u8 = prefix.parse().map_err(|_| shape())?;
    banger_helper::validate::network_spec(&banger_helper::NetworkSpec {
        bridge: bridge.to_owned(),
        gateway,
        prefix_len,
    })
    .map_err(|error| format!("network.gateway: {error}"))?;
    Ok(crate::host::network::GuestSubnet {
        gateway,
        prefix_len,
    })
}

/// Where `banger system install` puts banger-helper's socket.
pub const DEFAULT_HELPER_SOCKET: &str = "/run/banger/helper.sock";
pub const DEFAULT_BRIDGE: &str = "banger0";

/// What a new VM gets when the request does not say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmDefaults {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub work_disk_mib: u64,
    /// Running VMs idle for longer are stopped; `None` never stops them.
    pub idle_stop_after: Option<Duration>,
    /// The most serial console output kept per VM, in bytes: the guest writes it, so it is
    /// bounded; the newest output is kept.
    pub console_max_bytes: u64,
    /// The VMM of a new VM when the request does not name one.
    pub vmm: VmmChoice,
}

/// The default of `vm.console_max`.
pub const DEFAULT_CONSOLE_MAX_BYTES: u64 = 16 * MIB;

impl Default for Config {
    fn default() -> Self {
        Config {
            vm: VmDefaults {
                vcpus: 2,
                memory_mib: 1024,
                work_disk_mib: 8 * 1024,
                idle_stop_after: None,
                console_max_bytes: DEFAULT_CONSOLE_MAX_BYTES,
                vmm: VmmChoice::Auto,
            },
            boot_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(15),
            firecracker: PathBuf::from("firecracker"),
            firecracker_launch: FirecrackerLaunch::Auto,
            qemu: PathBuf::from(crate::host::qemu::DEFAULT_QEMU_BINARY),
            network: NetworkConfig {
                helper_socket: PathBuf::from(DEFAULT_HELPER_SOCKET),
                bridge: DEFAULT_BRIDGE.to_owned(),
                tap_pool: 2,
                guest_dns: Vec::new(),
                subnet: crate::host::network::GuestSubnet::default(),
            },
            dashboard: DashboardConfig {
                enabled: true,
                port: DEFAULT_DASHBOARD_PORT,
            },
            kernels: KernelsConfig {
                default: crate::kernel::DEFAULT_KERNEL.to_owned(),
                catalog: None,
                mirrors: crate::kernel::Mirrors::default(),
            },
            images: ImagesConfig {
                headroom_bytes: 1 << 30,
                headroom_percent: 10,
                max_size_bytes: 64 << 30,
                catalog: None,
            },
            registry: RegistrySettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The file's shape; every field optional, unknown keys refused.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    vm: VmSection,
    #[serde(default)]
    timeouts: TimeoutsSection,
    #[serde(default)]
    firecracker: FirecrackerSection,
    #[serde(default)]
    qemu: QemuSection,
    #[serde(default)]
    network: NetworkSection,
    #[serde(default)]
    dashboard: DashboardSection,
    #[serde(default)]
    kernels: KernelsSection,
    #[serde(default)]
    images: ImagesSection,
    #[serde(default)]
    registry: RegistrySection,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ImagesSection {
    headroom: Option<SizeText>,
    headroom_percent: Option<u32>,
    max_size: Option<SizeText>,
    catalog: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RegistrySection {
    insecure: Option<Vec<String>>,
    mirrors: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VmSection {
    vcpus: Option<u32>,
    memory: Option<SizeText>,
    work_disk: Option<SizeText>,
    idle_stop_after: Option<DurationText>,
    console_max: Option<SizeText>,
    vmm: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TimeoutsSection {
    boot: Option<DurationText>,
    stop: Option<DurationText>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FirecrackerSection {
    binary: Option<PathBuf>,
    launch: Option<String>,
}

/// Who starts a VM's Firecracker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FirecrackerLaunch {
    /// bangerd, when it runs as root (it needs `/dev/kvm` and `/dev/net/tun`); else the helper.
    #[default]
    Auto,
    /// bangerd itself, as its own user.
    Bangerd,
    /// banger-helper, through its configured jailer, as bangerd's user in a chroot: bangerd
    /// needs no access to `/dev/kvm` or `/dev/net/tun`.
    Helper,
}

impl FirecrackerLaunch {
    /// Whether bangerd running as `euid` has the helper start Firecracker.
    pub fn through_helper(self, euid: u32) -> bool {
        match self {
            FirecrackerLaunch::Auto => euid != 0,
            FirecrackerLaunch::Bangerd => false,
            FirecrackerLaunch::Helper => true,
        }
    }
}

impl std::str::FromStr for FirecrackerLaunch {
    type Err = String;

    fn from_str(s: &str) -> Result<FirecrackerLaunch, String> {
        match s {
            "auto" => Ok(FirecrackerLaunch::Auto),
            "bangerd" => Ok(FirecrackerLaunch::Bangerd),
            "helper" => Ok(FirecrackerLaunch::Helper),
            other => Err(format!(
                "{other:?} is not a launcher: use auto, bangerd or helper"
            )),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct QemuSection {
    binary: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NetworkSection {
    helper_socket: Option<PathBuf>,
    bridge: Option<String>,
    tap_pool: Option<usize>,
    guest_dns: Option<Vec<String>>,
    gateway: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DashboardSection {
    enabled: Option<bool>,
    /// Wider than a port, so that a number out of range gets our message, which names the key.
    port: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KernelsSection {
    default: Option<String>,
    catalog: Option<PathBuf>,
    mirror: Option<String>,
    #[serde(default)]
    mirrors: std::collections::BTreeMap<String, String>,
}

/// A size or duration may be written as a string ("4GiB") or a bare integer.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Number(u64),
    Text(String),
}

type DurationText = SizeText;

impl Config {
    /// Reads `path` (absent: defaults), then applies `BANGER_FIRECRACKER`, `BANGER_QEMU` and
    /// `BANGER_HELPER_SOCKET`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut config = match text {
            Some(text) => Config::parse(&text).map_err(|message| ConfigError::Invalid {
                path: path.to_path_buf(),
                message,
            })?,
            None => Config::default(),
        };
        if let Some(binary) =
            std::env::var_os("BANGER_FIRECRACKER").filter(|value| !value.is_empty())
        {
            config.firecracker = PathBuf::from(binary);
        }
        if let Some(binary) =
            std::env::var_os(crate::host::qemu::QEMU_ENV).filter(|v| !v.is_empty())
        {
            config.qemu = PathBuf::from(binary);
        }
        if let Some(socket) =
            std::env::var_os("BANGER_HELPER_SOCKET").filter(|value| !value.is_empty())
        {
            config.network.helper_socket = PathBuf::from(socket);
        }
        Ok(config)
    }

    /// Parses the text of a config file.
    pub fn parse(text: &str) -> Result<Config, String> {
        let file: File = toml::from_str(text).map_err(|error| error.to_string())?;
        let mut config = Config::default();
        if let Some(vcpus) = file.vm.vcpus {
            if !(1..=32).contains(&vcpus) {
                return Err(format!("vm.vcpus is {vcpus}; it must be between 1 and 32"));
            }
            config.vm.vcpus = vcpus;
        }
        if let Some(memory) = file.vm.memory {
            config.vm.memory_mib = mib("vm.memory", memory, 128)?;
        }
        if let Some(work_disk) = file.vm.work_disk {
            config.vm.work_disk_mib = mib("vm.work_disk", work_disk, 64)?;
        }
        if let Some(idle) = file.vm.idle_stop_after {
            let idle = duration("vm.idle_stop_after", idle)?;
            config.vm.idle_stop_after = (!idle.is_zero()).then_some(idle);
        }
        if let Some(console_max) = file.vm.console_max {
            config.vm.console_max_bytes = mib("vm.console_max", console_max, 1)? * MIB;
        }
        if let Some(boot) = file.timeouts.boot {
            config.boot_timeout = nonzero("timeouts.boot", duration("timeouts.boot", boot)?)?;
        }
        if let Some(stop) = file.timeouts.stop {
            config.stop_timeout = nonzero("timeouts.stop", duration("timeouts.stop", stop)?)?;
        }
        if let Some(vmm) = file.vm.vmm {
            config.vm.vmm = vmm.parse().map_err(|error| format!("vm.vmm: {error}"))?;
        }
        if let Some(binary) = file.firecracker.binary {
            config.firecracker = binary;
        }
        if let Some(launch) = file.firecracker.launch {
            config.firecracker_launch = launch
                .parse()
                .map_err(|error| format!("firecracker.launch: {error}"))?;
        }
        if let Some(binary) = file.qemu.binary {
            config.qemu = binary;
        }
        if let Some(socket) = file.network.helper_socket {
            if !socket.is_absolute() {
                return Err(format!(
                    "network.helper_socket is {}; it must be an absolute path",
                    socket.display()
                ));
            }
            config.network.helper_socket = socket;
        }
        if let Some(bridge) = file.network.bridge {
            banger_helper::validate::bridge_name(&bridge)
                .map_err(|error| format!("network.bridge: {error}"))?;
            config.network.bridge = bridge;
        }
        if let Some(pool) = file.network.tap_pool {
            if pool > MAX_TAP_POOL {
                return Err(format!(
                    "network.tap_pool is {pool}; it must be between 0 and {MAX_TAP_POOL}"
                ));
            }
            config.network.tap_pool = pool;
        }
        if let Some(servers) = file.network.guest_dns {
            if servers.len() > MAX_GUEST_DNS {
                return Err(format!(
                    "network.guest_dns lists {} servers; a guest uses at most {MAX_GUEST_DNS}",
                    servers.len()
                ));
            }
            config.network.guest_dns = servers
                .iter()
                .map(|server| {
                    server.parse::<std::net::Ipv4Addr>().map_err(|_| {
                        format!(
                            "network.guest_dns: {server:?} is not an IPv4 address (write name servers as \"1.1.1.1\")"
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(gateway) = file.network.gateway {
            config.network.subnet = parse_gateway(&gateway, &config.network.bridge)?;
        }
        if let Some(enabled) = file.dashboard.enabled {
            config.dashboard.enabled = enabled;
        }
        if let Some(port) = file.dashboard.port {
            config.dashboard.port = u16::try_from(port).map_err(|_| {
                format!("dashboard.port is {port}; it must be between 0 (any free port) and 65535")
            })?;
        }
        if let Some(default) = file.kernels.default {
            crate::operations::names::validate("kernel", &default)
                .map_err(|error| format!("kernels.default: {error}"))?;
            config.kernels.default = default;
        }
        if let Some(catalog) = file.kernels.catalog {
            if !catalog.is_absolute() {
                return Err(format!(
                    "kernels.catalog is {}; it must be an absolute path",
                    catalog.display()
                ));
            }
            config.kernels.catalog = Some(catalog);
        }
        config.kernels.mirrors = crate::kernel::Mirrors {
            mirror: file.kernels.mirror,
            prefixes: file.kernels.mirrors,
        };
        config
            .kernels
            .mirrors
            .check()
            .map_err(|error| format!("kernels.mirror(s): {error}"))?;
        if let Some(headroom) = file.images.headroom {
            config.images.headroom_bytes = mib("images.headroom", headroom, 0)? * MIB;
        }
        if let Some(percent) = file.images.headroom_percent {
            if percent > 1000 {
                return Err(format!(
                    "images.headroom_percent is {percent}; it must be between 0 and 1000"
                ));
            }
            config.images.headroom_percent = percent;
        }
        if let Some(max) = file.images.max_size {
            config.images.max_size_bytes = mib("images.max_size", max, 16)? * MIB;
        }
        if let Some(catalog) = file.images.catalog {
            if !catalog.is_absolute() {
                return Err(format!(
                    "images.catalog is {}; it must be an absolute path",
                    catalog.display()
                ));
            }
            config.images.catalog = Some(catalog);
        }
        if let Some(insecure) = file.registry.insecure {
            for host in &insecure {
                registry_host("registry.insecure", host)?;
            }
            config.registry.insecure = insecure;
        }
        if let Some(mirrors) = file.registry.mirrors {
            for (from, to) in &mirrors {
                registry_host("registry.mirrors", from)?;
                registry_host("registry.mirrors", to)?;
            }
            config.registry.mirrors = mirrors;
        }
        Ok(config)
    }
}

/// A registry as image references name it: `host`, `host:port`, no scheme, no path.
fn registry_host(key: &str, host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        && !host.starts_with(['.', '-', ':']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key}: {host:?} is not a registry host; write it as an image reference names it, like \"127.0.0.1:5000\" or \"registry.example.com\" (no scheme, no path)"
        ))
    }
}

fn mib(key: &str, value: SizeText, minimum_mib: u64) -> Result<u64, String> {
    let bytes = match value {
        SizeText::Number(mib) => mib
            .checked_mul(MIB)
            .ok_or_else(|| format!("{key} is too large"))?,
        SizeText::Text(text) => parse_size(&text).map_err(|error| format!("{key}: {error}"))?,
    };
    if bytes % MIB != 0 {
        return Err(format!("{key} must be a whole number of MiB"));
    }
    let mib = bytes / MIB;
    if mib < minimum_mib {
        return Err(format!(
            "{key} is {mib} MiB; it must be at least {minimum_mib} MiB"
        ));
    }
    Ok(mib)
}

fn nonzero(key: &str, value: Duration) -> Result<Duration, String> {
    if value.is_zero() {
        return Err(format!("{key} must be longer than 0s"));
    }
    Ok(value)
}

fn duration(key: &str, value: DurationText) -> Result<Duration, String> {
    match value {
        SizeText::Number(seconds) => Ok(Duration::from_secs(seconds)),
        SizeText::Text(text) => parse_duration(&text).map_err(|error| format!("{key}: {error}")),
    }
}

/// Parses "90", "30s", "5m", "2h", "1d" (one unit; a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (expected e.g. 30s, 5m, 2h, 1d)"))?;
    let seconds_per = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (use s, m, h or d)"
            ));
        }
    };
    number
        .checked_mul(seconds_per)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_means_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn every_key_is_read() {
        let config = Config::parse(
            r#"
            [vm]
            vcpus = 4
            memory = "2GiB"
            work_disk = 4096
            idle_stop_after = "2h"
            vmm = "qemu"
            [timeouts]
            boot = "45s"
            stop = 20
            [firecracker]
            binary = "/opt/fc/firecracker"
            launch = "helper"
            [qemu]
            binary = "/opt/qemu/qemu-system-x86_64"
            [network]
            helper_socket = "/run/h.sock"
            bridge = "bangerdev"
            tap_pool = 5
            guest_dns = ["10.0.0.53", "1.1.1.1"]
            gateway = "10.44.0.1/22"
            [dashboard]
            enabled = false
            port = 8123
            [kernels]
            default = "my-kernel"
            catalog = "/srv/kernels.json"
            mirror = "http://127.0.0.1:8080/"
            [kernels.mirrors]
            "https://snapshot.debian.org/" = "http://m/snap/"
            [images]
            headroom = "512MiB"
            headroom_percent = 5
            max_size = "8GiB"
            catalog = "/etc/banger/images.json"
            [registry]
            insecure = ["127.0.0.1:5000"]
            [registry.mirrors]
            "docker.io" = "127.0.0.1:5000"
            "#,
        )
        .unwrap();
        assert_eq!(config.vm.vcpus, 4);
        assert_eq!(config.vm.memory_mib, 2048);
        assert_eq!(config.vm.work_disk_mib, 4096);
        assert_eq!(config.vm.idle_stop_after, Some(Duration::from_secs(7200)));
        assert_eq!(config.boot_timeout, Duration::from_secs(45));
        assert_eq!(config.stop_timeout, Duration::from_secs(20));
        assert_eq!(config.firecracker, PathBuf::from("/opt/fc/firecracker"));
        assert_eq!(config.firecracker_launch, FirecrackerLaunch::Helper);
        assert!(FirecrackerLaunch::Helper.through_helper(0));
        assert!(FirecrackerLaunch::Auto.through_helper(1000));
        assert!(!FirecrackerLaunch::Auto.through_helper(0));
        assert!(!FirecrackerLaunch::Bangerd.through_helper(1000));
        assert_eq!(config.vm.vmm, VmmChoice::Qemu);
        assert_eq!(config.qemu, PathBuf::from("/opt/qemu/qemu-system-x86_64"));
        assert_eq!(config.network.helper_socket, PathBuf::from("/run/h.sock"));
        assert_eq!(config.network.bridge, "bangerdev");
        assert_eq!(config.network.tap_pool, 5);
        assert_eq!(
            config.network.subnet,
            crate::host::network::GuestSubnet {
                gateway: std::net::Ipv4Addr::new(10, 44, 0, 1),
                prefix_len: 22
            }
        );
        assert_eq!(
            config.network.guest_dns,
            [
                std::net::Ipv4Addr::new(10, 0, 0, 53),
                std::net::Ipv4Addr::new(1, 1, 1, 1)
            ]
        );
        assert_eq!(
            config.dashboard,
            DashboardConfig {
                enabled: false,
                port: 8123
            }
        );
        assert_eq!(config.kernels.default, "my-kernel");
        assert_eq!(
            config.kernels.catalog,
            Some(PathBuf::from("/srv/kernels.json"))
        );
        assert_eq!(
            config
                .kernels
                .mirrors
                .rewrite("https://snapshot.debian.org/file/ab"),
            "http://m/snap/file/ab"
        );
        assert_eq!(
            config
                .kernels
                .mirrors
                .rewrite("https://example.org/k.tar.zst"),
            "http://127.0.0.1:8080/k.tar.zst"
        );
        assert_eq!(config.images.headroom_bytes, 512 * MIB);
        assert_eq!(config.images.headroom_percent, 5);
        assert_eq!(config.images.max_size_bytes, 8 * 1024 * MIB);
        assert_eq!(
            config.images.catalog,
            Some(PathBuf::from("/etc/banger/images.json"))
        );
        assert_eq!(config.registry.insecure, ["127.0.0.1:5000"]);
        assert_eq!(
            config.registry.mirrors.get("docker.io").map(String::as_str),
            Some("127.0.0.1:5000")
        );
    }

    #[test]
    fn mistakes_are_refused_with_the_key_named() {
        for (text, needle) in [
            ("[vm]\nvcpu = 2", "unknown field"),
            ("[vm]\nvcpus = 0", "vm.vcpus"),
            ("[vm]\nvcpus = 64", "vm.vcpus"),
            ("[vm]\nmemory = \"lots\"", "vm.memory"),
            ("[vm]\nmemory = \"64M\"", "at least 128"),
            ("[vm]\nidle_stop_after = \"5 weeks\"", "vm.idle_stop_after"),
            ("[timeouts]\nboot = \"0s\"", "timeouts.boot"),
            ("[vm\n", "expected"),
            ("[network]\nbridge = \"eth0\"", "network.bridge"),
            ("[network]\nhelper_socket = \"helper.sock\"", "absolute"),
            ("[network]\ntap_pool = 100", "network.tap_pool"),
            ("[network]\ngateway = \"8.8.8.1/24\"", "private"),
            ("[network]\ngateway = \"172.30.0.1\"", "network.gateway"),
            ("[network]\ngateway = \"172.30.0.0/24\"", "gateway"),
            ("[network]\ngateway = \"172.30.0.1/8\"", "prefix length"),
            (
                "[network]\nguest_dns = [\"dns.google\"]",
                "network.guest_dns",
            ),
            (
                "[network]\nguest_dns = [\"1.1.1.1\", \"1.0.0.1\", \"8.8.8.8\", \"8.8.4.4\"]",
                "at most 3",
            ),
            ("[vm]\nvmm = \"kvm\"", "vm.vmm: unknown VMM \"kvm\""),
            ("[qemu]\npath = \"/x\"", "unknown field"),
            ("[firecracker]\nlaunch = \"root\"", "not a launcher"),
            ("[dashboard]\nport = 70000", "dashboard.port"),
            ("[dashboard]\naddress = \"0.0.0.0\"", "unknown field"),
            ("[kernels]\nmirror = \"127.0.0.1:80\"", "kernels.mirror"),
            ("[kernels]\ncatalog = \"k.json\"", "absolute"),
            ("[kernels]\ndefault = \"../k\"", "kernels.default"),
            ("[images]\nmax_size = \"1M\"", "images.max_size"),
            ("[images]\ncatalog = \"images.json\"", "absolute"),
            (
                "[images]\nheadroom_percent = 5000",
                "images.headroom_percent",
            ),
            ("[registry]\ninsecure = [\"http://x\"]", "registry.insecure"),
            (
                "[registry.mirrors]\n\"docker.io\" = \"a/b\"",
                "registry.mirrors",
            ),
            ("[registry]\nmirror = {}", "unknown field"),
        ] {
            let error = Config::parse(text).unwrap_err();
            assert!(error.contains(needle), "{text:?} gave {error:?}");
        }
    }

    #[test]
    fn zero_idle_time_means_never() {
        assert_eq!(
            Config::parse("[vm]\nidle_stop_after = 0")
                .unwrap()
                .vm
                .idle_stop_after,
            None
        );
    }

    #[test]
    fn durations_parse() {
        for (text, seconds) in [
            ("90", 90),
            ("30s", 30),
            ("5m", 300),
            ("2h", 7200),
            ("1d", 86_400),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
        for bad in ["", "m", "5w", "-3s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_file_means_defaults_and_a_bad_one_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let defaults = Config::load(&path).unwrap();
        assert_eq!(defaults.vm, Config::default().vm);
        std::fs::write(&path, "[vm]\nvcpus = \"two\"").unwrap();
        let error = Config::load(&path).unwrap_err().to_string();
        assert!(error.contains("config.toml"), "{error}");
    }
}
