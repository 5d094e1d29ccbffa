//! `AgentActor`: one per agent. It serialises start/stop/restart in arrival order through a bounded FIFO it owns,
//! answers status queries concurrently (never queued behind a command), remembers what it last saw of the watcher
//! and how recent commands ended, probes the watcher on an interval, and audits every command in `agent_events`.

use std::{
    collections::{HashMap, VecDeque},
    rc::Rc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use actix_web::web::Bytes;
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{
    Deps, OUTCOMES_KEPT,
    liveness::{Liveness, Transition},
};
use crate::{
    config::DatabaseMode,
    db::{DbError, agents, fence, models::NewAgentEvent, queries},
    domain::{AgentId, EventAction, EventOutcome},
    error::{ErrorCode, Problem},
    watcher::{self, AgentState, WatcherCommand, WatcherReply, precheck},
};

/// What the actor last observed of its watcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Observation {
    /// `agent-status` as the watcher reported it (`active`, `inactive`, `failed`, ...), if it answered.
    pub agent_status: Option<String>,
    pub reachable: bool,
    pub at: DateTime<Utc>,
    pub latency_ms: u64,
    /// Why the watcher could not be asked, when it could not.
    pub error: Option<String>,
}

/// How a finished command ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandOutcome {
    pub event_id: Option<i64>,
    pub command: WatcherCommand,
    pub requester: String,
    pub outcome: EventOutcome,
    pub http_status: u16,
    pub finished_at: DateTime<Utc>,
    pub elapsed_ms: u64,
}

/// Ask the watcher whether the agent service is up (seed: `GetWatcherStatusAction`). The answer goes straight to
/// `reply`: a status request costs one channel, not actix's response future (a task of its own per request).
/// [`GetWatcherStatus::ask`] sends it and waits.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct GetWatcherStatus {
    pub reply: StatusReply,
}

impl GetWatcherStatus {
    /// Asks the actor of agent `id` and waits for the answer: from the watcher call in flight when the question
    /// arrived, or from a new one. Bounded by the status timeout (the actor's call is); a stopped actor answers
    /// `shutting_down`.
    pub async fn ask(agent: &Addr<AgentActor>, id: &AgentId) -> Result<GetWatcherStatusResult, Problem> {
        let (reply, answer) = oneshot::channel();
        agent.do_send(GetWatcherStatus { reply });
        answer.await.unwrap_or_else(|_| {
            Err(Problem::new(ErrorCode::ShuttingDown, "the agent's actor stopped before it answered")
                .for_agent(id.as_str()))
        })
    }
}

/// `GetWatcherStatusActionResult`: the watcher's JSON, verbatim. Shared by every request one watcher call answers.
#[derive(Debug, Clone)]
pub struct GetWatcherStatusResult {
    pub agent_id: AgentId,
    /// The watcher's JSON object as it sent it.
    pub raw: Bytes,
    /// Its `agent-status`.
    pub agent_state: Option<AgentState>,
    pub latency_ms: u64,
}

impl GetWatcherStatusResult {
    /// The watcher's JSON, parsed (on demand: the status proxy passes `raw` through).
    pub fn data(&self) -> Value {
        serde_json::from_slice(&self.raw).unwrap_or(Value::Null)
    }
}

/// Start the agent (seed: `WatcherAgentStartAction`). Refused with `agent_already_running` when it runs.
#[derive(Debug, Message)]
#[rtype(result = "Result<WatcherCommandResult, Problem>")]
pub struct WatcherAgentStart {
    pub requester: String,
}

/// Stop the agent (seed: `WatcherAgentStopAction`). Refused with `agent_already_stopped` when it is stopped, and
/// with `agent_has_running_kernels` while kernels occupy it, unless `force`.
#[derive(Debug, Message)]
#[rtype(result = "Result<WatcherCommandResult, Problem>")]
pub struct WatcherAgentStop {
    pub force: bool,
    pub requester: String,
}

