//! `--register-with URL`: the watcher registers its node with the daemon's agent registry (`POST /v1/agents`,
//! signed with a Backend.AI keypair) once it listens, retrying with backoff while the daemon is away, and publishes
//! the port it listens on so the daemon never has to guess it.

use std::{collections::BTreeMap, net::IpAddr, path::Path, time::Duration};

use agent_supervisor_common::{
    Secret,
    api_client::{ApiError, Client, Method, Settings},
};
use agent_supervisor_protocol::agents::RegisterAgent;
use serde_json::{Map, Value};

/// First pause after a failed attempt; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Bound on one registration request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The agent's RPC port when `--agent-addr` is left out (Backend.AI's default).
const DEFAULT_AGENT_RPC_PORT: u16 = 6001;

/// What to register and with whom.
#[derive(Debug, Clone)]
pub struct DaemonRegistration {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: Secret,
    pub agent_id: String,
    pub advertise_ip: Option<String>,
    pub agent_addr: Option<String>,
    pub scaling_group: String,
    pub region: String,
    pub public_key: Option<String>,
    /// Empty: this machine's CPUs and memory.
    pub slots: BTreeMap<String, String>,
    pub version: Option<String>,
}

/// Reads `BACKEND_ACCESS_KEY` and `BACKEND_SECRET_KEY` from a file of `NAME=VALUE` lines (as the official client's
/// environment files are written: `export` and quotes allowed, `#` comments, other names ignored).
pub fn read_credentials_file(path: &Path) -> Result<(String, Secret), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (mut access, mut secret) = (None, None);
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("{}:{}: not NAME=VALUE", path.display(), n + 1));
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        match name.trim() {
            "BACKEND_ACCESS_KEY" => access = Some(value.to_owned()),
            "BACKEND_SECRET_KEY" => secret = Some(Secret::new(value)),
            _ => {}
        }
    }
    match (access, secret) {
        (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => Ok((a, s)),
        _ => Err(format!("{} must set BACKEND_ACCESS_KEY and BACKEND_SECRET_KEY", path.display())),
    }
}

/// The attempt failed for a reason that may pass (the daemon or its database away, a proxy in between).
fn worth_retrying(e: &ApiError) -> bool {
    match e {
        ApiError::Connect { .. } | ApiError::Timeout { .. } | ApiError::BadResponse { .. } => true,
        ApiError::Problem { status, .. } | ApiError::Http { status, .. } => {
            *status >= 500 || *status == 408 || *status == 429
        }
        ApiError::Usage(_) | ApiError::Reported(_) => false,
    }
}

/// Checks the endpoint and credentials before the watcher serves (a bad URL is a start-up error, not a retry loop).
pub fn client(reg: &DaemonRegistration) -> Result<Client, String> {
    Client::new(Settings {
        endpoint: reg.endpoint.clone(),
        access_key: reg.access_key.clone(),
        secret_key: reg.secret_key.expose().to_owned(),
        timeout: REQUEST_TIMEOUT,
    })
    .map_err(|e| e.to_string().replace("BACKEND_ENDPOINT / --endpoint", "--register-with"))
}

/// Registers the node, retrying while the daemon is away; gives up (with an error in the log) when the daemon
/// refuses the registration itself.
pub async fn register_until_done(client: Client, reg: DaemonRegistration, listen_ip: IpAddr, port: u16) {
    let body = match body(&reg, &client, listen_ip, port).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(agent.id = %reg.agent_id, error = %e, "cannot register with the daemon");
            return;
        }
    };
    let mut backoff = BACKOFF_MIN;
    let mut attempt = 1_u32;
    loop {
        match client.send_json::<Value>(Method::POST, "/v1/agents", &body).await {
            Ok(done) => {
                tracing::info!(agent.id = %reg.agent_id, daemon = %client.endpoint(), ip = ?body.ip,
                    watcher_port = port, created = done["created"].as_bool(), attempt,
                    "registered with the daemon");
                return;
            }
            Err(e) if worth_retrying(&e) => {
                tracing::warn!(agent.id = %reg.agent_id, error = %e, attempt,
                    retry_in_ms = backoff.as_millis() as u64, "cannot register with the daemon yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                attempt += 1;
            }
            Err(e) => {
                tracing::error!(agent.id = %reg.agent_id, error = %e,
                    "the daemon refused the registration; not retrying (fix the flags and restart the watcher)");
                return;
            }
        }
    }
}

