//! QEMU's microvm through the real `qemu-system-x86_64`, and real guests booted with it.
//!
//! - QMP on a bare microvm (no kernel: QEMU still serves QMP): status, `cont`, the power
//!   button, `quit`, SIGKILL, and re-adoption by pid and start time as a restarted bangerd
//!   does it — the `Vmm` trait's QEMU mapping against the real program.
//! - A launch that fails leaves no process and says why.
//! - Debian 12's cloud kernel booted under TCG with a tiny initrd (busybox, the virtio
//!   modules, and the real `banger-agent` listening on the virtio-serial port): the agent
//!   answers through bangerd's multiplexer over QEMU's chardev socket — many streams at once,
//!   a reconnecting host, a command killed with its stream — and the ACPI power button
//!   powers the guest off, QEMU exiting with it.
//! - The same guest through the real bangerd and CLI (`vm create --vmm qemu`, `vm exec`,
//!   re-adoption after a kill -9 of bangerd, a graceful `vm stop`), which needs root for the
//!   VM's tap (the harness's root tier).
//!
//! QEMU is installed wherever these tests run (CI installs it), so a missing QEMU fails the
//! tests with a message rather than skipping them. The kernel comes from the Debian archive
//! (`apt-get download`) into a cache directory, `BANGER_TEST_CACHE` (default
//! `target/test-cache`), once per machine; busybox from the `busybox-static` package.
//!
//! Nothing sleeps to synchronise: every wait polls a condition with a deadline.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger::agent::client::AgentClient;
use banger::agent::protocol::ExecRequest;
use banger::host::guest_agent::{AgentEndpoint, AgentLinks, AgentStream};
use banger::host::kvm;
use banger::host::process::{self, Liveness};
use banger::host::qemu::{Accel, QemuVmm};
use banger::host::qmp::{QmpClient, RunState};
use banger::host::vmm::{
    AgentTransport, DriveSpec, KillOutcome, LaunchSpec, Launched, Vmm, VmmError,
};
use serde_json::{Value, json};

use super::support::{Bangerd, TestRoot, rootfs_file};

/// The package whose kernel the guests boot (Debian 12's cloud kernel).
const KERNEL_PACKAGE: &str = "linux-image-6.1.0-57-cloud-amd64";
const KERNEL_RELEASE: &str = "6.1.0-57-cloud-amd64";
/// What the test initrd's init names the guest.
const GUEST_HOSTNAME: &str = "banger-qemu-test";

/// How long a TCG boot to a ready agent may take on a loaded 2-core machine (it takes a few
/// seconds when idle).
const BOOT_DEADLINE: Duration = Duration::from_secs(180);
/// Everything else.
const DEADLINE: Duration = Duration::from_secs(60);

const BANGER: &str = env!("CARGO_BIN_EXE_banger");

/// The QEMU to test: `BANGER_QEMU`, else `qemu-system-x86_64` on PATH. Missing is a failure.
pub(crate) fn qemu_binary() -> PathBuf {
    let configured = std::env::var_os("BANGER_QEMU")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(banger::host::qemu::DEFAULT_QEMU_BINARY));
    match banger::host::backends::find_binary(&configured, "QEMU") {
        banger::host::backends::Binary::Found(path) => path,
        banger::host::backends::Binary::Missing(why) => panic!(
            "{why}: these tests need QEMU (`apt-get install qemu-system-x86`), which CI installs; \
             set BANGER_QEMU to use another"
        ),
    }
}

/// The accelerator this host allows (TCG where KVM cannot run a stock guest, as here).
fn accel() -> Accel {
    Accel::for_host(&kvm::probe())
}

fn vmm() -> QemuVmm {
    QemuVmm::new(qemu_binary(), accel())
}

fn start_time(pid: u32) -> u64 {
    process::proc_start_time_ticks(pid).expect("read the start time")
}

