//! `agent-watcher`: command line of the node-side watcher.

use std::{collections::BTreeMap, ffi::OsString, path::PathBuf, process::ExitCode, time::Duration};

use agent_supervisor_common::{Secret, etcd::EtcdConfig};
use clap::{CommandFactory, Parser, ValueEnum};

use crate::{
    BackendOptions, ProcessConfigTemplate, ServerOptions, TokenSource,
    backend::SystemdConfig,
    register_with::{DaemonRegistration, read_credentials_file},
    registration::Registration,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Control a systemd unit with `systemctl`.
    Systemd,
    /// Spawn and supervise the command given after `--`.
    Process,
}

#[derive(Debug, Parser)]
#[command(
    name = "agent-watcher",
    version,
    args_override_self = true,
    about = "Node-side watcher: reports and controls the agent service (wire-compatible with Backend.AI's watcher)",
    after_help = "Examples:\n  agent-watcher --backend systemd --unit backendai-agent.service --token-file /etc/agent-watcher/token\n  \
                  agent-watcher --backend process --listen 127.0.0.1:6009 --token s3cret -- /usr/bin/my-agent --flag"
)]
pub struct Cli {
    /// TOML file whose keys are the long flag names without dashes (`listen = "127.0.0.1:6009"`, `soft-reset = true`,
    /// `etcd = ["http://…"]`, `command = ["/usr/bin/agent", "--flag"]`). The command line wins over the file, the
    /// file over the environment.
    #[arg(long, env = "AGENT_WATCHER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address and port to serve on.
    #[arg(long, env = "AGENT_WATCHER_LISTEN", default_value = "0.0.0.0:6009")]
    pub listen: String,
    /// Token clients must send in X-BackendAI-Watcher-Token. Prefer --token-file or the environment (command lines
    /// are visible to every user). Without --token/--token-file the token is read from etcd
    /// (config/watcher/token) when --etcd is given; otherwise the well-known "insecure" token is accepted.
    #[arg(long, env = "AGENT_WATCHER_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// File holding the token (surrounding whitespace ignored).
    #[arg(long, env = "AGENT_WATCHER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// How the agent is controlled.
    #[arg(long, value_enum, default_value_t = BackendKind::Systemd)]
    pub backend: BackendKind,
    /// systemd back-end: the unit to control.
    #[arg(long, default_value = "backendai-agent.service")]
    pub unit: String,
    /// systemd back-end: run `sudo -n systemctl` instead of `systemctl`.
    #[arg(long)]
    pub sudo: bool,
    /// systemd back-end: how long an `is-active` answer is reused for GET / (commands invalidate it).
    #[arg(long, default_value_t = 500)]
    pub status_cache_ms: u64,
    /// systemd back-end: bound on one systemctl invocation.
    #[arg(long, default_value_t = 60_000)]
    pub systemctl_timeout_ms: u64,
    /// A start (or restart) succeeds only if the agent is still up after this long.
    #[arg(long, default_value_t = 1_000)]
    pub start_grace_ms: u64,
    /// process back-end: time between SIGTERM and SIGKILL when stopping.
    #[arg(long, default_value_t = 10_000)]
    pub stop_timeout_ms: u64,
    /// process back-end: file the agent's stdout and stderr are appended to
    /// [default: $STATE_DIRECTORY or the temp directory, agent-watcher-PORT-agent.log].
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// process back-end: do not start the agent when the watcher starts.
    #[arg(long)]
    pub no_autostart: bool,
    /// Serve POST /soft-reset (systemd: `systemctl reload`; process: SIGHUP to the agent).
    #[arg(long)]
    pub soft_reset: bool,
    /// How long a command waits for the one before it before answering 429 agent_busy.
    #[arg(long, default_value_t = 20_000)]
    pub command_wait_ms: u64,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// etcd endpoint (repeatable); enables reading the token from etcd and, with --agent-id, registration.
    #[arg(long = "etcd", env = "AGENT_WATCHER_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// etcd namespace: keys live under /sorna/NAMESPACE/.
    #[arg(long, env = "AGENT_WATCHER_NAMESPACE", default_value = "local")]
    pub namespace: String,
    /// Bound on every etcd request.
    #[arg(long, default_value_t = 2_000)]
    pub etcd_timeout_ms: u64,
    /// The node's agent id: with --etcd, nodes/agents/ID/watcher_port is written in etcd; with --register-with, the
    /// node registers itself with the daemon under this id.
    #[arg(long)]
    pub agent_id: Option<String>,
    /// The address the daemon reaches this watcher at (etcd nodes/agents/ID/ip) [default with --register-with: the
    /// --listen address, or when that is 0.0.0.0 the local address this machine reaches the daemon from].
    #[arg(long, requires = "agent_id")]
    pub advertise_ip: Option<String>,
    /// Register the node with the daemon at this URL (its admin API, http://HOST:PORT) once the watcher listens,
    /// retrying while the daemon is away. Signs with a superadmin keypair from --credentials-file or the
    /// BACKEND_ACCESS_KEY / BACKEND_SECRET_KEY environment variables.
    #[arg(long, env = "AGENT_WATCHER_REGISTER_WITH", requires = "agent_id", value_name = "URL")]
    pub register_with: Option<String>,
    /// File with BACKEND_ACCESS_KEY=… and BACKEND_SECRET_KEY=… lines (the official client's environment file).
    #[arg(long, env = "AGENT_WATCHER_CREDENTIALS_FILE", requires = "register_with")]
    pub credentials_file: Option<PathBuf>,
    /// With --register-with: the agent's RPC address [default: tcp://ADVERTISED-IP:6001].
    #[arg(long, requires = "register_with", value_name = "tcp://HOST:PORT")]
    pub agent_addr: Option<String>,
    /// With --register-with: the scaling group to join (it must exist).
    #[arg(long, requires = "register_with", default_value = "default")]
    pub scaling_group: String,
    /// With --register-with: the node's region.
    #[arg(long, requires = "register_with", default_value = "local")]
    pub region: String,
    /// With --register-with: the agent's CURVE public key (40 characters of Z85).
    #[arg(long, requires = "register_with")]
    pub agent_public_key: Option<String>,
    /// With --register-with: an available slot, NAME=DECIMAL (repeatable) [default: this machine's CPUs as `cpu`
    /// and its memory in bytes as `mem`].
    #[arg(long = "slot", requires = "register_with", value_name = "NAME=DECIMAL")]
    pub slots: Vec<String>,
    /// With --register-with: the agent's version as registered.
    #[arg(long, requires = "register_with")]
    pub agent_version: Option<String>,
    /// Log as JSON lines instead of human-readable text (the filter is read from RUST_LOG, default info).
    #[arg(long)]
    pub log_json: bool,
    /// process back-end: the agent command and its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl Cli {
    /// Checks what clap cannot and turns the flags into server options.
    pub fn into_options(self) -> Result<ServerOptions, String> {
        let ms = Duration::from_millis;
        let register_with = match &self.register_with {
            Some(endpoint) => Some(self.daemon_registration(endpoint.clone())?),
            None => None,
        };
        let backend = match self.backend {
            BackendKind::Systemd => {
                if !self.command.is_empty() {
                    return Err("a command after `--` is only used with --backend process".into());
                }
                BackendOptions::Systemd(SystemdConfig {
                    unit: self.unit,
                    sudo: self.sudo,
                    start_grace: ms(self.start_grace_ms),
                    status_cache: ms(self.status_cache_ms),
                    systemctl_timeout: ms(self.systemctl_timeout_ms),
                })
            }
            BackendKind::Process => {
                if self.command.is_empty() {
                    return Err("--backend process needs the agent command after `--`".into());
                }
                BackendOptions::Process {
                    cfg: ProcessConfigTemplate {
                        command: self.command,
                        start_grace: ms(self.start_grace_ms),
                        stop_timeout: ms(self.stop_timeout_ms),
                        log_file: self.log_file,
                    },
                    autostart: !self.no_autostart,
                }
            }
        };
        let token = match (self.token, self.token_file) {
            (Some(t), _) => TokenSource::Given(Secret::new(t)),
            (None, Some(path)) => TokenSource::File(path),
            (None, None) => TokenSource::Default,
        };
        let etcd = (!self.etcd.is_empty()).then(|| EtcdConfig {
            endpoints: self.etcd,
            namespace: self.namespace,
            timeout_ms: self.etcd_timeout_ms,
            ..EtcdConfig::default()
        });
        let registration = match (self.agent_id, etcd.is_some()) {
            (Some(agent_id), true) => Some(Registration { agent_id, advertise_ip: self.advertise_ip }),
            (Some(_), false) if register_with.is_none() => {
                return Err("--agent-id needs --etcd (to publish the watcher in etcd) or --register-with".into());
            }
            _ => None,
        };
        Ok(ServerOptions {
            listen: self.listen,
            token,
            backend,
            soft_reset: self.soft_reset,
            command_wait: ms(self.command_wait_ms),
            workers: self.workers,
            etcd,
            registration,
            register_with,
        })
    }

