//! Writes to `agents` and `scaling_groups` for standalone mode's registry and liveness. Each query takes a connection
//! so the registry can run them in one transaction with the audit row (and around its etcd write).

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Bool, Jsonb, Nullable, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{
    DbError,
    models::AgentRow,
    query_error,
    schema::{agents, scaling_groups},
};
use crate::domain::{AgentStatus, ResourceSlot};

/// An agent's registration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAgent {
    pub id: String,
    pub scaling_group: String,
    pub region: String,
    pub addr: String,
    pub public_key: Option<String>,
    pub available_slots: ResourceSlot,
    pub architecture: String,
    pub version: String,
}

/// Changes to a registered agent; `None` leaves a column as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentChanges {
    pub schedulable: Option<bool>,
    pub scaling_group: Option<String>,
    pub region: Option<String>,
    pub addr: Option<String>,
    pub public_key: Option<Option<String>>,
    pub available_slots: Option<ResourceSlot>,
}

impl AgentChanges {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

pub async fn scaling_group_exists(conn: &mut AsyncPgConnection, name: &str) -> Result<bool, DbError> {
    diesel::select(diesel::dsl::exists(scaling_groups::table.find(name))).get_result(conn).await.map_err(query_error)
}

pub async fn create_scaling_group(conn: &mut AsyncPgConnection, name: &str) -> Result<(), DbError> {
    diesel::insert_into(scaling_groups::table)
        .values(scaling_groups::name.eq(name))
        .on_conflict_do_nothing()
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(query_error)
}

/// The agent's row, locked for the rest of the transaction.
pub async fn lock_agent(conn: &mut AsyncPgConnection, id: &str) -> Result<Option<AgentRow>, DbError> {
    agents::table.find(id).select(AgentRow::as_select()).for_update().first(conn).await.optional().map_err(query_error)
}

/// Inserts the agent ALIVE, or, registered already, replaces its registration fields (its status, liveness,
/// schedulability and occupied slots stay). Returns the row and whether it was created.
pub async fn upsert_agent(conn: &mut AsyncPgConnection, a: &NewAgent) -> Result<(AgentRow, bool), DbError> {
    #[derive(QueryableByName)]
    struct Created {
        #[diesel(sql_type = Bool)]
        created: bool,
    }
    let created: Created = diesel::sql_query(
        "INSERT INTO agents (id, status, status_changed, region, scaling_group, schedulable, available_slots, \
         occupied_slots, addr, public_key, first_contact, version, architecture) \
         VALUES ($1, 'ALIVE', now(), $2, $3, true, $4, '{}', $5, $6, now(), $7, $8) \
         ON CONFLICT (id) DO UPDATE SET region = EXCLUDED.region, scaling_group = EXCLUDED.scaling_group, \
         available_slots = EXCLUDED.available_slots, addr = EXCLUDED.addr, public_key = EXCLUDED.public_key, \
         version = EXCLUDED.version, architecture = EXCLUDED.architecture \
         RETURNING (xmax = 0) AS created",
    )
    .bind::<Text, _>(&a.id)
    .bind::<Text, _>(&a.region)
    .bind::<Text, _>(&a.scaling_group)
    .bind::<Jsonb, _>(&a.available_slots)
    .bind::<Text, _>(&a.addr)
    .bind::<Nullable<Text>, _>(&a.public_key)
    .bind::<Text, _>(&a.version)
    .bind::<Text, _>(&a.architecture)
    .get_result(conn)
    .await
    .map_err(query_error)?;
    let row = agents::table.find(&a.id).select(AgentRow::as_select()).first(conn).await.map_err(query_error)?;
    Ok((row, created.created))
}

/// Applies `changes` to the agent; returns its row afterwards.
pub async fn update_agent(conn: &mut AsyncPgConnection, id: &str, changes: &AgentChanges) -> Result<AgentRow, DbError> {
    let target = agents::table.find(id);
    if let Some(v) = changes.schedulable {
        diesel::update(target).set(agents::schedulable.eq(v)).execute(conn).await.map_err(query_error)?;
    }
    if let Some(v) = &changes.scaling_group {
        diesel::update(target).set(agents::scaling_group.eq(v)).execute(conn).await.map_err(query_error)?;
    }
    if let Some(v) = &changes.region {
        diesel::update(target).set(agents::region.eq(v)).execute(conn).await.map_err(query_error)?;
    }
    if let Some(v) = &changes.addr {
        diesel::update(target).set(agents::addr.eq(v)).execute(conn).await.map_err(query_error)?;
    }
    if let Some(v) = &changes.public_key {
        diesel::update(target).set(agents::public_key.eq(v)).execute(conn).await.map_err(query_error)?;
    }
    if let Some(v) = &changes.available_slots {
        diesel::update(target).set(agents::available_slots.eq(v)).execute(conn).await.map_err(query_error)?;
    }
    target.select(AgentRow::as_select()).first(conn).await.map_err(query_error)
}

pub async fn delete_agent(conn: &mut AsyncPgConnection, id: &str) -> Result<bool, DbError> {
    diesel::delete(agents::table.find(id)).execute(conn).await.map(|n| n > 0).map_err(query_error)
}

/// Moves the agent from `from` to `to` (ALIVE ↔ LOST), setting `lost_at` when it becomes LOST and clearing it when
/// it comes back; `false` when it was not in `from` (another replica, an operator, or nothing to do).
pub async fn transition_liveness(
    conn: &mut AsyncPgConnection,
    id: &str,
    from: AgentStatus,
    to: AgentStatus,
    at: DateTime<Utc>,
) -> Result<bool, DbError> {
    let lost_at = (to == AgentStatus::Lost).then_some(at);
    diesel::update(agents::table.find(id).filter(agents::status.eq(from)))
        .set((agents::status.eq(to), agents::status_changed.eq(Some(at)), agents::lost_at.eq(lost_at)))
        .execute(conn)
        .await
        .map(|n| n > 0)
        .map_err(query_error)
}
