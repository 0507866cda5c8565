//! `banger-agent --ports`: the guest's listening sockets as one JSON document on stdout.
//!
//! bangerd runs it through the agent's ordinary `exec` (`["/proc/self/exe", "--ports"]`);
//! `vm ports` then merges IPv4 and IPv6 rows and probes the TCP ones for HTTP and HTTPS from
//! the host.
//!
//! Sources: `/proc/net/tcp`, `tcp6`, `udp` and `udp6` of the guest's network namespace (TCP
//! sockets in state LISTEN; UDP sockets bound to a port and connected to nobody), and the
//! owners of each socket, found by scanning the `/proc/PID/fd` links for `socket:[INODE]` and
//! naming each process by `/proc/PID/comm`.
//!
//! Invariants: a line of `/proc/net/*` that does not parse is skipped, never a panic or an
//! error; everything the answer holds is bounded ([`MAX_LISTENERS`], [`MAX_OWNERS`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

/// Most listeners one answer lists (sorted by port first, so the lowest ports stay).
pub const MAX_LISTENERS: usize = 4096;
/// Most processes named for one socket (a pre-forking server shares its listener with every
/// worker; the first few pids say who it is).
pub const MAX_OWNERS: usize = 16;

/// The document `--ports` prints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestPorts {
    /// Sorted by port, protocol and address.
    pub listeners: Vec<GuestListener>,
    /// More than [`MAX_LISTENERS`] were found; the rest were left out.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One listening socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestListener {
    pub protocol: Protocol,
    /// The local address it is bound to (`0.0.0.0` or `::` for every address).
    pub address: IpAddr,
    pub port: u16,
    /// The processes holding it, by pid (none when they could not be found).
    #[serde(default)]
    pub processes: Vec<SocketOwner>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SocketOwner {
    pub pid: u32,
    /// `/proc/PID/comm`: the program's name, at most 15 bytes.
    pub name: String,
}

/// A socket as `/proc/net/*` lists it, before its owners are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawSocket {
    pub protocol: Protocol,
    pub address: IpAddr,
    pub port: u16,
    pub inode: u64,
}

/// `TCP_LISTEN` in the `st` column.
const TCP_LISTEN: u8 = 0x0A;
/// `TCP_CLOSE`: what an unconnected UDP socket shows.
const UDP_UNCONNECTED: u8 = 0x07;

/// The tool's whole run.
pub fn main() -> ExitCode {
    let ports = collect(Path::new("/proc"));
    let mut stdout = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut stdout, &ports)
        .map_err(std::io::Error::from)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banger-agent --ports: cannot write the answer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The listeners of the network namespace this process is in, with their owners, read from
/// `proc` (`/proc`, or a copy of one in tests). A table that cannot be read (no IPv6 in the
/// guest's kernel, say) adds nothing.
pub fn collect(proc: &Path) -> GuestPorts {
    let mut sockets = Vec::new();
    for (file, protocol) in [
        ("tcp", Protocol::Tcp),
        ("tcp6", Protocol::Tcp),
        ("udp", Protocol::Udp),
        ("udp6", Protocol::Udp),
    ] {
        if let Ok(text) = std::fs::read_to_string(proc.join("net").join(file)) {
            sockets.extend(parse_net_table(&text, protocol));
        }
    }
    sockets.sort_by(|a, b| {
        (a.port, a.protocol, a.address, a.inode).cmp(&(b.port, b.protocol, b.address, b.inode))
    });
    sockets.dedup();
    let truncated = sockets.len() > MAX_LISTENERS;
    sockets.truncate(MAX_LISTENERS);
    let wanted: BTreeSet<u64> = sockets
        .iter()
        .map(|s| s.inode)
        .filter(|inode| *inode != 0)
        .collect();
    let owners = socket_owners(proc, &wanted);
    let listeners = sockets
        .into_iter()
        .map(|socket| GuestListener {
            protocol: socket.protocol,
            address: socket.address,
            port: socket.port,
            processes: owners.get(&socket.inode).cloned().unwrap_or_default(),
        })
        .collect();
    GuestPorts {
        listeners,
        truncated,
    }
}

/// The listening sockets of one `/proc/net/{tcp,tcp6,udp,udp6}` table: TCP in LISTEN, UDP
/// bound to a port and connected to nobody. The header and any line that does not parse are
/// skipped.
pub fn parse_net_table(text: &str, protocol: Protocol) -> Vec<RawSocket> {
    text.lines()
        .filter_map(|line| parse_net_line(line, protocol))
        .filter(|(socket, state, remote_port)| match protocol {
            Protocol::Tcp => *state == TCP_LISTEN,
            Protocol::Udp => *state == UDP_UNCONNECTED && *remote_port == 0 && socket.port != 0,
        })
        .map(|(socket, _, _)| socket)
        .collect()
}

