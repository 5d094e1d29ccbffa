//! Backend.AI-compatible routes: bodies and answers as the official client expects them.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::{AppState, Authenticated, Superadmin, params::agent_params};
use crate::{
    error::Problem,
    service::{
        GetWatcherStatusAction, RecalculateUsageAction, SyncAgentRegistryAction, WatcherAgentRestartAction,
        WatcherAgentStartAction, WatcherAgentStopAction,
    },
};

/// The API version the official client negotiates (it reads only `version`).
pub const API_VERSION: &str = "v7.20230615";

pub async fn version() -> HttpResponse {
    HttpResponse::Ok().json(json!({"version": API_VERSION, "manager": concat!("agent-supervisor ", env!("CARGO_PKG_VERSION"))}))
}

/// Open, signed or not: the 23.09 manager does not require authentication here, and the client ignores failures.
pub async fn announcement() -> HttpResponse {
    HttpResponse::Ok().json(json!({"enabled": false, "message": ""}))
}

/// `GET /resource/watcher`: `agent_id` from a JSON body (client 23.09) or the query (newer clients).
pub async fn watcher_status(_who: Superadmin, req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let p = agent_params(&body, req.query_string(), false)?;
    let result = state.supervisor.get_watcher_status(GetWatcherStatusAction { agent_id: p.agent_id }).await?;
    Ok(HttpResponse::Ok().json(result.data))
}

pub async fn watcher_start(who: Superadmin, req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let p = agent_params(&body, req.query_string(), false)?;
    let result = state.supervisor.watcher_agent_start(WatcherAgentStartAction { agent_id: p.agent_id, requester: who.0.name }).await?;
    Ok(HttpResponse::Ok().json(result.data))
}

pub async fn watcher_stop(who: Superadmin, req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let p = agent_params(&body, req.query_string(), true)?;
    let action = WatcherAgentStopAction { agent_id: p.agent_id, force: p.force, requester: who.0.name };
    let result = state.supervisor.watcher_agent_stop(action).await?;
    Ok(HttpResponse::Ok().json(result.data))
}

pub async fn watcher_restart(who: Superadmin, req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let p = agent_params(&body, req.query_string(), false)?;
    let result = state.supervisor.watcher_agent_restart(WatcherAgentRestartAction { agent_id: p.agent_id, requester: who.0.name }).await?;
    Ok(HttpResponse::Ok().json(result.data))
}

/// `POST /session/_/sync-agent-registry` with `{"agent": id}` → `{}`.
pub async fn sync_agent_registry(who: Authenticated, req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let p = agent_params(&body, req.query_string(), false)?;
    state.supervisor.sync_agent_registry(SyncAgentRegistryAction { agent_id: p.agent_id, requester: who.0.name }).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// `POST /resource/recalculate-usage` → `{}`. The official client sends an empty `text/plain` body.
pub async fn recalculate_usage(who: Superadmin, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    state.supervisor.recalculate_usage(RecalculateUsageAction { requester: who.0.name }).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}
