//! `banger update` against a release served on loopback, signed with a test key by
//! `openssl` (the format `cosign sign-blob` writes), installed into a copy of the programs in
//! a temporary directory: the swap, bangerd's restart with its VMs kept, the rollback of a
//! new bangerd that fails, and every refusal (placeholder key, bad signature, sha256
//! mismatch, a download cut short, an operation in flight) leaving the install, bangerd and
//! its VMs exactly as they were.
//!
//! The test key is only ever given to the library (`update::Plan`): the `banger` program
//! itself carries the placeholder, which the last test checks it refuses with.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use banger::api::PingResult;
use banger::paths::Layout;
use banger::update::{self, Outcome, Plan, ReleaseKey, StartBangerd, UpdateError, Version};
use banger_events::VmState;
use banger_test_harness::Test;
use banger_test_harness::http::{FileServer, Gate, Reply};
use serde_json::json;
use sha2::Digest;

use super::kernel_pull::{bundle_entry, tiny_bundle};
use super::support::{Bangerd, TestRoot};
use super::vm::Lab;

pub(crate) fn tests() -> Vec<Test> {
    banger_test_harness::tests![
        tokio an_update_swaps_the_programs_and_restarts_bangerd_which_keeps_the_vms needs(Root),
        tokio a_new_bangerd_that_fails_is_rolled_back_to_the_previous_programs,
        tokio refused_updates_change_nothing,
        sync the_banger_program_refuses_to_update_with_its_placeholder_key,
    ]
}

const PROGRAMS: [&str; 4] = ["banger", "bangerd", "banger-helper", "banger-agent"];
const RELEASE: &str = "0.1.0";
/// What the "installed" banger says it is, so that this build counts as a newer release.
const INSTALLED: Version = Version(0, 0, 9);

fn built(program: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_banger"))
        .parent()
        .unwrap()
        .join(program)
}

