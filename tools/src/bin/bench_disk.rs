//! bench-disk: what a VM's root disk costs to make — a reflink clone of a 1 GiB image on a
//! filesystem that can clone (XFS with reflink, as banger's state directory may be) beside a
//! sparse copy of the same image on the same filesystem, and on ext4, in the same run.
//!
//! On XFS, `copy_file_range` (what banger's sparse copy uses) shares extents as a clone
//! does, so the sparse copy there costs what the reflink does; a byte copy through a buffer
//! is the same-filesystem baseline, and ext4 (no reflink) shows what the sparse copy costs
//! where nothing can be shared.
//!
//! The image is an ext4 filesystem of 1 GiB holding about 600 MiB of files (incompressible
//! data in files of a few MiB, like a root filesystem's binaries and libraries), made once.
//! Each way of copying runs `--runs` times into a fresh name; the page cache is dropped
//! before each run so the copies read from the disk as a VM create after a while would. The
//! medians are printed with the ratio to the reflink.
//!
//! Needs root: the filesystems are sparse image files, loop-mounted under a temporary
//! directory (`--dir` names a filesystem to use instead of the loop XFS).
//!
//! `cargo build --release -p banger-tools --bin bench-disk && sudo target/release/bench-disk`

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use banger::host::disk::{CopyMethod, clone_or_copy, sparse_copy_file};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 5;
    let mut data_mib: u64 = 600;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--runs" => {
                runs = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(runs);
                i += 1;
            }
            "--data-mib" => {
                data_mib = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(data_mib);
                i += 1;
            }
            "-h" | "--help" => {
                println!("usage: bench-disk [--runs N] [--data-mib M]   (as root)");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("bench-disk: unknown argument {other}");
                return ExitCode::from(2);
            }
        }
        i += 1;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("bench-disk: needs root (it loop-mounts XFS and ext4 images)");
        return ExitCode::from(2);
    }
    let work = tempfile::Builder::new()
        .prefix("bench-disk-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let xfs = LoopFs::make(work.path(), "xfs");
    let ext4 = LoopFs::make(work.path(), "ext4");
    println!("making a 1 GiB ext4 image with {data_mib} MiB of files ...");
    let image_on_xfs = xfs.mount.join("image.ext4");
    make_image(&image_on_xfs, data_mib, work.path());
    let image_on_ext4 = ext4.mount.join("image.ext4");
    sparse_copy_file(&image_on_xfs, &image_on_ext4).unwrap();
    let allocated = fs::metadata(&image_on_xfs).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    });
    println!(
        "image: 1024 MiB apparent, {} MiB allocated",
        allocated.unwrap_or(0) >> 20
    );

    let reflink = time_runs(
        runs,
        &xfs.mount,
        "reflink",
        |src, dst| {
            assert_eq!(clone_or_copy(src, dst).unwrap(), CopyMethod::Reflink);
        },
        &image_on_xfs,
    );
    let sparse_xfs = time_runs(
        runs,
        &xfs.mount,
        "sparse",
        |src, dst| {
            sparse_copy_file(src, dst).unwrap();
        },
        &image_on_xfs,
    );
    let bytes_xfs = time_runs(runs, &xfs.mount, "bytes", byte_copy, &image_on_xfs);
    let sparse_ext4 = time_runs(
        runs,
        &ext4.mount,
        "sparse",
        |src, dst| {
            assert_eq!(clone_or_copy(src, dst).unwrap(), CopyMethod::Sparse);
        },
        &image_on_ext4,
    );

    println!();
    println!("root disk of a 1 GiB image ({runs} runs, medians, page cache dropped before each):");
    let base = reflink.as_secs_f64();
    for (what, took) in [
        ("reflink clone (XFS)", reflink),
        ("sparse copy (XFS: copy_file_range clones)", sparse_xfs),
        ("byte copy through a buffer (XFS)", bytes_xfs),
        ("sparse copy (ext4, what banger does there)", sparse_ext4),
    ] {
        println!(
            "  {what:<44} {:>9.1} ms  {:>8.1}x the reflink",
            took.as_secs_f64() * 1000.0,
            took.as_secs_f64() / base
        );
    }
    drop(xfs);
    drop(ext4);
    ExitCode::SUCCESS
}

fn time_runs(
    runs: usize,
    dir: &Path,
    name: &str,
    copy: impl Fn(&Path, &Path),
    image: &Path,
) -> Duration {
    let mut times = Vec::new();
    for run in 0..runs {
        let dst = dir.join(format!("{name}-{run}.ext4"));
        drop_caches();
        let started = Instant::now();
        copy(image, &dst);
        times.push(started.elapsed());
        fs::remove_file(&dst).unwrap();
    }
    times.sort();
    times[times.len() / 2]
}

/// Every byte read and written through user space, holes included: a copy no filesystem
/// can shortcut.
fn byte_copy(src: &Path, dst: &Path) {
    use std::io::Read;
    // A loop of its own: std's io::copy between two files becomes copy_file_range, which
    // XFS turns into a clone.
    let mut input = fs::File::open(src).unwrap();
    let mut output = fs::File::create(dst).unwrap();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        output.write_all(&buffer[..n]).unwrap();
    }
    output.sync_all().unwrap();
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// A 1 GiB ext4 image holding `data_mib` MiB of incompressible files of 1 to 8 MiB.
fn make_image(path: &Path, data_mib: u64, scratch: &Path) {
    let content = scratch.join("content");
    fs::create_dir_all(&content).unwrap();
    let mut left = data_mib << 20;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut n = 0;
    while left > 0 {
        let size = (((n % 8) + 1) << 20).min(left);
        let mut bytes = vec![0u8; size as usize];
        for chunk in bytes.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let word = seed.to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        let dir = content.join(format!("d{}", n / 50));
        fs::create_dir_all(&dir).unwrap();
        fs::File::create(dir.join(format!("f{n}")))
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        left -= size;
        n += 1;
    }
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(path)
        .arg("1G"));
    fs::remove_dir_all(&content).unwrap();
}

struct LoopFs {
    mount: PathBuf,
}

impl LoopFs {
    fn make(work: &Path, kind: &str) -> LoopFs {
        let image = work.join(format!("{kind}.img"));
        fs::File::create(&image).unwrap().set_len(4 << 30).unwrap();
        match kind {
            "xfs" => run(Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image)),
            _ => run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image)),
        }
        let mount = work.join(kind);
        fs::create_dir_all(&mount).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount));
        LoopFs { mount }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
