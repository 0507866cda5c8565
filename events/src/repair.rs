//! A way forward from a damaged log: keep every intact event up to the first bad one in a new
//! log, say what was lost in a [`LogRepaired`] event, and keep the damaged file as it was.
//!
//! ```text
//!  damaged events.redb ──open without writing──▶ checked read from seq 1 ──▶ first bad seq K
//!        │   (redb must repair it first: a copy           │  (crc, kind, seq, gap: the same
//!        │    is opened and repaired instead)             │   checks the journal makes)
//!        │                                                ▼
//!        │                          events.redb.repairing: frames 1..K-1 copied byte for byte,
//!        │                          then LogRepaired { first_lost_seq: K, … } at seq K
//!        ▼                                                │
//!  hard links to the backup names ◀────────────────────────┘
//!  (events.redb.wal too, when there is one)
//!        │
//!        ▼
//!  rename events.redb.repairing over events.redb (atomic), remove events.redb.wal (the new
//!  log's events are all in it), fsync the directory
//! ```
//!
//! A log's events include those only its write-ahead file holds (`crate::wal`: a writer killed
//! before a checkpoint leaves them there): every way of reading the damaged log here reads
//! them too, and the write-ahead file is kept with the damaged log as `BACKUP.wal`.
//!
//! Invariants:
//! - The damaged file is never written: it is opened read-only, or, when its writer was
//!   killed and redb must repair its bookkeeping first (which writes), copied and the copy
//!   opened; then it only gains a second name. The backup is the original inode, byte for
//!   byte. Its write-ahead file is only ever read, and kept under the backup's name too.
//! - redb's repair of such a copy may have to fall back to the commit before a damaged latest
//!   one; the events of that commit are then counted as lost (from the seq after the last one
//!   read, their number unknown), never passed over.
//! - At every moment the log's path names a whole log, the damaged one or the repaired one:
//!   the backup name is linked before the repaired log is renamed over the path, so a crash
//!   anywhere leaves either the old file (with a backup link, which a second run replaces by
//!   another timestamped name) or the new one. A crash after the rename and before the old
//!   write-ahead file is removed leaves that file beside the new log, whose id it does not
//!   name: opening refuses it ([`LogError::ForeignWriteAhead`]) rather than replay it, and its
//!   events are in the backup's.
//! - The repaired log's events are the damaged log's intact prefix, frame for frame, so their
//!   event ids, timestamps and payload layouts are unchanged; it is gapless, and the one event
//!   after them, at the first lost seq, is the `LogRepaired` that names the loss.
//! - A log with nothing wrong is left alone. A log a newer banger wrote (unknown event kind,
//!   newer schema) is not damaged and is refused: upgrading reads it whole.
//!
//! This module knows nothing about bangerd: refusing while a daemon owns the log is the
//! caller's job (the CLI holds bangerd's pid lock throughout).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::event::{Envelope, Event, LogRepaired, SCHEMA_VERSION};
use crate::frame;
use crate::ids::{EventId, IdGenerator, Seq};
use crate::log::{EventLog, LogError, decode_checked};
use crate::redb_log::RedbLog;
use crate::wal;

/// Frames read (and committed to the new log) at a time.
const BATCH: usize = 4096;

/// What a checked read of a whole log found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Diagnosis {
    /// Every stored event reads back intact, from seq 1 to the last, with no gap.
    Intact { events: u64 },
    /// Events `1..first_lost_seq` read back intact; the one at `first_lost_seq` does not.
    Damaged(Damage),
}

/// Where a log stops being readable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The first sequence number that does not read back intact (missing, or a bad frame).
    pub first_lost_seq: Seq,
    /// The highest sequence number the file stores, when it could be read.
    pub last_stored_seq: Option<Seq>,
    /// The reader's error at `first_lost_seq`.
    pub reason: String,
}

impl Damage {
    /// How many intact events come before the damage.
    pub fn kept(&self) -> u64 {
        self.first_lost_seq.0.saturating_sub(1)
    }

