//! The banger crate's one integration-test binary: drives the real `bangerd` and `banger`
//! binaries over real sockets in temporary state directories.
//!
//! It runs on `banger-test-harness` (`harness = false`): each module lists its tests with
//! `banger_test_harness::tests!` (an unlisted test is dead code, which `-D warnings` refuses),
//! and those that need root (a test network) or a real firecracker say so there, so that they
//! show as skipped where they cannot run, or fail under `BANGER_REQUIRE_PRIVILEGED=1`. QEMU
//! is not a tier: it is installed wherever these tests run, so `qemu` fails without it.

mod agent;
mod cli;
mod daemon;
mod dashboard;
mod deployed;
mod dns;
mod doctor;
mod firecracker;
mod guest;
mod guest_images;
mod guest_stats;
mod image_pull;
mod jailed;
mod kernel;
mod kernel_pull;
mod network;
mod qemu;
mod real_guest_dns;
mod real_guest_ssh;
mod real_guest_stats;
mod real_guest_workspace;
mod real_guests;
mod registry;
mod ssh;
mod storage;
mod support;
mod system;
mod systemd_units;
mod tty;
mod update;
mod vm;
mod workspace;

fn main() {
    banger_test_harness::run(vec![
        agent::tests(),
        cli::tests(),
        daemon::tests(),
        deployed::tests(),
        dashboard::tests(),
        doctor::tests(),
        firecracker::tests(),
        guest::tests(),
        guest_stats::tests(),
        image_pull::tests(),
        jailed::tests(),
        kernel::tests(),
        kernel_pull::tests(),
        network::tests(),
        registry::tests(),
        storage::tests(),
        system::tests(),
        systemd_units::tests(),
        qemu::tests(),
        real_guest_ssh::tests(),
        real_guests::tests(),
        real_guest_stats::tests(),
        real_guest_workspace::tests(),
        ssh::tests(),
        tty::tests(),
        update::tests(),
        vm::tests(),
        dns::tests(),
        real_guest_dns::tests(),
        workspace::tests(),
    ]);
}
