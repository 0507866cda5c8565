//! The guest agent end to end: the real `banger-agent` binary listening on a unix socket in a
//! temporary directory (as under the fake firecracker), driven by the host client and by raw
//! frames.
//!
//! Each test starts its own agent, so they run in parallel. Nothing sleeps to synchronise:
//! readiness is the agent's `ready` line on stdout, and "the process is gone" is a pidfd
//! becoming readable. Deadlines only turn a hang into a failure.
//!
//! The static build (`tools/build-agent.sh`) is tested by the `banger-agent` package
//! (`src/agent/tests/build.rs`).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use banger::agent::protocol::{
    AgentMessage, ClientMessage, FrameKind, MAX_FRAME_LEN, PROTOCOL_VERSION, RawFrame, read_frame,
    write_frame, write_message,
};
use banger::agent::{
    AgentClient, AgentError, ErrorCode, ExecEvent, ExecRequest, ExitStatus, OutputStream, StdinMode,
};
use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::Barrier;

/// Bounds every wait, so that a bug shows up as a failure rather than a hung test.
const DEADLINE: Duration = Duration::from_secs(30);

/// A `banger-agent` process serving `unix:<tempdir>/agent.sock`. Dropping it kills it.
pub(crate) struct AgentProcess {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl AgentProcess {
    pub(crate) async fn start() -> AgentProcess {
        // Short path: a unix socket path must fit in 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("banger-agent-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_banger-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .env("BANGER_AGENT_CID", "42")
            .env("BANGER_AGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start banger-agent");
        let stdout = child.stdout.take().expect("agent stdout");
        let mut line = String::new();
        let read =
            tokio::time::timeout(DEADLINE, BufReader::new(stdout).read_line(&mut line)).await;
        let agent = AgentProcess { child, socket, dir };
        let expected = format!("banger-agent ready on unix:{}\n", agent.socket.display());
        assert!(
            matches!(read, Ok(Ok(_))) && line == expected,
            "agent did not become ready: {read:?} {line:?}\n{}",
            agent.log()
        );
        agent
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub(crate) async fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.socket)
            .await
            .expect("connect to the agent")
    }

    pub(crate) async fn client(&self) -> AgentClient<UnixStream> {
        AgentClient::handshake(self.connect().await, "integration-test")
            .await
            .expect("hello")
    }

    /// A raw connection that has said hello.
    pub(crate) async fn raw(&self) -> UnixStream {
        let mut stream = self.connect().await;
        let hello = ClientMessage::Hello {
            protocol: PROTOCOL_VERSION,
            client: "raw".into(),
        };
        write_message(&mut stream, &hello).await.unwrap();
        assert!(matches!(
            read_message(&mut stream).await,
            AgentMessage::Hello { .. }
        ));
        stream
    }
}

pub(crate) async fn read_message(stream: &mut UnixStream) -> AgentMessage {
    let frame = tokio::time::timeout(DEADLINE, read_frame(stream))
        .await
        .expect("agent answered in time");
    let frame = frame.expect("a frame").expect("not end of file");
    assert_eq!(frame.kind(), Some(FrameKind::Message), "{frame:?}");
    serde_json::from_slice(&frame.payload).expect("a JSON message")
}

async fn expect_error(stream: &mut UnixStream, code: ErrorCode) -> String {
    match read_message(stream).await {
        AgentMessage::Error(body) if body.code == code => body.message,
        other => panic!("expected a {code} error, got {other:?}"),
    }
}

async fn expect_closed(stream: &mut UnixStream) {
    let next = tokio::time::timeout(DEADLINE, read_frame(stream))
        .await
        .expect("agent closed in time");
    assert!(
        matches!(next, Ok(None)),
        "expected the agent to close the connection, got {next:?}"
    );
}

