//! Reaching into a running VM through the real bangerd: `vm.exec`, `vm.logs`, `vm.health`
//! and `vm.ping` over RPC, and `banger vm exec/logs/ping/health` through the real CLI.
//!
//! Each test starts its own bangerd on its own `BANGER_ROOT`, with the project's fake
//! firecracker as the VMM (`BANGER_FIRECRACKER`) and the real `banger-agent` as the guest agent
//! (`BANGER_FAKE_AGENT`), registers a kernel and an image, and creates its VM with `vm.create`
//! like a user would. The fake "boots" by running the agent as a local process, so a guest pid
//! is a host pid, which lets a test check that a command really died.
//!
//! Nothing sleeps to synchronise: readiness is `vm.create` returning (it waits for the agent),
//! streams are read until the expected bytes arrive, and "gone" is polled with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use banger::api::{
    ExecStream, VmExecItem, VmExecResult, VmHealthResult, VmLogsEnd, VmLogsItem, VmPingResult,
};
use banger::rpc::{Client, ErrorCode, Stream, StreamEvent};
use serde_json::{Value, json};

use super::support::{Bangerd, kernel_source, rootfs_file, rpc_error};

/// Bounds every wait, so that a bug shows up as a failure rather than a hung test.
const DEADLINE: Duration = Duration::from_secs(30);

const BANGER: &str = env!("CARGO_BIN_EXE_banger");

/// The fake firecracker, built (once per test process) beside this test binary.
fn fake_firecracker() -> &'static Path {
    super::firecracker::fake_binary()
}

/// A bangerd with a running VM called `dev`.
pub(crate) struct Guest {
    pub(crate) daemon: Bangerd,
}

impl Guest {
    /// Needs root (a test network for the VM's tap): the tests are in the harness's root tier.
    pub(crate) async fn start() -> Guest {
        Guest::start_with(&[]).await
    }

    /// [`Guest::start`] with more environment for bangerd (and so for the fake firecracker).
    pub(crate) async fn start_with(env: &[(&str, &str)]) -> Guest {
        let fake = fake_firecracker().to_string_lossy().into_owned();
        let mut all = vec![
            ("BANGER_FIRECRACKER", fake.as_str()),
            ("BANGER_FAKE_AGENT", env!("CARGO_BIN_EXE_banger-agent")),
        ];
        all.extend_from_slice(env);
        let daemon = Bangerd::start_with(&all);
        let guest = Guest { daemon };
        let scratch = guest.daemon.root().scratch("inputs");
        let kernel_dir = kernel_source(&scratch.join("kernel"), "6.1.0-test", false);
        let rootfs = rootfs_file(&scratch.join("rootfs.ext4"), 64 << 20);
        let mut client = guest.client().await;
        let _: Value = client
            .call(
                "kernel.import",
                &json!({"name": "k1", "from": kernel_dir.to_string_lossy()}),
            )
            .await
            .expect("kernel.import");
        let _: Value = client
            .call(
                "image.register",
                &json!({"name": "img", "rootfs": rootfs.to_string_lossy(), "kernel": "k1"}),
            )
            .await
            .expect("image.register");
        guest.create("dev").await;
        guest
    }

    pub(crate) async fn client(&self) -> Client {
        self.daemon.client().await
    }

    /// Creates a VM and waits until its agent answers (what `vm.create` promises).
    async fn create(&self, name: &str) {
        let created: Result<Value, _> = self
            .client()
            .await
            .call(
                "vm.create",
                &json!({"name": name, "image": "img", "vcpus": 1, "memory_mib": 128, "work_disk_mib": 64}),
            )
            .await;
        if let Err(error) = created {
            panic!(
                "vm.create {name} failed: {error}\nbangerd said:\n{}",
                self.daemon.output()
            );
        }
    }

