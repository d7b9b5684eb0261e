use super::*;
use crate::registry::WorkerAt;
use proto::{ErrorKind, Stream};

fn workers(n: usize) -> Vec<WorkerRef> {
    (0..n)
        .map(|i| WorkerRef {
            identity: format!("w{i}").into(),
            at: WorkerAt {
                shard_idx: 0,
                conn_id: i as u64,
            },
        })
        .collect()
}

fn policy(algorithm: Algorithm) -> Policy {
    Policy {
        algorithm,
        batch: None,
        stop_on_failure: false,
        retry: false,
        max_failures: None,
        quorum: 0,
        quorum_cancel: false,
        timeout: Some(std::time::Duration::from_secs(1)),
        deadline: None,
    }
}

/// Drives a run and records dispatches; ids count from 100.
struct Harness {
    run: RequestRun,
    ids: u64,
    out: Vec<Action>,
}

impl Harness {
    fn new(p: Policy, n: usize) -> Harness {
        Harness::started(RequestRun::new(p, workers(n)))
    }

    /// Starts `run`.
    fn started(run: RequestRun) -> Harness {
        let mut h = Harness {
            run,
            ids: 100,
            out: Vec::new(),
        };
        let mut ids = h.ids;
        h.run.start(
            &mut || {
                ids += 1;
                ids
            },
            &mut h.out,
        );
        h.ids = ids;
        h
    }

    fn event(&mut self, id: u64, e: impl Into<WorkerEvent>) {
        let mut ids = self.ids;
        self.run.on_event(
            id,
            e.into(),
            &mut || {
                ids += 1;
                ids
            },
            &mut self.out,
        );
        self.ids = ids;
    }

    /// Dispatched (id, worker) pairs so far, draining the action log.
    fn dispatched(&mut self) -> Vec<(u64, String)> {
        self.out
            .iter()
            .filter_map(|a| match a {
                Action::Dispatch {
                    dispatch_id,
                    worker,
                } => Some((*dispatch_id, worker.identity.to_string())),
                _ => None,
            })
            .collect()
    }

    fn finish(&self) -> Option<Summary> {
        self.out.iter().find_map(|a| match a {
            Action::Finish { summary } => Some(*summary),
            _ => None,
        })
    }
}

#[test]
fn mirror_dispatches_all_and_summarises() {
    let mut h = Harness::new(policy(Algorithm::Mirror), 3);
    let d = h.dispatched();
    assert_eq!(d.len(), 3);
    h.event(d[0].0, Event::Done { exit_code: 0 });
    h.event(d[1].0, Event::Done { exit_code: 3 });
    assert!(h.finish().is_none());
    h.event(d[2].0, WorkerEvent::Lost);
    assert_eq!(
        h.finish(),
        Some(Summary {
            workers: 3,
            ok: 1,
            failed: 1,
            timed_out: 0,
            lost: 1,
            replayed: false,
            ..Default::default()
        })
    );
}

#[test]
fn mirror_batch_limits_parallelism() {
    let mut p = policy(Algorithm::Mirror);
    p.batch = Some(2);
    let mut h = Harness::new(p, 5);
    assert_eq!(h.dispatched().len(), 2);
    let first = h.dispatched()[0].0;
    h.event(first, Event::Done { exit_code: 0 });
    assert_eq!(h.dispatched().len(), 3);
}

#[test]
fn serial_runs_one_after_another_and_stops_on_failure() {
    let mut h = Harness::new(policy(Algorithm::Serial), 3);
    assert_eq!(h.dispatched().len(), 1);
    let d0 = h.dispatched()[0].0;
    h.event(d0, Event::Done { exit_code: 1 });
    assert_eq!(h.dispatched().len(), 2, "continues without stop_on_failure");

    let mut p = policy(Algorithm::Serial);
    p.stop_on_failure = true;
    let mut h = Harness::new(p, 3);
    let d0 = h.dispatched()[0].0;
    h.event(d0, Event::Done { exit_code: 1 });
    assert_eq!(h.dispatched().len(), 1);
    assert_eq!(h.finish().unwrap().failed, 1);
}

#[test]
fn roundrobin_fails_over_before_accepted_only() {
    let mut h = Harness::new(policy(Algorithm::Roundrobin), 3);
    let d0 = h.dispatched()[0].0;
    h.event(d0, WorkerEvent::Lost);
    let d = h.dispatched();
    assert_eq!(d.len(), 2, "fail-over to the next worker");
    assert_eq!(d[1].1, "w1");
    assert!(!h.out.iter().any(|a| matches!(
        a,
        Action::Relay {
            event: Event::Failed { .. },
            ..
        }
    )));
    h.event(d[1].0, Event::Accepted);
    h.event(
        d[1].0,
        Event::Output {
            seq: 0,
            stream: Stream::Stdout,
            data: b"x".to_vec(),
        },
    );
    h.event(d[1].0, WorkerEvent::Lost);
    assert_eq!(h.dispatched().len(), 2, "no re-run after Accepted");
    assert_eq!(h.finish().unwrap().lost, 1);
}

