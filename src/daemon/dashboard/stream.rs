//! `GET /stream`: the log as Server-Sent Events, for the pages' live updates.
//!
//! Each event is one envelope, `event: envelope`, its `id` `SEQ.EVENT_ID` (the envelope's
//! sequence number and event id), its data a JSON [`EventRow`]. The stream starts after the
//! event the browser names in `Last-Event-ID` (which an `EventSource` sends by itself when it
//! reconnects), else after `?after=SEQ` (the number a page was rendered at), else at the end
//! of the log.
//!
//! It reads through a journal subscription, which reads the log by sequence number, so the
//! guarantee is the one `banger events --follow` gives: no gap and no duplicate, also across
//! a restart of bangerd (the browser reconnects with the last id it saw; the first event it
//! gets is the next one in the log). A slow browser costs the subscription's bounded buffer.
//!
//! The event id in `Last-Event-ID` is checked against the log: when the log no longer has that
//! event at that seq (it was repaired, `banger events repair`, or replaced), what the page
//! shows is history this log does not continue, so the stream sends one `event: reset` and
//! ends, and the page reloads (as `events --follow` refuses to go on when the last event it
//! printed does not come back unchanged).
//!
//! Limits: at most [`MAX_STREAMS`] streams at once (more are answered 503), and each ends
//! when bangerd shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use banger_events::{Envelope, EventId, LogError, Seq};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::Shared;
use super::pages::{bare_page, html_response};
use crate::cli::format::{format_timestamp, short_id};

/// The most event streams served at once (each is a browser tab on a dashboard page).
pub const MAX_STREAMS: usize = 32;

/// How long a browser waits before reconnecting a stream that ended (bangerd restarting).
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// How often an idle stream sends a comment, so that a dead connection is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event as the pages show it: what `banger events` prints on a line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    pub seq: u64,
    /// UTC, milliseconds: `2026-04-28T16:32:57.123Z`.
    pub time: String,
    /// The operation's short id.
    pub op: Option<String>,
    /// The event's name (`StepStarted`).
    pub event: String,
    pub summary: String,
    /// The VM the event is about, when it names one (its id).
    pub vm: Option<String>,
}

impl EventRow {
    pub fn of(envelope: &Envelope) -> EventRow {
        EventRow {
            seq: envelope.seq.0,
            time: format_timestamp(envelope.at_unix_ms),
            op: envelope.op_id.map(|op| short_id(&op)),
            event: envelope.event.name().to_owned(),
            summary: crate::cli::events::summary(&envelope.event),
            vm: envelope.event.vm_id().map(|id| id.to_string()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamQuery {
    after: Option<u64>,
}

/// An SSE event id as this stream writes them: `SEQ.EVENT_ID`; a bare `SEQ` is read too.
pub fn parse_event_id(text: &str) -> Option<(Seq, Option<EventId>)> {
    let text = text.trim();
    match text.split_once('.') {
        Some((seq, event)) => Some((Seq(seq.parse().ok()?), Some(event.parse().ok()?))),
        None => Some((Seq(text.parse().ok()?), None)),
    }
}

pub async fn events(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Response {
    let after = match headers.get("last-event-id") {
        Some(value) => match value.to_str().ok().and_then(parse_event_id) {
            Some((seq, event_id)) => {
                if let Some(event_id) = event_id
                    && let Some(reason) = changed_history(&shared, seq, event_id).await
                {
                    return reset(reason);
                }
                seq
            }
            None => {
                return html_response(
                    StatusCode::BAD_REQUEST,
                    bare_page(
                        "Bad request",
                        "Last-Event-ID must be SEQ.EVENT_ID, as this stream sends them.",
                        None,
                    ),
                );
            }
        },
        None => query
            .after
            .map_or_else(|| shared.daemon.journal.last_seq(), Seq),
    };
    let Ok(permit) = shared.streams.clone().try_acquire_owned() else {
        return html_response(
            StatusCode::SERVICE_UNAVAILABLE,
            bare_page(
                "Too many streams",
                &format!(
                    "This dashboard serves at most {MAX_STREAMS} live pages at once; close some tabs."
                ),
                None,
            ),
        );
    };
    let subscription = shared.daemon.journal.subscribe(after);
    let shutdown = shared.daemon.shutdown.clone();
    // The permit lives as long as the stream does.
    let envelopes = futures_util::stream::unfold(
        (subscription, permit),
        |(mut subscription, permit)| async move {
            match subscription.next().await {
                Ok(envelope) => Some((sse_event(&envelope), (subscription, permit))),
                Err(LogError::Closed) => None,
                Err(error) => {
                    tracing::warn!(%error, "the dashboard's event stream cannot read the log");
                    None
                }
            }
        },
    );
    let first = SseEvent::default()
        .retry(RECONNECT_AFTER)
        .comment(format!("banger event stream after seq {after}"));
    let stream = futures_util::stream::once(async move { first })
        .chain(envelopes)
        .take_until(shutdown.cancelled_owned())
        .map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

fn sse_event(envelope: &Envelope) -> SseEvent {
    let row = EventRow::of(envelope);
    // JSON text has no raw newline, which an SSE data line must not contain.
    let data = serde_json::to_string(&row).unwrap_or_else(|_| "{}".to_owned());
    SseEvent::default()
        .id(format!("{}.{}", envelope.seq.0, envelope.event_id))
        .event("envelope")
        .data(data)
}

/// Why the log does not continue what a browser saw up to event `event_id` at `seq`, if it
/// does not.
async fn changed_history(shared: &Shared, seq: Seq, event_id: EventId) -> Option<String> {
    if seq == Seq::ZERO {
        return None;
    }
    let journal = shared.daemon.journal.clone();
    let read = tokio::task::spawn_blocking(move || journal.read(seq, seq, 1)).await;
    match read {
        Ok(Ok(envelopes)) => match envelopes.first() {
            Some(envelope) if envelope.seq == seq && envelope.event_id == event_id => None,
            Some(_) => Some(format!(
                "event {seq} of the log is not the one this page saw (the log was repaired or replaced)"
            )),
            None => Some(format!(
                "the log ends before event {seq}, which this page saw (the log was repaired or replaced)"
            )),
        },
        // Cannot tell: go on as asked; the subscription reports a log it cannot read.
        Ok(Err(error)) => {
            tracing::warn!(%error, %seq, "cannot check a resuming stream's last event");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "cannot check a resuming stream's last event");
            None
        }
    }
}

/// A stream of one `reset` event: the page must start again from a fresh render.
fn reset(reason: String) -> Response {
    let data = serde_json::to_string(&serde_json::json!({ "reason": reason }))
        .unwrap_or_else(|_| "{}".to_owned());
    let event = SseEvent::default().event("reset").data(data);
    Sse::new(futures_util::stream::once(async move {
        Ok::<_, Infallible>(event)
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_carry_the_seq_and_the_event() {
        assert_eq!(parse_event_id("42"), Some((Seq(42), None)));
        assert_eq!(
            parse_event_id("42.00ff"),
            Some((Seq(42), Some(EventId(0xff))))
        );
        for bad in ["", "x", "42.", ".ff", "42.zz", "-1", "42.ff.1"] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }
}
