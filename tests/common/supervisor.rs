//! A real supervisor for end-to-end tests: the same `app::start` as `agent-supervisor serve`, on 127.0.0.1:0, with
//! a database and an etcd namespace of its own, and short timeouts.
//!
//! The daemon's database gets a superadmin keypair at spawn (`app.admin`), and `get`, `get_with_body` and `post` sign
//! every request with it the way the official client does. For other callers: `add_keypair(superadmin, active)`,
//! `request(method, path, body, Some(&creds) | None)` (None = unsigned), and `signed(method, path, content_type,
//! &creds)` for an `awc` request carrying the signed headers, to tamper with before sending.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::TcpListener, time::Duration};

use agent_supervisor::{
    api::COMPAT_API_VERSION,
    app::{self, Handles},
    auth::{keys::generate_keypair, signing},
    config::{Config, DatabaseConfig, Secret},
    db::{Db, keypairs, models::KeypairRow},
};
use serde_json::Value;

use super::{DatabaseMode, TestDb, TestEtcd};

pub const TOKEN: &str = "test-watcher-token";
/// The bearer token `/metrics` wants in tests that turn metrics on (`metrics.token`).
pub const METRICS_TOKEN: &str = "metrics-token";

/// An access key and its secret key.
#[derive(Debug, Clone)]
pub struct Creds {
    pub access_key: String,
    pub secret_key: String,
}

impl Creds {
    pub fn of((access_key, secret_key): (&str, &str)) -> Self {
        Self { access_key: access_key.to_owned(), secret_key: secret_key.to_owned() }
    }
}

/// Inserts a keypair into the database `db` points at.
pub async fn create_keypair(db: &DatabaseConfig, superadmin: bool, active: bool) -> Creds {
    let key = generate_keypair();
    let row = KeypairRow {
        access_key: key.access_key.clone(),
        secret_key: key.secret_key.expose().to_owned(),
        user_id: Some(if superadmin { "admin@test" } else { "user@test" }.into()),
        is_active: active,
        is_superadmin: superadmin,
        description: Some("created by the test harness".into()),
        created_at: chrono::Utc::now(),
        last_used: None,
    };
    let pool = Db::new(db).unwrap();
    keypairs::insert_keypair(&mut pool.conn().await.unwrap(), &row).await.unwrap();
    pool.close();
    Creds { access_key: key.access_key, secret_key: key.secret_key.expose().to_owned() }
}

pub struct TestApp {
    pub url: String,
    /// `127.0.0.1:PORT`, the `Host` header clients send and sign.
    pub host: String,
    /// A superadmin keypair; `get`, `get_with_body` and `post` sign with it.
    pub admin: Creds,
    pub db: TestDb,
    pub etcd: TestEtcd,
    pub running: Handles,
    pub config: Config,
}

