//! `vm.stats` and `vm.ports`: what a running guest uses and what it listens on.
//!
//! Both ask the guest through its agent's ordinary `exec`, running the agent's own tools
//! (`/proc/self/exe --stats`, `--ports`, see `banger_agent::tool_stats` and `tool_ports`), so the
//! agent protocol is unchanged; then add what only the host knows.
//!
//! ```text
//!  vm.stats ──▶ running VM? ──▶ agent: --stats ──▶ guest JSON ─┐
//!                               /proc/VMM/{stat,status}, disk files' sizes ──▶ VmStatsResult
//!
//!  vm.ports ──▶ running VM? ──▶ agent: --ports ──▶ listeners ──▶ merged per (port, protocol,
//!               scope): 0.0.0.0 and :: are one row ──▶ TCP rows the host can reach probed
//!               for HTTPS, then HTTP, through the guest's bridge address ──▶ VmPortsResult
//! ```
//!
//! Neither changes anything bangerd owns, so neither is an operation nor appends an event.
//!
//! Invariants (the guest is not trusted): the tool's answer is read up to [`MAX_TOOL_STDOUT`]
//! bytes and within [`TOOL_TIMEOUT`] (the agent connection is dropped past it, which kills the
//! tool); at most [`MAX_PROBED_PORTS`] ports are probed, [`PROBE_CONCURRENCY`] at a time, each
//! attempt bounded by `web_probe::PROBE_TIMEOUT`; so a guest listening on thousands of
//! ports, or on ports that never answer or flood, cannot hold a request for long.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use banger_events::{Handle, Owner};
use banger_projections::VmView;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::Daemon;
use super::dispatch::Cx;
use super::guest::{GuestError, connect_agent, name_of, running_vm, touch};
use crate::agent::client::OutputStream;
use crate::agent::protocol::{ExecRequest, ExitStatus, MIN_PROTOCOL_VERSION};
use crate::agent::tool_ports::{GuestListener, GuestPorts, MAX_OWNERS};
use crate::api::{
    GuestStats, NameParams, PortProtocol, PortScope, VmDiskFile, VmHostStats, VmPort,
    VmPortsResult, VmStatsResult,
};
use crate::host::{usage, web_probe};
use crate::rpc::protocol::{ErrorCode, RpcError};

/// What the agent's exec runs to reach the agent binary itself: the agent spawns with
/// execve, so in its child this names the agent, wherever it lives (`/.banger/banger-agent`
/// in a guest, the build's `banger-agent` under the fake firecracker).
const AGENT_ITSELF: &str = "/proc/self/exe";

/// How long a tool may run in the guest. `--stats` samples the CPU for 0.2 s; `--ports` reads
/// a few `/proc` files and every process's descriptors: both take well under a second even
/// under software emulation, so this only bounds a guest that misbehaves.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// The most a tool's answer may hold. A guest with the most listeners `--ports` reports, each
/// with its most owners, stays well below it.
pub const MAX_TOOL_STDOUT: usize = 4 << 20;

/// What is kept of a tool's stderr for an error message.
const MAX_TOOL_STDERR: usize = 4 << 10;

/// The most TCP ports one `vm.ports` probes (lowest first); the rest are listed unprobed.
pub const MAX_PROBED_PORTS: usize = 64;

/// Probes in flight at once.
pub const PROBE_CONCURRENCY: usize = 16;

