//! Benchmark of `vm create` to agent-ready, driving a real bangerd with the fake firecracker.
//!
//! Prints, for 20 sequential and 20 concurrent creates: p50/p99 latency, creates per second,
//! and each create split into host-step time (the time inside steps, from the StepStarted and
//! StepSucceeded timestamps the log recorded) and daemon time (everything else: RPC, claims,
//! appends, scheduling).
//!
//! With `--compare-launch`: create-to-agent-ready with bangerd launching the VMM against
//! banger-helper launching it through the jailer (`fake-jailer`), two daemons side by side,
//! their creates alternating, and the ratio.
//!
//! Run (as root): `cargo build --release --workspace && target/release/bench-vm`
//! (bangerd, banger-agent, banger-helper, fake-firecracker and fake-jailer are taken from the
//! directory of this binary). Each VM gets a real tap from a real banger-helper, which runs in a network
//! namespace of its own (bangerd joins it), so the host's network is never touched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger::api::{
    EventsEnd, EventsParams, ImageRegisterParams, KernelImportParams, VmCreateParams,
    VmCreateResult,
};
use banger::rpc::{Client, StreamEvent};
use banger_events::{Envelope, Event, OpId};
use banger_helper::sandbox::Sandbox;
use banger_tools::stats::Summary;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Benchmark vm create with the fake firecracker")]
struct Args {
    /// Creates per phase.
    #[arg(long, default_value_t = 20)]
    creates: usize,
    /// Compare bangerd launching the VMM with banger-helper launching it through the jailer.
    #[arg(long)]
    compare_launch: bool,
}

/// Who starts the VMMs of a benchmark daemon.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Launch {
    Bangerd,
    /// banger-helper, through `fake-jailer`.
    Helper,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let bin_dir = std::env::current_exe()
        .expect("own path")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    for needed in [
        "bangerd",
        "banger-agent",
        "banger-helper",
        "fake-firecracker",
        "fake-jailer",
    ] {
        assert!(
            bin_dir.join(needed).exists(),
            "{needed} not found next to bench-vm: build the workspace first"
        );
    }
    let root = tempfile::Builder::new()
        .prefix("bench-vm-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    if args.compare_launch {
        compare_launch(&bin_dir, args.creates).await;
        return;
    }
    let mut daemon = Daemon::start(&bin_dir, root.path(), Launch::Bangerd);
    let mut client = daemon.client().await;
    prepare_image(&mut client, root.path()).await;

    println!(
        "bench-vm: vm create to agent-ready, fake firecracker, {} creates per phase",
        args.creates
    );
    let mut sequential = Vec::new();
    let start = Instant::now();
    for n in 0..args.creates {
        sequential.push(create_on(&daemon.socket, &format!("seq-{n}")).await);
    }
    report("sequential", &sequential, start.elapsed(), &daemon.socket).await;

    let start = Instant::now();
    let tasks: Vec<_> = (0..args.creates)
        .map(|n| {
            let socket = daemon.socket.clone();
            tokio::spawn(async move { create_on(&socket, &format!("par-{n}")).await })
        })
        .collect();
    let mut concurrent = Vec::new();
    for task in tasks {
        concurrent.push(task.await.expect("create task"));
    }
    report("concurrent", &concurrent, start.elapsed(), &daemon.socket).await;
    println!("targets: at least 5 creates/s on 2 cores; daemon overhead under 10 ms per create");
    daemon.stop(&mut client).await;
}

/// Creates alternating between a daemon whose bangerd launches the VMMs and one whose
/// banger-helper does (through the jailer), so both see the same machine at the same time.
async fn compare_launch(bin_dir: &Path, creates: usize) {
    let mut daemons = Vec::new();
    let mut roots = Vec::new();
    for launch in [Launch::Bangerd, Launch::Helper] {
        let root = tempfile::Builder::new()
            .prefix("bench-vm-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let daemon = Daemon::start(bin_dir, root.path(), launch);
        let mut client = daemon.client().await;
        prepare_image(&mut client, root.path()).await;
        daemons.push((daemon, client));
        roots.push(root);
    }
    println!(
        "bench-vm --compare-launch: vm create to agent-ready, fake firecracker, {creates} creates each, alternating"
    );
    let (mut direct, mut jailed) = (Vec::new(), Vec::new());
    for n in 0..creates {
        direct.push(
            create_on(&daemons[0].0.socket, &format!("d-{n}"))
                .await
                .latency,
        );
        jailed.push(
            create_on(&daemons[1].0.socket, &format!("j-{n}"))
                .await
                .latency,
        );
    }
    let direct = Summary::of(&mut direct);
    let jailed = Summary::of(&mut jailed);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  bangerd launches the VMM:                  p50 {:>7.1} ms  p99 {:>7.1} ms",
        ms(direct.p50),
        ms(direct.p99)
    );
    println!(
        "  banger-helper launches it (jailer):        p50 {:>7.1} ms  p99 {:>7.1} ms",
        ms(jailed.p50),
        ms(jailed.p99)
    );
    println!(
        "  helper / bangerd: p50 {:.2}x (+{:.1} ms), p99 {:.2}x",
        ms(jailed.p50) / ms(direct.p50),
        ms(jailed.p50) - ms(direct.p50),
        ms(jailed.p99) / ms(direct.p99)
    );
    for (daemon, client) in &mut daemons {
        daemon.stop(client).await;
    }
}

