//! Workspaces through the real CLI and bangerd, with the fake firecracker (whose "guest" is the
//! real agent running on the host, so the guest path is a directory of the test's own): import
//! of a checkout with an ignored file, an untracked one, a symlink, an exec bit and a deleted
//! tracked file; an unchanged re-import; status in every state; export of guest edits,
//! additions and deletions; an export refused over a host edit and forced; an import refused
//! over a guest edit; a hostile guest symlink refused with nothing written; `vm exec`'s warning.
//!
//! Every guest path is under the test's scratch directory: under the fake, `/work/...` would be
//! the host's own.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::guest::Guest;

const BANGER: &str = env!("CARGO_BIN_EXE_banger");

fn cli(guest: &Guest, args: &[&str]) -> Output {
    Command::new(BANGER)
        .args(args)
        .env("BANGER_ROOT", guest.daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .output()
        .expect("run banger")
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: Output) -> Value {
    serde_json::from_str(&ok(output)).expect("JSON")
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?}");
}

/// A checkout with every kind of file the selection has to get right.
fn checkout(dir: &Path) -> PathBuf {
    let repo = dir.join("app");
    fs::create_dir_all(repo.join("src")).unwrap();
    git(&repo, &["init", "-q"]);
    fs::write(repo.join(".gitignore"), "*.log\n").unwrap();
    fs::write(repo.join("src/a.txt"), "host a\n").unwrap();
    fs::write(repo.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
    fs::set_permissions(repo.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("src/a.txt", repo.join("link")).unwrap();
    fs::write(repo.join("gone.txt"), "deleted but tracked\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "one"]);
    fs::remove_file(repo.join("gone.txt")).unwrap();
    fs::write(repo.join("build.log"), "ignored\n").unwrap();
    fs::write(repo.join("new.txt"), "untracked\n").unwrap();
    repo
}

fn state(guest: &Guest) -> String {
    let status = json(cli(guest, &["vm", "workspace", "status", "dev", "--json"]));
    status["state"].as_str().unwrap().to_owned()
}

fn sh(guest: &Guest, script: &str) -> Output {
    cli(guest, &["vm", "exec", "dev", "--", "sh", "-c", script])
}

async fn import_export_status_and_refusals() {
    let guest = Guest::start().await;
    let scratch = guest.daemon.root().scratch("workspace");
    let repo = checkout(&scratch);
    let g = scratch.join("guest/app");
    let gs = g.to_str().unwrap();

    assert_eq!(state(&guest), "none");
    let first = json(cli(
        &guest,
        &[
            "vm",
            "workspace",
            "import",
            "dev",
            repo.to_str().unwrap(),
            "--guest-path",
            gs,
            "--json",
        ],
    ));
    assert_eq!(first["guest_path"], gs);
    assert_eq!(first["files"], 5, "{first}"); // .gitignore, src/a.txt, run.sh, link, new.txt
    assert_eq!(first["total_files"], 5);
    assert_eq!(fs::read_to_string(g.join("src/a.txt")).unwrap(), "host a\n");
    assert_eq!(
        fs::read_to_string(g.join("new.txt")).unwrap(),
        "untracked\n"
    );
    assert_eq!(
        fs::metadata(g.join("run.sh")).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_link(g.join("link")).unwrap(),
        Path::new("src/a.txt")
    );
    assert!(
        !g.join("build.log").exists(),
        "an ignored file was imported"
    );
    assert!(
        !g.join("gone.txt").exists(),
        "a deleted tracked file was imported"
    );
    assert!(!g.join(".git").exists());

    // Unchanged: nothing is sent, the tree hash is the same, the view records it.
    let again = json(cli(
        &guest,
        &[
            "vm",
            "workspace",
            "import",
            "dev",
            repo.to_str().unwrap(),
            "--guest-path",
            gs,
            "--json",
        ],
    ));
    assert_eq!(
        (again["files"].as_u64(), again["bytes"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(again["hashed_bytes"], 0, "{again}");
    assert_eq!(again["tree_hash"], first["tree_hash"]);
    let shown = json(cli(&guest, &["vm", "show", "dev", "--json"]));
    let text = shown.to_string();
    assert!(
        text.contains(first["tree_hash"].as_str().unwrap()),
        "{text}"
    );
    assert_eq!(state(&guest), "in_sync");

    // Guest edits, an addition and a deletion come back; an ignored guest file does not.
    ok(sh(
        &guest,
        &format!(
            "cd {gs} && echo guest >> src/a.txt && echo made > made.txt && rm new.txt && echo x > out.log"
        ),
    ));
    assert_eq!(state(&guest), "guest_ahead");
    let exported = json(cli(&guest, &["vm", "workspace", "export", "dev", "--json"]));
    assert_eq!(
        exported["written"],
        serde_json::json!(["made.txt", "src/a.txt"])
    );
    assert_eq!(exported["deleted"], serde_json::json!(["new.txt"]));
    assert_eq!(
        fs::read_to_string(repo.join("src/a.txt")).unwrap(),
        "host a\nguest\n"
    );
    assert!(repo.join("made.txt").exists() && !repo.join("new.txt").exists());
    assert!(!repo.join("out.log").exists());
    assert_eq!(state(&guest), "in_sync");
    // No staging directory is left in the checkout.
    assert!(fs::read_dir(&repo).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".banger-export-")
    }));

    // A host edit and a guest edit of the same file: refused, naming it; the host keeps its
    // version until --force.
    fs::write(repo.join("src/a.txt"), "host again\n").unwrap();
    ok(sh(&guest, &format!("echo guest again > {gs}/src/a.txt")));
    assert_eq!(state(&guest), "diverged");
    let refused = cli(&guest, &["vm", "workspace", "export", "dev"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("src/a.txt") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(repo.join("src/a.txt")).unwrap(),
        "host again\n"
    );
    // An import would lose the guest's edit: refused too.
    let refused = cli(
        &guest,
        &[
            "vm",
            "workspace",
            "import",
            "dev",
            repo.to_str().unwrap(),
            "--guest-path",
            gs,
        ],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("src/a.txt"));
    ok(cli(
        &guest,
        &["vm", "workspace", "export", "dev", "--force"],
    ));
    assert_eq!(
        fs::read_to_string(repo.join("src/a.txt")).unwrap(),
        "guest again\n"
    );
    assert_eq!(state(&guest), "in_sync");

    // A hostile guest: a symlink out of the checkout is refused and nothing is written.
    ok(sh(
        &guest,
        &format!("ln -s /etc {gs}/esc && echo y > {gs}/also.txt"),
    ));
    let refused = cli(&guest, &["vm", "workspace", "export", "dev"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("points out of the checkout"), "{stderr}");
    assert!(fs::symlink_metadata(repo.join("esc")).is_err());
    assert!(
        !repo.join("also.txt").exists(),
        "a refused export wrote a file"
    );
    ok(sh(&guest, &format!("rm {gs}/esc {gs}/also.txt")));

    // vm exec warns, once, when the host checkout moved on.
    let quiet = sh(&guest, "true");
    assert!(quiet.stderr.is_empty(), "{quiet:?}");
    fs::write(repo.join("run.sh"), "#!/bin/sh\necho changed\n").unwrap();
    let warned = sh(&guest, "true");
    assert!(warned.status.success());
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("older than") && stderr.contains("1 file(s) changed"),
        "{stderr}"
    );
    assert_eq!(state(&guest), "host_ahead");

    // A re-import sends just that file, and deletes what the host removed.
    fs::remove_file(repo.join("made.txt")).unwrap();
    let third = json(cli(
        &guest,
        &[
            "vm",
            "workspace",
            "import",
            "dev",
            repo.to_str().unwrap(),
            "--guest-path",
            gs,
            "--json",
        ],
    ));
    assert_eq!(
        (third["files"].as_u64(), third["deleted"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(!g.join("made.txt").exists());
    assert_eq!(state(&guest), "in_sync");

    // Every import and export was an operation.
    let events = ok(cli(&guest, &["events", "--json"]));
    assert!(events.contains("vm.workspace.import") && events.contains("vm.workspace.export"));
    assert!(events.contains("workspace_imported") && events.contains("workspace_exported"));
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        tokio import_export_status_and_refusals needs(Root),
    ]
}
