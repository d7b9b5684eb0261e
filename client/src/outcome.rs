//! What a request came to, summed up from its events: per-worker results, the summary, the
//! request-level error. Serializable, for `client --json`.
//!
//! [`Outcome::record`] takes events one at a time so that the command can render them live
//! and still end with the same `Outcome` that [`crate::RequestHandle::collect`] returns.

use crate::client::ClientEvent;
use proto::{Algorithm, ErrorKind, Stream, Summary, TextEnum};
use serde::Serialize;
use std::time::Duration;

/// Everything a request came to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The service the request went to.
    pub service: String,
    /// The plugin it asked for.
    pub plugin: String,
    /// The service's algorithm, once the broker routed the request.
    pub algorithm: Option<Algorithm>,
    /// Workers the broker said it would use (from `Routed` or `Queued`).
    pub n_workers: Option<u32>,
    /// `Some(n)` when a fire-and-forget request was queued for `n` workers.
    pub queued: Option<u32>,
    /// Per-worker results: finished workers in the order they finished, then any that never
    /// finished, in the order they first appeared.
    pub workers: Vec<WorkerOutcome>,
    /// The broker's counts at the end, if it got that far.
    #[serde(serialize_with = "serialize_summary")]
    pub summary: Option<Summary>,
    /// The request-level error, if the request failed as a whole.
    pub error: Option<ErrorInfo>,
    /// The connection dropped before the request ended: its final event was
    /// `Error { kind: BrokerLost }` (not kept in `error`: the request itself did not fail).
    pub disconnected: bool,
    /// Output lines received, both streams, all workers.
    pub total_messages: u64,
    /// From sending the request to its final event.
    #[serde(rename = "time_ms", serialize_with = "serialize_millis")]
    pub elapsed: Duration,
    /// The most output kept, in [cost](line_cost) of lines; see [`Outcome::keep_output`].
    #[serde(skip)]
    keep_output: usize,
    /// Cost of the output lines kept now, all workers.
    #[serde(skip)]
    kept: usize,
    /// When recording started, for per-worker durations.
    #[serde(skip)]
    started: std::time::Instant,
}

/// What keeping one output line costs, for [`Outcome::keep_output`]: its text and its slot.
pub fn line_cost(line: &OutputLine) -> usize {
    line.line.len() + std::mem::size_of::<OutputLine>()
}

/// One worker's part of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerOutcome {
    /// The worker's identity.
    pub worker: String,
    /// The plugin's exit code, if it exited.
    pub exit_code: Option<i32>,
    /// How the run ended.
    pub status: WorkerStatus,
    /// Why it failed, for runs that ended without an exit code.
    pub error: Option<ErrorInfo>,
    /// Output lines in arrival order (the latest ones, when the outcome keeps a bounded
    /// tail: see [`Outcome::keep_output`]).
    pub output: Vec<OutputLine>,
    /// Lines not kept in `output` (the oldest ones), to stay within the bound.
    #[serde(skip_serializing_if = "is_zero")]
    pub output_dropped: u64,
    /// The last output line (either stream), kept even when `output` keeps none.
    pub last_line: Option<String>,
    /// From the request's start to the worker's `Accepted`, as the client saw it.
    #[serde(skip)]
    accepted_at: Option<Duration>,
    /// From its `Accepted` to its end (from the request's start when it never accepted).
    #[serde(rename = "duration_ms", serialize_with = "serialize_opt_millis")]
    pub duration: Option<Duration>,
    /// Cost of the lines in `output`.
    #[serde(skip)]
    kept: usize,
    /// Position among finished workers; orders `Outcome::workers` at the end.
    #[serde(skip)]
    finished_rank: Option<u64>,
}

proto::text_enum! {
    ("worker status", "snake_case")
    /// How one worker's run ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
    #[serde(rename_all = "snake_case")]
    pub enum WorkerStatus {
        /// Exited 0.
        Ok,
        /// Exited non-zero.
        Failed,
        /// Ran past its timeout.
        Timeout,
        /// The worker went away mid-run.
        Lost,
        /// The request was cancelled.
        Cancelled,
        /// Failed another way (plugin not found, plugin failed to start, …).
        Error,
        /// No `Done` or `Failed` arrived before the request ended (e.g. the connection dropped).
        Unfinished,
        /// Bound to the service but offline when the request was dispatched.
        Offline,
        /// Sent the request but did not answer before the deadline.
        NoResponse,
        /// Not started (max failures, quorum, deadline, a serial run's stop).
        Skipped,
        /// Still running when the quorum was reached; left to run on.
        Detached,
        /// Went away after it accepted; the request ran again on another worker (roundrobin
        /// with `retry`), whose answer is the request's.
        Retried,
    }
}