/// Why a tool run in the guest gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "the guest agent of {name} is older than `banger vm {verb}` (it does not know \
         `{flag}`); re-pull the VM's image with `banger image pull` and create the VM again \
         to get a newer agent"
    )]
    OldAgent {
        name: String,
        verb: &'static str,
        flag: &'static str,
    },
    #[error("`banger-agent {flag}` failed in {name} ({status}): {stderr}")]
    Failed {
        name: String,
        flag: &'static str,
        status: String,
        stderr: String,
    },
    #[error(
        "`banger-agent {flag}` in {name} answered more than {limit} bytes; the guest's agent is \
         misbehaving"
    )]
    TooLarge {
        name: String,
        flag: &'static str,
        limit: usize,
    },
    #[error("`banger-agent {flag}` in {name} did not finish within {} s", timeout.as_secs())]
    Timeout {
        name: String,
        flag: &'static str,
        timeout: Duration,
    },
    #[error("`banger-agent {flag}` in {name} answered something banger cannot read: {error}")]
    BadAnswer {
        name: String,
        flag: &'static str,
        error: String,
    },
    #[error(
        "the VMM of {name} (pid {pid}) is gone; `banger vm show {name}` says what happened to it"
    )]
    VmmGone { name: String, pid: u32 },
    #[error("cannot read what {name} uses on the host: {error}")]
    Host { name: String, error: std::io::Error },
}

impl From<ToolError> for RpcError {
    fn from(error: ToolError) -> RpcError {
        let code = match &error {
            ToolError::OldAgent { .. }
            | ToolError::Failed { .. }
            | ToolError::TooLarge { .. }
            | ToolError::BadAnswer { .. } => ErrorCode::OperationFailed,
            ToolError::Timeout { .. } => ErrorCode::Unavailable,
            ToolError::VmmGone { .. } => ErrorCode::NotRunning,
            ToolError::Host { .. } => ErrorCode::Internal,
        };
        RpcError::new(code, error.to_string())
    }
}

// ---- vm.stats ---------------------------------------------------------------------------------

pub async fn stats(
    daemon: Arc<Daemon>,
    _: Cx,
    params: NameParams,
) -> Result<VmStatsResult, RpcError> {
    let name = name_of(&params)?;
    let vm = running_vm(&daemon, name.as_str())?;
    let guest: GuestStats = run_tool(&daemon, &vm, "--stats", "stats").await?;
    touch(&daemon, vm.id);
    let root = daemon.layout.vm_root_disk(vm.id);
    let work = daemon.layout.vm_work_disk(vm.id);
    let process = vm.process;
    let vm_name = vm.name.clone();
    let host = tokio::task::spawn_blocking(move || host_stats(&vm_name, process, &root, &work))
        .await
        .map_err(|e| RpcError::internal(format!("the host stats task failed: {e}")))??;
    Ok(VmStatsResult {
        name: vm.name,
        guest,
        host,
    })
}

/// The VMM's memory and CPU time, and the disk files' sizes (a missing file is left out).
fn host_stats(
    name: &str,
    process: Option<banger_projections::ProcessRef>,
    root: &std::path::Path,
    work: &std::path::Path,
) -> Result<VmHostStats, ToolError> {
    let host_error = |error| ToolError::Host {
        name: name.to_owned(),
        error,
    };
    let process = process.ok_or_else(|| ToolError::VmmGone {
        name: name.to_owned(),
        pid: 0,
    })?;
    let usage = usage::process_usage(process.pid, process.start_time_ticks)
        .map_err(host_error)?
        .ok_or_else(|| ToolError::VmmGone {
            name: name.to_owned(),
            pid: process.pid,
        })?;
    let mut disks = Vec::new();
    for (role, path) in [("root", root), ("work", work)] {
        if let Some(sizes) = usage::file_sizes(path).map_err(host_error)? {
            disks.push(VmDiskFile {
                role: role.to_owned(),
                path: path.display().to_string(),
                apparent_bytes: sizes.apparent_bytes,
                allocated_bytes: sizes.allocated_bytes,
            });
        }
    }
    Ok(VmHostStats {
        vmm_pid: process.pid,
        vmm_rss_bytes: usage.rss_bytes,
        vmm_cpu_secs: usage.cpu_secs,
        disks,
    })
}

// ---- vm.ports ---------------------------------------------------------------------------------

