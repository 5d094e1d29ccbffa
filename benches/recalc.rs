//! Recalculate Usage at scale: the full `recalculate_usage` against the bare aggregate it has to compute.
//!
//! `cargo bench --bench recalc` builds, in throw-away databases on the server of `AS_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:55432/postgres`), data sets of 100, 10,000 and 1,000,000 kernels (the largest:
//! 10,000 agents, 300,000 sessions, 2,000 access keys), then times, interleaved, (a) the bare aggregate (A4w of
//! `docs/recalc.md`) and (b) the full recalculation, and prints median / min / max.
//!
//! With `RECALC_BENCH_MODE=backend.ai` the same shapes are built on Backend.AI 23.9.10's own schema (made by
//! `scripts/backendai-schema create`, seeded with `tests/backendai/fixtures.sql`, every column Backend.AI requires
//! filled), (b) is the daemon's recalculation in Backend.AI mode including its Redis write (a `redis-server` of the
//! bench's own on 127.0.0.1), and (c) is Backend.AI's own `AgentRegistry.recalc_resource_usage` on the same data
//! (`tests/backendai/recalc_parity.py`; as many runs, or one at 1,000,000 kernels and more).
//!
//! Environment: `RECALC_BENCH_KERNELS` (comma-separated kernel counts, default `100,10000,1000000`),
//! `RECALC_BENCH_RUNS` (timed runs per variant, default 5, after one warm-up), `RECALC_BENCH_MODE` (`standalone`,
//! the default, or `backend.ai`), `RECALC_BENCH_KEEP=1` keeps the databases for inspection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use agent_supervisor::{
    config::{DatabaseConfig, DatabaseMode, Secret},
    db::{
        Db,
        recalc::{RecalcOptions, recalculate_usage},
        run_migrations,
    },
    redis_stat::{self, RedisTarget},
};
use bigdecimal::BigDecimal;
use diesel::{
    QueryableByName,
    sql_types::{Numeric, Text},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

/// The fastest general form of the bare aggregate (recalc-performance.md, A4w), at default settings.
const AGGREGATE_A4W: &str = "\
SELECT k.agent, e.key, sum(e.value::numeric) AS total
FROM kernels k
CROSS JOIN LATERAL slot_each(k.occupied_slots) e
WHERE k.agent IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM sessions s
                  WHERE s.id = k.session_id AND s.status IN ('PENDING','TERMINATED','CANCELLED'))
GROUP BY 1, 2";

#[derive(QueryableByName)]
#[allow(dead_code)]
struct AggRow {
    #[diesel(sql_type = Text)]
    agent: String,
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Numeric)]
    total: BigDecimal,
}

fn admin_url() -> String {
    std::env::var("AS_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:55432/postgres".into())
}

fn db_url(name: &str) -> String {
    let admin = admin_url();
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin);
    format!("{base}/{name}")
}

struct Shape {
    kernels: u64,
    agents: u64,
    sessions: u64,
    keys: u64,
}

impl Shape {
    /// The 1M shape of recalc-performance.md, scaled: 100 kernels per agent, 3.33 per session, 500 per key.
    fn for_kernels(kernels: u64) -> Self {
        Self {
            kernels,
            agents: (kernels / 100).max(10),
            sessions: (kernels * 3 / 10).max(1),
            keys: (kernels / 500).max(2),
        }
    }
}

