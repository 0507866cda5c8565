//! Commands on a terminal in the guest, end to end: the agent's pseudo-terminal (protocol 2)
//! driven by the host client against the real `banger-agent`; `vm.exec` with a tty through
//! the real bangerd and the fake firecracker (whose "guest" is the agent as a local process);
//! and the real CLI (`vm exec -t`, `vm run`'s shell) driven from a terminal these tests
//! allocate themselves — keystrokes in, screen out, the window resized, signals sent to banger
//! — and checked afterwards for the terminal modes banger must put back.
//!
//! The commands are `sh` scripts whose output proves what they saw: `test -t`, `stty size`,
//! traps for SIGWINCH, SIGINT and SIGTERM. Nothing sleeps to synchronise: every step waits for
//! the output that says the previous one happened, with a deadline that turns a hang into a
//! failure.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitStatus as ProcessStatus;
use std::time::Duration;

use banger::agent::protocol::{
    AgentMessage, ClientMessage, ErrorCode, ExecRequest, ExitStatus, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, read_frame, write_message,
};
use banger::agent::pty;
use banger::agent::{AgentClient, AgentError, Exec, ExecEvent};
use banger::api::{ExecStream, VmExecItem, VmExecResult};
use banger::rpc::{ErrorCode as RpcCode, StreamEvent};
use nix::sys::signal::Signal;
use nix::sys::termios::{InputFlags, LocalFlags, Termios, tcgetattr};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::net::UnixStream;

use super::agent::{AgentProcess, wait_gone};
use super::guest::Guest;
use super::support::rpc_error;

/// Bounds every wait, so that a bug shows up as a failure rather than a hung test.
const DEADLINE: Duration = Duration::from_secs(30);

const BANGER: &str = env!("CARGO_BIN_EXE_banger");

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

/// Reads a command's output until `needle` appears in it; returns everything read so far.
async fn read_until(exec: &mut Exec<'_, UnixStream>, seen: &mut Vec<u8>, needle: &str) -> String {
    let read = async {
        while !String::from_utf8_lossy(seen).contains(needle) {
            match exec.next().await.expect("the command's output") {
                ExecEvent::Stdout(chunk) => seen.extend_from_slice(&chunk),
                ExecEvent::Stderr(chunk) => panic!(
                    "a command on a tty has no separate stderr, got {:?}",
                    String::from_utf8_lossy(&chunk)
                ),
                ExecEvent::Exited(status) => panic!(
                    "exited ({status}) before printing {needle:?}: {:?}",
                    String::from_utf8_lossy(seen)
                ),
            }
        }
    };
    if tokio::time::timeout(DEADLINE, read).await.is_err() {
        panic!(
            "no {needle:?} within {DEADLINE:?}: {:?}",
            String::from_utf8_lossy(seen)
        );
    }
    String::from_utf8_lossy(seen).into_owned()
}

/// Reads the rest of a command's output and its exit status.
async fn read_to_exit(exec: &mut Exec<'_, UnixStream>, seen: &mut Vec<u8>) -> ExitStatus {
    let read = async {
        loop {
            match exec.next().await.expect("the command's output") {
                ExecEvent::Stdout(chunk) => seen.extend_from_slice(&chunk),
                ExecEvent::Stderr(chunk) => seen.extend_from_slice(&chunk),
                ExecEvent::Exited(status) => return status,
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the command did not end within {DEADLINE:?}: {:?}",
                String::from_utf8_lossy(seen)
            )
        })
}

/// The session and process group of a process, from /proc.
fn session_and_group(pid: u32) -> (i32, i32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process's stat");
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    (fields[3].parse().unwrap(), fields[2].parse().unwrap())
}

// ---- the agent ----------------------------------------------------------------------------------

