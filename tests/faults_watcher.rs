//! Watchers that misbehave, as a user of the daemon sees them: killed mid-command, answering garbage, answering an
//! endless body, dribbling headers; and `GET /v1/agents?refresh=true` over a mix of healthy and broken watchers.
//! (A watcher that accepts and never answers is `supervisor_watcher::s2_2_…`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    supervisor::{TOKEN, TestApp},
    watcher::{running_watcher, slow_service, terminated},
};
use serde_json::Value;

/// A fake watcher on 127.0.0.1: `serve` gets every accepted connection (after the request head was read) on a
/// thread of its own.
fn fake_watcher(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let serve = serve.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16_384 {
                    match s.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => return,
                    }
                }
                serve(s);
            });
        }
    });
    port
}

fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn events(app: &TestApp, agent: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/v1/agents/{agent}/events")).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

#[actix_rt::test]
async fn watcher_killed_mid_command_is_502_audited_failed_and_the_next_command_works() {
    let app = TestApp::spawn_with(|c| c.watcher.command_timeout_ms = 8_000).await;
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("s.log");
    let cmd = slow_service(&log, "2");
    let mut w = running_watcher(TOKEN, &cmd, &[]);
    app.add_agent("i-k9").await;
    app.register_watcher("i-k9", w.port()).await;

    // The restart takes about 2 s (the service's SIGTERM handling); the watcher dies once it has reached the service.
    let started = Instant::now();
    let (status, body) = {
        let restart = app.post("/v1/agents/i-k9/restart", None);
        let kill = async {
            assert!(terminated(&log, 1, Duration::from_secs(5)).await, "the restart never reached the service");
            w.kill();
        };
        futures_util::join!(restart, kill).0
    };
    let took = started.elapsed();
    assert_eq!(status, 502, "{body}");
    assert!(
        matches!(body["error_code"].as_str(), Some("watcher_unreachable" | "watcher_bad_response")),
        "a clear watcher error code, got {body}"
    );
    assert_eq!(body["agent_id"], "i-k9");
    assert!(
        took < Duration::from_secs(3),
        "the broken connection was noticed at once, not after the command timeout: {took:?}"
    );
    let ev = events(&app, "i-k9").await;
    assert_eq!(
        (ev[0]["action"].as_str(), ev[0]["outcome"].as_str(), ev[0]["http_status"].as_i64()),
        (Some("restart"), Some("failed"), Some(502)),
        "{ev:?}"
    );
    assert!(ev[0]["finished_at"].is_string());
    assert_eq!(Some(body["event_id"].as_i64().unwrap()), ev[0]["id"].as_i64(), "the error names the audit row");

    // The node's watcher comes back (on another port, as after a reboot): the next command works.
    let w2 = running_watcher(TOKEN, &cmd, &[]);
    app.register_watcher("i-k9", w2.port()).await;
    let (status, body) = app.post("/v1/agents/i-k9/restart", None).await;
    assert_eq!(status, 200, "{body}");
    let ev = events(&app, "i-k9").await;
    assert_eq!((ev[0]["outcome"].as_str(), ev[1]["outcome"].as_str()), (Some("succeeded"), Some("failed")));
}

#[actix_rt::test]
async fn watcher_answering_garbage_is_502_watcher_bad_response() {
    let app = TestApp::spawn().await;
    let cases: [(&str, &'static str); 3] = [
        ("i-html", "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 15\r\n\r\n<html>hi</html>"),
        ("i-badjson", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"agent-s"),
        ("i-notjson", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n[1,2,3]"),
    ];
    for (agent, answer) in cases {
        let port = fake_watcher(move |mut s| {
            let _ = s.write_all(answer.as_bytes());
        });
        app.add_agent(agent).await;
        app.register_watcher(agent, port).await;
        let (status, body) = app.get(&format!("/resource/watcher?agent_id={agent}")).await;
        assert_eq!((status, body["error_code"].as_str()), (502, Some("watcher_bad_response")), "{agent}: {body}");
        assert_eq!(body["agent_id"], agent);
    }
    // Garbage that is not even HTTP.
    let port = fake_watcher(|mut s| {
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n");
    });
    app.add_agent("i-ssh").await;
    app.register_watcher("i-ssh", port).await;
    let (status, body) = app.get("/resource/watcher?agent_id=i-ssh").await;
    assert_eq!(status, 502, "{body}");
    assert!(matches!(body["error_code"].as_str(), Some("watcher_bad_response" | "watcher_unreachable")), "{body}");
}

#[actix_rt::test]
async fn watcher_answering_an_endless_body_is_502_after_at_most_64_kib() {
    let app = TestApp::spawn().await;
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let port = fake_watcher(move |mut s| {
        // A 1 GiB JSON-looking answer, written until the reader goes away.
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n");
        let chunk = vec![b' '; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match s.write(&chunk) {
                Ok(n) if n > 0 => counter.fetch_add(n as u64, Ordering::Relaxed),
                _ => return,
            };
        }
    });
    app.add_agent("i-huge").await;
    app.register_watcher("i-huge", port).await;
    let rss_before = rss_kib();
    for _ in 0..5 {
        let started = Instant::now();
        let (status, body) = app.get("/resource/watcher?agent_id=i-huge").await;
        assert_eq!((status, body["error_code"].as_str()), (502, Some("watcher_bad_response")), "{body}");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "refused at the limit, not at the timeout: {:?}",
            started.elapsed()
        );
    }
    let grown_kib = rss_kib() - rss_before;
    // The writer could only push what the socket buffers held beyond the 64 KiB the client read.
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let sent_mib = sent.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0);
    eprintln!("sent {sent_mib:.2} MiB for 5 requests; VmRSS grew {grown_kib} KiB");
    assert!(sent_mib < 5.0 * 8.0, "the client kept reading: {sent_mib:.1} MiB sent for 5 requests");
    assert!(grown_kib < 16 * 1024, "memory grew by {grown_kib} KiB while refusing 5 GiB of answers");
}

#[actix_rt::test]
async fn watcher_dribbling_headers_is_504_within_the_status_timeout() {
    let app = TestApp::spawn().await; // status timeout 1 s
    let port = fake_watcher(|mut s| {
        // Slowloris: one byte of a never-ending header block every 100 ms.
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: "
            .iter()
            .copied()
            .chain(std::iter::repeat(b'a'));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let Some(b) = head.next() else { return };
            if s.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    app.add_agent("i-slowloris").await;
    app.register_watcher("i-slowloris", port).await;
    let started = Instant::now();
    let (status, body) = app.get("/resource/watcher?agent_id=i-slowloris").await;
    let took = started.elapsed();
    assert_eq!((status, body["error_code"].as_str()), (504, Some("watcher_timeout")), "{body}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2_500), "took {took:?}");
    // The actor is unharmed: a second call is bounded the same way.
    let started = Instant::now();
    assert_eq!(app.get("/resource/watcher?agent_id=i-slowloris").await.0, 504);
    assert!(started.elapsed() < Duration::from_millis(2_500));
}

#[actix_rt::test]
async fn refresh_listing_asks_every_watcher_under_the_concurrency_limit() {
    let app = TestApp::spawn_with(|c| c.watcher.refresh_concurrency = 2).await; // status timeout 1 s
    let d = tempfile::tempdir().unwrap();
    let up = running_watcher(TOKEN, &slow_service(&d.path().join("s.log"), "0"), &[]);
    app.add_agent("i-up").await;
    app.register_watcher("i-up", up.port()).await;
    let closed = common::procs::free_port();
    app.add_agent("i-closed").await;
    app.register_watcher("i-closed", closed).await;
    // Four watchers that accept and never answer: each costs the full status timeout.
    let mut held = Vec::new();
    for i in 0..4 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let agent = format!("i-silent-{i}");
        app.add_agent(&agent).await;
        app.register_watcher(&agent, l.local_addr().unwrap().port()).await;
        held.push(l);
    }

    // Without refresh, nothing has been observed yet.
    let (status, body) = app.get("/v1/agents").await;
    assert_eq!(status, 200);
    assert!(
        body["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["supervision"].is_null() || a["supervision"]["watcher"].is_null()),
        "{body}"
    );

    let started = Instant::now();
    let (status, body) = app.get("/v1/agents?refresh=true").await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    // Four 1 s timeouts, two at a time: about 2 s; one at a time would be 4 s, all at once 1 s.
    assert!(took >= Duration::from_millis(1_900) && took < Duration::from_millis(3_500), "took {took:?}");
    let agents = body["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 6);
    let watcher =
        |id: &str| agents.iter().find(|a| a["id"] == id).map(|a| a["supervision"]["watcher"].clone()).unwrap();
    assert_eq!(
        (watcher("i-up")["reachable"].as_bool(), watcher("i-up")["agent_status"].as_str()),
        (Some(true), Some("active"))
    );
    assert_eq!(watcher("i-closed")["reachable"], false);
    assert!(watcher("i-closed")["error"].as_str().unwrap().contains("unreachable"));
    for i in 0..4 {
        let w = watcher(&format!("i-silent-{i}"));
        assert_eq!(w["reachable"], false, "{w}");
        assert!(w["error"].as_str().unwrap().contains("did not answer"), "{w}");
    }
    // Filtering and validation still apply.
    let (status, body) = app.get("/v1/agents?refresh=true&scaling_group=nope").await;
    assert_eq!((status, body["agents"].as_array().map(Vec::len)), (200, Some(0)));
    let (status, body) = app.get("/v1/agents?refresh=maybe").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("refresh")), "{body}");
}
