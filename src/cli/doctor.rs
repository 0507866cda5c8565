//! `banger doctor`: checks of the host and of banger's own state, one line each, each saying
//! what to do when it fails; `--fix` lets the checks that can repair what they found do it;
//! `--json` prints the same as one object; the status is 1 when something is wrong.
//!
//! Output, one line per check, then one indented line per finding with the command that
//! deals with it:
//!
//! ```text
//! ok     orphans   every host resource with banger's names is in the log
//! FAIL   orphans   2 host resources carry banger's names but the log does not know them; `banger doctor --fix` removes them
//!          tap bt1f00                               sudo ip link delete bt1f00
//!          directory /…/state/vms/00000000deadbeef  rm -rf /…/state/vms/00000000deadbeef
//! ```
//!
//! Adding a check: write a function `fn(&mut Context, Mode) -> BoxFuture<'_, Report>` and
//! list it in [`CHECKS`], in the order people should read them. A check says `Ok`, `Fail`
//! (with a `fix` hint, and `items` for what it found), `Fixed` (under [`Mode::Fix`], when it
//! repaired everything it found) or `Skipped` (it could not look: say why in the summary; this
//! counts as a problem, so a check that does not apply to this host says `Ok` and why). The
//! exit status is 1 when any check failed or was skipped.
//! A check that needs bangerd asks [`Context::bangerd`], which connects once (starting
//! bangerd like any command) and remembers a failure, so every later check can report it
//! instead of trying again. Checks never print: the runner renders their reports.

use serde::Serialize;

use super::args::DoctorArgs;
use super::connect::connect;
use super::error::CliError;
use super::output::{json, line};
use crate::api::{NoParams, OrphansRemoveResult, OrphansResult};
use crate::operations::BoxFuture;
use crate::rpc::Client;

/// Look only, or also repair what can be repaired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Look,
    Fix,
}

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// It found problems and repaired all of them (`--fix`).
    Fixed,
    /// Something is wrong; `fix` says what to do.
    Fail,
    /// It could not look; the summary says why. Counts as a problem for the exit status: a
    /// check that does not apply to this host says `Ok` and why instead.
    Skipped,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Fixed => "fixed",
            Status::Fail => "FAIL",
            Status::Skipped => "skip",
        }
    }
}

/// What one check says.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub name: &'static str,
    pub status: Status,
    /// One sentence.
    pub summary: String,
    /// What to do about a failure (a command, or a sentence with one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The things it found, each with the command that deals with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Item {
    pub what: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Anything a machine may want (a handle, an error), as the check's own JSON.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// What checks share: one connection to bangerd, made on first need.
pub struct Context {
    bangerd: Option<Result<Client, String>>,
}

impl Context {
    fn new() -> Context {
        Context { bangerd: None }
    }

    /// bangerd, started if need be (like any banger command); the error text when it cannot
    /// be reached, remembered for the next check.
    pub async fn bangerd(&mut self) -> Result<&mut Client, String> {
        if self.bangerd.is_none() {
            self.bangerd = Some(connect().await.map_err(|error| {
                error
                    .report()
                    .unwrap_or_else(|| error.to_string())
                    .trim_start_matches("banger: error: ")
                    .to_owned()
            }));
        }
        match self.bangerd.as_mut() {
            Some(Ok(client)) => Ok(client),
            Some(Err(error)) => Err(error.clone()),
            None => Err("bangerd was not asked".into()),
        }
    }
}

type RunFn = for<'a> fn(&'a mut Context, Mode) -> BoxFuture<'a, Report>;

/// One check: its name (a word, shown in the second column) and what runs it.
pub struct Check {
    pub name: &'static str,
    pub run: RunFn,
}

/// Every check, in the order they run and print.
pub static CHECKS: &[Check] = &[
    Check {
        name: "orphans",
        run: |cx, mode| Box::pin(orphans(cx, mode)),
    },
    Check {
        name: "vmm",
        run: |_, _| Box::pin(vmm()),
    },
    Check {
        name: "network",
        run: |cx, _| Box::pin(network(cx)),
    },
    Check {
        name: "devices",
        run: |_, _| Box::pin(devices()),
    },
    Check {
        name: "firecracker",
        run: |_, _| Box::pin(firecracker()),
    },
    Check {
        name: "disk",
        run: |_, _| Box::pin(async { disk() }),
    },
    Check {
        name: "defaults",
        run: |cx, _| Box::pin(defaults(cx)),
    },
    Check {
        name: "dns",
        run: |cx, _| Box::pin(dns(cx)),
    },
    Check {
        name: "ssh",
        run: |_, _| Box::pin(async { ssh_client() }),
    },
    Check {
        name: "posture",
        run: |_, _| Box::pin(async { posture() }),
    },
];

/// The oldest Firecracker banger boots guests with: 1.8 describes virtio-mmio devices in
/// ACPI, which the guest kernels banger uses need.
const MIN_FIRECRACKER: (u64, u64) = (1, 8);

/// How long `firecracker --version` (and the jailer's) may take.
const VERSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Below this much free space in the state directory a pull or a create may fail half-way.
const MIN_FREE_BYTES: u64 = 2 << 30;

