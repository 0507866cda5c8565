//! The text of the two systemd units `banger system install` writes: pure functions of
//! [`UnitInputs`], so that `system status` and `banger doctor` can compare a unit on disk
//! with what install would write now, and the unit tests pin every line.
//!
//! Both units are hardened as far as what runs in them allows; each directive that is left
//! out on purpose says why in a comment inside the unit, where an administrator reading it
//! looks first. Two facts shape them:
//!
//! - Everything bangerd starts inherits its sandbox: the VMMs (firecracker, and QEMU, whose
//!   software emulation writes and runs code it generates, so no `MemoryDenyWriteExecute`)
//!   and the tools it runs. They open `/dev/kvm` and `/dev/net/tun`, hence `DeviceAllow`
//!   rather than `PrivateDevices`.
//! - banger-helper is root, so its capability bounding set is the list of privileges it
//!   uses, each named with the request that needs it. Today that is `CAP_NET_ADMIN` (links,
//!   addresses, taps, nftables, systemd-resolved's per-link settings) and
//!   `CAP_NET_BIND_SERVICE` (port 53 for bangerd's DNS server). An install with `--jailer`
//!   adds what Firecracker's jailer uses ([`JAIL_CAPABILITIES`]: a mount namespace and
//!   pivot_root, device nodes, a uid change, identity checks of other users' processes), the
//!   system calls and devices that go with them, the jail directory as the one place it
//!   writes, and `KillMode=process` (the VMMs it launches outlive a restart of the helper).
//!   bangerd's unit then leaves `/var` and `/home` unmounted over (`ProtectSystem=full`, no
//!   `ProtectHome`): it links each VM's disks from its state into the jail, and a link
//!   between two mounts fails even on one filesystem.

use std::fmt::Write as _;
use std::path::Path;

use super::UnitInputs;

/// Where bangerd's runtime directory is: systemd makes `/run/bangerd` (`RuntimeDirectory=`),
/// owned by the owner, mode 0700, and bangerd's user layout puts its socket in
/// `/run/bangerd/banger/` (it is `XDG_RUNTIME_DIR` for bangerd).
pub const BANGERD_RUNTIME_DIRECTORY: &str = "bangerd";

/// The capabilities banger-helper keeps, each with the reason (written into its unit).
pub const HELPER_CAPABILITIES: &[(&str, &str)] = &[
    (
        "CAP_NET_ADMIN",
        "the bridge and its address, taps (TUNSETIFF, TUNSETOWNER, TUNSETPERSIST), banger's nftables table, and resolvectl's per-link DNS settings",
    ),
    (
        "CAP_NET_BIND_SERVICE",
        "binding port 53 on the bridge's address for bangerd's DNS server (bind_dns)",
    ),
];

/// The capabilities banger-helper also keeps when it launches Firecracker through the
/// jailer, each with the reason.
pub const JAIL_CAPABILITIES: &[(&str, &str)] = &[
    (
        "CAP_SYS_ADMIN",
        "the jailer's mount namespace, bind mount and pivot_root into the VM's chroot",
    ),
    ("CAP_SYS_CHROOT", "the jailer's chroot"),
    (
        "CAP_MKNOD",
        "/dev/kvm, /dev/net/tun, /dev/userfaultfd and /dev/urandom made inside the chroot",
    ),
    (
        "CAP_CHOWN",
        "the chroot and its device nodes handed to the owner",
    ),
    (
        "CAP_DAC_OVERRIDE",
        "the jailer writing the owner's chroot, and removing a jail's files",
    ),
    (
        "CAP_FOWNER",
        "modes of the owner's files in the chroot, and removing them",
    ),
    (
        "CAP_SETUID",
        "Firecracker run as the owner (the jailer's setuid)",
    ),
    ("CAP_SETGID", "and as the owner's group"),
    (
        "CAP_SYS_RESOURCE",
        "the jailer's resource limits on Firecracker",
    ),
    (
        "CAP_KILL",
        "kill_vmm: SIGKILL to the owner's Firecracker, once its identity is checked",
    ),
    (
        "CAP_SYS_PTRACE",
        "reading /proc/PID/exe of the owner's processes, which identifies a jail's Firecracker",
    ),
];

