//! The process back-end against a real `agent-watcher` supervising real child processes: status, transitions,
//! refusals, failed starts, serialisation, status during a slow stop, and no orphans on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::watcher::{WatcherProcess, alive};

const TOKEN: &str = "t0ken";
const SECS: fn(u64) -> Duration = Duration::from_secs;

fn pid_of(w: &WatcherProcess) -> u32 {
    w.get("/").json()["pid"].as_u64().expect("a pid while running") as u32
}

fn assert_ok(r: &common::watcher::Response) {
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(r.json(), serde_json::json!({"result": "ok"}));
}

fn error_code(r: &common::watcher::Response) -> String {
    assert_eq!(r.header("content-type"), Some("application/problem+json"), "body: {}", r.body);
    r.json()["error_code"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn status_shows_the_running_child_then_the_stopped_one() {
    let w = WatcherProcess::process_backend(TOKEN, &["sleep", "1000"], &[]);
    assert!(w.wait_for_status("active", SECS(5)));
    let doc = w.get("/").json();
    assert_eq!(doc["watcher-status"], "active");
    let pid = doc["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid));
    assert!(doc["since"].is_string());

    assert_ok(&w.post("/agent/stop"));
    let doc = w.get("/").json();
    assert_eq!(doc["agent-status"], "inactive");
    assert!(doc.get("pid").is_none());
    assert!(!alive(pid), "the child is gone after stop");
    assert_eq!(doc["last-exit-status"], "signal 15 (SIGTERM)");
}

#[test]
fn start_stop_restart_transitions_and_the_two_409s() {
    let w = WatcherProcess::process_backend(TOKEN, &["sleep", "1000"], &["--no-autostart"]);
    assert_eq!(w.agent_status(), "inactive");

    let r = w.post("/agent/stop");
    assert_eq!(r.status, 409);
    assert_eq!(error_code(&r), "agent_already_stopped");

    assert_ok(&w.post("/agent/start"));
    assert_eq!(w.agent_status(), "active", "start answers once the agent is up");
    let first = pid_of(&w);

    let r = w.post("/agent/start");
    assert_eq!(r.status, 409);
    assert_eq!(error_code(&r), "agent_already_running");
    assert_eq!(pid_of(&w), first, "a refused start leaves the agent alone");

    assert_ok(&w.post("/agent/restart"));
    let second = pid_of(&w);
    assert_ne!(first, second, "restart runs a new process");
    assert!(!alive(first));

    assert_ok(&w.post("/agent/stop"));
    assert_eq!(w.agent_status(), "inactive");
    assert_ok(&w.post("/agent/restart"));
    assert_eq!(w.agent_status(), "active", "restart of a stopped agent starts it");
}

#[test]
fn a_crashed_child_shows_failed_with_its_exit_status_and_can_be_started_again() {
    let w = WatcherProcess::process_backend(TOKEN, &["sleep", "1000"], &[]);
    assert!(w.wait_for_status("active", SECS(5)));
    let pid = pid_of(&w);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(w.wait_for_status("failed", SECS(5)));
    let doc = w.get("/").json();
    assert_eq!(doc["last-exit-status"], "signal 9 (SIGKILL)");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the crashed child was reaped, not left a zombie");

    let r = w.post("/agent/stop");
    assert_eq!(error_code(&r), "agent_already_stopped", "a failed agent is not running");
    assert_ok(&w.post("/agent/start"));
    assert_eq!(w.agent_status(), "active");
}

#[test]
fn a_child_exiting_non_zero_after_start_shows_failed_with_its_exit_code() {
    let w = WatcherProcess::process_backend(TOKEN, &["sh", "-c", "sleep 0.6; exit 3"], &["--start-grace-ms", "200"]);
    assert!(w.wait_for_status("failed", SECS(5)));
    assert_eq!(w.get("/").json()["last-exit-status"], "exit code 3");
}

#[test]
fn a_start_that_fails_at_once_answers_500_with_the_agents_message() {
    let w = WatcherProcess::process_backend(
        TOKEN,
        &["sh", "-c", "echo 'starting up'; echo 'out of GPU memory: cuda.shares' >&2; exit 7"],
        &["--no-autostart"],
    );
    let r = w.post("/agent/start");
    assert_eq!(r.status, 500, "body: {}", r.body);
    assert_eq!(error_code(&r), "agent_start_failed");
    let doc = r.json();
    let detail = doc["detail"].as_str().unwrap();
    assert!(detail.contains("out of GPU memory: cuda.shares"), "detail: {detail}");
    assert!(detail.contains("exit code 7"), "detail: {detail}");
    assert_eq!(doc["exit_status"], "exit code 7");
    assert_eq!(w.agent_status(), "failed");

    // Restart reports its own failure code.
    let r = w.post("/agent/restart");
    assert_eq!(error_code(&r), "agent_restart_failed");

    // A command that cannot even be spawned fails the same way.
    let w = WatcherProcess::process_backend(TOKEN, &["/nonexistent/agent"], &["--no-autostart"]);
    let r = w.post("/agent/start");
    assert_eq!(error_code(&r), "agent_start_failed");
    assert!(r.json()["detail"].as_str().unwrap().contains("/nonexistent/agent"));
}

#[test]
fn concurrent_commands_are_serialised() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("lifecycle.log");
    // Stopping takes a while, which would let two unserialised restarts overlap.
    let script = format!(
        "echo start $$ >> {log}; trap 'sleep 0.3; echo stop $$ >> {log}; exit 0' TERM; while :; do sleep 0.1; done",
        log = log.display()
    );
    let w = WatcherProcess::process_backend(TOKEN, &["sh", "-c", &script], &["--start-grace-ms", "200"]);
    assert!(w.wait_for_status("active", SECS(5)));

    let port = w.port();
    let handles: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || common::watcher::http(port, "POST", "/agent/restart", Some(TOKEN))))
        .collect();
    for h in handles {
        assert_ok(&h.join().unwrap());
    }

    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(events.len(), 5, "three starts and two stops: {text}");
    // start A, stop A, start B, stop B, start C: never two runs at once.
    for (i, pair) in events.windows(2).enumerate() {
        let ((kind_a, pid_a), (kind_b, _)) = (pair[0], pair[1]);
        if i % 2 == 0 {
            assert_eq!((kind_a, kind_b), ("start", "stop"), "{text}");
            assert_eq!(pid_a, pair[1].1, "a run stops before the next starts: {text}");
        } else {
            assert_eq!((kind_a, kind_b), ("stop", "start"), "{text}");
        }
    }
}

