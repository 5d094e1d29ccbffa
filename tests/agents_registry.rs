//! Standalone mode's agent registry and liveness against real PostgreSQL, etcd and watchers: registering writes
//! the row and the watcher's etcd keys together (and neither when etcd or the commit fails), changes and removals
//! are audited, a node that dies becomes LOST and comes back ALIVE, and etcd's unregistered agents can be listed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent_supervisor::{
    actors::ListAgentActors,
    config::{Config, DatabaseMode, Secret},
    db::queries,
    domain::{AgentStatus, EventAction},
    etcd::Etcd,
};
use common::{
    Kernel,
    procs::{PrivateEtcd, free_port},
    supervisor::{METRICS_TOKEN, TOKEN, TestApp},
    watcher::{WatcherProcess, running_watcher, slow_service},
};
use serde_json::{Value, json};

async fn etcd_keys(app: &TestApp, id: &str) -> (Option<String>, Option<String>) {
    let etcd = Etcd::connect(&app.config.etcd).await.unwrap();
    let ip = etcd.get(&format!("nodes/agents/{id}/ip")).await.unwrap();
    let port = etcd.get(&format!("nodes/agents/{id}/watcher_port")).await.unwrap();
    (ip, port)
}

async fn row(app: &TestApp, id: &str) -> Option<agent_supervisor::db::models::AgentRow> {
    queries::find_agent(&mut app.db.db.conn().await.unwrap(), id).await.unwrap()
}

async fn actions(app: &TestApp, id: &str) -> Vec<EventAction> {
    let events = queries::list_events(&mut app.db.db.conn().await.unwrap(), id, 100).await.unwrap();
    events.iter().rev().map(|e| e.action).collect()
}

