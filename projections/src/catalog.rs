//! Images and kernels: what is registered, where its files are, and where it came from.
//!
//! A registration replaces any earlier one of the same name (a re-pull, a promote or a
//! `--force` pull publishes a new version under the old name); a removal forgets the name.
//! The superseded `ImageRegisteredV1` layout is converted on the way in, so nothing here
//! knows old layouts. No IO: whether the files still exist is `banger doctor`'s question.

use banger_events::{ImageRegistered, KernelRegistered, Seq};
use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::Projections;

/// One registered root filesystem image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ImageView {
    pub name: String,
    pub rootfs_path: String,
    /// Kernel this image boots with by default, when it names one.
    pub kernel: Option<String>,
    pub size_bytes: u64,
    /// sha256 of the rootfs file, hex; empty when it was not computed.
    pub sha256: String,
    /// `register:<path>`, `oci:<ref>@<digest>`, `catalog:<name>`.
    pub source: String,
    pub registered_seq: Seq,
    pub registered_at_unix_ms: u64,
}

/// One registered guest kernel bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct KernelView {
    pub name: String,
    pub kernel_path: String,
    pub initrd_path: Option<String>,
    pub version: String,
    pub sha256: String,
    pub source: String,
    pub registered_seq: Seq,
    pub registered_at_unix_ms: u64,
}

impl Projections {
    pub(crate) fn image_registered(&mut self, seq: Seq, at: u64, e: &ImageRegistered) {
        self.images.insert(
            e.name.clone(),
            ImageView {
                name: e.name.clone(),
                rootfs_path: e.rootfs_path.clone(),
                kernel: e.kernel.clone(),
                size_bytes: e.size_bytes,
                sha256: e.sha256.clone(),
                source: e.source.clone(),
                registered_seq: seq,
                registered_at_unix_ms: at,
            },
        );
    }

    pub(crate) fn kernel_registered(&mut self, seq: Seq, at: u64, e: &KernelRegistered) {
        self.kernels.insert(
            e.name.clone(),
            KernelView {
                name: e.name.clone(),
                kernel_path: e.kernel_path.clone(),
                initrd_path: e.initrd_path.clone(),
                version: e.version.clone(),
                sha256: e.sha256.clone(),
                source: e.source.clone(),
                registered_seq: seq,
                registered_at_unix_ms: at,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::testkit::*;
    use banger_events::*;

    #[test]
    fn image_registered_then_replaced_then_removed() {
        let mut log = Log::new();
        let first = log.push(None, image_registered("debian"));
        let state = log.fold();
        let image = &state.images["debian"];
        assert_eq!(image.rootfs_path, "/images/debian.ext4");
        assert_eq!(image.kernel.as_deref(), Some("6.1"));
        assert_eq!(image.source, "catalog:debian");
        assert_eq!(image.registered_seq, first);
        assert_eq!(image.registered_at_unix_ms, T0 + first.0);

        let second = log.push(None, image_registered("debian"));
        assert_eq!(log.fold().images["debian"].registered_seq, second);

        log.push(
            None,
            Event::ImageRemoved(ImageRemoved {
                name: "debian".into(),
            }),
        );
        log.push(
            None,
            Event::ImageRemoved(ImageRemoved {
                name: "never".into(),
            }),
        );
        assert!(log.fold().images.is_empty());
    }

    #[test]
    fn v1_image_registrations_are_upgraded() {
        let mut log = Log::new();
        log.push(
            None,
            Event::ImageRegisteredV1(ImageRegisteredV1 {
                name: "old".into(),
                rootfs_path: "/old.ext4".into(),
                size_bytes: 7,
            }),
        );
        let state = log.fold();
        let image = &state.images["old"];
        assert_eq!(image.source, "register:/old.ext4");
        assert_eq!(image.kernel, None);
        assert_eq!(image.sha256, "");
        assert_eq!(image.size_bytes, 7);
    }

    #[test]
    fn kernel_registered_then_removed() {
        let mut log = Log::new();
        let seq = log.push(None, kernel_registered("6.1"));
        let state = log.fold();
        let kernel = &state.kernels["6.1"];
        assert_eq!(kernel.kernel_path, "/kernels/6.1/vmlinux");
        assert_eq!(kernel.initrd_path.as_deref(), Some("/kernels/6.1/initrd"));
        assert_eq!(kernel.version, "6.1");
        assert_eq!(kernel.registered_seq, seq);

        log.push(
            None,
            Event::KernelRemoved(KernelRemoved { name: "6.1".into() }),
        );
        assert!(log.fold().kernels.is_empty());
    }
}
