//! ext4's on-disk structures, encoded into byte buffers, and their checksums.
//!
//! Only what the writer needs: every field not set here is zero, as mke2fs leaves it. Offsets
//! follow the kernel's `fs/ext4/ext4.h` (superblock, group descriptor, inode), `ext4_extents.h`,
//! `xattr.h` and `include/linux/jbd2.h`. All ext4 fields are little-endian; jbd2's are big-endian.

use crate::image::tar::Timestamp;

pub(crate) const BLOCK_SIZE: usize = 4096;
pub(crate) const BLOCK_SIZE_U64: u64 = BLOCK_SIZE as u64;
pub(crate) const LOG_BLOCK_SIZE: u32 = 2; // 1024 << 2
pub(crate) const BLOCKS_PER_GROUP: u64 = 8 * BLOCK_SIZE_U64;
pub(crate) const INODE_SIZE: usize = 256;
/// Bytes of the inode past the 128-byte base that the writer fills (up to `i_projid`).
pub(crate) const EXTRA_ISIZE: u16 = 32;
pub(crate) const INODES_PER_BLOCK: u32 = (BLOCK_SIZE / INODE_SIZE) as u32;
pub(crate) const DESC_SIZE: usize = 64;
pub(crate) const FIRST_INODE: u32 = 11;
pub(crate) const ROOT_INODE: u32 = 2;
pub(crate) const JOURNAL_INODE: u32 = 8;
/// ext4's largest link count; a directory with more subdirectories records 1 (dir_nlink).
pub(crate) const LINK_MAX: u32 = 65000;
/// Longest initialized extent (32768 blocks, 128 MiB).
pub(crate) const MAX_EXTENT_LEN: u64 = 32768;
/// Extent entries in a tree block: (4096 - 12-byte header) / 12, leaving 4 bytes for the tail.
pub(crate) const EXTENTS_PER_BLOCK: usize = (BLOCK_SIZE - 12) / 12;
/// Extent entries in the inode's `i_block` (60 bytes).
pub(crate) const EXTENTS_IN_INODE: usize = 4;
/// A symlink target shorter than this is stored in `i_block` (a "fast" symlink).
pub(crate) const FAST_SYMLINK_MAX: usize = 59;
/// Bytes of a directory block available to entries: the last 12 hold the checksum tail.
pub(crate) const DIR_BLOCK_PAYLOAD: usize = BLOCK_SIZE - 12;
/// In-inode extended attribute space: after the base inode and its extra fields.
pub(crate) const INODE_XATTR_OFFSET: usize = 128 + EXTRA_ISIZE as usize;
pub(crate) const INODE_XATTR_SPACE: usize = INODE_SIZE - INODE_XATTR_OFFSET;
pub(crate) const XATTR_MAGIC: u32 = 0xEA02_0000;
pub(crate) const XATTR_BLOCK_HEADER: usize = 32;

pub(crate) const S_IFIFO: u16 = 0o010000;
pub(crate) const S_IFCHR: u16 = 0o020000;
pub(crate) const S_IFDIR: u16 = 0o040000;
pub(crate) const S_IFBLK: u16 = 0o060000;
pub(crate) const S_IFREG: u16 = 0o100000;
pub(crate) const S_IFLNK: u16 = 0o120000;

pub(crate) const FT_REG_FILE: u8 = 1;
pub(crate) const FT_DIR: u8 = 2;
pub(crate) const FT_CHRDEV: u8 = 3;
pub(crate) const FT_BLKDEV: u8 = 4;
pub(crate) const FT_FIFO: u8 = 5;
pub(crate) const FT_SYMLINK: u8 = 7;

pub(crate) const EXT4_EXTENTS_FL: u32 = 0x0008_0000;

const COMPAT_HAS_JOURNAL: u32 = 0x0004;
const COMPAT_EXT_ATTR: u32 = 0x0008;
const COMPAT_DIR_INDEX: u32 = 0x0020;
const INCOMPAT_FILETYPE: u32 = 0x0002;
const INCOMPAT_EXTENTS: u32 = 0x0040;
const INCOMPAT_64BIT: u32 = 0x0080;
const INCOMPAT_FLEX_BG: u32 = 0x0200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
const RO_COMPAT_LARGE_FILE: u32 = 0x0002;
const RO_COMPAT_HUGE_FILE: u32 = 0x0008;
const RO_COMPAT_DIR_NLINK: u32 = 0x0020;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x0040;
const RO_COMPAT_METADATA_CSUM: u32 = 0x0400;

