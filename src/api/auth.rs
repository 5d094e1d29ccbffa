//! Authentication and authorisation extractors. A handler states what it needs by taking one of them:
//!
//! - [`Authenticated`]: any active keypair with a valid signature (sync routes);
//! - [`Superadmin`]: a valid signature from a superadmin keypair (watcher, listing, audit and recalculation routes).
//!
//! No or bad signature ⇒ `401 auth_failed`; a valid non-superadmin keypair where [`Superadmin`] is required ⇒
//! `403 forbidden`. Routes that take neither (`GET /`, `/healthz`, `/manager/announcement`) stay open.
//!
//! ```ignore
//! pub async fn recalculate(state: web::Data<AppState>, who: Superadmin) -> Result<HttpResponse, Problem> {
//!     let report = state.supervisor.recalculate_usage(RecalculateUsageAction { requester: who.0.name }).await?;
//!     ...
//! }
//! ```

use std::ops::Deref;

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, http::header, web};
use futures_util::future::LocalBoxFuture;

use super::{AppState, Requester};
use crate::{
    auth::{AuthError, IncomingRequest},
    error::{ErrorCode, Problem},
};

/// A request signed by any active keypair.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Requester);

/// A request signed by an active superadmin keypair.
#[derive(Debug, Clone)]
pub struct Superadmin(pub Requester);

impl Deref for Authenticated {
    type Target = Requester;
    fn deref(&self) -> &Requester {
        &self.0
    }
}

impl Deref for Superadmin {
    type Target = Requester;
    fn deref(&self) -> &Requester {
        &self.0
    }
}

fn header_str<'a>(req: &'a HttpRequest, name: &str) -> Result<Option<&'a str>, AuthError> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            AuthError::Malformed(crate::auth::signing::SigningError::MalformedHeader(
                "a signed header is not visible ASCII",
            ))
        }),
    }
}

/// Verifies the request once (the outcome is kept in the request's extensions for further extractors).
async fn verify(req: HttpRequest) -> Result<Requester, Problem> {
    if let Some(found) = req.extensions().get::<Requester>() {
        return Ok(found.clone());
    }
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| Problem::new(ErrorCode::InternalError, "application state missing"))?
        .clone();
    let outcome = async {
        let date = match header_str(&req, "date")? {
            Some(d) => Some(d),
            None => header_str(&req, "x-backendai-date")?,
        };
        let incoming = IncomingRequest {
            method: req.method().as_str(),
            // As on the wire: actix keeps the request target verbatim in the URI.
            rel_url: req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
            host: header_str(&req, header::HOST.as_str())?.or(req.uri().authority().map(|a| a.as_str())),
            content_type: header_str(&req, header::CONTENT_TYPE.as_str())?,
            date,
            api_version: header_str(&req, "x-backendai-version")?,
            authorization: header_str(&req, header::AUTHORIZATION.as_str())?,
        };
        state.auth.authenticate(&incoming, chrono::Utc::now()).await
    }
    .await;
    match outcome {
        Ok(identity) => {
            let who = Requester { name: identity.access_key, is_superadmin: identity.is_superadmin };
            req.extensions_mut().insert(who.clone());
            Ok(who)
        }
        Err(e) => {
            let access_key = header_str(&req, header::AUTHORIZATION.as_str())
                .ok()
                .flatten()
                .and_then(|h| crate::auth::signing::parse_authorization(h).ok())
                .map(|c| c.access_key.to_owned());
            match &e {
                AuthError::Db(_) => {}
                _ => {
                    tracing::info!(access_key = access_key.as_deref().unwrap_or("-"), reason = %e, "authentication failed")
                }
            }
            Err(e.into())
        }
    }
}

impl FromRequest for Authenticated {
    type Error = Problem;
    type Future = LocalBoxFuture<'static, Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { verify(req).await.map(Authenticated) })
    }
}

impl FromRequest for Superadmin {
    type Error = Problem;
    type Future = LocalBoxFuture<'static, Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let who = verify(req).await?;
            if !who.is_superadmin {
                tracing::info!(access_key = %who.name, "superadmin privilege required");
                return Err(Problem::new(ErrorCode::Forbidden, "superadmin privilege required"));
            }
            Ok(Superadmin(who))
        })
    }
}
