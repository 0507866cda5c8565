//! bench-flatten: how fast banger turns OCI layers into an ext4 image, next to the floor and to
//! the chained standard tools, measured in the same run on the same layers.
//!
//! It builds a multi-layer image from the host's own files (about 200 MB: Python's standard
//! library and the C headers, then some binaries, then a layer that deletes, hides with an
//! opaque directory and replaces), gzip-compressed as registries serve them. Then, each
//! `--runs` times (the median is printed):
//!
//! - floor: decompress every layer to /dev/null, then write as many bytes as the image's
//!   content holds to a new file and fsync it: what no flatten can beat;
//! - banger: `banger::image::flatten_layers` from the compressed layers to a synced image;
//! - umoci: `umoci unpack --rootless` of the same layers from an OCI layout (what a rootless
//!   pull chains today; it loses ownership, banger keeps it);
//! - mkfs: `mkfs.ext4 -d` of umoci's extracted tree into an image of banger's size.
//!
//! `bench-flatten flatten OUT LAYER.tar…` runs the writer alone on uncompressed layer tars.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use banger::image::{FlattenOptions, ImageSummary, flatten_layers};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("flatten") if args.len() >= 3 => {
            let output = PathBuf::from(&args[1]);
            let layers = args[2..]
                .iter()
                .map(|path| BufReader::new(File::open(path).expect("open layer")));
            match flatten_layers(layers, &output, FlattenOptions::default()) {
                Ok(summary) => {
                    println!("{summary:?}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("--help") | Some("-h") => {
            eprintln!(
                "usage: bench-flatten [--runs N] [--workdir DIR]\n       bench-flatten flatten OUT LAYER.tar…"
            );
            ExitCode::SUCCESS
        }
        _ => {
            let mut runs = 3;
            let mut workdir = None;
            let mut rest = args.iter();
            while let Some(arg) = rest.next() {
                match arg.as_str() {
                    "--runs" => runs = rest.next().and_then(|n| n.parse().ok()).unwrap_or(3),
                    "--workdir" => workdir = rest.next().map(PathBuf::from),
                    other => {
                        eprintln!("unknown argument {other}; see --help");
                        return ExitCode::from(2);
                    }
                }
            }
            match bench(runs, workdir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn bench(runs: usize, workdir: Option<PathBuf>) -> io::Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("bench-flatten")
        .tempdir_in(workdir.unwrap_or_else(std::env::temp_dir))?;
    let work = temp.path();
    println!("building the layers in {} …", work.display());
    let layers = build_layers(work)?;
    let compressed: u64 = layers.iter().map(|l| l.compressed_bytes).sum();
    let uncompressed: u64 = layers.iter().map(|l| l.uncompressed_bytes).sum();
    let entries: u64 = layers.iter().map(|l| l.entries).sum();
    println!(
        "layers: {} gzip, {:.1} MiB compressed, {:.1} MiB of tar, {} entries",
        layers.len(),
        mib(compressed),
        mib(uncompressed),
        entries
    );

    // The same layers decompressed, to time the writer apart from gunzip.
    let mut tars = Vec::new();
    for layer in &layers {
        let tar = layer.path.with_extension("").with_extension("raw.tar");
        io::copy(&mut open_gzip(&layer.path), &mut File::create(&tar)?)?;
        tars.push(tar);
    }

    let layout = work.join("oci");
    let have_umoci = umoci_layout(&layout, &layers).is_ok();
    if !have_umoci {
        println!("umoci not found: the chained-tools figures are skipped (apt-get install umoci)");
    }

    let mut floor = Vec::new();
    let mut banger = Vec::new();
    let mut banger_nosync = Vec::new();
    let mut floor_raw = Vec::new();
    let mut banger_raw = Vec::new();
    let mut umoci = Vec::new();
    let mut mkfs = Vec::new();
    let mut summary: Option<ImageSummary> = None;
    for run in 0..runs {
        let image = work.join(format!("banger-{run}.ext4"));
        let started = Instant::now();
        let built = flatten_layers(
            layers.iter().map(|l| open_gzip(&l.path)),
            &image,
            FlattenOptions::default(),
        )
        .map_err(io::Error::other)?;
        banger.push(started.elapsed());
        fs::remove_file(&image)?;

        let started = Instant::now();
        flatten_layers(
            layers.iter().map(|l| open_gzip(&l.path)),
            &image,
            FlattenOptions {
                sync: false,
                ..FlattenOptions::default()
            },
        )
        .map_err(io::Error::other)?;
        banger_nosync.push(started.elapsed());
        fs::remove_file(&image)?;

        let started = Instant::now();
        for layer in &layers {
            io::copy(&mut open_gzip(&layer.path), &mut io::sink())?;
        }
        write_bytes(&work.join("floor.bin"), built.content_bytes)?;
        floor.push(started.elapsed());
        fs::remove_file(work.join("floor.bin"))?;

        let started = Instant::now();
        flatten_layers(
            tars.iter().map(|tar| open_plain(tar)),
            &image,
            FlattenOptions::default(),
        )
        .map_err(io::Error::other)?;
        banger_raw.push(started.elapsed());
        fs::remove_file(&image)?;

        let started = Instant::now();
        for tar in &tars {
            io::copy(&mut open_plain(tar), &mut io::sink())?;
        }
        write_bytes(&work.join("floor.bin"), built.content_bytes)?;
        floor_raw.push(started.elapsed());
        fs::remove_file(work.join("floor.bin"))?;

        if have_umoci {
            let bundle = work.join(format!("bundle-{run}"));
            let started = Instant::now();
            run_tool(
                Command::new("umoci")
                    .args(["unpack", "--rootless", "--image"])
                    .arg(format!("{}:bench", layout.display()))
                    .arg(&bundle),
            )?;
            umoci.push(started.elapsed());
            let mkfs_image = work.join(format!("mkfs-{run}.ext4"));
            let started = Instant::now();
            run_tool(
                Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-d"])
                    .arg(bundle.join("rootfs"))
                    .arg(&mkfs_image)
                    .arg(format!("{}k", built.size_bytes / 1024)),
            )?;
            mkfs.push(started.elapsed());
            fs::remove_file(&mkfs_image)?;
            fs::remove_dir_all(&bundle)?;
        }
        summary = Some(built);
    }
    let summary = summary.expect("at least one run");
    println!(
        "image: {:.1} MiB, {:.1} MiB of file data, {} inodes in use",
        mib(summary.size_bytes),
        mib(summary.content_bytes),
        summary.inodes_used
    );
    println!("median of {runs} run(s):");
    let floor = median(&mut floor);
    let banger = median(&mut banger);
    let banger_nosync = median(&mut banger_nosync);
    println!(
        "  floor (gunzip → /dev/null + write the content bytes + fsync)  {:>7.2} s",
        secs(floor)
    );
    println!(
        "  banger flatten (gunzip + ext4 + fsync)                        {:>7.2} s   {:.2}× the floor",
        secs(banger),
        secs(banger) / secs(floor)
    );
    println!(
        "  banger flatten, no fsync                                      {:>7.2} s",
        secs(banger_nosync)
    );
    let floor_raw = median(&mut floor_raw);
    let banger_raw = median(&mut banger_raw);
    println!("from already decompressed tars:");
    println!(
        "  floor (read the tars → /dev/null + write the content + fsync) {:>7.2} s",
        secs(floor_raw)
    );
    println!(
        "  banger flatten (tar + ext4 + fsync)                           {:>7.2} s   {:.2}× the floor",
        secs(banger_raw),
        secs(banger_raw) / secs(floor_raw)
    );
    if have_umoci {
        let umoci = median(&mut umoci);
        let mkfs = median(&mut mkfs);
        let chained = umoci + mkfs;
        println!(
            "  umoci unpack --rootless                                       {:>7.2} s",
            secs(umoci)
        );
        println!(
            "  mkfs.ext4 -d on the extracted tree                            {:>7.2} s   banger from tars is {:.2}× of it",
            secs(mkfs),
            secs(banger_raw) / secs(mkfs)
        );
        println!(
            "  umoci + mkfs.ext4 -d                                          {:>7.2} s   banger is {:.2}× of it",
            secs(chained),
            secs(banger) / secs(chained)
        );
    }
    Ok(())
}

struct BuiltLayer {
    path: PathBuf,
    compressed_bytes: u64,
    uncompressed_bytes: u64,
    entries: u64,
}

/// Counts what goes through a writer.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn build_layers(work: &Path) -> io::Result<Vec<BuiltLayer>> {
    let mut layers = Vec::new();
    // 1: a base with many small files.
    let mut base: Vec<(PathBuf, String)> = Vec::new();
    for dir in ["/usr/lib/python3.11", "/usr/include"] {
        if Path::new(dir).is_dir() {
            base.push((PathBuf::from(dir), dir.trim_start_matches('/').to_string()));
        }
    }
    layers.push(write_layer(&work.join("layer0.tar.gz"), |builder| {
        let mut entries = 0;
        for (source, name) in &base {
            entries += append_tree(builder, source, name, u64::MAX)?;
        }
        Ok(entries)
    })?);
    // 2: larger files, about 40 MB of binaries.
    layers.push(write_layer(&work.join("layer1.tar.gz"), |builder| {
        append_tree(builder, Path::new("/usr/bin"), "usr/bin", 40 << 20)
    })?);
    // 3: deletions, an opaque directory and replacements.
    layers.push(write_layer(&work.join("layer2.tar.gz"), |builder| {
        let mut entries = 0;
        let mut whiteouts = Vec::new();
        collect_files(
            Path::new("/usr/include"),
            "usr/include",
            1000,
            &mut whiteouts,
        )?;
        for path in whiteouts.iter().step_by(3) {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            append_empty(builder, &format!("{dir}/.wh.{name}"))?;
            entries += 1;
        }
        append_empty(builder, "usr/lib/python3.11/email/.wh..wh..opq")?;
        entries += 1;
        for i in 0..200 {
            let data = vec![b'r'; 10_000 + i * 100];
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(1_700_000_000);
            builder.append_data(
                &mut header,
                format!("usr/lib/python3.11/email/replaced-{i}.py"),
                &data[..],
            )?;
            entries += 1;
        }
        Ok(entries)
    })?);
    Ok(layers)
}

fn write_layer(
    path: &Path,
    fill: impl FnOnce(&mut tar::Builder<&mut Counting<GzEncoder<File>>>) -> io::Result<u64>,
) -> io::Result<BuiltLayer> {
    let file = File::create(path)?;
    let mut counting = Counting {
        inner: GzEncoder::new(file, Compression::default()),
        bytes: 0,
    };
    let entries = {
        let mut builder = tar::Builder::new(&mut counting);
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Complete);
        let entries = fill(&mut builder)?;
        builder.finish()?;
        entries
    };
    let uncompressed_bytes = counting.bytes;
    counting.inner.finish()?.sync_all()?;
    Ok(BuiltLayer {
        path: path.to_path_buf(),
        compressed_bytes: fs::metadata(path)?.len(),
        uncompressed_bytes,
        entries,
    })
}

/// Appends a directory tree (symlinks as symlinks), stopping after `budget` bytes of files.
fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    source: &Path,
    name: &str,
    budget: u64,
) -> io::Result<u64> {
    let mut entries = 0;
    let mut used = 0u64;
    let mut pending = vec![(source.to_path_buf(), name.to_string())];
    while let Some((dir, name)) = pending.pop() {
        builder.append_path_with_name(&dir, &name)?;
        entries += 1;
        let mut children: Vec<_> = fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|entry| entry.file_name());
        for child in children {
            let kind = child.file_type()?;
            let child_name = format!("{name}/{}", child.file_name().to_string_lossy());
            if kind.is_dir() {
                pending.push((child.path(), child_name));
            } else if kind.is_file() || kind.is_symlink() {
                let len = child.metadata()?.len();
                if used + len > budget {
                    continue;
                }
                used += len;
                builder.append_path_with_name(child.path(), &child_name)?;
                entries += 1;
            }
        }
    }
    Ok(entries)
}