const BG_INODE_ZEROED: u16 = 0x0004;

pub(crate) fn put_u16(buf: &mut [u8], offset: usize, value: u16) {
    buf[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u32(buf: &mut [u8], offset: usize, value: u32) {
    buf[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_be32(buf: &mut [u8], offset: usize, value: u32) {
    buf[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
}

fn lo32(value: u64) -> u32 {
    value as u32
}

fn hi32(value: u64) -> u32 {
    (value >> 32) as u32
}

/// The kernel's `ext4_chksum`: a raw CRC32C update, with neither the initial nor the final
/// inversion of the standard CRC32C (the crate applies both, so undo them).
pub(crate) fn crc32c_update(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// Whether `group` holds a backup superblock and descriptor table (sparse_super: 0, 1 and
/// powers of 3, 5 and 7).
pub(crate) fn group_has_superblock(group: u64) -> bool {
    if group <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut power = base;
        while power < group {
            power *= base;
        }
        power == group
    })
}

/// A timestamp in ext4's split form: the low 32 seconds bits, and the "extra" word holding two
/// epoch bits (seconds 2^32 and 2^33 past the signed 32-bit range) and the nanoseconds.
pub(crate) fn encode_time(time: Timestamp) -> (u32, u32) {
    let low = time.secs as i32;
    let epoch = ((time.secs - i64::from(low)) >> 32) as u32 & 3;
    (low as u32, epoch | (time.nanos << 2))
}

/// The range of seconds ext4 timestamps with extra epoch bits can hold.
pub(crate) fn time_in_range(secs: i64) -> bool {
    (i64::from(i32::MIN)..=i64::from(i32::MAX) + (3i64 << 32)).contains(&secs)
}

/// Everything the superblock says about the filesystem as a whole.
pub(crate) struct SuperblockFields<'a> {
    pub blocks_count: u64,
    pub free_blocks: u64,
    pub inodes_count: u32,
    pub free_inodes: u32,
    pub inodes_per_group: u32,
    pub uuid: [u8; 16],
    pub hash_seed: [u8; 16],
    pub label: &'a [u8],
    pub now: u32,
    /// The journal inode's `i_block` and size, kept as a backup in the superblock.
    pub journal: Option<([u8; 60], u64)>,
}

/// The 1024-byte superblock as stored in `group` (its copies differ only in
/// `s_block_group_nr` and the checksum).
pub(crate) fn encode_superblock(fields: &SuperblockFields<'_>, group: u16) -> [u8; 1024] {
    let mut sb = [0u8; 1024];
    put_u32(&mut sb, 0x00, fields.inodes_count);
    put_u32(&mut sb, 0x04, lo32(fields.blocks_count));
    put_u32(&mut sb, 0x0C, lo32(fields.free_blocks));
    put_u32(&mut sb, 0x10, fields.free_inodes);
    put_u32(&mut sb, 0x14, 0); // s_first_data_block: 0 with 4 KiB blocks
    put_u32(&mut sb, 0x18, LOG_BLOCK_SIZE);
    put_u32(&mut sb, 0x1C, LOG_BLOCK_SIZE); // s_log_cluster_size (no bigalloc)
    put_u32(&mut sb, 0x20, BLOCKS_PER_GROUP as u32);
    put_u32(&mut sb, 0x24, BLOCKS_PER_GROUP as u32);
    put_u32(&mut sb, 0x28, fields.inodes_per_group);
    put_u32(&mut sb, 0x30, fields.now); // s_wtime
    put_u16(&mut sb, 0x36, 0xFFFF); // s_max_mnt_count: -1, no forced checks
    put_u16(&mut sb, 0x38, 0xEF53);
    put_u16(&mut sb, 0x3A, 1); // s_state: clean
    put_u16(&mut sb, 0x3C, 1); // s_errors: continue
    put_u32(&mut sb, 0x40, fields.now); // s_lastcheck
    put_u32(&mut sb, 0x4C, 1); // s_rev_level: dynamic
    put_u32(&mut sb, 0x54, FIRST_INODE);
    put_u16(&mut sb, 0x58, INODE_SIZE as u16);
    put_u16(&mut sb, 0x5A, group);
    let mut compat = COMPAT_EXT_ATTR | COMPAT_DIR_INDEX;
    if fields.journal.is_some() {
        compat |= COMPAT_HAS_JOURNAL;
    }
    put_u32(&mut sb, 0x5C, compat);
    put_u32(
        &mut sb,
        0x60,
        INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG,
    );
    put_u32(
        &mut sb,
        0x64,
        RO_COMPAT_SPARSE_SUPER
            | RO_COMPAT_LARGE_FILE
            | RO_COMPAT_HUGE_FILE
            | RO_COMPAT_DIR_NLINK
            | RO_COMPAT_EXTRA_ISIZE
            | RO_COMPAT_METADATA_CSUM,
    );
    sb[0x68..0x78].copy_from_slice(&fields.uuid);
    let label = &fields.label[..fields.label.len().min(16)];
    sb[0x78..0x78 + label.len()].copy_from_slice(label);
    if let Some((i_block, size)) = &fields.journal {
        put_u32(&mut sb, 0xE0, JOURNAL_INODE);
        sb[0xFD] = 1; // s_jnl_backup_type: EXT3_JNL_BACKUP_BLOCKS
        sb[0x10C..0x10C + 60].copy_from_slice(i_block);
        put_u32(&mut sb, 0x10C + 60, hi32(*size));
        put_u32(&mut sb, 0x10C + 64, lo32(*size));
    }
    sb[0xEC..0xFC].copy_from_slice(&fields.hash_seed);
    sb[0xFC] = 1; // s_def_hash_version: half_md4, as mke2fs
    put_u16(&mut sb, 0xFE, DESC_SIZE as u16);
    put_u32(&mut sb, 0x100, 0x000C); // s_default_mount_opts: user_xattr, acl
    put_u32(&mut sb, 0x108, fields.now); // s_mkfs_time
    put_u32(&mut sb, 0x150, hi32(fields.blocks_count));
    put_u32(&mut sb, 0x158, hi32(fields.free_blocks));
    put_u16(&mut sb, 0x15C, EXTRA_ISIZE); // s_min_extra_isize
    put_u16(&mut sb, 0x15E, EXTRA_ISIZE); // s_want_extra_isize
    put_u32(&mut sb, 0x160, 0x0001); // s_flags: signed directory hash, as mke2fs on x86
    sb[0x174] = 4; // s_log_groups_per_flex: 16, mke2fs's default
    sb[0x175] = 1; // s_checksum_type: crc32c
    let checksum = crc32c_update(!0, &sb[..0x3FC]);
    put_u32(&mut sb, 0x3FC, checksum);
    sb
}

/// The checksum seed every metadata checksum starts from: crc32c of the filesystem UUID.
pub(crate) fn checksum_seed(uuid: &[u8; 16]) -> u32 {
    crc32c_update(!0, uuid)
}

/// One block group's descriptor fields.
pub(crate) struct GroupDescriptor {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub free_blocks: u32,
    pub free_inodes: u32,
    pub used_dirs: u32,
    pub itable_unused: u32,
    pub block_bitmap_csum: u32,
    pub inode_bitmap_csum: u32,
}

pub(crate) fn encode_group_descriptor(
    desc: &GroupDescriptor,
    group: u32,
    seed: u32,
) -> [u8; DESC_SIZE] {
    let mut d = [0u8; DESC_SIZE];
    put_u32(&mut d, 0x00, lo32(desc.block_bitmap));
    put_u32(&mut d, 0x04, lo32(desc.inode_bitmap));
    put_u32(&mut d, 0x08, lo32(desc.inode_table));
    put_u16(&mut d, 0x0C, desc.free_blocks as u16);
    put_u16(&mut d, 0x0E, desc.free_inodes as u16);
    put_u16(&mut d, 0x10, desc.used_dirs as u16);
    put_u16(&mut d, 0x12, BG_INODE_ZEROED);
    put_u16(&mut d, 0x18, desc.block_bitmap_csum as u16);
    put_u16(&mut d, 0x1A, desc.inode_bitmap_csum as u16);
    put_u16(&mut d, 0x1C, desc.itable_unused as u16);
    put_u32(&mut d, 0x20, hi32(desc.block_bitmap));
    put_u32(&mut d, 0x24, hi32(desc.inode_bitmap));
    put_u32(&mut d, 0x28, hi32(desc.inode_table));
    put_u16(&mut d, 0x2C, (desc.free_blocks >> 16) as u16);
    put_u16(&mut d, 0x2E, (desc.free_inodes >> 16) as u16);
    put_u16(&mut d, 0x30, (desc.used_dirs >> 16) as u16);
    put_u16(&mut d, 0x32, (desc.itable_unused >> 16) as u16);
    put_u16(&mut d, 0x38, (desc.block_bitmap_csum >> 16) as u16);
    put_u16(&mut d, 0x3A, (desc.inode_bitmap_csum >> 16) as u16);
    // bg_checksum: the low 16 bits of crc32c(seed, group number, descriptor with the checksum
    // field zeroed), which it already is here.
    let crc = crc32c_update(crc32c_update(seed, &group.to_le_bytes()), &d);
    put_u16(&mut d, 0x1E, crc as u16);
    d
}

/// Everything that goes into one inode.
pub(crate) struct InodeFields<'a> {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Timestamp,
    pub links: u16,
    /// Blocks the inode owns (data, extent tree, xattr block), in 4 KiB units.
    pub blocks: u64,
    pub flags: u32,
    pub i_block: &'a [u8; 60],
    pub xattr_block: u64,
    /// The in-inode extended attribute area (`INODE_XATTR_SPACE` bytes) or empty.
    pub inline_xattrs: &'a [u8],
}

/// Writes one inode into `out` (`INODE_SIZE` bytes), checksum included.
pub(crate) fn encode_inode(fields: &InodeFields<'_>, ino: u32, seed: u32, out: &mut [u8]) {
    debug_assert_eq!(out.len(), INODE_SIZE);
    out.fill(0);
    let (time, time_extra) = encode_time(fields.mtime);
    let sectors = fields.blocks * (BLOCK_SIZE_U64 / 512);
    put_u16(out, 0x00, fields.mode);
    put_u16(out, 0x02, fields.uid as u16);
    put_u32(out, 0x04, lo32(fields.size));
    // atime, ctime and crtime are all the entry's mtime: an image is a reproducible artifact,
    // and a layer carries no meaningful ctime.
    put_u32(out, 0x08, time);
    put_u32(out, 0x0C, time);
    put_u32(out, 0x10, time);
    put_u16(out, 0x18, fields.gid as u16);
    put_u16(out, 0x1A, fields.links);
    put_u32(out, 0x1C, lo32(sectors));
    put_u32(out, 0x20, fields.flags);
    out[0x28..0x28 + 60].copy_from_slice(fields.i_block);
    put_u32(out, 0x68, lo32(fields.xattr_block));
    put_u32(out, 0x6C, hi32(fields.size));
    put_u16(out, 0x74, (sectors >> 32) as u16);
    put_u16(out, 0x76, (fields.xattr_block >> 32) as u16);
    put_u16(out, 0x78, (fields.uid >> 16) as u16);
    put_u16(out, 0x7A, (fields.gid >> 16) as u16);
    put_u16(out, 0x80, EXTRA_ISIZE);
    put_u32(out, 0x84, time_extra); // ctime
    put_u32(out, 0x88, time_extra); // mtime
    put_u32(out, 0x8C, time_extra); // atime
    put_u32(out, 0x90, time); // crtime
    put_u32(out, 0x94, time_extra);
    if !fields.inline_xattrs.is_empty() {
        out[INODE_XATTR_OFFSET..].copy_from_slice(fields.inline_xattrs);
    }
    // The checksum covers the whole inode with both checksum fields zero (they are), seeded
    // with the inode number and generation (0).
    let crc = crc32c_update(inode_seed(seed, ino), out);
    put_u16(out, 0x7C, crc as u16);
    put_u16(out, 0x82, (crc >> 16) as u16);
}

/// The per-inode checksum seed used by the inode, its extent blocks and its directory blocks.
pub(crate) fn inode_seed(seed: u32, ino: u32) -> u32 {
    crc32c_update(crc32c_update(seed, &ino.to_le_bytes()), &0u32.to_le_bytes())
}

/// A run of physical blocks holding logical blocks `logical..logical + len` of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub logical: u32,
    pub start: u64,
    pub len: u16,
}

fn put_extent_header(buf: &mut [u8], entries: usize, max: usize, depth: u16) {
    put_u16(buf, 0, 0xF30A);
    put_u16(buf, 2, entries as u16);
    put_u16(buf, 4, max as u16);
    put_u16(buf, 6, depth);
}

fn put_leaf(buf: &mut [u8], extent: &Extent) {
    put_u32(buf, 0, extent.logical);
    put_u16(buf, 4, extent.len);
    put_u16(buf, 6, (extent.start >> 32) as u16);
    put_u32(buf, 8, lo32(extent.start));
}

fn put_index(buf: &mut [u8], logical: u32, child: u64) {
    put_u32(buf, 0, logical);
    put_u32(buf, 4, lo32(child));
    put_u16(buf, 8, (child >> 32) as u16);
}

/// Extent tree blocks to write: (block number, contents).
pub(crate) type TreeBlocks = Vec<(u64, Box<[u8]>)>;

/// How many tree blocks an extent list needs beyond the inode's own four slots.
pub(crate) fn extent_tree_blocks(extent_count: usize) -> usize {
    let mut blocks = 0;
    let mut entries = extent_count;
    while entries > EXTENTS_IN_INODE {
        let level = entries.div_ceil(EXTENTS_PER_BLOCK);
        blocks += level;
        entries = level;
    }
    blocks
}

/// Builds an inode's extent tree. `tree_blocks` (exactly `extent_tree_blocks(extents.len())`
/// of them) receive the leaf and index blocks; returns the inode's `i_block` and the blocks'
/// contents, each with its checksum tail.
pub(crate) fn build_extent_tree(
    extents: &[Extent],
    tree_blocks: &[u64],
    inode_seed: u32,
) -> ([u8; 60], TreeBlocks) {
    let mut i_block = [0u8; 60];
    if extents.len() <= EXTENTS_IN_INODE {
        put_extent_header(&mut i_block, extents.len(), EXTENTS_IN_INODE, 0);
        for (i, extent) in extents.iter().enumerate() {
            put_leaf(&mut i_block[12 + 12 * i..], extent);
        }
        return (i_block, Vec::new());
    }
    let mut written = Vec::new();
    let mut free_blocks = tree_blocks.iter().copied();
    // (first logical block, block number) of each node of the level just built.
    let mut level: Vec<(u32, u64)> = Vec::new();
    for chunk in extents.chunks(EXTENTS_PER_BLOCK) {
        let number = free_blocks.next().expect("enough extent tree blocks");
        let mut block = vec![0u8; BLOCK_SIZE].into_boxed_slice();
        put_extent_header(&mut block, chunk.len(), EXTENTS_PER_BLOCK, 0);
        for (i, extent) in chunk.iter().enumerate() {
            put_leaf(&mut block[12 + 12 * i..], extent);
        }
        finish_extent_block(&mut block, inode_seed);
        level.push((chunk[0].logical, number));
        written.push((number, block));
    }
    let mut depth = 1u16;
    while level.len() > EXTENTS_IN_INODE {
        let mut next = Vec::new();
        for chunk in level.chunks(EXTENTS_PER_BLOCK) {
            let number = free_blocks.next().expect("enough extent tree blocks");
            let mut block = vec![0u8; BLOCK_SIZE].into_boxed_slice();
            put_extent_header(&mut block, chunk.len(), EXTENTS_PER_BLOCK, depth);
            for (i, &(logical, child)) in chunk.iter().enumerate() {
                put_index(&mut block[12 + 12 * i..], logical, child);
            }
            finish_extent_block(&mut block, inode_seed);
            next.push((chunk[0].0, number));
            written.push((number, block));
        }
        level = next;
        depth += 1;
    }
    put_extent_header(&mut i_block, level.len(), EXTENTS_IN_INODE, depth);
    for (i, &(logical, child)) in level.iter().enumerate() {
        put_index(&mut i_block[12 + 12 * i..], logical, child);
    }
    debug_assert!(free_blocks.next().is_none());
    (i_block, written)
}

fn finish_extent_block(block: &mut [u8], inode_seed: u32) {
    let tail = 12 + 12 * EXTENTS_PER_BLOCK;
    let crc = crc32c_update(inode_seed, &block[..tail]);
    put_u32(block, tail, crc);
}

/// Record length of a directory entry with a name of `name_len` bytes.
pub(crate) fn dirent_len(name_len: usize) -> usize {
    (8 + name_len).next_multiple_of(4)
}

/// Packs directory entries into blocks: `(inode, file type, name)`, the first two being `.`
/// and `..`. Each block's last entry stretches to the checksum tail, written by
/// [`finish_dir_block`].
pub(crate) fn dir_block_count<'a>(names: impl Iterator<Item = &'a [u8]>) -> usize {
    let mut blocks = 1;
    let mut used = 0;
    for name in names {
        let len = dirent_len(name.len());
        if used + len > DIR_BLOCK_PAYLOAD {
            blocks += 1;
            used = 0;
        }
        used += len;
    }
    blocks
}

