//! The journal: the one writer in front of an [`EventLog`].
//!
//! ```text
//!  append() ─▶ bounded queue ─▶ writer thread: take what is queued (a conditional request
//!  (waits when full)              only ever opens a batch) ─▶ check it on the projection ─▶
//!                                 assign seqs ─▶ encode
//!                                                  │
//!                                                  ▼
//!                                   commit (EventLog::commit; for redb: one record written to
//!                                   the write-ahead file + fdatasync = durable, kept in memory
//!                                   until the next checkpoint = readable; with it the snapshot
//!                                   taken after the previous commit, if pending)
//!                                                  │
//!                                                  ▼
//!   ack each caller ◀── publish seq ◀── fold into projection (under the write lock)
//!        │
//!        ▼
//!   snapshot due? encode the state at the last seq (read lock) and keep it for the next commit
//!   checkpoint due (write-ahead file half full)? make one now, after the acks
//!   queue empty for checkpoint_idle_ms, or closing? checkpoint (the events since the last one
//!   stored in redb with one durable commit)
//! ```
//!
//! Invariants:
//! - Sequence numbers are assigned only by the writer thread, so the log is gapless.
//! - The projection (`F`) only ever holds durable events: a batch is folded after its commit
//!   returns, never before, so a reader never sees an event that is not durable. The write
//!   lock is held only for the fold itself, never across the commit (the fsync): `view()`
//!   does not wait for the disk.
//! - A caller is acknowledged only after its events are durable *and* folded, so what the
//!   caller reads from the projection next already includes them.
//! - The projection and [`Journal::last_seq`] move together: the new seq is published under
//!   the same write lock as the fold.
//! - A failed commit leaves the projection exactly as it was (nothing of the batch was folded),
//!   makes the journal read-only with the error in [`Journal::health`], and answers every
//!   caller of the batch with the error.
//! - Concurrent appends share one transaction (group commit): throughput grows with the number
//!   of writers while each commit still costs one durable write.
//! - `EventLog::commit` returns only once the batch is durable. For the redb log that point is
//!   the fdatasync of its record in the write-ahead file; the log serves the batch from memory
//!   from then on (redb gets it at the next checkpoint), so no reader of the log finds an event
//!   that is not durable, and a subscriber told of a new seq (after the fold) finds it. A
//!   checkpoint
//!   (`EventLog::checkpoint`) is never on an acknowledgement's path: the writer makes one after
//!   acknowledging a batch that left the write-ahead file half full, when no request came for
//!   [`JournalOptions::checkpoint_idle_ms`], and when closing. A failed checkpoint makes the
//!   journal read-only, like a failed commit, and changes no view.
//! - A conditional append ([`Journal::append_if`]) is checked by the writer thread on the
//!   projection of every durable event, right before its sequence numbers are assigned:
//!   nothing can commit between the check and the append. It is always the first request of
//!   its batch, so nothing earlier in the batch is missing from what it checks; a refusal
//!   appends nothing and leaves the rest of the batch alone.
//! - A snapshot describes exactly the state after its seq: it is encoded from the projection
//!   once a commit is folded (the state after that commit's last seq) and stored with the next
//!   commit, or on its own when the journal closes. Snapshots are only a shortcut for opening;
//!   losing one costs a longer replay, never an event.
//! - The request queue is bounded ([`JournalOptions::max_queued_requests`]): an async `append`
//!   waits for room without blocking its thread, `append_blocking` blocks.
//! - After corruption is found the journal refuses appends (read-only) and never modifies or
//!   truncates the stored log.
//! - Subscribers read from the log by sequence number, never from a channel of events, so a
//!   subscription can neither skip nor repeat an event when it switches from catch-up to live.
//!   They read on tokio's blocking pool, never on an async worker thread.
//!
//! Lock order: the writer takes the projection's write lock only to fold and publish, and
//! takes no other lock while holding it. A check ([`Journal::append_if`]) runs on the writer
//! thread under the projection's read lock, so it must take no lock and do no IO either.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use crate::event::{Envelope, Event, SCHEMA_VERSION};
use crate::frame;
use crate::ids::{EventId, IdGenerator, OpId, Seq};
use crate::log::{CheckpointState, EventLog, LogError, SnapshotRecord};