pub fn test_config(db: &TestDb, etcd: &TestEtcd) -> Config {
    let mut config = Config::default();
    config.database = db.config();
    config.etcd = etcd.config();
    config.watcher.token = Some(Secret::new(TOKEN));
    config.watcher.status_timeout_ms = 1_000;
    config.watcher.command_timeout_ms = 4_000;
    config.watcher.probe_interval_s = 0;
    config.watcher.queue_capacity = 4;
    config.api.listen = "127.0.0.1:0".into();
    config
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the daemon after `tweak` adjusts the configuration. Must run inside an actix system
    /// (`#[actix_rt::test]`).
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_on(TestDb::new().await, tweak).await
    }

    /// A daemon in `mode`: on its own tables, or next to Backend.AI's (with `tests/backendai/fixtures.sql`).
    pub async fn spawn_in(mode: DatabaseMode, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_on(TestDb::in_mode(mode).await, tweak).await
    }

    /// A daemon on the etcd at `endpoint` (a test's private etcd, which it may stop), with a short etcd timeout.
    pub async fn spawn_with_etcd(endpoint: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_with(|c| {
            c.etcd.endpoints = vec![endpoint.to_owned()];
            c.etcd.timeout_ms = 500;
            tweak(c);
        })
        .await
    }

    /// A daemon whose database lives on a PostgreSQL server of the test's own, which the test may stop and start.
    pub async fn spawn_on_private_postgres(
        pg: &super::procs::PrivatePostgres,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        Self::spawn_on(TestDb::on(&pg.admin_url()).await, |c| {
            c.database.connect_timeout_ms = 500;
            tweak(c);
        })
        .await
    }

    /// A daemon on a database the test has prepared.
    pub async fn spawn_on(db: TestDb, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_listening(db, TcpListener::bind("127.0.0.1:0").unwrap(), tweak).await
    }

    /// A daemon serving on `listener` (bound by the test, so that clients can be pointed at it before it serves).
    pub async fn spawn_listening(db: TestDb, listener: TcpListener, tweak: impl FnOnce(&mut Config)) -> Self {
        let etcd = TestEtcd::new();
        let mut config = test_config(&db, &etcd);
        tweak(&mut config);
        let admin = match db.mode {
            DatabaseMode::Standalone => create_keypair(&config.database, true, true).await,
            DatabaseMode::BackendAi => Creds::of(super::backendai::ADMIN),
        };
        let (server, running) = app::start(&config, listener).await.unwrap().split();
        let url = format!("http://{}", running.addr);
        let host = running.addr.to_string();
        actix_rt::spawn(server);
        Self { url, host, admin, db, etcd, running, config }
    }

    /// A daemon whose database connections go through a TCP proxy the test can cut and restore.
    pub async fn spawn_behind_db_proxy(tweak: impl FnOnce(&mut Config)) -> (Self, super::procs::TcpProxy) {
        let proxy = super::procs::TcpProxy::start(&super::admin_url());
        let app = Self::spawn_with(|c| {
            c.database.url = agent_supervisor::config::Secret::new(proxy.rewrite(c.database.url.expose()));
            c.database.connect_timeout_ms = 500;
            tweak(c);
        })
        .await;
        (app, proxy)
    }

    pub async fn sql(&self, sql: &str) {
        self.db.sql(sql).await;
    }

    /// An ALIVE agent row in the default scaling group.
    pub async fn add_agent(&self, id: &str) {
        self.db.add_agent(id).await;
    }

    /// A RUNNING session with `n` RUNNING kernels on the agent.
    pub async fn add_running_kernels(&self, agent: &str, n: usize) {
        let session = self.db.add_session(self.db.user_access_key(), "RUNNING", false).await;
        for _ in 0..n {
            self.db.add_kernel(super::Kernel::on(session, agent)).await;
        }
    }

    pub async fn register_watcher(&self, agent: &str, port: u16) {
        // Written where the daemon reads: its configured etcd and namespace.
        let etcd = agent_supervisor::etcd::Etcd::connect(&self.config.etcd).await.unwrap();
        etcd.put(&format!("nodes/agents/{agent}/ip"), "127.0.0.1").await.unwrap();
        etcd.put(&format!("nodes/agents/{agent}/watcher_port"), &port.to_string()).await.unwrap();
        // The directory follows etcd through a watch; wait until it has the address.
        let id = agent_supervisor::domain::AgentId::parse(agent).unwrap();
        let dir = self.running.directory.clone();
        assert!(
            super::eventually(Duration::from_secs(3), || async {
                dir.watcher_address(&id).await.map(|a| a.port) == Ok(port)
            })
            .await,
            "the supervisor did not see the watcher of {agent}"
        );
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None, Some(&self.admin)).await
    }

    pub async fn get_with_body(&self, path: &str, body: Value) -> (u16, Value) {
        self.request("GET", path, Some(body), Some(&self.admin)).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        self.request("POST", path, body, Some(&self.admin)).await
    }

    /// A keypair in the daemon's database.
    /// A new keypair: in Backend.AI mode a new user's main keypair (`active` = the user's status).
    pub async fn add_keypair(&self, superadmin: bool, active: bool) -> Creds {
        match self.db.mode {
            DatabaseMode::Standalone => create_keypair(&self.config.database, superadmin, active).await,
            DatabaseMode::BackendAi => {
                let key = generate_keypair();
                let (role, status) =
                    (if superadmin { "superadmin" } else { "user" }, if active { "active" } else { "inactive" });
                self.sql(&super::backendai::user_with_keypair_sql(
                    &key.access_key,
                    key.secret_key.expose(),
                    role,
                    status,
                ))
                .await;
                Creds { access_key: key.access_key, secret_key: key.secret_key.expose().to_owned() }
            }
        }
    }

    /// Signed with `creds` (JSON bodies as `application/json`, none as `text/plain`, like the official client), or
    /// unsigned with `None`.
    pub async fn request(&self, method: &str, path: &str, body: Option<Value>, creds: Option<&Creds>) -> (u16, Value) {
        let content_type = if body.is_some() { "application/json" } else { "text/plain" };
        let req = match creds {
            Some(c) => self.signed(method, path, content_type, c),
            None => self.unsigned(method, path).insert_header(("Content-Type", content_type)),
        };
        send(req, body).await
    }

    /// `/metrics` as Prometheus scrapes it (the daemon must run with `metrics.token = METRICS_TOKEN`).
    pub async fn metrics(&self) -> String {
        let mut scraped = self
            .unsigned("GET", "/metrics")
            .insert_header(("Authorization", format!("Bearer {METRICS_TOKEN}")))
            .send()
            .await
            .unwrap();
        assert_eq!(scraped.status(), 200, "/metrics");
        String::from_utf8(scraped.body().await.unwrap().to_vec()).unwrap()
    }

    pub fn unsigned(&self, method: &str, path: &str) -> awc::ClientRequest {
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        awc::Client::new().request(method, format!("{}{path}", self.url))
    }

    /// A request with `Content-Type`, `X-BackendAI-Version`, `Date` and `Authorization` set, signed now.
    pub fn signed(&self, method: &str, path: &str, content_type: &str, creds: &Creds) -> awc::ClientRequest {
        self.signed_at(method, path, content_type, creds, chrono::Utc::now())
    }

    pub fn signed_at(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        creds: &Creds,
        now: chrono::DateTime<chrono::Utc>,
    ) -> awc::ClientRequest {
        let out = signing::OutgoingRequest {
            method,
            rel_url: path,
            host: &self.host,
            content_type,
            api_version: COMPAT_API_VERSION,
        };
        let h = signing::sign_request(&creds.access_key, &creds.secret_key, &out, now);
        self.unsigned(method, path)
            .insert_header(("Content-Type", content_type))
            .insert_header(("X-BackendAI-Version", COMPAT_API_VERSION))
            .insert_header(("Date", h.date))
            .insert_header(("Authorization", h.authorization))
    }
}

