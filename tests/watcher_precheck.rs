//! One table, two sides: what a start and a stop do in each state of the agent (`PRECHECK_TABLE` in the protocol
//! crate). The watcher refuses a redundant command itself (checked against a real `agent-watcher` whose stand-in
//! `systemctl` reports each state), and the daemon refuses the same commands before sending them (checked against a
//! Backend.AI-style watcher, which would run anything).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agent_supervisor_protocol::watcher::{PRECHECK_TABLE, Precheck};
use common::{
    supervisor::{TOKEN, TestApp},
    watcher::{BackendAiWatcher, WatcherProcess, write_systemctl_stand_in},
};

/// What a caller sees for `expected`: the status and, for a refusal, the error code.
fn seen(expected: Precheck) -> (u16, Option<&'static str>) {
    match expected {
        Precheck::Run => (200, None),
        Precheck::AlreadyRunning => (409, Some("agent_already_running")),
        Precheck::AlreadyStopped => (409, Some("agent_already_stopped")),
    }
}

fn calls(dir: &std::path::Path, verb: &str) -> usize {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&format!("systemctl {verb} ")))
        .count()
}

#[test]
fn the_watcher_refuses_exactly_what_the_table_refuses() {
    let dir = tempfile::tempdir().unwrap();
    write_systemctl_stand_in(dir.path());
    let w = WatcherProcess::systemd_backend(TOKEN, dir.path(), &["--status-cache-ms", "0"]);
    for (word, start, stop) in PRECHECK_TABLE {
        for (verb, expected) in [("start", *start), ("stop", *stop)] {
            std::fs::write(dir.path().join("state"), word).unwrap();
            let before = calls(dir.path(), verb);
            let r = w.post(&format!("/agent/{verb}"));
            let code = (r.status != 200).then(|| r.json()["error_code"].as_str().map(str::to_owned)).flatten();
            let (status, expected_code) = seen(expected);
            assert_eq!((r.status, code.as_deref()), (status, expected_code), "{verb} when {word}: {}", r.body);
            let sent = usize::from(expected == Precheck::Run);
            assert_eq!(calls(dir.path(), verb) - before, sent, "systemctl {verb} when {word}");
        }
    }
}

#[actix_rt::test]
async fn the_daemon_refuses_exactly_what_the_table_refuses_even_when_the_watcher_would_run_anything() {
    let app = TestApp::spawn().await;
    let watcher = BackendAiWatcher::start(TOKEN, "inactive");
    app.add_agent("i-table").await;
    app.register_watcher("i-table", watcher.port).await;
    for (word, start, stop) in PRECHECK_TABLE {
        for (verb, expected) in [("start", *start), ("stop", *stop)] {
            watcher.set_status(word);
            let before = watcher.commands().len();
            let (status, body) = app.post(&format!("/v1/agents/i-table/{verb}"), None).await;
            let code = (status != 200).then(|| body["error_code"].as_str().map(str::to_owned)).flatten();
            let (expected_status, expected_code) = seen(expected);
            assert_eq!((status, code.as_deref()), (expected_status, expected_code), "{verb} when {word}: {body}");
            let sent: Vec<String> = watcher.commands()[before..].to_vec();
            let expected_sent = if expected == Precheck::Run { vec![format!("/agent/{verb}")] } else { vec![] };
            assert_eq!(sent, expected_sent, "what reached the watcher for {verb} when {word}");
        }
    }
}
