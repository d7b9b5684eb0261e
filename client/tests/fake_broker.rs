//! The client library against the fake broker of `fake/mod.rs`.

mod fake;

use client::{BrokerList, Client, ClientError, ClientEvent, RequestSpec, WorkerStatus};
use fake::{answer_script, replies_script};
use fake::{fake_broker, mirror_script, no_such_service_script, roundrobin_script, Peer};
use fake::{DEADLINE, QUIET_HEARTBEAT_MS};
use proto::{Algorithm, Credential, ErrorKind, Event, Frame, Request, Stream, Summary};
use std::time::Duration;
use tokio::sync::oneshot;

fn jwt() -> Credential {
    Credential::Jwt {
        token: "tok".to_string(),
    }
}

fn spec(service: &str) -> RequestSpec {
    RequestSpec {
        service: service.to_string(),
        plugin: "command/command".to_string(),
        command: vec!["uptime".to_string()],
        ..RequestSpec::default()
    }
}

/// The kind of a request-level error event (`BrokerLost` for a lost connection).
fn error_kind(event: Option<&ClientEvent>) -> Option<ErrorKind> {
    match event {
        Some(ClientEvent::Error { kind, .. }) => Some(*kind),
        _ => None,
    }
}

/// Every event of one request to `demo` through the broker at `addr`.
async fn demo_events(addr: String) -> Vec<ClientEvent> {
    let client = Client::connect(&BrokerList::one(format!("tcp://{addr}")), jwt())
        .await
        .unwrap();
    let mut handle = client.request(spec("demo")).await.unwrap();
    all_events(&mut handle).await
}

async fn all_events(handle: &mut client::RequestHandle) -> Vec<ClientEvent> {
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(DEADLINE, handle.next()).await.unwrap() {
        events.push(event);
    }
    events
}

#[tokio::test]
async fn roundrobin_events_arrive_in_order_and_end() {
    let (addr, broker) = fake_broker(roundrobin_script).await;
    let client = Client::connect(&BrokerList::one(format!("tcp://{addr}")), jwt())
        .await
        .unwrap();
    assert_eq!(client.session(), 7);
    let mut handle = client.request(spec("demo")).await.unwrap();
    let events = all_events(&mut handle).await;
    assert_eq!(
        events,
        vec![
            ClientEvent::Routed {
                algorithm: Algorithm::Roundrobin,
                n_workers: 1
            },
            ClientEvent::Accepted {
                worker: "demo01".into()
            },
            ClientEvent::Output {
                worker: "demo01".into(),
                seq: 0,
                stream: Stream::Stdout,
                data: b" 21:14:07 up  8:26".to_vec()
            },
            ClientEvent::Output {
                worker: "demo01".into(),
                seq: 1,
                stream: Stream::Stderr,
                data: b"warning: x".to_vec()
            },
            ClientEvent::Done {
                worker: "demo01".into(),
                exit_code: 0
            },
            ClientEvent::Summary(Summary {
                workers: 1,
                ok: 1,
                ..Summary::default()
            }),
        ]
    );
    assert_eq!(handle.next().await, None, "nothing after the final event");
    drop((handle, client));
    tokio::time::timeout(DEADLINE, broker)
        .await
        .unwrap()
        .unwrap();
}

/// A `Replies` frame gives the client the events its single `Reply` frames would, in order;
/// an `Answer` frame those of `Routed`, the worker's replies and `Summary`.
#[tokio::test]
async fn a_replies_frame_gives_the_events_of_its_replies() {
    let events = demo_events;
    let singly = events(fake_broker(roundrobin_script).await.0).await;
    let at_once = events(fake_broker(replies_script).await.0).await;
    assert_eq!(singly.len(), 6, "{singly:?}");
    assert_eq!(at_once, singly);
    let answered = events(fake_broker(answer_script).await.0).await;
    assert_eq!(answered, singly);
}

