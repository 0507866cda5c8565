//! The `ssh-setup` step of `vm.create` and `vm.start`, after `wait-for-agent`: banger's public
//! key installed in the guest and the guest's ssh host key learned, so that `banger vm ssh`
//! uses a key the guest accepts and a host key banger knows (never trusted on first use).
//!
//! | step        | intent | ensure                                                                 | undo    |
//! |-------------|--------|------------------------------------------------------------------------|---------|
//! | `ssh-setup` | —      | best effort: the agent's `--ssh-setup root` with banger's public key on | nothing |
//! |             |        | stdin; the host key it reports is checked and, when the VM has none    |         |
//! |             |        | recorded, kept for the operation's success (`VmHostKeyRecorded`)       |         |
//!
//! Best effort like `vm.stop`'s `sync-guest`: whatever goes wrong (an agent older than the
//! tool, an image without sshd, a key that will not decode, a timeout) is a warning in
//! bangerd's log and a line in `vm show`, never a failed boot. The step changes nothing on the
//! host, so it has no undo and a crash anywhere in it needs nothing rolled back beyond what
//! the boot's other steps undo.
//!
//! ```text
//!  agent report ── no sshd ─────────────────────────────▶ NoSshd
//!        │ host keys
//!        ▼
//!  recorded key? ── none ──▶ record the preferred key with the success ─▶ Ready
//!        │ some
//!        ├── the guest still presents it ─────────────────────────────▶ Ready
//!        └── it does not ──▶ not recorded, warning ────────────────────▶ HostKeyChanged
//! ```
//!
//! The outcome is kept in memory ([`SshStatuses`]) for `vm show`; the log holds only the key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use banger_events::{Handle, VmHostKeyRecorded, VmId};

use super::vm_common::{BootState, agent_endpoint};
use super::{BoxFuture, OpCx, Step, StepError};
use crate::agent::client::AgentClient;
use crate::agent::protocol::{ExecRequest, ExitStatus, MIN_PROTOCOL_VERSION, StdinMode};
use crate::agent::tool_ssh::SshSetupReport;
use crate::api::VmSshStatus;
use crate::host::ssh::{SshFiles, choose_host_key};

/// The guest user banger's key is installed for.
pub const GUEST_USER: &str = "root";

/// How long the whole setup may take: generating missing host keys (RSA above all) under
/// software emulation takes seconds.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The most bytes of the tool's output kept (its report is a few hundred).
const MAX_REPORT_BYTES: usize = 256 * 1024;

/// What the latest boot of each VM said about ssh, while this bangerd runs.
#[derive(Debug, Default)]
pub struct SshStatuses {
    by_vm: Mutex<HashMap<VmId, VmSshStatus>>,
}

impl SshStatuses {
    pub fn status(&self, vm_id: VmId) -> Option<VmSshStatus> {
        self.by_vm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&vm_id)
            .cloned()
    }

    pub fn set(&self, vm_id: VmId, status: VmSshStatus) {
        self.by_vm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm_id, status);
    }

    /// Forgets VMs that are gone.
    pub fn retain(&self, live: impl Fn(VmId) -> bool) {
        self.by_vm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|vm_id, _| live(*vm_id));
    }
}

pub struct SshSetup;

