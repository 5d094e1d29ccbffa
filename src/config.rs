//! Daemon configuration: one TOML file, every key overridable from the environment, validated at start-up.
//!
//! Environment overrides are named `AGENT_SUPERVISOR_<SECTION>_<KEY>` in upper case, e.g.
//! `AGENT_SUPERVISOR_DATABASE_URL` or `AGENT_SUPERVISOR_WATCHER_STATUS_TIMEOUT_MS`. List values (etcd endpoints) are
//! comma-separated. An unknown variable with that prefix is an error, so a typo never goes unnoticed.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

pub use agent_supervisor_common::{etcd::EtcdConfig, secret::Secret};
use serde::{Deserialize, Serialize};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "AGENT_SUPERVISOR_";

/// A configuration error; the message always names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid { key: key.to_owned(), message: message.into() }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub etcd: EtcdConfig,
    pub api: ApiConfig,
    pub watcher: WatcherConfig,
    pub agent_rpc: AgentRpcConfig,
    pub metrics: MetricsConfig,
    pub redis: RedisConfig,
    pub agents: AgentsConfig,
    pub ha: HaConfig,
    pub log: LogConfig,
}

/// High availability (SPEC §11): several replicas on one PostgreSQL and etcd, one leader elected in etcd.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaConfig {
    pub enabled: bool,
    /// This replica's name in the cluster [default: the host name and the API port, `host:8091`].
    pub replica_id: Option<String>,
    /// The URL other replicas forward requests to [default: `http://` + `api.listen`, with the host name when
    /// listening on every address].
    pub advertise_url: Option<String>,
    /// The leader's etcd lease; a leader that cannot renew it steps down before it expires (2..=60).
    pub lease_ttl_s: u64,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self { enabled: false, replica_id: None, advertise_url: None, lease_ttl_s: 5 }
    }
}

impl HaConfig {
    /// `ha.replica_id`, or the host name and the API port.
    pub fn resolved_replica_id(&self, api_listen: &str) -> String {
        match &self.replica_id {
            Some(id) => id.clone(),
            None => {
                let port = api_listen.rsplit(':').next().unwrap_or("8091");
                format!("{}:{port}", host_name())
            }
        }
    }

    /// `ha.advertise_url`, or `http://` + `api.listen` (the host name for an unspecified address).
    pub fn resolved_advertise_url(&self, api_listen: &str) -> String {
        if let Some(url) = &self.advertise_url {
            return url.trim_end_matches('/').to_owned();
        }
        match api_listen.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_unspecified() => format!("http://{}:{}", host_name(), addr.port()),
            _ => format!("http://{api_listen}"),
        }
    }
}

/// This machine's host name (`localhost` if it cannot be read).
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Standalone mode's agent registry and liveness (SPEC §10).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// An agent whose watcher is unreachable, or reports the service down, for longer than this becomes LOST; it is
    /// ALIVE again once seen active. Decided from the watcher probe (`watcher.probe_interval_s`).
    pub lost_after_s: u64,
    /// List etcd `nodes/agents/*` ids without a row in `GET /v1/agents?unregistered=true`.
    pub discover: bool,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self { lost_after_s: 60, discover: false }
    }
}

/// Which database the daemon runs against (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum DatabaseMode {
    /// The daemon owns its tables (Backend.AI's classic columns, in `public`), created by its migrations.
    #[serde(rename = "standalone")]
    Standalone,
    /// An existing Backend.AI database next to Backend.AI's manager: its tables are read as they are and never
    /// created, altered or migrated; only `agents.occupied_slots` is written (by Recalculate Usage).
    #[serde(rename = "backend.ai")]
    BackendAi,
}

impl DatabaseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::BackendAi => "backend.ai",
        }
    }
}

/// Where per-access-key concurrency goes in Backend.AI mode (23.09 keeps it in Redis).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`; the stat database (0) is used whatever the path says. Without it, the
    /// address and password are read from etcd `config/redis/` as Backend.AI's manager does. A secret.
    pub url: Option<Secret>,
    /// Bound on connecting and on each Redis command.
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { url: None, timeout_ms: 2_000 }
    }
}