struct Created {
    op_id: OpId,
    latency: Duration,
}

async fn create_on(socket: &Path, name: &str) -> Created {
    let mut client = Client::connect(socket).await.expect("connect");
    let params = VmCreateParams {
        name: name.to_owned(),
        image: "bench".into(),
        kernel: None,
        vcpus: Some(1),
        memory_mib: Some(128),
        work_disk_mib: Some(64),
        vmm: None,
        no_wait: false,
        progress: false,
    };
    let start = Instant::now();
    let result: VmCreateResult = client.call("vm.create", &params).await.expect("vm.create");
    Created {
        op_id: result.op_id,
        latency: start.elapsed(),
    }
}

async fn report(phase: &str, created: &[Created], wall: Duration, socket: &Path) {
    let (steps, by_step) = step_times(socket).await;
    let mut latencies: Vec<Duration> = created.iter().map(|c| c.latency).collect();
    let summary = Summary::of(&mut latencies);
    let host_ms: Vec<f64> = created
        .iter()
        .map(|c| steps.get(&c.op_id).copied().unwrap_or(0) as f64)
        .collect();
    let daemon_ms: Vec<f64> = created
        .iter()
        .zip(&host_ms)
        .map(|(c, host)| (c.latency.as_secs_f64() * 1e3 - host).max(0.0))
        .collect();
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
    println!(
        "  {phase:<10}: p50 {:>7.1} ms  p99 {:>7.1} ms  {:>6.1} creates/s   per create: host steps {:>6.1} ms, daemon {:>5.1} ms (means)",
        summary.p50.as_secs_f64() * 1e3,
        summary.p99.as_secs_f64() * 1e3,
        created.len() as f64 / wall.as_secs_f64(),
        mean(&host_ms),
        mean(&daemon_ms),
    );
    // Where the host-step time goes, step by step, in the order the steps ran.
    let mut order: Vec<&String> = Vec::new();
    for (op, step, _) in &by_step {
        if created.iter().any(|c| c.op_id == *op) && !order.contains(&step) {
            order.push(step);
        }
    }
    let per_step: Vec<String> = order
        .into_iter()
        .map(|step| {
            let times: Vec<f64> = by_step
                .iter()
                .filter(|(op, name, _)| name == step && created.iter().any(|c| c.op_id == *op))
                .map(|(_, _, ms)| *ms as f64)
                .collect();
            format!("{step} {:.1}", mean(&times))
        })
        .collect();
    println!("  {:<10}  step means (ms): {}", "", per_step.join(", "));
}

/// Milliseconds spent inside steps, from the log's timestamps: per operation, and per
/// (operation, step) in the order the steps succeeded.
async fn step_times(socket: &Path) -> (HashMap<OpId, u64>, Vec<(OpId, String, u64)>) {
    let stream_client = Client::connect(socket).await.expect("connect");
    let mut stream = stream_client
        .stream("events.follow", &EventsParams::default())
        .await
        .expect("events");
    let mut started: HashMap<(OpId, String), u64> = HashMap::new();
    let mut total: HashMap<OpId, u64> = HashMap::new();
    let mut by_step = Vec::new();
    loop {
        match stream.next::<Envelope>().await.expect("event") {
            StreamEvent::Item(envelope) => {
                let Some(op) = envelope.op_id else { continue };
                match &envelope.event {
                    Event::StepStarted(e) => {
                        started.insert((op, e.step.clone()), envelope.at_unix_ms);
                    }
                    Event::StepSucceeded(e) => {
                        if let Some(begin) = started.remove(&(op, e.step.clone())) {
                            let ms = envelope.at_unix_ms.saturating_sub(begin);
                            *total.entry(op).or_default() += ms;
                            by_step.push((op, e.step.clone(), ms));
                        }
                    }
                    _ => {}
                }
            }
            StreamEvent::End(end) => {
                let _: Option<EventsEnd> = serde_json::from_value(end).ok();
                return (total, by_step);
            }
        }
    }
}

