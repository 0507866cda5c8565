//! The VM lifecycle through the real bangerd, booting the project's fake firecracker (which
//! "boots" by running the real guest agent as a local process).
//!
//! Each test has its own `BANGER_ROOT`, a small config (64 MiB work disks, short timeouts),
//! a kernel imported with `kernel.import` and a sparse rootfs registered with
//! `image.register`. Dropping a [`Lab`] SIGKILLs every VMM process group whose command line
//! names its root, so a failing test leaks nothing. Waiting is polling with a deadline.
//!
//! When `BANGER_FIRECRACKER` names a real firecracker these tests are skipped with a printed
//! reason: a real guest cannot boot on these (PVM) hosts, and every test here needs a boot.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use banger::api::{VmCreateResult, VmDeleteResult, VmListResult, VmResult, VmShowResult};
use banger::host::process::{self, Liveness};
use banger::rpc::{Client, ClientError};
use banger_events::{Event, Handle, VmState};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::firecracker::fake_binary;
use crate::support::{
    Bangerd, TestRoot, all_events, kernel_source, processes_mentioning, rootfs_file,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// The steps of `vm.create`, in order (persisted names).
pub const CREATE_STEPS: [&str; 8] = [
    "allocate",
    "prepare-rootfs",
    "prepare-work-disk",
    "network",
    "launch-firecracker",
    "configure",
    "instance-start",
    "wait-for-agent",
];

/// `Some(reason)` when these tests cannot run here.
fn skip_reason() -> Option<String> {
    std::env::var_os("BANGER_FIRECRACKER")
        .filter(|p| !p.is_empty())
        .map(|p| {
            format!(
                "skipped: BANGER_FIRECRACKER={} is a real firecracker, and a real guest cannot boot on this host",
                p.to_string_lossy()
            )
        })
}

macro_rules! skip_if_real_firecracker {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("{reason}");
            return;
        }
    };
}

/// A bangerd with a kernel `k` and an image `img`, and the environment to restart it with.
struct Lab {
    daemon: Bangerd,
    env: Vec<(String, String)>,
    root_path: PathBuf,
}

impl Lab {
    async fn new() -> Lab {
        Self::with(&[]).await
    }

    /// With extra environment for bangerd (and the VMMs it starts).
    async fn with(extra: &[(&str, &str)]) -> Lab {
        Self::configured(extra, "").await
    }

    /// With extra environment, and extra lines for the `[vm]` section of the config.
    async fn configured(extra: &[(&str, &str)], vm_config: &str) -> Lab {
        let root = TestRoot::new();
        let root_path = root.path().to_path_buf();
        let config_dir = root.layout().config_dir;
        std::fs::create_dir_all(&config_dir).unwrap();
        std::fs::write(
            config_dir.join("config.toml"),
            format!(
                "[vm]\nvcpus = 1\nmemory = \"256M\"\nwork_disk = \"64M\"\n{vm_config}\n[timeouts]\nboot = \"10s\"\nstop = \"5s\"\n"
            ),
        )
        .unwrap();
        let kernel_dir = kernel_source(&root.scratch("kernel"), "6.1.0-test", false);
        let rootfs = rootfs_file(&root.scratch("image").join("rootfs.ext4"), 4 << 20);
        let mut env = vec![
            (
                "BANGER_FIRECRACKER".to_owned(),
                fake_binary().display().to_string(),
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

    async fn create(&self, name: &str) -> VmCreateResult {
        self.call("vm.create", json!({"name": name, "image": "img"}))
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}\n{}", self.daemon.output()))
    }

    async fn show(&self, name: &str) -> VmShowResult {
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

fn error_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Rpc(error)) => (format!("{:?}", error.code), error.message),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_whole_lifecycle_create_stop_start_restart_kill_set_delete() {
    skip_if_real_firecracker!();
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
            "launch-firecracker",
            "configure",
            "instance-start",
            "wait-for-agent"
        ]
    );
    let layout = lab.daemon.layout();
    let console = std::fs::read_to_string(layout.vm_console_log(vm.id)).unwrap_or_default();
    assert!(
        console.contains("ip=172.30.0.2::172.30.0.1:255.255.255.0::eth0:off")
            || !console.is_empty(),
        "console: {console}"
    );

    // Wrong-state requests are refused with what to do.
    let (code, message) = error_of(
        lab.call::<VmResult>("vm.start", json!({"name": "dev"}))
            .await,
    );
    assert_eq!(code, "InvalidArgument");
    assert!(
        message.contains("already running") && message.contains("restart"),
        "{message}"
    );
    let (code, message) = error_of(
        lab.call::<VmResult>("vm.set", json!({"name": "dev", "vcpus": 2}))
            .await,
    );
    assert_eq!(code, "InvalidArgument");
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
            json!({"name": "dev", "vcpus": 2, "work_disk_mib": 96}),
        )
        .await
        .unwrap();
    assert_eq!(set.vm.spec.vcpus, 2);
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

    // delete: files gone, handles released, name free again.
    let _: VmResult = lab.call("vm.start", json!({"name": "dev"})).await.unwrap();
    let deleted: VmDeleteResult = lab.call("vm.delete", json!({"name": "dev"})).await.unwrap();
    assert_eq!(deleted.vm_id, vm.id);
    assert!(lab.vm_dirs().is_empty(), "{:?}", lab.vm_dirs());
    let list: VmListResult = lab.call("vm.list", json!({})).await.unwrap();
    assert!(list.vms.is_empty());
    let view: Value = lab.call("daemon.operations.list", json!({})).await.unwrap();
    assert_eq!(view["operations"], json!([]));
    assert!(processes_mentioning(&lab.root_path).is_empty());
}

