//! `run` against a fake broker written with tokio in the test.

use super::*;
use crate::runner::tests::{process_alive, wait_gone, write_plugin, TempDir};
use client::connection::{split, FrameReader, FrameWriter};
use proto::{Credential, Dispatch, ErrorKind, Frame, Stream, DEFAULT_MAX_FRAME};
use std::path::Path;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

struct FakeBroker {
    listener: TcpListener,
    addr: String,
}

struct BrokerConn {
    reader: FrameReader,
    writer: FrameWriter,
    /// The single frames of an `Events` frame not taken yet.
    expanded: std::collections::VecDeque<Frame>,
    /// `Events` frames read.
    events_frames: usize,
}

impl BrokerConn {
    fn new((reader, writer): (FrameReader, FrameWriter)) -> BrokerConn {
        BrokerConn {
            reader,
            writer,
            expanded: Default::default(),
            events_frames: 0,
        }
    }
}

impl FakeBroker {
    async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        FakeBroker { listener, addr }
    }

    /// Accepts the next connection and reads its `Hello`.
    async fn accept(&self) -> (BrokerConn, Credential) {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("worker did not connect")
            .unwrap();
        let mut conn = BrokerConn::new(split(stream, DEFAULT_MAX_FRAME));
        match conn.next().await {
            Frame::Hello(hello) => {
                assert_eq!(hello.protocol_version, proto::PROTOCOL_VERSION);
                assert_eq!(hello.role, proto::Role::Worker);
                (conn, hello.credential)
            }
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    /// Accepts, welcomes and checks the `Announce`.
    async fn accept_welcomed(&self, heartbeat_ms: u32) -> BrokerConn {
        let (mut conn, _) = self.accept().await;
        conn.send(Frame::Welcome {
            session: 1,
            heartbeat_ms,
            nodes: vec![],
        })
        .await;
        assert_eq!(
            conn.next().await,
            Frame::Announce {
                services: vec!["svc-a".into(), "svc-b".into()]
            }
        );
        conn
    }
}

impl BrokerConn {
    async fn send(&mut self, frame: Frame) {
        self.writer.write_frame(&frame).await.unwrap();
    }

    /// The next frame that is not a heartbeat; an `Events` frame's events come one by one,
    /// as the single frames they stand for (as the broker handles them).
    async fn next(&mut self) -> Frame {
        loop {
            if let Some(frame) = self.expanded.pop_front() {
                return frame;
            }
            let frame = tokio::time::timeout(WAIT, self.reader.read_frame())
                .await
                .expect("no frame from the worker")
                .expect("worker connection failed");
            match frame {
                Frame::Heartbeat => {}
                Frame::Events { id, events } => {
                    assert!(!events.is_empty(), "an empty Events frame");
                    self.events_frames += 1;
                    let frames = events
                        .into_iter()
                        .map(|event| Frame::from_worker_event(id, event));
                    self.expanded.extend(frames);
                }
                frame => return frame,
            }
        }
    }

    /// Frames up to and including the `Done`/`Failed` of one dispatch.
    async fn until_end(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next().await;
            let last = matches!(frame, Frame::Done { .. } | Frame::Failed { .. });
            frames.push(frame);
            if last {
                return frames;
            }
        }
    }
}

fn config(addr: &str, pluginspath: &Path) -> WorkerConfig {
    WorkerConfig {
        brokers: client::BrokerList::one(format!("tcp://{addr}")),
        team: "team1".into(),
        identity: "w1".into(),
        token: "secret".into(),
        pluginspath: pluginspath.to_path_buf(),
        services: vec!["svc-a".into(), "svc-b".into()],
        max_concurrency: 4,
        shell: crate::DEFAULT_SHELL.into(),
        reconnect_max: Duration::from_millis(200),
        debug: false,
        max_output: crate::DEFAULT_MAX_OUTPUT,
    }
}

fn dispatch(id: u64, plugin: &str) -> Frame {
    Frame::Dispatch(
        Dispatch {
            id,
            service: "svc-a".into(),
            plugin: plugin.into(),
            command: vec!["hi".into(), "there".into()],
            args: vec![],
            payload: vec![],
            timeout_ms: 0,
            key: None,
        }
        .into(),
    )
}

/// Starts `run` with a oneshot as its shutdown.
fn start(
    config: WorkerConfig,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), WorkerError>>,
) {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(run(config, async {
        let _ = stop_rx.await;
    }));
    (stop_tx, task)
}

