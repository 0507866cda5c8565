//! The event log in a redb file.
//!
//! Tables:
//! - `events`: seq → frame (see [`crate::frame`]);
//! - `snapshots`: seq → format (u32 le) ‖ crc32 (u32 le) ‖ projection bytes; only the newest is
//!   kept, replaced in the transaction that commits the events after it (or on its own), never
//!   before the events it covers are stored;
//! - `meta`: `schema` → the highest envelope schema version that ever wrote to this file.
//!
//! redb takes an exclusive lock on the file, so only one process can have a log open; a second
//! gets [`LogError::Locked`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{
    Database, Durability, ReadOnlyDatabase, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use crate::event::Envelope;
use crate::event::SCHEMA_VERSION;
use crate::ids::Seq;
use crate::log::{CheckedRun, EventLog, LogError, SnapshotRecord};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_SCHEMA: &str = "schema";

/// How a [`RedbLog`] commits.
#[derive(Clone, Copy, Debug)]
pub struct RedbOptions {
    /// redb's quick-repair: every commit also saves the allocator state (and uses a two-phase
    /// commit), so that opening the file after a crash does not walk the whole database. It
    /// costs a second fsync per commit. Off by default: the walk takes about 0.2 s per million
    /// events (see `bench-log`), while the second fsync would double every append's latency.
    pub quick_repair: bool,
    /// redb page cache size in bytes.
    pub cache_bytes: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            quick_repair: false,
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

pub struct RedbLog {
    store: Store,
    path: PathBuf,
    options: RedbOptions,
}

/// An existing log is first opened read-only and checked; it is opened for writing only when
/// nothing is wrong with it, so that a damaged file is left exactly as it was found (redb in
/// write mode rewrites its own header and may shrink the file, even when nothing is written).
enum Store {
    Writable(Database),
    ReadOnly {
        db: ReadOnlyDatabase,
        reason: String,
    },
}

impl RedbLog {
    /// Opens the log at `path`, creating it when absent.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LogError> {
        Self::open_with(path, RedbOptions::default())
    }

