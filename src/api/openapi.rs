//! The OpenAPI document of the admin API, generated from the code: every handler carries a `#[utoipa::path]` with
//! its responses, every body it answers with derives `ToSchema`, and [`ApiDoc`] lists the handlers of the route
//! table in [`super::routes`]. The document is built once and served unsigned at `GET /v1/openapi.json`.
//!
//! Errors are described by one schema, [`ProblemDocument`] (its `error_code` enum is [`ErrorCode`] itself), and by
//! the reusable responses below, one per way a status can arise; a route lists only the statuses it can answer.

use std::sync::LazyLock;

use actix_web::{HttpResponse, http::header::ContentType};
use serde::Serialize;
use utoipa::{
    Modify, OpenApi, ToResponse, ToSchema,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::error::{ErrorCode, Problem};

/// An RFC 7807 problem document (`application/problem+json`): how every error leaves the daemon. Members other
/// than the ones listed may follow (they are specific to the error).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemDocument {
    /// `/problems/<error code with dashes>`.
    #[serde(rename = "type")]
    #[schema(example = "/problems/agent-not-found")]
    pub kind: String,
    /// Short human title of the error code (the official CLI prints it).
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// Stable, snake_case; clients may match on it.
    pub error_code: ErrorCode,
    pub detail: String,
    /// The same as `detail` (Backend.AI's field, which the official CLI prints).
    pub msg: String,
    /// The agent concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub agent_id: Option<String>,
    /// `invalid_request`: the field (or `body`, `query`) that was wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub field: Option<String>,
    /// `agent_has_running_kernels`: how many kernels occupy the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub kernel_count: Option<u64>,
    /// Command errors: the audit event that records the command.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub event_id: Option<i64>,
    /// `payload_too_large`: the limit (`api.max_body_bytes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub limit_bytes: Option<u64>,
    /// `watcher_not_registered`: the etcd key that is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub key: Option<String>,
    /// `agent_*_failed`: the watcher's HTTP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub watcher_status: Option<u16>,
    /// `agent_*_failed`: the watcher's answer (the reason it saw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watcher_detail: Option<serde_json::Value>,
    /// `agent_rpc_failed`: the remote exception's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub remote_exception: Option<String>,
}

/// A watcher's `GET /` answer, verbatim: Backend.AI's two keys plus whatever else the watcher adds (ours: `pid`,
/// `since`, `unit`, ...).
#[derive(Debug, Serialize, ToSchema)]
pub struct WatcherReport {
    /// `systemctl is-active` vocabulary: `active`, `inactive`, `activating`, `deactivating`, `failed`.
    #[serde(rename = "agent-status")]
    #[schema(example = "active")]
    pub agent_status: String,
    #[serde(rename = "watcher-status")]
    #[schema(example = "active")]
    pub watcher_status: String,
}

/// A watcher's answer to start/stop/restart, verbatim.
#[derive(Debug, Serialize, ToSchema)]
pub struct WatcherCommandReport {
    #[schema(example = "ok")]
    pub result: String,
}

