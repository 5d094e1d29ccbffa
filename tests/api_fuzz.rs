//! Schema-based fuzzing: schemathesis (in the shared venv, see `tests/fuzz/venv.rs`) reads `/v1/openapi.json` from a
//! real daemon and sends generated requests — positive and negative — to every operation, each signed with a
//! superadmin keypair by `tests/fuzz/hooks.py`. No response may be a 5xx, and every response must match the
//! document (status, content type, schema). Two agents exist, each under a real watcher (one running, one stopped), and
//! the hooks swap their ids into some cases, so happy paths and the watchers' answers (409s included) are reached.
//! Two more agents are there for the registration routes to change and remove; the one 5xx allowed is the
//! `502 watcher_unreachable` of one of those after the fuzzer moved its watcher address to a closed port.
//! Excluded operations: none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "fuzz/venv.rs"]
mod venv;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use agent_supervisor::{api::COMPAT_API_VERSION, auth::signing};
use common::{
    supervisor::{TOKEN, TestApp},
    watcher::WatcherProcess,
};

/// Generated cases per operation and phase.
const MAX_EXAMPLES: &str = "30";
/// The whole run must end within this (it usually takes well under a minute).
const RUN_BOUND: Duration = Duration::from_secs(110);

fn hooks_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz"))
}

/// The hooks' Python signing agrees with ours (§5.1 of the client reference, and a fresh input).
#[test]
fn the_hooks_sign_like_the_daemon() {
    let python = venv::python();
    let date = "2026-11-27T12:18:37.025313+00:00";
    let host = "127.0.0.1:18091";
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    for (method, target, ctype) in [
        ("POST", "/resource/recalculate-usage", "text/plain"),
        ("GET", "/v1/agents/i-1/events?limit=5", "application/json"),
    ] {
        let input = signing::SigningInput {
            method,
            rel_url: target,
            date,
            host,
            content_type: ctype,
            api_version: COMPAT_API_VERSION,
        };
        let expected = signing::sign(secret, &input).unwrap();
        let out = std::process::Command::new(&python)
            .current_dir(hooks_dir())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .args([
                "-c",
                "import sys, hooks; print(hooks.signature(*sys.argv[1:]))",
                secret,
                method,
                target,
                date,
                host,
                ctype,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected, "{method} {target}");
    }
    let recorded = signing::sign(
        secret,
        &signing::SigningInput {
            method: "POST",
            rel_url: "/resource/recalculate-usage",
            date,
            host,
            content_type: "text/plain",
            api_version: "v7.20230615",
        },
    )
    .unwrap();
    assert_eq!(recorded, "697466c95cb976f318f8c9823607c5096e3d846c8276c2ba1174d2461927c87c");
}

#[actix_rt::test]
async fn schemathesis_finds_no_server_error_and_no_drift() {
    // Blocking work first: once the daemon runs, its actors live on this thread.
    let python = venv::python();
    let service = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.05; done"];
    // One agent running under its watcher, one stopped (so start, stop and restart all have something to do).
    let running = WatcherProcess::process_backend(TOKEN, &service, &[]);
    let stopped = WatcherProcess::process_backend(TOKEN, &service, &["--no-autostart"]);
    assert!(running.wait_for_status("active", Duration::from_secs(5)), "the watched service did not come up");

    let app = TestApp::spawn().await;
    for (id, watcher) in [("i-fuzz-running", &running), ("i-fuzz-stopped", &stopped)] {
        app.add_agent(id).await;
        app.register_watcher(id, watcher.port()).await;
    }
    // Registrations the fuzzer may change and remove, apart from the agents it commands.
    for id in ["i-fuzz-registry-1", "i-fuzz-registry-2"] {
        app.add_agent(id).await;
        app.register_watcher(id, stopped.port()).await;
    }

    let work = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let run = tokio::process::Command::new(&python)
        .current_dir(work.path())
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", hooks_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("BACKEND_ACCESS_KEY", &app.admin.access_key)
        .env("BACKEND_SECRET_KEY", &app.admin.secret_key)
        .env("FUZZ_AGENT_IDS", "i-fuzz-running,i-fuzz-stopped")
        .env("FUZZ_REGISTRY_AGENT_IDS", "i-fuzz-registry-1,i-fuzz-registry-2")
        .env("NO_COLOR", "1")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{}/v1/openapi.json", app.url))
        .args(["--url", &app.url])
        .args([
            "--checks",
            "not_a_server_error_but_a_moved_watcher,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--workers", "2"])
        .args(["--request-timeout", "20"])
        .args(["--seed", "7"])
        .args(["--suppress-health-check", "all"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_BOUND, run)
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {RUN_BOUND:?}"))
        .unwrap();
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("schemathesis ran for {:.1} s", started.elapsed().as_secs_f64());
    let lines: Vec<&str> = report.lines().collect();
    eprintln!("{}", lines[lines.len().saturating_sub(30)..].join("\n"));
    assert!(out.status.success(), "schemathesis reported failures:\n{report}");
    assert!(!report.contains("No operations"), "{report}");
    drop((running, stopped));
}
