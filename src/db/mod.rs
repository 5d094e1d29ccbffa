//! PostgreSQL: the connection pool, embedded migrations, row types and queries.
//!
//! Query functions take a `&mut AsyncPgConnection` so that callers can compose them inside one transaction.

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
        AsyncDieselConnectionManager,
        deadpool::{self, Object, Pool},
    },
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::{
    config::DatabaseConfig,
    error::{ErrorCode, Problem},
};

/// The migrations under `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

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
}

impl Db {
    pub fn new(cfg: &DatabaseConfig) -> Result<Self, DbError> {
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(cfg.url.expose());
        let pool = Pool::builder(manager)
            .max_size(cfg.max_connections)
            .build()
            .map_err(|e| DbError::Unavailable(format!("cannot build the pool: {e}")))?;
        Ok(Self { pool, acquire_timeout: Duration::from_millis(cfg.connect_timeout_ms) })
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

/// Applies pending migrations; returns the versions applied. Runs the synchronous migration harness on a blocking
/// thread over an async connection.
pub async fn run_migrations(url: &str) -> Result<Vec<String>, DbError> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = establish_sync(&url)?;
        let applied = conn.run_pending_migrations(MIGRATIONS).map_err(|e| DbError::Migration(e.to_string()))?;
        Ok(applied.iter().map(ToString::to_string).collect())
    })
    .await
    .map_err(|e| DbError::Migration(format!("migration task failed: {e}")))?
}

/// Reverts every applied migration (used by tests and `migrate --revert-all`).
pub async fn revert_all_migrations(url: &str) -> Result<Vec<String>, DbError> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = establish_sync(&url)?;
        let reverted = conn.revert_all_migrations(MIGRATIONS).map_err(|e| DbError::Migration(e.to_string()))?;
        Ok(reverted.iter().map(ToString::to_string).collect())
    })
    .await
    .map_err(|e| DbError::Migration(format!("migration task failed: {e}")))?
}

fn establish_sync(url: &str) -> Result<AsyncConnectionWrapper<AsyncPgConnection>, DbError> {
    use diesel::Connection;
    AsyncConnectionWrapper::<AsyncPgConnection>::establish(url)
        .map_err(|e: ConnectionError| DbError::Unavailable(e.to_string()))
}
