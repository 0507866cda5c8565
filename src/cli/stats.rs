//! `banger vm stats` and `banger vm ports`: one call each to bangerd (`vm.stats`, `vm.ports`),
//! shown as `key: value` lines and tables for people, or the result as it came for `--json`.

use std::collections::BTreeMap;

use super::args::NameJsonArgs;
use super::connect::call;
use super::error::CliError;
use super::format::Table;
use super::output::{json, out};
use crate::api::{NameParams, PortScope, SocketOwner, VmPort, VmPortsResult, VmStatsResult};
use crate::size::format_bytes;

pub async fn stats(args: NameJsonArgs) -> Result<(), CliError> {
    let params = NameParams {
        name: args.name.to_string(),
    };
    let result: VmStatsResult = call("vm.stats", &params).await?;
    if args.json {
        return json(&result);
    }
    out(stats_text(&result))
}

pub async fn ports(args: NameJsonArgs) -> Result<(), CliError> {
    let params = NameParams {
        name: args.name.to_string(),
    };
    let result: VmPortsResult = call("vm.ports", &params).await?;
    if args.json {
        return json(&result);
    }
    out(ports_text(&result))
}

/// `key: value` lines, then the guest's filesystems and the host's files as tables.
pub fn stats_text(result: &VmStatsResult) -> String {
    let guest = &result.guest;
    let host = &result.host;
    let cpu = &guest.cpu;
    let memory = &guest.memory;
    let rows = [
        ("vm", result.name.clone()),
        (
            "cpu",
            format!(
                "{:.1}% of {} cpu{} (load {:.2} {:.2} {:.2})",
                cpu.busy_percent,
                cpu.count,
                if cpu.count == 1 { "" } else { "s" },
                cpu.load[0],
                cpu.load[1],
                cpu.load[2]
            ),
        ),
        (
            "memory",
            format!(
                "{} used of {} ({} available)",
                format_bytes(memory.used_bytes),
                format_bytes(memory.total_bytes),
                format_bytes(memory.available_bytes)
            ),
        ),
        ("uptime", format_duration_secs(guest.uptime_secs)),
        ("processes", guest.processes.to_string()),
        (
            "vmm",
            format!(
                "pid {}, {} resident, {:.1} s of cpu",
                host.vmm_pid,
                format_bytes(host.vmm_rss_bytes),
                host.vmm_cpu_secs
            ),
        ),
    ];
    let width = rows.iter().map(|(key, _)| key.len() + 1).max().unwrap_or(0);
    let mut text: String = rows
        .iter()
        .map(|(key, value)| format!("{:width$}  {value}\n", format!("{key}:")))
        .collect();
    if !guest.disks.is_empty() {
        let mut table = Table::new(&["MOUNT", "DEVICE", "SIZE", "USED", "FREE", "USE%"]);
        for disk in &guest.disks {
            table.row(vec![
                disk.mount.clone(),
                or_dash(&disk.device),
                format_bytes(disk.total_bytes),
                format_bytes(disk.used_bytes),
                format_bytes(disk.free_bytes),
                percent(disk.used_bytes, disk.total_bytes),
            ]);
        }
        text.push_str("\nIn the guest:\n");
        text.push_str(&table.render());
    }
    if !host.disks.is_empty() {
        let mut table = Table::new(&["DISK", "SIZE", "ON THE HOST", "FILE"]);
        for disk in &host.disks {
            table.row(vec![
                disk.role.clone(),
                format_bytes(disk.apparent_bytes),
                format_bytes(disk.allocated_bytes),
                disk.path.clone(),
            ]);
        }
        text.push_str("\nOn the host (disk files are sparse: SIZE is what the guest sees):\n");
        text.push_str(&table.render());
    }
    text
}

