//! The supervisor's HTTP client for agent watchers (ours and Backend.AI's).
//!
//! `awc::Client` is not `Send`, so each thread (each actix arbiter) keeps one client and reuses its connections.
//! Every call is bounded as a whole (connect, send, response head and body) by the status or the command timeout,
//! and bodies are read up to [`MAX_BODY_BYTES`] so a misbehaving watcher cannot exhaust memory.

use std::{cell::RefCell, time::Duration};

use actix_web::web::Bytes;
use awc::{
    error::{ConnectError, SendRequestError},
    http::{Uri, header::HeaderValue},
};
use serde_json::Value;

use crate::{
    config::Secret,
    error::{ErrorCode, Problem, ProblemDocument},
    etcd::WatcherAddress,
};

pub use agent_supervisor_protocol::watcher::{AgentState, Command as WatcherCommand, Precheck, TOKEN_HEADER, precheck};

/// Largest watcher response body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How much of an unexpected body is quoted back in errors.
const QUOTE_LIMIT: usize = 2_000;
/// awc's own per-request timeout, set far beyond any call's bound so that only the caller's bound applies.
const AWC_TIMEOUT_OUT_OF_THE_WAY: Duration = Duration::from_secs(3600);

/// What can go wrong talking to a watcher.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WatcherError {
    #[error("watcher at {url} did not answer within {} ms", after.as_millis())]
    Timeout { url: String, after: Duration },
    #[error("watcher at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("watcher at {url} rejected the token (HTTP {status}): {body}")]
    Auth { url: String, status: u16, body: String },
    #[error("watcher at {url} refused the command (HTTP 409): {body}")]
    Conflict { url: String, code: Option<ErrorCode>, body: String },
    #[error("watcher at {url} failed to {} the agent (HTTP {status}): {body}", command.as_str())]
    CommandFailed { url: String, command: WatcherCommand, status: u16, body: String },
    #[error("watcher at {url} sent an invalid response: {reason}")]
    BadResponse { url: String, reason: String },
}

impl From<WatcherError> for Problem {
    fn from(e: WatcherError) -> Self {
        let detail = e.to_string();
        match e {
            WatcherError::Timeout { .. } => Problem::new(ErrorCode::WatcherTimeout, detail),
            WatcherError::Unreachable { .. } => Problem::new(ErrorCode::WatcherUnreachable, detail),
            WatcherError::Auth { status, .. } => Problem::new(ErrorCode::WatcherAuthFailed, detail).with_status(status),
            WatcherError::Conflict { code, .. } => {
                let code = match code {
                    Some(c @ (ErrorCode::AgentAlreadyRunning | ErrorCode::AgentAlreadyStopped)) => c,
                    _ => ErrorCode::AgentBusy,
                };
                Problem::new(code, detail).with_status(409)
            }
            WatcherError::CommandFailed { command, status, ref body, .. } => {
                let watcher_body = body.clone();
                Problem::new(command.failure_code(), detail)
                    .with("watcher_status", status)
                    .with("watcher_detail", watcher_body)
            }
            WatcherError::BadResponse { .. } => Problem::new(ErrorCode::WatcherBadResponse, detail),
        }
    }
}

thread_local! {
    static CLIENT: RefCell<Option<awc::Client>> = const { RefCell::new(None) };
}

fn client() -> awc::Client {
    CLIENT.with(|c| {
        c.borrow_mut()
            .get_or_insert_with(|| {
                awc::Client::builder()
                    // The caller bounds each call as a whole; this only stops awc's own 5 s default from cutting in.
                    .timeout(AWC_TIMEOUT_OUT_OF_THE_WAY)
                    .disable_redirects()
                    .finish()
            })
            .clone()
    })
}

/// Where one watcher is and how to authenticate to it, prepared once: the status URL and the token header are
/// parsed and checked when the address is resolved, not on every call.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http://host:port` (no trailing slash), for messages and command paths.
    base: String,
    status_uri: Uri,
    token: HeaderValue,
}

