//! The Firecracker API client and the VMM backend against a running VMM process: the project's
//! fake firecracker always, and a real firecracker as well when `BANGER_FIRECRACKER=/path` is
//! set. A real guest cannot boot on these machines (PVM), so against the real binary only the
//! pre-boot API and its validation run; the tests that need a boot, or the fake's fault knobs,
//! run against the fake alone.
//!
//! The fake is `target/<profile>/fake-firecracker`, beside this test binary's `deps/`
//! directory. The first test in each test process that needs it runs `cargo build -p
//! banger-tools --bin fake-firecracker` (a no-op when it is fresh): a plain `cargo test -p
//! banger` does not build other packages' binaries, and a stale fake would test old code.
//!
//! Each test has its own directory under /tmp (short paths: a unix socket path must fit in
//! 107 bytes) and kills the process group of every VMM it started, so tests run in parallel
//! and leave nothing behind. Waiting is polling with a deadline, never a bare sleep.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use banger::host::firecracker::{
    BootSource, Drive, FirecrackerClient, FirecrackerError, InstanceState, MachineConfig, Method,
    NetworkInterface, Vsock, VsockError, vsock_connect, vsock_connect_timeout,
};
use banger::host::process::{self, Liveness};
use banger::host::vmm::{
    DriveSpec, FirecrackerVmm, KillOutcome, LaunchSpec, Launched, Spawned, Vmm, VsockSpec,
    describe_status,
};
use banger_test_harness::{Test, Tier};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Fixtures.
// ---------------------------------------------------------------------------------------------

/// The fake firecracker binary, brought up to date once per test process.
pub(crate) fn fake_binary() -> &'static Path {
    static FAKE: OnceLock<PathBuf> = OnceLock::new();
    FAKE.get_or_init(|| crate::support::workspace_binary("banger-tools", "fake-firecracker"))
}

/// A real firecracker to test the pre-boot API against, when one is configured.
fn real_binary() -> Option<PathBuf> {
    banger_test_harness::firecracker()
}

/// Which VMM a test runs: the fake, or the real firecracker of the harness's `firecracker`
/// tier. Tests that run on either are registered once per VMM ([`per_vmm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VmmKind {
    Fake,
    Real,
}

impl VmmKind {
    pub(crate) fn binary(self) -> PathBuf {
        match self {
            VmmKind::Fake => fake_binary().to_path_buf(),
            VmmKind::Real => real_binary().expect("the firecracker tier names a binary"),
        }
    }
}

/// Registers `test` twice: `NAME::fake` against the fake firecracker, and
/// `NAME::firecracker` against a real one (the `firecracker` tier, skipped without
/// `BANGER_FIRECRACKER`), both in addition needing `needs`.
pub(crate) fn per_vmm<F>(
    module_path: &str,
    name: &str,
    needs: &[Tier],
    test: impl FnOnce(VmmKind) -> F + Clone + Send + 'static,
) -> [Test; 2]
where
    F: std::future::Future<Output = ()>,
{
    let name = banger_test_harness::name(module_path, name);
    let real = test.clone();
    [
        Test::tokio(format!("{name}::fake"), move || test(VmmKind::Fake)).needs(needs),
        Test::tokio(format!("{name}::firecracker"), move || real(VmmKind::Real))
            .needs(needs)
            .needs(&[Tier::Firecracker]),
    ]
}

/// The fake with no agent: tests that need a guest listener provide one themselves.
fn fake() -> FirecrackerVmm {
    FirecrackerVmm::new(fake_binary()).with_env("BANGER_FAKE_AGENT", "none")
}

/// Every VMM the pre-boot tests run against: the fake, and the real one when configured.
fn every_vmm() -> Vec<FirecrackerVmm> {
    let mut vmms = vec![fake()];
    if let Some(real) = real_binary() {
        vmms.push(FirecrackerVmm::new(real));
    }
    vmms
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("banger-fc-")
        .tempdir_in("/tmp")
        .expect("a scratch directory")
}

