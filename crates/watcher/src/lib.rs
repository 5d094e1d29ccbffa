//! `agent-watcher`: the node-side watcher, wire-compatible with Backend.AI's (the protocol itself is
//! `agent_supervisor_protocol::watcher`). It carries only what a node needs: no database, agent RPC or actors.
//!
//! [`app`] is the HTTP surface (Backend.AI's routes), [`auth`] the token check, [`commands`] the serialisation of
//! state-changing commands, [`backend`] the two ways of controlling the agent (systemd unit or own child process),
//! [`registration`] the optional etcd side, [`register_with`] the optional registration with the daemon, [`cli`] the
//! command line. [`serve`] wires them together and runs until
//! SIGTERM/SIGINT.

pub mod app;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod commands;
pub mod register_with;
pub mod registration;

use std::{net::TcpListener, path::PathBuf, time::Duration};

use actix_web::{HttpServer, web};
use agent_supervisor_common::{
    Secret,
    etcd::{Etcd, EtcdConfig, EtcdError},
    systemd,
    workers::Workers,
};
use agent_supervisor_protocol::watcher::{Command, INSECURE_TOKEN};

use self::{
    app::AppState,
    auth::TokenCheck,
    backend::{Backend, ProcessBackend, ProcessConfig, SystemdBackend, SystemdConfig},
    commands::Commander,
    register_with::DaemonRegistration,
    registration::Registration,
};

/// How long actix gives open connections to finish on shutdown.
const HTTP_SHUTDOWN_SECS: u64 = 5;
/// How long each HTTP worker has to run a task for the systemd watchdog to be fed.
const WORKERS_ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// Where the watcher token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    Given(Secret),
    File(PathBuf),
    /// etcd `config/watcher/token` when etcd is configured, else `insecure`.
    Default,
}

#[derive(Debug, Clone)]
pub enum BackendOptions {
    Systemd(SystemdConfig),
    /// `log_file: None` picks a file under `$STATE_DIRECTORY` or the temporary directory.
    Process {
        cfg: ProcessConfigTemplate,
        autostart: bool,
    },
}

/// [`ProcessConfig`] before the log file is known.
#[derive(Debug, Clone)]
pub struct ProcessConfigTemplate {
    pub command: Vec<String>,
    pub start_grace: Duration,
    pub stop_timeout: Duration,
    pub log_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: String,
    pub token: TokenSource,
    pub backend: BackendOptions,
    pub soft_reset: bool,
    /// Bound on waiting for a running command before answering `429 agent_busy`.
    pub command_wait: Duration,
    pub workers: usize,
    pub etcd: Option<EtcdConfig>,
    pub registration: Option<Registration>,
    /// `--register-with`: register the node with the daemon once listening.
    pub register_with: Option<DaemonRegistration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("watcher token: {0}")]
    Token(String),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error("{0}")]
    Registration(String),
}

