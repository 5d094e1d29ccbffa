#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `agent-supervisor dev` end to end: the real binary brings up its private PostgreSQL, etcd, agent-watchers with
//! stand-in agents and the daemon; the admin API works against them; Ctrl-C stops everything; a second run reuses
//! the data directory; a busy port is refused before anything starts.

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The ports of one stack.
#[derive(Clone, Copy)]
struct Ports {
    api: u16,
    pg: u16,
    etcd: u16,
    etcd_peer: u16,
}

impl Ports {
    fn free() -> Self {
        Self { api: free_port(), pg: free_port(), etcd: free_port(), etcd_peer: free_port() }
    }
}

/// A data directory PostgreSQL (run as `postgres` when the tests run as root) can reach.
fn data_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("as-dev-test").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A running `agent-supervisor dev`, its output collected line by line.
struct Dev {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Dev {
    fn start(dir: &Path, ports: Ports) -> Self {
        Self::start_with(dir, ports, &[])
    }

    fn start_with(dir: &Path, ports: Ports, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent-supervisor"))
            .arg("dev")
            .args(extra)
            .arg("--data-dir")
            .arg(dir)
            .args(["--port", &ports.api.to_string(), "--pg-port", &ports.pg.to_string()])
            .args(["--etcd-port", &ports.etcd.to_string(), "--etcd-peer-port", &ports.etcd_peer.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Self { child, stdout, stderr }
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }

    /// Waits for the banner; returns all of stdout once it is complete.
    fn wait_ready(&mut self, ports: Ports) -> String {
        let needle = format!("is up at http://127.0.0.1:{}", ports.api);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            {
                let out = self.stdout.lock().unwrap();
                if out.iter().any(|l| l.contains(&needle)) && out.iter().any(|l| l.contains("Ctrl-C stops everything"))
                {
                    return out.join("\n");
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("dev exited ({status}) before it was ready\n{}", self.output());
            }
            assert!(Instant::now() < deadline, "dev not ready within {START_TIMEOUT:?}\n{}", self.output());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Ctrl-C; asserts a clean exit within the bound.
    fn interrupt(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let started = Instant::now();
        let status = self.wait_exit(STOP_TIMEOUT);
        let status = status.unwrap_or_else(|| panic!("dev did not stop within {STOP_TIMEOUT:?}\n{}", self.output()));
        assert!(status.success(), "dev exited with {status} after SIGINT\n{}", self.output());
        assert!(self.stderr.lock().unwrap().iter().any(|l| l.contains("everything stopped")), "{}", self.output());
        eprintln!("dev stopped in {:?}", started.elapsed());
    }
}

impl Drop for Dev {
    /// A failed test still stops the stack it started.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            if self.wait_exit(STOP_TIMEOUT).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A signed request to the stack's API.
fn http(method: &str, port: u16, path: &str, keys: &(String, String)) -> (u16, Value) {
    common::procs::http_signed(port, method, path, Some((&keys.0, &keys.1)))
}

/// The value printed after `label` on the banner line that contains it.
fn banner_value(out: &str, label: &str) -> String {
    let line = out.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no {label:?} in\n{out}"));
    line.split(label).nth(1).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// Processes that belong to the stack: anything whose command line names the data directory (postgres, etcd,
/// watchers) or a stand-in agent on one of the stack's RPC addresses.
fn stack_processes(dir: &Path, agent_addrs: &[String]) -> Vec<String> {
    let dir = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        let standin = cmd.contains("standin-agent") && agent_addrs.iter().any(|a| cmd.contains(a.as_str()));
        if cmd.contains(&dir) || standin {
            found.push(format!("{name}: {cmd}"));
        }
    }
    found
}

fn assert_nothing_left(dir: &Path, agent_addrs: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = stack_processes(dir, agent_addrs);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left behind:\n{}", left.join("\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count_rows(pg_port: u16) -> (i64, i64, i64, i64) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let url = format!("postgres://postgres@127.0.0.1:{pg_port}/agent_supervisor");
        let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
        let mut count = async |table: &str| -> i64 {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!("(SELECT count(*) FROM {table})")))
                .get_result(&mut conn)
                .await
                .unwrap()
        };
        (count("agents").await, count("sessions").await, count("kernels").await, count("keypairs").await)
    })
}

/// Checks the admin API against the stack; returns the agents' RPC addresses (`127.0.0.1:PORT`).
fn exercise_api(port: u16, keys: &(String, String)) -> Vec<String> {
    let (status, body) = http("GET", port, "/v1/agents", keys);
    assert_eq!(status, 200, "{body}");
    let agents = body["agents"].as_array().unwrap();
    let ids: Vec<&str> = agents.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["i-dev-1", "i-dev-2", "i-dev-3"], "{body}");
    for a in agents {
        assert_eq!(a["status"], "ALIVE");
        assert_eq!(a["region"], "local");
        assert_eq!(a["available_slots"]["cpu"], "16");
        // The seeded running kernels (2 + 4 CPUs) occupy it, as recalculated after seeding.
        assert_eq!(a["occupied_slots"]["cpu"], "6", "{a}");
        // Registered by its own watcher through the API, not inserted: the audit trail says who and how.
        let id = a["id"].as_str().unwrap();
        let (status, events) = http("GET", port, &format!("/v1/agents/{id}/events?limit=100"), keys);
        assert_eq!(status, 200, "{events}");
        let registrations: Vec<&Value> =
            events["events"].as_array().unwrap().iter().filter(|e| e["action"] == "register").collect();
        assert!(!registrations.is_empty(), "{events}");
        assert_eq!(registrations[0]["requester"], keys.0.as_str(), "{events}");
    }

