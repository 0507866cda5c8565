//! The write-ahead file in front of a redb log (`events.redb.wal` beside `events.redb`): the
//! place where a commit becomes durable with one sequential write and one fdatasync.
//!
//! ```text
//!  block 0            block 1          block 1+n        ...                      end
//!  ┌─────────────────┬────────────────┬────────────────┬───────────┬─────────────┐
//!  │ file header     │ record (batch) │ record (batch) │ stale     │ zeros       │
//!  │ magic, log id   │ seqs a..b      │ seqs b+1..c    │ records   │ (allocated) │
//!  └─────────────────┴────────────────┴────────────────┴───────────┴─────────────┘
//!   written once       each record starts on a 4 KiB block; a cycle starts at block 1
//!
//!  record: "BGWR" │ payload length u32 │ log id u64 │ first seq u64 │ count u32 │ crc32 u32
//!          then `count` × (u32 length ‖ stored frame)
//! ```
//!
//! The file is preallocated with real zeros (not `fallocate`, whose unwritten extents would
//! make the first write to each block a metadata change), so the fdatasync of a record commits
//! data only: no file size, no extent. A record is written with one `pwrite` at the start of
//! the next free block and then fdatasynced; that is the commit's durability point.
//!
//! A *cycle* runs from one checkpoint (a durable redb commit of everything so far, see
//! `EventLog::checkpoint` for `RedbLog`) to the next: after a checkpoint the next record goes
//! to block 1 again, over the records of the cycle before. No byte is written here at a
//! checkpoint.
//!
//! Reading a file back ([`scan`]) follows the chain from block 1: each record must be intact
//! (its crc covers header and payload, and it names this log's id) and continue the sequence
//! of the one before it. Where the chain stops:
//! - records of an older cycle hold lower sequence numbers than the cycle they lie behind
//!   (every seq of an older cycle was checkpointed before the newer one began), so they are
//!   never taken for new events;
//! - a record torn by a crash (the last one written, never acknowledged) fails its crc and is
//!   ignored: nothing after it was ever written;
//! - but an intact record further on that continues the sequence beyond the break proves the
//!   break is not a torn tail: the record there was damaged after it was acknowledged. That is
//!   corruption, reported like any other ([`WalDamage`] becomes [`LogError::Corrupt`] at its
//!   first seq), and the file is never modified.
//!
//! The file header binds the file to one log (a random id stored in the log's `meta` table):
//! a write-ahead file of another log is refused, never replayed into this one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ids::Seq;
use crate::log::LogError;

/// Records start on multiples of this; block 0 holds the file header.
pub const BLOCK: u64 = 4096;
const FILE_MAGIC: [u8; 8] = *b"BGWAL\0\0\0";
const FILE_VERSION: u32 = 1;
const FILE_HEADER_LEN: usize = 24;
const RECORD_MAGIC: [u8; 4] = *b"BGWR";
const RECORD_HEADER_LEN: usize = 32;

/// The write-ahead file of the log at `log_path`: the same name with `.wal` appended.
pub fn path_for(log_path: &Path) -> PathBuf {
    let mut name = log_path.as_os_str().to_owned();
    name.push(".wal");
    PathBuf::from(name)
}

/// What reading a write-ahead file found beyond what the log itself stores.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Frames with seqs `stored_last + 1 ..`, consecutive, from intact records of this log.
    pub frames: Vec<(Seq, Vec<u8>)>,
    /// A break in the chain that is not a torn tail: the events from `damage.seq` on were
    /// acknowledged but cannot be read.
    pub damage: Option<WalDamage>,
}

impl Scan {
    /// The highest seq the file says it holds (damaged ones included), if beyond the log.
    pub fn last_seq(&self) -> Option<Seq> {
        match &self.damage {
            Some(damage) => Some(damage.last_seq),
            None => self.frames.last().map(|(seq, _)| *seq),
        }
    }
}

