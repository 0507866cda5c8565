//! Image bundles: a finished image as the catalog ships it, and its download.
//!
//! A bundle is a zstd-compressed tar holding exactly two regular files, in this order:
//!
//! ```text
//! manifest.json   {"format":1, "name":"dev", "kernel":"debian-12-cloud",
//!                  "source":"oci:docker.io/library/debian:bookworm@sha256:…",
//!                  "rootfs":{"size":…, "sha256":"…"}}
//! rootfs.ext4     the ext4 root filesystem (the agent already in it)
//! ```
//!
//! named `<name>-<first 16 hex digits of the tarball's sha256>.tar.zst` ([`pack`]), so a new
//! build never takes the name of one a catalog still points at.
//!
//! [`fetch`] is the receiving side: one pass over the HTTP body that hashes every byte while
//! a blocking task unpacks it into a directory (the operation's staging directory); the
//! result counts only when the body had exactly the catalog's length and sha256, and the
//! rootfs the manifest's. Anything else (another entry, a link, a path, a second manifest, an
//! oversized member, a short or long body) is an error, and the caller removes the directory.
//! Nothing is held whole in memory but the manifest (at most 64 KiB).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// File names inside a bundle (and inside an image's directory).
pub const MANIFEST_FILE: &str = "manifest.json";
pub const ROOTFS_FILE: &str = "rootfs.ext4";

/// The bundle format this build writes and reads.
pub const FORMAT: u32 = 1;

const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
const ZSTD_LEVEL: i32 = 3;
const BLOCK: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: u32,
    pub name: String,
    /// The kernel the image boots with, when it names one.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Where the image came from (an `ImageRegistered` source).
    pub source: String,
    pub rootfs: FileSum,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSum {
    pub size: u64,
    pub sha256: String,
}

/// A packed bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedBundle {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub manifest: BundleManifest,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot download {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} is {actual} bytes long, but the catalog says {expected}")]
    SizeMismatch {
        url: String,
        expected: u64,
        actual: String,
    },
    #[error("{url} ended after {got} of its {expected} bytes (a truncated download); try again")]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
    },
    #[error(
        "{url} has sha256 {actual}, but the catalog says {expected}: the file is not the one the catalog names"
    )]
    Sha256Mismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("the bundle is not valid: {0}")]
    Invalid(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> BundleError + 'p {
    move |source| BundleError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Packs `rootfs` with `manifest` (its `rootfs` sum is computed here) into `out_dir` as
/// `<name>-<sha256 prefix>.tar.zst`.
pub fn pack(
    rootfs: &Path,
    mut manifest: BundleManifest,
    out_dir: &Path,
) -> Result<PackedBundle, BundleError> {
    let (sha256, size) = sha256_of(rootfs)?;
    manifest.format = FORMAT;
    manifest.rootfs = FileSum { size, sha256 };
    let manifest_json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BundleError::Invalid(format!("cannot encode the manifest: {e}")))?;
    fs::create_dir_all(out_dir).map_err(io_error("cannot create", out_dir))?;
    let temp = out_dir.join(format!(".{}.tar.zst.partial", manifest.name));
    let file = File::create(&temp).map_err(io_error("cannot create", &temp))?;
    let hashing = HashingWriter {
        inner: io::BufWriter::new(file),
        hasher: Sha256::new(),
        written: 0,
    };
    let encoder =
        zstd::stream::write::Encoder::new(hashing, ZSTD_LEVEL).map_err(io_error("zstd", &temp))?;
    let mut tar = tar::Builder::new(encoder);
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(manifest_json.len() as u64);
    header.set_mtime(0);
    header
        .set_path(MANIFEST_FILE)
        .map_err(io_error("tar", &temp))?;
    header.set_cksum();
    tar.append(&header, manifest_json.as_slice())
        .map_err(io_error("cannot write", &temp))?;
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(size);
    header.set_mtime(0);
    header
        .set_path(ROOTFS_FILE)
        .map_err(io_error("tar", &temp))?;
    header.set_cksum();
    let source = File::open(rootfs).map_err(io_error("cannot read", rootfs))?;
    tar.append(&header, io::BufReader::with_capacity(1 << 20, source))
        .map_err(io_error("cannot write", &temp))?;
    let encoder = tar.into_inner().map_err(io_error("cannot write", &temp))?;
    let mut hashing = encoder.finish().map_err(io_error("cannot write", &temp))?;
    hashing.flush().map_err(io_error("cannot write", &temp))?;
    let sha256 = hex(&hashing.hasher.finalize());
    let size = hashing.written;
    let path = out_dir.join(format!("{}-{}.tar.zst", manifest.name, &sha256[..16]));
    fs::rename(&temp, &path).map_err(io_error("cannot rename", &path))?;
    Ok(PackedBundle {
        path,
        sha256,
        size,
        manifest,
    })
}

