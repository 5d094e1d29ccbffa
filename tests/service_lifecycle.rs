//! Running as a service: systemd notifications (a real Unix datagram socket stands in for systemd), draining a
//! slow command on SIGTERM, secrets kept out of the logs of a full scenario, readiness, metrics, and unit files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    TestDb, TestEtcd,
    procs::{PrivateEtcd, free_port, http_signed, wait_for_port},
    supervisor::{TOKEN, TestApp, create_keypair, serve_command},
    watcher::{WatcherProcess, running_watcher, slow_service, terminated},
};
use diesel_async::RunQueryDsl;

/// Collects datagrams until `want` arrives or `timeout` passes; returns everything received.
fn wait_for_message(socket: &UnixDatagram, want: &str, timeout: Duration, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(msg.clone());
            if msg == want {
                return true;
            }
        }
    }
    false
}

fn notify_socket(dir: &Path) -> (UnixDatagram, std::path::PathBuf) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    (socket, path)
}

#[tokio::test]
async fn serve_notifies_systemd_drains_a_slow_restart_on_sigterm_and_keeps_secrets_out_of_its_logs() {
    let db = TestDb::new().await;
    let etcd = TestEtcd::new();
    let admin = create_keypair(&db.config(), true, true).await;
    let dir = tempfile::tempdir().unwrap();

    // An agent whose service needs 2 s to stop, under a real watcher.
    let service_log = dir.path().join("service.log");
    let watcher = running_watcher(TOKEN, &slow_service(&service_log, "2"), &["--stop-timeout-ms", "5000"]);
    db.add_agent("i-svc").await;
    etcd.register("i-svc", "127.0.0.1", Some(watcher.port())).await;

    let (socket, socket_path) = notify_socket(dir.path());
    let port = free_port();
    let db_url_with_password = db.url.replacen("postgres@", "postgres:db-password-never-logged@", 1);
    let logs = dir.path().join("daemon.log");
    let mut daemon = serve_command(&db_url_with_password, &etcd, port)
        .env("AGENT_SUPERVISOR_METRICS_TOKEN", "metrics-token-never-logged")
        .env("AGENT_SUPERVISOR_LOG_FORMAT", "json")
        .env("AGENT_SUPERVISOR_LOG_LEVEL", "trace")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&logs).unwrap())
        .spawn()
        .unwrap();

    let mut seen = Vec::new();
    assert!(wait_for_message(&socket, "READY=1", Duration::from_secs(30), &mut seen), "no READY=1; got {seen:?}");
    assert!(wait_for_port(port, Duration::from_secs(1)), "READY=1 came before the API listened");
    assert!(wait_for_message(&socket, "WATCHDOG=1", Duration::from_secs(5), &mut seen), "no WATCHDOG=1; got {seen:?}");

    // A full scenario: status, a start refused by the pre-check, metrics, then a slow restart cut by SIGTERM.
    let keys = (admin.access_key.clone(), admin.secret_key.clone());
    let k = || Some((keys.0.as_str(), keys.1.as_str()));
    assert_eq!(http_signed(port, "GET", "/resource/watcher?agent_id=i-svc", k()).0, 200);
    assert_eq!(http_signed(port, "POST", "/v1/agents/i-svc/start", k()).0, 409);
    let restart = {
        let keys = keys.clone();
        std::thread::spawn(move || http_signed(port, "POST", "/v1/agents/i-svc/restart", Some((&keys.0, &keys.1))))
    };
    assert!(terminated(&service_log, 1, Duration::from_secs(5)).await, "the restart never reached the service");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(wait_for_message(&socket, "STOPPING=1", Duration::from_secs(5), &mut seen), "no STOPPING=1; got {seen:?}");

    // From here on nothing reads the notification socket, as a stuck systemd would not: its queue fills with
    // watchdog pings, and the daemon must still finish the restart and exit (notifications never block it).
    let (status, body) = restart.join().unwrap();
    assert_eq!(status, 200, "the in-flight restart finished during shutdown: {body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");

    // The outcome was recorded, not left open.
    #[derive(diesel::QueryableByName)]
    struct Ev {
        #[diesel(sql_type = diesel::sql_types::Text)]
        action: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        outcome: String,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        finished: bool,
    }
    let mut conn = db.db.conn().await.unwrap();
    let events: Vec<Ev> = diesel::sql_query("SELECT action::text, outcome::text, finished_at IS NOT NULL AS finished FROM agent_events WHERE agent_id = 'i-svc' ORDER BY id")
        .load(&mut conn)
        .await
        .unwrap();
    let summary: Vec<(String, String, bool)> = events.into_iter().map(|e| (e.action, e.outcome, e.finished)).collect();
    assert_eq!(summary, [("start".into(), "rejected".into(), true), ("restart".into(), "succeeded".into(), true)]);

    let text = std::fs::read_to_string(&logs).unwrap();
    assert!(text.contains("agent-supervisor serving") && text.contains("\"agent.id\":\"i-svc\""), "{text}");
    for secret in ["db-password-never-logged", TOKEN, "metrics-token-never-logged", admin.secret_key.as_str()] {
        assert!(!text.contains(secret), "a secret ({secret}) appears in the logs");
    }
}