/// With `retry`, a worker lost after `Accepted` is reported `Retried` (not counted) and the
/// request runs again on the next worker, whose answer is the request's.
#[test]
fn roundrobin_with_retry_reports_the_lost_worker_as_retried() {
    let mut p = policy(Algorithm::Roundrobin);
    p.retry = true;
    let mut h = Harness::new(p, 2);
    let d0 = h.dispatched()[0].0;
    h.event(d0, Event::Accepted);
    h.event(d0, WorkerEvent::Lost);
    let d = h.dispatched();
    assert_eq!(d.len(), 2, "run again on w1");
    h.event(d[1].0, Event::Accepted);
    h.event(d[1].0, Event::Done { exit_code: 0 });
    assert_eq!(
        ends(&h.out),
        [
            ("w0".to_string(), "Retried".to_string()),
            ("w1".to_string(), "0".to_string())
        ]
    );
    let s = h.finish().unwrap();
    assert_eq!((s.workers, s.ok, s.lost, s.failed), (1, 1, 0, 0));
}

#[test]
fn roundrobin_all_lost_reports_worker_lost() {
    let mut h = Harness::new(policy(Algorithm::Roundrobin), 2);
    let d0 = h.dispatched()[0].0;
    h.event(d0, WorkerEvent::Lost);
    let d1 = h.dispatched()[1].0;
    h.event(d1, WorkerEvent::Lost);
    assert_eq!(h.finish().unwrap().lost, 1);
}

#[test]
fn timeout_cancels_running_dispatches() {
    let mut h = Harness::new(policy(Algorithm::Mirror), 2);
    let d = h.dispatched();
    h.event(d[0].0, Event::Done { exit_code: 0 });
    h.event(d[1].0, Event::Accepted);
    h.run.on_timeout(&mut h.out);
    assert!(h
        .out
        .iter()
        .any(|a| matches!(a, Action::Cancel { dispatch_id, .. } if *dispatch_id == d[1].0)));
    assert_eq!(h.finish().unwrap().timed_out, 1);
    // Late events after the finish are ignored.
    h.event(d[1].0, Event::Done { exit_code: 0 });
    assert_eq!(h.finish().unwrap().ok, 1);
}

/// The ends relayed so far, as (worker, kind) for `Failed` and (worker, exit) for `Done`.
fn ends(out: &[Action]) -> Vec<(String, String)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Relay {
                worker,
                event: Event::Failed { kind, .. },
            } => Some((worker.to_string(), kind.to_string())),
            Action::Relay {
                worker,
                event: Event::Done { exit_code },
            } => Some((worker.to_string(), exit_code.to_string())),
            _ => None,
        })
        .collect()
}

/// Bound-but-offline workers are reported first and counted; `n_workers` includes them.
#[test]
fn offline_workers_are_reported() {
    let run =
        RequestRun::new(policy(Algorithm::Mirror), workers(2)).with_offline(vec!["gone".into()]);
    assert_eq!(run.n_workers(), 3);
    let mut h = Harness::started(run);
    assert_eq!(ends(&h.out), [("gone".to_string(), "Offline".to_string())]);
    for (id, _) in h.dispatched() {
        h.event(id, Event::Done { exit_code: 0 });
    }
    let s = h.finish().unwrap();
    assert_eq!((s.workers, s.ok, s.offline), (3, 2, 1));
}

/// Past `max_failures` no worker starts; the rest are skipped and the summary says stopped.
#[test]
fn max_failures_stops_starting_workers() {
    let mut p = policy(Algorithm::Mirror);
    p.batch = Some(2);
    p.max_failures = Some(1);
    let mut h = Harness::new(p, 6);
    let d = h.dispatched();
    h.event(d[0].0, Event::Done { exit_code: 1 });
    let d = h.dispatched();
    assert_eq!(d.len(), 3, "one failure is not past 1");
    h.event(d[1].0, Event::Done { exit_code: 1 });
    assert_eq!(
        h.dispatched().len(),
        3,
        "two are past it: nothing new starts"
    );
    h.event(d[2].0, Event::Done { exit_code: 0 });
    let s = h.finish().unwrap();
    assert!(s.stopped);
    assert_eq!((s.workers, s.ok, s.failed, s.skipped), (6, 1, 2, 3));
}

/// The quorum ends the request: running workers detached (or cancelled), the rest skipped.
#[test]
fn quorum_ends_the_request() {
    for cancel in [false, true] {
        let mut p = policy(Algorithm::Mirror);
        p.batch = Some(3);
        p.quorum = 2;
        p.quorum_cancel = cancel;
        let mut h = Harness::new(p, 5);
        let d = h.dispatched();
        h.event(d[0].0, Event::Done { exit_code: 0 });
        h.event(d[1].0, Event::Done { exit_code: 0 });
        let s = h.finish().expect("ends at the quorum");
        assert!(s.quorum_met);
        assert_eq!(s.skipped, 1, "{s:?}");
        let cancels = h
            .out
            .iter()
            .filter(|a| matches!(a, Action::Cancel { .. }))
            .count();
        // Two were running (the batch refilled after the first ended).
        assert_eq!(cancels, if cancel { 2 } else { 0 });
        assert_eq!(s.detached, if cancel { 0 } else { 2 });
    }
}

