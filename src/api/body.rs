//! Request bodies, bounded by `api.max_body_bytes`. A body over the limit is `413 payload_too_large` as
//! problem+json on every route, whether its length was declared (checked before any handler runs) or it was streamed
//! (checked while it is read); actix's own `web::Bytes` extractor would answer in plain text.

use actix_web::{
    Error, FromRequest, HttpRequest, ResponseError,
    body::{EitherBody, MessageBody},
    dev::{Payload, ServiceRequest, ServiceResponse},
    error::PayloadError,
    http::header::CONTENT_LENGTH,
    middleware::Next,
    web::{self, Bytes},
};
use futures_util::future::LocalBoxFuture;

use crate::error::{ErrorCode, Problem};

/// The largest request body in bytes (`api.max_body_bytes`), as app data; the `web::PayloadConfig` limit must match.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Used when no [`BodyLimit`] is registered (the configuration's default).
const DEFAULT_LIMIT: usize = 64 * 1024;

fn limit_of(req: &HttpRequest) -> usize {
    req.app_data::<BodyLimit>().map_or(DEFAULT_LIMIT, |l| l.0)
}

fn too_large(limit: usize) -> Problem {
    Problem::new(ErrorCode::PayloadTooLarge, format!("the request body is larger than {limit} bytes"))
        .with("limit_bytes", limit)
}

/// The raw request body, read within the limit; every failure is a problem document.
#[derive(Debug, Clone)]
pub struct Body(pub Bytes);

impl FromRequest for Body {
    type Error = Problem;
    type Future = LocalBoxFuture<'static, Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = limit_of(req);
        let bytes = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            bytes.await.map(Body).map_err(|e| match e.as_error::<PayloadError>() {
                Some(PayloadError::Overflow) => too_large(limit),
                Some(other) => Problem::invalid_field("body", format!("could not be read: {other}")),
                None => Problem::invalid_field("body", e),
            })
        })
    }
}

/// Rejects a declared `Content-Length` over the limit before routing, so bodyless routes answer it the same way.
pub async fn limit_declared_body(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let limit = limit_of(req.request());
    let declared =
        req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let res = too_large(limit).error_response();
        return Ok(req.into_response(res).map_into_right_body());
    }
    next.call(req).await.map(ServiceResponse::map_into_left_body)
}