/// Runs the watcher until SIGTERM or SIGINT; then stops the agent child (process back-end) and returns.
/// Must run inside an actix system.
pub async fn serve(opts: ServerOptions) -> Result<(), ServeError> {
    let etcd = match &opts.etcd {
        Some(cfg) => Some(Etcd::connect(cfg).await?),
        None => None,
    };
    let token = resolve_token(&opts.token, etcd.as_ref()).await?;
    let daemon = match &opts.register_with {
        Some(reg) => Some((register_with::client(reg).map_err(ServeError::Registration)?, reg.clone())),
        None => None,
    };

    let listener =
        TcpListener::bind(&opts.listen).map_err(|source| ServeError::Bind { addr: opts.listen.clone(), source })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind { addr: opts.listen.clone(), source })?;

    let (backend, autostart) = match opts.backend.clone() {
        BackendOptions::Systemd(cfg) => (Backend::Systemd(SystemdBackend::new(cfg)), false),
        BackendOptions::Process { cfg, autostart } => {
            let log_file = cfg.log_file.unwrap_or_else(|| default_log_file(local.port()));
            let cfg = ProcessConfig {
                command: cfg.command,
                start_grace: cfg.start_grace,
                stop_timeout: cfg.stop_timeout,
                log_file,
            };
            let b = ProcessBackend::new(cfg);
            tracing::info!(log_file = %b.log_file().display(), "agent output goes to the log file");
            (Backend::Process(b), autostart)
        }
    };
    let state = web::Data::new(AppState {
        commander: Commander::new(backend, opts.command_wait),
        token: TokenCheck::new(&token),
        soft_reset: opts.soft_reset,
    });
    drop(token);

    let factory_state = state.clone();
    let workers = Workers::default();
    let factory_workers = workers.clone();
    let server = HttpServer::new(move || {
        factory_workers.register_current();
        app::app(factory_state.clone())
    })
    .workers(opts.workers.max(1))
    .disable_signals()
    .shutdown_timeout(HTTP_SHUTDOWN_SECS)
    .listen(listener)
    .map_err(ServeError::Http)?
    .run();
    let handle = server.handle();
    let mut server_task = actix_web::rt::spawn(server);
    tracing::info!(listen = %local, backend = state.commander.backend().name(), "agent-watcher serving");
    systemd::notify("READY=1");
    // Alive as long as every HTTP worker runs tasks (a connection alone would be accepted by the listen backlog while
    // every worker is stuck); status never waits behind commands.
    systemd::spawn_watchdog(move || {
        let workers = workers.clone();
        async move { workers.check(WORKERS_ANSWER_WITHIN, "HTTP worker").await.map_err(|e| tracing::error!("{e}")).is_ok() }
    });

    if let (Some(etcd), Some(reg)) = (etcd, opts.registration.clone()) {
        actix_web::rt::spawn(registration::register_until_done(etcd, reg, local.port()));
    }
    if let Some((client, reg)) = daemon {
        actix_web::rt::spawn(register_with::register_until_done(client, reg, local.ip(), local.port()));
    }
    if autostart {
        let state = state.clone();
        actix_web::rt::spawn(async move {
            if let Err(p) = state.commander.run(Command::Start).await {
                tracing::error!(error = %p, "the agent did not start at watcher start-up");
            }
        });
    }

    let outcome = tokio::select! {
        signal = systemd::stop_signal() => {
            tracing::info!(signal, "shutting down");
            systemd::notify("STOPPING=1");
            Ok(())
        }
        ended = &mut server_task => {
            tracing::error!("the HTTP server stopped on its own");
            match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServeError::Http(e)),
                Err(e) => Err(ServeError::Http(std::io::Error::other(e.to_string()))),
            }
        }
    };
    // The agent is stopped first: status stays answerable meanwhile. A running command gets a bounded head start.
    state.commander.shutdown(opts.command_wait).await;
    handle.stop(true).await;
    outcome
}

async fn resolve_token(source: &TokenSource, etcd: Option<&Etcd>) -> Result<String, ServeError> {
    let token = match source {
        TokenSource::Given(t) => t.expose().to_owned(),
        TokenSource::File(path) => tokio::fs::read_to_string(path)
            .await
            .map_err(|e| ServeError::Token(format!("cannot read {}: {e}", path.display())))?
            .trim()
            .to_owned(),
        TokenSource::Default => {
            let from_etcd = match etcd {
                Some(etcd) => registration::read_token(etcd).await?,
                None => None,
            };
            match from_etcd {
                Some(t) => t,
                None => {
                    tracing::warn!(
                        "NO WATCHER TOKEN CONFIGURED: accepting the well-known token \"{INSECURE_TOKEN}\"; anyone who can \
                         reach this port can stop the agent. Set --token-file or etcd config/watcher/token."
                    );
                    INSECURE_TOKEN.to_owned()
                }
            }
        }
    };
    if token.is_empty() {
        return Err(ServeError::Token("the configured token is empty".into()));
    }
    Ok(token)
}

fn default_log_file(port: u16) -> PathBuf {
    let dir = std::env::var_os("STATE_DIRECTORY").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    dir.join(format!("agent-watcher-{port}-agent.log"))
}
