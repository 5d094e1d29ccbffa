//! What the daemon benchmarks share: plain HTTP helpers, the release daemon as a subprocess configured from the
//! environment, signed requests, throw-away databases, and the result table.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agent_supervisor::{
    api::COMPAT_API_VERSION,
    auth::{keys::generate_keypair, signing},
    config::{DatabaseConfig, EtcdConfig, Secret},
    db::{Db, keypairs, models::KeypairRow, run_migrations},
    etcd::Etcd,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

pub const TOKEN: &str = "bench-watcher-token";
pub const METRICS_TOKEN: &str = "bench-metrics-token";
/// The content type of the bench's signed requests (the official client's for body-less requests).
pub const SIGNED_CONTENT_TYPE: &str = "text/plain";

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A blocking `GET` with `Connection: close`; the status code, or 0 when nothing answered.
pub fn http_status(port: u16, path: &str, headers: &[(&str, &str)]) -> u16 {
    http_get(port, path, headers).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The raw response (head and body) to a `GET`.
pub fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw
}

/// The sum of a Prometheus counter's samples whose labels contain `labels`, from the daemon's `/metrics`.
pub fn counter(port: u16, name: &str, labels: &str) -> f64 {
    let text = http_get(port, "/metrics", &[("Authorization", &format!("Bearer {METRICS_TOKEN}"))]);
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

pub fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn bin_dir() -> PathBuf {
    std::env::var("BENCH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release"))
}

/// A process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub port: u16,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if !wait_until(Duration::from_secs(10), || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

pub struct Setup {
    pub db_url: String,
    pub etcd: EtcdConfig,
    pub creds: (String, String),
    pub logs: tempfile::TempDir,
}

