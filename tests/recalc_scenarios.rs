#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Recalculate Usage against a real PostgreSQL: SPEC scenarios 6.1-6.3 and the semantics around them.

mod common;
mod recalc_fixture;

use agent_supervisor::{
    db::recalc::{RecalcOptions, recalculate_usage},
    domain::AgentStatus,
};
use common::TestDb;
use recalc_fixture::*;
use serde_json::json;

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// 6.1: every ALIVE/RESTARTING agent with counted kernels gets the exact sum (cpu/mem seeded with 0); ALIVE agents
/// without counted kernels get `{}`.
#[tokio::test]
async fn scenario_6_1_updates_every_agent_with_exact_sums() {
    let db = TestDb::new().await;
    let mut conn = db.db.conn().await.unwrap();
    scaling_group(&mut conn).await;
    agent(&mut conn, "i-a", "ALIVE").await;
    agent(&mut conn, "i-b", "ALIVE").await;
    agent(&mut conn, "i-idle", "ALIVE").await;
    agent(&mut conn, "i-restarting", "RESTARTING").await;

    let s1 = session(&mut conn, Some("AKIAONE"), "RUNNING", "INTERACTIVE").await;
    kernel(&mut conn, s1, Some("i-a"), json!({"cpu": "4", "mem": "17179869184", "cuda.shares": "0.5"})).await;
    kernel(&mut conn, s1, Some("i-a"), json!({"cpu": "0.5", "mem": "536870912"})).await;
    let s2 = session(&mut conn, Some("AKIAONE"), "RUNNING", "BATCH").await;
    // Only a GPU share: cpu and mem still appear, as 0, as with Backend.AI's seeded ResourceSlot.
    kernel(&mut conn, s2, Some("i-b"), json!({"cuda.shares": "1.25"})).await;
    kernel(&mut conn, s2, Some("i-restarting"), json!({"cpu": "2", "mem": "1024", "rocm.device": "1"})).await;

    let report = recalculate_usage(&db.db, &RecalcOptions::default()).await.unwrap().report;

    assert_eq!(slots(&mut conn, "i-a").await, json!({"cpu": "4.5", "mem": "17716740096", "cuda.shares": "0.5"}));
    assert_eq!(slots(&mut conn, "i-b").await, json!({"cpu": "0", "mem": "0", "cuda.shares": "1.25"}));
    assert_eq!(slots(&mut conn, "i-idle").await, json!({}));
    assert_eq!(slots(&mut conn, "i-restarting").await, json!({"cpu": "2", "mem": "1024", "rocm.device": "1"}));

    assert_eq!(report.agents_total, 4);
    assert_eq!(report.agents_updated, ids(&["i-a", "i-b", "i-restarting"]));
    assert_eq!(report.agents_reset, ids(&["i-idle"]));
    assert!(report.agents_skipped.is_empty());
    assert_eq!(report.access_keys_updated, 1);
    assert_eq!(report.attempts, 1);
    assert_eq!(usage(&mut conn).await["AKIAONE"], (2, 0, true));

    // Running it again changes nothing.
    let again = recalculate_usage(&db.db, &RecalcOptions::default()).await.unwrap().report;
    assert_eq!(again.agents_updated, report.agents_updated);
    assert_eq!(slots(&mut conn, "i-a").await, json!({"cpu": "4.5", "mem": "17716740096", "cuda.shares": "0.5"}));
}

/// 6.2: no agents at all is a success that writes nothing, not even the per-key counts.
#[tokio::test]
async fn scenario_6_2_no_agents_is_a_success_that_writes_nothing() {
    let db = TestDb::new().await;
    let mut conn = db.db.conn().await.unwrap();
    let s = session(&mut conn, Some("AKIAONE"), "PENDING", "INTERACTIVE").await;
    kernel(&mut conn, s, None, json!({"cpu": "1"})).await;
    let r = session(&mut conn, Some("AKIATWO"), "RUNNING", "INTERACTIVE").await;
    kernel(&mut conn, r, None, json!({"cpu": "1"})).await;
    usage_row(&mut conn, "AKIASTALE", 3, 1).await;

    let report = recalculate_usage(&db.db, &RecalcOptions::default()).await.unwrap().report;

    assert_eq!(report.agents_total, 0);
    assert!(report.agents_updated.is_empty() && report.agents_reset.is_empty() && report.agents_skipped.is_empty());
    assert_eq!(report.access_keys_updated, 0);
    assert_eq!(report.attempts, 1);
    let usage = usage(&mut conn).await;
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(usage["AKIASTALE"], (3, 1, false), "untouched, updated_at included");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["agents_total"], 0);
}

