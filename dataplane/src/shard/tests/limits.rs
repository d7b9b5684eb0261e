//! A client's limits on one shard: open requests, request rate, the drain's refusal.

use super::*;
use proto::ErrorKind;

/// Runs `script` on one shard serving `rr` (roundrobin over `w1`) with `tweak`ed settings.
fn limited_shard<F, Fut>(tweak: fn(&mut BrokerSettings), script: F)
where
    F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let source: Arc<dyn ConfigSource> = Arc::new(FileConfig::from_services(vec![service(
        "rr",
        Algorithm::Roundrobin,
        &["w1"],
    )]));
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .spawn(move || async move {
            let mut s = settings(1, 1);
            tweak(&mut s);
            let shard = Rc::new(Shard::new(0, &Shared::new(s, source), None));
            script(shard).await;
        })
        .expect("executor")
        .join()
        .expect("shard script");
}

/// The kinds of the `Error { id }` frames in `frames`, by id.
fn refusals(frames: &[Frame]) -> Vec<(u64, ErrorKind)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Error {
                id: Some(id), kind, ..
            } => Some((*id, *kind)),
            _ => None,
        })
        .collect()
}

#[test]
fn requests_past_the_open_limit_are_refused_and_the_connection_stays() {
    limited_shard(
        |s| s.max_open_requests = 2,
        |shard| async move {
            let (worker, worker_out) = connect(&shard, "w1", Role::Worker);
            let (client, out) = connect(&shard, "c", Role::Client);
            for id in 1..=3 {
                from_client(&shard, client, request(id, "rr", true)).await;
            }
            let dispatches = frames(&worker_out, 2, "two dispatches").await;
            assert_eq!(
                refusals(&out.take_frames()),
                [(3, ErrorKind::TooManyRequests)]
            );
            // One ends: there is room for one more.
            let Frame::Dispatch(first) = &dispatches[0] else {
                panic!("{dispatches:?}")
            };
            for f in worker_answer(first.id) {
                from_worker(&shard, worker, f).await;
            }
            from_client(&shard, client, request(4, "rr", true)).await;
            from_client(&shard, client, request(5, "rr", true)).await;
            let got = frames(&out, 1, "frames").await;
            assert_eq!(refusals(&got), [(5, ErrorKind::TooManyRequests)]);
            assert!(shard.state.borrow().conns.get(client).is_some());
        },
    );
}

#[test]
fn requests_past_the_rate_are_refused() {
    limited_shard(
        |s| s.client_rate = Some("1/m".parse::<crate::ClientRate>().unwrap().with_burst(2)),
        |shard| async move {
            let (_worker, _worker_out) = connect(&shard, "w1", Role::Worker);
            let (client, out) = connect(&shard, "c", Role::Client);
            for id in 1..=4 {
                from_client(&shard, client, request(id, "rr", false)).await;
            }
            let got = frames(&out, 4, "frames").await;
            assert_eq!(
                refusals(&got),
                [(3, ErrorKind::RateLimited), (4, ErrorKind::RateLimited)]
            );
            assert!(shard.state.borrow().conns.get(client).is_some());
        },
    );
}

#[test]
fn a_draining_shard_refuses_new_requests() {
    limited_shard(
        |_| {},
        |shard| async move {
            let (_worker, _worker_out) = connect(&shard, "w1", Role::Worker);
            let (client, out) = connect(&shard, "c", Role::Client);
            shard.state.borrow_mut().draining = true;
            from_client(&shard, client, request(1, "rr", true)).await;
            let got = frames(&out, 1, "the refusal").await;
            assert_eq!(refusals(&got), [(1, ErrorKind::ShuttingDown)]);
        },
    );
}
