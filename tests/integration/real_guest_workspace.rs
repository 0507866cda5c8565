//! Workspaces in a real guest under QEMU (the `Container` root: the agent is PID 1 and mounts
//! the work disk at /work): `vm run` in a checkout imports it and runs its command there; what
//! the guest holds is checked with `vm exec` (an ignored file absent, an untracked one, a
//! symlink and an executable bit kept); a guest edit comes back with `export`; a host edit
//! makes the next export refuse, naming the file; a write survives `vm stop` and `vm start`.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};

use super::guest_images::GuestRoot;
use super::real_guests::{Lab, text};

const BANGER: &str = env!("CARGO_BIN_EXE_banger");

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?}");
}

fn a_checkout_goes_into_a_real_guest_and_its_edits_come_back() {
    let lab = Lab::start(|_| String::new());
    let image = lab.push(GuestRoot::Container, "ws/debian:1");
    let repo = lab.daemon.root().scratch("ws").join("app");
    fs::create_dir_all(repo.join("src")).unwrap();
    git(&repo, &["init", "-q"]);
    fs::write(repo.join(".gitignore"), "*.log\n").unwrap();
    fs::write(repo.join("src/a.txt"), "host a\n").unwrap();
    fs::write(repo.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(repo.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("src/a.txt", repo.join("link")).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "one"]);
    fs::write(repo.join("build.log"), "ignored\n").unwrap();
    fs::write(repo.join("new.txt"), "untracked\n").unwrap();

    // `vm run` inside the checkout: imported, and the command starts in it.
    let run = Command::new(BANGER)
        .args(["vm", "run", "--vmm", "qemu", "--name", "ws", "--image", &image, "--"])
        .args(["sh", "-c", "pwd; ./run.sh; cat link new.txt; stat -c %a run.sh; test ! -e build.log && echo no-log"])
        .env("BANGER_ROOT", lab.daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .current_dir(repo.join("src"))
        .stdin(Stdio::null())
        .output()
        .expect("run banger");
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert!(
        run.status.success(),
        "vm run: {stdout}{stderr}\nbangerd said:\n{}",
        lab.daemon.output()
    );
    assert_eq!(
        stdout, "/work/app\nran\nhost a\nuntracked\n755\nno-log\n",
        "{stderr}"
    );
    assert!(
        stderr.contains("imported") && stderr.contains("ws:/work/app"),
        "{stderr}"
    );
    println!("vm run in a checkout:\n{stderr}");

    // Checked with `vm exec`: the symlink is a symlink, .git did not travel.
    assert_eq!(lab.exec("ws", &["readlink", "/work/app/link"]), "src/a.txt");
    assert_eq!(
        lab.exec("ws", &["sh", "-c", "test -e /work/app/.git || echo none"]),
        "none"
    );
    let status = lab.ok(&["vm", "workspace", "status", "ws", "--json"]);
    assert!(status.contains("\"in_sync\""), "{status}");

    // A guest edit comes back.
    lab.exec("ws", &["sh", "-c", "echo guest >> /work/app/src/a.txt"]);
    let exported = lab.ok(&["vm", "workspace", "export", "ws"]);
    assert!(exported.contains("src/a.txt"), "{exported}");
    assert_eq!(
        fs::read_to_string(repo.join("src/a.txt")).unwrap(),
        "host a\nguest\n"
    );

    // A host edit, then a guest edit of the same file: the export is refused, naming it.
    fs::write(repo.join("src/a.txt"), "host edit\n").unwrap();
    lab.exec("ws", &["sh", "-c", "echo guest edit > /work/app/src/a.txt"]);
    let refused = lab.cli(&["vm", "workspace", "export", "ws"]);
    assert!(!refused.status.success());
    let why = text(&refused.stderr);
    assert!(
        why.contains("src/a.txt") && why.contains("--force"),
        "{why}"
    );
    assert_eq!(
        fs::read_to_string(repo.join("src/a.txt")).unwrap(),
        "host edit\n"
    );

    // A write just before a stop is not lost: the stop syncs the guest.
    lab.exec("ws", &["sh", "-c", "echo durable > /work/app/durable.txt"]);
    lab.ok(&["vm", "stop", "ws"]);
    lab.ok(&["vm", "start", "ws"]);
    assert_eq!(lab.exec("ws", &["cat", "/work/app/durable.txt"]), "durable");
    assert_eq!(
        lab.exec("ws", &["cat", "/work/app/src/a.txt"]),
        "guest edit"
    );
    lab.ok(&["vm", "delete", "ws"]);
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync a_checkout_goes_into_a_real_guest_and_its_edits_come_back needs(Root, Qemu),
    ]
}