    pub(crate) async fn call(&self, method: &str, params: Value) -> Value {
        let result: Result<Value, _> = self.client().await.call(method, &params).await;
        result.unwrap_or_else(|error| {
            panic!(
                "{method} failed: {error}\nbangerd said:\n{}",
                self.daemon.output()
            )
        })
    }

    pub(crate) async fn stream(&self, method: &str, params: Value) -> Stream {
        self.client()
            .await
            .stream(method, &params)
            .await
            .expect("start the stream")
    }

    /// Runs `banger ARGS` against this daemon (never starting another one).
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        Command::new(BANGER)
            .args(args)
            .env("BANGER_ROOT", self.daemon.root().path())
            // Outside any git checkout: `vm run` would import it (under the fake, to the
            // host's /work).
            .current_dir(self.daemon.root().path())
            .env("BANGER_NO_AUTOSTART", "1")
            .output()
            .expect("run banger")
    }

    fn console_log(&self) -> PathBuf {
        let vms = self.daemon.layout().vms_dir();
        let dirs = std::fs::read_dir(&vms).expect("the VMs directory");
        let dir = dirs
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.join("console.log").exists())
            .expect("a VM directory with a console log");
        dir.join("console.log")
    }
}

/// Everything an exec stream sent: stdout, stderr, the result.
struct Ran {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    result: VmExecResult,
}

async fn exec(guest: &Guest, params: Value) -> Ran {
    let mut stream = guest.stream("vm.exec", params).await;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let read = async {
        loop {
            match stream.next::<VmExecItem>().await.expect("read the stream") {
                StreamEvent::Item(item) => match item.stream {
                    ExecStream::Stdout => stdout.extend_from_slice(&item.data),
                    ExecStream::Stderr => stderr.extend_from_slice(&item.data),
                },
                StreamEvent::End(end) => {
                    return serde_json::from_value::<VmExecResult>(end).expect("an exec result");
                }
            }
        }
    };
    let result = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the command ends in time");
    Ran {
        stdout,
        stderr,
        result,
    }
}

async fn exec_streams_stdout_and_stderr_apart_and_returns_the_status() {
    let guest = Guest::start().await;
    let ran = exec(
        &guest,
        json!({"name": "dev", "argv": ["sh", "-c", "echo out; echo err >&2; exit 7"]}),
    )
    .await;
    assert_eq!(ran.stdout, b"out\n");
    assert_eq!(ran.stderr, b"err\n");
    assert_eq!(ran.result.exit_code, Some(7));
    assert_eq!(ran.result.signal, None);
    assert_eq!(ran.result.shell_code(), 7);

    // Environment and working directory are the caller's to choose.
    let ran = exec(
        &guest,
        json!({"name": "dev", "argv": ["sh", "-c", "echo \"$GREETING\"; pwd"],
               "env": {"GREETING": "hello there"}, "cwd": "/tmp"}),
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "hello there\n/tmp\n");
    assert_eq!(ran.result.exit_code, Some(0));

    // A command killed by a signal reports the signal, and a shell's 128 + N.
    let ran = exec(
        &guest,
        json!({"name": "dev", "argv": ["sh", "-c", "kill -KILL $$"]}),
    )
    .await;
    assert_eq!(ran.result.signal, Some(9));
    assert_eq!(ran.result.shell_code(), 137);

    // Binary output survives the JSON wire byte for byte.
    let ran = exec(
        &guest,
        json!({"name": "dev", "argv": ["printf", "\\000\\377\\n"]}),
    )
    .await;
    assert_eq!(ran.stdout, [0u8, 255, b'\n']);
}

