//! The multiplexer, in process: a real agent behind a stand-in for QEMU's socket chardev,
//! real `AgentClient`s on host streams, and hostile peers written byte by byte.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{UnixListener, UnixStream};

use super::*;
use crate::client::AgentClient;
use crate::protocol::{ExecRequest, StdinMode};
use crate::server::Agent;

/// Long enough for anything here on a loaded machine; only hit when a test is broken.
const DEADLINE: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} took longer than {DEADLINE:?}"),
    }
}

/// A stand-in for QEMU's socket chardev in front of a virtio-serial port: one host client at
/// a time, the next one accepted when it leaves; while none is connected the guest's reads
/// see the host gone and its writes wait, as the guest driver's do.
fn chardev(path: &Path) -> Port {
    let listener = UnixListener::bind(path).unwrap();
    let (events_tx, events) = mpsc::channel(4);
    let (writes, mut writes_rx) = mpsc::channel::<Vec<u8>>(4);
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let (mut rd, mut wr) = conn.into_split();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    n = rd.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => if events_tx.send(PortEvent::Data(buf[..n].to_vec())).await.is_err() {
                            return;
                        },
                    },
                    batch = writes_rx.recv() => match batch {
                        Some(batch) => if wr.write_all(&batch).await.is_err() { break },
                        None => return,
                    },
                }
            }
            if events_tx.send(PortEvent::HostGone).await.is_err() {
                return;
            }
        }
    });
    Port { events, writes }
}

/// A guest: the real agent serving every stream of the port.
struct Guest {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Guest {
    fn start() -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let port = chardev(&socket);
        let task = tokio::spawn(serve_agent(port));
        Guest {
            _dir: dir,
            socket,
            task,
        }
    }

