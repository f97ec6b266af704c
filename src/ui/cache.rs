//! The files read recently, in memory, so the reactor can answer them without a worker: least
//! recently used out first, bounded by bytes. Its lock is held for a map operation only (a
//! lookup or an insert with its evictions), never across a read from disk.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

/// What an entry costs beyond its bytes (key, map slots, headers).
const ENTRY_OVERHEAD: usize = 256;

#[derive(Debug)]
pub struct Lru<K, V> {
    budget: usize,
    used: usize,
    clock: u64,
    map: HashMap<K, (u64, usize, Arc<V>)>,
    order: BTreeMap<u64, K>,
}

impl<K: Clone + Eq + Hash, V> Lru<K, V> {
    pub fn new(budget: usize) -> Lru<K, V> {
        Lru {
            budget,
            used: 0,
            clock: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    /// The entry, marked as just used.
    pub fn get(&mut self, key: &K) -> Option<Arc<V>> {
        self.clock += 1;
        let (used_at, _, v) = self.map.get_mut(key)?;
        let old = std::mem::replace(used_at, self.clock);
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(self.clock, k);
        }
        Some(v.clone())
    }

    /// Keeps `value` of `bytes`, dropping the least recently used entries to make room. An
    /// entry over a quarter of the budget is not kept.
    pub fn insert(&mut self, key: K, value: Arc<V>, bytes: usize) {
        let cost = bytes + ENTRY_OVERHEAD;
        if cost > self.budget / 4 {
            return;
        }
        self.remove(&key);
        while self.used + cost > self.budget {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, c, _)) = self.map.remove(&oldest) {
                self.used -= c;
            }
        }
        self.clock += 1;
        self.order.insert(self.clock, key.clone());
        self.map.insert(key, (self.clock, cost, value));
        self.used += cost;
    }

    fn remove(&mut self, key: &K) {
        if let Some((at, c, _)) = self.map.remove(key) {
            self.order.remove(&at);
            self.used -= c;
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
        self.used = 0;
    }

    /// Bytes held, overhead included.
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_goes_first_and_the_budget_holds() {
        let mut c: Lru<&str, u8> = Lru::new(4 * (100 + ENTRY_OVERHEAD));
        c.insert("a", Arc::new(1), 100);
        c.insert("b", Arc::new(2), 100);
        c.insert("c", Arc::new(3), 100);
        assert_eq!(c.get(&"a").as_deref(), Some(&1));
        c.insert("d", Arc::new(4), 100);
        c.insert("e", Arc::new(5), 100); // evicts b, the least recently used
        assert!(c.get(&"b").is_none());
        assert!(c.get(&"a").is_some() && c.get(&"e").is_some());
        assert_eq!(c.len(), 4);
        assert!(c.used() <= 4 * (100 + ENTRY_OVERHEAD));
        c.insert("a", Arc::new(9), 100);
        assert_eq!(c.get(&"a").as_deref(), Some(&9));
        assert_eq!(c.len(), 4, "a replaced, not added");
        c.insert("huge", Arc::new(0), 10_000);
        assert!(c.get(&"huge").is_none(), "over a quarter of the budget");
        c.clear();
        assert!(c.is_empty() && c.used() == 0);
    }
}
