//! Daemon benchmarks (not timed tests): the status proxy against a real `agent-watcher`, memory per supervised agent
//! at 10,000 agents, the fan-out status of 1,000 watchers, 1,000 restarts 100 at a time, and 10,000 agents registered
//! through the API until every one answers status.
//!
//! Run it with `bench/daemon.sh` (builds the release binaries, raises `ulimit -n`, then `cargo bench --bench
//! daemon`). The daemon is the release `agent-supervisor serve` as a subprocess configured from the environment, so
//! its memory is its own; the 10,000 simulated watchers (`tests/support/sim_watcher.rs`) and the load generator run
//! in this process, `wrk` in its own. Everything binds 127.0.0.1. Databases are throw-away ones on the server of
//! `AS_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:55432/postgres`), etcd keys a namespace of their own on
//! `AS_TEST_ETCD_ENDPOINT` (default `http://127.0.0.1:23790`); both are removed at the end.
//!
//! Environment: `BENCH_AGENTS` (10000), `BENCH_FANOUT` (1000, also the number of agents restarted), `BENCH_PARALLEL`
//! (100 restarts in flight), `BENCH_COMMAND_MS` (50: how long a simulated command takes), `WRK_DURATION` (10s),
//! `WRK_CONNECTIONS` (8), `WRK_THREADS` (2), `BENCH_ONLY=proxy` (the status proxy rows only), `BENCH_ONLY=registry`
//! (the registration rows only), `BENCH_WRK_CPUS` (pins wrk with `taskset -c`), `BENCH_PROFILE=<file>`
//! (records the daemon with `perf record -g` into `<file>` while wrk drives the status proxy), `BENCH_PAIRS` (3)
//! and `WRK_PAIR_DURATION` (5s): the alternating proxied/`whoami` pairs of the CPU ratio row. `AGENT_SUPERVISOR_*`
//! variables other than those set here reach the daemon (e.g. `AGENT_SUPERVISOR_API_WORKERS=2`). Each wrk run also
//! reports the CPU time per request of the daemon, the watcher and wrk itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/sim_watcher.rs"]
mod sim_watcher;
mod support;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent_supervisor::api::COMPAT_API_VERSION;
use futures_util::StreamExt;
use serde_json::Value;
use sim_watcher::SimWatchers;
use support::*;

/// Requests/sec, p50 and p99 (ms) and non-2xx answers from `wrk --latency` output.
#[derive(Debug, Default, Clone)]
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non2xx: u64,
    /// CPU time (user + system) each watched process spent per request answered, in µs.
    cpu_us: Vec<f64>,
}

/// User plus system CPU time of the waited-for children so far (here: the wrk runs), in µs.
fn children_cpu_us() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// User plus system CPU time of this process so far, in µs.
fn own_cpu_us() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// `n` status calls through the daemon's own watcher client (`watcher::get_status` on a resolved endpoint, what an
/// agent actor runs per call), `concurrency` at a time, against the watcher on `port`: this process's CPU per call and calls per second.
async fn watcher_call_cpu(port: u16, concurrency: usize, n: usize) -> (f64, f64) {
    use agent_supervisor::{
        config::Secret,
        etcd::WatcherAddress,
        watcher::{Endpoint, get_status},
    };
    let endpoint = Endpoint::new(&WatcherAddress { host: "127.0.0.1".into(), port }, &Secret::new(TOKEN)).unwrap();
    let run = |count: usize| {
        let endpoint = &endpoint;
        futures_util::stream::iter(0..count)
            .map(move |_| async move { get_status(endpoint, Duration::from_secs(5)).await.is_ok() })
            .buffer_unordered(concurrency)
            .filter(|ok| std::future::ready(!*ok))
            .count()
    };
    assert_eq!(run(500).await, 0, "warm-up calls failed");
    let (cpu, started) = (own_cpu_us(), Instant::now());
    assert_eq!(run(n).await, 0, "status calls failed");
    ((own_cpu_us() - cpu) / n as f64, n as f64 / started.elapsed().as_secs_f64())
}

/// User plus system CPU time of a process so far, in µs (`/proc/PID/stat`, in clock ticks of `_SC_CLK_TCK`).
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(14) + ticks(15)) * 1e6 / hz
}

fn duration_ms(s: &str) -> f64 {
    let s = s.trim();
    let (num, factor) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().unwrap_or(f64::NAN) * factor
}

