//! The election in etcd (see the module documentation of [`crate::ha`]): a lease per replica, a transaction that
//! creates the leader key only if it is absent, a watch on the key, and the claim of the epoch in PostgreSQL.

use std::time::Duration;

use etcd_rs::{
    DeleteRequest, EventType, KeyRange, KeyValueOp, LeaseGrantRequest, LeaseKeepAlive, LeaseOp, LeaseRevokeRequest,
    PutRequest, RangeRequest, TxnCmp, TxnOpResponse, TxnRequest, WatchCreateRequest, WatchInbound, WatchOp,
    WatchStream,
};
use rand::Rng;
use tokio::time::Instant;

use super::{LEADER_KEY, LeaderInfo, Leadership, REPLICAS_PREFIX, ReplicaInfo};
use crate::{
    db::{Db, fence},
    etcd::Etcd,
};

/// Pauses between sessions after a failure (etcd away, a lost lease), doubling up to the lease TTL.
const RETRY_MIN: Duration = Duration::from_millis(200);

/// How long before the lease would expire at etcd a leader stops acting as one: a fifth of the TTL, at least
/// 500 ms (and at most half of it).
fn margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(500)).min(ttl / 2)
}

/// Starts the election task (high availability only).
pub fn spawn(leadership: Leadership, etcd: Etcd, db: Db) {
    if !leadership.enabled() {
        return;
    }
    actix_rt::spawn(run(leadership, etcd, db));
}

async fn run(l: Leadership, etcd: Etcd, db: Db) {
    let mut backoff = RETRY_MIN;
    loop {
        let ended = Session::start(&l, &etcd).await;
        let ended = match ended {
            Ok(mut session) => {
                let r = session.serve(&l, &db).await;
                session.end(&l).await;
                r
            }
            Err(e) => Err(e),
        };
        let was_leader = l.is_leader();
        l.no_leader_known();
        match ended {
            Ok(Stop::Resigned) => return,
            Ok(Stop::Again) => backoff = RETRY_MIN,
            Err(e) => {
                if was_leader {
                    tracing::warn!(error = %e, "stepped down as leader");
                } else {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "election session ended");
                }
            }
        }
        if l.resign_requested() {
            return;
        }
        let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(l.lease_ttl());
    }
}

/// How a session ended without an error.
enum Stop {
    /// The leader key went away: campaign again with a new session.
    Again,
    /// Shutting down.
    Resigned,
}

/// One lease and what is done with it.
struct Session {
    etcd: Etcd,
    lease: i64,
    ttl: Duration,
    keepalive: Option<LeaseKeepAlive>,
    /// Until when the lease is certainly ours (see [`margin`]).
    valid_until: Instant,
}

enum Campaign {
    Won { epoch: i64 },
    Lost { leader: LeaderInfo, watch_from: i64 },
}

impl Session {
    async fn start(l: &Leadership, etcd: &Etcd) -> Result<Self, String> {
        let ttl = l.lease_ttl();
        let asked = Instant::now();
        let grant = etcd
            .bounded("lease grant", etcd.client().grant_lease(LeaseGrantRequest::new(ttl)))
            .await
            .map_err(|e| e.to_string())?;
        let session = Self {
            etcd: etcd.clone(),
            lease: grant.id,
            ttl,
            keepalive: None,
            valid_until: asked + ttl.saturating_sub(margin(ttl)),
        };
        let me = l.me();
        let value = serde_json::to_string(me).map_err(|e| e.to_string())?;
        let key = etcd.full_key(&format!("{REPLICAS_PREFIX}{}", me.replica_id));
        etcd.bounded("register replica", etcd.client().put(PutRequest::new(key, value).lease(session.lease)))
            .await
            .map_err(|e| e.to_string())?;
        session.refresh_replicas(l).await;
        Ok(session)
    }

    /// Campaigns, then leads or follows until the session ends.
    async fn serve(&mut self, l: &Leadership, db: &Db) -> Result<Stop, String> {
        loop {
            match self.campaign(l).await? {
                Campaign::Won { epoch } => {
                    let me = l.me().clone();
                    match fence::claim(db, epoch, &me.replica_id, &me.url).await {
                        Ok(claim) => {
                            tracing::info!(epoch, interrupted = claim.interrupted, "this replica is the leader");
                            l.became_leader(epoch, self.valid_until);
                        }
                        Err(e) => {
                            self.give_up_key(epoch).await;
                            return Err(format!("won the election (epoch {epoch}) but could not claim it: {e}"));
                        }
                    }
                    return self.lead(l, epoch).await;
                }
                Campaign::Lost { leader, watch_from } => {
                    tracing::info!(leader = %leader.replica_id, epoch = leader.epoch, url = %leader.url, "following");
                    l.follows(leader);
                    match self.follow(l, watch_from).await? {
                        Stop::Again => continue,
                        Stop::Resigned => return Ok(Stop::Resigned),
                    }
                }
            }
        }
    }

