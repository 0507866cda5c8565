//! Makes a banger kernel bundle from a Debian kernel package, for the kernel catalog.
//!
//! ```text
//! kernel-bundle --deb linux-image-6.1.0-57-cloud-amd64_6.1.192-3_amd64.deb \
//!     --agent "$(tools/build-agent.sh)" --out dist/ [--name debian-12] \
//!     [--source-url URL] [--tarball-url URL] [--catalog-entry] [--keep-dir]
//! ```
//!
//! Writes `OUT/<name>-<sha256 prefix>.tar.zst` (the bundle as `kernel pull` fetches it) and,
//! with `--catalog-entry`, `OUT/<name>.catalog.json` (the entry for banger's catalog), which
//! it also prints. The conversion is `banger::kernel::bundle_from_deb`, the same code `kernel
//! pull` runs on a user's host for a Debian catalog entry; the bundle directory is built under
//! OUT and removed after packing unless `--keep-dir`.

use std::path::PathBuf;
use std::process::ExitCode;

use banger::kernel::{BundleSource, bundle_from_deb, catalog_entry, pack_bundle};
use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Make a banger kernel bundle (zstd tarball + catalog entry) from a Debian kernel package"
)]
struct Args {
    /// The kernel package (`apt-get download linux-image-6.1.0-57-cloud-amd64`).
    #[arg(long)]
    deb: PathBuf,
    /// The static banger agent, the initrd's init (`tools/build-agent.sh` prints its path).
    #[arg(long)]
    agent: PathBuf,
    /// Where the tarball (and the catalog entry) go.
    #[arg(long)]
    out: PathBuf,
    /// The catalog name [default: debian-<kernel release>].
    #[arg(long)]
    name: Option<String>,
    /// Where the package was downloaded from, recorded in the manifest.
    #[arg(long)]
    source_url: Option<String>,
    /// Where the catalog will serve the tarball [default: its file name, relative].
    #[arg(long)]
    tarball_url: Option<String>,
    /// Also write OUT/<name>.catalog.json and print it.
    #[arg(long)]
    catalog_entry: bool,
    /// Keep the unpacked bundle directory OUT/<name> (for booting it by hand).
    #[arg(long)]
    keep_dir: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kernel-bundle: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let staging = tempfile::Builder::new()
        .prefix(".kernel-bundle-dir-")
        .tempdir_in({
            std::fs::create_dir_all(&args.out)?;
            &args.out
        })?;
    let bundle_dir = staging.path().join("bundle");
    let started = std::time::Instant::now();
    let manifest = bundle_from_deb(
        &args.deb,
        args.source_url.as_deref(),
        &args.agent,
        &bundle_dir,
    )?;
    let BundleSource::DebianPackage {
        package, version, ..
    } = &manifest.source;
    eprintln!(
        "kernel-bundle: {package} {version} → kernel {} with modules {} ({:.1} s)",
        manifest.version,
        manifest.modules.join(" "),
        started.elapsed().as_secs_f64()
    );
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("debian-{}", manifest.version));
    let packed = pack_bundle(&bundle_dir, &name, &args.out)?;
    let file_name = packed
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    eprintln!(
        "kernel-bundle: {} ({} bytes, sha256 {})",
        packed.path.display(),
        packed.size,
        packed.sha256
    );
    if args.keep_dir {
        let kept = args.out.join(&name);
        std::fs::rename(&bundle_dir, &kept)?;
        eprintln!("kernel-bundle: bundle directory kept at {}", kept.display());
    }
    if args.catalog_entry {
        let entry = catalog_entry(
            &name,
            &manifest,
            &packed,
            args.tarball_url.as_deref().unwrap_or(&file_name),
        );
        let mut json = serde_json::to_string_pretty(&entry)?;
        json.push('\n');
        let path = args.out.join(format!("{name}.catalog.json"));
        std::fs::write(&path, &json)?;
        print!("{json}");
        eprintln!("kernel-bundle: catalog entry in {}", path.display());
    }
    Ok(())
}
