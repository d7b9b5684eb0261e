//! The frame reader and the outbox, on real sockets where it matters.

use super::outbox::SendError;
use super::*;
use futures_lite::AsyncWriteExt;
use glommio::{LocalExecutorBuilder, Placement};
use proto::ProtoError;
use std::sync::Arc;

fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .spawn(move || async move { f().await })
        .expect("executor")
        .join()
        .expect("test body");
}

fn frames(bytes: &mut BytesMut) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(frame) = proto::decode(bytes, proto::DEFAULT_MAX_FRAME).unwrap() {
        out.push(frame);
    }
    out
}

/// `depth` frames fit; the next sender waits until the writer takes the batch, then goes
/// on, in order; after `close` nothing more is queued and the writer drains what is left.
#[test]
fn outbox_is_bounded_ordered_and_drains_on_close() {
    run(|| async {
        let outbox = Rc::new(Outbox::new(3, proto::DEFAULT_MAX_FRAME));
        for id in 0..3 {
            outbox.try_send(&Frame::Cancel { id }).unwrap();
        }
        assert_eq!(
            outbox.try_send(&Frame::Cancel { id: 3 }),
            Err(SendError::Full)
        );
        assert_eq!(outbox.len(), 3);
        let waiting = {
            let outbox = outbox.clone();
            glommio::spawn_local(async move { outbox.send(&Frame::Cancel { id: 3 }).await })
        };
        glommio::executor().yield_now().await;
        assert_eq!(outbox.len(), 3, "the fourth sender waits for room");
        let mut batch = BytesMut::new();
        assert!(outbox.take(&mut batch).await);
        let expected: Vec<_> = (0..3).map(|id| Frame::Cancel { id }).collect();
        assert_eq!(frames(&mut batch), expected);
        assert_eq!(waiting.await, Ok(()), "the waiting sender got room");
        outbox.close();
        assert_eq!(outbox.try_send(&Frame::Heartbeat), Err(SendError::Closed));
        batch.clear();
        assert!(
            outbox.take(&mut batch).await,
            "what was queued before close is sent"
        );
        assert_eq!(frames(&mut batch), vec![Frame::Cancel { id: 3 }]);
        batch.clear();
        assert!(!outbox.take(&mut batch).await, "closed and drained");
    });
}

/// A connected pair on 127.0.0.1: (the peer's end, the broker's end).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = TcpStream::connect(addr).await.unwrap();
    let ours = listener.accept().await.unwrap();
    (peer, ours)
}

/// Finding 3: a prefix that claims the largest frame costs what arrived, not the claim;
/// a claim past the reader's limit (small before `Welcome`) is refused from the prefix.
#[test]
fn read_buffer_grows_with_bytes_received_not_with_the_claim() {
    run(|| async {
        let (mut peer, ours) = pair().await;
        let mut reader = FrameReader::new(
            SharedStream::new(Stream::Plain(ours)),
            proto::DEFAULT_MAX_FRAME,
        );
        let claim = (proto::DEFAULT_MAX_FRAME as u32).to_le_bytes();
        peer.write_all(&claim).await.unwrap();
        peer.write_all(&[7u8; 1000]).await.unwrap();
        let pending = futures_lite::future::or(async { Some(reader.read_frame().await) }, async {
            glommio::timer::sleep(std::time::Duration::from_millis(200)).await;
            None
        })
        .await;
        assert!(pending.is_none(), "the frame is incomplete");
        assert!(
            reader.capacity() <= 2 * READ_CHUNK + INITIAL_BUFFER,
            "{} bytes for 1,004 received",
            reader.capacity()
        );

        let (mut peer, ours) = pair().await;
        let mut reader = FrameReader::new(SharedStream::new(Stream::Plain(ours)), 8 * 1024);
        peer.write_all(&claim).await.unwrap();
        match reader.read_frame().await {
            Err(ReadError::Proto(ProtoError::Oversized { len, max })) => {
                assert_eq!((len, max), (proto::DEFAULT_MAX_FRAME, 8 * 1024))
            }
            other => panic!("expected Oversized, got {other:?}"),
        }

        // A frame that arrives in pieces still reads whole, and the buffer it grew is
        // given back once it is consumed.
        let (mut peer, ours) = pair().await;
        let mut reader = FrameReader::new(
            SharedStream::new(Stream::Plain(ours)),
            proto::DEFAULT_MAX_FRAME,
        );
        let big = Frame::Dispatch(
            proto::Dispatch {
                id: 1,
                service: "s".into(),
                plugin: "p".into(),
                command: Vec::new(),
                args: Vec::new(),
                payload: vec![9; 300_000],
                timeout_ms: 0,
                key: None,
            }
            .into(),
        );
        let bytes = proto::encode_to_vec(&big);
        let writer = glommio::spawn_local(async move {
            for chunk in bytes.chunks(50_000) {
                peer.write_all(chunk).await.unwrap();
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            }
            peer
        });
        assert_eq!(reader.read_frame().await.unwrap(), big);
        assert!(reader.capacity() <= KEEP_BUFFER, "{}", reader.capacity());
        drop(writer.await);
    });
}

