//! Who may hold the API's HTTP connections and requests (issue 25, finding 5: dripped bodies
//! took the API offline without a login).
//!
//! - At most `max_connections` connections at once, and `max_connections_per_address` from
//!   one client address; past the per-address cap a new connection is answered 503 and
//!   closed at once.
//! - At the global limit the connection idle longest (no request in progress: waiting for a
//!   first request or between requests) is closed to make room, so a caller who sends a
//!   request gets in however many idle sockets others hold; only when every connection is in
//!   a request is the newcomer answered 503.
//! - A request without valid credentials (no bearer token, or one that is neither a JWT
//!   whose signature and expiry check out nor the broker token; checked from the headers,
//!   before the body is read) needs one of `max_unauthenticated` slots for as long as it
//!   runs (body read, handler, response); past it, 503 at once and the connection closed.
//!   Logged-in callers and the broker need no slot, so anonymous drips cannot starve them.
//! - The body's read deadline is in [`crate::extract::buffer_body`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The connection table: counts per address, and which connections are idle.
pub(crate) struct Conns {
    state: Mutex<State>,
    max: usize,
    per_address: usize,
    anonymous: Arc<Semaphore>,
}

#[derive(Default)]
struct State {
    open: usize,
    by_address: HashMap<IpAddr, usize>,
    /// Connections with no request in progress, by when they became idle (oldest first).
    idle: BTreeMap<u64, u64>,
    conns: HashMap<u64, Entry>,
    next: u64,
}

