//! `banger vm`: every VM verb that works today. Lifecycle verbs (create, start, stop, restart,
//! kill, delete, set) are plain calls to bangerd's operations, except `create`, which also
//! follows the operation's events to show each stage as it starts. Guest verbs (exec, logs,
//! health, ping) go through bangerd to the VM's guest agent or console; exec and logs are
//! streams whose bytes are written to stdout and stderr exactly as they arrive. `run` is
//! create (showing its stages and their times), then a shell or a command through exec.
//!
//! An exec either runs on pipes in the guest, or on a terminal there (`-t`, and `vm run`'s
//! shell), decided as ssh decides it ([`Io::choose`]). On a terminal, this terminal is in raw
//! mode for as long as the command runs ([`super::terminal`]), its size follows the command
//! (SIGWINCH), and the signals that would end banger are passed on to the command instead:
//!
//! ```text
//!  stdin (raw) ─thread─▶ chunks ─┐
//!  SIGWINCH ──────────▶ resize ──┼─▶ input task ─▶ {"data"} {"resize"} {"signal"} lines ─▶ bangerd
//!  SIGINT/TERM/HUP/QUIT ▶ signal ┘        (a second SIGTERM or SIGHUP: banger ends, 128 + N)
//!  stdout ◀──────────────────────────── output items ◀──────────────────────────────── bangerd
//! ```
//!
//! `stats` and `ports` live in [`super::stats`], `ssh` and `ssh-proxy` in [`super::ssh`],
//! `workspace` in [`super::workspace`].

use std::io::{IsTerminal, Read, Write};
use std::time::{Duration, Instant};

use banger_events::{Envelope, Event, Handle, OpId};

use super::args::{
    ListArgs, NameJsonArgs, VmCommand, VmCreateArgs, VmExecArgs, VmLogsArgs, VmNameArgs, VmRunArgs,
    VmSetArgs, VmShape, VmStopArgs,
};
use super::connect::{call, connect};
use super::error::CliError;
use super::format::{now_unix_ms, short_id};
use super::kernel_progress::{PullDisplay, Sink};
use super::output::{json, line, out};
use super::terminal;
use super::views::{When, handle_table, operation_table, vm_details, vm_table};
use crate::api::{
    EXEC_STDIN_CHUNK_BYTES, EventsParams, ExecStream, ImageCatalogResult, ImagePullParams,
    ImageView, NameParams, PingResult, VmCreateParams, VmCreateResult, VmDeleteResult, VmExecInput,
    VmExecItem, VmExecParams, VmExecResize, VmExecResult, VmExecTty, VmHealthResult, VmListResult,
    VmLogsItem, VmLogsParams, VmName, VmPingResult, VmResult, VmSetParams, VmShowResult,
    VmStopParams,
};
use crate::rpc::{ClientError, ErrorCode, StreamEvent, StreamInput};
use crate::size::{Size, format_bytes};

/// After `vm.create` answered, how long the progress display keeps reading the operation's
/// events to print the stages it has not shown yet. They are already committed, so this is
/// only a bound for a daemon that stopped streaming.
const PROGRESS_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

const MIB: u64 = 1 << 20;

pub async fn run(command: VmCommand) -> Result<(), CliError> {
    match command {
        VmCommand::List(args) => list(args).await,
        VmCommand::Show(args) => show(args).await,
        VmCommand::Create(args) => create(args).await,
        VmCommand::Start(args) => lifecycle("vm.start", args).await,
        VmCommand::Stop(args) => stop("vm.stop", args).await,
        VmCommand::Restart(args) => stop("vm.restart", args).await,
        VmCommand::Kill(args) => lifecycle("vm.kill", args).await,
        VmCommand::Delete(args) => delete(args).await,
        VmCommand::Set(args) => set(args).await,
        VmCommand::Logs(args) => logs(args).await,
        VmCommand::Exec(args) => exec(args).await,
        VmCommand::Health(args) => health(args).await,
        VmCommand::Ping(args) => ping(args).await,
        VmCommand::Run(args) => run_vm(args).await,
        VmCommand::Stats(args) => super::stats::stats(args).await,
        VmCommand::Ports(args) => super::stats::ports(args).await,
        VmCommand::Workspace(command) => super::workspace::run(command).await,
        VmCommand::Ssh(args) => super::ssh::vm_ssh(args).await,
        VmCommand::SshProxy(args) => super::ssh::vm_ssh_proxy(args).await,
    }
}

async fn list(args: ListArgs) -> Result<(), CliError> {
    let result: VmListResult = call("vm.list", &serde_json::json!({})).await?;
    if args.json {
        return json(&result.vms);
    }
    if result.vms.is_empty() {
        return line("no VMs");
    }
    out(vm_table(
        &result.vms,
        When::Age {
            now_unix_ms: now_unix_ms(),
        },
    )
    .render())
}

