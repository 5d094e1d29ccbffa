//! `agentctl`, the real binary, against a real daemon (in-process, on 127.0.0.1:0) and real `agent-watcher`
//! processes: what an operator sees on stdout and stderr, what `--json` prints, and the exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{process::Command, time::Duration};

use common::{
    procs::free_port,
    supervisor::{Creds, TOKEN, TestApp},
    watcher::WatcherProcess,
};
use serde_json::Value;

/// A child that runs until SIGTERM and logs each start.
const SERVICE: &str = r#"echo "start $$" >> "$LOG"; trap 'exit 0' TERM; while :; do sleep 0.05; done"#;

/// What one run of `agentctl` left behind.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// One JSON document per line (watcher commands).
    fn json_lines(&self) -> Vec<Value> {
        self.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
    }

    /// The table row that starts with `first`, split on runs of blanks.
    fn row(&self, first: &str) -> Vec<String> {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no row {first}: {self:?}"))
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Runs the binary with `env` as its only `BACKEND_*` variables, off the actix thread so the daemon keeps serving.
async fn agentctl_env(env: Vec<(&'static str, String)>, args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    actix_rt::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .args(&args)
            .env_remove("BACKEND_ENDPOINT")
            .env_remove("BACKEND_ACCESS_KEY")
            .env_remove("BACKEND_SECRET_KEY")
            .envs(env)
            .output()
            .expect("run agentctl");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

fn env_for(app: &TestApp, creds: &Creds) -> Vec<(&'static str, String)> {
    vec![
        ("BACKEND_ENDPOINT", app.url.clone()),
        ("BACKEND_ACCESS_KEY", creds.access_key.clone()),
        ("BACKEND_SECRET_KEY", creds.secret_key.clone()),
    ]
}

/// `agentctl ARGS` as the app's superadmin.
async fn agentctl(app: &TestApp, args: &[&str]) -> Run {
    agentctl_env(env_for(app, &app.admin), args).await
}

/// An ALIVE agent in `group` whose service runs under a real watcher; the directory holds `service.log`.
async fn agent_with_watcher(app: &TestApp, id: &str, group: &str) -> (WatcherProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let script = SERVICE.replace("$LOG", &dir.path().join("service.log").display().to_string());
    let watcher = WatcherProcess::process_backend(TOKEN, &["sh", "-c", &script], &[]);
    assert!(watcher.wait_for_status("active", Duration::from_secs(5)), "the service did not come up");
    add_agent_in(app, id, group).await;
    app.register_watcher(id, watcher.port()).await;
    (watcher, dir)
}

/// An agent whose watcher address points at a port nobody listens on.
async fn agent_with_dead_watcher(app: &TestApp, id: &str, group: &str) {
    add_agent_in(app, id, group).await;
    app.register_watcher(id, free_port()).await;
}

async fn add_agent_in(app: &TestApp, id: &str, group: &str) {
    app.add_agent(id).await;
    app.sql(&format!("INSERT INTO scaling_groups (name) VALUES ('{group}') ON CONFLICT DO NOTHING")).await;
    app.sql(&format!("UPDATE agents SET scaling_group = '{group}' WHERE id = '{id}'")).await;
}

fn starts(dir: &tempfile::TempDir) -> usize {
    std::fs::read_to_string(dir.path().join("service.log")).unwrap_or_default().lines().count()
}

#[actix_rt::test]
async fn agents_lists_every_agent_with_its_watcher_state_as_a_table_and_as_json() {
    let app = TestApp::spawn().await;
    let (_w, _d) = agent_with_watcher(&app, "i-up", "default").await;
    agent_with_dead_watcher(&app, "i-down", "default").await;
    add_agent_in(&app, "i-new", "gpu").await;

    // Nothing observed yet: the daemon does not fan out per listing.
    let run = agentctl(&app, &["agents"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.row("ID"), ["ID", "STATUS", "SCALING GROUP", "WATCHER", "LAST SEEN", "IN FLIGHT"]);
    assert_eq!(run.row("i-new"), ["i-new", "ALIVE", "gpu", "unknown", "-", "-"]);

    // A status query is an observation; an unreachable watcher is a failure with the daemon's problem.
    assert_eq!(agentctl(&app, &["watcher", "status", "i-up"]).await.code, 0);
    let run = agentctl(&app, &["watcher", "status", "i-down"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("error: The watcher is unreachable. (502 watcher_unreachable): "), "{run:?}");

    let run = agentctl(&app, &["agents"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let up = run.row("i-up");
    assert_eq!(up[..4], ["i-up", "ALIVE", "default", "active"]);
    assert!(up[4].ends_with("s ago"), "last seen: {up:?}");
    assert_eq!(up[5], "-");
    assert_eq!(run.row("i-down")[3], "unreachable");
    assert_eq!(run.row("i-new")[3], "unknown");

    let run = agentctl(&app, &["agents", "--scaling-group", "gpu"]).await;
    assert!(run.stdout.contains("i-new") && !run.stdout.contains("i-up"), "{run:?}");

    let run = agentctl(&app, &["agents", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    let agents = doc["agents"].as_array().unwrap();
    let ids: Vec<&str> = agents.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["i-down", "i-new", "i-up"]);
    let up = agents.iter().find(|a| a["id"] == "i-up").unwrap();
    assert_eq!(up["supervision"]["watcher"]["agent_status"], "active");
    assert_eq!(up["supervision"]["watcher"]["reachable"], true);
    let down = agents.iter().find(|a| a["id"] == "i-down").unwrap();
    assert_eq!(down["supervision"]["watcher"]["reachable"], false);
}

#[actix_rt::test]
async fn watcher_commands_print_each_outcome_and_ensure_turns_already_so_into_success() {
    let app = TestApp::spawn().await;
    let (_w, dir) = agent_with_watcher(&app, "i-w", "default").await;

    let run = agentctl(&app, &["watcher", "status", "i-w"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("i-w: active (watcher active, "), "{run:?}");
    let run = agentctl(&app, &["watcher", "status", "--json", "i-w"]).await;
    assert_eq!(run.json()["watcher"]["agent-status"], "active");

    // Start of a running agent: refused with the daemon's title and code, exit 1 ...
    let run = agentctl(&app, &["watcher", "start", "i-w"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.starts_with("error: The agent is already running. (409 agent_already_running): agent i-w is active"),
        "{run:?}"
    );
    // ... and a success with --ensure; the watcher was never asked to start again.
    let run = agentctl(&app, &["watcher", "start", "--ensure", "i-w"]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "i-w: already running (nothing to do)\n"), "{run:?}");
    assert_eq!(starts(&dir), 1);

    // Kernels on the agent: stop is refused unless forced.
    app.add_running_kernels("i-w", 2).await;
    let run = agentctl(&app, &["watcher", "stop", "i-w"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("(409 agent_has_running_kernels)"), "{run:?}");
    let run = agentctl(&app, &["watcher", "stop", "--force", "i-w"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("i-w: stopped (event "), "{run:?}");

    let run = agentctl(&app, &["watcher", "stop", "--force", "i-w"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("error: The agent is already stopped. (409 agent_already_stopped)"), "{run:?}");
    let run = agentctl(&app, &["watcher", "stop", "--force", "--ensure", "--json", "i-w"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["error_code"], "agent_already_stopped", "--json prints the daemon's document");

    // Restart of a stopped agent starts it; --json is the daemon's answer.
    let run = agentctl(&app, &["watcher", "restart", "--json", "i-w"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    assert_eq!((doc["agent_id"].as_str(), doc["command"].as_str()), (Some("i-w"), Some("restart")));
    assert_eq!(doc["result"]["result"], "ok");
    assert!(doc["event_id"].as_i64().is_some());
    assert_eq!(starts(&dir), 2);

    // Several agents: each outcome, and exit 1 when any failed.
    let run = agentctl(&app, &["watcher", "start", "--ensure", "i-w", "i-nope"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("i-w: already running"), "{run:?}");
    assert!(run.stderr.contains("error: No such agent. (404 agent_not_found)"), "{run:?}");
    assert!(run.stderr.contains("1 of 2 agents did not start"), "{run:?}");
    // With --json: one document per agent and line, the daemon's answer or its problem.
    let run = agentctl(&app, &["watcher", "status", "--json", "i-w", "i-nope"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let docs = run.json_lines();
    assert_eq!(docs.len(), 2, "{run:?}");
    assert_eq!(docs[0]["watcher"]["agent-status"], "active");
    assert_eq!((docs[1]["status"].as_u64(), docs[1]["error_code"].as_str()), (Some(404), Some("agent_not_found")));

    // The audit trail of all that, newest first.
    let run = agentctl(&app, &["events", "i-w"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.row("TIME"), ["TIME", "ACTION", "REQUESTER", "OUTCOME", "HTTP", "DURATION"]);
    let rows: Vec<&str> = run.stdout.lines().skip(1).collect();
    // Watcher state changes are audited too (`observe`); the latest command is the rejected start.
    let restart = rows.iter().find(|r| r.contains(" restart ")).unwrap_or_else(|| panic!("{run:?}"));
    assert!(
        restart.contains(&app.admin.access_key) && restart.contains(" succeeded ") && restart.contains(" 200 "),
        "{run:?}"
    );
    assert!(restart.trim_end().ends_with("ms"), "{run:?}");
    assert!(rows.iter().any(|r| r.contains(" stop ") && r.contains(" rejected ") && r.contains(" 409 ")), "{run:?}");
    assert!(rows.iter().any(|r| r.contains(" observe ") && r.contains(" supervisor ")), "{run:?}");
    let run = agentctl(&app, &["events", "i-w", "--limit", "2", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    assert_eq!(doc["agent_id"], "i-w");
    assert_eq!(doc["events"].as_array().unwrap().len(), 2);
    let doc = agentctl(&app, &["events", "i-w", "--json"]).await.json();
    let restart = doc["events"].as_array().unwrap().iter().find(|e| e["action"] == "restart").unwrap();
    assert_eq!((restart["outcome"].as_str(), restart["http_status"].as_u64()), (Some("succeeded"), Some(200)));
}

#[actix_rt::test]
async fn sync_and_recalculate_summarise_the_daemons_report() {
    let app = TestApp::spawn().await;
    app.add_agent("i-s").await;
    app.add_agent("i-lost").await;
    app.sql("UPDATE agents SET status = 'LOST' WHERE id = 'i-lost'").await;

    let run = agentctl(&app, &["sync", "i-s"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with("i-s: no kernels to sync (no RPC sent)\n  status ALIVE, scaling group default"),
        "{run:?}"
    );
    let run = agentctl(&app, &["sync", "--json", "i-s"]).await;
    let doc = run.json();
    assert_eq!((doc["agent"]["id"].as_str(), doc["rpc_sent"].as_bool()), (Some("i-s"), Some(false)));
    let run = agentctl(&app, &["sync", "i-nope"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.starts_with("error: No such agent. (404 agent_not_found): "), "{run:?}");

    app.add_running_kernels("i-s", 2).await;
    let run = agentctl(&app, &["recalculate"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("recalculated usage of 2 agents in "), "{run:?}");
    assert!(run.stdout.contains("(1 attempt, run 1)"), "{run:?}");
    assert!(run.stdout.contains("  updated 1: i-s\n"), "{run:?}");
    assert!(run.stdout.contains("  reset   0\n"), "{run:?}");
    assert!(run.stdout.contains("  skipped 1\n    i-lost (LOST): "), "{run:?}");
    assert!(run.stdout.contains("  access keys: 1 updated"), "{run:?}");

    let run = agentctl(&app, &["recalculate", "--json"]).await;
    let doc = run.json();
    assert_eq!(doc["agents_updated"], serde_json::json!(["i-s"]));
    assert_eq!(doc["agents_skipped"][0]["agent_id"], "i-lost");
    assert_eq!(doc["run"], 2);
}

#[actix_rt::test]
async fn bulk_restart_runs_over_a_scaling_group_and_fails_when_one_agent_fails() {
    let app = TestApp::spawn().await;
    let mut dirs = Vec::new();
    let mut watchers = Vec::new();
    for id in ["g-1", "g-2", "g-3"] {
        let (w, d) = agent_with_watcher(&app, id, "gpu").await;
        watchers.push(w);
        dirs.push(d);
    }
    let (_other, other_dir) = agent_with_watcher(&app, "x-other", "default").await;

    let run = agentctl(&app, &["restart", "--scaling-group", "gpu", "--max-parallel", "2"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.row("AGENT"), ["AGENT", "OUTCOME", "HTTP", "ELAPSED", "DETAIL"]);
    for id in ["g-1", "g-2", "g-3"] {
        let row = run.row(id);
        assert_eq!(row[1..3], ["restarted", "200"], "{row:?}");
        assert!(row[4].starts_with("event "), "{row:?}");
    }
    assert!(run.stdout.contains("restart of 3 agents: 3 ok, 0 failed"), "{run:?}");
    // Not a terminal: one plain progress line per agent.
    assert_eq!(run.stderr.lines().filter(|l| l.contains("] restart g-")).count(), 3, "{run:?}");
    assert!(!run.stderr.contains('\r'), "{run:?}");
    assert!(dirs.iter().all(|d| starts(d) == 2), "each agent of the group restarted once");
    assert_eq!(starts(&other_dir), 1, "the other group was left alone");

    // --ensure makes a bulk stop idempotent.
    assert_eq!(agentctl(&app, &["stop", "--scaling-group", "gpu"]).await.code, 0);
    let run = agentctl(&app, &["stop", "--scaling-group", "gpu", "--ensure", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let doc = run.json();
    assert_eq!((doc["succeeded"].as_u64(), doc["failed"].as_u64()), (Some(3), Some(0)));
    assert!(
        doc["results"].as_array().unwrap().iter().all(|r| r["outcome"] == "already stopped" && r["http_status"] == 409)
    );
    assert_eq!(agentctl(&app, &["start", "--scaling-group", "gpu"]).await.code, 0);

    // One agent of the group has a watcher nobody answers for.
    agent_with_dead_watcher(&app, "g-2b", "gpu").await;
    let run = agentctl(&app, &["restart", "--scaling-group", "gpu", "--max-parallel", "2"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let dead = run.row("g-2b");
    assert_eq!(dead[1..3], ["failed", "502"], "{dead:?}");
    assert!(dead[4].starts_with("watcher_unreachable"), "{dead:?}");
    assert_eq!(run.row("g-3")[1], "restarted");
    assert!(run.stdout.contains("restart of 4 agents: 3 ok, 1 failed"), "{run:?}");
    assert!(run.stderr.contains("error: 1 of 4 agents in scaling group \"gpu\" did not restart"), "{run:?}");

    // --rolling: one at a time, in order, and nothing after the first failure.
    let before: Vec<usize> = dirs.iter().map(starts).collect();
    let run = agentctl(&app, &["restart", "--scaling-group", "gpu", "--rolling", "--json"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let doc = run.json();
    let outcomes: Vec<(&str, &str)> = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["agent_id"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(outcomes, [("g-1", "restarted"), ("g-2", "restarted"), ("g-2b", "failed"), ("g-3", "not run")]);
    assert_eq!(doc["results"][2]["error_code"], "watcher_unreachable");
    let after: Vec<usize> = dirs.iter().map(starts).collect();
    assert_eq!(after, [before[0] + 1, before[1] + 1, before[2]]);
}

#[actix_rt::test]
async fn credentials_are_checked_and_failures_are_clear() {
    let app = TestApp::spawn().await;

    let run = agentctl(&app, &["whoami"]).await;
    assert_eq!(
        (run.code, run.stdout.trim()),
        (0, format!("{} (superadmin) at {}", app.admin.access_key, app.url).as_str())
    );

    let wrong = Creds { access_key: app.admin.access_key.clone(), secret_key: "not-the-secret".into() };
    let run = agentctl_env(env_for(&app, &wrong), &["agents"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.starts_with("error: Credential/signature mismatch. (401 auth_failed): "), "{run:?}");
    assert!(!run.stderr.contains("not-the-secret"));

    // Flags work as well as the variables, and a plain keypair may not list agents.
    let user = app.add_keypair(false, true).await;
    let run = agentctl_env(
        vec![("BACKEND_ENDPOINT", app.url.clone())],
        &["--access-key", &user.access_key, "--secret-key", &user.secret_key, "agents", "--json"],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.json()["error_code"], "forbidden");
    assert!(run.stderr.contains("(403 forbidden)"), "{run:?}");

    let run = agentctl_env(vec![("BACKEND_ENDPOINT", app.url.clone())], &["agents"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("BACKEND_ACCESS_KEY") && run.stderr.contains("BACKEND_SECRET_KEY"), "{run:?}");
    assert!(run.stdout.is_empty());

    let port = free_port();
    let mut env = env_for(&app, &app.admin);
    env[0].1 = format!("http://127.0.0.1:{port}");
    let run = agentctl_env(env, &["agents"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr, format!("error: cannot reach http://127.0.0.1:{port}: connection refused\n"));
}

#[actix_rt::test]
async fn agents_add_set_and_rm_register_change_and_remove_an_agent_the_watcher_then_answers_for() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let script = SERVICE.replace("$LOG", &dir.path().join("service.log").display().to_string());
    let w = WatcherProcess::process_backend(TOKEN, &["sh", "-c", &script], &[]);
    assert!(w.wait_for_status("active", Duration::from_secs(5)), "the service did not come up");
    let port = w.port().to_string();

    let run = agentctl(
        &app,
        &["agents", "add", "i-ctl", "--addr", "tcp://127.0.0.1:6001", "--ip", "127.0.0.1", "--watcher-port", &port]
            .into_iter()
            .chain(["--slot", "cpu=16", "--slot", "mem=68719476736", "--scaling-group", "gpu"])
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!((run.code, run.stderr.contains("scaling_group_not_found")), (1, true), "{run:?}");
    let run = agentctl(
        &app,
        &["agents", "add", "i-ctl", "--addr", "tcp://127.0.0.1:6001", "--ip", "127.0.0.1", "--watcher-port", &port]
            .into_iter()
            .chain(["--slot", "cpu=16", "--slot", "mem=68719476736", "--scaling-group", "gpu"])
            .chain(["--create-scaling-group"])
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with(&format!(
            "registered i-ctl in scaling group gpu (ALIVE, schedulable); RPC tcp://127.0.0.1:6001; watcher \
             127.0.0.1:{port}; audit event "
        )),
        "{run:?}"
    );
    // Supervised at once: the watcher answers through the keys the registration wrote.
    assert_eq!(agentctl(&app, &["watcher", "status", "i-ctl"]).await.code, 0);

    let run = agentctl(&app, &["--json", "agents", "set", "i-ctl", "--schedulable", "false", "--slot", "cpu=8"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let body = run.json();
    assert_eq!(
        (&body["agent"]["schedulable"], &body["agent"]["available_slots"], &body["watcher_port"]),
        (&Value::Bool(false), &serde_json::json!({"cpu": "8"}), &Value::from(w.port()))
    );
    let run = agentctl(&app, &["agents", "set", "i-ctl", "--slot", "cpu"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("is not NAME=DECIMAL"), "{run:?}");
    let run = agentctl(&app, &["agents", "set", "i-ctl", "--slot", "cpu=-1"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("(400 invalid_request)") && run.stderr.contains("available_slots"), "{run:?}");

    app.add_running_kernels("i-ctl", 2).await;
    let run = agentctl(&app, &["agents", "rm", "i-ctl"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("(409 agent_has_running_kernels)"), "{run:?}");
    let run = agentctl(&app, &["agents", "rm", "i-ctl", "--force"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.starts_with("removed i-ctl (2 kernel(s) keep their rows without an agent; audit event "));
    let run = agentctl(&app, &["--json", "agents", "rm", "i-ctl"]).await;
    assert_eq!((run.code, run.json()["error_code"].as_str()), (1, Some("agent_not_found")), "{run:?}");
    let run = agentctl(&app, &["agents"]).await;
    assert_eq!(run.stdout.trim_end().lines().last(), Some("(no agents)"), "{run:?}");
}
