//! `kernel pull` and the kernel catalog, through the real bangerd and CLI, against a local
//! HTTP server (`banger_test_harness::http`) that the catalog's URLs are mirrored to
//! (`[kernels] mirror` in config.toml) or that a user catalog file names (`[kernels] catalog`).
//!
//! - The Debian 12 cloud kernel entry, served from the real .deb (`apt-get download`, cached
//!   like `kernel.rs` caches it): pulled, converted, registered, its bundle booted under QEMU
//!   with the agent as PID 1; pulled again (refused) and with `--force` (replaced).
//! - Hostile and broken downloads: a sha256 mismatch, a truncated response, a server error, a
//!   missing file, a bundle with an unsafe symlink, one that climbs out with `..`, a package
//!   that is no package. Each is refused with a clear error and leaves nothing in `kernels/`.
//! - kill -9 of bangerd in the middle of a download: recovery rolls the pull back, nothing of
//!   it is left, and the next pull works.
//! - `kernel list --available` states (available, pulled, other) as a table and as JSON.
//! - `vm create` with no kernel anywhere: the default kernel is pulled on first use (progress
//!   on the CLI), and the VM boots it under QEMU (root tier: the VM's tap).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger::api::{KernelCatalogState, KernelView};
use banger::kernel::{BundleFile, BundleManifest, BundleSource, pack_bundle, read_manifest};
use banger_projections::OpStatus;
use banger_test_harness::Test;
use banger_test_harness::http::{FileServer, Gate, Reply};
use serde_json::{Value, json};
use sha2::Digest;

use super::kernel::{self, Guest, KernelFile, Qemu};
use super::support::{Bangerd, TestRoot, dir_names};

pub(crate) fn tests() -> Vec<Test> {
    banger_test_harness::tests![
        sync the_debian_entry_pulls_into_a_bundle_that_boots needs(Qemu),
        sync hostile_and_broken_downloads_leave_nothing_behind,
        sync a_kill_9_in_the_middle_of_a_download_is_rolled_back,
        tokio two_creates_that_need_the_same_kernel_pull_it_once,
        sync vm_create_pulls_the_default_kernel_on_first_use needs(Root, Qemu),
    ]
}

const BANGER: &str = env!("CARGO_BIN_EXE_banger");
const DEFAULT_KERNEL: &str = "debian-12-cloud";

