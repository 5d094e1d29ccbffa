//! The signed HTTP client `agentctl` and `agent-watcher --register-with` talk to the daemon with: every request
//! carries the Backend.AI keypair signature the official client sends (see [`signing`]), and every failure becomes an
//! [`ApiError`] that reads on its own.

use std::time::Duration;

use agent_supervisor_protocol::signing::{self, API_VERSION};
pub use awc::http::Method;
use awc::{
    error::{ConnectError, SendRequestError},
    http::Uri,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// The largest answer accepted (a listing of ten thousand agents with their recent outcomes fits).
const MAX_BODY_BYTES: usize = 64 << 20;
/// What a request without a body declares; the daemon signs and checks whatever type is sent.
const EMPTY_BODY_CONTENT_TYPE: &str = "text/plain";
/// What a request with a JSON body declares.
const JSON_CONTENT_TYPE: &str = "application/json";

/// Why a command could not do what was asked. [`exit_code`](Self::exit_code) says how the process ends.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The daemon answered with an error document (RFC 7807 problem+json).
    #[error("{title} ({status} {code}): {detail}")]
    Problem { status: u16, code: String, title: String, detail: String, body: Box<Value> },
    /// An error status without a problem document (a proxy in between, say).
    #[error("HTTP {status} from {url}: {body}")]
    Http { status: u16, url: String, body: String },
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("no answer from {url} within {secs} s (raise --timeout)")]
    Timeout { url: String, secs: f64 },
    #[error("bad answer from {url}: {reason}")]
    BadResponse { url: String, reason: String },
    /// Missing or unusable settings: the command was not attempted.
    #[error("{0}")]
    Usage(String),
    /// The command ran and reported its own failures already (bulk actions, several agents).
    #[error("{0}")]
    Reported(String),
}

impl ApiError {
    /// 2 for usage problems (nothing was sent), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }

    /// The HTTP status the daemon answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Problem { status, .. } | Self::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The problem document's `error_code`, if there is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Problem { code, .. } => Some(code),
            _ => None,
        }
    }

    /// What `--json` prints for this failure: the daemon's own document when there is one.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Problem { body, .. } => (**body).clone(),
            other => serde_json::json!({"error": other.to_string(), "status": other.status()}),
        }
    }
}

