//! Shared test support: real `bangerd` processes in throwaway state directories, clients for
//! them, and small fixtures (kernel directories, rootfs files).
//!
//! Every test gets its own temporary `BANGER_ROOT` ([`TestRoot`]), so tests run in parallel
//! without sharing a socket, a log or a port. Nothing here sleeps to synchronise: waiting for
//! a daemon polls for its socket to answer, with a deadline, and fails with the daemon's own
//! output when it does not.
//!
//! Typical use:
//! ```ignore
//! let daemon = Bangerd::start();
//! let mut client = daemon.client().await;
//! let ping: PingResult = client.call("daemon.ping", &json!({})).await.unwrap();
//! ```
//!
//! For tests that let the CLI start bangerd itself: [`TestRoot::new`], run `banger` with
//! [`TestRoot::envs`], and dropping the root kills whatever bangerd its pid file names.

#![allow(dead_code)] // Each test file uses its own subset.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use banger::api::{EventsEnd, EventsParams};
use banger::paths::Layout;
use banger::rpc::{Client, ClientError, Response, RpcError, StreamEvent};
use banger_events::Envelope;
use banger_helper::sandbox::Sandbox;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long a daemon may take to answer after it was started (a loaded 2-core CI machine
/// building other tests is slow; a healthy start takes tens of milliseconds).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of the bangerd binary cargo built for these tests.
pub fn bangerd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_bangerd")
}

/// A binary of another workspace package (`fake-firecracker`), brought up to date by `cargo
/// build` (see [`banger_helper::sandbox::build_workspace_binaries`]).
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let binary = banger_helper::sandbox::build_workspace_binaries(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &[&["-p", package, "--bin", bin]],
    )
    .unwrap_or_else(|e| panic!("build {bin}: {e}"))
    .join(bin);
    assert!(
        binary.exists(),
        "{} is missing after building it",
        binary.display()
    );
    binary
}

/// banger-helper (a bin of this package, so cargo builds it for these tests).
pub fn helper_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_banger-helper"))
}

/// A real banger-helper in a network namespace of its own (which dies with it), for one test
/// root: the bridge, taps and NAT rules it makes live there, never on the host. Every bangerd
/// started on the root joins that namespace, so the VMMs it launches open their taps there.
///
/// Its socket lives in a directory of its own, outside the root: the helper is not one of the
/// root's processes (which tests expect to be gone after a teardown).
pub struct TestNetwork {
    sandbox: Sandbox,
    _dir: tempfile::TempDir,
}

impl TestNetwork {
    fn start() -> TestNetwork {
        TestNetwork::start_with(&[])
    }

    /// With `helper_args` on banger-helper's command line.
    fn start_with(helper_args: &[&str]) -> TestNetwork {
        TestNetwork::start_with_env(helper_args, &[])
    }

    /// With `helper_args` on banger-helper's command line and `env` in its environment.
    fn start_with_env(helper_args: &[&str], env: &[(&str, &str)]) -> TestNetwork {
        let dir = tempfile::Builder::new()
            .prefix("banger-net-")
            .tempdir_in("/tmp")
            .expect("create the helper's directory");
        let stderr = fs::File::create(dir.path().join("banger-helper.stderr"))
            .expect("create banger-helper's output file");
        let sandbox = Sandbox::start_with_args_and_env(
            helper_binary(),
            dir.path(),
            stderr.into(),
            helper_args,
            env,
        )
        .unwrap_or_else(|e| panic!("start banger-helper in a network namespace: {e}"));
        TestNetwork { sandbox, _dir: dir }
    }

    /// What banger-helper wrote to its stderr so far (its log: every request, refused or not).
    pub fn helper_log(&self) -> String {
        fs::read_to_string(self._dir.path().join("banger-helper.stderr")).unwrap_or_default()
    }

    pub fn socket(&self) -> &Path {
        self.sandbox.socket()
    }

    /// Runs `program args` inside the namespace (`nsenter`) and returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let output = self
            .sandbox
            .run(program, args)
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Names of the banger taps (`bt…`) in the namespace, sorted.
    pub fn taps(&self) -> Vec<String> {
        self.sandbox.taps().expect("list the taps")
    }

