//! A kernel bundle made from a Debian kernel package, and its manifest.
//!
//! [`bundle_from_deb`] is the whole conversion: read and check the package ([`super::deb`]),
//! take the vmlinux out of the bzImage ([`super::bzimage`]), choose and order the modules
//! ([`super::modules`]), build the initrd around the static agent ([`super::initrd`]), and
//! publish the directory atomically. `kernel pull` of a Debian catalog entry calls it on the
//! user's host after downloading the package; `tools/` calls it to make a bundle for the
//! catalog.
//!
//! Invariants: the destination appears complete or not at all (built in a temporary
//! directory beside it, every file synced, then renamed with `RENAME_NOREPLACE`, so an
//! existing bundle is never overwritten or merged into); on any error the temporary
//! directory is removed; the manifest's hashes are of the bytes written.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::deb::{KernelPackage, read_kernel_package_from};
use super::initrd::{InitrdModule, build_initrd, check_static_agent};
use super::modules::{
    MICROVM_MODULES, ModuleFile, load_order, module_name_of_path, modules_dep, read_modinfo,
};
use super::{FIRECRACKER_MIN_VERSION, KernelError, bzimage};

/// The manifest's file name in a bundle.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest's layout version; a new layout is a new number, and readers refuse numbers
/// they do not know.
pub const MANIFEST_FORMAT: u32 = 1;

/// The file names of a bundle.
pub const VMLINUX_FILE: &str = "vmlinux";
pub const BZIMAGE_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.img";
pub const CONFIG_FILE: &str = "config";

/// `manifest.json`: what a bundle holds and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The kernel release (`uname -r` in the guest): `6.1.0-57-cloud-amd64`.
    pub version: String,
    /// The guest architecture, as `uname -m` says it: `x86_64`.
    pub arch: String,
    pub source: BundleSource,
    pub vmlinux: BundleFile,
    /// The bzImage the vmlinux came from.
    pub bzimage: BundleFile,
    pub initrd: BundleFile,
    pub config: Option<BundleFile>,
    /// The modules the initrd loads, in load order.
    pub modules: Vec<String>,
    /// Optional modules ([`MICROVM_MODULES`]) the package did not have.
    pub modules_missing: Vec<String>,
    /// The sha256 of the agent that is the initrd's `/init`.
    pub agent_sha256: String,
    /// The oldest Firecracker that boots it ([`FIRECRACKER_MIN_VERSION`]).
    pub firecracker_min_version: String,
}

/// Where a bundle came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BundleSource {
    /// A Debian kernel package.
    DebianPackage {
        package: String,
        version: String,
        /// The .deb's sha256.
        sha256: String,
        /// Where it was downloaded from, when the caller knows (not for `apt-get download`).
        url: Option<String>,
    },
}

/// One file of a bundle: its path in the bundle, sha256 and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// A Debian kernel package pinned in banger's kernel catalog: `kernel pull NAME` downloads
/// it (from the archive's snapshot service, which keeps every file it published) and turns it
/// into a bundle on the user's host with [`bundle_from_debian_entry`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianKernelEntry {
    pub name: String,
    /// `linux-image-6.1.0-57-cloud-amd64`.
    pub package: String,
    /// The package version, `6.1.192-3`.
    pub version: String,
    /// Where the .deb is downloaded from.
    pub url: String,
    /// The .deb's sha256, checked before anything is converted.
    pub sha256: String,
    pub size_bytes: u64,
    /// One line for `banger kernel list --available`.
    #[serde(default)]
    pub description: String,
}

/// Turns the Debian kernel package `deb` into a bundle at `dest`, whose initrd runs `agent`
/// (the static banger agent) as its init. `source_url` is recorded in the manifest. `dest`
/// must not exist; its parent is created.
pub fn bundle_from_deb(
    deb: &Path,
    source_url: Option<&str>,
    agent: &Path,
    dest: &Path,
) -> Result<BundleManifest, KernelError> {
    convert(deb, source_url, None, agent, dest)
}

/// [`bundle_from_deb`] for a package downloaded for a catalog entry: the download must have
/// the entry's sha256 and be the entry's package and version, or nothing is made.
pub fn bundle_from_debian_entry(
    entry: &DebianKernelEntry,
    downloaded: &Path,
    agent: &Path,
    dest: &Path,
) -> Result<BundleManifest, KernelError> {
    convert(downloaded, Some(&entry.url), Some(entry), agent, dest)
}

