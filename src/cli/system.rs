//! `banger system install | status | restart | uninstall`: bangerd (as its owner) and
//! banger-helper (as root) as systemd services. The units, the metadata and the drift check
//! are `crate::system`; this module is the verbs.
//!
//! Exit statuses: 0 when the verb did everything; 1 when it failed, or (status) when a unit
//! drifted or nothing is installed; 3 when install wrote the units and the metadata but could
//! not start the services because systemd does not run here (or the units are under
//! `BANGER_SYSTEM_ROOT`, which systemd does not read): the install is in place, the services
//! are not running, and the message says the command that starts them.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::args::{SystemCommand, SystemInstallArgs, SystemStatusArgs, SystemUninstallArgs};
use super::error::CliError;
use super::output::{json, line};
use crate::system::{
    BANGERD_UNIT, HELPER_UNIT, InstallMetadata, InstalledUnit, METADATA_FORMAT, ServiceState,
    SystemRoot, UnitCheck, UnitInputs, UnitState, Versions, check_units, read_metadata,
    service_state, start_command, systemctl, systemd_running, write_file,
};

/// `nobody`: systemd refuses to trust a service run as it, and so does install.
const NOBODY_UID: u32 = 65534;

/// How long uninstall waits for the installed bangerd to say which VMs run.
const ASK_BANGERD_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(command: SystemCommand) -> Result<(), CliError> {
    match command {
        SystemCommand::Install(args) => install(args),
        SystemCommand::Status(args) => status(args).await,
        SystemCommand::Restart => restart(),
        SystemCommand::Uninstall(args) => uninstall(args).await,
    }
}

fn require_root(verb: &str) -> Result<(), CliError> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    Err(CliError::message(format!(
        "`banger system {verb}` must run as root: it writes systemd units under /etc and runs banger-helper as root; run `sudo banger system {verb}`"
    )))
}

fn read(root: &SystemRoot) -> Result<Option<InstallMetadata>, CliError> {
    read_metadata(root).map_err(|e| CliError::failed("cannot read the install metadata", e))
}

// ---- install --------------------------------------------------------------------------------