/// A broker of protocol 7 refuses a `Hello` of 8 with `BadRequest`: the client says `Hello`
/// again in 7 on a new connection, and its requests work.
#[tokio::test]
async fn a_broker_of_the_previous_version_is_spoken_to_in_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let broker = tokio::spawn(async move {
        let mut versions = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (reader, writer) = client::connection::split(stream, proto::DEFAULT_MAX_FRAME);
            let mut peer = Peer { reader, writer };
            let hello = peer.hello().await;
            versions.push(hello.protocol_version);
            if hello.protocol_version != proto::MIN_PROTOCOL_VERSION {
                let reason = format!("unsupported protocol version {}", hello.protocol_version);
                let kind = ErrorKind::BadRequest;
                peer.send(Frame::Refused { kind, reason }).await;
                continue;
            }
            peer.send(Frame::Welcome {
                session: 7,
                heartbeat_ms: QUIET_HEARTBEAT_MS,
                nodes: vec![],
            })
            .await;
            let id = peer.route_and_accept("demo01").await;
            peer.finish_ok(id, "demo01").await;
            return versions;
        }
    });
    let events = demo_events(addr).await;
    assert_eq!(events.len(), 4, "{events:?}");
    let versions = tokio::time::timeout(DEADLINE, broker)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        versions,
        vec![proto::PROTOCOL_VERSION, proto::MIN_PROTOCOL_VERSION]
    );
}

#[tokio::test]
async fn request_fields_reach_the_broker_and_ids_are_unique() {
    let (tx, rx) = oneshot::channel();
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        let hello = peer.hello().await;
        peer.send(Frame::Welcome {
            session: 1,
            heartbeat_ms: QUIET_HEARTBEAT_MS,
            nodes: vec![],
        })
        .await;
        let first = peer.request().await;
        let second = peer.request().await;
        tx.send((hello, first, second)).unwrap();
        while peer.reader.read_frame().await.is_ok() {}
    })
    .await;
    let client = Client::connect(&BrokerList::one(&addr), jwt())
        .await
        .unwrap();
    let full = RequestSpec {
        args: vec![("k".into(), "v".into())],
        payload: b"bytes".to_vec(),
        timeout: Some(Duration::from_millis(1500)),
        wait: false,
        ..spec("svc")
    };
    let a = client.request(full).await.unwrap();
    let b = client.clone().request(spec("other")).await.unwrap();
    assert_ne!(a.id(), b.id());
    let (hello, first, second) = tokio::time::timeout(DEADLINE, rx).await.unwrap().unwrap();
    assert_eq!(hello.credential, jwt());
    assert_eq!(
        first,
        Request {
            id: a.id(),
            service: "svc".into(),
            plugin: "command/command".into(),
            command: vec!["uptime".into()],
            args: vec![proto::Arg {
                key: "k".into(),
                value: "v".into()
            }],
            payload: b"bytes".to_vec(),
            timeout_ms: 1500,
            wait: false,
            key: None,
            fleet: Default::default(),
            tag: None,
            trigger: None,
        }
    );
    assert_eq!((second.id, second.service.as_str()), (b.id(), "other"));
    assert_eq!(second.timeout_ms, 0);
    assert!(second.wait);
}

#[tokio::test]
async fn mirror_outcome_is_collected_in_finishing_order() {
    let (addr, _broker) = fake_broker(mirror_script).await;
    let client = Client::connect(&BrokerList::one(&addr), jwt())
        .await
        .unwrap();
    let handle = client.request(spec("fleet")).await.unwrap();
    let outcome = tokio::time::timeout(DEADLINE, handle.collect())
        .await
        .unwrap();
    assert_eq!(outcome.algorithm, Some(Algorithm::Mirror));
    let workers: Vec<_> = outcome
        .workers
        .iter()
        .map(|w| (w.worker.as_str(), w.status, w.exit_code))
        .collect();
    assert_eq!(
        workers,
        vec![
            ("w2", WorkerStatus::Ok, Some(0)),
            ("w3", WorkerStatus::Lost, None),
            ("w1", WorkerStatus::Failed, Some(3)),
        ]
    );
    assert_eq!(outcome.total_messages, 2);
    assert_eq!(outcome.workers[2].output[0].line, "one");
    assert_eq!(outcome.summary.unwrap().lost, 1);
    assert_eq!(outcome.exit_status(), 1);
}