/// Something folded from the events, kept current by the journal and snapshotted beside the
/// log. `apply` must be pure: the same events in the same order give the same state.
pub trait Fold: Default + Send + Sync + 'static {
    /// Layout version of [`Fold::encode_snapshot`]. A stored snapshot of another format is
    /// ignored (the log is replayed instead), so bump it whenever the layout changes.
    const SNAPSHOT_FORMAT: u32;

    fn apply(&mut self, envelope: &Envelope);

    fn encode_snapshot(&self) -> Vec<u8>;

    /// `None` when the bytes do not decode; the journal then replays from the start.
    fn decode_snapshot(bytes: &[u8]) -> Option<Self>;
}

/// A fold that keeps nothing, for tools that only read or write events.
#[derive(Default, Debug, Clone, Copy)]
pub struct NoFold;

impl Fold for NoFold {
    const SNAPSHOT_FORMAT: u32 = 0;
    fn apply(&mut self, _: &Envelope) {}
    fn encode_snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn decode_snapshot(_: &[u8]) -> Option<Self> {
        Some(NoFold)
    }
}

/// An event to append; the journal fills in the rest of the envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub op_id: Option<OpId>,
    pub cause: Option<Seq>,
    pub event: Event,
}

impl NewEvent {
    pub fn new(event: Event) -> Self {
        NewEvent {
            op_id: None,
            cause: None,
            event,
        }
    }

    pub fn in_op(op_id: OpId, event: Event) -> Self {
        NewEvent {
            op_id: Some(op_id),
            cause: None,
            event,
        }
    }

    pub fn caused_by(mut self, cause: Seq) -> Self {
        self.cause = Some(cause);
        self
    }
}

/// Whether the journal accepts appends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Writable,
    ReadOnly { reason: String },
}

pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Knobs of a journal.
#[derive(Clone)]
pub struct JournalOptions {
    /// A snapshot of the projection is taken once this many events were committed since the
    /// last one, and written with the next commit.
    pub snapshot_every_events: u64,
    /// Most events one group commit takes; more queued appends wait for the next commit.
    pub max_batch_events: usize,
    /// Most append requests waiting for the writer (a request being committed is no longer
    /// waiting). When the queue is full, `append` waits for room and `append_blocking` blocks,
    /// so a burst of writers costs bounded memory. At least 1.
    pub max_queued_requests: usize,
    /// Milliseconds since the epoch, stamped on each event.
    pub clock: Clock,
    /// Seed of the event-id generator (None: random). Tests and replays pin it.
    pub id_seed: Option<u64>,
    /// With commits waiting for a checkpoint ([`EventLog::checkpoint`]), the writer makes one
    /// once no append has come for this long. It also checkpoints when the log says one is
    /// due, and when closing.
    pub checkpoint_idle_ms: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            snapshot_every_events: 4096,
            max_batch_events: 8192,
            // Far above the daemon's concurrency (one request per operation step in flight),
            // so it only bites on a runaway producer.
            max_queued_requests: 1024,
            clock: Arc::new(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0)
            }),
            id_seed: None,
            // Long enough that a burst of appends never waits behind a checkpoint, short
            // enough that a log left alone soon holds every event in its main file.
            checkpoint_idle_ms: 200,
        }
    }
}

/// How opening went: useful to print and to benchmark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    pub last_seq: Seq,
    /// The snapshot the projection started from, if one was usable.
    pub snapshot_seq: Option<Seq>,
    /// Events replayed on top of the snapshot.
    pub replayed: u64,
}

struct Shared<F> {
    log: Arc<dyn EventLog>,
    fold: RwLock<F>,
    health: Mutex<Health>,
    committed: watch::Sender<Seq>,
}

impl<F> Shared<F> {
    fn set_read_only(&self, reason: String) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if *health == Health::Writable {
            tracing::error!(%reason, "event log switched to read-only");
            *health = Health::ReadOnly { reason };
        }
    }

    fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A precondition with its error type erased: true to go ahead; on refusal it has already
