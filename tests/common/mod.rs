//! Test harness: real PostgreSQL and etcd on 127.0.0.1 (started by `scripts/test`), one database per test cloned
//! from a migrated template, one etcd namespace per test, and helpers for private service processes.
#![allow(dead_code)]

pub mod backendai;
pub mod cluster;
pub mod procs;
pub mod supervisor;
pub mod watcher;

use std::{collections::hash_map::DefaultHasher, hash::Hasher, path::Path, time::Duration};

pub use agent_supervisor::config::DatabaseMode;
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

/// A database of its own for one test, migrated, dropped when the value is dropped: the daemon's own tables
/// (standalone mode), or Backend.AI's with the fixtures and the daemon's own schema (Backend.AI mode).
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub db: Db,
    pub mode: DatabaseMode,
    /// The server's administrative URL, to drop the database with.
    admin: String,
}

/// One kernel to seed (see [`TestDb::add_kernel`]).
pub struct Kernel<'a> {
    pub id: uuid::Uuid,
    pub session: uuid::Uuid,
    pub agent: Option<&'a str>,
    pub agent_addr: &'a str,
    pub status: &'a str,
    pub slots: &'a str,
    /// A SYSTEM (SFTP) kernel: Backend.AI's `kernels.role`; in standalone mode the `session_type`.
    pub system: bool,
}

impl<'a> Kernel<'a> {
    /// A RUNNING compute kernel of `session` on `agent`, occupying `{"cpu": "1"}`.
    pub fn on(session: uuid::Uuid, agent: &'a str) -> Self {
        Self {
            id: uuid::Uuid::new_v4(),
            session,
            agent: Some(agent),
            agent_addr: "tcp://127.0.0.1:6001",
            status: "RUNNING",
            slots: r#"{"cpu": "1"}"#,
            system: false,
        }
    }
}

impl TestDb {
    /// Standalone mode, on the shared test server.
    pub async fn new() -> Self {
        Self::in_mode(DatabaseMode::Standalone).await
    }

    /// On the shared test server, in `mode`.
    pub async fn in_mode(mode: DatabaseMode) -> Self {
        Self::on_in(&admin_url(), mode).await
    }

    /// Standalone mode, on the server `admin` points at (a test's private PostgreSQL, say).
    pub async fn on(admin_url: &str) -> Self {
        Self::on_in(admin_url, DatabaseMode::Standalone).await
    }

