//! The `banger-helper` command line: what the binary (a bin of the `banger` package, so that
//! `cargo install --path .` installs it beside bangerd) runs.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::server::{Config, Server};
use clap::Parser;

/// banger's narrow root helper: creates banger's bridge, NAT table and VM taps on behalf of
/// bangerd. Runs as root; only the uids given with --allow-uid may ask it for anything.
#[derive(Parser, Debug)]
#[command(name = "banger-helper", version)]
pub struct Args {
    /// Unix socket to listen on (its parent directory is created if missing).
    #[arg(long)]
    pub socket: PathBuf,
    /// Uid allowed to make requests (checked with SO_PEERCRED). Repeat for several users.
    #[arg(long = "allow-uid", required = true)]
    pub allow_uid: Vec<u32>,
    /// The network an allowed uid may have, as UID:BRIDGE:GATEWAY/PREFIX (for example
    /// 1000:banger0:172.30.0.1/24). Repeatable. An allowed uid without one gets banger0 at
    /// 172.30.0.1/24; with several allowed uids, all but one need their own.
    #[arg(long = "network", value_parser = crate::networks::parse_flag)]
    pub network: Vec<(u32, crate::protocol::NetworkSpec)>,
    /// Firecracker's jailer, run to launch Firecracker for an allowed uid (so its bangerd needs
    /// no access to /dev/kvm or /dev/net/tun). Root's, writable by no one else.
    #[arg(long, requires_all = ["firecracker", "jail_dir"])]
    pub jailer: Option<PathBuf>,
    /// The firecracker binary the jailer runs. Root's, writable by no one else.
    #[arg(long, requires_all = ["jailer", "jail_dir"])]
    pub firecracker: Option<PathBuf>,
    /// Where the jails go (made root's, 0755). Put it on the filesystem of banger's state
    /// directory: bangerd links each VM's kernel and disks into its jail.
    #[arg(long, requires_all = ["jailer", "firecracker"])]
    pub jail_dir: Option<PathBuf>,
}

/// Parses the command line and serves until SIGTERM or SIGINT.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("banger-helper: cannot start its runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Under systemd stderr goes to the journal, where colour codes are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let networks = match crate::networks::Networks::new(&args.allow_uid, &args.network) {
        Ok(networks) => networks,
        Err(e) => {
            eprintln!("banger-helper: {e}");
            return ExitCode::from(2);
        }
    };
    let owners = crate::networks::owners(&networks);
    let jail = match (&args.jailer, &args.firecracker, &args.jail_dir) {
        (Some(jailer), Some(firecracker), Some(dir)) => {
            match crate::jail::JailConfig::new(jailer, firecracker, dir) {
                Ok(jail) => Some(jail),
                Err(e) => {
                    eprintln!("banger-helper: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    let config = Config {
        socket: args.socket.clone(),
        allowed_uids: args.allow_uid.clone(),
        networks,
        jail,
    };
    let server = match Server::bind(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!(
                "banger-helper: cannot listen on {}: {e}",
                args.socket.display()
            );
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(socket = %server.socket().display(), allowed_uids = ?args.allow_uid, networks = ?owners, "banger-helper serving");
    match server.serve(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("banger-helper stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("banger-helper: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("banger-helper: cannot watch SIGTERM ({e}); stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
