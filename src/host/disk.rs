//! Disk files on the host: copies that clone when the filesystem can (`FICLONE`) and keep
//! holes when it cannot (`SEEK_DATA`/`SEEK_HOLE` + `copy_file_range`), and ext4 work disks
//! through e2fsprogs' tools.
//!
//! Everything here is blocking; async callers run it on the blocking pool.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a disk file could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{tool} {} failed ({status}): {stderr}", path.display())]
    Tool {
        tool: String,
        path: PathBuf,
        status: String,
        stderr: String,
    },
}

impl DiskError {
    fn io(what: impl Into<String>, source: io::Error) -> Self {
        DiskError::Io {
            what: what.into(),
            source,
        }
    }
}

/// How [`clone_or_copy`] copied a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMethod {
    /// A copy-on-write clone (`FICLONE`): instant, shares blocks until written.
    Reflink,
    /// Data ranges copied, holes kept as holes.
    Sparse,
}

/// Copies `src` to `dst` (created or truncated, mode 0644): a reflink clone when the
/// filesystem supports it, else a copy of the data ranges that keeps holes, so a mostly empty
/// 4 GiB ext4 image costs its used blocks, not 4 GiB. The result is synced to disk.
pub fn clone_or_copy(src: &Path, dst: &Path) -> Result<CopyMethod, DiskError> {
    let input =
        File::open(src).map_err(|e| DiskError::io(format!("cannot open {}", src.display()), e))?;
    let output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(dst)
        .map_err(|e| DiskError::io(format!("cannot create {}", dst.display()), e))?;
    // SAFETY: FICLONE takes the source descriptor as its argument and touches no memory of
    // ours; both descriptors stay open for the duration of the call.
    let cloned = unsafe { libc::ioctl(output.as_raw_fd(), libc::FICLONE, input.as_raw_fd()) } == 0;
    let method = if cloned {
        CopyMethod::Reflink
    } else {
        sparse_copy(&input, &output).map_err(|e| {
            DiskError::io(
                format!("cannot copy {} to {}", src.display(), dst.display()),
                e,
            )
        })?;
        CopyMethod::Sparse
    };
    output
        .sync_all()
        .map_err(|e| DiskError::io(format!("cannot sync {}", dst.display()), e))?;
    Ok(method)
}

/// Copies `src` to `dst` as [`clone_or_copy`] does when the filesystem cannot clone, even
/// where it could: what `bench-disk` compares a reflink with.
pub fn sparse_copy_file(src: &Path, dst: &Path) -> Result<(), DiskError> {
    let input =
        File::open(src).map_err(|e| DiskError::io(format!("cannot open {}", src.display()), e))?;
    let output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(dst)
        .map_err(|e| DiskError::io(format!("cannot create {}", dst.display()), e))?;
    sparse_copy(&input, &output)
        .and_then(|()| output.sync_all())
        .map_err(|e| {
            DiskError::io(
                format!("cannot copy {} to {}", src.display(), dst.display()),
                e,
            )
        })
}

/// Copies the data ranges of `input` into the (empty) `output`, leaving holes where the input
/// has them. Falls back to a plain copy where the filesystem cannot say where data is.
fn sparse_copy(input: &File, output: &File) -> io::Result<()> {
    use nix::errno::Errno;
    use nix::unistd::{Whence, lseek};

    let len = input.metadata()?.len();
    // Setting the length first makes every range not written below a hole.
    output.set_len(len)?;
    let end = i64::try_from(len).map_err(|_| io::Error::other("file too large"))?;
    let mut position: i64 = 0;
    while position < end {
        let data = match lseek(input, position, Whence::SeekData) {
            Ok(offset) => offset,
            // No data after `position`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            // The filesystem cannot report holes: treat everything as data.
            Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => position,
            Err(errno) => return Err(errno.into()),
        };
        let hole = match lseek(input, data, Whence::SeekHole) {
            Ok(offset) => offset.min(end),
            Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => end,
            Err(errno) => return Err(errno.into()),
        };
        copy_range(input, output, data, hole)?;
        position = hole.max(data + 1);
    }
    Ok(())
}

/// Copies bytes `from..to` of `input` to the same offsets of `output`.
fn copy_range(input: &File, output: &File, from: i64, to: i64) -> io::Result<()> {
    use nix::errno::Errno;
    use std::os::unix::fs::FileExt;

    let mut offset_in = from;
    let mut offset_out = from;
    while offset_in < to {
        let want = usize::try_from(to - offset_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match nix::fcntl::copy_file_range(
            input,
            Some(&mut offset_in),
            output,
            Some(&mut offset_out),
            want,
        ) {
            // The input shrank under us: what is left is gone; stop rather than spin.
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // copy_file_range refuses some pairs of filesystems: copy through a buffer.
            Err(Errno::EXDEV | Errno::ENOSYS | Errno::EINVAL | Errno::EOPNOTSUPP) => break,
            Err(errno) => return Err(errno.into()),
        }
    }
    let mut buffer = vec![0u8; 1 << 20];
    while offset_in < to {
        let want = usize::try_from(to - offset_in)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        let offset = u64::try_from(offset_in).map_err(|_| io::Error::other("negative offset"))?;
        let read = input.read_at(&mut buffer[..want], offset)?;
        if read == 0 {
            return Ok(());
        }
        output.write_all_at(&buffer[..read], offset)?;
        offset_in += read as i64;
    }
    Ok(())
}

/// A fresh ext4 filesystem labelled `work` in a sparse file of `bytes` (made again from
/// scratch when it exists: an earlier attempt's disk was never handed to a guest).
pub fn make_work_disk(path: &Path, bytes: u64) -> Result<(), DiskError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| DiskError::io(format!("cannot create {}", path.display()), e))?;
    file.set_len(bytes)
        .map_err(|e| DiskError::io(format!("cannot size {}", path.display()), e))?;
    drop(file);
    run_tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "work",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
        ],
        path,
    )
}

/// Runs an e2fsprogs tool on `path`; its stderr is the error when it fails.
pub fn run_tool(tool: &str, args: &[&str], path: &Path) -> Result<(), DiskError> {
    // e2fsprogs lives in /sbin, which an unprivileged user's PATH often lacks.
    let binary = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(tool))
        .find(|candidate| candidate.exists())
        .unwrap_or_else(|| PathBuf::from(tool));
    let output = Command::new(&binary)
        .args(args)
        .arg(path)
        .output()
        .map_err(|e| {
            DiskError::io(
                format!("cannot run {tool} (install e2fsprogs: `apt-get install e2fsprogs`)"),
                e,
            )
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(DiskError::Tool {
            tool: tool.to_owned(),
            path: path.to_path_buf(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
