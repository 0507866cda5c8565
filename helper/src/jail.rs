//! Firecracker launched for a caller through the jailer: the one place where banger-helper
//! starts a process, and the identity rules that let it signal one later.
//!
//! What the helper runs is fixed by its own command line (`--jailer`, `--firecracker`,
//! `--jail-dir`), checked at startup; a request names only a VM id. For caller `UID` and VM
//! `VM` the jail's id is `UID-VM`, so two users' VMs never share a jail, and the jailer lays
//! it out as:
//!
//! ```text
//!   JAIL_DIR/                      root's, 0755 (checked at startup: no one else may write
//!     EXEC/UID-VM/                 on the way to it, so no component can be swapped for a
//!       root/       caller's, 0700 symlink between a check and the jailer's mkdir)
//!         EXEC      the jailer's copy of --firecracker: what identifies the process
//!         dev/kvm, dev/net/tun     made by the jailer, owned by the caller
//!         firecracker.socket       the API socket (JAIL_API_SOCKET)
//!   /sys/fs/cgroup/EXEC/UID-VM     the jailer's cgroup, removed with the jail
//! ```
//!
//! (`EXEC` is the file name of `--firecracker`.) The caller (bangerd, as the owner) links the
//! kernel and disks into `root/` itself and configures Firecracker with paths relative to it.
//!
//! Invariants:
//! - The helper keeps no record of what it launched: a process is the caller's VM's VMM when
//!   its start time is the one the caller names, its real uid is the caller's, and its
//!   executable is the jail's copy of Firecracker (same device and inode). A forged or reused
//!   pid fails one of the three; a helper restarted in between checks the same way.
//! - A signal goes through a pidfd opened *before* the identity is checked, so the process
//!   checked is the process signalled even if the pid is reused in between.
//! - A jail is removed only when no process runs its executable; the console descriptor the
//!   caller passes must be a regular file the caller owns, open for writing: the helper never
//!   opens a path of the caller's.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::OpError;
use crate::protocol::JAIL_API_SOCKET;

/// How long the jailer may take to exec Firecracker.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a SIGKILLed VMM may take to be gone.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the jailer makes its cgroups (v2, or the named hierarchy of a v1 host).
/// The jailer's umask: directories 0755 and files 0644 (the jailer chowns the chroot to the
/// owner; the rest stays root's, readable).
const JAILER_UMASK: libc::mode_t = 0o022;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The helper's jail configuration: which jailer, which Firecracker, where the jails go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailConfig {
    jailer: PathBuf,
    firecracker: PathBuf,
    dir: PathBuf,
    exec_name: String,
}

/// A launched, jailed Firecracker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailedVmm {
    pub pid: u32,
    pub start_time_ticks: u64,
    /// The chroot the VMM sees as `/`.
    pub root: PathBuf,
}

