//! Watchers: the small node-side process that reports whether an agent service is up and starts, stops and restarts
//! it on request, wire-compatible with Backend.AI's watcher. [`server`] is our own watcher (`agent-watcher`);
//! [`client`] is how the supervisor talks to any watcher, ours or Backend.AI's.

pub mod client;
pub mod server;
