//! Real guests end to end: Debian images pulled from a registry, Debian's cloud kernel pulled
//! from its package, booted under QEMU's microvm (software emulation here), all through the
//! real `banger` CLI and `bangerd`.
//!
//! Each test runs in the test network of its root (a real banger-helper in a throwaway network
//! namespace: bridge, taps, NAT), and so does everything the guests and bangerd must reach: a
//! `docker-registry` holding Debian roots built by debootstrap (`guest_images`), and an HTTP
//! server that the kernel catalog's download is mirrored to (serving the real .deb).
//!
//! - A Debian with systemd and openssh-server: `image pull`, `vm create --vmm qemu` (the
//!   default kernel pulled on first use), `vm exec` (the Debian kernel, root, systemd as PID 1
//!   with the agent as its service, the hostname), a file on the work disk kept across a stop
//!   and a start, the guest reaching the bridge over its tap and, through banger's NAT, a
//!   listener in another namespace (which sees the NAT's address, not the guest's), a graceful
//!   stop that the guest's own systemd carries out, restart, a kill -9 of bangerd while the VM
//!   runs (re-adopted, `vm exec` works), kill and delete leaving no QEMU, tap or directory.
//! - `vm run -- CMD` with the default image (the catalog's `debian`, a docker.io reference
//!   mirrored to the test registry, which holds a root with no init, like Debian's container
//!   image): the agent boots as PID 1, the command's exit status comes back, `--rm` deletes
//!   the VM; `vm run` with nothing else on a terminal the test owns: the stages, a login
//!   shell in the guest, its exit status; a second `vm run -- true` prints its stages.
//! - kill -9 of bangerd in the middle of a boot: the next bangerd rolls the create back: no
//!   VM, no QEMU, no tap, no directory.
//!
//! Nothing sleeps to synchronise: every wait polls a condition with a deadline.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use banger::api::VmShowResult;
use banger::host::network::GATEWAY;
use banger_events::Handle;
use banger_test_harness::http::FileServer;

use super::guest_images::{GuestRoot, root_tarball};
use super::kernel_pull::serve_the_debian_entry;
use super::registry::support::{Layer, TestRegistry};
use super::support::{Bangerd, TestNetwork, TestRoot, all_events, processes_mentioning};
use super::tty::Screen;

const BANGER: &str = env!("CARGO_BIN_EXE_banger");

/// A TCG boot of a systemd guest on a loaded 2-core machine takes tens of seconds; bangerd's
/// own boot timeout is set to this too.
pub(crate) const BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// Everything else.
pub(crate) const DEADLINE: Duration = Duration::from_secs(90);

pub(crate) fn tests() -> Vec<banger_test_harness::Test> {
    banger_test_harness::tests![
        sync a_debian_image_with_systemd_runs_its_whole_life_under_qemu needs(Root, Qemu),
        sync vm_run_pulls_the_default_image_and_kernel_and_boots_the_agent_as_init needs(Root, Qemu),
        sync a_kill_9_of_bangerd_mid_boot_is_rolled_back_and_leaves_nothing needs(Root, Qemu),
    ]
}

// ---- the lab ---------------------------------------------------------------------------------

/// One test's world: bangerd in its root's test network, and there a registry and the kernel
/// download's server.
pub(crate) struct Lab {
    pub(crate) daemon: Bangerd,
    registry: TestRegistry,
    _kernel_server: FileServer,
}

impl Lab {
    /// Starts the registry and the kernel server in the root's test network, writes the
    /// config (the registry reached over plain HTTP, the kernel download sent to the server,
    /// boot and stop timeouts for TCG, plus `extra`), and starts bangerd.
    pub(crate) fn start(extra: impl FnOnce(&TestRegistry) -> String) -> Lab {
        Lab::start_on(TestRoot::new(), None, extra)
    }

    /// As [`Lab::start`], with bangerd running as `uid` (an ordinary user) on `root`, whose
    /// helper must allow it.
    pub(crate) fn start_as(
        root: TestRoot,
        uid: u32,
        extra: impl FnOnce(&TestRegistry) -> String,
    ) -> Lab {
        Lab::start_on(root, Some(uid), extra)
    }

