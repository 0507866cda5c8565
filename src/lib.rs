//! bangerd and the banger CLI.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod host;
pub mod image;
pub mod operations;
pub mod paths;
pub mod rpc;
pub mod size;
