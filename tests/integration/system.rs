//! `banger system install | status | restart | uninstall`, run as root against a throwaway
//! system root (`BANGER_SYSTEM_ROOT`): the units systemd would read, checked by systemd's own
//! `systemd-analyze verify` and `security --offline`; drift after a hand edit; uninstall
//! removing exactly what install wrote; refusals (not root, bad owners, programs others could
//! replace); the CLI pointed at the installed bangerd's socket.
//!
//! systemd is not PID 1 where these run, so no service is started: install says so and exits
//! 3, restart refuses, and what `systemctl` would report is not exercised here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The owner the tests install for: Debian's `daemon` account (uid 1) exists on every
/// system, so no test adds a user to the host.
const OWNER: &str = "daemon";
const OWNER_UID: u32 = 1;

fn banger_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_banger"))
}

/// `banger ARGS` with `root` as the system root, as root.
fn banger(root: &Path, args: &[&str]) -> Output {
    command(&banger_bin(), root, args)
        .output()
        .expect("run banger")
}

fn command(program: &Path, root: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("BANGER_SYSTEM_ROOT", root)
        .env_remove("SUDO_USER")
        .env_remove("BANGER_ROOT")
        .env("BANGER_NO_AUTOSTART", "1")
        .stdin(Stdio::null());
    command
}

fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every path under `dir` (files and directories), relative to it.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut paths = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(here) = stack.pop() {
        for entry in std::fs::read_dir(&here).expect("read a directory") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            paths.insert(path.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    paths
}

/// A throwaway system root, readable by everyone like `/` (other users read its metadata).
fn system_root() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::Builder::new()
        .prefix("banger-sysroot-")
        .tempdir_in("/tmp")
        .expect("a system root");
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the system root");
    root
}

fn unit_dir(root: &Path) -> PathBuf {
    root.join("etc/systemd/system")
}

/// Installs for [`OWNER`] without starting anything; the metadata it wrote.
fn install(root: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["system", "install", "--owner", OWNER, "--no-start"];
    args.extend_from_slice(extra);
    let run = banger(root, &args);
    assert!(run.status.success(), "{}", text(&run));
    metadata(root)
}

fn metadata(root: &Path) -> Value {
    let bytes = std::fs::read(root.join("etc/banger/install.json")).expect("install.json");
    serde_json::from_slice(&bytes).expect("install.json is JSON")
}

/// `systemd-analyze ARGS`; systemd-analyze is installed wherever these tests run (CI's
/// `.ci/run` installs the `systemd` package).
fn systemd_analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("run systemd-analyze (apt-get install systemd)")
}

/// `systemd-analyze verify` of both units succeeds with no warning about either.
fn verify_clean(helper_unit: &Path, bangerd_unit: &Path) {
    let verify = systemd_analyze(&[
        "verify",
        &helper_unit.display().to_string(),
        &bangerd_unit.display().to_string(),
    ]);
    println!("systemd-analyze verify:\n{}", text(&verify));
    assert!(verify.status.success(), "{}", text(&verify));
    for unit in ["banger-helper.service", "bangerd.service"] {
        assert!(
            !stderr(&verify).contains(&format!("{unit}:")),
            "systemd-analyze warns about {unit}\n{}",
            text(&verify)
        );
    }
}

/// The overall exposure `systemd-analyze security --offline=true UNIT` gives; `None` when
/// this systemd cannot assess a unit file offline (older than 250).
fn exposure(unit: &Path) -> Option<f64> {
    let run = systemd_analyze(&["security", "--offline=true", &unit.display().to_string()]);
    let out = String::from_utf8_lossy(&run.stdout);
    if !run.status.success() {
        println!(
            "systemd-analyze security --offline=true is not supported here: {}",
            text(&run)
        );
        return None;
    }
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| panic!("no overall exposure line\n{out}"));
    let score = line
        .rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    println!("{line}");
    Some(score)
}

/// Exposure scores (0 safest, 10 worst) the units must stay under. Measured with systemd
/// 252: banger-helper.service 2.4, bangerd.service 1.8. What remains is what the programs
/// need: root and CAP_NET_ADMIN for the helper, the host's network for both, /dev/kvm and
/// /dev/net/tun.
const MAX_HELPER_EXPOSURE: f64 = 3.0;
const MAX_BANGERD_EXPOSURE: f64 = 3.0;