fn sha256_of(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sha1_of(path: &Path) -> String {
    let output = Command::new("sha1sum").arg(path).output().expect("sha1sum");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A `BANGER_ROOT` whose config.toml holds `config`; its bangerd runs in this host's network
/// namespace (no test network), where the test's HTTP server is.
fn root_with_config(config: &str) -> TestRoot {
    write_config(TestRoot::without_network(), config)
}

fn write_config(root: TestRoot, config: &str) -> TestRoot {
    let path = root.layout().config_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, config).unwrap();
    root
}

/// Runs the CLI against `daemon`'s root (never starting another bangerd).
fn cli(daemon: &Bangerd, args: &[&str]) -> Output {
    Command::new(BANGER)
        .args(args)
        .env("BANGER_ROOT", daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .output()
        .expect("run banger")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The CLI must have succeeded; returns its stdout.
fn ok(daemon: &Bangerd, output: Output) -> String {
    assert!(
        output.status.success(),
        "banger failed: {}\n{}\nbangerd said:\n{}",
        text(&output.stderr),
        text(&output.stdout),
        daemon.output()
    );
    text(&output.stdout)
}

fn catalog_states(daemon: &Bangerd) -> Vec<(String, KernelCatalogState)> {
    let json = ok(
        daemon,
        cli(daemon, &["kernel", "list", "--available", "--json"]),
    );
    let kernels: Vec<banger::api::KernelCatalogItem> = serde_json::from_str(&json).unwrap();
    kernels.into_iter().map(|k| (k.name, k.state)).collect()
}

fn kernels(daemon: &Bangerd) -> Vec<KernelView> {
    serde_json::from_str(&ok(daemon, cli(daemon, &["kernel", "list", "--json"]))).unwrap()
}

/// The catalog entry of the cached real .deb: the embedded pin when the cache holds the
/// pinned package (then served where the snapshot service would serve it, through the
/// mirror), else (the mirror moved on) an entry for the package the cache has, in a user
/// catalog file.
pub(crate) struct DebianEntry {
    /// config.toml lines that send the default kernel's download to the server.
    pub(crate) config: String,
    pub(crate) deb: PathBuf,
    pub(crate) pinned: bool,
}

pub(crate) fn serve_the_debian_entry(server: &FileServer, dir: &Path) -> DebianEntry {
    let deb = kernel::kernel_deb();
    let bytes = std::fs::read(&deb).unwrap();
    let sha256 = sha256_of(&bytes);
    let sha1 = sha1_of(&deb);
    let embedded = banger::kernel::Catalog::embedded();
    let pin = embedded
        .get(DEFAULT_KERNEL)
        .expect("the embedded default kernel");
    let pinned = pin.sha256() == sha256;
    server.serve(&format!("/file/{sha1}"), Reply::bytes(bytes.clone()));
    let mut config = format!("[kernels]\nmirror = \"{}\"\n", server.base());
    if pinned {
        // The snapshot service names a file by its SHA-1: the pin's URL ends with this one's.
        assert!(
            pin.url().ends_with(&sha1),
            "{} does not name {sha1}",
            pin.url()
        );
    } else {
        println!(
            "the cache holds {} rather than the pinned package; using a catalog entry for it",
            deb.display()
        );
        let name = deb.file_name().unwrap().to_string_lossy().into_owned();
        let mut parts = name.trim_end_matches(".deb").split('_');
        let package = parts.next().unwrap().to_owned();
        let version = parts.next().unwrap().to_owned();
        let catalog = dir.join("catalog.json");
        std::fs::write(
            &catalog,
            json!({"format": 1, "kernels": [{
                "name": DEFAULT_KERNEL, "kind": "debian_package", "package": package,
                "version": version, "url": format!("https://snapshot.debian.org/file/{sha1}"),
                "sha256": sha256, "size_bytes": bytes.len(), "description": "the cached one"
            }]})
            .to_string(),
        )
        .unwrap();
        config.push_str(&format!("catalog = \"{}\"\n", catalog.display()));
    }
    DebianEntry {
        config,
        deb,
        pinned,
    }
}

fn the_debian_entry_pulls_into_a_bundle_that_boots() {
    let scratch = kernel::scratch();
    let server = FileServer::start();
    let entry = serve_the_debian_entry(&server, scratch.path());
    let daemon = Bangerd::start_on(root_with_config(&format!(
        "{}\n[timeouts]\nboot = \"180s\"\n",
        entry.config
    )));
    assert_eq!(
        catalog_states(&daemon),
        [(DEFAULT_KERNEL.to_owned(), KernelCatalogState::Available)]
    );
    let table = ok(&daemon, cli(&daemon, &["kernel", "list", "--available"]));
    assert!(
        table.contains("STATE") && table.contains("available") && table.contains("MiB"),
        "{table}"
    );

    let started = Instant::now();
    let pulled = cli(&daemon, &["kernel", "pull", DEFAULT_KERNEL]);
    let elapsed = started.elapsed();
    let stdout = ok(&daemon, pulled.clone());
    let stderr = text(&pulled.stderr);
    println!("kernel pull {DEFAULT_KERNEL} (real .deb over loopback): {elapsed:?}\n{stderr}");
    assert!(
        stderr.contains(&format!("pulling kernel {DEFAULT_KERNEL}: downloading"))
            && stderr.contains("(100%)")
            && stderr.contains("converting the Debian package"),
        "{stderr}"
    );
    assert!(
        stdout.contains("pulled kernel debian-12-cloud ("),
        "{stdout}"
    );

    // Registered as the catalog's, with the vmlinux's sha256 and the release.
    let [kernel] = kernels(&daemon).try_into().unwrap();
    let dir = daemon.layout().kernel_dir(DEFAULT_KERNEL);
    let manifest = read_manifest(&dir).unwrap();
    assert_eq!(kernel.sha256, manifest.vmlinux.sha256);
    assert_eq!(kernel.version, manifest.version);
    assert!(
        kernel.version.ends_with("-cloud-amd64"),
        "{}",
        kernel.version
    );
    let url = server.url(&format!("/file/{}", sha1_of(&entry.deb)));
    assert_eq!(kernel.source, format!("catalog:{DEFAULT_KERNEL} {url}"));
    let BundleSource::DebianPackage {
        url: recorded,
        sha256,
        ..
    } = &manifest.source;
    assert_eq!(recorded.as_deref(), Some(url.as_str()));
    assert_eq!(sha256, &banger_sha256(&entry.deb));
    assert_eq!(
        sha256_of(&std::fs::read(dir.join("vmlinux")).unwrap()),
        manifest.vmlinux.sha256
    );
    if entry.pinned {
        assert_eq!(manifest.version, "6.1.0-57-cloud-amd64");
    }
    // Only the kernel: no staging, download or aside directory.
    assert_eq!(dir_names(&daemon.layout().kernels_dir()), [DEFAULT_KERNEL]);
    assert_eq!(
        catalog_states(&daemon),
        [(DEFAULT_KERNEL.to_owned(), KernelCatalogState::Pulled)]
    );
    let shown = ok(&daemon, cli(&daemon, &["kernel", "show", DEFAULT_KERNEL]));
    assert!(shown.contains(&manifest.vmlinux.sha256), "{shown}");

    // What was pulled boots: the agent as PID 1 on a root disk that has no init.
    let root = scratch.path().join("root");
    kernel::install(
        &kernel::static_agent(),
        &root,
        banger::agent::boot::AGENT_PATH_IN_IMAGE,
        0o755,
    );
    let image = scratch.path().join("root.ext4");
    kernel::ext4_image(&root, &image);
    let args = banger::agent::boot::GuestBootArgs {
        hostname: Some("pulled".into()),
        ..Default::default()
    };
    let mut qemu = Qemu::boot(
        scratch.path(),
        &dir,
        &manifest,
        &Guest {
            kernel: KernelFile::Vmlinux,
            root_image: Some(&image),
            boot_args: &args,
            with_nic: false,
            work_disk: None,
        },
    );
    qemu.wait_for("banger-init: loaded modules");
    qemu.wait_for("banger-init: mounted the root disk /dev/vda");
    qemu.wait_for("running as init (PID 1)");
    qemu.wait_for("banger-agent: hostname pulled");
    qemu.wait_for("banger-agent ready on");
    let answer = qemu.qmp("system_powerdown");
    assert!(answer.contains("return"), "{answer}");
    assert!(qemu.wait_exit().success());
    drop(qemu);

    // `kernel import` takes the pulled bundle whole (its manifest first), and a bare bzImage
    // (`boot/vmlinuz-<release>`), whose ELF kernel it extracts: the same vmlinux.
    ok(
        &daemon,
        cli(
            &daemon,
            &[
                "kernel",
                "import",
                "bundle-copy",
                "--from",
                dir.to_str().unwrap(),
            ],
        ),
    );
    let copy = daemon.layout().kernel_dir("bundle-copy");
    assert_eq!(read_manifest(&copy).unwrap(), manifest);
    assert!(
        copy.join("lib/modules")
            .join(&manifest.version)
            .join("modules.dep")
            .is_file()
    );
    let bare = scratch.path().join("bare");
    std::fs::create_dir_all(bare.join("boot")).unwrap();
    std::fs::copy(
        dir.join("vmlinuz"),
        bare.join(format!("boot/vmlinuz-{}", manifest.version)),
    )
    .unwrap();
    ok(
        &daemon,
        cli(
            &daemon,
            &[
                "kernel",
                "import",
                "from-bzimage",
                "--from",
                bare.to_str().unwrap(),
            ],
        ),
    );
    let imported = kernels(&daemon);
    let by_name = |name: &str| imported.iter().find(|k| k.name == name).unwrap().clone();
    assert_eq!(by_name("bundle-copy").sha256, manifest.vmlinux.sha256);
    assert_eq!(by_name("from-bzimage").sha256, manifest.vmlinux.sha256);
    assert_eq!(by_name("from-bzimage").version, manifest.version);
    ok(&daemon, cli(&daemon, &["kernel", "rm", "bundle-copy"]));
    ok(&daemon, cli(&daemon, &["kernel", "rm", "from-bzimage"]));

    // Pulled already: refused, unless forced; forced, it is replaced (a new registration).
    let again = cli(&daemon, &["kernel", "pull", DEFAULT_KERNEL]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("is pulled already")
            && text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );
    let requests = server.requests(&format!("/file/{}", sha1_of(&entry.deb)));
    assert_eq!(requests, 1, "a refused pull downloads nothing");
    let started = Instant::now();
    ok(
        &daemon,
        cli(
            &daemon,
            &["kernel", "pull", DEFAULT_KERNEL, "--force", "--json"],
        ),
    );
    println!("kernel pull --force: {:?}", started.elapsed());
    let [forced] = kernels(&daemon).try_into().unwrap();
    assert!(forced.registered_seq > kernel.registered_seq);
    assert_eq!(forced.sha256, kernel.sha256);
    assert_eq!(
        dir_names(&daemon.layout().kernels_dir()),
        [DEFAULT_KERNEL],
        "the replaced kernel is gone"
    );
}

/// banger's sha256 of a file (hex).
fn banger_sha256(path: &Path) -> String {
    sha256_of(&std::fs::read(path).unwrap())
}

/// A tiny bundle directory (not bootable: the unpacking does not boot it).
pub(crate) fn tiny_bundle(dir: &Path) -> PathBuf {
    let bundle = dir.join("tiny-bundle");
    std::fs::create_dir_all(bundle.join("lib/modules/6.1.0-tiny/kernel")).unwrap();
    let file = |name: &str, bytes: &[u8]| {
        std::fs::write(bundle.join(name), bytes).unwrap();
        BundleFile {
            path: name.to_owned(),
            sha256: sha256_of(bytes),
            size: bytes.len() as u64,
        }
    };
    std::fs::write(
        bundle.join("lib/modules/6.1.0-tiny/kernel/virtio.ko"),
        b"module",
    )
    .unwrap();
    let manifest = BundleManifest {
        format: 1,
        version: "6.1.0-tiny".into(),
        arch: "x86_64".into(),
        source: BundleSource::DebianPackage {
            package: "linux-image-6.1.0-tiny".into(),
            version: "6.1.0-tiny-1".into(),
            sha256: "00".repeat(32),
            url: None,
        },
        vmlinux: file("vmlinux", b"\x7fELF tiny vmlinux"),
        bzimage: file("vmlinuz", b"tiny bzImage"),
        initrd: file("initrd.img", b"tiny initrd"),
        config: None,
        modules: vec!["virtio".into()],
        modules_missing: vec![],
        agent_sha256: "11".repeat(32),
        firecracker_min_version: "1.8.0".into(),
    };
    std::fs::write(
        bundle.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    bundle
}

/// A zstd tarball holding one hostile member.
fn hostile_tarball(member: &str, symlink_to: Option<&str>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    match symlink_to {
        Some(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder
                .append_link(&mut header, member, target)
                .expect("a symlink member");
        }
        None => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(1);
            // `append_data` refuses `..`; write the name into the header by hand.
            header.as_gnu_mut().unwrap().name[..member.len()].copy_from_slice(member.as_bytes());
            header.set_cksum();
            builder.append(&header, &b"x"[..]).expect("a member");
        }
    }
    let tar = builder.into_inner().unwrap();
    zstd::encode_all(tar.as_slice(), 1).unwrap()
}

pub(crate) fn bundle_entry(name: &str, url: &str, sha256: &str, size: usize) -> Value {
    json!({
        "name": name, "kind": "bundle", "version": "6.1.0-tiny", "arch": "x86_64",
        "tarball_url": url, "tarball_sha256": sha256, "size_bytes": size,
        "description": format!("test bundle {name}")
    })
}

/// A user catalog of hostile and broken entries, plus one good bundle, served by `server`.
fn hostile_catalog(
    server: &FileServer,
    dir: &Path,
) -> (PathBuf, Vec<(&'static str, &'static str)>) {
    let packed = pack_bundle(&tiny_bundle(dir), "tiny", &dir.join("dist")).unwrap();
    let good = std::fs::read(&packed.path).unwrap();
    server.serve("/tiny.tar.zst", Reply::bytes(good.clone()));
    let symlink = hostile_tarball("vmlinux", Some("/etc/passwd"));
    server.serve("/symlink.tar.zst", Reply::bytes(symlink.clone()));
    let climbing = hostile_tarball("../../escape", None);
    server.serve("/climbing.tar.zst", Reply::bytes(climbing.clone()));
    server.serve(
        "/truncated.tar.zst",
        Reply::Truncated {
            bytes: Arc::new(good.clone()),
            send: good.len() / 2,
        },
    );
    server.serve("/error.tar.zst", Reply::Status(500));
    let not_a_package = b"!<arch>\nthis is not a package".to_vec();
    server.serve("/not-a-package.deb", Reply::bytes(not_a_package.clone()));
    server.serve(
        "/cut.deb",
        Reply::Truncated {
            bytes: Arc::new(not_a_package.clone()),
            send: not_a_package.len() / 2,
        },
    );
    let package = |name: &str, url: &str, sha256: &str| {
        json!({
            "name": name, "kind": "debian_package",
            "package": "linux-image-6.1.0-0-cloud-amd64", "version": "6.1.0-0",
            "url": url, "sha256": sha256,
            "size_bytes": not_a_package.len(), "description": "a broken download"
        })
    };
    let kernels = vec![
        package(
            "deb-bad-sha",
            &server.url("/not-a-package.deb"),
            &"0".repeat(64),
        ),
        package(
            "deb-truncated",
            &server.url("/cut.deb"),
            &sha256_of(&not_a_package),
        ),
        bundle_entry(
            "tiny",
            &server.url("/tiny.tar.zst"),
            &packed.sha256,
            good.len(),
        ),
        bundle_entry(
            "bad-sha",
            &server.url("/tiny.tar.zst"),
            &"0".repeat(64),
            good.len(),
        ),
        bundle_entry(
            "truncated",
            &server.url("/truncated.tar.zst"),
            &packed.sha256,
            good.len(),
        ),
        bundle_entry(
            "server-error",
            &server.url("/error.tar.zst"),
            &packed.sha256,
            good.len(),
        ),
        bundle_entry(
            "missing",
            &server.url("/missing.tar.zst"),
            &packed.sha256,
            good.len(),
        ),
        bundle_entry(
            "symlink",
            &server.url("/symlink.tar.zst"),
            &sha256_of(&symlink),
            symlink.len(),
        ),
        bundle_entry(
            "climbing",
            &server.url("/climbing.tar.zst"),
            &sha256_of(&climbing),
            climbing.len(),
        ),
        json!({
            "name": "not-a-package", "kind": "debian_package",
            "package": "linux-image-6.1.0-0-cloud-amd64", "version": "6.1.0-0",
            "url": server.url("/not-a-package.deb"), "sha256": sha256_of(&not_a_package),
            "size_bytes": not_a_package.len(), "description": "garbage"
        }),
    ];
    let path = dir.join("catalog.json");
    std::fs::write(&path, json!({"format": 1, "kernels": kernels}).to_string()).unwrap();
    let refusals = vec![
        ("bad-sha", "sha256"),
        ("truncated", "bytes"),
        ("server-error", "answered 500"),
        ("missing", "answered 404"),
        ("symlink", "a symlink to /etc/passwd"),
        ("climbing", "climbs out"),
        ("not-a-package", "not a Debian package"),
        ("deb-bad-sha", "sha256"),
        ("deb-truncated", "bytes"),
    ];
    (path, refusals)
}

/// Every operation, as `banger ops --all --json` lists them.
fn operations(daemon: &Bangerd) -> Vec<banger::api::OperationView> {
    serde_json::from_str(&ok(daemon, cli(daemon, &["ops", "--all", "--json"]))).unwrap()
}

fn hostile_and_broken_downloads_leave_nothing_behind() {
    let server = FileServer::start();
    let root = TestRoot::without_network();
    let inputs = root.scratch("inputs");
    let (catalog, refusals) = hostile_catalog(&server, &inputs);
    let config = root.layout().config_path();
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!("[kernels]\ncatalog = \"{}\"\n", catalog.display()),
    )
    .unwrap();
    let daemon = Bangerd::start_on(root);
    let kernels_dir = daemon.layout().kernels_dir();
    for (name, expected) in &refusals {
        let output = cli(&daemon, &["kernel", "pull", name]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(expected) && stderr.contains("rolled back"),
            "{name}: expected {expected:?} in: {stderr}"
        );
        assert!(
            dir_names(&kernels_dir).is_empty(),
            "{name} left {:?}",
            dir_names(&kernels_dir)
        );
        assert!(kernels(&daemon).is_empty(), "{name} registered a kernel");
    }
    let pulls: Vec<OpStatus> = operations(&daemon)
        .iter()
        .filter(|op| op.kind.to_string() == "kernel.pull")
        .map(|op| op.status)
        .collect();
    assert_eq!(pulls, vec![OpStatus::RolledBack; refusals.len()]);

    // Not in the catalog at all: refused before any operation.
    let output = cli(&daemon, &["kernel", "pull", "no-such-kernel"]);
    assert!(
        text(&output.stderr).contains("has no kernel named no-such-kernel"),
        "{}",
        text(&output.stderr)
    );

    // A directory of that name that banger has no record of is not replaced, forced or not.
    let squatter = daemon.layout().kernel_dir("tiny");
    std::fs::create_dir_all(&squatter).unwrap();
    std::fs::write(squatter.join("mine"), b"a person's file").unwrap();
    for args in [
        &["kernel", "pull", "tiny"][..],
        &["kernel", "pull", "tiny", "--force"],
    ] {
        let output = cli(&daemon, args);
        assert!(
            text(&output.stderr).contains("no record of it"),
            "{}",
            text(&output.stderr)
        );
        assert_eq!(dir_names(&kernels_dir), ["tiny"]);
        assert_eq!(
            std::fs::read(squatter.join("mine")).unwrap(),
            b"a person's file"
        );
    }
    std::fs::remove_dir_all(&squatter).unwrap();

    // The good one: pulled, with its files and its marker only.
    ok(&daemon, cli(&daemon, &["kernel", "pull", "tiny"]));
    assert_eq!(dir_names(&kernels_dir), ["tiny"]);
    let states: Vec<(String, KernelCatalogState)> = catalog_states(&daemon)
        .into_iter()
        .filter(|(name, _)| name == "tiny" || name == DEFAULT_KERNEL)
        .collect();
    assert_eq!(
        states,
        [
            (DEFAULT_KERNEL.to_owned(), KernelCatalogState::Available),
            ("tiny".to_owned(), KernelCatalogState::Pulled),
        ]
    );
    let tiny = daemon.layout().kernel_dir("tiny");
    assert_eq!(
        std::fs::read(tiny.join("vmlinux")).unwrap(),
        b"\x7fELF tiny vmlinux"
    );
    // A kernel imported under a catalog name is "other".
    let source = inputs.join("imported");
    super::support::kernel_source(&source, "6.1.0-x", false);
    ok(
        &daemon,
        cli(
            &daemon,
            &[
                "kernel",
                "import",
                "symlink",
                "--from",
                source.to_str().unwrap(),
            ],
        ),
    );
    let table = ok(&daemon, cli(&daemon, &["kernel", "list", "--available"]));
    let line = table.lines().find(|l| l.starts_with("symlink ")).unwrap();
    assert!(line.contains("other"), "{table}");
    let line = table.lines().find(|l| l.starts_with("tiny ")).unwrap();
    assert!(
        line.contains("pulled") && line.contains("bundle"),
        "{table}"
    );
}

fn a_kill_9_in_the_middle_of_a_download_is_rolled_back() {
    let server = FileServer::start();
    let root = TestRoot::without_network();
    let inputs = root.scratch("inputs");
    // Big enough that a good part of it is on disk when the server stops: 4 MiB of
    // incompressible noise beside the tiny bundle's files.
    let gate = Gate::new();
    let padded = {
        let bundle = tiny_bundle(&inputs.join("padded"));
        let mut noise = vec![0u8; 4 << 20];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for byte in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        std::fs::write(bundle.join("noise"), noise).unwrap();
        pack_bundle(&bundle, "padded", &inputs.join("dist")).unwrap()
    };
    let bytes = std::fs::read(&padded.path).unwrap();
    server.serve(
        "/padded.tar.zst",
        Reply::Paused {
            bytes: Arc::new(bytes.clone()),
            pause_after: bytes.len() / 2,
            gate: gate.clone(),
        },
    );
    let catalog = inputs.join("catalog.json");
    std::fs::write(
        &catalog,
        json!({"format": 1, "kernels": [bundle_entry(
            "padded", &server.url("/padded.tar.zst"), &padded.sha256, bytes.len()
        )]})
        .to_string(),
    )
    .unwrap();
    let config = root.layout().config_path();
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!("[kernels]\ncatalog = \"{}\"\n", catalog.display()),
    )
    .unwrap();
    let mut daemon = Bangerd::start_on(root);
    let pull = Command::new(BANGER)
        .args(["kernel", "pull", "padded"])
        .env("BANGER_ROOT", daemon.root().path())
        .env("BANGER_NO_AUTOSTART", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        gate.wait_reached(Duration::from_secs(60)),
        "the download never reached half-way\n{}",
        daemon.output()
    );
    // Half of it is on disk, in the operation's staging directory.
    let kernels_dir = daemon.layout().kernels_dir();
    let deadline = Instant::now() + Duration::from_secs(30);
    let partial = loop {
        let staging: Vec<String> = dir_names(&kernels_dir)
            .into_iter()
            .filter(|n| n.starts_with(".staging-"))
            .collect();
        let partial = staging
            .first()
            .map(|s| kernels_dir.join(s).join("download.partial"));
        if let Some(partial) = partial
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() as usize >= bytes.len() / 4))
        {
            break partial;
        }
        assert!(Instant::now() < deadline, "no partial download appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "killing bangerd with {} of {} bytes in {}",
        std::fs::metadata(&partial).unwrap().len(),
        bytes.len(),
        partial.display()
    );
    daemon.kill();
    gate.open();
    let output = pull.wait_with_output().unwrap();
    assert!(!output.status.success(), "the CLI saw its bangerd die");

    daemon.restart();
    assert!(
        dir_names(&kernels_dir).is_empty(),
        "recovery left {:?}",
        dir_names(&kernels_dir)
    );
    let ops = operations(&daemon);
    let pull_op = ops
        .iter()
        .find(|op| op.kind.to_string() == "kernel.pull")
        .expect("the interrupted pull");
    assert_eq!(pull_op.status, OpStatus::RolledBack, "{pull_op:?}");
    assert!(kernels(&daemon).is_empty());

    // The next pull downloads it all again and succeeds.
    ok(&daemon, cli(&daemon, &["kernel", "pull", "padded"]));
    assert_eq!(dir_names(&kernels_dir), ["padded"]);
    assert_eq!(server.requests("/padded.tar.zst"), 2);
}

