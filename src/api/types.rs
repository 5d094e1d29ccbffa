//! The `/v1` API's request and response bodies, in one place: the handlers write them, and `agentctl` reads its
//! answers into the same structs. Bodies that an actor or a query produces are re-exported from where they are made.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

pub use agent_supervisor_protocol::agents::{RegisterAgent, UnregisteredAgent, UpdateAgent};

pub use crate::{
    actors::{AgentSnapshot, CommandOutcome, Observation, RecalculateUsageResult, SyncAgentRegistryResult},
    db::{
        models::{AgentEventRow, AgentRow},
        recalc::{RecalcReport, SkippedAgent},
    },
    registration::{DeregisteredAgent, RegisteredAgent},
    service::{AgentListing, Readiness},
};
use crate::{api::openapi::WatcherReport, domain::AgentId, watcher::WatcherCommand};

/// The verified caller.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub access_key: String,
    pub is_superadmin: bool,
}

/// `GET /v1/agents`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentListing>,
    /// With `unregistered=true`: the agents etcd knows that have no row (`agents.discover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unregistered: Option<Vec<UnregisteredAgent>>,
}

/// `GET /v1/agents/{id}/watcher`: the watcher's JSON and how long it took to answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WatcherStatusReply {
    pub agent_id: AgentId,
    #[schema(value_type = WatcherReport)]
    pub watcher: Value,
    pub latency_ms: u64,
}

/// A finished start/stop/restart: the watcher's JSON, the audit event and the time taken.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommandReply {
    pub agent_id: AgentId,
    pub command: WatcherCommand,
    /// The watcher's JSON, verbatim (`{"result": "ok"}` from ours and Backend.AI's).
    pub result: Value,
    pub event_id: i64,
    pub elapsed_ms: u64,
}

/// `GET /v1/agents/{id}/events`: the audit trail, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentEvents {
    pub agent_id: AgentId,
    pub events: Vec<AgentEventRow>,
}
