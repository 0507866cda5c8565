//! `banger`, the command line client of bangerd. All of it lives in `banger::cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match banger::cli::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match banger::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(report) = error.report() {
                eprintln!("{report}");
            }
            error.exit_code()
        }
    }
}