fn convert(
    deb: &Path,
    source_url: Option<&str>,
    pinned: Option<&DebianKernelEntry>,
    agent: &Path,
    dest: &Path,
) -> Result<BundleManifest, KernelError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(KernelError::AlreadyExists {
            path: dest.to_owned(),
        });
    }
    let agent_bytes = fs::read(agent).map_err(|e| KernelError::io(agent, e))?;
    check_static_agent(agent, &agent_bytes)?;
    let deb_bytes = fs::read(deb).map_err(|e| KernelError::io(deb, e))?;
    let deb_sha256 = sha256_hex(&deb_bytes);
    if let Some(pinned) = pinned
        && pinned.sha256 != deb_sha256
    {
        return Err(KernelError::ChecksumMismatch {
            path: deb.to_owned(),
            expected: pinned.sha256.clone(),
            actual: deb_sha256,
        });
    }
    let package = read_kernel_package_from(deb_bytes.as_slice(), deb)?;
    if let Some(pinned) = pinned
        && (pinned.package != package.info.package || pinned.version != package.info.version)
    {
        return Err(KernelError::NotAKernelPackage {
            path: deb.to_owned(),
            reason: format!(
                "it is {} {}, but the catalog entry {} pins {} {}",
                package.info.package,
                package.info.version,
                pinned.name,
                pinned.package,
                pinned.version
            ),
        });
    }
    let source = BundleSource::DebianPackage {
        package: package.info.package.clone(),
        version: package.info.version.clone(),
        sha256: deb_sha256,
        url: source_url.map(str::to_owned),
    };
    drop(deb_bytes);
    let contents = BundleContents::from_package(package, source, &agent_bytes)?;
    contents.publish(dest)
}

/// Everything a bundle holds, in memory, checked, before it is written.
struct BundleContents {
    manifest: BundleManifest,
    files: Vec<(String, Vec<u8>)>,
}

impl BundleContents {
    fn from_package(
        package: KernelPackage,
        source: BundleSource,
        agent: &[u8],
    ) -> Result<BundleContents, KernelError> {
        let release = package.release.clone();
        let (info, _) = bzimage::inspect(&package.vmlinuz)?;
        if let Some(image_release) = &info.release
            && *image_release != release
        {
            return Err(KernelError::KernelImage(format!(
                "the bzImage says it is {image_release}, the package names it {release}"
            )));
        }
        let vmlinux = bzimage::extract_vmlinux(&package.vmlinuz)?;

        let mut modules = std::collections::BTreeMap::new();
        for (path, bytes) in &package.modules {
            let info = read_modinfo(path, bytes)?;
            modules.insert(info.name.clone(), info);
        }
        let builtin = package
            .modules_builtin
            .as_deref()
            .unwrap_or_default()
            .lines()
            .map(module_name_of_path)
            .collect();
        let (order, missing) = load_order(&modules, &builtin, MICROVM_MODULES)?;
        check_module_releases(&order, &release)?;

        let initrd_modules: Vec<InitrdModule<'_>> = order
            .iter()
            .map(|module| InitrdModule {
                path: &module.path,
                bytes: &package.modules[&module.path],
            })
            .collect();
        let initrd = build_initrd(agent, &release, &initrd_modules);

        let mut files = vec![
            (VMLINUX_FILE.to_owned(), vmlinux),
            (BZIMAGE_FILE.to_owned(), package.vmlinuz.clone()),
            (INITRD_FILE.to_owned(), initrd),
        ];
        if let Some(config) = &package.config {
            files.push((CONFIG_FILE.to_owned(), config.clone()));
        }
        let modules_dir = format!("lib/modules/{release}");
        for module in &order {
            files.push((
                format!("{modules_dir}/{}", module.path),
                package.modules[&module.path].clone(),
            ));
        }
        files.push((
            format!("{modules_dir}/modules.dep"),
            modules_dep(&order).into_bytes(),
        ));
        let module_order: String = order.iter().map(|m| format!("{}\n", m.path)).collect();
        files.push((
            format!("{modules_dir}/modules.order"),
            module_order.into_bytes(),
        ));

        let entry = |name: &str| -> BundleFile {
            let bytes = &files
                .iter()
                .find(|(path, _)| path == name)
                .expect("the bundle's own file")
                .1;
            BundleFile {
                path: name.to_owned(),
                sha256: sha256_hex(bytes),
                size: bytes.len() as u64,
            }
        };
        let manifest = BundleManifest {
            format: MANIFEST_FORMAT,
            version: release,
            arch: "x86_64".to_owned(),
            source,
            vmlinux: entry(VMLINUX_FILE),
            bzimage: entry(BZIMAGE_FILE),
            initrd: entry(INITRD_FILE),
            config: package.config.as_ref().map(|_| entry(CONFIG_FILE)),
            modules: order.iter().map(|m| m.name.clone()).collect(),
            modules_missing: missing,
            agent_sha256: sha256_hex(agent),
            firecracker_min_version: FIRECRACKER_MIN_VERSION.to_owned(),
        };
        Ok(BundleContents { manifest, files })
    }