#[actix_rt::test]
async fn a_registered_agent_is_supervised_with_no_hand_written_etcd_key() {
    let app = TestApp::spawn().await;
    let d = tempfile::tempdir().unwrap();
    let w = running_watcher(TOKEN, &slow_service(&d.path().join("s.log"), "0"), &[]);

    let (status, body) = app
        .post(
            "/v1/agents",
            Some(json!({
                "id": "i-reg", "addr": "tcp://127.0.0.1:6001", "ip": "127.0.0.1", "watcher_port": w.port(),
                "available_slots": {"cpu": "16", "mem": "68719476736", "cuda.shares": "1.5"},
                "region": "seoul", "architecture": "aarch64", "version": "24.03.1",
            })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["created"].as_bool(), body["watcher_port"].as_u64()), (Some(true), Some(w.port().into())));
    assert_eq!(body["agent"]["status"], "ALIVE");
    assert_eq!(body["agent"]["available_slots"], json!({"cpu": "16", "mem": "68719476736", "cuda.shares": "1.5"}));
    assert_eq!(etcd_keys(&app, "i-reg").await, (Some("127.0.0.1".into()), Some(w.port().to_string())));
    // Its actor exists at once, and status works through the keys the registration wrote.
    let actors = app.running.supervisor.registry().send(ListAgentActors).await.unwrap();
    assert!(actors.iter().any(|(id, _)| id.as_str() == "i-reg"));
    let (status, body) = app.get("/v1/agents/i-reg/watcher").await;
    assert_eq!((status, &body["watcher"]["agent-status"]), (200, &json!("active")), "{body}");

    // Registering again replaces the registration (not the status); the default port is used without one.
    let (status, body) =
        app.post("/v1/agents", Some(json!({"id": "i-reg", "addr": "tcp://127.0.0.2:6001", "ip": "127.0.0.2"}))).await;
    assert_eq!((status, body["created"].as_bool()), (200, Some(false)), "{body}");
    assert_eq!(etcd_keys(&app, "i-reg").await, (Some("127.0.0.2".into()), None));
    assert_eq!(row(&app, "i-reg").await.unwrap().addr, "tcp://127.0.0.2:6001");

    // PATCH: some fields; the others stay. The watcher's port comes back, status works again.
    let (status, body) = app
        .request(
            "PATCH",
            "/v1/agents/i-reg",
            Some(json!({"schedulable": false, "ip": "127.0.0.1", "watcher_port": w.port(),
                        "available_slots": {"cpu": "8"}})),
            Some(&app.admin),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = row(&app, "i-reg").await.unwrap();
    assert_eq!((r.schedulable, r.addr.as_str(), r.region.as_str()), (false, "tcp://127.0.0.2:6001", "local"));
    assert_eq!(etcd_keys(&app, "i-reg").await, (Some("127.0.0.1".into()), Some(w.port().to_string())));
    assert_eq!(app.get("/v1/agents/i-reg/watcher").await.0, 200);

    // DELETE: refused while a kernel occupies the agent; forced, the row and the keys go, the trail stays.
    app.add_running_kernels("i-reg", 1).await;
    let (status, body) = app.request("DELETE", "/v1/agents/i-reg", None, Some(&app.admin)).await;
    assert_eq!(
        (status, body["error_code"].as_str(), body["kernel_count"].as_i64()),
        (409, Some("agent_has_running_kernels"), Some(1))
    );
    let (status, body) = app.request("DELETE", "/v1/agents/i-reg?force=true", None, Some(&app.admin)).await;
    assert_eq!((status, body["kernels_left"].as_i64()), (200, Some(1)), "{body}");
    assert!(row(&app, "i-reg").await.is_none());
    assert_eq!(etcd_keys(&app, "i-reg").await, (None, None));
    assert_eq!(
        actions(&app, "i-reg").await.into_iter().filter(|a| *a != EventAction::Observe).collect::<Vec<_>>(),
        [EventAction::Register, EventAction::Register, EventAction::Update, EventAction::Deregister]
    );
    let (status, body) = app.get("/v1/agents/i-reg/watcher").await;
    assert_eq!((status, body["error_code"].as_str()), (404, Some("agent_not_found")));
    let (status, _) = app.request("DELETE", "/v1/agents/i-reg", None, Some(&app.admin)).await;
    assert_eq!(status, 404);
}

#[actix_rt::test]
async fn bad_registrations_are_400_naming_the_field_and_write_nothing() {
    let app = TestApp::spawn().await;
    let ok = json!({"id": "i-bad", "addr": "tcp://127.0.0.1:6001", "ip": "127.0.0.1"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    for (body, field) in [
        (with("id", json!("no spaces allowed")), "id"),
        (with("id", json!("x".repeat(65))), "id"),
        (with("adress", json!("tcp://h:1")), "adress"),
        (with("addr", json!("127.0.0.1:6001")), "addr"),
        (with("addr", json!("tcp://127.0.0.1:0")), "addr"),
        (with("public_key", json!("too-short")), "public_key"),
        (with("available_slots", json!({"cpu": "-1"})), "available_slots"),
        (with("available_slots", json!({"cpu": "eight"})), "available_slots"),
        (with("available_slots", json!({"cpu": 1.5})), "available_slots"),
        (with("watcher_port", json!(70000)), "watcher_port"),
        (with("watcher_port", json!(0)), "watcher_port"),
        (with("ip", json!("not an address")), "ip"),
        (json!({"id": "i-bad", "ip": "127.0.0.1"}), "body"),
    ] {
        let (status, problem) = app.post("/v1/agents", Some(body.clone())).await;
        assert_eq!((status, problem["field"].as_str()), (400, Some(field)), "{body} -> {problem}");
        assert_eq!(problem["error_code"], "invalid_request");
    }
    // No ip and none in etcd.
    let (status, problem) = app.post("/v1/agents", Some(json!({"id": "i-bad", "addr": "tcp://127.0.0.1:6001"}))).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("ip")), "{problem}");
    // A scaling group that does not exist, unless asked to create it.
    let (status, problem) = app.post("/v1/agents", Some(with("scaling_group", json!("gpu-a100")))).await;
    assert_eq!(
        (status, problem["error_code"].as_str(), problem["scaling_group"].as_str()),
        (404, Some("scaling_group_not_found"), Some("gpu-a100"))
    );
    assert!(row(&app, "i-bad").await.is_none() && etcd_keys(&app, "i-bad").await == (None, None), "nothing written");
    let mut create = with("scaling_group", json!("gpu-a100"));
    create["create_scaling_group"] = json!(true);
    let (status, body) = app.post("/v1/agents", Some(create)).await;
    assert_eq!((status, body["agent"]["scaling_group"].as_str()), (200, Some("gpu-a100")), "{body}");
    // PATCH with nothing to change, or an unknown field.
    for body in [json!({}), json!({"schedulabel": true})] {
        let (status, _) = app.request("PATCH", "/v1/agents/i-bad", Some(body), Some(&app.admin)).await;
        assert_eq!(status, 400);
    }
    // Only a superadmin may register.
    let user = app.add_keypair(false, true).await;
    let (status, _) = app.request("POST", "/v1/agents", Some(ok), Some(&user)).await;
    assert_eq!(status, 403);
}

#[actix_rt::test]
async fn etcd_down_during_registration_is_503_and_leaves_no_half_registered_agent() {
    let mut etcd = PrivateEtcd::start();
    let app = TestApp::spawn_with_etcd(&etcd.endpoint(), |_| {}).await;
    etcd.stop();
    let body = json!({"id": "i-half", "addr": "tcp://127.0.0.1:6001", "ip": "127.0.0.1", "watcher_port": 6009});
    let (status, problem) = app.post("/v1/agents", Some(body.clone())).await;
    assert_eq!((status, problem["error_code"].as_str()), (503, Some("etcd_unavailable")), "{problem}");
    assert!(row(&app, "i-half").await.is_none(), "no row without its keys");
    etcd.restart();
    assert_eq!(etcd_keys(&app, "i-half").await, (None, None), "no keys without a row");
    let (status, body) = app.post("/v1/agents", Some(body)).await;
    assert_eq!(status, 200, "{body}");
    assert!(row(&app, "i-half").await.is_some());
}

/// The commit fails after etcd took the new keys (a deferred constraint of the test's own refuses the row at commit
/// time): the keys are put back as they were, so neither side changed.
#[actix_rt::test]
async fn a_commit_that_fails_after_etcd_was_written_puts_the_keys_back() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/v1/agents",
            Some(json!({"id": "i-commit", "addr": "tcp://127.0.0.1:6001", "ip": "10.0.0.1", "watcher_port": 6009})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.sql(
        "CREATE FUNCTION refuse_moves() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.addr LIKE '%10.9.9.9%' THEN RAISE EXCEPTION 'refused at commit'; END IF; RETURN NEW; END $$;
         CREATE CONSTRAINT TRIGGER refuse_moves AFTER INSERT OR UPDATE ON agents
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_moves();",
    )
    .await;
    let moved = json!({"id": "i-commit", "addr": "tcp://10.9.9.9:6001", "ip": "10.9.9.9", "watcher_port": 7000});
    let (status, problem) = app.post("/v1/agents", Some(moved)).await;
    assert_eq!(status, 500, "{problem}");
    assert_eq!(row(&app, "i-commit").await.unwrap().addr, "tcp://127.0.0.1:6001", "the row is as it was");
    assert_eq!(etcd_keys(&app, "i-commit").await, (Some("10.0.0.1".into()), Some("6009".into())), "so are the keys");
    let new = json!({"id": "i-new", "addr": "tcp://10.9.9.9:6001", "ip": "10.9.9.9"});
    let (status, _) = app.post("/v1/agents", Some(new)).await;
    assert_eq!(status, 500);
    assert_eq!((row(&app, "i-new").await.is_none(), etcd_keys(&app, "i-new").await), (true, (None, None)));
}

/// etcd is cut between the two writes: it took the new keys, then the commit fails (a deferred constraint of the
/// test's own, held at commit time until etcd is down) and the keys cannot be put back at once. Once etcd is back,
/// the daemon puts them back by itself: the row and the keys agree again.
#[actix_rt::test]
async fn etcd_cut_between_the_two_writes_is_consistent_after_recovery() {
    use diesel::{dsl::sql, sql_types::BigInt};
    use diesel_async::RunQueryDsl;

    let mut etcd = PrivateEtcd::start();
    let app = TestApp::spawn_with_etcd(&etcd.endpoint(), |_| {}).await;
    let first = json!({"id": "i-cut", "addr": "tcp://127.0.0.1:6001", "ip": "10.0.0.1", "watcher_port": 6009});
    let (status, body) = app.post("/v1/agents", Some(first)).await;
    assert_eq!(status, 200, "{body}");
    app.sql(
        "CREATE FUNCTION hold_then_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.addr LIKE '%10.9.9.9%' THEN
             PERFORM pg_advisory_xact_lock(4242); RAISE EXCEPTION 'refused at commit';
         END IF; RETURN NEW; END $$;
         CREATE CONSTRAINT TRIGGER hold_then_refuse AFTER INSERT OR UPDATE ON agents
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hold_then_refuse();",
    )
    .await;
    let mut holder = app.db.db.conn().await.unwrap();
    diesel::sql_query("SELECT pg_advisory_lock(4242)").execute(&mut holder).await.unwrap();

    let moved = json!({"id": "i-cut", "addr": "tcp://10.9.9.9:6001", "ip": "10.9.9.9", "watcher_port": 7000});
    let cut_at_commit = async {
        // The commit is waiting on the lock, so etcd has the new keys: cut etcd, then let the commit fail.
        let mut observer = app.db.db.conn().await.unwrap();
        let waiting = || {
            diesel::select(sql::<BigInt>(
                "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted)",
            ))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while waiting().get_result::<i64>(&mut observer).await.unwrap() == 0 {
            assert!(std::time::Instant::now() < deadline, "the registration never reached its commit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        etcd.stop();
        diesel::sql_query("SELECT pg_advisory_unlock(4242)").execute(&mut holder).await.unwrap();
    };
    let ((status, problem), ()) = tokio::join!(app.post("/v1/agents", Some(moved)), cut_at_commit);
    assert_eq!(status, 500, "{problem}");
    assert_eq!(row(&app, "i-cut").await.unwrap().addr, "tcp://127.0.0.1:6001", "the row is as it was");

    etcd.restart();
    let restored = (Some("10.0.0.1".to_owned()), Some("6009".to_owned()));
    assert!(
        common::eventually(Duration::from_secs(15), || async { etcd_keys(&app, "i-cut").await == restored }).await,
        "the keys were not put back: {:?}",
        etcd_keys(&app, "i-cut").await
    );
    // And the agent can be changed again.
    let again = json!({"id": "i-cut", "addr": "tcp://127.0.0.3:6001", "ip": "127.0.0.3"});
    let (status, body) = app.post("/v1/agents", Some(again)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(etcd_keys(&app, "i-cut").await, (Some("127.0.0.3".into()), None));
}

/// `agent-watcher --register-with`: started before the daemon, the watcher retries until the daemon serves, then
/// registers its node with the port it listens on; status then works with nothing written by hand.
#[actix_rt::test]
async fn a_watcher_registers_its_node_itself_retrying_while_the_daemon_is_away() {
    let db = common::TestDb::new().await;
    let keys = common::supervisor::create_keypair(&db.config(), true, true).await;
    let d = tempfile::tempdir().unwrap();
    let credentials = d.path().join("credentials");
    std::fs::write(
        &credentials,
        format!("export BACKEND_ACCESS_KEY={}\nexport BACKEND_SECRET_KEY='{}'\n", keys.access_key, keys.secret_key),
    )
    .unwrap();
    let daemon_port = free_port();
    let daemon_url = format!("http://127.0.0.1:{daemon_port}");
    let registering = |id: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["--backend", "process", "--token", TOKEN, "--agent-id", id, "--register-with"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(daemon_url.clone());
        args.extend(["--credentials-file".to_owned(), credentials.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--".to_owned());
        args.extend(slow_service(&d.path().join(format!("{id}.log")), "0"));
        args
    };
    let w =
        WatcherProcess::spawn(TOKEN, &registering("i-self", &["--slot", "cpu=4", "--agent-version", "24.03.0"]), &[]);
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            w.log().contains("cannot register with the daemon yet")
        })
        .await,
        "the watcher did not try while the daemon was away:\n{}",
        w.log()
    );

    let listener = std::net::TcpListener::bind(("127.0.0.1", daemon_port)).unwrap();
    let app = TestApp::spawn_listening(db, listener, |_| {}).await;
    assert!(
        common::eventually(Duration::from_secs(20), || async { row(&app, "i-self").await.is_some() }).await,
        "the watcher never registered:\n{}",
        w.log()
    );
    let r = row(&app, "i-self").await.unwrap();
    assert_eq!(
        (r.addr.as_str(), r.scaling_group.as_str(), r.version.as_str(), r.status),
        ("tcp://127.0.0.1:6001", "default", "24.03.0", AgentStatus::Alive)
    );
    assert_eq!(r.available_slots.to_json_value(), json!({"cpu": "4"}));
    assert_eq!(etcd_keys(&app, "i-self").await, (Some("127.0.0.1".into()), Some(w.port().to_string())));
    assert!(w.log().contains("registered with the daemon"), "{}", w.log());
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            app.get("/v1/agents/i-self/watcher").await.1["watcher"]["agent-status"] == "active"
        })
        .await
    );
    assert!(!w.log().contains(&keys.secret_key), "the secret key is in the watcher's log");

    // A registration the daemon refuses is not retried; the log says why.
    let refused = WatcherProcess::spawn(TOKEN, &registering("i-refused", &["--scaling-group", "no-such-group"]), &[]);
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            refused.log().contains("the daemon refused the registration; not retrying")
        })
        .await,
        "{}",
        refused.log()
    );
    assert!(refused.log().contains("scaling_group_not_found"), "{}", refused.log());
    assert!(row(&app, "i-refused").await.is_none());
}

