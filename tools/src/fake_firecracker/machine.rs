//! The fake's API state machine: what Firecracker's API thread and `VmResources` do with a
//! request — parse the body with Firecracker's serde types, check ids, check the pre-/post-boot
//! rule, validate, store — without any guest behind it.
//!
//! [`Machine::handle`] is synchronous and does no I/O beyond what validation needs (opening
//! the kernel and drive files, binding the vsock socket, as Firecracker does at the same
//! point); what must happen to the "guest" comes back as an [`Effect`] for
//! [`super::guest`] to carry out after the response is written.
//!
//! ```text
//!   Not started ──InstanceStart──▶ Running ◀──PATCH /vm Resumed── Paused
//!                                     └──────PATCH /vm Paused──────▶┘
//! ```

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use super::VERSION;

const POST_BOOT: &str = "The requested operation is not supported after starting the microVM.";
const PRE_BOOT: &str = "The requested operation is not supported before starting the microVM.";
/// x86_64's `CMDLINE_MAX_SIZE`, including the terminating NUL.
const CMDLINE_MAX_SIZE: usize = 2048;
const MAX_SUPPORTED_VCPUS: u8 = 32;
/// `IFNAMSIZ` less the NUL.
const MAX_TAP_NAME: usize = 15;

/// `InstanceInfo.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    NotStarted,
    Running,
    Paused,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::NotStarted => "Not started",
            State::Running => "Running",
            State::Paused => "Paused",
        }
    }
}

/// What the guest side must do once the response is out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    Boot,
    CtrlAltDel,
    Pause,
    Resume,
}

/// A response and its effect.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Option<String>,
    pub effect: Option<Effect>,
    /// The request used a deprecated field: micro_http's `Deprecation: true` header.
    pub deprecated: bool,
}

impl Reply {
    fn no_content() -> Reply {
        Reply {
            status: 204,
            body: None,
            effect: None,
            deprecated: false,
        }
    }

    fn ok(value: Value) -> Reply {
        Reply {
            status: 200,
            body: Some(value.to_string()),
            effect: None,
            deprecated: false,
        }
    }

    fn effect(effect: Effect) -> Reply {
        Reply {
            effect: Some(effect),
            ..Reply::no_content()
        }
    }

    /// An error response with Firecracker's `{"fault_message": ...}` body.
    pub fn fault(status: u16, message: impl Into<String>) -> Reply {
        Reply {
            status,
            body: Some(json!({ "fault_message": message.into() }).to_string()),
            effect: None,
            deprecated: false,
        }
    }

    fn bad(message: impl Into<String>) -> Reply {
        Reply::fault(400, message)
    }
}

// ---------------------------------------------------------------------------------------------
// Firecracker's request types (vmm_config), with the same serde attributes.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    #[default]
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    // x86_64's templates, in Firecracker's order (v1.16.1; V1N1 is aarch64's).
    C3,
    T2,
    T2S,
    None,
    T2CL,
    T2A,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: usize,
    #[serde(default)]
    pub smt: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> MachineConfig {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    #[serde(default)]
    pub vcpu_count: Option<u8>,
    #[serde(default)]
    pub mem_size_mib: Option<usize>,
    #[serde(default)]
    pub smt: Option<bool>,
    #[serde(default)]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    #[serde(default)]
    pub huge_pages: Option<HugePages>,
}

