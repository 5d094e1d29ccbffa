//! What a call to an agent's Callosum RPC can fail with, and how that reaches an API client.

use std::time::Duration;

use crate::error::{ErrorCode, Problem};

#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// The agent could not be reached: nothing listens, it does not speak ZeroMQ, or CURVE keys were rejected
    /// (ZeroMQ reports none of these; they all look like an unanswered PING).
    #[error("agent RPC unavailable: {0}")]
    Unavailable(String),
    /// The agent accepted the call but did not reply within the configured timeout.
    #[error("agent RPC timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The agent's handler raised an exception (Callosum FAILURE).
    #[error("agent raised {name}: {repr}")]
    Failure { name: String, repr: String },
    /// Callosum on the agent failed or cancelled the call (ERROR or CANCELLED).
    #[error("agent RPC error: {0}")]
    Remote(String),
    /// The agent's reply was not valid Callosum.
    #[error("invalid agent RPC reply: {0}")]
    Protocol(String),
    /// Our own configuration or input is wrong (address, key, key pair file, libzmq without CURVE).
    #[error("agent RPC configuration: {0}")]
    Config(String),
}

impl From<RpcError> for Problem {
    fn from(e: RpcError) -> Self {
        let detail = e.to_string();
        match e {
            RpcError::Unavailable(_) => Problem::new(ErrorCode::AgentRpcUnavailable, detail),
            RpcError::Timeout(_) => Problem::new(ErrorCode::AgentRpcTimeout, detail),
            RpcError::Failure { name, .. } => {
                Problem::new(ErrorCode::AgentRpcFailed, detail).with("remote_exception", name)
            }
            RpcError::Remote(_) | RpcError::Protocol(_) => Problem::new(ErrorCode::AgentRpcFailed, detail),
            RpcError::Config(_) => Problem::new(ErrorCode::InternalError, detail),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_documented_problem() {
        let p = Problem::from(RpcError::Unavailable("x".into()));
        assert_eq!((p.code, p.status()), (ErrorCode::AgentRpcUnavailable, 502));
        let p = Problem::from(RpcError::Timeout(Duration::from_secs(30)));
        assert_eq!((p.code, p.status()), (ErrorCode::AgentRpcTimeout, 504));
        assert!(p.detail.contains("30000 ms"));
        let p = Problem::from(RpcError::Failure {
            name: "AgentIdNotFoundError".into(),
            repr: "AgentIdNotFoundError('i-x')".into(),
        });
        assert_eq!((p.code, p.status()), (ErrorCode::AgentRpcFailed, 502));
        assert!(p.detail.contains("AgentIdNotFoundError"));
        assert_eq!(p.to_json()["remote_exception"], "AgentIdNotFoundError");
        assert_eq!(Problem::from(RpcError::Remote("x".into())).code, ErrorCode::AgentRpcFailed);
        assert_eq!(Problem::from(RpcError::Protocol("x".into())).code, ErrorCode::AgentRpcFailed);
        assert_eq!(Problem::from(RpcError::Config("x".into())).status(), 500);
    }
}
