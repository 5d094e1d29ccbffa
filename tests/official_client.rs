//! The official Backend.AI CLI (`backend.ai-client` 23.9.10), unchanged, against a real daemon and a real
//! `agent-watcher`: it negotiates, signs its requests with a keypair from the database, and prints results and
//! errors as it does against a Backend.AI manager.
//!
//! The client lives in a virtualenv under `target/venv-bai-client`, built once with the machine's `python3`
//! (override with `AS_TEST_PYTHON`) and reused across runs. It is built in a temporary directory and renamed into
//! place, so concurrent runs never see a half-built one. `yarl` is pinned to 1.8.2: with newer yarl the client
//! fails to sign (it reads `endpoint._val.netloc`). Console scripts keep the build directory in their shebang, so
//! the CLI is run as `python -m ai.backend.cli`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use common::{
    DatabaseMode,
    supervisor::{Creds, TOKEN, TestApp},
    watcher::WatcherProcess,
};

const CLIENT: &str = "backend.ai-client==23.9.10";
const YARL: &str = "yarl==1.8.2";
const PIP_TIMEOUT: Duration = Duration::from_secs(600);
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// `target/` of this build (the test binary lives in `target/debug/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn python_in(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

async fn run(mut cmd: tokio::process::Command, timeout: Duration) -> std::process::Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let what = format!("{cmd:?}");
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("cannot run {what}: {e}")),
        Err(_) => panic!("{what} did not finish within {timeout:?}"),
    }
}

async fn venv_is_usable(venv: &Path) -> bool {
    if !venv.join(".complete").exists() {
        return false;
    }
    let mut cmd = tokio::process::Command::new(python_in(venv));
    cmd.args(["-c", "import ai.backend.client, ai.backend.cli, yarl; assert yarl.__version__ == '1.8.2'"]);
    run(cmd, CLI_TIMEOUT).await.status.success()
}