pub async fn ports(
    daemon: Arc<Daemon>,
    _: Cx,
    params: NameParams,
) -> Result<VmPortsResult, RpcError> {
    let name = name_of(&params)?;
    let vm = running_vm(&daemon, name.as_str())?;
    let guest: GuestPorts = run_tool(&daemon, &vm, "--ports", "ports").await?;
    touch(&daemon, vm.id);
    let guest_ip = guest_ip(&daemon, &vm);
    let mut ports = merge_listeners(&guest.listeners, guest_ip);
    if let Some(ip) = guest_ip {
        probe_web_ports(&mut ports, ip, web_probe::PROBE_TIMEOUT).await;
    }
    Ok(VmPortsResult {
        name: vm.name,
        guest_ip,
        ports,
        truncated: guest.truncated,
    })
}

/// The VM's address on the bridge, from the ledger.
fn guest_ip(daemon: &Daemon, vm: &VmView) -> Option<Ipv4Addr> {
    let view = daemon.journal.view();
    view.handles_of(Owner::Vm(vm.id))
        .find_map(|(handle, _)| match handle {
            Handle::Ip { addr } => Some(Ipv4Addr::from(*addr)),
            _ => None,
        })
}

/// Who can reach a socket bound to `address`, for a guest whose bridge address is `guest_ip`.
/// An IPv4-mapped IPv6 address counts as the IPv4 address it maps.
pub fn scope_of(address: IpAddr, guest_ip: Option<Ipv4Addr>) -> PortScope {
    let address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    };
    if address.is_unspecified() {
        PortScope::Any
    } else if address.is_loopback() {
        PortScope::GuestLocal
    } else if guest_ip.is_some_and(|ip| address == IpAddr::V4(ip)) {
        PortScope::Guest
    } else {
        PortScope::Other
    }
}

/// One row per service: the sockets of one protocol and port whose scope is the same (and,
/// for a specific other address, whose address is) are merged, so a server listening on both
/// `0.0.0.0:80` and `[::]:80`, or on `127.0.0.1` and `::1`, is one row. Sorted by port, then
/// protocol, then scope.
pub fn merge_listeners(listeners: &[GuestListener], guest_ip: Option<Ipv4Addr>) -> Vec<VmPort> {
    type Key = (u16, PortProtocol, PortScope, Option<IpAddr>);
    let mut rows: BTreeMap<Key, VmPort> = BTreeMap::new();
    for listener in listeners {
        let scope = scope_of(listener.address, guest_ip);
        let distinct = (scope == PortScope::Other).then_some(listener.address);
        let row = rows
            .entry((listener.port, listener.protocol, scope, distinct))
            .or_insert_with(|| VmPort {
                protocol: listener.protocol,
                port: listener.port,
                scope,
                addresses: Vec::new(),
                processes: Vec::new(),
                web: None,
                url: None,
            });
        if !row.addresses.contains(&listener.address) {
            row.addresses.push(listener.address);
        }
        for owner in &listener.processes {
            if !row.processes.iter().any(|known| known.pid == owner.pid) {
                row.processes.push(owner.clone());
            }
        }
    }
    rows.into_values()
        .map(|mut row| {
            row.addresses.sort();
            row.processes.sort();
            row.processes.truncate(MAX_OWNERS);
            row
        })
        .collect()
}

/// Probes the TCP rows the host can reach (at most [`MAX_PROBED_PORTS`], [`PROBE_CONCURRENCY`]
/// at a time) through `guest_ip`, and fills in `web` and `url` for those that answered.
pub async fn probe_web_ports(ports: &mut [VmPort], guest_ip: Ipv4Addr, timeout: Duration) {
    let targets: Vec<(usize, SocketAddr)> = ports
        .iter()
        .enumerate()
        .filter(|(_, port)| {
            port.protocol == PortProtocol::Tcp && port.scope.reachable_from_host() && port.port != 0
        })
        .take(MAX_PROBED_PORTS)
        .map(|(index, port)| {
            (
                index,
                SocketAddr::V4(SocketAddrV4::new(guest_ip, port.port)),
            )
        })
        .collect();
    let verdicts: Vec<(usize, Option<web_probe::WebScheme>)> = futures_util::stream::iter(targets)
        .map(|(index, address)| async move { (index, web_probe::probe(address, timeout).await) })
        .buffer_unordered(PROBE_CONCURRENCY)
        .collect()
        .await;
    for (index, verdict) in verdicts {
        if let Some(scheme) = verdict {
            let port = &mut ports[index];
            port.url = Some(format!("{}://{guest_ip}:{}/", scheme.as_str(), port.port));
            port.web = Some(scheme);
        }
    }
}

