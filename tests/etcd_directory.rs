//! The etcd layer against a real etcd: key layout, namespacing, defaults, bad values, the watched cache, and
//! behaviour while etcd is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use agent_supervisor::{
    config::{EtcdConfig, Secret},
    domain::AgentId,
    error::Problem,
    etcd::{Etcd, EtcdError, WatcherAddress, WatcherDirectory},
};
use common::{TestEtcd, eventually, procs::PrivateEtcd};

fn id(s: &str) -> AgentId {
    AgentId::parse(s).unwrap()
}

async fn directory(t: &TestEtcd) -> WatcherDirectory {
    let dir = WatcherDirectory::start(t.client().await, 6099, None);
    assert!(dir.wait_synced(Duration::from_secs(5)).await, "directory did not sync");
    dir
}

#[tokio::test]
async fn resolves_addresses_under_the_namespace_with_the_default_port() {
    let t = TestEtcd::new();
    t.register("i-a", "127.0.0.1", Some(16009)).await;
    t.register("i-b", "10.0.0.7", None).await;
    let dir = directory(&t).await;

    assert_eq!(
        dir.watcher_address(&id("i-a")).await.unwrap(),
        WatcherAddress { host: "127.0.0.1".into(), port: 16009 }
    );
    let b = dir.watcher_address(&id("i-b")).await.unwrap();
    assert_eq!(b.port, 6099, "Backend.AI's manager falls back to 6099");
    assert_eq!(b.base_url(), "http://10.0.0.7:6099");

    // The physical key is /sorna/{namespace}/nodes/agents/{id}/ip.
    let raw = Etcd::connect(&EtcdConfig { namespace: "x".into(), ..t.config() }).await.unwrap();
    let physical = raw.get(&format!("../{}/nodes/agents/i-a/ip", t.namespace)).await.unwrap();
    assert_eq!(physical, None, "keys are not reachable by path tricks");
    let same_ns = t.client().await;
    assert_eq!(same_ns.full_key("nodes/agents/i-a/ip"), format!("/sorna/{}/nodes/agents/i-a/ip", t.namespace));

    // Another namespace does not see these agents.
    let other = TestEtcd::new();
    other.register("i-a", "127.0.0.2", Some(1)).await;
    let other_dir = directory(&other).await;
    assert_eq!(other_dir.watcher_address(&id("i-a")).await.unwrap().host, "127.0.0.2");
    assert_eq!(dir.watcher_address(&id("i-a")).await.unwrap().host, "127.0.0.1");
}

#[tokio::test]
async fn bad_or_missing_values_are_clear_errors_naming_agent_and_key() {
    let t = TestEtcd::new();
    t.register("i-badport", "127.0.0.1", None).await;
    let etcd = t.client().await;
    etcd.put("nodes/agents/i-badport/watcher_port", "http").await.unwrap();
    etcd.put("nodes/agents/i-noip/watcher_port", "6009").await.unwrap();
    let dir = directory(&t).await;

    let err = dir.watcher_address(&id("i-badport")).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("i-badport")
            && msg.contains(&format!("/sorna/{}/nodes/agents/i-badport/watcher_port", t.namespace))
            && msg.contains("\"http\""),
        "{msg}"
    );

    let err = dir.watcher_address(&id("i-noip")).await.unwrap_err();
    assert_eq!(
        err,
        EtcdError::MissingKey { agent: "i-noip".into(), key: format!("/sorna/{}/nodes/agents/i-noip/ip", t.namespace) }
    );
    let problem = Problem::from(err);
    assert_eq!((problem.code.as_str(), problem.status()), ("watcher_not_registered", 502));

    let unknown = dir.watcher_address(&id("i-never-registered")).await.unwrap_err();
    assert!(matches!(unknown, EtcdError::MissingKey { .. }));
}

