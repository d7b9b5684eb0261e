//! A connection's outbound frames: the [`Outbox`] its senders encode frames into, and the
//! writer task that hands them to the socket.

use super::{SharedStream, KEEP_BUFFER};
use bytes::BytesMut;
use futures_lite::AsyncWriteExt;
use proto::Frame;
use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// `depth` frames are waiting for the writer already.
    Full,
    /// The connection is closing; nothing more is sent.
    Closed,
}

/// What [`Outbox::push`] left the outbox at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Below its bound.
    Room,
    /// At its frame bound: the sender is to wait for [`Outbox::room`] before more work.
    Full,
    /// Past its byte bound (see [`Outbox::bound_bytes`]): the peer does not read; cut it.
    Overflow,
    /// The broker's client outboxes together are over their budget and this one holds more
    /// than its share of it (see [`ClientBudget`]): cut it.
    OverBudget,
    /// It just passed its pause mark (see [`Outbox::flow_control`]): the output of the
    /// peer's requests is to be paused at their workers until [`Outbox::resumed`].
    Pause,
}

/// The bytes queued towards every client of the broker, counted across shards: the budget
/// (`--max-client-backlog-total`) that N clients that do not read cannot multiply.
///
/// While the total is over the budget, every frame pushed to a client pauses that client's
/// output (whatever its backlog), and a client holding more than its share (the budget over
/// the number of clients) is cut: what is pushed while over the budget goes only to clients
/// under their share, so the total stays below about twice the budget.
#[derive(Debug)]
pub(crate) struct ClientBudget {
    bytes: AtomicUsize,
    clients: AtomicUsize,
    limit: usize,
}

impl ClientBudget {
    pub(crate) fn new(limit: usize) -> ClientBudget {
        ClientBudget {
            bytes: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            limit: limit.max(1),
        }
    }

    /// Bytes queued towards all clients now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The budget.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// One client's share of the budget.
    fn share(&self) -> usize {
        self.limit / self.clients.load(Ordering::Relaxed).max(1)
    }
}

/// The flow control of a client's outbox: where its requests' output is paused and resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowMarks {
    /// A backlog at or past this pauses the client's output.
    pub(crate) pause_at: usize,
    /// A paused client's output resumes once its backlog is at or below this.
    pub(crate) resume_at: usize,
}

/// A connection's outbound frames, encoded into one buffer as they are sent.
///
/// Frames are serialized by the sender, straight into the buffer the writer will hand to
/// the socket: no frame crosses a channel or is moved through a writer's queue, and a burst
/// queued while the writer waits for its turn leaves in one `write`. At most `depth` frames
/// wait; a sender beyond that waits for the writer ([`Outbox::send`]) or is told so
/// ([`Outbox::try_send`]): backpressure, as with a bounded channel.
///
/// An outbox bounded in bytes instead ([`Outbox::bound_bytes`], a client's) never makes a
/// sender wait: past its bound, [`Outbox::push`] says [`Pushed::Overflow`] and the
/// connection is to be [cut](Outbox::cut).
pub(crate) struct Outbox {
    state: RefCell<OutboxState>,
    depth: usize,
    max_frame: usize,
}

#[derive(Default)]
struct OutboxState {
    buf: BytesMut,
    frames: usize,
    /// Bytes of the batch the writer is writing (counted whole until it is written).
    in_flight: usize,
    /// The byte bound of a client's outbox; `None` for a frame-bounded one.
    byte_bound: Option<usize>,
    closed: bool,
    /// Closed by [`Outbox::cut`]: the writer gives a write in progress a grace period.
    cut: bool,
    /// A client's flow control (`None`: none, a worker's outbox or a test's).
    flow: Option<FlowMarks>,
    /// The client's output is paused (it passed `pause_at` and has not come down to
    /// `resume_at` since).
    paused: bool,
    /// The task that resumes a paused client, waiting for its backlog to come down.
    flow_waiter: Option<Waker>,
    /// The broker's budget of client backlogs, and the bytes of this outbox counted in it.
    budget: Option<Arc<ClientBudget>>,
    counted: usize,
    writer: Option<Waker>,
    room: Vec<Waker>,
    /// The writer, waiting on a write, to be told of a cut.
    cut_waiter: Option<Waker>,
}

impl OutboxState {
    /// Bytes queued, the batch being written included.
    fn backlog(&self) -> usize {
        self.buf.len() + self.in_flight
    }

    /// Brings the budget's count up to date with this outbox's backlog; the budget's total.
    fn recount(&mut self) -> usize {
        let now = self.backlog();
        let Some(budget) = &self.budget else {
            return 0;
        };
        if now == self.counted {
            // Unchanged (a swap into the writer's batch): a load, no read-modify-write.
            budget.bytes()
        } else if now > self.counted {
            let added = now - self.counted;
            self.counted = now;
            budget.bytes.fetch_add(added, Ordering::Relaxed) + added
        } else {
            let freed = self.counted - now;
            self.counted = now;
            budget.bytes.fetch_sub(freed, Ordering::Relaxed) - freed
        }
    }

