//! fake-jailer: a stand-in for Firecracker's jailer where the real one is not installed (CI),
//! so that banger-helper's jailed launches run end to end with the fake firecracker.
//!
//! Modelled on jailer v1.16.1 as observed on this project's machines:
//! - Command line: `--version` (`Jailer v…`, then an empty line); `--id ID` (1–64 letters, digits, `-`), `--exec-file PATH` (a file whose
//!   name contains "firecracker"), `--uid`, `--gid`, `--chroot-base-dir DIR` (default
//!   `/srv/jailer`), then `--` and Firecracker's own arguments. `--cgroup`, `--cgroup-version`,
//!   `--parent-cgroup` and `--resource-limit` are accepted and ignored; `--netns`,
//!   `--daemonize` and `--new-pid-ns` are refused (not modelled). It must run as root.
//! - Layout: `DIR/EXEC/ID/` (root's, 0755), `DIR/EXEC/ID/root/` (the uid's, 0700) holding
//!   a copy of the exec file (the uid's, 0755), `EXEC.pid` (root's), `run/`, and `dev/kvm`,
//!   `dev/net/tun`, `dev/userfaultfd`, `dev/urandom` made with mknod, the uid's, 0600. A jail
//!   whose `dev/net/tun` exists already fails as the jailer does (exit 1, "Failed to create
//!   /dev/net/tun via mknod inside the jail: File exists").
//! - Exec: the process drops to uid/gid (supplementary groups cleared), its working
//!   directory is the chroot, and it execs the copy as `/EXEC --id ID --start-time-us …
//!   --start-time-cpu-us … --parent-cpu-time-us … ARGS`, keeping its pid, stdio and
//!   environment.
//!
//! Where it differs: it does not chroot or pivot_root (the fake firecracker and the agent it
//! starts are dynamically linked host programs), so the jailed process sees the host's
//! files; instead, in a mount namespace of its own, the jail's `dev/kvm` and `dev/net/tun`
//! are bind-mounted over the host's, so the process opens the uid-owned nodes the jail has
//! at the paths Firecracker opens, as it would in the real chroot. Paths given to the VMM
//! relative to its working directory (what banger uses) mean the same in both. No cgroup is
//! made.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};

struct Args {
    id: String,
    exec_file: PathBuf,
    uid: u32,
    gid: u32,
    base: PathBuf,
    extra: Vec<OsString>,
}

/// What `--version` prints: the fake firecracker's version, as the jailer of a release prints
/// its own.
const VERSION: &str = "Jailer v1.10.1-fake";

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "--version") {
        println!("{VERSION}\n");
        return ExitCode::SUCCESS;
    }
    let args = match parse(std::env::args_os().skip(1).collect()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("fake-jailer: {message}");
            return ExitCode::from(1);
        }
    };
    let error = run(args);
    eprintln!("{error}");
    ExitCode::from(1)
}

fn parse(mut argv: Vec<OsString>) -> Result<Args, String> {
    let extra = match argv.iter().position(|a| a == "--") {
        Some(at) => {
            let rest = argv.split_off(at + 1);
            argv.pop();
            rest
        }
        None => Vec::new(),
    };
    let (mut id, mut exec_file, mut uid, mut gid) = (None, None, None, None);
    let mut base = PathBuf::from("/srv/jailer");
    let mut words = argv.into_iter();
    while let Some(flag) = words.next() {
        let flag = flag.to_string_lossy().into_owned();
        let mut value = || words.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--id" => id = Some(value()?.to_string_lossy().into_owned()),
            "--exec-file" => exec_file = Some(PathBuf::from(value()?)),
            "--uid" => uid = Some(number(&value()?, "--uid")?),
            "--gid" => gid = Some(number(&value()?, "--gid")?),
            "--chroot-base-dir" => base = PathBuf::from(value()?),
            "--cgroup" | "--cgroup-version" | "--parent-cgroup" | "--resource-limit" => {
                value()?;
            }
            "--netns" | "--daemonize" | "--new-pid-ns" => {
                return Err(format!("{flag} is not modelled by the fake jailer"));
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let id = id.ok_or("--id is required")?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c == '-' || c.is_ascii_alphanumeric())
    {
        return Err(format!("invalid --id {id:?}"));
    }
    let exec_file = exec_file.ok_or("--exec-file is required")?;
    if !exec_file
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("firecracker"))
    {
        return Err(format!(
            "the exec file name of {} must contain \"firecracker\"",
            exec_file.display()
        ));
    }
    Ok(Args {
        id,
        exec_file,
        uid: uid.ok_or("--uid is required")?,
        gid: gid.ok_or("--gid is required")?,
        base,
        extra,
    })
}

