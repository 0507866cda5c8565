//! Writing to stdout. Every write goes through here so that a closed pipe
//! (`banger events --follow | head`) ends the command quietly instead of panicking the way
//! `println!` does.

use std::io::Write;

use serde::Serialize;

use super::error::CliError;

/// Writes `text` as is and flushes, so that a follower sees each line as it is printed.
pub fn out(text: impl AsRef<str>) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_ref().as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CliError::Output)
}

/// Writes `text` and a newline.
pub fn line(text: impl AsRef<str>) -> Result<(), CliError> {
    out(format!("{}\n", text.as_ref()))
}

/// Pretty JSON for `--json` on list and show commands: still one document, easy on eyes.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| CliError::failed("cannot encode the output as JSON", error))?;
    line(text)
}

/// Compact JSON on one line, for streams read line by line (`banger events --json`).
pub fn json_line<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string(value)
        .map_err(|error| CliError::failed("cannot encode the output as JSON", error))?;
    line(text)
}
