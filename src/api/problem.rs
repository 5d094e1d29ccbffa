//! problem+json at the HTTP edge: every error leaves the daemon as an RFC 7807 document (the `ResponseError` impl is
//! `agent_supervisor_protocol::http`, shared with the watcher).

use actix_web::{HttpResponse, ResponseError};
pub use agent_supervisor_protocol::http::PROBLEM_JSON;

use crate::error::{ErrorCode, Problem};

/// Fallback for unknown routes.
pub async fn not_found() -> HttpResponse {
    Problem::new(ErrorCode::NotFound, "no such route").error_response()
}

/// Fallback for a known route with the wrong method.
pub async fn method_not_allowed() -> HttpResponse {
    Problem::new(ErrorCode::MethodNotAllowed, "this route does not accept that method").error_response()
}
