//! `banger events`: the event log, read through bangerd's `events.follow` stream.
//!
//! Reading goes through the daemon because redb lets one process open the file; the daemon
//! reads by sequence number, so the stream has no gaps or repeats from `--since` on, including
//! across the switch from catching up to following. Without `--follow` the stream ends once it
//! has caught up; with it, it runs until Ctrl-C (or SIGTERM), which ends it with status 0.
//!
//! A follower outlives bangerd: when the daemon stops, is killed or restarts, it says so once
//! on stderr, waits for a bangerd to answer again (polling the socket; it never starts one
//! itself, so stopping bangerd on purpose is not undone by a follower left running), and asks
//! for the stream again after the last event it printed. It first checks that the new stream
//! starts with that very event (the whole envelope, event id included), so a log that was
//! repaired or replaced meanwhile is reported instead of spliced onto what was printed. So
//! across any number of restarts the output has no gap and no repeat. `--no-reconnect` ends
//! the command instead, naming the seq to continue from.
//!
//! ```text
//!  connect (autostart) ─▶ ping (pid) ─▶ stream from `since` ─▶ print… ─▶ Ctrl-C: exit 0
//!                                            ▲                  │ connection lost, or
//!                                            │                  │ `unavailable` and the same
//!                          first item is the │                  ▼ bangerd no longer answers
//!                          last one printed? └── ping answers ◀── "lost bangerd…" (once),
//!                          (else: error)         again            poll the socket
//! ```
//!
//! Human lines are `SEQ  TIME  OP  EVENT  SUMMARY`, fixed-width up to the summary so that a
//! column of events reads straight down; `--json` prints each envelope as one JSON line.

use std::io::Write;
use std::time::Duration;

use banger_events::{Envelope, Event, OpId, Seq};

use super::args::{EventsFilterArgs, Since};
use super::connect::{connect, layout, ping_answer};
use super::error::CliError;
use super::format::{format_timestamp, now_unix_ms, short_id};
use super::output::{json_line, line};
use super::views::owner_text;
use crate::api::{EventsParams, OperationsListParams, OperationsListResult, PingResult};
use crate::paths::Layout;
use crate::rpc::{Client, ClientError, ErrorCode, StreamEvent};
use crate::size::format_bytes;

/// Between two looks at the socket while bangerd is away: starts short (a restart takes tens
/// of milliseconds) and backs off to this.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(500);
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(20);

pub async fn run(args: EventsFilterArgs) -> Result<(), CliError> {
    // Installed before anything else, so that Ctrl-C ends the command cleanly at any point,
    // including while bangerd is being started or waited for.
    let interrupted = interrupted();
    tokio::select! {
        () = interrupted => Ok(()),
        result = print_events(args) => result,
    }
}

async fn print_events(args: EventsFilterArgs) -> Result<(), CliError> {
    // Check the id's spelling before anything is started or asked.
    let op_text = args.op.as_deref().map(parse_op).transpose()?;
    let layout = layout()?;
    let mut client = connect().await?;
    let op = match op_text {
        Some(OpText::Full(id)) => Some(id),
        Some(OpText::Prefix(prefix)) => Some(resolve_prefix(&mut client, &prefix).await?),
        None => None,
    };
    let (since, since_unix_ms) = match args.since {
        None => (0, None),
        Some(Since::Seq(seq)) => (seq, None),
        Some(Since::Ago { ms }) => (0, Some(now_unix_ms().saturating_sub(ms))),
        Some(Since::At { unix_ms }) => (0, Some(unix_ms)),
    };
    let mut follower = Follower {
        params: EventsParams {
            since: Seq(since),
            op,
            vm: args.vm.map(String::from),
            follow: args.follow,
            since_unix_ms,
        },
        json: args.json,
        last: None,
        layout,
    };
    let reconnect = args.follow && !args.no_reconnect;
    let mut session = Session::start(client).await;
    loop {
        let streamed = match session {
            Ok(session) => follower.follow(session).await,
            Err(error) => Err(Ended::from(error)),
        };
        let lost = match streamed {
            Ok(()) => return Ok(()),
            Err(Ended::Failed(error)) => return Err(error),
            Err(Ended::Lost(lost)) => lost,
        };
        let after = follower.position();
        if !reconnect {
            return Err(lost.into_error(after));
        }
        note(&format!(
            "lost bangerd after seq {after} ({}); waiting for it to come back (Ctrl-C to stop)",
            lost.why()
        ));
        let back = follower.wait_for_bangerd().await;
        note(&format!(
            "bangerd is back (pid {}); going on after seq {after}",
            back.ping.pid
        ));
        session = Ok(back);
    }
}

