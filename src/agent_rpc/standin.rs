//! An agent stand-in: a Callosum ROUTER server that answers `sync_kernel_registry` with a Backend.AI agent's
//! semantics, for tests and for `agent-supervisor standin-agent`.
//!
//! Behaviour, as in `ai.backend.agent.server.AgentRPCServer`:
//! - PING is answered with PONG at once (even while a reply is being delayed).
//! - `sync_kernel_registry(pairs, agent_id=None)`: an `agent_id` other than ours raises `AgentIdNotFoundError`
//!   (a FAILURE reply); kernels in `pairs` that the registry does not hold are reported as already terminated;
//!   kernels in the registry but not in `pairs` are destroyed (removed). The reply is RESULT `None`.
//! - Replies may be delayed (`reply_delay`, [`StandinHandle::set_delay`]); other calls and PINGs are served meanwhile,
//!   like Callosum's `ExitOrderedAsyncScheduler`.
//! - With CURVE, the ROUTER is a CURVE server with the agent's secret key and ZAP domain `"local"`; when
//!   `allowed_clients` is set, a ZAP handler admits only those client keys (Backend.AI's `AgentAuthHandler`).
//!
//! One deliberate difference: a request the real agent cannot decode (unknown method, bad envelope) stops its whole
//! RPC loop; the stand-in answers it with an ERROR reply instead and keeps serving.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::{
    codec::{self, Header, MsgType},
    keys::{self, CurveKeyPair},
};

/// The ZAP domain Backend.AI's agent and manager use.
pub const ZAP_DOMAIN: &str = "local";
/// Longest sleep of the server loop, which bounds how long stopping takes.
const TICK: Duration = Duration::from_millis(50);

/// How to run a stand-in (clap-free, for the `standin-agent` subcommand and tests).
#[derive(Debug, Clone)]
pub struct StandinConfig {
    /// `HOST:PORT` to bind the ROUTER on; port 0 picks a free port (see [`StandinHandle::addr`]).
    pub listen: String,
    /// The id this agent answers to; calls naming another id fail with `AgentIdNotFoundError`.
    pub agent_id: String,
    /// The initial kernel registry: `(kernel_id, session_id)` pairs.
    pub kernels: Vec<(Uuid, Uuid)>,
    /// Delay before each reply is sent.
    pub reply_delay: Duration,
    pub curve: Option<StandinCurve>,
}

impl StandinConfig {
    pub fn new(listen: impl Into<String>, agent_id: impl Into<String>) -> Self {
        Self {
            listen: listen.into(),
            agent_id: agent_id.into(),
            kernels: Vec::new(),
            reply_delay: Duration::ZERO,
            curve: None,
        }
    }
}

/// CurveZMQ server settings.
#[derive(Debug, Clone)]
pub struct StandinCurve {
    /// The agent's key pair; clients must know its public half.
    pub keypair: CurveKeyPair,
    /// Client public keys (Z85) admitted through ZAP; `None` admits any client that knows the server key.
    pub allowed_clients: Option<Vec<String>>,
}

/// One `sync_kernel_registry` call as the stand-in received and handled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandinCall {
    /// The `agent_id` keyword argument, if given.
    pub agent_id: Option<String>,
    /// The `(kernel_id, session_id)` pairs exactly as received.
    pub kernels: Vec<(String, String)>,
    /// Requested kernels the registry did not hold (reported as already terminated).
    pub already_terminated: Vec<(Uuid, Uuid)>,
    /// Registry kernels missing from the request (destroyed).
    pub destroyed: Vec<(Uuid, Uuid)>,
    /// The exception name when the call failed.
    pub failure: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("agent stand-in: {0}")]
pub struct StandinError(String);

/// Entry points; see the module documentation.
pub struct StandinAgent;