    /// The namespace, for a thread to enter (`setns`).
    pub fn namespace(&self) -> std::os::fd::OwnedFd {
        self.sandbox
            .namespace()
            .expect("open the test network namespace")
    }

    /// A TCP listener on 127.0.0.1 inside the namespace (its loopback brought up), for a
    /// server the daemon there must reach.
    pub fn listen_tcp(&self) -> std::net::TcpListener {
        self.run("ip", &["link", "set", "lo", "up"]);
        let namespace = self.namespace();
        std::thread::spawn(move || {
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter the test network namespace");
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind in the namespace")
        })
        .join()
        .expect("the binding thread")
    }

    /// Makes `command` run in the namespace and talk to its helper.
    pub fn join(&self, command: &mut Command) {
        self.sandbox
            .join(command)
            .expect("join the test network namespace");
    }
}

/// A temporary `BANGER_ROOT`. Dropping it kills any bangerd that still holds its state
/// directory (one the CLI started, say) and removes the directory.
pub struct TestRoot {
    dir: tempfile::TempDir,
    network: OnceLock<Option<TestNetwork>>,
}

impl TestRoot {
    pub fn new() -> TestRoot {
        // Short paths: a unix socket path must fit in 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("banger-test-")
            .tempdir_in("/tmp")
            .expect("create a temporary BANGER_ROOT");
        TestRoot {
            dir,
            network: OnceLock::new(),
        }
    }

    /// A root in a directory under `base` (a test filesystem's mount point, say).
    pub fn new_in(base: &Path) -> TestRoot {
        let dir = tempfile::Builder::new()
            .prefix("banger-test-")
            .tempdir_in(base)
            .expect("create a temporary BANGER_ROOT");
        TestRoot {
            dir,
            network: OnceLock::new(),
        }
    }

    /// A root whose test network's helper gets `helper_args` too (`--network …`). Needs root.
    pub fn with_helper_args(helper_args: &[&str]) -> TestRoot {
        let root = TestRoot::new();
        let _ = root.network.set(Some(TestNetwork::start_with(helper_args)));
        root
    }

    /// As [`TestRoot::with_helper_args`], with `helper_env` in banger-helper's environment.
    pub fn with_helper_args_and_env(helper_args: &[&str], helper_env: &[(&str, &str)]) -> TestRoot {
        let root = TestRoot::new();
        let _ = root
            .network
            .set(Some(TestNetwork::start_with_env(helper_args, helper_env)));
        root
    }

    /// A root whose bangerd runs in this host's network namespace, with no test network even
    /// as root (for tests that need no VM network but reach servers on this host's loopback).
    pub fn without_network() -> TestRoot {
        let root = TestRoot::new();
        let _ = root.network.set(None);
        root
    }