/// A typed error and its detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorInfo {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Detail.
    pub message: String,
}

/// One line of plugin output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputLine {
    /// stdout or stderr.
    pub stream: Stream,
    /// The line, lossily decoded as UTF-8.
    pub line: String,
}

impl WorkerStatus {
    /// The status a `Failed { kind }` event means.
    pub fn of_failure(kind: ErrorKind) -> WorkerStatus {
        match kind {
            ErrorKind::Timeout => WorkerStatus::Timeout,
            ErrorKind::WorkerLost => WorkerStatus::Lost,
            ErrorKind::Cancelled => WorkerStatus::Cancelled,
            ErrorKind::Offline => WorkerStatus::Offline,
            ErrorKind::NoResponse => WorkerStatus::NoResponse,
            ErrorKind::Skipped => WorkerStatus::Skipped,
            ErrorKind::Detached => WorkerStatus::Detached,
            ErrorKind::Retried => WorkerStatus::Retried,
            _ => WorkerStatus::Error,
        }
    }

    /// Where a worker with this status goes in the final table: failures first, then the
    /// workers that never answered, then those that did not run, successes last.
    pub fn table_rank(self) -> u8 {
        match self {
            WorkerStatus::Failed => 0,
            WorkerStatus::Error => 1,
            WorkerStatus::Lost => 2,
            WorkerStatus::Timeout => 3,
            WorkerStatus::NoResponse => 4,
            WorkerStatus::Offline => 5,
            WorkerStatus::Unfinished => 6,
            WorkerStatus::Cancelled => 7,
            WorkerStatus::Skipped => 8,
            WorkerStatus::Detached => 9,
            WorkerStatus::Retried => 10,
            WorkerStatus::Ok => 11,
        }
    }

    /// The status as the table and the live view say it (`no response`).
    pub fn words(self) -> &'static str {
        match self {
            WorkerStatus::NoResponse => "no response",
            WorkerStatus::Timeout => "timed out",
            other => other.as_str(),
        }
    }
}

impl Outcome {
    /// An outcome with nothing recorded yet.
    pub fn new(service: &str, plugin: &str) -> Outcome {
        Outcome {
            service: service.to_string(),
            plugin: plugin.to_string(),
            algorithm: None,
            n_workers: None,
            queued: None,
            workers: Vec::new(),
            summary: None,
            error: None,
            disconnected: false,
            total_messages: 0,
            elapsed: Duration::ZERO,
            keep_output: usize::MAX,
            kept: 0,
            started: std::time::Instant::now(),
        }
    }

    /// Keeps at most `bound` of output ([`line_cost`] summed over every worker's lines): past
    /// it the oldest lines of the worker that holds the most are dropped and counted in
    /// [`WorkerOutcome::output_dropped`]. 0 keeps no line; the default keeps every one.
    pub fn keep_output(mut self, bound: usize) -> Outcome {
        self.keep_output = bound;
        self
    }

