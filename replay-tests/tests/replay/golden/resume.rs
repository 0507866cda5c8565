//! The resume payloads that roll-forward operations record in their parameters, pinned in
//! `golden/resume-parameters.pins`: every version this build writes (exact text, both ways)
//! and every form older builds wrote (text copied from what those builds produced; today's
//! decoder must still read it to the same value). See `banger_events::resume`.

use banger_events::*;

use super::pins::{Sample, verify};

const HEADER: &str = "\
# Parameters that vm.stop, vm.kill and vm.delete record in OperationStarted for crash recovery to
# roll them forward (banger_events::resume). Checked by replay-tests/tests/replay/golden/resume.rs.
# `bare/…` lines are the unversioned JSON of older builds: `bare/…` as 9e645ed's
# StopState::parameters printed it (the layout since 21cf73a), `bare-before-taps/…` the same
# state in the layout of c180c04 up to 21cf73a (its StopState had no `tap`). No build writes
# them any more, so blessing cannot add them, but logs in the wild hold them and they must keep
# decoding. BANGER_BLESS=1 only appends lines for new versions; never edit a line.
";

const WEB: VmId = VmId(0x57eb_0001);
const DB: VmId = VmId(0xdb00_0002);
const API: VmId = VmId(0x0a91_0003);

/// Three stops that between them use every field and every `None`.
fn stops() -> [(&'static str, StopResumeV1); 3] {
    [
        (
            "web",
            StopResumeV1 {
                vm_id: WEB,
                name: "web".into(),
                from: VmState::Running,
                process: Some(RecordedProcess {
                    pid: 1_200,
                    start_time_ticks: 4_000,
                }),
                stop_timeout_ms: 30_000,
                reason: None,
                tap: Some("bt57eb0001".into()),
            },
        ),
        (
            "db-idle",
            StopResumeV1 {
                vm_id: DB,
                name: "db".into(),
                from: VmState::Running,
                process: Some(RecordedProcess {
                    pid: 1_300,
                    start_time_ticks: 4_400,
                }),
                stop_timeout_ms: 10_000,
                reason: Some("idle for 30m".into()),
                tap: None,
            },
        ),
        (
            "api-failed",
            StopResumeV1 {
                vm_id: API,
                name: "api".into(),
                from: VmState::Failed,
                process: None,
                stop_timeout_ms: 0,
                reason: None,
                tap: Some("bt0a910003".into()),
            },
        ),
    ]
}

/// A sample whose pinned text must decode to `expected`; `written` is today's text for it,
/// `None` for a form only older builds wrote.
fn sample(label: String, expected: ResumePayload, written: Option<String>) -> Sample {
    Sample {
        label,
        encoded: written,
        check: Box::new(move |pinned| match ResumePayload::decode(pinned) {
            Ok(decoded) if decoded == expected => Ok(()),
            Ok(decoded) => Err(format!("decodes to {decoded:?}, not {expected:?}")),
            Err(error) => Err(format!("no longer decodes: {error}")),
        }),
    }
}

fn samples() -> Vec<Sample> {
    let mut all = Vec::new();
    // Builds before VMs had taps wrote no `tap`: it reads as `None`.
    let (_, web) = &stops()[0];
    all.push(sample(
        "bare-before-taps/web".into(),
        ResumePayload::StopV1(StopResumeV1 {
            tap: None,
            ..web.clone()
        }),
        None,
    ));
    for (name, stop) in stops() {
        all.push(sample(
            format!("bare/{name}"),
            ResumePayload::StopV1(stop.clone()),
            None,
        ));
    }
    for (name, stop) in stops() {
        let payload = ResumePayload::StopV1(stop);
        all.push(sample(
            format!("stop.v1/{name}"),
            payload.clone(),
            Some(payload.encode()),
        ));
    }
    all
}

/// Every resume payload this build writes is pinned to the byte, and every form that older
/// builds wrote still decodes to the same state.
fn resume_parameters_of_every_version_and_of_older_builds_decode_as_pinned() {
    verify(
        &super::golden_dir().join("resume-parameters.pins"),
        HEADER,
        &samples(),
    );
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(super) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync resume_parameters_of_every_version_and_of_older_builds_decode_as_pinned,
    ]
}
