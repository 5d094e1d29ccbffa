//! The seed's actions and results, and [`Supervisor`], the facade the HTTP layer calls. Each method sends the action
//! to the actors with a bound on how long it may take, and maps a dead mailbox to a clear error.

use std::time::Duration;

use actix::{Addr, MailboxError};
use agent_supervisor_protocol::agents::UnregisteredAgent;
use serde::{Deserialize, Serialize};

use crate::ha::{ClusterView, Leadership};
use crate::{
    actors::{
        self, AgentActor, AgentRegistered, AgentRemoved, AgentSnapshot, GetAgent, GetSnapshot, GetWatcherStatus,
        ListAgentActors, RecalculateUsage, RegistryActor, SyncAgentRegistry, WatcherAgentRestart, WatcherAgentStart,
        WatcherAgentStop,
    },
    db::{
        Db,
        models::{AgentEventRow, AgentRow},
        queries,
    },
    domain::AgentId,
    error::{ErrorCode, Problem},
    etcd::WatcherDirectory,
    registration::{DeregisteredAgent, RegisteredAgent, Registrar},
};

/// `GetWatcherStatusAction`.
#[derive(Debug, Clone)]
pub struct GetWatcherStatusAction {
    pub agent_id: AgentId,
}
/// `GetWatcherStatusActionResult`: `data` is the watcher's JSON.
pub type GetWatcherStatusActionResult = actors::GetWatcherStatusResult;

/// `WatcherAgentStartAction`.
#[derive(Debug, Clone)]
pub struct WatcherAgentStartAction {
    pub agent_id: AgentId,
    pub requester: String,
}
/// `WatcherAgentStopAction`; `force` stops an agent that still runs kernels.
#[derive(Debug, Clone)]
pub struct WatcherAgentStopAction {
    pub agent_id: AgentId,
    pub force: bool,
    pub requester: String,
}
/// `WatcherAgentRestartAction`.
#[derive(Debug, Clone)]
pub struct WatcherAgentRestartAction {
    pub agent_id: AgentId,
    pub requester: String,
}
/// `WatcherAgent{Start,Stop,Restart}ActionResult`: `data` is the watcher's JSON.
pub type WatcherCommandActionResult = actors::WatcherCommandResult;

/// `SyncAgentRegistryAction`.
#[derive(Debug, Clone)]
pub struct SyncAgentRegistryAction {
    pub agent_id: AgentId,
    pub requester: String,
}
/// `SyncAgentRegistryActionResult`: the agent's full row and what was sent.
pub type SyncAgentRegistryActionResult = actors::SyncAgentRegistryResult;

/// `RecalculateUsageAction`.
#[derive(Debug, Clone)]
pub struct RecalculateUsageAction {
    pub requester: String,
}
/// `RecalculateUsageActionResult`: the report of the run that answered.
pub type RecalculateUsageActionResult = actors::RecalculateUsageResult;

/// One agent as `GET /v1/agents` lists it: its row and what its actor last saw.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentListing {
    #[serde(flatten)]
    pub row: AgentRow,
    pub supervision: Option<AgentSnapshot>,
}

/// Slack on top of the watcher timeouts for the hop through the actors.
const ACTOR_SLACK: Duration = Duration::from_secs(2);
/// How long the registry and each agent thread have to answer a health check (readiness, the systemd watchdog).
const ACTORS_ANSWER_WITHIN: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Supervisor {
    registry: Addr<RegistryActor>,
    agents: actors::AgentTable,
    homes: actors::ActorHomes,
    db: Db,
    directory: WatcherDirectory,
    settings: actors::ActorSettings,
    registrar: Registrar,
    ha: Leadership,
}

/// What `/readyz` reports: each dependency's state, `None` when it is fine.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub database: Option<String>,
    pub etcd: Option<String>,
    pub actors: Option<String>,
    /// This replica's role in the cluster (high availability; `standalone` without it).
    pub ha: ClusterView,
}