/// handed its error to the caller (see [`Journal::append_if`]).
type Check<F> = Box<dyn FnOnce(&F) -> bool + Send>;

struct Request<F> {
    events: Vec<NewEvent>,
    check: Option<Check<F>>,
    reply: oneshot::Sender<Result<Outcome, LogError>>,
}

enum Outcome {
    Appended(Vec<Envelope>),
    Refused,
}

/// Where the writer's answer to a request arrives.
type Answer<T> = oneshot::Receiver<Result<T, LogError>>;

/// The single writer, the projection it keeps current, and the subscriptions it feeds.
pub struct Journal<F: Fold> {
    shared: Arc<Shared<F>>,
    queue: Option<mpsc::Sender<Request<F>>>,
    writer: Option<JoinHandle<()>>,
    report: OpenReport,
}

impl<F: Fold> Journal<F> {
    /// Opens a journal over `log`: loads the newest usable snapshot, replays the events after
    /// it, checks that the stored sequence has no gap, and starts the writer.
    ///
    /// Corruption does not fail the open: the journal opens read-only with the projection of
    /// everything before the bad record, and [`Journal::health`] says why. An event kind this
    /// build does not know does fail the open.
    pub fn open(log: Arc<dyn EventLog>, options: JournalOptions) -> Result<Self, LogError> {
        let last_seq = log.last_seq()?;
        let stored = log.len()?;
        let mut health = match log.read_only_reason() {
            Some(reason) => Health::ReadOnly { reason },
            None => Health::Writable,
        };
        let mut fold = F::default();
        let mut snapshot_seq = None;
        let mut from = Seq(1);
        let usable = log
            .latest_snapshot()?
            .filter(|snapshot| snapshot.format == F::SNAPSHOT_FORMAT && snapshot.seq <= last_seq)
            .and_then(|snapshot| {
                F::decode_snapshot(&snapshot.bytes).map(|state| (snapshot.seq, state))
            });
        if let Some((seq, state)) = usable {
            fold = state;
            snapshot_seq = Some(seq);
            from = seq.next();
        }
        let mut replayed = 0u64;
        let mut applied_to = from.0.saturating_sub(1);
        // A gap anywhere shows as fewer stored events than the last key says.
        if stored != last_seq.0 {
            let gap = find_gap(log.as_ref(), last_seq)?;
            health = Health::ReadOnly {
                reason: LogError::Corrupt {
                    seq: gap,
                    detail: "missing from the sequence".into(),
                }
                .to_string(),
            };
        }
        let (applied, error) = replay_into(log.as_ref(), &mut fold, Seq(applied_to + 1), last_seq);
        replayed += applied;
        applied_to += applied;
        match error {
            None => {}
            Some(error @ LogError::Corrupt { .. }) => {
                health = Health::ReadOnly {
                    reason: error.to_string(),
                };
            }
            Some(other) => return Err(other),
        }
        let visible = Seq(applied_to);
        let (committed, _) = watch::channel(visible);
        let shared = Arc::new(Shared {
            log,
            fold: RwLock::new(fold),
            health: Mutex::new(health),
            committed,
        });
        let (queue, requests) = mpsc::channel(options.max_queued_requests.max(1));
        let ids = match options.id_seed {
            Some(seed) => IdGenerator::seeded(seed),
            None => IdGenerator::new(),
        };
        let writer_state = Writer {
            shared: shared.clone(),
            requests,
            options,
            next_seq: last_seq.next(),
            since_snapshot: replayed,
            last_snapshot_bytes: 0,
            pending_snapshot: None,
            carried: None,
            instance: ids.next_u64(),
        };
        let writer = std::thread::Builder::new()
            .name("banger-log-writer".into())
            .spawn(move || writer_state.run())
            .map_err(|e| LogError::Storage(format!("cannot start the log writer thread: {e}")))?;
        Ok(Journal {
            shared,
            queue: Some(queue),
            writer: Some(writer),
            report: OpenReport {
                last_seq: visible,
                snapshot_seq,
                replayed,
            },
        })
    }

    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// Appends `events` as one atomic batch (consecutive sequence numbers). Resolves once they
    /// are durable and folded into the projection.
    ///
    /// Waits (without blocking the thread) while the request queue is full. Dropping the future
    /// before it resolves may or may not append: once queued, a request is committed.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Envelope>, LogError> {
        match self.submit(events, None).await?.await {
            Ok(Ok(Outcome::Appended(envelopes))) => Ok(envelopes),
            Ok(Ok(Outcome::Refused)) => Err(refused_without_check()),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(LogError::Closed),
        }
    }

    /// [`Journal::append`] for callers outside an async runtime: blocks while the queue is full
    /// and until the events are durable and folded.
    pub fn append_blocking(&self, events: Vec<NewEvent>) -> Result<Vec<Envelope>, LogError> {
        match self.submit_blocking(events, None)?.blocking_recv() {
            Ok(Ok(Outcome::Appended(envelopes))) => Ok(envelopes),
            Ok(Ok(Outcome::Refused)) => Err(refused_without_check()),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(LogError::Closed),
        }
    }

    /// Appends `events` only if `check` accepts the projection as it is right before they get
    /// their sequence numbers: `Ok(Ok(envelopes))` once they are durable and folded,
    /// `Ok(Err(refusal))` when `check` refused (nothing was appended), `Err` when the log
    /// failed.
    ///
    /// `check` runs on the writer thread and sees every event committed before this append,
    /// including those of appends that were queued earlier; no event can commit between the
    /// check and the append. This is what makes "decide from the view, then record the
    /// decision" one step. `check` runs under the projection's read lock while every other
    /// append waits, so it must be quick, take no lock and do no IO; a check that panics
    /// appends nothing and is answered [`LogError::CheckPanicked`].
    pub async fn append_if<E: Send + 'static>(
        &self,
        events: Vec<NewEvent>,
        check: impl FnOnce(&F) -> Result<(), E> + Send + 'static,
    ) -> Result<Result<Vec<Envelope>, E>, LogError> {
        let (check, mut refusal) = erase_check(check);
        let answer = self.submit(events, Some(check)).await?.await;
        conditional_outcome(answer, &mut refusal)
    }

    /// [`Journal::append_if`] for callers outside an async runtime.
    pub fn append_if_blocking<E: Send + 'static>(
        &self,
        events: Vec<NewEvent>,
        check: impl FnOnce(&F) -> Result<(), E> + Send + 'static,
    ) -> Result<Result<Vec<Envelope>, E>, LogError> {
        let (check, mut refusal) = erase_check(check);
        let answer = self.submit_blocking(events, Some(check))?.blocking_recv();
        conditional_outcome(answer, &mut refusal)
    }

    async fn submit(
        &self,
        events: Vec<NewEvent>,
        check: Option<Check<F>>,
    ) -> Result<Answer<Outcome>, LogError> {
        let (request, answer) = self.request(events, check)?;
        self.queue
            .as_ref()
            .ok_or(LogError::Closed)?
            .send(request)
            .await
            .map_err(|_| LogError::Closed)?;
        Ok(answer)
    }

    fn submit_blocking(
        &self,
        events: Vec<NewEvent>,
        check: Option<Check<F>>,
    ) -> Result<Answer<Outcome>, LogError> {
        let (request, answer) = self.request(events, check)?;
        self.queue
            .as_ref()
            .ok_or(LogError::Closed)?
            .blocking_send(request)
            .map_err(|_| LogError::Closed)?;
        Ok(answer)
    }

    fn request(
        &self,
        events: Vec<NewEvent>,
        check: Option<Check<F>>,
    ) -> Result<(Request<F>, Answer<Outcome>), LogError> {
        if let Health::ReadOnly { reason } = self.shared.health() {
            return Err(LogError::ReadOnly { reason });
        }
        let (reply, answer) = oneshot::channel();
        Ok((
            Request {
                events,
                check,
                reply,
            },
            answer,
        ))
    }

    /// How many append requests are waiting for the writer (at most
    /// [`JournalOptions::max_queued_requests`]).
    pub fn queued_requests(&self) -> usize {
        self.queue
            .as_ref()
            .map(|queue| queue.max_capacity() - queue.capacity())
            .unwrap_or(0)
    }

    /// Checked events in `from..=to` (at most `limit`), never past [`Journal::last_seq`].
    /// Finding corruption makes the journal read-only.
    pub fn read(&self, from: Seq, to: Seq, limit: usize) -> Result<Vec<Envelope>, LogError> {
        let to = to.min(self.last_seq());
        self.shared.log.read(from, to, limit).inspect_err(|error| {
            if error.is_corruption() {
                self.shared.set_read_only(error.to_string());
            }
        })
    }

    /// Reads every stored event and checks it; the first bad one makes the journal read-only
    /// and is returned. Opening only checks the events after the snapshot, so the daemon runs
    /// this once in the background.
    pub fn verify_all(&self) -> Result<u64, LogError> {
        // The stored end, not the visible one: after corruption the visible end stops short.
        let last = self.shared.log.last_seq()?;
        let mut next = Seq(1);
        let mut checked = 0;
        while next <= last {
            let batch = self
                .shared
                .log
                .read(next, last, 8192)
                .inspect_err(|error| {
                    if error.is_corruption() {
                        self.shared.set_read_only(error.to_string());
                    }
                })?;
            if batch.is_empty() {
                break;
            }
            checked += batch.len() as u64;
            next = Seq(next.0 + batch.len() as u64);
        }
        Ok(checked)
    }

    /// Highest sequence number that is durable (and visible to readers).
    pub fn last_seq(&self) -> Seq {
        *self.shared.committed.borrow()
    }

    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// Read access to the projection: every durable event up to [`Journal::last_seq`] (which
    /// cannot move while the guard is held), nothing more. Never waits for a commit, only for
    /// a fold in progress. Holding it blocks the writer's next fold, so copy what you need out
    /// and drop it; take no other lock and do no IO while holding it.
    pub fn view(&self) -> RwLockReadGuard<'_, F> {
        self.shared.fold.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the log from the event after `after`: first every stored event, then each new
    /// one as it commits.
    pub fn subscribe(&self, after: Seq) -> Subscription {
        Subscription {
            log: self.shared.log.clone(),
            committed: self.shared.committed.subscribe(),
            next: after.next(),
            buffer: VecDeque::new(),
            reading: None,
        }
    }

    /// Stops taking appends, lets the writer commit everything already queued, and waits for
    /// it. Dropping the journal does the same.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl<F: Fold> Drop for Journal<F> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Wraps a typed check so the writer can run it without knowing its error type: the error