fn install(args: SystemInstallArgs) -> Result<(), CliError> {
    require_root("install")?;
    let root = SystemRoot::from_env();
    let owner = match args.owner {
        Some(owner) => owner,
        None => std::env::var("SUDO_USER")
            .ok()
            .filter(|user| !user.is_empty() && user != "root")
            .ok_or_else(|| {
                CliError::Usage(
                    "which user should bangerd run as? run `sudo banger system install` from that user's shell (sudo names them in SUDO_USER), or pass --owner USER".into(),
                )
            })?,
    };
    let user = nix::unistd::User::from_name(&owner)
        .map_err(|e| CliError::failed(format!("cannot look user {owner} up"), e))?
        .ok_or_else(|| CliError::Usage(format!("there is no user named {owner}")))?;
    if user.uid.is_root() {
        return Err(CliError::Usage(
            "bangerd runs as an ordinary user, never as root (only banger-helper does): pass --owner USER".into(),
        ));
    }
    if user.uid.as_raw() == NOBODY_UID {
        return Err(CliError::Usage(format!(
            "{owner} (uid {NOBODY_UID}) owns the files of every service that maps users it does not know to it: bangerd's state must be a real user's; pass --owner USER"
        )));
    }
    let group = nix::unistd::Group::from_gid(user.gid)
        .ok()
        .flatten()
        .map_or_else(|| user.gid.to_string(), |group| group.name);

    let banger = std::env::current_exe()
        .and_then(|exe| exe.canonicalize())
        .map_err(|e| CliError::failed("cannot tell where this banger program is", e))?;
    let bin_dir = banger.parent().unwrap_or(Path::new("/")).to_path_buf();
    let bangerd = program_beside(&bin_dir, "bangerd")?;
    let helper = program_beside(&bin_dir, "banger-helper")?;
    // The helper runs as root: whoever can replace its program (or rename a directory above
    // it) would run code as root.
    only_root_can_replace(&helper).map_err(|why| {
        CliError::message(format!(
            "refused: banger-helper runs as root, but {why}; install the programs where only root can write first: `sudo install -m 0755 {dir}/banger {dir}/bangerd {dir}/banger-helper /usr/local/bin/ && sudo /usr/local/bin/banger system install`",
            dir = bin_dir.display()
        ))
    })?;
    let versions = Versions {
        banger: format!("banger {}", env!("CARGO_PKG_VERSION")),
        bangerd: version_of(&bangerd)?,
        helper: version_of(&helper)?,
    };

    let inputs = UnitInputs {
        owner: owner.clone(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        group,
        home: user.dir.clone(),
        bangerd,
        helper,
        helper_socket: PathBuf::from(crate::config::DEFAULT_HELPER_SOCKET),
        network: args.network.clone(),
        jail: args
            .jailer
            .as_ref()
            .map(|jailer| crate::system::JailInputs {
                firecracker: args
                    .firecracker
                    .clone()
                    .unwrap_or_else(|| jailer.with_file_name("firecracker")),
                jailer: jailer.clone(),
                dir: args
                    .jail_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(crate::system::DEFAULT_JAIL_DIR)),
            }),
    };
    inputs.check().map_err(CliError::Usage)?;

    let unit_dir = match args.unit_dir {
        Some(dir) => std::path::absolute(&dir)
            .map_err(|e| CliError::failed(format!("cannot use {}", dir.display()), e))?,
        None => root.default_unit_dir(),
    };
    // A previous install's metadata that cannot be read is replaced; its units are overwritten
    // where they have the same paths.
    let previous = read_metadata(&root).ok().flatten();
    let mut created_dirs = previous
        .as_ref()
        .map(|p| p.created_dirs.clone())
        .unwrap_or_default();
    ensure_dir(&unit_dir, &mut created_dirs)?;
    ensure_dir(&root.etc_dir(), &mut created_dirs)?;
    if let Some(jail) = &inputs.jail {
        prepare_jail_dir(&root, jail, &inputs.home, &mut created_dirs)?;
    }

    let mut units = Vec::new();
    for (name, text) in inputs.units() {
        let path = unit_dir.join(name);
        write_file(&path, text.as_bytes(), 0o644)
            .map_err(|e| CliError::failed(format!("cannot install {name}"), e))?;
        units.push(InstalledUnit {
            name: name.to_owned(),
            path,
            sha256: crate::kernel::bundle::sha256_hex(text.as_bytes()),
        });
    }
    // Units a previous install wrote elsewhere (another --unit-dir) would run beside these.
    for old in previous.iter().flat_map(|p| &p.units) {
        if !units.iter().any(|u| u.path == old.path) {
            remove_if_present(&old.path)?;
        }
    }
    let layout = inputs.layout();
    let metadata = InstallMetadata {
        format: METADATA_FORMAT,
        installed_at_unix_ms: now_ms(),
        socket: layout.socket_path(),
        state_dir: layout.state_dir.clone(),
        inputs,
        banger,
        versions,
        unit_dir,
        units,
        created_dirs,
    };
    let bytes = serde_json::to_vec_pretty(&metadata)
        .map_err(|e| CliError::failed("cannot encode the install metadata", e))?;
    write_file(&root.metadata_path(), &bytes, 0o644)
        .map_err(|e| CliError::failed("cannot write the install metadata", e))?;

    for unit in &metadata.units {
        line(format!("wrote {}", unit.path.display()))?;
    }
    line(format!("wrote {}", root.metadata_path().display()))?;
    line(format!(
        "bangerd runs as {owner} (uid {uid}), its state in {state}, its socket {socket}; banger-helper runs as root and answers uid {uid} only",
        uid = metadata.inputs.uid,
        state = metadata.state_dir.display(),
        socket = metadata.socket.display(),
    ))?;
    if !metadata.inputs.home.is_dir() {
        line(format!(
            "warning: {owner}'s home {} does not exist: bangerd keeps its state there and cannot start without it",
            metadata.inputs.home.display()
        ))?;
    }

    if args.no_start {
        line(format!(
            "not started (--no-start); to start them: {}",
            start_command()
        ))?;
        return Ok(());
    }
    if !root.is_host() {
        return Err(CliError::NotStarted(format!(
            "installed but not started: the units are under {}={}, which systemd does not read",
            crate::system::SYSTEM_ROOT_ENV,
            std::env::var(crate::system::SYSTEM_ROOT_ENV).unwrap_or_default()
        )));
    }
    if !systemd_running() {
        return Err(CliError::NotStarted(format!(
            "installed but not started: systemd is not running on this host (/run/systemd/system is absent); on a host where it runs: {}",
            start_command()
        )));
    }
    // A reinstall changes units that may be running: restart picks the new ones up (running
    // VMs keep running: bangerd's unit stops only bangerd).
    systemctl(&["daemon-reload"])
        .and_then(|_| systemctl(&["enable", HELPER_UNIT, BANGERD_UNIT]))
        .and_then(|_| systemctl(&["restart", HELPER_UNIT, BANGERD_UNIT]))
        .map_err(|error| {
            CliError::message(format!(
                "the units are installed, but starting them failed: {error}; see `journalctl -u {BANGERD_UNIT} -u {HELPER_UNIT}` and `banger system status`"
            ))
        })?;
    line(format!(
        "started {HELPER_UNIT} and {BANGERD_UNIT} (enabled at boot); `banger system status` shows them"
    ))
}

