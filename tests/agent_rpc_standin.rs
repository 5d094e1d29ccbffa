//! The Callosum client against our agent stand-in on 127.0.0.1: results, failures, unreachable and slow agents,
//! reconnection, concurrency, and CurveZMQ with right and wrong keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use agent_supervisor::{
    agent_rpc::{AgentRpc, RpcError, StandinAgent, StandinConfig, StandinCurve, StandinHandle, keys::CurveKeyPair},
    config::AgentRpcConfig,
    error::{ErrorCode, Problem},
};
use uuid::Uuid;

const AGENT: &str = "i-standin";
const TIMEOUT_MS: u64 = 1500;

fn rpc(keypair_file: Option<&std::path::Path>) -> AgentRpc {
    AgentRpc::new(&AgentRpcConfig {
        timeout_ms: TIMEOUT_MS,
        manager_keypair: keypair_file.map(|p| p.display().to_string()),
    })
    .unwrap()
}

fn standin(kernels: Vec<(Uuid, Uuid)>) -> StandinHandle {
    let mut cfg = StandinConfig::new("127.0.0.1:0", AGENT);
    cfg.kernels = kernels;
    StandinAgent::start(cfg).unwrap()
}

fn pair() -> (Uuid, Uuid) {
    (Uuid::new_v4(), Uuid::new_v4())
}