    /// Writes everything into a temporary directory beside `dest`, then renames it there.
    fn publish(self, dest: &Path) -> Result<BundleManifest, KernelError> {
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| KernelError::io(parent, e))?;
        let staging = tempfile::Builder::new()
            .prefix(".kernel-bundle-")
            .tempdir_in(parent)
            .map_err(|e| KernelError::io(parent, e))?;
        for (name, bytes) in &self.files {
            write_synced(&staging.path().join(name), bytes)?;
        }
        let mut manifest = serde_json::to_vec_pretty(&self.manifest)
            .map_err(|e| KernelError::io(dest, std::io::Error::other(e)))?;
        manifest.push(b'\n');
        write_synced(&staging.path().join(MANIFEST_FILE), &manifest)?;
        sync_directories(staging.path())?;
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            staging.path(),
            nix::fcntl::AT_FDCWD,
            dest,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            nix::errno::Errno::EEXIST | nix::errno::Errno::ENOTEMPTY => {
                KernelError::AlreadyExists {
                    path: dest.to_owned(),
                }
            }
            e => KernelError::io(dest, e.into()),
        })?;
        // The directory is dest now; nothing is left to remove.
        let _ = staging.keep();
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| KernelError::io(parent, e))?;
        Ok(self.manifest)
    }
}

/// Every chosen module must be built for the package's kernel (its `vermagic`), or the kernel
/// would refuse it at boot.
fn check_module_releases(order: &[&ModuleFile], release: &str) -> Result<(), KernelError> {
    for module in order {
        if let Some(module_release) = &module.release
            && module_release != release
        {
            return Err(KernelError::Module {
                module: module.name.clone(),
                reason: format!("built for {module_release}, not {release}"),
            });
        }
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), KernelError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| KernelError::io(parent, e))?;
    }
    let mut file = File::create(path).map_err(|e| KernelError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| KernelError::io(path, e))
}

/// fsyncs every directory of the tree, so the renamed bundle's entries are durable.
fn sync_directories(root: &Path) -> Result<(), KernelError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| KernelError::io(&dir, e))? {
            let entry = entry.map_err(|e| KernelError::io(&dir, e))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| KernelError::io(&dir, e))?;
    }
    Ok(())
}

/// Reads and checks a bundle's manifest: a known format, and files that exist with the
/// recorded sizes (hashes are checked where a bundle is received, see [`super::tarball`]).
pub fn read_manifest(bundle: &Path) -> Result<BundleManifest, KernelError> {
    let path = bundle.join(MANIFEST_FILE);
    let text = fs::read(&path).map_err(|e| KernelError::io(&path, e))?;
    let manifest: BundleManifest =
        serde_json::from_slice(&text).map_err(|e| KernelError::Bundle {
            path: bundle.to_owned(),
            reason: format!("{MANIFEST_FILE} is not a bundle manifest: {e}"),
        })?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(KernelError::Bundle {
            path: bundle.to_owned(),
            reason: format!(
                "manifest format {} is not {MANIFEST_FORMAT}, the one this banger reads",
                manifest.format
            ),
        });
    }
    for file in [&manifest.vmlinux, &manifest.bzimage, &manifest.initrd]
        .into_iter()
        .chain(manifest.config.as_ref())
    {
        let path = bundle.join(&file.path);
        let safe =
            super::deb::safe_relative_path(Path::new(&file.path)).is_ok_and(|p| p == file.path);
        let size = fs::metadata(&path).map(|m| m.len()).ok();
        if !safe || size != Some(file.size) {
            return Err(KernelError::Bundle {
                path: bundle.to_owned(),
                reason: format!(
                    "{} is missing or not the size the manifest records",
                    file.path
                ),
            });
        }
    }
    Ok(manifest)
}

