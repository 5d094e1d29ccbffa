//! High availability (SPEC §11): several replicas on one PostgreSQL and etcd, one of them the leader.
//!
//! * **Election** ([`election`]): each replica holds an etcd lease (`ha.lease_ttl_s`) kept alive at a third of its
//!   TTL, and registers itself under `agent-supervisor/replicas/{id}` with it. A transaction creates the leader key
//!   `agent-supervisor/leader` (value: the replica's id and URL) only if it is absent; the key's create revision is
//!   the **epoch**. The others watch the key and campaign when it goes.
//! * **Fencing** ([`crate::db::fence`]): the leader stores its epoch in PostgreSQL and every write that starts or
//!   finishes a command, a sync or a recalculation checks it in its transaction. A leader also tracks, on its own
//!   monotonic clock, how long its lease is certainly valid (from the moment it *sent* the last successful
//!   keep-alive, minus a margin) and stops acting as leader when that passes: [`Leadership::fence`] refuses from
//!   then on, before etcd can have expired the lease and elected someone else. A paused process finds the time
//!   passed when it resumes.
//! * **Forwarding** ([`forward`]): a follower sends what only the leader may do to the leader, unchanged.
//!
//! Without `ha.enabled` the daemon is alone: [`Leadership::fence`] is always `Ok(None)` and nothing is forwarded.

pub mod election;
pub mod forward;

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{
    config::Config,
    db::fence::Fence,
    error::{ErrorCode, Problem},
    telemetry::metrics::Metrics,
};

/// The leader key, relative to the namespace (`/sorna/{ns}/agent-supervisor/leader`).
pub const LEADER_KEY: &str = "agent-supervisor/leader";
/// Where each replica registers itself with its lease.
pub const REPLICAS_PREFIX: &str = "agent-supervisor/replicas/";

/// A replica as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaInfo {
    pub replica_id: String,
    /// Where it serves the API (`ha.advertise_url`).
    pub url: String,
}

/// The leader: who, where, and its epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaderInfo {
    pub replica_id: String,
    pub url: String,
    pub epoch: i64,
}

/// What this replica is right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// High availability is off: this daemon does everything.
    Standalone,
    Leader,
    Follower,
    /// No leader is known: an election is under way, or etcd cannot be reached.
    Candidate,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Leader => "leader",
            Self::Follower => "follower",
            Self::Candidate => "candidate",
        }
    }
}

/// `GET /v1/cluster` and the `ha` member of `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterView {
    pub enabled: bool,
    pub replica_id: String,
    pub url: String,
    pub role: Role,
    /// The current leader's epoch, if a leader is known.
    pub epoch: Option<i64>,
    pub leader: Option<LeaderInfo>,
    /// The replicas registered in etcd (with live leases), as last seen.
    pub replicas: Vec<ReplicaInfo>,
    pub lease_ttl_s: u64,
}

#[derive(Debug, Clone)]
struct State {
    role: Role,
    leader: Option<LeaderInfo>,
    /// While leading: until when the lease is certainly still ours.
    valid_until: Option<Instant>,
    replicas: Vec<ReplicaInfo>,
}

struct Inner {
    enabled: bool,
    me: ReplicaInfo,
    lease_ttl: Duration,
    state: RwLock<State>,
    metrics: Option<Metrics>,
    /// Set on shutdown: a leader deletes its key and revokes its lease, so another takes over at once.
    resign: tokio::sync::watch::Sender<bool>,
}

/// Where a request that only the leader may serve goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Serve it here (this replica leads, or high availability is off).
    Local,
    /// Forward it to the leader.
    Leader(LeaderInfo),
    /// Nobody may serve it now: `503 no_leader`.
    NoLeader,
}

/// This replica's view of the election; cheap to clone (shared).
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

impl Leadership {
    /// High availability off: always allowed, never forwarded.
    pub fn standalone() -> Self {
        Self::new(false, ReplicaInfo { replica_id: "standalone".into(), url: String::new() }, Duration::ZERO, None)
    }

    /// From the configuration (`ha.*`); a replica starts as a candidate.
    pub fn from_config(config: &Config, metrics: Option<Metrics>) -> Self {
        let me = ReplicaInfo {
            replica_id: config.ha.resolved_replica_id(&config.api.listen),
            url: config.ha.resolved_advertise_url(&config.api.listen),
        };
        Self::new(config.ha.enabled, me, Duration::from_secs(config.ha.lease_ttl_s), metrics)
    }

    fn new(enabled: bool, me: ReplicaInfo, lease_ttl: Duration, metrics: Option<Metrics>) -> Self {
        let role = if enabled { Role::Candidate } else { Role::Standalone };
        let state = State { role, leader: None, valid_until: None, replicas: Vec::new() };
        let resign = tokio::sync::watch::Sender::new(false);
        Self { inner: Arc::new(Inner { enabled, me, lease_ttl, state: RwLock::new(state), metrics, resign }) }
    }

    /// On shutdown: gives up leadership (the leader key and this replica's lease go at once), waiting at most
    /// `within` for the election task to do it.
    pub async fn resign(&self, within: Duration) {
        if !self.inner.enabled {
            return;
        }
        self.inner.resign.send_replace(true);
        let deadline = Instant::now() + within;
        while self.read().role != Role::Candidate && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn resign_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.resign.subscribe()
    }

    pub(crate) fn resign_requested(&self) -> bool {
        *self.inner.resign.borrow()
    }

    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    pub fn me(&self) -> &ReplicaInfo {
        &self.inner.me
    }

