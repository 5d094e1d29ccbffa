//! Fencing (SPEC §11): with high availability, the leader's epoch (the create revision of its etcd leader key) is
//! stored in `ha_leader`, and every write that starts or finishes a command, a sync or a recalculation runs in a
//! transaction that first reads that row `FOR SHARE` and goes on only if the epoch is its own. A new leader's claim
//! (an `UPDATE` of the row) therefore waits for the old leader's writes in flight and is seen by every later one: a
//! deposed leader cannot write after a newer one took over. Without high availability the fence is `None` and no
//! check is made.

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use chrono::{DateTime, Utc};

use super::{Db, DbError, models::NewAgentEvent, queries, query_error};
use crate::domain::EventOutcome;

/// The epoch a write must be made under (`None`: high availability is off).
pub type Fence = Option<i64>;

#[derive(QueryableByName)]
struct Epoch {
    #[diesel(sql_type = BigInt)]
    epoch: i64,
}

/// `$write` (an expression using the connection `$conn`) in a transaction that first checks `$fence` against the
/// stored epoch, or plainly when `$fence` is `None`.
macro_rules! fenced {
    ($db:expr, $fence:expr, |$conn:ident| $write:expr) => {{
        let mut conn = $db.conn().await?;
        match $fence {
            None => {
                let $conn = &mut *conn;
                $write
            }
            Some(epoch) => {
                conn.transaction::<_, DbError, _>(async |$conn| {
                    check_epoch($conn, epoch).await?;
                    $write
                })
                .await
            }
        }
    }};
}

/// Records a started command (or any audit event) under `fence`. Returns the event id.
pub async fn insert_event(db: &Db, fence: Fence, event: &NewAgentEvent) -> Result<i64, DbError> {
    fenced!(db, fence, |conn| queries::insert_event(conn, event).await)
}

/// Records how a command ended, under the epoch it started under.
pub async fn finish_event(db: &Db, fence: Fence, end: &EventEnd<'_>) -> Result<(), DbError> {
    fenced!(db, fence, |conn| queries::finish_event(
        conn,
        end.id,
        end.outcome,
        end.http_status,
        end.detail,
        end.finished_at
    )
    .await)
}

/// How a command ended (the update [`finish_event`] makes).
#[derive(Debug, Clone, Copy)]
pub struct EventEnd<'a> {
    pub id: i64,
    pub outcome: EventOutcome,
    pub http_status: Option<i16>,
    pub detail: &'a serde_json::Value,
    pub finished_at: DateTime<Utc>,
}

/// Whether `fence` is still the stored epoch right now (always, without high availability): checked right before
/// acting on an agent.
pub async fn still_leading(db: &Db, fence: Fence) -> Result<(), DbError> {
    let Some(epoch) = fence else { return Ok(()) };
    let mut conn = db.conn().await?;
    check_epoch(&mut conn, epoch).await
}

/// Inside a transaction: fails with [`DbError::Fenced`] unless `epoch` is the stored one (and holds the row so that
/// no claim can pass until the transaction ends).
pub async fn check_epoch(conn: &mut AsyncPgConnection, epoch: i64) -> Result<(), DbError> {
    let stored = diesel::sql_query("SELECT epoch FROM ha_leader FOR SHARE")
        .load::<Epoch>(conn)
        .await
        .map_err(query_error)?
        .into_iter()
        .next()
        .map(|e| e.epoch);
    match stored {
        Some(s) if s == epoch => Ok(()),
        other => Err(DbError::Fenced { ours: epoch, stored: other }),
    }
}

/// What a new leader found when it claimed its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Commands of older epochs (or of a daemon without high availability) that never finished, now `interrupted`.
    pub interrupted: usize,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Makes `epoch` the stored one (only forward: a claim with an older epoch fails with [`DbError::Fenced`]) and
/// marks the unfinished commands of older epochs `interrupted`, in one transaction.
pub async fn claim(db: &Db, epoch: i64, replica_id: &str, url: &str) -> Result<Claim, DbError> {
    let mut conn = db.conn().await?;
    conn.transaction::<Claim, DbError, _>(async |conn| {
        let taken = diesel::sql_query(
            "INSERT INTO ha_leader AS h (singleton, epoch, replica_id, url, since) VALUES (TRUE, $1, $2, $3, now()) \
             ON CONFLICT (singleton) DO UPDATE \
                SET epoch = EXCLUDED.epoch, replica_id = EXCLUDED.replica_id, url = EXCLUDED.url, since = now() \
                WHERE h.epoch <= EXCLUDED.epoch \
             RETURNING h.epoch",
        )
        .bind::<BigInt, _>(epoch)
        .bind::<Text, _>(replica_id)
        .bind::<Text, _>(url)
        .load::<Epoch>(conn)
        .await
        .map_err(query_error)?;
        if taken.is_empty() {
            let stored = diesel::sql_query("SELECT epoch FROM ha_leader")
                .load::<Epoch>(conn)
                .await
                .map_err(query_error)?
                .into_iter()
                .next()
                .map(|e| e.epoch);
            return Err(DbError::Fenced { ours: epoch, stored });
        }
        let interrupted = diesel::sql_query(
            "WITH marked AS ( \
                UPDATE agent_events \
                   SET outcome = 'interrupted', finished_at = now(), \
                       detail = detail || jsonb_build_object('interrupted_by_epoch', $1::bigint) \
                 WHERE outcome = 'running' AND (epoch IS NULL OR epoch < $1) \
                RETURNING 1) \
             SELECT count(*) AS n FROM marked",
        )
        .bind::<BigInt, _>(epoch)
        .get_result::<Count>(conn)
        .await
        .map_err(query_error)?
        .n;
        Ok(Claim { interrupted: usize::try_from(interrupted).unwrap_or(0) })
    })
    .await
}
