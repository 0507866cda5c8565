//! bangerd and the banger CLI.

pub mod api;
pub mod cli;
pub mod daemon;
pub mod operations;
pub mod paths;
pub mod rpc;
