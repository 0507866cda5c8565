//! VM networking through the real bangerd and the real banger-helper: every VM gets a tap of
//! its own on the banger bridge, with NAT to the outside, and the VMM really opens that tap.
//!
//! The helper runs as root in a network namespace of the test's own ([`TestNetwork`]) and
//! bangerd joins it, so the bridge, taps and nftables rules these tests make never touch the
//! host's network; the namespace dies with the helper. Inspection goes through `nsenter` into
//! that namespace (`ip -j`, `nft`), never through `/sys/class/net`, which shows the host's.

use std::time::Duration;

use banger::api::{VmCreateResult, VmResult, VmShowResult};
use banger::host::network::tap_name;
use banger::rpc::ClientError;
use banger_events::Handle;
use serde_json::{Value, json};

use super::support::{Bangerd, TestNetwork, TestRoot, kernel_source, rootfs_file, rpc_error};

/// A bangerd in a test network with a kernel `k` and an image `img`, and no spare taps (so
/// that each VM makes its own; [`lab_with_pool`] has a pool). Needs root: the tests are in
/// the harness's root tier.
pub(super) async fn lab(extra_env: &[(&str, &str)]) -> Bangerd {
    lab_with_pool(extra_env, 0).await
}

/// As [`lab`], with `tap_pool` spare taps.
async fn lab_with_pool(extra_env: &[(&str, &str)], tap_pool: usize) -> Bangerd {
    lab_on(
        TestRoot::new(),
        extra_env,
        &format!("tap_pool = {tap_pool}"),
    )
    .await
}

/// As [`lab`], on `root`, with `network` lines in the config's `[network]` section.
async fn lab_on(root: TestRoot, extra_env: &[(&str, &str)], network: &str) -> Bangerd {
    let config_dir = root.layout().config_dir;
    std::fs::create_dir_all(&config_dir).expect("create the config dir");
    std::fs::write(
        config_dir.join("config.toml"),
        format!("[network]\n{network}\n"),
    )
    .expect("write the config");
    let fake = crate::firecracker::fake_binary().display().to_string();
    let daemon = Bangerd::start_on_with(root, &env_with(&fake, extra_env));
    import_kernel_and_image(&daemon).await;
    daemon
}

/// Registers kernel `k` and image `img` (a small sparse rootfs) with `daemon`.
async fn import_kernel_and_image(daemon: &Bangerd) {
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
}

/// A helper that gives this user a /22 with its gateway mid-range, and a bangerd configured
/// for it: the bridge, NAT and the guest's address and kernel command line are that subnet's.
/// A bangerd configured for another subnet than the helper gives is refused, saying what the
/// helper gives, and nothing is made.
async fn guests_live_in_the_subnet_the_helper_gives_and_another_is_refused() {
    let given = format!("{}:banger0:10.44.1.7/22", nix::unistd::geteuid());
    let root = TestRoot::with_helper_args(&["--network", &given]);
    let daemon = lab_on(root, &[], "tap_pool = 0\ngateway = \"10.44.1.7/22\"").await;
    let created: VmCreateResult = daemon
        .client()
        .await
        .call("vm.create", &json!({"name": "dev", "image": "img"}))
        .await
        .unwrap_or_else(|e| panic!("vm.create: {e}\n{}", daemon.output()));
    let net = network(&daemon);
    let addresses = net.run("ip", &["-j", "addr", "show", "dev", "banger0"]);
    assert!(
        addresses.contains("\"local\":\"10.44.1.7\"") && addresses.contains("\"prefixlen\":22"),
        "{addresses}"
    );
    let table = net.run("nft", &["list", "table", "ip", "banger"]);
    assert!(table.contains("ip saddr 10.44.0.0/22"), "{table}");
    let shown = show(&daemon, "dev").await;
    assert!(
        shown.handles.iter().any(|h| h.handle
            == Handle::Ip {
                addr: [10, 44, 0, 1]
            }),
        "the first guest address of 10.44.0.0/22: {:?}",
        shown.handles
    );
    let api = banger::host::firecracker::FirecrackerClient::new(
        daemon.layout().vm_api_socket(created.vm_id),
    );
    let response = api
        .request(banger::host::firecracker::Method::Get, "/vm/config", None)
        .await
        .expect("GET /vm/config");
    let config: Value = serde_json::from_slice(&response.body).unwrap();
    let boot_args = config["boot-source"]["boot_args"]
        .as_str()
        .unwrap_or_default();
    assert!(
        boot_args
            .split(' ')
            .any(|arg| arg == "ip=10.44.0.1::10.44.1.7:255.255.252.0::eth0:off"),
        "{boot_args}"
    );

    // bangerd left on the default subnet, the helper giving the /22: refused, nothing made.
    let given = format!("{}:banger0:10.44.1.7/22", nix::unistd::geteuid());
    let root = TestRoot::with_helper_args(&["--network", &given]);
    let daemon = lab_on(root, &[], "tap_pool = 0").await;
    let error = rpc_error(
        daemon
            .client()
            .await
            .call::<_, VmCreateResult>("vm.create", &json!({"name": "dev", "image": "img"}))
            .await,
    );
    assert!(
        error.message.contains("may not have network") && error.message.contains("10.44.1.7/22"),
        "{error:?}"
    );
    let net = network(&daemon);
    assert!(net.taps().is_empty());
    assert!(!net.run("ip", &["-j", "link", "show"]).contains("banger0"));
}

