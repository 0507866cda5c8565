//! Firecracker launched by banger-helper through the jailer, for a bangerd that runs as an
//! ordinary user with no access to `/dev/kvm` or `/dev/net/tun` (banger as deployed).
//!
//! In CI the jailer is the project's fake (`fake-jailer`: the real one's layout, device
//! nodes, ownership and privilege drop, but no chroot, because the fake firecracker and the
//! agent it runs are dynamically linked host programs) and the VMM the fake firecracker; in
//! the Firecracker tier a second test drives the real jailer and the real Firecracker as far
//! as this machine lets them go (configured, not booted).
//!
//! The hostile requests are sent to the helper as the owner itself (the thread-local
//! credentials of [`crate::deployed`]): a forged pid (the owner's own bangerd, root's init),
//! a reused pid (the right pid with another start time), a console the owner does not own,
//! a path-climbing VM id; and as another user, refused outright. Each changes nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use banger::host::vmm::{DriveSpec, LaunchSpec, NetSpec, Vmm, VsockSpec};
use serde_json::Value;

use crate::deployed::{helper_as, uid_of};
use crate::support::{Bangerd, TestRoot, chown_tree, kernel_source, rootfs_file};

/// bangerd's user (apart from the deployed test's, which may run beside this one).
const OWNER: u32 = 61011;
/// Another ordinary user on the same host.
const STRANGER: u32 = 61012;

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync an_ordinary_users_firecracker_runs_through_the_helpers_jailer_which_kills_only_its_own needs(Root),
        sync the_real_jailer_runs_the_real_firecracker_for_an_ordinary_user_who_configures_it needs(Root, Firecracker),
    ]
}

/// A root-owned directory for the jails, beside the test roots (same filesystem: bangerd
/// links the VM's disks into its jail), removed at the end.
fn jail_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("banger-jail-")
        .tempdir_in("/tmp")
        .expect("create the jail directory")
}

/// banger-helper's command line for these tests: [`OWNER`] allowed (root gets a network of its
/// own, so the owner keeps the default one), and `jailer` running `firecracker` into `jails`.
fn helper_args(jailer: &Path, firecracker: &Path, jails: &Path) -> Vec<String> {
    vec![
        "--allow-uid".into(),
        OWNER.to_string(),
        "--network".into(),
        "0:bangerroot:10.97.0.1/24".into(),
        "--jailer".into(),
        jailer.display().to_string(),
        "--firecracker".into(),
        firecracker.display().to_string(),
        "--jail-dir".into(),
        jails.display().to_string(),
    ]
}

/// The processes whose executable file is in `dir` (by path, as root sees them).
fn processes_running_from(dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.starts_with(dir))
        })
        .collect()
}

fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// The CLI as bangerd's user.
fn cli(daemon: &Bangerd, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_banger"));
    std::os::unix::process::CommandExt::uid(&mut command, OWNER);
    std::os::unix::process::CommandExt::gid(&mut command, OWNER);
    command
        .args(args)
        .env("HOME", daemon.root().path())
        .env("BANGER_ROOT", daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        // As bangerd has it (the test network's helper), for doctor's questions to the helper.
        .env(
            "BANGER_HELPER_SOCKET",
            daemon.root().network().unwrap().socket(),
        )
        .current_dir(daemon.root().path())
        .stdin(Stdio::null())
        .output()
        .expect("run banger")
}

fn ok(daemon: &Bangerd, args: &[&str]) -> String {
    let output = cli(daemon, args);
    assert!(
        output.status.success(),
        "banger {args:?} failed:\n{}{}\nbangerd said:\n{}\nbanger-helper said:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        daemon.output(),
        daemon.root().network().unwrap().helper_log()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn an_ordinary_users_firecracker_runs_through_the_helpers_jailer_which_kills_only_its_own() {
    let fake = crate::firecracker::fake_binary().display().to_string();
    let jailer = crate::support::workspace_binary("banger-tools", "fake-jailer");
    let jails = jail_dir();
    let args = helper_args(&jailer, Path::new(&fake), jails.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let root = TestRoot::with_helper_args_and_env(
        &args,
        // The jailed fake firecracker "boots" by running the real agent on the host.
        &[("BANGER_FAKE_AGENT", env!("CARGO_BIN_EXE_banger-agent"))],
    );
    let config = root.layout().config_path();
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!("[vm]\nvmm = \"firecracker\"\n[firecracker]\nbinary = \"{fake}\"\nlaunch = \"helper\"\n[network]\ntap_pool = 0\n"),
    )
    .unwrap();
    let inputs = root.scratch("inputs");
    let kernel = kernel_source(&inputs.join("kernel"), "6.1.0-test", false);
    let rootfs = rootfs_file(&inputs.join("rootfs.ext4"), 4 << 20);
    let mut daemon = Bangerd::start_on_as(root, OWNER);
    chown_tree(&inputs, OWNER);
    ok(
        &daemon,
        &["kernel", "import", "k", "--from", kernel.to_str().unwrap()],
    );
    ok(
        &daemon,
        &[
            "image",
            "register",
            "img",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--kernel",
            "k",
        ],
    );

    // doctor, as the owner: Firecracker is what banger-helper starts, and this user's lack
    // of /dev/net/tun does not matter.
    let doctor = cli(&daemon, &["doctor", "--json"]);
    let report: Value = serde_json::from_slice(&doctor.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json: {e}: {}",
            String::from_utf8_lossy(&doctor.stderr)
        )
    });
    let firecracker_check = crate::doctor::check_named(&report, "firecracker");
    assert_eq!(firecracker_check["status"], "ok", "{firecracker_check}");
    let summary = firecracker_check["summary"].as_str().unwrap();
    assert!(
        summary.contains("banger-helper starts it through its jailer")
            && summary.contains("fake-jailer"),
        "{firecracker_check}"
    );
    let devices = crate::doctor::check_named(&report, "devices");
    assert_eq!(devices["status"], "ok", "{devices}");
    assert!(
        devices["summary"]
            .as_str()
            .unwrap()
            .contains("banger-helper's jailer starts Firecracker"),
        "{devices}"
    );

    ok(&daemon, &["vm", "create", "dev", "--image", "img"]);
    let jails_root = jails.path().join("fake-firecracker");
    let vmms = processes_running_from(&jails_root);
    assert_eq!(vmms.len(), 1, "one jailed VMM: {vmms:?}");
    let vmm = vmms[0];
    assert_eq!(uid_of(vmm), OWNER, "the jailed VMM runs as the owner");
    let jail_root = std::fs::read_link(format!("/proc/{vmm}/cwd")).unwrap();
    assert!(
        jail_root.starts_with(&jails_root),
        "{}",
        jail_root.display()
    );
    let meta = std::fs::metadata(&jail_root).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (OWNER, 0o700));
    let tun = std::fs::metadata(jail_root.join("dev/net/tun")).unwrap();
    assert_eq!((tun.uid(), tun.mode() & 0o777), (OWNER, 0o600));
    // The disks are the VM's own files, linked in: what the guest writes lands in them.
    let vm_dirs = crate::support::dir_names(&daemon.layout().vms_dir());
    assert_eq!(vm_dirs.len(), 1, "{vm_dirs:?}");
    let vm_id = vm_dirs[0].clone();
    let vm_dir = daemon.layout().vms_dir().join(&vm_id);
    assert_eq!(
        std::fs::metadata(jail_root.join("drive-rootfs"))
            .unwrap()
            .ino(),
        std::fs::metadata(vm_dir.join("root.ext4")).unwrap().ino()
    );
    assert_eq!(
        std::fs::read_link(vm_dir.join("api.sock")).unwrap(),
        jail_root.join("firecracker.socket")
    );
    // The guest (the agent, reached over the vsock link into the jail) answers.
    let hello = ok(
        &daemon,
        &["vm", "exec", "dev", "--", "echo", "hello from the jail"],
    );
    assert_eq!(hello.trim(), "hello from the jail");

    // Hostile requests, as the owner: a forged pid, a reused one, a console not its own, a
    // climbing id; and anything at all as another user. None changes anything.
    let socket = daemon.root().network().unwrap().socket().to_path_buf();
    let bangerd = daemon.pid();
    let refusals = [
        helper_as(OWNER, &socket, async |c| {
            c.kill_vmm("dev", bangerd, start_time(bangerd)).await
        }),
        helper_as(OWNER, &socket, async |c| {
            c.kill_vmm(&vm_id, bangerd, start_time(bangerd)).await
        }),
        helper_as(OWNER, &socket, async |c| {
            c.kill_vmm(&vm_id, 1, start_time(1)).await
        }),
        helper_as(OWNER, &socket, async |c| c.remove_jail(&vm_id).await),
        helper_as(OWNER, &socket, async |c| c.remove_jail("../../etc").await),
        helper_as(STRANGER, &socket, async |c| {
            c.kill_vmm(&vm_id, vmm, start_time(vmm)).await
        }),
    ];
    for (i, refusal) in refusals.iter().enumerate() {
        assert!(
            matches!(refusal, Err(message) if message.contains("refused")),
            "request {i} was not refused: {refusal:?}"
        );
    }
    assert!(
        refusals[1]
            .as_ref()
            .unwrap_err()
            .contains("is not the Firecracker"),
        "{refusals:?}"
    );
    assert!(
        refusals[2].as_ref().unwrap_err().contains("is not yours"),
        "{refusals:?}"
    );
    assert!(
        refusals[3].as_ref().unwrap_err().contains("still runs"),
        "{refusals:?}"
    );
    // A reused pid (the right pid, another start time) is a process that is gone: nothing is
    // signalled, and the jail stays while its VMM runs.
    let reused = helper_as(OWNER, &socket, async |c| {
        c.kill_vmm(&vm_id, vmm, start_time(vmm) + 1).await
    });
    assert!(
        matches!(&reused, Err(message) if message.contains("still runs")),
        "{reused:?}"
    );
    // A console the owner does not own (root's file, opened by root and passed by the owner).
    let roots_file =
        std::fs::File::create(daemon.root().scratch("x").join("roots-console")).unwrap();
    let launch = helper_as(OWNER, &socket, async |c| {
        c.launch_firecracker("0123456789abcdef", &roots_file).await
    });
    assert!(
        matches!(&launch, Err(message) if message.contains("must be a regular file you own")),
        "{launch:?}"
    );
    assert_eq!(
        processes_running_from(&jails_root),
        vec![vmm],
        "nothing changed"
    );
    assert_eq!(start_time(vmm), start_time(vmms[0]));
    assert_eq!(
        ok(&daemon, &["vm", "exec", "dev", "--", "echo", "still"]).trim(),
        "still"
    );

    // A restarted bangerd re-adopts the jailed VMM (through the links into its jail).
    daemon.kill();
    daemon.restart();
    assert_eq!(
        ok(&daemon, &["vm", "exec", "dev", "--", "echo", "adopted"]).trim(),
        "adopted"
    );
    assert_eq!(processes_running_from(&jails_root), vec![vmm]);

    // The chroot is the owner's: links it puts there to root's files are removed with the
    // jail, never followed (what they point at stays).
    let roots_dir = daemon.root().scratch("roots-dir");
    std::fs::write(roots_dir.join("keep"), b"root's").unwrap();
    let planted = jail_root.join("planted");
    let roots_dir_for_owner = roots_dir.clone();
    crate::deployed::as_user(OWNER, move || {
        std::os::unix::fs::symlink(&roots_dir_for_owner, &planted).unwrap();
    });

    // The whole life: stop (the jail goes with the VMM), start (a new jail), delete.
    ok(&daemon, &["vm", "stop", "dev"]);
    assert!(processes_running_from(&jails_root).is_empty());
    assert!(!jail_root.exists(), "the jail of a stopped VM is removed");
    assert_eq!(
        std::fs::read(roots_dir.join("keep")).unwrap(),
        b"root's",
        "a link in the jail was not followed"
    );
    // A VMM left running in a VM's jail (a bangerd that crashed between the launch and its
    // record) is replaced by the next launch, never run beside it.
    let console = std::fs::OpenOptions::new()
        .append(true)
        .open(vm_dir.join("console.log"))
        .unwrap();
    let orphan = helper_as(OWNER, &socket, async |c| {
        c.launch_firecracker(&vm_id, &console).await
    })
    .expect("the owner's own launch");
    assert_eq!(uid_of(orphan.pid), OWNER);
    ok(&daemon, &["vm", "start", "dev"]);
    let again = processes_running_from(&jails_root);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0], vmm);
    assert_ne!(again[0], orphan.pid, "the orphan was replaced");
    assert_eq!(
        ok(&daemon, &["vm", "exec", "dev", "--", "echo", "again"]).trim(),
        "again"
    );
    // A VMM killed behind bangerd's back is noticed (watched by pid and start time, as the
    // helper, not bangerd, is its parent).
    ok(&daemon, &["vm", "kill", "dev"]);
    assert!(processes_running_from(&jails_root).is_empty());
    ok(&daemon, &["vm", "delete", "dev"]);
    assert!(processes_running_from(&jails_root).is_empty());
    let left: Vec<PathBuf> = std::fs::read_dir(&jails_root)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "jails left behind: {left:?}");

    // bangerd killed right after the helper launched a VM's VMM (before the step's end reached
    // the log): recovery finds the jailed VMM through the VM directory's link, has the helper
    // kill it, and the jail goes with it.
    daemon.kill();
    daemon.restart_with(&[("BANGER_FAILPOINT", "vm.create:launch-vmm:after")]);
    let crashed = cli(&daemon, &["vm", "create", "crashy", "--image", "img"]);
    assert!(!crashed.status.success(), "the failpoint crashed bangerd");
    let _ = daemon.wait();
    assert_eq!(
        processes_running_from(&jails_root).len(),
        1,
        "the launch happened before the crash"
    );
    daemon.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !processes_running_from(&jails_root).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "recovery left the jailed VMM running:\n{}",
            daemon.output()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let listed = ok(&daemon, &["vm", "list"]);
    assert!(!listed.contains("crashy"), "{listed}");
    let left: Vec<PathBuf> = std::fs::read_dir(&jails_root)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "the crashed launch's jail is left: {left:?}"
    );
}

