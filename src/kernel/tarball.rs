//! A bundle as the catalog ships it: a zstd-compressed tarball named by its content, and the
//! catalog entry that points at it.
//!
//! The tarball holds the bundle's files at its top level (`manifest.json` first, so a reader
//! learns what it is receiving before the large files), in sorted order, owned by root with
//! zero times, so the same bundle always packs to the same bytes. Its name is
//! `<name>-<first 16 hex digits of its sha256>.tar.zst`: a new build never overwrites an old
//! one a catalog may still name.
//!
//! [`unpack_bundle`] is the receiving side (`kernel pull` of a bundle entry): it checks the
//! tarball's sha256 while reading, refuses traversal, links and anything but plain files
//! and directories, and publishes atomically like [`super::bundle_from_deb`].

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::KernelError;
use super::bundle::{BundleManifest, MANIFEST_FILE, read_manifest};
use super::deb::safe_relative_path;

/// The zstd level of bundle tarballs: a good ratio on a kernel at a few seconds of packing.
const ZSTD_LEVEL: i32 = 10;

/// The largest tarball member accepted when unpacking.
const MAX_MEMBER_BYTES: u64 = 1 << 30;

/// The most a tarball may unpack to, all members together (a small download must not
/// expand into a full disk).
const MAX_BUNDLE_BYTES: u64 = 4 << 30;

/// The most members a tarball may have (a bundle has a few dozen).
const MAX_MEMBERS: usize = 100_000;

/// A packed bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedBundle {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// One entry of banger's kernel catalog, for a bundle tarball.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub name: String,
    /// Always `bundle` for what this module writes (the catalog also has Debian packages).
    pub kind: String,
    /// The kernel release.
    pub version: String,
    pub arch: String,
    /// Where the tarball is: a URL, or a path relative to the catalog.
    pub tarball_url: String,
    pub tarball_sha256: String,
    pub size_bytes: u64,
    pub description: String,
}

/// Packs the bundle at `bundle` into `out_dir` as `<name>-<sha256 prefix>.tar.zst`.
pub fn pack_bundle(bundle: &Path, name: &str, out_dir: &Path) -> Result<PackedBundle, KernelError> {
    read_manifest(bundle)?;
    let mut files = Vec::new();
    collect_files(bundle, Path::new(""), &mut files)?;
    files.sort_by(|a, b| {
        // The manifest first, then the rest in path order.
        (a.as_os_str() != MANIFEST_FILE, a).cmp(&(b.as_os_str() != MANIFEST_FILE, b))
    });
    fs::create_dir_all(out_dir).map_err(|e| KernelError::io(out_dir, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".kernel-tarball-")
        .tempfile_in(out_dir)
        .map_err(|e| KernelError::io(out_dir, e))?;
    let file = staging
        .as_file()
        .try_clone()
        .map_err(|e| KernelError::io(out_dir, e))?;
    let hashing = HashingWriter {
        inner: BufWriter::new(file),
        hasher: Sha256::new(),
        written: 0,
    };
    let encoder = zstd::stream::write::Encoder::new(hashing, ZSTD_LEVEL)
        .map_err(|e| KernelError::io(out_dir, e))?;
    let mut tar = tar::Builder::new(encoder);
    tar.mode(tar::HeaderMode::Deterministic);
    for relative in &files {
        let path = bundle.join(relative);
        let mut file = File::open(&path).map_err(|e| KernelError::io(&path, e))?;
        let size = file
            .metadata()
            .map_err(|e| KernelError::io(&path, e))?
            .len();
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(0);
        tar.append_data(&mut header, relative, &mut file)
            .map_err(|e| KernelError::io(&path, e))?;
    }
    let encoder = tar.into_inner().map_err(|e| KernelError::io(out_dir, e))?;
    let mut hashing = encoder.finish().map_err(|e| KernelError::io(out_dir, e))?;
    hashing
        .inner
        .flush()
        .map_err(|e| KernelError::io(out_dir, e))?;
    let HashingWriter {
        inner,
        hasher,
        written: size,
    } = hashing;
    drop(inner);
    let sha256 = hex(&hasher.finalize());
    // A published tarball is for everyone to read (tempfile makes it 0600).
    staging
        .as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| staging.as_file().sync_all())
        .map_err(|e| KernelError::io(out_dir, e))?;
    let path = out_dir.join(format!("{name}-{}.tar.zst", &sha256[..16]));
    staging
        .persist(&path)
        .map_err(|e| KernelError::io(&path, e.error))?;
    Ok(PackedBundle { path, sha256, size })
}