/// At the deadline a worker that accepted timed out, one that never did gave no response,
/// one not started was skipped; a worker's own timeout has the same text as the broker's.
#[test]
fn deadline_splits_timed_out_and_no_response() {
    let mut p = policy(Algorithm::Mirror);
    p.batch = Some(3);
    p.deadline = Some(std::time::Duration::from_secs(2));
    let mut h = Harness::new(p, 4);
    let d = h.dispatched();
    h.event(
        d[0].0,
        Event::Failed {
            kind: ErrorKind::Timeout,
            message: "the worker's own words".into(),
        },
    );
    h.event(d[1].0, Event::Accepted);
    h.run.on_timeout(&mut h.out);
    let s = h.finish().unwrap();
    assert_eq!(
        (s.timed_out, s.no_response, s.skipped, s.workers),
        (2, 2, 0, 4),
        "the batch refilled after the first ended: two never accepted"
    );
    let texts: Vec<&str> = h
        .out
        .iter()
        .filter_map(|a| match a {
            Action::Relay {
                event: Event::Failed { kind, message },
                ..
            } if *kind == ErrorKind::Timeout => Some(message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        texts,
        [
            "timed out after 1s",
            "timed out at the request's deadline (2s)"
        ]
    );
}

/// A mirror or serial request whose bound workers are all offline reports each of them and
/// ends at once (it is not refused as `NoWorkersOnline`, which would name none of them).
#[test]
fn every_worker_offline_is_reported_and_ends() {
    for algorithm in [Algorithm::Mirror, Algorithm::Serial] {
        let run = RequestRun::new(policy(algorithm), Vec::new())
            .with_offline(vec!["web01".into(), "web02".into()]);
        assert_eq!(run.n_workers(), 2);
        let mut h = Harness::started(run);
        assert!(h.dispatched().is_empty());
        assert_eq!(
            ends(&h.out),
            [
                ("web01".to_string(), "Offline".to_string()),
                ("web02".to_string(), "Offline".to_string())
            ]
        );
        let s = h.finish().expect("ends at start");
        assert_eq!((s.workers, s.offline, s.ok), (2, 2, 0));
    }
}

/// Workers that start at different times (waves of a batch, serial) are staged: each one's
/// timeout runs from its own dispatch. One past it is cancelled and reported (`Timeout`
/// with the request's one text once accepted, `NoResponse` before), and the next starts.
#[test]
fn staged_runs_time_each_worker_from_its_start() {
    let staged = |algorithm, batch: Option<usize>, n| {
        let mut p = policy(algorithm);
        p.batch = batch;
        RequestRun::new(p, workers(n)).staged()
    };
    assert!(staged(Algorithm::Mirror, Some(2), 5));
    assert!(staged(Algorithm::Serial, None, 2));
    assert!(!staged(Algorithm::Mirror, None, 5));
    assert!(!staged(Algorithm::Mirror, Some(5), 5));
    assert!(!staged(Algorithm::Serial, None, 1));
    assert!(!staged(Algorithm::Roundrobin, None, 3));

    let mut p = policy(Algorithm::Mirror);
    p.batch = Some(2);
    let mut h = Harness::new(p, 4);
    let d = h.dispatched();
    assert_eq!(d.len(), 2);
    h.event(d[0].0, Event::Accepted);
    let timeout = |h: &mut Harness, id| {
        let mut ids = h.ids;
        h.run.on_dispatch_timeout(
            id,
            &mut || {
                ids += 1;
                ids
            },
            &mut h.out,
        );
        h.ids = ids;
    };
    timeout(&mut h, d[0].0);
    timeout(&mut h, d[1].0);
    // Both were cancelled, and two more started in their places.
    let cancelled: Vec<u64> = h
        .out
        .iter()
        .filter_map(|a| match a {
            Action::Cancel { dispatch_id, .. } => Some(*dispatch_id),
            _ => None,
        })
        .collect();
    assert_eq!(cancelled, [d[0].0, d[1].0]);
    let d = h.dispatched();
    assert_eq!(d.len(), 4);
    let texts: Vec<(ErrorKind, String)> = h
        .out
        .iter()
        .filter_map(|a| match a {
            Action::Relay {
                event: Event::Failed { kind, message },
                ..
            } => Some((*kind, message.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        texts,
        [
            (ErrorKind::Timeout, "timed out after 1s".to_string()),
            (
                ErrorKind::NoResponse,
                "worker w1 did not answer within its timeout (1s)".to_string()
            )
        ]
    );
    // A timeout for a dispatch that already ended changes nothing.
    timeout(&mut h, d[0].0);
    h.event(d[2].0, Event::Done { exit_code: 0 });
    h.event(d[3].0, Event::Done { exit_code: 0 });
    let s = h.finish().unwrap();
    assert_eq!((s.workers, s.ok, s.timed_out, s.no_response), (4, 2, 1, 1));
}
