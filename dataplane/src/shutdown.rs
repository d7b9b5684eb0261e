//! How the broker stops: the signal every shard awaits, and the drain they follow together.
//!
//! [`BrokerHandle::drain`](crate::BrokerHandle::drain) and
//! [`BrokerHandle::stop`](crate::BrokerHandle::stop) set their state and notify an
//! [`Event`]; each shard's main task awaits it ([`Shutdown::asked`]), so an idle shard
//! wakes for a shutdown and for nothing else. The accept loop is a task of its own, which only
//! its listener wakes: glommio keeps a clone of the waker per poll of a pending `accept`, and
//! a task that raced `accept` against a periodic stop check overflowed that count (an `i16`)
//! after 32,767 idle turns and panicked every shard.

use event_listener::Event;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::task::Poll;
use std::time::{Duration, Instant};

/// The broker's shutdown, shared by every shard: whether a drain or a stop was asked for,
/// and the drain's progress (touched per tick while draining, never on the request path).
#[derive(Debug)]
pub(crate) struct Shutdown {
    /// Notified when a drain or a stop is asked for.
    event: Event,
    stopped: AtomicBool,
    /// How long the drain lets requests run.
    pub(crate) drain_for: Duration,
    /// Set when the drain starts: its deadline.
    deadline: OnceLock<Instant>,
    /// Requests in flight per shard; `usize::MAX` until that shard reports.
    open: Vec<AtomicUsize>,
    /// Shards that have closed their clients: workers are closed only after every shard
    /// did, so no request ends `WorkerLost` instead of `ShuttingDown`.
    clients_closed: AtomicUsize,
    /// How many times a shard waited on the event (a test counts its wakeups by them).
    #[cfg(test)]
    parked: AtomicUsize,
}

impl Shutdown {
    pub(crate) fn new(shards: usize, drain_for: Duration) -> Shutdown {
        Shutdown {
            event: Event::new(),
            stopped: AtomicBool::new(false),
            drain_for,
            deadline: OnceLock::new(),
            open: (0..shards).map(|_| AtomicUsize::new(usize::MAX)).collect(),
            clients_closed: AtomicUsize::new(0),
            #[cfg(test)]
            parked: AtomicUsize::new(0),
        }
    }

    /// Starts the drain (a second call changes nothing).
    pub(crate) fn drain(&self) {
        let _ = self.deadline.set(Instant::now() + self.drain_for);
        self.event.notify(usize::MAX);
    }

    /// Stops every shard now (cuts a drain short).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    /// Whether a stop was asked for.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Resolves once a drain or a stop is asked for.
    pub(crate) async fn asked(&self) {
        self.until(|s| s.is_stopped() || s.deadline.get().is_some())
            .await
    }

    /// Resolves once a stop is asked for.
    pub(crate) async fn stopped(&self) {
        self.until(Shutdown::is_stopped).await
    }

    /// Waits on the event until `cond` holds (listening before the second look, so that a
    /// notification in between is not missed).
    async fn until(&self, cond: impl Fn(&Shutdown) -> bool) {
        while !cond(self) {
            let mut listener = self.event.listen();
            if cond(self) {
                return;
            }
            std::future::poll_fn(|cx| match Pin::new(&mut listener).poll(cx) {
                Poll::Pending => {
                    #[cfg(test)]
                    self.parked.fetch_add(1, Ordering::SeqCst);
                    Poll::Pending
                }
                ready => ready,
            })
            .await;
        }
    }

    /// Races `work` against a stop: `None` when the stop came first (the stop is looked at
    /// first, at every turn).
    pub(crate) async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        let stopped = async {
            self.stopped().await;
            None
        };
        futures_lite::future::or(stopped, async { Some(work.await) }).await
    }

    /// Shard `idx` has `open` requests in flight.
    pub(crate) fn publish(&self, idx: usize, open: usize) {
        self.open[idx].store(open, Ordering::Release);
    }

    pub(crate) fn past_deadline(&self) -> bool {
        self.deadline.get().is_some_and(|d| Instant::now() >= *d)
    }

    /// Once every shard has refused new requests, the counts only go down: zero on every
    /// shard means nothing is in flight anywhere (a request on one shard may run on a worker
    /// of another, which therefore waits too).
    pub(crate) fn all_done(&self) -> bool {
        self.open.iter().all(|n| n.load(Ordering::Acquire) == 0)
    }

    /// One more shard has closed its clients.
    pub(crate) fn clients_closed(&self) {
        self.clients_closed.fetch_add(1, Ordering::AcqRel);
    }

    /// Every shard has closed its clients.
    pub(crate) fn all_clients_closed(&self) -> bool {
        self.clients_closed.load(Ordering::Acquire) >= self.open.len()
    }
}

#[cfg(test)]
impl Shutdown {
    /// Wakes every shard waiting on the event without asking anything of it; how many were.
    pub(crate) fn nudge(&self) -> usize {
        self.event.notify(usize::MAX)
    }

    /// How many times a shard waited on the event.
    pub(crate) fn parked(&self) -> usize {
        self.parked.load(Ordering::SeqCst)
    }
}
