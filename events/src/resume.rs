//! Resume payloads: what an operation that crash recovery rolls *forward* records at its start,
//! so that a restarted bangerd can run the rest of it from the log alone.
//!
//! A payload travels in [`OperationStarted::parameters`](crate::OperationStarted), which is a
//! string, so the event's own layout is untouched. It is JSON, like every operation's
//! parameters, so that `banger ops` and `banger events` show it to people as it is.
//!
//! # Format
//!
//! ```text
//!  {"resume":"stop.v1","vm_id":"0000000057eb0001","name":"web",…}
//!             └──┬──┘  └────────────────────┬────────────────────┘
//!  which payload, which version    exactly the fields of that version
//! ```
//!
//! The tag sits beside the fields rather than around them, so the payload is the object older
//! builds wrote plus one key, and whoever reads a field of it (`banger ops --json`, a test
//! looking for `stop_timeout_ms`) finds it where it always was.
//!
//! | tag       | payload           | written by                         |
//! |-----------|-------------------|------------------------------------|
//! | `stop.v1` | [`StopResumeV1`]  | `vm.stop`, `vm.kill`, `vm.delete`  |
//!
//! Builds before this format wrote the bare stop state instead: the same fields with no `resume`
//! key (the oldest without `tap`). Logs in the wild hold it, so [`ResumePayload::decode`] still
//! reads it — a JSON object without a `resume` key — and converts it to `stop.v1` on read.
//!
//! Kinds that roll forward from their target alone (`kernel.remove`, `image.delete`) record no
//! payload: their parameters are for people only.
//!
//! Invariants (this is persisted schema, like the events):
//! - A version's tag, field names and field meanings never change, and a version is never
//!   removed. A new field or meaning is a new version (`stop.v2`, a `StopResumeV2` struct, a
//!   new variant at the end of [`ResumePayload`]) and [`ResumePayload::upgrade`] converts the
//!   older ones, so that nothing past the decoder sees an old version.
//! - A tagged payload has exactly its version's fields: an unknown tag or field is an error
//!   that names it (a newer banger wrote it), never silently dropped.
//! - Decoding never panics and its error says what did not decode, so that recovery can record
//!   why an operation could not be resumed.
//! - `replay-tests/golden/resume-parameters.pins` holds the exact text of every version and of
//!   the legacy form; the golden test fails when one stops decoding to the same value.

use serde::{Deserialize, Serialize};

use crate::event::VmState;
use crate::ids::VmId;

/// The JSON key that marks a versioned payload (and names its version).
pub const RESUME_TAG: &str = "resume";

/// Every resume payload version this build can read, tagged by a `resume` key beside its fields
/// (see the module documentation). Only ever gains variants, at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "resume")]
pub enum ResumePayload {
    /// A VM being stopped, killed or deleted.
    #[serde(rename = "stop.v1")]
    StopV1(StopResumeV1),
}

/// What `vm.stop`, `vm.kill` and `vm.delete` need to finish: the VM, the process to end and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopResumeV1 {
    pub vm_id: VmId,
    pub name: String,
    /// The state the VM was in when the operation began.
    pub from: VmState,
    /// The VMM process to end, when the VM had one.
    pub process: Option<RecordedProcess>,
    /// How long the guest may take to power off before its VMM is killed.
    pub stop_timeout_ms: u64,
    /// Why (auto-stop says "idle for …"); `None` when a user asked.
    pub reason: Option<String>,
    /// The VM's tap, from the ledger; `None` when it had none.
    pub tap: Option<String>,
}

/// A process as the log recorded it: the pid, and its start time (clock ticks since boot) that
/// tells a reused pid apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedProcess {
    pub pid: u32,
    pub start_time_ticks: u64,
}

/// The parameters `vm.stop`, `vm.kill` and `vm.delete` recorded before payloads had versions:
/// the bare stop state. Read only; `reason` and `tap` are absent in the oldest logs, and unknown
/// fields were ignored then, so they are now.
#[derive(Deserialize)]
struct LegacyStopState {
    vm_id: VmId,
    name: String,
    from: VmState,
    process: Option<LegacyProcess>,
    stop_timeout_ms: u64,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    tap: Option<String>,
}

#[derive(Deserialize)]
struct LegacyProcess {
    pid: u32,
    start_time_ticks: u64,
}

impl From<LegacyStopState> for StopResumeV1 {
    fn from(old: LegacyStopState) -> Self {
        StopResumeV1 {
            vm_id: old.vm_id,
            name: old.name,
            from: old.from,
            process: old.process.map(|p| RecordedProcess {
                pid: p.pid,
                start_time_ticks: p.start_time_ticks,
            }),
            stop_timeout_ms: old.stop_timeout_ms,
            reason: old.reason,
            tap: old.tap,
        }
    }
}

