//! Reading a Debian kernel package (`linux-image-*-cloud-amd64_*.deb`) without dpkg.
//!
//! A .deb is an `ar` archive: `debian-binary` (`2.0`), `control.tar.{xz,zst,gz}` and
//! `data.tar.{xz,zst}`. From the control archive we read the package's name, version and
//! architecture; from the data archive the kernel (`boot/vmlinuz-<release>`), its config and
//! the module files under `lib/modules/<release>/` (or `usr/lib/modules/`, where a merged-/usr
//! package puts them). Nothing is written to disk here: the files banger keeps are returned
//! in memory, and the caller decides where they go.
//!
//! Invariants: the whole data archive is checked, not only the entries banger keeps: an entry
//! that climbs out with `..` or is absolute, a symlink whose target leaves the package's root,
//! a hardlink to such a path, or a kept path that appears twice, refuses the package with the
//! entry named; every size is bounded ([`MAX_ENTRY_BYTES`], [`MAX_KEPT_BYTES`]), so a hostile
//! package cannot exhaust memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path};

use super::KernelError;

/// The largest single file kept from a package.
pub const MAX_ENTRY_BYTES: u64 = 256 << 20;

/// The most bytes kept from a package in all (Debian's cloud kernel keeps about 110 MB: the
/// kernel and every module, before banger picks the few it needs).
pub const MAX_KEPT_BYTES: u64 = 1 << 30;

/// The fields of the package's `control` file banger records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageInfo {
    pub package: String,
    pub version: String,
    pub architecture: String,
}

/// What banger takes from a kernel package.
#[derive(Debug)]
pub struct KernelPackage {
    pub info: PackageInfo,
    /// The kernel release (`6.1.0-57-cloud-amd64`), from `boot/vmlinuz-<release>`.
    pub release: String,
    /// `boot/vmlinuz-<release>`.
    pub vmlinuz: Vec<u8>,
    /// `boot/config-<release>`, when the package has it.
    pub config: Option<Vec<u8>>,
    /// `modules.builtin` (paths of modules built into the kernel), when present.
    pub modules_builtin: Option<String>,
    /// Every module file, by its path under `lib/modules/<release>/` (`kernel/…/x.ko`).
    pub modules: BTreeMap<String, Vec<u8>>,
}

/// Reads and checks a kernel package.
pub fn read_kernel_package(path: &Path) -> Result<KernelPackage, KernelError> {
    let file = File::open(path).map_err(|e| KernelError::io(path, e))?;
    read_kernel_package_from(BufReader::new(file), path)
}

/// [`read_kernel_package`] from any reader; `path` only names it in errors.
pub fn read_kernel_package_from(
    reader: impl Read,
    path: &Path,
) -> Result<KernelPackage, KernelError> {
    let not_a_deb = |reason: String| KernelError::NotADebianPackage {
        path: path.to_owned(),
        reason,
    };
    let mut archive = ar::Archive::new(reader);
    let mut members = Vec::new();
    let mut info = None;
    let mut data = None;
    while let Some(entry) = archive.next_entry() {
        let mut entry = entry.map_err(|e| not_a_deb(format!("not a readable ar archive: {e}")))?;
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_owned();
        match (members.len(), name.as_str()) {
            (0, "debian-binary") => {
                let mut version = String::new();
                (&mut entry)
                    .take(64)
                    .read_to_string(&mut version)
                    .map_err(|e| not_a_deb(format!("unreadable debian-binary: {e}")))?;
                if !version.starts_with("2.") {
                    return Err(not_a_deb(format!(
                        "format version {:?}, not 2.x",
                        version.trim()
                    )));
                }
            }
            (0, other) => {
                return Err(not_a_deb(format!(
                    "the first member is {other:?}, not debian-binary"
                )));
            }
            (_, control) if control.starts_with("control.tar") => {
                let tar = decompressed(&mut entry, control, path)?;
                info = Some(read_control(tar, path)?);
            }
            (_, data_name) if data_name.starts_with("data.tar") => {
                let tar = decompressed(&mut entry, data_name, path)?;
                data = Some(read_data(tar, path)?);
            }
            _ => {} // Other members (signatures) are allowed and ignored.
        }
        members.push(name);
    }
    if members.is_empty() {
        return Err(not_a_deb("not an ar archive, or an empty one".into()));
    }
    let info = info.ok_or_else(|| not_a_deb("it has no control.tar member".into()))?;
    let data = data.ok_or_else(|| not_a_deb("it has no data.tar member".into()))?;
    if !info.package.starts_with("linux-image-") {
        return Err(KernelError::NotAKernelPackage {
            path: path.to_owned(),
            reason: format!("it is {}, not a linux-image package", info.package),
        });
    }
    if info.architecture != "amd64" {
        return Err(KernelError::NotAKernelPackage {
            path: path.to_owned(),
            reason: format!(
                "it is built for {}; banger boots amd64 guests",
                info.architecture
            ),
        });
    }
    data.into_package(info, path)
}

