//! The actor layer: one [`AgentActor`] per agent, and the [`RegistryActor`] that owns them.
//!
//! Messages are plain structs named after the actions of the seed scenarios; results after its results.

mod agent;
mod registry;

use std::time::Duration;

pub use agent::{
    AgentActor, AgentSnapshot, CommandOutcome, GetSnapshot, GetWatcherStatus, GetWatcherStatusResult, Observation,
    WatcherAgentRestart, WatcherAgentStart, WatcherAgentStop, WatcherCommandResult,
};
pub use registry::{GetAgent, ListAgentActors, LoadAgents, RegistryActor};

use crate::{config::WatcherConfig, db::Db, etcd::WatcherDirectory};

/// How many finished command outcomes each agent actor keeps in memory.
pub const OUTCOMES_KEPT: usize = 20;

/// Timing and sizing of the agent actors.
#[derive(Debug, Clone)]
pub struct ActorSettings {
    pub status_timeout: Duration,
    pub command_timeout: Duration,
    pub queue_capacity: usize,
    /// Zero disables probing.
    pub probe_interval: Duration,
}

impl From<&WatcherConfig> for ActorSettings {
    fn from(w: &WatcherConfig) -> Self {
        Self {
            status_timeout: w.status_timeout(),
            command_timeout: w.command_timeout(),
            queue_capacity: w.queue_capacity,
            probe_interval: Duration::from_secs(w.probe_interval_s),
        }
    }
}

/// What every actor needs: the database, the watcher directory, and its settings. Cheap to clone.
#[derive(Clone)]
pub struct Deps {
    pub db: Db,
    pub directory: WatcherDirectory,
    pub settings: ActorSettings,
}
