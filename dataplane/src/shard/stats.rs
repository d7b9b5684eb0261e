//! The shard's metric handles: resolved once where the request path would otherwise build
//! labels, so counting a request costs no label lookup.

use crate::config::ServiceConfig;
use crate::metrics;
use foldhash::{HashMap, HashMapExt};
use proto::{Algorithm, ErrorKind, Role, Summary};
use std::time::Instant;

/// Every algorithm, in its declared order, which `as usize` gives.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::Roundrobin, Algorithm::Mirror, Algorithm::Serial];
const _: () = assert!(Algorithm::Mirror as usize == 1 && Algorithm::Serial as usize == 2);

/// (algorithm, outcome) → counter.
type OutcomeCounters = HashMap<(Algorithm, &'static str), prometheus::IntCounter>;

pub(super) struct Stats {
    /// The shard's index, as a label value.
    shard: String,
    inflight: prometheus::IntGauge,
    queued: prometheus::IntGauge,
    /// Request latency histograms, indexed by algorithm (`as usize`: its place in
    /// [`ALGORITHMS`]).
    durations: [prometheus::Histogram; 3],
    /// team → service → (algorithm, outcome) → counter: found without building a label.
    request_counters: HashMap<String, HashMap<String, OutcomeCounters>>,
}

impl Stats {
    pub(super) fn new(idx: usize) -> Stats {
        let shard = idx.to_string();
        Stats {
            inflight: metrics::INFLIGHT.with_label_values(&[&shard]),
            queued: metrics::QUEUED.with_label_values(&[&shard]),
            durations: ALGORITHMS
                .map(|a| metrics::REQUEST_SECONDS.with_label_values(&[&a.to_string()])),
            request_counters: HashMap::new(),
            shard,
        }
    }

    /// The gauge of connections with `role` on this shard.
    pub(super) fn connected(&self, role: Role) -> prometheus::IntGauge {
        let role = match role {
            Role::Client => "client",
            Role::Worker => "worker",
        };
        metrics::CONNECTED.with_label_values(&[role, &self.shard])
    }

    /// Frames waiting in this shard's outboxes (sampled).
    pub(super) fn set_queued(&self, frames: usize) {
        self.queued.set(frames as i64);
    }

    /// A request that was refused before it ran.
    pub(super) fn request_refused(&self, kind: ErrorKind) {
        metrics::REQUESTS
            .with_label_values(&["", "", &metrics::kind_label(kind)])
            .inc();
    }

    pub(super) fn request_started(&self) {
        self.inflight.inc();
    }

    /// A request that ran is over: its outcome, its latency, one fewer in flight.
    pub(super) fn request_finished(
        &mut self,
        service: &ServiceConfig,
        started: Instant,
        summary: &Summary,
    ) {
        let outcome = if summary.timed_out > 0 {
            "timeout"
        } else if summary.lost > 0 {
            "lost"
        } else if summary.failed > 0 {
            "failed"
        } else {
            "ok"
        };
        let key = (service.algorithm, outcome);
        let counters = &mut self.request_counters;
        let known = counters
            .get(&service.team)
            .and_then(|m| m.get(&service.name))
            .and_then(|m| m.get(&key));
        match known {
            Some(counter) => counter.inc(),
            None => {
                let counter = metrics::REQUESTS.with_label_values(&[
                    &format!("{}/{}", service.team, service.name),
                    &service.algorithm.to_string(),
                    outcome,
                ]);
                counter.inc();
                counters
                    .entry(service.team.clone())
                    .or_default()
                    .entry(service.name.clone())
                    .or_default()
                    .insert(key, counter);
            }
        }
        self.durations[service.algorithm as usize].observe(started.elapsed().as_secs_f64());
        self.inflight.dec();
    }
}