/// The real jailer and Firecracker (the Firecracker tier: `BANGER_FIRECRACKER`, and the
/// jailer beside it or at `BANGER_JAILER`): the helper launches Firecracker for the owner in
/// a real chroot; the owner's [`banger::host::jailed::JailedFirecracker`] links the kernel and
/// disks in and configures it through the API; the helper kills it and removes the jail.
/// This machine's KVM boots no stock guest, so nothing is started.
fn the_real_jailer_runs_the_real_firecracker_for_an_ordinary_user_who_configures_it() {
    let (firecracker, jailer) = real_firecracker_and_jailer();
    let jails = jail_dir();
    let args = helper_args(&jailer, &firecracker, jails.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let root = TestRoot::with_helper_args(&args);
    let network = root.network().unwrap();
    let socket = network.socket().to_path_buf();
    let vm_dir = root.scratch("vms").join("00000000000000aa");
    std::fs::create_dir_all(&vm_dir).unwrap();
    std::fs::write(vm_dir.join("vmlinux"), vec![0u8; 4096]).unwrap();
    std::fs::write(vm_dir.join("root.ext4"), vec![0u8; 1 << 20]).unwrap();
    chown_tree(root.path(), OWNER);
    let spec = LaunchSpec {
        id: "00000000000000aa".into(),
        api_socket: vm_dir.join("api.sock"),
        console_log: vm_dir.join("console.log"),
        vmm_log: Some(vm_dir.join("firecracker.log")),
        vcpus: 1,
        mem_mib: 128,
        kernel: vm_dir.join("vmlinux"),
        initrd: None,
        boot_args: "console=ttyS0".into(),
        drives: vec![DriveSpec {
            id: "rootfs".into(),
            path: vm_dir.join("root.ext4"),
            root: true,
            read_only: false,
        }],
        // The owner's tap, which Firecracker opens through the jail's /dev/net/tun.
        net: Some(NetSpec {
            tap: "bt00aa".into(),
            mac: Some("02:fc:00:00:00:aa".into()),
        }),
        vsock: Some(VsockSpec {
            cid: 3,
            uds_path: vm_dir.join("vsock.sock"),
        }),
        agent_serial: None,
    };
    helper_as(OWNER, &socket, async |c| {
        c.ensure_network(&banger_helper::NetworkSpec {
            bridge: "banger0".into(),
            gateway: std::net::Ipv4Addr::new(172, 30, 0, 1),
            prefix_len: 24,
        })
        .await?;
        c.ensure_tap("bt00aa", "banger0").await
    })
    .expect("the owner's network and tap");
    let vmm = banger::host::jailed::JailedFirecracker::new(
        banger_helper::HelperClient::new(&socket),
        &firecracker,
    );
    let (launched, config) = crate::deployed::as_user(OWNER, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let spawned = vmm
                .spawn(&spec)
                .await
                .expect("the jailer launches firecracker");
            vmm.configure(&spawned.launched, &spec)
                .await
                .expect("firecracker takes the jail's paths");
            let config: Value = banger::host::firecracker::FirecrackerClient::new(&spec.api_socket)
                .request(banger::host::firecracker::Method::Get, "/vm/config", None)
                .await
                .map(|raw| serde_json::from_slice(&raw.body).unwrap_or(Value::Null))
                .expect("GET /vm/config");
            (spawned.launched, config)
        })
    });
    println!(
        "the jailed firecracker (pid {}) reads back: {config}",
        launched.pid
    );
    assert_eq!(uid_of(launched.pid), OWNER);
    assert_eq!(
        config["boot-source"]["kernel_image_path"], "kernel",
        "{config}"
    );
    assert_eq!(
        config["drives"][0]["path_on_host"], "drive-rootfs",
        "{config}"
    );
    assert_eq!(config["vsock"]["uds_path"], "vsock.sock", "{config}");
    assert_eq!(
        config["network-interfaces"][0]["host_dev_name"], "bt00aa",
        "{config}"
    );
    let console = std::fs::read_to_string(&spec.console_log).unwrap();
    assert!(console.contains("Running Firecracker"), "{console}");
    // Killed through the helper, by identity; the jail goes with it.
    crate::deployed::as_user(OWNER, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(vmm.kill(&launched))
            .expect("the helper kills its own launch")
    });
    assert!(
        std::fs::read_dir(jails.path().join("firecracker"))
            .map(|entries| entries.count() == 0)
            .unwrap_or(true),
        "the jail is removed"
    );
}

/// The Firecracker tier's firecracker (`BANGER_FIRECRACKER`) and its jailer: beside it, or
/// at `BANGER_JAILER`.
pub(crate) fn real_firecracker_and_jailer() -> (PathBuf, PathBuf) {
    let firecracker = banger_test_harness::firecracker().expect("the Firecracker tier");
    let jailer = std::env::var_os("BANGER_JAILER")
        .map(PathBuf::from)
        .unwrap_or_else(|| firecracker.with_file_name("jailer"));
    assert!(
        jailer.is_file(),
        "no jailer at {}: set BANGER_JAILER",
        jailer.display()
    );
    (firecracker, jailer)
}
