//! Seed scenarios 2.x–5.x and the common errors, over HTTP against a real supervisor and real `agent-watcher`
//! processes (process back-end) on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::Read,
    net::TcpListener,
    time::{Duration, Instant},
};

use common::{
    DatabaseMode,
    supervisor::{TOKEN, TestApp},
    watcher::{WatcherProcess, running_watcher, slow_service},
};
use serde_json::json;

async fn agent_with_watcher(app: &TestApp, id: &str, extra: &[&str]) -> (WatcherProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let watcher = running_watcher(TOKEN, &slow_service(&dir.path().join("service.log"), "0"), extra);
    app.add_agent(id).await;
    app.register_watcher(id, watcher.port()).await;
    (watcher, dir)
}

fn lines(dir: &tempfile::TempDir) -> Vec<String> {
    std::fs::read_to_string(dir.path().join("service.log")).unwrap_or_default().lines().map(str::to_owned).collect()
}

async fn s2_1_status_returns_the_watchers_json_by_query_body_and_v1(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    let (_w, _d) = agent_with_watcher(&app, "i-up", &[]).await;

    let (status, body) = app.get("/resource/watcher?agent_id=i-up").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent-status"], "active");
    assert_eq!(body["watcher-status"], "active");

    // Client 23.09 sends the id in a JSON body of the GET; the alias `agent` works too.
    let (status, body) = app.get_with_body("/resource/watcher", json!({"agent_id": "i-up"})).await;
    assert_eq!((status, body["agent-status"].as_str()), (200, Some("active")));
    let (status, _) = app.get("/resource/watcher?agent=i-up").await;
    assert_eq!(status, 200);

    let (status, body) = app.get("/v1/agents/i-up/watcher").await;
    assert_eq!(status, 200);
    assert_eq!(body["agent_id"], "i-up");
    assert_eq!(body["watcher"]["agent-status"], "active");
}

async fn s2_2_silent_watcher_times_out_and_the_next_call_works(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    app.add_agent("i-silent").await;
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in silent.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
            let _ = s.read(&mut buf);
            held.push(s);
        }
    });
    app.register_watcher("i-silent", port).await;

    let started = Instant::now();
    let (status, body) = app.get("/resource/watcher?agent_id=i-silent").await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error_code"], "watcher_timeout");
    assert_eq!(body["agent_id"], "i-silent");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "took {took:?}");

    // The actor is still healthy: once the watcher is back, the next call works.
    let dir = tempfile::tempdir().unwrap();
    let watcher = running_watcher(TOKEN, &slow_service(&dir.path().join("service.log"), "0"), &[]);
    app.register_watcher("i-silent", watcher.port()).await;
    let (status, body) = app.get("/resource/watcher?agent_id=i-silent").await;
    assert_eq!((status, body["agent-status"].as_str()), (200, Some("active")), "{body}");
}

async fn s2_3_wrong_token_is_watcher_auth_failed_with_the_watchers_status(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let watcher = running_watcher("a-different-token", &slow_service(&dir.path().join("service.log"), "0"), &[]);
    app.add_agent("i-tok").await;
    app.register_watcher("i-tok", watcher.port()).await;

    let (status, body) = app.get("/resource/watcher?agent_id=i-tok").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error_code"], "watcher_auth_failed");
    assert!(!body.to_string().contains(TOKEN), "the token never appears in answers");
}

async fn s3_start_a_stopped_agent_then_409_when_running_without_calling_start(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    let (_w, dir) = agent_with_watcher(&app, "i-start", &["--no-autostart"]).await;
    assert!(lines(&dir).is_empty());

    let (status, body) = app.post("/resource/watcher/agent/start", Some(json!({"agent_id": "i-start"}))).await;
    assert_eq!((status, &body), (200, &json!({"result": "ok"})));
    assert_eq!(lines(&dir).len(), 1, "one start");

    let (status, body) = app.post("/resource/watcher/agent/start", Some(json!({"agent": "i-start"}))).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error_code"], "agent_already_running");
    assert_eq!(lines(&dir).len(), 1, "the watcher was not asked to start again");

    let (status, body) = app.post("/v1/agents/i-start/start", None).await;
    assert_eq!((status, body["error_code"].as_str()), (409, Some("agent_already_running")));
}