#[tokio::test]
async fn a_request_level_error_is_final() {
    let (addr, _broker) = fake_broker(no_such_service_script).await;
    let client = Client::connect(&BrokerList::one(&addr), jwt())
        .await
        .unwrap();
    let mut handle = client.request(spec("nope")).await.unwrap();
    assert_eq!(
        all_events(&mut handle).await,
        vec![ClientEvent::Error {
            kind: ErrorKind::NoSuchService,
            message: "no service `nope` in team t".into()
        }]
    );
    // The connection survives a request-level error.
    assert!(!client.is_closed());
}

#[tokio::test]
async fn a_refused_hello_is_an_error() {
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        peer.hello().await;
        peer.send(Frame::Refused {
            kind: ErrorKind::Forbidden,
            reason: "token expired".into(),
        })
        .await;
    })
    .await;
    match Client::connect(&BrokerList::one(&addr), jwt()).await {
        Err(err @ ClientError::Refused { .. }) => {
            assert!(matches!(
                &err,
                ClientError::Refused { kind: ErrorKind::Forbidden, reason } if reason == "token expired"
            ));
            assert_eq!(err.exit_status(), 2);
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn a_dropped_connection_ends_every_pending_request_with_broker_lost() {
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        peer.welcome(QUIET_HEARTBEAT_MS).await;
        let a = peer.request().await.id;
        let _b = peer.request().await.id;
        peer.send(Frame::Routed {
            id: a,
            algorithm: Algorithm::Roundrobin,
            n_workers: 1,
        })
        .await;
        peer.reply(a, "w", Event::Accepted).await;
        // Return: the socket closes mid-request.
    })
    .await;
    let client = Client::connect(&BrokerList::one(&addr), jwt())
        .await
        .unwrap();
    let mut a = client.request(spec("s")).await.unwrap();
    let mut b = client.request(spec("s")).await.unwrap();
    let events_a = all_events(&mut a).await;
    assert_eq!(events_a.len(), 3, "{events_a:?}");
    assert_eq!(error_kind(events_a.last()), Some(ErrorKind::BrokerLost));
    let ClientEvent::Error { message, .. } = &events_a[2] else {
        unreachable!()
    };
    assert!(message.contains(&addr), "the node is named: {message}");
    let events_b = all_events(&mut b).await;
    assert_eq!(events_b.len(), 1, "{events_b:?}");
    assert_eq!(error_kind(events_b.last()), Some(ErrorKind::BrokerLost));
    assert!(client.is_closed());
    // Not on this connection; and connecting again finds nobody there.
    assert!(matches!(
        client.request_on_current(spec("s")).await,
        Err(ClientError::Disconnected)
    ));
    assert!(matches!(
        client.request(spec("s")).await,
        Err(ClientError::Connect { .. })
    ));
}

#[tokio::test]
async fn a_connection_level_error_disconnects() {
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        peer.welcome(QUIET_HEARTBEAT_MS).await;
        peer.request().await;
        peer.send(Frame::Error {
            id: None,
            kind: ErrorKind::Malformed,
            message: "bad frame".into(),
        })
        .await;
        // A real broker closes here; this one stays to prove the client does not wait.
        while peer.reader.read_frame().await.is_ok() {}
    })
    .await;
    let client = Client::connect(&BrokerList::one(&addr), jwt())
        .await
        .unwrap();
    let mut handle = client.request(spec("s")).await.unwrap();
    let events = all_events(&mut handle).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(error_kind(events.last()), Some(ErrorKind::BrokerLost));
}