/// Lowercase hex sha256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The paths of a bundle's files, for callers that copy or pack one.
pub fn bundle_paths(bundle: &Path, manifest: &BundleManifest) -> Vec<PathBuf> {
    [&manifest.vmlinux, &manifest.bzimage, &manifest.initrd]
        .into_iter()
        .chain(manifest.config.as_ref())
        .map(|file| bundle.join(&file.path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::bzimage::tests::{fake_bzimage, fake_vmlinux, lz4_legacy};
    use crate::kernel::deb::tests::{Entry, deb_of};
    use crate::kernel::modules::tests::fake_module;

    const RELEASE: &str = "6.1.0-test-cloud-amd64";

    /// A copy of this test binary with its ELF interpreter header blanked: "static" enough
    /// for the agent check, which is all the bundle does with it.
    fn fake_static_agent(dir: &Path) -> PathBuf {
        let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let table = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
        let size = usize::from(u16::from_le_bytes([bytes[0x36], bytes[0x37]]));
        let count = usize::from(u16::from_le_bytes([bytes[0x38], bytes[0x39]]));
        for header in bytes[table..table + size * count].chunks_exact_mut(size) {
            if header[..4] == 3u32.to_le_bytes() {
                header[..4].copy_from_slice(&0u32.to_le_bytes());
            }
        }
        let path = dir.join("agent");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn module_entry(name: &str, depends: &str) -> (String, Vec<u8>) {
        (
            format!("./lib/modules/{RELEASE}/kernel/drivers/{name}.ko"),
            fake_module(&[
                &format!("name={name}"),
                &format!("depends={depends}"),
                &format!("vermagic={RELEASE} SMP mod_unload "),
            ]),
        )
    }

    /// A kernel package with an LZ4 bzImage and every module banger requires.
    fn fake_kernel_deb(
        dir: &Path,
        file: &str,
        leave_out: &str,
        payload: Option<Vec<u8>>,
    ) -> PathBuf {
        let bzimage = fake_bzimage(
            RELEASE,
            &payload.unwrap_or_else(|| lz4_legacy(&fake_vmlinux(200_000))),
        );
        let modules: Vec<(String, Vec<u8>)> = [
            ("virtio_ring", ""),
            ("virtio", "virtio_ring"),
            ("virtio_mmio", "virtio,virtio_ring"),
            ("virtio_blk", "virtio,virtio_ring"),
            ("virtio_net", "virtio_ring,virtio"),
            ("virtio_console", "virtio,virtio_ring"),
            ("vsock", ""),
            ("vmw_vsock_virtio_transport_common", "vsock"),
            (
                "vmw_vsock_virtio_transport",
                "virtio,vmw_vsock_virtio_transport_common,virtio_ring,vsock",
            ),
            ("evdev", ""),
        ]
        .into_iter()
        .filter(|(name, _)| *name != leave_out)
        .map(|(name, depends)| module_entry(name, depends))
        .collect();
        let vmlinuz = format!("./boot/vmlinuz-{RELEASE}");
        let config = format!("./boot/config-{RELEASE}");
        let mut entries = vec![
            Entry::Dir("./"),
            Entry::File(&vmlinuz, &bzimage),
            Entry::File(&config, b"CONFIG_KERNEL_LZ4=y\n"),
        ];
        for (path, bytes) in &modules {
            entries.push(Entry::File(path, bytes));
        }
        let deb = deb_of(&format!("linux-image-{RELEASE}"), "amd64", &entries);
        let path = dir.join(file);
        std::fs::write(&path, deb).unwrap();
        path
    }

    /// What a directory holds, for checking that a failure left nothing behind.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_package_becomes_a_bundle_with_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let deb = fake_kernel_deb(dir.path(), "k.deb", "", None);
        let agent = fake_static_agent(dir.path());
        let dest = dir.path().join("kernels/debian-test");
        let manifest =
            bundle_from_deb(&deb, Some("https://example.invalid/k.deb"), &agent, &dest).unwrap();
        assert_eq!(manifest, read_manifest(&dest).unwrap());
        assert_eq!(manifest.version, RELEASE);
        assert_eq!(
            manifest.modules,
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_blk",
                "virtio_net",
                "virtio_console",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
                "evdev",
            ]
        );
        assert_eq!(
            manifest.modules_missing,
            ["virtio_pci", "virtio_rng", "button"]
        );
        let vmlinux = std::fs::read(dest.join("vmlinux")).unwrap();
        assert_eq!(vmlinux, fake_vmlinux(200_000));
        assert_eq!(manifest.vmlinux.sha256, sha256_hex(&vmlinux));
        let BundleSource::DebianPackage {
            package,
            url,
            sha256,
            ..
        } = &manifest.source;
        assert_eq!(package, &format!("linux-image-{RELEASE}"));
        assert_eq!(url.as_deref(), Some("https://example.invalid/k.deb"));
        assert_eq!(sha256, &sha256_hex(&std::fs::read(&deb).unwrap()));
        let modules_dir = dest.join("lib/modules").join(RELEASE);
        assert!(modules_dir.join("kernel/drivers/virtio_mmio.ko").is_file());
        let dep = std::fs::read_to_string(modules_dir.join("modules.dep")).unwrap();
        assert!(dep.contains("kernel/drivers/virtio_mmio.ko: kernel/drivers/virtio.ko kernel/drivers/virtio_ring.ko\n"), "{dep}");
        assert_eq!(
            listing(&dest),
            [
                "config",
                "initrd.img",
                "lib",
                "manifest.json",
                "vmlinux",
                "vmlinuz"
            ]
        );
        // Only the bundle: no staging directory left beside it.
        assert_eq!(listing(dest.parent().unwrap()), ["debian-test"]);
        // A second conversion to the same place is refused, the first bundle untouched.
        let error = bundle_from_deb(&deb, None, &agent, &dest).unwrap_err();
        assert!(
            matches!(error, KernelError::AlreadyExists { .. }),
            "{error}"
        );
        assert_eq!(read_manifest(&dest).unwrap(), manifest);
    }

    #[test]
    fn a_catalog_entry_pins_the_package_it_converts() {
        let dir = tempfile::tempdir().unwrap();
        let deb = fake_kernel_deb(dir.path(), "k.deb", "", None);
        let agent = fake_static_agent(dir.path());
        let bytes = std::fs::read(&deb).unwrap();
        let entry = DebianKernelEntry {
            name: "debian-test".into(),
            package: format!("linux-image-{RELEASE}"),
            version: "6.1.0-test-1".into(),
            url: "https://snapshot.example/file/0123".into(),
            sha256: sha256_hex(&bytes),
            size_bytes: bytes.len() as u64,
            description: String::new(),
        };
        let out = dir.path().join("kernels");
        let wrong_sha = DebianKernelEntry {
            sha256: "0".repeat(64),
            ..entry.clone()
        };
        let error = bundle_from_debian_entry(&wrong_sha, &deb, &agent, &out.join("k"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("sha256"), "{error}");
        let wrong_version = DebianKernelEntry {
            version: "6.1.0-test-2".into(),
            ..entry.clone()
        };
        let error = bundle_from_debian_entry(&wrong_version, &deb, &agent, &out.join("k"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("pins"), "{error}");
        assert!(!out.exists() || listing(&out).is_empty());
        let manifest = bundle_from_debian_entry(&entry, &deb, &agent, &out.join("k")).unwrap();
        let BundleSource::DebianPackage { url, .. } = &manifest.source;
        assert_eq!(url.as_deref(), Some(entry.url.as_str()));
    }

    #[test]
    fn bad_input_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let agent = fake_static_agent(dir.path());
        let out = dir.path().join("kernels");
        std::fs::create_dir(&out).unwrap();
        let gzip_payload = vec![0x1f, 0x8b, 8, 0, 1, 2, 3, 4];
        for (deb, expected) in [
            (
                fake_kernel_deb(dir.path(), "no-blk.deb", "virtio_blk", None),
                "no module virtio_blk",
            ),
            (
                fake_kernel_deb(dir.path(), "no-ring.deb", "virtio_ring", None),
                "virtio_ring (needed by",
            ),
            (
                fake_kernel_deb(dir.path(), "gzip.deb", "", Some(gzip_payload)),
                "compressed with gzip",
            ),
            (
                {
                    let path = dir.path().join("corrupt.deb");
                    std::fs::write(&path, b"!<arch>\nnot really").unwrap();
                    path
                },
                "not a Debian package",
            ),
        ] {
            let error = bundle_from_deb(&deb, None, &agent, &out.join("k"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{expected}: {error}");
            assert!(listing(&out).is_empty(), "{expected}: {:?}", listing(&out));
        }
        let dynamic = std::env::current_exe().unwrap();
        let deb = fake_kernel_deb(dir.path(), "k.deb", "", None);
        let error = bundle_from_deb(&deb, None, &dynamic, &out.join("k"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("linked dynamically"), "{error}");
        assert!(listing(&out).is_empty());
    }
}