async fn prepare_image(client: &mut Client, root: &Path) {
    let kernel_dir = root.join("kernel");
    std::fs::create_dir_all(&kernel_dir).expect("kernel dir");
    std::fs::write(
        kernel_dir.join("vmlinux"),
        b"\x7fELF fake kernel for the benchmark",
    )
    .expect("kernel");
    let _: serde_json::Value = client
        .call(
            "kernel.import",
            &KernelImportParams {
                name: "bench".into(),
                from: kernel_dir.display().to_string(),
            },
        )
        .await
        .expect("kernel.import");
    let rootfs = root.join("rootfs.ext4");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "bench"])
        .arg(&rootfs)
        .arg("64M")
        .status()
        .expect("run mkfs.ext4 (install e2fsprogs)");
    assert!(status.success(), "mkfs.ext4 failed");
    let _: serde_json::Value = client
        .call(
            "image.register",
            &ImageRegisterParams {
                name: "bench".into(),
                rootfs: rootfs.display().to_string(),
                kernel: Some("bench".into()),
            },
        )
        .await
        .expect("image.register");
}

struct Daemon {
    child: Child,
    _helper: Sandbox,
    socket: PathBuf,
}

impl Daemon {
    fn start(bin_dir: &Path, root: &Path, launch: Launch) -> Daemon {
        assert!(
            nix::unistd::geteuid().is_root(),
            "bench-vm runs banger-helper in a network namespace of its own: run it as root"
        );
        let fake = bin_dir.join("fake-firecracker");
        let jails = root.join("jails");
        let jail_args = [
            "--jailer".to_owned(),
            bin_dir.join("fake-jailer").display().to_string(),
            "--firecracker".to_owned(),
            fake.display().to_string(),
            "--jail-dir".to_owned(),
            jails.display().to_string(),
        ];
        let helper_args: Vec<&str> = match launch {
            Launch::Bangerd => Vec::new(),
            Launch::Helper => jail_args.iter().map(String::as_str).collect(),
        };
        let agent = bin_dir.join("banger-agent").display().to_string();
        // One line per request on the helper's stderr would drown the figures.
        let helper = Sandbox::start_with_args_and_env(
            &bin_dir.join("banger-helper"),
            root,
            Stdio::null(),
            &helper_args,
            // The jailed fake runs the agent named here (there is none beside its jail's copy).
            &[("BANGER_FAKE_AGENT", agent.as_str())],
        )
        .expect("start banger-helper in a network namespace");
        let layout = banger::paths::Layout::rooted(root);
        std::fs::create_dir_all(&layout.config_dir).expect("config dir");
        let launcher = match launch {
            Launch::Bangerd => "bangerd",
            Launch::Helper => "helper",
        };
        std::fs::write(
            layout.config_path(),
            format!("[firecracker]\nlaunch = \"{launcher}\"\n"),
        )
        .expect("config");
        let mut bangerd = Command::new(bin_dir.join("bangerd"));
        bangerd
            .env("BANGER_ROOT", root)
            .env("BANGER_FIRECRACKER", bin_dir.join("fake-firecracker"))
            .env("BANGER_FAKE_AGENT", bin_dir.join("banger-agent"))
            .env("BANGER_LOG", "warn")
            .stdin(Stdio::null());
        helper
            .join(&mut bangerd)
            .expect("join the helper's network namespace");
        let child = bangerd.spawn().expect("start bangerd");
        let socket = banger::paths::Layout::rooted(root).socket_path();
        Daemon {
            child,
            _helper: helper,
            socket,
        }
    }

    async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(client) = Client::connect(&self.socket).await {
                return client;
            }
            assert!(
                Instant::now() < deadline,
                "bangerd did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&mut self, client: &mut Client) {
        let names: serde_json::Value = client
            .call("vm.list", &serde_json::json!({}))
            .await
            .expect("vm.list");
        for vm in names["vms"].as_array().into_iter().flatten() {
            if let Some(name) = vm["name"].as_str() {
                let _: Result<serde_json::Value, _> = client
                    .call("vm.delete", &serde_json::json!({ "name": name }))
                    .await;
            }
        }
        let _: Result<serde_json::Value, _> =
            client.call("daemon.shutdown", &serde_json::json!({})).await;
        let _ = self.child.wait();
    }
}