async fn agent_runs_a_tty_command_as_a_session_leader_on_a_terminal_of_the_size_asked_for() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;
    let script = r#"
        [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo "on a tty: yes"
        echo "size: $(stty size)"
        echo "term: $TERM"
        set -- $(cat /proc/$$/stat)
        [ "$6" = "$$" ] && echo "session leader: yes"
        [ "$(cat /proc/$$/stat | cut -d' ' -f8)" = "$(cat /proc/$$/stat | cut -d' ' -f5)" ] &&
            echo "foreground: yes"
        tty
        echo err >&2
        exit 3
    "#;
    let request = sh(script).tty(37, 101, Some("xterm-banger-test"));
    let mut exec = client.exec(&request).await.unwrap();
    let mut seen = Vec::new();
    let status = read_to_exit(&mut exec, &mut seen).await;
    let text = String::from_utf8_lossy(&seen);
    assert_eq!(status, ExitStatus::Code(3), "{text}");
    for line in [
        "on a tty: yes\r\n",
        "size: 37 101\r\n",
        "term: xterm-banger-test\r\n",
        "session leader: yes\r\n",
        "foreground: yes\r\n",
        "/dev/pts/",
        // stderr is the terminal too: it comes back on the one stream, in order.
        "err\r\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from {text:?}");
    }
    assert!(!text.contains("not a tty"), "{text}");

    // The connection serves the next request, on pipes again.
    let output = client
        .exec_collect(&sh("[ -t 1 ] || echo pipes"), None)
        .await
        .unwrap();
    assert_eq!(output.stdout, b"pipes\n");
}

async fn agent_resizes_the_terminal_and_passes_signals_to_its_foreground_group() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;
    let script = r#"
        trap 'echo "winch $(stty size)"' WINCH
        trap 'echo got-int; exit 42' INT
        echo ready
        while :; do sleep 0.05; done
    "#;
    let mut exec = client.exec(&sh(script).tty(24, 80, None)).await.unwrap();
    let mut seen = Vec::new();
    read_until(&mut exec, &mut seen, "ready").await;
    exec.resize(50, 132).await.unwrap();
    read_until(&mut exec, &mut seen, "winch 50 132").await;
    exec.resize(10, 20).await.unwrap();
    read_until(&mut exec, &mut seen, "winch 10 20").await;
    // The shell's foreground job (a `sleep`) shares its group: the signal reaches both, and
    // the shell's trap runs.
    exec.signal(Signal::SIGINT).await.unwrap();
    let status = read_to_exit(&mut exec, &mut seen).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("got-int"), "{text}");
    assert_eq!(status, ExitStatus::Code(42), "{text}");

    // A resize on pipes breaks the protocol: the command is killed and the error says why.
    let mut exec = client.exec(&sh("sleep 1000")).await.unwrap();
    let pid = exec.pid();
    exec.resize(24, 80).await.unwrap();
    match exec.next().await {
        Err(AgentError::Remote(body)) => {
            assert_eq!(body.code, ErrorCode::Unexpected, "{body:?}");
            assert!(body.message.contains("resize only with a tty"), "{body:?}");
        }
        other => panic!("expected the agent to refuse a resize on pipes, got {other:?}"),
    }
    wait_gone(pid).await;
}

