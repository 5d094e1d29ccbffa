//! Backend.AI's stat Redis (database 0), where Backend.AI 23.09 keeps per-access-key concurrency: Recalculate Usage
//! writes `keypair.concurrency_used.{access_key}` (compute sessions) and `keypair.sftp_concurrency_used.{access_key}`
//! (sessions with a SYSTEM kernel) there in Backend.AI mode, as decimal integer strings.
//!
//! The address comes from `redis.url`, or else from etcd `config/redis/` (`addr` as `host:port`, `password`), the
//! layout of 23.09's shared configuration. Every step is bounded by `redis.timeout_ms`; the password is never
//! logged or shown (a [`RedisTarget`] displays as its address only).

use std::{collections::BTreeMap, fmt, time::Duration};

use redis::{AsyncCommands, IntoConnectionInfo};

use crate::{config::Secret, etcd::Etcd};

/// Backend.AI's `REDIS_STATISTICS_DB`.
pub const STAT_DB: i64 = 0;
/// Key prefix of a key's compute-session concurrency.
pub const COMPUTE_PREFIX: &str = "keypair.concurrency_used.";
/// Key prefix of a key's SFTP (SYSTEM-kernel) session concurrency.
pub const SFTP_PREFIX: &str = "keypair.sftp_concurrency_used.";
/// etcd keys of 23.09's Redis configuration, relative to the namespace.
pub const ETCD_ADDR_KEY: &str = "config/redis/addr";
pub const ETCD_PASSWORD_KEY: &str = "config/redis/password";
pub const ETCD_SENTINEL_KEY: &str = "config/redis/sentinel";
/// How many keys one `SCAN` step asks for.
const SCAN_COUNT: usize = 1_000;

/// Why the counts could not be written. `Display` never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    #[error("no Redis is configured: set redis.url or etcd {ETCD_ADDR_KEY} ({0})")]
    NotConfigured(String),
    #[error("{0}")]
    BadConfig(String),
    #[error("Redis at {addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("Redis at {addr} refused the credentials: {reason}")]
    Auth { addr: String, reason: String },
    #[error("Redis at {addr} did not answer within {} ms", after.as_millis())]
    Timeout { addr: String, after: Duration },
    #[error("Redis at {addr}: {reason}")]
    Command { addr: String, reason: String },
}

/// Where the stat Redis is: its connection settings (database 0), shown only by address.
#[derive(Clone)]
pub struct RedisTarget {
    info: redis::ConnectionInfo,
    addr: String,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTarget").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

impl RedisTarget {
    /// From `redis.url`; the database in the URL, if any, is replaced by the stat database.
    pub fn from_url(url: &Secret) -> Result<Self, RedisError> {
        let info = url
            .expose()
            .into_connection_info()
            .map_err(|e| RedisError::BadConfig(format!("redis.url is not a Redis URL ({:?})", e.kind())))?;
        Ok(Self::with_stat_db(info))
    }

    /// From 23.09's shared configuration in etcd: `config/redis/addr` (`host:port`) and `config/redis/password`.
    /// A Sentinel setup (`config/redis/sentinel`) is not supported: set `redis.url` to the current master instead.
    pub async fn from_etcd(etcd: &Etcd) -> Result<Self, RedisError> {
        let unavailable = |e: crate::etcd::EtcdError| RedisError::NotConfigured(e.to_string());
        if etcd.get(ETCD_SENTINEL_KEY).await.map_err(unavailable)?.is_some_and(|s| !s.trim().is_empty()) {
            return Err(RedisError::BadConfig(format!(
                "etcd {ETCD_SENTINEL_KEY} names a Redis Sentinel setup, which is not supported; set redis.url"
            )));
        }
        let Some(addr) = etcd.get(ETCD_ADDR_KEY).await.map_err(unavailable)? else {
            return Err(RedisError::NotConfigured(format!("etcd has no {}", etcd.full_key(ETCD_ADDR_KEY))));
        };
        let (host, port) = addr
            .trim()
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_owned(), p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| RedisError::BadConfig(format!("etcd {ETCD_ADDR_KEY} holds {addr:?}, not host:port")))?;
        let info = redis::ConnectionAddr::Tcp(host, port)
            .into_connection_info()
            .map_err(|e| RedisError::BadConfig(format!("etcd {ETCD_ADDR_KEY}: {:?}", e.kind())))?;
        let mut target = Self::with_stat_db(info);
        if let Some(password) = etcd.get(ETCD_PASSWORD_KEY).await.map_err(unavailable)?.filter(|p| !p.is_empty()) {
            let settings = target.info.redis_settings().clone().set_password(password);
            target.info = target.info.set_redis_settings(settings);
        }
        Ok(target)
    }

