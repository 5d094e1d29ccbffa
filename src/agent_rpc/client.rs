//! The Callosum client: one DEALER per `(address, agent public key)`, owned by a dedicated OS thread because the
//! `zmq` socket is blocking and not `Sync`. Async callers hand the thread a job over a channel and await a oneshot.
//!
//! The worker opens its socket lazily and checks it with a Callosum PING (no PONG within the connect bound means the
//! agent is down, does not speak ZeroMQ, or rejected our CURVE keys: ZeroMQ reports none of these). Replies are
//! matched on `(meth, okey, seq)`; `seq` is a per-connection counter never reused while a call is in flight. After a
//! failure the socket is dropped and the next call builds a new one; an idle worker ends itself.

use std::{
    collections::HashMap,
    io::{Read, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    sync::{Arc, Mutex, Weak, mpsc},
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use super::{
    RpcError,
    codec::{self, MsgType, OrderKey, Reply},
    keys::{self, CurveKeyPair},
};
use crate::config::AgentRpcConfig;

/// Upper bound on the PING/PONG check when a connection is (re)opened; the configured timeout applies if shorter.
pub const CONNECT_BOUND: Duration = Duration::from_secs(5);
/// A connection silent for longer than this is checked with a PING before the next call is sent on it.
const LIVENESS_WINDOW: Duration = Duration::from_secs(1);
/// A worker with no call for this long closes its socket and ends its thread.
const IDLE_CLOSE: Duration = Duration::from_secs(300);
/// Beyond the connect bound and the reply timeout, how long a caller waits for a worker that may have died.
const WORKER_GUARD_SLACK: Duration = Duration::from_secs(1);
/// The Python manager's keepalive options for agent connections (`rpc_keepalive_timeout` 60 s).
const TCP_KEEPALIVE_IDLE_S: i32 = 60;
const TCP_KEEPALIVE_INTVL_S: i32 = 20;
const TCP_KEEPALIVE_CNT: i32 = 3;

/// Client for agents' Callosum RPC. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct AgentRpc {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: zmq::Context,
    timeout: Duration,
    keypair: Option<CurveKeyPair>,
    conns: Arc<Mutex<HashMap<ConnKey, Connection>>>,
    next_conn_id: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ConnKey {
    addr: String,
    server_key: Option<String>,
}

/// The caller's end of a worker.
struct Connection {
    id: u64,
    jobs: mpsc::Sender<Job>,
    /// One byte written here wakes the worker from `zmq::poll`.
    wake: UnixStream,
}

struct Job {
    meth: &'static str,
    call: Vec<u8>,
    reply: oneshot::Sender<Result<rmpv::Value, RpcError>>,
}

impl std::fmt::Debug for AgentRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRpc")
            .field("timeout", &self.inner.timeout)
            .field("manager_public_key", &self.inner.keypair.as_ref().map(|k| k.public.as_str()))
            .finish()
    }
}

