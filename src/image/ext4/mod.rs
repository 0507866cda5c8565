//! A writer for ext4 filesystem images, in pure Rust, without root.
//!
//! The on-disk format decisions (why each feature is on) are in the parent module's docs;
//! `format` encodes the structures, `alloc` hands out blocks, `disk` writes them and `write`
//! lays out and writes the metadata once the content is known.

pub(crate) mod alloc;
pub(crate) mod disk;
pub(crate) mod format;
pub(crate) mod write;