/// A free port below Linux's ephemeral range, so that no outgoing connection or `bind(*)` of a parallel test takes it
/// while a test has it unbound (the restart test).
fn quiet_port() -> u16 {
    let mut candidate = 20_000 + (std::process::id() % 10_000) as u16;
    loop {
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            return candidate;
        }
        candidate = 20_000 + (candidate - 20_000 + 7919) % 10_000;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Asserts an unavailable error that took about the connect bound (1.5 s here), not the default 5 s or longer.
fn assert_unavailable_within_bound(result: Result<(), RpcError>, started: Instant) {
    let elapsed = started.elapsed();
    assert!(matches!(result, Err(RpcError::Unavailable(_))), "expected unavailable, got {result:?}");
    assert!(elapsed >= Duration::from_millis(TIMEOUT_MS - 100), "gave up too early: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(TIMEOUT_MS + 1500), "took too long: {elapsed:?}");
}

#[actix_rt::test]
async fn sync_reports_unknown_kernels_and_destroys_unlisted_ones() {
    let (kept, unknown, unlisted) = (pair(), pair(), pair());
    let agent = standin(vec![kept, unlisted]);
    rpc(None).sync_kernel_registry(agent.addr(), None, &[kept, unknown], AGENT).await.unwrap();

    let calls = agent.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.agent_id.as_deref(), Some(AGENT));
    assert_eq!(
        call.kernels,
        vec![(kept.0.to_string(), kept.1.to_string()), (unknown.0.to_string(), unknown.1.to_string())]
    );
    assert_eq!(call.already_terminated, vec![unknown]);
    assert_eq!(call.destroyed, vec![unlisted]);
    assert_eq!(call.failure, None);
    assert_eq!(agent.registry(), HashSet::from([kept]));
}

#[tokio::test]
async fn a_wrong_agent_id_is_a_failure_naming_the_remote_exception() {
    let agent = standin(vec![pair()]);
    let e = rpc(None).sync_kernel_registry(agent.addr(), None, &[pair()], "i-wrong").await.unwrap_err();
    match &e {
        RpcError::Failure { name, repr } => {
            assert_eq!(name, "AgentIdNotFoundError");
            assert!(repr.contains("i-wrong"), "{repr}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let problem = Problem::from(e);
    assert_eq!((problem.code, problem.status()), (ErrorCode::AgentRpcFailed, 502));
    assert!(problem.detail.contains("AgentIdNotFoundError"));
    assert_eq!(problem.to_json()["remote_exception"], "AgentIdNotFoundError");
    assert_eq!(agent.registry().len(), 1, "a failed call changes nothing");
}

#[tokio::test]
async fn nothing_listening_is_unavailable_within_the_connect_bound() {
    let addr = format!("tcp://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let result = rpc(None).sync_kernel_registry(&addr, None, &[pair()], AGENT).await;
    assert_unavailable_within_bound(result, started);
    let problem = Problem::from(RpcError::Unavailable(String::new()));
    assert_eq!((problem.code, problem.status()), (ErrorCode::AgentRpcUnavailable, 502));
}

#[tokio::test]
async fn a_port_that_accepts_tcp_but_never_speaks_zmtp_is_unavailable_within_the_connect_bound() {
    // The kernel completes the TCP handshake from the backlog; nobody ever reads or writes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let result = rpc(None).sync_kernel_registry(&addr, None, &[pair()], AGENT).await;
    assert_unavailable_within_bound(result, started);
}

#[tokio::test]
async fn a_slow_agent_times_out_and_the_next_call_on_the_same_client_succeeds() {
    let agent = standin(vec![]);
    agent.set_delay(Duration::from_secs(4));
    let client = rpc(None);
    let started = Instant::now();
    let e = client.sync_kernel_registry(agent.addr(), None, &[pair()], AGENT).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(e, RpcError::Timeout(d) if d == Duration::from_millis(TIMEOUT_MS)), "{e:?}");
    assert!(
        elapsed >= Duration::from_millis(TIMEOUT_MS) && elapsed < Duration::from_millis(TIMEOUT_MS + 1000),
        "{elapsed:?}"
    );
    assert_eq!(Problem::from(e).status(), 504);

    agent.set_delay(Duration::ZERO);
    let started = Instant::now();
    client.sync_kernel_registry(agent.addr(), None, &[pair()], AGENT).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    assert_eq!(agent.calls().len(), 2);
}

#[tokio::test]
async fn concurrent_calls_on_one_connection_each_get_their_own_reply() {
    let agent = standin(vec![]);
    agent.set_delay(Duration::from_millis(200));
    let client = rpc(None);
    let calls = (0..40).map(|i| {
        let client = client.clone();
        let addr = agent.addr().to_owned();
        async move {
            let agent_id = if i % 3 == 0 { format!("i-wrong-{i}") } else { AGENT.to_owned() };
            (i, client.sync_kernel_registry(&addr, None, &[pair()], &agent_id).await)
        }
    });
    for (i, result) in futures_util::future::join_all(calls).await {
        match result {
            Err(RpcError::Failure { repr, .. }) if i % 3 == 0 => {
                assert!(repr.contains(&format!("i-wrong-{i}")), "{repr}")
            }
            Ok(()) if i % 3 != 0 => {}
            other => panic!("call {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(agent.calls().len(), 40);
}

#[tokio::test]
async fn an_agent_that_goes_away_is_noticed_and_a_restarted_one_is_reached_again() {
    let port = quiet_port();
    let listen = format!("127.0.0.1:{port}");
    let client = rpc(None);
    let agent = StandinAgent::start(StandinConfig::new(&listen, AGENT)).unwrap();
    let addr = agent.addr().to_owned();
    client.sync_kernel_registry(&addr, None, &[pair()], AGENT).await.unwrap();
    drop(agent);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let result = client.sync_kernel_registry(&addr, None, &[pair()], AGENT).await;
    assert_unavailable_within_bound(result, started);

    // The same client reaches the restarted agent; a loaded machine may need more than one connect bound for that.
    let agent = StandinAgent::start(StandinConfig::new(&listen, AGENT)).unwrap();
    let mut last = None;
    for _ in 0..4 {
        match client.sync_kernel_registry(&addr, None, &[pair()], AGENT).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    assert!(last.is_none(), "the restarted agent was not reached: {last:?}");
    assert_eq!(agent.calls().len(), 1);
}

#[tokio::test]
async fn bad_addresses_are_rejected_before_any_network_traffic() {
    for addr in ["127.0.0.1:6001", "tcp://127.0.0.1", "http://127.0.0.1:6001"] {
        let e = rpc(None).sync_kernel_registry(addr, None, &[pair()], AGENT).await.unwrap_err();
        assert!(matches!(&e, RpcError::Config(m) if m.contains("tcp://HOST:PORT")), "{addr}: {e:?}");
    }
}

struct Curve {
    _dir: tempfile::TempDir,
    manager_cert: std::path::PathBuf,
    manager: CurveKeyPair,
    agent: StandinHandle,
}

/// A CURVE stand-in that admits only the manager's key (via ZAP), and the manager's certificate file.
fn curve_setup() -> Curve {
    let dir = tempfile::tempdir().unwrap();
    let manager = CurveKeyPair::generate().unwrap();
    let manager_cert = dir.path().join("manager.key_secret");
    std::fs::write(&manager_cert, manager.to_secret_certificate()).unwrap();
    let mut cfg = StandinConfig::new("127.0.0.1:0", AGENT);
    cfg.curve = Some(StandinCurve {
        keypair: CurveKeyPair::generate().unwrap(),
        allowed_clients: Some(vec![manager.public.clone()]),
    });
    Curve { _dir: dir, manager_cert, manager, agent: StandinAgent::start(cfg).unwrap() }
}

#[tokio::test]
async fn curve_with_the_right_keys_succeeds() {
    let c = curve_setup();
    let client = rpc(Some(&c.manager_cert));
    client.sync_kernel_registry(c.agent.addr(), c.agent.public_key(), &[pair()], AGENT).await.unwrap();
    assert_eq!(c.agent.calls().len(), 1);
    assert!(!format!("{:?}", c.manager).contains(c.manager.secret.expose()));
}

#[tokio::test]
async fn curve_with_a_wrong_server_key_is_unavailable_within_the_connect_bound() {
    let c = curve_setup();
    let wrong = CurveKeyPair::generate().unwrap().public;
    let started = Instant::now();
    let result = rpc(Some(&c.manager_cert)).sync_kernel_registry(c.agent.addr(), Some(&wrong), &[pair()], AGENT).await;
    assert_unavailable_within_bound(result, started);
    assert!(c.agent.calls().is_empty());
}

#[tokio::test]
async fn curve_with_a_client_key_the_agent_does_not_admit_is_unavailable_within_the_connect_bound() {
    let c = curve_setup();
    let dir = tempfile::tempdir().unwrap();
    let intruder = dir.path().join("intruder.key_secret");
    std::fs::write(&intruder, CurveKeyPair::generate().unwrap().to_secret_certificate()).unwrap();
    let started = Instant::now();
    let result =
        rpc(Some(&intruder)).sync_kernel_registry(c.agent.addr(), c.agent.public_key(), &[pair()], AGENT).await;
    assert_unavailable_within_bound(result, started);
    assert!(c.agent.calls().is_empty());
}

#[tokio::test]
async fn a_client_without_curve_cannot_reach_a_curve_agent() {
    let c = curve_setup();
    let started = Instant::now();
    let result = rpc(None).sync_kernel_registry(c.agent.addr(), None, &[pair()], AGENT).await;
    assert_unavailable_within_bound(result, started);
}
