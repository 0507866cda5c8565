//! `banger-agent`: the guest agent. See `banger::agent` for what it does.

use std::io::Write;

use banger::agent::{AGENT_VSOCK_PORT, Agent, ListenAddr, Listener};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// The banger guest agent: answers health, ping, exec and sync requests from the host.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Where to listen: vsock:PORT inside a guest, unix:PATH under the fake firecracker.
    #[arg(long, default_value_t = ListenAddr::Vsock { port: AGENT_VSOCK_PORT })]
    listen: ListenAddr,
    /// The vsock CID this guest has, reported by health.
    #[arg(long, env = "BANGER_AGENT_CID")]
    cid: Option<u32>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only on a terminal: in a guest, stderr is the journal or the serial console.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BANGER_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // Two worker threads: the agent's work is small and it shares a small guest with the
    // developer's own processes.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("banger-agent: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banger-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let listener = Listener::bind(&args.listen)?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let agent = Agent::new(args.cid);
    // The readiness line: whoever started the agent may wait for it instead of polling. Best
    // effort: a parent that closed our stdout must not stop the agent from serving.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "banger-agent ready on {}", args.listen).and_then(|()| stdout.flush());
    drop(stdout);
    tracing::info!(listen = %args.listen, cid = ?args.cid, "banger-agent {} serving", banger::agent::AGENT_VERSION);
    let result = tokio::select! {
        served = agent.serve(listener) => served,
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
    };
    agent.kill_running();
    if let ListenAddr::Unix(path) = &args.listen {
        let _ = std::fs::remove_file(path);
    }
    result
}
