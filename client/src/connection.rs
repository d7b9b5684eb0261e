//! A tokio connection to the broker: frames in, frames out.
//!
//! The one place outside the broker that touches a dataplane socket; the worker, the fs
//! module and the benchmarks all use it.

use bytes::BytesMut;
use proto::{Frame, ProtoError, DEFAULT_MAX_FRAME};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;

/// What can go wrong on a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The socket failed.
    #[error("connection to the broker failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that are not a frame.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The peer closed the connection.
    #[error("the broker closed the connection")]
    Closed,
    /// A plaintext connection was answered in TLS: the broker needs `tls://`.
    #[error(
        "the broker speaks TLS: connect with tls://host:port (and --ca FILE or [main] ca for its CA)"
    )]
    TlsRequired,
    /// The TLS handshake failed (unknown CA, wrong name, no client certificate, ...).
    #[error("TLS handshake with the broker failed: {0}")]
    Tls(io::Error),
    /// The address is not `host:port`, `tcp://host:port` or `tls://host:port`.
    #[error("bad broker address {addr}: {reason}")]
    Address {
        /// The address given.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// The read side of a broker socket: plaintext (the halves of a `TcpStream`, no lock) or TLS
/// (the halves of one TLS stream).
#[derive(Debug)]
enum ReadSide {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The write side, as [`ReadSide`].
#[derive(Debug)]
enum WriteSide {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Plain(half) => Pin::new(half).poll_read(cx, buf),
            ReadSide::Tls(half) => Pin::new(half).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Plain(half) => Pin::new(half).poll_write(cx, buf),
            WriteSide::Tls(half) => Pin::new(half).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Plain(half) => Pin::new(half).poll_flush(cx),
            WriteSide::Tls(half) => Pin::new(half).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Plain(half) => Pin::new(half).poll_shutdown(cx),
            WriteSide::Tls(half) => Pin::new(half).poll_shutdown(cx),
        }
    }
}

/// Reads frames from one half of a socket.
#[derive(Debug)]
pub struct FrameReader {
    half: ReadSide,
    buf: BytesMut,
    max_frame: usize,
    /// Nothing has been read yet on a plaintext socket: bytes that open a TLS record mean
    /// the broker wants TLS ([`ConnectionError::TlsRequired`]).
    first_read: bool,
}

/// Writes frames to the other half, buffered; call [`FrameWriter::flush`] after a batch.
///
/// Frames are encoded straight into the buffer the socket write takes (no second copy
/// through a `BufWriter`).
#[derive(Debug)]
pub struct FrameWriter {
    half: WriteSide,
    buf: BytesMut,
    max_frame: usize,
    last_flush: Instant,
}

/// Buffered bytes past which [`FrameWriter::feed`] writes them out before going on.
const WRITE_BATCH: usize = 64 * 1024;

/// A writer that flushed this recently is under load: it waits one pass of the scheduler
/// before the next flush, so that one `send(2)` carries a whole burst.
const BUSY_WITHIN: std::time::Duration = std::time::Duration::from_micros(50);

/// Strips `tcp://` or `tls://` from an address as the seed's config writes it
/// (`tcp://host:5555`).
pub fn broker_addr(addr: &str) -> &str {
    let addr = addr.strip_prefix("tcp://").unwrap_or(addr);
    addr.strip_prefix("tls://").unwrap_or(addr)
}

/// Whether `addr` asks for TLS (`tls://host:port`).
pub fn is_tls(addr: &str) -> bool {
    addr.starts_with("tls://")
}

/// Connects to `addr` (`host:port`, `tcp://host:port`, or `tls://host:port` for TLS with the
/// process's trust, [`tls::set_trust`]) and splits the socket.
pub async fn connect(addr: &str) -> Result<(FrameReader, FrameWriter), ConnectionError> {
    let host_port = broker_addr(addr);
    // The name is checked before any I/O: a bad address is not a network failure.
    let name = if is_tls(addr) {
        Some(
            tls::server_name(host_port).map_err(|e| ConnectionError::Address {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?,
        )
    } else {
        None
    };
    let stream = TcpStream::connect(host_port).await?;
    stream.set_nodelay(true)?;
    let Some(name) = name else {
        return Ok(split(stream, DEFAULT_MAX_FRAME));
    };
    let connector = tokio_rustls::TlsConnector::from(tls::client_config());
    let stream = connector
        .connect(name, stream)
        .await
        .map_err(ConnectionError::Tls)?;
    let (r, w) = tokio::io::split(stream);
    Ok(halves(
        ReadSide::Tls(r),
        WriteSide::Tls(w),
        DEFAULT_MAX_FRAME,
        false,
    ))
}

/// Splits an open (plaintext) socket into a reader and a writer.
pub fn split(stream: TcpStream, max_frame: usize) -> (FrameReader, FrameWriter) {
    let (r, w) = stream.into_split();
    halves(ReadSide::Plain(r), WriteSide::Plain(w), max_frame, true)
}

fn halves(r: ReadSide, w: WriteSide, max_frame: usize, plain: bool) -> (FrameReader, FrameWriter) {
    (
        FrameReader {
            half: r,
            buf: BytesMut::with_capacity(8 * 1024),
            max_frame,
            first_read: plain,
        },
        FrameWriter {
            half: w,
            buf: BytesMut::with_capacity(8 * 1024),
            max_frame,
            last_flush: Instant::now(),
        },
    )
}

/// Whether `bytes` open a TLS record (an alert or a handshake, TLS 1.0 to 1.3). As a frame's
/// length prefix those bytes would claim more than 64 KiB, which no first frame from a
/// broker (a `Welcome` or a refusal) comes near.
fn tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, 0x01..=0x04, ..])
}

