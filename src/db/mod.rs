//! PostgreSQL: the connection pool, embedded migrations, row types and queries.
//!
//! Query functions take a `&mut AsyncPgConnection` so that callers can compose them inside one transaction.

pub mod agents;
pub mod backendai;
pub mod fence;
pub mod keypairs;
pub mod models;
pub mod queries;
pub mod recalc;
pub mod schema;
mod sql_types;

use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::{
    AsyncPgConnection,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig,
        deadpool::{self, Object, Pool},
    },
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::{
    config::{DatabaseConfig, DatabaseMode},
    error::{ErrorCode, Problem},
};

/// Standalone mode's cluster tables (`agents`, `kernels`, ...; `migrations/standalone`), in `public`.
pub const STANDALONE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/standalone");
/// The daemon's own objects (`migrations/own`), in `database.own_schema`, in both modes.
pub const OWN_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/own");

/// Failures of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database could not be reached in time (down, restarting, pool exhausted).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    /// High availability: the stored leader epoch is not the writer's, so the writer is no longer the leader.
    #[error("this replica's leadership (epoch {ours}) has ended; the stored epoch is {}", stored.map_or("none".to_owned(), |s| s.to_string()))]
    Fenced { ours: i64, stored: Option<i64> },
}

impl DbError {
    /// Whether this is PostgreSQL's serialization failure (SQLSTATE 40001), which a retry may cure.
    pub fn is_serialization_failure(&self) -> bool {
        matches!(
            self,
            DbError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::SerializationFailure,
                _
            ))
        )
    }

    /// A query error that says the connection itself is gone counts as the database being unavailable.
    fn classify(e: diesel::result::Error) -> Self {
        match &e {
            diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::ClosedConnection
                | diesel::result::DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => DbError::Unavailable(e.to_string()),
            diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::Unknown, info)
                if info.message().contains("connection closed")
                    || info.message().contains("terminating connection") =>
            {
                DbError::Unavailable(e.to_string())
            }
            _ => DbError::Query(e),
        }
    }
}

impl From<DbError> for Problem {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(_) => Problem::new(ErrorCode::DatabaseUnavailable, e.to_string()),
            DbError::Query(_) | DbError::Migration(_) => Problem::new(ErrorCode::InternalError, e.to_string()),
            DbError::Fenced { .. } => Problem::new(ErrorCode::NoLeader, e.to_string()).with("retry_after_s", 1),
        }
    }
}

/// Maps a diesel error from a query, telling a lost connection apart from a failed query.
pub fn query_error(e: diesel::result::Error) -> DbError {
    DbError::classify(e)
}

pub type Conn = Object<AsyncPgConnection>;

/// A bounded pool of async PostgreSQL connections. Connections are verified before reuse, so a database restart
/// costs the in-flight requests at most, and the pool recovers by itself.
#[derive(Clone)]
pub struct Db {
    pool: Pool<AsyncPgConnection>,
    acquire_timeout: Duration,
    mode: DatabaseMode,
}

impl Db {
    /// A pool whose connections resolve names in the daemon's own schema first, then in `public` (where the
    /// cluster's tables are, Backend.AI's or ours).
    pub fn new(cfg: &DatabaseConfig) -> Result<Self, DbError> {
        let search_path = format!("SET search_path TO {}, public", quote_ident(&cfg.own_schema));
        let mut manager_config = ManagerConfig::default();
        manager_config.custom_setup = Box::new(move |url| {
            let search_path = search_path.clone();
            let url = url.to_owned();
            Box::pin(async move {
                use diesel_async::{AsyncConnection, SimpleAsyncConnection};
                let mut conn = AsyncPgConnection::establish(&url).await?;
                conn.batch_execute(&search_path).await.map_err(ConnectionError::CouldntSetupConfiguration)?;
                Ok(conn)
            })
        });
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(cfg.url.expose(), manager_config);
        let pool = Pool::builder(manager)
            .max_size(cfg.max_connections)
            .build()
            .map_err(|e| DbError::Unavailable(format!("cannot build the pool: {e}")))?;
        Ok(Self { pool, acquire_timeout: Duration::from_millis(cfg.connect_timeout_ms), mode: cfg.mode })
    }