    async fn connect(&self) -> MuxClient {
        let stream = UnixStream::connect(&self.socket).await.unwrap();
        within("the hello", MuxClient::connect(stream))
            .await
            .unwrap()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_agent(port: Port) {
    let agent = Agent::new(None);
    serve_guest(port, move |stream| {
        let agent = agent.clone();
        tokio::spawn(async move { agent.serve_connection(stream).await });
    })
    .await;
}

async fn client(link: &MuxClient) -> AgentClient<MuxStream> {
    within(
        "the agent's hello",
        AgentClient::handshake(link.open().unwrap(), "mux-test"),
    )
    .await
    .unwrap()
}

fn process_runs(pid: u32) -> bool {
    // A zombie has exited: the agent reaps it, but not necessarily before we look.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

async fn wait_gone(pid: u32) {
    within("the command's death", async {
        while process_runs(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_each_carry_the_agent_protocol() {
    let guest = Guest::start();
    let link = guest.connect().await;
    // More data than a window each way on every stream, through `cat`, so flow control runs
    // in both directions on all streams at once.
    let payload_len = STREAM_WINDOW as usize * 2 + 12345;
    let mut tasks = Vec::new();
    for i in 0..MAX_STREAMS - 2 {
        let mut agent = client(&link).await;
        tasks.push(tokio::spawn(async move {
            let input: Vec<u8> = (0..payload_len).map(|n| (n * 7 + i) as u8).collect();
            let output = agent
                .exec_collect(&ExecRequest::new(["cat"]), Some(&input))
                .await
                .unwrap();
            assert!(output.status.success());
            assert_eq!(output.stdout.len(), input.len(), "stream {i}");
            assert!(output.stdout == input, "stream {i} came back changed");
            agent.health().await.unwrap();
        }));
    }
    // Pings and health requests on their own streams meanwhile.
    let mut agent = client(&link).await;
    for _ in 0..20 {
        agent.ping().await.unwrap();
    }
    link.ping().await.unwrap();
    for task in tasks {
        within("a stream's exec", task).await.unwrap();
    }
    drop(agent);
    // Every stream is forgotten once its client is gone.
    within("streams to be forgotten", async {
        while link.open_streams() > 0 || !link.shared.lock().streams.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_mid_transfer_kills_its_command_and_spares_the_others() {
    let guest = Guest::start();
    let link = guest.connect().await;
    let mut survivor = client(&link).await;
    let mut doomed = client(&link).await;
    // Writes without end, and keeps its stdin open: a command in the middle of a transfer.
    let request = ExecRequest::new(["sh", "-c", "exec yes banger"]).stdin(StdinMode::Pipe);
    let pid = {
        let mut exec = doomed.exec(&request).await.unwrap();
        let mut seen = 0;
        while seen < 3 * STREAM_WINDOW as usize {
            match exec.next().await.unwrap() {
                crate::client::ExecEvent::Stdout(chunk) => seen += chunk.len(),
                other => panic!("unexpected {other:?}"),
            }
        }
        exec.pid()
    };
    drop(doomed);
    wait_gone(pid).await;
    let output = survivor
        .exec_collect(&ExecRequest::new(["echo", "still here"]), None)
        .await
        .unwrap();
    assert_eq!(output.stdout, b"still here\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_reconnects_resets_the_guest_side() {
    let guest = Guest::start();
    let first = guest.connect().await;
    let mut agent = client(&first).await;
    let pid = agent
        .exec(&ExecRequest::new(["sleep", "60"]))
        .await
        .unwrap()
        .pid();
    // The stream stays open (its client lives on): only the session's end can kill it.
    let _still_open = agent;
    // bangerd restarts: its connection goes away, and a new one says hello.
    drop(first);
    wait_gone(pid).await;
    let second = guest.connect().await;
    let mut agent = client(&second).await;
    agent.ping().await.unwrap();

    // A host that dies in the middle of a frame: the guest drops the half frame with the
    // session, and the next host gets through.
    let mut raw = UnixStream::connect(&guest.socket).await.unwrap();
    drop(second); // the chardev takes one client at a time
    let mut half = Vec::new();
    encode_frame(&mut half, FrameType::Hello, 0, &hello_payload(7));
    encode_frame(&mut half, FrameType::Open, 1, &[]);
    encode_frame(&mut half, FrameType::Data, 1, &[b'x'; 1000]);
    half.truncate(half.len() - 500);
    raw.write_all(&half).await.unwrap();
    drop(raw);
    let third = guest.connect().await;
    client(&third).await.health().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_ends_the_session_the_host_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let port = chardev(&socket);
    // The first agent process: its port channels, kept so that a second one can take over
    // the same port (the device outlives the process).
    let (events_tx, events) = mpsc::channel(4);
    let (writes, mut writes_rx) = mpsc::channel::<Vec<u8>>(4);
    let Port {
        events: mut port_events,
        writes: port_writes,
    } = port;
    let relay_writes = port_writes.clone();
    tokio::spawn(async move {
        while let Some(batch) = writes_rx.recv().await {
            if relay_writes.send(batch).await.is_err() {
                return;
            }
        }
    });
    let (swap_tx, mut swap_rx) = mpsc::channel::<mpsc::Sender<PortEvent>>(1);
    tokio::spawn(async move {
        let mut current = events_tx;
        loop {
            tokio::select! {
                Some(next) = swap_rx.recv() => current = next,
                event = port_events.recv() => match event {
                    Some(event) => if current.send(event).await.is_err() { continue },
                    None => return,
                },
            }
        }
    });
    let first_agent = tokio::spawn(serve_agent(Port { events, writes }));
    let link = MuxClient::connect(UnixStream::connect(&socket).await.unwrap());
    let link = within("the hello", link).await.unwrap();
    client(&link).await.ping().await.unwrap();

    // The agent process dies; a new one opens the port and says so.
    first_agent.abort();
    let (events_tx, events) = mpsc::channel(4);
    swap_tx.send(events_tx).await.unwrap();
    let _second_agent = tokio::spawn(serve_agent(Port {
        events,
        writes: port_writes,
    }));
    within("the session's end", async {
        while link.closed().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        link.closed(),
        Some(MuxError::GuestReset("agent started".into()))
    );
    assert!(link.open().is_err());
}

#[tokio::test]
async fn the_guest_refuses_streams_beyond_the_limit() {
    let guest = Guest::start();
    let link = guest.connect().await;
    let mut clients = Vec::new();
    for _ in 0..MAX_STREAMS {
        clients.push(client(&link).await);
    }
    assert_eq!(link.open().unwrap_err(), MuxError::TooManyStreams);
    clients.pop();
    // A slot is free once the dropped stream's RESET went out.
    let extra = within("a free slot", async {
        loop {
            match link.open() {
                Ok(stream) => break stream,
                Err(MuxError::TooManyStreams) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(other) => panic!("{other}"),
            }
        }
    })
    .await;
    AgentClient::handshake(extra, "one more")
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
}

// ---- hostile guests, against the host side --------------------------------------------------

/// A host client over an in-memory pipe whose other end the test drives as the guest, past
/// the hello.
async fn host_with_raw_guest() -> (MuxClient, DuplexStream) {
    let (host_end, mut guest_end) = tokio::io::duplex(1 << 20);
    let connect = tokio::spawn(MuxClient::connect(host_end));
    let mut hello = vec![0u8; PREAMBLE_LEN + HEADER_LEN + HELLO_PAYLOAD_LEN];
    guest_end.read_exact(&mut hello).await.unwrap();
    let mut decoder = Decoder::new(true);
    decoder.push(&hello);
    let found = decoder.seek_hello(FrameType::Hello).unwrap();
    assert_eq!(found.version, MUX_VERSION);
    // Noise first, and an ack of another session: both skipped.
    let mut answer = b"garbage from an earlier agent".to_vec();
    encode_frame(
        &mut answer,
        FrameType::HelloAck,
        0,
        &hello_payload(found.session ^ 1),
    );
    encode_frame(
        &mut answer,
        FrameType::HelloAck,
        0,
        &hello_payload(found.session),
    );
    guest_end.write_all(&answer).await.unwrap();
    let client = within("the ack", connect).await.unwrap().unwrap();
    (client, guest_end)
}

async fn closed_with(link: &MuxClient) -> MuxError {
    within("the session's end", async {
        loop {
            if let Some(error) = link.closed() {
                return error;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_flooding_guest_cannot_grow_host_memory() {
    let (link, mut guest) = host_with_raw_guest().await;
    let stream = link.open().unwrap();
    // Nobody reads `stream`: the guest may fill its window, and no more.
    let mut flood = Vec::new();
    let chunk = vec![b'z'; MAX_PAYLOAD];
    for _ in 0..STREAM_WINDOW as usize / MAX_PAYLOAD {
        encode_frame(&mut flood, FrameType::Data, 1, &chunk);
    }
    guest.write_all(&flood).await.unwrap();
    within("the window to fill", async {
        loop {
            let buffered: usize = link
                .shared
                .lock()
                .streams
                .values()
                .map(|s| s.inbound.len())
                .sum();
            if buffered == STREAM_WINDOW as usize {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(link.closed().is_none());
    // One byte more than the window is a violation: the session ends, the memory goes.
    let mut over = Vec::new();
    encode_frame(&mut over, FrameType::Data, 1, b"!");
    guest.write_all(&over).await.unwrap();
    let error = closed_with(&link).await;
    assert!(
        matches!(&error, MuxError::Protocol(why) if why.contains("credit")),
        "{error}"
    );
    // What arrived before the violation can still be read; then the reason.
    let mut stream = stream;
    let mut buf = vec![0u8; STREAM_WINDOW as usize];
    stream.read_exact(&mut buf).await.unwrap();
    let err = stream.read(&mut buf).await.unwrap_err();
    assert!(err.to_string().contains("credit"), "{err}");
}

#[tokio::test]
async fn malformed_frames_from_the_guest_end_the_session_with_a_reason() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0], "unknown frame type"),
        (
            {
                let mut f = Vec::new();
                encode_frame(&mut f, FrameType::Data, 0, b"x");
                f
            },
            "on stream 0",
        ),
        (
            // A length over the limit is refused from the header, before any payload.
            [
                &[FrameType::Data as u8, 0, 0, 0, 1][..],
                &(1u32 << 30).to_be_bytes(),
            ]
            .concat(),
            "payload",
        ),
        (
            {
                let mut f = Vec::new();
                encode_frame(&mut f, FrameType::Open, 9, &[]);
                f
            },
            "may not open",
        ),
        (
            {
                let mut f = Vec::new();
                encode_frame(&mut f, FrameType::Window, 1, &1u32.to_be_bytes());
                f
            },
            "window",
        ),
        (
            {
                let mut f = Vec::new();
                encode_frame(&mut f, FrameType::Pong, 0, &99u64.to_be_bytes());
                f
            },
            "PONG 99",
        ),
        (vec![0; HEADER_LEN], "unknown frame type 0x00"),
    ];
    for (bytes, expected) in cases {
        let (link, mut guest) = host_with_raw_guest().await;
        let _stream = link.open().unwrap();
        guest.write_all(&bytes).await.unwrap();
        let error = closed_with(&link).await;
        assert!(
            matches!(&error, MuxError::Protocol(why) if why.contains(expected)),
            "{bytes:?}: {error}"
        );
    }
    let (link, mut guest) = host_with_raw_guest().await;
    let mut reset = Vec::new();
    encode_frame(&mut reset, FrameType::Reset, 0, b"going away");
    guest.write_all(&reset).await.unwrap();
    assert_eq!(
        closed_with(&link).await,
        MuxError::GuestReset("going away".into())
    );
}

#[tokio::test]
async fn a_guest_of_another_version_is_named() {
    let (host_end, mut guest_end) = tokio::io::duplex(1 << 20);
    let connect = tokio::spawn(MuxClient::connect(host_end));
    let mut hello = vec![0u8; PREAMBLE_LEN + HEADER_LEN + HELLO_PAYLOAD_LEN];
    guest_end.read_exact(&mut hello).await.unwrap();
    let session = u64_payload(&hello[hello.len() - 8..]);
    let mut ack = Vec::new();
    let mut payload = hello_payload(session);
    payload[8..10].copy_from_slice(&9u16.to_be_bytes());
    encode_frame(&mut ack, FrameType::HelloAck, 0, &payload);
    guest_end.write_all(&ack).await.unwrap();
    let error = within("the ack", connect).await.unwrap().unwrap_err();
    assert_eq!(error, MuxError::Version { guest: 9 });
}

// ---- hostile hosts, against the guest side --------------------------------------------------

/// The guest side on raw channels: the test writes host bytes and reads what the guest says.
struct RawHost {
    to_guest: mpsc::Sender<PortEvent>,
    from_guest: mpsc::Receiver<Vec<u8>>,
    decoder: Decoder,
    opened: tokio::sync::mpsc::UnboundedReceiver<MuxStream>,
    _guest: tokio::task::JoinHandle<()>,
}

impl RawHost {
    fn start() -> RawHost {
        let (to_guest, events) = mpsc::channel(4);
        let (writes, from_guest) = mpsc::channel(4);
        let (opened_tx, opened) = tokio::sync::mpsc::unbounded_channel();
        let guest = tokio::spawn(serve_guest(Port { events, writes }, move |stream| {
            let _ = opened_tx.send(stream);
        }));
        RawHost {
            to_guest,
            from_guest,
            decoder: Decoder::new(false),
            opened,
            _guest: guest,
        }
    }

    async fn send(&self, bytes: Vec<u8>) {
        self.to_guest.send(PortEvent::Data(bytes)).await.unwrap();
    }

    async fn next_frame(&mut self) -> Frame {
        within("a frame from the guest", async {
            loop {
                match self.decoder.next_frame() {
                    Ok(Some(frame)) => return frame,
                    Ok(None) => {}
                    Err(why) => panic!("the guest sent garbage: {why}"),
                }
                let bytes = self.from_guest.recv().await.expect("the guest is gone");
                self.decoder.push(&bytes);
            }
        })
        .await
    }

    /// Says hello and reads up to the ack (past the guest's "agent started").
    async fn hello(&mut self, session: u64) {
        self.send(encode_hello(session)).await;
        loop {
            let frame = self.next_frame().await;
            if frame.kind == FrameType::HelloAck {
                assert_eq!(u64_payload(&frame.payload[10..]), session);
                return;
            }
        }
    }

    async fn open(&mut self, id: u32) -> MuxStream {
        let mut open = Vec::new();
        encode_frame(&mut open, FrameType::Open, id, &[]);
        self.send(open).await;
        within("the stream", self.opened.recv()).await.unwrap()
    }
}

#[tokio::test]
async fn a_flooding_host_cannot_grow_guest_memory() {
    let mut host = RawHost::start();
    host.hello(1).await;
    let stream = host.open(1).await;
    let mut flood = Vec::new();
    for _ in 0..STREAM_WINDOW as usize / MAX_PAYLOAD {
        encode_frame(&mut flood, FrameType::Data, 1, &[7; MAX_PAYLOAD]);
    }
    encode_frame(&mut flood, FrameType::Data, 1, b"one too many");
    host.send(flood).await;
    let reset = host.next_frame().await;
    assert_eq!((reset.kind, reset.stream), (FrameType::Reset, 0));
    let reason = String::from_utf8(reset.payload).unwrap();
    assert!(reason.contains("credit"), "{reason}");
    // The stream's buffered bytes are readable, then its end says why; the agent would kill
    // its command on the hangup token.
    assert!(stream.peer_closed().is_cancelled());
    // The guest now seeks a new hello: frames of the dead session are ignored, a hello works.
    let mut stale = Vec::new();
    encode_frame(&mut stale, FrameType::Data, 1, b"late");
    host.send(stale).await;
    host.hello(2).await;
    let _fresh = host.open(1).await;
}

#[tokio::test]
async fn a_host_that_opens_without_reading_cannot_pile_up_refusals() {
    let mut host = RawHost::start();
    host.hello(4).await;
    let mut kept = Vec::new();
    for id in 1..=MAX_STREAMS as u32 {
        kept.push(host.open(id).await);
    }
    // Refused streams wait for their RESET to be written, which this host never reads.
    let mut opens = Vec::new();
    for id in MAX_STREAMS as u32 + 1..=MAX_STREAM_ENTRIES as u32 + 1 {
        encode_frame(&mut opens, FrameType::Open, id, &[]);
    }
    host.send(opens).await;
    let reset = loop {
        let frame = host.next_frame().await;
        if frame.kind == FrameType::Reset && frame.stream == 0 {
            break String::from_utf8(frame.payload).unwrap();
        }
    };
    assert!(reset.contains("not yet closed"), "{reset}");
    assert!(
        kept.iter()
            .all(|stream| stream.peer_closed().is_cancelled())
    );
}

#[tokio::test]
async fn malformed_frames_from_the_host_reset_the_guest_and_say_why() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0], "unknown frame type"),
        (
            {
                let mut f = Vec::new();
                encode_frame(&mut f, FrameType::Open, 1, &[]);
                encode_frame(&mut f, FrameType::Open, 1, &[]);
                f
            },
            "ids must rise",
        ),
        (
            {
                let mut f = Vec::new();
                encode_frame(&mut f, FrameType::Data, 5, b"x");
                f
            },
            "never opened",
        ),
        (
            {
                let mut f = Vec::new();
                encode_frame(&mut f, FrameType::HelloAck, 0, &hello_payload(1));
                f
            },
            "HelloAck from the host",
        ),
        (
            {
                let mut f = Vec::new();
                encode_frame(&mut f, FrameType::Eof, 1, b"payload");
                f
            },
            "7-byte payload",
        ),
    ];
    for (bytes, expected) in cases {
        let mut host = RawHost::start();
        host.hello(3).await;
        host.send(bytes.clone()).await;
        let reset = loop {
            let frame = host.next_frame().await;
            if frame.kind == FrameType::Reset && frame.stream == 0 {
                break String::from_utf8(frame.payload).unwrap();
            }
        };
        assert!(reset.contains(expected), "{bytes:?}: {reset}");
    }
}

#[tokio::test]
async fn the_guest_answers_pings_and_a_second_hello_resets_its_streams() {
    let mut host = RawHost::start();
    host.hello(10).await;
    let stream = host.open(1).await;
    let mut ping = Vec::new();
    encode_frame(&mut ping, FrameType::Ping, 0, &42u64.to_be_bytes());
    host.send(ping).await;
    let pong = host.next_frame().await;
    assert_eq!(
        (pong.kind, u64_payload(&pong.payload)),
        (FrameType::Pong, 42)
    );
    // The host reconnected without the guest seeing it leave: a hello in the open session.
    host.hello(11).await;
    assert!(stream.peer_closed().is_cancelled());
    // Ids start again in the new session.
    let _again = host.open(1).await;
    // And the host leaving resets everything too.
    let next = host.open(2).await;
    host.to_guest.send(PortEvent::HostGone).await.unwrap();
    within("the reset", next.peer_closed().cancelled()).await;
}

// ---- the decoder -------------------------------------------------------------------------

#[test]
fn the_hello_is_found_behind_garbage_half_frames_and_padding_split_anywhere() {
    let mut bytes = Vec::new();
    encode_frame(&mut bytes, FrameType::Data, 3, &[1; 300]);
    bytes.truncate(100); // half a frame of an earlier session
    bytes.extend_from_slice(b"\x01\x00\x00\x00\x00 almost a hello");
    bytes.extend_from_slice(&encode_hello(0xfeed));
    encode_frame(&mut bytes, FrameType::Open, 1, &[]);
    for split in [1, 2, 7, 13, 100, 4096] {
        let mut decoder = Decoder::new(true);
        let mut found = None;
        let mut frames = Vec::new();
        for chunk in bytes.chunks(split) {
            decoder.push(chunk);
            if found.is_none() {
                found = decoder.seek_hello(FrameType::Hello);
                // Seeking keeps no more than a frame prefix around.
                assert!(decoder.pending().len() <= HEADER_LEN + HELLO_PAYLOAD_LEN + split);
            }
            if found.is_some() {
                while let Some(frame) = decoder.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
        }
        assert_eq!(
            found,
            Some(HelloFound {
                version: MUX_VERSION,
                session: 0xfeed
            }),
            "split {split}"
        );
        assert_eq!(
            frames,
            vec![Frame {
                kind: FrameType::Open,
                stream: 1,
                payload: vec![]
            }],
            "split {split}"
        );
    }
}

#[test]
fn the_preamble_completes_any_half_frame() {
    // The largest frame a guest could be in the middle of, cut after its header.
    let mut decoder = Decoder::new(true);
    let mut half = Vec::new();
    encode_frame(&mut half, FrameType::Data, 1, &[9; MAX_PAYLOAD]);
    half.truncate(HEADER_LEN + 1);
    decoder.push(&half);
    assert_eq!(decoder.next_frame().unwrap(), None);
    decoder.push(&encode_hello(5));
    let stale = decoder.next_frame().unwrap().unwrap();
    assert_eq!(stale.kind, FrameType::Data);
    let hello = decoder.next_frame().unwrap().unwrap();
    assert_eq!(hello.kind, FrameType::Hello);
    assert_eq!(u64_payload(&hello.payload[10..]), 5);
}
