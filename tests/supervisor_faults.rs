//! The actors without HTTP, a watcher that speaks exactly like Backend.AI's, and dependency failures
//! (etcd and PostgreSQL going away and coming back).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use agent_supervisor::{
    actors::{GetAgent, GetWatcherStatus, WatcherAgentRestart, WatcherAgentStart, WatcherAgentStop},
    domain::AgentId,
    error::ErrorCode,
};
use common::{
    procs::PrivateEtcd,
    supervisor::{TOKEN, TestApp},
    watcher::{BackendAiWatcher, WatcherProcess, running_watcher, slow_service, terminated},
};
use serde_json::json;

fn id(s: &str) -> AgentId {
    AgentId::parse(s).unwrap()
}

async fn watched(app: &TestApp, agent: &str, cmd: &[String], extra: &[&str]) -> WatcherProcess {
    let w = running_watcher(TOKEN, cmd, extra);
    app.add_agent(agent).await;
    app.register_watcher(agent, w.port()).await;
    w
}

#[actix_rt::test]
async fn actor_runs_commands_one_at_a_time_in_arrival_order() {
    let app = TestApp::spawn_with(|c| c.watcher.queue_capacity = 8).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("service.log");
    let _w = watched(&app, "i-order", &slow_service(&log, "0.2"), &["--no-autostart"]).await;
    let actor = app.running.supervisor.registry().send(GetAgent { agent_id: id("i-order") }).await.unwrap().unwrap();

    // start, stop, start, stop, start: valid only if executed in this exact order, one at a time. `send` puts each
    // message in the actor's mailbox at once, so this is their arrival order.
    let mut pending = Vec::new();
    for i in 0..5 {
        let requester = format!("t{i}");
        let sent: std::pin::Pin<Box<dyn Future<Output = _>>> = if i % 2 == 0 {
            Box::pin(actor.send(WatcherAgentStart { requester }))
        } else {
            Box::pin(actor.send(WatcherAgentStop { force: false, requester }))
        };
        pending.push(sent);
    }
    for r in futures_util::future::join_all(pending).await {
        let r = r.unwrap();
        assert!(r.is_ok(), "{:?}", r.err());
    }
    let lines: Vec<String> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| l.split(' ').next().unwrap().to_owned()).collect();
    assert_eq!(lines, ["start", "stop", "start", "stop", "start"], "the watcher saw the commands in order");
}

#[actix_rt::test]
async fn status_is_answered_during_a_slow_command_and_agents_run_in_parallel() {
    let app = TestApp::spawn_with(|c| c.watcher.command_timeout_ms = 10_000).await;
    let d = tempfile::tempdir().unwrap();
    let a_log = d.path().join("a.log");
    let _a = watched(&app, "i-pa", &slow_service(&a_log, "1.5"), &[]).await;
    let _b = watched(&app, "i-pb", &slow_service(&d.path().join("b.log"), "1.5"), &[]).await;
    let reg = app.running.supervisor.registry().clone();
    let a = reg.send(GetAgent { agent_id: id("i-pa") }).await.unwrap().unwrap();
    let b = reg.send(GetAgent { agent_id: id("i-pb") }).await.unwrap().unwrap();

    let started = Instant::now();
    let ra = actix_rt::spawn({
        let a = a.clone();
        async move { a.send(WatcherAgentRestart { requester: "t".into() }).await.unwrap() }
    });
    let rb = actix_rt::spawn(async move { b.send(WatcherAgentRestart { requester: "t".into() }).await.unwrap() });
    assert!(terminated(&a_log, 1, Duration::from_secs(5)).await, "the restart of i-pa never reached its service");

    // The restart of i-pa is in flight; its status is answered anyway, within the status budget.
    let status_started = Instant::now();
    let status = GetWatcherStatus::ask(&a, &id("i-pa")).await.unwrap();
    assert!(status_started.elapsed() < Duration::from_secs(1), "status waited {:?}", status_started.elapsed());
    assert!(status.data()["agent-status"].is_string());

    assert!(ra.await.unwrap().is_ok());
    assert!(rb.await.unwrap().is_ok());
    // Each restart takes at least 1.5 s; run one after the other they would need 3 s.
    assert!(
        started.elapsed() < Duration::from_millis(2_900),
        "restarts of two agents did not overlap: {:?}",
        started.elapsed()
    );
}