    /// A pooled connection, or `Unavailable` within the configured connect timeout.
    pub async fn conn(&self) -> Result<Conn, DbError> {
        match tokio::time::timeout(self.acquire_timeout, self.pool.get()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(DbError::Unavailable(describe_pool_error(e))),
            Err(_) => {
                Err(DbError::Unavailable(format!("no connection within {} ms", self.acquire_timeout.as_millis())))
            }
        }
    }

    /// Whose tables these are: ours (standalone) or Backend.AI's.
    pub fn mode(&self) -> DatabaseMode {
        self.mode
    }

    pub fn status(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.size, s.available)
    }

    pub fn close(&self) {
        self.pool.close();
    }
}

fn describe_pool_error(e: deadpool::PoolError) -> String {
    match e {
        deadpool::PoolError::Backend(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// Applies the pending migrations the mode needs, returning the versions applied: in standalone mode the cluster
/// tables in `public` (bookkeeping in `public`, as 0.1 kept it), then in both modes the daemon's own objects in
/// `database.own_schema` (created if missing; bookkeeping there too). A Backend.AI database is never migrated.
pub async fn run_migrations(cfg: &DatabaseConfig) -> Result<Vec<String>, DbError> {
    let (url, mode, own) = (cfg.url.expose().to_owned(), cfg.mode, cfg.own_schema.clone());
    blocking(move || {
        let mut conn = establish_sync(&url)?;
        let mut applied = Vec::new();
        if mode == DatabaseMode::Standalone {
            set_search_path(&mut conn, "public")?;
            applied.extend(apply(&mut conn, STANDALONE_MIGRATIONS)?);
        }
        create_schema(&mut conn, &own)?;
        set_search_path(&mut conn, &own)?;
        applied.extend(apply(&mut conn, OWN_MIGRATIONS)?);
        Ok(applied)
    })
    .await
}

/// Reverts every applied migration of the mode (the daemon's own objects first), for tests and
/// `migrate --revert-all`; returns the versions reverted.
pub async fn revert_all_migrations(cfg: &DatabaseConfig) -> Result<Vec<String>, DbError> {
    let (url, mode, own) = (cfg.url.expose().to_owned(), cfg.mode, cfg.own_schema.clone());
    blocking(move || {
        let mut conn = establish_sync(&url)?;
        set_search_path(&mut conn, &own)?;
        let mut reverted = revert(&mut conn, OWN_MIGRATIONS)?;
        if mode == DatabaseMode::Standalone {
            set_search_path(&mut conn, "public")?;
            reverted.extend(revert(&mut conn, STANDALONE_MIGRATIONS)?);
        }
        Ok(reverted)
    })
    .await
}

type SyncConn = AsyncConnectionWrapper<AsyncPgConnection>;

/// The synchronous migration harness runs on a blocking thread over an async connection.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, DbError> + Send + 'static) -> Result<T, DbError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| DbError::Migration(format!("migration task failed: {e}")))?
}

fn apply(conn: &mut SyncConn, set: EmbeddedMigrations) -> Result<Vec<String>, DbError> {
    let applied = conn.run_pending_migrations(set).map_err(|e| DbError::Migration(e.to_string()))?;
    Ok(applied.iter().map(ToString::to_string).collect())
}

fn revert(conn: &mut SyncConn, set: EmbeddedMigrations) -> Result<Vec<String>, DbError> {
    let reverted = conn.revert_all_migrations(set).map_err(|e| DbError::Migration(e.to_string()))?;
    Ok(reverted.iter().map(ToString::to_string).collect())
}

fn create_schema(conn: &mut SyncConn, schema: &str) -> Result<(), DbError> {
    use diesel::connection::SimpleConnection;
    conn.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema))).map_err(query_error)
}

fn set_search_path(conn: &mut SyncConn, path: &str) -> Result<(), DbError> {
    use diesel::connection::SimpleConnection;
    let quoted: Vec<String> = path.split(',').map(|s| quote_ident(s.trim())).collect();
    conn.batch_execute(&format!("SET search_path TO {}", quoted.join(", "))).map_err(query_error)
}

/// A PostgreSQL identifier, quoted (the configuration already limits schema names to plain identifiers).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn establish_sync(url: &str) -> Result<SyncConn, DbError> {
    use diesel::Connection;
    SyncConn::establish(url).map_err(|e: ConnectionError| DbError::Unavailable(e.to_string()))
}
