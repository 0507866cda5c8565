//! A real banger-helper in a network namespace of its own: what tests and benchmarks run so
//! that the bridge, taps and nftables rules they make never touch the host's network.
//!
//! The helper process is started in a fresh namespace (`unshare(CLONE_NEWNET)` between fork
//! and exec), so the namespace lives exactly as long as the helper and whatever joined it:
//! there is no named namespace to leak. A process that must see the same network (a bangerd,
//! and through it its VMMs) joins it with [`Sandbox::join`]; inspection goes through
//! `nsenter`, never through `/sys/class/net` (sysfs shows the namespace it was mounted in).
//!
//! Needs root (CAP_SYS_ADMIN for the namespace, CAP_NET_ADMIN inside it).

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

use crate::validate;

/// How long a freshly started helper may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running banger-helper in its own network namespace. Dropping it kills the helper; the
/// namespace goes when the last process in it does.
pub struct Sandbox {
    child: Child,
    socket: PathBuf,
}

impl Sandbox {
    /// Starts `binary` listening on `dir/helper.sock`, allowing this process's uid, with its
    /// stderr going to `stderr`, and waits until it answers.
    pub fn start(binary: &Path, dir: &Path, stderr: Stdio) -> io::Result<Sandbox> {
        Sandbox::start_with_args(binary, dir, stderr, &[])
    }

    /// As [`Sandbox::start`], with `args` added to the helper's command line (its `--network`
    /// configuration, say).
    pub fn start_with_args(
        binary: &Path,
        dir: &Path,
        stderr: Stdio,
        args: &[&str],
    ) -> io::Result<Sandbox> {
        Sandbox::start_with_args_and_env(binary, dir, stderr, args, &[])
    }

    /// As [`Sandbox::start_with_args`], with `env` added to the helper's environment (which
    /// the VMMs it launches inherit: the fake firecracker's knobs, say).
    pub fn start_with_args_and_env(
        binary: &Path,
        dir: &Path,
        stderr: Stdio,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> io::Result<Sandbox> {
        let socket = dir.join("helper.sock");
        let mut command = Command::new(binary);
        command
            .envs(env.iter().copied())
            .arg("--socket")
            .arg(&socket)
            .arg("--allow-uid")
            .arg(nix::unistd::geteuid().to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SAFETY: unshare is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
        let child = command.spawn()?;
        let mut sandbox = Sandbox { child, socket };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&sandbox.socket).is_err() {
            if let Some(status) = sandbox.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "banger-helper exited ({status}) before listening on {}",
                    sandbox.socket.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "banger-helper did not listen on {} within {START_TIMEOUT:?}",
                        sandbox.socket.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(sandbox)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The helper's pid (`nsenter -t PID -n` enters the namespace).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The namespace's descriptor: `setns(fd, CLONE_NEWNET)` on a thread moves that thread
    /// (and the children it forks) into it.
    pub fn namespace(&self) -> io::Result<OwnedFd> {
        let path = format!("/proc/{}/ns/net", self.pid());
        Ok(OwnedFd::from(std::fs::File::open(path)?))
    }

    /// Makes `command` run in the namespace and talk to this helper (`BANGER_HELPER_SOCKET`).
    pub fn join(&self, command: &mut Command) -> io::Result<()> {
        let namespace = self.namespace()?;
        command.env("BANGER_HELPER_SOCKET", &self.socket);
        // SAFETY: setns is async-signal-safe; the descriptor lives in the closure.
        unsafe {
            command.pre_exec(move || {
                nix::sched::setns(&namespace, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
        Ok(())
    }

    /// Runs `program args` inside the namespace; an error when it cannot run or fails.
    pub fn run(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        let output = Command::new("nsenter")
            .arg("-t")
            .arg(self.pid().to_string())
            .arg("-n")
            .arg(program)
            .args(args)
            .output()?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "{program} {args:?} in the sandbox failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(output)
    }

    /// Names of the network interfaces in the namespace.
    pub fn interfaces(&self) -> io::Result<Vec<String>> {
        let output = self.run("ip", &["-j", "link", "show"])?;
        let links: serde_json::Value =
            serde_json::from_slice(&output.stdout).map_err(io::Error::other)?;
        Ok(links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|link| link["ifname"].as_str().map(str::to_owned))
            .collect())
    }

    /// Names of the banger taps (`bt…`) in the namespace, sorted.
    pub fn taps(&self) -> io::Result<Vec<String>> {
        let mut taps: Vec<String> = self
            .interfaces()?
            .into_iter()
            .filter(|name| validate::is_tap_name(name))
            .collect();
        taps.sort();
        Ok(taps)
    }
}

/// Builds binaries of workspace packages (`cargo build -p PACKAGE BIN_ARGS…`) into the
/// target directory of the running test binary, in its profile, and returns that profile's
/// directory (where they land). For tests that drive binaries of other packages, which cargo
/// does not build for them; a stale binary would test old code, and the build is a no-op
/// when everything is fresh. `manifest_dir` is where cargo runs (the caller's
/// `CARGO_MANIFEST_DIR`, inside the workspace).
pub fn build_workspace_binaries(manifest_dir: &Path, builds: &[&[&str]]) -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| io::Error::other("the test binary does not live in target/<profile>/deps"))?
        .to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| io::Error::other("no target directory above the profile's"))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    for args in builds {
        let mut command = Command::new(&cargo);
        command
            .current_dir(manifest_dir)
            .args(["build", "--quiet"])
            .args(*args)
            .arg("--target-dir")
            .arg(target_dir);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                command.arg("--release");
            }
            other => {
                command.args(["--profile", other]);
            }
        }
        let status = command.status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "cargo build {args:?} failed ({status})"
            )));
        }
    }
    Ok(profile_dir)
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
