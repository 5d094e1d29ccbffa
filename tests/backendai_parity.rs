//! Recalculate Usage against Backend.AI 23.9.10's own `AgentRegistry.recalc_resource_usage`, on the same seeded
//! Backend.AI database (three copies of it) and the same Redis contents (three Redis servers):
//!
//! - `agents.occupied_slots` must be what 23.9.10 writes, except for LOST and TERMINATED agents, which the daemon
//!   leaves untouched (seed 6.3; 23.9.10 overwrites those that still have kernels), and for idle ALIVE agents while
//!   a counted kernel has no agent (23.9.10's reset then matches nothing; the daemon resets them);
//! - the Redis keys must be what 23.9.10 writes once its concurrency bug is fixed and followed by a full scan
//!   (`--as-intended`); 23.9.10 as shipped counts no concurrency and only sets existing keys to 0;
//! - Backend.AI's schema is unchanged afterwards (`alembic check`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use agent_supervisor::config::{DatabaseMode, Secret};
use common::{
    Kernel, TestDb,
    backendai::{self, ADMIN, INACTIVE_USER, USER},
    procs::{PrivateRedis, repo_root},
    supervisor::TestApp,
};
use diesel_async::RunQueryDsl;
use serde_json::Value;

/// Every agent's `occupied_slots`.
async fn slots(db: &TestDb) -> BTreeMap<String, Value> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        occupied_slots: Value,
    }
    let mut conn = db.db.conn().await.unwrap();
    let rows: Vec<Row> =
        diesel::sql_query("SELECT id::text AS id, occupied_slots FROM agents").load(&mut conn).await.unwrap();
    rows.into_iter().map(|r| (r.id, r.occupied_slots)).collect()
}

