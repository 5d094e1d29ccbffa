//! The watcher's wire protocol, as Backend.AI's watcher speaks it and as ours extends it. The watcher
//! (`agent-watcher`) serves it and the daemon's client calls it; both take every word from here.
//!
//! - `GET /` answers a [`StatusBody`]: `agent-status` in `systemctl is-active` words ([`AgentState`]),
//!   `watcher-status`, and extra keys of ours.
//! - `POST /agent/start|stop|restart` (and `/soft-reset` where enabled) answer [`CommandOk`] (`{"result": "ok"}`) or
//!   a problem document ([`crate::problem`]).
//! - Every request carries [`TOKEN_HEADER`]; every answer [`SERVER_HEADER`].
//!
//! Which commands make sense in which state is one table, [`precheck`]: the watcher refuses a redundant command with
//! `409`, and the daemon checks the same table before it sends one (so it answers the same with Backend.AI's
//! watcher, which runs anything). In particular `failed` counts as stopped: a start is sent (it is how a failed agent
//! is brought back), a stop is refused with `agent_already_stopped` (nothing runs, so there is nothing to stop);
//! `deactivating` and words outside the vocabulary refuse nothing and leave the decision to the service manager.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::problem::{ErrorCode, Problem};

/// Header carrying the watcher token shared by the manager (or this daemon) and every watcher.
pub const TOKEN_HEADER: &str = "X-BackendAI-Watcher-Token";
/// The token both sides use when none is configured anywhere (Backend.AI's default).
pub const INSECURE_TOKEN: &str = "insecure";
/// The `Server` header every watcher answer carries.
pub const SERVER_HEADER: &str = "BackendAI-AgentWatcher";
/// Where a watcher listens unless told otherwise (Backend.AI's `service-addr` default).
pub const DEFAULT_LISTEN_PORT: u16 = 6009;
/// The port Backend.AI's manager assumes when etcd has no `watcher_port` for an agent.
pub const MANAGER_FALLBACK_PORT: u16 = 6099;
/// The value of `watcher-status` in every status answer.
pub const WATCHER_ACTIVE: &str = "active";

/// The agent service's state, in the words `systemctl is-active` prints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AgentState {
    Active,
    Reloading,
    Inactive,
    Activating,
    Deactivating,
    Failed,
    /// Anything else (`maintenance`, `unknown`…), passed through verbatim.
    Other(String),
}

impl AgentState {
    pub fn parse(word: &str) -> Self {
        match word.trim() {
            "active" => Self::Active,
            "reloading" => Self::Reloading,
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
            Self::Reloading => "reloading",
            Self::Inactive => "inactive",
            Self::Activating => "activating",
            Self::Deactivating => "deactivating",
            Self::Failed => "failed",
            Self::Other(s) => s,
        }
    }

    /// The service runs or is coming up: a start would be redundant.
    pub fn is_running(&self) -> bool {
        matches!(self, Self::Active | Self::Activating | Self::Reloading)
    }

    /// Nothing runs: a stop would be redundant. `failed` is a service that ended badly.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Self::Inactive | Self::Failed)
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AgentState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AgentState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

/// A state-changing request, one of the watcher's POST routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    Start,
    Stop,
    Restart,
    /// `systemctl reload` / SIGHUP; only served when the watcher enables it.
    SoftReset,
}

