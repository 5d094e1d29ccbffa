//! Prometheus metrics: HTTP requests, watcher calls, command queues, recalculation, and (read at scrape time)
//! database pool and etcd cache figures.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0];

/// Every metric the daemon exports. Cheap to clone (the collectors are shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub watcher_calls: IntCounterVec,
    pub watcher_duration: HistogramVec,
    pub commands_queued: IntGauge,
    pub commands_in_flight: IntGauge,
    pub recalc_runs: IntCounterVec,
    pub recalc_duration: HistogramVec,
    pub db_pool: IntGaugeVec,
    pub etcd_cache: IntGaugeVec,
    pub agents: IntGauge,
    pub redis_writes: IntCounterVec,
    pub liveness_transitions: IntCounterVec,
    /// `watcher_calls_total{kind="status",outcome="ok"}` and `watcher_call_duration_seconds{kind="status"}`.
    status_ok: prometheus::IntCounter,
    status_duration: prometheus::Histogram,
    /// 1 while this replica leads (high availability), else 0.
    pub is_leader: IntGauge,
    pub leader_changes: prometheus::IntCounter,
    pub forwarded_requests: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("agent_supervisor".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route, method and status"),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency by route and method")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )?;
        let watcher_calls = IntCounterVec::new(
            Opts::new("watcher_calls_total", "Calls to watchers by kind and outcome (ok or an error code)"),
            &["kind", "outcome"],
        )?;
        let watcher_duration = HistogramVec::new(
            HistogramOpts::new("watcher_call_duration_seconds", "Watcher call latency by kind")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["kind"],
        )?;
        let commands_queued = IntGauge::new("commands_queued", "Commands waiting in agent queues")?;
        let commands_in_flight = IntGauge::new("commands_in_flight", "Commands being executed")?;
        let recalc_runs =
            IntCounterVec::new(Opts::new("recalculation_runs_total", "Usage recalculations by outcome"), &["outcome"])?;
        let recalc_duration = HistogramVec::new(
            HistogramOpts::new("recalculation_duration_seconds", "Usage recalculation wall time")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &[],
        )?;
        let db_pool = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Database pool connections (size, available)"),
            &["state"],
        )?;
        let etcd_cache = IntGaugeVec::new(
            Opts::new("etcd_cache", "etcd watcher directory: hits, misses, agents, synced (0/1)"),
            &["kind"],
        )?;
        let agents = IntGauge::new("agents", "Agent actors running")?;
        let redis_writes = IntCounterVec::new(
            Opts::new(
                "redis_concurrency_writes_total",
                "Concurrency counts written to Redis (Backend.AI mode), by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(watcher_calls.clone()))?;
        registry.register(Box::new(watcher_duration.clone()))?;
        registry.register(Box::new(commands_queued.clone()))?;
        registry.register(Box::new(commands_in_flight.clone()))?;
        registry.register(Box::new(recalc_runs.clone()))?;
        registry.register(Box::new(recalc_duration.clone()))?;
        registry.register(Box::new(db_pool.clone()))?;
        registry.register(Box::new(etcd_cache.clone()))?;
        registry.register(Box::new(agents.clone()))?;
        registry.register(Box::new(redis_writes.clone()))?;
        let liveness_transitions = IntCounterVec::new(
            Opts::new("agent_liveness_transitions_total", "Agents that became LOST or ALIVE again (standalone mode)"),
            &["to"],
        )?;
        registry.register(Box::new(liveness_transitions.clone()))?;
        let is_leader = IntGauge::new("is_leader", "1 while this replica is the leader (high availability)")?;
        let leader_changes =
            prometheus::IntCounter::new("leader_changes_total", "Leaders this replica has seen come and go")?;
        let forwarded_requests = IntCounterVec::new(
            Opts::new("forwarded_requests_total", "Requests a follower forwarded to the leader, by outcome"),
            &["outcome"],
        )?;
        registry.register(Box::new(is_leader.clone()))?;
        registry.register(Box::new(leader_changes.clone()))?;
        registry.register(Box::new(forwarded_requests.clone()))?;
        let status_ok = watcher_calls.with_label_values(&["status", "ok"]);
        let status_duration = watcher_duration.with_label_values(&["status"]);
        Ok(Self {
            status_ok,
            status_duration,
            registry,
            http_requests,
            http_duration,
            watcher_calls,
            watcher_duration,
            commands_queued,
            commands_in_flight,
            recalc_runs,
            recalc_duration,
            db_pool,
            etcd_cache,
            agents,
            redis_writes,
            liveness_transitions,
            is_leader,
            leader_changes,
            forwarded_requests,
        })
    }

    pub fn observe_http(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.http_requests.with_label_values(&[route, method, &status.to_string()]).inc();
        self.http_duration.with_label_values(&[route, method]).observe(elapsed.as_secs_f64());
    }

    /// A successful status call: the one kind every watcher call mostly is, with its counter and histogram looked up
    /// once.
    pub fn observe_status_ok(&self, elapsed: Duration) {
        self.status_ok.inc();
        self.status_duration.observe(elapsed.as_secs_f64());
    }

    pub fn observe_watcher(&self, kind: &str, outcome: &str, elapsed: Duration) {
        self.watcher_calls.with_label_values(&[kind, outcome]).inc();
        self.watcher_duration.with_label_values(&[kind]).observe(elapsed.as_secs_f64());
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