macro_rules! problem_response {
    ($($(#[$doc:meta])* $name:ident = $description:literal;)+) => {$(
        $(#[$doc])*
        #[derive(ToResponse)]
        #[response(description = $description, content_type = "application/problem+json")]
        pub struct $name(#[allow(dead_code)] ProblemDocument);
    )+};
}

problem_response! {
    BadRequest = "`invalid_request`: malformed JSON, a body that is not an object, a missing, mistyped, unknown or \
                  duplicated field or query parameter, or a bad agent id (empty, over 64 characters, a character \
                  outside `A-Z a-z 0-9 - _ . : @`, or `..`); `field` names it";
    Unauthorized = "`auth_failed`: no signature, a bad one, an unknown or inactive access key, or a `Date` outside \
                    the allowed clock skew";
    WatcherUnauthorized = "`auth_failed` (the request's signature), or `watcher_auth_failed` when our watcher \
                           rejected the watcher token";
    Forbidden = "`forbidden`: the keypair is not a superadmin";
    WatcherForbidden = "`forbidden` (the keypair is not a superadmin), or `watcher_auth_failed` when a Backend.AI \
                        watcher rejected the watcher token";
    AgentNotFound = "`agent_not_found`: no such agent in the database";
    NotFound = "`not_found`";
    PayloadTooLarge = "`payload_too_large`: the body is larger than `api.max_body_bytes` (any route)";
    AgentBusy = "`agent_busy`: too many commands are queued for this agent";
    InternalError = "`internal_error`: an actor did not answer in time, or an unexpected failure";
    WatcherBadGateway = "`watcher_unreachable`, `watcher_bad_response` or `watcher_not_registered` (no address \
                         in etcd)";
    RpcBadGateway = "`agent_rpc_unavailable` (the agent's RPC endpoint is unreachable) or `agent_rpc_failed` (with \
                     `remote_exception`)";
    Unavailable = "`database_unavailable`, `etcd_unavailable` or `shutting_down`";
    WatcherTimeout = "`watcher_timeout`: the watcher did not answer in time";
    RpcTimeout = "`agent_rpc_timeout`: the agent's RPC call timed out";
}

/// The errors every watcher command route can answer (start, stop and restart, Backend.AI-compatible and `/v1`);
/// each route adds its own 409 and 500.
pub struct WatcherCommandErrors;

impl utoipa::IntoResponses for WatcherCommandErrors {
    fn responses() -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>> {
        refs(&[
            ("400", "BadRequest"),
            ("401", "WatcherUnauthorized"),
            ("403", "WatcherForbidden"),
            ("404", "AgentNotFound"),
            ("429", "AgentBusy"),
            ("502", "WatcherBadGateway"),
            ("503", "Unavailable"),
            ("504", "WatcherTimeout"),
        ])
    }
}

/// The errors every signed route can answer: a malformed request, a bad signature, a keypair that is not enough, and
/// a server or dependency failure.
pub struct SignedRouteErrors;

impl utoipa::IntoResponses for SignedRouteErrors {
    fn responses() -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>> {
        refs(&[
            ("400", "BadRequest"),
            ("401", "Unauthorized"),
            ("403", "Forbidden"),
            ("500", "InternalError"),
            ("503", "Unavailable"),
        ])
    }
}

/// `status → #/components/responses/{name}`.
fn refs(
    list: &[(&str, &str)],
) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>> {
    list.iter()
        .map(|(status, name)| {
            ((*status).to_owned(), utoipa::openapi::RefOr::Ref(utoipa::openapi::Ref::from_response_name(*name)))
        })
        .collect()
}

/// The security schemes: Backend.AI's request signing needs three headers together.
struct Security;

const SIGNING: &str = "Backend.AI keypair request signing. `Authorization: BackendAI signMethod=HMAC-SHA256, \
credential=<access key>:<signature>`, where `signature = hex(HMAC-SHA256(k, s))`, \
`k = HMAC-SHA256(HMAC-SHA256(secret key, YYYYMMDD of the Date header), Host header)`, and `s` is the seven lines \
`METHOD`, the request target as sent (path and `?query`, never re-encoded), the raw `Date` header, \
`host:<Host header>`, `content-type:<mimetype, lower-case; application/octet-stream if absent>`, \
`x-backendai-version:<X-BackendAI-Version header>`, and the hex SHA-256 of the empty string (the body is not hashed), \
joined by `\\n`. The `Date` header (ISO 8601, e.g. `2026-11-27T12:18:37.025313+00:00`; `X-BackendAI-Date` is accepted \
too) must lie within `api.clock_skew_s` of the server's clock. No or bad signature: `401 auth_failed`; a \
non-superadmin keypair on a superadmin route: `403 forbidden`.";

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "backendai",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description("Authorization", SIGNING))),
        );
        components.add_security_scheme(
            "backendai_date",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Date",
                "The signing time (ISO 8601), part of the signature",
            ))),
        );
        components.add_security_scheme(
            "backendai_version",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-BackendAI-Version",
                "The client's API version (e.g. `v7.20230615`), part of the signature",
            ))),
        );
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`metrics.token` from the configuration"))
                    .build(),
            ),
        );
    }
}

