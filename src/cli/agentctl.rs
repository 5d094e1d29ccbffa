//! `agentctl`: the operator CLI over the daemon's admin HTTP API. Requests are signed with a Backend.AI keypair
//! exactly as the official client signs them, from the official client's variables (`BACKEND_ENDPOINT`,
//! `BACKEND_ACCESS_KEY`, `BACKEND_SECRET_KEY`) or flags. Human output by default, the daemon's JSON with `--json`.
//!
//! Exit codes: 0 success; 1 the daemon refused or a request failed (the problem is printed as
//! `error: <title> (<status> <error_code>): <detail>`); 2 usage errors, missing credentials included.

mod bulk;
mod commands;
mod registry;
mod render;

use std::{process::ExitCode, time::Duration};

use agent_supervisor_common::api_client::{ApiError as CtlError, Client, Settings};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use self::{
    bulk::BulkPlan,
    commands::{CommandOpts, Verb, encode},
    render::{Table, age, duration_ms},
};
use crate::api::types::{
    AgentEvents, AgentList, RecalculateUsageResult, SyncAgentRegistryResult, WatcherStatusReply, WhoAmI,
};

/// Where the daemon listens by default (`api.listen`).
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8091";

#[derive(Debug, Parser)]
#[command(name = "agentctl", version, about = "Operate the agents of an agent-supervisor daemon")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The daemon's admin API [default: http://127.0.0.1:8091]; several replicas' separated by commas
    /// (`http://a:8091,http://b:8091`): the next is tried when one cannot be connected to.
    #[arg(long, global = true, env = "BACKEND_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Access key of a keypair (superadmin for everything but `sync` and `whoami`).
    #[arg(long, global = true, env = "BACKEND_ACCESS_KEY", hide_env_values = true)]
    pub access_key: Option<String>,
    /// Secret key of that keypair.
    #[arg(long, global = true, env = "BACKEND_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Print the daemon's JSON instead of tables and sentences.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for each answer (a command may wait behind others queued for the same agent).
    #[arg(long, global = true, default_value_t = 60.0, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: f64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List agents with their watcher state as the daemon last observed it, or register, change and remove them.
    Agents(Box<AgentsArgs>),
    /// Ask or command agents' watchers.
    #[command(subcommand)]
    Watcher(WatcherCommand),
    /// Send an agent the kernels the database thinks it runs.
    Sync { agent: String },
    /// Recompute every agent's occupied slots and the per-access-key concurrency.
    Recalculate,
    /// An agent's audit trail, newest first.
    Events {
        agent: String,
        /// How many events (1..=1000).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
    },
    /// Start every agent of a scaling group.
    Start {
        #[command(flatten)]
        bulk: BulkArgs,
        #[command(flatten)]
        ensure: EnsureArg,
    },
    /// Stop every agent of a scaling group.
    Stop {
        #[command(flatten)]
        bulk: BulkArgs,
        #[command(flatten)]
        ensure: EnsureArg,
        /// Stop even agents that still run kernels.
        #[arg(long)]
        force: bool,
    },
    /// Restart every agent of a scaling group.
    Restart {
        #[command(flatten)]
        bulk: BulkArgs,
    },
    /// Show which keypair the daemon sees (checks the credentials).
    Whoami,
    /// The replicas of a highly available daemon: who leads, under which epoch.
    Cluster,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentsArgs {
    #[command(subcommand)]
    pub action: Option<AgentsCommand>,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this scaling group.
    #[arg(long)]
    pub scaling_group: Option<String>,
    /// Also list the agents etcd knows that are not registered (the daemon needs agents.discover = true).
    #[arg(long)]
    pub unregistered: bool,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List agents (what `agentctl agents` does without a subcommand).
    List(ListArgs),
    /// Register an agent (or replace its registration): its row and its watcher's etcd keys.
    Add(registry::AddArgs),
    /// Change some fields of a registered agent.
    Set(registry::SetArgs),
    /// Remove an agent: its row and its etcd keys (its audit trail stays).
    Rm(registry::RmArgs),
}

