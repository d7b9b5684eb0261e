//! The client library and the `client` command against a tiny fake broker that speaks the
//! dataplane contract: Hello → Welcome/Refused, Request → Routed, Reply…, Summary or Error.

use client::command::{run_with, ClientArgs};
use client::connection::{split, FrameReader, FrameWriter};
use client::render::Console;
use client::{Client, ClientError, ClientEvent, RequestSpec, WorkerStatus};
use proto::{
    Algorithm, Credential, ErrorKind, Event, Frame, Hello, Request, Role, Stream, Summary,
    DEFAULT_MAX_FRAME,
};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every test finishes well within this; a hang fails instead of blocking CI.
const DEADLINE: Duration = Duration::from_secs(10);

/// Heartbeat interval for tests that are not about heartbeats: long enough never to fire.
const QUIET_HEARTBEAT_MS: u32 = 60_000;

/// The broker side of one accepted connection.
struct Peer {
    reader: FrameReader,
    writer: FrameWriter,
}

impl Peer {
    async fn hello(&mut self) -> Hello {
        match self.reader.read_frame().await.unwrap() {
            Frame::Hello(hello) => hello,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    async fn welcome(&mut self, heartbeat_ms: u32) {
        let hello = self.hello().await;
        assert_eq!(hello.role, Role::Client);
        assert_eq!(hello.protocol_version, proto::PROTOCOL_VERSION);
        self.send(Frame::Welcome {
            session: 7,
            heartbeat_ms,
        })
        .await;
    }

    async fn send(&mut self, frame: Frame) {
        self.writer.write_frame(&frame).await.unwrap();
    }

    /// The next frame that is not a heartbeat.
    async fn next(&mut self) -> Frame {
        loop {
            match self.reader.read_frame().await.unwrap() {
                Frame::Heartbeat => continue,
                frame => return frame,
            }
        }
    }

    async fn request(&mut self) -> Request {
        match self.next().await {
            Frame::Request(request) => request,
            other => panic!("expected Request, got {other:?}"),
        }
    }

    async fn reply(&mut self, id: u64, worker: &str, event: Event) {
        self.send(Frame::Reply {
            id,
            worker: worker.to_string(),
            event,
        })
        .await;
    }

    async fn output(&mut self, id: u64, worker: &str, seq: u64, stream: Stream, line: &str) {
        let data = line.as_bytes().to_vec();
        self.reply(id, worker, Event::Output { seq, stream, data })
            .await;
    }
}

/// Binds 127.0.0.1:0 and runs `script` on the first connection.
async fn fake_broker<F, Fut>(script: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (reader, writer) = split(stream, DEFAULT_MAX_FRAME);
        script(Peer { reader, writer }).await;
    });
    (addr, task)
}

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

async fn all_events(handle: &mut client::RequestHandle) -> Vec<ClientEvent> {
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(DEADLINE, handle.next()).await.unwrap() {
        events.push(event);
    }
    events
}

/// A one-worker roundrobin run: Routed, Accepted, one stdout and one stderr line, Done 0.
async fn roundrobin_script(mut peer: Peer) {
    peer.welcome(QUIET_HEARTBEAT_MS).await;
    let id = peer.request().await.id;
    peer.send(Frame::Routed {
        id,
        algorithm: Algorithm::Roundrobin,
        n_workers: 1,
    })
    .await;
    peer.reply(id, "demo01", Event::Accepted).await;
    peer.output(id, "demo01", 0, Stream::Stdout, " 21:14:07 up  8:26")
        .await;
    peer.output(id, "demo01", 1, Stream::Stderr, "warning: x")
        .await;
    peer.reply(id, "demo01", Event::Done { exit_code: 0 }).await;
    let summary = Summary {
        workers: 1,
        ok: 1,
        ..Summary::default()
    };
    peer.send(Frame::Summary { id, summary }).await;
    // Stay until the client hangs up.
    while peer.reader.read_frame().await.is_ok() {}
}