#[actix_rt::test]
async fn full_queue_is_agent_busy_and_force_and_prechecks_apply() {
    let app = TestApp::spawn_with(|c| {
        c.watcher.queue_capacity = 2;
        c.watcher.command_timeout_ms = 10_000;
    })
    .await;
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("s.log");
    let _w = watched(&app, "i-busy", &slow_service(&log, "1"), &[]).await;
    let actor = app.running.supervisor.registry().send(GetAgent { agent_id: id("i-busy") }).await.unwrap().unwrap();

    // One restart in flight (its service got SIGTERM), then two more wait in the queue (capacity 2): it is full.
    // `send` puts a message in the mailbox at once, so these arrive in this order.
    let restart = || actor.send(WatcherAgentRestart { requester: "t".into() });
    let first = actix_rt::spawn(restart());
    assert!(terminated(&log, 1, Duration::from_secs(5)).await, "the first restart never reached the service");
    let waiting = [restart(), restart()];
    let refused = restart().await.unwrap().unwrap_err();
    assert_eq!(refused.code, ErrorCode::AgentBusy);
    assert_eq!(refused.status(), 429);
    assert!(first.await.unwrap().unwrap().is_ok());
    for r in futures_util::future::join_all(waiting).await {
        assert!(r.unwrap().is_ok());
    }

    app.add_running_kernels("i-busy", 1).await;
    let e = actor.send(WatcherAgentStop { force: false, requester: "t".into() }).await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::AgentHasRunningKernels);
    assert!(actor.send(WatcherAgentStop { force: true, requester: "t".into() }).await.unwrap().is_ok());
    let e = actor.send(WatcherAgentStop { force: true, requester: "t".into() }).await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::AgentAlreadyStopped);
    assert!(actor.send(WatcherAgentStart { requester: "t".into() }).await.unwrap().is_ok());
    let e = actor.send(WatcherAgentStart { requester: "t".into() }).await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::AgentAlreadyRunning);
}

