//! `banger-agent --stats`: the guest's resource use as one JSON document on stdout.
//!
//! bangerd runs it through the agent's ordinary `exec` (`["/proc/self/exe", "--stats"]`),
//! so it needs no message of its own in the agent protocol; `vm stats` adds what the host
//! knows (the VMM's memory and CPU time, the disk files' sizes).
//!
//! What it reads, all from the guest's own kernel: CPU use over a short sample (two reads of
//! `/proc/stat` [`CPU_SAMPLE`] apart), the CPU count and load averages, memory from
//! `/proc/meminfo`, disk use (statvfs) of `/` and of the work disk's mount point when something
//! is mounted there (the mount point comes from the kernel command line's `banger.work=`,
//! default `/work`), uptime from `/proc/uptime`, and the number of processes.
//!
//! Invariants: the parsers never panic on odd text (a field that does not parse is left at
//! zero or skipped); the tool writes nothing, anywhere, but its answer.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::boot::GuestBootArgs;

/// How long the CPU sample lasts: long enough for a busy guest to show, short enough that
/// `vm stats` answers at once.
pub const CPU_SAMPLE: Duration = Duration::from_millis(200);

/// The document `--stats` prints. Every field has a default, so a host reading the answer of
/// an older or newer agent gets zeros for what that agent did not say, never an error.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestStats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    /// `/` first, then the work disk when it is mounted.
    pub disks: Vec<DiskStats>,
    pub uptime_secs: f64,
    pub processes: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuStats {
    /// Online CPUs, as `/proc/stat` lists them.
    pub count: u32,
    /// Share of all CPUs' time spent neither idle nor waiting for IO during the sample, 0–100.
    pub busy_percent: f64,
    /// The 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryStats {
    pub total_bytes: u64,
    /// What the kernel estimates it can give new work without swapping (`MemAvailable`).
    pub available_bytes: u64,
    /// `total_bytes - available_bytes`.
    pub used_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskStats {
    /// The mount point (`/`, `/work`).
    pub mount: String,
    /// What is mounted there, as `/proc/mounts` says (`/dev/vda`).
    pub device: String,
    pub fs_type: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// What an unprivileged user can still write (statvfs `f_bavail`), as `df` shows it.
    pub free_bytes: u64,
}

/// The tool's whole run: collects, prints the JSON document, exits 0; on a failure that
/// leaves nothing to report, says why on stderr and exits 1.
pub fn main() -> ExitCode {
    let stats = collect();
    let mut stdout = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut stdout, &stats)
        .map_err(std::io::Error::from)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banger-agent --stats: cannot write the answer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads everything from this machine's `/proc` and filesystems. A source that cannot be
/// read leaves its part at zero rather than failing the whole answer: partial stats beat none.
pub fn collect() -> GuestStats {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let first = parse_cpu_times(&read("/proc/stat"));
    std::thread::sleep(CPU_SAMPLE);
    let stat = read("/proc/stat");
    let second = parse_cpu_times(&stat);
    let cpu = CpuStats {
        count: count_cpus(&stat),
        busy_percent: match (first, second) {
            (Some(first), Some(second)) => busy_percent(first, second),
            _ => 0.0,
        },
        load: parse_loadavg(&read("/proc/loadavg")),
    };
    let mounts = parse_mounts(&read("/proc/self/mounts"));
    let work_mount = GuestBootArgs::parse(&read("/proc/cmdline"))
        .work_mount()
        .to_owned();
    let mut disks = Vec::new();
    for mount in ["/", work_mount.as_str()] {
        if disks.iter().any(|d: &DiskStats| d.mount == mount) {
            continue;
        }
        // `/` is always there; the work disk only when something is mounted on its path (an
        // empty directory of the root disk would report the root's numbers under its name).
        let entry = mounts.iter().rev().find(|m| m.mount_point == mount);
        if entry.is_none() && mount != "/" {
            continue;
        }
        if let Some(usage) = disk_usage(Path::new(mount)) {
            disks.push(DiskStats {
                mount: mount.to_owned(),
                device: entry.map(|m| m.device.clone()).unwrap_or_default(),
                fs_type: entry.map(|m| m.fs_type.clone()).unwrap_or_default(),
                ..usage
            });
        }
    }
    GuestStats {
        cpu,
        memory: parse_meminfo(&read("/proc/meminfo")),
        disks,
        uptime_secs: parse_uptime(&read("/proc/uptime")),
        processes: count_processes(Path::new("/proc")),
    }
}

/// The aggregate `cpu` line of `/proc/stat`: (all time, idle time) in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    pub total: u64,
    pub idle: u64,
}

/// Reads the aggregate `cpu ` line: user nice system idle iowait irq softirq steal (guest and
/// guest_nice are already counted in user and nice, so they are left out of the total).
pub fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some("cpu"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // Kernels before 2.6.11 had fewer fields; four (user nice system idle) is the least.
    if fields.len() < 4 {
        return None;
    }
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    let total = fields.iter().fold(0u64, |sum, v| sum.saturating_add(*v));
    Some(CpuTimes { total, idle })
}

