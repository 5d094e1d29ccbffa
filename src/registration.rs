//! Standalone mode's agent registry (SPEC §10): agents are registered, changed and removed through the API, and an
//! agent's row and its watcher's etcd keys (`nodes/agents/{id}/ip`, `…/watcher_port`) are written so that they
//! cannot disagree:
//!
//! 1. changes to one agent are serialized in the daemon; the keys are read as they are before the change;
//! 2. a database transaction locks (or creates) the row, writes it and its audit event;
//! 3. with that transaction still open, one etcd transaction writes both keys;
//! 4. the database transaction commits only once etcd has answered.
//!
//! If etcd fails (down, cut, slow past `etcd.timeout_ms`), the row is rolled back and the caller gets
//! `503 etcd_unavailable`. If the commit fails after etcd was (or may have been: a timeout does not say) written, the
//! keys are put back as they were: the compensating step. When etcd cannot take that either, the daemon keeps
//! retrying it in the background, with backoff, until etcd answers (or a later change of the same agent makes it
//! moot), so once etcd is back the keys agree with the row again. Only a daemon that dies during that window leaves
//! keys without a row; `GET /v1/agents?unregistered=true` (with `agents.discover`) lists them.
//!
//! In Backend.AI mode agents are Backend.AI's: every route answers `409 managed_by_backend_ai`.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use agent_supervisor_protocol::agents::{RegisterAgent, UpdateAgent};
use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    config::DatabaseMode,
    db::{
        Db, DbError,
        agents::{self, AgentChanges, NewAgent},
        fence::{self, Fence},
        models::{AgentRow, NewAgentEvent},
        queries, query_error,
    },
    domain::{AgentId, EventAction, EventOutcome, ResourceSlot},
    error::{ErrorCode, Problem},
    etcd::{Etcd, WatcherDirectory, keys},
    ha::Leadership,
};

/// What a registry change left behind: the row, the watcher's address as etcd now has it, and the audit event.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegisteredAgent {
    pub agent: AgentRow,
    /// `nodes/agents/{id}/ip`.
    pub ip: String,
    /// `nodes/agents/{id}/watcher_port`; `None`: the daemon's `watcher.default_port`.
    pub watcher_port: Option<u16>,
    /// The agent was not registered before.
    pub created: bool,
    pub event_id: i64,
}

/// A removed agent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeregisteredAgent {
    pub agent_id: AgentId,
    /// Occupying kernels it still had (only with `force`); their `agent` is cleared.
    pub kernels_left: i64,
    pub event_id: i64,
}

/// The registry's writes: the database and etcd, together.
#[derive(Clone)]
pub struct Registrar {
    db: Db,
    etcd: Etcd,
    /// The daemon's mirror of etcd: a change returns once lookups see it, so status works at once.
    directory: WatcherDirectory,
    ha: Leadership,
    changes: Arc<AgentChangeLocks>,
}

/// One lock per agent id serializing its registry changes (and the background repair of its keys); the value is
/// the number of changes that committed, so a repair can tell whether a later change made it moot.
#[derive(Default)]
struct AgentChangeLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<u64>>>>);

impl AgentChangeLocks {
    fn of(&self, id: &AgentId) -> Arc<tokio::sync::Mutex<u64>> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(id.to_string()).or_default().clone()
    }
}

/// How long a committed change waits for the watcher directory to see its etcd write.
const CAUGHT_UP_WITHIN: Duration = Duration::from_secs(2);
/// Pauses between attempts to put an agent's etcd keys back after a change that did not commit.
const REPAIR_BACKOFF_MIN: Duration = Duration::from_millis(250);
const REPAIR_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why a registry transaction did not commit.
enum Failure {
    Db(diesel::result::Error),
    Problem(Problem),
}

impl From<diesel::result::Error> for Failure {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(e)
    }
}

impl From<DbError> for Failure {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Query(q) => Self::Db(q),
            other => Self::Problem(other.into()),
        }
    }
}

impl From<Problem> for Failure {
    fn from(p: Problem) -> Self {
        Self::Problem(p)
    }
}