impl From<MachineConfig> for MachineConfigUpdate {
    fn from(cfg: MachineConfig) -> MachineConfigUpdate {
        MachineConfigUpdate {
            vcpu_count: Some(cfg.vcpu_count),
            mem_size_mib: Some(cfg.mem_size_mib),
            smt: Some(cfg.smt),
            cpu_template: cfg.cpu_template,
            track_dirty_pages: Some(cfg.track_dirty_pages),
            huge_pages: Some(cfg.huge_pages),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    #[default]
    Unsafe,
    Writeback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    Sync,
    Async,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    #[serde(default)]
    pub partuuid: Option<String>,
    pub is_root_device: bool,
    #[serde(default)]
    pub cache_type: CacheType,
    #[serde(default)]
    pub is_read_only: Option<bool>,
    #[serde(default)]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<Value>,
    #[serde(default, rename = "io_engine", skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, deserialize_with = "mac_address")]
    pub guest_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<Value>,
}

/// Firecracker's `MacAddr` deserializer: six `:`-separated two-digit hex bytes.
fn mac_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let Some(text) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let parts: Vec<&str> = text.split(':').collect();
    let valid = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !valid {
        // Firecracker v1.16.1's message names no address.
        return Err(serde::de::Error::custom(
            "The provided MAC address is invalid.",
        ));
    }
    // Firecracker keeps the six bytes and prints them in lowercase hex.
    Ok(Some(text.to_ascii_lowercase()))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    pub guest_cid: u32,
    pub uds_path: String,
}

/// Firecracker's `LevelFilter` deserializer: case-insensitive, refused while parsing the body.
fn log_level<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let level = String::deserialize(deserializer)?;
    let known = ["error", "warning", "warn", "info", "debug", "trace", "off"];
    if !known.contains(&level.to_ascii_lowercase().as_str()) {
        return Err(serde::de::Error::custom("Invalid LevelFilter"));
    }
    Ok(Some(level))
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    #[serde(default)]
    pub log_path: Option<String>,
    #[serde(default, deserialize_with = "log_level")]
    pub level: Option<String>,
    #[serde(default)]
    pub show_level: Option<bool>,
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    #[serde(default)]
    pub module: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
enum ActionType {
    FlushMetrics,
    InstanceStart,
    SendCtrlAltDel,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
enum VmStateRequest {
    Paused,
    Resumed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmPatch {
    state: VmStateRequest,
}

/// `--config-file`'s top level (`VmmConfig`, kebab-case keys). Sections the fake does not
/// model are accepted and ignored, like unknown keys (Firecracker does not refuse those).
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ConfigFile {
    drives: Vec<Drive>,
    boot_source: BootSource,
    #[serde(default)]
    logger: Option<Logger>,
    #[serde(default)]
    machine_config: Option<MachineConfig>,
    #[serde(default)]
    network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    vsock: Option<Vsock>,
}

// ---------------------------------------------------------------------------------------------
// The machine.
// ---------------------------------------------------------------------------------------------

/// The configured vsock device: its settings and the socket bound for it.
#[derive(Debug)]
pub struct VsockDevice {
    pub config: Vsock,
    /// Taken by the guest at boot to serve `CONNECT`.
    pub listener: Option<UnixListener>,
}

/// Everything `VmResources` would hold, plus the instance state.
#[derive(Debug)]
pub struct Machine {
    pub id: String,
    pub state: State,
    pub machine_config: MachineConfig,
    pub boot_source: Option<BootSource>,
    /// The root drive, if any, first (Firecracker keeps it at the front).
    pub drives: Vec<Drive>,
    pub network_interfaces: Vec<NetworkInterface>,
    pub vsock: Option<VsockDevice>,
    refuse_api: Option<String>,
    /// Whether taps are really opened, as Firecracker does when an interface is configured
    /// (the fake binary does; unit tests of the state rules do not).
    pub open_taps: bool,
    /// The open tap of each interface, by `iface_id`: held for the machine's life, so that
    /// another VMM cannot attach to it (the kernel answers EBUSY), as with Firecracker.
    taps: HashMap<String, OwnedFd>,
}

fn serde_fault(err: serde_json::Error) -> Reply {
    Reply::bad(format!(
        "An error occurred when deserializing the json body of a request: {err}."
    ))
}

/// Sets `Reply::deprecated` on either outcome of a request that used a deprecated field.
fn mark_deprecated(deprecated: bool, result: Result<Reply, Reply>) -> Result<Reply, Reply> {
    let mark = |reply: Reply| Reply {
        deprecated: reply.deprecated || deprecated,
        ..reply
    };
    result.map(mark).map_err(mark)
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(serde_fault)
}

/// Firecracker's `checked_id` for ids in paths.
fn checked_id(id: Option<&str>) -> Result<&str, Reply> {
    match id {
        None | Some("") => Err(Reply::bad("The ID cannot be empty.")),
        Some(id) if !id.chars().all(|c| c == '_' || c.is_alphanumeric()) => Err(Reply::bad(
            "API Resource IDs can only contain alphanumeric characters and underscores.",
        )),
        Some(id) => Ok(id),
    }
}

/// Opens tap `name` the way Firecracker's `Tap::open_named` does: /dev/net/tun, then
/// TUNSETIFF with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR. An existing persistent tap is attached
/// (its owner must be this user, or this user must hold CAP_NET_ADMIN); with CAP_NET_ADMIN an
/// absent name makes a fresh tap that vanishes with the fd, as it does for Firecracker.
fn open_tap(name: &str) -> std::io::Result<OwnedFd> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca; // _IOW('T', 202, int)
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    const IFF_VNET_HDR: libc::c_short = 0x4000;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives for the call.
    let result = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(tun))
}

impl Machine {
    pub fn new(id: &str, refuse_api: Option<String>) -> Machine {
        Machine {
            id: id.to_string(),
            state: State::NotStarted,
            machine_config: MachineConfig::default(),
            boot_source: None,
            drives: Vec::new(),
            network_interfaces: Vec::new(),
            vsock: None,
            refuse_api,
            open_taps: false,
            taps: HashMap::new(),
        }
    }

    pub fn started(&self) -> bool {
        self.state != State::NotStarted
    }

