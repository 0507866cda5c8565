//! Kernel bundles booted for real: Debian's cloud kernel package (fetched once with
//! `apt-get download`, cached) converted by `banger::kernel::bundle_from_deb`, then booted
//! under QEMU's microvm machine in software emulation with tiny root images, checking on the
//! serial console that the boot contract (`banger_agent::boot`) holds: the initrd loads the
//! modules, finds and mounts the root disk, and hands over to the image's init or to the agent
//! as PID 1.
//!
//! Needs the qemu tier (`qemu-system-x86_64` on PATH) and, once, network access to Debian's
//! archive. Knobs: `BANGER_TEST_CACHE` (where the .deb is kept, default `target/test-cache`),
//! `BANGER_TEST_KERNEL_DEB` (use this .deb instead of downloading), `BANGER_TEST_STATIC_AGENT`
//! (use this static agent instead of the one banger embeds).
//!
//! Every QEMU is killed when its test ends, however it ends (`Qemu`'s `Drop`). Waits poll the
//! console file with generous deadlines: under TCG on a loaded 2-core machine the kernel
//! reaches init in 2–10 s.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use banger::agent::boot::{AGENT_PATH_IN_IMAGE, GuestBootArgs};
use banger::kernel::{BundleManifest, BundleSource, CatalogEntry, bundle_from_deb, unpack_bundle};
use banger_test_harness::Test;

pub(crate) fn tests() -> Vec<Test> {
    banger_test_harness::tests![
        sync an_image_without_init_boots_the_agent_as_pid_1 needs(Qemu),
        sync an_image_with_an_init_gets_it_from_a_bzimage_boot needs(Qemu),
        sync refused_boots_say_why_on_the_console_and_power_off needs(Qemu),
    ]
}

/// The Debian 12 cloud kernel the SPEC measured. When the mirror no longer has it (Debian
/// moved on to a newer ABI), the one `linux-image-cloud-amd64` depends on now is used.
const KERNEL_PACKAGE: &str = "linux-image-6.1.0-57-cloud-amd64";
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// How long any one console line may take to appear.
const CONSOLE_DEADLINE: Duration = Duration::from_secs(180);

/// The kernel arguments every boot here uses: the serial console, the timer arguments without
/// which TCG hangs calibrating the TSC, and no reboot loops.
const BASE_ARGS: &str = "console=ttyS0 tsc_early_khz=2000000 lpj=4000000 no_timer_check panic=-1";

fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `BANGER_TEST_CACHE`, else `target/test-cache`.
fn cache_dir() -> PathBuf {
    std::env::var_os("BANGER_TEST_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repository_root().join("target/test-cache"))
}

/// The kernel package: `BANGER_TEST_KERNEL_DEB`, else the cached download, else downloaded
/// now with `apt-get download` (into a temporary directory, then renamed into the cache, so
/// two tests downloading at once both end with a whole file).
pub(crate) fn kernel_deb() -> PathBuf {
    if let Some(deb) = std::env::var_os("BANGER_TEST_KERNEL_DEB").filter(|v| !v.is_empty()) {
        return PathBuf::from(deb);
    }
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).unwrap();
    // A cloud kernel package in `dir`: the pinned one if it is there, else any other.
    let cached = |dir: &Path| -> Option<PathBuf> {
        let mut packages: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with("linux-image-")
                        && n.contains("-cloud-amd64_")
                        && n.ends_with(".deb")
                })
            })
            .collect();
        packages.sort_by_key(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{KERNEL_PACKAGE}_")))
        });
        packages.into_iter().next()
    };
    if let Some(deb) = cached(&cache) {
        return deb;
    }
    let download = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&cache)
        .unwrap();
    let apt_download = |package: &str| {
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(download.path())
            .stdin(Stdio::null())
            .output()
            .expect("run apt-get download (the kernel package comes from Debian's archive)")
    };
    let mut output = apt_download(KERNEL_PACKAGE);
    if !output.status.success() {
        let current = current_cloud_kernel().unwrap_or_else(|| {
            panic!(
                "apt-get download {KERNEL_PACKAGE} failed, and {KERNEL_METAPACKAGE} names no \
                 kernel (set BANGER_TEST_KERNEL_DEB to a copy): {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        println!("{KERNEL_PACKAGE} is gone from the mirror; using {current}");
        output = apt_download(&current);
    }
    assert!(
        output.status.success(),
        "apt-get download failed (set BANGER_TEST_KERNEL_DEB to a copy): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let fetched = cached(download.path()).expect("apt-get download wrote the package");
    let deb = cache.join(fetched.file_name().unwrap());
    std::fs::rename(&fetched, &deb).unwrap();
    deb
}

/// The kernel package `linux-image-cloud-amd64` depends on now.
fn current_cloud_kernel() -> Option<String> {
    let output = Command::new("apt-cache")
        .args(["depends", KERNEL_METAPACKAGE])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let package = line.trim().strip_prefix("Depends: ")?;
            package
                .starts_with("linux-image-")
                .then(|| package.to_owned())
        })
}

/// A static agent: `BANGER_TEST_STATIC_AGENT`, else the one banger embeds, written out once
/// per process.
pub(crate) fn static_agent() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            if let Some(agent) =
                std::env::var_os("BANGER_TEST_STATIC_AGENT").filter(|v| !v.is_empty())
            {
                return PathBuf::from(agent);
            }
            // The one bangerd embeds (build.rs), as the product uses it.
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("banger-agent-static-{}", std::process::id()));
            banger::static_agent::write_to(&path).expect("write the embedded static agent");
            path
        })
        .clone()
}

