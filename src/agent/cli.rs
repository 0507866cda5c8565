//! The `banger-agent` command line and process: arguments, logging, the runtime, signals.
//!
//! The arguments are parsed by hand rather than with clap: the agent is built statically into
//! every guest image, and its two options do not justify compiling an argument-parsing
//! framework into each one (see `docs/ARCHITECTURE.md`, "lean agent").
//!
//! [`main`] binds the listener, prints `banger-agent ready on ADDR` on stdout once it accepts
//! connections (so a parent process can wait for that line instead of polling), and serves
//! until SIGTERM or SIGINT, when it kills every running command's process group and exits.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};

use crate::server::{AGENT_VERSION, Agent, ListenAddr, Listener};

/// The environment variable that gives the agent its vsock CID (the fake firecracker sets it).
pub const CID_ENV: &str = "BANGER_AGENT_CID";
/// The environment variable that sets what the agent logs: a level (`debug`) or a list of
/// `target=level` directives (`info,banger_agent=debug`).
pub const LOG_ENV: &str = "BANGER_AGENT_LOG";

const USAGE: &str = "\
The banger guest agent: answers health, ping, exec and sync requests from the host.

Usage: banger-agent [--listen ADDR] [--cid CID]
       banger-agent --setup-guest
       banger-agent --stats
       banger-agent --ports
       banger-agent --tar-receive DIR | --tar-send DIR [--paths-from-stdin] | --tree-manifest DIR
       banger-agent --ssh-setup [USER]
       banger-agent --tcp-connect HOST:PORT

Options:
  --listen ADDR  Where to listen: vsock:PORT inside a Firecracker guest, serial:NAME (a
                 virtio-serial port, e.g. serial:banger.agent) inside a QEMU guest,
                 unix:PATH under the fake firecracker, or auto: the virtio-serial port
                 banger.agent when the kernel command line has banger.agent=serial or the
                 port exists, else vsock:10789 [default: auto]
  --cid CID      The vsock CID this guest has, reported by health [env: BANGER_AGENT_CID]
  --setup-guest  Apply the guest's banger.* kernel arguments (hostname, eth0, name servers,
                 the work disk) and exit: what an image's own init runs before the agent
                 (the systemd unit banger installs does); as PID 1 the agent does it itself
  --stats        Print the guest's CPU, memory, disk and uptime figures as one JSON document
                 and exit (what `banger vm stats` runs through the agent)
  --ports        Print the guest's listening TCP and bound UDP sockets, with the processes
                 holding them, as one JSON document and exit (what `banger vm ports` runs)
  --tar-receive DIR  Write the tar on stdin under DIR (never outside it, never through a
                 symlink), deleting the entries marked BANGER.delete; a JSON summary on stdout
  --tar-send DIR  Write DIR's files and symlinks (or, with --paths-from-stdin, the
                 NUL-separated paths on stdin) as a tar on stdout
  --tree-manifest DIR  Print DIR's files and symlinks (path, mode, size, mtime) as JSON
  --ssh-setup [USER]
                 Install the ssh public keys read from stdin for USER (default root) in a
                 marked block of ~USER/.ssh/authorized_keys, generate missing host keys
                 and print the guest's ssh host keys as JSON
  --tcp-connect HOST:PORT
                 Connect to HOST:PORT in the guest and copy stdin to it and it to stdout
  -h, --help     Print help
  -V, --version  Print version

Logging goes to stderr; BANGER_AGENT_LOG sets it (default: info).";

/// What the command line asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Serve(Args),
    SetupGuest,
    /// A workspace tool (`tool_tree`): run once, print its result, exit.
    Tree(crate::tool_tree::Tool),
    Help,
    /// `--ssh-setup [USER]`: see [`crate::tool_ssh`].
    SshSetup {
        user: String,
    },
    /// `--tcp-connect HOST:PORT`: see [`crate::tool_tcp`].
    TcpConnect {
        target: String,
    },
    Version,
    /// `--stats`: the guest's resource use as JSON ([`crate::tool_stats`]).
    Stats,
    /// `--ports`: the guest's listening sockets as JSON ([`crate::tool_ports`]).
    Ports,
}

/// The options of `banger-agent` when it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    pub listen: ListenAddr,
    pub cid: Option<u32>,
}

