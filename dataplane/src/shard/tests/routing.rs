//! Routing and cancellation on one shard.

use super::*;

/// A worker of the roundrobin service `rr`.
struct RrWorker {
    conn: u64,
    name: &'static str,
    out: Rc<Outbox>,
}

/// Workers `w1` and `w2` serve `rr`, and a client sends it request 1. Returns the worker it
/// went to with the dispatch id, the other worker, and the client.
async fn rr_request(shard: &Shard) -> ((RrWorker, u64), RrWorker, (u64, Rc<Outbox>)) {
    let [w1, w2] = ["w1", "w2"].map(|name| {
        let (conn, out) = connect(shard, name, Role::Worker);
        RrWorker { conn, name, out }
    });
    let (client, out) = connect(shard, "c", Role::Client);
    from_client(shard, client, request(1, "rr", true)).await;
    let (chosen, other) = if w1.out.len() > 0 { (w1, w2) } else { (w2, w1) };
    let id = dispatched(&chosen.out.take_frames());
    assert_eq!(other.out.len(), 0, "one worker gets the request");
    ((chosen, id), other, (client, out))
}

/// Roundrobin sends each request to the next worker and relays its answer; `Routed` waits
/// for the first reply.
#[test]
fn roundrobin_routes_to_a_worker_and_relays_replies() {
    let rr = service("rr", Algorithm::Roundrobin, &["w1", "w2"]);
    one_shard(vec![rr], |shard| async move {
        let ((chosen, id), other, (client, out)) = rr_request(&shard).await;
        assert!(out.take_frames().is_empty(), "Routed is held back");
        from_client(&shard, client, request(2, "rr", true)).await;
        dispatched(&other.out.take_frames());

        for frame in worker_answer(id) {
            from_worker(&shard, chosen.conn, frame).await;
        }
        let (events, summary) = answer(&out.take_frames(), 1);
        assert_eq!(events, relayed_answer(chosen.name));
        let ok = Summary {
            workers: 1,
            ok: 1,
            ..Summary::default()
        };
        assert_eq!(summary, ok);
    });
}

/// A worker's whole answer in one `Events` frame reaches the client as one `Replies` frame
/// (after the held `Routed`, before the `Summary`), with what the single frames would carry.
#[test]
fn an_events_frame_is_relayed_as_one_replies_frame() {
    let rr = service("rr", Algorithm::Roundrobin, &["w1", "w2"]);
    one_shard(vec![rr], |shard| async move {
        let ((chosen, id), _other, (_client, out)) = rr_request(&shard).await;
        let events = Frame::merge_worker_events(worker_answer(id));
        assert!(matches!(events.as_slice(), [Frame::Events { .. }]));
        from_worker(&shard, chosen.conn, events.into_iter().next().unwrap()).await;
        let frames = out.take_frames();
        let [Frame::Routed { id: 1, .. }, Frame::Replies {
            id: 1,
            worker,
            events,
        }, Frame::Summary { id: 1, summary }] = frames.as_slice()
        else {
            panic!("expected Routed, Replies, Summary; got {frames:?}");
        };
        let relayed: Vec<_> = events.iter().map(|e| (worker.clone(), e.clone())).collect();
        assert_eq!(relayed, relayed_answer(chosen.name));
        assert_eq!((summary.workers, summary.ok), (1, 1));
        // The run is over for the broker: a late frame about it is dropped.
        from_worker(&shard, chosen.conn, Frame::Done { id, exit_code: 1 }).await;
        assert!(out.take_frames().is_empty());
    });
}

/// A client of protocol 8 gets a worker's whole answer (one `Events` frame that ends the
/// run) as one `Answer`: `Routed`, the replies and the `Summary` in one frame. A client of
/// 7 gets the three frames (above).
#[test]
fn a_whole_answer_is_one_frame_for_a_client_that_takes_it() {
    let rr = service("rr", Algorithm::Roundrobin, &["w1"]);
    one_shard(vec![rr], |shard| async move {
        let (w1, w1_out) = connect(&shard, "w1", Role::Worker);
        let version = proto::ANSWER_SINCE;
        let (client, out) = connect_speaking(&shard, "c", Role::Client, version);
        from_client(&shard, client, request(1, "rr", true)).await;
        let id = dispatched(&w1_out.take_frames());
        let events = Frame::merge_worker_events(worker_answer(id));
        from_worker(&shard, w1, events.into_iter().next().unwrap()).await;
        let frames = out.take_frames();
        let [Frame::Answer(whole)] = frames.as_slice() else {
            panic!("expected one Answer; got {frames:?}");
        };
        let proto::Answer {
            id: 1,
            algorithm: Algorithm::Roundrobin,
            n_workers: 1,
            worker,
            events,
            summary,
        } = &**whole
        else {
            panic!("not request 1's roundrobin answer: {whole:?}");
        };
        let relayed: Vec<_> = events.iter().map(|e| (worker.clone(), e.clone())).collect();
        assert_eq!(relayed, relayed_answer("w1"));
        assert_eq!((summary.workers, summary.ok), (1, 1));

        // Frames that come one by one still go as `Routed`, replies, `Summary`.
        from_client(&shard, client, request(2, "rr", true)).await;
        let id = dispatched(&w1_out.take_frames());
        for frame in worker_answer(id) {
            from_worker(&shard, w1, frame).await;
        }
        let (events, summary) = answer(&out.take_frames(), 2);
        assert_eq!(events, relayed_answer("w1"));
        assert_eq!(summary.ok, 1);
    });
}

