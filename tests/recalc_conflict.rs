#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Serialization failures: a concurrent SERIALIZABLE writer that crosses the recalculation (it reads agents and
//! writes a kernel and an agent row) makes the recalculation's first attempt fail with SQLSTATE 40001. The attempt is
//! retried from scratch, and the result is exact: it reflects the writer's change and counts nothing twice.

mod common;
mod recalc_fixture;

use std::time::Duration;

use agent_supervisor::db::{
    DbError,
    recalc::{RecalcOptions, RecalcReport, recalculate_usage},
};
use common::{TestDb, eventually};
use diesel::{QueryableByName, sql_types::BigInt};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use recalc_fixture::*;
use serde_json::json;

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn scalar(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<N>(conn).await.unwrap().n
}

/// Sets up two agents with kernels, opens the crossing writer, starts the recalculation, waits until the
/// recalculation is blocked behind the writer (the barrier), then commits the writer.
async fn recalc_against_crossing_writer(db: &TestDb, opts: RecalcOptions) -> Result<RecalcReport, DbError> {
    let mut conn = db.db.conn().await.unwrap();
    scaling_group(&mut conn).await;
    agent(&mut conn, "i-1", "ALIVE").await;
    agent(&mut conn, "i-2", "ALIVE").await;
    let s = session(&mut conn, Some("AKIAONE"), "RUNNING", "INTERACTIVE").await;
    let k1 = kernel(&mut conn, s, Some("i-1"), json!({"cpu": "1", "mem": "1"})).await;
    kernel(&mut conn, s, Some("i-1"), json!({"cpu": "0.1", "mem": "1"})).await;
    kernel(&mut conn, s, Some("i-2"), json!({"cpu": "2", "mem": "2"})).await;

    // The writer: reads what the recalculation writes, writes what it reads, and holds the lock on i-1's row.
    let mut writer = AsyncPgConnection::establish(&db.url).await.unwrap();
    let writer_pid = scalar(&mut writer, "SELECT pg_backend_pid()::bigint AS n").await;
    diesel::sql_query("BEGIN ISOLATION LEVEL SERIALIZABLE").execute(&mut writer).await.unwrap();
    scalar(&mut writer, "SELECT count(*) AS n FROM agents WHERE occupied_slots <> '{}'").await;
    diesel::sql_query(format!(
        "UPDATE kernels SET occupied_slots = '{{\"cpu\": \"3.5\", \"mem\": \"1\"}}' WHERE id = '{k1}'"
    ))
    .execute(&mut writer)
    .await
    .unwrap();
    diesel::sql_query("UPDATE agents SET occupied_slots = '{\"writer\": \"1\"}' WHERE id = 'i-1'")
        .execute(&mut writer)
        .await
        .unwrap();

    let pool = db.db.clone();
    let recalc = tokio::spawn(async move { recalculate_usage(&pool, &opts).await.map(|o| o.report) });

    // Barrier: the recalculation has taken its snapshot and waits for the writer's row lock.
    let waiting_sql = format!(
        "SELECT count(*) AS n FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> {writer_pid}"
    );
    let blocked = eventually(Duration::from_secs(20), || {
        let (sql, pool) = (waiting_sql.clone(), db.db.clone());
        async move { scalar(&mut pool.conn().await.unwrap(), &sql).await > 0 }
    })
    .await;
    assert!(blocked, "the recalculation never waited for the writer");
    diesel::sql_query("COMMIT").execute(&mut writer).await.unwrap();

    tokio::time::timeout(Duration::from_secs(30), recalc).await.expect("recalculation finished").unwrap()
}

#[tokio::test]
async fn serialization_failure_is_retried_and_the_result_is_exact() {
    let db = TestDb::new().await;
    let report = recalc_against_crossing_writer(&db, RecalcOptions::default()).await.unwrap();

    assert!(report.attempts >= 2, "attempts: {}", report.attempts);
    let mut conn = db.db.conn().await.unwrap();
    // The retry saw the writer's kernel change and overwrote its agent junk; nothing is counted twice.
    assert_eq!(slots(&mut conn, "i-1").await, json!({"cpu": "3.6", "mem": "2"}));
    assert_eq!(slots(&mut conn, "i-2").await, json!({"cpu": "2", "mem": "2"}));
    assert_eq!(usage(&mut conn).await["AKIAONE"], (1, 0, true));
    assert_eq!(report.agents_updated, ["i-1", "i-2"]);
}

#[tokio::test]
async fn serialization_failure_is_returned_when_attempts_run_out() {
    let db = TestDb::new().await;
    let opts = RecalcOptions { max_attempts: 1, ..RecalcOptions::default() };
    let err = recalc_against_crossing_writer(&db, opts).await.unwrap_err();

    assert!(err.is_serialization_failure(), "{err}");
    let mut conn = db.db.conn().await.unwrap();
    // Nothing of the failed attempt is left behind: the writer's value stands, no usage row was written.
    assert_eq!(slots(&mut conn, "i-1").await, json!({"writer": "1"}));
    assert_eq!(slots(&mut conn, "i-2").await, junk());
    assert!(usage(&mut conn).await.is_empty());
}
