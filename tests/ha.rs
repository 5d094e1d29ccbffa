//! High availability with real processes: three `agent-supervisor serve` replicas on one PostgreSQL and etcd, real
//! `agent-watcher` processes, and the failures an operator meets: a leader killed with SIGKILL in the middle of a
//! slow restart, a leader paused past its lease, etcd gone for everyone, and a leader cut off from etcd alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use agent_supervisor::{
    db::{fence, models::NewAgentEvent, queries},
    domain::{EventAction, EventOutcome},
};
use common::{
    TestDb, TestEtcd,
    cluster::{ClusterSpec, Replica, leaders, one_leader, wait_until},
    procs::{PrivateEtcd, TcpProxy},
    supervisor::{TOKEN, create_keypair},
    watcher::{WatcherProcess, running_watcher, slow_service, term_signals},
};
use nix::sys::signal::Signal;
use serde_json::Value;

const TTL_S: u64 = 2;

/// A cluster's shared parts: its database (with a superadmin and agents `ids`, each under a real watcher running a
/// service that takes `stop_secs` to stop), and its etcd namespace.
struct Fixture {
    rt: tokio::runtime::Runtime,
    db: TestDb,
    spec: ClusterSpec,
    watchers: Vec<(WatcherProcess, tempfile::TempDir)>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(etcd_endpoint: &str, namespace: &str, ids: &[&str], stop_secs: &str) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let db = rt.block_on(TestDb::new());
        let keys = rt.block_on(create_keypair(&db.config(), true, true));
        let dir = tempfile::tempdir().unwrap();
        let etcd_cfg = agent_supervisor::etcd::EtcdConfig {
            endpoints: vec![etcd_endpoint.to_owned()],
            namespace: namespace.to_owned(),
            timeout_ms: 2_000,
            ..Default::default()
        };
        let mut watchers = Vec::new();
        for id in ids {
            let d = tempfile::tempdir().unwrap();
            let w = running_watcher(TOKEN, &slow_service(&d.path().join("service.log"), stop_secs), &[]);
            rt.block_on(async {
                db.add_agent(id).await;
                let etcd = agent_supervisor::etcd::Etcd::connect(&etcd_cfg).await.unwrap();
                etcd.put(&format!("nodes/agents/{id}/ip"), "127.0.0.1").await.unwrap();
                etcd.put(&format!("nodes/agents/{id}/watcher_port"), &w.port().to_string()).await.unwrap();
            });
            watchers.push((w, d));
        }
        let spec = ClusterSpec {
            db_url: db.url.clone(),
            namespace: namespace.to_owned(),
            watcher_token: TOKEN.to_owned(),
            lease_ttl_s: TTL_S,
            creds: (keys.access_key, keys.secret_key),
            dir: dir.path().to_owned(),
        };
        Self { rt, db, spec, watchers, _dir: dir }
    }

    /// The agent's audit trail, oldest first, commands only.
    fn commands(&self, agent: &str) -> Vec<agent_supervisor::db::models::AgentEventRow> {
        let mut events = self.rt.block_on(async {
            queries::list_events(&mut self.db.db.conn().await.unwrap(), agent, 1000).await.unwrap()
        });
        events.reverse();
        events.retain(|e| matches!(e.action, EventAction::Start | EventAction::Stop | EventAction::Restart));
        events
    }

    /// How many times the watcher of agent `n` carried out `action`, from its own log.
    fn watcher_ran(&self, n: usize, action: &str) -> usize {
        let log = self.watchers[n].0.log();
        log.lines().filter(|l| l.contains(&format!("action=\"{action}\"")) && l.contains("command done")).count()
    }

    fn service_log(&self, n: usize) -> std::path::PathBuf {
        self.watchers[n].1.path().join("service.log")
    }
}

/// The replica's `/metrics`.
fn metrics(r: &Replica) -> String {
    let auth = format!("Bearer {}", common::supervisor::METRICS_TOKEN);
    common::procs::http_get(r.port, "/metrics", &[("Authorization", &auth)])
}

fn restart(r: &Replica, agent: &str) -> (u16, Value) {
    r.call("POST", &format!("/v1/agents/{agent}/restart")).unwrap_or((0, Value::Null))
}