    /// How many stored events are lost, when the file said how many it stored.
    pub fn lost(&self) -> Option<u64> {
        self.last_stored_seq
            .map(|last| (last.0 + 1).saturating_sub(self.first_lost_seq.0).max(1))
    }
}

/// What [`repair`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Nothing was wrong; nothing was changed.
    Intact {
        events: u64,
    },
    Repaired(Box<Repaired>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Repaired {
    pub damage: Damage,
    /// Where the damaged file now is (unchanged).
    pub backup_path: PathBuf,
    /// Where the damaged log's write-ahead file now is (unchanged), if it had one.
    pub backup_write_ahead_path: Option<PathBuf>,
    /// The `LogRepaired` event, as stored at `damage.first_lost_seq`.
    pub event: Envelope,
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("there is no event log at {}; nothing to repair", path.display())]
    Missing { path: PathBuf },
    #[error(
        "redb cannot open {} at all ({source}), so no event can be read from it; it was not changed. Keep it for inspection; to start over, move it away with its write-ahead file (`.wal`) beside it (bangerd then begins a new, empty log)",
        path.display()
    )]
    Unreadable {
        path: PathBuf,
        #[source]
        source: LogError,
    },
    #[error("{source}; this is not damage, so it was not repaired (nothing was changed)")]
    Newer {
        #[source]
        source: LogError,
    },
    #[error("{source}")]
    ForeignWriteAhead {
        #[source]
        source: LogError,
    },
    #[error("the backup name {} is taken; nothing was changed", path.display())]
    BackupExists { path: PathBuf },
    #[error("cannot {what} {}: {source}; the damaged log was not changed", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the repaired log {}: {source}; the damaged log was not changed", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: LogError,
    },
}

/// Knobs of a repair.
#[derive(Clone, Copy, Debug)]
pub struct RepairOptions {
    /// `at_unix_ms` of the `LogRepaired` event.
    pub now_unix_ms: u64,
    /// Seed of the `LogRepaired` event's id (None: random). Tests pin it.
    pub id_seed: Option<u64>,
}

/// Reads the log at `path` whole, with the journal's checks, without changing the file, and
/// says where it stops being readable.
pub fn diagnose(path: &Path) -> Result<Diagnosis, RepairError> {
    Ok(Opened::open(path)?.scan(|_| Ok(()))?.0)
}

