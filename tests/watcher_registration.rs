//! The watcher's etcd side against a real etcd (an isolated namespace per test): registration of its port and
//! address, and the token read from `config/watcher/token`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestEtcd, eventually, watcher::WatcherProcess};

fn args(t: &TestEtcd, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> =
        ["--backend", "process", "--no-autostart", "--etcd", &t.endpoint, "--namespace", &t.namespace]
            .iter()
            .map(|s| s.to_string())
            .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(["--", "sleep", "1000"].iter().map(|s| s.to_string()));
    a
}

#[tokio::test]
async fn registers_its_port_and_advertised_ip_under_the_agent() {
    let t = TestEtcd::new();
    let w = WatcherProcess::spawn(
        "tok",
        &args(&t, &["--token", "tok", "--agent-id", "i-watcher-1", "--advertise-ip", "127.0.0.1"]),
        &[],
    );
    let etcd = t.client().await;
    let port = w.port().to_string();
    let registered = eventually(Duration::from_secs(5), || {
        let etcd = etcd.clone();
        let port = port.clone();
        async move { etcd.get("nodes/agents/i-watcher-1/watcher_port").await.ok().flatten() == Some(port) }
    })
    .await;
    assert!(registered, "watcher_port not registered; log:\n{}", w.log());
    assert_eq!(etcd.get("nodes/agents/i-watcher-1/ip").await.unwrap().as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn without_advertise_ip_only_the_port_is_registered() {
    let t = TestEtcd::new();
    let w = WatcherProcess::spawn("tok", &args(&t, &["--token", "tok", "--agent-id", "i-watcher-2"]), &[]);
    let etcd = t.client().await;
    let port = w.port().to_string();
    assert!(
        eventually(Duration::from_secs(5), || {
            let etcd = etcd.clone();
            let port = port.clone();
            async move { etcd.get("nodes/agents/i-watcher-2/watcher_port").await.ok().flatten() == Some(port) }
        })
        .await
    );
    assert_eq!(etcd.get("nodes/agents/i-watcher-2/ip").await.unwrap(), None);
}

#[tokio::test]
async fn the_token_is_read_from_etcd_when_none_is_given() {
    let t = TestEtcd::new();
    t.client().await.put("config/watcher/token", "from-etcd").await.unwrap();
    let w = WatcherProcess::spawn("from-etcd", &args(&t, &[]), &[]);
    assert_eq!(w.get("/").status, 200);
    assert_eq!(w.request("GET", "/", Some("insecure")).status, 401);
    assert!(!w.log().contains("from-etcd"), "the token was logged");
}

#[test]
fn an_unreachable_etcd_without_a_token_is_a_start_up_error_not_a_silent_insecure() {
    let out = std::process::Command::new(common::procs::watcher_bin())
        .args(["--listen", "127.0.0.1:0", "--etcd", "http://127.0.0.1:1", "--etcd-timeout-ms", "300"])
        .args(["--backend", "process", "--", "sleep", "1000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("etcd"), "{stderr}");
}
