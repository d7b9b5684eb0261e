use super::*;

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
        let mut h = Harness {
            run: RequestRun::new(p, workers(n)),
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

    fn event(&mut self, id: u64, e: WorkerEvent) {
        let mut ids = self.ids;
        self.run.on_event(
            id,
            e,
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
    h.event(d[0].0, WorkerEvent::Done { exit_code: 0 });
    h.event(d[1].0, WorkerEvent::Done { exit_code: 3 });
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
    h.event(first, WorkerEvent::Done { exit_code: 0 });
    assert_eq!(h.dispatched().len(), 3);
}

#[test]
fn serial_runs_one_after_another_and_stops_on_failure() {
    let mut h = Harness::new(policy(Algorithm::Serial), 3);
    assert_eq!(h.dispatched().len(), 1);
    let d0 = h.dispatched()[0].0;
    h.event(d0, WorkerEvent::Done { exit_code: 1 });
    assert_eq!(h.dispatched().len(), 2, "continues without stop_on_failure");

    let mut p = policy(Algorithm::Serial);
    p.stop_on_failure = true;
    let mut h = Harness::new(p, 3);
    let d0 = h.dispatched()[0].0;
    h.event(d0, WorkerEvent::Done { exit_code: 1 });
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
    h.event(d[1].0, WorkerEvent::Accepted);
    h.event(
        d[1].0,
        WorkerEvent::Output {
            seq: 0,
            stream: Stream::Stdout,
            data: b"x".to_vec(),
        },
    );
    h.event(d[1].0, WorkerEvent::Lost);
    assert_eq!(h.dispatched().len(), 2, "no re-run after Accepted");
    assert_eq!(h.finish().unwrap().lost, 1);
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
    h.event(d[0].0, WorkerEvent::Done { exit_code: 0 });
    h.run.on_timeout(&mut h.out);
    assert!(h
        .out
        .iter()
        .any(|a| matches!(a, Action::Cancel { dispatch_id, .. } if *dispatch_id == d[1].0)));
    assert_eq!(h.finish().unwrap().timed_out, 1);
    // Late events after the finish are ignored.
    h.event(d[1].0, WorkerEvent::Done { exit_code: 0 });
    assert_eq!(h.finish().unwrap().ok, 1);
}