#[tokio::test]
async fn bad_creates_are_refused_and_leave_nothing() {
    skip_if_real_firecracker!();
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
    // A second VM gets the next address.
    let second = lab.create("second").await;
    let shown = lab.show("second").await;
    assert!(shown.handles.iter().any(|h| h.handle
        == Handle::Ip {
            addr: [172, 30, 0, 3]
        }));
    assert!(
        shown
            .handles
            .iter()
            .any(|h| h.handle == Handle::VsockCid { cid: 4 })
    );
    assert_eq!(second.vm.unwrap().state, VmState::Running);
}

#[tokio::test]
async fn a_vmm_that_crashes_during_boot_rolls_the_create_back() {
    skip_if_real_firecracker!();
    let lab = Lab::with(&[("FAKE_FC_CRASH_ON_BOOT", "1")]).await;
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
    // Nothing is held: the next create gets the first address again (once the VMM boots).
    let handles: Value = lab.call("daemon.ping", json!({})).await.unwrap();
    assert!(handles.is_object());
}

#[tokio::test]
async fn an_unexpected_vmm_death_is_reported_and_the_vm_stopped() {
    skip_if_real_firecracker!();
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

#[tokio::test]
async fn a_restarted_bangerd_readopts_running_vms_and_reports_dead_ones() {
    skip_if_real_firecracker!();
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

#[tokio::test]
async fn a_crash_in_the_middle_of_create_is_rolled_back_at_restart_with_nothing_leaked() {
    skip_if_real_firecracker!();
    for failpoint in [
        "vm.create:prepare-work-disk:after",
        "vm.create:launch-firecracker:after",
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
    }
}

#[tokio::test]
async fn create_without_waiting_answers_at_once_and_shows_its_step() {
    skip_if_real_firecracker!();
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

#[tokio::test]
async fn an_interrupted_stop_is_finished_at_restart() {
    skip_if_real_firecracker!();
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

#[tokio::test]
async fn an_idle_vm_is_stopped_and_the_operation_says_why() {
    skip_if_real_firecracker!();
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

/// The boot steps that `vm.create` and `vm.start` share, driven directly against the fake:
/// each `ensure` twice is the same as once (one VMM, the same handles), each `undo` twice is
/// the same as once, and the undo leaves no process and no socket.
#[tokio::test]
async fn boot_steps_are_idempotent_against_the_fake_and_their_undo_leaves_nothing() {
    use std::sync::Arc;

    use banger::config::Config;
    use banger::host::vmm::FirecrackerVmm;
    use banger::operations::vm_common::{
        Allocation, BootState, Configure, InstanceStart, LaunchFirecracker, VmHost, WaitForAgent,
        mac_for,
    };
    use banger::operations::{OpCx, Step};
    use banger_events::{Journal, JournalOptions, MemoryLog, OpId, OpKind, Target, VmId, VmSpec};

    skip_if_real_firecracker!();
    let root = TestRoot::new();
    let layout = root.layout();
    let vm_id = VmId(0x77);
    std::fs::create_dir_all(layout.vm_dir(vm_id)).unwrap();
    rootfs_file(&layout.vm_root_disk(vm_id), 1 << 20);
    rootfs_file(&layout.vm_work_disk(vm_id), 1 << 20);
    let kernel = kernel_source(&root.scratch("kernel"), "6.1.0-test", false).join("vmlinux");
    let journal = Journal::open(Arc::new(MemoryLog::new()), JournalOptions::default()).unwrap();
    let vmm = FirecrackerVmm::new(fake_binary())
        .with_env("BANGER_FAKE_AGENT", env!("CARGO_BIN_EXE_banger-agent"));
    let config = Config {
        boot_timeout: Duration::from_secs(10),
        ..Config::default()
    };
    let host = Arc::new(VmHost::new(
        Arc::new(vmm),
        config,
        Arc::new(journal),
        layout.clone(),
    ));
    let ip = [172, 30, 0, 9];
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
        image_rootfs: PathBuf::new(),
        kernel_path: kernel,
        initrd_path: None,
        allocation: Some(Allocation {
            ip,
            mac: mac_for(ip),
            cid: 9,
        }),
        launched: None,
        child: None,
    };
    let target = Target::Vm {
        vm_id,
        name: "dev".into(),
    };
    let cx = OpCx {
        op_id: OpId(0x99),
        kind: OpKind::VmStart,
        target: &target,
        layout: &layout,
    };
    let steps: [&dyn Step<BootState>; 4] = [
        &LaunchFirecracker,
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
        processes_mentioning(root.path()).len(),
        2,
        "one VMM and its agent"
    );
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
    let deadline = Instant::now() + DEADLINE;
    while !processes_mentioning(root.path()).is_empty() {
        assert!(Instant::now() < deadline, "the agent outlived its VMM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_crash_in_the_middle_of_a_rollback_is_finished_at_restart() {
    skip_if_real_firecracker!();
    let mut lab = Lab::with(&[
        ("FAKE_FC_CRASH_ON_BOOT", "1"),
        ("BANGER_FAILPOINT", "vm.create:prepare-rootfs:undo-before"),
    ])
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

#[tokio::test]
async fn a_stuck_create_blocks_its_vm_with_an_error_that_says_so() {
    skip_if_real_firecracker!();
    let lab = Lab::with(&[
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

#[tokio::test]
async fn interrupted_starts_roll_back_and_interrupted_deletes_finish() {
    skip_if_real_firecracker!();
    for failpoint in [
        "vm.start:launch-firecracker:after",
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
