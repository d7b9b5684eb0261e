use super::*;

/// A client on shard 0 sends a request to a worker on shard 1, then cancels it, while the
/// channel 0 → 1 is full. The worker must see the `Dispatch`, then its `Cancel`: a cancel
/// that overtook its dispatch would find nothing to cancel, and the plugin would run on.
#[test]
fn cancel_never_overtakes_its_dispatch() {
    let ctl = Ctl::new(2).closed(1);
    run_shards(2, 1, FileConfig::default(), ctl, |shard, ctl| async move {
        if shard.env.idx == 1 {
            let (_, worker) = connect(&shard, "w1", Role::Worker);
            until(
                || ctl.received(1) >= 3,
                "filler, dispatch and cancel on shard 1",
            )
            .await;
            let got = worker.take_frames();
            let [Frame::Dispatch(dispatch), Frame::Cancel { id }] = got.as_slice() else {
                panic!("the worker got {got:?}, not a Dispatch and then its Cancel");
            };
            assert_eq!(*id, dispatch.id);
            ctl.set_step(1);
        } else {
            until(
                || shard.state.borrow().routing.registry.n_online() == 1,
                "w1 online",
            )
            .await;
            let (client, out) = connect(&shard, "c", Role::Client);
            // Fill the channel to shard 1, which takes nothing in yet.
            let filler = ShardMsg::Event {
                dispatch_id: 0,
                event: WorkerEvent::Lost,
            };
            assert!(shard
                .env
                .mesh
                .as_ref()
                .unwrap()
                .senders
                .try_send_to(1, filler)
                .is_ok());
            assert!(shard.on_frame(client, Role::Client, request(7, "w1", true)));
            assert!(shard.env.mesh.as_ref().unwrap().is_backlogged(1));
            // Shard 1 takes the filler in; this shard's tasks do not run meanwhile, so
            // the dispatch has not gone out yet when the cancel comes.
            ctl.open(1);
            block_until(|| ctl.received(1) >= 1, "shard 1 to take the filler");
            assert!(shard.on_frame(client, Role::Client, Frame::Cancel { id: 7 }));
            shard.settle().await;
            until(|| ctl.step() == 1, "shard 1's verdict").await;
            let got = out.take_frames();
            assert!(
                matches!(got.last(), Some(Frame::Summary { id: 7, .. })),
                "the client got {got:?}"
            );
        }
    });
}

/// A request from a client on shard 0 runs on a worker on shard 1: the dispatch crosses
/// once, the worker's frames cross back and reach the client in order.
#[test]
fn cross_shard_dispatch_and_events() {
    run_shards(
        2,
        16,
        FileConfig::default(),
        Ctl::new(2),
        |shard, ctl| async move {
            if shard.env.idx == 1 {
                let (w1, id) = worker_with_a_dispatch(&shard).await;
                assert_eq!(home_of(id), 0, "the dispatch id names its owner");
                for frame in worker_answer(id) {
                    from_worker(&shard, w1, frame).await;
                }
                until(|| ctl.step() == 1, "the client's answer").await;
            } else {
                let out = client_calling_w1(&shard).await;
                let got = frames(&out, 5, "the answer").await;
                let (events, summary) = answer(&got, 1);
                assert_eq!(events, relayed_answer("w1"));
                assert_eq!(summary.ok, 1);
                ctl.set_step(1);
            }
        },
    );
}

/// A worker's frames keep their order when the channel to the request's shard is full, and
/// the task reading the worker waits (backpressure) instead of queueing without bound.
#[test]
fn events_keep_their_order_past_a_full_channel() {
    const LINES: u64 = 100;
    run_shards(
        2,
        1,
        FileConfig::default(),
        Ctl::new(2),
        |shard, ctl| async move {
            if shard.env.idx == 1 {
                let (w1, id) = worker_with_a_dispatch(&shard).await;
                ctl.set_step(1);
                until(|| ctl.step() == 2, "shard 0 to stop taking messages in").await;
                let sent = Rc::new(Cell::new(0));
                let reader = {
                    let (shard, sent) = (shard.clone(), sent.clone());
                    glommio::spawn_local(async move {
                        for seq in 0..LINES {
                            let line = Frame::Output {
                                id,
                                seq,
                                stream: Stream::Stdout,
                                data: seq.to_string().into_bytes(),
                            };
                            from_worker(&shard, w1, line).await;
                            sent.set(seq + 1);
                        }
                        from_worker(&shard, w1, Frame::Done { id, exit_code: 0 }).await;
                    })
                };
                glommio::timer::sleep(Duration::from_millis(50)).await;
                assert!(sent.get() < 10, "the reader ran on: {} lines", sent.get());
                ctl.set_step(3);
                reader.await;
                until(|| ctl.step() == 4, "the client's answer").await;
            } else {
                let out = client_calling_w1(&shard).await;
                until(|| ctl.step() == 1, "the dispatch to arrive").await;
                ctl.close(0);
                ctl.set_step(2);
                until(|| ctl.step() == 3, "shard 1 to stall").await;
                ctl.open(0);
                let got = frames(&out, LINES as usize + 2, "the answer").await;
                let (events, summary) = answer(&got, 1);
                let seqs: Vec<u64> = events
                    .iter()
                    .filter_map(|(_, e)| match e {
                        Event::Output { seq, .. } => Some(*seq),
                        _ => None,
                    })
                    .collect();
                assert_eq!(seqs, (0..LINES).collect::<Vec<_>>());
                assert_eq!(
                    events.last().map(|e| &e.1),
                    Some(&Event::Done { exit_code: 0 })
                );
                assert_eq!(summary.ok, 1);
                ctl.set_step(4);
            }
        },
    );
}

/// Worker `w1` connects and gets a dispatch; returns its connection and the dispatch id.
async fn worker_with_a_dispatch(shard: &Shard) -> (u64, u64) {
    let (w1, worker) = connect(shard, "w1", Role::Worker);
    (w1, dispatched(&frames(&worker, 1, "the dispatch").await))
}

/// Once `w1` (on another shard) is known here, a client connects and sends request 1 to it;
/// returns the client's outbox.
async fn client_calling_w1(shard: &Shard) -> Rc<Outbox> {
    let online = || shard.state.borrow().routing.registry.n_online() == 1;
    until(online, "w1 online").await;
    let (client, out) = connect(shard, "c", Role::Client);
    from_client(shard, client, request(1, "w1", true)).await;
    out
}