    fn start_on(
        root: TestRoot,
        run_as: Option<u32>,
        extra: impl FnOnce(&TestRegistry) -> String,
    ) -> Lab {
        let network = root
            .network()
            .expect("the root tier gives each root a test network");
        network.run("ip", &["link", "set", "lo", "up"]);
        let registry = in_namespace(network, TestRegistry::start);
        let kernel_server = FileServer::start_on(network.listen_tcp());
        let entry = serve_the_debian_entry(&kernel_server, &root.scratch("kernel-catalog"));
        let config = format!(
            "{}\n[registry]\ninsecure = [\"{}\"]\n{}\n[timeouts]\nboot = \"{}s\"\nstop = \"120s\"\n",
            entry.config,
            registry.host(),
            extra(&registry),
            BOOT_DEADLINE.as_secs()
        );
        let path = root.layout().config_path();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, config).unwrap();
        let daemon = match run_as {
            Some(uid) => Bangerd::start_on_as(root, uid),
            None => Bangerd::start_on(root),
        };
        Lab {
            daemon,
            registry,
            _kernel_server: kernel_server,
        }
    }

    pub(crate) fn network(&self) -> &TestNetwork {
        self.daemon.root().network().unwrap()
    }

    /// Pushes a Debian root (built by debootstrap, cached) as a one-layer image under
    /// `repo_tag`; returns its full reference.
    pub(crate) fn push(&self, root: GuestRoot, repo_tag: &str) -> String {
        let tar = std::fs::read(root_tarball(root)).expect("read the root's tarball");
        // Both compressions a registry serves, one per root.
        let layer = match root {
            GuestRoot::Systemd => Layer::gzip(&tar),
            GuestRoot::Container => Layer::zstd(&tar),
        };
        let registry = &self.registry;
        in_namespace(self.network(), || {
            registry.push_image(repo_tag, &[layer], "amd64").reference
        })
    }

    /// Runs the CLI on this root (never starting another bangerd).
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(BANGER);
        if let Some(uid) = self.daemon.runs_as() {
            // The CLI runs as bangerd's user, as that user would run it.
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, uid);
            command.env("HOME", self.daemon.root().path());
        }
        command
            .args(args)
            .env("BANGER_ROOT", self.daemon.root().path())
            .env("BANGER_NO_AUTOSTART", "1")
            // Outside any git checkout, so that `vm run` imports no workspace unless a test
            // asks for one.
            .current_dir(self.daemon.root().path())
            .stdin(Stdio::null())
            .output()
            .expect("run banger")
    }

    /// The CLI must succeed; its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "banger {args:?} failed ({}):\n{}{}\nbangerd said:\n{}",
            output.status,
            text(&output.stdout),
            text(&output.stderr),
            self.daemon.output()
        );
        text(&output.stdout)
    }

    /// `vm exec NAME -- argv…`, which must succeed; its stdout, trimmed.
    pub(crate) fn exec(&self, name: &str, argv: &[&str]) -> String {
        let mut args = vec!["vm", "exec", name, "--"];
        args.extend_from_slice(argv);
        self.ok(&args).trim().to_owned()
    }

    pub(crate) fn show(&self, name: &str) -> VmShowResult {
        serde_json::from_str(&self.ok(&["vm", "show", name, "--json"])).expect("vm show --json")
    }

    /// The VM's console log as the host has it.
    fn console(&self, shown: &VmShowResult) -> String {
        let bytes =
            std::fs::read(self.daemon.layout().vm_console_log(shown.vm.id)).unwrap_or_default();
        text(&bytes)
    }

    /// QEMU processes started for this root.
    pub(crate) fn qemus(&self) -> Vec<u32> {
        processes_mentioning(self.daemon.root().path())
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("qemu"))
            })
            .collect()
    }

    /// Waits until every tap in the test network is a spare of the pool (as the log says):
    /// no VM holds one, and none is left over.
    pub(crate) fn taps_are_only_spares(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut taps = self.network().taps();
            taps.sort();
            let mut spares = pool_spares(&self.daemon);
            spares.sort();
            if taps == spares {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "taps {taps:?} in the network, spares {spares:?} in the log"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The spare taps of the pool, from the log.
fn pool_spares(daemon: &Bangerd) -> Vec<String> {
    let socket = daemon.socket();
    let events = runtime().block_on(all_events(&socket));
    let mut state = banger_projections::Projections::default();
    for envelope in &events {
        banger_events::Fold::apply(&mut state, envelope);
    }
    banger::operations::tap_fill::pool_taps(&state)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `work` on a thread that has entered the test network's namespace: sockets it opens
/// and processes it starts live there.
fn in_namespace<T: Send>(network: &TestNetwork, work: impl FnOnce() -> T + Send) -> T {
    let namespace = network.namespace();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("enter the test network namespace");
                work()
            })
            .join()
            .expect("the thread in the test network")
    })
}

