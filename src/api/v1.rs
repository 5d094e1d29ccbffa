//! Our own `/v1` API: richer answers (audit ids, timings, cached supervision state).

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::{AppState, Authenticated, Superadmin, params::{force_from_query, parse_agent_id, parse_bool, query_pairs}};
use crate::{
    error::Problem,
    service::{
        GetWatcherStatusAction, RecalculateUsageAction, SyncAgentRegistryAction, WatcherAgentRestartAction,
        WatcherAgentStartAction, WatcherAgentStopAction,
    },
};

const DEFAULT_EVENTS: i64 = 50;
const MAX_EVENTS: i64 = 1000;

/// The verified caller: lets a client check its credentials (any active keypair).
pub async fn whoami(who: Authenticated) -> HttpResponse {
    HttpResponse::Ok().json(json!({"access_key": who.name, "is_superadmin": who.is_superadmin}))
}

pub async fn list_agents(_who: Superadmin, req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let pairs = query_pairs(req.query_string(), &["scaling_group", "refresh"])?;
    let sg = pairs.iter().find(|(k, _)| k == "scaling_group").map(|(_, v)| v.as_str());
    let refresh = match pairs.iter().find(|(k, _)| k == "refresh") {
        Some((_, v)) => parse_bool("refresh", v)?,
        None => false,
    };
    let agents = if refresh { state.supervisor.list_agents_refreshed(sg).await? } else { state.supervisor.list_agents(sg).await? };
    Ok(HttpResponse::Ok().json(json!({ "agents": agents })))
}

pub async fn watcher_status(_who: Superadmin, req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    let agent_id = parse_agent_id("agent_id", &path)?;
    let r = state.supervisor.get_watcher_status(GetWatcherStatusAction { agent_id }).await?;
    Ok(HttpResponse::Ok().json(json!({"agent_id": r.agent_id, "watcher": r.data, "latency_ms": r.latency_ms})))
}

fn command_reply(r: crate::service::WatcherCommandActionResult) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "agent_id": r.agent_id,
        "command": r.command,
        "result": r.data,
        "event_id": r.event_id,
        "elapsed_ms": r.elapsed_ms,
    }))
}

pub async fn start(who: Superadmin, req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    let agent_id = parse_agent_id("agent_id", &path)?;
    Ok(command_reply(state.supervisor.watcher_agent_start(WatcherAgentStartAction { agent_id, requester: who.0.name }).await?))
}

pub async fn stop(who: Superadmin, req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let force = force_from_query(req.query_string())?;
    let agent_id = parse_agent_id("agent_id", &path)?;
    Ok(command_reply(state.supervisor.watcher_agent_stop(WatcherAgentStopAction { agent_id, force, requester: who.0.name }).await?))
}

pub async fn restart(who: Superadmin, req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    let agent_id = parse_agent_id("agent_id", &path)?;
    Ok(command_reply(state.supervisor.watcher_agent_restart(WatcherAgentRestartAction { agent_id, requester: who.0.name }).await?))
}

pub async fn events(_who: Superadmin, req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let pairs = query_pairs(req.query_string(), &["limit"])?;
    let limit = match pairs.iter().find(|(k, _)| k == "limit") {
        Some((_, v)) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_EVENTS).contains(n))
            .ok_or_else(|| Problem::invalid_field("limit", format!("must be 1..={MAX_EVENTS}")))?,
        None => DEFAULT_EVENTS,
    };
    let agent_id = parse_agent_id("agent_id", &path)?;
    let events = state.supervisor.agent_events(&agent_id, limit).await?;
    Ok(HttpResponse::Ok().json(json!({"agent_id": agent_id, "events": events})))
}

/// `POST /v1/agents/{id}/sync` → the agent's row, how many kernels were sent, and warnings.
pub async fn sync(who: Authenticated, req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    let agent_id = parse_agent_id("agent_id", &path)?;
    let r = state.supervisor.sync_agent_registry(SyncAgentRegistryAction { agent_id, requester: who.0.name }).await?;
    Ok(HttpResponse::Ok().json(r))
}

/// `POST /v1/usage/recalculate` → the report.
pub async fn recalculate(who: Superadmin, req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    query_pairs(req.query_string(), &[])?;
    let r = state.supervisor.recalculate_usage(RecalculateUsageAction { requester: who.0.name }).await?;
    Ok(HttpResponse::Ok().json(r))
}
