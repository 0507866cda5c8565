//! banger as it is deployed: bangerd, the CLI and the VMs run as an ordinary user; only
//! banger-helper runs as root, allowing that user (and giving root's own uid a network apart).
//! The VMM is QEMU, whose tap banger-helper opens and passes in (`open_tap`), so the user needs
//! no access to `/dev/net/tun` (nor to `/dev/kvm`: QEMU emulates where the user has none).
//!
//! Asked directly, the helper gives the owner only its own network and taps (another uid's
//! tap, a foreign subnet, another's bridge are refused and change nothing) and a second
//! ordinary user nothing at all. The requests that take a pid (a forged or reused one) and
//! the chroot an owner could fill with links are `crate::jailed`'s, where Firecracker runs
//! through the helper's jailer for such a user.
//!
//! `/dev/kvm` the same way: the helper opens it for the owner (`open_kvm`), and a QEMU 8.2+
//! started by the owner takes it as a descriptor and runs its accelerator on it.
//!
//! The users are bare uids with no passwd entry, so the host gains no account. The test runs
//! in the root tier (it creates the namespace, hands the state directory over, drops to the
//! user) and the QEMU tier (a real guest boots).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::guest_images::GuestRoot;
use crate::real_guests::{Lab, text};
use crate::support::TestRoot;

/// bangerd's user.
const OWNER: u32 = 61001;
/// Another ordinary user on the same host.
const STRANGER: u32 = 61002;

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync an_ordinary_user_runs_bangerd_and_its_qemu_vms_with_only_the_helper_as_root needs(Root, Qemu),
        sync an_ordinary_users_qemu_runs_under_kvm_the_helper_opened needs(Root, Qemu, Kvm),
    ]
}

/// The uid `/proc/PID/status` gives process `pid` (its real uid).
pub(crate) fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .unwrap_or_else(|| panic!("no Uid line for {pid}:\n{status}"))
}

/// Runs `work` on a thread of its own whose credentials are `uid`'s (gid the same, no
/// supplementary groups), set with the raw system calls, which change only the calling
/// thread (glibc's wrappers would change the whole test process). A socket it connects is
/// that user's as SO_PEERCRED sees it.
pub(crate) fn as_user<T: Send>(uid: u32, work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: plain system calls on this thread's own credentials.
                unsafe {
                    assert_eq!(
                        libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                        0
                    );
                    assert_eq!(libc::syscall(libc::SYS_setresgid, uid, uid, uid), 0);
                    assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
                }
                work()
            })
            .join()
            .expect("the thread as another user")
    })
}

/// One helper request as `uid`; what it answered, or its error as text.
pub(crate) fn helper_as<T: Send>(
    uid: u32,
    socket: &std::path::Path,
    request: impl AsyncFnOnce(&banger_helper::HelperClient) -> Result<T, banger_helper::HelperError>
    + Send,
) -> Result<T, String> {
    let socket = socket.to_path_buf();
    as_user(uid, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = banger_helper::HelperClient::new(socket);
        runtime
            .block_on(request(&client))
            .map_err(|error| error.to_string())
    })
}

/// Whether anybody but root may open `device` for writing, by its mode.
fn open_to_others(device: &str) -> bool {
    std::fs::metadata(device).is_ok_and(|meta| meta.permissions().mode() & 0o002 != 0)
}