/// Renders a directory's blocks; must agree with [`dir_block_count`].
pub(crate) fn render_dir_blocks(
    entries: &[(u32, u8, &[u8])],
    block_count: usize,
    inode_seed: u32,
) -> Vec<u8> {
    let mut out = vec![0u8; block_count * BLOCK_SIZE];
    let mut block = 0;
    let mut used = 0;
    let mut last_in_block: Option<usize> = None;
    for &(ino, file_type, name) in entries {
        let len = dirent_len(name.len());
        if used + len > DIR_BLOCK_PAYLOAD {
            stretch_last(&mut out, block, last_in_block, used);
            block += 1;
            used = 0;
        }
        let at = block * BLOCK_SIZE + used;
        put_u32(&mut out, at, ino);
        put_u16(&mut out, at + 4, len as u16);
        out[at + 6] = name.len() as u8;
        out[at + 7] = file_type;
        out[at + 8..at + 8 + name.len()].copy_from_slice(name);
        last_in_block = Some(at);
        used += len;
    }
    stretch_last(&mut out, block, last_in_block, used);
    debug_assert_eq!(block + 1, block_count);
    for chunk in out.chunks_mut(BLOCK_SIZE) {
        finish_dir_block(chunk, inode_seed);
    }
    out
}

fn stretch_last(out: &mut [u8], block: usize, last: Option<usize>, used: usize) {
    if let Some(at) = last {
        let rec_len = u16::from_le_bytes([out[at + 4], out[at + 5]]) as usize;
        put_u16(out, at + 4, (rec_len + DIR_BLOCK_PAYLOAD - used) as u16);
    } else {
        // An empty block (never produced: every block gets at least one entry).
        let at = block * BLOCK_SIZE;
        put_u16(out, at + 4, DIR_BLOCK_PAYLOAD as u16);
    }
}