/// Writes a line on stderr; a closed stderr is no reason to stop following.
fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "banger: {text}");
}

/// One connection's stream, and who serves it.
struct Session {
    client: Client,
    /// bangerd's answer when the session began: its pid tells a restart apart.
    ping: PingResult,
}

impl Session {
    async fn start(mut client: Client) -> Result<Session, ClientError> {
        let ping = client.call("daemon.ping", &serde_json::json!({})).await?;
        Ok(Session { client, ping })
    }
}

/// The printing side: what to ask for, and the last event printed.
struct Follower {
    params: EventsParams,
    json: bool,
    /// The last event printed: the stream resumes after it, and must agree with it.
    last: Option<Envelope>,
    layout: Layout,
}

/// Why a stream ended before its end.
enum Ended {
    /// The connection to bangerd is gone (it stopped, was killed or restarted).
    Lost(Lost),
    /// Following cannot go on.
    Failed(CliError),
}

enum Lost {
    Closed,
    Io(std::io::Error),
    ShuttingDown(crate::rpc::RpcError),
}

impl Lost {
    fn why(&self) -> String {
        match self {
            Lost::Closed => "it closed the connection".into(),
            Lost::Io(error) => error.to_string(),
            Lost::ShuttingDown(error) => error.message.clone(),
        }
    }

    /// The error of a follower that does not reconnect: where to pick up, so that nothing is
    /// missed or printed twice.
    fn into_error(self, after: Seq) -> CliError {
        match self {
            Lost::ShuttingDown(error) => CliError::failed(
                format!(
                    "the event stream ended after seq {after} (continue with `banger events --since {after}`)"
                ),
                error,
            ),
            Lost::Closed | Lost::Io(_) => CliError::message(format!(
                "bangerd closed the event stream (it stopped or restarted) after seq {after}; continue with `banger events --since {after}`"
            )),
        }
    }
}

impl From<ClientError> for Ended {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Closed => Ended::Lost(Lost::Closed),
            ClientError::Io(error) => Ended::Lost(Lost::Io(error)),
            other => Ended::Failed(other.into()),
        }
    }
}

impl Follower {
    /// Where the output stands: the last seq printed, or where it started.
    fn position(&self) -> Seq {
        self.last
            .as_ref()
            .map_or(self.params.since, |envelope| envelope.seq)
    }

    /// Streams on `session` until the stream ends (caught up, without `--follow`) or the
    /// connection is lost.
    async fn follow(&mut self, session: Session) -> Result<(), Ended> {
        let daemon_pid = session.ping.pid;
        let mut params = self.params.clone();
        // Ask again from the last event printed, which must come back first and unchanged.
        let mut expected = self.last.clone();
        if let Some(last) = &expected {
            params.since = Seq(last.seq.0 - 1);
            if session.ping.last_seq < last.seq {
                return Err(Ended::Failed(self.changed_log(format!(
                    "it ends at seq {}, before seq {}, the last one printed",
                    session.ping.last_seq, last.seq
                ))));
            }
        }
        let mut stream = session.client.stream("events.follow", &params).await?;
        loop {
            let next = match stream.next::<Envelope>().await {
                Ok(next) => next,
                Err(ClientError::Rpc(error)) if error.code == ErrorCode::Unavailable => {
                    // bangerd says so when it is shutting down; the same bangerd answering on,
                    // and not stopping, means the stream itself failed (a damaged log), which
                    // waiting would not fix. (Once stopping starts, every ping says so.)
                    return Err(match ping_answer(&self.layout).await {
                        Some(ping) if ping.pid == daemon_pid && !ping.shutting_down => {
                            Ended::Failed(CliError::failed(
                                format!("the event stream failed after seq {}", self.position()),
                                error,
                            ))
                        }
                        _ => Ended::Lost(Lost::ShuttingDown(error)),
                    });
                }
                Err(other) => return Err(other.into()),
            };
            let envelope = match next {
                StreamEvent::Item(envelope) => envelope,
                StreamEvent::End(_) => return Ok(()),
            };
            if let Some(expected) = expected.take() {
                if envelope != expected {
                    return Err(Ended::Failed(self.changed_log(format!(
                        "its event at seq {} is not the one printed",
                        expected.seq
                    ))));
                }
                continue;
            }
            if self.json {
                json_line(&envelope).map_err(Ended::Failed)?;
            } else {
                line(event_line(&envelope)).map_err(Ended::Failed)?;
            }
            self.last = Some(envelope);
        }
    }