/// Parses the arguments (without the program name). `cid_env` is the value of
/// [`CID_ENV`], used when `--cid` is not given; an empty value counts as unset. The error is a
/// sentence for the user.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    cid_env: Option<OsString>,
) -> Result<Command, String> {
    let mut listen = None;
    let mut cid = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|arg| format!("argument {arg:?} is not valid UTF-8"))?;
        if matches!(
            arg.as_str(),
            "--tar-receive" | "--tar-send" | "--tree-manifest"
        ) {
            return crate::tool_tree::parse(&arg, &mut args).map(Command::Tree);
        }
        // `--name value` and `--name=value` both work, as with clap.
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value.into())),
            _ => (arg, None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone() {
                Some(value) => Ok(value),
                None => args
                    .next()
                    .ok_or_else(|| format!("{name} needs a value"))?
                    .into_string()
                    .map_err(|v| format!("the value of {name}, {v:?}, is not valid UTF-8")),
            }
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--setup-guest" => return Ok(Command::SetupGuest),
            // The tools take no arguments: anything after them is a mistake worth saying.
            "--stats" | "--ports" => {
                if let Some(extra) = inline.clone().map(OsString::from).or_else(|| args.next()) {
                    return Err(format!("{name} takes no arguments, not {extra:?}"));
                }
                return Ok(if name == "--stats" {
                    Command::Stats
                } else {
                    Command::Ports
                });
            }
            "--ssh-setup" => {
                // The user is optional: the next argument, unless it is another option.
                let user = match inline.clone() {
                    Some(user) => user,
                    None => match args.next() {
                        None => "root".to_owned(),
                        Some(user) => user
                            .into_string()
                            .map_err(|u| format!("the user {u:?} is not valid UTF-8"))?,
                    },
                };
                if user.is_empty() || user.starts_with('-') {
                    return Err(format!("invalid user {user:?} for --ssh-setup"));
                }
                return match args.next() {
                    Some(extra) => Err(format!("unexpected argument {extra:?} after --ssh-setup")),
                    None => Ok(Command::SshSetup { user }),
                };
            }
            "--tcp-connect" => {
                let target = value("--tcp-connect")?;
                return match args.next() {
                    Some(extra) => {
                        Err(format!("unexpected argument {extra:?} after --tcp-connect"))
                    }
                    None => Ok(Command::TcpConnect { target }),
                };
            }
            "--listen" => {
                let addr = value("--listen")?;
                let addr = addr
                    .parse()
                    .map_err(|e| format!("invalid value {addr:?} for --listen: {e}"))?;
                if listen.replace(addr).is_some() {
                    return Err("--listen was given twice".into());
                }
            }
            "--cid" => {
                let text = value("--cid")?;
                if cid.replace(parse_cid(&text, "--cid")?).is_some() {
                    return Err("--cid was given twice".into());
                }
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if cid.is_none() {
        let env = cid_env.filter(|v| !v.is_empty());
        if let Some(env) = env {
            let text = env
                .into_string()
                .map_err(|v| format!("{CID_ENV}={v:?} is not valid UTF-8"))?;
            cid = Some(parse_cid(&text, CID_ENV)?);
        }
    }
    Ok(Command::Serve(Args {
        listen: listen.unwrap_or(ListenAddr::Auto),
        cid,
    }))
}

fn parse_cid(text: &str, what: &str) -> Result<u32, String> {
    text.parse().map_err(|_| {
        format!("invalid value {text:?} for {what}: a CID is a number from 0 to 4294967295")
    })
}

/// The whole `banger-agent` program: what both binaries that carry it (`banger-agent` of the
/// `banger` package and `banger-guest-agent` of this one) call.
pub fn main() -> ExitCode {
    // The boot contract (crate::boot): as the initrd's /init, and as PID 1 of an image with no
    // init of its own, this program is the guest's init; neither returns.
    if crate::initrd::is_initramfs_init() {
        crate::initrd::main();
    }
    if std::process::id() == 1 {
        crate::pid1::main(std::env::args_os().skip(1).collect());
    }
    let command = parse(std::env::args_os().skip(1), std::env::var_os(CID_ENV));
    let args = match command {
        Ok(Command::Serve(args)) => args,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::SetupGuest) => {
            return if crate::pid1::setup_guest() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Ok(Command::Version) => {
            println!("banger-agent {AGENT_VERSION}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Stats) => return crate::tool_stats::main(),
        Ok(Command::Ports) => return crate::tool_ports::main(),
        Ok(Command::Tree(tool)) => return crate::tool_tree::run(tool),
        Ok(Command::SshSetup { user }) => return crate::tool_ssh::main(&user),
        Ok(Command::TcpConnect { target }) => return crate::tool_tcp::main(&target),
        Err(e) => {
            eprintln!("banger-agent: {e}\n\n{USAGE}");
            // The exit status clap uses for usage errors, which this command line replaced.
            return ExitCode::from(2);
        }
    };
    init_logging();
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
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banger-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (in a guest: the journal or the serial console), without colour. The filter
/// is `tracing-subscriber`'s `Targets` rather than `EnvFilter`, which would compile a regex
/// engine into the agent for directives it never needs.
fn init_logging() {
    let default = || tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO);
    let filter = match std::env::var(LOG_ENV) {
        Ok(text) if !text.is_empty() => text.parse().unwrap_or_else(|e| {
            eprintln!("banger-agent: ignoring {LOG_ENV}={text:?} ({e}); logging at info");
            default()
        }),
        _ => default(),
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(filter)
        .init();
}

async fn run(args: Args) -> std::io::Result<()> {
    // `auto` becomes the transport this guest has, which the readiness line then names.
    let args = Args {
        listen: args.listen.resolve(),
        ..args
    };
    let listener = Listener::bind(&args.listen)?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let agent = Agent::new(args.cid);
    // The readiness line: whoever started the agent may wait for it instead of polling. Best
    // effort: a parent that closed our stdout must not stop the agent from serving.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "banger-agent ready on {}", args.listen).and_then(|()| stdout.flush());
    drop(stdout);
    tracing::info!(listen = %args.listen, cid = ?args.cid, "banger-agent {AGENT_VERSION} serving");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::AGENT_VSOCK_PORT;

    fn parse_strs(args: &[&str], env: Option<&str>) -> Result<Command, String> {
        parse(args.iter().map(OsString::from), env.map(OsString::from))
    }

    fn serve(listen: ListenAddr, cid: Option<u32>) -> Result<Command, String> {
        Ok(Command::Serve(Args { listen, cid }))
    }

    #[test]
    fn defaults_to_the_transport_the_vmm_gave_without_a_cid() {
        assert_eq!(parse_strs(&[], None), serve(ListenAddr::Auto, None));
        assert_eq!(
            parse_strs(&[], Some("")),
            serve(ListenAddr::Auto, None),
            "an empty BANGER_AGENT_CID is unset"
        );
        assert_eq!(
            parse_strs(&["--listen", "vsock:10789"], None),
            serve(
                ListenAddr::Vsock {
                    port: AGENT_VSOCK_PORT
                },
                None
            )
        );
    }

    #[test]
    fn options_take_separate_or_inline_values() {
        let unix = ListenAddr::Unix("/tmp/a.sock".into());
        assert_eq!(
            parse_strs(&["--listen", "unix:/tmp/a.sock", "--cid", "3"], None),
            serve(unix.clone(), Some(3))
        );
        assert_eq!(
            parse_strs(&["--cid=3", "--listen=unix:/tmp/a.sock"], None),
            serve(unix.clone(), Some(3))
        );
        // The fake firecracker passes the CID in the environment; the option wins over it.
        assert_eq!(
            parse_strs(&["--listen", "unix:/tmp/a.sock"], Some("42")),
            serve(unix.clone(), Some(42))
        );
        assert_eq!(
            parse_strs(&["--cid", "7"], Some("42")),
            serve(ListenAddr::Auto, Some(7))
        );
        assert_eq!(parse_strs(&["--version"], None), Ok(Command::Version));
        assert_eq!(parse_strs(&["-V"], None), Ok(Command::Version));
        assert_eq!(
            parse_strs(&["--setup-guest"], None),
            Ok(Command::SetupGuest)
        );
        assert_eq!(parse_strs(&["-h", "--bogus"], None), Ok(Command::Help));
        assert_eq!(parse_strs(&["--stats"], None), Ok(Command::Stats));
        assert_eq!(parse_strs(&["--ports"], Some("3")), Ok(Command::Ports));
    }

    #[test]
    fn the_ssh_tools_take_their_arguments() {
        let setup = |user: &str| {
            Ok(Command::SshSetup {
                user: user.to_owned(),
            })
        };
        assert_eq!(parse_strs(&["--ssh-setup"], None), setup("root"));
        assert_eq!(parse_strs(&["--ssh-setup", "dev"], None), setup("dev"));
        assert_eq!(parse_strs(&["--ssh-setup=dev"], None), setup("dev"));
        assert!(parse_strs(&["--ssh-setup", "--cid"], None).is_err());
        assert!(parse_strs(&["--ssh-setup", "a", "b"], None).is_err());
        assert_eq!(
            parse_strs(&["--tcp-connect", "127.0.0.1:22"], None),
            Ok(Command::TcpConnect {
                target: "127.0.0.1:22".into()
            })
        );
        assert!(parse_strs(&["--tcp-connect"], None).is_err());
    }

    #[test]
    fn bad_arguments_are_refused_with_a_reason() {
        for (args, env, expected) in [
            (&["--listen"][..], None, "--listen needs a value"),
            (
                &["--listen", "tcp:1"],
                None,
                "invalid value \"tcp:1\" for --listen",
            ),
            (
                &["--listen=vsock:x"],
                None,
                "invalid value \"vsock:x\" for --listen",
            ),
            (&["--cid", "-1"], None, "invalid value \"-1\" for --cid"),
            (&["--cid", "4294967296"], None, "for --cid"),
            (&[], Some("three"), "for BANGER_AGENT_CID"),
            (&["--cid", "1", "--cid", "2"], None, "--cid was given twice"),
            (
                &["--listen", "vsock:1", "--listen=vsock:2"],
                None,
                "--listen was given twice",
            ),
            (&["serve"], None, "unexpected argument \"serve\""),
            (&["--stats", "x"], None, "--stats takes no arguments"),
            (&["--ports=1"], None, "--ports takes no arguments"),
            (
                &["--listen-addr=x"],
                None,
                "unexpected argument \"--listen-addr\"",
            ),
        ] {
            let err = parse_strs(args, env).expect_err(&format!("{args:?} must be refused"));
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }
}