/// Downloads the bundle at `url` and unpacks it into `dir` (which must exist and be empty of
/// bundle files), checking the body against `size_bytes` and `sha256` as it streams, and the
/// rootfs against the manifest. `progress(done, total)` is called as bytes arrive. A rootfs
/// larger than `max_rootfs_bytes` is refused before it is written.
pub async fn fetch(
    http: &reqwest::Client,
    url: &str,
    sha256: &str,
    size_bytes: u64,
    dir: &Path,
    max_rootfs_bytes: u64,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<BundleManifest, BundleError> {
    let http_error = |source| BundleError::Http {
        url: url.to_owned(),
        source,
    };
    let mut response = http.get(url).send().await.map_err(http_error)?;
    if !response.status().is_success() {
        return Err(BundleError::Status {
            url: url.to_owned(),
            status: response.status().as_u16(),
        });
    }
    if let Some(length) = response.content_length()
        && length != size_bytes
    {
        return Err(BundleError::SizeMismatch {
            url: url.to_owned(),
            expected: size_bytes,
            actual: length.to_string(),
        });
    }
    let (sender, receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let unpack_dir = dir.to_path_buf();
    let unpacker = tokio::task::spawn_blocking(move || {
        unpack(
            ChannelReader {
                receiver,
                chunk: Vec::new(),
                at: 0,
            },
            &unpack_dir,
            max_rootfs_bytes,
        )
    });
    let mut sender = Some(sender);
    let mut hasher = Sha256::new();
    let mut got: u64 = 0;
    progress(0, size_bytes);
    let streamed: Result<(), BundleError> = async {
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                // The connection closed before the length it announced.
                Err(error) if (error.is_body() || error.is_decode()) && got < size_bytes => {
                    return Err(BundleError::Truncated {
                        url: url.to_owned(),
                        got,
                        expected: size_bytes,
                    });
                }
                Err(error) => return Err(http_error(error)),
            };
            got += chunk.len() as u64;
            if got > size_bytes {
                return Err(BundleError::SizeMismatch {
                    url: url.to_owned(),
                    expected: size_bytes,
                    actual: format!("more than {size_bytes}"),
                });
            }
            hasher.update(&chunk);
            progress(got, size_bytes);
            // An unpacker that stopped (it failed, or the archive ended) reads no more; the
            // rest is still hashed so the mismatch, if any, is what gets reported.
            if let Some(to_unpacker) = &sender
                && to_unpacker.send(chunk.to_vec()).await.is_err()
            {
                sender = None;
            }
        }
        Ok(())
    }
    .await;
    drop(sender);
    let unpacked = unpacker
        .await
        .map_err(|e| BundleError::Invalid(format!("the unpacking task failed: {e}")))?;
    streamed?;
    if got != size_bytes {
        return Err(BundleError::Truncated {
            url: url.to_owned(),
            got,
            expected: size_bytes,
        });
    }
    let actual = hex(&hasher.finalize());
    if actual != sha256 {
        return Err(BundleError::Sha256Mismatch {
            url: url.to_owned(),
            expected: sha256.to_owned(),
            actual,
        });
    }
    unpacked
}

