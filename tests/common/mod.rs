//! Test harness: real PostgreSQL and etcd on 127.0.0.1 (started by `scripts/test`), one database per test cloned
//! from a migrated template, one etcd namespace per test, and helpers for private service processes.
#![allow(dead_code)]

pub mod procs;
pub mod supervisor;
pub mod watcher;

use std::{collections::hash_map::DefaultHasher, hash::Hasher, path::Path, time::Duration};

use agent_supervisor::{
    config::{DatabaseConfig, EtcdConfig, Secret},
    db::{self, Db},
    etcd::Etcd,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

pub fn admin_url() -> String {
    std::env::var("AS_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:55432/postgres".into())
}

pub fn etcd_endpoint() -> String {
    std::env::var("AS_TEST_ETCD_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:23790".into())
}

pub fn db_url(name: &str) -> String {
    db_url_on(&admin_url(), name)
}

/// The URL of database `name` on the server that `admin` points at.
pub fn db_url_on(admin: &str, name: &str) -> String {
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or_else(|| admin.to_owned());
    format!("{base}/{name}")
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple().to_string().get(..12).unwrap_or("x"))
}

async fn admin(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url} ({e}); run the tests with scripts/test"))
}

/// Name of the migrated template database for the current migrations (a hash of their text).
fn template_name() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = walk(&dir);
    files.sort();
    let mut h = DefaultHasher::new();
    for f in files {
        h.write(f.to_string_lossy().as_bytes());
        h.write(&std::fs::read(&f).unwrap_or_default());
    }
    format!("as_tpl_{:016x}", h.finish())
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// A database of its own for one test, migrated, dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub db: Db,
    /// The server's administrative URL, to drop the database with.
    admin: String,
}

impl TestDb {
    /// On the shared test server.
    pub async fn new() -> Self {
        Self::on(&admin_url()).await
    }

    /// On the server `admin` points at (a test's private PostgreSQL, say).
    pub async fn on(admin_url: &str) -> Self {
        let tpl = template_name();
        let name = unique("as_test");
        let mut conn = admin(admin_url).await;
        // One process at a time builds the template; creating from it is then a file copy.
        diesel::sql_query("SELECT pg_advisory_lock(727274)").execute(&mut conn).await.unwrap();
        let exists: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
            "(SELECT count(*) FROM pg_database WHERE datname = '{tpl}')"
        )))
        .get_result(&mut conn)
        .await
        .unwrap();
        if exists == 0 {
            let building = format!("{tpl}_building");
            diesel::sql_query(format!("DROP DATABASE IF EXISTS {building}")).execute(&mut conn).await.unwrap();
            diesel::sql_query(format!("CREATE DATABASE {building}")).execute(&mut conn).await.unwrap();
            db::run_migrations(&db_url_on(admin_url, &building)).await.unwrap();
            diesel::sql_query(format!("ALTER DATABASE {building} RENAME TO {tpl}")).execute(&mut conn).await.unwrap();
        }
        diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {tpl}")).execute(&mut conn).await.unwrap();
        diesel::sql_query("SELECT pg_advisory_unlock(727274)").execute(&mut conn).await.unwrap();
        let url = db_url_on(admin_url, &name);
        let db = Db::new(&database_config(&url)).unwrap();
        Self { name, url, db, admin: admin_url.to_owned() }
    }

    /// An empty database (no migrations), for migration tests.
    pub async fn empty() -> Self {
        let name = unique("as_empty");
        let mut conn = admin(&admin_url()).await;
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        let url = db_url(&name);
        let db = Db::new(&database_config(&url)).unwrap();
        Self { name, url, db, admin: admin_url() }
    }

    pub fn config(&self) -> DatabaseConfig {
        database_config(&self.url)
    }

    pub async fn sql(&self, sql: &str) {
        let mut conn = self.db.conn().await.unwrap();
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
}

pub fn database_config(url: &str) -> DatabaseConfig {
    DatabaseConfig { url: Secret::new(url), max_connections: 8, connect_timeout_ms: 2_000, run_migrations: false }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        self.db.close();
        let name = self.name.clone();
        let admin = self.admin.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok(mut conn) = AsyncPgConnection::establish(&admin).await {
                    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// An etcd namespace of its own for one test, deleted when dropped.
pub struct TestEtcd {
    pub namespace: String,
    pub endpoint: String,
}

impl TestEtcd {
    pub fn new() -> Self {
        Self { namespace: unique("t").replace('_', "-"), endpoint: etcd_endpoint() }
    }

    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.endpoint.clone()],
            namespace: self.namespace.clone(),
            timeout_ms: 1_000,
            ..Default::default()
        }
    }

    pub async fn client(&self) -> Etcd {
        Etcd::connect(&self.config()).await.unwrap()
    }

    /// Publishes an agent's watcher address the way a Backend.AI agent does.
    pub async fn register(&self, agent: &str, ip: &str, port: Option<u16>) {
        let etcd = self.client().await;
        etcd.put(&format!("nodes/agents/{agent}/ip"), ip).await.unwrap();
        if let Some(port) = port {
            etcd.put(&format!("nodes/agents/{agent}/watcher_port"), &port.to_string()).await.unwrap();
        }
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        let cfg = self.config();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok(etcd) = Etcd::connect(&cfg).await {
                    let _ = etcd.delete_prefix("").await;
                }
            });
        })
        .join();
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
