//! The `banger` CLI, driven as users and agents drive it: the real binary, with
//! `BANGER_ROOT` pointing at a fresh temporary directory per test, talking to a real `bangerd`
//! that the CLI itself starts (autostart). Nothing is mocked.
//!
//! Every test owns its directory and its daemon, so tests run in parallel. Waiting is done by
//! polling with a deadline, never by sleeping a guessed time. A [`Sandbox`] kills the daemon
//! it started (by the pid in `state/bangerd.pid`) when it is dropped, panics included, so no
//! bangerd outlives the tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use banger::api::{Envelope, ImageView, KernelView, OperationView, VmView};
use serde_json::Value;

const BANGER: &str = env!("CARGO_BIN_EXE_banger");
/// Generous: the machines that run CI have two cores shared by several test processes.
const DEADLINE: Duration = Duration::from_secs(30);

/// A state directory of its own, and the daemon the CLI starts in it.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::Builder::new()
                .prefix("banger-cli-")
                .tempdir()
                .expect("temporary directory"),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BANGER);
        command
            .args(args)
            .current_dir(self.root())
            .env("BANGER_ROOT", self.root())
            .env_remove("BANGER_NO_AUTOSTART")
            .stdin(Stdio::null());
        command
    }

    /// Runs banger to completion.
    fn run(&self, args: &[&str]) -> Run {
        let output = self
            .command(args)
            .output()
            .unwrap_or_else(|error| panic!("cannot run banger {args:?}: {error}"));
        Run {
            args: args.iter().map(|a| a.to_string()).collect(),
            output,
        }
    }

    /// Runs banger and insists that it succeeds.
    fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert!(run.output.status.success(), "{run}");
        run.stdout()
    }

    fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|error| {
            panic!("banger {args:?} printed invalid JSON ({error}):\n{stdout}")
        })
    }

    fn pid_file(&self) -> PathBuf {
        self.root().join("state/bangerd.pid")
    }

    fn log_file(&self) -> PathBuf {
        self.root().join("state/events.redb")
    }

    /// The pid of the bangerd serving this sandbox, if it ever started.
    fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// A kernel directory with a (fake) vmlinux and an initrd, relative to the sandbox root.
    fn kernel_dir(&self, name: &str) -> String {
        let dir = self.root().join(name);
        std::fs::create_dir_all(&dir).expect("kernel dir");
        std::fs::write(dir.join("vmlinux"), b"\x7fELF fake kernel").expect("vmlinux");
        std::fs::write(dir.join("initrd.img"), b"fake initrd").expect("initrd");
        name.to_owned()
    }

    /// A (fake) rootfs file, relative to the sandbox root.
    fn rootfs(&self, name: &str) -> String {
        std::fs::write(self.root().join(name), vec![0u8; 64 * 1024]).expect("rootfs");
        name.to_owned()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let Some(pid) = self.daemon_pid() else { return };
        // The pid file outlives its daemon; make sure the pid is still a bangerd before
        // signalling it, so that a reused pid is left alone.
        if !is_bangerd(pid) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_bangerd(pid.as_raw()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if is_bangerd(pid.as_raw()) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// True while `pid` is a live (not zombie) bangerd process.
fn is_bangerd(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Field 2 is "(comm)", field 3 the state; a zombie has exited already.
    let Some((comm, rest)) = stat.split_once(") ") else {
        return false;
    };
    comm.ends_with("(bangerd") && !rest.starts_with('Z')
}

/// One finished invocation, printable in assertion messages.
struct Run {
    args: Vec<String>,
    output: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "banger {:?} exited with {}\n--- stdout\n{}--- stderr\n{}",
            self.args,
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }
}

/// Reads a child's stdout lines on a thread, so that the test can wait for them with a
/// deadline.
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Waits for the first line that satisfies `wanted`, failing the test at the deadline.
fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "no line with {what} within {DEADLINE:?}; saw:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// Waits for a child to exit, failing the test at the deadline.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("child did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn envelopes(text: &str) -> Vec<Envelope> {
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not an envelope ({error}): {line}"))
        })
        .collect()
}

// ---- help and the command tree ------------------------------------------------------------------

fn every_group_landing_page_shows_runnable_examples() {
    let sandbox = Sandbox::new();
    let pages: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &[
                "banger vm run",
                "banger events --follow",
                "banger ops",
                "sudo banger system install",
            ],
        ),
        (
            &["vm", "--help"],
            &[
                "banger vm run",
                "banger vm list",
                "banger vm exec dev -- uname -a",
                "Start a stopped VM",
                "Stop a running VM gracefully",
                "Stop then start a VM",
                "Force-kill a VM (use when 'vm stop' hangs)",
                "Stop a VM and remove its disks (irreversible)",
            ],
        ),
        (
            &["image", "--help"],
            &["banger image list", "banger image register", "--rootfs"],
        ),
        (
            &["kernel", "--help"],
            &["banger kernel list", "banger kernel import", "--from"],
        ),
        (
            &["events", "--help"],
            &[
                "banger events --follow",
                "banger events --since",
                "banger events replay --log",
            ],
        ),
        (
            &["events", "replay", "--help"],
            &["banger events replay --log", "--until"],
        ),
        (
            &["ops", "--help"],
            &["banger ops --all", "banger events --op"],
        ),
        (
            &["system", "--help"],
            &[
                "sudo banger system install",
                "banger system status",
                "banger doctor",
                "sudo banger system uninstall",
            ],
        ),
        (&["doctor", "--help"], &["banger doctor --json"]),
        (&["update", "--help"], &["banger update --check"]),
        (
            &["ssh-config", "--help"],
            &["banger ssh-config --write", "ssh dev.vm"],
        ),
        (&["version", "--help"], &["--json"]),
    ];
    for (args, wanted) in pages {
        let stdout = sandbox.ok(args);
        // clap wraps prose at the terminal's width, so a phrase may span two lines.
        let words = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        for text in *wanted {
            assert!(
                words.contains(text),
                "banger {args:?} does not mention {text:?}:\n{stdout}"
            );
        }
    }
    assert!(
        sandbox.daemon_pid().is_none(),
        "help must not start bangerd"
    );
}

