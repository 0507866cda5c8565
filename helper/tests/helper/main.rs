//! Integration tests: the real `banger-helper` binary, each instance in a fresh network
//! namespace, driven through its socket by [`HelperClient`] and by raw frames.
//!
//! Each test starts its own helper with `unshare(CLONE_NEWNET)` in `pre_exec`, so the
//! namespace lives exactly as long as the helper process: nothing named is created, nothing
//! can leak, and tests run in parallel without seeing each other's bridges and taps. The host
//! is inspected with `nsenter -t PID -n ip|nft|cat`. The helper is killed in `Drop`.
//!
//! Tests that need root (all that start a helper) are registered in the root tier of the
//! harness (`banger-test-harness`): without root they show as skipped, with the reason, or fail
//! under `BANGER_REQUIRE_PRIVILEGED=1` (CI). The SO_PEERCRED tests re-execute this test binary
//! as uid 65534 with `BANGER_HELPER_TEST_CLIENT` set, which makes `main` act as a one-shot
//! client ([`unprivileged_client_entry`]) instead of running the tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use banger_helper::{HelperClient, HelperError, NetworkSpec, NetworkState};
use serde_json::Value;

mod dns;
mod strict_requests;

const CLIENT_ENV: &str = "BANGER_HELPER_TEST_CLIENT";
const NOBODY: u32 = 65534;

/// The `banger-helper` binary. It is a bin of the `banger` package (so that installing banger
/// installs it), which cargo does not build for this crate's tests: built here, once per test
/// process.
fn helper_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        banger_helper::sandbox::build_workspace_binaries(
            Path::new(env!("CARGO_MANIFEST_DIR")),
            &[&["-p", "banger", "--bin", "banger-helper"]],
        )
        .expect("build banger-helper")
        .join("banger-helper")
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn spec(bridge: &str, gateway: [u8; 4], prefix_len: u8) -> NetworkSpec {
    NetworkSpec {
        bridge: bridge.to_string(),
        gateway: gateway.into(),
        prefix_len,
    }
}

