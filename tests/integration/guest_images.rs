//! Real Debian 12 root filesystems for the tests that boot real guests, built once with
//! `debootstrap` and kept as tarballs in the test cache (`BANGER_TEST_CACHE`, default
//! `target/test-cache`), so a CI run pays for them once and a developer's reruns not at all.
//!
//! - [`GuestRoot::Systemd`]: a Debian with systemd as its init, openssh-server and busybox
//!   (whose `httpd` gives the tests a small web server): an image with an init of its own,
//!   where the agent runs as a service.
//! - [`GuestRoot::Container`]: `debootstrap --variant=minbase`, no init at all, like Debian's
//!   official container image (`debian:bookworm`): the agent boots as its PID 1.
//!
//! Building needs root (debootstrap) and the Debian mirror (`BANGER_TEST_DEBIAN_MIRROR`,
//! default `http://deb.debian.org/debian`); two test processes building at once take turns
//! (a lock file). The tarballs keep numeric owners, modes and xattrs.

#![allow(dead_code)] // Each user takes its own subset.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bump when what goes into a root changes, so a stale cached tarball is not reused.
const ROOTS_VERSION: u32 = 2;

/// Which Debian root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestRoot {
    Systemd,
    Container,
}

impl GuestRoot {
    fn name(self) -> &'static str {
        match self {
            GuestRoot::Systemd => "systemd",
            GuestRoot::Container => "container",
        }
    }

    fn debootstrap_args(self) -> Vec<&'static str> {
        match self {
            GuestRoot::Systemd => vec![
                "--variant=minbase",
                "--include=systemd-sysv,udev,dbus,openssh-server,iproute2,procps,busybox",
            ],
            GuestRoot::Container => vec!["--variant=minbase"],
        }
    }
}

/// The test cache directory (shared with the kernel tests).
pub fn cache_dir() -> PathBuf {
    let dir = std::env::var_os("BANGER_TEST_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache"));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// The tarball of `root`, built now if the cache does not hold it yet.
pub fn root_tarball(root: GuestRoot) -> PathBuf {
    let cache = cache_dir();
    let tarball = cache.join(format!(
        "debian-bookworm-{}-v{ROOTS_VERSION}.tar",
        root.name()
    ));
    let _lock = CacheLock::take(&cache.join(".debootstrap.lock"));
    if tarball.exists() {
        return tarball;
    }
    let debootstrap = ["/usr/sbin/debootstrap", "/sbin/debootstrap"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!("debootstrap is missing: install it (`apt-get install debootstrap`)")
        });
    let mirror = std::env::var("BANGER_TEST_DEBIAN_MIRROR")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned());
    let work = tempfile::Builder::new()
        .prefix("debootstrap-")
        .tempdir_in(&cache)
        .expect("a directory for debootstrap");
    let target = work.path().join("root");
    let packages = cache.join("debootstrap-packages");
    fs::create_dir_all(&packages).unwrap();
    let output = Command::new(&debootstrap)
        .args(root.debootstrap_args())
        .arg(format!("--cache-dir={}", packages.display()))
        .args(["bookworm"])
        .arg(&target)
        .arg(&mirror)
        .stdin(Stdio::null())
        .output()
        .expect("run debootstrap");
    assert!(
        output.status.success(),
        "debootstrap of the {} root failed ({}):\n{}\n{}",
        root.name(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // debootstrap leaves its package lists and apt's cache behind: not part of an image.
    for leftover in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let dir = target.join(leftover);
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }
    let partial = tarball.with_extension("tar.partial");
    let output = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
        .arg(&target)
        .arg("-cf")
        .arg(&partial)
        .arg(".")
        .output()
        .expect("run tar");
    assert!(
        output.status.success(),
        "tar of the {} root failed: {}",
        root.name(),
        String::from_utf8_lossy(&output.stderr)
    );
    fs::rename(&partial, &tarball).unwrap();
    tarball
}

/// An exclusive lock on a file, released when dropped.
pub(crate) struct CacheLock(fs::File);

impl CacheLock {
    pub(crate) fn take(path: &Path) -> CacheLock {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: flock on a descriptor this struct owns; released when it is closed.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(locked, 0, "lock {}", path.display());
        CacheLock(file)
    }
}