fn report(status: Status, summary: String, fix: Option<String>) -> Report {
    Report {
        name: "",
        status,
        summary,
        fix,
        items: Vec::new(),
    }
}

/// The config this CLI's bangerd reads (the binaries it would run), or the report saying
/// why it cannot be read.
fn config() -> Result<(crate::paths::Layout, crate::config::Config), Report> {
    let layout = super::connect::layout()
        .map_err(|e| skipped(format!("cannot tell where banger keeps its state: {e}")))?;
    let config = crate::config::Config::load(&layout.config_path()).map_err(|e| {
        report(
            Status::Fail,
            format!("the config cannot be read: {e}"),
            Some(format!("fix or remove {}", layout.config_path().display())),
        )
    })?;
    Ok((layout, config))
}

/// Whether a new VM can run on this host, on which VMM and why: KVM (a PVM-backed KVM runs
/// no stock guest), firecracker, QEMU — the rule `vm create --vmm auto` follows.
async fn vmm() -> Report {
    use crate::host::backends::{VmmChoice, decide};
    let (_, config) = match config() {
        Ok(loaded) => loaded,
        Err(report) => return report,
    };
    let facts = host_facts(&config).await;
    match decide(VmmChoice::Auto, &facts) {
        Ok(choice) => report(
            Status::Ok,
            format!(
                "new VMs run on {}: {}",
                choice.vmm,
                choice.reason.trim_start_matches("auto: ")
            ),
            None,
        ),
        Err(why) => report(
            Status::Fail,
            why,
            Some("apt-get install qemu-system-x86".into()),
        ),
    }
}

/// `/dev/kvm` and `/dev/net/tun` as this user has them, against what new VMs need: QEMU gets
/// its tap from banger-helper and emulates without KVM (slowly), so for QEMU both are
/// information; Firecracker opens its tap by name and needs KVM, so for it a tun this user
/// cannot open fails.
async fn devices() -> Report {
    use crate::host::backends::{TUN_DEVICE, VmmChoice, decide};
    use crate::host::kvm::KvmSupport;
    let (_, config) = match config() {
        Ok(loaded) => loaded,
        Err(report) => return report,
    };
    let facts = host_facts(&config).await;
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map_or_else(|| nix::unistd::geteuid().to_string(), |user| user.name);
    // QEMU without KVM emulates: say how it gets KVM (the user's own access, or a QEMU that
    // takes it from banger-helper) when KVM would run its guests.
    let kvm_hint = match facts.qemu_kvm() {
        KvmSupport::NoAccess(_) if facts.kvm_device.runs_stock_guests() => format!(
            " (QEMU {}.{} or later gets it from banger-helper; or `sudo usermod -aG kvm {user}`, then log in again)",
            crate::host::qemu::KVM_DEVICE_PROPERTY_SINCE.0,
            crate::host::qemu::KVM_DEVICE_PROPERTY_SINCE.1
        ),
        _ => String::new(),
    };
    let tun_said = match &facts.tun {
        _ if facts.firecracker_via_helper => format!(
            "banger-helper's jailer starts Firecracker and makes {TUN_DEVICE} inside each VM's jail"
        ),
        Ok(()) => format!("this user can open {TUN_DEVICE}"),
        Err(error) => error.clone(),
    };
    match decide(config.vm.vmm, &facts) {
        Ok(choice) if choice.vmm == banger_events::VmmKind::Firecracker => report(
            Status::Ok,
            format!(
                "new VMs run on Firecracker: {}; {tun_said}",
                facts.firecracker_kvm().describe()
            ),
            None,
        ),
        Ok(_) => report(
            Status::Ok,
            format!(
                "QEMU gets each VM's tap from banger-helper, so {TUN_DEVICE} is not needed ({tun_said}); {}{kvm_hint}",
                facts.qemu_kvm().describe()
            ),
            None,
        ),
        Err(why) if config.vm.vmm == VmmChoice::Firecracker && facts.firecracker_tun().is_err() => {
            report(
                Status::Fail,
                why,
                Some(format!(
                    "run VMs on QEMU, whose tap banger-helper passes in (`vmm = \"qemu\"` or `\"auto\"` under [vm] in config.toml), or give {user} access to {TUN_DEVICE}"
                )),
            )
        }
        Err(why) => skipped(format!("no VMM can run here ({why}); see the vmm check")),
    }
}

/// The host as bangerd's `auto` rule sees it, with this config (and its helper: whether it
/// starts Firecracker).
async fn host_facts(config: &crate::config::Config) -> crate::host::backends::HostFacts {
    let helper = banger_helper::HelperClient::new(&config.network.helper_socket);
    let qemu_kvm_via_helper = crate::host::qemu::kvm_through_helper(
        &config.qemu,
        &crate::host::kvm::probe(),
        &crate::host::network::HelperKvm(helper.clone()),
    )
    .await
    .is_ok();
    crate::host::backends::HostFacts::probe(
        &config.firecracker,
        &config.qemu,
        crate::host::jailed::firecracker_through_helper(config, &helper).await,
        qemu_kvm_via_helper,
    )
}