/// Unpacks a bundle stream (zstd tar) into `dir`: `manifest.json`, then `rootfs.ext4`
/// (sparse: all-zero blocks are not written), checked against the manifest.
pub fn unpack(
    stream: impl Read,
    dir: &Path,
    max_rootfs_bytes: u64,
) -> Result<BundleManifest, BundleError> {
    let invalid = |reason: String| BundleError::Invalid(reason);
    let mut decoder = zstd::stream::read::Decoder::new(stream)
        .map_err(|e| invalid(format!("not a zstd stream: {e}")))?;
    let mut manifest: Option<BundleManifest> = None;
    let mut rootfs_done = false;
    {
        let mut archive = tar::Archive::new(&mut decoder);
        let entries = archive
            .entries()
            .map_err(|e| invalid(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| invalid(format!("a corrupt tar entry: {e}")))?;
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            if !kind.is_file() {
                return Err(invalid(format!(
                    "entry {path:?} is not a regular file; a bundle holds {MANIFEST_FILE} and {ROOTFS_FILE} only"
                )));
            }
            let size = entry.size();
            match (path.as_str(), &manifest, rootfs_done) {
                (MANIFEST_FILE, None, false) => {
                    if size > MAX_MANIFEST_BYTES {
                        return Err(invalid(format!(
                            "{MANIFEST_FILE} is {size} bytes, more than {MAX_MANIFEST_BYTES}"
                        )));
                    }
                    let mut text = Vec::with_capacity(size as usize);
                    entry
                        .read_to_end(&mut text)
                        .map_err(|e| invalid(format!("reading {MANIFEST_FILE}: {e}")))?;
                    let parsed: BundleManifest = serde_json::from_slice(&text)
                        .map_err(|e| invalid(format!("{MANIFEST_FILE}: {e}")))?;
                    if parsed.format != FORMAT {
                        return Err(invalid(format!(
                            "{MANIFEST_FILE} says format {} (this banger reads {FORMAT})",
                            parsed.format
                        )));
                    }
                    let target = dir.join(MANIFEST_FILE);
                    fs::write(&target, &text).map_err(io_error("cannot write", &target))?;
                    manifest = Some(parsed);
                }
                (ROOTFS_FILE, Some(expected), false) => {
                    if size != expected.rootfs.size {
                        return Err(invalid(format!(
                            "{ROOTFS_FILE} is {size} bytes; the manifest says {}",
                            expected.rootfs.size
                        )));
                    }
                    if size > max_rootfs_bytes {
                        return Err(invalid(format!(
                            "{ROOTFS_FILE} is {size} bytes, more than the maximum image size of {max_rootfs_bytes} bytes (images.max_size)"
                        )));
                    }
                    let target = dir.join(ROOTFS_FILE);
                    let sha = write_sparse(&mut entry, &target, size)?;
                    if sha != expected.rootfs.sha256 {
                        return Err(invalid(format!(
                            "{ROOTFS_FILE} has sha256 {sha}; the manifest says {}",
                            expected.rootfs.sha256
                        )));
                    }
                    check_ext4(&target)?;
                    rootfs_done = true;
                }
                _ => {
                    return Err(invalid(format!(
                        "unexpected entry {path:?}; a bundle holds {MANIFEST_FILE}, then {ROOTFS_FILE}, nothing else"
                    )));
                }
            }
        }
    }
    // Read the stream to its end, so that a damaged zstd trailer is noticed too.
    io::copy(&mut decoder, &mut io::sink())
        .map_err(|e| invalid(format!("after the archive: {e}")))?;
    match (manifest, rootfs_done) {
        (Some(manifest), true) => Ok(manifest),
        (None, _) => Err(invalid(format!("it has no {MANIFEST_FILE}"))),
        (Some(_), false) => Err(invalid(format!("it has no {ROOTFS_FILE}"))),
    }
}

/// Writes `size` bytes from `source` to `target`, leaving all-zero blocks as holes; returns
/// their sha256.
fn write_sparse(source: &mut impl Read, target: &Path, size: u64) -> Result<String, BundleError> {
    let mut file = File::create(target).map_err(io_error("cannot create", target))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut done: u64 = 0;
    while done < size {
        let want = buffer.len().min((size - done) as usize);
        source
            .read_exact(&mut buffer[..want])
            .map_err(|e| BundleError::Invalid(format!("reading {ROOTFS_FILE}: {e}")))?;
        let chunk = &buffer[..want];
        hasher.update(chunk);
        for block in chunk.chunks(BLOCK) {
            if block.iter().all(|&b| b == 0) {
                file.seek(SeekFrom::Current(block.len() as i64))
                    .map_err(io_error("cannot write", target))?;
            } else {
                file.write_all(block)
                    .map_err(io_error("cannot write", target))?;
            }
        }
        done += want as u64;
    }
    file.set_len(size)
        .and_then(|()| file.sync_all())
        .map_err(io_error("cannot write", target))?;
    Ok(hex(&hasher.finalize()))
}

/// The ext4 magic (0xEF53 at byte 1080): a cheap check that the file is a filesystem at all.
fn check_ext4(path: &Path) -> Result<(), BundleError> {
    let mut file = File::open(path).map_err(io_error("cannot read", path))?;
    let mut magic = [0u8; 2];
    file.seek(SeekFrom::Start(1080))
        .and_then(|_| file.read_exact(&mut magic))
        .map_err(|_| BundleError::Invalid(format!("{ROOTFS_FILE} is too short for ext4")))?;
    if magic != [0x53, 0xef] {
        return Err(BundleError::Invalid(format!(
            "{ROOTFS_FILE} is not an ext4 filesystem (no ext4 magic)"
        )));
    }
    Ok(())
}