/// Replaces the damaged log at `path` with its intact prefix plus a `LogRepaired` event, and
/// keeps the damaged file at `backup_path` (which must not exist). A log with nothing wrong
/// is left alone ([`Outcome::Intact`]). See the module documentation for the guarantees.
pub fn repair(
    path: &Path,
    backup_path: &Path,
    options: RepairOptions,
) -> Result<Outcome, RepairError> {
    let opened = Opened::open(path)?;
    // Checked once before anything is written, so that an intact or newer log costs nothing.
    let damage = match opened.scan(|_| Ok(()))?.0 {
        Diagnosis::Intact { events } => return Ok(Outcome::Intact { events }),
        Diagnosis::Damaged(damage) => damage,
    };
    let write_ahead = wal::path_for(path);
    let has_write_ahead = fs::symlink_metadata(&write_ahead).is_ok();
    let backup_write_ahead = wal::path_for(backup_path);
    for taken in [backup_path, &backup_write_ahead] {
        if fs::symlink_metadata(taken).is_ok() {
            return Err(RepairError::BackupExists {
                path: taken.to_path_buf(),
            });
        }
    }
    let staging = sibling(path, ".repairing");
    let staged = Staged::new(staging.clone());
    // The new log's write-ahead file: empty once the new log is closed (a checkpoint), so it
    // is removed, and the new log gets a fresh one when next opened.
    let staged_write_ahead = Staged::new(wal::path_for(&staging));
    let _ = fs::remove_file(&staging);
    let _ = fs::remove_file(wal::path_for(&staging));
    let new_log = RedbLog::open(&staging).map_err(|source| RepairError::Write {
        path: staging.clone(),
        source,
    })?;
    let write_error = |source| RepairError::Write {
        path: staging.clone(),
        source,
    };
    // Copy the intact prefix in batches: the same frames the check accepted, byte for byte.
    let mut pending: Vec<(Seq, Vec<u8>)> = Vec::with_capacity(BATCH);
    let (again, copied) = opened.scan(|frame| {
        pending.push(frame);
        if pending.len() >= BATCH {
            new_log.commit(&pending, None).map_err(write_error)?;
            pending.clear();
        }
        Ok(())
    })?;
    new_log.commit(&pending, None).map_err(write_error)?;
    if again != Diagnosis::Damaged(damage.clone()) || copied != damage.kept() {
        // The file changed between two reads: someone else is using it.
        return Err(RepairError::Write {
            path: staging.clone(),
            source: LogError::Storage(format!(
                "the damaged log read differently the second time ({again:?} after {damage:?}); is another process writing it?"
            )),
        });
    }
    let ids = match options.id_seed {
        Some(seed) => IdGenerator::seeded(seed),
        None => IdGenerator::new(),
    };
    let seq = damage.first_lost_seq;
    let event = Envelope {
        seq,
        event_id: EventId(((ids.next_u64() as u128) << 64) | seq.0 as u128),
        op_id: None,
        cause: None,
        at_unix_ms: options.now_unix_ms,
        schema_version: SCHEMA_VERSION,
        event: Event::LogRepaired(LogRepaired {
            first_lost_seq: seq,
            last_stored_seq: damage.last_stored_seq,
            reason: damage.reason.clone(),
            backup_path: backup_path.display().to_string(),
        }),
    };
    new_log
        .commit(&[(seq, frame::encode(&event))], None)
        .map_err(write_error)?;
    // The new log must read back whole before it replaces anything.
    match scan(&new_log, |_| Ok(()))? {
        (Diagnosis::Intact { events }, _) if events == seq.0 => {}
        (other, _) => {
            return Err(RepairError::Write {
                path: staging.clone(),
                source: LogError::Storage(format!(
                    "the repaired log does not read back as written: {other:?}"
                )),
            });
        }
    }
    // Closing the new log checkpoints it: redb holds every event by itself.
    drop(new_log);
    drop(staged_write_ahead);
    drop(opened);
    sync_file(&staging)?;

    // Give the damaged files their second names, then put the repaired log in their place.
    let link = |from: &Path, to: &Path, what: &'static str| {
        fs::hard_link(from, to).map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => RepairError::BackupExists {
                path: to.to_path_buf(),
            },
            _ => RepairError::Io {
                what,
                path: to.to_path_buf(),
                source,
            },
        })
    };
    link(
        path,
        backup_path,
        "keep the damaged log under a second name at",
    )?;
    if has_write_ahead
        && let Err(error) = link(
            &write_ahead,
            &backup_write_ahead,
            "keep the damaged log's write-ahead file under a second name at",
        )
    {
        let _ = fs::remove_file(backup_path);
        return Err(error);
    }
    if let Err(source) = fs::rename(&staging, path) {
        // Back to how it was: the damaged log under its own names only.
        let _ = fs::remove_file(backup_path);
        if has_write_ahead {
            let _ = fs::remove_file(&backup_write_ahead);
        }
        return Err(RepairError::Io {
            what: "put the repaired log in place of",
            path: path.to_path_buf(),
            source,
        });
    }
    staged.keep();
    // The old write-ahead file belongs to the damaged log (kept as the backup's).
    if has_write_ahead {
        fs::remove_file(&write_ahead).map_err(|source| RepairError::Io {
            what: "remove the damaged log's write-ahead file (its backup is kept) at",
            path: write_ahead.clone(),
            source,
        })?;
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(Outcome::Repaired(Box::new(Repaired {
        damage,
        backup_path: backup_path.to_path_buf(),
        backup_write_ahead_path: has_write_ahead.then_some(backup_write_ahead),
        event,
    })))
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Reads every stored frame from seq 1 in order, with the checks the journal makes, handing
/// each intact one to `sink` until the first that is not. A read error over a batch is
/// narrowed down one frame at a time, so the frames before it still count. Returns the
/// diagnosis and how many frames were handed over.
fn scan(
    log: &dyn EventLog,
    mut sink: impl FnMut((Seq, Vec<u8>)) -> Result<(), RepairError>,
) -> Result<(Diagnosis, u64), RepairError> {
    let last_stored = log.last_seq().ok();
    let mut next = Seq(1);
    let mut handed = 0u64;
    let damage = |first_lost_seq: Seq, error: &LogError| {
        Diagnosis::Damaged(Damage {
            first_lost_seq,
            last_stored_seq: last_stored.filter(|last| last.0 > 0),
            reason: reason(first_lost_seq, error),
        })
    };
    loop {
        let frames = match log.read_frames(next, Seq(u64::MAX), BATCH) {
            Ok(frames) => frames,
            Err(_) => match log.read_frames(next, next, 1) {
                Ok(frames) => frames,
                Err(error) => return Ok((damage(next, &error), handed)),
            },
        };
        if frames.is_empty() {
            // The end of what is stored. A last seq beyond it means a hole at the end.
            return Ok(match last_stored {
                Some(last) if last >= next => (
                    damage(
                        next,
                        &LogError::Corrupt {
                            seq: next,
                            detail: "missing from the sequence".into(),
                        },
                    ),
                    handed,
                ),
                _ => (Diagnosis::Intact { events: handed }, handed),
            });
        }
        for (key, bytes) in frames {
            if key != next {
                let error = LogError::Corrupt {
                    seq: next,
                    detail: format!("missing (next stored is {key})"),
                };
                return Ok((damage(next, &error), handed));
            }
            match decode_checked(key, &bytes) {
                Ok(_) => {}
                Err(error @ (LogError::UnknownKind { .. } | LogError::NewerSchema { .. })) => {
                    return Err(RepairError::Newer { source: error });
                }
                Err(error) => return Ok((damage(next, &error), handed)),
            }
            sink((key, bytes))?;
            handed += 1;
            next = next.next();
        }
    }
}

/// What is wrong at `seq`, in a few words (the error's own text goes on to say what to do,
/// which a record of the repair does not need).
fn reason(seq: Seq, error: &LogError) -> String {
    match error {
        LogError::Corrupt { seq, detail } => format!("seq {seq} is damaged: {detail}"),
        other => format!("reading seq {seq} failed: {other}"),
    }
}

/// The damaged log, opened so that it is never written: read-only when redb allows; else a
/// private copy that redb repairs (removed when this is dropped); else, when redb cannot
/// open it at all (a file cut short, a damaged header), the frames found in its bytes.
enum Opened {
    Redb {
        // Declared first, so that it closes before its scratch copy is removed.
        log: Box<RedbLog>,
        /// redb's repair of the copy fell back to the commit before a damaged latest one.
        fell_back: bool,
        /// The copies of the log and of its write-ahead file.
        _scratch: Option<(Staged, Staged)>,
    },
    Raw(RawScan),
}

impl Opened {
    fn open(path: &Path) -> Result<Opened, RepairError> {
        if fs::symlink_metadata(path).is_err() {
            return Err(RepairError::Missing {
                path: path.to_path_buf(),
            });
        }
        let redb_error = match Self::open_redb(path) {
            Ok(opened) => return Ok(opened),
            Err(source @ LogError::NewerLog { .. }) => return Err(RepairError::Newer { source }),
            Err(source @ LogError::ForeignWriteAhead { .. }) => {
                return Err(RepairError::ForeignWriteAhead { source });
            }
            Err(error) => error,
        };
        let read = |path: &Path| {
            fs::read(path).map_err(|source| RepairError::Io {
                what: "read",
                path: path.to_path_buf(),
                source,
            })
        };
        let bytes = read(path)?;
        // Frames in the write-ahead file are found the same way (its records hold them
        // verbatim); what it holds of older cycles are copies of frames stored in the log.
        let write_ahead = wal::path_for(path);
        let write_ahead_bytes = if fs::symlink_metadata(&write_ahead).is_ok() {
            read(&write_ahead)?
        } else {
            Vec::new()
        };
        match RawScan::new(&[&bytes, &write_ahead_bytes], &redb_error)? {
            Some(raw) => Ok(Opened::Raw(raw)),
            None => Err(RepairError::Unreadable {
                path: path.to_path_buf(),
                source: redb_error,
            }),
        }
    }

    fn open_redb(path: &Path) -> Result<Opened, LogError> {
        if let Some(log) = RedbLog::open_untouched(path)? {
            return Ok(Opened::Redb {
                log: Box::new(log),
                fell_back: false,
                _scratch: None,
            });
        }
        // Its writer was killed, so redb must repair its bookkeeping before anything can be
        // read, which writes: do that on a copy, with a copy of its write-ahead file beside
        // it (read in place, never replayed into the copy).
        let copy = sibling(path, ".repair-copy");
        let scratch = Staged::new(copy.clone());
        let scratch_write_ahead = Staged::new(wal::path_for(&copy));
        let copy_to = |from: &Path, to: &Path| {
            fs::copy(from, to).map_err(|error| {
                LogError::Storage(format!(
                    "cannot copy {} to {}: {error}",
                    from.display(),
                    to.display()
                ))
            })
        };
        let _ = fs::remove_file(wal::path_for(&copy));
        copy_to(path, &copy)?;
        let write_ahead = wal::path_for(path);
        if fs::symlink_metadata(&write_ahead).is_ok() {
            copy_to(&write_ahead, &wal::path_for(&copy))?;
        }
        let (log, fell_back) = RedbLog::open_repairing(&copy)?;
        Ok(Opened::Redb {
            log: Box::new(log),
            fell_back,
            _scratch: Some((scratch, scratch_write_ahead)),
        })
    }

    /// [`scan`] of what was opened. When redb's repair of a copy dropped the latest commit,
    /// the events after the last one read are lost even if those read are intact.
    fn scan(
        &self,
        mut sink: impl FnMut((Seq, Vec<u8>)) -> Result<(), RepairError>,
    ) -> Result<(Diagnosis, u64), RepairError> {
        let (log, fell_back) = match self {
            Opened::Redb { log, fell_back, .. } => (log.as_ref(), *fell_back),
            Opened::Raw(raw) => {
                for frame in &raw.prefix {
                    sink(frame.clone())?;
                }
                return Ok((
                    Diagnosis::Damaged(raw.damage.clone()),
                    raw.prefix.len() as u64,
                ));
            }
        };
        let (diagnosis, handed) = scan(log, sink)?;
        Ok(match diagnosis {
            Diagnosis::Intact { events } if fell_back => (
                Diagnosis::Damaged(Damage {
                    first_lost_seq: Seq(events + 1),
                    last_stored_seq: None,
                    reason: format!(
                        "the latest commit fails redb's page checksums, so redb can only read the commit before it, which ends at seq {events}: the events of the latest commit (from seq {}) are lost, and how many there were is not known",
                        events + 1
                    ),
                }),
                handed,
            ),
            other => (other, handed),
        })
    }
}

/// The frames of a file redb cannot open, found by their magic and checked like any stored
/// frame (crc, kind, a body that decodes, the seq it says), in the file and in its write-ahead
/// file. A copy of a frame in redb's free space or in an older cycle of the write-ahead file
/// is the same event (frames are never rewritten), so copies agree; two different intact
/// frames that say the same seq cannot be told apart (a record torn by a power cut was never
/// acknowledged, and its seqs were given to other events after it), and the prefix stops
/// before them.
/// What the scan cannot know is which commit each frame belonged to: the kept prefix may end
/// inside a batch that was written together.
struct RawScan {
    prefix: Vec<(Seq, Vec<u8>)>,
    damage: Damage,
}

impl RawScan {
    /// `None` when not one frame is found.
    fn new(files: &[&[u8]], redb_error: &LogError) -> Result<Option<RawScan>, RepairError> {
        use std::collections::BTreeMap;
        // seq → the frame, or `None` when two different frames say that seq.
        let mut found: BTreeMap<u64, Option<&[u8]>> = BTreeMap::new();
        for bytes in files {
            Self::find_frames(bytes, &mut found)?;
        }
        Self::from_found(found, redb_error)
    }

    fn find_frames<'a>(
        bytes: &'a [u8],
        found: &mut std::collections::BTreeMap<u64, Option<&'a [u8]>>,
    ) -> Result<(), RepairError> {
        use std::collections::btree_map::Entry;
        let mut at = 0;
        while let Some(offset) = find(&bytes[at..], &frame::MAGIC) {
            let start = at + offset;
            at = start + 1;
            let Some(header) = bytes.get(start..start + frame::HEADER_LEN) else {
                break;
            };
            let body_len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
            let Some(frame) = bytes.get(start..start + frame::HEADER_LEN + body_len as usize)
            else {
                continue;
            };
            let envelope = match frame::decode(frame) {
                Ok(envelope) => envelope,
                Err(frame::FrameError::Damaged(_)) => continue,
                Err(error) => {
                    let seq = Seq(0);
                    return Err(RepairError::Newer {
                        source: decode_checked(seq, frame)
                            .err()
                            .unwrap_or_else(|| LogError::Storage(error.to_string())),
                    });
                }
            };
            match found.entry(envelope.seq.0) {
                Entry::Vacant(slot) => {
                    slot.insert(Some(frame));
                }
                Entry::Occupied(mut slot) => {
                    if slot.get().is_some_and(|seen| seen != frame) {
                        slot.insert(None);
                    }
                }
            }
            at = start + frame.len();
        }
        Ok(())
    }

    fn from_found(
        found: std::collections::BTreeMap<u64, Option<&[u8]>>,
        redb_error: &LogError,
    ) -> Result<Option<RawScan>, RepairError> {
        let Some(last) = found.keys().next_back().copied() else {
            return Ok(None);
        };
        let mut prefix = Vec::new();
        let mut next = 1u64;
        let why = loop {
            match found.get(&next) {
                Some(Some(frame)) => {
                    prefix.push((Seq(next), frame.to_vec()));
                    next += 1;
                }
                Some(None) => break format!("two different intact frames say seq {next}"),
                None => break format!("no intact frame of seq {next} was found"),
            }
        };
        Ok(Some(RawScan {
            damage: Damage {
                first_lost_seq: Seq(next),
                last_stored_seq: (last >= next).then_some(Seq(last)),
                reason: format!(
                    "redb cannot open the file ({redb_error}), so its intact frames were found by scanning its bytes: {why}"
                ),
            },
            prefix,
        }))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A file this module made; removed on drop unless kept.
struct Staged {
    path: Option<PathBuf>,
}

impl Staged {
    fn new(path: PathBuf) -> Staged {
        Staged { path: Some(path) }
    }

    fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

fn sync_file(path: &Path) -> Result<(), RepairError> {
    fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|source| RepairError::Io {
            what: "sync",
            path: path.to_path_buf(),
            source,
        })
}

fn sync_dir(dir: &Path) -> Result<(), RepairError> {
    fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(|source| RepairError::Io {
            what: "sync the directory",
            path: dir.to_path_buf(),
            source,
        })
}