impl StandinAgent {
    /// Binds and serves on a background thread until the handle is dropped.
    pub fn start(cfg: StandinConfig) -> Result<StandinHandle, StandinError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = Server::bind(&cfg, Some(stop.clone()))?;
        let addr = server.addr.clone();
        let state = server.state.clone();
        let public_key = cfg.curve.as_ref().map(|c| c.keypair.public.clone());
        let thread = std::thread::Builder::new()
            .name(format!("standin-agent {}", cfg.agent_id))
            .spawn(move || server.run())
            .map_err(|e| StandinError(format!("cannot start the server thread: {e}")))?;
        Ok(StandinHandle { addr, public_key, state, stop, thread: Some(thread) })
    }

    /// Binds and serves on the current thread; returns only on a socket error.
    pub fn run_forever(cfg: StandinConfig) -> Result<(), StandinError> {
        let mut server = Server::bind(&cfg, None)?;
        tracing::info!(addr = %server.addr, agent.id = %cfg.agent_id, kernels = cfg.kernels.len(), "agent stand-in listening");
        server.run()
    }
}

/// Same as [`StandinAgent::run_forever`].
pub fn run_forever(cfg: StandinConfig) -> Result<(), StandinError> {
    StandinAgent::run_forever(cfg)
}

/// A running stand-in; dropping it stops the server.
pub struct StandinHandle {
    addr: String,
    public_key: Option<String>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), StandinError>>>,
}

impl StandinHandle {
    /// `tcp://HOST:PORT`, the form stored in `agents.addr`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The agent's CURVE public key (Z85) when CURVE is on, as stored in `agents.public_key`.
    pub fn public_key(&self) -> Option<&str> {
        self.public_key.as_deref()
    }

    /// Every `sync_kernel_registry` call received so far, oldest first.
    pub fn calls(&self) -> Vec<StandinCall> {
        lock(&self.state).calls.clone()
    }

    /// The current kernel registry.
    pub fn registry(&self) -> HashSet<(Uuid, Uuid)> {
        lock(&self.state).registry.clone()
    }

    /// Delays every reply to calls received from now on.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state).delay = delay;
    }
}

impl Drop for StandinHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct State {
    registry: HashSet<(Uuid, Uuid)>,
    calls: Vec<StandinCall>,
    delay: Duration,
}

/// The state stays usable even if a test thread panicked while holding it.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Server {
    // Sockets are declared before the context so they close first.
    router: zmq::Socket,
    zap: Option<(zmq::Socket, Vec<String>)>,
    _ctx: zmq::Context,
    addr: String,
    agent_id: String,
    state: Arc<Mutex<State>>,
    stop: Option<Arc<AtomicBool>>,
    /// Replies waiting for their delay, in the order they become due or not.
    delayed: Vec<(Instant, Vec<Vec<u8>>)>,
}

