//! `agentctl agents add|set|rm`: the agent registry (standalone mode), with the fields of `POST /v1/agents` and
//! `PATCH /v1/agents/{id}` as flags.

use agent_supervisor_common::api_client::{ApiError as CtlError, Client, Method};
use agent_supervisor_protocol::agents::{RegisterAgent, UpdateAgent};
use clap::Args;
use serde_json::{Map, Value};

use super::{commands::encode, print_json};
use crate::registration::{DeregisteredAgent, RegisteredAgent};

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The agent's id.
    pub id: String,
    /// The agent's RPC address, tcp://HOST:PORT.
    #[arg(long)]
    pub addr: String,
    /// Where the agent's watcher listens (left out: what etcd already has).
    #[arg(long)]
    pub ip: Option<String>,
    /// The watcher's port (left out: the daemon's watcher.default_port).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub watcher_port: Option<u16>,
    #[arg(long, default_value = "default")]
    pub scaling_group: String,
    /// Create the scaling group if it does not exist.
    #[arg(long)]
    pub create_scaling_group: bool,
    #[arg(long, default_value = "local")]
    pub region: String,
    /// The agent's CURVE public key (40 characters of Z85).
    #[arg(long)]
    pub public_key: Option<String>,
    /// An available slot, NAME=DECIMAL (repeatable): --slot cpu=16 --slot mem=68719476736.
    #[arg(long = "slot", value_name = "NAME=DECIMAL", value_parser = parse_slot)]
    pub slots: Vec<(String, String)>,
    /// The agent's architecture [default: this machine's].
    #[arg(long)]
    pub architecture: Option<String>,
    /// The agent's version.
    #[arg(long = "version", value_name = "VERSION")]
    pub agent_version: Option<String>,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    pub id: String,
    /// Whether sessions may be scheduled on the agent.
    #[arg(long, value_name = "true|false")]
    pub schedulable: Option<bool>,
    #[arg(long)]
    pub scaling_group: Option<String>,
    /// Create the scaling group if it does not exist.
    #[arg(long, requires = "scaling_group")]
    pub create_scaling_group: bool,
    #[arg(long)]
    pub region: Option<String>,
    /// The agent's RPC address, tcp://HOST:PORT.
    #[arg(long)]
    pub addr: Option<String>,
    #[arg(long, conflicts_with = "no_public_key")]
    pub public_key: Option<String>,
    /// Remove the agent's public key (plain RPC).
    #[arg(long)]
    pub no_public_key: bool,
    /// Replace the available slots with these (repeatable), NAME=DECIMAL.
    #[arg(long = "slot", value_name = "NAME=DECIMAL", value_parser = parse_slot)]
    pub slots: Vec<(String, String)>,
    /// Where the agent's watcher listens.
    #[arg(long)]
    pub ip: Option<String>,
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), conflicts_with = "default_watcher_port")]
    pub watcher_port: Option<u16>,
    /// Forget the watcher's port: the daemon's watcher.default_port applies.
    #[arg(long)]
    pub default_watcher_port: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    pub id: String,
    /// Remove it even while kernels occupy it (they keep their rows, without an agent).
    #[arg(long)]
    pub force: bool,
}

fn parse_slot(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() && !value.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("{raw:?} is not NAME=DECIMAL (for example cpu=16)")),
    }
}

fn slot_map(slots: Vec<(String, String)>) -> Map<String, Value> {
    slots.into_iter().map(|(k, v)| (k, Value::String(v))).collect()
}

pub async fn add(client: &Client, a: AddArgs, json_out: bool) -> Result<(), CtlError> {
    let body = RegisterAgent {
        id: a.id,
        scaling_group: a.scaling_group,
        create_scaling_group: a.create_scaling_group,
        region: a.region,
        addr: a.addr,
        public_key: a.public_key,
        available_slots: slot_map(a.slots),
        architecture: a.architecture.unwrap_or_else(|| std::env::consts::ARCH.to_owned()),
        version: a.agent_version.unwrap_or_else(|| "unknown".to_owned()),
        ip: a.ip,
        watcher_port: a.watcher_port,
    };
    let done: RegisteredAgent = client.send_json(Method::POST, "/v1/agents", &body).await?;
    report(&done, if done.created { "registered" } else { "re-registered" }, json_out);
    Ok(())
}

pub async fn set(client: &Client, s: SetArgs, json_out: bool) -> Result<(), CtlError> {
    let body = UpdateAgent {
        schedulable: s.schedulable,
        scaling_group: s.scaling_group,
        create_scaling_group: s.create_scaling_group,
        region: s.region,
        addr: s.addr,
        public_key: if s.no_public_key { Some(None) } else { s.public_key.map(Some) },
        available_slots: (!s.slots.is_empty()).then(|| slot_map(s.slots)),
        ip: s.ip,
        watcher_port: if s.default_watcher_port { Some(None) } else { s.watcher_port.map(Some) },
    };
    if body == UpdateAgent::default() {
        return Err(CtlError::Usage("agents set: give at least one field to change (see --help)".to_owned()));
    }
    let path = format!("/v1/agents/{}", encode(&s.id));
    let done: RegisteredAgent = client.send_json(Method::PATCH, &path, &body).await?;
    report(&done, "updated", json_out);
    Ok(())
}

pub async fn rm(client: &Client, r: RmArgs, json_out: bool) -> Result<(), CtlError> {
    let path = format!("/v1/agents/{}{}", encode(&r.id), if r.force { "?force=true" } else { "" });
    let done: DeregisteredAgent = client.request(Method::DELETE, &path).await?;
    if json_out {
        print_json(&done);
    } else if done.kernels_left > 0 {
        println!(
            "removed {} ({} kernel(s) keep their rows without an agent; audit event {})",
            done.agent_id, done.kernels_left, done.event_id
        );
    } else {
        println!("removed {} (audit event {})", done.agent_id, done.event_id);
    }
    Ok(())
}

fn report(done: &RegisteredAgent, verb: &str, json_out: bool) {
    if json_out {
        print_json(done);
        return;
    }
    let a = &done.agent;
    let port = done.watcher_port.map_or_else(|| "default port".to_owned(), |p| p.to_string());
    println!(
        "{verb} {} in scaling group {} ({}, {}schedulable); RPC {}; watcher {}:{port}; audit event {}",
        a.id,
        a.scaling_group,
        a.status,
        if a.schedulable { "" } else { "not " },
        a.addr,
        done.ip,
        done.event_id
    );
}
