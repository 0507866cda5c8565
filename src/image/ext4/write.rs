//! Lays out and writes everything but file data, once the last layer is applied.
//!
//! File data is already on disk (written while the layers streamed in). This pass numbers the
//! inodes, renders directories, symlink blocks, extent trees and xattr blocks, creates the
//! journal, chooses the filesystem's size and group count, then writes the inode tables,
//! bitmaps, group descriptors and superblocks (primary and sparse_super backups).
//!
//! Layout: with flex_bg, bitmaps and inode tables may sit anywhere, so they are allocated
//! after the data like any other metadata; only the superblock copies and descriptor tables
//! have fixed places, kept free by the allocator from the start. The number of groups follows
//! from the size (content + metadata + headroom), which grows with the number of groups (each
//! needs bitmaps and an inode table): the loop below adds groups until they cover the size.

use std::io;

use super::alloc::{BlockAllocator, BlockRange, OutOfSpace};
use super::disk::ImageFile;
use super::format::*;
use crate::image::tar::Timestamp;
use crate::image::tree::{NodeId, NodeKind, ROOT, Tree};

/// Filesystem-wide choices made by the builder.
pub(crate) struct FsParams {
    pub headroom_blocks: u64,
    pub spare_inodes: u64,
    pub journal: bool,
    pub uuid: [u8; 16],
    pub hash_seed: [u8; 16],
    pub label: Vec<u8>,
    pub now: u32,
}

/// What was written.
#[derive(Debug, Clone)]
pub(crate) struct FsSummary {
    pub blocks_count: u64,
    pub free_blocks: u64,
    pub inodes_count: u64,
    pub used_inodes: u64,
    /// Blocks holding regular files' data.
    pub data_blocks: u64,
}

#[derive(Debug)]
pub(crate) enum WriteError {
    OutOfSpace,
    Io(io::Error),
    /// A bug: two owners for one block. Never expected; refusing beats writing a corrupt image.
    Internal(String),
}

impl From<OutOfSpace> for WriteError {
    fn from(_: OutOfSpace) -> Self {
        WriteError::OutOfSpace
    }
}

impl From<io::Error> for WriteError {
    fn from(error: io::Error) -> Self {
        WriteError::Io(error)
    }
}

/// Where one inode's pieces went.
struct InodePlan {
    node: NodeId,
    ino: u32,
    /// Data blocks in logical order (regular files, directories, slow symlinks).
    data: Vec<BlockRange>,
    tree_blocks: Vec<u64>,
    xattr_block: u64,
    inline_xattrs: Vec<Xattr>,
    block_xattrs: Vec<Xattr>,
    /// Directories: their entries' block count.
    dir_blocks: usize,
}

fn file_type(kind: &NodeKind) -> u8 {
    match kind {
        NodeKind::Directory(_) => FT_DIR,
        NodeKind::Regular { .. } => FT_REG_FILE,
        NodeKind::Symlink(_) => FT_SYMLINK,
        NodeKind::CharDevice { .. } => FT_CHRDEV,
        NodeKind::BlockDevice { .. } => FT_BLKDEV,
        NodeKind::Fifo => FT_FIFO,
    }
}

fn mode_type(kind: &NodeKind) -> u16 {
    match kind {
        NodeKind::Directory(_) => S_IFDIR,
        NodeKind::Regular { .. } => S_IFREG,
        NodeKind::Symlink(_) => S_IFLNK,
        NodeKind::CharDevice { .. } => S_IFCHR,
        NodeKind::BlockDevice { .. } => S_IFBLK,
        NodeKind::Fifo => S_IFIFO,
    }
}

/// Splits block ranges into extents of at most `MAX_EXTENT_LEN` blocks.
fn to_extents(ranges: &[BlockRange]) -> Vec<Extent> {
    let mut extents = Vec::new();
    let mut logical: u64 = 0;
    for range in ranges {
        let mut done = 0;
        while done < range.len {
            let len = (range.len - done).min(MAX_EXTENT_LEN);
            extents.push(Extent {
                logical: logical as u32,
                start: range.start + done,
                len: len as u16,
            });
            logical += len;
            done += len;
        }
    }
    extents
}