/// Writes the 12-byte checksum tail (a fake entry: inode 0, rec_len 12, type 0xDE).
fn finish_dir_block(block: &mut [u8], inode_seed: u32) {
    let tail = DIR_BLOCK_PAYLOAD;
    put_u32(block, tail, 0);
    put_u16(block, tail + 4, 12);
    block[tail + 6] = 0;
    block[tail + 7] = 0xDE;
    let crc = crc32c_update(inode_seed, &block[..tail]);
    put_u32(block, tail + 8, crc);
}

/// One extended attribute as ext4 stores it: a name index (the namespace) and the rest of the
/// name, and the value in its on-disk form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Xattr {
    pub index: u8,
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Size of an xattr entry descriptor with its name, rounded to 4 bytes.
pub(crate) fn xattr_entry_len(name_len: usize) -> usize {
    (16 + name_len).next_multiple_of(4)
}

fn xattr_value_len(value_len: usize) -> usize {
    value_len.next_multiple_of(4)
}

/// The kernel's `ext4_xattr_hash_entry` (with unsigned name bytes, the fixed variant).
fn xattr_entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut hash: u32 = 0;
    for &byte in name {
        hash = (hash << 5) ^ (hash >> 27) ^ u32::from(byte);
    }
    for chunk in value.chunks(4) {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = (hash << 16) ^ (hash >> 16) ^ u32::from_le_bytes(word);
    }
    hash
}