fn install_writes_units_systemd_accepts_and_uninstall_removes_exactly_them() {
    let root = system_root();
    // Something of the administrator's in the unit directory, before banger came.
    std::fs::create_dir_all(unit_dir(root.path())).unwrap();
    std::fs::write(unit_dir(root.path()).join("other.service"), "[Service]\n").unwrap();
    let before = tree(root.path());

    let run = banger(root.path(), &["system", "install", "--owner", OWNER]);
    // systemd does not read a system root: everything is written, nothing is started, and
    // the status says so.
    assert_eq!(run.status.code(), Some(3), "{}", text(&run));
    assert!(
        stderr(&run).starts_with(
            "banger: installed but not started: the units are under BANGER_SYSTEM_ROOT="
        ),
        "{}",
        text(&run)
    );
    let added: Vec<PathBuf> = tree(root.path()).difference(&before).cloned().collect();
    assert_eq!(
        added,
        [
            PathBuf::from("etc/banger"),
            PathBuf::from("etc/banger/install.json"),
            PathBuf::from("etc/systemd/system/banger-helper.service"),
            PathBuf::from("etc/systemd/system/bangerd.service"),
        ],
        "{}",
        text(&run)
    );

    let meta = metadata(root.path());
    let bin_dir = banger_bin().canonicalize().unwrap();
    let bin_dir = bin_dir.parent().unwrap();
    assert_eq!(meta["inputs"]["owner"], OWNER, "{meta}");
    assert_eq!(meta["inputs"]["uid"], OWNER_UID, "{meta}");
    assert_eq!(
        meta["inputs"]["bangerd"],
        bin_dir.join("bangerd").display().to_string()
    );
    assert_eq!(
        meta["inputs"]["helper"],
        bin_dir.join("banger-helper").display().to_string()
    );
    assert_eq!(meta["inputs"]["helper_socket"], "/run/banger/helper.sock");
    assert_eq!(meta["socket"], "/run/bangerd/banger/bangerd.sock");
    assert_eq!(
        meta["versions"]["bangerd"],
        format!("bangerd {}", env!("CARGO_PKG_VERSION"))
    );
    let helper_unit = unit_dir(root.path()).join("banger-helper.service");
    let bangerd_unit = unit_dir(root.path()).join("bangerd.service");
    let helper_text = std::fs::read_to_string(&helper_unit).unwrap();
    assert!(
        helper_text.contains(&format!(
            "\nExecStart={} --socket /run/banger/helper.sock --allow-uid {OWNER_UID}\n",
            bin_dir.join("banger-helper").display()
        )),
        "{helper_text}"
    );
    let bangerd_text = std::fs::read_to_string(&bangerd_unit).unwrap();
    assert!(
        bangerd_text.contains(&format!("\nUser={OWNER}\n")),
        "{bangerd_text}"
    );

    // systemd's own checks of what it would load (the programs they name exist: the ones
    // cargo built).
    verify_clean(&helper_unit, &bangerd_unit);
    if let Some(score) = exposure(&helper_unit) {
        assert!(
            score < MAX_HELPER_EXPOSURE,
            "banger-helper.service: {score}"
        );
    }
    if let Some(score) = exposure(&bangerd_unit) {
        assert!(score < MAX_BANGERD_EXPOSURE, "bangerd.service: {score}");
    }

    // Status: as installed.
    let status = banger(root.path(), &["system", "status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let json: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["systemd"], false, "{json}");
    let states: Vec<&str> = json["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["current", "current"], "{json}");

    // A hand edit shows as drift, with the lines it changed, and status fails.
    std::fs::write(
        &helper_unit,
        helper_text.replace(
            &format!("--allow-uid {OWNER_UID}\n"),
            &format!("--allow-uid {OWNER_UID} --allow-uid 0\n"),
        ),
    )
    .unwrap();
    let status = banger(root.path(), &["system", "status", "--json"]);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    let json: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["ok"], false, "{json}");
    assert_eq!(json["units"][0]["name"], "banger-helper.service");
    assert_eq!(json["units"][0]["state"], "edited", "{json}");
    assert_eq!(json["units"][1]["state"], "current", "{json}");
    let shown = banger(root.path(), &["system", "status"]);
    let out = String::from_utf8_lossy(&shown.stdout);
    assert!(out.contains("edited since install"), "{}", text(&shown));
    assert!(
        out.contains(&format!("--allow-uid {OWNER_UID} --allow-uid 0")),
        "the diff names the edit\n{}",
        text(&shown)
    );
    assert!(
        out.contains(&format!("sudo banger system install --owner {OWNER}")),
        "{}",
        text(&shown)
    );

    // Restart needs systemd.
    let restart = banger(root.path(), &["system", "restart"]);
    assert_eq!(restart.status.code(), Some(1), "{}", text(&restart));
    assert!(
        stderr(&restart).contains("systemd is not running"),
        "{}",
        text(&restart)
    );

    // Installing again writes the units as they should be.
    install(root.path(), &[]);
    let status = banger(root.path(), &["system", "status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));

    // Uninstall removes exactly what install wrote (the administrator's unit stays), and says
    // where the owner's state is kept.
    let run = banger(root.path(), &["system", "uninstall"]);
    assert!(run.status.success(), "{}", text(&run));
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        out.contains("kept: daemon's VMs, images, kernels and event log in "),
        "{out}"
    );
    assert_eq!(tree(root.path()), before, "{}", text(&run));
    // --purge under a system root leaves the owner's real directories alone.
    install(root.path(), &[]);
    let purge = banger(root.path(), &["system", "uninstall", "--purge"]);
    assert!(purge.status.success(), "{}", text(&purge));
    assert!(
        String::from_utf8_lossy(&purge.stdout).contains(
            "kept: daemon's state, cache and config (the install was under BANGER_SYSTEM_ROOT)"
        ),
        "{}",
        text(&purge)
    );
    assert_eq!(tree(root.path()), before, "{}", text(&purge));
    let again = banger(root.path(), &["system", "uninstall"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).starts_with("nothing to uninstall"),
        "{}",
        text(&again)
    );
    let status = banger(root.path(), &["system", "status"]);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
}

fn a_unit_dir_elsewhere_is_recorded_and_a_reinstall_moves_the_units() {
    let root = system_root();
    let first = root.path().join("units-a");
    let second = root.path().join("units-b");
    let meta = install(root.path(), &["--unit-dir", &first.display().to_string()]);
    assert_eq!(meta["unit_dir"], first.display().to_string());
    assert!(first.join("bangerd.service").is_file());
    assert!(
        !unit_dir(root.path()).exists(),
        "the default dir is not touched"
    );
    install(root.path(), &["--unit-dir", &second.display().to_string()]);
    assert!(second.join("bangerd.service").is_file());
    assert!(
        !first.join("bangerd.service").exists() && !first.join("banger-helper.service").exists(),
        "the previous units went"
    );
    let run = banger(root.path(), &["system", "uninstall"]);
    assert!(run.status.success(), "{}", text(&run));
    // Both directories were made by install (recorded), and are empty now: gone.
    assert_eq!(tree(root.path()), BTreeSet::new(), "{}", text(&run));
}

/// `--network`: the helper's unit gives the owner that network (a line the helper itself
/// accepts, and systemd too); one the helper would refuse is refused before anything is
/// written.
fn a_network_for_the_owner_goes_to_the_helper_and_a_bad_one_is_refused() {
    let root = system_root();
    let meta = install(root.path(), &["--network", "banger3:10.33.0.1/24"]);
    assert_eq!(meta["inputs"]["network"], "banger3:10.33.0.1/24", "{meta}");
    let uid = meta["inputs"]["uid"].as_u64().unwrap();
    let unit = unit_dir(root.path()).join("banger-helper.service");
    let text_of_unit = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text_of_unit.contains(&format!(
            "--allow-uid {uid} --network {uid}:banger3:10.33.0.1/24\n"
        )),
        "{text_of_unit}"
    );
    let verify = systemd_analyze(&["verify", &unit.display().to_string()]);
    assert!(
        !stderr(&verify).contains("banger-helper.service:"),
        "{}",
        text(&verify)
    );
    // The line it wrote is one banger-helper starts with: it checks the networks first, and
    // only then fails to listen (the socket is moved under /dev/null for this run).
    helper_starts_with_the_line_of(&text_of_unit);

    let again = system_root();
    let run = banger(
        again.path(),
        &[
            "system",
            "install",
            "--owner",
            OWNER,
            "--no-start",
            "--network",
            "banger3:8.8.8.1/24",
        ],
    );
    assert!(!run.status.success(), "{}", text(&run));
    assert!(stderr(&run).contains("private"), "{}", text(&run));
    assert_eq!(tree(again.path()), BTreeSet::new(), "nothing was written");
}

fn only_root_installs_and_bad_owners_are_refused() {
    let root = system_root();
    // As nobody: refused before anything is written. Status reads what is there.
    let as_nobody = |args: &[&str]| {
        let mut setpriv = command(
            Path::new("setpriv"),
            root.path(),
            &["--reuid=65534", "--regid=65534", "--clear-groups", "--"],
        );
        setpriv.arg(banger_bin()).args(args);
        setpriv.output().expect("run setpriv")
    };
    for (verb, args) in [
        ("install", &["system", "install", "--owner", OWNER][..]),
        ("uninstall", &["system", "uninstall"][..]),
    ] {
        let run = as_nobody(args);
        assert_eq!(run.status.code(), Some(1), "{}", text(&run));
        assert_eq!(
            stderr(&run).trim_end(),
            format!(
                "banger: error: `banger system {verb}` must run as root: it writes systemd units under /etc and runs banger-helper as root; run `sudo banger system {verb}`"
            ),
            "{}",
            text(&run)
        );
    }
    assert_eq!(tree(root.path()), BTreeSet::new());
    install(root.path(), &[]);
    let status = as_nobody(&["system", "status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));

    // The CLI of the owner talks to the installed bangerd's socket, and never starts one of
    // its own beside the service.
    let mut as_owner = command(
        Path::new("setpriv"),
        root.path(),
        &[
            &format!("--reuid={OWNER_UID}"),
            &format!("--regid={OWNER_UID}"),
            "--clear-groups",
            "--",
        ],
    );
    as_owner
        .arg(banger_bin())
        .args(["vm", "list"])
        .env("HOME", root.path())
        .env_remove("BANGER_NO_AUTOSTART");
    let listed = as_owner.output().expect("run setpriv");
    assert_eq!(listed.status.code(), Some(1), "{}", text(&listed));
    assert!(
        stderr(&listed).contains("nothing answers on /run/bangerd/banger/bangerd.sock")
            && stderr(&listed).contains("sudo systemctl start bangerd.service"),
        "{}",
        text(&listed)
    );

    // Owners that cannot be: root, nobody, nobody at all, someone who does not exist.
    let root2 = system_root();
    for (args, message) in [
        (
            &["system", "install", "--owner", "root"][..],
            "bangerd runs as an ordinary user, never as root",
        ),
        (
            &["system", "install", "--owner", "nobody"][..],
            "pass --owner USER",
        ),
        (
            &["system", "install"][..],
            "which user should bangerd run as?",
        ),
        (
            &["system", "install", "--owner", "no-such-user-here"][..],
            "there is no user named no-such-user-here",
        ),
    ] {
        let run = banger(root2.path(), args);
        assert_eq!(run.status.code(), Some(2), "{}", text(&run));
        assert!(stderr(&run).contains(message), "{}", text(&run));
    }
    assert_eq!(tree(root2.path()), BTreeSet::new());
}

/// banger-helper runs as root: programs in a directory others may write are refused.
fn programs_others_could_replace_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let built = banger_bin().canonicalize().unwrap();
    let built_dir = built.parent().unwrap();
    // Hard links beside the built programs (same filesystem, no copies), in a directory
    // anyone may write.
    let loose = tempfile::Builder::new()
        .prefix(".banger-loose-")
        .tempdir_in(built_dir)
        .unwrap();
    std::fs::set_permissions(loose.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    for name in ["banger", "bangerd", "banger-helper"] {
        std::fs::hard_link(built_dir.join(name), loose.path().join(name)).unwrap();
    }
    let root = system_root();
    let run = command(
        &loose.path().join("banger"),
        root.path(),
        &["system", "install", "--owner", OWNER, "--no-start"],
    )
    .output()
    .unwrap();
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    assert!(
        stderr(&run).contains(&format!(
            "refused: banger-helper runs as root, but {} is writable by its group or others (mode 0777)",
            loose.path().display()
        )),
        "{}",
        text(&run)
    );
    assert!(stderr(&run).contains("/usr/local/bin/"), "{}", text(&run));
    assert_eq!(tree(root.path()), BTreeSet::new());
}

/// Runs banger-helper with the `ExecStart=` line of the helper unit `unit` (its socket moved
/// under /dev/null): it must get past its configuration checks and fail only to listen.
fn helper_starts_with_the_line_of(unit: &str) {
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .unwrap();
    let args: Vec<&str> = exec
        .split_whitespace()
        .skip(1)
        .map(|word| {
            if word.ends_with(".sock") {
                "/dev/null/helper.sock"
            } else {
                word
            }
        })
        .collect();
    let started = Command::new(env!("CARGO_BIN_EXE_banger-helper"))
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(started.status.code(), Some(1), "{}", text(&started));
    assert!(
        stderr(&started).contains("cannot listen"),
        "{}",
        text(&started)
    );
}

/// `--jailer`: banger-helper's unit names the jailer, firecracker and jail directory, keeps
/// the jailer's capabilities (and only with a jailer), writes only there, keeps its VMMs
/// across a restart; bangerd's unit leaves /var and /home unmounted over (it links disks
/// into the jails); systemd accepts both, and the helper starts with the line written. A
/// jailer anyone may replace is refused and nothing is written.
fn a_jailer_install_gives_the_helper_what_the_jailer_needs_and_no_more() {
    let jailer = crate::support::workspace_binary("banger-tools", "fake-jailer");
    let firecracker = crate::firecracker::fake_binary();
    let jails = tempfile::Builder::new()
        .prefix("banger-jail-")
        .tempdir_in("/tmp")
        .unwrap();
    let jail_dir = jails.path().join("jails");
    let root = system_root();
    let meta = install(
        root.path(),
        &[
            "--jailer",
            jailer.to_str().unwrap(),
            "--firecracker",
            firecracker.to_str().unwrap(),
            "--jail-dir",
            jail_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(
        meta["inputs"]["jail"]["jailer"],
        jailer.display().to_string(),
        "{meta}"
    );
    assert!(
        root.path()
            .join(jail_dir.strip_prefix("/").unwrap())
            .is_dir(),
        "the jail directory is made (under the system root here)"
    );
    let helper_unit = unit_dir(root.path()).join("banger-helper.service");
    let helper_text = std::fs::read_to_string(&helper_unit).unwrap();
    for line in [
        format!(
            " --jailer {} --firecracker {} --jail-dir {}\n",
            jailer.display(),
            firecracker.display(),
            jail_dir.display()
        ),
        "\nKillMode=process\n".to_owned(),
        format!("\nReadWritePaths={}\n", jail_dir.display()),
        "\nDeviceAllow=/dev/kvm rwm\n".to_owned(),
        "\nRestrictNamespaces=mnt\n".to_owned(),
        "CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_SYS_ADMIN CAP_SYS_CHROOT CAP_MKNOD".to_owned(),
    ] {
        assert!(helper_text.contains(&line), "{line:?} in:\n{helper_text}");
    }
    let bangerd_unit = unit_dir(root.path()).join("bangerd.service");
    let bangerd_text = std::fs::read_to_string(&bangerd_unit).unwrap();
    assert!(
        bangerd_text.contains("\nProtectSystem=full\n")
            && !bangerd_text.contains("\nProtectHome=")
            && !bangerd_text.contains("\nReadWritePaths="),
        "{bangerd_text}"
    );
    verify_clean(&helper_unit, &bangerd_unit);
    // The jailer's CAP_SYS_ADMIN and mounts cost the helper's score; still well under
    // systemd's "exposed" (7.0), and bangerd's improves (it keeps no capability either way).
    if let Some(score) = exposure(&helper_unit) {
        println!("banger-helper.service with a jailer: exposure {score}");
        assert!(score < 5.0, "banger-helper.service with a jailer: {score}");
    }
    if let Some(score) = exposure(&bangerd_unit) {
        println!("bangerd.service with a jailer: exposure {score}");
        assert!(score < MAX_BANGERD_EXPOSURE, "bangerd.service: {score}");
    }
    // The line written starts banger-helper: the jail configuration is checked (and the jail
    // directory made) before it fails to listen (its socket moved under /dev/null here).
    helper_starts_with_the_line_of(&helper_text);
    assert!(jail_dir.is_dir());

    // Without --jailer none of it.
    let plain = system_root();
    install(plain.path(), &[]);
    let plain_text =
        std::fs::read_to_string(unit_dir(plain.path()).join("banger-helper.service")).unwrap();
    assert!(
        !plain_text.contains("CAP_SYS_ADMIN") && !plain_text.contains("KillMode"),
        "{plain_text}"
    );

    // A jailer others may replace: refused, nothing written.
    use std::os::unix::fs::PermissionsExt;
    let loose = jails.path().join("jailer");
    std::fs::copy(&jailer, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = system_root();
    let run = banger(
        refused.path(),
        &[
            "system",
            "install",
            "--owner",
            OWNER,
            "--no-start",
            "--jailer",
            loose.to_str().unwrap(),
            "--firecracker",
            firecracker.to_str().unwrap(),
        ],
    );
    assert!(!run.status.success(), "{}", text(&run));
    assert!(
        stderr(&run).contains("nobody else may write"),
        "{}",
        text(&run)
    );
    assert_eq!(tree(refused.path()), BTreeSet::new(), "nothing was written");
}

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync install_writes_units_systemd_accepts_and_uninstall_removes_exactly_them needs(Root),
        sync a_unit_dir_elsewhere_is_recorded_and_a_reinstall_moves_the_units needs(Root),
        sync a_network_for_the_owner_goes_to_the_helper_and_a_bad_one_is_refused needs(Root),
        sync only_root_installs_and_bad_owners_are_refused needs(Root),
        sync programs_others_could_replace_are_refused needs(Root),
        sync a_jailer_install_gives_the_helper_what_the_jailer_needs_and_no_more needs(Root),
    ]
}