/// The virtualenv with the official client, built if missing.
async fn client_venv() -> PathBuf {
    let venv = target_dir().join("venv-bai-client");
    if venv_is_usable(&venv).await {
        return venv;
    }
    let python = std::env::var("AS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let building =
        target_dir().join(format!("venv-bai-client.tmp-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg("-m").arg("venv").arg(&building);
    let out = run(cmd, PIP_TIMEOUT).await;
    assert!(out.status.success(), "{python} -m venv failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut cmd = tokio::process::Command::new(python_in(&building));
    cmd.args(["-m", "pip", "install", "--disable-pip-version-check", "-q", CLIENT, YARL]);
    let out = run(cmd, PIP_TIMEOUT).await;
    assert!(out.status.success(), "pip install {CLIENT} {YARL} failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(building.join(".complete"), format!("{CLIENT} {YARL}\n")).unwrap();
    // Another run may have won the race, or left an unusable one behind.
    if venv.exists() && !venv_is_usable(&venv).await {
        let _ = std::fs::remove_dir_all(&venv);
    }
    if std::fs::rename(&building, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    eprintln!("built {} in {:.0} s", venv.display(), started.elapsed().as_secs_f64());
    assert!(venv_is_usable(&venv).await, "the client virtualenv is not usable");
    venv
}

struct Cli {
    python: PathBuf,
    endpoint: String,
    home: tempfile::TempDir,
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Cli {
    /// `backend.ai ARGS` with the given credentials, in an empty HOME and working directory (no `.env` applies).
    async fn run(&self, creds: &Creds, args: &[&str]) -> Outcome {
        let mut cmd = tokio::process::Command::new(&self.python);
        cmd.args(["-m", "ai.backend.cli"])
            .args(args)
            .current_dir(self.home.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("LANG", "C.UTF-8")
            .env("PYTHONIOENCODING", "utf-8")
            .env("BACKEND_ENDPOINT", &self.endpoint)
            .env("BACKEND_ACCESS_KEY", &creds.access_key)
            .env("BACKEND_SECRET_KEY", &creds.secret_key);
        let out = run(cmd, CLI_TIMEOUT).await;
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).trim_end().to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).replace('\r', ""),
        }
    }
}

fn ok(o: &Outcome) -> &str {
    assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    &o.stdout
}

/// Backend.AI mode: a superadmin and its keypair made by Backend.AI's own fixture loader
/// (`backend.ai mgr fixture populate`), as an operator of a Backend.AI cluster would make one.
async fn backend_ai_fixture_keypair(app: &TestApp) -> Creds {
    let dir = tempfile::tempdir().unwrap();
    let url = url_parts(&app.db.url);
    let etcd = app.config.etcd.endpoints[0].trim_start_matches("http://").to_owned();
    let (etcd_host, etcd_port) = etcd.split_once(':').unwrap();
    let manager_toml = format!(
        "[etcd]\nnamespace = \"{ns}\"\naddr = {{ host = \"{etcd_host}\", port = {etcd_port} }}\n\n\
         [db]\ntype = \"postgresql\"\naddr = {{ host = \"{host}\", port = {port} }}\nname = \"{name}\"\n\
         user = \"{user}\"\npassword = \"unused\"\n\n[manager]\nrpc-auth-manager-keypair = \"manager.key_secret\"\n\
         ipc-base-path = \"{ipc}\"\n\n[docker-registry]\nssl-verify = false\n\n[logging]\n\n[debug]\nenabled = false\n",
        ns = app.config.etcd.namespace,
        host = url.host,
        port = url.port,
        name = url.name,
        user = url.user,
        ipc = dir.path().join("ipc").display(),
    );
    std::fs::write(dir.path().join("manager.toml"), manager_toml).unwrap();
    std::fs::write(dir.path().join("manager.key_secret"), "").unwrap();
    let (user_uuid, access_key, secret_key) =
        ("6c1a35e3-2f4d-4e71-9d8a-5b6c7d8e9f01", "AKIAFIXTURESUPERADM1", "FixtureSecretKeyOfTheSuperadmin+0123456/");
    let populate = serde_json::json!({
        "users": [{"uuid": user_uuid, "username": "fixture-admin", "email": "fixture-admin@lablup.com",
                   "password": "fixture-password", "need_password_change": false, "full_name": "Fixture Admin",
                   "description": "made by backend.ai mgr fixture populate", "status": "active",
                   "status_info": "admin-requested", "domain_name": "default", "role": "superadmin",
                   "resource_policy": "default", "sudo_session_enabled": false}],
        "keypairs": [{"user_id": "fixture-admin@lablup.com", "access_key": access_key, "secret_key": secret_key,
                      "is_active": true, "is_admin": true, "resource_policy": "default", "rate_limit": 30000,
                      "num_queries": 0, "user": user_uuid}],
    });
    let main_key =
        serde_json::json!({"__mode": "update", "users": [{"uuid": user_uuid, "main_access_key": access_key}]});
    for (file, doc) in [("keypair.json", populate), ("main-key.json", main_key)] {
        std::fs::write(dir.path().join(file), doc.to_string()).unwrap();
        let mut cmd = tokio::process::Command::new(common::backendai::python());
        cmd.args(["-m", "ai.backend.cli", "mgr", "--config", "manager.toml", "fixture", "populate", file])
            .current_dir(dir.path());
        let out = run(cmd, PIP_TIMEOUT).await;
        assert!(out.status.success(), "fixture populate {file}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The loader logs failures and still exits 0: check the keypair is there.
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = app.db.db.conn().await.unwrap();
    let found: Found = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query(format!(
            "SELECT count(*) AS n FROM keypairs k JOIN users u ON u.main_access_key = k.access_key \
             WHERE k.access_key = '{access_key}' AND u.role = 'superadmin'"
        )),
        &mut conn,
    )
    .await
    .unwrap();
    assert_eq!(found.n, 1, "backend.ai mgr fixture populate did not make the keypair");
    Creds { access_key: access_key.to_owned(), secret_key: secret_key.to_owned() }
}

struct UrlParts {
    user: String,
    host: String,
    port: u16,
    name: String,
}

/// `postgres://USER@HOST:PORT/NAME` (the test server's URLs) into its parts.
fn url_parts(url: &str) -> UrlParts {
    let rest = url.split_once("://").unwrap().1;
    let (userinfo, rest) = rest.split_once('@').unwrap();
    let (hostport, name) = rest.split_once('/').unwrap();
    let (host, port) = hostport.split_once(':').unwrap();
    UrlParts {
        user: userinfo.split(':').next().unwrap().to_owned(),
        host: host.to_owned(),
        port: port.parse().unwrap(),
        name: name.to_owned(),
    }
}

async fn the_official_cli_works_unchanged(mode: DatabaseMode) {
    let venv = client_venv().await;
    let app = TestApp::spawn_in(mode, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("service.log");
    let service = format!(
        r#"echo "start $$" >> {l}; trap 'echo "stop $$" >> {l}; exit 0' TERM; while :; do sleep 0.05; done"#,
        l = log.display()
    );
    let watcher = WatcherProcess::process_backend(TOKEN, &["sh", "-c", &service], &[]);
    assert!(watcher.wait_for_status("active", Duration::from_secs(5)));
    app.add_agent("i-cli").await;
    app.register_watcher("i-cli", watcher.port()).await;

    let cli = Cli { python: python_in(&venv), endpoint: app.url.clone(), home: tempfile::tempdir().unwrap() };
    let admin = &match mode {
        DatabaseMode::Standalone => app.admin.clone(),
        DatabaseMode::BackendAi => backend_ai_fixture_keypair(&app).await,
    };

    let status = cli.run(admin, &["admin", "watcher", "status", "i-cli"]).await;
    // The watcher's object comes through in the watcher's own key order, Backend.AI's two keys first, then our
    // watcher's extra keys (backend, pid, since, ...).
    let printed = ok(&status);
    assert!(
        printed.starts_with(
            "OrderedDict([('agent-status', 'active'), ('watcher-status', 'active'), ('backend', 'process')"
        ),
        "{printed}"
    );
    assert_eq!(status.stderr, "", "nothing on stderr");

    for (cmd, state) in [("agent-stop", "inactive"), ("agent-start", "active"), ("agent-restart", "active")] {
        let o = cli.run(admin, &["admin", "watcher", cmd, "i-cli"]).await;
        assert_eq!(ok(&o), "OrderedDict([('result', 'ok')])", "{cmd}");
        let s = cli.run(admin, &["admin", "watcher", "status", "i-cli"]).await;
        assert!(ok(&s).starts_with(&format!("OrderedDict([('agent-status', '{state}')")), "after {cmd}: {}", s.stdout);
    }

    // Errors are printed as for a Backend.AI manager: status line, title, message; exit 1.
    let o = cli.run(admin, &["admin", "watcher", "agent-start", "i-cli"]).await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("✘ BackendAPIError: 409 Conflict"), "{}", o.stderr);
    assert!(o.stderr.contains("The agent is already running."), "{}", o.stderr);
    assert!(o.stderr.contains("➜ Message: "), "{}", o.stderr);
    assert_eq!(o.stdout, "");

    let o = cli.run(admin, &["admin", "watcher", "status", "i-nope"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("✘ BackendAPIError: 404 Not Found") && o.stderr.contains("No such agent."),
        "{}",
        o.stderr
    );

    // A wrong secret key: 401, and the secret is not echoed.
    let wrong =
        Creds { access_key: admin.access_key.clone(), secret_key: "Wrong/SecretKey+0000000000000000000000000".into() };
    let o = cli.run(&wrong, &["admin", "watcher", "status", "i-cli"]).await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("✘ BackendAPIError: 401 Unauthorized"), "{}", o.stderr);
    assert!(
        o.stderr.contains("Credential/signature mismatch.") && o.stderr.contains("➜ Message: Signature mismatch"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains(&wrong.secret_key) && !o.stderr.contains(&admin.secret_key));

    // A valid keypair without superadmin rights: 403.
    let user = app.add_keypair(false, true).await;
    let o = cli.run(&user, &["admin", "watcher", "agent-restart", "i-cli"]).await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("✘ BackendAPIError: 403 Forbidden") && o.stderr.contains("superadmin privilege required"),
        "{}",
        o.stderr
    );

    // Usage recalculation (the CLI ignores the reply and always exits 0; errors go to stderr).
    let o = cli.run(admin, &["admin", "resource", "recalculate-usage"]).await;
    assert_eq!(ok(&o), "Resource allocation is re-calculated.");
    assert_eq!(o.stderr, "");
    let o = cli.run(&user, &["admin", "resource", "recalculate-usage"]).await;
    assert!(o.stderr.contains("✘ BackendAPIError: 403 Forbidden"), "{}", o.stderr);

    // Every command the CLI ran is audited under the admin's access key; the refused ones are not.
    let (status, body) = app.get("/v1/agents/i-cli/events?limit=100").await;
    assert_eq!(status, 200);
    // (`observe` rows are the supervisor's own notes of state changes it saw.)
    let events: Vec<_> = body["events"].as_array().unwrap().iter().filter(|e| e["action"] != "observe").collect();
    let actions: Vec<&str> = events.iter().rev().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["stop", "start", "restart", "start"], "{body}");
    assert!(events.iter().all(|e| e["requester"] == admin.access_key.as_str()), "{body}");
}

common::in_both_modes!(the_official_cli_works_unchanged);