/// 23.9.10's recalculation, run by Backend.AI's own code on `db` and `redis`.
fn backend_ai_recalc(db: &TestDb, redis: &PrivateRedis, as_intended: bool) {
    let mut cmd = std::process::Command::new(backendai::python());
    cmd.arg(repo_root().join("tests/backendai/recalc_parity.py")).args(["--db", &db.url, "--redis", &redis.url()]);
    if as_intended {
        cmd.arg("--as-intended");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "23.9.10's recalc_resource_usage failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The agents, sessions and kernels every run starts from: each rule of the recalculation has a case.
async fn seed(db: &TestDb) {
    let addr = "tcp://127.0.0.1:6001";
    let stale = r#"{"cpu": "99", "mem": "1"}"#;
    for (id, status) in
        [("i-busy", "ALIVE"), ("i-idle", "ALIVE"), ("i-restarting", "RESTARTING"), ("i-waking", "RESTARTING")]
    {
        db.add_agent_with(id, status, addr, r#"{"cpu": "8", "mem": "17179869184"}"#, stale).await;
    }
    db.add_agent_with("i-lost", "LOST", addr, "{}", stale).await;
    db.add_agent_with("i-dead", "TERMINATED", addr, "{}", stale).await;

    let kernel = |session, agent, slots| Kernel { slots, ..Kernel::on(session, agent) };
    // i-busy: decimal sums keep their scale ("1.50" + "0.25" = "1.75"), exponents are written out, slots that
    // only some kernels have are summed from the others, and sessions in every status but PENDING, TERMINATED and
    // CANCELLED count for the agent (TERMINATING and ERROR included).
    for (status, slots) in [
        ("RUNNING", r#"{"cpu": "1.50", "mem": "1073741824", "cuda.shares": "0.25"}"#),
        ("ERROR", r#"{"cpu": "0.25", "mem": "1e3"}"#),
        ("TERMINATING", r#"{"cpu": "2", "cuda.shares": "0.5"}"#),
        ("PENDING", r#"{"cpu": "100"}"#),
        ("TERMINATED", r#"{"cpu": "100"}"#),
        ("CANCELLED", r#"{"cpu": "100"}"#),
    ] {
        let s = db.add_session(USER.0, status, false).await;
        db.add_kernel(kernel(s, "i-busy", slots)).await;
    }
    // A session with two kernels on two agents, one of them RESTARTING (updated, as its kernels are counted).
    let s = db.add_session(ADMIN.0, "RUNNING", false).await;
    db.add_kernel(kernel(s, "i-busy", r#"{"cpu": "1", "mem": "2147483648"}"#)).await;
    db.add_kernel(kernel(s, "i-restarting", r#"{"cpu": "3", "mem": "2147483648"}"#)).await;
    // An SFTP session (a SYSTEM kernel), and a session with both a SYSTEM and a COMPUTE kernel (both counts).
    let sftp = db.add_session(USER.0, "RUNNING", false).await;
    db.add_kernel(Kernel { system: true, ..kernel(sftp, "i-busy", r#"{"cpu": "0.5", "mem": "268435456"}"#) }).await;
    let both = db.add_session(ADMIN.0, "RUNNING", false).await;
    db.add_kernel(Kernel { system: true, ..kernel(both, "i-busy", r#"{"cpu": "0.5"}"#) }).await;
    db.add_kernel(kernel(both, "i-busy", r#"{"cpu": "1"}"#)).await;
    // A kernel of a LOST agent (23.9.10 rewrites the agent; the daemon leaves it), and one without an agent.
    let lost = db.add_session(USER.0, "RUNNING", false).await;
    db.add_kernel(kernel(lost, "i-lost", r#"{"cpu": "4"}"#)).await;
    let homeless = db.add_session(USER.0, "RUNNING", false).await;
    db.add_kernel(Kernel { agent: None, ..kernel(homeless, "i-busy", r#"{"cpu": "7"}"#) }).await;
}

/// Keys 23.9.10's full scan must correct: one for an access key without sessions, one with a wrong count.
fn stale_redis() -> PrivateRedis {
    let redis = PrivateRedis::start(None);
    redis.cli(&["MSET", &format!("keypair.concurrency_used.{}", INACTIVE_USER.0), "5"]);
    redis.cli(&["MSET", &format!("keypair.sftp_concurrency_used.{}", ADMIN.0), "9"]);
    redis
}

#[actix_rt::test]
async fn recalculation_matches_backend_ai_23_9_10_on_the_same_data() {
    let mut source = TestDb::in_mode(DatabaseMode::BackendAi).await;
    seed(&source).await;
    let (shipped, intended) = (source.copy().await, source.copy().await);
    let (ours_redis, shipped_redis, intended_redis) = (stale_redis(), stale_redis(), stale_redis());

    backend_ai_recalc(&shipped, &shipped_redis, false);
    backend_ai_recalc(&intended, &intended_redis, true);
    let url = ours_redis.url();
    let app = TestApp::spawn_on(source, |c| c.redis.url = Some(Secret::new(url))).await;
    let (status, report) = app.post("/v1/usage/recalculate", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["concurrency_error"], Value::Null, "{report}");

    // occupied_slots: as 23.9.10 writes them (both runs agree), but for the LOST and TERMINATED agents.
    let ours = slots(&app.db).await;
    let theirs = slots(&shipped).await;
    assert_eq!(theirs, slots(&intended).await, "the concurrency fix does not touch the slots");
    for (agent, value) in &theirs {
        match agent.as_str() {
            "i-lost" => {
                assert_eq!(value, &serde_json::json!({"cpu": "4", "mem": "0"}), "23.9.10 rewrites a LOST agent");
                assert_eq!(ours[agent], serde_json::json!({"cpu": "99", "mem": "1"}), "the daemon leaves it");
            }
            // 23.9.10 resets idle ALIVE agents with `id NOT IN (<agents with kernels>)`; a counted kernel without an
            // agent puts NULL in that list, and `NOT IN (…, NULL)` matches no row. The daemon resets them.
            "i-idle" => {
                assert_eq!(value, &serde_json::json!({"cpu": "99", "mem": "1"}), "23.9.10 leaves it stale");
                assert_eq!(ours[agent], serde_json::json!({}), "the daemon resets it");
            }
            _ => assert_eq!(&ours[agent], value, "occupied_slots of {agent}"),
        }
    }
    assert_eq!(
        ours["i-busy"],
        serde_json::json!({"cpu": "6.75", "mem": "3489661928", "cuda.shares": "0.75"}),
        "the sums themselves"
    );
    assert_eq!(ours["i-waking"], serde_json::json!({"cpu": "99", "mem": "1"}), "a RESTARTING one is left");

    // Redis: as 23.9.10 means to write it.
    let expected = vec![
        (format!("keypair.concurrency_used.{}", INACTIVE_USER.0), "0".to_owned()),
        (format!("keypair.concurrency_used.{}", ADMIN.0), "2".to_owned()),
        (format!("keypair.concurrency_used.{}", USER.0), "4".to_owned()),
        (format!("keypair.sftp_concurrency_used.{}", ADMIN.0), "1".to_owned()),
        (format!("keypair.sftp_concurrency_used.{}", USER.0), "1".to_owned()),
    ];
    assert_eq!(ours_redis.concurrency_keys(), expected);
    assert_eq!(intended_redis.concurrency_keys(), expected, "23.9.10 with its concurrency bug fixed");
    // As shipped, 23.9.10 counts nothing and sets the keys it finds to 0.
    assert_eq!(
        shipped_redis.concurrency_keys(),
        [
            (format!("keypair.concurrency_used.{}", INACTIVE_USER.0), "0".to_owned()),
            (format!("keypair.sftp_concurrency_used.{}", ADMIN.0), "0".to_owned()),
        ]
    );

    // Backend.AI's tables are as its models define them: the daemon's own live in a schema of their own.
    let (clean, text) = backendai::alembic_check(&app.db.url);
    assert!(clean && text.contains("No new upgrade operations detected"), "{text}");
}