/// Events with more than `MERGE_BYTES` of payload are relayed one `Reply` each, so that the
/// relay stays within the client's frame limit whatever a worker merged.
#[test]
fn large_events_are_relayed_one_by_one() {
    let rr = service("rr", Algorithm::Roundrobin, &["w1", "w2"]);
    one_shard(vec![rr], |shard| async move {
        let ((chosen, id), _other, (_client, out)) = rr_request(&shard).await;
        let big = Event::Output {
            seq: 0,
            stream: Stream::Stdout,
            data: vec![b'x'; proto::MERGE_BYTES + 1],
        };
        let events = vec![Event::Accepted, big, Event::Done { exit_code: 0 }];
        let frame = Frame::Events {
            id,
            events: events.clone(),
        };
        from_worker(&shard, chosen.conn, frame).await;
        let (relayed, summary) = answer(&out.take_frames(), 1);
        let expected: Vec<_> = events
            .into_iter()
            .map(|e| (chosen.name.to_string(), e))
            .collect();
        assert_eq!(relayed, expected);
        assert_eq!(summary.ok, 1);
    });
}

/// An `Events` frame that is empty, or goes on after the run's end, is malformed: the
/// worker's connection is refused, and nothing reaches the client.
#[test]
fn events_frames_that_break_their_rules_are_refused() {
    let rr = service("rr", Algorithm::Roundrobin, &["w1", "w2"]);
    one_shard(vec![rr], |shard| async move {
        let ((chosen, id), _other, (_client, out)) = rr_request(&shard).await;
        let empty = Frame::Events {
            id,
            events: Vec::new(),
        };
        assert!(!shard.on_frame(chosen.conn, Role::Worker, empty));
        let after_the_end = Frame::Events {
            id,
            events: vec![Event::Done { exit_code: 0 }, Event::Accepted],
        };
        assert!(!shard.on_frame(chosen.conn, Role::Worker, after_the_end));
        shard.settle().await;
        assert!(
            !out.take_frames()
                .iter()
                .any(|f| matches!(f, Frame::Replies { .. } | Frame::Reply { .. })),
            "nothing was relayed"
        );
    });
}

/// Mirror sends to every worker and summarises them all.
#[test]
fn mirror_dispatches_to_all() {
    let names = ["w1", "w2", "w3"];
    one_shard(
        vec![service("m", Algorithm::Mirror, &names)],
        move |shard| async move {
            let workers: Vec<_> = names
                .iter()
                .map(|n| connect(&shard, n, Role::Worker))
                .collect();
            let (client, out) = connect(&shard, "c", Role::Client);
            from_client(&shard, client, request(1, "m", true)).await;
            let ids: Vec<u64> = workers
                .iter()
                .map(|(_, o)| dispatched(&o.take_frames()))
                .collect();
            for ((conn, _), id) in workers.iter().zip(ids) {
                from_worker(&shard, *conn, Frame::Done { id, exit_code: 0 }).await;
            }
            let (events, summary) = answer(&out.take_frames(), 1);
            let done: Vec<_> = names
                .iter()
                .map(|n| (n.to_string(), Event::Done { exit_code: 0 }))
                .collect();
            assert_eq!(events, done);
            assert_eq!(
                summary,
                Summary {
                    workers: 3,
                    ok: 3,
                    ..Summary::default()
                }
            );
        },
    );
}

/// A client's `Cancel` reaches the worker as `Cancel`, the client gets its summary, and
/// what the worker says about the dispatch afterwards is dropped.
#[test]
fn client_cancel_reaches_the_worker() {
    one_shard(Vec::new(), |shard| async move {
        let (w1, w1_out) = connect(&shard, "w1", Role::Worker);
        let (client, out) = connect(&shard, "c", Role::Client);
        from_client(&shard, client, request(5, "w1", true)).await;
        let id = dispatched(&w1_out.take_frames());
        from_worker(&shard, w1, Frame::Accepted { id }).await;
        from_client(&shard, client, Frame::Cancel { id: 5 }).await;
        assert_eq!(w1_out.take_frames(), vec![Frame::Cancel { id }]);
        let (events, summary) = answer(&out.take_frames(), 5);
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(matches!(
            events[1].1,
            Event::Failed {
                kind: proto::ErrorKind::Cancelled,
                ..
            }
        ));
        assert_eq!(summary.failed, 1);
        from_worker(&shard, w1, Frame::Done { id, exit_code: 0 }).await;
        assert!(out.take_frames().is_empty(), "nothing after the summary");
    });
}

