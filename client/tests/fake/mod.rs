//! A tiny fake broker that speaks the dataplane contract: Hello → Welcome/Refused,
//! Request → Routed, Reply…, Summary or Error. Shared by the library's tests
//! (`client/tests/fake_broker.rs`) and the `triggerfs client` command's tests in the binary
//! (`cli/src/client_cmd/fake_broker_tests.rs`, which includes this file by path).

use client::connection::{split, FrameReader, FrameWriter};
use proto::{
    Algorithm, ErrorKind, Event, Frame, Hello, Request, Role, Stream, Summary, DEFAULT_MAX_FRAME,
};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Every test finishes well within this; a hang fails instead of blocking CI.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Heartbeat interval for tests that are not about heartbeats: long enough never to fire.
pub const QUIET_HEARTBEAT_MS: u32 = 60_000;

/// The broker side of one accepted connection.
pub struct Peer {
    pub reader: FrameReader,
    pub writer: FrameWriter,
}

impl Peer {
    pub async fn hello(&mut self) -> Hello {
        match self.reader.read_frame().await.unwrap() {
            Frame::Hello(hello) => hello,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    pub async fn welcome(&mut self, heartbeat_ms: u32) {
        self.welcome_nodes(heartbeat_ms, vec![]).await;
    }

    /// `Welcome` naming the cell's `nodes`.
    pub async fn welcome_nodes(&mut self, heartbeat_ms: u32, nodes: Vec<String>) {
        let hello = self.hello().await;
        assert_eq!(hello.role, Role::Client);
        assert_eq!(hello.protocol_version, proto::PROTOCOL_VERSION);
        self.send(Frame::Welcome {
            session: 7,
            heartbeat_ms,
            nodes,
        })
        .await;
    }

    pub async fn send(&mut self, frame: Frame) {
        self.writer.write_frame(&frame).await.unwrap();
    }

    /// The next frame that is not a heartbeat.
    pub async fn next(&mut self) -> Frame {
        loop {
            match self.reader.read_frame().await.unwrap() {
                Frame::Heartbeat => continue,
                frame => return frame,
            }
        }
    }

    pub async fn request(&mut self) -> Request {
        match self.next().await {
            Frame::Request(request) => *request,
            other => panic!("expected Request, got {other:?}"),
        }
    }

    pub async fn reply(&mut self, id: u64, worker: &str, event: Event) {
        self.send(Frame::Reply {
            id,
            worker: worker.to_string(),
            event,
        })
        .await;
    }

    pub async fn output(&mut self, id: u64, worker: &str, seq: u64, stream: Stream, line: &str) {
        let data = line.as_bytes().to_vec();
        self.reply(id, worker, Event::Output { seq, stream, data })
            .await;
    }
}

impl Peer {
    /// Welcome, the request, `Routed` (roundrobin, one worker) and `Accepted` from `worker`;
    /// returns the request's id.
    pub async fn accept_roundrobin(&mut self, worker: &str) -> u64 {
        self.welcome(QUIET_HEARTBEAT_MS).await;
        self.route_and_accept(worker).await
    }

    /// The request, `Routed` (roundrobin, one worker) and `Accepted` from `worker`; returns
    /// the request's id.
    pub async fn route_and_accept(&mut self, worker: &str) -> u64 {
        let id = self.request().await.id;
        self.send(Frame::Routed {
            id,
            algorithm: Algorithm::Roundrobin,
            n_workers: 1,
        })
        .await;
        self.reply(id, worker, Event::Accepted).await;
        id
    }

    /// `Done` with exit code 0 from `worker`, then the one-worker `Summary`.
    pub async fn finish_ok(&mut self, id: u64, worker: &str) {
        self.reply(id, worker, Event::Done { exit_code: 0 }).await;
        let summary = Summary {
            workers: 1,
            ok: 1,
            ..Summary::default()
        };
        self.send(Frame::Summary { id, summary }).await;
    }

    /// Waits for the client's `Cancel` of `id`, then ends the request as a broker does when
    /// `worker` stopped its plugin.
    pub async fn answer_cancel(&mut self, id: u64, worker: &str) {
        assert_eq!(self.next().await, Frame::Cancel { id });
        let cancelled = Event::Failed {
            kind: ErrorKind::Cancelled,
            message: "cancelled by client".into(),
        };
        self.reply(id, worker, cancelled).await;
        let summary = Summary {
            workers: 1,
            failed: 1,
            ..Summary::default()
        };
        self.send(Frame::Summary { id, summary }).await;
    }
}

/// Binds 127.0.0.1:0 and runs `script` on the first connection.
pub async fn fake_broker<F, Fut>(script: F) -> (String, JoinHandle<()>)
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

/// A one-worker roundrobin run: Routed, Accepted, one stdout and one stderr line, Done 0.
pub async fn roundrobin_script(mut peer: Peer) {
    let id = peer.accept_roundrobin("demo01").await;
    peer.output(id, "demo01", 0, Stream::Stdout, " 21:14:07 up  8:26")
        .await;
    peer.output(id, "demo01", 1, Stream::Stderr, "warning: x")
        .await;
    peer.finish_ok(id, "demo01").await;
    // Stay until the client hangs up.
    while peer.reader.read_frame().await.is_ok() {}
}

/// [`roundrobin_script`]'s answer with the worker's events after `Accepted` in one
/// `Replies` frame, as the broker relays a worker's `Events`.
#[allow(dead_code)] // used by client/tests, not by the `client` command's tests
pub async fn replies_script(mut peer: Peer) {
    let id = peer.accept_roundrobin("demo01").await;
    let output = |seq, stream, line: &str| Event::Output {
        seq,
        stream,
        data: line.as_bytes().to_vec(),
    };
    peer.send(Frame::Replies {
        id,
        worker: "demo01".into(),
        events: vec![
            output(0, Stream::Stdout, " 21:14:07 up  8:26"),
            output(1, Stream::Stderr, "warning: x"),
            Event::Done { exit_code: 0 },
        ],
    })
    .await;
    let summary = Summary {
        workers: 1,
        ok: 1,
        ..Summary::default()
    };
    peer.send(Frame::Summary { id, summary }).await;
    while peer.reader.read_frame().await.is_ok() {}
}

/// [`roundrobin_script`]'s whole answer in one `Answer` frame (protocol 8), as the broker
/// sends a request that one worker answered at once.
#[allow(dead_code)] // used by client/tests, not by the `client` command's tests
pub async fn answer_script(mut peer: Peer) {
    peer.welcome(QUIET_HEARTBEAT_MS).await;
    let id = peer.request().await.id;
    let output = |seq, stream, line: &str| Event::Output {
        seq,
        stream,
        data: line.as_bytes().to_vec(),
    };
    let answer = proto::Answer {
        id,
        algorithm: Algorithm::Roundrobin,
        n_workers: 1,
        worker: "demo01".into(),
        events: vec![
            Event::Accepted,
            output(0, Stream::Stdout, " 21:14:07 up  8:26"),
            output(1, Stream::Stderr, "warning: x"),
            Event::Done { exit_code: 0 },
        ],
        summary: Summary {
            workers: 1,
            ok: 1,
            ..Summary::default()
        },
    };
    peer.send(Frame::Answer(Box::new(answer))).await;
    while peer.reader.read_frame().await.is_ok() {}
}

/// Mirror over three workers: w2 exits 0, w1 exits 3, w3 is lost.
pub async fn mirror_script(mut peer: Peer) {
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
        replayed: false,
        ..Default::default()
    };
    peer.send(Frame::Summary { id, summary }).await;
    while peer.reader.read_frame().await.is_ok() {}
}

pub async fn no_such_service_script(mut peer: Peer) {
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
