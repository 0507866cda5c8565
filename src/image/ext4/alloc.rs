//! The block allocator used while layers stream in and while metadata is laid out.
//!
//! Blocks are handed out before the filesystem's final size is known, so the allocator never
//! uses a block that a superblock or descriptor-table copy may need: with sparse_super, groups
//! 0, 1 and the powers of 3, 5 and 7 start with one superblock block followed by
//! `gdt_reserve` blocks, enough descriptor-table blocks for the largest filesystem the
//! options allow. Whatever part of that reserve the final table does not use stays free.
//!
//! Invariants:
//! - Every block at or above `next_fresh` has never been handed out (and never written).
//! - Freed ranges (`free_*`) lie below `next_fresh`, never overlap and are coalesced; the
//!   caller has zeroed them on disk (punched), so a freed block reads as zero.
//! - Nothing is handed out at or past `limit` (the maximum image size).

use std::collections::{BTreeMap, BTreeSet};

use super::format::{BLOCKS_PER_GROUP, group_has_superblock};

/// A run of physical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockRange {
    pub start: u64,
    pub len: u64,
}

/// The request does not fit under the maximum image size.
#[derive(Debug)]
pub(crate) struct OutOfSpace;

#[derive(Debug, Clone)]
pub(crate) struct BlockAllocator {
    next_fresh: u64,
    limit: u64,
    gdt_reserve: u64,
    free_by_start: BTreeMap<u64, u64>,
    free_by_len: BTreeSet<(u64, u64)>,
}

impl BlockAllocator {
    pub(crate) fn new(limit_blocks: u64, gdt_reserve: u64) -> Self {
        let mut allocator = BlockAllocator {
            next_fresh: 0,
            limit: limit_blocks,
            gdt_reserve,
            free_by_start: BTreeMap::new(),
            free_by_len: BTreeSet::new(),
        };
        allocator.skip_reserved();
        allocator
    }