/// Generates the data set in SQL. Agents: 3% LOST and 2% TERMINATED, interleaved. Sessions: RUNNING 70%,
/// TERMINATED 10%, CANCELLED/PENDING/ERROR 5% each, the eight other active statuses 5% together; types
/// INTERACTIVE 50%, BATCH 30%, INFERENCE 15%, SYSTEM 5%. Every session gets one kernel, the rest are spread with a
/// skew (mean 3.33 per session). Kernels of PENDING sessions and half of the CANCELLED ones have no agent.
fn generation_sql(s: &Shape) -> String {
    let Shape { kernels, agents, sessions, keys } = *s;
    format!(
        "
SELECT setseed(0.42);
SET session_replication_role = replica; -- skip FK triggers while loading; the data is consistent by construction
INSERT INTO scaling_groups (name) VALUES ('default');
INSERT INTO agents (id, status, region, addr, version, architecture)
SELECT format('i-%s', lpad(g::text, 6, '0')),
       (CASE WHEN g % 100 < 3 THEN 'LOST' WHEN g % 100 < 5 THEN 'TERMINATED' ELSE 'ALIVE' END)::agentstatus,
       'local', format('tcp://10.%s.%s.%s:6001', g / 65536, g / 256 % 256, g % 256), '25.1.0', 'x86_64'
FROM generate_series(0, {agents} - 1) g;
CREATE TEMP TABLE gen_sessions AS
SELECT g AS n, gen_random_uuid() AS id,
       format('AKIA%s', lpad(floor(random() * {keys})::text, 12, '0')) AS access_key,
       CASE WHEN r < 0.70 THEN 'RUNNING' WHEN r < 0.80 THEN 'TERMINATED' WHEN r < 0.85 THEN 'CANCELLED'
            WHEN r < 0.90 THEN 'PENDING' WHEN r < 0.95 THEN 'ERROR'
            ELSE (ARRAY['SCHEDULED','PREPARING','PULLING','PREPARED','CREATING','RESTARTING','RUNNING_DEGRADED',
                        'TERMINATING'])[1 + floor((r - 0.95) * 160)::int] END AS status,
       CASE WHEN t < 0.50 THEN 'INTERACTIVE' WHEN t < 0.80 THEN 'BATCH' WHEN t < 0.95 THEN 'INFERENCE'
            ELSE 'SYSTEM' END AS session_type
FROM (SELECT g, random() AS r, random() AS t FROM generate_series(0, {sessions} - 1) g) x;
INSERT INTO sessions (id, access_key, status, session_type)
SELECT id, access_key, status, session_type FROM gen_sessions;
CREATE INDEX ON gen_sessions (n);
ANALYZE gen_sessions;
INSERT INTO kernels (id, session_id, session_type, agent, access_key, occupied_slots, status)
SELECT gen_random_uuid(), s.id, s.session_type,
       CASE WHEN s.status = 'PENDING' OR (s.status = 'CANCELLED' AND random() < 0.5) THEN NULL
            ELSE format('i-%s', lpad(floor(random() * {agents})::text, 6, '0')) END,
       s.access_key,
       jsonb_build_object('cpu', (ARRAY['0.5','1','1.5','2','4','8','16'])[1 + floor(random() * 7)::int],
                          'mem', ((1 + floor(random() * 32))::bigint * 536870912)::text)
         || CASE WHEN random() < 0.45 THEN jsonb_build_object('cuda.shares',
                 (ARRAY['0.1','0.2','0.25','0.5','0.75','1','1.5','2','2.5','3','4'])[1 + floor(random() * 11)::int])
            ELSE '{{}}'::jsonb END
         || CASE WHEN random() < 0.15 THEN jsonb_build_object('cuda.device', (ARRAY['1','2','4','8'])[1 + floor(random() * 4)::int])
            ELSE '{{}}'::jsonb END
         || CASE WHEN random() < 0.02 THEN jsonb_build_object('rocm.device', (ARRAY['1','2'])[1 + floor(random() * 2)::int])
            ELSE '{{}}'::jsonb END,
       CASE WHEN s.status IN ('PENDING', 'TERMINATED', 'CANCELLED', 'ERROR', 'TERMINATING') THEN s.status
            ELSE 'RUNNING' END
FROM (SELECT CASE WHEN g < {sessions} THEN g ELSE floor({sessions} * power(random(), 2))::bigint END AS n
      FROM generate_series(0, {kernels} - 1) g) k
JOIN gen_sessions s ON s.n = k.n;
SET session_replication_role = DEFAULT;
DROP TABLE gen_sessions;
"
    )
}