#[actix_rt::test]
async fn works_with_a_backend_ai_style_watcher() {
    let app = TestApp::spawn().await;
    let bai = BackendAiWatcher::start(TOKEN, "active");
    let port = bai.port;
    app.add_agent("i-bai").await;
    app.register_watcher("i-bai", port).await;
    let (status, body) = app.get("/resource/watcher?agent_id=i-bai").await;
    assert_eq!((status, body), (200, json!({"agent-status": "active", "watcher-status": "active"})));
    // Verbatim: the bytes the watcher sent.
    let mut resp =
        app.signed("GET", "/resource/watcher?agent_id=i-bai", "application/json", &app.admin).send().await.unwrap();
    assert_eq!(resp.headers().get("content-type").unwrap(), "application/json");
    assert_eq!(resp.body().await.unwrap(), r#"{"agent-status": "active", "watcher-status": "active"}"#.as_bytes());
    // Backend.AI's watcher would answer 200 to a start of a running agent; our pre-check answers 409.
    let (status, body) = app.post("/resource/watcher/agent/start", Some(json!({"agent_id": "i-bai"}))).await;
    assert_eq!((status, body["error_code"].as_str()), (409, Some("agent_already_running")));
    let (status, body) = app.post("/resource/watcher/agent/restart", Some(json!({"agent_id": "i-bai"}))).await;
    assert_eq!((status, body), (200, json!({"result": "ok"})));

    let other = BackendAiWatcher::start("someone-else", "inactive");
    let port = other.port;
    app.add_agent("i-bai-tok").await;
    app.register_watcher("i-bai-tok", port).await;
    let (status, body) = app.get("/resource/watcher?agent_id=i-bai-tok").await;
    assert_eq!(status, 403, "Backend.AI's 403 is passed through");
    assert_eq!(body["error_code"], "watcher_auth_failed");
    assert!(body["detail"].as_str().unwrap().contains("403: Forbidden"));
}

#[actix_rt::test]
async fn etcd_stopped_is_503_and_the_daemon_recovers_when_it_returns() {
    let mut etcd = PrivateEtcd::start();
    let app = TestApp::spawn_with_etcd(&etcd.endpoint(), |_| {}).await;
    let d = tempfile::tempdir().unwrap();
    let _w = watched(&app, "i-etcd", &slow_service(&d.path().join("s.log"), "0"), &[]).await;
    assert_eq!(app.get("/resource/watcher?agent_id=i-etcd").await.0, 200);

    app.add_agent("i-unmirrored").await;
    etcd.stop();
    assert!(common::eventually(Duration::from_secs(5), || async { !app.running.directory.is_synced() }).await);
    // A known agent keeps its last address while etcd is away; one etcd never gave an address cannot be reached.
    let (status, body) = app.get("/resource/watcher?agent_id=i-etcd").await;
    assert_eq!((status, body["agent-status"].as_str()), (200, Some("active")), "{body}");
    let started = Instant::now();
    let (status, body) = app.get("/resource/watcher?agent_id=i-unmirrored").await;
    assert_eq!((status, body["error_code"].as_str()), (503, Some("etcd_unavailable")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(app.get("/healthz").await.0, 200, "the daemon keeps running");

    etcd.restart();
    assert!(
        common::eventually(Duration::from_secs(15), || async {
            app.get("/resource/watcher?agent_id=i-etcd").await.0 == 200
        })
        .await,
        "did not recover"
    );
}

#[actix_rt::test]
async fn database_cut_is_503_for_what_needs_it_and_recovers() {
    let (app, proxy) = TestApp::spawn_behind_db_proxy(|_| {}).await;
    app.add_agent("i-db").await;
    app.add_agent("i-db2").await;
    let d = tempfile::tempdir().unwrap();
    let w = running_watcher(TOKEN, &slow_service(&d.path().join("s.log"), "0"), &[]);
    app.register_watcher("i-db", w.port()).await;
    app.register_watcher("i-db2", w.port()).await;
    assert_eq!(app.get("/resource/watcher?agent_id=i-db").await.0, 200);

    proxy.cut();
    // Status of a known agent needs no database; commands (audited) and unknown agents do.
    assert_eq!(app.get("/resource/watcher?agent_id=i-db").await.0, 200);
    let started = Instant::now();
    let (status, body) = app.post("/v1/agents/i-db/restart", None).await;
    assert_eq!((status, body["error_code"].as_str()), (503, Some("database_unavailable")), "{body}");
    let (status, body) = app.get("/v1/agents").await;
    assert_eq!((status, body["error_code"].as_str()), (503, Some("database_unavailable")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));

    proxy.restore();
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            app.post("/v1/agents/i-db/restart", None).await.0 == 200
        })
        .await,
        "did not recover"
    );
    assert_eq!(app.get("/v1/agents").await.0, 200);
}

/// A watcher whose `GET /` takes `delay` and numbers its answers (`"call": n`), so a test can tell which requests
/// shared a call. Commands answer at once.
async fn counting_watcher(
    delay: Duration,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>, actix_web::dev::ServerHandle) {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        let counter = counter.clone();
        App::new().default_service(web::to(move |req: HttpRequest| {
            let counter = counter.clone();
            async move {
                if req.path() != "/" {
                    return HttpResponse::Ok().json(json!({"result": "ok"}));
                }
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                actix_rt::time::sleep(delay).await;
                HttpResponse::Ok().json(json!({"agent-status": "active", "watcher-status": "active", "call": n}))
            }
        }))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (port, calls, handle)
}

