//! Recalculate Usage: rebuilds every agent's `occupied_slots` and every access key's concurrency counts from the
//! sessions and kernels tables.
//!
//! The whole recalculation is one `SERIALIZABLE` transaction and is set-based: one parallel-capable pass over
//! `kernels` builds the per-agent sums in a temporary table, then one `UPDATE` writes `agents` and one upsert writes
//! `keypair_resource_usage`. On a serialization failure (SQLSTATE 40001) the transaction is rolled back and run again
//! from scratch, so a retry never adds to a previous attempt's partial sums (Backend.AI PR #1295).
//!
//! Semantics (SPEC 6.1-6.3; where they differ from classic Backend.AI, the spec wins):
//! - a kernel counts when its *session* is in any status but PENDING, TERMINATED, CANCELLED (ERROR and TERMINATING
//!   count) and it has an agent;
//! - an agent's sum is the exact `numeric` sum per slot name, every slot name kept, `cpu` and `mem` seeded with `0`
//!   for agents with at least one counted kernel, written as decimal strings without exponent;
//! - ALIVE agents get their sums, or `{}` without counted kernels; RESTARTING agents get their sums, and are left
//!   as they are without counted kernels; LOST and TERMINATED agents are never written and are reported as skipped;
//! - per access key, the occupying sessions are counted (SYSTEM sessions separately) and upserted; keys with a row
//!   but no occupying session any more are set to 0;
//! - without any agent nothing is written at all.
//!
//! In Backend.AI mode the same SQL runs on Backend.AI's tables (its enum columns compare with the same literals),
//! and the concurrency counts follow 23.09 instead: distinct sessions per access key whose *session* status occupies
//! user resources (all but PENDING, TERMINATING, TERMINATED, CANCELLED), a session counting as SFTP when it has a
//! kernel whose `role` is SYSTEM and as compute when it has any other kernel. They are not written here but returned
//! ([`RecalcOutcome::concurrency`]) for Redis, which is written only after this transaction has committed.

use std::time::{Duration, Instant};

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Bool, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Db, DbError, query_error, schema::sql_types::Agentstatus};
use crate::{config::DatabaseMode, domain::AgentStatus, redis_stat::ConcurrencyCounts};

/// How [`recalculate_usage`] retries serialization failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecalcOptions {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: u32,
    /// Pause before the first retry; doubled for each further retry, with jitter.
    pub initial_backoff: Duration,
    /// Upper bound of one pause.
    pub max_backoff: Duration,
    /// High availability: the leader epoch the transaction must still hold (see [`super::fence`]).
    pub fence: super::fence::Fence,
}

impl Default for RecalcOptions {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
            fence: None,
        }
    }
}

/// An agent the recalculation left untouched, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkippedAgent {
    pub agent_id: String,
    pub status: AgentStatus,
    pub reason: String,
}

/// Where the per-access-key concurrency counts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyStore {
    /// Standalone: the `keypair_resource_usage` table, in the same transaction.
    Database,
    /// Backend.AI: Redis keys `keypair.concurrency_used.{ak}` and `keypair.sftp_concurrency_used.{ak}`, after the
    /// transaction commits.
    Redis,
}

/// What one recalculation did. Agent id lists are sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecalcReport {
    /// Agents that exist, whatever their status (0: nothing was recalculated or written).
    pub agents_total: usize,
    /// Agents whose `occupied_slots` now holds the sum of their counted kernels.
    pub agents_updated: Vec<String>,
    /// ALIVE agents without counted kernels, set to `{}`.
    pub agents_reset: Vec<String>,
    /// Agents left untouched: LOST or TERMINATED, and RESTARTING ones without counted kernels.
    pub agents_skipped: Vec<SkippedAgent>,
    /// Where the concurrency counts went.
    pub concurrency_store: ConcurrencyStore,
    /// Counts written: rows of `keypair_resource_usage` (upserted with counts, or set to 0), or Redis keys.
    pub access_keys_updated: usize,
    /// Of those, the ones set to 0 because their access key has no occupying session any more.
    pub access_keys_reset: usize,
    /// Why the counts were not written (Redis unreachable, refused the password, ...); the agents' slots were. The
    /// next run writes the counts again in full.
    pub concurrency_error: Option<String>,
    /// Transaction attempts, 1 unless serialization failures were retried.
    pub attempts: u32,
    /// Wall time of the whole call, retries and pauses included.
    pub elapsed_ms: u64,
}

