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
use std::io::{self, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use banger::image::{FlattenOptions, ImageSummary, flatten_layers};
use banger_tools::layers::{
    build_layers, median, mib, open_gzip, open_plain, run_tool, secs, umoci_layout, write_bytes,
};

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