    /// Answers one API request. `body` is `None` for a request without a body.
    pub fn handle(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
        if let Some(pattern) = &self.refuse_api
            && format!("{method} {path}").contains(pattern.as_str())
        {
            return Reply::bad(format!(
                "fault injected: FAKE_FC_REFUSE_API={pattern} matches {method} {path}"
            ));
        }
        let mut tokens = path.trim_start_matches('/').split_terminator('/');
        let resource = tokens.next().unwrap_or("");
        let result = match (method, resource, body) {
            ("GET", "", None) => Ok(self.instance_info()),
            ("GET", "version", None) => Ok(Reply::ok(json!({ "firecracker_version": VERSION }))),
            ("GET", "machine-config", None) => Ok(Reply::ok(json!(self.machine_config))),
            ("GET", "vm", None) if tokens.next() == Some("config") => Ok(self.full_config()),
            ("GET", _, Some(_)) => Err(Reply::bad("GET request cannot have a body.")),
            ("PUT", "actions", Some(body)) => self.put_actions(body),
            ("PUT", "boot-source", Some(body)) => self.put_boot_source(body),
            ("PUT", "drives", Some(body)) => self.put_drive(tokens.next(), body),
            ("PUT", "logger", Some(body)) => self.put_logger(body),
            ("PUT", "machine-config", Some(body)) => self.put_machine_config(body),
            ("PUT", "network-interfaces", Some(body)) => self.put_net(tokens.next(), body),
            ("PUT", "vsock", Some(body)) => self.put_vsock(body),
            ("PUT", _, None) => Err(Reply::bad("Empty PUT request.")),
            ("PATCH", "machine-config", Some(body)) => self.patch_machine_config(body),
            ("PATCH", "vm", Some(body)) => self.patch_vm(body),
            // Post-boot drive and interface updates are not modelled; before boot Firecracker
            // (v1.16.1) parses the body, then refuses with its pre-boot message.
            ("PATCH", "drives" | "network-interfaces", Some(body)) if !self.started() => {
                parse::<Value>(body).and_then(|_| Err(Reply::bad(PRE_BOOT)))
            }
            ("PATCH", _, None) => Err(Reply::bad("Empty PATCH request.")),
            ("DELETE", _, Some(_)) => Err(Reply::bad("Empty Delete request.")),
            (method, resource, _) => Err(Reply::bad(format!(
                "Invalid request method and/or path: {method} {resource}."
            ))),
        };
        result.unwrap_or_else(|reply| reply)
    }

    fn pre_boot(&self) -> Result<(), Reply> {
        if self.started() {
            Err(Reply::bad(POST_BOOT))
        } else {
            Ok(())
        }
    }

    fn instance_info(&self) -> Reply {
        Reply::ok(json!({
            "id": self.id,
            "state": self.state.name(),
            "vmm_version": VERSION,
            "app_name": "Firecracker",
        }))
    }

    /// `GET /vm/config` in Firecracker v1.16.1's shape: every field present (`null` when
    /// unset), an empty boot source before one is set, a drive's defaults filled in.
    fn full_config(&self) -> Reply {
        let boot_source = match &self.boot_source {
            Some(boot) => json!({
                "kernel_image_path": boot.kernel_image_path,
                "initrd_path": boot.initrd_path,
                "boot_args": boot.boot_args,
            }),
            None => json!({"kernel_image_path": "", "initrd_path": null, "boot_args": null}),
        };
        let drives: Vec<Value> = self
            .drives
            .iter()
            .map(|drive| {
                json!({
                    "drive_id": drive.drive_id,
                    "partuuid": drive.partuuid,
                    "is_root_device": drive.is_root_device,
                    "cache_type": drive.cache_type,
                    "is_read_only": drive.is_read_only.unwrap_or(false),
                    "path_on_host": drive.path_on_host,
                    "rate_limiter": drive.rate_limiter,
                    "io_engine": drive.io_engine.unwrap_or(IoEngine::Sync),
                    "socket": null,
                })
            })
            .collect();
        let network_interfaces: Vec<Value> = self
            .network_interfaces
            .iter()
            .map(|iface| {
                json!({
                    "iface_id": iface.iface_id,
                    "host_dev_name": iface.host_dev_name,
                    "guest_mac": iface.guest_mac,
                    "mtu": iface.mtu,
                    "rx_rate_limiter": iface.rx_rate_limiter,
                    "tx_rate_limiter": iface.tx_rate_limiter,
                })
            })
            .collect();
        Reply::ok(json!({
            "balloon": null,
            "drives": drives,
            "boot-source": boot_source,
            "cpu-config": null,
            "logger": null,
            "machine-config": self.machine_config,
            "metrics": null,
            "mmds-config": null,
            "network-interfaces": network_interfaces,
            "vsock": self.vsock.as_ref().map(|v| &v.config),
            "entropy": null,
            "pmem": [],
            "memory-hotplug": null,
        }))
    }

