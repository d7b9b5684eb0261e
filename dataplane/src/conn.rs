//! Frames over a glommio socket: a shared stream, a frame reader and the writer task.
//!
//! The reader task and the writer task of one connection run on the same shard and share the
//! socket through an `Rc<RefCell<_>>` that is borrowed only inside a `poll_*` call, never
//! across an await. A connection is closed from anywhere by `shutdown(2)` on its fd, which
//! wakes the pending read and write.

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use glommio::net::TcpStream;
use proto::{Frame, ProtoError};
use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

pub(crate) use outbox::{write_loop, ClientBudget, FlowMarks, Outbox, Pushed};

mod outbox;

/// Write buffer capacity a connection keeps between bursts.
const KEEP_BUFFER: usize = 64 * 1024;

/// Bytes a connection's buffers start with. Small, because an idle connection (10,000
/// heartbeating workers) should cost little memory; they grow with the traffic.
const INITIAL_BUFFER: usize = 4 * 1024;

/// How much room one read asks for at least.
const READ_CHUNK: usize = 8 * 1024;

/// A connection's socket: plaintext, or TLS over it. An enum rather than a trait object or
/// a type parameter: the plaintext path costs one match per read and write.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

/// One socket shared by a connection's reader and writer tasks.
#[derive(Clone)]
pub(crate) struct SharedStream(Rc<RefCell<Stream>>);

impl SharedStream {
    pub(crate) fn new(stream: Stream) -> SharedStream {
        SharedStream(Rc::new(RefCell::new(stream)))
    }

    /// Closes both directions now; pending reads return end-of-file.
    pub(crate) fn shutdown(&self) {
        let fd = self.0.borrow().tcp().as_raw_fd();
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
        match &mut *self.0.borrow_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut *self.0.borrow_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut *self.0.borrow_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut *self.0.borrow_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
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
///
/// The buffer grows with the bytes that arrived, at most doubling per read, never with the
/// length a prefix claims: a peer that announces a 16 MiB frame and sends nothing costs a
/// few KiB, not 16 MiB.
pub(crate) struct FrameReader {
    stream: SharedStream,
    buf: BytesMut,
    max_frame: usize,
    /// When a read from the socket last brought bytes: the peer's last sign of life, read
    /// from the clock once per burst instead of once per frame.
    last_read: Instant,
}

impl FrameReader {
    pub(crate) fn new(stream: SharedStream, max_frame: usize) -> FrameReader {
        FrameReader {
            stream,
            buf: BytesMut::with_capacity(INITIAL_BUFFER),
            max_frame,
            last_read: Instant::now(),
        }
    }

    /// Changes the largest frame accepted from now on (small before the handshake).
    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// When bytes last arrived from the socket.
    pub(crate) fn last_read(&self) -> Instant {
        self.last_read
    }

    /// The next frame.
    pub(crate) async fn read_frame(&mut self) -> Result<Frame, ReadError> {
        loop {
            // `decode` is called only when it can finish (a whole frame is buffered) or fail:
            // for a partial frame it would reserve the claimed length.
            let claimed = proto::codec::peek_len(&self.buf);
            if claimed.is_some_and(|l| {
                l == 0 || l > self.max_frame || self.buf.len() >= l + proto::LEN_PREFIX
            }) {
                let decoded = proto::decode(&mut self.buf, self.max_frame);
                if self.buf.is_empty() && self.buf.capacity() > KEEP_BUFFER {
                    // A large frame grew it; an idle connection should not keep the memory.
                    self.buf = BytesMut::with_capacity(INITIAL_BUFFER);
                }
                match decoded {
                    Ok(Some(frame)) => return Ok(frame),
                    Ok(None) => {}
                    Err(e) => return Err(ReadError::Proto(e)),
                }
            }
            // Read straight into the buffer's spare room (no bounce buffer in the future's
            // state, which would cost every idle connection its size). Room for the rest of
            // the frame, but at most as much again as is buffered.
            let filled = self.buf.len();
            let missing = claimed.map_or(0, |l| (l + proto::LEN_PREFIX).saturating_sub(filled));
            let want = READ_CHUNK.max(missing.min(filled));
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
            self.last_read = Instant::now();
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

#[cfg(test)]
impl FrameReader {
    /// Bytes the read buffer holds room for.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests;
