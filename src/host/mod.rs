//! Host adapters: VMM processes and the Firecracker API. Each submodule owns one kind of host
//! resource and keeps no state beyond what its caller records.

pub mod firecracker;
pub mod process;
pub mod vmm;
