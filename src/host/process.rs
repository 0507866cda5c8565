//! Processes by pid, safely across pid reuse.
//!
//! bangerd records a VMM process as *(pid, start time)*: the start time is field 22 of
//! `/proc/PID/stat` (clock ticks since boot), which the kernel never changes for a process. A
//! pid whose start time differs from the recorded one belongs to somebody else now, and must
//! never be signalled. Everything here reads `/proc` or sends signals; it keeps no state.
//!
//! Invariants:
//! - no signal is sent to a pid unless its current start time equals the recorded one;
//! - "gone" includes zombies: a process that has exited but is not yet reaped holds no
//!   resources that matter to banger (its parent, or tokio's orphan reaper, reaps it).

use std::ffi::OsStr;
use std::io;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// What `/proc` says about a recorded process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The pid runs and its start time matches the record.
    Alive,
    /// The pid is a zombie with the recorded start time: it has exited, unreaped.
    Exited,
    /// No process has this pid any more.
    Gone,
    /// The pid now belongs to another process (pid reuse).
    Reused,
}

impl Liveness {
    /// True when the recorded process no longer runs (exited, gone, or its pid was reused).
    pub fn is_dead(self) -> bool {
        self != Liveness::Alive
    }
}

/// One parsed `/proc/PID/stat` line: only the fields banger uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: R, S, D, Z, T…
    pub state: char,
    /// Field 5: the process group.
    pub pgrp: i32,
    /// Field 22: start time in clock ticks after boot.
    pub start_time_ticks: u64,
}

/// Parses the text of `/proc/PID/stat`.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the *last* `)`.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(5 - 3)?.parse().ok()?;
    let start_time_ticks = fields.get(22 - 3)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        start_time_ticks,
    })
}

/// Reads `/proc/PID/stat`; `Ok(None)` when no such process exists.
pub fn proc_stat(pid: u32) -> io::Result<Option<ProcStat>> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => parse_proc_stat(&text).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat is not in the expected format"),
            )
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        // ESRCH shows up when the process exits between open and read.
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(err) => Err(err),
    }
}

/// The start time of `pid` (field 22 of `/proc/PID/stat`, clock ticks after boot).
pub fn proc_start_time_ticks(pid: u32) -> io::Result<u64> {
    proc_stat(pid)?
        .map(|stat| stat.start_time_ticks)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no process {pid}")))
}

/// Whether the process recorded as `(pid, start_time_ticks)` still runs.
pub fn liveness(pid: u32, start_time_ticks: u64) -> io::Result<Liveness> {
    Ok(match proc_stat(pid)? {
        None => Liveness::Gone,
        Some(stat) if stat.start_time_ticks != start_time_ticks => Liveness::Reused,
        Some(stat) if stat.state == 'Z' || stat.state == 'X' => Liveness::Exited,
        Some(_) => Liveness::Alive,
    })
}

/// Sends `signal` to the recorded process, and to its whole process group when it leads
/// one (VMM processes are started as group leaders so that their children — the fake's guest
/// agent — go with them). Returns the liveness seen before signalling; nothing is sent
/// unless it was [`Liveness::Alive`].
pub fn signal_recorded(pid: u32, start_time_ticks: u64, signal: Signal) -> io::Result<Liveness> {
    let Some(stat) = proc_stat(pid)? else {
        return Ok(Liveness::Gone);
    };
    if stat.start_time_ticks != start_time_ticks {
        return Ok(Liveness::Reused);
    }
    if stat.state == 'Z' || stat.state == 'X' {
        return Ok(Liveness::Exited);
    }
    let raw = i32::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("pid {pid}")))?;
    let result = if stat.pgrp == raw {
        killpg(Pid::from_raw(raw), signal)
    } else {
        kill(Pid::from_raw(raw), signal)
    };
    match result {
        // It exited between the check and the signal: that is what we wanted anyway.
        Ok(()) | Err(Errno::ESRCH) => Ok(Liveness::Alive),
        Err(errno) => Err(io::Error::from(errno)),
    }
}

/// Polls until the recorded process no longer runs, or `timeout` passes. Returns whether it
/// is dead. Polling (every few milliseconds) is the only option for a process that is not our
/// child, such as one re-adopted after a daemon restart.
pub async fn wait_dead(pid: u32, start_time_ticks: u64, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if liveness(pid, start_time_ticks)?.is_dead() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Every pid in `/proc` now (none where it cannot be read): what the scans below walk.
pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// Processes whose command line holds `flag` immediately followed by `value` (e.g.
/// `--api-sock /path`), with their start times. It reads all of `/proc`, so async callers run
/// it with `spawn_blocking`. Processes that vanish during the scan are skipped.
pub fn processes_with_argument(flag: &str, value: &OsStr) -> Vec<(u32, u64)> {
    let wanted = value.as_encoded_bytes();
    let mut found = Vec::new();
    for pid in all_pids() {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let matches = args
            .windows(2)
            .any(|pair| pair[0] == flag.as_bytes() && pair[1] == wanted);
        if matches && let Ok(ticks) = proc_start_time_ticks(pid) {
            found.push((pid, ticks));
        }
    }
    found
}

/// A process whose command line names a socket under some directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketUser {
    pub pid: u32,
    pub start_time_ticks: u64,
    /// Its process group: a VMM leads its own, and what it starts (the fake's guest agent)
    /// belongs to it.
    pub pgrp: i32,
    /// The first socket path under the directory that its command line names.
    pub socket: std::path::PathBuf,
}

