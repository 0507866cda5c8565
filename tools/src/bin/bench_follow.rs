//! Benchmark of `banger events --follow --json` during a burst of appends, beside
//! `banger events --json` reading the same range, in the same run.
//!
//! A real bangerd on a temporary root; concurrent `kernel.import` requests (9 events each)
//! append at least `--events` events as fast as the daemon commits them, while a real
//! `banger events --follow --json` process prints them into a pipe that this program reads,
//! stamping each line as it arrives. Printed:
//!
//! - append rate: events committed per second during the burst (what the follower has to
//!   keep up with);
//! - follow rate: events per second the follower delivered, first line to last;
//! - lag, commit to print: the time from an event's `at_unix_ms` (stamped by the log writer
//!   just before the commit that makes it durable, so the commit's fsync is included) to its
//!   line reaching the reader — p50, p99, max, in milliseconds (the stamp's resolution);
//! - baseline: `banger events --json --since S` reading the same range once it is all there,
//!   events per second over the whole process (start, connect, read, print, exit), and a
//!   second `--follow` started then, catching up over that range: what a follower can take
//!   when the events are already there (the live follower is bound by the append rate).
//!
//! Run: `cargo build --release --workspace && target/release/bench-follow` (bangerd and
//! banger are taken from this binary's directory). No root needed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use banger::api::{KernelImportParams, PingResult};
use banger::rpc::Client;
use banger_events::Envelope;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Benchmark events --follow during a burst of appends")]
struct Args {
    /// Events to append in the burst (at least; imports append 9 each).
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Concurrent clients making the burst.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Where the temporary BANGER_ROOT goes (the disk whose fsync is measured).
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
}

/// Events one `kernel.import` appends: started, 3 steps × 2, registered, succeeded.
const EVENTS_PER_IMPORT: u64 = 9;

fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let bin_dir = std::env::current_exe()
        .expect("own path")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    for needed in ["bangerd", "banger"] {
        assert!(
            bin_dir.join(needed).exists(),
            "{needed} not found next to bench-follow: build the workspace first"
        );
    }
    let root = tempfile::Builder::new()
        .prefix("bench-follow-")
        .tempdir_in(&args.dir)
        .expect("tempdir");
    let kernel_dir = root.path().join("kernel-src");
    std::fs::create_dir_all(&kernel_dir).expect("kernel dir");
    let mut vmlinux = b"\x7fELF".to_vec();
    vmlinux.extend_from_slice(b"Linux version 6.1.0-bench (bench@banger) #1 SMP\0");
    std::fs::write(kernel_dir.join("vmlinux"), vmlinux).expect("vmlinux");

    let mut daemon = start_bangerd(&bin_dir, root.path());
    let socket = banger::paths::Layout::rooted(root.path()).socket_path();
    import(&socket, &kernel_dir, "warm-up").await;
    let start_seq = ping(&socket).await.last_seq;

    // The follower, from the current end; lines stamped as they arrive.
    let mut follower = Command::new(bin_dir.join("banger"))
        .args([
            "events",
            "--follow",
            "--json",
            "--since",
            &start_seq.0.to_string(),
        ])
        .env("BANGER_ROOT", root.path())
        .env("BANGER_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the follower");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<(u64, String)>();
    let stdout = follower.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send((now_unix_us(), line)).is_err() {
                break;
            }
        }
    });
    // Live once it printed an event appended after it started.
    import(&socket, &kernel_dir, "marker").await;
    let marker_end = ping(&socket).await.last_seq;
    let mut received: Vec<(u64, String)> = Vec::new();
    wait_for_seq(&lines_rx, &mut received, marker_end.0);
    received.clear();

    // The burst.
    let imports = args.events.div_ceil(EVENTS_PER_IMPORT);
    println!(
        "bench-follow: {} events ({imports} kernel imports from {} clients) while `banger events --follow --json` prints them",
        imports * EVENTS_PER_IMPORT,
        args.clients
    );
    let next = Arc::new(AtomicU64::new(0));
    let burst_start = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| {
            let (socket, kernel_dir, next) = (socket.clone(), kernel_dir.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= imports {
                        break;
                    }
                    import(&socket, &kernel_dir, &format!("k{n}")).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("burst task");
    }
    let burst_wall = burst_start.elapsed();
    let end = ping(&socket).await.last_seq;
    wait_for_seq(&lines_rx, &mut received, end.0);
    let first_seq = marker_end.0 + 1;
    let count = end.0 - marker_end.0;

    let mut lags_us = Vec::with_capacity(received.len());
    let mut seqs = Vec::with_capacity(received.len());
    for (at_us, line) in &received {
        let envelope: Envelope = serde_json::from_str(line).expect("an envelope per line");
        seqs.push(envelope.seq.0);
        lags_us.push(at_us.saturating_sub(envelope.at_unix_ms * 1000));
    }
    assert_eq!(
        seqs,
        (first_seq..=end.0).collect::<Vec<_>>(),
        "the follower skipped or repeated events"
    );
    let follow_span_us =
        received.last().map(|l| l.0).unwrap_or(0) - received.first().map(|l| l.0).unwrap_or(0);
    lags_us.sort_unstable();
    let at = |q: f64| lags_us[((lags_us.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
    println!(
        "  appended : {count} events in {:.2} s = {:>8.0} events/s (group commit, {} clients)",
        burst_wall.as_secs_f64(),
        count as f64 / burst_wall.as_secs_f64(),
        args.clients
    );
    println!(
        "  --follow : {count} events in {:.2} s = {:>8.0} events/s (first line to last)",
        follow_span_us as f64 / 1e6,
        count as f64 / (follow_span_us.max(1) as f64 / 1e6)
    );
    println!(
        "  lag, commit to print: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        at(0.50),
        at(0.99),
        at(1.0)
    );

    // Baseline: the same range read with `banger events --json` once it is all there.
    let read_start = Instant::now();
    let output = Command::new(bin_dir.join("banger"))
        .args(["events", "--json", "--since", &marker_end.0.to_string()])
        .env("BANGER_ROOT", root.path())
        .env("BANGER_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run events --json");
    let read_wall = read_start.elapsed();
    let lines = output
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count() as u64;
    assert_eq!(lines, count, "events --json read another range");
    println!(
        "  baseline, events --json over the same range: {lines} events in {:.2} s = {:>8.0} events/s (whole process)",
        read_wall.as_secs_f64(),
        lines as f64 / read_wall.as_secs_f64()
    );
    // What a follower can take when the events are there: a second `--follow` started now,
    // catching up over the same range (the same stream, before it goes live).
    let catch_up_start = Instant::now();
    let mut catching_up = Command::new(bin_dir.join("banger"))
        .args([
            "events",
            "--follow",
            "--json",
            "--since",
            &marker_end.0.to_string(),
        ])
        .env("BANGER_ROOT", root.path())
        .env("BANGER_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the catching-up follower");
    let last_needle = format!("{{\"seq\":{},", end.0);
    let caught_up = BufReader::new(catching_up.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok)
        .position(|line| line.starts_with(&last_needle))
        .map(|index| index as u64 + 1);
    let catch_up_wall = catch_up_start.elapsed();
    assert_eq!(
        caught_up,
        Some(count),
        "the catching-up follower read another range"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(catching_up.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = catching_up.wait();
    println!(
        "  --follow catching up over the same range: {count} events in {:.2} s = {:>8.0} events/s (start to last line)",
        catch_up_wall.as_secs_f64(),
        count as f64 / catch_up_wall.as_secs_f64()
    );
    println!(
        "  ratios: live --follow kept {:.2}× the append rate; catching up it reads at {:.2}× events --json",
        (count as f64 / (follow_span_us.max(1) as f64 / 1e6))
            / (count as f64 / burst_wall.as_secs_f64()),
        read_wall.as_secs_f64() / catch_up_wall.as_secs_f64()
    );

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follower.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = follower.wait();
    let _ = reader.join();
    stop_bangerd(&mut daemon, &socket).await;
}

fn start_bangerd(bin_dir: &Path, root: &Path) -> Child {
    let child = Command::new(bin_dir.join("bangerd"))
        .env("BANGER_ROOT", root)
        .env("BANGER_LOG", "warn")
        .env("BANGER_NO_AUTOSTART", "1")
        .stdin(Stdio::null())
        .spawn()
        .expect("start bangerd");
    let socket = banger::paths::Layout::rooted(root).socket_path();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "bangerd did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

async fn stop_bangerd(child: &mut Child, socket: &Path) {
    let mut client = Client::connect(socket).await.expect("connect");
    let _: serde_json::Value = client
        .call("daemon.shutdown", &serde_json::json!({}))
        .await
        .expect("shutdown");
    let _ = child.wait();
}

async fn ping(socket: &Path) -> PingResult {
    let mut client = Client::connect(socket).await.expect("connect");
    client
        .call("daemon.ping", &serde_json::json!({}))
        .await
        .expect("ping")
}

async fn import(socket: &Path, kernel_dir: &Path, name: &str) {
    let mut client = Client::connect(socket).await.expect("connect");
    let params = KernelImportParams {
        name: name.to_owned(),
        from: kernel_dir.display().to_string(),
    };
    let _: serde_json::Value = client
        .call("kernel.import", &params)
        .await
        .unwrap_or_else(|e| panic!("kernel.import {name}: {e}"));
}

/// Reads stamped lines until one holds `seq` (60 s at most).
fn wait_for_seq(
    lines: &std::sync::mpsc::Receiver<(u64, String)>,
    received: &mut Vec<(u64, String)>,
    seq: u64,
) {
    let needle = format!("{{\"seq\":{seq},");
    if received.iter().any(|(_, line)| line.starts_with(&needle)) {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, line) = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the follower did not print seq {seq}"));
        let done = line.starts_with(&needle);
        received.push((at, line));
        if done {
            return;
        }
    }
}
