//! Followers forward what only the leader may do (SPEC §11): every request that is not a read (commands, sync,
//! recalculation, registry changes) and listings with `refresh=true` go to the leader's `ha.advertise_url`
//! **unchanged** — same method, path, query, body and headers, `Host`, `Date` and `Authorization` included. The
//! official client's signature covers the method, path, host, date, content type and API version, none of which
//! changes on the way, so the leader verifies the caller's own signature: there is no cluster secret to share or
//! rotate, and the audit trail names the caller, not a replica. The leader's answer comes back byte for byte.
//!
//! A request is forwarded at most once (`X-Agent-Supervisor-Forwarded-By`): a replica that receives a forwarded
//! request without leading answers `503 no_leader` instead of passing it on. With no leader known, or the leader
//! not answering, the caller gets `503 no_leader` with `Retry-After`.

use std::time::Duration;

use actix_web::{
    Error, HttpResponse, ResponseError,
    body::{BoxBody, EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::{Method, header},
    middleware::Next,
    web,
};
use futures_util::StreamExt;

use super::{Leadership, Route};
use crate::{api::AppState, telemetry::metrics::Metrics};

/// Marks a forwarded request with the id of the replica that forwarded it.
pub const FORWARDED_BY: &str = "x-agent-supervisor-forwarded-by";
/// Bound on a forwarded request: longer than anything the leader takes to answer (a command waits behind the
/// agent's queue, each within `watcher.command_timeout_ms`).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest answer passed back (a listing of ten thousand agents fits).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Headers that belong to one connection, not to the request or answer.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The HTTP client a worker thread forwards with (awc clients are per thread).
pub struct Forwarder {
    client: awc::Client,
}

impl Default for Forwarder {
    fn default() -> Self {
        // No default headers: awc would add an HTTP-date `Date` to a request that carried `X-BackendAI-Date`.
        let client = awc::Client::builder().no_default_headers().disable_redirects().timeout(FORWARD_TIMEOUT).finish();
        Self { client }
    }
}

/// Whether only the leader may serve this request.
pub fn needs_leader(method: &Method, path: &str, query: &str) -> bool {
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !read {
        return true;
    }
    path == "/v1/agents" && query.split('&').any(|p| matches!(p, "refresh=true" | "refresh=1"))
}

/// The middleware: serves here, forwards, or answers `503 no_leader`.
pub async fn forward_to_leader(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, BoxBody>>, Error> {
    // Served here: the handler's answer goes through as it is (no boxing per request).
    let here = async |req: ServiceRequest| next.call(req).await.map(ServiceResponse::map_into_left_body);
    let Some(state) = req.app_data::<web::Data<AppState>>() else { return here(req).await };
    let ha = state.supervisor.leadership();
    if !ha.enabled() || !needs_leader(req.method(), req.path(), req.query_string()) {
        return here(req).await;
    }
    let (ha, state) = (ha.clone(), state.clone());
    match ha.route() {
        Route::Local => here(req).await,
        Route::NoLeader => Ok(refuse(req, &ha, "no leader is elected; try again shortly").map_into_right_body()),
        Route::Leader(_) if req.headers().contains_key(FORWARDED_BY) => {
            let why = "this request was forwarded here, but this replica is not the leader (any more)";
            Ok(refuse(req, &ha, why).map_into_right_body())
        }
        Route::Leader(leader) => {
            let forwarder = req.app_data::<web::Data<Forwarder>>().cloned();
            let Some(forwarder) = forwarder else {
                return Ok(refuse(req, &ha, "this replica cannot forward requests").map_into_right_body());
            };
            let (http_req, payload) = req.into_parts();
            let answer = forward(&forwarder, &ha, &leader.url, &http_req, payload).await;
            let (response, outcome) = match answer {
                Ok(r) => (r, "ok"),
                Err(why) => {
                    tracing::warn!(leader = %leader.replica_id, url = %leader.url, error = %why,
                        "could not forward a request to the leader");
                    let problem = ha.no_leader(format!("the leader {} did not answer: {why}", leader.replica_id));
                    (problem.error_response(), "error")
                }
            };
            count(&state.metrics, outcome);
            Ok(ServiceResponse::new(http_req, response).map_into_right_body())
        }
    }
}

fn count(metrics: &Metrics, outcome: &str) {
    metrics.forwarded_requests.with_label_values(&[outcome]).inc();
}

fn refuse(req: ServiceRequest, ha: &Leadership, detail: &str) -> ServiceResponse<BoxBody> {
    req.into_response(ha.no_leader(detail).error_response())
}

async fn forward(
    f: &Forwarder,
    ha: &Leadership,
    leader_url: &str,
    req: &actix_web::HttpRequest,
    mut payload: actix_web::dev::Payload,
) -> Result<HttpResponse, String> {
    let limit = req.app_data::<crate::api::body::BodyLimit>().map_or(64 * 1024, |l| l.0);
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| format!("reading the request body: {e}"))?;
        if body.len() + chunk.len() > limit {
            return Err(format!("the request body is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = f.client.request(req.method().clone(), format!("{leader_url}{path_and_query}")).no_decompress();
    for (name, value) in req.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out = out.append_header((name.clone(), value.clone()));
        }
    }
    out = out.insert_header((FORWARDED_BY, ha.me().replica_id.as_str()));
    let mut answer = out.send_body(body.freeze()).await.map_err(|e| e.to_string())?;
    let bytes = answer.body().limit(MAX_ANSWER_BYTES).await.map_err(|e| e.to_string())?;
    let mut response = HttpResponse::build(answer.status());
    for (name, value) in answer.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) && name != header::DATE {
            response.append_header((name.clone(), value.clone()));
        }
    }
    Ok(response.body(bytes))
}