fn run_wrk(
    label: &str,
    duration: &str,
    url: &str,
    headers: &[(&str, &str)],
    script_env: Option<&[(&str, String)]>,
    watch: &[u32],
) -> WrkResult {
    // BENCH_WRK_CPUS pins wrk (taskset -c), so that it does not share cores with what it measures.
    let mut cmd = match std::env::var("BENCH_WRK_CPUS") {
        Ok(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpus, "wrk"]);
            c
        }
        Err(_) => Command::new("wrk"),
    };
    cmd.args(["-t", &env_or("WRK_THREADS", "2"), "-c", &env_or("WRK_CONNECTIONS", "8"), "-d", duration, "--latency"]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    if let Some(vars) = script_env {
        cmd.args(["-s", Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/signed.lua").to_str().unwrap()]);
        cmd.envs(vars.iter().map(|(k, v)| (*k, v.as_str())));
    }
    // The watched processes, then wrk itself.
    let cpu = || watch.iter().map(|&pid| cpu_us(pid)).chain([children_cpu_us()]).collect::<Vec<f64>>();
    let cpu_before = cpu();
    let out = cmd.arg(url).output().expect("wrk is required (apt-get install wrk)");
    let cpu_after = cpu();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("== {label}\n{text}");
    let mut r = WrkResult::default();
    let mut requests: f64 = 0.0;
    for line in text.lines() {
        let t = line.trim();
        if let Some((n, _)) = t.split_once(" requests in ") {
            requests = n.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50_ms = duration_ms(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_ms = duration_ms(v);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non2xx = v.trim().parse().unwrap_or(0);
        }
    }
    r.cpu_us = cpu_before.iter().zip(&cpu_after).map(|(b, a)| (a - b) / requests.max(1.0)).collect();
    r
}

fn main() {
    main_with(run);
}

async fn run(db_url: String) -> Vec<Row> {
    let agents = env_usize("BENCH_AGENTS", 10_000);
    let fanout = env_usize("BENCH_FANOUT", 1_000).min(agents);
    let parallel = env_usize("BENCH_PARALLEL", 100);
    let command_ms = env_usize("BENCH_COMMAND_MS", 50) as u64;
    let mut rows = Vec::new();

    let (db, setup, etcd) = prepare(db_url, "daemon benchmark").await;
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(parallel.max(8) * 2))
        .timeout(Duration::from_secs(120))
        .finish();
    sql(&db, "INSERT INTO scaling_groups (name) VALUES ('default'), ('bench-1k') ON CONFLICT DO NOTHING").await;
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "registry") {
        let sims = SimWatchers::start(agents, 2, TOKEN, Duration::from_millis(command_ms));
        registration(&mut rows, &setup, &client, &sims, parallel).await;
        drop(sims);
        let _ = etcd.delete_prefix("").await;
        db.close();
        return rows;
    }

    // 1. Status proxy: the daemon in front of a real agent-watcher vs. the watcher directly, same wrk load.
    {
        let watcher = start_watcher(&setup, &["--workers", "2"]);
        let port = watcher.port;
        sql(&db, "INSERT INTO agents (id, region, addr, version, architecture) VALUES ('i-proxy', 'local', 'tcp://127.0.0.1:6001', 'v', 'x86_64')").await;
        etcd.put("nodes/agents/i-proxy/ip", "127.0.0.1").await.unwrap();
        etcd.put("nodes/agents/i-proxy/watcher_port", &port.to_string()).await.unwrap();
        let daemon = start_daemon(&setup, "proxy");
        let path = "/resource/watcher?agent_id=i-proxy";
        // One signed header set, dated now: valid for the daemon's 15-minute clock-skew window.
        let h = signed_headers(&setup, daemon.port, "GET", path);
        let vars = wrk_signed_env(&h);
        let check = http_status(
            daemon.port,
            path,
            &[
                ("Date", &h.date),
                ("Authorization", &h.authorization),
                ("X-BackendAI-Version", COMPAT_API_VERSION),
                ("Content-Type", SIGNED_CONTENT_TYPE),
            ],
        );
        assert_eq!(check, 200, "the precomputed signed request is not accepted");
        let both = [daemon.pid(), watcher.pid()];
        let wrk_duration = env_or("WRK_DURATION", "10s");
        // The call alone: the daemon's watcher client, in this process, with no HTTP server in front.
        for c in [1usize, 8] {
            let (per_call, calls_per_s) = watcher_call_cpu(port, c, 20_000).await;
            row(
                &mut rows,
                format!("CPU per watcher status call (the daemon's client alone, concurrency {c})"),
                format!("{per_call:.1} µs ({calls_per_s:.0} calls/s)"),
                "—",
            );
        }
        let direct = run_wrk(
            "direct: GET / on agent-watcher",
            &wrk_duration,
            &format!("http://127.0.0.1:{port}/"),
            &[("X-BackendAI-Watcher-Token", TOKEN)],
            None,
            &[watcher.pid()],
        );
        let profile = std::env::var("BENCH_PROFILE").ok().map(|out| {
            Command::new("perf")
                .args(["record", "-g", "-o", &out, "-p", &daemon.pid().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("perf is required for BENCH_PROFILE (package linux-perf)")
        });
        let (answered_before, calls_before) = (
            counter(daemon.port, "http_requests_total", "status=\"200\""),
            counter(daemon.port, "watcher_calls_total", "kind=\"status\""),
        );
        let proxied_url = format!("http://127.0.0.1:{}{path}", daemon.port);
        let proxied =
            run_wrk("through the daemon: GET /resource/watcher", &wrk_duration, &proxied_url, &[], Some(&vars), &both);
        let answered = counter(daemon.port, "http_requests_total", "status=\"200\"") - answered_before;
        let calls = counter(daemon.port, "watcher_calls_total", "kind=\"status\"") - calls_before;
        // Slow watcher calls tell a stall at the watcher (or on the way to it) from one inside the daemon.
        let slow_calls = counter(daemon.port, "watcher_call_duration_seconds_count", "kind=\"status\"")
            - counter(daemon.port, "watcher_call_duration_seconds_bucket", "le=\"0.1\"");
        if let Some(perf) = profile {
            // SAFETY: plain kill(2) on our own child; SIGINT makes perf write its file and exit.
            unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
            let _ = perf.wait_with_output();
        }
        // Where the cost sits: the daemon's HTTP stack alone, and with signature verification.
        let healthz = run_wrk(
            "the daemon's HTTP stack: GET /healthz (unsigned)",
            &wrk_duration,
            &format!("http://127.0.0.1:{}/healthz", daemon.port),
            &[],
            None,
            &both,
        );
        let whoami_vars = wrk_signed_env(&signed_headers(&setup, daemon.port, "GET", "/v1/whoami"));
        let whoami_url = format!("http://127.0.0.1:{}/v1/whoami", daemon.port);
        let whoami = run_wrk(
            "signature verification: GET /v1/whoami",
            &wrk_duration,
            &whoami_url,
            &[],
            Some(&whoami_vars),
            &both,
        );
        assert_eq!(
            (direct.non2xx, proxied.non2xx, healthz.non2xx, whoami.non2xx),
            (0, 0, 0, 0),
            "non-2xx answers under load"
        );
        row(
            &mut rows,
            "status direct (`GET /` on agent-watcher), wrk -c8 10 s",
            format!("{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms", direct.rps, direct.p50_ms, direct.p99_ms),
            "—",
        );
        row(
            &mut rows,
            "status via daemon (`GET /resource/watcher`, signed)",
            format!("{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms", proxied.rps, proxied.p50_ms, proxied.p99_ms),
            "—",
        );
        row(
            &mut rows,
            "daemon / direct",
            format!(
                "{:.0} % of throughput, +{:.2} ms at p50",
                100.0 * proxied.rps / direct.rps,
                proxied.p50_ms - direct.p50_ms
            ),
            "≥ 80 %, < +1 ms",
        );
        row(
            &mut rows,
            "status requests answered per watcher call (shared calls in flight)",
            format!(
                "{:.2} ({answered:.0} requests, {calls:.0} calls, {slow_calls:.0} of them over 100 ms)",
                answered / calls.max(1.0)
            ),
            "—",
        );
        row(
            &mut rows,
            "daemon alone: `GET /healthz` (unsigned)",
            format!("{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms", healthz.rps, healthz.p50_ms, healthz.p99_ms),
            "—",
        );
        row(
            &mut rows,
            "daemon alone: `GET /v1/whoami` (signed)",
            format!("{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms", whoami.rps, whoami.p50_ms, whoami.p99_ms),
            "—",
        );
        let cpu = |r: &WrkResult, i: usize| r.cpu_us.get(i).copied().unwrap_or(f64::NAN);
        let us =
            |r: &WrkResult, i: usize| if cpu(r, i).is_nan() { "—".to_string() } else { format!("{:.1}", cpu(r, i)) };
        row(
            &mut rows,
            "CPU per request, µs (daemon / watcher / wrk)",
            format!(
                "direct — / {} / {}; via daemon {} / {} / {}; healthz {} / — / {}; whoami {} / — / {}",
                us(&direct, 0),
                us(&direct, 1),
                us(&proxied, 0),
                us(&proxied, 1),
                us(&proxied, 2),
                us(&healthz, 0),
                us(&healthz, 2),
                us(&whoami, 0),
                us(&whoami, 2),
            ),
            "—",
        );
        // What the CPU figures allow a proxy that asks the watcher for every answer, if its side of each watcher call
        // cost nothing: wrk's share, the daemon's signed-request floor (`whoami`) and the watcher's share per request.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let floor_us = cpu(&proxied, 2) + cpu(&whoami, 0) + cpu(&proxied, 1);
        let ceiling = cores * 1e6 / floor_us;
        row(
            &mut rows,
            "CPU-bound ceiling if the daemon's side of watcher calls were free",
            format!(
                "{ceiling:.0} req/s ({:.0} % of direct): {cores:.0} cores ÷ {floor_us:.1} µs (wrk {:.1} + signed floor {:.1} + watcher {:.1})",
                100.0 * ceiling / direct.rps,
                cpu(&proxied, 2),
                cpu(&whoami, 0),
                cpu(&proxied, 1)
            ),
            "—",
        );
        // The ratio the status proxy is held to: its CPU per request over the signed `whoami` floor. Also measured
        // in alternating pairs of short runs, so that a change in the machine's speed between two runs (a shared VM's
        // neighbours) falls on both sides of each pair rather than on one side of the ratio.
        let mut ratios = Vec::new();
        let pair_duration = env_or("WRK_PAIR_DURATION", "5s");
        for pair in 1..=env_usize("BENCH_PAIRS", 3) {
            let p = run_wrk(
                &format!("pair {pair}: GET /resource/watcher"),
                &pair_duration,
                &proxied_url,
                &[],
                Some(&vars),
                &both,
            );
            let w = run_wrk(
                &format!("pair {pair}: GET /v1/whoami"),
                &pair_duration,
                &whoami_url,
                &[],
                Some(&whoami_vars),
                &both,
            );
            assert_eq!((p.non2xx, w.non2xx), (0, 0), "non-2xx answers under load");
            ratios.push(cpu(&p, 0) / cpu(&w, 0));
        }
        let listed = ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ");
        ratios.sort_by(f64::total_cmp);
        let median = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
        row(
            &mut rows,
            "daemon CPU per proxied status ÷ per signed `whoami`",
            format!(
                "{median:.2}× (median of alternating pairs: {listed}); {:.2}× from the runs above",
                cpu(&proxied, 0) / cpu(&whoami, 0)
            ),
            "≤ 1.5×",
        );
        drop(daemon);
        drop(watcher);
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "proxy") {
        return rows;
    }

    // 2. Memory per supervised agent: the same daemon with 1 agent and with `agents` agents (actors, etcd mirror).
    let warm = |port: u16| {
        let (client, setup) = (&client, &setup);
        async move {
            for _ in 0..20 {
                assert_eq!(call(client, setup, port, "GET", "/v1/whoami").await.0, 200);
            }
        }
    };
    let rss_empty = {
        let d = start_daemon(&setup, "empty");
        warm(d.port).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_kib(d.pid())
    };
    let sims = SimWatchers::start(agents, 2, TOKEN, Duration::from_millis(command_ms));
    sql(
        &db,
        &format!(
            "INSERT INTO agents (id, region, scaling_group, addr, version, architecture) \
             SELECT 'i-sim-' || g, 'local', CASE WHEN g < {fanout} THEN 'bench-1k' ELSE 'default' END, \
                    'tcp://127.0.0.1:6001', '23.09.10', 'x86_64' FROM generate_series(0, {}) g",
            agents - 1
        ),
    )
    .await;
    let populated = Instant::now();
    let puts = sims.ports().iter().enumerate().flat_map(|(i, p)| {
        [
            (format!("nodes/agents/i-sim-{i}/ip"), "127.0.0.1".to_owned()),
            (format!("nodes/agents/i-sim-{i}/watcher_port"), p.to_string()),
        ]
    });
    let failed = futures_util::stream::iter(puts)
        .map(|(k, v)| {
            let etcd = etcd.clone();
            async move { etcd.put(&k, &v).await.is_err() }
        })
        .buffer_unordered(64)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    assert_eq!(failed, 0, "etcd puts failed");
    eprintln!("registered {agents} simulated watchers in {:?}", populated.elapsed());
    let daemon = start_daemon(&setup, "scale");
    warm(daemon.port).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_full = rss_kib(daemon.pid());
    let per_agent = (rss_full as f64 - rss_empty as f64) / agents as f64;
    row(
        &mut rows,
        format!("daemon VmRSS, 1 agent → {agents} agents"),
        format!("{:.1} MiB → {:.1} MiB", rss_empty as f64 / 1024.0, rss_full as f64 / 1024.0),
        "—",
    );
    row(&mut rows, "memory per supervised agent", format!("{:.2} KiB", per_agent), "< 5 KiB");

    // 3. Listing and fan-out status.
    let started = Instant::now();
    let (status, body) = call(&client, &setup, daemon.port, "GET", "/v1/agents").await;
    assert_eq!(status, 200);
    assert_eq!(body["agents"].as_array().map(Vec::len), Some(agents + 1));
    row(
        &mut rows,
        format!("`GET /v1/agents`, {} agents, cached state", agents + 1),
        format!("{:.0} ms", started.elapsed().as_secs_f64() * 1000.0),
        "—",
    );
    let mut fan = Vec::new();
    for run in 0..6 {
        let before = chrono::Utc::now();
        let started = Instant::now();
        let (status, body) =
            call(&client, &setup, daemon.port, "GET", "/v1/agents?scaling_group=bench-1k&refresh=true").await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(status, 200, "{body}");
        let listed = body["agents"].as_array().unwrap();
        assert_eq!(listed.len(), fanout);
        for a in listed {
            let w = &a["supervision"]["watcher"];
            assert_eq!((w["reachable"].as_bool(), w["agent_status"].as_str()), (Some(true), Some("active")), "{a}");
            let at: chrono::DateTime<chrono::Utc> = serde_json::from_value(w["at"].clone()).unwrap();
            assert!(at >= before, "observation of {} is older than the request", a["id"]);
        }
        eprintln!("fan-out run {run}: {ms:.0} ms");
        fan.push(ms);
    }
    let cold = fan.remove(0);
    row(
        &mut rows,
        format!("`GET /v1/agents?refresh=true`, {fanout} agents (concurrency 64)"),
        format!(
            "first {cold:.0} ms (new connections), then median {:.0} ms, max {:.0} ms",
            percentile(fan.clone(), 0.5),
            percentile(fan, 1.0)
        ),
        "< 1 s",
    );

    // 4. Command throughput: restart `fanout` agents, `parallel` at a time, over HTTP.
    let ids: Vec<String> = (0..fanout).map(|i| format!("i-sim-{i}")).collect();
    let restart_all = |jobs: Vec<String>| {
        let (client, setup, port) = (&client, &setup, daemon.port);
        async move {
            let started = Instant::now();
            let statuses: Vec<(String, u16, Value)> = futures_util::stream::iter(jobs)
                .map(|id| async move {
                    let (s, b) = call(client, setup, port, "POST", &format!("/v1/agents/{id}/restart")).await;
                    (id, s, b)
                })
                .buffer_unordered(parallel)
                .collect()
                .await;
            let failed: Vec<_> = statuses.iter().filter(|(_, s, _)| *s != 200).collect();
            assert!(failed.is_empty(), "{} restarts failed, first: {:?}", failed.len(), failed.as_slice().first());
            started.elapsed()
        }
    };
    let took = restart_all(ids.clone()).await;
    assert_eq!(sims.total_commands(), fanout);
    for p in &sims.ports()[..fanout] {
        assert_eq!(sims.commands(*p).len(), 1, "port {p} did not see exactly one restart");
    }
    row(
        &mut rows,
        format!("restart {fanout} agents, {parallel} in flight (simulated restart {command_ms} ms)"),
        format!(
            "{:.2} s ({:.0} restarts/s; floor {:.2} s)",
            took.as_secs_f64(),
            fanout as f64 / took.as_secs_f64(),
            (fanout as f64 / parallel as f64) * command_ms as f64 / 1000.0
        ),
        "—",
    );
    // Serialisation under contention: every agent gets two restarts at once.
    let doubled: Vec<String> = ids.iter().flat_map(|id| [id.clone(), id.clone()]).collect();
    let took = restart_all(doubled).await;
    let bad = sims.ports_with_overlapping_commands();
    assert!(bad.is_empty() && sims.overlaps() == 0, "{} agents saw overlapping commands", bad.len());
    assert_eq!(sims.total_commands(), fanout * 3);
    row(
        &mut rows,
        format!("{} restarts, 2 at once per agent, {parallel} in flight", fanout * 2),
        format!("{:.2} s; overlapping commands at any watcher: 0", took.as_secs_f64()),
        "0 overlaps",
    );
    row(
        &mut rows,
        "daemon VmRSS after the fan-outs and restarts",
        format!("{:.1} MiB", rss_kib(daemon.pid()) as f64 / 1024.0),
        "—",
    );

    drop(daemon);

    // 5. The registry: the same agents registered through the API by a daemon that starts without them.
    sql(&db, "DELETE FROM agents WHERE id LIKE 'i-sim-%'").await;
    let _ = etcd.delete_prefix("nodes/agents/i-sim-").await;
    registration(&mut rows, &setup, &client, &sims, parallel).await;

    drop(sims);
    let _ = etcd.delete_prefix("").await;
    db.close();
    rows
}

/// Registers one agent per simulated watcher through `POST /v1/agents`, `parallel` at a time, then asks every one
/// for its status through the daemon (each answer comes from its actor).
async fn registration(rows: &mut Vec<Row>, setup: &Setup, client: &awc::Client, sims: &SimWatchers, parallel: usize) {
    let daemon = start_daemon(setup, "registry");
    sims.close_connections();
    let count = sims.ports().len();
    let started = Instant::now();
    let mut latencies: Vec<f64> = futures_util::stream::iter(sims.ports().iter().enumerate())
        .map(|(i, port)| async move {
            let body = serde_json::json!({
                "id": format!("i-reg-{i}"), "addr": "tcp://127.0.0.1:6001", "ip": "127.0.0.1", "watcher_port": port,
                "available_slots": {"cpu": "64", "mem": "549755813888", "cuda.shares": "8"}, "version": "23.09.10",
            });
            let began = Instant::now();
            let (status, answer) = call_with(client, setup, daemon.port, "POST", "/v1/agents", Some(&body)).await;
            assert_eq!(status, 200, "registration of i-reg-{i}: {answer}");
            began.elapsed().as_secs_f64() * 1000.0
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let registered = started.elapsed();
    latencies.sort_by(f64::total_cmp);
    row(
        rows,
        format!("register {count} agents through `POST /v1/agents`, {parallel} in flight"),
        format!(
            "{:.2} s, {:.0} registrations/s; p50 {:.1} ms, p99 {:.1} ms",
            registered.as_secs_f64(),
            count as f64 / registered.as_secs_f64(),
            percentile(latencies.clone(), 0.5),
            percentile(latencies, 0.99)
        ),
        "—",
    );
    let failures: Vec<(usize, u16, Value)> = futures_util::stream::iter(0..count)
        .map(|i| async move {
            let (status, body) =
                call(client, setup, daemon.port, "GET", &format!("/v1/agents/i-reg-{i}/watcher")).await;
            (i, status, body)
        })
        .buffer_unordered(parallel)
        .filter(|(_, status, body)| std::future::ready(*status != 200 || body["watcher"]["agent-status"] != "active"))
        .collect()
        .await;
    let all_answer = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} agents did not answer status; first: {:?}",
        failures.len(),
        <[_]>::first(&failures)
    );
    row(
        rows,
        format!("… until all {count} answer status through their actors ({parallel} in flight)"),
        format!(
            "{:.2} s after the first registration ({:.2} s after the last)",
            all_answer.as_secs_f64(),
            (all_answer - registered).as_secs_f64()
        ),
        "—",
    );
    row(rows, "daemon VmRSS after the registrations", format!("{:.1} MiB", rss_kib(daemon.pid()) as f64 / 1024.0), "—");
}
