//! A real supervisor for end-to-end tests: the same `app::start` as `agent-supervisor serve`, on 127.0.0.1:0, with
//! a database and an etcd namespace of its own, and short timeouts.

use std::{net::TcpListener, time::Duration};

use agent_supervisor::{
    app::{self, Handles},
    config::{Config, Secret},
};
use diesel_async::RunQueryDsl;
use serde_json::Value;

use super::{TestDb, TestEtcd};

pub const TOKEN: &str = "test-watcher-token";

pub struct TestApp {
    pub url: String,
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
        let db = TestDb::new().await;
        let etcd = TestEtcd::new();
        let mut config = test_config(&db, &etcd);
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (server, running) = app::start(&config, listener).await.unwrap().split();
        let url = format!("http://{}", running.addr);
        actix_rt::spawn(server);
        Self { url, db, etcd, running, config }
    }

    pub async fn sql(&self, sql: &str) {
        let mut conn = self.db.db.conn().await.unwrap();
        diesel::sql_query(sql).execute(&mut conn).await.unwrap();
    }

    /// An ALIVE agent row in the default scaling group.
    pub async fn add_agent(&self, id: &str) {
        self.sql("INSERT INTO scaling_groups (name) VALUES ('default') ON CONFLICT DO NOTHING").await;
        self.sql(&format!(
            "INSERT INTO agents (id, region, addr, version, architecture, available_slots) \
             VALUES ('{id}', 'local', 'tcp://127.0.0.1:6001', '23.09.10', 'x86_64', '{{\"cpu\": \"8\"}}')"
        ))
        .await;
    }

    /// A RUNNING session with `n` RUNNING kernels on the agent.
    pub async fn add_running_kernels(&self, agent: &str, n: usize) {
        let session = uuid::Uuid::new_v4();
        self.sql(&format!("INSERT INTO sessions (id, access_key, status) VALUES ('{session}', 'AKTEST', 'RUNNING')")).await;
        for _ in 0..n {
            self.sql(&format!(
                "INSERT INTO kernels (id, session_id, agent, agent_addr, status, occupied_slots) \
                 VALUES (gen_random_uuid(), '{session}', '{agent}', 'tcp://127.0.0.1:6001', 'RUNNING', '{{\"cpu\": \"1\"}}')"
            ))
            .await;
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
            super::eventually(Duration::from_secs(3), || async { dir.watcher_address(&id).await.map(|a| a.port) == Ok(port) }).await,
            "the supervisor did not see the watcher of {agent}"
        );
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        send(awc::Client::new().get(format!("{}{path}", self.url)), None).await
    }

    pub async fn get_with_body(&self, path: &str, body: Value) -> (u16, Value) {
        send(awc::Client::new().get(format!("{}{path}", self.url)), Some(body)).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        send(awc::Client::new().post(format!("{}{path}", self.url)), body).await
    }
}

pub async fn send(req: awc::ClientRequest, body: Option<Value>) -> (u16, Value) {
    let req = req.timeout(Duration::from_secs(60));
    let mut resp = match body {
        Some(b) => req.send_json(&b).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let status = resp.status().as_u16();
    let bytes = resp.body().limit(1 << 20).await.unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}