    /// Encodes `frame` behind what is queued and wakes the writer. Only an oversized frame
    /// can fail (e.g. a worker line at the limit plus the `Reply` wrapper): it is dropped
    /// with a log line rather than closing the connection.
    fn queue(&mut self, frame: &Frame, max_frame: usize) {
        match proto::encode(frame, &mut self.buf, max_frame) {
            Err(e) => tracing::warn!(error = %e, kind = frame.kind_name(), "frame not sent"),
            Ok(_) => {
                self.frames += 1;
                if let Some(writer) = self.writer.take() {
                    writer.wake();
                }
            }
        }
    }

    /// Wakes the task that resumes a paused client once its backlog is down to its mark
    /// (or the connection closed).
    fn wake_flow(&mut self) {
        let down = self.paused && self.flow.is_some_and(|f| self.backlog() <= f.resume_at);
        if down || self.closed {
            if let Some(waiter) = self.flow_waiter.take() {
                waiter.wake();
            }
        }
    }
}

/// How long a write in progress may still finish after a cut, so that a slow (not stalled)
/// peer gets the final frame; past it the socket is shut down.
const CUT_GRACE: Duration = Duration::from_secs(1);

impl Outbox {
    pub(crate) fn new(depth: usize, max_frame: usize) -> Outbox {
        Outbox {
            state: RefCell::default(),
            depth: depth.max(1),
            max_frame,
        }
    }

    /// Bounds the outbox by bytes queued (including the batch being written) instead of by
    /// frames: senders never wait on it, and [`Outbox::push`] reports an overflow.
    pub(crate) fn bound_bytes(&self, bound: usize) {
        self.state.borrow_mut().byte_bound = Some(bound);
    }

    /// Makes this a client's outbox under flow control: past `marks.pause_at` bytes,
    /// [`Outbox::push`] says [`Pushed::Pause`] (once, until [`Outbox::resumed`]), and its bytes
    /// count against the broker-wide `budget`.
    pub(crate) fn flow_control(&self, marks: FlowMarks, budget: Arc<ClientBudget>) {
        let mut state = self.state.borrow_mut();
        state.flow = Some(marks);
        budget.clients.fetch_add(1, Ordering::Relaxed);
        state.budget = Some(budget);
        state.recount();
    }

    /// Whether the peer's output is paused (see [`Outbox::flow_control`]).
    pub(crate) fn is_paused(&self) -> bool {
        self.state.borrow().paused
    }