/// The watcher's address as etcd has it (before a change, to put it back if the commit fails).
#[derive(Debug, Clone, PartialEq, Eq)]
struct WatcherKeys {
    ip: Option<String>,
    watcher_port: Option<String>,
}

impl Registrar {
    pub fn new(db: Db, directory: WatcherDirectory, ha: Leadership) -> Self {
        Self { db, etcd: directory.etcd().clone(), directory, ha, changes: Arc::default() }
    }

    fn standalone_only(&self) -> Result<(), Problem> {
        match self.db.mode() {
            DatabaseMode::Standalone => Ok(()),
            DatabaseMode::BackendAi => Err(Problem::new(
                ErrorCode::ManagedByBackendAi,
                "database.mode is backend.ai: agents are registered by Backend.AI's own heartbeat, not here",
            )),
        }
    }

    /// `POST /v1/agents`: registers the agent, or replaces the registration of a registered one.
    pub async fn register(&self, body: &[u8], requester: &str) -> Result<RegisteredAgent, Problem> {
        self.standalone_only()?;
        let fence = self.ha.fence()?;
        let req: RegisterAgent = parse_body(body)?;
        let id = AgentId::parse(&req.id).map_err(|e| Problem::invalid_field("id", e))?;
        let new = NewAgent {
            id: id.to_string(),
            scaling_group: name("scaling_group", &req.scaling_group)?,
            region: name("region", &req.region)?,
            addr: rpc_addr("addr", &req.addr)?,
            public_key: req.public_key.as_deref().map(|k| curve_key("public_key", k)).transpose()?,
            available_slots: slots("available_slots", &req.available_slots)?,
            architecture: bounded("architecture", &req.architecture, 32)?,
            version: bounded("version", &req.version, 64)?,
        };
        let ip = req.ip.as_deref().map(|ip| host("ip", ip)).transpose()?;
        let port = req.watcher_port.map(|p| port("watcher_port", p)).transpose()?;
        let for_agent = |p: Problem| p.for_agent(id.as_str());
        let lock = self.changes.of(&id);
        let mut committed = lock.lock().await;
        let before = self.watcher_keys(&id).await.map_err(for_agent)?;
        let ip = match ip.or_else(|| before.ip.clone()) {
            Some(ip) => ip,
            None => {
                return Err(for_agent(Problem::invalid_field(
                    "ip",
                    "required: etcd has no nodes/agents/{id}/ip for this agent yet",
                )));
            }
        };
        let after = WatcherKeys { ip: Some(ip.clone()), watcher_port: port.map(|p| p.to_string()) };
        let create_group = req.create_scaling_group;
        let step = EtcdStep::new(self, &id, &before, &after);
        let mut conn = self.db.conn().await.map_err(|e| for_agent(e.into()))?;
        let result = conn
            .transaction(async |conn| {
                ensure_scaling_group(conn, &new.scaling_group, create_group).await?;
                let previous = agents::lock_agent(conn, &new.id).await?;
                let (row, created) = agents::upsert_agent(conn, &new).await?;
                let detail = json!({
                    "created": created,
                    "addr": row.addr,
                    "scaling_group": row.scaling_group,
                    "ip": after.ip,
                    "watcher_port": after.watcher_port,
                    "previous": previous.map(|p| json!({"addr": p.addr, "scaling_group": p.scaling_group})),
                });
                let event_id = audit(conn, fence, &new.id, EventAction::Register, requester, detail).await?;
                step.run().await?;
                Ok((row, created, event_id))
            })
            .await;
        let (agent, created, event_id) = step.settle(result, &lock, &mut committed).await.map_err(for_agent)?;
        tracing::info!(agent.id = %id, created, event_id, "agent registered");
        Ok(RegisteredAgent { agent, ip, watcher_port: port, created, event_id })
    }