/// A TCP listener in the test network (where the bridge is) on `address`.
fn listen_in(network: &TestNetwork, address: Ipv4Addr) -> TcpListener {
    in_namespace(network, || {
        TcpListener::bind(SocketAddrV4::new(address, 0)).expect("bind in the test network")
    })
}

/// Accepts one connection and returns the peer's address and the first line it sent; answers
/// `reply`.
fn accept_one(
    listener: TcpListener,
    reply: &'static str,
) -> std::thread::JoinHandle<(String, String)> {
    std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().expect("accept the guest's connection");
        stream
            .set_read_timeout(Some(DEADLINE))
            .expect("a read timeout");
        let mut line = String::new();
        BufReader::new(stream.try_clone().unwrap())
            .read_line(&mut line)
            .expect("read the guest's line");
        let _ = stream.write_all(reply.as_bytes());
        (peer.ip().to_string(), line.trim().to_owned())
    })
}

/// A second network namespace on the far side of the test network, joined to it by a veth
/// pair (namespace-local addresses, 10.254.77.0/24): what "the internet" is to a guest here.
/// The far side has no route to the guests' subnet, so only NAT'd traffic gets answers.
struct FarSide {
    holder: Child,
}

const NEAR_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 254, 77, 1);
const FAR_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 254, 77, 2);

impl FarSide {
    fn start(network: &TestNetwork) -> FarSide {
        // A process in a namespace of its own, started from the test network (so it can be
        // reached by pid from there), holds the far namespace.
        let mut command = Command::new("unshare");
        command
            .args(["--net", "sleep", "infinity"])
            .stdin(Stdio::null());
        network.join(&mut command);
        let holder = command.spawn().expect("start unshare");
        let pid = holder.id().to_string();
        // Wait until it is in its own namespace (unshare has run).
        let deadline = Instant::now() + DEADLINE;
        while std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
            == std::fs::read_link("/proc/self/ns/net").ok()
            || std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| !String::from_utf8_lossy(&c).starts_with("sleep"))
        {
            assert!(Instant::now() < deadline, "unshare never ran sleep");
            std::thread::sleep(Duration::from_millis(20));
        }
        let far = FarSide { holder };
        network.run(
            "ip",
            &[
                "link", "add", "bgnear", "type", "veth", "peer", "name", "bgfar", "netns", &pid,
            ],
        );
        network.run("ip", &["addr", "add", "10.254.77.1/24", "dev", "bgnear"]);
        network.run("ip", &["link", "set", "bgnear", "up"]);
        for args in [
            vec!["ip", "addr", "add", "10.254.77.2/24", "dev", "bgfar"],
            vec!["ip", "link", "set", "bgfar", "up"],
            vec!["ip", "link", "set", "lo", "up"],
        ] {
            let output = Command::new("nsenter")
                .args(["-t", &pid, "-n", "--"])
                .args(&args)
                .output()
                .expect("run nsenter");
            assert!(
                output.status.success(),
                "{args:?}: {}",
                text(&output.stderr)
            );
        }
        far
    }

    /// A TCP listener on the far side's address.
    fn listen(&self) -> TcpListener {
        let namespace = std::fs::File::open(format!("/proc/{}/ns/net", self.holder.id()))
            .expect("open the far namespace");
        std::thread::spawn(move || {
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter the far namespace");
            TcpListener::bind(SocketAddrV4::new(FAR_ADDRESS, 0)).expect("bind on the far side")
        })
        .join()
        .unwrap()
    }
}

