//! The init of banger's kernel bundles' initrd: the agent binary, run by the kernel as `/init`
//! (PID 1 on the initramfs), brings up what the image needs from the kernel and hands the
//! machine over to the image.
//!
//! ```text
//!  mount /proc, /sys, devtmpfs on /dev   (the cloud kernel has no DEVTMPFS_MOUNT)
//!  load the modules of /banger/modules.load, in order (finit_module; already loaded is fine)
//!  wait for the root disk (banger.root= or root=, default /dev/vda), saying what it waits for
//!  mount it on /newroot (ext4 unless banger.rootfstype=, read-write unless `ro`)
//!  switch root: move /dev /proc /sys into it, empty the initramfs, move it onto /, chroot
//!  exec init= if given, else /sbin/init if the image has one, else the agent
//!       (/.banger/banger-agent), which then runs as PID 1 (crate::pid1)
//! ```
//!
//! The contract's paths and arguments are in [`crate::boot`]; `docs/ARCHITECTURE.md` tells the
//! whole boot.
//!
//! Invariants: every step says on the console what it does or what failed (`banger-init:`
//! lines); a failure that stops the boot says why and then halts the machine the way the
//! command line asks (`banger.halt=`, power off by default) rather than returning, which would
//! panic the kernel; nothing here uses tokio or threads, so the `exec` that ends it leaves
//! nothing behind.

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};
use nix::unistd::{AccessFlags, access, chdir, chroot, execv, sync};

use crate::boot::{
    AGENT_PATH_IN_IMAGE, GuestBootArgs, HaltAction, IMAGE_INIT, INITRD_MODULE_LIST, INITRD_NEW_ROOT,
};

/// What went wrong, as the console shows it.
#[derive(Debug)]
pub struct BootError(String);

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail(what: impl Into<String>) -> BootError {
    BootError(what.into())
}

/// Writes one `banger-init:` line on the console (the kernel gives init `/dev/console` as its
/// standard streams). Unbuffered, so a line is out before whatever comes next can hang.
pub(crate) fn say(prefix: &str, message: fmt::Arguments<'_>) {
    let mut stderr = io::stderr().lock();
    let _ = writeln!(stderr, "{prefix}: {message}");
}

macro_rules! say {
    ($($arg:tt)*) => { say("banger-init", format_args!($($arg)*)) };
}

/// Whether this process is the init of an initramfs: PID 1, started by the kernel as `/init`, on
/// a ramfs or tmpfs root. That is how the agent binary knows it is the initrd's `/init` rather
/// than the agent as init (a real root disk is never ramfs).
pub fn is_initramfs_init() -> bool {
    /// `RAMFS_MAGIC` of linux/magic.h (libc and nix name tmpfs's, not ramfs's).
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    // The kernel runs an initramfs's init as `/init`; the agent exec'd as PID 1 under another
    // name (by a test initrd's shell, say) is the agent as init, not the initrd's init.
    let started_as_init = std::env::args_os()
        .next()
        .is_some_and(|argv0| argv0 == "/init");
    std::process::id() == 1
        && started_as_init
        && nix::sys::statfs::statfs("/").is_ok_and(|fs| {
            let kind = fs.filesystem_type();
            kind == nix::sys::statfs::TMPFS_MAGIC || kind.0 as u32 == RAMFS_MAGIC
        })
}

/// The initrd's init. Never returns: it ends by executing the image's init or the agent, or by
/// halting the machine after saying why it could not.
pub fn main() -> ! {
    let started = Instant::now();
    say!(
        "banger-agent {} as the initrd's init",
        crate::server::AGENT_VERSION
    );
    let mut halt = HaltAction::default();
    let error = match boot(&mut halt, started) {
        Ok(never) => match never {},
        Err(error) => error,
    };
    say!("FATAL: {error}");
    halt_machine("banger-init", halt)
}