/// Restart the agent (seed: `WatcherAgentRestartAction`); on a stopped agent this starts it.
#[derive(Debug, Message)]
#[rtype(result = "Result<WatcherCommandResult, Problem>")]
pub struct WatcherAgentRestart {
    pub requester: String,
}

/// `WatcherAgent{Start,Stop,Restart}ActionResult`: the watcher's JSON, verbatim, plus the audit event id.
#[derive(Debug, Clone, Serialize)]
pub struct WatcherCommandResult {
    pub agent_id: AgentId,
    pub command: WatcherCommand,
    pub data: Value,
    pub event_id: i64,
    pub elapsed_ms: u64,
}

/// The agent was removed from the registry: the actor stops once its queue is empty (commands already accepted
/// still run and are audited).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Retire;

impl Handler<Retire> for AgentActor {
    type Result = ();
    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        self.retiring = true;
        self.stop_if_retired(ctx);
    }
}

/// The actor's state for listings.
#[derive(Debug, Message)]
#[rtype(result = "AgentSnapshot")]
pub struct GetSnapshot;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentSnapshot {
    pub agent_id: AgentId,
    pub watcher: Option<Observation>,
    pub in_flight: Option<WatcherCommand>,
    pub queued: usize,
    pub recent: Vec<CommandOutcome>,
}

#[derive(Debug, Clone, Copy)]
enum Command {
    Start,
    Stop { force: bool },
    Restart,
}

impl Command {
    fn watcher(self) -> WatcherCommand {
        match self {
            Command::Start => WatcherCommand::Start,
            Command::Stop { .. } => WatcherCommand::Stop,
            Command::Restart => WatcherCommand::Restart,
        }
    }
}

type Reply = oneshot::Sender<Result<WatcherCommandResult, Problem>>;

struct Queued {
    command: Command,
    requester: String,
    requested_at: DateTime<Utc>,
    reply: Reply,
}

pub struct AgentActor {
    id: AgentId,
    /// Shared with the calls in flight (one reference count per call, not a copy of every handle).
    deps: Rc<Deps>,
    /// The watcher's endpoint as resolved at a directory generation; reused while the directory has not changed.
    endpoint: Option<(u64, Rc<watcher::Endpoint>)>,
    queue: VecDeque<Queued>,
    in_flight: Option<WatcherCommand>,
    observed: Option<Observation>,
    outcomes: VecDeque<CommandOutcome>,
    /// Watcher status calls in flight, each with the requests waiting for it (single flight).
    flights: HashMap<u64, Flight>,
    /// The flight new status requests may join.
    joinable: Option<u64>,
    next_flight: u64,
    /// Bumped when a command starts and when it ends: a status call that began before a change of state is not
    /// shared with requests that arrive after it.
    generation: u64,
    /// Standalone mode: ALIVE ↔ LOST from what the watcher says.
    liveness: Liveness,
    /// The agent was removed: stop once the accepted commands have run.
    retiring: bool,
}

pub type StatusReply = oneshot::Sender<Result<GetWatcherStatusResult, Problem>>;

/// One watcher status call and everyone waiting for its answer.
struct Flight {
    generation: u64,
    waiters: Vec<StatusReply>,
}

impl AgentActor {
    pub fn new(id: AgentId, deps: Deps) -> Self {
        Self {
            id,
            deps: Rc::new(deps),
            endpoint: None,
            queue: VecDeque::new(),
            in_flight: None,
            observed: None,
            outcomes: VecDeque::new(),
            flights: HashMap::new(),
            joinable: None,
            next_flight: 0,
            generation: 0,
            liveness: Liveness::default(),
            retiring: false,
        }
    }

    fn stop_if_retired(&mut self, ctx: &mut Context<Self>) {
        if self.retiring && self.in_flight.is_none() && self.queue.is_empty() {
            tracing::info!(agent.id = %self.id, "agent removed; its actor stops");
            ctx.stop();
        }
    }

