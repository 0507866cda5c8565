//! `banger doctor` and the orphan sweep behind it, against a real bangerd: host resources
//! with banger's names that the log does not know are listed with the command that removes
//! them, removed only with `--fix` (each removal an `orphan_found` event), and what the log
//! knows — a kernel, a running VM with its directory, tap and VMM — is never listed.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use banger::api::VmCreateResult;
use banger_events::{Event, Handle};
use serde_json::{Value, json};

use super::support::{Bangerd, TestRoot, all_events, kernel_source, rootfs_file};

const DEADLINE: Duration = Duration::from_secs(30);

/// `banger ARGS` against `daemon` (never starting another).
fn banger(daemon: &Bangerd, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_banger"))
        .args(args)
        .env("BANGER_ROOT", daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run banger")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A process that looks like a VMM launched for this state directory (its command line names
/// an API socket under `vms/`), in a process group of its own, until its stdin closes or it is
/// killed.
fn stand_in_vmm(socket: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    let child = Command::new("sh")
        .arg("-c")
        .arg("read line")
        .arg("stand-in-vmm")
        .arg("--api-sock")
        .arg(socket)
        .stdin(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start the stand-in VMM");
    // `spawn` may return before the exec: wait until its command line shows.
    let deadline = Instant::now() + DEADLINE;
    let needle = socket.as_os_str().as_encoded_bytes();
    while !std::fs::read(format!("/proc/{}/cmdline", child.id()))
        .unwrap_or_default()
        .windows(needle.len())
        .any(|w| w == needle)
    {
        assert!(Instant::now() < deadline, "the stand-in VMM did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

/// Waits for `child` to exit (killed by the sweep), failing at the deadline.
fn wait_gone(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("poll the stand-in") {
            return status;
        }
        assert!(Instant::now() < deadline, "the stand-in VMM still runs");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The orphan_found events in the log, as (handle, action).
async fn orphan_events(daemon: &Bangerd) -> Vec<(Handle, String)> {
    all_events(&daemon.socket())
        .await
        .into_iter()
        .filter_map(|envelope| match envelope.event {
            Event::OrphanFound(found) => Some((found.handle, found.action)),
            _ => None,
        })
        .collect()
}

/// A directory and a file in the store, a directory under `kernels/` that holds a kernel's
/// name, and a stand-in VMM: each listed (with its removal command) by `banger doctor`, which
/// exits 1 and changes nothing; `--fix` removes exactly those, records each, and exits 0; a
/// registered kernel is never touched. bangerd also names them in its output when it starts.
async fn orphans_are_listed_with_a_command_and_removed_only_with_fix() {
    let mut daemon = Bangerd::start();
    let scratch = daemon.root().scratch("inputs");
    let kernel_dir = kernel_source(&scratch.join("kernel"), "6.1.0-test", false);
    let _: Value = daemon
        .client()
        .await
        .call(
            "kernel.import",
            &json!({"name": "k1", "from": kernel_dir.display().to_string()}),
        )
        .await
        .expect("kernel.import");
    let clean = banger(&daemon, &["doctor"]);
    assert!(clean.status.success(), "{}", text(&clean));
    assert!(stdout(&clean).starts_with("ok "), "{}", text(&clean));
    // The test network's helper answers; no VM yet, so no bridge either.
    let network = doctor_json_check(&daemon, "network");
    assert_eq!(network["status"], "ok", "{network}");
    assert!(
        network["summary"]
            .as_str()
            .unwrap()
            .contains("made with the first VM"),
        "{network}"
    );

    let layout = daemon.layout();
    let vm_dir = layout.vms_dir().join("00000000deadbeef");
    std::fs::create_dir_all(&vm_dir).unwrap();
    std::fs::write(vm_dir.join("root.ext4"), b"left behind").unwrap();
    let ghost_kernel = layout.kernels_dir().join("ghost");
    std::fs::create_dir_all(&ghost_kernel).unwrap();
    let stray_file = layout.images_dir().join("stray.partial");
    std::fs::create_dir_all(layout.images_dir()).unwrap();
    std::fs::write(&stray_file, b"half an image").unwrap();
    let mut vmm = stand_in_vmm(&layout.vms_dir().join("00000000feedface/api.sock"));

    // Listed, each with a command; nothing changes; status 1.
    let listed = banger(&daemon, &["doctor"]);
    assert_eq!(listed.status.code(), Some(1), "{}", text(&listed));
    let out = stdout(&listed);
    assert!(out.starts_with("FAIL "), "{out}");
    assert!(out.contains("4 host resource(s)"), "{out}");
    for (what, command) in [
        (
            format!("directory {}", vm_dir.display()),
            format!("rm -rf {}", vm_dir.display()),
        ),
        (
            format!("directory {}", ghost_kernel.display()),
            format!("rm -rf {}", ghost_kernel.display()),
        ),
        (
            format!("file {}", stray_file.display()),
            format!("rm -f {}", stray_file.display()),
        ),
        (
            format!("process {}", vmm.id()),
            format!("kill -KILL -- -{}", vmm.id()),
        ),
    ] {
        let line = out
            .lines()
            .find(|line| line.trim_start().starts_with(&what))
            .unwrap_or_else(|| panic!("no line for {what}:\n{out}"));
        assert!(line.ends_with(&command), "{line}");
    }
    assert!(
        !out.contains("kernels/k1"),
        "a registered kernel was listed:\n{out}"
    );
    let json: Value = serde_json::from_slice(&banger(&daemon, &["doctor", "--json"]).stdout)
        .expect("doctor --json");
    assert_eq!(json["ok"], false);
    assert_eq!(json["checks"][0]["name"], "orphans");
    assert_eq!(json["checks"][0]["status"], "fail");
    assert_eq!(json["checks"][0]["items"].as_array().map(Vec::len), Some(4));
    assert!(vm_dir.exists() && ghost_kernel.exists() && stray_file.exists());
    assert!(vmm.try_wait().unwrap().is_none(), "listing killed the VMM");
    assert!(
        orphan_events(&daemon).await.is_empty(),
        "listing recorded events"
    );

    // bangerd names them when it starts, in its output.
    daemon.kill();
    daemon.restart();
    let deadline = Instant::now() + DEADLINE;
    while !daemon.output().contains("orphans found at startup") {
        assert!(
            Instant::now() < deadline,
            "bangerd did not report the orphans at startup:\n{}",
            daemon.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        daemon.output().contains("00000000deadbeef"),
        "{}",
        daemon.output()
    );

    // --fix removes them, records each, and says so.
    let fixed = banger(&daemon, &["doctor", "--fix"]);
    assert!(fixed.status.success(), "{}", text(&fixed));
    assert!(stdout(&fixed).starts_with("fixed "), "{}", text(&fixed));
    assert!(!vm_dir.exists() && !ghost_kernel.exists() && !stray_file.exists());
    let status = wait_gone(&mut vmm);
    assert!(!status.success(), "the stand-in ended on its own: {status}");
    assert!(
        layout.kernel_dir("k1").join("vmlinux").exists(),
        "k1 was removed"
    );
    let mut recorded = orphan_events(&daemon).await;
    recorded.sort();
    let mut expected = vec![
        Handle::Directory {
            path: vm_dir.display().to_string(),
        },
        Handle::Directory {
            path: ghost_kernel.display().to_string(),
        },
        Handle::File {
            path: stray_file.display().to_string(),
        },
    ];
    let (pid, ticks) = recorded
        .iter()
        .find_map(|(handle, _)| match handle {
            Handle::Process {
                pid,
                start_time_ticks,
            } => Some((*pid, *start_time_ticks)),
            _ => None,
        })
        .expect("the process's removal is recorded");
    assert_eq!(pid, vmm.id());
    expected.push(Handle::Process {
        pid,
        start_time_ticks: ticks,
    });
    expected.sort();
    assert_eq!(
        recorded.iter().map(|(h, _)| h.clone()).collect::<Vec<_>>(),
        expected
    );
    assert!(
        recorded
            .iter()
            .all(|(_, action)| action == "removed by `banger doctor --fix`"),
        "{recorded:?}"
    );
    // Nothing left: doctor is happy, and the kernel can be imported again under its name.
    let after = banger(&daemon, &["doctor"]);
    assert!(after.status.success(), "{}", text(&after));
    let again = banger(
        &daemon,
        &[
            "kernel",
            "import",
            "ghost",
            "--from",
            &kernel_dir.display().to_string(),
        ],
    );
    assert!(again.status.success(), "{}", text(&again));
}

/// With a running VM (its directory, its tap on the bridge, its VMM and the agent the fake
/// starts, all in the log) and a tap made by hand in the test's network namespace: only the
/// stray tap is an orphan; `--fix` removes it through banger-helper and records that as an
/// `orphan_found` event, and the VM runs on.
async fn a_stray_tap_is_an_orphan_and_a_running_vm_is_not() {
    let root = TestRoot::new();
    // No spare taps: a pool topping itself up meanwhile would only blur what the test counts.
    let config_dir = root.layout().config_dir;
    std::fs::create_dir_all(&config_dir).expect("create the config dir");
    std::fs::write(config_dir.join("config.toml"), "[network]\ntap_pool = 0\n")
        .expect("write the config");
    let fake = crate::firecracker::fake_binary().display().to_string();
    let daemon = Bangerd::start_on_with(
        root,
        &[
            ("BANGER_FIRECRACKER", fake.as_str()),
            ("BANGER_FAKE_AGENT", env!("CARGO_BIN_EXE_banger-agent")),
        ],
    );
    let scratch = daemon.root().scratch("inputs");
    let kernel_dir = kernel_source(&scratch.join("kernel"), "6.1.0-test", false);
    let rootfs = rootfs_file(&scratch.join("rootfs.ext4"), 4 << 20);
    let mut client = daemon.client().await;
    let _: Value = client
        .call(
            "kernel.import",
            &json!({"name": "k", "from": kernel_dir.display().to_string()}),
        )
        .await
        .expect("kernel.import");
    let _: Value = client
        .call(
            "image.register",
            &json!({"name": "img", "rootfs": rootfs.display().to_string(), "kernel": "k"}),
        )
        .await
        .expect("image.register");
    let created: VmCreateResult = client
        .call("vm.create", &json!({"name": "dev", "image": "img"}))
        .await
        .unwrap_or_else(|e| panic!("vm.create: {e}\n{}", daemon.output()));
    assert_eq!(created.vm.map(|vm| vm.state.as_str()), Some("running"));
    let network = doctor_json_check(&daemon, "network");
    assert_eq!(network["status"], "ok", "{network}");
    assert!(
        network["summary"]
            .as_str()
            .unwrap()
            .contains("bridge banger0 (172.30.0.1/24) and its NAT are in place"),
        "{network}"
    );
    let net = daemon.root().network().expect("a test network");
    let vm_tap = net.taps();
    assert_eq!(vm_tap.len(), 1, "{vm_tap:?}");
    net.run("ip", &["tuntap", "add", "dev", "bt5eed", "mode", "tap"]);

    let listed = banger(&daemon, &["doctor", "--json"]);
    assert_eq!(listed.status.code(), Some(1), "{}", text(&listed));
    let json: Value = serde_json::from_slice(&listed.stdout).expect("doctor --json");
    let items = json["checks"][0]["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let whats: Vec<&str> = items.iter().filter_map(|i| i["what"].as_str()).collect();
    assert_eq!(whats, ["tap bt5eed"], "{json}");
    assert!(
        net.taps().contains(&"bt5eed".to_owned()),
        "listing removed it"
    );
    assert!(
        orphan_events(&daemon).await.is_empty(),
        "listing recorded events"
    );

    let fixed = banger(&daemon, &["doctor", "--fix"]);
    assert!(fixed.status.success(), "{}", text(&fixed));
    assert_eq!(net.taps(), vm_tap, "only the stray tap went");
    // The removal is in the log, as the directories' and the process's are; the VM's own tap
    // is not.
    assert_eq!(
        orphan_events(&daemon).await,
        [(
            Handle::Tap {
                name: "bt5eed".to_owned()
            },
            "removed by `banger doctor --fix`".to_owned()
        )]
    );
    let shown: Value = client
        .call("vm.show", &json!({"name": "dev"}))
        .await
        .expect("vm.show");
    assert_eq!(shown["vm"]["state"], "running", "{shown}");
    let pinged: Value = client
        .call("vm.ping", &json!({"name": "dev"}))
        .await
        .expect("the VM still answers");
    assert!(pinged.is_object());
    let ok = banger(&daemon, &["doctor"]);
    assert!(ok.status.success(), "{}", text(&ok));
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        tokio orphans_are_listed_with_a_command_and_removed_only_with_fix needs(Root),
        tokio a_stray_tap_is_an_orphan_and_a_running_vm_is_not needs(Root),
        tokio host_checks_say_how_vms_run_here_and_fail_when_none_can,
        tokio the_network_check_follows_the_helper_and_names_what_it_gives needs(Root),
        sync firecracker_needs_a_tun_its_user_can_open_and_qemu_does_not needs(Root),
        sync firecracker_and_its_jailer_must_be_1_8_where_vms_run_on_them,
        tokio the_default_image_and_kernel_are_here_or_pullable,
        sync posture_finds_loose_modes_unit_drift_and_a_wider_allow_list needs(Root),
    ]
}

/// The host checks: which VMM new VMs get (and a failure when none can run, with the fix),
/// free space and how root disks are copied, bangerd's DNS server, the ssh client.
async fn host_checks_say_how_vms_run_here_and_fail_when_none_can() {
    let daemon = Bangerd::start_on_host_network(TestRoot::without_network());
    let doctor = |extra_env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_banger"));
        command
            .args(["doctor", "--json"])
            .env("BANGER_ROOT", daemon.root().path())
            .env("BANGER_NO_AUTOSTART", "1")
            .env_remove("BANGER_FIRECRACKER")
            .env_remove("BANGER_QEMU");
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let json: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("doctor --json: {e}\n{}", text(&output)));
        (output.status.code(), json)
    };
    let check = check_named;

    let (code, json) = doctor(&[]);
    let names: Vec<&str> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "orphans",
            "vmm",
            "network",
            "devices",
            "firecracker",
            "disk",
            "defaults",
            "dns",
            "ssh",
            "posture"
        ],
        "{json}"
    );
    // No helper answers, and this bangerd may not start one: VMs would get no network, and
    // that alone fails the run.
    assert_eq!(code, Some(1), "{json}");
    let network = check(&json, "network");
    assert_eq!(network["status"], "fail", "{network}");
    assert!(
        network["summary"]
            .as_str()
            .unwrap()
            .starts_with("VMs get no network: banger-helper is not reachable"),
        "{network}"
    );
    assert!(
        network["fix"]
            .as_str()
            .unwrap()
            .contains("sudo banger system install"),
        "{network}"
    );
    let failing: Vec<&Value> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .collect();
    assert_eq!(failing.len(), 1, "only the network check fails: {json}");
    let vmm = check(&json, "vmm");
    assert_eq!(vmm["status"], "ok", "{vmm}");
    assert!(
        vmm["summary"]
            .as_str()
            .unwrap()
            .starts_with("new VMs run on "),
        "{vmm}"
    );
    let disk = check(&json, "disk");
    assert_eq!(disk["status"], "ok", "{disk}");
    let summary = disk["summary"].as_str().unwrap();
    assert!(summary.contains(" free in "), "{summary}");
    assert!(
        summary.contains("reflink clones") || summary.contains("sparse copies"),
        "{summary}"
    );
    // No VM yet: no network, so the DNS server starts with the first VM.
    let dns = check(&json, "dns");
    assert_eq!(dns["status"], "ok", "{dns}");
    assert!(
        dns["summary"]
            .as_str()
            .unwrap()
            .contains("from the first VM on"),
        "{dns}"
    );
    assert_eq!(check(&json, "ssh")["status"], "ok");

    // Neither VMM is where the config says: VMs cannot run, and doctor says how to fix it.
    let config = daemon.layout().config_path();
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        "[firecracker]\nbinary = \"/nonexistent/firecracker\"\n[qemu]\nbinary = \"/nonexistent/qemu\"\n",
    )
    .unwrap();
    let (code, json) = doctor(&[]);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["ok"], false);
    let vmm = check(&json, "vmm");
    assert_eq!(vmm["status"], "fail", "{vmm}");
    assert!(
        vmm["summary"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/qemu"),
        "{vmm}"
    );
    assert_eq!(vmm["fix"], "apt-get install qemu-system-x86", "{vmm}");
}

/// The report of check `name` in `banger doctor --json` against `daemon`.
fn doctor_json_check(daemon: &Bangerd, name: &str) -> Value {
    let output = banger(daemon, &["doctor", "--json"]);
    let json: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}\n{}", text(&output)));
    check_named(&json, name)
}

/// The report of check `name` in a `banger doctor --json` answer.
pub(crate) fn check_named(json: &Value, name: &str) -> Value {
    json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} check in {json}"))
}

/// bangerd configured for the default network, a helper that gives this user another: the
/// network check fails and its fix names both ways out; configured as the helper says, it
/// passes.
async fn the_network_check_follows_the_helper_and_names_what_it_gives() {
    let uid = nix::unistd::geteuid();
    let given = format!("{uid}:banger0:10.44.1.7/22");
    let mut daemon = Bangerd::start_on(TestRoot::with_helper_args(&["--network", &given]));
    let network = doctor_json_check(&daemon, "network");
    assert_eq!(network["status"], "fail", "{network}");
    assert_eq!(
        network["summary"],
        "bangerd uses banger0 (172.30.0.1/24), but banger-helper gives this user banger0 (10.44.1.7/22)",
        "{network}"
    );
    let fix = network["fix"].as_str().unwrap();
    assert!(
        fix.contains("`gateway = \"10.44.1.7/22\"`")
            && fix.contains(&format!("--network {uid}:banger0:172.30.0.1/24")),
        "{fix}"
    );
    let config = daemon.layout().config_path();
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "[network]\ngateway = \"10.44.1.7/22\"\n").unwrap();
    daemon.kill();
    daemon.restart();
    let network = doctor_json_check(&daemon, "network");
    assert_eq!(network["status"], "ok", "{network}");
    assert!(
        network["summary"]
            .as_str()
            .unwrap()
            .contains("gives banger0 (10.44.1.7/22)"),
        "{network}"
    );
}