    /// `PATCH /v1/agents/{id}`: changes some fields; the others stay.
    pub async fn update(&self, id: &AgentId, body: &[u8], requester: &str) -> Result<RegisteredAgent, Problem> {
        self.standalone_only()?;
        let fence = self.ha.fence()?;
        let req: UpdateAgent = parse_body(body)?;
        let changes = AgentChanges {
            schedulable: req.schedulable,
            scaling_group: req.scaling_group.as_deref().map(|g| name("scaling_group", g)).transpose()?,
            region: req.region.as_deref().map(|r| name("region", r)).transpose()?,
            addr: req.addr.as_deref().map(|a| rpc_addr("addr", a)).transpose()?,
            public_key: req
                .public_key
                .as_ref()
                .map(|k| k.as_deref().map(|k| curve_key("public_key", k)).transpose())
                .transpose()?,
            available_slots: req.available_slots.as_ref().map(|s| slots("available_slots", s)).transpose()?,
        };
        let ip = req.ip.as_deref().map(|ip| host("ip", ip)).transpose()?;
        let port = req.watcher_port.map(|p| p.map(|p| port("watcher_port", p)).transpose()).transpose()?;
        if changes.is_empty() && ip.is_none() && port.is_none() {
            return Err(Problem::invalid_field("body", "names nothing to change"));
        }
        let for_agent = |p: Problem| p.for_agent(id.as_str());
        let lock = self.changes.of(id);
        let mut committed = lock.lock().await;
        let before = self.watcher_keys(id).await.map_err(for_agent)?;
        let after = WatcherKeys {
            ip: ip.clone().or_else(|| before.ip.clone()),
            watcher_port: match port {
                Some(p) => p.map(|p| p.to_string()),
                None => before.watcher_port.clone(),
            },
        };
        if after.ip.is_none() && after != before {
            return Err(for_agent(Problem::invalid_field("ip", "required: etcd has no nodes/agents/{id}/ip yet")));
        }
        let create_group = req.create_scaling_group;
        let agent_id = id.as_str();
        let step = EtcdStep::new(self, id, &before, &after);
        let mut conn = self.db.conn().await.map_err(|e| for_agent(e.into()))?;
        let result = conn
            .transaction(async |conn| {
                let Some(previous) = agents::lock_agent(conn, agent_id).await? else {
                    return Err(not_found(agent_id).into());
                };
                if let Some(group) = &changes.scaling_group {
                    ensure_scaling_group(conn, group, create_group).await?;
                }
                let row = agents::update_agent(conn, agent_id, &changes).await?;
                let detail = json!({
                    "schedulable": changes.schedulable,
                    "scaling_group": changes.scaling_group,
                    "region": changes.region,
                    "addr": changes.addr,
                    "public_key_changed": changes.public_key.is_some(),
                    "available_slots": changes.available_slots.as_ref().map(ResourceSlot::to_json_value),
                    "ip": after.ip,
                    "watcher_port": after.watcher_port,
                    "previous": {"schedulable": previous.schedulable, "scaling_group": previous.scaling_group,
                                 "addr": previous.addr},
                });
                let event_id = audit(conn, fence, agent_id, EventAction::Update, requester, detail).await?;
                step.run().await?;
                Ok((row, event_id))
            })
            .await;
        let (agent, event_id) = step.settle(result, &lock, &mut committed).await.map_err(for_agent)?;
        tracing::info!(agent.id = %id, event_id, "agent updated");
        let watcher_port = after.watcher_port.as_deref().and_then(|p| p.parse().ok());
        Ok(RegisteredAgent { agent, ip: after.ip.unwrap_or_default(), watcher_port, created: false, event_id })
    }

