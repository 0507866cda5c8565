//! The boot contract between banger's host side, its kernel bundles' initrd and the agent in
//! the guest: the fixed paths and the kernel command line arguments they share
//! (`docs/ARCHITECTURE.md`, "The boot contract", tells the whole story).
//!
//! Both sides use this one module: bangerd formats the command line with
//! [`GuestBootArgs::to_kernel_args`], the initrd's init ([`crate::initrd`]) and the agent as
//! PID 1 ([`crate::pid1`]) read it back with [`GuestBootArgs::parse`], and the kernel bundle
//! builder (`banger::kernel`) writes the initrd at the paths named here. So a change to the
//! contract is a change to this file, and the round-trip tests below cover both directions.
//!
//! Invariants: parsing never fails on what the kernel or a user put on the command line
//! (unknown words are ignored, a malformed banger argument is reported in
//! [`GuestBootArgs::problems`] and otherwise left unset); every argument banger defines starts
//! with `banger.`, so the kernel treats it as an unused module parameter and passes it neither
//! to init's arguments nor to its environment: only `/proc/cmdline` carries it.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

/// Where the agent lives inside every banger image. The initrd's init executes it as PID 1
/// when the image has no init of its own (a container image such as `debian:bookworm`).
pub const AGENT_PATH_IN_IMAGE: &str = "/.banger/banger-agent";

/// The init the initrd hands over to when the command line names none with `init=` and the
/// image has it (executable, symlinks resolved inside the image).
pub const IMAGE_INIT: &str = "/sbin/init";

/// In the initrd: the modules to load, one absolute path per line, dependencies first. Written
/// by the bundle builder, read by the initrd's init.
pub const INITRD_MODULE_LIST: &str = "/banger/modules.load";

/// In the initrd: where the root disk is mounted before it becomes `/`.
pub const INITRD_NEW_ROOT: &str = "/newroot";

/// The root disk when the command line names none (`banger.root=` or `root=`): the first
/// virtio-blk disk, which is how both Firecracker and QEMU's microvm attach the first drive.
pub const DEFAULT_ROOT_DEVICE: &str = "/dev/vda";

/// How long the initrd's init waits for the root disk to appear by default. Generous: under
/// software emulation on a loaded host the virtio-mmio probe can take seconds.
pub const DEFAULT_ROOT_WAIT: Duration = Duration::from_secs(30);

/// Where the work disk is mounted when `banger.work=` names a device and no mount point.
pub const DEFAULT_WORK_MOUNT: &str = "/work";

/// How the guest ends a graceful shutdown or a fatal boot error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HaltAction {
    /// ACPI power off: QEMU's microvm (`acpi=on`) exits on it.
    #[default]
    PowerOff,
    /// Reboot: Firecracker has no ACPI power off and exits when its guest reboots (with the
    /// kernel's `reboot=k`); QEMU does too when started with `-no-reboot`.
    Reboot,
}

impl HaltAction {
    fn as_str(self) -> &'static str {
        match self {
            HaltAction::PowerOff => "poweroff",
            HaltAction::Reboot => "reboot",
        }
    }
}

impl FromStr for HaltAction {
    type Err = String;

    fn from_str(s: &str) -> Result<HaltAction, String> {
        match s {
            "poweroff" => Ok(HaltAction::PowerOff),
            "reboot" => Ok(HaltAction::Reboot),
            other => Err(format!("{other:?} is neither poweroff nor reboot")),
        }
    }
}

