//! `banger dashboard`: where bangerd serves its web dashboard, and a link that signs in.
//!
//! bangerd writes whether and where it serves the dashboard to `RUN/dashboard.json`; the
//! token is `STATE/dashboard.token`, a 0600 file of this user (see
//! `daemon::dashboard`). This command starts bangerd if it is not running (like every command
//! that needs it), reads both, and prints the sign-in link, or opens it.
//!
//! `--open` never puts the token on a command line, where every local user could read it in
//! `ps`: it writes a 0600 page in the runtime directory (0700) that moves on to the sign-in
//! link, and hands xdg-open that file's `file://` URL.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::args::DashboardArgs;
use super::connect::{connect, layout};
use super::error::CliError;
use super::output::{json, line};
use crate::api::PingResult;
use crate::daemon::dashboard::{DashboardState, DashboardStatus};
use crate::paths::Layout;

/// How long to wait for xdg-open to report a failure before leaving it to the browser.
const OPENER_WAIT: Duration = Duration::from_secs(3);

#[derive(Serialize)]
struct Links {
    url: String,
    /// Signs the browser that opens it in: a secret.
    login_url: String,
    port: u16,
}

pub async fn run(args: DashboardArgs) -> Result<(), CliError> {
    let layout = layout()?;
    let mut client = connect().await?;
    let ping: PingResult = client.call("daemon.ping", &serde_json::json!({})).await?;
    let links = links(&layout, ping.pid)?;
    if args.json {
        return json(&links);
    }
    if args.open {
        let page = write_opener_page(&layout, &links.login_url)?;
        open(&page).await?;
        return line(format!("opened {} in your browser", links.url));
    }
    line(format!("dashboard: {}", links.url))?;
    line(format!("sign in:   {}", links.login_url))?;
    line("(the sign-in link is a password: whoever has it can act on your VMs)")
}

/// The dashboard's address from the status bangerd `pid` wrote, and the sign-in link.
fn links(layout: &Layout, pid: u32) -> Result<Links, CliError> {
    let status_path = layout.dashboard_status_path();
    let status = DashboardStatus::read(layout).map_err(|error| {
        CliError::failed(format!("cannot read {}", status_path.display()), error)
    })?;
    let status = match status {
        Some(status) if status.pid == pid => status,
        Some(status) => {
            return Err(CliError::message(format!(
                "{} was written by another bangerd (pid {}) than the one running (pid {pid}); \
                 restart bangerd",
                status_path.display(),
                status.pid
            )));
        }
        None => {
            return Err(CliError::message(format!(
                "bangerd (pid {pid}) says nothing about a dashboard ({} is missing): it is older \
                 than this banger; restart it",
                status_path.display()
            )));
        }
    };
    let (url, port) = match status.state {
        DashboardState::Serving { url, port } => (url, port),
        DashboardState::Disabled => {
            return Err(CliError::message(format!(
                "the dashboard is turned off: set `enabled = true` under [dashboard] in {} and \
                 restart bangerd",
                layout.config_path().display()
            )));
        }
        DashboardState::Failed { error } => {
            return Err(CliError::message(format!(
                "bangerd could not serve the dashboard: {error}"
            )));
        }
    };
    let token_path = layout.dashboard_token_path();
    let token = std::fs::read_to_string(&token_path)
        .map_err(|error| {
            CliError::failed(
                format!("cannot read the dashboard token {}", token_path.display()),
                error,
            )
        })?
        .trim()
        .to_owned();
    Ok(Links {
        login_url: format!("{url}/login?token={token}"),
        url,
        port,
    })
}

/// A page only this user can read that sends the browser on to `login_url`.
fn write_opener_page(layout: &Layout, login_url: &str) -> Result<PathBuf, CliError> {
    let path = layout.runtime_dir.join("dashboard-open.html");
    // The URL is ours (`http://127.0.0.1:PORT/login?token=HEX`): nothing in it needs
    // escaping in an attribute, but say so rather than assume.
    if login_url.contains(['"', '<', '>', '&']) {
        return Err(CliError::message(format!(
            "the sign-in link looks wrong: {login_url}"
        )));
    }
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <meta http-equiv=\"refresh\" content=\"0; url={login_url}\">\
         <title>banger dashboard</title></head>\
         <body><p><a href=\"{login_url}\">Open the banger dashboard</a></p></body></html>\n"
    );
    let write = || -> std::io::Result<()> {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        file.write_all(html.as_bytes())
    };
    write().map_err(|error| CliError::failed(format!("cannot write {}", path.display()), error))?;
    Ok(path)
}

/// Hands `page` to xdg-open; an error if there is none, or it fails at once.
async fn open(page: &Path) -> Result<(), CliError> {
    let Some(opener) = find_on_path("xdg-open") else {
        return Err(CliError::message(
            "xdg-open is not installed here; run `banger dashboard` and open the sign-in link yourself",
        ));
    };
    let mut child = Command::new(&opener)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| CliError::failed(format!("cannot run {}", opener.display()), error))?;
    let deadline = Instant::now() + OPENER_WAIT;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(CliError::message(format!(
                    "xdg-open could not open the dashboard ({status}); run `banger dashboard` and open the sign-in link yourself"
                )));
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => break,
        }
    }
    // Still running: some openers wait for the browser. It has the page; leave it to it.
    Ok(())
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|path| {
            std::fs::metadata(path)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}