#[test]
fn three_replicas_elect_one_leader_and_run_commands_from_any_of_them_once_in_order() {
    let etcd = TestEtcd::new();
    let f = Fixture::new(&etcd.endpoint, &etcd.namespace, &["i-ha"], "0");
    let replicas: Vec<Replica> = ["r1", "r2", "r3"].iter().map(|id| f.spec.start(id, &etcd.endpoint)).collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    let leader = one_leader(&all, Duration::from_secs(20)).expect("one leader, the others following it");
    // The leader sees every replica registered (it re-reads the list at each renewal).
    assert!(wait_until(Duration::from_secs(10), || {
        replicas[leader].view().is_some_and(|v| v["replicas"].as_array().map(Vec::len) == Some(3))
    }));
    let view = replicas[leader].view().unwrap();
    assert!(view["epoch"].as_i64().unwrap() > 0);
    let ready = replicas[(leader + 1) % 3].call("GET", "/readyz").unwrap();
    assert_eq!((ready.0, &ready.1["ha"]["role"]), (200, &Value::from("follower")), "{}", ready.1);

    // Six restarts, two through each replica, all at once: each runs once, one after the other.
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let r = &replicas[i % 3];
                s.spawn(move || restart(r, "i-ha"))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    let runs = f.commands("i-ha");
    assert_eq!(runs.len(), 6);
    for pair in runs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(b.started_at.unwrap() >= a.finished_at.unwrap(), "commands overlapped: {a:?} {b:?}");
    }
    assert!(runs.iter().all(|e| e.outcome == EventOutcome::Succeeded && e.epoch == view["epoch"].as_i64()));
    assert_eq!(f.watcher_ran(0, "restart"), 6, "the watcher carried out each restart once");
    // Status is answered by whichever replica is asked, forwarded requests are counted by the followers.
    for r in &replicas {
        let (status, body) = r.call("GET", "/v1/agents/i-ha/watcher").unwrap();
        assert_eq!((status, &body["watcher"]["agent-status"]), (200, &Value::from("active")));
    }
    // agentctl with every replica's address, the first of them dead: it goes on to the next.
    let endpoints = format!(
        "http://127.0.0.1:{},{}",
        common::procs::free_port(),
        replicas.iter().map(|r| format!("http://127.0.0.1:{}", r.port)).collect::<Vec<_>>().join(",")
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(["--endpoint", &endpoints, "--access-key", &f.spec.creds.0, "--secret-key", &f.spec.creds.1])
        .args(["cluster"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let expected = format!(
        "leader {} at http://127.0.0.1:{} (epoch {}); asked r1 (",
        replicas[leader].id, replicas[leader].port, view["epoch"]
    );
    assert!(stdout.starts_with(&expected), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.ends_with("follower")).count(), 2, "{stdout}");
    let follower = &replicas[(leader + 1) % 3];
    let metrics = metrics(follower);
    assert!(metrics.contains("agent_supervisor_forwarded_requests_total{outcome=\"ok\"} 2"), "{metrics}");
    assert!(metrics.contains("agent_supervisor_is_leader 0"), "{metrics}");
}

#[test]
fn a_leader_killed_during_a_slow_restart_is_replaced_and_the_restart_is_interrupted_not_run_again() {
    let etcd = TestEtcd::new();
    let f = Fixture::new(&etcd.endpoint, &etcd.namespace, &["i-slow"], "3");
    let replicas: Vec<Replica> = ["r1", "r2", "r3"].iter().map(|id| f.spec.start(id, &etcd.endpoint)).collect();
    let leader = one_leader(&replicas.iter().collect::<Vec<_>>(), Duration::from_secs(20)).unwrap();
    let old_epoch = replicas[leader].view().unwrap()["epoch"].as_i64().unwrap();
    let via = (leader + 1) % 3;

    let answer = std::thread::scope(|s| {
        let r = &replicas[via];
        let pending = s.spawn(move || restart(r, "i-slow"));
        // The service got its SIGTERM: the restart is under way at the watcher. Kill the leader now.
        assert!(wait_until(Duration::from_secs(10), || std::fs::read_to_string(term_signals(&f.service_log(0)))
            .is_ok_and(|t| t.lines().count() == 1)));
        let killed_at = Instant::now();
        replicas[leader].signal(Signal::SIGKILL);
        let survivors: Vec<&Replica> =
            replicas.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, r)| r).collect();
        let new = wait_until(Duration::from_secs(4 * (TTL_S + 1)), || {
            leaders(&survivors).iter().any(|(_, epoch)| *epoch > old_epoch)
        });
        eprintln!("new leader after {:?}", killed_at.elapsed());
        assert!(new, "no new leader");
        pending.join().unwrap()
    });
    // The caller learns the leader went away; the command is recorded as interrupted by the new epoch.
    assert_eq!(answer.0, 503, "{}", answer.1);
    assert_eq!(answer.1["error_code"], "no_leader");
    let survivors: Vec<&Replica> = replicas.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, r)| r).collect();
    let now_leading = one_leader(&survivors, Duration::from_secs(10)).unwrap();
    let new_epoch = survivors[now_leading].view().unwrap()["epoch"].as_i64().unwrap();
    // Each survivor saw two leaders: the killed one and the new one.
    for r in &survivors {
        let metrics = metrics(r);
        assert!(metrics.contains("agent_supervisor_leader_changes_total 2"), "{metrics}");
    }
    let runs = f.commands("i-slow");
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].outcome, runs[0].epoch), (EventOutcome::Interrupted, Some(old_epoch)));
    assert_eq!(runs[0].detail["interrupted_by_epoch"].as_i64(), Some(new_epoch));

    // The watcher finishes the restart it was given, once; the next command works through any replica.
    assert!(wait_until(Duration::from_secs(10), || f.watcher_ran(0, "restart") == 1));
    let (status, body) = restart(survivors[(now_leading + 1) % 2], "i-slow");
    assert_eq!(status, 200, "{body}");
    assert_eq!(f.watcher_ran(0, "restart"), 2, "each restart ran exactly once at the watcher");
}

