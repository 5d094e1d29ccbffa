//! A real `agent-watcher` process for one test, on a free 127.0.0.1 port, plus a tiny blocking HTTP client.
//!
//! ```ignore
//! let w = WatcherProcess::process_backend("s3cret", &["sleep", "1000"], &[]);
//! assert!(w.wait_for_status("active", Duration::from_secs(5)));
//! let r = w.post("/agent/stop");                  // sends the token
//! assert_eq!(r.status, 200);
//! let r = w.request("GET", "/", None);            // no token header → 401
//! ```
//!
//! API:
//! - [`WatcherProcess::process_backend`]`(token, child_cmd, extra_args)`: `--backend process` supervising
//!   `child_cmd`, with test-friendly defaults (`--start-grace-ms 300 --stop-timeout-ms 3000`, agent log in the
//!   process's own temp dir); `extra_args` come later and override them.
//! - [`WatcherProcess::systemd_backend`]`(token, path_dir, extra_args)`: `--backend systemd` with `path_dir` (holding
//!   a stand-in `systemctl`, see [`write_systemctl_stand_in`]) first in `PATH`.
//! - [`WatcherProcess::spawn`]`(args, env)`: anything else; `args` are passed after `--listen 127.0.0.1:PORT`.
//! - `.port()`, `.url()`, `.token()`, `.pid()`, `.dir()` (a temp dir owned by the process), `.log_path()` (the
//!   watcher's own stderr), `.agent_log_path()` (the child's output, process back-end with the defaults),
//!   `.get(path)`, `.post(path)` (with the token), `.request(method, path, Option<token>)`, `.agent_status()`,
//!   `.wait_for_status(status, timeout)`, `.terminate()` (SIGTERM, waits, returns the exit status), `.kill()`
//!   (SIGKILL). Dropping the value terminates the watcher (SIGTERM, then SIGKILL after 5 s).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use super::procs::free_port;

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// A blocking HTTP/1.1 request to 127.0.0.1:`port` (`Connection: close`). `token: Some("")` sends an empty header.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("X-BackendAI-Watcher-Token: {t}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response { status, headers, body: body.to_owned() }
}

pub struct WatcherProcess {
    child: Option<Child>,
    port: u16,
    token: String,
    dir: tempfile::TempDir,
}

impl WatcherProcess {
    /// Starts `agent-watcher --listen 127.0.0.1:PORT ARGS…` with extra environment, and waits until it accepts
    /// connections. `token` is what [`get`](Self::get)/[`post`](Self::post) send.
    pub fn spawn(token: &str, args: &[String], env: &[(String, String)]) -> Self {
        Self::spawn_in(tempfile::tempdir().unwrap(), None, token, args, env)
    }