    fn enqueue(
        &mut self,
        command: Command,
        requester: String,
        ctx: &mut Context<Self>,
    ) -> ResponseFuture<Result<WatcherCommandResult, Problem>> {
        if self.retiring {
            let p = Problem::new(ErrorCode::AgentNotFound, format!("agent {} was removed", self.id))
                .for_agent(self.id.as_str());
            return Box::pin(async move { Err(p) });
        }
        if self.queue.len() >= self.deps.settings.queue_capacity {
            let p = Problem::new(
                ErrorCode::AgentBusy,
                format!("{} commands already wait for agent {}; try again later", self.queue.len(), self.id),
            )
            .for_agent(self.id.as_str());
            return Box::pin(async move { Err(p) });
        }
        let (tx, rx) = oneshot::channel();
        self.queue.push_back(Queued { command, requester, requested_at: Utc::now(), reply: tx });
        self.deps.metrics.commands_queued.inc();
        self.pump(ctx);
        let id = self.id.clone();
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(Problem::new(ErrorCode::ShuttingDown, "the command was dropped").for_agent(id.as_str()))
            })
        })
    }

    /// Runs the next queued command if none is running.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(next) = self.queue.pop_front() else { return };
        self.deps.metrics.commands_queued.dec();
        self.deps.metrics.commands_in_flight.inc();
        self.in_flight = Some(next.command.watcher());
        self.generation += 1;
        let Queued { command, requester, requested_at, reply } = next;
        let span = tracing::info_span!("command", agent.id = %self.id, action = command.watcher().as_str(), requester = %requester);
        let fut = tracing::Instrument::instrument(
            execute(self.id.clone(), self.deps.clone(), command, requester.clone(), requested_at),
            span,
        );
        ctx.spawn(fut.into_actor(self).map(move |(result, observation, outcome), act, ctx| {
            act.in_flight = None;
            act.generation += 1;
            act.deps.metrics.commands_in_flight.dec();
            if let Some(o) = observation {
                act.observe(o, ctx);
            }
            act.outcomes.push_front(CommandOutcome { requester, ..outcome });
            act.outcomes.truncate(OUTCOMES_KEPT);
            let _ = reply.send(result);
            act.pump(ctx);
            act.stop_if_retired(ctx);
        }));
    }

    fn observe(&mut self, o: Observation, ctx: &mut Context<Self>) {
        if self.deps.db.mode() == DatabaseMode::Standalone
            && let Some(t) = self.liveness.observe(&o, self.deps.settings.lost_after)
        {
            match self.deps.ha.fence() {
                Ok(fence) => self.write_liveness(t, fence, ctx),
                // A follower observes but does not write; the transition is decided again once it leads.
                Err(_) => self.liveness.settled(t.to, Err(())),
            }
        }
        let before = self.observed.as_ref().map(|p| (p.reachable, p.agent_status.clone()));
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
            // Only the leader keeps the trail (a follower's observations serve its own status answers).
            let Ok(fence) = self.deps.ha.fence() else {
                self.observed = Some(o);
                return;
            };
            let event = NewAgentEvent {
                epoch: fence,
                agent_id: self.id.to_string(),
                action: EventAction::Observe,
                requester: "supervisor".into(),
                requested_at: o.at,
                started_at: Some(o.at),
                finished_at: Some(o.at),
                outcome: EventOutcome::Observed,
                http_status: None,
                detail: json!({
                    "from": {"reachable": before.0, "agent_status": before.1},
                    "to": {"reachable": after.0, "agent_status": after.1},
                    "error": o.error,
                }),
            };
            let db = self.deps.db.clone();
            actix::spawn(async move {
                let stored = fence::insert_event(&db, fence, &event).await;
                if let Err(e) = stored {
                    tracing::warn!(error = %e, "could not record a watcher state change");
                }
            });
        }
        self.observed = Some(o);
    }

    /// Writes a liveness transition (conditionally: only if the row still says `from`) with its audit event; a real
    /// change is logged and counted.
    fn write_liveness(&mut self, t: Transition, fence: fence::Fence, ctx: &mut Context<Self>) {
        let (id, db) = (self.id.clone(), self.deps.db.clone());
        let to = t.to;
        let fut = async move {
            let written = async {
                let mut conn = db.conn().await?;
                conn.transaction::<bool, DbError, _>(async |conn| {
                    if let Some(epoch) = fence {
                        fence::check_epoch(conn, epoch).await?;
                    }
                    let changed = agents::transition_liveness(conn, id.as_str(), t.from, t.to, t.at).await?;
                    if changed {
                        let event = NewAgentEvent {
                            epoch: fence,
                            agent_id: id.to_string(),
                            action: EventAction::Liveness,
                            requester: "supervisor".into(),
                            requested_at: t.at,
                            started_at: Some(t.at),
                            finished_at: Some(t.at),
                            outcome: EventOutcome::Observed,
                            http_status: None,
                            detail: json!({"from": t.from, "to": t.to, "reason": t.reason}),
                        };
                        queries::insert_event(conn, &event).await?;
                    }
                    Ok(changed)
                })
                .await
            }
            .await;
            (written, t)
        };
        ctx.spawn(fut.into_actor(self).map(move |(written, t), act, _| {
            match &written {
                Ok(true) => {
                    tracing::warn!(agent.id = %act.id, from = %t.from, to = %t.to, reason = %t.reason, "agent liveness changed");
                    act.deps.metrics.liveness_transitions.with_label_values(&[t.to.as_str()]).inc();
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(agent.id = %act.id, error = %e, "could not record the agent's liveness"),
            }
            act.liveness.settled(to, written.map_err(|_| ()));
        }));
    }

    /// Asks the watcher for its status, sharing a call already in flight when no command has started or ended
    /// since it began; `waiter` (if any) gets the answer. So a request is never answered by a call that had ended
    /// before the request arrived, nor by one that began before the last change of state it could know about.
    fn status(&mut self, waiter: Option<StatusReply>, ctx: &mut Context<Self>) {
        let generation = self.generation;
        if let Some(flight) =
            self.joinable.and_then(|id| self.flights.get_mut(&id)).filter(|f| f.generation == generation)
        {
            flight.waiters.extend(waiter);
            return;
        }
        let id = self.next_flight;
        self.next_flight += 1;
        self.flights.insert(id, Flight { generation, waiters: waiter.into_iter().collect() });
        self.joinable = Some(id);
        let known = match (&self.endpoint, self.deps.directory.generation()) {
            (Some((at, e)), Some(now)) if *at == now => Some(e.clone()),
            _ => None,
        };
        let fut = fetch_status(self.id.clone(), self.deps.clone(), known);
        ctx.spawn(fut.into_actor(self).map(move |(result, observation, resolved), act, ctx| {
            if let Some(resolved) = resolved {
                act.endpoint = Some(resolved);
            }
            act.observe(observation, ctx);
            if act.joinable == Some(id) {
                act.joinable = None;
            }
            for w in act.flights.remove(&id).map(|f| f.waiters).unwrap_or_default() {
                let _ = w.send(result.clone());
            }
        }));
    }

    fn probe(&mut self, ctx: &mut Context<Self>) {
        self.status(None, ctx);
    }
}

