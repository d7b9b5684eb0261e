//! Messages to other shards, and what handling one event leaves to wait for.
//!
//! Every cross-shard message takes one path, [`State::send_to_shard`]: it goes straight into
//! the channel when nothing for that shard is waiting and there is room; otherwise it joins
//! that shard's backlog, which one task per destination feeds into the channel in order. So
//! messages to one shard arrive in the order they were sent (a `Cancel` never overtakes its
//! `Dispatch`, a worker's events keep their order, offline never precedes online), and
//! sending never awaits. The task that handled a frame then waits in [`Shard::settle`] while
//! a backlog it added to is over its bound: the same backpressure as awaiting the send.

use super::{home_of, Shard, State};
use crate::conn::{Outbox, Pushed};
use crate::registry::WorkerAt;
use crate::request::WorkerEvent;
use glommio::channels::channel_mesh::Senders;
use glommio::{GlommioError, ResourceType};
use proto::{ErrorKind, Frame};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

/// A message from one shard to another.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    WorkerOnline {
        team: String,
        identity: Arc<str>,
        at: WorkerAt,
        generation: u64,
        announced: Vec<String>,
    },
    WorkerOffline {
        team: String,
        identity: Arc<str>,
        at: WorkerAt,
    },
    /// Deliver to the worker connection `conn_id` on the receiving shard.
    Dispatch {
        conn_id: u64,
        dispatch: proto::Dispatch,
    },
    /// Tell the worker connection `conn_id` to stop `dispatch_id`.
    Cancel { conn_id: u64, dispatch_id: u64 },
    /// A worker's event for a request owned by the receiving shard.
    Event {
        dispatch_id: u64,
        event: WorkerEvent,
    },
    /// A worker's events of one dispatch, in order (its `Events` frame).
    Events {
        dispatch_id: u64,
        events: Vec<WorkerEvent>,
    },
    /// Tell the worker connection `conn_id` to pause (or resume) the output of
    /// `dispatch_id`: its request's client does not keep up (or caught up again).
    Flow {
        conn_id: u64,
        dispatch_id: u64,
        paused: bool,
    },
}

/// What handling one frame (or mesh message, or tick) left behind to wait for.
///
/// Frames are handled without an await, so that the chain of calls a frame goes through
/// builds no futures (each would be moved, at its full size, into its caller's). Sends that
/// leave a connection's outbox at its bound or a shard's backlog over its bound are noted
/// here instead, and the task that handled the frame waits for them before it reads the
/// next one: the same backpressure as awaiting each send, one frame later.
#[derive(Default)]
pub(crate) struct Unsettled {
    /// Outboxes at or over their bound.
    congested: Vec<Rc<Outbox>>,
    /// Shards whose backlog is over its bound.
    backlogged: Vec<usize>,
    /// Connections to cut once the event is handled: id, why (the kind), and a message
    /// (empty: the kind's own).
    pub(super) to_cut: Vec<(u64, ErrorKind, String)>,
    /// Client connections whose outbox passed its pause mark: their requests' output is
    /// paused at the workers once the event is handled.
    pub(super) to_pause: Vec<u64>,
}

impl Unsettled {
    /// Queues `frame` on `out`; an outbox at its bound is noted for [`Shard::settle`]. A
    /// closed connection drops its frames; its close handler cleans up. Returns where that
    /// left a client's outbox (over a bound, at its pause mark; see `State::send_to_conn`);
    /// `Room` for any other.
    pub(super) fn push_to(&mut self, out: &Rc<Outbox>, frame: &Frame) -> Pushed {
        match out.push(frame) {
            Ok(Pushed::Full) => {
                self.congested.push(out.clone());
                Pushed::Room
            }
            Ok(pushed) => pushed,
            Err(_) => Pushed::Room,
        }
    }

    /// Notes connection `conn_id` to be cut with `kind` (and `why`, or the kind's own text
    /// when empty) once the event is handled (see `State::cut_connections`).
    pub(super) fn cut_later(&mut self, conn_id: u64, kind: ErrorKind, why: String) {
        if !self.to_cut.iter().any(|(id, _, _)| *id == conn_id) {
            self.to_cut.push((conn_id, kind, why));
        }
    }
}