    /// Adds one event.
    pub fn record(&mut self, event: &ClientEvent) {
        match event {
            ClientEvent::Routed {
                algorithm,
                n_workers,
            } => {
                self.algorithm = Some(*algorithm);
                self.n_workers = Some(*n_workers);
            }
            ClientEvent::Queued { n_workers } => {
                self.n_workers = Some(*n_workers);
                self.queued = Some(*n_workers);
            }
            ClientEvent::Accepted { worker } => {
                let at = self.started.elapsed();
                self.worker_mut(worker).accepted_at = Some(at);
            }
            ClientEvent::Output {
                worker,
                stream,
                data,
                ..
            } => {
                self.total_messages += 1;
                self.worker_mut(worker).last_line =
                    Some(String::from_utf8_lossy(data).into_owned());
                if self.keep_output == 0 {
                    self.worker_mut(worker).output_dropped += 1;
                    return;
                }
                let line = OutputLine {
                    stream: *stream,
                    line: String::from_utf8_lossy(data).into_owned(),
                };
                let cost = line_cost(&line);
                let w = self.worker_mut(worker);
                w.output.push(line);
                w.kept += cost;
                self.kept += cost;
                while self.kept > self.keep_output && self.drop_oldest() {}
            }
            ClientEvent::Done { worker, exit_code } => {
                let rank = self.next_rank();
                let now = self.started.elapsed();
                let w = self.worker_mut(worker);
                w.duration = Some(now.saturating_sub(w.accepted_at.unwrap_or_default()));
                w.exit_code = Some(*exit_code);
                w.status = if *exit_code == 0 {
                    WorkerStatus::Ok
                } else {
                    WorkerStatus::Failed
                };
                w.finished_rank = Some(rank);
            }
            ClientEvent::Failed {
                worker,
                kind,
                message,
            } => {
                let rank = self.next_rank();
                let now = self.started.elapsed();
                let w = self.worker_mut(worker);
                w.status = WorkerStatus::of_failure(*kind);
                if w.accepted_at.is_some() {
                    w.duration = w.accepted_at.map(|at| now.saturating_sub(at));
                }
                w.error = Some(ErrorInfo {
                    kind: *kind,
                    message: message.clone(),
                });
                w.finished_rank = Some(rank);
            }
            ClientEvent::Summary(summary) => self.summary = Some(*summary),
            ClientEvent::Error {
                kind: ErrorKind::BrokerLost,
                ..
            } => self.disconnected = true,
            ClientEvent::Error { kind, message } => {
                self.error = Some(ErrorInfo {
                    kind: *kind,
                    message: message.clone(),
                })
            }
        }
    }

    /// Stamps the elapsed time and puts the workers in the order they finished.
    pub fn finish(&mut self, elapsed: Duration) {
        self.elapsed = elapsed;
        // Stable: unfinished workers keep their first-seen order, after the finished ones.
        self.workers
            .sort_by_key(|w| w.finished_rank.unwrap_or(u64::MAX));
    }

    /// The process exit status this outcome means: 0 when at least one worker ran and every
    /// one exited 0 (or a fire-and-forget request was queued, or the quorum was met; a worker
    /// lost and `retried` elsewhere does not count); 2 for a request-level error or a
    /// plugin no worker has (`PluginNotFound`); 4 when `max_failures` stopped the run; 3 when
    /// a worker timed out, was offline or gave no response, or the connection dropped; 1
    /// otherwise.
    pub fn exit_status(&self) -> i32 {
        let refused = |w: &WorkerOutcome| {
            w.error
                .as_ref()
                .is_some_and(|e| e.kind == ErrorKind::PluginNotFound)
        };
        if self.error.is_some() || self.workers.iter().any(refused) {
            return 2;
        }
        if self.queued.is_some() || self.summary.is_some_and(|s| s.quorum_met) {
            return 0;
        }
        if self.summary.is_some_and(|s| s.stopped) {
            return 4;
        }
        let unanswered = |s: &WorkerStatus| {
            matches!(
                s,
                WorkerStatus::Timeout | WorkerStatus::Offline | WorkerStatus::NoResponse
            )
        };
        let summary_unanswered = self
            .summary
            .is_some_and(|s| s.timed_out + s.offline + s.no_response > 0);
        if self.disconnected
            || summary_unanswered
            || self.workers.iter().any(|w| unanswered(&w.status))
        {
            return 3;
        }
        let answered = || {
            self.workers
                .iter()
                .filter(|w| w.status != WorkerStatus::Retried)
        };
        let all_ok =
            answered().next().is_some() && answered().all(|w| w.status == WorkerStatus::Ok);
        let summary_ok = self
            .summary
            .is_none_or(|s| s.failed == 0 && s.lost == 0 && s.skipped == 0 && s.detached == 0);
        if all_ok && summary_ok {
            0
        } else {
            1
        }
    }

    /// The workers in the final table's order: by [`WorkerStatus::table_rank`], then by
    /// identity.
    pub fn table(&self) -> Vec<&WorkerOutcome> {
        let mut rows: Vec<&WorkerOutcome> = self.workers.iter().collect();
        rows.sort_by(|a, b| {
            (a.status.table_rank(), &a.worker).cmp(&(b.status.table_rank(), &b.worker))
        });
        rows
    }

    /// Whether several workers ran (mirror, serial), so results are shown per worker.
    pub fn is_fan_out(&self) -> bool {
        matches!(
            self.algorithm,
            Some(Algorithm::Mirror) | Some(Algorithm::Serial)
        ) || self.workers.len() > 1
    }