/// Acknowledged events of the write-ahead file that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalDamage {
    /// The first seq that cannot be read.
    pub seq: Seq,
    /// The highest seq an intact record after the damage holds.
    pub last_seq: Seq,
    pub detail: String,
}

impl WalDamage {
    pub fn error(&self) -> LogError {
        LogError::Corrupt {
            seq: self.seq,
            detail: self.detail.clone(),
        }
    }
}

/// Reads the write-ahead file at `path` without writing it: the frames it holds after
/// `stored_last` (the log's last seq), in order. A missing file holds nothing. A file that
/// belongs to another log (`log_id` is not the one in its header; `None`: the log has no id
/// yet, so no file can be its) is refused with [`LogError::ForeignWriteAhead`].
pub fn scan(
    path: &Path,
    log_path: &Path,
    log_id: Option<u64>,
    stored_last: Seq,
) -> Result<Scan, LogError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Scan::default()),
        Err(error) => {
            return Err(LogError::Storage(format!(
                "cannot read the write-ahead file {}: {error}",
                path.display()
            )));
        }
    };
    let Some(found_id) = read_file_header(&bytes) else {
        return Ok(Scan {
            frames: Vec::new(),
            damage: Some(WalDamage {
                seq: stored_last.next(),
                last_seq: stored_last.next(),
                detail: format!(
                    "the header of the write-ahead file {} is damaged, so the events it may hold after seq {stored_last} cannot be checked",
                    path.display()
                ),
            }),
        });
    };
    if log_id != Some(found_id) {
        return Err(LogError::ForeignWriteAhead {
            wal: path.display().to_string(),
            log: log_path.display().to_string(),
            why: match log_id {
                Some(id) => format!("it was made for log {found_id:016x}, this log is {id:016x}"),
                None => format!(
                    "it was made for log {found_id:016x}, and this log has no id (no banger that writes a write-ahead file wrote it)"
                ),
            },
        });
    }
    Ok(scan_records(&bytes, found_id, stored_last))
}

fn scan_records(bytes: &[u8], log_id: u64, stored_last: Seq) -> Scan {
    let mut frames: Vec<(Seq, Vec<u8>)> = Vec::new();
    // The seq the chain must continue with; unknown until the first record.
    let mut expected: Option<u64> = None;
    let mut offset = BLOCK as usize;
    let break_reason = loop {
        match parse_record(bytes, offset, log_id) {
            Parsed::Record(record) => {
                if expected.is_some_and(|expected| record.first_seq != expected) {
                    break format!(
                        "the record at offset {offset} starts at seq {} instead",
                        record.first_seq
                    );
                }
                for (index, frame) in record.frames.iter().enumerate() {
                    let seq = record.first_seq + index as u64;
                    if seq > stored_last.0 {
                        frames.push((Seq(seq), frame.to_vec()));
                    }
                }
                expected = Some(record.end());
                offset += record.blocks * BLOCK as usize;
            }
            Parsed::Bad(why) => break format!("the record at offset {offset} {why}"),
            Parsed::End => break "the file ends".into(),
        }
    };
    // Anything intact at or after the break that goes on past it was acknowledged after the
    // record that is missing there: the break is damage, not the torn end of the last write.
    let needed = expected.unwrap_or(0).max(stored_last.0 + 1);
    let beyond = later_records(bytes, offset, log_id)
        .filter(|record| record.end() > needed)
        .map(|record| (record.end() - 1, record.offset))
        .max();
    // The chain must begin right after what the log stores.
    if let Some((first, _)) = frames.first()
        && first.0 != stored_last.0 + 1
    {
        let last = frames.last().map_or(*first, |(seq, _)| *seq);
        return Scan {
            frames: Vec::new(),
            damage: Some(WalDamage {
                seq: stored_last.next(),
                last_seq: beyond.map_or(last, |(beyond, _)| Seq(beyond).max(last)),
                detail: format!(
                    "missing: the log ends at seq {stored_last}, and its write-ahead file goes on from seq {first}"
                ),
            }),
        };
    }
    if let Some((last, at)) = beyond {
        let first_missing = frames
            .last()
            .map_or(stored_last.next(), |(seq, _)| seq.next());
        return Scan {
            frames,
            damage: Some(WalDamage {
                seq: first_missing,
                last_seq: Seq(last),
                detail: format!(
                    "missing from the write-ahead file: its chain of records stops there ({break_reason}), yet the intact record at offset {at} holds events up to seq {last}"
                ),
            }),
        };
    }
    Scan {
        frames,
        damage: None,
    }
}