/// Two `vm.create`s at once whose image names no kernel, with a default kernel that is not
/// here: one pull, which both wait for; the first one's stream carries its progress. (The
/// creates then fail at their network step: this daemon has no helper, on purpose.)
async fn two_creates_that_need_the_same_kernel_pull_it_once() {
    let server = FileServer::start();
    let root = TestRoot::without_network();
    let inputs = root.scratch("inputs");
    let packed = pack_bundle(&tiny_bundle(&inputs), "tiny", &inputs.join("dist")).unwrap();
    let bytes = std::fs::read(&packed.path).unwrap();
    let gate = Gate::new();
    server.serve(
        "/tiny.tar.zst",
        Reply::Paused {
            bytes: Arc::new(bytes.clone()),
            pause_after: bytes.len() / 2,
            gate: gate.clone(),
        },
    );
    let catalog = inputs.join("catalog.json");
    std::fs::write(
        &catalog,
        json!({"format": 1, "kernels": [bundle_entry(
            "tiny", &server.url("/tiny.tar.zst"), &packed.sha256, bytes.len()
        )]})
        .to_string(),
    )
    .unwrap();
    let rootfs = super::support::rootfs_file(&inputs.join("rootfs.ext4"), 4 << 20);
    let root = write_config(
        root,
        &format!(
            "[kernels]\ndefault = \"tiny\"\ncatalog = \"{}\"\n",
            catalog.display()
        ),
    );
    // No helper may be reached or started: the creates must not touch this host's network.
    let no_helper = inputs.join("no-helper.sock");
    let daemon = Bangerd::start_on_with(
        root,
        &[
            ("BANGER_NO_AUTOSTART", "1"),
            ("BANGER_HELPER_SOCKET", no_helper.to_str().unwrap()),
        ],
    );
    let mut client = daemon.client().await;
    let _: Value = client
        .call(
            "image.register",
            &json!({"name": "img", "rootfs": rootfs.display().to_string()}),
        )
        .await
        .unwrap();
    let create = |name: &'static str| {
        let socket = daemon.socket();
        async move {
            let client = banger::rpc::Client::connect(&socket).await.unwrap();
            let mut stream = client
                .stream(
                    "vm.create",
                    &json!({"name": name, "image": "img", "progress": true}),
                )
                .await
                .unwrap();
            let mut items = Vec::new();
            let end = loop {
                match stream.next::<Value>().await {
                    Ok(banger::rpc::StreamEvent::Item(item)) => items.push(item),
                    Ok(banger::rpc::StreamEvent::End(result)) => break Ok(result),
                    Err(error) => break Err(error),
                }
            };
            (items, end)
        }
    };
    let first = tokio::spawn(create("one"));
    let waited = tokio::task::spawn_blocking({
        let gate = gate.clone();
        move || gate.wait_reached(Duration::from_secs(60))
    });
    assert!(waited.await.unwrap(), "the pull never started");
    let second = tokio::spawn(create("two"));
    // The second create finds the kernel's name claimed (its attempt is in bangerd's log)
    // and waits; then the download goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon
        .output()
        .matches("pulling kernel tiny on first use")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the second create never tried: {}",
            daemon.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.open();
    let (first_items, first_end) = first.await.unwrap();
    let (_, second_end) = second.await.unwrap();
    for end in [&first_end, &second_end] {
        let error = format!("{:?}", end.as_ref().unwrap_err());
        assert!(error.contains("network"), "{error}\n{}", daemon.output());
    }
    assert_eq!(server.requests("/tiny.tar.zst"), 1, "one download for both");
    let events: Vec<&str> = first_items
        .iter()
        .filter_map(|item| item["event"].as_str())
        .collect();
    assert!(
        events.contains(&"kernel_download") && events.last() == Some(&"kernel_convert"),
        "{first_items:?}"
    );
    let pulls: Vec<banger::api::OperationView> = client
        .call::<_, banger::api::OperationsListResult>(
            "daemon.operations.list",
            &json!({"all": true}),
        )
        .await
        .unwrap()
        .operations
        .into_iter()
        .filter(|op| op.kind.to_string() == "kernel.pull")
        .collect();
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls[0].status, OpStatus::Succeeded);
    let kernels: banger::api::KernelListResult =
        client.call("kernel.list", &json!({})).await.unwrap();
    assert_eq!(kernels.kernels.len(), 1);
    assert_eq!(kernels.kernels[0].name, "tiny");
}

