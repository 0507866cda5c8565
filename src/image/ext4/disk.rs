//! The image file: block writes through a write-combining buffer, holes for zeros.
//!
//! Small files are laid out one after another, so their blocks are usually contiguous: they
//! are gathered in one buffer and written with one `pwrite` per run instead of one per file.
//! All-zero blocks are not written at all: every block the writer targets reads as zero
//! already (fresh blocks lie in a never-written part of the file; freed blocks are punched out
//! before reuse), so skipping them keeps the image sparse and costs nothing.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsFd;

use nix::fcntl::{FallocateFlags, fallocate};

use super::format::{BLOCK_SIZE, BLOCK_SIZE_U64};

const STAGING_BYTES: usize = 4 << 20;

pub(crate) struct ImageFile {
    file: File,
    staging: Box<[u8]>,
    staged: usize,
    staging_block: u64,
    punch_supported: bool,
}

impl ImageFile {
    pub(crate) fn new(file: File) -> Self {
        ImageFile {
            file,
            staging: vec![0u8; STAGING_BYTES].into_boxed_slice(),
            staged: 0,
            staging_block: 0,
            punch_supported: true,
        }
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// A buffer of `len` bytes (at most the staging size) that will land at `block`; the
    /// caller fills all of it. The rest of the last block is zero.
    pub(crate) fn stage(&mut self, block: u64, len: usize) -> io::Result<&mut [u8]> {
        let padded = len.next_multiple_of(BLOCK_SIZE);
        assert!(
            padded <= STAGING_BYTES,
            "staged writes are at most the staging size"
        );
        let contiguous = self.staging_block + (self.staged / BLOCK_SIZE) as u64 == block;
        if self.staged > 0 && (!contiguous || self.staged + padded > STAGING_BYTES) {
            self.flush()?;
        }
        if self.staged == 0 {
            self.staging_block = block;
        }
        let at = self.staged;
        self.staging[at + len..at + padded].fill(0);
        self.staged += padded;
        Ok(&mut self.staging[at..at + len])
    }

    /// Writes whole or partial blocks starting at `block`.
    pub(crate) fn write_blocks(&mut self, block: u64, data: &[u8]) -> io::Result<()> {
        let mut block = block;
        for chunk in data.chunks(STAGING_BYTES) {
            self.stage(block, chunk.len())?.copy_from_slice(chunk);
            block += chunk.len().div_ceil(BLOCK_SIZE) as u64;
        }
        Ok(())
    }

    /// Writes out the staged blocks, skipping all-zero ones.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        let staged = &self.staging[..self.staged];
        let mut run_start: Option<usize> = None;
        for (index, block) in staged.chunks(BLOCK_SIZE).enumerate() {
            let zero = is_zero(block);
            match (run_start, zero) {
                (None, false) => run_start = Some(index),
                (Some(start), true) => {
                    self.write_run(start, index)?;
                    run_start = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run_start {
            self.write_run(start, self.staged / BLOCK_SIZE)?;
        }
        self.staged = 0;
        Ok(())
    }

    fn write_run(&self, first: usize, end: usize) -> io::Result<()> {
        let bytes = &self.staging[first * BLOCK_SIZE..end * BLOCK_SIZE];
        let offset = (self.staging_block + first as u64) * BLOCK_SIZE_U64;
        self.file.write_all_at(bytes, offset)
    }

    /// Zeroes blocks on disk (a hole where the filesystem allows it) so they can be reused.
    pub(crate) fn zero_blocks(&mut self, block: u64, count: u64) -> io::Result<()> {
        // Staged data may still be headed for these blocks.
        self.flush()?;
        let offset = (block * BLOCK_SIZE_U64) as i64;
        let len = (count * BLOCK_SIZE_U64) as i64;
        if self.punch_supported {
            match fallocate(
                self.file.as_fd(),
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Ok(()) => return Ok(()),
                Err(nix::errno::Errno::EOPNOTSUPP) => self.punch_supported = false,
                Err(errno) => return Err(errno.into()),
            }
        }
        let zeros = vec![0u8; BLOCK_SIZE * 256];
        let mut done = 0u64;
        while done < count * BLOCK_SIZE_U64 {
            let chunk = (count * BLOCK_SIZE_U64 - done).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..chunk], offset as u64 + done)?;
            done += chunk as u64;
        }
        Ok(())
    }

    pub(crate) fn into_file(mut self) -> io::Result<File> {
        self.flush()?;
        Ok(self.file)
    }
}

fn is_zero(block: &[u8]) -> bool {
    // A slice comparison is a memcmp: vectorized, and it stops at the first non-zero byte,
    // which for data blocks is nearly always among the first.
    static ZEROS: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];
    block == &ZEROS[..block.len()]
}
