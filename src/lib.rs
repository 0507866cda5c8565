//! bangerd and the banger CLI.

/// The guest agent's protocol and the host's client for it (and the agent itself): the
/// `banger-agent` package, under the name this crate has always used for it.
pub use banger_agent as agent;

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod host;
pub mod image;
pub mod kernel;
pub mod operations;
pub mod paths;
pub mod registry;
pub mod rpc;
pub mod size;
pub mod static_agent;
pub mod system;
pub mod update;
pub mod workspace;