    async fn on_in(admin_url: &str, mode: DatabaseMode) -> Self {
        let (tpl, lock) = match mode {
            DatabaseMode::Standalone => (template_name(), 727274),
            DatabaseMode::BackendAi => (backendai::template_name(), 727275),
        };
        let name = unique("as_test");
        let mut conn = admin(admin_url).await;
        // One process at a time builds the template; creating from it is then a file copy.
        diesel::sql_query(format!("SELECT pg_advisory_lock({lock})")).execute(&mut conn).await.unwrap();
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
            let url = db_url_on(admin_url, &building);
            if mode == DatabaseMode::BackendAi {
                backendai::create_schema(&url);
                use diesel_async::SimpleAsyncConnection;
                let mut tpl_conn = AsyncPgConnection::establish(&url).await.unwrap();
                tpl_conn.batch_execute(&backendai::fixtures()).await.unwrap();
            }
            db::run_migrations(&database_config_in(&url, mode)).await.unwrap();
            diesel::sql_query(format!("ALTER DATABASE {building} RENAME TO {tpl}")).execute(&mut conn).await.unwrap();
        }
        diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {tpl}")).execute(&mut conn).await.unwrap();
        diesel::sql_query(format!("SELECT pg_advisory_unlock({lock})")).execute(&mut conn).await.unwrap();
        let url = db_url_on(admin_url, &name);
        let db = Db::new(&database_config_in(&url, mode)).unwrap();
        Self { name, url, db, mode, admin: admin_url.to_owned() }
    }

    /// A copy of this database as it is now (its own connections are closed for the copy, then opened again).
    pub async fn copy(&mut self) -> TestDb {
        self.db.close();
        let name = unique("as_copy");
        let mut conn = admin(&self.admin).await;
        diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {}", self.name)).execute(&mut conn).await.unwrap();
        self.db = Db::new(&self.config()).unwrap();
        let url = db_url_on(&self.admin, &name);
        let db = Db::new(&database_config_in(&url, self.mode)).unwrap();
        TestDb { name, url, db, mode: self.mode, admin: self.admin.clone() }
    }

    /// An empty database (no migrations), for migration tests.
    pub async fn empty() -> Self {
        let name = unique("as_empty");
        let mut conn = admin(&admin_url()).await;
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        let url = db_url(&name);
        let db = Db::new(&database_config(&url)).unwrap();
        Self { name, url, db, mode: DatabaseMode::Standalone, admin: admin_url() }
    }

    pub fn config(&self) -> DatabaseConfig {
        database_config_in(&self.url, self.mode)
    }

    /// Runs one or more statements (a simple query: no parameters, several statements allowed).
    pub async fn sql(&self, sql: &str) {
        use diesel_async::SimpleAsyncConnection;
        let mut conn = self.db.conn().await.unwrap();
        conn.batch_execute(sql).await.unwrap_or_else(|e| panic!("{e}: {sql}"));
    }

    /// An ALIVE agent row in the default scaling group, with 8 CPUs and nothing occupied.
    pub async fn add_agent(&self, id: &str) {
        self.add_agent_with(id, "ALIVE", "tcp://127.0.0.1:6001", r#"{"cpu": "8"}"#, "{}").await;
    }

    /// An agent row in the default scaling group, as the cluster would have it.
    pub async fn add_agent_with(&self, id: &str, status: &str, addr: &str, available: &str, occupied: &str) {
        match self.mode {
            DatabaseMode::Standalone => {
                self.sql(&format!(
                    "INSERT INTO scaling_groups (name) VALUES ('default') ON CONFLICT DO NOTHING; \
                     INSERT INTO agents (id, status, region, addr, version, architecture, available_slots, \
                     occupied_slots) VALUES ('{id}', '{status}', 'local', '{addr}', '23.09.10', 'x86_64', \
                     '{available}', '{occupied}')"
                ))
                .await
            }
            DatabaseMode::BackendAi => self.sql(&backendai::agent_sql(id, status, addr, available, occupied)).await,
        }
    }

    /// An access key that may own sessions (Backend.AI's sessions reference its keypairs).
    pub fn user_access_key(&self) -> &'static str {
        match self.mode {
            DatabaseMode::Standalone => "AKTESTUSER0000000000",
            DatabaseMode::BackendAi => backendai::USER.0,
        }
    }

    /// A session of `access_key` in `status`; `system` makes it an SFTP session in standalone mode (Backend.AI
    /// decides that by its kernels' role). Returns its id.
    pub async fn add_session(&self, access_key: &str, status: &str, system: bool) -> uuid::Uuid {
        let id = uuid::Uuid::new_v4();
        match self.mode {
            DatabaseMode::Standalone => {
                let kind = if system { "SYSTEM" } else { "INTERACTIVE" };
                self.sql(&format!(
                    "INSERT INTO sessions (id, access_key, status, session_type) \
                     VALUES ('{id}', '{access_key}', '{status}', '{kind}')"
                ))
                .await
            }
            DatabaseMode::BackendAi => self.sql(&backendai::session_sql(&id, access_key, status)).await,
        }
        id
    }

    /// A kernel row; its access key is its session's.
    pub async fn add_kernel(&self, k: Kernel<'_>) {
        let sql = match self.mode {
            DatabaseMode::Standalone => {
                let agent = k.agent.map_or("NULL".to_owned(), |a| format!("'{a}'"));
                let kind = if k.system { "SYSTEM" } else { "INTERACTIVE" };
                format!(
                    "INSERT INTO kernels (id, session_id, session_type, agent, agent_addr, access_key, status, \
                     occupied_slots) SELECT '{}', s.id, '{kind}', {agent}, '{}', s.access_key, '{}', '{}' \
                     FROM sessions s WHERE s.id = '{}'",
                    k.id, k.agent_addr, k.status, k.slots, k.session
                )
            }
            DatabaseMode::BackendAi => {
                let role = if k.system { "SYSTEM" } else { "COMPUTE" };
                let access_key = self.session_access_key(k.session).await;
                backendai::kernel_sql(&k.id, &k.session, &access_key, k.agent, k.agent_addr, k.status, role, k.slots)
            }
        };
        self.sql(&sql).await;
    }

    async fn session_access_key(&self, session: uuid::Uuid) -> String {
        #[derive(diesel::QueryableByName)]
        struct Ak {
            #[diesel(sql_type = diesel::sql_types::Text)]
            access_key: String,
        }
        let mut conn = self.db.conn().await.unwrap();
        diesel::sql_query(format!("SELECT access_key::text AS access_key FROM sessions WHERE id = '{session}'"))
            .get_result::<Ak>(&mut conn)
            .await
            .unwrap()
            .access_key
    }
}

pub fn database_config(url: &str) -> DatabaseConfig {
    database_config_in(url, DatabaseMode::Standalone)
}

pub fn database_config_in(url: &str, mode: DatabaseMode) -> DatabaseConfig {
    DatabaseConfig {
        url: Secret::new(url),
        mode,
        max_connections: 8,
        connect_timeout_ms: 2_000,
        run_migrations: false,
        ..DatabaseConfig::default()
    }
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

/// Declares, for each `async fn name(mode: DatabaseMode)` named, two tests: `name::standalone` and
/// `name::backend_ai`. Every seed scenario runs this way, in both database modes.
#[allow(unused_macros)]
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[actix_rt::test]
            async fn standalone() {
                super::$name($crate::common::DatabaseMode::Standalone).await
            }
            #[actix_rt::test]
            async fn backend_ai() {
                super::$name($crate::common::DatabaseMode::BackendAi).await
            }
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use in_both_modes;

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