/// The seqs of `events --json` lines (one envelope per line).
fn seqs_of(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let envelope: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not an envelope ({e}): {line}"));
            envelope["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("no seq in {line}"))
        })
        .collect()
}

/// `banger events --follow --json --vm dev` runs while the VM is stopped and started and
/// bangerd is SIGKILLed and started again, three times: what it printed is exactly the VM's
/// events as `events --json --vm dev` lists them afterwards (no gap, no repeat), and it said
/// on stderr each time that it lost bangerd and got it back.
async fn a_vm_follower_survives_three_kills_and_prints_exactly_that_vms_events() {
    let mut daemon = lab(&[]).await;
    let _: VmCreateResult = daemon
        .client()
        .await
        .call("vm.create", &json!({"name": "dev", "image": "img"}))
        .await
        .unwrap_or_else(|e| panic!("vm.create: {e}\n{}", daemon.output()));
    // Another VM's events are in the log too, and must not reach the follower.
    let _: VmCreateResult = daemon
        .client()
        .await
        .call("vm.create", &json!({"name": "other", "image": "img"}))
        .await
        .expect("vm.create other");
    let out_path = daemon.root().path().join("follower.out");
    let err_path = daemon.root().path().join("follower.err");
    let mut follower = std::process::Command::new(env!("CARGO_BIN_EXE_banger"))
        .args(["events", "--follow", "--json", "--vm", "dev"])
        .env("BANGER_ROOT", daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn the follower");
    let listed = |daemon: &Bangerd| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_banger"))
            .args(["events", "--json", "--vm", "dev"])
            .env("BANGER_ROOT", daemon.root().path())
            .env("BANGER_NO_AUTOSTART", "1")
            .output()
            .expect("events --json");
        assert!(output.status.success(), "{output:?}");
        seqs_of(&String::from_utf8_lossy(&output.stdout))
    };
    // Waits until the follower has printed `seq`.
    let printed = |seq: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            if seqs_of(&text).last().is_some_and(|last| *last >= seq) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the follower never printed seq {seq}:\n{text}\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    printed(*listed(&daemon).last().unwrap());
    for round in 0..3 {
        let _: VmResult = daemon
            .client()
            .await
            .call("vm.stop", &json!({"name": "dev"}))
            .await
            .expect("vm.stop");
        // Some of the stop's events are printed, then bangerd dies under the follower.
        printed(*listed(&daemon).last().unwrap());
        restart(&mut daemon, &[]);
        let _: VmResult = daemon
            .client()
            .await
            .call("vm.start", &json!({"name": "dev"}))
            .await
            .expect("vm.start");
        // The other VM changes too, between dev's events.
        let toggle = if round % 2 == 0 {
            "vm.stop"
        } else {
            "vm.start"
        };
        let _: VmResult = daemon
            .client()
            .await
            .call(toggle, &json!({"name": "other"}))
            .await
            .unwrap_or_else(|e| panic!("{toggle} other: {e}"));
    }
    let all = listed(&daemon);
    printed(*all.last().unwrap());
    let _ = follower.kill();
    let _ = follower.wait();
    let followed = seqs_of(&std::fs::read_to_string(&out_path).unwrap());
    assert_eq!(
        followed, all,
        "the follower's seqs against the log's for dev"
    );
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert_eq!(stderr.matches("lost bangerd").count(), 3, "{stderr}");
    assert_eq!(stderr.matches("bangerd is back").count(), 3, "{stderr}");
}

