//! Command-line front ends of the three binaries; the mains in `src/bin/` only call into here.

pub mod agentctl;
pub mod dev;
pub mod supervisor;
pub mod watcher;
