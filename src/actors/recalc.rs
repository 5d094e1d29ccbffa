//! `RecalculateUsage` (seed 6.x), handled by the registry actor. Runs never overlap, and concurrent requests
//! coalesce: a request that arrives while a run is in progress waits for the *next* run, which starts after it
//! arrived, so its answer always reflects every change committed before it was asked. All requests that arrive
//! during one run share that next run; N concurrent requests cause at most two runs.

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::Deps;
use super::RegistryActor;
use crate::{
    db::recalc::{self, RecalcOptions, RecalcOutcome, RecalcReport},
    error::Problem,
    redis_stat::{self, RedisTarget},
};

/// Recompute every agent's occupied slots and each access key's concurrency (seed: `RecalculateUsageAction`).
#[derive(Debug, Message)]
#[rtype(result = "Result<RecalculateUsageResult, Problem>")]
pub struct RecalculateUsage {
    pub requester: String,
}

/// `RecalculateUsageActionResult`: which run answered, and its report.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecalculateUsageResult {
    /// Sequence number of the run since the daemon started.
    pub run: u64,
    #[serde(flatten)]
    pub report: RecalcReport,
}

type Waiter = oneshot::Sender<Result<RecalculateUsageResult, Problem>>;

/// The coalescing state the registry keeps.
#[derive(Default)]
pub struct RecalcState {
    running: bool,
    runs: u64,
    current: Vec<Waiter>,
    next: Vec<Waiter>,
}

/// Backend.AI mode: writes the committed run's concurrency counts to the stat Redis. A failure does not fail the
/// run (the agents' slots are committed): the report says why the counts were not written, and the next run
/// writes them in full.
async fn write_concurrency(deps: &Deps, outcome: RecalcOutcome) -> RecalcReport {
    let RecalcOutcome { mut report, concurrency } = outcome;
    let Some(counts) = concurrency else { return report };
    let settings = &deps.settings;
    let written = async {
        let target = RedisTarget::resolve(settings.redis_url.as_ref(), deps.directory.etcd()).await?;
        redis_stat::write_concurrency(&target, &counts, settings.redis_timeout).await
    }
    .await;
    match written {
        Ok(w) => {
            deps.metrics.redis_writes.with_label_values(&["ok"]).inc();
            report.access_keys_updated = w.keys_written;
            report.access_keys_reset = w.keys_reset;
        }
        Err(e) => {
            deps.metrics.redis_writes.with_label_values(&["failed"]).inc();
            tracing::warn!(error = %e, "concurrency counts not written to Redis; the next recalculation writes them");
            report.concurrency_error = Some(format!("the concurrency counts were not written: {e}"));
        }
    }
    report
}

impl RegistryActor {
    fn start_recalc(&mut self, ctx: &mut Context<Self>) {
        let state = self.recalc_state();
        state.running = true;
        state.runs += 1;
        let run = state.runs;
        let deps = self.deps().clone();
        let fut = async move {
            let started = std::time::Instant::now();
            // Only the leader recalculates (high availability); its epoch is checked in the transaction.
            let fence = match deps.ha.fence() {
                Ok(f) => f,
                Err(p) => return Err(p),
            };
            let opts = RecalcOptions { fence, ..RecalcOptions::default() };
            let result = recalc::recalculate_usage(&deps.db, &opts).await;
            let result = match result {
                Ok(outcome) => Ok(write_concurrency(&deps, outcome).await),
                Err(e) => Err(Problem::from(e)),
            };
            let metrics = &deps.metrics;
            metrics.recalc_duration.with_label_values(&[] as &[&str]).observe(started.elapsed().as_secs_f64());
            metrics.recalc_runs.with_label_values(&[if result.is_ok() { "ok" } else { "failed" }]).inc();
            result
        };
        let fut = tracing::Instrument::instrument(fut, tracing::info_span!("recalculate_usage", run));
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let result = result.map(|report| RecalculateUsageResult { run, report });
            match &result {
                Ok(r) => tracing::info!(
                    run,
                    updated = r.report.agents_updated.len(),
                    reset = r.report.agents_reset.len(),
                    skipped = r.report.agents_skipped.len(),
                    attempts = r.report.attempts,
                    elapsed_ms = r.report.elapsed_ms,
                    "usage recalculated"
                ),
                Err(e) => tracing::warn!(run, error = %e, "usage recalculation failed"),
            }
            let state = act.recalc_state();
            for waiter in state.current.drain(..) {
                let _ = waiter.send(result.clone());
            }
            state.running = false;
            if !state.next.is_empty() {
                state.current = std::mem::take(&mut state.next);
                act.start_recalc(ctx);
            }
        }));
    }
}

impl Handler<RecalculateUsage> for RegistryActor {
    type Result = ResponseFuture<Result<RecalculateUsageResult, Problem>>;

    fn handle(&mut self, msg: RecalculateUsage, ctx: &mut Self::Context) -> Self::Result {
        tracing::info!(requester = %msg.requester, "usage recalculation requested");
        let (tx, rx) = oneshot::channel();
        let state = self.recalc_state();
        if state.running {
            state.next.push(tx);
        } else {
            state.current.push(tx);
            self.start_recalc(ctx);
        }
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(Problem::new(crate::error::ErrorCode::ShuttingDown, "the recalculation was dropped"))
            })
        })
    }
}