/// `dir/name`, which must be an executable file.
fn program_beside(dir: &Path, name: &str) -> Result<PathBuf, CliError> {
    let path = dir.join(name);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(path),
        _ => Err(CliError::message(format!(
            "{name} is not beside banger in {}: install the three programs together (banger, bangerd, banger-helper) and run that banger",
            dir.display()
        ))),
    }
}

/// Why someone other than root could replace `path` (the file, or a directory above it that
/// is writable by others and not sticky), if they could.
fn only_root_can_replace(path: &Path) -> Result<(), String> {
    let mut current = Some(path);
    while let Some(here) = current {
        let meta = std::fs::symlink_metadata(here)
            .map_err(|e| format!("{} cannot be checked ({e})", here.display()))?;
        let mode = meta.mode();
        let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
        if meta.uid() != 0 {
            return Err(format!(
                "{} belongs to uid {}, not root",
                here.display(),
                meta.uid()
            ));
        }
        if mode & 0o022 != 0 && !sticky_dir {
            return Err(format!(
                "{} is writable by its group or others (mode {:04o})",
                here.display(),
                mode & 0o7777
            ));
        }
        current = here.parent();
    }
    Ok(())
}

/// What `program --version` prints (its first line).
fn version_of(program: &Path) -> Result<String, CliError> {
    let output = std::process::Command::new(program)
        .arg("--version")
        .output()
        .map_err(|e| CliError::failed(format!("cannot run {}", program.display()), e))?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.lines().next() {
        Some(first) if output.status.success() => Ok(first.trim().to_owned()),
        _ => Err(CliError::message(format!(
            "{} --version failed ({}): {}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
    }
}

/// Creates `dir` and its missing parents (0755), recording each one it made.
fn ensure_dir(dir: &Path, created: &mut Vec<PathBuf>) -> Result<(), CliError> {
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(here) = current {
        if here.exists() {
            break;
        }
        missing.push(here.to_path_buf());
        current = here.parent();
    }
    for here in missing.into_iter().rev() {
        std::fs::create_dir(&here)
            .and_then(|()| std::fs::set_permissions(&here, std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| CliError::failed(format!("cannot create {}", here.display()), e))?;
        if !created.contains(&here) {
            created.push(here);
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<bool, CliError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(CliError::failed(
            format!("cannot remove {}", path.display()),
            error,
        )),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---- status ---------------------------------------------------------------------------------

#[derive(Serialize)]
struct StatusOutput<'a> {
    /// True when something is installed and every unit is as install writes it now.
    ok: bool,
    installed: bool,
    metadata_path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a InstallMetadata>,
    units: Vec<UnitStatus<'a>>,
    /// Whether systemd runs here (and reads these units): only then is `service` filled.
    systemd: bool,
    /// Whether bangerd answers on its socket (`null`: this user may not connect to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    bangerd_answers: Option<Option<bool>>,
}

#[derive(Serialize)]
struct UnitStatus<'a> {
    #[serde(flatten)]
    check: &'a UnitCheck,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<ServiceState>,
}

async fn status(args: SystemStatusArgs) -> Result<(), CliError> {
    let root = SystemRoot::from_env();
    let metadata = read(&root)?;
    let Some(metadata) = metadata else {
        if args.json {
            json(&StatusOutput {
                ok: false,
                installed: false,
                metadata_path: root.metadata_path(),
                metadata: None,
                units: Vec::new(),
                systemd: root.is_host() && systemd_running(),
                bangerd_answers: None,
            })?;
        } else {
            line(format!(
                "banger is not installed as a system service (no {}); `sudo banger system install` installs it",
                root.metadata_path().display()
            ))?;
        }
        return Err(CliError::ProblemsFound { count: 1 });
    };
    let checks = check_units(&metadata);
    let systemd = root.is_host() && systemd_running();
    let units: Vec<UnitStatus> = checks
        .iter()
        .map(|check| UnitStatus {
            check,
            service: systemd.then(|| service_state(&check.name).ok()).flatten(),
        })
        .collect();
    let answers = bangerd_answers(&metadata.socket).await;
    let drifted = checks
        .iter()
        .filter(|c| c.state != UnitState::Current)
        .count();
    if args.json {
        json(&StatusOutput {
            ok: drifted == 0,
            installed: true,
            metadata_path: root.metadata_path(),
            metadata: Some(&metadata),
            units,
            systemd,
            bangerd_answers: Some(answers),
        })?;
    } else {
        line(render_status(&metadata, &units, systemd, answers))?;
    }
    match drifted {
        0 => Ok(()),
        count => Err(CliError::ProblemsFound { count }),
    }
}

fn render_status(
    metadata: &InstallMetadata,
    units: &[UnitStatus],
    systemd: bool,
    answers: Option<bool>,
) -> String {
    let inputs = &metadata.inputs;
    let mut lines = vec![
        format!(
            "installed:  for {} (uid {}) by {} at {}",
            inputs.owner,
            inputs.uid,
            metadata.versions.banger,
            super::format::format_timestamp(metadata.installed_at_unix_ms)
        ),
        format!(
            "programs:   {} ({}), {} ({})",
            inputs.bangerd.display(),
            metadata.versions.bangerd,
            inputs.helper.display(),
            metadata.versions.helper
        ),
        format!("state:      {}", metadata.state_dir.display()),
        format!(
            "socket:     {} ({})",
            metadata.socket.display(),
            match answers {
                Some(true) => "bangerd answers",
                Some(false) => "nothing answers",
                None => "you may not connect to it",
            }
        ),
    ];
    for unit in units {
        let service = match &unit.service {
            Some(state) => format!(
                "; {} ({}), {}",
                state.active,
                state.sub,
                if state.enabled.is_empty() {
                    "?"
                } else {
                    &state.enabled
                }
            ),
            None => String::new(),
        };
        lines.push(format!(
            "unit:       {} ({}): {}{service}",
            unit.check.name,
            unit.check.path.display(),
            unit.check.state.describe(),
        ));
        for diff in &unit.check.diff {
            lines.push(format!("              {diff}"));
        }
    }
    if !systemd {
        lines.push(
            "services:   no state: systemd does not run here (or the units are under BANGER_SYSTEM_ROOT)"
                .to_owned(),
        );
    }
    if units.iter().any(|u| u.check.state != UnitState::Current) {
        lines.push(format!(
            "fix:        `sudo banger system install --owner {}` writes the units as this banger installs them",
            inputs.owner
        ));
    }
    lines.join("\n")
}

/// Whether something answers on `socket`: `None` when this user may not connect to it.
async fn bangerd_answers(socket: &Path) -> Option<bool> {
    match tokio::time::timeout(ASK_BANGERD_TIMEOUT, tokio::net::UnixStream::connect(socket)).await {
        Ok(Ok(_)) => Some(true),
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::PermissionDenied => None,
        _ => Some(false),
    }
}

// ---- restart --------------------------------------------------------------------------------

fn restart() -> Result<(), CliError> {
    let root = SystemRoot::from_env();
    if read(&root)?.is_none() {
        return Err(CliError::message(format!(
            "nothing to restart: banger is not installed as a system service (no {}); `sudo banger system install` installs it",
            root.metadata_path().display()
        )));
    }
    if !root.is_host() || !systemd_running() {
        return Err(CliError::message(
            "cannot restart the services: systemd is not running on this host (/run/systemd/system is absent), or the units are under BANGER_SYSTEM_ROOT; stop and start bangerd and banger-helper by hand instead",
        ));
    }
    // The helper first: bangerd asks it for taps as soon as it starts. Running VMs keep
    // running across bangerd's restart and are re-adopted.
    for unit in [HELPER_UNIT, BANGERD_UNIT] {
        systemctl(&["restart", unit]).map_err(CliError::message)?;
        line(format!("restarted {unit}"))?;
    }
    Ok(())
}

// ---- uninstall ------------------------------------------------------------------------------

async fn uninstall(args: SystemUninstallArgs) -> Result<(), CliError> {
    require_root("uninstall")?;
    let root = SystemRoot::from_env();
    let Some(metadata) = read(&root)? else {
        return line(format!(
            "nothing to uninstall: banger is not installed as a system service (no {})",
            root.metadata_path().display()
        ));
    };
    let running = running_vms(&metadata.socket).await;
    if !args.force && !running.is_empty() {
        return Err(CliError::message(format!(
            "{} VM(s) run under the installed bangerd ({}): stop them first (as {}: `banger vm stop NAME`), or pass --force to leave them running with no daemon",
            running.len(),
            running.join(", "),
            metadata.inputs.owner
        )));
    }
    let host_systemd = root.is_host() && systemd_running();
    if host_systemd && let Err(error) = systemctl(&["disable", "--now", BANGERD_UNIT, HELPER_UNIT])
    {
        line(format!("warning: {error}; removing the units anyway"))?;
    }
    for unit in &metadata.units {
        if remove_if_present(&unit.path)? {
            line(format!("removed {}", unit.path.display()))?;
        }
    }
    if remove_if_present(&root.metadata_path())? {
        line(format!("removed {}", root.metadata_path().display()))?;
    }
    // Only what install made, and only when nothing but empty directories is left in it
    // (the jail directory keeps one per Firecracker binary name): anything else put there
    // stays.
    for dir in metadata.created_dirs.iter().rev() {
        if remove_empty_tree(dir) {
            line(format!("removed {}", dir.display()))?;
        }
    }
    if host_systemd && let Err(error) = systemctl(&["daemon-reload"]) {
        line(format!("warning: {error}"))?;
    }
    let layout = metadata.inputs.layout();
    if !root.is_host() {
        line(format!(
            "the host's network is left alone: the units were under BANGER_SYSTEM_ROOT={}",
            root.path_of(Path::new("/")).display()
        ))?;
    } else if !running.is_empty() {
        line(format!(
            "kept: {owner}'s network (bridge, taps, NAT), which its {} running VM(s) still use",
            running.len(),
            owner = metadata.inputs.owner
        ))?;
    } else {
        // The helper is stopped: what it made for the owner is removed here, as root, by the
        // helper's own code (its taps, its bridge, its rules; the table with the last rules).
        match remove_host_network(&metadata.inputs).await {
            Ok(removed) => {
                for what in removed {
                    line(format!("removed {what}"))?;
                }
            }
            Err(error) => line(format!(
                "warning: {owner}'s network could not be removed ({error}); remove the bridge and banger's nftables table by hand (ip link delete BRIDGE; nft delete table ip banger)",
                owner = metadata.inputs.owner
            ))?,
        }
    }
    if args.purge && !root.is_host() {
        // The metadata names the owner's real directories, which a throwaway system root
        // never made: they are not this uninstall's to remove.
        return line(format!(
            "kept: {owner}'s state, cache and config (the install was under BANGER_SYSTEM_ROOT)",
            owner = metadata.inputs.owner
        ));
    }
    if args.purge {
        for dir in [&layout.state_dir, &layout.cache_dir, &layout.config_dir] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => line(format!("removed {}", dir.display()))?,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(CliError::failed(
                        format!("cannot remove {}", dir.display()),
                        error,
                    ));
                }
            }
        }
        return Ok(());
    }
    line(format!(
        "kept: {owner}'s VMs, images, kernels and event log in {state}, the download cache in {cache}, the config in {config}; `banger system uninstall --purge` removes them",
        owner = metadata.inputs.owner,
        state = layout.state_dir.display(),
        cache = layout.cache_dir.display(),
        config = layout.config_dir.display(),
    ))
}

/// Removes `dir` if it holds nothing but (nested) empty directories; whether it did. Never
/// follows a link, never removes a file.
fn remove_empty_tree(dir: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return false;
    };
    if !meta.is_dir() {
        return false;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            remove_empty_tree(&entry.path());
        }
    }
    std::fs::remove_dir(dir).is_ok()
}

