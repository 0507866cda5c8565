//! Benchmark of a real boot to agent-ready under QEMU, banger beside QEMU launched by hand on
//! the same kernel, initrd and root filesystem, in the same run; then `vm run -- true`.
//!
//! Each of `--runs` rounds (medians are printed):
//!
//! - raw QEMU: `qemu-system-x86_64` with a command line as a person would write it (the
//!   microvm machine, the same accelerator, vCPUs, memory and kernel arguments banger uses,
//!   the root filesystem copied, the agent's virtio-serial port, no network), timed from the
//!   spawn until the agent in the guest answers a health request;
//! - banger: `banger vm create --vmm qemu` through the real CLI and bangerd, timed from the
//!   CLI's spawn to its exit (the agent answered), split with the log's timestamps into the
//!   guest's time (the steps from the VMM's launch to the agent's answer) and banger's own
//!   (everything else: the CLI, RPC, disks, the tap, appends);
//! - `vm run --rm -- true`: wall time, with the stages the CLI prints.
//!
//! Inputs: a kernel bundle directory (`vmlinux` or `vmlinuz`, `initrd.img`) and an ext4 root
//! filesystem with banger's agent in it — by default what `banger vm run` (or `banger kernel
//! pull` and `banger image pull debian`) left in your own state directory.
//!
//! Run it as root (each VM's tap comes from a real banger-helper, in a network namespace of
//! its own, so the host's network is never touched), from a release build:
//! `cargo build --release --workspace && sudo target/release/bench-boot`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger::agent::client::AgentClient;
use banger::api::{EventsEnd, EventsParams};
use banger::host::guest_agent::{AgentEndpoint, AgentLinks};
use banger::host::vmm::AgentTransport;
use banger::rpc::{Client, StreamEvent};
use banger_events::{Envelope, Event, OpId};
use banger_helper::sandbox::Sandbox;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Benchmark a real boot under QEMU: banger beside QEMU launched by hand")]
struct Args {
    /// Rounds (each: one raw boot, one banger boot, one `vm run -- true`).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The kernel bundle directory [default: the pulled debian-12-cloud in your state dir].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The root filesystem (ext4, with banger's agent) [default: the pulled debian image].
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// vCPUs and memory of every guest.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    #[arg(long, default_value_t = 512)]
    memory_mib: u32,
}

