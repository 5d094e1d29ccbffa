//! Replicas of the daemon as separate `agent-supervisor serve` processes sharing one database and one etcd
//! namespace, with high availability on: for the failover tests (kill -9, SIGSTOP, etcd cut).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::procs::{free_port, try_http_signed};

/// What every replica of one cluster shares.
#[derive(Clone)]
pub struct ClusterSpec {
    pub db_url: String,
    pub namespace: String,
    pub watcher_token: String,
    pub lease_ttl_s: u64,
    /// `(access_key, secret_key)` of a superadmin.
    pub creds: (String, String),
    pub dir: PathBuf,
}

/// One `agent-supervisor serve` process.
pub struct Replica {
    pub id: String,
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    creds: (String, String),
}

impl ClusterSpec {
    /// Starts a replica with `etcd` as its endpoint and waits until it serves.
    pub fn start(&self, id: &str, etcd: &str) -> Replica {
        let port = free_port();
        let log = self.dir.join(format!("{id}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent-supervisor"));
        for (k, _) in std::env::vars() {
            if k.starts_with("AGENT_SUPERVISOR_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .arg("serve")
            .env("AGENT_SUPERVISOR_DATABASE_URL", &self.db_url)
            .env("AGENT_SUPERVISOR_DATABASE_RUN_MIGRATIONS", "false")
            .env("AGENT_SUPERVISOR_DATABASE_CONNECT_TIMEOUT_MS", "1000")
            .env("AGENT_SUPERVISOR_ETCD_ENDPOINTS", etcd)
            .env("AGENT_SUPERVISOR_ETCD_NAMESPACE", &self.namespace)
            .env("AGENT_SUPERVISOR_ETCD_TIMEOUT_MS", "500")
            .env("AGENT_SUPERVISOR_API_LISTEN", format!("127.0.0.1:{port}"))
            .env("AGENT_SUPERVISOR_WATCHER_TOKEN", &self.watcher_token)
            .env("AGENT_SUPERVISOR_WATCHER_PROBE_INTERVAL_S", "0")
            .env("AGENT_SUPERVISOR_METRICS_TOKEN", super::supervisor::METRICS_TOKEN)
            .env("AGENT_SUPERVISOR_HA_ENABLED", "true")
            .env("AGENT_SUPERVISOR_HA_REPLICA_ID", id)
            .env("AGENT_SUPERVISOR_HA_ADVERTISE_URL", format!("http://127.0.0.1:{port}"))
            .env("AGENT_SUPERVISOR_HA_LEASE_TTL_S", self.lease_ttl_s.to_string())
            .env("AGENT_SUPERVISOR_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("run agent-supervisor");
        let replica = Replica { id: id.to_owned(), port, child: Some(child), log, creds: self.creds.clone() };
        let up = wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && replica.view().is_some()
        });
        assert!(up, "replica {id} did not start:\n{}", replica.log());
        replica
    }
}

impl Replica {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A signed request; `None` when nothing answered.
    pub fn call(&self, method: &str, path: &str) -> Option<(u16, Value)> {
        try_http_signed(self.port, method, path, Some((&self.creds.0, &self.creds.1))).ok()
    }

    /// `GET /v1/cluster`.
    pub fn view(&self) -> Option<Value> {
        match self.call("GET", "/v1/cluster") {
            Some((200, v)) => Some(v),
            _ => None,
        }
    }

    pub fn role(&self) -> Option<String> {
        self.view().and_then(|v| v["role"].as_str().map(str::to_owned))
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// SIGKILL, and reaped.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        }
        self.kill9();
    }
}

/// Polls `ok` until it holds or `timeout` passes (for states the processes reach by themselves).
pub fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The replicas that say they lead, with the epoch each reports.
pub fn leaders(replicas: &[&Replica]) -> Vec<(String, i64)> {
    replicas
        .iter()
        .filter_map(|r| r.view())
        .filter(|v| v["role"] == "leader")
        .map(|v| (v["replica_id"].as_str().unwrap_or_default().to_owned(), v["epoch"].as_i64().unwrap_or(0)))
        .collect()
}

/// Waits until exactly one of `replicas` leads and every other one follows it; returns the leader's index.
pub fn one_leader(replicas: &[&Replica], within: Duration) -> Option<usize> {
    let mut found = None;
    wait_until(within, || {
        let views: Vec<Option<Value>> = replicas.iter().map(|r| r.view()).collect();
        let leading: Vec<usize> =
            (0..views.len()).filter(|i| views[*i].as_ref().is_some_and(|v| v["role"] == "leader")).collect();
        let [i] = leading[..] else { return false };
        let id = &replicas[i].id;
        let agreed = views.iter().enumerate().all(|(j, v)| {
            j == i || v.as_ref().is_some_and(|v| v["role"] == "follower" && v["leader"]["replica_id"] == id.as_str())
        });
        if agreed {
            found = Some(i);
        }
        agreed
    });
    found
}
