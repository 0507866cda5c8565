//! The one-daemon-per-state-directory lock: an exclusive `flock` on `bangerd.pid`, which
//! holds the pid of the daemon that has it.
//!
//! The file is never deleted (deleting a lock file lets two processes lock two different
//! inodes); its content means something only while someone holds the lock. The kernel drops
//! the lock when the process dies, however it dies, so a crashed daemon never leaves a stale
//! lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::DaemonError;

/// Held for the life of the daemon; dropping it releases the lock.
pub struct PidLock {
    _lock: Flock<File>,
}

impl PidLock {
    /// Takes the lock and writes our pid, or says which pid holds it.
    pub fn acquire(path: &Path, state_dir: &Path) -> Result<PidLock, DaemonError> {
        let lock_error = |source| DaemonError::Lock {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(lock_error)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let mut file: &File = &lock;
                file.set_len(0)
                    .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
                    .and_then(|()| writeln!(file, "{}", std::process::id()))
                    .map_err(lock_error)?;
                Ok(PidLock { _lock: lock })
            }
            Err((file, Errno::EWOULDBLOCK)) => Err(DaemonError::AlreadyRunning {
                state_dir: state_dir.to_path_buf(),
                pid: holder_pid(file),
            }),
            Err((_, errno)) => Err(lock_error(errno.into())),
        }
    }
}

/// The pid written by the lock's holder. It writes it right after locking, so an empty file
/// means "give it a moment": read again briefly before giving up.
fn holder_pid(mut file: File) -> Option<u32> {
    for _ in 0..50 {
        let mut text = String::new();
        if file.seek(SeekFrom::Start(0)).is_ok()
            && file.read_to_string(&mut text).is_ok()
            && let Ok(pid) = text.trim().parse()
        {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}