/// One line: `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid
/// timeout inode …`. Returns the socket, its state and the remote port.
fn parse_net_line(line: &str, protocol: Protocol) -> Option<(RawSocket, u8, u16)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // The slot number ends with ':' on every data line, and on no header.
    if !fields.first()?.ends_with(':') || fields.len() < 10 {
        return None;
    }
    let (address, port) = parse_endpoint(fields[1])?;
    let (_, remote_port) = parse_endpoint(fields[2])?;
    let state = u8::from_str_radix(fields[3], 16).ok()?;
    let inode = fields[9].parse().ok()?;
    Some((
        RawSocket {
            protocol,
            address,
            port,
            inode,
        },
        state,
        remote_port,
    ))
}

/// `0100007F:0016` (IPv4) or 32 hex digits `:PORT` (IPv6). The kernel prints each 32-bit word
/// of the address as the number its bytes make in this machine's byte order, and the port as
/// a plain number.
pub fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (address, port) = text.split_once(':')?;
    if port.len() != 4 {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| -> Option<[u8; 4]> {
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let address = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(address)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(address.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((address, port))
}

/// The inode of a `/proc/PID/fd/N` link's target when it is a socket: `socket:[12345]`.
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// For each inode of `wanted`, the processes with a descriptor on it (at most [`MAX_OWNERS`],
/// lowest pids first). Processes that vanish or hide their descriptors (another user's, when
/// the agent is not root) are skipped.
pub fn socket_owners(proc: &Path, wanted: &BTreeSet<u64>) -> BTreeMap<u64, Vec<SocketOwner>> {
    let mut owners: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    if wanted.is_empty() {
        return BTreeMap::new();
    }
    let Ok(entries) = std::fs::read_dir(proc) else {
        return BTreeMap::new();
    };
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if let Some(inode) = socket_inode(target.as_os_str().as_encoded_bytes())
                && wanted.contains(&inode)
            {
                let pids = owners.entry(inode).or_default();
                if pids.len() < MAX_OWNERS {
                    pids.insert(pid);
                }
            }
        }
    }
    owners
        .into_iter()
        .map(|(inode, pids)| {
            let named = pids
                .into_iter()
                .map(|pid| SocketOwner {
                    pid,
                    name: process_name(proc, pid),
                })
                .collect();
            (inode, named)
        })
        .collect()
}

