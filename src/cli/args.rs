//! The command tree, with the help text people and coding agents read.
//!
//! Every group's landing page (`banger GROUP --help`) answers three questions in a few lines:
//! what is this for, what is the 80% command, what comes next, with commands that run as
//! typed. Near-twin verbs (start / stop / restart / kill / delete) carry one-line summaries
//! that tell them apart at a glance in the subcommand index.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::api::VmName;
use crate::host::backends::VmmChoice;
use crate::size::Size;

const ROOT_ABOUT: &str = "Disposable Firecracker microVMs for developers and coding agents";

const ROOT_LONG: &str = "\
banger gives you disposable, hardware-isolated Linux machines (Firecracker microVMs) on your own \
Linux host, with your git checkout inside, reachable over ssh and through a guest agent. Every \
step banger takes is recorded in an append-only event log: `banger events` shows it, `banger ops` \
shows what is in flight.

bangerd, the daemon that does the work, is started for you in user mode when it is not running \
(set BANGER_NO_AUTOSTART=1 to turn that off). BANGER_ROOT=DIR keeps all of banger's state under \
DIR.";

const ROOT_AFTER: &str = "\
The 80% command:
  banger vm run                      create a VM, wait until it answers, open a shell in it
  banger vm run -- make test         run one command in a fresh VM; exit with its status

What comes next:
  banger vm list                     your VMs and their state
  banger vm exec dev -- uname -a     run a command in a running VM
  banger vm delete dev               throw a VM away (irreversible)
  banger events --follow             watch everything banger does, as it happens
  banger ops                         what is in flight right now
  banger dashboard --open            all of it, live, in your web browser
  banger doctor                      can this host run VMs? each problem with its fix
  sudo banger system install         run bangerd and its root helper as systemd services";

#[derive(Debug, Parser)]
#[command(
    name = "banger",
    version,
    about = ROOT_ABOUT,
    long_about = ROOT_LONG,
    after_help = ROOT_AFTER,
    arg_required_else_help = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, run, inspect and throw away microVMs
    #[command(
        subcommand,
        long_about = VM_LONG,
        after_help = VM_AFTER,
        arg_required_else_help = true
    )]
    Vm(VmCommand),
    /// Root filesystem images VMs boot from: list, register, pull, delete
    #[command(
        subcommand,
        long_about = IMAGE_LONG,
        after_help = IMAGE_AFTER,
        arg_required_else_help = true
    )]
    Image(ImageCommand),
    /// Guest kernels VMs boot with: list, import, pull, remove
    #[command(
        subcommand,
        long_about = KERNEL_LONG,
        after_help = KERNEL_AFTER,
        arg_required_else_help = true
    )]
    Kernel(KernelCommand),
    /// Show or follow the event log: everything banger did, in order
    #[command(long_about = EVENTS_LONG, after_help = EVENTS_AFTER, args_conflicts_with_subcommands = true)]
    Events(EventsArgs),
    /// List operations in flight (and stuck), with their current step
    #[command(long_about = OPS_LONG, after_help = OPS_AFTER, args_conflicts_with_subcommands = true)]
    Ops(OpsArgs),
    /// Run bangerd and its root helper as systemd services
    #[command(
        subcommand,
        long_about = SYSTEM_LONG,
        after_help = SYSTEM_AFTER,
        arg_required_else_help = true
    )]
    System(SystemCommand),
    /// Check that this host can run VMs, with a fix for each problem
    #[command(long_about = DOCTOR_LONG, after_help = DOCTOR_AFTER)]
    Doctor(DoctorArgs),
    /// Update banger to the latest signed release
    #[command(long_about = UPDATE_LONG, after_help = UPDATE_AFTER)]
    Update(UpdateArgs),
    /// Write ssh client entries so that `ssh NAME.vm` reaches your VMs
    #[command(name = "ssh-config", long_about = SSH_CONFIG_LONG, after_help = SSH_CONFIG_AFTER)]
    SshConfig(SshConfigArgs),
    /// Open the web dashboard: VMs, images, operations and the event log, live
    #[command(long_about = DASHBOARD_LONG, after_help = DASHBOARD_AFTER)]
    Dashboard(DashboardArgs),
    /// Print the versions of banger and of the running bangerd
    Version(VersionArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = COMPLETIONS_AFTER)]
    Completions(CompletionsArgs),
}

const COMPLETIONS_AFTER: &str = "\
Examples:
  banger completions bash > ~/.local/share/bash-completion/completions/banger
  banger completions zsh > \"${fpath[1]}/_banger\"
  banger completions fish > ~/.config/fish/completions/banger.fish

The script completes verbs, options and their fixed values; it is generated from this banger's \
command tree, so regenerate it after an update.";

// ---- vm ---------------------------------------------------------------------------------------

const VM_LONG: &str = "\
Create, run, inspect and throw away microVMs. A VM boots from an image (its root filesystem) \
and a kernel, gets its own IP address and a work disk for your checkout, and answers through a \
guest agent. VM names are DNS labels (lowercase letters, digits and '-', at most 63 \
characters): a VM called dev is reachable as dev.vm.";

const VM_AFTER: &str = "\
The 80% command:
  banger vm run                      create a VM from the default image, open a shell in it
  banger vm run --image debian -- cargo test
                                     run one command in a fresh VM; exit with its status

What comes next:
  banger vm create dev --image debian        create a VM and wait until its agent answers
  banger vm list                     all VMs and their state
  banger vm show dev                 one VM: spec, state, host resources, its operations
  banger vm exec dev -- uname -a     run a command in a running VM
  banger vm ssh dev                  ssh into it (through its agent; see banger ssh-config)
  banger vm stop dev                 graceful stop (Ctrl-Alt-Del, then force after a timeout)
  banger vm delete dev               stop it and remove its disks (irreversible)

stop, kill and delete told apart:
  stop     Stop a running VM gracefully
  kill     Force-kill a VM (use when 'vm stop' hangs)
  delete   Stop a VM and remove its disks (irreversible)

Works today: run, create, start, stop, restart, kill, delete, set, list, show, logs, exec, \
health, ping, ssh, stats, ports, workspace import/export/status: all of them.";

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM, wait until it answers, then open a shell (or run a command) in it
    #[command(after_help = "\
Examples:
  banger vm run                                        a login shell in a fresh Debian 12 VM
  banger vm run --name dev --memory 4G                 the same, in a VM called dev
  banger vm run --image debian --rm -- make test       run one command, exit with its status,
                                                       and delete the VM afterwards
  banger vm run --image debian -t -- top               a command on a terminal in the VM