    /// Starts the watcher on `fixed_port` if given (once), else on a free port (retrying on another if it is taken).
    fn spawn_in(
        mut dir: tempfile::TempDir,
        fixed_port: Option<u16>,
        token: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Self {
        let attempts = if fixed_port.is_some() { 1 } else { 3 };
        for _attempt in 0..attempts {
            let port = fixed_port.unwrap_or_else(free_port);
            let log = std::fs::File::create(dir.path().join("watcher.log")).unwrap();
            let child = Command::new(super::procs::watcher_bin())
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn agent-watcher");
            let mut me = Self { child: Some(child), port, token: token.to_owned(), dir };
            if me.wait_serving(Duration::from_secs(10)) {
                return me;
            }
            // Lost the port to someone else (or failed): retry once more on another port.
            let child = me.child.take();
            dir = std::mem::replace(&mut me.dir, tempfile::tempdir().unwrap());
            if let Some(mut c) = child {
                let _ = c.kill();
                let _ = c.wait();
            }
            eprintln!(
                "agent-watcher did not serve on {port}; log:\n{}",
                std::fs::read_to_string(dir.path().join("watcher.log")).unwrap_or_default()
            );
        }
        panic!("agent-watcher did not start");
    }

    fn wait_serving(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && c.try_wait().ok().flatten().is_some()
            {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `--backend process` supervising `child_cmd`.
    pub fn process_backend(token: &str, child_cmd: &[&str], extra_args: &[&str]) -> Self {
        Self::process_backend_at(None, token, child_cmd, extra_args)
    }

    /// As [`process_backend`](Self::process_backend), on a given port (a node coming back where it was).
    pub fn process_backend_on(token: &str, port: u16, child_cmd: &[String]) -> Self {
        let cmd: Vec<&str> = child_cmd.iter().map(String::as_str).collect();
        Self::process_backend_at(Some(port), token, &cmd, &[])
    }

    fn process_backend_at(port: Option<u16>, token: &str, child_cmd: &[&str], extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let agent_log = dir.path().join("agent.log");
        let mut args: Vec<String> = [
            "--backend",
            "process",
            "--token",
            token,
            "--start-grace-ms",
            "300",
            "--stop-timeout-ms",
            "3000",
            "--log-file",
            agent_log.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra_args.iter().map(|s| s.to_string()));
        args.push("--".into());
        args.extend(child_cmd.iter().map(|s| s.to_string()));
        Self::spawn_in(dir, port, token, &args, &[])
    }

    /// `--backend systemd` with `path_dir` first in `PATH`.
    pub fn systemd_backend(token: &str, path_dir: &Path, extra_args: &[&str]) -> Self {
        let mut args: Vec<String> = ["--backend", "systemd", "--token", token, "--start-grace-ms", "200"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let path = format!("{}:{}", path_dir.display(), std::env::var("PATH").unwrap_or_default());
        Self::spawn(token, &args, &[("PATH".into(), path)])
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The watcher's own log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("watcher.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The supervised child's output (process back-end started by [`process_backend`](Self::process_backend)).
    pub fn agent_log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn request(&self, method: &str, path: &str, token: Option<&str>) -> Response {
        http(self.port, method, path, token)
    }

    pub fn get(&self, path: &str) -> Response {
        http(self.port, "GET", path, Some(&self.token))
    }

    pub fn post(&self, path: &str) -> Response {
        http(self.port, "POST", path, Some(&self.token))
    }

    /// The `agent-status` of `GET /`.
    pub fn agent_status(&self) -> String {
        self.get("/").json()["agent-status"].as_str().unwrap_or_default().to_owned()
    }

    pub fn wait_for_status(&self, status: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.agent_status() == status {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM, then waits (10 s at most, then SIGKILL) and returns how the watcher exited.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for WatcherProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()).is_some_and(|s| s != 'Z')
        }
        Err(_) => false,
    }
}

/// Writes a stand-in `systemctl` (and `sudo`) into `dir`. Unit state lives in `dir/state` (`inactive` at first);
/// every call is appended to `dir/calls.log`. Knobs: `dir/fail-VERB` (its text goes to stderr, exit 1),
/// `dir/slow-VERB` (seconds to sleep first), `dir/state-after-start` (the state `start`/`restart` leave).
pub fn write_systemctl_stand_in(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let d = dir.display();
    let systemctl = format!(
        r#"#!/bin/sh
D='{d}'
verb="$1"; unit="$2"
echo "systemctl $verb $unit" >> "$D/calls.log"
state=$(cat "$D/state" 2>/dev/null || echo inactive)
if [ -f "$D/slow-$verb" ]; then sleep "$(cat "$D/slow-$verb")"; fi
if [ -f "$D/fail-$verb" ]; then cat "$D/fail-$verb" >&2; exit 1; fi
case "$verb" in
  is-active) echo "$state"; [ "$state" = active ] && exit 0; exit 3;;
  start|restart) cat "$D/state-after-start" 2>/dev/null > "$D/state.new" || true
                 [ -s "$D/state.new" ] || echo active > "$D/state.new"
                 mv "$D/state.new" "$D/state";;
  stop) echo inactive > "$D/state";;
  reload) [ "$state" = active ] || {{ echo "Job for $unit invalid." >&2; exit 1; }};;
  *) echo "Unknown command verb $verb." >&2; exit 1;;
esac
exit 0
"#
    );
    let sudo = format!("#!/bin/sh\necho \"sudo $*\" >> '{d}/calls.log'\n[ \"$1\" = -n ] && shift\nexec \"$@\"\n");
    for (name, text) in [("systemctl", systemctl), ("sudo", sudo)] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// `sh -c` running a service that logs `start PID` / `stop PID` to `log` and takes `secs` seconds to handle SIGTERM.
