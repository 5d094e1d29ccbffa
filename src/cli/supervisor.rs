//! `agent-supervisor serve | migrate | check-config | keypair create|list|deactivate | dev | standin-agent`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    auth::keys::generate_keypair,
    config::{Config, DatabaseMode},
    db::{self, Db, keypairs, models::KeypairRow},
};

#[derive(Debug, Parser)]
#[command(name = "agent-supervisor", version, about = "Supervises the agents of a Backend.AI-style cluster")]
pub struct Cli {
    /// TOML configuration file; every key can also be set as AGENT_SUPERVISOR_<SECTION>_<KEY>.
    #[arg(long, short = 'c', global = true, env = "AGENT_SUPERVISOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format, overriding `log.format`.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
    /// Log filter (`info`, `debug`, `agent_supervisor=debug,info`, …), overriding `log.level`.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (migrations first unless database.run_migrations = false).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate {
        /// Revert every migration instead (drops the supervisor's tables).
        #[arg(long)]
        revert_all: bool,
    },
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
    /// Manage the API keypairs that sign admin requests.
    #[command(subcommand)]
    Keypair(KeypairCommand),
    /// Run a whole local cluster: private PostgreSQL and etcd, agents under real agent-watchers, and the daemon.
    #[cfg(feature = "dev")]
    Dev(super::dev::DevArgs),
    /// Run a stand-in agent: a Callosum RPC server that keeps a kernel registry and answers
    /// `sync_kernel_registry` as a Backend.AI agent does (for the dev stack and tests).
    #[cfg(feature = "dev")]
    StandinAgent {
        /// HOST:PORT for the RPC server (ZeroMQ ROUTER).
        #[arg(long, default_value = "127.0.0.1:6001")]
        rpc_listen: String,
        /// The agent id it answers to.
        #[arg(long)]
        agent_id: String,
        /// Initial registry entries, KERNEL_ID:SESSION_ID (repeatable).
        #[arg(long = "kernel", value_parser = parse_pair)]
        kernels: Vec<(uuid::Uuid, uuid::Uuid)>,
    },
    /// (Built without the feature `dev`: says how to get the dev stack.)
    #[cfg(not(feature = "dev"))]
    #[command(hide = true, name = "dev", alias = "standin-agent")]
    DevMissing {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeypairCommand {
    /// Create a keypair and print its access key and secret key (the secret is shown only this once).
    Create {
        /// Allow the watcher, listing, audit and recalculation routes.
        #[arg(long)]
        superadmin: bool,
        /// Owner recorded with the keypair.
        #[arg(long)]
        user_id: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List keypairs (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Deactivate a keypair: requests signed with it are refused within seconds.
    Deactivate { access_key: String },
}

/// Why a keypair command failed.
#[derive(Debug, thiserror::Error)]
enum KeypairError {
    #[error("cannot reach the database: {0}")]
    Unreachable(String),
    #[error("{0} (has the database been migrated? run `agent-supervisor migrate`)")]
    Db(db::DbError),
    #[error("no keypair with access key {0}")]
    NotFound(String),
    #[error("invalid value for --{0}: {1}")]
    Invalid(&'static str, &'static str),
    #[error(
        "database.mode = \"backend.ai\": keypairs are Backend.AI's, and the daemon never writes them. {0} them with \
         Backend.AI's own tools (`backend.ai admin keypair ...` against the manager, or `backend.ai mgr fixture \
         populate`); the daemon verifies requests against them as they are"
    )]
    ManagedByBackendAi(&'static str),
}

impl From<db::DbError> for KeypairError {
    fn from(e: db::DbError) -> Self {
        match e {
            db::DbError::Unavailable(m) => KeypairError::Unreachable(m),
            other => KeypairError::Db(other),
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()).and_then(|mut c| {
        if let Some(format) = cli.log_format {
            c.log.format = format;
        }
        if let Some(level) = cli.log_level.clone() {
            c.log.level = level;
        }
        c.validate().map(|()| c)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent-supervisor: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    #[cfg(not(feature = "dev"))]
    if let Command::DevMissing { .. } = cli.command {
        eprintln!(
            "agent-supervisor: this build has no dev stack; build it with `cargo build --bins --features agent-supervisor/dev` (scripts/dev does)"
        );
        return ExitCode::from(2);
    }
    #[cfg(feature = "dev")]
    if let Command::Dev(args) = cli.command {
        return super::dev::main(args, config);
    }
    #[cfg(feature = "dev")]
    if let Command::StandinAgent { rpc_listen, agent_id, kernels } = &cli.command {
        crate::telemetry::init(config.log.format, &config.log.level);
        let mut cfg = crate::agent_rpc::StandinConfig::new(rpc_listen.clone(), agent_id.clone());
        cfg.kernels = kernels.clone();
        return match crate::agent_rpc::StandinAgent::run_forever(cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agent-supervisor standin-agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Serve = cli.command {
        crate::telemetry::init(config.log.format, &config.log.level);
        return match crate::app::serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "agent-supervisor failed");
                eprintln!("agent-supervisor: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent-supervisor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Migrate { revert_all } => migrate(&config, revert_all).await.map_err(|e| e.to_string()),
            // Handled above.
            Command::Serve => Ok(()),
            #[cfg(feature = "dev")]
            Command::StandinAgent { .. } | Command::Dev(_) => Ok(()),
            #[cfg(not(feature = "dev"))]
            Command::DevMissing { .. } => Ok(()),
            Command::CheckConfig => {
                println!("{config:#?}");
                Ok(())
            }
            Command::Keypair(cmd) => keypair(&config, cmd).await.map_err(|e| e.to_string()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-supervisor: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: &Config, revert_all: bool) -> Result<(), db::DbError> {
    let cfg = &config.database;
    let versions = if revert_all { db::revert_all_migrations(cfg).await? } else { db::run_migrations(cfg).await? };
    let verb = if revert_all { "reverted" } else { "applied" };
    if versions.is_empty() {
        println!("no migrations {verb}; the database is up to date");
    }
    for v in versions {
        println!("{verb} {v}");
    }
    Ok(())
}

#[cfg(feature = "dev")]
fn parse_pair(raw: &str) -> Result<(uuid::Uuid, uuid::Uuid), String> {
    let (k, s) = raw.split_once(':').ok_or_else(|| format!("{raw:?} is not KERNEL_ID:SESSION_ID"))?;
    let k = k.parse().map_err(|e| format!("kernel id {k:?}: {e}"))?;
    let s = s.parse().map_err(|e| format!("session id {s:?}: {e}"))?;
    Ok((k, s))
}

async fn keypair(config: &Config, cmd: KeypairCommand) -> Result<(), KeypairError> {
    if config.database.mode == DatabaseMode::BackendAi {
        match cmd {
            KeypairCommand::Create { .. } => return Err(KeypairError::ManagedByBackendAi("Create")),
            KeypairCommand::Deactivate { .. } => return Err(KeypairError::ManagedByBackendAi("Deactivate")),
            KeypairCommand::List { .. } => {}
        }
    }
    let pool = Db::new(&config.database)?;
    let mut conn = pool.conn().await?;
    match cmd {
        KeypairCommand::Create { superadmin, user_id, description, json } => {
            if user_id.as_ref().is_some_and(|u| u.len() > 256) {
                return Err(KeypairError::Invalid("user-id", "at most 256 characters"));
            }
            if description.as_ref().is_some_and(|d| d.len() > 512) {
                return Err(KeypairError::Invalid("description", "at most 512 characters"));
            }
            if config.database.run_migrations {
                db::run_migrations(&config.database).await?;
            }
            let key = generate_keypair();
            let row = KeypairRow {
                access_key: key.access_key.clone(),
                secret_key: key.secret_key.expose().to_owned(),
                user_id,
                is_active: true,
                is_superadmin: superadmin,
                description,
                created_at: chrono::Utc::now(),
                last_used: None,
            };
            keypairs::insert_keypair(&mut conn, &row).await?;
            if json {
                let doc = serde_json::json!({
                    "access_key": row.access_key,
                    "secret_key": row.secret_key,
                    "is_superadmin": row.is_superadmin,
                    "user_id": row.user_id,
                    "description": row.description,
                });
                println!("{doc}");
            } else {
                let kind = if superadmin { "superadmin keypair" } else { "keypair" };
                println!("Created a {kind}. The secret key is shown only this once; store it now.");
                println!();
                println!("export BACKEND_ACCESS_KEY={}", row.access_key);
                println!("export BACKEND_SECRET_KEY={}", row.secret_key);
            }
        }
        KeypairCommand::List { json } if config.database.mode == DatabaseMode::BackendAi => {
            let rows = keypairs::list_credentials(&mut conn, DatabaseMode::BackendAi).await?;
            if json {
                let listed: Vec<_> = rows
                    .iter()
                    .map(|(ak, c)| {
                        serde_json::json!({"access_key": ak, "is_active": c.active,
                            "is_superadmin": c.is_superadmin, "user_id": c.user_id})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(listed));
            } else {
                println!("{:<20}  {:<8}  {:<10}  USER", "ACCESS KEY", "ACTIVE", "SUPERADMIN");
                for (ak, c) in &rows {
                    let yes = |b: bool| if b { "yes" } else { "no" };
                    let user = c.user_id.as_deref().unwrap_or("-");
                    println!("{ak:<20}  {:<8}  {:<10}  {user}", yes(c.active), yes(c.is_superadmin));
                }
            }
        }
        KeypairCommand::List { json } => {
            let rows = keypairs::list_keypairs(&mut conn).await?;
            let listed: Vec<_> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "access_key": r.access_key,
                        "is_active": r.is_active,
                        "is_superadmin": r.is_superadmin,
                        "user_id": r.user_id,
                        "description": r.description,
                        "created_at": r.created_at,
                        "last_used": r.last_used,
                    })
                })
                .collect();
            if json {
                println!("{}", serde_json::Value::Array(listed));
            } else {
                println!("{:<20}  {:<8}  {:<10}  {:<25}  USER", "ACCESS KEY", "ACTIVE", "SUPERADMIN", "LAST USED");
                for r in &rows {
                    let last = r
                        .last_used
                        .map_or_else(|| "never".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
                    println!(
                        "{:<20}  {:<8}  {:<10}  {:<25}  {}",
                        r.access_key,
                        if r.is_active { "yes" } else { "no" },
                        if r.is_superadmin { "yes" } else { "no" },
                        last,
                        r.user_id.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        KeypairCommand::Deactivate { access_key } => {
            if !keypairs::deactivate_keypair(&mut conn, &access_key).await? {
                return Err(KeypairError::NotFound(access_key));
            }
            println!("deactivated {access_key}");
        }
    }
    drop(conn);
    pool.close();
    Ok(())
}