fn boot(halt: &mut HaltAction, started: Instant) -> Result<Infallible, BootError> {
    mount_if_absent(
        "proc",
        "/proc",
        "proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
    )?;
    mount_if_absent(
        "sysfs",
        "/sys",
        "sysfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
    )?;
    mount_if_absent("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID)?;
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| fail(format!("cannot read /proc/cmdline: {e}")))?;
    let args = GuestBootArgs::parse(&cmdline);
    *halt = args.halt;
    for problem in &args.problems {
        say!("{problem}");
    }

    load_modules(Path::new(INITRD_MODULE_LIST))?;

    let device = args.root_device();
    wait_for_device(device, args.root_wait())?;
    let fstype = args.root_fstype();
    let mut flags = MsFlags::empty();
    if args.root_read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    std::fs::create_dir_all(INITRD_NEW_ROOT)
        .map_err(|e| fail(format!("cannot make {INITRD_NEW_ROOT}: {e}")))?;
    mount(
        Some(device),
        INITRD_NEW_ROOT,
        Some(fstype),
        flags,
        None::<&str>,
    )
    .map_err(|e| {
        fail(format!(
            "cannot mount the root disk {device} ({fstype}, {}) on {INITRD_NEW_ROOT}: {e}",
            if args.root_read_only {
                "read-only"
            } else {
                "read-write"
            }
        ))
    })?;
    say!(
        "mounted the root disk {device} ({fstype}, {}) after {} ms",
        if args.root_read_only {
            "read-only"
        } else {
            "read-write"
        },
        started.elapsed().as_millis()
    );

    switch_root(Path::new(INITRD_NEW_ROOT))?;

    // Chosen after the switch, so that an init that is an absolute symlink (/sbin/init →
    // /lib/systemd/systemd) resolves inside the image.
    let (target, why) = match &args.init {
        Some(init) if is_executable(init) => (init.clone(), "init= on the command line"),
        Some(init) => {
            return Err(fail(format!(
                "init={init} is not an executable file in the image"
            )));
        }
        None if is_executable(IMAGE_INIT) => (IMAGE_INIT.to_owned(), "the image's own init"),
        None if is_executable(AGENT_PATH_IN_IMAGE) => (
            AGENT_PATH_IN_IMAGE.to_owned(),
            "the banger agent: the image has no init",
        ),
        None => {
            return Err(fail(format!(
                "the image has neither an init ({IMAGE_INIT}) nor the banger agent \
                 ({AGENT_PATH_IN_IMAGE}); was it made by banger?"
            )));
        }
    };
    say!("handing over to {target} ({why})");
    exec_init(&target)
}

/// Whether something is mounted on `path`: it lies on another device than its parent (the
/// test `mountpoint` makes; it needs no /proc, which may not be mounted yet). The root is
/// always a mount point.
pub(crate) fn is_mount_point(path: &Path) -> bool {
    let Some(parent) = path.parent() else {
        return true;
    };
    match (std::fs::symlink_metadata(path), std::fs::metadata(parent)) {
        (Ok(own), Ok(parent)) => own.is_dir() && own.dev() != parent.dev(),
        _ => false,
    }
}

/// Mounts a kernel filesystem unless something is mounted there already: a second mount of
/// proc or devtmpfs would not fail, it would stack a copy on the first.
fn mount_if_absent(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
) -> Result<(), BootError> {
    std::fs::create_dir_all(target).map_err(|e| fail(format!("cannot make {target}: {e}")))?;
    if is_mount_point(Path::new(target)) {
        return Ok(());
    }
    match mount(Some(source), target, Some(fstype), flags, None::<&str>) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(fail(format!("cannot mount {fstype} on {target}: {e}"))),
    }
}

/// Loads each module the list names, in its order (dependencies first, as the bundle builder
/// wrote it). A module that fails to load is reported and skipped: the disk wait that follows
/// says what is then missing, and a kernel that has the driver built in needs no module.
fn load_modules(list: &Path) -> Result<(), BootError> {
    let text = match std::fs::read_to_string(list) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            say!("no module list at {}: loading no modules", list.display());
            return Ok(());
        }
        Err(e) => return Err(fail(format!("cannot read {}: {e}", list.display()))),
    };
    let started = Instant::now();
    let mut loaded = Vec::new();
    for path in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = module_name(path);
        let result = File::open(path)
            .map_err(|e| io_errno(&e))
            .and_then(|file| finit_module(&file, c"", ModuleInitFlags::empty()));
        match result {
            Ok(()) => loaded.push(name),
            Err(Errno::EEXIST) => loaded.push(format!("{name} (already loaded)")),
            Err(e) => say!("cannot load module {path}: {e}"),
        }
    }
    say!(
        "loaded modules in {} ms: {}",
        started.elapsed().as_millis(),
        loaded.join(" ")
    );
    Ok(())
}

fn io_errno(e: &io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// `…/virtio-rng.ko` → `virtio_rng`, as the kernel names it.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".ko").unwrap_or(file).replace('-', "_")
}