impl Actor for AgentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let interval = self.deps.settings.probe_interval;
        if !interval.is_zero() {
            // Jitter spreads the probes of thousands of agents over the interval.
            let first = Duration::from_millis(rand::thread_rng().gen_range(0..=interval.as_millis() as u64));
            ctx.run_later(first, move |act, ctx| {
                act.probe(ctx);
                ctx.run_interval(interval, |act, ctx| act.probe(ctx));
            });
        }
    }
}

impl Handler<GetWatcherStatus> for AgentActor {
    type Result = ();

    fn handle(&mut self, msg: GetWatcherStatus, ctx: &mut Self::Context) {
        self.status(Some(msg.reply), ctx);
    }
}

impl Handler<WatcherAgentStart> for AgentActor {
    type Result = ResponseFuture<Result<WatcherCommandResult, Problem>>;
    fn handle(&mut self, msg: WatcherAgentStart, ctx: &mut Self::Context) -> Self::Result {
        self.enqueue(Command::Start, msg.requester, ctx)
    }
}

impl Handler<WatcherAgentStop> for AgentActor {
    type Result = ResponseFuture<Result<WatcherCommandResult, Problem>>;
    fn handle(&mut self, msg: WatcherAgentStop, ctx: &mut Self::Context) -> Self::Result {
        self.enqueue(Command::Stop { force: msg.force }, msg.requester, ctx)
    }
}