impl JailConfig {
    /// Checks the binaries (trusted: see [`trusted_binary`]) and makes the jail directory
    /// (root's, 0755) if it is missing. Every error names the path and what is wrong with it.
    pub fn new(jailer: &Path, firecracker: &Path, dir: &Path) -> Result<JailConfig, String> {
        let jailer = trusted_binary(jailer, "--jailer")?;
        let firecracker = trusted_binary(firecracker, "--firecracker")?;
        let exec_name = firecracker
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.contains("firecracker"))
            .ok_or_else(|| {
                format!(
                    "--firecracker {}: the jailer runs only a file whose name contains \"firecracker\"",
                    firecracker.display()
                )
            })?
            .to_owned();
        if !dir.is_absolute() {
            return Err(format!(
                "--jail-dir {}: give an absolute path",
                dir.display()
            ));
        }
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("--jail-dir: cannot create {}: {e}", parent.display()))?;
            let parent = fs::canonicalize(parent)
                .map_err(|e| format!("--jail-dir: cannot resolve {}: {e}", parent.display()))?;
            trusted_ancestors(&parent, "--jail-dir")?;
        }
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("--jail-dir: cannot create {}: {e}", dir.display())),
        }
        let meta =
            fs::symlink_metadata(dir).map_err(|e| format!("--jail-dir {}: {e}", dir.display()))?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "--jail-dir {} must be a directory owned by root that nobody else may write to \
                 (not a symlink); it is {}",
                dir.display(),
                describe(&meta)
            ));
        }
        // Callers reach their own jail's sockets through it.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("--jail-dir {}: {e}", dir.display()))?;
        Ok(JailConfig {
            jailer,
            firecracker,
            dir: dir.to_path_buf(),
            exec_name,
        })
    }

    pub fn jailer(&self) -> &Path {
        &self.jailer
    }

    pub fn firecracker(&self) -> &Path {
        &self.firecracker
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn jail_id(uid: u32, vm: &str) -> String {
        format!("{uid}-{vm}")
    }

    /// `JAIL_DIR/EXEC/UID-VM`: what the jailer makes, and what removing the jail removes.
    pub fn jail_of(&self, uid: u32, vm: &str) -> PathBuf {
        jail_path(&self.dir, &self.firecracker, uid, vm)
    }

    /// The chroot of caller `uid`'s VM `vm`.
    pub fn root_of(&self, uid: u32, vm: &str) -> PathBuf {
        self.jail_of(uid, vm).join("root")
    }

    fn cgroup_of(&self, uid: u32, vm: &str) -> PathBuf {
        Path::new(CGROUP_ROOT)
            .join(&self.exec_name)
            .join(JailConfig::jail_id(uid, vm))
    }

    /// The jail's copy of Firecracker: (device, inode) of the running VMM's executable.
    fn jailed_binary(&self, uid: u32, vm: &str) -> Option<(u64, u64)> {
        fs::symlink_metadata(self.root_of(uid, vm).join(&self.exec_name))
            .ok()
            .filter(|meta| meta.is_file())
            .map(|meta| (meta.dev(), meta.ino()))
    }

    /// Starts Firecracker for caller `uid`:`gid`'s VM `vm` through the jailer, its stdout and
    /// stderr on `console`, and waits until the process runs the jail's Firecracker.
    pub fn launch(
        &self,
        uid: u32,
        gid: u32,
        vm: &str,
        console: OwnedFd,
    ) -> Result<JailedVmm, OpError> {
        check_console(&console, uid)?;
        // A launch is an ensure: a jail left by a VMM that is gone (a crash, a host reboot)
        // is cleared first, and a VMM still running from it is killed. Such a VMM is this
        // caller's VM's by construction (the caller's jail, its executable, the caller's
        // uid), and one its bangerd launches again is one it lost track of (a crash between
        // the launch and the record); two VMMs must never share a VM's disks.
        if let Some(binary) = self.jailed_binary(uid, vm) {
            for pid in processes_running(binary) {
                if real_uid(pid).ok() != Some(uid) {
                    continue;
                }
                if let Some(ticks) = start_time_ticks_or_gone(pid)? {
                    tracing::warn!(
                        uid,
                        vm,
                        pid,
                        "killing a VMM left running in the jail of a VM launched again"
                    );
                    self.kill_process(pid, ticks)?;
                }
            }
        }
        self.remove(uid, vm)?;
        let root = self.root_of(uid, vm);
        let console = fs::File::from(console);
        let console_err = console.try_clone().map_err(|e| {
            OpError::Failed(format!("cannot duplicate the console descriptor: {e}"))
        })?;
        let mut command = Command::new(&self.jailer);
        command
            .arg("--id")
            .arg(JailConfig::jail_id(uid, vm))
            .arg("--exec-file")
            .arg(&self.firecracker)
            .arg("--uid")
            .arg(uid.to_string())
            .arg("--gid")
            .arg(gid.to_string())
            .arg("--chroot-base-dir")
            .arg(&self.dir)
            .arg("--")
            .arg("--api-sock")
            .arg(JAIL_API_SOCKET)
            .stdin(Stdio::null())
            .stdout(Stdio::from(console))
            .stderr(Stdio::from(console_err));
        // SAFETY: setsid and umask are async-signal-safe; nothing else runs between fork and
        // exec.
        unsafe {
            // A session of its own: the helper's terminal or service stopping does not take
            // the VMs along.
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // The jailer makes the jail's directories and copies Firecracker in with the
                // umask it inherits. The helper's own (0077 under its unit) would leave them
                // root's alone: the owner could not reach the jail's API socket from outside,
                // nor (the fake jailer, which does not chroot) run its copy of Firecracker.
                libc::umask(JAILER_UMASK);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| OpError::Failed(format!("cannot start {}: {e}", self.jailer.display())))?;
        let pid = child.id();
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        let ready = loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let _ = self.remove(uid, vm);
                    break Err(OpError::Failed(format!(
                        "the jailer exited ({status}) before Firecracker ran; the VM's console log has what it said"
                    )));
                }
                Ok(None) => {}
                Err(e) => break Err(OpError::Failed(format!("cannot watch the jailer: {e}"))),
            }
            if let Some(binary) = self.jailed_binary(uid, vm)
                && executable_of(pid) == Some(binary)
            {
                break Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = self.remove(uid, vm);
                break Err(OpError::Failed(format!(
                    "the jailer did not start Firecracker within {} s",
                    LAUNCH_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        ready?;
        let start_time_ticks = match start_time_ticks(pid) {
            Ok(ticks) => ticks,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(OpError::Failed(format!(
                    "Firecracker (pid {pid}) exited at once: {e}"
                )));
            }
        };
        // The VMM is the helper's child until it exits: reaped here, so no zombie stays. A
        // helper restarted meanwhile leaves it to init, as any orphan.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(JailedVmm {
            pid,
            start_time_ticks,
            root,
        })
    }

    /// SIGKILLs caller `uid`'s VM `vm`'s VMM if `pid` is it (see the module invariants),
    /// waits until it is gone, and removes the jail. A process that is gone, or whose pid now
    /// belongs to a process started at another time, is left alone.
    pub fn kill(&self, uid: u32, vm: &str, pid: u32, start_time_ticks: u64) -> Result<(), OpError> {
        // Opened first: whatever the checks below find is about this very process.
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
            Err(e) => return Err(OpError::Failed(format!("cannot open process {pid}: {e}"))),
        };
        if let Some(pidfd) = pidfd
            && start_time_ticks_or_gone(pid)? == Some(start_time_ticks)
        {
            if real_uid(pid).ok() != Some(uid) {
                return Err(OpError::Refused(format!(
                    "process {pid} is not yours; banger-helper signals only the VMMs it launched for you."
                )));
            }
            let binary = self.jailed_binary(uid, vm);
            if binary.is_none() || executable_of(pid) != binary {
                return Err(OpError::Refused(format!(
                    "process {pid} is not the Firecracker banger-helper launched for VM {vm}."
                )));
            }
            kill_and_wait(&pidfd, pid, start_time_ticks)?;
        }
        self.remove(uid, vm)
    }

    /// SIGKILLs `pid` (checked by the caller to be a jail's VMM) if it still is the process
    /// started at `start_time_ticks`, and waits until it is gone.
    fn kill_process(&self, pid: u32, start_time_ticks: u64) -> Result<(), OpError> {
        match pidfd_open(pid) {
            Ok(pidfd) if start_time_ticks_or_gone(pid)? == Some(start_time_ticks) => {
                kill_and_wait(&pidfd, pid, start_time_ticks)
            }
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(OpError::Failed(format!("cannot open process {pid}: {e}"))),
        }
    }

    /// Removes caller `uid`'s jail of VM `vm` and its cgroup, unless a process still runs
    /// the jail's Firecracker (refused, naming it). An absent jail is fine.
    pub fn remove(&self, uid: u32, vm: &str) -> Result<(), OpError> {
        let jail = self.jail_of(uid, vm);
        if let Some(binary) = self.jailed_binary(uid, vm)
            && let Some(pid) = processes_running(binary).into_iter().next()
        {
            return Err(OpError::Refused(format!(
                "VM {vm}'s Firecracker still runs (pid {pid}); kill it first."
            )));
        }
        // remove_dir_all never follows a symlink, so what the caller put in its chroot cannot
        // aim the removal elsewhere; the directories above the chroot are root's.
        match fs::remove_dir_all(&jail) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(OpError::Failed(format!(
                    "cannot remove {}: {e}",
                    jail.display()
                )));
            }
        }
        let cgroup = self.cgroup_of(uid, vm);
        match fs::remove_dir(&cgroup) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(OpError::Failed(format!(
                "cannot remove the cgroup {}: {e}",
                cgroup.display()
            ))),
        }
    }
}