/// The release `agent-watcher` (process back-end, supervising `sleep`) on a free port, once it answers.
pub fn start_watcher(s: &Setup, extra: &[&str]) -> Proc {
    let port = free_port();
    let log = std::fs::File::create(s.logs.path().join(format!("watcher-{port}.log"))).unwrap();
    let child = Command::new(bin_dir().join("agent-watcher"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--token", TOKEN, "--backend", "process"])
        .args(extra)
        .arg("--log-file")
        .arg(s.logs.path().join(format!("agent-{port}.log")))
        .args(["--", "sleep", "100000"])
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("run target/release/agent-watcher (the bench scripts build it)");
    let p = Proc { child, port };
    assert!(
        wait_until(Duration::from_secs(10), || http_status(port, "/", &[("X-BackendAI-Watcher-Token", TOKEN)]) == 200),
        "agent-watcher did not start"
    );
    p
}

/// `agent-supervisor serve` configured from the environment, once `/healthz` answers.
pub fn start_daemon(s: &Setup, name: &str) -> Proc {
    start_daemon_with(s, name, free_port(), &[])
}

/// As [`start_daemon`], on `port` and with more `AGENT_SUPERVISOR_*` variables (high availability, say).
pub fn start_daemon_with(s: &Setup, name: &str, port: u16, env: &[(&str, String)]) -> Proc {
    let log = std::fs::File::create(s.logs.path().join(format!("{name}.log"))).unwrap();
    let child = Command::new(bin_dir().join("agent-supervisor"))
        .arg("serve")
        .env("AGENT_SUPERVISOR_DATABASE_URL", &s.db_url)
        .env("AGENT_SUPERVISOR_DATABASE_RUN_MIGRATIONS", "false")
        .env("AGENT_SUPERVISOR_ETCD_ENDPOINTS", &s.etcd.endpoints[0])
        .env("AGENT_SUPERVISOR_ETCD_NAMESPACE", &s.etcd.namespace)
        .env("AGENT_SUPERVISOR_API_LISTEN", format!("127.0.0.1:{port}"))
        .env("AGENT_SUPERVISOR_WATCHER_TOKEN", TOKEN)
        .env("AGENT_SUPERVISOR_WATCHER_PROBE_INTERVAL_S", "0")
        .env("AGENT_SUPERVISOR_METRICS_TOKEN", METRICS_TOKEN)
        .env("AGENT_SUPERVISOR_LOG_LEVEL", "warn")
        .envs(env.iter().map(|(k, v)| (format!("AGENT_SUPERVISOR_{k}"), v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("run target/release/agent-supervisor (the bench scripts build it)");
    let p = Proc { child, port };
    assert!(
        wait_until(Duration::from_secs(60), || http_status(port, "/healthz", &[]) == 200),
        "daemon {name} did not start"
    );
    p
}

pub fn signed_headers(s: &Setup, port: u16, method: &str, path: &str) -> signing::SignedHeaders {
    signed_headers_for(s, port, method, path, SIGNED_CONTENT_TYPE)
}

pub fn signed_headers_for(
    s: &Setup,
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
) -> signing::SignedHeaders {
    let host = format!("127.0.0.1:{port}");
    let out =
        signing::OutgoingRequest { method, rel_url: path, host: &host, content_type, api_version: COMPAT_API_VERSION };
    signing::sign_request(&s.creds.0, &s.creds.1, &out, chrono::Utc::now())
}

/// The environment `bench/signed.lua` sends `h` from (with the version and content type it was signed for).
pub fn wrk_signed_env(h: &signing::SignedHeaders) -> [(&'static str, String); 4] {
    [
        ("SIGNED_DATE", h.date.clone()),
        ("SIGNED_AUTHORIZATION", h.authorization.clone()),
        ("SIGNED_VERSION", COMPAT_API_VERSION.to_owned()),
        ("SIGNED_CONTENT_TYPE", SIGNED_CONTENT_TYPE.to_owned()),
    ]
}

pub async fn call(client: &awc::Client, s: &Setup, port: u16, method: &str, path: &str) -> (u16, Value) {
    call_with(client, s, port, method, path, None).await
}

/// A signed request, with `body` as JSON if given.
pub async fn call_with(
    client: &awc::Client,
    s: &Setup,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let content_type = if body.is_some() { "application/json" } else { SIGNED_CONTENT_TYPE };
    let h = signed_headers_for(s, port, method, path, content_type);
    let m = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let req = client
        .request(m, format!("http://127.0.0.1:{port}{path}"))
        .insert_header(("Content-Type", content_type))
        .insert_header(("X-BackendAI-Version", COMPAT_API_VERSION))
        .insert_header(("Date", h.date))
        .insert_header(("Authorization", h.authorization));
    let sent = match body {
        Some(b) => req.send_body(b.to_string()).await,
        None => req.send().await,
    };
    let mut resp = sent.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.body().limit(256 << 20).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

pub struct Row {
    pub what: String,
    pub figure: String,
    pub target: String,
}

pub fn row(rows: &mut Vec<Row>, what: impl Into<String>, figure: impl Into<String>, target: impl Into<String>) {
    let r = Row { what: what.into(), figure: figure.into(), target: target.into() };
    eprintln!("-> {}: {} ({})", r.what, r.figure, r.target);
    rows.push(r);
}

pub async fn create_database(admin: &str, name: &str) -> String {
    let mut conn = AsyncPgConnection::establish(admin).await.expect("PostgreSQL (AS_TEST_DATABASE_URL)");
    diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
    let url = format!("{base}/{name}");
    run_migrations(&DatabaseConfig { url: Secret::new(url.clone()), ..DatabaseConfig::default() }).await.unwrap();
    url
}

pub async fn drop_database(admin: &str, name: &str) {
    if let Ok(mut conn) = AsyncPgConnection::establish(admin).await {
        let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
    }
}

pub async fn sql(db: &Db, q: &str) {
    diesel::sql_query(q).execute(&mut *db.conn().await.unwrap()).await.unwrap();
}

pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A pool on the bench database, a superadmin keypair in it, and an etcd namespace of the bench's own (on
/// `AS_TEST_ETCD_ENDPOINT`).
pub async fn prepare(db_url: String, what: &str) -> (Db, Setup, Etcd) {
    let db = Db::new(&DatabaseConfig {
        url: Secret::new(db_url.clone()),
        max_connections: 4,
        connect_timeout_ms: 5_000,
        run_migrations: false,
        ..DatabaseConfig::default()
    })
    .unwrap();
    let key = generate_keypair();
    let row = KeypairRow {
        access_key: key.access_key.clone(),
        secret_key: key.secret_key.expose().to_owned(),
        user_id: Some("bench@local".into()),
        is_active: true,
        is_superadmin: true,
        description: Some(what.to_owned()),
        created_at: chrono::Utc::now(),
        last_used: None,
    };
    keypairs::insert_keypair(&mut db.conn().await.unwrap(), &row).await.unwrap();
    let etcd_cfg = EtcdConfig {
        endpoints: vec![env_or("AS_TEST_ETCD_ENDPOINT", "http://127.0.0.1:23790")],
        namespace: format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        timeout_ms: 5_000,
        ..Default::default()
    };
    let etcd = Etcd::connect(&etcd_cfg).await.unwrap();
    let setup = Setup {
        db_url,
        etcd: etcd_cfg,
        creds: (key.access_key, key.secret_key.expose().to_owned()),
        logs: tempfile::tempdir().unwrap(),
    };
    (db, setup, etcd)
}

/// Runs `run` against a throw-away database on `AS_TEST_DATABASE_URL`'s server (dropped afterwards, also when the
/// bench panics) and prints its rows.
pub fn main_with<F: std::future::Future<Output = Vec<Row>>>(run: impl FnOnce(String) -> F) {
    let admin = env_or("AS_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:55432/postgres");
    let db_name = format!("as_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let rows = actix_rt::System::new().block_on(async {
        let db_url = create_database(&admin, &db_name).await;
        let result = std::panic::AssertUnwindSafe(run(db_url));
        let rows = futures_util::FutureExt::catch_unwind(result).await;
        drop_database(&admin, &db_name).await;
        rows
    });
    match rows {
        Ok(rows) => print_table(&rows),
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// Prints the rows as a Markdown table.
pub fn print_table(rows: &[Row]) {
    println!();
    println!("| benchmark | result | target |");
    println!("|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} |", r.what, r.figure, r.target);
    }
}
