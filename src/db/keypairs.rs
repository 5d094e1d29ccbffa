//! Queries on `keypairs`: the API credentials. Each takes a connection so callers can compose them in a transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{DbError, models::KeypairRow, query_error, schema::keypairs};

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
