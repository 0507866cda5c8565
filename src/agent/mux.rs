//! Many agent connections over one byte stream: how the host reaches the agent through a
//! virtio-serial port, which is a single stream that QEMU's socket chardev lends to one host
//! client at a time.
//!
//! The agent's protocol (see [`crate::protocol`]) is one connection per request, so that a
//! command lives exactly as long as its connection. This module gives each request a virtual
//! stream ([`MuxStream`], an `AsyncRead + AsyncWrite`) with the same meaning: the guest side
//! hands every stream the host opens to the agent's `serve_connection`, exactly as the vsock
//! and unix listeners hand it their sockets, and the host side gives `AgentClient` one stream
//! per request. One protocol over either transport.
//!
//! # Frames
//!
//! ```text
//!  0        1                  5                  9
//!  +--------+------------------+------------------+---------------------------+
//!  | type   | stream: u32 (BE) | len: u32 (BE)    | payload: len bytes        |
//!  +--------+------------------+------------------+---------------------------+
//!
//!  type  name        stream  payload                                       direction
//!  0x01  HELLO       0       MAGIC(8) version: u16 session: u64            host → guest
//!  0x02  HELLO_ACK   0       MAGIC(8) version: u16 session: u64 (echoed)   guest → host
//!  0x03  OPEN        id > 0  empty                                         host → guest
//!  0x04  DATA        id      1..=MAX_PAYLOAD bytes                         both
//!  0x05  WINDOW      id      increment: u32 — the receiver read this much  both
//!  0x06  EOF         id      empty — the sender writes no more             both
//!  0x07  RESET       id      empty — the sender dropped the stream         both
//!  0x07  RESET       0       reason (UTF-8, <= 256 bytes) — session over   both
//!  0x08  PING        0       nonce: u64                                    host → guest
//!  0x09  PONG        0       nonce: u64 (echoed)                           guest → host
//!  0x00  (padding)   a zero byte where a frame would start is skipped      host → guest
//! ```
//!
//! # Sessions: the hello handshake
//!
//! The serial port outlives host connections: bangerd restarts, QEMU hands the port to the
//! next client, and bytes of the previous session may still be in flight either way (half a
//! frame the guest was reading, frames the guest wrote while nobody listened). So every host
//! connection starts a *session*:
//!
//! ```text
//!  host                                          guest
//!   | -- PREAMBLE_LEN zero bytes --------------> |  completes any half-read frame, then skipped
//!   | -- HELLO {version, session} -------------> |  found by its magic, even mid-garbage:
//!   |                                            |  every stream of the old session is reset
//!   | <-- HELLO_ACK {version, session} --------- |  the host skips everything before the ack
//!   |                                            |  that echoes its own session
//!   | -- OPEN / DATA / WINDOW / EOF / RESET ---> |
//!   | <-- DATA / WINDOW / EOF / RESET ---------- |
//! ```
//!
//! The guest also resets every stream when the host goes away (a read of the port returns end
//! of file while no host is connected) and when the host breaks the protocol; after a
//! violation it tells the host with `RESET` on stream 0 and seeks the next hello. A guest
//! agent that starts sends `RESET 0 "agent started"` first, so a host still holding a session
//! with a previous agent process learns it is over. The host ends its session on any `RESET`
//! 0 and on any violation by the guest, and connects again for the next request.
//!
//! # Streams
//!
//! ```text
//!            OPEN (host)              EOF both ways, or RESET either way
//!   (none) ─────────────▶ open ──────────────────────────────────────▶ done
//!                          │                                          ▲
//!                          └── the local handle is dropped: EOF (if not sent) after ──┘
//!                              the queued data, then RESET unless the peer closed first
//! ```
//!
//! Stream ids are chosen by the host, rise within a session and are never reused, so a
//! frame that arrives for a stream that is gone is recognisably stale and dropped.
//!
//! # Limits (nothing a peer sends can grow memory without bound)
//!
//! - Credit-based flow control per stream and direction: a sender has [`STREAM_WINDOW`] bytes
//!   of credit, spends it with DATA and gets it back by WINDOW as the receiver's reader
//!   consumes. A peer that sends beyond its credit, grants more than it was owed, or sends a
//!   malformed frame ends the session: at most `STREAM_WINDOW` bytes wait per stream.
//! - At most [`MAX_STREAMS`] streams per session; the guest refuses more with RESET, the host
//!   does not open them. Closed streams linger only until their last frames are written, and
//!   a host that opens so fast that more than four times that many pile up ends its session.
//! - Frames carry at most [`MAX_PAYLOAD`] bytes; the decoder holds at most one frame plus one
//!   read of the transport. While seeking a hello it keeps only a magic's length of bytes.
//! - What waits to be written is bounded by the same credits; window updates, EOFs, RESETs
//!   and PONGs are coalesced per stream (or per session), never queued per event.
//!
//! This module does no IO of its own beyond the transports it is given, uses no timers (the
//! agent is built without tokio's `time`), and never blocks while holding its lock.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Version of this framing, carried in HELLO and HELLO_ACK.
pub const MUX_VERSION: u16 = 1;

/// Starts the payload of HELLO and HELLO_ACK: what a side seeking a session looks for.
pub const MAGIC: [u8; 8] = *b"BNGRMUX\x01";

/// Bytes before a frame's payload.
pub const HEADER_LEN: usize = 9;

