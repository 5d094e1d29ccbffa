//! `agent-supervisor dev`: a whole local cluster in one command, for a newcomer.
//!
//! Brings up, in this order, and stops in the reverse order on Ctrl-C or SIGTERM:
//! 1. a private PostgreSQL (`initdb`/`pg_ctl` from the system's packages; through `runuser -u postgres` when run as
//!    root, as `scripts/services` does), with the `agent_supervisor` database migrated and its superadmin keypair
//!    seeded idempotently;
//! 2. a private etcd;
//! 3. the daemon itself, in this process;
//! 4. one real `agent-watcher` (process back-end) per agent, each supervising a stand-in agent
//!    (`agent-supervisor standin-agent`) that holds the agent's running kernels, and registering its node with the
//!    daemon (`--register-with`, as an operator's node would); then each agent's workload (sessions, kernels) is
//!    seeded idempotently and usage is recalculated.
//!
//! Everything listens on 127.0.0.1 only and keeps its state under the data directory, so a second run reuses it.
//! Every port is checked before anything starts. Children run in their own process groups (a terminal's Ctrl-C
//! reaches only this process, which then stops them in order) and, where they are direct children, die with it.

use std::{
    io::Write as _,
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use diesel::{ExpressionMethods, OptionalExtension, QueryDsl};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rand::{Rng, rngs::OsRng};
use tokio::{process::Child, sync::watch};
use uuid::Uuid;

use crate::{
    app::{self, StartError},
    config::{Config, DatabaseConfig, Secret},
    db::{
        self, DbError,
        models::{KernelRow, KeypairRow, ScalingGroupRow, SessionRow},
        queries,
        schema::{kernels, keypairs, scaling_groups, sessions},
    },
    domain::{KernelStatus, ResourceSlot, SessionStatus, SessionType},
};

/// Name of the database the daemon uses.
const DB_NAME: &str = "agent_supervisor";
/// etcd namespace of the stack (keys under `/sorna/local/`).
const NAMESPACE: &str = "local";
const SCALING_GROUP: &str = "default";
/// Marks the keypair this command created, so later runs find it instead of creating another.
const KEYPAIR_DESCRIPTION: &str = "agent-supervisor dev superadmin";
/// Bounds on each start-up step; past them the step fails with the tail of its log.
const PG_START_TIMEOUT_S: u32 = 60;
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);
const WATCHER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Slots each local agent registers with.
const AGENT_SLOTS: &[(&str, &str)] = &[("cpu", "16"), ("mem", "68719476736"), ("cuda.shares", "4")];
/// How long stopping waits for a child after SIGTERM before SIGKILL. Watchers stop their agent first.
const WATCHER_STOP_TIMEOUT: Duration = Duration::from_secs(20);
const AGENT_STOP_TIMEOUT_MS: u64 = 5_000;
const ETCD_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const REPLICA_STOP_TIMEOUT: Duration = Duration::from_secs(35);
/// How long start-up waits for the replicas to elect a leader.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often start-up looks again whether etcd and each watcher are up, and how long one look may take.
const START_POLL: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of a log shown when a step fails.
const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Directory for PostgreSQL's and etcd's data, the watcher token and the logs; a second run reuses it.
    #[arg(long, default_value = ".dev")]
    pub data_dir: PathBuf,
    /// Port of the daemon's HTTP API on 127.0.0.1.
    #[arg(long, default_value_t = 8091)]
    pub port: u16,
    /// Port of the private PostgreSQL on 127.0.0.1.
    #[arg(long, default_value_t = 55440)]
    pub pg_port: u16,
    /// Client port of the private etcd on 127.0.0.1.
    #[arg(long, default_value_t = 23800)]
    pub etcd_port: u16,
    /// Peer port of the private etcd [default: --etcd-port + 1].
    #[arg(long)]
    pub etcd_peer_port: Option<u16>,
    /// Number of local agents (i-dev-1, i-dev-2, ...), each a stand-in under its own agent-watcher.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    pub agents: u8,
    /// Daemon replicas with high availability (ha.enabled): the first in this process on --port, the others as
    /// `agent-supervisor serve` processes on the next ports. 1 runs a single daemon without it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
}

impl DevArgs {
    /// The API ports of the replicas, the in-process one first.
    fn replica_ports(&self) -> Vec<u16> {
        (0..u16::from(self.replicas)).map(|i| self.port.wrapping_add(i)).collect()
    }
}

