//! Queries used by the actors and the API. Each takes a connection so callers can compose them in a transaction.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Array, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{
    DbError,
    models::{AgentEventRow, AgentRow, NewAgentEvent},
    query_error,
    schema::{agent_events, agents},
};
use crate::domain::{EventOutcome, KernelStatus};

/// Every agent id, in order.
pub async fn agent_ids(conn: &mut AsyncPgConnection) -> Result<Vec<String>, DbError> {
    agents::table.select(agents::id).order(agents::id).load(conn).await.map_err(query_error)
}

pub async fn find_agent(conn: &mut AsyncPgConnection, id: &str) -> Result<Option<AgentRow>, DbError> {
    agents::table.find(id).select(AgentRow::as_select()).first(conn).await.optional().map_err(query_error)
}

pub async fn list_agents(conn: &mut AsyncPgConnection, scaling_group: Option<&str>) -> Result<Vec<AgentRow>, DbError> {
    let mut q = agents::table.select(AgentRow::as_select()).order(agents::id).into_boxed();
    if let Some(sg) = scaling_group {
        q = q.filter(agents::scaling_group.eq(sg.to_owned()));
    }
    q.load(conn).await.map_err(query_error)
}

/// The kernel statuses that occupy an agent's resources, as text (a Backend.AI database stores them in the enum
/// `kernelstatus`, ours in a varchar: comparing `status::text` serves both).
fn occupying_statuses() -> Vec<&'static str> {
    KernelStatus::occupying().map(KernelStatus::as_str).collect()
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Kernels of the agent in a resource-occupying status (all but PENDING, TERMINATED, CANCELLED).
pub async fn count_occupying_kernels(conn: &mut AsyncPgConnection, agent_id: &str) -> Result<i64, DbError> {
    diesel::sql_query("SELECT count(*) AS n FROM kernels WHERE agent = $1 AND status::text = ANY($2)")
        .bind::<Text, _>(agent_id)
        .bind::<Array<Text>, _>(occupying_statuses())
        .get_result::<Count>(conn)
        .await
        .map(|c| c.n)
        .map_err(query_error)
}

/// Records a command as started; returns the event id.
pub async fn insert_event(conn: &mut AsyncPgConnection, event: &NewAgentEvent) -> Result<i64, DbError> {
    diesel::insert_into(agent_events::table)
        .values(event)
        .returning(agent_events::id)
        .get_result(conn)
        .await
        .map_err(query_error)
}

/// Records how a command ended.
pub async fn finish_event(
    conn: &mut AsyncPgConnection,
    id: i64,
    outcome: EventOutcome,
    http_status: Option<i16>,
    detail: &serde_json::Value,
    finished_at: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::update(agent_events::table.find(id))
        .set((
            agent_events::outcome.eq(outcome),
            agent_events::http_status.eq(http_status),
            agent_events::detail.eq(detail),
            agent_events::finished_at.eq(Some(finished_at)),
        ))
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(query_error)
}

/// Newest first.
pub async fn list_events(
    conn: &mut AsyncPgConnection,
    agent_id: &str,
    limit: i64,
) -> Result<Vec<AgentEventRow>, DbError> {
    list_events_before(conn, agent_id, limit, None).await
}

/// Newest first, only events older than the event `before` (ids grow with each insert) when given: the next page after a
/// page whose last event was `before`.
pub async fn list_events_before(
    conn: &mut AsyncPgConnection,
    agent_id: &str,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<AgentEventRow>, DbError> {
    let mut q = agent_events::table.filter(agent_events::agent_id.eq(agent_id)).into_boxed();
    if let Some(before) = before {
        q = q.filter(agent_events::id.lt(before));
    }
    q.order(agent_events::id.desc())
        .limit(limit)
        .select(AgentEventRow::as_select())
        .load(conn)
        .await
        .map_err(query_error)
}

/// Commands still open from a previous run of the daemon (it died mid-command) are marked `interrupted`.
pub async fn mark_open_events_interrupted(conn: &mut AsyncPgConnection) -> Result<usize, DbError> {
    diesel::update(agent_events::table.filter(agent_events::outcome.eq(EventOutcome::Running)))
        .set((agent_events::outcome.eq(EventOutcome::Interrupted), agent_events::finished_at.eq(Some(Utc::now()))))
        .execute(conn)
        .await
        .map_err(query_error)
}

/// A kernel as sync sends it.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct SyncKernel {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub session_id: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    pub agent_addr: Option<String>,
}

/// The agent's kernels in a resource-occupying status (all but PENDING, TERMINATED, CANCELLED), as Backend.AI's
/// `sync_agent_kernel_registry` reads them, whatever their role.
pub async fn occupying_kernels(conn: &mut AsyncPgConnection, agent_id: &str) -> Result<Vec<SyncKernel>, DbError> {
    diesel::sql_query(
        "SELECT id, session_id, agent_addr::text AS agent_addr FROM kernels \
         WHERE agent = $1 AND status::text = ANY($2) ORDER BY session_id, id",
    )
    .bind::<Text, _>(agent_id)
    .bind::<Array<Text>, _>(occupying_statuses())
    .load(conn)
    .await
    .map_err(query_error)
}