/// Waits until process `pid` has exited (a pidfd turns readable when it does). The process
/// is not our child, so this is the only way to wait for it without polling.
pub(crate) async fn wait_gone(pid: u32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if raw < 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ESRCH),
            "pidfd_open({pid}): {err}"
        );
        return; // Already gone.
    }
    // SAFETY: the syscall just returned this descriptor and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    // SAFETY: the OwnedFd stays open, with the same number, for the AsyncFd's life.
    let pidfd = unsafe { AsyncFd::register(pidfd) }.expect("register pidfd");
    tokio::time::timeout(DEADLINE, pidfd.readable())
        .await
        .expect("process exited in time")
        .expect("poll pidfd")
        .retain_ready();
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

async fn version_mismatch_is_a_clear_error_on_both_sides() {
    let agent = AgentProcess::start().await;

    // The agent refuses a client that speaks another version, and says which versions.
    let err =
        AgentClient::handshake_as(agent.connect().await, "future-banger", PROTOCOL_VERSION + 1)
            .await
            .err()
            .expect("a newer client is refused");
    match &err {
        AgentError::VersionMismatch {
            client,
            agent: None,
            detail,
        } => {
            assert_eq!(*client, PROTOCOL_VERSION + 1);
            assert!(
                detail.contains(&format!("speaks protocol {PROTOCOL_VERSION}")),
                "{detail}"
            );
            assert!(
                detail.contains(&format!("speaks protocol {}", PROTOCOL_VERSION + 1)),
                "{detail}"
            );
        }
        other => panic!("expected a version mismatch, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("protocol mismatch with the guest agent"),
        "{err}"
    );

    // Raw: the refusal is an error frame, then the agent closes the connection.
    let mut raw = agent.connect().await;
    write_message(
        &mut raw,
        &ClientMessage::Hello {
            protocol: 0,
            client: "old".into(),
        },
    )
    .await
    .unwrap();
    expect_error(&mut raw, ErrorCode::VersionMismatch).await;
    expect_closed(&mut raw).await;

    // The client refuses an agent that answers with another version.
    let (client_end, mut agent_end) = tokio::io::duplex(4096);
    let fake_agent = async move {
        let hello = read_frame(&mut agent_end).await.unwrap().unwrap();
        let hello: ClientMessage = serde_json::from_slice(&hello.payload).unwrap();
        assert!(matches!(
            hello,
            ClientMessage::Hello {
                protocol: PROTOCOL_VERSION,
                ..
            }
        ));
        let answer = AgentMessage::Hello {
            protocol: PROTOCOL_VERSION + 1,
            agent_version: "9.9.9".into(),
        };
        write_message(&mut agent_end, &answer).await.unwrap();
        agent_end
    };
    let (result, _agent_end) = tokio::join!(AgentClient::handshake(client_end, "test"), fake_agent);
    match result.err().expect("the client refuses a newer agent") {
        AgentError::VersionMismatch {
            client,
            agent: Some(agent),
            ..
        } => {
            assert_eq!((client, agent), (PROTOCOL_VERSION, PROTOCOL_VERSION + 1));
        }
        other => panic!("expected a version mismatch, got {other:?}"),
    }

    // And the agent still serves a client of the right version.
    let mut client = agent.client().await;
    assert_eq!(client.agent().protocol, PROTOCOL_VERSION);
    assert_eq!(client.agent().agent_version, env!("CARGO_PKG_VERSION"));
    client.ping().await.unwrap();
}

async fn health_reports_version_uptime_hostname_and_load() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;
    let health = client.health().await.unwrap();
    assert_eq!(health.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(health.protocol, PROTOCOL_VERSION);
    assert_eq!(health.cid, Some(42), "the CID given in BANGER_AGENT_CID");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(health.hostname, hostname.trim());
    assert!(health.system_uptime_ms > 0);
    assert!(
        health.load.iter().all(|l| l.is_finite() && *l >= 0.0),
        "{:?}",
        health.load
    );
    assert!(health.mem_total_bytes > 0 && health.mem_available_bytes <= health.mem_total_bytes);
    // Later health on the same connection sees the agent's uptime move forward (or stay).
    let again = client.health().await.unwrap();
    assert!(again.agent_uptime_ms >= health.agent_uptime_ms);
}

async fn ping_measures_round_trips_on_one_connection() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;
    for _ in 0..5 {
        let rtt = client.ping().await.unwrap();
        assert!(rtt > Duration::ZERO && rtt < DEADLINE, "{rtt:?}");
    }
}