#[tokio::test]
async fn cache_follows_key_changes_without_restart_and_without_round_trips() {
    let t = TestEtcd::new();
    t.register("i-move", "127.0.0.1", Some(7001)).await;
    let dir = directory(&t).await;
    assert_eq!(dir.watcher_address(&id("i-move")).await.unwrap().port, 7001);
    let before = dir.stats();

    let etcd = t.client().await;
    etcd.put("nodes/agents/i-move/watcher_port", "7002").await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            dir.watcher_address(&id("i-move")).await.map(|a| a.port) == Ok(7002)
        })
        .await,
        "the new port was not picked up"
    );
    etcd.put("nodes/agents/i-move/ip", "127.0.0.9").await.unwrap();
    etcd.put("config/watcher/token", "tok-from-etcd").await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            dir.watcher_address(&id("i-move")).await.map(|a| a.host).as_deref() == Ok("127.0.0.9")
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            dir.watcher_token().await.map(|s| s.expose() == "tok-from-etcd").unwrap_or(false)
        })
        .await
    );

    let after = dir.stats();
    assert_eq!(after.misses, before.misses, "every lookup was served from the watched cache");
    assert!(after.hits > before.hits);

    etcd.delete("nodes/agents/i-move/ip").await.unwrap();
    etcd.delete("nodes/agents/i-move/watcher_port").await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            matches!(dir.watcher_address(&id("i-move")).await, Err(EtcdError::MissingKey { .. }))
        })
        .await
    );
}

#[tokio::test]
async fn watcher_token_prefers_etcd_then_config_then_insecure() {
    let t = TestEtcd::new();
    let plain = directory(&t).await;
    assert_eq!(plain.watcher_token().await.unwrap().expose(), "insecure");
    let configured = WatcherDirectory::start(t.client().await, 6099, Some(Secret::new("from-config")));
    assert!(configured.wait_synced(Duration::from_secs(5)).await);
    assert_eq!(configured.watcher_token().await.unwrap().expose(), "from-config");
    t.client().await.put("config/watcher/token", "from-etcd").await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            configured.watcher_token().await.map(|s| s.expose() == "from-etcd").unwrap_or(false)
        })
        .await
    );
}

#[tokio::test]
async fn unreachable_etcd_is_reported_within_the_timeout() {
    let cfg = EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{}", common::procs::free_port())],
        timeout_ms: 500,
        ..Default::default()
    };
    let started = Instant::now();
    let result = match Etcd::connect(&cfg).await {
        Ok(etcd) => etcd.get("nodes/agents/x/ip").await.map(|_| ()),
        Err(e) => Err(e),
    };
    let err = result.expect_err("nothing listens there");
    assert!(matches!(err, EtcdError::Unavailable(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    let p = Problem::from(err);
    assert_eq!((p.code.as_str(), p.status()), ("etcd_unavailable", 503));
}

#[tokio::test]
async fn directory_keeps_known_addresses_while_etcd_is_stopped_and_recovers_after_restart() {
    let mut server = PrivateEtcd::start();
    let cfg = EtcdConfig {
        endpoints: vec![server.endpoint()],
        namespace: "local".into(),
        timeout_ms: 500,
        ..Default::default()
    };
    let etcd = Etcd::connect(&cfg).await.unwrap();
    etcd.put("nodes/agents/i-x/ip", "127.0.0.1").await.unwrap();
    let dir = WatcherDirectory::start(etcd.clone(), 6099, None);
    assert!(dir.wait_synced(Duration::from_secs(5)).await);
    assert_eq!(dir.watcher_address(&id("i-x")).await.unwrap().port, 6099);

    server.stop();
    assert!(
        eventually(Duration::from_secs(5), || async { !dir.is_synced() }).await,
        "the broken watch was not noticed"
    );
    // An agent the mirror had keeps its last address; one it never had cannot be resolved.
    assert_eq!(dir.watcher_address(&id("i-x")).await.unwrap().port, 6099);
    let started = Instant::now();
    let err = dir.watcher_address(&id("i-never-seen")).await.unwrap_err();
    assert!(matches!(err, EtcdError::Unavailable(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());

    server.restart();
    assert!(dir.wait_synced(Duration::from_secs(15)).await, "directory did not resync after etcd came back");
    etcd.put("nodes/agents/i-x/watcher_port", "7777").await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            dir.watcher_address(&id("i-x")).await.map(|a| a.port) == Ok(7777)
        })
        .await
    );
}
