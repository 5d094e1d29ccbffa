//! Our own `/v1` API: richer answers (audit ids, timings, cached supervision state).

use actix_web::{HttpRequest, HttpResponse, web};

use super::{
    AppState, Authenticated, Superadmin,
    body::Body,
    openapi::{
        AgentNotFound, BadRequest, Forbidden, InternalError, PayloadTooLarge, ProblemDocument, RpcBadGateway,
        RpcTimeout, SignedRouteErrors, Unauthorized, Unavailable, WatcherBadGateway, WatcherForbidden, WatcherTimeout,
        WatcherUnauthorized,
    },
    params::{force_from_query, parse_agent_id, parse_bool, query_pairs},
    types::{
        AgentEvents, AgentList, CommandReply, DeregisteredAgent, RegisterAgent, RegisteredAgent, UpdateAgent,
        WatcherStatusReply, WhoAmI,
    },
};
use crate::{
    actors::{RecalculateUsageResult, SyncAgentRegistryResult},
    error::Problem,
    service::{
        GetWatcherStatusAction, RecalculateUsageAction, SyncAgentRegistryAction, WatcherAgentRestartAction,
        WatcherAgentStartAction, WatcherAgentStopAction, WatcherCommandActionResult,
    },
};

const DEFAULT_EVENTS: i64 = 50;
const MAX_EVENTS: i64 = 1000;