/// Kills a VMM this test started, whatever happens to the test: QEMU runs in its own process
/// group and would otherwise outlive a failed test.
pub(crate) struct Reaper(pub(crate) Option<Launched>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(vm) = &self.0 {
            let _ = process::signal_recorded(
                vm.pid,
                vm.start_time_ticks,
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

// ---- a bare microvm: QMP without a kernel -------------------------------------------------

/// Starts QEMU's microvm with nothing but QMP (stopped with `-S`), in its own process group,
/// as bangerd starts VMMs; returns it once QMP answers.
async fn bare_microvm(dir: &Path) -> (std::process::Child, Launched, Reaper) {
    let socket = dir.join("api.sock");
    let mut command = Command::new(qemu_binary());
    command
        .args(["-M", banger::host::qemu::MACHINE, "-accel", "tcg"])
        .args([
            "-m",
            "64M",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-S",
        ])
        .arg("-qmp")
        .arg(banger::host::qemu::qmp_argument(&socket))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("qemu.stderr")).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.spawn().expect("start qemu");
    let launched = Launched {
        pid: child.id(),
        start_time_ticks: start_time(child.id()),
        api_socket: socket.clone(),
    };
    let reaper = Reaper(Some(launched.clone()));
    let qmp = QmpClient::new(&socket);
    let until = Instant::now() + DEADLINE;
    loop {
        if let Ok(state) = qmp.query_status().await {
            assert_eq!(state, RunState::Prelaunch);
            break;
        }
        assert!(
            Instant::now() < until,
            "QMP did not answer: {}",
            std::fs::read_to_string(dir.join("qemu.stderr")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, launched, reaper)
}

async fn qmp_drives_a_bare_microvm_and_quit_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, launched, _reaper) = bare_microvm(dir.path()).await;
    let qmp = QmpClient::new(&launched.api_socket);
    let vmm = vmm();

    // start: `cont` from prelaunch, and again is harmless.
    vmm.start(&launched).await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap(), RunState::Running);
    vmm.start(&launched).await.unwrap();
    // The power button with no guest to hear it: accepted, and the machine runs on.
    vmm.shutdown(&launched).await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap(), RunState::Running);
    assert!(vmm.answers(&launched).await);

    qmp.quit().await.unwrap();
    assert!(vmm.wait_dead(&launched, DEADLINE).await.unwrap());
    assert!(child.wait().unwrap().success(), "quit exits cleanly");
    assert!(!vmm.answers(&launched).await);
    assert_eq!(
        vmm.kill(&launched).await.unwrap(),
        KillOutcome::AlreadyDead(Liveness::Gone)
    );
}

/// What a restarted bangerd does with the pid and start time its log recorded.
async fn a_running_microvm_is_readopted_by_pid_and_start_time_and_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, launched, _reaper) = bare_microvm(dir.path()).await;
    // A backend of another process (a new bangerd) knows the VMM only from the record.
    let vmm = vmm();
    assert!(
        vmm.answers(&launched).await,
        "re-adopted: alive and QMP answers"
    );
    let found = vmm.launched_for(&launched.api_socket).await;
    assert_eq!(found, vec![launched.clone()], "found by its -qmp argument");
    assert!(
        vmm.launched_for(&dir.path().join("other.sock"))
            .await
            .is_empty()
    );

    // A record whose start time differs is another process: never adopted, never signalled.
    let reused = Launched {
        start_time_ticks: launched.start_time_ticks + 1,
        ..launched.clone()
    };
    assert!(!vmm.answers(&reused).await);
    assert_eq!(
        vmm.kill(&reused).await.unwrap(),
        KillOutcome::AlreadyDead(Liveness::Reused)
    );
    assert!(vmm.answers(&launched).await, "the real one was left alone");

    assert_eq!(vmm.kill(&launched).await.unwrap(), KillOutcome::Killed);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    assert!(vmm.launched_for(&launched.api_socket).await.is_empty());
    assert!(!vmm.answers(&launched).await);
}

/// A launch whose QEMU refuses its machine: the error quotes QEMU, and nothing runs.
async fn a_failed_launch_leaves_no_process_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), &dir.path().join("no-such-kernel"), None);
    spec.drives.clear();
    let vmm = vmm();
    let err = vmm.launch(&spec).await.unwrap_err();
    match &err {
        VmmError::ExitedEarly { console_tail, .. } => {
            assert!(console_tail.contains("no-such-kernel"), "{console_tail}")
        }
        other => panic!("unexpected: {other}"),
    }
    assert!(vmm.launched_for(&spec.api_socket).await.is_empty());
    // QEMU made its QMP socket before it failed; nobody serves it, so the next launch
    // replaces it (and fails the same way), but a live socket of somebody else's is never
    // taken over.
    let err = vmm.launch(&spec).await.unwrap_err();
    assert!(matches!(err, VmmError::ExitedEarly { .. }), "{err}");
    std::fs::remove_file(&spec.api_socket).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(&spec.api_socket).unwrap();
    let err = vmm.launch(&spec).await.unwrap_err();
    assert!(matches!(err, VmmError::SocketInUse { .. }), "{err}");
}

// ---- a real guest ----------------------------------------------------------------------------

