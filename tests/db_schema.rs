//! Migrations and row types against a real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agent_supervisor::{
    config::{DatabaseConfig, DatabaseMode},
    db::{self, models::*, schema},
    domain::{AgentStatus, EventAction, EventOutcome, KernelStatus, ResourceSlot, SessionStatus, SessionType},
};
use chrono::{DateTime, SubsecRound, Utc};
use common::TestDb;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::json;

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The tables of `schema`, by name (migration bookkeeping included), sorted.
async fn table_names(db: &TestDb, schema: &str) -> Vec<String> {
    #[derive(QueryableByName)]
    struct T {
        #[diesel(sql_type = diesel::sql_types::Text)]
        table_name: String,
    }
    let mut conn = db.db.conn().await.unwrap();
    let mut names: Vec<String> = diesel::sql_query(
        "SELECT table_name::text AS table_name FROM information_schema.tables WHERE table_schema = $1",
    )
    .bind::<diesel::sql_types::Text, _>(schema)
    .load::<T>(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .map(|t| t.table_name)
    .collect();
    names.sort();
    names
}

fn migration_count(set: &str) -> usize {
    std::fs::read_dir(format!("{}/migrations/{set}", env!("CARGO_MANIFEST_DIR"))).unwrap().count()
}

const CLUSTER_TABLES: [&str; 7] = [
    "__diesel_schema_migrations",
    "agents",
    "kernels",
    "keypair_resource_usage",
    "keypairs",
    "scaling_groups",
    "sessions",
];
const OWN_TABLES: [&str; 3] = ["__diesel_schema_migrations", "agent_events", "ha_leader"];

#[tokio::test]
async fn migrations_apply_on_an_empty_database_and_are_reversible() {
    let db = TestDb::empty().await;
    let cfg = db.config();
    assert!(table_names(&db, "public").await.is_empty());

    let applied = db::run_migrations(&cfg).await.unwrap();
    assert_eq!(applied.len(), migration_count("standalone") + migration_count("own"));
    assert_eq!(table_names(&db, "public").await, CLUSTER_TABLES, "the cluster's tables are in public");
    assert_eq!(table_names(&db, "agent_supervisor").await, OWN_TABLES, "the daemon's own are in its schema");
    assert!(db::run_migrations(&cfg).await.unwrap().is_empty(), "second run applies nothing");

    let reverted = db::revert_all_migrations(&cfg).await.unwrap();
    assert_eq!(reverted.len(), applied.len());
    assert_eq!(table_names(&db, "public").await, ["__diesel_schema_migrations"], "down.sql removes every table");
    assert_eq!(table_names(&db, "agent_supervisor").await, ["__diesel_schema_migrations"]);

    db::run_migrations(&cfg).await.unwrap();
    assert_eq!(table_names(&db, "public").await, CLUSTER_TABLES);
    assert_eq!(table_names(&db, "agent_supervisor").await, OWN_TABLES);
}

#[tokio::test]
async fn a_backend_ai_database_gets_only_the_daemons_own_schema() {
    let db = TestDb::empty().await;
    let cfg = DatabaseConfig { mode: DatabaseMode::BackendAi, own_schema: "sv_own".into(), ..db.config() };
    let applied = db::run_migrations(&cfg).await.unwrap();
    assert_eq!(applied.len(), migration_count("own"));
    assert!(table_names(&db, "public").await.is_empty(), "nothing is created where Backend.AI's tables are");
    assert_eq!(table_names(&db, "sv_own").await, OWN_TABLES);
}

/// agent-supervisor 0.1 kept its audit trail in `public` with text columns: the own migrations move it, rows and
/// all, into the daemon's schema and make its words enums ('queued', never written, would become 'interrupted').
#[tokio::test]
async fn a_0_1_audit_trail_in_public_is_moved_into_the_own_schema() {
    let db = TestDb::empty().await;
    db.sql(
        "CREATE TABLE agent_events (id BIGSERIAL PRIMARY KEY, agent_id VARCHAR(64) NOT NULL, action VARCHAR(32) NOT NULL,
            requester VARCHAR(256) NOT NULL, requested_at TIMESTAMPTZ NOT NULL DEFAULT now(), started_at TIMESTAMPTZ,
            finished_at TIMESTAMPTZ, outcome VARCHAR(16) NOT NULL DEFAULT 'queued'
            CHECK (outcome IN ('queued', 'running', 'succeeded', 'failed', 'rejected', 'unknown', 'interrupted', 'observed')),
            http_status SMALLINT, detail JSONB NOT NULL DEFAULT '{}');
         CREATE INDEX agent_events_agent_idx ON agent_events (agent_id, id DESC);
         CREATE INDEX agent_events_open_idx ON agent_events (outcome) WHERE outcome IN ('queued', 'running');
         INSERT INTO agent_events (agent_id, action, requester, outcome, http_status)
             VALUES ('i-1', 'restart', 'AKOLD', 'succeeded', 200), ('i-1', 'start', 'AKOLD', 'queued', NULL);
         CREATE FUNCTION slot_each(jsonb) RETURNS TABLE (key text, value text) LANGUAGE sql IMMUTABLE STRICT
             AS 'SELECT * FROM jsonb_each_text($1)';",
    )
    .await;
    db::run_migrations(&DatabaseConfig { mode: DatabaseMode::BackendAi, ..db.config() }).await.unwrap();
    assert!(table_names(&db, "public").await.is_empty(), "moved, not copied");
    let mut conn = db.db.conn().await.unwrap();
    let rows = agent_supervisor::db::queries::list_events(&mut conn, "i-1", 10).await.unwrap();
    let words: Vec<_> = rows.iter().map(|r| (r.action, r.outcome, r.http_status)).collect();
    assert_eq!(
        words,
        [
            (EventAction::Start, EventOutcome::Interrupted, None),
            (EventAction::Restart, EventOutcome::Succeeded, Some(200))
        ]
    );
}

