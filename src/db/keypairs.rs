//! Queries on `keypairs`: the API credentials. Each takes a connection so callers can compose them in a transaction.
//!
//! [`find_credential`] is what authentication asks, in either mode: our `keypairs` table in standalone mode, and
//! Backend.AI's `keypairs` joined with its `users` in Backend.AI mode, where the owning user decides superadmin and
//! must be active, as the manager decides it.

use chrono::{DateTime, Utc};
use diesel::{prelude::*, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{DbError, models::KeypairRow, query_error, schema::keypairs};
use crate::config::DatabaseMode;

/// What authentication needs of a keypair. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, QueryableByName)]
pub struct Credential {
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    pub secret_key: Option<String>,
    /// The keypair is active, and (Backend.AI) so is its user.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub active: bool,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub is_superadmin: bool,
    /// The owner as recorded (Backend.AI: the user's email).
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    pub user_id: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("active", &self.active)
            .field("is_superadmin", &self.is_superadmin)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// Standalone: the daemon's own keypairs (as `k`).
const STANDALONE_CREDENTIALS: &str = "\
k.secret_key::text AS secret_key, k.is_active AS active, k.is_superadmin, k.user_id::text AS user_id
FROM keypairs k";

/// Backend.AI: its keypairs (as `k`) with their owning user; the pair counts as active only while both the keypair
/// and the user are active (an inactive or deleted user's keypairs are refused), and superadmin is the user's role.
const BACKEND_AI_CREDENTIALS: &str = "\
k.secret_key::text AS secret_key,
coalesce(k.is_active, false) AND coalesce(u.status::text = 'active', false) AS active,
coalesce(u.role::text = 'superadmin', false) AS is_superadmin,
coalesce(u.email::text, k.user_id::text) AS user_id
FROM keypairs k LEFT JOIN users u ON u.uuid = k.\"user\"";

fn credentials(mode: DatabaseMode) -> &'static str {
    match mode {
        DatabaseMode::Standalone => STANDALONE_CREDENTIALS,
        DatabaseMode::BackendAi => BACKEND_AI_CREDENTIALS,
    }
}

/// The keypair `access_key` as authentication sees it, in the database's mode.
pub async fn find_credential(
    conn: &mut AsyncPgConnection,
    mode: DatabaseMode,
    access_key: &str,
) -> Result<Option<Credential>, DbError> {
    diesel::sql_query(format!("SELECT {} WHERE k.access_key = $1", credentials(mode)))
        .bind::<Text, _>(access_key)
        .get_result(conn)
        .await
        .optional()
        .map_err(query_error)
}

#[derive(QueryableByName)]
struct ListedCredential {
    #[diesel(sql_type = Text)]
    access_key: String,
    #[diesel(embed)]
    credential: Credential,
}

/// Every keypair as authentication sees it, by access key.
pub async fn list_credentials(
    conn: &mut AsyncPgConnection,
    mode: DatabaseMode,
) -> Result<Vec<(String, Credential)>, DbError> {
    let sql = format!("SELECT k.access_key::text AS access_key, {} ORDER BY k.access_key", credentials(mode));
    let rows: Vec<ListedCredential> = diesel::sql_query(sql).load(conn).await.map_err(query_error)?;
    Ok(rows.into_iter().map(|r| (r.access_key, r.credential)).collect())
}

pub async fn find_keypair(conn: &mut AsyncPgConnection, access_key: &str) -> Result<Option<KeypairRow>, DbError> {
    keypairs::table.find(access_key).select(KeypairRow::as_select()).first(conn).await.optional().map_err(query_error)
}

pub async fn insert_keypair(conn: &mut AsyncPgConnection, row: &KeypairRow) -> Result<(), DbError> {
    diesel::insert_into(keypairs::table).values(row).execute(conn).await.map(|_| ()).map_err(query_error)
}

/// Every keypair, oldest first.
pub async fn list_keypairs(conn: &mut AsyncPgConnection) -> Result<Vec<KeypairRow>, DbError> {
    keypairs::table
        .order((keypairs::created_at, keypairs::access_key))
        .select(KeypairRow::as_select())
        .load(conn)
        .await
        .map_err(query_error)
}

/// Sets `is_active = false`; returns whether such a keypair exists.
pub async fn deactivate_keypair(conn: &mut AsyncPgConnection, access_key: &str) -> Result<bool, DbError> {
    diesel::update(keypairs::table.find(access_key))
        .set(keypairs::is_active.eq(false))
        .execute(conn)
        .await
        .map(|n| n > 0)
        .map_err(query_error)
}

pub async fn touch_last_used(conn: &mut AsyncPgConnection, access_key: &str, at: DateTime<Utc>) -> Result<(), DbError> {
    diesel::update(keypairs::table.find(access_key))
        .set(keypairs::last_used.eq(Some(at)))
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(query_error)
}
