//! Problems at an actix-web edge (feature `actix-web`): any [`Problem`] a handler returns leaves as an RFC 7807
//! `application/problem+json` document with its status. Server errors are logged once, here.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};

use crate::problem::Problem;

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if self.status() >= 500 {
            tracing::warn!(error_code = self.code.as_str(), agent.id = ?self.agent_id, detail = %self.detail, "request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        // A problem that says when to come back (`no_leader`) says it in `Retry-After` too.
        if let Some(secs) = self.extra.get("retry_after_s").and_then(serde_json::Value::as_u64) {
            response.insert_header(("Retry-After", secs.to_string()));
        }
        response.content_type(PROBLEM_JSON).body(self.to_json().to_string())
    }
}