    fn put_actions(&mut self, body: &[u8]) -> Result<Reply, Reply> {
        let action: ActionBody = parse(body)?;
        match (action.action_type, self.started()) {
            (ActionType::InstanceStart, false) => {
                if self.boot_source.is_none() {
                    return Err(Reply::bad(
                        "Start microvm error: Cannot start microvm without kernel configuration.",
                    ));
                }
                self.state = State::Running;
                Ok(Reply::effect(Effect::Boot))
            }
            (ActionType::InstanceStart, true) => Err(Reply::bad(POST_BOOT)),
            (ActionType::SendCtrlAltDel | ActionType::FlushMetrics, false) => {
                Err(Reply::bad(PRE_BOOT))
            }
            (ActionType::SendCtrlAltDel, true) => Ok(Reply::effect(Effect::CtrlAltDel)),
            (ActionType::FlushMetrics, true) => Ok(Reply::no_content()),
        }
    }

    fn put_machine_config(&mut self, body: &[u8]) -> Result<Reply, Reply> {
        let config: MachineConfig = parse(body)?;
        // `cpu_template` is deprecated (v1.16.1): `Deprecation: true`, whatever the outcome.
        let deprecated = config.cpu_template.is_some();
        let result = self
            .pre_boot()
            .and_then(|()| self.update_machine_config(&config.into()));
        mark_deprecated(deprecated, result)
    }

    fn patch_machine_config(&mut self, body: &[u8]) -> Result<Reply, Reply> {
        let update: MachineConfigUpdate = parse(body)?;
        if update == MachineConfigUpdate::default() {
            return Err(Reply::bad("Empty PATCH request."));
        }
        let deprecated = update.cpu_template.is_some();
        let result = self
            .pre_boot()
            .and_then(|()| self.update_machine_config(&update));
        mark_deprecated(deprecated, result)
    }

    /// `MachineConfig::update`: the checks in Firecracker's order.
    fn update_machine_config(&mut self, update: &MachineConfigUpdate) -> Result<Reply, Reply> {
        let current = &self.machine_config;
        let vcpu_count = update.vcpu_count.unwrap_or(current.vcpu_count);
        let smt = update.smt.unwrap_or(current.smt);
        if vcpu_count == 0
            || vcpu_count > MAX_SUPPORTED_VCPUS
            || (smt && vcpu_count > 1 && vcpu_count % 2 == 1)
        {
            return Err(Reply::bad(format!(
                "Machine config error: The number of vCPUs must be greater than 0, less than \
                 {MAX_SUPPORTED_VCPUS} and must be 1 or an even number if SMT is enabled."
            )));
        }
        let mem_size_mib = update.mem_size_mib.unwrap_or(current.mem_size_mib);
        let huge_pages = update.huge_pages.unwrap_or(current.huge_pages);
        let divisor = if huge_pages == HugePages::None { 1 } else { 2 };
        if mem_size_mib == 0 || !mem_size_mib.is_multiple_of(divisor) {
            return Err(Reply::bad(
                "Machine config error: The memory size (MiB) is either 0, or not a multiple of \
                 the configured page size.",
            ));
        }
        let cpu_template = match update.cpu_template {
            None => current.cpu_template,
            Some(CpuTemplate::None) => None,
            Some(other) => Some(other),
        };
        self.machine_config = MachineConfig {
            vcpu_count,
            mem_size_mib,
            smt,
            cpu_template,
            track_dirty_pages: update
                .track_dirty_pages
                .unwrap_or(current.track_dirty_pages),
            huge_pages,
        };
        Ok(Reply::no_content())
    }

    fn put_boot_source(&mut self, body: &[u8]) -> Result<Reply, Reply> {
        let boot: BootSource = parse(body)?;
        self.pre_boot()?;
        self.set_boot_source(boot)
    }

    fn set_boot_source(&mut self, boot: BootSource) -> Result<Reply, Reply> {
        // Firecracker opens both files here and keeps them open until boot.
        if let Err(err) = std::fs::File::open(&boot.kernel_image_path) {
            return Err(Reply::bad(format!(
                "Boot source error: The kernel file cannot be opened: {err}"
            )));
        }
        if let Some(initrd) = &boot.initrd_path
            && let Err(err) = std::fs::File::open(initrd)
        {
            return Err(Reply::bad(format!(
                "Boot source error: The initrd file cannot be opened due to invalid path or \
                 invalid permissions. {err}"
            )));
        }
        if let Some(args) = &boot.boot_args {
            let problem = if args.len() + 1 > CMDLINE_MAX_SIZE {
                Some("Command line string too large")
            } else if !args.bytes().all(|b| (b' '..=b'~').contains(&b)) {
                Some("String contains a non-printable ASCII character")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(Reply::bad(format!(
                    "Boot source error: The kernel command line is invalid: {problem}"
                )));
            }
        }
        self.boot_source = Some(boot);
        Ok(Reply::no_content())
    }

    fn put_drive(&mut self, id: Option<&str>, body: &[u8]) -> Result<Reply, Reply> {
        let id = checked_id(id)?;
        let drive: Drive = parse(body)?;
        if drive.drive_id != id {
            return Err(Reply::bad(
                "The id from the path does not match the id from the body!",
            ));
        }
        self.pre_boot()?;
        self.insert_drive(drive)
    }

