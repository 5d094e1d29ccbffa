//! The admin HTTP API: Backend.AI-compatible routes (so the official client works unchanged) and our own `/v1`.
//! Handlers are thin: extract, authorise, send to the service, map the result. The route table is [`routes`]; each
//! handler in it is also listed in [`openapi::ApiDoc`], the document served at `/v1/openapi.json`; the dashboard's
//! static files ([`ui`]) are not API operations and are left out of it.

pub mod auth;
pub mod body;
mod compat;
pub mod health;
pub mod openapi;
pub mod params;
pub mod problem;
mod requester;
pub mod types;
pub mod ui;
mod v1;

use actix_web::web;

pub use auth::{Authenticated, Superadmin};
pub use compat::API_VERSION as COMPAT_API_VERSION;
pub use requester::Requester;

use crate::{auth::Authenticator, config::Secret, service::Supervisor, telemetry::metrics::Metrics};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub supervisor: Supervisor,
    pub metrics: Metrics,
    /// Bearer token that unlocks `/metrics` on the API address; `None` keeps it off there.
    pub metrics_token: Option<Secret>,
    /// Verifies signed requests (see [`auth`]).
    pub auth: Authenticator,
}

/// A resource whose other methods answer `405 method_not_allowed` as problem+json.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(problem::method_not_allowed))
}

/// The route table.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/").get(compat::version))
        .service(resource("/manager/announcement").get(compat::announcement))
        .service(resource("/resource/watcher").get(compat::watcher_status))
        .service(resource("/resource/watcher/agent/start").post(compat::watcher_start))
        .service(resource("/resource/watcher/agent/stop").post(compat::watcher_stop))
        .service(resource("/resource/watcher/agent/restart").post(compat::watcher_restart))
        .service(resource("/session/_/sync-agent-registry").post(compat::sync_agent_registry))
        .service(resource("/resource/recalculate-usage").post(compat::recalculate_usage))
        .service(resource("/v1/agents/{id}/sync").post(v1::sync))
        .service(resource("/v1/usage/recalculate").post(v1::recalculate))
        .service(resource("/healthz").get(health::healthz))
        .service(resource("/readyz").get(health::readyz))
        .service(resource("/metrics").get(health::metrics))
        .service(resource("/v1/whoami").get(v1::whoami))
        .service(resource("/v1/cluster").get(v1::cluster))
        .service(resource("/v1/agents").get(v1::list_agents).post(v1::register))
        .service(resource("/v1/agents/{id}").get(v1::get_agent).patch(v1::update_agent).delete(v1::deregister))
        .service(resource("/v1/agents/{id}/watcher").get(v1::watcher_status))
        .service(resource("/v1/agents/{id}/start").post(v1::start))
        .service(resource("/v1/agents/{id}/stop").post(v1::stop))
        .service(resource("/v1/agents/{id}/restart").post(v1::restart))
        .service(resource("/v1/agents/{id}/events").get(v1::events))
        .service(resource("/v1/openapi.json").get(openapi::openapi_json))
        // The dashboard's static files (unsigned, not API operations: left out of the OpenAPI document).
        .configure(ui::routes)
        .default_service(web::to(problem::not_found));
}

/// One span per request, with method, path and the outcome.
pub async fn trace_request(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let span = tracing::info_span!("request", method = %req.method(), path = %req.path());
    // The app state (one reference count), not a copy of every metric handle, per request.
    let state = req.app_data::<actix_web::web::Data<AppState>>().cloned();
    let method = req.method().to_string();
    let res = next.call(req).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    if let Some(state) = state {
        let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".into());
        state.metrics.observe_http(&route, &method, status, elapsed);
    }
    span.in_scope(|| tracing::debug!(status, elapsed_ms = elapsed.as_millis() as u64, "request finished"));
    Ok(res)
}