fn an_ordinary_user_runs_bangerd_and_its_qemu_vms_with_only_the_helper_as_root() {
    let root = TestRoot::with_helper_args(&[
        "--allow-uid",
        &OWNER.to_string(),
        // The test itself (root) is allowed by the sandbox; it gets a network of its own so
        // that the owner keeps the default one.
        "--network",
        "0:bangerroot:10.98.0.1/24",
    ]);
    let lab = Lab::start_as(root, OWNER, |_| String::new());
    assert_eq!(uid_of(lab.daemon.pid()), OWNER, "bangerd runs as the owner");
    println!(
        "/dev/net/tun open to others: {}; /dev/kvm open to others: {}",
        open_to_others("/dev/net/tun"),
        open_to_others("/dev/kvm")
    );

    // doctor, as the owner: the helper answers and gives the default network; the devices
    // this user cannot open are not needed.
    let doctor = lab.cli(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", text(&doctor.stderr)));
    let check = |name: &str| crate::doctor::check_named(&report, name);
    let network = check("network");
    assert_eq!(network["status"], "ok", "{network}");
    assert!(
        network["summary"]
            .as_str()
            .unwrap()
            .contains("gives banger0 (172.30.0.1/24)"),
        "{network}"
    );
    let devices = check("devices");
    assert_eq!(devices["status"], "ok", "{devices}");
    assert!(
        devices["summary"]
            .as_str()
            .unwrap()
            .starts_with("QEMU gets each VM's tap from banger-helper"),
        "{devices}"
    );

    let reference = lab.push(GuestRoot::Container, "banger/debian-plain:12");
    lab.ok(&["image", "pull", &reference, "--name", "plain"]);
    lab.ok(&[
        "vm", "create", "dev", "--image", "plain", "--vmm", "qemu", "--cpus", "1", "--memory",
        "384M",
    ]);
    let qemus = lab.qemus();
    assert_eq!(qemus.len(), 1, "{qemus:?}");
    assert_eq!(uid_of(qemus[0]), OWNER, "QEMU runs as the owner");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", qemus[0])).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("tap,id=net0,fd=3"),
        "QEMU got its tap from the helper"
    );
    // The guest's NIC works: its resolver reaches bangerd's DNS server across the bridge
    // (whose port 53 banger-helper bound for the unprivileged bangerd).
    let ip = lab.exec("dev", &["getent", "hosts", "dev.vm"]);
    assert!(ip.starts_with("172.30.0."), "{ip}");

    // The whole life: stop, start (QEMU again, its tap opened again), delete.
    lab.ok(&["vm", "stop", "dev"]);
    assert!(lab.qemus().is_empty());
    lab.ok(&["vm", "start", "dev"]);
    let again = lab.exec("dev", &["getent", "hosts", "dev.vm"]);
    assert_eq!(again, ip);
    lab.ok(&["vm", "delete", "dev"]);
    assert!(lab.qemus().is_empty());
    lab.taps_are_only_spares();

    // The helper, asked directly: the owner gets only its own network and taps; another
    // user gets nothing at all. Nothing changes on the host for any of it.
    let socket = lab.network().socket().to_path_buf();
    let before = lab.network().run("ip", &["-br", "link", "show"]);
    let table_before = lab.network().run("nft", &["list", "table", "ip", "banger"]);
    let foreign = banger_helper::NetworkSpec {
        bridge: "banger0".into(),
        gateway: std::net::Ipv4Addr::new(10, 99, 0, 1),
        prefix_len: 16,
    };
    let root_client = banger_helper::HelperClient::new(&socket);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(root_client.ensure_network(&banger_helper::NetworkSpec {
            bridge: "bangerroot".into(),
            gateway: std::net::Ipv4Addr::new(10, 98, 0, 1),
            prefix_len: 24,
        }))
        .expect("root's own network");
    runtime
        .block_on(root_client.ensure_tap("bt0123", "bangerroot"))
        .expect("root's own tap");
    let before = (before, lab.network().run("ip", &["-br", "link", "show"]));
    let refusals = [
        helper_as(OWNER, &socket, async |c| c.ensure_network(&foreign).await),
        helper_as(OWNER, &socket, async |c| c.delete_tap("bt0123").await),
        helper_as(OWNER, &socket, async |c| {
            c.open_tap("bt0123").await.map(drop)
        }),
        helper_as(OWNER, &socket, async |c| {
            c.remove_network("bangerroot").await
        }),
        helper_as(OWNER, &socket, async |c| {
            c.ensure_tap("bt0124", "bangerroot").await
        }),
        helper_as(STRANGER, &socket, async |c| c.version().await.map(drop)),
        helper_as(STRANGER, &socket, async |c| c.list_taps().await.map(drop)),
    ];
    for (i, refusal) in refusals.iter().enumerate() {
        assert!(
            matches!(refusal, Err(message) if message.contains("refused")),
            "request {i} was not refused: {refusal:?}"
        );
    }
    assert!(
        refusals[5]
            .as_ref()
            .unwrap_err()
            .contains("uid 61002 is not allowed"),
        "{:?}",
        refusals[5]
    );
    assert_eq!(
        lab.network().run("ip", &["-br", "link", "show"]),
        before.1,
        "a refused request changed the links"
    );
    assert!(before.0.contains("banger0"), "{}", before.0);
    let taps = helper_as(OWNER, &socket, async |c| c.list_taps().await).unwrap();
    assert!(!taps.contains(&"bt0123".to_owned()), "{taps:?}");
    runtime
        .block_on(root_client.delete_tap("bt0123"))
        .expect("root removes its tap");
    runtime
        .block_on(root_client.remove_network("bangerroot"))
        .expect("root removes its network");
    assert_eq!(
        lab.network().run("nft", &["list", "table", "ip", "banger"]),
        table_before,
        "the owner's rules are whole after root's network went"
    );

    // Another ordinary user reaches neither the owner's bangerd nor its state.
    let output = Command::new(env!("CARGO_BIN_EXE_banger"))
        .args(["vm", "list"])
        .env("BANGER_ROOT", lab.daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .env("HOME", "/nonexistent")
        .uid(STRANGER)
        .gid(STRANGER)
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(
        text(&output.stderr).contains("ermission denied"),
        "{}",
        text(&output.stderr)
    );
}

/// `KVM_CREATE_VM` (`_IO(KVMIO, 0x01)`): what a VMM does first with `/dev/kvm`.
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;

fn an_ordinary_users_qemu_runs_under_kvm_the_helper_opened() {
    use banger::host::vmm::Vmm as _;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // Root (the test) has a network apart, as above: one network per uid.
    let root = TestRoot::with_helper_args(&[
        "--allow-uid",
        &OWNER.to_string(),
        "--network",
        "0:bangerroot:10.98.0.1/24",
    ]);
    let socket = root.network().expect("a helper").socket().to_path_buf();
    let own = as_user(OWNER, || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(banger::host::kvm::KVM_DEVICE)
            .map(drop)
    });
    if open_to_others(banger::host::kvm::KVM_DEVICE) {
        println!("/dev/kvm is open to others here: the owner's own open is not refused");
    } else {
        let error = own.expect_err("the owner opened /dev/kvm itself");
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::PermissionDenied,
            "{error}"
        );
    }

    // The helper hands the owner KVM's device (checked by the client), on which the owner
    // can make a VM; a user it does not allow gets nothing.
    let vm_fd = helper_as(OWNER, &socket, async |c| {
        let kvm = c.open_kvm().await?;
        // SAFETY: KVM_CREATE_VM takes the machine type (0, the default) by value.
        let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
        // SAFETY: a descriptor the ioctl just returned, owned by nothing else.
        Ok((vm >= 0).then(|| unsafe { OwnedFd::from_raw_fd(vm) }))
    })
    .expect("the helper opens /dev/kvm for the owner");
    assert!(
        vm_fd.is_some(),
        "KVM_CREATE_VM on the helper's /dev/kvm: {}",
        std::io::Error::last_os_error()
    );
    let stranger = helper_as(STRANGER, &socket, async |c| c.open_kvm().await.map(drop));
    assert!(
        matches!(&stranger, Err(message) if message.contains("uid 61002 is not allowed")),
        "{stranger:?}"
    );

    // QEMU as bangerd starts it for the owner, its /dev/kvm from the helper: QEMU's own
    // `query-kvm` says the accelerator is on. The guest is left waiting (-S): a stock kernel
    // does not boot under a PVM-backed KVM, and the accelerator is what is tested here.
    let qemu = crate::qemu::qemu_taking_kvm_by_descriptor();
    let (kernel, _) = crate::qemu::debian_kernel();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(OWNER), Some(OWNER)).unwrap();
    let spec = banger::host::vmm::LaunchSpec {
        id: "kvm-from-helper".into(),
        api_socket: dir.path().join("api.sock"),
        console_log: dir.path().join("console.log"),
        vmm_log: Some(dir.path().join("vmm.log")),
        vcpus: 1,
        mem_mib: 128,
        kernel,
        initrd: None,
        boot_args: "console=ttyS0".into(),
        drives: Vec::new(),
        net: None,
        vsock: None,
        agent_serial: None,
    };
    let (launched, kvm_state, helper_said) = as_user(OWNER, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let helper = banger_helper::HelperClient::new(&socket);
            let opener = std::sync::Arc::new(banger::host::network::HelperKvm(helper.clone()));
            // What bangerd asks before it gives QEMU KVM this way: here, the host's KVM.
            let helper_said = banger::host::qemu::kvm_through_helper(
                &qemu,
                &banger::host::kvm::probe(),
                &*opener,
            )
            .await;
            let vmm = banger::host::qemu::QemuVmm::new(&qemu, banger::host::qemu::Accel::Tcg)
                .with_kvm_opener(opener);
            let spawned = vmm.spawn(&spec).await.unwrap_or_else(|e| {
                panic!(
                    "{e}\n{}",
                    std::fs::read_to_string(dir.path().join("vmm.log")).unwrap_or_default()
                )
            });
            let kvm_state = banger::host::qmp::QmpClient::new(&spec.api_socket)
                .execute("query-kvm", None)
                .await
                .expect("query-kvm");
            (spawned.launched, kvm_state, helper_said)
        })
    });
    let reaper = crate::qemu::Reaper(Some(launched.clone()));
    assert_eq!(uid_of(launched.pid), OWNER, "QEMU runs as the owner");
    assert_eq!(
        kvm_state,
        serde_json::json!({"enabled": true, "present": true}),
        "QEMU's accelerator"
    );
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", launched.pid))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .collect();
    assert!(
        fds.iter()
            .any(|target| target == std::path::Path::new("/dev/kvm")),
        "QEMU holds /dev/kvm: {fds:?}"
    );
    // bangerd's own judgement: KVM through the helper where it runs a stock guest, else why
    // not (here: PVM), never a silent TCG.
    match banger::host::kvm::probe_device() {
        device if device.runs_stock_guests() && !open_to_others(banger::host::kvm::KVM_DEVICE) => {
            assert_eq!(helper_said, Ok(()))
        }
        device if !device.runs_stock_guests() => {
            assert_eq!(helper_said, Err(device.describe()))
        }
        _ => println!("bangerd's judgement: {helper_said:?}"),
    }
    drop(reaper);
}
