//! bangerd: the banger daemon. Everything it does lives in `banger::daemon`.

use std::process::ExitCode;

use clap::Parser;

/// bangerd owns banger's event log and runs every VM, image and kernel operation. The banger
/// CLI starts it on demand; run it by hand to watch its log (BANGER_LOG=debug for more).
#[derive(Parser)]
#[command(name = "bangerd", version)]
struct Args {
    /// Use the system layout (/var/lib/banger, /var/cache/banger, /run/banger) instead of the
    /// user's (XDG directories, or everything under BANGER_ROOT when it is set).
    #[arg(long)]
    system: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    banger::daemon::main(banger::daemon::Options {
        system: args.system,
    })
}
