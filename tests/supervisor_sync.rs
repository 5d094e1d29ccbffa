//! Seed scenarios 1.1 and 1.2 over HTTP, with a real Callosum peer (our agent stand-in) on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent_supervisor::agent_rpc::{StandinAgent, StandinConfig, StandinHandle};
use common::{DatabaseMode, Kernel, supervisor::TestApp};
use serde_json::json;

fn standin(agent_id: &str) -> StandinHandle {
    StandinAgent::start(StandinConfig::new("127.0.0.1:0", agent_id)).unwrap()
}

/// An agent whose `addr` is the stand-in's, with kernels in the given statuses (one session each; in Backend.AI
/// mode the last one is a SYSTEM kernel, which sync sends like any other).
async fn agent_with_kernels(app: &TestApp, id: &str, addr: &str, statuses: &[&str]) -> Vec<(String, String)> {
    app.db.add_agent_with(id, "ALIVE", addr, r#"{"cpu": "8"}"#, "{}").await;
    let mut occupying = Vec::new();
    for (i, status) in statuses.iter().enumerate() {
        let s = app.db.add_session(app.db.user_access_key(), "RUNNING", false).await;
        let kernel = Kernel { agent_addr: addr, status, system: i + 1 == statuses.len(), ..Kernel::on(s, id) };
        let k = kernel.id;
        app.db.add_kernel(kernel).await;
        if !matches!(*status, "PENDING" | "TERMINATED" | "CANCELLED") {
            occupying.push((k.to_string(), s.to_string()));
        }
    }
    occupying.sort();
    occupying
}

async fn s1_1_sync_sends_the_occupying_kernels_and_returns_the_full_row(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    let agent = standin("i-sync");
    let expected = agent_with_kernels(
        &app,
        "i-sync",
        agent.addr(),
        &["RUNNING", "ERROR", "TERMINATING", "PENDING", "TERMINATED", "CANCELLED"],
    )
    .await;

    let (status, body) = app.post("/session/_/sync-agent-registry", Some(json!({"agent": "i-sync"}))).await;
    assert_eq!((status, body), (200, json!({})));
    let calls = agent.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].agent_id.as_deref(), Some("i-sync"));
    let mut sent = calls[0].kernels.clone();
    sent.sort();
    assert_eq!(sent, expected, "RUNNING, ERROR and TERMINATING kernels are sent; PENDING/TERMINATED/CANCELLED are not");

    let (status, body) = app.post("/v1/agents/i-sync/sync", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kernels_sent"], 3);
    assert_eq!(body["rpc_sent"], true);
    let row = body["agent"].as_object().unwrap();
    for column in [
        "id",
        "status",
        "status_changed",
        "region",
        "scaling_group",
        "schedulable",
        "available_slots",
        "occupied_slots",
        "addr",
        "public_host",
        "public_key",
        "first_contact",
        "lost_at",
        "version",
        "architecture",
        "compute_plugins",
        "auto_terminate_abusing_kernel",
    ] {
        assert!(row.contains_key(column), "the row lacks {column}");
    }
    assert_eq!(row["id"], "i-sync");
    assert_eq!(row["status"], "ALIVE");
    assert_eq!(row["available_slots"], json!({"cpu": "8"}));
    assert_eq!(agent.calls().len(), 2);

    let (_, events) = app.get("/v1/agents/i-sync/events").await;
    assert_eq!(events["events"][0]["action"], "sync");
    assert_eq!(events["events"][0]["outcome"], "succeeded");
}

async fn s1_2_unknown_agent_is_404_and_no_rpc_is_sent(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    let agent = standin("invalid-agent");
    let (status, body) = app.post("/session/_/sync-agent-registry", Some(json!({"agent": "invalid-agent"}))).await;
    assert_eq!(
        (status, body["error_code"].as_str(), body["agent_id"].as_str()),
        (404, Some("agent_not_found"), Some("invalid-agent"))
    );
    let (status, _) = app.post("/v1/agents/invalid-agent/sync", None).await;
    assert_eq!(status, 404);
    assert!(agent.calls().is_empty(), "no RPC for an unknown agent");
}