#[test]
fn the_watcher_notifies_systemd_too() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, path) = notify_socket(dir.path());
    let env =
        [("NOTIFY_SOCKET".to_owned(), path.display().to_string()), ("WATCHDOG_USEC".to_owned(), "300000".to_owned())];
    let args: Vec<String> = ["--backend", "process", "--", "sleep", "1000"].iter().map(|s| s.to_string()).collect();
    let mut w = WatcherProcess::spawn(TOKEN, &args, &env);
    let mut seen = Vec::new();
    assert!(wait_for_message(&socket, "READY=1", Duration::from_secs(10), &mut seen), "{seen:?}");
    assert!(wait_for_message(&socket, "WATCHDOG=1", Duration::from_secs(5), &mut seen), "{seen:?}");
    let status = w.terminate();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(wait_for_message(&socket, "STOPPING=1", Duration::from_secs(2), &mut seen), "{seen:?}");
}

#[actix_rt::test]
async fn readiness_names_the_failed_dependency_and_metrics_need_their_token() {
    let mut etcd = PrivateEtcd::start();
    let metrics_port = free_port();
    let endpoint = etcd.endpoint();
    let (app, proxy) = TestApp::spawn_behind_db_proxy(|c| {
        c.etcd.endpoints = vec![endpoint.clone()];
        c.etcd.timeout_ms = 500;
        c.metrics.token = Some(agent_supervisor::config::Secret::new("m-token"));
        c.metrics.listen = Some(format!("127.0.0.1:{metrics_port}"));
    })
    .await;

    let (status, body) = app.request("GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);

    // Metrics: the token is required on the API address; the separate address needs none.
    assert_eq!(app.request("GET", "/metrics", None, None).await.0, 401);
    let mut resp = awc::Client::new()
        .get(format!("{}/metrics", app.url))
        .insert_header(("Authorization", "Bearer wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let _ = resp.body().await;
    app.get("/v1/agents").await;
    let mut resp = awc::Client::new()
        .get(format!("{}/metrics", app.url))
        .insert_header(("Authorization", "Bearer m-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap();
    for family in [
        "agent_supervisor_http_requests_total{method=\"GET\",route=\"/v1/agents\",status=\"200\"}",
        "agent_supervisor_http_request_duration_seconds_bucket",
        "agent_supervisor_db_pool_connections{state=\"size\"}",
        "agent_supervisor_etcd_cache{kind=\"synced\"} 1",
        "agent_supervisor_commands_in_flight",
    ] {
        assert!(text.contains(family), "{family} missing from\n{text}");
    }
    let mut resp = awc::Client::new().get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        String::from_utf8(resp.body().await.unwrap().to_vec())
            .unwrap()
            .contains("agent_supervisor_http_requests_total")
    );

    etcd.stop();
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            app.request("GET", "/readyz", None, None).await.0 == 503
        })
        .await
    );
    let (_, body) = app.request("GET", "/readyz", None, None).await;
    assert_eq!(body["ready"], false);
    assert!(body["etcd"].is_string() && body["database"].is_null(), "{body}");

    proxy.cut();
    let (status, body) = app.request("GET", "/readyz", None, None).await;
    assert_eq!(status, 503);
    assert!(body["database"].is_string(), "{body}");

    etcd.restart();
    proxy.restore();
    assert!(
        common::eventually(Duration::from_secs(15), || async {
            app.request("GET", "/readyz", None, None).await.0 == 200
        })
        .await,
        "not ready again"
    );
    assert_eq!(app.request("GET", "/healthz", None, None).await.0, 200);
}

#[actix_rt::test]
async fn metrics_are_off_unless_configured() {
    let app = TestApp::spawn().await;
    let (status, body) = app.request("GET", "/metrics", None, None).await;
    assert_eq!((status, body["error_code"].as_str()), (404, Some("not_found")));
}

#[test]
fn unit_files_declare_notify_and_watchdog_and_pass_systemd_analyze() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for (unit, bin) in [
        ("agent-supervisor.service", std::path::PathBuf::from(env!("CARGO_BIN_EXE_agent-supervisor"))),
        ("agent-watcher.service", common::procs::watcher_bin()),
    ] {
        let text = std::fs::read_to_string(root.join("systemd").join(unit)).unwrap();
        for line in ["Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecStart=/usr/local/bin/"] {
            assert!(text.contains(line), "{unit} lacks {line}");
        }
        let name = unit.trim_end_matches(".service");
        std::fs::write(dir.path().join(unit), text.replace(&format!("/usr/local/bin/{name}"), &bin.to_string_lossy()))
            .unwrap();
    }
    assert!(
        std::fs::read_to_string(root.join("systemd/agent-supervisor.service"))
            .unwrap()
            .contains("NoNewPrivileges=true")
    );
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("agent-supervisor.service"))
        .arg(dir.path().join("agent-watcher.service"))
        .output()
    {
        Ok(out) => assert!(out.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => eprintln!("systemd-analyze is not installed ({e}); the unit files were checked by content only"),
    }
}
