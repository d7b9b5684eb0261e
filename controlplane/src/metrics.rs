//! Prometheus metrics of the API: requests by method, matched route and status, and their
//! duration; the schedules' runs by outcome, their lateness, and the due runs skipped; in a
//! cell, the live broker nodes and the workers by how many of them they reach. One registry per control plane (not the global one), so several can run in one
//! process (tests).

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::Arc;
use std::time::Instant;

/// The API's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    /// Schedules' runs that ended, by `outcome` (`api::schedules::RunOutcome`).
    pub(crate) schedule_runs: IntCounterVec,
    /// How late a run was sent after it was due (its jitter left out).
    pub(crate) schedule_lateness: Histogram,
    /// Due runs that did not start, by `reason`: `forbid` (the last run still ran),
    /// `missed` (no control plane could start it, and no catch-up), `paused` (its owner
    /// lost access).
    pub(crate) schedule_skipped: IntCounterVec,
    /// Workers by how many live broker nodes they are connected to (`reached`), every team's.
    workers_by_nodes: IntGaugeVec,
    /// Live broker nodes of the cell.
    live_nodes: IntGauge,
}

/// A counter by `label`, registered in `registry`.
fn counter(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers the metrics in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "triggerfs_control_http_requests_total",
                "HTTP requests by method, matched route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "triggerfs_control_http_request_duration_seconds",
                "HTTP request duration until the response head, by method and route",
            ),
            &["method", "route"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(requests.clone()))
            .expect("metric registered once");
        registry
            .register(Box::new(duration.clone()))
            .expect("metric registered once");
        let lateness = Histogram::with_opts(
            HistogramOpts::new(
                "triggerfs_control_schedule_lateness_seconds",
                "How late a schedule's run was sent after it was due",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0]),
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(lateness.clone()))
            .expect("metric registered once");
        let workers_by_nodes = IntGaugeVec::new(
            Opts::new(
                "triggerfs_control_workers_by_nodes_reached",
                "Workers by how many live broker nodes of the cell they are connected to",
            ),
            &["reached"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(workers_by_nodes.clone()))
            .expect("metric registered once");
        let live_nodes = IntGauge::new(
            "triggerfs_control_broker_nodes_live",
            "Broker nodes of the cell seen within the lease",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(live_nodes.clone()))
            .expect("metric registered once");
        Metrics {
            workers_by_nodes,
            live_nodes,
            schedule_runs: counter(
                &registry,
                "triggerfs_control_schedule_runs_total",
                "Schedules' runs that ended, by outcome",
                "outcome",
            ),
            schedule_skipped: counter(
                &registry,
                "triggerfs_control_schedule_skipped_total",
                "Schedules' due runs that did not start, by reason",
                "reason",
            ),
            schedule_lateness: lateness,
            registry,
            requests,
            duration,
        }
    }

    /// Sets the cell's gauges: workers by nodes reached (`(reached, workers)` pairs; the
    /// counts not listed are gone), and the live nodes.
    pub(crate) fn set_reach(&self, reached: &[(i64, i64)], live: i64) {
        self.workers_by_nodes.reset();
        for (n, workers) in reached {
            self.workers_by_nodes
                .with_label_values(&[&n.to_string()])
                .set(*workers);
        }
        self.live_nodes.set(live);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding our own well-formed metrics into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Middleware counting every request under its matched route (or `unmatched`, so that
/// scanning random paths cannot blow up the label set).
pub(crate) async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    // Only the standard methods become labels; anything else is `other`.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "other".to_string(),
    };
    let started = Instant::now();
    let response = next.run(req).await;
    m.duration
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[&method, &route, response.status().as_str()])
        .inc();
    response
}
