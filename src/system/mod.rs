//! banger as systemd services: what `banger system install` writes (two units and its
//! metadata), how the units on disk compare with what it would write now, and the few
//! `systemctl` calls it makes. The CLI verbs are `cli/system.rs`; `banger doctor` reads the
//! same metadata and drift.
//!
//! ```text
//!  sudo banger system install [--owner USER]
//!    ├─ bangerd.service        bangerd as USER, HOME=~USER, XDG_RUNTIME_DIR=/run/bangerd
//!    │                         (its socket: /run/bangerd/banger/bangerd.sock)
//!    ├─ banger-helper.service  banger-helper as root: --socket /run/banger/helper.sock
//!    │                         --allow-uid <USER's uid>
//!    └─ /etc/banger/install.json   who, which programs and versions, which unit files with
//!                                  their sha256, what install made: read by the CLI (to find
//!                                  the service's socket), status, doctor and uninstall
//! ```
//!
//! Invariants:
//! - A unit's text is a pure function of [`UnitInputs`] (`units`), and the inputs are kept in
//!   the metadata: "what install would write now" is always computable, so drift (a unit
//!   edited by hand, or written by an older banger) is a comparison of two strings.
//! - Install writes each file whole (a temporary file renamed over it) and records exactly
//!   what it wrote and which directories it made; uninstall removes exactly those.
//! - `BANGER_SYSTEM_ROOT=DIR` prefixes every system path install touches (`DIR/etc/banger`,
//!   `DIR/etc/systemd/system`) and keeps `systemctl` out of it: how tests install without
//!   touching the host.

pub mod units;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::paths::Layout;

pub const BANGERD_UNIT: &str = "bangerd.service";
pub const HELPER_UNIT: &str = "banger-helper.service";

/// Prefixes the system paths install uses (tests).
pub const SYSTEM_ROOT_ENV: &str = "BANGER_SYSTEM_ROOT";

/// The metadata file's format; a file of another format is refused, not guessed at.
pub const METADATA_FORMAT: u32 = 1;

/// Where systemd keeps its runtime state when it is the init system (sd_booted(3)).
const SYSTEMD_RUNNING_MARKER: &str = "/run/systemd/system";

/// The host's system paths, or a prefix of them (`BANGER_SYSTEM_ROOT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemRoot(PathBuf);

impl SystemRoot {
    pub fn from_env() -> SystemRoot {
        match std::env::var_os(SYSTEM_ROOT_ENV).filter(|v| !v.is_empty()) {
            Some(root) => SystemRoot(PathBuf::from(root)),
            None => SystemRoot(PathBuf::from("/")),
        }
    }

    pub fn at(root: &Path) -> SystemRoot {
        SystemRoot(root.to_path_buf())
    }

    /// The host itself (no prefix): the only root systemd reads.
    pub fn is_host(&self) -> bool {
        self.0 == Path::new("/")
    }

    fn join(&self, absolute: &str) -> PathBuf {
        self.0.join(absolute.trim_start_matches('/'))
    }

    /// Where the host path `absolute` is under this root.
    pub fn path_of(&self, absolute: &Path) -> PathBuf {
        self.0.join(absolute.strip_prefix("/").unwrap_or(absolute))
    }

    /// `/etc/banger`.
    pub fn etc_dir(&self) -> PathBuf {
        self.join("/etc/banger")
    }

    /// `/etc/banger/install.json`.
    pub fn metadata_path(&self) -> PathBuf {
        self.etc_dir().join("install.json")
    }

    /// `/etc/systemd/system`: where administrators' units go.
    pub fn default_unit_dir(&self) -> PathBuf {
        self.join("/etc/systemd/system")
    }
}

/// Everything a unit's text depends on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitInputs {
    /// The user bangerd runs as.
    pub owner: String,
    pub uid: u32,
    pub gid: u32,
    /// The owner's primary group's name.
    pub group: String,
    /// The owner's home (from the password database).
    pub home: PathBuf,
    /// Absolute paths of the installed programs.
    pub bangerd: PathBuf,
    pub helper: PathBuf,
    /// banger-helper's socket (`network.helper_socket`'s default).
    pub helper_socket: PathBuf,
    /// The owner's network as banger-helper's `--network` gives it (`BRIDGE:GATEWAY/PREFIX`),
    /// when not the default one (`banger0:172.30.0.1/24`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Firecracker launched by banger-helper through the jailer (`--jailer`), when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailInputs>,
}

/// What banger-helper's `--jailer`, `--firecracker` and `--jail-dir` say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailInputs {
    pub jailer: PathBuf,
    pub firecracker: PathBuf,
    /// Root's, 0755; on the filesystem of the owner's home, where bangerd's state is (it
    /// links each VM's disks into its jail).
    pub dir: PathBuf,
}