/// Largest DATA payload. Small enough that one frame and its header fit in one write to a
/// virtio-serial port (the guest driver takes at most 32 KiB per write).
pub const MAX_PAYLOAD: usize = 16 * 1024;

/// Credit each side of each stream starts with, and the most it may ever hold.
pub const STREAM_WINDOW: u32 = 128 * 1024;

/// Most streams one session has open at once.
pub const MAX_STREAMS: usize = 32;

/// Most stream entries one side keeps: the live streams, and those whose handles are gone
/// but whose last frames (EOF, RESET, a refusal) are not written yet.
const MAX_STREAM_ENTRIES: usize = 4 * MAX_STREAMS;

/// Zero bytes the host sends before its HELLO: more than any frame, so that a guest that was
/// in the middle of a frame of the previous session completes it and then skips the rest.
pub const PREAMBLE_LEN: usize = MAX_PAYLOAD + HEADER_LEN + 64;

/// Longest reason a session RESET carries.
pub const MAX_REASON_LEN: usize = 256;

/// Most bytes one write to the transport carries (one virtio-serial write on the guest side).
const MAX_WRITE_BATCH: usize = 32 * 1024;

/// Payload length of HELLO and HELLO_ACK.
const HELLO_PAYLOAD_LEN: usize = MAGIC.len() + 2 + 8;

/// Most callers waiting for one PONG.
const MAX_PING_WAITERS: usize = 64;

/// How many WINDOW bytes a reader owes before it sends them: fewer, larger updates.
const WINDOW_UPDATE_THRESHOLD: u32 = STREAM_WINDOW / 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum FrameType {
    Hello = 0x01,
    HelloAck = 0x02,
    Open = 0x03,
    Data = 0x04,
    Window = 0x05,
    Eof = 0x06,
    Reset = 0x07,
    Ping = 0x08,
    Pong = 0x09,
}

impl FrameType {
    fn from_byte(byte: u8) -> Option<FrameType> {
        Some(match byte {
            0x01 => FrameType::Hello,
            0x02 => FrameType::HelloAck,
            0x03 => FrameType::Open,
            0x04 => FrameType::Data,
            0x05 => FrameType::Window,
            0x06 => FrameType::Eof,
            0x07 => FrameType::Reset,
            0x08 => FrameType::Ping,
            0x09 => FrameType::Pong,
            _ => return None,
        })
    }

    /// Whether frames of this type name a stream (else they belong to the session, id 0).
    fn is_stream_frame(self) -> bool {
        matches!(
            self,
            FrameType::Open
                | FrameType::Data
                | FrameType::Window
                | FrameType::Eof
                | FrameType::Reset
        )
    }

    /// Whether `len` is a valid payload length for this type (RESET: on stream 0 only).
    fn length_ok(self, stream: u32, len: usize) -> bool {
        match self {
            FrameType::Hello | FrameType::HelloAck => len == HELLO_PAYLOAD_LEN,
            FrameType::Open | FrameType::Eof => len == 0,
            FrameType::Data => (1..=MAX_PAYLOAD).contains(&len),
            FrameType::Window => len == 4,
            FrameType::Reset if stream == 0 => len <= MAX_REASON_LEN,
            FrameType::Reset => len == 0,
            FrameType::Ping | FrameType::Pong => len == 8,
        }
    }
}

/// Appends one encoded frame to `out`.
fn encode_frame(out: &mut Vec<u8>, kind: FrameType, stream: u32, payload: &[u8]) {
    out.push(kind as u8);
    out.extend_from_slice(&stream.to_be_bytes());
    // Payloads are bounded by MAX_PAYLOAD (or the fixed sizes above), far below u32::MAX.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

fn hello_payload(session: u64) -> [u8; HELLO_PAYLOAD_LEN] {
    let mut payload = [0u8; HELLO_PAYLOAD_LEN];
    payload[..8].copy_from_slice(&MAGIC);
    payload[8..10].copy_from_slice(&MUX_VERSION.to_be_bytes());
    payload[10..].copy_from_slice(&session.to_be_bytes());
    payload
}

/// The preamble and HELLO a host sends to open `session`.
pub fn encode_hello(session: u64) -> Vec<u8> {
    let mut out = vec![0u8; PREAMBLE_LEN];
    encode_frame(&mut out, FrameType::Hello, 0, &hello_payload(session));
    out
}

/// The big-endian u64 at the start of `bytes` (whose length the decoder checked).
fn u64_payload(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(word)
}

/// One decoded frame.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    kind: FrameType,
    stream: u32,
    payload: Vec<u8>,
}

/// Turns transport bytes into frames. Holds at most one frame plus what one push added.
struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed (compacted away when it grows).
    start: usize,
    /// Whether a zero byte where a frame would start is skipped (the guest side: the host's
    /// preamble); the host side never receives padding, so there it is a violation.
    skip_padding: bool,
}

/// What [`Decoder::seek_hello`] found.
#[derive(Debug, PartialEq, Eq)]
struct HelloFound {
    version: u16,
    session: u64,
}

