//! The storage trait under the journal, and the errors every log speaks.

use crate::event::Envelope;
use crate::frame::{self, FrameError};
use crate::ids::Seq;

/// A projection snapshot as stored beside the events: the state after `seq`, in the layout
/// `format` of whoever wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub seq: Seq,
    pub format: u32,
    pub bytes: Vec<u8>,
}

/// Where events live. Implementations store encoded frames under their sequence number and
/// commit a batch (and, with it, an optional snapshot) in one durable transaction. They do not
/// assign sequence numbers or decide anything: the [`Journal`](crate::Journal) does, through
/// its single writer.
pub trait EventLog: Send + Sync + 'static {
    /// Highest stored sequence number, `Seq(0)` when empty.
    fn last_seq(&self) -> Result<Seq, LogError>;

    /// How many events are stored. Equal to `last_seq` in a gapless log.
    fn len(&self) -> Result<u64, LogError>;

    /// True when no event is stored.
    fn is_empty(&self) -> Result<bool, LogError> {
        Ok(self.len()? == 0)
    }

    /// Stored frames with keys in `from..=to`, in order, at most `limit` of them.
    fn read_frames(
        &self,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Vec<u8>)>, LogError>;

    /// Stores `frames` (consecutive keys following `last_seq`) and, when given, `snapshot`
    /// replacing the previous one, in one transaction that is durable when this returns.
    fn commit(
        &self,
        frames: &[(Seq, Vec<u8>)],
        snapshot: Option<&SnapshotRecord>,
    ) -> Result<(), LogError>;

    /// Whether commits are waiting for a [`EventLog::checkpoint`]. A log whose commits are
    /// each made durable in place has nothing to checkpoint.
    fn checkpoint_state(&self) -> CheckpointState {
        CheckpointState::Clean
    }

    /// Makes the log's main store hold every committed event by itself, so that its
    /// write-ahead file can start over. Commits are durable without it (this is not what
    /// makes them durable), so the journal does it off the acknowledgement path: when the
    /// write-ahead file fills up, when idle, and when closing.
    fn checkpoint(&self) -> Result<(), LogError> {
        Ok(())
    }

    /// `Some(why)` when this log can only be read (it was found damaged on open): commits
    /// fail, and the journal opens read-only.
    fn read_only_reason(&self) -> Option<String> {
        None
    }

    /// The most recent snapshot, if any.
    fn latest_snapshot(&self) -> Result<Option<SnapshotRecord>, LogError>;

    /// Decoded events in `from..=to`, at most `limit`, each checked (crc, kind, seq matches
    /// key, no gap). The first bad record ends the read with an error naming its sequence
    /// number.
    fn read(&self, from: Seq, to: Seq, limit: usize) -> Result<Vec<Envelope>, LogError> {
        match self.read_prefix(from, to, limit) {
            (_, Some(error)) => Err(error),
            (envelopes, None) => Ok(envelopes),
        }
    }

    /// Like [`EventLog::read`], but keeps the good events in front of a bad record: returns
    /// them together with the error that stopped the read, if any.
    fn read_prefix(&self, from: Seq, to: Seq, limit: usize) -> (Vec<Envelope>, Option<LogError>) {
        let frames = match self.read_frames(from, to, limit) {
            Ok(frames) => frames,
            Err(error) => return (Vec::new(), Some(error)),
        };
        let mut run = CheckedRun::new(from, frames.len());
        for (key, bytes) in &frames {
            if !run.push(*key, bytes) {
                break;
            }
        }
        run.finish()
    }
}

/// How badly a log wants a checkpoint ([`EventLog::checkpoint_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointState {
    /// Nothing to checkpoint.
    Clean,
    /// Commits since the last checkpoint; one is worth doing when there is nothing else to do.
    Pending,
    /// The write-ahead file is filling up: checkpoint now, before a batch finds no room.
    Due,
}

/// Decodes a run of stored frames that must hold consecutive sequence numbers from a given
/// start, stopping at the first gap or bad frame. Backends that can lend frame bytes without
/// copying them feed those straight in.
pub struct CheckedRun {
    expected: Seq,
    envelopes: Vec<Envelope>,
    error: Option<LogError>,
}