/// firecracker and its jailer: present, and at least [`MIN_FIRECRACKER`]. Only a failure
/// where new VMs would run on Firecracker (`vm.vmm = "firecracker"`, or `auto` on a host
/// whose KVM runs stock guests); on a QEMU host the same findings are information.
async fn firecracker() -> Report {
    use crate::host::backends::{Binary, VmmChoice, find_binary};
    let (_, config) = match config() {
        Ok(loaded) => loaded,
        Err(report) => return report,
    };
    let firecracker = find_binary(&config.firecracker, "firecracker");
    // Whether new VMs would run on it (the `auto` rule: a firecracker that KVM can run, or
    // the one BANGER_FIRECRACKER names); else QEMU runs them and this is information.
    let facts = host_facts(&config).await;
    let kvm = facts.firecracker_kvm();
    let from_env =
        std::env::var_os(crate::host::vmm::FIRECRACKER_ENV).is_some_and(|v| !v.is_empty());
    let needed = match (config.vm.vmm, &firecracker) {
        (VmmChoice::Firecracker, _) => Some("vm.vmm is firecracker".to_owned()),
        (VmmChoice::Qemu, _) => None,
        (VmmChoice::Auto, Binary::Found(_)) if from_env => Some(format!(
            "{} names it, so new VMs run on Firecracker",
            crate::host::vmm::FIRECRACKER_ENV
        )),
        (VmmChoice::Auto, Binary::Found(_)) if kvm.runs_stock_guests() => {
            Some(format!("{}, so new VMs run on Firecracker", kvm.describe()))
        }
        (VmmChoice::Auto, _) => None,
    };
    // The jailer ships beside firecracker in every release tarball; else on PATH.
    let jailer = match &firecracker {
        Binary::Found(path) if path.with_file_name("jailer").is_file() => {
            Binary::Found(path.with_file_name("jailer"))
        }
        _ => find_binary(std::path::Path::new("jailer"), "firecracker's jailer"),
    };
    let mut found = Vec::new();
    let mut problems = Vec::new();
    // A bangerd that is not root has banger-helper start Firecracker through its jailer:
    // what counts then is what the helper runs.
    let mut fix_by_helper = None;
    let (firecracker, jailer) = if config
        .firecracker_launch
        .through_helper(nix::unistd::geteuid().as_raw())
    {
        match banger_helper::HelperClient::new(&config.network.helper_socket)
            .jail()
            .await
        {
            Ok(Some(jail)) => {
                found.push(format!(
                    "banger-helper starts it through its jailer, jails in {}",
                    jail.dir.display()
                ));
                (Binary::Found(jail.firecracker), Binary::Found(jail.jailer))
            }
            Ok(None) if config.firecracker_launch == crate::config::FirecrackerLaunch::Auto => {
                found.push(
                    "banger-helper has no jailer, so Firecracker needs this user's own /dev/kvm and /dev/net/tun"
                        .to_owned(),
                );
                (firecracker, jailer)
            }
            Ok(None) => {
                problems.push(
                    "banger-helper starts no Firecracker (it has no --jailer), and firecracker.launch = \"helper\" has it start every one"
                        .to_owned(),
                );
                fix_by_helper = Some(
                    "restart banger-helper with --jailer JAILER --firecracker FIRECRACKER --jail-dir /var/lib/banger-jail (`sudo banger system install --jailer JAILER` writes it), or run VMs on QEMU".to_owned(),
                );
                (firecracker, jailer)
            }
            Err(error) => {
                problems.push(format!(
                    "banger-helper, which starts Firecracker for this bangerd, does not answer ({error})"
                ));
                (firecracker, jailer)
            }
        }
    } else {
        (firecracker, jailer)
    };
    for (name, binary, banner) in [
        ("firecracker", &firecracker, "Firecracker"),
        ("jailer", &jailer, "Jailer"),
    ] {
        match binary {
            Binary::Missing(why) => problems.push(why.clone()),
            Binary::Found(path) => match program_version(path, banner).await {
                Ok(version) if version >= (MIN_FIRECRACKER.0, MIN_FIRECRACKER.1, 0) => {
                    found.push(format!(
                        "{name} v{}.{}.{} ({})",
                        version.0,
                        version.1,
                        version.2,
                        path.display()
                    ))
                }
                Ok(version) => problems.push(format!(
                    "{name} {} is v{}.{}.{}, older than {}.{}",
                    path.display(),
                    version.0,
                    version.1,
                    version.2,
                    MIN_FIRECRACKER.0,
                    MIN_FIRECRACKER.1
                )),
                Err(why) => problems.push(format!("{name} {}: {why}", path.display())),
            },
        }
    }
    let fix = format!(
        "install Firecracker {}.{} or newer with its jailer (the release tarball from https://github.com/firecracker-microvm/firecracker/releases: put both on PATH, or set [firecracker] binary in config.toml)",
        MIN_FIRECRACKER.0, MIN_FIRECRACKER.1
    );
    match (problems.is_empty(), needed) {
        (true, _) => report(Status::Ok, found.join(", "), None),
        (false, Some(why)) => report(
            Status::Fail,
            format!("{} ({why})", problems.join("; ")),
            Some(fix_by_helper.unwrap_or(fix)),
        ),
        (false, None) => {
            let mut summary = problems.join("; ");
            if !found.is_empty() {
                summary = format!("{}; {summary}", found.join(", "));
            }
            let why = match config.vm.vmm {
                VmmChoice::Qemu => "vm.vmm is qemu",
                _ => "new VMs run on QEMU here",
            };
            report(Status::Ok, format!("not needed ({why}): {summary}"), None)
        }
    }
}

