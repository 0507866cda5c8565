//! The event log in a redb file.
//!
//! Tables:
//! - `events`: seq → frame (see [`crate::frame`]);
//! - `snapshots`: seq → format (u32 le) ‖ crc32 (u32 le) ‖ projection bytes; only the newest is
//!   kept, replaced in the transaction that commits the events after it (or on its own), never
//!   before the events it covers are stored;
//! - `meta`: `schema` → the highest envelope schema version that ever wrote to this file;
//!   `log_id` → a random u64 naming this log, which its write-ahead file repeats.
//!
//! In front of the redb file sits its write-ahead file ([`crate::wal`], `events.redb.wal`). A
//! commit writes its frames there as one record and fdatasyncs it (the durability point), and
//! keeps them in memory, in the *tail*: readers of this handle find them there at once. Now
//! and then a *checkpoint* ([`EventLog::checkpoint`]) stores the tail in redb with one durable
//! commit, and the write-ahead file starts over. If the process dies in between, redb holds
//! everything up to the last checkpoint, and opening the log copies the write-ahead file's
//! newer records into redb (durably) before anything else reads it. A log opened without
//! writing reads those records in place. Either way every opener sees the same events.
//!
//! redb takes an exclusive lock on the file, so only one process can have a log open; a second
//! gets [`LogError::Locked`]. The write-ahead file is only touched under that lock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use redb::{
    Database, Durability, ReadOnlyDatabase, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use crate::event::Envelope;
use crate::event::SCHEMA_VERSION;
use crate::ids::{IdGenerator, Seq};
use crate::log::{CheckedRun, CheckpointState, EventLog, LogError, SnapshotRecord};
use crate::wal::{self, Appended, WriteAhead};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_SCHEMA: &str = "schema";
const META_LOG_ID: &str = "log_id";

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
    /// Commit through the write-ahead file (one sequential write and fdatasync; redb gets the
    /// events at the next checkpoint) rather than with a durable redb commit each.
    /// Off, every commit is a durable redb commit, as before the write-ahead file existed
    /// (`bench-log` measures both); a write-ahead file found on open is replayed either way.
    pub write_ahead: bool,
    /// Size of the write-ahead file, allocated up front. A checkpoint is due once half of it
    /// is used; a batch bigger than a quarter of it is committed to redb directly.
    pub write_ahead_bytes: u64,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            quick_repair: false,
            cache_bytes: 64 * 1024 * 1024,
            write_ahead: true,
            write_ahead_bytes: 4 * 1024 * 1024,
        }
    }
}

pub struct RedbLog {
    store: Store,
    path: PathBuf,
    options: RedbOptions,
    /// Where commits become durable (a writable log with `write_ahead`).
    write_ahead: Option<Mutex<WriteAhead>>,
    /// Events past redb's last seq that only the write-ahead file holds, read from memory as
    /// if redb stored them. In a writable log with a write-ahead file: every commit since the
    /// last checkpoint (the *tail*), which the checkpoint moves into redb. In a log opened
    /// without writing: what the file held, which such a log cannot move into redb.
    ///
    /// Readers hold its read lock while they begin their redb transaction, and a checkpoint
    /// empties it only after its redb commit: so a reader finds every event in one or the
    /// other.
    overlay: RwLock<Overlay>,
    /// Events this open copied from the write-ahead file into redb.
    replayed: u64,
}

/// Events past redb's last seq, held in memory (see [`RedbLog::overlay`]).
#[derive(Default)]
struct Overlay {
    /// The seq after redb's last: where the overlay's frames begin.
    from: Seq,
    scan: wal::Scan,
    /// The snapshot committed with the tail, stored in redb at the next checkpoint.
    snapshot: Option<SnapshotRecord>,
}

impl Overlay {
    /// Appends a committed batch (consecutive seqs following the last).
    fn push(&mut self, frames: &[(Seq, Vec<u8>)], snapshot: Option<&SnapshotRecord>) {
        if self.scan.frames.is_empty()
            && let Some((first, _)) = frames.first()
        {
            self.from = *first;
        }
        self.scan.frames.extend_from_slice(frames);
        if let Some(snapshot) = snapshot {
            self.snapshot = Some(snapshot.clone());
        }
    }

    /// After a checkpoint: redb holds it all.
    fn clear(&mut self) {
        self.scan.frames.clear();
        self.snapshot = None;
    }