async fn show(args: NameJsonArgs) -> Result<(), CliError> {
    let params = NameParams {
        name: args.name.to_string(),
    };
    let result: VmShowResult = call("vm.show", &params).await?;
    if args.json {
        return json(&result);
    }
    let now = now_unix_ms();
    let mut text = vm_details(&result.vm, now);
    if let Some(ssh) = &result.ssh {
        // Aligned with the details above (their longest label is "work disk").
        text.push_str(&format!(
            "{:<11}{}\n",
            "ssh:",
            super::ssh::status_text(&result.vm.name, ssh)
        ));
    }
    text.push_str("\nhost resources:\n");
    if result.handles.is_empty() {
        text.push_str("  none\n");
    } else {
        let rows = result
            .handles
            .iter()
            .map(|entry| (&entry.handle, entry.view.owner, entry.view.acquired_seq));
        text.push_str(&indent(&handle_table(rows, None).render()));
    }
    text.push_str("\noperations:\n");
    if result.operations.is_empty() {
        text.push_str("  none\n");
    } else {
        text.push_str(&indent(
            &operation_table(&result.operations, When::Age { now_unix_ms: now }).render(),
        ));
    }
    out(text)
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

// ---- lifecycle --------------------------------------------------------------------------------

/// A size flag in whole MiB, the unit the daemon takes. Rounded up, so `--memory 1500K` is
/// 2 MiB rather than silently nothing.
fn mib(flag: &str, size: Option<Size>) -> Result<Option<u64>, CliError> {
    match size {
        None => Ok(None),
        Some(Size(0)) => Err(CliError::Usage(format!("{flag} must be more than 0"))),
        Some(Size(bytes)) => Ok(Some(bytes.div_ceil(MIB))),
    }
}

/// A name for a VM created without one: `vm-` and six hex digits from the clock and pid, so
/// two CLIs started in the same instant still differ.
fn generated_name() -> VmName {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = nanos ^ std::process::id().rotate_left(16);
    // Always a valid DNS label: a fixed prefix and hex digits.
    VmName::parse(&format!("vm-{:06x}", mixed & 0xff_ffff))
        .unwrap_or_else(|_| VmName::parse("vm-new").expect("a constant, valid VM name"))
}

/// Where progress lines go: stdout for `vm create` (they are its output), stderr for
/// `vm run` (stdout belongs to the shell or the command).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Report {
    Stdout,
    Stderr,
}

/// How a create's progress shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// Each step of the operation as it starts, on stdout (`vm create`).
    Steps,
    /// The stages `vm run` waits for and how long each took, on stderr.
    Stages,
}

impl Style {
    fn report(self) -> Report {
        match self {
            Style::Steps => Report::Stdout,
            Style::Stages => Report::Stderr,
        }
    }
}

impl Report {
    fn line(self, text: String) -> Result<(), CliError> {
        match self {
            Report::Stdout => line(text),
            Report::Stderr => write_raw(ExecStream::Stderr, format!("{text}\n").as_bytes()),
        }
    }
}

/// The `vm.create` parameters for a VM shape given on the command line. The image (default:
/// the catalog's default image) is pulled first when it is not here: `--image` may name a
/// pulled image, a catalog entry or an OCI reference.
async fn create_params(
    name: &VmName,
    shape: VmShape,
    no_wait: bool,
    report: Report,
) -> Result<VmCreateParams, CliError> {
    // Usage errors first: nothing is pulled for a request that cannot be made.
    let memory_mib = mib("--memory", shape.memory)?;
    let work_disk_mib = mib("--work-disk", shape.work_disk)?;
    let wanted = match shape.image {
        Some(image) => image,
        None => {
            let catalog: ImageCatalogResult = call("image.catalog", &serde_json::json!({})).await?;
            catalog.default_image
        }
    };
    // Its kernel, when not here yet, is pulled by bangerd as part of the create (`vm.create`
    // streams that pull's progress).
    let image = ensure_image(&wanted, report).await?.name;
    Ok(VmCreateParams {
        name: name.to_string(),
        image,
        kernel: shape.kernel,
        vcpus: shape.cpus,
        memory_mib,
        work_disk_mib,
        vmm: shape.vmm,
        no_wait,
        progress: false,
    })
}

/// The image `wanted` names: a pulled image, or else pulled now (a catalog entry or an OCI
/// reference), with its progress on stderr.
async fn ensure_image(wanted: &str, report: Report) -> Result<ImageView, CliError> {
    let shown: Result<ImageView, CliError> = call(
        "image.show",
        &NameParams {
            name: wanted.to_owned(),
        },
    )
    .await;
    match shown {
        Ok(image) => return Ok(image),
        Err(error) if error.rpc_code() == Some(ErrorCode::NotFound) => {}
        Err(error) => return Err(error),
    }
    let params = ImagePullParams {
        reference: wanted.to_owned(),
        name: None,
        kernel: None,
    };
    let result = super::pull::pull(&params, super::pull::Display::choose(false)).await?;
    report.line(super::pull::summary(&result))?;
    Ok(result.image)
}

async fn create(args: VmCreateArgs) -> Result<(), CliError> {
    let name = args.name.unwrap_or_else(generated_name);
    let params = create_params(&name, args.shape, args.no_wait, Report::Stdout).await?;
    if args.no_wait {
        let result: VmCreateResult = call("vm.create", &params).await?;
        let op = short_id(&result.op_id);
        return line(format!(
            "creating {} (operation {op}); follow it with `banger ops` or `banger events --op {op}`",
            result.name
        ));
    }
    create_waiting(&name, &params, Style::Steps).await
}