#[test]
fn status_is_answered_during_a_slow_stop_and_a_waiting_command_is_bounded() {
    // The agent needs 2 s to stop after SIGTERM (the trap runs after the group's SIGTERM, so its sleep survives).
    let w = WatcherProcess::process_backend(
        TOKEN,
        &["sh", "-c", "trap 'sleep 2; exit 0' TERM; while :; do sleep 0.1; done"],
        &["--stop-timeout-ms", "5000", "--command-wait-ms", "500"],
    );
    assert!(w.wait_for_status("active", SECS(5)));
    let port = w.port();
    let started = Instant::now();
    let stop = std::thread::spawn(move || common::watcher::http(port, "POST", "/agent/stop", Some(TOKEN)));
    std::thread::sleep(Duration::from_millis(300));

    let asked = Instant::now();
    let status = w.get("/");
    assert!(asked.elapsed() < Duration::from_millis(500), "status waited for the stop: {:?}", asked.elapsed());
    assert_eq!(status.json()["agent-status"], "deactivating");

    // A second command waits its turn, but only for --command-wait-ms.
    let r = w.post("/agent/start");
    assert_eq!(r.status, 429, "body: {}", r.body);
    assert_eq!(error_code(&r), "agent_busy");

    assert_ok(&stop.join().unwrap());
    assert!(started.elapsed() >= Duration::from_millis(1800), "stop answered before the agent exited");
    assert_eq!(w.agent_status(), "inactive");
}