/// Bytes the xattrs take in the in-inode area (4-byte magic, entries, 4-byte end, values).
pub(crate) fn inline_xattr_size(xattrs: &[Xattr]) -> usize {
    4 + 4
        + xattrs
            .iter()
            .map(|x| xattr_entry_len(x.name.len()) + xattr_value_len(x.value.len()))
            .sum::<usize>()
}

/// Bytes the xattrs take in an xattr block (header, entries, 4-byte end, values).
pub(crate) fn block_xattr_size(xattrs: &[Xattr]) -> usize {
    XATTR_BLOCK_HEADER
        + 4
        + xattrs
            .iter()
            .map(|x| xattr_entry_len(x.name.len()) + xattr_value_len(x.value.len()))
            .sum::<usize>()
}

/// Splits an inode's xattrs (sorted) between the inode and an xattr block: as many as fit go in
/// the inode, in order, the rest in the block. `None` when they do not fit in both.
pub(crate) fn place_xattrs(xattrs: &[Xattr]) -> Option<(Vec<Xattr>, Vec<Xattr>)> {
    let mut inline = Vec::new();
    let mut block = Vec::new();
    for xattr in xattrs {
        let mut candidate = inline.clone();
        candidate.push(xattr.clone());
        if block.is_empty() && inline_xattr_size(&candidate) <= INODE_XATTR_SPACE {
            inline = candidate;
        } else {
            block.push(xattr.clone());
        }
    }
    (block_xattr_size(&block) <= BLOCK_SIZE).then_some((inline, block))
}