#[actix_rt::test]
async fn concurrent_status_requests_share_one_watcher_call_but_never_across_a_command() {
    use std::sync::atomic::Ordering;
    let app = TestApp::spawn().await;
    let (port, calls, _h) = counting_watcher(Duration::from_millis(400)).await;
    app.add_agent("i-flight").await;
    app.register_watcher("i-flight", port).await;
    let actor = app.running.supervisor.registry().send(GetAgent { agent_id: id("i-flight") }).await.unwrap().unwrap();

    // Ten requests while one call is in flight: one watcher call answers them all.
    let mut pending = Vec::new();
    for _ in 0..10 {
        let a = actor.clone();
        pending.push(actix_rt::spawn(async move { GetWatcherStatus::ask(&a, &id("i-flight")).await.unwrap() }));
    }
    for p in pending {
        assert_eq!(p.await.unwrap().data()["call"], 1);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A request that arrives after the call ended gets a call of its own.
    assert_eq!(GetWatcherStatus::ask(&actor, &id("i-flight")).await.unwrap().data()["call"], 2);

    // A command between two status requests: the second does not join the call that began before the command.
    let first = {
        let a = actor.clone();
        actix_rt::spawn(async move { GetWatcherStatus::ask(&a, &id("i-flight")).await.unwrap() })
    };
    // The watcher has the third call (the first status request's) before the command is sent.
    assert!(common::eventually(Duration::from_secs(5), || async { calls.load(Ordering::SeqCst) == 3 }).await);
    actor.send(WatcherAgentRestart { requester: "t".into() }).await.unwrap().unwrap();
    let second = GetWatcherStatus::ask(&actor, &id("i-flight")).await.unwrap();
    assert_eq!(first.await.unwrap().data()["call"], 3);
    assert_eq!(second.data()["call"], 4, "the status after the restart came from a call made after it");
}

#[actix_rt::test]
async fn agent_actors_live_on_the_http_workers_and_are_started_again_when_those_stop() {
    use agent_supervisor::actors::ListAgentActors;
    let app = TestApp::spawn().await;
    let (port, calls, _h) = counting_watcher(Duration::ZERO).await;
    app.add_agent("i-home").await;
    app.register_watcher("i-home", port).await;
    let (status, body) = app.get("/v1/agents/i-home/watcher").await;
    assert_eq!((status, body["watcher"]["call"].as_u64()), (200, Some(1)), "{body}");
    let registry = app.running.supervisor.registry().clone();
    let actor = registry.send(GetAgent { agent_id: id("i-home") }).await.unwrap().unwrap();
    assert_eq!(GetWatcherStatus::ask(&actor, &id("i-home")).await.unwrap().data()["call"], 2);

    // The actor lives on an HTTP worker thread: stopping the HTTP server stops it too.
    app.running.server.stop(true).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while actor.connected() && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!actor.connected(), "the agent's actor outlived the HTTP workers");
    let gone = GetWatcherStatus::ask(&actor, &id("i-home")).await.unwrap_err();
    assert_eq!(gone.code, ErrorCode::ShuttingDown, "{gone:?}");

    // Unasked, the registry starts it again (on its own thread, no worker being left), and it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let revived = loop {
        let entries = registry.send(ListAgentActors).await.unwrap();
        if let Some((_, a)) = entries.into_iter().find(|(a, addr)| a.as_str() == "i-home" && addr.connected()) {
            break a;
        }
        assert!(Instant::now() < deadline, "the stopped actor was not started again");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(GetWatcherStatus::ask(&revived, &id("i-home")).await.unwrap().data()["call"], 3);
    let again = registry.send(GetAgent { agent_id: id("i-home") }).await.unwrap().unwrap();
    assert!(again.connected());
    assert_eq!(again.send(WatcherAgentRestart { requester: "t".into() }).await.unwrap().unwrap().data["result"], "ok");
    assert_eq!(GetWatcherStatus::ask(&again, &id("i-home")).await.unwrap().data()["call"], 4);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
}

#[actix_rt::test]
async fn a_stuck_agent_thread_fails_readiness_and_the_watchdog_check_until_it_runs_again() {
    let app = TestApp::spawn_with(|c| c.api.workers = 2).await;
    let supervisor = app.running.supervisor.clone();
    assert_eq!(supervisor.homes().len(), 2, "one agent thread per HTTP worker");
    let ready = supervisor.readiness().await;
    assert!(ready.ready && ready.actors.is_none(), "{ready:?}");
    assert!(supervisor.actors_alive().await);

    // Block one worker thread (as a handler that blocked would) for three seconds.
    let stuck = supervisor.homes().handles()[1].clone();
    let (blocking, blocked) = tokio::sync::oneshot::channel();
    assert!(stuck.spawn(async move {
        let _ = blocking.send(());
        std::thread::sleep(Duration::from_secs(3))
    }));
    blocked.await.unwrap();
    let ready = supervisor.readiness().await;
    assert!(!ready.ready, "{ready:?}");
    assert_eq!(ready.actors.as_deref(), Some("agent thread 1 did not run a task within 1000 ms"));
    assert!(ready.database.is_none() && ready.etcd.is_none(), "{ready:?}");
    assert!(!supervisor.actors_alive().await, "the watchdog check must fail while an agent thread is stuck");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !supervisor.actors_alive().await {
        assert!(Instant::now() < deadline, "the agent thread did not recover");
    }
    assert!(supervisor.readiness().await.ready);
}