struct Entry {
    address: IpAddr,
    /// Requests in progress (their response not yet written to the end).
    busy: usize,
    /// Its key in `State::idle` while `busy == 0`.
    idle_since: Option<u64>,
    evict: Arc<Notify>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The address holds `max_connections_per_address` already.
    PerAddress,
    /// Every one of the `max_connections` is in a request.
    Full,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Refusal::PerAddress => "too many connections from this address",
            Refusal::Full => "too many connections in progress",
        }
    }

    /// A whole HTTP/1.1 503 answer (JSON error body, `Connection: close`), written to a
    /// plain-HTTP connection before it is closed.
    pub(crate) fn response(self) -> Vec<u8> {
        let body = serde_json::json!({"code": "ServiceUnavailable", "message": self.message()})
            .to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

impl Conns {
    pub(crate) fn new(max: usize, per_address: usize, max_unauthenticated: usize) -> Arc<Conns> {
        Arc::new(Conns {
            state: Mutex::new(State::default()),
            max: max.max(1),
            per_address: per_address.max(1),
            anonymous: Arc::new(Semaphore::new(max_unauthenticated.max(1))),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection from `address` (idle until its first request), closing the
    /// connection idle longest when all `max` are open.
    pub(crate) fn admit(self: &Arc<Conns>, address: IpAddr) -> Result<Ticket, Refusal> {
        let mut state = self.state();
        if state.by_address.get(&address).copied().unwrap_or(0) >= self.per_address {
            return Err(Refusal::PerAddress);
        }
        if state.open >= self.max {
            let Some((_, victim)) = state.idle.pop_first() else {
                return Err(Refusal::Full);
            };
            if let Some(entry) = state.remove(victim) {
                entry.evict.notify_one();
            }
        }
        let id = state.next;
        state.next += 1;
        let key = state.next;
        state.next += 1;
        state.open += 1;
        *state.by_address.entry(address).or_default() += 1;
        state.idle.insert(key, id);
        let evict = Arc::new(Notify::new());
        state.conns.insert(
            id,
            Entry {
                address,
                busy: 0,
                idle_since: Some(key),
                evict: evict.clone(),
            },
        );
        Ok(Ticket(Arc::new(TicketInner {
            conns: self.clone(),
            id,
            evict,
        })))
    }

    /// A slot for a request without valid credentials, if one is free.
    pub(crate) fn anonymous_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.anonymous.clone().try_acquire_owned().ok()
    }
}

impl State {
    /// Forgets connection `id` (closed, or evicted): its counts and its idle entry.
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.conns.remove(&id)?;
        if let Some(key) = entry.idle_since {
            self.idle.remove(&key);
        }
        self.open -= 1;
        if let Some(n) = self.by_address.get_mut(&entry.address) {
            *n -= 1;
            if *n == 0 {
                self.by_address.remove(&entry.address);
            }
        }
        Some(entry)
    }
}

/// One admitted connection; dropping it (when the connection ends) frees its place.
#[derive(Clone)]
pub(crate) struct Ticket(Arc<TicketInner>);

struct TicketInner {
    conns: Arc<Conns>,
    id: u64,
    evict: Arc<Notify>,
}

impl Drop for TicketInner {
    fn drop(&mut self) {
        self.conns.state().remove(self.id);
    }
}

impl Ticket {
    /// Completes when the connection was chosen to make room for a newcomer (it was idle).
    pub(crate) async fn evicted(&self) {
        self.0.evict.notified().await
    }

    /// Marks a request in progress until the guard is dropped (with the response's body).
    pub(crate) fn busy(&self) -> Busy {
        let mut state = self.0.conns.state();
        let state = &mut *state;
        if let Some(entry) = state.conns.get_mut(&self.0.id) {
            entry.busy += 1;
            if let Some(key) = entry.idle_since.take() {
                state.idle.remove(&key);
            }
        }
        Busy(self.clone())
    }
}

/// A request in progress on a connection.
pub(crate) struct Busy(Ticket);

impl Drop for Busy {
    fn drop(&mut self) {
        let inner = &self.0 .0;
        let mut state = inner.conns.state();
        let state = &mut *state;
        let Some(entry) = state.conns.get_mut(&inner.id) else {
            return;
        };
        entry.busy = entry.busy.saturating_sub(1);
        if entry.busy == 0 && entry.idle_since.is_none() {
            let key = state.next;
            state.next += 1;
            entry.idle_since = Some(key);
            state.idle.insert(key, inner.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn per_address_cap_and_release() {
        let conns = Conns::new(10, 2, 1);
        let a1 = conns.admit(A).unwrap();
        let a2 = conns.admit(A).unwrap();
        assert_eq!(conns.admit(A).err(), Some(Refusal::PerAddress));
        assert!(conns.admit(B).is_ok());
        drop(a1);
        let a3 = conns.admit(A).unwrap();
        assert_eq!(conns.state().by_address[&A], 2);
        drop((a2, a3));
        assert!(
            conns.state().by_address.is_empty(),
            "all dropped: nothing left"
        );
    }

    #[test]
    fn at_the_limit_the_longest_idle_makes_room_and_busy_ones_stay() {
        let conns = Conns::new(2, 10, 1);
        let first = conns.admit(A).unwrap();
        let second = conns.admit(A).unwrap();
        let busy = first.busy();
        // `second` is the only idle one: it goes.
        let third = conns.admit(B).unwrap();
        assert!(!conns.state().conns.contains_key(&second.0.id));
        let busy_third = third.busy();
        // Both in a request: a newcomer is refused.
        assert_eq!(conns.admit(B).err(), Some(Refusal::Full));
        // `first` idle again (its response done): it makes room.
        drop(busy);
        let fourth = conns.admit(B).unwrap();
        assert!(!conns.state().conns.contains_key(&first.0.id));
        // Dropping the evicted ones' tickets (their tasks ending) changes no count.
        drop((first, second));
        assert_eq!(conns.state().open, 2);
        drop((busy_third, third, fourth));
        assert_eq!(conns.state().open, 0);
    }

    #[test]
    fn anonymous_slots_are_bounded() {
        let conns = Conns::new(2, 2, 2);
        let one = conns.anonymous_slot().unwrap();
        let _two = conns.anonymous_slot().unwrap();
        assert!(conns.anonymous_slot().is_none());
        drop(one);
        assert!(conns.anonymous_slot().is_some());
    }
}
