//! The actor layer: one [`AgentActor`] per agent, and the [`RegistryActor`] that owns them.
//!
//! Messages are plain structs named after the actions of the seed scenarios; results after its results.

mod agent;
mod liveness;
mod recalc;
mod registry;
mod sync;

use std::time::Duration;

pub use agent::{
    AgentActor, AgentSnapshot, CommandOutcome, GetSnapshot, GetWatcherStatus, GetWatcherStatusResult, Observation,
    WatcherAgentRestart, WatcherAgentStart, WatcherAgentStop, WatcherCommandResult,
};
pub use recalc::{RecalculateUsage, RecalculateUsageResult};
pub use registry::{
    ActorHomes, AgentRegistered, AgentRemoved, AgentTable, GetAgent, ListAgentActors, LoadAgents, Ping, RegistryActor,
};
pub use sync::{SyncAgentRegistry, SyncAgentRegistryResult};

use crate::{
    agent_rpc::AgentRpc, config::Config, db::Db, etcd::WatcherDirectory, ha::Leadership, telemetry::metrics::Metrics,
};

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
    pub rpc_timeout: Duration,
    /// How many watchers a refreshing listing asks at once.
    pub refresh_concurrency: usize,
    /// Backend.AI mode: the stat Redis (`None`: from etcd) and the bound on writing to it.
    pub redis_url: Option<crate::config::Secret>,
    pub redis_timeout: Duration,
    /// Standalone mode: how long an agent may look down before it is LOST.
    pub lost_after: Duration,
    /// List etcd's agents without a row (`GET /v1/agents?unregistered=true`).
    pub discover: bool,
}

impl From<&Config> for ActorSettings {
    fn from(c: &Config) -> Self {
        let w = &c.watcher;
        Self {
            rpc_timeout: Duration::from_millis(c.agent_rpc.timeout_ms),
            status_timeout: w.status_timeout(),
            command_timeout: w.command_timeout(),
            queue_capacity: w.queue_capacity,
            probe_interval: Duration::from_secs(w.probe_interval_s),
            refresh_concurrency: w.refresh_concurrency,
            redis_url: c.redis.url.clone(),
            redis_timeout: Duration::from_millis(c.redis.timeout_ms),
            lost_after: Duration::from_secs(c.agents.lost_after_s),
            discover: c.agents.discover,
        }
    }
}

/// What every actor needs: the database, the watcher directory, the agent RPC client, and its settings. Cheap to
/// clone.
#[derive(Clone)]
pub struct Deps {
    pub db: Db,
    pub directory: WatcherDirectory,
    pub rpc: AgentRpc,
    pub metrics: Metrics,
    pub settings: ActorSettings,
    /// High availability: whether (and under which epoch) this replica may write and act.
    pub ha: Leadership,
}