/// Polls for the device node (devtmpfs makes it when the driver finds the disk), saying what
/// it waits for, and every five seconds that it still waits.
fn wait_for_device(device: &str, timeout: Duration) -> Result<(), BootError> {
    let started = Instant::now();
    let mut said = false;
    let mut next_reminder = Duration::from_secs(5);
    loop {
        if Path::new(device).exists() {
            if said {
                say!(
                    "{device} appeared after {} ms",
                    started.elapsed().as_millis()
                );
            }
            return Ok(());
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(fail(format!(
                "the root disk {device} did not appear within {} s; block devices the kernel \
                 has: {}; is the disk attached as virtio-blk and virtio_blk loaded?",
                timeout.as_secs(),
                block_devices()
            )));
        }
        if !said {
            say!(
                "waiting for the root disk {device} (up to {} s)",
                timeout.as_secs()
            );
            said = true;
        } else if waited >= next_reminder {
            say!("still waiting for {device} ({} s)", waited.as_secs());
            next_reminder += Duration::from_secs(5);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn block_devices() -> String {
    let names: Vec<String> = std::fs::read_dir("/sys/class/block")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// switch_root, as util-linux does it: the kernel filesystems move into the new root (made
/// there when the image lacks the directory), the initramfs is emptied (its memory is freed;
/// nothing can reach it after the chroot anyway), the new root is moved onto `/` and becomes
/// the root of this process.
fn switch_root(new_root: &Path) -> Result<(), BootError> {
    for dir in ["/dev", "/proc", "/sys"] {
        let target = new_root.join(dir.trim_start_matches('/'));
        if let Err(e) = std::fs::create_dir_all(&target) {
            say!(
                "cannot make {} in the image: {e}; unmounting {dir}",
                target.display()
            );
            let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
            continue;
        }
        mount(
            Some(dir),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| fail(format!("cannot move {dir} to {}: {e}", target.display())))?;
    }
    chdir(new_root).map_err(|e| fail(format!("cannot enter {}: {e}", new_root.display())))?;
    let root_dev = std::fs::symlink_metadata("/")
        .map_err(|e| fail(format!("cannot stat the initramfs: {e}")))?
        .dev();
    remove_initramfs(Path::new("/"), root_dev);
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| fail(format!("cannot move the root disk onto /: {e}")))?;
    chroot(".").map_err(|e| fail(format!("cannot chroot into the root disk: {e}")))?;
    chdir("/").map_err(|e| fail(format!("cannot enter / of the root disk: {e}")))?;
    Ok(())
}

/// Deletes the initramfs's files, never crossing into another filesystem (the new root and the
/// moved kernel filesystems are mounts, so their device differs). Best effort: what cannot be
/// removed only costs memory.
fn remove_initramfs(dir: &Path, root_dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != root_dev {
            continue;
        }
        if meta.is_dir() {
            remove_initramfs(&path, root_dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Whether `path` (symlinks followed) is a regular file this process may execute.
fn is_executable(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        && access(path, AccessFlags::X_OK).is_ok()
}

/// Executes the chosen init with the arguments the kernel gave this one (what the command
/// line had after `--`, or words the kernel did not know) and the same environment.
fn exec_init(target: &str) -> Result<Infallible, BootError> {
    let path = CString::new(target).map_err(|_| fail(format!("{target:?} holds a NUL byte")))?;
    let mut argv = vec![path.clone()];
    argv.extend(
        std::env::args_os()
            .skip(1)
            .filter_map(|arg: OsString| CString::new(arg.as_bytes()).ok()),
    );
    let _ = io::stderr().flush();
    match execv(&path, &argv) {
        Ok(never) => match never {},
        Err(e) => Err(fail(format!("cannot execute {target}: {e}"))),
    }
}

/// Ends the machine: sync, then power off or reboot as asked. If the kernel refuses (it
/// should not, for PID 1), waits forever rather than exiting, which would panic the kernel.
pub(crate) fn halt_machine(prefix: &str, action: HaltAction) -> ! {
    sync();
    let mode = match action {
        HaltAction::PowerOff => RebootMode::RB_POWER_OFF,
        HaltAction::Reboot => RebootMode::RB_AUTOBOOT,
    };
    say(
        prefix,
        format_args!(
            "{}",
            match action {
                HaltAction::PowerOff => "powering off",
                HaltAction::Reboot => "rebooting (the VMM ends the VM)",
            }
        ),
    );
    let error = match reboot(mode) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    say(prefix, format_args!("the kernel refused to halt: {error}"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_come_from_their_paths() {
        assert_eq!(
            module_name("/lib/modules/6.1.0/kernel/drivers/virtio/virtio_ring.ko"),
            "virtio_ring"
        );
        assert_eq!(
            module_name("/lib/modules/6.1.0/kernel/x/virtio-rng.ko"),
            "virtio_rng"
        );
        assert_eq!(module_name("evdev"), "evdev");
    }

    #[test]
    fn mount_points_are_told_from_plain_directories() {
        assert!(is_mount_point(Path::new("/")));
        assert!(is_mount_point(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(dir.path()));
        assert!(!is_mount_point(&dir.path().join("missing")));
    }

    #[test]
    fn this_test_is_not_an_initramfs_init() {
        assert!(!is_initramfs_init());
    }
}