impl AgentRpc {
    /// Builds a client; loads the manager's CURVE key pair when `manager_keypair` names a certificate file.
    pub fn new(cfg: &AgentRpcConfig) -> Result<Self, RpcError> {
        if cfg.timeout_ms == 0 {
            return Err(RpcError::Config("agent_rpc.timeout_ms must be positive".into()));
        }
        let keypair = match &cfg.manager_keypair {
            Some(path) => Some(
                CurveKeyPair::load_certificate(std::path::Path::new(path))
                    .map_err(|e| RpcError::Config(format!("agent_rpc.manager_keypair: {e}")))?,
            ),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                ctx: zmq::Context::new(),
                timeout: Duration::from_millis(cfg.timeout_ms),
                keypair,
                conns: Arc::new(Mutex::new(HashMap::new())),
                next_conn_id: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// The reply timeout of one call.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// How long opening a connection may take before the agent counts as unavailable.
    pub fn connect_bound(&self) -> Duration {
        self.inner.timeout.min(CONNECT_BOUND)
    }

    /// Calls the agent's `sync_kernel_registry([(kernel_id, session_id), ...], agent_id=...)`: the agent reports
    /// kernels it does not know as terminated and destroys kernels missing from the list.
    #[tracing::instrument(skip(self, agent_public_key, kernels), fields(agent.id = %agent_id, kernel_count = kernels.len()))]
    pub async fn sync_kernel_registry(
        &self,
        addr: &str,
        agent_public_key: Option<&str>,
        kernels: &[(uuid::Uuid, uuid::Uuid)],
        agent_id: &str,
    ) -> Result<(), RpcError> {
        let call = codec::sync_kernel_registry_call(kernels, agent_id).map_err(|e| RpcError::Protocol(e.0))?;
        // The agent returns None; any other value is ignored, as the Python manager does.
        self.call(addr, agent_public_key, codec::SYNC_KERNEL_REGISTRY, call).await.map(drop)
    }

    async fn call(
        &self,
        addr: &str,
        agent_public_key: Option<&str>,
        meth: &'static str,
        call: Vec<u8>,
    ) -> Result<rmpv::Value, RpcError> {
        let key = self.conn_key(addr, agent_public_key)?;
        let (reply, rx) = oneshot::channel();
        self.submit(key, Job { meth, call, reply })?;
        // The worker enforces the connect bound and the reply timeout; this guard only covers a worker that died.
        let guard = self.connect_bound() + self.inner.timeout + WORKER_GUARD_SLACK;
        match tokio::time::timeout(guard, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RpcError::Unavailable(format!("the RPC connection to {addr} stopped"))),
            Err(_) => Err(RpcError::Timeout(self.inner.timeout)),
        }
    }

    fn conn_key(&self, addr: &str, agent_public_key: Option<&str>) -> Result<ConnKey, RpcError> {
        validate_addr(addr)?;
        let server_key = match agent_public_key.map(str::trim).filter(|k| !k.is_empty()) {
            None => None,
            Some(k) => {
                let k = keys::validate_z85_key(k).map_err(|e| RpcError::Config(format!("agent public key: {e}")))?;
                if !keys::curve_available() {
                    return Err(RpcError::Config(
                        "the agent has a CURVE public key but the linked libzmq was built without CURVE support".into(),
                    ));
                }
                if self.inner.keypair.is_none() {
                    return Err(RpcError::Config(
                        "the agent has a CURVE public key but agent_rpc.manager_keypair is not configured".into(),
                    ));
                }
                Some(k.to_owned())
            }
        };
        Ok(ConnKey { addr: addr.to_owned(), server_key })
    }

    /// Hands a job to the connection's worker, starting one if there is none (or the old one has ended).
    fn submit(&self, key: ConnKey, job: Job) -> Result<(), RpcError> {
        let mut conns =
            self.inner.conns.lock().map_err(|_| RpcError::Unavailable("connection table poisoned".into()))?;
        let job = match conns.get(&key) {
            Some(conn) => match conn.jobs.send(job) {
                Ok(()) => {
                    // A full buffer already holds a wake-up byte, so a failed write loses nothing.
                    let _ = (&conn.wake).write(&[1]);
                    return Ok(());
                }
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let conn = self.spawn_worker(&key)?;
        conn.jobs
            .send(job)
            .map_err(|_| RpcError::Unavailable(format!("the RPC connection to {} stopped", key.addr)))?;
        let _ = (&conn.wake).write(&[1]);
        conns.insert(key, conn);
        Ok(())
    }

    fn spawn_worker(&self, key: &ConnKey) -> Result<Connection, RpcError> {
        let (jobs, rx) = mpsc::channel();
        let (wake, wake_rx) =
            UnixStream::pair().map_err(|e| RpcError::Unavailable(format!("cannot create a wake-up pipe: {e}")))?;
        for s in [&wake, &wake_rx] {
            s.set_nonblocking(true).map_err(|e| RpcError::Unavailable(format!("cannot create a wake-up pipe: {e}")))?;
        }
        let curve = match (&key.server_key, &self.inner.keypair) {
            (Some(server), Some(client)) => Some((server.clone(), client.clone())),
            _ => None,
        };
        let id = self.inner.next_conn_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let worker = Worker {
            ctx: self.inner.ctx.clone(),
            endpoint: key.addr.clone(),
            curve,
            timeout: self.inner.timeout,
            connect_bound: self.connect_bound(),
            jobs: rx,
            jobs_closed: false,
            wake: wake_rx,
            socket: None,
            next_seq: 0,
            pending: HashMap::new(),
            last_activity: Instant::now(),
            last_heard: Instant::now(),
            probes: 0,
            table: Arc::downgrade(&self.inner.conns),
            key: key.clone(),
            id,
        };
        std::thread::Builder::new()
            .name(format!("agent-rpc {}", key.addr))
            .spawn(move || worker.run())
            .map_err(|e| RpcError::Unavailable(format!("cannot start the RPC connection thread: {e}")))?;
        Ok(Connection { id, jobs, wake })
    }
}

/// Accepts only `tcp://host:port`, the form Backend.AI agents advertise.
pub fn validate_addr(addr: &str) -> Result<(), RpcError> {
    let bad = |why: &str| RpcError::Config(format!("agent address {addr:?} {why}; expected tcp://HOST:PORT"));
    let rest = addr.strip_prefix("tcp://").ok_or_else(|| bad("does not start with tcp://"))?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '*') {
        return Err(bad("has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("has no valid port")),
    }
}

struct Pending {
    meth: &'static str,
    deadline: Instant,
    reply: oneshot::Sender<Result<rmpv::Value, RpcError>>,
}

/// The thread that owns one DEALER socket.
struct Worker {
    ctx: zmq::Context,
    endpoint: String,
    curve: Option<(String, CurveKeyPair)>,
    timeout: Duration,
    connect_bound: Duration,
    jobs: mpsc::Receiver<Job>,
    jobs_closed: bool,
    wake: UnixStream,
    socket: Option<zmq::Socket>,
    next_seq: u32,
    pending: HashMap<u32, Pending>,
    last_activity: Instant,
    /// When the agent last sent us anything.
    last_heard: Instant,
    probes: u64,
    table: Weak<Mutex<HashMap<ConnKey, Connection>>>,
    key: ConnKey,
    id: u64,
}

/// The order key this client sends: `""` as str, like the Python manager's per-call `rpc_context`.
fn order_key() -> OrderKey {
    OrderKey::Str(String::new())
}

impl Worker {
    fn run(mut self) {
        loop {
            self.expire();
            let idle = self.last_activity.elapsed() >= IDLE_CLOSE;
            if self.pending.is_empty() && (self.jobs_closed || (idle && self.retire())) {
                tracing::debug!(addr = %self.endpoint, "agent RPC connection closed");
                return;
            }
            if let Err(e) = self.wait() {
                tracing::debug!(addr = %self.endpoint, error = %e, "agent RPC poll failed; resetting the socket");
                self.reset(&RpcError::Unavailable(format!("socket error: {e}")));
            }
            self.take_jobs();
            self.read_replies();
        }
    }

    /// Ends this worker if no job is queued, removing it from the connection table first so that no caller hands it
    /// a job afterwards. Returns whether it did.
    fn retire(&mut self) -> bool {
        let Some(table) = self.table.upgrade() else { return true };
        let Ok(mut conns) = table.lock() else { return true };
        match self.jobs.try_recv() {
            Ok(job) => {
                drop(conns);
                self.start(job);
                false
            }
            Err(_) => {
                if conns.get(&self.key).is_some_and(|c| c.id == self.id) {
                    conns.remove(&self.key);
                }
                true
            }
        }
    }

    /// Sleeps until the socket or the wake-up pipe is readable, the next deadline passes, or the idle timer ends.
    fn wait(&mut self) -> Result<(), zmq::Error> {
        let now = Instant::now();
        let mut until = self.last_activity + IDLE_CLOSE;
        if let Some(first) = self.pending.values().map(|p| p.deadline).min() {
            until = until.min(first);
        }
        let timeout_ms = i64::try_from(until.saturating_duration_since(now).as_millis()).unwrap_or(i64::MAX).max(1);
        let mut items = Vec::with_capacity(2);
        // Once every sender is gone the pipe reads EOF forever; stop watching it.
        if !self.jobs_closed {
            items.push(zmq::PollItem::from_fd(self.wake.as_raw_fd(), zmq::POLLIN));
        }
        if let Some(socket) = &self.socket {
            items.push(socket.as_poll_item(zmq::POLLIN));
        }
        zmq::poll(&mut items, timeout_ms)?;
        let mut buf = [0u8; 256];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        Ok(())
    }

    fn take_jobs(&mut self) {
        loop {
            match self.jobs.try_recv() {
                Ok(job) => self.start(job),
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.jobs_closed = true;
                    return;
                }
            }
        }
    }

    /// Sends one call, opening (and checking) the socket first if there is none.
    fn start(&mut self, job: Job) {
        self.last_activity = Instant::now();
        if job.reply.is_closed() {
            return;
        }
        let checked = match self.socket.take() {
            None => self.open(),
            // An idle connection may point at an agent that has gone away since; ZeroMQ would queue the call and
            // reconnect silently, so check it first rather than wait out the whole call timeout.
            Some(socket) if self.pending.is_empty() && self.last_heard.elapsed() > LIVENESS_WINDOW => {
                self.probe(&socket).map(|()| socket)
            }
            Some(socket) => Ok(socket),
        };
        match checked {
            Ok(socket) => self.socket = Some(socket),
            Err(e) => {
                tracing::debug!(addr = %self.endpoint, error = %e, "agent RPC connection failed");
                let _ = job.reply.send(Err(e.clone()));
                // Calls queued while we waited would only wait again for the same dead agent.
                while let Ok(queued) = self.jobs.try_recv() {
                    let _ = queued.reply.send(Err(e.clone()));
                }
                return;
            }
        }
        let seq = self.allocate_seq();
        let frames = match codec::encode_request(job.meth, &order_key(), seq, job.call) {
            Ok(frames) => frames,
            Err(e) => {
                let _ = job.reply.send(Err(RpcError::Protocol(e.0)));
                return;
            }
        };
        let sent = match &self.socket {
            Some(socket) => socket.send_multipart(frames, zmq::DONTWAIT),
            None => Err(zmq::Error::ENOTSOCK),
        };
        match sent {
            Ok(()) => {
                let deadline = Instant::now() + self.timeout;
                self.pending.insert(seq, Pending { meth: job.meth, deadline, reply: job.reply });
            }
            Err(e) => {
                let err = RpcError::Unavailable(format!("cannot send to {}: {e}", self.endpoint));
                let _ = job.reply.send(Err(err.clone()));
                self.reset(&err);
            }
        }
    }

    fn allocate_seq(&mut self) -> u32 {
        loop {
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1);
            if !self.pending.contains_key(&seq) {
                return seq;
            }
        }
    }

    /// A new DEALER, connected and answered a PING within the connect bound.
    fn open(&mut self) -> Result<zmq::Socket, RpcError> {
        let unavailable = |what: &str, e: zmq::Error| RpcError::Unavailable(format!("{what} {}: {e}", self.endpoint));
        let socket = self.ctx.socket(zmq::DEALER).map_err(|e| unavailable("cannot create a socket for", e))?;
        let setup = || -> Result<(), zmq::Error> {
            socket.set_linger(0)?;
            socket.set_tcp_keepalive(1)?;
            socket.set_tcp_keepalive_idle(TCP_KEEPALIVE_IDLE_S)?;
            socket.set_tcp_keepalive_intvl(TCP_KEEPALIVE_INTVL_S)?;
            socket.set_tcp_keepalive_cnt(TCP_KEEPALIVE_CNT)?;
            if self.key.addr.contains('[') {
                socket.set_ipv6(true)?;
            }
            if let Some((server_key, client)) = &self.curve {
                socket.set_curve_serverkey(server_key.as_bytes())?;
                socket.set_curve_publickey(client.public.as_bytes())?;
                socket.set_curve_secretkey(client.secret.expose().as_bytes())?;
            }
            Ok(())
        };
        setup().map_err(|e| RpcError::Config(format!("socket options for {}: {e}", self.endpoint)))?;
        socket.connect(&self.endpoint).map_err(|e| unavailable("cannot connect to", e))?;
        self.probe(&socket)?;
        Ok(socket)
    }

    /// Sends a Callosum PING and waits for its PONG within the connect bound. Only called with no call in flight,
    /// so anything else that arrives meanwhile is a late reply and is dropped.
    fn probe(&mut self, socket: &zmq::Socket) -> Result<(), RpcError> {
        let unavailable = |what: &str, e: zmq::Error| RpcError::Unavailable(format!("{what} {}: {e}", self.endpoint));
        self.probes = self.probes.wrapping_add(1);
        // Callosum echoes the two frames; a counter tells this PONG from one to an earlier, abandoned probe.
        let token = self.probes.to_be_bytes();
        socket
            .send_multipart([codec::PING, &token, b""], zmq::DONTWAIT)
            .map_err(|e| unavailable("cannot send a PING to", e))?;
        let deadline = Instant::now() + self.connect_bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RpcError::Unavailable(format!(
                    "no answer to a Callosum PING from {} within {} ms (agent down, not speaking ZeroMQ, or CURVE \
                     keys rejected)",
                    self.endpoint,
                    self.connect_bound.as_millis()
                )));
            }
            let ms = i64::try_from(left.as_millis()).unwrap_or(i64::MAX).max(1);
            if socket.poll(zmq::POLLIN, ms).map_err(|e| unavailable("cannot poll", e))? == 0 {
                continue;
            }
            match socket.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => {
                    if let [kind, echoed, _] = frames.as_slice()
                        && kind.as_slice() == codec::PONG
                        && echoed.as_slice() == token.as_slice()
                    {
                        self.last_heard = Instant::now();
                        return Ok(());
                    }
                }
                Err(zmq::Error::EAGAIN) => {}
                Err(e) => return Err(unavailable("cannot receive from", e)),
            }
        }
    }

    fn read_replies(&mut self) {
        loop {
            let Some(socket) = &self.socket else { return };
            let frames = match socket.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => frames,
                Err(zmq::Error::EAGAIN) => return,
                Err(e) => {
                    self.reset(&RpcError::Unavailable(format!("cannot receive from {}: {e}", self.endpoint)));
                    return;
                }
            };
            self.last_heard = Instant::now();
            match frames.as_slice() {
                [kind, header, body] if kind.as_slice() == codec::PING => {
                    let _ = socket.send_multipart([codec::PONG, header.as_slice(), body.as_slice()], zmq::DONTWAIT);
                }
                [kind, header, body] if kind.as_slice() == codec::UPPER => self.handle_reply(header, body),
                _ => tracing::debug!(addr = %self.endpoint, frames = frames.len(), "ignoring a non-Callosum message"),
            }
        }
    }

    fn handle_reply(&mut self, header: &[u8], body: &[u8]) {
        let header = match codec::decode_header(header) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(addr = %self.endpoint, error = %e, "ignoring a reply with an invalid header");
                return;
            }
        };
        if matches!(header.msgtype, MsgType::Function | MsgType::Cancel | MsgType::Null) {
            tracing::debug!(addr = %self.endpoint, meth = %header.meth, "ignoring a request from the agent");
            return;
        }
        let matches = self
            .pending
            .get(&header.seq)
            .is_some_and(|p| p.meth == header.meth && header.okey.as_bytes() == order_key().as_bytes());
        let Some(pending) = matches.then(|| self.pending.remove(&header.seq)).flatten() else {
            tracing::debug!(addr = %self.endpoint, seq = header.seq, "ignoring a reply to no pending call (late or foreign)");
            return;
        };
        let result = match codec::decode_reply(&header, body) {
            Ok(Reply::Result(value)) => Ok(value),
            Ok(Reply::Failure { name, repr, .. }) => Err(RpcError::Failure { name, repr }),
            Ok(Reply::Error { name, repr }) => Err(RpcError::Remote(format!("{name}: {repr}"))),
            Ok(Reply::Cancelled) => Err(RpcError::Remote("the agent cancelled the call".into())),
            Err(e) => Err(RpcError::Protocol(e.0)),
        };
        let _ = pending.reply.send(result);
    }

    /// Fails calls past their deadline. When nothing is left in flight the socket is dropped, so the next call
    /// checks the agent again instead of trusting a connection that just went quiet.
    fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<u32> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(s, _)| *s).collect();
        if expired.is_empty() {
            return;
        }
        for seq in expired {
            if let Some(p) = self.pending.remove(&seq) {
                let _ = p.reply.send(Err(RpcError::Timeout(self.timeout)));
            }
        }
        if self.pending.is_empty() {
            self.socket = None;
        }
    }

    /// Drops the socket and fails every call in flight on it.
    fn reset(&mut self, err: &RpcError) {
        self.socket = None;
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(err.clone()));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn only_tcp_host_port_addresses_are_accepted() {
        for ok in ["tcp://127.0.0.1:6001", "tcp://agent-1.example:6001", "tcp://[::1]:6001"] {
            assert!(validate_addr(ok).is_ok(), "{ok}");
        }
        for bad in
            ["127.0.0.1:6001", "tcp://127.0.0.1", "tcp://:6001", "tcp://h:0", "tcp://h:x", "ipc:///tmp/s", "tcp://*:1"]
        {
            let e = validate_addr(bad).unwrap_err();
            assert!(matches!(e, RpcError::Config(ref m) if m.contains("tcp://HOST:PORT")), "{bad}: {e}");
        }
    }

    #[test]
    fn a_missing_keypair_file_is_a_config_error() {
        let cfg = AgentRpcConfig { timeout_ms: 100, manager_keypair: Some("/nonexistent/manager.key_secret".into()) };
        assert!(matches!(AgentRpc::new(&cfg), Err(RpcError::Config(m)) if m.contains("manager_keypair")));
    }

    #[tokio::test]
    async fn a_curve_agent_without_a_manager_keypair_is_a_config_error() {
        let rpc = AgentRpc::new(&AgentRpcConfig { timeout_ms: 100, manager_keypair: None }).unwrap();
        let key = CurveKeyPair::generate().unwrap().public;
        let e = rpc.sync_kernel_registry("tcp://127.0.0.1:9", Some(&key), &[], "i-x").await.unwrap_err();
        assert!(matches!(e, RpcError::Config(m) if m.contains("manager_keypair")));
    }
}