    /// `BlockBuilder::insert` and `Block::new`.
    fn insert_drive(&mut self, drive: Drive) -> Result<Reply, Reply> {
        let position = self
            .drives
            .iter()
            .position(|d| d.drive_id == drive.drive_id);
        let has_root = self.drives.first().is_some_and(|d| d.is_root_device);
        if drive.is_root_device && has_root && position != Some(0) {
            return Err(Reply::bad(
                "Drive config error: A root block device already exists!",
            ));
        }
        let create_error = |detail: String| {
            Reply::bad(format!(
                "Drive config error: Unable to create the virtio block device: {detail}"
            ))
        };
        if drive.socket.is_some() {
            return Err(create_error(
                "Vhost user backend error: vhost-user drives are not supported by \
                 fake-firecracker"
                    .to_string(),
            ));
        }
        let Some(path) = &drive.path_on_host else {
            return Err(create_error(
                "Virtio backend error: Cannot create config".to_string(),
            ));
        };
        let read_only = drive.is_read_only.unwrap_or(false);
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path);
        if let Err(err) = opened {
            return Err(create_error(format!(
                "Virtio backend error: Error manipulating the backing file: {err} {path}"
            )));
        }
        match position {
            Some(index) => {
                self.drives[index] = drive;
                if index != 0 && self.drives[index].is_root_device {
                    self.drives.swap(0, index);
                }
            }
            None if drive.is_root_device => self.drives.insert(0, drive),
            None => self.drives.push(drive),
        }
        Ok(Reply::no_content())
    }

    fn put_net(&mut self, id: Option<&str>, body: &[u8]) -> Result<Reply, Reply> {
        let id = checked_id(id)?;
        let iface: NetworkInterface = parse(body)?;
        if iface.iface_id != id {
            return Err(Reply::bad(format!(
                "The id from the path [{id}] does not match the id from the body [{}]!",
                iface.iface_id
            )));
        }
        self.pre_boot()?;
        self.insert_net(iface)
    }

    /// `NetBuilder::build`, without opening the tap.
    fn insert_net(&mut self, iface: NetworkInterface) -> Result<Reply, Reply> {
        if let Some(mac) = &iface.guest_mac
            && self.network_interfaces.iter().any(|other| {
                other.iface_id != iface.iface_id
                    && other
                        .guest_mac
                        .as_ref()
                        .is_some_and(|m| m.eq_ignore_ascii_case(mac))
            })
        {
            return Err(Reply::bad(format!(
                "Network config error: The MAC address is already in use: {mac}"
            )));
        }
        // An update drops the old device (and closes its tap) before the new one is made,
        // so re-configuring an interface with its own tap works — and a failed update
        // leaves the interface gone, as in Firecracker's `NetBuilder::build`.
        self.network_interfaces
            .retain(|other| other.iface_id != iface.iface_id);
        self.taps.remove(&iface.iface_id);
        if iface.host_dev_name.is_empty() || iface.host_dev_name.len() > MAX_TAP_NAME {
            return Err(Reply::bad(
                "Network config error: Could not create the network device: Open tap device \
                 failed: Invalid interface name",
            ));
        }
        // Firecracker opens the tap here, and a tap another interface holds open is busy.
        if self.network_interfaces.iter().any(|other| {
            other.iface_id != iface.iface_id && other.host_dev_name == iface.host_dev_name
        }) {
            return Err(Reply::bad(format!(
                "Network config error: Could not create the network device: Open tap device \
                 failed: Error while creating ifreq structure: Device or resource busy (os \
                 error 16). Invalid TUN/TAP Backend provided by {}. Check our documentation on \
                 setting up the network devices.",
                iface.host_dev_name
            )));
        }
        if self.open_taps {
            let tap = open_tap(&iface.host_dev_name).map_err(|err| {
                Reply::bad(format!(
                    "Network config error: Could not create the network device: Open tap device \
                     failed: Error while creating ifreq structure: {err}. Invalid TUN/TAP Backend \
                     provided by {}. Check our documentation on setting up the network devices.",
                    iface.host_dev_name
                ))
            })?;
            self.taps.insert(iface.iface_id.clone(), tap);
        }
        self.network_interfaces.push(iface);
        Ok(Reply::no_content())
    }

    fn put_vsock(&mut self, body: &[u8]) -> Result<Reply, Reply> {
        let vsock: Vsock = parse(body)?;
        // `vsock_id` is deprecated (v1.16.1): `Deprecation: true`, whatever the outcome.
        let deprecated = vsock.vsock_id.is_some();
        let result = self.pre_boot().and_then(|()| self.set_vsock(vsock));
        mark_deprecated(deprecated, result)
    }