async fn agent_tty_input_is_echoed_edited_and_turned_into_signals_and_end_of_file() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;

    // What a user types: a line with a typo erased by backspace (the terminal edits it),
    // ended by Enter (\r, which the terminal turns into \n).
    let mut exec = client
        .exec(&sh("read -r line; echo \"got:$line\"").tty(24, 80, None))
        .await
        .unwrap();
    exec.write_stdin(b"hellx\x7fo\r").await.unwrap();
    let mut seen = Vec::new();
    let status = read_to_exit(&mut exec, &mut seen).await;
    let text = String::from_utf8_lossy(&seen);
    assert_eq!(status, ExitStatus::Code(0), "{text}");
    assert!(text.contains("got:hello\r\n"), "{text:?}");
    assert!(text.starts_with("hellx"), "the terminal echoes: {text:?}");
    exec.close_stdin().await.unwrap();

    // ^C typed on the terminal interrupts the program, as it would on a console.
    let mut exec = client
        .exec(&ExecRequest::new(["sleep", "1000"]).tty(24, 80, None))
        .await
        .unwrap();
    exec.write_stdin(b"\x03").await.unwrap();
    let mut seen = Vec::new();
    assert_eq!(
        read_to_exit(&mut exec, &mut seen).await,
        ExitStatus::Signal(2)
    );
    exec.close_stdin().await.unwrap();

    // stdin_close types ^D: cat reads what was typed, then end of file.
    let mut exec = client
        .exec(&ExecRequest::new(["cat"]).tty(24, 80, None))
        .await
        .unwrap();
    exec.write_stdin(b"abc\r").await.unwrap();
    exec.close_stdin().await.unwrap();
    let mut seen = Vec::new();
    let status = read_to_exit(&mut exec, &mut seen).await;
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(String::from_utf8_lossy(&seen), "abc\r\nabc\r\n");

    // Input, resizes and signals that cross the command's end are dropped without an
    // answer: the connection's next request gets its own answer, not an error.
    let mut exec = client
        .exec(&ExecRequest::new(["true"]).tty(24, 80, None))
        .await
        .unwrap();
    let mut seen = Vec::new();
    assert_eq!(
        read_to_exit(&mut exec, &mut seen).await,
        ExitStatus::Code(0)
    );
    let (mut input, _) = exec.split();
    input.write(b"late").await.unwrap();
    input.resize(30, 30).await.unwrap();
    input.signal(Signal::SIGTERM).await.unwrap();
    input.close().await.unwrap();
    client.ping().await.expect("the next request is answered");
}

async fn agent_tty_exec_ends_with_its_command_and_forwards_all_it_wrote() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;
    // Far more than the terminal buffers, written right before the exit: all of it arrives
    // before `exited`.
    let script = r#"i=0; while [ $i -lt 3000 ]; do echo "line $i"; i=$((i+1)); done; exit 3"#;
    let mut exec = client.exec(&sh(script).tty(24, 80, None)).await.unwrap();
    let mut seen = Vec::new();
    let status = read_to_exit(&mut exec, &mut seen).await;
    assert_eq!(status, ExitStatus::Code(3));
    let text = String::from_utf8_lossy(&seen);
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines.len(),
        3000,
        "{}",
        &text[text.len().saturating_sub(200)..]
    );
    assert_eq!(lines[2999], "line 2999");
    exec.close_stdin().await.unwrap();

    // A background process holding the terminal does not hold up the end (unlike pipes, as
    // with ssh -t), and the terminal's hangup ends it: it was in the foreground group.
    let mut exec = client
        .exec(&sh("sleep 1000 & echo \"bg $!\"; exit 7").tty(24, 80, None))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let status = read_to_exit(&mut exec, &mut seen).await;
    assert_eq!(status, ExitStatus::Code(7));
    let text = String::from_utf8_lossy(&seen);
    let background: u32 = text
        .trim()
        .strip_prefix("bg ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{text:?}"));
    wait_gone(background).await;
    exec.close_stdin().await.unwrap();

    // Nor does one that never stops printing (what is forwarded after the exit is bounded by
    // MAX_TTY_DRAIN_BYTES), and the hangup ends it too.
    let mut exec = client
        .exec(&sh("(while :; do echo spam; done) & echo \"bg $!\"; exit 9").tty(24, 80, None))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let status = read_to_exit(&mut exec, &mut seen).await;
    assert_eq!(status, ExitStatus::Code(9));
    let text = String::from_utf8_lossy(&seen);
    let background: u32 = text
        .split("bg ")
        .nth(1)
        .and_then(|rest| rest.split("\r\n").next())
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("{:?}", &text[..text.len().min(300)]));
    wait_gone(background).await;
    exec.close_stdin().await.unwrap();
    client
        .ping()
        .await
        .expect("the connection serves the next request");
}