/// 6.3: LOST and TERMINATED agents are left exactly as they were (even when they have counted kernels) and are
/// listed as skipped with a reason; the rest are updated. RESTARTING agents without kernels are also untouched.
#[tokio::test]
async fn scenario_6_3_lost_and_terminated_agents_are_untouched_and_reported() {
    let db = TestDb::new().await;
    let mut conn = db.db.conn().await.unwrap();
    scaling_group(&mut conn).await;
    agent(&mut conn, "i-alive", "ALIVE").await;
    agent(&mut conn, "i-lost", "LOST").await;
    agent(&mut conn, "i-gone", "TERMINATED").await;
    agent(&mut conn, "i-lost-idle", "LOST").await;
    agent(&mut conn, "i-restarting-idle", "RESTARTING").await;
    let s = session(&mut conn, Some("AKIAONE"), "RUNNING", "INTERACTIVE").await;
    kernel(&mut conn, s, Some("i-alive"), json!({"cpu": "1", "mem": "2"})).await;
    kernel(&mut conn, s, Some("i-lost"), json!({"cpu": "3", "mem": "4"})).await;
    kernel(&mut conn, s, Some("i-gone"), json!({"cpu": "5", "mem": "6"})).await;

    let report = recalculate_usage(&db.db, &RecalcOptions::default()).await.unwrap().report;

    assert_eq!(slots(&mut conn, "i-alive").await, json!({"cpu": "1", "mem": "2"}));
    for untouched in ["i-lost", "i-gone", "i-lost-idle", "i-restarting-idle"] {
        assert_eq!(slots(&mut conn, untouched).await, junk(), "{untouched}");
    }
    assert_eq!(report.agents_updated, ids(&["i-alive"]));
    assert!(report.agents_reset.is_empty());
    let skipped: Vec<_> = report.agents_skipped.iter().map(|s| (s.agent_id.as_str(), s.status)).collect();
    assert_eq!(
        skipped,
        [
            ("i-gone", AgentStatus::Terminated),
            ("i-lost", AgentStatus::Lost),
            ("i-lost-idle", AgentStatus::Lost),
            ("i-restarting-idle", AgentStatus::Restarting),
        ]
    );
    let reason = |id: &str| report.agents_skipped.iter().find(|s| s.agent_id == id).unwrap().reason.clone();
    assert!(
        reason("i-lost").contains("LOST") && reason("i-lost").contains("has counted kernels"),
        "{}",
        reason("i-lost")
    );
    assert!(reason("i-gone").contains("TERMINATED"));
    assert!(!reason("i-lost-idle").contains("has counted kernels"));
    assert!(reason("i-restarting-idle").contains("RESTARTING"));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["agents_skipped"][0]["status"], "TERMINATED");
    assert_eq!(json["agents_skipped"][0]["agent_id"], "i-gone");
}