    /// `DELETE /v1/agents/{id}`: removes the row and the etcd keys; refused while kernels occupy the agent unless
    /// `force`. The audit trail stays.
    pub async fn deregister(&self, id: &AgentId, force: bool, requester: &str) -> Result<DeregisteredAgent, Problem> {
        self.standalone_only()?;
        let fence = self.ha.fence()?;
        let for_agent = |p: Problem| p.for_agent(id.as_str());
        let lock = self.changes.of(id);
        let mut committed = lock.lock().await;
        let before = self.watcher_keys(id).await.map_err(for_agent)?;
        let after = WatcherKeys { ip: None, watcher_port: None };
        let agent_id = id.as_str();
        let step = EtcdStep::new(self, id, &before, &after);
        let mut conn = self.db.conn().await.map_err(|e| for_agent(e.into()))?;
        let result = conn
            .transaction(async |conn| {
                if agents::lock_agent(conn, agent_id).await?.is_none() {
                    return Err(not_found(agent_id).into());
                }
                let kernels = queries::count_occupying_kernels(conn, agent_id).await?;
                if kernels > 0 && !force {
                    return Err(Problem::new(
                        ErrorCode::AgentHasRunningKernels,
                        format!(
                            "agent {agent_id} has {kernels} kernel(s) occupying resources; remove it with \
                             force=true to remove it anyway"
                        ),
                    )
                    .with("kernel_count", kernels)
                    .into());
                }
                let detail = json!({"force": force, "kernels_left": kernels});
                let event_id = audit(conn, fence, agent_id, EventAction::Deregister, requester, detail).await?;
                agents::delete_agent(conn, agent_id).await?;
                step.run().await?;
                Ok((kernels, event_id))
            })
            .await;
        let (kernels_left, event_id) = step.settle(result, &lock, &mut committed).await.map_err(for_agent)?;
        tracing::info!(agent.id = %id, event_id, kernels_left, "agent removed");
        Ok(DeregisteredAgent { agent_id: id.clone(), kernels_left, event_id })
    }

    async fn watcher_keys(&self, id: &AgentId) -> Result<WatcherKeys, Problem> {
        let ip = self.etcd.get(&keys::agent_ip(id.as_str())).await?;
        let watcher_port = self.etcd.get(&keys::agent_watcher_port(id.as_str())).await?;
        Ok(WatcherKeys { ip, watcher_port })
    }

    /// Writes the keys in one etcd transaction; returns etcd's revision after it.
    async fn set_watcher_keys(&self, id: &AgentId, keys_: &WatcherKeys) -> Result<i64, Problem> {
        let (ip_key, port_key) = (keys::agent_ip(id.as_str()), keys::agent_watcher_port(id.as_str()));
        let (mut puts, mut deletes) = (Vec::new(), Vec::new());
        for (key, value) in [(ip_key, &keys_.ip), (port_key, &keys_.watcher_port)] {
            match value {
                Some(v) => puts.push((key, v.clone())),
                None => deletes.push(key),
            }
        }
        Ok(self.etcd.apply(&puts, &deletes).await?)
    }
}

/// The etcd half of a registry change: run inside the database transaction, after the row and audit writes, and
/// settled after the transaction ended (see the module documentation for what happens when either side fails).
struct EtcdStep<'a> {
    registrar: &'a Registrar,
    id: &'a AgentId,
    before: &'a WatcherKeys,
    after: &'a WatcherKeys,
    /// etcd was asked to take `after`: it may have, even if it did not answer.
    attempted: AtomicBool,
    /// etcd's revision once it took `after` (0: not written).
    revision: AtomicI64,
}

impl<'a> EtcdStep<'a> {
    fn new(registrar: &'a Registrar, id: &'a AgentId, before: &'a WatcherKeys, after: &'a WatcherKeys) -> Self {
        Self { registrar, id, before, after, attempted: AtomicBool::new(false), revision: AtomicI64::new(0) }
    }