    /// Drops the older half of the lines of the worker that keeps the most (at least one);
    /// halves, so that a long stream of output costs amortized O(1) per line.
    fn drop_oldest(&mut self) -> bool {
        let Some(w) = self.workers.iter_mut().max_by_key(|w| w.kept) else {
            return false;
        };
        if w.output.is_empty() {
            return false;
        }
        let n = w.output.len().div_ceil(2);
        let freed: usize = w.output.drain(..n).map(|l| line_cost(&l)).sum();
        w.kept -= freed;
        w.output_dropped += n as u64;
        self.kept -= freed;
        true
    }

    fn next_rank(&self) -> u64 {
        self.workers
            .iter()
            .filter(|w| w.finished_rank.is_some())
            .count() as u64
    }

    fn worker_mut(&mut self, worker: &str) -> &mut WorkerOutcome {
        let idx = match self.workers.iter().position(|w| w.worker == worker) {
            Some(idx) => idx,
            None => {
                self.workers.push(WorkerOutcome {
                    worker: worker.to_string(),
                    exit_code: None,
                    status: WorkerStatus::Unfinished,
                    error: None,
                    output: Vec::new(),
                    output_dropped: 0,
                    last_line: None,
                    accepted_at: None,
                    duration: None,
                    kept: 0,
                    finished_rank: None,
                });
                self.workers.len() - 1
            }
        };
        &mut self.workers[idx]
    }
}

