//! `events.follow`: streams the log's envelopes to a client, from any sequence number,
//! filtered by operation and/or VM name, either until caught up or for as long as the client
//! stays. `since_unix_ms` keeps only the events recorded at or after a time.
//!
//! It reads through a journal [`Subscription`](banger_events::Subscription), which reads the
//! log by sequence number: stored events first, then each new one as it commits. So there is
//! no gap and no duplicate between catch-up and live, and a slow client costs a bounded
//! buffer, never a growing queue.
//!
//! A VM filter matches by name across the VM's whole history: every VM id that was ever
//! defined with that name, plus every event of an operation that targeted a VM of that name
//! (a create's first events come before its `VmDefined`). When the stream starts after seq 0,
//! the events before it are scanned once to learn those ids.

use std::collections::HashSet;
use std::sync::Arc;

use banger_events::{Envelope, Event, LogError, OpId, OperationStarted, Seq, Target, VmId};
use serde_json::Value;

use super::Daemon;
use super::dispatch::{Cx, decode, encode, log_error};
use super::server::Conn;
use crate::api::{EventsEnd, EventsParams};
use crate::operations::BoxFuture;
use crate::rpc::protocol::{ErrorCode, PROTOCOL_VERSION, Response, RpcError};

/// The dispatch table's entry point.
pub fn handler<'c>(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: Value,
    conn: &'c mut Conn,
) -> BoxFuture<'c, Result<Value, RpcError>> {
    Box::pin(async move {
        let params: EventsParams = decode(cx.method, params)?;
        follow(daemon, cx, params, conn).await
    })
}

async fn follow(
    daemon: Arc<Daemon>,
    cx: Cx,
    params: EventsParams,
    conn: &mut Conn,
) -> Result<Value, RpcError> {
    let mut filter = Filter::new(params.op, params.vm.clone(), params.since_unix_ms);
    if filter.vm.is_some() && params.since > Seq::ZERO {
        filter = learn_history(&daemon, filter, params.since).await?;
    }
    // Without `follow`, "caught up" means the last event committed when the request came.
    let end = (!params.follow).then(|| daemon.journal.last_seq());
    if let Some(end) = end
        && params.since >= end
    {
        return encode(EventsEnd { last_seq: end });
    }
    let mut subscription = daemon.journal.subscribe(params.since);
    let op_id = Some(cx.op_id.to_string());
    loop {
        let next = tokio::select! {
            biased;
            _ = daemon.shutdown.cancelled() => return Err(shutting_down()),
            _ = conn.input.hung_up() => return Ok(hung_up(conn)),
            next = subscription.next() => next,
        };
        let envelope = match next {
            Ok(envelope) => envelope,
            Err(LogError::Closed) => return Err(shutting_down()),
            Err(error) => return Err(log_error(error)),
        };
        let seq = envelope.seq;
        if filter.matches(&envelope) {
            let item = encode(&envelope)?;
            let response = Response {
                v: PROTOCOL_VERSION,
                id: cx.request_id,
                op_id: op_id.clone(),
                item: Some(item),
                result: None,
                error: None,
            };
            tokio::select! {
                biased;
                _ = daemon.shutdown.cancelled() => return Err(shutting_down()),
                _ = conn.input.hung_up() => return Ok(hung_up(conn)),
                sent = conn.output.send(&response) => {
                    if sent.is_err() {
                        return Ok(hung_up(conn));
                    }
                }
            }
        }
        if let Some(end) = end
            && seq >= end
        {
            return encode(EventsEnd { last_seq: end });
        }
    }
}

/// The follower went away: end the stream without an answer (there is nobody to read it).
fn hung_up(conn: &mut Conn) -> Value {
    conn.output.dead = true;
    tracing::debug!("follower hung up; stream ended");
    Value::Null
}

fn shutting_down() -> RpcError {
    RpcError::new(
        ErrorCode::Unavailable,
        "bangerd is shutting down; the stream ended there — follow again with --since the last seq you saw",
    )
}

/// Which envelopes a stream shows.
struct Filter {
    op: Option<OpId>,
    vm: Option<VmFilter>,
    /// Only events with `at_unix_ms` at or after this.
    since_unix_ms: Option<u64>,
}

struct VmFilter {
    name: String,
    vm_ids: HashSet<VmId>,
    op_ids: HashSet<OpId>,
}

impl Filter {
    fn new(op: Option<OpId>, vm: Option<String>, since_unix_ms: Option<u64>) -> Filter {
        Filter {
            op,
            since_unix_ms,
            vm: vm.map(|name| VmFilter {
                name,
                vm_ids: HashSet::new(),
                op_ids: HashSet::new(),
            }),
        }
    }

    /// True when `envelope` passes every filter given. Learns VM ids and operations along the
    /// way, so it must see every envelope in order.
    fn matches(&mut self, envelope: &Envelope) -> bool {
        let vm_ok = match &mut self.vm {
            Some(vm) => vm.learn_and_match(envelope),
            None => true,
        };
        let op_ok = self.op.is_none_or(|op| envelope.op_id == Some(op));
        let time_ok = self
            .since_unix_ms
            .is_none_or(|since| envelope.at_unix_ms >= since);
        vm_ok && op_ok && time_ok
    }
}

impl VmFilter {
    fn learn_and_match(&mut self, envelope: &Envelope) -> bool {
        match &envelope.event {
            Event::VmDefined(defined) if defined.name == self.name => {
                self.vm_ids.insert(defined.vm_id);
            }
            Event::OperationStarted(OperationStarted {
                target: Target::Vm { vm_id, name },
                ..
            }) if *name == self.name || self.vm_ids.contains(vm_id) => {
                self.vm_ids.insert(*vm_id);
                if let Some(op_id) = envelope.op_id {
                    self.op_ids.insert(op_id);
                }
            }
            _ => {}
        }
        envelope
            .event
            .vm_id()
            .is_some_and(|id| self.vm_ids.contains(&id))
            || envelope.op_id.is_some_and(|op| self.op_ids.contains(&op))
    }
}

/// Reads the events up to `until` to learn which VM ids and operations the VM filter covers.
async fn learn_history(
    daemon: &Daemon,
    mut filter: Filter,
    until: Seq,
) -> Result<Filter, RpcError> {
    let journal = daemon.journal.clone();
    tokio::task::spawn_blocking(move || {
        let mut next = Seq(1);
        while next <= until {
            let batch = journal.read(next, until, 4096).map_err(log_error)?;
            let Some(last) = batch.last() else {
                break;
            };
            next = last.seq.next();
            if let Some(vm) = &mut filter.vm {
                for envelope in &batch {
                    vm.learn_and_match(envelope);
                }
            }
        }
        Ok(filter)
    })
    .await
    .map_err(|error| RpcError::internal(format!("reading the log's history failed: {error}")))?
}
