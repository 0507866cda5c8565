//! An event log held in memory: same frames, same checks, no file. For tests and for offline
//! replays of a log that was read into memory.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::ids::Seq;
use crate::log::{EventLog, LogError, SnapshotRecord};

#[derive(Default)]
pub struct MemoryLog {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    frames: BTreeMap<u64, Vec<u8>>,
    snapshot: Option<SnapshotRecord>,
}

impl MemoryLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// A log holding exactly these frames, checked by nobody: corruption tests build damaged
    /// logs this way.
    pub fn from_frames(frames: impl IntoIterator<Item = (Seq, Vec<u8>)>) -> Self {
        let log = Self::default();
        log.lock().frames = frames
            .into_iter()
            .map(|(seq, frame)| (seq.0, frame))
            .collect();
        log
    }

    /// Every stored frame, in order.
    pub fn frames(&self) -> Vec<(Seq, Vec<u8>)> {
        self.lock()
            .frames
            .iter()
            .map(|(seq, frame)| (Seq(*seq), frame.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps half-updated (every mutation
        // is a single insert), so a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl EventLog for MemoryLog {
    fn last_seq(&self) -> Result<Seq, LogError> {
        Ok(Seq(self
            .lock()
            .frames
            .last_key_value()
            .map(|(seq, _)| *seq)
            .unwrap_or(0)))
    }

    fn len(&self) -> Result<u64, LogError> {
        Ok(self.lock().frames.len() as u64)
    }

    fn read_frames(
        &self,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Vec<u8>)>, LogError> {
        if from > to {
            return Ok(Vec::new());
        }
        Ok(self
            .lock()
            .frames
            .range(from.0..=to.0)
            .take(limit)
            .map(|(seq, frame)| (Seq(*seq), frame.clone()))
            .collect())
    }

    fn commit(
        &self,
        frames: &[(Seq, Vec<u8>)],
        snapshot: Option<&SnapshotRecord>,
    ) -> Result<(), LogError> {
        let mut inner = self.lock();
        for (seq, frame) in frames {
            inner.frames.insert(seq.0, frame.clone());
        }
        if let Some(snapshot) = snapshot {
            inner.snapshot = Some(snapshot.clone());
        }
        Ok(())
    }

    fn latest_snapshot(&self) -> Result<Option<SnapshotRecord>, LogError> {
        Ok(self.lock().snapshot.clone())
    }
}
