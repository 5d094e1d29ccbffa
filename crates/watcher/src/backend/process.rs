//! The process back-end: the watcher runs the agent command itself, in a process group of its own, with stdout and
//! stderr appended to a log file.
//!
//! Each run has a reaper thread that spawns the child and waits for it, so exits are noticed at once, no zombie is
//! left, and the child is bound to that thread with `PR_SET_PDEATHSIG` (if the watcher is killed outright, the kernel
//! kills the child). When the group leader exits, whatever is left of its group is killed, as systemd does for a
//! unit's control group. The state lives in a `watch` channel: `GET /` reads it without locking out commands, and
//! commands wait on it for the child to exit.

use std::{
    fs::OpenOptions,
    io::SeekFrom,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};
use tokio::sync::{oneshot, watch};

use super::{CommandError, systemd::describe_exit, tail};
use agent_supervisor_protocol::watcher::{AgentState as AgentStatus, Command, Precheck, StatusBody};

/// How long the child may take to die after SIGKILL before stop reports a failure.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How much of the agent's log a failed start carries.
const OUTPUT_LINES: usize = 20;
const OUTPUT_BYTES: usize = 4096;

#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Program and arguments.
    pub command: Vec<String>,
    /// A start succeeds once the child has stayed up this long.
    pub start_grace: Duration,
    /// Time between SIGTERM and SIGKILL on stop.
    pub stop_timeout: Duration,
    /// Where the child's stdout and stderr are appended.
    pub log_file: PathBuf,
}

#[derive(Debug, Clone)]
struct ChildState {
    status: AgentStatus,
    /// Pid (= process group id) of the running child.
    pid: Option<u32>,
    /// Incremented per spawn, so that a late exit of an old run is not mistaken for the current one.
    run: u64,
    since: DateTime<Utc>,
    last_exit: Option<String>,
}

struct Inner {
    cfg: ProcessConfig,
    state: watch::Sender<ChildState>,
    shutting_down: AtomicBool,
}

#[derive(Clone)]
pub struct ProcessBackend {
    inner: Arc<Inner>,
}

impl ProcessBackend {
    pub fn new(cfg: ProcessConfig) -> Self {
        let state = ChildState { status: AgentStatus::Inactive, pid: None, run: 0, since: Utc::now(), last_exit: None };
        let (state, _) = watch::channel(state);
        Self { inner: Arc::new(Inner { cfg, state, shutting_down: AtomicBool::new(false) }) }
    }

    pub fn log_file(&self) -> &std::path::Path {
        &self.inner.cfg.log_file
    }

    pub fn status(&self) -> StatusBody {
        let s = self.inner.state.borrow();
        let mut body = StatusBody::new(s.status.clone(), "process");
        body.pid = s.pid;
        body.since = Some(s.since);
        body.last_exit_status = s.last_exit.clone();
        body
    }

    fn snapshot(&self) -> ChildState {
        self.inner.state.borrow().clone()
    }

    pub async fn start(&self) -> Result<(), CommandError> {
        let s = self.snapshot();
        CommandError::check(Command::Start, &s.status)?;
        if s.pid.is_some() {
            // Deactivating: what is left of the old run goes first.
            self.terminate().await?;
        }
        self.launch().await
    }

    pub async fn stop(&self) -> Result<(), CommandError> {
        CommandError::check(Command::Stop, &self.snapshot().status)?;
        self.terminate().await
    }

    /// Stops the child if it runs, then starts it.
    pub async fn restart(&self) -> Result<(), CommandError> {
        if !self.snapshot().status.is_stopped() {
            self.terminate().await?;
        }
        self.launch().await
    }