/// A block bitmap for the whole filesystem, one 4 KiB block per group.
struct Bitmap {
    bits: Vec<u8>,
}

impl Bitmap {
    fn new(bits: u64) -> Self {
        Bitmap {
            bits: vec![0u8; bits.div_ceil(8) as usize],
        }
    }

    fn set(&mut self, bit: u64) -> bool {
        let byte = &mut self.bits[(bit / 8) as usize];
        let mask = 1u8 << (bit % 8);
        let was = *byte & mask != 0;
        *byte |= mask;
        was
    }

    fn mark(&mut self, range: BlockRange, owner: &str) -> Result<(), WriteError> {
        for block in range.start..range.start + range.len {
            if self.set(block) {
                return Err(WriteError::Internal(format!(
                    "block {block} claimed twice ({owner})"
                )));
            }
        }
        Ok(())
    }
}

pub(crate) fn write_filesystem(
    tree: &mut Tree,
    alloc: &mut BlockAllocator,
    image: &mut ImageFile,
    params: &FsParams,
) -> Result<FsSummary, WriteError> {
    tree.ensure_lost_and_found();

    // Number the inodes: the root is 2, everything else from 11 on, directory by directory
    // so that a directory's entries have neighbouring inodes.
    let mut plans: Vec<InodePlan> = Vec::new();
    let mut ino_of: std::collections::HashMap<NodeId, u32> = std::collections::HashMap::new();
    let mut parent_of: std::collections::HashMap<NodeId, NodeId> = std::collections::HashMap::new();
    let new_plan = |node, ino| InodePlan {
        node,
        ino,
        data: Vec::new(),
        tree_blocks: Vec::new(),
        xattr_block: 0,
        inline_xattrs: Vec::new(),
        block_xattrs: Vec::new(),
        dir_blocks: 0,
    };
    ino_of.insert(ROOT, ROOT_INODE);
    parent_of.insert(ROOT, ROOT);
    plans.push(new_plan(ROOT, ROOT_INODE));
    let mut next_ino = FIRST_INODE;
    let mut pending = vec![ROOT];
    while let Some(dir) = pending.pop() {
        for entry in tree.children(dir).values() {
            if ino_of.contains_key(&entry.node) {
                continue;
            }
            ino_of.insert(entry.node, next_ino);
            plans.push(new_plan(entry.node, next_ino));
            next_ino += 1;
            if let NodeKind::Directory(_) = tree.node(entry.node).kind {
                parent_of.insert(entry.node, dir);
                pending.push(entry.node);
            }
        }
    }
    let used_inodes = u64::from(next_ino - 1);

    // Directory blocks, symlink blocks and xattr blocks, in inode order.
    for plan in &mut plans {
        let node = tree.node(plan.node);
        match &node.kind {
            NodeKind::Directory(children) => {
                let names = [b".".as_slice(), b"..".as_slice()]
                    .into_iter()
                    .chain(children.keys().map(|name| &**name));
                plan.dir_blocks = dir_block_count(names);
                plan.data = alloc.allocate(plan.dir_blocks as u64)?;
            }
            NodeKind::Regular { blocks, .. } => plan.data = blocks.clone(),
            NodeKind::Symlink(target) if target.len() > FAST_SYMLINK_MAX => {
                plan.data = alloc.allocate(1)?;
            }
            _ => {}
        }
        if !node.meta.xattrs.is_empty() {
            let (inline, block) = place_xattrs(&node.meta.xattrs).ok_or_else(|| {
                WriteError::Internal("xattrs checked on entry no longer fit".into())
            })?;
            plan.inline_xattrs = inline;
            if !block.is_empty() {
                plan.xattr_block = alloc.allocate(1)?[0].start;
                plan.block_xattrs = block;
            }
        }
    }
    // Extent tree blocks for inodes with more than four extents.
    for plan in &mut plans {
        let extents = to_extents(&plan.data).len();
        let needed = extent_tree_blocks(extents) as u64;
        for range in alloc.allocate(needed)? {
            plan.tree_blocks
                .extend(range.start..range.start + range.len);
        }
    }

    // The journal, sized as mke2fs would for the filesystem's expected size.
    let inodes_wanted = used_inodes + params.spare_inodes;
    let estimate = alloc.high_water() + params.headroom_blocks + inodes_wanted / 16;
    let journal = if params.journal {
        let blocks = default_journal_blocks(estimate);
        let data = alloc.allocate(blocks)?;
        let extents = to_extents(&data);
        let mut tree_blocks = Vec::new();
        for range in alloc.allocate(extent_tree_blocks(extents.len()) as u64)? {
            tree_blocks.extend(range.start..range.start + range.len);
        }
        Some((blocks, data, tree_blocks))
    } else {
        None
    };

    // Groups: enough for the size, and each with its bitmaps and inode table.
    let mut groups = (alloc.high_water() + params.headroom_blocks)
        .div_ceil(BLOCKS_PER_GROUP)
        .max(1);
    let inodes_per_group = loop {
        let per_group = inodes_wanted
            .div_ceil(groups)
            .next_multiple_of(u64::from(INODES_PER_BLOCK))
            .max(u64::from(INODES_PER_BLOCK));
        if per_group <= BLOCKS_PER_GROUP {
            break per_group;
        }
        groups += 1;
    };
    let itable_blocks = inodes_per_group / u64::from(INODES_PER_BLOCK);
    struct GroupPlacement {
        block_bitmap: u64,
        inode_bitmap: u64,
        inode_table: u64,
    }
    let mut placements: Vec<GroupPlacement> = Vec::new();
    let blocks_count = loop {
        while (placements.len() as u64) < groups {
            placements.push(GroupPlacement {
                block_bitmap: alloc.allocate(1)?[0].start,
                inode_bitmap: alloc.allocate(1)?[0].start,
                inode_table: alloc.allocate_contiguous(itable_blocks)?,
            });
        }
        let mut blocks = alloc.high_water() + params.headroom_blocks;
        let needed_groups = blocks.div_ceil(BLOCKS_PER_GROUP);
        if needed_groups > groups {
            groups = needed_groups;
            continue;
        }
        // The last group must exist and hold its reserved area (if it has one) and some room.
        let last = groups - 1;
        let mut last_group_min = 64;
        if group_has_superblock(last) {
            last_group_min += alloc.reserved_len();
        }
        blocks = blocks.max(last * BLOCKS_PER_GROUP + last_group_min);
        break blocks;
    };
    if blocks_count > alloc.limit() {
        return Err(WriteError::OutOfSpace);
    }
    let inodes_count = groups * inodes_per_group;
    if inodes_count > u64::from(u32::MAX) {
        return Err(WriteError::OutOfSpace);
    }
    let gdt_blocks = (groups * DESC_SIZE as u64).div_ceil(BLOCK_SIZE_U64);
    if gdt_blocks + 1 > alloc.reserved_len() {
        return Err(WriteError::Internal(
            "descriptor table outgrew its reserved area".into(),
        ));
    }

    let seed = checksum_seed(&params.uuid);
    let mut used = Bitmap::new(groups * BLOCKS_PER_GROUP);
    for group in (0..groups).filter(|&g| group_has_superblock(g)) {
        used.mark(
            BlockRange {
                start: group * BLOCKS_PER_GROUP,
                len: 1 + gdt_blocks,
            },
            "superblock",
        )?;
    }
    for placement in &placements {
        used.mark(
            BlockRange {
                start: placement.block_bitmap,
                len: 1,
            },
            "block bitmap",
        )?;
        used.mark(
            BlockRange {
                start: placement.inode_bitmap,
                len: 1,
            },
            "inode bitmap",
        )?;
        used.mark(
            BlockRange {
                start: placement.inode_table,
                len: itable_blocks,
            },
            "inode table",
        )?;
    }

    // Inodes: render each into its group's table, writing metadata blocks on the way.
    let mut inodes = InodeTables::new(groups, inodes_per_group, seed);

    // Reserved inodes 1..=10 are in use; the bad-blocks inode (1) gets its times as mke2fs
    // writes it, the others stay zero except the journal.
    let now = Timestamp {
        secs: i64::from(params.now),
        nanos: 0,
    };
    let empty_block = [0u8; 60];
    for ino in 1..FIRST_INODE {
        if ino == ROOT_INODE || (ino == JOURNAL_INODE && journal.is_some()) {
            continue;
        }
        inodes.mark_used(ino);
        if ino == 1 {
            inodes.put(
                ino,
                &InodeFields {
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    mtime: now,
                    links: 0,
                    blocks: 0,
                    flags: 0,
                    i_block: &empty_block,
                    xattr_block: 0,
                    inline_xattrs: &[],
                },
                false,
            );
        }
    }
    let mut journal_backup = None;
    if let Some((blocks, data, tree_blocks)) = &journal {
        for range in data {
            used.mark(*range, "journal")?;
        }
        for &block in tree_blocks {
            used.mark(
                BlockRange {
                    start: block,
                    len: 1,
                },
                "journal extent tree",
            )?;
        }
        let (i_block, written) = build_extent_tree(
            &to_extents(data),
            tree_blocks,
            inode_seed(seed, JOURNAL_INODE),
        );
        for (number, block) in written {
            image.write_blocks(number, &block)?;
        }
        image.write_blocks(
            data[0].start,
            &encode_journal_superblock(*blocks as u32, &params.uuid),
        )?;
        inodes.put(
            JOURNAL_INODE,
            &InodeFields {
                mode: S_IFREG | 0o600,
                uid: 0,
                gid: 0,
                size: blocks * BLOCK_SIZE_U64,
                mtime: now,
                links: 1,
                blocks: blocks + tree_blocks.len() as u64,
                flags: EXT4_EXTENTS_FL,
                i_block: &i_block,
                xattr_block: 0,
                inline_xattrs: &[],
            },
            false,
        );
        journal_backup = Some((i_block, blocks * BLOCK_SIZE_U64));
    }

    let mut file_data_blocks = 0u64;
    for plan in &plans {
        let node = tree.node(plan.node);
        let iseed = inode_seed(seed, plan.ino);
        for range in &plan.data {
            used.mark(*range, "data")?;
        }
        for &block in &plan.tree_blocks {
            used.mark(
                BlockRange {
                    start: block,
                    len: 1,
                },
                "extent tree",
            )?;
        }
        if plan.xattr_block != 0 {
            used.mark(
                BlockRange {
                    start: plan.xattr_block,
                    len: 1,
                },
                "xattr block",
            )?;
            image.write_blocks(
                plan.xattr_block,
                &render_xattr_block(&plan.block_xattrs, plan.xattr_block, seed),
            )?;
        }
        let extents = to_extents(&plan.data);
        let data_blocks: u64 = plan.data.iter().map(|r| r.len).sum();
        let mut i_block = [0u8; 60];
        let mut flags = 0;
        let mut size = 0u64;
        let mut links = node.links;
        match &node.kind {
            NodeKind::Directory(children) => {
                let parent_ino = ino_of[&parent_of[&plan.node]];
                let mut entries: Vec<(u32, u8, &[u8])> = Vec::with_capacity(children.len() + 2);
                entries.push((plan.ino, FT_DIR, b"."));
                entries.push((parent_ino, FT_DIR, b".."));
                let mut subdirs: u32 = 0;
                for (name, entry) in children {
                    let child = tree.node(entry.node);
                    if matches!(child.kind, NodeKind::Directory(_)) {
                        subdirs += 1;
                    }
                    entries.push((ino_of[&entry.node], file_type(&child.kind), name));
                }
                let rendered = render_dir_blocks(&entries, plan.dir_blocks, iseed);
                write_logical(image, &plan.data, &rendered)?;
                size = rendered.len() as u64;
                links = 2u32.saturating_add(subdirs);
                if links > LINK_MAX {
                    links = 1;
                }
            }
            NodeKind::Regular { size: bytes, .. } => {
                size = *bytes;
                file_data_blocks += plan.data.iter().map(|r| r.len).sum::<u64>();
            }
            NodeKind::Symlink(target) => {
                size = target.len() as u64;
                if target.len() <= FAST_SYMLINK_MAX {
                    i_block[..target.len()].copy_from_slice(target);
                } else {
                    write_logical(image, &plan.data, target)?;
                }
            }
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                encode_device(&mut i_block, *major, *minor);
            }
            NodeKind::Fifo => {}
        }
        if !plan.data.is_empty()
            || matches!(node.kind, NodeKind::Regular { .. } | NodeKind::Directory(_))
        {
            let (root, written) = build_extent_tree(&extents, &plan.tree_blocks, iseed);
            for (number, block) in written {
                image.write_blocks(number, &block)?;
            }
            i_block = root;
            flags |= EXT4_EXTENTS_FL;
        }
        let inline = if plan.inline_xattrs.is_empty() {
            Vec::new()
        } else {
            render_inline_xattrs(&plan.inline_xattrs)
        };
        let blocks = data_blocks + plan.tree_blocks.len() as u64 + u64::from(plan.xattr_block != 0);
        inodes.put(
            plan.ino,
            &InodeFields {
                mode: mode_type(&node.kind) | node.meta.mode,
                uid: node.meta.uid,
                gid: node.meta.gid,
                size,
                mtime: node.meta.mtime,
                links: links as u16,
                blocks,
                flags,
                i_block: &i_block,
                xattr_block: plan.xattr_block,
                inline_xattrs: &inline,
            },
            matches!(node.kind, NodeKind::Directory(_)),
        );
    }
    let InodeTables {
        tables,
        mut bitmaps,
        used_dirs,
        highest_local,
        ..
    } = inodes;
    let inode_bitmaps = &mut bitmaps;

    // Padding: block bits past the end of the filesystem, inode bits past inodes_per_group.
    for block in blocks_count..groups * BLOCKS_PER_GROUP {
        used.set(block);
    }
    for group in 0..groups as usize {
        let bitmap = &mut inode_bitmaps[group * BLOCK_SIZE..(group + 1) * BLOCK_SIZE];
        for bit in inodes_per_group as usize..BLOCK_SIZE * 8 {
            bitmap[bit / 8] |= 1 << (bit % 8);
        }
    }

    let mut descriptors = Vec::with_capacity((gdt_blocks as usize) * BLOCK_SIZE);
    let mut total_free_blocks = 0u64;
    let mut total_free_inodes = 0u64;
    for (group, placement) in placements.iter().enumerate().take(groups as usize) {
        let block_bitmap = &used.bits[group * BLOCK_SIZE..(group + 1) * BLOCK_SIZE];
        let group_blocks = (blocks_count - group as u64 * BLOCKS_PER_GROUP).min(BLOCKS_PER_GROUP);
        let used_blocks: u64 = block_bitmap
            .iter()
            .map(|b| u64::from(b.count_ones()))
            .sum::<u64>()
            - (BLOCKS_PER_GROUP - group_blocks);
        let free_blocks = group_blocks - used_blocks;
        let inode_bitmap = &inode_bitmaps[group * BLOCK_SIZE..(group + 1) * BLOCK_SIZE];
        let meaningful = &inode_bitmap[..(inodes_per_group / 8) as usize];
        let used_in_group: u64 = meaningful.iter().map(|b| u64::from(b.count_ones())).sum();
        let free_inodes = inodes_per_group - used_in_group;
        total_free_blocks += free_blocks;
        total_free_inodes += free_inodes;
        image.write_blocks(placement.block_bitmap, block_bitmap)?;
        image.write_blocks(placement.inode_bitmap, inode_bitmap)?;
        if let Some(table) = &tables[group] {
            image.write_blocks(placement.inode_table, table)?;
        }
        descriptors.extend_from_slice(&encode_group_descriptor(
            &GroupDescriptor {
                block_bitmap: placement.block_bitmap,
                inode_bitmap: placement.inode_bitmap,
                inode_table: placement.inode_table,
                free_blocks: free_blocks as u32,
                free_inodes: free_inodes as u32,
                used_dirs: used_dirs[group],
                itable_unused: (inodes_per_group - highest_local[group]) as u32,
                block_bitmap_csum: bitmap_checksum(seed, block_bitmap),
                inode_bitmap_csum: bitmap_checksum(seed, meaningful),
            },
            group as u32,
            seed,
        ));
    }
    descriptors.resize((gdt_blocks as usize) * BLOCK_SIZE, 0);

    let fields = SuperblockFields {
        blocks_count,
        free_blocks: total_free_blocks,
        inodes_count: inodes_count as u32,
        free_inodes: total_free_inodes as u32,
        inodes_per_group: inodes_per_group as u32,
        uuid: params.uuid,
        hash_seed: params.hash_seed,
        label: &params.label,
        now: params.now,
        journal: journal_backup,
    };
    for group in (0..groups).filter(|&g| group_has_superblock(g)) {
        let superblock = encode_superblock(&fields, group as u16);
        let mut block = vec![0u8; BLOCK_SIZE];
        if group == 0 {
            // The primary superblock sits 1024 bytes into block 0.
            block[1024..2048].copy_from_slice(&superblock);
        } else {
            block[..1024].copy_from_slice(&superblock);
        }
        image.write_blocks(group * BLOCKS_PER_GROUP, &block)?;
        image.write_blocks(group * BLOCKS_PER_GROUP + 1, &descriptors)?;
    }
    image.flush()?;
    image.file().set_len(blocks_count * BLOCK_SIZE_U64)?;

    Ok(FsSummary {
        blocks_count,
        free_blocks: total_free_blocks,
        inodes_count,
        used_inodes,
        data_blocks: file_data_blocks,
    })
}