/// The moment it receives SIGTERM it appends `term PID` to [`term_signals`]`(log)`: tests wait for that line to
/// know a stop or restart has reached the service.
pub fn slow_service(log: &Path, secs: &str) -> Vec<String> {
    let l = log.display();
    let t = term_signals(log);
    let t = t.display();
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            r#"echo "start $$" >> {l}; trap 'echo "term $$" >> {t}; sleep {secs}; echo "stop $$" >> {l}; exit 0' TERM; while :; do sleep 0.05; done"#
        ),
    ]
}

/// Where a [`slow_service`] logging to `log` records each SIGTERM it receives.
pub fn term_signals(log: &Path) -> PathBuf {
    log.with_extension("term")
}

/// Waits (at most `within`) until the service logging to `log` has received its `n`th SIGTERM.
pub async fn terminated(log: &Path, n: usize, within: Duration) -> bool {
    let signals = term_signals(log);
    super::eventually(within, || {
        let signals = signals.clone();
        async move { std::fs::read_to_string(&signals).is_ok_and(|t| t.lines().count() >= n) }
    })
    .await
}

/// A process back-end watcher supervising `cmd`, once the service is up (unless `--no-autostart` is in `extra`).
pub fn running_watcher(token: &str, cmd: &[String], extra: &[&str]) -> WatcherProcess {
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let w = WatcherProcess::process_backend(token, &cmd, extra);
    if !extra.contains(&"--no-autostart") {
        assert!(w.wait_for_status("active", Duration::from_secs(5)), "the service did not come up");
    }
    w
}

/// A watcher that answers exactly like Backend.AI's (23.09), in a thread of its own: `403: Forbidden` (text) for a
/// bad token, `{"agent-status": …, "watcher-status": "active"}` with Python's `json.dumps` spacing, and
/// `{"result": "ok"}` for every command whatever the state. It records the commands it receives.
pub struct BackendAiWatcher {
    pub port: u16,
    status: std::sync::Arc<std::sync::Mutex<String>>,
    commands: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    server: actix_web::dev::ServerHandle,
}

impl BackendAiWatcher {
    pub fn start(token: &str, agent_status: &str) -> Self {
        use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
        use std::sync::{Arc, Mutex};
        type Shared = (String, Arc<Mutex<String>>, Arc<Mutex<Vec<String>>>);
        async fn handle(req: HttpRequest, data: web::Data<Shared>) -> HttpResponse {
            let (token, status, commands) = &**data;
            let ok = req.headers().get("X-BackendAI-Watcher-Token").and_then(|v| v.to_str().ok()) == Some(token);
            let reply = |content_type: &str| {
                let mut r = if ok { HttpResponse::Ok() } else { HttpResponse::Forbidden() };
                r.insert_header(("Server", "BackendAI-AgentWatcher")).content_type(content_type.to_owned());
                r
            };
            if !ok {
                return reply("text/plain; charset=utf-8").body("403: Forbidden");
            }
            let body = if req.path() == "/" {
                format!(r#"{{"agent-status": "{}", "watcher-status": "active"}}"#, status.lock().unwrap())
            } else {
                commands.lock().unwrap().push(req.path().to_owned());
                r#"{"result": "ok"}"#.to_owned()
            };
            reply("application/json; charset=utf-8").body(body)
        }
        let status = Arc::new(Mutex::new(agent_status.to_owned()));
        let commands = Arc::new(Mutex::new(Vec::new()));
        let shared: Shared = (token.to_owned(), status.clone(), commands.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                let server = HttpServer::new(move || {
                    App::new().app_data(web::Data::new(shared.clone())).default_service(web::to(handle))
                })
                .workers(1)
                .disable_signals()
                .listen(listener)
                .unwrap()
                .run();
                tx.send(server.handle()).unwrap();
                let _ = server.await;
            });
        });
        let server = rx.recv().unwrap();
        Self { port, status, commands, server }
    }

    /// What `GET /` reports from now on.
    pub fn set_status(&self, agent_status: &str) {
        *self.status.lock().unwrap() = agent_status.to_owned();
    }

    /// The command routes called so far (`/agent/start`, …), oldest first.
    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }
}

impl Drop for BackendAiWatcher {
    fn drop(&mut self) {
        let server = self.server.clone();
        std::thread::spawn(move || actix_rt::System::new().block_on(server.stop(false)));
    }
}