/// Removes what banger-helper made on this host for the owner — the owner's taps, its bridge,
/// its NAT rules, and banger's nftables table once no other network's rules are in it —, with
/// the helper's own code. What was removed, as phrases.
async fn remove_host_network(inputs: &crate::system::UnitInputs) -> Result<Vec<String>, String> {
    use banger_helper::networks::{Networks, parse_flag};
    let explicit = match &inputs.network {
        Some(network) => vec![parse_flag(&format!("{}:{network}", inputs.uid))?],
        None => Vec::new(),
    };
    let networks = Networks::new(&[inputs.uid], &explicit)?;
    let host = banger_helper::net::Host::connect().map_err(|e| e.to_string())?;
    let mut removed = Vec::new();
    for tap in host
        .list_taps(inputs.uid)
        .await
        .map_err(|e| e.to_string())?
    {
        host.delete_tap(&tap, inputs.uid)
            .await
            .map_err(|e| e.to_string())?;
        removed.push(format!("tap {tap}"));
    }
    for spec in networks.of(inputs.uid) {
        host.remove_network(&spec.bridge, &networks)
            .await
            .map_err(|e| e.to_string())?;
        removed.push(format!(
            "the bridge {} and its NAT (banger's nftables table, when no other network's rules were left in it)",
            spec.bridge
        ));
    }
    Ok(removed)
}