    /// Creates the leader key with this session's lease unless it exists; else reads who leads.
    async fn campaign(&mut self, l: &Leadership) -> Result<Campaign, String> {
        let etcd = &self.etcd;
        let key = etcd.full_key(LEADER_KEY);
        let value = serde_json::to_string(l.me()).map_err(|e| e.to_string())?;
        loop {
            let txn = TxnRequest::new()
                .when_create_revision(KeyRange::key(key.clone()), TxnCmp::Equal, 0)
                .and_then(PutRequest::new(key.clone(), value.clone()).lease(self.lease))
                .or_else(RangeRequest::new(KeyRange::key(key.clone())));
            let resp = etcd.bounded("campaign", etcd.client().txn(txn)).await.map_err(|e| e.to_string())?;
            if resp.succeeded {
                return Ok(Campaign::Won { epoch: resp.header.revision() });
            }
            let kv = resp.responses.into_iter().find_map(|r| match r {
                TxnOpResponse::Range(range) => range.kvs.into_iter().next(),
                _ => None,
            });
            // Gone between the compare and the read: try again.
            let Some(kv) = kv else { continue };
            let leader = match serde_json::from_slice::<ReplicaInfo>(&kv.value) {
                Ok(r) => LeaderInfo { replica_id: r.replica_id, url: r.url, epoch: kv.create_revision },
                Err(e) => return Err(format!("the leader key holds something else than a replica ({e})")),
            };
            return Ok(Campaign::Lost { leader, watch_from: resp.header.revision() + 1 });
        }
    }