/// Creates a VM, showing its progress, and ends with a line saying where it runs.
async fn create_waiting(
    name: &VmName,
    params: &VmCreateParams,
    style: Style,
) -> Result<(), CliError> {
    let report = style.report();
    let started = Instant::now();
    let result = create_with_progress(name, params, style).await?;
    let took = match style {
        Style::Stages => format!(" after {}", seconds(started.elapsed())),
        Style::Steps => String::new(),
    };
    let mut client = connect().await?;
    let shown: Result<VmShowResult, ClientError> = client
        .call(
            "vm.show",
            &NameParams {
                name: result.name.clone(),
            },
        )
        .await;
    let (state, ip) = match shown {
        Ok(shown) => (shown.vm.state.to_string(), ip_of(&shown)),
        Err(_) => (
            result
                .vm
                .as_ref()
                .map_or_else(|| "created".to_owned(), |vm| vm.state.to_string()),
            None,
        ),
    };
    match ip {
        Some(ip) => report.line(format!("{} is {state} ({ip}){took}", result.name)),
        None => report.line(format!("{} is {state}{took}", result.name)),
    }
}

/// `vm run`: a fresh VM, then a login shell in it on a terminal (or `-- CMD`, a command);
/// exits with the shell's or the command's status. The VM keeps running unless `--rm`.
async fn run_vm(args: VmRunArgs) -> Result<(), CliError> {
    let shell = args.command.is_empty();
    let stdin_terminal = std::io::stdin().is_terminal();
    let (io, warning) = if shell {
        // The shell is interactive on a terminal; with a pipe it reads commands from it, as
        // `echo make | ssh host` does.
        (
            Io::choose(u8::from(stdin_terminal), true, false, stdin_terminal).0,
            None,
        )
    } else {
        Io::choose(args.tty, args.interactive, false, stdin_terminal)
    };
    let name = args.name.unwrap_or_else(generated_name);
    let params = create_params(&name, args.shape, false, Report::Stderr).await?;
    Report::Stderr.line(format!("{name}: a VM from image {}", params.image.as_str()))?;
    create_waiting(&name, &params, Style::Stages).await?;
    // Inside a git checkout the VM gets it, and the shell or command starts in it.
    let started = Instant::now();
    let cwd = if args.no_workspace {
        None
    } else {
        super::workspace::import_for_run(&name).await?
    };
    if cwd.is_some() {
        Report::Stderr.line(format!(
            "  workspace imported in {}",
            seconds(started.elapsed())
        ))?;
    }
    if let Some(warning) = warning {
        Report::Stderr.line(warning.to_owned())?;
    }
    let argv = if shell {
        if matches!(io, Io::Terminal { .. }) {
            Report::Stderr.line(format!(
                "a login shell in {name}; `exit` or Ctrl-D leaves it"
            ))?;
        }
        login_shell_argv()
    } else {
        args.command
    };
    let exec = exec_params(name.clone(), argv, Default::default(), cwd, io);
    let outcome = match io {
        // Signals are the command's on a terminal (see `run_exec`).
        Io::Terminal { .. } => run_exec(&exec, io).await,
        // Ctrl-C is caught so that --rm still deletes the VM: dropping the exec stream makes
        // bangerd kill the command, then the delete runs as usual. 130 is a shell's status
        // for a command ended by SIGINT.
        Io::Pipes { .. } => tokio::select! {
            outcome = run_exec(&exec, io) => outcome,
            _ = tokio::signal::ctrl_c() => Ok(130),
        },
    };
    if args.rm {
        let deleted: Result<VmDeleteResult, CliError> = call(
            "vm.delete",
            &NameParams {
                name: name.to_string(),
            },
        )
        .await;
        match deleted {
            Ok(_) => Report::Stderr.line(format!("deleted {name}"))?,
            // The command's outcome matters more; say what is left behind, and how to clean it.
            Err(error) => Report::Stderr.line(format!(
                "banger: warning: could not delete {name}: {}; run `banger vm delete {name}`",
                super::error::chain(&error)
            ))?,
        }
    } else {
        Report::Stderr.line(format!(
            "{name} keeps running: `banger vm exec -t {name} -- sh -l` for another shell, `banger vm delete {name}` when done"
        ))?;
    }
    match outcome? {
        0 => Ok(()),
        code => Err(CliError::CommandStatus { code }),
    }
}

/// What `vm run` runs without a command: the guest user's login shell from the guest's
/// `/etc/passwd` (the agent runs commands as that user and sets `USER`), else bash where the
/// guest has it, else `/bin/sh` — as a login shell, with `SHELL` set. Plain POSIX sh, so that
/// it runs on busybox as well as on Debian; the guest needs nothing else (no sshd).
const LOGIN_SHELL: &str = r#"shell=
if [ -n "$USER" ] && [ -r /etc/passwd ]; then
    while IFS=: read -r name _ _ _ _ _ login || [ -n "$name" ]; do
        if [ "$name" = "$USER" ]; then shell=$login; break; fi
    done < /etc/passwd
fi
case "$shell" in */nologin | */false) shell= ;; esac
if [ -z "$shell" ] || [ ! -x "$shell" ]; then
    if [ -x /bin/bash ]; then shell=/bin/bash; else shell=/bin/sh; fi
fi
export SHELL="$shell"
exec "$shell" -l
"#;

fn login_shell_argv() -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), LOGIN_SHELL.into()]
}

/// The VM's IP address, from the handles it holds.
fn ip_of(shown: &VmShowResult) -> Option<String> {
    shown.handles.iter().find_map(|entry| match entry.handle {
        Handle::Ip { addr: [a, b, c, d] } => Some(format!("{a}.{b}.{c}.{d}")),
        _ => None,
    })
}