/// Recalculates `agents.occupied_slots` and `keypair_resource_usage` in one `SERIALIZABLE` transaction, retried
/// from scratch on serialization failure up to `opts.max_attempts` times. Returns the last error when every attempt
/// failed or when an error other than a serialization failure occurs.
#[tracing::instrument(skip_all, fields(action = "recalculate_usage"))]
pub async fn recalculate_usage(db: &Db, opts: &RecalcOptions) -> Result<RecalcOutcome, DbError> {
    let started = Instant::now();
    let max_attempts = opts.max_attempts.max(1);
    let mode = db.mode();
    let mut conn = db.conn().await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = conn
            .build_transaction()
            .serializable()
            .run(async |conn: &mut AsyncPgConnection| {
                if let Some(epoch) = opts.fence {
                    super::fence::check_epoch(conn, epoch).await?;
                }
                recalc_once(conn, mode).await
            })
            .await;
        match result {
            Ok(mut outcome) => {
                let concurrency = outcome.concurrency.take();
                let report = outcome.into_report(attempt, started.elapsed());
                tracing::info!(
                    attempts = report.attempts,
                    elapsed_ms = report.elapsed_ms,
                    agents_updated = report.agents_updated.len(),
                    agents_reset = report.agents_reset.len(),
                    agents_skipped = report.agents_skipped.len(),
                    access_keys_updated = report.access_keys_updated,
                    "usage recalculated"
                );
                return Ok(RecalcOutcome { report, concurrency });
            }
            Err(e) if e.is_serialization_failure() && attempt < max_attempts => {
                let pause = backoff(opts, attempt);
                tracing::warn!(
                    attempt,
                    pause_ms = pause.as_millis() as u64,
                    "recalculation hit a serialization failure; retrying"
                );
                tokio::time::sleep(pause).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Exponential backoff with jitter: a uniform pause between half and all of `initial * 2^(attempt-1)`, capped.
fn backoff(opts: &RecalcOptions, attempt: u32) -> Duration {
    let exp = opts.initial_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(opts.max_backoff);
    let floor = ceiling / 2;
    if ceiling <= floor {
        return ceiling;
    }
    rand::thread_rng().gen_range(floor..=ceiling)
}

/// A committed recalculation: its report, and in Backend.AI mode the concurrency counts still to be written to
/// Redis (the report's `access_keys_*` are filled in once they are).
#[derive(Debug, Clone)]
pub struct RecalcOutcome {
    pub report: RecalcReport,
    pub concurrency: Option<ConcurrencyCounts>,
}

/// The result of one successful attempt, before timing is known.
struct Outcome {
    agents_total: usize,
    updated: Vec<String>,
    reset: Vec<String>,
    skipped: Vec<SkippedAgent>,
    store: ConcurrencyStore,
    keys_written: usize,
    keys_reset: usize,
    concurrency: Option<ConcurrencyCounts>,
}

impl Outcome {
    fn into_report(mut self, attempts: u32, elapsed: Duration) -> RecalcReport {
        self.updated.sort_unstable();
        self.reset.sort_unstable();
        self.skipped.sort_unstable_by(|a, b| a.agent_id.cmp(&b.agent_id));
        RecalcReport {
            agents_total: self.agents_total,
            agents_updated: self.updated,
            agents_reset: self.reset,
            agents_skipped: self.skipped,
            concurrency_store: self.store,
            access_keys_updated: self.keys_written,
            access_keys_reset: self.keys_reset,
            concurrency_error: None,
            attempts,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Settings for this transaction only. With the default 4 MB the 1M-kernel aggregate spills to disk, and JIT
/// compilation costs more than it saves on a query that runs for about a second.
const TUNE_SQL: &[&str] = &["SET LOCAL work_mem = '64MB'", "SET LOCAL jit = off"];

/// Per-agent sums of the counted kernels. A `CREATE TABLE AS` may use parallel workers, which PostgreSQL 15 never
/// gives to a data-modifying statement; that is why this is not a CTE of the UPDATE below.
///
/// The anti-join against the excluded sessions is equivalent to joining the occupying ones because
/// `kernels.session_id` is NOT NULL and references `sessions`; its hash table holds the (fewer) excluded sessions.
/// The LEFT JOIN keeps agents whose counted kernels all have empty slot maps: they still get `cpu`/`mem` = 0.
/// `slot_each` (ROWS 4) instead of `jsonb_each_text` (ROWS 100) keeps the planner away from index-ordered loops.
const BUILD_SUMS_SQL: &str = "\
CREATE TEMP TABLE recalc_occupied ON COMMIT DROP AS
SELECT occ.agent,
       jsonb_build_object('cpu', '0', 'mem', '0')
         || coalesce(jsonb_object_agg(occ.key, occ.total::text) FILTER (WHERE occ.total IS NOT NULL), '{}'::jsonb)
         AS slots
FROM (
    SELECT k.agent, e.key, sum(e.value::numeric) AS total
    FROM kernels k
    LEFT JOIN LATERAL slot_each(k.occupied_slots) e ON true
    WHERE k.agent IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM sessions s
                      WHERE s.id = k.session_id AND s.status IN ('PENDING', 'TERMINATED', 'CANCELLED'))
    GROUP BY 1, 2
) occ
GROUP BY occ.agent";

/// One UPDATE of `agents`: ALIVE agents get their sums or `{}`, RESTARTING agents only their sums.
const UPDATE_AGENTS_SQL: &str = "\
UPDATE agents a
SET occupied_slots = t.slots
FROM (
    SELECT a0.id, coalesce(p.slots, '{}'::jsonb) AS slots, p.agent IS NOT NULL AS summed
    FROM agents a0
    LEFT JOIN recalc_occupied p ON p.agent = a0.id
    WHERE a0.status = 'ALIVE' OR (a0.status = 'RESTARTING' AND p.agent IS NOT NULL)
) t
WHERE a.id = t.id
RETURNING a.id, t.summed";

const SKIPPED_AGENTS_SQL: &str = "\
SELECT a.id, a.status, (p.agent IS NOT NULL) AS summed
FROM agents a
LEFT JOIN recalc_occupied p ON p.agent = a.id
WHERE a.status IN ('LOST', 'TERMINATED') OR (a.status = 'RESTARTING' AND p.agent IS NULL)";

/// One statement for `keypair_resource_usage`: upsert the counts of keys with occupying sessions, zero the rest.
/// Both parts see the same snapshot, so the zeroing never touches a row the upsert writes.
const UPDATE_KEYPAIRS_SQL: &str = "\
WITH cnt AS (
    SELECT access_key,
           count(*) FILTER (WHERE session_type <> 'SYSTEM') AS compute_n,
           count(*) FILTER (WHERE session_type = 'SYSTEM') AS system_n
    FROM sessions
    WHERE status NOT IN ('PENDING', 'TERMINATED', 'CANCELLED') AND access_key IS NOT NULL
    GROUP BY access_key
), up AS (
    INSERT INTO keypair_resource_usage AS u (access_key, concurrency_used, sftp_concurrency_used, updated_at)
    SELECT access_key, compute_n, system_n, now() FROM cnt
    ON CONFLICT (access_key) DO UPDATE
       SET concurrency_used = EXCLUDED.concurrency_used,
           sftp_concurrency_used = EXCLUDED.sftp_concurrency_used,
           updated_at = EXCLUDED.updated_at
    RETURNING 1
), zero AS (
    UPDATE keypair_resource_usage u
    SET concurrency_used = 0, sftp_concurrency_used = 0, updated_at = now()
    WHERE NOT EXISTS (SELECT 1 FROM cnt WHERE cnt.access_key = u.access_key)
    RETURNING 1
)
SELECT (SELECT count(*) FROM up) AS upserted, (SELECT count(*) FROM zero) AS zeroed";

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct WrittenAgent {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Bool)]
    summed: bool,
}

#[derive(QueryableByName)]
struct UntouchedAgent {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Agentstatus)]
    status: AgentStatus,
    #[diesel(sql_type = Bool)]
    summed: bool,
}

