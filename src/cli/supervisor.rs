//! `agent-supervisor serve | migrate | check-config | dev | standin-agent`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{config::Config, db};

#[derive(Debug, Parser)]
#[command(name = "agent-supervisor", version, about = "Supervises the agents of a Backend.AI-style cluster")]
pub struct Cli {
    /// TOML configuration file; every key can also be set as AGENT_SUPERVISOR_<SECTION>_<KEY>.
    #[arg(long, short = 'c', global = true, env = "AGENT_SUPERVISOR_CONFIG")]
    pub config: Option<PathBuf>,
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
    /// Run a whole local cluster: private PostgreSQL and etcd, agents under real agent-watchers, and the daemon.
    Dev(super::dev::DevArgs),
    /// Run a stand-in agent: a Callosum RPC server that keeps a kernel registry and answers
    /// `sync_kernel_registry` as a Backend.AI agent does (for the dev stack and tests).
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
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent-supervisor: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Dev(args) = cli.command {
        return super::dev::main(args, config);
    }
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
            Command::Migrate { revert_all } => migrate(&config, revert_all).await,
            Command::Serve | Command::StandinAgent { .. } | Command::Dev(_) => Ok(()),
            Command::CheckConfig => {
                println!("{config:#?}");
                Ok(())
            }
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
    let url = config.database.url.expose();
    let versions = if revert_all { db::revert_all_migrations(url).await? } else { db::run_migrations(url).await? };
    let verb = if revert_all { "reverted" } else { "applied" };
    if versions.is_empty() {
        println!("no migrations {verb}; the database is up to date");
    }
    for v in versions {
        println!("{verb} {v}");
    }
    Ok(())
}

fn parse_pair(raw: &str) -> Result<(uuid::Uuid, uuid::Uuid), String> {
    let (k, s) = raw.split_once(':').ok_or_else(|| format!("{raw:?} is not KERNEL_ID:SESSION_ID"))?;
    let k = k.parse().map_err(|e| format!("kernel id {k:?}: {e}"))?;
    let s = s.parse().map_err(|e| format!("session id {s:?}: {e}"))?;
    Ok((k, s))
}
