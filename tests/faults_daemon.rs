//! The daemon itself killed with SIGKILL while a command runs: `agent-supervisor serve` as a real subprocess,
//! configured from the environment, restarted on the same database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    process::Child,
    time::{Duration, Instant},
};

use agent_supervisor::{api::COMPAT_API_VERSION, auth::signing, domain::EventOutcome};
use common::{
    TestDb, TestEtcd,
    procs::{free_port, wait_for_port},
    supervisor::{Creds, TOKEN, create_keypair, serve_command},
    watcher::{running_watcher, slow_service, terminated},
};
use serde_json::Value;

struct Daemon {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(db: &TestDb, etcd: &TestEtcd, port: u16, dir: &std::path::Path, n: u32) -> Self {
        let log = dir.join(format!("daemon-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = serve_command(&db.url, etcd, port)
            .env("AGENT_SUPERVISOR_DATABASE_RUN_MIGRATIONS", "false")
            .env("AGENT_SUPERVISOR_WATCHER_COMMAND_TIMEOUT_MS", "10000")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let me = Self { child, port, log };
        assert!(wait_for_port(port, Duration::from_secs(20)), "the daemon did not listen:\n{}", me.log());
        me
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn call(&self, creds: &Creds, method: &str, path: &str, timeout: Duration) -> Result<(u16, Value), String> {
        let host = format!("127.0.0.1:{}", self.port);
        let out = signing::OutgoingRequest {
            method,
            rel_url: path,
            host: &host,
            content_type: "text/plain",
            api_version: COMPAT_API_VERSION,
        };
        let h = signing::sign_request(&creds.access_key, &creds.secret_key, &out, chrono::Utc::now());
        let m = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut resp = awc::Client::new()
            .request(m, format!("http://{host}{path}"))
            .insert_header(("Content-Type", "text/plain"))
            .insert_header(("X-BackendAI-Version", COMPAT_API_VERSION))
            .insert_header(("Date", h.date))
            .insert_header(("Authorization", h.authorization))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.body().limit(1 << 20).await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn events(d: &Daemon, creds: &Creds, agent: &str) -> Vec<Value> {
    let (status, body) =
        d.call(creds, "GET", &format!("/v1/agents/{agent}/events"), Duration::from_secs(10)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

#[actix_rt::test]
async fn daemon_killed_during_a_command_records_it_interrupted_and_the_next_command_works() {
    let db = TestDb::new().await;
    let etcd = TestEtcd::new();
    let creds = create_keypair(&db.config(), true, true).await;
    let dir = tempfile::tempdir().unwrap();
    // A restart of this service takes about 2 s (its SIGTERM handling).
    let service_log = dir.path().join("service.log");
    let w = running_watcher(TOKEN, &slow_service(&service_log, "2"), &[]);
    db.add_agent("i-crash").await;
    etcd.register("i-crash", "127.0.0.1", Some(w.port())).await;

    let port = free_port();
    let mut daemon = Daemon::start(&db, &etcd, port, dir.path(), 1);
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            matches!(
                daemon.call(&creds, "GET", "/resource/watcher?agent_id=i-crash", Duration::from_secs(5)).await,
                Ok((200, _))
            )
        })
        .await,
        "the daemon does not serve the agent:\n{}",
        daemon.log()
    );

    // The restart is in flight (its audit row says `running`) when the daemon dies.
    let (outcome, _) = {
        let restart = daemon.call(&creds, "POST", "/v1/agents/i-crash/restart", Duration::from_secs(30));
        let kill = async {
            let running = common::eventually(Duration::from_secs(5), || async {
                let mut conn = db.db.conn().await.unwrap();
                agent_supervisor::db::queries::list_events(&mut conn, "i-crash", 5)
                    .await
                    .unwrap()
                    .first()
                    .is_some_and(|e| e.outcome == EventOutcome::Running)
            })
            .await;
            assert!(running, "the command never started");
            assert!(terminated(&service_log, 1, Duration::from_secs(5)).await, "the restart never reached the service");
            let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        };
        futures_util::join!(restart, kill)
    };
    assert!(outcome.is_err(), "the caller sees the connection drop, not an answer: {outcome:?}");
    daemon.kill9();

    // Nothing is half-written: one audit row, still open, and the agent row untouched.
    {
        let mut conn = db.db.conn().await.unwrap();
        let rows = agent_supervisor::db::queries::list_events(&mut conn, "i-crash", 10).await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].outcome, rows[0].finished_at.is_none()), (EventOutcome::Running, true), "{rows:?}");
        let agent = agent_supervisor::db::queries::find_agent(&mut conn, "i-crash").await.unwrap().unwrap();
        assert_eq!(format!("{:?}", agent.status).to_ascii_uppercase(), "ALIVE");
    }

    // After the restart, the audit trail says `interrupted`, with a finish time.
    let daemon = Daemon::start(&db, &etcd, port, dir.path(), 2);
    let ev = events(&daemon, &creds, "i-crash").await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0]["action"].as_str(), ev[0]["outcome"].as_str()), (Some("restart"), Some("interrupted")), "{ev:?}");
    assert!(ev[0]["finished_at"].is_string(), "{ev:?}");

    // The watcher finished (or refuses nothing); the next command works and is audited normally.
    let started = Instant::now();
    let (status, body) =
        daemon.call(&creds, "POST", "/v1/agents/i-crash/restart", Duration::from_secs(30)).await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", daemon.log());
    assert!(started.elapsed() < Duration::from_secs(10));
    let ev = events(&daemon, &creds, "i-crash").await;
    assert_eq!(
        (ev[0]["outcome"].as_str(), ev[1]["outcome"].as_str()),
        (Some("succeeded"), Some("interrupted")),
        "{ev:?}"
    );
    assert!(w.wait_for_status("active", Duration::from_secs(5)));
}