    /// `VsockBuilder::insert`: drops the old device and its socket, binds the new one.
    fn set_vsock(&mut self, vsock: Vsock) -> Result<Reply, Reply> {
        if let Some(old) = self.vsock.take() {
            drop(old.listener);
            let _ = std::fs::remove_file(&old.config.uds_path);
        }
        match UnixListener::bind(&vsock.uds_path) {
            Ok(listener) => {
                self.vsock = Some(VsockDevice {
                    config: vsock,
                    listener: Some(listener),
                });
                Ok(Reply::no_content())
            }
            Err(err) => Err(Reply::bad(format!(
                "Vsock config error: Cannot create backend for vsock device: Error binding to \
                 the host-side Unix socket: {err}"
            ))),
        }
    }

    fn put_logger(&mut self, body: &[u8]) -> Result<Reply, Reply> {
        let logger: Logger = parse(body)?;
        self.pre_boot()?;
        self.set_logger(&logger)
    }

    fn set_logger(&mut self, logger: &Logger) -> Result<Reply, Reply> {
        // Firecracker opens the target without creating it (it is often a named pipe).
        if let Some(path) = &logger.log_path
            && let Err(err) = std::fs::OpenOptions::new().append(true).open(path)
        {
            return Err(Reply::bad(format!(
                "Logger error: Failed to open target file: {err}"
            )));
        }
        Ok(Reply::no_content())
    }

    fn patch_vm(&mut self, body: &[u8]) -> Result<Reply, Reply> {
        let patch: VmPatch = parse(body)?;
        if !self.started() {
            return Err(Reply::bad(PRE_BOOT));
        }
        Ok(match patch.state {
            VmStateRequest::Paused => {
                self.state = State::Paused;
                Reply::effect(Effect::Pause)
            }
            VmStateRequest::Resumed => {
                self.state = State::Running;
                Reply::effect(Effect::Resume)
            }
        })
    }

