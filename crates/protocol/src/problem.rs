//! Problem documents (RFC 7807 `application/problem+json`): the stable [`ErrorCode`]s and the [`Problem`] every
//! failure becomes at a program's edge. The daemon, the watcher and `agentctl` all speak them, so they live here.

use serde::{Deserialize, Serialize};

/// Stable, snake_case error codes; clients may match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    AuthFailed,
    Forbidden,
    AgentNotFound,
    NotFound,
    MethodNotAllowed,
    AgentAlreadyRunning,
    AgentAlreadyStopped,
    AgentHasRunningKernels,
    PayloadTooLarge,
    AgentBusy,
    InternalError,
    AgentStartFailed,
    AgentStopFailed,
    AgentRestartFailed,
    WatcherAuthFailed,
    WatcherUnreachable,
    WatcherBadResponse,
    WatcherNotRegistered,
    AgentRpcUnavailable,
    AgentRpcFailed,
    DatabaseUnavailable,
    EtcdUnavailable,
    ShuttingDown,
    WatcherTimeout,
    AgentRpcTimeout,
    ManagedByBackendAi,
    ScalingGroupNotFound,
    NoLeader,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        Self::InvalidRequest,
        Self::AuthFailed,
        Self::Forbidden,
        Self::AgentNotFound,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::AgentAlreadyRunning,
        Self::AgentAlreadyStopped,
        Self::AgentHasRunningKernels,
        Self::PayloadTooLarge,
        Self::AgentBusy,
        Self::InternalError,
        Self::AgentStartFailed,
        Self::AgentStopFailed,
        Self::AgentRestartFailed,
        Self::WatcherAuthFailed,
        Self::WatcherUnreachable,
        Self::WatcherBadResponse,
        Self::WatcherNotRegistered,
        Self::AgentRpcUnavailable,
        Self::AgentRpcFailed,
        Self::DatabaseUnavailable,
        Self::EtcdUnavailable,
        Self::ShuttingDown,
        Self::WatcherTimeout,
        Self::AgentRpcTimeout,
        Self::ManagedByBackendAi,
        Self::ScalingGroupNotFound,
        Self::NoLeader,
    ];

    /// The snake_case name sent as `error_code`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::AuthFailed => "auth_failed",
            Self::Forbidden => "forbidden",
            Self::AgentNotFound => "agent_not_found",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::AgentAlreadyRunning => "agent_already_running",
            Self::AgentAlreadyStopped => "agent_already_stopped",
            Self::AgentHasRunningKernels => "agent_has_running_kernels",
            Self::PayloadTooLarge => "payload_too_large",
            Self::AgentBusy => "agent_busy",
            Self::InternalError => "internal_error",
            Self::AgentStartFailed => "agent_start_failed",
            Self::AgentStopFailed => "agent_stop_failed",
            Self::AgentRestartFailed => "agent_restart_failed",
            Self::WatcherAuthFailed => "watcher_auth_failed",
            Self::WatcherUnreachable => "watcher_unreachable",
            Self::WatcherBadResponse => "watcher_bad_response",
            Self::WatcherNotRegistered => "watcher_not_registered",
            Self::AgentRpcUnavailable => "agent_rpc_unavailable",
            Self::AgentRpcFailed => "agent_rpc_failed",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::EtcdUnavailable => "etcd_unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::WatcherTimeout => "watcher_timeout",
            Self::AgentRpcTimeout => "agent_rpc_timeout",
            Self::ManagedByBackendAi => "managed_by_backend_ai",
            Self::ScalingGroupNotFound => "scaling_group_not_found",
            Self::NoLeader => "no_leader",
        }
    }

    /// Default HTTP status. `WatcherAuthFailed` takes the watcher's own status (401 or 403) instead.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::AuthFailed | Self::WatcherAuthFailed => 401,
            Self::Forbidden => 403,
            Self::AgentNotFound | Self::NotFound | Self::ScalingGroupNotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::AgentAlreadyRunning
            | Self::AgentAlreadyStopped
            | Self::AgentHasRunningKernels
            | Self::ManagedByBackendAi => 409,
            Self::PayloadTooLarge => 413,
            Self::AgentBusy => 429,
            Self::InternalError | Self::AgentStartFailed | Self::AgentStopFailed | Self::AgentRestartFailed => 500,
            Self::WatcherUnreachable
            | Self::WatcherBadResponse
            | Self::WatcherNotRegistered
            | Self::AgentRpcUnavailable
            | Self::AgentRpcFailed => 502,
            Self::DatabaseUnavailable | Self::EtcdUnavailable | Self::ShuttingDown | Self::NoLeader => 503,
            Self::WatcherTimeout | Self::AgentRpcTimeout => 504,
        }
    }

    /// Short human title (`title` in problem+json; the official CLI prints it).
    pub fn title(self) -> &'static str {
        match self {
            Self::InvalidRequest => "Invalid request.",
            Self::AuthFailed => "Credential/signature mismatch.",
            Self::Forbidden => "Insufficient privileges.",
            Self::AgentNotFound => "No such agent.",
            Self::NotFound => "Not found.",
            Self::MethodNotAllowed => "Method not allowed.",
            Self::AgentAlreadyRunning => "The agent is already running.",
            Self::AgentAlreadyStopped => "The agent is already stopped.",
            Self::AgentHasRunningKernels => "The agent still runs kernels.",
            Self::PayloadTooLarge => "Request body too large.",
            Self::AgentBusy => "Too many commands queued for this agent.",
            Self::InternalError => "Internal server error.",
            Self::AgentStartFailed => "The agent failed to start.",
            Self::AgentStopFailed => "The agent failed to stop.",
            Self::AgentRestartFailed => "The agent failed to restart.",
            Self::WatcherAuthFailed => "The watcher rejected the watcher token.",
            Self::WatcherUnreachable => "The watcher is unreachable.",
            Self::WatcherBadResponse => "The watcher sent an invalid response.",
            Self::WatcherNotRegistered => "The agent's watcher is not registered in etcd.",
            Self::AgentRpcUnavailable => "The agent's RPC endpoint is unreachable.",
            Self::AgentRpcFailed => "The agent's RPC call failed.",
            Self::DatabaseUnavailable => "The database is unavailable.",
            Self::EtcdUnavailable => "etcd is unavailable.",
            Self::ShuttingDown => "The supervisor is shutting down.",
            Self::WatcherTimeout => "The watcher did not answer in time.",
            Self::AgentRpcTimeout => "The agent's RPC call timed out.",
            Self::ManagedByBackendAi => "Agents are managed by Backend.AI here.",
            Self::ScalingGroupNotFound => "No such scaling group.",
            Self::NoLeader => "No leader is elected.",
        }
    }

    /// The code named `name` (its `error_code`), if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == name)
    }

    /// `type` URI reference of the problem document.
    pub fn type_uri(self) -> String {
        format!("/problems/{}", self.as_str().replace('_', "-"))
    }
}

