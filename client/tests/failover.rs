//! A client given several broker addresses, or told of a cell's nodes, against the fake
//! brokers of `fake/mod.rs`: it connects to one that answers, ends every request in flight
//! with `BrokerLost` when that one is lost, and sends the next through another node.

#[allow(dead_code)] // the scripts other test files use
mod fake;

use client::nodes::MAX_LEARNED_NODES;
use client::{BrokerList, Client, ClientError, ClientEvent, RequestHandle, RequestSpec};
use fake::{fake_broker, roundrobin_script, Peer, DEADLINE, QUIET_HEARTBEAT_MS};
use proto::{Credential, ErrorKind, Frame};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

fn jwt() -> Credential {
    Credential::Jwt {
        token: "tok".to_string(),
    }
}

fn spec() -> RequestSpec {
    RequestSpec {
        service: "demo".into(),
        plugin: "command/command".into(),
        command: vec!["uptime".into()],
        ..RequestSpec::default()
    }
}

fn list(addrs: &[&str]) -> BrokerList {
    BrokerList::new(addrs).unwrap()
}

/// An address nothing listens on: a port that was just free (connections are refused).
async fn refusing_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The request's events to the end.
async fn all_events(handle: &mut RequestHandle) -> Vec<ClientEvent> {
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(DEADLINE, handle.next()).await.unwrap() {
        events.push(event);
    }
    events
}

fn error_kind(event: Option<&ClientEvent>) -> Option<ErrorKind> {
    match event {
        Some(ClientEvent::Error { kind, .. }) => Some(*kind),
        _ => None,
    }
}

/// A fake broker that welcomes the client, naming `nodes`, and then runs `then`.
async fn node<F, Fut>(nodes: Vec<String>, then: F) -> String
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (addr, _task) = fake_broker(move |mut peer: Peer| async move {
        peer.welcome_nodes(QUIET_HEARTBEAT_MS, nodes).await;
        then(peer).await;
    })
    .await;
    addr
}

/// Three addresses refuse connections, the fourth answers: whatever order the shuffle
/// picks, the client connects to it. With nothing answering, the error names every address
/// (exit status 3); one address alone gives its own error, as it always did.
#[tokio::test]
async fn fails_over_to_the_address_that_answers() {
    for _ in 0..5 {
        let (good, _broker) = fake_broker(roundrobin_script).await;
        let dead = [
            refusing_addr().await,
            refusing_addr().await,
            refusing_addr().await,
        ];
        let addrs = [
            dead[0].as_str(),
            dead[1].as_str(),
            good.as_str(),
            dead[2].as_str(),
        ];
        let client = Client::connect(&list(&addrs), jwt()).await.unwrap();
        assert_eq!(client.addr(), good);
        let events = all_events(&mut client.request(spec()).await.unwrap()).await;
        assert!(
            matches!(events.last(), Some(ClientEvent::Summary(_))),
            "{events:?}"
        );
    }
    let dead = [refusing_addr().await, refusing_addr().await];
    match Client::connect(&list(&[&dead[0], &dead[1]]), jwt()).await {
        Err(e @ ClientError::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&dead[0]) && text.contains(&dead[1]), "{text}");
            assert_eq!(e.exit_status(), 3);
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    match Client::connect(&list(&[&dead[0]]), jwt()).await {
        Err(e @ ClientError::Connect { .. }) => assert_eq!(e.exit_status(), 3),
        other => panic!("expected Connect, got {other:?}"),
    }
}

/// Nodes that accept connections and never answer (a wedged broker; a black-holed host
/// costs the same): the client does not wait out the handshake timeout (10 s) on each before
/// trying the next, but starts the next beside it after half a second, and keeps the first
/// that welcomes it. Whatever order the shuffle picks, it connects within a few seconds.
#[tokio::test]
async fn a_node_that_never_answers_is_passed_over_without_waiting_it_out() {
    // Bound and listening, never accepting: the kernel completes the TCP handshake, the
    // `Hello` is never read.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let silent_addrs: Vec<String> = silent
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    for _ in 0..4 {
        // A fake broker serves one connection.
        let (good, _broker) = fake_broker(roundrobin_script).await;
        let mut addrs: Vec<&str> = silent_addrs.iter().map(String::as_str).collect();
        addrs.push(&good);
        let brokers = list(&addrs);
        let connect = Client::connect(&brokers, jwt());
        let client = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .expect("waited out a silent node's handshake timeout")
            .unwrap();
        assert_eq!(client.addr(), good);
        let events = all_events(&mut client.request(spec()).await.unwrap()).await;
        assert!(
            matches!(events.last(), Some(ClientEvent::Summary(_))),
            "{events:?}"
        );
    }
}