/// The busy share between two samples, 0–100; 0 when no time passed (or the counters went
/// backwards, which a CPU going offline can make them do).
pub fn busy_percent(first: CpuTimes, second: CpuTimes) -> f64 {
    let total = second.total.saturating_sub(first.total);
    let idle = second.idle.saturating_sub(first.idle);
    if total == 0 || idle > total {
        return 0.0;
    }
    let busy = (total - idle) as f64 * 100.0 / total as f64;
    (busy * 10.0).round() / 10.0
}

/// The `cpuN` lines of `/proc/stat`: the online CPUs.
pub fn count_cpus(stat: &str) -> u32 {
    let count = stat
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|word| {
            word.strip_prefix("cpu")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// The first three fields of `/proc/loadavg`; a field that does not parse is 0.
pub fn parse_loadavg(text: &str) -> [f64; 3] {
    let mut load = [0.0; 3];
    for (slot, field) in load.iter_mut().zip(text.split_whitespace()) {
        *slot = field
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .unwrap_or(0.0);
    }
    load
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo` (in kB there). A kernel older than 3.14
/// has no `MemAvailable`: then free + buffers + cached stands in for it.
pub fn parse_meminfo(text: &str) -> MemoryStats {
    let kib = |key: &str| -> Option<u64> {
        text.lines().find_map(|line| {
            let (name, rest) = line.split_once(':')?;
            if name.trim() != key {
                return None;
            }
            let value: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(value.saturating_mul(1024))
        })
    };
    let total_bytes = kib("MemTotal").unwrap_or(0);
    let available_bytes = kib("MemAvailable")
        .unwrap_or_else(|| {
            ["MemFree", "Buffers", "Cached"]
                .iter()
                .filter_map(|key| kib(key))
                .fold(0, u64::saturating_add)
        })
        .min(total_bytes);
    MemoryStats {
        total_bytes,
        available_bytes,
        used_bytes: total_bytes - available_bytes,
    }
}

/// The first field of `/proc/uptime`, in seconds.
pub fn parse_uptime(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .unwrap_or(0.0)
}

/// One line of `/proc/self/mounts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
}

/// The entries of `/proc/self/mounts`, in order (a later mount on the same point hides an
/// earlier one). The kernel escapes space, tab, newline and backslash in names as `\ooo`.
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let device = unescape_mount_field(fields.next()?);
            let mount_point = unescape_mount_field(fields.next()?);
            let fs_type = unescape_mount_field(fields.next()?);
            if !mount_point.starts_with('/') {
                return None;
            }
            Some(MountEntry {
                device,
                mount_point,
                fs_type,
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` is a space); anything else stays as it is.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .map(|d| (d[0] - b'0') as u32 * 64 + (d[1] - b'0') as u32 * 8 + (d[2] - b'0') as u32)
            .and_then(|value| u8::try_from(value).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// statvfs of `path`, as `df` counts: used is what is not free to anyone, free what an
/// unprivileged user may still write.
fn disk_usage(path: &Path) -> Option<DiskStats> {
    let fs = nix::sys::statvfs::statvfs(path).ok()?;
    let fragment = fs.fragment_size() as u64;
    let bytes = |blocks: u64| blocks.saturating_mul(fragment);
    let blocks = fs.blocks() as u64;
    let free = fs.blocks_free() as u64;
    Some(DiskStats {
        total_bytes: bytes(blocks),
        used_bytes: bytes(blocks.saturating_sub(free)),
        free_bytes: bytes(fs.blocks_available() as u64),
        ..DiskStats::default()
    })
}

/// The processes under `proc` (numeric directory names).
pub fn count_processes(proc: &Path) -> u32 {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return 0;
    };
    let count = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.as_encoded_bytes();
            !name.is_empty() && name.iter().all(u8::is_ascii_digit)
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "\
cpu  4705 356 584 3699176 23060 0 277 0 0 0
cpu0 1393280 32966 572056 13343292 6130 0 17875 0 23933 0
cpu1 1 2 3 4 5 6 7 8 9 10
intr 114930548 113199788 3 0 5 263 0 4 [... lots more numbers ...]
ctxt 1990473
btime 1062191376
processes 2915
procs_running 1
cpu_garbage 1 2 3
cpux 1 2 3 4
";

    #[test]
    fn cpu_times_and_count_come_from_the_aggregate_and_numbered_lines() {
        let times = parse_cpu_times(STAT).unwrap();
        assert_eq!(times.idle, 3699176 + 23060);
        assert_eq!(times.total, 4705 + 356 + 584 + 3699176 + 23060 + 277);
        assert_eq!(count_cpus(STAT), 2);
        // Four fields is the oldest format; fewer, or garbage, is no answer.
        assert_eq!(
            parse_cpu_times("cpu 1 2 3 4\n"),
            Some(CpuTimes { total: 10, idle: 4 })
        );
        assert_eq!(parse_cpu_times("cpu 1 2 3\n"), None);
        assert_eq!(parse_cpu_times("cpu 1 x 3 4\n"), None);
        assert_eq!(parse_cpu_times(""), None);
        assert_eq!(parse_cpu_times("cpu0 1 2 3 4\n"), None);
        assert_eq!(count_cpus("garbage\n\ncpu 1\n"), 0);
    }

    #[test]
    fn busy_share_is_the_non_idle_part_of_the_elapsed_ticks() {
        let a = CpuTimes {
            total: 1000,
            idle: 800,
        };
        let b = CpuTimes {
            total: 1200,
            idle: 950,
        };
        assert_eq!(busy_percent(a, b), 25.0);
        assert_eq!(busy_percent(a, a), 0.0, "no time passed");
        assert_eq!(busy_percent(b, a), 0.0, "counters going backwards");
        let weird = CpuTimes {
            total: 1100,
            idle: 1000,
        };
        assert_eq!(busy_percent(a, weird), 0.0, "more idle than elapsed");
    }

    #[test]
    fn load_uptime_and_memory_parse_and_tolerate_garbage() {
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 2/571 12345\n"),
            [0.52, 0.58, 0.59]
        );
        assert_eq!(parse_loadavg("nan x"), [0.0; 3]);
        assert_eq!(parse_loadavg(""), [0.0; 3]);
        assert_eq!(parse_uptime("350735.47 234388.90\n"), 350735.47);
        assert_eq!(parse_uptime("-3 1"), 0.0);
        assert_eq!(parse_uptime("inf"), 0.0);
        assert_eq!(parse_uptime(""), 0.0);

        let meminfo = "\
MemTotal:         500000 kB
MemFree:          100000 kB
MemAvailable:     300000 kB
Buffers:           10000 kB
Cached:            50000 kB
garbage line without colon
Weird: notanumber kB
";
        assert_eq!(
            parse_meminfo(meminfo),
            MemoryStats {
                total_bytes: 500000 * 1024,
                available_bytes: 300000 * 1024,
                used_bytes: 200000 * 1024,
            }
        );
        // No MemAvailable (kernels before 3.14): free + buffers + cached.
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 40 kB\n";
        assert_eq!(parse_meminfo(old).available_bytes, 150 * 1024);
        // Available above total (nonsense) is capped, so used never underflows.
        let odd = "MemTotal: 10 kB\nMemAvailable: 20 kB\n";
        assert_eq!(parse_meminfo(odd).used_bytes, 0);
        assert_eq!(parse_meminfo(""), MemoryStats::default());
    }

    #[test]
    fn mounts_parse_with_the_kernels_escapes() {
        let text = "\
/dev/vda / ext4 rw,relatime 0 0
proc /proc proc rw 0 0
/dev/vdb /work ext4 rw 0 0
/dev/vdc /mnt/with\\040space ext4 rw 0 0
bad
/dev/x relative ext4 rw 0 0
/dev/vdd /odd\\09 ext4 rw 0 0
";
        let mounts = parse_mounts(text);
        let points: Vec<&str> = mounts.iter().map(|m| m.mount_point.as_str()).collect();
        assert_eq!(
            points,
            ["/", "/proc", "/work", "/mnt/with space", "/odd\\09"]
        );
        assert_eq!(mounts[2].device, "/dev/vdb");
        assert_eq!(mounts[2].fs_type, "ext4");
        assert_eq!(unescape_mount_field("a\\134b"), "a\\b");
        assert_eq!(unescape_mount_field("trailing\\"), "trailing\\");
        assert_eq!(unescape_mount_field("\\777"), "\\777", "not a byte");
    }

    #[test]
    fn collects_this_machines_numbers() {
        let stats = collect();
        assert!(stats.cpu.count >= 1, "{stats:?}");
        assert!((0.0..=100.0).contains(&stats.cpu.busy_percent));
        assert!(stats.memory.total_bytes > 0);
        assert!(stats.memory.used_bytes <= stats.memory.total_bytes);
        assert!(stats.uptime_secs > 0.0);
        assert!(stats.processes >= 1);
        let root = &stats.disks[0];
        assert_eq!(root.mount, "/");
        assert!(root.total_bytes > 0 && root.used_bytes > 0, "{root:?}");
        // The document round-trips, and a document with fields missing or unknown reads too.
        let json = serde_json::to_string(&stats).unwrap();
        assert_eq!(serde_json::from_str::<GuestStats>(&json).unwrap(), stats);
        let sparse: GuestStats =
            serde_json::from_str(r#"{"uptime_secs":5,"future_field":1}"#).unwrap();
        assert_eq!(sparse.uptime_secs, 5.0);
    }
}