/// `program --version`'s `BANNER vX.Y.Z` (Firecracker and its jailer print their names so),
/// as numbers.
async fn program_version(
    program: &std::path::Path,
    banner: &str,
) -> Result<(u64, u64, u64), String> {
    let run = tokio::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(VERSION_TIMEOUT, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => return Err(format!("cannot run it ({error})")),
        Err(_) => {
            return Err(format!(
                "--version did not answer within {VERSION_TIMEOUT:?}"
            ));
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version(&text, banner).ok_or_else(|| {
        format!(
            "--version printed {:?}, not `{banner} vX.Y.Z`",
            text.lines().next().unwrap_or("").trim()
        )
    })
}

/// `Firecracker v1.10.1` (the first line that starts with the banner) as `(1, 10, 1)`.
fn parse_version(text: &str, banner: &str) -> Option<(u64, u64, u64)> {
    let version = text
        .lines()
        .find_map(|line| line.trim().strip_prefix(banner))?
        .trim()
        .strip_prefix('v')?;
    // A suffix (`1.10.1-dev`) does not change the release.
    let mut parts = version.split(['.', '-']);
    let mut number = || parts.next()?.parse::<u64>().ok();
    Some((number()?, number()?, number()?))
}

/// The default image and its kernel: here, or known to the catalogs so that `vm run` pulls
/// them on first use (nothing is downloaded here).
async fn defaults(cx: &mut Context) -> Report {
    use crate::api::{ImageCatalogResult, KernelCatalogResult, KernelListResult, NameParams};
    let configured_kernel = match config() {
        Ok((_, config)) => config.kernels.default,
        Err(report) => return report,
    };
    let client = match cx.bangerd().await {
        Ok(client) => client,
        Err(error) => return skipped(format!("cannot ask bangerd: {error}")),
    };
    let catalog: ImageCatalogResult = match client.call("image.catalog", &NoParams {}).await {
        Ok(catalog) => catalog,
        Err(error) => {
            return skipped(format!("bangerd could not read the image catalog: {error}"));
        }
    };
    let image = catalog.default_image.clone();
    let shown: Result<banger_projections::ImageView, _> = client
        .call(
            "image.show",
            &NameParams {
                name: image.clone(),
            },
        )
        .await;
    let (image_text, kernel) = match shown {
        Ok(view) => (
            format!("default image {image} is here"),
            view.kernel.unwrap_or(configured_kernel),
        ),
        Err(crate::rpc::ClientError::Rpc(error))
            if error.code == crate::rpc::ErrorCode::NotFound =>
        {
            match catalog.entries.iter().find(|entry| entry.name == image) {
                Some(entry) => (
                    format!(
                        "default image {image} is pulled on first use ({})",
                        entry.source
                    ),
                    entry.kernel.clone(),
                ),
                None => {
                    return report(
                        Status::Fail,
                        format!(
                            "the default image {image} is neither here nor in the image catalog: `banger vm run` cannot boot without --image"
                        ),
                        Some(format!(
                            "`banger image pull REFERENCE --name {image}`, or make default_image of the [images] catalog file an image it lists"
                        )),
                    );
                }
            }
        }
        Err(error) => {
            return skipped(format!("bangerd could not show image {image}: {error}"));
        }
    };
    let local: KernelListResult = match client.call("kernel.list", &NoParams {}).await {
        Ok(list) => list,
        Err(error) => return skipped(format!("bangerd could not list kernels: {error}")),
    };
    let kernel_text = if local.kernels.iter().any(|k| k.name == kernel) {
        format!("its kernel {kernel} is here")
    } else {
        let available: KernelCatalogResult = match client.call("kernel.catalog", &NoParams {}).await
        {
            Ok(catalog) => catalog,
            Err(error) => {
                return skipped(format!(
                    "bangerd could not read the kernel catalog: {error}"
                ));
            }
        };
        match available.kernels.iter().find(|k| k.name == kernel) {
            Some(entry) => format!(
                "its kernel {kernel} is pulled on first use ({})",
                crate::size::format_bytes(entry.size_bytes)
            ),
            None => {
                return report(
                    Status::Fail,
                    format!(
                        "{image_text}, but its kernel {kernel} is neither here nor in the kernel catalog"
                    ),
                    Some(format!(
                        "`banger kernel import {kernel} --from DIR`, or set [kernels] default to a kernel `banger kernel list --available` shows"
                    )),
                );
            }
        }
    };
    report(Status::Ok, format!("{image_text}; {kernel_text}"), None)
}

/// Security posture: bangerd's socket directory (0700) and socket (0600) belong to its owner
/// alone, its state and config directories are not writable by group or others, and a
/// system install's units are what `banger system install` writes now, the helper allowing
/// exactly the owner.
fn posture() -> Report {
    use std::os::unix::fs::MetadataExt;
    let layout = match super::connect::layout() {
        Ok(layout) => layout,
        Err(error) => {
            return skipped(format!("cannot tell where banger keeps its state: {error}"));
        }
    };
    let installed = crate::system::read_metadata(&crate::system::SystemRoot::from_env());
    let me = nix::unistd::getuid().as_raw();
    // The directories of a system-installed bangerd belong to its owner, whoever asks.
    let owner = match &installed {
        Ok(Some(metadata)) if metadata.inputs.layout() == layout => metadata.inputs.uid,
        _ => me,
    };
    let mut items = Vec::new();
    let mut finding = |what: String, fix: String, detail: serde_json::Value| {
        items.push(Item {
            what,
            fix: Some(fix),
            detail,
        })
    };
    for (path, what, wanted) in [
        (layout.runtime_dir.clone(), "socket directory", 0o700),
        (layout.socket_path(), "socket", 0o600),
    ] {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        if mode != wanted {
            finding(
                format!(
                    "bangerd's {what} {} is mode {mode:04o}, not {wanted:04o}",
                    path.display()
                ),
                format!("chmod {wanted:04o} {}", path.display()),
                serde_json::json!({ "path": path, "mode": format!("{mode:04o}") }),
            );
        }
        if meta.uid() != owner {
            finding(
                format!(
                    "bangerd's {what} {} belongs to uid {}, not {owner}",
                    path.display(),
                    meta.uid()
                ),
                format!("chown {owner} {}", path.display()),
                serde_json::json!({ "path": path, "uid": meta.uid() }),
            );
        }
    }
    for (dir, what) in [
        (&layout.state_dir, "state directory"),
        (&layout.config_dir, "config directory"),
    ] {
        let Ok(meta) = std::fs::symlink_metadata(dir) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            finding(
                format!(
                    "the {what} {} is writable by its group or others (mode {mode:04o})",
                    dir.display()
                ),
                format!("chmod go-w {}", dir.display()),
                serde_json::json!({ "path": dir, "mode": format!("{mode:04o}") }),
            );
        }
        if meta.uid() != owner {
            finding(
                format!(
                    "the {what} {} belongs to uid {}, not {owner}",
                    dir.display(),
                    meta.uid()
                ),
                format!("chown -R {owner} {}", dir.display()),
                serde_json::json!({ "path": dir, "uid": meta.uid() }),
            );
        }
    }
    let install_text = match &installed {
        Ok(None) => "no system install".to_owned(),
        Err(error) => {
            finding(
                format!("the install metadata cannot be read: {error}"),
                "sudo banger system install".to_owned(),
                serde_json::Value::Null,
            );
            String::new()
        }
        Ok(Some(metadata)) => {
            let reinstall = format!(
                "sudo banger system install --owner {}",
                metadata.inputs.owner
            );
            for check in crate::system::check_units(metadata) {
                if check.state != crate::system::UnitState::Current {
                    finding(
                        format!(
                            "{} ({}) is {}",
                            check.name,
                            check.path.display(),
                            check.state.describe()
                        ),
                        reinstall.clone(),
                        serde_json::json!({ "state": check.state, "diff": check.diff }),
                    );
                }
                if check.name != crate::system::HELPER_UNIT {
                    continue;
                }
                let Some(text) = &check.on_disk else {
                    continue;
                };
                let owner_uid = metadata.inputs.uid.to_string();
                match crate::system::units::allowed_uids(text) {
                    Some(uids) if uids == [owner_uid.clone()] => {}
                    Some(uids) => finding(
                        format!(
                            "{} lets uid(s) {} use banger-helper, not only the owner's ({owner_uid}): --allow-uid",
                            check.name,
                            uids.join(", ")
                        ),
                        reinstall.clone(),
                        serde_json::json!({ "allowed_uids": uids, "owner_uid": metadata.inputs.uid }),
                    ),
                    None => finding(
                        format!("{} does not run banger-helper", check.name),
                        reinstall.clone(),
                        serde_json::Value::Null,
                    ),
                }
            }
            format!(
                "the installed units (bangerd for {}) are what `banger system install` writes",
                metadata.inputs.owner
            )
        }
    };
    if items.is_empty() {
        let whose = if owner == me {
            "yours".to_owned()
        } else {
            format!("uid {owner}'s")
        };
        return report(
            Status::Ok,
            format!("bangerd's socket and its state are {whose} alone; {install_text}"),
            None,
        );
    }
    Report {
        name: "",
        status: Status::Fail,
        summary: format!("{} security posture problem(s)", items.len()),
        fix: Some("see each one below".into()),
        items,
    }
}

/// Free space in the state directory, and whether root disks there are reflink clones.
fn disk() -> Report {
    let (layout, _) = match config() {
        Ok(loaded) => loaded,
        Err(report) => return report,
    };
    // The state directory may not exist before the first command: ask where it will be.
    let mut dir = layout.state_dir.clone();
    while !dir.exists() {
        match dir.parent() {
            Some(parent) => dir = parent.to_path_buf(),
            None => break,
        }
    }
    let free = match nix::sys::statvfs::statvfs(&dir) {
        Ok(stats) => stats.blocks_available() * stats.fragment_size(),
        Err(error) => return skipped(format!("cannot look at {}: {error}", dir.display())),
    };
    let copies = match reflink_works(&dir) {
        Ok(true) => "root disks are reflink clones (instant, sharing the image's blocks)",
        Ok(false) => {
            "root disks are sparse copies (this filesystem cannot clone; XFS or Btrfs can)"
        }
        Err(_) => "whether this filesystem can clone could not be told",
    };
    let free_text = crate::size::format_bytes(free);
    if free < MIN_FREE_BYTES {
        return report(
            Status::Fail,
            format!(
                "{free_text} free in {}, under {}: pulls and creates may fail half-way; {copies}",
                dir.display(),
                crate::size::format_bytes(MIN_FREE_BYTES)
            ),
            Some("free space there (`banger image cache prune`, `banger vm delete` of VMs you do not need)".into()),
        );
    }
    report(
        Status::Ok,
        format!("{free_text} free in {}; {copies}", dir.display()),
        None,
    )
}

/// Tries a `FICLONE` between two scratch files in `dir` (removed again).
fn reflink_works(dir: &std::path::Path) -> std::io::Result<bool> {
    let scratch = tempfile::Builder::new()
        .prefix(".banger-doctor-")
        .tempdir_in(dir)?;
    let source = scratch.path().join("a");
    std::fs::write(&source, [0u8; 4096])?;
    let copy = scratch.path().join("b");
    Ok(
        crate::host::disk::clone_or_copy(&source, &copy).map_err(std::io::Error::other)?
            == crate::host::disk::CopyMethod::Reflink,
    )
}

/// banger-helper as bangerd reaches it: answering, in the same protocol version, giving this
/// user the network bangerd is configured for; and that network's bridge and NAT, made with
/// the first VM. Without a helper (and without a root bangerd to start one) VMs get no network.
async fn network(cx: &mut Context) -> Report {
    use crate::api::{HelperStatus, NetworkStatusResult};
    let client = match cx.bangerd().await {
        Ok(client) => client,
        Err(error) => return skipped(format!("cannot ask bangerd: {error}")),
    };
    let status: NetworkStatusResult = match client.call("network.status", &NoParams {}).await {
        Ok(status) => status,
        Err(error) => return skipped(format!("bangerd could not say: {error}")),
    };
    let socket = &status.helper_socket;
    let uid = nix::unistd::geteuid();
    let install = format!(
        "sudo banger system install (or run `sudo banger-helper --socket {socket} --allow-uid {uid}`)"
    );
    let ours = format!("{} ({})", status.bridge, status.gateway);
    match status.helper {
        HelperStatus::Unreachable { .. } if status.starts_helper => report(
            Status::Ok,
            format!(
                "no banger-helper answers at {socket}; bangerd runs as root and starts one for the first VM"
            ),
            None,
        ),
        HelperStatus::Unreachable { error } => report(
            Status::Fail,
            format!("VMs get no network: {error}"),
            Some(install),
        ),
        HelperStatus::Refused { error } => report(
            Status::Fail,
            format!("VMs get no network: {error}"),
            Some(install),
        ),
        HelperStatus::Incompatible { version, wanted } => report(
            Status::Fail,
            format!(
                "banger-helper at {socket} speaks protocol {version}, this banger {wanted}: the two were installed apart"
            ),
            Some("install matching binaries, then `sudo banger system install`".into()),
        ),
        HelperStatus::Failed { error } => report(
            Status::Fail,
            format!("banger-helper at {socket} cannot set up networks: {error}"),
            Some("apt-get install nftables iproute2".into()),
        ),
        HelperStatus::Answers { version, networks } => {
            let given = networks
                .iter()
                .find(|n| n.bridge == status.bridge && n.gateway == status.gateway);
            match given {
                None => {
                    let offered: Vec<String> = networks
                        .iter()
                        .map(|n| format!("{} ({})", n.bridge, n.gateway))
                        .collect();
                    let fix = match networks.as_slice() {
                        [only] => format!(
                            "set `bridge = \"{}\"` and `gateway = \"{}\"` under [network] in config.toml, or have root give you {ours} (banger-helper --network {uid}:{}:{})",
                            only.bridge, only.gateway, status.bridge, status.gateway
                        ),
                        _ => format!(
                            "have root give you {ours} (banger-helper --network {uid}:{}:{})",
                            status.bridge, status.gateway
                        ),
                    };
                    report(
                        Status::Fail,
                        format!(
                            "bangerd uses {ours}, but banger-helper gives this user {}",
                            if offered.is_empty() {
                                "no network".to_owned()
                            } else {
                                offered.join(", ")
                            }
                        ),
                        Some(fix),
                    )
                }
                Some(n) if n.bridge_up && n.nat => report(
                    Status::Ok,
                    format!(
                        "banger-helper (protocol {version}) at {socket}; bridge {ours} and its NAT are in place"
                    ),
                    None,
                ),
                Some(n) if !n.bridge_up && !n.nat => report(
                    Status::Ok,
                    format!(
                        "banger-helper (protocol {version}) at {socket} gives {ours}; the bridge and NAT are made with the first VM"
                    ),
                    None,
                ),
                Some(n) => report(
                    Status::Fail,
                    format!(
                        "bridge {ours} is {} but its NAT rule is {}: guests {}",
                        if n.bridge_up { "up" } else { "missing" },
                        if n.nat { "in place" } else { "missing" },
                        if n.nat {
                            "have no bridge to reach"
                        } else {
                            "cannot reach beyond the host"
                        }
                    ),
                    Some(
                        "restart bangerd (`banger system restart`, or stop it and run any banger command), which sets them up again"
                            .into(),
                    ),
                ),
            }
        }
    }
}

/// bangerd's DNS server for `NAME.vm`, and whether the host's own lookups reach it.
async fn dns(cx: &mut Context) -> Report {
    let client = match cx.bangerd().await {
        Ok(client) => client,
        Err(error) => return skipped(format!("cannot ask bangerd: {error}")),
    };
    let status: crate::api::DnsStatusResult = match client.call("dns.status", &NoParams {}).await {
        Ok(status) => status,
        Err(error) => return skipped(format!("bangerd could not say: {error}")),
    };
    use crate::api::DnsRouting;
    match (status.serving, &status.error) {
        (true, _) => {
            let host = match &status.host_routing {
                Some(DnsRouting::Routed) => {
                    "the host resolves them too (systemd-resolved)".to_owned()
                }
                Some(DnsRouting::Skipped { reason }) => format!(
                    "the host itself cannot resolve them ({reason}); guests can, and `banger vm ssh` needs no DNS"
                ),
                Some(DnsRouting::Failed { error }) => {
                    format!("routing them on the host failed ({error}); guests resolve them")
                }
                None => "the host's routing of .vm is not set up yet".to_owned(),
            };
            report(
                Status::Ok,
                format!("bangerd answers NAME.vm on {}; {host}", status.address),
                None,
            )
        }
        (false, None) => report(
            Status::Ok,
            format!(
                "bangerd will answer NAME.vm on {} from the first VM on",
                status.address
            ),
            None,
        ),
        (false, Some(error)) => report(
            Status::Fail,
            format!(
                "bangerd cannot answer NAME.vm on {} ({error}); guests use the host's name servers",
                status.address
            ),
            Some(
                "free port 53 on the bridge address, or run banger-helper so that it binds it"
                    .into(),
            ),
        ),
    }
}

/// The ssh client `banger vm ssh` runs.
fn ssh_client() -> Report {
    match crate::host::backends::find_binary(std::path::Path::new("ssh"), "the ssh client") {
        crate::host::backends::Binary::Found(path) => report(
            Status::Ok,
            format!("`banger vm ssh` runs {}", path.display()),
            None,
        ),
        // VMs run without it: `vm exec -tt` gives a shell too. Not a failure.
        crate::host::backends::Binary::Missing(_) => report(
            Status::Ok,
            "no ssh client: `banger vm ssh` needs one (apt-get install openssh-client); `banger vm exec -tt NAME` works without".into(),
            None,
        ),
    }
}

#[derive(Serialize)]
struct Output<'a> {
    /// True when every check passed (or fixed what it found).
    ok: bool,
    checks: &'a [Report],
}

