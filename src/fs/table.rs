//! The node table: node id → entry (a [`super::lite::Slot`]), split into shards by id.
//!
//! One hash table for every node doubled as it grew, and while it moved its entries the old
//! table and the new one (twice its size) were both resident: at 57k nodes, 2.6 and 5.2 MiB.
//! That copy set the server's peak memory of a 100k-file walk (15.6-15.8 MiB, where the
//! table pre-sized for the walk peaked at 14.1-14.3). A shard holds one [`SHARDS`]th of the
//! nodes and grows on its own, so a growth step copies at most that share, and a change
//! (`install`, `forget`) write-locks one shard, not every lookup's table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Number of shards (a power of two).
const SHARDS: usize = 64;

pub(crate) struct NodeTable<V> {
    shards: Box<[RwLock<HashMap<u64, V>>]>,
    /// Entries in all shards.
    len: AtomicUsize,
    /// The most entries held since memory was last given back (see [`NodeTable::trim_due`]).
    peak: AtomicUsize,
}

/// One shard, write-locked: its changes keep the table's count.
pub(crate) struct ShardMut<'a, V> {
    map: RwLockWriteGuard<'a, HashMap<u64, V>>,
    table: &'a NodeTable<V>,
}

impl<V> NodeTable<V> {
    pub(crate) fn new() -> NodeTable<V> {
        NodeTable {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            len: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// The shard of `id`. Ids are inode numbers (dense in their low bits) or hashes; a
    /// multiplicative hash spreads either over the shards.
    fn shard(&self, id: u64) -> &RwLock<HashMap<u64, V>> {
        let i = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARDS.trailing_zeros());
        &self.shards[i as usize]
    }

    /// The shard holding `id`, read-locked.
    pub(crate) fn read(&self, id: u64) -> RwLockReadGuard<'_, HashMap<u64, V>> {
        self.shard(id).read()
    }

    /// The shard holding `id`, write-locked.
    pub(crate) fn write(&self, id: u64) -> ShardMut<'_, V> {
        ShardMut { map: self.shard(id).write(), table: self }
    }

    /// Entries in the table.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Entries for which `f` holds (takes each shard's read lock in turn).
    pub(crate) fn count(&self, f: impl Fn(&V) -> bool) -> usize {
        self.shards.iter().map(|s| s.read().values().filter(|v| f(v)).count()).sum()
    }

    /// Whether the kernel has let go of so many entries that their memory should go back to
    /// the system: half of the most held since the last time, and at least `min`. True for
    /// one caller only; the peak restarts from what is held now.
    pub(crate) fn trim_due(&self, min: usize) -> bool {
        let left = self.len();
        let peak = self.peak.load(Ordering::Relaxed);
        peak >= left.saturating_mul(2).max(left + min)
            && self.peak.compare_exchange(peak, left, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Shrinks every shard to twice what it holds (the tables do not shrink by themselves;
    /// this keeps room to grow back a little).
    pub(crate) fn shrink(&self) {
        for s in self.shards.iter() {
            let mut m = s.write();
            let want = m.len() * 2;
            m.shrink_to(want);
        }
    }

    /// Entries the shards have room for (for tests).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.read().capacity()).sum()
    }

    /// The largest shard's room (for tests).
    #[cfg(test)]
    fn largest_shard(&self) -> usize {
        self.shards.iter().map(|s| s.read().capacity()).max().unwrap_or(0)
    }
}

impl<V> ShardMut<'_, V> {
    pub(crate) fn get(&self, id: &u64) -> Option<&V> {
        self.map.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &u64) -> Option<&mut V> {
        self.map.get_mut(id)
    }

    /// Puts `slot` at `id`; returns what was there.
    pub(crate) fn insert(&mut self, id: u64, slot: V) -> Option<V> {
        let old = self.map.insert(id, slot);
        if old.is_none() {
            let len = self.table.len.fetch_add(1, Ordering::Relaxed) + 1;
            if len > self.table.peak.load(Ordering::Relaxed) {
                self.table.peak.fetch_max(len, Ordering::Relaxed);
            }
        }
        old
    }

    pub(crate) fn remove(&mut self, id: &u64) -> Option<V> {
        let old = self.map.remove(id);
        if old.is_some() {
            self.table.len.fetch_sub(1, Ordering::Relaxed);
        }
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_inserts_and_removes_across_shards() {
        let t = NodeTable::new();
        for id in 0..1000u64 {
            assert!(t.write(id).insert(id, id as u32).is_none());
        }
        assert_eq!(t.write(5).insert(5, 55), Some(5), "a replacement is no new entry");
        assert_eq!(t.len(), 1000);
        assert_eq!(t.read(5).get(&5), Some(&55));
        *t.write(6).get_mut(&6).unwrap() = 66;
        assert_eq!(t.write(6).get(&6), Some(&66));
        assert_eq!(t.write(7).remove(&7), Some(7));
        assert_eq!(t.write(7).remove(&7), None, "a second remove counts nothing");
        assert_eq!(t.len(), 999);
        assert_eq!(t.count(|v| v % 2 == 0), 500);
        assert!(t.read(7).get(&7).is_none());
    }

    #[test]
    fn dense_and_hashed_ids_spread_over_the_shards() {
        // Inode numbers of one directory are dense; a shard gets about its share of them, so
        // no shard's growth step copies much more than 1/SHARDS of the table.
        for base in [0u64, 1 << 40, 0xdead_beef_0000] {
            let t = NodeTable::new();
            let n = 100_000u64;
            for id in base..base + n {
                t.write(id).insert(id, ());
            }
            let share = t.capacity() / SHARDS;
            assert!(t.largest_shard() <= share * 2, "largest {} of {}", t.largest_shard(), t.capacity());
        }
    }

    #[test]
    fn trim_is_due_once_half_is_forgotten_and_for_one_caller() {
        let t = NodeTable::new();
        for id in 0..10_000u64 {
            t.write(id).insert(id, ());
        }
        for id in 0..4_000u64 {
            t.write(id).remove(&id);
        }
        assert!(!t.trim_due(1000), "6000 of 10000 held: not yet");
        for id in 4_000..5_000u64 {
            t.write(id).remove(&id);
        }
        assert!(!t.trim_due(6000), "5000 forgotten, fewer than the minimum");
        assert!(t.trim_due(1000), "half forgotten");
        assert!(!t.trim_due(1000), "the peak restarted from 5000");
        for id in 5_000..9_000u64 {
            t.write(id).remove(&id);
        }
        assert!(t.trim_due(1000));
        let before = t.capacity();
        t.shrink();
        assert!(t.capacity() < before / 2, "{} -> {}", before, t.capacity());
        assert!(t.capacity() >= 2 * t.len(), "room to grow back");
        assert_eq!(t.len(), 1000);
    }
}