/// One row per service; web listeners with their URL.
pub fn ports_text(result: &VmPortsResult) -> String {
    if result.ports.is_empty() {
        return format!("{} listens on no TCP or UDP port\n", result.name);
    }
    let mut table = Table::new(&["PORT", "PROTO", "ADDRESS", "SCOPE", "PROCESS", "WEB", "URL"]);
    for port in &result.ports {
        let addresses: Vec<String> = port.addresses.iter().map(|a| a.to_string()).collect();
        table.row(vec![
            port.port.to_string(),
            port.protocol.as_str().to_owned(),
            addresses.join(", "),
            scope_text(port.scope).to_owned(),
            processes_text(&port.processes),
            web_text(port),
            port.url.clone().unwrap_or_default(),
        ]);
    }
    let mut text = table.render();
    if result.truncated {
        text.push_str(
            "(the guest has more sockets than one answer lists: the highest ports are left out)\n",
        );
    }
    text
}

fn scope_text(scope: PortScope) -> &'static str {
    match scope {
        PortScope::Any => "all",
        PortScope::Guest => "guest ip",
        PortScope::GuestLocal => "guest-local",
        PortScope::Other => "other",
    }
}

/// `http`/`https` for a web listener, `-` for a probed one that is not, nothing for what was
/// not probed (UDP, or not reachable from the host).
fn web_text(port: &VmPort) -> String {
    match port.web {
        Some(scheme) => scheme.as_str().to_owned(),
        None if port.protocol == crate::api::PortProtocol::Tcp
            && port.scope.reachable_from_host() =>
        {
            "-".to_owned()
        }
        None => String::new(),
    }
}

