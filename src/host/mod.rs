//! Host adapters: VMM processes, the Firecracker API, and the guest network (taps through the
//! root helper). Each submodule owns one kind of host
//! resource and keeps no state beyond what its caller records.

pub mod console;
pub mod disk;
pub mod firecracker;
pub mod network;
pub mod process;
pub mod vmm;