/// What TCG needs on the kernel command line (see docs/ARCHITECTURE.md, the boot contract).
const TCG_KERNEL_ARGS: &str = "tsc_early_khz=2000000 lpj=4000000 no_timer_check";
const DEADLINE: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let bin_dir = std::env::current_exe()
        .expect("own path")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    for needed in ["banger", "bangerd", "banger-helper"] {
        assert!(
            bin_dir.join(needed).exists(),
            "{needed} not found next to bench-boot: build the workspace first"
        );
    }
    let user = banger::paths::Layout::user().expect("your banger state directory");
    let kernel = args
        .kernel
        .clone()
        .unwrap_or_else(|| user.kernel_dir(banger::kernel::DEFAULT_KERNEL));
    let rootfs = args
        .rootfs
        .clone()
        .unwrap_or_else(|| user.image_dir("debian").join("rootfs.ext4"));
    let vmlinux = ["vmlinux", "vmlinuz"]
        .iter()
        .map(|name| kernel.join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "no vmlinux or vmlinuz in {}: pass --kernel DIR (a bundle: `banger kernel pull`)",
                kernel.display()
            )
        });
    let initrd = kernel.join("initrd.img");
    assert!(
        rootfs.is_file(),
        "{} is missing: pass --rootfs FILE (`banger image pull debian` makes one)",
        rootfs.display()
    );
    let qemu = which("qemu-system-x86_64");
    let accel = banger::host::qemu::Accel::for_host(&banger::host::kvm::probe());
    println!(
        "kernel {}, root filesystem {}, {} vCPU, {} MiB, accel {}",
        vmlinux.display(),
        rootfs.display(),
        args.vcpus,
        args.memory_mib,
        accel.as_str()
    );

    let root = tempfile::Builder::new()
        .prefix("bench-boot-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let mut daemon = Daemon::start(&bin_dir, root.path(), &qemu);
    let banger = Cli {
        binary: bin_dir.join("banger"),
        root: root.path().to_path_buf(),
    };
    banger.ok(&["kernel", "import", "bench", "--from", path_str(&kernel)]);
    banger.ok(&[
        "image",
        "register",
        "bench",
        "--rootfs",
        path_str(&rootfs),
        "--kernel",
        "bench",
    ]);
    let shape = [
        "--image".to_owned(),
        "bench".to_owned(),
        "--vmm".to_owned(),
        "qemu".to_owned(),
        "--cpus".to_owned(),
        args.vcpus.to_string(),
        "--memory".to_owned(),
        format!("{}M", args.memory_mib),
    ];

    let mut raw = Vec::new();
    let mut banger_wall = Vec::new();
    let mut banger_guest = Vec::new();
    let mut banger_own = Vec::new();
    let mut run_true = Vec::new();
    let mut step_totals: HashMap<String, Vec<f64>> = HashMap::new();
    for round in 1..=args.runs {
        let raw_boot = raw_qemu_boot(&qemu, accel, &vmlinux, &initrd, &rootfs, &args).await;

        let name = format!("bench{round}");
        let mut create = vec!["vm".to_owned(), "create".to_owned(), name.clone()];
        create.extend(shape.iter().cloned());
        let started = Instant::now();
        banger.ok_owned(&create);
        let wall = started.elapsed();
        let steps = op_steps(&daemon.socket, &name).await;
        let guest: u64 = steps
            .iter()
            .filter(|(step, _)| GUEST_STEPS.contains(&step.as_str()))
            .map(|(_, ms)| ms)
            .sum();
        for (step, ms) in &steps {
            step_totals
                .entry(step.clone())
                .or_default()
                .push(*ms as f64);
        }
        banger.ok(&["vm", "delete", &name]);

        let mut run = vec!["vm".to_owned(), "run".to_owned()];
        run.extend(shape.iter().cloned());
        run.extend(["--rm", "--", "true"].map(str::to_owned));
        let started = Instant::now();
        let stages = banger.ok_owned(&run);
        let run_wall = started.elapsed();

        println!(
            "round {round}: raw QEMU {:.2} s; banger {:.2} s (guest {:.2} s, banger {:.3} s); \
             vm run -- true {:.2} s",
            raw_boot.as_secs_f64(),
            wall.as_secs_f64(),
            guest as f64 / 1000.0,
            wall.as_secs_f64() - guest as f64 / 1000.0,
            run_wall.as_secs_f64()
        );
        if round == 1 {
            println!("  vm run's stages:");
            for line in stages.lines() {
                println!("    {line}");
            }
        }
        raw.push(raw_boot.as_secs_f64());
        banger_wall.push(wall.as_secs_f64());
        banger_guest.push(guest as f64 / 1000.0);
        banger_own.push(wall.as_secs_f64() - guest as f64 / 1000.0);
        run_true.push(run_wall.as_secs_f64());
    }
    daemon.stop().await;

    let raw_median = median(&raw);
    let wall_median = median(&banger_wall);
    println!("median of {} round(s):", args.runs);
    println!("  raw QEMU, spawn to agent answering            {raw_median:>8.2} s");
    println!(
        "  banger vm create, CLI spawn to exit           {wall_median:>8.2} s   {:.2}× raw ({:+.1}%)",
        wall_median / raw_median,
        (wall_median / raw_median - 1.0) * 100.0
    );
    println!(
        "    the guest's time (launch → agent ready)     {:>8.2} s",
        median(&banger_guest)
    );
    println!(
        "    banger's own time (everything else)         {:>8.3} s   {:.1}% of the raw boot",
        median(&banger_own),
        median(&banger_own) / raw_median * 100.0
    );
    let mut steps: Vec<_> = step_totals.into_iter().collect();
    steps.sort_by(|a, b| median(&b.1).total_cmp(&median(&a.1)));
    let steps: Vec<String> = steps
        .iter()
        .map(|(step, ms)| format!("{step} {:.0}", median(ms)))
        .collect();
    println!("    steps (ms): {}", steps.join(", "));
    println!(
        "  vm run --rm -- true (create, boot, exec, delete) {:>5.2} s",
        median(&run_true)
    );
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The steps of `vm.create` from the VMM's launch to the agent's answer: the guest's time.
const GUEST_STEPS: [&str; 4] = [
    "launch-vmm",
    "configure",
    "instance-start",
    "wait-for-agent",
];

/// Boots the same guest with QEMU launched by hand and returns the time from the spawn until
/// its agent answers a health request.
async fn raw_qemu_boot(
    qemu: &Path,
    accel: banger::host::qemu::Accel,
    vmlinux: &Path,
    initrd: &Path,
    rootfs: &Path,
    args: &Args,
) -> Duration {
    let dir = tempfile::Builder::new()
        .prefix("bench-boot-raw-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let root = dir.path().join("root.ext4");
    // A copy, as banger makes one (reflink where the filesystem can, else sparse).
    let copied = Command::new("cp")
        .args(["--reflink=auto", "--sparse=always"])
        .arg(rootfs)
        .arg(&root)
        .status()
        .expect("run cp");
    assert!(copied.success(), "copy the root filesystem");
    let agent_socket = dir.path().join("agent.sock");
    let (accel_arg, cpu) = match accel {
        banger::host::qemu::Accel::Kvm => ("kvm", "host"),
        banger::host::qemu::Accel::Tcg => ("tcg,thread=multi", "max"),
    };
    let mut append = "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw \
                      banger.hostname=raw banger.agent=serial"
        .to_owned();
    if accel == banger::host::qemu::Accel::Tcg {
        append.push(' ');
        append.push_str(TCG_KERNEL_ARGS);
    }
    let started = Instant::now();
    let mut child = Command::new(qemu)
        .args(["-M", "microvm,acpi=on,pit=on,pic=on,rtc=on"])
        .args(["-accel", accel_arg, "-cpu", cpu])
        .args(["-smp", &args.vcpus.to_string()])
        .args(["-m", &format!("{}M", args.memory_mib)])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", dir.path().join("console.log").display()))
        .arg("-kernel")
        .arg(vmlinux)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append])
        .arg("-drive")
        .arg(format!(
            "id=root,format=raw,if=none,file={}",
            root.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .args(["-device", "virtio-serial-device"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=agent,path={},server=on,wait=off",
            agent_socket.display()
        ))
        .args(["-device", "virtserialport,chardev=agent,name=banger.agent"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu");
    let endpoint = AgentEndpoint {
        transport: AgentTransport::VirtioSerial,
        vsock_socket: dir.path().join("unused.vsock"),
        serial_socket: agent_socket,
    };
    let links = AgentLinks::new();
    loop {
        assert!(
            started.elapsed() < DEADLINE,
            "the raw guest's agent never answered; its console: {}",
            std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default()
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("raw QEMU exited: {status}");
        }
        if let Ok(stream) = links.connect(&endpoint, Duration::from_secs(1)).await
            && let Ok(mut agent) = AgentClient::handshake(stream, "bench-boot").await
            && agent.health().await.is_ok()
        {
            break;
        }
        links.forget(endpoint.socket());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    kill(&mut child);
    elapsed
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Milliseconds inside each step of the `vm.create` of VM `name`, from the log.
async fn op_steps(socket: &Path, name: &str) -> Vec<(String, u64)> {
    let client = Client::connect(socket).await.expect("connect");
    let mut stream = client
        .stream("events.follow", &EventsParams::default())
        .await
        .expect("events");
    let mut op: Option<OpId> = None;
    let mut started: HashMap<String, u64> = HashMap::new();
    let mut steps = Vec::new();
    loop {
        match stream.next::<Envelope>().await.expect("event") {
            StreamEvent::Item(envelope) => {
                if let Event::VmDefined(defined) = &envelope.event
                    && defined.name == name
                {
                    op = envelope.op_id;
                }
                if envelope.op_id.is_none() || envelope.op_id != op {
                    continue;
                }
                match &envelope.event {
                    Event::StepStarted(e) => {
                        started.insert(e.step.clone(), envelope.at_unix_ms);
                    }
                    Event::StepSucceeded(e) => {
                        if let Some(begin) = started.remove(&e.step) {
                            steps.push((e.step.clone(), envelope.at_unix_ms.saturating_sub(begin)));
                        }
                    }
                    _ => {}
                }
            }
            StreamEvent::End(end) => {
                let _: Option<EventsEnd> = serde_json::from_value(end).ok();
                return steps;
            }
        }
    }
}

struct Cli {
    binary: PathBuf,
    root: PathBuf,
}

impl Cli {
    fn ok(&self, args: &[&str]) -> String {
        let output = Command::new(&self.binary)
            .args(args)
            .env("BANGER_ROOT", &self.root)
            .env("BANGER_NO_AUTOSTART", "1")
            // Outside any git checkout, so that `vm run` imports no workspace.
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .output()
            .expect("run banger");
        assert!(
            output.status.success(),
            "banger {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // The stages go to stderr; what a command prints, to stdout.
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn ok_owned(&self, args: &[String]) -> String {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&args)
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH (apt-get install qemu-system-x86)"))
}

struct Daemon {
    child: Child,
    _helper: Sandbox,
    socket: PathBuf,
}

impl Daemon {
    fn start(bin_dir: &Path, root: &Path, qemu: &Path) -> Daemon {
        assert!(
            nix::unistd::geteuid().is_root(),
            "bench-boot runs banger-helper in a network namespace of its own: run it as root"
        );
        let helper = Sandbox::start(&bin_dir.join("banger-helper"), root, Stdio::null())
            .expect("start banger-helper in a network namespace");
        let config = banger::paths::Layout::rooted(root).config_path();
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(
            &config,
            format!(
                "[qemu]\nbinary = \"{}\"\n[timeouts]\nboot = \"300s\"\n",
                qemu.display()
            ),
        )
        .unwrap();
        let mut bangerd = Command::new(bin_dir.join("bangerd"));
        bangerd
            .env("BANGER_ROOT", root)
            .env("BANGER_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        helper
            .join(&mut bangerd)
            .expect("join the helper's network namespace");
        let child = bangerd.spawn().expect("start bangerd");
        let socket = banger::paths::Layout::rooted(root).socket_path();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "bangerd did not answer within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            _helper: helper,
            socket,
        }
    }

    async fn stop(&mut self) {
        let client = Client::connect(&self.socket).await;
        if let Ok(mut client) = client {
            let _: Result<serde_json::Value, _> =
                client.call("daemon.shutdown", &serde_json::json!({})).await;
        }
        let _ = self.child.wait();
    }
}
