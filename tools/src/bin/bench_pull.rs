//! bench-pull: `banger image pull` of a multi-layer image of about 200 MB from a registry on
//! loopback, through the real bangerd and CLI, beside the chained standard tools and the
//! floor, measured in the same run on the same registry.
//!
//! The image is `bench-flatten`'s (three gzip layers built from the host's own files: about
//! 211 MB of tar, 50 MB compressed, 11,000 entries, deletions and an opaque directory), put in
//! an OCI layout by umoci and pushed by skopeo to Debian's `docker-registry` on 127.0.0.1.
//! Then, each `--runs` times (medians are printed):
//!
//! - banger cold: a fresh state and an empty blob cache, `banger image pull REF` (bangerd
//!   already running): resolve, download, verify, flatten, agent, ext4, publish, recorded;
//! - banger again: the same pull once more — the image is there, the registry is asked for
//!   the manifest and it is still the same: `already pulled`, nothing downloaded or built;
//! - banger from the cache: `image delete`, then the pull once more: every blob from the cache,
//!   the flatten again;
//! - chained tools, cold: `skopeo copy docker://REF oci:DIR`, `umoci unpack --rootless`,
//!   `mkfs.ext4 -d` into an image of banger's size (what a rootless pull chains today; it
//!   loses ownership, banger keeps it);
//! - floor: gunzip the layers (the blobs banger cached) to /dev/null, then write as many bytes
//!   as banger's image holds (its allocated blocks) to a new file and fsync it.
//!
//! Run it from a release build (`cargo build --release -p banger --bins -p banger-tools --bin
//! bench-pull && target/release/bench-pull`): it runs the `banger` and `bangerd` beside it.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use banger_tools::layers::{
    build_layers, median, mib, open_gzip, run_tool, secs, umoci_layout, write_bytes,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 3;
    let mut workdir = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--runs" => runs = rest.next().and_then(|n| n.parse().ok()).unwrap_or(3),
            "--workdir" => workdir = rest.next().map(PathBuf::from),
            "--help" | "-h" => {
                eprintln!("usage: bench-pull [--runs N] [--workdir DIR]");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other}; see --help");
                return ExitCode::from(2);
            }
        }
    }
    match bench(runs.max(1), workdir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `docker-registry` on a free loopback port, killed when dropped.
struct Registry {
    child: Child,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(dir: &Path) -> io::Result<Registry> {
    let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
    let config = dir.join("registry.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: bench\n",
            dir.join("storage").display()
        ),
    )?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            io::Error::other(format!(
                "docker-registry (apt-get install docker-registry): {e}"
            ))
        })?;
    let registry = Registry { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(io::Error::other("docker-registry did not start"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(registry)
}

/// A banger state directory with its own bangerd, started by the CLI.
struct Banger {
    root: PathBuf,
    bin: PathBuf,
}

impl Banger {
    fn new(root: PathBuf, bin: PathBuf, registry: &str) -> io::Result<Banger> {
        fs::create_dir_all(root.join("config"))?;
        fs::write(
            root.join("config/config.toml"),
            format!("[registry]\ninsecure = [\"{registry}\"]\n"),
        )?;
        let banger = Banger { root, bin };
        banger.run(&["image", "list"])?;
        Ok(banger)
    }

    fn run(&self, args: &[&str]) -> io::Result<Duration> {
        let started = Instant::now();
        let output = Command::new(self.bin.join("banger"))
            .args(args)
            .env("BANGER_ROOT", &self.root)
            .env_remove("BANGER_NO_AUTOSTART")
            .stdin(Stdio::null())
            .output()?;
        let elapsed = started.elapsed();
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "banger {args:?} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(elapsed)
    }

    fn image(&self, name: &str) -> PathBuf {
        self.root.join("state/images").join(name)
    }
}

impl Drop for Banger {
    fn drop(&mut self) {
        let pid_file = self.root.join("state/bangerd.pid");
        if let Some(pid) = fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn bench(runs: usize, workdir: Option<PathBuf>) -> io::Result<()> {
    let bin = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| io::Error::other("no directory for this executable"))?;
    for needed in ["banger", "bangerd"] {
        if !bin.join(needed).is_file() {
            return Err(io::Error::other(format!(
                "{} is missing: build it beside bench-pull (cargo build --release -p banger --bins)",
                bin.join(needed).display()
            )));
        }
    }
    let temp = tempfile::Builder::new()
        .prefix("bench-pull")
        .tempdir_in(workdir.unwrap_or_else(std::env::temp_dir))?;
    let work = temp.path();
    println!("building the layers in {} …", work.display());
    let layers = build_layers(work)?;
    let compressed: u64 = layers.iter().map(|l| l.compressed_bytes).sum();
    let uncompressed: u64 = layers.iter().map(|l| l.uncompressed_bytes).sum();
    let entries: u64 = layers.iter().map(|l| l.entries).sum();
    let layout = work.join("oci");
    umoci_layout(&layout, &layers)?;
    for layer in &layers {
        fs::remove_file(&layer.path)?;
    }
    let registry = start_registry(work)?;
    let host = format!("127.0.0.1:{}", registry.port);
    let reference = format!("{host}/bench/img:1");
    run_tool(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:bench", layout.display()))
            .arg(format!("docker://{reference}")),
    )?;
    fs::remove_dir_all(&layout)?;
    println!(
        "image {reference}: {} gzip layers, {:.1} MiB compressed, {:.1} MiB of tar, {entries} entries",
        layers.len(),
        mib(compressed),
        mib(uncompressed),
    );

    let (mut cold, mut again, mut cached, mut chained, mut floor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut skopeo, mut umoci, mut mkfs) = (Vec::new(), Vec::new(), Vec::new());
    let mut image_bytes = (0, 0);
    for run in 0..runs {
        let banger = Banger::new(work.join(format!("root-{run}")), bin.clone(), &host)?;
        let pull = ["image", "pull", reference.as_str(), "--name", "bench"];
        cold.push(banger.run(&pull)?);
        again.push(banger.run(&pull)?);
        banger.run(&["image", "delete", "bench"])?;
        cached.push(banger.run(&pull)?);
        let rootfs = banger.image("bench").join("rootfs.ext4");
        let meta = fs::metadata(&rootfs)?;
        let (size, allocated) = (meta.len(), meta.blocks() * 512);
        image_bytes = (size, allocated);

        // The floor: the same blobs gunzipped to nowhere, then the image's bytes written.
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(banger.image("bench").join("manifest.json"))?)
                .map_err(io::Error::other)?;
        let blobs = banger.root.join("cache/oci/blobs/sha256");
        let started = Instant::now();
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let digest = layer["digest"].as_str().unwrap_or_default();
            let hex = digest.trim_start_matches("sha256:");
            io::copy(&mut open_gzip(&blobs.join(hex)), &mut io::sink())?;
        }
        write_bytes(&work.join("floor.bin"), allocated)?;
        floor.push(started.elapsed());
        fs::remove_file(work.join("floor.bin"))?;
        drop(banger);

        // The chained tools, cold: their own copy of the blobs, the tree, the filesystem.
        let chain = work.join(format!("chain-{run}"));
        fs::create_dir_all(&chain)?;
        let oci = format!("{}:bench", chain.join("oci").display());
        let started = Instant::now();
        run_tool(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{reference}"))
                .arg(format!("oci:{oci}")),
        )?;
        let copied = started.elapsed();
        run_tool(
            Command::new("umoci")
                .args(["unpack", "--rootless", "--image", &oci])
                .arg(chain.join("bundle")),
        )?;
        let unpacked = started.elapsed();
        run_tool(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(chain.join("bundle/rootfs"))
                .arg(chain.join("image.ext4"))
                .arg(format!("{}k", size / 1024)),
        )?;
        let file = fs::File::open(chain.join("image.ext4"))?;
        file.sync_all()?;
        let done = started.elapsed();
        chained.push(done);
        skopeo.push(copied);
        umoci.push(unpacked - copied);
        mkfs.push(done - unpacked);
        fs::remove_dir_all(&chain)?;
        println!(
            "run {}: banger cold {:.2} s, again {:.3} s, from the cache {:.2} s; chained {:.2} s; floor {:.2} s",
            run + 1,
            secs(cold[run]),
            secs(again[run]),
            secs(cached[run]),
            secs(chained[run]),
            secs(floor[run])
        );
    }
    let (cold, again, cached) = (median(&mut cold), median(&mut again), median(&mut cached));
    let (chained, floor) = (median(&mut chained), median(&mut floor));
    println!(
        "banger's image: {:.1} MiB ({:.1} MiB allocated)",
        mib(image_bytes.0),
        mib(image_bytes.1)
    );
    println!("median of {runs} run(s):");
    println!(
        "  floor (gunzip the layers → /dev/null + write the image's bytes + fsync)  {:>7.2} s",
        secs(floor)
    );
    println!(
        "  banger image pull, cold (empty cache)                                  {:>7.2} s   {:.2}× the floor, {:.2}× the chained tools",
        secs(cold),
        secs(cold) / secs(floor),
        secs(cold) / secs(chained)
    );
    println!(
        "  banger image pull again (already pulled: manifest checked)             {:>7.3} s   {:.1}% of cold",
        secs(again),
        100.0 * secs(again) / secs(cold)
    );
    println!(
        "  banger image pull after image delete (every blob cached)               {:>7.2} s   {:.0}% of cold",
        secs(cached),
        100.0 * secs(cached) / secs(cold)
    );
    println!(
        "  chained: skopeo copy + umoci unpack --rootless + mkfs.ext4 -d          {:>7.2} s   (skopeo {:.2} s, umoci {:.2} s, mkfs {:.2} s)",
        secs(chained),
        secs(median(&mut skopeo)),
        secs(median(&mut umoci)),
        secs(median(&mut mkfs))
    );
    drop(registry);
    Ok(())
}
