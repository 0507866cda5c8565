//! `banger vm`: every VM verb that works today. Lifecycle verbs (create, start, stop, restart,
//! kill, delete, set) are plain calls to bangerd's operations, except `create`, which also
//! follows the operation's events to show each stage as it starts. Guest verbs (exec, logs,
//! health, ping) go through bangerd to the VM's guest agent or console; exec and logs are
//! streams whose bytes are written to stdout and stderr exactly as they arrive.
//!
//! Verbs that need networking or workspaces (run, ssh, stats, ports, workspace) still answer
//! "not implemented yet" through [`super::future`].

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use banger_events::{Envelope, Event, Handle, OpId};

use super::args::{
    ListArgs, NameJsonArgs, VmCommand, VmCreateArgs, VmExecArgs, VmLogsArgs, VmNameArgs, VmRunArgs,
    VmSetArgs, VmShape, VmStopArgs,
};
use super::connect::{call, connect};
use super::error::CliError;
use super::format::{now_unix_ms, short_id};
use super::future;
use super::kernel_progress::{PullDisplay, Sink};
use super::output::{json, line, out};
use super::views::{When, handle_table, operation_table, vm_details, vm_table};
use crate::api::{
    EXEC_STDIN_CHUNK_BYTES, EventsParams, ExecStream, ImageCatalogResult, ImagePullParams,
    ImageView, NameParams, PingResult, VmCreateParams, VmCreateResult, VmDeleteResult, VmExecInput,
    VmExecItem, VmExecParams, VmExecResult, VmHealthResult, VmListResult, VmLogsItem, VmLogsParams,
    VmName, VmPingResult, VmResult, VmSetParams, VmShowResult, VmStopParams,
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
        other => Err(future::vm(&other)),
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
/// `vm run -- CMD` (stdout belongs to the command).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Report {
    Stdout,
    Stderr,
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
        memory_mib: mib("--memory", shape.memory)?,
        work_disk_mib: mib("--work-disk", shape.work_disk)?,
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
    create_waiting(&name, &params, Report::Stdout).await
}

/// Creates a VM, showing each stage as it starts, and ends with a line saying where it runs.
async fn create_waiting(
    name: &VmName,
    params: &VmCreateParams,
    report: Report,
) -> Result<(), CliError> {
    let result = create_with_progress(name, params, report).await?;
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
        Some(ip) => report.line(format!("{} is {state} ({ip})", result.name)),
        None => report.line(format!("{} is {state}", result.name)),
    }
}

