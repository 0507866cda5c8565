//! What a VM costs the host, as `vm stats` reports it: the VMM process's resident memory and
//! CPU time (from `/proc/PID/status` and `/proc/PID/stat`), and the disk files' sizes, apparent
//! (what the guest sees) and allocated (what the host's filesystem really holds: the files
//! are sparse or reflinked, so this is usually far less).
//!
//! Invariants: a process is read only when its start time is the recorded one (a reused pid
//! is someone else's, and reported as gone); reads only, no state.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::process::{ProcStat, parse_proc_stat};

/// A VMM process's use of the host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessUsage {
    /// `VmRSS`: resident memory, guest memory it touched included.
    pub rss_bytes: u64,
    /// User plus system CPU time since it started.
    pub cpu_secs: f64,
}

/// The usage of the process recorded as `(pid, start_time_ticks)`; `Ok(None)` when it is gone
/// or its pid now belongs to another process.
pub fn process_usage(pid: u32, start_time_ticks: u64) -> io::Result<Option<ProcessUsage>> {
    let read = |file: &str| match std::fs::read_to_string(format!("/proc/{pid}/{file}")) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(None)
        }
        Err(e) => Err(e),
    };
    let Some(stat) = read("stat")? else {
        return Ok(None);
    };
    if !matches!(parse_proc_stat(&stat), Some(ProcStat { start_time_ticks: t, .. }) if t == start_time_ticks)
    {
        return Ok(None);
    }
    let Some(status) = read("status")? else {
        return Ok(None);
    };
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/{what} is not in the expected format"),
        )
    };
    let ticks = parse_cpu_ticks(&stat).ok_or_else(|| invalid("stat"))?;
    // A kernel thread has no VmRSS; a VMM always has one, but zero is the honest answer.
    let rss_bytes = parse_rss_bytes(&status).unwrap_or(0);
    Ok(Some(ProcessUsage {
        rss_bytes,
        cpu_secs: ticks as f64 / clock_ticks_per_sec() as f64,
    }))
}

/// `utime + stime` (fields 14 and 15 of `/proc/PID/stat`), counted after the command name's
/// last `)` because the name may hold spaces and parentheses.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3, so field N is fields[N - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// `VmRSS:   12345 kB` of `/proc/PID/status`, in bytes.
pub fn parse_rss_bytes(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix("VmRSS:")?;
        let mut words = value.split_whitespace();
        let number: u64 = words.next()?.parse().ok()?;
        (words.next() == Some("kB")).then(|| number.saturating_mul(1024))
    })
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// A file's size as its readers see it, and the bytes its filesystem allocated for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSizes {
    pub apparent_bytes: u64,
    pub allocated_bytes: u64,
}

/// `path`'s sizes; `Ok(None)` when it does not exist.
pub fn file_sizes(path: &Path) -> io::Result<Option<FileSizes>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(FileSizes {
            apparent_bytes: meta.len(),
            // st_blocks counts 512-byte units whatever the filesystem's block size.
            allocated_bytes: meta.blocks().saturating_mul(512),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_and_rss_parse_whatever_the_command_is_called() {
        let stat = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 70 0 0 20 0 3 0 987654 1000000 2000";
        assert_eq!(parse_cpu_ticks(stat), Some(320));
        assert_eq!(parse_cpu_ticks("1 (short) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 1 1 1 0 -1 0 0 0 0 0 x 70"), None);

        let status = "Name:\tqemu\nVmPeak:\t  9999 kB\nVmRSS:\t  204800 kB\nThreads:\t4\n";
        assert_eq!(parse_rss_bytes(status), Some(204800 * 1024));
        assert_eq!(parse_rss_bytes("Name:\tkthreadd\n"), None);
        assert_eq!(parse_rss_bytes("VmRSS: lots kB\n"), None);
        assert_eq!(parse_rss_bytes("VmRSS: 12 MB\n"), None, "only kB is known");
    }

    #[test]
    fn reads_this_process_and_refuses_a_reused_pid() {
        let pid = std::process::id();
        let start = super::super::process::proc_start_time_ticks(pid).unwrap();
        // Burn a little CPU so the time is not zero on a fast machine.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let usage = process_usage(pid, start)
            .unwrap()
            .expect("this process runs");
        assert!(usage.rss_bytes > 1 << 20, "{usage:?}");
        assert!(usage.cpu_secs >= 0.0);
        assert_eq!(
            process_usage(pid, start + 1).unwrap(),
            None,
            "another start time"
        );
        assert_eq!(process_usage(1 << 23, 0).unwrap(), None, "no such pid");
    }

    #[test]
    fn a_sparse_file_allocates_less_than_it_seems() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(64 << 20).unwrap();
        std::io::Write::write_all(&mut &file, &[1u8; 8192]).unwrap();
        file.sync_all().unwrap();
        let sizes = file_sizes(&path).unwrap().unwrap();
        assert_eq!(sizes.apparent_bytes, 64 << 20);
        assert!(
            sizes.allocated_bytes >= 8192 && sizes.allocated_bytes < 64 << 20,
            "{sizes:?}"
        );
        assert_eq!(file_sizes(&dir.path().join("absent")).unwrap(), None);
    }
}