/// `vm create` with an image that names no kernel and no kernel registered: the default
/// kernel is pulled (progress on the CLI), converted, and booted under QEMU.
fn vm_create_pulls_the_default_kernel_on_first_use() {
    let scratch = kernel::scratch();
    // The VM's tap is in the root's test network, and so is bangerd: the server listens there.
    let root = TestRoot::new();
    let network = root.network().expect("the root tier's test network");
    let server = FileServer::start_on(network.listen_tcp());
    let entry = serve_the_debian_entry(&server, scratch.path());
    let qemu = banger_test_harness::qemu().expect("qemu-system-x86_64");
    let root = write_config(
        root,
        &format!(
            "{}\n[timeouts]\nboot = \"180s\"\nstop = \"60s\"\n",
            entry.config
        ),
    );
    let env = [("BANGER_QEMU", qemu.to_str().unwrap())];
    let daemon = Bangerd::start_on_with(root, &env);

    // A root disk with the agent and nothing else: the agent is its init.
    let tree = scratch.path().join("tree");
    kernel::install(
        &kernel::static_agent(),
        &tree,
        banger::agent::boot::AGENT_PATH_IN_IMAGE,
        0o755,
    );
    kernel::install(kernel::busybox(), &tree, "/bin/busybox", 0o755);
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = scratch.path().join("rootfs.ext4");
    kernel::ext4_image(&tree, &image);
    ok(
        &daemon,
        cli(
            &daemon,
            &[
                "image",
                "register",
                "agent-only",
                "--rootfs",
                image.to_str().unwrap(),
            ],
        ),
    );
    assert!(kernels(&daemon).is_empty());

    let started = Instant::now();
    let created = cli(
        &daemon,
        &[
            "vm",
            "create",
            "first",
            "--image",
            "agent-only",
            "--vmm",
            "qemu",
            "--cpus",
            "1",
            "--memory",
            "256M",
            "--work-disk",
            "64M",
        ],
    );
    let stdout = ok(&daemon, created);
    println!(
        "vm create with the kernel pulled on first use: {:?}\n{stdout}",
        started.elapsed()
    );
    assert!(
        stdout.contains(&format!("pulling kernel {DEFAULT_KERNEL}: downloading"))
            && stdout.contains("converting the Debian package")
            && stdout.contains("first is running"),
        "{stdout}"
    );
    let [kernel] = kernels(&daemon).try_into().unwrap();
    assert_eq!(kernel.name, DEFAULT_KERNEL);
    let uname = ok(
        &daemon,
        cli(
            &daemon,
            &["vm", "exec", "first", "--", "/bin/busybox", "uname", "-r"],
        ),
    );
    assert_eq!(uname.trim(), kernel.version);
    let shown = ok(&daemon, cli(&daemon, &["vm", "show", "first", "--json"]));
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["vm"]["spec"]["kernel"], DEFAULT_KERNEL, "{shown}");

    // A force-pull is refused while the VM runs; once it is stopped, it replaces the kernel.
    let refused = cli(&daemon, &["kernel", "pull", DEFAULT_KERNEL, "--force"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("booted by VM(s) first"),
        "{}",
        text(&refused.stderr)
    );
    ok(&daemon, cli(&daemon, &["vm", "stop", "first"]));
    ok(
        &daemon,
        cli(&daemon, &["kernel", "pull", DEFAULT_KERNEL, "--force"]),
    );
    // `kernel rm` is refused while a VM (stopped or not) boots it.
    let refused = cli(&daemon, &["kernel", "rm", DEFAULT_KERNEL]);
    assert!(
        text(&refused.stderr).contains("is booted by VM(s) first"),
        "{}",
        text(&refused.stderr)
    );
    ok(&daemon, cli(&daemon, &["vm", "delete", "first"]));
    assert_eq!(dir_names(&daemon.layout().kernels_dir()), [DEFAULT_KERNEL]);
    ok(&daemon, cli(&daemon, &["kernel", "rm", DEFAULT_KERNEL]));
    assert!(dir_names(&daemon.layout().kernels_dir()).is_empty());
}