The image (default: the catalog's debian) is pulled first when it is not here yet. Then it \
prints each stage while it waits (created, booted, agent ready) and how long each took, and \
opens the shell: the guest user's login shell (bash, or /bin/sh where there is none) on a \
terminal in the VM, over the guest agent (no ssh server needed). This terminal is in raw mode \
until the shell exits; `exit` or Ctrl-D leaves it. Without a terminal on stdin the shell reads \
its commands from stdin instead. The VM keeps running afterwards unless --rm is given; \
`banger vm exec -t NAME -- bash` opens another shell in it. The stages and the VM's fate go to \
stderr; stdout is the shell's or the command's. Ctrl-C ends a command that has no terminal \
(and --rm still deletes the VM).")]
    Run(VmRunArgs),
    /// Create a VM (asynchronous; shows its stages unless --no-wait)
    #[command(after_help = "\
Examples:
  banger vm create dev
  banger vm create dev --image debian-bookworm
  banger vm create dev --image debian-bookworm --cpus 4 --memory 8G --work-disk 20G
  banger vm create dev --image debian-bookworm --no-wait && banger ops

Without --no-wait it prints each stage as it starts (prepare-rootfs, network, boot, \
wait-for-agent…) and ends with the VM's address once its guest agent answers. Next: \
`banger vm exec dev -- uname -a`.")]
    Create(VmCreateArgs),
    /// List VMs: name, state, image, cpus, memory, age
    #[command(after_help = "\
Examples:
  banger vm list
  banger vm list --json | jq -r '.[].name'")]
    List(ListArgs),
    /// Show one VM: spec, state, host resources it holds, operations on it
    #[command(after_help = "\
Examples:
  banger vm show dev
  banger vm show dev --json")]
    Show(NameJsonArgs),
    /// Start a stopped VM
    Start(VmNameArgs),
    /// Stop a running VM gracefully
    #[command(long_about = "\
Stop a running VM gracefully: the guest gets Ctrl-Alt-Del and is waited for; after the timeout \
it is forced off. The VM and its disks stay; `banger vm start` brings it back.")]
    Stop(VmStopArgs),
    /// Stop then start a VM
    Restart(VmStopArgs),
    /// Force-kill a VM (use when 'vm stop' hangs)
    #[command(long_about = "\
Force-kill a VM's Firecracker process at once, without asking the guest. Unsynced writes in the \
guest are lost. The VM and its disks stay; `banger vm start` brings it back.")]
    Kill(VmNameArgs),
    /// Stop a VM and remove its disks (irreversible)
    #[command(long_about = "\
Stop a VM if it runs, then remove it and its disks. This cannot be undone: export anything you \
need first (`banger vm workspace export NAME`).")]
    Delete(VmNameArgs),
    /// Change cpus, memory or work-disk size of a stopped VM
    #[command(after_help = "\
Examples:
  banger vm set dev --cpus 4 --memory 8G
  banger vm set dev --work-disk 40G            grow the work disk

The VM must be stopped: `banger vm stop dev`, set, then `banger vm start dev`.")]
    Set(VmSetArgs),
    /// Run a command in a running VM; exits with the command's status
    #[command(after_help = "\
Examples:
  banger vm exec dev -- uname -a
  banger vm exec dev --cwd /work --env RUST_LOG=debug -- cargo test
  banger vm exec dev -- sh -c 'make && make check'
  tar -C src -c . | banger vm exec dev -- tar -C /work -x
  banger vm exec -t dev -- bash                a shell on a terminal in the VM
  banger vm exec -t dev -- vim /work/notes     full-screen programs work too

stdout and stderr are streamed as the command writes them; banger exits with the command's \
status (128 + N when signal N killed it). Interrupting banger kills the command in the VM. \
Piped stdin reaches the command; a terminal's does not unless -i is given (use --no-stdin to \
send none at all).

With -t the command runs on a terminal in the VM (a pseudo-terminal of this terminal's size, \
with its TERM), and this terminal is in raw mode until it ends: keys go to the VM as typed \
(Ctrl-C interrupts the program there, not banger), resizing follows, and SIGINT, SIGTERM, \
SIGHUP or SIGQUIT sent to banger are passed on to the program (a second SIGTERM or SIGHUP \
ends banger, and with it the command). When stdin is not a terminal, -t is ignored with a \
warning, as ssh does; -tt asks for a terminal in the VM anyway.")]
    Exec(VmExecArgs),
    /// Open an ssh session in a running VM (through its agent: no port open)
    #[command(long_about = VM_SSH_LONG, after_help = "\
Examples:
  banger vm ssh dev                              a login shell as root in dev
  banger vm ssh dev -- cat /etc/hostname         run one command over ssh
  banger vm ssh dev -- -L 8080:localhost:8080    extra arguments go to ssh (here: a tunnel)
  banger ssh-config --write && ssh dev.vm        plain ssh, scp, rsync and editors, for every VM

No ssh server in the image? `banger vm exec -tt dev -- bash` opens a shell through the agent.")]
    Ssh(VmSshArgs),
    /// A byte pipe to a port of a VM through its agent (ssh's ProxyCommand)
    #[command(name = "ssh-proxy", hide = true)]
    SshProxy(VmSshProxyArgs),
    /// Show a VM's serial console (-f to follow it)
    #[command(after_help = "\
Examples:
  banger vm logs dev
  banger vm logs dev -f                        keep printing until Ctrl-C
  banger vm logs dev --tail 4K                 only the last 4 KiB")]
    Logs(VmLogsArgs),
    /// Show a running VM's cpu, memory, disk and uptime, and what it costs the host
    #[command(after_help = "\
Examples:
  banger vm stats dev                          cpu, memory, disks, uptime, the VMM's share
  banger vm stats dev --json | jq .guest.memory

The guest's figures come from its agent (cpu use sampled over 0.2 s, memory from \
/proc/meminfo, the root and work filesystems as `df` counts them, uptime, processes); the \
host's are the VMM process's resident memory and cpu time and the VM's disk files, whose \
size on the host is usually far below what the guest sees (they are sparse). Next: \
`banger vm ports dev` for what the VM serves.")]
    Stats(NameJsonArgs),
    /// List listening ports in a VM, with http/https detection
    #[command(after_help = "\
Examples:
  banger vm ports dev                          one row per service, web ones with a URL
  banger vm ports dev --json | jq -r '.ports[] | select(.web) | .url'

Lists the guest's listening TCP sockets and bound UDP sockets with the processes that hold \
them; a service on both 0.0.0.0 and :: is one row. TCP ports the host can reach (bound to \
every address or to the guest's own) are probed from the host through the guest's bridge \
address, HTTPS first (any certificate accepted), then HTTP, a second at most each: a web \
listener shows its URL, which the host's browser can open. Ports bound to 127.0.0.1 or ::1 \
are guest-local: listed, not probed.")]
    Ports(NameJsonArgs),
    /// Ask a VM's guest agent whether it is healthy
    #[command(after_help = "\
Examples:
  banger vm health dev                         agent version, uptime, load, memory, round trip
  banger vm health dev --json")]
    Health(NameJsonArgs),
    /// Measure the round trip to a VM's guest agent
    #[command(after_help = "\
Examples:
  banger vm ping dev                           prints the round trip, like `dev: 0.21 ms`")]
    Ping(NameJsonArgs),
    /// Copy a git checkout into a VM's work disk and back
    #[command(
        subcommand,
        arg_required_else_help = true,
        long_about = "\
A workspace is a git checkout copied into a VM's work disk (at /work/<its directory name> by \
default), so that builds and tests run in the VM on your code; `vm run` in a checkout imports \
it for you and starts in it. Edit on either side: status says which side changed, import \
sends the host's changes, export brings the VM's back (refusing to overwrite host edits \
unless --force).",
        after_help = "\
Examples:
  banger vm workspace import dev               copy this checkout into dev
  banger vm exec dev --cwd /work/app -- make   build it there
  banger vm workspace status dev               which side changed since the last sync?
  banger vm workspace export dev               copy the VM's changes back"
    )]
    Workspace(WorkspaceCommand),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON (an array) instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NameJsonArgs {
    /// The VM's name
    pub name: VmName,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VmNameArgs {
    /// The VM's name
    pub name: VmName,
}

#[derive(Debug, Args)]
pub struct VmShape {
    /// Image to boot from: a pulled image, a catalog name or an OCI reference (pulled first
    /// when it is not here yet); default: the catalog's default, debian
    #[arg(long)]
    pub image: Option<String>,
    /// Kernel to boot with (default: the image's kernel)
    #[arg(long)]
    pub kernel: Option<String>,
    /// Number of vCPUs
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory, like 2G or 512M (a bare number means MiB)
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<Size>,
    /// Work disk size, like 20G (a bare number means MiB)
    #[arg(long = "work-disk", visible_alias = "disk", value_name = "SIZE")]
    pub work_disk: Option<Size>,
    /// The VMM that runs it: firecracker, qemu, or auto (firecracker where KVM runs a stock
    /// guest, QEMU elsewhere; the config's vm.vmm, default auto). `vm show` says which and why
    #[arg(long, value_name = "VMM")]
    pub vmm: Option<VmmChoice>,
}

#[derive(Debug, Args)]
pub struct VmRunArgs {
    /// Name of the VM (default: a generated one)
    #[arg(long)]
    pub name: Option<VmName>,
    #[command(flatten)]
    pub shape: VmShape,
    /// Delete the VM when the shell or command ends (default: it keeps running)
    #[arg(long)]
    pub rm: bool,
    /// Run the command on a terminal in the VM, as `vm exec -t` does (the shell has one
    /// whenever stdin is a terminal); -tt even when stdin is not a terminal
    #[arg(short = 't', long = "tty", action = clap::ArgAction::Count)]
    pub tty: u8,
    /// Forward stdin to the command even when it is a terminal (a pipe or a file always is)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Do not import the git checkout of the current directory (by default, inside one, it
    /// is imported and the shell or command starts in it)
    #[arg(long)]
    pub no_workspace: bool,
    /// Command to run instead of a shell, after `--`
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VmCreateArgs {
    /// Name of the VM (default: a generated one)
    pub name: Option<VmName>,
    #[command(flatten)]
    pub shape: VmShape,
    /// Return as soon as the operation is accepted; follow it with `banger ops`
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct VmStopArgs {
    /// The VM's name
    pub name: VmName,
    /// How long the guest gets to power off before it is forced off, like 30s, 500ms or 2m
    /// (a bare number is seconds; 0 forces it off at once; at most 1h). Default: the
    /// configured timeouts.stop (15s unless config.toml says otherwise)
    #[arg(long, value_name = "DURATION", value_parser = parse_stop_timeout)]
    pub timeout: Option<std::time::Duration>,
}

/// A stop timeout as people type it: the config's duration syntax (`30s`, `5m`, a bare number
/// of seconds) plus milliseconds (`500ms`), which short test guests need and the config's
/// whole-second timeouts do not. The one-hour limit is the daemon's; it is checked here too
/// so that a typo fails before anything is sent.
fn parse_stop_timeout(text: &str) -> Result<std::time::Duration, String> {
    let duration = match text.trim().strip_suffix("ms") {
        Some(ms) => ms
            .parse::<u64>()
            .map(std::time::Duration::from_millis)
            .map_err(|_| format!("{text:?} is not a duration (expected e.g. 500ms, 30s, 2m)"))?,
        None => crate::config::parse_duration(text)?,
    };
    let max = std::time::Duration::from_millis(crate::api::MAX_STOP_TIMEOUT_MS);
    if duration > max {
        return Err(format!("{text:?} is longer than the limit of 1h"));
    }
    Ok(duration)
}

#[derive(Debug, Args)]
pub struct VmSetArgs {
    /// The VM's name
    pub name: VmName,
    /// Number of vCPUs
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory, like 2G or 512M (a bare number means MiB)
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<Size>,
    /// Work disk size, like 20G; disks only grow
    #[arg(long = "work-disk", visible_alias = "disk", value_name = "SIZE")]
    pub work_disk: Option<Size>,
}

#[derive(Debug, Args)]
pub struct VmExecArgs {
    /// The VM's name
    pub name: VmName,
    /// Set an environment variable for the command (repeatable)
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,
    /// Working directory in the guest (an absolute path; default: the guest user's home)
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Do not forward stdin: the command reads end of file at once. Stdin is forwarded when
    /// it is a pipe or a file, and when it is a terminal only with -i or -t
    #[arg(long = "no-stdin", conflicts_with_all = ["interactive", "tty"])]
    pub no_stdin: bool,
    /// Run the command on a terminal in the VM (a pseudo-terminal), for shells, editors and
    /// other interactive programs; this terminal is in raw mode meanwhile. Ignored, with a
    /// warning, when stdin is not a terminal; -tt asks for one anyway
    #[arg(short = 't', long = "tty", action = clap::ArgAction::Count)]
    pub tty: u8,
    /// Forward stdin even when it is a terminal (without -t the terminal reads lines and
    /// echoes them here, as for any program)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct VmSshArgs {
    /// The VM's name
    pub name: VmName,
    /// Extra arguments for ssh, after `--`
    #[arg(last = true, value_name = "SSH_ARGS")]
    pub ssh_args: Vec<String>,
}

const VM_SSH_LONG: &str = "\
Open an ssh session in a running VM, as root, with the system's ssh client: banger's own key \
(installed in the guest by its agent at every boot, never baked into the image), banger's own \
known_hosts (the guest's host key as recorded at its first boot: a changed key is refused, \
never trusted on first use), and a ProxyCommand that reaches port 22 of the guest through the \
guest agent. So it works without a route to the VM, without DNS and with no port open to any \
network. Arguments after `--` go to ssh: options, or a command to run.";

#[derive(Debug, Args)]
pub struct VmSshProxyArgs {
    /// The VM's name, or NAME.vm as ssh's %n gives it
    pub name: String,
    /// The guest port to connect to
    #[arg(long, default_value_t = 22)]
    pub port: u16,
}

#[derive(Debug, Args)]
pub struct VmLogsArgs {
    /// The VM's name
    pub name: VmName,
    /// Keep printing new console output until interrupted
    #[arg(short, long)]
    pub follow: bool,
    /// Start this far before the end of the console, like 4K (default: from its start)
    #[arg(long, value_name = "SIZE")]
    pub tail: Option<Size>,
}

/// Parses `--env K=V`: a non-empty name without `=`, and any value.
fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!(
            "expected NAME=VALUE (like RUST_LOG=debug), got {text:?}"
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Copy a git checkout (tracked and untracked, not ignored files) into the VM
    #[command(after_help = "\
Examples:
  banger vm workspace import dev                 this checkout, at /work/<its directory name>
  banger vm workspace import dev ~/src/app --guest-path /work/app

What goes: what `git ls-files --cached --others --exclude-standard` lists (tracked and \
untracked files, not ignored ones), with their permission bits; symlinks stay symlinks. It \
travels as a tar stream over the guest agent into the VM's work disk. Importing again sends \
only what changed (and deletes in the VM what the checkout no longer has); it refuses to \
overwrite files changed in the VM since the last sync unless --force. Recorded as the \
operation vm.workspace.import (see `banger events --vm dev`).")]
    Import(WorkspaceImportArgs),
    /// Copy the VM's workspace changes back into the checkout
    #[command(after_help = "\
Examples:
  banger vm workspace export dev                 into the checkout it was imported from
  banger vm workspace export dev --force         the VM's version wins over host edits

What comes back: every file the VM changed, added (unless the checkout ignores it) or \
deleted since the import. A file also changed on the host since the import is a conflict: \
the export is refused and names them all, unless --force. Files deleted in the VM are \
deleted on the host. The VM's files are checked on the way in (no `..`, no absolute paths, \
no symlinks out of the checkout, no devices, at most 1 GiB a file) and written beside the \
checkout first, then renamed into place.")]
    Export(WorkspaceExportArgs),
    /// Compare the VM's workspace with the checkout: in sync, guest ahead, host ahead, or both
    #[command(after_help = "\
Examples:
  banger vm workspace status dev
  banger vm workspace status dev --json")]
    Status(WorkspaceStatusArgs),
}

#[derive(Debug, Args)]
pub struct WorkspaceImportArgs {
    /// The VM's name
    pub name: VmName,
    /// A directory in the git checkout (default: the current directory)
    pub path: Option<PathBuf>,
    /// Where in the VM (an absolute path; default: /work/<the checkout's directory name>)
    #[arg(long, value_name = "DIR")]
    pub guest_path: Option<String>,
    /// Overwrite files changed in the VM since the last sync
    #[arg(long)]
    pub force: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WorkspaceExportArgs {
    /// The VM's name
    pub name: VmName,
    /// The checkout (default: the one the workspace was imported from)
    pub path: Option<PathBuf>,
    /// Overwrite host files changed since the import
    #[arg(long)]
    pub force: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WorkspaceStatusArgs {
    /// The VM's name
    pub name: VmName,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

// ---- image ------------------------------------------------------------------------------------

const IMAGE_LONG: &str = "\
Images are the root filesystems VMs boot from (ext4 files). Register one you built, pull one \
from the catalog or from any OCI registry, and name the kernel it boots with.";

const IMAGE_AFTER: &str = "\
The 80% command:
  banger image pull debian           Debian 12 from the catalog (what `vm run` boots by default)

What comes next:
  banger image list                  what you can boot from (--available: the catalog)
  banger image pull docker.io/library/alpine:3.20      any OCI image; the agent is put in it
  banger image show debian           its source, digest, size and kernel
  banger vm create dev --image debian
  banger vm stop dev && banger image promote dev --name dev-golden   keep a VM's disk
  banger image register dev-rootfs --rootfs ./rootfs.ext4 --kernel vmlinux-6.1
  banger image delete dev-rootfs     forget it and remove banger's copy
  banger image cache prune           free the downloaded layers (pulled images stay)";

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images: name, size, kernel, source, digest, age (--available: the catalog)
    #[command(after_help = "\
Examples:
  banger image list
  banger image list --available          the catalog, with a STATE column
  banger image list --json | jq -r '.[].name'")]
    List(ImageListArgs),
    /// Show one image
    #[command(after_help = "\
Examples:
  banger image show debian
  banger image show debian --json")]
    Show(ImageShowArgs),
    /// Register an ext4 root filesystem file as an image (banger keeps its own copy)
    #[command(after_help = "\
Examples:
  banger image register debian --rootfs ./debian.ext4
  banger image register debian --rootfs ./debian.ext4 --kernel vmlinux-6.1")]
    Register(ImageRegisterArgs),
    /// Forget an image and remove banger's copy of it (VMs made from it keep their disks)
    Delete(ImageNameArgs),
    /// Pull an image from the catalog or an OCI registry
    #[command(after_help = "\
A catalog name (see `banger image list --available`) or any OCI reference. Layers are cached \
by digest (a second pull downloads nothing), flattened into an ext4 root filesystem with the \
guest agent in it, and registered. Progress goes to stderr: a bar on a terminal, lines \
otherwise; --json prints each progress item and the result as JSON lines on stdout.

Examples:
  banger image pull debian                              from banger's catalog
  banger image pull docker.io/library/debian:12 --name debian12
  banger image pull 127.0.0.1:5000/team/app:1 --kernel debian-12-cloud
  banger image pull debian --json | tail -n 1 | jq .image.source")]
    Pull(ImagePullArgs),
    /// Save a stopped VM's root disk as a new image
    #[command(after_help = "\
Examples:
  banger vm stop dev && banger image promote dev --name dev-golden")]
    Promote(ImagePromoteArgs),
    /// Manage the download cache of OCI layers
    #[command(subcommand, arg_required_else_help = true)]
    Cache(ImageCacheCommand),
}

#[derive(Debug, Args)]
pub struct ImageShowArgs {
    /// The image's name
    pub name: String,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImageNameArgs {
    /// The image's name
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ImageRegisterArgs {
    /// Name for the image
    pub name: String,
    /// The ext4 root filesystem file; banger copies it into its image store
    #[arg(long, value_name = "FILE")]
    pub rootfs: PathBuf,
    /// Registered kernel the image boots with by default (see `banger kernel list`)
    #[arg(long)]
    pub kernel: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImageListArgs {
    /// List the image catalog instead, with a STATE column (pulled, available)
    #[arg(long)]
    pub available: bool,
    /// Print JSON (an array) instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImagePullArgs {
    /// Catalog name, or an OCI reference like docker.io/library/debian:12
    pub reference: String,
    /// Name to register the image under (default: the catalog name, else the repository's
    /// last part and its tag: debian-12)
    #[arg(long)]
    pub name: Option<String>,
    /// Kernel the image boots with (default: the catalog entry's, else the catalog's default)
    #[arg(long)]
    pub kernel: Option<String>,
    /// Print progress and the result as JSON lines
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImagePromoteArgs {
    /// The stopped VM whose root disk becomes the image
    pub vm: VmName,
    /// Name for the new image
    #[arg(long)]
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum ImageCacheCommand {
    /// Delete cached OCI layer blobs; prints `freed 1.2 GiB across 47 blob(s) in DIR`
    #[command(after_help = "\
Examples:
  banger image cache prune --dry-run           what would be freed
  banger image cache prune")]
    Prune(CachePruneArgs),
}

#[derive(Debug, Args)]
pub struct CachePruneArgs {
    /// Only say what would be freed
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

// ---- kernel -----------------------------------------------------------------------------------

const KERNEL_LONG: &str = "\
Kernels are the guest kernels VMs boot with: bundles of an uncompressed vmlinux, an initrd whose \
init loads the virtio modules and hands over to the image (or to the banger agent), and the \
modules. Pull one from banger's kernel catalog (Debian's cloud kernel, converted on this host), or \
import one you built. A VM whose image names no kernel boots the default, debian-12-cloud, \
pulled on first use.";

const KERNEL_AFTER: &str = "\
The 80% command:
  banger kernel pull debian-12-cloud  Debian 12's cloud kernel, made into a bundle here

What comes next:
  banger kernel list                 the kernels you can boot with
  banger kernel list --available     what the catalog offers, and what you pulled
  banger kernel show debian-12-cloud its files, version and sha256
  banger kernel import my-6.6 --from ./build/kernel      a bundle, or vmlinux/vmlinuz + initrd
  banger image register dev --rootfs ./dev.ext4 --kernel debian-12-cloud
  banger kernel rm my-6.6            forget it and remove banger's copy

Offline or behind a proxy: `[kernels] mirror = \"http://HOST:PORT/\"` in config.toml rewrites the \
catalog's URLs (the pinned sha256 still has to match).";

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// List kernels: name, version, initrd, source, age (--available: the catalog)
    #[command(after_help = "\
Examples:
  banger kernel list
  banger kernel list --available               NAME VERSION KIND SIZE STATE (pulled/available/other)
  banger kernel list --json | jq -r '.[].name'")]
    List(KernelListArgs),
    /// Show one kernel
    #[command(after_help = "\
Examples:
  banger kernel show vmlinux-6.1
  banger kernel show vmlinux-6.1 --json")]
    Show(KernelShowArgs),
    /// Copy a kernel (a bundle, or vmlinux/vmlinuz, initrd, modules) from a directory into banger's store
    #[command(after_help = "\
What is looked for in the directory, first match wins:
  manifest.json        a banger bundle (kernel pull's, tools/kernel-bundle --keep-dir's): copied whole
  metadata.json        {\"kernel\": PATH, \"initrd\": PATH, \"modules\": DIR, \"version\": TEXT}
  by name, there or in boot/: vmlinux, vmlinux-<ver>, else vmlinuz-<ver> (its ELF kernel is
  extracted); initrd.img, initrd.img-<ver>, initramfs-<ver>; lib/modules/<ver>

Examples:
  banger kernel import my-6.6 --from ./build/kernel
  banger kernel import alpine-virt --from ./alpine-kernel      boot/vmlinuz-*, boot/initramfs-*")]
    Import(KernelImportArgs),
    /// Forget a kernel and remove banger's copy of it
    #[command(visible_alias = "remove")]
    Rm(KernelNameArgs),
    /// Download a kernel from banger's catalog (a Debian package is made into a bundle here)
    #[command(after_help = "\
The download's sha256 is checked against the catalog's pin before anything is kept. Progress \
goes to stderr; the last line says where the kernel is.

Examples:
  banger kernel list --available               what the catalog offers
  banger kernel pull debian-12-cloud
  banger kernel pull debian-12-cloud --force   replace it (not while a VM that boots it runs)")]
    Pull(KernelPullArgs),
}

#[derive(Debug, Args)]
pub struct KernelListArgs {
    /// Print JSON (an array) instead of a table
    #[arg(long)]
    pub json: bool,
    /// List the catalog's kernels, pulled or not
    #[arg(long)]
    pub available: bool,
}

#[derive(Debug, Args)]
pub struct KernelShowArgs {
    /// The kernel's name
    pub name: String,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KernelNameArgs {
    /// The kernel's name
    pub name: String,
}

#[derive(Debug, Args)]
pub struct KernelImportArgs {
    /// Name for the kernel
    pub name: String,
    /// Directory holding vmlinux (and optionally initrd.img)
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
}

#[derive(Debug, Args)]
pub struct KernelPullArgs {
    /// Catalog name of the kernel (see `banger kernel list --available`)
    pub name: String,
    /// Replace a kernel of the same name (refused while a VM that boots it runs)
    #[arg(long)]
    pub force: bool,
    /// Print the pulled kernel as JSON, without progress
    #[arg(long)]
    pub json: bool,
}

// ---- events and ops ---------------------------------------------------------------------------

const EVENTS_LONG: &str = "\
Every step banger takes (operations and their steps, VMs, images, kernels, host resources, \
daemon starts) is a numbered event in an append-only log. `banger events` prints it through \
bangerd, from any sequence number or time, without gaps or repeats; --follow keeps printing new \
events until Ctrl-C, and when bangerd stops or restarts it says so and waits for it, then goes on \
after the last event it printed (--no-reconnect ends instead). `banger events replay` rebuilds the views from a log file offline, without bangerd.

Each line: SEQ  TIME (UTC)  OP (first 8 hex digits of the operation id)  EVENT  SUMMARY.";

const EVENTS_AFTER: &str = "\
The 80% command:
  banger events --follow             watch what banger does, as it happens

What comes next:
  banger events --since 120          everything after event 120
  banger events --since 10m          what happened in the last ten minutes
  banger events --op 3f2a19c4        one operation's events (an id prefix from `banger ops`)
  banger events --vm dev --json      one VM's events, one JSON object per line
  banger events replay --log ./events.redb --until 120      the views as they were at 120
  banger events repair               after damage: keep the intact events, keep the damaged file";

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: Option<EventsCommand>,
    #[command(flatten)]
    pub filter: EventsFilterArgs,
}

#[derive(Debug, Args)]
pub struct EventsFilterArgs {
    /// Keep printing new events until interrupted (Ctrl-C)
    #[arg(short, long)]
    pub follow: bool,
    /// Start after this sequence number, or at a time: how long ago (10m, 2h, 1d) or an RFC
    /// 3339 timestamp (2026-04-28T19:32:57Z); default: from the first event
    #[arg(long, value_name = "SEQ|AGO|TIME", value_parser = parse_since)]
    pub since: Option<Since>,
    /// With --follow: end when bangerd stops instead of waiting for it to come back
    #[arg(long, requires = "follow")]
    pub no_reconnect: bool,
    /// Only the events of this operation (its id, or a unique prefix of it)
    #[arg(long, value_name = "ID")]
    pub op: Option<String>,
    /// Only the events about the VM of this name
    #[arg(long, value_name = "NAME")]
    pub vm: Option<VmName>,
    /// Print one JSON envelope per line instead of text
    #[arg(long)]
    pub json: bool,
}

/// Where `--since` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// After this sequence number.
    Seq(u64),
    /// Events recorded in the last this many milliseconds.
    Ago { ms: u64 },
    /// Events recorded at or after this time (milliseconds since the Unix epoch).
    At { unix_ms: u64 },
}

fn parse_since(text: &str) -> Result<Since, String> {
    use super::format::{parse_duration_ms, parse_timestamp};
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Since::Seq)
            .map_err(|_| format!("{text} is too large for a sequence number"));
    }
    if let Some(ms) = parse_duration_ms(text) {
        return Ok(Since::Ago { ms });
    }
    if let Some(unix_ms) = parse_timestamp(text) {
        return Ok(Since::At { unix_ms });
    }
    Err(format!(
        "{text:?} is neither a sequence number (120), a time ago (10m, 2h, 1d, 1h30m) nor an RFC 3339 timestamp (2026-04-28T19:32:57Z)"
    ))
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Rebuild the views from a log file offline, up to a sequence number
    #[command(
        long_about = "\
Rebuild the VM, image, kernel, handle and operation views from an event log file, offline: no \
bangerd is involved, so a log copied from another machine, or cut at any event, replays the \
same way every time. The file must not be open in a running bangerd (redb allows one process \
per file): replay a copy, or stop bangerd first. A copy made while bangerd runs holds the events \
up to its last checkpoint (it makes one after a moment without new events, and when it stops); \
the newest ones are still only in events.redb.wal beside it, which must not be copied while \
bangerd writes it. After bangerd was killed, copy both files (and replay the copy of \
events.redb: its .wal is read with it).",
        after_help = "\
Examples:
  cp ~/.local/state/banger/events.redb /tmp/events.redb
  banger events replay --log /tmp/events.redb
  banger events replay --log /tmp/events.redb --until 120 --json"
    )]
    Replay(ReplayArgs),
    /// Go on from a damaged log: keep its intact events in a new log, keep the damaged file
    #[command(
        long_about = "\
When the event log is damaged (a flipped bit, a file cut short), bangerd names the first bad \
sequence number and refuses every write from then on. `banger events repair` is the way on: it \
keeps every intact event before the damage in a new log, records a log_repaired event at the \
first lost sequence number (the lost range, the reason, where the damaged file went), and keeps \
the damaged file byte for byte beside the log as events.redb.damaged-<UTC time> (and its \
write-ahead file as events.redb.damaged-<UTC time>.wal). A log with \
nothing wrong is left alone.

bangerd must be stopped: the command refuses while one runs, and no bangerd can start until it \
is done. Afterwards bangerd starts normally and rolls back (or finishes) the operations whose \
ends were lost, as after any crash; `banger doctor` lists host resources they left behind.",
        after_help = "\
Examples:
  banger events repair --dry-run     what would be kept and what is lost; changes nothing
  banger events repair               repair, keeping the damaged file
  banger events --since 40           the events around the repair (log_repaired says what was lost)"
    )]
    Repair(RepairArgs),
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Only say what is damaged and what a repair would keep; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The redb event log file
    #[arg(long, value_name = "FILE")]
    pub log: PathBuf,
    /// Stop after this sequence number (default: the whole log)
    #[arg(long, value_name = "SEQ")]
    pub until: Option<u64>,
    /// Print one JSON object with every view instead of tables
    #[arg(long)]
    pub json: bool,
}

const OPS_LONG: &str = "\
Operations are the multi-step things banger does (vm.create, image.register, kernel.import…). \
`banger ops` lists the ones in flight, and the stuck ones (an undo failed: they need a look), \
with the step each is on. `banger update` refuses to run while this list is not empty. A stuck \
operation blocks its target (VM, image, kernel, the image cache) until `banger ops retry` runs \
its undos again.";

const OPS_AFTER: &str = "\
The 80% command:
  banger ops                         what is in flight right now

What comes next:
  banger ops --all                   finished operations too
  banger events --op 3f2a19c4        every event of one operation
  banger ops retry 3f2a19c4          undo a stuck operation again, once its cause is fixed
  banger ops --json                  for scripts";

#[derive(Debug, Args)]
pub struct OpsArgs {
    #[command(subcommand)]
    pub command: Option<OpsCommand>,
    /// Include finished operations
    #[arg(long)]
    pub all: bool,
    /// Print JSON (an array) instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Run the undos of a stuck operation again (after fixing what made one fail)
    #[command(long_about = "\
Run the pending undos of a stuck operation again, newest first, with the handles the event log \
recorded. If they all succeed the operation ends rolled back, exactly as if its first rollback \
had worked, and its target is no longer blocked; if one fails again it stays stuck with the new \
error. Undos are idempotent, so retrying is always safe.")]
    Retry(OpsRetryArgs),
}

#[derive(Debug, Args)]
pub struct OpsRetryArgs {
    /// The operation's id, or a prefix of it as `banger ops` prints it
    #[arg(value_name = "OP_ID")]
    pub op: String,
}

// ---- system, doctor, update, ssh-config, version ----------------------------------------------

const SYSTEM_LONG: &str = "\
Run bangerd and banger-helper as systemd services, so that VMs outlive your terminal and no \
command needs sudo. bangerd runs as you (the owner), with the same state, images and VMs as \
when banger starts it for you; banger-helper, a narrow root helper, makes the bridge, the taps \
and the NAT for it and answers only your uid. Both units are hardened (a capability bounding set \
limited to what the helper uses, a read-only system, no new privileges, …); `banger system \
status` and `banger doctor` say when a unit on disk is not what install writes.

install (as root) writes /etc/systemd/system/bangerd.service and banger-helper.service and \
/etc/banger/install.json (who owns it, which programs, which files), then enables and starts \
both. The programs must be where only root can write (banger-helper runs as root): install them \
in /usr/local/bin first. Where systemd does not run, install writes everything, says the command \
that starts the services, and exits with status 3. Without a system install, banger starts \
bangerd in user mode on demand.";

const SYSTEM_AFTER: &str = "\
The 80% command:
  sudo banger system install         install and start both services (bangerd runs as $SUDO_USER)

What comes next:
  banger system status               what is installed, drift of the unit files, service state
  banger doctor                      the whole host, the installed units' hardening included
  sudo banger system restart         after changing config.toml (running VMs keep running)
  sudo banger system uninstall       remove the services (your VMs, images and log stay)

Examples:
  sudo install -m 0755 ~/.cargo/bin/banger ~/.cargo/bin/bangerd ~/.cargo/bin/banger-helper /usr/local/bin/
  sudo /usr/local/bin/banger system install --owner alice
  sudo banger system install --no-start       write the units, start nothing
  banger system status --json";

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Install (or update) and start the bangerd and banger-helper services (as root)
    Install(SystemInstallArgs),
    /// Show what is installed, whether the unit files drifted, and the services' state
    Status(SystemStatusArgs),
    /// Restart banger-helper, then bangerd (running VMs keep running)
    Restart,
    /// Stop and remove the services (VMs, images and the event log stay)
    Uninstall(SystemUninstallArgs),
}

#[derive(Debug, Args)]
pub struct SystemInstallArgs {
    /// The user bangerd runs as (default: the user who ran sudo, $SUDO_USER)
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
    /// Where to write the unit files (default: /etc/systemd/system)
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
    /// Write the units and the metadata, but do not enable or start the services
    #[arg(long)]
    pub no_start: bool,
    /// The owner's network, BRIDGE:GATEWAY/PREFIX (default: banger0:172.30.0.1/24); must match
    /// `network.bridge` and `network.gateway` in the owner's config.toml
    #[arg(long, value_name = "BRIDGE:GATEWAY/PREFIX")]
    pub network: Option<String>,
    /// Firecracker's jailer: banger-helper then starts each VM's Firecracker through it, as the
    /// owner in a chroot, so bangerd needs no access to /dev/kvm or /dev/net/tun
    #[arg(long, value_name = "PATH")]
    pub jailer: Option<PathBuf>,
    /// The firecracker the jailer runs (default: `firecracker` beside the jailer)
    #[arg(long, value_name = "PATH", requires = "jailer")]
    pub firecracker: Option<PathBuf>,
    /// Where the jails go; on the filesystem of the owner's home (default:
    /// /var/lib/banger-jail)
    #[arg(long, value_name = "DIR", requires = "jailer")]
    pub jail_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SystemStatusArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SystemUninstallArgs {
    /// Uninstall even though VMs are running (they keep running, with no daemon, and so do
    /// their bridge, taps and NAT)
    #[arg(long)]
    pub force: bool,
    /// Also remove the owner's VMs, images, kernels, event log, download cache and config
    #[arg(long, conflicts_with = "force")]
    pub purge: bool,
}

const DOCTOR_LONG: &str = "\
Check banger's host and state, one line per check, each failure with what to do about it; \
--fix repairs what a check can repair itself; the exit status is 1 when something is wrong. \
The checks: orphans, host resources that carry banger's names (taps, VM, kernel and image \
directories, VMM processes) but that the event log does not know, as a repaired log or a \
hand-made leftover leaves them (--fix removes them and records each removal in the log); vmm, \
which VMM new VMs get and why (KVM that runs stock guests and firecracker, else QEMU; fails when \
neither can run a VM); firecracker, firecracker and its jailer present and at least 1.8 (only \
information where new VMs run on QEMU); disk, free space where banger keeps its state and \
whether root disks there are reflink clones or sparse copies; defaults, the default image and \
its kernel, here or pulled on first use from the catalogs; dns, bangerd's server for NAME.vm and \
whether the host resolves .vm too; ssh, the client `banger vm ssh` runs; posture, bangerd's \
socket and state directory modes and, after `banger system install`, whether the installed \
units are what install writes (their hardening, the helper's --allow-uid).";

const DOCTOR_AFTER: &str = "\
Examples:
  banger doctor                      every check, one line each
  banger doctor --fix                remove the orphans it lists (each removal is an event)
  banger doctor --json               for scripts: {\"ok\": …, \"checks\": […]}

What comes next:
  sudo banger system install         run bangerd and its helper as hardened systemd services";

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
    /// Repair what the checks can repair (today: remove orphans)
    #[arg(long)]
    pub fix: bool,
}

const UPDATE_LONG: &str = "\
Install the latest release of banger in place of this one: fetch the release manifest and its \
signature, verify the signature (ECDSA P-256, as `cosign sign-blob` makes it) against the key \
built into banger, download the tarball checking its sha256, refuse while any operation is in \
flight (see `banger ops`), swap the four programs atomically and restart bangerd. Running VMs \
keep running: the new bangerd re-adopts them. If the new bangerd is not healthy, the previous \
programs are put back and the previous bangerd started again.";

const UPDATE_AFTER: &str = "\
Examples:
  banger update --check              is there a newer release?
  banger update                      install it
  banger update --manifest-url https://mirror.example/banger/manifest.json

A build without a release key (BANGER_RELEASE_PUBLIC_KEY at build time; `cargo install` \
builds have none) refuses to update: install a release build, or update by hand.";

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Only say whether a newer release exists
    #[arg(long)]
    pub check: bool,
    /// Where the release manifest is (its signature is at the same URL plus .sig)
    #[arg(long, value_name = "URL", env = "BANGER_UPDATE_URL")]
    pub manifest_url: Option<String>,
}

const SSH_CONFIG_LONG: &str = "\
Print (or, with --write, install) an ssh client entry for every banger VM: `Host *.vm` with \
banger's key, banger's known_hosts (kept current by bangerd as VMs come, record their host \
keys and go), strict host key checking, and `ProxyCommand banger vm ssh-proxy %n`, which \
reaches port 22 of the guest through its agent. Then `ssh dev.vm`, scp, `rsync -e ssh` and \
VS Code's Remote-SSH reach every VM, with no port open to any network and no DNS needed.

--write puts the entry in banger's own file (ssh/config in banger's config directory) and adds \
one marked `Include` line at the top of ~/.ssh/config (made, 0600, when missing); running it \
again changes nothing, and the rest of ~/.ssh/config is kept byte for byte.";

const SSH_CONFIG_AFTER: &str = "\
Examples:
  banger ssh-config                  print the entry
  banger ssh-config --write          install it (once is enough: the entry covers every VM)
  ssh dev.vm                         then: a shell in the VM called dev
  scp notes.txt dev.vm:/work/        copy a file into it
  rsync -a -e ssh ./src/ dev.vm:/work/src/

What comes next:
  banger vm ssh dev                  the same ssh session without touching ~/.ssh/config";

#[derive(Debug, Args)]
pub struct SshConfigArgs {
    /// Write the entry into banger's ssh config and include it from ~/.ssh/config (default:
    /// print it)
    #[arg(long)]
    pub write: bool,
}

const DASHBOARD_LONG: &str = "\
bangerd serves a small web dashboard on 127.0.0.1: your VMs (state, resources, the operation in \
flight and its step), each VM's spec, host resources, operations and console, images, kernels, \
operations, and the event log as it grows. Pages update themselves from the log. A VM can be \
stopped, started, restarted or deleted from its page.

Signing in takes the secret token bangerd keeps in its state directory (dashboard.token, readable \
only by you): this command prints a sign-in link that carries it, or opens the link in your \
browser. Treat the link like a password. The port is `[dashboard] port` in config.toml (7707 by \
default; `enabled = false` turns the dashboard off).";

const DASHBOARD_AFTER: &str = "\
Examples:
  banger dashboard                   print the dashboard's address and a sign-in link
  banger dashboard --open            open the sign-in link in your browser (xdg-open)
  banger dashboard --json            {\"url\":…,\"login_url\":…,\"port\":…}

What comes next:
  banger events --follow             the same event log, in the terminal";

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Open the sign-in link in your web browser (with xdg-open) instead of printing it
    #[arg(long, conflicts_with = "json")]
    pub open: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        // clap checks its own invariants (conflicting names, bad defaults) in debug_assert.
        Cli::command().debug_assert();
    }

    #[test]
    fn near_twin_verbs_are_told_apart() {
        let command = Cli::command();
        let vm = command.find_subcommand("vm").expect("vm group");
        let about = |name: &str| {
            vm.find_subcommand(name)
                .and_then(|c| c.get_about())
                .map(|a| a.to_string())
                .unwrap_or_default()
        };
        assert_eq!(about("start"), "Start a stopped VM");
        assert_eq!(about("stop"), "Stop a running VM gracefully");
        assert_eq!(about("restart"), "Stop then start a VM");
        assert_eq!(about("kill"), "Force-kill a VM (use when 'vm stop' hangs)");
        assert_eq!(
            about("delete"),
            "Stop a VM and remove its disks (irreversible)"
        );
    }

    #[test]
    fn sizes_and_names_are_validated_while_parsing() {
        let error = Cli::try_parse_from(["banger", "vm", "create", "dev", "--memory", "4Q"])
            .expect_err("bad size");
        assert!(error.to_string().contains("unknown unit"), "{error}");
        let error =
            Cli::try_parse_from(["banger", "vm", "show", "Bad_Name"]).expect_err("bad name");
        assert!(error.to_string().contains("DNS label"), "{error}");
        let parsed = Cli::try_parse_from(["banger", "vm", "create", "dev", "--memory", "4G"])
            .expect("good size");
        match parsed.command {
            Command::Vm(VmCommand::Create(args)) => {
                assert_eq!(args.shape.memory, Some(Size(4 << 30)))
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn stop_timeouts_read_like_the_config_plus_milliseconds() {
        use std::time::Duration;
        for (text, expected) in [
            ("30s", Duration::from_secs(30)),
            ("2m", Duration::from_secs(120)),
            ("15", Duration::from_secs(15)),
            ("500ms", Duration::from_millis(500)),
            ("0", Duration::ZERO),
            ("1h", Duration::from_secs(3600)),
        ] {
            assert_eq!(parse_stop_timeout(text), Ok(expected), "{text}");
        }
        for bad in ["61m", "2h", "5x", "ms", "-1s", "1.5s"] {
            assert!(parse_stop_timeout(bad).is_err(), "{bad}");
        }
        let parsed = Cli::try_parse_from(["banger", "vm", "restart", "dev", "--timeout", "250ms"])
            .expect("restart takes a timeout too");
        match parsed.command {
            Command::Vm(VmCommand::Restart(args)) => {
                assert_eq!(args.timeout, Some(Duration::from_millis(250)))
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
