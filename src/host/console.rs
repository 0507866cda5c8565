//! The serial console file of a VM: written by its VMM (the guest's output, appended), read by
//! `vm logs`, and kept bounded by bangerd.
//!
//! The guest decides how much it prints, so the file must not grow without bound. The VMM
//! holds the file open for appending (O_APPEND) and must survive bangerd's restarts, so bangerd
//! cannot sit in the middle of the stream; instead it drops the oldest output *in place*:
//! [`cap`] punches a hole (`FALLOC_FL_PUNCH_HOLE`) over everything but the newest `max_bytes`.
//! The file's length — and so every offset `vm logs` has handed out — never changes; only the
//! disk blocks of old output are freed, and reading there gives zeros, which readers skip
//! ([`data_from`]: `SEEK_DATA`). Where the filesystem cannot punch holes, the tail is copied to
//! the front and the file truncated: offsets then restart, as after a replaced file, and output
//! written during that copy may be lost.
//!
//! Invariants: after [`cap`], at most `max_bytes` plus one filesystem block of output is kept;
//! the newest `max_bytes` are never touched.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Holes are punched in whole blocks of this many bytes (a multiple of every common block size;
/// a partial block at the edge is left as data).
const HOLE_ALIGN: u64 = 64 * 1024;

/// What [`cap`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capped {
    /// The file keeps at most the cap already (or does not exist).
    Within,
    /// Output before `kept_from` was dropped; offsets are unchanged.
    Punched { kept_from: u64 },
    /// The filesystem cannot punch holes: the tail was moved to the front.
    Rewritten { kept: u64 },
}

/// Drops all but the newest `max_bytes` of the console at `path`. Cheap when there is nothing
/// to do (one `stat`, one `lseek`). Blocking: async callers use `spawn_blocking`.
pub fn cap(path: &Path, max_bytes: u64) -> io::Result<Capped> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Capped::Within),
        Err(error) => return Err(error),
    };
    let len = file.metadata()?.len();
    let kept_from = data_from(&file, 0)?.unwrap_or(len);
    if len.saturating_sub(kept_from) <= max_bytes + HOLE_ALIGN {
        return Ok(Capped::Within);
    }
    let drop_to = (len - max_bytes) / HOLE_ALIGN * HOLE_ALIGN;
    match punch_hole(&file, 0, drop_to) {
        Ok(()) => Ok(Capped::Punched { kept_from: drop_to }),
        Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            rewrite_tail(file, len, max_bytes)
        }
        Err(error) => Err(error),
    }
}

/// The first offset at or after `from` that holds data, `None` when there is none (the rest
/// is a hole, or `from` is at the end). A filesystem that cannot tell says `from`.
pub fn data_from(file: &File, from: u64) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(from).map_err(|_| io::Error::other("offset too large"))?;
    // SAFETY: lseek on a descriptor we own; it moves only that descriptor's offset, which the
    // callers set again before reading.
    let found = unsafe { libc::lseek(file.as_raw_fd(), offset, libc::SEEK_DATA) };
    if found >= 0 {
        return Ok(Some(found as u64));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some(from)),
        _ => Err(error),
    }
}

fn punch_hole(file: &File, from: u64, to: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (
        libc::off_t::try_from(from),
        libc::off_t::try_from(to - from),
    ) else {
        return Err(io::Error::other("range too large"));
    };
    // SAFETY: fallocate on a descriptor we own; PUNCH_HOLE with KEEP_SIZE frees the blocks of
    // the range and changes neither the length nor any byte outside it.
    let done = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The fallback: the newest `max_bytes` moved to the front, the file cut after them.
fn rewrite_tail(mut file: File, len: u64, max_bytes: u64) -> io::Result<Capped> {
    let mut tail = Vec::with_capacity(usize::try_from(max_bytes).unwrap_or(0));
    file.seek(SeekFrom::Start(len - max_bytes))?;
    (&file).take(max_bytes).read_to_end(&mut tail)?;
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&tail)?;
    Ok(Capped::Rewritten {
        kept: tail.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A writer appending as a VMM does (O_APPEND) while the console is capped: its output is
    /// never lost, offsets never move, and the disk holds about the cap.
    #[test]
    fn capping_keeps_the_newest_output_while_a_writer_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let line = |n: u64| format!("line {n:08}\n");
        let max = 256 * 1024;
        let mut written = 0u64;
        for n in 0..100_000u64 {
            let text = line(n);
            writer.write_all(text.as_bytes()).unwrap();
            written += text.len() as u64;
            if n % 5_000 == 0 {
                cap(&path, max).unwrap();
            }
        }
        let capped = cap(&path, max).unwrap();
        assert!(matches!(capped, Capped::Punched { .. }), "{capped:?}");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), written, "offsets never move");
        assert!(
            meta.blocks() * 512 <= max + 2 * HOLE_ALIGN,
            "{} bytes on disk",
            meta.blocks() * 512
        );
        // What is kept reads back exactly; the newest line is last.
        let file = File::open(&path).unwrap();
        let from = data_from(&file, 0).unwrap().unwrap();
        assert!(written - from <= max + HOLE_ALIGN);
        let mut kept = Vec::new();
        let mut reader = File::open(&path).unwrap();
        reader.seek(SeekFrom::Start(from)).unwrap();
        reader.read_to_end(&mut kept).unwrap();
        let text = String::from_utf8(kept).unwrap();
        assert!(text.ends_with(&line(99_999)));
        let complete: Vec<&str> = text.lines().skip(1).collect();
        let first: u64 = complete[0][5..].parse().unwrap();
        for (i, l) in complete.iter().enumerate() {
            assert_eq!(
                *l,
                line(first + i as u64).trim_end(),
                "output lost or reordered"
            );
        }
    }

    #[test]
    fn a_console_within_its_cap_or_missing_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        assert_eq!(cap(&path, 1024).unwrap(), Capped::Within);
        std::fs::write(&path, vec![b'x'; 1000]).unwrap();
        assert_eq!(cap(&path, 1024).unwrap(), Capped::Within);
        assert_eq!(std::fs::read(&path).unwrap().len(), 1000);
    }
}