/// Mirror over three workers: w2 exits 0, w1 exits 3, w3 is lost.
async fn mirror_script(mut peer: Peer) {
    peer.welcome(QUIET_HEARTBEAT_MS).await;
    let id = peer.request().await.id;
    peer.send(Frame::Routed {
        id,
        algorithm: Algorithm::Mirror,
        n_workers: 3,
    })
    .await;
    for w in ["w1", "w2", "w3"] {
        peer.reply(id, w, Event::Accepted).await;
    }
    peer.output(id, "w1", 0, Stream::Stdout, "one").await;
    peer.output(id, "w2", 0, Stream::Stdout, "two").await;
    peer.reply(id, "w2", Event::Done { exit_code: 0 }).await;
    let lost = Event::Failed {
        kind: ErrorKind::WorkerLost,
        message: "worker went away".to_string(),
    };
    peer.reply(id, "w3", lost).await;
    peer.reply(id, "w1", Event::Done { exit_code: 3 }).await;
    let summary = Summary {
        workers: 3,
        ok: 1,
        failed: 1,
        timed_out: 0,
        lost: 1,
    };
    peer.send(Frame::Summary { id, summary }).await;
    while peer.reader.read_frame().await.is_ok() {}
}

async fn no_such_service_script(mut peer: Peer) {
    peer.welcome(QUIET_HEARTBEAT_MS).await;
    let id = peer.request().await.id;
    peer.send(Frame::Error {
        id: Some(id),
        kind: ErrorKind::NoSuchService,
        message: "no service `nope` in team t".to_string(),
    })
    .await;
    while peer.reader.read_frame().await.is_ok() {}
}

#[tokio::test]
async fn roundrobin_events_arrive_in_order_and_end() {
    let (addr, broker) = fake_broker(roundrobin_script).await;
    let client = Client::connect(&format!("tcp://{addr}"), jwt())
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

#[tokio::test]
async fn request_fields_reach_the_broker_and_ids_are_unique() {
    let (tx, rx) = oneshot::channel();
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        let hello = peer.hello().await;
        peer.send(Frame::Welcome {
            session: 1,
            heartbeat_ms: QUIET_HEARTBEAT_MS,
        })
        .await;
        let first = peer.request().await;
        let second = peer.request().await;
        tx.send((hello, first, second)).unwrap();
        while peer.reader.read_frame().await.is_ok() {}
    })
    .await;
    let client = Client::connect(&addr, jwt()).await.unwrap();
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
        }
    );
    assert_eq!((second.id, second.service.as_str()), (b.id(), "other"));
    assert_eq!(second.timeout_ms, 0);
    assert!(second.wait);
}

#[tokio::test]
async fn mirror_outcome_is_collected_in_finishing_order() {
    let (addr, _broker) = fake_broker(mirror_script).await;
    let client = Client::connect(&addr, jwt()).await.unwrap();
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
    let client = Client::connect(&addr, jwt()).await.unwrap();
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
    match Client::connect(&addr, jwt()).await {
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
async fn a_dropped_connection_ends_every_pending_request_with_disconnected() {
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
    let client = Client::connect(&addr, jwt()).await.unwrap();
    let mut a = client.request(spec("s")).await.unwrap();
    let mut b = client.request(spec("s")).await.unwrap();
    let events_a = all_events(&mut a).await;
    assert_eq!(events_a.len(), 3, "{events_a:?}");
    assert_eq!(events_a.last(), Some(&ClientEvent::Disconnected));
    assert_eq!(all_events(&mut b).await, vec![ClientEvent::Disconnected]);
    assert!(client.is_closed());
    assert!(matches!(
        client.request(spec("s")).await,
        Err(ClientError::Disconnected)
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
    let client = Client::connect(&addr, jwt()).await.unwrap();
    let mut handle = client.request(spec("s")).await.unwrap();
    assert_eq!(
        all_events(&mut handle).await,
        vec![ClientEvent::Disconnected]
    );
}

#[tokio::test]
async fn cancel_reaches_the_broker() {
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        peer.welcome(QUIET_HEARTBEAT_MS).await;
        let id = peer.request().await.id;
        peer.reply(id, "w", Event::Accepted).await;
        assert_eq!(peer.next().await, Frame::Cancel { id });
        let cancelled = Event::Failed {
            kind: ErrorKind::Cancelled,
            message: "cancelled by client".into(),
        };
        peer.reply(id, "w", cancelled).await;
        let summary = Summary {
            workers: 1,
            failed: 1,
            ..Summary::default()
        };
        peer.send(Frame::Summary { id, summary }).await;
        while peer.reader.read_frame().await.is_ok() {}
    })
    .await;
    let client = Client::connect(&addr, jwt()).await.unwrap();
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
    let client = Client::connect(&addr, jwt()).await.unwrap();
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
    let client = Client::connect(&addr, jwt()).await.unwrap();
    let mut handle = client.request(spec("s")).await.unwrap();
    assert_eq!(
        all_events(&mut handle).await,
        vec![ClientEvent::Disconnected]
    );
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
        peer.reply(id, "w", Event::Done { exit_code: 0 }).await;
        let summary = Summary {
            workers: 1,
            ok: 1,
            ..Summary::default()
        };
        peer.send(Frame::Summary { id, summary }).await;
        while peer.reader.read_frame().await.is_ok() {}
    })
    .await;
    let client = Client::connect(&addr, jwt()).await.unwrap();
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

// ---- the command ----

/// 2018/04/30 21:14:06 UTC, the seed's example time.
fn seed_clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_525_122_846)
}

