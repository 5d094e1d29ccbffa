//! Command serialisation: start/stop/restart/soft-reset run one at a time, in arrival order (tokio's mutex is fair).
//! A command that cannot get its turn within the bound is answered `429 agent_busy`. Status never takes this lock.

use std::time::{Duration, Instant};

use tracing::Instrument;

use agent_supervisor_protocol::{Problem, watcher::Command};

use crate::backend::{Backend, CommandError};

pub struct Commander {
    backend: Backend,
    turn: tokio::sync::Mutex<()>,
    max_wait: Duration,
}

impl Commander {
    pub fn new(backend: Backend, max_wait: Duration) -> Self {
        Self { backend, turn: tokio::sync::Mutex::new(()), max_wait }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Waits for its turn (bounded), then runs `command` to completion.
    pub async fn run(&self, command: Command) -> Result<(), Problem> {
        let span = tracing::info_span!("command", action = command.as_str(), backend = self.backend.name());
        async move {
            let queued = Instant::now();
            let Ok(_turn) = tokio::time::timeout(self.max_wait, self.turn.lock()).await else {
                let e = CommandError::Busy { waited_ms: self.max_wait.as_millis() as u64 };
                tracing::warn!("{e}");
                return Err(e.into_problem(command));
            };
            let started = Instant::now();
            let result = self.backend.execute(command).await;
            let queued_ms = (started - queued).as_millis() as u64;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match result {
                Ok(()) => {
                    tracing::info!(queued_ms, elapsed_ms, "command done");
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(queued_ms, elapsed_ms, error = %e, "command refused or failed");
                    Err(e.into_problem(command))
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Stops what must not outlive the watcher; waits (bounded) for a running command to finish first.
    pub async fn shutdown(&self, wait: Duration) {
        let _turn = tokio::time::timeout(wait, self.turn.lock()).await;
        self.backend.shutdown().await;
    }
}