    /// This root's test network, started on first use; `None` when not running as root (the
    /// tests that need one are in the harness's root tier, so they do not run then).
    pub fn network(&self) -> Option<&TestNetwork> {
        self.network
            .get_or_init(|| {
                banger_test_harness::Tier::Root
                    .missing()
                    .is_none()
                    .then(TestNetwork::start)
            })
            .as_ref()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn layout(&self) -> Layout {
        Layout::rooted(self.path())
    }

    /// The environment a `banger` or `bangerd` process needs to use this root.
    pub fn envs(&self) -> Vec<(&'static str, OsString)> {
        vec![("BANGER_ROOT", self.path().as_os_str().to_owned())]
    }

    /// The pid in the state directory's pid file, if any.
    pub fn recorded_pid(&self) -> Option<u32> {
        fs::read_to_string(self.layout().daemon_lock_path())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// A scratch directory for test inputs, outside the state directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.path().join("scratch").join(name);
        fs::create_dir_all(&dir).expect("create a scratch directory");
        dir
    }
}

impl Default for TestRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        // Only a process that is still a bangerd: the pid may have been reused since.
        if let Some(pid) = self.recorded_pid() {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("bangerd") {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        // VMMs (and the fake's guest agents) outlive bangerd by design; everything this test
        // started names its root on the command line, so nothing leaks past the test.
        for pid in processes_mentioning(self.dir.path()) {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// Pids whose command line mentions `root` (the VMMs and agents of one test).
pub fn processes_mentioning(root: &Path) -> Vec<u32> {
    let needle = root.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for pid in banger::host::process::all_pids() {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            pids.push(pid);
        }
    }
    pids
}

/// A bangerd process this test started, on its own [`TestRoot`]. Dropping it kills the
/// process.
pub struct Bangerd {
    root: TestRoot,
    child: Option<Child>,
    starts: usize,
    env: Vec<(String, String)>,
    /// Runs in a fresh network namespace of its own, with no test helper (see
    /// [`Bangerd::start_isolated_on_with`]).
    isolated: bool,
    /// Runs in the host's network namespace, never reaching or starting a helper (see
    /// [`Bangerd::start_on_host_network`]).
    host_network: bool,
    /// Runs as this uid (and gid), as deployed: an ordinary user (see [`Bangerd::start_on_as`]).
    run_as: Option<u32>,
}

impl Bangerd {
    /// Starts bangerd on a fresh root and waits until it answers.
    pub fn start() -> Bangerd {
        Self::start_with(&[])
    }

    /// Starts bangerd on a fresh root with extra environment (`BANGER_FAILPOINT`, …).
    pub fn start_with(env: &[(&str, &str)]) -> Bangerd {
        Self::start_on_with(TestRoot::new(), env)
    }

    /// Starts bangerd on a root the test prepared (a damaged log, say).
    pub fn start_on(root: TestRoot) -> Bangerd {
        Self::start_on_with(root, &[])
    }

    pub fn start_on_with(root: TestRoot, env: &[(&str, &str)]) -> Bangerd {
        let mut daemon = Bangerd {
            root,
            child: None,
            starts: 0,
            env: Vec::new(),
            isolated: false,
            host_network: false,
            run_as: None,
        };
        daemon.restart_with(env);
        daemon
    }

    /// Starts bangerd as `uid` (gid the same, no supplementary groups) in the root's test
    /// network, whose helper must allow that uid: banger as deployed, with bangerd an
    /// ordinary user. The root's directory is handed to that user first.
    pub fn start_on_as(root: TestRoot, uid: u32) -> Bangerd {
        chown_tree(root.path(), uid);
        let mut daemon = Bangerd {
            root,
            child: None,
            starts: 0,
            env: Vec::new(),
            isolated: false,
            host_network: false,
            run_as: Some(uid),
        };
        daemon.restart_with(&[]);
        daemon
    }

    /// The uid this bangerd runs as, when not the test's own.
    pub fn runs_as(&self) -> Option<u32> {
        self.run_as
    }

    /// Starts bangerd in the host's network namespace, where it can reach services the test
    /// runs on loopback (registries, HTTP servers), but may neither reach nor start a
    /// banger-helper (`BANGER_NO_AUTOSTART`, a helper socket that does not exist): nothing it
    /// does can touch the host's network. For tests that run no VM.
    pub fn start_on_host_network(root: TestRoot) -> Bangerd {
        let mut daemon = Bangerd {
            root,
            child: None,
            starts: 0,
            env: Vec::new(),
            isolated: false,
            host_network: true,
            run_as: None,
        };
        daemon.restart_with(&[]);
        daemon
    }

    /// Starts bangerd (as root) in a fresh network namespace of its own with no helper
    /// running: what a host where banger-helper was never started looks like, without
    /// touching this host's network. The namespace goes with bangerd and what it started.
    pub fn start_isolated_on_with(root: TestRoot, env: &[(&str, &str)]) -> Bangerd {
        let mut daemon = Bangerd {
            root,
            child: None,
            starts: 0,
            env: Vec::new(),
            isolated: true,
            host_network: false,
            run_as: None,
        };
        daemon.restart_with(env);
        daemon
    }

    /// Starts bangerd again on the same root (the previous process must be gone: see
    /// [`Bangerd::kill`], [`Bangerd::wait`]), with no extra environment.
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Starts bangerd again on the same root with extra environment.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        assert!(
            self.child.is_none(),
            "restart while the previous bangerd still runs"
        );
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = self.spawn();
        self.child = Some(child);
        self.wait_ready();
    }

    /// Spawns a bangerd on this root without waiting for it; its stderr goes to
    /// [`Bangerd::output_path`] of this start.
    pub fn spawn(&mut self) -> Child {
        self.starts += 1;
        let log = fs::File::create(self.output_path()).expect("create bangerd's output file");
        let mut command = Command::new(bangerd_bin());
        command
            .env("BANGER_ROOT", self.root.path())
            .env("BANGER_LOG", "debug")
            .env_remove("BANGER_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if self.isolated {
            // SAFETY: unshare is async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        } else if !self.host_network
            && let Some(network) = self.root.network()
        {
            network.join(&mut command);
        } else {
            // On the host's network (asked for, or a root without a test network): no helper
            // to reach or start, so that nothing a test does can touch the host's network (a
            // bangerd running as root would otherwise start banger-helper on the host).
            command.env("BANGER_NO_AUTOSTART", "1").env(
                "BANGER_HELPER_SOCKET",
                self.root.path().join("no-helper.sock"),
            );
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        if let Some(uid) = self.run_as {
            command.env("HOME", self.root.path());
            // After the namespace is joined (that needs root), never before: pre_exec
            // closures run in the order they were added.
            // SAFETY: setgroups, setgid and setuid are async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    nix::unistd::setgroups(&[]).map_err(std::io::Error::from)?;
                    nix::unistd::setgid(nix::unistd::Gid::from_raw(uid))
                        .map_err(std::io::Error::from)?;
                    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))
                        .map_err(std::io::Error::from)
                });
            }
        }
        command.spawn().expect("start bangerd")
    }

    /// Where the current (latest) start's stderr goes.
    pub fn output_path(&self) -> PathBuf {
        self.root
            .path()
            .join(format!("bangerd-{}.stderr", self.starts))
    }

    /// What the latest start wrote to stderr.
    pub fn output(&self) -> String {
        fs::read_to_string(self.output_path()).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let socket = self.layout().socket_path();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "bangerd exited ({status}) before answering; its output:\n{}",
                    self.output()
                );
            }
            // A stale socket from a killed daemon refuses connections until the new one
            // replaces it, so a successful connect means this daemon is listening.
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "bangerd did not answer on {} within {:?}; its output:\n{}",
                    socket.display(),
                    START_TIMEOUT,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn root(&self) -> &TestRoot {
        &self.root
    }

    pub fn layout(&self) -> Layout {
        self.root.layout()
    }

    pub fn socket(&self) -> PathBuf {
        self.layout().socket_path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("bangerd is not running").id()
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        Client::connect(&self.socket())
            .await
            .expect("connect to bangerd")
    }

    /// A connection speaking raw lines, for malformed and oversized requests.
    pub async fn raw(&self) -> RawConn {
        RawConn::connect(&self.socket()).await
    }

    /// SIGKILLs the daemon and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the daemon, then waits for it to exit.
    pub fn signal_and_wait(&mut self, signal: Signal) -> ExitStatus {
        let pid = Pid::from_raw(self.pid() as i32);
        kill(pid, signal).expect("signal bangerd");
        self.wait()
    }

    /// Starts bangerd with extra environment and waits (with the start deadline) for it to
    /// exit on its own, ready or not: for a failpoint that fires before or soon after it
    /// answers.
    pub fn run_until_exit(&mut self, env: &[(&str, &str)]) -> ExitStatus {
        assert!(self.child.is_none(), "a bangerd still runs");
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut child = self.spawn();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("poll bangerd") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "bangerd did not exit within {START_TIMEOUT:?}; its output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the daemon to exit on its own (after `daemon.shutdown`, or a failpoint).
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("bangerd is not running");
        child.wait().expect("wait for bangerd")
    }
}