impl Handler<WatcherAgentRestart> for AgentActor {
    type Result = ResponseFuture<Result<WatcherCommandResult, Problem>>;
    fn handle(&mut self, msg: WatcherAgentRestart, ctx: &mut Self::Context) -> Self::Result {
        self.enqueue(Command::Restart, msg.requester, ctx)
    }
}

impl Handler<GetSnapshot> for AgentActor {
    type Result = MessageResult<GetSnapshot>;
    fn handle(&mut self, _: GetSnapshot, _: &mut Self::Context) -> Self::Result {
        MessageResult(AgentSnapshot {
            agent_id: self.id.clone(),
            watcher: self.observed.clone(),
            in_flight: self.in_flight,
            queued: self.queue.len(),
            recent: self.outcomes.iter().cloned().collect(),
        })
    }
}

/// Resolves the agent's watcher and token into an endpoint; with the directory's generation read before, so that an
/// endpoint kept for that generation is never newer than what it was resolved from.
async fn resolve(id: &AgentId, deps: &Deps) -> Result<(Option<u64>, watcher::Endpoint), Problem> {
    let generation = deps.directory.generation();
    let addr = deps.directory.watcher_address(id).await?;
    let token = deps.directory.watcher_token().await?;
    let endpoint = watcher::Endpoint::new(&addr, &token).map_err(Problem::from)?;
    Ok((generation, endpoint))
}

/// Makes one call (`None`: status; else the command) within its timeout, and records it in the metrics.
async fn call_watcher(
    endpoint: &watcher::Endpoint,
    deps: &Deps,
    command: Option<WatcherCommand>,
) -> Result<WatcherReply, Problem> {
    let called = Instant::now();
    let reply = match command {
        None => watcher::get_status(endpoint, deps.settings.status_timeout).await,
        Some(c) => watcher::send_command(endpoint, c, deps.settings.command_timeout).await,
    }
    .map_err(Problem::from);
    let elapsed = called.elapsed();
    match (command, &reply) {
        (None, Ok(_)) => deps.metrics.observe_status_ok(elapsed),
        (_, reply) => {
            let outcome = reply.as_ref().map_or_else(|p| p.code.as_str(), |_| "ok");
            deps.metrics.observe_watcher(command.map_or("status", WatcherCommand::as_str), outcome, elapsed);
        }
    }
    reply
}

