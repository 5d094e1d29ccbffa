//! What `GET /` answers: the agent's state in `systemctl is-active` vocabulary plus a few extra keys.

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

/// The agent service's state, as `systemctl is-active` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStatus {
    Active,
    Inactive,
    Activating,
    Deactivating,
    Failed,
    /// Anything else `systemctl` prints (`reloading`, `maintenance`, `unknown`…), passed through verbatim.
    Other(String),
}

impl AgentStatus {
    pub fn parse(s: &str) -> Self {
        match s.trim() {
            "active" => Self::Active,
            "inactive" => Self::Inactive,
            "activating" => Self::Activating,
            "deactivating" => Self::Deactivating,
            "failed" => Self::Failed,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Active => "active",
            Self::Inactive => "inactive",
            Self::Activating => "activating",
            Self::Deactivating => "deactivating",
            Self::Failed => "failed",
            Self::Other(s) => s,
        }
    }

    /// Whether a start would be redundant.
    pub fn is_running(&self) -> bool {
        matches!(self, Self::Active | Self::Activating) || matches!(self, Self::Other(s) if s == "reloading")
    }

    /// Whether a stop would be redundant.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Self::Inactive | Self::Failed)
    }
}

impl Serialize for AgentStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The `GET /` document. `agent-status` and `watcher-status` are Backend.AI's keys; the rest are ours and optional.
#[derive(Debug, Clone, Serialize)]
pub struct StatusBody {
    #[serde(rename = "agent-status")]
    pub agent_status: AgentStatus,
    #[serde(rename = "watcher-status")]
    pub watcher_status: &'static str,
    /// `systemd` or `process`.
    pub backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When the agent entered its current state (process back-end only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// How the last run of the agent ended, e.g. `exit code 3` or `signal 9 (SIGKILL)`.
    #[serde(rename = "last-exit-status", skip_serializing_if = "Option::is_none")]
    pub last_exit_status: Option<String>,
    /// Why the state could not be determined (then `agent-status` is `unknown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StatusBody {
    pub fn new(agent_status: AgentStatus, backend: &'static str) -> Self {
        Self {
            agent_status,
            watcher_status: "active",
            backend,
            unit: None,
            pid: None,
            since: None,
            last_exit_status: None,
            error: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_round_trips_and_unknown_words_pass_through() {
        for w in ["active", "inactive", "activating", "deactivating", "failed", "reloading"] {
            assert_eq!(AgentStatus::parse(w).as_str(), w);
        }
        assert!(AgentStatus::parse("activating\n").is_running());
        assert!(AgentStatus::parse("failed").is_stopped());
        let body = serde_json::to_value(StatusBody::new(AgentStatus::Active, "process")).unwrap_or_default();
        assert_eq!(
            body,
            serde_json::json!({"agent-status": "active", "watcher-status": "active", "backend": "process"})
        );
    }
}
