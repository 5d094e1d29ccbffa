//! Backend.AI-compatible routes: bodies and answers as the official client expects them.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    AppState, Authenticated, Superadmin,
    body::Body,
    openapi::{WatcherCommandReport, WatcherReport},
    params::agent_params,
};
use crate::{
    error::Problem,
    service::{
        GetWatcherStatusAction, RecalculateUsageAction, SyncAgentRegistryAction, WatcherAgentRestartAction,
        WatcherAgentStartAction, WatcherAgentStopAction,
    },
};

/// The API version the official client negotiates (it reads only `version`).
pub use agent_supervisor_protocol::signing::API_VERSION;

/// `GET /`: what the official client negotiates from.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionInfo {
    /// The Backend.AI API version served.
    #[schema(example = "v7.20230615")]
    pub version: &'static str,
    pub manager: &'static str,
}

/// `GET /manager/announcement`: never an announcement.
#[derive(Debug, Serialize, ToSchema)]
pub struct Announcement {
    pub enabled: bool,
    pub message: &'static str,
}

/// `{}`: Backend.AI's answer to sync and recalculation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Empty {}

/// The agent a Backend.AI-compatible route acts on: `agent_id`, or its alias `agent` (one of them is required;
/// `agent_id` wins when both are given). Unknown fields are refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentRef {
    #[schema(value_type = Option<String>, nullable = false, pattern = "^[A-Za-z0-9._:@-]{1,64}$")]
    pub agent_id: Option<String>,
    #[schema(value_type = Option<String>, nullable = false, pattern = "^[A-Za-z0-9._:@-]{1,64}$")]
    pub agent: Option<String>,
}

/// [`AgentRef`] plus `force`, which stops an agent that still runs kernels.
#[derive(Debug, Serialize, ToSchema)]
pub struct StopRef {
    #[schema(value_type = Option<String>, nullable = false, pattern = "^[A-Za-z0-9._:@-]{1,64}$")]
    pub agent_id: Option<String>,
    #[schema(value_type = Option<String>, nullable = false, pattern = "^[A-Za-z0-9._:@-]{1,64}$")]
    pub agent: Option<String>,
    pub force: Option<bool>,
}

#[utoipa::path(get, path = "/", tag = "backend.ai", operation_id = "compat_version",
    responses((status = 200, description = "The API version the client negotiates from (unsigned)", body = VersionInfo)))]
pub async fn version() -> HttpResponse {
    HttpResponse::Ok()
        .json(VersionInfo { version: API_VERSION, manager: concat!("agent-supervisor ", env!("CARGO_PKG_VERSION")) })
}

/// Open, signed or not: the 23.09 manager does not require authentication here, and the client ignores failures.
#[utoipa::path(get, path = "/manager/announcement", tag = "backend.ai", operation_id = "compat_announcement",
    responses((status = 200, description = "No announcement (signed or not)", body = Announcement)))]
pub async fn announcement() -> HttpResponse {
    HttpResponse::Ok().json(Announcement { enabled: false, message: "" })
}

/// `GET /resource/watcher`: `agent_id` from a JSON body (client 23.09) or the query (newer clients).
#[utoipa::path(get, path = "/resource/watcher", tag = "backend.ai", operation_id = "compat_watcher_status",
    description = "The agent's watcher status, verbatim. The agent is named by `agent_id` (alias `agent`) in the \
                   query string, or in a JSON body (the 23.09 client sends a body with its GET); a non-empty body wins.",
    params(
        ("agent_id" = Option<String>, Query, description = "The agent (when there is no body)"),
        ("agent" = Option<String>, Query, description = "Alias of `agent_id`"),
    ),
    request_body(content = Option<AgentRef>, content_type = "application/json"),
    responses(
        (status = 200, description = "The watcher's JSON, verbatim", body = WatcherReport),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::WatcherUnauthorized),
        (status = 403, response = super::openapi::WatcherForbidden),
        (status = 404, response = super::openapi::AgentNotFound),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 500, response = super::openapi::InternalError),
        (status = 502, response = super::openapi::WatcherBadGateway),
        (status = 503, response = super::openapi::Unavailable),
        (status = 504, response = super::openapi::WatcherTimeout),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn watcher_status(
    _who: Superadmin,
    req: HttpRequest,
    body: Body,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let p = agent_params(&body.0, req.query_string(), false)?;
    let result = state.supervisor.get_watcher_status(GetWatcherStatusAction { agent_id: p.agent_id }).await?;
    Ok(HttpResponse::Ok().insert_header(actix_web::http::header::ContentType::json()).body(result.raw))
}

