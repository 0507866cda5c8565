//! banger's event log.
//!
//! Every step of every operation, and every fact about VMs, images, kernels and host handles,
//! is a typed [`Event`] appended to an append-only log. This crate owns:
//! - the event types and their [`Envelope`] ([`event`]),
//! - the stored frame format with its crc32 ([`frame`]),
//! - the [`EventLog`] storage trait with a redb implementation ([`RedbLog`], with its
//!   write-ahead file: [`wal`]) and an in-memory one ([`MemoryLog`]),
//! - [`repair`]: a damaged log's intact prefix carried into a new log, the damaged file kept;
//! - the resume payloads that roll-forward operations record ([`resume`]),
//! - the [`Journal`]: the single group-committing writer, the projection it keeps current and
//!   snapshots, and live [`Subscription`]s.
//!
//! It depends on no other banger crate and does no IO besides the log file and its write-ahead
//! file.

pub mod event;
pub mod frame;
pub mod ids;
pub mod journal;
pub mod log;
pub mod memory;
pub mod redb_log;
pub mod repair;
pub mod resume;
pub mod wal;

pub use event::*;
pub use ids::{EventId, IdGenerator, OpId, ParseIdError, Seq, VmId};
pub use journal::{
    Clock, Fold, Health, Journal, JournalOptions, NewEvent, NoFold, OpenReport, Subscription,
    rebuild, replay_into,
};
pub use log::{CheckpointState, EventLog, LogError, SnapshotRecord, decode_checked};
pub use memory::MemoryLog;
pub use redb_log::{RedbLog, RedbOptions};
pub use resume::{RecordedProcess, ResumeDecodeError, ResumePayload, StopResumeV1};