fn spec(dir: &Path, kernel: &Path, initrd: Option<PathBuf>) -> LaunchSpec {
    LaunchSpec {
        id: "qemu-test".into(),
        api_socket: dir.join("api.sock"),
        console_log: dir.join("console.log"),
        vmm_log: Some(dir.join("qemu.log")),
        vcpus: 1,
        mem_mib: 256,
        kernel: kernel.to_path_buf(),
        initrd,
        boot_args: "console=ttyS0 reboot=k panic=1 pci=off".into(),
        drives: vec![
            DriveSpec {
                id: "work".into(),
                path: dir.join("work.img"),
                root: false,
                read_only: false,
            },
            DriveSpec {
                id: "rootfs".into(),
                path: dir.join("root.img"),
                root: true,
                read_only: false,
            },
        ],
        net: None,
        vsock: None,
        agent_serial: Some(dir.join("agent.sock")),
    }
}

async fn agent(links: &AgentLinks, endpoint: &AgentEndpoint) -> AgentClient<AgentStream> {
    let stream = links
        .connect(endpoint, DEADLINE)
        .await
        .expect("a stream to the agent");
    AgentClient::handshake(stream, "qemu-test")
        .await
        .expect("the agent's hello")
}

async fn run(agent: &mut AgentClient<AgentStream>, argv: &[&str]) -> String {
    let output = agent
        .exec_collect(&ExecRequest::new(argv.iter().copied()), None)
        .await
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        output.status.success(),
        "{argv:?}: {} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

async fn debian_cloud_kernel_boots_and_its_agent_answers_over_virtio_serial() {
    let guest = test_guest();
    let dir = tempfile::tempdir().unwrap();
    rootfs_file(&dir.path().join("root.img"), 1 << 20);
    std::fs::write(dir.path().join("work.img"), vec![0u8; 1 << 20]).unwrap();
    let spec = spec(dir.path(), &guest.kernel, Some(guest.initrd.clone()));
    let vmm = vmm();

    let launch_started = Instant::now();
    let mut spawned = vmm.launch(&spec).await.expect("launch");
    let _reaper = Reaper(Some(spawned.launched.clone()));
    let launched = spawned.launched.clone();
    // configure is a check and start an ensure: both again are harmless.
    vmm.configure(&launched, &spec).await.unwrap();
    vmm.start(&launched).await.unwrap();

    let links = AgentLinks::new();
    let endpoint = AgentEndpoint {
        transport: AgentTransport::VirtioSerial,
        vsock_socket: dir.path().join("unused"),
        serial_socket: dir.path().join("agent.sock"),
    };
    let stream = links
        .connect(&endpoint, BOOT_DEADLINE)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the agent did not answer: {e}; console:\n{}",
                std::fs::read_to_string(&spec.console_log).unwrap_or_default()
            )
        });
    let mut first = AgentClient::handshake(stream, "qemu-test").await.unwrap();
    let health = first.health().await.unwrap();
    eprintln!(
        "qemu ({}) launch to agent ready: {:?}; guest uptime {} ms",
        accel().as_str(),
        launch_started.elapsed(),
        health.system_uptime_ms
    );
    assert_eq!(health.hostname, GUEST_HOSTNAME);
    assert_eq!(
        run(&mut first, &["uname", "-r"]).await.trim(),
        KERNEL_RELEASE
    );
    // The root drive is the first virtio-blk device whatever the spec's order.
    assert_eq!(
        run(&mut first, &["head", "-c", "11", "/dev/vda"]).await,
        "rootfs head"
    );

    // Streams at once over the one serial session, each moving more than a window both ways.
    let transfer = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..4u8 {
        let mut client = agent(&links, &endpoint).await;
        tasks.push(tokio::spawn(async move {
            let input: Vec<u8> = (0..200_000u32).map(|n| (n as u8) ^ i).collect();
            let output = client
                .exec_collect(&ExecRequest::new(["cat"]), Some(&input))
                .await
                .unwrap();
            assert!(output.status.success());
            assert!(output.stdout == input, "stream {i} came back changed");
        }));
    }
    for _ in 0..10 {
        first.ping().await.unwrap();
    }
    for task in tasks {
        task.await.unwrap();
    }
    eprintln!(
        "4 x 200 KB echoed through the guest over virtio-serial in {:?}",
        transfer.elapsed()
    );

    // A command lives exactly as long as its stream.
    let mut doomed = agent(&links, &endpoint).await;
    let pid = doomed
        .exec(&ExecRequest::new(["sleep", "600"]))
        .await
        .unwrap()
        .pid();
    drop(doomed);
    let proc_dir = format!("/proc/{pid}");
    let until = Instant::now() + DEADLINE;
    loop {
        let probe = first
            .exec_collect(&ExecRequest::new(["test", "-e", proc_dir.as_str()]), None)
            .await
            .unwrap();
        if !probe.status.success() {
            break;
        }
        assert!(Instant::now() < until, "sleep {pid} outlived its stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // bangerd restarts: its session goes, a new one starts, and the guest serves it.
    drop(first);
    links.forget(&endpoint.serial_socket);
    let mut again = agent(&links, &endpoint).await;
    again.ping().await.unwrap();
    assert_eq!(run(&mut again, &["hostname"]).await.trim(), GUEST_HOSTNAME);
    drop(again);

    // The power button (Firecracker's Ctrl-Alt-Del): the guest powers off, QEMU exits.
    vmm.shutdown(&launched).await.unwrap();
    let status = tokio::time::timeout(DEADLINE, spawned.child.as_mut().unwrap().wait())
        .await
        .expect("QEMU exits with its guest")
        .unwrap();
    assert!(status.success(), "{status}");
    let console = std::fs::read_to_string(&spec.console_log).unwrap();
    assert!(
        console.contains("banger-test-init: power button"),
        "{console}"
    );
    assert!(console.contains("reboot: Power down"), "{console}");
}

/// What `vm stop` does when the guest ignores the power button: ask, wait the timeout, kill.
async fn a_guest_that_ignores_the_power_button_is_killed_after_the_timeout() {
    let guest = test_guest();
    let dir = tempfile::tempdir().unwrap();
    rootfs_file(&dir.path().join("root.img"), 1 << 20);
    std::fs::write(dir.path().join("work.img"), vec![0u8; 1 << 20]).unwrap();
    let mut spec = spec(dir.path(), &guest.kernel, Some(guest.initrd.clone()));
    spec.boot_args.push_str(" banger.test.deaf");
    let vmm = vmm();
    let mut spawned = vmm.launch(&spec).await.expect("launch");
    let _reaper = Reaper(Some(spawned.launched.clone()));
    let launched = spawned.launched.clone();
    let links = AgentLinks::new();
    let endpoint = AgentEndpoint {
        transport: AgentTransport::VirtioSerial,
        vsock_socket: dir.path().join("unused"),
        serial_socket: dir.path().join("agent.sock"),
    };
    let stream = links.connect(&endpoint, BOOT_DEADLINE).await.expect("boot");
    let mut client = AgentClient::handshake(stream, "qemu-test").await.unwrap();
    client.ping().await.unwrap();

    vmm.shutdown(&launched).await.unwrap();
    assert!(
        !vmm.wait_dead(&launched, Duration::from_secs(2))
            .await
            .unwrap(),
        "the guest was told to ignore the power button"
    );
    assert_eq!(vmm.kill(&launched).await.unwrap(), KillOutcome::Killed);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        spawned
            .child
            .as_mut()
            .unwrap()
            .wait()
            .await
            .unwrap()
            .signal(),
        Some(9)
    );
    // Its session ends with it: talking to the agent now fails fast instead of hanging. The
    // session learns of the end when its reader sees the socket close, which may come just
    // after the reap: a connect in that moment still opens a stream on the dying session,
    // and that stream's first request fails instead.
    let started = Instant::now();
    match links.connect(&endpoint, Duration::from_secs(5)).await {
        Ok(stream) => {
            let answered = tokio::time::timeout(
                Duration::from_secs(5),
                AgentClient::handshake(stream, "qemu-test"),
            )
            .await
            .expect("a stream on a dead session fails instead of hanging");
            assert!(
                answered.is_err(),
                "an agent answered after its VM was killed"
            );
        }
        Err(err) => assert!(
            !matches!(
                err,
                banger::host::guest_agent::AgentConnectError::Timeout { .. }
            ),
            "{err}"
        ),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// The same guest through bangerd and the CLI.
async fn bangerd_runs_a_qemu_vm_from_create_to_delete() {
    let guest = test_guest();
    let qemu = qemu_binary();
    let root = TestRoot::new();
    let config = root.layout().config_path();
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "[timeouts]\nboot = \"180s\"\nstop = \"60s\"\n").unwrap();
    let env = [("BANGER_QEMU", qemu.to_str().unwrap())];
    let mut daemon = Bangerd::start_on_with(root, &env);
    let inputs = daemon.root().scratch("inputs");
    let kernel_dir = inputs.join("kernel");
    std::fs::create_dir_all(&kernel_dir).unwrap();
    std::fs::copy(&guest.kernel, kernel_dir.join("vmlinux")).unwrap();
    std::fs::copy(&guest.initrd, kernel_dir.join("initrd.img")).unwrap();
    let rootfs = rootfs_file(&inputs.join("rootfs.img"), 16 << 20);
    let socket = daemon.socket();
    let call = |method: &'static str, params: Value| {
        let socket = socket.clone();
        async move {
            let mut client = banger::rpc::Client::connect(&socket).await.unwrap();
            let result: Result<Value, _> = client.call(method, &params).await;
            result
        }
    };
    call(
        "kernel.import",
        json!({"name": "debian", "from": kernel_dir}),
    )
    .await
    .expect("kernel.import");
    call(
        "image.register",
        json!({"name": "img", "rootfs": rootfs, "kernel": "debian"}),
    )
    .await
    .expect("image.register");
    let created = Instant::now();
    let result = call(
        "vm.create",
        json!({"name": "q1", "image": "img", "vcpus": 1, "memory_mib": 256,
               "work_disk_mib": 64, "vmm": "qemu"}),
    )
    .await;
    if let Err(error) = result {
        panic!(
            "vm.create failed: {error}\nbangerd said:\n{}",
            daemon.output()
        );
    }
    eprintln!(
        "bangerd: vm create --vmm qemu to agent ready in {:?}",
        created.elapsed()
    );
    let shown = call("vm.show", json!({"name": "q1"})).await.unwrap();
    assert_eq!(shown["vm"]["backend"]["vmm"], "qemu", "{shown}");
    assert!(
        shown["vm"]["backend"]["reason"]
            .as_str()
            .unwrap()
            .contains("--vmm qemu"),
        "{shown}"
    );
    let root_path = daemon.root().path().to_path_buf();
    let cli = |args: &[&str]| {
        Command::new(BANGER)
            .args(args)
            .env("BANGER_ROOT", &root_path)
            .env("BANGER_NO_AUTOSTART", "1")
            .output()
            .expect("run banger")
    };
    let show = cli(&["vm", "show", "q1"]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("vmm:") && text.contains("qemu (asked for with --vmm qemu"),
        "{text}"
    );
    let exec = cli(&["vm", "exec", "q1", "--", "uname", "-r"]);
    assert!(exec.status.success(), "{exec:?}");
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), KERNEL_RELEASE);

    // `vm exec -t` from a terminal: a pseudo-terminal in the real guest, over the multiplexed
    // virtio-serial stream — its size, a resize, a key typed, ^C, and this terminal's modes
    // put back.
    let script = r#"trap 'echo "winch $(stty size)"' WINCH; echo "tty: $(stty size) $(tty)";
        read -r line; echo "read:$line"; while :; do sleep 0.1; done"#;
    let mut screen = super::tty::Screen::spawn(
        &root_path,
        &["vm", "exec", "-t", "q1", "--", "sh", "-c", script],
        30,
        100,
    );
    let started = Instant::now();
    screen.wait_for("tty: 30 100 /dev/pts/").await;
    eprintln!(
        "vm exec -t: the guest's terminal answered in {:?}",
        started.elapsed()
    );
    assert!(super::tty::is_raw(&screen.modes()));
    screen.type_keys(b"typed\r").await;
    screen.wait_for("read:typed\r\n").await;
    banger::agent::pty::set_size(std::os::fd::AsFd::as_fd(&screen.master), 40, 120).unwrap();
    screen.wait_for("winch 40 120").await;
    screen.type_keys(b"\x03").await;
    let status = screen.exit().await;
    assert_eq!(status.code(), Some(130), "{:?}", screen.text());
    screen.assert_modes_restored();

    // kill -9 bangerd: the VM runs on; the next bangerd re-adopts it (pid, start time, QMP)
    // and reaches its agent with a new serial session.
    let process = shown["vm"]["process"]["pid"].as_u64().unwrap() as u32;
    daemon.kill();
    daemon.restart_with(&env);
    let shown = call("vm.show", json!({"name": "q1"})).await.unwrap();
    assert_eq!(shown["vm"]["state"], "running", "{shown}");
    assert_eq!(
        shown["vm"]["process"]["pid"].as_u64(),
        Some(u64::from(process))
    );
    let exec = cli(&["vm", "exec", "q1", "--", "hostname"]);
    assert!(exec.status.success(), "{exec:?}\n{}", daemon.output());
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), GUEST_HOSTNAME);

    // A graceful stop: the power button, the guest powers off, nothing is killed.
    let started_at = shown["vm"]["process"]["start_time_ticks"].as_u64().unwrap();
    let stop = cli(&["vm", "stop", "q1"]);
    assert!(stop.status.success(), "{stop:?}");
    let console =
        std::fs::read_to_string(daemon.layout().vm_console_log(vm_id(&shown))).unwrap_or_default();
    assert!(
        console.contains("banger-test-init: power button"),
        "{console}"
    );
    assert!(
        console.contains("reboot: Power down"),
        "it powered off by itself: {console}"
    );
    assert!(process::liveness(process, started_at).unwrap().is_dead());
    let vm_dir = daemon.layout().vm_dir(vm_id(&shown));
    for socket in ["api.sock", "agent.sock"] {
        assert!(!vm_dir.join(socket).exists(), "{socket} was left behind");
    }

    // Started again on its recorded backend (a new QEMU, a new agent session), then killed.
    let start = cli(&["vm", "start", "q1"]);
    assert!(
        start.status.success(),
        "{start:?}
{}",
        daemon.output()
    );
    let exec = cli(&["vm", "exec", "q1", "--", "cat", "/proc/uptime"]);
    assert!(exec.status.success(), "{exec:?}");
    let shown = call("vm.show", json!({"name": "q1"})).await.unwrap();
    let (pid, started_at) = (
        shown["vm"]["process"]["pid"].as_u64().unwrap() as u32,
        shown["vm"]["process"]["start_time_ticks"].as_u64().unwrap(),
    );
    assert!(
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .windows(b"microvm".len())
            .any(|w| w == b"microvm"),
        "a QEMU again"
    );
    let kill = cli(&["vm", "kill", "q1"]);
    assert!(kill.status.success(), "{kill:?}");
    assert!(process::liveness(pid, started_at).unwrap().is_dead());
    for socket in ["api.sock", "agent.sock"] {
        assert!(!vm_dir.join(socket).exists(), "{socket} was left behind");
    }
    let delete = cli(&["vm", "delete", "q1"]);
    assert!(delete.status.success(), "{delete:?}");
}

