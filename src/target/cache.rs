//! `cache_ttl`: resolved token -> target mappings kept for a while, bounded in size (the oldest
//! entry goes first). Keyed by the token's SHA-1, so the cache holds no token. Unknown tokens are
//! not cached.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Target;

/// A token's SHA-1.
pub type Key = [u8; 20];

pub struct TargetCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// Target and when it was stored.
    map: HashMap<Key, (Target, Instant)>,
    /// Insertion order; an entry whose time no longer matches the map's was replaced since.
    order: VecDeque<(Key, Instant)>,
}

impl TargetCache {
    pub fn new(ttl: Duration, capacity: usize) -> TargetCache {
        TargetCache {
            ttl,
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    /// The cached target, if it was stored less than `ttl` ago.
    pub fn get(&self, key: &Key) -> Option<Target> {
        self.get_at(key, Instant::now())
    }

    pub fn insert(&self, key: Key, target: Target) {
        self.insert_at(key, target, Instant::now());
    }

    fn get_at(&self, key: &Key, now: Instant) -> Option<Target> {
        let entries = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (target, stored) = entries.map.get(key)?;
        (now.saturating_duration_since(*stored) < self.ttl).then(|| target.clone())
    }

    fn insert_at(&self, key: Key, target: Target, now: Instant) {
        let mut entries = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Entries { map, order } = &mut *entries;
        map.insert(key, (target, now));
        order.push_back((key, now));
        // Replaced entries leave stale places in the order: drop them all once they are as many
        // as the capacity (amortised constant time), so the order stays within twice the
        // capacity.
        if order.len() > 2 * self.capacity {
            order.retain(|(k, at)| map.get(k).is_some_and(|(_, stored)| stored == at));
        }
        while map.len() > self.capacity {
            let Some((old, at)) = order.pop_front() else {
                break;
            };
            if map.get(&old).is_some_and(|(_, stored)| *stored == at) {
                map.remove(&old);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(port: u16) -> Target {
        Target::Tcp {
            host: "10.0.0.1".into(),
            port,
        }
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let c = TargetCache::new(Duration::from_secs(10), 10);
        let t0 = Instant::now();
        c.insert_at([1; 20], t(1), t0);
        assert_eq!(c.get_at(&[1; 20], t0 + Duration::from_secs(9)), Some(t(1)));
        assert_eq!(c.get_at(&[1; 20], t0 + Duration::from_secs(10)), None);
        assert_eq!(c.get_at(&[2; 20], t0), None);
    }

    #[test]
    fn the_oldest_entry_is_evicted_first() {
        let c = TargetCache::new(Duration::from_secs(3600), 3);
        let t0 = Instant::now();
        for k in 0..3u8 {
            c.insert_at(
                [k; 20],
                t(u16::from(k) + 1),
                t0 + Duration::from_secs(u64::from(k)),
            );
        }
        // Key 0 stored again: now the newest.
        c.insert_at([0; 20], t(9), t0 + Duration::from_secs(5));
        c.insert_at([3; 20], t(4), t0 + Duration::from_secs(6));
        let now = t0 + Duration::from_secs(7);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get_at(&[1; 20], now), None, "the oldest went first");
        assert_eq!(c.get_at(&[0; 20], now), Some(t(9)));
        assert_eq!(c.get_at(&[2; 20], now), Some(t(3)));
        assert_eq!(c.get_at(&[3; 20], now), Some(t(4)));
        // Many re-insertions of one key keep the bookkeeping bounded.
        for s in 0..100u64 {
            c.insert_at([0; 20], t(9), now + Duration::from_secs(s));
        }
        assert!(c.inner.lock().unwrap().order.len() <= 6);
        assert_eq!(c.len(), 3);
    }
}