/// The inode tables and inode bitmaps being filled, one of each per group.
struct InodeTables {
    inodes_per_group: u64,
    seed: u32,
    tables: Vec<Option<Vec<u8>>>,
    bitmaps: Vec<u8>,
    used_dirs: Vec<u32>,
    /// Per group, one past the highest inode in use (for `bg_itable_unused`).
    highest_local: Vec<u64>,
}

impl InodeTables {
    fn new(groups: u64, inodes_per_group: u64, seed: u32) -> Self {
        InodeTables {
            inodes_per_group,
            seed,
            tables: (0..groups).map(|_| None).collect(),
            bitmaps: vec![0u8; groups as usize * BLOCK_SIZE],
            used_dirs: vec![0; groups as usize],
            highest_local: vec![0; groups as usize],
        }
    }

    fn mark_used(&mut self, ino: u32) -> (usize, usize) {
        let index = u64::from(ino - 1);
        let group = (index / self.inodes_per_group) as usize;
        let local = (index % self.inodes_per_group) as usize;
        self.bitmaps[group * BLOCK_SIZE + local / 8] |= 1 << (local % 8);
        self.highest_local[group] = self.highest_local[group].max(local as u64 + 1);
        (group, local)
    }

    fn put(&mut self, ino: u32, fields: &InodeFields<'_>, is_dir: bool) {
        let (group, local) = self.mark_used(ino);
        let table_bytes = self.inodes_per_group as usize * INODE_SIZE;
        let table = self.tables[group].get_or_insert_with(|| vec![0u8; table_bytes]);
        encode_inode(
            fields,
            ino,
            self.seed,
            &mut table[local * INODE_SIZE..(local + 1) * INODE_SIZE],
        );
        if is_dir {
            self.used_dirs[group] += 1;
        }
    }
}

/// Writes `bytes` over the blocks of `ranges` in order.
fn write_logical(image: &mut ImageFile, ranges: &[BlockRange], bytes: &[u8]) -> io::Result<()> {
    let mut rest = bytes;
    for range in ranges {
        let take = rest.len().min((range.len * BLOCK_SIZE_U64) as usize);
        image.write_blocks(range.start, &rest[..take])?;
        rest = &rest[take..];
    }
    Ok(())
}

/// A device number in `i_block`: the old 16-bit form when both parts fit in a byte, else the
/// new form in the second word, as the kernel writes them.
fn encode_device(i_block: &mut [u8; 60], major: u32, minor: u32) {
    if major < 256 && minor < 256 {
        put_u32(i_block, 0, (major << 8) | minor);
    } else {
        put_u32(
            i_block,
            4,
            (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
        );
    }
}