impl Decoder {
    fn new(skip_padding: bool) -> Decoder {
        Decoder {
            buf: Vec::new(),
            start: 0,
            skip_padding,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Looks for a HELLO (or HELLO_ACK) anywhere in what is buffered, dropping everything
    /// before it; `None` until a whole one is there. What cannot start one is dropped, so a
    /// seeking side holds at most a frame header and a magic's worth of bytes.
    fn seek_hello(&mut self, kind: FrameType) -> Option<HelloFound> {
        let mut prefix = Vec::with_capacity(HEADER_LEN + MAGIC.len());
        encode_frame(&mut prefix, kind, 0, &[]);
        prefix.truncate(HEADER_LEN - 4);
        prefix.extend_from_slice(&(HELLO_PAYLOAD_LEN as u32).to_be_bytes());
        prefix.extend_from_slice(&MAGIC);
        let pending = self.pending();
        match pending.windows(prefix.len()).position(|w| w == prefix) {
            Some(at) => {
                self.start += at;
                let pending = self.pending();
                let whole = HEADER_LEN + HELLO_PAYLOAD_LEN;
                if pending.len() < whole {
                    return None;
                }
                let payload = &pending[HEADER_LEN..whole];
                let version = u16::from_be_bytes([payload[8], payload[9]]);
                let session = u64_payload(&payload[10..]);
                self.start += whole;
                Some(HelloFound { version, session })
            }
            None => {
                // Keep only what could be the start of a prefix that the next push completes.
                let keep = pending.len().min(prefix.len() - 1);
                self.start = self.buf.len() - keep;
                None
            }
        }
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed, or why the bytes are not
    /// frames (the session is then over).
    fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if self.skip_padding {
            let zeros = self.pending().iter().take_while(|&&b| b == 0).count();
            self.start += zeros;
        }
        let pending = self.pending();
        if pending.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = FrameType::from_byte(pending[0])
            .ok_or_else(|| format!("unknown frame type {:#04x}", pending[0]))?;
        let stream = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]);
        let len = u32::from_be_bytes([pending[5], pending[6], pending[7], pending[8]]) as usize;
        if kind.is_stream_frame() != (stream != 0) && !(kind == FrameType::Reset && stream == 0) {
            return Err(format!("{kind:?} frame on stream {stream}"));
        }
        // Checked before waiting for the payload: a bad length never makes us buffer it.
        if !kind.length_ok(stream, len) {
            return Err(format!("{kind:?} frame with a {len}-byte payload"));
        }
        if pending.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = pending[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.start += HEADER_LEN + len;
        Ok(Some(Frame {
            kind,
            stream,
            payload,
        }))
    }
}

/// Why a session (or a stream of it) ended, as readers and writers of its streams see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MuxError {
    /// The transport failed or closed.
    Transport(String),
    /// The peer broke the framing or its limits; the session is over.
    Protocol(String),
    /// The guest ended the session (`RESET` on stream 0), saying why.
    GuestReset(String),
    /// The guest speaks another version of this framing.
    Version { guest: u16 },
    /// All [`MAX_STREAMS`] streams are in use.
    TooManyStreams,
    /// This session's stream ids ran out; open a new session.
    IdsExhausted,
    /// The local side closed the session.
    Closed,
}

impl fmt::Display for MuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MuxError::Transport(why) => write!(f, "the agent link failed: {why}"),
            MuxError::Protocol(why) => write!(f, "the agent link broke its protocol: {why}"),
            MuxError::GuestReset(why) => write!(f, "the guest reset the agent link: {why}"),
            MuxError::Version { guest } => write!(
                f,
                "the guest agent speaks link version {guest}, this side {MUX_VERSION}; use the agent built with this banger"
            ),
            MuxError::TooManyStreams => write!(
                f,
                "{MAX_STREAMS} requests to this guest's agent are already running; retry when one ends"
            ),
            MuxError::IdsExhausted => write!(f, "the agent link used up its stream ids"),
            MuxError::Closed => write!(f, "the agent link was closed"),
        }
    }
}

impl std::error::Error for MuxError {}

impl From<MuxError> for io::Error {
    fn from(error: MuxError) -> io::Error {
        let kind = match error {
            MuxError::Closed => io::ErrorKind::BrokenPipe,
            _ => io::ErrorKind::ConnectionReset,
        };
        io::Error::new(kind, error)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Host,
    Guest,
}

/// One stream's state, on either side.
struct Stream {
    /// The id on the wire; `None` once its session ended (a guest's old session, reset).
    wire_id: Option<u32>,
    // Inbound.
    inbound: VecDeque<u8>,
    /// How much more the peer may send before it must wait for a WINDOW from us.
    recv_allowance: u32,
    /// Read by the local reader and not yet granted back.
    window_owed: u32,
    remote_eof: bool,
    /// Why the stream cannot go on (a RESET from the peer, or the session's end).
    broken: Option<MuxError>,
    read_waker: Option<Waker>,
    // Outbound.
    send_credit: u32,
    out_data: VecDeque<Vec<u8>>,
    open_queued: bool,
    eof_queued: bool,
    eof_sent: bool,
    reset_queued: bool,
    write_waker: Option<Waker>,
    /// The local handle is gone: the stream lives on only to send what it queued.
    dropped: bool,
    /// Raised when the peer closes its side (EOF or RESET) or the session ends: what the
    /// agent watches to notice a client that went away while nobody reads its connection.
    peer_closed: CancellationToken,
}

impl Stream {
    fn new(wire_id: u32, open_queued: bool) -> Stream {
        Stream {
            wire_id: Some(wire_id),
            inbound: VecDeque::new(),
            recv_allowance: STREAM_WINDOW,
            window_owed: 0,
            remote_eof: false,
            broken: None,
            read_waker: None,
            send_credit: STREAM_WINDOW,
            out_data: VecDeque::new(),
            open_queued,
            eof_queued: false,
            eof_sent: false,
            reset_queued: false,
            write_waker: None,
            dropped: false,
            peer_closed: CancellationToken::new(),
        }
    }

