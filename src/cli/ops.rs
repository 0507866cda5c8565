//! `banger ops`: operations in flight (and stuck), with the step each one is on. This is the
//! question `banger update`'s preflight asks before it swaps binaries.

use super::args::OpsArgs;
use super::connect::call;
use super::error::CliError;
use super::format::now_unix_ms;
use super::output::{json, line, out};
use super::views::{When, operation_table};
use crate::api::{OperationsListParams, OperationsListResult};

pub async fn run(args: OpsArgs) -> Result<(), CliError> {
    let result: OperationsListResult = call(
        "daemon.operations.list",
        &OperationsListParams { all: args.all },
    )
    .await?;
    if args.json {
        return json(&result.operations);
    }
    if result.operations.is_empty() {
        return line(if args.all {
            "no operations yet"
        } else {
            "no operations in flight"
        });
    }
    out(operation_table(
        &result.operations,
        When::Age {
            now_unix_ms: now_unix_ms(),
        },
    )
    .render())
}