    /// Opens the log at `path`, creating it when absent.
    ///
    /// - An empty existing file is refused: it is a truncated log, not a new one, and taking it
    ///   for new would silently forget every VM, image and handle.
    /// - A file whose stored sequence has a gap, or whose events after the last snapshot do not
    ///   all decode, opens read-only and is never modified ([`EventLog::read_only_reason`]).
    /// - A file that was not closed cleanly (its writer was killed) is repaired by redb first;
    ///   repair restores redb's own bookkeeping and never touches committed events.
    pub fn open_with(path: impl AsRef<Path>, options: RedbOptions) -> Result<Self, LogError> {
        let path = path.as_ref().to_path_buf();
        match std::fs::metadata(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let db = Database::builder()
                    .set_cache_size(options.cache_bytes)
                    .create(&path)
                    .map_err(|error| cannot_open(&path, error))?;
                let log = RedbLog {
                    store: Store::Writable(db),
                    path,
                    options,
                };
                log.stamp_schema()?;
                return Ok(log);
            }
            Err(error) => {
                return Err(LogError::Storage(format!(
                    "cannot open {}: {error}",
                    path.display()
                )));
            }
            Ok(meta) if meta.len() == 0 => {
                return Err(LogError::EmptyFile {
                    path: path.display().to_string(),
                });
            }
            Ok(_) => {}
        }
        match redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .open_read_only(&path)
        {
            Ok(db) => {
                let mut log = RedbLog {
                    store: Store::ReadOnly {
                        db,
                        reason: String::new(),
                    },
                    path,
                    options,
                };
                log.check_schema()?;
                if let Some(damage) = log.damage_after_snapshot()? {
                    if let Store::ReadOnly { reason, .. } = &mut log.store {
                        *reason = damage.to_string();
                    }
                    return Ok(log);
                }
                // Sound: reopen for writing (the read-only handle's lock goes with it).
                let RedbLog {
                    store,
                    path,
                    options,
                } = log;
                drop(store);
                Self::open_writable(path, options)
            }
            // Not closed cleanly: only a writable open may repair it.
            Err(redb::DatabaseError::RepairAborted) => Self::open_writable(path, options),
            Err(other) => Err(cannot_open(&path, other)),
        }
    }

    /// Opens an existing log for reading only, without writing a byte to the file (not even
    /// redb's header, which a writable open rewrites): for tools that must leave a damaged
    /// file exactly as it was found. `Ok(None)` when redb would first have to repair the file
    /// (its writer was killed), which only a writable open may do: see
    /// [`RedbLog::open_repairing`], on a copy. Every commit fails; the file is not checked
    /// beyond its schema stamp.
    pub fn open_untouched(path: impl AsRef<Path>) -> Result<Option<Self>, LogError> {
        let path = path.as_ref().to_path_buf();
        let options = RedbOptions::default();
        match std::fs::metadata(&path) {
            Ok(meta) if meta.len() == 0 => {
                return Err(LogError::EmptyFile {
                    path: path.display().to_string(),
                });
            }
            Ok(_) => {}
            Err(error) => {
                return Err(LogError::Storage(format!(
                    "cannot open {}: {error}",
                    path.display()
                )));
            }
        }
        match redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .open_read_only(&path)
        {
            Ok(db) => {
                let log = RedbLog {
                    store: Store::ReadOnly {
                        db,
                        reason: "opened for reading only".into(),
                    },
                    path,
                    options,
                };
                log.check_schema()?;
                Ok(Some(log))
            }
            Err(redb::DatabaseError::RepairAborted) => Ok(None),
            Err(other) => Err(cannot_open(&path, other)),
        }
    }

    /// Opens a log whose writer was killed, letting redb repair it even when that means
    /// falling back to the commit before a damaged latest one (which [`RedbLog::open`]
    /// refuses to do). This writes the file: use it on a copy. Returns whether redb fell
    /// back, in which case the latest commit's events are gone from what it reads.
    pub fn open_repairing(path: impl AsRef<Path>) -> Result<(Self, bool), LogError> {
        let path = path.as_ref().to_path_buf();
        let options = RedbOptions::default();
        let fell_back = Arc::new(AtomicBool::new(false));
        let flag = fell_back.clone();
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .set_repair_callback(move |session| {
                if latest_commit_damaged(session) {
                    flag.store(true, Ordering::SeqCst);
                }
            })
            .open(&path)
            .map_err(|error| cannot_open(&path, error))?;
        let log = RedbLog {
            store: Store::Writable(db),
            path,
            options,
        };
        log.check_schema()?;
        Ok((log, fell_back.load(Ordering::SeqCst)))
    }

    fn open_writable(path: PathBuf, options: RedbOptions) -> Result<Self, LogError> {
        // redb repairs a file that was not closed cleanly as it opens it. When the latest
        // commit fails its page checksums, that repair falls back to the commit before it,
        // silently dropping the latest commit's events: right for a write torn by a power
        // loss, wrong for damage to events that were acknowledged, and the two cannot be told
        // apart. So the repair is stopped there, and opening fails with the way on:
        // `banger events repair` (which works on a copy and records the loss).
        let damaged_commit = Arc::new(AtomicBool::new(false));
        let flag = damaged_commit.clone();
        let opened = Database::builder()
            .set_cache_size(options.cache_bytes)
            .set_repair_callback(move |session| {
                if latest_commit_damaged(session) {
                    flag.store(true, Ordering::SeqCst);
                    session.abort();
                }
            })
            .open(&path);
        let db = match opened {
            Ok(db) => db,
            Err(redb::DatabaseError::RepairAborted) if damaged_commit.load(Ordering::SeqCst) => {
                return Err(LogError::Storage(format!(
                    "the latest commit in {} fails redb's page checksums (the file was damaged, or a power loss tore its last write), and redb can only read it by dropping that commit's events; the file was not repaired — run `banger events repair`, which keeps the damaged file and says what was lost",
                    path.display()
                )));
            }
            Err(error) => return Err(cannot_open(&path, error)),
        };
        let log = RedbLog {
            store: Store::Writable(db),
            path,
            options,
        };
        if log.check_schema()?.is_none() {
            log.stamp_schema()?;
        }
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, LogError> {
        match &self.store {
            Store::Writable(db) => db.begin_read().map_err(storage),
            Store::ReadOnly { db, .. } => db.begin_read().map_err(storage),
        }
    }

    /// The schema version stamped in the file (`None` when unstamped); refuses a newer one.
    fn check_schema(&self) -> Result<Option<u16>, LogError> {
        let txn = self.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(storage(error)),
        };
        let stored = meta
            .get(META_SCHEMA)
            .map_err(storage)?
            .map(|value| match value.value() {
                [low, high] => u16::from_le_bytes([*low, *high]),
                _ => u16::MAX,
            });
        match stored {
            Some(found) if found > SCHEMA_VERSION => Err(LogError::NewerLog {
                found,
                supported: SCHEMA_VERSION,
            }),
            other => Ok(other),
        }
    }

    /// Creates the tables and stamps the schema, so that readers never meet a missing table.
    fn stamp_schema(&self) -> Result<(), LogError> {
        let Store::Writable(db) = &self.store else {
            return Err(self.read_only_error());
        };
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(META_SCHEMA, SCHEMA_VERSION.to_le_bytes().as_slice())
                .map_err(storage)?;
            txn.open_table(EVENTS).map_err(storage)?;
            txn.open_table(SNAPSHOTS).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// What the journal will read on open, checked without writing: no gap in the sequence,
    /// and every event after the latest snapshot decodes.
    fn damage_after_snapshot(&self) -> Result<Option<LogError>, LogError> {
        let last = self.last_seq()?;
        if self.len()? != last.0 {
            return Ok(Some(LogError::Corrupt {
                seq: last,
                detail: "the stored sequence has a gap".into(),
            }));
        }
        let mut next = self
            .latest_snapshot()?
            .map(|snapshot| snapshot.seq.next())
            .unwrap_or(Seq(1));
        while next <= last {
            match self.read_prefix(next, last, 8192) {
                (_, Some(error)) => return Ok(Some(error)),
                (batch, None) if batch.is_empty() => break,
                (batch, None) => next = Seq(next.0 + batch.len() as u64),
            }
        }
        Ok(None)
    }

    fn read_only_error(&self) -> LogError {
        LogError::ReadOnly {
            reason: self.read_only_reason().unwrap_or_default(),
        }
    }
}

