//! Frames over a glommio socket: a shared stream, a frame reader and the writer task.
//!
//! The reader task and the writer task of one connection run on the same shard and share the
//! socket through an `Rc<RefCell<_>>` that is borrowed only inside a `poll_*` call, never
//! across an await. A connection is closed from anywhere by `shutdown(2)` on its fd, which
//! wakes the pending read and write.

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::LocalReceiver;
use glommio::net::TcpStream;
use proto::{Frame, ProtoError};
use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// Largest batch of frames the writer encodes before one `write`: enough to amortise the
/// syscall under load, small enough to keep latency of the first frame low.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Bytes a connection's buffers start with. Small, because an idle connection (10,000
/// heartbeating workers) should cost little memory; they grow with the traffic.
const INITIAL_BUFFER: usize = 4 * 1024;

/// How much room one read asks for at least.
const READ_CHUNK: usize = 8 * 1024;

/// One socket shared by a connection's reader and writer tasks.
#[derive(Clone)]
pub(crate) struct SharedStream(Rc<RefCell<TcpStream>>);

impl SharedStream {
    pub(crate) fn new(stream: TcpStream) -> SharedStream {
        SharedStream(Rc::new(RefCell::new(stream)))
    }

    /// Closes both directions now; pending reads return end-of-file.
    pub(crate) fn shutdown(&self) {
        let fd = self.0.borrow().as_raw_fd();
        // SAFETY: fd is owned by the stream, which this Rc keeps alive; shutdown(2) does
        // not close or invalidate it.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// Why reading a frame stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed between frames.
    Closed,
    /// The socket failed.
    Io(io::Error),
    /// The bytes are not a frame (includes a close in the middle of one).
    Proto(ProtoError),
}

/// Reads length-prefixed frames from a [`SharedStream`].
pub(crate) struct FrameReader {
    stream: SharedStream,
    buf: BytesMut,
    max_frame: usize,
}

impl FrameReader {
    pub(crate) fn new(stream: SharedStream, max_frame: usize) -> FrameReader {
        FrameReader {
            stream,
            buf: BytesMut::with_capacity(INITIAL_BUFFER),
            max_frame,
        }
    }

    /// The next frame.
    pub(crate) async fn read_frame(&mut self) -> Result<Frame, ReadError> {
        loop {
            match proto::decode(&mut self.buf, self.max_frame) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Proto(e)),
            }
            // Read straight into the buffer's spare room (no bounce buffer in the future's
            // state, which would cost every idle connection its size).
            let filled = self.buf.len();
            let want = READ_CHUNK.max(proto::codec::peek_len(&self.buf).map_or(0, |l| {
                (l + proto::LEN_PREFIX)
                    .saturating_sub(filled)
                    .min(self.max_frame)
            }));
            self.buf.resize(filled + want, 0);
            let read = self.stream.read(&mut self.buf[filled..]).await;
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(filled);
                    return Err(ReadError::Io(e));
                }
            };
            self.buf.truncate(filled + n);
            if n == 0 {
                if self.buf.is_empty() {
                    return Err(ReadError::Closed);
                }
                let wanted = proto::codec::peek_len(&self.buf)
                    .map(|l| (l + proto::LEN_PREFIX).to_string())
                    .unwrap_or_else(|| "a length prefix of 4".into());
                return Err(ReadError::Proto(ProtoError::Malformed {
                    reason: format!(
                        "truncated frame: connection closed after {} bytes of {wanted}",
                        self.buf.len()
                    ),
                }));
            }
        }
    }
}

/// Drains a connection's outbound queue into its socket, batching what is queued, until every
/// sender is gone or the socket fails. Closes the socket at the end.
pub(crate) async fn write_loop(stream: SharedStream, rx: LocalReceiver<Frame>, max_frame: usize) {
    let mut out = stream.clone();
    let mut buf = BytesMut::with_capacity(INITIAL_BUFFER);
    while let Some(first) = rx.recv().await {
        buf.clear();
        encode_or_log(&first, &mut buf, max_frame);
        while buf.len() < WRITE_BATCH_BYTES {
            match futures_lite::future::poll_once(rx.recv()).await {
                Some(Some(frame)) => encode_or_log(&frame, &mut buf, max_frame),
                _ => break,
            }
        }
        if let Err(e) = out.write_all(&buf).await {
            tracing::debug!(error = %e, "write failed; closing connection");
            break;
        }
    }
    stream.shutdown();
}

fn encode_or_log(frame: &Frame, buf: &mut BytesMut, max_frame: usize) {
    if let Err(e) = proto::encode(frame, buf, max_frame) {
        // Only an oversized frame can fail here (e.g. a worker line at the limit plus the
        // Reply wrapper); it is dropped with a log line rather than closing the connection.
        tracing::warn!(error = %e, kind = frame.kind_name(), "frame not sent");
    }
}