/// Where the jailer puts caller `uid`'s VM `vm`'s jail, for a helper whose jails go under `dir`
/// and which runs `firecracker` (the jailer names a directory after its file name): what a
/// caller can know before the launch, from [`crate::protocol::JailState`].
pub fn jail_path(dir: &Path, firecracker: &Path, uid: u32, vm: &str) -> PathBuf {
    let exec_name = firecracker.file_name().unwrap_or(firecracker.as_os_str());
    dir.join(exec_name).join(JailConfig::jail_id(uid, vm))
}

/// SIGKILLs the process behind `pidfd` and waits until `pid` is gone (or a zombie).
fn kill_and_wait(pidfd: &OwnedFd, pid: u32, start_time_ticks: u64) -> Result<(), OpError> {
    pidfd_kill(pidfd).map_err(|e| OpError::Failed(format!("cannot SIGKILL process {pid}: {e}")))?;
    let deadline = Instant::now() + KILL_TIMEOUT;
    while start_time_ticks_or_gone(pid)? == Some(start_time_ticks) && !is_zombie(pid) {
        if Instant::now() >= deadline {
            return Err(OpError::Failed(format!(
                "process {pid} still runs {} s after SIGKILL",
                KILL_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// A binary root may run for others: an absolute path to an executable regular file owned
/// by root that no one else may write, in directories no one else may write (sticky ones
/// aside). Returned resolved, so what was checked is what runs.
pub fn trusted_binary(path: &Path, flag: &str) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err(format!("{flag} {}: give an absolute path", path.display()));
    }
    let resolved = fs::canonicalize(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let meta = fs::metadata(&resolved).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 || meta.mode() & 0o100 == 0 {
        return Err(format!(
            "{flag} {} must be an executable file owned by root that nobody else may write to; it is {}",
            resolved.display(),
            describe(&meta)
        ));
    }
    if let Some(parent) = resolved.parent() {
        trusted_ancestors(parent, flag)?;
    }
    Ok(resolved)
}

/// Every directory from `/` down to `dir` (resolved) is root's and not writable by others,
/// or sticky (where others cannot rename root's entries).
fn trusted_ancestors(dir: &Path, flag: &str) -> Result<(), String> {
    for ancestor in dir.ancestors() {
        let meta =
            fs::metadata(ancestor).map_err(|e| format!("{flag}: {}: {e}", ancestor.display()))?;
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.uid() != 0 || (meta.mode() & 0o022 != 0 && !sticky) {
            return Err(format!(
                "{flag}: {} is {}; a path root relies on must lie in directories only root may change",
                ancestor.display(),
                describe(&meta)
            ));
        }
    }
    Ok(())
}

fn describe(meta: &fs::Metadata) -> String {
    let kind = if meta.is_symlink() {
        "a symlink"
    } else if meta.is_dir() {
        "a directory"
    } else if meta.is_file() {
        "a file"
    } else {
        "a special file"
    };
    format!(
        "{kind} owned by uid {} with mode {:o}",
        meta.uid(),
        meta.mode() & 0o7777
    )
}

/// The console the caller hands over: a regular file it owns, open for writing.
fn check_console(console: &OwnedFd, uid: u32) -> Result<(), OpError> {
    let file = fs::File::from(
        console
            .try_clone()
            .map_err(|e| OpError::Failed(format!("cannot inspect the console descriptor: {e}")))?,
    );
    let meta = file
        .metadata()
        .map_err(|e| OpError::Failed(format!("cannot inspect the console descriptor: {e}")))?;
    if !meta.is_file() || meta.uid() != uid {
        return Err(OpError::Refused(format!(
            "the console descriptor must be a regular file you own; it is {}",
            describe(&meta)
        )));
    }
    // SAFETY: F_GETFL on a descriptor this function holds open.
    let flags = unsafe { libc::fcntl(console.as_raw_fd(), libc::F_GETFL) };
    let mode = flags & libc::O_ACCMODE;
    if flags < 0 || (mode != libc::O_WRONLY && mode != libc::O_RDWR) {
        return Err(OpError::Refused(
            "the console descriptor must be open for writing".into(),
        ));
    }
    Ok(())
}

/// (device, inode) of process `pid`'s executable.
fn executable_of(pid: u32) -> Option<(u64, u64)> {
    fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

/// The pids whose executable is `binary` (device, inode).
fn processes_running(binary: (u64, u64)) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| executable_of(*pid) == Some(binary) && !is_zombie(*pid))
        .collect()
}

/// Field 22 of `/proc/PID/stat`.
pub fn start_time_ticks(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat_field(&stat, 22)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat has no start time")))
}

fn start_time_ticks_or_gone(pid: u32) -> Result<Option<u64>, OpError> {
    match start_time_ticks(pid) {
        Ok(ticks) => Ok(Some(ticks)),
        // A process in the middle of exiting answers ESRCH rather than vanishing at once (seen
        // with a VMM's short-lived forked child, which runs the jail's executable until its
        // exec).
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(None)
        }
        Err(e) => Err(OpError::Failed(format!("cannot read process {pid}: {e}"))),
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_field(&stat, 3).map(|state| state == "Z"))
        .unwrap_or(false)
}

/// Field `n` (1-based) of a `/proc/PID/stat` line; the command (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(n.checked_sub(3)?)
}

/// The real uid of process `pid`.
fn real_uid(pid: u32) -> io::Result<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .ok_or_else(|| io::Error::other(format!("/proc/{pid}/status has no Uid line")))
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall; on success it returns a new descriptor this function owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_kill(pidfd: &OwnedFd) -> io::Result<()> {
    // SAFETY: a plain syscall on a descriptor this function borrows.
    let done = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if done < 0 {
        let error = io::Error::last_os_error();
        // Exited since it was checked: nothing left to kill.
        if error.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(error);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 22), Some("12345"));
    }

    #[test]
    fn binaries_others_may_change_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("firecracker");
        fs::write(&binary, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        if !nix::unistd::geteuid().is_root() {
            let error = trusted_binary(&binary, "--firecracker").unwrap_err();
            assert!(error.contains("owned by root"), "{error}");
        } else {
            // tempdir's own directory is root's and 0700; /tmp is sticky.
            assert!(trusted_binary(&binary, "--firecracker").is_ok());
            fs::set_permissions(&binary, fs::Permissions::from_mode(0o775)).unwrap();
            let error = trusted_binary(&binary, "--firecracker").unwrap_err();
            assert!(error.contains("nobody else may write"), "{error}");
            fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
            let error = trusted_binary(&binary, "--firecracker").unwrap_err();
            assert!(error.contains("only root may change"), "{error}");
        }
        assert!(
            trusted_binary(Path::new("firecracker"), "--firecracker")
                .unwrap_err()
                .contains("absolute")
        );
    }

    /// A jail directory someone else could redirect is refused before anything runs.
    #[test]
    fn the_jail_directory_must_be_roots_and_no_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("firecracker");
        fs::write(&binary, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        let jails = dir.path().join("jails");
        if !nix::unistd::geteuid().is_root() {
            // Not root: the binary is this user's, which root must never run for others.
            let error = JailConfig::new(&binary, &binary, &jails).unwrap_err();
            assert!(error.contains("owned by root"), "{error}");
            return;
        }
        let config = JailConfig::new(&binary, &binary, &jails).unwrap();
        assert_eq!(
            config.root_of(1000, "ab12"),
            jails.join("firecracker/1000-ab12/root")
        );
        let meta = fs::metadata(&jails).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o755));

        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let error = JailConfig::new(&binary, &binary, &link).unwrap_err();
        assert!(error.contains("not a symlink"), "{error}");

        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(1000), Some(1000)).unwrap();
        let error = JailConfig::new(&binary, &binary, &theirs.join("jails")).unwrap_err();
        assert!(error.contains("only root may change"), "{error}");

        let not_firecracker = dir.path().join("qemu");
        fs::copy(&binary, &not_firecracker).unwrap();
        let error = JailConfig::new(&binary, &not_firecracker, &jails).unwrap_err();
        assert!(error.contains("contains \"firecracker\""), "{error}");
    }
}