/// A broker that refuses the credential is not passed over for the next: the refusal comes
/// back at once (every node of a cell would refuse it alike).
#[tokio::test]
async fn a_refused_credential_is_not_tried_elsewhere() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let n_hellos = Arc::new(AtomicUsize::new(0));
    let refuser = |n_hellos: Arc<AtomicUsize>| {
        move |mut peer: Peer| async move {
            peer.hello().await;
            n_hellos.fetch_add(1, Ordering::SeqCst);
            let refused = Frame::Refused {
                kind: ErrorKind::Unauthorized,
                reason: "bad token".into(),
            };
            peer.send(refused).await;
        }
    };
    let (a, _a) = fake_broker(refuser(n_hellos.clone())).await;
    let (b, _b) = fake_broker(refuser(n_hellos.clone())).await;
    match Client::connect(&list(&[&a, &b]), jwt()).await {
        Err(ClientError::Refused {
            kind: ErrorKind::Unauthorized,
            ..
        }) => {}
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(n_hellos.load(Ordering::SeqCst), 1, "one node was asked");
}

/// N requests in flight when the broker dies: N `BrokerLost`, none missing, each within a
/// bound, whether the socket closes (a killed process) or the broker goes silent (a dead
/// host: three heartbeats).
#[tokio::test]
async fn every_request_in_flight_ends_with_broker_lost() {
    const N: usize = 200;
    for silent in [false, true] {
        let heartbeat_ms = if silent { 50 } else { QUIET_HEARTBEAT_MS };
        let (addr, _broker) = fake_broker(move |mut peer: Peer| async move {
            peer.welcome(heartbeat_ms).await;
            for _ in 0..N {
                peer.request().await;
            }
            if silent {
                // Reads on (the socket stays open) but never answers nor beats again.
                while peer.reader.read_frame().await.is_ok() {}
            }
            // Else return: the socket closes with every request open.
        })
        .await;
        let client = Client::connect(&list(&[&addr]), jwt()).await.unwrap();
        let mut handles = Vec::new();
        for _ in 0..N {
            handles.push(client.request(spec()).await.unwrap());
        }
        let started = Instant::now();
        let ends = handles.into_iter().map(|mut handle| async move {
            let events = all_events(&mut handle).await;
            (events.len(), error_kind(events.last()), Instant::now())
        });
        let ends = futures_join(ends).await;
        let n_lost = ends
            .iter()
            .filter(|(n, kind, _)| *n == 1 && *kind == Some(ErrorKind::BrokerLost))
            .count();
        assert_eq!(n_lost, N, "silent: {silent}");
        let slowest = ends.iter().map(|(_, _, at)| *at - started).max().unwrap();
        // Closed: at once. Silent: three heartbeats of 50 ms, and a margin for a busy machine.
        assert!(
            slowest < Duration::from_secs(2),
            "silent: {silent}: {slowest:?}"
        );
        assert!(client.is_closed());
    }
}

/// Awaits every future, concurrently.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for task in tasks {
        outputs.push(task.await.unwrap());
    }
    outputs
}

/// Given one address, the client learns the cell's other node from `Welcome`; when its node
/// is lost, the next request goes through the other one.
#[tokio::test]
async fn nodes_from_welcome_are_where_the_next_request_goes() {
    let (second, _b) = fake_broker(roundrobin_script).await;
    let first = node(
        vec![String::new(), second.clone()],
        |mut peer: Peer| async move {
            peer.request().await;
            // Return: lost with the request open.
        },
    )
    .await;
    let client = Client::connect(&list(&[&first]), jwt()).await.unwrap();
    let mut nodes = client.nodes();
    nodes.sort();
    let mut want = vec![first.clone(), second.clone()];
    want.sort();
    assert_eq!(nodes, want, "the blank address is not kept");
    let events = all_events(&mut client.request(spec()).await.unwrap()).await;
    assert_eq!(error_kind(events.last()), Some(ErrorKind::BrokerLost));
    let mut next = client.request(spec()).await.unwrap();
    assert_eq!(next.broker(), second);
    let events = all_events(&mut next).await;
    assert!(
        matches!(events.last(), Some(ClientEvent::Summary(_))),
        "{events:?}"
    );
    assert_eq!(client.addr(), second);
}

