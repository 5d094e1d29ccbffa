//! High-availability benchmarks (not timed tests): three release `agent-supervisor serve` replicas on one PostgreSQL
//! and etcd.
//!
//! 1. **Failover**: kill -9 the leader, then restart an agent through a surviving replica every 20 ms until one
//!    succeeds; the time from the kill to that success, `BENCH_FAILOVER_RUNS` times (20), median and max. The agent
//!    is a real `agent-watcher` (process back-end, start grace 50 ms), so a successful restart itself takes about
//!    60 ms; that figure is printed too. The killed replica is started again after each run.
//! 2. **Forwarding**: restarts of simulated agents (no delay) and status requests, `BENCH_CONCURRENCY` (16) at a time,
//!    sent to the leader and to a follower: throughput of each and the ratio.
//!
//! Run it with `bench/ha.sh` (builds the release binaries). `BENCH_LEASE_TTL_S` (5, the default `ha.lease_ttl_s`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/sim_watcher.rs"]
mod sim_watcher;
mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sim_watcher::SimWatchers;
use support::*;

fn main() {
    main_with(run);
}

/// A replica: its process, id and port.
struct Replica {
    id: String,
    proc_: Proc,
}

fn start_replica(setup: &Setup, id: &str, ttl: u64) -> Replica {
    let port = free_port();
    let env = [
        ("HA_ENABLED", "true".to_owned()),
        ("HA_REPLICA_ID", id.to_owned()),
        ("HA_ADVERTISE_URL", format!("http://127.0.0.1:{port}")),
        ("HA_LEASE_TTL_S", ttl.to_string()),
        ("ETCD_TIMEOUT_MS", "1000".to_owned()),
    ];
    Replica { id: id.to_owned(), proc_: start_daemon_with(setup, id, port, &env) }
}

async fn role(client: &awc::Client, setup: &Setup, r: &Replica) -> Option<String> {
    let (status, view) = call(client, setup, r.proc_.port, "GET", "/v1/cluster").await;
    (status == 200).then(|| view["role"].as_str().unwrap_or_default().to_owned())
}

