//! problem+json at the HTTP edge: every error leaves the daemon as an RFC 7807 document.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};

use crate::error::{ErrorCode, Problem};

pub const PROBLEM_JSON: &str = "application/problem+json";

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if self.status() >= 500 {
            tracing::warn!(error_code = self.code.as_str(), agent.id = ?self.agent_id, detail = %self.detail, "request failed");
        }
        HttpResponse::build(self.status_code()).content_type(PROBLEM_JSON).body(self.to_json().to_string())
    }
}

/// Fallback for unknown routes.
pub async fn not_found() -> HttpResponse {
    Problem::new(ErrorCode::NotFound, "no such route").error_response()
}

/// Fallback for a known route with the wrong method.
pub async fn method_not_allowed() -> HttpResponse {
    Problem::new(ErrorCode::MethodNotAllowed, "this route does not accept that method").error_response()
}