/// `/metrics` is off unless a separate listen address or a bearer token is configured.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` on this address (no token needed there), e.g. `127.0.0.1:9091`.
    pub listen: Option<String>,
    /// Serve `/metrics` on the API address to requests with `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user[:password]@host:port/dbname`; the password part is a secret.
    pub url: Secret,
    /// `standalone` (the daemon's own tables) or `backend.ai` (a Backend.AI database, never migrated).
    pub mode: DatabaseMode,
    /// The PostgreSQL schema of the daemon's own tables (the audit trail, ...) and of its migration bookkeeping.
    pub own_schema: String,
    pub max_connections: usize,
    /// Bound on connecting and on waiting for a pooled connection.
    pub connect_timeout_ms: u64,
    /// Apply pending migrations when `serve` starts.
    pub run_migrations: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://agent_supervisor@127.0.0.1:5432/agent_supervisor"),
            mode: DatabaseMode::Standalone,
            own_schema: "agent_supervisor".to_owned(),
            max_connections: 16,
            connect_timeout_ms: 3_000,
            run_migrations: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Allowed difference between a signed request's `Date` and the daemon's clock.
    pub clock_skew_s: u64,
    /// On SIGTERM, how long in-flight requests (and so commands) may take to finish.
    pub shutdown_timeout_s: u64,
    /// HTTP worker threads, which the agent actors share (each agent lives on one); 0 means one per CPU.
    pub workers: usize,
}