/// `banger doctor --json` against `root` (never starting bangerd), with `env`; its status
/// and the report of check `name`.
fn doctor_check(root: &Path, env: &[(&str, &Path)], name: &str) -> (Option<i32>, Value) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_banger"));
    command
        .args(["doctor", "--json"])
        .env("BANGER_ROOT", root)
        .env("BANGER_NO_AUTOSTART", "1")
        .env_remove("BANGER_FIRECRACKER")
        .env_remove("BANGER_SYSTEM_ROOT")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run banger doctor");
    let json: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}\n{}", text(&output)));
    (output.status.code(), check_named(&json, name))
}

/// As an ordinary user who cannot open `/dev/net/tun` (made so: the doctor runs in a mount
/// namespace where a root-only file hides the device): with `vm.vmm = "firecracker"` the
/// devices check fails and points at QEMU; with `auto` it is fine, QEMU getting its tap from
/// banger-helper.
fn firecracker_needs_a_tun_its_user_can_open_and_qemu_does_not() {
    use std::os::unix::process::CommandExt;
    const USER: u32 = 61003;
    let root = TestRoot::without_network();
    let bin = root.scratch("bin");
    version_script(&bin, "firecracker", "Firecracker v1.12.0");
    // Root's alone, outside the root handed to the user.
    let hider_dir = tempfile::tempdir().unwrap();
    let hider = hider_dir.path().join("no-tun");
    std::fs::write(&hider, b"").unwrap();
    std::fs::set_permissions(&hider, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = root.layout().config_path();
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let devices = |vmm: &str| {
        std::fs::write(
            &config,
            format!(
                "[vm]\nvmm = \"{vmm}\"\n[firecracker]\nbinary = \"{}\"\n",
                bin.join("firecracker").display()
            ),
        )
        .unwrap();
        crate::support::chown_tree(root.path(), USER);
        let mut command = Command::new(env!("CARGO_BIN_EXE_banger"));
        command
            .args(["doctor", "--json"])
            .env("BANGER_ROOT", root.path())
            .env("BANGER_NO_AUTOSTART", "1")
            .env("HOME", root.path())
            .env_remove("BANGER_FIRECRACKER")
            .env_remove("BANGER_SYSTEM_ROOT");
        let hidden = std::ffi::CString::new(hider.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: unshare, mount, setgroups, setgid and setuid are async-signal-safe; the
        // strings live in the closure.
        unsafe {
            command.pre_exec(move || {
                use nix::mount::{MsFlags, mount};
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                if std::path::Path::new("/dev/net/tun").exists() {
                    mount(
                        Some(hidden.as_c_str()),
                        "/dev/net/tun",
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )?;
                }
                nix::unistd::setgroups(&[])?;
                nix::unistd::setgid(nix::unistd::Gid::from_raw(USER))?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(USER))?;
                Ok(())
            });
        }
        let output = command.output().unwrap();
        let json: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("doctor --json: {e}\n{}", text(&output)));
        check_named(&json, "devices")
    };
    let check = devices("firecracker");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["summary"]
            .as_str()
            .unwrap()
            .contains("firecracker opens each VM's tap itself"),
        "{check}"
    );
    assert!(
        check["fix"].as_str().unwrap().contains("run VMs on QEMU"),
        "{check}"
    );
    let check = devices("auto");
    assert_eq!(check["status"], "ok", "{check}");
    assert!(
        check["summary"]
            .as_str()
            .unwrap()
            .starts_with("QEMU gets each VM's tap from banger-helper"),
        "{check}"
    );
}

