//! `X-BackendAI-Watcher-Token`: checked on every request, before routing, in constant time.
//!
//! Both the expected and the presented token are hashed (SHA-256) and the digests compared with `subtle`, so neither
//! the content nor the length of the token leaks through timing. The token itself is never logged.

use actix_web::{
    Error, HttpResponse,
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use agent_supervisor_protocol::{ErrorCode, Problem, watcher::TOKEN_HEADER};

use crate::app::{AppState, problem_response};

/// The expected token, kept only as a digest.
pub struct TokenCheck {
    digest: [u8; 32],
}

impl TokenCheck {
    pub fn new(token: &str) -> Self {
        Self { digest: Sha256::digest(token.as_bytes()).into() }
    }

    /// Whether `presented` is the token; an empty or absent token never is.
    pub fn accepts(&self, presented: Option<&[u8]>) -> bool {
        let Some(presented) = presented.filter(|p| !p.is_empty()) else { return false };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// Middleware: `401 watcher_auth_failed` unless the request carries the token.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, actix_web::body::BoxBody>>, Error> {
    let accepted = req
        .app_data::<web::Data<AppState>>()
        .is_some_and(|state| state.token.accepts(req.headers().get(TOKEN_HEADER).map(|v| v.as_bytes())));
    if accepted {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let why = if req.headers().contains_key(TOKEN_HEADER) { "a wrong or empty" } else { "no" };
    tracing::warn!(peer = ?req.peer_addr(), path = req.path(), "rejected a request with {why} watcher token");
    let problem = Problem::new(ErrorCode::WatcherAuthFailed, format!("missing or invalid {TOKEN_HEADER} header"));
    let resp: HttpResponse = problem_response(&problem);
    Ok(req.into_response(resp).map_into_right_body())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_is_accepted() {
        let check = TokenCheck::new("s3cret");
        assert!(check.accepts(Some(b"s3cret")));
        assert!(!check.accepts(Some(b"s3cret ")));
        assert!(!check.accepts(Some(b"")));
        assert!(!check.accepts(None));
    }
}