/// A release's programs: this build's bangerd (the one program the update runs for real),
/// and small stand-ins for the others that say the release's version (keeping the tarball
/// small: debug builds are large).
fn release_programs(scratch: &Path, bangerd: PathBuf) -> Vec<(&'static str, PathBuf)> {
    let dir = scratch.join("stand-ins");
    fs::create_dir_all(&dir).unwrap();
    PROGRAMS
        .iter()
        .map(|program| {
            if *program == "bangerd" {
                return (*program, bangerd.clone());
            }
            let path = dir.join(program);
            fs::write(&path, format!("#!/bin/sh\necho '{program} {RELEASE}'\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            (*program, path)
        })
        .collect()
}

/// An install directory holding copies of this build's programs.
fn install_dir(scratch: &Path) -> PathBuf {
    let dir = scratch.join("bin");
    fs::create_dir_all(&dir).unwrap();
    for program in PROGRAMS {
        fs::copy(built(program), dir.join(program)).unwrap();
    }
    dir
}

/// Each installed program's inode and bytes' sha256: "nothing changed" is these equal.
fn fingerprint(dir: &Path) -> Vec<(u64, String)> {
    PROGRAMS
        .iter()
        .map(|p| {
            let path = dir.join(p);
            (
                fs::metadata(&path).unwrap().ino(),
                hex(&sha2::Sha256::digest(fs::read(&path).unwrap())),
            )
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !PROGRAMS.contains(&n.as_str()))
        .collect();
    names.sort();
    names
}

/// A P-256 key pair made by openssl: (private key file, public key PEM).
fn openssl_key(dir: &Path) -> (PathBuf, String) {
    let private = dir.join("release.key");
    let public = dir.join("release.pub");
    run(Command::new("openssl")
        .args([
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
        ])
        .arg(&private));
    run(Command::new("openssl")
        .args(["ec", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public));
    (private, fs::read_to_string(public).unwrap())
}

/// `openssl dgst -sha256 -sign KEY FILE | base64 -w0`: what `cosign sign-blob` prints.
fn openssl_sign(key: &Path, blob: &[u8], scratch: &Path) -> Vec<u8> {
    let file = scratch.join("to-sign");
    fs::write(&file, blob).unwrap();
    let der = run(Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&file));
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .encode(der)
        .into_bytes()
}

fn run(command: &mut Command) -> Vec<u8> {
    let output = command
        .stderr(Stdio::piped())
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A release served by a loopback HTTP server: the manifest, its signature and the tarball.
struct Served {
    server: FileServer,
    key: (PathBuf, String),
    scratch: PathBuf,
}

impl Served {
    fn new(scratch: &Path) -> Served {
        fs::create_dir_all(scratch).unwrap();
        Served {
            server: FileServer::start(),
            key: openssl_key(scratch),
            scratch: scratch.to_owned(),
        }
    }

    /// A tar.zst of `banger-RELEASE/<program>` for the given programs' files.
    fn tarball(&self, programs: &[(&str, PathBuf)]) -> Vec<u8> {
        let dir = self
            .scratch
            .join("release")
            .join(format!("banger-{RELEASE}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for (name, source) in programs {
            fs::copy(source, dir.join(name)).unwrap();
        }
        let tarball = self.scratch.join("release.tar.zst");
        run(Command::new("tar")
            .arg("--zstd")
            .arg("-C")
            .arg(dir.parent().unwrap())
            .arg("-cf")
            .arg(&tarball)
            .arg(format!("banger-{RELEASE}")));
        fs::read(tarball).unwrap()
    }

    /// Serves `tarball` (answering with `reply`) under a manifest that says `sha256`, signed
    /// with the test key (or `sign_with`'s).
    fn publish(&self, tarball: &[u8], sha256: &str, reply: Reply, sign_with: Option<&Path>) {
        let manifest = serde_json::to_vec(&json!({
            "schema": 1,
            "version": RELEASE,
            "target": format!("{}-unknown-linux-gnu", std::env::consts::ARCH),
            "tarball": {"url": "banger.tar.zst", "sha256": sha256, "size": tarball.len()},
        }))
        .unwrap();
        let key = sign_with.unwrap_or(&self.key.0);
        let signature = openssl_sign(key, &manifest, &self.scratch);
        self.server
            .serve("/r/manifest.json", Reply::bytes(manifest));
        self.server
            .serve("/r/manifest.json.sig", Reply::bytes(signature));
        self.server.serve("/r/banger.tar.zst", reply);
    }

    fn publish_good(&self, tarball: Vec<u8>) {
        let sha = hex(&sha2::Sha256::digest(&tarball));
        self.publish(&tarball, &sha, Reply::bytes(tarball.clone()), None);
    }

    fn plan(&self, install_dir: &Path, layout: Layout, start: StartBangerd) -> Plan {
        Plan {
            key: ReleaseKey::from_pem(&self.key.1).unwrap(),
            manifest_url: self.server.url("/r/manifest.json").parse().unwrap(),
            current: INSTALLED,
            install_dir: install_dir.to_owned(),
            layout,
            start_bangerd: start,
        }
    }
}

/// Starts a bangerd program on `daemon`'s root the way the test harness does (its
/// environment and, as root, its test network namespace).
fn start_like(daemon: &Bangerd, env: &[(String, String)]) -> StartBangerd {
    let root = daemon.root().path().to_owned();
    let output = root.join("bangerd-updated.stderr");
    let env = env.to_vec();
    let network = daemon
        .root()
        .network()
        .map(|n| (Arc::new(n.namespace()), n.socket().to_owned()));
    Box::new(move |bangerd: &Path| {
        let mut command = Command::new(bangerd);
        command
            .env("BANGER_ROOT", &root)
            .env("BANGER_LOG", "debug")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&output)?);
        match &network {
            Some((namespace, socket)) => {
                command.env("BANGER_HELPER_SOCKET", socket);
                let fd = namespace.as_raw_fd();
                // SAFETY: setns is async-signal-safe; the descriptor outlives the spawn.
                unsafe {
                    command.pre_exec(move || {
                        let namespace = std::os::fd::BorrowedFd::borrow_raw(fd);
                        nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(std::io::Error::from)
                    });
                }
            }
            None => {
                command
                    .env("BANGER_NO_AUTOSTART", "1")
                    .env("BANGER_HELPER_SOCKET", root.join("no-helper.sock"));
            }
        }
        command.spawn()
    })
}

async fn ping(layout: &Layout) -> Option<PingResult> {
    let mut client = banger::rpc::Client::connect(&layout.socket_path())
        .await
        .ok()?;
    client.call("daemon.ping", &json!({})).await.ok()
}

fn exe_of(pid: u32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

fn collect(messages: &mut Vec<String>) -> impl FnMut(String) + Send + '_ {
    move |m| messages.push(m)
}

async fn an_update_swaps_the_programs_and_restarts_bangerd_which_keeps_the_vms() {
    let lab = Lab::new().await;
    let vm = lab.create("keep").await.vm.unwrap().process.unwrap();
    let scratch = lab.daemon.root().scratch("update");
    let install = install_dir(&scratch);
    let before = fingerprint(&install);
    let served = Served::new(&scratch.join("served"));
    let release = release_programs(&scratch, built("bangerd"));
    served.publish_good(served.tarball(&release));
    let old_pid = lab.daemon.pid();
    let plan = served.plan(
        &install,
        lab.daemon.layout(),
        start_like(&lab.daemon, &lab.env),
    );
    let http = banger::kernel::fetch::http_client().unwrap();

    let mut said = Vec::new();
    let outcome = update::update(&plan, &http, &mut collect(&mut said)).await;
    let outcome = outcome.unwrap_or_else(|e| panic!("{e}\n{said:?}"));
    let Outcome::Updated {
        from,
        to,
        programs,
        bangerd_pid,
        vms_kept,
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!((from, to), (INSTALLED, Version::parse(RELEASE).unwrap()));
    assert_eq!(programs.len(), 4);
    assert_eq!(vms_kept, 1);
    // Every program was replaced by the release's (new inodes, the release's bytes), and
    // the work directory is gone.
    let after = fingerprint(&install);
    for ((old, new), (program, source)) in before.iter().zip(&after).zip(&release) {
        assert_ne!(old.0, new.0, "{program} was not swapped");
        assert_eq!(
            new.1,
            hex(&sha2::Sha256::digest(fs::read(source).unwrap())),
            "{program}"
        );
    }
    assert_eq!(leftovers(&install), Vec::<String>::new());
    // A new bangerd, the installed one, answers; the VM runs on under it, same VMM.
    let new_pid = bangerd_pid.unwrap();
    assert_ne!(new_pid, old_pid);
    assert_eq!(exe_of(new_pid), install.join("bangerd"));
    let shown = lab.show("keep").await;
    assert_eq!(shown.vm.state, VmState::Running);
    assert_eq!(shown.vm.process.unwrap().pid, vm.pid);
    assert!(said.iter().any(|m| m.contains("verified")), "{said:?}");

    // Up to date now: nothing is downloaded again.
    let again = Plan {
        current: Version::parse(RELEASE).unwrap(),
        ..plan
    };
    let requests = served.server.requests("/r/banger.tar.zst");
    assert!(matches!(
        update::update(&again, &http, &mut |_| {}).await.unwrap(),
        Outcome::UpToDate { .. }
    ));
    assert_eq!(served.server.requests("/r/banger.tar.zst"), requests);
}

async fn a_new_bangerd_that_fails_is_rolled_back_to_the_previous_programs() {
    let daemon = Bangerd::start_on_host_network(TestRoot::without_network());
    let scratch = daemon.root().scratch("update");
    let install = install_dir(&scratch);
    let before = fingerprint(&install);
    let served = Served::new(&scratch.join("served"));
    // A bangerd that says the right version and then cannot run.
    let broken = scratch.join("broken-bangerd");
    fs::write(
        &broken,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'bangerd {RELEASE}'; exit 0; fi\necho 'cannot start' >&2\nexit 1\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&broken, fs::Permissions::from_mode(0o755)).unwrap();
    let programs = release_programs(&scratch, broken);
    served.publish_good(served.tarball(&programs));
    let plan = served.plan(&install, daemon.layout(), start_like(&daemon, &[]));
    let http = banger::kernel::fetch::http_client().unwrap();

    let error = update::update(&plan, &http, &mut |_| {}).await.unwrap_err();
    assert!(
        matches!(&error, UpdateError::RolledBack { why, restarted }
            if why.contains("exited") && restarted.contains("runs again")),
        "{error}"
    );
    // The previous programs, the very same files, are back; the previous bangerd runs.
    assert_eq!(fingerprint(&install), before);
    assert_eq!(leftovers(&install), Vec::<String>::new());
    let ping = ping(&daemon.layout())
        .await
        .expect("the previous bangerd answers");
    assert_eq!(exe_of(ping.pid), install.join("bangerd"));
    assert_eq!(ping.version, RELEASE);
}

async fn refused_updates_change_nothing() {
    // bangerd runs with an operation in flight for the last case: a kernel pull whose
    // download the test's server holds half-way.
    let server_for_pull = FileServer::start();
    let root = TestRoot::without_network();
    let inputs = root.scratch("inputs");
    let bundle = tiny_bundle(&inputs.join("k"));
    let packed = banger::kernel::pack_bundle(&bundle, "slow", &inputs.join("dist")).unwrap();
    let bytes = fs::read(&packed.path).unwrap();
    let gate = Gate::new();
    server_for_pull.serve(
        "/slow.tar.zst",
        Reply::Paused {
            bytes: Arc::new(bytes.clone()),
            pause_after: bytes.len() / 2,
            gate: gate.clone(),
        },
    );
    let catalog = inputs.join("catalog.json");
    fs::write(
        &catalog,
        json!({"format": 1, "kernels": [bundle_entry(
            "slow", &server_for_pull.url("/slow.tar.zst"), &packed.sha256, bytes.len()
        )]})
        .to_string(),
    )
    .unwrap();
    let config = root.layout().config_path();
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(
        &config,
        format!("[kernels]\ncatalog = \"{}\"\n", catalog.display()),
    )
    .unwrap();
    let daemon = Bangerd::start_on_host_network(root);
    let daemon_pid = daemon.pid();

    let scratch = daemon.root().scratch("update");
    let install = install_dir(&scratch);
    let before = fingerprint(&install);
    let served = Served::new(&scratch.join("served"));
    let programs = release_programs(&scratch, built("bangerd"));
    let tarball = served.tarball(&programs);
    let good_sha = hex(&sha2::Sha256::digest(&tarball));
    let plan = served.plan(&install, daemon.layout(), start_like(&daemon, &[]));
    let http = banger::kernel::fetch::http_client().unwrap();
    let unchanged = |what: &str| {
        assert_eq!(fingerprint(&install), before, "{what} changed the install");
        assert_eq!(
            leftovers(&install),
            Vec::<String>::new(),
            "{what} left files"
        );
        assert!(
            Path::new(&format!("/proc/{daemon_pid}")).exists(),
            "{what} stopped bangerd"
        );
    };

    // Signed by another key.
    let elsewhere = scratch.join("stranger");
    fs::create_dir_all(&elsewhere).unwrap();
    let (stranger, _) = openssl_key(&elsewhere);
    served.publish(
        &tarball,
        &good_sha,
        Reply::bytes(tarball.clone()),
        Some(&stranger),
    );
    let error = update::update(&plan, &http, &mut |_| {}).await.unwrap_err();
    assert!(matches!(error, UpdateError::BadSignature(_)), "{error}");
    unchanged("a bad signature");

    // A tarball whose sha256 is not the manifest's.
    let mut tampered = tarball.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    served.publish(&tarball, &good_sha, Reply::bytes(tampered), None);
    let error = update::update(&plan, &http, &mut |_| {}).await.unwrap_err();
    assert!(
        matches!(&error, UpdateError::BadTarball(why) if why.contains("sha256")),
        "{error}"
    );
    unchanged("a sha256 mismatch");

    // A download cut short.
    served.publish(
        &tarball,
        &good_sha,
        Reply::Truncated {
            bytes: Arc::new(tarball.clone()),
            send: tarball.len() / 3,
        },
        None,
    );
    let error = update::update(&plan, &http, &mut |_| {}).await.unwrap_err();
    assert!(matches!(error, UpdateError::BadTarball(_)), "{error}");
    unchanged("a truncated download");

    // A good release, but an operation is in flight.
    served.publish_good(tarball.clone());
    let pull = Command::new(env!("CARGO_BIN_EXE_banger"))
        .args(["kernel", "pull", "slow"])
        .env("BANGER_ROOT", daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        gate.wait_reached(Duration::from_secs(60)),
        "the pull never started"
    );
    let downloads = served.server.requests("/r/banger.tar.zst");
    let error = update::update(&plan, &http, &mut |_| {}).await.unwrap_err();
    assert!(
        matches!(&error, UpdateError::Busy(ops) if ops.contains("kernel.pull")),
        "{error}"
    );
    unchanged("an operation in flight");
    assert_eq!(
        served.server.requests("/r/banger.tar.zst"),
        downloads,
        "the busy check comes before the download"
    );
    gate.open();
    let status = tokio::task::spawn_blocking(move || {
        let mut pull = pull;
        pull.wait()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success());
}

fn the_banger_program_refuses_to_update_with_its_placeholder_key() {
    let root = TestRoot::without_network();
    let output = Command::new(env!("CARGO_BIN_EXE_banger"))
        .args([
            "update",
            "--manifest-url",
            "http://127.0.0.1:9/manifest.json",
        ])
        .env("BANGER_ROOT", root.path())
        .env("BANGER_NO_AUTOSTART", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("without a release key") && stderr.contains("refuses to update"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}