/// A program that prints `line` for `--version`.
fn version_script(dir: &Path, name: &str, line: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\necho '{line}'\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// firecracker and its jailer: at least 1.8 where new VMs run on Firecracker, with the fix;
/// where they run on QEMU the same findings are information.
fn firecracker_and_its_jailer_must_be_1_8_where_vms_run_on_them() {
    let root = TestRoot::without_network();
    let bin = root.scratch("fc");
    let config = root.layout().config_path();
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let firecracker = bin.join("firecracker");
    std::fs::write(
        &config,
        format!(
            "[vm]\nvmm = \"firecracker\"\n[firecracker]\nbinary = \"{}\"\n",
            firecracker.display()
        ),
    )
    .unwrap();

    version_script(&bin, "firecracker", "Firecracker v1.7.0");
    version_script(&bin, "jailer", "Jailer v1.7.0");
    let (code, check) = doctor_check(root.path(), &[], "firecracker");
    assert_eq!(code, Some(1), "{check}");
    assert_eq!(check["status"], "fail", "{check}");
    let summary = check["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!(
            "firecracker {} is v1.7.0, older than 1.8",
            firecracker.display()
        )) && summary.contains("jailer")
            && summary.contains("(vm.vmm is firecracker)"),
        "{check}"
    );
    assert!(
        check["fix"]
            .as_str()
            .unwrap()
            .starts_with("install Firecracker 1.8 or newer with its jailer"),
        "{check}"
    );

    // The jailer is looked for beside firecracker first.
    version_script(&bin, "firecracker", "Firecracker v1.10.1");
    std::fs::remove_file(bin.join("jailer")).unwrap();
    let (_, check) = doctor_check(
        root.path(),
        &[("PATH", Path::new("/usr/bin:/bin"))],
        "firecracker",
    );
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["summary"]
            .as_str()
            .unwrap()
            .contains("firecracker's jailer (jailer) is not installed"),
        "{check}"
    );
    version_script(&bin, "jailer", "Jailer v1.10.1");
    let (_, check) = doctor_check(root.path(), &[], "firecracker");
    assert_eq!(check["status"], "ok", "{check}");
    assert_eq!(
        check["summary"],
        format!(
            "firecracker v1.10.1 ({}), jailer v1.10.1 ({})",
            firecracker.display(),
            bin.join("jailer").display()
        ),
        "{check}"
    );

    // On QEMU, an old firecracker is only information.
    version_script(&bin, "firecracker", "Firecracker v1.7.0");
    std::fs::write(
        &config,
        format!(
            "[vm]\nvmm = \"qemu\"\n[firecracker]\nbinary = \"{}\"\n",
            firecracker.display()
        ),
    )
    .unwrap();
    let (_, check) = doctor_check(root.path(), &[], "firecracker");
    assert_eq!(check["status"], "ok", "{check}");
    assert!(
        check["summary"]
            .as_str()
            .unwrap()
            .starts_with("not needed (vm.vmm is qemu): "),
        "{check}"
    );
}

