//! Admin API authentication: Backend.AI keypair request signing ([`signing`]) verified against the `keypairs`
//! table (in Backend.AI mode Backend.AI's, with its owning user: see `db::keypairs::find_credential`), with
//! clock-skew limits. HTTP-agnostic: the API layer hands over the raw header values in an
//! [`IncomingRequest`] and gets an [`Identity`] or an [`AuthError`] back.
//!
//! Keypairs are looked up per request through a small cache ([`CACHE_TTL`]), so deactivating a key takes effect
//! within seconds. While the database is unreachable, a key verified within [`STALE_GRACE`] keeps working (so
//! read-only status calls survive a database blip, as they do without authentication); any other lookup answers
//! `503 database_unavailable`. Secrets and signatures are never logged or echoed.

pub mod keys;
pub use agent_supervisor_protocol::signing;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use self::signing::{PreparedKey, SigningError, SigningInput};
use crate::{
    config::Secret,
    db::{Db, DbError, keypairs},
    error::{ErrorCode, Problem},
};

/// How long a looked-up keypair is trusted before the database is asked again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// How long a cached keypair may still be used when the database cannot be reached.
pub const STALE_GRACE: Duration = Duration::from_secs(60);
/// `last_used` is written at most this often per keypair (best effort, off the request path).
pub const LAST_USED_INTERVAL: Duration = Duration::from_secs(60);

/// The raw header values of a request, as received (nothing decoded or re-formatted).
#[derive(Debug, Clone, Copy, Default)]
pub struct IncomingRequest<'a> {
    pub method: &'a str,
    /// Path plus `?query`, exactly as in the request line.
    pub rel_url: &'a str,
    pub host: Option<&'a str>,
    pub content_type: Option<&'a str>,
    /// `Date`, else `X-BackendAI-Date`.
    pub date: Option<&'a str>,
    pub api_version: Option<&'a str>,
    pub authorization: Option<&'a str>,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub access_key: String,
    pub is_superadmin: bool,
    pub user_id: Option<String>,
}

/// Why a request is not authenticated. `Display` is safe to log: it never contains a secret or a signature.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no Authorization header")]
    MissingAuthorization,
    #[error("{0}")]
    Malformed(#[from] SigningError),
    #[error("no Host header")]
    MissingHost,
    #[error("no X-BackendAI-Version header")]
    MissingVersion,
    #[error("no Date or X-BackendAI-Date header")]
    MissingDate,
    #[error("the request date is {skew_s} s away from the server's clock (allowed: {allowed_s} s)")]
    ClockSkew { skew_s: i64, allowed_s: u64 },
    #[error("access key not found")]
    UnknownKey,
    #[error("access key is inactive")]
    InactiveKey,
    #[error("signature mismatch")]
    SignatureMismatch,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::MissingVersion => {
                Problem::invalid_field("X-BackendAI-Version", "the header is required on signed requests")
            }
            AuthError::Db(db) => db.into(),
            AuthError::MissingAuthorization => Problem::new(
                ErrorCode::AuthFailed,
                "Authorization header required: sign the request with an access key (BackendAI signMethod=HMAC-SHA256)",
            ),
            AuthError::Malformed(m @ SigningError::BadDate(_)) => {
                Problem::new(ErrorCode::AuthFailed, format!("Date/time sync error: {m}"))
            }
            AuthError::Malformed(m) => Problem::new(ErrorCode::AuthFailed, m.to_string()),
            AuthError::MissingHost => Problem::new(ErrorCode::AuthFailed, e.to_string()),
            // Backend.AI answers these with 400 "Date/time sync error"; they are credential problems, so 401 here.
            AuthError::MissingDate | AuthError::ClockSkew { .. } => {
                Problem::new(ErrorCode::AuthFailed, format!("Date/time sync error: {e}"))
            }
            // An inactive key is reported like an unknown one (as Backend.AI does).
            AuthError::UnknownKey | AuthError::InactiveKey => {
                Problem::new(ErrorCode::AuthFailed, "Access key not found")
            }
            AuthError::SignatureMismatch => Problem::new(ErrorCode::AuthFailed, "Signature mismatch"),
        }
    }
}

struct StoredKey {
    secret: Secret,
    is_active: bool,
    is_superadmin: bool,
    user_id: Option<String>,
    /// The signing key last derived from the secret, with the day and host it was derived for: requests of one
    /// client share both, so most requests skip two of the three HMACs.
    prepared: Mutex<Option<(String, String, PreparedKey)>>,
}

impl StoredKey {
    fn new(secret: Secret, is_active: bool, is_superadmin: bool, user_id: Option<String>) -> Self {
        Self { secret, is_active, is_superadmin, user_id, prepared: Mutex::new(None) }
    }

    fn prepared(&self, day: &str, host: &str) -> PreparedKey {
        let mut slot = self.prepared.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some((d, h, key)) if d == day && h == host => key.clone(),
            _ => {
                let key = PreparedKey::new(self.secret.expose(), day, host);
                *slot = Some((day.to_owned(), host.to_owned(), key.clone()));
                key
            }
        }
    }
}

struct Cached {
    key: Arc<StoredKey>,
    fetched: Instant,
}