#[tokio::test]
async fn every_table_round_trips_through_its_row_type() {
    let db = TestDb::new().await;
    let mut conn = db.db.conn().await.unwrap();

    let sg = ScalingGroupRow {
        name: "gpu".into(),
        description: Some("GPU nodes".into()),
        is_active: true,
        created_at: now(),
        driver: "static".into(),
        scheduler: "fifo".into(),
    };
    diesel::insert_into(schema::scaling_groups::table).values(&sg).execute(&mut conn).await.unwrap();
    let got: ScalingGroupRow =
        schema::scaling_groups::table.find("gpu").select(ScalingGroupRow::as_select()).first(&mut conn).await.unwrap();
    assert_eq!(got, sg);

    let slots =
        ResourceSlot::from_json_value(&json!({"cpu": "8", "mem": "34359738368", "cuda.shares": "0.5"})).unwrap();
    let agent = AgentRow {
        id: "i-node01".into(),
        status: AgentStatus::Lost,
        status_changed: Some(now()),
        region: "local".into(),
        scaling_group: "gpu".into(),
        schedulable: false,
        available_slots: slots.clone(),
        occupied_slots: ResourceSlot::new(),
        addr: "tcp://127.0.0.1:6001".into(),
        public_host: Some("node01".into()),
        public_key: Some("a".repeat(40)),
        first_contact: Some(now()),
        lost_at: Some(now()),
        version: "23.09.10".into(),
        architecture: "x86_64".into(),
        compute_plugins: json!({"cuda": {"version": "12"}}),
        auto_terminate_abusing_kernel: true,
    };
    diesel::insert_into(schema::agents::table).values(&agent).execute(&mut conn).await.unwrap();
    let got: AgentRow =
        schema::agents::table.find("i-node01").select(AgentRow::as_select()).first(&mut conn).await.unwrap();
    assert_eq!(got, agent);

    let session = SessionRow {
        id: uuid::Uuid::new_v4(),
        name: Some("s1".into()),
        session_type: SessionType::System,
        access_key: Some("AKTEST0000000000".into()),
        status: SessionStatus::RunningDegraded,
        scaling_group_name: Some("gpu".into()),
        occupying_slots: slots.clone(),
        requested_slots: slots.clone(),
        agent_ids: Some(vec![Some("i-node01".into())]),
        created_at: now(),
        status_changed: None,
        terminated_at: None,
    };
    diesel::insert_into(schema::sessions::table).values(&session).execute(&mut conn).await.unwrap();
    let got: SessionRow =
        schema::sessions::table.find(session.id).select(SessionRow::as_select()).first(&mut conn).await.unwrap();
    assert_eq!(got, session);

    let kernel = KernelRow {
        id: uuid::Uuid::new_v4(),
        session_id: session.id,
        session_type: SessionType::System,
        cluster_role: "main".into(),
        scaling_group: Some("gpu".into()),
        agent: Some("i-node01".into()),
        agent_addr: Some("tcp://127.0.0.1:6001".into()),
        access_key: Some("AKTEST0000000000".into()),
        image: Some("cr.backend.ai/stable/python:3.11".into()),
        architecture: "x86_64".into(),
        container_id: Some("c0ffee".into()),
        occupied_slots: slots.clone(),
        requested_slots: slots,
        status: KernelStatus::Resizing,
        status_changed: Some(now()),
        status_info: Some("resizing".into()),
        created_at: now(),
        terminated_at: None,
    };
    diesel::insert_into(schema::kernels::table).values(&kernel).execute(&mut conn).await.unwrap();
    let got: KernelRow =
        schema::kernels::table.find(kernel.id).select(KernelRow::as_select()).first(&mut conn).await.unwrap();
    assert_eq!(got, kernel);

    let kp = KeypairRow {
        access_key: "AKTEST0000000000".into(),
        secret_key: "s".repeat(40),
        user_id: Some("admin@example.org".into()),
        is_active: true,
        is_superadmin: true,
        description: None,
        created_at: now(),
        last_used: None,
    };
    diesel::insert_into(schema::keypairs::table).values(&kp).execute(&mut conn).await.unwrap();
    let got: KeypairRow =
        schema::keypairs::table.find(&kp.access_key).select(KeypairRow::as_select()).first(&mut conn).await.unwrap();
    assert_eq!(got, kp);
    assert!(!format!("{got:?}").contains(&kp.secret_key), "Debug hides the secret key");

    let ev = NewAgentEvent {
        agent_id: "i-node01".into(),
        action: EventAction::Restart,
        requester: "AKTEST0000000000".into(),
        requested_at: now(),
        started_at: Some(now()),
        finished_at: Some(now()),
        outcome: EventOutcome::Succeeded,
        http_status: Some(200),
        detail: json!({"watcher": {"result": "ok"}}),
        epoch: Some(42),
    };
    let template = ev.clone();
    let got = stored_event(&mut conn, &ev).await;
    assert_eq!(
        (
            got.agent_id,
            got.action,
            got.requester,
            got.requested_at,
            got.started_at,
            got.finished_at,
            got.outcome,
            got.http_status,
            got.detail
        ),
        (
            ev.agent_id,
            ev.action,
            ev.requester,
            ev.requested_at,
            ev.started_at,
            ev.finished_at,
            ev.outcome,
            ev.http_status,
            ev.detail
        )
    );

    // Every word of the audit vocabulary is a label of its database enum, and reads back as itself.
    let actions = EventAction::ALL.iter().map(|a| (*a, EventOutcome::Succeeded));
    let outcomes = EventOutcome::ALL.iter().map(|o| (EventAction::Start, *o));
    for (action, outcome) in actions.chain(outcomes) {
        let got = stored_event(&mut conn, &NewAgentEvent { action, outcome, ..template.clone() }).await;
        assert_eq!((got.action, got.outcome), (action, outcome));
    }

    let usage = KeypairResourceUsageRow {
        access_key: "AKTEST0000000000".into(),
        concurrency_used: 3,
        sftp_concurrency_used: 1,
        updated_at: now(),
    };
    diesel::insert_into(schema::keypair_resource_usage::table).values(&usage).execute(&mut conn).await.unwrap();
    let got: KeypairResourceUsageRow = schema::keypair_resource_usage::table
        .find(&usage.access_key)
        .select(KeypairResourceUsageRow::as_select())
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(got, usage);
}

