//! Progress on a request's own stream: what a long request (a kernel pulled by `kernel.pull`
//! or on a `vm.create`'s first use) reports while it runs, sent to its client as stream items
//! before the result. Progress is not in the log; the log has the operation's steps.
//!
//! ```text
//!  operation task ──report(item)──▶ latest-value slot ──▶ forward() ──▶ stream item ──▶ client
//!   (detached)                       (watch channel)      (the request's handler)
//! ```
//!
//! Invariants:
//! - Reporting never blocks and never queues: the slot holds the latest item only, so a slow
//!   client sees fewer updates, never a growing buffer; an operation reports the same way
//!   whether anyone listens or not.
//! - The work is never cancelled by the client: a client that hangs up only stops the items;
//!   the operation runs on detached, as every operation does.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::dispatch::Cx;
use super::server::Conn;
use crate::rpc::protocol::{PROTOCOL_VERSION, Response};

/// Where work reports progress. Cheap to clone; reporting with no listener is fine.
#[derive(Clone)]
pub struct Reporter {
    slot: Arc<watch::Sender<Option<Value>>>,
}

/// The listening end, for [`forward`].
pub struct Listener {
    slot: watch::Receiver<Option<Value>>,
}

/// A reporter and its listener.
pub fn channel() -> (Reporter, Listener) {
    let (sender, receiver) = watch::channel(None);
    (
        Reporter {
            slot: Arc::new(sender),
        },
        Listener { slot: receiver },
    )
}

impl Reporter {
    /// A reporter nobody listens to.
    pub fn discard() -> Reporter {
        channel().0
    }

    /// Makes `item` the latest progress.
    pub fn report<T: Serialize>(&self, item: &T) {
        if let Ok(value) = serde_json::to_value(item) {
            self.slot.send_replace(Some(value));
        }
    }
}

/// Runs `work` to its end; meanwhile, when `enabled`, sends each newly reported item as an
/// item of the stream `cx` answers, until the client hangs up.
pub async fn forward<T>(
    cx: &Cx,
    conn: &mut Conn,
    mut listener: Listener,
    enabled: bool,
    work: impl Future<Output = T>,
) -> T {
    let mut forwarding = enabled;
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            result = &mut work => {
                // What was reported last before the end, if the client has not seen it.
                if forwarding && listener.slot.has_changed().unwrap_or(false) {
                    let item = listener.slot.borrow_and_update().clone();
                    if let Some(item) = item {
                        let _ = conn.output.send(&item_response(cx, item)).await;
                    }
                }
                return result;
            }
            changed = listener.slot.changed(), if forwarding => {
                if changed.is_err() {
                    forwarding = false;
                    continue;
                }
                let item = listener.slot.borrow_and_update().clone();
                if let Some(item) = item
                    && conn.output.send(&item_response(cx, item)).await.is_err()
                {
                    forwarding = false;
                }
            }
            () = conn.input.hung_up(), if forwarding => {
                conn.output.dead = true;
                forwarding = false;
            }
        }
    }
}

fn item_response(cx: &Cx, item: Value) -> Response {
    Response {
        v: PROTOCOL_VERSION,
        id: cx.request_id,
        op_id: Some(cx.op_id.to_string()),
        item: Some(item),
        result: None,
        error: None,
    }
}
