//! Limits on what a peer may ask of the broker: the request rate (a token bucket per
//! connection, [`ClientRate`]) and the connections per address ([`PendingHandshakes`]).
//! Open requests per connection are counted where the connections live (`shard`).
//!
//! The rate is per connection and on the shard that owns it: no lock, no atomic, one clock
//! read and a compare per request when a rate is set. The counts per address are
//! broker-wide, under a lock taken when a connection is accepted, when its handshake ends
//! and when it closes: never per frame.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request rate: `per_sec` requests a second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientRate {
    /// Requests a second, sustained.
    pub per_sec: f64,
    /// Requests that may arrive at once (the bucket's size).
    pub burst: f64,
}

/// `--client-rate`'s text is not `N/s` (or `N/m`, `N/ms`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a rate is a positive number of requests per unit, e.g. `20000/s` or `600/m`; got `{0}`")]
pub struct BadRate(pub String);

impl FromStr for ClientRate {
    type Err = BadRate;

    /// `20000/s`, `600/m`, `20/ms`; the burst is one second's worth (at least 1) unless set
    /// with [`ClientRate::with_burst`].
    fn from_str(s: &str) -> Result<ClientRate, BadRate> {
        let bad = || BadRate(s.to_string());
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let n: f64 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "ms" => 0.001,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        if !(n.is_finite() && n > 0.0) {
            return Err(bad());
        }
        let per_sec = n / per;
        Ok(ClientRate {
            per_sec,
            burst: per_sec.max(1.0),
        })
    }
}

impl ClientRate {
    /// The same rate with `burst` requests at once (at least 1).
    pub fn with_burst(self, burst: u64) -> ClientRate {
        ClientRate {
            burst: (burst as f64).max(1.0),
            ..self
        }
    }
}

/// One connection's token bucket.
#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A connection logs its refusals at most once in this period (a flood is one line a
/// second, not one per request).
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(1);

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(rate: &ClientRate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            last: now,
        }
    }

    /// Takes one token; `false` when the bucket is empty (the request is refused).
    pub(crate) fn take(&mut self, rate: &ClientRate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A connection's refusals (rate, open requests), logged at most once per [`LOG_EVERY`].
#[derive(Debug, Default)]
pub(crate) struct LogEvery {
    refused: u64,
    logged: Option<Instant>,
}

impl LogEvery {
    /// Notes a refusal; `Some(n)` (refusals since the last line) when one should be logged.
    pub(crate) fn refused(&mut self, now: Instant) -> Option<u64> {
        self.refused += 1;
        match self.logged {
            Some(at) if now.saturating_duration_since(at) < LOG_EVERY => None,
            _ => {
                self.logged = Some(now);
                Some(std::mem::take(&mut self.refused))
            }
        }
    }
}

/// Connections by peer address, broker-wide: those that have not finished their handshake
/// yet (`pending`), and those open (`open`, handshake done). The lock is taken when a
/// connection is accepted, when its handshake ends and when it closes: never per frame.
#[derive(Debug)]
pub(crate) struct PendingHandshakes {
    per_address: usize,
    open_per_address: usize,
    counts: Mutex<HashMap<IpAddr, Counts>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    pending: usize,
    open: usize,
}

/// One connection counted in [`PendingHandshakes`] until it is dropped: as pending
/// ([`PendingGuard`]) or as open ([`OpenGuard`]).
pub(crate) struct AddressGuard<const OPEN: bool> {
    pending: Arc<PendingHandshakes>,
    ip: IpAddr,
}

/// A connection whose handshake has not ended.
pub(crate) type PendingGuard = AddressGuard<false>;

/// A connection whose handshake succeeded.
pub(crate) type OpenGuard = AddressGuard<true>;

impl PendingHandshakes {
    pub(crate) fn new(per_address: usize, open_per_address: usize) -> PendingHandshakes {
        PendingHandshakes {
            per_address,
            open_per_address,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Counts>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection from `ip`, or `None` when `ip` has its limit of pending ones
    /// already. Once per accepted connection: the lock is never taken per frame.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PendingGuard> {
        let mut counts = self.counts();
        let n = counts.entry(ip).or_default();
        if n.pending >= self.per_address {
            return None;
        }
        n.pending += 1;
        Some(PendingGuard {
            pending: self.clone(),
            ip,
        })
    }

    /// Forgets one count of `ip` (`open` or pending), and the address when none is left.
    fn release(&self, ip: IpAddr, open: bool) {
        let mut counts = self.counts();
        if let Some(n) = counts.get_mut(&ip) {
            if open {
                n.open = n.open.saturating_sub(1);
            } else {
                n.pending = n.pending.saturating_sub(1);
            }
            if n.pending == 0 && n.open == 0 {
                counts.remove(&ip);
            }
        }
    }
}

impl PendingGuard {
    /// The handshake succeeded: the connection counts as open instead of pending, or, when
    /// its address has `max_connections_per_address` open already, `Err(open)`.
    pub(crate) fn establish(self) -> Result<OpenGuard, usize> {
        let pending = self.pending.clone();
        let ip = self.ip;
        let mut counts = pending.counts();
        let n = counts.entry(ip).or_default();
        if n.open >= pending.open_per_address {
            let open = n.open;
            drop(counts);
            return Err(open);
        }
        n.open += 1;
        drop(counts);
        drop(self);
        Ok(OpenGuard { pending, ip })
    }

    /// The peer's address.
    pub(crate) fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl<const OPEN: bool> Drop for AddressGuard<OPEN> {
    fn drop(&mut self) {
        self.pending.release(self.ip, OPEN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        let r: ClientRate = "20000/s".parse().unwrap();
        assert_eq!(r.per_sec, 20000.0);
        assert_eq!(r.burst, 20000.0);
        let r: ClientRate = "600/m".parse().unwrap();
        assert_eq!(r.per_sec, 10.0);
        assert_eq!(r.with_burst(3).burst, 3.0);
        assert_eq!("2/ms".parse::<ClientRate>().unwrap().per_sec, 2000.0);
        for bad in ["", "20000", "0/s", "-1/s", "x/s", "5/fortnight", "NaN/s"] {
            assert!(bad.parse::<ClientRate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let rate = ClientRate {
            per_sec: 10.0,
            burst: 5.0,
        };
        let t0 = Instant::now();
        let mut b = Bucket::new(&rate, t0);
        assert!((0..5).all(|_| b.take(&rate, t0)));
        assert!(!b.take(&rate, t0));
        // 100 ms: one more token.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.take(&rate, t1));
        assert!(!b.take(&rate, t1));
        // A long pause refills to the burst, not past it.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(&rate, t2)).count(), 5);
    }

    #[test]
    fn refusals_are_logged_once_a_second() {
        let t0 = Instant::now();
        let mut b = LogEvery::default();
        assert_eq!(b.refused(t0), Some(1));
        assert_eq!(b.refused(t0), None);
        assert_eq!(b.refused(t0 + Duration::from_millis(500)), None);
        assert_eq!(b.refused(t0 + Duration::from_secs(1)), Some(3));
    }
}