#[utoipa::path(post, path = "/resource/watcher/agent/start", tag = "backend.ai", operation_id = "compat_watcher_start",
    description = "Start the agent through its watcher. The agent is named in a JSON body (or the query string).",
    params(
        ("agent_id" = Option<String>, Query, description = "The agent (when there is no body)"),
        ("agent" = Option<String>, Query, description = "Alias of `agent_id`"),
    ),
    request_body(content = Option<AgentRef>, content_type = "application/json"),
    responses(
        (status = 200, description = "The watcher's JSON, verbatim", body = WatcherCommandReport),
        super::openapi::WatcherCommandErrors,
        (status = 409, description = "`agent_already_running`", body = super::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 500, description = "`agent_start_failed` (with the watcher's reason) or `internal_error`", body = super::openapi::ProblemDocument, content_type = "application/problem+json"),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn watcher_start(
    who: Superadmin,
    req: HttpRequest,
    body: Body,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let p = agent_params(&body.0, req.query_string(), false)?;
    let result = state
        .supervisor
        .watcher_agent_start(WatcherAgentStartAction { agent_id: p.agent_id, requester: who.0.name })
        .await?;
    Ok(HttpResponse::Ok().json(result.data))
}

#[utoipa::path(post, path = "/resource/watcher/agent/stop", tag = "backend.ai", operation_id = "compat_watcher_stop",
    description = "Stop the agent through its watcher; refused while it runs kernels unless `force` is true.",
    params(
        ("agent_id" = Option<String>, Query, description = "The agent (when there is no body)"),
        ("agent" = Option<String>, Query, description = "Alias of `agent_id`"),
        ("force" = Option<bool>, Query, description = "Stop even with kernels running (when there is no body)"),
    ),
    request_body(content = Option<StopRef>, content_type = "application/json"),
    responses(
        (status = 200, description = "The watcher's JSON, verbatim", body = WatcherCommandReport),
        super::openapi::WatcherCommandErrors,
        (status = 409, description = "`agent_already_stopped`, or `agent_has_running_kernels` (with `kernel_count`)", body = super::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 500, description = "`agent_stop_failed` (with the watcher's reason) or `internal_error`", body = super::openapi::ProblemDocument, content_type = "application/problem+json"),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn watcher_stop(
    who: Superadmin,
    req: HttpRequest,
    body: Body,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let p = agent_params(&body.0, req.query_string(), true)?;
    let action = WatcherAgentStopAction { agent_id: p.agent_id, force: p.force, requester: who.0.name };
    let result = state.supervisor.watcher_agent_stop(action).await?;
    Ok(HttpResponse::Ok().json(result.data))
}

#[utoipa::path(post, path = "/resource/watcher/agent/restart", tag = "backend.ai", operation_id = "compat_watcher_restart",
    description = "Restart the agent through its watcher (on a stopped agent this starts it).",
    params(
        ("agent_id" = Option<String>, Query, description = "The agent (when there is no body)"),
        ("agent" = Option<String>, Query, description = "Alias of `agent_id`"),
    ),
    request_body(content = Option<AgentRef>, content_type = "application/json"),
    responses(
        (status = 200, description = "The watcher's JSON, verbatim", body = WatcherCommandReport),
        super::openapi::WatcherCommandErrors,
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 500, description = "`agent_restart_failed` (with the watcher's reason) or `internal_error`", body = super::openapi::ProblemDocument, content_type = "application/problem+json"),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn watcher_restart(
    who: Superadmin,
    req: HttpRequest,
    body: Body,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let p = agent_params(&body.0, req.query_string(), false)?;
    let result = state
        .supervisor
        .watcher_agent_restart(WatcherAgentRestartAction { agent_id: p.agent_id, requester: who.0.name })
        .await?;
    Ok(HttpResponse::Ok().json(result.data))
}

/// `POST /session/_/sync-agent-registry` with `{"agent": id}` → `{}`.
#[utoipa::path(post, path = "/session/_/sync-agent-registry", tag = "backend.ai", operation_id = "compat_sync_agent_registry",
    description = "Tell the agent which kernels the database thinks it runs (any active keypair may ask).",
    params(
        ("agent_id" = Option<String>, Query, description = "The agent (when there is no body)"),
        ("agent" = Option<String>, Query, description = "Alias of `agent_id`"),
    ),
    request_body(content = Option<AgentRef>, content_type = "application/json"),
    responses(
        (status = 200, description = "Synced", body = Empty),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 404, response = super::openapi::AgentNotFound),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 500, response = super::openapi::InternalError),
        (status = 502, response = super::openapi::RpcBadGateway),
        (status = 503, response = super::openapi::Unavailable),
        (status = 504, response = super::openapi::RpcTimeout),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn sync_agent_registry(
    who: Authenticated,
    req: HttpRequest,
    body: Body,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let p = agent_params(&body.0, req.query_string(), false)?;
    state
        .supervisor
        .sync_agent_registry(SyncAgentRegistryAction { agent_id: p.agent_id, requester: who.0.name })
        .await?;
    Ok(HttpResponse::Ok().json(Empty {}))
}

/// `POST /resource/recalculate-usage` → `{}`. The official client sends an empty `text/plain` body.
#[utoipa::path(post, path = "/resource/recalculate-usage", tag = "backend.ai", operation_id = "compat_recalculate_usage",
    description = "Recompute every agent's occupied slots and each access key's concurrency. Any body is ignored \
                   (the official client sends an empty `text/plain` one).",
    responses(
        (status = 200, description = "Recalculated", body = Empty),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 500, response = super::openapi::InternalError),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("backendai" = [], "backendai_date" = [], "backendai_version" = [])))]
pub async fn recalculate_usage(who: Superadmin, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    state.supervisor.recalculate_usage(RecalculateUsageAction { requester: who.0.name }).await?;
    Ok(HttpResponse::Ok().json(Empty {}))
}