fn vm_id(shown: &Value) -> banger_events::VmId {
    serde_json::from_value(shown["vm"]["id"].clone()).unwrap()
}

// ---- the guest's kernel and initrd ----------------------------------------------------------

/// A bootable test guest: Debian's kernel, and an initrd whose init runs the agent.
struct TestGuest {
    kernel: PathBuf,
    initrd: PathBuf,
}

impl Drop for TestGuest {
    fn drop(&mut self) {
        // Built per test process (it carries this build's agent): not worth keeping.
        let _ = std::fs::remove_file(&self.initrd);
    }
}

/// The cache of downloaded and built test inputs.
fn cache_dir() -> PathBuf {
    let dir = std::env::var_os("BANGER_TEST_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache"));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create the test cache {}: {e}", dir.display()));
    dir
}

/// Builds (or finds) the test guest. Test processes run in parallel, so the cache is
/// locked while it is filled.
fn test_guest() -> TestGuest {
    let cache = cache_dir();
    let (kernel, tree) = debian_kernel();
    // Rebuilt every run: it carries this build's agent.
    let initrd = cache.join(format!("initrd-{}.cpio", std::process::id()));
    build_initrd(&tree, &initrd);
    TestGuest { kernel, initrd }
}

/// The cache locked while this process fills it (test processes run in parallel).
fn lock_cache(cache: &Path) -> nix::fcntl::Flock<std::fs::File> {
    let lock = std::fs::File::create(cache.join(".lock")).unwrap();
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the test cache")
}