/// The same shape on Backend.AI's schema: its enums (no PREPARED/CREATING session, no SYSTEM session type: an SFTP
/// session is one whose kernel's role is SYSTEM), every NOT NULL column, one `main` kernel per session, and the
/// access keys as keypairs of the fixtures' user.
fn backend_ai_generation_sql(s: &Shape) -> String {
    let Shape { kernels, agents, sessions, keys } = *s;
    let (group, user) = ("2de2b969-1d04-48a6-af16-0bc8adb3c831", "dfa9da54-4b28-432f-be29-c0d680c7a412");
    format!(
        "
SELECT setseed(0.42);
SET session_replication_role = replica; -- skip FK triggers while loading; the data is consistent by construction
INSERT INTO keypairs (user_id, access_key, secret_key, is_active, is_admin, rate_limit, num_queries, \"user\",
                      resource_policy, dotfiles, bootstrap_script)
SELECT 'user@lablup.com', format('AKIA%s', lpad(g::text, 12, '0')), md5(g::text), true, false, 30000, 0, '{user}',
       'default', '\\x90', ''
FROM generate_series(0, {keys} - 1) g;
INSERT INTO agents (id, status, region, scaling_group, schedulable, available_slots, occupied_slots, addr, version,
                    architecture, compute_plugins)
SELECT format('i-%s', lpad(g::text, 6, '0')),
       (CASE WHEN g % 100 < 3 THEN 'LOST' WHEN g % 100 < 5 THEN 'TERMINATED' ELSE 'ALIVE' END)::agentstatus,
       'local', 'default', true, '{{}}', '{{}}', format('tcp://10.%s.%s.%s:6001', g / 65536, g / 256 % 256, g % 256),
       '23.09.10', 'x86_64', '{{}}'
FROM generate_series(0, {agents} - 1) g;
CREATE TEMP TABLE gen_sessions AS
SELECT g AS n, gen_random_uuid() AS id,
       format('AKIA%s', lpad(floor(random() * {keys})::text, 12, '0')) AS access_key,
       CASE WHEN r < 0.70 THEN 'RUNNING' WHEN r < 0.80 THEN 'TERMINATED' WHEN r < 0.85 THEN 'CANCELLED'
            WHEN r < 0.90 THEN 'PENDING' WHEN r < 0.95 THEN 'ERROR'
            ELSE (ARRAY['SCHEDULED','PREPARING','PULLING','RESTARTING','RUNNING_DEGRADED','TERMINATING'])
                 [1 + floor((r - 0.95) * 120)::int] END AS status,
       CASE WHEN t < 0.50 THEN 'INTERACTIVE' WHEN t < 0.80 THEN 'BATCH' ELSE 'INFERENCE' END AS session_type,
       CASE WHEN t < 0.95 THEN 'COMPUTE' ELSE 'SYSTEM' END AS role
FROM (SELECT g, random() AS r, random() AS t FROM generate_series(0, {sessions} - 1) g) x;
INSERT INTO sessions (id, name, session_type, cluster_mode, cluster_size, scaling_group_name, domain_name, group_id,
                      user_uuid, access_key, occupying_slots, requested_slots, use_host_network, status, result)
SELECT id, id::text, session_type::sessiontypes, 'single-node', 1, 'default', 'default', '{group}', '{user}',
       access_key, '{{}}', '{{}}', false, status::sessionstatus, 'UNDEFINED'
FROM gen_sessions;
CREATE INDEX ON gen_sessions (n);
ANALYZE gen_sessions;
INSERT INTO kernels (id, session_id, session_name, session_type, cluster_mode, cluster_size, cluster_role,
                     cluster_idx, local_rank, cluster_hostname, scaling_group, agent, agent_addr, domain_name,
                     group_id, user_uuid, access_key, image, architecture, occupied_slots, requested_slots,
                     occupied_shares, repl_in_port, repl_out_port, stdin_port, stdout_port, use_host_network,
                     status, role, result)
SELECT gen_random_uuid(), s.id, s.id::text, s.session_type::sessiontypes, 'single-node', 1,
       CASE WHEN k.first THEN 'main' ELSE 'sub' END, 1, 0, 'main1', 'default',
       CASE WHEN s.status = 'PENDING' OR (s.status = 'CANCELLED' AND random() < 0.5) THEN NULL
            ELSE format('i-%s', lpad(floor(random() * {agents})::text, 6, '0')) END,
       'tcp://10.0.0.1:6001', 'default', '{group}', '{user}', s.access_key,
       'cr.backend.ai/stable/python:3.9-ubuntu20.04', 'x86_64', slots, slots, '{{}}', 30000, 30001, 30002, 30003,
       false,
       (CASE WHEN s.status IN ('PENDING', 'TERMINATED', 'CANCELLED', 'ERROR', 'TERMINATING') THEN s.status
             ELSE 'RUNNING' END)::kernelstatus,
       s.role::kernelrole, 'UNDEFINED'
FROM (SELECT g < {sessions} AS first,
             CASE WHEN g < {sessions} THEN g ELSE floor({sessions} * power(random(), 2))::bigint END AS n,
             jsonb_build_object('cpu', (ARRAY['0.5','1','1.5','2','4','8','16'])[1 + floor(random() * 7)::int],
                                'mem', ((1 + floor(random() * 32))::bigint * 536870912)::text)
               || CASE WHEN random() < 0.45 THEN jsonb_build_object('cuda.shares',
                       (ARRAY['0.1','0.2','0.25','0.5','0.75','1','1.5','2','2.5','3','4'])[1 + floor(random() * 11)::int])
                  ELSE '{{}}'::jsonb END
               || CASE WHEN random() < 0.15 THEN jsonb_build_object('cuda.device', (ARRAY['1','2','4','8'])[1 + floor(random() * 4)::int])
                  ELSE '{{}}'::jsonb END AS slots
      FROM generate_series(0, {kernels} - 1) g) k
JOIN gen_sessions s ON s.n = k.n;
SET session_replication_role = DEFAULT;
DROP TABLE gen_sessions;
"
    )
}