async fn exec_streams_stdout_and_stderr_then_the_exit_code() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;

    let mut exec = client
        .exec(&sh("echo out; echo err >&2; exit 3"))
        .await
        .unwrap();
    assert!(exec.pid() > 0);
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let status = loop {
        match exec.next().await.unwrap() {
            ExecEvent::Stdout(chunk) => stdout.extend(chunk),
            ExecEvent::Stderr(chunk) => stderr.extend(chunk),
            ExecEvent::Exited(status) => break status,
        }
    };
    assert_eq!(
        (stdout.as_slice(), stderr.as_slice(), status),
        (&b"out\n"[..], &b"err\n"[..], ExitStatus::Code(3))
    );
    // Asking again after the end repeats the status rather than reading past it.
    assert_eq!(
        exec.next().await.unwrap(),
        ExecEvent::Exited(ExitStatus::Code(3))
    );

    // The same connection carries the next request, and the callback API sees the same.
    let mut seen = Vec::new();
    let status = client
        .exec_with(
            &sh("echo out; echo err >&2; exit 3"),
            None,
            |stream, chunk| seen.push((stream, chunk.to_vec())),
        )
        .await
        .unwrap();
    assert_eq!(status, ExitStatus::Code(3));
    assert_eq!(status.shell_code(), 3);
    let stdout: Vec<u8> = seen
        .iter()
        .filter(|(s, _)| *s == OutputStream::Stdout)
        .flat_map(|(_, c)| c.clone())
        .collect();
    let stderr: Vec<u8> = seen
        .iter()
        .filter(|(s, _)| *s == OutputStream::Stderr)
        .flat_map(|(_, c)| c.clone())
        .collect();
    assert_eq!((stdout, stderr), (b"out\n".to_vec(), b"err\n".to_vec()));
}

async fn exec_output_arrives_while_the_command_still_runs() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;
    // The command prints, then waits for input that is only sent once the first line arrived:
    // it can only finish if output is streamed before exit.
    let request = sh("echo first; read line; echo \"got $line\"").stdin(StdinMode::Pipe);
    let mut exec = client.exec(&request).await.unwrap();
    assert_eq!(
        exec.next().await.unwrap(),
        ExecEvent::Stdout(b"first\n".to_vec())
    );
    exec.write_stdin(b"hello\n").await.unwrap();
    exec.close_stdin().await.unwrap();
    assert_eq!(
        exec.next().await.unwrap(),
        ExecEvent::Stdout(b"got hello\n".to_vec())
    );
    assert_eq!(
        exec.next().await.unwrap(),
        ExecEvent::Exited(ExitStatus::Code(0))
    );
    client.ping().await.unwrap();
}

async fn a_command_that_ignores_its_stdin_pipe_exits_before_the_host_closes_it() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;
    // The host never closes stdin before the exit: with a pipe that may never end (`sleep
    // 100 | banger vm exec …`), waiting for stdin_close would hang the command's caller.
    let request = sh("echo done").stdin(StdinMode::Pipe);
    let mut exec = client.exec(&request).await.unwrap();
    assert_eq!(
        exec.next().await.unwrap(),
        ExecEvent::Stdout(b"done\n".to_vec())
    );
    let exited = tokio::time::timeout(std::time::Duration::from_secs(30), exec.next())
        .await
        .expect("exited without waiting for stdin_close");
    assert_eq!(exited.unwrap(), ExecEvent::Exited(ExitStatus::Code(0)));
    // Input still on its way, and the stdin_close that ends it, are dropped without an
    // answer: the next request gets its own answer, not an error about stray stdin.
    exec.write_stdin(&[b'x'; 200_000]).await.unwrap();
    exec.close_stdin().await.unwrap();
    client.ping().await.unwrap();
    let output = client.exec_collect(&sh("echo next"), None).await.unwrap();
    assert_eq!(output.stdout, b"next\n");
}

