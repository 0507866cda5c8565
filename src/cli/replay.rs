//! `banger events replay`: rebuild the views from a log file, offline, up to a sequence number.
//!
//! No daemon is involved: the file is opened directly and events `1..=until` are folded into a
//! fresh [`Projections`], exactly as bangerd folds them. Because the fold is pure, the same
//! file and `--until` always print the same views, which makes this the tool for deterministic
//! debugging ("what did banger believe just before seq 120?").
//!
//! redb allows one process per file, so the live log of a running bangerd cannot be opened:
//! the error says to stop bangerd or to replay a copy. Opening a file stamps its schema version
//! in a no-op transaction, which is why replaying a copy is the habit to recommend.

use std::path::Path;

use banger_events::{EventLog, Fold, LogError, RedbLog, Seq};
use banger_projections::Projections;
use serde::Serialize;

use super::args::ReplayArgs;
use super::error::CliError;
use super::output::{json, out};
use super::views::{When, handle_table, image_table, kernel_table, operation_table, vm_table};

/// Events read per batch: bounded memory on a long log.
const BATCH: usize = 4096;

pub fn run(args: ReplayArgs) -> Result<(), CliError> {
    let replay = replay(&args.log, args.until)?;
    if args.json {
        return json(&replay);
    }
    out(render(&replay))
}

/// The views at one point of a log, and where that point is.
#[derive(Serialize)]
pub struct Replay {
    pub log: String,
    /// The highest sequence number in the file.
    pub log_last_seq: Seq,
    /// The views, folded from events `1..=last_seq` (`last_seq` is the replay's end point).
    #[serde(flatten)]
    pub state: Projections,
}

pub fn replay(path: &Path, until: Option<u64>) -> Result<Replay, CliError> {
    if !path.is_file() {
        return Err(CliError::Usage(format!(
            "no event log file at {}",
            path.display()
        )));
    }
    let log = RedbLog::open(path).map_err(|error| open_error(path, error))?;
    let read_error = |error: LogError| {
        CliError::failed(
            format!("cannot read the event log {}", path.display()),
            error,
        )
    };
    let last = log.last_seq().map_err(read_error)?;
    let end = until.map_or(last, |until| Seq(until).min(last));
    let mut state = Projections::default();
    let mut next = Seq(1);
    while next <= end {
        let batch = log.read(next, end, BATCH).map_err(read_error)?;
        let Some(newest) = batch.last() else { break };
        next = newest.seq.next();
        for envelope in &batch {
            state.apply(envelope);
        }
    }
    Ok(Replay {
        log: path.display().to_string(),
        log_last_seq: last,
        state,
    })
}

fn open_error(path: &Path, error: LogError) -> CliError {
    match error {
        LogError::Locked => CliError::message(format!(
            "{path} is open in a running bangerd (redb lets only one process open a log file): stop bangerd, or replay a copy: `cp {path} /tmp/events.redb && banger events replay --log /tmp/events.redb` (a copy holds the events up to bangerd's last checkpoint, made a moment after the last change)",
            path = path.display()
        )),
        other => CliError::failed(
            format!("cannot open the event log {}", path.display()),
            other,
        ),
    }
}

fn render(replay: &Replay) -> String {
    let state = &replay.state;
    let mut text = format!(
        "replayed events 1..={} of {} from {}\n",
        state.last_seq, replay.log_last_seq, replay.log
    );
    let mut section = |title: &str, table: Option<String>| {
        text.push_str(&format!("\n{title}:\n"));
        match table {
            Some(table) => text.push_str(&table),
            None => text.push_str("(none)\n"),
        }
    };
    let non_empty = |table: super::format::Table| (!table.is_empty()).then(|| table.render());
    section("VMs", non_empty(vm_table(state.vms.values(), When::Seq)));
    section(
        "Images",
        non_empty(image_table(state.images.values(), When::Seq)),
    );
    section(
        "Kernels",
        non_empty(kernel_table(state.kernels.values(), When::Seq)),
    );
    section(
        "Handles",
        non_empty(handle_table(
            state
                .handles
                .iter()
                .map(|(handle, view)| (handle, view.owner, view.acquired_seq)),
            Some(&state.vms),
        )),
    );
    // Oldest first: the order they happened in.
    let mut ops: Vec<_> = state.operations.values().collect();
    ops.sort_by_key(|op| (op.started_seq, op.op_id));
    section("Operations", non_empty(operation_table(ops, When::Seq)));
    text
}