    /// Waits until a paused outbox's backlog is down to its resume mark and marks it
    /// running again: `true`; `false` once the connection is closed.
    pub(crate) async fn resumed(&self) -> bool {
        std::future::poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            if state.closed {
                return Poll::Ready(false);
            }
            let down = state.flow.is_some_and(|f| state.backlog() <= f.resume_at);
            if state.paused && down {
                state.paused = false;
                Poll::Ready(true)
            } else {
                state.flow_waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Queues `frame` if there is room.
    pub(crate) fn try_send(&self, frame: &Frame) -> Result<(), SendError> {
        let mut state = self.state.borrow_mut();
        if state.closed {
            return Err(SendError::Closed);
        }
        if state.frames >= self.depth {
            return Err(SendError::Full);
        }
        state.queue(frame, self.max_frame);
        Ok(())
    }

    /// Queues `frame` even beyond the bound, and says where that leaves the outbox: at its
    /// frame bound the caller is to wait for [`Outbox::room`] before it takes more work; past
    /// its byte bound the peer is to be cut. Lets a shard handle a frame without an await
    /// (and without a future per send); the overshoot is the few frames one incoming frame
    /// can cause.
    pub(crate) fn push(&self, frame: &Frame) -> Result<Pushed, SendError> {
        let mut state = self.state.borrow_mut();
        if state.closed {
            return Err(SendError::Closed);
        }
        state.queue(frame, self.max_frame);
        let Some(bound) = state.byte_bound else {
            return Ok(match state.frames >= self.depth {
                true => Pushed::Full,
                false => Pushed::Room,
            });
        };
        let backlog = state.backlog();
        let total = state.recount();
        let over_budget = state.budget.as_ref().filter(|b| total > b.limit);
        Ok(if backlog > bound {
            Pushed::Overflow
        } else if over_budget.is_some_and(|b| backlog > b.share()) {
            Pushed::OverBudget
        } else if !state.paused
            && state
                .flow
                .is_some_and(|f| backlog >= f.pause_at || over_budget.is_some())
        {
            state.paused = true;
            Pushed::Pause
        } else {
            Pushed::Room
        })
    }

    /// Waits until fewer than `depth` frames wait for the writer, or the connection closes.
    pub(crate) async fn room(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            if state.closed || state.frames < self.depth {
                Poll::Ready(())
            } else {
                state.room.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Queues `frame`, waiting for room; `Err` once the connection is closing.
    pub(crate) async fn send(&self, frame: &Frame) -> Result<(), SendError> {
        std::future::poll_fn(|cx| match self.try_send(frame) {
            Err(SendError::Full) => {
                self.state.borrow_mut().room.push(cx.waker().clone());
                Poll::Pending
            }
            done => Poll::Ready(done),
        })
        .await
    }

    /// Frames waiting for the writer.
    pub(crate) fn len(&self) -> usize {
        self.state.borrow().frames
    }

    /// Bytes queued, the batch being written included.
    pub(crate) fn backlog_bytes(&self) -> usize {
        self.state.borrow().backlog()
    }

    /// Whether nothing more is sent (closed, cut, or the socket failed).
    pub(crate) fn is_closed(&self) -> bool {
        self.state.borrow().closed
    }

    /// Sends nothing more: the writer flushes what is queued and closes the socket.
    pub(crate) fn close(&self) {
        let mut state = self.state.borrow_mut();
        state.closed = true;
        if let Some(writer) = state.writer.take() {
            writer.wake();
        }
        for waiter in state.room.drain(..) {
            waiter.wake();
        }
        state.wake_flow();
    }

    /// Drops everything queued, queues `last` alone and closes: the writer sends it once the
    /// write in progress (if any) is done, or shuts the socket down after [`CUT_GRACE`].
    pub(crate) fn cut(&self, last: &Frame) {
        let mut state = self.state.borrow_mut();
        // A new buffer: the old one's capacity is the backlog that is being dropped.
        state.buf = BytesMut::new();
        state.frames = 0;
        if proto::encode(last, &mut state.buf, self.max_frame).is_ok() {
            state.frames = 1;
        }
        state.recount();
        state.cut = true;
        if let Some(waiter) = state.cut_waiter.take() {
            waiter.wake();
        }
        drop(state);
        self.close();
    }

    /// Swaps the queued bytes into `out` (empty on entry); `false` once closed and drained.
    pub(super) async fn take(&self, out: &mut BytesMut) -> bool {
        std::future::poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            if !state.buf.is_empty() {
                std::mem::swap(&mut state.buf, out);
                state.frames = 0;
                state.in_flight = out.len();
                for waiter in state.room.drain(..) {
                    waiter.wake();
                }
                state.recount();
                state.wake_flow();
                Poll::Ready(true)
            } else if state.closed {
                state.in_flight = 0;
                state.recount();
                Poll::Ready(false)
            } else {
                state.in_flight = 0;
                state.recount();
                state.wake_flow();
                state.writer = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves [`CUT_GRACE`] after the outbox is cut.
    async fn cut_grace(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            if state.cut {
                Poll::Ready(())
            } else {
                state.cut_waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        glommio::timer::sleep(CUT_GRACE).await;
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        if let Some(budget) = state.budget.take() {
            budget.bytes.fetch_sub(state.counted, Ordering::Relaxed);
            budget.clients.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
impl Outbox {
    /// Takes the frames queued so far, decoded: what a test reads from a fake connection.
    pub(crate) fn take_frames(&self) -> Vec<Frame> {
        let mut state = self.state.borrow_mut();
        let mut buf = std::mem::take(&mut state.buf);
        state.frames = 0;
        for waiter in state.room.drain(..) {
            waiter.wake();
        }
        state.recount();
        state.wake_flow();
        let mut frames = Vec::new();
        while let Some(frame) = proto::decode(&mut buf, self.max_frame).expect("valid frames") {
            frames.push(frame);
        }
        frames
    }
}

/// Writes what the outbox collects to the socket, one `write` per batch, until the outbox
/// is closed and drained or the socket fails (or a cut outbox's write does not finish within
/// [`CUT_GRACE`]). Closes the socket at the end.
pub(crate) async fn write_loop(stream: SharedStream, outbox: Rc<Outbox>) {
    let mut out = stream.clone();
    let mut batch = BytesMut::new();
    while outbox.take(&mut batch).await {
        // Polled only while the write waits for the socket: no cost on the usual path.
        let cut = async {
            outbox.cut_grace().await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection cut and its peer does not read",
            ))
        };
        // The flush is a no-op on a plaintext socket; on TLS it sends records rustls still
        // holds when the socket took only part of the batch.
        let write = async {
            out.write_all(&batch).await?;
            out.flush().await
        };
        if let Err(e) = futures_lite::future::or(write, cut).await {
            tracing::debug!(error = %e, "write failed; closing connection");
            break;
        }
        batch.clear();
        if batch.capacity() > KEEP_BUFFER {
            // A burst grew it; an idle connection should not keep the memory.
            batch = BytesMut::new();
        }
    }
    outbox.close();
    stream.shutdown();
}