fn mailbox(e: MailboxError) -> Problem {
    match e {
        MailboxError::Closed => Problem::new(ErrorCode::ShuttingDown, "the supervisor is shutting down"),
        MailboxError::Timeout => Problem::new(ErrorCode::InternalError, "the actor did not answer in time"),
    }
}

impl Supervisor {
    pub fn new(
        registry: Addr<RegistryActor>,
        agents: actors::AgentTable,
        homes: actors::ActorHomes,
        db: Db,
        directory: WatcherDirectory,
        settings: actors::ActorSettings,
        ha: Leadership,
    ) -> Self {
        let registrar = Registrar::new(db.clone(), directory.clone(), ha.clone());
        Self { registry, agents, homes, db, directory, settings, registrar, ha }
    }

    /// This replica's view of the election (high availability).
    pub fn leadership(&self) -> &Leadership {
        &self.ha
    }

    /// Checks the database (a query), etcd (the watched mirror, else a direct read) and the actor system.
    pub async fn readiness(&self) -> Readiness {
        let database = match async {
            diesel_async::RunQueryDsl::execute(diesel::sql_query("SELECT 1"), &mut *self.db.conn().await?)
                .await
                .map_err(crate::db::query_error)
        }
        .await
        {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        let etcd = if self.directory.is_synced() {
            None
        } else {
            self.directory.etcd().get(crate::etcd::keys::WATCHER_TOKEN).await.err().map(|e| e.to_string())
        };
        let actors = self.check_actors().await.err();
        let ready = database.is_none() && etcd.is_none() && actors.is_none();
        Readiness { ready, database, etcd, actors, ha: self.ha.view() }
    }

    /// Whether the actor system answers (the systemd watchdog's health check).
    pub async fn actors_alive(&self) -> bool {
        self.check_actors().await.is_ok()
    }

    /// The registry answers, and every thread the agent actors live on runs its tasks, each within a second.
    async fn check_actors(&self) -> Result<(), String> {
        self.registry
            .send(actors::Ping)
            .timeout(ACTORS_ANSWER_WITHIN)
            .await
            .map_err(|e| format!("the registry actor did not answer: {e}"))?;
        self.homes.check(ACTORS_ANSWER_WITHIN).await
    }

    /// The threads the agent actors live on.
    pub fn homes(&self) -> &actors::ActorHomes {
        &self.homes
    }

    pub fn registry(&self) -> &Addr<RegistryActor> {
        &self.registry
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn directory(&self) -> &WatcherDirectory {
        &self.directory
    }

    async fn agent(&self, agent_id: &AgentId) -> Result<Addr<AgentActor>, Problem> {
        if let Some(addr) = self.agents.get(agent_id) {
            return Ok(addr);
        }
        let bound = Duration::from_millis(self.settings.status_timeout.as_millis() as u64) + ACTOR_SLACK;
        self.registry.send(GetAgent { agent_id: agent_id.clone() }).timeout(bound).await.map_err(mailbox)?
    }

    /// The longest a command may take: every queued command ahead of it, each with its pre-check and call.
    fn command_bound(&self) -> Duration {
        let one = self.settings.command_timeout + self.settings.status_timeout + ACTOR_SLACK;
        one * (self.settings.queue_capacity as u32 + 1)
    }

    pub async fn get_watcher_status(
        &self,
        action: GetWatcherStatusAction,
    ) -> Result<GetWatcherStatusActionResult, Problem> {
        let agent = self.agent(&action.agent_id).await?;
        // No timer of its own: the actor answers within the status timeout (its watcher call is bounded by it).
        GetWatcherStatus::ask(&agent, &action.agent_id).await
    }

    pub async fn watcher_agent_start(
        &self,
        action: WatcherAgentStartAction,
    ) -> Result<WatcherCommandActionResult, Problem> {
        let agent = self.agent(&action.agent_id).await?;
        agent
            .send(WatcherAgentStart { requester: action.requester })
            .timeout(self.command_bound())
            .await
            .map_err(mailbox)?
    }

    pub async fn watcher_agent_stop(
        &self,
        action: WatcherAgentStopAction,
    ) -> Result<WatcherCommandActionResult, Problem> {
        let agent = self.agent(&action.agent_id).await?;
        agent
            .send(WatcherAgentStop { force: action.force, requester: action.requester })
            .timeout(self.command_bound())
            .await
            .map_err(mailbox)?
    }

    pub async fn watcher_agent_restart(
        &self,
        action: WatcherAgentRestartAction,
    ) -> Result<WatcherCommandActionResult, Problem> {
        let agent = self.agent(&action.agent_id).await?;
        agent
            .send(WatcherAgentRestart { requester: action.requester })
            .timeout(self.command_bound())
            .await
            .map_err(mailbox)?
    }

    pub async fn sync_agent_registry(
        &self,
        action: SyncAgentRegistryAction,
    ) -> Result<SyncAgentRegistryActionResult, Problem> {
        let bound = self.settings.rpc_timeout * 2 + ACTOR_SLACK * 2;
        self.registry
            .send(SyncAgentRegistry { agent_id: action.agent_id, requester: action.requester })
            .timeout(bound)
            .await
            .map_err(mailbox)?
    }

    /// Waits for the run that answers (see `actors::recalc` for how requests coalesce).
    pub async fn recalculate_usage(
        &self,
        action: RecalculateUsageAction,
    ) -> Result<RecalculateUsageActionResult, Problem> {
        self.registry.send(RecalculateUsage { requester: action.requester }).await.map_err(mailbox)?
    }

    /// Every agent in the database with the supervision state its actor holds (no watcher round trips).
    pub async fn list_agents(&self, scaling_group: Option<&str>) -> Result<Vec<AgentListing>, Problem> {
        let rows = queries::list_agents(&mut *self.db.conn().await?, scaling_group).await?;
        let actors = self.registry.send(ListAgentActors).await.map_err(mailbox)?;
        let actors: std::collections::HashMap<_, _> = actors.into_iter().collect();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let snapshot = match AgentId::parse(&row.id).ok().and_then(|id| actors.get(&id).cloned()) {
                Some(addr) => addr.send(GetSnapshot).await.ok(),
                None => None,
            };
            out.push(AgentListing { row, supervision: snapshot });
        }
        Ok(out)
    }

    /// Like [`list_agents`](Self::list_agents), but first asks the watcher of every listed agent for its status, at
    /// most `watcher.refresh_concurrency` at once, so each snapshot holds an observation made by this request. A
    /// watcher that fails or times out is recorded as such in its observation; the listing itself still succeeds.
    pub async fn list_agents_refreshed(&self, scaling_group: Option<&str>) -> Result<Vec<AgentListing>, Problem> {
        use futures_util::StreamExt;
        let rows = queries::list_agents(&mut *self.db.conn().await?, scaling_group).await?;
        let actors = self.registry.send(ListAgentActors).await.map_err(mailbox)?;
        let actors: std::collections::HashMap<_, _> = actors.into_iter().collect();
        let status_bound = self.settings.status_timeout * 2 + ACTOR_SLACK;
        let refreshes = rows.into_iter().map(|row| {
            let known = AgentId::parse(&row.id).ok().map(|id| (actors.get(&id).cloned(), id));
            async move {
                let supervision = async {
                    let (known, id) = known?;
                    let addr = match known {
                        Some(addr) => addr,
                        // Listed but without an actor yet (added after start-up): create it, as any request would.
                        None => self.agent(&id).await.ok()?,
                    };
                    // The outcome is kept in the actor's observation, which the snapshot carries.
                    let _ = tokio::time::timeout(status_bound, GetWatcherStatus::ask(&addr, &id)).await;
                    addr.send(GetSnapshot).await.ok()
                }
                .await;
                AgentListing { row, supervision }
            }
        });
        Ok(futures_util::stream::iter(refreshes).buffered(self.settings.refresh_concurrency.max(1)).collect().await)
    }

    /// `POST /v1/agents`: registers an agent (standalone mode); its actor exists once this returns.
    pub async fn register_agent(&self, body: &[u8], requester: &str) -> Result<RegisteredAgent, Problem> {
        let registered = self.registrar.register(body, requester).await?;
        if let Ok(agent_id) = AgentId::parse(&registered.agent.id) {
            self.registry.send(AgentRegistered { agent_id }).await.map_err(mailbox)?;
        }
        Ok(registered)
    }

    /// `PATCH /v1/agents/{id}`.
    pub async fn update_agent(
        &self,
        agent_id: &AgentId,
        body: &[u8],
        requester: &str,
    ) -> Result<RegisteredAgent, Problem> {
        self.registrar.update(agent_id, body, requester).await
    }

    /// `DELETE /v1/agents/{id}`: the actor retires once the commands it accepted have run.
    pub async fn deregister_agent(
        &self,
        agent_id: &AgentId,
        force: bool,
        requester: &str,
    ) -> Result<DeregisteredAgent, Problem> {
        let removed = self.registrar.deregister(agent_id, force, requester).await?;
        self.registry.send(AgentRemoved { agent_id: agent_id.clone() }).await.map_err(mailbox)?;
        Ok(removed)
    }

    /// Agents etcd knows (`nodes/agents/*`) that have no row (`agents.discover`).
    pub async fn unregistered_agents(&self) -> Result<Vec<UnregisteredAgent>, Problem> {
        if !self.settings.discover {
            return Err(Problem::invalid_field(
                "unregistered",
                "discovery is off: set agents.discover = true to list etcd's agents that have no row",
            ));
        }
        let nodes = self.directory.nodes().await?;
        let known: std::collections::HashSet<String> =
            queries::agent_ids(&mut *self.db.conn().await?).await?.into_iter().collect();
        Ok(nodes
            .into_iter()
            .filter(|(id, _, _)| !known.contains(id))
            .map(|(id, ip, port)| {
                let rpc_host = ip.clone().unwrap_or_else(|| "HOST".to_owned());
                let mut adopt = format!("agentctl agents add {id} --addr tcp://{rpc_host}:6001");
                if ip.is_none() {
                    adopt.push_str(" --ip HOST");
                }
                UnregisteredAgent { watcher_port: port.and_then(|p| p.trim().parse().ok()), id, ip, adopt_with: adopt }
            })
            .collect())
    }

    /// One agent's row with the supervision state its actor holds (no watcher round trip).
    pub async fn get_agent(&self, agent_id: &AgentId) -> Result<AgentListing, Problem> {
        let Some(row) = queries::find_agent(&mut *self.db.conn().await?, agent_id.as_str()).await? else {
            return Err(Problem::new(ErrorCode::AgentNotFound, format!("agent {agent_id} does not exist"))
                .for_agent(agent_id.as_str()));
        };
        let actors = self.registry.send(ListAgentActors).await.map_err(mailbox)?;
        let supervision = match actors.into_iter().find(|(id, _)| id == agent_id) {
            Some((_, addr)) => addr.send(GetSnapshot).await.ok(),
            None => None,
        };
        Ok(AgentListing { row, supervision })
    }

    /// The audit trail of one agent, newest first; with `before`, the events older than that event id (paging).
    pub async fn agent_events(
        &self,
        agent_id: &AgentId,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<AgentEventRow>, Problem> {
        let mut conn = self.db.conn().await?;
        if queries::find_agent(&mut conn, agent_id.as_str()).await?.is_none() {
            return Err(Problem::new(ErrorCode::AgentNotFound, format!("agent {agent_id} does not exist"))
                .for_agent(agent_id.as_str()));
        }
        Ok(queries::list_events_before(&mut conn, agent_id.as_str(), limit, before).await?)
    }
}
