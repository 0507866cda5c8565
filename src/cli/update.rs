//! `banger update [--check] [--manifest-url URL]`: the CLI side of [`crate::update`] — the
//! release key built into this program, its own directory as the install, bangerd restarted
//! the way the CLI starts it.

use std::path::PathBuf;

use super::args::UpdateArgs;
use super::connect::{layout, spawn_detached};
use super::error::CliError;
use super::output::line;
use crate::update::{self, Outcome, Plan, ReleaseKey, UpdateError, Version};

pub async fn run(args: UpdateArgs) -> Result<(), CliError> {
    let key = ReleaseKey::embedded().map_err(refused)?;
    let manifest_url = args
        .manifest_url
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| update::DEFAULT_MANIFEST_URL.to_owned());
    let manifest_url = reqwest::Url::parse(&manifest_url)
        .map_err(|e| CliError::Usage(format!("--manifest-url {manifest_url:?}: {e}")))?;
    let install_dir = install_dir()?;
    let system = crate::system::SystemRoot::from_env();
    let euid = nix::unistd::geteuid().as_raw();
    let banger_root_set = std::env::var_os("BANGER_ROOT").is_some_and(|root| !root.is_empty());
    let layout = match update_target(&system, euid, banger_root_set) {
        Some(service) => service,
        None => layout()?,
    };
    let start_layout = layout.clone();
    let plan = Plan {
        key,
        manifest_url,
        current: Version::parse(env!("CARGO_PKG_VERSION")).map_err(refused)?,
        install_dir,
        layout,
        start_bangerd: Box::new(move |bangerd| {
            spawn_detached(bangerd, &start_layout).map_err(|e| std::io::Error::other(e.to_string()))
        }),
    };
    let http = crate::kernel::fetch::http_client()
        .map_err(|e| CliError::failed("cannot set up HTTP", e))?;
    if args.check {
        let release = update::latest_release(&plan, &http)
            .await
            .map_err(refused)?;
        return if release.version > plan.current {
            line(format!(
                "banger {} is available (this is {}): run `banger update`",
                release.version, plan.current
            ))
        } else {
            line(format!("banger {} is up to date", plan.current))
        };
    }
    let mut say = |message: String| {
        let _ = line(message);
    };
    match update::update(&plan, &http, &mut say)
        .await
        .map_err(refused)?
    {
        Outcome::UpToDate { current, latest } => line(format!(
            "banger {current} is up to date (the latest release is {latest})"
        )),
        Outcome::Updated {
            from,
            to,
            bangerd_pid,
            vms_kept,
            ..
        } => {
            line(format!("updated banger {from} → {to}"))?;
            if let Some(pid) = bangerd_pid {
                line(format!(
                    "bangerd restarted (pid {pid}); {vms_kept} running VM(s) kept running"
                ))?;
            }
            if euid == 0 && system.is_host() && restart_installed_helper() {
                line("banger-helper restarted with the new program (its VMs keep running)")
            } else {
                line(
                    "banger-helper runs the new program from its next start (sudo systemctl restart banger-helper, for a system install)",
                )
            }
        }
    }
}

/// The bangerd an update restarts when it is not this user's own: `sudo banger update` on a
/// host with a system install updates the programs the service runs, so the bangerd to stop,
/// check and start again is the service's (the owner's layout), not one of root's. `None`
/// otherwise (the owner's CLI finds the service's layout itself; `BANGER_ROOT` names a bangerd
/// on purpose).
fn update_target(
    system: &crate::system::SystemRoot,
    euid: u32,
    banger_root_set: bool,
) -> Option<crate::paths::Layout> {
    if euid != 0 || banger_root_set {
        return None;
    }
    crate::system::read_metadata(system)
        .ok()
        .flatten()
        .map(|metadata| metadata.inputs.layout())
}

/// `systemctl try-restart banger-helper.service`: the installed helper picks up its new
/// program (its VMMs, in the unit with `KillMode=process`, keep running). Whether it did.
fn restart_installed_helper() -> bool {
    std::process::Command::new("systemctl")
        .args(["try-restart", "banger-helper.service"])
        .status()
        .is_ok_and(|status| status.success())
}

/// The directory this `banger` runs from: where the release goes.
fn install_dir() -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe()
        .and_then(|exe| exe.canonicalize())
        .map_err(|e| CliError::failed("cannot tell where banger is installed", e))?;
    exe.parent()
        .map(PathBuf::from)
        .ok_or_else(|| CliError::message("cannot tell where banger is installed"))
}

fn refused(error: UpdateError) -> CliError {
    CliError::message(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sudo banger update` with a system install restarts the service's bangerd (the owner's
    /// layout, its socket under /run/bangerd), not one of root's; without an install, or for
    /// anyone but root, or with BANGER_ROOT set, the usual layout.
    #[test]
    fn root_updates_the_installed_service_s_bangerd() {
        let dir = tempfile::tempdir().unwrap();
        let system = crate::system::SystemRoot::at(dir.path());
        assert_eq!(update_target(&system, 0, false), None, "no install");
        let inputs = crate::system::UnitInputs {
            owner: "alice".into(),
            uid: 1000,
            gid: 1000,
            group: "alice".into(),
            home: "/home/alice".into(),
            bangerd: "/usr/local/bin/bangerd".into(),
            helper: "/usr/local/bin/banger-helper".into(),
            helper_socket: "/run/banger/helper.sock".into(),
            network: None,
            jail: None,
        };
        let metadata = crate::system::InstallMetadata {
            format: crate::system::METADATA_FORMAT,
            installed_at_unix_ms: 0,
            socket: inputs.layout().socket_path(),
            state_dir: inputs.layout().state_dir,
            inputs,
            banger: "/usr/local/bin/banger".into(),
            versions: crate::system::Versions {
                banger: "banger 0.1.0".into(),
                bangerd: "bangerd 0.1.0".into(),
                helper: "banger-helper 0.1.0".into(),
            },
            unit_dir: "/etc/systemd/system".into(),
            units: Vec::new(),
            created_dirs: Vec::new(),
        };
        std::fs::create_dir_all(system.etc_dir()).unwrap();
        std::fs::write(
            system.metadata_path(),
            serde_json::to_vec(&metadata).unwrap(),
        )
        .unwrap();
        let layout = update_target(&system, 0, false).expect("the service's layout");
        assert_eq!(
            layout.socket_path(),
            std::path::Path::new("/run/bangerd/banger/bangerd.sock")
        );
        assert!(layout.state_dir.starts_with("/home/alice"), "{layout:?}");
        assert_eq!(update_target(&system, 1000, false), None);
        assert_eq!(update_target(&system, 0, true), None);
    }
}