/// Why the dev stack could not start (or stop); every message names what failed.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("port {port} on 127.0.0.1 ({what}) is already in use; choose another with {flag}")]
    PortInUse { port: u16, what: &'static str, flag: String },
    #[error("{0}")]
    Missing(String),
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("the daemon did not start: {0}")]
    Daemon(#[from] StartError),
    #[error("interrupted")]
    Interrupted,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevError {
    let what = what.into();
    move |source| DevError::Io { what, source }
}

fn failed(what: impl Into<String>, detail: impl Into<String>) -> DevError {
    DevError::Failed { what: what.into(), detail: detail.into() }
}

/// Entry point of the subcommand; `base` is the loaded configuration, whose timeouts and log level are kept.
pub fn main(args: DevArgs, base: Config) -> ExitCode {
    match actix_rt::System::new().block_on(run(args, base)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-supervisor dev: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where everything lives under the data directory.
struct Layout {
    root: PathBuf,
    /// Owned by `postgres` when running as root; holds the cluster and its Unix socket.
    pg_dir: PathBuf,
    pg_data: PathBuf,
    etcd_data: PathBuf,
    logs: PathBuf,
    token_file: PathBuf,
    /// The keypair the watchers register with (`BACKEND_ACCESS_KEY=…` lines, mode 0600).
    credentials_file: PathBuf,
}

impl Layout {
    fn new(root: PathBuf) -> Self {
        Self {
            pg_dir: root.join("pg"),
            pg_data: root.join("pg").join("data"),
            etcd_data: root.join("etcd"),
            logs: root.join("logs"),
            token_file: root.join("watcher-token"),
            credentials_file: root.join("credentials"),
            root,
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.logs.join(name)
    }
}

/// The programs the stack runs, found before anything starts.
struct Tools {
    pg_bin: PathBuf,
    etcd: PathBuf,
    watcher: PathBuf,
    exe: PathBuf,
    /// PostgreSQL refuses to run as root; then its tools run as `postgres` through `runuser`.
    as_root: bool,
}

impl Tools {
    fn find() -> Result<Self, DevError> {
        let exe = std::env::current_exe().map_err(io_err("cannot find this executable"))?;
        let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        let watcher = dir.join("agent-watcher");
        if !watcher.is_file() {
            return Err(DevError::Missing(format!(
                "agent-watcher not found next to {} (build it with `cargo build --bins --features agent-supervisor/dev`; scripts/dev does)",
                exe.display()
            )));
        }
        let pg_bin = find_pg_bin().ok_or_else(|| {
            DevError::Missing(
                "initdb not found under /usr/lib/postgresql/*/bin or on PATH (install the `postgresql` package; scripts/dev does)"
                    .into(),
            )
        })?;
        let etcd = which("etcd").ok_or_else(|| {
            DevError::Missing("etcd not found on PATH (install the `etcd-server` package; scripts/dev does)".into())
        })?;
        let as_root = running_as_root();
        if as_root && which("runuser").is_none() {
            return Err(DevError::Missing(
                "running as root needs `runuser` (util-linux) to run PostgreSQL as postgres".into(),
            ));
        }
        Ok(Self { pg_bin, etcd, watcher, exe, as_root })
    }

    /// A PostgreSQL tool, run as `postgres` when we are root.
    fn pg(&self, tool: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::from(pg_command(&self.pg_bin, tool, self.as_root));
        cmd.process_group(0);
        cmd
    }
}

/// Whether this process runs as root, where PostgreSQL's tools must run as `postgres` (they refuse root).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The PostgreSQL tool `tool` from `pg_bin`, through `runuser -u postgres` when `as_root`; stdin closed.
pub fn pg_command(pg_bin: &Path, tool: &str, as_root: bool) -> std::process::Command {
    let program = pg_bin.join(tool);
    let mut cmd = if as_root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    };
    cmd.stdin(Stdio::null());
    cmd
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`, else the directory of `initdb` on PATH.
pub fn find_pg_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).or_else(|| which("initdb").and_then(|p| p.parent().map(Path::to_path_buf)))
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// A child this command started and must stop.
struct Owned {
    name: String,
    child: Child,
}

/// What has been started so far, so that an error or a signal at any point stops exactly that.
#[derive(Default)]
struct Stack {
    postgres: Option<(PathBuf, u32)>,
    etcd: Option<Owned>,
    watchers: Vec<Owned>,
    /// `agent-supervisor serve` replicas (`--replicas`).
    replicas: Vec<Owned>,
}

impl Stack {
    /// Stops, in reverse order of starting, the watchers (which stop their agents), etcd and PostgreSQL. The daemon
    /// has stopped before (see [`serve_until_signal`]).
    async fn stop(&mut self, tools: &Tools) {
        if !self.replicas.is_empty() {
            eprintln!("stopping {} daemon replica(s)", self.replicas.len());
            let replicas = std::mem::take(&mut self.replicas);
            futures_util::future::join_all(replicas.into_iter().map(|r| terminate(r, REPLICA_STOP_TIMEOUT))).await;
        }
        if !self.watchers.is_empty() {
            eprintln!("stopping {} agent-watcher(s) and their agents", self.watchers.len());
            let watchers = std::mem::take(&mut self.watchers);
            futures_util::future::join_all(watchers.into_iter().map(|w| terminate(w, WATCHER_STOP_TIMEOUT))).await;
        }
        if let Some(etcd) = self.etcd.take() {
            eprintln!("stopping etcd");
            terminate(etcd, ETCD_STOP_TIMEOUT).await;
        }
        if let Some((pg_data, _)) = self.postgres.take() {
            eprintln!("stopping PostgreSQL");
            if let Err(e) = pg_stop(tools, &pg_data).await {
                eprintln!("agent-supervisor dev: {e}");
            }
        }
    }
}

/// SIGTERM, then SIGKILL if the child has not exited within `grace`.
async fn terminate(mut owned: Owned, grace: Duration) {
    if let Some(pid) = owned.child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, owned.child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            eprintln!("{} did not stop within {} s; killing it", owned.name, grace.as_secs());
            let _ = owned.child.kill().await;
        }
    }
}

/// Set once SIGINT or SIGTERM arrives.
#[derive(Clone)]
struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Listens for SIGINT and SIGTERM from now on (they no longer kill the process).
    fn install() -> Result<Self, DevError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).map_err(io_err("cannot install the SIGINT handler"))?;
        let mut term = signal(SignalKind::terminate()).map_err(io_err("cannot install the SIGTERM handler"))?;
        let (tx, rx) = watch::channel(false);
        actix_rt::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
            // Keep listening so that a second Ctrl-C does not kill us half-way through stopping.
            loop {
                tokio::select! {
                    _ = int.recv() => eprintln!("still stopping; please wait"),
                    _ = term.recv() => {}
                }
            }
        });
        Ok(Self(rx))
    }

    fn requested(&self) -> bool {
        *self.0.borrow()
    }

    fn check(&self) -> Result<(), DevError> {
        if self.requested() { Err(DevError::Interrupted) } else { Ok(()) }
    }

    async fn wait(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}

async fn run(args: DevArgs, base: Config) -> Result<(), DevError> {
    let shutdown = Shutdown::install()?;
    let tools = Tools::find()?;
    std::fs::create_dir_all(&args.data_dir).map_err(io_err(format!("cannot create {}", args.data_dir.display())))?;
    let root =
        std::fs::canonicalize(&args.data_dir).map_err(io_err(format!("cannot resolve {}", args.data_dir.display())))?;
    let layout = Layout::new(root);

    // A PostgreSQL left running by a run that was killed outright is ours to stop; anything else on a port is not.
    stop_stale_postgres(&tools, &layout).await?;
    let listener = check_ports(&args)?;

    let mut stack = Stack::default();
    let result = bring_up(&args, base, &tools, &layout, listener, &mut stack, shutdown.clone()).await;
    let result = match result {
        Ok((server, handles)) => serve_until_signal(server, handles, shutdown).await,
        Err(DevError::Interrupted) => Ok(()),
        Err(e) => Err(e),
    };
    stack.stop(&tools).await;
    if result.is_ok() {
        eprintln!("everything stopped");
    }
    result
}

/// Runs the daemon until a signal, then stops it and lets in-flight requests finish.
async fn serve_until_signal(
    server: app::ServerTask,
    handles: app::Handles,
    mut shutdown: Shutdown,
) -> Result<(), DevError> {
    let mut server = std::pin::pin!(server);
    let result = tokio::select! {
        r = &mut server => r.map_err(|e| failed("the daemon's HTTP server", e.to_string())),
        () = shutdown.wait() => {
            eprintln!("stopping the daemon");
            // The server future must keep running to carry out the stop.
            let (_, r) = futures_util::join!(handles.server.stop(true), server);
            r.map_err(|e| failed("stopping the daemon's HTTP server", e.to_string()))
        }
    };
    // Before PostgreSQL goes away, so the pool does not log lost connections.
    handles.supervisor.db().close();
    result
}

/// Binds the API port (kept, so nobody takes it before the daemon starts) and checks the other fixed ports.
fn check_ports(args: &DevArgs) -> Result<TcpListener, DevError> {
    let peer_port = etcd_peer_port(args);
    let bind = |port: u16, what: &'static str, flag: &str| {
        TcpListener::bind(("127.0.0.1", port)).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => DevError::PortInUse { port, what, flag: flag.to_owned() },
            _ => DevError::Io { what: format!("cannot bind 127.0.0.1:{port} ({what})"), source: e },
        })
    };
    let listener = bind(args.port, "the daemon's HTTP API", "--port")?;
    for port in args.replica_ports().into_iter().skip(1) {
        drop(bind(port, "a daemon replica's HTTP API", "--port (replicas use the ports after it)")?);
    }
    for (port, what, flag) in [
        (args.pg_port, "PostgreSQL", "--pg-port"),
        (args.etcd_port, "etcd clients", "--etcd-port"),
        (peer_port, "etcd peers", "--etcd-peer-port (or --etcd-port)"),
    ] {
        drop(bind(port, what, flag)?);
    }
    Ok(listener)
}

fn etcd_peer_port(args: &DevArgs) -> u16 {
    args.etcd_peer_port.unwrap_or_else(|| args.etcd_port.wrapping_add(1))
}

/// The agents of the stack, with the ports chosen for this run.
struct DevAgent {
    id: String,
    rpc_port: u16,
    watcher_port: u16,
}

impl DevAgent {
    fn rpc_addr(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.rpc_port)
    }
}

impl DevArgs {
    fn db_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DB_NAME}", self.pg_port)
    }
}

#[allow(clippy::too_many_arguments)]
async fn bring_up(
    args: &DevArgs,
    base: Config,
    tools: &Tools,
    layout: &Layout,
    listener: TcpListener,
    stack: &mut Stack,
    shutdown: Shutdown,
) -> Result<(app::ServerTask, app::Handles), DevError> {
    let started = Instant::now();
    prepare_dirs(tools, layout)?;

    let created = pg_init(tools, layout).await?;
    shutdown.check()?;
    eprintln!("starting PostgreSQL on 127.0.0.1:{}", args.pg_port);
    pg_start(tools, layout, args.pg_port).await?;
    stack.postgres = Some((layout.pg_data.clone(), pg_pid(layout)));
    shutdown.check()?;

    // etcd boots while the database is prepared.
    eprintln!("starting etcd on 127.0.0.1:{}", args.etcd_port);
    stack.etcd = Some(etcd_spawn(tools, layout, args.etcd_port, etcd_peer_port(args))?);

    let admin_url = format!("postgres://postgres@127.0.0.1:{}/postgres", args.pg_port);
    let db_url = args.db_url();
    ensure_database(&admin_url).await?;
    let db_config = DatabaseConfig { url: Secret::new(db_url.clone()), ..DatabaseConfig::default() };
    for v in db::run_migrations(&db_config).await? {
        eprintln!("applied migration {v}");
    }
    let agents = pick_agent_ports(args.agents)?;
    let mut conn = AsyncPgConnection::establish(&db_url)
        .await
        .map_err(|e| failed(format!("connecting to {db_url}"), e.to_string()))?;
    let keypair = seed_keypair(&mut conn).await?;
    let kernels = planned_kernels(&mut conn, &agents).await?;
    shutdown.check()?;

    if let Some(etcd) = &mut stack.etcd {
        wait_etcd(etcd, args.etcd_port, &layout.log("etcd.log"), &shutdown).await?;
    }
    let token = watcher_token(layout)?;

    let mut config = base;
    config.database.url = Secret::new(db_url);
    config.database.run_migrations = true;
    config.etcd.endpoints = vec![format!("http://127.0.0.1:{}", args.etcd_port)];
    config.etcd.namespace = NAMESPACE.to_owned();
    config.api.listen = format!("127.0.0.1:{}", args.port);
    config.watcher.token = Some(token.clone());
    // A small cluster: probe often so `agentctl agents` shows fresh watcher state within seconds.
    config.watcher.probe_interval_s = 5;
    if args.replicas > 1 {
        config.ha.enabled = true;
        config.ha.replica_id = Some("dev-1".to_owned());
        config.ha.advertise_url = Some(format!("http://127.0.0.1:{}", args.port));
    }
    config.validate().map_err(|e| failed("the daemon's configuration", e.to_string()))?;
    init_daemon_log(&config, &layout.log("daemon.log"))?;
    let (server, handles) = app::start(&config, listener).await?.split();
    eprintln!("the daemon serves on 127.0.0.1:{}", args.port);
    if args.replicas > 1 {
        let started = start_replicas(args, tools, layout, &config, stack);
        let elected = match started {
            Ok(()) => wait_elected(&handles, stack, &shutdown).await,
            Err(e) => Err(e),
        };
        if let Err(e) = elected {
            handles.server.stop(true).await;
            let _ = server.await;
            handles.supervisor.db().close();
            return Err(e);
        }
    }

    let enrolled = enroll_agents(args, tools, layout, &agents, &kernels, &keypair, &token, stack, &shutdown).await;
    let enrolled = match enrolled {
        Ok(()) => seed_workload(&mut conn, &agents, &keypair.access_key).await,
        Err(e) => Err(e),
    };
    if let Err(e) = enrolled {
        handles.server.stop(true).await;
        let _ = server.await;
        handles.supervisor.db().close();
        return Err(e);
    }
    // The seeded kernels now occupy their agents: the daemon's own recalculation says so (through the API, so that
    // with replicas the leader runs it).
    if let Err(e) = recalculate(args, &keypair).await {
        eprintln!("agent-supervisor dev: recalculating usage after seeding: {e}");
    }

    print_banner(args, layout, &keypair, &agents, stack, created, started.elapsed());
    Ok((server, handles))
}

/// Starts the other replicas (`--replicas`) as `agent-supervisor serve` processes with the in-process daemon's
/// configuration, each on its own port and with its own log.
fn start_replicas(
    args: &DevArgs,
    tools: &Tools,
    layout: &Layout,
    config: &Config,
    stack: &mut Stack,
) -> Result<(), DevError> {
    let ports = args.replica_ports();
    eprintln!("starting {} more daemon replica(s) on ports {:?}", ports.len() - 1, &ports[1..]);
    for (n, port) in (2..).zip(ports.into_iter().skip(1)) {
        let name = format!("dev-{n}");
        let (out, err) = log_stdio(&layout.log(&format!("daemon-{name}.log")))?;
        let mut cmd = tokio::process::Command::new(&tools.exe);
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with(crate::config::ENV_PREFIX) {
                cmd.env_remove(var);
            }
        }
        let env = |key: &str| format!("{}{key}", crate::config::ENV_PREFIX);
        cmd.arg("serve")
            .env(env("DATABASE_URL"), config.database.url.expose())
            .env(env("DATABASE_RUN_MIGRATIONS"), "false")
            .env(env("ETCD_ENDPOINTS"), config.etcd.endpoints.join(","))
            .env(env("ETCD_NAMESPACE"), &config.etcd.namespace)
            .env(env("API_LISTEN"), format!("127.0.0.1:{port}"))
            .env(env("WATCHER_PROBE_INTERVAL_S"), config.watcher.probe_interval_s.to_string())
            .env(env("HA_ENABLED"), "true")
            .env(env("HA_REPLICA_ID"), &name)
            .env(env("HA_ADVERTISE_URL"), format!("http://127.0.0.1:{port}"))
            .env(env("LOG_FORMAT"), "json");
        if let Some(token) = &config.watcher.token {
            cmd.env(env("WATCHER_TOKEN"), token.expose());
        }
        cmd.env("NO_COLOR", "1").stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        die_with_parent(&mut cmd, libc::SIGTERM);
        let child = cmd.spawn().map_err(io_err(format!("cannot start replica {name}")))?;
        stack.replicas.push(Owned { name: format!("agent-supervisor replica {name}"), child });
    }
    Ok(())
}

/// Waits until the replicas have elected a leader (any replica may be it).
async fn wait_elected(handles: &app::Handles, stack: &mut Stack, shutdown: &Shutdown) -> Result<(), DevError> {
    let deadline = Instant::now() + ELECTION_TIMEOUT;
    loop {
        shutdown.check()?;
        if let Some(leader) = handles.supervisor.leadership().view().leader {
            eprintln!("replica {} leads (epoch {})", leader.replica_id, leader.epoch);
            return Ok(());
        }
        for r in &mut stack.replicas {
            if let Ok(Some(status)) = r.child.try_wait() {
                return Err(failed(format!("starting {}", r.name), format!("it exited ({status})")));
            }
        }
        if Instant::now() >= deadline {
            return Err(failed("electing a leader", format!("no leader within {} s", ELECTION_TIMEOUT.as_secs())));
        }
        tokio::time::sleep(START_POLL).await;
    }
}

/// `POST /v1/usage/recalculate` on the in-process replica, signed with the stack's keypair.
async fn recalculate(args: &DevArgs, keypair: &DevKeypair) -> Result<(), String> {
    use agent_supervisor_common::api_client::{Client, Settings};
    let client = Client::new(Settings {
        endpoint: format!("http://127.0.0.1:{}", args.port),
        access_key: keypair.access_key.clone(),
        secret_key: keypair.secret_key.clone(),
        timeout: Duration::from_secs(60),
    })
    .map_err(|e| e.to_string())?;
    client.post::<serde_json::Value>("/v1/usage/recalculate").await.map(|_| ()).map_err(|e| e.to_string())
}

/// Starts one watcher per agent, registering its node with the daemon, and waits until every agent is active and
/// registered at this run's addresses.
#[allow(clippy::too_many_arguments)]
async fn enroll_agents(
    args: &DevArgs,
    tools: &Tools,
    layout: &Layout,
    agents: &[DevAgent],
    kernels: &[Vec<(Uuid, Uuid)>],
    keypair: &DevKeypair,
    token: &Secret,
    stack: &mut Stack,
    shutdown: &Shutdown,
) -> Result<(), DevError> {
    write_private(
        &layout.credentials_file,
        &format!("BACKEND_ACCESS_KEY={}\nBACKEND_SECRET_KEY={}\n", keypair.access_key, keypair.secret_key),
    )?;
    let daemon_url = format!("http://127.0.0.1:{}", args.port);
    eprintln!("starting {} agent-watcher(s), registering with the daemon", agents.len());
    for (agent, kernels) in agents.iter().zip(kernels) {
        stack.watchers.push(watcher_spawn(tools, layout, agent, kernels, &daemon_url)?);
    }
    let mut conn = None;
    for (agent, owned) in agents.iter().zip(stack.watchers.iter_mut()) {
        let log = layout.log(&format!("watcher-{}.log", agent.id));
        wait_watcher(owned, agent, token, &log, shutdown).await?;
        wait_registered(&mut conn, &args.db_url(), owned, agent, &log, shutdown).await?;
    }
    Ok(())
}

/// Waits until the agent's row has this run's RPC address: its watcher registered it.
async fn wait_registered(
    conn: &mut Option<AsyncPgConnection>,
    db_url: &str,
    owned: &mut Owned,
    agent: &DevAgent,
    log: &Path,
    shutdown: &Shutdown,
) -> Result<(), DevError> {
    let what = format!("registering agent {} with the daemon", agent.id);
    let conn = match conn {
        Some(c) => c,
        None => {
            conn.insert(AsyncPgConnection::establish(db_url).await.map_err(|e| failed(what.clone(), e.to_string()))?)
        }
    };
    let expected = agent.rpc_addr();
    let deadline = Instant::now() + WATCHER_START_TIMEOUT;
    loop {
        shutdown.check()?;
        if queries::find_agent(conn, &agent.id).await?.is_some_and(|row| row.addr == expected) {
            return Ok(());
        }
        if let Ok(Some(status)) = owned.child.try_wait() {
            return Err(failed(what, format!("the watcher exited ({status}); {}", tail(log))));
        }
        if Instant::now() >= deadline {
            return Err(failed(
                what,
                format!("not registered within {} s; {}", WATCHER_START_TIMEOUT.as_secs(), tail(log)),
            ));
        }
        tokio::time::sleep(START_POLL).await;
    }
}

/// Creates the directories; when root, hands the PostgreSQL directory and log to `postgres` and checks it can
/// reach them (a data directory under a private home directory would not do).
fn prepare_dirs(tools: &Tools, layout: &Layout) -> Result<(), DevError> {
    for dir in [&layout.pg_dir, &layout.logs] {
        std::fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    }
    ensure_gitignore(&layout.root);
    let pg_log = layout.log("postgres.log");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&pg_log)
        .map_err(io_err(format!("cannot create {}", pg_log.display())))?;
    if !tools.as_root {
        return Ok(());
    }
    // postgres must be able to traverse the data directory itself.
    if let Ok(meta) = std::fs::metadata(&layout.root) {
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            let _ = std::fs::set_permissions(&layout.root, std::fs::Permissions::from_mode(mode | 0o011));
        }
    }
    let status = std::process::Command::new("chown")
        .arg("postgres:")
        .arg(&layout.pg_dir)
        .arg(&pg_log)
        .stdin(Stdio::null())
        .status()
        .map_err(io_err("cannot run chown"))?;
    if !status.success() {
        return Err(failed(format!("chown postgres: {}", layout.pg_dir.display()), status.to_string()));
    }
    let reachable = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-w"])
        .arg(&layout.pg_dir)
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !reachable {
        return Err(failed(
            "preparing PostgreSQL's directory",
            format!(
                "user postgres cannot write to {}; make its parent directories searchable (chmod o+x) or pass --data-dir under /tmp",
                layout.pg_dir.display()
            ),
        ));
    }
    Ok(())
}

/// Keeps the data directory out of git wherever it is created.
fn ensure_gitignore(root: &Path) {
    let path = root.join(".gitignore");
    if !path.exists() {
        let _ = std::fs::write(path, "*\n");
    }
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    if lines.is_empty() {
        format!("(nothing in {})", path.display())
    } else {
        format!("last lines of {}:\n  {}", path.display(), lines[start..].join("\n  "))
    }
}

/// Runs a short-lived command; on failure, reports its exit status and the tail of its output.
async fn run_tool(mut cmd: tokio::process::Command, what: &str, log: &Path) -> Result<(), DevError> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(io_err(format!("cannot run {what}")))?;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = f.write_all(&out.stdout);
        let _ = f.write_all(&out.stderr);
    }
    if out.status.success() { Ok(()) } else { Err(failed(what, format!("{}; {}", out.status, tail(log)))) }
}

/// `initdb` unless the cluster exists; writes the settings that are the same on every run. Returns whether it
/// created the cluster.
async fn pg_init(tools: &Tools, layout: &Layout) -> Result<bool, DevError> {
    let data = &layout.pg_data;
    let created = !data.join("PG_VERSION").is_file();
    if created {
        if data.exists() {
            // A half-done initdb from an interrupted run.
            std::fs::remove_dir_all(data).map_err(io_err(format!("cannot remove {}", data.display())))?;
        }
        eprintln!("creating a PostgreSQL cluster in {}", data.display());
        let mut cmd = tools.pg("initdb");
        cmd.arg("-D").arg(data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]);
        run_tool(cmd, "initdb", &layout.log("initdb.log")).await?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .map_err(io_err("cannot open postgresql.conf"))?;
        // A throw-away development cluster: durability is not worth the fsyncs.
        conf.write_all(b"\n# agent-supervisor dev\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\ninclude_if_exists = 'dev.conf'\n")
            .map_err(io_err("cannot write postgresql.conf"))?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "# agent-supervisor dev: trust on the socket and 127.0.0.1 only\nlocal all all trust\nhost all all 127.0.0.1/32 trust\n",
        )
        .map_err(io_err("cannot write pg_hba.conf"))?;
    }
    Ok(created)
}

/// Writes the per-run settings (the port may change between runs) and starts the server.
async fn pg_start(tools: &Tools, layout: &Layout, port: u16) -> Result<(), DevError> {
    let dev_conf = layout.pg_data.join("dev.conf");
    let socket_dir = layout.pg_dir.display().to_string().replace('\'', "''");
    std::fs::write(
        &dev_conf,
        format!("listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{socket_dir}'\n"),
    )
    .map_err(io_err(format!("cannot write {}", dev_conf.display())))?;
    let log = layout.log("postgres.log");
    let mut cmd = tools.pg("pg_ctl");
    cmd.arg("-D").arg(&layout.pg_data).arg("-l").arg(&log).args(["-w", "-t", &PG_START_TIMEOUT_S.to_string(), "start"]);
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().await.map_err(io_err("cannot run pg_ctl"))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(failed(
            format!("starting PostgreSQL on 127.0.0.1:{port}"),
            format!("pg_ctl: {said}; {}", tail(&log)),
        ));
    }
    Ok(())
}

async fn pg_stop(tools: &Tools, pg_data: &Path) -> Result<(), DevError> {
    let mut cmd = tools.pg("pg_ctl");
    cmd.arg("-D").arg(pg_data).args(["-m", "fast", "-w", "stop"]);
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().await.map_err(io_err("cannot run pg_ctl"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed("stopping PostgreSQL", String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

/// The postmaster's pid, from the first line of `postmaster.pid` (0 if unreadable; only printed).
fn pg_pid(layout: &Layout) -> u32 {
    std::fs::read_to_string(layout.pg_data.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
}

async fn stop_stale_postgres(tools: &Tools, layout: &Layout) -> Result<(), DevError> {
    if !layout.pg_data.join("postmaster.pid").is_file() {
        return Ok(());
    }
    let mut status = tools.pg("pg_ctl");
    status.arg("-D").arg(&layout.pg_data).arg("status").stdout(Stdio::null()).stderr(Stdio::null());
    if status.status().await.is_ok_and(|s| s.success()) {
        eprintln!("stopping the PostgreSQL an earlier run left in {}", layout.pg_data.display());
        pg_stop(tools, &layout.pg_data).await?;
    }
    Ok(())
}

/// Asks the kernel to send `signal` to the child when this process dies, so nothing outlives a killed `dev`.
fn die_with_parent(cmd: &mut tokio::process::Command, signal: libc::c_int) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, signal);
            Ok(())
        });
    }
}

fn log_stdio(path: &Path) -> Result<(Stdio, Stdio), DevError> {
    let open = || std::fs::OpenOptions::new().create(true).append(true).open(path);
    let out = open().map_err(io_err(format!("cannot open {}", path.display())))?;
    let err = open().map_err(io_err(format!("cannot open {}", path.display())))?;
    Ok((out.into(), err.into()))
}

fn etcd_spawn(tools: &Tools, layout: &Layout, port: u16, peer_port: u16) -> Result<Owned, DevError> {
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let (out, err) = log_stdio(&layout.log("etcd.log"))?;
    let mut cmd = tokio::process::Command::new(&tools.etcd);
    cmd.args(["--name", "dev", "--data-dir"])
        .arg(&layout.etcd_data)
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("dev={peer}"), "--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    die_with_parent(&mut cmd, libc::SIGTERM);
    let child = cmd.spawn().map_err(io_err(format!("cannot start {}", tools.etcd.display())))?;
    Ok(Owned { name: "etcd".into(), child })
}

/// Waits until etcd's `/health` reports a leader.
async fn wait_etcd(etcd: &mut Owned, port: u16, log: &Path, shutdown: &Shutdown) -> Result<(), DevError> {
    let client = awc::Client::builder().timeout(PROBE_TIMEOUT).finish();
    let deadline = Instant::now() + ETCD_START_TIMEOUT;
    loop {
        shutdown.check()?;
        if let Ok(Some(status)) = etcd.child.try_wait() {
            return Err(failed(
                format!("starting etcd on 127.0.0.1:{port}"),
                format!("it exited ({status}); {}", tail(log)),
            ));
        }
        let health = get_json(client.get(format!("http://127.0.0.1:{port}/health"))).await;
        if health.as_ref().and_then(|b| b.get("health")).and_then(|h| h.as_str()) == Some("true") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(failed(
                format!("starting etcd on 127.0.0.1:{port}"),
                format!("not healthy within {} s; {}", ETCD_START_TIMEOUT.as_secs(), tail(log)),
            ));
        }
        tokio::time::sleep(START_POLL).await;
    }
}

/// The JSON body of a GET, whatever its content type (etcd's `/health` says text/plain, which `json()` refuses).
async fn get_json(req: awc::ClientRequest) -> Option<serde_json::Value> {
    let mut resp = req.send().await.ok()?;
    let body = resp.body().await.ok()?;
    serde_json::from_slice(&body).ok()
}

/// Two free ports per agent (watcher HTTP, agent RPC), held together while choosing so none repeats.
fn pick_agent_ports(count: u8) -> Result<Vec<DevAgent>, DevError> {
    let mut held = Vec::new();
    for _ in 0..(usize::from(count) * 2) {
        held.push(TcpListener::bind("127.0.0.1:0").map_err(io_err("cannot find a free port on 127.0.0.1"))?);
    }
    let ports: Vec<u16> = held.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.port()).collect();
    Ok((1..=count)
        .zip(ports.chunks(2))
        .filter_map(|(n, p)| {
            Some(DevAgent { id: format!("i-dev-{n}"), watcher_port: *p.first()?, rpc_port: *p.get(1)? })
        })
        .collect())
}

/// The shared watcher token, generated on the first run and kept in the data directory (mode 0600).
fn watcher_token(layout: &Layout) -> Result<Secret, DevError> {
    let path = &layout.token_file;
    if let Ok(text) = std::fs::read_to_string(path) {
        let token = text.trim();
        if !token.is_empty() {
            return Ok(Secret::new(token));
        }
    }
    let token = random_string(b"abcdefghijklmnopqrstuvwxyz0123456789", 32);
    write_private(path, &format!("{token}\n"))?;
    Ok(Secret::new(token))
}

/// Writes a file only its owner may read (it is never readable by others, not even while being written).
fn write_private(path: &Path, text: &str) -> Result<(), DevError> {
    use std::os::unix::fs::OpenOptionsExt;
    let what = || format!("cannot write {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(what()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(what()))?;
    file.write_all(text.as_bytes()).map_err(io_err(what()))
}

fn watcher_spawn(
    tools: &Tools,
    layout: &Layout,
    agent: &DevAgent,
    kernels: &[(Uuid, Uuid)],
    daemon_url: &str,
) -> Result<Owned, DevError> {
    let (out, err) = log_stdio(&layout.log(&format!("watcher-{}.log", agent.id)))?;
    let mut cmd = tokio::process::Command::new(&tools.watcher);
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{}", agent.watcher_port))
        .arg("--token-file")
        .arg(&layout.token_file)
        .args(["--backend", "process", "--agent-id", &agent.id, "--advertise-ip", "127.0.0.1"])
        .args(["--register-with", daemon_url, "--credentials-file"])
        .arg(&layout.credentials_file)
        .args(["--agent-addr", &agent.rpc_addr(), "--scaling-group", SCALING_GROUP])
        .args(["--agent-version", env!("CARGO_PKG_VERSION")])
        .args(AGENT_SLOTS.iter().flat_map(|(name, value)| ["--slot".to_owned(), format!("{name}={value}")]))
        .arg("--stop-timeout-ms")
        .arg(AGENT_STOP_TIMEOUT_MS.to_string())
        .arg("--log-file")
        .arg(layout.log(&format!("agent-{}.log", agent.id)))
        .arg("--")
        .arg(&tools.exe)
        .args(["standin-agent", "--rpc-listen", &format!("127.0.0.1:{}", agent.rpc_port), "--agent-id", &agent.id]);
    for (kernel, session) in kernels {
        cmd.arg("--kernel").arg(format!("{kernel}:{session}"));
    }
    // The agents' output goes to a file: no colour codes in it.
    cmd.env("NO_COLOR", "1").stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    // Unset so the stand-in's configuration is the defaults whatever this shell exports.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with(crate::config::ENV_PREFIX) {
            cmd.env_remove(name);
        }
    }
    die_with_parent(&mut cmd, libc::SIGTERM);
    let child = cmd.spawn().map_err(io_err(format!("cannot start {}", tools.watcher.display())))?;
    Ok(Owned { name: format!("agent-watcher {}", agent.id), child })
}

/// Waits until the watcher answers and says its agent is active.
async fn wait_watcher(
    owned: &mut Owned,
    agent: &DevAgent,
    token: &Secret,
    log: &Path,
    shutdown: &Shutdown,
) -> Result<(), DevError> {
    let client = awc::Client::builder().timeout(PROBE_TIMEOUT).finish();
    let url = format!("http://127.0.0.1:{}/", agent.watcher_port);
    let what = format!("starting agent-watcher {} on 127.0.0.1:{}", agent.id, agent.watcher_port);
    let deadline = Instant::now() + WATCHER_START_TIMEOUT;
    let mut last = String::from("no answer");
    loop {
        shutdown.check()?;
        if let Ok(Some(status)) = owned.child.try_wait() {
            return Err(failed(what, format!("it exited ({status}); {}", tail(log))));
        }
        if let Some(body) =
            get_json(client.get(&url).insert_header(("X-BackendAI-Watcher-Token", token.expose()))).await
        {
            if body.get("agent-status").and_then(|s| s.as_str()) == Some("active") {
                return Ok(());
            }
            last = body.to_string();
        }
        if Instant::now() >= deadline {
            let agent_log = log.with_file_name(format!("agent-{}.log", agent.id));
            return Err(failed(
                what,
                format!(
                    "agent not active within {} s (last status {last}); {}; {}",
                    WATCHER_START_TIMEOUT.as_secs(),
                    tail(log),
                    tail(&agent_log)
                ),
            ));
        }
        tokio::time::sleep(START_POLL).await;
    }
}

/// The daemon logs to a file so the terminal keeps the instructions readable.
fn init_daemon_log(config: &Config, path: &Path) -> Result<(), DevError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(format!("cannot open {}", path.display())))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_target(false)
        .try_init();
    Ok(())
}

async fn ensure_database(admin_url: &str) -> Result<(), DevError> {
    let mut conn = AsyncPgConnection::establish(admin_url)
        .await
        .map_err(|e| failed(format!("connecting to {admin_url}"), e.to_string()))?;
    let exists: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
        "(SELECT count(*) FROM pg_database WHERE datname = '{DB_NAME}')"
    )))
    .get_result(&mut conn)
    .await
    .map_err(db::query_error)?;
    if exists == 0 {
        eprintln!("creating database {DB_NAME}");
        diesel::sql_query(format!("CREATE DATABASE {DB_NAME}")).execute(&mut conn).await.map_err(db::query_error)?;
    }
    Ok(())
}

/// The dev superadmin keypair as shown to the user.
struct DevKeypair {
    access_key: String,
    secret_key: String,
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    (0..len).map(|_| char::from(alphabet[OsRng.gen_range(0..alphabet.len())])).collect()
}

fn slots(pairs: &[(&str, &str)]) -> Result<ResourceSlot, DevError> {
    ResourceSlot::from_pairs(pairs.iter().copied()).map_err(|e| failed("building seed resource slots", e.to_string()))
}

/// Stable ids, so a second run finds the rows of the first: `de7e0000-0000-4000-8000-0000000AANN` for agent AA,
/// item NN (sessions 1x, kernels 2x).
fn seed_uuid(agent: u8, item: u8) -> Uuid {
    Uuid::from_u128(0xde7e_0000_0000_4000_8000_0000_0000_0000 | (u128::from(agent) << 8) | u128::from(item))
}

/// One seeded workload per agent: two running sessions and a terminated one, one kernel each.
struct SeedSession {
    item: u8,
    name: &'static str,
    kind: SessionType,
    running: bool,
    image: &'static str,
    slots: &'static [(&'static str, &'static str)],
}

const SEED_SESSIONS: &[SeedSession] = &[
    SeedSession {
        item: 1,
        name: "notebook",
        kind: SessionType::Interactive,
        running: true,
        image: "cr.backend.ai/stable/python:3.11-ubuntu22.04",
        slots: &[("cpu", "2"), ("mem", "4294967296")],
    },
    SeedSession {
        item: 2,
        name: "train",
        kind: SessionType::Batch,
        running: true,
        image: "cr.backend.ai/stable/python-pytorch:2.1-py311-cuda12.1",
        slots: &[("cpu", "4"), ("mem", "17179869184"), ("cuda.shares", "1")],
    },
    SeedSession {
        item: 3,
        name: "finished",
        kind: SessionType::Batch,
        running: false,
        image: "cr.backend.ai/stable/python:3.11-ubuntu22.04",
        slots: &[("cpu", "1"), ("mem", "2147483648")],
    },
];

/// Seeds the superadmin keypair (and the scaling group), idempotently: a later run finds the keypair of the first.
async fn seed_keypair(conn: &mut AsyncPgConnection) -> Result<DevKeypair, DevError> {
    let now = chrono::Utc::now();
    let generated = crate::auth::keys::generate_keypair();
    let fresh = DevKeypair { access_key: generated.access_key, secret_key: generated.secret_key.expose().to_owned() };
    let access_key = conn
        .transaction::<_, diesel::result::Error, _>(async move |conn: &mut AsyncPgConnection| {
            diesel::insert_into(scaling_groups::table)
                .values(&ScalingGroupRow {
                    name: SCALING_GROUP.into(),
                    description: Some("local agents of agent-supervisor dev".into()),
                    is_active: true,
                    created_at: now,
                    driver: "static".into(),
                    scheduler: "fifo".into(),
                })
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            let existing: Option<String> = keypairs::table
                .filter(keypairs::description.eq(KEYPAIR_DESCRIPTION))
                .filter(keypairs::is_superadmin.eq(true))
                .order(keypairs::created_at)
                .select(keypairs::access_key)
                .first(conn)
                .await
                .optional()?;
            if let Some(k) = existing {
                return Ok(k);
            }
            diesel::insert_into(keypairs::table)
                .values(&KeypairRow {
                    access_key: fresh.access_key.clone(),
                    secret_key: fresh.secret_key.clone(),
                    user_id: Some("admin@dev.local".into()),
                    is_active: true,
                    is_superadmin: true,
                    description: Some(KEYPAIR_DESCRIPTION.into()),
                    created_at: now,
                    last_used: None,
                })
                .execute(conn)
                .await?;
            Ok(fresh.access_key.clone())
        })
        .await
        .map_err(db::query_error)?;
    let secret_key: String =
        keypairs::table.find(&access_key).select(keypairs::secret_key).first(conn).await.map_err(db::query_error)?;
    Ok(DevKeypair { access_key, secret_key })
}

/// Per agent, in order, the running kernels `(kernel_id, session_id)` its stand-in starts with: what the database
/// has for an agent an earlier run registered, else the workload [`seed_workload`] is about to seed.
async fn planned_kernels(
    conn: &mut AsyncPgConnection,
    agents_: &[DevAgent],
) -> Result<Vec<Vec<(Uuid, Uuid)>>, DevError> {
    let mut out = Vec::with_capacity(agents_.len());
    for (n, agent) in (1u8..).zip(agents_) {
        let kernels = if queries::find_agent(conn, &agent.id).await?.is_some() {
            queries::occupying_kernels(conn, &agent.id).await?.into_iter().map(|k| (k.id, k.session_id)).collect()
        } else {
            SEED_SESSIONS
                .iter()
                .filter(|s| s.running)
                .map(|s| (seed_uuid(n, 0x20 + s.item), seed_uuid(n, 0x10 + s.item)))
                .collect()
        };
        out.push(kernels);
    }
    Ok(out)
}

/// Seeds each (registered) agent's sessions and kernels, idempotently: rows that exist are left alone, except the
/// kernels' `agent_addr`, which follows their agent's address as the manager's registry would record it.
async fn seed_workload(conn: &mut AsyncPgConnection, agents_: &[DevAgent], access_key: &str) -> Result<(), DevError> {
    let now = chrono::Utc::now();
    let mut rows = Vec::new();
    for (n, agent) in (1u8..).zip(agents_) {
        let (mut sess, mut kern) = (Vec::new(), Vec::new());
        for s in SEED_SESSIONS {
            let occupying = slots(s.slots)?;
            let session_id = seed_uuid(n, 0x10 + s.item);
            let (session_status, kernel_status) = if s.running {
                (SessionStatus::Running, KernelStatus::Running)
            } else {
                (SessionStatus::Terminated, KernelStatus::Terminated)
            };
            let terminated_at = (!s.running).then_some(now);
            sess.push(SessionRow {
                id: session_id,
                name: Some(format!("{}-{}", s.name, agent.id)),
                session_type: s.kind,
                access_key: Some(access_key.to_owned()),
                status: session_status,
                scaling_group_name: Some(SCALING_GROUP.into()),
                occupying_slots: if s.running { occupying.clone() } else { ResourceSlot::new() },
                requested_slots: occupying.clone(),
                agent_ids: Some(vec![Some(agent.id.clone())]),
                created_at: now,
                status_changed: Some(now),
                terminated_at,
            });
            kern.push(KernelRow {
                id: seed_uuid(n, 0x20 + s.item),
                session_id,
                session_type: s.kind,
                cluster_role: "main".into(),
                scaling_group: Some(SCALING_GROUP.into()),
                agent: Some(agent.id.clone()),
                agent_addr: Some(agent.rpc_addr()),
                access_key: Some(access_key.to_owned()),
                image: Some(s.image.into()),
                architecture: std::env::consts::ARCH.into(),
                container_id: Some(format!("{:064x}", seed_uuid(n, 0x20 + s.item).as_u128())),
                occupied_slots: if s.running { occupying.clone() } else { ResourceSlot::new() },
                requested_slots: occupying,
                status: kernel_status,
                status_changed: Some(now),
                status_info: (!s.running).then(|| "user-requested".into()),
                created_at: now,
                terminated_at,
            });
        }
        rows.push((agent.id.clone(), agent.rpc_addr(), sess, kern));
    }
    conn.transaction::<_, diesel::result::Error, _>(async move |conn: &mut AsyncPgConnection| {
        for (agent, addr, sess, kern) in rows {
            diesel::insert_into(sessions::table).values(&sess).on_conflict_do_nothing().execute(conn).await?;
            diesel::insert_into(kernels::table).values(&kern).on_conflict_do_nothing().execute(conn).await?;
            diesel::update(kernels::table.filter(kernels::agent.eq(&agent)))
                .set(kernels::agent_addr.eq(&addr))
                .execute(conn)
                .await?;
        }
        Ok(())
    })
    .await
    .map_err(db::query_error)?;
    Ok(())
}

fn print_banner(
    args: &DevArgs,
    layout: &Layout,
    kp: &DevKeypair,
    agents_: &[DevAgent],
    stack: &Stack,
    created: bool,
    took: Duration,
) {
    let url = format!("http://127.0.0.1:{}", args.port);
    let bin_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default();
    let mut pids = Vec::new();
    if let Some((_, pid)) = &stack.postgres {
        pids.push(format!("postgres={pid}"));
    }
    if let Some(pid) = stack.etcd.as_ref().and_then(|e| e.child.id()) {
        pids.push(format!("etcd={pid}"));
    }
    for (agent, w) in agents_.iter().zip(&stack.watchers) {
        pids.push(format!("agent-watcher[{}]={}", agent.id, w.child.id().unwrap_or(0)));
    }
    for (n, r) in (2..).zip(&stack.replicas) {
        pids.push(format!("replica[dev-{n}]={}", r.child.id().unwrap_or(0)));
    }
    let endpoints: Vec<String> = args.replica_ports().iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let replicas = if args.replicas > 1 {
        format!(
            "\n  replicas    {} (high availability; the leader runs commands, the others forward)\n              \
             agentctl --endpoint {} cluster",
            endpoints.join(" "),
            endpoints.join(",")
        )
    } else {
        String::new()
    };
    let watchers: Vec<String> =
        agents_.iter().map(|a| format!("{} (watcher :{}, rpc :{})", a.id, a.watcher_port, a.rpc_port)).collect();
    let how = if created { "new data directory" } else { "reused data directory" };
    let logs = layout.logs.display();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nagent-supervisor dev is up at {url} ({how}, ready in {:.1} s)\n\
         \n  data        {root}\n  PostgreSQL  postgres://postgres@127.0.0.1:{pg}/{DB_NAME}\n  etcd        http://127.0.0.1:{etcd} (namespace {NAMESPACE})\n  agents      {agents}{replicas}\n  keypair     access key {ak}\n              secret key {sk}\n              (superadmin of this local stack only; the same on every run)\n\
         \nTry:\n  export PATH=\"{bin}:$PATH\"\n  export BACKEND_ENDPOINT={url} BACKEND_ACCESS_KEY={ak} BACKEND_SECRET_KEY={sk}\n  agentctl agents\n  agentctl watcher restart i-dev-1\n  curl {url}/healthz\n\
         \n  (The admin API requires requests signed with the keypair above, as the official backend.ai client and\n  agentctl do; plain curl reaches only /, /healthz and /readyz.)\n\
         \nLogs: {logs}/ (daemon.log, postgres.log, etcd.log, watcher-i-dev-N.log, agent-i-dev-N.log)\nProcesses: {pids}\nCtrl-C stops everything.",
        took.as_secs_f64(),
        root = layout.root.display(),
        pg = args.pg_port,
        etcd = args.etcd_port,
        agents = watchers.join(", "),
        ak = kp.access_key,
        sk = kp.secret_key,
        bin = bin_dir.display(),
        pids = pids.join(" "),
    );
    let _ = out.flush();
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn seed_ids_are_stable_and_distinct() {
        assert_eq!(seed_uuid(1, 0x11).to_string(), "de7e0000-0000-4000-8000-000000000111");
        assert_ne!(seed_uuid(1, 0x21), seed_uuid(2, 0x21));
    }

    #[test]
    fn a_busy_port_is_named_with_its_flag() {
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let args = DevArgs {
            data_dir: ".dev".into(),
            port: 0,
            pg_port: port,
            etcd_port: 0,
            etcd_peer_port: Some(0),
            agents: 3,
            replicas: 1,
        };
        let msg = check_ports(&args).err().unwrap().to_string();
        assert!(msg.contains(&port.to_string()) && msg.contains("--pg-port"), "{msg}");
    }
}
