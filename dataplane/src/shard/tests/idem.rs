//! Keyed requests: a replay of a key whose run ended is answered from the window without a
//! dispatch; the key is scoped by the caller; a run that did not end is routed again.

use super::*;
use crate::config::DEFAULT_TEAM;
use proto::IdemKey;

const KEY: IdemKey = IdemKey {
    source: [5; 16],
    seq: 42,
};

fn keyed(id: u64) -> Frame {
    let Frame::Request(request) = request(id, "rr", true) else {
        unreachable!()
    };
    Frame::Request(
        Request {
            key: Some(KEY),
            ..*request
        }
        .into(),
    )
}

/// The one `Dispatch` in `frames`, with its key.
fn dispatched_key(frames: &[Frame]) -> (u64, Option<IdemKey>) {
    match frames {
        [Frame::Dispatch(d)] => (d.id, d.key),
        other => panic!("expected one Dispatch, got {other:?}"),
    }
}

/// Worker `w1` serves roundrobin `rr`; client `alice` sends it keyed request 1. Returns the
/// worker, alice and the dispatch's id and key.
async fn keyed_request(
    shard: &Shard,
) -> ((u64, Rc<Outbox>), (u64, Rc<Outbox>), (u64, Option<IdemKey>)) {
    let (worker, w_out) = connect(shard, "w1", Role::Worker);
    let (alice, a_out) = connect(shard, "alice", Role::Client);
    from_client(shard, alice, keyed(1)).await;
    let dispatch = dispatched_key(&w_out.take_frames());
    ((worker, w_out), (alice, a_out), dispatch)
}

fn rr() -> Vec<ServiceConfig> {
    vec![service("rr", Algorithm::Roundrobin, &["w1"])]
}

#[test]
fn a_replay_is_answered_from_the_window_per_caller() {
    one_shard(rr(), |shard| async move {
        let ((worker, w_out), (_, a_out), (id, key)) = keyed_request(&shard).await;
        assert_eq!(
            key,
            Some(KEY.scoped(DEFAULT_TEAM, "alice")),
            "scoped to the caller"
        );
        for frame in worker_answer(id) {
            from_worker(&shard, worker, frame).await;
        }
        let (_, first) = answer(&a_out.take_frames(), 1);
        assert!(!first.replayed);

        // The replay, from another connection of the same caller: no dispatch.
        let (alice2, a2_out) = connect(&shard, "alice", Role::Client);
        from_client(&shard, alice2, keyed(9)).await;
        assert_eq!(w_out.len(), 0, "the replay was dispatched");
        let (events, summary) = answer(&a2_out.take_frames(), 9);
        assert_eq!(
            events,
            vec![
                ("w1".to_string(), Event::Accepted),
                ("w1".to_string(), Event::Done { exit_code: 0 })
            ]
        );
        assert_eq!(
            summary,
            Summary {
                replayed: true,
                ..first
            }
        );

        // Another caller with the same key is dispatched, under a key of its own.
        let (bob, _b_out) = connect(&shard, "bob", Role::Client);
        from_client(&shard, bob, keyed(1)).await;
        let (_, key) = dispatched_key(&w_out.take_frames());
        assert_eq!(key, Some(KEY.scoped(DEFAULT_TEAM, "bob")));
    });
}

#[test]
fn a_key_whose_run_did_not_end_is_routed_again() {
    one_shard(rr(), |shard| async move {
        let ((worker, w_out), (alice, a_out), (id, _)) = keyed_request(&shard).await;
        from_worker(&shard, worker, Frame::Accepted { id }).await;
        // A replay while the first is in flight goes to the worker (its window decides).
        from_client(&shard, alice, keyed(2)).await;
        let (id2, _) = dispatched_key(&w_out.take_frames());
        // Both cancelled: nothing is recorded.
        from_client(&shard, alice, Frame::Cancel { id: 1 }).await;
        from_client(&shard, alice, Frame::Cancel { id: 2 }).await;
        let cancels = w_out.take_frames();
        assert_eq!(
            cancels,
            vec![Frame::Cancel { id }, Frame::Cancel { id: id2 }]
        );
        a_out.take_frames();
        from_client(&shard, alice, keyed(3)).await;
        dispatched_key(&w_out.take_frames());
    });
}

/// A keyed roundrobin request goes where its key points, not to the rotation's turn: a
/// replay of a run that did not end reaches the worker whose window knows the key.
#[test]
fn a_replay_goes_to_the_worker_that_ran_its_key() {
    let two = vec![service("rr", Algorithm::Roundrobin, &["w1", "w2"])];
    one_shard(two, |shard| async move {
        let workers = ["w1", "w2"].map(|name| connect(&shard, name, Role::Worker));
        let (alice, a_out) = connect(&shard, "alice", Role::Client);
        let mut went_to = Vec::new();
        for id in 1..=4 {
            from_client(&shard, alice, keyed(id)).await;
            let (n, (_, out)) = workers
                .iter()
                .enumerate()
                .find(|(_, (_, out))| out.len() > 0)
                .expect("dispatched");
            out.take_frames();
            went_to.push(n);
            // Cancelled: not recorded, so the next one is routed again.
            from_client(&shard, alice, Frame::Cancel { id }).await;
            workers.iter().for_each(|(_, out)| drop(out.take_frames()));
            a_out.take_frames();
        }
        assert!(went_to.iter().all(|&n| n == went_to[0]), "{went_to:?}");
    });
}
