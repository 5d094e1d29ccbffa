//! The supervisor's HTTP client for agent watchers (ours and Backend.AI's).
//!
//! `awc::Client` is not `Send`, so each thread (each actix arbiter) keeps one client and reuses its connections.
//! Every call is bounded as a whole (connect, send, response head and body) by the status or the command timeout,
//! and bodies are read up to [`MAX_BODY_BYTES`] so a misbehaving watcher cannot exhaust memory.

use std::{cell::RefCell, time::Duration};

use actix_web::web::Bytes;
use awc::error::{ConnectError, SendRequestError};
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

/// A successful watcher answer.
#[derive(Debug, Clone, PartialEq)]
pub struct WatcherReply {
    pub status: u16,
    pub body: Value,
    /// The body as the watcher sent it (a JSON object: `body` is its parse).
    pub raw: Bytes,
}

impl WatcherReply {
    /// The `agent-status` of a status answer, in the protocol's words (`None` if the watcher sent none).
    pub fn agent_state(&self) -> Option<AgentState> {
        self.body.get("agent-status").and_then(Value::as_str).map(AgentState::parse)
    }
}

/// `GET /` on the watcher: the agent's status as the watcher reports it.
pub async fn get_status(
    addr: &WatcherAddress,
    token: &Secret,
    timeout: Duration,
) -> Result<WatcherReply, WatcherError> {
    call(addr, token, awc::http::Method::GET, "/", timeout, None).await
}

/// `POST /agent/{start,stop,restart}`.
pub async fn send_command(
    addr: &WatcherAddress,
    token: &Secret,
    command: WatcherCommand,
    timeout: Duration,
) -> Result<WatcherReply, WatcherError> {
    call(addr, token, awc::http::Method::POST, command.path(), timeout, Some(command)).await
}

async fn call(
    addr: &WatcherAddress,
    token: &Secret,
    method: awc::http::Method,
    path: &str,
    timeout: Duration,
    command: Option<WatcherCommand>,
) -> Result<WatcherReply, WatcherError> {
    let url = format!("{}{}", addr.base_url(), path);
    let work = async {
        let mut resp = client()
            .request(method, &url)
            .insert_header((TOKEN_HEADER, token.expose()))
            .send()
            .await
            .map_err(|e| send_error(&url, e, timeout))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(awc::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let body = resp.body().limit(MAX_BODY_BYTES).await.map_err(|e| WatcherError::BadResponse {
            url: url.clone(),
            reason: format!("cannot read the body: {e}"),
        })?;
        Ok::<_, WatcherError>((status, content_type, body))
    };
    let (status, content_type, body) = match actix_rt::time::timeout(timeout, work).await {
        Ok(result) => result?,
        Err(_) => return Err(WatcherError::Timeout { url, after: timeout }),
    };
    let text = || quote(&body);
    match status {
        200..=299 => {
            let json = content_type.starts_with("application/json") || content_type.contains("+json");
            match serde_json::from_slice::<Value>(&body) {
                Ok(value @ Value::Object(_)) if json => Ok(WatcherReply { status, body: value, raw: body }),
                _ => Err(WatcherError::BadResponse {
                    url,
                    reason: format!("HTTP {status} without a JSON object: {}", text()),
                }),
            }
        }
        401 | 403 => Err(WatcherError::Auth { url, status, body: text() }),
        409 => {
            let code = ProblemDocument::parse(&body).and_then(|p| p.code());
            Err(WatcherError::Conflict { url, code, body: text() })
        }
        500..=599 => match command {
            Some(command) => Err(WatcherError::CommandFailed {
                url,
                command,
                status,
                // Our watcher's problem document carries the reason it saw (exit status, last output lines).
                body: ProblemDocument::parse(&body).and_then(|p| p.detail).unwrap_or_else(text),
            }),
            None => Err(WatcherError::BadResponse { url, reason: format!("HTTP {status}: {}", text()) }),
        },
        _ => Err(WatcherError::BadResponse { url, reason: format!("HTTP {status}: {}", text()) }),
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