/// bangerd's environment here: the fake firecracker, the real agent, and `extra`.
fn env_with<'a>(fake: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("BANGER_FIRECRACKER", fake),
        ("BANGER_FAKE_AGENT", env!("CARGO_BIN_EXE_banger-agent")),
    ];
    env.extend_from_slice(extra);
    env
}

/// Starts bangerd again on the same root (killing the running one, if any) with `extra`.
pub(super) fn restart(daemon: &mut Bangerd, extra: &[(&str, &str)]) {
    let fake = crate::firecracker::fake_binary().display().to_string();
    daemon.kill();
    daemon.restart_with(&env_with(&fake, extra));
}

pub(super) fn network(daemon: &Bangerd) -> &TestNetwork {
    daemon.root().network().expect("a test network")
}

/// `ip -d -j link show dev NAME` in the test namespace.
fn link(net: &TestNetwork, name: &str) -> Value {
    let listing: Value =
        serde_json::from_str(&net.run("ip", &["-d", "-j", "link", "show", "dev", name]))
            .expect("ip -j output");
    listing[0].clone()
}

async fn show(daemon: &Bangerd, name: &str) -> VmShowResult {
    daemon
        .client()
        .await
        .call("vm.show", &json!({"name": name}))
        .await
        .expect("vm.show")
}

async fn a_vm_gets_its_own_tap_on_the_bridge_which_its_vmm_opens_and_delete_removes() {
    let daemon = lab(&[]).await;
    let net = network(&daemon);
    let created: VmCreateResult = daemon
        .client()
        .await
        .call("vm.create", &json!({"name": "dev", "image": "img"}))
        .await
        .unwrap_or_else(|e| panic!("vm.create: {e}\n{}", daemon.output()));
    let tap = tap_name(created.vm_id);

    // The bridge, with the gateway address, and banger's NAT table.
    let bridge = link(net, "banger0");
    assert_eq!(bridge["linkinfo"]["info_kind"], "bridge", "{bridge}");
    let addresses = net.run("ip", &["-j", "addr", "show", "dev", "banger0"]);
    assert!(
        addresses.contains("\"local\":\"172.30.0.1\""),
        "{addresses}"
    );
    assert!(addresses.contains("\"prefixlen\":24"), "{addresses}");
    let table = net.run("nft", &["list", "table", "ip", "banger"]);
    assert!(table.contains("masquerade"), "{table}");
    assert!(table.contains("172.30.0.0/24"), "{table}");

    // The tap: persistent, owned by bangerd's user, on the bridge, up.
    assert_eq!(net.taps(), std::slice::from_ref(&tap));
    let tap_link = link(net, &tap);
    assert_eq!(tap_link["master"], "banger0", "{tap_link}");
    assert_eq!(tap_link["linkinfo"]["info_kind"], "tun", "{tap_link}");
    let tun = &tap_link["linkinfo"]["info_data"];
    assert_eq!(tun["type"], "tap", "{tap_link}");
    assert_eq!(tun["persist"], true, "{tap_link}");
    // iproute2 prints the owner's user name when it has one, the uid otherwise.
    let uid = nix::unistd::geteuid();
    let owner_name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|user| user.name);
    assert!(
        tun["user"].as_u64() == Some(u64::from(uid.as_raw()))
            || tun["user"].as_str() == owner_name.as_deref(),
        "{tap_link}"
    );

    // The VM holds it in the log, the VMM has it open, the console shows the MAC.
    let shown = show(&daemon, "dev").await;
    assert!(
        shown
            .handles
            .iter()
            .any(|entry| entry.handle == Handle::Tap { name: tap.clone() }),
        "{:?}",
        shown.handles
    );
    let vmm = shown.vm.process.expect("a running VM has a VMM");
    assert_eq!(
        crate::firecracker::taps_open_in(vmm.pid),
        std::slice::from_ref(&tap)
    );
    let console = std::fs::read_to_string(daemon.layout().vm_console_log(created.vm_id)).unwrap();
    assert!(
        console.contains(&format!("on tap {tap} mac 02:fc:ac:1e:00:02")),
        "{console}"
    );

    // Stop keeps the tap (the VM owns it until delete); start plugs the new VMM into it.
    let _: VmResult = daemon
        .client()
        .await
        .call("vm.stop", &json!({"name": "dev"}))
        .await
        .expect("vm.stop");
    assert_eq!(net.taps(), std::slice::from_ref(&tap));
    let _: VmResult = daemon
        .client()
        .await
        .call("vm.start", &json!({"name": "dev"}))
        .await
        .unwrap_or_else(|e| panic!("vm.start: {e}\n{}", daemon.output()));
    let vmm = show(&daemon, "dev")
        .await
        .vm
        .process
        .expect("running again");
    assert_eq!(
        crate::firecracker::taps_open_in(vmm.pid),
        std::slice::from_ref(&tap)
    );

    // A second VM gets a second tap and address.
    let second: VmCreateResult = daemon
        .client()
        .await
        .call("vm.create", &json!({"name": "two", "image": "img"}))
        .await
        .expect("vm.create two");
    let mut expected = vec![tap.clone(), tap_name(second.vm_id)];
    expected.sort();
    assert_eq!(net.taps(), expected);

    // Delete removes the tap with the VM.
    let _: Value = daemon
        .client()
        .await
        .call("vm.delete", &json!({"name": "dev"}))
        .await
        .expect("vm.delete");
    assert_eq!(net.taps(), [tap_name(second.vm_id)]);
    let _: Value = daemon
        .client()
        .await
        .call("vm.delete", &json!({"name": "two"}))
        .await
        .expect("vm.delete two");
    assert!(net.taps().is_empty());
}

