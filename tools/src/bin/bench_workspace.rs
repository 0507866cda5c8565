//! Benchmark of `vm workspace import` into a running VM, beside the plain ways of copying a
//! tree in the same run and into the same guest: `tar -c | banger vm ssh VM -- tar -x` (when
//! the guest runs sshd) and `tar -c | banger vm exec -i VM -- tar -x`, then an unchanged
//! re-import, which must be at least 10× faster than the first.
//!
//! It generates a git checkout of `--files` files holding `--mib` MiB in all (random bytes,
//! seeded, in nested directories, one in ten executable), commits it, and imports it into
//! `--guest-dir`/a; tars it into `--guest-dir`/b; imports it again unchanged. Each is timed
//! end to end through the real CLI. The VM must be running; the CLI talks to the bangerd of
//! `--root` (BANGER_ROOT), never starting one.
//!
//! Run: `target/release/bench-workspace --root /tmp/r --vm dev [--guest-dir /work/bench]`
//! (the `banger` binary is taken from this binary's directory).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(about = "Benchmark workspace import against tar | banger vm exec tar")]
struct Args {
    /// BANGER_ROOT of the bangerd that runs the VM.
    #[arg(long)]
    root: Option<PathBuf>,
    /// A running VM.
    #[arg(long)]
    vm: String,
    /// Where in the guest (two directories are made under it).
    #[arg(long, default_value = "/work/bench")]
    guest_dir: String,
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    #[arg(long, default_value_t = 100)]
    mib: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

struct Banger {
    binary: PathBuf,
    root: Option<PathBuf>,
}

impl Banger {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.env("BANGER_NO_AUTOSTART", "1");
        if let Some(root) = &self.root {
            command.env("BANGER_ROOT", root);
        }
        command
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.command().args(args).output().expect("run banger");
        assert!(
            output.status.success(),
            "banger {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// xorshift64*: seeded, so every run generates the same checkout.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn generate(dir: &Path, files: usize, bytes: u64, seed: u64) {
    let mut rng = Rng(seed | 1);
    let per_file = bytes / files as u64;
    for i in 0..files {
        let sub = dir.join(format!("d{:02}/e{:02}", i % 37, (i / 37) % 23));
        std::fs::create_dir_all(&sub).expect("a directory");
        // Sizes spread around the mean, as in source trees: many small, some large.
        let size = match rng.next() % 10 {
            0 => per_file * 5,
            1..=5 => per_file / 4,
            _ => per_file * 3 / 4,
        } as usize;
        let mut content = Vec::with_capacity(size);
        while content.len() < size {
            content.extend_from_slice(&rng.next().to_le_bytes());
        }
        content.truncate(size);
        let path = sub.join(format!("f{i}.dat"));
        std::fs::write(&path, content).expect("a file");
        if i % 10 == 0 {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    for args in [
        &["init", "-q"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "commit",
            "-qm",
            "bench",
        ],
    ] {
        let status = Command::new("git")
            .args(args)
            .current_dir(dir)
            .status()
            .expect("git");
        assert!(status.success(), "git {args:?}");
    }
}

/// `tar -c` of the checkout piped into `tar -x` under `guest_dir`, run by banger with
/// `route` (`vm ssh VM --`): how long it took, or `None` when the route refused (a guest
/// without sshd has no recorded host key).
fn tar_into(banger: &Banger, checkout: &str, route: &[&str], guest_dir: &str) -> Option<Duration> {
    let started = Instant::now();
    let mut tar = Command::new("tar")
        .args(["-C", checkout, "--exclude=./.git", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let untar = banger
        .command()
        .args(route)
        .arg(format!("mkdir -p {guest_dir} && tar -C {guest_dir} -x"))
        .stdin(tar.stdout.take().expect("tar's stdout"))
        .output()
        .expect("banger");
    let _ = tar.wait();
    if !untar.status.success() {
        eprintln!(
            "{route:?} failed: {}",
            String::from_utf8_lossy(&untar.stderr).trim()
        );
        return None;
    }
    Some(started.elapsed())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() {
    let args = Args::parse();
    let bin_dir = std::env::current_exe()
        .expect("own path")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let banger = Banger {
        binary: bin_dir.join("banger"),
        root: args.root.clone(),
    };
    let work = tempfile::Builder::new()
        .prefix("bench-ws-")
        .tempdir()
        .expect("tempdir");
    let checkout = work.path().join("app");
    std::fs::create_dir(&checkout).unwrap();
    let started = Instant::now();
    generate(&checkout, args.files, args.mib << 20, args.seed);
    println!(
        "checkout: {} files, {} MiB, generated in {}",
        args.files,
        args.mib,
        secs(started.elapsed())
    );
    let guest_a = format!("{}/a", args.guest_dir);
    let guest_b = format!("{}/b", args.guest_dir);
    let guest_c = format!("{}/c", args.guest_dir);
    banger.ok(&[
        "vm", "exec", &args.vm, "--", "rm", "-rf", &guest_a, &guest_b, &guest_c,
    ]);

    let checkout_text = checkout.to_str().unwrap();
    let import = |what: &str| {
        let started = Instant::now();
        let out = banger.ok(&[
            "vm",
            "workspace",
            "import",
            &args.vm,
            checkout_text,
            "--guest-path",
            &guest_a,
            "--json",
        ]);
        let elapsed = started.elapsed();
        let result: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        println!(
            "{what:<32} {:>9}   ({} files, {} bytes sent, {} bytes hashed)",
            secs(elapsed),
            result["files"],
            result["bytes"],
            result["hashed_bytes"]
        );
        elapsed
    };
    let first = import("workspace import (first)");

    // The baseline: the same tree (without .git) through tar and vm exec's stdin.
    let started = Instant::now();
    let mut tar = Command::new("tar")
        .args(["-C", checkout_text, "--exclude=./.git", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let untar = banger
        .command()
        .args(["vm", "exec", "-i", &args.vm, "--", "sh", "-c"])
        .arg(format!("mkdir -p {guest_b} && tar -C {guest_b} -x"))
        .stdin(tar.stdout.take().expect("tar's stdout"))
        .output()
        .expect("banger vm exec");
    assert!(tar.wait().expect("tar").success());
    assert!(
        untar.status.success(),
        "tar | vm exec tar: {}",
        String::from_utf8_lossy(&untar.stderr)
    );
    let baseline = started.elapsed();
    println!(
        "{:<32} {:>9}",
        "tar -c | vm exec -i -- tar -x",
        secs(baseline)
    );

    // And through ssh, when the guest has it: the route the issue names.
    let by_ssh = tar_into(
        &banger,
        checkout_text,
        &["vm", "ssh", &args.vm, "--"],
        &guest_c,
    );
    match by_ssh {
        Some(elapsed) => println!("{:<32} {:>9}", "tar -c | vm ssh -- tar -x", secs(elapsed)),
        None => println!("{:<32} {:>9}", "tar -c | vm ssh -- tar -x", "(no sshd)"),
    }

    let again = import("workspace import (unchanged)");
    let check = banger.ok(&[
        "vm",
        "exec",
        &args.vm,
        "--",
        "sh",
        "-c",
        &format!("cd {guest_a} && find . -type f | wc -l; du -sm . | cut -f1"),
    ]);
    println!(
        "guest copy: {}",
        check
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" files, ")
            + " MiB"
    );
    let _ = std::io::stdout().flush();
    println!(
        "ratios: first import / tar via exec = {:.2} (target <= 1), first / unchanged re-import = {:.1}x (target >= 10)",
        first.as_secs_f64() / baseline.as_secs_f64(),
        first.as_secs_f64() / again.as_secs_f64()
    );
    if let Some(by_ssh) = by_ssh {
        println!(
            "ratio: first import / tar via ssh = {:.2} (target <= 1)",
            first.as_secs_f64() / by_ssh.as_secs_f64()
        );
    }
    banger.ok(&[
        "vm", "exec", &args.vm, "--", "rm", "-rf", &guest_a, &guest_b, &guest_c,
    ]);
}
