//! Dependencies failing while a command runs: etcd stopped mid-command and restarted, PostgreSQL cut mid-command
//! and restored. (The basic "dependency down → 503, then recovers" cases are in `supervisor_faults`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    procs::PrivateEtcd,
    supervisor::{TOKEN, TestApp},
    watcher::{running_watcher, slow_service},
};
use serde_json::Value;

#[actix_rt::test]
async fn etcd_stopped_mid_command_then_restarted_the_watch_resumes() {
    let mut etcd = PrivateEtcd::start();
    let endpoint = etcd.endpoint();
    let app = TestApp::spawn_with(|c| {
        c.etcd.endpoints = vec![endpoint.clone()];
        c.etcd.timeout_ms = 500;
        c.watcher.command_timeout_ms = 8_000;
    })
    .await;
    let d = tempfile::tempdir().unwrap();
    let cmd = slow_service(&d.path().join("s.log"), "1.5");
    let w = running_watcher(TOKEN, &cmd, &[]);
    app.add_agent("i-etcd-mid").await;
    app.register_watcher("i-etcd-mid", w.port()).await;

    // The command resolved the watcher from the mirrored directory before etcd went away: it completes.
    let (status, body) = {
        let restart = app.post("/v1/agents/i-etcd-mid/restart", None);
        let stop = async {
            actix_rt::time::sleep(Duration::from_millis(300)).await;
            etcd.stop();
        };
        futures_util::join!(restart, stop).0
    };
    assert_eq!(status, 200, "a command in flight is not disturbed by etcd stopping: {body}");
    assert!(common::eventually(Duration::from_secs(5), || async { !app.running.directory.is_synced() }).await);
    let started = Instant::now();
    let (status, body) = app.post("/v1/agents/i-etcd-mid/restart", None).await;
    assert_eq!((status, body["error_code"].as_str()), (503, Some("etcd_unavailable")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let (_, events) = app.get("/v1/agents/i-etcd-mid/events").await;
    let events = events["events"].as_array().unwrap();
    assert_eq!((events[0]["outcome"].as_str(), events[0]["http_status"].as_i64()), (Some("failed"), Some(503)), "{events:?}");
    assert_eq!(events[1]["outcome"], "succeeded");

    // etcd returns; the daemon re-syncs by itself and follows changes again through the watch: the node's watcher
    // moves to another port and the daemon finds it there.
    etcd.restart();
    assert!(common::eventually(Duration::from_secs(15), || async { app.running.directory.is_synced() }).await, "no re-sync");
    let moved = running_watcher(TOKEN, &cmd, &[]);
    drop(w);
    app.register_watcher("i-etcd-mid", moved.port()).await;
    let (status, body) = app.get("/resource/watcher?agent_id=i-etcd-mid").await;
    assert_eq!((status, body["agent-status"].as_str()), (200, Some("active")), "{body}");
    let (status, body) = app.post("/v1/agents/i-etcd-mid/restart", None).await;
    assert_eq!(status, 200, "{body}");
}

#[actix_rt::test]
async fn database_cut_mid_command_leaves_no_open_audit_row_once_it_returns() {
    let (app, proxy) = TestApp::spawn_behind_db_proxy(|c| c.watcher.command_timeout_ms = 8_000).await;
    app.add_agent("i-db-mid").await;
    let d = tempfile::tempdir().unwrap();
    let w = running_watcher(TOKEN, &slow_service(&d.path().join("s.log"), "1.5"), &[]);
    app.register_watcher("i-db-mid", w.port()).await;

    // The audit row is written, then the database goes away while the watcher restarts the agent, and comes back
    // 3 s later, after the command has finished.
    let (status, body) = {
        let restart = app.post("/v1/agents/i-db-mid/restart", None);
        let cut = async {
            actix_rt::time::sleep(Duration::from_millis(300)).await;
            proxy.cut();
            actix_rt::time::sleep(Duration::from_secs(3)).await;
            proxy.restore();
        };
        futures_util::join!(restart, cut).0
    };
    eprintln!("restart while the database was cut: {status} {body}");
    // The watcher did restart the agent; the answer says so or says that the outcome could not be recorded.
    assert!(matches!(status, 200 | 503), "{status} {body}");

    // Once the database is back, the audit trail holds no command that is still "running".
    let settled = common::eventually(Duration::from_secs(10), || async {
        let (s, b) = app.get("/v1/agents/i-db-mid/events").await;
        s == 200 && b["events"].as_array().is_some_and(|e| !e.is_empty() && e.iter().all(|e| e["outcome"] != "running"))
    })
    .await;
    let (_, events) = app.get("/v1/agents/i-db-mid/events").await;
    assert!(settled, "an audit row stayed open after the database returned: {events}");
    let first: &Value = &events["events"][0];
    assert_eq!(first["action"], "restart");
    assert!(first["finished_at"].is_string(), "{first}");
    if status == 200 {
        assert_eq!(first["outcome"], "succeeded", "the audit row says what the caller was told: {first}");
    }

    // And the next command works.
    let (status, body) = app.post("/v1/agents/i-db-mid/restart", None).await;
    assert_eq!(status, 200, "{body}");
}