/// Where the jails go unless `--jail-dir` says otherwise.
pub const DEFAULT_JAIL_DIR: &str = "/var/lib/banger-jail";

impl UnitInputs {
    /// bangerd's directories under the service (the user layout of the owner's home).
    pub fn layout(&self) -> Layout {
        Layout::service(
            &self.home,
            &Path::new("/run").join(units::BANGERD_RUNTIME_DIRECTORY),
        )
    }

    /// Each unit's name and the text install writes for it, helper first.
    pub fn units(&self) -> [(&'static str, String); 2] {
        [
            (HELPER_UNIT, units::helper_unit(self)),
            (BANGERD_UNIT, units::bangerd_unit(self)),
        ]
    }

    /// Refuses values a unit file cannot hold as they are.
    pub fn check(&self) -> Result<(), String> {
        units::unit_safe("the user name", &self.owner)?;
        units::unit_safe("the group name", &self.group)?;
        // An absolute path a unit can hold as it is.
        let unit_path = |what: &str, path: &Path| -> Result<(), String> {
            let text = path
                .to_str()
                .ok_or_else(|| format!("{what} {} is not UTF-8", path.display()))?;
            if !path.is_absolute() {
                return Err(format!("{what} {text} is not an absolute path"));
            }
            units::unit_safe(what, text)
        };
        unit_path("the owner's home", &self.home)?;
        unit_path("bangerd", &self.bangerd)?;
        unit_path("banger-helper", &self.helper)?;
        unit_path("the helper's socket", &self.helper_socket)?;
        if let Some(jail) = &self.jail {
            unit_path("the jailer", &jail.jailer)?;
            unit_path("firecracker", &jail.firecracker)?;
            unit_path("the jail directory", &jail.dir)?;
            // The helper's own rules: root runs them for the owner.
            banger_helper::jail::trusted_binary(&jail.jailer, "--jailer")?;
            banger_helper::jail::trusted_binary(&jail.firecracker, "--firecracker")?;
            if !jail
                .firecracker
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains("firecracker"))
            {
                return Err(format!(
                    "--firecracker {}: the jailer runs only a file whose name contains \"firecracker\"",
                    jail.firecracker.display()
                ));
            }
        }
        if let Some(network) = &self.network {
            // Checked by the helper's own rules: a unit must never hold a network the helper
            // refuses to start with.
            let (uid, spec) =
                banger_helper::networks::parse_flag(&format!("{}:{network}", self.uid))?;
            banger_helper::networks::Networks::new(&[uid], &[(uid, spec)])?;
        }
        Ok(())
    }
}

/// One unit file install wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledUnit {
    pub name: String,
    pub path: PathBuf,
    /// sha256 of the bytes written.
    pub sha256: String,
}

/// The versions the installed programs printed at install time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    pub banger: String,
    pub bangerd: String,
    pub helper: String,
}

/// `/etc/banger/install.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallMetadata {
    pub format: u32,
    /// When install ran (ms since the epoch).
    pub installed_at_unix_ms: u64,
    pub inputs: UnitInputs,
    /// The banger program that installed (the CLI beside the two others).
    pub banger: PathBuf,
    pub versions: Versions,
    /// bangerd's socket and state directory under the service (for people and scripts; the
    /// CLI computes them from `inputs`).
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub unit_dir: PathBuf,
    pub units: Vec<InstalledUnit>,
    /// Directories install created (removed by uninstall when empty), deepest last.
    pub created_dirs: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not install metadata banger can read ({reason}); remove it or reinstall")]
    BadMetadata { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The install metadata under `root`; `None` when nothing is installed.
pub fn read_metadata(root: &SystemRoot) -> Result<Option<InstallMetadata>, SystemError> {
    let path = root.metadata_path();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SystemError::Read { path, source }),
    };
    let metadata: InstallMetadata =
        serde_json::from_slice(&bytes).map_err(|e| SystemError::BadMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    if metadata.format != METADATA_FORMAT {
        return Err(SystemError::BadMetadata {
            path,
            reason: format!(
                "format {}, this banger reads {METADATA_FORMAT}",
                metadata.format
            ),
        });
    }
    Ok(Some(metadata))
}

/// The layout of the system-installed bangerd when this uid owns it, so that its CLI reaches
/// the service's socket. Nothing installed, unreadable metadata or another owner: `None`.
pub fn installed_layout_for(root: &SystemRoot, uid: u32) -> Option<Layout> {
    read_metadata(root)
        .ok()
        .flatten()
        .filter(|metadata| metadata.inputs.uid == uid)
        .map(|metadata| metadata.inputs.layout())
}

