//! `banger update`: install the latest signed release in place of this one.
//!
//! ```text
//!  GET manifest, GET manifest.sig ─▶ verify (ECDSA P-256, the key built in) ─▶ parse, check
//!       │ newer than this banger? (else: up to date)
//!  preflight: no operation in flight (daemon.operations.list)
//!       │
//!  GET tarball ─▶ <install dir>/.banger-update-<pid>/ (size and sha256 checked while it
//!       │         streams) ─▶ unpack the four programs into new/ ─▶ each says its version
//!  preflight again ─▶ stop bangerd (daemon.shutdown; its VMs keep running)
//!       │
//!  swap: each program renamed over the installed one (old ones hard-linked into previous/)
//!       │
//!  start the new bangerd ─▶ health: it answers with the new version and every VM that
//!       │                   ran still runs (re-adopted, same pid)
//!       ├─ healthy ─▶ remove the work dir: done
//!       └─ not ─▶ stop it, rename the old programs back, start the old bangerd: rolled back
//! ```
//!
//! Invariants: nothing on the host changes before the signature, the sha256 and the new
//! programs' versions all checked out; every installed name always holds a whole program; a
//! failure after the swap puts the previous programs back and the previous bangerd running;
//! running VMs are never stopped (bangerd's VMMs outlive it and the next one re-adopts them).
//!
//! bangerd run by systemd (`banger system install`: its cgroup is `bangerd.service`) is
//! restarted with `systemctl`; one started by the CLI (user mode) is started again the same
//! way the CLI starts it. `sudo banger update` on a host with a system install restarts the
//! service's bangerd (the owner's layout from the install metadata, not root's), and then
//! `systemctl try-restart banger-helper` (its VMMs survive: `KillMode=process`); otherwise
//! banger-helper runs as root on its own and a new helper binary is used from its next
//! start, which the update says.

pub mod install;
pub mod manifest;
pub mod signature;
pub mod stage;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_events::VmState;
use banger_projections::OperationView;

use crate::api::{OperationsListResult, PingResult, VmListResult};
use crate::paths::Layout;
use crate::rpc::client::{Client, ClientError};

pub use manifest::{Manifest, Version};
pub use signature::ReleaseKey;

/// Where releases are announced unless the config or `--manifest-url` says otherwise.
pub const DEFAULT_MANIFEST_URL: &str =
    "https://github.com/banger-dev/banger/releases/latest/download/manifest.json";

/// How long a stopped bangerd may take to exit, and a started one to answer.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an update did not happen (or was undone).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(
        "this banger was built without a release key (BANGER_RELEASE_PUBLIC_KEY), so it cannot verify any release and refuses to update; install a release build, or update by hand"
    )]
    NoReleaseKey,
    #[error("the release key built into banger is not a P-256 public key: {0}")]
    BadReleaseKey(String),
    #[error("refused: {0}")]
    BadSignature(String),
    #[error("refused: the release manifest: {0}")]
    BadManifest(String),
    #[error("cannot fetch {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("refused: the downloaded tarball: {0}")]
    BadTarball(String),
    #[error("refused: the release's {program}: {why}")]
    BrokenProgram { program: String, why: String },
    #[error(
        "refused: operations are in flight ({0}); wait for them (`banger ops`) and update again"
    )]
    Busy(String),
    #[error(
        "cannot write to {dir}, where banger is installed; run the update as the user that owns it (for a system install: sudo banger update)"
    )]
    NotWritable { dir: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bangerd: {0}")]
    Daemon(String),
    #[error(
        "the new release failed its health check ({why}); the previous programs are back{restarted}"
    )]
    RolledBack { why: String, restarted: String },
    #[error(
        "the update failed ({why}) and putting the previous programs back failed too ({restore}); reinstall banger by hand"
    )]
    RestoreFailed { why: String, restore: String },
}