pub async fn send(req: awc::ClientRequest, body: Option<Value>) -> (u16, Value) {
    let req = req.timeout(Duration::from_secs(60));
    let mut resp = match body {
        Some(b) => req.send_body(serde_json::to_vec(&b).unwrap()).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let status = resp.status().as_u16();
    let bytes = resp.body().limit(1 << 20).await.unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// `agent-supervisor serve` as a process of its own, configured from the environment only (nothing inherited but
/// `PATH`): the test's database and etcd namespace, `127.0.0.1:port`, the test watcher token, probing off.
pub fn serve_command(db_url: &str, etcd: &TestEtcd, port: u16) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_agent-supervisor"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AGENT_SUPERVISOR_DATABASE_URL", db_url)
        .env("AGENT_SUPERVISOR_ETCD_ENDPOINTS", &etcd.endpoint)
        .env("AGENT_SUPERVISOR_ETCD_NAMESPACE", &etcd.namespace)
        .env("AGENT_SUPERVISOR_API_LISTEN", format!("127.0.0.1:{port}"))
        .env("AGENT_SUPERVISOR_WATCHER_TOKEN", TOKEN)
        .env("AGENT_SUPERVISOR_WATCHER_PROBE_INTERVAL_S", "0")
        .stdin(std::process::Stdio::null());
    cmd
}