/// The in-inode xattr area (`INODE_XATTR_SPACE` bytes): magic, entries from the front, values
/// packed at the end; value offsets count from the first entry.
pub(crate) fn render_inline_xattrs(xattrs: &[Xattr]) -> Vec<u8> {
    let mut area = vec![0u8; INODE_XATTR_SPACE];
    put_u32(&mut area, 0, XATTR_MAGIC);
    let entries_base = 4;
    let mut entry_at = entries_base;
    let mut value_end = INODE_XATTR_SPACE;
    for xattr in xattrs {
        value_end -= xattr_value_len(xattr.value.len());
        area[value_end..value_end + xattr.value.len()].copy_from_slice(&xattr.value);
        put_xattr_entry(
            &mut area[entry_at..],
            xattr,
            (value_end - entries_base) as u16,
        );
        entry_at += xattr_entry_len(xattr.name.len());
    }
    area
}

fn put_xattr_entry(buf: &mut [u8], xattr: &Xattr, value_offset: u16) {
    buf[0] = xattr.name.len() as u8;
    buf[1] = xattr.index;
    put_u16(
        buf,
        2,
        if xattr.value.is_empty() {
            0
        } else {
            value_offset
        },
    );
    put_u32(buf, 4, 0); // e_value_inum
    put_u32(buf, 8, xattr.value.len() as u32);
    put_u32(buf, 12, xattr_entry_hash(&xattr.name, &xattr.value));
    buf[16..16 + xattr.name.len()].copy_from_slice(&xattr.name);
}

