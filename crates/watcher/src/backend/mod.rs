//! The two ways the watcher controls an agent: through `systemctl` on a unit ([`systemd`]) or by spawning and
//! supervising the agent command itself ([`process`]). Both answer the same four questions with the same errors.

pub mod process;
pub mod systemd;

use agent_supervisor_protocol::{
    ErrorCode, Problem,
    watcher::{AgentState, Command, Precheck, StatusBody, precheck},
};

pub use process::{ProcessBackend, ProcessConfig};
pub use systemd::{SystemdBackend, SystemdConfig};

/// Why a command did not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The command makes no sense in the agent's state (see `agent_supervisor_protocol::watcher::precheck`).
    #[error("the agent is already {}", if *.0 == Precheck::AlreadyRunning { "running" } else { "stopped" })]
    Refused(Precheck, AgentState),
    /// The service manager or the agent itself failed; `output` holds the last lines it wrote (stderr/log).
    #[error("{message}")]
    Failed { message: String, exit_status: Option<String>, output: Option<String> },
    #[error("another command is still running after {waited_ms} ms")]
    Busy { waited_ms: u64 },
}

impl CommandError {
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed { message: message.into(), exit_status: None, output: None }
    }

    /// `Err(Refused)` when the protocol's pre-check table refuses `command` in `state`.
    pub fn check(command: Command, state: &AgentState) -> Result<(), Self> {
        match precheck(command, state) {
            Precheck::Run => Ok(()),
            refused => Err(Self::Refused(refused, state.clone())),
        }
    }

    /// The problem document for a failure of `command`: the detail reads on its own (message, exit status, output).
    pub fn into_problem(self, command: Command) -> Problem {
        match self {
            Self::Refused(precheck, ref state) => {
                let detail = format!("{self} ({state}); {command} was not run");
                precheck.refusal(detail).unwrap_or_else(|| Problem::new(ErrorCode::InternalError, "refused to run"))
            }
            Self::Busy { .. } => Problem::new(ErrorCode::AgentBusy, self.to_string()),
            Self::Failed { message, exit_status, output } => {
                let mut detail = message;
                if let Some(status) = &exit_status {
                    detail.push_str(&format!(" ({status})"));
                }
                if let Some(out) = output.as_deref().map(str::trim_end).filter(|o| !o.is_empty()) {
                    detail.push_str(":\n");
                    detail.push_str(out);
                }
                let mut p = Problem::new(command.failure_code(), detail).with("command", command.as_str());
                if let Some(status) = exit_status {
                    p = p.with("exit_status", status);
                }
                if let Some(out) = output {
                    p = p.with("output", out);
                }
                p
            }
        }
    }
}

/// The configured back-end.
pub enum Backend {
    Systemd(SystemdBackend),
    Process(ProcessBackend),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Systemd(_) => "systemd",
            Self::Process(_) => "process",
        }
    }

    /// Current state; never waits for a running command.
    pub async fn status(&self) -> StatusBody {
        match self {
            Self::Systemd(b) => b.status().await,
            Self::Process(b) => b.status(),
        }
    }

    /// Runs one command; the caller serialises commands.
    pub async fn execute(&self, command: Command) -> Result<(), CommandError> {
        match (self, command) {
            (Self::Systemd(b), Command::Start) => b.start().await,
            (Self::Systemd(b), Command::Stop) => b.stop().await,
            (Self::Systemd(b), Command::Restart) => b.restart().await,
            (Self::Systemd(b), Command::SoftReset) => b.reload().await,
            (Self::Process(b), Command::Start) => b.start().await,
            (Self::Process(b), Command::Stop) => b.stop().await,
            (Self::Process(b), Command::Restart) => b.restart().await,
            (Self::Process(b), Command::SoftReset) => b.reload(),
        }
    }

    /// Called once when the watcher exits: the process back-end stops its child group (no orphans); a systemd unit
    /// is left as it is, since it lives independently of the watcher.
    pub async fn shutdown(&self) {
        if let Self::Process(b) = self {
            b.shutdown().await;
        }
    }
}

/// The last `max_lines` lines of `text`, at most `max_bytes` long (cut at a character boundary).
pub(crate) fn tail(text: &str, max_lines: usize, max_bytes: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    let joined = lines[start..].join("\n");
    if joined.len() <= max_bytes {
        return joined;
    }
    let mut cut = joined.len() - max_bytes;
    while !joined.is_char_boundary(cut) {
        cut += 1;
    }
    joined[cut..].to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_detail_carries_status_and_output() {
        let e = CommandError::Failed {
            message: "the agent exited during its start grace period".into(),
            exit_status: Some("exit code 3".into()),
            output: Some("out of GPUs\n".into()),
        };
        let doc = e.into_problem(Command::Start).to_json();
        assert_eq!(doc["error_code"], "agent_start_failed");
        assert_eq!(doc["status"], 500);
        assert_eq!(doc["detail"], "the agent exited during its start grace period (exit code 3):\nout of GPUs");
        assert_eq!(doc["exit_status"], "exit code 3");
    }

    #[test]
    fn tail_keeps_the_last_lines_within_the_byte_budget() {
        assert_eq!(tail("a\nb\nc\n", 2, 100), "b\nc");
        assert_eq!(tail("héllo", 5, 3), "llo");
    }
}
