//! Root disks on real filesystems: loop-mounted XFS (reflink on) and Btrfs images, where a
//! root disk is a copy-on-write clone of its image, and ext4, where it is a sparse copy that
//! keeps the image's holes. Once at the level of `host::disk`, once through bangerd's
//! `vm.create` with its state directory on each filesystem.
//!
//! Needs root (loop devices and mounts); each filesystem is a sparse image file mounted under
//! a temporary directory and unmounted when the test ends.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use banger::host::disk::{CopyMethod, clone_or_copy};
use banger_test_harness::Test;

use super::firecracker::VmmKind;
use super::support::TestRoot;
use super::vm::Lab;

pub(crate) fn tests() -> Vec<Test> {
    banger_test_harness::tests![
        sync disks_are_reflinked_on_xfs_and_btrfs_and_sparse_copied_on_ext4 needs(Root),
        tokio a_vm_root_disk_shares_its_images_blocks_where_the_state_dir_can_reflink needs(Root),
        sync doctor_tells_whether_the_state_dir_can_reflink needs(Root),
    ]
}

/// A filesystem in a sparse image file, loop-mounted for the test's lifetime.
pub(crate) struct LoopFs {
    base: tempfile::TempDir,
}

impl LoopFs {
    pub(crate) fn make(kind: &'static str) -> LoopFs {
        Self::make_sized(kind, 512 << 20)
    }

    pub(crate) fn make_sized(kind: &'static str, bytes: u64) -> LoopFs {
        // Short: bangerd's socket ends up under it.
        let base = tempfile::Builder::new()
            .prefix("bfs-")
            .tempdir_in("/tmp")
            .unwrap();
        let image = base.path().join("fs.img");
        // mkfs.xfs wants at least 300 MiB; sparse, so it costs what the filesystem writes.
        fs::File::create(&image).unwrap().set_len(bytes).unwrap();
        let mkfs: &[&str] = match kind {
            "xfs" => &["mkfs.xfs", "-q", "-m", "reflink=1"],
            "btrfs" => &["mkfs.btrfs", "-q"],
            "ext4" => &["mkfs.ext4", "-q", "-F"],
            other => panic!("no filesystem {other}"),
        };
        run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&image));
        let mount = base.path().join("mnt");
        fs::create_dir(&mount).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount));
        LoopFs { base }
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.base.path().join("mnt")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mount = self.path();
        let unmounted = Command::new("umount")
            .arg(&mount)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds it: detach it now, the kernel finishes when it can.
            let _ = Command::new("umount").arg("-l").arg(&mount).status();
        }
    }
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether every extent of `path` is shared with another file (`filefrag -v` reads FIEMAP).
fn all_extents_shared(path: &Path) -> bool {
    let output = Command::new("filefrag")
        .arg("-v")
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let extents: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .filter(|l| l.contains(':'))
        .collect();
    !extents.is_empty() && extents.iter().all(|l| l.contains("shared"))
}

/// A 64 MiB file with 3 MiB of data in three places and holes elsewhere.
fn sparse_source(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let file = fs::File::create(path).unwrap();
    file.set_len(64 << 20).unwrap();
    let chunks: Vec<(u64, Vec<u8>)> = [0u64, 20 << 20, 63 << 20]
        .iter()
        .enumerate()
        .map(|(i, offset)| (*offset, vec![b'a' + i as u8; 1 << 20]))
        .collect();
    for (offset, bytes) in &chunks {
        file.write_all_at(bytes, *offset).unwrap();
    }
    file.sync_all().unwrap();
    chunks
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buffer = vec![0; len];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buffer, offset)
        .unwrap();
    buffer
}

fn disks_are_reflinked_on_xfs_and_btrfs_and_sparse_copied_on_ext4() {
    for (kind, expected) in [
        ("xfs", CopyMethod::Reflink),
        ("btrfs", CopyMethod::Reflink),
        ("ext4", CopyMethod::Sparse),
    ] {
        let filesystem = LoopFs::make(kind);
        let source = filesystem.path().join("image.ext4");
        let copy = filesystem.path().join("root.ext4");
        let chunks = sparse_source(&source);
        assert_eq!(clone_or_copy(&source, &copy).unwrap(), expected, "{kind}");
        assert_eq!(fs::metadata(&copy).unwrap().len(), 64 << 20);
        for (offset, bytes) in &chunks {
            assert_eq!(&read_at(&copy, *offset, bytes.len()), bytes, "{kind}");
        }
        // Holes stay holes either way: the copy holds its data, not 64 MiB.
        let allocated = fs::metadata(&copy).unwrap().blocks() * 512;
        assert!(allocated <= 8 << 20, "{kind}: {allocated} bytes allocated");
        match expected {
            CopyMethod::Reflink => assert!(all_extents_shared(&copy), "{kind}: not shared"),
            CopyMethod::Sparse => assert!(!all_extents_shared(&copy), "{kind}: shared?"),
        }
        // Writing the copy leaves the image as it was.
        fs::OpenOptions::new()
            .write(true)
            .open(&copy)
            .unwrap()
            .write_all_at(&[b'z'; 4096], 0)
            .unwrap();
        assert_eq!(read_at(&source, 0, 4096), vec![b'a'; 4096], "{kind}");
        assert_eq!(read_at(&copy, 0, 4096), vec![b'z'; 4096], "{kind}");
    }
}

async fn a_vm_root_disk_shares_its_images_blocks_where_the_state_dir_can_reflink() {
    for (kind, shared) in [("xfs", true), ("ext4", false)] {
        let filesystem = LoopFs::make(kind);
        let lab = Lab::on_root(TestRoot::new_in(&filesystem.path()), VmmKind::Fake, &[], "").await;
        let created = lab.create("disk").await;
        let root_disk = lab.daemon.layout().vm_root_disk(created.vm_id);
        assert!(root_disk.exists(), "{}", root_disk.display());
        assert_eq!(all_extents_shared(&root_disk), shared, "{kind}");
        drop(lab);
    }
}

/// `banger doctor`'s disk check says how root disks will be made where the state lives, and
/// fails when too little space is left there.
fn doctor_tells_whether_the_state_dir_can_reflink() {
    let disk_check = |filesystem: &LoopFs| {
        let root = TestRoot::new_in(&filesystem.path());
        let output = Command::new(env!("CARGO_BIN_EXE_banger"))
            .args(["doctor", "--json"])
            .env("BANGER_ROOT", root.path())
            .env("BANGER_NO_AUTOSTART", "1")
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "disk")
            .cloned()
            .unwrap()
    };
    for (kind, expected) in [("xfs", "reflink clones"), ("ext4", "sparse copies")] {
        // Sparse images: the space is only used as the filesystem writes.
        let disk = disk_check(&LoopFs::make_sized(kind, 4 << 30));
        assert_eq!(disk["status"], "ok", "{kind}: {disk}");
        assert!(
            disk["summary"].as_str().unwrap().contains(expected),
            "{kind}: {disk}"
        );
    }
    let small = disk_check(&LoopFs::make("xfs"));
    assert_eq!(small["status"], "fail", "{small}");
    assert!(
        small["summary"].as_str().unwrap().contains("under 2 GiB"),
        "{small}"
    );
    assert!(small["fix"].as_str().unwrap().contains("image cache prune"));
}