async fn agent_kills_every_process_of_a_tty_session_when_its_client_goes() {
    let agent = AgentProcess::start().await;
    let mut client = agent.client().await;
    // With job control (set -m) the background job has a process group of its own, which
    // killing the command's group would miss; it is still in the session.
    let script = r#"set -m; sleep 1000 & echo "bg $!"; sleep 1000"#;
    let mut exec = client.exec(&sh(script).tty(24, 80, None)).await.unwrap();
    let shell = exec.pid();
    let mut seen = Vec::new();
    let text = read_until(&mut exec, &mut seen, "\r\n").await;
    let background: u32 = text
        .trim()
        .strip_prefix("bg ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{text:?}"));
    let (session, group) = session_and_group(background);
    assert_eq!(session, shell as i32, "the job is in the command's session");
    assert_ne!(group, shell as i32, "and in a process group of its own");
    // Dropping the client closes the connection (the exec only borrowed it).
    drop(client);
    wait_gone(shell).await;
    wait_gone(background).await;
}

async fn agent_serves_protocol_1_clients_and_a_tty_needs_protocol_2() {
    let agent = AgentProcess::start().await;
    // An older host: served in its own version, with everything version 1 had.
    let mut old = AgentClient::handshake_as(agent.connect().await, "bangerd 0.0.1", 1)
        .await
        .expect("a protocol 1 client is served");
    assert_eq!(old.agent().protocol, MIN_PROTOCOL_VERSION);
    let output = old.exec_collect(&sh("echo old"), None).await.unwrap();
    assert_eq!(output.stdout, b"old\n");
    // The client does not ask a protocol 1 connection for a tty (an agent of version 1
    // would run the command on pipes without a word).
    match old.exec(&sh("true").tty(24, 80, None)).await {
        Err(AgentError::VersionMismatch { detail, .. }) => {
            assert!(detail.contains("needs protocol 2"), "{detail}")
        }
        Err(other) => panic!("expected a version mismatch, got {other}"),
        Ok(_) => panic!("expected a version mismatch, got a running command"),
    }
    old.ping().await.unwrap();

    // On the wire: the hello is answered in the client's version.
    let mut raw = agent.connect().await;
    write_message(
        &mut raw,
        &ClientMessage::Hello {
            protocol: 1,
            client: "raw".into(),
        },
    )
    .await
    .unwrap();
    let frame = tokio::time::timeout(DEADLINE, read_frame(&mut raw))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let hello: AgentMessage = serde_json::from_slice(&frame.payload).unwrap();
    assert!(
        matches!(hello, AgentMessage::Hello { protocol: 1, .. }),
        "{hello:?}"
    );
    let newest = agent.client().await;
    assert_eq!(newest.agent().protocol, PROTOCOL_VERSION);
}

// ---- bangerd ------------------------------------------------------------------------------------

/// Reads a `vm.exec` stream until `needle` is in its output.
async fn stream_until(stream: &mut banger::rpc::Stream, seen: &mut Vec<u8>, needle: &str) {
    let read = async {
        while !String::from_utf8_lossy(seen).contains(needle) {
            match stream.next::<VmExecItem>().await.expect("the stream") {
                StreamEvent::Item(item) => {
                    assert_eq!(item.stream, ExecStream::Stdout, "a tty has one stream");
                    seen.extend_from_slice(&item.data);
                }
                StreamEvent::End(end) => panic!(
                    "ended ({end}) before {needle:?}: {:?}",
                    String::from_utf8_lossy(seen)
                ),
            }
        }
    };
    if tokio::time::timeout(DEADLINE, read).await.is_err() {
        panic!("no {needle:?}: {:?}", String::from_utf8_lossy(seen));
    }
}

