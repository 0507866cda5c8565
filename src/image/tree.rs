//! The image's file tree in memory, and the rules by which a layer changes it.
//!
//! Nodes are inodes (hard links share one); a directory maps names to entries, and each entry
//! remembers the layer that put it there. That stamp is what makes whiteouts follow the OCI
//! image spec: a whiteout or an opaque marker hides what *lower* layers put at a path, never
//! what its own layer put there, whatever order the layer lists them in.
//!
//! Rules (`ImageBuilder` applies them entry by entry):
//! - A path is walked from the root without following symlinks: a symlink where a parent
//!   directory should be is refused (`SymlinkParent`), a missing parent directory is created
//!   (mode 0755, owner 0:0) and stamped with the layer, any other non-directory parent is
//!   refused (`ParentNotDirectory`).
//! - A directory entry over an existing directory restates it (mode, owner, mtime, xattrs)
//!   and merges; any other entry first removes what is at its path (a whole subtree if a
//!   directory), as extraction by Docker, containerd and umoci does.
//! - A hard link adds a name to an existing non-directory inode, found by walking its target
//!   path the same way; the node's link count follows every name added and removed, and its
//!   data blocks are released when the last name goes.
//! - A whiteout `.wh.NAME` removes whatever lower layers put under NAME; an opaque marker
//!   `.wh..wh..opq` does that for every child of its directory. Entries the same layer added
//!   survive, and so do the directories holding them.

use std::collections::BTreeMap;

use super::error::{Refusal, escape_bytes};
use super::ext4::alloc::BlockRange;
use super::ext4::format::{LINK_MAX, Xattr};
use super::tar::Timestamp;

pub(crate) type NodeId = usize;
pub(crate) const ROOT: NodeId = 0;

#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// In ext4's form, sorted by (index, name).
    pub xattrs: Vec<Xattr>,
}