/// The decompressing reader for a `control.tar*` or `data.tar*` member.
fn decompressed<'a>(
    member: &'a mut dyn Read,
    name: &str,
    path: &Path,
) -> Result<Box<dyn Read + 'a>, KernelError> {
    match name.rsplit_once('.') {
        Some((_, "xz")) => Ok(Box::new(liblzma::read::XzDecoder::new(member))),
        Some((_, "zst")) => Ok(Box::new(
            zstd::stream::read::Decoder::new(member).map_err(|e| KernelError::io(path, e))?,
        )),
        _ if name.ends_with(".tar") => Ok(Box::new(member)),
        _ => Err(KernelError::NotADebianPackage {
            path: path.to_owned(),
            reason: format!("its {name} is compressed in a way banger does not read (xz, zstd)"),
        }),
    }
}

/// A tar error while reading the package, said as a corrupt package.
fn corrupt(path: &Path, what: &str, e: io::Error) -> KernelError {
    KernelError::NotADebianPackage {
        path: path.to_owned(),
        reason: format!("its {what} is corrupt or truncated: {e}"),
    }
}

fn read_control(tar: impl Read, path: &Path) -> Result<PackageInfo, KernelError> {
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|e| corrupt(path, "control archive", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(path, "control archive", e))?;
        let entry_path = entry
            .path()
            .map_err(|e| corrupt(path, "control archive", e))?
            .into_owned();
        if safe_relative_path(&entry_path).as_deref() != Ok("control") {
            continue;
        }
        let mut text = String::new();
        (&mut entry)
            .take(1 << 20)
            .read_to_string(&mut text)
            .map_err(|e| corrupt(path, "control file", e))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(|value| value.trim().to_owned())
        };
        let missing = |name: &str| KernelError::NotADebianPackage {
            path: path.to_owned(),
            reason: format!("its control file has no {name} field"),
        };
        return Ok(PackageInfo {
            package: field("Package").ok_or_else(|| missing("Package"))?,
            version: field("Version").ok_or_else(|| missing("Version"))?,
            architecture: field("Architecture").ok_or_else(|| missing("Architecture"))?,
        });
    }
    Err(KernelError::NotADebianPackage {
        path: path.to_owned(),
        reason: "its control archive has no control file".into(),
    })
}

/// What the data archive held that banger keeps, before it is checked for completeness.
#[derive(Default)]
struct DataFiles {
    /// Kept files by their path in the package (`boot/vmlinuz-…`, `lib/modules/…`).
    kept: BTreeMap<String, Vec<u8>>,
}