/// A running helper in its own network namespace.
struct Helper {
    child: Child,
    // Held for its Drop: removes the socket directory.
    _dir: tempfile::TempDir,
    socket: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Helper {
    fn start(allowed: &[u32]) -> Helper {
        Helper::start_with(allowed, &[])
    }

    /// With `--network` flags (`UID:BRIDGE:GATEWAY/PREFIX`) beside the allow-list.
    fn start_with(allowed: &[u32], networks: &[&str]) -> Helper {
        let dir = tempfile::Builder::new()
            .prefix("banger-helper-test")
            .tempdir()
            .expect("temp dir");
        // uid 65534 must reach the socket: the directory (0700 by default) is opened up.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        // A directory that does not exist yet: the helper creates it.
        let socket = dir.path().join("run").join("helper.sock");
        Helper::start_at(dir, socket, allowed, networks)
    }

    fn start_at(
        dir: tempfile::TempDir,
        socket: PathBuf,
        allowed: &[u32],
        networks: &[&str],
    ) -> Helper {
        let mut cmd = Command::new(helper_bin());
        cmd.arg("--socket").arg(&socket);
        for uid in allowed {
            cmd.arg("--allow-uid").arg(uid.to_string());
        }
        for network in networks {
            cmd.arg("--network").arg(network);
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: unshare is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn banger-helper");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let log = Arc::clone(&log);
            // Drains stderr for the helper's whole life (a full pipe would block it) and
            // signals readiness on the line the helper logs once it listens.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("banger-helper serving") {
                        let _ = ready_tx.send(());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut helper = Helper {
            child,
            _dir: dir,
            socket,
            log,
        };
        if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let status = helper.child.try_wait();
            panic!(
                "banger-helper did not start ({status:?}); its log:\n{}",
                helper.log_text()
            );
        }
        helper
    }

    fn client(&self) -> HelperClient {
        HelperClient::new(&self.socket)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Runs a command inside the helper's network namespace.
    fn ns(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.pid().to_string())
            .arg("-n")
            .args(args)
            .output()
            .expect("run nsenter")
    }

    fn ns_ok(&self, args: &[&str]) -> String {
        let output = self.ns(args);
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// `ip -d -j link show NAME`, or None when the link does not exist.
    fn link(&self, name: &str) -> Option<Value> {
        let output = self.ns(&["ip", "-d", "-j", "link", "show", "dev", name]);
        if !output.status.success() {
            return None;
        }
        let links: Value = serde_json::from_slice(&output.stdout).expect("ip -j output");
        links.as_array().and_then(|a| a.first()).cloned()
    }

    fn link_names(&self) -> Vec<String> {
        let links: Value =
            serde_json::from_str(&self.ns_ok(&["ip", "-j", "link", "show"])).unwrap();
        links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    fn nft_table(&self) -> Option<String> {
        let output = self.ns(&["nft", "list", "table", "ip", "banger"]);
        output
            .status
            .success()
            .then(|| String::from_utf8(output.stdout).unwrap())
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn flags(link: &Value) -> Vec<String> {
    link["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

/// Checks a tap's state as iproute2 reports it.
fn assert_tap(helper: &Helper, tap: &str, bridge: &str, owner: u32) {
    let link = helper
        .link(tap)
        .unwrap_or_else(|| panic!("tap {tap} missing"));
    assert_eq!(link["linkinfo"]["info_kind"], "tun", "{link}");
    let data = &link["linkinfo"]["info_data"];
    assert_eq!(data["type"], "tap", "{link}");
    assert_eq!(data["persist"], true, "{link}");
    assert_eq!(data["pi"], false, "{link}");
    // iproute2 prints the owner's user name when it has one, the number otherwise.
    let owner_name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner))
        .ok()
        .flatten()
        .map(|u| u.name);
    let user = &data["user"];
    assert!(
        user.as_u64() == Some(u64::from(owner))
            || user.as_str() == Some(owner.to_string().as_str())
            || (owner_name.is_some() && user.as_str() == owner_name.as_deref()),
        "owner of {tap} should be uid {owner} ({owner_name:?}): {link}"
    );
    assert_eq!(link["master"], bridge, "{link}");
    assert!(flags(&link).contains(&"UP".to_string()), "{link}");
}

/// Sends raw bytes and returns the decoded answer, or None when the helper closed the
/// connection without one.
fn raw_exchange(socket: &Path, bytes: &[u8]) -> Option<Value> {
    let mut stream = StdUnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The helper may close before it has read everything we send (oversized frames).
    let _ = stream.write_all(bytes);
    read_raw_response(&mut stream)
}

fn read_raw_response(stream: &mut StdUnixStream) -> Option<Value> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(serde_json::from_slice(&body).expect("helper answers JSON"))
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Expects the helper to have closed `stream` (EOF or reset).
fn assert_closed(stream: &mut StdUnixStream) {
    let mut buf = [0u8; 1];
    match stream.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(_) => panic!("expected the helper to close the connection"),
    }
}

fn network_lifecycle_is_idempotent() {
    let helper = Helper::start_with(&[0], &["0:banger0:10.77.0.1/24"]);
    let client = helper.client();
    let rt = runtime();
    let net = spec("banger0", [10, 77, 0, 1], 24);

    // Someone else's table must survive banger replacing its own.
    helper.ns_ok(&["nft", "add", "table", "inet", "someoneelse"]);
    // A new namespace inherits the host's forwarding setting; start from off.
    helper.ns_ok(&["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(
        helper
            .ns_ok(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "0"
    );

    assert_eq!(
        rt.block_on(client.version()).unwrap(),
        banger_helper::protocol::PROTOCOL_VERSION
    );
    rt.block_on(client.ensure_network(&net))
        .expect("first ensure_network");
    rt.block_on(client.ensure_network(&net))
        .expect("second ensure_network");

    let bridge = helper.link("banger0").expect("bridge exists");
    assert_eq!(bridge["linkinfo"]["info_kind"], "bridge");
    assert!(flags(&bridge).contains(&"UP".to_string()), "{bridge}");
    let addrs: Value =
        serde_json::from_str(&helper.ns_ok(&["ip", "-j", "-4", "addr", "show", "dev", "banger0"]))
            .unwrap();
    let inet: Vec<String> = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(inet, ["10.77.0.1/24"]);
    assert_eq!(
        helper
            .ns_ok(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "1"
    );
    let table = helper.nft_table().expect("table ip banger exists");
    assert!(
        table.contains("ip saddr 10.77.0.0/24 oifname != \"banger0\" masquerade"),
        "{table}"
    );
    assert!(table.contains("iifname \"banger0\" accept"), "{table}");
    assert!(
        table.contains("oifname \"banger0\" ct state established,related accept"),
        "{table}"
    );
    assert_eq!(
        table.matches("masquerade").count(),
        1,
        "no duplicate rules after two ensures: {table}"
    );
    assert!(
        helper
            .ns_ok(&["nft", "list", "tables"])
            .contains("table inet someoneelse")
    );

    // What the helper's configuration gives the caller is all it may ask for: another subnet
    // for its bridge, or another bridge, is refused and changes nothing.
    assert_eq!(
        rt.block_on(client.networks()).unwrap(),
        [NetworkState {
            spec: net.clone(),
            bridge: true,
            nat: true
        }]
    );
    for foreign in [
        spec("banger0", [192, 168, 50, 1], 28),
        spec("banger5", [10, 5, 0, 1], 24),
    ] {
        match rt.block_on(client.ensure_network(&foreign)) {
            Err(HelperError::Refused { message }) => assert!(
                message.contains("may not have network") && message.contains("10.77.0.1/24"),
                "{message}"
            ),
            other => panic!("expected Refused, got {other:?}"),
        }
    }
    assert!(helper.link("banger5").is_none());

    // A stale address (an earlier configuration's subnet) is replaced, not added to.
    helper.ns_ok(&["ip", "addr", "add", "192.168.50.1/28", "dev", "banger0"]);
    rt.block_on(client.ensure_network(&net)).unwrap();
    let addrs: Value =
        serde_json::from_str(&helper.ns_ok(&["ip", "-j", "-4", "addr", "show", "dev", "banger0"]))
            .unwrap();
    assert_eq!(
        addrs[0]["addr_info"].as_array().unwrap().len(),
        1,
        "{addrs}"
    );
    assert_eq!(addrs[0]["addr_info"][0]["local"], "10.77.0.1");
    let table = helper.nft_table().unwrap();
    assert!(
        table.contains("10.77.0.0/24") && !table.contains("192.168.50.0"),
        "{table}"
    );

    // Taps.
    rt.block_on(client.ensure_tap("bt1", "banger0"))
        .expect("first ensure_tap");
    rt.block_on(client.ensure_tap("bt1", "banger0"))
        .expect("second ensure_tap");
    assert_tap(&helper, "bt1", "banger0", 0);
    rt.block_on(client.ensure_tap("bt2a", "banger0")).unwrap();
    // A tap that someone took off the bridge and down is fixed up.
    helper.ns_ok(&["ip", "link", "set", "bt2a", "nomaster", "down"]);
    rt.block_on(client.ensure_tap("bt2a", "banger0")).unwrap();
    assert_tap(&helper, "bt2a", "banger0", 0);
    // Taps that are not banger's (by name) are not listed.
    helper.ns_ok(&["ip", "tuntap", "add", "othertap", "mode", "tap"]);
    assert_eq!(rt.block_on(client.list_taps()).unwrap(), ["bt1", "bt2a"]);

    rt.block_on(client.delete_tap("bt1"))
        .expect("first delete_tap");
    rt.block_on(client.delete_tap("bt1"))
        .expect("second delete_tap (absent)");
    assert!(helper.link("bt1").is_none());
    assert_eq!(rt.block_on(client.list_taps()).unwrap(), ["bt2a"]);

    // A tap on a bridge the caller was not given is refused and says why.
    match rt.block_on(client.ensure_tap("bt3", "banger9")) {
        Err(HelperError::Refused { message }) => assert!(
            message.contains("banger9") && message.contains("not uid 0's"),
            "{message}"
        ),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(helper.link("bt3").is_none());

    rt.block_on(client.remove_network("banger0"))
        .expect("remove_network");
    assert!(helper.link("banger0").is_none());
    assert!(helper.nft_table().is_none());
    assert!(
        helper
            .ns_ok(&["nft", "list", "tables"])
            .contains("table inet someoneelse")
    );
    rt.block_on(client.remove_network("banger0"))
        .expect("remove_network again (absent)");
    // The tap survives its bridge (it is deleted by its own request).
    assert_eq!(rt.block_on(client.list_taps()).unwrap(), ["bt2a"]);

    let log = helper.log_text();
    for op in [
        "ensure_network",
        "ensure_tap",
        "delete_tap",
        "list_taps",
        "remove_network",
    ] {
        assert!(
            log.contains(&format!("op=\"{op}\"")),
            "log has a line for {op}:\n{log}"
        );
    }
}

fn bad_names_are_refused_before_anything_happens() {
    let helper = Helper::start(&[0]);
    let client = helper.client();
    let rt = runtime();
    let before = helper.link_names();

    let long = "bt0123456789abcd"; // 16 bytes
    let bad_taps = ["eth0", "bt../x", long, "BT1", "bt1A", "", "bt1\0", "lo"];
    for tap in bad_taps {
        // Through the raw protocol, so the server's own check is what answers.
        for request in [
            serde_json::json!({"op": "ensure_tap", "tap": tap, "bridge": "banger0"}),
            serde_json::json!({"op": "delete_tap", "tap": tap}),
        ] {
            let body =
                serde_json::to_vec(&serde_json::json!({"v": 4, "request": request})).unwrap();
            let answer = raw_exchange(&helper.socket, &frame(&body)).expect("an answer");
            assert_eq!(answer["result"], "error", "{tap:?}: {answer}");
            assert_eq!(answer["kind"], "refused", "{tap:?}: {answer}");
            let message = answer["message"].as_str().unwrap();
            assert!(message.contains("tap name"), "{message}");
        }
        // And through the client.
        assert!(matches!(
            rt.block_on(client.ensure_tap(tap, "banger0")),
            Err(HelperError::Refused { .. })
        ));
        assert!(matches!(
            rt.block_on(client.delete_tap(tap)),
            Err(HelperError::Refused { .. })
        ));
    }
    for bridge in [
        "eth0",
        "docker0",
        "banger../x",
        "banger0123456789",
        "Banger0",
        "",
        "banger0\0",
    ] {
        let body = serde_json::to_vec(
            &serde_json::json!({"v": 4, "request": {"op": "remove_network", "bridge": bridge}}),
        )
        .unwrap();
        let answer = raw_exchange(&helper.socket, &frame(&body)).expect("an answer");
        assert_eq!(answer["kind"], "refused", "{bridge:?}: {answer}");
        assert!(matches!(
            rt.block_on(client.remove_network(bridge)),
            Err(HelperError::Refused { .. })
        ));
        assert!(matches!(
            rt.block_on(client.ensure_network(&spec(bridge, [10, 0, 0, 1], 24))),
            Err(HelperError::Refused { .. })
        ));
        assert!(matches!(
            rt.block_on(client.ensure_tap("bt1", bridge)),
            Err(HelperError::Refused { .. })
        ));
    }
    for (gateway, prefix_len) in [
        ([8, 8, 8, 8], 24),
        ([10, 0, 0, 0], 24),
        ([10, 0, 0, 255], 24),
        ([10, 0, 0, 1], 8),
        ([10, 0, 0, 1], 31),
    ] {
        let body = serde_json::to_vec(&serde_json::json!({"v": 4, "request": {"op": "ensure_network",
            "spec": {"bridge": "banger0", "gateway": std::net::Ipv4Addr::from(gateway), "prefix_len": prefix_len}}}))
        .unwrap();
        let answer = raw_exchange(&helper.socket, &frame(&body)).expect("an answer");
        assert_eq!(
            answer["kind"], "refused",
            "{gateway:?}/{prefix_len}: {answer}"
        );
    }
    assert_eq!(helper.link_names(), before, "nothing was created");
    assert!(helper.nft_table().is_none());
}

fn interfaces_that_are_not_taps_are_left_alone() {
    let helper = Helper::start_with(&[0], &["0:banger0:10.78.0.1/24", "0:banger1:10.79.0.1/24"]);
    let client = helper.client();
    let rt = runtime();
    rt.block_on(client.ensure_network(&spec("banger0", [10, 78, 0, 1], 24)))
        .unwrap();
    // The dummy driver is not available everywhere; a veth is just as much "not a tap".
    helper.ns_ok(&[
        "ip", "link", "add", "bt1", "type", "veth", "peer", "name", "vethpeer",
    ]);

    match rt.block_on(client.delete_tap("bt1")) {
        Err(HelperError::Refused { message }) => assert!(
            message.contains("bt1") && message.contains("not a tap"),
            "{message}"
        ),
        other => panic!("expected Refused, got {other:?}"),
    }
    match rt.block_on(client.ensure_tap("bt1", "banger0")) {
        Err(HelperError::Refused { message }) => {
            assert!(message.contains("not a tap"), "{message}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let link = helper.link("bt1").expect("bt1 still exists");
    assert_eq!(link["linkinfo"]["info_kind"], "veth");
    assert!(link.get("master").is_none(), "bt1 was not attached: {link}");
    assert!(rt.block_on(client.list_taps()).unwrap().is_empty());

    // A bridge name held by something that is not a bridge is not taken over either.
    helper.ns_ok(&[
        "ip",
        "link",
        "add",
        "banger1",
        "type",
        "veth",
        "peer",
        "name",
        "vethpeer1",
    ]);
    // banger1 is the caller's network by configuration: what refuses is the host check.
    for result in [
        rt.block_on(client.ensure_network(&spec("banger1", [10, 79, 0, 1], 24))),
        rt.block_on(client.remove_network("banger1")),
        rt.block_on(client.ensure_tap("bt2", "banger1")),
    ] {
        match result {
            Err(HelperError::Refused { message }) => {
                assert!(message.contains("not a bridge"), "{message}")
            }
            other => panic!("expected Refused, got {other:?}"),
        }
    }
    assert!(helper.link("banger1").is_some());
    assert!(helper.link("bt2").is_none());
}

fn bad_frames_cost_only_their_connection() {
    let helper = Helper::start(&[0]);

    // Several requests on one connection.
    let mut stream = StdUnixStream::connect(&helper.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    for _ in 0..3 {
        stream
            .write_all(&frame(br#"{"v":4,"request":{"op":"version"}}"#))
            .unwrap();
        let answer = read_raw_response(&mut stream).expect("answer");
        assert_eq!(
            answer,
            serde_json::json!({"result": "version", "version": 4})
        );
    }
    // A connection that is kept open while others misbehave keeps working afterwards.

    // Oversized: only the length prefix and a little of the body are sent; the helper must
    // refuse on the prefix alone.
    let mut oversized = ((64 * 1024 + 1) as u32).to_be_bytes().to_vec();
    oversized.extend_from_slice(b"{\"v\":1");
    let mut big = StdUnixStream::connect(&helper.socket).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    big.write_all(&oversized).unwrap();
    let answer = read_raw_response(&mut big).expect("an answer to an oversized frame");
    assert_eq!(answer["kind"], "protocol", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("larger than"),
        "{answer}"
    );
    assert_closed(&mut big);

    // A full 1 MiB frame: answered or closed, never read into memory nor fatal.
    let mut huge = ((1024 * 1024) as u32).to_be_bytes().to_vec();
    huge.extend(std::iter::repeat_n(b'x', 1024 * 1024));
    if let Some(answer) = raw_exchange(&helper.socket, &huge) {
        assert_eq!(answer["kind"], "protocol", "{answer}");
    }

    for garbage in [
        frame(b"this is not json"),
        frame(br#"{"v":4,"request":{"op":"run_command","argv":["/bin/sh"]}}"#),
        frame(br#"{"v":4,"request":{"op":"ensure_tap","tap":"bt1"}}"#),
        frame(b""),
    ] {
        let mut s = StdUnixStream::connect(&helper.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&garbage).unwrap();
        let answer = read_raw_response(&mut s).expect("an answer to a bad frame");
        assert_eq!(answer["kind"], "protocol", "{answer}");
        assert_closed(&mut s);
    }

    // A truncated frame followed by a hang-up.
    {
        let mut s = StdUnixStream::connect(&helper.socket).unwrap();
        s.write_all(&[0, 0, 0, 40, b'{']).unwrap();
    }
    // Another protocol version is refused politely, but the version request always answers.
    let answer = raw_exchange(
        &helper.socket,
        &frame(br#"{"v":99,"request":{"op":"list_taps"}}"#),
    )
    .unwrap();
    assert_eq!(answer["kind"], "protocol", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("version 99"),
        "{answer}"
    );
    let answer = raw_exchange(
        &helper.socket,
        &frame(br#"{"v":99,"request":{"op":"version"}}"#),
    )
    .unwrap();
    assert_eq!(answer["version"], 4);

    stream
        .write_all(&frame(br#"{"v":4,"request":{"op":"list_taps"}}"#))
        .unwrap();
    assert_eq!(
        read_raw_response(&mut stream).unwrap(),
        serde_json::json!({"result": "taps", "taps": []})
    );
    let rt = runtime();
    assert_eq!(
        rt.block_on(helper.client().version()).unwrap(),
        banger_helper::protocol::PROTOCOL_VERSION
    );
    assert!(helper.child_alive());
}

impl Helper {
    fn child_alive(&self) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), None).is_ok()
    }
}

/// Runs this test binary as uid 65534 acting as a one-shot client; returns its verdict line.
fn run_as_nobody(socket: &Path, op: &str) -> String {
    let exe = std::env::current_exe().expect("current exe");
    let output = Command::new(exe)
        .env(CLIENT_ENV, format!("{}|{op}", socket.display()))
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("re-run the test binary as uid 65534");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("CLIENT-RESULT ").map(|(_, rest)| rest))
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!(
                "the uid {NOBODY} client printed no result (status {:?}); stdout:\n{stdout}\nstderr:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// Opens `count` connections that never send a request, says `HELD` on stdout, then waits
/// (up to 10 s each) for the helper to close every one, and reports how many it closed.
fn hold_idle_connections(socket: &str, count: usize) {
    let held: Vec<StdUnixStream> = (0..count)
        .map(|_| StdUnixStream::connect(socket).expect("connect"))
        .collect();
    println!("HELD {count}");
    std::io::stdout().flush().unwrap();
    let mut closed = 0;
    for mut stream in held {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut byte = [0u8; 1];
        if matches!(stream.read(&mut byte), Ok(0)) {
            closed += 1;
        }
    }
    println!(
        "CLIENT-RESULT uid={} closed={closed}",
        nix::unistd::getuid()
    );
}

/// Not a test: the entry point of the unprivileged client (see the module docs), which
/// `main` runs instead of the tests when `BANGER_HELPER_TEST_CLIENT` holds its job.
fn unprivileged_client_entry(job: String) {
    let (socket, op) = job.split_once('|').expect("SOCKET|OP");
    if let Some(count) = op.strip_prefix("hold:") {
        hold_idle_connections(socket, count.parse().expect("hold:N"));
        return;
    }
    let client = HelperClient::new(socket);
    let rt = runtime();
    let result = match op.split(':').collect::<Vec<_>>().as_slice() {
        ["version"] => rt
            .block_on(client.version())
            .map(|v| format!("version {v}")),
        ["ensure_tap", tap, bridge] => rt
            .block_on(client.ensure_tap(tap, bridge))
            .map(|()| "done".to_string()),
        ["list_taps"] => rt.block_on(client.list_taps()).map(|t| t.join(",")),
        ["delete_tap", tap] => rt
            .block_on(client.delete_tap(tap))
            .map(|()| "done".to_string()),
        ["remove_network", bridge] => rt
            .block_on(client.remove_network(bridge))
            .map(|()| "done".to_string()),
        ["open_tap", tap] => rt
            .block_on(client.open_tap(tap))
            .map(|_fd| "opened".to_string()),
        ["networks"] => rt.block_on(client.networks()).map(|networks| {
            networks
                .iter()
                .map(|n| {
                    format!(
                        "{} {}/{} bridge={} nat={}",
                        n.spec.bridge, n.spec.gateway, n.spec.prefix_len, n.bridge, n.nat
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        }),
        ["ensure_network", bridge, address] => {
            let (gateway, prefix_len) = address.split_once('/').expect("GATEWAY/PREFIX");
            rt.block_on(client.ensure_network(&NetworkSpec {
                bridge: bridge.to_string(),
                gateway: gateway.parse().expect("gateway"),
                prefix_len: prefix_len.parse().expect("prefix"),
            }))
            .map(|()| "done".to_string())
        }
        other => panic!("unknown client op {other:?}"),
    };
    let verdict = match result {
        Ok(ok) => format!("ok {ok}"),
        Err(HelperError::Refused { message }) => format!("refused {message}"),
        Err(e) => format!("error {e}"),
    };
    println!("CLIENT-RESULT uid={} {verdict}", nix::unistd::getuid());
}

fn callers_outside_the_allow_list_are_refused() {
    let helper = Helper::start(&[0]);
    let rt = runtime();
    rt.block_on(
        helper
            .client()
            .ensure_network(&banger_helper::networks::default_network()),
    )
    .unwrap();
    for op in ["version", "list_taps", "ensure_tap:bt7:banger0"] {
        let verdict = run_as_nobody(&helper.socket, op);
        assert!(
            verdict.starts_with(&format!("uid={NOBODY} refused")),
            "{op}: {verdict}"
        );
        assert!(
            verdict.contains("uid 65534 is not allowed") && verdict.contains("--allow-uid 65534"),
            "{verdict}"
        );
    }
    assert!(
        helper.link("bt7").is_none(),
        "a refused caller changed nothing"
    );
    assert!(
        helper.log_text().contains("uid=65534"),
        "refusals are logged:\n{}",
        helper.log_text()
    );
    assert!(helper.child_alive());
}

/// Two allowed users, each with the network the helper's configuration gives it: each makes
/// and removes its own, owns its taps, and can touch nothing of the other's.
fn allowed_users_get_only_their_own_networks_and_taps() {
    let helper = Helper::start_with(&[0, NOBODY], &["65534:banger1:10.91.0.1/24"]);
    let rt = runtime();
    let client = helper.client();
    let mine = banger_helper::networks::default_network();
    let nobody = |op: &str| run_as_nobody(&helper.socket, op);
    let refused = |op: &str, needle: &str| {
        let verdict = nobody(op);
        assert!(
            verdict.starts_with(&format!("uid={NOBODY} refused")) && verdict.contains(needle),
            "{op}: {verdict}"
        );
    };

    // Each is told its own network, and may make only that one.
    let state = |bridge, nat| NetworkState {
        spec: mine.clone(),
        bridge,
        nat,
    };
    assert_eq!(
        rt.block_on(client.networks()).unwrap(),
        [state(false, false)]
    );
    assert_eq!(
        nobody("networks"),
        format!("uid={NOBODY} ok banger1 10.91.0.1/24 bridge=false nat=false")
    );
    rt.block_on(client.ensure_network(&mine)).unwrap();
    assert_eq!(rt.block_on(client.networks()).unwrap(), [state(true, true)]);
    refused(
        "ensure_network:banger0:172.30.0.1/24",
        "may not have network",
    );
    refused(
        "ensure_network:banger1:10.92.0.1/24",
        "may not have network",
    );
    refused(
        "ensure_network:banger1:172.30.0.1/24",
        "may not have network",
    );
    assert!(helper.link("banger1").is_none(), "a refusal made nothing");
    assert_eq!(
        nobody("ensure_network:banger1:10.91.0.1/24"),
        format!("uid={NOBODY} ok done")
    );
    assert_eq!(
        nobody("networks"),
        format!("uid={NOBODY} ok banger1 10.91.0.1/24 bridge=true nat=true")
    );

    // One table holds both networks, and nothing is forwarded between them.
    let table = helper.nft_table().expect("banger's table");
    for rule in [
        "ip saddr 172.30.0.0/24 oifname != \"banger0\" masquerade",
        "ip saddr 10.91.0.0/24 oifname != \"banger1\" masquerade",
        "iifname \"banger0\" oifname \"banger1\" drop",
        "iifname \"banger1\" oifname \"banger0\" drop",
    ] {
        assert!(table.contains(rule), "{rule} missing from:\n{table}");
    }

    // Taps: each on its own bridge, owned by its maker, invisible and untouchable to the other.
    rt.block_on(client.ensure_tap("bt1", "banger0")).unwrap();
    assert_eq!(
        nobody("ensure_tap:bt65:banger1"),
        format!("uid={NOBODY} ok done")
    );
    assert_tap(&helper, "bt65", "banger1", NOBODY);
    assert_eq!(nobody("list_taps"), format!("uid={NOBODY} ok bt65"));
    assert_eq!(rt.block_on(client.list_taps()).unwrap(), ["bt1"]);
    // A banger-named tap nobody owns (made by hand) is anyone's leftover: both see it.
    helper.ns_ok(&["ip", "tuntap", "add", "bt77", "mode", "tap"]);
    assert_eq!(nobody("list_taps"), format!("uid={NOBODY} ok bt65,bt77"));
    assert_eq!(rt.block_on(client.list_taps()).unwrap(), ["bt1", "bt77"]);
    // A VMM running as the caller gets its own tap from the helper, and no other.
    assert_eq!(nobody("open_tap:bt65"), format!("uid={NOBODY} ok opened"));
    rt.block_on(client.open_tap("bt1"))
        .expect("root opens its own tap");
    refused("open_tap:bt1", "belongs to uid 0");
    refused("open_tap:bt77", "has no owner");
    let missing = nobody("open_tap:bt99");
    assert!(
        missing.starts_with(&format!("uid={NOBODY} error")) && missing.contains("does not exist"),
        "{missing}"
    );
    refused("ensure_tap:bt66:banger0", "not uid 65534's");
    refused("ensure_tap:bt1:banger1", "belongs to uid 0");
    refused("delete_tap:bt1", "belongs to uid 0");
    refused("remove_network:banger0", "not uid 65534's");
    match rt.block_on(client.ensure_tap("bt65", "banger0")) {
        Err(HelperError::Refused { message }) => {
            assert!(message.contains("belongs to uid 65534"), "{message}")
        }
        other => panic!("root took over another's tap: {other:?}"),
    }
    match rt.block_on(client.delete_tap("bt65")) {
        Err(HelperError::Refused { message }) => {
            assert!(message.contains("belongs to uid 65534"), "{message}")
        }
        other => panic!("root deleted another's tap: {other:?}"),
    }
    assert_tap(&helper, "bt1", "banger0", 0);
    assert_tap(&helper, "bt65", "banger1", NOBODY);
    assert!(helper.link("bt66").is_none());

    // Removing one network leaves the other's bridge and rules whole.
    assert_eq!(nobody("delete_tap:bt65"), format!("uid={NOBODY} ok done"));
    assert_eq!(
        nobody("remove_network:banger1"),
        format!("uid={NOBODY} ok done")
    );
    assert!(helper.link("banger1").is_none());
    let table = helper.nft_table().expect("banger0's rules remain");
    assert!(
        table.contains("ip saddr 172.30.0.0/24 oifname != \"banger0\" masquerade")
            && !table.contains("banger1")
            && !table.contains("10.91.0.0"),
        "{table}"
    );
    assert_tap(&helper, "bt1", "banger0", 0);
}

/// Two allowed users and one default network: the helper refuses to start, saying how to give
/// each its own; so does a network for a uid that is not allowed.
fn a_configuration_that_would_share_a_network_is_refused_at_start() {
    for (args, needle) in [
        (
            vec!["--allow-uid", "0", "--allow-uid", "65534"],
            "--network",
        ),
        (
            vec!["--allow-uid", "0", "--network", "7:banger7:10.7.0.1/24"],
            "--allow-uid 7",
        ),
        (
            vec![
                "--allow-uid",
                "0",
                "--allow-uid",
                "7",
                "--network",
                "7:banger7:172.30.0.1/16",
            ],
            "overlap",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(helper_bin())
            .arg("--socket")
            .arg(dir.path().join("helper.sock"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            !dir.path().join("helper.sock").exists(),
            "{args:?} listened"
        );
    }
}

fn sigterm_stops_the_helper_and_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("helper.sock");
    // A stale socket left by a helper that died is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let mut helper = Helper::start_at(dir, socket.clone(), &[0], &[]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o666,
        "access is decided by SO_PEERCRED, not the file mode"
    );
    let rt = runtime();
    assert_eq!(
        rt.block_on(helper.client().version()).unwrap(),
        banger_helper::protocol::PROTOCOL_VERSION
    );

    // A second helper on the same socket refuses to start instead of stealing it.
    let second = Command::new(helper_bin())
        .args(["--socket", socket.to_str().unwrap(), "--allow-uid", "0"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already serving"),
        "{second:?}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = helper.child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(!socket.exists(), "socket removed on exit");
}

fn unreachable_helper_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let client = HelperClient::new(dir.path().join("nothing.sock"));
    assert_eq!(client.socket(), dir.path().join("nothing.sock"));
    let err = runtime().block_on(client.version()).unwrap_err();
    assert!(matches!(err, HelperError::Unreachable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("nothing.sock") && message.contains("sudo banger-helper --socket"),
        "{message}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "the io error is kept as the source"
    );
    // Bad names are refused by the client before it even connects.
    let err = runtime().block_on(client.delete_tap("eth0")).unwrap_err();
    assert!(matches!(err, HelperError::Refused { .. }), "{err:?}");
}

fn idle_connections_of_strangers_cannot_starve_allowed_callers() {
    let helper = Helper::start(&[0]);
    // More idle connections than strangers have slots (8), held by uid 65534.
    let exe = std::env::current_exe().expect("current exe");
    let mut stranger = Command::new(exe)
        .env(CLIENT_ENV, format!("{}|hold:20", helper.socket.display()))
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-run the test binary as uid 65534");
    let mut lines = BufReader::new(stranger.stdout.take().unwrap()).lines();
    let held = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("HELD "));
    assert!(held.is_some(), "the stranger never held its connections");

    // The allowed caller is served while the stranger's connections are still open.
    let rt = runtime();
    rt.block_on(
        helper
            .client()
            .ensure_network(&banger_helper::networks::default_network()),
    )
    .expect("an allowed caller is served");
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger's connections were still open"
    );

    // Every one of them was closed by the helper: at once past the strangers' slots, after
    // the short timeout for the others.
    let result = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_once("CLIENT-RESULT ")
                .map(|(_, rest)| rest.to_string())
        })
        .expect("the stranger's result");
    assert_eq!(result, format!("uid={NOBODY} closed=20"));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = stranger.wait().unwrap();
    assert!(status.success(), "{status}: {rest:?}");
}

/// A request whose asker has hung up is not carried out: a bangerd that died after sending it
/// is followed by one whose recovery undoes what it intended, and the dead one's queued
/// request must not redo it afterwards. The asker here half-closes (shuts its write side right
/// after the request), a hang-up the helper sees as soon as it happens; but on a loaded machine
/// the helper may reach its check between the request and the shutdown, and then the asker
/// was still there and "done" is the right answer. So the tap is removed and the hang-up tried
/// again, until the helper sees it (at once, nearly always): if it never does, the check is
/// broken and this fails.
fn a_request_whose_asker_hung_up_is_not_carried_out() {
    let helper = Helper::start(&[0]);
    runtime()
        .block_on(
            helper
                .client()
                .ensure_network(&banger_helper::networks::default_network()),
        )
        .unwrap();
    let request = br#"{"v":4,"request":{"op":"ensure_tap","tap":"bt9","bridge":"banger0"}}"#;
    let mut answers = Vec::new();
    let refused = (0..20).find_map(|_| {
        let mut stream = StdUnixStream::connect(&helper.socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(&frame(request)).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let answer = read_raw_response(&mut stream).expect("an answer");
        if answer["result"] == "error" {
            return Some(answer);
        }
        // The helper ran it before the shutdown: it was made, for an asker still there.
        assert_eq!(answer["result"], "done", "{answer}");
        assert!(helper.link_names().contains(&"bt9".to_string()));
        runtime()
            .block_on(helper.client().delete_tap("bt9"))
            .unwrap();
        answers.push(answer);
        None
    });
    let answer =
        refused.unwrap_or_else(|| panic!("the helper never saw the asker hang up: {answers:?}"));
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("hung up")),
        "{answer}"
    );
    assert!(
        !helper.link_names().contains(&"bt9".to_string()),
        "the tap was not made"
    );
    // The same request from a caller that waits for the answer is carried out.
    runtime()
        .block_on(helper.client().ensure_tap("bt9", "banger0"))
        .unwrap();
    assert!(helper.link_names().contains(&"bt9".to_string()));
}

fn main() {
    if let Ok(job) = std::env::var(CLIENT_ENV) {
        unprivileged_client_entry(job);
        return;
    }
    banger_test_harness::run(vec![tests(), strict_requests::tests(), dns::tests()]);
}

/// This binary's tests, for its harness (`banger-test-harness`).
fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync network_lifecycle_is_idempotent needs(Root),
        sync bad_names_are_refused_before_anything_happens needs(Root),
        sync interfaces_that_are_not_taps_are_left_alone needs(Root),
        sync bad_frames_cost_only_their_connection needs(Root),
        sync callers_outside_the_allow_list_are_refused needs(Root),
        sync allowed_users_get_only_their_own_networks_and_taps needs(Root),
        sync a_configuration_that_would_share_a_network_is_refused_at_start,
        sync sigterm_stops_the_helper_and_removes_its_socket needs(Root),
        sync unreachable_helper_says_what_to_do,
        sync idle_connections_of_strangers_cannot_starve_allowed_callers needs(Root),
        sync a_request_whose_asker_hung_up_is_not_carried_out needs(Root),
    ]
}
