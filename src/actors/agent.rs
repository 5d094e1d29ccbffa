//! `AgentActor`: one per agent. It serialises start/stop/restart in arrival order through a bounded FIFO it owns,
//! remembers how recent commands ended, probes the watcher on an interval, and audits every command in
//! `agent_events`. Status queries never queue behind a command: they run where they are asked (see [`status`]), and
//! the actor only tells them, through the agent's shared state, when a command starts and ends.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{
    Deps, OUTCOMES_KEPT,
    status::{self, AgentShared},
};
use crate::{
    db::{models::NewAgentEvent, queries},
    domain::AgentId,
    error::{ErrorCode, Problem},
    watcher::client::{self, WatcherCommand},
};

/// What the actor last observed of its watcher.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CommandOutcome {
    pub event_id: Option<i64>,
    pub command: WatcherCommand,
    pub requester: String,
    pub outcome: &'static str,
    pub http_status: u16,
    pub finished_at: DateTime<Utc>,
    pub elapsed_ms: u64,
}

/// Ask the watcher whether the agent service is up (seed: `GetWatcherStatusAction`).
#[derive(Debug, Message)]
#[rtype(result = "Result<GetWatcherStatusResult, Problem>")]
pub struct GetWatcherStatus;

/// `GetWatcherStatusActionResult`: the watcher's JSON, verbatim.
#[derive(Debug, Clone, Serialize)]
pub struct GetWatcherStatusResult {
    pub agent_id: AgentId,
    pub data: Value,
    pub latency_ms: u64,
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

/// The actor's state for listings.
#[derive(Debug, Message)]
#[rtype(result = "AgentSnapshot")]
pub struct GetSnapshot;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    deps: Deps,
    queue: VecDeque<Queued>,
    in_flight: Option<WatcherCommand>,
    outcomes: VecDeque<CommandOutcome>,
    /// What request threads read and write without a message: the last observation, and the generation the actor
    /// bumps when a command starts and when it ends (see [`status`]).
    shared: Arc<AgentShared>,
}

impl AgentActor {
    pub fn new(shared: Arc<AgentShared>, deps: Deps) -> Self {
        Self { id: shared.id().clone(), deps, queue: VecDeque::new(), in_flight: None, outcomes: VecDeque::new(), shared }
    }

    fn enqueue(&mut self, command: Command, requester: String, ctx: &mut Context<Self>) -> ResponseFuture<Result<WatcherCommandResult, Problem>> {
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
            rx.await.unwrap_or_else(|_| Err(Problem::new(ErrorCode::ShuttingDown, "the command was dropped").for_agent(id.as_str())))
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
        self.shared.bump_generation();
        let Queued { command, requester, requested_at, reply } = next;
        let span = tracing::info_span!("command", agent.id = %self.id, action = command.watcher().as_str(), requester = %requester);
        let fut = tracing::Instrument::instrument(execute(self.id.clone(), self.deps.clone(), command, requester.clone(), requested_at), span);
        ctx.spawn(fut.into_actor(self).map(move |(result, observation, outcome), act, ctx| {
            act.in_flight = None;
            act.shared.bump_generation();
            act.deps.metrics.commands_in_flight.dec();
            if let Some(o) = observation {
                act.shared.observe(o, &act.deps);
            }
            act.outcomes.push_front(CommandOutcome { requester, ..outcome });
            act.outcomes.truncate(OUTCOMES_KEPT);
            let _ = reply.send(result);
            act.pump(ctx);
        }));
    }

    fn probe(&mut self) {
        let (agent, deps) = (self.shared.clone(), self.deps.clone());
        actix_rt::spawn(async move {
            let _ = status::watcher_status(&agent, &deps).await;
        });
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
                act.probe();
                ctx.run_interval(interval, |act, _| act.probe());
            });
        }
    }
}

impl Handler<GetWatcherStatus> for AgentActor {
    type Result = ResponseFuture<Result<GetWatcherStatusResult, Problem>>;

    fn handle(&mut self, _: GetWatcherStatus, _: &mut Self::Context) -> Self::Result {
        let (agent, deps) = (self.shared.clone(), self.deps.clone());
        Box::pin(async move { status::watcher_status(&agent, &deps).await })
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
            watcher: self.shared.observed(),
            in_flight: self.in_flight,
            queued: self.queue.len(),
            recent: self.outcomes.iter().cloned().collect(),
        })
    }
}