/// Debian's cloud kernel from the cache (downloaded and unpacked on first use), and the
/// unpacked package it is in (its modules).
pub(crate) fn debian_kernel() -> (PathBuf, PathBuf) {
    let cache = cache_dir();
    let _lock = lock_cache(&cache);
    let tree = cache.join(KERNEL_PACKAGE);
    if !tree.join("boot").is_dir() {
        let deb = cached_deb(
            &cache,
            KERNEL_PACKAGE,
            &format!(
                "put the .deb in {} (BANGER_TEST_CACHE) to run these tests offline",
                cache.display()
            ),
        );
        let staging = cache.join(format!("{KERNEL_PACKAGE}.partial"));
        let _ = std::fs::remove_dir_all(&staging);
        must_run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging),
            "extract the kernel package (dpkg-deb)",
        );
        std::fs::rename(&staging, &tree).unwrap();
    }
    let kernel = tree.join(format!("boot/vmlinuz-{KERNEL_RELEASE}"));
    assert!(kernel.is_file(), "{} is missing", kernel.display());
    (kernel, tree)
}

/// The package a QEMU that takes `/dev/kvm` as a descriptor (8.2+) comes from on Debian 12,
/// whose own QEMU (7.2) opens it by path.
const NEWER_QEMU_PACKAGE: &str = "qemu-system-x86/bookworm-backports";