/// `sshd (201)`, `busybox (311, 312)`, `nginx (10, 11, 12, +5)`: by name, lowest pids first.
fn processes_text(owners: &[SocketOwner]) -> String {
    if owners.is_empty() {
        return "-".to_owned();
    }
    let mut by_name: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for owner in owners {
        let name = if owner.name.is_empty() {
            "?"
        } else {
            owner.name.as_str()
        };
        by_name.entry(name).or_default().push(owner.pid);
    }
    let parts: Vec<String> = by_name
        .into_iter()
        .map(|(name, mut pids)| {
            pids.sort_unstable();
            let mut shown: Vec<String> = pids.iter().take(3).map(u32::to_string).collect();
            if pids.len() > 3 {
                shown.push(format!("+{}", pids.len() - 3));
            }
            format!("{name} ({})", shown.join(", "))
        })
        .collect();
    parts.join(", ")
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// `used` as a whole percentage of `total`, as `df` rounds it (up).
fn percent(used: u64, total: u64) -> String {
    if total == 0 {
        return "-".to_owned();
    }
    let percent = (u128::from(used) * 100).div_ceil(u128::from(total));
    format!("{percent}%")
}

/// `3h 12m`, `4m 05s`, `12s`; days beyond a day.
fn format_duration_secs(secs: f64) -> String {
    let secs = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    let (d, h, m, s) = (
        secs / 86400,
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        CpuStats, DiskStats, GuestStats, MemoryStats, PortProtocol, VmDiskFile, VmHostStats,
        WebScheme,
    };

    #[test]
    fn stats_read_as_lines_and_tables() {
        let result = VmStatsResult {
            name: "dev".into(),
            guest: GuestStats {
                cpu: CpuStats {
                    count: 2,
                    busy_percent: 12.5,
                    load: [0.1, 0.05, 0.0],
                },
                memory: MemoryStats {
                    total_bytes: 512 << 20,
                    available_bytes: 384 << 20,
                    used_bytes: 128 << 20,
                },
                disks: vec![DiskStats {
                    mount: "/".into(),
                    device: "/dev/vda".into(),
                    fs_type: "ext4".into(),
                    total_bytes: 4 << 30,
                    used_bytes: 1 << 30,
                    free_bytes: 3 << 30,
                }],
                uptime_secs: 185.7,
                processes: 42,
            },
            host: VmHostStats {
                vmm_pid: 1234,
                vmm_rss_bytes: 300 << 20,
                vmm_cpu_secs: 12.34,
                disks: vec![VmDiskFile {
                    role: "root".into(),
                    path: "/state/vms/x/root.ext4".into(),
                    apparent_bytes: 4 << 30,
                    allocated_bytes: 900 << 20,
                }],
            },
        };
        let text = stats_text(&result);
        for expected in [
            "vm:         dev\n",
            "cpu:        12.5% of 2 cpus (load 0.10 0.05 0.00)\n",
            "memory:     128 MiB used of 512 MiB (384 MiB available)\n",
            "uptime:     3m 05s\n",
            "processes:  42\n",
            "vmm:        pid 1234, 300 MiB resident, 12.3 s of cpu\n",
            "MOUNT  DEVICE    SIZE   USED   FREE   USE%\n/      /dev/vda  4 GiB  1 GiB  3 GiB  25%\n",
            "DISK  SIZE   ON THE HOST  FILE\nroot  4 GiB  900 MiB      /state/vms/x/root.ext4\n",
        ] {
            assert!(text.contains(expected), "{expected:?} in:\n{text}");
        }
    }

    #[test]
    fn ports_read_as_one_row_per_service() {
        let owner = |pid, name: &str| SocketOwner {
            pid,
            name: name.into(),
        };
        let result = VmPortsResult {
            name: "dev".into(),
            guest_ip: Some("172.30.0.2".parse().unwrap()),
            ports: vec![
                VmPort {
                    protocol: PortProtocol::Tcp,
                    port: 22,
                    scope: PortScope::Any,
                    addresses: vec!["0.0.0.0".parse().unwrap(), "::".parse().unwrap()],
                    processes: vec![owner(201, "sshd")],
                    web: None,
                    url: None,
                },
                VmPort {
                    protocol: PortProtocol::Udp,
                    port: 68,
                    scope: PortScope::Any,
                    addresses: vec!["0.0.0.0".parse().unwrap()],
                    processes: vec![],
                    web: None,
                    url: None,
                },
                VmPort {
                    protocol: PortProtocol::Tcp,
                    port: 5432,
                    scope: PortScope::GuestLocal,
                    addresses: vec!["127.0.0.1".parse().unwrap()],
                    processes: vec![owner(400, "postgres")],
                    web: None,
                    url: None,
                },
                VmPort {
                    protocol: PortProtocol::Tcp,
                    port: 8080,
                    scope: PortScope::Any,
                    addresses: vec!["0.0.0.0".parse().unwrap()],
                    processes: (300..306).map(|pid| owner(pid, "busybox")).collect(),
                    web: Some(WebScheme::Http),
                    url: Some("http://172.30.0.2:8080/".into()),
                },
            ],
            truncated: false,
        };
        assert_eq!(
            ports_text(&result),
            "\
PORT  PROTO  ADDRESS      SCOPE        PROCESS                      WEB   URL
22    tcp    0.0.0.0, ::  all          sshd (201)                   -
68    udp    0.0.0.0      all          -
5432  tcp    127.0.0.1    guest-local  postgres (400)
8080  tcp    0.0.0.0      all          busybox (300, 301, 302, +3)  http  http://172.30.0.2:8080/
"
        );
        let empty = VmPortsResult {
            ports: vec![],
            ..result
        };
        assert_eq!(ports_text(&empty), "dev listens on no TCP or UDP port\n");
    }

    #[test]
    fn durations_and_percentages_round_as_people_expect() {
        assert_eq!(format_duration_secs(0.4), "0s");
        assert_eq!(format_duration_secs(f64::NAN), "0s");
        assert_eq!(format_duration_secs(7322.0), "2h 02m");
        assert_eq!(format_duration_secs(90000.0), "1d 1h");
        assert_eq!(percent(1, 3), "34%");
        assert_eq!(percent(0, 0), "-");
        assert_eq!(percent(u64::MAX, u64::MAX), "100%");
    }
}