/// A request's timeout cancels the worker and ends the request as timed out.
#[test]
fn timeout_cancels_and_summarises() {
    one_shard(Vec::new(), |shard| async move {
        let (_, w1_out) = connect(&shard, "w1", Role::Worker);
        let (client, out) = connect(&shard, "c", Role::Client);
        let Frame::Request(mut req) = request(3, "w1", true) else {
            unreachable!()
        };
        req.timeout_ms = 1;
        from_client(&shard, client, Frame::Request(req)).await;
        let id = dispatched(&w1_out.take_frames());
        glommio::timer::sleep(Duration::from_millis(5)).await;
        shard.tick().await;
        assert_eq!(w1_out.take_frames(), vec![Frame::Cancel { id }]);
        let (events, summary) = answer(&out.take_frames(), 3);
        assert!(
            matches!(
                events.as_slice(),
                [(
                    _,
                    Event::Failed {
                        kind: proto::ErrorKind::Timeout,
                        ..
                    }
                )]
            ),
            "{events:?}"
        );
        assert_eq!(summary.timed_out, 1);
    });
}

/// A worker that goes away before `Accepted` is replaced by the next candidate; one that
/// goes away after is reported lost.
#[test]
fn worker_lost_mid_request() {
    let rr = service("rr", Algorithm::Roundrobin, &["w1", "w2"]);
    one_shard(vec![rr], |shard| async move {
        let ((gone, _), other, (_, out)) = rr_request(&shard).await;
        shard.close_conn(gone.conn);
        shard.settle().await;
        let id = dispatched(&other.out.take_frames());
        assert!(out.take_frames().is_empty(), "fail-over is silent");

        from_worker(&shard, other.conn, Frame::Accepted { id }).await;
        shard.close_conn(other.conn);
        shard.settle().await;
        let (events, summary) = answer(&out.take_frames(), 1);
        assert!(
            matches!(
                events.as_slice(),
                [
                    (_, Event::Accepted),
                    (
                        _,
                        Event::Failed {
                            kind: proto::ErrorKind::WorkerLost,
                            ..
                        }
                    )
                ]
            ),
            "{events:?}"
        );
        assert_eq!(summary.lost, 1);
    });
}

/// A client that does not read is cut, never waited for: the worker's frames past the
/// client's byte bound end the client's request (the worker is told to cancel), the client
/// gets `SlowConsumer` alone (its backlog is dropped), and the worker stays.
#[test]
fn a_client_past_its_backlog_bound_is_cut_not_waited_for() {
    let rr = service("rr", Algorithm::Roundrobin, &["w1", "w2"]);
    one_shard(vec![rr], |shard| async move {
        let ((chosen, id), _other, (client, out)) = rr_request(&shard).await;
        out.bound_bytes(4096);
        from_worker(&shard, chosen.conn, Frame::Accepted { id }).await;
        let mut seq = 0;
        while shard.state.borrow().conns.get(client).is_some() {
            assert!(seq < 1000, "the client was never cut");
            let data = vec![b'x'; 200];
            let output = Frame::Output {
                id,
                seq,
                stream: Stream::Stdout,
                data,
            };
            // Never waits: the frames pile up for the client until its bound.
            from_worker(&shard, chosen.conn, output).await;
            seq += 1;
        }
        assert!(seq > 10, "cut only past the bound ({seq} frames)");
        match out.take_frames().as_slice() {
            [Frame::Error {
                id: None,
                kind: proto::ErrorKind::SlowConsumer,
                ..
            }] => {}
            other => panic!("expected SlowConsumer alone, got {other:?}"),
        }
        assert!(out.is_closed());
        assert_eq!(
            chosen.out.take_frames(),
            vec![Frame::Cancel { id }],
            "the worker is told to stop"
        );
        assert!(shard.state.borrow().conns.get(chosen.conn).is_some());
    });
}

/// Flow control: a client whose backlog passes its pause mark is not cut; the worker running
/// its request is told to pause that dispatch (once), and to resume it once the client's
/// backlog came down to its resume mark.
#[test]
fn a_client_past_its_pause_mark_pauses_its_worker_then_resumes_it() {
    let rr = service("rr", Algorithm::Roundrobin, &["w1", "w2"]);
    one_shard(vec![rr], |shard| async move {
        let ((chosen, id), _other, (client, out)) = rr_request(&shard).await;
        let marks = crate::conn::FlowMarks {
            pause_at: 4096,
            resume_at: 1024,
        };
        out.flow_control(marks, shard.env.budget.clone());
        from_worker(&shard, chosen.conn, Frame::Accepted { id }).await;
        for seq in 0..100 {
            let output = Frame::Output {
                id,
                seq,
                stream: Stream::Stdout,
                data: vec![b'x'; 200],
            };
            from_worker(&shard, chosen.conn, output).await;
        }
        assert!(shard.state.borrow().conns.get(client).is_some(), "not cut");
        assert!(out.is_paused());
        assert_eq!(
            chosen.out.take_frames(),
            vec![Frame::Pause { id }],
            "the worker is told to pause, once"
        );
        // The client reads: its backlog is gone, the worker is told to resume.
        assert!(out.take_frames().len() > 10);
        assert!(out.resumed().await);
        shard.flow_client(client, false);
        assert!(!out.is_paused());
        assert_eq!(chosen.out.take_frames(), vec![Frame::Resume { id }]);
    });
}