    fn wake_all(&mut self) {
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }

    /// The stream cannot carry data any more: nothing queued is sent, readers and writers
    /// learn why.
    fn break_with(&mut self, error: MuxError) {
        if self.broken.is_none() {
            self.broken = Some(error);
        }
        self.out_data.clear();
        self.open_queued = false;
        self.eof_queued = false;
        self.reset_queued = false;
        self.window_owed = 0;
        self.peer_closed.cancel();
        self.wake_all();
    }

    fn has_output(&self) -> bool {
        self.open_queued
            || !self.out_data.is_empty()
            || (self.eof_queued && !self.eof_sent)
            || self.reset_queued
            || self.window_owed > 0
    }

    /// Whether the entry can be forgotten: its handle is gone and nothing waits to be sent.
    fn finished(&self) -> bool {
        self.dropped && !self.has_output()
    }
}

/// Session-level frames waiting to be written.
#[derive(Default)]
struct SessionOutput {
    ack: Option<u64>,
    pong: Option<u64>,
    ping: Option<u64>,
    reset_reason: Option<String>,
}

struct State {
    role: Role,
    /// Streams by local key; `wire` maps the current session's ids to keys.
    streams: HashMap<u64, Stream>,
    wire: HashMap<u32, u64>,
    next_key: u64,
    /// Host: the id the next OPEN gets. Guest: the highest id the host has opened.
    last_wire_id: u32,
    session_out: SessionOutput,
    /// Guest: the session the host opened (None while seeking a HELLO).
    session: Option<u64>,
    /// Set once the session is over for good (the host side; the guest side never ends).
    closed: Option<MuxError>,
    /// Host: the nonce of the PING in flight, and who waits for its PONG (at most
    /// [`MAX_PING_WAITERS`]: a guest that never answers cannot make this grow).
    ping_in_flight: Option<u64>,
    ping_waiters: Vec<oneshot::Sender<()>>,
    next_ping: u64,
    /// Round-robin start for fairness among streams with output.
    turn: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Raised whenever there is something new to write (or the session closed).
    writer: Notify,
}

impl Shared {
    fn new(role: Role) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State {
                role,
                streams: HashMap::new(),
                wire: HashMap::new(),
                next_key: 1,
                last_wire_id: 0,
                session_out: SessionOutput::default(),
                session: None,
                closed: None,
                ping_in_flight: None,
                ping_waiters: Vec::new(),
                next_ping: 1,
                turn: 0,
            }),
            writer: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before it can panic (they do
        // no IO and call no user code), so a poisoned lock still guards a whole state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_writer(&self) {
        self.writer.notify_one();
    }
}