/// Calls `vm.create` and, on a second connection, follows the VM's events from the log's
/// current end, printing each step of the create as it starts. The progress display is best
/// effort: if following fails, the create still completes and is reported.
async fn create_with_progress(
    name: &VmName,
    params: &VmCreateParams,
    style: Style,
) -> Result<VmCreateResult, CliError> {
    let mut control = connect().await?;
    let ping: PingResult = control.call("daemon.ping", &serde_json::json!({})).await?;
    let follower = connect()
        .await?
        .stream(
            "events.follow",
            &EventsParams {
                since: ping.last_seq,
                op: None,
                vm: Some(name.to_string()),
                follow: true,
                since_unix_ms: None,
            },
        )
        .await;
    // The stream is read in a task of its own and handed over through a channel: reading a
    // stream is not cancel-safe, a channel's `recv` is, so `select!` loses no event.
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel::<Envelope>();
    if let Ok(mut stream) = follower {
        tokio::spawn(async move {
            while let Ok(StreamEvent::Item(envelope)) = stream.next::<Envelope>().await {
                if events.send(envelope).is_err() {
                    break;
                }
            }
        });
    }
    // The create's own stream carries what it does before the operation starts (a kernel
    // pulled on first use); read in a task too, for the same reason.
    let params = VmCreateParams {
        progress: true,
        ..params.clone()
    };
    let mut creating = control.stream("vm.create", &params).await?;
    let (answers, mut answer) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let next = creating.next::<serde_json::Value>().await;
            let last = !matches!(next, Ok(StreamEvent::Item(_)));
            if answers.send(next).is_err() || last {
                break;
            }
        }
    });
    let mut pull = PullDisplay::new(match style.report() {
        Report::Stdout => Sink::Stdout,
        Report::Stderr => Sink::Stderr,
    });
    let mut progress = Progress {
        style,
        op: None,
        done: false,
        stage: None,
        // On a terminal a stage's line is rewritten with its time when it ends; elsewhere
        // (a log) both lines stay.
        rewrite: style == Style::Stages && std::io::stderr().is_terminal(),
        open_line: false,
    };
    let result: Result<VmCreateResult, CliError> = loop {
        tokio::select! {
            next = answer.recv() => match next {
                Some(Ok(StreamEvent::Item(item))) => pull.show_value(&item)?,
                Some(Ok(StreamEvent::End(result))) => {
                    pull.end_line()?;
                    break serde_json::from_value(result).map_err(|error| {
                        CliError::failed("bangerd sent a create result this banger cannot read", error)
                    });
                }
                Some(Err(error)) => {
                    pull.end_line()?;
                    break Err(error.into());
                }
                None => break Err(ClientError::Closed.into()),
            },
            // A closed channel (the stream ended or broke) disables this branch.
            Some(envelope) = received.recv() => {
                pull.end_line()?;
                progress.show(&envelope)?;
            }
        }
    };
    // Print the stages committed before the answer that the stream has not delivered yet
    // (a failed create's too, once it showed a stage: its rollback ends the stage it failed
    // in).
    let op_id = result.as_ref().ok().map(|result| result.op_id);
    if result.is_ok() || progress.stage.is_some() {
        let drain = async {
            while !progress.finished(op_id) {
                match received.recv().await {
                    Some(envelope) => progress.show(&envelope)?,
                    None => break,
                }
            }
            Ok::<(), CliError>(())
        };
        if let Ok(shown) = tokio::time::timeout(PROGRESS_DRAIN_TIMEOUT, drain).await {
            shown?;
        }
    }
    progress.close_line();
    result
}

/// What the create's progress display has shown.
struct Progress {
    style: Style,
    /// The create's operation id, learned from its `OperationStarted`.
    op: Option<OpId>,
    done: bool,
    /// The stage being waited for, and when it began (the log's clock).
    stage: Option<(Stage, u64)>,
    /// A stage's line is rewritten in place when it ends (stderr is a terminal).
    rewrite: bool,
    /// A rewritable line was printed without its newline.
    open_line: bool,
}

/// What `vm run` waits for, in the order it happens: the steps of `vm.create` by what they
/// are for a person waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Create,
    Boot,
    Agent,
}

impl Stage {
    /// The stage a step of `vm.create` belongs to; `None` for a step this banger does not
    /// know (it counts to the stage in progress).
    fn of(step: &str) -> Option<Stage> {
        match step {
            "allocate" | "prepare-rootfs" | "prepare-work-disk" | "network" => Some(Stage::Create),
            // launch-vmm was launch-firecracker in bangerds before QEMU.
            "launch-vmm" | "launch-firecracker" | "configure" | "instance-start" => {
                Some(Stage::Boot)
            }
            // The ssh setup talks to the agent that just answered: part of that stage.
            "wait-for-agent" | "ssh-setup" => Some(Stage::Agent),
            _ => None,
        }
    }

    fn waiting(self) -> &'static str {
        match self {
            Stage::Create => "creating…",
            Stage::Boot => "booting…",
            Stage::Agent => "waiting for the guest agent…",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Stage::Create => "created",
            Stage::Boot => "booted",
            Stage::Agent => "agent ready",
        }
    }
}