/// Without a keypair the watcher does not start, and says what it needs.
#[test]
fn a_watcher_told_to_register_without_a_keypair_refuses_to_start() {
    let out = std::process::Command::new(common::procs::watcher_bin())
        .args(["--backend", "process", "--agent-id", "i-1", "--register-with", "http://127.0.0.1:9", "--", "true"])
        .env_remove("BACKEND_ACCESS_KEY")
        .env_remove("BACKEND_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--register-with needs a keypair: --credentials-file FILE or the BACKEND_ACCESS_KEY"));
    let out = std::process::Command::new(common::procs::watcher_bin())
        .args(["--backend", "process", "--agent-id", "i-1", "--register-with", "127.0.0.1:9", "--", "true"])
        .env("BACKEND_ACCESS_KEY", "AKTEST")
        .env("BACKEND_SECRET_KEY", "secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--register-with \"127.0.0.1:9\""), "{out:?}");
}

#[actix_rt::test]
async fn in_backend_ai_mode_the_registry_answers_409() {
    let app = TestApp::spawn_in(DatabaseMode::BackendAi, |_| {}).await;
    let body = json!({"id": "i-x", "addr": "tcp://127.0.0.1:6001", "ip": "127.0.0.1"});
    for (method, path, body) in [
        ("POST", "/v1/agents", Some(body)),
        ("PATCH", "/v1/agents/i-x", Some(json!({"schedulable": false}))),
        ("DELETE", "/v1/agents/i-x", None),
    ] {
        let (status, problem) = app.request(method, path, body, Some(&app.admin)).await;
        assert_eq!((status, problem["error_code"].as_str()), (409, Some("managed_by_backend_ai")), "{method} {path}");
    }
}