pub async fn run(args: DoctorArgs) -> Result<(), CliError> {
    let mode = if args.fix { Mode::Fix } else { Mode::Look };
    let mut cx = Context::new();
    let mut reports = Vec::with_capacity(CHECKS.len());
    for check in CHECKS {
        let mut report = (check.run)(&mut cx, mode).await;
        report.name = check.name;
        reports.push(report);
    }
    // A check that could not look cannot vouch for anything: that is a problem too.
    let failed = reports
        .iter()
        .filter(|r| matches!(r.status, Status::Fail | Status::Skipped))
        .count();
    if args.json {
        json(&Output {
            ok: failed == 0,
            checks: &reports,
        })?;
    } else {
        line(render(&reports))?;
    }
    match failed {
        0 => Ok(()),
        count => Err(CliError::ProblemsFound { count }),
    }
}

fn render(reports: &[Report]) -> String {
    let name_width = reports.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut lines = Vec::new();
    for report in reports {
        let mut text = format!(
            "{:<6} {:<name_width$}  {}",
            report.status.label(),
            report.name,
            report.summary
        );
        if let Some(fix) = &report.fix {
            text.push_str(&format!("; {fix}"));
        }
        lines.push(text);
        let what_width = report.items.iter().map(|i| i.what.len()).max().unwrap_or(0);
        for item in &report.items {
            let item_line = match &item.fix {
                Some(fix) => format!("         {:<what_width$}  {fix}", item.what),
                None => format!("         {}", item.what),
            };
            lines.push(item_line.trim_end().to_owned());
        }
    }
    lines.join("\n")
}