    fn with_stat_db(info: redis::ConnectionInfo) -> Self {
        let addr = info.addr().to_string();
        let settings = info.redis_settings().clone().set_db(STAT_DB);
        Self { info: info.set_redis_settings(settings), addr }
    }

    /// Resolves where to write: `redis.url` when set, else etcd.
    pub async fn resolve(url: Option<&Secret>, etcd: &Etcd) -> Result<Self, RedisError> {
        match url {
            Some(url) => Self::from_url(url),
            None => Self::from_etcd(etcd).await,
        }
    }
}

/// Distinct occupying sessions per access key, as Recalculate Usage counted them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConcurrencyCounts {
    pub compute: BTreeMap<String, u64>,
    pub sftp: BTreeMap<String, u64>,
}

/// What one write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConcurrencyWritten {
    /// Keys set, to a count or to 0.
    pub keys_written: usize,
    /// Of those, existing keys set to 0 because their access key has no occupying session any more.
    pub keys_reset: usize,
}

/// Writes `counts` with 23.09's full-scan semantics: every existing `keypair.*concurrency_used.*` key is set to its
/// access key's count or to 0, and every counted access key gets its keys, in one `MSET`.
pub async fn write_concurrency(
    target: &RedisTarget,
    counts: &ConcurrencyCounts,
    timeout: Duration,
) -> Result<ConcurrencyWritten, RedisError> {
    let addr = target.addr.clone();
    let work = async {
        let client = redis::Client::open(target.info.clone()).map_err(|e| classify(&addr, e))?;
        let mut conn = client.get_multiplexed_async_connection().await.map_err(|e| classify(&addr, e))?;
        let mut updates: BTreeMap<String, u64> = BTreeMap::new();
        let mut reset = 0;
        for (prefix, map) in [(COMPUTE_PREFIX, &counts.compute), (SFTP_PREFIX, &counts.sftp)] {
            for key in scan(&mut conn, prefix, &addr).await? {
                let count = key.strip_prefix(prefix).and_then(|ak| map.get(ak)).copied().unwrap_or(0);
                reset += usize::from(count == 0);
                updates.insert(key, count);
            }
            for (access_key, count) in map {
                updates.insert(format!("{prefix}{access_key}"), *count);
            }
        }
        if !updates.is_empty() {
            let pairs: Vec<(String, String)> = updates.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
            let () = conn.mset(&pairs).await.map_err(|e| classify(&addr, e))?;
        }
        Ok(ConcurrencyWritten { keys_written: updates.len(), keys_reset: reset })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::Timeout { addr: target.addr.clone(), after: timeout }),
    }
}

/// Every key matching `prefix*` (SCAN, so a large keyspace is walked in steps rather than blocking Redis).
async fn scan(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    addr: &str,
) -> Result<Vec<String>, RedisError> {
    let pattern = format!("{prefix}*");
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await
            .map_err(|e| classify(addr, e))?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// A Redis failure in our words; Redis's own messages carry no password.
fn classify(addr: &str, e: redis::RedisError) -> RedisError {
    let addr = addr.to_owned();
    let reason = e.to_string();
    if e.is_connection_refusal() || e.is_io_error() || e.is_connection_dropped() {
        RedisError::Unreachable { addr, reason }
    } else if e.is_timeout() {
        RedisError::Timeout { addr, after: Duration::ZERO }
    } else if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || reason.contains("NOAUTH")
        || reason.contains("WRONGPASS")
    {
        RedisError::Auth { addr, reason }
    } else {
        RedisError::Command { addr, reason }
    }
}