fn read_data(tar: impl Read, path: &Path) -> Result<DataFiles, KernelError> {
    let mut files = DataFiles::default();
    let mut kept_bytes = 0u64;
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|e| corrupt(path, "data archive", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(path, "data archive", e))?;
        let raw_path = entry
            .path()
            .map_err(|e| corrupt(path, "data archive", e))?
            .into_owned();
        let name = safe_relative_path(&raw_path).map_err(|reason| KernelError::UnsafeEntry {
            entry: raw_path.display().to_string(),
            reason,
        })?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| corrupt(path, "data archive", e))?
                .ok_or_else(|| KernelError::UnsafeEntry {
                    entry: name.clone(),
                    reason: "a link without a target".into(),
                })?
                .into_owned();
            check_link(&name, &target, kind.is_symlink())?;
        }
        if !is_kept(&name) {
            continue;
        }
        if !kind.is_file() {
            return Err(KernelError::UnsafeEntry {
                entry: name,
                reason: format!("banger needs a regular file here, not a {kind:?}"),
            });
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| corrupt(path, "data archive", e))?;
        kept_bytes += size;
        if size > MAX_ENTRY_BYTES || kept_bytes > MAX_KEPT_BYTES {
            return Err(KernelError::UnsafeEntry {
                entry: name,
                reason: format!(
                    "too big ({size} bytes; a kernel package's files are under {MAX_ENTRY_BYTES})"
                ),
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(size)
            .read_to_end(&mut bytes)
            .map_err(|e| corrupt(path, "data archive", e))?;
        if bytes.len() as u64 != size {
            return Err(corrupt(
                path,
                "data archive",
                io::Error::new(io::ErrorKind::UnexpectedEof, format!("{name} is cut short")),
            ));
        }
        if files.kept.insert(name.clone(), bytes).is_some() {
            return Err(KernelError::UnsafeEntry {
                entry: name,
                reason: "it appears twice in the package".into(),
            });
        }
    }
    Ok(files)
}

/// The files banger keeps: the kernel, its config, and everything under a modules directory
/// that is a module or `modules.builtin`.
fn is_kept(name: &str) -> bool {
    if let Some(file) = name.strip_prefix("boot/") {
        return file.starts_with("vmlinuz-") || file.starts_with("config-");
    }
    let Some(rest) = modules_relative(name) else {
        return false;
    };
    rest.1.ends_with(".ko") || rest.1 == "modules.builtin"
}

/// `lib/modules/<release>/<rest>` (or under `usr/`) → `(release, rest)`.
fn modules_relative(name: &str) -> Option<(&str, &str)> {
    let under = name
        .strip_prefix("lib/modules/")
        .or_else(|| name.strip_prefix("usr/lib/modules/"))?;
    let (release, rest) = under.split_once('/')?;
    (!rest.is_empty()).then_some((release, rest))
}

impl DataFiles {
    fn into_package(self, info: PackageInfo, path: &Path) -> Result<KernelPackage, KernelError> {
        let mut vmlinuz = None;
        let mut config = None;
        let mut modules_builtin = None;
        let mut modules = BTreeMap::new();
        let mut release: Option<String> = None;
        let mut releases_seen = std::collections::BTreeSet::new();
        for (name, bytes) in self.kept {
            if let Some(file) = name.strip_prefix("boot/vmlinuz-") {
                if release.replace(file.to_owned()).is_some() {
                    return Err(KernelError::NotAKernelPackage {
                        path: path.to_owned(),
                        reason: "it holds more than one kernel (boot/vmlinuz-*)".into(),
                    });
                }
                vmlinuz = Some(bytes);
            } else if let Some(file) = name.strip_prefix("boot/config-") {
                config = Some((file.to_owned(), bytes));
            } else if let Some((module_release, rest)) = modules_relative(&name) {
                releases_seen.insert(module_release.to_owned());
                if rest == "modules.builtin" {
                    modules_builtin = Some((
                        module_release.to_owned(),
                        String::from_utf8_lossy(&bytes).into_owned(),
                    ));
                } else {
                    modules.insert((module_release.to_owned(), rest.to_owned()), bytes);
                }
            }
        }
        let (Some(release), Some(vmlinuz)) = (release, vmlinuz) else {
            return Err(KernelError::NotAKernelPackage {
                path: path.to_owned(),
                reason: "it has no boot/vmlinuz-<release>".into(),
            });
        };
        if let Some(other) = releases_seen.iter().find(|r| **r != release) {
            return Err(KernelError::NotAKernelPackage {
                path: path.to_owned(),
                reason: format!("its modules are for {other}, its kernel is {release}"),
            });
        }
        Ok(KernelPackage {
            info,
            vmlinuz,
            config: config.filter(|(r, _)| *r == release).map(|(_, b)| b),
            modules_builtin: modules_builtin.map(|(_, text)| text),
            modules: modules
                .into_iter()
                .map(|((_, rest), bytes)| (rest, bytes))
                .collect(),
            release,
        })
    }
}

/// A package path as banger names it: relative, `/`-separated, without `.` components.
/// `..`, an absolute path or a name that is not UTF-8 is refused with the reason.
pub fn safe_relative_path(path: &Path) -> Result<String, String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => parts.push(
                part.to_str()
                    .ok_or_else(|| "the name is not UTF-8".to_owned())?,
            ),
            Component::ParentDir => return Err("it climbs out of the package with ..".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("it is an absolute path".into());
            }
        }
    }
    Ok(parts.join("/"))
}