// ---- running a tool ---------------------------------------------------------------------------

/// Runs `banger-agent FLAG` in the guest (through the agent's exec of `/proc/self/exe`) and
/// reads its one JSON document.
async fn run_tool<T: DeserializeOwned>(
    daemon: &Daemon,
    vm: &VmView,
    flag: &'static str,
    verb: &'static str,
) -> Result<T, RpcError> {
    let mut agent = connect_agent(daemon, vm, MIN_PROTOCOL_VERSION).await?;
    let request = ExecRequest::new([AGENT_ITSELF, flag]);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut too_large = false;
    let run = agent.exec_with(&request, None, |stream, chunk| match stream {
        OutputStream::Stdout => {
            if stdout.len() + chunk.len() > MAX_TOOL_STDOUT {
                too_large = true;
            } else {
                stdout.extend_from_slice(chunk);
            }
        }
        OutputStream::Stderr => {
            let room = MAX_TOOL_STDERR.saturating_sub(stderr.len());
            stderr.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    });
    // Dropping the exec on the deadline drops the agent connection, which kills the tool.
    let status = match tokio::time::timeout(TOOL_TIMEOUT, run).await {
        Ok(status) => status.map_err(|source| GuestError::Agent {
            name: vm.name.clone(),
            source,
        })?,
        Err(_) => {
            return Err(ToolError::Timeout {
                name: vm.name.clone(),
                flag,
                timeout: TOOL_TIMEOUT,
            }
            .into());
        }
    };
    let stderr = String::from_utf8_lossy(&stderr).trim().to_owned();
    tool_answer(&vm.name, flag, verb, status, &stdout, &stderr, too_large).map_err(Into::into)
}

/// Reads a tool's outcome: its JSON document, or why there is none. An agent that predates
/// the tool exits 2 with its usage, saying the flag is an unexpected argument.
pub fn tool_answer<T: DeserializeOwned>(
    name: &str,
    flag: &'static str,
    verb: &'static str,
    status: ExitStatus,
    stdout: &[u8],
    stderr: &str,
    too_large: bool,
) -> Result<T, ToolError> {
    if status == ExitStatus::Code(2) && stderr.contains("unexpected argument") {
        return Err(ToolError::OldAgent {
            name: name.to_owned(),
            verb,
            flag,
        });
    }
    if !status.success() {
        let status = match status {
            ExitStatus::Code(code) => format!("exit status {code}"),
            ExitStatus::Signal(signal) => format!("killed by signal {signal}"),
        };
        let first_line = stderr.lines().next().unwrap_or("it said nothing");
        return Err(ToolError::Failed {
            name: name.to_owned(),
            flag,
            status,
            stderr: first_line.to_owned(),
        });
    }
    if too_large {
        return Err(ToolError::TooLarge {
            name: name.to_owned(),
            flag,
            limit: MAX_TOOL_STDOUT,
        });
    }
    serde_json::from_slice(stdout).map_err(|error| ToolError::BadAnswer {
        name: name.to_owned(),
        flag,
        error: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tool_ports::SocketOwner;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn listener(protocol: PortProtocol, address: &str, port: u16, pids: &[u32]) -> GuestListener {
        GuestListener {
            protocol,
            address: address.parse().unwrap(),
            port,
            processes: pids
                .iter()
                .map(|pid| SocketOwner {
                    pid: *pid,
                    name: format!("p{pid}"),
                })
                .collect(),
        }
    }

    const GUEST: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);

    #[test]
    fn scopes_follow_the_bound_address() {
        let scope = |text: &str| scope_of(text.parse().unwrap(), Some(GUEST));
        assert_eq!(scope("0.0.0.0"), PortScope::Any);
        assert_eq!(scope("::"), PortScope::Any);
        assert_eq!(scope("127.0.0.1"), PortScope::GuestLocal);
        assert_eq!(scope("127.0.0.53"), PortScope::GuestLocal);
        assert_eq!(scope("::1"), PortScope::GuestLocal);
        assert_eq!(scope("::ffff:127.0.0.1"), PortScope::GuestLocal);
        assert_eq!(scope("172.30.0.2"), PortScope::Guest);
        assert_eq!(scope("::ffff:172.30.0.2"), PortScope::Guest);
        assert_eq!(scope("10.0.0.5"), PortScope::Other);
        assert_eq!(scope("fe80::1"), PortScope::Other);
        assert_eq!(
            scope_of("172.30.0.2".parse().unwrap(), None),
            PortScope::Other
        );
    }

    #[test]
    fn one_row_per_service_across_ipv4_and_ipv6() {
        use PortProtocol::{Tcp, Udp};
        let listeners = [
            listener(Tcp, "0.0.0.0", 22, &[200]),
            listener(Tcp, "::", 22, &[200, 201]),
            listener(Tcp, "0.0.0.0", 8080, &[300]),
            listener(Udp, "0.0.0.0", 68, &[1]),
            listener(Tcp, "127.0.0.1", 5432, &[400]),
            listener(Tcp, "::1", 5432, &[400]),
            listener(Tcp, "172.30.0.2", 80, &[500]),
            listener(Tcp, "0.0.0.0", 53, &[]),
            listener(Udp, "0.0.0.0", 53, &[]),
            listener(Tcp, "10.0.0.5", 9000, &[]),
            listener(Tcp, "10.0.0.6", 9000, &[]),
            listener(Tcp, "0.0.0.0", 9000, &[]),
        ];
        let rows = merge_listeners(&listeners, Some(GUEST));
        let summary: Vec<(u16, PortProtocol, PortScope, usize, Vec<u32>)> = rows
            .iter()
            .map(|r| {
                (
                    r.port,
                    r.protocol,
                    r.scope,
                    r.addresses.len(),
                    r.processes.iter().map(|p| p.pid).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (22, Tcp, PortScope::Any, 2, vec![200, 201]),
                (53, Tcp, PortScope::Any, 1, vec![]),
                (53, Udp, PortScope::Any, 1, vec![]),
                (68, Udp, PortScope::Any, 1, vec![1]),
                (80, Tcp, PortScope::Guest, 1, vec![500]),
                (5432, Tcp, PortScope::GuestLocal, 2, vec![400]),
                (8080, Tcp, PortScope::Any, 1, vec![300]),
                (9000, Tcp, PortScope::Any, 1, vec![]),
                (9000, Tcp, PortScope::Other, 1, vec![]),
                (9000, Tcp, PortScope::Other, 1, vec![]),
            ]
        );
        assert_eq!(
            rows[0].addresses,
            ["0.0.0.0".parse::<IpAddr>().unwrap(), "::".parse().unwrap()]
        );
        assert!(merge_listeners(&[], Some(GUEST)).is_empty());
    }

    #[test]
    fn owners_of_a_merged_row_stay_bounded() {
        let many: Vec<GuestListener> = (0..40u32)
            .map(|i| {
                listener(
                    PortProtocol::Tcp,
                    if i % 2 == 0 { "0.0.0.0" } else { "::" },
                    80,
                    &[i * 10, i * 10 + 1],
                )
            })
            .collect();
        let rows = merge_listeners(&many, Some(GUEST));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].processes.len(), MAX_OWNERS);
        assert_eq!(rows[0].processes[0].pid, 0, "lowest pids first");
    }

    #[test]
    fn tool_outcomes_become_answers_or_clear_errors() {
        let ok: Result<GuestStats, _> = tool_answer(
            "dev",
            "--stats",
            "stats",
            ExitStatus::Code(0),
            br#"{"uptime_secs":12.5,"processes":3}"#,
            "",
            false,
        );
        assert_eq!(ok.unwrap().uptime_secs, 12.5);

        let old = tool_answer::<GuestStats>(
            "dev",
            "--stats",
            "stats",
            ExitStatus::Code(2),
            b"",
            "banger-agent: unexpected argument \"--stats\"\n\nThe banger guest agent…",
            false,
        )
        .unwrap_err();
        assert!(matches!(old, ToolError::OldAgent { .. }), "{old}");
        assert!(old.to_string().contains("re-pull"), "{old}");
        assert_eq!(RpcError::from(old).code, ErrorCode::OperationFailed);

        let failed = tool_answer::<GuestStats>(
            "dev",
            "--ports",
            "ports",
            ExitStatus::Signal(9),
            b"",
            "",
            false,
        )
        .unwrap_err();
        assert!(
            failed.to_string().contains("killed by signal 9"),
            "{failed}"
        );

        let large = tool_answer::<GuestStats>(
            "dev",
            "--stats",
            "stats",
            ExitStatus::Code(0),
            b"{}",
            "",
            true,
        )
        .unwrap_err();
        assert!(matches!(large, ToolError::TooLarge { .. }), "{large}");

        let garbage = tool_answer::<GuestPorts>(
            "dev",
            "--ports",
            "ports",
            ExitStatus::Code(0),
            b"\x00not json",
            "",
            false,
        )
        .unwrap_err();
        assert!(matches!(garbage, ToolError::BadAnswer { .. }), "{garbage}");
    }

    /// A plain HTTP server on `address` for the probe tests.
    async fn http_on(address: &str) -> u16 {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn only_reachable_tcp_rows_are_probed_and_web_ones_get_a_url() {
        let web = http_on("127.0.0.1:0").await;
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        // The loopback address stands in for the guest's bridge address.
        let guest = Ipv4Addr::LOCALHOST;
        let row = |protocol, port, scope| VmPort {
            protocol,
            port,
            scope,
            addresses: vec![],
            processes: vec![],
            web: None,
            url: None,
        };
        let mut ports = vec![
            row(PortProtocol::Tcp, web, PortScope::Any),
            row(PortProtocol::Tcp, silent_port, PortScope::Guest),
            // Same port, but not reachable from the host, or not TCP: never probed.
            row(PortProtocol::Tcp, web, PortScope::GuestLocal),
            row(PortProtocol::Udp, web, PortScope::Any),
            row(PortProtocol::Tcp, web, PortScope::Other),
        ];
        let started = std::time::Instant::now();
        probe_web_ports(&mut ports, guest, Duration::from_millis(500)).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(ports[0].web, Some(crate::api::WebScheme::Http));
        assert_eq!(
            ports[0].url.as_deref(),
            Some(format!("http://127.0.0.1:{web}/").as_str())
        );
        assert_eq!((ports[1].web, ports[1].url.as_deref()), (None, None));
        for unprobed in &ports[2..] {
            assert_eq!(unprobed.web, None, "{unprobed:?}");
        }
        drop(silent);
    }

    #[tokio::test]
    async fn many_silent_ports_are_probed_concurrently_and_bounded() {
        let mut held = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..MAX_PROBED_PORTS + 8 {
            let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push(VmPort {
                protocol: PortProtocol::Tcp,
                port: silent.local_addr().unwrap().port(),
                scope: PortScope::Any,
                addresses: vec![],
                processes: vec![],
                web: None,
                url: None,
            });
            held.push(silent);
        }
        let timeout = Duration::from_millis(200);
        let started = std::time::Instant::now();
        probe_web_ports(&mut ports, Ipv4Addr::LOCALHOST, timeout).await;
        let took = started.elapsed();
        // 64 ports, 16 at a time, two attempts of 0.2 s each: about 1.6 s, not 64 × 0.4.
        let rounds = MAX_PROBED_PORTS.div_ceil(PROBE_CONCURRENCY) as u32;
        assert!(
            took < timeout * 2 * rounds + Duration::from_secs(3),
            "{took:?}"
        );
        assert!(ports.iter().all(|p| p.web.is_none()));
    }
}
