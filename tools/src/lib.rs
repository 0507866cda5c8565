//! Developer tools for banger: the event-log benchmark (`bench-log`), the log dump
//! (`log-dump`), the synthetic workload they share, and the fake firecracker
//! (`fake-firecracker`).

pub mod fake_firecracker;
pub mod stats;
pub mod workload;
