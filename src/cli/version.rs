//! `banger version`: this CLI's version and, when one is running, bangerd's. It never starts
//! bangerd: asking for a version must not change what runs on the machine.

use serde::Serialize;

use super::args::VersionArgs;
use super::connect::connect_if_running;
use super::error::CliError;
use super::output::{json, line};
use crate::api::PingResult;
use crate::rpc::PROTOCOL_VERSION;

#[derive(Serialize)]
struct Versions {
    banger: ClientVersion,
    /// `null` when no bangerd answers.
    bangerd: Option<PingResult>,
    /// Why bangerd's version is missing, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    bangerd_error: Option<String>,
}

#[derive(Serialize)]
struct ClientVersion {
    version: &'static str,
    protocol: u32,
}

pub async fn run(args: VersionArgs) -> Result<(), CliError> {
    let (bangerd, bangerd_error) = match connect_if_running().await {
        Ok(Some(mut client)) => match client
            .call::<_, PingResult>("daemon.ping", &serde_json::json!({}))
            .await
        {
            Ok(ping) => (Some(ping), None),
            Err(error) => (None, Some(super::error::chain(&error))),
        },
        Ok(None) => (None, None),
        Err(error) => (None, Some(super::error::chain(&error))),
    };
    let versions = Versions {
        banger: ClientVersion {
            version: env!("CARGO_PKG_VERSION"),
            protocol: PROTOCOL_VERSION,
        },
        bangerd,
        bangerd_error,
    };
    if args.json {
        return json(&versions);
    }
    line(format!(
        "banger {} (protocol {})",
        versions.banger.version, versions.banger.protocol
    ))?;
    match (&versions.bangerd, &versions.bangerd_error) {
        (Some(ping), _) => line(format!(
            "bangerd {} (protocol {}, pid {}, last event {}, state {})",
            ping.version, ping.protocol, ping.pid, ping.last_seq, ping.state_dir
        )),
        (None, Some(error)) => line(format!("bangerd: unreachable: {error}")),
        (None, None) => line("bangerd: not running (the first command that needs it starts it)"),
    }
}