/// A failure as the outside world sees it: what happened (code), for whom (agent), and why (detail).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub code: ErrorCode,
    /// Overrides the code's default status (a watcher's 401/403 is passed through as is).
    pub status: Option<u16>,
    pub detail: String,
    pub agent_id: Option<String>,
    /// Extra members merged into the problem document (e.g. `kernel_count`, `field`). Boxed: most problems have
    /// none, and a small `Problem` keeps every `Result<_, Problem>` small.
    pub extra: Box<serde_json::Map<String, serde_json::Value>>,
}

impl Problem {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, status: None, detail: detail.into(), agent_id: None, extra: Box::default() }
    }

    pub fn for_agent(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = Some(agent_id.into());
        self
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// `400 invalid_request` naming the field that was wrong.
    pub fn invalid_field(field: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidRequest, format!("{field}: {detail}")).with("field", field)
    }

    pub fn status(&self) -> u16 {
        self.status.unwrap_or_else(|| self.code.status())
    }

    /// The RFC 7807 document: `type`, `title`, `status`, `error_code`, `detail`, `msg` (Backend.AI's field, which
    /// the official CLI prints) and `agent_id` when there is one.
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::Map::new();
        doc.insert("type".into(), self.code.type_uri().into());
        doc.insert("title".into(), self.code.title().into());
        doc.insert("status".into(), self.status().into());
        doc.insert("error_code".into(), self.code.as_str().into());
        doc.insert("detail".into(), self.detail.clone().into());
        doc.insert("msg".into(), self.detail.clone().into());
        if let Some(agent) = &self.agent_id {
            doc.insert("agent_id".into(), agent.clone().into());
        }
        for (k, v) in self.extra.iter() {
            doc.entry(k.clone()).or_insert_with(|| v.clone());
        }
        serde_json::Value::Object(doc)
    }
}

/// A problem document as another program sent it: every member optional, unknown codes kept as text.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ProblemDocument {
    pub title: Option<String>,
    pub status: Option<u16>,
    pub error_code: Option<String>,
    pub detail: Option<String>,
}

impl ProblemDocument {
    /// Parses `body`; `None` unless it is a JSON object.
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// The document's code, if it is one of ours.
    pub fn code(&self) -> Option<ErrorCode> {
        self.error_code.as_deref().and_then(ErrorCode::from_name)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl std::error::Error for Problem {}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_distinct_snake_case_name_and_a_valid_status() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let name = code.as_str();
            assert!(seen.insert(name), "duplicate {name}");
            assert_eq!(ErrorCode::from_name(name), Some(*code));
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(name));
            assert!((400..600).contains(&code.status()));
        }
    }

    #[test]
    fn problem_document_has_the_documented_members() {
        let p = Problem::new(ErrorCode::AgentHasRunningKernels, "3 kernels").for_agent("i-1").with("kernel_count", 3);
        let doc = p.to_json();
        assert_eq!(doc["type"], "/problems/agent-has-running-kernels");
        assert_eq!(doc["status"], 409);
        assert_eq!(doc["error_code"], "agent_has_running_kernels");
        assert_eq!(doc["detail"], "3 kernels");
        assert_eq!(doc["msg"], "3 kernels");
        assert_eq!(doc["agent_id"], "i-1");
        assert_eq!(doc["kernel_count"], 3);
        assert_eq!(Problem::new(ErrorCode::WatcherAuthFailed, "x").with_status(403).status(), 403);
        let read = ProblemDocument::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!((read.code(), read.detail.as_deref(), read.status), (Some(p.code), Some("3 kernels"), Some(409)));
        assert_eq!(ProblemDocument::parse(b"403: Forbidden"), None);
    }
}
