//! Soak: a real daemon (in-process, the same `app::start` as `serve`) supervising 100 simulated watchers, driven
//! at a fixed request rate that mixes status queries, listings and commands, with watcher probing on.
//!
//! It asserts that every answer is 2xx or an expected 409 (start of a running agent, stop of a stopped one), that
//! no agent ever saw two commands at once, and that neither open file descriptors nor resident memory grow beyond a
//! bound between the warmed-up start and the end. It runs two HTTP workers, so the agents' actors are spread over
//! two threads and requests reach them from either.
//!
//! `SOAK_SECONDS` sets the duration (default 30, the normal suite); the long form is
//! `SOAK_SECONDS=600 cargo nextest run --test soak`. `SOAK_RATE` sets requests per second (default 40).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/sim_watcher.rs"]
mod sim_watcher;

use std::{
    cell::RefCell,
    collections::BTreeMap,
    rc::Rc,
    time::{Duration, Instant},
};

use agent_supervisor::{api::COMPAT_API_VERSION, auth::signing};
use common::supervisor::{TOKEN, TestApp};
use sim_watcher::SimWatchers;

const AGENTS: usize = 100;
/// Open descriptors may differ by this much between the warmed-up start and the end (pooled watcher connections
/// come and go with keep-alive expiry; a leak of one per request would exceed it within seconds).
const FD_SLACK: i64 = 64;
/// Resident memory may grow this much over the run.
const RSS_SLACK_KIB: i64 = 24 * 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn open_fds() -> i64 {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count() as i64).unwrap_or(0)
}

fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Signs with the app's superadmin keypair and reuses one client (one connection pool), as a real caller would.
async fn call(client: &awc::Client, app: &TestApp, method: &str, path: &str) -> Result<u16, String> {
    let out = signing::OutgoingRequest {
        method,
        rel_url: path,
        host: &app.host,
        content_type: "text/plain",
        api_version: COMPAT_API_VERSION,
    };
    let h = signing::sign_request(&app.admin.access_key, &app.admin.secret_key, &out, chrono::Utc::now());
    let m = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let req = client
        .request(m, format!("{}{path}", app.url))
        .insert_header(("Content-Type", "text/plain"))
        .insert_header(("X-BackendAI-Version", COMPAT_API_VERSION))
        .insert_header(("Date", h.date))
        .insert_header(("Authorization", h.authorization))
        .timeout(Duration::from_secs(15));
    let mut resp = req.send().await.map_err(|e| format!("{method} {path}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.body().limit(4 << 20).await.map_err(|e| format!("{method} {path}: body: {e}"))?;
    if (200..300).contains(&status) {
        return Ok(status);
    }
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error_code"].as_str().map(str::to_owned));
    match (status, code.as_deref()) {
        (409, Some("agent_already_running" | "agent_already_stopped")) => Ok(status),
        _ => Err(format!("{method} {path}: {status} {}", String::from_utf8_lossy(&body))),
    }
}

#[actix_rt::test]
async fn soak_mixed_status_and_commands_at_a_fixed_rate() {
    let seconds = env_u64("SOAK_SECONDS", 30);
    let rate = env_u64("SOAK_RATE", 40).max(1);
    let sims = SimWatchers::start(AGENTS, 1, TOKEN, Duration::from_millis(20));
    let app = TestApp::spawn_with(|c| {
        c.watcher.probe_interval_s = 1;
        c.watcher.queue_capacity = 16;
        c.watcher.command_timeout_ms = 5_000;
        // Agents live on both worker threads, and requests land on either: half of them cross between threads.
        c.api.workers = 2;
    })
    .await;
    assert_eq!(app.running.supervisor.homes().len(), 2);
    app.sql("INSERT INTO scaling_groups (name) VALUES ('default') ON CONFLICT DO NOTHING").await;
    app.sql(&format!(
        "INSERT INTO agents (id, region, addr, version, architecture) \
         SELECT 'i-soak-' || g, 'local', 'tcp://127.0.0.1:6001', '23.09.10', 'x86_64' FROM generate_series(0, {}) g",
        AGENTS - 1
    ))
    .await;
    for (i, port) in sims.ports().iter().enumerate() {
        app.register_watcher(&format!("i-soak-{i}"), *port).await;
    }

    let client = awc::Client::builder().timeout(Duration::from_secs(15)).finish();
    let app = Rc::new(app);
    let errors: Rc<RefCell<Vec<String>>> = Rc::default();
    let counts: Rc<RefCell<BTreeMap<&'static str, u64>>> = Rc::default();
    let in_flight = Rc::new(std::cell::Cell::new(0usize));
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let warm_up = Duration::from_secs(3.min(seconds / 3).max(1));
    let started = Instant::now();
    let mut baseline: Option<(i64, i64)> = None;
    let mut tick = actix_rt::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    let mut skipped = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        if baseline.is_none() && started.elapsed() >= warm_up {
            baseline = Some((open_fds(), rss_kib()));
        }
        // Bound the requests in flight so a stall shows up as errors, not as an ever-growing backlog.
        if in_flight.get() >= 256 {
            skipped += 1;
            continue;
        }
        n += 1;
        let agent = format!("i-soak-{}", (n * 7919) % AGENTS as u64);
        let (kind, method, path) = match n % 20 {
            0 => ("restart", "POST", format!("/v1/agents/{agent}/restart")),
            1 => ("stop", "POST", format!("/resource/watcher/agent/stop?agent_id={agent}")),
            2 => ("start", "POST", format!("/resource/watcher/agent/start?agent_id={agent}")),
            3 => ("list", "GET", "/v1/agents".to_owned()),
            4 | 5 => ("events", "GET", format!("/v1/agents/{agent}/events?limit=5")),
            6..=12 => ("status_v1", "GET", format!("/v1/agents/{agent}/watcher")),
            _ => ("status", "GET", format!("/resource/watcher?agent_id={agent}")),
        };
        *counts.borrow_mut().entry(kind).or_default() += 1;
        let (client, app, errors, in_flight) = (client.clone(), app.clone(), errors.clone(), in_flight.clone());
        in_flight.set(in_flight.get() + 1);
        actix_rt::spawn(async move {
            if let Err(e) = call(&client, &app, method, &path).await {
                errors.borrow_mut().push(e);
            }
            in_flight.set(in_flight.get() - 1);
        });
    }
    let drained = common::eventually(Duration::from_secs(20), || {
        let in_flight = in_flight.clone();
        async move { in_flight.get() == 0 }
    })
    .await;
    assert!(drained, "{} requests still in flight 20 s after the load stopped", in_flight.get());
    let (fds0, rss0) = baseline.unwrap_or((open_fds(), rss_kib()));
    let (fds1, rss1) = (open_fds(), rss_kib());
    eprintln!(
        "soak: {seconds} s at {rate}/s: {n} requests {:?}, {skipped} skipped; fds {fds0} -> {fds1}; VmRSS {rss0} -> {rss1} KiB; \
         watcher requests {}, commands {}",
        counts.borrow(),
        sims.requests(),
        sims.total_commands()
    );

    {
        let errors = errors.borrow();
        assert!(
            errors.is_empty(),
            "{} of {n} requests failed, first: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
    }
    assert_eq!(skipped, 0, "the daemon fell behind the request rate");
    assert_eq!(sims.overlaps(), 0, "an agent saw two commands at once");
    assert!(sims.ports_with_overlapping_commands().is_empty());
    assert!(fds1 - fds0 <= FD_SLACK, "open descriptors grew from {fds0} to {fds1}");
    assert!(rss1 - rss0 <= RSS_SLACK_KIB, "VmRSS grew from {rss0} KiB to {rss1} KiB");
    // The daemon's own view: the agents are still supervised and answer.
    let (status, body) = app.get("/v1/agents").await;
    assert_eq!(status, 200);
    assert_eq!(body["agents"].as_array().map(Vec::len), Some(AGENTS));
}
