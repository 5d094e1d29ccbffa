//! `database.mode = "backend.ai"` on a real Backend.AI 23.09 database (made by Backend.AI's own code): the start-up
//! check names what is missing, authentication follows Backend.AI's keypairs and users, the daemon's keypair
//! commands refuse, and concurrency goes to a real Redis, found through etcd as the manager finds it, with failures
//! reported rather than fatal. (The seed scenarios themselves run in both modes in `supervisor_*`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{net::TcpListener, process::Command};

use agent_supervisor::{
    app,
    config::{Config, DatabaseMode, Secret},
};
use common::{
    Kernel, TestDb, TestEtcd,
    backendai::{self, INACTIVE_USER, USER},
    procs::PrivateRedis,
    supervisor::{Creds, METRICS_TOKEN, TestApp, test_config},
};
use serde_json::json;

async fn start_error(db: &TestDb) -> String {
    let etcd = TestEtcd::new();
    let mut config: Config = test_config(db, &etcd);
    config.database.mode = DatabaseMode::BackendAi;
    config.database.run_migrations = true;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    match app::start(&config, listener).await {
        Ok(_) => panic!("the daemon started on a database it cannot use"),
        Err(e) => e.to_string(),
    }
}

#[actix_rt::test]
async fn start_up_refuses_a_database_that_is_not_backend_ais_and_names_what_is_missing() {
    // The daemon's own standalone tables look like Backend.AI's, but are not them.
    let db = TestDb::new().await;
    let err = start_error(&db).await;
    for piece in [
        "not a Backend.AI database",
        "no table public.alembic_version",
        "missing table public.users",
        "column kernels.status is varchar, expected kernelstatus",
        "missing column kernels.role (kernelrole)",
        "missing column keypairs.user (uuid)",
    ] {
        assert!(err.contains(piece), "{piece:?} is not named in:\n{err}");
    }
}

#[actix_rt::test]
async fn start_up_refuses_a_backend_ai_database_whose_columns_differ() {
    let db = TestDb::in_mode(DatabaseMode::BackendAi).await;
    db.sql(
        "ALTER TABLE agents RENAME COLUMN occupied_slots TO occupied; ALTER TABLE kernels ALTER COLUMN role TYPE text",
    )
    .await;
    let err = start_error(&db).await;
    assert!(err.contains("missing column agents.occupied_slots (jsonb)"), "{err}");
    assert!(err.contains("column kernels.role is text, expected kernelrole"), "{err}");
    assert!(!err.contains("alembic_version"), "the revision is there: {err}");
}