impl Metadata {
    /// What a directory created only to hold an entry gets.
    pub(crate) fn implicit_directory(mtime: Timestamp) -> Self {
        Metadata {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub(crate) enum NodeKind {
    Directory(BTreeMap<Box<[u8]>, DirEntry>),
    Regular { size: u64, blocks: Vec<BlockRange> },
    Symlink(Box<[u8]>),
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub kind: NodeKind,
    pub meta: Metadata,
    /// Names that refer to this node (directories: 1, their `.`/`..` are counted at layout).
    pub links: u32,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct DirEntry {
    pub node: NodeId,
    /// The layer that created this entry, or last restated it (directories).
    pub layer: usize,
}

pub(crate) struct Tree {
    nodes: Vec<Option<Node>>,
    free_slots: Vec<NodeId>,
    live: u64,
}

fn join(components: &[&[u8]]) -> String {
    let mut path = Vec::new();
    for component in components {
        path.push(b'/');
        path.extend_from_slice(component);
    }
    if path.is_empty() {
        path.push(b'/');
    }
    escape_bytes(&path)
}

impl Tree {
    pub(crate) fn new(root: Metadata) -> Self {
        Tree {
            nodes: vec![Some(Node {
                kind: NodeKind::Directory(BTreeMap::new()),
                meta: root,
                links: 1,
            })],
            free_slots: Vec::new(),
            live: 1,
        }
    }

    /// Nodes alive (reachable from the root).
    pub(crate) fn live_nodes(&self) -> u64 {
        self.live
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        self.nodes[id].as_ref().expect("live node")
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes[id].as_mut().expect("live node")
    }

    pub(crate) fn children(&self, dir: NodeId) -> &BTreeMap<Box<[u8]>, DirEntry> {
        match &self.node(dir).kind {
            NodeKind::Directory(children) => children,
            _ => panic!("children of a non-directory"),
        }
    }

    fn children_mut(&mut self, dir: NodeId) -> &mut BTreeMap<Box<[u8]>, DirEntry> {
        match &mut self.node_mut(dir).kind {
            NodeKind::Directory(children) => children,
            _ => panic!("children of a non-directory"),
        }
    }

    fn is_dir(&self, id: NodeId) -> bool {
        matches!(self.node(id).kind, NodeKind::Directory(_))
    }

    pub(crate) fn add_node(&mut self, node: Node) -> NodeId {
        self.live += 1;
        match self.free_slots.pop() {
            Some(id) => {
                self.nodes[id] = Some(node);
                id
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        }
    }

    /// Walks `components` (a parent path), creating missing directories for `layer`.
    pub(crate) fn ensure_directory(
        &mut self,
        components: &[&[u8]],
        layer: usize,
        mtime: Timestamp,
    ) -> Result<NodeId, Refusal> {
        let mut dir = ROOT;
        for (depth, &name) in components.iter().enumerate() {
            match self.children(dir).get(name).copied() {
                Some(entry) => match &self.node(entry.node).kind {
                    NodeKind::Directory(_) => dir = entry.node,
                    NodeKind::Symlink(_) => {
                        return Err(Refusal::SymlinkParent {
                            parent: join(&components[..=depth]),
                        });
                    }
                    _ => {
                        return Err(Refusal::ParentNotDirectory {
                            parent: join(&components[..=depth]),
                        });
                    }
                },
                None => {
                    let child = self.add_node(Node {
                        kind: NodeKind::Directory(BTreeMap::new()),
                        meta: Metadata::implicit_directory(mtime),
                        links: 1,
                    });
                    self.children_mut(dir)
                        .insert(name.into(), DirEntry { node: child, layer });
                    dir = child;
                }
            }
        }
        Ok(dir)
    }

    /// Walks `components` without creating anything; `None` where the path does not exist or a
    /// parent is not a directory. A symlink parent is refused.
    pub(crate) fn lookup(&self, components: &[&[u8]]) -> Result<Option<NodeId>, Refusal> {
        let mut current = ROOT;
        for (depth, &name) in components.iter().enumerate() {
            match &self.node(current).kind {
                NodeKind::Directory(children) => match children.get(name) {
                    Some(entry) => current = entry.node,
                    None => return Ok(None),
                },
                NodeKind::Symlink(_) => {
                    return Err(Refusal::SymlinkParent {
                        parent: join(&components[..depth]),
                    });
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// Restates the root directory's metadata.
    pub(crate) fn restate_root(&mut self, meta: Metadata) {
        self.node_mut(ROOT).meta = meta;
    }

    /// Puts a directory at `parent/name`: restates an existing directory, replaces anything else.
    pub(crate) fn put_directory(
        &mut self,
        parent: NodeId,
        name: &[u8],
        meta: Metadata,
        layer: usize,
        released: &mut Vec<BlockRange>,
    ) {
        if let Some(entry) = self.children(parent).get(name).copied()
            && self.is_dir(entry.node)
        {
            self.node_mut(entry.node).meta = meta;
            self.children_mut(parent)
                .get_mut(name)
                .expect("entry just found")
                .layer = layer;
            return;
        }
        let node = self.add_node(Node {
            kind: NodeKind::Directory(BTreeMap::new()),
            meta,
            links: 1,
        });
        self.put_entry(parent, name, node, layer, released);
    }

    /// Puts a new non-directory node at `parent/name`, replacing what was there.
    pub(crate) fn put_node(
        &mut self,
        parent: NodeId,
        name: &[u8],
        node: Node,
        layer: usize,
        released: &mut Vec<BlockRange>,
    ) {
        let id = self.add_node(node);
        self.put_entry(parent, name, id, layer, released);
    }

    /// Adds the name `parent/name` to the existing non-directory `target`.
    pub(crate) fn put_hard_link(
        &mut self,
        parent: NodeId,
        name: &[u8],
        target: NodeId,
        layer: usize,
        released: &mut Vec<BlockRange>,
    ) -> Result<(), Refusal> {
        if let Some(entry) = self.children(parent).get(name)
            && entry.node == target
        {
            // A link to itself: nothing changes.
            return Ok(());
        }
        let node = self.node_mut(target);
        if node.links >= LINK_MAX {
            return Err(Refusal::TooManyLinks);
        }
        // Count the new name before the old entry goes, so the target cannot be released
        // in between.
        node.links += 1;
        if let Some(old) = self.children_mut(parent).remove(name) {
            self.release_entry(old.node, released);
        }
        self.children_mut(parent).insert(
            name.into(),
            DirEntry {
                node: target,
                layer,
            },
        );
        Ok(())
    }

    fn put_entry(
        &mut self,
        parent: NodeId,
        name: &[u8],
        node: NodeId,
        layer: usize,
        released: &mut Vec<BlockRange>,
    ) {
        let old = self
            .children_mut(parent)
            .insert(name.into(), DirEntry { node, layer });
        if let Some(old) = old {
            self.release_entry(old.node, released);
        }
    }

    /// Drops one name of `node`; a directory goes with its whole subtree, any other node when
    /// its last name goes (its data blocks are appended to `released`).
    fn release_entry(&mut self, node: NodeId, released: &mut Vec<BlockRange>) {
        let mut pending = vec![node];
        while let Some(id) = pending.pop() {
            let current = self.node_mut(id);
            current.links -= 1;
            if current.links > 0 {
                continue;
            }
            let node = self.nodes[id].take().expect("live node");
            self.free_slots.push(id);
            self.live -= 1;
            match node.kind {
                NodeKind::Directory(children) => {
                    pending.extend(children.values().map(|entry| entry.node));
                }
                NodeKind::Regular { blocks, .. } => released.extend(blocks),
                _ => {}
            }
        }
    }

    /// A whiteout in `layer` for `parent/name`: removes what lower layers put there.
    pub(crate) fn whiteout(
        &mut self,
        parent: NodeId,
        name: &[u8],
        layer: usize,
        released: &mut Vec<BlockRange>,
    ) {
        let Some(entry) = self.children(parent).get(name).copied() else {
            return;
        };
        if self.is_dir(entry.node) {
            self.opaque(entry.node, layer, released);
            if entry.layer < layer && self.children(entry.node).is_empty() {
                self.remove(parent, name, released);
            }
        } else if entry.layer < layer {
            self.remove(parent, name, released);
        }
    }

    /// An opaque marker in `layer` for `dir`: removes every child lower layers put there.
    pub(crate) fn opaque(&mut self, dir: NodeId, layer: usize, released: &mut Vec<BlockRange>) {
        let names: Vec<Box<[u8]>> = self.children(dir).keys().cloned().collect();
        for name in names {
            self.whiteout(dir, &name, layer, released);
        }
    }

    fn remove(&mut self, parent: NodeId, name: &[u8], released: &mut Vec<BlockRange>) {
        if let Some(entry) = self.children_mut(parent).remove(name) {
            self.release_entry(entry.node, released);
        }
    }

    /// Ensures `/lost+found` exists (e2fsck and mke2fs expect one), unless a layer put
    /// something else under that name.
    pub(crate) fn ensure_lost_and_found(&mut self) {
        if self.children(ROOT).contains_key(b"lost+found".as_slice()) {
            return;
        }
        let mtime = self.node(ROOT).meta.mtime;
        let node = self.add_node(Node {
            kind: NodeKind::Directory(BTreeMap::new()),
            meta: Metadata {
                mode: 0o700,
                ..Metadata::implicit_directory(mtime)
            },
            links: 1,
        });
        self.children_mut(ROOT).insert(
            b"lost+found".as_slice().into(),
            DirEntry {
                node,
                layer: usize::MAX,
            },
        );
    }
}
