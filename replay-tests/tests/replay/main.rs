//! banger's replay tests, in one binary.
//!
//! - [`golden`]: checked-in logs (frame dumps and real redb files) must keep decoding and
//!   projecting exactly as recorded, in every later version.
//! - [`properties`]: seeded property tests of the fold, its snapshots and the journal.
//! - [`recovery`]: `plan_recovery` finishes every open operation, even when recovery itself
//!   is interrupted at any point.
//! - [`crash_matrix`]: every operation × step × crash point against the real bangerd and the
//!   fake firecracker: recovery ends every operation, the views match the host, nothing
//!   leaks, no acknowledged event is lost.
//! - [`corruption`]: bit flips in a real redb file, truncation, missing and duplicated sequence
//!   numbers, unknown event kinds and damaged snapshots.
//! - [`repair`]: `banger events repair` on those damaged files: the intact prefix carried
//!   into a new log with a `LogRepaired`, the damaged file kept byte for byte.
//!
//! Randomness is seeded and printed (`BANGER_PROPTEST_SEED`, see `common`); nothing sleeps;
//! every test works in its own temporary directory, so they run in parallel in any order.
//! Nothing here writes outside a temporary directory unless `BANGER_BLESS=1` is set (see
//! `replay-tests/README.md`).
//!
//! The binary runs on `banger-test-harness` (`harness = false`): each module lists its tests
//! with `banger_test_harness::tests!`, and the crash-matrix columns and storms that run VMs
//! are in its root tier (they need a test network namespace), so they show as skipped without
//! root, or fail under `BANGER_REQUIRE_PRIVILEGED=1`.

mod common;
mod corruption;
mod crash_matrix;
mod golden;
mod properties;
mod recovery;
mod repair;

fn main() {
    banger_test_harness::run(vec![
        corruption::tests(),
        crash_matrix::tests(),
        golden::tests(),
        properties::tests(),
        recovery::tests(),
        repair::tests(),
    ]);
}