impl Drop for FarSide {
    fn drop(&mut self) {
        // The namespace (and the veth's far end with it) goes with its last process.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Polls `condition` until it holds; panics with `what` after `within`.
pub(crate) fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `bash -c` that sends `line` to ADDRESS:PORT over the guest's /dev/tcp and prints the
/// answer's first line.
fn guest_tcp_exchange(address: Ipv4Addr, port: u16, line: &str) -> String {
    format!("exec 3<>/dev/tcp/{address}/{port} && echo {line} >&3 && head -n1 <&3 && exec 3<&-")
}

// ---- a Debian with systemd, from pull to delete -------------------------------------------------

fn a_debian_image_with_systemd_runs_its_whole_life_under_qemu() {
    let mut lab = Lab::start(|_| String::new());
    let reference = lab.push(GuestRoot::Systemd, "banger/debian-systemd:12");
    let pulled = lab.ok(&["image", "pull", &reference, "--name", "debian-systemd"]);
    assert!(pulled.contains("debian-systemd"), "{pulled}");
    // A whole debootstrapped Debian, flattened by banger: e2fsprogs finds nothing to fix, and
    // the setuid programs and root-owned tree arrive as debootstrap made them.
    let rootfs = lab
        .daemon
        .layout()
        .image_dir("debian-systemd")
        .join("rootfs.ext4");
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn {}:\n{}{}",
        rootfs.display(),
        text(&fsck.stdout),
        text(&fsck.stderr)
    );
    let su = Command::new("debugfs")
        .args(["-R", "stat /usr/bin/su"])
        .arg(&rootfs)
        .output()
        .unwrap();
    let su = text(&su.stdout);
    let words: Vec<&str> = su.split_whitespace().collect();
    assert!(
        words.windows(2).any(|w| w == ["Mode:", "04755"])
            && words.windows(2).any(|w| w == ["User:", "0"]),
        "/usr/bin/su in the flattened root:\n{su}"
    );

    // The default kernel is not here: the create pulls it first, then boots.
    let created_at = Instant::now();
    let create = lab.cli(&[
        "vm",
        "create",
        "dev",
        "--image",
        "debian-systemd",
        "--vmm",
        "qemu",
        "--cpus",
        "1",
        "--memory",
        "512M",
    ]);
    assert!(
        create.status.success(),
        "vm create failed:\n{}{}\nbangerd said:\n{}",
        text(&create.stdout),
        text(&create.stderr),
        lab.daemon.output()
    );
    println!(
        "vm create (kernel pull + boot to agent ready): {:?}",
        created_at.elapsed()
    );
    let kernels = lab.ok(&["kernel", "list"]);
    assert!(
        kernels.contains(banger::kernel::DEFAULT_KERNEL),
        "{kernels}"
    );

    // Inside: Debian's kernel, root, systemd as PID 1 running the agent as a service.
    let shown = lab.show("dev");
    assert_eq!(shown.vm.state, banger_events::VmState::Running);
    let release = lab.exec("dev", &["uname", "-r"]);
    assert!(release.ends_with("-cloud-amd64"), "uname -r: {release}");
    assert_eq!(lab.exec("dev", &["id", "-un"]), "root");
    assert_eq!(lab.exec("dev", &["cat", "/proc/1/comm"]), "systemd");
    assert_eq!(
        lab.exec("dev", &["systemctl", "is-active", "banger-agent"]),
        "active"
    );
    assert_eq!(lab.exec("dev", &["hostname"]), "dev");
    let os = lab.exec("dev", &["cat", "/etc/os-release"]);
    assert!(os.contains("bookworm"), "{os}");

    // A command on a terminal in the guest (`-tt`: this test has no terminal of its own).
    let on_a_terminal = lab.ok(&[
        "vm",
        "exec",
        "-tt",
        "dev",
        "--",
        "sh",
        "-c",
        "tty && test -t 0 && test -t 1 && echo on-a-terminal",
    ]);
    assert!(
        on_a_terminal.contains("/dev/pts/") && on_a_terminal.contains("on-a-terminal"),
        "{on_a_terminal:?}"
    );

    // The work disk: mounted at /work, written now, read back after a stop and a start.
    let mounts = lab.exec("dev", &["cat", "/proc/mounts"]);
    assert!(
        mounts.lines().any(|l| l.split(' ').nth(1) == Some("/work")),
        "{mounts}"
    );
    lab.exec(
        "dev",
        &["sh", "-c", "echo kept-across-a-stop > /work/probe"],
    );

    // The network: the bridge over the tap, and through NAT a listener in another namespace.
    let gateway = Ipv4Addr::from(GATEWAY);
    let bridge_listener = listen_in(lab.network(), gateway);
    let port = bridge_listener.local_addr().unwrap().port();
    let accepted = accept_one(bridge_listener, "hello guest\n");
    let answer = lab.exec(
        "dev",
        &[
            "bash",
            "-c",
            &guest_tcp_exchange(gateway, port, "from-the-guest"),
        ],
    );
    let (peer, line) = accepted.join().unwrap();
    assert_eq!(line, "from-the-guest");
    assert_eq!(answer, "hello guest");
    assert!(
        peer.starts_with("172.30.0."),
        "the guest's own address: {peer}"
    );
    let far = FarSide::start(lab.network());
    let far_listener = far.listen();
    let port = far_listener.local_addr().unwrap().port();
    let accepted = accept_one(far_listener, "hello from afar\n");
    let answer = lab.exec(
        "dev",
        &[
            "bash",
            "-c",
            &guest_tcp_exchange(FAR_ADDRESS, port, "through-nat"),
        ],
    );
    let (peer, line) = accepted.join().unwrap();
    assert_eq!(
        (line.as_str(), answer.as_str()),
        ("through-nat", "hello from afar")
    );
    assert_eq!(
        peer,
        NEAR_ADDRESS.to_string(),
        "the far side sees the NAT's address, not the guest's"
    );
    drop(far);

    // A graceful stop: the power button, and the guest's systemd shuts it down.
    let qemu = shown.vm.process.expect("a running VM has a process");
    lab.ok(&["vm", "stop", "dev"]);
    let console = lab.console(&shown);
    assert!(
        console.contains("reboot: Power down"),
        "the guest powered itself off: {}",
        tail(&console)
    );
    assert!(
        console.contains("systemd-shutdown"),
        "systemd ran its shutdown: {}",
        tail(&console)
    );
    assert!(!Path::new(&format!("/proc/{}", qemu.pid)).exists() || lab.qemus().is_empty());
    assert!(lab.qemus().is_empty(), "no QEMU after a stop");

    // Started again: the work disk kept its file.
    lab.ok(&["vm", "start", "dev"]);
    assert_eq!(
        lab.exec("dev", &["cat", "/work/probe"]),
        "kept-across-a-stop"
    );

    // A restart is a stop and a start: a new boot.
    let boot_id = lab.exec("dev", &["cat", "/proc/sys/kernel/random/boot_id"]);
    lab.ok(&["vm", "restart", "dev"]);
    let rebooted = lab.exec("dev", &["cat", "/proc/sys/kernel/random/boot_id"]);
    assert_ne!(boot_id, rebooted, "restart booted the guest again");

    // kill -9 of bangerd while the VM runs: the next bangerd re-adopts it.
    let before = lab.show("dev").vm.process.expect("running");
    lab.daemon.kill();
    lab.daemon.restart();
    let after = lab.show("dev");
    assert_eq!(after.vm.state, banger_events::VmState::Running);
    assert_eq!(after.vm.process.as_ref().map(|p| p.pid), Some(before.pid));
    assert_eq!(
        lab.exec("dev", &["cat", "/proc/sys/kernel/random/boot_id"]),
        rebooted,
        "the same boot, re-adopted"
    );

    // Kill, then delete: nothing of the VM is left.
    let tap = vm_tap(&after);
    lab.ok(&["vm", "kill", "dev"]);
    wait_for("QEMU to be gone after vm kill", DEADLINE, || {
        lab.qemus().is_empty()
    });
    lab.ok(&["vm", "delete", "dev"]);
    assert!(!lab.daemon.layout().vm_dir(after.vm.id).exists());
    assert!(lab.ok(&["vm", "list"]).lines().all(|l| !l.contains("dev ")));
    lab.taps_are_only_spares();
    let pool = pool_spares(&lab.daemon);
    assert!(
        tap.is_none_or(|tap| !lab.network().taps().contains(&tap) || pool.contains(&tap)),
        "the VM's tap is gone or back in the pool"
    );
}

/// The tap the VM holds, from its handles.
fn vm_tap(shown: &VmShowResult) -> Option<String> {
    shown.handles.iter().find_map(|entry| match &entry.handle {
        Handle::Tap { name } => Some(name.clone()),
        _ => None,
    })
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

// ---- vm run with the defaults ------------------------------------------------------------------

fn vm_run_pulls_the_default_image_and_kernel_and_boots_the_agent_as_init() {
    // The catalog's default image is docker.io/library/debian:bookworm; docker.io is mirrored
    // to the test registry, which holds a root with no init under that name.
    let lab = Lab::start(|registry| {
        format!(
            "[registry.mirrors]\n\"docker.io\" = \"{}\"\n",
            registry.host()
        )
    });
    lab.push(GuestRoot::Container, "library/debian:bookworm");

    let run = lab.cli(&[
        "vm",
        "run",
        "--vmm",
        "qemu",
        "--rm",
        "--",
        "sh",
        "-c",
        "cat /proc/1/comm; echo on $(hostname); exit 7",
    ]);
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert_eq!(
        run.status.code(),
        Some(7),
        "vm run exits with the command's status:\n{stdout}{stderr}\nbangerd said:\n{}",
        lab.daemon.output()
    );
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("banger-agent"),
        "the agent is PID 1: {stdout}"
    );
    assert!(
        lines.next().is_some_and(|l| l.starts_with("on ")),
        "{stdout}"
    );
    println!("first vm run (image pull, kernel pull, boot, command, delete):\n{stderr}");
    assert!(lab.ok(&["image", "list"]).contains("debian"));
    assert!(
        lab.ok(&["vm", "list", "--json"]).trim() == "[]",
        "--rm deleted the VM"
    );

    // The main job, on a terminal: `vm run` with nothing else prints its stages, then a login
    // shell in the guest (bash, from the guest's /etc/passwd) on a terminal of this one's
    // size; the shell's exit status is banger's, the terminal is put back, --rm deletes.
    runtime().block_on(async {
        let root = lab.daemon.root().path();
        let mut screen = Screen::spawn(
            root,
            &["vm", "run", "--vmm", "qemu", "--name", "shell", "--rm"],
            40,
            120,
        );
        for stage in ["agent ready ", "login shell in shell"] {
            screen.wait_for(stage).await;
        }
        screen
            .type_keys(
                b"echo \"M-$((6*7)) $SHELL $(stty size) $(hostname) $(cat /proc/1/comm) END\"\r",
            )
            .await;
        screen.wait_for(" END\r\n").await;
        let text = screen.text();
        let answer = text.split("M-42 ").last().unwrap().split(" END").next();
        assert_eq!(
            answer,
            Some("/bin/bash 40 120 shell banger-agent"),
            "{text:?}"
        );
        screen.type_keys(b"exit 3\r").await;
        let status = screen.exit().await;
        assert_eq!(status.code(), Some(3), "{:?}", screen.text());
        screen.assert_modes_restored();
        screen.wait_for("deleted shell").await;
    });

    // Everything pulled: `vm run -- true` is create, boot, exec, delete.
    let started = Instant::now();
    let run = lab.cli(&["vm", "run", "--vmm", "qemu", "--rm", "--", "true"]);
    let elapsed = started.elapsed();
    assert!(run.status.success(), "{}", text(&run.stderr));
    println!(
        "vm run -- true, everything pulled: {elapsed:?}\n{}",
        text(&run.stderr)
    );
    assert!(lab.qemus().is_empty(), "no QEMU after --rm");
    lab.taps_are_only_spares();
}

// ---- kill -9 mid-boot ----------------------------------------------------------------------------

fn a_kill_9_of_bangerd_mid_boot_is_rolled_back_and_leaves_nothing() {
    let mut lab = Lab::start(|_| String::new());
    let reference = lab.push(GuestRoot::Container, "banger/debian-container:12");
    lab.ok(&["image", "pull", &reference, "--name", "plain"]);
    lab.ok(&["kernel", "pull", banger::kernel::DEFAULT_KERNEL]);

    let create = lab.ok(&[
        "vm",
        "create",
        "dev",
        "--image",
        "plain",
        "--vmm",
        "qemu",
        "--no-wait",
    ]);
    assert!(create.contains("creating dev"), "{create}");
    // QEMU is up and the guest is booting: bangerd dies.
    wait_for("QEMU to start", BOOT_DEADLINE, || !lab.qemus().is_empty());
    let shown = lab.show("dev");
    assert_ne!(
        shown.vm.state,
        banger_events::VmState::Running,
        "still booting"
    );
    lab.daemon.kill();
    lab.daemon.restart();

    // Recovery rolls the create back.
    wait_for("the create to be rolled back", DEADLINE, || {
        lab.ok(&["vm", "list", "--json"]).trim() == "[]"
    });
    wait_for("QEMU to be gone", DEADLINE, || lab.qemus().is_empty());
    assert!(!lab.daemon.layout().vm_dir(shown.vm.id).exists());
    lab.taps_are_only_spares();
    let ops = lab.ok(&["ops", "--all"]);
    assert!(ops.contains("rolled_back"), "{ops}");

    // And the next create of the same name works.
    lab.ok(&["vm", "create", "dev", "--image", "plain", "--vmm", "qemu"]);
    assert_eq!(lab.exec("dev", &["cat", "/proc/1/comm"]), "banger-agent");
    lab.ok(&["vm", "delete", "dev"]);
}