#[derive(Debug, Subcommand)]
pub enum WatcherCommand {
    /// Ask each agent's watcher whether the agent runs.
    Status {
        #[arg(required = true)]
        agents: Vec<String>,
    },
    /// Start agents.
    Start {
        #[arg(required = true)]
        agents: Vec<String>,
        #[command(flatten)]
        ensure: EnsureArg,
    },
    /// Stop agents.
    Stop {
        #[arg(required = true)]
        agents: Vec<String>,
        /// Stop even when kernels still run on the agent.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        ensure: EnsureArg,
    },
    /// Restart agents (a stopped agent is started).
    Restart {
        #[arg(required = true)]
        agents: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct EnsureArg {
    /// Succeed when the agent already is in the state asked for (409 agent_already_running / agent_already_stopped).
    #[arg(long)]
    pub ensure: bool,
}

#[derive(Debug, Args)]
pub struct BulkArgs {
    /// The scaling group whose agents to act on.
    #[arg(long, required = true)]
    pub scaling_group: String,
    /// How many agents at a time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_parallel: u16,
    /// One agent at a time, stopping at the first failure.
    #[arg(long)]
    pub rolling: bool,
}

fn parse_timeout(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(s),
        _ => Err(format!("{raw:?} is not a number of seconds between 0 and 86400")),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_out = cli.global.json;
    let outcome = settings(&cli.global).and_then(|settings| {
        let system = actix_rt::System::new();
        system.block_on(async move {
            let client = Client::new(settings)?;
            run(&client, cli.command, json_out).await
        })
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A failure already printed agent by agent leaves nothing more to say.
            if !matches!(&e, CtlError::Reported(m) if m.is_empty()) {
                eprintln!("error: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn settings(g: &GlobalArgs) -> Result<Settings, CtlError> {
    let missing: Vec<&str> =
        [("BACKEND_ACCESS_KEY (--access-key)", &g.access_key), ("BACKEND_SECRET_KEY (--secret-key)", &g.secret_key)]
            .into_iter()
            .filter(|(_, v)| v.as_deref().is_none_or(|s| s.trim().is_empty()))
            .map(|(name, _)| name)
            .collect();
    if !missing.is_empty() {
        return Err(CtlError::Usage(format!(
            "no credentials: set {} (a keypair from `agent-supervisor keypair create --superadmin`)",
            missing.join(" and ")
        )));
    }
    Ok(Settings {
        endpoint: g.endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty()).unwrap_or(DEFAULT_ENDPOINT).to_owned(),
        access_key: g.access_key.clone().unwrap_or_default().trim().to_owned(),
        secret_key: g.secret_key.clone().unwrap_or_default().trim().to_owned(),
        timeout: Duration::from_secs_f64(g.timeout),
    })
}

async fn run(client: &Client, command: Command, json_out: bool) -> Result<(), CtlError> {
    match command {
        Command::Agents(args) => agents_command(client, *args, json_out).await,
        Command::Watcher(WatcherCommand::Status { agents }) => watcher_status(client, &agents, json_out).await,
        Command::Watcher(WatcherCommand::Start { agents, ensure }) => {
            watcher_command(client, Verb::Start, &agents, CommandOpts { force: false, ensure: ensure.ensure }, json_out)
                .await
        }
        Command::Watcher(WatcherCommand::Stop { agents, force, ensure }) => {
            watcher_command(client, Verb::Stop, &agents, CommandOpts { force, ensure: ensure.ensure }, json_out).await
        }
        Command::Watcher(WatcherCommand::Restart { agents }) => {
            watcher_command(client, Verb::Restart, &agents, CommandOpts::default(), json_out).await
        }
        Command::Sync { agent } => sync(client, &agent, json_out).await,
        Command::Recalculate => recalculate(client, json_out).await,
        Command::Events { agent, limit } => events(client, &agent, limit, json_out).await,
        Command::Start { bulk, ensure } => {
            bulk::run(client, &plan(Verb::Start, bulk, CommandOpts { force: false, ensure: ensure.ensure }), json_out)
                .await
        }
        Command::Stop { bulk, ensure, force } => {
            bulk::run(client, &plan(Verb::Stop, bulk, CommandOpts { force, ensure: ensure.ensure }), json_out).await
        }
        Command::Restart { bulk } => {
            bulk::run(client, &plan(Verb::Restart, bulk, CommandOpts::default()), json_out).await
        }
        Command::Whoami => whoami(client, json_out).await,
        Command::Cluster => cluster(client, json_out).await,
    }
}

async fn agents_command(client: &Client, args: AgentsArgs, json_out: bool) -> Result<(), CtlError> {
    let result = match args.action {
        None => return agents(client, &args.list, json_out).await,
        Some(AgentsCommand::List(list)) => return agents(client, &list, json_out).await,
        Some(AgentsCommand::Add(a)) => registry::add(client, a, json_out).await,
        Some(AgentsCommand::Set(a)) => registry::set(client, a, json_out).await,
        Some(AgentsCommand::Rm(a)) => registry::rm(client, a, json_out).await,
    };
    result.map_err(|e| fail(e, json_out))
}

fn plan(verb: Verb, args: BulkArgs, opts: CommandOpts) -> BulkPlan {
    BulkPlan {
        verb,
        scaling_group: args.scaling_group,
        max_parallel: usize::from(args.max_parallel),
        rolling: args.rolling,
        opts,
    }
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// With `--json`, a failure's problem document goes to stdout too, so a script sees what the daemon said.
fn fail(e: CtlError, json_out: bool) -> CtlError {
    if json_out {
        print_json(&e.to_json());
    }
    e
}

async fn agents(client: &Client, list: &ListArgs, json_out: bool) -> Result<(), CtlError> {
    let scaling_group = list.scaling_group.as_deref();
    let mut query = Vec::new();
    if let Some(g) = scaling_group {
        query.push(format!("scaling_group={}", encode(g)));
    }
    if list.unregistered {
        query.push("unregistered=true".to_owned());
    }
    let path = match query.is_empty() {
        true => "/v1/agents".to_owned(),
        false => format!("/v1/agents?{}", query.join("&")),
    };
    let listing: AgentList = client.get(&path).await.map_err(|e| fail(e, json_out))?;
    if json_out {
        print_json(&listing);
        return Ok(());
    }
    let now = chrono::Utc::now();
    let mut table = Table::new(&["ID", "STATUS", "SCALING GROUP", "WATCHER", "LAST SEEN", "IN FLIGHT"]);
    for a in &listing.agents {
        let watcher = a.supervision.as_ref().and_then(|s| s.watcher.as_ref());
        let state = match watcher {
            None => "unknown".to_owned(),
            Some(w) if !w.reachable => "unreachable".to_owned(),
            Some(w) => w.agent_status.clone().unwrap_or_else(|| "unknown".to_owned()),
        };
        let seen = watcher.map_or("-".to_owned(), |w| age(w.at, now));
        let in_flight = match &a.supervision {
            Some(s) => match (s.in_flight, s.queued) {
                (None, 0) => "-".to_owned(),
                (None, q) => format!("- (+{q} queued)"),
                (Some(c), 0) => c.to_string(),
                (Some(c), q) => format!("{c} (+{q} queued)"),
            },
            None => "-".to_owned(),
        };
        table.row(vec![
            a.row.id.clone(),
            a.row.status.to_string(),
            a.row.scaling_group.clone(),
            state,
            seen,
            in_flight,
        ]);
    }
    print!("{}", table.render());
    if listing.agents.is_empty() {
        println!("(no agents{})", scaling_group.map(|g| format!(" in scaling group {g:?}")).unwrap_or_default());
    }
    if let Some(unregistered) = &listing.unregistered {
        println!();
        if unregistered.is_empty() {
            println!("(no unregistered agents in etcd)");
        } else {
            let mut table = Table::new(&["UNREGISTERED", "IP", "WATCHER PORT", "ADOPT WITH"]);
            for u in unregistered {
                table.row(vec![
                    u.id.clone(),
                    u.ip.clone().unwrap_or_else(|| "-".to_owned()),
                    u.watcher_port.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    u.adopt_with.clone(),
                ]);
            }
            print!("{}", table.render());
        }
    }
    Ok(())
}

/// `watcher status A B …`: one line (or JSON document) per agent; an error if any could not be asked.
async fn watcher_status(client: &Client, agents: &[String], json_out: bool) -> Result<(), CtlError> {
    let mut failed = 0;
    for id in agents {
        match client.get::<WatcherStatusReply>(&format!("/v1/agents/{}/watcher", encode(id))).await {
            Ok(r) => {
                if json_out {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                } else {
                    let word = |k: &str| r.watcher.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
                    println!(
                        "{id}: {} (watcher {}, {})",
                        word("agent-status"),
                        word("watcher-status"),
                        duration_ms(r.latency_ms)
                    );
                }
            }
            Err(e) => {
                failed += 1;
                if json_out {
                    println!("{}", e.to_json());
                }
                eprintln!("error: {e}");
            }
        }
    }
    many_failed(failed, agents.len(), "could not be asked")
}

/// `watcher start|stop|restart A B …`, one agent after the other, each outcome printed as it ends.
async fn watcher_command(
    client: &Client,
    verb: Verb,
    agents: &[String],
    opts: CommandOpts,
    json_out: bool,
) -> Result<(), CtlError> {
    let mut failed = 0;
    for id in agents {
        let outcome = commands::run(client, verb, id, opts).await;
        if json_out {
            println!("{}", outcome.json());
        }
        match &outcome.result {
            Err(e) if !outcome.ok() => {
                failed += 1;
                eprintln!("error: {e}");
            }
            _ if !json_out => println!("{}", outcome.line()),
            _ => {}
        }
    }
    many_failed(failed, agents.len(), &format!("did not {}", verb.as_str()))
}

/// Failures were printed one by one; what is left is the exit status (and a count when there were several).
fn many_failed(failed: usize, total: usize, what: &str) -> Result<(), CtlError> {
    match failed {
        0 => Ok(()),
        _ if total == 1 => Err(CtlError::Reported(String::new())),
        n => Err(CtlError::Reported(format!("{n} of {total} agents {what}"))),
    }
}

async fn sync(client: &Client, agent: &str, json_out: bool) -> Result<(), CtlError> {
    let r: SyncAgentRegistryResult =
        client.post(&format!("/v1/agents/{}/sync", encode(agent))).await.map_err(|e| fail(e, json_out))?;
    if json_out {
        print_json(&r);
        return Ok(());
    }
    let sent = r.kernels_sent;
    if r.rpc_sent {
        println!("{agent}: synced, {sent} kernel{} sent to {}", if sent == 1 { "" } else { "s" }, r.agent.addr);
    } else {
        println!("{agent}: no kernels to sync (no RPC sent)");
    }
    println!(
        "  status {}, scaling group {}, occupied {}",
        r.agent.status,
        r.agent.scaling_group,
        serde_json::to_string(&r.agent.occupied_slots).unwrap_or_default()
    );
    for w in &r.warnings {
        println!("  warning: {w}");
    }
    Ok(())
}

async fn recalculate(client: &Client, json_out: bool) -> Result<(), CtlError> {
    let r: RecalculateUsageResult = client.post("/v1/usage/recalculate").await.map_err(|e| fail(e, json_out))?;
    if json_out {
        print_json(&r);
        return Ok(());
    }
    let report = &r.report;
    println!(
        "recalculated usage of {} agents in {} ({} attempt{}, run {})",
        report.agents_total,
        duration_ms(report.elapsed_ms),
        report.attempts,
        if report.attempts == 1 { "" } else { "s" },
        r.run
    );
    for (label, ids) in [("updated", &report.agents_updated), ("reset  ", &report.agents_reset)] {
        let shown = if ids.is_empty() { String::new() } else { format!(": {}", ids.join(", ")) };
        println!("  {label} {}{shown}", ids.len());
    }
    println!("  skipped {}", report.agents_skipped.len());
    for s in &report.agents_skipped {
        println!("    {} ({}): {}", s.agent_id, s.status, s.reason);
    }
    println!("  access keys: {} updated, {} reset to 0", report.access_keys_updated, report.access_keys_reset);
    Ok(())
}

async fn events(client: &Client, agent: &str, limit: u16, json_out: bool) -> Result<(), CtlError> {
    let r: AgentEvents = client
        .get(&format!("/v1/agents/{}/events?limit={limit}", encode(agent)))
        .await
        .map_err(|e| fail(e, json_out))?;
    if json_out {
        print_json(&r);
        return Ok(());
    }
    let mut table = Table::new(&["TIME", "ACTION", "REQUESTER", "OUTCOME", "HTTP", "DURATION"]);
    for e in &r.events {
        let time = e.requested_at.format("%Y-%m-%d %H:%M:%SZ").to_string();
        let began = e.started_at.unwrap_or(e.requested_at);
        let duration = match e.finished_at {
            Some(f) => duration_ms((f - began).num_milliseconds().max(0) as u64),
            None => "running".to_owned(),
        };
        let http = e.http_status.map_or("-".to_owned(), |s| s.to_string());
        table.row(vec![time, e.action.to_string(), e.requester.clone(), e.outcome.to_string(), http, duration]);
    }
    print!("{}", table.render());
    if r.events.is_empty() {
        println!("(no events for {agent})");
    }
    Ok(())
}

async fn whoami(client: &Client, json_out: bool) -> Result<(), CtlError> {
    let r: WhoAmI = client.get("/v1/whoami").await.map_err(|e| fail(e, json_out))?;
    if json_out {
        print_json(&r);
    } else {
        let role = if r.is_superadmin { "superadmin" } else { "not superadmin" };
        println!("{} ({role}) at {}", r.access_key, client.endpoint());
    }
    Ok(())
}

async fn cluster(client: &Client, json_out: bool) -> Result<(), CtlError> {
    let view: crate::ha::ClusterView = client.get("/v1/cluster").await.map_err(|e| fail(e, json_out))?;
    if json_out {
        print_json(&view);
        return Ok(());
    }
    if !view.enabled {
        println!("high availability is off: {} is the only daemon", client.endpoint());
        return Ok(());
    }
    match &view.leader {
        Some(l) => println!(
            "leader {} at {} (epoch {}); asked {} ({})",
            l.replica_id,
            l.url,
            l.epoch,
            view.replica_id,
            view.role.as_str()
        ),
        None => println!("no leader elected; asked {} ({})", view.replica_id, view.role.as_str()),
    }
    let mut table = Table::new(&["REPLICA", "URL", "ROLE"]);
    for r in &view.replicas {
        let role = match &view.leader {
            Some(l) if l.replica_id == r.replica_id => "leader",
            Some(_) => "follower",
            None => "candidate",
        };
        table.row(vec![r.replica_id.clone(), r.url.clone(), role.to_owned()]);
    }
    print!("{}", table.render());
    Ok(())
}
