//! Who is asking. Every handler that acts takes a [`Requester`]; it is recorded in the audit trail. The
//! authentication guard fills it in from the verified keypair.

use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload};

use crate::error::Problem;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// Access key of the verified keypair, or `anonymous` where no authentication is configured.
    pub name: String,
}

impl FromRequest for Requester {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let found = req.extensions().get::<Requester>().cloned();
        ready(Ok(found.unwrap_or_else(|| Requester { name: "anonymous".into() })))
    }
}
