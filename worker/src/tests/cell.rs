//! Several broker nodes: the sessions a worker keeps to its seeds and to the nodes of the
//! cell it learns, and what they share.

use super::*;

/// Welcomes `conn` with the cell's `nodes` and checks its `Announce`.
async fn welcome(conn: &mut BrokerConn, nodes: &[&String]) {
    conn.send(Frame::Welcome {
        session: 1,
        heartbeat_ms: 200,
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
    })
    .await;
    assert!(matches!(conn.next().await, Frame::Announce { .. }));
}

/// No connection arrives at `broker` within a while.
async fn no_connection(broker: &FakeBroker, what: &str) {
    let accepted = tokio::time::timeout(Duration::from_millis(400), broker.listener.accept()).await;
    assert!(accepted.is_err(), "{what}");
}

/// The worker closed `conn`.
async fn closed(conn: &mut BrokerConn, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.reader.read_frame()).await {
            Err(_) => panic!("{what}: still open"),
            Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

fn with_seeds(mut config: WorkerConfig, seeds: &[&String]) -> WorkerConfig {
    config.brokers = client::BrokerList::new(seeds).expect("a seed");
    config
}

/// One seed leads to every node of the cell; a node that leaves the list is dropped, an
/// empty list changes nothing, and a node listed under another name of a seed is not
/// connected to twice.
#[tokio::test]
async fn a_seed_leads_to_every_node_of_the_cell() {
    let tmp = TempDir::new("cell-seed");
    plugins::install(tmp.path()).unwrap();
    let (a, b, c) = (
        FakeBroker::bind().await,
        FakeBroker::bind().await,
        FakeBroker::bind().await,
    );
    // The seed by name, the list by address: one broker.
    let port = a.addr.rsplit_once(':').unwrap().1;
    let seed = format!("localhost:{port}");
    let (stop_tx, task) = start(with_seeds(config(&a.addr, tmp.path()), &[&seed]));
    let all = [&a.addr, &b.addr, &c.addr];
    let (mut conn_a, _) = a.accept().await;
    welcome(&mut conn_a, &all).await;
    let (mut conn_b, _) = b.accept().await;
    welcome(&mut conn_b, &all).await;
    let (mut conn_c, _) = c.accept().await;
    welcome(&mut conn_c, &all).await;
    no_connection(&a, "a second connection to the seed").await;

    // Each session serves its own broker.
    for conn in [&mut conn_a, &mut conn_b, &mut conn_c] {
        conn.send(dispatch(5, "echo")).await;
        let end = conn.until_end().await;
        assert_eq!(end.first(), Some(&Frame::Accepted { id: 5 }), "{end:?}");
        assert!(
            matches!(end.last(), Some(Frame::Done { id: 5, .. })),
            "{end:?}"
        );
    }

    // C leaves the cell (told through B): dropped. An empty list says nothing.
    conn_b
        .send(Frame::Nodes {
            nodes: vec![a.addr.clone(), b.addr.clone()],
        })
        .await;
    closed(&mut conn_c, "the session of a node that left").await;
    no_connection(&c, "a node that left the cell").await;
    conn_a.send(Frame::Nodes { nodes: vec![] }).await;
    conn_b.send(dispatch(6, "echo")).await;
    assert!(matches!(
        conn_b.until_end().await.last(),
        Some(Frame::Done { id: 6, .. })
    ));

    // C comes back into the list: connected again. B breaks: it is reconnected on its own.
    conn_a
        .send(Frame::Nodes {
            nodes: all.iter().map(|n| n.to_string()).collect(),
        })
        .await;
    let (mut conn_c, _) = c.accept().await;
    welcome(&mut conn_c, &all).await;
    drop(conn_b);
    let (mut conn_b, _) = b.accept().await;
    welcome(&mut conn_b, &all).await;
    conn_a.send(dispatch(7, "echo")).await;
    assert!(matches!(
        conn_a.until_end().await.last(),
        Some(Frame::Done { id: 7, .. })
    ));
    stop(stop_tx, task).await;
}

/// Dispatch ids are each broker's own: the same id through two nodes is two runs. The
/// plugin slots are the worker's: with one slot, the second waits for the first.
#[tokio::test]
async fn every_node_shares_the_slots_and_has_its_own_dispatch_ids() {
    let tmp = TempDir::new("cell-slots");
    write_plugin(tmp.path(), "slow/slow", "sleep 300");
    write_plugin(tmp.path(), "quick/quick", "echo quick");
    let (a, b) = (FakeBroker::bind().await, FakeBroker::bind().await);
    let mut config = with_seeds(config(&a.addr, tmp.path()), &[&a.addr, &b.addr]);
    config.max_concurrency = 1;
    let (stop_tx, task) = start(config);
    let (mut conn_a, _) = a.accept().await;
    welcome(&mut conn_a, &[]).await;
    let (mut conn_b, _) = b.accept().await;
    welcome(&mut conn_b, &[]).await;

    conn_a.send(dispatch(7, "slow")).await;
    assert_eq!(conn_a.next().await, Frame::Accepted { id: 7 });
    conn_b.send(dispatch(7, "quick")).await;
    let waited = tokio::time::timeout(Duration::from_millis(400), conn_b.next()).await;
    assert!(waited.is_err(), "ran without a slot: {waited:?}");
    conn_a.send(Frame::Cancel { id: 7 }).await;
    assert!(matches!(
        conn_a.until_end().await.last(),
        Some(Frame::Failed {
            id: 7,
            kind: ErrorKind::Cancelled,
            ..
        })
    ));
    let end = conn_b.until_end().await;
    assert_eq!(end.first(), Some(&Frame::Accepted { id: 7 }), "{end:?}");
    assert!(
        end.contains(&Frame::Done {
            id: 7,
            exit_code: 0
        }),
        "{end:?}"
    );
    stop(stop_tx, task).await;
}

/// A keyed dispatch resent through another node while it runs, or after, runs once.
#[tokio::test]
async fn a_keyed_dispatch_through_another_node_runs_once() {
    let tmp = TempDir::new("cell-idem");
    let marks = tmp.path().join("marks");
    write_plugin(
        tmp.path(),
        "mark/mark",
        &format!("echo ran >> {}\nsleep 0.3\nexit 4", marks.display()),
    );
    let (a, b) = (FakeBroker::bind().await, FakeBroker::bind().await);
    let (stop_tx, task) = start(with_seeds(config(&a.addr, tmp.path()), &[&a.addr]));
    let (mut conn_a, _) = a.accept().await;
    welcome(&mut conn_a, &[&a.addr, &b.addr]).await;
    let (mut conn_b, _) = b.accept().await;
    welcome(&mut conn_b, &[&a.addr, &b.addr]).await;

    conn_a.send(keyed(1, "mark", 9)).await;
    assert_eq!(conn_a.next().await, Frame::Accepted { id: 1 });
    // While it runs, through B (with B's own id, here the same number).
    conn_b.send(keyed(1, "mark", 9)).await;
    let done = Frame::Done {
        id: 1,
        exit_code: 4,
    };
    assert_eq!(
        conn_b.until_end().await,
        [Frame::Accepted { id: 1 }, done.clone()]
    );
    assert_eq!(conn_a.until_end().await.last(), Some(&done));
    // After, through B again: answered from the window.
    conn_b.send(keyed(2, "mark", 9)).await;
    assert_eq!(
        conn_b.until_end().await,
        [
            Frame::Accepted { id: 2 },
            Frame::Done {
                id: 2,
                exit_code: 4
            }
        ]
    );
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "ran\n");
    stop(stop_tx, task).await;
}

