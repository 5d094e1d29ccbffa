//! What the programs of agent-supervisor say to each other and to Backend.AI's parts, written down once: the
//! problem documents every error becomes ([`problem`]) and the watcher's wire protocol ([`watcher`]). The node-side
//! watcher depends on this crate and nothing of the daemon's.

pub mod agents;
#[cfg(feature = "actix-web")]
pub mod http;
pub mod problem;
pub mod signing;
pub mod watcher;

pub use problem::{ErrorCode, Problem, ProblemDocument};