/// A launch spec with a kernel file, a root drive and a vsock device in `dir`.
fn launch_spec(dir: &Path) -> LaunchSpec {
    let kernel = dir.join("vmlinux");
    let rootfs = dir.join("rootfs.ext4");
    std::fs::write(&kernel, b"not really a kernel").unwrap();
    std::fs::write(&rootfs, vec![0u8; 4096]).unwrap();
    LaunchSpec {
        id: "test-vm".to_string(),
        api_socket: dir.join("api.sock"),
        console_log: dir.join("console.log"),
        vmm_log: Some(dir.join("firecracker.log")),
        vcpus: 2,
        mem_mib: 256,
        kernel,
        initrd: None,
        boot_args: "console=ttyS0 reboot=k panic=1".to_string(),
        drives: vec![DriveSpec {
            id: "rootfs".to_string(),
            path: rootfs,
            root: true,
            read_only: false,
        }],
        net: None,
        vsock: Some(VsockSpec {
            cid: 3,
            uds_path: dir.join("v.sock"),
        }),
        agent_serial: None,
    }
}

fn guest_socket(spec: &LaunchSpec) -> PathBuf {
    let mut path = spec
        .vsock
        .as_ref()
        .unwrap()
        .uds_path
        .clone()
        .into_os_string();
    path.push(".guest");
    PathBuf::from(path)
}

/// A VMM process that is killed (with its process group) when the test ends, however it ends.
struct Running {
    spawned: Option<Spawned>,
}

impl Running {
    fn new(spawned: Spawned) -> Running {
        Running {
            spawned: Some(spawned),
        }
    }

    fn launched(&self) -> &Launched {
        &self.spawned.as_ref().unwrap().launched
    }

    fn client(&self) -> FirecrackerClient {
        FirecrackerClient::new(&self.launched().api_socket)
    }

    /// The exit status, waiting at most [`DEADLINE`].
    async fn wait(&mut self) -> std::process::ExitStatus {
        let child = self.spawned.as_mut().unwrap().child.as_mut().unwrap();
        tokio::time::timeout(DEADLINE, child.wait())
            .await
            .expect("the VMM exits in time")
            .expect("wait for the VMM")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(spawned) = &self.spawned {
            let vm = &spawned.launched;
            let _ = process::signal_recorded(vm.pid, vm.start_time_ticks, Signal::SIGKILL);
        }
    }
}

async fn spawn(vmm: &FirecrackerVmm, spec: &LaunchSpec) -> Running {
    Running::new(vmm.spawn(spec).await.expect("spawn the VMM"))
}

async fn launch(vmm: &FirecrackerVmm, spec: &LaunchSpec) -> Running {
    Running::new(vmm.launch(spec).await.expect("launch the VM"))
}

/// Polls the console log until it contains `needle`; returns the whole log.
async fn console_contains(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "console never showed {needle:?}; it has:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn api_fault(result: Result<impl std::fmt::Debug, FirecrackerError>) -> String {
    match result {
        Err(FirecrackerError::Api {
            status: 400,
            fault_message,
            ..
        }) => fault_message,
        other => panic!("expected a 400 with a fault_message, got {other:?}"),
    }
}

