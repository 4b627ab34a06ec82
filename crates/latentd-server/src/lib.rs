//! The `latentd` binary's library: command line and HTTP server.

pub mod builtin;
pub mod cli;
pub mod http;
pub mod shared_jobs;
