//! `SyncAgentRegistry` (seed 1.x), handled by the registry actor: tell one agent which kernels the database believes
//! it runs, over the agent's own Callosum RPC, and return the agent's row.

use actix::prelude::*;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Deps, RegistryActor};
use crate::{
    db::{
        fence,
        models::{AgentRow, NewAgentEvent},
        queries,
    },
    domain::{AgentId, EventAction, EventOutcome},
    error::{ErrorCode, Problem},
};

/// Sync one agent's kernel registry with the database (seed: `SyncAgentRegistryAction`).
#[derive(Debug, Message)]
#[rtype(result = "Result<SyncAgentRegistryResult, Problem>")]
pub struct SyncAgentRegistry {
    pub agent_id: AgentId,
    pub requester: String,
}

/// `SyncAgentRegistryActionResult`: the agent's full row after the sync, and what was sent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncAgentRegistryResult {
    pub agent: AgentRow,
    /// `(kernel_id, session_id)` pairs sent; 0 means no RPC was made (as in Backend.AI).
    pub kernels_sent: usize,
    pub rpc_sent: bool,
    /// Kernels recorded under an `agent_addr` other than the agent's current `addr`. They are sent all the same (so
    /// the agent keeps them); Backend.AI would have left them out and the agent would have destroyed them.
    pub warnings: Vec<String>,
}

impl Handler<SyncAgentRegistry> for RegistryActor {
    type Result = ResponseFuture<Result<SyncAgentRegistryResult, Problem>>;

    fn handle(&mut self, msg: SyncAgentRegistry, _: &mut Self::Context) -> Self::Result {
        let deps = self.deps().clone();
        let span = tracing::info_span!("sync", agent.id = %msg.agent_id, requester = %msg.requester);
        Box::pin(tracing::Instrument::instrument(sync(deps, msg), span))
    }
}

async fn sync(deps: Deps, msg: SyncAgentRegistry) -> Result<SyncAgentRegistryResult, Problem> {
    let id = msg.agent_id;
    let for_agent = |p: Problem| p.for_agent(id.as_str());
    let requested_at = Utc::now();
    // Only the leader syncs (high availability).
    let fence = deps.ha.fence().map_err(for_agent)?;
    let (agent, kernels) = {
        let mut conn = deps.db.conn().await.map_err(|e| for_agent(e.into()))?;
        // Unlike Backend.AI, the agent's existence is checked before any RPC.
        let Some(agent) = queries::find_agent(&mut conn, id.as_str()).await.map_err(|e| for_agent(e.into()))? else {
            return Err(for_agent(Problem::new(ErrorCode::AgentNotFound, format!("agent {id} does not exist"))));
        };
        let kernels = queries::occupying_kernels(&mut conn, id.as_str()).await.map_err(|e| for_agent(e.into()))?;
        (agent, kernels)
    };
    let warnings: Vec<String> = kernels
        .iter()
        .filter(|k| k.agent_addr.as_deref().is_some_and(|a| a != agent.addr))
        .map(|k| {
            format!(
                "kernel {} is recorded under agent_addr {} but the agent's addr is {}",
                k.id,
                k.agent_addr.as_deref().unwrap_or_default(),
                agent.addr
            )
        })
        .collect();
    let pairs: Vec<(uuid::Uuid, uuid::Uuid)> = kernels.iter().map(|k| (k.id, k.session_id)).collect();
    // Still the leader, as PostgreSQL records it, right before the agent is told anything.
    fence::still_leading(&deps.db, fence).await.map_err(|e| for_agent(e.into()))?;
    let rpc = if pairs.is_empty() {
        Ok(())
    } else {
        deps.rpc
            .sync_kernel_registry(&agent.addr, agent.public_key.as_deref(), &pairs, id.as_str())
            .await
            .map_err(Problem::from)
    };
    let (outcome, status, detail) = match &rpc {
        Ok(()) => (EventOutcome::Succeeded, 200, json!({"kernels_sent": pairs.len(), "warnings": warnings})),
        Err(p) => (EventOutcome::Failed, p.status(), json!({"kernels_sent": pairs.len(), "problem": p.to_json()})),
    };
    tracing::info!(outcome = %outcome, kernels = pairs.len(), warnings = warnings.len(), "sync finished");
    let event = NewAgentEvent {
        epoch: fence,
        agent_id: id.to_string(),
        action: EventAction::Sync,
        requester: msg.requester,
        requested_at,
        started_at: Some(requested_at),
        finished_at: Some(Utc::now()),
        outcome,
        http_status: Some(status as i16),
        detail,
    };
    if let Err(e) = fence::insert_event(&deps.db, fence, &event).await {
        tracing::warn!(error = %e, "could not record the sync");
    }
    rpc.map_err(for_agent)?;
    // The row as it is after the sync.
    let agent = async { queries::find_agent(&mut *deps.db.conn().await?, id.as_str()).await }
        .await
        .map_err(|e| for_agent(e.into()))?
        .unwrap_or(agent);
    Ok(SyncAgentRegistryResult { agent, kernels_sent: pairs.len(), rpc_sent: !pairs.is_empty(), warnings })
}