#[actix_rt::test]
async fn backend_ais_keypairs_and_users_decide_who_may_do_what() {
    let app = TestApp::spawn_in(DatabaseMode::BackendAi, |_| {}).await;
    app.add_agent("i-auth").await;

    // users.role = 'superadmin' (the fixtures' admin) may list agents; a plain user may not, but may sync.
    let (status, body) = app.get("/v1/agents").await;
    assert_eq!(status, 200, "{body}");
    let (status, who) = app.get("/v1/whoami").await;
    assert_eq!((status, who["is_superadmin"].as_bool()), (200, Some(true)));
    let user = Creds::of(USER);
    let (status, body) = app.request("GET", "/v1/agents", None, Some(&user)).await;
    assert_eq!((status, body["error_code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, who) = app.request("GET", "/v1/whoami", None, Some(&user)).await;
    assert_eq!((status, who["access_key"].as_str(), who["is_superadmin"].as_bool()), (200, Some(USER.0), Some(false)));

    // A user whose status is not active: refused, although the keypair itself is active (Backend.AI 23.9.10's
    // own manager does not check this; the user is what was deactivated).
    let (status, body) = app.request("GET", "/v1/whoami", None, Some(&Creds::of(INACTIVE_USER))).await;
    assert_eq!((status, body["error_code"].as_str()), (401, Some("auth_failed")), "{body}");

    // A deleted user, and an inactive keypair of an active user: refused too. (Decisions are cached for up to 5 s;
    // fresh keypairs are looked up for the first time.)
    let deleted = app.add_keypair(true, true).await;
    app.sql(&format!("UPDATE users SET status = 'deleted' WHERE main_access_key = '{}'", deleted.access_key)).await;
    let (status, _) = app.request("GET", "/v1/whoami", None, Some(&deleted)).await;
    assert_eq!(status, 401);
    let inactive_key = app.add_keypair(true, true).await;
    app.sql(&format!("UPDATE keypairs SET is_active = false WHERE access_key = '{}'", inactive_key.access_key)).await;
    let (status, _) = app.request("GET", "/v1/whoami", None, Some(&inactive_key)).await;
    assert_eq!(status, 401);
    // An unknown key and a wrong secret: refused as in standalone mode.
    let (status, body) =
        app.request("GET", "/v1/whoami", None, Some(&Creds::of(("AKIANOSUCHKEY0000000", USER.1)))).await;
    assert_eq!((status, body["msg"].as_str()), (401, Some("Access key not found")));
    let (status, body) = app.request("GET", "/v1/whoami", None, Some(&Creds::of((USER.0, INACTIVE_USER.1)))).await;
    assert_eq!((status, body["msg"].as_str()), (401, Some("Signature mismatch")));

    // The daemon never writes Backend.AI's keypairs (no last_used bookkeeping here).
    #[derive(diesel::QueryableByName)]
    struct LastUsed {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
        last_used: Option<chrono::DateTime<chrono::Utc>>,
    }
    let mut conn = app.db.db.conn().await.unwrap();
    let row: LastUsed = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query(format!("SELECT last_used FROM keypairs WHERE access_key = '{}'", backendai::ADMIN.0)),
        &mut conn,
    )
    .await
    .unwrap();
    assert_eq!(row.last_used, None);
}

#[actix_rt::test]
async fn the_keypair_commands_refuse_to_write_backend_ais_keypairs() {
    let db = TestDb::in_mode(DatabaseMode::BackendAi).await;
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_agent-supervisor"))
            .args(args)
            .env("AGENT_SUPERVISOR_DATABASE_URL", &db.url)
            .env("AGENT_SUPERVISOR_DATABASE_MODE", "backend.ai")
            .output()
            .unwrap()
    };
    for args in [&["keypair", "create", "--superadmin"][..], &["keypair", "deactivate", USER.0][..]] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains("keypairs are Backend.AI's") && err.contains("backend.ai"), "{args:?}: {err}");
    }
    // Listing reads them, with the owner and what the daemon makes of them.
    let out = run(&["keypair", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_key = |ak: &str| listed.as_array().unwrap().iter().find(|k| k["access_key"] == ak).cloned().unwrap();
    assert_eq!(by_key(backendai::ADMIN.0)["is_superadmin"], true);
    assert_eq!(by_key(INACTIVE_USER.0)["is_active"], false, "an inactive user's keypair is not usable");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(USER.1), "no secret is listed");
    // And nothing was written.
    let count =
        Command::new("psql").args([&db.url, "-tAc", "SELECT count(*) FROM keypairs WHERE is_active"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "3");
}

/// Redis found through etcd `config/redis/` as 23.09's manager finds it; a wrong password or a Redis that is down
/// leaves the slots recalculated and says in the report why the counts were not written; the next run repairs.
#[actix_rt::test]
async fn concurrency_goes_to_the_redis_etcd_names_and_redis_failures_are_reported_not_fatal() {
    let mut redis = PrivateRedis::start(Some("redis-pw-never-logged"));
    let app = TestApp::spawn_in(DatabaseMode::BackendAi, |c| c.metrics.token = Some(Secret::new(METRICS_TOKEN))).await;
    let etcd = agent_supervisor::etcd::Etcd::connect(&app.config.etcd).await.unwrap();
    etcd.put("config/redis/addr", &format!("127.0.0.1:{}", redis.port)).await.unwrap();
    etcd.put("config/redis/password", "wrong-password").await.unwrap();
    app.add_agent("i-r").await;
    let compute = app.db.add_session(USER.0, "RUNNING", false).await;
    app.db.add_kernel(Kernel::on(compute, "i-r")).await;
    let sftp = app.db.add_session(USER.0, "RUNNING", false).await;
    app.db.add_kernel(Kernel { system: true, ..Kernel::on(sftp, "i-r") }).await;
    redis.cli(&["SET", "keypair.concurrency_used.AKIAGONE000000000000", "4"]);

    // Wrong password: the slots are written, the counts are not, and the answer says why.
    let (status, report) = app.post("/v1/usage/recalculate", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["agents_updated"], json!(["i-r"]));
    let why = report["concurrency_error"].as_str().unwrap();
    assert!(why.contains("refused the credentials") && why.contains(&redis.port.to_string()), "{why}");
    assert!(!why.contains("wrong-password") && !why.contains("redis-pw-never-logged"), "{why}");
    assert_eq!(report["access_keys_updated"], 0);
    assert_eq!(redis.cli(&["GET", "keypair.concurrency_used.AKIAGONE000000000000"]), "4");
    // The Backend.AI-compatible route still answers `{}`: the manager's would, its counts being best effort too.
    let (status, body) = app.post("/resource/recalculate-usage", None).await;
    assert_eq!((status, body), (200, json!({})));

    // Redis down: reported the same way.
    etcd.put("config/redis/password", "redis-pw-never-logged").await.unwrap();
    redis.stop();
    let (status, report) = app.post("/v1/usage/recalculate", None).await;
    assert_eq!(status, 200, "{report}");
    assert!(report["concurrency_error"].as_str().unwrap().contains("unreachable"), "{report}");

    // Back: the next run writes every count, and zeroes the key whose access key has no session any more.
    redis.restart();
    redis.cli(&["SET", "keypair.concurrency_used.AKIAGONE000000000000", "4"]);
    let (status, report) = app.post("/v1/usage/recalculate", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["concurrency_error"], serde_json::Value::Null, "{report}");
    assert_eq!((report["access_keys_updated"].as_u64(), report["access_keys_reset"].as_u64()), (Some(3), Some(1)));
    assert_eq!(
        redis.concurrency_keys(),
        [
            ("keypair.concurrency_used.AKIAGONE000000000000".to_owned(), "0".to_owned()),
            (format!("keypair.concurrency_used.{}", USER.0), "1".to_owned()),
            (format!("keypair.sftp_concurrency_used.{}", USER.0), "1".to_owned()),
        ]
    );

    // Each outcome is counted for the operator.
    let metrics = app.metrics().await;
    assert!(metrics.contains("agent_supervisor_redis_concurrency_writes_total{outcome=\"failed\"} 3"), "{metrics}");
    assert!(metrics.contains("agent_supervisor_redis_concurrency_writes_total{outcome=\"ok\"} 1"), "{metrics}");
}

#[actix_rt::test]
async fn redis_url_wins_over_etcd() {
    let redis = PrivateRedis::start(None);
    let url = redis.url();
    let app = TestApp::spawn_in(DatabaseMode::BackendAi, |c| c.redis.url = Some(Secret::new(url))).await;
    let etcd = agent_supervisor::etcd::Etcd::connect(&app.config.etcd).await.unwrap();
    etcd.put("config/redis/addr", "127.0.0.1:1").await.unwrap();
    app.add_agent("i-u").await;
    let s = app.db.add_session(USER.0, "RUNNING", false).await;
    app.db.add_kernel(Kernel::on(s, "i-u")).await;
    let (status, report) = app.post("/v1/usage/recalculate", None).await;
    assert_eq!((status, &report["concurrency_error"]), (200, &serde_json::Value::Null), "{report}");
    assert_eq!(redis.concurrency_keys(), [(format!("keypair.concurrency_used.{}", USER.0), "1".to_owned())]);
}
