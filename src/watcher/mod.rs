//! Watchers: the client the supervisor uses to reach them, and our own node-side watcher (`server`).

pub mod client;