    fn changed_log(&self, detail: String) -> CliError {
        CliError::message(format!(
            "the log bangerd serves now is not the one this follower was reading: {detail}; it was repaired or replaced meanwhile (a repair leaves a log_repaired event: see `banger events`), so the follower stops rather than print a different history; follow again with `banger events --follow --since SEQ`"
        ))
    }

    /// Polls the socket until a bangerd answers, without ever starting one.
    async fn wait_for_bangerd(&self) -> Session {
        let socket = self.layout.socket_path();
        let mut pause = FIRST_POLL_INTERVAL;
        loop {
            if ping_answer(&self.layout).await.is_some()
                && let Ok(client) = Client::connect(&socket).await
                && let Ok(session) = Session::start(client).await
            {
                return session;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL_INTERVAL);
        }
    }
}

/// Resolves when the user asks the command to stop: Ctrl-C (SIGINT), or SIGTERM from a
/// supervisor. The handlers are installed when this is called, not when it is first polled.
/// A handler that cannot be installed leaves that signal's default action in place.
fn interrupted() -> impl Future<Output = ()> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt()).ok();
    let terminate = signal(SignalKind::terminate()).ok();
    async fn wait(signal: Option<Signal>) {
        match signal {
            Some(mut signal) => {
                signal.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    async move {
        tokio::select! {
            () = wait(interrupt) => {},
            () = wait(terminate) => {},
        }
    }
}

/// The operation `text` names (all 16 hex digits, or an unambiguous prefix), asking
/// `client` for the list when it is a prefix. Shared with `banger ops retry`.
pub(super) async fn resolve_op(client: &mut Client, text: &str) -> Result<OpId, CliError> {
    match parse_op(text)? {
        OpText::Full(id) => Ok(id),
        OpText::Prefix(prefix) => resolve_prefix(client, &prefix).await,
    }
}

/// An operation id as typed: all 16 hex digits, or a prefix of one (as `banger ops` and the
/// event lines print them).
enum OpText {
    Full(OpId),
    Prefix(String),
}

fn parse_op(text: &str) -> Result<OpText, CliError> {
    let text = text.trim().to_ascii_lowercase();
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CliError::Usage(format!(
            "{text:?} is not an operation id: expected up to 16 hexadecimal digits, as `banger ops` prints them"
        )));
    }
    if text.len() < 16 {
        return Ok(OpText::Prefix(text));
    }
    text.parse()
        .map(OpText::Full)
        .map_err(|error| CliError::Usage(error.to_string()))
}