#[actix_rt::test]
async fn a_node_that_dies_is_lost_and_alive_again_when_it_returns() {
    let app = TestApp::spawn_with(quick_liveness).await;
    let d = tempfile::tempdir().unwrap();
    let cmd = slow_service(&d.path().join("s.log"), "0");
    let mut w = running_watcher(TOKEN, &cmd, &[]);
    let port = w.port();
    let (status, body) = app
        .post(
            "/v1/agents",
            Some(json!({"id": "i-live", "addr": "tcp://127.0.0.1:6001", "ip": "127.0.0.1", "watcher_port": port})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // The node dies: within lost_after_s plus a probe interval (and slack for a loaded machine) it is LOST.
    w.kill();
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            row(&app, "i-live").await.is_some_and(|r| r.status == AgentStatus::Lost)
        })
        .await,
        "the agent never became LOST"
    );
    let lost = row(&app, "i-live").await.unwrap();
    assert!(lost.lost_at.is_some());
    // Recalculation keeps skipping it.
    let (_, report) = app.post("/v1/usage/recalculate", None).await;
    assert_eq!(report["agents_skipped"][0]["agent_id"], "i-live", "{report}");

    // It comes back on the same port: ALIVE again, lost_at cleared.
    let back = common::watcher::WatcherProcess::process_backend_on(TOKEN, port, &cmd);
    assert!(back.wait_for_status("active", Duration::from_secs(5)));
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            row(&app, "i-live").await.is_some_and(|r| r.status == AgentStatus::Alive && r.lost_at.is_none())
        })
        .await,
        "the agent never came back"
    );
    let liveness: Vec<Value> = queries::list_events(&mut app.db.db.conn().await.unwrap(), "i-live", 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == EventAction::Liveness)
        .map(|e| e.detail)
        .collect();
    let changes: Vec<(&str, &str)> =
        liveness.iter().rev().map(|d| (d["from"].as_str().unwrap(), d["to"].as_str().unwrap())).collect();
    assert_eq!(changes, [("ALIVE", "LOST"), ("LOST", "ALIVE")]);
    let metrics = app.metrics().await;
    for to in ["LOST", "ALIVE"] {
        let line = format!("agent_supervisor_agent_liveness_transitions_total{{to=\"{to}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }
}

/// A node is LOST after one second without an answer, probed every second; metrics on.
fn quick_liveness(c: &mut Config) {
    c.agents.lost_after_s = 1;
    c.watcher.probe_interval_s = 1;
    c.metrics.token = Some(Secret::new(METRICS_TOKEN));
}

#[actix_rt::test]
async fn in_backend_ai_mode_a_dead_node_is_left_to_backend_ais_heartbeat() {
    let app = TestApp::spawn_in(DatabaseMode::BackendAi, quick_liveness).await;
    app.add_agent("i-ba-dead").await;
    app.register_watcher("i-ba-dead", free_port()).await;
    assert_eq!(app.get("/v1/agents/i-ba-dead/watcher").await.0, 502);
    // Unreachable for longer than `lost_after_s` plus a probe interval, by the actor's own observations: standalone
    // mode has made it LOST by then (`a_node_that_dies_is_lost_and_alive_again_when_it_returns`).
    let first_seen_down = std::cell::Cell::new(None);
    let down_long_enough = common::eventually(Duration::from_secs(15), || async {
        let (_, body) = app.get("/v1/agents/i-ba-dead").await;
        let watcher = &body["supervision"]["watcher"];
        let at = watcher["at"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let (Some(at), Some(false)) = (at, watcher["reachable"].as_bool()) else { return false };
        let first = first_seen_down.get().unwrap_or(at);
        first_seen_down.set(Some(first));
        at - first >= chrono::Duration::milliseconds(2_500)
    })
    .await;
    assert!(down_long_enough, "the watcher was not seen down long enough");
    let r = row(&app, "i-ba-dead").await.unwrap();
    assert_eq!((r.status, r.lost_at), (AgentStatus::Alive, None));
    assert!(!actions(&app, "i-ba-dead").await.contains(&EventAction::Liveness));
    assert!(!app.metrics().await.contains("agent_liveness_transitions_total{"));
}

#[actix_rt::test]
async fn etcds_agents_without_a_row_are_listed_for_adoption_when_discovery_is_on() {
    let app = TestApp::spawn_with(|c| c.agents.discover = true).await;
    app.add_agent("i-known").await;
    app.register_watcher("i-known", 6009).await;
    let etcd = Etcd::connect(&app.config.etcd).await.unwrap();
    etcd.put("nodes/agents/i-orphan/ip", "10.1.2.3").await.unwrap();
    etcd.put("nodes/agents/i-orphan/watcher_port", "6019").await.unwrap();
    let last = std::cell::RefCell::new(Value::Null);
    let found = common::eventually(Duration::from_secs(3), || async {
        let listed = app.get("/v1/agents?unregistered=true").await.1;
        let any = listed["unregistered"].as_array().is_some_and(|u| !u.is_empty());
        *last.borrow_mut() = listed;
        any
    })
    .await;
    let listed = last.into_inner();
    assert!(found, "{listed}");
    assert_eq!(
        listed["unregistered"],
        json!([{"id": "i-orphan", "ip": "10.1.2.3", "watcher_port": 6019,
                "adopt_with": "agentctl agents add i-orphan --addr tcp://10.1.2.3:6001"}])
    );
    assert_eq!(listed["agents"][0]["id"], "i-known");
    // Adopting it with that command's fields: ip and port come from etcd.
    let (status, body) = app.post("/v1/agents", Some(json!({"id": "i-orphan", "addr": "tcp://10.1.2.3:6001"}))).await;
    assert_eq!((status, body["ip"].as_str()), (200, Some("10.1.2.3")), "{body}");
    assert!(app.get("/v1/agents?unregistered=true").await.1["unregistered"].as_array().unwrap().is_empty());

    let off = TestApp::spawn().await;
    let (status, problem) = off.get("/v1/agents?unregistered=true").await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("unregistered")));
}