async fn stream_result(stream: &mut banger::rpc::Stream, seen: &mut Vec<u8>) -> VmExecResult {
    let read = async {
        loop {
            match stream.next::<VmExecItem>().await.expect("the stream") {
                StreamEvent::Item(item) => seen.extend_from_slice(&item.data),
                StreamEvent::End(end) => return serde_json::from_value(end).expect("a result"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the command ends in time")
}

async fn vm_exec_with_a_tty_carries_input_resizes_and_signals_through_bangerd() {
    let guest = Guest::start().await;
    let script = r#"
        trap 'echo "winch $(stty size)"' WINCH
        trap 'echo got-int; exit 42' INT
        [ -t 0 ] && [ -t 1 ] && echo "tty: $(stty size) $TERM"
        read -r line; echo "read:$line"
        echo ready
        while :; do sleep 0.05; done
    "#;
    let mut stream = guest
        .stream(
            "vm.exec",
            json!({"name": "dev", "argv": ["sh", "-c", script],
                   "tty": {"rows": 30, "cols": 90, "term": "xterm-banger-test"}}),
        )
        .await;
    let mut input = stream.take_input().expect("the input side");
    let mut seen = Vec::new();
    stream_until(&mut stream, &mut seen, "tty: 30 90 xterm-banger-test").await;
    input.send(&json!({"data": "aGVsbG8N"})).await.unwrap(); // "hello\r"
    stream_until(&mut stream, &mut seen, "read:hello\r\n").await;
    stream_until(&mut stream, &mut seen, "ready").await;
    input
        .send(&json!({"resize": {"rows": 40, "cols": 100}}))
        .await
        .unwrap();
    stream_until(&mut stream, &mut seen, "winch 40 100").await;
    input.send(&json!({"signal": 2})).await.unwrap();
    let result = stream_result(&mut stream, &mut seen).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("got-int"), "{text}");
    assert_eq!(result.exit_code, Some(42), "{text}");

    // Signals go to commands on pipes too, even after their stdin ended.
    let mut stream = guest
        .stream(
            "vm.exec",
            json!({"name": "dev", "argv": ["sh", "-c", "echo up; exec sleep 1000"], "stdin": true}),
        )
        .await;
    let mut input = stream.take_input().unwrap();
    input.send(&json!({"eof": true})).await.unwrap();
    let mut seen = Vec::new();
    stream_until(&mut stream, &mut seen, "up").await;
    input.send(&json!({"signal": 15})).await.unwrap();
    let result = stream_result(&mut stream, &mut seen).await;
    assert_eq!(result.signal, Some(15), "{result:?}");

    // A resize for a command on pipes, a bad signal number and stdin after its end are
    // refused, and the command with them.
    for (params, line, says) in [
        (
            json!({"name": "dev", "argv": ["sleep", "1000"], "stdin": true}),
            json!({"resize": {"rows": 1, "cols": 1}}),
            "needs an exec with a tty",
        ),
        (
            json!({"name": "dev", "argv": ["sleep", "1000"], "tty": {"rows": 1, "cols": 1}}),
            json!({"signal": 4242}),
            "not a signal number",
        ),
        (
            json!({"name": "dev", "argv": ["sleep", "1000"], "stdin": true}),
            json!({"eof": true, "data": "aGkK"}),
            "",
        ),
    ] {
        let mut stream = guest.stream("vm.exec", params).await;
        let mut input = stream.take_input().unwrap();
        input.send(&line).await.unwrap();
        if says.is_empty() {
            // eof with data is fine; data after it is not.
            input.send(&json!({"data": "aGkK"})).await.unwrap();
        }
        let error = rpc_error(
            tokio::time::timeout(DEADLINE, stream.next::<VmExecItem>())
                .await
                .expect("an answer in time")
                .map(|_| ()),
        );
        assert_eq!(error.code, RpcCode::InvalidArgument, "{error}");
        let says = if says.is_empty() {
            "after its eof"
        } else {
            says
        };
        assert!(error.message.contains(says), "{error}");
    }
}

// ---- the CLI on a terminal ----------------------------------------------------------------------

/// `banger ARGS` on a terminal this test owns: the CLI leads a session whose controlling
/// terminal is the slave of a pseudo-terminal, as in a terminal emulator; the test types on
/// the master and reads the screen from it.
pub(crate) struct Screen {
    pub(crate) master: pty::Master,
    slave: std::os::fd::OwnedFd,
    child: tokio::process::Child,
    /// The slave's modes before banger ran: what it must leave behind.
    cooked: Termios,
    seen: Vec<u8>,
}

impl Screen {
    /// Runs `banger ARGS` against the bangerd of `root` (never starting one).
    pub(crate) fn spawn(root: &Path, args: &[&str], rows: u16, cols: u16) -> Screen {
        let pty::PtyPair { master, slave } = pty::open(rows, cols).expect("a pseudo-terminal");
        let cooked = tcgetattr(&slave).expect("the terminal's modes");
        let stdio = || std::process::Stdio::from(slave.try_clone().expect("dup the slave"));
        let mut command = tokio::process::Command::new(BANGER);
        command
            .args(args)
            .env("BANGER_ROOT", root)
            .env("BANGER_NO_AUTOSTART", "1")
            .env("TERM", "xterm-banger-test")
            // Outside any git checkout, so that `vm run` imports no workspace.
            .current_dir(root)
            .stdin(stdio())
            .stdout(stdio())
            .stderr(stdio())
            .kill_on_drop(true);
        // SAFETY: become_session_leader only makes async-signal-safe calls.
        unsafe {
            command.pre_exec(pty::become_session_leader);
        }
        let child = command.spawn().expect("run banger");
        Screen {
            master,
            slave,
            child,
            cooked,
            seen: Vec::new(),
        }
    }

    pub(crate) fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id().expect("banger runs") as i32)
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Reads the screen until `needle` is on it (after what was already matched).
    pub(crate) async fn wait_for(&mut self, needle: &str) {
        let mut buf = [0u8; 4096];
        let read = async {
            while !self.text().contains(needle) {
                let n = self.master.read(&mut buf).await.expect("read the screen");
                assert!(n > 0, "the terminal closed");
                self.seen.extend_from_slice(&buf[..n]);
            }
        };
        if tokio::time::timeout(DEADLINE, read).await.is_err() {
            panic!("no {needle:?} on the screen: {:?}", self.text());
        }
    }

    pub(crate) async fn type_keys(&self, keys: &[u8]) {
        let mut written = 0;
        while written < keys.len() {
            written += self.master.write(&keys[written..]).await.expect("type");
        }
    }

    /// The terminal's modes now, as banger left them (or set them).
    pub(crate) fn modes(&self) -> Termios {
        tcgetattr(&self.slave).expect("the terminal's modes")
    }

    /// Waits for banger to exit and reads what is left on the screen.
    pub(crate) async fn exit(&mut self) -> ProcessStatus {
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("banger did not exit: {:?}", self.text()))
            .expect("wait for banger");
        let mut buf = [0u8; 4096];
        while let Ok(Some(n)) = self.master.read_now(&mut buf) {
            if n == 0 {
                break;
            }
            self.seen.extend_from_slice(&buf[..n]);
        }
        status
    }

    /// Checks that banger put the terminal's modes back as it found them.
    pub(crate) fn assert_modes_restored(&self) {
        let now = self.modes();
        assert_eq!(
            (
                now.input_flags,
                now.output_flags,
                now.local_flags,
                now.control_flags,
                now.control_chars
            ),
            (
                self.cooked.input_flags,
                self.cooked.output_flags,
                self.cooked.local_flags,
                self.cooked.control_flags,
                self.cooked.control_chars
            ),
            "banger left the terminal's modes changed: {:?}",
            self.text()
        );
    }
}

pub(crate) fn is_raw(modes: &Termios) -> bool {
    !modes.local_flags.contains(LocalFlags::ICANON)
        && !modes.local_flags.contains(LocalFlags::ECHO)
        && !modes.local_flags.contains(LocalFlags::ISIG)
        && !modes.input_flags.contains(InputFlags::ICRNL)
}

async fn cli_vm_exec_t_runs_on_a_terminal_that_follows_this_one() {
    let guest = Guest::start().await;
    let script = r#"
        trap 'echo "winch $(stty size)"' WINCH
        echo "tty: $(stty size) $TERM"
        echo ready
        while :; do sleep 0.05; done
    "#;
    let mut screen = Screen::spawn(
        guest.daemon.root().path(),
        &["vm", "exec", "-t", "dev", "--", "sh", "-c", script],
        24,
        80,
    );
    screen.wait_for("tty: 24 80 xterm-banger-test").await;
    screen.wait_for("ready").await;
    assert!(is_raw(&screen.modes()), "the terminal is raw while it runs");
    // The window changes: banger gets SIGWINCH and tells the guest.
    pty::set_size(screen.master.as_fd(), 33, 99).unwrap();
    screen.wait_for("winch 33 99").await;
    // ^C is a key for the guest's terminal (banger is raw): it interrupts the program there.
    screen.type_keys(b"\x03").await;
    let status = screen.exit().await;
    assert_eq!(status.code(), Some(130), "{:?}", screen.text());
    screen.assert_modes_restored();

    // SIGTERM sent to banger goes to the program, whose trap decides the status.
    let script = r#"trap 'echo got-term; exit 43' TERM; echo ready; while :; do sleep 0.05; done"#;
    let mut screen = Screen::spawn(
        guest.daemon.root().path(),
        &["vm", "exec", "-t", "dev", "--", "sh", "-c", script],
        24,
        80,
    );
    screen.wait_for("ready").await;
    nix::sys::signal::kill(screen.pid(), Signal::SIGTERM).unwrap();
    screen.wait_for("got-term").await;
    let status = screen.exit().await;
    assert_eq!(status.code(), Some(43), "{:?}", screen.text());
    screen.assert_modes_restored();

    // A program that outlives SIGTERM: the second one ends banger (128 + 15), and the
    // command with its connection.
    let script = r#"trap 'echo got-term' TERM; echo "pid $$"; while :; do sleep 0.05; done"#;
    let mut screen = Screen::spawn(
        guest.daemon.root().path(),
        &["vm", "exec", "-t", "dev", "--", "sh", "-c", script],
        24,
        80,
    );
    screen.wait_for("pid ").await;
    screen.wait_for("\r\n").await;
    let text = screen.text();
    let shell: u32 = text
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split("\r\n").next())
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text:?}"));
    nix::sys::signal::kill(screen.pid(), Signal::SIGTERM).unwrap();
    screen.wait_for("got-term").await;
    nix::sys::signal::kill(screen.pid(), Signal::SIGTERM).unwrap();
    let status = screen.exit().await;
    assert_eq!(status.code(), Some(143), "{:?}", screen.text());
    screen.assert_modes_restored();
    wait_gone(shell).await;
}

