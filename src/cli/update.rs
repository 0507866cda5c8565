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
    let layout = layout()?;
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
            line(
                "banger-helper runs the new program from its next start (sudo systemctl restart banger-helper, for a system install)",
            )
        }
    }
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