async fn stop(
    stop_tx: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), WorkerError>>,
) {
    stop_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("run did not return after shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn serves_dispatches_and_reconnects() {
    let tmp = TempDir::new("run");
    plugins::install(tmp.path()).unwrap();
    write_plugin(
        tmp.path(),
        "greet/greet",
        "echo \"hello $TRIGGERFS_WORKER\"\necho warn >&2\nexit 2",
    );
    write_plugin(tmp.path(), "slow/slow", "sleep 300 &\necho $!\nsleep 300");
    let broker = FakeBroker::bind().await;
    let (stop_tx, task) = start(config(&broker.addr, tmp.path()));

    let (mut conn, credential) = {
        let (mut conn, credential) = broker.accept().await;
        conn.send(Frame::Welcome {
            session: 1,
            heartbeat_ms: 200,
            nodes: vec![],
        })
        .await;
        assert_eq!(
            conn.next().await,
            Frame::Announce {
                services: vec!["svc-a".into(), "svc-b".into()]
            }
        );
        (conn, credential)
    };
    assert_eq!(
        credential,
        Credential::Worker {
            team: "team1".into(),
            identity: "w1".into(),
            token: "secret".into()
        }
    );

    a_plugin_process_then_a_core_plugin(&mut conn).await;

    refused_and_cancelled_plugins(&mut conn).await;

    // Losing the broker kills running plugins; the worker comes back and serves again.
    conn.send(dispatch(5, "slow")).await;
    assert_eq!(conn.next().await, Frame::Accepted { id: 5 });
    let pid = match conn.next().await {
        Frame::Output { data, .. } => String::from_utf8(data).unwrap().parse::<i32>().unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(process_alive(pid));
    drop(conn);
    let dropped_at = Instant::now();
    let mut conn = broker.accept_welcomed(200).await;
    assert!(
        dropped_at.elapsed() < Duration::from_secs(2),
        "reconnect took {:?}",
        dropped_at.elapsed()
    );
    assert!(
        wait_gone(pid, Duration::from_secs(4)).await,
        "plugin survived the disconnect"
    );
    conn.send(dispatch(6, "echo")).await;
    assert_eq!(
        conn.until_end().await.last(),
        Some(&Frame::Done {
            id: 6,
            exit_code: 0
        })
    );

    stop(stop_tx, task).await;
}

/// A plugin process, then the core plugin `echo`.
async fn a_plugin_process_then_a_core_plugin(conn: &mut BrokerConn) {
    // A plugin process.
    conn.send(dispatch(1, "greet")).await;
    assert_eq!(
        conn.until_end().await,
        vec![
            Frame::Accepted { id: 1 },
            Frame::Output {
                id: 1,
                seq: 0,
                stream: Stream::Stdout,
                data: b"hello w1".to_vec()
            },
            Frame::Output {
                id: 1,
                seq: 1,
                stream: Stream::Stderr,
                data: b"warn".to_vec()
            },
            Frame::Done {
                id: 1,
                exit_code: 2
            },
        ]
    );

    // The core plugin `echo`, served inside the worker: its answer is ready at once, and
    // goes as one `Events` frame.
    let events_frames = conn.events_frames;
    conn.send(dispatch(2, "echo")).await;
    assert_eq!(
        conn.until_end().await,
        vec![
            Frame::Accepted { id: 2 },
            Frame::Output {
                id: 2,
                seq: 0,
                stream: Stream::Stdout,
                data: b"hi there".to_vec()
            },
            Frame::Done {
                id: 2,
                exit_code: 0
            },
        ]
    );
    assert_eq!(conn.events_frames, events_frames + 1);
}

/// A refused plugin name; a cancel over the wire kills the plugin's group.
async fn refused_and_cancelled_plugins(conn: &mut BrokerConn) {
    // A refused plugin name.
    conn.send(dispatch(3, "../../bin/sh")).await;
    match conn.next().await {
        Frame::Failed { id: 3, kind, .. } => assert_eq!(kind, ErrorKind::PluginNotFound),
        other => panic!("{other:?}"),
    }

    // Cancel over the wire kills the group.
    conn.send(dispatch(4, "slow")).await;
    assert_eq!(conn.next().await, Frame::Accepted { id: 4 });
    let pid = match conn.next().await {
        Frame::Output { data, .. } => String::from_utf8(data).unwrap().parse::<i32>().unwrap(),
        other => panic!("{other:?}"),
    };
    conn.send(Frame::Cancel { id: 4 }).await;
    match conn.next().await {
        Frame::Failed { id: 4, kind, .. } => assert_eq!(kind, ErrorKind::Cancelled),
        other => panic!("{other:?}"),
    }
    assert!(
        wait_gone(pid, Duration::from_secs(3)).await,
        "cancelled plugin's child survived"
    );
}

#[tokio::test]
async fn shutdown_kills_plugins_and_returns() {
    let tmp = TempDir::new("shutdown");
    write_plugin(tmp.path(), "slow/slow", "sleep 300 &\necho $!\nsleep 300");
    let broker = FakeBroker::bind().await;
    let (stop_tx, task) = start(config(&broker.addr, tmp.path()));
    let mut conn = broker.accept_welcomed(200).await;
    conn.send(dispatch(1, "slow")).await;
    assert_eq!(conn.next().await, Frame::Accepted { id: 1 });
    let pid = match conn.next().await {
        Frame::Output { data, .. } => String::from_utf8(data).unwrap().parse::<i32>().unwrap(),
        other => panic!("{other:?}"),
    };
    stop(stop_tx, task).await;
    assert!(
        wait_gone(pid, Duration::from_secs(1)).await,
        "plugin survived shutdown"
    );
    // The connection is closed.
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if conn.reader.read_frame().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open after shutdown");
}

#[tokio::test]
async fn heartbeats_and_silent_broker() {
    let tmp = TempDir::new("heartbeat");
    let broker = FakeBroker::bind().await;
    let (stop_tx, task) = start(config(&broker.addr, tmp.path()));
    let mut conn = broker.accept_welcomed(50).await;
    // The worker sends heartbeats every 50 ms.
    let frame = tokio::time::timeout(Duration::from_secs(1), conn.reader.read_frame())
        .await
        .expect("no heartbeat")
        .unwrap();
    assert_eq!(frame, Frame::Heartbeat);
    // We send nothing: after 3 × 50 ms the worker considers us gone and reconnects.
    let silent_from = Instant::now();
    let (_again, _) = broker.accept().await;
    let waited = silent_from.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    stop(stop_tx, task).await;
}

#[tokio::test]
async fn malformed_frame_means_reconnect() {
    let tmp = TempDir::new("malformed");
    plugins::install(tmp.path()).unwrap();
    let broker = FakeBroker::bind().await;
    let (stop_tx, task) = start(config(&broker.addr, tmp.path()));
    // Accept by hand, keeping a second handle on the socket for raw bytes.
    let (stream, _) = tokio::time::timeout(WAIT, broker.listener.accept())
        .await
        .unwrap()
        .unwrap();
    let std_stream = stream.into_std().unwrap();
    let mut raw = tokio::net::TcpStream::from_std(std_stream.try_clone().unwrap()).unwrap();
    let mut conn = BrokerConn::new(split(
        tokio::net::TcpStream::from_std(std_stream).unwrap(),
        DEFAULT_MAX_FRAME,
    ));
    assert!(matches!(conn.next().await, Frame::Hello(_)));
    conn.send(Frame::Welcome {
        session: 1,
        heartbeat_ms: 1000,
        nodes: vec![],
    })
    .await;
    assert!(matches!(conn.next().await, Frame::Announce { .. }));
    // A length prefix followed by bytes that are no archive of a Frame.
    let mut garbage = 8u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]);
    raw.write_all(&garbage).await.unwrap();
    // The worker drops this connection and comes back.
    let mut again = broker.accept_welcomed(1000).await;
    again.send(dispatch(1, "echo")).await;
    assert_eq!(
        again.until_end().await.last(),
        Some(&Frame::Done {
            id: 1,
            exit_code: 0
        })
    );
    drop(conn);
    stop(stop_tx, task).await;
}