/// The default image and its kernel: not here but in the catalogs (pulled on first use, so
/// fine), or named by nothing (a failure with the fix).
async fn the_default_image_and_kernel_are_here_or_pullable() {
    let daemon = Bangerd::start_on_host_network(TestRoot::without_network());
    let (_, check) = doctor_check(daemon.root().path(), &[], "defaults");
    assert_eq!(check["status"], "ok", "{check}");
    assert_eq!(
        check["summary"],
        "default image debian is pulled on first use (oci:docker.io/library/debian:bookworm); its kernel debian-12-cloud is pulled on first use (25.5 MiB)",
        "{check}"
    );
    drop(daemon);

    // A catalog whose default image is nowhere, then one whose image's kernel is nowhere.
    for (catalog, wanted, fix) in [
        (
            r#"{"format":1,"default_image":"ghost"}"#,
            "the default image ghost is neither here nor in the image catalog",
            "banger image pull REFERENCE --name ghost",
        ),
        (
            r#"{"format":1,"images":[{"name":"debian","description":"d","kernel":"nokernel","source":{"kind":"oci","reference":"docker.io/library/debian:bookworm"}}]}"#,
            "its kernel nokernel is neither here nor in the kernel catalog",
            "banger kernel import nokernel --from DIR",
        ),
    ] {
        let root = TestRoot::without_network();
        let file = root.scratch("catalog").join("images.json");
        std::fs::write(&file, catalog).unwrap();
        let config = root.layout().config_path();
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(
            &config,
            format!("[images]\ncatalog = \"{}\"\n", file.display()),
        )
        .unwrap();
        let daemon = Bangerd::start_on_host_network(root);
        let (code, check) = doctor_check(daemon.root().path(), &[], "defaults");
        assert_eq!(code, Some(1), "{check}");
        assert_eq!(check["status"], "fail", "{check}");
        assert!(
            check["summary"].as_str().unwrap().contains(wanted),
            "{check}"
        );
        assert!(check["fix"].as_str().unwrap().contains(fix), "{check}");
    }
}