    /// First block past everything ever handed out.
    pub(crate) fn high_water(&self) -> u64 {
        self.next_fresh
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Blocks at the start of a backup group kept for the superblock and descriptor table.
    pub(crate) fn reserved_len(&self) -> u64 {
        1 + self.gdt_reserve
    }

    fn skip_reserved(&mut self) {
        let group = self.next_fresh / BLOCKS_PER_GROUP;
        let reserved_end = group * BLOCKS_PER_GROUP + self.reserved_len();
        if group_has_superblock(group) && self.next_fresh < reserved_end {
            self.next_fresh = reserved_end;
        }
    }

    /// End of the fresh run starting at `next_fresh`: the next group holding a backup.
    fn fresh_run_end(&self) -> u64 {
        let mut group = self.next_fresh / BLOCKS_PER_GROUP + 1;
        while !group_has_superblock(group) {
            group += 1;
        }
        group * BLOCKS_PER_GROUP
    }

    /// `count` blocks, as few runs as practical: one freed range that holds them all (the
    /// smallest such), else fresh blocks, else (near the limit) several freed ranges.
    pub(crate) fn allocate(&mut self, count: u64) -> Result<Vec<BlockRange>, OutOfSpace> {
        if count == 0 {
            return Ok(Vec::new());
        }
        if let Some(range) = self.take_free_fit(count) {
            return Ok(vec![range]);
        }
        if self.fresh_available() >= count {
            return Ok(self.take_fresh(count));
        }
        let free_total: u64 = self.free_by_start.values().sum();
        if free_total + self.fresh_available() < count {
            return Err(OutOfSpace);
        }
        let mut ranges = Vec::new();
        let mut left = count;
        while left > 0 {
            let Some(&(len, start)) = self.free_by_len.iter().next_back() else {
                break;
            };
            let take = len.min(left);
            self.remove_free(start, len);
            if take < len {
                self.insert_free(start + take, len - take);
            }
            ranges.push(BlockRange { start, len: take });
            left -= take;
        }
        if left > 0 {
            ranges.extend(self.take_fresh(left));
        }
        Ok(ranges)
    }

    /// `count` contiguous blocks (inode tables, the journal).
    pub(crate) fn allocate_contiguous(&mut self, count: u64) -> Result<u64, OutOfSpace> {
        if let Some(range) = self.take_free_fit(count) {
            return Ok(range.start);
        }
        loop {
            let run_end = self.fresh_run_end();
            if self.next_fresh + count <= run_end {
                if self.next_fresh + count > self.limit {
                    return Err(OutOfSpace);
                }
                let start = self.next_fresh;
                self.next_fresh += count;
                self.skip_reserved();
                return Ok(start);
            }
            // Leave the rest of this run free and start after the next reserved area.
            let skipped = BlockRange {
                start: self.next_fresh,
                len: run_end - self.next_fresh,
            };
            if run_end + self.reserved_len() > self.limit {
                return Err(OutOfSpace);
            }
            self.next_fresh = run_end;
            self.skip_reserved();
            if skipped.len > 0 {
                self.insert_free(skipped.start, skipped.len);
            }
        }
    }

    /// Returns blocks to the allocator. The caller has zeroed them on disk.
    pub(crate) fn free(&mut self, range: BlockRange) {
        if range.len == 0 {
            return;
        }
        let mut start = range.start;
        let mut len = range.len;
        if let Some((&prev_start, &prev_len)) = self.free_by_start.range(..start).next_back()
            && prev_start + prev_len == start
        {
            self.remove_free(prev_start, prev_len);
            start = prev_start;
            len += prev_len;
        }
        if let Some(&next_len) = self.free_by_start.get(&(start + len)) {
            self.remove_free(start + len, next_len);
            len += next_len;
        }
        self.insert_free(start, len);
    }

    fn fresh_available(&self) -> u64 {
        // Conservative: fresh blocks up to the limit, minus the reserved areas in between.
        let mut available = 0;
        let mut cursor = self.next_fresh;
        while cursor < self.limit {
            let group = cursor / BLOCKS_PER_GROUP;
            let group_end = ((group + 1) * BLOCKS_PER_GROUP).min(self.limit);
            let reserved_end = group * BLOCKS_PER_GROUP + self.reserved_len();
            if group_has_superblock(group) && cursor < reserved_end {
                cursor = reserved_end.min(group_end);
            }
            available += group_end.saturating_sub(cursor);
            cursor = group_end;
        }
        available
    }

    fn take_fresh(&mut self, count: u64) -> Vec<BlockRange> {
        let mut ranges: Vec<BlockRange> = Vec::new();
        let mut left = count;
        while left > 0 {
            let take = left.min(self.fresh_run_end() - self.next_fresh);
            match ranges.last_mut() {
                Some(last) if last.start + last.len == self.next_fresh => last.len += take,
                _ => ranges.push(BlockRange {
                    start: self.next_fresh,
                    len: take,
                }),
            }
            self.next_fresh += take;
            left -= take;
            self.skip_reserved();
        }
        ranges
    }

    fn take_free_fit(&mut self, count: u64) -> Option<BlockRange> {
        let &(len, start) = self.free_by_len.range((count, 0)..).next()?;
        self.remove_free(start, len);
        if len > count {
            self.insert_free(start + count, len - count);
        }
        Some(BlockRange { start, len: count })
    }

    fn insert_free(&mut self, start: u64, len: u64) {
        self.free_by_start.insert(start, len);
        self.free_by_len.insert((len, start));
    }

    fn remove_free(&mut self, start: u64, len: u64) {
        self.free_by_start.remove(&start);
        self.free_by_len.remove(&(len, start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_allocations_skip_backup_areas() {
        let mut allocator = BlockAllocator::new(10 * BLOCKS_PER_GROUP, 7);
        assert_eq!(allocator.high_water(), 8);
        let ranges = allocator.allocate(BLOCKS_PER_GROUP).unwrap();
        assert_eq!(
            ranges,
            vec![
                BlockRange {
                    start: 8,
                    len: BLOCKS_PER_GROUP - 8
                },
                BlockRange {
                    start: BLOCKS_PER_GROUP + 8,
                    len: 8
                }
            ]
        );
        // Group 2 has no backup: the run goes on to the end of group 2, then resumes after
        // group 3's reserved area.
        let ranges = allocator.allocate(2 * BLOCKS_PER_GROUP).unwrap();
        assert_eq!(ranges[0].start, BLOCKS_PER_GROUP + 16);
        assert_eq!(ranges[0].len, 2 * BLOCKS_PER_GROUP - 16);
        assert_eq!(ranges[1].start, 3 * BLOCKS_PER_GROUP + 8);
    }

    #[test]
    fn freed_ranges_coalesce_and_are_reused_best_fit() {
        let mut allocator = BlockAllocator::new(BLOCKS_PER_GROUP, 0);
        let a = allocator.allocate(10).unwrap()[0];
        let b = allocator.allocate(5).unwrap()[0];
        let _c = allocator.allocate(3).unwrap()[0];
        allocator.free(a);
        allocator.free(b);
        assert_eq!(
            allocator.allocate(15).unwrap(),
            vec![BlockRange {
                start: a.start,
                len: 15
            }]
        );
    }

    #[test]
    fn the_limit_is_enforced() {
        let mut allocator = BlockAllocator::new(100, 0);
        assert!(allocator.allocate(99).is_ok());
        assert!(allocator.allocate(1).is_err());
    }
}