fn number(value: &OsString, flag: &str) -> Result<u32, String> {
    value
        .to_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{flag} {value:?} is not a number"))
}

/// Sets the jail up and execs the VMM; returns only the error that stopped it.
fn run(args: Args) -> String {
    if !Uid::effective().is_root() {
        return "Error: the jailer must run as root".into();
    }
    let exec_name = args
        .exec_file
        .file_name()
        .expect("checked in parse")
        .to_owned();
    let jail = args.base.join(&exec_name).join(&args.id);
    let root = jail.join("root");
    if let Err(e) = fs::create_dir_all(&root) {
        return format!("Error: cannot create {}: {e}", root.display());
    }
    let (uid, gid) = (Uid::from_raw(args.uid), Gid::from_raw(args.gid));
    let own = |path: &Path, mode: u32| -> Result<(), String> {
        chown(path, Some(args.uid), Some(args.gid))
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
            .map_err(|e| format!("Error: cannot set up {}: {e}", path.display()))
    };
    let setup = || -> Result<PathBuf, String> {
        own(&root, 0o700)?;
        for dir in ["dev", "dev/net", "run"] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir)
                .map_err(|e| format!("Error: cannot create {}: {e}", dir.display()))?;
            own(&dir, 0o700)?;
        }
        for (node, major, minor) in [
            ("/dev/net/tun", 10, 200),
            ("/dev/kvm", 10, 232),
            ("/dev/userfaultfd", 10, 257),
            ("/dev/urandom", 1, 9),
        ] {
            let path = root.join(node.trim_start_matches('/'));
            mknod(
                &path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o600),
                makedev(major, minor),
            )
            .map_err(|e| {
                format!(
                    "Failed to create {node} via mknod inside the jail: {}",
                    std::io::Error::from(e)
                )
            })?;
            own(&path, 0o600)?;
        }
        let copy = root.join(&exec_name);
        fs::copy(&args.exec_file, &copy).map_err(|e| {
            format!(
                "Error: cannot copy {} into the jail: {e}",
                args.exec_file.display()
            )
        })?;
        own(&copy, 0o755)?;
        let pid_file = root.join(format!("{}.pid", exec_name.to_string_lossy()));
        fs::write(&pid_file, std::process::id().to_string())
            .map_err(|e| format!("Error: cannot write {}: {e}", pid_file.display()))?;
        // The chroot's stand-in: the jail's device nodes where the VMM opens them.
        unshare(CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("Error: cannot make a mount namespace: {e}"))?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("Error: cannot make the mounts private: {e}"))?;
        for node in ["/dev/net/tun", "/dev/kvm"] {
            if Path::new(node).exists() {
                mount(
                    Some(&root.join(node.trim_start_matches('/'))),
                    node,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| format!("Error: cannot bind the jail's {node}: {e}"))?;
            }
        }
        std::env::set_current_dir(&root)
            .map_err(|e| format!("Error: cannot enter {}: {e}", root.display()))?;
        setgroups(&[gid]).map_err(|e| format!("Error: setgroups: {e}"))?;
        setgid(gid).map_err(|e| format!("Error: setgid: {e}"))?;
        setuid(uid).map_err(|e| format!("Error: setuid: {e}"))?;
        Ok(copy)
    };
    let copy = match setup() {
        Ok(copy) => copy,
        Err(error) => return error,
    };
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let error = Command::new(&copy)
        .arg0(Path::new("/").join(&exec_name))
        .arg("--id")
        .arg(&args.id)
        .arg("--start-time-us")
        .arg(now_us.to_string())
        .arg("--start-time-cpu-us")
        .arg("0")
        .arg("--parent-cpu-time-us")
        .arg("0")
        .args(&args.extra)
        .exec();
    format!("Error: cannot exec {}: {error}", copy.display())
}