impl CheckedRun {
    pub fn new(from: Seq, capacity: usize) -> Self {
        CheckedRun {
            expected: from,
            envelopes: Vec::with_capacity(capacity),
            error: None,
        }
    }

    /// Takes the frame stored under `key`; false once the run has stopped.
    pub fn push(&mut self, key: Seq, bytes: &[u8]) -> bool {
        if self.error.is_some() {
            return false;
        }
        if key != self.expected {
            self.error = Some(LogError::Corrupt {
                seq: self.expected,
                detail: format!("missing (next stored is {key})"),
            });
            return false;
        }
        match decode_checked(key, bytes) {
            Ok(envelope) => self.envelopes.push(envelope),
            Err(error) => {
                self.error = Some(error);
                return false;
            }
        }
        self.expected = key.next();
        true
    }

    /// Records an error from the backend itself.
    pub fn fail(&mut self, error: LogError) {
        self.error.get_or_insert(error);
    }

    pub fn finish(self) -> (Vec<Envelope>, Option<LogError>) {
        (self.envelopes, self.error)
    }
}

/// Decodes one stored frame into an envelope, or names the sequence number that is bad.
pub fn decode_checked(key: Seq, bytes: &[u8]) -> Result<Envelope, LogError> {
    frame::decode_at(key, bytes).map_err(|error| match error {
        FrameError::Damaged(detail) => LogError::Corrupt { seq: key, detail },
        FrameError::UnknownKind { kind } => LogError::UnknownKind { seq: key, kind },
        FrameError::NewerSchema { found } => LogError::NewerSchema { seq: key, found },
    })
}

/// Everything that can go wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error(
        "event log is corrupt at seq {seq}: {detail}; the log is now read-only and has not been modified — stop bangerd and run `banger events repair` to go on from the events before seq {seq} (the damaged file is kept), or inspect what is intact with `banger events replay --log FILE --until {prev}` on a copy",
        prev = seq.0.saturating_sub(1)
    )]
    Corrupt { seq: Seq, detail: String },
    #[error(
        "event at seq {seq} has kind {kind}, which this build of banger does not know: a newer banger wrote this log; upgrade banger"
    )]
    UnknownKind { seq: Seq, kind: u16 },
    #[error(
        "event at seq {seq} uses schema version {found}, newer than this build understands; upgrade banger"
    )]
    NewerSchema { seq: Seq, found: u16 },
    #[error(
        "the log file was written by a newer banger (log schema {found}, this build reads up to {supported}); upgrade banger"
    )]
    NewerLog { found: u16, supported: u16 },
    #[error("the event log is read-only: {reason}")]
    ReadOnly { reason: String },
    #[error(
        "the event log is open in another process (only one bangerd may use a state directory)"
    )]
    Locked,
    #[error(
        "the event log {path} is empty: a log is never empty once created, so it was probably truncated; keep a copy for inspection and move it away to start a new log"
    )]
    EmptyFile { path: String },
    #[error(
        "the write-ahead file {wal} does not belong to the event log {log} ({why}), so its events were not read; nothing was changed. This happens when a log file was replaced or moved without the write-ahead file beside it, or when `banger events repair` was interrupted (its backup then has a `.wal` of its own). Keep {wal} with the log it came from; if that log is gone or already holds its events, move {wal} away"
    )]
    ForeignWriteAhead {
        wal: String,
        log: String,
        why: String,
    },
    #[error("event log storage failed: {0}")]
    Storage(String),
    #[error("the event log is closed")]
    Closed,
    #[error("the precondition of a conditional append panicked ({0}); nothing was appended")]
    CheckPanicked(String),
}

impl LogError {
    /// True for the errors that mean the stored bytes are bad (as opposed to "this build is too
    /// old" or "the disk failed").
    pub fn is_corruption(&self) -> bool {
        matches!(self, LogError::Corrupt { .. } | LogError::EmptyFile { .. })
    }
}