/// Writes `bytes` at `path` whole: a temporary file beside it, synced, then renamed over it.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SystemError> {
    let fail = |source| SystemError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut temp = tempfile::Builder::new()
        .prefix(".banger-install-")
        .tempfile_in(dir)
        .map_err(fail)?;
    temp.write_all(bytes).map_err(fail)?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(fail)?;
    temp.as_file().sync_all().map_err(fail)?;
    temp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// How a unit file on disk compares with install's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    /// What install wrote, and what it would write now.
    Current,
    /// Changed since install wrote it (by hand, or by another program).
    Edited,
    /// As install wrote it, but this banger writes it differently now (an update changed
    /// the unit's hardening or paths): reinstall to get the new one.
    Outdated,
    /// Not there.
    Missing,
    /// Could not be read.
    Unreadable,
}

impl UnitState {
    pub fn describe(self) -> &'static str {
        match self {
            UnitState::Current => "as installed",
            UnitState::Edited => "edited since install",
            UnitState::Outdated => "older than what this banger installs",
            UnitState::Missing => "missing",
            UnitState::Unreadable => "unreadable",
        }
    }
}

/// One unit, checked.
#[derive(Clone, Debug, Serialize)]
pub struct UnitCheck {
    pub name: String,
    pub path: PathBuf,
    pub state: UnitState,
    /// The unit's text on disk, when readable.
    #[serde(skip)]
    pub on_disk: Option<String>,
    /// What install would write now.
    #[serde(skip)]
    pub expected: String,
    /// Lines that differ (`-` on disk, `+` what install writes), for people.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diff: Vec<String>,
}

/// Every unit install writes, compared with the files under `metadata.unit_dir`.
pub fn check_units(metadata: &InstallMetadata) -> Vec<UnitCheck> {
    metadata
        .inputs
        .units()
        .into_iter()
        .map(|(name, expected)| {
            let path = metadata
                .units
                .iter()
                .find(|u| u.name == name)
                .map(|u| u.path.clone())
                .unwrap_or_else(|| metadata.unit_dir.join(name));
            let recorded = metadata
                .units
                .iter()
                .find(|u| u.name == name)
                .map(|u| u.sha256.as_str());
            let (state, on_disk) = match std::fs::read(&path) {
                Ok(bytes) => {
                    let sha = crate::kernel::bundle::sha256_hex(&bytes);
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    let state = if text == expected {
                        UnitState::Current
                    } else if recorded != Some(sha.as_str()) {
                        UnitState::Edited
                    } else {
                        UnitState::Outdated
                    };
                    (state, Some(text))
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    (UnitState::Missing, None)
                }
                Err(_) => (UnitState::Unreadable, None),
            };
            let diff = on_disk
                .as_deref()
                .map(|text| line_diff(text, &expected))
                .unwrap_or_default();
            UnitCheck {
                name: name.to_owned(),
                path,
                state,
                on_disk,
                expected,
                diff,
            }
        })
        .collect()
}

/// The lines only one side has, in order (`-` for `old`, `+` for `new`): enough to show
/// which directives an edit changed, without a diff library.
pub fn line_diff(old: &str, new: &str) -> Vec<String> {
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    let mut diff: Vec<String> = old_lines
        .iter()
        .filter(|line| !new_lines.contains(line))
        .map(|line| format!("-{line}"))
        .collect();
    diff.extend(
        new_lines
            .iter()
            .filter(|line| !old_lines.contains(line))
            .map(|line| format!("+{line}")),
    );
    diff
}

/// Whether systemd is the init system here (sd_booted(3)): `/run/systemd/system` exists.
pub fn systemd_running() -> bool {
    Path::new(SYSTEMD_RUNNING_MARKER).is_dir()
}

/// Runs `systemctl ARGS`; its stdout, or what it said when it failed.
pub fn systemctl(args: &[&str]) -> Result<String, String> {
    let shown = format!("systemctl {}", args.join(" "));
    let output = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// What systemd says about one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceState {
    /// `active`, `inactive`, `failed`, …
    pub active: String,
    /// `running`, `dead`, …
    pub sub: String,
    /// `enabled`, `disabled`, …
    pub enabled: String,
}

/// `systemctl show` of `unit`, read as `key=value` lines.
pub fn service_state(unit: &str) -> Result<ServiceState, String> {
    let text = systemctl(&[
        "show",
        "--property=ActiveState,SubState,UnitFileState",
        unit,
    ])?;
    let mut state = ServiceState::default();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("ActiveState", value)) => state.active = value.to_owned(),
            Some(("SubState", value)) => state.sub = value.to_owned(),
            Some(("UnitFileState", value)) => state.enabled = value.to_owned(),
            _ => {}
        }
    }
    Ok(state)
}

