//! banger-agent: the guest agent. Everything it does lives in the `banger-agent` crate
//! (`src/agent/`); it is a binary of this package so that installing banger installs it, and
//! so that this package's tests and tools find it beside bangerd.

fn main() -> std::process::ExitCode {
    banger_agent::cli::main()
}
