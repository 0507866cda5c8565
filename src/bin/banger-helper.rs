//! banger-helper: banger's narrow root helper. Everything it does lives in the
//! `banger-helper` crate; it is a binary of this package so that installing banger installs it.

fn main() -> std::process::ExitCode {
    banger_helper::cli::main()
}