    /// Makes etcd's keys `after` (nothing to do when they already are).
    async fn run(&self) -> Result<(), Failure> {
        if self.after != self.before {
            self.attempted.store(true, Ordering::SeqCst);
            let revision = self.registrar.set_watcher_keys(self.id, self.after).await?;
            self.revision.store(revision, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The transaction's result. Committed: the agent's change count goes up. Not committed after etcd was asked
    /// for the new keys: they are put back, now or, if etcd does not take them either, by a background repair.
    async fn settle<T>(
        &self,
        result: Result<T, Failure>,
        lock: &Arc<tokio::sync::Mutex<u64>>,
        committed: &mut u64,
    ) -> Result<T, Problem> {
        let problem = match result {
            Ok(value) => {
                *committed += 1;
                let revision = self.revision.load(Ordering::SeqCst);
                let directory = &self.registrar.directory;
                if revision > 0 && !directory.caught_up(revision, CAUGHT_UP_WITHIN).await {
                    tracing::warn!(agent.id = %self.id, revision,
                        "the watcher directory has not seen the registry change yet; status may lag for a moment");
                }
                return Ok(value);
            }
            Err(Failure::Problem(p)) => p,
            Err(Failure::Db(e)) => Problem::from(query_error(e)),
        };
        if self.attempted.load(Ordering::SeqCst) {
            match self.registrar.set_watcher_keys(self.id, self.before).await {
                Ok(_) => tracing::warn!(agent.id = %self.id, error = %problem,
                    "the registry change did not commit; its etcd keys were put back"),
                Err(e) => {
                    tracing::error!(agent.id = %self.id, error = %problem, compensation = %e,
                        "the registry change did not commit and its etcd keys could not be put back yet; \
                         retrying in the background until etcd answers");
                    self.registrar.repair_later(self.id.clone(), self.before.clone(), lock.clone(), *committed);
                }
            }
        }
        Err(problem)
    }
}

impl Registrar {
    /// Puts `keys` back in the background, retrying with backoff, unless a change of the agent commits first.
    fn repair_later(&self, id: AgentId, keys_: WatcherKeys, lock: Arc<tokio::sync::Mutex<u64>>, committed: u64) {
        let registrar = self.clone();
        actix_rt::spawn(async move {
            let mut backoff = REPAIR_BACKOFF_MIN;
            loop {
                tokio::time::sleep(backoff).await;
                let now = lock.lock().await;
                if *now != committed {
                    tracing::info!(agent.id = %id, "a later registry change superseded the pending etcd repair");
                    return;
                }
                match registrar.set_watcher_keys(&id, &keys_).await {
                    Ok(_) => {
                        tracing::info!(agent.id = %id, "etcd keys put back after the change that did not commit");
                        return;
                    }
                    Err(e) => tracing::debug!(agent.id = %id, error = %e, "etcd repair attempt failed"),
                }
                drop(now);
                backoff = (backoff * 2).min(REPAIR_BACKOFF_MAX);
            }
        });
    }
}

async fn ensure_scaling_group(conn: &mut AsyncPgConnection, group: &str, create: bool) -> Result<(), Failure> {
    if agents::scaling_group_exists(conn, group).await? {
        return Ok(());
    }
    if !create {
        return Err(Problem::new(
            ErrorCode::ScalingGroupNotFound,
            format!("scaling group {group:?} does not exist; give create_scaling_group: true to create it"),
        )
        .with("field", "scaling_group")
        .with("scaling_group", group)
        .into());
    }
    agents::create_scaling_group(conn, group).await?;
    Ok(())
}

/// Writes the change's audit event, after checking (high availability) that this replica still leads.
async fn audit(
    conn: &mut AsyncPgConnection,
    fence: Fence,
    agent_id: &str,
    action: EventAction,
    requester: &str,
    detail: Value,
) -> Result<i64, Failure> {
    if let Some(epoch) = fence {
        fence::check_epoch(conn, epoch).await?;
    }
    let now = Utc::now();
    let event = NewAgentEvent {
        epoch: fence,
        agent_id: agent_id.to_owned(),
        action,
        requester: requester.to_owned(),
        requested_at: now,
        started_at: Some(now),
        finished_at: Some(now),
        outcome: EventOutcome::Succeeded,
        http_status: Some(200),
        detail,
    };
    Ok(queries::insert_event(conn, &event).await?)
}

fn not_found(id: &str) -> Problem {
    Problem::new(ErrorCode::AgentNotFound, format!("agent {id} does not exist"))
}

/// A JSON body into `T`, every mistake a `400` naming the field.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Problem::invalid_field("body", "a JSON object is required"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let message = e.inner().to_string();
        // serde names an unknown field in its message; the path points at its parent.
        let unknown = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()).map(str::to_owned);
        let path = e.path().to_string();
        let field = unknown.unwrap_or_else(|| if path == "." { "body".to_owned() } else { path });
        Problem::invalid_field(&field, message)
    })
}