#[actix_rt::test]
async fn kernels_of_a_removed_agent_keep_their_rows() {
    let app = TestApp::spawn().await;
    app.post("/v1/agents", Some(json!({"id": "i-gone", "addr": "tcp://127.0.0.1:6001", "ip": "127.0.0.1"}))).await;
    let s = app.db.add_session(app.db.user_access_key(), "RUNNING", false).await;
    app.db.add_kernel(Kernel::on(s, "i-gone")).await;
    let (status, _) = app.request("DELETE", "/v1/agents/i-gone?force=1", None, Some(&app.admin)).await;
    assert_eq!(status, 200);
    #[derive(diesel::QueryableByName)]
    struct K {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        agent: Option<String>,
    }
    let mut conn = app.db.db.conn().await.unwrap();
    let k: K = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query(format!("SELECT agent FROM kernels WHERE session_id = '{s}'")),
        &mut conn,
    )
    .await
    .unwrap();
    assert_eq!(k.agent, None, "the kernel stays, without its agent");
}

/// A row that appears in the database behind the daemon's back (Backend.AI's heartbeat registering an agent, say)
/// gets its actor, and so its probe, within a probe interval, without any request for it.
#[actix_rt::test]
async fn an_agent_row_added_behind_the_daemons_back_is_supervised_within_a_probe_interval() {
    let app = TestApp::spawn_with(|c| c.watcher.probe_interval_s = 1).await;
    let d = tempfile::tempdir().unwrap();
    let w = running_watcher(TOKEN, &slow_service(&d.path().join("s.log"), "0"), &[]);
    app.register_watcher("i-behind", w.port()).await;
    app.add_agent("i-behind").await;
    let observed = common::eventually(Duration::from_secs(10), || async {
        let (_, listing) = app.get("/v1/agents").await;
        listing["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["id"] == "i-behind" && a["supervision"]["watcher"]["agent_status"] == "active")
    })
    .await;
    assert!(observed, "the new row was never probed");
}
