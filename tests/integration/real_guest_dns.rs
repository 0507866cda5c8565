//! `NAME.vm` from inside real guests: two Debian VMs booted under QEMU (software emulation
//! here) are given the bridge's address as their name server, and one resolves the other's
//! name through bangerd with the guest's own resolver (`getent hosts`, glibc); after the other
//! is deleted the name no longer resolves. The answer logic's edge cases are fast tests
//! (`daemon::dns::tests`, `dns.rs`).

use std::net::Ipv4Addr;

use banger_events::Handle;

use super::guest_images::GuestRoot;
use super::real_guests::{Lab, text};

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync a_guest_resolves_another_vms_name_through_bangerd needs(Root, Qemu),
    ]
}

fn ip_of(lab: &Lab, name: &str) -> Ipv4Addr {
    lab.show(name)
        .handles
        .iter()
        .find_map(|entry| match entry.handle {
            Handle::Ip { addr } => Some(Ipv4Addr::from(addr)),
            _ => None,
        })
        .expect("the VM holds an address")
}

fn a_guest_resolves_another_vms_name_through_bangerd() {
    let lab = Lab::start(|_| String::new());
    // The root with no init: the agent is PID 1 and writes resolv.conf from banger.dns=.
    let reference = lab.push(GuestRoot::Container, "banger/debian-plain:12");
    lab.ok(&["image", "pull", &reference, "--name", "plain"]);
    for name in ["web", "probe"] {
        lab.ok(&[
            "vm", "create", name, "--image", "plain", "--vmm", "qemu", "--cpus", "1", "--memory",
            "384M",
        ]);
    }
    let web = ip_of(&lab, "web");
    let probe = ip_of(&lab, "probe");

    let resolv_conf = lab.exec("probe", &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv_conf
            .lines()
            .any(|l| l.trim() == "nameserver 172.30.0.1"),
        "{resolv_conf}"
    );
    // Each guest finds the other by name (whatever the case), through glibc's resolver.
    let found = lab.exec("probe", &["getent", "hosts", "web.vm"]);
    assert_eq!(
        found.split_whitespace().next(),
        Some(web.to_string().as_str()),
        "{found}"
    );
    let found = lab.exec("web", &["getent", "ahostsv4", "PROBE.vm"]);
    assert!(
        found
            .lines()
            .next()
            .unwrap_or_default()
            .starts_with(&probe.to_string()),
        "{found}"
    );

    // Deleted: the name is gone (getent's status 2: not found).
    lab.ok(&["vm", "delete", "web"]);
    let gone = lab.cli(&["vm", "exec", "probe", "--", "getent", "hosts", "web.vm"]);
    assert_eq!(
        gone.status.code(),
        Some(2),
        "{}{}",
        text(&gone.stdout),
        text(&gone.stderr)
    );
    lab.ok(&["vm", "delete", "probe"]);
}