#[test]
fn a_paused_leader_cannot_act_after_a_newer_one_took_over_and_becomes_a_follower() {
    let etcd = TestEtcd::new();
    let f = Fixture::new(&etcd.endpoint, &etcd.namespace, &["i-pause"], "0");
    let replicas: Vec<Replica> = ["r1", "r2", "r3"].iter().map(|id| f.spec.start(id, &etcd.endpoint)).collect();
    let leader = one_leader(&replicas.iter().collect::<Vec<_>>(), Duration::from_secs(20)).unwrap();
    let old = &replicas[leader];
    let old_epoch = old.view().unwrap()["epoch"].as_i64().unwrap();
    let others: Vec<&Replica> = replicas.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, r)| r).collect();

    old.signal(Signal::SIGSTOP);
    let took_over = wait_until(Duration::from_secs(4 * (TTL_S + 1)), || {
        leaders(&others).iter().any(|(_, epoch)| *epoch > old_epoch)
    });
    assert!(took_over, "no new leader while the old one was paused");
    let (status, body) = restart(others[0], "i-pause");
    assert_eq!(status, 200, "{body}");
    assert!(wait_until(Duration::from_secs(5), || f.watcher_ran(0, "restart") == 1));
    let before = 1;

    old.signal(Signal::SIGCONT);
    // At once, before it has heard from etcd: it does not run the command itself.
    let (status, body) = restart(old, "i-pause");
    assert!(status == 503 || status == 200, "{status} {body}");
    if status == 503 {
        assert_eq!(body["error_code"], "no_leader");
    }
    // It follows the new leader.
    assert!(wait_until(Duration::from_secs(4 * (TTL_S + 1)), || old.role().as_deref() == Some("follower")));
    let runs = f.commands("i-pause");
    assert!(runs.iter().all(|e| e.epoch != Some(old_epoch)), "the old leader wrote under its epoch: {runs:?}");
    assert_eq!(f.watcher_ran(0, "restart"), before + usize::from(status == 200));
    assert_eq!(runs.len(), f.watcher_ran(0, "restart"));
}

#[test]
fn with_etcd_gone_commands_are_refused_status_still_answers_and_one_leader_returns_with_it() {
    let mut etcd = PrivateEtcd::start();
    let endpoint = etcd.endpoint();
    let f = Fixture::new(&endpoint, "ha-down", &["i-down"], "0");
    let replicas: Vec<Replica> = ["r1", "r2", "r3"].iter().map(|id| f.spec.start(id, &endpoint)).collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    one_leader(&all, Duration::from_secs(20)).unwrap();
    for r in &replicas {
        assert_eq!(r.call("GET", "/v1/agents/i-down/watcher").unwrap().0, 200);
    }

    etcd.stop();
    assert!(wait_until(Duration::from_secs(4 * (TTL_S + 1)), || leaders(&all).is_empty()), "a leader without etcd");
    for r in &replicas {
        let (status, body) = restart(r, "i-down");
        assert_eq!(status, 503, "{body}");
        assert!(matches!(body["error_code"].as_str(), Some("no_leader" | "etcd_unavailable")), "{body}");
        let (status, body) = r.call("GET", "/v1/agents/i-down/watcher").unwrap();
        assert_eq!((status, &body["watcher"]["agent-status"]), (200, &Value::from("active")), "{body}");
    }
    assert_eq!(f.watcher_ran(0, "restart"), 0);

    etcd.restart();
    let leader = one_leader(&all, Duration::from_secs(30)).expect("one leader once etcd is back");
    assert_eq!(restart(&replicas[leader], "i-down").0, 200);
}