/// of a refusal travels back on its own channel.
fn erase_check<F: Fold, E: Send + 'static>(
    check: impl FnOnce(&F) -> Result<(), E> + Send + 'static,
) -> (Check<F>, oneshot::Receiver<E>) {
    let (refuse, refusal) = oneshot::channel();
    let check: Check<F> = Box::new(move |fold: &F| match check(fold) {
        Ok(()) => true,
        Err(error) => {
            // The caller may have given up waiting; then nobody wants the refusal.
            let _ = refuse.send(error);
            false
        }
    });
    (check, refusal)
}

fn conditional_outcome<E>(
    answer: Result<Result<Outcome, LogError>, oneshot::error::RecvError>,
    refusal: &mut oneshot::Receiver<E>,
) -> Result<Result<Vec<Envelope>, E>, LogError> {
    match answer {
        Ok(Ok(Outcome::Appended(envelopes))) => Ok(Ok(envelopes)),
        // The check sent its error before the writer answered `Refused`.
        Ok(Ok(Outcome::Refused)) => refusal.try_recv().map(Err).map_err(|_| LogError::Closed),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(LogError::Closed),
    }
}

/// The writer answers `Refused` only to a request that carried a check.
fn refused_without_check() -> LogError {
    LogError::Storage("the log writer refused an append that had no precondition".into())
}