/// Decimal sums are exact: ten times 0.1 is 1.0 (no float drift), scales are kept, 40-digit integers survive,
/// and values are written without exponent.
#[tokio::test]
async fn sums_are_exact_for_fractional_and_huge_values() {
    let db = TestDb::new().await;
    let mut conn = db.db.conn().await.unwrap();
    scaling_group(&mut conn).await;
    agent(&mut conn, "i-frac", "ALIVE").await;
    agent(&mut conn, "i-huge", "ALIVE").await;
    let s = session(&mut conn, Some("AKIAONE"), "RUNNING", "INTERACTIVE").await;
    for _ in 0..10 {
        kernel(&mut conn, s, Some("i-frac"), json!({"cuda.shares": "0.1", "cpu": "0.25"})).await;
    }
    kernel(&mut conn, s, Some("i-frac"), json!({"mem": "1e3", "cpu": "0.50"})).await;
    let huge = "9999999999999999999999999999999999999999"; // 40 digits
    let tiny = format!("0.{}1", "0".repeat(29)); // 1e-30
    kernel(&mut conn, s, Some("i-huge"), json!({"mem": huge, "cpu": tiny})).await;
    kernel(&mut conn, s, Some("i-huge"), json!({"mem": huge, "cpu": "1"})).await;
    kernel(&mut conn, s, Some("i-huge"), json!({"mem": 7})).await;

    recalculate_usage(&db.db, &RecalcOptions::default()).await.unwrap();

    assert_eq!(slots(&mut conn, "i-frac").await, json!({"cuda.shares": "1.0", "cpu": "3.00", "mem": "1000"}));
    assert_eq!(
        slots(&mut conn, "i-huge").await,
        json!({"mem": format!("2{}5", "0".repeat(39)), "cpu": format!("1.{}1", "0".repeat(29))})
    );
}

/// Concurrency is counted per session: a session with many kernels (on several agents) counts once for its key;
/// SYSTEM sessions are counted separately.
#[tokio::test]
async fn multi_kernel_sessions_count_once_and_system_sessions_separately() {
    let db = TestDb::new().await;
    let mut conn = db.db.conn().await.unwrap();
    scaling_group(&mut conn).await;
    agent(&mut conn, "i-1", "ALIVE").await;
    agent(&mut conn, "i-2", "ALIVE").await;
    let multi = session(&mut conn, Some("AKIAONE"), "RUNNING", "BATCH").await;
    for a in ["i-1", "i-2", "i-1", "i-2", "i-1"] {
        kernel(&mut conn, multi, Some(a), json!({"cpu": "1", "mem": "1"})).await;
    }
    let single = session(&mut conn, Some("AKIAONE"), "RUNNING", "INFERENCE").await;
    kernel(&mut conn, single, Some("i-1"), json!({"cpu": "1", "mem": "1"})).await;
    for _ in 0..2 {
        let sftp = session(&mut conn, Some("AKIAONE"), "RUNNING", "SYSTEM").await;
        kernel(&mut conn, sftp, Some("i-2"), json!({"cpu": "0.1", "mem": "1"})).await;
        kernel(&mut conn, sftp, Some("i-2"), json!({"cpu": "0.1", "mem": "1"})).await;
    }
    let other = session(&mut conn, Some("AKIATWO"), "RUNNING", "SYSTEM").await;
    kernel(&mut conn, other, Some("i-1"), json!({"cpu": "1", "mem": "1"})).await;

    let report = recalculate_usage(&db.db, &RecalcOptions::default()).await.unwrap().report;

    let usage = usage(&mut conn).await;
    assert_eq!(usage["AKIAONE"], (2, 2, true));
    assert_eq!(usage["AKIATWO"], (0, 1, true));
    assert_eq!(report.access_keys_updated, 2);
    assert_eq!(slots(&mut conn, "i-1").await, json!({"cpu": "5", "mem": "5"}));
    assert_eq!(slots(&mut conn, "i-2").await, json!({"cpu": "2.4", "mem": "6"}));
}