/// Why recorded parameters are not a resume payload. The message names the underlying JSON
/// error, so that a stuck operation says what was wrong with its log.
#[derive(Debug, thiserror::Error)]
pub enum ResumeDecodeError {
    #[error("the parameters are not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("the parameters are JSON but not an object")]
    NotAnObject,
    #[error("the resume payload does not decode: {0}")]
    Versioned(#[source] serde_json::Error),
    #[error("the stop parameters (written before resume payloads had versions) do not decode: {0}")]
    Legacy(#[source] serde_json::Error),
}

impl ResumePayload {
    /// The JSON this build records in `OperationStarted.parameters`.
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and there is no
        // custom serializer that errors. An empty string would still be refused on read.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads recorded parameters: a versioned payload, or the bare stop state of older builds
    /// (converted). The result is upgraded to the newest version of its payload.
    pub fn decode(parameters: &str) -> Result<ResumePayload, ResumeDecodeError> {
        let value: serde_json::Value =
            serde_json::from_str(parameters).map_err(ResumeDecodeError::NotJson)?;
        let Some(object) = value.as_object() else {
            return Err(ResumeDecodeError::NotAnObject);
        };
        let payload = if object.contains_key(RESUME_TAG) {
            serde_json::from_value::<ResumePayload>(value).map_err(ResumeDecodeError::Versioned)?
        } else {
            let legacy = serde_json::from_value::<LegacyStopState>(value)
                .map_err(ResumeDecodeError::Legacy)?;
            ResumePayload::StopV1(legacy.into())
        };
        Ok(payload.upgrade())
    }

    /// Converts a superseded version into the newest one of the same payload. Nothing is
    /// superseded yet; `stop.v2`, when it comes, turns `StopV1` into `StopV2` here.
    pub fn upgrade(self) -> ResumePayload {
        match self {
            current @ ResumePayload::StopV1(_) => current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> StopResumeV1 {
        StopResumeV1 {
            vm_id: VmId(0x57eb_0001),
            name: "web".into(),
            from: VmState::Running,
            process: Some(RecordedProcess {
                pid: 1_200,
                start_time_ticks: 4_000,
            }),
            stop_timeout_ms: 30_000,
            reason: None,
            tap: Some("bt57eb0001".into()),
        }
    }

    #[test]
    fn a_payload_reads_back_as_written() {
        let payload = ResumePayload::StopV1(web());
        let text = payload.encode();
        assert_eq!(
            text,
            r#"{"resume":"stop.v1","vm_id":"0000000057eb0001","name":"web","from":"running","process":{"pid":1200,"start_time_ticks":4000},"stop_timeout_ms":30000,"reason":null,"tap":"bt57eb0001"}"#
        );
        assert_eq!(ResumePayload::decode(&text).unwrap(), payload);
    }

    #[test]
    fn the_bare_stop_state_of_older_builds_still_reads() {
        // Written by builds before resume payloads had versions (the exact text is pinned in
        // replay-tests/golden/resume-parameters.pins).
        let legacy = r#"{"vm_id":"0000000057eb0001","name":"web","from":"running","process":{"pid":1200,"start_time_ticks":4000},"stop_timeout_ms":30000,"reason":null,"tap":"bt57eb0001"}"#;
        assert_eq!(
            ResumePayload::decode(legacy).unwrap(),
            ResumePayload::StopV1(web())
        );
    }

    /// Each kind of damage gets an error that names what is wrong, never a panic.
    #[test]
    fn damage_is_named() {
        let cases: [(&str, &str); 7] = [
            ("", "not JSON: EOF while parsing a value"),
            (r#"{"vm_id":"#, "not JSON: EOF while parsing a value"),
            ("[1,2]", "JSON but not an object"),
            (
                r#"{"resume":"stop.v9"}"#,
                "unknown variant `stop.v9`, expected `stop.v1`",
            ),
            (r#"{"resume":"stop.v1"}"#, "missing field `vm_id`"),
            (
                r#"{"resume":"stop.v1","vm_id":"1","name":"a","from":"running","process":null,"stop_timeout_ms":0,"reason":null,"tap":null,"disk":1}"#,
                "unknown field `disk`",
            ),
            (
                r#"{"vm_id":"zz","name":"a","from":"running","process":null,"stop_timeout_ms":0}"#,
                "(written before resume payloads had versions) do not decode: \"zz\" is not a valid VmId",
            ),
        ];
        for (text, expected) in cases {
            let error = ResumePayload::decode(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
