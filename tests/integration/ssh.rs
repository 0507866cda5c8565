//! ssh into VMs, fast: the real bangerd and CLI with the fake firecracker running the real
//! agent on the host (see `guest.rs`). The fake gives the agent a directory as "the guest's
//! /" (`FAKE_FC_GUEST_ROOT`); a test that plays an image with sshd puts an sshd binary's name
//! and real host keys (from `ssh-keygen`) there. Nothing here reaches the host's own
//! `/root/.ssh` or `/etc/ssh` (checked).
//!
//! The real ssh client against a real sshd is `real_guest_ssh.rs`'s job (QEMU).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger::api::{VmShowResult, VmSshStatus};
use banger_events::Event;

use super::guest::Guest;
use super::support::{TestRoot, all_events};

const BANGER: &str = env!("CARGO_BIN_EXE_banger");
const DEADLINE: Duration = Duration::from_secs(30);

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        tokio a_boot_installs_banger_key_records_the_host_key_and_keeps_known_hosts needs(Root),
        tokio the_proxy_is_a_binary_safe_pipe_to_a_guest_port_and_says_when_nothing_listens needs(Root),
        tokio vm_ssh_explains_why_it_cannot_go_on needs(Root),
        sync ssh_config_write_is_idempotent_in_a_throwaway_home,
    ]
}

/// A guest root standing for an image with sshd and an ed25519 host key.
fn image_with_sshd(dir: &Path) {
    for sub in ["usr/sbin", "etc/ssh", "root"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("usr/sbin/sshd"), "not really sshd").unwrap();
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    new_host_key(dir);
}

/// (Re)generates the guest's ed25519 host key; returns its fingerprint as ssh-keygen says it.
fn new_host_key(dir: &Path) -> String {
    let key = dir.join("etc/ssh/ssh_host_ed25519_key");
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    // The other types, so that `ssh-keygen -A` in the tool has nothing to make.
    for kind in ["rsa", "ecdsa"] {
        let other = dir.join(format!("etc/ssh/ssh_host_{kind}_key"));
        std::fs::write(&other, "").unwrap();
    }
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "guest", "-f"])
        .arg(&key)
        .output()
        .expect("run ssh-keygen (install openssh-client)");
    assert!(made.status.success(), "{}", text(&made.stderr));
    let listed = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    text(&listed.stdout)
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(guest: &Guest, name: &str) -> VmShowResult {
    let output = guest.cli(&["vm", "show", name, "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("vm show --json")
}

/// Polls until `condition` holds (bangerd rewrites known_hosts in the background).
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn host_keys_recorded(guest: &Guest) -> usize {
    all_events(&guest.daemon.socket())
        .await
        .iter()
        .filter(|e| matches!(e.event, Event::VmHostKeyRecorded(_)))
        .count()
}

async fn a_boot_installs_banger_key_records_the_host_key_and_keeps_known_hosts() {
    let scratch = TestRoot::new();
    let root = scratch.scratch("guest-root");
    image_with_sshd(&root);
    let fingerprint = new_host_key(&root);
    let host_root_keys = std::fs::read("/root/.ssh/authorized_keys").ok();
    let guest = Guest::start_with(&[("FAKE_FC_GUEST_ROOT", root.to_str().unwrap())]).await;
    let layout = guest.daemon.layout();
    let ssh_dir = layout.ssh_dir();

    // banger's key: made at the boot, private, installed in the guest's root account.
    let public = std::fs::read_to_string(ssh_dir.join("id_ed25519.pub")).expect("a key pair");
    let private = std::fs::metadata(ssh_dir.join("id_ed25519")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(private.permissions().mode() & 0o777, 0o600);
    let installed = std::fs::read_to_string(root.join("root/.ssh/authorized_keys")).unwrap();
    assert!(installed.contains(public.trim()), "{installed}");
    assert_eq!(
        std::fs::read("/root/.ssh/authorized_keys").ok(),
        host_root_keys,
        "the host's own root account is untouched"
    );

    // The host key: recorded once, shown, written to banger's known_hosts.
    let shown = show(&guest, "dev");
    let key = shown.vm.host_key.as_ref().expect("a recorded host key");
    assert_eq!(key.algorithm, "ssh-ed25519");
    assert_eq!(key.fingerprint_sha256, fingerprint);
    assert!(
        matches!(&shown.ssh, Some(VmSshStatus::Ready { user, .. }) if user == "root"),
        "{:?}",
        shown.ssh
    );
    let human = text(&guest.cli(&["vm", "show", "dev"]).stdout);
    assert!(human.contains(&fingerprint), "{human}");
    let known_hosts = ssh_dir.join("known_hosts");
    let line = format!("dev.vm ssh-ed25519 {}", key.public_key);
    wait_for("known_hosts to hold dev", || {
        std::fs::read_to_string(&known_hosts).is_ok_and(|t| t.contains(&line))
    });
    assert_eq!(host_keys_recorded(&guest).await, 1);

    // A restart with the same key records nothing new.
    let restarted = guest.cli(&["vm", "restart", "dev"]);
    assert!(restarted.status.success(), "{}", text(&restarted.stderr));
    assert_eq!(host_keys_recorded(&guest).await, 1);

    // A changed key is not recorded over the first: vm show says so, known_hosts keeps the old.
    let changed = new_host_key(&root);
    let restarted = guest.cli(&["vm", "restart", "dev"]);
    assert!(restarted.status.success(), "{}", text(&restarted.stderr));
    assert_eq!(host_keys_recorded(&guest).await, 1);
    let shown = show(&guest, "dev");
    assert_eq!(
        shown
            .vm
            .host_key
            .as_ref()
            .map(|k| k.fingerprint_sha256.as_str()),
        Some(fingerprint.as_str())
    );
    assert_eq!(
        shown.ssh,
        Some(VmSshStatus::HostKeyChanged {
            recorded_sha256: fingerprint.clone(),
            presented_sha256: changed.clone(),
        })
    );
    let human = text(&guest.cli(&["vm", "show", "dev"]).stdout);
    assert!(
        human.contains(&changed) && human.contains("refuse"),
        "{human}"
    );
    assert!(
        std::fs::read_to_string(&known_hosts)
            .unwrap()
            .contains(&line)
    );
    assert!(
        guest.daemon.output().contains("another ssh host key"),
        "bangerd warns"
    );

    // Deleted: its line goes.
    let deleted = guest.cli(&["vm", "delete", "dev"]);
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    wait_for("known_hosts to forget dev", || {
        std::fs::read_to_string(&known_hosts).is_ok_and(|t| !t.contains("dev.vm"))
    });
}

async fn the_proxy_is_a_binary_safe_pipe_to_a_guest_port_and_says_when_nothing_listens() {
    let guest = Guest::start().await;
    let network = guest.daemon.root().network().expect("a test network");
    // The fake's agent runs in the test network: its 127.0.0.1 is the namespace's.
    let listener = network.listen_tcp();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        socket.read_to_end(&mut received).unwrap();
        // Only a half-close gets here: the proxy's end of input reached the server, which
        // still answers on the same connection.
        received.reverse();
        socket.write_all(&received).unwrap();
    });
    let sent: Vec<u8> = (0..4 << 20).map(|i: u32| (i * 7 + i / 251) as u8).collect();
    let mut proxy = Command::new(BANGER)
        .args(["vm", "ssh-proxy", "dev.vm", "--port", &port.to_string()])
        .env("BANGER_ROOT", guest.daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut stdin = proxy.stdin.take().unwrap();
    let to_send = sent.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&to_send).unwrap());
    let output = proxy.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    writer.join().unwrap();
    server.join().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let mut expected = sent;
    expected.reverse();
    assert_eq!(output.stdout.len(), expected.len());
    assert!(output.stdout == expected, "every byte, in order, both ways");
    println!(
        "4 MiB each way through vm ssh-proxy: {elapsed:?} ({:.1} MiB/s)",
        8.0 / elapsed.as_secs_f64()
    );

    // Nothing listens: one clear line and status 1.
    let closed = network.listen_tcp().local_addr().unwrap().port();
    let refused = Command::new(BANGER)
        .args(["vm", "ssh-proxy", "dev", "--port", &closed.to_string()])
        .env("BANGER_ROOT", guest.daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains(&format!(
            "nothing listens on 127.0.0.1:{closed} in the guest"
        )),
        "{}",
        text(&refused.stderr)
    );
}