#[test]
fn a_child_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let w = WatcherProcess::process_backend(
        TOKEN,
        &["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
        &["--stop-timeout-ms", "500"],
    );
    assert!(w.wait_for_status("active", SECS(5)));
    let pid = pid_of(&w);
    let started = Instant::now();
    assert_ok(&w.post("/agent/stop"));
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert!(!alive(pid));
    assert_eq!(w.get("/").json()["last-exit-status"], "signal 9 (SIGKILL)");
}

#[test]
fn sigterm_to_the_watcher_stops_the_child_group_and_leaves_no_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // The agent forks a grandchild, as real agents do.
    let script = format!("sleep 1000 & echo $$ $! > {}; wait", pids.display());
    let mut w = WatcherProcess::process_backend(TOKEN, &["sh", "-c", &script], &[]);
    assert!(w.wait_for_status("active", SECS(5)));
    let text = std::fs::read_to_string(&pids).unwrap();
    let ids: Vec<u32> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|&p| alive(p)));

    let status = w.terminate().expect("the watcher exits");
    assert!(
        status.success(),
        "graceful exit: {status:?}\n{}",
        std::fs::read_to_string(w.log_path()).unwrap_or_default()
    );
    for pid in ids {
        assert!(!alive(pid), "pid {pid} outlived the watcher");
    }
}

#[test]
fn soft_reset_sends_sighup_to_the_agent_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hup.log");
    let script = format!("trap 'echo hup >> {}' HUP; while :; do sleep 0.1; done", log.display());
    let w = WatcherProcess::process_backend(TOKEN, &["sh", "-c", &script], &["--soft-reset"]);
    assert!(w.wait_for_status("active", SECS(5)));
    assert_ok(&w.post("/soft-reset"));
    assert!(
        (0..40).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::read_to_string(&log).unwrap_or_default().contains("hup")
        }),
        "the agent did not get SIGHUP"
    );
    assert_eq!(w.agent_status(), "active", "a soft reset keeps the agent running");
}

#[test]
fn the_agents_output_goes_to_the_log_file() {
    let w = WatcherProcess::process_backend(
        TOKEN,
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exec sleep 1000"],
        &[],
    );
    assert!(w.wait_for_status("active", SECS(5)));
    let text = std::fs::read_to_string(w.agent_log_path()).unwrap();
    assert!(text.contains("to-stdout") && text.contains("to-stderr"), "{text}");
}

/// A supervisor that dies (or times out) while its restart runs must not leave the agent stopped: the watcher
/// finishes the command without a client to answer.
#[test]
fn a_command_whose_client_goes_away_still_completes() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("service.log");
    let cmd = common::watcher::slow_service(&log, "1");
    let w = common::watcher::running_watcher(TOKEN, &cmd, &[]);
    let starts =
        || std::fs::read_to_string(&log).unwrap_or_default().lines().filter(|l| l.starts_with("start")).count();
    assert_eq!(starts(), 1);

    let mut client = std::net::TcpStream::connect(("127.0.0.1", w.port())).unwrap();
    let request = format!(
        "POST /agent/restart HTTP/1.1\r\nHost: 127.0.0.1\r\nX-BackendAI-Watcher-Token: {TOKEN}\r\nContent-Length: 0\r\n\r\n"
    );
    client.write_all(request.as_bytes()).unwrap();
    // The service got its SIGTERM: the restart is under way. The client goes away.
    let term = common::watcher::term_signals(&log);
    let deadline = Instant::now() + SECS(10);
    while std::fs::read_to_string(&term).map_or(0, |t| t.lines().count()) < 1 {
        assert!(Instant::now() < deadline, "the restart never reached the service");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(client);

    assert!(w.wait_for_status("active", SECS(10)), "the agent was left stopped");
    let deadline = Instant::now() + SECS(10);
    while !w.log().contains("command done") || starts() < 2 {
        assert!(Instant::now() < deadline, "the restart did not complete:\n{}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(starts(), 2, "started again exactly once");
}
