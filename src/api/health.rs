//! Liveness, readiness and metrics.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use super::{
    AppState,
    openapi::{NotFound, Unauthorized},
};
use crate::{
    error::{ErrorCode, Problem},
    service::Readiness,
};

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// The process is alive and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "healthz",
    responses((status = 200, description = "Alive (unsigned)", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Ready when the database and etcd answer and the actors run; otherwise 503 naming what failed.
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "readyz",
    responses(
        (status = 200, description = "Ready (unsigned)", body = Readiness),
        (status = 503, description = "Not ready: each failing dependency says why", body = Readiness),
    ))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let r = state.supervisor.readiness().await;
    if r.ready { HttpResponse::Ok().json(r) } else { HttpResponse::ServiceUnavailable().json(r) }
}

/// Prometheus text format, on the API address only with `Authorization: Bearer <metrics.token>`.
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "metrics",
    description = "Prometheus text format. On the API address only when `metrics.token` is configured, with \
                   `Authorization: Bearer <metrics.token>` (not Backend.AI signing); `metrics.listen` serves it \
                   without a token on an address of its own.",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "text/plain"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    ),
    security(("metrics_token" = [])))]
pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let Some(token) = &state.metrics_token else {
        return Err(Problem::new(ErrorCode::NotFound, "metrics are not enabled on this address"));
    };
    let given =
        req.headers().get("Authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.expose().as_bytes())));
    if !ok {
        return Err(Problem::new(ErrorCode::AuthFailed, "metrics need Authorization: Bearer <metrics.token>"));
    }
    Ok(render(&state))
}

/// The metrics document, with the figures read at scrape time refreshed first.
pub fn render(state: &AppState) -> HttpResponse {
    let m = &state.metrics;
    let (size, available) = state.supervisor.db().status();
    m.db_pool.with_label_values(&["size"]).set(size as i64);
    m.db_pool.with_label_values(&["available"]).set(available as i64);
    let d = state.supervisor.directory().stats();
    m.etcd_cache.with_label_values(&["hits"]).set(d.hits as i64);
    m.etcd_cache.with_label_values(&["misses"]).set(d.misses as i64);
    m.etcd_cache.with_label_values(&["agents"]).set(d.agents as i64);
    m.etcd_cache.with_label_values(&["synced"]).set(i64::from(d.synced));
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(m.render())
}