impl Step<BootState> for SshSetup {
    fn name(&self) -> &'static str {
        "ssh-setup"
    }

    fn intent(&self, _: &OpCx<'_>, _: &BootState) -> Vec<Handle> {
        Vec::new()
    }

    fn ensure<'a>(
        &'a self,
        cx: &'a OpCx<'a>,
        state: &'a mut BootState,
    ) -> BoxFuture<'a, Result<Vec<Handle>, StepError>> {
        Box::pin(async move {
            let report = match tokio::time::timeout(SETUP_TIMEOUT, run_tool(cx, state)).await {
                Ok(report) => report,
                Err(_) => Err(format!(
                    "the guest's ssh setup did not finish within {} s",
                    SETUP_TIMEOUT.as_secs()
                )),
            };
            let recorded = state
                .host
                .journal
                .view()
                .vms
                .get(&state.vm_id)
                .and_then(|vm| vm.host_key.clone());
            let (status, record) = decide(state.vm_id, report, recorded.as_ref());
            match &status {
                VmSshStatus::Failed { reason } => {
                    tracing::warn!(vm = %state.name, %reason, "ssh setup failed; the VM boots without it")
                }
                VmSshStatus::HostKeyChanged {
                    recorded_sha256,
                    presented_sha256,
                } => tracing::warn!(
                    vm = %state.name,
                    recorded = %recorded_sha256,
                    presented = %presented_sha256,
                    "the guest presents another ssh host key than the one recorded; it is not recorded, and ssh will refuse it"
                ),
                VmSshStatus::NoSshd => {
                    tracing::info!(vm = %state.name, "the image has no sshd; ssh is not set up")
                }
                VmSshStatus::Ready { .. } => {}
            }
            state.host.ssh.set(state.vm_id, status);
            state.host_key = record;
            Ok(Vec::new())
        })
    }

    fn undo<'a>(
        &'a self,
        _: &'a OpCx<'a>,
        _: &'a [Handle],
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async { Ok(()) })
    }
}

/// What the boot makes of the tool's report, given the key the VM has recorded: the status
/// to show and the key to record with the boot's success, if any.
pub fn decide(
    vm_id: VmId,
    report: Result<SshSetupReport, String>,
    recorded: Option<&banger_projections::HostKeyView>,
) -> (VmSshStatus, Option<VmHostKeyRecorded>) {
    let report = match report {
        Ok(report) => report,
        Err(reason) => return (VmSshStatus::Failed { reason }, None),
    };
    if !report.sshd_installed {
        return (VmSshStatus::NoSshd, None);
    }
    let ready = |fingerprint_sha256: String| VmSshStatus::Ready {
        user: report.user.clone(),
        fingerprint_sha256,
    };
    if let Some(recorded) = recorded {
        let still = report.host_keys.iter().any(|key| {
            key.algorithm == recorded.algorithm && key.public_key == recorded.public_key
        });
        if still {
            return (ready(recorded.fingerprint_sha256.clone()), None);
        }
        let presented = choose_host_key(&report.host_keys)
            .map(|(_, fingerprint)| fingerprint)
            .unwrap_or_else(|| "none".to_owned());
        return (
            VmSshStatus::HostKeyChanged {
                recorded_sha256: recorded.fingerprint_sha256.clone(),
                presented_sha256: presented,
            },
            None,
        );
    }
    match choose_host_key(&report.host_keys) {
        Some((key, fingerprint)) => (
            ready(fingerprint.clone()),
            Some(VmHostKeyRecorded {
                vm_id,
                algorithm: key.algorithm.clone(),
                public_key: key.public_key.clone(),
                fingerprint_sha256: fingerprint,
            }),
        ),
        None => {
            let why = report
                .host_key_warning
                .clone()
                .unwrap_or_else(|| "none of its keys is one banger records".to_owned());
            (
                VmSshStatus::Failed {
                    reason: format!("the guest's sshd has no usable host key ({why})"),
                },
                None,
            )
        }
    }
}

