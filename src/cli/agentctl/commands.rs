//! Start, stop and restart of one agent through `/v1/agents/{id}/{verb}`, shared by `agentctl watcher …` and the
//! bulk forms, with `--ensure` turning "already so" refusals into successes.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api::types::CommandReply;
use agent_supervisor_common::api_client::{ApiError as CtlError, Client};

/// The watcher command to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verb {
    Start,
    Stop,
    Restart,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Self::Start => "started",
            Self::Stop => "stopped",
            Self::Restart => "restarted",
        }
    }

    /// The 409 `error_code` that means "already in the state asked for" (what `--ensure` accepts).
    fn already(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Start => Some(("agent_already_running", "already running")),
            Self::Stop => Some(("agent_already_stopped", "already stopped")),
            Self::Restart => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct CommandOpts {
    /// Stop even with kernels running (`?force=true`).
    pub force: bool,
    /// Accept `409 agent_already_running` (start) and `409 agent_already_stopped` (stop) as success.
    pub ensure: bool,
}

/// How one agent's command ended, as the client saw it.
#[derive(Debug)]
pub struct AgentOutcome {
    pub agent_id: String,
    pub verb: Verb,
    pub result: Result<CommandReply, CtlError>,
    /// The command was refused as "already so" and `--ensure` accepted that.
    pub ensured: bool,
    /// Wall time on the client, queueing at the daemon included.
    pub elapsed: Duration,
}

impl AgentOutcome {
    pub fn ok(&self) -> bool {
        self.result.is_ok() || self.ensured
    }

    /// `restarted`, `already running`, `failed`.
    pub fn label(&self) -> &'static str {
        match (&self.result, self.ensured) {
            (Ok(_), _) => self.verb.done(),
            (Err(_), true) => self.verb.already().map_or("failed", |(_, label)| label),
            (Err(_), false) => "failed",
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match &self.result {
            Ok(_) => Some(200),
            Err(e) => e.status(),
        }
    }

    /// The daemon's document (answer or problem), as `--json` prints it.
    pub fn json(&self) -> Value {
        match &self.result {
            Ok(r) => serde_json::to_value(r).unwrap_or_default(),
            Err(e) => e.to_json(),
        }
    }

    /// One line for a person: `i-1: restarted (event 12, 412ms)`, `i-2: already stopped (nothing to do)`, or the
    /// error.
    pub fn line(&self) -> String {
        match &self.result {
            Ok(r) => format!(
                "{}: {} (event {}, {})",
                self.agent_id,
                self.label(),
                r.event_id,
                super::render::duration_ms(r.elapsed_ms)
            ),
            Err(_) if self.ensured => format!("{}: {} (nothing to do)", self.agent_id, self.label()),
            Err(e) => format!("{}: failed: {e}", self.agent_id),
        }
    }
}

/// Percent-encodes a path segment or query value (agent ids are plain; anything else must not break the URL).
pub fn encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `verb` on one agent.
pub async fn run(client: &Client, verb: Verb, agent_id: &str, opts: CommandOpts) -> AgentOutcome {
    let mut path = format!("/v1/agents/{}/{}", encode(agent_id), verb.as_str());
    if verb == Verb::Stop && opts.force {
        path.push_str("?force=true");
    }
    let started = Instant::now();
    let result = client.post(&path).await;
    let ensured = match (&result, verb.already()) {
        (Err(CtlError::Problem { status: 409, code, .. }), Some((already, _))) => opts.ensure && code == already,
        _ => false,
    };
    AgentOutcome { agent_id: agent_id.to_owned(), verb, result, ensured, elapsed: started.elapsed() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn only_unsafe_bytes_are_encoded() {
        assert_eq!(encode("i-1_a.b:c@d"), "i-1_a.b:c@d");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