/// The catalog entry of a packed bundle. `tarball_url` is where the catalog will serve it
/// (a placeholder or a relative path until it is uploaded).
pub fn catalog_entry(
    name: &str,
    manifest: &BundleManifest,
    packed: &PackedBundle,
    tarball_url: &str,
) -> CatalogEntry {
    let super::BundleSource::DebianPackage {
        package, version, ..
    } = &manifest.source;
    CatalogEntry {
        name: name.to_owned(),
        kind: "bundle".to_owned(),
        version: manifest.version.clone(),
        arch: manifest.arch.clone(),
        tarball_url: tarball_url.to_owned(),
        tarball_sha256: packed.sha256.clone(),
        size_bytes: packed.size,
        description: format!(
            "{package} {version} as a banger bundle (vmlinux, initrd, virtio modules)"
        ),
    }
}

/// Unpacks a bundle tarball read from `reader` into `dest` (which must not exist), checking
/// its sha256 against `expected_sha256` before publishing. Refuses members that are not
/// plain files or directories, or whose paths climb out; removes everything on failure.
pub fn unpack_bundle(
    reader: impl Read,
    expected_sha256: &str,
    dest: &Path,
) -> Result<BundleManifest, KernelError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(KernelError::AlreadyExists {
            path: dest.to_owned(),
        });
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| KernelError::io(parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".kernel-unpack-")
        .tempdir_in(parent)
        .map_err(|e| KernelError::io(parent, e))?;
    let mut hashing = HashingReader {
        inner: BufReader::new(reader),
        hasher: Sha256::new(),
    };
    {
        let decoder =
            zstd::stream::read::Decoder::new(&mut hashing).map_err(|e| KernelError::io(dest, e))?;
        let mut archive = tar::Archive::new(decoder);
        let bad = |e: io::Error| KernelError::Bundle {
            path: dest.to_owned(),
            reason: format!("the tarball is corrupt or truncated: {e}"),
        };
        let mut total: u64 = 0;
        for (index, entry) in archive.entries().map_err(bad)?.enumerate() {
            if index >= MAX_MEMBERS {
                return Err(KernelError::Bundle {
                    path: dest.to_owned(),
                    reason: format!("the tarball has more than {MAX_MEMBERS} members"),
                });
            }
            let mut entry = entry.map_err(bad)?;
            let raw = entry.path().map_err(bad)?.into_owned();
            let name = safe_relative_path(&raw).map_err(|reason| KernelError::UnsafeEntry {
                entry: raw.display().to_string(),
                reason,
            })?;
            let kind = entry.header().entry_type();
            let target = staging.path().join(&name);
            if name.is_empty() {
                continue;
            }
            if kind.is_dir() {
                fs::create_dir_all(&target).map_err(|e| KernelError::io(&target, e))?;
            } else if kind.is_file() {
                let size = entry.header().size().map_err(bad)?;
                if size > MAX_MEMBER_BYTES {
                    return Err(KernelError::UnsafeEntry {
                        entry: name,
                        reason: format!("{size} bytes is too big for a bundle file"),
                    });
                }
                total = total.saturating_add(size);
                if total > MAX_BUNDLE_BYTES {
                    return Err(KernelError::Bundle {
                        path: dest.to_owned(),
                        reason: format!(
                            "the tarball unpacks to more than {MAX_BUNDLE_BYTES} bytes"
                        ),
                    });
                }
                if let Some(dir) = target.parent() {
                    fs::create_dir_all(dir).map_err(|e| KernelError::io(dir, e))?;
                }
                // create_new: a second member with the same name cannot overwrite the first.
                let mut file = File::options()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| KernelError::io(&target, e))?;
                io::copy(&mut (&mut entry).take(size), &mut file).map_err(bad)?;
                file.sync_all().map_err(|e| KernelError::io(&target, e))?;
            } else {
                let what = match kind {
                    tar::EntryType::Symlink => entry
                        .link_name()
                        .ok()
                        .flatten()
                        .map(|target| format!("a symlink to {}", target.display()))
                        .unwrap_or_else(|| "a symlink".to_owned()),
                    tar::EntryType::Link => "a hard link".to_owned(),
                    other => format!("{other:?}"),
                };
                return Err(KernelError::UnsafeEntry {
                    entry: name,
                    reason: format!(
                        "it is {what}; a bundle holds only files and directories (no links, \
                         which could point outside it)"
                    ),
                });
            }
        }
        // Whatever follows the tar's end (zstd's epilogue) is part of the hashed bytes.
        let mut decoder = archive.into_inner();
        io::copy(&mut decoder, &mut io::sink()).map_err(bad)?;
    }
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| KernelError::io(dest, e))?;
    let actual = hex(&hashing.hasher.finalize());
    if actual != expected_sha256 {
        return Err(KernelError::Bundle {
            path: dest.to_owned(),
            reason: format!("the tarball's sha256 is {actual}, the catalog says {expected_sha256}"),
        });
    }
    let manifest = read_manifest(staging.path()).map_err(|e| KernelError::Bundle {
        path: dest.to_owned(),
        reason: e.to_string(),
    })?;
    for file in [&manifest.vmlinux, &manifest.bzimage, &manifest.initrd] {
        let bytes = fs::read(staging.path().join(&file.path))
            .map_err(|e| KernelError::io(&staging.path().join(&file.path), e))?;
        if hex(&Sha256::digest(&bytes)) != file.sha256 {
            return Err(KernelError::Bundle {
                path: dest.to_owned(),
                reason: format!("{}'s sha256 is not the manifest's", file.path),
            });
        }
    }
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        staging.path(),
        nix::fcntl::AT_FDCWD,
        dest,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| match e {
        nix::errno::Errno::EEXIST | nix::errno::Errno::ENOTEMPTY => KernelError::AlreadyExists {
            path: dest.to_owned(),
        },
        e => KernelError::io(dest, e.into()),
    })?;
    let _ = staging.keep();
    Ok(manifest)
}

