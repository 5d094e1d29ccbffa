//! Watcher status calls, made on the thread that needs the answer (an HTTP worker, or the actor's own thread for
//! probes), with what they observe kept in the agent's [`AgentShared`] state.
//!
//! Status is read-only, so it does not go through the agent actor's mailbox: handing every request to the actor's
//! thread and its answer back cost two thread wake-ups per request, more than the watcher call itself. What the actor
//! still decides is when a call may be shared: it bumps [`AgentShared`]'s generation when a command starts and when
//! it ends, and a request only joins a call in flight on its own thread that began in the current generation. So a
//! request is never answered by a call that had ended before the request arrived, nor by one that began before the
//! last change of state it could know about.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use chrono::Utc;
use futures_util::{
    FutureExt,
    future::{LocalBoxFuture, Shared},
};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{
    Deps,
    agent::{GetWatcherStatusResult, Observation},
};
use crate::{
    db::{models::NewAgentEvent, queries},
    domain::AgentId,
    error::{ErrorCode, Problem},
    watcher::client,
};

/// The part of an agent's state that request threads read and write directly: the status-sharing generation, and
/// what was last observed of the watcher. The [`AgentActor`](super::AgentActor) owns the commands.
#[derive(Debug)]
pub struct AgentShared {
    id: AgentId,
    generation: AtomicU64,
    observed: Mutex<Option<Observation>>,
}

impl AgentShared {
    pub fn new(id: AgentId) -> Self {
        Self { id, generation: AtomicU64::new(0), observed: Mutex::new(None) }
    }

    pub fn id(&self) -> &AgentId {
        &self.id
    }

    /// A command started or ended: status calls already in flight are not shared with requests from now on.
    pub(super) fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn observed(&self) -> Option<Observation> {
        self.observed.lock().ok().and_then(|o| o.clone())
    }

    /// Keeps `o` unless a newer observation is already kept, and records a change of reachability or status in the
    /// audit trail.
    pub(super) fn observe(&self, o: Observation, deps: &Deps) {
        let Ok(mut observed) = self.observed.lock() else { return };
        if observed.as_ref().is_some_and(|p| p.at > o.at) {
            return;
        }
        let before = observed.as_ref().map(|p| (p.reachable, p.agent_status.clone()));
        let after = (o.reachable, o.agent_status.clone());
        if let Some(before) = before
            && before != after
        {
            tracing::info!(
                agent.id = %self.id,
                from_reachable = before.0, to_reachable = after.0,
                from_status = ?before.1, to_status = ?after.1,
                "watcher state changed"
            );
            let event = NewAgentEvent {
                agent_id: self.id.to_string(),
                action: "observe".into(),
                requester: "supervisor".into(),
                requested_at: o.at,
                started_at: Some(o.at),
                finished_at: Some(o.at),
                outcome: "observed".into(),
                http_status: None,
                detail: json!({
                    "from": {"reachable": before.0, "agent_status": before.1},
                    "to": {"reachable": after.0, "agent_status": after.1},
                    "error": o.error,
                }),
            };
            let db = deps.db.clone();
            actix_rt::spawn(async move {
                let stored = async { queries::insert_event(&mut *db.conn().await?, &event).await }.await;
                if let Err(e) = stored {
                    tracing::warn!(error = %e, "could not record a watcher state change");
                }
            });
        }
        *observed = Some(o);
    }
}

type Answer = Result<GetWatcherStatusResult, Problem>;

/// One status call in flight on this thread.
struct Flight {
    generation: u64,
    serial: u64,
    answer: Shared<LocalBoxFuture<'static, Answer>>,
}

thread_local! {
    static FLIGHTS: RefCell<HashMap<AgentId, Flight>> = RefCell::new(HashMap::new());
    static SERIAL: Cell<u64> = const { Cell::new(0) };
}

/// The watcher's status, from a call in flight on this thread that began in the current generation, else from a
/// new call. The call runs as a task of its own, so a caller that goes away does not cancel it for the others.
pub async fn watcher_status(agent: &Arc<AgentShared>, deps: &Deps) -> Answer {
    let generation = agent.generation.load(Ordering::SeqCst);
    let joined = FLIGHTS.with(|f| f.borrow().get(&agent.id).filter(|f| f.generation == generation).map(|f| f.answer.clone()));
    if let Some(answer) = joined {
        return answer.await;
    }
    let serial = SERIAL.with(|s| {
        s.set(s.get() + 1);
        s.get()
    });
    let (tx, rx) = oneshot::channel::<Answer>();
    let id = agent.id.clone();
    let answer = rx
        .map(move |r| r.unwrap_or_else(|_| Err(Problem::new(ErrorCode::ShuttingDown, "the status call was dropped").for_agent(id.as_str()))))
        .boxed_local()
        .shared();
    FLIGHTS.with(|f| f.borrow_mut().insert(agent.id.clone(), Flight { generation, serial, answer: answer.clone() }));
    let (agent_, deps_) = (agent.clone(), deps.clone());
    actix_rt::spawn(async move {
        let (result, observation) = fetch_status(agent_.id.clone(), &deps_).await;
        agent_.observe(observation, &deps_);
        FLIGHTS.with(|f| {
            let mut f = f.borrow_mut();
            if f.get(&agent_.id).is_some_and(|f| f.serial == serial) {
                f.remove(&agent_.id);
            }
        });
        let _ = tx.send(result);
    });
    answer.await
}

/// Asks the watcher for its status, without sharing; always yields an observation, even of a failure.
pub(super) async fn fetch_status(id: AgentId, deps: &Deps) -> (Answer, Observation) {
    let started = Instant::now();
    let result = async {
        let addr = deps.directory.watcher_address(&id).await.map_err(Problem::from)?;
        let token = deps.directory.watcher_token().await.map_err(Problem::from)?;
        let called = Instant::now();
        let reply = client::get_status(&addr, &token, deps.settings.status_timeout).await.map_err(Problem::from);
        let outcome = reply.as_ref().map_or_else(|p| p.code.as_str(), |_| "ok");
        deps.metrics.observe_watcher("status", outcome, called.elapsed());
        reply
    }
    .await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let observation = match &result {
        Ok(reply) => Observation {
            agent_status: reply.body.get("agent-status").and_then(Value::as_str).map(str::to_owned),
            reachable: true,
            at: Utc::now(),
            latency_ms,
            error: None,
        },
        Err(p) => Observation {
            agent_status: None,
            reachable: !matches!(p.code, ErrorCode::WatcherTimeout | ErrorCode::WatcherUnreachable),
            at: Utc::now(),
            latency_ms,
            error: Some(p.to_string()),
        },
    };
    let result = result
        .map(|reply| GetWatcherStatusResult { agent_id: id.clone(), data: reply.body, latency_ms })
        .map_err(|p| p.for_agent(id.as_str()));
    (result, observation)
}
