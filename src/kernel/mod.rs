//! Kernel bundles: what banger boots a guest with, and how one is made from Debian's cloud
//! kernel package.
//!
//! A bundle is a directory (published atomically; `docs/ARCHITECTURE.md` has the layout):
//!
//! ```text
//!  <bundle>/manifest.json       format, release, arch, source (package, version, URL, sha256),
//!                               sha256 and size of each file, the module load order
//!  <bundle>/vmlinux             the uncompressed ELF kernel (Firecracker boots this)
//!  <bundle>/vmlinuz             the bzImage it came from (QEMU boots either)
//!  <bundle>/initrd.img          newc cpio, uncompressed: the agent as /init + the modules
//!  <bundle>/config              the kernel's build configuration
//!  <bundle>/lib/modules/<release>/{kernel/…/*.ko, modules.dep, modules.order}
//! ```
//!
//! - [`deb`]: reads a `linux-image-*` .deb (ar → xz/zstd tar) in memory, refusing traversal,
//!   absolute paths and escaping links anywhere in it.
//! - [`bzimage`]: the ELF vmlinux out of the bzImage's LZ4 (legacy frame) payload.
//! - [`modules`]: which modules a microVM needs ([`modules::MICROVM_MODULES`]), their
//!   dependencies from `.modinfo`, the load order and `modules.dep`.
//! - [`cpio`] and [`initrd`]: the initrd, whose `/init` is the static banger agent (see
//!   `banger_agent::boot` for the boot contract it implements).
//! - [`bundle`]: [`bundle_from_deb`], the whole conversion, [`bundle_from_debian_entry`] (the
//!   same for a pinned catalog entry, checking the download's sha256 and identity first:
//!   what `kernel pull` calls), and the [`BundleManifest`].
//! - [`tarball`]: a bundle as a content-addressed zstd tarball and its catalog entry.
//! - [`catalog`]: the kernel catalog `kernel pull` reads (embedded JSON, a user file,
//!   mirrors), with its two kinds of entries: Debian packages and bundle tarballs.
//! - [`fetch`]: one HTTP download, streamed to a file with its size and sha256 checked.
//!
//! The kernel needs a VMM that describes virtio-mmio devices through ACPI, because Debian's
//! cloud kernel has no `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`: Firecracker 1.8 or newer, or
//! QEMU's `microvm` machine with `acpi=on` ([`FIRECRACKER_MIN_VERSION`]).
//!
//! Invariants: nothing here runs another program (no dpkg, tar, lz4 or cpio), and nothing
//! here appends to the log (`operations::kernel_pull` does); bad input (a
//! corrupt or hostile package, an unknown payload, a missing module, an agent that is not
//! static) is an error that names what was wrong and leaves nothing behind: a bundle is
//! built in a temporary directory beside its destination and renamed into place only when
//! complete.

pub mod bundle;
pub mod bzimage;
pub mod catalog;
pub mod cpio;
pub mod deb;
pub mod fetch;
pub mod initrd;
pub mod modules;
pub mod tarball;

use std::io;
use std::path::{Path, PathBuf};

pub use bundle::{
    BundleFile, BundleManifest, BundleSource, DebianKernelEntry, MANIFEST_FILE, bundle_from_deb,
    bundle_from_debian_entry, read_manifest,
};
pub use catalog::{Catalog, CatalogKernel, DEFAULT_KERNEL, Mirrors};
pub use tarball::{CatalogEntry, PackedBundle, catalog_entry, pack_bundle, unpack_bundle};

/// The oldest Firecracker that can boot these bundles: 1.8 describes virtio-mmio devices
/// through ACPI, the only way the cloud kernel finds them.
pub const FIRECRACKER_MIN_VERSION: &str = "1.8.0";

/// Everything that can go wrong making or reading a kernel bundle.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a Debian package: {reason}", path.display())]
    NotADebianPackage { path: PathBuf, reason: String },
    #[error("{} is not a kernel package banger can use: {reason}", path.display())]
    NotAKernelPackage { path: PathBuf, reason: String },
    #[error("the package's entry {entry:?} is refused: {reason}")]
    UnsafeEntry { entry: String, reason: String },
    #[error("the kernel image: {0}")]
    KernelImage(String),
    #[error("module {module}: {reason}")]
    Module { module: String, reason: String },
    #[error(
        "the package has no module {module}{}, which a banger guest needs (nor is it built in)",
        needed_by.as_ref().map(|m| format!(" (needed by {m})")).unwrap_or_default()
    )]
    MissingModule {
        module: String,
        needed_by: Option<String>,
    },
    #[error("the agent {}: {reason}", path.display())]
    Agent { path: PathBuf, reason: String },
    #[error(
        "{}: its sha256 is {actual}, but the catalog pins {expected}: a corrupt or \
         substituted download",
        path.display()
    )]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{} already exists; remove it first", path.display())]
    AlreadyExists { path: PathBuf },
    #[error("the bundle {}: {reason}", path.display())]
    Bundle { path: PathBuf, reason: String },
    #[error("the kernel catalog {origin}: {reason}")]
    Catalog { origin: String, reason: String },
    #[error("downloading {url}: {reason}")]
    Download { url: String, reason: String },
}

impl KernelError {
    pub(crate) fn io(path: &Path, source: io::Error) -> KernelError {
        KernelError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