#[tokio::test]
async fn cancel_reaches_the_broker() {
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        peer.welcome(QUIET_HEARTBEAT_MS).await;
        let id = peer.request().await.id;
        peer.reply(id, "w", Event::Accepted).await;
        peer.answer_cancel(id, "w").await;
        while peer.reader.read_frame().await.is_ok() {}
    })
    .await;
    let client = Client::connect(&BrokerList::one(&addr), jwt())
        .await
        .unwrap();
    let mut handle = client.request(spec("s")).await.unwrap();
    assert!(matches!(
        handle.next().await,
        Some(ClientEvent::Accepted { .. })
    ));
    handle.cancel().await.unwrap();
    let events = all_events(&mut handle).await;
    assert!(
        matches!(
            &events[..],
            [
                ClientEvent::Failed {
                    kind: ErrorKind::Cancelled,
                    ..
                },
                ClientEvent::Summary(_)
            ]
        ),
        "{events:?}"
    );
}

#[tokio::test]
async fn the_client_sends_heartbeats() {
    let (tx, rx) = oneshot::channel();
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        peer.welcome(20).await;
        let Peer {
            mut reader,
            mut writer,
        } = peer;
        // Keep the heartbeat contract on our side too, or the client counts us as gone.
        tokio::spawn(async move {
            while writer.write_frame(&Frame::Heartbeat).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut n_heartbeats = 0;
        while n_heartbeats < 3 {
            match reader.read_frame().await.unwrap() {
                Frame::Heartbeat => n_heartbeats += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        tx.send(n_heartbeats).unwrap();
        while reader.read_frame().await.is_ok() {}
    })
    .await;
    let client = Client::connect(&BrokerList::one(&addr), jwt())
        .await
        .unwrap();
    assert_eq!(client.heartbeat(), Duration::from_millis(20));
    let n = tokio::time::timeout(DEADLINE, rx).await.unwrap().unwrap();
    assert_eq!(n, 3);
    // Well past the 60 ms silence limit, the connection is still up.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!client.is_closed());
}

#[tokio::test]
async fn a_silent_broker_counts_as_gone() {
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        peer.welcome(20).await;
        peer.request().await;
        // Read (and so keep the socket open) but never send anything.
        while peer.reader.read_frame().await.is_ok() {}
    })
    .await;
    let client = Client::connect(&BrokerList::one(&addr), jwt())
        .await
        .unwrap();
    let mut handle = client.request(spec("s")).await.unwrap();
    let events = all_events(&mut handle).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(error_kind(events.last()), Some(ErrorKind::BrokerLost));
}

#[tokio::test]
async fn a_slow_consumer_pushes_back_on_the_broker_and_loses_nothing() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    // 4000 lines of 16 KiB = 64 MiB: far more than the per-request channel (256 events) plus
    // loopback socket buffers hold, so an unread request must stall the broker's writes.
    const N_LINES: u64 = 4000;
    let line = "x".repeat(16 * 1024);
    let n_written = Arc::new(AtomicU64::new(0));
    let written = Arc::clone(&n_written);
    let (addr, _broker) = fake_broker(move |mut peer: Peer| async move {
        peer.welcome(QUIET_HEARTBEAT_MS).await;
        let id = peer.request().await.id;
        for seq in 0..N_LINES {
            peer.output(id, "w", seq, Stream::Stdout, &line).await;
            written.store(seq + 1, Ordering::SeqCst);
        }
        peer.finish_ok(id, "w").await;
        while peer.reader.read_frame().await.is_ok() {}
    })
    .await;
    let client = Client::connect(&BrokerList::one(&addr), jwt())
        .await
        .unwrap();
    let mut handle = client.request(spec("s")).await.unwrap();

    // Wait until the broker's progress stops changing, without reading a single event.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = n_written.load(Ordering::SeqCst);
        if now == last || tokio::time::Instant::now() > deadline {
            break;
        }
        last = now;
    }
    assert!(
        last < N_LINES,
        "the broker wrote all {N_LINES} lines to a consumer that read none"
    );

    let mut n_lines = 0;
    let mut last_event = None;
    while let Some(event) = tokio::time::timeout(DEADLINE, handle.next()).await.unwrap() {
        if let ClientEvent::Output { seq, .. } = &event {
            assert_eq!(*seq, n_lines, "lines in order, none lost");
            n_lines += 1;
        }
        last_event = Some(event);
    }
    assert_eq!(n_lines, N_LINES);
    assert!(matches!(last_event, Some(ClientEvent::Summary(_))));
}