async fn exec_uses_a_clean_environment_plus_the_requested_env_and_cwd() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;
    let cwd = tempfile::tempdir().unwrap();
    let cwd = cwd.path().canonicalize().unwrap();
    let script = "echo \"$FOO\"; pwd; echo \"${BANGER_AGENT_CID-unset}\"; echo \"$PATH\"";
    let request = sh(script).env("FOO", "bar baz").cwd(cwd.to_str().unwrap());
    let output = client.exec_collect(&request, None).await.unwrap();
    let expected = format!(
        "bar baz\n{}\nunset\n{}\n",
        cwd.display(),
        banger::agent::server::DEFAULT_PATH
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        expected,
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status, ExitStatus::Code(0));

    // The requested env overrides the base; without cwd the command runs in HOME.
    let output = client
        .exec_collect(
            &sh("pwd; echo \"$HOME\"; echo \"$PATH\"").env("PATH", "/bin:/usr/bin"),
            None,
        )
        .await;
    let output = output.unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], lines[1], "the default directory is HOME");
    assert_eq!(lines[2], "/bin:/usr/bin");
}

async fn exec_failures_are_clear_errors_and_the_connection_survives() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;

    let err = client
        .exec(&ExecRequest::new([
            "/nonexistent/banger-no-such-program",
            "x",
        ]))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::SpawnFailed), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("banger-no-such-program") && message.contains("No such file"),
        "{message}"
    );

    let err = client
        .exec(&ExecRequest::new(["banger-no-such-program-on-path"]))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::SpawnFailed), "{err}");

    let err = client
        .exec(&ExecRequest::new(["true"]).cwd("/nonexistent-banger-dir"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::SpawnFailed), "{err}");
    assert!(
        err.to_string()
            .contains("working directory /nonexistent-banger-dir"),
        "{err}"
    );

    let err = client
        .exec(&ExecRequest::new(["true"]).cwd("relative/dir"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");

    let err = client
        .exec(&ExecRequest::new(Vec::<String>::new()))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    assert!(err.to_string().contains("argv is empty"), "{err}");

    let err = client
        .exec(&ExecRequest::new(["true"]).env("A=B", "c"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");

    client.ping().await.unwrap();
    assert!(
        client
            .exec_collect(&ExecRequest::new(["true"]), None)
            .await
            .unwrap()
            .status
            .success()
    );
}

async fn binary_output_and_input_round_trip_unchanged() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;
    // Every byte value, invalid UTF-8 included, over several chunks in both directions.
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    assert!((0..=255u8).all(|b| data.contains(&b)));

    let output = client
        .exec_collect(&ExecRequest::new(["cat"]), Some(&data))
        .await
        .unwrap();
    assert_eq!(output.status, ExitStatus::Code(0));
    assert!(
        output.stdout == data,
        "stdout differs ({} bytes back)",
        output.stdout.len()
    );
    assert!(output.stderr.is_empty());

    let output = client
        .exec_collect(&sh("cat >&2"), Some(&data))
        .await
        .unwrap();
    assert!(
        output.stderr == data,
        "stderr differs ({} bytes back)",
        output.stderr.len()
    );
    assert!(output.stdout.is_empty());

    // A command that ignores its stdin still finishes; the unread input is dropped.
    let output = client
        .exec_collect(&sh("exec 0<&-; echo done"), Some(&data))
        .await
        .unwrap();
    assert_eq!(
        (output.status, output.stdout),
        (ExitStatus::Code(0), b"done\n".to_vec())
    );
}

async fn death_by_signal_is_reported() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;

    let output = client.exec_collect(&sh("kill -9 $$"), None).await.unwrap();
    assert_eq!(output.status, ExitStatus::Signal(9));
    assert_eq!(output.status.shell_code(), 137);
    assert_eq!(output.status.to_string(), "killed by signal 9 (SIGKILL)");

    // A signal sent by the client reaches the command.
    let mut exec = client
        .exec(&ExecRequest::new(["sleep", "1000"]))
        .await
        .unwrap();
    exec.signal(Signal::SIGTERM).await.unwrap();
    assert_eq!(
        exec.next().await.unwrap(),
        ExecEvent::Exited(ExitStatus::Signal(15))
    );
}

async fn client_disconnect_mid_exec_kills_the_whole_process_group() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;
    // sh starts a background sleep in its process group, prints its pid, and waits.
    let mut exec = client
        .exec(&sh("sleep 1000 & echo $!; wait"))
        .await
        .unwrap();
    let shell = exec.pid();
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        match exec.next().await.unwrap() {
            ExecEvent::Stdout(chunk) => line.extend(chunk),
            other => panic!("unexpected {other:?}"),
        }
    }
    let sleeper: u32 = String::from_utf8(line).unwrap().trim().parse().unwrap();
    assert!(Path::new(&format!("/proc/{sleeper}")).exists());

    // `exec` is done with (never read to its end): the client refuses to reuse a connection
    // left in the middle of a command.
    assert!(matches!(client.ping().await, Err(AgentError::Unusable)));
    drop(client);

    wait_gone(shell).await;
    wait_gone(sleeper).await;
    // The agent carries on.
    agent.client().await.ping().await.unwrap();
}