/// Registers an agent (standalone mode): its row and its watcher's etcd keys, together; registering a registered
/// agent replaces its registration (its status, liveness and occupied slots stay).
#[utoipa::path(post, path = "/v1/agents", tag = "v1", operation_id = "agent_register",
    request_body(content = RegisterAgent, content_type = "application/json"),
    responses(
        SignedRouteErrors,
        (status = 200, description = "Registered; `created` says whether it is new", body = RegisteredAgent),
        (status = 404, description = "`scaling_group_not_found` (give `create_scaling_group: true` to create it)", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "`managed_by_backend_ai`: in Backend.AI mode agents are Backend.AI's", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn register(
    who: Superadmin,
    req: HttpRequest,
    body: Body,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    Ok(HttpResponse::Ok().json(state.supervisor.register_agent(&body.0, &who.0.name).await?))
}

/// One agent: its row and the supervision state its actor holds (no watcher round trip).
#[utoipa::path(get, path = "/v1/agents/{id}", tag = "v1", operation_id = "agent_get",
    params(("id" = String, Path, description = "The agent id")),
    responses(
        SignedRouteErrors,
        (status = 200, description = "The agent", body = crate::service::AgentListing),
        (status = 404, response = AgentNotFound),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn get_agent(
    _who: Superadmin,
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    let agent_id = parse_agent_id("agent_id", &path)?;
    Ok(HttpResponse::Ok().json(state.supervisor.get_agent(&agent_id).await?))
}

/// Changes a registered agent: the fields given (schedulable, scaling group, region, RPC address and key, slots,
/// the watcher's address); the others stay.
#[utoipa::path(patch, path = "/v1/agents/{id}", tag = "v1", operation_id = "agent_update",
    params(("id" = String, Path, description = "The agent id")),
    request_body(content = UpdateAgent, content_type = "application/json"),
    responses(
        SignedRouteErrors,
        (status = 200, description = "Changed", body = RegisteredAgent),
        (status = 404, description = "`agent_not_found`, or `scaling_group_not_found`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, description = "`managed_by_backend_ai`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, response = PayloadTooLarge),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn update_agent(
    who: Superadmin,
    req: HttpRequest,
    path: web::Path<String>,
    body: Body,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    let agent_id = parse_agent_id("agent_id", &path)?;
    Ok(HttpResponse::Ok().json(state.supervisor.update_agent(&agent_id, &body.0, &who.0.name).await?))
}

/// Removes an agent: its row and its watcher's etcd keys; refused while kernels occupy it unless `force` (their
/// `agent` is then cleared). Its audit trail stays.
#[utoipa::path(delete, path = "/v1/agents/{id}", tag = "v1", operation_id = "agent_deregister",
    params(
        ("id" = String, Path, description = "The agent id"),
        ("force" = Option<bool>, Query, description = "Remove it even with kernels occupying it"),
    ),
    responses(
        SignedRouteErrors,
        (status = 200, description = "Removed", body = DeregisteredAgent),
        (status = 404, response = AgentNotFound),
        (status = 409, description = "`agent_has_running_kernels` (with `kernel_count`), or `managed_by_backend_ai`", body = ProblemDocument, content_type = "application/problem+json"),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn deregister(
    who: Superadmin,
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let force = force_from_query(req.query_string())?;
    let agent_id = parse_agent_id("agent_id", &path)?;
    Ok(HttpResponse::Ok().json(state.supervisor.deregister_agent(&agent_id, force, &who.0.name).await?))
}

/// The verified caller: lets a client check its credentials (any active keypair).
#[utoipa::path(get, path = "/v1/whoami", tag = "v1", operation_id = "whoami",
    responses(
        (status = 200, description = "The keypair that signed the request", body = WhoAmI),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn whoami(who: Authenticated) -> HttpResponse {
    HttpResponse::Ok().json(WhoAmI { access_key: who.0.name, is_superadmin: who.0.is_superadmin })
}

/// This replica's role in the cluster (high availability): role, epoch, the leader, the replicas. Answered by the
/// replica asked, never forwarded.
#[utoipa::path(get, path = "/v1/cluster", tag = "v1", operation_id = "cluster",
    responses(
        (status = 200, description = "The cluster as this replica sees it", body = crate::ha::ClusterView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn cluster(_who: Superadmin, req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    Ok(HttpResponse::Ok().json(state.supervisor.leadership().view()))
}

/// Every agent with the supervision state its actor holds (no watcher round trips), or with `refresh=true` after
/// asking every listed watcher (at most `watcher.refresh_concurrency` at a time).
#[utoipa::path(get, path = "/v1/agents", tag = "v1", operation_id = "list_agents",
    params(
        ("scaling_group" = Option<String>, Query, description = "Only the agents of this scaling group"),
        ("refresh" = Option<bool>, Query, description = "Ask every listed watcher for its status first"),
        ("unregistered" = Option<bool>, Query, description = "Also list the agents etcd knows that have no row (needs `agents.discover`; else 400)"),
    ),
    responses(
        SignedRouteErrors,
        (status = 200, description = "The agents", body = AgentList),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn list_agents(
    _who: Superadmin,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let pairs = query_pairs(req.query_string(), &["scaling_group", "refresh", "unregistered"])?;
    let sg = pairs.iter().find(|(k, _)| k == "scaling_group").map(|(_, v)| v.as_str());
    let flag = |name: &str| match pairs.iter().find(|(k, _)| k == name) {
        Some((_, v)) => parse_bool(name, v),
        None => Ok(false),
    };
    let unregistered = if flag("unregistered")? { Some(state.supervisor.unregistered_agents().await?) } else { None };
    let agents = if flag("refresh")? {
        state.supervisor.list_agents_refreshed(sg).await?
    } else {
        state.supervisor.list_agents(sg).await?
    };
    Ok(HttpResponse::Ok().json(AgentList { agents, unregistered }))
}

#[utoipa::path(get, path = "/v1/agents/{id}/watcher", tag = "v1", operation_id = "agent_watcher_status",
    params(("id" = String, Path, description = "The agent id")),
    responses(
        (status = 200, description = "The watcher's status", body = WatcherStatusReply),
        (status = 400, response = BadRequest),
        (status = 401, response = WatcherUnauthorized),
        (status = 403, response = WatcherForbidden),
        (status = 404, response = AgentNotFound),
        (status = 500, response = InternalError),
        (status = 502, response = WatcherBadGateway),
        (status = 503, response = Unavailable),
        (status = 504, response = WatcherTimeout),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn watcher_status(
    _who: Superadmin,
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    let agent_id = parse_agent_id("agent_id", &path)?;
    let r = state.supervisor.get_watcher_status(GetWatcherStatusAction { agent_id }).await?;
    Ok(HttpResponse::Ok().json(WatcherStatusReply {
        watcher: r.data(),
        agent_id: r.agent_id,
        latency_ms: r.latency_ms,
    }))
}

fn command_reply(r: WatcherCommandActionResult) -> HttpResponse {
    HttpResponse::Ok().json(CommandReply {
        agent_id: r.agent_id,
        command: r.command,
        result: r.data,
        event_id: r.event_id,
        elapsed_ms: r.elapsed_ms,
    })
}

#[utoipa::path(post, path = "/v1/agents/{id}/start", tag = "v1", operation_id = "agent_start",
    params(("id" = String, Path, description = "The agent id")),
    responses(
        (status = 200, description = "Started", body = CommandReply),
        super::openapi::WatcherCommandErrors,
        (status = 409, description = "`agent_already_running`", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 500, description = "`agent_start_failed` (with the watcher's reason) or `internal_error`", body = ProblemDocument, content_type = "application/problem+json"),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn start(
    who: Superadmin,
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    let agent_id = parse_agent_id("agent_id", &path)?;
    Ok(command_reply(
        state.supervisor.watcher_agent_start(WatcherAgentStartAction { agent_id, requester: who.0.name }).await?,
    ))
}

#[utoipa::path(post, path = "/v1/agents/{id}/stop", tag = "v1", operation_id = "agent_stop",
    params(
        ("id" = String, Path, description = "The agent id"),
        ("force" = Option<bool>, Query, description = "Stop even with kernels running (`true`/`1`/`yes`, `false`/`0`/`no`)"),
    ),
    responses(
        (status = 200, description = "Stopped", body = CommandReply),
        super::openapi::WatcherCommandErrors,
        (status = 409, description = "`agent_already_stopped`, or `agent_has_running_kernels` (with `kernel_count`)", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 500, description = "`agent_stop_failed` (with the watcher's reason) or `internal_error`", body = ProblemDocument, content_type = "application/problem+json"),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn stop(
    who: Superadmin,
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let force = force_from_query(req.query_string())?;
    let agent_id = parse_agent_id("agent_id", &path)?;
    Ok(command_reply(
        state.supervisor.watcher_agent_stop(WatcherAgentStopAction { agent_id, force, requester: who.0.name }).await?,
    ))
}

#[utoipa::path(post, path = "/v1/agents/{id}/restart", tag = "v1", operation_id = "agent_restart",
    params(("id" = String, Path, description = "The agent id")),
    responses(
        (status = 200, description = "Restarted (a stopped agent is started)", body = CommandReply),
        super::openapi::WatcherCommandErrors,
        (status = 500, description = "`agent_restart_failed` (with the watcher's reason) or `internal_error`", body = ProblemDocument, content_type = "application/problem+json"),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn restart(
    who: Superadmin,
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    let agent_id = parse_agent_id("agent_id", &path)?;
    Ok(command_reply(
        state.supervisor.watcher_agent_restart(WatcherAgentRestartAction { agent_id, requester: who.0.name }).await?,
    ))
}

#[utoipa::path(get, path = "/v1/agents/{id}/events", tag = "v1", operation_id = "agent_events",
    params(
        ("id" = String, Path, description = "The agent id"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "How many events, newest first (default 50)"),
        ("before" = Option<i64>, Query, minimum = 1, description = "Only events older than this event id: the next page after a page whose last event had this id"),
    ),
    responses(
        SignedRouteErrors,
        (status = 200, description = "The agent's audit trail", body = AgentEvents),
        (status = 404, response = AgentNotFound),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn events(
    _who: Superadmin,
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let pairs = query_pairs(req.query_string(), &["limit", "before"])?;
    let limit = match pairs.iter().find(|(k, _)| k == "limit") {
        Some((_, v)) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_EVENTS).contains(n))
            .ok_or_else(|| Problem::invalid_field("limit", format!("must be 1..={MAX_EVENTS}")))?,
        None => DEFAULT_EVENTS,
    };
    let before = match pairs.iter().find(|(k, _)| k == "before") {
        Some((_, v)) => Some(
            v.parse::<i64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| Problem::invalid_field("before", "must be an event id (a positive integer)"))?,
        ),
        None => None,
    };
    let agent_id = parse_agent_id("agent_id", &path)?;
    let events = state.supervisor.agent_events(&agent_id, limit, before).await?;
    Ok(HttpResponse::Ok().json(AgentEvents { agent_id, events }))
}

/// `POST /v1/agents/{id}/sync` → the agent's row, how many kernels were sent, and warnings.
#[utoipa::path(post, path = "/v1/agents/{id}/sync", tag = "v1", operation_id = "agent_sync",
    description = "Tell the agent which kernels the database thinks it runs (any active keypair may ask).",
    params(("id" = String, Path, description = "The agent id")),
    responses(
        (status = 200, description = "The agent's row after the sync, and what was sent", body = SyncAgentRegistryResult),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = AgentNotFound),
        (status = 500, response = InternalError),
        (status = 502, response = RpcBadGateway),
        (status = 503, response = Unavailable),
        (status = 504, response = RpcTimeout),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn sync(
    who: Authenticated,
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    let agent_id = parse_agent_id("agent_id", &path)?;
    let r = state.supervisor.sync_agent_registry(SyncAgentRegistryAction { agent_id, requester: who.0.name }).await?;
    Ok(HttpResponse::Ok().json(r))
}

/// `POST /v1/usage/recalculate` → the report.
#[utoipa::path(post, path = "/v1/usage/recalculate", tag = "v1", operation_id = "usage_recalculate",
    description = "Recompute every agent's occupied slots and each access key's concurrency in one transaction. \
                   Concurrent requests coalesce: one arriving during a run gets the next run's report.",
    responses(
        SignedRouteErrors,
        (status = 200, description = "The report of the run that answered", body = RecalculateUsageResult),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn recalculate(
    who: Superadmin,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    let r: RecalculateUsageResult =
        state.supervisor.recalculate_usage(RecalculateUsageAction { requester: who.0.name }).await?;
    Ok(HttpResponse::Ok().json(r))
}
