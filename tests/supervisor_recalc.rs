//! Seed scenarios 6.1–6.3 over HTTP, and coalescing of concurrent requests, in both database modes: on the daemon's
//! own tables (concurrency in `keypair_resource_usage`) and on Backend.AI's (concurrency in a real Redis).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{DatabaseMode, Kernel, procs::PrivateRedis, supervisor::TestApp};
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

/// A daemon in `mode`; in Backend.AI mode with a Redis of its own for the concurrency counts.
async fn app_in(mode: DatabaseMode) -> (TestApp, Option<PrivateRedis>) {
    let redis = (mode == DatabaseMode::BackendAi).then(|| PrivateRedis::start(None));
    let url = redis.as_ref().map(PrivateRedis::url);
    let app = TestApp::spawn_in(mode, |c| c.redis.url = url.map(agent_supervisor::config::Secret::new)).await;
    (app, redis)
}

async fn occupied(app: &TestApp, id: &str) -> Value {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        occupied_slots: Value,
    }
    let mut conn = app.db.db.conn().await.unwrap();
    let rows: Vec<Row> = diesel::sql_query(format!("SELECT occupied_slots FROM agents WHERE id = '{id}'"))
        .load(&mut conn)
        .await
        .unwrap();
    rows.into_iter().next().unwrap().occupied_slots
}

/// A session in `session_status` with one RUNNING kernel on `agent` occupying `slots`.
async fn kernel(app: &TestApp, agent: &str, session_status: &str, slots: &str) {
    let session = app.db.add_session(app.db.user_access_key(), session_status, false).await;
    app.db.add_kernel(Kernel { slots, ..Kernel::on(session, agent) }).await;
}

async fn s6_1_and_6_3_updates_responding_agents_and_warns_about_the_others(mode: DatabaseMode) {
    let (app, redis) = app_in(mode).await;
    for id in ["i-a", "i-b", "i-idle"] {
        app.add_agent(id).await;
    }
    app.db.add_agent_with("i-lost", "LOST", "tcp://127.0.0.1:6001", "{}", r#"{"cpu": "99"}"#).await;
    app.db.add_agent_with("i-dead", "TERMINATED", "tcp://127.0.0.1:6001", "{}", "{}").await;
    app.sql("UPDATE agents SET occupied_slots = '{\"cpu\": \"7\"}' WHERE id = 'i-idle'").await;
    kernel(&app, "i-a", "RUNNING", r#"{"cpu": "1.5", "mem": "1073741824", "cuda.shares": "0.1"}"#).await;
    kernel(&app, "i-a", "ERROR", r#"{"cpu": "0.5", "mem": "1073741824", "cuda.shares": "0.2"}"#).await;
    kernel(&app, "i-a", "CANCELLED", r#"{"cpu": "100"}"#).await;
    kernel(&app, "i-b", "TERMINATING", r#"{"cpu": "2"}"#).await;
    kernel(&app, "i-lost", "RUNNING", r#"{"cpu": "1"}"#).await;

    let (status, body) = app.post("/resource/recalculate-usage", None).await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(occupied(&app, "i-a").await, json!({"cpu": "2.0", "mem": "2147483648", "cuda.shares": "0.3"}));
    assert_eq!(occupied(&app, "i-b").await, json!({"cpu": "2", "mem": "0"}));
    assert_eq!(occupied(&app, "i-idle").await, json!({}));
    assert_eq!(occupied(&app, "i-lost").await, json!({"cpu": "99"}), "LOST agents are left untouched");

    let (status, report) = app.post("/v1/usage/recalculate", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["agents_updated"], json!(["i-a", "i-b"]));
    assert_eq!(report["agents_reset"], json!(["i-idle"]));
    let skipped: Vec<&str> =
        report["agents_skipped"].as_array().unwrap().iter().map(|s| s["agent_id"].as_str().unwrap()).collect();
    assert_eq!(skipped, ["i-dead", "i-lost"]);
    assert!(report["elapsed_ms"].is_u64() && report["attempts"] == 1);
    assert_eq!(report["concurrency_error"], Value::Null, "{report}");

    // One access key owns every session. Standalone counts every session but PENDING/TERMINATED/CANCELLED, in its
    // table; Backend.AI (23.09) also leaves out TERMINATING, and keeps the count in Redis.
    let user = app.db.user_access_key();
    match redis {
        None => {
            assert_eq!(report["concurrency_store"], "database");
            assert_eq!(report["access_keys_updated"], 1);
            #[derive(diesel::QueryableByName)]
            struct Used {
                #[diesel(sql_type = diesel::sql_types::Integer)]
                concurrency_used: i32,
            }
            let mut conn = app.db.db.conn().await.unwrap();
            let used: Used = diesel::sql_query(format!(
                "SELECT concurrency_used FROM keypair_resource_usage WHERE access_key = '{user}'"
            ))
            .get_result(&mut conn)
            .await
            .unwrap();
            assert_eq!(used.concurrency_used, 4);
        }
        Some(redis) => {
            assert_eq!(report["concurrency_store"], "redis");
            assert_eq!(report["access_keys_updated"], 1);
            assert_eq!(redis.concurrency_keys(), [(format!("keypair.concurrency_used.{user}"), "3".to_owned())]);
        }
    }
}

async fn s6_2_no_agents_is_a_success_that_writes_nothing(mode: DatabaseMode) {
    let (app, redis) = app_in(mode).await;
    let (status, body) = app.post("/resource/recalculate-usage", None).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, report) = app.post("/v1/usage/recalculate", None).await;
    assert_eq!(status, 200);
    assert_eq!((report["agents_total"].as_u64(), report["access_keys_updated"].as_u64()), (Some(0), Some(0)));
    if let Some(redis) = redis {
        assert!(redis.concurrency_keys().is_empty(), "nothing is written to Redis either");
    }
}

async fn concurrent_requests_coalesce_into_at_most_two_runs_and_all_are_answered(mode: DatabaseMode) {
    let (app, _redis) = app_in(mode).await;
    app.add_agent("i-c").await;
    kernel(&app, "i-c", "RUNNING", r#"{"cpu": "1"}"#).await;
    let first_run = app.post("/v1/usage/recalculate", None).await.1["run"].as_u64().unwrap();
    let mut pending = Vec::new();
    for _ in 0..8 {
        let req = app.signed("POST", "/v1/usage/recalculate", "text/plain", &app.admin);
        pending.push(actix_rt::spawn(async move { common::supervisor::send(req, None).await }));
    }
    let mut runs = std::collections::BTreeSet::new();
    for p in pending {
        let (status, body) = p.await.unwrap();
        assert_eq!(status, 200, "{body}");
        runs.insert(body["run"].as_u64().unwrap());
    }
    assert!((1..=2).contains(&runs.len()), "8 concurrent requests were answered by runs {runs:?}");
    assert!(runs.iter().all(|r| *r > first_run));
    assert_eq!(occupied(&app, "i-c").await, json!({"cpu": "1", "mem": "0"}));
}

common::in_both_modes!(
    s6_1_and_6_3_updates_responding_agents_and_warns_about_the_others,
    s6_2_no_agents_is_a_success_that_writes_nothing,
    concurrent_requests_coalesce_into_at_most_two_runs_and_all_are_answered,
);