async fn client_vanishing_while_stdin_is_backed_up_still_kills_the_command() {
    let agent = AgentProcess::start().await;
    let mut raw = agent.raw().await;
    // `sleep` neither reads its stdin nor writes anything. Once its pipe and the agent's
    // small queue are full, the agent stops reading the socket (back-pressure), so it cannot
    // see an end of file there: only the hangup tells it that the client left.
    let request = ExecRequest::new(["sleep", "1000"]).stdin(StdinMode::Pipe);
    write_message(&mut raw, &ClientMessage::Exec(request))
        .await
        .unwrap();
    let AgentMessage::ExecStarted { pid } = read_message(&mut raw).await else {
        panic!("exec did not start");
    };
    // A whole number of stdin frames, written round and round until the agent stops taking
    // them. "Stopped" is judged by the socket staying full for a while: that wait only decides
    // when this test stops writing; the assertion (the command dies) must hold either way.
    let mut batch = Vec::new();
    for _ in 0..16 {
        write_frame(&mut batch, FrameKind::Stdin, &[b'x'; 65536])
            .await
            .unwrap();
    }
    let (mut offset, mut sent) = (0, 0usize);
    loop {
        match raw.try_write(&batch[offset..]) {
            Ok(n) => {
                offset = (offset + n) % batch.len();
                sent += n;
                assert!(
                    sent < 256 << 20,
                    "the agent kept taking stdin that nothing reads"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let settle = tokio::time::timeout(Duration::from_millis(300), raw.writable()).await;
                if settle.is_err() {
                    break;
                }
            }
            Err(e) => panic!("write stdin: {e}"),
        }
    }
    drop(raw);
    wait_gone(pid).await;
    agent.client().await.ping().await.unwrap();
}

async fn agent_shutdown_kills_running_commands() {
    let mut agent = AgentProcess::start().await;
    let mut client = agent.client().await;
    let exec = client
        .exec(&ExecRequest::new(["sleep", "1000"]))
        .await
        .unwrap();
    let pid = exec.pid();
    let agent_pid = agent.child.id().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent_pid as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(DEADLINE, agent.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}\n{}", agent.log());
    wait_gone(pid).await;
    assert!(!agent.socket.exists(), "the agent removes its socket");
}

async fn sync_flushes_and_answers() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;
    client.sync().await.unwrap();
    client.sync().await.unwrap();
}

