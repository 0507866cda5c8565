//! `ImageBuilder`: applies layers in order and publishes the ext4 image.
//!
//! Invariants:
//! - The image is written to `partial_path(output)` and renamed to `output` (never replacing
//!   an existing file) only once complete and, unless asked otherwise, synced. The output path
//!   therefore holds either nothing or a whole image.
//! - Any error removes the partial file before it is returned, and the builder refuses further
//!   use; dropping an unfinished builder removes it too. The layer streams are only read.
//! - Each layer stream is read once, to its end (past the tar end-of-archive marker), so a
//!   caller may hash or decompress it on the way.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::{FlattenError, Refusal, escape_bytes};
use super::ext4::alloc::{BlockAllocator, BlockRange};
use super::ext4::disk::ImageFile;
use super::ext4::format::{BLOCK_SIZE_U64, BLOCKS_PER_GROUP, DESC_SIZE, time_in_range};
use super::ext4::write::{FsParams, WriteError, write_filesystem};
use super::tar::{EntryKind, TarEntry, TarError, TarReader, Timestamp};
use super::tree::{Metadata, Node, NodeId, NodeKind, ROOT, Tree};
use super::xattr::convert_xattrs;

/// How the image is sized and what it may grow to.
#[derive(Debug, Clone)]
pub struct FlattenOptions {
    /// Free space the filesystem keeps beyond its content and metadata.
    pub headroom_bytes: u64,
    /// More free space, as a percentage of the content's size.
    pub headroom_percent: u32,
    /// The largest image (headroom included) a flatten may produce; content that would make it
    /// larger is refused as soon as it is seen.
    pub max_image_bytes: u64,
    /// The most files, directories and other inodes the image may hold. It also bounds the
    /// memory a hostile layer can make the flatten use (a few hundred bytes per inode). It also bounds the
    /// memory a hostile layer can make the flatten use (a few hundred bytes per inode).
    pub max_inodes: u64,
    /// Free inodes beyond the content's; `None` gives one per 16 KiB of headroom (mke2fs's
    /// default ratio), at least 4096.
    pub spare_inodes: Option<u64>,
    /// Give the filesystem a journal, as mkfs.ext4 does by default.
    pub journal: bool,
    /// The filesystem's UUID; random when `None`.
    pub uuid: Option<[u8; 16]>,
    /// The volume label (at most 16 bytes).
    pub label: Vec<u8>,
    /// fsync the image and its directory before publishing it.
    pub sync: bool,
}

impl Default for FlattenOptions {
    fn default() -> Self {
        FlattenOptions {
            headroom_bytes: 256 << 20,
            headroom_percent: 10,
            max_image_bytes: 64 << 30,
            max_inodes: 4 << 20,
            spare_inodes: None,
            journal: true,
            uuid: None,
            label: Vec::new(),
            sync: true,
        }
    }
}

/// What one applied layer contained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerSummary {
    /// Tar entries applied (whiteouts included).
    pub entries: u64,
    /// Bytes read from the layer stream.
    pub bytes_read: u64,
}

/// The published image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub path: PathBuf,
    /// Size of the image file (the filesystem's size).
    pub size_bytes: u64,
    /// Bytes of the blocks holding the files' data (live files only).
    pub content_bytes: u64,
    pub free_bytes: u64,
    pub inodes_used: u64,
    pub inodes_total: u64,
    pub layers: usize,
}

/// What a path names in an image being built ([`ImageBuilder::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedEntry {
    /// The path with every symlink resolved, absolute in the image.
    pub path: String,
    pub kind: ResolvedKind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedKind {
    Directory,
    Regular,
    /// A device or fifo.
    Other,
}

/// Where an image is written before it is published at `output`: `output` with `.partial`
/// appended. A step recording its intent can name it, and removing it undoes a crashed build.
pub fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    output.with_file_name(name)
}

