//! Row types: one struct per table, with every column, for reading (`Queryable`) and writing (`Insertable`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::schema::{agent_events, agents, kernels, keypair_resource_usage, keypairs, scaling_groups, sessions};
use crate::domain::{AgentStatus, EventAction, EventOutcome, KernelStatus, ResourceSlot, SessionStatus, SessionType};

#[derive(Debug, Clone, PartialEq, Serialize, Queryable, Selectable, Insertable)]
#[diesel(table_name = scaling_groups, check_for_backend(diesel::pg::Pg))]
pub struct ScalingGroupRow {
    pub name: String,
    pub description: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub driver: String,
    pub scheduler: String,
}

/// An `agents` row with every column (what sync returns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Queryable, Selectable, Insertable, utoipa::ToSchema)]
#[diesel(table_name = agents, check_for_backend(diesel::pg::Pg))]
pub struct AgentRow {
    pub id: String,
    pub status: AgentStatus,
    pub status_changed: Option<DateTime<Utc>>,
    pub region: String,
    pub scaling_group: String,
    pub schedulable: bool,
    pub available_slots: ResourceSlot,
    pub occupied_slots: ResourceSlot,
    pub addr: String,
    pub public_host: Option<String>,
    pub public_key: Option<String>,
    pub first_contact: Option<DateTime<Utc>>,
    pub lost_at: Option<DateTime<Utc>>,
    pub version: String,
    pub architecture: String,
    pub compute_plugins: serde_json::Value,
    pub auto_terminate_abusing_kernel: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions, check_for_backend(diesel::pg::Pg))]
pub struct SessionRow {
    pub id: Uuid,
    pub name: Option<String>,
    pub session_type: SessionType,
    pub access_key: Option<String>,
    pub status: SessionStatus,
    pub scaling_group_name: Option<String>,
    pub occupying_slots: ResourceSlot,
    pub requested_slots: ResourceSlot,
    pub agent_ids: Option<Vec<Option<String>>>,
    pub created_at: DateTime<Utc>,
    pub status_changed: Option<DateTime<Utc>>,
    pub terminated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Queryable, Selectable, Insertable)]
#[diesel(table_name = kernels, check_for_backend(diesel::pg::Pg))]
pub struct KernelRow {
    pub id: Uuid,
    pub session_id: Uuid,
    pub session_type: SessionType,
    pub cluster_role: String,
    pub scaling_group: Option<String>,
    pub agent: Option<String>,
    pub agent_addr: Option<String>,
    pub access_key: Option<String>,
    pub image: Option<String>,
    pub architecture: String,
    pub container_id: Option<String>,
    pub occupied_slots: ResourceSlot,
    pub requested_slots: ResourceSlot,
    pub status: KernelStatus,
    pub status_changed: Option<DateTime<Utc>>,
    pub status_info: Option<String>,
    pub created_at: DateTime<Utc>,
    pub terminated_at: Option<DateTime<Utc>>,
}

/// An API keypair. `Debug` never shows the secret key.
#[derive(Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = keypairs, check_for_backend(diesel::pg::Pg))]
pub struct KeypairRow {
    pub access_key: String,
    pub secret_key: String,
    pub user_id: Option<String>,
    pub is_active: bool,
    pub is_superadmin: bool,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for KeypairRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeypairRow")
            .field("access_key", &self.access_key)
            .field("secret_key", &"[redacted]")
            .field("is_active", &self.is_active)
            .field("is_superadmin", &self.is_superadmin)
            .finish_non_exhaustive()
    }
}

/// One audited event: a command's row is inserted when it starts (`running`) and updated when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Queryable, Selectable, utoipa::ToSchema)]
#[diesel(table_name = agent_events, check_for_backend(diesel::pg::Pg))]
pub struct AgentEventRow {
    pub id: i64,
    pub agent_id: String,
    pub action: EventAction,
    pub requester: String,
    pub requested_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: EventOutcome,
    pub http_status: Option<i16>,
    pub detail: serde_json::Value,
    /// The leader epoch the event was written under (high availability), else null.
    pub epoch: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = agent_events, check_for_backend(diesel::pg::Pg))]
pub struct NewAgentEvent {
    pub agent_id: String,
    pub action: EventAction,
    pub requester: String,
    pub requested_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: EventOutcome,
    pub http_status: Option<i16>,
    pub detail: serde_json::Value,
    pub epoch: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Queryable, Selectable, Insertable)]
#[diesel(table_name = keypair_resource_usage, check_for_backend(diesel::pg::Pg))]
pub struct KeypairResourceUsageRow {
    pub access_key: String,
    pub concurrency_used: i32,
    pub sftp_concurrency_used: i32,
    pub updated_at: DateTime<Utc>,
}