/// The command that starts what install wrote, for people to run where systemd runs.
pub fn start_command() -> String {
    format!(
        "sudo systemctl daemon-reload && sudo systemctl enable --now {HELPER_UNIT} {BANGERD_UNIT}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(dir: &Path) -> InstallMetadata {
        let inputs = UnitInputs {
            owner: "alice".into(),
            uid: 1000,
            gid: 1000,
            group: "alice".into(),
            home: PathBuf::from("/home/alice"),
            bangerd: PathBuf::from("/usr/local/bin/bangerd"),
            helper: PathBuf::from("/usr/local/bin/banger-helper"),
            helper_socket: PathBuf::from("/run/banger/helper.sock"),
            network: None,
            jail: None,
        };
        let units = inputs
            .units()
            .iter()
            .map(|(name, text)| {
                let path = dir.join(name);
                std::fs::write(&path, text).unwrap();
                InstalledUnit {
                    name: (*name).to_owned(),
                    path,
                    sha256: crate::kernel::bundle::sha256_hex(text.as_bytes()),
                }
            })
            .collect();
        InstallMetadata {
            format: METADATA_FORMAT,
            installed_at_unix_ms: 0,
            socket: inputs.layout().socket_path(),
            state_dir: inputs.layout().state_dir,
            inputs,
            banger: PathBuf::from("/usr/local/bin/banger"),
            versions: Versions {
                banger: "banger 0.1.0".into(),
                bangerd: "bangerd 0.1.0".into(),
                helper: "banger-helper 0.1.0".into(),
            },
            unit_dir: dir.to_path_buf(),
            units,
            created_dirs: Vec::new(),
        }
    }

    #[test]
    fn units_are_current_edited_outdated_or_missing() {
        let dir = tempfile::tempdir().unwrap();
        let mut metadata = metadata(dir.path());
        let states = |m: &InstallMetadata| {
            check_units(m)
                .into_iter()
                .map(|c| (c.name, c.state))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            states(&metadata),
            [
                (HELPER_UNIT.to_owned(), UnitState::Current),
                (BANGERD_UNIT.to_owned(), UnitState::Current)
            ]
        );

        // Edited by hand: the helper allows root too.
        let helper = dir.path().join(HELPER_UNIT);
        let text = std::fs::read_to_string(&helper).unwrap();
        std::fs::write(
            &helper,
            text.replace("--allow-uid 1000", "--allow-uid 1000 --allow-uid 0"),
        )
        .unwrap();
        let checks = check_units(&metadata);
        assert_eq!(checks[0].state, UnitState::Edited);
        assert!(
            checks[0]
                .diff
                .iter()
                .any(|l| l.starts_with('-') && l.contains("--allow-uid 1000 --allow-uid 0")),
            "{:?}",
            checks[0].diff
        );

        // Written by an older banger: the file is what was recorded, but not what is written
        // now.
        let old = "[Service]\nExecStart=/usr/local/bin/bangerd\n";
        std::fs::write(dir.path().join(BANGERD_UNIT), old).unwrap();
        metadata.units[1].sha256 = crate::kernel::bundle::sha256_hex(old.as_bytes());
        assert_eq!(check_units(&metadata)[1].state, UnitState::Outdated);

        std::fs::remove_file(dir.path().join(BANGERD_UNIT)).unwrap();
        assert_eq!(check_units(&metadata)[1].state, UnitState::Missing);
    }

    #[test]
    fn metadata_reads_back_and_other_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = SystemRoot::at(dir.path());
        assert_eq!(read_metadata(&root).unwrap(), None);
        let units = tempfile::tempdir().unwrap();
        let metadata = metadata(units.path());
        std::fs::create_dir_all(root.etc_dir()).unwrap();
        write_file(
            &root.metadata_path(),
            &serde_json::to_vec_pretty(&metadata).unwrap(),
            0o644,
        )
        .unwrap();
        assert_eq!(read_metadata(&root).unwrap(), Some(metadata.clone()));
        assert_eq!(
            installed_layout_for(&root, 1000),
            Some(metadata.inputs.layout())
        );
        assert_eq!(installed_layout_for(&root, 1001), None);

        let mut other = serde_json::to_value(&metadata).unwrap();
        other["format"] = 2.into();
        std::fs::write(root.metadata_path(), other.to_string()).unwrap();
        let error = read_metadata(&root).unwrap_err().to_string();
        assert!(error.contains("format 2"), "{error}");
    }

    #[test]
    fn a_system_root_prefixes_every_system_path() {
        let root = SystemRoot::at(Path::new("/tmp/sys"));
        assert!(!root.is_host());
        assert_eq!(
            root.metadata_path(),
            Path::new("/tmp/sys/etc/banger/install.json")
        );
        assert_eq!(
            root.default_unit_dir(),
            Path::new("/tmp/sys/etc/systemd/system")
        );
        let host = SystemRoot::at(Path::new("/"));
        assert!(host.is_host());
        assert_eq!(host.metadata_path(), Path::new("/etc/banger/install.json"));
    }
}