async fn s3_3_start_failure_carries_the_reason_the_watcher_saw(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    let failing = ["sh", "-c", "echo 'cannot allocate GPU memory: out of resources' >&2; exit 3"];
    let watcher = WatcherProcess::process_backend(TOKEN, &failing, &["--no-autostart"]);
    app.add_agent("i-fail").await;
    app.register_watcher("i-fail", watcher.port()).await;

    let (status, body) = app.post("/resource/watcher/agent/start", Some(json!({"agent_id": "i-fail"}))).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error_code"], "agent_start_failed");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("out of resources"), "{detail}");
    assert!(detail.contains('3'), "exit status is reported: {detail}");
}

async fn s4_stop_running_then_409_stopped_and_kernels_need_force(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    let (_w, dir) = agent_with_watcher(&app, "i-stop", &[]).await;
    app.add_running_kernels("i-stop", 2).await;

    let (status, body) = app.post("/resource/watcher/agent/stop", Some(json!({"agent_id": "i-stop"}))).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error_code"], "agent_has_running_kernels");
    assert_eq!(body["kernel_count"], 2);
    assert_eq!(lines(&dir).len(), 1, "not stopped");

    let (status, body) =
        app.post("/resource/watcher/agent/stop", Some(json!({"agent_id": "i-stop", "force": true}))).await;
    assert_eq!((status, &body), (200, &json!({"result": "ok"})));
    assert!(lines(&dir).last().unwrap().starts_with("stop"));

    let (status, body) = app.post("/v1/agents/i-stop/stop?force=true", None).await;
    assert_eq!((status, body["error_code"].as_str()), (409, Some("agent_already_stopped")), "{body}");

    // Without kernels a plain stop works.
    let (_w2, dir2) = agent_with_watcher(&app, "i-stop2", &[]).await;
    let (status, body) = app.post("/v1/agents/i-stop2/stop", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], json!({"result": "ok"}));
    assert!(body["event_id"].as_i64().is_some());
    assert!(lines(&dir2).last().unwrap().starts_with("stop"));
}

async fn s5_restart_running_and_stopped_agents(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    let (_w, dir) = agent_with_watcher(&app, "i-re", &[]).await;
    let (status, body) = app.post("/resource/watcher/agent/restart", Some(json!({"agent_id": "i-re"}))).await;
    assert_eq!((status, &body), (200, &json!({"result": "ok"})));
    let l = lines(&dir);
    assert_eq!(l.len(), 3, "{l:?}");
    assert!(l[1].starts_with("stop") && l[2].starts_with("start"));

    let (_w2, dir2) = agent_with_watcher(&app, "i-re2", &["--no-autostart"]).await;
    let (status, body) = app.post("/v1/agents/i-re2/restart", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(lines(&dir2).len(), 1, "restart of a stopped agent starts it");
}

async fn s5_3_restart_slower_than_the_command_timeout_is_504_and_the_next_command_is_served(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |c| c.watcher.command_timeout_ms = 1_500).await;
    let dir = tempfile::tempdir().unwrap();
    let watcher = running_watcher(TOKEN, &slow_service(&dir.path().join("service.log"), "3"), &[]);
    app.add_agent("i-slow").await;
    app.register_watcher("i-slow", watcher.port()).await;

    let started = Instant::now();
    let (status, body) = app.post("/resource/watcher/agent/restart", Some(json!({"agent_id": "i-slow"}))).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error_code"], "watcher_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));

    let (status, events) = app.get("/v1/agents/i-slow/events").await;
    assert_eq!(status, 200);
    assert_eq!(events["events"][0]["outcome"], "unknown", "{events}");

    // The actor serves the next command (our watcher finishes the restart first).
    let (status, body) = app.get("/resource/watcher?agent_id=i-slow").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            app.get("/resource/watcher?agent_id=i-slow").await.1["agent-status"] == "active"
        })
        .await
    );
    // The stop is served too: the service needs 3 s for SIGTERM, so the daemon stops waiting after 1.5 s, and the
    // watcher carries on until the agent is down.
    let (status, body) = app.post("/v1/agents/i-slow/stop", None).await;
    assert_eq!((status, body["error_code"].as_str()), (504, Some("watcher_timeout")), "{body}");
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            app.get("/resource/watcher?agent_id=i-slow").await.1["agent-status"] == "inactive"
        })
        .await,
        "the stop was not carried out"
    );
}

