//! The daemon view: which daemon last started (its host boot id, version and pid) and whether
//! it said it stopped.
//!
//! Recovery reads it *before* the new daemon appends its own `DaemonStarted`: a boot id that
//! differs from the host's current one means the host rebooted, so no process recorded in the
//! log can still be alive. A start with no `stopped` means that daemon crashed (or was killed).

use banger_events::{DaemonStarted, DaemonStopped, Seq};
use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::Projections;

/// The last `DaemonStarted`, and its `DaemonStopped` if one followed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct DaemonView {
    /// /proc/sys/kernel/random/boot_id of the host that daemon ran on.
    pub boot_id: String,
    pub version: String,
    pub pid: u32,
    /// Sequence number of the `DaemonStarted`.
    pub seq: Seq,
    pub started_at_unix_ms: u64,
    /// Set when that daemon recorded a clean stop.
    pub stopped: Option<DaemonStopView>,
}

/// A recorded daemon stop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct DaemonStopView {
    pub reason: String,
    pub seq: Seq,
    pub at_unix_ms: u64,
}

impl Projections {
    pub(crate) fn daemon_started(&mut self, seq: Seq, at: u64, e: &DaemonStarted) {
        self.daemon = Some(DaemonView {
            boot_id: e.boot_id.clone(),
            version: e.version.clone(),
            pid: e.pid,
            seq,
            started_at_unix_ms: at,
            stopped: None,
        });
    }

    pub(crate) fn daemon_stopped(&mut self, seq: Seq, at: u64, e: &DaemonStopped) {
        // A stop with no start before it says nothing about any daemon we know of.
        if let Some(daemon) = self.daemon.as_mut() {
            daemon.stopped = Some(DaemonStopView {
                reason: e.reason.clone(),
                seq,
                at_unix_ms: at,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testkit::*;
    use banger_events::*;

    #[test]
    fn last_start_wins_and_stop_is_noted() {
        let mut log = Log::new();
        log.push(
            None,
            Event::DaemonStopped(DaemonStopped {
                reason: "early".into(),
            }),
        );
        assert!(log.fold().daemon.is_none());

        log.push(None, daemon_started("boot-a"));
        log.push(
            None,
            Event::DaemonStopped(DaemonStopped {
                reason: "sigterm".into(),
            }),
        );
        let state = log.fold();
        let daemon = state.daemon.as_ref().unwrap();
        assert_eq!(daemon.boot_id, "boot-a");
        assert_eq!(
            daemon.stopped.as_ref().map(|s| s.reason.as_str()),
            Some("sigterm")
        );

        let seq = log.push(None, daemon_started("boot-b"));
        let state = log.fold();
        let daemon = state.daemon.as_ref().unwrap();
        assert_eq!(
            (daemon.boot_id.as_str(), daemon.pid, daemon.seq),
            ("boot-b", 100, seq)
        );
        assert!(daemon.stopped.is_none(), "the new daemon has not stopped");
    }
}