/// Runs `--ssh-setup` in the guest with banger's public key on its stdin.
async fn run_tool(cx: &OpCx<'_>, state: &BootState) -> Result<SshSetupReport, String> {
    let files = SshFiles::new(&state.host.layout);
    let public_key = tokio::task::spawn_blocking(move || files.ensure_key_pair())
        .await
        .map_err(|e| format!("the key pair task failed: {e}"))?
        .map_err(|e| format!("banger's ssh key: {e}"))?;
    let endpoint = agent_endpoint(cx.layout, state.vm_id, cx.vmm.agent_transport());
    let stream = cx
        .agents
        .connect(&endpoint, Duration::from_secs(5))
        .await
        .map_err(|e| format!("cannot reach the guest agent: {e}"))?;
    let mut client = AgentClient::handshake_as(stream, "bangerd", MIN_PROTOCOL_VERSION)
        .await
        .map_err(|e| format!("the guest agent's hello: {e}"))?;
    let request = ExecRequest {
        argv: vec![
            "/proc/self/exe".into(),
            "--ssh-setup".into(),
            GUEST_USER.into(),
        ],
        env: Default::default(),
        cwd: None,
        stdin: StdinMode::Pipe,
        tty: None,
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let input = format!("{public_key}\n");
    let status = client
        .exec_with(&request, Some(input.as_bytes()), |stream, chunk| {
            let out = match stream {
                crate::agent::client::OutputStream::Stdout => &mut stdout,
                crate::agent::client::OutputStream::Stderr => &mut stderr,
            };
            let room = MAX_REPORT_BYTES.saturating_sub(out.len());
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        })
        .await
        .map_err(|e| format!("running the agent's --ssh-setup: {e}"))?;
    let stderr = String::from_utf8_lossy(&stderr);
    if status != ExitStatus::Code(0) {
        if stderr.contains("unexpected argument \"--ssh-setup\"") {
            return Err(
                "this VM's agent is older than banger's ssh support; re-pull its image".into(),
            );
        }
        let said = stderr
            .lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("no reason given");
        return Err(format!("the guest's ssh setup failed: {said}"));
    }
    let report: SshSetupReport = serde_json::from_slice(&stdout)
        .map_err(|e| format!("the guest's ssh setup printed no report banger can read: {e}"))?;
    // The host keys in it are checked where one is chosen (`choose_host_key`).
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tool_ssh::HostPublicKey;

    const ED: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const ED2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBk7gAl3mj2jC8ZpYLd/fLQxEDkUA0y1GQ5mZB0oa6ZH";

    fn report(keys: &[&str], sshd: bool) -> Result<SshSetupReport, String> {
        Ok(SshSetupReport {
            user: "root".into(),
            authorized_keys: "/root/.ssh/authorized_keys".into(),
            keys_installed: 1,
            changed: true,
            sshd_installed: sshd,
            host_keys: keys
                .iter()
                .map(|key| HostPublicKey {
                    algorithm: "ssh-ed25519".into(),
                    public_key: (*key).into(),
                })
                .collect(),
            host_key_warning: None,
        })
    }

    #[test]
    fn a_first_key_is_recorded_the_same_is_not_and_a_changed_one_is_refused() {
        let vm = VmId(7);
        let (status, record) = decide(vm, report(&[ED], true), None);
        let record = record.expect("a first key is recorded");
        assert_eq!(record.public_key, ED);
        assert!(matches!(status, VmSshStatus::Ready { .. }));
        let recorded = banger_projections::HostKeyView {
            algorithm: record.algorithm.clone(),
            public_key: record.public_key.clone(),
            fingerprint_sha256: record.fingerprint_sha256.clone(),
            recorded_seq: banger_events::Seq(3),
        };
        let (status, again) = decide(vm, report(&[ED], true), Some(&recorded));
        assert!(again.is_none() && matches!(status, VmSshStatus::Ready { .. }));
        let (status, changed) = decide(vm, report(&[ED2], true), Some(&recorded));
        assert!(changed.is_none(), "a changed key is never recorded");
        match status {
            VmSshStatus::HostKeyChanged {
                recorded_sha256, ..
            } => assert_eq!(recorded_sha256, record.fingerprint_sha256),
            other => panic!("{other:?}"),
        }
        assert_eq!(decide(vm, report(&[], false), None).0, VmSshStatus::NoSshd);
        let (status, none) = decide(vm, report(&["AAAAbogus"], true), None);
        assert!(none.is_none() && matches!(status, VmSshStatus::Failed { .. }));
        let (status, none) = decide(vm, Err("old agent".into()), None);
        assert!(none.is_none());
        assert_eq!(
            status,
            VmSshStatus::Failed {
                reason: "old agent".into()
            }
        );
    }
}