/// sha256 (hex) and length of a file.
pub fn sha256_of(path: &Path) -> Result<(String, u64), BundleError> {
    let mut file = File::open(path).map_err(io_error("cannot read", path))?;
    let mut hasher = Sha256::new();
    let size = io::copy(&mut file, &mut hasher).map_err(io_error("cannot read", path))?;
    Ok((hex(&hasher.finalize()), size))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The blocking side of the download: reads the chunks the async side sends, in order; the
/// end of the channel is the end of the stream.
struct ChannelReader {
    receiver: tokio::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.receiver.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_ext4(path: &Path, size: usize) {
        let mut bytes = vec![0u8; size];
        bytes[1080] = 0x53;
        bytes[1081] = 0xef;
        bytes[size - 1] = 7;
        fs::write(path, bytes).unwrap();
    }

    fn manifest() -> BundleManifest {
        BundleManifest {
            format: FORMAT,
            name: "dev".into(),
            kernel: Some("k".into()),
            source: "oci:x@sha256:00".into(),
            rootfs: FileSum {
                size: 0,
                sha256: String::new(),
            },
        }
    }

    #[test]
    fn packs_and_unpacks_sparsely() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs.ext4");
        fake_ext4(&rootfs, 8 << 20);
        let packed = pack(&rootfs, manifest(), &dir.path().join("out")).unwrap();
        let name = packed
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(name, format!("dev-{}.tar.zst", &packed.sha256[..16]));
        assert_eq!(
            sha256_of(&packed.path).unwrap(),
            (packed.sha256.clone(), packed.size)
        );
        let into = dir.path().join("into");
        fs::create_dir(&into).unwrap();
        let got = unpack(File::open(&packed.path).unwrap(), &into, 1 << 30).unwrap();
        assert_eq!(got, packed.manifest);
        assert_eq!(
            fs::read(into.join(ROOTFS_FILE)).unwrap(),
            fs::read(&rootfs).unwrap()
        );
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(into.join(ROOTFS_FILE)).unwrap().blocks() * 512 < 1 << 20);
        // Too large for the configured maximum.
        let small = dir.path().join("small");
        fs::create_dir(&small).unwrap();
        let error = unpack(File::open(&packed.path).unwrap(), &small, 1 << 20).unwrap_err();
        assert!(error.to_string().contains("maximum image size"), "{error}");
    }

    #[test]
    fn anything_but_the_two_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = |entries: &[(&str, tar::EntryType, &[u8])]| {
            let mut tar = tar::Builder::new(Vec::new());
            for (path, kind, data) in entries {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(*kind);
                header.set_size(data.len() as u64);
                header.set_path(path).unwrap();
                header.set_cksum();
                tar.append(&header, *data).unwrap();
            }
            zstd::encode_all(tar.into_inner().unwrap().as_slice(), 1).unwrap()
        };
        let good_manifest = serde_json::to_vec(&manifest()).unwrap();
        for (entries, needle) in [
            (
                vec![(
                    "x/manifest.json",
                    tar::EntryType::Regular,
                    &good_manifest[..],
                )],
                "unexpected entry",
            ),
            (
                vec![("manifest.json", tar::EntryType::Symlink, &b""[..])],
                "not a regular file",
            ),
            (
                vec![("rootfs.ext4", tar::EntryType::Regular, &b"x"[..])],
                "unexpected entry",
            ),
            (
                vec![("manifest.json", tar::EntryType::Regular, &b"{}"[..])],
                "manifest.json",
            ),
            (
                vec![("manifest.json", tar::EntryType::Regular, &good_manifest[..])],
                "no rootfs.ext4",
            ),
        ] {
            let into = tempfile::tempdir_in(dir.path()).unwrap();
            let error = unpack(tarball(&entries).as_slice(), into.path(), 1 << 30).unwrap_err();
            assert!(error.to_string().contains(needle), "{entries:?}: {error}");
        }
        let error = unpack(&b"not zstd"[..], dir.path(), 1 << 30).unwrap_err();
        assert!(matches!(error, BundleError::Invalid(_)), "{error}");
    }
}
