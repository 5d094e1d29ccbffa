//! The watcher directory: every agent's watcher address and the watcher token, mirrored from etcd.
//!
//! A background task loads `nodes/agents/` and `config/watcher/token`, then follows them with etcd watches from the
//! next revision, so steady-state lookups never leave the process. While the watch is broken (etcd restarting, a
//! network cut) the mirror cannot be vouched for: lookups go to etcd directly, bounded by the etcd timeout. If etcd
//! does not answer, an agent the mirror knew keeps its last address (so the status of known agents is still served
//! while etcd is away); an agent it never had fails with `etcd_unavailable`. The task re-reads everything and
//! re-watches once etcd is back.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use etcd_rs::{EventType, KeyRange, WatchCreateRequest, WatchInbound, WatchOp};
use serde::Serialize;

use super::{Etcd, EtcdError, keys};
use crate::{config::Secret, domain::AgentId};

/// Backend.AI's token when none is configured anywhere.
pub const INSECURE_TOKEN: &str = "insecure";

const RESYNC_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// How often [`WatcherDirectory::wait_synced`] looks again.
const SYNC_POLL: Duration = Duration::from_millis(20);
const RESYNC_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where an agent's watcher listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatcherAddress {
    pub host: String,
    pub port: u16,
}

impl WatcherAddress {
    /// `http://host:port` (Backend.AI always uses plain HTTP towards watchers).
    pub fn base_url(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for WatcherAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base_url())
    }
}

#[derive(Debug, Clone, Default)]
struct Node {
    ip: Option<String>,
    watcher_port: Option<String>,
}

#[derive(Default)]
struct State {
    synced: bool,
    /// The mirror was loaded at least once: while etcd is away its last contents stand in for etcd.
    loaded: bool,
    nodes: HashMap<String, Node>,
    etcd_token: Option<String>,
}

struct Inner {
    etcd: Etcd,
    default_port: u16,
    config_token: Option<Secret>,
    state: RwLock<State>,
    hits: AtomicU64,
    misses: AtomicU64,
    resyncs: AtomicU64,
    task: OnceLock<tokio::task::AbortHandle>,
    /// The etcd revision the mirror of `nodes/agents/` reflects (0 until loaded).
    revision: tokio::sync::watch::Sender<i64>,
    /// Bumped whenever the mirror changes (a load, any watched change, the token): what callers that keep a
    /// resolved address compare to know it still holds.
    generation: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DirectoryStats {
    pub synced: bool,
    pub agents: usize,
    pub hits: u64,
    pub misses: u64,
    pub resyncs: u64,
}

/// Cheap to clone; all clones share one mirror and one background task.
#[derive(Clone)]
pub struct WatcherDirectory {
    inner: Arc<Inner>,
}

impl WatcherDirectory {
    /// Starts mirroring. Must be called inside a Tokio runtime.
    pub fn start(etcd: Etcd, default_port: u16, config_token: Option<Secret>) -> Self {
        let inner = Arc::new(Inner {
            etcd,
            default_port,
            config_token,
            state: RwLock::new(State::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            task: OnceLock::new(),
            revision: tokio::sync::watch::Sender::new(0),
            generation: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        let handle = tokio::spawn(async move { follow(weak).await });
        let _ = inner.task.set(handle.abort_handle());
        Self { inner }
    }

    /// The mirror's generation while it is in sync: an address and token resolved at generation `g` still hold while
    /// this returns `Some(g)`. `None` while the mirror is not in sync (then nothing resolved may be kept).
    pub fn generation(&self) -> Option<u64> {
        let synced = self.inner.state.read().map(|s| s.synced).unwrap_or(false);
        synced.then(|| self.inner.generation.load(Ordering::Acquire))
    }

    /// Waits (at most `timeout`) until lookups see etcd as it was at `revision` or later: a writer's "read your
    /// writes". True at once when the mirror is not in sync (lookups then read etcd itself); false on timeout.
    pub async fn caught_up(&self, revision: i64, timeout: Duration) -> bool {
        if !self.is_synced() {
            return true;
        }
        let mut seen = self.inner.revision.subscribe();
        matches!(tokio::time::timeout(timeout, seen.wait_for(|r| *r >= revision)).await, Ok(Ok(_)))
    }

    /// Waits until the mirror is loaded and watched (start-up and tests); false on timeout.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.is_synced() {
                return true;
            }
            tokio::time::sleep(SYNC_POLL).await;
        }
        self.is_synced()
    }

    pub fn is_synced(&self) -> bool {
        self.inner.state.read().map(|s| s.synced).unwrap_or(false)
    }

    pub fn stats(&self) -> DirectoryStats {
        let (synced, agents) = self.inner.state.read().map(|s| (s.synced, s.nodes.len())).unwrap_or((false, 0));
        DirectoryStats {
            synced,
            agents,
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            resyncs: self.inner.resyncs.load(Ordering::Relaxed),
        }
    }

