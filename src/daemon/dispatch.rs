//! The dispatch table: the single source of truth for which RPC methods bangerd speaks, and
//! the code that turns one request line into one response.
//!
//! Adding a method is one line in [`METHODS`] plus its handler; the unit test below pins the
//! documented list so that a method cannot appear or vanish by accident.
//!
//! Every request that parses gets a fresh op id: it is returned in `Response.op_id`, recorded
//! in the request's tracing span, and carried on every event the request appends.

use std::sync::Arc;
use std::time::Instant;

use banger_events::{LogError, OpId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::Instrument;

use super::server::{Conn, error_response, result_response};
use super::{Daemon, VERSION, dns, follow, guest, handlers, images, kernels, stats, vm, workspace};
use crate::operations::{BoxFuture, OpError};
use crate::rpc::protocol::{ErrorCode, PROTOCOL_VERSION, Request, Response, RpcError};

/// What a handler knows about the request it serves.
#[derive(Clone, Debug)]
pub struct Cx {
    pub op_id: OpId,
    /// The id the client gave the request; stream items carry it.
    pub request_id: u64,
    pub method: &'static str,
    pub span: tracing::Span,
}

/// A plain call: parameters in, one result out.
pub type CallFn = fn(Arc<Daemon>, Cx, Value) -> BoxFuture<'static, Result<Value, RpcError>>;

/// A streaming call: writes items to the connection itself, then returns the final result.
pub type StreamFn =
    for<'c> fn(Arc<Daemon>, Cx, Value, &'c mut Conn) -> BoxFuture<'c, Result<Value, RpcError>>;

pub enum Handler {
    Call(CallFn),
    Stream(StreamFn),
}

/// Wraps a typed `async fn(Arc<Daemon>, Cx, P) -> Result<R, RpcError>` as a [`CallFn`]:
/// decodes `P` from the parameters and encodes `R` as the result.
macro_rules! call {
    ($handler:path) => {
        Handler::Call(|daemon, cx, params| {
            Box::pin(async move {
                let params = decode(cx.method, params)?;
                encode($handler(daemon, cx, params).await?)
            })
        })
    };
}

/// Every method bangerd speaks, and its handler.
pub static METHODS: &[(&str, Handler)] = &[
    ("daemon.ping", call!(handlers::ping)),
    ("daemon.shutdown", call!(handlers::shutdown)),
    ("daemon.operations.list", call!(handlers::operations_list)),
    ("daemon.operations.retry", call!(handlers::operations_retry)),
    ("daemon.orphans", call!(handlers::orphans)),
    ("daemon.orphans.remove", call!(handlers::orphans_remove)),
    ("events.follow", Handler::Stream(follow::handler)),
    ("vm.list", call!(handlers::vm_list)),
    ("vm.show", call!(handlers::vm_show)),
    ("vm.create", Handler::Stream(vm::create_handler)),
    ("vm.start", call!(vm::start)),
    ("vm.stop", call!(vm::stop)),
    ("vm.restart", call!(vm::restart)),
    ("vm.kill", call!(vm::kill)),
    ("vm.delete", call!(vm::delete)),
    ("vm.set", call!(vm::set)),
    ("vm.exec", Handler::Stream(guest::exec_handler)),
    ("vm.logs", Handler::Stream(guest::logs_handler)),
    ("vm.health", call!(guest::health)),
    ("vm.ping", call!(guest::ping)),
    ("image.list", call!(handlers::image_list)),
    ("image.show", call!(handlers::image_show)),
    ("image.register", call!(handlers::image_register)),
    ("image.delete", call!(handlers::image_delete)),
    ("image.pull", Handler::Stream(images::pull_handler)),
    ("image.promote", call!(images::promote)),
    ("image.catalog", call!(images::catalog)),
    ("image.cache.prune", call!(images::cache_prune)),
    ("kernel.list", call!(handlers::kernel_list)),
    ("kernel.show", call!(handlers::kernel_show)),
    ("kernel.import", call!(handlers::kernel_import)),
    ("kernel.remove", call!(handlers::kernel_remove)),
    ("kernel.pull", Handler::Stream(kernels::pull_handler)),
    ("kernel.catalog", call!(kernels::catalog)),
    ("dns.status", call!(dns::status)),
    ("network.status", call!(handlers::network_status)),
    ("vm.stats", call!(stats::stats)),
    ("vm.ports", call!(stats::ports)),
    ("vm.workspace.import", call!(workspace::import)),
    ("vm.workspace.export", call!(workspace::export)),
    ("vm.workspace.status", call!(workspace::status)),
];

/// The handler of `method`, with the method name as the table spells it.
pub fn lookup(method: &str) -> Option<(&'static str, &'static Handler)> {
    METHODS
        .iter()
        .find(|(name, _)| *name == method)
        .map(|(name, handler)| (*name, handler))
}

/// The names of every method, in table order.
pub fn method_names() -> impl Iterator<Item = &'static str> {
    METHODS.iter().map(|(name, _)| *name)
}

/// Decodes a method's parameters; `null` or absent counts as `{}`.
pub fn decode<P: DeserializeOwned>(method: &str, params: Value) -> Result<P, RpcError> {
    let params = if params.is_null() {
        Value::Object(Default::default())
    } else {
        params
    };
    serde_json::from_value(params)
        .map_err(|error| RpcError::invalid(format!("invalid parameters for {method}: {error}")))
}

pub fn encode<R: Serialize>(result: R) -> Result<Value, RpcError> {
    serde_json::to_value(result)
        .map_err(|error| RpcError::internal(format!("cannot encode the result: {error}")))
}