fn collect_files(root: &Path, relative: &Path, out: &mut Vec<PathBuf>) -> Result<(), KernelError> {
    let dir = root.join(relative);
    for entry in fs::read_dir(&dir).map_err(|e| KernelError::io(&dir, e))? {
        let entry = entry.map_err(|e| KernelError::io(&dir, e))?;
        let kind = entry
            .file_type()
            .map_err(|e| KernelError::io(&entry.path(), e))?;
        let path = relative.join(entry.file_name());
        if kind.is_dir() {
            collect_files(root, &path, out)?;
        } else if kind.is_file() {
            out.push(path);
        } else {
            return Err(KernelError::Bundle {
                path: root.to_owned(),
                reason: format!("{} is neither a file nor a directory", path.display()),
            });
        }
    }
    Ok(())
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

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::bundle::{BundleFile, BundleSource, MANIFEST_FORMAT, sha256_hex};

    /// A small bundle written by hand (the conversion has its own tests).
    fn fake_bundle(dir: &Path) -> (PathBuf, BundleManifest) {
        let bundle = dir.join("bundle");
        fs::create_dir_all(bundle.join("lib/modules/6.1.0-test/kernel")).unwrap();
        let file = |name: &str, bytes: &[u8]| {
            fs::write(bundle.join(name), bytes).unwrap();
            BundleFile {
                path: name.to_owned(),
                sha256: sha256_hex(bytes),
                size: bytes.len() as u64,
            }
        };
        fs::write(bundle.join("lib/modules/6.1.0-test/kernel/a.ko"), b"module").unwrap();
        let manifest = BundleManifest {
            format: MANIFEST_FORMAT,
            version: "6.1.0-test".into(),
            arch: "x86_64".into(),
            source: BundleSource::DebianPackage {
                package: "linux-image-6.1.0-test".into(),
                version: "6.1.0-test-1".into(),
                sha256: "00".repeat(32),
                url: None,
            },
            vmlinux: file("vmlinux", &[7u8; 5000]),
            bzimage: file("vmlinuz", b"bzimage"),
            initrd: file("initrd.img", b"initrd"),
            config: None,
            modules: vec!["a".into()],
            modules_missing: vec![],
            agent_sha256: "11".repeat(32),
            firecracker_min_version: "1.8.0".into(),
        };
        fs::write(
            bundle.join(MANIFEST_FILE),
            serde_json::to_vec_pretty(&manifest).unwrap(),
        )
        .unwrap();
        (bundle, manifest)
    }

    #[test]
    fn a_packed_bundle_unpacks_to_the_same_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let (bundle, manifest) = fake_bundle(dir.path());
        let out = dir.path().join("out");
        let packed = pack_bundle(&bundle, "debian-test", &out).unwrap();
        let bytes = fs::read(&packed.path).unwrap();
        assert_eq!(packed.sha256, sha256_hex(&bytes));
        assert_eq!(packed.size, bytes.len() as u64);
        assert_eq!(
            packed.path.file_name().unwrap().to_string_lossy(),
            format!("debian-test-{}.tar.zst", &packed.sha256[..16])
        );
        // Deterministic: packing again gives the same bytes.
        let again = pack_bundle(&bundle, "debian-test", &dir.path().join("again")).unwrap();
        assert_eq!(again.sha256, packed.sha256);

        let entry = catalog_entry("debian-test", &manifest, &packed, "kernels/x.tar.zst");
        assert_eq!(entry.tarball_sha256, packed.sha256);
        assert_eq!(entry.version, "6.1.0-test");
        assert_eq!(entry.kind, "bundle");

        let dest = dir.path().join("pulled/debian-test");
        let unpacked = unpack_bundle(bytes.as_slice(), &packed.sha256, &dest).unwrap();
        assert_eq!(unpacked, manifest);
        assert_eq!(
            fs::read(dest.join("lib/modules/6.1.0-test/kernel/a.ko")).unwrap(),
            b"module"
        );

        let error = unpack_bundle(
            bytes.as_slice(),
            &"0".repeat(64),
            &dir.path().join("pulled/x"),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("sha256"), "{error}");
        let truncated = &bytes[..bytes.len() / 2];
        let error = unpack_bundle(truncated, &packed.sha256, &dir.path().join("pulled/y"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("corrupt or truncated"), "{error}");
        let mut names: Vec<String> = fs::read_dir(dir.path().join("pulled"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["debian-test"], "failed unpacks leave nothing");
    }

    #[test]
    fn hostile_tarballs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (entries, expected) in [
            (
                vec![crate::kernel::deb::tests::Entry::File("../escape", b"x")],
                "climbs out",
            ),
            (
                vec![crate::kernel::deb::tests::Entry::Symlink(
                    "vmlinux",
                    "/etc/passwd",
                )],
                "only files and directories",
            ),
        ] {
            let tar = crate::kernel::deb::tests::tar_of(&entries);
            let tarball = zstd::encode_all(tar.as_slice(), 1).unwrap();
            let sha = sha256_hex(&tarball);
            let dest = dir.path().join("k");
            let error = unpack_bundle(tarball.as_slice(), &sha, &dest)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{expected}: {error}");
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }
}