async fn without_the_helper_a_create_fails_at_network_says_how_to_fix_it_and_leaves_nothing() {
    // Not started by bangerd either (it runs as root here, and would).
    let daemon = lab(&[
        ("BANGER_HELPER_SOCKET", "/nonexistent/helper.sock"),
        ("BANGER_NO_AUTOSTART", "1"),
    ])
    .await;
    let error = rpc_error(
        daemon
            .client()
            .await
            .call::<_, VmCreateResult>("vm.create", &json!({"name": "dev", "image": "img"}))
            .await,
    );
    assert!(
        error.message.contains("/nonexistent/helper.sock")
            && error.message.contains("banger-helper"),
        "{error:?}"
    );
    assert!(error.message.contains("network"), "{error:?}");
    let listed: Value = daemon
        .client()
        .await
        .call("vm.list", &json!({}))
        .await
        .expect("vm.list");
    assert_eq!(listed["vms"], json!([]), "{listed}");
    assert!(
        crate::support::dir_names(&daemon.layout().vms_dir()).is_empty(),
        "the VM directory was removed"
    );
    assert!(network(&daemon).taps().is_empty());
}

async fn a_tap_made_just_before_a_crash_is_removed_by_recovery() {
    let mut daemon = lab(&[]).await;
    restart(
        &mut daemon,
        &[("BANGER_FAILPOINT", "vm.create:network:after")],
    );
    let result: Result<VmCreateResult, ClientError> = daemon
        .client()
        .await
        .call("vm.create", &json!({"name": "dev", "image": "img"}))
        .await;
    assert!(result.is_err(), "bangerd aborted at the failpoint");
    daemon.wait();
    assert_eq!(network(&daemon).taps().len(), 1, "the tap was made");

    restart(&mut daemon, &[]);
    // Recovery runs before the socket answers: the create is rolled back, the tap gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !network(&daemon).taps().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the tap survived recovery\n{}",
            daemon.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed: Value = daemon
        .client()
        .await
        .call("vm.list", &json!({}))
        .await
        .expect("vm.list");
    assert_eq!(listed["vms"], json!([]), "{listed}");
}

async fn a_delete_that_cannot_remove_the_tap_marks_the_vm_failed_and_a_second_delete_finishes() {
    let mut daemon = lab(&[]).await;
    let created: VmCreateResult = daemon
        .client()
        .await
        .call("vm.create", &json!({"name": "dev", "image": "img"}))
        .await
        .unwrap_or_else(|e| panic!("vm.create: {e}\n{}", daemon.output()));
    let tap = tap_name(created.vm_id);

    // A bangerd that cannot reach the helper: the VMM is killed, the tap stays, the VM is
    // marked failed, and the error says how to finish.
    restart(
        &mut daemon,
        &[
            ("BANGER_HELPER_SOCKET", "/nonexistent/helper.sock"),
            ("BANGER_NO_AUTOSTART", "1"),
        ],
    );
    let error = rpc_error(
        daemon
            .client()
            .await
            .call::<_, Value>("vm.delete", &json!({"name": "dev"}))
            .await,
    );
    assert!(
        error.message.contains("release-tap")
            && error.message.contains("banger vm delete dev")
            && error.message.contains("marked failed"),
        "{error:?}"
    );
    let shown = show(&daemon, "dev").await;
    assert_eq!(shown.vm.state, banger_events::VmState::Failed, "{shown:?}");
    assert!(shown.vm.process.is_none());
    assert_eq!(network(&daemon).taps(), std::slice::from_ref(&tap));

    // With the helper back, deleting again removes the tap and the VM.
    restart(&mut daemon, &[]);
    let _: Value = daemon
        .client()
        .await
        .call("vm.delete", &json!({"name": "dev"}))
        .await
        .unwrap_or_else(|e| panic!("the second vm.delete: {e}\n{}", daemon.output()));
    assert!(network(&daemon).taps().is_empty());
    assert!(crate::support::dir_names(&daemon.layout().vms_dir()).is_empty());
}