    let (status, body) = http("GET", port, "/resource/watcher?agent_id=i-dev-1", keys);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent-status"], "active", "{body}");

    let (status, body) = http("POST", port, "/v1/agents/i-dev-2/restart", keys);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["command"], "restart", "{body}");

    let (status, body) = http("POST", port, "/v1/agents/i-dev-3/sync", keys);
    assert_eq!(status, 200, "{body}");
    assert!(body["kernels_sent"].as_u64().unwrap() > 0, "{body}");
    assert_eq!(body["rpc_sent"], true, "{body}");

    agents.iter().map(|a| a["addr"].as_str().unwrap().trim_start_matches("tcp://").to_owned()).collect()
}

#[test]
fn dev_runs_a_working_cluster_stops_cleanly_on_ctrl_c_and_reuses_its_data_dir() {
    let dir = data_dir();
    let ports = Ports::free();

    // Cold start: a new cluster, seeded.
    let started = Instant::now();
    let mut dev = Dev::start(dir.path(), ports);
    let out = dev.wait_ready(ports);
    eprintln!("cold start took {:?}", started.elapsed());
    let access_key = banner_value(&out, "access key ");
    let secret_key = banner_value(&out, "secret key ");
    assert!(access_key.starts_with("AKIA") && access_key.len() == 20, "{out}");
    assert_eq!(secret_key.len(), 40, "{out}");
    assert!(out.contains(&format!("export BACKEND_ENDPOINT=http://127.0.0.1:{}", ports.api)), "{out}");
    assert!(out.contains(&format!("BACKEND_ACCESS_KEY={access_key} BACKEND_SECRET_KEY={secret_key}")), "{out}");
    assert!(out.contains("agentctl watcher restart i-dev-1"), "{out}");
    assert!(out.contains("new data directory"), "{out}");

    let unsigned = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{}/v1/agents", ports.api)])
        .output();
    if let Ok(o) = unsigned {
        assert_eq!(String::from_utf8_lossy(&o.stdout), "401", "the admin API refuses unsigned requests");
    }
    let addrs = exercise_api(ports.api, &(access_key.clone(), secret_key.clone()));
    assert_eq!(count_rows(ports.pg), (3, 9, 9, 1));
    dev.interrupt();
    assert_nothing_left(dir.path(), &addrs);

    // Warm start on the same directory: nothing re-created, the same keypair, no duplicates.
    let started = Instant::now();
    let mut dev = Dev::start(dir.path(), ports);
    let out = dev.wait_ready(ports);
    eprintln!("warm start took {:?}", started.elapsed());
    assert!(out.contains("reused data directory"), "{out}");
    assert_eq!(banner_value(&out, "access key "), access_key);
    assert_eq!(banner_value(&out, "secret key "), secret_key);
    assert!(!dev.output().contains("creating database"), "{}", dev.output());
    let addrs2 = exercise_api(ports.api, &(access_key.clone(), secret_key.clone()));
    assert_eq!(count_rows(ports.pg), (3, 9, 9, 1));
    dev.interrupt();
    let all: Vec<String> = addrs.into_iter().chain(addrs2).collect();
    assert_nothing_left(dir.path(), &all);
}

