//! The web dashboard at `/ui/`: its static files and headers, the audit trail's `before` cursor it pages with, and
//! the whole page in a real headless Chromium (Debian's `chromium` and `chromedriver`, driven by Selenium from PyPI
//! in a virtualenv under `target/venv-dashboard`) against a real daemon with real `agent-watcher` processes.
//!
//! The browser part is `tests/dashboard/drive.py`, run as a subprocess with a JSON file saying where the daemon
//! is, the keypair, the golden signing vectors (read from `crates/protocol/src/signing.rs`, so there is one copy),
//! and what each agent should show. Screenshots of every step go to `target/dashboard-screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use common::{
    Kernel, TestDb,
    supervisor::{Creds, TOKEN, TestApp},
    watcher::{WatcherProcess, running_watcher, slow_service},
};
use serde_json::{Value, json};

const SELENIUM: &str = "selenium==4.51.0";
const PIP_TIMEOUT: Duration = Duration::from_secs(600);
const BROWSER_TIMEOUT: Duration = Duration::from_secs(300);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// `target/` of this build (the test binary lives in `target/debug/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

async fn run(mut cmd: tokio::process::Command, timeout: Duration) -> std::process::Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let what = format!("{cmd:?}");
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("cannot run {what}: {e}")),
        Err(_) => panic!("{what} did not finish within {timeout:?}"),
    }
}

async fn venv_is_usable(venv: &Path) -> bool {
    if !venv.join(".complete").exists() {
        return false;
    }
    let mut cmd = tokio::process::Command::new(venv.join("bin/python"));
    cmd.args(["-c", "import importlib.metadata as m; assert m.version('selenium') == '4.51.0'"]);
    run(cmd, Duration::from_secs(60)).await.status.success()
}