/// An IPv4 address with its prefix length, as `banger.ip=` carries it (`172.30.0.2/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    /// The netmask of the prefix (`/24` → `255.255.255.0`).
    pub fn netmask(self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Ipv4Cidr, String> {
        let (address, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX (e.g. 172.30.0.2/24)"))?;
        let address = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv4 address"))?;
        let prefix_len = prefix
            .parse()
            .ok()
            .filter(|len| *len <= 32)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length from 0 to 32"))?;
        Ok(Ipv4Cidr {
            address,
            prefix_len,
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// What banger tells a guest on its kernel command line. Every field is optional: a command
/// line without banger arguments boots with the defaults above.
///
/// | argument | meaning | read by |
/// |---|---|---|
/// | `banger.root=DEV` (else `root=DEV`) | the root disk | initrd |
/// | `banger.rootfstype=TYPE` (else `rootfstype=`) | its filesystem, default ext4 | initrd |
/// | `ro` | mount the root read-only (default read-write) | initrd |
/// | `banger.rootwait=SECONDS` | how long to wait for the root disk, default 30 | initrd |
/// | `init=PATH` | the image's init, instead of `/sbin/init` or the agent | initrd |
/// | `banger.halt=poweroff\|reboot` | how the guest ends, default poweroff | initrd, agent |
/// | `banger.hostname=NAME` | the guest's hostname (the VM's name) | agent |
/// | `banger.ip=ADDR/PREFIX` | eth0's address (else the kernel's `ip=` form) | agent |
/// | `banger.gw=ADDR` | the default gateway | agent |
/// | `banger.dns=ADDR[,ADDR…]` | name servers for `/etc/resolv.conf` | agent |
/// | `banger.work=DEV[:PATH]` | the work disk and where to mount it (default `/work`) | agent |
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestBootArgs {
    pub root: Option<String>,
    pub root_fstype: Option<String>,
    pub root_read_only: bool,
    pub root_wait: Option<Duration>,
    pub init: Option<String>,
    pub halt: HaltAction,
    pub hostname: Option<String>,
    pub ip: Option<Ipv4Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub work_device: Option<String>,
    pub work_mount: Option<String>,
    /// Malformed banger arguments, as sentences: the guest prints them on its console and
    /// goes on without them.
    pub problems: Vec<String>,
}

impl GuestBootArgs {
    /// Reads a kernel command line (`/proc/cmdline`). Never fails; see [`Self::problems`].
    pub fn parse(cmdline: &str) -> GuestBootArgs {
        let mut args = GuestBootArgs::default();
        let mut legacy_root = None;
        let mut legacy_fstype = None;
        let mut legacy_ip = None;
        for word in split_cmdline(cmdline) {
            let (key, value) = match word.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (word.as_str(), None),
            };
            match (key, value) {
                ("ro", None) => args.root_read_only = true,
                ("rw", None) => args.root_read_only = false,
                ("root", Some(v)) => legacy_root = Some(v.to_owned()),
                ("rootfstype", Some(v)) => legacy_fstype = Some(v.to_owned()),
                ("init", Some(v)) if !v.is_empty() => args.init = Some(v.to_owned()),
                ("ip", Some(v)) => legacy_ip = Some(v.to_owned()),
                ("banger.root", Some(v)) if !v.is_empty() => args.root = Some(v.to_owned()),
                ("banger.rootfstype", Some(v)) if !v.is_empty() => {
                    args.root_fstype = Some(v.to_owned())
                }
                ("banger.rootwait", Some(v)) => match v.parse::<u64>() {
                    Ok(seconds) if seconds > 0 => {
                        args.root_wait = Some(Duration::from_secs(seconds))
                    }
                    _ => args.problem(key, v, "is not a whole number of seconds above 0"),
                },
                ("banger.halt", Some(v)) => match v.parse() {
                    Ok(halt) => args.halt = halt,
                    Err(e) => args.problem(key, v, &e),
                },
                ("banger.hostname", Some(v)) => {
                    if valid_hostname(v) {
                        args.hostname = Some(v.to_owned());
                    } else {
                        args.problem(key, v, "is not a hostname (letters, digits, '-', '.')");
                    }
                }
                ("banger.ip", Some(v)) => match v.parse() {
                    Ok(ip) => args.ip = Some(ip),
                    Err(e) => args.problem(key, v, &e),
                },
                ("banger.gw", Some(v)) => match v.parse() {
                    Ok(gw) => args.gateway = Some(gw),
                    Err(_) => args.problem(key, v, "is not an IPv4 address"),
                },
                ("banger.dns", Some(v)) => {
                    let servers: Result<Vec<Ipv4Addr>, _> = v
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::parse)
                        .collect();
                    match servers {
                        Ok(servers) => args.dns = servers,
                        Err(_) => args.problem(key, v, "is not a comma-separated IPv4 list"),
                    }
                }
                ("banger.work", Some(v)) => {
                    let (device, mount) = match v.split_once(':') {
                        Some((device, mount)) => (device, Some(mount)),
                        None => (v, None),
                    };
                    if !device.starts_with("/dev/") {
                        args.problem(key, v, "does not name a device under /dev");
                    } else if mount.is_some_and(|m| !m.starts_with('/') || m.contains("..")) {
                        args.problem(key, v, "names a mount point that is not an absolute path");
                    } else {
                        args.work_device = Some(device.to_owned());
                        args.work_mount = mount.map(str::to_owned);
                    }
                }
                (k, _) if k.starts_with("banger.") => {
                    args.problems
                        .push(format!("unknown banger argument {word:?} ignored"));
                }
                _ => {}
            }
        }
        args.root = args.root.or(legacy_root);
        args.root_fstype = args.root_fstype.or(legacy_fstype);
        // The kernel's own `ip=` form, which the cloud kernel ignores (no IP_PNP): read it so
        // that a command line written for a kernel with IP_PNP still configures eth0.
        if args.ip.is_none()
            && let Some(legacy) = legacy_ip
        {
            args.apply_kernel_ip(&legacy);
        }
        args
    }

    fn problem(&mut self, key: &str, value: &str, why: &str) {
        self.problems
            .push(format!("{key}={value:?} {why}; ignored"));
    }

    /// `ip=CLIENT:SERVER:GATEWAY:NETMASK:HOSTNAME:DEVICE:AUTOCONF` (only eth0 or no device).
    fn apply_kernel_ip(&mut self, value: &str) {
        let fields: Vec<&str> = value.split(':').collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("");
        let device = field(5);
        if !(device.is_empty() || device == "eth0") {
            return;
        }
        let (Ok(address), Ok(netmask)) =
            (field(0).parse::<Ipv4Addr>(), field(3).parse::<Ipv4Addr>())
        else {
            return;
        };
        let mask = u32::from(netmask);
        if mask.leading_ones() != mask.count_ones() {
            self.problem("ip", value, "has a netmask that is not a prefix");
            return;
        }
        self.ip = Some(Ipv4Cidr {
            address,
            prefix_len: mask.count_ones() as u8,
        });
        if self.gateway.is_none() {
            self.gateway = field(2).parse().ok();
        }
        if self.hostname.is_none() && valid_hostname(field(4)) {
            self.hostname = Some(field(4).to_owned());
        }
    }

    /// The root disk to wait for and mount.
    pub fn root_device(&self) -> &str {
        self.root.as_deref().unwrap_or(DEFAULT_ROOT_DEVICE)
    }

    /// The root disk's filesystem.
    pub fn root_fstype(&self) -> &str {
        self.root_fstype.as_deref().unwrap_or("ext4")
    }

    /// How long to wait for the root disk.
    pub fn root_wait(&self) -> Duration {
        self.root_wait.unwrap_or(DEFAULT_ROOT_WAIT)
    }

    /// Where the work disk goes.
    pub fn work_mount(&self) -> &str {
        self.work_mount.as_deref().unwrap_or(DEFAULT_WORK_MOUNT)
    }

    /// The banger arguments for a kernel command line (without the console and timer
    /// arguments, which depend on the VMM): what [`Self::parse`] reads back. Defaults are
    /// left out, so a plain boot has a short command line.
    pub fn to_kernel_args(&self) -> String {
        let mut words = Vec::new();
        if let Some(root) = &self.root {
            words.push(format!("banger.root={root}"));
        }
        if let Some(fstype) = &self.root_fstype {
            words.push(format!("banger.rootfstype={fstype}"));
        }
        if self.root_read_only {
            words.push("ro".to_owned());
        }
        if let Some(wait) = self.root_wait {
            words.push(format!("banger.rootwait={}", wait.as_secs().max(1)));
        }
        if let Some(init) = &self.init {
            words.push(format!("init={init}"));
        }
        if self.halt != HaltAction::default() {
            words.push(format!("banger.halt={}", self.halt.as_str()));
        }
        if let Some(hostname) = &self.hostname {
            words.push(format!("banger.hostname={hostname}"));
        }
        if let Some(ip) = self.ip {
            words.push(format!("banger.ip={ip}"));
        }
        if let Some(gateway) = self.gateway {
            words.push(format!("banger.gw={gateway}"));
        }
        if !self.dns.is_empty() {
            let servers: Vec<String> = self.dns.iter().map(Ipv4Addr::to_string).collect();
            words.push(format!("banger.dns={}", servers.join(",")));
        }
        if let Some(device) = &self.work_device {
            match &self.work_mount {
                Some(mount) => words.push(format!("banger.work={device}:{mount}")),
                None => words.push(format!("banger.work={device}")),
            }
        }
        words.join(" ")
    }
}

/// Splits a kernel command line into words as the kernel does: on spaces, with double quotes
/// grouping (`foo="a b"` is one word, `foo=a b` with the quotes removed), and stops at `--`
/// (what follows belongs to init).
fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    if word == "--" {
                        return words;
                    }
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word && word != "--" {
        words.push(word);
    }
    words
}

/// A hostname the guest may set: 1–253 characters, labels of letters, digits and '-'.
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_command_line_reads_back_what_was_written() {
        let args = GuestBootArgs {
            root: Some("/dev/vda".into()),
            root_fstype: Some("ext4".into()),
            root_read_only: true,
            root_wait: Some(Duration::from_secs(60)),
            init: Some("/lib/systemd/systemd".into()),
            halt: HaltAction::Reboot,
            hostname: Some("dev-box".into()),
            ip: Some("172.30.0.2/24".parse().unwrap()),
            gateway: Some(Ipv4Addr::new(172, 30, 0, 1)),
            dns: vec![Ipv4Addr::new(172, 30, 0, 1), Ipv4Addr::new(1, 1, 1, 1)],
            work_device: Some("/dev/vdb".into()),
            work_mount: Some("/root/work".into()),
            problems: Vec::new(),
        };
        let line = format!(
            "console=ttyS0 tsc_early_khz=2000000 {} quiet",
            args.to_kernel_args()
        );
        assert_eq!(GuestBootArgs::parse(&line), args, "{line}");
        assert_eq!(GuestBootArgs::default().to_kernel_args(), "");
    }

    #[test]
    fn defaults_fill_what_the_command_line_leaves_out() {
        let args = GuestBootArgs::parse("console=ttyS0 panic=1");
        assert_eq!(args.root_device(), "/dev/vda");
        assert_eq!(args.root_fstype(), "ext4");
        assert_eq!(args.root_wait(), DEFAULT_ROOT_WAIT);
        assert_eq!(args.halt, HaltAction::PowerOff);
        assert!(!args.root_read_only);
        assert_eq!(args.work_mount(), "/work");
        assert!(args.problems.is_empty());
    }

    #[test]
    fn the_kernels_own_root_and_ip_forms_are_read_when_banger_gives_none() {
        let args = GuestBootArgs::parse(
            "root=/dev/vdb rootfstype=ext2 \
             ip=172.30.0.5::172.30.0.1:255.255.255.0::eth0:off",
        );
        assert_eq!(args.root_device(), "/dev/vdb");
        assert_eq!(args.root_fstype(), "ext2");
        assert_eq!(args.ip, Some("172.30.0.5/24".parse().unwrap()));
        assert_eq!(args.gateway, Some(Ipv4Addr::new(172, 30, 0, 1)));
        // banger's own arguments win over the kernel's.
        let args = GuestBootArgs::parse(
            "root=/dev/vdb banger.root=/dev/vdc ip=10.0.0.2::10.0.0.1:255.0.0.0::eth0:off banger.ip=10.1.0.2/16",
        );
        assert_eq!(args.root_device(), "/dev/vdc");
        assert_eq!(args.ip, Some("10.1.0.2/16".parse().unwrap()));
        assert_eq!(args.gateway, None, "ip= is read whole or not at all");
    }

    #[test]
    fn malformed_banger_arguments_are_reported_and_ignored() {
        let args = GuestBootArgs::parse(
            "banger.ip=172.30.0.2 banger.gw=x banger.rootwait=0 banger.halt=explode \
             banger.hostname=-bad banger.work=vdb banger.work=/dev/vdb:../etc banger.bogus=1 \
             banger.dns=1.1.1.1,x",
        );
        assert_eq!(args.ip, None);
        assert_eq!(args.gateway, None);
        assert_eq!(args.root_wait, None);
        assert_eq!(args.halt, HaltAction::PowerOff);
        assert_eq!(args.hostname, None);
        assert_eq!(args.work_device, None);
        assert!(args.dns.is_empty());
        assert_eq!(args.problems.len(), 9, "{:#?}", args.problems);
        assert!(
            args.problems[0].contains("banger.ip"),
            "{:?}",
            args.problems
        );
    }

    #[test]
    fn words_split_like_the_kernel_splits_them() {
        assert_eq!(
            split_cmdline(" a  b=\"c d\" \"e f\"=g -- banger.ip=1.2.3.4/8"),
            vec!["a", "b=c d", "e f=g"]
        );
        assert_eq!(split_cmdline("a --"), vec!["a"]);
        assert!(split_cmdline("").is_empty());
        let args = GuestBootArgs::parse("-- banger.hostname=after-dashes");
        assert_eq!(args.hostname, None, "what follows -- belongs to init");
    }

    #[test]
    fn netmasks_follow_the_prefix() {
        for (cidr, mask) in [
            ("10.0.0.1/0", "0.0.0.0"),
            ("10.0.0.1/8", "255.0.0.0"),
            ("10.0.0.1/24", "255.255.255.0"),
            ("10.0.0.1/30", "255.255.255.252"),
            ("10.0.0.1/32", "255.255.255.255"),
        ] {
            let cidr: Ipv4Cidr = cidr.parse().unwrap();
            assert_eq!(cidr.netmask(), mask.parse::<Ipv4Addr>().unwrap(), "{cidr}");
        }
        assert!("10.0.0.1/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0.1".parse::<Ipv4Cidr>().is_err());
    }
}