async fn cli_vm_exec_t_without_a_terminal_warns_like_ssh_and_tt_forces_one() {
    let guest = Guest::start().await;
    let run = |args: &[&str], input: &[u8]| {
        use std::io::Write;
        let mut child = std::process::Command::new(BANGER)
            .args(args)
            .env("BANGER_ROOT", guest.daemon.root().path())
            .env("BANGER_NO_AUTOSTART", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run banger");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().expect("banger's output")
    };
    let check = "if [ -t 0 ]; then echo tty; else echo pipes; fi; cat";
    let out = run(
        &["vm", "exec", "-t", "dev", "--", "sh", "-c", check],
        b"hi\n",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pipes\nhi\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stdin is not a terminal"),
        "{out:?}"
    );
    // -tt: a terminal in the guest anyway; the end of the input is a ^D typed there. The
    // terminal echoes the input whenever it arrives, maybe before `tty` is printed.
    let out = run(
        &["vm", "exec", "-tt", "dev", "--", "sh", "-c", check],
        b"hi\n",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<&str> = stdout.split_terminator("\r\n").collect();
    lines.sort_unstable();
    assert_eq!(lines, ["hi", "hi", "tty"], "{stdout:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

async fn cli_vm_run_opens_a_login_shell_on_a_terminal_and_rm_deletes_the_vm() {
    let guest = Guest::start().await;
    let mut screen = Screen::spawn(
        guest.daemon.root().path(),
        &[
            "vm",
            "run",
            "--image",
            "img",
            "--name",
            "shell",
            "--memory",
            "128M",
            "--work-disk",
            "64M",
            "--rm",
        ],
        40,
        120,
    );
    // The stages, each with how long it took, then the shell.
    for stage in [
        "created ",
        "booted ",
        "agent ready ",
        "shell is running",
        "login shell in shell",
    ] {
        screen.wait_for(stage).await;
    }
    let text = screen.text();
    let agent_ready = text
        .split("agent ready")
        .nth(1)
        .unwrap()
        .split("\r\n")
        .next();
    assert!(
        agent_ready.is_some_and(|took| took.trim().ends_with(" s")),
        "how long it took: {text:?}"
    );
    // Commands go to the guest user's login shell (this machine's root: bash here), on a
    // terminal the size of this one. HISTFILE off: the "guest" is this machine.
    screen
        .type_keys(b"unset HISTFILE; echo \"M-$((6*7)) $SHELL $(stty size)\"\r")
        .await;
    screen.wait_for("M-42 ").await;
    screen.wait_for("\r\n").await;
    let text = screen.text();
    let answer = text
        .split("M-42 ")
        .last()
        .unwrap()
        .split("\r\n")
        .next()
        .unwrap();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let login = passwd
        .lines()
        .find(|line| line.starts_with("root:"))
        .and_then(|line| line.rsplit(':').next())
        .unwrap();
    assert_eq!(answer, format!("{login} 40 120"), "{text:?}");
    assert!(
        is_raw(&screen.modes()),
        "the terminal is raw while the shell runs"
    );
    screen.type_keys(b"exit 3\r").await;
    let status = screen.exit().await;
    assert_eq!(status.code(), Some(3), "{:?}", screen.text());
    screen.assert_modes_restored();
    screen.wait_for("deleted shell").await;
    let error = rpc_error(
        guest
            .client()
            .await
            .call::<_, Value>("vm.show", &json!({"name": "shell"}))
            .await,
    );
    assert_eq!(error.code, RpcCode::NotFound, "the VM is gone: {error}");
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        tokio agent_runs_a_tty_command_as_a_session_leader_on_a_terminal_of_the_size_asked_for,
        tokio agent_resizes_the_terminal_and_passes_signals_to_its_foreground_group,
        tokio agent_tty_input_is_echoed_edited_and_turned_into_signals_and_end_of_file,
        tokio agent_tty_exec_ends_with_its_command_and_forwards_all_it_wrote,
        tokio agent_kills_every_process_of_a_tty_session_when_its_client_goes,
        tokio agent_serves_protocol_1_clients_and_a_tty_needs_protocol_2,
        tokio vm_exec_with_a_tty_carries_input_resizes_and_signals_through_bangerd needs(Root),
        tokio cli_vm_exec_t_runs_on_a_terminal_that_follows_this_one needs(Root),
        tokio cli_vm_exec_t_without_a_terminal_warns_like_ssh_and_tt_forces_one needs(Root),
        tokio cli_vm_run_opens_a_login_shell_on_a_terminal_and_rm_deletes_the_vm needs(Root),
    ]
}