/// Applies `layers` in order (each a decompressed tar stream) and publishes the image at
/// `output`.
pub fn flatten_layers<I, R>(
    layers: I,
    output: &Path,
    options: FlattenOptions,
) -> Result<ImageSummary, FlattenError>
where
    I: IntoIterator<Item = R>,
    R: Read,
{
    let mut builder = ImageBuilder::create(output, options)?;
    for layer in layers {
        builder.apply_layer(layer)?;
    }
    builder.finish()
}

/// Builds one image: [`create`](Self::create), [`apply_layer`](Self::apply_layer) for each
/// layer, bottom first, then [`finish`](Self::finish).
pub struct ImageBuilder {
    output: PathBuf,
    partial: PathBuf,
    image: Option<ImageFile>,
    tree: Tree,
    alloc: BlockAllocator,
    options: FlattenOptions,
    layers: usize,
    released: Vec<BlockRange>,
}

/// The largest file ext4 holds with 4 KiB blocks and 32-bit logical block numbers.
const MAX_FILE_BYTES: u64 = (1u64 << 32) * BLOCK_SIZE_U64;
/// Bytes of file data read from a layer per staged write.
const CHUNK_BYTES: u64 = 1 << 20;

impl ImageBuilder {
    /// Starts an image that will be published at `output`, which must not exist.
    pub fn create(
        output: impl Into<PathBuf>,
        options: FlattenOptions,
    ) -> Result<Self, FlattenError> {
        let output = output.into();
        if output.file_name().is_none() {
            return Err(FlattenError::InvalidOptions(format!(
                "the output {} does not name a file",
                output.display()
            )));
        }
        let max_blocks = options.max_image_bytes / BLOCK_SIZE_U64;
        if max_blocks < 2048 {
            return Err(FlattenError::InvalidOptions(
                "max_image_bytes must be at least 8 MiB".into(),
            ));
        }
        if options.label.len() > 16 {
            return Err(FlattenError::InvalidOptions(
                "the label is longer than 16 bytes".into(),
            ));
        }
        // ext4's inode count is 32-bit.
        if options.max_inodes > u64::from(u32::MAX) / 2 {
            return Err(FlattenError::InvalidOptions(
                "max_inodes is too large".into(),
            ));
        }
        match fs::symlink_metadata(&output) {
            Ok(_) => return Err(FlattenError::OutputExists { path: output }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FlattenError::Io {
                    what: "checking the output path",
                    path: output,
                    source,
                });
            }
        }
        let partial = partial_path(&output);
        // A partial file left by a crashed build of the same output is ours to replace.
        match fs::remove_file(&partial) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FlattenError::Io {
                    what: "removing a stale partial image",
                    path: partial,
                    source,
                });
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&partial)
            .map_err(|source| FlattenError::Io {
                what: "creating the partial image",
                path: partial.clone(),
                source,
            })?;
        // Descriptor-table blocks kept after every backup superblock: enough for the largest
        // filesystem the options allow.
        let max_groups = max_blocks.div_ceil(BLOCKS_PER_GROUP);
        let gdt_reserve = (max_groups * DESC_SIZE as u64).div_ceil(BLOCK_SIZE_U64);
        Ok(ImageBuilder {
            output,
            partial,
            image: Some(ImageFile::new(file)),
            tree: Tree::new(Metadata::implicit_directory(Timestamp::default())),
            alloc: BlockAllocator::new(max_blocks, gdt_reserve),
            options,
            layers: 0,
            released: Vec::new(),
        })
    }

    /// Applies the next layer (a decompressed tar stream), reading it to its end.
    pub fn apply_layer(&mut self, layer: impl Read) -> Result<LayerSummary, FlattenError> {
        if self.image.is_none() {
            return Err(FlattenError::Discarded);
        }
        let index = self.layers;
        let result = self.apply(layer, index);
        if result.is_err() {
            self.discard();
        }
        self.layers += 1;
        result
    }

    fn apply(&mut self, layer: impl Read, index: usize) -> Result<LayerSummary, FlattenError> {
        let mut reader = TarReader::new(layer);
        let mut entries = 0;
        loop {
            let entry = match reader.next_entry() {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(error) => return Err(tar_error(error, index)),
            };
            entries += 1;
            self.apply_entry(&mut reader, entry, index)?;
        }
        Ok(LayerSummary {
            entries,
            bytes_read: reader.offset(),
        })
    }

    fn apply_entry<R: Read>(
        &mut self,
        reader: &mut TarReader<R>,
        entry: TarEntry,
        layer: usize,
    ) -> Result<(), FlattenError> {
        let refused = |reason: Refusal| FlattenError::Refused {
            layer,
            entry: escape_bytes(&entry.path),
            reason,
        };
        let components = path_components(&entry.path).map_err(refused)?;

        if let Some(&last) = components.last()
            && let Some(whited) = last.strip_prefix(b".wh.")
        {
            let parent = &components[..components.len() - 1];
            if last == b".wh..wh..opq" {
                let dir = self
                    .tree
                    .ensure_directory(parent, layer, entry.mtime)
                    .map_err(refused)?;
                self.tree.opaque(dir, layer, &mut self.released);
            } else if whited.starts_with(b".wh.") {
                // Other `.wh..wh.` names are AUFS bookkeeping, ignored as Docker does.
            } else {
                if whited.is_empty() || whited == b"." || whited == b".." {
                    return Err(refused(Refusal::InvalidWhiteout));
                }
                if let Some(dir) = self.tree.lookup(parent).map_err(refused)? {
                    match self.tree.node(dir).kind {
                        NodeKind::Directory(_) => {
                            self.tree.whiteout(dir, whited, layer, &mut self.released);
                        }
                        NodeKind::Symlink(_) => {
                            return Err(refused(Refusal::SymlinkParent {
                                parent: escape_bytes(&join(parent)),
                            }));
                        }
                        // Nothing can lie under a non-directory.
                        _ => {}
                    }
                }
            }
            return self.release_blocks();
        }

        let meta = Metadata {
            mode: entry.mode as u16,
            uid: u32::try_from(entry.uid).map_err(|_| refused(Refusal::IdOutOfRange(entry.uid)))?,
            gid: u32::try_from(entry.gid).map_err(|_| refused(Refusal::IdOutOfRange(entry.gid)))?,
            mtime: entry.mtime,
            xattrs: convert_xattrs(&entry.xattrs).map_err(refused)?,
        };
        if !time_in_range(entry.mtime.secs) {
            return Err(refused(Refusal::TimestampOutOfRange(entry.mtime.secs)));
        }
        let Some((&name, parent_path)) = components.split_last() else {
            if entry.kind != EntryKind::Directory {
                return Err(refused(Refusal::RootNotDirectory));
            }
            self.tree.restate_root(meta);
            return Ok(());
        };
        let parent = self
            .tree
            .ensure_directory(parent_path, layer, entry.mtime)
            .map_err(refused)?;
        self.check_inode_limit()?;
        let node = |kind| Node {
            kind,
            meta: meta.clone(),
            links: 1,
        };
        match entry.kind {
            EntryKind::Directory => {
                self.tree
                    .put_directory(parent, name, meta.clone(), layer, &mut self.released);
            }
            EntryKind::Regular => {
                if entry.size > MAX_FILE_BYTES {
                    return Err(refused(Refusal::FileTooLarge));
                }
                let blocks = self.write_file_data(reader, entry.size, layer)?;
                self.tree.put_node(
                    parent,
                    name,
                    node(NodeKind::Regular {
                        size: entry.size,
                        blocks,
                    }),
                    layer,
                    &mut self.released,
                );
            }
            EntryKind::HardLink => {
                let target_path = path_components(&entry.link_target).map_err(refused)?;
                let shown = || escape_bytes(&entry.link_target);
                if target_path.is_empty() {
                    return Err(refused(Refusal::HardlinkToRoot { target: shown() }));
                }
                let target = self
                    .tree
                    .lookup(&target_path)
                    .map_err(refused)?
                    .ok_or_else(|| refused(Refusal::HardlinkTargetMissing { target: shown() }))?;
                if matches!(self.tree.node(target).kind, NodeKind::Directory(_)) {
                    return Err(refused(Refusal::HardlinkToDirectory { target: shown() }));
                }
                self.tree
                    .put_hard_link(parent, name, target, layer, &mut self.released)
                    .map_err(refused)?;
            }
            EntryKind::Symlink => {
                let target = &entry.link_target;
                if target.is_empty() {
                    return Err(refused(Refusal::EmptySymlinkTarget));
                }
                if target.len() > 4095 {
                    return Err(refused(Refusal::SymlinkTargetTooLong));
                }
                if target.contains(&0) {
                    return Err(refused(Refusal::NulInSymlinkTarget));
                }
                self.tree.put_node(
                    parent,
                    name,
                    node(NodeKind::Symlink(target.clone().into_boxed_slice())),
                    layer,
                    &mut self.released,
                );
            }
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                let (major, minor) = (entry.dev_major, entry.dev_minor);
                if major > 0xfff || minor > 0xf_ffff {
                    return Err(refused(Refusal::DeviceNumberOutOfRange { major, minor }));
                }
                let (major, minor) = (major as u32, minor as u32);
                let kind = if entry.kind == EntryKind::CharDevice {
                    NodeKind::CharDevice { major, minor }
                } else {
                    NodeKind::BlockDevice { major, minor }
                };
                self.tree
                    .put_node(parent, name, node(kind), layer, &mut self.released);
            }
            EntryKind::Fifo => {
                self.tree.put_node(
                    parent,
                    name,
                    node(NodeKind::Fifo),
                    layer,
                    &mut self.released,
                );
            }
        }
        self.release_blocks()
    }

    fn check_inode_limit(&self) -> Result<(), FlattenError> {
        if self.tree.live_nodes() >= self.options.max_inodes {
            return Err(FlattenError::TooManyInodes {
                max_inodes: self.options.max_inodes,
            });
        }
        Ok(())
    }

    /// Allocates blocks for `size` bytes and streams the entry's data into them.
    fn write_file_data<R: Read>(
        &mut self,
        reader: &mut TarReader<R>,
        size: u64,
        layer: usize,
    ) -> Result<Vec<BlockRange>, FlattenError> {
        let blocks = self
            .alloc
            .allocate(size.div_ceil(BLOCK_SIZE_U64))
            .map_err(|_| FlattenError::TooLarge {
                max_bytes: self.options.max_image_bytes,
            })?;
        let image = self.image.as_mut().expect("builder is live");
        let mut remaining = size;
        for range in &blocks {
            let mut block = range.start;
            let end = range.start + range.len;
            while block < end && remaining > 0 {
                let bytes = remaining
                    .min((end - block) * BLOCK_SIZE_U64)
                    .min(CHUNK_BYTES);
                let buffer = image
                    .stage(block, bytes as usize)
                    .map_err(|source| io_error("writing the image", &self.partial, source))?;
                reader
                    .read_data_exact(buffer)
                    .map_err(|error| tar_error(error, layer))?;
                remaining -= bytes;
                block += bytes.div_ceil(BLOCK_SIZE_U64);
            }
        }
        Ok(blocks)
    }

    /// Zeroes and frees the data blocks of files the last entry removed.
    fn release_blocks(&mut self) -> Result<(), FlattenError> {
        let image = self.image.as_mut().expect("builder is live");
        for range in self.released.drain(..) {
            image
                .zero_blocks(range.start, range.len)
                .map_err(|source| io_error("zeroing freed blocks", &self.partial, source))?;
            self.alloc.free(range);
        }
        Ok(())
    }

    /// Writes the filesystem's metadata and publishes the image at the output path.
    pub fn finish(mut self) -> Result<ImageSummary, FlattenError> {
        let result = self.publish();
        if result.is_err() {
            self.discard();
        }
        result
    }

    fn publish(&mut self) -> Result<ImageSummary, FlattenError> {
        let mut image = self.image.take().ok_or(FlattenError::Discarded)?;
        let content_blocks = self.alloc.high_water();
        let headroom_blocks = self.options.headroom_bytes.div_ceil(BLOCK_SIZE_U64)
            + content_blocks * u64::from(self.options.headroom_percent) / 100;
        let spare_inodes = self
            .options
            .spare_inodes
            .unwrap_or_else(|| (headroom_blocks * BLOCK_SIZE_U64 / 16384).max(4096));
        let mut random = [0u8; 32];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .map_err(|source| {
                io_error(
                    "reading random bytes from",
                    Path::new("/dev/urandom"),
                    source,
                )
            })?;
        let mut uuid: [u8; 16] = random[..16].try_into().expect("16 bytes");
        uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4
        uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
        let params = FsParams {
            headroom_blocks,
            spare_inodes,
            journal: self.options.journal,
            uuid: self.options.uuid.unwrap_or(uuid),
            hash_seed: random[16..].try_into().expect("16 bytes"),
            label: self.options.label.clone(),
            now: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as u32),
        };
        let summary = write_filesystem(&mut self.tree, &mut self.alloc, &mut image, &params)
            .map_err(|error| match error {
                WriteError::OutOfSpace => FlattenError::TooLarge {
                    max_bytes: self.options.max_image_bytes,
                },
                WriteError::Io(source) => io_error("writing the image", &self.partial, source),
                WriteError::Internal(detail) => io_error(
                    "laying out the image (internal error)",
                    &self.partial,
                    io::Error::other(detail),
                ),
            })?;
        let file = image
            .into_file()
            .map_err(|source| io_error("writing the image", &self.partial, source))?;
        if self.options.sync {
            file.sync_all()
                .map_err(|source| io_error("syncing the image", &self.partial, source))?;
        }
        drop(file);
        publish_no_replace(&self.partial, &self.output)?;
        if self.options.sync
            && let Some(dir) = self.output.parent()
        {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| io_error("syncing the directory", dir, source))?;
        }
        Ok(ImageSummary {
            path: self.output.clone(),
            size_bytes: summary.blocks_count * BLOCK_SIZE_U64,
            content_bytes: summary.data_blocks * BLOCK_SIZE_U64,
            free_bytes: summary.free_blocks * BLOCK_SIZE_U64,
            inodes_used: summary.used_inodes,
            inodes_total: summary.inodes_count,
            layers: self.layers,
        })
    }

    /// What `path` (absolute, in the image) names in the image as applied so far, following
    /// symlinks inside the image as the guest's kernel would (absolute targets from the image's
    /// root, `..` never above it, at most 40 links), or `None` when it does not resolve. The
    /// boot contract's question ("is `/sbin/init` systemd?") is asked this way, after the last
    /// layer and before the agent's.
    pub fn resolve(&self, path: &str) -> Option<ResolvedEntry> {
        let mut pending: Vec<Vec<u8>> = split(path.as_bytes());
        pending.reverse();
        // The directories walked so far, root first (so `..` pops one).
        let mut walked: Vec<(NodeId, Vec<u8>)> = vec![(ROOT, Vec::new())];
        let mut links = 0;
        while let Some(name) = pending.pop() {
            if name == b"." {
                continue;
            }
            if name == b".." {
                if walked.len() > 1 {
                    walked.pop();
                }
                continue;
            }
            let dir = walked.last().expect("the root stays").0;
            let NodeKind::Directory(children) = &self.tree.node(dir).kind else {
                return None;
            };
            let entry = children.get(name.as_slice())?;
            match &self.tree.node(entry.node).kind {
                NodeKind::Symlink(target) => {
                    links += 1;
                    if links > 40 {
                        return None;
                    }
                    if target.first() == Some(&b'/') {
                        walked.truncate(1);
                    }
                    for component in split(target).into_iter().rev() {
                        pending.push(component);
                    }
                }
                _ => walked.push((entry.node, name)),
            }
        }
        let (node, _) = walked.last().expect("root");
        let node = self.tree.node(*node);
        let mut resolved = Vec::new();
        for (_, name) in &walked[1..] {
            resolved.push(b'/');
            resolved.extend_from_slice(name);
        }
        if resolved.is_empty() {
            resolved.push(b'/');
        }
        Some(ResolvedEntry {
            path: String::from_utf8_lossy(&resolved).into_owned(),
            kind: match node.kind {
                NodeKind::Directory(_) => ResolvedKind::Directory,
                NodeKind::Regular { .. } => ResolvedKind::Regular,
                _ => ResolvedKind::Other,
            },
            mode: node.meta.mode,
        })
    }

    /// Removes the partial image; the builder cannot be used afterwards.
    fn discard(&mut self) {
        self.image = None;
        let _ = fs::remove_file(&self.partial);
    }
}