#[test]
fn a_port_in_use_is_named_with_its_flag_before_anything_starts() {
    for which in ["--port", "--pg-port", "--etcd-port"] {
        let dir = data_dir();
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let mut ports = Ports::free();
        match which {
            "--port" => ports.api = busy_port,
            "--pg-port" => ports.pg = busy_port,
            _ => ports.etcd = busy_port,
        }
        let started = Instant::now();
        let mut dev = Dev::start(dir.path(), ports);
        let status =
            dev.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| panic!("dev kept running\n{}", dev.output()));
        assert!(!status.success(), "{}", dev.output());
        assert!(started.elapsed() < Duration::from_secs(15));
        // Give the reader threads a moment to take the last lines.
        std::thread::sleep(Duration::from_millis(200));
        let err = dev.stderr.lock().unwrap().join("\n");
        assert!(err.contains(&format!("port {busy_port}")) && err.contains(which), "{which}: {err}");
        assert!(err.contains("already in use"), "{err}");
        assert!(!dir.path().join("pg").join("data").exists(), "nothing may be created before the port check");
        assert_nothing_left(dir.path(), &[]);
    }
}

/// A free port whose next `n - 1` ports are free too (for `--replicas`).
fn free_run(n: u16) -> u16 {
    loop {
        let p = free_port();
        if p < u16::MAX - n && (1..n).all(|i| TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
}

#[test]
fn dev_with_three_replicas_elects_one_leader_and_every_replica_serves_commands() {
    let dir = data_dir();
    let ports = Ports { api: free_run(3), ..Ports::free() };
    let mut dev = Dev::start_with(dir.path(), ports, &["--replicas", "3", "--agents", "2"]);
    let out = dev.wait_ready(ports);
    let keys = (banner_value(&out, "access key "), banner_value(&out, "secret key "));
    let endpoints: Vec<u16> = (0..3).map(|i| ports.api + i).collect();
    assert!(out.contains(&format!("agentctl --endpoint http://127.0.0.1:{},", ports.api)), "{out}");

    let views: Vec<Value> = endpoints.iter().map(|p| http("GET", *p, "/v1/cluster", &keys).1).collect();
    let leaders: Vec<&Value> = views.iter().filter(|v| v["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{views:?}");
    let epoch = &leaders[0]["epoch"];
    assert!(views.iter().all(|v| &v["epoch"] == epoch), "{views:?}");
    // The watchers registered through whichever replica they were given; every replica runs commands (the
    // followers forward them) and answers status.
    for (n, port) in endpoints.iter().enumerate() {
        let agent = format!("i-dev-{}", n % 2 + 1);
        let (status, body) = http("POST", *port, &format!("/v1/agents/{agent}/restart"), &keys);
        assert_eq!(status, 200, "{body}");
        let (status, body) = http("GET", *port, &format!("/v1/agents/{agent}/watcher"), &keys);
        assert_eq!((status, &body["watcher"]["agent-status"]), (200, &Value::from("active")), "{body}");
    }
    let (_, agents) = http("GET", ports.api, "/v1/agents", &keys);
    assert_eq!(agents["agents"][0]["occupied_slots"]["cpu"], "6", "{agents}");
    dev.interrupt();
    assert!(dev.output().contains("stopping 2 daemon replica(s)"), "{}", dev.output());
    for port in endpoints {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "a replica still listens on {port}");
    }
}
