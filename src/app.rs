//! Assembles the daemon: database pool, migrations, etcd watcher directory, actors, and the HTTP server. Used by
//! `agent-supervisor serve` and by the end-to-end tests, so both run exactly the same thing.

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use actix::Actor;
use actix_web::{App, HttpServer, middleware, web};

use crate::{
    actors::{ActorSettings, Deps, LoadAgents, RegistryActor},
    agent_rpc::AgentRpc,
    api::{self, AppState},
    auth::Authenticator,
    config::{Config, DatabaseMode},
    db::{self, Db, queries},
    etcd::{Etcd, WatcherDirectory},
    ha::{self, Leadership},
    service::Supervisor,
    telemetry::{metrics::Metrics, systemd},
};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Db(#[from] db::DbError),
    #[error("{0}")]
    Schema(#[from] db::backendai::SchemaMismatch),
    #[error("etcd: {0}")]
    Etcd(#[from] crate::etcd::EtcdError),
    #[error("agent RPC: {0}")]
    Rpc(#[from] crate::agent_rpc::RpcError),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
}

/// A started daemon: the server future to await, and handles for tests and shutdown.
pub struct Running {
    pub server: ServerTask,
    pub handle: actix_web::dev::ServerHandle,
    pub addr: std::net::SocketAddr,
    pub supervisor: Supervisor,
    pub directory: WatcherDirectory,
}

/// Handles to a started daemon once its server future has been handed to the runtime.
#[derive(Clone)]
pub struct Handles {
    pub addr: std::net::SocketAddr,
    pub supervisor: Supervisor,
    pub directory: WatcherDirectory,
    pub server: actix_web::dev::ServerHandle,
}

impl Running {
    pub fn split(self) -> (ServerTask, Handles) {
        let handles =
            Handles { addr: self.addr, supervisor: self.supervisor, directory: self.directory, server: self.handle };
        (self.server, handles)
    }
}

/// Starts everything on the current actix system. The listener decides the address (tests pass port 0).
pub async fn start(config: &Config, listener: TcpListener) -> Result<Running, StartError> {
    let db = Db::new(&config.database)?;
    if config.database.run_migrations {
        for v in db::run_migrations(&config.database).await? {
            tracing::info!(version = %v, "applied migration");
        }
    }
    if config.database.mode == DatabaseMode::BackendAi {
        check_backend_ai_schema(&db).await?;
    }
    // With high availability the other replicas' commands may be running: a new leader marks those of older epochs.
    if !config.ha.enabled {
        match async { queries::mark_open_events_interrupted(&mut *db.conn().await?).await }.await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(count = n, "commands left open by a previous run are recorded as interrupted"),
            Err(e) => tracing::warn!(error = %e, "could not check for interrupted commands"),
        }
    }

    let etcd = Etcd::connect(&config.etcd).await?;
    if config.watcher.token.is_none() {
        tracing::info!("no watcher token configured; etcd config/watcher/token or \"insecure\" will be used");
    }
    let directory = WatcherDirectory::start(etcd, config.watcher.default_port, config.watcher.token.clone());
    if !directory.wait_synced(Duration::from_millis(config.etcd.timeout_ms)).await {
        tracing::warn!("etcd is not reachable yet; watcher lookups fail with etcd_unavailable until it is");
    }

    let settings = ActorSettings::from(config);
    let rpc = AgentRpc::new(&config.agent_rpc)?;
    let metrics = Metrics::new().map_err(|e| StartError::Metrics(e.to_string()))?;
    let ha = Leadership::from_config(config, Some(metrics.clone()));
    if ha.enabled() {
        tracing::info!(replica_id = %ha.me().replica_id, url = %ha.me().url, lease_ttl_s = config.ha.lease_ttl_s,
            "high availability: joining the election");
    }
    let deps = Deps {
        db: db.clone(),
        directory: directory.clone(),
        rpc,
        metrics: metrics.clone(),
        settings: settings.clone(),
        ha: ha.clone(),
    };
    let registry = RegistryActor::new(deps);
    let agents = registry.table();
    let homes = registry.homes();
    let registry = registry.start();
    let auth = Authenticator::new(db.clone(), config.api.clock_skew_s);
    let supervisor =
        Supervisor::new(registry.clone(), agents, homes.clone(), db.clone(), directory.clone(), settings, ha.clone());
    let state = AppState { supervisor: supervisor.clone(), metrics, metrics_token: config.metrics.token.clone(), auth };

    let addr = listener.local_addr()?;
    let max_body = config.api.max_body_bytes;
    let api_state = state.clone();
    let worker_homes = homes.clone();
    let server = HttpServer::new(move || {
        // The agent actors live on the worker threads (see `ActorHomes`).
        worker_homes.register_current();
        App::new()
            .app_data(web::Data::new(api_state.clone()))
            .app_data(web::Data::new(ha::forward::Forwarder::default()))
            .app_data(web::PayloadConfig::new(max_body))
            .app_data(api::body::BodyLimit(max_body))
            .wrap(middleware::from_fn(ha::forward::forward_to_leader))
            .wrap(middleware::from_fn(api::body::limit_declared_body))
            .wrap(middleware::from_fn(api::trace_request))
            .configure(api::routes)
    })
    .listen(listener)?;
    if let Some(metrics_listen) = &config.metrics.listen {
        // A separate address for scrapers: `/metrics` without a token, nothing else.
        let metrics_state = state.clone();
        let metrics_server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(metrics_state.clone()))
                .route("/metrics", web::get().to(|s: web::Data<AppState>| async move { api::health::render(&s) }))
                .default_service(web::to(api::problem::not_found))
        })
        .workers(1)
        .disable_signals()
        .bind(metrics_listen)?
        .run();
        tracing::info!(listen = %metrics_listen, "metrics served");
        actix_rt::spawn(metrics_server);
    }
    let workers = config.api.resolved_workers();
    let server = server.workers(workers).shutdown_timeout(config.api.shutdown_timeout_s).disable_signals().run();
    let handle = server.handle();
    // The workers start once the server runs; the agent actors are created on them.
    let server = ServerTask(actix_rt::spawn(server));
    let deadline = Instant::now() + WORKERS_START_WITHIN;
    while homes.len() < workers && Instant::now() < deadline {
        actix_rt::time::sleep(WORKERS_START_POLL).await;
    }
    if homes.len() < workers {
        tracing::warn!(
            started = homes.len(),
            workers,
            "not every HTTP worker started in time; agent actors use the ones that did"
        );
    }
    ha::election::spawn(ha.clone(), directory.etcd().clone(), db);
    match registry.send(LoadAgents).await {
        Ok(Ok(n)) => tracing::info!(agents = n, "agent actors started"),
        Ok(Err(e)) => tracing::warn!(error = %e, "agents not loaded at start-up; actors are created on first use"),
        Err(e) => tracing::warn!(error = %e, "registry did not answer"),
    }
    Ok(Running { server, handle, addr, supervisor, directory })
}