    /// SIGHUP to the child.
    pub fn reload(&self) -> Result<(), CommandError> {
        let s = self.snapshot();
        let Some(pid) = s.pid.filter(|_| !s.status.is_stopped()) else {
            return Err(CommandError::Refused(Precheck::AlreadyStopped, s.status));
        };
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP)
            .map_err(|e| CommandError::failed(format!("cannot send SIGHUP to pid {pid}: {e}")))
    }

    /// Stops the child group for good; later starts are refused.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        if !self.snapshot().status.is_stopped() {
            tracing::info!("stopping the agent before exiting");
            if let Err(e) = self.terminate().await {
                tracing::error!(error = %e, "the agent did not stop cleanly");
            }
        }
    }

    /// Spawns the child and holds it through the grace period.
    async fn launch(&self) -> Result<(), CommandError> {
        let cfg = &self.inner.cfg;
        let log_offset = tokio::fs::metadata(&cfg.log_file).await.map(|m| m.len()).unwrap_or(0);
        let (run, pid) = self.spawn().await?;
        tracing::info!(pid, "agent process spawned");
        let mut rx = self.inner.state.subscribe();
        // The borrow `wait_for` returns holds the channel's read lock: reduce it to a bool at once.
        let stayed_up =
            tokio::time::timeout(cfg.start_grace, rx.wait_for(|s| s.run != run || s.pid.is_none())).await.is_err();
        if stayed_up {
            self.inner.state.send_if_modified(|s| {
                let still_starting = s.run == run && s.status == AgentStatus::Activating;
                if still_starting {
                    s.status = AgentStatus::Active;
                    s.since = Utc::now();
                }
                still_starting
            });
            return Ok(());
        }
        let s = self.snapshot();
        Err(CommandError::Failed {
            message: format!("the agent exited within its {} ms start grace period", cfg.start_grace.as_millis()),
            exit_status: s.last_exit,
            output: Some(read_log_from(&cfg.log_file, log_offset).await),
        })
    }

    /// Starts a reaper thread that spawns the child and waits for it; returns `(run, pid)` once it runs.
    async fn spawn(&self) -> Result<(u64, u32), CommandError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(CommandError::failed("the watcher is shutting down"));
        }
        let cfg = &self.inner.cfg;
        let Some((program, args)) = cfg.command.split_first() else {
            return Err(CommandError::failed("no agent command is configured"));
        };
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).stdin(Stdio::null()).process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let (tx, rx) = oneshot::channel();
        let inner = self.inner.clone();
        let program = program.clone();
        let log_file = cfg.log_file.clone();
        let thread = std::thread::Builder::new().name("agent-reaper".into()).spawn(move || {
            // Opened here, on the reaper's own thread, so no file I/O blocks the watcher's event loop.
            let open_log = || OpenOptions::new().create(true).append(true).open(&log_file);
            match (open_log(), open_log()) {
                (Ok(out), Ok(err)) => cmd.stdout(out).stderr(err),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = tx.send(Err(format!("cannot open log file {}: {e}", log_file.display())));
                    return;
                }
            };
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot spawn `{program}`: {e}")));
                    return;
                }
            };
            let pid = child.id();
            let mut run = 0;
            inner.state.send_modify(|s| {
                s.run += 1;
                run = s.run;
                s.status = AgentStatus::Activating;
                s.pid = Some(pid);
                s.since = Utc::now();
            });
            let _ = tx.send(Ok((run, pid)));
            let exit = child.wait();
            // Leftovers of the group die with their leader.
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let (clean, described) = match &exit {
                Ok(st) => (st.success(), describe_exit(*st)),
                Err(e) => (false, format!("unknown ({e})")),
            };
            inner.state.send_modify(|s| {
                if s.run != run {
                    return;
                }
                s.status = match s.status {
                    AgentStatus::Deactivating => AgentStatus::Inactive,
                    AgentStatus::Active if clean => AgentStatus::Inactive,
                    _ => AgentStatus::Failed,
                };
                s.pid = None;
                s.since = Utc::now();
                s.last_exit = Some(described.clone());
            });
            tracing::info!(pid, exit = %described, "agent process exited");
        });
        if let Err(e) = thread {
            return Err(CommandError::failed(format!("cannot start a reaper thread: {e}")));
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(message)) => Err(CommandError::failed(message)),
            Err(_) => Err(CommandError::failed("the reaper thread ended before spawning the agent")),
        }
    }

    /// SIGTERM to the group, SIGKILL after the stop timeout, and wait for the leader to be reaped.
    async fn terminate(&self) -> Result<(), CommandError> {
        let s = self.snapshot();
        let Some(pid) = s.pid else { return Ok(()) };
        let run = s.run;
        self.inner.state.send_if_modified(|s| {
            let ours = s.run == run && s.pid.is_some();
            if ours {
                s.status = AgentStatus::Deactivating;
                s.since = Utc::now();
            }
            ours
        });
        let group = Pid::from_raw(pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let mut rx = self.inner.state.subscribe();
        let stop_timeout = self.inner.cfg.stop_timeout;
        if tokio::time::timeout(stop_timeout, rx.wait_for(|s| s.run != run || s.pid.is_none())).await.is_ok() {
            return Ok(());
        }
        tracing::warn!(
            pid,
            stop_timeout_ms = stop_timeout.as_millis() as u64,
            "agent ignored SIGTERM; sending SIGKILL"
        );
        let _ = killpg(group, Signal::SIGKILL);
        if tokio::time::timeout(KILL_WAIT, rx.wait_for(|s| s.run != run || s.pid.is_none())).await.is_ok() {
            return Ok(());
        }
        Err(CommandError::failed(format!(
            "the agent (pid {pid}) is still alive {} ms after SIGKILL",
            KILL_WAIT.as_millis()
        )))
    }
}

/// What the agent wrote to its log since `offset`, last lines only.
async fn read_log_from(path: &std::path::Path, offset: u64) -> String {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut bytes = Vec::new();
    if let Ok(mut f) = tokio::fs::File::open(path).await
        && f.seek(SeekFrom::Start(offset)).await.is_ok()
    {
        let _ = f.read_to_end(&mut bytes).await;
    }
    tail(&String::from_utf8_lossy(&bytes), OUTPUT_LINES, OUTPUT_BYTES)
}