impl Endpoint {
    pub fn new(addr: &WatcherAddress, token: &Secret) -> Result<Self, WatcherError> {
        let base = addr.base_url().trim_end_matches('/').to_owned();
        let bad = |reason: String| WatcherError::BadResponse { url: base.clone(), reason };
        let status_uri = Uri::try_from(format!("{base}/")).map_err(|e| bad(format!("not a URL: {e}")))?;
        let token = HeaderValue::from_str(token.expose())
            .map_err(|_| bad("the watcher token is not a valid header value".to_owned()))?;
        Ok(Self { base, status_uri, token })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A successful watcher answer: a JSON object, kept as the bytes the watcher sent.
#[derive(Debug, Clone, PartialEq)]
pub struct WatcherReply {
    pub status: u16,
    pub raw: Bytes,
    /// The `agent-status` of the answer, in the protocol's words (`None` if it has none).
    pub agent_state: Option<AgentState>,
}

impl WatcherReply {
    /// The answer as a JSON value (parsed on demand: the status proxy passes `raw` through unparsed).
    pub fn body(&self) -> Value {
        serde_json::from_slice(&self.raw).unwrap_or(Value::Null)
    }
}

/// What the daemon reads of an answer: `agent-status`, and that the whole is a well-formed JSON object (the other
/// members are checked for syntax and skipped, not built).
#[derive(serde::Deserialize)]
struct AnswerHead<'a> {
    #[serde(rename = "agent-status", default, borrow)]
    agent_status: Option<std::borrow::Cow<'a, str>>,
}

fn parse_answer(body: &[u8]) -> Option<Option<AgentState>> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let head: AnswerHead<'_> = serde_json::from_slice(body).ok()?;
    Some(head.agent_status.map(|s| AgentState::parse(&s)))
}

/// `GET /` on the watcher: the agent's status as the watcher reports it.
pub async fn get_status(endpoint: &Endpoint, timeout: Duration) -> Result<WatcherReply, WatcherError> {
    call(endpoint, awc::http::Method::GET, None, timeout).await
}

/// `POST /agent/{start,stop,restart}`.
pub async fn send_command(
    endpoint: &Endpoint,
    command: WatcherCommand,
    timeout: Duration,
) -> Result<WatcherReply, WatcherError> {
    call(endpoint, awc::http::Method::POST, Some(command), timeout).await
}

async fn call(
    endpoint: &Endpoint,
    method: awc::http::Method,
    command: Option<WatcherCommand>,
    timeout: Duration,
) -> Result<WatcherReply, WatcherError> {
    let url = || match command {
        Some(c) => endpoint.url(c.path()),
        None => endpoint.url("/"),
    };
    let work = async {
        let request = match command {
            Some(c) => client().request(method, endpoint.url(c.path())),
            None => client().request(method, endpoint.status_uri.clone()),
        };
        let mut resp = request
            .insert_header((TOKEN_HEADER, endpoint.token.clone()))
            .send()
            .await
            .map_err(|e| send_error(&url(), e, timeout))?;
        let status = resp.status().as_u16();
        let json =
            resp.headers().get(awc::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
                let ct = ct.trim_start();
                ct.get(..16).is_some_and(|p| p.eq_ignore_ascii_case("application/json"))
                    || ct.split(';').next().is_some_and(|t| t.trim_end().to_ascii_lowercase().ends_with("+json"))
            });
        let body = resp
            .body()
            .limit(MAX_BODY_BYTES)
            .await
            .map_err(|e| WatcherError::BadResponse { url: url(), reason: format!("cannot read the body: {e}") })?;
        Ok::<_, WatcherError>((status, json, body))
    };
    let (status, json, body) = match actix_rt::time::timeout(timeout, work).await {
        Ok(result) => result?,
        Err(_) => return Err(WatcherError::Timeout { url: url(), after: timeout }),
    };
    let text = || quote(&body);
    match status {
        200..=299 => match parse_answer(&body) {
            Some(agent_state) if json => Ok(WatcherReply { status, raw: body, agent_state }),
            _ => Err(WatcherError::BadResponse {
                url: url(),
                reason: format!("HTTP {status} without a JSON object: {}", text()),
            }),
        },
        401 | 403 => Err(WatcherError::Auth { url: url(), status, body: text() }),
        409 => {
            let code = ProblemDocument::parse(&body).and_then(|p| p.code());
            Err(WatcherError::Conflict { url: url(), code, body: text() })
        }
        500..=599 => match command {
            Some(command) => Err(WatcherError::CommandFailed {
                url: url(),
                command,
                status,
                // Our watcher's problem document carries the reason it saw (exit status, last output lines).
                body: ProblemDocument::parse(&body).and_then(|p| p.detail).unwrap_or_else(text),
            }),
            None => Err(WatcherError::BadResponse { url: url(), reason: format!("HTTP {status}: {}", text()) }),
        },
        _ => Err(WatcherError::BadResponse { url: url(), reason: format!("HTTP {status}: {}", text()) }),
    }
}

fn send_error(url: &str, e: SendRequestError, timeout: Duration) -> WatcherError {
    match e {
        SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => {
            WatcherError::Timeout { url: url.to_owned(), after: timeout }
        }
        SendRequestError::Connect(c) => WatcherError::Unreachable { url: url.to_owned(), reason: c.to_string() },
        SendRequestError::Send(io) => WatcherError::Unreachable { url: url.to_owned(), reason: io.to_string() },
        other => WatcherError::BadResponse { url: url.to_owned(), reason: other.to_string() },
    }
}

fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.len() > QUOTE_LIMIT {
        let mut end = QUOTE_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &text[..end], body.len())
    } else {
        text.to_owned()
    }
}