/// Backend.AI mode: the database must be Backend.AI's, with everything the daemon uses (see `db::backendai`).
async fn check_backend_ai_schema(db: &Db) -> Result<(), StartError> {
    let mut conn = db.conn().await?;
    match db::backendai::check(&mut conn).await {
        Ok(found) if found.revision == db::backendai::TESTED_REVISION => {
            tracing::info!(revision = %found.revision, "running next to a Backend.AI 23.09 database");
            Ok(())
        }
        Ok(found) => {
            tracing::warn!(
                revision = %found.revision,
                tested = db::backendai::TESTED_REVISION,
                "the Backend.AI database is at an alembic revision this daemon was not tested with; every table and \
                 column it uses is there"
            );
            Ok(())
        }
        Err(Ok(mismatch)) => Err(mismatch.into()),
        Err(Err(e)) => Err(e.into()),
    }
}

/// How long a stopping leader waits for its election task to give up the leader key.
const RESIGN_WITHIN: Duration = Duration::from_secs(2);
/// How long start-up waits for the HTTP workers (the agent actors' threads) before creating the actors.
const WORKERS_START_WITHIN: Duration = Duration::from_secs(10);
/// How often start-up looks whether every worker has registered.
const WORKERS_START_POLL: Duration = Duration::from_millis(5);

/// The running HTTP server; resolves when it has stopped.
pub struct ServerTask(actix_rt::task::JoinHandle<std::io::Result<()>>);

impl std::future::Future for ServerTask {
    type Output = std::io::Result<()>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or_else(|e| Err(std::io::Error::other(e))))
    }
}

/// `agent-supervisor serve`: runs until SIGTERM/SIGINT, then stops accepting, lets in-flight requests (and so the
/// commands they wait for, which record their outcomes) finish within `api.shutdown_timeout_s`, and closes the pool.
/// Tells systemd `READY=1` once serving, `WATCHDOG=1` while the actors answer, and `STOPPING=1` on the way out.
pub fn serve(config: Config) -> Result<(), StartError> {
    actix_rt::System::new().block_on(async move {
        let listener = TcpListener::bind(&config.api.listen)?;
        let (server, handles) = start(&config, listener).await?.split();
        tracing::info!(listen = %handles.addr, "agent-supervisor serving");
        systemd::notify("READY=1");
        let supervisor = handles.supervisor.clone();
        systemd::spawn_watchdog(move || {
            let supervisor = supervisor.clone();
            async move { supervisor.actors_alive().await }
        });
        let stopper = handles.server.clone();
        let leadership = handles.supervisor.leadership().clone();
        actix_rt::spawn(async move {
            let signal = systemd::stop_signal().await;
            tracing::info!(signal, "stopping: no new requests; waiting for in-flight commands");
            systemd::notify("STOPPING=1");
            stopper.stop(true).await;
            // In-flight commands have recorded their end; a leader now hands over at once rather than after its
            // lease expires.
            leadership.resign(RESIGN_WITHIN).await;
        });
        server.await?;
        handles.supervisor.db().close();
        tracing::info!("agent-supervisor stopped");
        Ok(())
    })
}
