//! Who may hold the API's HTTP connections and requests (issue 25, finding 5: dripped bodies
//! took the API offline without a login).
//!
//! - At most `max_connections` connections at once, and `max_connections_per_address` from
//!   one client address. At either limit the connection idle longest (no request in
//!   progress: waiting for a first request or between requests) — of that address, or of
//!   all — is closed to make room, so a caller who sends a request gets in however many
//!   idle sockets others hold, from its own address too; only when every connection in the
//!   way is in a request is the newcomer answered 503 and closed. Since requests without
//!   credentials hold at most `max_unauthenticated` of them, an anonymous caller can keep
//!   no more than that many of an address's connections busy: with the per-address cap
//!   above it (the defaults: 128 and 64), a logged-in caller from any address gets in.
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

/// Connections with no request in progress, by when they became idle (oldest first): the
/// key, then the connection's id.
type Idle = BTreeMap<u64, u64>;

#[derive(Default)]
struct State {
    open: usize,
    by_address: HashMap<IpAddr, Address>,
    idle: Idle,
    conns: HashMap<u64, Entry>,
    next: u64,
}

/// One client address's connections.
#[derive(Default)]
struct Address {
    open: usize,
    idle: Idle,
}

struct Entry {
    address: IpAddr,
    /// Requests in progress (their response not yet written to the end).
    busy: usize,
    /// Its key in the idle maps while `busy == 0`.
    idle_since: Option<u64>,
    evict: Arc<Notify>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The address's `max_connections_per_address` are all in a request.
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
        let body = api::ErrorBody {
            code: api::ErrorCode::ServiceUnavailable,
            message: self.message().to_string(),
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
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
    /// connection idle longest of that address at its cap, or of all at the global limit.
    pub(crate) fn admit(self: &Arc<Conns>, address: IpAddr) -> Result<Ticket, Refusal> {
        let mut state = self.state();
        let from_address = state.by_address.get(&address).map_or(0, |a| a.open);
        if from_address >= self.per_address {
            let oldest = state
                .by_address
                .get(&address)
                .and_then(|a| a.idle.first_key_value());
            let Some((_, &victim)) = oldest else {
                return Err(Refusal::PerAddress);
            };
            state.evict(victim);
        }
        if state.open >= self.max {
            let Some((_, &victim)) = state.idle.first_key_value() else {
                return Err(Refusal::Full);
            };
            state.evict(victim);
        }
        let id = state.next;
        state.next += 1;
        state.open += 1;
        state.by_address.entry(address).or_default().open += 1;
        let evict = Arc::new(Notify::new());
        state.conns.insert(
            id,
            Entry {
                address,
                busy: 0,
                idle_since: None,
                evict: evict.clone(),
            },
        );
        state.set_idle(id);
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
    /// Connection `id` (known, with no request in progress) goes to the end of the idle maps.
    fn set_idle(&mut self, id: u64) {
        let key = self.next;
        self.next += 1;
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        entry.idle_since = Some(key);
        self.idle.insert(key, id);
        if let Some(address) = self.by_address.get_mut(&entry.address) {
            address.idle.insert(key, id);
        }
    }

    /// Connection `id` leaves the idle maps (a request began, or it is gone).
    fn clear_idle(&mut self, id: u64) {
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(key) = entry.idle_since.take() {
            self.idle.remove(&key);
            if let Some(address) = self.by_address.get_mut(&entry.address) {
                address.idle.remove(&key);
            }
        }
    }

    /// Closes idle connection `id` to make room: forgotten now, its task told to end.
    fn evict(&mut self, id: u64) {
        if let Some(entry) = self.remove(id) {
            entry.evict.notify_one();
        }
    }

    /// Forgets connection `id` (closed, or evicted): its counts and its idle entries.
    fn remove(&mut self, id: u64) -> Option<Entry> {
        self.clear_idle(id);
        let entry = self.conns.remove(&id)?;
        self.open -= 1;
        if let Some(address) = self.by_address.get_mut(&entry.address) {
            address.open -= 1;
            if address.open == 0 {
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
        if let Some(entry) = state.conns.get_mut(&self.0.id) {
            entry.busy += 1;
            state.clear_idle(self.0.id);
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
        let Some(entry) = state.conns.get_mut(&inner.id) else {
            return;
        };
        entry.busy = entry.busy.saturating_sub(1);
        if entry.busy == 0 && entry.idle_since.is_none() {
            state.set_idle(inner.id);
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
        let busy = (a1.busy(), a2.busy());
        // Both in a request: refused.
        assert_eq!(conns.admit(A).err(), Some(Refusal::PerAddress));
        let b = conns.admit(B).unwrap();
        // One idle again: the newcomer from A takes its place, B's stays.
        drop(busy.1);
        let a3 = conns.admit(A).unwrap();
        assert!(!conns.state().conns.contains_key(&a2.0.id));
        assert!(conns.state().conns.contains_key(&b.0.id));
        assert_eq!(conns.state().by_address[&A].open, 2);
        drop((busy.0, a1, a2, a3, b));
        assert!(
            conns.state().by_address.is_empty() && conns.state().idle.is_empty(),
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