async fn unknown_agents_bad_ids_and_bad_bodies(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    let (status, body) = app.get("/resource/watcher?agent_id=invalid-agent").await;
    assert_eq!(
        (status, body["error_code"].as_str(), body["agent_id"].as_str()),
        (404, Some("agent_not_found"), Some("invalid-agent"))
    );
    let (status, body) = app.post("/resource/watcher/agent/start", Some(json!({"agent_id": "nope"}))).await;
    assert_eq!((status, body["error_code"].as_str()), (404, Some("agent_not_found")));
    let (status, body) = app.post("/resource/watcher/agent/start", Some(json!({"agent_id": ""}))).await;
    assert_eq!(
        (status, body["error_code"].as_str(), body["field"].as_str()),
        (400, Some("invalid_request"), Some("agent_id"))
    );
    let (status, body) = app.post("/resource/watcher/agent/stop", Some(json!({"agent_id": "a", "forse": true}))).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("forse")));
    let (status, body) = app.get("/resource/watcher").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("agent_id")));
    let (status, body) = app.get(&format!("/v1/agents/{}/watcher", "x".repeat(65))).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("agent_id")));
    let (status, not_found) = app.get("/no/such/route").await;
    assert_eq!((status, not_found["error_code"].as_str()), (404, Some("not_found")));
    let (status, not_allowed) = app.post("/resource/watcher", None).await;
    assert_eq!((status, not_allowed["error_code"].as_str()), (405, Some("method_not_allowed")));
    // Every error is problem+json with the documented members.
    for doc in [&not_found, &not_allowed] {
        for key in ["type", "title", "status", "error_code", "detail", "msg"] {
            assert!(doc.get(key).is_some(), "{key} is missing from {doc}");
        }
    }
}

async fn agent_without_etcd_registration_is_watcher_not_registered(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    app.add_agent("i-unregistered").await;
    let (status, body) = app.get("/resource/watcher?agent_id=i-unregistered").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error_code"], "watcher_not_registered");
    assert!(body["detail"].as_str().unwrap().contains("nodes/agents/i-unregistered/ip"));
}

async fn unreachable_watcher_is_502(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    app.add_agent("i-gone").await;
    app.register_watcher("i-gone", common::procs::free_port()).await;
    let (status, body) = app.get("/resource/watcher?agent_id=i-gone").await;
    assert_eq!((status, body["error_code"].as_str()), (502, Some("watcher_unreachable")), "{body}");
}

async fn commands_are_audited_with_requester_times_and_outcome(mode: DatabaseMode) {
    let app = TestApp::spawn_in(mode, |_| {}).await;
    let (_w, _d) = agent_with_watcher(&app, "i-audit", &[]).await;
    app.post("/v1/agents/i-audit/restart", None).await;
    app.post("/v1/agents/i-audit/start", None).await;
    let (status, body) = app.get("/v1/agents/i-audit/events?limit=10").await;
    assert_eq!(status, 200);
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{body}");
    assert_eq!(
        (events[0]["action"].as_str(), events[0]["outcome"].as_str(), events[0]["http_status"].as_i64()),
        (Some("start"), Some("rejected"), Some(409))
    );
    assert_eq!(
        (events[1]["action"].as_str(), events[1]["outcome"].as_str(), events[1]["http_status"].as_i64()),
        (Some("restart"), Some("succeeded"), Some(200))
    );
    for e in events {
        assert_eq!(e["requester"], app.admin.access_key.as_str(), "the verified access key is audited");
        assert!(e["requested_at"].is_string() && e["started_at"].is_string() && e["finished_at"].is_string());
    }
    let (status, list) = app.get("/v1/agents").await;
    assert_eq!(status, 200);
    let agent = &list["agents"][0];
    assert_eq!(agent["id"], "i-audit");
    assert_eq!(agent["supervision"]["recent"][0]["outcome"], "rejected");
    assert_eq!(
        agent["supervision"]["watcher"]["agent-status"]
            .as_str()
            .or(agent["supervision"]["watcher"]["agent_status"].as_str()),
        Some("active")
    );
}

common::in_both_modes!(
    s2_1_status_returns_the_watchers_json_by_query_body_and_v1,
    s2_2_silent_watcher_times_out_and_the_next_call_works,
    s2_3_wrong_token_is_watcher_auth_failed_with_the_watchers_status,
    s3_start_a_stopped_agent_then_409_when_running_without_calling_start,
    s3_3_start_failure_carries_the_reason_the_watcher_saw,
    s4_stop_running_then_409_stopped_and_kernels_need_force,
    s5_restart_running_and_stopped_agents,
    s5_3_restart_slower_than_the_command_timeout_is_504_and_the_next_command_is_served,
    unknown_agents_bad_ids_and_bad_bodies,
    agent_without_etcd_registration_is_watcher_not_registered,
    unreachable_watcher_is_502,
    commands_are_audited_with_requester_times_and_outcome,
);