/// This repository (for `scripts/` and `tests/backendai/`).
fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_checked(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `redis-server` of the bench's own on 127.0.0.1; killed when dropped.
struct BenchRedis {
    port: u16,
    child: std::process::Child,
}

impl BenchRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(mut ms: Vec<f64>) -> Stats {
    ms.sort_by(|a, b| a.total_cmp(b));
    let n = ms.len();
    let median = if n % 2 == 1 { ms[n / 2] } else { (ms[n / 2 - 1] + ms[n / 2]) / 2.0 };
    Stats { median, min: ms[0], max: ms[n - 1] }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Row {
    shape: Shape,
    counted_kernels: i64,
    groups: usize,
    generation: Duration,
    a: Stats,
    b: Stats,
    /// Backend.AI's own recalculation (Backend.AI mode only).
    c: Option<Stats>,
    attempts_max: u32,
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn bench_one(kernels: u64, runs: usize, keep: bool, mode: DatabaseMode) -> Row {
    let shape = Shape::for_kernels(kernels);
    let name = match mode {
        DatabaseMode::Standalone => format!("recalc_bench_{kernels}"),
        DatabaseMode::BackendAi => format!("recalc_bench_ba_{kernels}"),
    };
    let mut admin =
        AsyncPgConnection::establish(&admin_url()).await.expect("PostgreSQL reachable at AS_TEST_DATABASE_URL");
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
    diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let url = db_url(&name);
    let config = DatabaseConfig { url: Secret::new(url.clone()), mode, ..DatabaseConfig::default() };
    let started = Instant::now();
    if mode == DatabaseMode::BackendAi {
        run_checked(std::process::Command::new(repo().join("scripts/backendai-schema")).args(["create", &url]));
        let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
        conn.batch_execute(&std::fs::read_to_string(repo().join("tests/backendai/fixtures.sql")).unwrap())
            .await
            .unwrap();
    }
    run_migrations(&config).await.unwrap();

    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
    // As the daemon's pool does: its own schema (slot_each) first, then the cluster's tables.
    conn.batch_execute("SET search_path TO agent_supervisor, public").await.unwrap();
    let generate = match mode {
        DatabaseMode::Standalone => generation_sql(&shape),
        DatabaseMode::BackendAi => backend_ai_generation_sql(&shape),
    };
    conn.batch_execute(&generate).await.unwrap();
    conn.batch_execute("VACUUM ANALYZE").await.unwrap();
    // As in the reference measurements: the written tables start each run from the same heap state.
    conn.batch_execute("ALTER TABLE agents SET (autovacuum_enabled = off)").await.unwrap();
    if mode == DatabaseMode::Standalone {
        conn.batch_execute("ALTER TABLE keypair_resource_usage SET (autovacuum_enabled = off)").await.unwrap();
    }
    let generation = started.elapsed();
    let counted_kernels = diesel::sql_query(
        "SELECT count(*) AS n FROM kernels k JOIN sessions s ON s.id = k.session_id
         WHERE k.agent IS NOT NULL AND s.status NOT IN ('PENDING','TERMINATED','CANCELLED')",
    )
    .get_result::<N>(&mut conn)
    .await
    .unwrap()
    .n;

    let db = Db::new(&DatabaseConfig { max_connections: 2, connect_timeout_ms: 10_000, ..config.clone() }).unwrap();
    let redis = (mode == DatabaseMode::BackendAi).then(BenchRedis::start);
    let target = redis.as_ref().map(|r| RedisTarget::from_url(&Secret::new(r.url())).unwrap());
    let opts = RecalcOptions::default();
    let (mut a_ms, mut b_ms, mut groups, mut attempts_max) = (Vec::new(), Vec::new(), 0, 0);
    for round in 0..=runs {
        // Alternate the order so both variants see the same background load.
        for variant in if round % 2 == 0 { ["a", "b"] } else { ["b", "a"] } {
            if variant == "a" {
                let t = Instant::now();
                let rows = diesel::sql_query(AGGREGATE_A4W).load::<AggRow>(&mut conn).await.unwrap();
                let d = t.elapsed();
                groups = rows.len();
                if round > 0 {
                    a_ms.push(ms(d));
                }
            } else {
                let vacuum = match mode {
                    DatabaseMode::Standalone => "VACUUM agents, keypair_resource_usage",
                    DatabaseMode::BackendAi => "VACUUM agents",
                };
                conn.batch_execute(vacuum).await.unwrap();
                let t = Instant::now();
                let outcome = recalculate_usage(&db, &opts).await.unwrap();
                if let (Some(target), Some(counts)) = (&target, &outcome.concurrency) {
                    redis_stat::write_concurrency(target, counts, Duration::from_secs(60)).await.unwrap();
                }
                let d = t.elapsed();
                let report = outcome.report;
                attempts_max = attempts_max.max(report.attempts);
                if round > 0 {
                    b_ms.push(ms(d));
                }
            }
        }
    }
    db.close();
    // Backend.AI's own, on the same data, after ours (it writes the same slots).
    let c = redis.as_ref().map(|redis| {
        let python = run_checked(std::process::Command::new(repo().join("scripts/backendai-schema")).arg("python"));
        let c_runs = if kernels >= 1_000_000 { 1 } else { runs };
        let times = (0..c_runs)
            .map(|_| {
                let out = run_checked(
                    std::process::Command::new(python.trim())
                        .arg(repo().join("tests/backendai/recalc_parity.py"))
                        .args(["--db", &url, "--redis", &redis.url(), "--timeout", "3600"]),
                );
                let doc: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
                doc["elapsed_s"].as_f64().unwrap() * 1000.0
            })
            .collect();
        stats(times)
    });
    drop(conn);
    if !keep {
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
    }
    Row { shape, counted_kernels, groups, generation, a: stats(a_ms), b: stats(b_ms), c, attempts_max }
}

fn main() {
    let kernels: Vec<u64> = std::env::var("RECALC_BENCH_KERNELS")
        .unwrap_or_else(|_| "100,10000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("RECALC_BENCH_KERNELS: comma-separated integers"))
        .collect();
    let runs: usize = std::env::var("RECALC_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    let keep = std::env::var("RECALC_BENCH_KEEP").is_ok_and(|v| v == "1");
    let mode = match std::env::var("RECALC_BENCH_MODE").as_deref() {
        Ok("backend.ai") => DatabaseMode::BackendAi,
        Ok("standalone") | Err(_) => DatabaseMode::Standalone,
        Ok(other) => panic!("RECALC_BENCH_MODE: standalone or backend.ai, not {other:?}"),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    println!(
        "recalc benchmark, {} mode: {runs} timed runs per variant after one warm-up; times in ms (median / min / max)",
        mode.as_str()
    );
    let mut rows = Vec::new();
    for k in kernels {
        let row = rt.block_on(bench_one(k, runs, keep, mode));
        eprintln!(
            "  {} kernels: generated in {:.1} s; (a) {:.1} ms, (b) {:.1} ms",
            row.shape.kernels,
            row.generation.as_secs_f64(),
            row.a.median,
            row.b.median
        );
        rows.push(row);
    }
    println!();
    println!(
        "| kernels | agents | sessions | keys | counted kernels | (agent, slot) groups | (a) bare aggregate A4w | (b) recalculate_usage | (b)/(a) | max attempts | (c) Backend.AI 23.9.10 | (c)/(b) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|---:|");
    for r in &rows {
        let c = r.c.as_ref().map_or_else(
            || "- | -".to_owned(),
            |c| format!("{:.1} / {:.1} / {:.1} | {:.1}x", c.median, c.min, c.max, c.median / r.b.median),
        );
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.2}x | {} | {c} |",
            r.shape.kernels,
            r.shape.agents,
            r.shape.sessions,
            r.shape.keys,
            r.counted_kernels,
            r.groups,
            r.a.median,
            r.a.min,
            r.a.max,
            r.b.median,
            r.b.min,
            r.b.max,
            r.b.median / r.a.median,
            r.attempts_max
        );
    }
}
