//! `RegistryActor`: owns the map of agent actors, creating one on first use (after checking the agent exists) and
//! one for every agent in the database at start-up.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use actix::prelude::*;

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
    pub fn get(&self, id: &AgentId) -> Option<Addr<AgentActor>> {
        self.0.read().ok().and_then(|m| m.get(id).cloned())
    }

    pub fn len(&self) -> usize {
        self.0.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn entries(&self) -> Vec<(AgentId, Addr<AgentActor>)> {
        self.0.read().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }
}

pub struct RegistryActor {
    deps: Deps,
    agents: AgentTable,
    recalc: super::recalc::RecalcState,
}

impl RegistryActor {
    pub fn new(deps: Deps) -> Self {
        Self { deps, agents: AgentTable::default(), recalc: Default::default() }
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
        let deps = self.deps.clone();
        let mut table = self.agents.0.write().unwrap_or_else(PoisonError::into_inner);
        let addr = table.entry(id.clone()).or_insert_with(|| AgentActor::new(id, deps).start()).clone();
        self.deps.metrics.agents.set(table.len() as i64);
        addr
    }
}

impl Actor for RegistryActor {
    type Context = Context<Self>;
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
            Ok(None) => Err(Problem::new(ErrorCode::AgentNotFound, format!("agent {id} does not exist")).for_agent(id.as_str())),
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
                    Err(e) => tracing::warn!(agent.id = %raw, error = %e, "agent id in the database is not supervisable"),
                }
            }
            Ok(created)
        }))
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