/// The bash script, sourced in a real bash, completes verbs at two depths; the other shells'
/// scripts are theirs; none of it needs bangerd.
fn completion_scripts_complete_verbs_in_a_real_bash() {
    let sandbox = Sandbox::new();
    let bash = sandbox.run(&["completions", "bash"]);
    assert_eq!(bash.code(), Some(0), "{bash}");
    let script = sandbox.root().join("banger.bash");
    std::fs::write(&script, bash.stdout()).unwrap();
    let complete = |words: &[&str]| -> Vec<String> {
        let line = words.join(" ");
        let program = format!(
            "source {script}\nCOMP_WORDS=({line}); COMP_CWORD={cword}; COMP_LINE='{line}'; \
             COMP_POINT=${{#COMP_LINE}}\n_banger banger {current} {previous}\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script = script.display(),
            cword = words.len() - 1,
            current = words[words.len() - 1],
            previous = words[words.len() - 2],
        );
        let output = Command::new("bash")
            .args(["-c", &program])
            .output()
            .expect("run bash");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(complete(&["banger", "vm", "cr"]), ["create"]);
    assert_eq!(complete(&["banger", "kernel", "pu"]), ["pull"]);
    assert!(complete(&["banger", "e"]).contains(&"events".to_owned()));
    for (shell, marker) in [("zsh", "#compdef banger"), ("fish", "complete -c banger")] {
        let run = sandbox.run(&["completions", shell]);
        assert_eq!(run.code(), Some(0), "{run}");
        assert!(run.stdout().contains(marker), "{shell}: {run}");
    }
    let refused = sandbox.run(&["completions", "tcsh"]);
    assert_eq!(refused.code(), Some(2), "{refused}");
    assert!(refused.stderr().contains("possible values"), "{refused}");
    assert!(
        sandbox.daemon_pid().is_none(),
        "completions never start bangerd"
    );
}

fn bad_names_sizes_paths_and_ids_get_clear_errors() {
    let sandbox = Sandbox::new();
    let cases: &[(&[&str], i32, &[&str])] = &[
        (
            &["vm", "show", "Bad_Name"],
            2,
            &["invalid VM name", "DNS label"],
        ),
        (&["vm", "show", "-dev"], 2, &["unexpected argument"]),
        (
            &["vm", "create", "dev", "--memory", "4Q"],
            2,
            &["unknown unit \"Q\"", "GiB"],
        ),
        (
            &["vm", "create", "dev", "--memory=-1G"],
            2,
            &["is negative"],
        ),
        (
            &["vm", "set", "dev", "--disk", "lots"],
            2,
            &["not a number"],
        ),
        (
            &["vm", "create", "dev", "--disk", "99999999999T"],
            2,
            &["too large"],
        ),
        (&["events", "--vm", "UPPER"], 2, &["invalid VM name"]),
        (
            &["events", "--op", "not-hex"],
            2,
            &["is not an operation id"],
        ),
        (
            &["kernel", "import", "k1", "--from", "no-such-dir"],
            2,
            &["does not exist"],
        ),
        (
            &["image", "register", "i1", "--rootfs", "no-such-file"],
            2,
            &["does not exist"],
        ),
        (
            &["events", "replay", "--log", "no-such.redb"],
            2,
            &["no event log file"],
        ),
        (&["no-such-group"], 2, &["unrecognized subcommand"]),
    ];
    for (args, code, wanted) in cases {
        let run = sandbox.run(args);
        assert_eq!(run.code(), Some(*code), "{run}");
        let stderr = run.stderr();
        assert!(stderr.starts_with("banger: error: "), "{run}");
        for text in *wanted {
            assert!(stderr.contains(text), "expected {text:?}\n{run}");
        }
    }
    assert!(
        sandbox.daemon_pid().is_none(),
        "rejected input must not start bangerd"
    );
}

// ---- reaching the daemon --------------------------------------------------------------------

fn without_autostart_the_cli_says_how_to_start_bangerd() {
    let sandbox = Sandbox::new();
    let run = {
        let mut command = sandbox.command(&["vm", "list"]);
        command.env("BANGER_NO_AUTOSTART", "1");
        let output = command.output().expect("run banger");
        Run {
            args: vec!["vm".into(), "list".into()],
            output,
        }
    };
    assert_eq!(run.code(), Some(1), "{run}");
    let stderr = run.stderr();
    assert!(
        stderr.starts_with("banger: error: bangerd is not running"),
        "{run}"
    );
    let root = sandbox.root().display().to_string();
    assert!(
        stderr.contains(&format!(
            "run `BANGER_ROOT={root} bangerd` in another terminal"
        )),
        "{run}"
    );
    assert!(stderr.contains("banger system install"), "{run}");
    assert!(sandbox.daemon_pid().is_none(), "{run}");

    // `version` never starts the daemon either, and says it is not running.
    let stdout = sandbox.ok(&["version"]);
    assert!(
        stdout.starts_with(&format!("banger {}", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(stdout.contains("bangerd: not running"), "{stdout}");
    assert!(sandbox.daemon_pid().is_none());
}

fn the_first_command_starts_bangerd_and_later_ones_reuse_it() {
    let sandbox = Sandbox::new();
    assert_eq!(sandbox.ok(&["vm", "list"]).trim(), "no VMs");
    let pid = sandbox.daemon_pid().expect("bangerd wrote its pid file");
    assert!(is_bangerd(pid), "pid {pid} is not a running bangerd");

    let versions = sandbox.json(&["version", "--json"]);
    assert_eq!(versions["banger"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(versions["bangerd"]["pid"], pid, "{versions}");
    let text = sandbox.ok(&["version"]);
    assert!(text.contains(&format!("pid {pid}")), "{text}");

    // Another command talks to the same daemon rather than starting a second one.
    assert_eq!(
        sandbox.json(&["vm", "list", "--json"]),
        serde_json::json!([])
    );
    assert_eq!(sandbox.daemon_pid(), Some(pid));
    assert!(
        sandbox.root().join("state/bangerd.out").exists(),
        "bangerd's output file"
    );
}

// ---- images, kernels, events, ops, replay -----------------------------------------------------

fn kernels_and_images_round_trip_through_tables_json_events_and_replay() {
    let sandbox = Sandbox::new();
    // Relative paths: the CLI makes them absolute before bangerd sees them.
    let kernel_dir = sandbox.kernel_dir("kernel-build");
    let imported = sandbox.ok(&["kernel", "import", "k1", "--from", &kernel_dir]);
    assert!(imported.starts_with("imported kernel k1"), "{imported}");
    let rootfs = sandbox.rootfs("rootfs.ext4");
    let registered = sandbox.ok(&[
        "image", "register", "img1", "--rootfs", &rootfs, "--kernel", "k1",
    ]);
    assert!(
        registered.starts_with("registered image img1 (64 KiB, kernel k1)"),
        "{registered}"
    );

    // Tables for people.
    let table = sandbox.ok(&["image", "list"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "SIZE", "KERNEL", "SOURCE", "DIGEST", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["img1", "64", "KiB", "k1"], "{table}");
    let table = sandbox.ok(&["kernel", "list"]);
    assert!(table.starts_with("NAME") && table.contains("k1"), "{table}");
    let details = sandbox.ok(&["kernel", "show", "k1"]);
    assert!(
        details.contains("initrd:") && details.contains("initrd.img"),
        "{details}"
    );
    let details = sandbox.ok(&["image", "show", "img1"]);
    assert!(
        details.contains("kernel:") && details.contains("sha256:"),
        "{details}"
    );

    // JSON for machines, in the projection types themselves.
    let images: Vec<ImageView> =
        serde_json::from_value(sandbox.json(&["image", "list", "--json"])).expect("images");
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].name, "img1");
    assert_eq!(images[0].kernel.as_deref(), Some("k1"));
    assert_eq!(images[0].size_bytes, 64 * 1024);
    let source = sandbox.root().join("rootfs.ext4");
    assert_eq!(
        images[0].source,
        format!("register:{}", source.display()),
        "the path was made absolute"
    );
    let image: ImageView =
        serde_json::from_value(sandbox.json(&["image", "show", "img1", "--json"])).expect("image");
    assert_eq!(image, images[0]);
    let kernels: Vec<KernelView> =
        serde_json::from_value(sandbox.json(&["kernel", "list", "--json"])).expect("kernels");
    assert_eq!(
        kernels.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        ["k1"]
    );
    assert!(kernels[0].initrd_path.is_some());
    let kernel: KernelView =
        serde_json::from_value(sandbox.json(&["kernel", "show", "k1", "--json"])).expect("kernel");
    assert_eq!(kernel, kernels[0]);

    // A missing name is an RPC error with its stable code.
    let run = sandbox.run(&["image", "show", "nope"]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(
        run.stderr()
            .starts_with("banger: error: no image named nope"),
        "{run}"
    );
    assert!(run.stderr().trim_end().ends_with("[not_found]"), "{run}");
    let run = sandbox.run(&["vm", "show", "ghost"]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(run.stderr().contains("[not_found]"), "{run}");

    // The log, in order and gapless, through the daemon.
    let events = envelopes(&sandbox.ok(&["events", "--json"]));
    for (index, envelope) in events.iter().enumerate() {
        assert_eq!(envelope.seq.0, index as u64 + 1, "gapless from 1");
    }
    let names: Vec<&str> = events.iter().map(|e| e.event.name()).collect();
    let kernel_at = names
        .iter()
        .position(|n| *n == "kernel_registered")
        .expect("kernel_registered");
    let image_at = names
        .iter()
        .position(|n| *n == "image_registered")
        .expect("image_registered");
    assert!(kernel_at < image_at, "{names:?}");
    let kernel_seq = events[kernel_at].seq.0;
    let import_op = events[kernel_at]
        .op_id
        .expect("kernel_registered belongs to an operation");

    // Human lines carry seq, time, short op id, event name and a summary.
    let text = sandbox.ok(&["events"]);
    let line = text
        .lines()
        .find(|line| line.contains("kernel_registered"))
        .unwrap_or_else(|| panic!("no kernel_registered line:\n{text}"));
    let short = import_op.to_string()[..8].to_owned();
    assert!(
        line.trim_start().starts_with(&kernel_seq.to_string()),
        "{line}"
    );
    assert!(
        line.contains(&short) && line.contains("kernel k1"),
        "{line}"
    );

    // --since and --op filter on the daemon's side; an id prefix is resolved.
    let since = envelopes(&sandbox.ok(&["events", "--json", "--since", &kernel_seq.to_string()]));
    assert_eq!(since.first().map(|e| e.seq.0), Some(kernel_seq + 1));
    let of_op = envelopes(&sandbox.ok(&["events", "--json", "--op", &short]));
    assert!(!of_op.is_empty());
    assert!(
        of_op.iter().all(|e| e.op_id == Some(import_op)),
        "only that operation's events"
    );

    // ops: nothing in flight now; --all shows both finished operations.
    assert_eq!(sandbox.ok(&["ops"]).trim(), "no operations in flight");
    let ops: Vec<OperationView> =
        serde_json::from_value(sandbox.json(&["ops", "--all", "--json"])).expect("ops");
    let kinds: Vec<String> = ops.iter().map(|op| op.kind.to_string()).collect();
    assert!(
        kinds.contains(&"kernel.import".to_owned()) && kinds.contains(&"image.register".to_owned()),
        "{kinds:?}"
    );
    let table = sandbox.ok(&["ops", "--all"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["OP", "KIND", "TARGET", "STATUS", "STEP", "AGE"],
        "{table}"
    );
    assert!(
        table.contains(&short) && table.contains("succeeded"),
        "{table}"
    );

    // The live log is the daemon's: replay says so and how to get around it.
    let live = sandbox.log_file().display().to_string();
    let run = sandbox.run(&["events", "replay", "--log", &live]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(
        run.stderr().contains("open in a running bangerd") && run.stderr().contains("cp "),
        "{run}"
    );

    // Offline replay of a copy shows what the daemon shows: the copy of a running log is of
    // its write-ahead file first (the newest events, not yet checkpointed into redb), then of
    // the log (nothing is being written meanwhile).
    let copy = sandbox.root().join("copy.redb");
    let write_ahead = PathBuf::from(format!("{}.wal", sandbox.log_file().display()));
    if write_ahead.exists() {
        std::fs::copy(&write_ahead, sandbox.root().join("copy.redb.wal"))
            .expect("copy the write-ahead file");
    }
    std::fs::copy(sandbox.log_file(), &copy).expect("copy the log");
    let copy = copy.display().to_string();
    let replay = sandbox.json(&["events", "replay", "--log", &copy, "--json"]);
    let replayed_images: Vec<&str> = replay["images"]
        .as_object()
        .expect("images")
        .keys()
        .map(String::as_str)
        .collect();
    let replayed_kernels: Vec<&str> = replay["kernels"]
        .as_object()
        .expect("kernels")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        replayed_images,
        images.iter().map(|i| i.name.as_str()).collect::<Vec<_>>()
    );
    assert_eq!(replayed_kernels, ["k1"]);
    let replayed_image: ImageView =
        serde_json::from_value(replay["images"]["img1"].clone()).expect("image view");
    assert_eq!(
        replayed_image, images[0],
        "the fold offline equals the fold in bangerd"
    );
    let tables = sandbox.ok(&["events", "replay", "--log", &copy]);
    for section in ["VMs:", "Images:", "Kernels:", "Handles:", "Operations:"] {
        assert!(tables.contains(section), "{section}\n{tables}");
    }
    assert!(tables.contains("img1") && tables.contains("k1"), "{tables}");
    // Deterministic: the same file prints the same bytes.
    assert_eq!(tables, sandbox.ok(&["events", "replay", "--log", &copy]));

    // --until an earlier point: the kernel exists, the image does not yet.
    let until = kernel_seq.to_string();
    let earlier = sandbox.json(&[
        "events", "replay", "--log", &copy, "--until", &until, "--json",
    ]);
    assert_eq!(earlier["last_seq"], kernel_seq);
    assert!(
        earlier["images"].as_object().expect("images").is_empty(),
        "{earlier}"
    );
    assert!(
        earlier["kernels"]
            .as_object()
            .expect("kernels")
            .contains_key("k1"),
        "{earlier}"
    );
    let earlier_tables = sandbox.ok(&["events", "replay", "--log", &copy, "--until", &until]);
    assert!(!earlier_tables.contains("img1"), "{earlier_tables}");

    // Removal, through the same verbs.
    assert_eq!(
        sandbox.ok(&["image", "delete", "img1"]).trim(),
        "deleted image img1"
    );
    assert_eq!(
        sandbox.ok(&["kernel", "rm", "k1"]).trim(),
        "removed kernel k1"
    );
    assert_eq!(
        sandbox.json(&["image", "list", "--json"]),
        serde_json::json!([])
    );
    assert_eq!(
        sandbox.json(&["kernel", "list", "--json"]),
        serde_json::json!([])
    );
    let vms: Vec<VmView> =
        serde_json::from_value(sandbox.json(&["vm", "list", "--json"])).expect("vms");
    assert!(vms.is_empty());
}

fn events_follow_sees_what_another_invocation_does_and_ends_cleanly_on_ctrl_c() {
    let sandbox = Sandbox::new();
    // Start the daemon first so that the follower and the writer share it.
    sandbox.ok(&["ops"]);
    let mut follower = sandbox
        .command(&["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the follower");
    let lines = line_reader(&mut follower);

    let kernel_dir = sandbox.kernel_dir("kernel-build");
    sandbox.ok(&["kernel", "import", "followed", "--from", &kernel_dir]);
    let line = wait_for_line(&lines, "kernel_registered for `followed`", |line| {
        serde_json::from_str::<Envelope>(line).is_ok_and(|envelope| {
            matches!(&envelope.event, banger_events::Event::KernelRegistered(e) if e.name == "followed")
        })
    });
    assert!(line.contains("\"seq\""), "{line}");

    // Ctrl-C ends the stream with success.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follower.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT the follower");
    let status = wait_exit(&mut follower);
    assert!(status.success(), "follower exited with {status}");
}

/// A log with a VM's whole story, written without a daemon (VM operations arrive later), so
/// that replay's VM, handle and operation views are exercised at every point of it.
fn replay_shows_vms_handles_and_stuck_operations_at_any_point() {
    use std::sync::Arc;

    use banger_events::{
        Event, Handle, HandleAcquired, Journal, JournalOptions, NewEvent, NoFold, OpId, OpKind,
        OperationStarted, OperationStuck, Owner, RedbLog, StepStarted, StepSucceeded, Target,
        UndoFailed, UndoStarted, VmDefined, VmId, VmSpec, VmState, VmStateChanged,
    };

    let sandbox = Sandbox::new();
    let path = sandbox.root().join("story.redb");
    let vm_id = VmId(0xabcd);
    let create = OpId(0x1111_2222_3333_4444);
    let stop = OpId(0x5555_6666_7777_8888);
    let target = Target::Vm {
        vm_id,
        name: "dev".into(),
    };
    let tap = Handle::Tap {
        name: "bgr-dev0".into(),
    };
    let process = Handle::Process {
        pid: 4242,
        start_time_ticks: 99,
    };
    let story = vec![
        NewEvent::in_op(
            create,
            Event::OperationStarted(OperationStarted {
                kind: OpKind::VmCreate,
                target: target.clone(),
                parameters: "{\"name\":\"dev\"}".into(),
            }),
        ),
        NewEvent::in_op(
            create,
            Event::VmDefined(VmDefined {
                vm_id,
                name: "dev".into(),
                spec: VmSpec {
                    image: "debian".into(),
                    kernel: "k1".into(),
                    vcpus: 2,
                    memory_mib: 2048,
                    root_disk_mib: 4096,
                    work_disk_mib: 8192,
                },
            }),
        ),
        NewEvent::in_op(
            create,
            Event::HandleAcquired(HandleAcquired {
                owner: Owner::Vm(vm_id),
                handle: tap.clone(),
            }),
        ),
        NewEvent::in_op(
            create,
            Event::StepStarted(StepStarted {
                step: "boot".into(),
                intent: vec![],
            }),
        ),
        NewEvent::in_op(
            create,
            Event::StepSucceeded(StepSucceeded {
                step: "boot".into(),
                produced: vec![process.clone()],
            }),
        ),
        NewEvent::in_op(
            create,
            Event::VmStateChanged(VmStateChanged {
                vm_id,
                from: VmState::Creating,
                to: VmState::Running,
            }),
        ),
        NewEvent::in_op(
            create,
            Event::OperationSucceeded(banger_events::OperationSucceeded {}),
        ),
        NewEvent::in_op(
            stop,
            Event::OperationStarted(OperationStarted {
                kind: OpKind::VmStop,
                target,
                parameters: "{}".into(),
            }),
        ),
        NewEvent::in_op(
            stop,
            Event::StepStarted(StepStarted {
                step: "release-tap".into(),
                intent: vec![tap],
            }),
        ),
        NewEvent::in_op(
            stop,
            Event::UndoStarted(UndoStarted {
                step: "release-tap".into(),
            }),
        ),
        NewEvent::in_op(
            stop,
            Event::UndoFailed(UndoFailed {
                step: "release-tap".into(),
                error: "device busy".into(),
            }),
        ),
        NewEvent::in_op(
            stop,
            Event::OperationStuck(OperationStuck {
                step: "release-tap".into(),
                error: "device busy".into(),
            }),
        ),
    ];
    {
        let log = RedbLog::open(&path).expect("create the log");
        let options = JournalOptions {
            clock: Arc::new(|| 1_777_404_777_000),
            id_seed: Some(7),
            ..JournalOptions::default()
        };
        let journal = Journal::<NoFold>::open(Arc::new(log), options).expect("journal");
        journal.append_blocking(story).expect("append the story");
        journal.close();
    }
    let log = path.display().to_string();

    let all = sandbox.ok(&["events", "replay", "--log", &log]);
    assert!(
        all.starts_with(&format!("replayed events 1..=12 of 12 from {log}\n")),
        "{all}"
    );
    let vm_row = all
        .lines()
        .find(|line| line.starts_with("dev "))
        .unwrap_or_else(|| panic!("no VM row:\n{all}"));
    let cells: Vec<&str> = vm_row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "dev", "running", "debian", "k1", "2", "2", "GiB", "8", "GiB", "4242", "2"
        ],
        "{all}"
    );
    assert!(
        all.contains("tap bgr-dev0") && all.contains("vm dev"),
        "handles name their VM:\n{all}"
    );
    let stuck = all
        .lines()
        .find(|line| line.starts_with("55556666"))
        .unwrap_or_else(|| panic!("no stop operation row:\n{all}"));
    assert!(
        stuck.contains("vm.stop")
            && stuck.contains("stuck")
            && stuck.contains("release-tap (undo_failed)"),
        "{stuck}"
    );
    // Byte for byte the same on a second run: the fold is pure and no clock is shown.
    assert_eq!(all, sandbox.ok(&["events", "replay", "--log", &log]));

    // Just after VmDefined: the VM exists, still creating, with no process yet.
    let early = sandbox.json(&["events", "replay", "--log", &log, "--until", "2", "--json"]);
    assert_eq!(early["last_seq"], 2);
    assert_eq!(early["log_last_seq"], 12);
    let vm: VmView =
        serde_json::from_value(early["vms"][vm_id.to_string()].clone()).expect("vm view");
    assert_eq!(
        (vm.name.as_str(), vm.state, vm.process),
        ("dev", VmState::Creating, None)
    );
    let ops: std::collections::BTreeMap<String, OperationView> =
        serde_json::from_value(early["operations"].clone()).expect("operations");
    assert_eq!(ops.len(), 1, "the stop has not started yet");
    // A point past the end is the end.
    let past = sandbox.json(&[
        "events", "replay", "--log", &log, "--until", "999", "--json",
    ]);
    assert_eq!(past["last_seq"], 12);
}

/// With --no-reconnect a follower ends when bangerd stops, naming where to pick up.
fn a_follower_whose_daemon_stops_says_where_to_resume() {
    let sandbox = Sandbox::new();
    let kernel_dir = sandbox.kernel_dir("kernel-build");
    sandbox.ok(&["kernel", "import", "k1", "--from", &kernel_dir]);
    let mut follower = sandbox
        .command(&["events", "--follow", "--no-reconnect"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the follower");
    let lines = line_reader(&mut follower);
    let last = wait_for_line(&lines, "operation_succeeded", |line| {
        line.contains("operation_succeeded")
    });
    let last_seq = last
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();

    let pid = sandbox.daemon_pid().expect("daemon pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM bangerd");
    let status = wait_exit(&mut follower);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follower.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    // Whether the daemon ends the stream with an `unavailable` error or just closes the socket,
    // the CLI names the last event it printed, so that following again loses nothing.
    assert!(stderr.starts_with("banger: error: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("continue with `banger events --since "),
        "{stderr}"
    );
    let resume: u64 = stderr
        .split("banger events --since ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .and_then(|seq| seq.parse().ok())
        .unwrap_or_else(|| panic!("no resume point in {stderr}"));
    assert!(resume >= last_seq.parse::<u64>().expect("seq"), "{stderr}");
}

/// Collects a child's stdout lines on a thread, for reading all of them at the end while
/// watching them as they come.
struct Lines {
    receiver: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(child: &mut Child) -> Lines {
        Lines {
            receiver: line_reader(child),
            seen: Vec::new(),
        }
    }

    /// Reads until a line satisfies `wanted` (looking at lines already read, too), failing
    /// the test at the deadline.
    fn wait_for(&mut self, what: &str, mut wanted: impl FnMut(&str) -> bool) {
        if self.seen.iter().any(|line| wanted(line)) {
            return;
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(line) => {
                    let done = wanted(&line);
                    self.seen.push(line);
                    if done {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no line with {what} within {DEADLINE:?}; saw {} lines, ending with:\n{}",
                    self.seen.len(),
                    self.seen[self.seen.len().saturating_sub(5)..].join("\n")
                ),
            }
        }
    }

    /// Every line, once the child has exited (its stdout closed).
    fn all(mut self) -> Vec<String> {
        self.seen.extend(self.receiver.iter());
        self.seen
    }
}

fn seq_of(line: &str) -> Option<u64> {
    serde_json::from_str::<Envelope>(line)
        .ok()
        .map(|envelope| envelope.seq.0)
}

/// The heart of `--follow`: while operations run, bangerd is killed with SIGKILL three times
/// (each time in the middle of the stream, right after the followers printed a step of the
/// bangerd then running) and started again by the next banger command. Followers started
/// before it all print exactly the log's sequence 1..N, as `events --json` reads it
/// afterwards: nothing missed, nothing twice. So do the filtered forms, against the same
/// filter applied to the log afterwards: `--since` an RFC 3339 time (with an offset) taken
/// after the first import, and `--op` the first import's operation (over before the first
/// kill: on each reconnection, the follower must neither print its last event again nor
/// anyone else's). Each says once that it lost bangerd, and once that it is back.
fn a_follower_survives_bangerd_killed_three_times_without_gap_or_repeat() {
    let sandbox = Sandbox::new();
    let kernel_dir = sandbox.kernel_dir("kernel-build");
    sandbox.ok(&["kernel", "import", "k0", "--from", &kernel_dir]);
    let spawn_follower = |args: &[&str], stderr_name: &str| {
        let stderr = std::fs::File::create(sandbox.root().join(stderr_name)).expect("stderr file");
        sandbox
            .command(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn a follower")
    };
    // Two forms: from the start by seq, and by time (everything in the last hour is all of it).
    let mut by_seq = spawn_follower(&["events", "--follow", "--json"], "by-seq.stderr");
    let mut by_time = spawn_follower(
        &["events", "--follow", "--json", "--since", "1h"],
        "by-time.stderr",
    );
    // From a point in time, as an RFC 3339 timestamp with an offset (the same instant as
    // `at_ms` in UTC): every event of the first import is before it.
    std::thread::sleep(Duration::from_millis(5));
    let at_ms = banger::cli::format::now_unix_ms();
    std::thread::sleep(Duration::from_millis(5));
    let at_text = banger::cli::format::format_timestamp(at_ms + 3_600_000).replace('Z', "+01:00");
    let mut by_rfc3339 = spawn_follower(
        &["events", "--follow", "--json", "--since", &at_text],
        "by-rfc3339.stderr",
    );
    // One operation's events, by its full id.
    let first_import = envelopes(&sandbox.ok(&["events", "--json"]));
    let op = first_import
        .iter()
        .find_map(|e| e.op_id)
        .expect("the first import's operation")
        .to_string();
    let mut by_op = spawn_follower(
        &["events", "--follow", "--json", "--op", &op],
        "by-op.stderr",
    );
    let mut seq_lines = Lines::new(&mut by_seq);
    let mut time_lines = Lines::new(&mut by_time);
    let mut rfc3339_lines = Lines::new(&mut by_rfc3339);
    let mut op_lines = Lines::new(&mut by_op);
    // It has printed the operation's end: it reads from the first bangerd, which runs on
    // until the first kill.
    let op_last = first_import
        .iter()
        .rfind(|e| e.op_id.is_some_and(|id| id.to_string() == op))
        .expect("the operation's last event")
        .seq
        .0;
    op_lines.wait_for(&format!("seq {op_last}"), |line| {
        seq_of(line) == Some(op_last)
    });

    // A stream of operations, from another thread: each import is its own banger command, which
    // starts bangerd again when it finds it dead. Those in flight when bangerd dies fail; that
    // is expected (recovery rolls them back).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let root = sandbox.root().to_path_buf();
        let kernel_dir = kernel_dir.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Until told to stop, and a few more after that, so the last daemon serves some.
            let mut after_stop = 0;
            for i in 1..=500 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    after_stop += 1;
                    if after_stop > 3 {
                        break;
                    }
                }
                let _ = Command::new(BANGER)
                    .args(["kernel", "import", &format!("k{i}"), "--from", &kernel_dir])
                    .current_dir(&root)
                    .env("BANGER_ROOT", &root)
                    .env_remove("BANGER_NO_AUTOSTART")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        })
    };
    for kill in 1..=3 {
        // The follower is reading from the bangerd that now runs (it printed that daemon's
        // start) and an operation of that daemon is under way (it printed one of its steps).
        let deadline = Instant::now() + DEADLINE;
        let pid = loop {
            if let Some(pid) = sandbox.daemon_pid().filter(|pid| is_bangerd(*pid)) {
                break pid;
            }
            assert!(
                !writer.is_finished() && Instant::now() < deadline,
                "no bangerd runs before kill {kill}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut step: Option<Envelope> = None;
        for lines in [&mut seq_lines, &mut time_lines] {
            let mut started = false;
            lines.wait_for(
                &format!("a step under bangerd {pid} (kill {kill})"),
                |line| {
                    let Ok(envelope) = serde_json::from_str::<Envelope>(line) else {
                        return false;
                    };
                    match &envelope.event {
                        banger_events::Event::DaemonStarted(e) if e.pid == pid as u32 => {
                            started = true;
                            false
                        }
                        banger_events::Event::StepStarted(_) if started => {
                            step.get_or_insert(envelope);
                            true
                        }
                        _ => false,
                    }
                },
            );
        }
        let step = step.expect("a step was seen");
        // The follower from a time has printed that step or an event after it: it reads from
        // this bangerd too (events after the step can only have come from it).
        rfc3339_lines.wait_for(
            &format!("seq {} or later (kill {kill})", step.seq.0),
            |line| seq_of(line).is_some_and(|seq| seq >= step.seq.0),
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL bangerd");
        let deadline = Instant::now() + DEADLINE;
        while is_bangerd(pid) {
            assert!(Instant::now() < deadline, "bangerd {pid} outlived SIGKILL");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().expect("the writer thread");

    // Once the log has stopped growing, both followers must have printed it all.
    let all = sandbox.ok(&["events", "--json"]);
    let last = envelopes(&all).last().expect("events").seq.0;
    for (name, lines, follower) in [
        ("by-seq", &mut seq_lines, &mut by_seq),
        ("by-time", &mut time_lines, &mut by_time),
        ("by-rfc3339", &mut rfc3339_lines, &mut by_rfc3339),
    ] {
        if let Some(status) = follower.try_wait().expect("poll a follower") {
            panic!(
                "{name}: the follower exited ({status}): {}",
                std::fs::read_to_string(sandbox.root().join(format!("{name}.stderr")))
                    .unwrap_or_default()
            );
        }
        lines.wait_for(&format!("seq {last}"), |line| seq_of(line) == Some(last));
    }
    // The operation's follower prints nothing after its operation ended, however far the log
    // goes: it is done once it is back after the third kill.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stderr = std::fs::read_to_string(sandbox.root().join("by-op.stderr")).unwrap();
        if stderr.matches("bangerd is back").count() >= 3 {
            break;
        }
        assert!(
            by_op.try_wait().expect("poll a follower").is_none(),
            "by-op: the follower exited: {stderr}"
        );
        assert!(
            Instant::now() < deadline,
            "by-op: not back after the third kill:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for follower in [&mut by_seq, &mut by_time, &mut by_rfc3339, &mut by_op] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(follower.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT a follower");
        let status = wait_exit(follower);
        assert!(status.success(), "a follower exited with {status}");
    }
    let log = envelopes(&sandbox.ok(&["events", "--json"]));
    assert_eq!(
        log.last().map(|e| e.seq.0),
        Some(last),
        "the log grew meanwhile"
    );
    let seqs: Vec<u64> = log.iter().map(|e| e.seq.0).collect();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "the log itself is gapless"
    );
    let kills = log
        .iter()
        .filter(|e| matches!(e.event, banger_events::Event::DaemonStarted(_)))
        .count();
    assert!(kills >= 4, "bangerd started {kills} times");
    let since_at: Vec<Envelope> = log
        .iter()
        .filter(|e| e.at_unix_ms >= at_ms)
        .cloned()
        .collect();
    assert!(
        since_at.len() < log.len() && since_at.last() == log.last(),
        "--since {at_text} leaves out the first import and nothing after it"
    );
    let of_op = |events: &[Envelope]| -> Vec<Envelope> {
        events
            .iter()
            .filter(|e| e.op_id.is_some_and(|id| id.to_string() == op))
            .cloned()
            .collect()
    };
    let op_events = of_op(&log);
    assert_eq!(
        op_events,
        of_op(&first_import),
        "the operation was over before the kills"
    );
    for (name, lines, expected) in [
        ("by-seq", seq_lines, &log),
        ("by-time", time_lines, &log),
        ("by-rfc3339", rfc3339_lines, &since_at),
        ("by-op", op_lines, &op_events),
    ] {
        let printed = envelopes(&lines.all().join("\n"));
        let printed_seqs: Vec<u64> = printed.iter().map(|e| e.seq.0).collect();
        let expected_seqs: Vec<u64> = expected.iter().map(|e| e.seq.0).collect();
        assert_eq!(
            printed_seqs, expected_seqs,
            "{name}: the follower's sequence"
        );
        assert!(
            printed == *expected,
            "{name}: the follower printed other events than the log holds"
        );
        let stderr =
            std::fs::read_to_string(sandbox.root().join(format!("{name}.stderr"))).unwrap();
        assert_eq!(
            stderr.matches("lost bangerd after seq").count(),
            3,
            "{name}: one note per loss:\n{stderr}"
        );
        assert_eq!(
            stderr.matches("bangerd is back").count(),
            3,
            "{name}: one note per return:\n{stderr}"
        );
    }
}

/// A follower never starts bangerd itself: stopped on purpose, bangerd stays stopped however
/// long the follower waits, and the follower picks up once something else starts it.
fn a_follower_waits_for_bangerd_without_starting_it() {
    let sandbox = Sandbox::new();
    let kernel_dir = sandbox.kernel_dir("kernel-build");
    sandbox.ok(&["kernel", "import", "k1", "--from", &kernel_dir]);
    let mut follower = sandbox
        .command(&["events", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the follower");
    let stderr = {
        let pipe = follower.stderr.take().expect("stderr");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        receiver
    };
    // Streaming from the running bangerd once it printed something.
    let mut lines = Lines::new(&mut follower);
    lines.wait_for("the first event", |line| {
        line.trim_start().starts_with("1 ")
    });
    let pid = sandbox.daemon_pid().expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM bangerd");
    let note = stderr
        .recv_timeout(DEADLINE)
        .expect("the follower says it lost bangerd");
    assert!(note.contains("lost bangerd after seq"), "{note}");
    assert!(note.contains("waiting for it to come back"), "{note}");
    let deadline = Instant::now() + DEADLINE;
    while is_bangerd(pid) {
        assert!(Instant::now() < deadline, "bangerd did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(5));
    }
    // However long it waits (it polls the socket every half second at most), bangerd is not
    // started again: watched for two seconds, an absence that no event could signal.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        assert!(
            !sandbox.daemon_pid().is_some_and(is_bangerd),
            "something started bangerd while only the follower ran"
        );
        assert!(
            follower.try_wait().unwrap().is_none(),
            "the follower gave up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Another command starts it; the follower comes back to it and prints what is new.
    sandbox.ok(&["kernel", "import", "k2", "--from", &kernel_dir]);
    let back = stderr
        .recv_timeout(DEADLINE)
        .expect("the follower says bangerd is back");
    assert!(back.contains("bangerd is back"), "{back}");
    lines.wait_for("k2 registered", |line| line.contains("kernel k2"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follower.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT the follower");
    assert!(wait_exit(&mut follower).success());
    assert!(
        stderr.try_recv().is_err(),
        "more notes than one loss and one return"
    );
}

/// `--since` takes a time: an RFC 3339 timestamp or how long ago; events carry `at_unix_ms`.
fn since_takes_a_time_as_well_as_a_seq() {
    let sandbox = Sandbox::new();
    let kernel_dir = sandbox.kernel_dir("kernel-build");
    sandbox.ok(&["kernel", "import", "k1", "--from", &kernel_dir]);
    let all = envelopes(&sandbox.ok(&["events", "--json"]));
    let last = all.last().expect("events").clone();
    // From the last event's own time: that event (and any recorded in the same millisecond).
    let stamp = banger::cli::format::format_timestamp(last.at_unix_ms);
    let from_stamp = envelopes(&sandbox.ok(&["events", "--json", "--since", &stamp]));
    assert!(from_stamp.contains(&last), "{stamp}");
    assert!(
        from_stamp.iter().all(|e| e.at_unix_ms >= last.at_unix_ms),
        "{stamp}"
    );
    let one_ms_later = banger::cli::format::format_timestamp(last.at_unix_ms + 1);
    assert!(
        envelopes(&sandbox.ok(&["events", "--json", "--since", &one_ms_later])).is_empty(),
        "nothing was recorded after the last event"
    );
    // Ago: the last hour is everything; nothing is in the future.
    assert_eq!(
        envelopes(&sandbox.ok(&["events", "--json", "--since", "1h"])),
        all
    );
    // A seq still works, and a bad value is a usage error naming the forms.
    assert_eq!(
        envelopes(&sandbox.ok(&["events", "--json", "--since", "2"])),
        all[2..].to_vec()
    );
    let bad = sandbox.run(&["events", "--since", "yesterday"]);
    assert_eq!(bad.code(), Some(2), "{bad}");
    assert!(bad.stderr().contains("RFC 3339"), "{bad}");
}

/// Stops the bangerd serving `sandbox` with SIGTERM and waits for it to exit.
fn stop_bangerd(sandbox: &Sandbox) {
    let pid = sandbox.daemon_pid().expect("bangerd's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM bangerd");
    let deadline = Instant::now() + DEADLINE;
    while is_bangerd(pid) {
        assert!(Instant::now() < deadline, "bangerd did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every offset at which `needle` occurs in `haystack`.
fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(offset, _)| offset)
        .collect()
}

/// A log damaged in the middle of an operation, taken through what a user does: bangerd
/// turns read-only and says to repair; `events repair` refuses while bangerd runs; after it
/// stopped, `--dry-run` changes nothing and the repair keeps the damaged file byte for byte;
/// bangerd then starts on the repaired log (the intact prefix, then log_repaired), rolls back
/// the operation whose end was lost from what the log still says, `banger doctor` finds what
/// its lost steps left (the kernel's published files) and `--fix` removes it, and bangerd
/// takes writes again.
fn events_repair_gives_a_damaged_log_a_way_forward() {
    let sandbox = Sandbox::new();
    let kernel_dir = sandbox.kernel_dir("kernel-build");
    sandbox.ok(&["kernel", "import", "k1", "--from", &kernel_dir]);
    sandbox.ok(&["kernel", "import", "k2", "--from", &kernel_dir]);
    let before = envelopes(&sandbox.ok(&["events", "--json"]));
    stop_bangerd(&sandbox);

    // Damage the first step k2's import completed: its end is then lost.
    let k2_op = before
        .iter()
        .find_map(|e| match &e.event {
            banger_events::Event::OperationStarted(started)
                if started.target.to_string() == "kernel k2" =>
            {
                e.op_id
            }
            _ => None,
        })
        .expect("k2's import");
    let damaged = before
        .iter()
        .find(|e| {
            e.op_id == Some(k2_op) && matches!(e.event, banger_events::Event::StepSucceeded(_))
        })
        .expect("a step of k2's import")
        .clone();
    // The damage is aimed at redb's copy of the frame, which the idle checkpoint writes a
    // moment after the last change (until then it is in the write-ahead file).
    let frame = banger_events::frame::encode(&damaged);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (mut bytes, offsets) = loop {
        let bytes = std::fs::read(sandbox.log_file()).unwrap();
        let offsets = find_all(&bytes, &frame);
        if !offsets.is_empty() {
            break (bytes, offsets);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the frame of seq {} never reached the log file",
            damaged.seq
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    for offset in offsets {
        bytes[offset + banger_events::frame::HEADER_LEN + 2] ^= 0x04;
    }
    std::fs::write(sandbox.log_file(), &bytes).unwrap();

    // bangerd serves reads, refuses writes, and says what to do.
    let refused = sandbox.run(&["kernel", "import", "k3", "--from", &kernel_dir]);
    assert_eq!(refused.code(), Some(1), "{refused}");
    assert!(
        refused.stderr().contains("banger events repair"),
        "{refused}"
    );
    assert!(
        refused.stderr().contains(&format!("seq {}", damaged.seq)),
        "{refused}"
    );
    // Not while it runs.
    let busy = sandbox.run(&["events", "repair"]);
    assert_eq!(busy.code(), Some(1), "{busy}");
    assert!(busy.stderr().contains("bangerd is running"), "{busy}");
    stop_bangerd(&sandbox);
    assert!(
        std::fs::read(sandbox.log_file()).unwrap() == bytes,
        "the damaged log changed"
    );

    // A dry run says what would happen, and changes nothing.
    let dry = sandbox.json(&["events", "repair", "--dry-run", "--json"]);
    assert_eq!(dry["status"], "damaged", "{dry}");
    assert_eq!(dry["first_lost_seq"], damaged.seq.0, "{dry}");
    assert!(
        std::fs::read(sandbox.log_file()).unwrap() == bytes,
        "a dry run changed the log"
    );

    let text = sandbox.ok(&["events", "repair"]);
    let kept = damaged.seq.0 - 1;
    assert!(
        text.contains(&format!("kept seq 1..{kept} ({kept} events)")),
        "{text}"
    );
    assert!(
        text.contains(&format!("lost seq {}", damaged.seq)),
        "{text}"
    );
    let kept_line = text
        .lines()
        .find_map(|line| line.strip_prefix("the damaged file is kept, unchanged, at "))
        .unwrap_or_else(|| panic!("no backup path in:\n{text}"));
    // The damaged log's write-ahead file, if it had one, is kept beside its backup.
    let (backup, backup_write_ahead) = match kept_line.split_once(" (its write-ahead file at ") {
        Some((log, rest)) => (
            PathBuf::from(log),
            Some(PathBuf::from(rest.trim_end_matches(')'))),
        ),
        None => (PathBuf::from(kept_line), None),
    };
    if let Some(write_ahead) = &backup_write_ahead {
        assert!(
            write_ahead.is_file()
                && write_ahead.as_os_str() == format!("{}.wal", backup.display()).as_str(),
            "{text}"
        );
    }
    assert!(
        std::fs::read(&backup).unwrap() == bytes,
        "the backup is not the damaged file"
    );
    assert!(
        backup.starts_with(sandbox.root().join("state")),
        "{}",
        backup.display()
    );

    // bangerd starts on the repaired log: the intact prefix, then log_repaired.
    let after = envelopes(&sandbox.ok(&["events", "--json"]));
    assert_eq!(after[..kept as usize], before[..kept as usize]);
    match &after[kept as usize].event {
        banger_events::Event::LogRepaired(e) => {
            assert_eq!(e.first_lost_seq, damaged.seq);
            assert_eq!(Some(e.backup_path.as_str()), backup.to_str());
        }
        other => panic!("seq {} is {other:?}", damaged.seq),
    }
    // k2's import, whose end was lost, was rolled back like any crash from what the log still
    // says: k2 is not registered. (What its lost steps did, publishing k2's files, the log no
    // longer knows: an orphan, for `banger doctor`.)
    let ops: Vec<OperationView> =
        serde_json::from_value(sandbox.json(&["ops", "--all", "--json"])).expect("ops");
    let k2 = ops
        .iter()
        .find(|op| op.op_id == k2_op)
        .expect("k2's import");
    assert_eq!(k2.status.as_str(), "rolled_back", "{k2:?}");
    let kernels: Vec<KernelView> =
        serde_json::from_value(sandbox.json(&["kernel", "list", "--json"])).expect("kernels");
    let names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["k1"]);
    let k2_dir = sandbox.root().join("state/kernels/k2");
    assert!(k2_dir.exists());
    // `banger doctor` lists those files; `--fix` removes them (recording it), and k2 can be
    // imported again.
    let doctor = sandbox.run(&["doctor"]);
    assert_eq!(doctor.code(), Some(1), "{doctor}");
    assert!(
        doctor
            .stdout()
            .contains(&format!("directory {}", k2_dir.display())),
        "{doctor}"
    );
    sandbox.ok(&["doctor", "--fix"]);
    assert!(!k2_dir.exists());
    // And it takes writes.
    sandbox.ok(&["kernel", "import", "k3", "--from", &kernel_dir]);
    sandbox.ok(&["kernel", "import", "k2", "--from", &kernel_dir]);
    // A second repair finds nothing to do.
    stop_bangerd(&sandbox);
    let again = sandbox.ok(&["events", "repair"]);
    assert!(again.contains("is intact"), "{again}");
}

/// This module's tests, for the binary's harness (`banger-test-harness`).
pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync every_group_landing_page_shows_runnable_examples,
        sync completion_scripts_complete_verbs_in_a_real_bash,
        sync bad_names_sizes_paths_and_ids_get_clear_errors,
        sync without_autostart_the_cli_says_how_to_start_bangerd,
        sync the_first_command_starts_bangerd_and_later_ones_reuse_it,
        sync kernels_and_images_round_trip_through_tables_json_events_and_replay,
        sync events_follow_sees_what_another_invocation_does_and_ends_cleanly_on_ctrl_c,
        sync replay_shows_vms_handles_and_stuck_operations_at_any_point,
        sync a_follower_whose_daemon_stops_says_where_to_resume,
        sync a_follower_survives_bangerd_killed_three_times_without_gap_or_repeat,
        sync a_follower_waits_for_bangerd_without_starting_it,
        sync since_takes_a_time_as_well_as_a_seq,
        sync events_repair_gives_a_damaged_log_a_way_forward,
    ]
}