/// Verifies signed requests against the `keypairs` table. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    clock_skew_s: u64,
    cache: Mutex<HashMap<String, Cached>>,
    last_used_written: Mutex<HashMap<String, Instant>>,
}

impl Authenticator {
    /// `clock_skew_s`: how far a request's `Date` may be from the server's clock, either way.
    pub fn new(db: Db, clock_skew_s: u64) -> Self {
        let inner = Inner {
            db,
            clock_skew_s,
            cache: Mutex::new(HashMap::new()),
            last_used_written: Mutex::new(HashMap::new()),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Checks the signature of `req` at time `now`. Cheap checks come first; the database is asked only for a
    /// well-formed, timely request.
    pub async fn authenticate(&self, req: &IncomingRequest<'_>, now: DateTime<Utc>) -> Result<Identity, AuthError> {
        let credential = signing::parse_authorization(req.authorization.ok_or(AuthError::MissingAuthorization)?)?;
        let api_version = req.api_version.ok_or(AuthError::MissingVersion)?;
        let host = req.host.ok_or(AuthError::MissingHost)?;
        let raw_date = req.date.ok_or(AuthError::MissingDate)?;
        let date = signing::parse_date(raw_date)?;
        let skew_s = (date.to_utc() - now).num_seconds();
        if skew_s.unsigned_abs() > self.inner.clock_skew_s {
            return Err(AuthError::ClockSkew { skew_s, allowed_s: self.inner.clock_skew_s });
        }

        let key = self.lookup(credential.access_key).await?.ok_or(AuthError::UnknownKey)?;
        let content_type = signing::normalize_content_type(req.content_type);
        let input = SigningInput {
            method: req.method,
            rel_url: req.rel_url,
            date: raw_date,
            host,
            content_type: &content_type,
            api_version,
        };
        if !key.prepared(&signing::signing_day(&date), host).verify(&input, credential.signature) {
            return Err(AuthError::SignatureMismatch);
        }
        // Checked after the signature so that probing cannot tell inactive keys from unknown ones.
        if !key.is_active {
            return Err(AuthError::InactiveKey);
        }
        self.note_used(credential.access_key, now);
        Ok(Identity {
            access_key: credential.access_key.to_owned(),
            is_superadmin: key.is_superadmin,
            user_id: key.user_id.clone(),
        })
    }

    async fn lookup(&self, access_key: &str) -> Result<Option<Arc<StoredKey>>, AuthError> {
        let cached = self.cached(access_key, CACHE_TTL);
        if cached.is_some() {
            return Ok(cached);
        }
        let db = &self.inner.db;
        let found = async { keypairs::find_credential(&mut *db.conn().await?, db.mode(), access_key).await }.await;
        // A keypair without a secret (Backend.AI allows one) cannot sign anything: as if it did not exist.
        let found = found.map(|c| c.filter(|c| c.secret_key.is_some()));
        match found {
            Ok(Some(cred)) => {
                let key = Arc::new(StoredKey::new(
                    Secret::new(cred.secret_key.unwrap_or_default()),
                    cred.active,
                    cred.is_superadmin,
                    cred.user_id,
                ));
                if let Ok(mut cache) = self.inner.cache.lock() {
                    cache.insert(access_key.to_owned(), Cached { key: key.clone(), fetched: Instant::now() });
                }
                Ok(Some(key))
            }
            Ok(None) => {
                if let Ok(mut cache) = self.inner.cache.lock() {
                    cache.remove(access_key);
                }
                Ok(None)
            }
            Err(DbError::Unavailable(reason)) => match self.cached(access_key, STALE_GRACE) {
                Some(key) => {
                    tracing::warn!(access_key, reason, "database unreachable; using the recently verified keypair");
                    Ok(Some(key))
                }
                None => Err(DbError::Unavailable(reason).into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    fn cached(&self, access_key: &str, max_age: Duration) -> Option<Arc<StoredKey>> {
        let cache = self.inner.cache.lock().ok()?;
        cache.get(access_key).filter(|c| c.fetched.elapsed() < max_age).map(|c| c.key.clone())
    }

    /// Records `last_used` in the background, at most once per [`LAST_USED_INTERVAL`] per key; failures only log.
    /// Not in Backend.AI mode: its keypairs are Backend.AI's to write.
    fn note_used(&self, access_key: &str, now: DateTime<Utc>) {
        if self.inner.db.mode() == crate::config::DatabaseMode::BackendAi {
            return;
        }
        let due = match self.inner.last_used_written.lock() {
            Ok(mut written) => match written.get(access_key) {
                Some(at) if at.elapsed() < LAST_USED_INTERVAL => false,
                _ => {
                    written.insert(access_key.to_owned(), Instant::now());
                    true
                }
            },
            Err(_) => false,
        };
        if !due {
            return;
        }
        let db = self.inner.db.clone();
        let access_key = access_key.to_owned();
        tokio::spawn(async move {
            let written = async { keypairs::touch_last_used(&mut *db.conn().await?, &access_key, now).await }.await;
            if let Err(e) = written {
                tracing::debug!(access_key, error = %e, "could not record last_used");
            }
        });
    }
}
