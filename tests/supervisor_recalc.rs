//! Seed scenarios 6.1–6.3 over HTTP, and coalescing of concurrent requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::supervisor::TestApp;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};

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

async fn kernel(app: &TestApp, agent: &str, session_status: &str, slots: &str) {
    let s = uuid::Uuid::new_v4();
    app.sql(&format!("INSERT INTO sessions (id, access_key, status) VALUES ('{s}', 'AKRECALC', '{session_status}')"))
        .await;
    app.sql(&format!("INSERT INTO kernels (id, session_id, agent, status, occupied_slots) VALUES (gen_random_uuid(), '{s}', '{agent}', 'RUNNING', '{slots}')")).await;
}

#[actix_rt::test]
async fn s6_1_and_6_3_updates_responding_agents_and_warns_about_the_others() {
    let app = TestApp::spawn().await;
    for id in ["i-a", "i-b", "i-idle", "i-lost", "i-dead"] {
        app.add_agent(id).await;
    }
    app.sql("UPDATE agents SET status = 'LOST', occupied_slots = '{\"cpu\": \"99\"}' WHERE id = 'i-lost'").await;
    app.sql("UPDATE agents SET status = 'TERMINATED' WHERE id = 'i-dead'").await;
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
}

#[actix_rt::test]
async fn s6_2_no_agents_is_a_success_that_writes_nothing() {
    let app = TestApp::spawn().await;
    let (status, body) = app.post("/resource/recalculate-usage", None).await;
    assert_eq!((status, body), (200, json!({})));
    let (status, report) = app.post("/v1/usage/recalculate", None).await;
    assert_eq!(status, 200);
    assert_eq!((report["agents_total"].as_u64(), report["access_keys_updated"].as_u64()), (Some(0), Some(0)));
}

#[actix_rt::test]
async fn concurrent_requests_coalesce_into_at_most_two_runs_and_all_are_answered() {
    let app = TestApp::spawn().await;
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