async fn body(
    reg: &DaemonRegistration,
    client: &Client,
    listen_ip: IpAddr,
    port: u16,
) -> Result<RegisterAgent, String> {
    let ip = match &reg.advertise_ip {
        Some(ip) => ip.clone(),
        None if !listen_ip.is_unspecified() => listen_ip.to_string(),
        None => route_ip_towards(&client.endpoint()).await?.to_string(),
    };
    let addr = match &reg.agent_addr {
        Some(a) => a.clone(),
        None if ip.contains(':') => format!("tcp://[{ip}]:{DEFAULT_AGENT_RPC_PORT}"),
        None => format!("tcp://{ip}:{DEFAULT_AGENT_RPC_PORT}"),
    };
    let slots = match reg.slots.is_empty() {
        true => machine_slots().await,
        false => reg.slots.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect(),
    };
    Ok(RegisterAgent {
        id: reg.agent_id.clone(),
        scaling_group: reg.scaling_group.clone(),
        create_scaling_group: false,
        region: reg.region.clone(),
        addr,
        public_key: reg.public_key.clone(),
        available_slots: slots,
        architecture: std::env::consts::ARCH.to_owned(),
        version: reg.version.clone().unwrap_or_else(|| "unknown".to_owned()),
        ip: Some(ip),
        watcher_port: Some(port),
    })
}

/// The address this machine reaches the daemon from (a connected UDP socket sends nothing).
async fn route_ip_towards(endpoint: &str) -> Result<IpAddr, String> {
    let uri: actix_web::http::Uri = endpoint.parse().map_err(|e| format!("--register-with {endpoint:?}: {e}"))?;
    let host = uri.host().unwrap_or("127.0.0.1").trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let target = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| format!("cannot pick the address: {e}"))?;
    socket.connect(target).await.map_err(|e| format!("no route to {target}: {e} (give --advertise-ip)"))?;
    socket.local_addr().map(|a| a.ip()).map_err(|e| format!("cannot pick the address: {e}"))
}

/// `cpu` (the CPUs this process may use) and `mem` (bytes of RAM, from /proc/meminfo), as decimal strings.
async fn machine_slots() -> Map<String, Value> {
    let mut slots = Map::new();
    if let Ok(n) = std::thread::available_parallelism() {
        slots.insert("cpu".to_owned(), Value::String(n.get().to_string()));
    }
    if let Ok(text) = tokio::fs::read_to_string("/proc/meminfo").await
        && let Some(kib) = text
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    {
        slots.insert("mem".to_owned(), Value::String((kib * 1024).to_string()));
    }
    slots
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn credentials_files_read_as_the_official_clients_environment_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(
            &path,
            "# keypair for node registration\nexport BACKEND_ENDPOINT=http://x\nexport BACKEND_ACCESS_KEY=\"AKIAX\"\n\
             BACKEND_SECRET_KEY='s3cr=t'\n",
        )
        .unwrap();
        let (access, secret) = read_credentials_file(&path).unwrap();
        assert_eq!((access.as_str(), secret.expose()), ("AKIAX", "s3cr=t"));
        std::fs::write(&path, "BACKEND_ACCESS_KEY=AKIAX\n").unwrap();
        assert!(
            read_credentials_file(&path).unwrap_err().contains("must set BACKEND_ACCESS_KEY and BACKEND_SECRET_KEY")
        );
        std::fs::write(&path, "BACKEND_ACCESS_KEY AKIAX\n").unwrap();
        assert!(read_credentials_file(&path).unwrap_err().ends_with(":1: not NAME=VALUE"));
    }

    #[test]
    fn only_passing_failures_are_retried() {
        let problem = |status| ApiError::Problem {
            status,
            code: String::new(),
            title: String::new(),
            detail: String::new(),
            body: Box::new(Value::Null),
        };
        assert!(worth_retrying(&ApiError::Connect { url: String::new(), reason: String::new() }));
        assert!(worth_retrying(&problem(503)) && worth_retrying(&problem(429)));
        assert!(!worth_retrying(&problem(400)) && !worth_retrying(&problem(401)) && !worth_retrying(&problem(409)));
    }
}