/// A QEMU that takes `/dev/kvm` as a descriptor (8.2+): `BANGER_TEST_QEMU_KVM_FD`, else the
/// tiers' QEMU where it is new enough, else Debian 12's backport, downloaded once with
/// `apt-get download` into the cache and unpacked there (it runs on the libraries the
/// distribution's QEMU already installed). Missing is a failure that says how to get one.
pub(crate) fn qemu_taking_kvm_by_descriptor() -> PathBuf {
    let new_enough = |binary: &Path| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(banger::host::qemu::version(binary))
            .is_ok_and(|version| version >= banger::host::qemu::KVM_DEVICE_PROPERTY_SINCE)
    };
    if let Some(named) = std::env::var_os("BANGER_TEST_QEMU_KVM_FD").filter(|v| !v.is_empty()) {
        let named = PathBuf::from(named);
        assert!(
            new_enough(&named),
            "BANGER_TEST_QEMU_KVM_FD names {}, which is not a QEMU 8.2 or later",
            named.display()
        );
        return named;
    }
    let system = qemu_binary();
    if new_enough(&system) {
        return system;
    }
    let cache = cache_dir();
    let _lock = lock_cache(&cache);
    let tree = cache.join("qemu-kvm-fd");
    let binary = tree.join("usr/bin/qemu-system-x86_64");
    if !binary.is_file() {
        let deb = cached_deb(
            &cache,
            NEWER_QEMU_PACKAGE,
            &format!(
                "{} opens /dev/kvm only by path (QEMU {:?}): add bookworm-backports to apt's \
                 sources (.ci/run does), or set BANGER_TEST_QEMU_KVM_FD to a QEMU 8.2 or later",
                system.display(),
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(banger::host::qemu::version(&system)),
            ),
        );
        let staging = cache.join("qemu-kvm-fd.partial");
        let _ = std::fs::remove_dir_all(&staging);
        must_run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging),
            "extract the QEMU package (dpkg-deb)",
        );
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::rename(&staging, &tree).unwrap();
    }
    assert!(
        new_enough(&binary),
        "{} does not run as a QEMU 8.2 or later (missing libraries?)",
        binary.display()
    );
    binary
}

