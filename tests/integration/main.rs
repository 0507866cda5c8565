//! The banger crate's one integration-test binary: drives the real `bangerd` and `banger`
//! binaries over real sockets in temporary state directories.

mod agent;
mod cli;
mod daemon;
mod firecracker;
mod guest;
mod network;
mod support;
mod vm;