#[tokio::test]
async fn refused_worker_backs_off() {
    let tmp = TempDir::new("refused");
    let broker = FakeBroker::bind().await;
    let (stop_tx, task) = start(config(&broker.addr, tmp.path()));
    let (mut conn, _) = broker.accept().await;
    conn.send(Frame::Refused {
        kind: ErrorKind::Forbidden,
        reason: "bad token".into(),
    })
    .await;
    let refused_at = Instant::now();
    let (mut conn2, _) = broker.accept().await;
    let waited = refused_at.elapsed();
    // reconnect_max is 200 ms: a refusal waits the full cap instead of 50 ms.
    assert!(
        waited >= Duration::from_millis(180),
        "retried after only {waited:?}"
    );
    conn2
        .send(Frame::Welcome {
            session: 3,
            heartbeat_ms: 1000,
            nodes: vec![],
        })
        .await;
    assert!(matches!(conn2.next().await, Frame::Announce { .. }));
    stop(stop_tx, task).await;
}

#[tokio::test]
async fn credentials_refused_for_long_end_the_worker() {
    let tmp = TempDir::new("refused-long");
    let broker = FakeBroker::bind().await;
    let (_stop_tx, mut task) = start(config(&broker.addr, tmp.path()));
    let started = Instant::now();
    let ended = loop {
        tokio::select! {
            ended = &mut task => break ended.unwrap(),
            (mut conn, _) = broker.accept() => {
                conn.send(Frame::Refused {
                    kind: ErrorKind::Unauthorized,
                    reason: "wrong token".into(),
                })
                .await;
            }
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
    let took = started.elapsed();
    assert!(
        took >= crate::REFUSED_GIVE_UP && took < crate::REFUSED_GIVE_UP + Duration::from_secs(2),
        "gave up after {took:?}"
    );
}

#[tokio::test]
async fn invalid_config_is_an_error() {
    let tmp = TempDir::new("config");
    let mut bad = config("127.0.0.1:1", tmp.path());
    bad.identity = "../x".into();
    let err = run(bad, std::future::pending()).await.unwrap_err();
    assert!(matches!(err, WorkerError::InvalidConfig { .. }), "{err}");
}

fn keyed(id: u64, plugin: &str, seq: u64) -> Frame {
    let Frame::Dispatch(d) = dispatch(id, plugin) else {
        unreachable!()
    };
    Frame::Dispatch(
        Dispatch {
            key: Some(proto::IdemKey {
                source: [3; 16],
                seq,
            }),
            ..*d
        }
        .into(),
    )
}

/// A keyed dispatch runs once: a replay while it runs waits for its end, a replay after it
/// (on a new connection: the broker restarted) gets its end at once; a cancelled run is
/// forgotten and runs again.
#[tokio::test]
async fn keyed_dispatches_run_once_across_reconnections() {
    let tmp = TempDir::new("idem");
    let marks = tmp.path().join("marks");
    write_plugin(
        tmp.path(),
        "mark/mark",
        &format!("echo ran >> {}\nsleep 0.3\nexit 4", marks.display()),
    );
    write_plugin(tmp.path(), "slow/slow", "sleep 300");
    let broker = FakeBroker::bind().await;
    let (stop_tx, task) = start(config(&broker.addr, tmp.path()));
    let mut conn = broker.accept_welcomed(200).await;

    conn.send(keyed(1, "mark", 1)).await;
    assert_eq!(conn.next().await, Frame::Accepted { id: 1 });
    conn.send(keyed(2, "mark", 1)).await;
    let mut frames = Vec::new();
    while frames
        .iter()
        .filter(|f| matches!(f, Frame::Done { .. }))
        .count()
        < 2
    {
        frames.push(conn.next().await);
    }
    for want in [
        Frame::Accepted { id: 2 },
        Frame::Done {
            id: 1,
            exit_code: 4,
        },
        Frame::Done {
            id: 2,
            exit_code: 4,
        },
    ] {
        assert!(frames.contains(&want), "{want:?} missing: {frames:?}");
    }
    drop(conn);

    let mut conn = broker.accept_welcomed(200).await;
    conn.send(keyed(3, "mark", 1)).await;
    assert_eq!(
        conn.until_end().await,
        vec![
            Frame::Accepted { id: 3 },
            Frame::Done {
                id: 3,
                exit_code: 4
            }
        ]
    );
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "ran\n");

    // Cancelled: forgotten, so the replay runs (and is cancelled) again.
    for id in [4, 5] {
        conn.send(keyed(id, "slow", 2)).await;
        assert_eq!(conn.next().await, Frame::Accepted { id });
        conn.send(Frame::Cancel { id }).await;
        let end = conn.until_end().await;
        assert!(
            matches!(end.last(), Some(Frame::Failed { id: i, kind: ErrorKind::Cancelled, .. }) if *i == id),
            "{end:?}"
        );
    }
    stop(stop_tx, task).await;
}

/// A worker whose write failed still reads why the broker closed: the `Error` it sent last.
#[tokio::test]
async fn a_failed_write_still_reads_the_brokers_last_word() {
    for said in [true, false] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (_reader, mut writer) = split(stream, DEFAULT_MAX_FRAME);
            writer.write_frame(&Frame::Heartbeat).await.unwrap();
            if said {
                let superseded = Frame::Error {
                    id: None,
                    kind: ErrorKind::Superseded,
                    message: "a newer connection of this identity".into(),
                };
                writer.write_frame(&superseded).await.unwrap();
            }
        });
        let (mut reader, _writer) = client::connection::connect(&addr).await.unwrap();
        server.await.unwrap();
        let word = crate::session::last_word(&mut reader).await;
        match (said, word) {
            (true, Some(WorkerError::Broker { kind, .. })) => {
                assert_eq!(kind, ErrorKind::Superseded)
            }
            (false, None) => {}
            (said, other) => panic!("said {said}: {other:?}"),
        }
    }
}

mod cell;
