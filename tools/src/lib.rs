//! Developer tools for banger: the event-log benchmark (`bench-log`), the log dump
//! (`log-dump`), the synthetic workload they share, the fake firecracker
//! (`fake-firecracker`), and the layers the image benchmarks build (`layers`).

pub mod fake_firecracker;
pub mod layers;
pub mod stats;
pub mod workload;