    /// Applies a `--config-file` in `VmResources::from_json`'s order. The error is the
    /// message Firecracker would print.
    pub fn apply_config_json(&mut self, text: &str) -> Result<(), String> {
        let config: ConfigFile =
            serde_json::from_str(text).map_err(|err| format!("Invalid JSON: {err}"))?;
        let fault = |reply: Reply| -> String {
            let body: Value = reply
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str(b).ok())
                .unwrap_or(Value::Null);
            body["fault_message"]
                .as_str()
                .unwrap_or("unknown error")
                .to_string()
        };
        if let Some(logger) = &config.logger {
            self.set_logger(logger).map_err(fault)?;
        }
        if let Some(machine) = config.machine_config {
            self.update_machine_config(&machine.into()).map_err(fault)?;
        }
        self.set_boot_source(config.boot_source).map_err(fault)?;
        for drive in config.drives {
            self.insert_drive(drive).map_err(fault)?;
        }
        for iface in config.network_interfaces {
            self.insert_net(iface).map_err(fault)?;
        }
        if let Some(vsock) = config.vsock {
            self.set_vsock(vsock).map_err(fault)?;
        }
        self.state = State::Running;
        Ok(())
    }

    /// The kernel command line the guest would see: Firecracker appends the root device.
    pub fn kernel_cmdline(&self) -> String {
        let mut cmdline = self
            .boot_source
            .as_ref()
            .and_then(|b| b.boot_args.clone())
            .unwrap_or_else(|| {
                "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux \
                 i8042.dumbkbd swiotlb=noforce"
                    .to_string()
            });
        if let Some(root) = self.drives.first().filter(|d| d.is_root_device) {
            let ro = if root.is_read_only.unwrap_or(false) {
                "ro"
            } else {
                "rw"
            };
            match &root.partuuid {
                Some(uuid) => cmdline.push_str(&format!(" root=PARTUUID={uuid} {ro}")),
                None => cmdline.push_str(&format!(" root=/dev/vda {ro}")),
            }
        }
        cmdline
    }

    /// A summary of the configured devices for the boot lines, keyed for stable order.
    pub fn device_lines(&self) -> BTreeMap<usize, String> {
        let mut lines = BTreeMap::new();
        for (index, drive) in self.drives.iter().enumerate() {
            let name = (b'a' + (index as u8 % 26)) as char;
            lines.insert(
                index,
                format!(
                    "virtio_blk virtio{index}: [vd{name}] {} ({}{})",
                    drive.path_on_host.as_deref().unwrap_or("?"),
                    if drive.is_root_device { "root, " } else { "" },
                    if drive.is_read_only.unwrap_or(false) {
                        "ro"
                    } else {
                        "rw"
                    }
                ),
            );
        }
        let base = self.drives.len();
        for (offset, iface) in self.network_interfaces.iter().enumerate() {
            lines.insert(
                base + offset,
                format!(
                    "virtio_net virtio{}: {} on tap {} mac {}",
                    base + offset,
                    iface.iface_id,
                    iface.host_dev_name,
                    iface.guest_mac.as_deref().unwrap_or("(random)")
                ),
            );
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(reply: &Reply) -> String {
        assert_eq!(reply.status, 400, "{reply:?}");
        let body: Value = serde_json::from_str(reply.body.as_deref().unwrap()).unwrap();
        body["fault_message"].as_str().unwrap().to_string()
    }

    fn put(m: &mut Machine, path: &str, body: Value) -> Reply {
        m.handle("PUT", path, Some(body.to_string().as_bytes()))
    }

    #[test]
    fn machine_config_validation_follows_firecracker() {
        let mut m = Machine::new("t", None);
        assert_eq!(
            put(
                &mut m,
                "/machine-config",
                json!({"vcpu_count": 2, "mem_size_mib": 256})
            )
            .status,
            204
        );
        assert_eq!(m.machine_config.vcpu_count, 2);
        for (body, expect) in [
            (
                json!({"vcpu_count": 0, "mem_size_mib": 256}),
                "number of vCPUs",
            ),
            (
                json!({"vcpu_count": 33, "mem_size_mib": 256}),
                "number of vCPUs",
            ),
            (
                json!({"vcpu_count": 3, "mem_size_mib": 256, "smt": true}),
                "number of vCPUs",
            ),
            (
                json!({"vcpu_count": 300, "mem_size_mib": 256}),
                "expected u8",
            ),
            (json!({"vcpu_count": 1, "mem_size_mib": 0}), "memory size"),
            (
                json!({"vcpu_count": 1, "mem_size_mib": 129, "huge_pages": "2M"}),
                "memory size",
            ),
            (json!({"vcpu_count": 1}), "missing field `mem_size_mib`"),
            (
                json!({"vcpu_count": 1, "mem_size_mib": 1, "x": 1}),
                "unknown field `x`",
            ),
        ] {
            let message = fault(&put(&mut m, "/machine-config", body));
            assert!(message.contains(expect), "{message}");
        }
        // A refused update changes nothing.
        assert_eq!(m.machine_config.mem_size_mib, 256);
        let malformed = m.handle("PUT", "/machine-config", Some(b"{not json"));
        assert!(fault(&malformed).starts_with("An error occurred when deserializing"));
    }

    #[test]
    fn pre_and_post_boot_rules() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"k").unwrap();
        let mut m = Machine::new("t", None);
        let start = json!({"action_type": "InstanceStart"});
        assert!(fault(&put(&mut m, "/actions", start.clone())).contains("without kernel"));
        assert!(
            fault(&put(
                &mut m,
                "/actions",
                json!({"action_type": "SendCtrlAltDel"})
            ))
            .contains("before starting")
        );
        assert!(
            fault(&m.handle("PATCH", "/vm", Some(br#"{"state":"Paused"}"#)))
                .contains("before starting")
        );
        assert_eq!(
            put(&mut m, "/boot-source", json!({"kernel_image_path": kernel})).status,
            204
        );
        assert_eq!(
            put(&mut m, "/actions", start.clone()).effect,
            Some(Effect::Boot)
        );
        assert_eq!(m.state, State::Running);
        assert_eq!(fault(&put(&mut m, "/actions", start)), POST_BOOT);
        let mc = json!({"vcpu_count": 1, "mem_size_mib": 128});
        assert_eq!(fault(&put(&mut m, "/machine-config", mc)), POST_BOOT);
        assert_eq!(
            m.handle("PATCH", "/vm", Some(br#"{"state":"Paused"}"#))
                .effect,
            Some(Effect::Pause)
        );
        let info: Value = serde_json::from_str(&m.handle("GET", "/", None).body.unwrap()).unwrap();
        assert_eq!(info["state"], "Paused");
        assert_eq!(
            put(&mut m, "/actions", json!({"action_type": "SendCtrlAltDel"})).effect,
            Some(Effect::CtrlAltDel)
        );
    }

    #[test]
    fn drives() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("root.ext4");
        std::fs::write(&disk, b"").unwrap();
        let mut m = Machine::new("t", None);
        let drive = |id: &str, path: &std::path::Path, root: bool| {
            json!({"drive_id": id, "path_on_host": path, "is_root_device": root,
                   "is_read_only": false})
        };
        assert_eq!(
            put(&mut m, "/drives/work", drive("work", &disk, false)).status,
            204
        );
        assert_eq!(
            put(&mut m, "/drives/root", drive("root", &disk, true)).status,
            204
        );
        assert_eq!(m.drives[0].drive_id, "root");
        // Updating the root drive in place is fine; a second root is not.
        assert_eq!(
            put(&mut m, "/drives/root", drive("root", &disk, true)).status,
            204
        );
        assert!(
            fault(&put(&mut m, "/drives/other", drive("other", &disk, true)))
                .contains("A root block device already exists")
        );
        assert!(
            fault(&put(
                &mut m,
                "/drives/x",
                drive("x", &dir.path().join("nope"), false)
            ))
            .contains("No such file or directory")
        );
        assert!(
            fault(&put(&mut m, "/drives/a", drive("b", &disk, false))).contains("does not match")
        );
        assert!(
            fault(&put(&mut m, "/drives/a-b", drive("a-b", &disk, false))).contains("alphanumeric")
        );
        assert!(fault(&put(&mut m, "/drives", drive("a", &disk, false))).contains("empty"));
        assert!(
            fault(&put(&mut m, "/drives/a", json!({"drive_id": "a"})))
                .contains("missing field `is_root_device`")
        );
        assert_eq!(m.drives.len(), 2);
    }

    #[test]
    fn network_interfaces_and_vsock() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Machine::new("t", None);
        let net = |id: &str, mac: &str| json!({"iface_id": id, "host_dev_name": "tap0", "guest_mac": mac});
        assert_eq!(
            put(
                &mut m,
                "/network-interfaces/eth0",
                net("eth0", "06:00:0a:00:00:02")
            )
            .status,
            204
        );
        assert!(
            fault(&put(
                &mut m,
                "/network-interfaces/eth1",
                net("eth1", "06:00:0A:00:00:02")
            ))
            .contains("already in use")
        );
        assert!(
            fault(&put(&mut m, "/network-interfaces/eth1", net("eth1", "zz")))
                .contains("MAC address is invalid")
        );
        assert!(
            fault(&put(
                &mut m,
                "/network-interfaces/eth1",
                net("eth2", "06:00:0a:00:00:03")
            ))
            .contains("[eth1] does not match the id from the body [eth2]")
        );
        // eth0 holds tap0 open; MACs are kept in lowercase.
        let busy = fault(&put(
            &mut m,
            "/network-interfaces/eth1",
            json!({"iface_id": "eth1", "host_dev_name": "tap0"}),
        ));
        assert!(busy.contains("Device or resource busy"), "{busy}");
        assert!(
            fault(&put(
                &mut m,
                "/network-interfaces/eth1",
                json!({"iface_id": "eth1", "host_dev_name": "tap1",
                       "guest_mac": "06:00:0A:00:00:02"}),
            ))
            .ends_with("already in use: 06:00:0a:00:00:02")
        );

        let uds = dir.path().join("v.sock");
        let vsock = json!({"guest_cid": 3, "uds_path": uds});
        assert_eq!(put(&mut m, "/vsock", vsock.clone()).status, 204);
        assert!(uds.exists());
        // Replacing the device frees its socket first.
        assert_eq!(put(&mut m, "/vsock", vsock).status, 204);
        let taken = dir.path().join("taken.sock");
        std::fs::write(&taken, b"").unwrap();
        assert!(
            fault(&put(
                &mut m,
                "/vsock",
                json!({"guest_cid": 3, "uds_path": taken})
            ))
            .contains("Error binding")
        );
        assert!(
            fault(&put(&mut m, "/vsock", json!({"guest_cid": 3})))
                .contains("missing field `uds_path`")
        );
        // Deprecated fields are flagged for a `Deprecation: true` header.
        let vsock = json!({"vsock_id": "v", "guest_cid": 3, "uds_path": uds});
        assert!(put(&mut m, "/vsock", vsock).deprecated);
        let config = json!({"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"});
        assert!(put(&mut m, "/machine-config", config).deprecated);
        assert!(
            !put(
                &mut m,
                "/machine-config",
                json!({"vcpu_count": 1, "mem_size_mib": 128})
            )
            .deprecated
        );
    }

    #[test]
    fn routing_errors_and_the_refusal_knob() {
        let mut m = Machine::new("t", Some("/drives".into()));
        assert_eq!(
            fault(&m.handle("PUT", "/boot-source", None)),
            "Empty PUT request."
        );
        assert_eq!(
            fault(&m.handle("GET", "/", Some(b"{}"))),
            "GET request cannot have a body."
        );
        assert_eq!(
            fault(&m.handle("PUT", "/nope", Some(b"{}"))),
            "Invalid request method and/or path: PUT nope."
        );
        assert!(fault(&m.handle("PUT", "/drives/x", Some(b"{}"))).starts_with("fault injected"));
        assert_eq!(
            fault(&m.handle("PATCH", "/network-interfaces/eth0", Some(b"{}"))),
            PRE_BOOT
        );
        assert_eq!(m.handle("GET", "/machine-config", None).status, 200);
    }

    #[test]
    fn config_file_boots_and_reports_the_first_bad_section() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"k").unwrap();
        let good = json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
            "drives": [],
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
            "balloon": null,
        });
        let mut m = Machine::new("t", None);
        m.apply_config_json(&good.to_string()).unwrap();
        assert_eq!(m.state, State::Running);
        assert_eq!(m.kernel_cmdline(), "console=ttyS0");

        let mut bad = good.clone();
        bad["machine-config"]["vcpu_count"] = json!(0);
        let err = Machine::new("t", None)
            .apply_config_json(&bad.to_string())
            .unwrap_err();
        assert!(err.contains("number of vCPUs"), "{err}");
        let err = Machine::new("t", None)
            .apply_config_json(r#"{"drives": []}"#)
            .unwrap_err();
        assert!(err.contains("boot-source"), "{err}");
    }
}
