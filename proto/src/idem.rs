//! The bounded memory of recent idempotency keys that the broker and the worker both keep
//! (each with a value of its own): per source the last `max_keys` sequence numbers (oldest
//! forgotten first), and at most `max_sources` sources (the least recently used forgotten
//! first). Pure data: no I/O, no locking (the caller wraps it in its own mutex).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Recent keys of at most `max_sources` sources, at most `max_keys` each.
#[derive(Debug)]
pub struct Window<S, V> {
    max_sources: usize,
    max_keys: usize,
    sources: HashMap<S, Source<V>>,
    /// Bumped per use; a source's `used` is the clock at its last use.
    clock: u64,
}

#[derive(Debug)]
struct Source<V> {
    used: u64,
    values: HashMap<u64, V>,
    /// The sequence numbers in `values`, oldest first.
    order: VecDeque<u64>,
}

impl<S: Hash + Eq + Clone, V> Window<S, V> {
    /// An empty window with these bounds (each at least 1).
    pub fn new(max_sources: usize, max_keys: usize) -> Self {
        Window {
            max_sources: max_sources.max(1),
            max_keys: max_keys.max(1),
            sources: HashMap::new(),
            clock: 0,
        }
    }

    /// The window the protocol's bounds give: [`crate::IDEM_SOURCES`] sources of
    /// [`crate::IDEM_WINDOW`] keys.
    pub fn standard() -> Self {
        Window::new(crate::IDEM_SOURCES, crate::IDEM_WINDOW)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The value of `seq` in `source`, if remembered; counts as a use of the source.
    pub fn get_mut(&mut self, source: &S, seq: u64) -> Option<&mut V> {
        let now = self.tick();
        let entry = self.sources.get_mut(source)?;
        entry.used = now;
        entry.values.get_mut(&seq)
    }

    /// Remembers `value` for `seq` in `source` (replacing what was there), forgetting the
    /// source's oldest key past `max_keys` and, for a new source past `max_sources`, the
    /// least recently used source.
    pub fn insert(&mut self, source: S, seq: u64, value: V) {
        let now = self.tick();
        if !self.sources.contains_key(&source) && self.sources.len() >= self.max_sources {
            let oldest = self
                .sources
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.sources.remove(&oldest);
            }
        }
        let entry = self.sources.entry(source).or_insert_with(|| Source {
            used: now,
            values: HashMap::new(),
            order: VecDeque::new(),
        });
        entry.used = now;
        if entry.values.insert(seq, value).is_none() {
            entry.order.push_back(seq);
            while entry.order.len() > self.max_keys {
                if let Some(old) = entry.order.pop_front() {
                    entry.values.remove(&old);
                }
            }
        }
    }

    /// Forgets `seq` in `source`, giving back its value.
    pub fn remove(&mut self, source: &S, seq: u64) -> Option<V> {
        let entry = self.sources.get_mut(source)?;
        let value = entry.values.remove(&seq)?;
        if let Some(pos) = entry.order.iter().position(|&s| s == seq) {
            entry.order.remove(pos);
        }
        Some(value)
    }

    /// Sources remembered.
    pub fn n_sources(&self) -> usize {
        self.sources.len()
    }

    /// Keys remembered for `source`.
    pub fn n_keys(&self, source: &S) -> usize {
        self.sources.get(source).map_or(0, |s| s.values.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_keeps_its_newest_keys() {
        let mut w: Window<u8, u64> = Window::new(4, 3);
        for seq in 0..5 {
            w.insert(1, seq, seq * 10);
        }
        assert_eq!(w.n_keys(&1), 3);
        assert_eq!(w.get_mut(&1, 0), None);
        assert_eq!(w.get_mut(&1, 1), None);
        assert_eq!(w.get_mut(&1, 2), Some(&mut 20));
        assert_eq!(w.get_mut(&1, 4), Some(&mut 40));
        // Replacing a value does not make it newer or count twice.
        w.insert(1, 2, 21);
        w.insert(1, 5, 50);
        assert_eq!(w.n_keys(&1), 3);
        assert_eq!(w.get_mut(&1, 2), None, "2 was still the oldest");
        assert_eq!(w.get_mut(&1, 3), Some(&mut 30));
    }

    #[test]
    fn the_least_recently_used_source_goes_first() {
        let mut w: Window<u8, ()> = Window::new(2, 8);
        w.insert(1, 0, ());
        w.insert(2, 0, ());
        // Source 1 is used again; 2 is now the least recently used.
        assert!(w.get_mut(&1, 0).is_some());
        w.insert(3, 0, ());
        assert_eq!(w.n_sources(), 2);
        assert!(w.get_mut(&2, 0).is_none());
        assert!(w.get_mut(&1, 0).is_some());
        assert!(w.get_mut(&3, 0).is_some());
        // A look-up of a key it does not have is a use of the source all the same.
        assert!(w.get_mut(&1, 99).is_none());
        w.insert(4, 0, ());
        assert!(w.get_mut(&3, 0).is_none());
        assert!(w.get_mut(&1, 0).is_some());
    }

    #[test]
    fn removed_keys_free_their_place() {
        let mut w: Window<u8, u8> = Window::new(1, 2);
        w.insert(1, 7, 7);
        assert_eq!(w.remove(&1, 7), Some(7));
        assert_eq!(w.remove(&1, 7), None);
        w.insert(1, 8, 8);
        w.insert(1, 9, 9);
        assert_eq!(w.n_keys(&1), 2);
        assert!(
            w.get_mut(&1, 8).is_some(),
            "7's removal left no stale place"
        );
    }

    #[test]
    fn memory_is_bounded_whatever_is_sent() {
        let mut w: Window<u32, ()> = Window::new(crate::IDEM_SOURCES, crate::IDEM_WINDOW);
        for source in 0..100u32 {
            for seq in 0..(crate::IDEM_WINDOW as u64 + 10) {
                w.insert(source, seq, ());
            }
        }
        assert_eq!(w.n_sources(), crate::IDEM_SOURCES);
        assert_eq!(w.n_keys(&99), crate::IDEM_WINDOW);
    }
}