fn find_gap(log: &dyn EventLog, last: Seq) -> Result<Seq, LogError> {
    let mut expected = Seq(1);
    while expected <= last {
        let frames = log.read_frames(expected, last, 65_536)?;
        for (key, _) in &frames {
            if *key != expected {
                return Ok(expected);
            }
            expected = expected.next();
        }
        if frames.is_empty() {
            return Ok(expected);
        }
    }
    Ok(expected)
}

struct Writer<F: Fold> {
    shared: Arc<Shared<F>>,
    requests: mpsc::Receiver<Request<F>>,
    options: JournalOptions,
    next_seq: Seq,
    /// Durable events after the newest snapshot taken (stored or pending).
    since_snapshot: u64,
    last_snapshot_bytes: u64,
    /// The state after the last commit, encoded once a snapshot was due; stored with the next
    /// commit (or on its own at close), so encoding never delays an acknowledgement.
    pending_snapshot: Option<SnapshotRecord>,
    /// A conditional request taken from the queue while a batch was being gathered: it opens
    /// the next batch, so that its check sees that batch folded.
    carried: Option<Request<F>>,
    instance: u64,
}

impl<F: Fold> Writer<F> {
    fn run(mut self) {
        // Only to wait for a request with a timeout (for the idle checkpoint).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .inspect_err(|error| {
                tracing::warn!(%error, "the log writer cannot time its waits; it checkpoints only when due and at close");
            })
            .ok();
        loop {
            let first = match self.carried.take() {
                Some(request) => request,
                None => match self.next_request(runtime.as_ref()) {
                    Some(request) => request,
                    None => break,
                },
            };
            let mut batch = vec![first];
            let mut events = batch[0].events.len();
            while events < self.options.max_batch_events {
                match self.requests.try_recv() {
                    Ok(request) if request.check.is_some() => {
                        self.carried = Some(request);
                        break;
                    }
                    Ok(request) => {
                        events += request.events.len();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
            self.take_snapshot_if_due();
            // After the acknowledgements: the callers of this batch do not wait for it.
            if self.shared.log.checkpoint_state() == CheckpointState::Due {
                self.checkpoint();
            }
        }
        self.store_pending_snapshot();
        self.checkpoint();
    }

    /// The next request, `None` once the journal is closed. While commits wait for a
    /// checkpoint, one is made when no request comes for `checkpoint_idle_ms`.
    fn next_request(&mut self, runtime: Option<&tokio::runtime::Runtime>) -> Option<Request<F>> {
        let Some(runtime) = runtime else {
            return self.requests.blocking_recv();
        };
        if self.shared.log.checkpoint_state() != CheckpointState::Clean
            && self.shared.health() == Health::Writable
        {
            let idle = Duration::from_millis(self.options.checkpoint_idle_ms);
            // Built inside `block_on`: a timer needs the runtime it runs on.
            let requests = &mut self.requests;
            match runtime.block_on(async { tokio::time::timeout(idle, requests.recv()).await }) {
                Ok(request) => return request,
                Err(_) => self.checkpoint(),
            }
        }
        runtime.block_on(self.requests.recv())
    }

    /// Makes the log's main store hold every committed event. A failure turns the journal
    /// read-only (the events are durable, but the store's state is no longer known); the
    /// projection is unchanged.
    fn checkpoint(&mut self) {
        if self.shared.health() != Health::Writable {
            return;
        }
        if let Err(error) = self.shared.log.checkpoint() {
            self.shared
                .set_read_only(format!("a checkpoint of the log failed: {error}"));
        }
    }

    fn commit_batch(&mut self, mut batch: Vec<Request<F>>) {
        if let Health::ReadOnly { reason } = self.shared.health() {
            for request in batch {
                let _ = request.reply.send(Err(LogError::ReadOnly {
                    reason: reason.clone(),
                }));
            }
            return;
        }
        // Only the first request of a batch carries a check (see `run`): everything committed
        // before it is folded, and nothing of this batch is.
        if let Some(check) = batch[0].check.take() {
            let accepted = {
                let fold = self.shared.fold.read().unwrap_or_else(|e| e.into_inner());
                catch_unwind(AssertUnwindSafe(|| check(&fold)))
            };
            match accepted {
                Ok(true) => {}
                Ok(false) => {
                    let _ = batch.remove(0).reply.send(Ok(Outcome::Refused));
                }
                Err(panic) => {
                    let _ = batch
                        .remove(0)
                        .reply
                        .send(Err(LogError::CheckPanicked(panic_message(&*panic))));
                }
            }
        }
        let now = (self.options.clock)();
        let first_seq = self.next_seq;
        let mut replies = Vec::with_capacity(batch.len());
        let mut frames = Vec::new();
        let mut envelopes_per_request = Vec::with_capacity(batch.len());
        for Request { events, reply, .. } in batch {
            let mut envelopes = Vec::with_capacity(events.len());
            for new in events {
                let seq = self.next_seq;
                self.next_seq = seq.next();
                let envelope = Envelope {
                    seq,
                    event_id: EventId(((self.instance as u128) << 64) | seq.0 as u128),
                    op_id: new.op_id,
                    cause: new.cause,
                    at_unix_ms: now,
                    schema_version: SCHEMA_VERSION,
                    event: new.event,
                };
                frames.push((seq, frame::encode(&envelope)));
                envelopes.push(envelope);
            }
            envelopes_per_request.push(envelopes);
            replies.push(reply);
        }
        if frames.is_empty() {
            for reply in replies {
                let _ = reply.send(Ok(Outcome::Appended(Vec::new())));
            }
            return;
        }
        let last_seq = Seq(self.next_seq.0 - 1);
        // No lock is held across the commit: readers keep seeing the state before this batch
        // until it is durable.
        let snapshot = self.pending_snapshot.take();
        if let Err(error) = self.shared.log.commit(&frames, snapshot.as_ref()) {
            // Nothing of this batch was folded, so the projection is still exactly the durable
            // state as of the last good commit. Whether the failed transaction reached the
            // disk is unknown, so no more appends are taken.
            self.next_seq = first_seq;
            self.shared
                .set_read_only(format!("a commit failed: {error}"));
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
        self.since_snapshot += frames.len() as u64;
        {
            let mut fold = self.shared.fold.write().unwrap_or_else(|e| e.into_inner());
            for envelope in envelopes_per_request.iter().flatten() {
                fold.apply(envelope);
            }
            // Published under the write lock, so a reader holding the projection sees
            // `last_seq` agree with it.
            self.shared.committed.send_replace(last_seq);
        }
        for (reply, envelopes) in replies.into_iter().zip(envelopes_per_request) {
            let _ = reply.send(Ok(Outcome::Appended(envelopes)));
        }
    }

    /// Encodes the projection as it is now (the state after the last commit, since only this
    /// thread changes it) when a snapshot is due, to go out with the next commit.
    fn take_snapshot_if_due(&mut self) {
        if self.pending_snapshot.is_some() || self.shared.health() != Health::Writable {
            return;
        }
        // A snapshot costs time in proportion to its size while appends wait, so a big state
        // is snapshotted less often: at least one event per 256 snapshot bytes.
        let interval = self
            .options
            .snapshot_every_events
            .max(self.last_snapshot_bytes / 256);
        if self.since_snapshot == 0 || self.since_snapshot < interval {
            return;
        }
        let bytes = self
            .shared
            .fold
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .encode_snapshot();
        self.last_snapshot_bytes = bytes.len() as u64;
        self.since_snapshot = 0;
        self.pending_snapshot = Some(SnapshotRecord {
            seq: Seq(self.next_seq.0 - 1),
            format: F::SNAPSHOT_FORMAT,
            bytes,
        });
    }

    /// At close, a snapshot still waiting for a commit is stored on its own.
    fn store_pending_snapshot(&mut self) {
        if let Some(snapshot) = self.pending_snapshot.take()
            && self.shared.health() == Health::Writable
            && let Err(error) = self.shared.log.commit(&[], Some(&snapshot))
        {
            // Only a shortcut is lost: the next open replays the events instead.
            tracing::warn!(%error, "could not store the last projection snapshot");
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Folds every stored event from scratch.
pub fn rebuild<F: Fold>(log: &dyn EventLog) -> Result<F, LogError> {
    let mut fold = F::default();
    match replay_into(log, &mut fold, Seq(1), log.last_seq()?) {
        (_, Some(error)) => Err(error),
        (_, None) => Ok(fold),
    }
}

/// Folds the stored events `from..=to` into `fold`, stopping at the first bad record. Returns
/// how many were applied and the error that stopped it, if any.
///
/// Reading and decoding run on a second thread, a few batches ahead of the fold: on a long log
/// the two cost about the same, so the pipeline nearly halves the time to rebuild.
pub fn replay_into<F: Fold>(
    log: &dyn EventLog,
    fold: &mut F,
    from: Seq,
    to: Seq,
) -> (u64, Option<LogError>) {
    const BATCH: usize = 8192;
    if from > to {
        return (0, None);
    }
    if to.0 - from.0 < BATCH as u64 {
        // A short tail is not worth a thread.
        let (batch, error) = log.read_prefix(from, to, BATCH);
        batch.iter().for_each(|envelope| fold.apply(envelope));
        return (batch.len() as u64, error);
    }
    let (batches, receive) = std::sync::mpsc::sync_channel::<(Vec<Envelope>, Option<LogError>)>(4);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut next = from;
            while next <= to {
                let (batch, error) = log.read_prefix(next, to, BATCH);
                let stop = error.is_some() || batch.is_empty();
                next = Seq(next.0 + batch.len() as u64);
                if batches.send((batch, error)).is_err() || stop {
                    break;
                }
            }
        });
        let mut applied = 0u64;
        for (batch, error) in receive {
            batch.iter().for_each(|envelope| fold.apply(envelope));
            applied += batch.len() as u64;
            if error.is_some() {
                return (applied, error);
            }
        }
        (applied, None)
    })
}

/// A live follower of the log. See [`Journal::subscribe`].
pub struct Subscription {
    log: Arc<dyn EventLog>,
    committed: watch::Receiver<Seq>,
    /// The seq of the first event not yet in `buffer` (nor delivered).
    next: Seq,
    buffer: VecDeque<Envelope>,
    /// A read of the events from `next` on, running on tokio's blocking pool. Kept here rather
    /// than in the future of `next()`, so that a `next()` dropped in a `select!` leaves it to
    /// the following call instead of losing or repeating it.
    reading: Option<tokio::task::JoinHandle<Result<Vec<Envelope>, LogError>>>,
}

impl Subscription {
    /// Most events one read of the log takes: the buffer a slow follower costs.
    const READ_BATCH: usize = 1024;

    /// The next event, waiting for it to be committed if need be. `Err(Closed)` once the
    /// journal is gone and every committed event was delivered.
    ///
    /// Cancel safe: dropping the future loses no event; the next call goes on where it was.
    /// Reading the log (redb's pages, possibly from disk) happens on tokio's blocking pool,
    /// never on the async worker that polls this, so it must be called inside a tokio runtime.
    pub async fn next(&mut self) -> Result<Envelope, LogError> {
        loop {
            if let Some(envelope) = self.buffer.pop_front() {
                return Ok(envelope);
            }
            if let Some(reading) = &mut self.reading {
                let read = reading.await;
                self.reading = None;
                let batch = read.map_err(|error| {
                    LogError::Storage(format!(
                        "reading the log for a subscription failed: {error}"
                    ))
                })??;
                let Some(last) = batch.last() else {
                    // `committed` said this seq was durable, yet the log does not have it.
                    return Err(LogError::Corrupt {
                        seq: self.next,
                        detail: "missing from the sequence".into(),
                    });
                };
                self.next = last.seq.next();
                self.buffer.extend(batch);
                continue;
            }
            let committed = *self.committed.borrow_and_update();
            if committed >= self.next {
                let (log, from) = (self.log.clone(), self.next);
                self.reading = Some(tokio::task::spawn_blocking(move || {
                    log.read(from, committed, Self::READ_BATCH)
                }));
                continue;
            }
            if self.committed.changed().await.is_err() {
                return Err(LogError::Closed);
            }
        }
    }

    /// The sequence number the next delivered event will have.
    pub fn position(&self) -> Seq {
        self.buffer
            .front()
            .map_or(self.next, |envelope| envelope.seq)
    }
}
