//! Real service processes owned by one test: a private etcd and a private PostgreSQL that a test may stop and
//! restart, a PostgreSQL proxy to cut, and a free-port helper. Everything binds 127.0.0.1 only.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agent_supervisor::cli::dev;

/// This repository (where `scripts/` and `tests/` are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `agent-watcher` binary of this build. It belongs to its own crate, so cargo builds it beside the daemon's
/// binaries (`cargo build --workspace --bins`, which `scripts/test` runs) but gives the daemon's tests no
/// `CARGO_BIN_EXE_` variable for it.
pub fn watcher_bin() -> PathBuf {
    let daemon = PathBuf::from(env!("CARGO_BIN_EXE_agent-supervisor"));
    let watcher = daemon.with_file_name("agent-watcher");
    assert!(
        watcher.exists(),
        "{} is missing: build it with `cargo build --workspace --bins` (scripts/test does)",
        watcher.display()
    );
    watcher
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A blocking `GET` (HTTP/1.0) with extra headers; the whole answer, head and body ("" if nothing answered).
pub fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// Waits until etcd's `/health` says it has a leader and serves requests.
fn wait_healthy(port: u16, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.contains("\"health\":\"true\"") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// An etcd server of the test's own, so that the test can stop and restart it without disturbing others.
pub struct PrivateEtcd {
    pub client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateEtcd {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut me = Self { client_port: free_port(), peer_port: free_port(), dir, child: None };
        me.restart();
        me
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts (again) on the same ports and data directory.
    pub fn restart(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "private", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("private={peer}"), "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd binary (package etcd-server) is required; scripts/test installs it");
        self.child = Some(child);
        assert!(wait_for_port(self.client_port, Duration::from_secs(10)), "private etcd did not start");
        assert!(wait_healthy(self.client_port, Duration::from_secs(10)), "private etcd did not become healthy");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `redis-server` of the test's own (Debian's package), on 127.0.0.1, nothing persisted, optionally with a
/// password; the test may stop and start it on the same port.
pub struct PrivateRedis {
    pub port: u16,
    password: Option<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start(password: Option<&str>) -> Self {
        let mut me = Self { port: free_port(), password: password.map(str::to_owned), child: None };
        me.restart();
        me
    }

    /// `redis://[:password@]127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"]);
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (package redis-server) is required; scripts/test installs it");
        self.child = Some(child);
        assert!(wait_for_port(self.port, Duration::from_secs(10)), "private redis-server did not start");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs one command with `redis-cli` and returns its output (raw), e.g. `cli(&["GET", "k"])`.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"]);
        if let Some(p) = &self.password {
            cmd.env("REDISCLI_AUTH", p);
        }
        let out = cmd.args(args).output().expect("redis-cli (package redis-tools) is required");
        assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// Every `keypair.*` key with its value, sorted.
    pub fn concurrency_keys(&self) -> Vec<(String, String)> {
        let keys = self.cli(&["--scan", "--pattern", "keypair.*"]);
        let mut keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        keys.sort_unstable();
        keys.into_iter().map(|k| (k.to_owned(), self.cli(&["GET", k]))).collect()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL server of the test's own (the system's `initdb`/`pg_ctl`, as the `postgres` account when the tests
/// run as root, which PostgreSQL refuses to run as), so that the test can stop and start it.
pub struct PrivatePostgres {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let bin = dev::find_pg_bin().expect("PostgreSQL (package postgresql) is required; scripts/test installs it");
        let dir = tempfile::tempdir().unwrap();
        let me = Self { port: free_port(), bin, dir };
        if dev::running_as_root() {
            let chowned = Command::new("chown").arg("postgres").arg(me.dir.path()).status().unwrap();
            assert!(chowned.success(), "cannot hand {} to the postgres account", me.dir.path().display());
        }
        let out = me
            .tool("initdb")
            .arg("-D")
            .arg(me.data_dir())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
            me.port,
            me.dir.path().display()
        );
        let mut file = std::fs::OpenOptions::new().append(true).open(me.data_dir().join("postgresql.conf")).unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        me.start_again();
        me
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn tool(&self, name: &str) -> Command {
        dev::pg_command(&self.bin, name, dev::running_as_root())
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        let log = self.dir.path().join("server.log");
        self.tool("pg_ctl").arg("-D").arg(self.data_dir()).arg("-l").arg(log).args(args).output().unwrap()
    }

    /// Starts the server (again) on the same port and data, and waits until it accepts connections.
    pub fn start_again(&self) {
        let out = self.pg_ctl(&["-w", "-t", "60", "start"]);
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        assert!(out.status.success(), "pg_ctl start failed: {}\n{log}", String::from_utf8_lossy(&out.stderr));
    }

    /// A fast shutdown, as `systemctl stop postgresql` does: open sessions are ended, the server exits.
    pub fn stop(&self) {
        let out = self.pg_ctl(&["-m", "fast", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}

/// A TCP proxy to PostgreSQL that a test can cut (every connection dropped, new ones refused) and restore, to
/// see how the daemon behaves when its database goes away and comes back.
pub struct TcpProxy {
    pub port: u16,
    target: String,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    up: bool,
    epoch: u64,
}

impl TcpProxy {
    /// `admin_url` names the target (`postgres://user@host:port/db`).
    pub fn start(admin_url: &str) -> Self {
        let hostport =
            admin_url.split('@').nth(1).and_then(|r| r.split('/').next()).unwrap_or("127.0.0.1:5432").to_owned();
        Self::to(&hostport)
    }

    /// A proxy to `host:port` (an etcd endpoint's, say).
    pub fn to(hostport: &str) -> Self {
        let hostport = hostport.to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProxyState { up: true, epoch: 0 }));
        let st = state.clone();
        let target = hostport.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (up, epoch) = {
                    let s = st.lock().unwrap();
                    (s.up, s.epoch)
                };
                if !up {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let st = st.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
                        loop {
                            let cut = {
                                let s = st.lock().unwrap();
                                !s.up || s.epoch != epoch
                            };
                            if cut {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            match std::io::Read::read(&mut from, &mut buf) {
                                Ok(0) => {
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                                Ok(n) => {
                                    if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => {
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                            }
                        }
                    });
                }
            }
        });
        Self { port, target: hostport, state }
    }

    /// The same URL, through the proxy.
    pub fn rewrite(&self, url: &str) -> String {
        url.replace(&self.target, &format!("127.0.0.1:{}", self.port))
    }

    pub fn cut(&self) {
        let mut s = self.state.lock().unwrap();
        s.up = false;
        s.epoch += 1;
    }

    pub fn restore(&self) {
        self.state.lock().unwrap().up = true;
    }
}

/// A blocking HTTP/1.0 request to a daemon on 127.0.0.1:`port`, signed with `(access_key, secret_key)` when given
/// (as the official client signs); for daemons running as separate processes. Returns the status and JSON body.
pub fn http_signed(port: u16, method: &str, path: &str, keys: Option<(&str, &str)>) -> (u16, serde_json::Value) {
    try_http_signed(port, method, path, keys).unwrap_or_else(|e| panic!("{method} {path} on {port}: {e}"))
}

/// As [`http_signed`], but a connection failure (nothing listening, a reset) is an `Err`, not a panic.
pub fn try_http_signed(
    port: u16,
    method: &str,
    path: &str,
    keys: Option<(&str, &str)>,
) -> std::io::Result<(u16, serde_json::Value)> {
    try_http_signed_with_head(port, method, path, keys).map(|(status, _, body)| (status, body))
}

/// Like [`try_http_signed`], with the answer's status line and headers as they came.
pub fn try_http_signed_with_head(
    port: u16,
    method: &str,
    path: &str,
    keys: Option<(&str, &str)>,
) -> std::io::Result<(u16, String, serde_json::Value)> {
    use agent_supervisor::auth::signing::{OutgoingRequest, sign_request};
    use std::io::{Read, Write};
    let host = format!("127.0.0.1:{port}");
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\nX-BackendAI-Version: v7.20230615\r\nContent-Length: 0\r\n"
    );
    if let Some((ak, sk)) = keys {
        let req = OutgoingRequest {
            method,
            rel_url: path,
            host: &host,
            content_type: "application/json",
            api_version: "v7.20230615",
        };
        let signed = sign_request(ak, sk, &req, chrono::Utc::now());
        head.push_str(&format!("Date: {}\r\nAuthorization: {}\r\n", signed.date, signed.authorization));
    }
    head.push_str("\r\n");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(head.as_bytes())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    if status == 0 {
        return Err(std::io::Error::other(format!("no HTTP answer: {raw:?}")));
    }
    Ok((status, head.to_owned(), serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_owned()))))
}