/// True when redb's repair reports that the latest commit failed its checksums: it reports
/// progress 0.3 only on its way to falling back to the commit before.
fn latest_commit_damaged(session: &redb::RepairSession) -> bool {
    session.progress() > 0.2 && session.progress() < 0.5
}

fn cannot_open(path: &Path, error: redb::DatabaseError) -> LogError {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => LogError::Locked,
        other => LogError::Storage(format!("cannot open {}: {other}", path.display())),
    }
}

fn storage(error: impl std::fmt::Display) -> LogError {
    LogError::Storage(error.to_string())
}

impl EventLog for RedbLog {
    fn last_seq(&self) -> Result<Seq, LogError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(EVENTS).map_err(storage)?;
        let last = table
            .last()
            .map_err(storage)?
            .map(|(key, _)| key.value())
            .unwrap_or(0);
        Ok(Seq(last))
    }

    fn len(&self) -> Result<u64, LogError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(EVENTS).map_err(storage)?;
        table.len().map_err(storage)
    }

    fn read_frames(
        &self,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Vec<u8>)>, LogError> {
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        let txn = self.begin_read()?;
        let table = txn.open_table(EVENTS).map_err(storage)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        for entry in table.range(from.0..=to.0).map_err(storage)?.take(limit) {
            let (key, value) = entry.map_err(storage)?;
            out.push((Seq(key.value()), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Decodes straight from redb's pages instead of copying each frame out first: this is the
    /// hot loop of a rebuild.
    fn read_prefix(&self, from: Seq, to: Seq, limit: usize) -> (Vec<Envelope>, Option<LogError>) {
        let mut run = CheckedRun::new(from, limit.min(8192));
        if from > to || limit == 0 {
            return run.finish();
        }
        let range = self
            .begin_read()
            .and_then(|txn| txn.open_table(EVENTS).map_err(storage))
            .and_then(|table| table.range(from.0..=to.0).map_err(storage));
        match range {
            Ok(range) => {
                for entry in range.take(limit) {
                    match entry {
                        Ok((key, value)) => {
                            if !run.push(Seq(key.value()), value.value()) {
                                break;
                            }
                        }
                        Err(error) => {
                            run.fail(storage(error));
                            break;
                        }
                    }
                }
            }
            Err(error) => run.fail(error),
        }
        run.finish()
    }

    fn commit(
        &self,
        frames: &[(Seq, Vec<u8>)],
        snapshot: Option<&SnapshotRecord>,
    ) -> Result<(), LogError> {
        let Store::Writable(db) = &self.store else {
            return Err(self.read_only_error());
        };
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        txn.set_quick_repair(self.options.quick_repair);
        {
            let mut events = txn.open_table(EVENTS).map_err(storage)?;
            for (seq, frame) in frames {
                events.insert(seq.0, frame.as_slice()).map_err(storage)?;
            }
        }
        if let Some(snapshot) = snapshot {
            let mut snapshots = txn.open_table(SNAPSHOTS).map_err(storage)?;
            snapshots.retain(|_, _| false).map_err(storage)?;
            snapshots
                .insert(snapshot.seq.0, encode_snapshot(snapshot).as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    fn read_only_reason(&self) -> Option<String> {
        match &self.store {
            Store::Writable(_) => None,
            Store::ReadOnly { reason, .. } => Some(reason.clone()),
        }
    }

    fn latest_snapshot(&self) -> Result<Option<SnapshotRecord>, LogError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
        let Some((key, value)) = table.last().map_err(storage)? else {
            return Ok(None);
        };
        // A damaged snapshot is only a lost shortcut: the events are still there to replay.
        Ok(decode_snapshot(Seq(key.value()), value.value()))
    }
}

fn encode_snapshot(snapshot: &SnapshotRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + snapshot.bytes.len());
    out.extend_from_slice(&snapshot.format.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&snapshot.bytes).to_le_bytes());
    out.extend_from_slice(&snapshot.bytes);
    out
}

fn decode_snapshot(seq: Seq, stored: &[u8]) -> Option<SnapshotRecord> {
    if stored.len() < 8 {
        return None;
    }
    let format = u32::from_le_bytes(stored[0..4].try_into().ok()?);
    let crc = u32::from_le_bytes(stored[4..8].try_into().ok()?);
    let bytes = &stored[8..];
    if crc32fast::hash(bytes) != crc {
        tracing::warn!(%seq, "projection snapshot fails its checksum; replaying the log instead");
        return None;
    }
    Some(SnapshotRecord {
        seq,
        format,
        bytes: bytes.to_vec(),
    })
}
