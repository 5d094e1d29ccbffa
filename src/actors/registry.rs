//! `RegistryActor`: owns the map of agent actors, creating one on first use (after checking the agent exists) and
//! one for every agent in the database at start-up, and starting again any that stopped.

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use agent_supervisor_common::workers::Workers;

use super::{AgentActor, Deps};
use crate::{
    db::queries,
    domain::AgentId,
    error::{ErrorCode, Problem},
};

/// The agent actors by id, shared read-mostly with request handlers so that a request for a known agent reaches its
/// actor without a hop through the registry. Only the registry inserts.
#[derive(Clone, Default)]
pub struct AgentTable(Arc<RwLock<HashMap<AgentId, Addr<AgentActor>>>>);

impl AgentTable {
    /// The agent's actor, if it has one that runs (the registry starts stopped ones again).
    pub fn get(&self, id: &AgentId) -> Option<Addr<AgentActor>> {
        self.0.read().ok().and_then(|m| m.get(id).filter(|a| a.connected()).cloned())
    }

    pub fn len(&self) -> usize {
        self.0.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The agents whose actors run (a stopped one is left out until the registry starts it again).
    pub fn entries(&self) -> Vec<(AgentId, Addr<AgentActor>)> {
        self.0
            .read()
            .map(|m| m.iter().filter(|(_, v)| v.connected()).map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

/// The threads agent actors live on: the HTTP server's worker threads, each of which registers itself when it
/// starts. An agent's actor lives on one of them (chosen by its id), so a request that lands on that thread asks
/// its actor, and the actor answers, without a hand-off between threads. Without registered threads (the actor layer
/// used without HTTP), actors live on the registry's thread.
#[derive(Clone, Default)]
pub struct ActorHomes(Workers);

impl ActorHomes {
    /// Registers the calling thread's arbiter, once per thread (the HTTP app factory runs on each worker thread).
    pub fn register_current(&self) {
        self.0.register_current();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The agent threads' arbiters, in the order they registered.
    pub fn handles(&self) -> Vec<ArbiterHandle> {
        self.0.handles()
    }

    /// Whether every agent thread runs its event loop (see [`Workers::check`]).
    pub async fn check(&self, within: Duration) -> Result<(), String> {
        self.0.check(within, "agent thread").await
    }

    /// Starts `id`'s actor on its home thread, forgetting homes whose thread has stopped; on the current thread
    /// when no home is left.
    fn start(&self, id: &AgentId, make: impl Fn() -> AgentActor + Send + Clone + 'static) -> Addr<AgentActor> {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(id.as_str());
        loop {
            let homes = self.0.handles();
            if homes.is_empty() {
                return make().start();
            }
            let at = (hash % homes.len() as u64) as usize;
            let make = make.clone();
            let addr = AgentActor::start_in_arbiter(&homes[at], move |_| make());
            // A stopped arbiter drops the start-up closure, and with it the actor's mailbox.
            if addr.connected() {
                return addr;
            }
            self.0.forget(at);
        }
    }
}

pub struct RegistryActor {
    deps: Deps,
    agents: AgentTable,
    homes: ActorHomes,
    recalc: super::recalc::RecalcState,
}

/// How often the registry looks for agent actors that stopped (their thread ended, or they panicked).
const REVIVE_EVERY: Duration = Duration::from_secs(5);
/// How often the database is read for agents without an actor: the probe interval, at least this…
const LOAD_EVERY_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// …or this when probing is off.
const LOAD_EVERY_WITHOUT_PROBES: Duration = Duration::from_secs(30);

impl RegistryActor {
    pub fn new(deps: Deps) -> Self {
        Self { deps, agents: AgentTable::default(), homes: ActorHomes::default(), recalc: Default::default() }
    }

    /// The threads new agent actors are started on.
    pub fn homes(&self) -> ActorHomes {
        self.homes.clone()
    }

    pub(super) fn recalc_state(&mut self) -> &mut super::recalc::RecalcState {
        &mut self.recalc
    }

    pub fn deps(&self) -> &Deps {
        &self.deps
    }

    /// The table request handlers read.
    pub fn table(&self) -> AgentTable {
        self.agents.clone()
    }

    fn actor_for(&mut self, id: AgentId) -> Addr<AgentActor> {
        let mut table = self.agents.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(addr) = table.get(&id).filter(|a| a.connected()) {
            return addr.clone();
        }
        let addr = self.start_actor(&id);
        table.insert(id, addr.clone());
        self.deps.metrics.agents.set(table.len() as i64);
        addr
    }

    fn start_actor(&self, id: &AgentId) -> Addr<AgentActor> {
        let (id2, deps) = (id.clone(), self.deps.clone());
        self.homes.start(id, move || AgentActor::new(id2.clone(), deps.clone()))
    }

    /// Starts again the actors that stopped. Their in-memory state (last observation, recent outcomes) is gone; the
    /// audit log in the database is not.
    fn revive(&mut self) {
        let stopped: Vec<AgentId> = {
            let table = self.agents.0.read().unwrap_or_else(PoisonError::into_inner);
            table.iter().filter(|(_, a)| !a.connected()).map(|(id, _)| id.clone()).collect()
        };
        if stopped.is_empty() {
            return;
        }
        tracing::warn!(count = stopped.len(), first = %stopped[0], "agent actors had stopped; starting them again");
        for id in stopped {
            let addr = self.start_actor(&id);
            self.agents.0.write().unwrap_or_else(PoisonError::into_inner).insert(id, addr);
        }
    }
}

impl Actor for RegistryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(REVIVE_EVERY, |act, _| act.revive());
        // Rows added behind the daemon's back (Backend.AI's heartbeat registering an agent, SQL) get their actor, and
        // so their probe, within a probe interval.
        let probe = self.deps.settings.probe_interval;
        let every = if probe.is_zero() { LOAD_EVERY_WITHOUT_PROBES } else { probe.max(LOAD_EVERY_AT_MOST_EVERY) };
        ctx.run_interval(every, |act, ctx| {
            ctx.spawn(act.load().map(|loaded, _, _| {
                if let Err(e) = loaded {
                    tracing::debug!(error = %e, "could not look for new agents");
                }
            }));
        });
    }
}

/// The actor of one agent; `404 agent_not_found` if the database does not know it.
#[derive(Debug, Message)]
#[rtype(result = "Result<Addr<AgentActor>, Problem>")]
pub struct GetAgent {
    pub agent_id: AgentId,
}

impl Handler<GetAgent> for RegistryActor {
    type Result = ResponseActFuture<Self, Result<Addr<AgentActor>, Problem>>;

    fn handle(&mut self, msg: GetAgent, _: &mut Self::Context) -> Self::Result {
        if let Some(addr) = self.agents.get(&msg.agent_id) {
            return Box::pin(async move { Ok(addr) }.into_actor(self));
        }
        let db = self.deps.db.clone();
        let id = msg.agent_id;
        let lookup = {
            let id = id.clone();
            async move { queries::find_agent(&mut *db.conn().await?, id.as_str()).await }
        };
        Box::pin(lookup.into_actor(self).map(move |found, act, _| match found {
            Ok(Some(_)) => Ok(act.actor_for(id)),
            Ok(None) => {
                Err(Problem::new(ErrorCode::AgentNotFound, format!("agent {id} does not exist")).for_agent(id.as_str()))
            }
            Err(e) => Err(Problem::from(e).for_agent(id.as_str())),
        }))
    }
}

/// Creates an actor for every agent in the database; returns how many exist.
#[derive(Debug, Message)]
#[rtype(result = "Result<usize, Problem>")]
pub struct LoadAgents;

impl Handler<LoadAgents> for RegistryActor {
    type Result = ResponseActFuture<Self, Result<usize, Problem>>;

    fn handle(&mut self, _: LoadAgents, _: &mut Self::Context) -> Self::Result {
        self.load()
    }
}

impl RegistryActor {
    /// Creates an actor for every agent in the database that has none; returns how many agents there are.
    fn load(&mut self) -> ResponseActFuture<Self, Result<usize, Problem>> {
        let db = self.deps.db.clone();
        let load = async move { queries::agent_ids(&mut *db.conn().await?).await };
        Box::pin(load.into_actor(self).map(|ids, act, _| {
            let ids = ids.map_err(Problem::from)?;
            let mut created = 0;
            for raw in &ids {
                match AgentId::parse(raw) {
                    Ok(id) => {
                        act.actor_for(id);
                        created += 1;
                    }
                    Err(e) => {
                        tracing::warn!(agent.id = %raw, error = %e, "agent id in the database is not supervisable")
                    }
                }
            }
            Ok(created)
        }))
    }
}

/// An agent was registered (or registered again): its actor exists from now on.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AgentRegistered {
    pub agent_id: AgentId,
}

impl Handler<AgentRegistered> for RegistryActor {
    type Result = ();
    fn handle(&mut self, msg: AgentRegistered, _: &mut Self::Context) {
        self.actor_for(msg.agent_id);
    }
}

/// An agent was removed: its actor stops (after the command it runs, if any) and is forgotten.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AgentRemoved {
    pub agent_id: AgentId,
}

impl Handler<AgentRemoved> for RegistryActor {
    type Result = ();
    fn handle(&mut self, msg: AgentRemoved, _: &mut Self::Context) {
        let removed = self.agents.0.write().unwrap_or_else(PoisonError::into_inner).remove(&msg.agent_id);
        if let Some(addr) = removed {
            addr.do_send(super::agent::Retire);
        }
        self.deps.metrics.agents.set(self.agents.len() as i64);
    }
}

/// Every agent actor that exists.
#[derive(Debug, Message)]
#[rtype(result = "Vec<(AgentId, Addr<AgentActor>)>")]
pub struct ListAgentActors;

impl Handler<ListAgentActors> for RegistryActor {
    type Result = MessageResult<ListAgentActors>;
    fn handle(&mut self, _: ListAgentActors, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.agents.entries())
    }
}

/// Answers at once; readiness and the systemd watchdog use it to tell that the actor system is alive.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct Ping;

impl Handler<Ping> for RegistryActor {
    type Result = usize;
    fn handle(&mut self, _: Ping, _: &mut Self::Context) -> usize {
        self.agents.len()
    }
}