/// Inserts `event` and reads its row back.
async fn stored_event(conn: &mut diesel_async::AsyncPgConnection, event: &NewAgentEvent) -> AgentEventRow {
    let id: i64 = diesel::insert_into(schema::agent_events::table)
        .values(event)
        .returning(schema::agent_events::id)
        .get_result(conn)
        .await
        .unwrap();
    schema::agent_events::table.find(id).select(AgentEventRow::as_select()).first(conn).await.unwrap()
}

#[tokio::test]
async fn schema_rejects_values_outside_the_vocabulary() {
    let db = TestDb::new().await;
    let mut conn = db.db.conn().await.unwrap();
    diesel::sql_query("INSERT INTO scaling_groups (name) VALUES ('default') ON CONFLICT DO NOTHING")
        .execute(&mut conn)
        .await
        .unwrap();
    let bad_status = diesel::sql_query(
        "INSERT INTO agents (id, status, region, addr, version, architecture) VALUES ('a', 'RUNNING', 'r', 'tcp://x', 'v', 'x86_64')",
    )
    .execute(&mut conn)
    .await;
    assert!(bad_status.unwrap_err().to_string().contains("agentstatus"));
    let bad_kernel = diesel::sql_query(
        "INSERT INTO sessions (id) VALUES ('00000000-0000-0000-0000-000000000001');
         INSERT INTO kernels (id, session_id, status) VALUES (gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'DONE')",
    )
    .execute(&mut conn)
    .await;
    assert!(bad_kernel.is_err());
    let bad_outcome = diesel::sql_query(
        "INSERT INTO agent_events (agent_id, action, requester, outcome) VALUES ('a', 'start', 'me', 'queued')",
    )
    .execute(&mut conn)
    .await;
    assert!(bad_outcome.unwrap_err().to_string().contains("event_outcome"), "'queued' is not an outcome");
}

#[tokio::test]
async fn unreachable_database_is_reported_as_unavailable_within_the_timeout() {
    let cfg = common::database_config(&format!("postgres://postgres@127.0.0.1:{}/x", common::procs::free_port()));
    let db = db::Db::new(&cfg).unwrap();
    let started = std::time::Instant::now();
    let err = db.conn().await.err().expect("no database listens there");
    assert!(matches!(err, db::DbError::Unavailable(_)), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let problem = agent_supervisor::error::Problem::from(err);
    assert_eq!(problem.code.as_str(), "database_unavailable");
    assert_eq!(problem.status(), 503);
}