/// Handles one request line and returns the response to write (a stream has already written
/// its items by then).
pub(crate) async fn handle(daemon: &Arc<Daemon>, conn: &mut Conn, line: &[u8]) -> Response {
    let request: Request = match serde_json::from_slice(line) {
        Ok(request) => request,
        Err(error) => {
            // Answer with the request's id when the line is JSON with an id after all.
            let id = serde_json::from_slice::<Value>(line)
                .ok()
                .and_then(|value| value.get("id")?.as_u64())
                .unwrap_or(0);
            return error_response(
                id,
                None,
                RpcError::invalid(format!(
                    "malformed request: {error}; send one JSON object per line, like {{\"v\":{PROTOCOL_VERSION},\"id\":1,\"method\":\"daemon.ping\",\"params\":{{}}}}"
                )),
            );
        }
    };
    if request.v != PROTOCOL_VERSION {
        return error_response(
            request.id,
            None,
            RpcError::invalid(format!(
                "protocol version {} is not spoken here: this bangerd ({VERSION}) speaks version {PROTOCOL_VERSION}; use the banger CLI of the same version, or restart bangerd after upgrading",
                request.v
            )),
        );
    }
    let op_id = daemon.ids.op_id();
    let Some((method, handler)) = lookup(&request.method) else {
        return error_response(
            request.id,
            Some(op_id.to_string()),
            RpcError::invalid(format!(
                "unknown method {:?}; this bangerd ({VERSION}) knows: {} — if the CLI is newer than the daemon, restart bangerd",
                request.method,
                method_names().collect::<Vec<_>>().join(", ")
            )),
        );
    };
    let span = tracing::info_span!("request", %op_id, method, id = request.id);
    let cx = Cx {
        op_id,
        request_id: request.id,
        method,
        span: span.clone(),
    };
    let began = Instant::now();
    let result = match handler {
        Handler::Call(call) => {
            call(daemon.clone(), cx, request.params)
                .instrument(span.clone())
                .await
        }
        Handler::Stream(stream) => {
            stream(daemon.clone(), cx, request.params, conn)
                .instrument(span.clone())
                .await
        }
    };
    let elapsed_ms = began.elapsed().as_secs_f64() * 1e3;
    let op_id = Some(op_id.to_string());
    match result {
        Ok(value) => {
            span.in_scope(|| tracing::debug!(elapsed_ms, "answered"));
            result_response(request.id, op_id, value)
        }
        Err(error) => {
            span.in_scope(|| match error.code {
                ErrorCode::Internal => tracing::error!(elapsed_ms, %error, "failed"),
                _ => tracing::info!(elapsed_ms, %error, "refused"),
            });
            error_response(request.id, op_id, error)
        }
    }
}

/// The RPC error for an operation's failure.
pub fn op_error(error: OpError) -> RpcError {
    let code = match &error {
        OpError::InvalidArgument(_) => ErrorCode::InvalidArgument,
        OpError::NotFound(_) => ErrorCode::NotFound,
        OpError::AlreadyExists(_) => ErrorCode::AlreadyExists,
        OpError::Busy(_) => ErrorCode::Busy,
        OpError::NotRunning(_) => ErrorCode::NotRunning,
        OpError::WrongState(_) => ErrorCode::WrongState,
        OpError::Unavailable(_) | OpError::Log(_) => ErrorCode::Unavailable,
        OpError::Failed { .. } | OpError::Stuck { .. } | OpError::StillStuck { .. } => {
            ErrorCode::OperationFailed
        }
        OpError::Internal(_) => ErrorCode::Internal,
    };
    RpcError::new(code, error.to_string())
}

/// The RPC error for a failure to read the log.
pub fn log_error(error: LogError) -> RpcError {
    RpcError::new(
        ErrorCode::Unavailable,
        format!("cannot read the event log: {error}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented surface. Adding or removing a method means changing this list on
    /// purpose (and the docs with it).
    const DOCUMENTED: &[&str] = &[
        "daemon.ping",
        "daemon.shutdown",
        "daemon.operations.list",
        "daemon.operations.retry",
        "daemon.orphans",
        "daemon.orphans.remove",
        "events.follow",
        "vm.list",
        "vm.show",
        "vm.create",
        "vm.start",
        "vm.stop",
        "vm.restart",
        "vm.kill",
        "vm.delete",
        "vm.set",
        "vm.exec",
        "vm.logs",
        "vm.health",
        "vm.ping",
        "image.list",
        "image.show",
        "image.register",
        "image.delete",
        "image.pull",
        "image.promote",
        "image.catalog",
        "image.cache.prune",
        "kernel.list",
        "kernel.show",
        "kernel.import",
        "kernel.remove",
        "kernel.pull",
        "kernel.catalog",
        "dns.status",
        "network.status",
        "vm.stats",
        "vm.ports",
        "vm.workspace.import",
        "vm.workspace.export",
        "vm.workspace.status",
    ];

    #[test]
    fn dispatch_table_matches_documented_methods() {
        let names: Vec<&str> = method_names().collect();
        assert_eq!(names, DOCUMENTED);
    }

    #[test]
    fn method_names_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for name in method_names() {
            assert!(seen.insert(name), "{name} is in the table twice");
            assert!(
                name.split('.').count() >= 2
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'),
                "{name} is not group.verb"
            );
            assert!(lookup(name).is_some());
        }
        assert!(lookup("vm.frobnicate").is_none());
    }

    #[test]
    fn null_params_decode_as_empty_object() {
        let params: crate::api::OperationsListParams = decode("x", Value::Null).unwrap();
        assert!(!params.all);
        let error =
            decode::<crate::api::NameParams>("image.show", serde_json::json!({})).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert!(error.message.contains("image.show"), "{}", error.message);
    }
}
