//! `banger vm`: the VM verbs that work today (list, show); the rest answer "not implemented
//! yet" through [`super::future`].

use super::args::{ListArgs, NameJsonArgs, VmCommand};
use super::connect::call;
use super::error::CliError;
use super::format::now_unix_ms;
use super::future;
use super::output::{json, line, out};
use super::views::{When, handle_table, operation_table, vm_details, vm_table};
use crate::api::{NameParams, VmListResult, VmShowResult};

pub async fn run(command: VmCommand) -> Result<(), CliError> {
    match command {
        VmCommand::List(args) => list(args).await,
        VmCommand::Show(args) => show(args).await,
        other => Err(future::vm(&other)),
    }
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let result: VmListResult = call("vm.list", &serde_json::json!({})).await?;
    if args.json {
        return json(&result.vms);
    }
    if result.vms.is_empty() {
        return line("no VMs");
    }
    out(vm_table(
        &result.vms,
        When::Age {
            now_unix_ms: now_unix_ms(),
        },
    )
    .render())
}

async fn show(args: NameJsonArgs) -> Result<(), CliError> {
    let params = NameParams {
        name: args.name.to_string(),
    };
    let result: VmShowResult = call("vm.show", &params).await?;
    if args.json {
        return json(&result);
    }
    let now = now_unix_ms();
    let mut text = vm_details(&result.vm, now);
    text.push_str("\nhost resources:\n");
    if result.handles.is_empty() {
        text.push_str("  none\n");
    } else {
        let rows = result
            .handles
            .iter()
            .map(|entry| (&entry.handle, entry.view.owner, entry.view.acquired_seq));
        text.push_str(&indent(&handle_table(rows, None).render()));
    }
    text.push_str("\noperations:\n");
    if result.operations.is_empty() {
        text.push_str("  none\n");
    } else {
        text.push_str(&indent(
            &operation_table(&result.operations, When::Age { now_unix_ms: now }).render(),
        ));
    }
    out(text)
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}