/// A `Nodes` frame after `Welcome` is learned the same way.
#[tokio::test]
async fn nodes_announced_later_are_used_too() {
    let (second, _b) = fake_broker(roundrobin_script).await;
    let announced = second.clone();
    let first = node(vec![], move |mut peer: Peer| async move {
        peer.send(Frame::Nodes {
            nodes: vec![announced],
        })
        .await;
        let id = peer.request().await.id;
        // A final answer after `Nodes`: once the client has it, it has the list too.
        peer.send(Frame::Error {
            id: Some(id),
            kind: ErrorKind::NoSuchService,
            message: "no".into(),
        })
        .await;
        peer.request().await;
    })
    .await;
    let client = Client::connect(&list(&[&first]), jwt()).await.unwrap();
    let events = all_events(&mut client.request(spec()).await.unwrap()).await;
    assert_eq!(error_kind(events.last()), Some(ErrorKind::NoSuchService));
    assert!(client.nodes().contains(&second), "{:?}", client.nodes());
    let events = all_events(&mut client.request(spec()).await.unwrap()).await;
    assert_eq!(error_kind(events.last()), Some(ErrorKind::BrokerLost));
    let events = all_events(&mut client.request(spec()).await.unwrap()).await;
    assert!(
        matches!(events.last(), Some(ClientEvent::Summary(_))),
        "{events:?}"
    );
    assert_eq!(client.addr(), second);
}

/// A broker naming 10,000 nodes, then 1,000 more: the client keeps 64 of them (and its own
/// address), never more.
#[tokio::test]
async fn the_node_list_is_bounded() {
    let many = |from: usize, n: usize| -> Vec<String> {
        (from..from + n)
            .map(|i| format!("10.{}.{}.{}:5555", i / 65536 % 256, i / 256 % 256, i % 256))
            .collect()
    };
    let later = many(20_000, 1_000);
    let first = node(many(0, 10_000), move |mut peer: Peer| async move {
        let id = peer.request().await.id;
        peer.send(Frame::Nodes { nodes: later }).await;
        peer.send(Frame::Error {
            id: Some(id),
            kind: ErrorKind::NoSuchService,
            message: "no".into(),
        })
        .await;
        while peer.reader.read_frame().await.is_ok() {}
    })
    .await;
    let client = Client::connect(&list(&[&first]), jwt()).await.unwrap();
    let nodes = client.nodes();
    assert_eq!(nodes.len(), MAX_LEARNED_NODES + 1);
    assert_eq!(nodes[0], "10.0.0.0:5555");
    client.request(spec()).await.unwrap().collect().await;
    let nodes = client.nodes();
    assert_eq!(nodes.len(), MAX_LEARNED_NODES + 1);
    assert_eq!(nodes[0], many(20_000, 1)[0]);
}

/// A node closing with `ShuttingDown` (draining) or `Stale` (cut off from its control plane):
/// the requests end with that error, and the next one goes through another node.
#[tokio::test]
async fn a_draining_or_stale_node_is_left_for_another() {
    for kind in [ErrorKind::ShuttingDown, ErrorKind::Stale] {
        let (second, _b) = fake_broker(roundrobin_script).await;
        let first = node(vec![second.clone()], move |mut peer: Peer| async move {
            peer.request().await;
            peer.send(Frame::Error {
                id: None,
                kind,
                message: "bye".into(),
            })
            .await;
        })
        .await;
        let client = Client::connect(&list(&[&first]), jwt()).await.unwrap();
        let events = all_events(&mut client.request(spec()).await.unwrap()).await;
        assert_eq!(error_kind(events.last()), Some(kind));
        let events = all_events(&mut client.request(spec()).await.unwrap()).await;
        assert!(
            matches!(events.last(), Some(ClientEvent::Summary(_))),
            "{kind}: {events:?}"
        );
        assert_eq!(client.addr(), second);
    }
}

/// A node closing with `Revoked`: the credential is no good anywhere, so no node is tried
/// with it; a new credential connects again (to another node first).
#[tokio::test]
async fn a_revoked_credential_is_not_carried_to_another_node() {
    let (second, _b) = fake_broker(roundrobin_script).await;
    let first = node(vec![second.clone()], |mut peer: Peer| async move {
        peer.request().await;
        peer.send(Frame::Error {
            id: None,
            kind: ErrorKind::Revoked,
            message: "the token expired; log in again".into(),
        })
        .await;
    })
    .await;
    let client = Client::connect(&list(&[&first]), jwt()).await.unwrap();
    let events = all_events(&mut client.request(spec()).await.unwrap()).await;
    assert_eq!(error_kind(events.last()), Some(ErrorKind::Revoked));
    match client.request(spec()).await {
        Err(ClientError::Refused {
            kind: ErrorKind::Revoked,
            reason,
        }) => assert!(reason.contains("log in again"), "{reason}"),
        other => panic!("expected Refused(Revoked), got {other:?}"),
    }
    client.set_credential(Credential::Jwt {
        token: "fresh".into(),
    });
    let events = all_events(&mut client.request(spec()).await.unwrap()).await;
    assert!(
        matches!(events.last(), Some(ClientEvent::Summary(_))),
        "{events:?}"
    );
    assert_eq!(client.addr(), second);
}