    fn daemon_registration(&self, endpoint: String) -> Result<DaemonRegistration, String> {
        let (access_key, secret_key) = match &self.credentials_file {
            Some(path) => read_credentials_file(path)?,
            None => match (std::env::var("BACKEND_ACCESS_KEY"), std::env::var("BACKEND_SECRET_KEY")) {
                (Ok(a), Ok(s)) if !a.is_empty() && !s.is_empty() => (a, Secret::new(s)),
                _ => {
                    return Err("--register-with needs a keypair: --credentials-file FILE or the BACKEND_ACCESS_KEY \
                                and BACKEND_SECRET_KEY environment variables"
                        .into());
                }
            },
        };
        let mut slots = BTreeMap::new();
        for raw in &self.slots {
            match raw.split_once('=') {
                Some((name, value)) if !name.trim().is_empty() && !value.trim().is_empty() => {
                    slots.insert(name.trim().to_owned(), value.trim().to_owned());
                }
                _ => return Err(format!("--slot {raw:?} is not NAME=DECIMAL (for example cpu=16)")),
            }
        }
        Ok(DaemonRegistration {
            endpoint,
            access_key,
            secret_key,
            agent_id: self.agent_id.clone().ok_or("--register-with needs --agent-id")?,
            advertise_ip: self.advertise_ip.clone(),
            agent_addr: self.agent_addr.clone(),
            scaling_group: self.scaling_group.clone(),
            region: self.region.clone(),
            public_key: self.agent_public_key.clone(),
            slots,
            version: self.agent_version.clone(),
        })
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json { builder.json().init() } else { builder.init() }
}

/// Turns the `--config` file (if any) into flags placed before the real ones, so that the real ones win.
pub fn expand_config(argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let before_dashes = argv.iter().take_while(|a| *a != "--");
    let mut path = None;
    let mut it = before_dashes.peekable();
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            path = it.peek().map(|p| PathBuf::from(p.as_os_str()));
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        }
    }
    let path = match path.or_else(|| std::env::var_os("AGENT_WATCHER_CONFIG").map(PathBuf::from)) {
        Some(p) => p,
        None => return Ok(argv),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let known: Vec<String> = Cli::command().get_arguments().filter_map(|a| a.get_long().map(str::to_owned)).collect();
    let mut flags: Vec<OsString> = Vec::new();
    let mut command: Vec<OsString> = Vec::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        let bad = |why: &str| format!("{}: key `{key}`: {why}", path.display());
        if name == "command" {
            let toml::Value::Array(items) = value else { return Err(bad("must be an array of strings")) };
            for item in items {
                let toml::Value::String(s) = item else { return Err(bad("must be an array of strings")) };
                command.push(s.into());
            }
            continue;
        }
        if name == "config" || !known.contains(&name) {
            return Err(bad("unknown key"));
        }
        let flag = OsString::from(format!("--{name}"));
        let values = match value {
            toml::Value::Array(items) => items,
            other => vec![other],
        };
        for v in values {
            match v {
                toml::Value::Boolean(true) => flags.push(flag.clone()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => flags.extend([flag.clone(), s.into()]),
                toml::Value::Integer(n) => flags.extend([flag.clone(), n.to_string().into()]),
                _ => return Err(bad("must be a string, an integer, a boolean or an array of them")),
            }
        }
    }
    let mut out = Vec::with_capacity(argv.len() + flags.len() + command.len() + 1);
    let mut rest = argv.into_iter();
    out.extend(rest.next());
    out.extend(flags);
    let rest: Vec<OsString> = rest.collect();
    let has_command = rest.iter().any(|a| a == "--");
    out.extend(rest);
    if !has_command && !command.is_empty() {
        out.push("--".into());
        out.extend(command);
    }
    Ok(out)
}

pub fn main() -> ExitCode {
    let argv = match expand_config(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("agent-watcher: configuration file: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    init_tracing(cli.log_json);
    let opts = match cli.into_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("agent-watcher: {e}");
            return ExitCode::from(2);
        }
    };
    match actix_web::rt::System::new().block_on(crate::serve(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent-watcher failed");
            ExitCode::FAILURE
        }
    }
}
