//! `banger ops`: operations in flight (and stuck), with the step each one is on. This is the
//! question `banger update`'s preflight asks before it swaps binaries. `banger ops retry`
//! runs a stuck operation's undos again.

use super::args::{OpsArgs, OpsCommand, OpsRetryArgs};
use super::connect::{call, connect};
use super::error::CliError;
use super::format::now_unix_ms;
use super::output::{json, line, out};
use super::views::{When, operation_table};
use crate::api::{
    OperationsListParams, OperationsListResult, OperationsRetryParams, OperationsRetryResult,
};

pub async fn run(args: OpsArgs) -> Result<(), CliError> {
    if let Some(OpsCommand::Retry(retry)) = args.command {
        return run_retry(retry).await;
    }
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

/// `banger ops retry OP_ID`: one line saying the operation is rolled back; a failed undo is an
/// error that says it stays stuck.
async fn run_retry(args: OpsRetryArgs) -> Result<(), CliError> {
    let mut client = connect().await?;
    let op_id = super::events::resolve_op(&mut client, &args.op).await?;
    let result: OperationsRetryResult = client
        .call("daemon.operations.retry", &OperationsRetryParams { op_id })
        .await?;
    let op = &result.operation;
    line(format!(
        "operation {} ({} on {}) is {}; {} is no longer blocked",
        op.op_id, op.kind, op.target, op.status, op.target
    ))
}