    pub fn etcd(&self) -> &Etcd {
        &self.inner.etcd
    }

    /// Every agent etcd knows, `(id, ip, watcher_port)` as the keys hold them, by id: from the mirror when it is in
    /// sync, else from etcd directly.
    pub async fn nodes(&self) -> Result<Vec<(String, Option<String>, Option<String>)>, EtcdError> {
        let mirrored = self.inner.state.read().ok().and_then(|s| {
            s.synced.then(|| {
                s.nodes.iter().map(|(id, n)| (id.clone(), n.ip.clone(), n.watcher_port.clone())).collect::<Vec<_>>()
            })
        });
        let mut nodes = match mirrored {
            Some(nodes) => nodes,
            None => {
                let (kvs, _) = self.inner.etcd.get_prefix(keys::AGENTS_PREFIX).await?;
                let mut by_id: HashMap<String, Node> = HashMap::new();
                for (key, value) in kvs {
                    if let Some((id, field)) = keys::parse_agent_key(&key) {
                        apply_field(by_id.entry(id.to_owned()).or_default(), field, Some(value));
                    }
                }
                by_id.into_iter().map(|(id, n)| (id, n.ip, n.watcher_port)).collect()
            }
        };
        nodes.sort();
        Ok(nodes)
    }

    /// `http://{nodes/agents/{id}/ip}:{nodes/agents/{id}/watcher_port or the default port}`.
    pub async fn watcher_address(&self, agent: &AgentId) -> Result<WatcherAddress, EtcdError> {
        let cached = self
            .inner
            .state
            .read()
            .ok()
            .and_then(|s| s.synced.then(|| s.nodes.get(agent.as_str()).cloned().unwrap_or_default()));
        let node = match cached {
            Some(node) => {
                self.inner.hits.fetch_add(1, Ordering::Relaxed);
                node
            }
            None => {
                self.inner.misses.fetch_add(1, Ordering::Relaxed);
                match self.inner.etcd.get_prefix(&format!("{}{}/", keys::AGENTS_PREFIX, agent)).await {
                    Ok((kvs, _)) => {
                        let mut node = Node::default();
                        for (key, value) in kvs {
                            if let Some((_, field)) = keys::parse_agent_key(&key) {
                                apply_field(&mut node, field, Some(value));
                            }
                        }
                        node
                    }
                    // etcd is away: the address the mirror last had (a known agent's status is still served).
                    Err(e @ EtcdError::Unavailable(_)) => match self.last_known(agent) {
                        Some(node) => node,
                        None => return Err(e),
                    },
                    Err(e) => return Err(e),
                }
            }
        };
        self.resolve(agent, &node)
    }

    /// The mirror's last entry for `agent`, if the mirror was ever loaded and had one.
    fn last_known(&self, agent: &AgentId) -> Option<Node> {
        let s = self.inner.state.read().ok()?;
        if !s.loaded {
            return None;
        }
        s.nodes.get(agent.as_str()).cloned()
    }

    fn resolve(&self, agent: &AgentId, node: &Node) -> Result<WatcherAddress, EtcdError> {
        let ip_key = self.inner.etcd.full_key(&keys::agent_ip(agent.as_str()));
        let host = match node.ip.as_deref().map(str::trim) {
            None => return Err(EtcdError::MissingKey { agent: agent.to_string(), key: ip_key }),
            Some("") => {
                return Err(EtcdError::BadValue {
                    agent: agent.to_string(),
                    key: ip_key,
                    value: String::new(),
                    expected: "a host address",
                });
            }
            Some(ip) => ip.to_owned(),
        };
        let port = match node.watcher_port.as_deref() {
            None => self.inner.default_port,
            Some(raw) => match raw.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    return Err(EtcdError::BadValue {
                        agent: agent.to_string(),
                        key: self.inner.etcd.full_key(&keys::agent_watcher_port(agent.as_str())),
                        value: raw.to_owned(),
                        expected: "a TCP port number (1-65535)",
                    });
                }
            },
        };
        Ok(WatcherAddress { host, port })
    }

    /// The token for `X-BackendAI-Watcher-Token`: etcd `config/watcher/token`, else the configured one, else
    /// `insecure`.
    pub async fn watcher_token(&self) -> Result<Secret, EtcdError> {
        let (cached, last) = match self.inner.state.read() {
            Ok(s) => (s.synced.then(|| s.etcd_token.clone()), s.loaded.then(|| s.etcd_token.clone())),
            Err(_) => (None, None),
        };
        let from_etcd = match cached {
            Some(token) => token,
            None => match (self.inner.etcd.get(keys::WATCHER_TOKEN).await, last) {
                (Ok(token), _) => token,
                // etcd is away: the token the mirror last had.
                (Err(EtcdError::Unavailable(_)), Some(token)) => token,
                (Err(e), _) => return Err(e),
            },
        };
        Ok(match from_etcd.filter(|t| !t.is_empty()) {
            Some(t) => Secret::new(t),
            None => self.inner.config_token.clone().unwrap_or_else(|| Secret::new(INSECURE_TOKEN)),
        })
    }
}

