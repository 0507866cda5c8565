//! Developer tools for banger: the event-log benchmark (`bench-log`), the log dump
//! (`log-dump`), and the synthetic workload they share.

pub mod stats;
pub mod workload;