    pub fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    fn read(&self) -> State {
        match self.inner.state.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn write(&self, f: impl FnOnce(&mut State)) {
        let mut guard = match self.inner.state.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let before = (guard.role, guard.leader.as_ref().map(|l| l.epoch));
        f(&mut guard);
        let after = (guard.role, guard.leader.as_ref().map(|l| l.epoch));
        if before != after
            && let Some(m) = &self.inner.metrics
        {
            m.is_leader.set(i64::from(guard.role == Role::Leader));
            if before.1 != after.1 && after.1.is_some() {
                m.leader_changes.inc();
            }
        }
    }

    /// The epoch this replica may write under now: `Ok(None)` without high availability, `Ok(Some(epoch))` while
    /// it leads and its lease is certainly valid, else `503 no_leader`.
    pub fn fence(&self) -> Result<Fence, Problem> {
        if !self.inner.enabled {
            return Ok(None);
        }
        let s = self.read();
        match (s.role, &s.leader, s.valid_until) {
            (Role::Leader, Some(l), Some(until)) if Instant::now() < until => Ok(Some(l.epoch)),
            (Role::Leader, ..) => Err(self.no_leader("this replica's lease is about to expire; it is stepping down")),
            _ => Err(self.no_leader("this replica is not the leader")),
        }
    }

    /// Where a request only the leader may serve goes.
    pub fn route(&self) -> Route {
        if !self.inner.enabled {
            return Route::Local;
        }
        let s = self.read();
        match (s.role, s.leader) {
            (Role::Leader, Some(_)) if s.valid_until.is_some_and(|u| Instant::now() < u) => Route::Local,
            (Role::Follower, Some(l)) if l.replica_id != self.inner.me.replica_id => Route::Leader(l),
            _ => Route::NoLeader,
        }
    }

    /// Whether this replica leads now (and may write).
    pub fn is_leader(&self) -> bool {
        matches!(self.fence(), Ok(Some(_)))
    }

    /// `503 no_leader` with `Retry-After` (the lease TTL: by then an election has been held).
    pub fn no_leader(&self, detail: impl Into<String>) -> Problem {
        Problem::new(ErrorCode::NoLeader, detail).with("retry_after_s", self.inner.lease_ttl.as_secs().max(1))
    }

    pub fn view(&self) -> ClusterView {
        let s = self.read();
        let role = match s.role {
            Role::Leader if s.valid_until.is_none_or(|u| Instant::now() >= u) => Role::Candidate,
            r => r,
        };
        ClusterView {
            enabled: self.inner.enabled,
            replica_id: self.inner.me.replica_id.clone(),
            url: self.inner.me.url.clone(),
            role,
            epoch: s.leader.as_ref().map(|l| l.epoch),
            leader: s.leader,
            replicas: s.replicas,
            lease_ttl_s: self.inner.lease_ttl.as_secs(),
        }
    }

    // State changes, made by the election task.

    pub(crate) fn became_leader(&self, epoch: i64, valid_until: Instant) {
        let me = self.inner.me.clone();
        self.write(|s| {
            s.role = Role::Leader;
            s.leader = Some(LeaderInfo { replica_id: me.replica_id, url: me.url, epoch });
            s.valid_until = Some(valid_until);
        });
    }

    pub(crate) fn renewed(&self, valid_until: Instant) {
        self.write(|s| {
            if s.role == Role::Leader {
                s.valid_until = Some(valid_until);
            }
        });
    }

    pub(crate) fn follows(&self, leader: LeaderInfo) {
        self.write(|s| {
            s.role = Role::Follower;
            s.leader = Some(leader);
            s.valid_until = None;
        });
    }

    pub(crate) fn no_leader_known(&self) {
        self.write(|s| {
            s.role = Role::Candidate;
            s.leader = None;
            s.valid_until = None;
        });
    }

    pub(crate) fn set_replicas(&self, replicas: Vec<ReplicaInfo>) {
        self.write(|s| s.replicas = replicas);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn replica(id: &str) -> Leadership {
        Leadership::new(
            true,
            ReplicaInfo { replica_id: id.into(), url: format!("http://{id}") },
            Duration::from_secs(5),
            None,
        )
    }

    #[test]
    fn only_a_leader_within_its_lease_may_write() {
        assert_eq!(Leadership::standalone().fence(), Ok(None));
        assert_eq!(Leadership::standalone().route(), Route::Local);
        let l = replica("a");
        assert_eq!(l.fence().unwrap_err().code, ErrorCode::NoLeader);
        assert_eq!(l.route(), Route::NoLeader);
        l.became_leader(42, Instant::now() + Duration::from_secs(3));
        assert_eq!((l.fence(), l.route()), (Ok(Some(42)), Route::Local));
        // The lease's local validity passed (a paused process wakes up): no more writes, no more serving.
        l.renewed(Instant::now() - Duration::from_millis(1));
        let refused = l.fence().unwrap_err();
        assert_eq!((refused.code, refused.extra["retry_after_s"].as_u64()), (ErrorCode::NoLeader, Some(5)));
        assert_eq!((l.route(), l.view().role), (Route::NoLeader, Role::Candidate));
        let leader = LeaderInfo { replica_id: "b".into(), url: "http://b".into(), epoch: 50 };
        l.follows(leader.clone());
        assert_eq!((l.route(), l.view().epoch), (Route::Leader(leader), Some(50)));
        assert!(l.fence().is_err());
    }
}