/// Backend.AI mode: distinct occupying sessions per access key (23.09's meaning; see the module comment). A session
/// with both kinds of kernels counts in both. The kernels are first reduced to one row per session (which kinds of
/// kernel it has) by a parallel aggregate, then joined with the sessions: a `count(DISTINCT …)` over the kernel rows
/// joined with their sessions would sort a million rows, and the planner does not parallelize the per-session
/// aggregate on its own (see [`BACKEND_AI_CONCURRENCY_TUNE_SQL`]).
const BACKEND_AI_CONCURRENCY_SQL: &str = "\
WITH per_session AS MATERIALIZED (
    SELECT session_id,
           bool_or(role IS DISTINCT FROM 'SYSTEM') AS compute,
           bool_or(role = 'SYSTEM') AS sftp
    FROM kernels
    GROUP BY session_id
)
SELECT s.access_key::text AS access_key,
       count(*) FILTER (WHERE p.compute) AS compute_n,
       count(*) FILTER (WHERE p.sftp) AS sftp_n
FROM per_session p
JOIN sessions s ON s.id = p.session_id
WHERE s.status::text NOT IN ('PENDING', 'TERMINATING', 'TERMINATED', 'CANCELLED') AND s.access_key IS NOT NULL
GROUP BY s.access_key";

/// The per-session aggregate has about a third as many groups as rows, which the planner's default costs judge too
/// many to share among workers; on Backend.AI's wide `kernels` rows the shared scan is what pays.
const BACKEND_AI_CONCURRENCY_TUNE_SQL: &[&str] =
    &["SET LOCAL parallel_setup_cost = 0", "SET LOCAL parallel_tuple_cost = 0"];