async fn vm_ssh_explains_why_it_cannot_go_on() {
    // The fake's default guest root is an image without sshd.
    let guest = Guest::start().await;
    let shown = show(&guest, "dev");
    assert_eq!(shown.ssh, Some(VmSshStatus::NoSshd));
    assert!(shown.vm.host_key.is_none());
    // Its keys went into the fake's own guest root, beside the VM's sockets.
    let vm_dir = guest.daemon.layout().vm_dir(shown.vm.id);
    let installed =
        std::fs::read_to_string(vm_dir.join("fake-guest-root/root/.ssh/authorized_keys"))
            .expect("keys in the fake guest root");
    assert!(installed.contains("banger"), "{installed}");

    let refused = guest.cli(&["vm", "ssh", "dev"]);
    assert!(!refused.status.success());
    let said = text(&refused.stderr);
    assert!(
        said.contains("no ssh server") && said.contains("banger vm exec -tt dev -- bash"),
        "{said}"
    );
    let stopped = guest.cli(&["vm", "stop", "dev"]);
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    let refused = guest.cli(&["vm", "ssh", "dev"]);
    let said = text(&refused.stderr);
    assert!(
        said.contains("not running") && said.contains("banger vm start dev"),
        "{said}"
    );
}

fn ssh_config_write_is_idempotent_in_a_throwaway_home() {
    let root = TestRoot::new();
    let home = root.scratch("home");
    let run = |args: &[&str]| {
        let output = Command::new(BANGER)
            .args(args)
            .env("BANGER_ROOT", root.path())
            .env("HOME", &home)
            .env("BANGER_NO_AUTOSTART", "1")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
        text(&output.stdout)
    };
    let printed = run(&["ssh-config"]);
    assert!(printed.contains("Host *.vm"), "{printed}");
    assert!(printed.contains("vm ssh-proxy %n"), "{printed}");
    assert!(!home.join(".ssh").exists(), "printing writes nothing");

    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let mine = "Host work\n    HostName 192.0.2.1\n";
    std::fs::write(home.join(".ssh/config"), mine).unwrap();
    let first = run(&["ssh-config", "--write"]);
    assert!(first.contains("added an Include"), "{first}");
    let config = std::fs::read_to_string(home.join(".ssh/config")).unwrap();
    let second = run(&["ssh-config", "--write"]);
    assert!(second.contains("already includes it"), "{second}");
    assert_eq!(
        std::fs::read_to_string(home.join(".ssh/config")).unwrap(),
        config
    );
    assert!(
        config.ends_with(mine),
        "the user's lines stay, byte for byte: {config}"
    );
    assert_eq!(config.matches("Include ").count(), 1);
    let entry_file = root.layout().ssh_dir().join("config");
    assert_eq!(std::fs::read_to_string(entry_file).unwrap(), printed);
}
