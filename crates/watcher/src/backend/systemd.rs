//! The systemd back-end: `systemctl is-active|start|stop|restart|reload <unit>`, optionally through `sudo -n`.
//!
//! Unlike Backend.AI's watcher, exit codes are checked and stderr is reported. `is-active` answers are cached for a
//! short time (and the cache is refreshed by one caller at a time) so that a burst of status requests does not fork
//! one `systemctl` each; every command invalidates the cache.

use std::{
    process::Stdio,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::process::Command as Process;

use super::{CommandError, tail};
use agent_supervisor_protocol::watcher::{AgentState as AgentStatus, Command, StatusBody};

/// How often the state is polled during the start grace period.
const GRACE_POLL: Duration = Duration::from_millis(100);
/// Bound on the `is-active` behind `GET /`, so that a hung systemd cannot hold status requests for long.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// How much of `systemctl`'s stderr a failure carries.
const STDERR_LINES: usize = 20;
const STDERR_BYTES: usize = 4096;

#[derive(Debug, Clone)]
pub struct SystemdConfig {
    /// The unit controlled, e.g. `backendai-agent.service`.
    pub unit: String,
    /// Run `sudo -n systemctl …` instead of `systemctl …`.
    pub sudo: bool,
    /// After a successful `start`/`restart`, the unit must not turn `failed`/`inactive` within this time.
    pub start_grace: Duration,
    /// How long an `is-active` answer is reused for `GET /`.
    pub status_cache: Duration,
    /// Bound on one `systemctl` invocation.
    pub systemctl_timeout: Duration,
}

/// Raw result of one `systemctl` run.
struct Ran {
    success: bool,
    exit_status: String,
    stdout: String,
    stderr: String,
}

pub struct SystemdBackend {
    cfg: SystemdConfig,
    cache: Mutex<Option<(AgentStatus, Instant)>>,
    /// Bumped by every command, so that an `is-active` that started before a command does not refill the cache.
    generation: AtomicU64,
    /// One cache refresh at a time; the others wait and reuse its answer.
    refresh: tokio::sync::Mutex<()>,
}

impl SystemdBackend {
    pub fn new(cfg: SystemdConfig) -> Self {
        Self { cfg, cache: Mutex::new(None), generation: AtomicU64::new(0), refresh: tokio::sync::Mutex::new(()) }
    }

    pub fn unit(&self) -> &str {
        &self.cfg.unit
    }

    fn cached(&self) -> Option<AgentStatus> {
        let cache = self.cache.lock().ok()?;
        cache.as_ref().filter(|(_, at)| at.elapsed() < self.cfg.status_cache).map(|(s, _)| s.clone())
    }

    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut cache) = self.cache.lock() {
            *cache = None;
        }
    }

    pub async fn status(&self) -> StatusBody {
        let mut body = StatusBody::new(AgentStatus::Other("unknown".into()), "systemd");
        body.unit = Some(self.cfg.unit.clone());
        match self.cached_is_active().await {
            Ok(s) => body.agent_status = s,
            Err(e) => body.error = Some(e),
        }
        body
    }

    async fn cached_is_active(&self) -> Result<AgentStatus, String> {
        if let Some(s) = self.cached() {
            return Ok(s);
        }
        let _refreshing = self.refresh.lock().await;
        if let Some(s) = self.cached() {
            return Ok(s);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let status = self.is_active_within(STATUS_TIMEOUT.min(self.cfg.systemctl_timeout)).await?;
        if self.generation.load(Ordering::SeqCst) == generation
            && let Ok(mut cache) = self.cache.lock()
        {
            *cache = Some((status.clone(), Instant::now()));
        }
        Ok(status)
    }

    /// A fresh `systemctl is-active`. Its exit code is non-zero for every state but `active`, so only stdout counts.
    async fn is_active(&self) -> Result<AgentStatus, String> {
        self.is_active_within(self.cfg.systemctl_timeout).await
    }

    async fn is_active_within(&self, timeout: Duration) -> Result<AgentStatus, String> {
        let ran = self.systemctl("is-active", timeout).await?;
        let word = ran.stdout.trim();
        if word.is_empty() {
            return Err(format!("systemctl is-active printed nothing ({}): {}", ran.exit_status, ran.stderr.trim()));
        }
        Ok(AgentStatus::parse(word))
    }

    async fn systemctl(&self, verb: &str, timeout: Duration) -> Result<Ran, String> {
        let mut cmd = if self.cfg.sudo {
            let mut c = Process::new("sudo");
            c.args(["-n", "systemctl"]);
            c
        } else {
            Process::new("systemctl")
        };
        cmd.args([verb, self.cfg.unit.as_str()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let program = if self.cfg.sudo { "sudo -n systemctl" } else { "systemctl" };
        let output = match tokio::time::timeout(timeout, cmd.output()).await {
            Err(_) => {
                return Err(format!(
                    "`{program} {verb} {}` did not finish within {} ms",
                    self.cfg.unit,
                    timeout.as_millis()
                ));
            }
            Ok(Err(e)) => return Err(format!("cannot run `{program} {verb} {}`: {e}", self.cfg.unit)),
            Ok(Ok(o)) => o,
        };
        Ok(Ran {
            success: output.status.success(),
            exit_status: describe_exit(output.status),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs a state-changing verb; a non-zero exit is a failure carrying stderr.
    async fn change(&self, verb: &str) -> Result<(), CommandError> {
        self.invalidate();
        let ran = self.systemctl(verb, self.cfg.systemctl_timeout).await.map_err(CommandError::failed);
        self.invalidate();
        let ran = ran?;
        if ran.success {
            return Ok(());
        }
        let program = if self.cfg.sudo { "sudo -n systemctl" } else { "systemctl" };
        Err(CommandError::Failed {
            message: format!("`{program} {verb} {}` failed", self.cfg.unit),
            exit_status: Some(ran.exit_status),
            output: Some(tail(&ran.stderr, STDERR_LINES, STDERR_BYTES)),
        })
    }

    /// After a successful start, the unit must stay up for the grace period.
    async fn hold_through_grace(&self) -> Result<(), CommandError> {
        let deadline = Instant::now() + self.cfg.start_grace;
        loop {
            let status = self.is_active().await.map_err(CommandError::failed)?;
            if status.is_stopped() {
                return Err(CommandError::failed(format!(
                    "unit {} is {} right after it was started",
                    self.cfg.unit,
                    status.as_str()
                )));
            }
            if Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(GRACE_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    pub async fn start(&self) -> Result<(), CommandError> {
        self.invalidate();
        CommandError::check(Command::Start, &self.is_active().await.map_err(CommandError::failed)?)?;
        self.change("start").await?;
        self.hold_through_grace().await
    }

    pub async fn stop(&self) -> Result<(), CommandError> {
        self.invalidate();
        CommandError::check(Command::Stop, &self.is_active().await.map_err(CommandError::failed)?)?;
        self.change("stop").await
    }

    /// `systemctl restart` starts a stopped unit, as Backend.AI's restart does.
    pub async fn restart(&self) -> Result<(), CommandError> {
        self.change("restart").await?;
        self.hold_through_grace().await
    }

    pub async fn reload(&self) -> Result<(), CommandError> {
        self.change("reload").await
    }
}

/// `exit code N` or `signal N (SIGNAME)`.
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(sig) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("signal {sig} ({})", s.as_str()),
            Err(_) => format!("signal {sig}"),
        },
        None => status.to_string(),
    }
}