/// The names of the VMs the bangerd on `socket` says are running (none when it does not
/// answer).
async fn running_vms(socket: &Path) -> Vec<String> {
    let ask = async {
        let mut client = crate::rpc::Client::connect(socket).await.ok()?;
        let listed: crate::api::VmListResult =
            client.call("vm.list", &serde_json::json!({})).await.ok()?;
        Some(
            listed
                .vms
                .into_iter()
                .filter(|vm| vm.state == banger_events::VmState::Running)
                .map(|vm| vm.name)
                .collect(),
        )
    };
    tokio::time::timeout(ASK_BANGERD_TIMEOUT, ask)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Makes the jail directory (root's, 0755: the helper's unit may write only there, and cannot
/// make it under its read-only /var), under the system root in tests. A directory on another
/// filesystem than the owner's home is allowed but warned about: bangerd links each VM's disks
/// into its jail, which only works within one filesystem.
fn prepare_jail_dir(
    root: &SystemRoot,
    jail: &crate::system::JailInputs,
    home: &Path,
    created: &mut Vec<PathBuf>,
) -> Result<(), CliError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = root.path_of(&jail.dir);
    ensure_dir(&dir, created)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| CliError::failed(format!("cannot set the mode of {}", dir.display()), e))?;
    let device = |path: &Path| std::fs::metadata(path).map(|meta| meta.dev()).ok();
    if root.is_host()
        && let (Some(jails), Some(home_device)) = (device(&dir), device(home))
        && jails != home_device
    {
        eprintln!(
            "banger: warning: {} is not on the filesystem of {}: bangerd links each VM's disks into its jail, which fails across filesystems; pass --jail-dir on the filesystem of {}",
            jail.dir.display(),
            home.display(),
            home.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_dir_records_only_what_it_made() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        std::fs::create_dir(dir.path().join("a")).unwrap();
        let mut created = Vec::new();
        ensure_dir(&deep, &mut created).unwrap();
        assert_eq!(created, [dir.path().join("a/b"), deep.clone()]);
        ensure_dir(&deep, &mut created).unwrap();
        assert_eq!(created.len(), 2);
    }

    #[test]
    fn a_program_others_can_replace_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("banger-helper");
        std::fs::write(&program, "").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o775)).unwrap();
        let why = only_root_can_replace(&program).unwrap_err();
        // Running as root (as the tests do) the owner is right, the mode is not; as
        // anybody else, the owner is named.
        assert!(
            why.contains("writable by its group or others (mode 0775)") || why.contains("not root"),
            "{why}"
        );
    }
}