/// Asks the watcher for its status (through `known`, or an endpoint resolved now and returned for reuse); always
/// yields an observation, even of a failure.
async fn fetch_status(
    id: AgentId,
    deps: Rc<Deps>,
    known: Option<Rc<watcher::Endpoint>>,
) -> (Result<GetWatcherStatusResult, Problem>, Observation, Option<(u64, Rc<watcher::Endpoint>)>) {
    let started = Instant::now();
    let mut resolved = None;
    let endpoint = match known {
        Some(e) => Ok(e),
        None => resolve(&id, &deps).await.map(|(generation, e)| {
            let e = Rc::new(e);
            resolved = generation.map(|g| (g, e.clone()));
            e
        }),
    };
    let result = match &endpoint {
        Ok(e) => call_watcher(e, &deps, None).await,
        Err(p) => Err(p.clone()),
    };
    let latency_ms = started.elapsed().as_millis() as u64;
    let observation = match &result {
        Ok(reply) => Observation {
            agent_status: reply.agent_state.as_ref().map(|s| s.as_str().to_owned()),
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
        .map(|reply| GetWatcherStatusResult {
            agent_id: id.clone(),
            raw: reply.raw,
            agent_state: reply.agent_state,
            latency_ms,
        })
        .map_err(|p| p.for_agent(id.as_str()));
    (result, observation, resolved)
}

/// One command, start to finish: audit row, pre-checks, the watcher call, the audit outcome.
async fn execute(
    id: AgentId,
    deps: Rc<Deps>,
    command: Command,
    requester: String,
    requested_at: DateTime<Utc>,
) -> (Result<WatcherCommandResult, Problem>, Option<Observation>, CommandOutcome) {
    let started = Instant::now();
    let wc = command.watcher();
    // Only the leader runs commands (high availability); `None` without it.
    let fence = match deps.ha.fence() {
        Ok(f) => f,
        Err(p) => {
            let p = p.for_agent(id.as_str());
            let outcome = outcome_of(None, wc, &requester, EventOutcome::Rejected, p.status(), started);
            return (Err(p), None, outcome);
        }
    };
    let event = NewAgentEvent {
        epoch: fence,
        agent_id: id.to_string(),
        action: EventAction::of_command(wc),
        requester: requester.clone(),
        requested_at,
        started_at: Some(Utc::now()),
        finished_at: None,
        outcome: EventOutcome::Running,
        http_status: None,
        detail: json!({"force": matches!(command, Command::Stop { force: true })}),
    };
    // A command that cannot be audited is not run; nor is one a newer leader's epoch has fenced off.
    let event_id = match fence::insert_event(&deps.db, fence, &event).await {
        Ok(eid) => eid,
        Err(e) => {
            let p = Problem::from(e).for_agent(id.as_str());
            let outcome = outcome_of(None, wc, &requester, EventOutcome::Failed, p.status(), started);
            return (Err(p), None, outcome);
        }
    };

    let (result, observation) = run_command(&id, &deps, command).await;
    if let Err(p) = &result
        && p.code == ErrorCode::NoLeader
    {
        // Deposed before the watcher was called: nothing ran. The row stays `running` until the new leader marks
        // it `interrupted`; this replica may not write it any more.
        let outcome = outcome_of(Some(event_id), wc, &requester, EventOutcome::Interrupted, p.status(), started);
        return (Err(p.clone().for_agent(id.as_str()).with("event_id", event_id)), observation, outcome);
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let (label, status, detail) = match &result {
        Ok(data) => (EventOutcome::Succeeded, 200u16, json!({"watcher": data, "elapsed_ms": elapsed_ms})),
        Err(p) => {
            let label = match p.code {
                ErrorCode::AgentAlreadyRunning | ErrorCode::AgentAlreadyStopped | ErrorCode::AgentHasRunningKernels => {
                    EventOutcome::Rejected
                }
                // The watcher may still finish the command after we stopped waiting.
                ErrorCode::WatcherTimeout => EventOutcome::Unknown,
                _ => EventOutcome::Failed,
            };
            (label, p.status(), json!({"problem": p.to_json(), "elapsed_ms": elapsed_ms}))
        }
    };
    tracing::info!(outcome = %label, http_status = status, elapsed_ms, "command finished");
    let finished = Finished { event_id, label, status, detail, at: Utc::now(), fence };
    match finished.record(&deps.db).await {
        Ok(()) => {}
        Err(DbError::Fenced { .. }) => {
            // A newer leader took over meanwhile: it marks this command `interrupted` (it cannot tell how it ended).
            tracing::warn!(event_id, outcome = %label, "deposed while the command ran; the new leader records it as interrupted");
        }
        Err(e) => {
            // The command ran; its row must not stay `running` (it would read as interrupted after a restart).
            tracing::warn!(event_id, error = %e, "could not record the command's outcome; retrying in the background");
            actix::spawn(record_outcome_later(deps.db.clone(), finished));
        }
    }
    let outcome = outcome_of(Some(event_id), wc, &requester, label, status, started);
    let result = result
        .map(|data| WatcherCommandResult { agent_id: id.clone(), command: wc, data, event_id, elapsed_ms })
        .map_err(|p| p.for_agent(id.as_str()).with("event_id", event_id));
    (result, observation, outcome)
}

/// A finished command's outcome, as its audit row records it.
struct Finished {
    event_id: i64,
    label: EventOutcome,
    status: u16,
    detail: Value,
    at: DateTime<Utc>,
    /// The epoch the command started under: only that leader may record how it ended.
    fence: fence::Fence,
}

impl Finished {
    async fn record(&self, db: &crate::db::Db) -> Result<(), crate::db::DbError> {
        let end = fence::EventEnd {
            id: self.event_id,
            outcome: self.label,
            http_status: Some(self.status as i16),
            detail: &self.detail,
            finished_at: self.at,
        };
        fence::finish_event(db, self.fence, &end).await
    }
}

/// Retries writing a command's outcome while the database is unavailable, every [`OUTCOME_RETRY_EVERY`] for up to
/// [`OUTCOME_RETRY_FOR`]; after that the row is left to be marked `interrupted` at the next start.
async fn record_outcome_later(db: crate::db::Db, finished: Finished) {
    let Finished { event_id, label, .. } = finished;
    let deadline = Instant::now() + OUTCOME_RETRY_FOR;
    while Instant::now() < deadline {
        actix_rt::time::sleep(OUTCOME_RETRY_EVERY).await;
        match finished.record(&db).await {
            Ok(()) => {
                tracing::info!(event_id, outcome = %label, "recorded the command's outcome after the database returned");
                return;
            }
            Err(DbError::Fenced { .. }) => {
                tracing::warn!(event_id, outcome = %label, "deposed before the outcome could be recorded");
                return;
            }
            Err(e) => tracing::debug!(event_id, error = %e, "the command's outcome is still not recorded"),
        }
    }
    tracing::error!(event_id, outcome = %label, "gave up recording the command's outcome");
}

/// How often, and for how long, an outcome that could not be written is retried.
const OUTCOME_RETRY_EVERY: Duration = Duration::from_secs(1);
const OUTCOME_RETRY_FOR: Duration = Duration::from_secs(600);

fn outcome_of(
    event_id: Option<i64>,
    command: WatcherCommand,
    requester: &str,
    outcome: EventOutcome,
    http_status: u16,
    started: Instant,
) -> CommandOutcome {
    CommandOutcome {
        event_id,
        command,
        requester: requester.to_owned(),
        outcome,
        http_status,
        finished_at: Utc::now(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

async fn run_command(id: &AgentId, deps: &Rc<Deps>, command: Command) -> (Result<Value, Problem>, Option<Observation>) {
    let mut observation = None;
    // Pre-checks: the current state decides whether the command makes sense, with any watcher.
    if matches!(command, Command::Start | Command::Stop { .. }) {
        let (status, obs, _) = fetch_status(id.clone(), deps.clone(), None).await;
        observation = Some(obs);
        let status = match status {
            Ok(s) => s,
            Err(p) => return (Err(p), observation),
        };
        // The protocol's table, so that Backend.AI's watcher (which runs anything) is refused as ours refuses.
        let state = status.agent_state.clone().unwrap_or_else(|| AgentState::parse(""));
        let wc = command.watcher();
        if let Some(p) = precheck(wc, &state).refusal(format!("agent {id} is {state}; {wc} was not sent")) {
            return (Err(p), observation);
        }
        if let Command::Stop { force: false } = command {
            let count =
                async { queries::count_occupying_kernels(&mut *deps.db.conn().await?, id.as_str()).await }.await;
            match count {
                Ok(0) => {}
                Ok(n) => {
                    let p = Problem::new(
                        ErrorCode::AgentHasRunningKernels,
                        format!(
                            "agent {id} has {n} kernel(s) occupying resources; stop with force=true to stop it anyway"
                        ),
                    )
                    .with("kernel_count", n);
                    return (Err(p), observation);
                }
                Err(e) => return (Err(Problem::from(e)), observation),
            }
        }
    }
    // The last moment to find out this replica no longer leads: after this the command is sent.
    if let Err(p) = deps.ha.fence() {
        return (Err(p), observation);
    }
    let reply = match resolve(id, deps).await {
        Ok((_, endpoint)) => call_watcher(&endpoint, deps, Some(command.watcher())).await,
        Err(p) => Err(p),
    };
    (reply.map(|r| r.body()), observation)
}
