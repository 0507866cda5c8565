//! What the image benchmarks share: a multi-layer image built from the host's own files (about
//! 200 MB: Python's standard library and the C headers, then some binaries, then a layer that
//! deletes, hides with an opaque directory and replaces), gzip-compressed as registries serve
//! them; an OCI layout of it for umoci; and small timing helpers.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

pub struct BuiltLayer {
    pub path: PathBuf,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub entries: u64,
}

/// Counts what goes through a writer.
pub struct Counting<W> {
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

pub fn build_layers(work: &Path) -> io::Result<Vec<BuiltLayer>> {
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

pub fn write_layer(
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
pub fn append_tree<W: Write>(
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

pub fn collect_files(
    dir: &Path,
    name: &str,
    limit: usize,
    out: &mut Vec<String>,
) -> io::Result<()> {
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

pub fn append_empty<W: Write>(builder: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    builder.append_data(&mut header, path, io::empty())
}

/// An OCI layout `layout:bench` holding the layers, for umoci.
pub fn umoci_layout(layout: &Path, layers: &[BuiltLayer]) -> io::Result<()> {
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

pub fn run_tool(command: &mut Command) -> io::Result<()> {
    let output = command.output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

pub fn open_gzip(path: &Path) -> impl Read + use<> {
    GzDecoder::new(BufReader::with_capacity(
        256 << 10,
        File::open(path).expect("open layer"),
    ))
}

pub fn open_plain(path: &Path) -> impl Read + use<> {
    BufReader::with_capacity(256 << 10, File::open(path).expect("open layer"))
}

pub fn write_bytes(path: &Path, bytes: u64) -> io::Result<()> {
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

pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

pub fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