/// The channels to the other shards, and the messages waiting for room in them.
pub(crate) struct MeshLinks {
    pub(super) senders: Senders<ShardMsg>,
    /// By destination shard.
    backlogs: Box<[RefCell<Backlog>]>,
    /// A backlog longer than this makes the task that added to it wait.
    bound: usize,
}

#[derive(Default)]
struct Backlog {
    /// Messages not yet in the channel, oldest first.
    queue: VecDeque<ShardMsg>,
    /// A task is feeding this backlog into the channel (it may hold the oldest message,
    /// waiting for room). While it runs, every new message joins the queue.
    draining: bool,
    /// Tasks waiting for the queue to shrink to the bound.
    waiters: Vec<Waker>,
}

impl Backlog {
    fn wake_if_under(&mut self, bound: usize) {
        if self.queue.len() <= bound {
            for waker in self.waiters.drain(..) {
                waker.wake();
            }
        }
    }
}

impl MeshLinks {
    pub(crate) fn new(senders: Senders<ShardMsg>, n_shards: usize, bound: usize) -> MeshLinks {
        MeshLinks {
            senders,
            backlogs: (0..n_shards).map(|_| RefCell::default()).collect(),
            bound,
        }
    }

    /// Sends `msg` to shard `peer` behind everything sent there before, without waiting.
    /// Returns whether that shard's backlog is now over its bound.
    fn send(self: &Rc<Self>, peer: usize, msg: ShardMsg) -> bool {
        let Some(backlog) = self.backlogs.get(peer) else {
            return false;
        };
        let start_draining = {
            let mut backlog = backlog.borrow_mut();
            if backlog.draining {
                backlog.queue.push_back(msg);
                return backlog.queue.len() > self.bound;
            }
            match self.senders.try_send_to(peer, msg) {
                Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                    backlog.queue.push_back(msg);
                    backlog.draining = true;
                    true
                }
                // Sent; or the peer is gone (the broker is stopping): nothing to keep.
                _ => false,
            }
        };
        if start_draining {
            // Not under the borrow: glommio may run a new task at once.
            glommio::spawn_local(self.clone().drain(peer)).detach();
        }
        backlog.borrow().queue.len() > self.bound
    }

    /// Feeds shard `peer`'s backlog into its channel, in order, until it is empty.
    async fn drain(self: Rc<Self>, peer: usize) {
        let backlog = &self.backlogs[peer];
        loop {
            let msg = {
                let mut backlog = backlog.borrow_mut();
                let Some(msg) = backlog.queue.pop_front() else {
                    backlog.draining = false;
                    return;
                };
                backlog.wake_if_under(self.bound);
                msg
            };
            if self.senders.send_to(peer, msg).await.is_err() {
                // The peer is gone (the broker is stopping): drop what waits for it.
                let mut backlog = backlog.borrow_mut();
                backlog.queue.clear();
                backlog.draining = false;
                backlog.wake_if_under(self.bound);
                return;
            }
        }
    }

    /// Whether messages to shard `peer` wait for room in its channel.
    #[cfg(test)]
    pub(super) fn is_backlogged(&self, peer: usize) -> bool {
        self.backlogs[peer].borrow().draining
    }

    /// Waits until shard `peer`'s backlog is within its bound.
    async fn room(&self, peer: usize) {
        std::future::poll_fn(|cx| {
            let mut backlog = self.backlogs[peer].borrow_mut();
            if backlog.queue.len() <= self.bound {
                Poll::Ready(())
            } else {
                backlog.waiters.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl State {
    /// Sends `msg` to shard `peer`: the one path for every cross-shard message.
    pub(super) fn send_to_shard(&mut self, peer: usize, msg: ShardMsg) {
        let Some(mesh) = &self.env.mesh else { return };
        if mesh.send(peer, msg) && !self.unsettled.backlogged.contains(&peer) {
            self.unsettled.backlogged.push(peer);
        }
    }

    /// Hands the message `msg` makes for its connection to the worker at `at`: handled
    /// here when it is connected to this shard, sent to its shard otherwise.
    pub(super) fn send_to_worker(&mut self, at: WorkerAt, msg: impl FnOnce(u64) -> ShardMsg) {
        match at.shard_idx {
            idx if idx == self.env.idx => self.on_shard_msg(msg(at.conn_id)),
            idx => self.send_to_shard(idx, msg(at.conn_id)),
        }
    }

    /// Sends a message made by `msg` to every other shard.
    pub(super) fn send_to_every_shard(&mut self, msg: impl Fn() -> ShardMsg) {
        let Some(n_shards) = self.env.mesh.as_ref().map(|m| m.backlogs.len()) else {
            return;
        };
        let idx = self.env.idx;
        for peer in (0..n_shards).filter(|&peer| peer != idx) {
            self.send_to_shard(peer, msg());
        }
    }

    /// Sends a worker event to the shard that owns its request.
    pub(super) fn route_event(&mut self, dispatch_id: u64, event: WorkerEvent) {
        match home_of(dispatch_id) {
            home if home == self.env.idx => self.on_event(dispatch_id, event),
            home => self.send_to_shard(home, ShardMsg::Event { dispatch_id, event }),
        }
    }

    /// [`State::route_event`] for several events of one dispatch: one message for all.
    pub(super) fn route_events(&mut self, dispatch_id: u64, events: Vec<WorkerEvent>) {
        match home_of(dispatch_id) {
            home if home == self.env.idx => self.on_events(dispatch_id, events),
            home => {
                let msg = ShardMsg::Events {
                    dispatch_id,
                    events,
                };
                self.send_to_shard(home, msg)
            }
        }
    }

    /// Handles a message from another shard.
    pub(super) fn on_shard_msg(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::WorkerOnline {
                team,
                identity,
                at,
                generation,
                announced,
            } => {
                let registry = &mut self.routing.registry;
                let online = registry.worker_online(&team, identity, at, generation, announced);
                // A newer connection elsewhere displaced one connected here.
                self.cut_superseded(online);
            }
            ShardMsg::WorkerOffline { team, identity, at } => {
                self.routing.registry.worker_offline(&team, &identity, at);
            }
            ShardMsg::Dispatch { conn_id, dispatch } => self.deliver_local(conn_id, dispatch),
            ShardMsg::Cancel {
                conn_id,
                dispatch_id,
            } => self.cancel_local(conn_id, dispatch_id),
            ShardMsg::Event { dispatch_id, event } => self.on_event(dispatch_id, event),
            ShardMsg::Events {
                dispatch_id,
                events,
            } => self.on_events(dispatch_id, events),
            ShardMsg::Flow {
                conn_id,
                dispatch_id,
                paused,
            } => self.flow_local(conn_id, dispatch_id, paused),
        }
    }

    /// Takes what the handling so far left to wait for, after pausing and cutting what it
    /// left to pause and cut. Taken at once, before any await, so each task waits only for
    /// what its own event caused.
    fn take_unsettled(&mut self) -> Option<Unsettled> {
        self.pause_clients();
        self.cut_connections();
        let unsettled = &self.unsettled;
        let waits = !unsettled.congested.is_empty() || !unsettled.backlogged.is_empty();
        waits.then(|| std::mem::take(&mut self.unsettled))
    }
}

impl Shard {
    /// Waits for room in every outbox and backlog the last event filled. Nothing to wait
    /// for (the usual case) costs no future.
    pub(crate) fn settle(&self) -> impl Future<Output = ()> + '_ {
        let unsettled = self.handle((), |st, ()| st.take_unsettled());
        async move {
            let Some(unsettled) = unsettled else { return };
            if let Some(mesh) = &self.env.mesh {
                for peer in unsettled.backlogged {
                    mesh.room(peer).await;
                }
            }
            for out in unsettled.congested {
                out.room().await;
            }
        }
    }

    /// As [`Shard::settle`], for the task that receives from the mesh: it never waits on
    /// the mesh (two shards waiting on each other's full channel would deadlock), so its
    /// messages stay in the backlogs, past the bound if need be; they are at most a few per
    /// message it received.
    pub(crate) async fn settle_mesh_receiver(&self) {
        let Some(unsettled) = self.handle((), |st, ()| st.take_unsettled()) else {
            return;
        };
        for out in unsettled.congested {
            out.room().await;
        }
    }
}
