//! What unit tests of operations and of the daemon build again and again: a journal in
//! memory, a runner over it, a VMM backend that is never launched, a small VM spec.

use std::path::Path;
use std::sync::Arc;

use banger_events::{Journal, JournalOptions, MemoryLog, VmSpec};
use banger_projections::Projections;

use super::{Failpoints, Runner};
use crate::host::backends::Backends;
use crate::host::guest_agent::AgentLinks;
use crate::host::network::GuestNetwork;
use crate::host::vmm::FirecrackerVmm;
use crate::paths::Layout;

/// A journal over an in-memory log.
pub fn memory_journal() -> Arc<Journal<Projections>> {
    Arc::new(
        Journal::open(Arc::new(MemoryLog::new()), JournalOptions::default())
            .expect("open a journal in memory"),
    )
}

/// A Firecracker backend whose binary does not exist: for tests that never launch a VMM.
pub fn unlaunchable_vmm() -> FirecrackerVmm {
    FirecrackerVmm::new("/nonexistent/firecracker")
}

/// Backends whose Firecracker binary does not exist (QEMU as configured): for tests that
/// never launch a VMM.
pub fn unlaunchable_backends() -> Arc<Backends> {
    Arc::new(Backends::firecracker_at("/nonexistent/firecracker"))
}

/// A runner over `journal` and the store under `root`, with no helper, no VMM and no
/// failpoints.
pub fn runner(journal: Arc<Journal<Projections>>, root: &Path) -> Runner {
    Runner::new(
        journal,
        Layout::rooted(root),
        Arc::new(GuestNetwork::unreachable_for_tests()),
        unlaunchable_backends(),
        Arc::new(AgentLinks::new()),
        Failpoints::none(),
    )
}

/// A one-vCPU VM of image `img` booting `kernel`.
pub fn small_spec(kernel: &str) -> VmSpec {
    VmSpec {
        image: "img".into(),
        kernel: kernel.into(),
        vcpus: 1,
        memory_mib: 256,
        root_disk_mib: 1,
        work_disk_mib: 32,
    }
}