async fn exec_refuses_unknown_vms_bad_requests_and_stopped_vms() {
    let guest = Guest::start().await;
    let mut client = guest.client().await;

    let error = rpc_error(
        client
            .call::<_, Value>("vm.exec", &json!({"name": "ghost", "argv": ["true"]}))
            .await,
    );
    assert_eq!(error.code, ErrorCode::NotFound, "{error}");

    let error = rpc_error(
        client
            .call::<_, Value>("vm.exec", &json!({"name": "dev", "argv": []}))
            .await,
    );
    assert_eq!(error.code, ErrorCode::InvalidArgument, "{error}");

    let error = rpc_error(
        client
            .call::<_, Value>(
                "vm.exec",
                &json!({"name": "dev", "argv": ["true"], "cwd": "relative"}),
            )
            .await,
    );
    assert_eq!(error.code, ErrorCode::InvalidArgument, "{error}");

    guest.call("vm.stop", json!({"name": "dev"})).await;
    let error = rpc_error(
        client
            .call::<_, Value>("vm.exec", &json!({"name": "dev", "argv": ["true"]}))
            .await,
    );
    assert_eq!(error.code, ErrorCode::NotRunning, "{error}");
    assert!(
        error.message.contains("banger vm start dev"),
        "the error says what to do: {error}"
    );
    for method in ["vm.ping", "vm.health"] {
        let error = rpc_error(
            client
                .call::<_, Value>(method, &json!({"name": "dev"}))
                .await,
        );
        assert_eq!(error.code, ErrorCode::NotRunning, "{method}: {error}");
    }

    // The CLI says the same, on one line, and fails.
    let run = guest.cli(&["vm", "exec", "dev", "--", "true"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[not_running]") && stderr.contains("banger vm start dev"),
        "{stderr}"
    );
}

async fn a_client_that_hangs_up_kills_its_command() {
    let guest = Guest::start().await;
    let mut stream = guest
        .stream(
            "vm.exec",
            json!({"name": "dev", "argv": ["sh", "-c", "echo $$; exec sleep 1000"]}),
        )
        .await;
    // Under the fake firecracker the guest is a local process: its pid is a host pid.
    let first = tokio::time::timeout(DEADLINE, stream.next::<VmExecItem>())
        .await
        .expect("output in time")
        .expect("read the stream");
    let StreamEvent::Item(item) = first else {
        panic!("the command ended before printing its pid");
    };
    let pid: u32 = String::from_utf8_lossy(&item.data)
        .trim()
        .parse()
        .expect("a pid");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(stream);
    let deadline = Instant::now() + DEADLINE;
    // A zombie still has a /proc entry; its state letter says it is dead.
    while is_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the command (pid {pid}) outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Reads a console stream until `until` appears in what it sent, or it ends.
async fn read_console(stream: &mut Stream, text: &mut String, until: &str) -> Option<VmLogsEnd> {
    let read = async {
        loop {
            match stream.next::<VmLogsItem>().await.expect("read the console") {
                StreamEvent::Item(item) => {
                    text.push_str(&String::from_utf8_lossy(&item.data));
                    if text.contains(until) {
                        return None;
                    }
                }
                StreamEvent::End(end) => {
                    return Some(serde_json::from_value::<VmLogsEnd>(end).expect("a logs end"));
                }
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("{until:?} never appeared on the console; got:\n{text}"))
}

async fn logs_show_the_console_and_follow_what_is_appended() {
    let guest = Guest::start().await;

    // Without follow: the file as it is, then the end.
    let mut stream = guest
        .stream("vm.logs", json!({"name": "dev", "follow": false}))
        .await;
    let mut text = String::new();
    let end = read_console(&mut stream, &mut text, "\u{0}never\u{0}").await;
    let end = end.expect("a finite stream ends");
    assert!(text.contains("Linux version"), "boot lines:\n{text}");
    assert_eq!(end.offset, text.len() as u64);
    assert!(!end.deleted);

    // The tail only.
    let mut stream = guest
        .stream(
            "vm.logs",
            json!({"name": "dev", "follow": false, "tail_bytes": 10}),
        )
        .await;
    let mut tail = String::new();
    read_console(&mut stream, &mut tail, "\u{0}never\u{0}").await;
    assert_eq!(tail.len(), 10, "{tail:?}");
    // The console only grows (the agent may have logged since), so the tail is in it.
    let console = std::fs::read(guest.console_log()).expect("read the console log");
    assert!(
        String::from_utf8_lossy(&console).contains(&tail),
        "{tail:?} is not in the console"
    );

    // Following: what the console prints later arrives on the open stream. Stopping the VM
    // makes the guest print its shutdown lines.
    let mut follow = guest
        .stream("vm.logs", json!({"name": "dev", "follow": true}))
        .await;
    let mut followed = String::new();
    read_console(&mut follow, &mut followed, "Linux version").await;
    guest.call("vm.stop", json!({"name": "dev"})).await;
    let end = read_console(&mut follow, &mut followed, "reboot: Restarting system").await;
    assert!(end.is_none(), "the stream is still open after the stop");

    // Bytes appended to the file by anyone arrive too (the console is a plain file).
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(guest.console_log())
            .expect("open the console log");
        writeln!(file, "a line appended by the test").expect("append");
    }
    read_console(&mut follow, &mut followed, "a line appended by the test").await;

    // Deleting the VM ends the follower's stream.
    guest.call("vm.delete", json!({"name": "dev"})).await;
    let end = read_console(&mut follow, &mut followed, "\u{0}never\u{0}")
        .await
        .expect("the stream ends when the VM is deleted");
    assert!(end.deleted, "{end:?}");

    let error = rpc_error(
        guest
            .client()
            .await
            .call::<_, Value>("vm.logs", &json!({"name": "dev"}))
            .await,
    );
    assert_eq!(error.code, ErrorCode::NotFound, "{error}");
}

async fn health_and_ping_report_a_round_trip() {
    let guest = Guest::start().await;
    let ping: VmPingResult =
        serde_json::from_value(guest.call("vm.ping", json!({"name": "dev"})).await).expect("ping");
    assert_eq!(ping.name, "dev");
    assert_eq!(ping.agent_version, banger::agent::AGENT_VERSION);
    assert!(ping.rtt_us < DEADLINE.as_micros() as u64);

    let health: VmHealthResult =
        serde_json::from_value(guest.call("vm.health", json!({"name": "dev"})).await)
            .expect("health");
    assert_eq!(health.name, "dev");
    assert_eq!(health.health.agent_version, banger::agent::AGENT_VERSION);
    assert!(health.health.mem_total_bytes > 0);

    let run = guest.cli(&["vm", "ping", "dev"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{run:?}");
    assert!(
        stdout.starts_with("dev: ") && stdout.contains(" ms (agent "),
        "{stdout}"
    );

    let run = guest.cli(&["vm", "health", "dev"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{run:?}");
    assert!(
        stdout.contains("round trip:") && stdout.contains("memory:"),
        "{stdout}"
    );

    let run = guest.cli(&["vm", "ping", "dev", "--json"]);
    let parsed: VmPingResult = serde_json::from_slice(&run.stdout).expect("ping --json");
    assert_eq!(parsed.name, "dev");
}

async fn cli_exec_streams_output_and_exits_with_the_command_status() {
    let guest = Guest::start().await;

    let run = guest.cli(&["vm", "exec", "dev", "--", "sh", "-c", "echo hi"]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(run.stdout, b"hi\n");
    assert!(run.stderr.is_empty(), "{run:?}");

    let run = guest.cli(&[
        "vm",
        "exec",
        "dev",
        "--env",
        "A=1",
        "-e",
        "B=two words",
        "--cwd",
        "/",
        "--",
        "sh",
        "-c",
        "echo \"$A $B\" $(pwd); echo oops >&2; exit 7",
    ]);
    assert_eq!(run.status.code(), Some(7), "{run:?}");
    assert_eq!(String::from_utf8_lossy(&run.stdout), "1 two words /\n");
    // The command's own stderr, and nothing of banger's: the status says it all.
    assert_eq!(String::from_utf8_lossy(&run.stderr), "oops\n");

    let run = guest.cli(&["vm", "exec", "dev", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(run.status.code(), Some(128 + 15), "{run:?}");

    let run = guest.cli(&["vm", "logs", "dev"]);
    assert!(run.status.success(), "{run:?}");
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("Linux version"),
        "{run:?}"
    );

    let run = guest.cli(&["vm", "exec", "dev", "--env", "NOEQUALS", "--", "true"]);
    assert_eq!(run.status.code(), Some(2), "a usage error: {run:?}");

    // `vm logs -f` keeps printing what the console appends until it is interrupted.
    let mut follower = Command::new(BANGER)
        .args(["vm", "logs", "dev", "-f"])
        .env("BANGER_ROOT", guest.daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run banger vm logs -f");
    let stdout = follower.stdout.take().expect("piped stdout");
    let (lines, received) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match received.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(error) => panic!("{needle:?} never appeared in `vm logs -f`: {error}"),
            }
        }
    };
    wait_for("Linux version");
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(guest.console_log())
            .expect("open the console log");
        writeln!(file, "appended while following").expect("append");
    }
    wait_for("appended while following");
    let _ = follower.kill();
    let _ = follower.wait();
    reader.join().expect("the reader thread");
}

async fn cli_lifecycle_verbs_print_one_line_each_and_create_shows_its_stages() {
    let guest = Guest::start().await;
    let text = |run: &Output| {
        format!(
            "status {:?}\nstdout:\n{}\nstderr:\n{}",
            run.status.code(),
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        )
    };

    let run = guest.cli(&[
        "vm",
        "create",
        "box",
        "--image",
        "img",
        "--cpus",
        "1",
        "--memory",
        "128M",
        "--work-disk",
        "64M",
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // Each stage as it starts, then where the VM is.
    assert!(
        lines.len() >= 2 && lines[..lines.len() - 1].iter().all(|l| l.ends_with('…')),
        "{}",
        text(&run)
    );
    assert!(
        lines[lines.len() - 1].starts_with("box is running"),
        "{}",
        text(&run)
    );

    let one_line = |args: &[&str], expect: &str| {
        let run = guest.cli(args);
        assert!(run.status.success(), "{args:?}: {}", text(&run));
        let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
        assert_eq!(stdout.lines().count(), 1, "{args:?}: {}", text(&run));
        assert!(stdout.contains(expect), "{args:?}: {}", text(&run));
    };
    one_line(&["vm", "stop", "box"], "box is stopped");
    one_line(
        &["vm", "set", "box", "--cpus", "2", "--memory", "256M"],
        "box: 2 cpus, 256 MiB memory",
    );
    one_line(&["vm", "start", "box"], "box is running");
    one_line(&["vm", "restart", "box"], "restarted box (now running)");
    one_line(&["vm", "kill", "box"], "killed box");
    one_line(&["vm", "delete", "box"], "deleted box");

    // Without waiting: one line naming the operation to follow.
    let run = guest.cli(&["vm", "create", "later", "--image", "img", "--no-wait"]);
    assert!(run.status.success(), "{}", text(&run));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.starts_with("creating later (operation ") && stdout.lines().count() == 1,
        "{}",
        text(&run)
    );

    // Usage errors are caught before anything is sent.
    let run = guest.cli(&["vm", "set", "dev"]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    let run = guest.cli(&["vm", "stop", "dev", "--timeout", "5x"]);
    assert_eq!(
        run.status.code(),
        Some(2),
        "a timeout that is not a duration: {}",
        text(&run)
    );
    // (Without --image a create pulls the catalog's default image: no usage error.)
    let run = guest.cli(&["vm", "create", "nope", "--memory", "0"]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("--memory must be more than 0"),
        "{}",
        text(&run)
    );
}

async fn cli_vm_run_runs_one_command_in_a_fresh_vm_and_throws_it_away() {
    let guest = Guest::start().await;
    let run = guest.cli(&[
        "vm",
        "run",
        "--name",
        "once",
        "--image",
        "img",
        "--memory",
        "128M",
        "--work-disk",
        "64M",
        "--rm",
        "--",
        "sh",
        "-c",
        "echo inside; exit 5",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(5), "{stderr}");
    // stdout is the command's alone; the stages and the delete go to stderr.
    assert_eq!(String::from_utf8_lossy(&run.stdout), "inside\n", "{stderr}");
    assert!(
        stderr.contains("once is running") && stderr.contains("deleted once"),
        "{stderr}"
    );
    let error = rpc_error(
        guest
            .client()
            .await
            .call::<_, Value>("vm.show", &json!({"name": "once"}))
            .await,
    );
    assert_eq!(error.code, ErrorCode::NotFound, "the VM is gone: {error}");

    // Without --rm the VM keeps running, and the last line says how to reach and delete it.
    let run = guest.cli(&[
        "vm", "run", "--name", "kept", "--image", "img", "--", "true",
    ]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("kept keeps running") && stderr.contains("banger vm delete kept"),
        "{stderr}"
    );
    guest.call("vm.show", json!({"name": "kept"})).await;

    // Without a terminal on stdin, `vm run`'s login shell reads its commands from stdin.
    let mut child = spawn_cli(
        &guest,
        &["vm", "run", "--name", "piped", "--image", "img", "--rm"],
        std::process::Stdio::piped(),
    );
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(b"unset HISTFILE; [ -t 0 ] || echo \"no tty, shell $SHELL\"; exit 4\n")
            .expect("write stdin");
    }
    let run = wait_with_deadline(child, "vm run with a piped shell");
    assert_eq!(run.status.code(), Some(4), "{run:?}");
    let login = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|line| line.starts_with("root:"))
        .and_then(|line| line.rsplit(':').next().map(str::to_owned))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        format!("no tty, shell {login}\n"),
        "{run:?}"
    );
}

/// Starts `banger ARGS` against this daemon with a piped stdin, returning the child.
fn spawn_cli(guest: &Guest, args: &[&str], stdin: std::process::Stdio) -> std::process::Child {
    Command::new(BANGER)
        .args(args)
        .env("BANGER_ROOT", guest.daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .current_dir(guest.daemon.root().path())
        .stdin(stdin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run banger")
}

/// Waits for a child (reading its output meanwhile, so a chatty one never blocks on a full
/// pipe) with the test's deadline; kills it and fails when it is late.
fn wait_with_deadline(child: std::process::Child, what: &str) -> Output {
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(DEADLINE) {
        Ok(output) => output.expect("banger's output"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{what}: banger did not exit within {DEADLINE:?}");
        }
    }
}

async fn cli_exec_forwards_piped_stdin_to_the_command() {
    let guest = Guest::start().await;

    // `echo hello | banger vm exec dev -- cat`
    let mut child = spawn_cli(
        &guest,
        &["vm", "exec", "dev", "--", "cat"],
        std::process::Stdio::piped(),
    );
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(b"hello\n").expect("write stdin");
    }
    let run = wait_with_deadline(child, "cat");
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(run.stdout, b"hello\n");
    assert!(run.stderr.is_empty(), "{run:?}");

    // A command that does not read its stdin ends when it ends, even though banger's stdin
    // stays open (the pipe's writer is held until banger has exited).
    let mut child = spawn_cli(
        &guest,
        &["vm", "exec", "dev", "--", "sh", "-c", "echo done; exit 3"],
        std::process::Stdio::piped(),
    );
    let held_open = child.stdin.take().expect("piped stdin");
    let run = wait_with_deadline(child, "a command that ignores stdin");
    drop(held_open);
    assert_eq!(run.status.code(), Some(3), "{run:?}");
    assert_eq!(run.stdout, b"done\n");

    // Megabytes of binary input arrive whole and in order: the guest's sha256 is ours.
    let input = guest.daemon.root().scratch("stdin").join("input.bin");
    let mut state = 0x9e37_79b9_7f4a_7c15u64; // a fixed seed: the same bytes every run
    let data: Vec<u8> = (0..(5 << 20) + 123)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(&input, &data).expect("write the input");
    let child = spawn_cli(
        &guest,
        &["vm", "exec", "dev", "--", "sha256sum"],
        std::fs::File::open(&input).expect("open the input").into(),
    );
    let run = wait_with_deadline(child, "sha256sum of 5 MiB");
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let expected = super::support::sha256_hex(&input);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        format!("{expected}  -\n")
    );

    // And as much comes back out: cat's output is the input, byte for byte.
    let child = spawn_cli(
        &guest,
        &["vm", "exec", "dev", "--", "cat"],
        std::fs::File::open(&input).expect("open the input").into(),
    );
    let run = wait_with_deadline(child, "cat of 5 MiB");
    assert_eq!(run.status.code(), Some(0), "{:?}", run.status);
    assert!(
        run.stdout == data,
        "cat gave back {} bytes",
        run.stdout.len()
    );

    // --no-stdin: the command reads end of file at once, whatever banger's stdin holds.
    let child = spawn_cli(
        &guest,
        &["vm", "exec", "dev", "--no-stdin", "--", "wc", "-c"],
        std::fs::File::open(&input).expect("open the input").into(),
    );
    let run = wait_with_deadline(child, "--no-stdin");
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "0");
}

async fn exec_stdin_lines_that_are_not_stdin_are_refused() {
    let guest = Guest::start().await;
    let mut raw = guest.daemon.raw().await;
    raw.send(
        1,
        "vm.exec",
        json!({"name": "dev", "argv": ["cat"], "stdin": true}),
    )
    .await;
    raw.send_raw(b"{\"data\":\"aGkK\"}\n{\"method\":\"daemon.ping\"}\n")
        .await;
    let mut items = Vec::new();
    let error = loop {
        let response = tokio::time::timeout(DEADLINE, raw.recv())
            .await
            .expect("an answer in time")
            .expect("an answer before the connection closes");
        if let Some(item) = response.item {
            items.push(item);
            continue;
        }
        break response.error.expect("an error");
    };
    assert_eq!(error.code, ErrorCode::InvalidArgument, "{error:?}");
    assert!(error.message.contains("stdin"), "{error:?}");
    // The connection ends with the answer: what followed the request was never a request.
    let next = tokio::time::timeout(DEADLINE, raw.recv())
        .await
        .expect("the close in time");
    assert!(next.is_none(), "{next:?}");
    // Items, if any, are cat's echo of the input that was fine.
    for item in items {
        let item: VmExecItem = serde_json::from_value(item).unwrap();
        assert_eq!(item.data, b"hi\n");
    }
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        tokio exec_streams_stdout_and_stderr_apart_and_returns_the_status needs(Root),
        tokio exec_refuses_unknown_vms_bad_requests_and_stopped_vms needs(Root),
        tokio a_client_that_hangs_up_kills_its_command needs(Root),
        tokio logs_show_the_console_and_follow_what_is_appended needs(Root),
        tokio health_and_ping_report_a_round_trip needs(Root),
        tokio cli_exec_streams_output_and_exits_with_the_command_status needs(Root),
        tokio cli_lifecycle_verbs_print_one_line_each_and_create_shows_its_stages needs(Root),
        tokio cli_vm_run_runs_one_command_in_a_fresh_vm_and_throws_it_away needs(Root),
        tokio cli_exec_forwards_piped_stdin_to_the_command needs(Root),
        tokio exec_stdin_lines_that_are_not_stdin_are_refused needs(Root),
    ]
}