/// A scratch directory under cargo's target tmp dir (large files: kept off a small /tmp).
pub(crate) fn scratch() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix("kernel-boot-")
        .tempdir_in(base)
        .unwrap()
}

/// Converts the real package into a bundle under `dir`, timing it.
fn bundle(dir: &Path) -> (PathBuf, BundleManifest) {
    let deb = kernel_deb();
    let agent = static_agent();
    let dest = dir.join("bundle");
    let started = Instant::now();
    let manifest = bundle_from_deb(&deb, None, &agent, &dest).expect("convert the package");
    println!(
        "converted {} in {} ms",
        deb.display(),
        started.elapsed().as_millis()
    );
    (dest, manifest)
}

/// An ext4 image made by `mkfs.ext4 -d` from `root`.
pub(crate) fn ext4_image(root: &Path, image: &Path) {
    std::fs::create_dir_all(root).unwrap();
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(root)
        .arg(image)
        .arg("64M")
        .output()
        .expect("run mkfs.ext4");
    assert!(
        output.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub(crate) fn install(source: &Path, root: &Path, path: &str, mode: u32) {
    let target = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(source, &target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A static busybox (busybox-static), for the images' scripts.
pub(crate) fn busybox() -> &'static Path {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("busybox (apt-get install busybox-static) for the test images' scripts")
}

/// An executable busybox shell script at `path` in the image.
pub(crate) fn script(root: &Path, path: &str, body: &str) {
    let target = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, format!("#!/bin/busybox sh\n{body}")).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Which file of the bundle QEMU boots.
#[derive(Clone, Copy)]
pub(crate) enum KernelFile {
    Vmlinux,
    BzImage,
}

/// What a test boots: which kernel file, the disks, the command line, a NIC or not.
pub(crate) struct Guest<'a> {
    pub(crate) kernel: KernelFile,
    /// None: no disk at all.
    pub(crate) root_image: Option<&'a Path>,
    pub(crate) boot_args: &'a GuestBootArgs,
    pub(crate) with_nic: bool,
    pub(crate) work_disk: Option<&'a Path>,
}

/// A QEMU microvm guest, killed when dropped.
pub(crate) struct Qemu {
    child: Child,
    console: PathBuf,
    qmp: PathBuf,
    started: Instant,
}

impl Qemu {
    pub(crate) fn boot(
        dir: &Path,
        bundle: &Path,
        manifest: &BundleManifest,
        guest: &Guest<'_>,
    ) -> Qemu {
        let Guest {
            kernel,
            root_image,
            boot_args,
            with_nic,
            work_disk,
        } = *guest;
        let console = dir.join("console.log");
        let qmp = dir.join("qmp.sock");
        let kernel = match kernel {
            KernelFile::Vmlinux => bundle.join(&manifest.vmlinux.path),
            KernelFile::BzImage => bundle.join(&manifest.bzimage.path),
        };
        let append = format!("{BASE_ARGS} {}", boot_args.to_kernel_args());
        let mut command = Command::new(banger_test_harness::QEMU);
        command
            .args(["-M", "microvm,acpi=on,pit=on,pic=on,rtc=on"])
            .args(["-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(bundle.join(&manifest.initrd.path))
            .args(["-append", &append]);
        if let Some(root_image) = root_image {
            command
                .arg("-drive")
                .arg(format!(
                    "id=root,file={},format=raw,if=none",
                    root_image.display()
                ))
                .args(["-device", "virtio-blk-device,drive=root"]);
        }
        if let Some(work_disk) = work_disk {
            command
                .arg("-drive")
                .arg(format!(
                    "id=work,file={},format=raw,if=none",
                    work_disk.display()
                ))
                .args(["-device", "virtio-blk-device,drive=work"]);
        }
        if with_nic {
            command
                .args(["-netdev", "user,id=net0,restrict=on"])
                .args(["-device", "virtio-net-device,netdev=net0"]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qemu-system-x86_64");
        Qemu {
            child,
            console,
            qmp,
            started: Instant::now(),
        }
    }

    pub(crate) fn console_text(&self) -> String {
        std::fs::read(&self.console)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the console holds `needle`; returns how long after launch that was.
    /// Fails (printing the console) if QEMU exits first or the deadline passes.
    pub(crate) fn wait_for(&mut self, needle: &str) -> Duration {
        let deadline = Instant::now() + CONSOLE_DEADLINE;
        loop {
            if self.console_text().contains(needle) {
                let at = self.started.elapsed();
                println!("{:>6} ms  {needle}", at.as_millis());
                return at;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // The console may have been written just before the exit.
                if self.console_text().contains(needle) {
                    return self.started.elapsed();
                }
                panic!(
                    "qemu exited ({status}) before the console said {needle:?}:\n{}",
                    self.console_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the console did not say {needle:?} within {} s:\n{}",
                CONSOLE_DEADLINE.as_secs(),
                self.console_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for QEMU to exit on its own (the guest powered off).
    pub(crate) fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + CONSOLE_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                println!(
                    "{:>6} ms  qemu exited ({status})",
                    self.started.elapsed().as_millis()
                );
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "qemu did not exit within {} s:\n{}",
                CONSOLE_DEADLINE.as_secs(),
                self.console_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends one QMP command (after the capabilities handshake) and returns its answer line.
    pub(crate) fn qmp(&self, command: &str) -> String {
        let stream = UnixStream::connect(&self.qmp).expect("connect to QMP");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut line = String::new();
        reader.read_line(&mut line).unwrap(); // the greeting
        writeln!(writer, r#"{{"execute":"qmp_capabilities"}}"#).unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains("return"), "{line}");
        writeln!(writer, r#"{{"execute":"{command}"}}"#).unwrap();
        // Skip events until the command's answer.
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.contains("return") || line.contains("error") || line.is_empty() {
                return line;
            }
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a file out of an ext4 image with debugfs.
fn debugfs_cat(image: &Path, path: &str) -> String {
    let output = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .expect("run debugfs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The catalog's way: `tools/kernel-bundle` packs the package into a tarball and writes its
/// catalog entry; `unpack_bundle` (what `kernel pull` of a bundle entry runs) unpacks it,
/// checking the sha256 the entry gives.
fn bundle_through_the_catalog(dir: &Path) -> (PathBuf, BundleManifest) {
    let tool = crate::support::workspace_binary("banger-tools", "kernel-bundle");
    let out = dir.join("dist");
    let started = Instant::now();
    let output = Command::new(&tool)
        .arg("--deb")
        .arg(kernel_deb())
        .arg("--agent")
        .arg(static_agent())
        .arg("--out")
        .arg(&out)
        .args(["--name", "debian-12-cloud", "--catalog-entry"])
        .output()
        .expect("run kernel-bundle");
    assert!(
        output.status.success(),
        "kernel-bundle failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "kernel-bundle made the tarball in {} ms",
        started.elapsed().as_millis()
    );
    let entry: CatalogEntry = serde_json::from_slice(&output.stdout).expect("a catalog entry");
    let written: CatalogEntry =
        serde_json::from_slice(&std::fs::read(out.join("debian-12-cloud.catalog.json")).unwrap())
            .unwrap();
    assert_eq!(entry, written);
    assert_eq!(entry.kind, "bundle");
    assert_eq!(entry.arch, "x86_64");
    let tarball = out.join(&entry.tarball_url);
    assert_eq!(
        entry.tarball_url,
        format!("debian-12-cloud-{}.tar.zst", &entry.tarball_sha256[..16])
    );
    assert_eq!(std::fs::metadata(&tarball).unwrap().len(), entry.size_bytes);
    // Only the tarball and the entry: the bundle directory was built aside and removed.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [entry.tarball_url.as_str(), "debian-12-cloud.catalog.json"]
    );

    let dest = dir.join("kernels/debian-12-cloud");
    let manifest = unpack_bundle(
        std::fs::File::open(&tarball).unwrap(),
        &entry.tarball_sha256,
        &dest,
    )
    .expect("unpack the tarball");
    assert_eq!(manifest.version, entry.version);
    (dest, manifest)
}

fn an_image_without_init_boots_the_agent_as_pid_1() {
    let dir = scratch();
    let (bundle, manifest) = bundle_through_the_catalog(dir.path());

    // What the real package gave: the modules in dependency order, a real vmlinux.
    let BundleSource::DebianPackage { package, .. } = &manifest.source;
    assert_eq!(package, &format!("linux-image-{}", manifest.version));
    assert!(
        manifest.version.ends_with("-cloud-amd64"),
        "{}",
        manifest.version
    );
    let position = |name: &str| {
        manifest
            .modules
            .iter()
            .position(|m| m == name)
            .unwrap_or_else(|| panic!("{name} is not in {:?}", manifest.modules))
    };
    for (before, after) in [
        ("virtio_ring", "virtio"),
        ("virtio", "virtio_mmio"),
        ("virtio_mmio", "virtio_blk"),
        ("net_failover", "virtio_net"),
        ("vsock", "vmw_vsock_virtio_transport_common"),
        (
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
        ),
    ] {
        assert!(
            position(before) < position(after),
            "{before} after {after}: {:?}",
            manifest.modules
        );
    }
    assert!(manifest.modules.contains(&"virtio_console".to_owned()));
    let vmlinux = std::fs::read(bundle.join("vmlinux")).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF");

    // The image: the agent at the contract's path, and no init. It has an "sshd" (a busybox
    // script), which PID 1 starts after making host keys, and stops at shutdown.
    let root = dir.path().join("root");
    install(&static_agent(), &root, AGENT_PATH_IN_IMAGE, 0o755);
    install(busybox(), &root, "/bin/busybox", 0o755);
    script(
        &root,
        "/usr/bin/ssh-keygen",
        "/bin/busybox echo \"fake-ssh-keygen: $*\"\n",
    );
    script(
        &root,
        "/usr/sbin/sshd",
        "/bin/busybox echo \"fake-sshd: $* as pid $$, PATH=$PATH\"\nexec /bin/busybox sleep 1000\n",
    );
    let image = dir.path().join("root.ext4");
    ext4_image(&root, &image);

    // An empty work disk, as vm create makes one.
    let work = dir.path().join("work.ext4");
    ext4_image(&dir.path().join("empty"), &work);

    let args = GuestBootArgs {
        work_device: Some("/dev/vdb".into()),
        hostname: Some("kernel-test".into()),
        ip: Some("172.30.0.2/24".parse().unwrap()),
        gateway: Some("172.30.0.1".parse().unwrap()),
        dns: vec!["172.30.0.1".parse().unwrap()],
        ..GuestBootArgs::default()
    };
    let mut qemu = Qemu::boot(
        dir.path(),
        &bundle,
        &manifest,
        &Guest {
            kernel: KernelFile::Vmlinux,
            root_image: Some(&image),
            boot_args: &args,
            with_nic: true,
            work_disk: Some(&work),
        },
    );
    qemu.wait_for("banger-init: banger-agent");
    // The line after it: the serial console may be caught in the middle of the modules' line.
    qemu.wait_for("banger-init: mounted the root disk /dev/vda (ext4, read-write)");
    let console = qemu.console_text();
    let loaded = console
        .lines()
        .find(|l| l.starts_with("banger-init: loaded modules"))
        .unwrap();
    for module in [
        "virtio_mmio",
        "virtio_blk",
        "virtio_net",
        "virtio_console",
        "vmw_vsock_virtio_transport",
    ] {
        assert!(loaded.split_whitespace().any(|w| w == module), "{loaded}");
    }
    qemu.wait_for(&format!(
        "banger-init: handing over to {AGENT_PATH_IN_IMAGE}"
    ));
    qemu.wait_for("running as init (PID 1)");
    qemu.wait_for("banger-agent: hostname kernel-test");
    qemu.wait_for("banger-agent: eth0 172.30.0.2/24 via 172.30.0.1");
    qemu.wait_for("banger-agent: work disk /dev/vdb on /work");
    qemu.wait_for("banger-agent ready on");
    qemu.wait_for("fake-ssh-keygen: -A");
    qemu.wait_for("fake-sshd: -D -e as pid");
    assert!(
        qemu.console_text().contains("PATH=/usr/local/sbin:"),
        "{}",
        qemu.console_text()
    );

    // QEMU's graceful stop: the ACPI power button, seen by PID 1, which shuts down cleanly.
    let answer = qemu.qmp("system_powerdown");
    assert!(answer.contains("return"), "{answer}");
    qemu.wait_for("banger-agent: shutting down (the power button)");
    qemu.wait_for("banger-agent: powering off");
    let status = qemu.wait_exit();
    assert!(status.success(), "{status}\n{}", qemu.console_text());
    assert!(
        !qemu.console_text().contains("still running"),
        "the agent did not stop on SIGTERM:\n{}",
        qemu.console_text()
    );

    // What PID 1 wrote is on the disk, and the disk was left clean.
    assert!(
        debugfs_cat(&image, "/etc/resolv.conf").contains("nameserver 172.30.0.1"),
        "{}",
        debugfs_cat(&image, "/etc/resolv.conf")
    );
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "the root disk is not clean after the shutdown: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

fn an_image_with_an_init_gets_it_from_a_bzimage_boot() {
    let dir = scratch();
    let (bundle, manifest) = bundle(dir.path());
    // A banger image always carries the agent; the image's own init wins over it.
    let root = dir.path().join("root");
    install(&static_agent(), &root, AGENT_PATH_IN_IMAGE, 0o755);
    install(busybox(), &root, "/bin/busybox", 0o755);
    script(
        &root,
        "/sbin/init",
        "/bin/busybox echo \"image-init: the image's own init runs as pid $$\"\n\
         /bin/busybox poweroff -f\n",
    );
    let image = dir.path().join("root.ext4");
    ext4_image(&root, &image);

    let mut qemu = Qemu::boot(
        dir.path(),
        &bundle,
        &manifest,
        &Guest {
            kernel: KernelFile::BzImage,
            root_image: Some(&image),
            boot_args: &GuestBootArgs::default(),
            with_nic: false,
            work_disk: None,
        },
    );
    qemu.wait_for("banger-init: loaded modules");
    qemu.wait_for("banger-init: mounted the root disk /dev/vda");
    qemu.wait_for("banger-init: handing over to /sbin/init (the image's own init)");
    qemu.wait_for("image-init: the image's own init runs as pid 1");
    let status = qemu.wait_exit();
    assert!(status.success(), "{status}");
    assert!(!qemu.console_text().contains("banger-agent: "));
}

fn refused_boots_say_why_on_the_console_and_power_off() {
    let dir = scratch();
    let (bundle, manifest) = bundle(dir.path());
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), "empty\n").unwrap();
    let image = dir.path().join("root.ext4");
    ext4_image(&root, &image);
    let mut qemu = Qemu::boot(
        dir.path(),
        &bundle,
        &manifest,
        &Guest {
            kernel: KernelFile::Vmlinux,
            root_image: Some(&image),
            boot_args: &GuestBootArgs::default(),
            with_nic: false,
            work_disk: None,
        },
    );
    qemu.wait_for(
        "banger-init: FATAL: the image has neither an init (/sbin/init) nor the banger agent",
    );
    qemu.wait_for("banger-init: powering off");
    let status = qemu.wait_exit();
    assert!(status.success(), "{status}");
    assert!(
        !qemu.console_text().contains("Kernel panic"),
        "{}",
        qemu.console_text()
    );
    drop(qemu);

    // No disk at all: the wait says what it waits for, then gives up.
    let no_disk = dir.path().join("no-disk");
    std::fs::create_dir(&no_disk).unwrap();
    let mut qemu = Qemu::boot(
        &no_disk,
        &bundle,
        &manifest,
        &Guest {
            kernel: KernelFile::Vmlinux,
            root_image: None,
            boot_args: &GuestBootArgs {
                root_wait: Some(Duration::from_secs(2)),
                ..GuestBootArgs::default()
            },
            with_nic: false,
            work_disk: None,
        },
    );
    qemu.wait_for("banger-init: waiting for the root disk /dev/vda (up to 2 s)");
    qemu.wait_for(
        "banger-init: FATAL: the root disk /dev/vda did not appear within 2 s; block devices \
         the kernel has: none",
    );
    qemu.wait_for("banger-init: powering off");
    let status = qemu.wait_exit();
    assert!(status.success(), "{status}");
}
