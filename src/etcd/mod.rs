//! etcd: Backend.AI's key layout and the bounded client (shared with the watcher, in `agent_supervisor_common`), and
//! the watcher directory: a cache of every agent's watcher address kept fresh by an etcd watch.

mod directory;

pub use agent_supervisor_common::etcd::{Etcd, EtcdConfig, EtcdError, keys};
pub use directory::{DirectoryStats, WatcherAddress, WatcherDirectory};
