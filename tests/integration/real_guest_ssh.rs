//! ssh into a real guest: a Debian with systemd and openssh-server booted under QEMU, reached
//! with the system's OpenSSH client through `banger vm ssh-proxy` (the guest agent's
//! `--tcp-connect`, over the virtio-serial port: no route to the guest and no port open).
//!
//! One boot, then: `banger vm ssh dev -- hostname`; `ssh dev.vm` and `scp` with the
//! config `banger ssh-config --write` installed in a throwaway HOME; and a guest whose host
//! keys are regenerated behind banger's back (sshd restarted) is refused by `vm ssh` on host
//! key verification, with banger's known_hosts unchanged.
//!
//! ssh reads its user config from the password database's home, not `$HOME`, so the ssh
//! runs here name the throwaway config with `-F`; `$HOME` is still set to the throwaway one,
//! so nothing the client might write lands in the real home.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use banger::api::VmSshStatus;

use super::guest_images::GuestRoot;
use super::real_guests::{BOOT_DEADLINE, DEADLINE, Lab, text, wait_for};

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync ssh_reaches_a_real_guest_through_its_agent_and_a_changed_host_key_is_refused needs(Root, Qemu),
    ]
}

/// Runs `program args` with this lab's banger and a throwaway HOME.
fn run(lab: &Lab, home: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("BANGER_ROOT", lab.daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program} (is openssh-client installed?): {e}"))
}

fn must(output: Output, what: &str, lab: &Lab) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}\nbangerd said:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr),
        lab.daemon.output()
    );
    text(&output.stdout)
}

fn ssh_reaches_a_real_guest_through_its_agent_and_a_changed_host_key_is_refused() {
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
    let banger = env!("CARGO_BIN_EXE_banger");
    let home = lab.daemon.root().scratch("home");

    // The boot recorded the guest's host key and installed banger's key.
    let shown = lab.show("dev");
    let key = shown
        .vm
        .host_key
        .clone()
        .expect("the boot recorded a host key");
    assert!(
        matches!(shown.ssh, Some(VmSshStatus::Ready { .. })),
        "{:?}",
        shown.ssh
    );
    let public = std::fs::read_to_string(lab.daemon.layout().ssh_dir().join("id_ed25519.pub"))
        .expect("banger's public key");
    let authorized = lab.exec("dev", &["cat", "/root/.ssh/authorized_keys"]);
    assert!(authorized.contains(public.trim()), "{authorized}");
    let known_hosts = lab.daemon.layout().ssh_dir().join("known_hosts");
    wait_for("known_hosts to hold dev.vm", DEADLINE, || {
        std::fs::read_to_string(&known_hosts).is_ok_and(|t| t.contains("dev.vm "))
    });
    // sshd comes up with the rest of the guest's services.
    wait_for("the guest's sshd", BOOT_DEADLINE, || {
        lab.cli(&["vm", "exec", "dev", "--", "systemctl", "is-active", "ssh"])
            .status
            .success()
    });

    // banger vm ssh: the system's ssh through the agent.
    let started = Instant::now();
    let hostname = must(
        run(
            &lab,
            &home,
            banger,
            &["vm", "ssh", "dev", "--", "-o", "BatchMode=yes", "hostname"],
        ),
        "banger vm ssh dev -- hostname",
        &lab,
    );
    // The hostname banger gave the guest (its /etc/hostname is the image's).
    assert_eq!(hostname.trim(), "dev");
    println!("banger vm ssh dev -- hostname: {:?}", started.elapsed());

    // ssh dev.vm through the config ssh-config --write installs.
    must(
        run(&lab, &home, banger, &["ssh-config", "--write"]),
        "banger ssh-config --write",
        &lab,
    );
    let config = home.join(".ssh/config");
    let config_arg = config.to_string_lossy().into_owned();
    let plain = must(
        run(
            &lab,
            &home,
            "ssh",
            &[
                "-F",
                &config_arg,
                "-o",
                "BatchMode=yes",
                "dev.vm",
                "uname",
                "-n",
            ],
        ),
        "ssh dev.vm uname -n",
        &lab,
    );
    assert_eq!(plain.trim(), "dev");

    // scp of a few MB, checked by its digest in the guest.
    let payload = lab.daemon.root().scratch("scp").join("payload.bin");
    let bytes: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&payload, &bytes).unwrap();
    let started = Instant::now();
    must(
        run(
            &lab,
            &home,
            "scp",
            &[
                "-F",
                &config_arg,
                "-o",
                "BatchMode=yes",
                &payload.to_string_lossy(),
                "dev.vm:/tmp/payload.bin",
            ],
        ),
        "scp payload.bin dev.vm:/tmp/",
        &lab,
    );
    let elapsed = started.elapsed();
    println!(
        "scp of 3 MiB into the guest through the agent: {elapsed:?} ({:.2} MiB/s, TCG guest)",
        3.0 / elapsed.as_secs_f64()
    );
    // The same bytes through `vm exec`'s stdin (the agent alone, no ssh): the baseline, in
    // the same run, that says what ssh's own work (its crypto, emulated here) costs.
    let started = Instant::now();
    let mut direct = Command::new(banger)
        .args([
            "vm",
            "exec",
            "dev",
            "--",
            "sh",
            "-c",
            "cat > /tmp/direct.bin",
        ])
        .env("BANGER_ROOT", lab.daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = direct.stdin.take().unwrap();
        stdin.write_all(&bytes).unwrap();
    }
    assert!(direct.wait().unwrap().success());
    let baseline = started.elapsed();
    println!(
        "the same 3 MiB through vm exec's stdin: {baseline:?} (scp/exec: {:.1}x)",
        elapsed.as_secs_f64() / baseline.as_secs_f64()
    );
    let digest = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(&bytes))
    };
    let in_guest = lab.exec("dev", &["sha256sum", "/tmp/payload.bin"]);
    assert!(in_guest.starts_with(&digest), "{in_guest} vs {digest}");

    // The guest's host keys change behind banger's back: ssh refuses, known_hosts stays.
    let before = std::fs::read(&known_hosts).unwrap();
    lab.exec(
        "dev",
        &[
            "sh",
            "-c",
            "rm -f /etc/ssh/ssh_host_*key* && ssh-keygen -A && systemctl restart ssh",
        ],
    );
    let refused = run(
        &lab,
        &home,
        banger,
        &["vm", "ssh", "dev", "--", "-o", "BatchMode=yes", "true"],
    );
    let said = text(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a changed host key must be refused"
    );
    assert!(
        said.contains("Host key verification failed")
            || said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&known_hosts).unwrap(),
        before,
        "nothing updated banger's known_hosts"
    );
    assert_eq!(lab.show("dev").vm.host_key, Some(key));
    lab.ok(&["vm", "delete", "dev"]);
}