impl Command {
    pub const ALL: &'static [Command] = &[Self::Start, Self::Stop, Self::Restart, Self::SoftReset];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::SoftReset => "soft-reset",
        }
    }

    /// The route, from the watcher's root.
    pub fn path(self) -> &'static str {
        match self {
            Self::Start => "/agent/start",
            Self::Stop => "/agent/stop",
            Self::Restart => "/agent/restart",
            Self::SoftReset => "/soft-reset",
        }
    }

    /// The code a failure of this command is reported with; a soft reset is a restart in place.
    pub fn failure_code(self) -> ErrorCode {
        match self {
            Self::Start => ErrorCode::AgentStartFailed,
            Self::Stop => ErrorCode::AgentStopFailed,
            Self::Restart | Self::SoftReset => ErrorCode::AgentRestartFailed,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a command should do in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precheck {
    /// Send it (to `systemctl`, to the child, to the watcher).
    Run,
    /// Refuse: `409 agent_already_running`.
    AlreadyRunning,
    /// Refuse: `409 agent_already_stopped`.
    AlreadyStopped,
}

impl Precheck {
    /// The refusal as a problem (`None` for [`Precheck::Run`]); `detail` says what was seen.
    pub fn refusal(self, detail: impl Into<String>) -> Option<Problem> {
        match self {
            Self::Run => None,
            Self::AlreadyRunning => Some(Problem::new(ErrorCode::AgentAlreadyRunning, detail)),
            Self::AlreadyStopped => Some(Problem::new(ErrorCode::AgentAlreadyStopped, detail)),
        }
    }
}

/// Whether `command` makes sense in `state`: a start of a running agent and a stop of a stopped (or failed) one are
/// refused; everything else, restart always, is run.
pub fn precheck(command: Command, state: &AgentState) -> Precheck {
    match command {
        Command::Start if state.is_running() => Precheck::AlreadyRunning,
        Command::Stop if state.is_stopped() => Precheck::AlreadyStopped,
        _ => Precheck::Run,
    }
}

/// [`precheck`] as data, every state word against start and stop: the table both sides are tested against.
pub const PRECHECK_TABLE: &[(&str, Precheck, Precheck)] = &[
    // (state, start, stop)
    ("active", Precheck::AlreadyRunning, Precheck::Run),
    ("activating", Precheck::AlreadyRunning, Precheck::Run),
    ("reloading", Precheck::AlreadyRunning, Precheck::Run),
    ("deactivating", Precheck::Run, Precheck::Run),
    ("inactive", Precheck::Run, Precheck::AlreadyStopped),
    ("failed", Precheck::Run, Precheck::AlreadyStopped),
    ("maintenance", Precheck::Run, Precheck::Run),
];

/// The `GET /` document. `agent-status` and `watcher-status` are Backend.AI's keys; the rest are ours and optional
/// (a Backend.AI watcher sends none of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusBody {
    #[serde(rename = "agent-status")]
    pub agent_status: AgentState,
    #[serde(rename = "watcher-status")]
    pub watcher_status: String,
    /// `systemd` or `process`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When the agent entered its current state (process back-end only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// How the last run of the agent ended, e.g. `exit code 3` or `signal 9 (SIGKILL)`.
    #[serde(rename = "last-exit-status", default, skip_serializing_if = "Option::is_none")]
    pub last_exit_status: Option<String>,
    /// Why the state could not be determined (then `agent-status` is `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StatusBody {
    pub fn new(agent_status: AgentState, backend: &str) -> Self {
        Self {
            agent_status,
            watcher_status: WATCHER_ACTIVE.to_owned(),
            backend: Some(backend.to_owned()),
            unit: None,
            pid: None,
            since: None,
            last_exit_status: None,
            error: None,
        }
    }
}

/// A successful command's answer: `{"result": "ok"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOk {
    pub result: String,
}

impl CommandOk {
    pub fn ok() -> Self {
        Self { result: "ok".to_owned() }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_round_trips_and_unknown_words_pass_through() {
        for w in ["active", "reloading", "inactive", "activating", "deactivating", "failed", "maintenance"] {
            assert_eq!(AgentState::parse(w).as_str(), w);
        }
        assert!(AgentState::parse("activating\n").is_running());
        assert!(AgentState::parse("failed").is_stopped());
        let body = serde_json::to_value(StatusBody::new(AgentState::Active, "process")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"agent-status": "active", "watcher-status": "active", "backend": "process"})
        );
        let backend_ai: StatusBody =
            serde_json::from_str(r#"{"agent-status": "failed", "watcher-status": "active"}"#).unwrap();
        assert_eq!((backend_ai.agent_status, backend_ai.backend), (AgentState::Failed, None));
    }

    #[test]
    fn precheck_is_the_table() {
        for (word, start, stop) in PRECHECK_TABLE {
            let state = AgentState::parse(word);
            assert_eq!(precheck(Command::Start, &state), *start, "start when {word}");
            assert_eq!(precheck(Command::Stop, &state), *stop, "stop when {word}");
            assert_eq!(precheck(Command::Restart, &state), Precheck::Run, "restart when {word}");
        }
        let refused = Precheck::AlreadyStopped.refusal("failed").unwrap();
        assert_eq!((refused.code, refused.status()), (ErrorCode::AgentAlreadyStopped, 409));
    }

    #[test]
    fn commands_have_routes_and_failure_codes() {
        let paths: Vec<_> = Command::ALL.iter().map(|c| c.path()).collect();
        assert_eq!(paths, ["/agent/start", "/agent/stop", "/agent/restart", "/soft-reset"]);
        assert_eq!(Command::SoftReset.failure_code(), ErrorCode::AgentRestartFailed);
        assert_eq!(serde_json::to_value(Command::SoftReset).unwrap(), "soft-reset");
    }
}