impl State {
    fn add_stream(&mut self, wire_id: u32, open_queued: bool) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        self.streams.insert(key, Stream::new(wire_id, open_queued));
        self.wire.insert(wire_id, key);
        key
    }

    /// Streams of the current session whose handles are alive.
    fn live_streams(&self) -> usize {
        self.streams
            .values()
            .filter(|s| !s.dropped && s.wire_id.is_some())
            .count()
    }

    /// Ends every stream of the current session with `error` and forgets their wire ids.
    fn break_session_streams(&mut self, error: &MuxError) {
        for stream in self.streams.values_mut() {
            stream.wire_id = None;
            stream.break_with(error.clone());
        }
        self.wire.clear();
        self.streams.retain(|_, s| !s.finished());
    }

    /// Host: the session is over for good.
    fn close(&mut self, error: MuxError) {
        if self.closed.is_none() {
            self.closed = Some(error.clone());
        }
        self.break_session_streams(&error);
        self.ping_in_flight = None;
        self.ping_waiters.clear();
        self.session_out = SessionOutput::default();
    }

    /// Guest: a new session starts (a HELLO), or none is open any more (`None`).
    fn restart_session(&mut self, session: Option<u64>, why: &str) {
        self.break_session_streams(&MuxError::Transport(why.to_owned()));
        self.last_wire_id = 0;
        self.session = session;
        self.session_out.pong = None;
        self.session_out.ack = session;
    }

    /// Applies one frame that concerns a stream (both sides). Returns a new stream's key
    /// when the frame opened one.
    fn stream_frame(&mut self, frame: Frame) -> Result<Option<u64>, String> {
        let id = frame.stream;
        if frame.kind == FrameType::Open {
            if self.role != Role::Guest {
                return Err("the guest may not open streams".into());
            }
            if id <= self.last_wire_id {
                return Err(format!(
                    "OPEN of stream {id}, but ids must rise (last was {})",
                    self.last_wire_id
                ));
            }
            self.last_wire_id = id;
            // Streams whose handles are gone linger until their last frames are written; a
            // host that opens faster than it reads could make those pile up.
            if self.streams.len() >= MAX_STREAM_ENTRIES {
                return Err(format!(
                    "OPEN of stream {id} with {} streams not yet closed",
                    self.streams.len()
                ));
            }
            if self.live_streams() >= MAX_STREAMS {
                // Refused, not a violation: the host may race a stream's end.
                let key = self.add_stream(id, false);
                if let Some(stream) = self.streams.get_mut(&key) {
                    stream.dropped = true;
                    stream.reset_queued = true;
                }
                return Ok(None);
            }
            return Ok(Some(self.add_stream(id, false)));
        }
        let Some(&key) = self.wire.get(&id) else {
            // A stream that is gone (or was never opened): its late frames are dropped. Ids
            // are never reused in a session, so they cannot be taken for a newer stream's.
            if self.role == Role::Guest && id > self.last_wire_id {
                return Err(format!(
                    "{:?} frame for stream {id}, never opened",
                    frame.kind
                ));
            }
            return Ok(None);
        };
        let Some(stream) = self.streams.get_mut(&key) else {
            return Ok(None);
        };
        match frame.kind {
            FrameType::Data => {
                let len = frame.payload.len() as u32;
                if len > stream.recv_allowance {
                    return Err(format!(
                        "stream {id} sent {len} bytes with {} bytes of credit",
                        stream.recv_allowance
                    ));
                }
                if stream.remote_eof {
                    return Err(format!("stream {id} sent data after its EOF"));
                }
                stream.recv_allowance -= len;
                if stream.dropped || stream.broken.is_some() {
                    // Nobody will read it: grant the credit back at once (so the peer is
                    // not stuck waiting for a reader that is gone) by counting it as read.
                    stream.window_owed += len;
                } else {
                    stream.inbound.extend(frame.payload);
                    if let Some(waker) = stream.read_waker.take() {
                        waker.wake();
                    }
                }
            }
            FrameType::Window => {
                let grant = u32::from_be_bytes([
                    frame.payload[0],
                    frame.payload[1],
                    frame.payload[2],
                    frame.payload[3],
                ]);
                match stream.send_credit.checked_add(grant) {
                    Some(credit) if credit <= STREAM_WINDOW => stream.send_credit = credit,
                    _ => {
                        return Err(format!(
                            "stream {id} granted {grant} bytes on top of {}, over the {STREAM_WINDOW}-byte window",
                            stream.send_credit
                        ));
                    }
                }
                if let Some(waker) = stream.write_waker.take() {
                    waker.wake();
                }
            }
            FrameType::Eof => {
                stream.remote_eof = true;
                stream.peer_closed.cancel();
                if let Some(waker) = stream.read_waker.take() {
                    waker.wake();
                }
            }
            FrameType::Reset => {
                stream.break_with(MuxError::Closed);
                // What the peer sent before its RESET stays readable; only writes fail.
                stream.broken = Some(MuxError::Transport("the peer reset the stream".into()));
                self.wire.remove(&id);
                stream.wire_id = None;
            }
            _ => unreachable!("only stream frames reach stream_frame"),
        }
        Ok(None)
    }

    /// The next batch of bytes to write, at most [`MAX_WRITE_BATCH`],
    /// with credits, EOFs and RESETs accounted as sent.
    fn take_output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(reason) = self.session_out.reset_reason.take() {
            let mut bytes = reason.into_bytes();
            bytes.truncate(MAX_REASON_LEN);
            encode_frame(&mut out, FrameType::Reset, 0, &bytes);
        }
        if let Some(session) = self.session_out.ack.take() {
            encode_frame(&mut out, FrameType::HelloAck, 0, &hello_payload(session));
        }
        if let Some(nonce) = self.session_out.pong.take() {
            encode_frame(&mut out, FrameType::Pong, 0, &nonce.to_be_bytes());
        }
        if let Some(nonce) = self.session_out.ping.take() {
            encode_frame(&mut out, FrameType::Ping, 0, &nonce.to_be_bytes());
        }
        let mut keys: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| s.has_output())
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        if !keys.is_empty() {
            let start = self.turn % keys.len();
            keys.rotate_left(start);
            self.turn = self.turn.wrapping_add(1);
        }
        // Rounds: one DATA chunk per stream per round, so one busy stream cannot starve the
        // others within a batch.
        let mut progress = true;
        while progress && out.len() < MAX_WRITE_BATCH {
            progress = false;
            for key in &keys {
                let Some(stream) = self.streams.get_mut(key) else {
                    continue;
                };
                let Some(id) = stream.wire_id else {
                    continue;
                };
                if out.len() + HEADER_LEN + MAX_PAYLOAD > MAX_WRITE_BATCH && !out.is_empty() {
                    break;
                }
                if stream.open_queued {
                    encode_frame(&mut out, FrameType::Open, id, &[]);
                    stream.open_queued = false;
                    progress = true;
                }
                if stream.window_owed > 0 {
                    encode_frame(
                        &mut out,
                        FrameType::Window,
                        id,
                        &stream.window_owed.to_be_bytes(),
                    );
                    stream.recv_allowance += stream.window_owed;
                    stream.window_owed = 0;
                    progress = true;
                }
                if let Some(chunk) = stream.out_data.pop_front() {
                    encode_frame(&mut out, FrameType::Data, id, &chunk);
                    progress = true;
                    continue;
                }
                if stream.eof_queued && !stream.eof_sent {
                    encode_frame(&mut out, FrameType::Eof, id, &[]);
                    stream.eof_sent = true;
                    progress = true;
                }
                if stream.reset_queued {
                    encode_frame(&mut out, FrameType::Reset, id, &[]);
                    stream.reset_queued = false;
                    stream.broken.get_or_insert(MuxError::Closed);
                    progress = true;
                }
            }
        }
        self.streams.retain(|_, s| !s.finished());
        // A stream whose RESET went out (or that ended both ways) leaves the wire map.
        let streams = &self.streams;
        self.wire.retain(|_, key| {
            streams
                .get(key)
                .is_some_and(|s| s.wire_id.is_some() && !(s.dropped && s.broken.is_some()))
        });
        out
    }
}