/// An xattr block at `block_number` for one inode (refcount 1). Entries must be sorted by
/// (index, name length, name): the kernel's lookup in a block stops at the first larger one.
pub(crate) fn render_xattr_block(xattrs: &[Xattr], block_number: u64, seed: u32) -> Vec<u8> {
    let mut sorted = xattrs.to_vec();
    sorted.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    let mut block = vec![0u8; BLOCK_SIZE];
    put_u32(&mut block, 0, XATTR_MAGIC);
    put_u32(&mut block, 4, 1); // h_refcount
    put_u32(&mut block, 8, 1); // h_blocks
    let mut entry_at = XATTR_BLOCK_HEADER;
    let mut value_end = BLOCK_SIZE;
    let mut block_hash: u32 = 0;
    for xattr in &sorted {
        value_end -= xattr_value_len(xattr.value.len());
        block[value_end..value_end + xattr.value.len()].copy_from_slice(&xattr.value);
        put_xattr_entry(&mut block[entry_at..], xattr, value_end as u16);
        let entry_hash = xattr_entry_hash(&xattr.name, &xattr.value);
        block_hash = (block_hash << 16) ^ (block_hash >> 16) ^ entry_hash;
        entry_at += xattr_entry_len(xattr.name.len());
    }
    put_u32(&mut block, 12, block_hash);
    let crc = crc32c_update(crc32c_update(seed, &block_number.to_le_bytes()), &block);
    put_u32(&mut block, 16, crc);
    block
}