/// `vm run -- CMD`: a fresh VM, the command in it, the VM thrown away (unless --keep); exits
/// with the command's status. Without a command it would open a shell over ssh, which arrives
/// with VM networking.
async fn run_vm(args: VmRunArgs) -> Result<(), CliError> {
    if args.command.is_empty() {
        return Err(future::vm(&VmCommand::Run(args)));
    }
    let name = args.name.unwrap_or_else(generated_name);
    let params = create_params(&name, args.shape, false, Report::Stderr).await?;
    create_waiting(&name, &params, Report::Stderr).await?;
    // `vm run` keeps its stdin to itself for now: it is a throwaway VM's command, and what
    // it should read from the terminal (nothing, like `vm exec` on a terminal) is the same.
    let exec = VmExecParams {
        name: name.clone(),
        argv: args.command,
        env: Default::default(),
        cwd: None,
        stdin: false,
    };
    // Ctrl-C is caught so that the VM is still thrown away: dropping the exec stream makes
    // bangerd kill the command, then the delete runs as usual. 130 is a shell's status for
    // a command ended by SIGINT.
    let outcome = tokio::select! {
        outcome = run_command(&exec) => outcome,
        _ = tokio::signal::ctrl_c() => Ok(130),
    };
    if args.keep {
        Report::Stderr.line(format!(
            "kept {name}; `banger vm exec {name} -- CMD` to use it, `banger vm delete {name}` when done"
        ))?;
    } else {
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
    }
    match outcome? {
        0 => Ok(()),
        code => Err(CliError::CommandStatus { code }),
    }
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
    report: Report,
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
    let mut pull = PullDisplay::new(match report {
        Report::Stdout => Sink::Stdout,
        Report::Stderr => Sink::Stderr,
    });
    let mut progress = Progress {
        report,
        op: None,
        done: false,
    };
    let result: VmCreateResult = loop {
        tokio::select! {
            next = answer.recv() => match next {
                Some(Ok(StreamEvent::Item(item))) => pull.show_value(&item)?,
                Some(Ok(StreamEvent::End(result))) => {
                    pull.end_line()?;
                    break serde_json::from_value(result).map_err(|error| {
                        CliError::failed("bangerd sent a create result this banger cannot read", error)
                    })?;
                }
                Some(Err(error)) => {
                    pull.end_line()?;
                    return Err(error.into());
                }
                None => return Err(ClientError::Closed.into()),
            },
            // A closed channel (the stream ended or broke) disables this branch.
            Some(envelope) = received.recv() => {
                pull.end_line()?;
                progress.show(&envelope)?;
            }
        }
    };
    // Print the stages committed before the answer that the stream has not delivered yet.
    let drain = async {
        while !progress.finished(result.op_id) {
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
    Ok(result)
}

/// What the create's progress display has shown.
struct Progress {
    report: Report,
    /// The create's operation id, learned from its `OperationStarted`.
    op: Option<OpId>,
    done: bool,
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
                self.report.line(format!("{}…", step.step))
            }
            (
                Event::OperationSucceeded(_)
                | Event::OperationRolledBack(_)
                | Event::OperationStuck(_),
                Some(op),
            ) if envelope.op_id == Some(op) => {
                self.done = true;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn finished(&self, op: OpId) -> bool {
        self.done && self.op == Some(op)
    }
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
    // A terminal is never forwarded: exec has no pseudo-terminal in the guest, so a shell
    // there would read lines without echo or line editing, and a command that does not read
    // stdin would wait for a Ctrl-D nobody knows to type.
    let stdin = !args.no_stdin && !std::io::stdin().is_terminal();
    let params = VmExecParams {
        name: args.name,
        argv: args.command,
        env: args.env.into_iter().collect(),
        cwd: args.cwd,
        stdin,
    };
    match run_command(&params).await? {
        0 => Ok(()),
        code => Err(CliError::CommandStatus { code }),
    }
}

/// Runs a command through `vm.exec`, writing its output as it arrives; returns the status a
/// shell would report.
async fn run_command(params: &VmExecParams) -> Result<i32, CliError> {
    // A client that goes away (Ctrl-C kills this process) closes the socket, and bangerd
    // then kills the command in the guest: nothing is left running behind the user's back.
    let mut stream = connect().await?.stream("vm.exec", params).await?;
    // Aborted (dropping the connection's sending side) when this function returns, however.
    // Only taken when stdin is forwarded: a taken and dropped sending side would half-close
    // the connection, which bangerd reads as the client going away.
    let _feeder = if params.stdin {
        stream
            .take_input()
            .map(|input| AbortOnDrop(tokio::spawn(forward_stdin(input))))
    } else {
        None
    };
    loop {
        match stream.next::<VmExecItem>().await? {
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

/// Sends this process's stdin to bangerd as `vm.exec` stdin lines, then keeps the connection's
/// sending side open (closing it would tell bangerd the client is gone) until aborted.
///
/// Stdin is read on a plain thread rather than tokio's: a blocking read cannot be cancelled,
/// and tokio waits for its blocking reads when the runtime shuts down, so a command that ends
/// without reading its input would leave banger hanging on a pipe that never ends. A plain
/// thread dies with the process.
async fn forward_stdin(mut input: StreamInput) {
    let (chunks, mut received) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
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
    while let Some(chunk) = received.recv().await {
        let line = match chunk {
            Ok(data) if data.is_empty() => VmExecInput { data, eof: true },
            Ok(data) => VmExecInput { data, eof: false },
            Err(error) => {
                // The command gets end of file; the user learns why its input was short.
                let _ = write_raw(
                    ExecStream::Stderr,
                    format!(
                        "banger: reading stdin failed: {error}; the command gets end of file\n"
                    )
                    .as_bytes(),
                );
                VmExecInput {
                    data: Vec::new(),
                    eof: true,
                }
            }
        };
        let eof = line.eof;
        // A failed send means bangerd closed the connection: the command is over, and the
        // stream reader reports how it ended.
        if input.send(&line).await.is_err() || eof {
            break;
        }
    }
    std::future::pending::<()>().await;
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
}