async fn agent_without_occupying_kernels_gets_no_rpc_and_mismatched_addresses_are_warned_about(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    let agent = standin("i-idle");
    agent_with_kernels(&app, "i-idle", agent.addr(), &["TERMINATED"]).await;
    let (status, body) = app.post("/v1/agents/i-idle/sync", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["kernels_sent"].as_i64(), body["rpc_sent"].as_bool()), (Some(0), Some(false)));
    assert!(agent.calls().is_empty());

    let other = standin("i-moved");
    agent_with_kernels(&app, "i-moved", other.addr(), &["RUNNING"]).await;
    app.sql("UPDATE kernels SET agent_addr = 'tcp://10.9.9.9:6001' WHERE agent = 'i-moved'").await;
    let (status, body) = app.post("/v1/agents/i-moved/sync", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kernels_sent"], 1, "kernels under another address are still sent, not dropped");
    let warnings = body["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].as_str().unwrap().contains("tcp://10.9.9.9:6001"));
}

async fn agent_down_slow_or_failing_is_mapped_and_the_actor_stays_healthy(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |c| c.agent_rpc.timeout_ms = 1_000).await;
    // Nothing listens: unavailable.
    let nowhere = format!("tcp://127.0.0.1:{}", common::procs::free_port());
    agent_with_kernels(&app, "i-down", &nowhere, &["RUNNING"]).await;
    let (status, body) = app.post("/session/_/sync-agent-registry", Some(json!({"agent": "i-down"}))).await;
    assert_eq!((status, body["error_code"].as_str()), (502, Some("agent_rpc_unavailable")), "{body}");

    // Slow: timeout, then fine once it is quick again.
    let slow = standin("i-slow");
    agent_with_kernels(&app, "i-slow", slow.addr(), &["RUNNING"]).await;
    slow.set_delay(Duration::from_secs(3));
    let (status, body) = app.post("/v1/agents/i-slow/sync", None).await;
    assert_eq!((status, body["error_code"].as_str()), (504, Some("agent_rpc_timeout")), "{body}");
    slow.set_delay(Duration::ZERO);
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            app.post("/v1/agents/i-slow/sync", None).await.0 == 200
        })
        .await
    );

    // The agent answers FAILURE (it does not know the id it was given).
    let confused = standin("i-someone-else");
    agent_with_kernels(&app, "i-confused", confused.addr(), &["RUNNING"]).await;
    let (status, body) = app.post("/v1/agents/i-confused/sync", None).await;
    assert_eq!((status, body["error_code"].as_str()), (502, Some("agent_rpc_failed")), "{body}");
    assert_eq!(body["remote_exception"], "AgentIdNotFoundError");
    let (_, events) = app.get("/v1/agents/i-confused/events").await;
    assert_eq!(events["events"][0]["outcome"], "failed");

    // And the registry still serves everyone.
    let healthy = standin("i-fine");
    agent_with_kernels(&app, "i-fine", healthy.addr(), &["RUNNING"]).await;
    assert_eq!(app.post("/v1/agents/i-fine/sync", None).await.0, 200);
}

async fn sync_uses_curve_when_the_agent_has_a_public_key(mode: DatabaseMode) {
    use agent_supervisor::agent_rpc::{StandinCurve, keys::CurveKeyPair};
    let manager = CurveKeyPair::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("manager.key_secret");
    std::fs::write(&cert, manager.to_secret_certificate()).unwrap();
    let app = TestApp::spawn_in(mode, |c| {
        c.agent_rpc.manager_keypair = Some(cert.display().to_string());
        c.agent_rpc.timeout_ms = 1_500;
    })
    .await;

    // The agent admits only the manager's key.
    let mut cfg = StandinConfig::new("127.0.0.1:0", "i-curve");
    cfg.curve = Some(StandinCurve {
        keypair: CurveKeyPair::generate().unwrap(),
        allowed_clients: Some(vec![manager.public.clone()]),
    });
    let agent = StandinAgent::start(cfg).unwrap();
    agent_with_kernels(&app, "i-curve", agent.addr(), &["RUNNING"]).await;
    let public = agent.public_key().unwrap().to_owned();
    app.sql(&format!("UPDATE agents SET public_key = '{public}' WHERE id = 'i-curve'")).await;
    let (status, body) = app.post("/v1/agents/i-curve/sync", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(agent.calls().len(), 1);

    // A wrong public key in the database: the handshake fails and the agent is reported unavailable.
    let other = CurveKeyPair::generate().unwrap();
    app.sql(&format!("UPDATE agents SET public_key = '{}' WHERE id = 'i-curve'", other.public)).await;
    let (status, body) = app.post("/v1/agents/i-curve/sync", None).await;
    assert_eq!((status, body["error_code"].as_str()), (502, Some("agent_rpc_unavailable")), "{body}");
    assert_eq!(agent.calls().len(), 1, "nothing reached the agent");
}

common::in_both_modes!(
    s1_1_sync_sends_the_occupying_kernels_and_returns_the_full_row,
    s1_2_unknown_agent_is_404_and_no_rpc_is_sent,
    agent_without_occupying_kernels_gets_no_rpc_and_mismatched_addresses_are_warned_about,
    agent_down_slow_or_failing_is_mapped_and_the_actor_stays_healthy,
    sync_uses_curve_when_the_agent_has_a_public_key,
);