/// A character a unit file would have to quote or would expand (`%` specifiers, `$`
/// variables, spaces, quotes, backslashes): refused in every value install writes, so the
/// units never need quoting.
pub fn unit_safe(what: &str, value: &str) -> Result<(), String> {
    match value.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@' | ':' | ','))
    }) {
        None if !value.is_empty() => Ok(()),
        None => Err(format!("{what} is empty")),
        Some(c) => Err(format!(
            "{what} {value:?} contains {c:?}, which a systemd unit would have to quote or would expand; use a plainer name or path"
        )),
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `bangerd.service`: bangerd as the owner, with the owner's own state, cache and config
/// directories (the user layout of their home, as a run from their shell uses).
pub fn bangerd_unit(inputs: &UnitInputs) -> String {
    let layout = inputs.layout();
    let home = path(&inputs.home);
    // The owner's home holds banger's state, cache and config (the XDG defaults); it is also
    // where checkouts usually are, which `vm workspace export` writes into. Directories of the
    // layout outside the home (none by default) are added.
    let mut writable = vec![home.clone()];
    for dir in [&layout.state_dir, &layout.cache_dir, &layout.config_dir] {
        if !dir.starts_with(&inputs.home) {
            writable.push(path(dir));
        }
    }
    let mut unit = String::new();
    let _ = write!(
        unit,
        "\
# Written by `banger system install` (banger {version}). `banger system status` and
# `banger doctor` compare this file with what install writes; to change it, change the
# install (`sudo banger system install --owner {owner}`) rather than this file.
[Unit]
Description=banger daemon (bangerd) for {owner}
Documentation=https://github.com/banger-dev/banger
Wants=banger-helper.service network-online.target
After=banger-helper.service network-online.target

[Service]
Type=simple
User={owner}
Group={group}
ExecStart={bangerd}
# bangerd finds its directories as in a run from the owner's shell: the XDG defaults under
# HOME. Its socket is {socket}.
Environment=HOME={home}
Environment=XDG_RUNTIME_DIR=/run/{runtime}
RuntimeDirectory={runtime}
RuntimeDirectoryMode=0700
# The VMMs bangerd starts live in this unit's cgroup: stopping or restarting bangerd (an
# update does) must not stop them. The next bangerd re-adopts every running VM.
KillMode=process
Restart=on-failure
RestartSec=2s
UMask=0077

# Hardening. What bangerd starts (VMMs, mkfs, ssh-keygen) runs in the same sandbox.
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
{filesystem}PrivateTmp=yes
PrivateMounts=yes
# The VMMs open /dev/kvm and /dev/net/tun; no other device.
DevicePolicy=closed
DeviceAllow=/dev/kvm rw
DeviceAllow=/dev/net/tun rw
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RemoveIPC=yes
KeyringMode=private
# AF_NETLINK: the taps this network namespace shows; AF_INET/AF_INET6: registries,
# downloads, the dashboard on 127.0.0.1, DNS forwarding.
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=~@clock @cpu-emulation @debug @module @mount @obsolete @raw-io @reboot @swap
SystemCallErrorNumber=EPERM
# Not set: MemoryDenyWriteExecute (QEMU's software emulation generates code), PrivateDevices
# (see DeviceAllow), PrivateNetwork and IPAddressDeny (VMs, pulls and the dashboard need the
# network), ProcSubset=pid (bangerd reads /proc/sys/kernel/random/boot_id).

[Install]
WantedBy=multi-user.target
",
        version = env!("CARGO_PKG_VERSION"),
        owner = inputs.owner,
        group = inputs.group,
        bangerd = path(&inputs.bangerd),
        socket = layout.socket_path().display(),
        home = home,
        runtime = BANGERD_RUNTIME_DIRECTORY,
        filesystem = match &inputs.jail {
            None => format!(
                "ProtectSystem=strict\nProtectHome=read-only\nReadWritePaths={}\n",
                writable.join(" ")
            ),
            Some(jail) => format!(
                "# bangerd links each VM's disks from its state into the VM's jail under {}: a\n\
                 # link between two mounts fails even on one filesystem, so /var and /home stay\n\
                 # as the host has them (not ProtectSystem=strict, ProtectHome, ReadWritePaths).\n\
                 ProtectSystem=full\n",
                path(&jail.dir)
            ),
        },
    );
    unit
}

/// `banger-helper.service`: banger-helper as root, allowing only the owner's uid.
pub fn helper_unit(inputs: &UnitInputs) -> String {
    let socket = path(&inputs.helper_socket);
    let runtime_directory = inputs
        .helper_socket
        .parent()
        .and_then(|dir| dir.strip_prefix("/run").ok())
        .map(path)
        .unwrap_or_else(|| "banger".to_owned());
    let kept: Vec<&(&str, &str)> = HELPER_CAPABILITIES
        .iter()
        .chain(inputs.jail.iter().flat_map(|_| JAIL_CAPABILITIES.iter()))
        .collect();
    let mut capabilities = String::new();
    for (name, why) in &kept {
        let _ = writeln!(capabilities, "#   {name}: {why}");
    }
    let names: Vec<&str> = kept.iter().map(|(name, _)| *name).collect();
    let jail_args = inputs
        .jail
        .as_ref()
        .map(|jail| {
            format!(
                " --jailer {} --firecracker {} --jail-dir {}",
                path(&jail.jailer),
                path(&jail.firecracker),
                path(&jail.dir)
            )
        })
        .unwrap_or_default();
    // The jailer's needs, in the places of the lines they replace.
    let (kill_mode, devices, writable, namespaces, syscalls) = match &inputs.jail {
        None => (
            String::new(),
            "# Taps are made through /dev/net/tun, and /dev/kvm is opened for the owner's QEMU\n\
             # (open_kvm); no other device.\nDevicePolicy=closed\nDeviceAllow=/dev/net/tun rw\n\
             DeviceAllow=/dev/kvm rw\n"
                .to_owned(),
            String::new(),
            "RestrictNamespaces=yes".to_owned(),
            "SystemCallFilter=@system-service\nSystemCallFilter=~@privileged @resources".to_owned(),
        ),
        Some(jail) => (
            "# The VMMs it launches live in this unit's cgroup: restarting the helper must not\n\
             # stop them.\nKillMode=process\n"
                .to_owned(),
            "# Taps are made through /dev/net/tun; the jailer makes the VMM's device nodes (m),\n\
             # which Firecracker then opens; no other device.\nDevicePolicy=closed\n\
             DeviceAllow=/dev/net/tun rwm\nDeviceAllow=/dev/kvm rwm\n\
             DeviceAllow=/dev/userfaultfd rwm\nDeviceAllow=/dev/urandom rm\n"
                .to_owned(),
            format!(
                "# The jails: the one place it writes.\nReadWritePaths={}\n",
                path(&jail.dir)
            ),
            "# The jailer's mount namespace, and no other kind.\nRestrictNamespaces=mnt".to_owned(),
            "# The jailer's mounts, chroot, device nodes and uid change, besides a service's calls;\n\
             # seccomp: Firecracker, which inherits this filter, installs its own per thread.\n\
             SystemCallFilter=@system-service @mount chroot mknod mknodat setgroups setuid setgid seccomp\n\
             SystemCallFilter=~@clock @cpu-emulation @debug @module @obsolete @raw-io @reboot @swap"
                .to_owned(),
        ),
    };
    let mut unit = String::new();
    let _ = write!(
        unit,
        "\
# Written by `banger system install` (banger {version}). `banger system status` and
# `banger doctor` compare this file with what install writes; to change it, change the
# install (`sudo banger system install --owner {owner}`) rather than this file.
[Unit]
Description=banger's root helper (banger-helper): bridge, taps and NAT for {owner}'s bangerd
Documentation=https://github.com/banger-dev/banger
Before=bangerd.service
After=network.target

[Service]
Type=simple
# Only the owner's uid may ask it for anything (checked with SO_PEERCRED).
ExecStart={helper} --socket {socket} --allow-uid {uid}{network}{jail_args}
RuntimeDirectory={runtime_directory}
# The socket is open to all (mode 0666): the helper checks each caller's uid itself.
RuntimeDirectoryMode=0755
{kill_mode}Restart=on-failure
RestartSec=2s
UMask=0077

# Hardening. banger-helper runs as root with only these capabilities:
{capabilities}CapabilityBoundingSet={names}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateMounts=yes
{writable}{devices}ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
{namespaces}
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
KeyringMode=private
# AF_NETLINK: rtnetlink and nftables; AF_INET/AF_INET6: interface ioctls and the DNS
# sockets it binds for bangerd; AF_UNIX: its socket and systemd-resolved's D-Bus.
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6
SystemCallArchitectures=native
{syscalls}
SystemCallErrorNumber=EPERM
# Not set: ProtectKernelTunables (the helper turns on /proc/sys/net/ipv4/ip_forward for
# NAT), ProtectProc=invisible and ProcSubset=pid (it compares its network namespace with
# pid 1's in /proc), PrivateNetwork (it configures the host's network), PrivateDevices
# (see DeviceAllow).

[Install]
WantedBy=multi-user.target
",
        version = env!("CARGO_PKG_VERSION"),
        owner = inputs.owner,
        helper = path(&inputs.helper),
        socket = socket,
        uid = inputs.uid,
        network = inputs
            .network
            .as_ref()
            .map(|network| format!(" --network {}:{network}", inputs.uid))
            .unwrap_or_default(),
        runtime_directory = runtime_directory,
        capabilities = capabilities,
        names = names.join(" "),
        jail_args = jail_args,
        kill_mode = kill_mode,
        devices = devices,
        writable = writable,
        namespaces = namespaces,
        syscalls = syscalls,
    );
    unit
}

/// The uids a helper unit's `ExecStart=` allows (`--allow-uid N`, `--allow-uid=N`), in order;
/// `None` when the unit has no `ExecStart=` line that runs banger-helper.
pub fn allowed_uids(unit: &str) -> Option<Vec<String>> {
    let exec = unit
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.strip_prefix("ExecStart="))
        .find(|command| command.contains("banger-helper"))?;
    let mut uids = Vec::new();
    let mut words = exec.split_whitespace();
    while let Some(word) = words.next() {
        if word == "--allow-uid" {
            uids.push(words.next().unwrap_or_default().to_owned());
        } else if let Some(uid) = word.strip_prefix("--allow-uid=") {
            uids.push(uid.to_owned());
        }
    }
    Some(uids)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn inputs() -> UnitInputs {
        UnitInputs {
            owner: "alice".into(),
            uid: 1000,
            gid: 1000,
            group: "alice".into(),
            home: PathBuf::from("/home/alice"),
            bangerd: PathBuf::from("/usr/local/bin/bangerd"),
            helper: PathBuf::from("/usr/local/bin/banger-helper"),
            helper_socket: PathBuf::from("/run/banger/helper.sock"),
            network: None,
            jail: None,
        }
    }

    /// The lines that are not comments, in order.
    fn directives(unit: &str) -> Vec<&str> {
        unit.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .collect()
    }

    #[test]
    fn bangerd_runs_as_the_owner_with_its_own_directories() {
        assert_eq!(
            directives(&bangerd_unit(&inputs())),
            [
                "[Unit]",
                "Description=banger daemon (bangerd) for alice",
                "Documentation=https://github.com/banger-dev/banger",
                "Wants=banger-helper.service network-online.target",
                "After=banger-helper.service network-online.target",
                "[Service]",
                "Type=simple",
                "User=alice",
                "Group=alice",
                "ExecStart=/usr/local/bin/bangerd",
                "Environment=HOME=/home/alice",
                "Environment=XDG_RUNTIME_DIR=/run/bangerd",
                "RuntimeDirectory=bangerd",
                "RuntimeDirectoryMode=0700",
                "KillMode=process",
                "Restart=on-failure",
                "RestartSec=2s",
                "UMask=0077",
                "NoNewPrivileges=yes",
                "CapabilityBoundingSet=",
                "AmbientCapabilities=",
                "ProtectSystem=strict",
                "ProtectHome=read-only",
                "ReadWritePaths=/home/alice",
                "PrivateTmp=yes",
                "PrivateMounts=yes",
                "DevicePolicy=closed",
                "DeviceAllow=/dev/kvm rw",
                "DeviceAllow=/dev/net/tun rw",
                "ProtectKernelTunables=yes",
                "ProtectKernelModules=yes",
                "ProtectKernelLogs=yes",
                "ProtectControlGroups=yes",
                "ProtectClock=yes",
                "ProtectHostname=yes",
                "ProtectProc=invisible",
                "RestrictSUIDSGID=yes",
                "RestrictRealtime=yes",
                "RestrictNamespaces=yes",
                "LockPersonality=yes",
                "RemoveIPC=yes",
                "KeyringMode=private",
                "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6",
                "SystemCallArchitectures=native",
                "SystemCallFilter=~@clock @cpu-emulation @debug @module @mount @obsolete @raw-io @reboot @swap",
                "SystemCallErrorNumber=EPERM",
                "[Install]",
                "WantedBy=multi-user.target",
            ]
        );
        let unit = bangerd_unit(&inputs());
        assert!(
            unit.contains("Its socket is /run/bangerd/banger/bangerd.sock."),
            "{unit}"
        );
        assert!(
            !unit.contains("MemoryDenyWriteExecute=yes"),
            "QEMU's TCG JIT"
        );
        assert!(!unit.contains("PrivateDevices=yes"), "/dev/kvm");
    }

    #[test]
    fn the_helper_keeps_only_the_capabilities_it_uses() {
        assert_eq!(
            directives(&helper_unit(&inputs())),
            [
                "[Unit]",
                "Description=banger's root helper (banger-helper): bridge, taps and NAT for alice's bangerd",
                "Documentation=https://github.com/banger-dev/banger",
                "Before=bangerd.service",
                "After=network.target",
                "[Service]",
                "Type=simple",
                "ExecStart=/usr/local/bin/banger-helper --socket /run/banger/helper.sock --allow-uid 1000",
                "RuntimeDirectory=banger",
                "RuntimeDirectoryMode=0755",
                "Restart=on-failure",
                "RestartSec=2s",
                "UMask=0077",
                "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
                "NoNewPrivileges=yes",
                "ProtectSystem=strict",
                "ProtectHome=yes",
                "PrivateTmp=yes",
                "PrivateMounts=yes",
                "DevicePolicy=closed",
                "DeviceAllow=/dev/net/tun rw",
                "DeviceAllow=/dev/kvm rw",
                "ProtectKernelModules=yes",
                "ProtectKernelLogs=yes",
                "ProtectControlGroups=yes",
                "ProtectClock=yes",
                "ProtectHostname=yes",
                "RestrictSUIDSGID=yes",
                "RestrictRealtime=yes",
                "RestrictNamespaces=yes",
                "LockPersonality=yes",
                "MemoryDenyWriteExecute=yes",
                "RemoveIPC=yes",
                "KeyringMode=private",
                "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6",
                "SystemCallArchitectures=native",
                "SystemCallFilter=@system-service",
                "SystemCallFilter=~@privileged @resources",
                "SystemCallErrorNumber=EPERM",
                "[Install]",
                "WantedBy=multi-user.target",
            ]
        );
        // Every capability is explained in the unit itself.
        let unit = helper_unit(&inputs());
        for (name, why) in HELPER_CAPABILITIES {
            assert!(unit.contains(&format!("#   {name}: {why}\n")), "{unit}");
        }
    }

    #[test]
    fn directories_outside_the_home_are_made_writable_too() {
        let mut inputs = inputs();
        inputs.home = PathBuf::from("/srv/alice");
        let unit = bangerd_unit(&inputs);
        assert!(unit.contains("ReadWritePaths=/srv/alice\n"), "{unit}");
        assert!(unit.contains("Environment=HOME=/srv/alice\n"), "{unit}");
    }

    #[test]
    fn the_helper_socket_decides_its_runtime_directory() {
        let mut inputs = inputs();
        inputs.helper_socket = PathBuf::from("/run/banger-x/helper.sock");
        let unit = helper_unit(&inputs);
        assert!(unit.contains("RuntimeDirectory=banger-x\n"), "{unit}");
        assert!(
            unit.contains("--socket /run/banger-x/helper.sock "),
            "{unit}"
        );
    }

    #[test]
    fn a_network_other_than_the_default_goes_on_the_helpers_line_and_a_bad_one_is_refused() {
        let mut inputs = inputs();
        inputs.network = Some("banger3:10.33.0.1/24".into());
        assert_eq!(inputs.check(), Ok(()));
        let unit = helper_unit(&inputs);
        assert!(
            unit.contains("--allow-uid 1000 --network 1000:banger3:10.33.0.1/24\n"),
            "{unit}"
        );
        assert_eq!(allowed_uids(&unit), Some(vec!["1000".to_owned()]));
        for bad in [
            "banger3",
            "eth0:10.33.0.1/24",
            "banger3:8.8.8.1/24",
            "banger3:10.0.0.1/8",
        ] {
            inputs.network = Some(bad.into());
            assert!(inputs.check().is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_uids_are_read_back_from_the_exec_line() {
        assert_eq!(
            allowed_uids(&helper_unit(&inputs())),
            Some(vec!["1000".to_owned()])
        );
        let edited = "[Service]\n# ExecStart=banger-helper --allow-uid 7\nExecStart=/x/banger-helper --socket /s --allow-uid 1000 --allow-uid=0\n";
        assert_eq!(
            allowed_uids(edited),
            Some(vec!["1000".to_owned(), "0".to_owned()])
        );
        assert_eq!(allowed_uids("[Service]\nExecStart=/bin/true\n"), None);
    }

    #[test]
    fn values_a_unit_would_quote_or_expand_are_refused() {
        assert!(unit_safe("path", "/usr/local/bin/bangerd").is_ok());
        assert!(unit_safe("user", "al.ice_b-2").is_ok());
        for bad in [
            "/opt/my bin/x",
            "/x/%h",
            "/x/$HOME",
            "/x/\"y",
            "/x\\y",
            "",
            "/x\ny",
        ] {
            assert!(unit_safe("path", bad).is_err(), "{bad:?}");
        }
    }
}