fn args(addr: &str, extra: &[&str]) -> ClientArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        client: ClientArgs,
    }
    let argv = ["client", "--broker", addr, "--service", "demo"]
        .into_iter()
        .chain(["--plugin", "command/command"])
        .chain(extra.iter().copied());
    Cli::try_parse_from(argv).unwrap().client
}

struct Ran {
    status: Result<i32, ClientError>,
    out: String,
    err: String,
}

async fn run_command(args: ClientArgs, stdin: &str, interrupt: impl Future<Output = ()>) -> Ran {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let console = Console {
        out: &mut out,
        err: &mut err,
        err_is_terminal: false,
        clock: seed_clock,
    };
    let status = tokio::time::timeout(
        DEADLINE,
        run_with(args, stdin.as_bytes(), console, interrupt),
    )
    .await
    .unwrap();
    Ran {
        status,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

/// Splits off the last line, `Time ran: <Duration Debug>`, and checks its shape.
fn without_time_ran(out: &str) -> &str {
    let body = out.strip_suffix('\n').unwrap();
    let (head, last) = body.rsplit_once('\n').unwrap();
    let time = last
        .strip_prefix("Time ran: ")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        ["ns", "µs", "ms", "s"]
            .iter()
            .any(|unit| time.ends_with(unit)),
        "{time}"
    );
    head
}

#[tokio::test]
async fn command_renders_a_roundrobin_run_like_the_seed() {
    let (addr, _broker) = fake_broker(roundrobin_script).await;
    // No --command: it comes from stdin.
    let ran = run_command(args(&addr, &[]), "uptime\n", std::future::pending()).await;
    assert_eq!(ran.status.unwrap(), 0);
    assert_eq!(
        without_time_ran(&ran.out),
        "[command/command@demo01]  21:14:07 up  8:26\n\nExit code: 0\nTotal messages: 2"
    );
    assert_eq!(
        ran.err,
        "2018/04/30 21:14:06 Sending message to service demo (roundrobin)\n\
         [command/command@demo01] warning: x\n"
    );
}

#[tokio::test]
async fn command_renders_a_mirror_run_per_worker() {
    let (addr, _broker) = fake_broker(mirror_script).await;
    let ran = run_command(args(&addr, &["--command", "x"]), "", std::future::pending()).await;
    assert_eq!(ran.status.unwrap(), 1);
    assert_eq!(
        without_time_ran(&ran.out),
        "[command/command@w1] one\n\
         [command/command@w2] two\n\
         \n\
         Exit code [w2]: 0\n\
         Exit code [w3]: lost (WorkerLost: worker went away)\n\
         Exit code [w1]: 3\n\
         Summary: 3 workers, 1 ok, 1 failed, 0 timed out, 1 lost\n\
         Total messages: 2"
    );
    assert_eq!(
        ran.err,
        "2018/04/30 21:14:06 Sending message to service demo (mirror, 3 workers)\n"
    );
}

#[tokio::test]
async fn command_reports_a_request_level_error_with_status_2() {
    let (addr, _broker) = fake_broker(no_such_service_script).await;
    let ran = run_command(args(&addr, &["--command", "x"]), "", std::future::pending()).await;
    assert_eq!(ran.status.unwrap(), 2);
    assert_eq!(ran.out, "");
    assert_eq!(
        ran.err,
        "Error: NoSuchService: no service `nope` in team t\n"
    );
}

#[tokio::test]
async fn command_json_prints_one_document_and_nothing_else() {
    let (addr, _broker) = fake_broker(mirror_script).await;
    let ran = run_command(
        args(&addr, &["--command", "x", "--json"]),
        "",
        std::future::pending(),
    )
    .await;
    assert_eq!(ran.status.unwrap(), 1);
    assert_eq!(ran.err, "");
    let doc: serde_json::Value = serde_json::from_str(&ran.out).unwrap();
    assert_eq!(doc["service"], "demo");
    assert_eq!(doc["plugin"], "command/command");
    assert_eq!(doc["algorithm"], "mirror");
    assert_eq!(doc["total_messages"], 2);
    assert!(doc["time_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(doc["error"], serde_json::Value::Null);
    assert_eq!(
        doc["summary"],
        serde_json::json!({"workers": 3, "ok": 1, "failed": 1, "timed_out": 0, "lost": 1})
    );
    let workers = doc["workers"].as_array().unwrap();
    assert_eq!(
        workers[0],
        serde_json::json!({"worker": "w2", "exit_code": 0, "status": "ok", "error": null,
            "output": [{"stream": "stdout", "line": "two"}]})
    );
    assert_eq!(workers[1]["status"], "lost");
    assert_eq!(
        workers[1]["error"],
        serde_json::json!({"kind": "WorkerLost", "message": "worker went away"})
    );
    assert_eq!(workers[2]["exit_code"], 3);
    assert_eq!(workers[2]["status"], "failed");
}

#[tokio::test]
async fn command_no_wait_reports_queued() {
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        peer.welcome(QUIET_HEARTBEAT_MS).await;
        let request = peer.request().await;
        assert!(!request.wait);
        peer.send(Frame::Queued {
            id: request.id,
            n_workers: 3,
        })
        .await;
        while peer.reader.read_frame().await.is_ok() {}
    })
    .await;
    let ran = run_command(
        args(&addr, &["--command", "x", "--no-wait"]),
        "",
        std::future::pending(),
    )
    .await;
    assert_eq!(ran.status.unwrap(), 0);
    assert_eq!(ran.out, "Queued for 3 worker(s)\n");
    assert_eq!(ran.err, "");
}

#[tokio::test]
async fn command_interrupt_cancels_and_exits_130() {
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        peer.welcome(QUIET_HEARTBEAT_MS).await;
        let id = peer.request().await.id;
        peer.send(Frame::Routed {
            id,
            algorithm: Algorithm::Roundrobin,
            n_workers: 1,
        })
        .await;
        peer.reply(id, "w", Event::Accepted).await;
        peer.output(id, "w", 0, Stream::Stdout, "working").await;
        started_tx.send(()).unwrap();
        assert_eq!(peer.next().await, Frame::Cancel { id });
        let cancelled = Event::Failed {
            kind: ErrorKind::Cancelled,
            message: "cancelled by client".into(),
        };
        peer.reply(id, "w", cancelled).await;
        let summary = Summary {
            workers: 1,
            failed: 1,
            ..Summary::default()
        };
        peer.send(Frame::Summary { id, summary }).await;
        while peer.reader.read_frame().await.is_ok() {}
    })
    .await;
    // "Ctrl-C" once the plugin is running.
    let interrupt = async {
        started_rx.await.unwrap();
    };
    let ran = run_command(args(&addr, &["--command", "sleep 100"]), "", interrupt).await;
    assert_eq!(ran.status.unwrap(), 130);
    assert_eq!(
        without_time_ran(&ran.out),
        "[command/command@w] working\n\nExit code: cancelled (Cancelled: cancelled by client)\nTotal messages: 1"
    );
}

#[tokio::test]
async fn command_disconnect_mid_request_exits_3() {
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        peer.welcome(QUIET_HEARTBEAT_MS).await;
        let id = peer.request().await.id;
        peer.send(Frame::Routed {
            id,
            algorithm: Algorithm::Roundrobin,
            n_workers: 1,
        })
        .await;
        peer.reply(id, "w", Event::Accepted).await;
    })
    .await;
    let ran = run_command(args(&addr, &["--command", "x"]), "", std::future::pending()).await;
    assert_eq!(ran.status.unwrap(), 3);
    assert_eq!(
        without_time_ran(&ran.out),
        "\nExit code: unfinished\nTotal messages: 0"
    );
    assert!(
        ran.err
            .ends_with("Error: the connection to the broker dropped before the request ended\n"),
        "{}",
        ran.err
    );
}

#[tokio::test]
async fn command_cannot_reach_the_broker_exits_3() {
    // A port that was just free: nothing listens there.
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let ran = run_command(args(&addr, &["--command", "x"]), "", std::future::pending()).await;
    let err = ran.status.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert_eq!(err.exit_status(), 3);
    assert_eq!((ran.out.as_str(), ran.err.as_str()), ("", ""));
}
