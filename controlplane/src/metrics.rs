//! Prometheus metrics of the API: requests by method, matched route and status, and their
//! duration. One registry per control plane (not the global one), so several can run in one
//! process (tests).

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;
use std::time::Instant;

/// The API's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
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
        Metrics {
            registry,
            requests,
            duration,
        }
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