/// The filter is on the session status: ERROR and TERMINATING count (as do the other active statuses); PENDING,
/// CANCELLED and TERMINATED do not, neither for slots nor for concurrency.
#[tokio::test]
async fn error_and_terminating_sessions_count_pending_cancelled_terminated_do_not() {
    let db = TestDb::new().await;
    let mut conn = db.db.conn().await.unwrap();
    scaling_group(&mut conn).await;
    agent(&mut conn, "i-1", "ALIVE").await;
    agent(&mut conn, "i-only-ended", "ALIVE").await;
    let counted = [
        "SCHEDULED",
        "PREPARING",
        "PULLING",
        "PREPARED",
        "CREATING",
        "RUNNING",
        "RESTARTING",
        "RUNNING_DEGRADED",
        "TERMINATING",
        "ERROR",
    ];
    for (i, status) in counted.iter().enumerate() {
        let s = session(&mut conn, Some("AKIAONE"), status, "INTERACTIVE").await;
        kernel(&mut conn, s, Some("i-1"), json!({"cpu": "1", "mem": (1u64 << i).to_string()})).await;
    }
    for status in ["PENDING", "CANCELLED", "TERMINATED"] {
        let s = session(&mut conn, Some("AKIAONE"), status, "INTERACTIVE").await;
        kernel(&mut conn, s, Some("i-1"), json!({"cpu": "100", "mem": "100"})).await;
        let s = session(&mut conn, Some("AKIAENDED"), status, "SYSTEM").await;
        kernel(&mut conn, s, Some("i-only-ended"), json!({"cpu": "100", "mem": "100"})).await;
    }

    let report = recalculate_usage(&db.db, &RecalcOptions::default()).await.unwrap().report;

    assert_eq!(slots(&mut conn, "i-1").await, json!({"cpu": "10", "mem": "1023"}));
    assert_eq!(slots(&mut conn, "i-only-ended").await, json!({}));
    assert_eq!(report.agents_reset, ids(&["i-only-ended"]));
    let usage = usage(&mut conn).await;
    assert_eq!(usage["AKIAONE"], (10, 0, true));
    assert!(!usage.contains_key("AKIAENDED"), "no occupying session, no row: {usage:?}");
}

/// Kernels without an agent add to no agent, but their session still counts for its access key.
#[tokio::test]
async fn kernels_without_agent_are_ignored() {
    let db = TestDb::new().await;
    let mut conn = db.db.conn().await.unwrap();
    scaling_group(&mut conn).await;
    agent(&mut conn, "i-1", "ALIVE").await;
    let s = session(&mut conn, Some("AKIAONE"), "RUNNING", "INTERACTIVE").await;
    kernel(&mut conn, s, Some("i-1"), json!({"cpu": "1", "mem": "2"})).await;
    kernel(&mut conn, s, None, json!({"cpu": "50", "mem": "50", "cuda.device": "8"})).await;
    let unplaced = session(&mut conn, Some("AKIATWO"), "SCHEDULED", "INTERACTIVE").await;
    kernel(&mut conn, unplaced, None, json!({"cpu": "8"})).await;

    let report = recalculate_usage(&db.db, &RecalcOptions::default()).await.unwrap().report;

    assert_eq!(slots(&mut conn, "i-1").await, json!({"cpu": "1", "mem": "2"}));
    assert_eq!(report.agents_updated, ids(&["i-1"]));
    let usage = usage(&mut conn).await;
    assert_eq!(usage["AKIAONE"], (1, 0, true));
    assert_eq!(usage["AKIATWO"], (1, 0, true));
}

/// An access key that has a row but no occupying session any more is set back to 0.
#[tokio::test]
async fn stale_access_key_is_reset_to_zero() {
    let db = TestDb::new().await;
    let mut conn = db.db.conn().await.unwrap();
    scaling_group(&mut conn).await;
    agent(&mut conn, "i-1", "ALIVE").await;
    usage_row(&mut conn, "AKIASTALE", 4, 2).await;
    usage_row(&mut conn, "AKIAONE", 9, 9).await;
    let done = session(&mut conn, Some("AKIASTALE"), "TERMINATED", "INTERACTIVE").await;
    kernel(&mut conn, done, Some("i-1"), json!({"cpu": "1"})).await;
    let s = session(&mut conn, Some("AKIAONE"), "RUNNING", "SYSTEM").await;
    kernel(&mut conn, s, Some("i-1"), json!({"cpu": "1"})).await;

    let report = recalculate_usage(&db.db, &RecalcOptions::default()).await.unwrap().report;

    let usage = usage(&mut conn).await;
    assert_eq!(usage["AKIASTALE"], (0, 0, true));
    assert_eq!(usage["AKIAONE"], (0, 1, true));
    assert_eq!(report.access_keys_updated, 2);
    assert_eq!(report.access_keys_reset, 1);
}