async fn leader_index(client: &awc::Client, setup: &Setup, replicas: &[Replica]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (i, r) in replicas.iter().enumerate() {
            if role(client, setup, r).await.as_deref() == Some("leader") {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(db_url: String) -> Vec<Row> {
    let runs = env_usize("BENCH_FAILOVER_RUNS", 20);
    let ttl = env_usize("BENCH_LEASE_TTL_S", 5) as u64;
    let concurrency = env_usize("BENCH_CONCURRENCY", 16);
    let mut rows = Vec::new();
    let (db, setup, etcd) = prepare(db_url, "high-availability benchmark").await;
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(concurrency * 4))
        .timeout(Duration::from_secs(60))
        .finish();

    // A real watcher for the failover agent; simulated ones for the throughput runs.
    let watcher = start_watcher(&setup, &["--start-grace-ms", "50"]);
    let wport = watcher.port;
    let sims = SimWatchers::start(64, 1, TOKEN, Duration::ZERO);
    sql(
        &db,
        "INSERT INTO agents (id, region, addr, version, architecture) \
         SELECT 'i-' || g, 'local', 'tcp://127.0.0.1:6001', 'v', 'x86_64' FROM generate_series(0, 64) g",
    )
    .await;
    etcd.put("nodes/agents/i-64/ip", "127.0.0.1").await.unwrap();
    etcd.put("nodes/agents/i-64/watcher_port", &wport.to_string()).await.unwrap();
    for (i, port) in sims.ports().iter().enumerate() {
        etcd.put(&format!("nodes/agents/i-{i}/ip"), "127.0.0.1").await.unwrap();
        etcd.put(&format!("nodes/agents/i-{i}/watcher_port"), &port.to_string()).await.unwrap();
    }

    let mut replicas: Vec<Replica> = (1..=3).map(|n| start_replica(&setup, &format!("r{n}"), ttl)).collect();
    let leader = leader_index(&client, &setup, &replicas).await;
    let restart_ms = {
        let started = Instant::now();
        let (status, body) =
            call(&client, &setup, replicas[leader].proc_.port, "POST", "/v1/agents/i-64/restart").await;
        assert_eq!(status, 200, "{body}");
        started.elapsed().as_secs_f64() * 1000.0
    };

    // 1. Failover.
    let mut failovers = Vec::new();
    for run in 0..runs {
        let leader = leader_index(&client, &setup, &replicas).await;
        let victim = replicas[leader].id.clone();
        replicas[leader].proc_.child.kill().unwrap();
        let killed = Instant::now();
        let survivors: Vec<u16> =
            replicas.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, r)| r.proc_.port).collect();
        let mut attempt = 0usize;
        loop {
            let port = survivors[attempt % survivors.len()];
            attempt += 1;
            let (status, _) = call(&client, &setup, port, "POST", "/v1/agents/i-64/restart").await;
            if status == 200 {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(10 * ttl), "no command succeeded after the failover");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ms = killed.elapsed().as_secs_f64() * 1000.0;
        eprintln!("failover {run}: {ms:.0} ms ({attempt} attempts)");
        failovers.push(ms);
        let _ = replicas[leader].proc_.child.wait();
        replicas[leader] = start_replica(&setup, &victim, ttl);
        // Back to three: the new one follows before the next run.
        while role(&client, &setup, &replicas[leader]).await.as_deref() != Some("follower") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    row(
        &mut rows,
        format!("failover: kill -9 the leader → first successful restart through a survivor ({runs} runs)"),
        format!(
            "median {:.0} ms, max {:.0} ms (lease TTL {ttl} s; a restart alone takes {restart_ms:.0} ms)",
            percentile(failovers.clone(), 0.5),
            percentile(failovers, 1.0)
        ),
        format!("≤ {} ms", (ttl + 1) * 1000),
    );

    // 2. Throughput through the leader and through a follower.
    let leader = leader_index(&client, &setup, &replicas).await;
    let follower = (leader + 1) % replicas.len();
    let measure = |port: u16, method: &'static str, kind: &'static str, n: usize| {
        let (client, setup) = (&client, &setup);
        async move {
            let started = Instant::now();
            let failed = futures_util::stream::iter(0..n)
                .map(|i| async move {
                    let path = match kind {
                        "restart" => format!("/v1/agents/i-{}/restart", i % 64),
                        _ => format!("/v1/agents/i-{}/watcher", i % 64),
                    };
                    call(client, setup, port, method, &path).await.0 != 200
                })
                .buffer_unordered(concurrency)
                .filter(|f| std::future::ready(*f))
                .count()
                .await;
            assert_eq!(failed, 0, "{kind} requests failed");
            n as f64 / started.elapsed().as_secs_f64()
        }
    };
    let (lp, fp) = (replicas[leader].proc_.port, replicas[follower].proc_.port);
    let _warm = measure(fp, "POST", "restart", 200).await;
    let cmd_leader = measure(lp, "POST", "restart", 3000).await;
    let cmd_follower = measure(fp, "POST", "restart", 3000).await;
    let st_leader = measure(lp, "GET", "status", 20000).await;
    let st_follower = measure(fp, "GET", "status", 20000).await;
    row(
        &mut rows,
        format!("restarts (simulated watchers, no delay), {concurrency} in flight: leader / via a follower"),
        format!("{cmd_leader:.0} / {cmd_follower:.0} per s (follower {:.2}× the leader)", cmd_follower / cmd_leader),
        "—",
    );
    row(
        &mut rows,
        format!("status, {concurrency} in flight: leader / follower (answered locally)"),
        format!("{st_leader:.0} / {st_follower:.0} per s (follower {:.2}× the leader)", st_follower / st_leader),
        "—",
    );
    let forwarded = counter(fp, "agent_supervisor_forwarded_requests_total", "outcome=\"ok\"");
    row(&mut rows, "requests the follower forwarded", format!("{forwarded:.0}"), "—");

    drop(replicas);
    drop(sims);
    let _ = etcd.delete_prefix("").await;
    db.close();
    rows
}