/// A byte-bounded outbox never makes a sender wait; past its bound it says so, and a cut
/// drops the backlog and leaves only the final frame.
#[test]
fn a_byte_bounded_outbox_overflows_and_is_cut() {
    run(|| async {
        let outbox = Outbox::new(2, proto::DEFAULT_MAX_FRAME);
        outbox.bound_bytes(100);
        let mut last = Pushed::Room;
        for id in 0..20 {
            last = outbox.push(&Frame::Cancel { id }).unwrap();
            if last == Pushed::Overflow {
                break;
            }
            assert_eq!(
                last,
                Pushed::Room,
                "never Full: the frame count does not bound it"
            );
        }
        assert_eq!(last, Pushed::Overflow);
        assert!(outbox.backlog_bytes() > 100);
        let error = Frame::Error {
            id: None,
            kind: proto::ErrorKind::SlowConsumer,
            message: "m".into(),
        };
        outbox.cut(&error);
        assert!(outbox.is_closed());
        assert_eq!(outbox.push(&Frame::Heartbeat), Err(SendError::Closed));
        let mut batch = BytesMut::new();
        assert!(outbox.take(&mut batch).await);
        assert_eq!(frames(&mut batch), vec![error]);
    });
}

/// The clients' budget: outboxes count their bytes in one total; over it, a push pauses the
/// client it went to whatever its backlog, and one holding more than its share (the budget
/// over the clients) is over budget. A dropped outbox gives its bytes and its share back.
#[test]
fn client_outboxes_share_one_budget() {
    run(|| async {
        let budget = Arc::new(ClientBudget::new(3000));
        let marks = FlowMarks {
            pause_at: 1 << 20,
            resume_at: 1 << 18,
        };
        let (a, b) = (Outbox::new(2, 1 << 20), Outbox::new(2, 1 << 20));
        for outbox in [&a, &b] {
            outbox.bound_bytes(1 << 20);
            outbox.flow_control(marks, budget.clone());
        }
        let big = Frame::Output {
            id: 1,
            seq: 0,
            stream: proto::Stream::Stdout,
            data: vec![b'x'; 1000],
        };
        // Under the budget: room, however far from the pause mark.
        assert_eq!(a.push(&big).unwrap(), Pushed::Room);
        assert_eq!(a.push(&big).unwrap(), Pushed::Room);
        assert_eq!(budget.bytes(), a.backlog_bytes());
        // Over it, the small one (within its share of 1500) is paused, not cut ...
        assert_eq!(b.push(&big).unwrap(), Pushed::Pause);
        assert_eq!(
            b.push(&Frame::Cancel { id: 1 }).unwrap(),
            Pushed::Room,
            "once"
        );
        assert!(b.is_paused());
        // ... and the one over its share is.
        assert_eq!(a.push(&big).unwrap(), Pushed::OverBudget);
        assert_eq!(budget.bytes(), a.backlog_bytes() + b.backlog_bytes());
        drop(a);
        assert_eq!(budget.bytes(), b.backlog_bytes());
        // Its backlog written, the paused one resumes.
        let mut batch = BytesMut::new();
        assert!(b.take(&mut batch).await);
        batch.clear();
        // The writer finds nothing more to write (its take waits): the backlog is 0.
        assert!(futures_lite::future::or(b.take(&mut batch), b.resumed()).await);
        assert_eq!(budget.bytes(), 0);
    });
}