    /// Leads until the lease cannot be renewed in time, the leader key changes hands, or shutdown.
    async fn lead(&mut self, l: &Leadership, epoch: i64) -> Result<Stop, String> {
        let mut watch = self.watch_leader_key(epoch + 1).await.ok();
        let (mut tick, resigned) = self.pace(l);
        tokio::pin!(resigned);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match self.renew().await {
                        Ok(()) => l.renewed(self.valid_until),
                        Err(e) => tracing::warn!(error = %e, "could not renew the leader's lease"),
                    }
                    self.refresh_replicas(l).await;
                }
                () = tokio::time::sleep_until(self.valid_until) => {
                    return Err(format!(
                        "the lease could not be renewed for {} ms; stepped down before it could expire",
                        self.ttl.saturating_sub(margin(self.ttl)).as_millis()
                    ));
                }
                event = next_event(&mut watch) => match event {
                    Some(Ok(changed)) if changed => return Err("the leader key was deleted or replaced".into()),
                    Some(Ok(_)) => {}
                    // The watch broke (etcd away): renewals still decide.
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "the watch on the leader key broke");
                        watch = None;
                    }
                    None => {}
                },
                _ = &mut resigned => {
                    self.give_up_key(epoch).await;
                    return Ok(Stop::Resigned);
                }
            }
        }
    }

    /// Follows until the leader key is deleted (then campaigns again), the lease is lost or the watch breaks.
    async fn follow(&mut self, l: &Leadership, watch_from: i64) -> Result<Stop, String> {
        let mut watch = Some(self.watch_leader_key(watch_from).await.map_err(|e| e.to_string())?);
        let (mut tick, resigned) = self.pace(l);
        tokio::pin!(resigned);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.renew().await {
                        if Instant::now() >= self.valid_until {
                            return Err(format!("this replica's lease was lost: {e}"));
                        }
                        tracing::debug!(error = %e, "could not renew the lease");
                    }
                    self.refresh_replicas(l).await;
                }
                event = next_event(&mut watch) => match event {
                    Some(Ok(true)) => return Ok(Stop::Again),
                    Some(Ok(false)) => {}
                    Some(Err(e)) => return Err(format!("lost sight of the leader: {e}")),
                    None => return Err("lost sight of the leader".into()),
                },
                _ = &mut resigned => return Ok(Stop::Resigned),
            }
        }
    }

    /// The renewal tick (a third of the TTL) and what resolves when the replica shuts down.
    fn pace(&self, l: &Leadership) -> (tokio::time::Interval, impl Future<Output = ()> + use<>) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resign = l.resign_signal();
        (tick, async move {
            let _ = resign.wait_for(|r| *r).await;
        })
    }

    /// One keep-alive; on success the lease is certainly valid until the time it was sent plus the TTL, less the
    /// margin. A failed or late keep-alive drops the stream, so that a late answer is never taken for a new one.
    async fn renew(&mut self) -> Result<(), String> {
        let bound = self.etcd.timeout().min(self.ttl / 3);
        let sent = Instant::now();
        let ka = match self.keepalive.as_mut() {
            Some(ka) => ka,
            None => {
                let opened = tokio::time::timeout(bound, self.etcd.client().keep_alive_for(self.lease))
                    .await
                    .map_err(|_| "no answer while opening the keep-alive stream".to_owned())?
                    .map_err(|e| e.to_string())?;
                self.keepalive.insert(opened)
            }
        };
        let answer = tokio::time::timeout(bound, ka.keep_alive()).await;
        match answer {
            Ok(Ok(Some(resp))) if resp.ttl > 0 => {
                self.valid_until = sent + self.ttl.saturating_sub(margin(self.ttl));
                Ok(())
            }
            Ok(Ok(Some(_))) => {
                self.keepalive = None;
                Err("the lease has expired".into())
            }
            Ok(Ok(None)) => {
                self.keepalive = None;
                Err("the keep-alive stream closed".into())
            }
            Ok(Err(e)) => {
                self.keepalive = None;
                Err(e.to_string())
            }
            Err(_) => {
                self.keepalive = None;
                Err(format!("no answer within {} ms", bound.as_millis()))
            }
        }
    }

    async fn watch_leader_key(&self, from: i64) -> Result<WatchStream, crate::etcd::EtcdError> {
        let req = WatchCreateRequest::create(KeyRange::key(self.etcd.full_key(LEADER_KEY))).start_revision(from);
        let (stream, _cancel) = self.etcd.bounded("watch leader", self.etcd.client().watch(req)).await?;
        Ok(stream)
    }

    async fn refresh_replicas(&self, l: &Leadership) {
        if let Ok((kvs, _)) = self.etcd.get_prefix(REPLICAS_PREFIX).await {
            let mut replicas: Vec<ReplicaInfo> =
                kvs.iter().filter_map(|(_, v)| serde_json::from_str::<ReplicaInfo>(v).ok()).collect();
            replicas.sort_by(|a, b| a.replica_id.cmp(&b.replica_id));
            l.set_replicas(replicas);
        }
    }

    /// Deletes the leader key if it is still this epoch's, so the others need not wait for the lease to expire.
    async fn give_up_key(&self, epoch: i64) {
        let key = self.etcd.full_key(LEADER_KEY);
        let txn = TxnRequest::new()
            .when_create_revision(KeyRange::key(key.clone()), TxnCmp::Equal, usize::try_from(epoch).unwrap_or(0))
            .and_then(DeleteRequest::new(KeyRange::key(key)));
        if let Err(e) = self.etcd.bounded("resign", self.etcd.client().txn(txn)).await {
            tracing::debug!(error = %e, "could not delete the leader key; it goes with the lease");
        }
    }

    /// Revokes the lease (its keys go with it) if etcd answers; the lease expires by itself otherwise.
    async fn end(&mut self, l: &Leadership) {
        self.keepalive = None;
        let revoke = self.etcd.client().revoke(LeaseRevokeRequest::new(self.lease));
        if let Err(e) = self.etcd.bounded("lease revoke", revoke).await {
            tracing::debug!(error = %e, "could not revoke the lease; it expires by itself");
        }
        l.set_replicas(Vec::new());
    }
}

/// The next watch response: `Some(Ok(true))` if the leader key was deleted or replaced, `Some(Ok(false))` for
/// anything else, `Some(Err)` when the watch broke; pending forever without a watch.
async fn next_event(watch: &mut Option<WatchStream>) -> Option<Result<bool, String>> {
    let Some(stream) = watch.as_mut() else { return std::future::pending().await };
    match stream.inbound().await {
        WatchInbound::Ready(resp) => Some(Ok(resp.events.iter().any(|e| e.event_type == EventType::Delete))),
        WatchInbound::Interrupted(e) => Some(Err(e.to_string())),
        WatchInbound::Closed => Some(Err("closed by etcd".into())),
    }
}