/// The one operation whose id starts with `prefix`.
async fn resolve_prefix(client: &mut Client, prefix: &str) -> Result<OpId, CliError> {
    let result: OperationsListResult = client
        .call(
            "daemon.operations.list",
            &OperationsListParams { all: true },
        )
        .await?;
    let matches: Vec<OpId> = result
        .operations
        .iter()
        .map(|op| op.op_id)
        .filter(|id| id.to_string().starts_with(prefix))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(CliError::Usage(format!(
            "no operation id starts with {prefix}; see `banger ops --all`"
        ))),
        several => Err(CliError::Usage(format!(
            "operation id prefix {prefix} is ambiguous ({} operations match, e.g. {}); give more digits",
            several.len(),
            several
                .iter()
                .take(3)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The events a repair lost, as a person reads them: `lost seq 41..57`, `lost seq 41`, or
/// `lost seq 41 and any after it` when the damaged file did not say where it ended.
pub fn lost_range(first: banger_events::Seq, last: Option<banger_events::Seq>) -> String {
    match last {
        Some(last) if last > first => format!("lost seq {first}..{last}"),
        Some(_) => format!("lost seq {first}"),
        None => format!("lost seq {first} and any after it"),
    }
}

/// One human line for an event.
pub fn event_line(envelope: &Envelope) -> String {
    let op = envelope
        .op_id
        .map_or_else(|| "-".to_owned(), |id| short_id(&id));
    let summary = summary(&envelope.event);
    let text = format!(
        "{:>6}  {}  {:<8}  {:<21}  {}",
        envelope.seq.0,
        format_timestamp(envelope.at_unix_ms),
        op,
        envelope.event.name(),
        summary
    );
    text.trim_end().to_owned()
}

/// A short account of what an event says, for people; `--json` has everything.
pub fn summary(event: &Event) -> String {
    fn handles(list: &[banger_events::Handle]) -> String {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
    fn with_handles(step: &str, arrow: &str, list: &[banger_events::Handle]) -> String {
        if list.is_empty() {
            step.to_owned()
        } else {
            format!("{step} {arrow} {}", handles(list))
        }
    }
    fn vm(id: banger_events::VmId) -> String {
        format!("vm {}", short_id(&id))
    }
    fn mib(value: u64) -> String {
        format_bytes(value.saturating_mul(1 << 20))
    }
    match event {
        Event::OperationStarted(e) => format!("{} {}", e.kind, e.target),
        Event::StepStarted(e) => with_handles(&e.step, "intends", &e.intent),
        Event::StepSucceeded(e) => with_handles(&e.step, "produced", &e.produced),
        Event::StepFailed(e) => format!("{}: {}", e.step, e.error),
        Event::UndoStarted(e) => e.step.clone(),
        Event::UndoSucceeded(e) => e.step.clone(),
        Event::UndoFailed(e) => format!("{}: {}", e.step, e.error),
        Event::OperationSucceeded(_) => String::new(),
        Event::OperationRolledBack(e) => e.reason.clone(),
        Event::OperationStuck(e) => format!("{}: {}", e.step, e.error),
        Event::VmDefined(e) => format!(
            "vm {} ({}): image {}, kernel {}, {} cpus, {} memory, {} work disk",
            e.name,
            short_id(&e.vm_id),
            e.spec.image,
            e.spec.kernel,
            e.spec.vcpus,
            mib(e.spec.memory_mib),
            mib(e.spec.work_disk_mib)
        ),
        Event::VmChanged(e) => format!(
            "{}: {} cpus, {} memory, {} work disk",
            vm(e.vm_id),
            e.spec.vcpus,
            mib(e.spec.memory_mib),
            mib(e.spec.work_disk_mib)
        ),
        Event::VmStateChanged(e) => format!("{}: {} -> {}", vm(e.vm_id), e.from, e.to),
        Event::VmExited(e) => {
            let how = match (e.exit_code, e.signal) {
                (_, Some(signal)) => format!("killed by signal {signal}"),
                (Some(code), None) => format!("exited with status {code}"),
                (None, None) => "exited".to_owned(),
            };
            format!("{}: pid {} {how}", vm(e.vm_id), e.pid)
        }
        Event::VmRemoved(e) => vm(e.vm_id),
        Event::VmFoundDead(e) => format!("{}: pid {} was gone", vm(e.vm_id), e.pid),
        Event::VmBackendChosen(e) => format!("{}: runs on {} ({})", vm(e.vm_id), e.vmm, e.reason),
        Event::WorkspaceImported(e) => format!(
            "{}: {} -> {} ({} file(s), {} sent)",
            vm(e.vm_id),
            e.host_path,
            e.guest_path,
            e.files,
            format_bytes(e.bytes)
        ),
        Event::WorkspaceExported(e) => format!(
            "{}: {} -> {} ({} path(s) written)",
            vm(e.vm_id),
            e.guest_path,
            e.host_path,
            e.files_written
        ),
        Event::VmHostKeyRecorded(e) => format!(
            "{}: ssh host key {} {}",
            vm(e.vm_id),
            e.algorithm,
            e.fingerprint_sha256
        ),
        Event::ImageRegisteredV1(e) => format!("image {} ({})", e.name, format_bytes(e.size_bytes)),
        Event::ImageRegistered(e) => format!(
            "image {} ({}, kernel {}) from {}",
            e.name,
            format_bytes(e.size_bytes),
            e.kernel.as_deref().unwrap_or("none"),
            e.source
        ),
        Event::ImageRemoved(e) => format!("image {}", e.name),
        Event::ImageCachePruned(e) => {
            format!("freed {} across {} blob(s)", format_bytes(e.bytes), e.blobs)
        }
        Event::KernelRegistered(e) => {
            let version = if e.version.is_empty() {
                "unknown version"
            } else {
                e.version.as_str()
            };
            format!("kernel {} ({version}) from {}", e.name, e.source)
        }
        Event::KernelRemoved(e) => format!("kernel {}", e.name),
        Event::HandleAcquired(e) => format!("{} by {}", e.handle, owner_text(e.owner, None)),
        Event::HandleReleased(e) => e.handle.to_string(),
        Event::DaemonStarted(e) => format!("bangerd {} pid {}", e.version, e.pid),
        Event::DaemonStopped(e) => e.reason.clone(),
        Event::RecoveryDecided(e) => {
            let decision = match e.decision {
                banger_events::RecoveryDecision::RollBack => "roll back",
                banger_events::RecoveryDecision::RollForward => "roll forward",
                banger_events::RecoveryDecision::ResumeUndo => "resume undo",
            };
            format!("op {}: {decision}: {}", short_id(&e.op_id), e.reason)
        }
        Event::OrphanFound(e) => format!("{}: {}", e.handle, e.action),
        Event::LogRepaired(e) => format!(
            "{}; damaged log kept at {} ({})",
            lost_range(e.first_lost_seq, e.last_stored_seq),
            e.backup_path,
            e.reason
        ),
    }
}

#[cfg(test)]
mod tests {
    use banger_events::{
        EventId, Handle, OpKind, OperationStarted, Seq, StepSucceeded, Target, VmId,
    };

    use super::*;

    fn envelope(seq: u64, op: Option<u64>, event: Event) -> Envelope {
        Envelope {
            seq: Seq(seq),
            event_id: EventId(1),
            op_id: op.map(OpId),
            cause: None,
            at_unix_ms: 1_777_404_777_123,
            schema_version: 1,
            event,
        }
    }

    #[test]
    fn lines_have_fixed_columns_and_a_summary() {
        let started = envelope(
            42,
            Some(0x3f2a_19c4_0000_0001),
            Event::OperationStarted(OperationStarted {
                kind: OpKind::VmCreate,
                target: Target::Vm {
                    vm_id: VmId(7),
                    name: "dev".into(),
                },
                parameters: "{}".into(),
            }),
        );
        assert_eq!(
            event_line(&started),
            "    42  2026-04-28T19:32:57.123Z  3f2a19c4  operation_started      vm.create vm dev"
        );
        let step = envelope(
            43,
            Some(0x3f2a_19c4_0000_0001),
            Event::StepSucceeded(StepSucceeded {
                step: "allocate-ip".into(),
                produced: vec![Handle::Ip {
                    addr: [10, 0, 0, 2],
                }],
            }),
        );
        assert!(
            event_line(&step).ends_with("step_succeeded         allocate-ip produced ip 10.0.0.2")
        );
    }

    #[test]
    fn events_without_an_operation_show_a_dash_and_no_trailing_space() {
        let done = envelope(
            1,
            None,
            Event::OperationSucceeded(banger_events::OperationSucceeded {}),
        );
        assert_eq!(
            event_line(&done),
            "     1  2026-04-28T19:32:57.123Z  -         operation_succeeded"
        );
    }
}
