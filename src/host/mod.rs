//! Host adapters: banger's ssh files (`ssh`: its key pair, known_hosts, client config); VMM processes (Firecracker and its API; QEMU's microvm and QMP; what KVM
//! allows here), and the guest network (taps through the root helper). Each submodule owns one kind of host
//! resource and keeps no state beyond what its caller records.

pub mod backends;
pub mod console;
pub mod disk;
pub mod firecracker;
pub mod guest_agent;
pub mod jailed;
pub mod kvm;
pub mod network;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod ssh;
pub mod vmm;
// `vm stats` and `vm ports`: what a VM costs the host, and the web probe of its ports.
pub mod usage;
pub mod web_probe;