/// `proto::Summary` has no serde (proto stays free of our output format), so it is written
/// here by hand.
fn serialize_summary<S: serde::Serializer>(
    summary: &Option<Summary>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Counts {
        workers: u32,
        ok: u32,
        failed: u32,
        timed_out: u32,
        lost: u32,
        offline: u32,
        skipped: u32,
        no_response: u32,
        detached: u32,
        stopped: bool,
        quorum_met: bool,
    }
    summary
        .map(|s| Counts {
            workers: s.workers,
            ok: s.ok,
            failed: s.failed,
            timed_out: s.timed_out,
            lost: s.lost,
            offline: s.offline,
            skipped: s.skipped,
            no_response: s.no_response,
            detached: s.detached,
            stopped: s.stopped,
            quorum_met: s.quorum_met,
        })
        .serialize(serializer)
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn serialize_opt_millis<S: serde::Serializer>(
    d: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    d.map(|d| d.as_secs_f64() * 1000.0).serialize(serializer)
}

fn serialize_millis<S: serde::Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    /// The text of a status is its JSON name, one per variant.
    #[test]
    fn status_text_is_its_json_name() {
        let texts: Vec<&str> = WorkerStatus::VARIANTS.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            texts,
            [
                "ok",
                "failed",
                "timeout",
                "lost",
                "cancelled",
                "error",
                "unfinished",
                "offline",
                "no_response",
                "skipped",
                "detached",
                "retried"
            ]
        );
        for status in WorkerStatus::VARIANTS {
            let json = serde_json::to_string(status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
    }

    fn done(worker: &str, exit_code: i32) -> ClientEvent {
        ClientEvent::Done {
            worker: worker.to_string(),
            exit_code,
        }
    }

    fn failed(worker: &str, kind: ErrorKind) -> ClientEvent {
        ClientEvent::Failed {
            worker: worker.to_string(),
            kind,
            message: "m".to_string(),
        }
    }

    fn accepted(worker: &str) -> ClientEvent {
        ClientEvent::Accepted {
            worker: worker.to_string(),
        }
    }

    /// Records `events` and checks the exit status and the statuses in final order.
    #[track_caller]
    fn check(events: &[ClientEvent], exit_status: i32, statuses: &[(&str, &str)]) {
        let mut outcome = Outcome::new("svc", "echo");
        for event in events {
            outcome.record(event);
        }
        outcome.finish(Duration::from_millis(5));
        let got: Vec<(&str, &str)> = outcome
            .workers
            .iter()
            .map(|w| (w.worker.as_str(), w.status.as_str()))
            .collect();
        assert_eq!(got, statuses);
        assert_eq!(outcome.exit_status(), exit_status);
    }

    #[test]
    fn exit_status_and_worker_order() {
        let mirror = ClientEvent::Routed {
            algorithm: Algorithm::Mirror,
            n_workers: 3,
        };
        let summary = |ok, failed, lost| {
            ClientEvent::Summary(Summary {
                workers: 3,
                ok,
                failed,
                timed_out: 0,
                lost,
                replayed: false,
                ..Default::default()
            })
        };
        check(
            &[accepted("a"), done("a", 0), summary(1, 0, 0)],
            0,
            &[("a", "ok")],
        );
        // Finished order, not first-seen order.
        check(
            &[
                mirror.clone(),
                accepted("a"),
                accepted("b"),
                accepted("c"),
                done("c", 0),
                failed("a", ErrorKind::WorkerLost),
                done("b", 3),
                summary(1, 2, 1),
            ],
            1,
            &[("c", "ok"), ("a", "lost"), ("b", "failed")],
        );
        // An unfinished worker goes last and the drop is exit 3.
        check(
            &[
                mirror,
                accepted("a"),
                accepted("b"),
                done("b", 0),
                ClientEvent::Error {
                    kind: ErrorKind::BrokerLost,
                    message: "the connection to the broker at a:1 was lost: closed".into(),
                },
            ],
            3,
            &[("b", "ok"), ("a", "unfinished")],
        );
        check(
            &[ClientEvent::Error {
                kind: ErrorKind::NoSuchService,
                message: "x".into(),
            }],
            2,
            &[],
        );
        // No worker ran: not a success.
        check(&[summary(0, 0, 0)], 1, &[]);
        check(&[ClientEvent::Queued { n_workers: 2 }], 0, &[]);
        check(
            &[
                accepted("a"),
                failed("a", ErrorKind::Timeout),
                summary(0, 0, 0),
            ],
            3,
            &[("a", "timeout")],
        );
        check(
            &[accepted("a"), failed("a", ErrorKind::Cancelled)],
            1,
            &[("a", "cancelled")],
        );
    }

    /// A plugin no worker has is a refused request (2); a worker `retried` elsewhere is no
    /// failure, but alone it is no success.
    #[test]
    fn refused_plugins_and_retried_workers() {
        let summary = ClientEvent::Summary(Summary {
            workers: 1,
            ok: 1,
            ..Default::default()
        });
        check(
            &[failed("a", ErrorKind::PluginNotFound)],
            2,
            &[("a", "error")],
        );
        check(
            &[failed("a", ErrorKind::PluginFailed)],
            1,
            &[("a", "error")],
        );
        // Fail-over after `Accepted`: the lost worker is `retried`, the request succeeded.
        check(
            &[
                accepted("a"),
                failed("a", ErrorKind::Retried),
                accepted("b"),
                done("b", 0),
                summary,
            ],
            0,
            &[("a", "retried"), ("b", "ok")],
        );
        check(
            &[accepted("a"), failed("a", ErrorKind::Retried)],
            1,
            &[("a", "retried")],
        );
    }

    fn output(worker: &str, seq: u64, text: &str) -> ClientEvent {
        ClientEvent::Output {
            worker: worker.to_string(),
            seq,
            stream: Stream::Stdout,
            data: text.as_bytes().to_vec(),
        }
    }

    /// A bounded outcome keeps the latest lines within its bound, takes them from the worker
    /// that holds the most, counts what it dropped and says so in JSON; 0 keeps none.
    #[test]
    fn output_is_a_bounded_tail() {
        let line = OutputLine {
            stream: Stream::Stdout,
            line: "0123456789".into(),
        };
        let bound = 100 * line_cost(&line);
        let mut outcome = Outcome::new("svc", "command").keep_output(bound);
        for seq in 0..10_000u64 {
            outcome.record(&output("a", seq, &format!("{:010}", seq)));
        }
        for seq in 0..10u64 {
            outcome.record(&output("b", seq, &format!("{:010}", seq)));
        }
        assert!(outcome.kept <= bound, "{} > {bound}", outcome.kept);
        let (a, b) = (&outcome.workers[0], &outcome.workers[1]);
        assert_eq!(b.output.len(), 10, "the small worker keeps its lines");
        assert!(
            a.output.len() >= 40 && a.output.len() <= 100,
            "{}",
            a.output.len()
        );
        assert_eq!(a.output.len() as u64 + a.output_dropped, 10_000);
        assert_eq!(
            a.output.last().unwrap().line,
            "0000009999",
            "the latest lines stay"
        );
        assert_eq!(outcome.total_messages, 10_010);
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["workers"][0]["output_dropped"], a.output_dropped);
        assert!(json["workers"][1].get("output_dropped").is_none());

        let mut none = Outcome::new("svc", "command").keep_output(0);
        none.record(&output("a", 0, "x"));
        none.record(&done("a", 0));
        assert!(none.workers[0].output.is_empty());
        assert_eq!(
            (none.workers[0].output_dropped, none.total_messages),
            (1, 1)
        );
        assert_eq!(none.exit_status(), 0);
    }
}