/// The `.deb` of `package` (`NAME` or `NAME/RELEASE`) in `cache`, downloaded there with
/// `apt-get download` if it is not there yet (the caller holds the cache's lock). Missing
/// after that is a failure ending with `otherwise`, which says how else to get it.
pub(crate) fn cached_deb(cache: &Path, package: &str, otherwise: &str) -> PathBuf {
    let name = package.split('/').next().unwrap_or(package);
    let find = || {
        std::fs::read_dir(cache)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = find() {
        return deb;
    }
    let output = Command::new("apt-get")
        .args(["download", package])
        .current_dir(cache)
        .output()
        .unwrap_or_else(|e| panic!("cannot run apt-get to fetch {package}: {e}"));
    find().unwrap_or_else(|| {
        panic!(
            "`apt-get download {package}` did not fetch it ({}): {}\n{otherwise}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
        )
    })
}

fn must_run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run it: {e}"));
    assert!(
        output.status.success(),
        "{what}: {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The test initrd's init: mounts, loads the virtio modules in dependency order (and the
/// power button's), turns the power button into a poweroff, and hands over to the agent on
/// the virtio-serial port. What the kernel bundle's initrd and the agent as PID 1 will do for
/// real, in a dozen lines of shell.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mkdir -p /dev/pts
/bin/busybox mount -t devpts devpts /dev/pts
/bin/busybox --install -s /bin
export PATH=/bin
for m in virtio_ring virtio virtio_mmio virtio_console virtio_blk button evdev; do
    insmod /lib/modules/$m.ko || echo "banger-test-init: cannot load $m"
done
hostname banger-qemu-test
echo "banger-test-init: modules loaded"
grep -q banger.test.deaf /proc/cmdline || (
    while :; do
        for e in /sys/class/input/event*; do
            if [ "$(cat $e/device/name 2>/dev/null)" = "Power Button" ]; then
                head -c 1 /dev/input/${e##*/} >/dev/null
                echo "banger-test-init: power button"
                sync
                poweroff -f
            fi
        done
        sleep 0.2
    done
) &
# No --listen: `auto` finds banger.agent=serial on the kernel command line. A child, not PID 1:
# as PID 1 the agent would be the guest's init and answer the power button itself, and this
# init's handling of it (or deafness to it) is what these tests drive.
/bin/banger-agent &
while :; do wait; sleep 1; done
"#;

fn build_initrd(kernel_tree: &Path, out: &Path) {
    let busybox = Path::new("/bin/busybox");
    let bytes = std::fs::read(busybox).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; install busybox-static (`apt-get install busybox-static`)",
            busybox.display()
        )
    });
    assert!(
        !has_interpreter(&bytes),
        "{} is dynamically linked: install busybox-static (`apt-get install busybox-static`)",
        busybox.display()
    );
    let agent = Path::new(env!("CARGO_BIN_EXE_banger-agent"));
    let mut entries: Vec<(String, u32, Vec<u8>)> = Vec::new();
    for dir in [
        "bin",
        "lib",
        "lib/modules",
        "lib64",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
    ] {
        entries.push((dir.to_owned(), 0o040755, Vec::new()));
    }
    entries.push(("init".into(), 0o100755, INIT.as_bytes().to_vec()));
    entries.push(("bin/busybox".into(), 0o100755, bytes));
    entries.push((
        "bin/banger-agent".into(),
        0o100755,
        std::fs::read(agent).unwrap(),
    ));
    // The agent of a debug build is dynamically linked: its libraries go along.
    let ldd = must_run(Command::new("ldd").arg(agent), "list the agent's libraries");
    for library in ldd.split_whitespace().filter(|word| word.starts_with('/')) {
        let bytes = std::fs::read(library).unwrap();
        let path = library.trim_start_matches('/').to_owned();
        if let Some(parent) = Path::new(&path).parent()
            && !entries.iter().any(|(name, _, _)| Path::new(name) == parent)
        {
            let mut dirs = Vec::new();
            for ancestor in parent.ancestors().filter(|a| !a.as_os_str().is_empty()) {
                dirs.push(ancestor.to_string_lossy().into_owned());
            }
            for dir in dirs.into_iter().rev() {
                if !entries.iter().any(|(name, _, _)| *name == dir) {
                    entries.push((dir, 0o040755, Vec::new()));
                }
            }
        }
        entries.push((path, 0o100755, bytes));
    }
    let modules = kernel_tree.join(format!("lib/modules/{KERNEL_RELEASE}/kernel"));
    for (module, relative) in [
        ("virtio_ring", "drivers/virtio/virtio_ring.ko"),
        ("virtio", "drivers/virtio/virtio.ko"),
        ("virtio_mmio", "drivers/virtio/virtio_mmio.ko"),
        ("virtio_console", "drivers/char/virtio_console.ko"),
        ("virtio_blk", "drivers/block/virtio_blk.ko"),
        ("button", "drivers/acpi/button.ko"),
        ("evdev", "drivers/input/evdev.ko"),
    ] {
        let bytes = std::fs::read(modules.join(relative))
            .unwrap_or_else(|e| panic!("module {module} ({relative}): {e}"));
        entries.push((format!("lib/modules/{module}.ko"), 0o100644, bytes));
    }
    let partial = out.with_extension("partial");
    std::fs::write(&partial, cpio_newc(&entries)).unwrap();
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&partial, out).unwrap();
}

