//! Command-line front ends of the daemon and `agentctl`; the mains in `src/bin/` only call into here. (The watcher's
//! is in its own crate.) The dev stack (`dev`) is built only with the feature `dev`.

pub mod agentctl;
#[cfg(feature = "dev")]
pub mod dev;
pub mod supervisor;