fn apply_field(node: &mut Node, field: &str, value: Option<String>) {
    match field {
        "ip" => node.ip = value,
        "watcher_port" => node.watcher_port = value,
        _ => {}
    }
}

/// The background task: load, watch, and on any break start over after a backoff.
async fn follow(weak: std::sync::Weak<Inner>) {
    let mut backoff = RESYNC_BACKOFF_MIN;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let etcd = inner.etcd.clone();
        drop(inner);
        match load_and_watch(&weak, &etcd).await {
            Ok(()) => backoff = RESYNC_BACKOFF_MIN,
            Err(e) => tracing::warn!(error = %e, "etcd watcher directory is not in sync; lookups go to etcd directly"),
        }
        if let Some(inner) = weak.upgrade()
            && let Ok(mut s) = inner.state.write()
        {
            s.synced = false;
            inner.generation.fetch_add(1, Ordering::AcqRel);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RESYNC_BACKOFF_MAX);
    }
}

async fn load_and_watch(weak: &std::sync::Weak<Inner>, etcd: &Etcd) -> Result<(), EtcdError> {
    let (kvs, revision) = etcd.get_prefix(keys::AGENTS_PREFIX).await?;
    let token = etcd.get(keys::WATCHER_TOKEN).await?;
    let mut nodes: HashMap<String, Node> = HashMap::new();
    for (key, value) in kvs {
        if let Some((id, field)) = keys::parse_agent_key(&key) {
            apply_field(nodes.entry(id.to_owned()).or_default(), field, Some(value));
        }
    }
    let watch = |key: KeyRange| {
        let req = WatchCreateRequest::create(key).start_revision(revision + 1);
        let client = etcd.client().clone();
        async move { client.watch(req).await }
    };
    let (mut agent_stream, _agent_cancel) =
        etcd.bounded("watch", watch(KeyRange::prefix(etcd.full_key(keys::AGENTS_PREFIX)))).await?;
    let (mut token_stream, _token_cancel) =
        etcd.bounded("watch", watch(KeyRange::key(etcd.full_key(keys::WATCHER_TOKEN)))).await?;
    {
        let Some(inner) = weak.upgrade() else { return Ok(()) };
        let mut s = inner.state.write().map_err(|_| EtcdError::Unavailable("directory lock poisoned".into()))?;
        *s = State { synced: true, loaded: true, nodes, etcd_token: token };
        inner.generation.fetch_add(1, Ordering::AcqRel);
        inner.revision.send_replace(revision);
        inner.resyncs.fetch_add(1, Ordering::Relaxed);
        tracing::info!(agents = s.nodes.len(), revision, "etcd watcher directory in sync");
    }
    loop {
        let inbound = tokio::select! {
            i = agent_stream.inbound() => i,
            i = token_stream.inbound() => i,
        };
        let resp = match inbound {
            WatchInbound::Ready(resp) => resp,
            WatchInbound::Interrupted(e) => return Err(EtcdError::Unavailable(format!("watch interrupted: {e}"))),
            WatchInbound::Closed => return Err(EtcdError::Unavailable("watch closed by etcd".into())),
        };
        let Some(inner) = weak.upgrade() else { return Ok(()) };
        let mut s = inner.state.write().map_err(|_| EtcdError::Unavailable("directory lock poisoned".into()))?;
        let seen = resp.events.iter().map(|e| e.kv.mod_revision).max().unwrap_or(0);
        inner.generation.fetch_add(1, Ordering::AcqRel);
        for event in resp.events {
            let full = String::from_utf8_lossy(&event.kv.key).into_owned();
            let Some(rel) = full.strip_prefix(etcd.prefix()) else { continue };
            let value = match event.event_type {
                EventType::Put => Some(String::from_utf8_lossy(&event.kv.value).into_owned()),
                EventType::Delete => None,
            };
            if rel == keys::WATCHER_TOKEN {
                s.etcd_token = value;
            } else if let Some((id, field)) = keys::parse_agent_key(rel) {
                let node = s.nodes.entry(id.to_owned()).or_default();
                apply_field(node, field, value);
                if node.ip.is_none() && node.watcher_port.is_none() {
                    s.nodes.remove(id);
                }
            }
        }
        drop(s);
        inner.revision.send_if_modified(|r| {
            let newer = seen > *r;
            if newer {
                *r = seen;
            }
            newer
        });
    }
}