/// The virtualenv with Selenium, built on first use in a directory of its own and renamed into place.
async fn selenium_venv() -> PathBuf {
    let venv = target_dir().join("venv-dashboard");
    if venv_is_usable(&venv).await {
        return venv;
    }
    let building =
        target_dir().join(format!("venv-dashboard.tmp-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-m").arg("venv").arg(&building);
    let out = run(cmd, PIP_TIMEOUT).await;
    assert!(out.status.success(), "python3 -m venv failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut cmd = tokio::process::Command::new(building.join("bin/python"));
    cmd.args(["-m", "pip", "install", "--disable-pip-version-check", "-q", SELENIUM]);
    let out = run(cmd, PIP_TIMEOUT).await;
    assert!(out.status.success(), "pip install {SELENIUM} failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(building.join(".complete"), format!("{SELENIUM}\n")).unwrap();
    if venv.exists() && !venv_is_usable(&venv).await {
        let _ = std::fs::remove_dir_all(&venv);
    }
    if std::fs::rename(&building, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    eprintln!("built {} in {:.0} s", venv.display(), started.elapsed().as_secs_f64());
    assert!(venv_is_usable(&venv).await, "the Selenium virtualenv is not usable");
    venv
}

/// The signing tests' golden vectors (`crates/protocol/src/signing.rs`): the constants and the 12 rows of `GOLDEN`,
/// read from the source so that the browser's signer is checked against the very same values.
fn golden_vectors() -> Value {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crates/protocol/src/signing.rs")).unwrap();
    let constant = |name: &str| {
        let start = src.find(&format!("const {name}: &str = \"")).unwrap_or_else(|| panic!("no const {name}"));
        let rest = &src[start..];
        let rest = &rest[rest.find('"').unwrap() + 1..];
        rest[..rest.find('"').unwrap()].to_owned()
    };
    let table = &src[src.find("const GOLDEN:").expect("the GOLDEN table")..];
    let table = &table[table.find("= [").unwrap()..table.find("];").unwrap()];
    let strings: Vec<&str> = table.split('"').skip(1).step_by(2).collect();
    assert_eq!(strings.len(), 60, "GOLDEN has 12 rows of 5 strings");
    let rows: Vec<Vec<&str>> = strings.chunks(5).map(<[&str]>::to_vec).collect();
    // The worked example (§5.1) derives these from SK, "20261127" and HOST.
    let hex_after = |label: &str| {
        let at = src.find(label).unwrap_or_else(|| panic!("no {label}"));
        let rest = &src[at..];
        let quoted = &rest[rest.find("\"").unwrap() + 1..];
        quoted[..64].to_owned()
    };
    json!({
        "ak": constant("AK"),
        "sk": constant("SK"),
        "host": constant("HOST"),
        "version": constant("VERSION"),
        "rows": rows,
        "k_date": hex_after("assert_eq!(hex::encode(k_date), "),
        "k_signing": hex_after("hex::encode(signing_key(SK, &date, HOST)),"),
    })
}

#[test]
fn the_golden_vectors_are_read_from_the_signing_tests() {
    let g = golden_vectors();
    assert_eq!(g["ak"], "AKIAIOSFODNN7EXAMPLE");
    assert_eq!(g["host"], "127.0.0.1:18091");
    assert_eq!(g["rows"].as_array().unwrap().len(), 12);
    assert_eq!(g["rows"][8][4], "697466c95cb976f318f8c9823607c5096e3d846c8276c2ba1174d2461927c87c");
    assert_eq!(g["k_date"], "0d90a4b750b429e0a923fc0f8bd851e6a79640dc4e83f4baf2d2cc7827bde1a9");
    assert_eq!(g["k_signing"], "9c18fda17824c7eaf5b8af85a38c531b6d5d28ef1d7cf2ae2cd825971ae7a197");
}

struct Answer {
    status: u16,
    headers: awc::http::header::HeaderMap,
    body: Vec<u8>,
}

async fn fetch(app: &TestApp, method: &str, path: &str, if_none_match: Option<&str>) -> Answer {
    let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = awc::Client::builder().disable_redirects().finish().request(method, format!("{}{path}", app.url));
    if let Some(tag) = if_none_match {
        req = req.insert_header(("If-None-Match", tag));
    }
    let mut resp = req.send().await.unwrap();
    let body = resp.body().limit(1 << 20).await.unwrap().to_vec();
    Answer { status: resp.status().as_u16(), headers: resp.headers().clone(), body }
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

fn secured(a: &Answer, what: &str) {
    assert_eq!(a.header("content-security-policy"), agent_supervisor::api::ui::CONTENT_SECURITY_POLICY, "{what}: CSP");
    assert!(a.header("content-security-policy").contains("connect-src 'self'"), "{what}");
    assert_eq!(a.header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(a.header("referrer-policy"), "no-referrer", "{what}");
}

#[actix_rt::test]
async fn the_files_are_served_unsigned_with_their_types_and_a_strict_policy() {
    let app = TestApp::spawn().await;

    let a = fetch(&app, "GET", "/ui", None).await;
    assert_eq!((a.status, a.header("location")), (308, "/ui/"));
    secured(&a, "/ui");

    let page = fetch(&app, "GET", "/ui/", None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.header("cache-control"), "no-cache");
    secured(&page, "/ui/");
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(html.contains(r#"<script type="module" src="./app.js">"#), "{html}");
    assert!(!html.contains("http://") && !html.contains("https://"), "no external resource");

    // A file unchanged since the last load costs a 304.
    let etag = page.header("etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
    let again = fetch(&app, "GET", "/ui/", Some(&etag)).await;
    assert_eq!((again.status, again.body.len()), (304, 0));
    secured(&again, "304");
    assert_eq!(fetch(&app, "GET", "/ui/", Some("\"other\"")).await.status, 200);

    for (file, content_type) in [
        ("index.html", "text/html; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("sign.js", "text/javascript; charset=utf-8"),
        ("format.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let a = fetch(&app, "GET", &format!("/ui/{file}"), None).await;
        assert_eq!((a.status, a.header("content-type")), (200, content_type), "{file}");
        let on_disk = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("ui").join(file)).unwrap();
        assert_eq!(a.body, on_disk, "{file} is served as it is in ui/");
        secured(&a, file);
    }

    // Unknown files, other methods and attempts to leave the directory are problem documents, with the headers.
    for path in ["/ui/nope.js", "/ui/..%2FCargo.toml", "/ui/%2e%2e/Cargo.toml", "/ui/sub/app.js", "/ui/app.js/"] {
        let a = fetch(&app, "GET", path, None).await;
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.header("content-type"), "application/problem+json", "{path}");
        let doc: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(doc["error_code"], "not_found", "{path}");
        secured(&a, path);
    }
    for (method, path) in [("POST", "/ui/"), ("DELETE", "/ui/app.js"), ("PUT", "/ui")] {
        let a = fetch(&app, method, path, None).await;
        assert_eq!(a.status, 405, "{method} {path}");
        let doc: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(doc["error_code"], "method_not_allowed");
    }
    // The API itself is unchanged: still signed, and no CSP there.
    let (status, _) = app.request("GET", "/v1/agents", None, None).await;
    assert_eq!(status, 401);
}

/// Inserts `n` observation events for `agent`; returns their ids, oldest first.
async fn add_events(db: &TestDb, agent: &str, n: usize) -> Vec<i64> {
    db.sql(&format!(
        "INSERT INTO agent_events (agent_id, action, requester, outcome, detail) \
         SELECT '{agent}', 'observe', 'probe', 'observed', jsonb_build_object('n', g) FROM generate_series(1, {n}) g"
    ))
    .await;
    let rows =
        agent_supervisor::db::queries::list_events(&mut db.db.conn().await.unwrap(), agent, n as i64).await.unwrap();
    rows.into_iter().rev().map(|e| e.id).collect()
}

fn ids(body: &Value) -> Vec<i64> {
    body["events"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

#[actix_rt::test]
async fn the_audit_trail_pages_back_with_before() {
    let app = TestApp::spawn().await;
    app.add_agent("i-paged").await;
    app.add_agent("i-other").await;
    let all = add_events(&app.db, "i-paged", 7).await;
    add_events(&app.db, "i-other", 3).await;
    let newest_first: Vec<i64> = all.iter().rev().copied().collect();

    let (status, page1) = app.get("/v1/agents/i-paged/events?limit=3").await;
    assert_eq!(status, 200, "{page1}");
    assert_eq!(ids(&page1), newest_first[..3]);
    let (_, page2) = app.get(&format!("/v1/agents/i-paged/events?limit=3&before={}", newest_first[2])).await;
    assert_eq!(ids(&page2), newest_first[3..6]);
    let (_, page3) = app.get(&format!("/v1/agents/i-paged/events?before={}&limit=3", newest_first[5])).await;
    assert_eq!(ids(&page3), newest_first[6..], "the last page is short");
    let (_, page4) = app.get(&format!("/v1/agents/i-paged/events?limit=3&before={}", newest_first[6])).await;
    assert_eq!(ids(&page4), Vec::<i64>::new(), "nothing before the oldest");
    // Without limit: the default page size; `before` past every id is the newest page.
    let (_, beyond) = app.get(&format!("/v1/agents/i-paged/events?before={}", i64::MAX)).await;
    assert_eq!(ids(&beyond), newest_first, "another agent's events never show");

    for (query, field) in
        [("before=0", "before"), ("before=-3", "before"), ("before=x", "before"), ("before=1&before=2", "before")]
    {
        let (status, body) = app.get(&format!("/v1/agents/i-paged/events?{query}")).await;
        assert_eq!(
            (status, body["error_code"].as_str(), body["field"].as_str()),
            (400, Some("invalid_request"), Some(field)),
            "{query}: {body}"
        );
    }
    let (status, body) = app.get("/v1/agents/i-nobody/events?before=5").await;
    assert_eq!((status, body["error_code"].as_str()), (404, Some("agent_not_found")), "{body}");
    let (status, _) = app.request("GET", "/v1/agents/i-paged/events?before=5", None, None).await;
    assert_eq!(status, 401, "signed, like the rest");
}

/// An agent row as the cluster would have it.
async fn add_agent(db: &TestDb, id: &str, group: &str, status: &str, available: &str) {
    db.sql(&format!(
        "INSERT INTO scaling_groups (name) VALUES ('{group}') ON CONFLICT DO NOTHING; \
         INSERT INTO agents (id, status, region, scaling_group, addr, version, architecture, available_slots, lost_at) \
         VALUES ('{id}', '{status}', 'local', '{group}', 'tcp://127.0.0.1:6001', '23.09.10', 'x86_64', '{available}', \
         {lost_at})",
        lost_at = if status == "LOST" { "now()" } else { "NULL" },
    ))
    .await;
}

const GPU_NODE: &str = r#"{"cpu": "8", "mem": "68719476736", "cuda.shares": "4"}"#;
const CPU_NODE: &str = r#"{"cpu": "16", "mem": "34359738368"}"#;
const FAILED_START_REASON: &str = "cannot allocate GPU memory: out of resources";

#[actix_rt::test]
async fn the_dashboard_in_chromium() {
    for binary in [CHROMIUM, CHROMEDRIVER] {
        assert!(Path::new(binary).exists(), "{binary} is missing: scripts/test installs chromium and chromium-driver");
    }
    let venv = selenium_venv().await;

    // The cluster: two GPU agents in scaling group a100 (one with two kernels; both services take a second to stop,
    // so that a command's progress can be seen), a CPU agent whose watcher the browser will stop, an agent whose
    // start fails with a reason, and a LOST agent without a watcher with a long audit trail.
    let db = TestDb::new().await;
    add_agent(&db, "i-a100-01", "a100", "ALIVE", GPU_NODE).await;
    add_agent(&db, "i-a100-02", "a100", "ALIVE", GPU_NODE).await;
    add_agent(&db, "i-v100-01", "default", "ALIVE", CPU_NODE).await;
    add_agent(&db, "i-fail-01", "default", "ALIVE", CPU_NODE).await;
    add_agent(&db, "i-lost-01", "default", "LOST", CPU_NODE).await;
    let session = db.add_session(db.user_access_key(), "RUNNING", false).await;
    for _ in 0..2 {
        db.add_kernel(Kernel {
            slots: r#"{"cpu": "1", "mem": "4294967296", "cuda.shares": "0.5"}"#,
            ..Kernel::on(session, "i-a100-01")
        })
        .await;
    }
    let paged_events = 25;
    add_events(&db, "i-lost-01", paged_events).await;

    let dir = tempfile::tempdir().unwrap();
    let a100_1 = running_watcher(TOKEN, &slow_service(&dir.path().join("a100-1.log"), "1"), &[]);
    let a100_2 = running_watcher(TOKEN, &slow_service(&dir.path().join("a100-2.log"), "1"), &[]);
    let v100 = running_watcher(TOKEN, &slow_service(&dir.path().join("v100.log"), "0"), &[]);
    let failing = ["sh", "-c", &format!("echo '{FAILED_START_REASON}' >&2; exit 3")];
    let fail = WatcherProcess::process_backend(TOKEN, &failing, &["--no-autostart"]);

    // Probing every second: the table shows a watcher going down within seconds.
    let app = TestApp::spawn_on(db, |c| {
        c.watcher.probe_interval_s = 1;
        c.agents.lost_after_s = 600;
    })
    .await;
    for (id, w) in [("i-a100-01", &a100_1), ("i-a100-02", &a100_2), ("i-v100-01", &v100), ("i-fail-01", &fail)] {
        app.register_watcher(id, w.port()).await;
    }

    let shots = target_dir().join("dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let profile = tempfile::tempdir().unwrap();
    let wrong = Creds { secret_key: format!("{}x", &app.admin.secret_key[1..]), ..app.admin.clone() };
    let user = app.add_keypair(false, true).await;
    let config = json!({
        "url": app.url,
        "access_key": app.admin.access_key,
        "secret_key": app.admin.secret_key,
        "wrong_secret_key": wrong.secret_key,
        "user_access_key": user.access_key,
        "user_secret_key": user.secret_key,
        "chromium": CHROMIUM,
        "chromedriver": CHROMEDRIVER,
        "profile": profile.path(),
        "screenshots": shots,
        "golden": golden_vectors(),
        "kill_pid": v100.pid().unwrap(),
        "expect": {
            "wrong_key_message": ["auth_failed", "Signature mismatch"],
            "agents": {
                "i-a100-01": {"status": "ALIVE", "watcher": "active"},
                "i-a100-02": {"status": "ALIVE", "watcher": "active"},
                "i-v100-01": {"status": "ALIVE", "watcher": "active"},
                "i-fail-01": {"status": "ALIVE", "watcher": "inactive"},
                "i-lost-01": {"status": "LOST", "watcher": "watcher not registered"},
            },
            "counts": {"total": 5, "alive": 4, "lost": 1, "watcher-down": 1},
            "slots_before": ["cpu", "0 / 8", "mem", "0 / 64 GiB", "cuda.shares", "0 / 4"],
            "slots_after": ["2 / 8", "8 / 64 GiB", "1.0 / 4"],
            "kernels": 2,
            "failed_start_reason": FAILED_START_REASON,
            "paged_agent": "i-lost-01",
            "paged_events": paged_events,
            "recalc": {
                "total": 5,
                "updated": ["i-a100-01"],
                "reset": ["i-a100-02", "i-fail-01", "i-v100-01"],
                "skipped": ["i-lost-01 (LOST)"],
            },
            "killed_agent": "i-v100-01",
        },
    });
    let config_file = dir.path().join("dashboard.json");
    std::fs::write(&config_file, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(venv.join("bin/python"));
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/drive.py"))
        .arg(&config_file)
        // Selenium is given both binaries: it must not look for (or download) a driver.
        .env("SE_OFFLINE", "true")
        .env("PYTHONUNBUFFERED", "1");
    let out = run(cmd, BROWSER_TIMEOUT).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the browser run failed after {:.1} s (screenshots in {}):\n{stdout}\n{stderr}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
    assert!(stdout.contains("all steps passed"), "{stdout}");
    eprintln!("browser run: {:.1} s; screenshots in {}", started.elapsed().as_secs_f64(), shots.display());

    // What the browser did is on the record: the forced stop and the failed start, each by the signed-in key.
    let (_, events) = app.get("/v1/agents/i-a100-01/events?limit=100").await;
    let stops: Vec<(&str, &str)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "stop")
        .map(|e| (e["outcome"].as_str().unwrap(), e["requester"].as_str().unwrap()))
        .collect();
    let me = app.admin.access_key.as_str();
    assert_eq!(stops, [("succeeded", me), ("rejected", me)], "{events}");
    let (_, events) = app.get("/v1/agents/i-fail-01/events?limit=100").await;
    assert!(
        events["events"].as_array().unwrap().iter().any(|e| e["action"] == "start" && e["outcome"] == "failed"),
        "{events}"
    );
}
