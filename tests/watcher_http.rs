//! The watcher's HTTP surface against a real `agent-watcher`: token checks on every route, the routes that exist and
//! those that deliberately do not, headers, and where the token may come from.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::watcher::{Response, WatcherProcess};

const TOKEN: &str = "s3cret-watcher-token";

fn sleeper(extra: &[&str]) -> WatcherProcess {
    let w = WatcherProcess::process_backend(TOKEN, &["sleep", "1000"], extra);
    assert!(w.wait_for_status("active", Duration::from_secs(5)), "agent did not start: {}", w.log());
    w
}

fn assert_problem(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.body);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.header("server"), Some("BackendAI-AgentWatcher"));
    let doc = r.json();
    assert_eq!(doc["error_code"], code);
    assert_eq!(doc["status"], status);
    assert!(doc["title"].is_string() && doc["detail"].is_string() && doc["type"].is_string());
}

#[test]
fn every_route_rejects_a_missing_wrong_or_empty_token_with_401() {
    let w = sleeper(&["--soft-reset"]);
    let routes = [
        ("GET", "/"),
        ("POST", "/agent/start"),
        ("POST", "/agent/stop"),
        ("POST", "/agent/restart"),
        ("POST", "/soft-reset"),
        ("POST", "/hard-reset"),
        ("GET", "/no/such/route"),
        ("GET", "/agent/stop"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong"), Some(""), Some("s3cret-watcher-token-and-more")] {
            let r = w.request(method, path, token);
            assert_problem(&r, 401, "watcher_auth_failed");
        }
    }
    // None of those reached the agent, and the token never shows up in the log.
    assert_eq!(w.agent_status(), "active");
    assert!(!w.log().contains(TOKEN), "the token was logged");
}

#[test]
fn status_answers_backend_ai_keys_with_the_server_header_and_any_header_case() {
    let w = sleeper(&[]);
    let r = w.request("GET", "/", Some(TOKEN));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("server"), Some("BackendAI-AgentWatcher"));
    assert!(r.header("content-type").unwrap_or_default().starts_with("application/json"));
    let doc = r.json();
    assert_eq!(doc["agent-status"], "active");
    assert_eq!(doc["watcher-status"], "active");
    assert_eq!(doc["backend"], "process");

    // Header names are case-insensitive (Backend.AI's manager sends them as written; curl users may not).
    let mut s = std::net::TcpStream::connect(("127.0.0.1", w.port())).unwrap();
    use std::io::{Read, Write};
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nx-backendai-watcher-token: {TOKEN}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
}

#[test]
fn routes_backend_ai_has_but_we_do_not_answer_404_and_wrong_methods_405() {
    let w = sleeper(&[]);
    for (method, path) in [
        ("POST", "/soft-reset"), // not enabled
        ("POST", "/hard-reset"),
        ("POST", "/shutdown"),
        ("GET", "/fstab"),
        ("GET", "/mounts"),
        ("POST", "/mounts"),
        ("GET", "/nonexistent"),
    ] {
        assert_problem(&w.request(method, path, Some(TOKEN)), 404, "not_found");
    }
    let r = w.request("GET", "/agent/start", Some(TOKEN));
    assert_problem(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = w.request("POST", "/", Some(TOKEN));
    assert_problem(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    // The agent was left alone.
    assert_eq!(w.agent_status(), "active");
}

#[test]
fn the_token_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let args: Vec<String> =
        ["--backend", "process", "--no-autostart", "--token-file", file.to_str().unwrap(), "--", "sleep", "1000"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let w = WatcherProcess::spawn("from-a-file", &args, &[]);
    assert_eq!(w.get("/").status, 200);
    assert_eq!(w.agent_status(), "inactive", "--no-autostart leaves the agent stopped");
    assert_eq!(w.request("GET", "/", Some("insecure")).status, 401, "the file replaces the default token");
}

#[test]
fn without_any_token_configured_insecure_is_accepted_with_a_loud_warning() {
    let args: Vec<String> =
        ["--backend", "process", "--no-autostart", "--", "sleep", "1000"].iter().map(|s| s.to_string()).collect();
    let w = WatcherProcess::spawn("insecure", &args, &[]);
    assert_eq!(w.get("/").status, 200);
    assert_eq!(w.request("GET", "/", Some("s3cret")).status, 401);
    assert!(w.log().contains("NO WATCHER TOKEN CONFIGURED"), "log: {}", w.log());
}

#[test]
fn a_config_file_sets_flags_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("watcher.toml");
    std::fs::write(
        &config,
        "backend = \"process\"\ntoken = \"from-config\"\nno-autostart = true\nsoft_reset = true\ncommand = [\"sleep\", \"1000\"]\n",
    )
    .unwrap();
    let args: Vec<String> =
        ["--config", config.to_str().unwrap(), "--token", "from-cli"].iter().map(|s| s.to_string()).collect();
    let w = WatcherProcess::spawn("from-cli", &args, &[]);
    assert_eq!(w.request("GET", "/", Some("from-config")).status, 401, "the command line wins");
    let doc = w.get("/").json();
    assert_eq!(doc["backend"], "process");
    assert_eq!(doc["agent-status"], "inactive", "no-autostart from the file");
    // soft-reset is enabled by the file: the route exists (and refuses, the agent being stopped).
    let r = w.post("/soft-reset");
    assert_eq!(r.status, 409, "body: {}", r.body);

    std::fs::write(&config, "tokn = \"typo\"\n").unwrap();
    let out = std::process::Command::new(common::procs::watcher_bin())
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key `tokn`: unknown key"));
}