/// The taps the log gives to VM `name` and to the daemon (the spares).
async fn ledger_taps(daemon: &Bangerd, name: &str) -> (Vec<String>, Vec<String>) {
    let shown = show(daemon, name).await;
    let vm: Vec<String> = shown
        .handles
        .iter()
        .filter_map(|entry| match &entry.handle {
            Handle::Tap { name } => Some(name.clone()),
            _ => None,
        })
        .collect();
    let mut state = banger_projections::Projections::default();
    for envelope in crate::support::all_events(&daemon.socket()).await {
        banger_events::Fold::apply(&mut state, &envelope);
    }
    let spares = banger::operations::tap_fill::pool_taps(&state);
    (vm, spares)
}

/// Polls until no operation runs and VM `name` sees `spares` spare taps in the ledger (a pool
/// top-up runs in the background after a create or a start); returns the VM's taps and the
/// spares.
async fn settle(daemon: &Bangerd, name: &str, spares: usize) -> (Vec<String>, Vec<String>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ops: Value = daemon
            .client()
            .await
            .call("daemon.operations.list", &json!({}))
            .await
            .expect("daemon.operations.list");
        let taps = ledger_taps(daemon, name).await;
        if ops["operations"].as_array().is_some_and(Vec::is_empty) && taps.1.len() == spares {
            return taps;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never settled with {spares} spares: {ops}, taps {taps:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn spare_taps_are_made_after_the_first_vm_and_the_next_vm_takes_one() {
    let daemon = lab_with_pool(&[], 2).await;
    let net = network(&daemon);
    // No VM yet: banger has not touched the host's network.
    assert!(net.taps().is_empty());

    // The first VM makes its own tap; then the pool fills up to two spares.
    let first: VmCreateResult = daemon
        .client()
        .await
        .call("vm.create", &json!({"name": "one", "image": "img"}))
        .await
        .unwrap_or_else(|e| panic!("vm.create: {e}\n{}", daemon.output()));
    let (one_taps, spares) = settle(&daemon, "one", 2).await;
    assert_eq!(one_taps, [tap_name(first.vm_id)]);
    assert_eq!(spares.len(), 2, "{spares:?}");
    let mut expected: Vec<String> = one_taps.iter().chain(&spares).cloned().collect();
    expected.sort();
    assert_eq!(
        net.taps(),
        expected,
        "the host has exactly the ledger's taps"
    );
    for spare in &spares {
        assert_eq!(link(net, spare)["master"], "banger0");
    }

    // The second VM takes a spare (no tap of its own), its VMM opens it, and the pool is
    // topped up again.
    let _: VmCreateResult = daemon
        .client()
        .await
        .call("vm.create", &json!({"name": "two", "image": "img"}))
        .await
        .expect("vm.create two");
    let (two_taps, spares_after) = settle(&daemon, "two", 2).await;
    assert_eq!(two_taps.len(), 1);
    assert!(
        spares.contains(&two_taps[0]),
        "{two_taps:?} came from {spares:?}"
    );
    assert_eq!(spares_after.len(), 2, "{spares_after:?}");
    assert!(!spares_after.contains(&two_taps[0]));
    let vmm = show(&daemon, "two").await.vm.process.expect("running");
    assert_eq!(crate::firecracker::taps_open_in(vmm.pid), two_taps);

    // Deleting it removes its (once spare) tap; the spares stay.
    let _: Value = daemon
        .client()
        .await
        .call("vm.delete", &json!({"name": "two"}))
        .await
        .expect("vm.delete two");
    let mut expected: Vec<String> = one_taps.iter().chain(&spares_after).cloned().collect();
    expected.sort();
    assert_eq!(net.taps(), expected);
}

async fn a_fill_interrupted_by_a_crash_is_rolled_back_and_made_again() {
    // Before its taps are made, after (not yet recorded), and once its step is recorded.
    for point in ["before", "after", "succeeded"] {
        fill_crash_at(point).await;
    }
}

async fn fill_crash_at(point: &str) {
    let mut daemon = lab_with_pool(&[], 2).await;
    let _: VmCreateResult = daemon
        .client()
        .await
        .call("vm.create", &json!({"name": "one", "image": "img"}))
        .await
        .expect("vm.create");
    let (_, spares) = settle(&daemon, "one", 2).await;
    // Spares that vanish (a host reboot) are released and made again at the next start;
    // that fill dies at `point`.
    for spare in spares {
        network(&daemon).run("ip", &["link", "delete", &spare]);
    }
    daemon.kill();
    let fake = crate::firecracker::fake_binary().display().to_string();
    let failpoint = format!("tap.fill:make-taps:{point}");
    let status = daemon.run_until_exit(&env_with(
        &fake,
        &[("BANGER_FAILPOINT", failpoint.as_str())],
    ));
    assert!(
        !status.success(),
        "{point}: the fill aborted bangerd: {status}"
    );
    // Recovery rolls the fill back (its taps go), then a new fill makes the pool again.
    restart(&mut daemon, &[]);
    let (one_taps, spares) = settle(&daemon, "one", 2).await;
    assert_eq!(spares.len(), 2, "{point}: {spares:?}");
    let mut expected: Vec<String> = one_taps.iter().chain(&spares).cloned().collect();
    expected.sort();
    assert_eq!(network(&daemon).taps(), expected, "{point}");
    let ops: Value = daemon
        .client()
        .await
        .call("daemon.operations.list", &json!({"all": true}))
        .await
        .expect("daemon.operations.list");
    let fills: Vec<&Value> = ops["operations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| op["kind"] == "tap.fill")
        .collect();
    assert!(
        fills.iter().any(|op| op["status"] == "rolled_back"),
        "{point}: {fills:?}"
    );
}

async fn a_root_bangerd_starts_banger_helper_itself_when_none_answers() {
    // bangerd looks for banger-helper beside itself, where cargo built it for these tests.
    assert!(crate::support::helper_binary().exists());
    let root = TestRoot::new();
    let socket = root.path().join("helper").join("helper.sock");
    let fake = crate::firecracker::fake_binary().display().to_string();
    let socket_text = socket.display().to_string();
    let daemon = Bangerd::start_isolated_on_with(
        root,
        &env_with(&fake, &[("BANGER_HELPER_SOCKET", socket_text.as_str())]),
    );
    import_kernel_and_image(&daemon).await;
    let mut client = daemon.client().await;
    assert!(!socket.exists(), "no helper yet");

    let created: VmCreateResult = client
        .call("vm.create", &json!({"name": "dev", "image": "img"}))
        .await
        .unwrap_or_else(|e| panic!("vm.create: {e}\n{}", daemon.output()));
    // bangerd started the helper on the configured socket, and the VM got its tap from it,
    // in bangerd's own network namespace.
    let helpers: Vec<u32> = crate::support::processes_mentioning(&socket)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("banger-helper"))
        })
        .collect();
    assert_eq!(helpers.len(), 1, "one helper: {helpers:?}");
    let links = std::process::Command::new("nsenter")
        .arg("-t")
        .arg(daemon.pid().to_string())
        .args(["-n", "ip", "-j", "link", "show"])
        .output()
        .expect("nsenter");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(links.contains(&tap_name(created.vm_id)), "{links}");
    assert!(links.contains("banger0"), "{links}");
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        tokio a_vm_gets_its_own_tap_on_the_bridge_which_its_vmm_opens_and_delete_removes needs(Root),
        tokio without_the_helper_a_create_fails_at_network_says_how_to_fix_it_and_leaves_nothing needs(Root),
        tokio a_tap_made_just_before_a_crash_is_removed_by_recovery needs(Root),
        tokio a_delete_that_cannot_remove_the_tap_marks_the_vm_failed_and_a_second_delete_finishes needs(Root),
        tokio spare_taps_are_made_after_the_first_vm_and_the_next_vm_takes_one needs(Root),
        tokio a_fill_interrupted_by_a_crash_is_rolled_back_and_made_again needs(Root),
        tokio a_root_bangerd_starts_banger_helper_itself_when_none_answers needs(Root),
        tokio guests_live_in_the_subnet_the_helper_gives_and_another_is_refused needs(Root),
        tokio a_vm_follower_survives_three_kills_and_prints_exactly_that_vms_events needs(Root),
    ]
}
