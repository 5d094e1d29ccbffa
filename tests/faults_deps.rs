//! Dependencies failing while a command runs: etcd stopped mid-command and restarted, PostgreSQL stopped
//! mid-command and started again, and PostgreSQL's network cut mid-command and restored. (The basic "dependency down → 503, then recovers" cases are in `supervisor_faults`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    procs::{PrivateEtcd, PrivatePostgres},
    supervisor::{TOKEN, TestApp},
    watcher::{running_watcher, slow_service, terminated},
};
use serde_json::Value;

#[actix_rt::test]
async fn etcd_stopped_mid_command_then_restarted_the_watch_resumes() {
    let mut etcd = PrivateEtcd::start();
    let app = TestApp::spawn_with_etcd(&etcd.endpoint(), |c| {
        c.watcher.command_timeout_ms = 8_000;
    })
    .await;
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("s.log");
    let cmd = slow_service(&log, "1.5");
    let w = running_watcher(TOKEN, &cmd, &[]);
    app.add_agent("i-etcd-mid").await;
    app.register_watcher("i-etcd-mid", w.port()).await;

    // The command resolved the watcher from the mirrored directory before etcd went away: it completes.
    let (status, body) = {
        let restart = app.post("/v1/agents/i-etcd-mid/restart", None);
        let stop = async {
            assert!(terminated(&log, 1, Duration::from_secs(5)).await, "the restart never reached the service");
            etcd.stop();
        };
        futures_util::join!(restart, stop).0
    };
    assert_eq!(status, 200, "a command in flight is not disturbed by etcd stopping: {body}");
    assert!(common::eventually(Duration::from_secs(5), || async { !app.running.directory.is_synced() }).await);
    // While etcd is away the agent keeps the address etcd last gave: commands still reach its watcher.
    let (status, body) = app.post("/v1/agents/i-etcd-mid/restart", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(terminated(&log, 2, Duration::from_secs(5)).await, "the second restart did not reach the service");
    let (_, events) = app.get("/v1/agents/i-etcd-mid/events").await;
    let events = events["events"].as_array().unwrap();
    let outcomes: Vec<&str> = events.iter().take(2).map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["succeeded", "succeeded"], "{events:?}");

    // etcd returns; the daemon re-syncs by itself and follows changes again through the watch: the node's watcher
    // moves to another port and the daemon finds it there.
    etcd.restart();
    assert!(
        common::eventually(Duration::from_secs(15), || async { app.running.directory.is_synced() }).await,
        "no re-sync"
    );
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
    let log = d.path().join("s.log");
    let w = running_watcher(TOKEN, &slow_service(&log, "1.5"), &[]);
    app.register_watcher("i-db-mid", w.port()).await;

    // The audit row is written and the restart has reached the service when the database goes away; it comes back
    // once the command has been answered.
    let (status, body) = {
        let restart = app.post("/v1/agents/i-db-mid/restart", None);
        let cut = async {
            assert!(terminated(&log, 1, Duration::from_secs(5)).await, "the restart never reached the service");
            proxy.cut();
        };
        futures_util::join!(restart, cut).0
    };
    // The watcher did restart the agent, and the caller is told so although the outcome cannot be written yet.
    assert_eq!(status, 200, "{body}");
    proxy.restore();

    // Once the database is back, the audit trail holds no command that is still "running".
    restart_outcome_recorded(&app, "i-db-mid", 1, status, Duration::from_secs(10)).await;

    // And the next command works.
    let (status, body) = app.post("/v1/agents/i-db-mid/restart", None).await;
    assert_eq!(status, 200, "{body}");
}

#[actix_rt::test]
async fn postgres_restarted_mid_command_the_outcome_is_recorded_and_the_next_command_works() {
    // Declared first, dropped last: the server outlives the daemon and the test's database.
    let pg = std::sync::Arc::new(PrivatePostgres::start());
    let app = TestApp::spawn_on_private_postgres(&pg, |c| c.watcher.command_timeout_ms = 8_000).await;
    app.add_agent("i-pg-restart").await;
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("s.log");
    let w = running_watcher(TOKEN, &slow_service(&log, "1.5"), &[]);
    app.register_watcher("i-pg-restart", w.port()).await;
    let (status, body) = app.post("/v1/agents/i-pg-restart/restart", None).await;
    assert_eq!(status, 200, "the pool is warm before the restart: {body}");

    // The audit row is written and the restart has reached the service when PostgreSQL shuts down (fast: every
    // session ended); it starts again once the command has been answered.
    let (status, body, readiness) = {
        let restart = app.post("/v1/agents/i-pg-restart/restart", None);
        let bounce = async {
            assert!(terminated(&log, 2, Duration::from_secs(5)).await, "the restart never reached the service");
            let stopping = pg.clone();
            actix_rt::task::spawn_blocking(move || stopping.stop()).await.unwrap();
            app.request("GET", "/readyz", None, None).await
        };
        let ((status, body), readiness) = futures_util::join!(restart, bounce);
        (status, body, readiness)
    };
    assert_eq!(readiness.0, 503, "not ready while the database is down: {:?}", readiness.1);
    assert!(readiness.1.to_string().contains("database"), "readiness names the database: {:?}", readiness.1);
    // The watcher did restart the agent, and the caller is told so although the outcome cannot be written yet.
    assert_eq!(status, 200, "{body}");
    pg.start_again();

    // With PostgreSQL back, the daemon reconnects by itself, and the audit trail holds no command that is still
    // "running".
    restart_outcome_recorded(&app, "i-pg-restart", 2, status, Duration::from_secs(15)).await;
    let (ready, body) = app.request("GET", "/readyz", None, None).await;
    assert_eq!(ready, 200, "{body}");

    // And the next command works and is recorded.
    let (status, body) = app.post("/v1/agents/i-pg-restart/restart", None).await;
    assert_eq!(status, 200, "{body}");
    let (_, events) = app.get("/v1/agents/i-pg-restart/events").await;
    assert_eq!(
        (events["events"].as_array().map(Vec::len), events["events"][0]["outcome"].as_str()),
        (Some(3), Some("succeeded")),
        "{events}"
    );
}

/// Once the database is back: waits until the agent's audit trail holds `count` events and none is still
/// `running`, then checks that the newest is a finished restart that says what the caller was told (`told`).
async fn restart_outcome_recorded(app: &TestApp, agent: &str, count: usize, told: u16, within: Duration) {
    let path = format!("/v1/agents/{agent}/events");
    let settled = common::eventually(within, || async {
        let (s, b) = app.get(&path).await;
        s == 200
            && b["events"].as_array().is_some_and(|e| e.len() == count && e.iter().all(|e| e["outcome"] != "running"))
    })
    .await;
    let (_, events) = app.get(&path).await;
    assert!(settled, "an audit row stayed open after the database returned: {events}");
    let latest: &Value = &events["events"][0];
    assert_eq!(latest["action"], "restart");
    assert!(latest["finished_at"].is_string(), "{latest}");
    if told == 200 {
        assert_eq!(latest["outcome"], "succeeded", "the audit row says what the caller was told: {latest}");
    }
}