impl FrameReader {
    /// The next frame if a whole one is already buffered: no I/O, so a reader can handle a
    /// burst without a trip through the scheduler or the socket per frame.
    pub fn try_frame(&mut self) -> Result<Option<Frame>, ConnectionError> {
        Ok(proto::decode(&mut self.buf, self.max_frame)?)
    }

    /// The next frame; `Err(Closed)` when the peer closed between frames.
    pub async fn read_frame(&mut self) -> Result<Frame, ConnectionError> {
        loop {
            if let Some(frame) = proto::decode(&mut self.buf, self.max_frame)? {
                return Ok(frame);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8 * 1024);
            }
            let n = self.half.read_buf(&mut self.buf).await?;
            if self.first_read && n > 0 {
                self.first_read = false;
                if tls_record(&self.buf) {
                    return Err(ConnectionError::TlsRequired);
                }
            }
            if n == 0 {
                return Err(ConnectionError::Closed);
            }
        }
    }
}

impl FrameWriter {
    /// Queues one frame in the write buffer (no flush, unless the buffer is full).
    pub async fn feed(&mut self, frame: &Frame) -> Result<(), ConnectionError> {
        if self.buf.len() >= WRITE_BATCH {
            self.flush().await?;
        }
        proto::encode(frame, &mut self.buf, self.max_frame)?;
        Ok(())
    }

    /// Sends the buffered frames.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        if !self.buf.is_empty() {
            self.half.write_all(&self.buf).await?;
            self.buf.clear();
            if self.buf.capacity() > 4 * WRITE_BATCH {
                // A large frame grew it; a quiet connection should not keep the memory.
                self.buf = BytesMut::with_capacity(8 * 1024);
            }
        }
        Ok(())
    }

    /// Writes `first` and everything else queued behind it in one flush (one `send(2)`).
    ///
    /// Under load (the last flush was less than [`BUSY_WITHIN`] ago) it first yields, so
    /// that the tasks already woken (a reader with a buffer full of frames, the requests it
    /// answered) queue their frames into the same batch: one `send(2)` per wake-up instead
    /// of one per frame (throughput benchmark 92 k → 110–130 k req/s). A lone frame after a
    /// quiet spell goes out at once: the yield would cost it a pass of the scheduler
    /// (~15 µs of the latency benchmark's p50).
    pub async fn write_queued(
        &mut self,
        first: &Frame,
        queue: &mut mpsc::Receiver<Frame>,
    ) -> Result<(), ConnectionError> {
        self.feed(first).await?;
        let now = self.yield_if_busy().await;
        // The write buffer sends by itself when full, so draining everything is bounded.
        while let Ok(frame) = queue.try_recv() {
            self.feed(&frame).await?;
        }
        self.last_flush = now;
        self.flush().await
    }

    /// [`FrameWriter::write_queued`] for a worker: each run of frames about one dispatch in
    /// the batch goes as one [`Frame::Events`] ([`Frame::merge_worker_events`]), so an
    /// answer ready at once (`Accepted`, its output, `Done`) costs both sides one frame.
    /// The batch is held whole first: at most the queue's capacity.
    pub async fn write_queued_merged(
        &mut self,
        first: Frame,
        queue: &mut mpsc::Receiver<Frame>,
    ) -> Result<(), ConnectionError> {
        let now = self.yield_if_busy().await;
        let mut batch = vec![first];
        while let Ok(frame) = queue.try_recv() {
            batch.push(frame);
        }
        for frame in Frame::merge_worker_events(batch) {
            self.feed(&frame).await?;
        }
        self.last_flush = now;
        self.flush().await
    }

    /// Yields once when the last flush was recent (see [`FrameWriter::write_queued`]);
    /// returns the time it was called.
    async fn yield_if_busy(&self) -> Instant {
        let now = Instant::now();
        if now.duration_since(self.last_flush) < BUSY_WITHIN {
            tokio::task::yield_now().await;
        }
        now
    }

    /// Writes one frame and flushes.
    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), ConnectionError> {
        self.feed(frame).await?;
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every frame queued behind the first goes out, in order, whether the writer is idle
    /// (flushes at once) or busy (yields first); a burst under load is one flush.
    #[tokio::test]
    async fn write_queued_sends_the_whole_queue_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stream, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_r, mut writer) = split(stream.unwrap(), DEFAULT_MAX_FRAME);
        let (mut reader, _w) = split(accepted.unwrap().0, DEFAULT_MAX_FRAME);
        let (tx, mut rx) = mpsc::channel(16);
        let mut next = 0;
        for round in 0..3 {
            // Round 0 finds the writer idle; rounds 1 and 2 follow a flush at once (busy).
            for id in next + 1..next + 5 {
                tx.send(Frame::Cancel { id }).await.unwrap();
            }
            let first = Frame::Cancel { id: next };
            writer.write_queued(&first, &mut rx).await.unwrap();
            assert!(
                rx.try_recv().is_err(),
                "round {round}: the queue was drained"
            );
            for id in next..next + 5 {
                assert_eq!(reader.read_frame().await.unwrap(), Frame::Cancel { id });
            }
            next += 5;
        }
    }
}
