//! `vm stats` and `vm ports` against a real guest: Debian with systemd booted under QEMU (the
//! `real_guests` lab), running busybox's httpd.
//!
//! The guest's own agent runs its `--stats` and `--ports` tools (the static agent pulled into
//! the image), bangerd adds the QEMU process's figures, and probes the guest's web server
//! from the host through the bridge, as a user's `banger vm ports` would.

use std::time::{Duration, Instant};

use banger::api::{PortProtocol, PortScope, VmPortsResult, VmStatsResult, WebScheme};

use super::guest_images::GuestRoot;
use super::real_guests::{DEADLINE, Lab, wait_for};

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync a_real_guest_reports_its_stats_and_its_web_server needs(Root, Qemu),
    ]
}

const MIB: u64 = 1 << 20;

fn a_real_guest_reports_its_stats_and_its_web_server() {
    let lab = Lab::start(|_| String::new());
    let reference = lab.push(GuestRoot::Systemd, "banger/debian-systemd:12");
    lab.ok(&["image", "pull", &reference, "--name", "debian-systemd"]);
    lab.ok(&[
        "vm",
        "create",
        "dev",
        "--image",
        "debian-systemd",
        "--vmm",
        "qemu",
        "--cpus",
        "1",
        "--memory",
        "512M",
    ]);

    // busybox's httpd daemonizes (a session of its own), so it outlives the exec.
    lab.exec("dev", &["busybox", "httpd", "-p", "8080", "-h", "/tmp"]);

    let stats: VmStatsResult =
        serde_json::from_str(&lab.ok(&["vm", "stats", "dev", "--json"])).expect("stats JSON");
    println!("vm stats: {stats:#?}");
    let guest = &stats.guest;
    // The kernel keeps some of the 512 MiB for itself; what it reports is close below.
    assert!(
        (384 * MIB..=512 * MIB).contains(&guest.memory.total_bytes),
        "{:?}",
        guest.memory
    );
    assert!(guest.memory.used_bytes > 0 && guest.memory.available_bytes > 0);
    assert_eq!(guest.cpu.count, 1);
    assert!(guest.uptime_secs > 0.0 && guest.processes > 10, "{guest:?}");
    let mounts: Vec<&str> = guest.disks.iter().map(|d| d.mount.as_str()).collect();
    assert_eq!(mounts, ["/", "/work"], "{:?}", guest.disks);
    assert!(
        guest.disks[0].used_bytes > 0 && guest.disks[0].device.starts_with("/dev/vd"),
        "{:?}",
        guest.disks
    );
    let host = &stats.host;
    assert_eq!(
        Some(host.vmm_pid),
        lab.show("dev").vm.process.map(|p| p.pid)
    );
    assert!(host.vmm_rss_bytes > 16 * MIB, "{host:?}");
    assert!(host.vmm_cpu_secs > 0.0, "{host:?}");
    assert_eq!(host.disks.len(), 2, "{host:?}");

    let text = lab.ok(&["vm", "stats", "dev"]);
    assert!(text.contains("memory:") && text.contains("/work"), "{text}");

    // The server may take a moment to bind after its exec returned, and sshd to start while
    // systemd finishes the boot (the agent answers earlier).
    let deadline = Instant::now() + DEADLINE;
    let ports = loop {
        let listed: VmPortsResult =
            serde_json::from_str(&lab.ok(&["vm", "ports", "dev", "--json"])).expect("ports JSON");
        let has = |port: u16| listed.ports.iter().any(|p| p.port == port);
        if has(8080) && has(22) {
            break listed;
        }
        if Instant::now() > deadline {
            let ssh = lab.cli(&["vm", "exec", "dev", "--", "systemctl", "status", "ssh"]);
            panic!(
                "httpd's 8080 and sshd's 22 not both listed in time: {listed:#?}\nssh.service: {}",
                String::from_utf8_lossy(&ssh.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("vm ports: {ports:#?}");
    let ip = ports.guest_ip.expect("the guest's address");
    let httpd = ports
        .ports
        .iter()
        .find(|p| p.port == 8080 && p.protocol == PortProtocol::Tcp)
        .unwrap();
    assert_eq!(httpd.web, Some(WebScheme::Http));
    assert_eq!(
        httpd.url.as_deref(),
        Some(format!("http://{ip}:8080/").as_str())
    );
    assert!(
        httpd
            .processes
            .iter()
            .any(|p| p.name == "busybox" || p.name == "httpd"),
        "{httpd:?}"
    );
    // sshd listens on 0.0.0.0 and :: — one row, no web server.
    let ssh: Vec<_> = ports
        .ports
        .iter()
        .filter(|p| p.port == 22 && p.protocol == PortProtocol::Tcp)
        .collect();
    assert_eq!(ssh.len(), 1, "{ssh:?}");
    assert_eq!(ssh[0].scope, PortScope::Any);
    assert_eq!(ssh[0].web, None);
    assert!(
        ssh[0].processes.iter().any(|p| p.name == "sshd"),
        "{:?}",
        ssh[0]
    );
    let sorted: Vec<u16> = ports.ports.iter().map(|p| p.port).collect();
    assert!(sorted.is_sorted(), "{sorted:?}");

    let table = lab.ok(&["vm", "ports", "dev"]);
    assert!(table.contains(&format!("http://{ip}:8080/")), "{table}");

    lab.ok(&["vm", "kill", "dev"]);
    wait_for("QEMU to be gone", Duration::from_secs(60), || {
        lab.qemus().is_empty()
    });
    lab.ok(&["vm", "delete", "dev"]);
}