impl Drop for Bangerd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A connection that writes and reads raw protocol lines.
pub struct RawConn {
    reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl RawConn {
    pub async fn connect(socket: &Path) -> RawConn {
        Self::try_connect(socket).await.expect("connect to bangerd")
    }

    /// Connects, or `Err` when nothing answers (the daemon is gone).
    pub async fn try_connect(socket: &Path) -> Result<RawConn, ()> {
        let stream = UnixStream::connect(socket).await.map_err(drop)?;
        let (read, writer) = stream.into_split();
        Ok(RawConn {
            reader: BufReader::new(read),
            writer,
        })
    }

    /// Writes `bytes` as they are (add the newline yourself).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .await
            .expect("write to bangerd");
    }

    /// Writes one well-formed request line.
    pub async fn send(&mut self, id: u64, method: &str, params: Value) {
        self.try_send(id, method, params)
            .await
            .expect("write to bangerd");
    }

    /// Writes one well-formed request line; `Err` when the daemon is gone.
    pub async fn try_send(&mut self, id: u64, method: &str, params: Value) -> std::io::Result<()> {
        let line = serde_json::json!({"v": 1, "id": id, "method": method, "params": params});
        let mut bytes = serde_json::to_vec(&line).expect("encode");
        bytes.push(b'\n');
        self.writer.write_all(&bytes).await
    }