fn skipped(summary: String) -> Report {
    Report {
        name: "",
        status: Status::Skipped,
        summary,
        fix: None,
        items: Vec::new(),
    }
}

/// Host resources with banger's names (taps, entries of the store, VMM processes) that the
/// log does not know: left by a repaired log's lost events, or by hand. bangerd finds them
/// (`daemon.orphans`) and, with `--fix`, removes them, recording each removal in the log.
async fn orphans(cx: &mut Context, mode: Mode) -> Report {
    let client = match cx.bangerd().await {
        Ok(client) => client,
        Err(error) => return skipped(format!("cannot ask bangerd: {error}")),
    };
    let item = |orphan: &crate::api::OrphanView, fix: Option<String>, error: Option<&str>| Item {
        what: orphan.what.clone(),
        fix,
        detail: serde_json::json!({ "handle": orphan.handle, "error": error }),
    };
    if mode == Mode::Fix {
        let result: OrphansRemoveResult =
            match client.call("daemon.orphans.remove", &NoParams {}).await {
                Ok(result) => result,
                Err(error) => return skipped(format!("bangerd could not remove them: {error}")),
            };
        let mut items: Vec<Item> = result
            .failed
            .iter()
            .map(|f| {
                item(
                    &f.orphan,
                    Some(format!("{} (by hand: {})", f.error, f.orphan.remove_with)),
                    Some(&f.error),
                )
            })
            .collect();
        let removed = result.removed.len();
        if result.failed.is_empty() {
            items.extend(result.removed.iter().map(|o| item(o, None, None)));
            return Report {
                name: "",
                status: if removed == 0 {
                    Status::Ok
                } else {
                    Status::Fixed
                },
                summary: match removed {
                    0 => "every host resource with banger's names is in the log".into(),
                    n => format!(
                        "removed {n} host resource(s) the log did not know (each recorded as an orphan_found event)"
                    ),
                },
                fix: None,
                items,
            };
        }
        return Report {
            name: "",
            status: Status::Fail,
            summary: format!(
                "{} host resource(s) with banger's names could not be removed ({removed} were)",
                result.failed.len()
            ),
            fix: Some("see each one below".into()),
            items,
        };
    }
    let result: OrphansResult = match client.call("daemon.orphans", &NoParams {}).await {
        Ok(result) => result,
        Err(error) => return skipped(format!("bangerd could not look: {error}")),
    };
    if result.orphans.is_empty() {
        return Report {
            name: "",
            status: Status::Ok,
            summary: "every host resource with banger's names is in the log".into(),
            fix: None,
            items: Vec::new(),
        };
    }
    Report {
        name: "",
        status: Status::Fail,
        summary: format!(
            "{} host resource(s) carry banger's names but the log does not know them",
            result.orphans.len()
        ),
        fix: Some("`banger doctor --fix` removes them all, or remove each by hand".into()),
        items: result
            .orphans
            .iter()
            .map(|o| item(o, Some(o.remove_with.clone()), None))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_as_one_line_per_check_with_findings_beneath() {
        let reports = vec![
            Report {
                name: "orphans",
                status: Status::Fail,
                summary: "2 host resource(s) carry banger's names".into(),
                fix: Some("`banger doctor --fix` removes them".into()),
                items: vec![
                    Item {
                        what: "tap bt1f".into(),
                        fix: Some("sudo ip link delete bt1f".into()),
                        detail: serde_json::Value::Null,
                    },
                    Item {
                        what: "directory /s/vms/00ab".into(),
                        fix: Some("rm -rf /s/vms/00ab".into()),
                        detail: serde_json::Value::Null,
                    },
                ],
            },
            Report {
                name: "kvm",
                status: Status::Ok,
                summary: "/dev/kvm answers".into(),
                fix: None,
                items: Vec::new(),
            },
        ];
        assert_eq!(
            render(&reports),
            "FAIL   orphans  2 host resource(s) carry banger's names; `banger doctor --fix` removes them\n\
             \x20        tap bt1f               sudo ip link delete bt1f\n\
             \x20        directory /s/vms/00ab  rm -rf /s/vms/00ab\n\
             ok     kvm      /dev/kvm answers"
        );
    }

    #[test]
    fn firecracker_versions_are_read_from_their_banner() {
        assert_eq!(
            parse_version(
                "Firecracker v1.10.1\n\nSupported snapshot data format versions: v1.0.0\n",
                "Firecracker"
            ),
            Some((1, 10, 1))
        );
        assert_eq!(
            parse_version("Jailer v1.8.0-dev\n", "Jailer"),
            Some((1, 8, 0))
        );
        assert_eq!(parse_version("Firecracker v1.7\n", "Firecracker"), None);
        assert_eq!(parse_version("firecracker 1.10.1\n", "Firecracker"), None);
    }

    #[test]
    fn every_check_has_a_distinct_one_word_name() {
        let mut names: Vec<&str> = CHECKS.iter().map(|c| c.name).collect();
        assert!(names.iter().all(|n| !n.is_empty() && !n.contains(' ')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CHECKS.len());
    }
}