/// A node that refuses the worker's credentials is given up while another serves; the
/// worker ends when every node has refused it.
#[tokio::test]
async fn refused_by_every_node_ends_the_worker() {
    let tmp = TempDir::new("cell-refused");
    plugins::install(tmp.path()).unwrap();
    let (a, b) = (FakeBroker::bind().await, FakeBroker::bind().await);
    let (_stop_tx, mut task) = start(with_seeds(config(&a.addr, tmp.path()), &[&a.addr, &b.addr]));
    let refuse = |mut conn: BrokerConn| async move {
        conn.send(Frame::Refused {
            kind: ErrorKind::Unauthorized,
            reason: "wrong token".into(),
        })
        .await;
    };
    let (mut conn_b, _) = b.accept().await;
    welcome(&mut conn_b, &[]).await;
    // A refuses for longer than the worker waits; B serves meanwhile.
    let until = Instant::now() + crate::REFUSED_GIVE_UP + Duration::from_secs(1);
    while Instant::now() < until {
        tokio::select! {
            ended = &mut task => panic!("the worker ended while a node served: {ended:?}"),
            (conn, _) = a.accept() => refuse(conn).await,
            // B's heartbeats keep its session (the worker drops a silent broker).
            () = tokio::time::sleep(Duration::from_millis(50)) => conn_b.send(Frame::Heartbeat).await,
        }
    }
    conn_b.send(dispatch(3, "echo")).await;
    assert!(matches!(
        conn_b.until_end().await.last(),
        Some(Frame::Done { id: 3, .. })
    ));
    // Then B refuses too: the worker ends.
    drop(conn_b);
    let ended = loop {
        tokio::select! {
            ended = &mut task => break ended.unwrap(),
            (conn, _) = b.accept() => refuse(conn).await,
        }
    };
    assert!(
        matches!(
            ended,
            Err(WorkerError::Refused {
                kind: ErrorKind::Unauthorized,
                ..
            })
        ),
        "{ended:?}"
    );
    no_connection(&a, "a node given up on").await;
}
