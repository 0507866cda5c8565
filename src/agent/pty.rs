//! Pseudo-terminals for an exec with a tty (protocol 2): the pair, the child's side of the
//! set-up, the master as an async byte stream, window sizes, the foreground process group,
//! and ending a whole session.
//!
//! ```text
//!  host ──stdin frames──▶ master ══ line discipline ══ slave ◀── the command's 0, 1, 2
//!  host ◀─stdout frames── master                              (session leader, controlling tty)
//!           resize ──▶ TIOCSWINSZ on the master ──▶ SIGWINCH to the foreground process group
//! ```
//!
//! Invariants:
//! - Every descriptor is opened close-on-exec (`posix_openpt` with `O_CLOEXEC`, the slave
//!   through `TIOCGPTPEER` with `O_CLOEXEC`), so no command the agent starts at the same moment
//!   on another connection inherits a terminal that is not its own: a master that leaked into
//!   another process would keep the terminal from ever hanging up.
//! - Once the command has started the agent holds no descriptor of the slave, so the master
//!   reads end of file (EIO) exactly when every process of the command's closed it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::termios::{InputFlags, SetArg, SpecialCharacterIndices, tcgetattr, tcsetattr};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A new pseudo-terminal: the master for the agent, the slave for the command.
pub struct PtyPair {
    pub master: Master,
    pub slave: OwnedFd,
}

/// Opens a pseudo-terminal of `rows` x `cols`. Needs devpts on `/dev/pts` (the agent as PID 1
/// mounts it; `/dev/ptmx` refuses to open without it).
pub fn open(rows: u16, cols: u16) -> io::Result<PtyPair> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| annotate(e.into(), "open /dev/ptmx (is devpts mounted on /dev/pts?)"))?;
    grantpt(&master).map_err(|e| annotate(e.into(), "grantpt"))?;
    unlockpt(&master).map_err(|e| annotate(e.into(), "unlockpt"))?;
    let slave = open_peer(&master)?;
    set_size(master.as_fd(), rows, cols)?;
    // IUTF8, so that erasing in canonical mode takes whole UTF-8 characters, as the terminals
    // people use today send them. The kernel's other defaults (echo, ^C for SIGINT, \n to
    // \r\n on output…) are what a login terminal has.
    if let Ok(mut modes) = tcgetattr(&slave) {
        modes.input_flags |= InputFlags::IUTF8;
        let _ = tcsetattr(&slave, SetArg::TCSANOW, &modes);
    }
    Ok(PtyPair {
        master: Master::new(master.into())?,
        slave,
    })
}

/// The slave of `master`, opened without a path lookup (`TIOCGPTPEER`, Linux 4.13), or by
/// name on older kernels.
fn open_peer(master: &PtyMaster) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open(2) flags and returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if fd >= 0 {
        // SAFETY: the ioctl just returned this descriptor and nothing else owns it.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let error = io::Error::last_os_error();
    if !matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) {
        return Err(annotate(error, "open the terminal's slave"));
    }
    let name = ptsname_r(master).map_err(|e| annotate(e.into(), "ptsname"))?;
    nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| annotate(e.into(), &format!("open {name}")))
}

/// Sets a terminal's window size. On a master this is the size its slave reports, and the
/// kernel sends SIGWINCH to the slave's foreground process group when it changed.
pub fn set_size(terminal: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which outlives the call.
    if unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(annotate(io::Error::last_os_error(), "set the window size"));
    }
    Ok(())
}

