//! `banger-guest-agent`: the guest agent built from this package alone, which is what
//! `tools/build-agent.sh` links statically for guest images (see [`banger_agent::cli`]).
//!
//! The same program is installed as `banger-agent` by the `banger` package (its
//! `src/bin/banger-agent.rs`); this binary has another name because two targets of one
//! workspace named alike would overwrite each other in `target/`.

fn main() -> std::process::ExitCode {
    banger_agent::cli::main()
}