/// Where the daemon is and who is asking.
#[derive(Clone)]
pub struct Settings {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub timeout: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("endpoint", &self.endpoint)
            .field("access_key", &self.access_key)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A signing client for one daemon, or for the replicas of one (`http://a:8091,http://b:8091`: a request goes to
/// the next endpoint when one cannot be connected to; nothing was sent then, so trying the next is safe). Not `Send`
/// (awc); make it on the thread that uses it.
pub struct Client {
    http: awc::Client,
    targets: Vec<Target>,
    /// The target that answered last (tried first next time).
    current: std::cell::Cell<usize>,
    settings: Settings,
}

/// One endpoint.
struct Target {
    /// `scheme://authority`, without a trailing slash.
    base: String,
    /// The `Host` header sent and signed.
    host: String,
    /// A path prefix of the endpoint (`/api` in `http://gw/api`), or empty.
    prefix: String,
}

impl Target {
    fn parse(raw: &str) -> Result<Self, ApiError> {
        let raw = raw.trim().trim_end_matches('/');
        let bad = |why: &str| ApiError::Usage(format!("BACKEND_ENDPOINT / --endpoint {raw:?} {why}"));
        let uri: Uri = raw.parse().map_err(|_| bad("is not a URL"))?;
        let scheme = uri.scheme_str().ok_or_else(|| bad("needs a scheme (http://HOST:PORT)"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("must start with http:// or https://"));
        }
        let host = uri.authority().ok_or_else(|| bad("has no host"))?.as_str().to_owned();
        if uri.query().is_some() {
            return Err(bad("must not have a query"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Self { base: format!("{scheme}://{host}"), host, prefix })
    }

    fn endpoint(&self) -> String {
        format!("{}{}", self.base, self.prefix)
    }
}

impl Client {
    /// `settings.endpoint` is one URL or several separated by commas.
    pub fn new(settings: Settings) -> Result<Self, ApiError> {
        let targets = settings
            .endpoint
            .split(',')
            .filter(|e| !e.trim().is_empty())
            .map(Target::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err(ApiError::Usage("BACKEND_ENDPOINT / --endpoint is empty".to_owned()));
        }
        let http = awc::Client::builder().timeout(settings.timeout).disable_redirects().finish();
        Ok(Self { http, targets, current: std::cell::Cell::new(0), settings })
    }

    /// `scheme://authority[/prefix]` of the endpoint in use, for messages.
    pub fn endpoint(&self) -> String {
        self.targets[self.current.get() % self.targets.len()].endpoint()
    }

    /// `GET`, the answer read into `T` (the struct the daemon wrote it from).
    pub async fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, ApiError> {
        self.request(Method::GET, path_and_query).await
    }

    /// `POST` without a body, the answer read into `T`.
    pub async fn post<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, ApiError> {
        self.request(Method::POST, path_and_query).await
    }

    /// Sends a signed request without a body and reads the JSON answer into `T`, or returns the failure.
    pub async fn request<T: DeserializeOwned>(&self, method: Method, path_and_query: &str) -> Result<T, ApiError> {
        self.send(method, path_and_query, None).await
    }

    /// Sends a signed request with `body` as JSON and reads the JSON answer into `T`, or returns the failure.
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: &impl Serialize,
    ) -> Result<T, ApiError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ApiError::Usage(format!("cannot encode the request body as JSON: {e}")))?;
        self.send(method, path_and_query, Some(bytes)).await
    }

    /// Sends to the endpoint that answered last, then to the next ones while they cannot be connected to.
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ApiError> {
        let first = self.current.get();
        let mut last = None;
        for k in 0..self.targets.len() {
            let i = (first + k) % self.targets.len();
            match self.send_to(&self.targets[i], method.clone(), path_and_query, body.clone()).await {
                Err(e @ ApiError::Connect { .. }) => last = Some(e),
                answered => {
                    self.current.set(i);
                    return answered;
                }
            }
        }
        Err(last.unwrap_or_else(|| ApiError::Usage("no endpoint".to_owned())))
    }

    async fn send_to<T: DeserializeOwned>(
        &self,
        target: &Target,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ApiError> {
        let rel_url = format!("{}{path_and_query}", target.prefix);
        let url = format!("{}{rel_url}", target.base);
        let content_type = if body.is_some() { JSON_CONTENT_TYPE } else { EMPTY_BODY_CONTENT_TYPE };
        let out = signing::OutgoingRequest {
            method: method.as_str(),
            rel_url: &rel_url,
            host: &target.host,
            content_type,
            api_version: API_VERSION,
        };
        let signed =
            signing::sign_request(&self.settings.access_key, &self.settings.secret_key, &out, chrono::Utc::now());
        // Every signed header is set explicitly: awc would otherwise add an HTTP-date `Date` the daemon refuses.
        let req = self
            .http
            .request(method, &url)
            .insert_header(("Host", target.host.as_str()))
            .insert_header(("Content-Type", content_type))
            .insert_header(("X-BackendAI-Version", API_VERSION))
            .insert_header(("Date", signed.date))
            .insert_header(("Authorization", signed.authorization));
        let sent = match body {
            Some(bytes) => req.send_body(bytes).await,
            None => req.send().await,
        };
        let mut resp = sent.map_err(|e| self.send_error(target, &url, e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body()
            .limit(MAX_BODY_BYTES)
            .await
            .map_err(|e| ApiError::BadResponse { url: url.clone(), reason: e.to_string() })?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| ApiError::BadResponse {
                url,
                reason: format!("HTTP {status} with a body that is not a {}: {e}", short_type_name::<T>()),
            });
        }
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        match parsed {
            Some(body @ Value::Object(_)) if body.get("error_code").is_some() || body.get("title").is_some() => {
                let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                let detail = match text("detail") {
                    d if d.is_empty() => text("msg"),
                    d => d,
                };
                Err(ApiError::Problem {
                    status,
                    code: text("error_code"),
                    title: text("title"),
                    detail,
                    body: Box::new(body),
                })
            }
            _ => Err(ApiError::Http { status, url, body: String::from_utf8_lossy(&bytes).chars().take(200).collect() }),
        }
    }

    /// A failure to connect (nothing was sent: the next endpoint may be tried) is [`ApiError::Connect`]; a failure
    /// after the request may have gone out is not.
    fn send_error(&self, target: &Target, url: &str, e: SendRequestError) -> ApiError {
        let url = url.to_owned();
        let reason = match e {
            SendRequestError::Timeout => {
                return ApiError::Timeout { url, secs: self.settings.timeout.as_secs_f64() };
            }
            SendRequestError::Connect(ConnectError::Timeout) => "no connection within the timeout".to_owned(),
            SendRequestError::Connect(ConnectError::Io(io)) => match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                _ => io.to_string(),
            },
            SendRequestError::Connect(ConnectError::Resolver(r)) => format!("cannot resolve the host name ({r})"),
            SendRequestError::Connect(ConnectError::NoRecords) => "the host name does not resolve".to_owned(),
            SendRequestError::Connect(ConnectError::SslIsNotSupported) => {
                "https is not supported by this build; use http://".to_owned()
            }
            SendRequestError::Connect(other) => other.to_string(),
            other => return ApiError::BadResponse { url, reason: other.to_string() },
        };
        ApiError::Connect { url: target.endpoint(), reason }
    }
}

/// `AgentList` for `agent_supervisor::api::types::AgentList`: what an answer was expected to be, for messages.
fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}
