//! The systemd back-end against a real `agent-watcher` driving a stand-in `systemctl` (a shell script first in
//! `PATH` that keeps the unit state in a file): status, transitions, refusals, failures with stderr, the status cache
//! and `--sudo`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{path::Path, time::Duration};

use common::watcher::{Response, WatcherProcess, write_systemctl_stand_in};

const TOKEN: &str = "t0ken";
const UNIT: &str = "backendai-agent.service";

fn set(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn count(dir: &Path, call: &str) -> usize {
    calls(dir).iter().filter(|c| *c == call).count()
}

fn assert_ok(r: &Response) {
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(r.json(), serde_json::json!({"result": "ok"}));
}

fn error_code(r: &Response) -> String {
    assert_eq!(r.header("content-type"), Some("application/problem+json"), "body: {}", r.body);
    r.json()["error_code"].as_str().unwrap_or_default().to_owned()
}

fn stand_in(state: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_systemctl_stand_in(dir.path());
    set(dir.path(), "state", state);
    dir
}

#[test]
fn status_reports_what_systemctl_is_active_prints() {
    let dir = stand_in("active");
    let w = WatcherProcess::systemd_backend(TOKEN, dir.path(), &["--status-cache-ms", "0"]);
    let doc = w.get("/").json();
    assert_eq!(doc["agent-status"], "active");
    assert_eq!(doc["watcher-status"], "active");
    assert_eq!(doc["backend"], "systemd");
    assert_eq!(doc["unit"], UNIT);
    for state in ["inactive", "failed", "activating", "deactivating"] {
        set(dir.path(), "state", state);
        assert_eq!(w.agent_status(), state);
    }
    assert!(calls(dir.path()).contains(&format!("systemctl is-active {UNIT}")));
}

#[test]
fn start_stop_restart_run_systemctl_and_redundant_ones_are_refused() {
    let dir = stand_in("inactive");
    let d = dir.path();
    let w = WatcherProcess::systemd_backend(TOKEN, d, &[]);

    let r = w.post("/agent/stop");
    assert_eq!(r.status, 409);
    assert_eq!(error_code(&r), "agent_already_stopped");
    assert_eq!(count(d, &format!("systemctl stop {UNIT}")), 0, "a refused stop runs no systemctl stop");

    assert_ok(&w.post("/agent/start"));
    assert_eq!(count(d, &format!("systemctl start {UNIT}")), 1);
    assert_eq!(w.agent_status(), "active", "commands invalidate the status cache");

    let r = w.post("/agent/start");
    assert_eq!(r.status, 409);
    assert_eq!(error_code(&r), "agent_already_running");
    assert_eq!(count(d, &format!("systemctl start {UNIT}")), 1);

    assert_ok(&w.post("/agent/stop"));
    assert_eq!(w.agent_status(), "inactive");
    assert_ok(&w.post("/agent/restart"));
    assert_eq!(count(d, &format!("systemctl restart {UNIT}")), 1);
    assert_eq!(w.agent_status(), "active", "restart of a stopped unit starts it");
}

#[test]
fn a_failing_systemctl_answers_500_with_its_stderr_and_exit_status() {
    let dir = stand_in("inactive");
    let d = dir.path();
    let w = WatcherProcess::systemd_backend(TOKEN, d, &[]);

    let msg = "Job for backendai-agent.service failed because the control process exited with error code.";
    set(d, "fail-start", msg);
    let r = w.post("/agent/start");
    assert_eq!(r.status, 500);
    assert_eq!(error_code(&r), "agent_start_failed");
    let doc = r.json();
    assert!(doc["detail"].as_str().unwrap().contains(msg), "detail: {}", doc["detail"]);
    assert_eq!(doc["exit_status"], "exit code 1");

    set(d, "state", "active");
    set(d, "fail-stop", "Failed to stop backendai-agent.service: Access denied");
    let r = w.post("/agent/stop");
    assert_eq!(error_code(&r), "agent_stop_failed");
    assert!(r.json()["detail"].as_str().unwrap().contains("Access denied"));

    set(d, "fail-restart", "restart exploded");
    let r = w.post("/agent/restart");
    assert_eq!(error_code(&r), "agent_restart_failed");
    assert!(r.json()["detail"].as_str().unwrap().contains("restart exploded"));
}

#[test]
fn a_unit_that_fails_right_after_start_is_a_failed_start() {
    let dir = stand_in("inactive");
    set(dir.path(), "state-after-start", "failed");
    let w = WatcherProcess::systemd_backend(TOKEN, dir.path(), &[]);
    let r = w.post("/agent/start");
    assert_eq!(r.status, 500, "body: {}", r.body);
    assert_eq!(error_code(&r), "agent_start_failed");
    assert!(r.json()["detail"].as_str().unwrap().contains("failed"));
}

#[test]
fn status_is_cached_briefly_so_bursts_do_not_fork_systemctl_each() {
    let dir = stand_in("active");
    let d = dir.path();
    let w = WatcherProcess::systemd_backend(TOKEN, d, &["--status-cache-ms", "2000"]);
    for _ in 0..30 {
        assert_eq!(w.agent_status(), "active");
    }
    let is_active = format!("systemctl is-active {UNIT}");
    assert_eq!(count(d, &is_active), 1, "one systemctl for 30 status requests: {:?}", calls(d));

    // A change behind the watcher's back is not seen while the answer is fresh…
    set(d, "state", "failed");
    assert_eq!(w.agent_status(), "active");
    // …but a command invalidates the cache at once.
    set(d, "state", "active");
    assert_ok(&w.post("/agent/stop"));
    assert_eq!(w.agent_status(), "inactive");
}

#[test]
fn status_is_answered_while_a_slow_systemctl_stop_runs() {
    let dir = stand_in("active");
    let d = dir.path();
    set(d, "slow-stop", "2");
    let w = WatcherProcess::systemd_backend(TOKEN, d, &["--status-cache-ms", "0"]);
    let port = w.port();
    let stop = std::thread::spawn(move || common::watcher::http(port, "POST", "/agent/stop", Some(TOKEN)));
    std::thread::sleep(Duration::from_millis(300));
    let asked = std::time::Instant::now();
    assert_eq!(w.get("/").status, 200);
    assert!(asked.elapsed() < Duration::from_millis(1000), "status waited for the stop");
    assert_ok(&stop.join().unwrap());
}

#[test]
fn with_sudo_systemctl_runs_through_sudo_non_interactively() {
    let dir = stand_in("inactive");
    let d = dir.path();
    let w = WatcherProcess::systemd_backend(TOKEN, d, &["--sudo", "--unit", "other.service"]);
    assert_ok(&w.post("/agent/start"));
    let log = calls(d);
    assert!(log.contains(&"sudo -n systemctl start other.service".to_owned()), "{log:?}");
    assert!(log.contains(&"systemctl start other.service".to_owned()), "{log:?}");
}

#[test]
fn soft_reset_reloads_the_unit_and_reports_a_failed_reload() {
    let dir = stand_in("active");
    let d = dir.path();
    let w = WatcherProcess::systemd_backend(TOKEN, d, &["--soft-reset"]);
    assert_ok(&w.post("/soft-reset"));
    assert_eq!(count(d, &format!("systemctl reload {UNIT}")), 1);
    set(d, "state", "inactive");
    let r = w.post("/soft-reset");
    assert_eq!(r.status, 500);
    assert!(r.json()["detail"].as_str().unwrap().contains("invalid"), "{}", r.body);
}

#[test]
fn sigterm_stops_the_watcher_but_leaves_the_unit_running() {
    let dir = stand_in("active");
    let mut w = WatcherProcess::systemd_backend(TOKEN, dir.path(), &[]);
    assert_eq!(w.agent_status(), "active");
    let status = w.terminate().expect("the watcher exits");
    assert!(status.success(), "{status:?}");
    assert_eq!(count(dir.path(), &format!("systemctl stop {UNIT}")), 0, "systemd owns the unit, not the watcher");
}