/// Writes an executable script through a child process, so that no file descriptor open for
/// writing ever exists in this (forking) test process: exec'ing a file that some other test's
/// child still holds open for writing fails with ETXTBSY.
fn write_script(path: &Path, text: &str) {
    let status = Command::new("sh")
        .args(["-c", "printf '%s' \"$0\" > \"$1\" && chmod 755 \"$1\""])
        .arg(text)
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

// ---------------------------------------------------------------------------------------------
// Pre-boot API: the fake and, when configured, the real firecracker.
// ---------------------------------------------------------------------------------------------

async fn configuration_is_accepted_and_read_back_before_boot(vmm: VmmKind) {
    let vmm = FirecrackerVmm::new(vmm.binary()).with_env("BANGER_FAKE_AGENT", "none");
    let dir = scratch();
    let spec = launch_spec(dir.path());
    let vm = spawn(&vmm, &spec).await;
    vmm.configure(vm.launched(), &spec).await.unwrap();

    let client = vm.client();
    let info = client.describe_instance().await.unwrap();
    assert_eq!(info.id, "test-vm");
    assert_eq!(info.state, InstanceState::NotStarted);
    assert!(!info.vmm_version.is_empty());
    assert!(!client.version().await.unwrap().is_empty());
    let config = client.get_machine_config().await.unwrap();
    assert_eq!((config.vcpu_count, config.mem_size_mib), (2, 256));
    // PUT replaces; a second PUT is as good as the first (configure is an ensure).
    vmm.configure(vm.launched(), &spec).await.unwrap();
    // The vsock device bound its socket at PUT /vsock.
    assert!(spec.vsock.as_ref().unwrap().uds_path.exists());
}

/// The VMM opens the tap when the interface is configured (TUNSETIFF), so a host interface
/// that is not a tap is refused there, with the kernel's error in Firecracker's words.
async fn an_interface_that_is_not_a_tap_is_refused_when_configured(vmm: VmmKind) {
    let vmm = FirecrackerVmm::new(vmm.binary()).with_env("BANGER_FAKE_AGENT", "none");
    let dir = scratch();
    let spec = launch_spec(dir.path());
    let vm = spawn(&vmm, &spec).await;
    let binary = vmm.binary.display().to_string();
    let net = NetworkInterface {
        iface_id: "eth0".to_string(),
        host_dev_name: "lo".to_string(),
        guest_mac: Some("02:fc:ac:1e:00:02".to_string()),
    };
    let fault = api_fault(vm.client().put_network_interface(&net).await);
    assert_eq!(
        fault,
        "Network config error: Could not create the network device: Open tap device \
         failed: Error while creating ifreq structure: Invalid argument (os error 22). \
         Invalid TUN/TAP Backend provided by lo. Check our documentation on setting up \
         the network devices.",
        "{binary}"
    );
}

async fn bad_requests_get_400_with_firecrackers_fault_message(vmm: VmmKind) {
    let vmm = FirecrackerVmm::new(vmm.binary()).with_env("BANGER_FAKE_AGENT", "none");
    let dir = scratch();
    let spec = launch_spec(dir.path());
    let vm = spawn(&vmm, &spec).await;
    let client = vm.client();
    let binary = vmm.binary.display().to_string();

    let fault = api_fault(client.put_machine_config(&MachineConfig::new(0, 128)).await);
    assert!(fault.contains("vCPUs"), "{binary}: {fault}");
    let fault = api_fault(
        client
            .put_machine_config(&MachineConfig::new(33, 128))
            .await,
    );
    assert!(fault.contains("vCPUs"), "{binary}: {fault}");
    let fault = api_fault(client.put_machine_config(&MachineConfig::new(1, 0)).await);
    assert!(fault.contains("memory size"), "{binary}: {fault}");
    // A refused update changed nothing: the defaults are still there.
    let config = client.get_machine_config().await.unwrap();
    assert_eq!((config.vcpu_count, config.mem_size_mib), (1, 128));

    let missing = Drive {
        drive_id: "work".to_string(),
        path_on_host: dir.path().join("no-such-disk"),
        is_root_device: false,
        is_read_only: false,
        partuuid: None,
        cache_type: None,
        io_engine: None,
    };
    let fault = api_fault(client.put_drive(&missing).await);
    assert!(
        fault.contains("No such file or directory"),
        "{binary}: {fault}"
    );

    let root = Drive {
        drive_id: "rootfs".to_string(),
        path_on_host: spec.drives[0].path.clone(),
        is_root_device: true,
        ..missing.clone()
    };
    client.put_drive(&root).await.unwrap();
    let second_root = Drive {
        drive_id: "other".to_string(),
        ..root.clone()
    };
    let fault = api_fault(client.put_drive(&second_root).await);
    assert!(
        fault.contains("root block device already exists"),
        "{binary}: {fault}"
    );

    let fault = api_fault(
        client
            .put_boot_source(&BootSource {
                kernel_image_path: dir.path().join("no-kernel"),
                boot_args: None,
                initrd_path: None,
            })
            .await,
    );
    assert!(
        fault.contains("kernel file cannot be opened"),
        "{binary}: {fault}"
    );

    // Bodies the typed client cannot express, through the raw request.
    for (path, body, expect) in [
        (
            "/machine-config",
            &b"{not json"[..],
            "deserializing the json body",
        ),
        (
            "/machine-config",
            br#"{"vcpu_count": 1}"#,
            "missing field `mem_size_mib`",
        ),
        (
            "/machine-config",
            br#"{"vcpu_count": 1, "mem_size_mib": 128, "bogus": 1}"#,
            "unknown field `bogus`",
        ),
        (
            "/actions",
            br#"{"action_type": "Reboot"}"#,
            "unknown variant `Reboot`",
        ),
        (
            "/drives/a",
            br#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": false}"#,
            "does not match",
        ),
        (
            "/network-interfaces/eth0",
            br#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz"}"#,
            "The provided MAC address is invalid.",
        ),
        ("/logger", br#"{"level": "Loud"}"#, "Invalid LevelFilter"),
    ] {
        let response = client.request(Method::Put, path, Some(body)).await.unwrap();
        assert_eq!(response.status, 400, "{binary}: PUT {path}");
        let fault: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        let fault = fault["fault_message"].as_str().unwrap();
        assert!(fault.contains(expect), "{binary}: PUT {path}: {fault}");
    }

    // Drive updates are post-boot calls; the body is still parsed first.
    let response = client
        .request(
            Method::Patch,
            "/drives/rootfs",
            Some(br#"{"drive_id": "rootfs", "path_on_host": "/x"}"#),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 400, "{binary}: PATCH /drives");
    let fault: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    let fault = fault["fault_message"].as_str().unwrap();
    assert!(
        fault.contains("before starting the microVM"),
        "{binary}: {fault}"
    );

    // The deprecated vsock_id is accepted, with a Deprecation header.
    let body = serde_json::json!({
        "vsock_id": "vsock0",
        "guest_cid": 3,
        "uds_path": dir.path().join("old.sock"),
    });
    let body = body.to_string();
    let response = client
        .request(Method::Put, "/vsock", Some(body.as_bytes()))
        .await
        .unwrap();
    assert_eq!(response.status, 204, "{binary}: PUT /vsock with vsock_id");
    assert_eq!(response.header("deprecation"), Some("true"), "{binary}");

    // Nothing to start without a kernel (the bad boot source above was not kept).
    let fault = api_fault(client.instance_start().await);
    assert!(fault.contains("kernel configuration"), "{binary}: {fault}");
    let fault = api_fault(client.send_ctrl_alt_del().await);
    assert!(
        fault.contains("before starting the microVM"),
        "{binary}: {fault}"
    );
    let fault = api_fault(client.pause().await);
    assert!(
        fault.contains("before starting the microVM"),
        "{binary}: {fault}"
    );
}

async fn an_existing_vsock_path_is_refused_by_firecracker_and_replaced_by_configure(vmm: VmmKind) {
    let vmm = FirecrackerVmm::new(vmm.binary()).with_env("BANGER_FAKE_AGENT", "none");
    let dir = scratch();
    let spec = launch_spec(dir.path());
    let uds = spec.vsock.as_ref().unwrap().uds_path.clone();
    std::fs::write(&uds, b"").unwrap();
    let vm = spawn(&vmm, &spec).await;
    let vsock = Vsock {
        guest_cid: 3,
        uds_path: uds.clone(),
    };
    let fault = api_fault(vm.client().put_vsock(&vsock).await);
    // EADDRINUSE: glibc says "Address already in use", musl (Firecracker's releases are musl
    // builds) "Address in use"; the errno is what both say.
    assert!(
        fault.contains("Error binding to the host-side Unix socket")
            && fault.contains("(os error 98)"),
        "{fault}"
    );
    // configure removes a stale socket file nobody serves before PUT /vsock.
    vmm.configure(vm.launched(), &spec).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Boot and after: the fake only.
// ---------------------------------------------------------------------------------------------

async fn launch_boots_and_the_console_shows_the_kernel_command_line() {
    let dir = scratch();
    let spec = launch_spec(dir.path());
    let vmm = fake();
    let mut vm = launch(&vmm, &spec).await;
    let info = vm.client().describe_instance().await.unwrap();
    assert_eq!(info.state, InstanceState::Running);
    let console = console_contains(&spec.console_log, "Run /sbin/init").await;
    assert!(
        console.contains("Command line: console=ttyS0 reboot=k panic=1 root=/dev/vda rw"),
        "{console}"
    );
    assert_eq!(
        process::proc_start_time_ticks(vm.launched().pid).unwrap(),
        vm.launched().start_time_ticks
    );
    // start is an ensure: a running instance is left alone.
    vmm.start(vm.launched()).await.unwrap();

    assert_eq!(vmm.kill(vm.launched()).await.unwrap(), KillOutcome::Killed);
    assert_eq!(describe_status(vm.wait().await), "killed by SIGKILL");
    // Killing again finds nothing to kill.
    assert!(matches!(
        vmm.kill(vm.launched()).await.unwrap(),
        KillOutcome::AlreadyDead(_)
    ));
}

async fn configuration_after_start_is_refused() {
    let dir = scratch();
    let spec = launch_spec(dir.path());
    let vm = launch(&fake(), &spec).await;
    let client = vm.client();
    let post_boot = "The requested operation is not supported after starting the microVM.";

    assert_eq!(
        api_fault(client.put_machine_config(&MachineConfig::new(1, 128)).await),
        post_boot
    );
    assert_eq!(api_fault(client.instance_start().await), post_boot);
    let drive = Drive {
        drive_id: "late".to_string(),
        path_on_host: spec.drives[0].path.clone(),
        is_root_device: false,
        is_read_only: true,
        partuuid: None,
        cache_type: None,
        io_engine: None,
    };
    assert_eq!(api_fault(client.put_drive(&drive).await), post_boot);
    let net = NetworkInterface {
        iface_id: "eth0".to_string(),
        host_dev_name: "tap0".to_string(),
        guest_mac: None,
    };
    assert_eq!(
        api_fault(client.put_network_interface(&net).await),
        post_boot
    );
    // Reading still works, and pause/resume are post-boot calls.
    assert_eq!(client.get_machine_config().await.unwrap().vcpu_count, 2);
    client.pause().await.unwrap();
    assert_eq!(
        client.describe_instance().await.unwrap().state,
        InstanceState::Paused
    );
    client.resume().await.unwrap();
    assert_eq!(
        client.describe_instance().await.unwrap().state,
        InstanceState::Running
    );
}

async fn ctrl_alt_del_makes_the_vmm_exit_zero() {
    let dir = scratch();
    let spec = launch_spec(dir.path());
    let vmm = fake();
    let mut vm = launch(&vmm, &spec).await;
    vmm.shutdown(vm.launched()).await.unwrap();
    assert_eq!(describe_status(vm.wait().await), "exit status 0");
    let console = console_contains(&spec.console_log, "reboot: Restarting system").await;
    assert!(console.contains("Ctrl-Alt-Del"), "{console}");
    assert!(vmm.wait_dead(vm.launched(), DEADLINE).await.unwrap());
}

async fn vsock_connects_to_the_guest_listener_and_reports_a_silent_port() {
    let dir = scratch();
    let spec = launch_spec(dir.path());
    // The test is the guest: it listens where the agent would.
    let guest = UnixListener::bind(guest_socket(&spec)).unwrap();
    let _vm = launch(&fake(), &spec).await;
    let uds = spec.vsock.as_ref().unwrap().uds_path.clone();

    let echo = tokio::spawn(async move {
        let (mut stream, _) = guest.accept().await.unwrap();
        // The guest speaks first; the client must not have eaten it with the OK line.
        stream.write_all(b"hello from the guest\n").await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        stream.write_all(&buf).await.unwrap();
        guest // keep listening until the test is done with it
    });
    let mut stream = vsock_connect(&uds, 1024).await.unwrap();
    let mut greeting = [0u8; 21];
    stream.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"hello from the guest\n");
    stream.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    stream.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");
    let guest = echo.await.unwrap();

    // Nothing listens in the guest any more: the fake closes the connection, as Firecracker
    // does, and the client says so.
    drop(guest);
    std::fs::remove_file(guest_socket(&spec)).unwrap();
    let err = vsock_connect(&uds, 1024).await.unwrap_err();
    assert!(
        matches!(err, VsockError::NoListener { port: 1024, .. }),
        "{err}"
    );
}

async fn config_file_boots_at_once_with_and_without_the_api() {
    let dir = scratch();
    let spec = launch_spec(dir.path());
    let uds = spec.vsock.as_ref().unwrap().uds_path.clone();
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": spec.kernel, "boot_args": "console=ttyS0"},
        "drives": [{"drive_id": "rootfs", "path_on_host": spec.drives[0].path,
                    "is_root_device": true, "is_read_only": false}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "vsock": {"guest_cid": 7, "uds_path": uds},
    });
    let config_path = dir.path().join("vm.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let _guest = UnixListener::bind(guest_socket(&spec)).unwrap();

    // --no-api: no API socket; the guest answers on vsock.
    let mut child = tokio::process::Command::new(fake_binary())
        .args(["--no-api", "--id", "from-file", "--config-file"])
        .arg(&config_path)
        .env("BANGER_FAKE_AGENT", "none")
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while vsock_connect(&uds, 1024).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the config-file guest never answered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!spec.api_socket.exists());
    child.kill().await.unwrap();
    std::fs::remove_file(&uds).unwrap();

    // With the API: it reports Running straight away.
    let mut child = tokio::process::Command::new(fake_binary())
        .arg("--api-sock")
        .arg(&spec.api_socket)
        .arg("--config-file")
        .arg(&config_path)
        .env("BANGER_FAKE_AGENT", "none")
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = FirecrackerClient::new(&spec.api_socket);
    let deadline = Instant::now() + DEADLINE;
    let info = loop {
        match client.describe_instance().await {
            Ok(info) => break info,
            Err(err) => assert!(Instant::now() < deadline, "no API: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(info.state, InstanceState::Running);
    child.kill().await.unwrap();

    // A config file that does not parse fails before any boot, so the real firecracker runs
    // this part too: it exits 1 (v1.16.1's `GenericError`; 152 is only for a bad `--level`).
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"drives": []}"#).unwrap();
    for binary in std::iter::once(fake_binary().to_path_buf()).chain(real_binary()) {
        let status = Command::new(&binary)
            .args(["--no-api", "--config-file"])
            .arg(&bad)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(1), "{}", binary.display());
    }
}

async fn crash_on_boot_fails_the_launch_with_the_console_tail_and_leaves_nothing() {
    let dir = scratch();
    let spec = launch_spec(dir.path());
    let vmm = fake().with_env("FAKE_FC_CRASH_ON_BOOT", "1");
    let vm = vmm.spawn(&spec).await.unwrap();
    let launched = vm.launched.clone();
    let _guard = Running::new(vm);
    vmm.configure(&launched, &spec).await.unwrap();
    let err = vmm.start(&launched).await.unwrap_err();
    // The fake died mid-request: no answer (EOF, or a reset on some kernels).
    assert!(
        matches!(
            &err,
            banger::host::vmm::VmmError::Api {
                source: FirecrackerError::Protocol { .. } | FirecrackerError::Io { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(vmm.wait_dead(&launched, DEADLINE).await.unwrap());
    let console = console_contains(&spec.console_log, "panicked").await;
    assert!(console.contains("FAKE_FC_CRASH_ON_BOOT"), "{console}");

    // Through launch: the error carries the console tail, and no process is left.
    let dir = scratch();
    let spec = launch_spec(dir.path());
    let err = vmm.launch(&spec).await.unwrap_err();
    match err {
        banger::host::vmm::VmmError::Api { console_tail, .. } => {
            assert!(console_tail.contains("panicked"), "{console_tail}")
        }
        other => panic!("unexpected: {other}"),
    }
}

async fn refused_endpoints_and_slow_boots_come_from_the_knobs() {
    let dir = scratch();
    let spec = launch_spec(dir.path());
    let vmm = fake().with_env("FAKE_FC_REFUSE_API", "/drives");
    let err = vmm.launch(&spec).await.unwrap_err();
    let banger::host::vmm::VmmError::Api { step, source, .. } = err else {
        panic!("unexpected: {err}");
    };
    assert_eq!(step, "attach a drive");
    assert!(source.fault_message().unwrap().contains("fault injected"));

    // A guest that takes a minute to boot: the API says Running, vsock does not answer yet.
    let dir = scratch();
    let spec = launch_spec(dir.path());
    let _guest = UnixListener::bind(guest_socket(&spec)).unwrap();
    let vmm = fake().with_env("FAKE_FC_BOOT_DELAY_MS", "60000");
    let vm = launch(&vmm, &spec).await;
    assert_eq!(
        vm.client().describe_instance().await.unwrap().state,
        InstanceState::Running
    );
    let uds = spec.vsock.as_ref().unwrap().uds_path.clone();
    let err = vsock_connect_timeout(&uds, 1024, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, VsockError::NoListener { .. }), "{err}");
}

async fn the_agent_gets_its_socket_and_cid_and_dies_with_the_vmm() {
    let dir = scratch();
    let agent = dir.path().join("agent.sh");
    // Stands in for banger-agent: says what it was given, then waits to be stopped.
    write_script(
        &agent,
        "#!/bin/sh\necho \"agent pid=$$ args=$* cid=$BANGER_AGENT_CID\"\nexec sleep 600\n",
    );
    let vmm = FirecrackerVmm::new(fake_binary())
        .with_env("BANGER_FAKE_AGENT", agent.display().to_string());

    // Ctrl-Alt-Del stops the agent, then the VMM exits 0.
    let spec = launch_spec(dir.path());
    let mut vm = launch(&vmm, &spec).await;
    let expect = format!("args=--listen unix:{} cid=3", guest_socket(&spec).display());
    let console = console_contains(&spec.console_log, &expect).await;
    let agent_pid = agent_pid_on(&console);
    let agent_start = process::proc_start_time_ticks(agent_pid).unwrap();
    vmm.shutdown(vm.launched()).await.unwrap();
    assert_eq!(describe_status(vm.wait().await), "exit status 0");
    assert!(
        process::wait_dead(agent_pid, agent_start, DEADLINE)
            .await
            .unwrap()
    );

    // SIGKILL of the VMM alone: the agent goes too (parent-death signal).
    let dir2 = scratch();
    let spec = launch_spec(dir2.path());
    let mut vm = launch(&vmm, &spec).await;
    let console = console_contains(&spec.console_log, "agent pid=").await;
    let agent_pid = agent_pid_on(&console);
    let agent_start = process::proc_start_time_ticks(agent_pid).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm.launched().pid as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(describe_status(vm.wait().await), "killed by SIGKILL");
    assert!(
        process::wait_dead(agent_pid, agent_start, DEADLINE)
            .await
            .unwrap()
    );
    assert_ne!(
        process::liveness(agent_pid, agent_start).unwrap(),
        Liveness::Alive
    );
}

fn agent_pid_on(console: &str) -> u32 {
    console
        .lines()
        .find_map(|line| line.split("agent pid=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no agent pid on the console:\n{console}"))
}

/// A tap made by banger-helper (persistent, owned by this user, on the bridge) is what the
/// VMM opens when the interface is configured — for the fake, and for a real Firecracker
/// when one is configured. The VMMs run inside a test network namespace: they are spawned
/// from a thread that entered it, and a child inherits its forking thread's namespace.
fn a_tap_made_by_banger_helper_is_opened_by_the_vmm() {
    let root = crate::support::TestRoot::new();
    let network = root.network().expect("a test network");
    let helper = banger_helper::HelperClient::new(network.socket());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(helper.ensure_network(&banger_helper::NetworkSpec {
            bridge: "banger0".into(),
            gateway: [172, 30, 0, 1].into(),
            prefix_len: 24,
        }))
        .expect("ensure the bridge");
    runtime
        .block_on(helper.ensure_tap("bt1fc", "banger0"))
        .expect("make the tap");
    let namespace = network.namespace();
    let held = std::thread::spawn(move || {
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("enter the test network namespace");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let mut held = Vec::new();
                for vmm in every_vmm() {
                    let dir = scratch();
                    let mut spec = launch_spec(dir.path());
                    spec.net = Some(banger::host::vmm::NetSpec {
                        tap: "bt1fc".into(),
                        mac: Some("02:fc:ac:1e:00:02".into()),
                    });
                    let vm = spawn(&vmm, &spec).await;
                    vmm.configure(vm.launched(), &spec)
                        .await
                        .unwrap_or_else(|e| panic!("{}: {e}", vmm.binary.display()));
                    held.push((vmm.binary.clone(), taps_open_in(vm.launched().pid)));
                    // Dropping `vm` kills the VMM, which lets the next one have the tap.
                }
                held
            })
    })
    .join()
    .expect("the VMM thread panicked");
    for (binary, taps) in held {
        assert_eq!(taps, ["bt1fc"], "{}", binary.display());
    }
    assert_eq!(
        network.taps(),
        ["bt1fc"],
        "the persistent tap outlives the VMMs"
    );
}

/// Names of the taps process `pid` holds open (the tun driver's fdinfo says `iff: NAME`).
pub(crate) fn taps_open_in(pid: u32) -> Vec<String> {
    let mut taps = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        taps.extend(
            info.lines()
                .filter_map(|line| line.strip_prefix("iff:"))
                .map(|name| name.trim().to_owned()),
        );
    }
    taps
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    let here = module_path!();
    let mut tests = Vec::new();
    // The pre-boot API, against the fake and a real firecracker alike.
    tests.extend(per_vmm(
        here,
        "configuration_is_accepted_and_read_back_before_boot",
        &[],
        configuration_is_accepted_and_read_back_before_boot,
    ));
    tests.extend(per_vmm(
        here,
        "an_interface_that_is_not_a_tap_is_refused_when_configured",
        &[],
        an_interface_that_is_not_a_tap_is_refused_when_configured,
    ));
    tests.extend(per_vmm(
        here,
        "bad_requests_get_400_with_firecrackers_fault_message",
        &[],
        bad_requests_get_400_with_firecrackers_fault_message,
    ));
    tests.extend(per_vmm(
        here,
        "an_existing_vsock_path_is_refused_by_firecracker_and_replaced_by_configure",
        &[],
        an_existing_vsock_path_is_refused_by_firecracker_and_replaced_by_configure,
    ));
    tests.extend(banger_test_harness::tests![
        tokio launch_boots_and_the_console_shows_the_kernel_command_line,
        tokio configuration_after_start_is_refused,
        tokio ctrl_alt_del_makes_the_vmm_exit_zero,
        tokio vsock_connects_to_the_guest_listener_and_reports_a_silent_port,
        tokio config_file_boots_at_once_with_and_without_the_api,
        tokio crash_on_boot_fails_the_launch_with_the_console_tail_and_leaves_nothing,
        tokio refused_endpoints_and_slow_boots_come_from_the_knobs,
        tokio the_agent_gets_its_socket_and_cid_and_dies_with_the_vmm,
        sync a_tap_made_by_banger_helper_is_opened_by_the_vmm needs(Root),
    ]);
    tests
}
