//! The broker's Prometheus metrics, registered in the process's default registry.
//!
//! The binary serves `prometheus::gather()` as text on `/metrics`. Label values come from a
//! small fixed set (outcomes, algorithms) plus service names.

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge_vec,
    HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
};
use std::sync::LazyLock;

/// A metric of the default registry, registered on first use: `register!` and its
/// arguments (name, help, labels, buckets).
macro_rules! metric {
    ($register:ident, $($arg:expr),+ $(,)?) => {
        LazyLock::new(|| $register!($($arg),+).expect("metric registers once"))
    };
}

/// Requests by service, algorithm and outcome.
pub static REQUESTS: LazyLock<IntCounterVec> = metric!(
    register_int_counter_vec,
    "triggerfs_broker_requests_total",
    "Requests handled by the broker, by service, algorithm and outcome",
    &["service", "algorithm", "outcome"]
);

/// Time from a request's arrival to its summary.
pub static REQUEST_SECONDS: LazyLock<HistogramVec> = metric!(
    register_histogram_vec,
    "triggerfs_broker_request_duration_seconds",
    "Request latency through the broker, arrival to summary",
    &["algorithm"],
    // 50 µs to ~1 h: echo round trips up to package upgrades.
    prometheus::exponential_buckets(0.00005, 4.0, 13).expect("valid buckets")
);

/// Times a client fell behind its replies and its requests' output was paused at their
/// workers (flow control).
pub static CLIENT_PAUSES: LazyLock<IntCounter> = metric!(
    register_int_counter,
    "triggerfs_broker_client_pauses_total",
    "Times a client's backlog passed its pause mark and its requests' output was paused at the workers"
);

/// Connections by role, per shard.
pub static CONNECTED: LazyLock<IntGaugeVec> = metric!(
    register_int_gauge_vec,
    "triggerfs_broker_connected",
    "Connections by role (client, worker) and shard",
    &["role", "shard"]
);

/// The connections open now over every shard: (clients, workers), from [`CONNECTED`].
pub fn connections() -> (u32, u32) {
    use prometheus::core::Collector;
    let (mut clients, mut workers) = (0i64, 0i64);
    for family in CONNECTED.collect() {
        for metric in family.get_metric() {
            let role = metric.get_label().iter().find(|l| l.name() == "role");
            let n = metric.get_gauge().get_value() as i64;
            match role.map(|l| l.value()) {
                Some("client") => clients += n,
                Some("worker") => workers += n,
                _ => {}
            }
        }
    }
    let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    (count(clients), count(workers))
}

/// Requests in flight, per shard.
pub static INFLIGHT: LazyLock<IntGaugeVec> = metric!(
    register_int_gauge_vec,
    "triggerfs_broker_inflight_requests",
    "Requests being served, by owning shard",
    &["shard"]
);

/// Frames waiting in outbound connection queues, per shard (sampled every second).
pub static QUEUED: LazyLock<IntGaugeVec> = metric!(
    register_int_gauge_vec,
    "triggerfs_broker_outbound_queue_frames",
    "Frames queued towards connections, by shard",
    &["shard"]
);

/// Frames or handshakes refused, by reason.
pub static REJECTED: LazyLock<IntCounterVec> = metric!(
    register_int_counter_vec,
    "triggerfs_broker_frames_rejected_total",
    "Frames and handshakes the broker refused, by reason",
    &["reason"]
);

/// Connections the broker closed to protect itself or others, by reason: `slow_consumer`
/// (a client's backlog passed its bound), `pending_per_address` (too many connections from
/// one address had not finished their handshake), `superseded` (a newer connection of the
/// same worker identity took over), `plaintext` (a plaintext peer of a TLS broker), `tls`
/// (a failed TLS handshake: an unknown client certificate, garbage).
pub static CLOSED: LazyLock<IntCounterVec> = metric!(
    register_int_counter_vec,
    "triggerfs_broker_connections_closed_total",
    "Connections the broker closed: slow consumers, too many pending handshakes from one address, superseded workers",
    &["reason"]
);

/// Keyed requests (`Request.key`) the broker answered from its idempotency window, without
/// dispatching them: replays of a key whose run had ended.
pub static IDEM_REPLAYS: LazyLock<IntCounter> = metric!(
    register_int_counter,
    "triggerfs_broker_idem_replays_total",
    "Keyed requests answered from the broker's idempotency window without running again"
);

/// Snake-case label of an error kind: its text (`NoSuchService`) as `no_such_service`.
pub fn kind_label(kind: proto::ErrorKind) -> String {
    let mut label = String::new();
    for (i, c) in proto::TextEnum::as_str(kind).char_indices() {
        if c.is_ascii_uppercase() && i > 0 {
            label.push('_');
        }
        label.push(c.to_ascii_lowercase());
    }
    label
}

/// Job-history records the control plane stored.
pub static JOBS_DELIVERED: LazyLock<IntCounter> = metric!(
    register_int_counter,
    "triggerfs_broker_jobs_delivered_total",
    "Job-history records delivered to the control plane"
);

/// Job-history records lost: dropped because the queue towards the control plane was full
/// (`queue_full`), or given up after the delivery retries (`undelivered`).
pub static JOBS_LOST: LazyLock<IntCounterVec> = metric!(
    register_int_counter_vec,
    "triggerfs_broker_jobs_lost_total",
    "Job-history records lost, by reason (queue_full, undelivered)",
    &["reason"]
);

#[cfg(test)]
mod tests {
    use proto::ErrorKind;

    #[test]
    fn error_kinds_are_labelled_in_snake_case() {
        assert_eq!(
            super::kind_label(ErrorKind::NoSuchService),
            "no_such_service"
        );
        assert_eq!(super::kind_label(ErrorKind::Timeout), "timeout");
        assert_eq!(
            super::kind_label(ErrorKind::TooManyConnections),
            "too_many_connections"
        );
    }
}
