//! Where banger keeps things. This module owns the whole on-disk layout; nothing else joins
//! path segments onto a banger directory.
//!
//! | what          | user mode                              | system install      |
//! |---------------|----------------------------------------|---------------------|
//! | state (log)   | `$XDG_STATE_HOME/banger` (~/.local/state/banger) | `/var/lib/banger`   |
//! | cache         | `$XDG_CACHE_HOME/banger` (~/.cache/banger)       | `/var/cache/banger` |
//! | runtime       | `$XDG_RUNTIME_DIR/banger` (else `/tmp/banger-$UID`) | `/run/banger`    |
//! | config        | `$XDG_CONFIG_HOME/banger` (~/.config/banger)     | `/etc/banger`       |
//!
//! `BANGER_ROOT=DIR` puts all four under one directory (`DIR/state`, `DIR/cache`, `DIR/run`,
//! `DIR/config`): tests and throwaway setups use it.

use std::path::{Path, PathBuf};

use banger_events::{OpId, VmId};

/// Which flavour of layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    User,
    System,
    /// Everything under `BANGER_ROOT`.
    Rooted,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Layout {
    pub mode: Mode,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub config_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("cannot tell where your home directory is: set HOME (or BANGER_ROOT)")]
    NoHome,
}

impl Layout {
    /// The layout for this process: `BANGER_ROOT` when set, else the user (XDG) layout.
    pub fn from_env() -> Result<Layout, PathsError> {
        if let Some(root) = env_path("BANGER_ROOT") {
            return Ok(Layout::rooted(&root));
        }
        Layout::user()
    }

    pub fn rooted(root: &Path) -> Layout {
        Layout {
            mode: Mode::Rooted,
            state_dir: root.join("state"),
            cache_dir: root.join("cache"),
            runtime_dir: root.join("run"),
            config_dir: root.join("config"),
        }
    }

    pub fn user() -> Result<Layout, PathsError> {
        Layout::user_with(&env_path)
    }

    /// The user layout bangerd computes in a service environment that sets only `HOME` and
    /// `XDG_RUNTIME_DIR` (systemd gives a service no other XDG variable): what `banger system
    /// install` gives bangerd, through the same code as [`Layout::user`].
    pub fn service(home: &Path, xdg_runtime_dir: &Path) -> Layout {
        let lookup = |var: &str| match var {
            "HOME" => Some(home.to_path_buf()),
            "XDG_RUNTIME_DIR" => Some(xdg_runtime_dir.to_path_buf()),
            _ => None,
        };
        Layout::user_with(&lookup).unwrap_or_else(|_| Layout::rooted(home))
    }

    fn user_with(env_path: &dyn Fn(&str) -> Option<PathBuf>) -> Result<Layout, PathsError> {
        let home = env_path("HOME").ok_or(PathsError::NoHome)?;
        let xdg = |var: &str, fallback: &str| {
            env_path(var)
                .unwrap_or_else(|| home.join(fallback))
                .join("banger")
        };
        let runtime_dir = match env_path("XDG_RUNTIME_DIR") {
            Some(dir) => dir.join("banger"),
            None => PathBuf::from(format!("/tmp/banger-{}", nix::unistd::getuid())),
        };
        Ok(Layout {
            mode: Mode::User,
            state_dir: xdg("XDG_STATE_HOME", ".local/state"),
            cache_dir: xdg("XDG_CACHE_HOME", ".cache"),
            runtime_dir,
            config_dir: xdg("XDG_CONFIG_HOME", ".config"),
        })
    }

    pub fn system() -> Layout {
        Layout {
            mode: Mode::System,
            state_dir: PathBuf::from("/var/lib/banger"),
            cache_dir: PathBuf::from("/var/cache/banger"),
            runtime_dir: PathBuf::from("/run/banger"),
            config_dir: PathBuf::from("/etc/banger"),
        }
    }