/// Processes whose command line names a socket under `dir` (a path below it whose file name
/// contains `.sock`), however it is spelt: a whole argument (`--api-sock DIR/ID/api.sock`),
/// after a prefix (`unix:DIR/…`), or inside a list (`socket,path=DIR/ID/agent.sock,server=on`).
/// This is how the VMMs launched for one state directory are found without a record of
/// them. It reads all of `/proc`; processes that vanish meanwhile are skipped, and so is the
/// calling process.
pub fn processes_with_sockets_under(dir: &std::path::Path) -> Vec<SocketUser> {
    let mut prefix = dir.as_os_str().as_encoded_bytes().to_vec();
    if prefix.last() != Some(&b'/') {
        prefix.push(b'/');
    }
    let me = std::process::id();
    let mut found = Vec::new();
    for pid in all_pids() {
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let Some(socket) = cmdline
            .split(|&b| b == 0)
            .find_map(|arg| socket_under(arg, &prefix))
        else {
            continue;
        };
        if let Ok(Some(stat)) = proc_stat(pid) {
            found.push(SocketUser {
                pid,
                start_time_ticks: stat.start_time_ticks,
                pgrp: stat.pgrp,
                socket,
            });
        }
    }
    found
}

/// The socket path under `prefix` (which ends in `/`) that `arg` names, if any.
fn socket_under(arg: &[u8], prefix: &[u8]) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let start = arg.windows(prefix.len()).position(|w| w == prefix)?;
    let rest = &arg[start..];
    let path = &rest[..rest.iter().position(|&b| b == b',').unwrap_or(rest.len())];
    let name = path.rsplit(|&b| b == b'/').next()?;
    let is_socket = name.windows(5).any(|w| w == b".sock");
    (is_socket && path.len() > prefix.len())
        .then(|| std::path::PathBuf::from(std::ffi::OsStr::from_bytes(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_under_a_directory_are_found_however_an_argument_spells_them() {
        let prefix = b"/s/vms/";
        let found = |arg: &str| socket_under(arg.as_bytes(), prefix);
        assert_eq!(
            found("/s/vms/0a/api.sock"),
            Some("/s/vms/0a/api.sock".into())
        );
        assert_eq!(
            found("unix:/s/vms/0a/vsock.sock_1024"),
            Some("/s/vms/0a/vsock.sock_1024".into())
        );
        assert_eq!(
            found("socket,id=a,path=/s/vms/0a/agent.sock,server=on"),
            Some("/s/vms/0a/agent.sock".into())
        );
        assert_eq!(found("/s/vms/0a/root.ext4"), None, "not a socket");
        assert_eq!(found("/s/vms/"), None);
        assert_eq!(found("/t/vms/0a/api.sock"), None, "another directory");
        assert_eq!(found("/s/vmsx/0a/api.sock"), None);
    }

    #[test]
    fn a_process_naming_a_socket_under_a_directory_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vms/0a/api.sock");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("read line")
            .arg("stand-in-vmm")
            .arg("--api-sock")
            .arg(&socket)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // `spawn` may return before the child has exec'd (its command line is empty until
        // then): look until it shows, within a deadline.
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            let found = processes_with_sockets_under(&dir.path().join("vms"));
            if !found.is_empty() || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, child.id());
        assert_eq!(found[0].socket, socket);
        assert!(processes_with_sockets_under(&dir.path().join("other")).is_empty());
    }

    #[test]
    fn parses_a_stat_line_whose_command_has_spaces_and_parens() {
        let line = "4242 (weird ) (name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let stat = parse_proc_stat(line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_time_ticks, 987654);
    }

    #[test]
    fn rejects_a_truncated_stat_line() {
        assert_eq!(parse_proc_stat("1 (init) S 0 1"), None);
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_a_different_start_time_is_reuse() {
        let pid = std::process::id();
        let start = proc_start_time_ticks(pid).unwrap();
        assert_eq!(liveness(pid, start).unwrap(), Liveness::Alive);
        assert_eq!(liveness(pid, start + 1).unwrap(), Liveness::Reused);
        // Signal 0 on a reused record must not be sent; the answer says why.
        assert_eq!(
            signal_recorded(pid, start + 1, Signal::SIGKILL).unwrap(),
            Liveness::Reused
        );
    }

    #[test]
    fn a_pid_that_never_existed_is_gone() {
        // Above the kernel's pid_max (at most 2^22).
        assert_eq!(liveness(1 << 23, 0).unwrap(), Liveness::Gone);
        assert!(proc_start_time_ticks(1 << 23).is_err());
    }

    #[tokio::test]
    async fn an_exited_child_counts_as_dead_before_it_is_reaped() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // The child may already be a zombie; its start time is still readable then.
        let start = proc_start_time_ticks(pid).unwrap();
        assert!(
            wait_dead(pid, start, Duration::from_secs(10))
                .await
                .unwrap()
        );
        child.wait().unwrap();
        // Gone, or (rarely) already reused by another process: dead either way.
        assert!(liveness(pid, start).unwrap().is_dead());
    }
}