impl Progress {
    fn show(&mut self, envelope: &Envelope) -> Result<(), CliError> {
        // Only the create's own events: another operation on the same name (a delete that
        // had not finished, say) is not this command's progress.
        match (&envelope.event, self.op) {
            (Event::OperationStarted(_), None) => {
                self.op = envelope.op_id;
                Ok(())
            }
            (Event::StepStarted(step), Some(op)) if envelope.op_id == Some(op) => {
                match self.style {
                    Style::Steps => Report::Stdout.line(format!("{}…", step.step)),
                    Style::Stages => match (Stage::of(&step.step), self.stage) {
                        (None, _) => Ok(()),
                        (Some(stage), Some((current, _))) if stage == current => Ok(()),
                        (Some(stage), _) => {
                            self.end_stage(envelope.at_unix_ms, true)?;
                            self.begin_stage(stage, envelope.at_unix_ms)
                        }
                    },
                }
            }
            (
                Event::OperationSucceeded(_)
                | Event::OperationRolledBack(_)
                | Event::OperationStuck(_),
                Some(op),
            ) if envelope.op_id == Some(op) => {
                let succeeded = matches!(envelope.event, Event::OperationSucceeded(_));
                self.end_stage(envelope.at_unix_ms, succeeded)?;
                self.done = true;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn begin_stage(&mut self, stage: Stage, at_unix_ms: u64) -> Result<(), CliError> {
        self.stage = Some((stage, at_unix_ms));
        if self.rewrite {
            self.open_line = true;
            write_raw(
                ExecStream::Stderr,
                format!("  {}", stage.waiting()).as_bytes(),
            )
        } else {
            Report::Stderr.line(format!("  {}", stage.waiting()))
        }
    }

    /// Ends the stage in progress at `at_unix_ms`: how long it took, or that it failed.
    fn end_stage(&mut self, at_unix_ms: u64, succeeded: bool) -> Result<(), CliError> {
        let Some((stage, began)) = self.stage.take() else {
            return Ok(());
        };
        let took = seconds(Duration::from_millis(at_unix_ms.saturating_sub(began)));
        let text = if succeeded {
            format!("  {:<12} {took}", stage.done())
        } else {
            format!("  {} failed after {took}", stage.waiting())
        };
        if self.open_line {
            self.open_line = false;
            // Back to the line's start and clear it: the stage's line becomes its result.
            write_raw(ExecStream::Stderr, format!("\r\x1b[K{text}\n").as_bytes())
        } else {
            Report::Stderr.line(text)
        }
    }

    /// Ends a rewritable line left open (the stream stopped before its stage ended), so
    /// that what is printed next starts on a line of its own.
    fn close_line(&mut self) {
        if self.open_line {
            self.open_line = false;
            let _ = write_raw(ExecStream::Stderr, b"\n");
        }
    }

    /// The operation `op` (or, not knowing its id, the one shown) has ended.
    fn finished(&self, op: Option<OpId>) -> bool {
        self.done && op.is_none_or(|op| self.op == Some(op))
    }
}

/// A duration as `1.23 s`.
fn seconds(duration: Duration) -> String {
    let ms = duration.as_millis();
    format!("{}.{:02} s", ms / 1000, (ms % 1000) / 10)
}

async fn lifecycle(method: &'static str, args: VmNameArgs) -> Result<(), CliError> {
    let params = NameParams {
        name: args.name.to_string(),
    };
    let result: VmResult = call(method, &params).await?;
    report_lifecycle(method, &result)
}

fn report_lifecycle(method: &str, result: &VmResult) -> Result<(), CliError> {
    let vm = &result.vm;
    match method {
        "vm.kill" => line(format!("killed {} (now {})", vm.name, vm.state)),
        "vm.restart" => line(format!("restarted {} (now {})", vm.name, vm.state)),
        _ => line(format!("{} is {}", vm.name, vm.state)),
    }
}

/// `vm stop` and `vm restart`: a lifecycle call that may carry the guest's grace period.
async fn stop(method: &'static str, args: VmStopArgs) -> Result<(), CliError> {
    let params = VmStopParams {
        name: args.name.to_string(),
        timeout_ms: args
            .timeout
            .map(|timeout| u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
    };
    let result: VmResult = call(method, &params).await?;
    report_lifecycle(method, &result)
}

async fn delete(args: VmNameArgs) -> Result<(), CliError> {
    let params = NameParams {
        name: args.name.to_string(),
    };
    let result: VmDeleteResult = call("vm.delete", &params).await?;
    line(format!("deleted {}", result.name))
}

async fn set(args: VmSetArgs) -> Result<(), CliError> {
    if args.cpus.is_none() && args.memory.is_none() && args.work_disk.is_none() {
        return Err(CliError::Usage(
            "vm set needs something to change: --cpus N, --memory SIZE or --work-disk SIZE".into(),
        ));
    }
    let params = VmSetParams {
        name: args.name.to_string(),
        vcpus: args.cpus,
        memory_mib: mib("--memory", args.memory)?,
        work_disk_mib: mib("--work-disk", args.work_disk)?,
    };
    let result: VmResult = call("vm.set", &params).await?;
    let spec = &result.vm.spec;
    line(format!(
        "{}: {} cpus, {} memory, {} work disk",
        result.vm.name,
        spec.vcpus,
        format_bytes(spec.memory_mib.saturating_mul(MIB)),
        format_bytes(spec.work_disk_mib.saturating_mul(MIB)),
    ))
}

// ---- the guest: exec, logs, health, ping --------------------------------------------------------

/// Writes raw bytes to stdout or stderr and flushes, so output shows up as the command
/// writes it. A closed stdout ends the command quietly, like every other banger output.
fn write_raw(stream: ExecStream, data: &[u8]) -> Result<(), CliError> {
    match stream {
        ExecStream::Stdout => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(data)
                .and_then(|()| stdout.flush())
                .map_err(CliError::Output)
        }
        ExecStream::Stderr => {
            let mut stderr = std::io::stderr().lock();
            // Nothing useful can be done when stderr itself is gone.
            let _ = stderr.write_all(data).and_then(|()| stderr.flush());
            Ok(())
        }
    }
}

async fn exec(args: VmExecArgs) -> Result<(), CliError> {
    let (io, warning) = Io::choose(
        args.tty,
        args.interactive,
        args.no_stdin,
        std::io::stdin().is_terminal(),
    );
    if let Some(warning) = warning {
        Report::Stderr.line(warning.to_owned())?;
    }
    super::workspace::warn_if_stale(&args.name).await;
    let params = exec_params(
        args.name,
        args.command,
        args.env.into_iter().collect(),
        args.cwd,
        io,
    );
    match run_exec(&params, io).await? {
        0 => Ok(()),
        code => Err(CliError::CommandStatus { code }),
    }
}

/// How a command's stdin and terminal are set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Io {
    /// Pipes in the guest; `stdin`: this process's stdin is forwarded to the command.
    Pipes { stdin: bool },
    /// A terminal in the guest, fed with this process's stdin; `raw`: stdin is a terminal,
    /// put in raw mode while the command runs.
    Terminal { raw: bool },
}

impl Io {
    /// Decides as ssh does: `-t` gives a terminal in the guest when stdin is a terminal, and
    /// is ignored with a warning otherwise (a pipe has no keys to pass through raw, and
    /// programs that see a terminal wait for them); `-tt` gives one anyway. Without `-t`,
    /// stdin is forwarded when it is a pipe or a file, or with `-i`; never with `--no-stdin`.
    /// Returns the warning to print, if any.
    fn choose(
        tty: u8,
        interactive: bool,
        no_stdin: bool,
        stdin_terminal: bool,
    ) -> (Io, Option<&'static str>) {
        match tty {
            0 => (
                Io::Pipes {
                    stdin: !no_stdin && (interactive || !stdin_terminal),
                },
                None,
            ),
            1 if !stdin_terminal => (
                Io::Pipes { stdin: !no_stdin },
                Some(
                    "banger: stdin is not a terminal, so the command runs without one in the VM \
                     (-tt asks for one anyway)",
                ),
            ),
            _ => (
                Io::Terminal {
                    raw: stdin_terminal,
                },
                None,
            ),
        }
    }
}

/// The `vm.exec` parameters for a command set up as `io` says; a terminal in the guest gets
/// this terminal's size (24x80 when there is none to ask) and `TERM`.
pub(super) fn exec_params(
    name: VmName,
    argv: Vec<String>,
    env: std::collections::BTreeMap<String, String>,
    cwd: Option<String>,
    io: Io,
) -> VmExecParams {
    let tty = match io {
        Io::Terminal { .. } => {
            let (rows, cols) = terminal::size().unwrap_or((24, 80));
            Some(VmExecTty {
                rows,
                cols,
                term: terminal::term(),
            })
        }
        Io::Pipes { .. } => None,
    };
    VmExecParams {
        name,
        argv,
        env,
        cwd,
        stdin: io == Io::Pipes { stdin: true },
        tty,
    }
}

/// Runs a command through `vm.exec` as `io` says, writing its output as it arrives; returns
/// the status a shell would report. On a terminal in the guest, SIGINT, SIGTERM, SIGHUP and
/// SIGQUIT are the command's for as long as it runs, and this terminal is raw meanwhile.
pub(super) async fn run_exec(params: &VmExecParams, io: Io) -> Result<i32, CliError> {
    let listen = |e| CliError::failed("cannot listen for signals", e);
    // Caught before raw mode begins and until it ends: each of these would otherwise end
    // banger with this terminal left raw.
    let signals = match io {
        Io::Terminal { .. } => Some(Forwarded::listen().map_err(listen)?),
        Io::Pipes { .. } => None,
    };
    let (winch, _raw) = match io {
        Io::Terminal { raw: true } => {
            let winch =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                    .map_err(listen)?;
            let raw = terminal::RawMode::enter()
                .map_err(|e| CliError::failed("cannot put this terminal in raw mode", e))?;
            (Some(winch), Some(raw))
        }
        _ => (None, None),
    };
    run_command(params, signals, winch).await
}

/// Runs a command through `vm.exec`, writing its output as it arrives; returns the status a
/// shell would report.
async fn run_command(
    params: &VmExecParams,
    signals: Option<Forwarded>,
    winch: Option<tokio::signal::unix::Signal>,
) -> Result<i32, CliError> {
    // A client that goes away (Ctrl-C kills this process) closes the socket, and bangerd
    // then kills the command in the guest: nothing is left running behind the user's back.
    let mut stream = connect().await?.stream("vm.exec", params).await?;
    // A signal that ends banger at once (a second SIGTERM or SIGHUP on a terminal).
    let (force, mut forced) = tokio::sync::mpsc::channel::<i32>(1);
    // Aborted (dropping the connection's sending side) when this function returns, however.
    // Only taken when input is forwarded: a taken and dropped sending side would half-close
    // the connection, which bangerd reads as the client going away.
    let _input = if params.takes_input() {
        stream.take_input().map(|input| {
            let sources = InputSources {
                stdin: Some(stdin_chunks()),
                signals,
                winch,
            };
            AbortOnDrop(tokio::spawn(forward_input(input, sources, force)))
        })
    } else {
        None
    };
    loop {
        let event = tokio::select! {
            biased;
            Some(signal) = forced.recv() => return Ok(128 + signal),
            event = stream.next::<VmExecItem>() => event?,
        };
        match event {
            StreamEvent::Item(item) => write_raw(item.stream, &item.data)?,
            StreamEvent::End(end) => {
                let result: VmExecResult = serde_json::from_value(end).map_err(|error| {
                    CliError::failed("bangerd sent an exec result this banger cannot read", error)
                })?;
                return Ok(result.shell_code());
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The signals passed on to a command on a terminal in the guest: with the terminal raw, ^C
/// and ^\ reach it as keys, so these only come from elsewhere (`kill`, a closed terminal
/// window), and are the command's to act on.
struct Forwarded {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Forwarded {
    fn listen() -> std::io::Result<Forwarded> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Forwarded {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The next signal's number.
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            Some(()) = self.interrupt.recv() => libc::SIGINT,
            Some(()) = self.terminate.recv() => libc::SIGTERM,
            Some(()) = self.hangup.recv() => libc::SIGHUP,
            Some(()) = self.quit.recv() => libc::SIGQUIT,
            else => std::future::pending().await,
        }
    }
}

/// Where an exec's input lines come from.
struct InputSources {
    /// This process's stdin, in chunks (`None` once it ended).
    stdin: Option<tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>>,
    /// On a terminal in the guest: the signals to pass on.
    signals: Option<Forwarded>,
    /// On a terminal in the guest, with this terminal raw: its size changes.
    winch: Option<tokio::signal::unix::Signal>,
}

/// Sends this process's stdin, this terminal's size changes and the signals it gets to
/// bangerd as `vm.exec` input lines, then keeps the connection's sending side open (closing it
/// would tell bangerd the client is gone) until aborted. A second SIGTERM or SIGHUP goes to
/// `force` instead: banger then ends (and with it the command), whatever the command does
/// with the first.
async fn forward_input(
    mut input: StreamInput,
    mut sources: InputSources,
    force: tokio::sync::mpsc::Sender<i32>,
) {
    let mut size = terminal::size();
    let mut seen = Vec::new();
    loop {
        let line = tokio::select! {
            chunk = next_chunk(&mut sources.stdin) => match chunk {
                Some(Ok(data)) if !data.is_empty() => VmExecInput {
                    data,
                    ..VmExecInput::default()
                },
                Some(Ok(_)) | None => {
                    sources.stdin = None;
                    VmExecInput { eof: true, ..VmExecInput::default() }
                }
                Some(Err(error)) => {
                    // The command gets end of file; the user learns why its input was short.
                    let _ = write_raw(
                        ExecStream::Stderr,
                        format!(
                            "banger: reading stdin failed: {error}; the command gets end of file\n"
                        )
                        .as_bytes(),
                    );
                    sources.stdin = None;
                    VmExecInput { eof: true, ..VmExecInput::default() }
                }
            },
            () = next_winch(&mut sources.winch) => {
                let now = terminal::size();
                let Some((rows, cols)) = now.filter(|_| now != size) else {
                    continue;
                };
                size = now;
                VmExecInput {
                    resize: Some(VmExecResize { rows, cols }),
                    ..VmExecInput::default()
                }
            }
            signal = next_signal(&mut sources.signals) => {
                if matches!(signal, libc::SIGTERM | libc::SIGHUP) {
                    if seen.contains(&signal) {
                        let _ = force.send(signal).await;
                        continue;
                    }
                    seen.push(signal);
                }
                VmExecInput {
                    signal: Some(signal),
                    ..VmExecInput::default()
                }
            }
        };
        // A failed send means bangerd closed the connection: the command is over, and the
        // stream reader reports how it ended.
        if input.send(&line).await.is_err() {
            break;
        }
    }
    std::future::pending::<()>().await;
}

async fn next_chunk(
    stdin: &mut Option<tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>>,
) -> Option<std::io::Result<Vec<u8>>> {
    match stdin {
        Some(chunks) => chunks.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_winch(winch: &mut Option<tokio::signal::unix::Signal>) {
    let delivered = match winch {
        Some(winch) => winch.recv().await.is_some(),
        None => false,
    };
    if !delivered {
        std::future::pending::<()>().await;
    }
}

async fn next_signal(signals: &mut Option<Forwarded>) -> i32 {
    match signals {
        Some(signals) => signals.recv().await,
        None => std::future::pending().await,
    }
}

/// This process's stdin in chunks, read on a plain thread rather than tokio's: a blocking
/// read cannot be cancelled, and tokio waits for its blocking reads when the runtime shuts
/// down, so a command that ends without reading its input would leave banger hanging on a
/// pipe that never ends. A plain thread dies with the process. An empty chunk is the end.
fn stdin_chunks() -> tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (chunks, received) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut buf = vec![0u8; EXEC_STDIN_CHUNK_BYTES];
            let read = match stdin.read(&mut buf) {
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    let _ = chunks.blocking_send(Err(error));
                    return;
                }
            };
            buf.truncate(read);
            // The channel's bound is the back-pressure: a command that reads slowly slows
            // this thread down instead of filling memory.
            if chunks.blocking_send(Ok(buf)).is_err() || read == 0 {
                return;
            }
        }
    });
    received
}

async fn logs(args: VmLogsArgs) -> Result<(), CliError> {
    let params = VmLogsParams {
        name: args.name,
        follow: args.follow,
        tail_bytes: args.tail.map(|Size(bytes)| bytes),
    };
    let mut stream = connect().await?.stream("vm.logs", &params).await?;
    loop {
        match stream.next::<VmLogsItem>().await? {
            StreamEvent::Item(item) => write_raw(ExecStream::Stdout, &item.data)?,
            StreamEvent::End(_) => return Ok(()),
        }
    }
}

async fn health(args: NameJsonArgs) -> Result<(), CliError> {
    let params = NameParams {
        name: args.name.to_string(),
    };
    let result: VmHealthResult = call("vm.health", &params).await?;
    if args.json {
        return json(&result);
    }
    let h = &result.health;
    let rows = [
        ("vm", result.name.clone()),
        (
            "agent",
            format!("{} (protocol {})", h.agent_version, h.protocol),
        ),
        ("hostname", h.hostname.clone()),
        ("round trip", format_rtt(result.rtt_us)),
        ("uptime", format_duration_ms(h.system_uptime_ms)),
        ("agent uptime", format_duration_ms(h.agent_uptime_ms)),
        (
            "load",
            format!("{:.2} {:.2} {:.2}", h.load[0], h.load[1], h.load[2]),
        ),
        (
            "memory",
            format!(
                "{} available of {}",
                format_bytes(h.mem_available_bytes),
                format_bytes(h.mem_total_bytes)
            ),
        ),
    ];
    // Keys line up with their colon: the widest key plus its ':'.
    let width = rows.iter().map(|(key, _)| key.len() + 1).max().unwrap_or(0);
    let text: String = rows
        .iter()
        .map(|(key, value)| format!("{:width$}  {value}\n", format!("{key}:")))
        .collect();
    out(text)
}

async fn ping(args: NameJsonArgs) -> Result<(), CliError> {
    let params = NameParams {
        name: args.name.to_string(),
    };
    let result: VmPingResult = call("vm.ping", &params).await?;
    if args.json {
        return json(&result);
    }
    line(format!(
        "{}: {} (agent {})",
        result.name,
        format_rtt(result.rtt_us),
        result.agent_version
    ))
}

/// A round trip in milliseconds with two decimals: `0.21 ms`.
fn format_rtt(rtt_us: u64) -> String {
    format!("{}.{:02} ms", rtt_us / 1000, (rtt_us % 1000) / 10)
}

/// An uptime like `3h 12m`, `4m 05s` or `12s`.
fn format_duration_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_uptimes_read_well() {
        assert_eq!(format_rtt(213), "0.21 ms");
        assert_eq!(format_rtt(12_345), "12.34 ms");
        assert_eq!(format_duration_ms(12_000), "12s");
        assert_eq!(format_duration_ms(245_000), "4m 05s");
        assert_eq!(format_duration_ms(3 * 3_600_000 + 12 * 60_000), "3h 12m");
    }

    #[test]
    fn sizes_become_whole_mib_rounded_up() {
        assert_eq!(mib("--memory", None).unwrap(), None);
        assert_eq!(mib("--memory", Some(Size(4 << 30))).unwrap(), Some(4096));
        assert_eq!(mib("--memory", Some(Size(1))).unwrap(), Some(1));
        assert!(mib("--memory", Some(Size(0))).is_err());
    }

    #[test]
    fn generated_names_are_valid() {
        assert!(generated_name().as_str().starts_with("vm-"));
    }

    #[test]
    fn a_terminal_in_the_guest_is_chosen_as_ssh_chooses_it() {
        let pipes = |stdin| (Io::Pipes { stdin }, None);
        // No -t: stdin goes when it is a pipe or a file, or with -i; never with --no-stdin.
        assert_eq!(Io::choose(0, false, false, false), pipes(true));
        assert_eq!(Io::choose(0, false, false, true), pipes(false));
        assert_eq!(Io::choose(0, true, false, true), pipes(true));
        assert_eq!(Io::choose(0, false, true, false), pipes(false));
        // -t on a terminal: raw; -t on a pipe: none, with a warning; -tt: one anyway.
        assert_eq!(
            Io::choose(1, false, false, true),
            (Io::Terminal { raw: true }, None)
        );
        let (io, warning) = Io::choose(1, false, false, false);
        assert_eq!(io, Io::Pipes { stdin: true });
        assert!(warning.is_some_and(|w| w.contains("-tt")));
        assert_eq!(
            Io::choose(2, false, false, false),
            (Io::Terminal { raw: false }, None)
        );
        assert_eq!(
            Io::choose(2, false, false, true),
            (Io::Terminal { raw: true }, None)
        );
    }

    #[test]
    fn every_create_step_belongs_to_a_stage_in_order() {
        // The real step table: a step renamed or added there must get a stage here.
        use crate::operations::OperationKind;
        let steps: Vec<&str> = crate::operations::vm_create::VmCreate::steps()
            .iter()
            .map(|step| step.name())
            .collect();
        let stages: Vec<Stage> = steps.iter().filter_map(|s| Stage::of(s)).collect();
        assert_eq!(stages.len(), steps.len(), "{steps:?}");
        assert!(stages.is_sorted_by_key(|stage| *stage as u8));
        assert_eq!(Stage::of("a-step-of-the-future"), None);
        assert_eq!(seconds(Duration::from_millis(1234)), "1.23 s");
        assert_eq!(seconds(Duration::from_millis(5)), "0.00 s");
    }

    #[test]
    fn vm_run_without_a_command_asks_the_guest_for_a_login_shell() {
        let argv = login_shell_argv();
        assert_eq!(argv[..2], ["/bin/sh", "-c"]);
        assert!(argv[2].contains("/etc/passwd") && argv[2].contains("exec \"$shell\" -l"));
    }
}