/// One virtual connection to the agent: an `AsyncRead + AsyncWrite` whose bytes travel as
/// DATA frames of one stream. Dropping it closes the stream (EOF after what was written,
/// then RESET unless the peer had closed its side too), which is what makes the agent kill
/// a command whose client went away.
pub struct MuxStream {
    shared: Arc<Shared>,
    key: u64,
    peer_closed: CancellationToken,
}

impl fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxStream").field("key", &self.key).finish()
    }
}

impl MuxStream {
    fn new(shared: Arc<Shared>, key: u64, peer_closed: CancellationToken) -> MuxStream {
        MuxStream {
            shared,
            key,
            peer_closed,
        }
    }

    /// Raised when the peer closed its side of this stream (EOF or RESET) or the session
    /// ended.
    pub fn peer_closed(&self) -> CancellationToken {
        self.peer_closed.clone()
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.key) else {
            return Poll::Ready(Err(MuxError::Closed.into()));
        };
        if !stream.inbound.is_empty() {
            let n = buf.remaining().min(stream.inbound.len());
            let (front, back) = stream.inbound.as_slices();
            let from_front = n.min(front.len());
            buf.put_slice(&front[..from_front]);
            buf.put_slice(&back[..n - from_front]);
            stream.inbound.drain(..n);
            if stream.broken.is_none() {
                stream.window_owed += n as u32;
                if stream.window_owed >= WINDOW_UPDATE_THRESHOLD {
                    drop(state);
                    self.shared.wake_writer();
                }
            } else {
                stream.window_owed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if stream.remote_eof {
            return Poll::Ready(Ok(()));
        }
        if let Some(error) = &stream.broken {
            return Poll::Ready(Err(error.clone().into()));
        }
        stream.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.key) else {
            return Poll::Ready(Err(MuxError::Closed.into()));
        };
        if let Some(error) = &stream.broken {
            return Poll::Ready(Err(error.clone().into()));
        }
        if stream.eof_queued {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if stream.send_credit == 0 {
            stream.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(stream.send_credit as usize).min(MAX_PAYLOAD);
        stream.out_data.push_back(buf[..n].to_vec());
        stream.send_credit -= n as u32;
        drop(state);
        self.shared.wake_writer();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are queued for the session's writer; like a socket's buffer, there is
        // nothing to wait for here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        if let Some(stream) = state.streams.get_mut(&self.key)
            && stream.broken.is_none()
            && !stream.eof_queued
        {
            stream.eof_queued = true;
            drop(state);
            self.shared.wake_writer();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.key) else {
            return;
        };
        stream.dropped = true;
        stream.inbound.clear();
        stream.read_waker = None;
        stream.write_waker = None;
        if stream.broken.is_none() && stream.wire_id.is_some() {
            stream.eof_queued = true;
            if !stream.remote_eof {
                stream.reset_queued = true;
            }
        }
        if stream.finished() {
            state.streams.remove(&self.key);
        }
        drop(state);
        self.shared.wake_writer();
    }
}

/// Where a session's writer puts its batches: the host's socket, or the guest's port.
trait BatchSink: Send {
    fn send(&mut self, batch: Vec<u8>) -> impl Future<Output = io::Result<()>> + Send;
}

struct WriterSink<W>(W);

impl<W: AsyncWrite + Unpin + Send> BatchSink for WriterSink<W> {
    async fn send(&mut self, batch: Vec<u8>) -> io::Result<()> {
        self.0.write_all(&batch).await?;
        self.0.flush().await
    }
}

impl BatchSink for mpsc::Sender<Vec<u8>> {
    async fn send(&mut self, batch: Vec<u8>) -> io::Result<()> {
        mpsc::Sender::send(self, batch)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the port is gone"))
    }
}

/// Writes what the state has to send through `sink` until the session closes or the sink
/// fails.
async fn write_loop<S: BatchSink>(shared: &Shared, sink: &mut S) -> Result<(), MuxError> {
    loop {
        let (batch, closed) = {
            let mut state = shared.lock();
            (state.take_output(), state.closed.clone())
        };
        if batch.is_empty() {
            if let Some(error) = closed {
                return Err(error);
            }
            // notify_one stores a permit when nobody waits, so a wake between the check
            // above and this await is not lost.
            shared.writer.notified().await;
            continue;
        }
        if let Err(error) = sink.send(batch).await {
            return Err(MuxError::Transport(error.to_string()));
        }
    }
}

/// A session id nobody else picked: the clock, the process and a counter.
fn new_session_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    nanos ^ (u64::from(std::process::id()) << 40) ^ count.rotate_left(32)
}

// ---- host side ----------------------------------------------------------------------------------

/// The host's end of one session over a transport (bangerd's connection to the VM's
/// `agent.sock`). Open a stream per request with [`MuxClient::open`]. Dropping the client ends
/// the session: the transport closes, the guest resets its streams, every stream fails.
pub struct MuxClient {
    shared: Arc<Shared>,
    session: u64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for MuxClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxClient")
            .field("session", &self.session)
            .finish()
    }
}