/// `/proc/PID/comm` without its newline; empty when the process is gone.
fn process_name(proc: &Path, pid: u32) -> String {
    std::fs::read(proc.join(pid.to_string()).join("comm"))
        .map(|bytes| String::from_utf8_lossy(&bytes).trim_end().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    // What a guest with sshd (v4 and v6), busybox httpd on 8080, a DNS stub on 127.0.0.53 and
    // an established connection shows, plus lines that must be skipped.
    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
   2: 3500007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 1003 1 0000000000000000 100 0 0 10 0
   3: 02001EAC:0016 01001EAC:D431 01 00000000:00000000 02:000A7214 00000000     0        0 1004 4 0000000000000000 20 4 1 10 -1
   4: garbage
   5: 00000000:ZZZZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1005
   6: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 notanumber
   7: 000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1006
";

    const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000200A8C0:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 100 0 0 10 0
   3: 000080FE00000000FF005452120000FE:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2004 1 0000000000000000 100 0 0 10 0
   4: 0000000000000000000000000000000G:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2005
";

    const UDP: &str = "\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 3001 2 0000000000000000 0
  200: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3002 2 0000000000000000 0
  300: 0200A8C0:9C40 08080808:0035 01 00000000:00000000 00:00000000 00000000     0        0 3003 2 0000000000000000 0
  301: 00000000:0000 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3004 2 0000000000000000 0
";

    const UDP6: &str = "\
   sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  400: 00000000000000000000000000000000:0222 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4001 2 0000000000000000 0
";

    fn v4(text: &str) -> IpAddr {
        IpAddr::V4(text.parse().unwrap())
    }

    fn v6(text: &str) -> IpAddr {
        IpAddr::V6(text.parse().unwrap())
    }

    fn endpoints(sockets: &[RawSocket]) -> Vec<(IpAddr, u16, u64)> {
        sockets
            .iter()
            .map(|s| (s.address, s.port, s.inode))
            .collect()
    }

    #[test]
    fn tcp_tables_give_listeners_only_and_skip_garbage() {
        assert_eq!(
            endpoints(&parse_net_table(TCP, Protocol::Tcp)),
            [
                (v4("0.0.0.0"), 22, 1001),
                (v4("0.0.0.0"), 8080, 1002),
                (v4("127.0.0.53"), 53, 1003),
            ]
        );
        assert_eq!(
            endpoints(&parse_net_table(TCP6, Protocol::Tcp)),
            [
                (v6("::"), 22, 2001),
                (v6("::1"), 631, 2002),
                (v6("::ffff:192.168.0.2"), 443, 2003),
                (v6("fe80::5254:ff:fe00:12"), 22, 2004),
            ]
        );
    }

    #[test]
    fn udp_tables_give_bound_unconnected_sockets() {
        let udp = parse_net_table(UDP, Protocol::Udp);
        assert_eq!(
            endpoints(&udp),
            [(v4("127.0.0.53"), 53, 3001), (v4("0.0.0.0"), 68, 3002)]
        );
        assert!(udp.iter().all(|s| s.protocol == Protocol::Udp));
        assert_eq!(
            endpoints(&parse_net_table(UDP6, Protocol::Udp)),
            [(v6("::"), 546, 4001)]
        );
    }

    #[test]
    fn odd_text_gives_nothing_rather_than_an_error() {
        for text in [
            "",
            "\n\n",
            "sl local",
            "0: 1 2 3",
            "\u{0}\u{fffd}: x y z",
            TCP6,
        ] {
            // TCP6's lines are IPv6; read as a UDP table they are still parsed, but none is
            // an unconnected UDP socket.
            let _ = parse_net_table(text, Protocol::Udp);
            let _ = parse_net_table(text, Protocol::Tcp);
        }
        assert_eq!(parse_endpoint("0100007F:16"), None, "a port is 4 digits");
        assert_eq!(parse_endpoint("+100007F:0016"), None);
        assert_eq!(parse_endpoint("0100007F0016"), None);
        assert_eq!(parse_endpoint("0100007F:0016"), Some((v4("127.0.0.1"), 22)));
    }

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12a]"), None);
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[99999999999999999999999]"), None);
    }

    /// A fake /proc: the four tables, and processes whose fd links point at sockets.
    fn fake_proc() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path();
        std::fs::create_dir(proc.join("net")).unwrap();
        for (name, text) in [("tcp", TCP), ("tcp6", TCP6), ("udp", UDP), ("udp6", UDP6)] {
            std::fs::write(proc.join("net").join(name), text).unwrap();
        }
        for (pid, comm, links) in [
            (1, "systemd\n", &["socket:[3002]", "/dev/null"][..]),
            (200, "sshd\n", &["socket:[1001]", "socket:[2001]"]),
            (300, "busybox\n", &["socket:[1002]", "pipe:[5]"]),
            (301, "busybox\n", &["socket:[1002]"]),
        ] {
            let fd = proc.join(pid.to_string()).join("fd");
            std::fs::create_dir_all(&fd).unwrap();
            std::fs::write(proc.join(pid.to_string()).join("comm"), comm).unwrap();
            for (n, link) in links.iter().enumerate() {
                std::os::unix::fs::symlink(link, fd.join(n.to_string())).unwrap();
            }
        }
        // Not processes: skipped.
        std::fs::create_dir_all(proc.join("self/fd")).unwrap();
        std::fs::write(proc.join("version"), "Linux").unwrap();
        dir
    }

    #[test]
    fn collects_listeners_sorted_with_their_processes() {
        let proc = fake_proc();
        let ports = collect(proc.path());
        let rows: Vec<(Protocol, IpAddr, u16, Vec<u32>)> = ports
            .listeners
            .iter()
            .map(|l| {
                (
                    l.protocol,
                    l.address,
                    l.port,
                    l.processes.iter().map(|p| p.pid).collect(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (Protocol::Tcp, v4("0.0.0.0"), 22, vec![200]),
                (Protocol::Tcp, v6("::"), 22, vec![200]),
                (Protocol::Tcp, v6("fe80::5254:ff:fe00:12"), 22, vec![]),
                (Protocol::Tcp, v4("127.0.0.53"), 53, vec![]),
                (Protocol::Udp, v4("127.0.0.53"), 53, vec![]),
                (Protocol::Udp, v4("0.0.0.0"), 68, vec![1]),
                (Protocol::Tcp, v6("::ffff:192.168.0.2"), 443, vec![]),
                (Protocol::Udp, v6("::"), 546, vec![]),
                (Protocol::Tcp, v6("::1"), 631, vec![]),
                (Protocol::Tcp, v4("0.0.0.0"), 8080, vec![300, 301]),
            ]
        );
        assert_eq!(ports.listeners[0].processes[0].name, "sshd");
        assert_eq!(ports.listeners[9].processes[1].name, "busybox");
        assert!(!ports.truncated);
        let json = serde_json::to_value(&ports).unwrap();
        assert_eq!(json["listeners"][0]["protocol"], "tcp");
        assert_eq!(json["listeners"][0]["address"], "0.0.0.0");
        assert_eq!(json["listeners"][1]["address"], "::");
        assert!(json.get("truncated").is_none());
        assert_eq!(
            serde_json::from_value::<GuestPorts>(json).unwrap(),
            ports,
            "round trip"
        );
    }

    #[test]
    fn a_proc_without_tables_gives_no_listeners() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(collect(dir.path()), GuestPorts::default());
    }

    #[test]
    fn finds_a_real_listener_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ports = collect(Path::new("/proc"));
        let mine = ports
            .listeners
            .iter()
            .find(|l| l.protocol == Protocol::Tcp && l.port == port)
            .unwrap_or_else(|| panic!("port {port} in {ports:?}"));
        assert_eq!(mine.address, v4("127.0.0.1"));
        assert!(
            mine.processes.iter().any(|p| p.pid == std::process::id()),
            "{mine:?}"
        );
    }
}