    /// The redb event log.
    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("events.redb")
    }

    /// bangerd's RPC socket (mode 0600 inside a 0700 directory).
    pub fn socket_path(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.sock")
    }

    /// Held with an exclusive lock by the one bangerd of this state directory; holds its pid.
    pub fn daemon_lock_path(&self) -> PathBuf {
        self.state_dir.join("bangerd.pid")
    }

    /// bangerd's own log output when the CLI starts it in the background.
    pub fn daemon_output_path(&self) -> PathBuf {
        self.state_dir.join("bangerd.out")
    }

    /// The dashboard's secret token (mode 0600): whoever can read it can sign in to the
    /// dashboard. Kept in the state directory so that it outlives a restart of bangerd, and
    /// so does a browser's session with it.
    pub fn dashboard_token_path(&self) -> PathBuf {
        self.state_dir.join("dashboard.token")
    }

    /// Where the running bangerd says whether and where it serves the dashboard (JSON), for
    /// `banger dashboard` to read.
    pub fn dashboard_status_path(&self) -> PathBuf {
        self.runtime_dir.join("dashboard.json")
    }

    pub fn config_path(&self) -> PathBuf {
        self.config_dir.join("config.toml")
    }

    /// banger's ssh files: its key pair, its known_hosts, its ssh client config (see
    /// `crate::host::ssh`).
    pub fn ssh_dir(&self) -> PathBuf {
        self.config_dir.join("ssh")
    }

    pub fn kernels_dir(&self) -> PathBuf {
        self.state_dir.join("kernels")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.state_dir.join("vms")
    }

    pub fn oci_cache_dir(&self) -> PathBuf {
        self.cache_dir.join("oci")
    }

    /// Where kernel `name` is published. `name` must already be validated (no `/`, no
    /// leading dot): see `operations::names`.
    pub fn kernel_dir(&self, name: &str) -> PathBuf {
        self.kernels_dir().join(name)
    }

    /// Where operation `op_id` assembles a kernel before publishing it with one rename. The
    /// leading dot keeps it out of every name a kernel can have.
    pub fn kernel_staging_dir(&self, op_id: OpId) -> PathBuf {
        self.kernels_dir().join(format!(".staging-{op_id}"))
    }

    /// Where operation `op_id` moves a kernel aside before deleting it.
    pub fn kernel_removal_dir(&self, op_id: OpId) -> PathBuf {
        self.kernels_dir().join(format!(".removing-{op_id}"))
    }

    /// Where image `name` is published (it holds `rootfs.ext4`).
    pub fn image_dir(&self, name: &str) -> PathBuf {
        self.images_dir().join(name)
    }

    pub fn image_staging_dir(&self, op_id: OpId) -> PathBuf {
        self.images_dir().join(format!(".staging-{op_id}"))
    }

    pub fn image_removal_dir(&self, op_id: OpId) -> PathBuf {
        self.images_dir().join(format!(".removing-{op_id}"))
    }

    /// Everything one VM owns on disk: its disks, its VMM's sockets and its console. Named by
    /// the VM id (16 hex digits), never by its name, so a retry or an undo after a crash finds
    /// the directory of exactly that VM, and socket paths stay short.
    pub fn vm_dir(&self, vm_id: VmId) -> PathBuf {
        self.vms_dir().join(vm_id.to_string())
    }

    /// The VM's root disk: a copy-on-write clone (or sparse copy) of its image's rootfs.
    pub fn vm_root_disk(&self, vm_id: VmId) -> PathBuf {
        self.vm_dir(vm_id).join("root.ext4")
    }

    /// The VM's work disk (ext4, label `work`).
    pub fn vm_work_disk(&self, vm_id: VmId) -> PathBuf {
        self.vm_dir(vm_id).join("work.ext4")
    }

    /// The VMM's API socket.
    pub fn vm_api_socket(&self, vm_id: VmId) -> PathBuf {
        self.vm_dir(vm_id).join("api.sock")
    }

    /// The host side of the guest's vsock (Firecracker's `CONNECT <port>` socket).
    pub fn vm_vsock_socket(&self, vm_id: VmId) -> PathBuf {
        self.vm_dir(vm_id).join("vsock.sock")
    }

    /// The host side of the guest agent's virtio-serial port (QEMU's chardev socket).
    pub fn vm_agent_socket(&self, vm_id: VmId) -> PathBuf {
        self.vm_dir(vm_id).join("agent.sock")
    }

    /// The guest's serial console, appended to across restarts.
    pub fn vm_console_log(&self, vm_id: VmId) -> PathBuf {
        self.vm_dir(vm_id).join("console.log")
    }

    /// The VMM's own log, kept apart from the serial console: `firecracker.log`, `qemu.log`
    /// (named by the backend, [`crate::host::vmm::Vmm::name`]).
    pub fn vm_vmm_log(&self, vm_id: VmId, vmm: &str) -> PathBuf {
        self.vm_dir(vm_id).join(format!("{vmm}.log"))
    }
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooted_layout_keeps_everything_under_the_root() {
        let layout = Layout::rooted(Path::new("/tmp/x"));
        for dir in [
            &layout.state_dir,
            &layout.cache_dir,
            &layout.runtime_dir,
            &layout.config_dir,
        ] {
            assert!(dir.starts_with("/tmp/x"));
        }
        assert_eq!(layout.log_path(), Path::new("/tmp/x/state/events.redb"));
        assert_eq!(layout.socket_path(), Path::new("/tmp/x/run/bangerd.sock"));
    }

    #[test]
    fn a_service_layout_is_the_user_layout_of_its_home() {
        let layout = Layout::service(Path::new("/home/al"), Path::new("/run/bangerd"));
        assert_eq!(layout.mode, Mode::User);
        assert_eq!(layout.state_dir, Path::new("/home/al/.local/state/banger"));
        assert_eq!(layout.cache_dir, Path::new("/home/al/.cache/banger"));
        assert_eq!(layout.config_dir, Path::new("/home/al/.config/banger"));
        assert_eq!(
            layout.socket_path(),
            Path::new("/run/bangerd/banger/bangerd.sock")
        );
    }

    #[test]
    fn system_layout_uses_fhs_directories() {
        let layout = Layout::system();
        assert_eq!(layout.log_path(), Path::new("/var/lib/banger/events.redb"));
        assert_eq!(layout.socket_path(), Path::new("/run/banger/bangerd.sock"));
    }
}