impl MuxClient {
    /// Starts a session over `transport`: sends the preamble and HELLO, then waits for the
    /// guest's HELLO_ACK of this session, skipping whatever comes before it. This waits as
    /// long as no ack comes (a guest still booting): bound it with a timeout.
    pub async fn connect<T>(transport: T) -> Result<MuxClient, MuxError>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let session = new_session_id();
        let (mut reader, mut writer) = tokio::io::split(transport);
        let transport_error = |e: io::Error| MuxError::Transport(e.to_string());
        writer
            .write_all(&encode_hello(session))
            .await
            .map_err(transport_error)?;
        writer.flush().await.map_err(transport_error)?;
        let mut decoder = Decoder::new(false);
        let mut buf = vec![0u8; MAX_WRITE_BATCH];
        loop {
            let n = reader.read(&mut buf).await.map_err(transport_error)?;
            if n == 0 {
                return Err(MuxError::Transport(
                    "the agent socket closed before the guest answered".into(),
                ));
            }
            decoder.push(&buf[..n]);
            while let Some(found) = decoder.seek_hello(FrameType::HelloAck) {
                if found.session != session {
                    continue; // an ack of an earlier session, still in flight
                }
                if found.version != MUX_VERSION {
                    return Err(MuxError::Version {
                        guest: found.version,
                    });
                }
                return Ok(Self::start(session, decoder, reader, writer, buf));
            }
        }
    }

    fn start<R, W>(session: u64, decoder: Decoder, reader: R, writer: W, buf: Vec<u8>) -> MuxClient
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Shared::new(Role::Host);
        shared.lock().session = Some(session);
        let read_shared = shared.clone();
        let reader_task = tokio::spawn(async move {
            let error = host_read_loop(&read_shared, decoder, reader, buf).await;
            read_shared.lock().close(error);
            read_shared.wake_writer();
        });
        let write_shared = shared.clone();
        let writer_task = tokio::spawn(async move {
            let mut sink = WriterSink(writer);
            if let Err(error) = write_loop(&write_shared, &mut sink).await {
                write_shared.lock().close(error);
            }
            let _ = sink.0.shutdown().await;
        });
        MuxClient {
            shared,
            session,
            tasks: vec![reader_task, writer_task],
        }
    }

    /// Opens a stream: the agent serves it as one connection.
    pub fn open(&self) -> Result<MuxStream, MuxError> {
        let mut state = self.shared.lock();
        if let Some(error) = &state.closed {
            return Err(error.clone());
        }
        if state.live_streams() >= MAX_STREAMS {
            return Err(MuxError::TooManyStreams);
        }
        let id = state
            .last_wire_id
            .checked_add(1)
            .ok_or(MuxError::IdsExhausted)?;
        state.last_wire_id = id;
        let key = state.add_stream(id, true);
        let token = state.streams[&key].peer_closed.clone();
        drop(state);
        self.shared.wake_writer();
        Ok(MuxStream::new(self.shared.clone(), key, token))
    }

    /// One round trip through the guest's end of the session (not through the agent): proof
    /// that the session is alive. Bound it with a timeout.
    pub async fn ping(&self) -> Result<(), MuxError> {
        let answered = {
            let mut state = self.shared.lock();
            if let Some(error) = &state.closed {
                return Err(error.clone());
            }
            // Callers that gave up (a timeout) leave their sender behind: drop those first.
            state.ping_waiters.retain(|waiter| !waiter.is_closed());
            if state.ping_waiters.len() >= MAX_PING_WAITERS {
                return Err(MuxError::Protocol(format!(
                    "{MAX_PING_WAITERS} pings wait for the guest to answer"
                )));
            }
            if state.ping_in_flight.is_none() {
                let nonce = state.next_ping;
                state.next_ping += 1;
                state.ping_in_flight = Some(nonce);
                state.session_out.ping = Some(nonce);
            }
            let (tx, rx) = oneshot::channel();
            state.ping_waiters.push(tx);
            rx
        };
        self.shared.wake_writer();
        match answered.await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.closed().unwrap_or(MuxError::Closed)),
        }
    }

    /// Why the session ended, or `None` while it is alive.
    pub fn closed(&self) -> Option<MuxError> {
        self.shared.lock().closed.clone()
    }

    /// This session's id (what its HELLO carried).
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Streams opened and not yet dropped.
    pub fn open_streams(&self) -> usize {
        self.shared.lock().live_streams()
    }
}