/// `request_body(content = Option<T>)` means the body may be left out, not that it may be JSON `null`: such a body
/// is documented as `T`, not required.
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            RefOr, Required,
            schema::{Schema, Type},
        };
        let is_null =
            |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == Type::Null.into());
        for item in openapi.paths.paths.values_mut() {
            let ops = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
            for body in ops.into_iter().flatten().filter_map(|op| op.request_body.as_mut()) {
                for content in body.content.values_mut() {
                    if let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema
                        && one_of.items.len() == 2
                        && one_of.items.iter().any(is_null)
                    {
                        content.schema = one_of.items.iter().find(|s| !is_null(s)).cloned();
                        body.required = Some(Required::False);
                    }
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "agent-supervisor admin API",
        description = "Supervises the agents of a Backend.AI-style cluster. Serves the Backend.AI-compatible routes \
                       the official client uses, and its own `/v1` API.\n\n\
                       Every error is an RFC 7807 `application/problem+json` document (`ProblemDocument`). On every \
                       route: a declared body larger than `api.max_body_bytes` is `413 payload_too_large` (checked \
                       before authentication), another method is `405 method_not_allowed`, and an unknown path is \
                       `404 not_found`. Signed routes check the signature before anything else in the request."
    ),
    paths(
        super::compat::version,
        super::compat::announcement,
        super::compat::watcher_status,
        super::compat::watcher_start,
        super::compat::watcher_stop,
        super::compat::watcher_restart,
        super::compat::sync_agent_registry,
        super::compat::recalculate_usage,
        super::v1::sync,
        super::v1::recalculate,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        super::v1::whoami,
        super::v1::list_agents,
        super::v1::register,
        super::v1::get_agent,
        super::v1::cluster,
        super::v1::update_agent,
        super::v1::deregister,
        super::v1::watcher_status,
        super::v1::start,
        super::v1::stop,
        super::v1::restart,
        super::v1::events,
        openapi_json,
    ),
    components(
        schemas(ProblemDocument, ErrorCode),
        responses(
            BadRequest, Unauthorized, WatcherUnauthorized, Forbidden, WatcherForbidden, AgentNotFound, NotFound,
            PayloadTooLarge, AgentBusy, InternalError, WatcherBadGateway, RpcBadGateway, Unavailable, WatcherTimeout,
            RpcTimeout,
        )
    ),
    modifiers(&Security, &OptionalBodies),
    tags(
        (name = "backend.ai", description = "Backend.AI-compatible routes: bodies and answers as the official client expects"),
        (name = "v1", description = "The supervisor's own API"),
        (name = "health", description = "Liveness, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The document as served, built once.
static DOCUMENT: LazyLock<Result<String, String>> =
    LazyLock::new(|| ApiDoc::openapi().to_json().map_err(|e| e.to_string()));

/// This document (unsigned).
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI document of this API", body = Object)))]
pub async fn openapi_json() -> Result<HttpResponse, Problem> {
    match &*DOCUMENT {
        Ok(doc) => Ok(HttpResponse::Ok().insert_header(ContentType::json()).body(doc.clone())),
        Err(e) => {
            Err(Problem::new(ErrorCode::InternalError, format!("the OpenAPI document could not be rendered: {e}")))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// What `Problem::to_json` writes is what the schema names, member for member.
    #[test]
    fn problem_documents_have_the_documented_members() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schema = &doc["components"]["schemas"]["ProblemDocument"];
        let props = schema["properties"].as_object().unwrap();
        let p = Problem::new(ErrorCode::AgentHasRunningKernels, "busy").for_agent("i-1").with("kernel_count", 2);
        for key in p.to_json().as_object().unwrap().keys() {
            assert!(props.contains_key(key), "{key} is not in the schema");
        }
        let codes: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes, all);
    }
}