impl Drop for ImageBuilder {
    fn drop(&mut self) {
        if self.image.is_some() {
            self.discard();
        }
    }
}

/// Renames `from` to `to` unless `to` exists (renameat2 with RENAME_NOREPLACE).
fn publish_no_replace(from: &Path, to: &Path) -> Result<(), FlattenError> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE).map_err(|errno| {
        if errno == nix::errno::Errno::EEXIST {
            FlattenError::OutputExists {
                path: to.to_path_buf(),
            }
        } else {
            io_error("publishing the image at", to, errno.into())
        }
    })
}

fn io_error(what: &'static str, path: &Path, source: io::Error) -> FlattenError {
    FlattenError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn tar_error(error: TarError, layer: usize) -> FlattenError {
    match error {
        TarError::Corrupt { offset, detail } => FlattenError::CorruptTar {
            layer,
            offset,
            detail,
        },
        TarError::Io { offset, source } => FlattenError::ReadLayer {
            layer,
            offset,
            source,
        },
        TarError::Refused { path, reason } => FlattenError::Refused {
            layer,
            entry: escape_bytes(&path),
            reason,
        },
    }
}

fn join(components: &[&[u8]]) -> Vec<u8> {
    let mut path = Vec::new();
    for component in components {
        path.push(b'/');
        path.extend_from_slice(component);
    }
    path
}

/// Splits a tar path into the components of a path below the image's root. Leading `/` and
/// `.` components are dropped (layers conventionally name `./etc` or `/etc` for `etc`, and
/// umoci and Docker read them so); `..` is refused outright rather than resolved, and so is
/// any name ext4 or banger's tooling cannot hold.
pub(crate) fn path_components(path: &[u8]) -> Result<Vec<&[u8]>, Refusal> {
    let mut components = Vec::new();
    let mut length = 0usize;
    for component in path.split(|&b| b == b'/') {
        if component.is_empty() || component == b"." {
            continue;
        }
        if component == b".." {
            return Err(Refusal::DotDotComponent);
        }
        if component.contains(&0) {
            return Err(Refusal::NulInName);
        }
        if component.len() > 255 {
            return Err(Refusal::NameTooLong);
        }
        if component.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(Refusal::ControlCharacterInName);
        }
        length += 1 + component.len();
        components.push(component);
    }
    // As an absolute path with its NUL, it must fit in PATH_MAX (4096).
    if length + 1 > 4096 {
        return Err(Refusal::PathTooLong);
    }
    Ok(components)
}

/// The non-empty components of a path (`/a//b/` gives `a`, `b`).
fn split(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}
