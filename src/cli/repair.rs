//! `banger events repair`: a way forward from a damaged event log.
//!
//! A log with a damaged record makes bangerd read-only for good (it names the bad sequence
//! number and refuses every write). This command keeps every intact event before the damage
//! in a new log, records a `LogRepaired` event at the first lost seq (the lost range, the
//! reason, where the damaged file went), and keeps the damaged file byte for byte under a
//! timestamped name beside the log. The work is [`banger_events::repair`]; this module finds
//! the log, makes sure no bangerd owns it, names the backup and says what happened.
//!
//! Invariants:
//! - It never runs beside a bangerd: it takes bangerd's own pid lock (the flock on
//!   `bangerd.pid`) and holds it until it is done, so no bangerd can start meanwhile either
//!   (one started by another banger command fails at its lock and is started again later).
//! - It never changes an intact log, and never writes the damaged file.

use std::path::{Path, PathBuf};

use banger_events::repair::{self, Diagnosis, Outcome, RepairOptions};
use banger_events::{Event, Seq};
use serde::Serialize;

use super::args::RepairArgs;
use super::connect::layout;
use super::error::CliError;
use super::events::lost_range;
use super::format::{format_timestamp, now_unix_ms};
use super::output::{json, line};
use crate::daemon::DaemonError;
use crate::daemon::lock::PidLock;

/// What `--json` prints.
#[derive(Serialize)]
struct Report {
    log: String,
    /// `intact`, `damaged` (with --dry-run) or `repaired`.
    status: &'static str,
    /// Events in the log (intact), or kept before the damage.
    kept: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_lost_seq: Option<Seq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_stored_seq: Option<Seq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backup: Option<String>,
    /// The damaged log's write-ahead file, kept beside its backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    backup_write_ahead: Option<String>,
}

pub fn run(args: RepairArgs) -> Result<(), CliError> {
    let layout = layout()?;
    let log = layout.log_path();
    if !log.exists() {
        return Err(CliError::Usage(format!(
            "there is no event log at {}; nothing to repair (is BANGER_ROOT pointing at the right place?)",
            log.display()
        )));
    }
    // Held to the end: no bangerd may use the log while it is read, copied and replaced.
    let _lock = PidLock::acquire(&layout.daemon_lock_path(), &layout.state_dir).map_err(
        |error| match error {
            DaemonError::AlreadyRunning { pid, .. } => {
                let pid = pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"));
                CliError::message(format!(
                    "bangerd is running ({pid}) and owns the event log; stop it first (SIGTERM stops it cleanly: `kill <pid>`), then run `banger events repair` again"
                ))
            }
            other => CliError::failed("cannot take bangerd's lock", other),
        },
    )?;
    let report = if args.dry_run {
        let diagnosis = repair::diagnose(&log).map_err(|error| failed(&log, error))?;
        match diagnosis {
            Diagnosis::Intact { events } => intact(&log, events),
            Diagnosis::Damaged(damage) => Report {
                log: log.display().to_string(),
                status: "damaged",
                kept: damage.kept(),
                first_lost_seq: Some(damage.first_lost_seq),
                last_stored_seq: damage.last_stored_seq,
                reason: Some(damage.reason),
                backup: None,
                backup_write_ahead: None,
            },
        }
    } else {
        let now = now_unix_ms();
        let backup = backup_path(&log, now);
        let options = RepairOptions {
            now_unix_ms: now,
            id_seed: None,
        };
        match repair::repair(&log, &backup, options).map_err(|error| failed(&log, error))? {
            Outcome::Intact { events } => intact(&log, events),
            Outcome::Repaired(repaired) => {
                debug_assert!(matches!(repaired.event.event, Event::LogRepaired(_)));
                Report {
                    log: log.display().to_string(),
                    status: "repaired",
                    kept: repaired.damage.kept(),
                    first_lost_seq: Some(repaired.damage.first_lost_seq),
                    last_stored_seq: repaired.damage.last_stored_seq,
                    reason: Some(repaired.damage.reason.clone()),
                    backup: Some(repaired.backup_path.display().to_string()),
                    backup_write_ahead: repaired
                        .backup_write_ahead_path
                        .as_ref()
                        .map(|path| path.display().to_string()),
                }
            }
        }
    };
    if args.json {
        return json(&report);
    }
    line(render(&report))
}

fn failed(log: &Path, error: repair::RepairError) -> CliError {
    CliError::failed(
        format!("cannot repair the event log {}", log.display()),
        error,
    )
}

fn intact(log: &Path, events: u64) -> Report {
    Report {
        log: log.display().to_string(),
        status: "intact",
        kept: events,
        first_lost_seq: None,
        last_stored_seq: None,
        reason: None,
        backup: None,
        backup_write_ahead: None,
    }
}

/// `events.redb.damaged-20260428T193257Z` beside the log, with `-2`, `-3`… when a repair in
/// the same second already took the name.
fn backup_path(log: &Path, now_unix_ms: u64) -> PathBuf {
    // 2026-04-28T19:32:57.123Z → 20260428T193257Z
    let stamp: String = format_timestamp(now_unix_ms)
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let base = format!("{}.damaged-{stamp}Z", log.display());
    (1..)
        .map(|n| match n {
            1 => PathBuf::from(&base),
            n => PathBuf::from(format!("{base}-{n}")),
        })
        .find(|candidate| {
            // The backup's write-ahead file takes the name with `.wal` after it.
            std::fs::symlink_metadata(candidate).is_err()
                && std::fs::symlink_metadata(banger_events::wal::path_for(candidate)).is_err()
        })
        .unwrap_or_else(|| PathBuf::from(base))
}

fn render(report: &Report) -> String {
    let seq_range = |kept: u64| match kept {
        0 => "no event".to_owned(),
        1 => "seq 1 (1 event)".to_owned(),
        n => format!("seq 1..{n} ({n} events)"),
    };
    match (report.status, report.first_lost_seq) {
        ("intact", _) | (_, None) => format!(
            "the event log {} is intact ({}); nothing to repair",
            report.log,
            seq_range(report.kept)
        ),
        (status, Some(first)) => {
            let lost = lost_range(first, report.last_stored_seq);
            let reason = report.reason.as_deref().unwrap_or("damaged");
            let mut text = format!("the event log {} is damaged: {reason}\n", report.log);
            if status == "damaged" {
                text.push_str(&format!(
                    "a repair would keep {} and record that it {lost}; run `banger events repair` to do it (the damaged file is kept)",
                    seq_range(report.kept)
                ));
            } else {
                let mut backup = report.backup.as_deref().unwrap_or("?").to_owned();
                if let Some(write_ahead) = &report.backup_write_ahead {
                    backup.push_str(&format!(" (its write-ahead file at {write_ahead})"));
                }
                text.push_str(&format!(
                    "kept {} in a new log at {}\n{lost}: seq {first} is now a log_repaired event that says so\nthe damaged file is kept, unchanged, at {backup}\nnext: start bangerd (any banger command starts it); it rolls back or finishes the operations whose ends were lost, and `banger doctor` lists what they left on the host",
                    seq_range(report.kept),
                    report.log
                ));
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_are_named_by_the_time_and_never_reuse_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.redb");
        let at = 1_777_404_777_123;
        let first = backup_path(&log, at);
        assert_eq!(
            first.file_name().unwrap(),
            "events.redb.damaged-20260428T193257Z"
        );
        std::fs::write(&first, b"taken").unwrap();
        let second = backup_path(&log, at);
        assert_eq!(
            second.file_name().unwrap(),
            "events.redb.damaged-20260428T193257Z-2"
        );
    }
}