/// The journal's superblock (jbd2 v2, big-endian), as mke2fs 1.47 writes it: empty
/// (`s_start` 0, nothing to replay), no optional features; the kernel turns on the features
/// the filesystem needs (64-bit block numbers, checksums) at the first mount.
pub(crate) fn encode_journal_superblock(journal_blocks: u32, uuid: &[u8; 16]) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK_SIZE];
    put_be32(&mut block, 0x00, 0xC03B_3998); // h_magic
    put_be32(&mut block, 0x04, 4); // h_blocktype: superblock v2
    put_be32(&mut block, 0x0C, BLOCK_SIZE as u32);
    put_be32(&mut block, 0x10, journal_blocks); // s_maxlen
    put_be32(&mut block, 0x14, 1); // s_first
    put_be32(&mut block, 0x18, 1); // s_sequence
    block[0x30..0x40].copy_from_slice(uuid);
    put_be32(&mut block, 0x40, 1); // s_nr_users
    block[0x100..0x110].copy_from_slice(uuid); // s_users[0]
    block
}

/// mke2fs's default journal size for a filesystem of `blocks` 4 KiB blocks
/// (`ext2fs_default_journal_size`).
pub(crate) fn default_journal_blocks(blocks: u64) -> u64 {
    match blocks {
        0..32768 => 1024,
        32768..262144 => 4096,
        262144..524288 => 8192,
        524288..4194304 => 16384,
        4194304..8388608 => 32768,
        8388608..16777216 => 65536,
        16777216..33554432 => 131072,
        _ => 262144,
    }
}

/// A bitmap block's checksum (block bitmaps cover a whole block, inode bitmaps
/// `inodes_per_group / 8` bytes).
pub(crate) fn bitmap_checksum(seed: u32, bitmap: &[u8]) -> u32 {
    crc32c_update(seed, bitmap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_groups() {
        let groups: Vec<u64> = (0..100).filter(|&g| group_has_superblock(g)).collect();
        assert_eq!(groups, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }

    #[test]
    fn raw_crc32c_matches_the_kernel_convention() {
        // ext4_chksum(~0, "123456789") is the standard CRC32C before its final inversion.
        assert_eq!(crc32c_update(!0, b"123456789"), !0xE306_9283);
    }

    #[test]
    fn times_round_trip_through_the_epoch_bits() {
        let (low, extra) = encode_time(Timestamp { secs: -1, nanos: 5 });
        assert_eq!((low, extra), (u32::MAX, 5 << 2));
        let (low, extra) = encode_time(Timestamp {
            secs: 1 << 32,
            nanos: 0,
        });
        assert_eq!((low, extra), (0, 1));
    }

    #[test]
    fn extent_tree_sizes() {
        assert_eq!(extent_tree_blocks(4), 0);
        assert_eq!(extent_tree_blocks(5), 1);
        assert_eq!(extent_tree_blocks(340 * 4), 4);
        assert_eq!(extent_tree_blocks(340 * 4 + 1), 6);
    }
}