impl Drop for MuxClient {
    fn drop(&mut self) {
        self.shared.lock().close(MuxError::Closed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn host_read_loop<R>(
    shared: &Shared,
    mut decoder: Decoder,
    mut reader: R,
    mut buf: Vec<u8>,
) -> MuxError
where
    R: AsyncRead + Unpin,
{
    // Frames already buffered behind the ack come first.
    let mut fresh: &[u8] = &[];
    loop {
        decoder.push(fresh);
        {
            let mut state = shared.lock();
            loop {
                let frame = match decoder.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(why) => return MuxError::Protocol(why),
                };
                match frame.kind {
                    FrameType::Reset if frame.stream == 0 => {
                        return MuxError::GuestReset(
                            String::from_utf8_lossy(&frame.payload).into_owned(),
                        );
                    }
                    FrameType::Pong => {
                        let nonce = u64_payload(&frame.payload);
                        if state.ping_in_flight != Some(nonce) {
                            return MuxError::Protocol(format!("PONG {nonce} for no PING"));
                        }
                        state.ping_in_flight = None;
                        for waiter in state.ping_waiters.drain(..) {
                            let _ = waiter.send(());
                        }
                    }
                    FrameType::Hello | FrameType::HelloAck | FrameType::Ping => {
                        return MuxError::Protocol(format!(
                            "{:?} from the guest in an open session",
                            frame.kind
                        ));
                    }
                    _ => {
                        if let Err(why) = state.stream_frame(frame) {
                            return MuxError::Protocol(why);
                        }
                    }
                }
            }
        }
        shared.wake_writer(); // reads may have made room: window updates to send
        let n = match reader.read(&mut buf).await {
            Ok(0) => return MuxError::Transport("the agent socket closed".into()),
            Ok(n) => n,
            Err(e) => return MuxError::Transport(e.to_string()),
        };
        fresh = &buf[..n];
    }
}

// ---- guest side ---------------------------------------------------------------------------------

/// What the guest reads from its port.
#[derive(Debug)]
pub enum PortEvent {
    /// Bytes from the host.
    Data(Vec<u8>),
    /// No host is connected any more (the port's read returned end of file); one may
    /// connect later, with a new session.
    HostGone,
}

/// The guest's end of the serial port, as channels: what was read, and what to write. A
/// write may wait while no host is connected (as a virtio-serial write does).
pub struct Port {
    pub events: mpsc::Receiver<PortEvent>,
    pub writes: mpsc::Sender<Vec<u8>>,
}

/// Serves the guest's end: answers HELLOs, and hands each stream the host opens to
/// `on_stream` (the agent spawns `serve_connection` on it). Returns when the port's channels
/// close.
pub async fn serve_guest<F>(port: Port, mut on_stream: F)
where
    F: FnMut(MuxStream),
{
    let Port { mut events, writes } = port;
    let shared = Shared::new(Role::Guest);
    // A host that still holds a session with an earlier agent process learns it is over.
    shared.lock().session_out.reset_reason = Some("agent started".into());
    let write_shared = shared.clone();
    let writer = AbortOnDrop(tokio::spawn(async move {
        let mut sink = writes;
        let _ = write_loop(&write_shared, &mut sink).await;
    }));
    shared.wake_writer();
    let mut decoder = Decoder::new(true);
    while let Some(event) = events.recv().await {
        let mut opened = Vec::new();
        {
            let mut state = shared.lock();
            match event {
                PortEvent::HostGone => {
                    decoder.clear();
                    state.restart_session(None, "the host disconnected");
                    // What was queued for the host that left would only confuse the next.
                    state.session_out = SessionOutput::default();
                }
                PortEvent::Data(bytes) => {
                    decoder.push(&bytes);
                    guest_feed(&mut state, &mut decoder, &mut opened);
                }
            }
        }
        shared.wake_writer();
        for key in opened {
            let token = shared
                .lock()
                .streams
                .get(&key)
                .map(|s| s.peer_closed.clone());
            if let Some(token) = token {
                on_stream(MuxStream::new(shared.clone(), key, token));
            }
        }
    }
    shared.lock().close(MuxError::Closed);
    shared.wake_writer();
    drop(writer);
}

/// Aborts a task when dropped: the guest's writer ends with its session loop, even when that
/// loop's own task is aborted.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Applies what the decoder holds to the guest's state.
fn guest_feed(state: &mut State, decoder: &mut Decoder, opened: &mut Vec<u64>) {
    loop {
        if state.session.is_none() {
            let Some(found) = decoder.seek_hello(FrameType::Hello) else {
                return;
            };
            accept_hello(state, found);
            continue;
        }
        let frame = match decoder.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(why) => {
                violation(state, &why);
                continue;
            }
        };
        match frame.kind {
            FrameType::Hello => {
                // A host that connected again before this side saw it leave.
                let payload = &frame.payload;
                if payload[..8] != MAGIC {
                    violation(state, "HELLO without the magic");
                    continue;
                }
                let found = HelloFound {
                    version: u16::from_be_bytes([payload[8], payload[9]]),
                    session: u64_payload(&payload[10..]),
                };
                accept_hello(state, found);
            }
            FrameType::Ping => {
                state.session_out.pong = Some(u64_payload(&frame.payload));
            }
            FrameType::Reset if frame.stream == 0 => {
                state.restart_session(None, "the host reset the link");
            }
            FrameType::HelloAck | FrameType::Pong => {
                violation(state, &format!("{:?} from the host", frame.kind));
            }
            _ => match state.stream_frame(frame) {
                Ok(Some(key)) => opened.push(key),
                Ok(None) => {}
                Err(why) => violation(state, &why),
            },
        }
    }
}

fn accept_hello(state: &mut State, found: HelloFound) {
    if found.version != MUX_VERSION {
        // No session opens, but the ack (which carries this side's version) lets the host
        // report the mismatch instead of waiting for an answer that never comes.
        state.restart_session(None, "a host with another link version connected");
        state.session_out.ack = Some(found.session);
        return;
    }
    state.restart_session(Some(found.session), "the host started a new session");
}

/// The host broke the protocol: every stream ends, the host is told why, and this side seeks
/// the next HELLO.
fn violation(state: &mut State, why: &str) {
    let reason = format!("protocol violation by the host: {why}");
    state.restart_session(None, &reason);
    state.session_out.ack = None;
    state.session_out.reset_reason = Some(reason);
}

#[cfg(test)]
#[path = "mux_tests.rs"]
mod tests;