struct Record<'a> {
    offset: usize,
    first_seq: u64,
    count: u64,
    /// Blocks the record spans.
    blocks: usize,
    frames: Vec<&'a [u8]>,
}

impl Record<'_> {
    /// The seq after its last.
    fn end(&self) -> u64 {
        self.first_seq.saturating_add(self.count)
    }
}

enum Parsed<'a> {
    Record(Record<'a>),
    /// Not an intact record of this log (a torn write, a stale block, damage), and why.
    Bad(String),
    /// The end of the file.
    End,
}

fn parse_record(bytes: &[u8], offset: usize, log_id: u64) -> Parsed<'_> {
    let Some(header) = bytes.get(offset..offset + RECORD_HEADER_LEN) else {
        return Parsed::End;
    };
    if header[0..4] != RECORD_MAGIC {
        return Parsed::Bad("has no record magic".into());
    }
    let payload_len = u32_at(header, 4) as usize;
    let id = u64_at(header, 8);
    let first_seq = u64_at(header, 16);
    let count = u32_at(header, 24) as u64;
    let crc = u32_at(header, 28);
    let Some(payload) =
        bytes.get(offset + RECORD_HEADER_LEN..offset + RECORD_HEADER_LEN + payload_len)
    else {
        return Parsed::Bad(format!(
            "says {payload_len} bytes, past the end of the file"
        ));
    };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[0..28]);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return Parsed::Bad("fails its checksum".into());
    }
    if id != log_id {
        return Parsed::Bad(format!("belongs to log {id:016x}"));
    }
    if first_seq == 0 || count == 0 {
        return Parsed::Bad("holds no events".into());
    }
    let mut frames = Vec::with_capacity(count as usize);
    let mut at = 0;
    while at < payload.len() {
        let Some(len) = payload.get(at..at + 4).map(|b| u32_at(b, 0) as usize) else {
            return Parsed::Bad("has a cut frame length".into());
        };
        let Some(frame) = payload.get(at + 4..at + 4 + len) else {
            return Parsed::Bad("has a frame past its end".into());
        };
        frames.push(frame);
        at += 4 + len;
    }
    if frames.len() as u64 != count {
        return Parsed::Bad(format!("holds {} frames, not {count}", frames.len()));
    }
    let len = RECORD_HEADER_LEN + payload_len;
    Parsed::Record(Record {
        offset,
        first_seq,
        count,
        blocks: len.div_ceil(BLOCK as usize),
        frames,
    })
}

