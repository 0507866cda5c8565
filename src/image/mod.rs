//! OCI layers flattened into an ext4 root filesystem image, written directly, without root.
//!
//! [`flatten_layers`] (or [`ImageBuilder`] for one layer at a time) reads each layer's
//! decompressed tar stream once, in order, bottom layer first, and writes an ext4 image that
//! keeps exactly what the layers say: owners (any 32-bit uid and gid), modes with setuid,
//! setgid and sticky bits, symlinks, hard links (one inode, its link count), character and
//! block devices, fifos, extended attributes (`SCHILY.xattr.*`, `security.capability`
//! included, POSIX ACLs converted to ext4's form) and mtimes (to the nanosecond). Whiteouts
//! and opaque directories follow the OCI image spec (see `tree`). No mount, no loop device, no
//! user namespace and no privilege is needed: the filesystem is encoded byte by byte.
//!
//! # How it works
//!
//! One pass over the layers. Each regular file's data goes straight from the tar stream into
//! blocks allocated for it in the image file; everything else (the tree, owners, xattrs) is
//! kept in memory. A file that a later layer deletes or replaces gives its blocks back (they
//! are zeroed with a hole punch and reused). When the last layer is in, `ext4::write` numbers
//! the inodes, writes directories, extent trees, xattr blocks, the journal, inode tables,
//! bitmaps, descriptors and superblocks, and chooses the size: content plus metadata plus the
//! configured headroom. The file is then synced and renamed into place.
//!
//! # The filesystem
//!
//! 4 KiB blocks, 32768 blocks per group, 256-byte inodes with 32 bytes of extra fields. The
//! features are those mkfs.ext4 1.47 turns on by default, less `resize_inode`:
//!
//! | feature | why |
//! | --- | --- |
//! | `extents`, `huge_file`, `large_file` | files of any size; a file with more than four extents gets an extent tree (index and leaf blocks) |
//! | `filetype` | directory entries carry the entry's type |
//! | `dir_nlink` | a directory with more than 65000 subdirectories records a link count of 1 |
//! | `extra_isize` | nanosecond timestamps, dates past 2038, the creation time, in-inode xattrs |
//! | `ext_attr` | xattrs: in the inode's 96 spare bytes while they fit, else in one xattr block per inode |
//! | `sparse_super` | superblock copies only in groups 0, 1 and powers of 3, 5 and 7 |
//! | `flex_bg` | bitmaps and inode tables may sit anywhere, so they are placed after the data once the size is known |
//! | `64bit` | 64-byte group descriptors, as mkfs.ext4 makes them; no size limit below 16 TiB |
//! | `metadata_csum` | crc32c over the superblock, descriptors, bitmaps, inodes, extent blocks, directory blocks and xattr blocks: the guest kernel and e2fsck catch corruption |
//! | `has_journal` | a kill -9 of a VM leaves a root filesystem the kernel recovers by itself; the journal is as large as mkfs.ext4 would make it, empty, and costs no bytes on the host (it reads as zeros) |
//! | `dir_index` | on, so the guest kernel builds hashed indexes as directories grow; the image's own directories are linear (valid at any size: lookups scan them) |
//!
//! Left out: `resize_inode` (no reserved descriptor blocks for online growth: growing an
//! image's copy is done offline by resize2fs, which moves what it needs), `uninit_bg`
//! (meaningless with metadata_csum), `inline_data`, `huge` xattr values (`ea_inode`),
//! `orphan_file` and `metadata_csum_seed` (newer than some tools), htree directories (optional
//! in the format). The root is owned 0:0 with mode 0755 unless a layer restates it;
//! `/lost+found` is created (mode 0700) when no layer provides it, as mke2fs does.

pub mod agent;
pub mod builder;
pub mod bundle;
pub mod catalog;
pub mod error;
pub(crate) mod ext4;
pub(crate) mod tar;
pub(crate) mod tree;
pub(crate) mod xattr;

#[cfg(test)]
mod tests;

pub use builder::{
    FlattenOptions, ImageBuilder, ImageSummary, LayerSummary, ResolvedEntry, ResolvedKind,
    flatten_layers, partial_path,
};
pub use error::{FlattenError, Refusal};
