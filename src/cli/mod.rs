//! The `banger` command line.
//!
//! `banger` is a thin client: every command that reads or changes state asks bangerd over its
//! unix socket (starting it in user mode when nothing answers, see [`connect`]), except
//! `events replay`, which reads a log file offline. Output is tables and `key: value` blocks
//! for people, `--json` for machines.
//!
//! Code map:
//! - [`args`]: the clap command tree and all help text.
//! - [`connect`]: reaching bangerd, autostart.
//! - `vm`, `catalog` (image, kernel; `pull` shows an image pull's progress), `events`, `ops`,
//!   `replay`, `repair`, `doctor`, `system`, `dashboard`, `version`: one module per group of
//!   commands (`completions` is one function, here).
//! - `terminal`: the host terminal while a command runs on a terminal in the guest (raw mode
//!   and its guard, the window size, `TERM`).
//! - [`views`], [`format`](mod@format), [`size`](crate::size): how views, times and sizes read.
//! - [`error`]: errors, how they print, exit statuses.
//!
//! Invariants: nothing here touches the event log except `events replay` (and only a file it is
//! pointed at) and `events repair` (only while it holds bangerd's pid lock, so never beside a
//! running bangerd); nothing here prints with `println!` (a closed pipe must not panic); user input
//! is validated before anything is sent (VM names, sizes, paths made absolute).

pub mod args;
pub mod connect;
pub mod error;
pub mod format;

pub mod views;

mod catalog;
mod dashboard;
mod doctor;
// The dashboard's event page says what `banger events` says (`events::summary`).
pub(crate) mod events;
mod kernel_progress;
mod ops;
mod output;
mod pull;
mod repair;
mod replay;
mod ssh;
// `vm stats` and `vm ports`.
mod stats;
mod system;
mod terminal;
mod update;
mod version;
mod vm;
mod workspace;

use std::process::ExitCode;

use clap::Parser;

pub use args::Cli;
pub use error::CliError;

use args::{Command, EventsCommand};

/// Parses the command line. Help and `--version` are printed here (status 0); a usage error is
/// printed as `banger: error: …` with clap's usage hint, and gives status 2.
pub fn parse_args() -> Result<Cli, ExitCode> {
    use clap::error::ErrorKind;
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(error) => {
            let code = if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
            match error.kind() {
                // Help pages (asked for, or shown because a group was run without a verb) go
                // out as clap renders them.
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    // Nothing useful can be done if even this write fails.
                    let _ = error.print();
                }
                _ => eprint!("banger: {}", error.render()),
            }
            Err(code)
        }
    }
}

/// Runs one parsed command line to completion.
pub fn run(cli: Cli) -> Result<(), CliError> {
    // One thread is plenty for a client that waits on one socket, and it keeps the CLI's
    // start-up cost and footprint small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| CliError::failed("cannot start the async runtime", error))?;
    runtime.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> Result<(), CliError> {
    match command {
        Command::Vm(command) => vm::run(command).await,
        Command::Image(command) => catalog::image(command).await,
        Command::Kernel(command) => catalog::kernel(command).await,
        Command::Events(args) => match args.command {
            Some(EventsCommand::Replay(replay)) => replay::run(replay),
            Some(EventsCommand::Repair(repair)) => repair::run(repair),
            None => events::run(args.filter).await,
        },
        Command::Ops(args) => ops::run(args).await,
        Command::System(command) => system::run(command).await,
        Command::Doctor(args) => doctor::run(args).await,
        Command::Update(args) => update::run(args).await,
        Command::SshConfig(args) => ssh::config(args),
        Command::Dashboard(args) => dashboard::run(args).await,
        Command::Version(args) => version::run(args).await,
        Command::Completions(args) => completions(args),
    }
}

/// `banger completions SHELL`: the completion script clap generates from the command tree.
fn completions(args: args::CompletionsArgs) -> Result<(), CliError> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "banger", &mut script);
    output::out(String::from_utf8_lossy(&script))
}