#[test]
fn a_leader_cut_off_from_etcd_alone_steps_down_within_its_lease() {
    let etcd = TestEtcd::new();
    let host_port = etcd.endpoint.trim_start_matches("http://").to_owned();
    let proxy = TcpProxy::to(&host_port);
    let through_proxy = format!("http://127.0.0.1:{}", proxy.port);
    let f = Fixture::new(&etcd.endpoint, &etcd.namespace, &["i-cut"], "0");
    // The first replica (alone, so it wins) reaches etcd through the proxy; the others directly.
    let first = f.spec.start("r1", &through_proxy);
    assert!(wait_until(Duration::from_secs(20), || first.role().as_deref() == Some("leader")));
    let others = [f.spec.start("r2", &etcd.endpoint), f.spec.start("r3", &etcd.endpoint)];
    let mut all: Vec<&Replica> = vec![&first];
    all.extend(others.iter());
    assert_eq!(one_leader(&all, Duration::from_secs(20)), Some(0));

    let cut_at = Instant::now();
    proxy.cut();
    assert!(
        wait_until(Duration::from_secs(3 * TTL_S), || first.role().as_deref() != Some("leader")),
        "the cut-off leader kept leading"
    );
    eprintln!("stepped down {:?} after the cut", cut_at.elapsed());
    let (status, head, body) = common::procs::try_http_signed_with_head(
        first.port,
        "POST",
        "/v1/agents/i-cut/restart",
        Some((&f.spec.creds.0, &f.spec.creds.1)),
    )
    .unwrap();
    assert_eq!((status, body["error_code"].as_str()), (503, Some("no_leader")), "{body}");
    // Come back after one lease: an election has been held by then.
    assert!(head.to_ascii_lowercase().contains(&format!("\r\nretry-after: {TTL_S}\r\n")), "{head}");
    let rest: Vec<&Replica> = others.iter().collect();
    assert!(one_leader(&rest, Duration::from_secs(4 * (TTL_S + 1))).is_some());
    assert!(first.log().contains("stepped down"), "{}", first.log());
}

/// The fence itself, against PostgreSQL: a newer claim ends the older epoch's right to write, and marks its
/// unfinished commands interrupted.
#[actix_rt::test]
async fn a_newer_claim_fences_off_the_older_epoch() {
    let db = TestDb::new().await;
    db.add_agent("i-f").await;
    let event = |epoch| NewAgentEvent {
        agent_id: "i-f".into(),
        action: EventAction::Restart,
        requester: "AKTEST".into(),
        requested_at: chrono::Utc::now(),
        started_at: Some(chrono::Utc::now()),
        finished_at: None,
        outcome: EventOutcome::Running,
        http_status: None,
        detail: serde_json::json!({}),
        epoch: Some(epoch),
    };
    assert_eq!(fence::claim(&db.db, 5, "r1", "http://r1").await.unwrap().interrupted, 0);
    let running = fence::insert_event(&db.db, Some(5), &event(5)).await.unwrap();
    assert_eq!(fence::claim(&db.db, 7, "r2", "http://r2").await.unwrap().interrupted, 1);
    let refused = fence::insert_event(&db.db, Some(5), &event(5)).await.unwrap_err();
    assert!(matches!(refused, agent_supervisor::db::DbError::Fenced { ours: 5, stored: Some(7) }), "{refused}");
    let end = fence::EventEnd {
        id: running,
        outcome: EventOutcome::Succeeded,
        http_status: Some(200),
        detail: &serde_json::json!({}),
        finished_at: chrono::Utc::now(),
    };
    assert!(matches!(
        fence::finish_event(&db.db, Some(5), &end).await,
        Err(agent_supervisor::db::DbError::Fenced { .. })
    ));
    let events = queries::list_events(&mut db.db.conn().await.unwrap(), "i-f", 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].outcome, events[0].detail["interrupted_by_epoch"].as_i64()),
        (EventOutcome::Interrupted, Some(7))
    );
    // An older claim never wins back.
    assert!(fence::claim(&db.db, 6, "r1", "http://r1").await.is_err());
    assert!(fence::insert_event(&db.db, Some(7), &event(7)).await.is_ok());
}
