//! `GatedLog`: a real log behind gates the test controls, to stand in for a slow or failing
//! disk. Commits (and, separately, reads) can be held at the gate until released, and one
//! commit can be made to fail as a full disk would. Every wait is on a condition variable, so
//! a test says "until the writer is inside a commit" instead of sleeping.

use std::sync::{Condvar, Mutex, MutexGuard};

use banger_events::*;

pub struct GatedLog<L> {
    pub inner: L,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    hold_commits: bool,
    hold_reads: bool,
    commits_waiting: usize,
    reads_waiting: usize,
    /// Commits that reached the log (held ones included once they go on).
    commits: usize,
    fail_next_commit: Option<LogError>,
    /// Every snapshot handed to `commit`, with the last seq stored once that commit is
    /// durable.
    snapshots: Vec<(SnapshotRecord, Seq)>,
    /// Checkpoints the inner log made.
    checkpoints: usize,
}

impl<L: EventLog> GatedLog<L> {
    pub fn new(inner: L) -> Self {
        GatedLog {
            inner,
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, commits wait at the gate until [`GatedLog::release_commits`].
    pub fn hold_commits(&self) {
        self.state().hold_commits = true;
    }

    pub fn release_commits(&self) {
        self.state().hold_commits = false;
        self.changed.notify_all();
    }

    /// From now on, reads wait at the gate until [`GatedLog::release_reads`].
    pub fn hold_reads(&self) {
        self.state().hold_reads = true;
    }

    pub fn release_reads(&self) {
        self.state().hold_reads = false;
        self.changed.notify_all();
    }

    /// Blocks until `n` commits are waiting at the gate.
    pub fn wait_for_held_commits(&self, n: usize) {
        let mut state = self.state();
        while state.commits_waiting < n {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks until a read is waiting at the gate.
    pub fn wait_for_held_read(&self) {
        let mut state = self.state();
        while state.reads_waiting == 0 {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The next commit fails with `error` and stores nothing.
    pub fn fail_next_commit(&self, error: LogError) {
        self.state().fail_next_commit = Some(error);
    }

    pub fn commits(&self) -> usize {
        self.state().commits
    }

    /// Blocks until the inner log has made `n` checkpoints.
    pub fn wait_for_checkpoints(&self, n: usize) {
        let mut state = self.state();
        while state.checkpoints < n {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn snapshots(&self) -> Vec<(SnapshotRecord, Seq)> {
        self.state().snapshots.clone()
    }

    fn pass_read_gate(&self) {
        let mut state = self.state();
        if state.hold_reads {
            state.reads_waiting += 1;
            self.changed.notify_all();
            while state.hold_reads {
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            state.reads_waiting -= 1;
        }
    }
}

impl<L: EventLog> EventLog for GatedLog<L> {
    fn last_seq(&self) -> Result<Seq, LogError> {
        self.inner.last_seq()
    }

    fn len(&self) -> Result<u64, LogError> {
        self.inner.len()
    }

    fn read_frames(
        &self,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Vec<u8>)>, LogError> {
        self.pass_read_gate();
        self.inner.read_frames(from, to, limit)
    }

    fn commit(
        &self,
        frames: &[(Seq, Vec<u8>)],
        snapshot: Option<&SnapshotRecord>,
    ) -> Result<(), LogError> {
        {
            let mut state = self.state();
            if state.hold_commits {
                state.commits_waiting += 1;
                self.changed.notify_all();
                while state.hold_commits {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                state.commits_waiting -= 1;
            }
            state.commits += 1;
            if let Some(error) = state.fail_next_commit.take() {
                return Err(error);
            }
            if let Some(snapshot) = snapshot {
                let stored_through = match frames.last() {
                    Some((seq, _)) => *seq,
                    None => self.inner.last_seq()?,
                };
                state.snapshots.push((snapshot.clone(), stored_through));
            }
        }
        self.inner.commit(frames, snapshot)
    }

    fn latest_snapshot(&self) -> Result<Option<SnapshotRecord>, LogError> {
        self.inner.latest_snapshot()
    }

    fn checkpoint_state(&self) -> CheckpointState {
        self.inner.checkpoint_state()
    }

    fn checkpoint(&self) -> Result<(), LogError> {
        let pending = self.inner.checkpoint_state() != CheckpointState::Clean;
        self.inner.checkpoint()?;
        if pending {
            self.state().checkpoints += 1;
            self.changed.notify_all();
        }
        Ok(())
    }
}