/// A terminal's window size as (rows, cols).
pub fn size(terminal: BorrowedFd<'_>) -> io::Result<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which outlives the call.
    if unsafe { libc::ioctl(terminal.as_raw_fd(), libc::TIOCGWINSZ, &mut size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((size.ws_row, size.ws_col))
}

/// Runs in the child between fork and exec, after its stdin, stdout and stderr became the
/// slave: a session of its own, whose controlling terminal the slave becomes. Only
/// async-signal-safe calls (`setsid`, `ioctl`, reading errno).
pub fn become_session_leader() -> io::Result<()> {
    // SAFETY: setsid takes no arguments; it fails only for a process group leader, which
    // the child is not (no process group was asked of the spawn).
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCSCTTY on descriptor 0 (the slave) with argument 0 (do not steal it).
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The master side of a pseudo-terminal, non-blocking and registered with tokio's reactor.
pub struct Master {
    fd: AsyncFd<OwnedFd>,
}

impl Master {
    fn new(fd: OwnedFd) -> io::Result<Master> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: an `OwnedFd` is open until dropped and always reports the same descriptor;
        // the `AsyncFd` owns it from here on.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(|e| e.into_parts().1)?;
        Ok(Master { fd })
    }

    /// Reads what the command wrote. `Ok(0)` once no process holds the slave any more (the
    /// kernel says EIO then). Cancel-safe: nothing is consumed until the read succeeds.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| read_now(fd.get_ref().as_fd(), buf)) {
                Ok(Ok(Some(n))) => return Ok(n),
                // Spurious readiness: wait again.
                Ok(Ok(None)) => guard.clear_ready(),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// What can be read at once without waiting: `Ok(None)` when nothing is there now,
    /// `Ok(Some(0))` at the end. A read with nothing buffered first lets the kernel move
    /// what the slave wrote across to the master, so after the command exited this sees all
    /// of its output.
    pub fn read_now(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        read_now(self.fd.get_ref().as_fd(), buf)
    }

    /// Writes input for the command, as much as the terminal takes now. Cancel-safe.
    pub async fn write(&self, data: &[u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| {
                nix::unistd::write(fd.get_ref().as_fd(), data).map_err(io::Error::from)
            }) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        set_size(self.fd.get_ref().as_fd(), rows, cols)
    }

    /// The terminal's foreground process group (where a ^C typed on it goes), if it has one.
    pub fn foreground_group(&self) -> Option<Pid> {
        nix::unistd::tcgetpgrp(self.fd.get_ref().as_fd())
            .ok()
            .filter(|pgid| pgid.as_raw() > 0)
    }

    /// The terminal's end-of-file character (^D unless the command changed it). Termios
    /// requests on a master act on its slave.
    pub fn eof_char(&self) -> u8 {
        tcgetattr(self.fd.get_ref())
            .map(|modes| modes.control_chars[SpecialCharacterIndices::VEOF as usize])
            .ok()
            .filter(|c| *c != 0)
            .unwrap_or(0x04)
    }
}

impl AsFd for Master {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

fn read_now(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match nix::unistd::read(fd, buf) {
        Ok(n) => Ok(Some(n)),
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        // The slave's last descriptor closed: that is the master's end of file.
        Err(nix::errno::Errno::EIO) => Ok(Some(0)),
        Err(nix::errno::Errno::EINTR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Kills every process of session `sid` with SIGKILL: the command on a tty was its leader, and
/// a shell's jobs run in process groups of their own, which killing the leader's group would
/// miss. Scans `/proc` again until a scan finds nobody new (a process may fork between a scan
/// and its kill; a process with SIGKILL pending cannot fork any more). `leader_reaped`: the
/// leader was already waited for, so a process now numbered `sid` is not it and is left alone.
pub fn kill_session(sid: i32, leader_reaped: bool) {
    if !leader_reaped {
        let _ = killpg(Pid::from_raw(sid), Signal::SIGKILL);
    }
    let mut killed = std::collections::HashSet::new();
    for _ in 0..64 {
        let Some(members) = session_members(sid) else {
            return;
        };
        let mut new = false;
        for pid in members {
            if leader_reaped && pid == sid {
                continue;
            }
            if killed.insert(pid) {
                new = true;
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if !new {
            return;
        }
    }
}

/// The live (not zombie) processes whose session is `sid`; `None` when `/proc` cannot be read.
fn session_members(sid: i32) -> Option<Vec<i32>> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        // A process may end between the listing and this read: then it is no member.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((state, session)) = parse_stat(&stat)
            && session == sid
            && !matches!(state, 'Z' | 'X')
        {
            members.push(pid);
        }
    }
    Some(members)
}

/// The state and session id from `/proc/PID/stat`. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted from the
/// last `)`: state, ppid, pgrp, session.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let session = fields.nth(2)?.parse().ok()?;
    Some((state, session))
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_is_called() {
        assert_eq!(
            parse_stat("42 (sh) S 1 42 42 34816 42 4194560 100"),
            Some(('S', 42))
        );
        assert_eq!(parse_stat("77 (a) b) (c) R 42 77 42 0 -1"), Some(('R', 42)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) Z 0"), None);
    }

    #[tokio::test]
    async fn a_pair_has_the_size_asked_for_and_carries_bytes_both_ways() {
        let pair = open(33, 101).expect("open a pseudo-terminal");
        assert_eq!(size(pair.slave.as_fd()).unwrap(), (33, 101));
        pair.master.resize(40, 120).unwrap();
        assert_eq!(size(pair.slave.as_fd()).unwrap(), (40, 120));
        // Input typed on the master reaches the slave (after the line discipline's echo).
        let mut written = 0;
        while written < 3 {
            written += pair.master.write(&b"hi\n"[written..]).await.unwrap();
        }
        let mut line = [0u8; 16];
        let n = nix::unistd::read(pair.slave.as_fd(), &mut line).unwrap();
        assert_eq!(&line[..n], b"hi\n");
        let mut echoed = Vec::new();
        let mut buf = [0u8; 64];
        while !echoed.ends_with(b"\r\n") {
            let n = pair.master.read(&mut buf).await.unwrap();
            echoed.extend_from_slice(&buf[..n]);
        }
        assert_eq!(echoed, b"hi\r\n", "echoed with \\n turned into \\r\\n");
        assert_eq!(pair.master.eof_char(), 0x04);
        // The slave closed: the master reads its end.
        drop(pair.slave);
        assert_eq!(pair.master.read(&mut buf).await.unwrap(), 0);
    }
}