fn collect_files(dir: &Path, name: &str, limit: usize, out: &mut Vec<String>) -> io::Result<()> {
    let mut children: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    children.sort_by_key(|entry| entry.file_name());
    for child in children {
        if out.len() >= limit {
            return Ok(());
        }
        let child_name = format!("{name}/{}", child.file_name().to_string_lossy());
        let kind = child.file_type()?;
        if kind.is_dir() {
            collect_files(&child.path(), &child_name, limit, out)?;
        } else if kind.is_file() {
            out.push(child_name);
        }
    }
    Ok(())
}

fn append_empty<W: Write>(builder: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    builder.append_data(&mut header, path, io::empty())
}

/// An OCI layout `layout:bench` holding the layers, for umoci.
fn umoci_layout(layout: &Path, layers: &[BuiltLayer]) -> io::Result<()> {
    run_tool(Command::new("umoci").args(["init", "--layout"]).arg(layout))?;
    let image = format!("{}:bench", layout.display());
    run_tool(Command::new("umoci").args(["new", "--image", &image]))?;
    for layer in layers {
        // umoci takes the uncompressed tar and compresses it itself.
        let tar = layer.path.with_extension("");
        io::copy(&mut open_gzip(&layer.path), &mut File::create(&tar)?)?;
        run_tool(
            Command::new("umoci")
                .args(["raw", "add-layer", "--image", &image])
                .arg(&tar),
        )?;
        fs::remove_file(&tar)?;
    }
    Ok(())
}

fn run_tool(command: &mut Command) -> io::Result<()> {
    let output = command.output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

fn open_gzip(path: &Path) -> impl Read + use<> {
    GzDecoder::new(BufReader::with_capacity(
        256 << 10,
        File::open(path).expect("open layer"),
    ))
}

fn open_plain(path: &Path) -> impl Read + use<> {
    BufReader::with_capacity(256 << 10, File::open(path).expect("open layer"))
}

fn write_bytes(path: &Path, bytes: u64) -> io::Result<()> {
    let mut file = File::create(path)?;
    let chunk = vec![0x5au8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