/// Every intact record of this log starting on a block at or after `from`.
fn later_records(bytes: &[u8], from: usize, log_id: u64) -> impl Iterator<Item = Record<'_>> {
    (from..bytes.len())
        .step_by(BLOCK as usize)
        .filter_map(move |offset| match parse_record(bytes, offset, log_id) {
            Parsed::Record(record) => Some(record),
            _ => None,
        })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn file_header(log_id: u64) -> [u8; FILE_HEADER_LEN] {
    let mut header = [0u8; FILE_HEADER_LEN];
    header[0..8].copy_from_slice(&FILE_MAGIC);
    header[8..12].copy_from_slice(&FILE_VERSION.to_le_bytes());
    header[12..20].copy_from_slice(&log_id.to_le_bytes());
    let crc = crc32fast::hash(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The log id in an intact file header.
fn read_file_header(bytes: &[u8]) -> Option<u64> {
    let header = bytes.get(0..FILE_HEADER_LEN)?;
    if header[0..8] != FILE_MAGIC
        || u32_at(header, 8) != FILE_VERSION
        || crc32fast::hash(&header[0..20]) != u32_at(header, 20)
    {
        return None;
    }
    Some(u64_at(header, 12))
}

/// The writing end of a log's write-ahead file. Only the log's one writer uses it.
pub(crate) struct WriteAhead {
    file: File,
    log_id: u64,
    /// File size: records never go past it, so a write never changes the size.
    capacity: u64,
    /// Where the next record goes.
    next: u64,
    /// Records written since the last checkpoint.
    records: u64,
    /// Reused for every record.
    buffer: Vec<u8>,
}

/// What [`WriteAhead::append`] did.
pub(crate) enum Appended {
    /// The record is durable.
    Durable,
    /// Too big for the room left (or for the file): nothing was written; the caller commits
    /// the batch durably to the log itself, which is a checkpoint.
    NoRoom,
}

impl WriteAhead {
    /// Opens the write-ahead file at `path` for writing from its first record block, creating
    /// it (with the permissions of the log file at `log_path`) when absent, and growing it to
    /// `capacity` bytes of real zeros. Whatever it held must have been replayed into the log
    /// before (see [`scan`]): the next record overwrites it.
    pub(crate) fn open(
        path: &Path,
        log_path: &Path,
        log_id: u64,
        capacity: u64,
    ) -> Result<WriteAhead, LogError> {
        let capacity = capacity.max(2 * BLOCK).next_multiple_of(BLOCK);
        let cannot = |what: &str, error: io::Error| {
            LogError::Storage(format!(
                "cannot {what} the write-ahead file {}: {error}",
                path.display()
            ))
        };
        if !path.exists() {
            create(path, log_path, log_id, capacity).map_err(|e| cannot("create", e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| cannot("open", e))?;
        let size = file
            .metadata()
            .map_err(|e| cannot("read the size of", e))?
            .len();
        if size < capacity {
            fill_zeros(&file, size, capacity).map_err(|e| cannot("grow", e))?;
            file.sync_all().map_err(|e| cannot("sync", e))?;
        }
        Ok(WriteAhead {
            file,
            log_id,
            capacity: size.max(capacity) / BLOCK * BLOCK,
            next: BLOCK,
            records: 0,
            buffer: Vec::with_capacity(BLOCK as usize),
        })
    }

    /// Writes `frames` (consecutive seqs) as one record and fdatasyncs it.
    pub(crate) fn append(&mut self, frames: &[(Seq, Vec<u8>)]) -> Result<Appended, io::Error> {
        let payload_len: usize = frames.iter().map(|(_, frame)| 4 + frame.len()).sum();
        let len = (RECORD_HEADER_LEN + payload_len) as u64;
        // A batch that would take a large share of the file is cheaper to commit to the log
        // directly (its own write dwarfs a commit's fixed cost), and keeps the file for the
        // many small ones.
        if len > self.room() || len > (self.capacity - BLOCK) / 4 || frames.is_empty() {
            return Ok(Appended::NoRoom);
        }
        let buffer = &mut self.buffer;
        buffer.clear();
        buffer.extend_from_slice(&RECORD_MAGIC);
        buffer.extend_from_slice(&(payload_len as u32).to_le_bytes());
        buffer.extend_from_slice(&self.log_id.to_le_bytes());
        buffer.extend_from_slice(&frames[0].0.0.to_le_bytes());
        buffer.extend_from_slice(&(frames.len() as u32).to_le_bytes());
        buffer.extend_from_slice(&[0; 4]);
        for (_, frame) in frames {
            buffer.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            buffer.extend_from_slice(frame);
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&buffer[0..28]);
        hasher.update(&buffer[RECORD_HEADER_LEN..]);
        let crc = hasher.finalize();
        buffer[28..32].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all_at(buffer, self.next)?;
        self.file.sync_data()?;
        self.next += len.next_multiple_of(BLOCK);
        self.records += 1;
        Ok(Appended::Durable)
    }

    fn room(&self) -> u64 {
        self.capacity - self.next
    }

    /// Records written since the last checkpoint.
    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    /// True once half the file is used: time to checkpoint, before a batch finds no room.
    pub(crate) fn half_full(&self) -> bool {
        self.next - BLOCK >= (self.capacity - BLOCK) / 2
    }

    /// After a checkpoint: the next record starts a new cycle at block 1.
    pub(crate) fn restart(&mut self) {
        self.next = BLOCK;
        self.records = 0;
    }
}

/// Makes a new write-ahead file under a temporary name and renames it into place, so that
/// `path` never names a file with a torn header.
fn create(path: &Path, log_path: &Path, log_id: u64, capacity: u64) -> io::Result<()> {
    let mut staging = path.as_os_str().to_owned();
    staging.push(".creating");
    let staging = PathBuf::from(staging);
    let _ = std::fs::remove_file(&staging);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&staging)?;
    let made = (|| {
        // The same permissions as the log: the file holds the same events.
        if let Ok(meta) = std::fs::metadata(log_path) {
            file.set_permissions(std::fs::Permissions::from_mode(
                meta.permissions().mode() & 0o7777,
            ))?;
        }
        let mut block = vec![0u8; BLOCK as usize];
        block[..FILE_HEADER_LEN].copy_from_slice(&file_header(log_id));
        file.write_all_at(&block, 0)?;
        fill_zeros(&file, BLOCK, capacity)?;
        file.sync_all()?;
        std::fs::rename(&staging, path)?;
        sync_parent(path)
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    made
}

fn fill_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK as usize];
    let mut at = from;
    while at < to {
        let len = (to - at).min(CHUNK);
        file.write_all_at(&zeros[..len as usize], at)?;
        at += len;
    }
    Ok(())
}

/// fsyncs the directory holding `path`, so that a new name in it survives a power cut.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(first: u64, count: u64) -> Vec<(Seq, Vec<u8>)> {
        (first..first + count)
            .map(|seq| (Seq(seq), format!("frame {seq}").into_bytes()))
            .collect()
    }

    fn written(dir: &Path, batches: &[(u64, u64)]) -> (PathBuf, Vec<u8>) {
        let log = dir.join("events.redb");
        std::fs::write(&log, b"log").unwrap();
        let path = path_for(&log);
        let mut wal = WriteAhead::open(&path, &log, 7, 64 * BLOCK).unwrap();
        for (first, count) in batches {
            assert!(matches!(
                wal.append(&frames(*first, *count)).unwrap(),
                Appended::Durable
            ));
        }
        let bytes = std::fs::read(&path).unwrap();
        (log, bytes)
    }

    #[test]
    fn records_read_back_after_the_stored_end() {
        let dir = tempfile::tempdir().unwrap();
        let (_, bytes) = written(dir.path(), &[(1, 2), (3, 1), (4, 3)]);
        assert_eq!(bytes.len() as u64, 64 * BLOCK, "preallocated");
        let scan = scan_records(&bytes, 7, Seq(2));
        assert_eq!(scan.damage, None);
        assert_eq!(scan.frames, frames(3, 4));
        assert_eq!(scan_records(&bytes, 7, Seq(6)), Scan::default());
        assert_eq!(
            scan_records(&bytes, 8, Seq(0)),
            Scan::default(),
            "another log's records"
        );
    }

    #[test]
    fn a_new_cycle_hides_the_stale_records_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.redb");
        std::fs::write(&log, b"log").unwrap();
        let path = path_for(&log);
        let mut wal = WriteAhead::open(&path, &log, 7, 64 * BLOCK).unwrap();
        for seq in 1..=5 {
            wal.append(&frames(seq, 1)).unwrap();
        }
        wal.restart();
        wal.append(&frames(6, 1)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // Checkpointed at 5: only 6 is new; the stale 2..=5 behind it are not replayed.
        assert_eq!(scan_records(&bytes, 7, Seq(5)).frames, frames(6, 1));
    }
}