impl UpdateError {
    pub fn io(path: &Path, source: std::io::Error) -> UpdateError {
        UpdateError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Starts the bangerd program at a path, detached, and hands back its process.
pub type StartBangerd = Box<dyn Fn(&Path) -> std::io::Result<std::process::Child> + Send + Sync>;

/// What an update needs to know; the CLI fills it from the running program, tests with
/// their own key, directories and bangerd.
pub struct Plan {
    pub key: ReleaseKey,
    pub manifest_url: reqwest::Url,
    /// The version installed now.
    pub current: Version,
    /// Where the four programs are installed (the running `banger`'s directory).
    pub install_dir: PathBuf,
    /// The bangerd this update restarts.
    pub layout: Layout,
    /// How to start bangerd from a path, detached (the CLI's autostart; tests add their
    /// environment).
    pub start_bangerd: StartBangerd,
}

/// A release that checked out: its manifest and where its tarball is.
#[derive(Clone, Debug)]
pub struct Release {
    pub manifest: Manifest,
    pub version: Version,
    pub tarball_url: reqwest::Url,
}

/// What an update did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    UpToDate {
        current: Version,
        latest: Version,
    },
    Updated {
        from: Version,
        to: Version,
        programs: Vec<&'static str>,
        /// The new bangerd's pid, when one ran before the update.
        bangerd_pid: Option<u32>,
        vms_kept: usize,
    },
}

/// Fetches and verifies the release the manifest announces.
pub async fn latest_release(plan: &Plan, http: &reqwest::Client) -> Result<Release, UpdateError> {
    let manifest_bytes =
        fetch_small(http, &plan.manifest_url, manifest::MAX_MANIFEST_BYTES).await?;
    let mut signature_url = plan.manifest_url.clone();
    signature_url.set_path(&format!("{}.sig", plan.manifest_url.path()));
    let signature = fetch_small(http, &signature_url, signature::MAX_SIGNATURE_BYTES).await?;
    plan.key.verify(&manifest_bytes, &signature)?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    let version = Version::parse(&manifest.version)?;
    let tarball_url = manifest.tarball_url(&plan.manifest_url)?;
    Ok(Release {
        manifest,
        version,
        tarball_url,
    })
}