/// Security posture: loose modes on bangerd's directories, and an installed unit that is not
/// what install writes (here: the helper allowing root too), each with its fix.
fn posture_finds_loose_modes_unit_drift_and_a_wider_allow_list() {
    use std::os::unix::fs::PermissionsExt;
    let daemon = Bangerd::start_on_host_network(TestRoot::without_network());
    let root = daemon.root().path();
    let (_, check) = doctor_check(root, &[], "posture");
    assert_eq!(check["status"], "ok", "{check}");

    let state = daemon.layout().state_dir;
    let run = daemon.layout().runtime_dir;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, check) = doctor_check(root, &[], "posture");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(code, Some(1), "{check}");
    assert_eq!(check["status"], "fail", "{check}");
    let fixes: Vec<&str> = check["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["fix"].as_str())
        .collect();
    assert_eq!(
        fixes,
        [
            format!("chmod 0700 {}", run.display()),
            format!("chmod go-w {}", state.display())
        ],
        "{check}"
    );

    // A system install (for Debian's `daemon` account, into a throwaway system root).
    let system = tempfile::Builder::new()
        .prefix("banger-sysroot-")
        .tempdir_in("/tmp")
        .unwrap();
    let installed = Command::new(env!("CARGO_BIN_EXE_banger"))
        .args(["system", "install", "--owner", "daemon", "--no-start"])
        .env("BANGER_SYSTEM_ROOT", system.path())
        .output()
        .unwrap();
    assert!(installed.status.success(), "{}", text(&installed));
    let env = [("BANGER_SYSTEM_ROOT", system.path())];
    let (_, check) = doctor_check(root, &env, "posture");
    assert_eq!(check["status"], "ok", "{check}");
    assert!(
        check["summary"].as_str().unwrap().ends_with(
            "the installed units (bangerd for daemon) are what `banger system install` writes"
        ),
        "{check}"
    );

    let unit = system
        .path()
        .join("etc/systemd/system/banger-helper.service");
    let text_before = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(
        &unit,
        text_before.replace("--allow-uid 1\n", "--allow-uid 1 --allow-uid 0\n"),
    )
    .unwrap();
    let (code, check) = doctor_check(root, &env, "posture");
    assert_eq!(code, Some(1), "{check}");
    let items = check["items"].as_array().unwrap();
    let whats: Vec<&str> = items.iter().filter_map(|i| i["what"].as_str()).collect();
    assert_eq!(
        whats,
        [
            format!("banger-helper.service ({}) is edited since install", unit.display()),
            "banger-helper.service lets uid(s) 1, 0 use banger-helper, not only the owner's (1): --allow-uid".to_owned(),
        ],
        "{check}"
    );
    assert!(
        items
            .iter()
            .all(|i| i["fix"] == "sudo banger system install --owner daemon"),
        "{check}"
    );
    assert_eq!(
        items[1]["detail"]["allowed_uids"],
        serde_json::json!(["1", "0"])
    );
}