/// One command, start to finish: audit row, pre-checks, the watcher call, the audit outcome.
async fn execute(
    id: AgentId,
    deps: Deps,
    command: Command,
    requester: String,
    requested_at: DateTime<Utc>,
) -> (Result<WatcherCommandResult, Problem>, Option<Observation>, CommandOutcome) {
    let started = Instant::now();
    let wc = command.watcher();
    let event = NewAgentEvent {
        agent_id: id.to_string(),
        action: wc.as_str().into(),
        requester: requester.clone(),
        requested_at,
        started_at: Some(Utc::now()),
        finished_at: None,
        outcome: "running".into(),
        http_status: None,
        detail: json!({"force": matches!(command, Command::Stop { force: true })}),
    };
    // A command that cannot be audited is not run.
    let event_id = match async { queries::insert_event(&mut *deps.db.conn().await?, &event).await }.await {
        Ok(eid) => eid,
        Err(e) => {
            let p = Problem::from(e).for_agent(id.as_str());
            let outcome = outcome_of(None, wc, &requester, "failed", p.status(), started);
            return (Err(p), None, outcome);
        }
    };

    let (result, observation) = run_command(&id, &deps, command).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let (label, status, detail) = match &result {
        Ok(data) => ("succeeded", 200u16, json!({"watcher": data, "elapsed_ms": elapsed_ms})),
        Err(p) => {
            let label = match p.code {
                ErrorCode::AgentAlreadyRunning | ErrorCode::AgentAlreadyStopped | ErrorCode::AgentHasRunningKernels => "rejected",
                // The watcher may still finish the command after we stopped waiting.
                ErrorCode::WatcherTimeout => "unknown",
                _ => "failed",
            };
            (label, p.status(), json!({"problem": p.to_json(), "elapsed_ms": elapsed_ms}))
        }
    };
    tracing::info!(outcome = label, http_status = status, elapsed_ms, "command finished");
    let finished_at = Utc::now();
    let finished = async { queries::finish_event(&mut *deps.db.conn().await?, event_id, label, Some(status as i16), &detail, finished_at).await }.await;
    if let Err(e) = finished {
        // The command ran; its row must not stay `running` (it would read as interrupted after a restart).
        tracing::warn!(event_id, error = %e, "could not record the command's outcome; retrying in the background");
        actix::spawn(record_outcome_later(deps.db.clone(), event_id, label, status, detail.clone(), finished_at));
    }
    let outcome = outcome_of(Some(event_id), wc, &requester, label, status, started);
    let result = result
        .map(|data| WatcherCommandResult { agent_id: id.clone(), command: wc, data, event_id, elapsed_ms })
        .map_err(|p| p.for_agent(id.as_str()).with("event_id", event_id));
    (result, observation, outcome)
}

/// Retries writing a command's outcome while the database is unavailable, every [`OUTCOME_RETRY_EVERY`] for up to
/// [`OUTCOME_RETRY_FOR`]; after that the row is left to be marked `interrupted` at the next start.
async fn record_outcome_later(db: crate::db::Db, event_id: i64, label: &'static str, status: u16, detail: Value, finished_at: DateTime<Utc>) {
    let deadline = Instant::now() + OUTCOME_RETRY_FOR;
    while Instant::now() < deadline {
        actix_rt::time::sleep(OUTCOME_RETRY_EVERY).await;
        let done = async { queries::finish_event(&mut *db.conn().await?, event_id, label, Some(status as i16), &detail, finished_at).await }.await;
        match done {
            Ok(_) => {
                tracing::info!(event_id, outcome = label, "recorded the command's outcome after the database returned");
                return;
            }
            Err(e) => tracing::debug!(event_id, error = %e, "the command's outcome is still not recorded"),
        }
    }
    tracing::error!(event_id, outcome = label, "gave up recording the command's outcome");
}

/// How often, and for how long, an outcome that could not be written is retried.
const OUTCOME_RETRY_EVERY: Duration = Duration::from_secs(1);
const OUTCOME_RETRY_FOR: Duration = Duration::from_secs(600);

fn outcome_of(event_id: Option<i64>, command: WatcherCommand, requester: &str, outcome: &'static str, http_status: u16, started: Instant) -> CommandOutcome {
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

async fn run_command(id: &AgentId, deps: &Deps, command: Command) -> (Result<Value, Problem>, Option<Observation>) {
    let mut observation = None;
    // Pre-checks: the current state decides whether the command makes sense, with any watcher.
    if matches!(command, Command::Start | Command::Stop { .. }) {
        let (status, obs) = status::fetch_status(id.clone(), deps).await;
        observation = Some(obs);
        let status = match status {
            Ok(s) => s,
            Err(p) => return (Err(p), observation),
        };
        let agent_status = status.data.get("agent-status").and_then(Value::as_str).unwrap_or("");
        match (command, agent_status) {
            (Command::Start, "active" | "activating" | "reloading") => {
                let p = Problem::new(ErrorCode::AgentAlreadyRunning, format!("agent {id} is {agent_status}; start was not sent"));
                return (Err(p), observation);
            }
            (Command::Stop { .. }, "inactive") => {
                let p = Problem::new(ErrorCode::AgentAlreadyStopped, format!("agent {id} is inactive; stop was not sent"));
                return (Err(p), observation);
            }
            _ => {}
        }
        if let Command::Stop { force: false } = command {
            let count = async { queries::count_occupying_kernels(&mut *deps.db.conn().await?, id.as_str()).await }.await;
            match count {
                Ok(0) => {}
                Ok(n) => {
                    let p = Problem::new(
                        ErrorCode::AgentHasRunningKernels,
                        format!("agent {id} has {n} kernel(s) occupying resources; stop with force=true to stop it anyway"),
                    )
                    .with("kernel_count", n);
                    return (Err(p), observation);
                }
                Err(e) => return (Err(Problem::from(e)), observation),
            }
        }
    }
    let reply = async {
        let addr = deps.directory.watcher_address(id).await.map_err(Problem::from)?;
        let token = deps.directory.watcher_token().await.map_err(Problem::from)?;
        let called = Instant::now();
        let reply = client::send_command(&addr, &token, command.watcher(), deps.settings.command_timeout).await.map_err(Problem::from);
        let outcome = reply.as_ref().map_or_else(|p| p.code.as_str(), |_| "ok");
        deps.metrics.observe_watcher(command.watcher().as_str(), outcome, called.elapsed());
        reply
    }
    .await;
    (reply.map(|r| r.body), observation)
}