impl Server {
    fn bind(cfg: &StandinConfig, stop: Option<Arc<AtomicBool>>) -> Result<Self, StandinError> {
        fn zerr(what: &str) -> impl Fn(zmq::Error) -> StandinError + '_ {
            move |e| StandinError(format!("{what}: {e}"))
        }
        let (host, port) = cfg
            .listen
            .rsplit_once(':')
            .ok_or_else(|| StandinError(format!("listen address {:?} is not HOST:PORT", cfg.listen)))?;
        let port = if port == "0" { "*" } else { port };
        let ctx = zmq::Context::new();
        let router = ctx.socket(zmq::ROUTER).map_err(zerr("cannot create the ROUTER socket"))?;
        router.set_linger(100).map_err(zerr("LINGER"))?;
        let mut zap = None;
        if let Some(curve) = &cfg.curve {
            if !keys::curve_available() {
                return Err(StandinError(
                    "CURVE requested but the linked libzmq was built without CURVE support".into(),
                ));
            }
            if let Some(allowed) = &curve.allowed_clients {
                // libzmq consults the ZAP handler of the socket's own context, bound before the first handshake.
                let rep = ctx.socket(zmq::REP).map_err(zerr("cannot create the ZAP socket"))?;
                rep.set_linger(0).map_err(zerr("LINGER"))?;
                rep.bind("inproc://zeromq.zap.01").map_err(zerr("cannot bind the ZAP handler"))?;
                zap = Some((rep, allowed.clone()));
            }
            router.set_zap_domain(ZAP_DOMAIN).map_err(zerr("ZAP_DOMAIN"))?;
            router.set_curve_server(true).map_err(zerr("CURVE_SERVER"))?;
            router.set_curve_secretkey(curve.keypair.secret.expose().as_bytes()).map_err(zerr("CURVE_SECRETKEY"))?;
        }
        router.bind(&format!("tcp://{host}:{port}")).map_err(zerr(&format!("cannot bind tcp://{}", cfg.listen)))?;
        let addr = match router.get_last_endpoint() {
            Ok(Ok(endpoint)) => endpoint,
            _ => return Err(StandinError("cannot read the bound address".into())),
        };
        let state =
            State { registry: cfg.kernels.iter().copied().collect(), calls: Vec::new(), delay: cfg.reply_delay };
        Ok(Self {
            router,
            zap,
            _ctx: ctx,
            addr,
            agent_id: cfg.agent_id.clone(),
            state: Arc::new(Mutex::new(state)),
            stop,
            delayed: Vec::new(),
        })
    }

    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
    }

    fn run(&mut self) -> Result<(), StandinError> {
        let zerr = |e: zmq::Error| StandinError(format!("socket error: {e}"));
        while !self.stopping() {
            let now = Instant::now();
            let next_due = self.delayed.iter().map(|(due, _)| *due).min();
            let wait = next_due.map_or(TICK, |due| due.saturating_duration_since(now).min(TICK));
            let (router_ready, zap_ready) = {
                let mut items = vec![self.router.as_poll_item(zmq::POLLIN)];
                if let Some((zap, _)) = &self.zap {
                    items.push(zap.as_poll_item(zmq::POLLIN));
                }
                zmq::poll(&mut items, i64::try_from(wait.as_millis()).unwrap_or(50).max(1)).map_err(zerr)?;
                (items[0].is_readable(), items.get(1).is_some_and(|i| i.is_readable()))
            };
            if zap_ready {
                self.answer_zap().map_err(zerr)?;
            }
            if router_ready {
                loop {
                    match self.router.recv_multipart(zmq::DONTWAIT) {
                        Ok(frames) => self.handle(frames),
                        Err(zmq::Error::EAGAIN) => break,
                        Err(e) => return Err(zerr(e)),
                    }
                }
            }
            self.send_due();
        }
        Ok(())
    }

    /// ZAP 1.0 (RFC 27): admit CURVE clients of domain "local" whose key is allowed.
    fn answer_zap(&self) -> Result<(), zmq::Error> {
        let Some((zap, allowed)) = &self.zap else { return Ok(()) };
        let msg = zap.recv_multipart(zmq::DONTWAIT)?;
        let request_id = msg.get(1).cloned().unwrap_or_default();
        let (code, text, user): (&[u8], &[u8], &[u8]) = match msg.as_slice() {
            [_, _, domain, _, _, mechanism, key] if mechanism.as_slice() == b"CURVE" => {
                let key = zmq::z85_encode(key).unwrap_or_default();
                if domain.as_slice() == ZAP_DOMAIN.as_bytes() && allowed.contains(&key) {
                    (b"200", b"OK", b"manager")
                } else {
                    tracing::info!(client_key = %key, "agent stand-in rejected a CURVE client");
                    (b"400", b"Access denied", b"")
                }
            }
            _ => (b"400", b"Unsupported authentication mechanism", b""),
        };
        zap.send_multipart([b"1.0".as_slice(), &request_id, code, text, user, b""], 0)
    }

    fn handle(&mut self, frames: Vec<Vec<u8>>) {
        let [peer, kind, header, body] = frames.as_slice() else { return };
        if kind.as_slice() == codec::PING {
            let _ = self.router.send_multipart([peer.as_slice(), codec::PONG, header, body], zmq::DONTWAIT);
            return;
        }
        if kind.as_slice() != codec::UPPER {
            return;
        }
        let Ok(header) = codec::decode_header(header) else { return };
        if header.msgtype != MsgType::Function {
            // CANCEL is a no-op on a real agent too (callosum.md §2.4).
            return;
        }
        let reply = match self.dispatch(header.clone(), body) {
            Ok(value) => codec::encode_result(&header, &value),
            Err((msgtype, name, repr)) => codec::encode_error(msgtype, &header, &name, &repr, ""),
        };
        let Ok([h, b]) = reply else { return };
        let frames = vec![peer.clone(), codec::UPPER.to_vec(), h, b];
        let delay = lock(&self.state).delay;
        self.delayed.push((Instant::now() + delay, frames));
        self.send_due();
    }

    fn send_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.delayed).into_iter().partition(|(t, _)| *t <= now);
        self.delayed = later;
        for (_, frames) in due {
            // Like Callosum's ROUTER (no ROUTER_MANDATORY), a reply to a vanished client is dropped.
            let _ = self.router.send_multipart(frames, zmq::DONTWAIT);
        }
    }

    /// Runs one call: the return value, or `(FAILURE|ERROR, exception name, repr)`.
    fn dispatch(&mut self, header: Header, body: &[u8]) -> Result<rmpv::Value, (MsgType, String, String)> {
        if header.meth != codec::SYNC_KERNEL_REGISTRY {
            let name = format!("{:?}", header.meth);
            return Err((MsgType::Error, "KeyError".into(), format!("KeyError({name})")));
        }
        let request = codec::decode_request(header, body)
            .map_err(|e| (MsgType::Error, "ValueError".into(), format!("ValueError({:?})", e.0)))?;
        let agent_id =
            request.kwargs.iter().find(|(k, _)| k == "agent_id").and_then(|(_, v)| v.as_str()).map(str::to_owned);
        let pairs = request.args.first().and_then(raw_pairs);
        let mut call = StandinCall {
            agent_id: agent_id.clone(),
            kernels: pairs.clone().unwrap_or_default(),
            already_terminated: Vec::new(),
            destroyed: Vec::new(),
            failure: None,
        };
        let result = self.sync_kernel_registry(agent_id.as_deref(), pairs, &mut call);
        if let Err((_, name, _)) = &result {
            call.failure = Some(name.clone());
        }
        tracing::info!(
            agent.id = ?call.agent_id,
            requested = call.kernels.len(),
            already_terminated = call.already_terminated.len(),
            destroyed = call.destroyed.len(),
            failure = ?call.failure,
            "agent stand-in handled sync_kernel_registry"
        );
        lock(&self.state).calls.push(call);
        result
    }

    fn sync_kernel_registry(
        &self,
        agent_id: Option<&str>,
        pairs: Option<Vec<(String, String)>>,
        call: &mut StandinCall,
    ) -> Result<rmpv::Value, (MsgType, String, String)> {
        let failure = |name: &str, msg: String| (MsgType::Failure, name.to_owned(), format!("{name}({msg:?})"));
        if let Some(id) = agent_id
            && id != self.agent_id
        {
            return Err(failure("AgentIdNotFoundError", format!("Agent {id} not found")));
        }
        let pairs =
            pairs.ok_or_else(|| failure("TypeError", "expected a list of (kernel_id, session_id) pairs".into()))?;
        let mut requested = Vec::with_capacity(pairs.len());
        for (k, s) in &pairs {
            match (Uuid::parse_str(k), Uuid::parse_str(s)) {
                (Ok(k), Ok(s)) => requested.push((k, s)),
                _ => return Err(failure("ValueError", "badly formed hexadecimal UUID string".into())),
            }
        }
        let mut state = lock(&self.state);
        let known: HashSet<Uuid> = state.registry.iter().map(|(k, _)| *k).collect();
        let listed: HashSet<Uuid> = requested.iter().map(|(k, _)| *k).collect();
        call.already_terminated = requested.iter().filter(|(k, _)| !known.contains(k)).copied().collect();
        call.destroyed = state.registry.iter().filter(|(k, _)| !listed.contains(k)).copied().collect();
        call.destroyed.sort();
        for pair in &call.destroyed {
            state.registry.remove(pair);
        }
        Ok(rmpv::Value::Nil)
    }
}

/// `[[kernel_id, session_id], ...]` as strings, or `None` if the argument has another shape.
fn raw_pairs(arg: &rmpv::Value) -> Option<Vec<(String, String)>> {
    arg.as_array()?
        .iter()
        .map(|pair| match pair.as_array()?.as_slice() {
            [k, s] => Some((k.as_str()?.to_owned(), s.as_str()?.to_owned())),
            _ => None,
        })
        .collect()
}