/// Whether the 64-bit little-endian ELF file `bytes` names a dynamic loader (PT_INTERP).
fn has_interpreter(bytes: &[u8]) -> bool {
    let word = |at: usize, len: usize| -> u64 {
        let mut value = 0u64;
        for (i, byte) in bytes[at..at + len].iter().enumerate() {
            value |= u64::from(*byte) << (8 * i);
        }
        value
    };
    assert!(
        bytes.len() >= 64 && &bytes[..4] == b"\x7fELF",
        "not an ELF file"
    );
    let (phoff, phentsize, phnum) = (
        word(0x20, 8) as usize,
        word(0x36, 2) as usize,
        word(0x38, 2) as usize,
    );
    (0..phnum).any(|i| word(phoff + i * phentsize, 4) == 3)
}

/// An uncompressed `newc` cpio archive, what the kernel unpacks as an initramfs.
fn cpio_newc(entries: &[(String, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let pad = |out: &mut Vec<u8>| {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    };
    let trailer = ("TRAILER!!!".to_owned(), 0, Vec::new());
    for (ino, (name, mode, data)) in entries.iter().chain([&trailer]).enumerate() {
        let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
        let fields = [
            ino as u32 + 1,
            *mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for field in fields {
            out.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(&mut out);
        out.extend_from_slice(data);
        pad(&mut out);
    }
    out
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        tokio qmp_drives_a_bare_microvm_and_quit_ends_it,
        tokio a_running_microvm_is_readopted_by_pid_and_start_time_and_killed,
        tokio a_failed_launch_leaves_no_process_and_says_why,
        tokio debian_cloud_kernel_boots_and_its_agent_answers_over_virtio_serial,
        tokio a_guest_that_ignores_the_power_button_is_killed_after_the_timeout,
        tokio bangerd_runs_a_qemu_vm_from_create_to_delete needs(Root),
    ]
}