fn bounded(field: &str, value: &str, max: usize) -> Result<String, Problem> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(Problem::invalid_field(field, format!("must be 1-{max} printable characters")));
    }
    Ok(value.to_owned())
}

/// A scaling group or region name.
fn name(field: &str, value: &str) -> Result<String, Problem> {
    bounded(field, value, 64)
}

/// A host: an IP address or a DNS name.
fn host(field: &str, value: &str) -> Result<String, Problem> {
    let v = value.trim_start_matches('[').trim_end_matches(']');
    let dns = !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if v.parse::<IpAddr>().is_ok() || dns {
        Ok(v.to_owned())
    } else {
        Err(Problem::invalid_field(field, format!("{value:?} is not an IP address or a host name")))
    }
}

/// The agent's RPC address, `tcp://HOST:PORT`.
fn rpc_addr(field: &str, value: &str) -> Result<String, Problem> {
    let bad = || Problem::invalid_field(field, format!("{value:?} is not tcp://HOST:PORT"));
    if value.len() > 128 {
        return Err(Problem::invalid_field(field, "must be at most 128 characters"));
    }
    let rest = value.strip_prefix("tcp://").ok_or_else(bad)?;
    let (h, p) = rest.rsplit_once(':').ok_or_else(bad)?;
    host(field, h).map_err(|_| bad())?;
    p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    Ok(value.to_owned())
}

/// The Z85 alphabet of ZeroMQ's CURVE keys.
const Z85: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

fn curve_key(field: &str, value: &str) -> Result<String, Problem> {
    if value.len() == 40 && value.chars().all(|c| Z85.contains(c)) {
        Ok(value.to_owned())
    } else {
        Err(Problem::invalid_field(field, "must be a CURVE public key: 40 characters of Z85"))
    }
}

fn port(field: &str, value: u16) -> Result<u16, Problem> {
    if value == 0 {
        return Err(Problem::invalid_field(field, "must be 1-65535"));
    }
    Ok(value)
}

fn slots(field: &str, value: &serde_json::Map<String, Value>) -> Result<ResourceSlot, Problem> {
    ResourceSlot::from_json_value(&Value::Object(value.clone())).map_err(|e| Problem::invalid_field(field, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_mistake_names_its_field() {
        let field = |r: Result<RegisterAgent, Problem>| r.unwrap_err().extra["field"].as_str().unwrap().to_owned();
        assert_eq!(field(parse_body(br#"{"id": "a", "addr": "tcp://h:1", "ip": "h", "addrr": 1}"#)), "addrr");
        assert_eq!(field(parse_body(br#"{"id": "a", "addr": "tcp://h:1", "watcher_port": 70000}"#)), "watcher_port");
        assert_eq!(field(parse_body(br#"{"id": "a", "addr": "tcp://h:1", "watcher_port": -1}"#)), "watcher_port");
        assert_eq!(field(parse_body(br#"{"addr": "tcp://h:1"}"#)), "body");
        assert_eq!(field(parse_body(b"[1]")), "body");
        assert!(rpc_addr("addr", "tcp://10.0.0.1:6001").is_ok());
        assert!(rpc_addr("addr", "tcp://[::1]:6001").is_ok());
        for bad in ["10.0.0.1:6001", "tcp://:6001", "tcp://h:0", "tcp://h:99999", "tcp://h", "tcp://bad host:1"] {
            assert!(rpc_addr("addr", bad).is_err(), "{bad}");
        }
        assert!(curve_key("public_key", &"a".repeat(40)).is_ok());
        assert!(curve_key("public_key", &"a".repeat(39)).is_err());
        assert!(curve_key("public_key", &format!("{}\"", "a".repeat(39))).is_err());
        assert!(host("ip", "node-1.example.org").is_ok() && host("ip", "fe80::1").is_ok());
        assert!(host("ip", "-bad").is_err() && host("ip", "a b").is_err());
        let bad_slot = serde_json::from_str(r#"{"cpu": "-1"}"#).unwrap();
        assert!(slots("available_slots", &bad_slot).unwrap_err().detail.contains("cpu"));
    }
}