/// Updates to the latest release, reporting each stage through `say`.
pub async fn update(
    plan: &Plan,
    http: &reqwest::Client,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<Outcome, UpdateError> {
    let release = latest_release(plan, http).await?;
    if release.version <= plan.current {
        return Ok(Outcome::UpToDate {
            current: plan.current,
            latest: release.version,
        });
    }
    say(format!(
        "release {} verified (signed manifest); this is {}",
        release.version, plan.current
    ));
    preflight(&plan.layout).await?;

    let work = install::WorkDir::create(&plan.install_dir)?;
    let result = download_and_install(plan, http, &release, &work, say).await;
    match &result {
        // A restore that failed keeps the old programs in the work dir: leave it for a person.
        Err(UpdateError::RestoreFailed { .. }) => {}
        _ => work.remove(),
    }
    result
}

async fn download_and_install(
    plan: &Plan,
    http: &reqwest::Client,
    release: &Release,
    work: &install::WorkDir,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<Outcome, UpdateError> {
    let manifest = &release.manifest;
    let compression = manifest.compression()?;
    let tarball = work.path.join("release.tar");
    let url = release.tarball_url.to_string();
    crate::kernel::fetch::download(
        http,
        &url,
        crate::kernel::fetch::Expected {
            sha256: &manifest.tarball.sha256,
            size_bytes: manifest.tarball.size,
        },
        &tarball,
        &|_| {},
    )
    .await
    .map_err(|e| UpdateError::BadTarball(e.to_string()))?;
    say(format!(
        "downloaded {} ({} bytes, sha256 checked)",
        url, manifest.tarball.size
    ));
    let staging = work.staging();
    let version = manifest.version.clone();
    tokio::task::spawn_blocking(move || {
        stage::unpack(&tarball, compression, &staging)?;
        stage::check_versions(&staging, &version)
    })
    .await
    .map_err(|e| UpdateError::Daemon(format!("the unpacking task failed: {e}")))??;

    preflight(&plan.layout).await?;
    let before = stop_bangerd(&plan.layout).await?;
    let mut swapped = match install::swap(&plan.install_dir, work) {
        Ok(swapped) => swapped,
        Err(failure) => {
            // The previous programs are in place again: so is the previous bangerd.
            if let Some(before) = &before
                && let Err(why) = start_and_check(plan, before, None).await
            {
                say(format!("the previous bangerd did not start again: {why}"));
            }
            return Err(failure);
        }
    };
    say(format!(
        "installed {} in {}",
        swapped.programs().join(", "),
        plan.install_dir.display()
    ));
    let Some(before) = before else {
        return Ok(Outcome::Updated {
            from: plan.current,
            to: release.version,
            programs: swapped.programs(),
            bangerd_pid: None,
            vms_kept: 0,
        });
    };
    match start_and_check(plan, &before, Some(&release.version)).await {
        Ok(pid) => Ok(Outcome::Updated {
            from: plan.current,
            to: release.version,
            programs: swapped.programs(),
            bangerd_pid: Some(pid),
            vms_kept: before.running_vms.len(),
        }),
        Err(why) => {
            say(format!(
                "the new bangerd is not healthy ({why}); rolling back"
            ));
            let _ = stop_bangerd(&plan.layout).await;
            if let Err(restore) = swapped.restore() {
                return Err(UpdateError::RestoreFailed {
                    why,
                    restore: restore.to_string(),
                });
            }
            let restarted = match start_and_check(plan, &before, None).await {
                Ok(pid) => format!(" and the previous bangerd runs again (pid {pid})"),
                Err(again) => format!(", but the previous bangerd did not start again: {again}"),
            };
            Err(UpdateError::RolledBack { why, restarted })
        }
    }
}

/// Refuses while bangerd has operations in flight (or stuck: a stuck one needs a person).
async fn preflight(layout: &Layout) -> Result<(), UpdateError> {
    let Some(mut client) = connect_if_running(layout).await? else {
        return Ok(());
    };
    let listed: OperationsListResult = client
        .call("daemon.operations.list", &serde_json::json!({}))
        .await
        .map_err(|e| UpdateError::Daemon(e.to_string()))?;
    if listed.operations.is_empty() {
        return Ok(());
    }
    Err(UpdateError::Busy(describe(&listed.operations)))
}

fn describe(operations: &[OperationView]) -> String {
    operations
        .iter()
        .map(|op| format!("{} on {} ({:?})", op.kind.as_str(), op.target, op.status))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The bangerd an update stopped: how to recognise its VMs afterwards.
pub struct Stopped {
    /// Running VMs by name, with their VMM's pid.
    running_vms: Vec<(String, u32)>,
    /// Run by systemd as `bangerd.service`.
    under_systemd: bool,
}

/// Stops the running bangerd (its VMs keep running). `None` when none ran.
async fn stop_bangerd(layout: &Layout) -> Result<Option<Stopped>, UpdateError> {
    let Some(mut client) = connect_if_running(layout).await? else {
        return Ok(None);
    };
    let ping: PingResult = client
        .call("daemon.ping", &serde_json::json!({}))
        .await
        .map_err(|e| UpdateError::Daemon(e.to_string()))?;
    let listed: VmListResult = client
        .call("vm.list", &serde_json::json!({}))
        .await
        .map_err(|e| UpdateError::Daemon(e.to_string()))?;
    let running_vms = listed
        .vms
        .iter()
        .filter(|vm| vm.state == VmState::Running)
        .filter_map(|vm| vm.process.as_ref().map(|p| (vm.name.clone(), p.pid)))
        .collect();
    let under_systemd = std::fs::read_to_string(format!("/proc/{}/cgroup", ping.pid))
        .is_ok_and(|cgroup| cgroup.lines().any(|l| l.ends_with("/bangerd.service")));
    if under_systemd {
        systemctl("stop")?;
    } else {
        let _: serde_json::Value = client
            .call("daemon.shutdown", &serde_json::json!({}))
            .await
            .map_err(|e| UpdateError::Daemon(e.to_string()))?;
    }
    drop(client);
    let deadline = Instant::now() + DAEMON_TIMEOUT;
    while process_alive(ping.pid) || connect_if_running(layout).await?.is_some() {
        if Instant::now() >= deadline {
            return Err(UpdateError::Daemon(format!(
                "bangerd (pid {}) did not stop within {DAEMON_TIMEOUT:?}",
                ping.pid
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Some(Stopped {
        running_vms,
        under_systemd,
    }))
}

/// Starts the installed bangerd and checks it: it answers (with `version`, when given) and
/// every VM that ran before still runs with the same VMM. Its pid, or why it is not healthy.
async fn start_and_check(
    plan: &Plan,
    before: &Stopped,
    version: Option<&Version>,
) -> Result<u32, String> {
    let mut child = None;
    if before.under_systemd {
        systemctl("start").map_err(|e| e.to_string())?;
    } else {
        let bangerd = plan.install_dir.join("bangerd");
        child = Some(
            (plan.start_bangerd)(&bangerd)
                .map_err(|e| format!("cannot start {}: {e}", bangerd.display()))?,
        );
    }
    let deadline = Instant::now() + DAEMON_TIMEOUT;
    let ping = loop {
        if let Some(child) = child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
            && connect_if_running(&plan.layout)
                .await
                .ok()
                .flatten()
                .is_none()
        {
            return Err(format!("bangerd exited at start ({status})"));
        }
        if let Ok(Some(mut client)) = connect_if_running(&plan.layout).await
            && let Ok(ping) = client
                .call::<_, PingResult>("daemon.ping", &serde_json::json!({}))
                .await
        {
            break (ping, client);
        }
        if Instant::now() >= deadline {
            // A bangerd that runs but never answers would hold the state directory's lock
            // against the previous one the rollback starts: it goes.
            if let Some(child) = child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            return Err(format!("bangerd did not answer within {DAEMON_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (ping, mut client) = ping;
    if let Some(version) = version
        && ping.version != version.to_string()
    {
        return Err(format!(
            "the bangerd that answers is version {}, not {version}",
            ping.version
        ));
    }
    let listed: VmListResult = client
        .call("vm.list", &serde_json::json!({}))
        .await
        .map_err(|e| format!("vm.list: {e}"))?;
    for (name, pid) in &before.running_vms {
        let kept = listed.vms.iter().any(|vm| {
            &vm.name == name
                && vm.state == VmState::Running
                && vm.process.as_ref().is_some_and(|p| p.pid == *pid)
        });
        if !kept {
            return Err(format!("VM {name} (VMM pid {pid}) is not running under it"));
        }
    }
    Ok(ping.pid)
}

async fn connect_if_running(layout: &Layout) -> Result<Option<Client>, UpdateError> {
    match Client::connect(&layout.socket_path()).await {
        Ok(client) => Ok(Some(client)),
        Err(ClientError::Connect { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(other) => Err(UpdateError::Daemon(other.to_string())),
    }
}

/// Alive and not a zombie (a test that started bangerd may not have reaped it yet).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn systemctl(verb: &str) -> Result<(), UpdateError> {
    let status = std::process::Command::new("systemctl")
        .args([verb, "bangerd.service"])
        .status()
        .map_err(|e| UpdateError::Daemon(format!("cannot run systemctl {verb}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(UpdateError::Daemon(format!(
            "systemctl {verb} bangerd.service: {status}"
        )))
    }
}

/// GETs a small document, refusing more than `limit` bytes.
async fn fetch_small(
    http: &reqwest::Client,
    url: &reqwest::Url,
    limit: usize,
) -> Result<Vec<u8>, UpdateError> {
    let fail = |reason: String| UpdateError::Fetch {
        url: url.to_string(),
        reason,
    };
    let mut response = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("HTTP {}", response.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.to_string()))? {
        if body.len() + chunk.len() > limit {
            return Err(fail(format!("more than {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