    /// The end of a read `..=to` that redb itself serves: the rest comes from here.
    fn redb_end(&self, to: Seq) -> Seq {
        if self.is_empty() {
            to
        } else {
            to.min(Seq(self.from.0 - 1))
        }
    }

    fn is_empty(&self) -> bool {
        self.scan.last_seq().is_none()
    }

    fn last_seq(&self) -> Option<Seq> {
        self.scan.last_seq()
    }

    /// Events it counts as stored, damaged ones included (as redb counts a damaged frame).
    fn len(&self) -> u64 {
        self.last_seq()
            .map_or(0, |last| (last.0 + 1).saturating_sub(self.from.0))
    }

    /// A copy of the frames in `from..=to` it holds (at most `limit`), and the error of damaged
    /// events in that range: what a read takes from here, while it holds the lock under which
    /// it also began its redb read.
    fn copy(&self, from: Seq, to: Seq, limit: usize) -> (Vec<(Seq, Vec<u8>)>, Option<LogError>) {
        let mut tail = Vec::new();
        if to < self.from || self.is_empty() {
            return (tail, None);
        }
        let damage = self
            .read(from, to, limit, |seq, frame| {
                tail.push((seq, frame.to_vec()));
                true
            })
            .err();
        (tail, damage)
    }

    /// Feeds the frames in `from..=to` to `push` (until it says stop or `limit` is reached);
    /// reaching damaged events fails with their error.
    fn read(
        &self,
        from: Seq,
        to: Seq,
        limit: usize,
        mut push: impl FnMut(Seq, &[u8]) -> bool,
    ) -> Result<(), LogError> {
        let mut taken = 0;
        // The frames hold consecutive seqs from `self.from`.
        let skip = from.0.saturating_sub(self.from.0) as usize;
        for (seq, frame) in self.scan.frames.iter().skip(skip) {
            if *seq > to || taken >= limit {
                return Ok(());
            }
            taken += 1;
            if !push(*seq, frame) {
                return Ok(());
            }
        }
        match &self.scan.damage {
            Some(damage) if damage.seq <= to && damage.seq >= from && taken < limit => {
                Err(damage.error())
            }
            _ => Ok(()),
        }
    }
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
                let wal_path = wal::path_for(&path);
                if wal_path.exists() {
                    // Its events belong to a log that was moved away (or deleted): starting a
                    // new log beside them would make them look like this one's.
                    return Err(LogError::ForeignWriteAhead {
                        wal: wal_path.display().to_string(),
                        log: path.display().to_string(),
                        why: "the log it belongs to is not there, and a new log is about to be created"
                            .into(),
                    });
                }
                let db = Database::builder()
                    .set_cache_size(options.cache_bytes)
                    .create(&path)
                    .map_err(|error| cannot_open(&path, error))?;
                let mut log = RedbLog::with_store(Store::Writable(db), path, options);
                log.stamp_schema()?;
                let id = log.stamp_log_id()?;
                // The log's name is durable before its write-ahead file's can be.
                wal::sync_parent(&log.path).map_err(|error| {
                    LogError::Storage(format!(
                        "cannot sync the directory of {}: {error}",
                        log.path.display()
                    ))
                })?;
                log.start_write_ahead(id)?;
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
                let mut log = RedbLog::with_store(
                    Store::ReadOnly {
                        db,
                        reason: String::new(),
                    },
                    path,
                    options,
                );
                log.check_schema()?;
                // The write-ahead file's events are checked with the rest.
                log.load_overlay()?;
                if let Some(damage) = log.damage_after_snapshot()? {
                    if let Store::ReadOnly { reason, .. } = &mut log.store {
                        *reason = damage.to_string();
                    }
                    return Ok(log);
                }
                // Sound: reopen for writing (the read-only handle's lock goes with it).
                let path = log.path.clone();
                drop(log);
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
                let mut log = RedbLog::with_store(
                    Store::ReadOnly {
                        db,
                        reason: "opened for reading only".into(),
                    },
                    path,
                    options,
                );
                log.check_schema()?;
                log.load_overlay()?;
                Ok(Some(log))
            }
            Err(redb::DatabaseError::RepairAborted) => Ok(None),
            Err(other) => Err(cannot_open(&path, other)),
        }
    }

    /// Opens a log whose writer was killed, letting redb repair it even when that means
    /// falling back to the commit before a damaged latest one (which [`RedbLog::open`]
    /// refuses to do). This writes the file: use it on a copy (with a copy of its write-ahead
    /// file beside it, whose events are read in place, never written into the copy). Returns
    /// whether redb fell back, in which case the latest commit's events are gone from what it
    /// reads, unless the write-ahead file still holds them.
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
        let mut log = RedbLog::with_store(Store::Writable(db), path, options);
        log.check_schema()?;
        log.load_overlay()?;
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
        let mut log = RedbLog::with_store(Store::Writable(db), path, options);
        if log.check_schema()?.is_none() {
            log.stamp_schema()?;
        }
        // Events durable only in the write-ahead file (the writer died before a checkpoint)
        // go into redb, durably, before anyone reads the log.
        let id = log.log_id()?;
        let stored = log.last_seq()?;
        let scan = wal::scan(&wal::path_for(&log.path), &log.path, id, stored)?;
        if let Some(damage) = &scan.damage {
            // A damaged log is never modified: read it as it is, the write-ahead file's intact
            // events in place.
            let path = log.path.clone();
            drop(log);
            let db = redb::Builder::new()
                .set_cache_size(options.cache_bytes)
                .open_read_only(&path)
                .map_err(|error| cannot_open(&path, error))?;
            let mut log = RedbLog::with_store(
                Store::ReadOnly {
                    db,
                    reason: damage.error().to_string(),
                },
                path,
                options,
            );
            log.overlay = RwLock::new(Overlay {
                from: stored.next(),
                scan,
                snapshot: None,
            });
            return Ok(log);
        }
        if !scan.frames.is_empty() {
            log.commit_to_redb(&scan.frames, None)?;
            log.replayed = scan.frames.len() as u64;
            tracing::info!(
                events = scan.frames.len(),
                last = %scan.frames[scan.frames.len() - 1].0,
                "replayed the write-ahead file into the log"
            );
        }
        let id = match id {
            Some(id) => id,
            None => log.stamp_log_id()?,
        };
        log.start_write_ahead(id)?;
        Ok(log)
    }

    fn with_store(store: Store, path: PathBuf, options: RedbOptions) -> RedbLog {
        RedbLog {
            store,
            path,
            options,
            write_ahead: None,
            overlay: RwLock::default(),
            replayed: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many events opening copied from the write-ahead file into redb: those a writer
    /// made durable there and did not live to checkpoint.
    pub fn replayed_from_write_ahead(&self) -> u64 {
        self.replayed
    }

    /// The write-ahead file beside this log.
    pub fn write_ahead_path(&self) -> PathBuf {
        wal::path_for(&self.path)
    }

    /// Starts committing through the write-ahead file (when the options say so). Whatever
    /// the file held must be in redb already: its next record starts a new cycle.
    fn start_write_ahead(&mut self, id: u64) -> Result<(), LogError> {
        if self.options.write_ahead {
            let file = WriteAhead::open(
                &self.write_ahead_path(),
                &self.path,
                id,
                self.options.write_ahead_bytes,
            )?;
            self.write_ahead = Some(Mutex::new(file));
        }
        Ok(())
    }

    /// Reads the write-ahead file's events past redb's last seq, to be read in place.
    fn load_overlay(&mut self) -> Result<(), LogError> {
        let id = self.log_id()?;
        let stored = self.stored_last_seq()?;
        let scan = wal::scan(&self.write_ahead_path(), &self.path, id, stored)?;
        self.overlay = RwLock::new(Overlay {
            from: stored.next(),
            scan,
            snapshot: None,
        });
        Ok(())
    }

    fn overlay(&self) -> RwLockReadGuard<'_, Overlay> {
        // Every change to it is one push or one clear: a panic cannot leave it half done.
        self.overlay.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_ahead(&self) -> Option<MutexGuard<'_, WriteAhead>> {
        // Only the log's one writer takes it; a panic under it leaves at worst a record
        // written and not committed to redb, which the next open replays.
        self.write_ahead
            .as_ref()
            .map(|file| file.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// This log's id, `None` when no banger with a write-ahead file has written it.
    fn log_id(&self) -> Result<Option<u64>, LogError> {
        let txn = self.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(storage(error)),
        };
        Ok(meta
            .get(META_LOG_ID)
            .map_err(storage)?
            .and_then(|value| <[u8; 8]>::try_from(value.value()).ok())
            .map(u64::from_le_bytes))
    }

    /// Gives the log its id, durably.
    fn stamp_log_id(&self) -> Result<u64, LogError> {
        let Store::Writable(db) = &self.store else {
            return Err(self.read_only_error());
        };
        let id = IdGenerator::new().next_u64();
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(META_LOG_ID, id.to_le_bytes().as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(id)
    }

    /// redb's own last seq, without the write-ahead file's events read in place.
    fn stored_last_seq(&self) -> Result<Seq, LogError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(EVENTS).map_err(storage)?;
        let last = table
            .last()
            .map_err(storage)?
            .map(|(key, _)| key.value())
            .unwrap_or(0);
        Ok(Seq(last))
    }

    /// One durable redb transaction storing `frames` and `snapshot`.
    fn commit_to_redb(
        &self,
        frames: &[(Seq, Vec<u8>)],
        snapshot: Option<&SnapshotRecord>,
    ) -> Result<(), LogError> {
        self.commit_parts_to_redb(&[frames], snapshot)
    }

    /// One durable redb transaction storing the frames of every part, in order, and
    /// `snapshot`.
    fn commit_parts_to_redb(
        &self,
        parts: &[&[(Seq, Vec<u8>)]],
        snapshot: Option<&SnapshotRecord>,
    ) -> Result<(), LogError> {
        let Store::Writable(db) = &self.store else {
            return Err(self.read_only_error());
        };
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        txn.set_quick_repair(self.options.quick_repair);
        if parts.iter().any(|frames| !frames.is_empty()) {
            let mut events = txn.open_table(EVENTS).map_err(storage)?;
            for (seq, frame) in parts.iter().copied().flatten() {
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
        let overlay = self.overlay();
        match overlay.last_seq() {
            Some(last) => Ok(last),
            None => self.stored_last_seq(),
        }
    }

    fn len(&self) -> Result<u64, LogError> {
        let overlay = self.overlay();
        let txn = self.begin_read()?;
        let table = txn.open_table(EVENTS).map_err(storage)?;
        Ok(table.len().map_err(storage)? + overlay.len())
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
        // The overlay's part is copied out, and redb's transaction begun, under one read lock
        // (see `RedbLog::overlay`).
        let (txn, stored_to, tail, damage) = {
            let overlay = self.overlay();
            let stored_to = overlay.redb_end(to);
            let txn = if from <= stored_to {
                Some(self.begin_read()?)
            } else {
                None
            };
            let (tail, damage) = overlay.copy(from, to, limit);
            (txn, stored_to, tail, damage)
        };
        let mut out = Vec::with_capacity(limit.min(4096));
        if let Some(txn) = txn {
            let table = txn.open_table(EVENTS).map_err(storage)?;
            for entry in table
                .range(from.0..=stored_to.0)
                .map_err(storage)?
                .take(limit)
            {
                let (key, value) = entry.map_err(storage)?;
                out.push((Seq(key.value()), value.value().to_vec()));
            }
        }
        let room = limit - out.len();
        let cut = tail.len() > room;
        out.extend(tail.into_iter().take(room));
        // Damage stops the read there: an error only when nothing comes before it.
        match damage {
            Some(error) if !cut && out.is_empty() => Err(error),
            _ => Ok(out),
        }
    }

    /// Decodes straight from redb's pages instead of copying each frame out first: this is the
    /// hot loop of a rebuild.
    fn read_prefix(&self, from: Seq, to: Seq, limit: usize) -> (Vec<Envelope>, Option<LogError>) {
        let mut run = CheckedRun::new(from, limit.min(8192));
        if from > to || limit == 0 {
            return run.finish();
        }
        let (txn, stored_to, tail, damage) = {
            let overlay = self.overlay();
            let stored_to = overlay.redb_end(to);
            let txn = (from <= stored_to).then(|| self.begin_read());
            let (tail, damage) = overlay.copy(from, to, limit);
            (txn, stored_to, tail, damage)
        };
        let mut taken = 0;
        if let Some(txn) = txn {
            let range = txn
                .and_then(|txn| txn.open_table(EVENTS).map_err(storage))
                .and_then(|table| table.range(from.0..=stored_to.0).map_err(storage));
            match range {
                Ok(range) => {
                    for entry in range.take(limit) {
                        match entry {
                            Ok((key, value)) => {
                                taken += 1;
                                if !run.push(Seq(key.value()), value.value()) {
                                    return run.finish();
                                }
                            }
                            Err(error) => {
                                run.fail(storage(error));
                                return run.finish();
                            }
                        }
                    }
                }
                Err(error) => {
                    run.fail(error);
                    return run.finish();
                }
            }
        }
        let room = limit - taken;
        let cut = tail.len() > room;
        for (seq, frame) in tail.iter().take(room) {
            if !run.push(*seq, frame) {
                return run.finish();
            }
        }
        if let Some(error) = damage
            && !cut
        {
            run.fail(error);
        }
        run.finish()
    }

    /// With the write-ahead file: the frames are durable once their record is fdatasynced
    /// there, and readable from memory from then on (the tail); a checkpoint moves the tail
    /// into redb with one durable commit. A batch the file has no room for, or a snapshot
    /// alone, is committed durably to redb with the tail (a checkpoint: the file starts over).
    fn commit(
        &self,
        frames: &[(Seq, Vec<u8>)],
        snapshot: Option<&SnapshotRecord>,
    ) -> Result<(), LogError> {
        if let Store::ReadOnly { .. } = &self.store {
            return Err(self.read_only_error());
        }
        let Some(mut file) = self.write_ahead() else {
            if !self.overlay().is_empty() {
                return Err(LogError::ReadOnly {
                    reason: "this log was opened to be read: some of its events are only in its write-ahead file".into(),
                });
            }
            return self.commit_to_redb(frames, snapshot);
        };
        let appended = file.append(frames).map_err(|error| {
            LogError::Storage(format!(
                "cannot write the write-ahead file {}: {error}",
                self.write_ahead_path().display()
            ))
        })?;
        match appended {
            Appended::Durable => {
                self.overlay
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(frames, snapshot);
                Ok(())
            }
            Appended::NoRoom => self.checkpoint_with(&mut file, frames, snapshot),
        }
    }

    fn checkpoint_state(&self) -> CheckpointState {
        match self.write_ahead() {
            Some(file) if file.half_full() => CheckpointState::Due,
            Some(file) if file.records() > 0 => CheckpointState::Pending,
            _ => CheckpointState::Clean,
        }
    }

    fn checkpoint(&self) -> Result<(), LogError> {
        let Some(mut file) = self.write_ahead() else {
            return Ok(());
        };
        if file.records() == 0 && self.overlay().is_empty() {
            return Ok(());
        }
        self.checkpoint_with(&mut file, &[], None)
    }

    fn read_only_reason(&self) -> Option<String> {
        match &self.store {
            Store::Writable(_) => None,
            Store::ReadOnly { reason, .. } => Some(reason.clone()),
        }
    }

    fn latest_snapshot(&self) -> Result<Option<SnapshotRecord>, LogError> {
        if let Some(snapshot) = &self.overlay().snapshot {
            return Ok(Some(snapshot.clone()));
        }
        let txn = self.begin_read()?;
        let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
        let Some((key, value)) = table.last().map_err(storage)? else {
            return Ok(None);
        };
        // A damaged snapshot is only a lost shortcut: the events are still there to replay.
        Ok(decode_snapshot(Seq(key.value()), value.value()))
    }
}

impl RedbLog {
    /// One durable redb commit of the tail, then `frames` and the newest snapshot; then the
    /// tail is emptied and the write-ahead file starts over.
    fn checkpoint_with(
        &self,
        file: &mut WriteAhead,
        frames: &[(Seq, Vec<u8>)],
        snapshot: Option<&SnapshotRecord>,
    ) -> Result<(), LogError> {
        {
            // Only this log's writer changes the tail, and it is here: holding the read lock
            // across the commit keeps readers going.
            let overlay = self.overlay();
            let snapshot = snapshot.or(overlay.snapshot.as_ref());
            self.commit_parts_to_redb(&[&overlay.scan.frames, frames], snapshot)?;
        }
        self.overlay
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        file.restart();
        Ok(())
    }
}

impl Drop for RedbLog {
    /// A last checkpoint, so that a log closed without its journal (tools, tests) leaves redb
    /// holding every event. Losing it costs nothing: the next open replays the file.
    fn drop(&mut self) {
        if let Err(error) = self.checkpoint() {
            tracing::warn!(%error, log = %self.path.display(), "could not checkpoint the log as it closed");
        }
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