    /// Reads one response line; `None` at end of stream.
    pub async fn recv(&mut self) -> Option<Response> {
        let mut line = String::new();
        match self.reader.read_line(&mut line).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("bangerd sent a line that is not a response ({e}): {line}")
            })),
        }
    }

    /// One request, one response (with its op id, which [`Client::call`] does not show).
    pub async fn call(&mut self, id: u64, method: &str, params: Value) -> Response {
        self.send(id, method, params).await;
        self.recv().await.expect("bangerd closed the connection")
    }
}

/// The error of a failed call, or a panic naming what came back instead.
pub fn rpc_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> RpcError {
    match result {
        Err(ClientError::Rpc(error)) => error,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// Reads a finite `events.follow` stream (follow = false) to its end.
pub async fn events(socket: &Path, params: EventsParams) -> (Vec<Envelope>, EventsEnd) {
    assert!(!params.follow, "events() reads a finite stream");
    let client = Client::connect(socket).await.expect("connect");
    let mut stream = client
        .stream("events.follow", &params)
        .await
        .expect("start events.follow");
    let mut items = Vec::new();
    loop {
        match stream.next::<Envelope>().await.expect("read the stream") {
            StreamEvent::Item(envelope) => items.push(envelope),
            StreamEvent::End(end) => {
                let end: EventsEnd = serde_json::from_value(end).expect("EventsEnd");
                return (items, end);
            }
        }
    }
}

/// Every event in the log, through the daemon.
pub async fn all_events(socket: &Path) -> Vec<Envelope> {
    events(socket, EventsParams::default()).await.0
}

/// Writes a kernel source directory: `vmlinux` (a fake ELF with a Linux version banner), and
/// an `initrd.img` when asked. Returns the directory.
pub fn kernel_source(dir: &Path, version: &str, initrd: bool) -> PathBuf {
    fs::create_dir_all(dir).expect("create the kernel source");
    let mut vmlinux = b"\x7fELF".to_vec();
    vmlinux.extend_from_slice(&[0u8; 4096]);
    vmlinux.extend_from_slice(format!("Linux version {version} (test@banger) #1 SMP\0").as_bytes());
    vmlinux.extend_from_slice(&[0u8; 1024]);
    fs::write(dir.join("vmlinux"), vmlinux).expect("write vmlinux");
    if initrd {
        fs::write(dir.join("initrd.img"), b"initrd for tests").expect("write initrd");
    }
    dir.to_path_buf()
}

/// Writes a sparse rootfs file of `size` bytes with some data at both ends.
pub fn rootfs_file(path: &Path, size: u64) -> PathBuf {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = fs::File::create(path).expect("create the rootfs");
    file.write_all(b"rootfs head").expect("write");
    file.seek(SeekFrom::Start(size - 11)).expect("seek");
    file.write_all(b"rootfs tail").expect("write");
    path.to_path_buf()
}

/// The names in a directory (empty when it does not exist), sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// sha256 of a file, hex.
pub fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    let bytes = fs::read(path).expect("read for sha256");
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Gives `path` and everything under it to `uid` (gid the same), not following symlinks.
pub fn chown_tree(path: &Path, uid: u32) {
    let owner = Some(nix::unistd::Uid::from_raw(uid));
    let group = Some(nix::unistd::Gid::from_raw(uid));
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        owner,
        group,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}