async fn malformed_frames_get_clear_errors_and_the_connection_goes_on() {
    let agent = AgentProcess::start().await;
    let mut raw = agent.raw().await;

    write_frame(&mut raw, FrameKind::Message, b"{not json")
        .await
        .unwrap();
    let message = expect_error(&mut raw, ErrorCode::BadFrame).await;
    assert!(message.contains("not valid JSON"), "{message}");

    write_frame(&mut raw, FrameKind::Message, br#"{"type":"reboot"}"#)
        .await
        .unwrap();
    let message = expect_error(&mut raw, ErrorCode::UnknownRequest).await;
    assert!(
        message.contains("\"reboot\"") && message.contains("exec"),
        "{message}"
    );

    write_frame(
        &mut raw,
        FrameKind::Message,
        br#"{"type":"ping","nonce":"soon"}"#,
    )
    .await
    .unwrap();
    expect_error(&mut raw, ErrorCode::BadRequest).await;

    write_frame(&mut raw, FrameKind::Message, br#"{"no":"type"}"#)
        .await
        .unwrap();
    expect_error(&mut raw, ErrorCode::BadRequest).await;

    raw.write_all(&[0, 0, 0, 3, 0x7f, 1, 2]).await.unwrap();
    let message = expect_error(&mut raw, ErrorCode::BadFrame).await;
    assert!(message.contains("0x7f"), "{message}");

    raw.write_all(&[0, 0, 0, 0]).await.unwrap();
    expect_error(&mut raw, ErrorCode::BadFrame).await;

    write_frame(&mut raw, FrameKind::Stdin, b"stray")
        .await
        .unwrap();
    expect_error(&mut raw, ErrorCode::Unexpected).await;
    write_frame(&mut raw, FrameKind::Stdout, b"wrong way")
        .await
        .unwrap();
    expect_error(&mut raw, ErrorCode::BadFrame).await;
    write_message(&mut raw, &ClientMessage::StdinClose)
        .await
        .unwrap();
    expect_error(&mut raw, ErrorCode::Unexpected).await;
    write_message(
        &mut raw,
        &ClientMessage::Hello {
            protocol: PROTOCOL_VERSION,
            client: "again".into(),
        },
    )
    .await
    .unwrap();
    expect_error(&mut raw, ErrorCode::Unexpected).await;

    // The framing was never lost: a request on the same connection is answered.
    write_message(&mut raw, &ClientMessage::Ping { nonce: 7 })
        .await
        .unwrap();
    assert_eq!(
        read_message(&mut raw).await,
        AgentMessage::Pong { nonce: 7 }
    );

    // A connection that does not start with hello is refused and closed.
    let mut rude = agent.connect().await;
    write_message(&mut rude, &ClientMessage::Health)
        .await
        .unwrap();
    expect_error(&mut rude, ErrorCode::Unexpected).await;
    expect_closed(&mut rude).await;
}

async fn oversized_frame_is_refused_without_allocating_and_the_agent_still_serves() {
    let agent = AgentProcess::start().await;
    let mut raw = agent.raw().await;
    // Announce 4 GiB - 1 and send nothing after it: the agent must answer from the header.
    raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let message = expect_error(&mut raw, ErrorCode::FrameTooLarge).await;
    assert!(message.contains(&MAX_FRAME_LEN.to_string()), "{message}");
    expect_closed(&mut raw).await;

    // Just over the limit, mid-exec: the command is killed and the connection closed.
    let mut raw = agent.raw().await;
    write_message(
        &mut raw,
        &ClientMessage::Exec(sh("echo started; sleep 1000")),
    )
    .await
    .unwrap();
    let AgentMessage::ExecStarted { pid } = read_message(&mut raw).await else {
        panic!("exec did not start")
    };
    raw.write_all(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes())
        .await
        .unwrap();
    loop {
        let frame: RawFrame = tokio::time::timeout(DEADLINE, read_frame(&mut raw))
            .await
            .unwrap()
            .unwrap()
            .expect("a frame");
        if frame.kind() == Some(FrameKind::Message) {
            let message: AgentMessage = serde_json::from_slice(&frame.payload).unwrap();
            assert!(
                matches!(&message, AgentMessage::Error(b) if b.code == ErrorCode::FrameTooLarge),
                "{message:?}"
            );
            break;
        }
    }
    expect_closed(&mut raw).await;
    wait_gone(pid).await;

    let mut client = agent.client().await;
    client.ping().await.unwrap();
    assert!(
        client
            .exec_collect(&ExecRequest::new(["true"]), None)
            .await
            .unwrap()
            .status
            .success()
    );
}

async fn twenty_concurrent_connections_are_served() {
    const CONNECTIONS: usize = 20;
    let agent = AgentProcess::start().await;
    let socket = agent.socket.clone();
    // Every command waits for stdin, and stdin is only sent once all of them have started:
    // the 20 connections each have a command running at the same time.
    let all_started = Arc::new(Barrier::new(CONNECTIONS));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let socket = socket.clone();
            let all_started = all_started.clone();
            tokio::spawn(async move {
                let stream = UnixStream::connect(&socket).await.unwrap();
                let mut client = AgentClient::handshake(stream, "concurrent").await.unwrap();
                client.ping().await.unwrap();
                let request = sh("read x; echo \"$N $x\"")
                    .env("N", i.to_string())
                    .stdin(StdinMode::Pipe);
                let mut exec = client.exec(&request).await.unwrap();
                all_started.wait().await;
                exec.write_stdin(b"ok\n").await.unwrap();
                exec.close_stdin().await.unwrap();
                let mut stdout = Vec::new();
                let status = loop {
                    match exec.next().await.unwrap() {
                        ExecEvent::Stdout(chunk) => stdout.extend(chunk),
                        ExecEvent::Stderr(chunk) => {
                            panic!("stderr: {}", String::from_utf8_lossy(&chunk))
                        }
                        ExecEvent::Exited(status) => break status,
                    }
                };
                assert_eq!(
                    (status, stdout),
                    (ExitStatus::Code(0), format!("{i} ok\n").into_bytes())
                );
                client.health().await.unwrap();
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("connection finished in time")
            .unwrap();
    }
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        tokio version_mismatch_is_a_clear_error_on_both_sides,
        tokio health_reports_version_uptime_hostname_and_load,
        tokio ping_measures_round_trips_on_one_connection,
        tokio exec_streams_stdout_and_stderr_then_the_exit_code,
        tokio exec_output_arrives_while_the_command_still_runs,
        tokio a_command_that_ignores_its_stdin_pipe_exits_before_the_host_closes_it,
        tokio exec_uses_a_clean_environment_plus_the_requested_env_and_cwd,
        tokio exec_failures_are_clear_errors_and_the_connection_survives,
        tokio binary_output_and_input_round_trip_unchanged,
        tokio death_by_signal_is_reported,
        tokio client_disconnect_mid_exec_kills_the_whole_process_group,
        tokio client_vanishing_while_stdin_is_backed_up_still_kills_the_command,
        tokio agent_shutdown_kills_running_commands,
        tokio sync_flushes_and_answers,
        tokio malformed_frames_get_clear_errors_and_the_connection_goes_on,
        tokio oversized_frame_is_refused_without_allocating_and_the_agent_still_serves,
        tokio twenty_concurrent_connections_are_served,
    ]
}
