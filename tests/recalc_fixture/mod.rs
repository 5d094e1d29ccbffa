//! Fixtures for the recalculation tests: rows inserted with plain SQL, and readers for the two tables it writes.
#![allow(dead_code)]

use std::collections::BTreeMap;

use diesel::{
    QueryableByName,
    sql_types::{Integer, Jsonb, Nullable, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use uuid::Uuid;

/// What every agent holds before a recalculation, so a test sees whether it was touched.
pub fn junk() -> Value {
    json!({"junk": "7", "cpu": "99"})
}

pub async fn scaling_group(conn: &mut AsyncPgConnection) {
    diesel::sql_query("INSERT INTO scaling_groups (name) VALUES ('default') ON CONFLICT DO NOTHING")
        .execute(conn)
        .await
        .unwrap();
}

/// An agent in `status` whose `occupied_slots` is [`junk`].
pub async fn agent(conn: &mut AsyncPgConnection, id: &str, status: &str) {
    diesel::sql_query(
        "INSERT INTO agents (id, status, region, addr, version, architecture, occupied_slots)
         VALUES ($1, $2::agentstatus, 'local', 'tcp://127.0.0.1:6001', '25.1.0', 'x86_64', $3)",
    )
    .bind::<Text, _>(id)
    .bind::<Text, _>(status)
    .bind::<Jsonb, _>(junk())
    .execute(conn)
    .await
    .unwrap();
}

pub async fn session(conn: &mut AsyncPgConnection, access_key: Option<&str>, status: &str, session_type: &str) -> Uuid {
    let id = Uuid::new_v4();
    diesel::sql_query("INSERT INTO sessions (id, access_key, status, session_type) VALUES ($1, $2, $3, $4)")
        .bind::<SqlUuid, _>(id)
        .bind::<Nullable<Text>, _>(access_key)
        .bind::<Text, _>(status)
        .bind::<Text, _>(session_type)
        .execute(conn)
        .await
        .unwrap();
    id
}

pub async fn kernel(conn: &mut AsyncPgConnection, session: Uuid, agent: Option<&str>, slots: Value) -> Uuid {
    let id = Uuid::new_v4();
    diesel::sql_query(
        "INSERT INTO kernels (id, session_id, agent, occupied_slots, status) VALUES ($1, $2, $3, $4, 'RUNNING')",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<SqlUuid, _>(session)
    .bind::<Nullable<Text>, _>(agent)
    .bind::<Jsonb, _>(slots)
    .execute(conn)
    .await
    .unwrap();
    id
}

pub async fn usage_row(conn: &mut AsyncPgConnection, access_key: &str, compute: i32, system: i32) {
    diesel::sql_query(
        "INSERT INTO keypair_resource_usage (access_key, concurrency_used, sftp_concurrency_used, updated_at)
         VALUES ($1, $2, $3, '2020-01-01T00:00:00Z')",
    )
    .bind::<Text, _>(access_key)
    .bind::<Integer, _>(compute)
    .bind::<Integer, _>(system)
    .execute(conn)
    .await
    .unwrap();
}

#[derive(QueryableByName)]
struct SlotsRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Jsonb)]
    occupied_slots: Value,
}

/// Every agent's `occupied_slots`, by id.
pub async fn all_slots(conn: &mut AsyncPgConnection) -> BTreeMap<String, Value> {
    diesel::sql_query("SELECT id, occupied_slots FROM agents")
        .load::<SlotsRow>(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.occupied_slots))
        .collect()
}

pub async fn slots(conn: &mut AsyncPgConnection, id: &str) -> Value {
    all_slots(conn).await.remove(id).unwrap_or_else(|| panic!("no agent {id}"))
}

#[derive(QueryableByName)]
struct UsageRow {
    #[diesel(sql_type = Text)]
    access_key: String,
    #[diesel(sql_type = Integer)]
    concurrency_used: i32,
    #[diesel(sql_type = Integer)]
    sftp_concurrency_used: i32,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    fresh: bool,
}

/// `keypair_resource_usage` as access key → (compute, system, updated within the last minute).
pub async fn usage(conn: &mut AsyncPgConnection) -> BTreeMap<String, (i32, i32, bool)> {
    diesel::sql_query(
        "SELECT access_key, concurrency_used, sftp_concurrency_used, updated_at > now() - interval '1 minute' AS fresh
         FROM keypair_resource_usage",
    )
    .load::<UsageRow>(conn)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.access_key, (r.concurrency_used, r.sftp_concurrency_used, r.fresh)))
    .collect()
}