impl ApiConfig {
    /// `workers`, with 0 resolved to the number of CPUs this process may use.
    pub fn resolved_workers(&self) -> usize {
        if self.workers > 0 { self.workers } else { std::thread::available_parallelism().map_or(1, |n| n.get()) }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8091".to_owned(),
            max_body_bytes: 64 * 1024,
            clock_skew_s: 15 * 60,
            shutdown_timeout_s: 30,
            workers: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatcherConfig {
    /// Token sent as `X-BackendAI-Watcher-Token`; etcd `config/watcher/token` takes precedence when set.
    pub token: Option<Secret>,
    pub status_timeout_ms: u64,
    pub command_timeout_ms: u64,
    /// Port used when etcd has no `nodes/agents/{id}/watcher_port` (Backend.AI's manager uses 6099).
    pub default_port: u16,
    /// How often each agent actor probes its watcher; 0 disables probing.
    pub probe_interval_s: u64,
    /// Commands that may wait behind the running one, per agent.
    pub queue_capacity: usize,
    /// How many watchers `GET /v1/agents?refresh=true` asks at once.
    pub refresh_concurrency: usize,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        Self {
            token: None,
            status_timeout_ms: 5_000,
            command_timeout_ms: 20_000,
            default_port: 6099,
            probe_interval_s: 30,
            queue_capacity: 16,
            refresh_concurrency: 64,
        }
    }
}

impl WatcherConfig {
    pub fn status_timeout(&self) -> Duration {
        Duration::from_millis(self.status_timeout_ms)
    }
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentRpcConfig {
    pub timeout_ms: u64,
    /// ZeroMQ certificate file holding the manager's CURVE key pair (used for agents with a public key).
    pub manager_keypair: Option<String>,
}

impl Default for AgentRpcConfig {
    fn default() -> Self {
        Self { timeout_ms: 30_000, manager_keypair: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `agent_supervisor=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Human, level: "info".to_owned() }
    }
}

impl Config {
    /// Reads `path` (if given), applies the process environment, and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_with_env(path, &vars)
    }

    /// Like [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(path: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(p) => {
                let origin = p.display().to_string();
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: origin.clone(), source })?;
                (text, origin)
            }
            None => (String::new(), "<defaults>".to_owned()),
        };
        Self::from_toml_with_env(&text, &origin, env)
    }

    pub fn from_toml_with_env(text: &str, origin: &str, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: origin.to_owned(), message: e.to_string() })?;
        apply_env(&mut table, env)?;
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::invalid(&key, e.into_inner().message().to_owned())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and formats that types alone do not express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let db = &self.database;
        let url = db.url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::invalid("database.url", "must start with postgres:// or postgresql://"));
        }
        if !(1..=1000).contains(&db.max_connections) {
            return Err(ConfigError::invalid(
                "database.max_connections",
                format!("must be 1..=1000, got {}", db.max_connections),
            ));
        }
        positive_ms("database.connect_timeout_ms", db.connect_timeout_ms)?;
        let schema = &db.own_schema;
        let identifier = schema.len() <= 63
            && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !identifier || schema == "public" || schema.starts_with("pg_") || schema == "information_schema" {
            return Err(ConfigError::invalid(
                "database.own_schema",
                format!(
                    "{schema:?} must be a lower-case identifier (a-z, 0-9, _; at most 63) other than public, \
                     information_schema and pg_*: the daemon's own tables live apart from the cluster's"
                ),
            ));
        }
        if let Some(url) = &self.redis.url {
            let u = url.expose();
            if !u.starts_with("redis://") {
                return Err(ConfigError::invalid("redis.url", "must start with redis://"));
            }
        }
        positive_ms("redis.timeout_ms", self.redis.timeout_ms)?;
        if !(2..=60).contains(&self.ha.lease_ttl_s) {
            return Err(ConfigError::invalid(
                "ha.lease_ttl_s",
                format!("must be 2..=60 seconds (etcd's shortest lease is about 2 s), got {}", self.ha.lease_ttl_s),
            ));
        }
        if let Some(id) = &self.ha.replica_id
            && (id.is_empty() || id.len() > 128 || id.contains('/') || id.chars().any(char::is_control))
        {
            return Err(ConfigError::invalid("ha.replica_id", "must be 1-128 printable characters without '/'"));
        }
        if let Some(url) = &self.ha.advertise_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::invalid("ha.advertise_url", format!("{url:?} must start with http://")));
        }
        if !(1..=86_400).contains(&self.agents.lost_after_s) {
            return Err(ConfigError::invalid(
                "agents.lost_after_s",
                format!("must be 1..=86400 seconds, got {}", self.agents.lost_after_s),
            ));
        }

        if self.etcd.endpoints.is_empty() {
            return Err(ConfigError::invalid("etcd.endpoints", "at least one endpoint is required"));
        }
        for ep in &self.etcd.endpoints {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    "etcd.endpoints",
                    format!("{ep:?} must start with http:// or https://"),
                ));
            }
        }
        let ns = &self.etcd.namespace;
        if ns.is_empty() || ns.contains('/') || ns.len() > 64 {
            return Err(ConfigError::invalid("etcd.namespace", "must be 1-64 characters without '/'"));
        }
        if self.etcd.password.is_some() && self.etcd.user.is_none() {
            return Err(ConfigError::invalid("etcd.user", "required when etcd.password is set"));
        }
        positive_ms("etcd.timeout_ms", self.etcd.timeout_ms)?;

        self.api
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::invalid("api.listen", format!("{:?} is not HOST:PORT ({e})", self.api.listen)))?;
        if let Some(listen) = &self.metrics.listen {
            listen
                .parse::<SocketAddr>()
                .map_err(|e| ConfigError::invalid("metrics.listen", format!("{listen:?} is not HOST:PORT ({e})")))?;
        }
        if self.metrics.token.as_ref().is_some_and(Secret::is_empty) {
            return Err(ConfigError::invalid("metrics.token", "must not be empty"));
        }
        if self.api.shutdown_timeout_s > 3600 {
            return Err(ConfigError::invalid("api.shutdown_timeout_s", "must be at most 3600"));
        }
        if self.api.max_body_bytes < 1024 {
            return Err(ConfigError::invalid("api.max_body_bytes", "must be at least 1024"));
        }

        let w = &self.watcher;
        if w.token.as_ref().is_some_and(Secret::is_empty) {
            return Err(ConfigError::invalid(
                "watcher.token",
                "must not be empty (omit it to use etcd or \"insecure\")",
            ));
        }
        positive_ms("watcher.status_timeout_ms", w.status_timeout_ms)?;
        positive_ms("watcher.command_timeout_ms", w.command_timeout_ms)?;
        if w.default_port == 0 {
            return Err(ConfigError::invalid("watcher.default_port", "must be 1..=65535"));
        }
        if !(1..=10_000).contains(&w.queue_capacity) {
            return Err(ConfigError::invalid(
                "watcher.queue_capacity",
                format!("must be 1..=10000, got {}", w.queue_capacity),
            ));
        }
        if !(1..=4096).contains(&w.refresh_concurrency) {
            return Err(ConfigError::invalid(
                "watcher.refresh_concurrency",
                format!("must be 1..=4096, got {}", w.refresh_concurrency),
            ));
        }
        positive_ms("agent_rpc.timeout_ms", self.agent_rpc.timeout_ms)?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::invalid("log.level", format!("{:?}: {e}", self.log.level)))?;
        Ok(())
    }
}

fn positive_ms(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 || value > 3_600_000 {
        return Err(ConfigError::invalid(key, format!("must be 1..=3600000 milliseconds, got {value}")));
    }
    Ok(())
}

/// Overlays `AGENT_SUPERVISOR_*` variables on the parsed file. The default configuration tells each key's type, so
/// `"5000"` becomes an integer for a numeric key and `"a,b"` a list for a list key.
fn apply_env(table: &mut toml::Table, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    let defaults =
        toml::Table::try_from(Config::default()).map_err(|e| ConfigError::invalid("<defaults>", e.to_string()))?;
    let sections: Vec<&String> = defaults.keys().collect();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        let rest = rest.to_ascii_lowercase();
        let Some(section) =
            sections.iter().copied().filter(|s| rest.starts_with(&format!("{s}_"))).max_by_key(|s| s.len())
        else {
            return Err(ConfigError::invalid(name, "unknown configuration variable (no such section)"));
        };
        let key = &rest[section.len() + 1..];
        let dotted = format!("{section}.{key}");
        let known = section_fields(section);
        if !known.contains(&key) {
            return Err(ConfigError::invalid(name, format!("unknown configuration variable (no key {dotted})")));
        }
        let default = defaults.get(section).and_then(|s| s.get(key));
        let value = match default {
            Some(toml::Value::Integer(_)) => raw
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| ConfigError::invalid(&dotted, format!("{name}={raw:?} is not an integer")))?,
            Some(toml::Value::Boolean(_)) => match raw.trim() {
                "true" | "1" | "yes" => toml::Value::Boolean(true),
                "false" | "0" | "no" => toml::Value::Boolean(false),
                _ => return Err(ConfigError::invalid(&dotted, format!("{name}={raw:?} is not a boolean"))),
            },
            Some(toml::Value::Array(_)) => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
            _ => toml::Value::String(raw.clone()),
        };
        let entry = table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key.to_owned(), value);
            }
            _ => return Err(ConfigError::invalid(section, "must be a table")),
        }
    }
    Ok(())
}

/// Every key of a section, including optional ones that the default leaves out.
fn section_fields(section: &str) -> &'static [&'static str] {
    match section {
        "database" => &["url", "mode", "own_schema", "max_connections", "connect_timeout_ms", "run_migrations"],
        "redis" => &["url", "timeout_ms"],
        "agents" => &["lost_after_s", "discover"],
        "ha" => &["enabled", "replica_id", "advertise_url", "lease_ttl_s"],
        "etcd" => &["endpoints", "namespace", "user", "password", "timeout_ms"],
        "api" => &["listen", "max_body_bytes", "clock_skew_s", "shutdown_timeout_s", "workers"],
        "metrics" => &["listen", "token"],
        "watcher" => &[
            "token",
            "status_timeout_ms",
            "command_timeout_ms",
            "default_port",
            "probe_interval_s",
            "queue_capacity",
            "refresh_concurrency",
        ],
        "agent_rpc" => &["timeout_ms", "manager_keypair"],
        "log" => &["format", "level"],
        _ => &[],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn err(text: &str, pairs: &[(&str, &str)]) -> String {
        match Config::from_toml_with_env(text, "test.toml", &env(pairs)) {
            Ok(_) => panic!("config {text:?} {pairs:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_are_valid_and_match_the_documented_timeouts() {
        let c = Config::from_toml_with_env("", "t", &BTreeMap::new()).unwrap();
        assert_eq!(c.watcher.status_timeout(), Duration::from_secs(5));
        assert_eq!(c.watcher.command_timeout(), Duration::from_secs(20));
        assert_eq!(c.watcher.default_port, 6099);
        assert_eq!(c.etcd.namespace, "local");
        assert_eq!(c.watcher.refresh_concurrency, 64);
    }

    #[test]
    fn sample_config_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/agent-supervisor.sample.toml");
        let c = Config::load_with_env(Some(&path), &BTreeMap::new()).unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:8091");
    }

    #[test]
    fn environment_overrides_file_with_typed_values() {
        let c = Config::from_toml_with_env(
            "[watcher]\nstatus_timeout_ms = 100\n",
            "t",
            &env(&[
                ("AGENT_SUPERVISOR_WATCHER_STATUS_TIMEOUT_MS", "250"),
                ("AGENT_SUPERVISOR_ETCD_ENDPOINTS", "http://127.0.0.1:1, http://127.0.0.1:2"),
                ("AGENT_SUPERVISOR_AGENT_RPC_TIMEOUT_MS", "900"),
                ("AGENT_SUPERVISOR_DATABASE_RUN_MIGRATIONS", "false"),
                ("AGENT_SUPERVISOR_WATCHER_TOKEN", "s3cret"),
            ]),
        )
        .unwrap();
        assert_eq!(c.watcher.status_timeout_ms, 250);
        assert_eq!(c.etcd.endpoints, vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert_eq!(c.agent_rpc.timeout_ms, 900);
        assert!(!c.database.run_migrations);
        assert_eq!(c.watcher.token.as_ref().map(Secret::expose), Some("s3cret"));
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(err("[watcher]\nstatus_timeout_ms = 0\n", &[]).starts_with("watcher.status_timeout_ms:"));
        assert!(err("[watcher]\nstatus_timeout_ms = \"soon\"\n", &[]).starts_with("watcher.status_timeout_ms:"));
        assert!(err("[database]\nmax_connections = 0\n", &[]).starts_with("database.max_connections:"));
        assert!(err("[database]\nurl = \"mysql://x\"\n", &[]).starts_with("database.url:"));
        assert!(err("[api]\nlisten = \"nowhere\"\n", &[]).starts_with("api.listen:"));
        assert!(err("[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n", &[]).starts_with("etcd.endpoints:"));
        assert!(err("[log]\nformat = \"xml\"\n", &[]).starts_with("log.format:"));
        assert!(err("", &[("AGENT_SUPERVISOR_WATCHER_DEFAULT_PORT", "http")]).starts_with("watcher.default_port:"));
        assert!(err("", &[("AGENT_SUPERVISOR_WATCHER_DEFAULT_PORT", "70000")]).starts_with("watcher.default_port:"));
        assert!(err("[watcher]\nrefresh_concurrency = 0\n", &[]).starts_with("watcher.refresh_concurrency:"));
        assert!(
            err("", &[("AGENT_SUPERVISOR_WATCHER_REFRESH_CONCURRENCY", "5000")])
                .starts_with("watcher.refresh_concurrency:")
        );
    }

    #[test]
    fn the_database_mode_and_own_schema_are_checked() {
        let c = Config::from_toml_with_env(
            "",
            "t",
            &env(&[("AGENT_SUPERVISOR_DATABASE_MODE", "backend.ai"), ("AGENT_SUPERVISOR_REDIS_URL", "redis://h:1/0")]),
        )
        .unwrap();
        assert_eq!((c.database.mode, c.database.own_schema.as_str()), (DatabaseMode::BackendAi, "agent_supervisor"));
        assert!(c.redis.url.is_some());
        assert_eq!(Config::default().database.mode, DatabaseMode::Standalone);
        assert!(err("[database]\nmode = \"backendai\"\n", &[]).starts_with("database.mode:"));
        for bad in ["public", "Agent", "pg_x", "a-b", ""] {
            let text = format!("[database]\nown_schema = \"{bad}\"\n");
            assert!(err(&text, &[]).starts_with("database.own_schema:"), "{bad}");
        }
        assert!(err("[redis]\nurl = \"http://x\"\n", &[]).starts_with("redis.url:"));
    }

    #[test]
    fn unknown_keys_and_variables_are_rejected_by_name() {
        assert!(err("[watcher]\ntimeout = 5\n", &[]).contains("timeout"));
        assert!(err("", &[("AGENT_SUPERVISOR_WATCHER_TIMEOUT", "5")]).contains("watcher.timeout"));
        assert!(err("", &[("AGENT_SUPERVISOR_NOPE_X", "5")]).contains("AGENT_SUPERVISOR_NOPE_X"));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = Config::from_toml_with_env(
            "[database]\nurl = \"postgres://u:hunter2@127.0.0.1/db\"\n[watcher]\ntoken = \"tok-abc\"\n[etcd]\nuser = \"u\"\npassword = \"pw-xyz\"\n[redis]\nurl = \"redis://:redis-pw@127.0.0.1:6379/0\"\n",
            "t",
            &BTreeMap::new(),
        )
        .unwrap();
        let shown = format!("{c:?}");
        for secret in ["hunter2", "tok-abc", "pw-xyz", "redis-pw"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
    }
}