/// A symlink's target must resolve inside the package's root (relative to the link's own
/// directory); a hardlink's must be a safe path of the package.
fn check_link(name: &str, target: &Path, symlink: bool) -> Result<(), KernelError> {
    let unsafe_link = |reason: String| KernelError::UnsafeEntry {
        entry: name.to_owned(),
        reason,
    };
    if !symlink {
        return safe_relative_path(target).map(drop).map_err(|reason| {
            unsafe_link(format!("a hardlink to {}: {reason}", target.display()))
        });
    }
    if target.is_absolute() {
        return Err(unsafe_link(format!(
            "a symlink to the absolute path {}, outside the package",
            target.display()
        )));
    }
    let mut depth: Vec<&str> = name.split('/').collect();
    depth.pop(); // the link's own name
    for component in target.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => depth.push(part.to_str().unwrap_or("?")),
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return Err(unsafe_link(format!(
                        "a symlink to {}, which leaves the package",
                        target.display()
                    )));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_link(format!(
                    "a symlink to the absolute path {}",
                    target.display()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One member of a fake data archive.
    pub(crate) enum Entry<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    /// A tar archive of `entries`, with names written raw (so `..` and `/` survive).
    pub(crate) fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            let mut header = tar::Header::new_gnu();
            let (name, kind, data, link): (&str, tar::EntryType, &[u8], Option<&str>) = match entry
            {
                Entry::File(name, data) => (name, tar::EntryType::Regular, data, None),
                Entry::Dir(name) => (name, tar::EntryType::Directory, &[], None),
                Entry::Symlink(name, target) => (name, tar::EntryType::Symlink, &[], Some(target)),
                Entry::Hardlink(name, target) => (name, tar::EntryType::Link, &[], Some(target)),
            };
            header.set_entry_type(kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            // Raw names: the tar crate's set_path refuses `..`, which a hostile package has.
            let raw = &mut header.as_old_mut().name;
            raw.fill(0);
            raw[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                let raw = &mut header.as_old_mut().linkname;
                raw.fill(0);
                raw[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// A .deb: `debian-binary`, an uncompressed `control.tar` and an xz `data.tar.xz`.
    pub(crate) fn deb_of(package: &str, architecture: &str, data: &[Entry<'_>]) -> Vec<u8> {
        let control = format!(
            "Package: {package}\nSource: linux-signed-amd64\nVersion: 6.1.0-test-1\n\
             Architecture: {architecture}\nDescription: a test\n"
        );
        let control_tar = tar_of(&[
            Entry::Dir("./"),
            Entry::File("./control", control.as_bytes()),
        ]);
        let mut data_xz = Vec::new();
        let mut encoder = liblzma::write::XzEncoder::new(&mut data_xz, 1);
        io::Write::write_all(&mut encoder, &tar_of(data)).unwrap();
        encoder.finish().unwrap();
        ar_of(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar", &control_tar),
            ("data.tar.xz", &data_xz),
        ])
    }

    pub(crate) fn ar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = ar::Builder::new(Vec::new());
        for (name, data) in members {
            let header = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn read(deb: &[u8]) -> Result<KernelPackage, KernelError> {
        read_kernel_package_from(deb, Path::new("test.deb"))
    }

    const PACKAGE: &str = "linux-image-6.1.0-test-cloud-amd64";

    #[test]
    fn the_kernel_config_and_modules_are_kept() {
        let deb = deb_of(
            PACKAGE,
            "amd64",
            &[
                Entry::Dir("./"),
                Entry::Dir("./boot/"),
                Entry::File("./boot/vmlinuz-6.1.0-test", b"kernel"),
                Entry::File("./boot/config-6.1.0-test", b"CONFIG_X=y\n"),
                Entry::File("./boot/System.map-6.1.0-test", b"ffff"),
                Entry::File("./lib/modules/6.1.0-test/kernel/a/virtio.ko", b"ko"),
                Entry::File(
                    "./lib/modules/6.1.0-test/modules.builtin",
                    b"kernel/fs/ext4/ext4.ko\n",
                ),
                Entry::File("./usr/share/doc/x/changelog.gz", b"doc"),
                Entry::Symlink("./lib/modules/6.1.0-test/source", "../../../usr/src/linux"),
            ],
        );
        let package = read(&deb).unwrap();
        assert_eq!(package.info.package, PACKAGE);
        assert_eq!(package.info.version, "6.1.0-test-1");
        assert_eq!(package.release, "6.1.0-test");
        assert_eq!(package.vmlinuz, b"kernel");
        assert_eq!(package.config.as_deref(), Some(&b"CONFIG_X=y\n"[..]));
        assert_eq!(
            package.modules_builtin.as_deref(),
            Some("kernel/fs/ext4/ext4.ko\n")
        );
        assert_eq!(
            package.modules.keys().collect::<Vec<_>>(),
            ["kernel/a/virtio.ko"]
        );
    }

    #[test]
    fn hostile_entries_refuse_the_package() {
        for (entries, expected) in [
            (vec![Entry::File("./../../etc/passwd", b"x")], "climbs out"),
            (vec![Entry::File("/etc/passwd", b"x")], "absolute path"),
            (
                vec![Entry::Symlink("./boot/x", "/etc/passwd")],
                "absolute path",
            ),
            (
                vec![Entry::Symlink("./boot/x", "../../etc")],
                "leaves the package",
            ),
            (
                vec![Entry::Hardlink("./boot/x", "../etc/shadow")],
                "hardlink",
            ),
            (
                vec![
                    Entry::File("./boot/vmlinuz-1", b"a"),
                    Entry::File("./boot/vmlinuz-1", b"b"),
                ],
                "appears twice",
            ),
            (
                vec![Entry::Symlink("./boot/vmlinuz-1", "vmlinuz-2")],
                "needs a regular file",
            ),
        ] {
            let error = read(&deb_of(PACKAGE, "amd64", &entries))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{expected}: {error}");
        }
        // A symlink that stays inside is fine.
        let deb = deb_of(
            PACKAGE,
            "amd64",
            &[
                Entry::File("./boot/vmlinuz-1", b"k"),
                Entry::Symlink("./lib/modules/1/build", "../../../usr/src/linux"),
            ],
        );
        read(&deb).unwrap();
    }

    #[test]
    fn packages_that_are_not_kernels_are_refused() {
        let kernel = [Entry::File("./boot/vmlinuz-1", b"k")];
        for (deb, expected) in [
            (
                b"garbage, not an ar archive".to_vec(),
                "not a readable ar archive",
            ),
            (Vec::new(), "not a readable ar archive"),
            (b"!<arch>\n".to_vec(), "empty"),
            (
                deb_of("bash", "amd64", &kernel),
                "not a linux-image package",
            ),
            (deb_of(PACKAGE, "arm64", &kernel), "built for arm64"),
            (deb_of(PACKAGE, "amd64", &[]), "no boot/vmlinuz"),
            (
                deb_of(
                    PACKAGE,
                    "amd64",
                    &[
                        Entry::File("./boot/vmlinuz-1", b"k"),
                        Entry::File("./boot/vmlinuz-2", b"k"),
                    ],
                ),
                "more than one kernel",
            ),
            (
                deb_of(
                    PACKAGE,
                    "amd64",
                    &[
                        Entry::File("./boot/vmlinuz-1", b"k"),
                        Entry::File("./lib/modules/2/kernel/x.ko", b"m"),
                    ],
                ),
                "modules are for 2",
            ),
            (
                ar_of(&[("control.tar", b""), ("debian-binary", b"2.0\n")]),
                "not debian-binary",
            ),
            (ar_of(&[("debian-binary", b"3.0\n")]), "not 2.x"),
            (ar_of(&[("debian-binary", b"2.0\n")]), "no control.tar"),
            (
                ar_of(&[("debian-binary", b"2.0\n"), ("control.tar.bz2", b"x")]),
                "does not read",
            ),
            (
                {
                    let mut deb = deb_of(PACKAGE, "amd64", &kernel);
                    let cut = deb.len() - 40;
                    deb.truncate(cut);
                    deb
                },
                "",
            ),
        ] {
            let error = read(&deb).unwrap_err().to_string();
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }
}
