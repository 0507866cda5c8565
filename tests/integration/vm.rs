//! The VM lifecycle through the real bangerd, booting the project's fake firecracker (which
//! "boots" by running the real guest agent as a local process).
//!
//! Each test has its own `BANGER_ROOT`, a small config (64 MiB work disks, short timeouts),
//! a kernel imported with `kernel.import` and a sparse rootfs registered with
//! `image.register`. Dropping a [`Lab`] SIGKILLs every VMM process group whose command line
//! names its root, so a failing test leaks nothing. Waiting is polling with a deadline.
//!
//! Every test needs root (the harness's root tier): each VM gets a tap from a real
//! banger-helper in the test's own network namespace. Most need a booted guest, which only
//! the fake can give here (a real guest cannot boot on these PVM hosts, and the tests' kernel
//! is not a kernel), so they always run the fake. Those whose guest never boots (a create
//! that fails at boot, and what is undone after it) are registered once per VMM
//! ([`per_vmm`]): `NAME::fake`, and `NAME::firecracker` against the real firecracker that
//! `BANGER_FIRECRACKER` names, which fails to boot the tests' kernel just as the fake's
//! `FAKE_FC_CRASH_ON_BOOT` makes it fail (that knob means nothing to the real one).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use banger::api::{VmCreateResult, VmDeleteResult, VmListResult, VmResult, VmShowResult};
use banger::host::firecracker::{FirecrackerClient, Method};
use banger::host::process::{self, Liveness};
use banger::rpc::{Client, ClientError};
use banger_events::{Event, Handle, VmId, VmState};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::firecracker::{VmmKind, fake_binary, per_vmm};
use crate::support::{
    Bangerd, TestRoot, all_events, kernel_source, processes_mentioning, rootfs_file,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// The steps of `vm.create`, in order (persisted names).
pub const CREATE_STEPS: [&str; 9] = [
    "allocate",
    "prepare-rootfs",
    "prepare-work-disk",
    "network",
    "launch-vmm",
    "configure",
    "instance-start",
    "wait-for-agent",
    "ssh-setup",
];

/// A bangerd with a kernel `k` and an image `img`, and the environment to restart it with.
pub(crate) struct Lab {
    pub(crate) daemon: Bangerd,
    pub(crate) env: Vec<(String, String)>,
    root_path: PathBuf,
}

impl Lab {
    pub(crate) async fn new() -> Lab {
        Self::with(&[]).await
    }

    /// With extra environment for bangerd (and the VMMs it starts).
    async fn with(extra: &[(&str, &str)]) -> Lab {
        Self::configured(extra, "").await
    }

    /// With extra environment, and extra lines for the `[vm]` section of the config.
    async fn configured(extra: &[(&str, &str)], vm_config: &str) -> Lab {
        Self::on(VmmKind::Fake, extra, vm_config).await
    }

    /// Running `vmm`, with extra environment and extra `[vm]` config lines.
    async fn on(vmm: VmmKind, extra: &[(&str, &str)], vm_config: &str) -> Lab {
        Self::on_root(TestRoot::new(), vmm, extra, vm_config).await
    }

    /// On a given root (one on a test filesystem), running `vmm`.
    pub(crate) async fn on_root(
        root: TestRoot,
        vmm: VmmKind,
        extra: &[(&str, &str)],
        vm_config: &str,
    ) -> Lab {
        let root_path = root.path().to_path_buf();
        let config_dir = root.layout().config_dir;
        std::fs::create_dir_all(&config_dir).unwrap();
        std::fs::write(
            config_dir.join("config.toml"),
            format!(
                "[vm]\nvcpus = 1\nmemory = \"256M\"\nwork_disk = \"64M\"\n{vm_config}\n[timeouts]\nboot = \"10s\"\nstop = \"5s\"\n\n# No spare taps: these tests read exact operation lists and event sequences, which\n# background pool fills would interleave with (tests/integration/network.rs covers them).\n[network]\ntap_pool = 0\n"
            ),
        )
        .unwrap();
        let kernel_dir = kernel_source(&root.scratch("kernel"), "6.1.0-test", false);
        let rootfs = rootfs_file(&root.scratch("image").join("rootfs.ext4"), 4 << 20);
        let mut env = vec![
            (
                "BANGER_FIRECRACKER".to_owned(),
                vmm.binary().display().to_string(),
            ),
            (
                "BANGER_FAKE_AGENT".to_owned(),
                env!("CARGO_BIN_EXE_banger-agent").to_owned(),
            ),
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let borrowed: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let daemon = Bangerd::start_on_with(root, &borrowed);
        let lab = Lab {
            daemon,
            env,
            root_path,
        };
        let mut client = lab.client().await;
        let _: Value = client
            .call(
                "kernel.import",
                &json!({"name": "k", "from": kernel_dir.display().to_string()}),
            )
            .await
            .expect("import the kernel");
        let _: Value = client
            .call(
                "image.register",
                &json!({"name": "img", "rootfs": rootfs.display().to_string(), "kernel": "k"}),
            )
            .await
            .expect("register the image");
        lab
    }

    async fn client(&self) -> Client {
        self.daemon.client().await
    }

    async fn call<R: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<R, ClientError> {
        self.client().await.call(method, &params).await
    }

    pub(crate) async fn create(&self, name: &str) -> VmCreateResult {
        self.call("vm.create", json!({"name": name, "image": "img"}))
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}\n{}", self.daemon.output()))
    }

    pub(crate) async fn show(&self, name: &str) -> VmShowResult {
        self.call("vm.show", json!({"name": name}))
            .await
            .expect("vm.show")
    }

    fn restart(&mut self) {
        self.daemon.kill();
        let borrowed: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.daemon.restart_with(&borrowed);
    }

    fn vm_dirs(&self) -> Vec<String> {
        crate::support::dir_names(&self.daemon.layout().vms_dir())
    }

    /// Polls `vm.show` until `check` holds.
    async fn wait_for(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&VmShowResult) -> bool,
    ) -> VmShowResult {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let shown = self.show(name).await;
            if check(&shown) {
                return shown;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never got {what}: {shown:?}\n{}",
                self.daemon.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.daemon.kill();
        for pid in processes_mentioning(&self.root_path) {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

fn alive(pid: u32, ticks: u64) -> bool {
    process::liveness(pid, ticks).ok() == Some(Liveness::Alive)
}

async fn wait_dead(pid: u32, ticks: u64) {
    let deadline = Instant::now() + DEADLINE;
    while alive(pid, ticks) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The VM's VMM configuration as the VMM itself reports it (`GET /vm/config`, answered alike
/// by the fake and by Firecracker): what it really received, not what bangerd meant to send.
async fn vmm_config(lab: &Lab, vm_id: VmId) -> Value {
    let client = FirecrackerClient::new(lab.daemon.layout().vm_api_socket(vm_id));
    let response = client
        .request(Method::Get, "/vm/config", None)
        .await
        .expect("GET /vm/config from the VM's VMM");
    assert_eq!(response.status, 200, "GET /vm/config");
    serde_json::from_slice(&response.body).expect("GET /vm/config answers JSON")
}

/// Checks that running VM `name` holds exactly guest address `ip` (with its MAC) and vsock CID
/// `cid` in the ledger, and that its VMM received exactly those: the kernel command line's
/// `ip=` (also as the guest's console printed it), the interface's MAC on the VM's own tap,
/// the vsock device's CID.
async fn assert_network_place(lab: &Lab, name: &str, ip: [u8; 4], cid: u32) {
    let shown = lab.show(name).await;
    let mac = [0x02, 0xfc, ip[0], ip[1], ip[2], ip[3]];
    let held = |want: fn(&Handle) -> bool| -> Vec<Handle> {
        shown
            .handles
            .iter()
            .map(|h| h.handle.clone())
            .filter(want)
            .collect()
    };
    assert_eq!(
        held(|h| matches!(h, Handle::Ip { .. })),
        [Handle::Ip { addr: ip }],
        "{name}'s address"
    );
    assert_eq!(
        held(|h| matches!(h, Handle::Mac { .. })),
        [Handle::Mac { addr: mac }],
        "{name}'s MAC"
    );
    assert_eq!(
        held(|h| matches!(h, Handle::VsockCid { .. })),
        [Handle::VsockCid { cid }],
        "{name}'s vsock CID"
    );
    let taps = held(|h| matches!(h, Handle::Tap { .. }));
    let [Handle::Tap { name: tap }] = taps.as_slice() else {
        panic!("{name} should hold one tap: {taps:?}");
    };

    let [a, b, c, d] = ip;
    let ip_arg = format!("ip={a}.{b}.{c}.{d}::172.30.0.1:255.255.255.0::eth0:off");
    let config = vmm_config(lab, shown.vm.id).await;
    let boot_args = config["boot-source"]["boot_args"]
        .as_str()
        .unwrap_or_default();
    assert!(
        boot_args.split(' ').any(|arg| arg == ip_arg),
        "{name}: the VMM's kernel command line lacks {ip_arg}: {boot_args:?}"
    );
    let console = std::fs::read_to_string(lab.daemon.layout().vm_console_log(shown.vm.id))
        .unwrap_or_default();
    let command_line = console
        .lines()
        .rev()
        // Console lines carry a kernel timestamp first: `[    0.000038] Command line: …`.
        .find_map(|line| line.split_once("] Command line: ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("{name}: the console shows no command line: {console}"));
    assert!(
        command_line.split(' ').any(|arg| arg == ip_arg),
        "{name}: the guest booted without {ip_arg}: {command_line:?}"
    );
    let interfaces = config["network-interfaces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mac_text = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    );
    assert_eq!(
        interfaces,
        [json!({
            "iface_id": "eth0",
            "host_dev_name": tap,
            "guest_mac": mac_text,
            "mtu": null,
            "rx_rate_limiter": null,
            "tx_rate_limiter": null,
        })],
        "{name}'s network interface as the VMM has it"
    );
    assert_eq!(
        config["vsock"]["guest_cid"],
        json!(cid),
        "{name}'s vsock CID as the VMM has it: {}",
        config["vsock"]
    );
}

/// vCPUs and memory as VM `name`'s VMM received them (`GET /vm/config`), and as its guest's
/// console reported them at boot (the fake prints `N vCPUs, M MiB`).
async fn vmm_machine(lab: &Lab, name: &str) -> (u64, u64) {
    let shown = lab.show(name).await;
    let config = vmm_config(lab, shown.vm.id).await;
    let machine = &config["machine-config"];
    let (vcpus, memory) = (
        machine["vcpu_count"].as_u64().expect("vcpu_count"),
        machine["mem_size_mib"].as_u64().expect("mem_size_mib"),
    );
    let console = std::fs::read_to_string(lab.daemon.layout().vm_console_log(shown.vm.id))
        .unwrap_or_default();
    let booted = console
        .lines()
        .rev()
        .find(|line| line.contains("] fake-firecracker: instance "))
        .unwrap_or_else(|| panic!("{name}: no boot summary on the console: {console}"));
    assert!(
        booted.ends_with(&format!(", {vcpus} vCPUs, {memory} MiB")),
        "{name}: the guest booted with another machine than its VMM reports ({vcpus} vCPUs, {memory} MiB): {booted}"
    );
    (vcpus, memory)
}

fn error_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Rpc(error)) => (format!("{:?}", error.code), error.message),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

async fn the_whole_lifecycle_create_stop_start_restart_kill_set_delete() {
    let lab = Lab::new().await;
    let created = lab.create("dev").await;
    let vm = created.vm.expect("the VM is in the views");
    assert_eq!(vm.state, VmState::Running);
    let first = vm.process.expect("a running VM has a VMM process");
    assert!(alive(first.pid, first.start_time_ticks));

    // list and show: the VM holds an IP, a MAC, a CID, its process and its directory.
    let list: VmListResult = lab.call("vm.list", json!({})).await.unwrap();
    assert_eq!(list.vms.len(), 1);
    let shown = lab.show("dev").await;
    let handles: Vec<&Handle> = shown.handles.iter().map(|h| &h.handle).collect();
    assert!(
        handles.contains(&&Handle::Ip {
            addr: [172, 30, 0, 2]
        }),
        "{handles:?}"
    );
    assert!(handles.contains(&&Handle::Mac {
        addr: [0x02, 0xfc, 172, 30, 0, 2]
    }));
    assert!(handles.contains(&&Handle::VsockCid { cid: 3 }));
    assert!(handles.contains(&&first.handle()));
    let steps: Vec<String> = shown.operations[0]
        .steps
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(
        steps,
        [
            "allocate",
            "prepare-rootfs",
            "prepare-work-disk",
            "network",
            "launch-vmm",
            "configure",
            "instance-start",
            "wait-for-agent",
            "ssh-setup"
        ]
    );
    let layout = lab.daemon.layout();
    // The VMM got the first address on the kernel command line, the MAC and the CID.
    assert_network_place(&lab, "dev", [172, 30, 0, 2], 3).await;
    assert_eq!(
        vmm_machine(&lab, "dev").await,
        (1, 256),
        "the configured defaults"
    );

    // Wrong-state requests are refused with what to do.
    let (code, message) = error_of(
        lab.call::<VmResult>("vm.start", json!({"name": "dev"}))
            .await,
    );
    assert_eq!(code, "WrongState");
    assert!(
        message.contains("already running") && message.contains("restart"),
        "{message}"
    );
    let (code, message) = error_of(
        lab.call::<VmResult>("vm.set", json!({"name": "dev", "vcpus": 2}))
            .await,
    );
    assert_eq!(code, "WrongState");
    assert!(
        message.contains("vm dev is running; stop it first (banger vm stop dev)"),
        "{message}"
    );

    // stop: graceful (the fake exits 0 on Ctrl-Alt-Del); no unexpected-exit report.
    let stopped: VmResult = lab.call("vm.stop", json!({"name": "dev"})).await.unwrap();
    assert_eq!(stopped.vm.state, VmState::Stopped);
    assert!(stopped.vm.process.is_none());
    wait_dead(first.pid, first.start_time_ticks).await;
    let console = std::fs::read_to_string(layout.vm_console_log(vm.id)).unwrap_or_default();
    assert!(
        console.contains("Ctrl-Alt-Del"),
        "a graceful stop: {console}"
    );
    let (code, message) = error_of(
        lab.call::<VmResult>("vm.stop", json!({"name": "dev"}))
            .await,
    );
    assert_eq!(code, "NotRunning", "{message}");
    assert!(message.contains("already stopped"), "{message}");

    // start again: a new process, same network place.
    let started: VmResult = lab.call("vm.start", json!({"name": "dev"})).await.unwrap();
    assert_eq!(started.vm.state, VmState::Running);
    let second = started.vm.process.unwrap();
    assert_ne!(second, first);

    // restart: stop + start.
    let restarted: VmResult = lab
        .call("vm.restart", json!({"name": "dev"}))
        .await
        .unwrap();
    assert_eq!(restarted.vm.state, VmState::Running);
    let third = restarted.vm.process.unwrap();
    assert_ne!(third, second);
    wait_dead(second.pid, second.start_time_ticks).await;

    // kill: immediate.
    let killed: VmResult = lab.call("vm.kill", json!({"name": "dev"})).await.unwrap();
    assert_eq!(killed.vm.state, VmState::Stopped);
    wait_dead(third.pid, third.start_time_ticks).await;

    // set on the stopped VM: the work disk grows and stays a clean ext4.
    let set: VmResult = lab
        .call(
            "vm.set",
            json!({"name": "dev", "vcpus": 2, "memory_mib": 512, "work_disk_mib": 96}),
        )
        .await
        .unwrap();
    assert_eq!(set.vm.spec.vcpus, 2);
    assert_eq!(set.vm.spec.memory_mib, 512);
    assert_eq!(set.vm.spec.work_disk_mib, 96);
    let work = layout.vm_work_disk(vm.id);
    assert_eq!(std::fs::metadata(&work).unwrap().len(), 96 << 20);
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&work)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let (_, message) = error_of(
        lab.call::<VmResult>("vm.set", json!({"name": "dev", "work_disk_mib": 32}))
            .await,
    );
    assert!(message.contains("shrinking"), "{message}");

    // The supervisor reported none of these exits: every one was asked for.
    let events = all_events(&lab.daemon.socket()).await;
    assert!(!events.iter().any(|e| matches!(e.event, Event::VmExited(_))));

    // The next boot's VMM got the new machine.
    let _: VmResult = lab.call("vm.start", json!({"name": "dev"})).await.unwrap();
    assert_eq!(vmm_machine(&lab, "dev").await, (2, 512), "after vm set");

    // While the VM exists, its image stays: the delete is refused, naming the VM.
    let (code, message) = error_of(
        lab.call::<Value>("image.delete", json!({"name": "img"}))
            .await,
    );
    assert_eq!(code, "Busy", "{message}");
    assert!(
        message.contains("dev") && message.contains("banger vm delete"),
        "{message}"
    );
    let _: Value = lab
        .call("image.show", json!({"name": "img"}))
        .await
        .expect("the refused delete left the image");

    // delete: files gone, handles released, name free again.
    let deleted: VmDeleteResult = lab.call("vm.delete", json!({"name": "dev"})).await.unwrap();
    assert_eq!(deleted.vm_id, vm.id);
    assert!(lab.vm_dirs().is_empty(), "{:?}", lab.vm_dirs());
    let list: VmListResult = lab.call("vm.list", json!({})).await.unwrap();
    assert!(list.vms.is_empty());
    let view: Value = lab.call("daemon.operations.list", json!({})).await.unwrap();
    assert_eq!(view["operations"], json!([]));
    assert!(processes_mentioning(&lab.root_path).is_empty());

    // The name and the first address are free again: the next create gets them.
    lab.create("dev").await;
    assert_network_place(&lab, "dev", [172, 30, 0, 2], 3).await;
}

async fn bad_creates_are_refused_and_leave_nothing() {
    let lab = Lab::new().await;
    lab.create("dev").await;
    let create = |params: Value| lab.call::<VmCreateResult>("vm.create", params);
    let (code, message) = error_of(create(json!({"name": "dev", "image": "img"})).await);
    assert_eq!(code, "AlreadyExists");
    assert!(message.contains("already exists"), "{message}");
    let (code, message) = error_of(create(json!({"name": "Bad_Name", "image": "img"})).await);
    assert_eq!(code, "InvalidArgument");
    assert!(message.contains("DNS label"), "{message}");
    let (code, message) = error_of(create(json!({"name": "other", "image": "nope"})).await);
    assert_eq!(code, "NotFound");
    assert!(message.contains("no image named nope"), "{message}");
    let list: VmListResult = lab.call("vm.list", json!({})).await.unwrap();
    assert_eq!(list.vms.len(), 1);
    assert_eq!(lab.vm_dirs().len(), 1);
    // A second VM gets the next address, CID and MAC, and its VMM got them.
    let second = lab.create("second").await;
    assert_eq!(second.vm.unwrap().state, VmState::Running);
    assert_network_place(&lab, "second", [172, 30, 0, 3], 4).await;
}

async fn a_vmm_that_crashes_during_boot_rolls_the_create_back() {
    let mut lab = Lab::with(&[("FAKE_FC_CRASH_ON_BOOT", "1")]).await;
    let (code, message) = error_of(
        lab.call::<VmCreateResult>("vm.create", json!({"name": "dev", "image": "img"}))
            .await,
    );
    assert_eq!(code, "OperationFailed", "{message}");
    assert!(message.contains("rolled back"), "{message}");
    let list: VmListResult = lab.call("vm.list", json!({})).await.unwrap();
    assert!(list.vms.is_empty());
    assert!(lab.vm_dirs().is_empty(), "{:?}", lab.vm_dirs());
    let ops: Value = lab
        .call("daemon.operations.list", json!({"all": true}))
        .await
        .unwrap();
    let create = ops["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["kind"] == "vm.create")
        .expect("the create");
    assert_eq!(create["status"], "rolled_back");
    assert!(processes_mentioning(&lab.root_path).is_empty());
    // The rolled-back create had been given the first address...
    let events = all_events(&lab.daemon.socket()).await;
    let allocated: Vec<&Handle> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::StepSucceeded(s) if s.step == "allocate" => Some(&s.produced),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        allocated.contains(&&Handle::Ip {
            addr: [172, 30, 0, 2]
        }),
        "the failed create's allocation: {allocated:?}"
    );
    // ...and holds nothing now: with VMMs that boot again, the next create gets it.
    lab.env.retain(|(k, _)| k != "FAKE_FC_CRASH_ON_BOOT");
    lab.restart();
    lab.create("dev").await;
    assert_network_place(&lab, "dev", [172, 30, 0, 2], 3).await;
}

async fn an_unexpected_vmm_death_is_reported_and_the_vm_stopped() {
    let lab = Lab::new().await;
    let vm = lab.create("dev").await.vm.unwrap();
    let process = vm.process.unwrap();
    kill(Pid::from_raw(process.pid as i32), Signal::SIGKILL).unwrap();
    let shown = lab
        .wait_for("dev", "stopped", |s| s.vm.state == VmState::Stopped)
        .await;
    assert!(shown.vm.process.is_none());
    let exit = shown.vm.last_exit.expect("the exit is recorded");
    assert_eq!(exit.pid, process.pid);
    assert_eq!(exit.signal, Some(9));
    assert!(!shown.handles.iter().any(|h| h.handle == process.handle()));
    // It starts again.
    let started: VmResult = lab.call("vm.start", json!({"name": "dev"})).await.unwrap();
    assert_eq!(started.vm.state, VmState::Running);
}

async fn a_restarted_bangerd_readopts_running_vms_and_reports_dead_ones() {
    let mut lab = Lab::new().await;
    let keep = lab.create("keep").await.vm.unwrap().process.unwrap();
    let lose = lab.create("lose").await.vm.unwrap().process.unwrap();

    lab.daemon.kill();
    // One VMM dies while no bangerd watches.
    killpg(Pid::from_raw(lose.pid as i32), Signal::SIGKILL).unwrap();
    wait_dead(lose.pid, lose.start_time_ticks).await;
    assert!(
        alive(keep.pid, keep.start_time_ticks),
        "bangerd's death did not kill VMs"
    );
    lab.restart();

    let kept = lab.show("keep").await;
    assert_eq!(kept.vm.state, VmState::Running);
    assert_eq!(kept.vm.process, Some(keep));
    let lost = lab.show("lose").await;
    assert_eq!(lost.vm.state, VmState::Stopped);
    assert!(lost.vm.found_dead);
    let events = all_events(&lab.daemon.socket()).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.event, Event::VmFoundDead(d) if d.pid == lose.pid))
    );

    // The re-adopted VM is supervised: its death is noticed by polling.
    kill(Pid::from_raw(keep.pid as i32), Signal::SIGKILL).unwrap();
    lab.wait_for("keep", "stopped", |s| s.vm.state == VmState::Stopped)
        .await;
    // And a stop of a re-adopted VM works the normal way.
    let started: VmResult = lab.call("vm.start", json!({"name": "keep"})).await.unwrap();
    assert_eq!(started.vm.state, VmState::Running);
    let stopped: VmResult = lab.call("vm.stop", json!({"name": "keep"})).await.unwrap();
    assert_eq!(stopped.vm.state, VmState::Stopped);
}

async fn a_crash_in_the_middle_of_create_is_rolled_back_at_restart_with_nothing_leaked() {
    for failpoint in [
        "vm.create:prepare-work-disk:after",
        "vm.create:launch-vmm:after",
        "vm.create:instance-start:after",
        "vm.create:wait-for-agent:before",
    ] {
        let mut lab = Lab::with(&[("BANGER_FAILPOINT", failpoint)]).await;
        let result = lab
            .call::<VmCreateResult>("vm.create", json!({"name": "dev", "image": "img"}))
            .await;
        assert!(
            matches!(result, Err(ClientError::Closed | ClientError::Io(_))),
            "{failpoint}: the daemon should have died: {result:?}"
        );
        let _ = lab.daemon.wait();
        lab.env.retain(|(k, _)| k != "BANGER_FAILPOINT");
        let borrowed: Vec<(String, String)> = lab.env.clone();
        let borrowed: Vec<(&str, &str)> = borrowed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        lab.daemon.restart_with(&borrowed);

        let list: VmListResult = lab.call("vm.list", json!({})).await.unwrap();
        assert!(list.vms.is_empty(), "{failpoint}: {list:?}");
        assert!(lab.vm_dirs().is_empty(), "{failpoint}: {:?}", lab.vm_dirs());
        let ops: Value = lab
            .call("daemon.operations.list", json!({"all": true}))
            .await
            .unwrap();
        let create = ops["operations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|op| op["kind"] == "vm.create")
            .cloned()
            .expect("the create");
        assert_eq!(create["status"], "rolled_back", "{failpoint}: {create}");
        // No VMM survived, whether or not its pid reached the log.
        let deadline = Instant::now() + DEADLINE;
        while !processes_mentioning(&lab.root_path).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{failpoint}: leaked {:?}",
                processes_mentioning(&lab.root_path)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The name and the address are free again.
        let vm = lab.create("dev").await.vm.unwrap();
        assert_eq!(vm.state, VmState::Running);
        assert_network_place(&lab, "dev", [172, 30, 0, 2], 3).await;
    }
}

async fn create_without_waiting_answers_at_once_and_shows_its_step() {
    let lab = Lab::with(&[("FAKE_FC_BOOT_DELAY_MS", "500")]).await;
    let created: VmCreateResult = lab
        .call(
            "vm.create",
            json!({"name": "dev", "image": "img", "no_wait": true}),
        )
        .await
        .unwrap();
    assert_eq!(created.name, "dev");
    // While it boots (the fake takes 500 ms), `banger ops` shows the create and its step.
    let deadline = Instant::now() + DEADLINE;
    let step = loop {
        let ops: Value = lab.call("daemon.operations.list", json!({})).await.unwrap();
        let current = ops["operations"].as_array().and_then(|ops| {
            ops.iter()
                .find(|op| op["kind"] == "vm.create")
                .and_then(|op| {
                    op["steps"].as_array()?.last()?["name"]
                        .as_str()
                        .map(str::to_owned)
                })
        });
        if let Some(step) = current {
            break step;
        }
        assert!(Instant::now() < deadline, "the create never showed in ops");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(super::vm::CREATE_STEPS.contains(&step.as_str()), "{step}");
    let shown = lab
        .wait_for("dev", "running", |s| s.vm.state == VmState::Running)
        .await;
    assert_eq!(shown.vm.id, created.vm_id);
}

async fn an_interrupted_stop_is_finished_at_restart() {
    let mut lab = Lab::with(&[("BANGER_FAILPOINT", "vm.stop:shutdown:before")]).await;
    let process = lab.create("dev").await.vm.unwrap().process.unwrap();
    let result = lab
        .call::<VmResult>("vm.stop", json!({"name": "dev"}))
        .await;
    assert!(
        matches!(result, Err(ClientError::Closed | ClientError::Io(_))),
        "the daemon should have died: {result:?}"
    );
    let _ = lab.daemon.wait();
    assert!(
        alive(process.pid, process.start_time_ticks),
        "the VM outlived bangerd"
    );
    lab.env.retain(|(k, _)| k != "BANGER_FAILPOINT");
    lab.restart();
    let shown = lab.show("dev").await;
    assert_eq!(shown.vm.state, VmState::Stopped);
    let stop = shown.operations.last().expect("the stop");
    assert_eq!(stop.kind.to_string(), "vm.stop");
    assert_eq!(format!("{:?}", stop.status), "Succeeded");
    wait_dead(process.pid, process.start_time_ticks).await;
}

async fn an_idle_vm_is_stopped_and_the_operation_says_why() {
    let lab = Lab::configured(&[], "idle_stop_after = \"1s\"\n").await;
    let process = lab.create("dev").await.vm.unwrap().process.unwrap();
    let shown = lab
        .wait_for("dev", "auto-stopped", |s| s.vm.state == VmState::Stopped)
        .await;
    let stop = shown.operations.last().expect("the auto-stop");
    assert_eq!(stop.kind.to_string(), "vm.stop");
    assert!(stop.parameters.contains("idle for"), "{}", stop.parameters);
    wait_dead(process.pid, process.start_time_ticks).await;
    assert!(
        shown.vm.last_exit.is_none(),
        "an auto-stop is not an unexpected exit"
    );
}

/// The boot steps that `vm.create` and `vm.start` share, with create's `network`, driven
/// directly against the fake and a real banger-helper: each `ensure` twice is the same as
/// once (one tap, one VMM, the same handles), each `undo` twice is the same as once, and the
/// undo leaves no tap, no process and no socket.
///
/// The steps run on a thread that entered the test network namespace (namespaces are per
/// thread, and a child inherits its forking thread's), so the tap the helper makes and the
/// tap the fake opens are the same one.
fn boot_steps_are_idempotent_against_the_fake_and_their_undo_leaves_nothing() {
    let root = TestRoot::new();
    let network = root.network().expect("a test network");
    let helper_socket = network.socket().to_path_buf();
    let namespace = network.namespace();
    let root_path = root.path().to_path_buf();
    let thread = std::thread::spawn(move || {
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("enter the test network namespace");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(boot_steps_twice(root_path, helper_socket))
    });
    let taps_during = thread.join().expect("the boot steps panicked");
    assert_eq!(taps_during, ["bt77"], "one tap while the VM ran");
    assert!(network.taps().is_empty(), "the undo removed the tap");
    drop(root);
}

/// Runs the boot steps twice and undoes them twice; returns the taps that existed while the
/// VMM ran.
async fn boot_steps_twice(root: PathBuf, helper_socket: PathBuf) -> Vec<String> {
    use std::sync::Arc;

    use banger::config::{Config, NetworkConfig};
    use banger::host::network::{GuestNetwork, interface_exists};
    use banger::host::vmm::FirecrackerVmm;
    use banger::operations::vm_common::{
        Allocation, BootState, Configure, InstanceStart, LaunchVmm, Network, VmHost, WaitForAgent,
        mac_for,
    };
    use banger::operations::{OpCx, Step};
    use banger_events::{Journal, JournalOptions, MemoryLog, OpId, OpKind, Target, VmId, VmSpec};

    let layout = banger::paths::Layout::rooted(&root);
    let vm_id = VmId(0x77);
    std::fs::create_dir_all(layout.vm_dir(vm_id)).unwrap();
    rootfs_file(&layout.vm_root_disk(vm_id), 1 << 20);
    rootfs_file(&layout.vm_work_disk(vm_id), 1 << 20);
    let scratch = root.join("scratch").join("kernel");
    let kernel = kernel_source(&scratch, "6.1.0-test", false).join("vmlinux");
    let journal = Journal::open(Arc::new(MemoryLog::new()), JournalOptions::default()).unwrap();
    let vmm = FirecrackerVmm::new(fake_binary())
        .with_env("BANGER_FAKE_AGENT", env!("CARGO_BIN_EXE_banger-agent"));
    let config = Config {
        boot_timeout: Duration::from_secs(10),
        ..Config::default()
    };
    let vmm = Arc::new(vmm);
    let agents = Arc::new(banger::host::guest_agent::AgentLinks::new());
    let host = Arc::new(VmHost::new(
        Arc::new(banger::host::backends::Backends::with(
            vmm.clone(),
            fake_binary().to_path_buf(),
            vmm.clone(),
            fake_binary().to_path_buf(),
        )),
        agents.clone(),
        config,
        Arc::new(journal),
        layout.clone(),
    ));
    let ip = [172, 30, 0, 9];
    let network = GuestNetwork::new(&NetworkConfig {
        helper_socket,
        bridge: "banger0".into(),
        tap_pool: 0,
        guest_dns: Vec::new(),
        subnet: Default::default(),
    });
    let mut state = BootState {
        host,
        vm_id,
        name: "dev".into(),
        spec: VmSpec {
            image: "img".into(),
            kernel: "k".into(),
            vcpus: 1,
            memory_mib: 256,
            root_disk_mib: 1,
            work_disk_mib: 1,
        },
        vmm: banger_events::VmmKind::Firecracker,
        vmm_reason: String::new(),
        image_rootfs: PathBuf::new(),
        kernel_path: kernel,
        initrd_path: None,
        allocation: Some(Allocation {
            ip,
            mac: mac_for(ip),
            cid: 9,
        }),
        tap: None,
        dns: Vec::new(),
        launched: None,
        child: None,
        host_key: None,
    };
    let target = Target::Vm {
        vm_id,
        name: "dev".into(),
    };
    let cx = OpCx {
        op_id: OpId(0x99),
        kind: OpKind::VmCreate,
        target: &target,
        layout: &layout,
        network: &network,
        vmm: vmm.as_ref(),
        agents: &agents,
    };
    let steps: [&dyn Step<BootState>; 5] = [
        &Network {
            remove_on_undo: true,
        },
        &LaunchVmm,
        &Configure,
        &InstanceStart,
        &WaitForAgent,
    ];
    let mut done = Vec::new();
    for step in steps {
        let first = step
            .ensure(&cx, &mut state)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", step.name()));
        let second = step
            .ensure(&cx, &mut state)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", step.name()));
        assert_eq!(first, second, "{}: ensure twice differs", step.name());
        done.push((step, first));
    }
    let launched = state.launched.clone().expect("a VMM");
    assert!(alive(launched.pid, launched.start_time_ticks));
    assert_eq!(
        processes_mentioning(&root).len(),
        2,
        "one VMM and its agent"
    );
    let taps: Vec<String> = ["bt77"]
        .into_iter()
        .filter(|tap| interface_exists(tap))
        .map(str::to_owned)
        .collect();
    for (step, handles) in done.iter().rev() {
        step.undo(&cx, handles)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", step.name()));
        step.undo(&cx, handles)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", step.name()));
    }
    wait_dead(launched.pid, launched.start_time_ticks).await;
    assert!(!layout.vm_api_socket(vm_id).exists());
    assert!(!layout.vm_vsock_socket(vm_id).exists());
    assert!(!interface_exists("bt77"));
    let deadline = Instant::now() + DEADLINE;
    while !processes_mentioning(&root).is_empty() {
        assert!(Instant::now() < deadline, "the agent outlived its VMM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    taps
}

async fn a_crash_in_the_middle_of_a_rollback_is_finished_at_restart(vmm: VmmKind) {
    let mut lab = Lab::on(
        vmm,
        &[
            ("FAKE_FC_CRASH_ON_BOOT", "1"),
            ("BANGER_FAILPOINT", "vm.create:prepare-rootfs:undo-before"),
        ],
        "",
    )
    .await;
    let result = lab
        .call::<VmCreateResult>("vm.create", json!({"name": "dev", "image": "img"}))
        .await;
    assert!(
        matches!(result, Err(ClientError::Closed | ClientError::Io(_))),
        "the daemon should have died mid-undo: {result:?}"
    );
    let _ = lab.daemon.wait();
    lab.env.retain(|(k, _)| k != "BANGER_FAILPOINT");
    lab.restart();
    let list: VmListResult = lab.call("vm.list", json!({})).await.unwrap();
    assert!(list.vms.is_empty(), "{list:?}");
    assert!(lab.vm_dirs().is_empty(), "{:?}", lab.vm_dirs());
    assert!(processes_mentioning(&lab.root_path).is_empty());
}

async fn a_stuck_create_blocks_its_vm_with_an_error_that_says_so(vmm: VmmKind) {
    let lab = Lab::on(
        vmm,
        &[
            ("FAKE_FC_CRASH_ON_BOOT", "1"),
            ("BANGER_FAILPOINT", "vm.create:prepare-rootfs:undo-error"),
        ],
        "",
    )
    .await;
    let (code, message) = error_of(
        lab.call::<VmCreateResult>("vm.create", json!({"name": "dev", "image": "img"}))
            .await,
    );
    assert_eq!(code, "OperationFailed");
    assert!(message.contains("stuck"), "{message}");
    let (code, message) = error_of(
        lab.call::<VmDeleteResult>("vm.delete", json!({"name": "dev"}))
            .await,
    );
    assert_eq!(code, "Busy");
    assert!(message.contains("stuck"), "{message}");
    assert!(
        processes_mentioning(&lab.root_path).is_empty(),
        "the VMM was killed before the failed undo"
    );
}

/// Kills bangerd at `failpoint` during `method` on VM `dev` (created, and stopped first when
/// `stop_first`), restarts it, and returns the lab.
async fn crash_during(failpoint: &str, method: &str, stop_first: bool) -> Lab {
    let mut lab = Lab::with(&[("BANGER_FAILPOINT", failpoint)]).await;
    lab.create("dev").await;
    if stop_first {
        let _: VmResult = lab.call("vm.stop", json!({"name": "dev"})).await.unwrap();
    }
    let result = lab.call::<Value>(method, json!({"name": "dev"})).await;
    assert!(
        matches!(result, Err(ClientError::Closed | ClientError::Io(_))),
        "{failpoint}: the daemon should have died: {result:?}"
    );
    let _ = lab.daemon.wait();
    lab.env.retain(|(k, _)| k != "BANGER_FAILPOINT");
    lab.restart();
    lab
}

async fn interrupted_starts_roll_back_and_interrupted_deletes_finish() {
    for failpoint in [
        "vm.start:launch-vmm:after",
        "vm.start:wait-for-agent:before",
    ] {
        let lab = crash_during(failpoint, "vm.start", true).await;
        let shown = lab.show("dev").await;
        assert_eq!(shown.vm.state, VmState::Stopped, "{failpoint}");
        assert!(shown.vm.process.is_none(), "{failpoint}");
        let start = shown.operations.last().unwrap();
        assert_eq!(format!("{:?}", start.status), "RolledBack", "{failpoint}");
        let deadline = Instant::now() + DEADLINE;
        while !processes_mentioning(&lab.root_path).is_empty() {
            assert!(Instant::now() < deadline, "{failpoint}: a VMM leaked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The disks are still there, and the VM starts.
        let started: VmResult = lab.call("vm.start", json!({"name": "dev"})).await.unwrap();
        assert_eq!(started.vm.state, VmState::Running, "{failpoint}");
    }
    for failpoint in ["vm.delete:kill:after", "vm.delete:remove-files:before"] {
        let lab = crash_during(failpoint, "vm.delete", false).await;
        let list: VmListResult = lab.call("vm.list", json!({})).await.unwrap();
        assert!(list.vms.is_empty(), "{failpoint}: {list:?}");
        assert!(lab.vm_dirs().is_empty(), "{failpoint}: {:?}", lab.vm_dirs());
        assert!(
            processes_mentioning(&lab.root_path).is_empty(),
            "{failpoint}"
        );
    }
}

/// Runs `banger ARGS` against the lab's bangerd (never starting another one).
fn cli(lab: &Lab, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_banger"))
        .args(args)
        .env("BANGER_ROOT", &lab.root_path)
        .env("BANGER_NO_AUTOSTART", "1")
        .output()
        .expect("run banger")
}

/// The `stop_timeout_ms` the newest `vm.stop` of VM `name` recorded in its parameters.
async fn recorded_stop_timeout_ms(lab: &Lab, name: &str) -> u64 {
    let shown = lab.show(name).await;
    let stop = shown
        .operations
        .iter()
        .rev()
        .find(|op| op.kind.to_string() == "vm.stop")
        .expect("a vm.stop operation");
    let parameters: Value = serde_json::from_str(&stop.parameters).expect("JSON parameters");
    parameters["stop_timeout_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no stop_timeout_ms in {parameters}"))
}

/// A guest agent wrapper whose "init" ignores Ctrl-Alt-Del: the fake firecracker powers the
/// guest off by sending SIGTERM to the process it started as the agent and waiting (10 s)
/// for it to exit. This shell ignores SIGTERM and keeps the real agent running as its child,
/// so only a forced stop ends the VM before that.
fn agent_ignoring_ctrl_alt_del(dir: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("stubborn-agent.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntrap '' TERM\n'{}' \"$@\" &\nwait\n",
            env!("CARGO_BIN_EXE_banger-agent")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

async fn stop_timeout_forces_off_a_guest_that_ignores_ctrl_alt_del() {
    let scripts = tempfile::tempdir().unwrap();
    let agent = agent_ignoring_ctrl_alt_del(scripts.path());
    let agent = agent.to_str().unwrap();
    // The config's stop timeout is 5 s (see `Lab::configured`), the fake's own grace 10 s.
    let lab = Lab::with(&[("BANGER_FAKE_AGENT", agent)]).await;
    let vm = lab.create("dev").await.vm.unwrap();
    let first = vm.process.unwrap();

    // Over RPC: 300 ms of grace, then the VMM is killed.
    let asked = Instant::now();
    let stopped: VmResult = lab
        .call("vm.stop", json!({"name": "dev", "timeout_ms": 300}))
        .await
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(stopped.vm.state, VmState::Stopped);
    assert!(
        took < Duration::from_secs(4),
        "the stop took {took:?}: the configured 5 s applied, not the 300 ms asked for"
    );
    assert!(!alive(first.pid, first.start_time_ticks));
    let console =
        std::fs::read_to_string(lab.daemon.layout().vm_console_log(vm.id)).unwrap_or_default();
    assert!(console.contains("Ctrl-Alt-Del"), "it was asked: {console}");
    assert!(
        !console.contains("reboot: Restarting system"),
        "the guest never powered off by itself, it was killed: {console}"
    );
    assert_eq!(recorded_stop_timeout_ms(&lab, "dev").await, 300);

    // Over the CLI, in the config's duration syntax plus milliseconds.
    let _: VmResult = lab.call("vm.start", json!({"name": "dev"})).await.unwrap();
    let run = cli(&lab, &["vm", "stop", "dev", "--timeout", "250ms"]);
    assert!(run.status.success(), "{run:?}");
    assert_eq!(String::from_utf8_lossy(&run.stdout), "dev is stopped\n");
    assert_eq!(recorded_stop_timeout_ms(&lab, "dev").await, 250);

    // 0: no grace at all, the VMM is killed without asking the guest. (The console file
    // keeps what every boot printed, so the requests are counted.)
    let asked_guest = || {
        std::fs::read_to_string(lab.daemon.layout().vm_console_log(vm.id))
            .unwrap_or_default()
            .matches("Ctrl-Alt-Del")
            .count()
    };
    let _: VmResult = lab.call("vm.start", json!({"name": "dev"})).await.unwrap();
    let before = asked_guest();
    let run = cli(&lab, &["vm", "stop", "dev", "--timeout", "0"]);
    assert!(run.status.success(), "{run:?}");
    assert_eq!(recorded_stop_timeout_ms(&lab, "dev").await, 0);
    assert_eq!(
        asked_guest(),
        before,
        "a stop with no grace does not ask the guest"
    );

    // restart carries the timeout into its stop half.
    let _: VmResult = lab.call("vm.start", json!({"name": "dev"})).await.unwrap();
    let run = cli(&lab, &["vm", "restart", "dev", "--timeout", "1s"]);
    assert!(run.status.success(), "{run:?}");
    assert_eq!(lab.show("dev").await.vm.state, VmState::Running);
    assert_eq!(recorded_stop_timeout_ms(&lab, "dev").await, 1000);

    // Out of range or unreadable: refused before anything happens.
    let (code, message) = error_of(
        lab.call::<VmResult>("vm.stop", json!({"name": "dev", "timeout_ms": 3_600_001}))
            .await,
    );
    assert_eq!(code, "InvalidArgument", "{message}");
    assert!(message.contains("one hour"), "{message}");
    for bad in ["2h", "5x", "-1s"] {
        let run = cli(&lab, &["vm", "stop", "dev", "--timeout", bad]);
        assert_eq!(run.status.code(), Some(2), "{bad}: {run:?}");
    }
    assert_eq!(lab.show("dev").await.vm.state, VmState::Running);

    // Without a timeout the configured one (5 s) is recorded.
    let _: VmResult = lab.call("vm.kill", json!({"name": "dev"})).await.unwrap();
    let _: VmResult = lab.call("vm.start", json!({"name": "dev"})).await.unwrap();
    let _: VmResult = lab.call("vm.stop", json!({"name": "dev"})).await.unwrap();
    assert_eq!(recorded_stop_timeout_ms(&lab, "dev").await, 5000);
}

async fn wrong_state_requests_say_the_state_and_what_to_do() {
    let lab = Lab::with(&[("FAKE_FC_BOOT_DELAY_MS", "1500")]).await;
    lab.create("dev").await;

    // A settled state that does not allow the request: wrong_state, over RPC and the CLI.
    let (code, message) = error_of(
        lab.call::<VmResult>("vm.start", json!({"name": "dev"}))
            .await,
    );
    assert_eq!(code, "WrongState");
    assert!(message.contains("vm dev is already running"), "{message}");
    let run = cli(&lab, &["vm", "start", "dev"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[wrong_state]") && stderr.contains("banger vm restart dev"),
        "{stderr}"
    );
    let run = cli(&lab, &["vm", "set", "dev", "--cpus", "2"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[wrong_state]") && stderr.contains("banger vm stop dev"),
        "{stderr}"
    );

    // A request that needs a running VM, on a stopped one: not_running, whatever the verb.
    let _: VmResult = lab.call("vm.stop", json!({"name": "dev"})).await.unwrap();
    for method in ["vm.stop", "vm.kill", "vm.ping", "vm.health"] {
        let (code, message) = error_of(lab.call::<Value>(method, json!({"name": "dev"})).await);
        assert_eq!(code, "NotRunning", "{method}: {message}");
        assert!(
            message.contains("banger vm start dev"),
            "{method}: {message}"
        );
    }
    // restart of a stopped VM just starts it.
    let restarted: VmResult = lab
        .call("vm.restart", json!({"name": "dev"}))
        .await
        .unwrap();
    assert_eq!(restarted.vm.state, VmState::Running);

    // While an operation runs on the VM (a create still booting), every other operation is
    // `busy` — it may succeed once that one ends — and guest requests say it is booting.
    let _: VmCreateResult = lab
        .call(
            "vm.create",
            json!({"name": "slow", "image": "img", "no_wait": true}),
        )
        .await
        .unwrap();
    // The answer can come before the VM is in the views, so "not found yet" is waited out.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let shown = lab
            .call::<VmShowResult>("vm.show", json!({"name": "slow"}))
            .await;
        if matches!(&shown, Ok(shown) if shown.vm.state == VmState::Creating) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slow never showed as creating: {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for method in ["vm.delete", "vm.restart", "vm.stop", "vm.start"] {
        let (code, message) = error_of(lab.call::<Value>(method, json!({"name": "slow"})).await);
        assert_eq!(code, "Busy", "{method}: {message}");
        assert!(message.contains("vm.create"), "{method}: {message}");
    }
    let (code, message) = error_of(lab.call::<Value>("vm.ping", json!({"name": "slow"})).await);
    assert_eq!(code, "NotRunning", "{message}");
    assert!(
        message.contains("creating") && message.contains("booting"),
        "{message}"
    );
    lab.wait_for("slow", "running", |s| s.vm.state == VmState::Running)
        .await;
}

async fn ops_retry_rolls_a_stuck_operation_back_once_its_undo_can_succeed() {
    let mut lab = Lab::with(&[
        ("FAKE_FC_CRASH_ON_BOOT", "1"),
        ("BANGER_FAILPOINT", "vm.create:prepare-rootfs:undo-error"),
    ])
    .await;
    let (code, message) = error_of(
        lab.call::<VmCreateResult>("vm.create", json!({"name": "dev", "image": "img"}))
            .await,
    );
    assert_eq!(code, "OperationFailed");
    assert!(message.contains("stuck"), "{message}");
    let stuck: Value = lab.call("daemon.operations.list", json!({})).await.unwrap();
    let op = &stuck["operations"][0];
    assert_eq!(op["status"], "stuck", "{stuck}");
    let op_id = op["op_id"].as_str().unwrap().to_owned();

    // While the cause is still there (the failpoint), a retry fails the same way and the
    // operation stays stuck, blocking its VM.
    let (code, message) = error_of(
        lab.call::<Value>("daemon.operations.retry", json!({"op_id": op_id}))
            .await,
    );
    assert_eq!(code, "OperationFailed", "{message}");
    assert!(
        message.contains("failed again") && message.contains("prepare-rootfs"),
        "{message}"
    );
    let (code, _) = error_of(
        lab.call::<VmDeleteResult>("vm.delete", json!({"name": "dev"}))
            .await,
    );
    assert_eq!(code, "Busy");

    // The cause gone (bangerd restarted without the failpoint), the CLI's retry, given the
    // short id `banger ops` prints, rolls it back.
    lab.env
        .retain(|(k, _)| k != "BANGER_FAILPOINT" && k != "FAKE_FC_CRASH_ON_BOOT");
    lab.restart();
    let run = cli(&lab, &["ops", "retry", &op_id[..8]]);
    assert!(run.status.success(), "{run:?}\n{}", lab.daemon.output());
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains(&op_id) && stdout.contains("rolled_back"),
        "{stdout}"
    );

    // The same events a rollback records: the undos, then OperationRolledBack with the
    // create's VmRemoved, all under the operation's own id, after its OperationStuck.
    let events = all_events(&lab.daemon.socket()).await;
    let mine: Vec<&Event> = events
        .iter()
        .filter(|e| e.op_id.is_some_and(|id| id.to_string() == op_id))
        .map(|e| &e.event)
        .collect();
    let last_stuck = mine
        .iter()
        .rposition(|e| matches!(e, Event::OperationStuck(_)))
        .expect("stuck first");
    let after: Vec<String> = mine[last_stuck + 1..]
        .iter()
        .map(|e| match e {
            Event::UndoStarted(u) => format!("undo-started {}", u.step),
            Event::UndoSucceeded(u) => format!("undo-succeeded {}", u.step),
            Event::OperationRolledBack(_) => "rolled-back".to_owned(),
            Event::VmRemoved(_) => "vm-removed".to_owned(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        after,
        [
            "undo-started prepare-rootfs",
            "undo-succeeded prepare-rootfs",
            "undo-started allocate",
            "undo-succeeded allocate",
            "rolled-back",
            "vm-removed",
        ]
    );
    let view: Value = lab.call("daemon.operations.list", json!({})).await.unwrap();
    assert_eq!(view["operations"], json!([]), "nothing stuck any more");
    assert!(lab.vm_dirs().is_empty(), "{:?}", lab.vm_dirs());

    // Nothing blocks the name now, and a finished operation is not retried.
    let created = lab.create("dev").await;
    assert_eq!(created.vm.unwrap().state, VmState::Running);
    let (code, message) = error_of(
        lab.call::<Value>("daemon.operations.retry", json!({"op_id": op_id}))
            .await,
    );
    assert_eq!(code, "WrongState", "{message}");
    assert!(message.contains("not stuck"), "{message}");
    let (code, _) = error_of(
        lab.call::<Value>(
            "daemon.operations.retry",
            json!({"op_id": "00000000000000ff"}),
        )
        .await,
    );
    assert_eq!(code, "NotFound");
}

/// A guest that floods its serial console cannot fill the host's disk: bangerd keeps the
/// console within `vm.console_max` (here 1 MiB of an 8 MiB flood), dropping the oldest
/// output, and `vm logs` shows the newest output, whole lines in order, ending with the last.
async fn a_console_flood_is_kept_within_console_max() {
    use std::os::unix::fs::MetadataExt;

    const MAX: u64 = 1 << 20;
    let lab = Lab::configured(
        &[("FAKE_FC_CONSOLE_FLOOD_BYTES", "8388608")],
        "console_max = \"1M\"",
    )
    .await;
    let created = lab.create("dev").await;
    let console = lab.daemon.layout().vm_console_log(created.vm_id);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text_end = std::fs::read(&console)
            .map(|bytes| {
                String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(4096)..]).into_owned()
            })
            .unwrap_or_default();
        let meta = std::fs::metadata(&console).unwrap();
        // The flood is over and the keeper has dropped the rest (it looks every second).
        if text_end.contains("console flood done") && meta.blocks() * 512 <= MAX + (256 << 10) {
            assert!(
                meta.len() > 8 << 20,
                "the console's length (its offsets) never shrinks"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the console holds {} bytes on disk, more than vm.console_max allows",
            meta.blocks() * 512
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = cli(&lab, &["vm", "logs", "dev"]);
    assert_eq!(logs.status.code(), Some(0), "{logs:?}");
    assert!(
        (logs.stdout.len() as u64) <= MAX + (256 << 10),
        "vm logs printed {} bytes",
        logs.stdout.len()
    );
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        !text.contains('\0'),
        "the dropped output reads as nothing, not as zeros"
    );
    assert!(
        text.contains("console flood done"),
        "the newest output is kept"
    );
    let numbers: Vec<u64> = text
        .lines()
        .filter_map(|line| line.strip_prefix("flood "))
        .filter_map(|rest| rest.get(..16)?.parse().ok())
        .collect();
    assert!(numbers[0] > 0, "the oldest output was dropped");
    assert!(
        numbers.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "the kept output is whole and in order"
    );
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
/// `image.promote`: a stopped VM's root disk, byte for byte, becomes an image that boots;
/// the VM stays; a running VM (whose guest may be writing to its disk) is refused.
async fn promote_saves_a_stopped_vms_disk_as_an_image_and_refuses_a_running_one() {
    let lab = Lab::new().await;
    let created = lab.create("dev").await;
    let refused = lab
        .call::<Value>("image.promote", json!({"vm": "dev", "name": "gold"}))
        .await;
    let error = crate::support::rpc_error(refused);
    assert_eq!(error.code, banger::rpc::ErrorCode::WrongState, "{error}");
    assert!(error.message.contains("banger vm stop dev"), "{error}");
    let _: VmResult = lab.call("vm.stop", json!({"name": "dev"})).await.unwrap();
    // What the guest left on its disk is what the image gets.
    let disk = lab.daemon.layout().vm_root_disk(created.vm_id);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        file.seek(SeekFrom::Start(1 << 20)).unwrap();
        file.write_all(b"written by the guest").unwrap();
    }
    let image: banger::api::ImageView = lab
        .call("image.promote", json!({"vm": "dev", "name": "gold"}))
        .await
        .unwrap_or_else(|e| panic!("promote: {e}\n{}", lab.daemon.output()));
    assert_eq!(image.source, "promote:dev");
    assert_eq!(image.kernel.as_deref(), Some("k"));
    assert_eq!(
        std::fs::read(&image.rootfs_path).unwrap(),
        std::fs::read(&disk).unwrap()
    );
    assert_eq!(image.sha256, crate::support::sha256_hex(&disk));
    let again = lab
        .call::<Value>("image.promote", json!({"vm": "dev", "name": "gold"}))
        .await;
    assert_eq!(
        crate::support::rpc_error(again).code,
        banger::rpc::ErrorCode::AlreadyExists
    );
    // The VM is as it was, and starts; a VM boots from the new image.
    assert_eq!(lab.show("dev").await.vm.state, VmState::Stopped);
    let _: VmResult = lab.call("vm.start", json!({"name": "dev"})).await.unwrap();
    let from_gold: VmCreateResult = lab
        .call("vm.create", json!({"name": "dev2", "image": "gold"}))
        .await
        .unwrap_or_else(|e| panic!("create from the promoted image: {e}"));
    assert_eq!(from_gold.vm.map(|vm| vm.state), Some(VmState::Running));
}

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    use banger_test_harness::Tier::Root;
    let here = module_path!();
    let mut tests = Vec::new();
    // No guest boots in these: they run against each VMM.
    tests.extend(per_vmm(
        here,
        "a_crash_in_the_middle_of_a_rollback_is_finished_at_restart",
        &[Root],
        a_crash_in_the_middle_of_a_rollback_is_finished_at_restart,
    ));
    tests.extend(per_vmm(
        here,
        "a_stuck_create_blocks_its_vm_with_an_error_that_says_so",
        &[Root],
        a_stuck_create_blocks_its_vm_with_an_error_that_says_so,
    ));
    // These need a booted guest: the fake's.
    tests.extend(banger_test_harness::tests![
        tokio the_whole_lifecycle_create_stop_start_restart_kill_set_delete needs(Root),
        tokio bad_creates_are_refused_and_leave_nothing needs(Root),
        tokio a_vmm_that_crashes_during_boot_rolls_the_create_back needs(Root),
        tokio an_unexpected_vmm_death_is_reported_and_the_vm_stopped needs(Root),
        tokio a_restarted_bangerd_readopts_running_vms_and_reports_dead_ones needs(Root),
        tokio a_crash_in_the_middle_of_create_is_rolled_back_at_restart_with_nothing_leaked needs(Root),
        tokio create_without_waiting_answers_at_once_and_shows_its_step needs(Root),
        tokio an_interrupted_stop_is_finished_at_restart needs(Root),
        tokio an_idle_vm_is_stopped_and_the_operation_says_why needs(Root),
        sync boot_steps_are_idempotent_against_the_fake_and_their_undo_leaves_nothing needs(Root),
        tokio interrupted_starts_roll_back_and_interrupted_deletes_finish needs(Root),
        tokio stop_timeout_forces_off_a_guest_that_ignores_ctrl_alt_del needs(Root),
        tokio wrong_state_requests_say_the_state_and_what_to_do needs(Root),
        tokio ops_retry_rolls_a_stuck_operation_back_once_its_undo_can_succeed needs(Root),
        tokio a_console_flood_is_kept_within_console_max needs(Root),
        tokio promote_saves_a_stopped_vms_disk_as_an_image_and_refuses_a_running_one needs(Root),
    ]);
    tests
}