#[derive(QueryableByName)]
struct SessionCounts {
    #[diesel(sql_type = Text)]
    access_key: String,
    #[diesel(sql_type = BigInt)]
    compute_n: i64,
    #[diesel(sql_type = BigInt)]
    sftp_n: i64,
}

#[derive(QueryableByName)]
struct KeypairCounts {
    #[diesel(sql_type = BigInt)]
    upserted: i64,
    #[diesel(sql_type = BigInt)]
    zeroed: i64,
}

/// One attempt, inside the transaction. Everything is recomputed here, so a retry starts from scratch.
async fn recalc_once(conn: &mut AsyncPgConnection, mode: DatabaseMode) -> Result<Outcome, DbError> {
    let store = match mode {
        DatabaseMode::Standalone => ConcurrencyStore::Database,
        DatabaseMode::BackendAi => ConcurrencyStore::Redis,
    };
    let agents_total = diesel::sql_query("SELECT count(*) AS n FROM agents")
        .get_result::<CountRow>(conn)
        .await
        .map_err(query_error)?
        .n;
    if agents_total == 0 {
        return Ok(Outcome {
            agents_total: 0,
            updated: vec![],
            reset: vec![],
            skipped: vec![],
            store,
            keys_written: 0,
            keys_reset: 0,
            concurrency: None,
        });
    }
    for sql in TUNE_SQL {
        diesel::sql_query(*sql).execute(conn).await.map_err(query_error)?;
    }
    diesel::sql_query(BUILD_SUMS_SQL).execute(conn).await.map_err(query_error)?;

    let written = diesel::sql_query(UPDATE_AGENTS_SQL).load::<WrittenAgent>(conn).await.map_err(query_error)?;
    let (mut updated, mut reset) = (Vec::with_capacity(written.len()), Vec::new());
    for row in written {
        if row.summed { updated.push(row.id) } else { reset.push(row.id) }
    }

    let skipped = diesel::sql_query(SKIPPED_AGENTS_SQL)
        .load::<UntouchedAgent>(conn)
        .await
        .map_err(query_error)?
        .into_iter()
        .map(|row| SkippedAgent { reason: skip_reason(row.status, row.summed), agent_id: row.id, status: row.status })
        .collect();

    let (keys_written, keys_reset, concurrency) = match mode {
        DatabaseMode::Standalone => {
            let keys =
                diesel::sql_query(UPDATE_KEYPAIRS_SQL).get_result::<KeypairCounts>(conn).await.map_err(query_error)?;
            let count = |n: i64| usize::try_from(n).unwrap_or(usize::MAX);
            (count(keys.upserted + keys.zeroed), count(keys.zeroed), None)
        }
        DatabaseMode::BackendAi => {
            for sql in BACKEND_AI_CONCURRENCY_TUNE_SQL {
                diesel::sql_query(*sql).execute(conn).await.map_err(query_error)?;
            }
            let rows =
                diesel::sql_query(BACKEND_AI_CONCURRENCY_SQL).load::<SessionCounts>(conn).await.map_err(query_error)?;
            let mut counts = ConcurrencyCounts::default();
            for row in rows {
                let n = |v: i64| u64::try_from(v).unwrap_or(0);
                if row.compute_n > 0 {
                    counts.compute.insert(row.access_key.clone(), n(row.compute_n));
                }
                if row.sftp_n > 0 {
                    counts.sftp.insert(row.access_key, n(row.sftp_n));
                }
            }
            (0, 0, Some(counts))
        }
    };

    Ok(Outcome {
        agents_total: usize::try_from(agents_total).unwrap_or(usize::MAX),
        updated,
        reset,
        skipped,
        store,
        keys_written,
        keys_reset,
        concurrency,
    })
}

fn skip_reason(status: AgentStatus, has_counted_kernels: bool) -> String {
    match status {
        AgentStatus::Restarting => {
            "agent is RESTARTING and has no counted kernels; occupied_slots left as is".to_owned()
        }
        _ if has_counted_kernels => {
            format!("agent is {status} (not responding); occupied_slots left as is although it has counted kernels")
        }
        _ => format!("agent is {status} (not responding); occupied_slots left as is"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let opts = RecalcOptions::default();
        for _ in 0..100 {
            let first = backoff(&opts, 1);
            assert!(first >= Duration::from_millis(10) && first <= Duration::from_millis(20), "{first:?}");
            let third = backoff(&opts, 3);
            assert!(third >= Duration::from_millis(40) && third <= Duration::from_millis(80), "{third:?}");
            assert!(backoff(&opts, 30) <= opts.max_backoff);
            assert!(backoff(&opts, 30) >= opts.max_backoff / 2);
        }
    }
}
