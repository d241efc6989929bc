//! The decision cache a client keeps for decisions the policy marked cacheable
//! (`hermes.allow{cache=true}`): identical calls are then answered in the target
//! process without a round trip. It is a fixed table (bounded memory, no allocation),
//! safe to read and write from any thread and from a signal handler: each slot is a
//! seqlock, a reader that meets a slot being written treats it as a miss, and a
//! writer that meets another writer gives up. Entries carry the board's generation,
//! so a reloaded policy makes every older entry a miss.

use core::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering::*};

use crate::{le_word, le_word8, Op};

/// A cacheable decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached {
    Allow,
    Deny(i32),
    Emulate(i64),
}

/// What identifies a call: a hash of its decoded arguments, and a second word (the
/// operation, lengths and small integers) checked on a hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub hash: u64,
    pub check: u64,
}

const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
const P3: u64 = 0x5899_65cc_7537_4cc3;

/// The 128-bit product folded to 64: a fast, well-mixing step (as in wyhash).
#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Builds a [`Key`] from an operation's arguments, 16 bytes per step.
#[derive(Clone, Copy, Debug)]
pub struct KeyBuilder {
    hash: u64,
    check: u64,
}

impl KeyBuilder {
    pub fn new(op: Op, func_id: u64) -> Self {
        KeyBuilder { hash: fold(P0 ^ op as u64, P1 ^ func_id), check: (op as u64) << 56 }
    }

    /// Add a byte string (its length is part of the key, so `"ab","c"` ≠ `"a","bc"`).
    #[inline]
    pub fn bytes(mut self, b: &[u8]) -> Self {
        let mut h = self.hash ^ (b.len() as u64).wrapping_mul(P0);
        let mut chunks = b.chunks_exact(16);
        for c in &mut chunks {
            let (lo, hi) = c.split_at(8);
            h = fold(le_word8(lo) ^ P1, le_word8(hi) ^ h);
        }
        let rest = chunks.remainder();
        // The tail (0..15 bytes) as two words read with overlap instead of byte by
        // byte; its length is already in the key.
        let (lo, hi) = match rest.len() {
            0 => (0, 0),
            1..=7 => (le_word(rest), 0),
            8 => (le_word8(rest), 0),
            n => (le_word8(&rest[..8]), le_word8(&rest[n - 8..])),
        };
        h = fold(lo ^ P2, hi ^ h ^ P3);
        self.hash = h;
        self.check = self.check.rotate_left(17) ^ b.len() as u64;
        self
    }

    /// Add an integer argument (flags, a descriptor, a mode).
    #[inline]
    pub fn int(mut self, v: u64) -> Self {
        self.hash = fold(self.hash ^ v, P3);
        self.check = self.check.rotate_left(23) ^ v;
        self
    }

    pub fn finish(self) -> Key {
        Key { hash: fold(self.hash, P2 ^ self.check), check: self.check }
    }
}

/// One entry. `seq` is odd while a writer is filling it in.
struct Slot {
    seq: AtomicU64,
    hash: AtomicU64,
    check: AtomicU64,
    generation: AtomicU64,
    kind: AtomicU64,
    value: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // only the initialiser of `Cache::new`
const EMPTY: Slot = Slot {
    seq: AtomicU64::new(0),
    hash: AtomicU64::new(0),
    check: AtomicU64::new(0),
    generation: AtomicU64::new(0),
    kind: AtomicU64::new(0),
    value: AtomicU64::new(0),
};

/// Slots probed per key: a key lives in one of two neighbouring slots.
const WAYS: usize = 2;

/// A table of `N` slots (a power of two).
pub struct Cache<const N: usize> {
    slots: [Slot; N],
    /// Set by the first `put`: until then `clear` has nothing to look at.
    used: AtomicBool,
}

impl<const N: usize> Default for Cache<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Cache<N> {
    pub const fn new() -> Self {
        assert!(N.is_power_of_two());
        Cache { slots: [EMPTY; N], used: AtomicBool::new(false) }
    }

    fn slot(&self, key: &Key, way: usize) -> &Slot {
        &self.slots[(key.hash as usize).wrapping_add(way) & (N - 1)]
    }

    /// The cached decision for `key` made under policy `generation`, if any.
    #[inline]
    pub fn get(&self, key: &Key, generation: u64) -> Option<Cached> {
        (0..WAYS).find_map(|way| {
            let slot = self.slot(key, way);
            let before = slot.seq.load(Acquire);
            if before & 1 == 1 {
                return None;
            }
            let (hash, check, gen) = (slot.hash.load(Relaxed), slot.check.load(Relaxed), slot.generation.load(Relaxed));
            let (kind, value) = (slot.kind.load(Relaxed), slot.value.load(Relaxed));
            fence(Acquire);
            if slot.seq.load(Relaxed) != before || hash != key.hash || check != key.check || gen != generation {
                return None;
            }
            decode(kind, value)
        })
    }

    /// Remember `decision` for `key` under policy `generation`. Best effort: a slot
    /// another writer holds is left alone.
    pub fn put(&self, key: &Key, generation: u64, decision: Cached) {
        // Prefer the key's own slot, then a stale or empty one, else evict the first.
        let way = (0..WAYS)
            .find(|&w| {
                let s = self.slot(key, w);
                s.hash.load(Relaxed) == key.hash && s.generation.load(Relaxed) == generation
            })
            .or_else(|| (0..WAYS).find(|&w| self.slot(key, w).generation.load(Relaxed) != generation))
            .unwrap_or(0);
        if !self.used.load(Relaxed) {
            self.used.store(true, Relaxed);
        }
        let slot = self.slot(key, way);
        let seq = slot.seq.load(Relaxed);
        if seq & 1 == 1 || slot.seq.compare_exchange(seq, seq + 1, Relaxed, Relaxed).is_err() {
            return;
        }
        fence(Release);
        let (kind, value) = encode(decision);
        slot.hash.store(key.hash, Relaxed);
        slot.check.store(key.check, Relaxed);
        slot.generation.store(generation, Relaxed);
        slot.kind.store(kind, Relaxed);
        slot.value.store(value, Relaxed);
        slot.seq.store(seq + 2, Release);
    }

    /// Forget everything (after fork, a slot a vanished writer held stays odd).
    /// Slots already clear are only read: a fork child that never used the cache does not
    /// copy its pages.
    pub fn clear(&self) {
        if !self.used.load(Relaxed) {
            return; // a fork child of a process that never cached: not even read
        }
        for slot in &self.slots {
            if slot.generation.load(Relaxed) != 0 || slot.seq.load(Relaxed) != 0 {
                slot.generation.store(0, Relaxed);
                slot.seq.store(0, Release);
            }
        }
    }
}

fn encode(d: Cached) -> (u64, u64) {
    match d {
        Cached::Allow => (1, 0),
        Cached::Deny(errno) => (2, errno as u32 as u64),
        Cached::Emulate(ret) => (3, ret as u64),
    }
}

fn decode(kind: u64, value: u64) -> Option<Cached> {
    match kind {
        1 => Some(Cached::Allow),
        2 => Some(Cached::Deny(value as u32 as i32)),
        3 => Some(Cached::Emulate(value as i64)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::sync::Arc;

    fn key(path: &[u8], flags: u64) -> Key {
        KeyBuilder::new(Op::Open, 1).bytes(path).int(flags).finish()
    }

    #[test]
    fn hits_are_exact_and_per_generation() {
        let cache: Cache<64> = Cache::new();
        let k = key(b"/etc/passwd", 0);
        assert_eq!(cache.get(&k, 1), None);
        cache.put(&k, 1, Cached::Deny(13));
        assert_eq!(cache.get(&k, 1), Some(Cached::Deny(13)));
        assert_eq!(cache.get(&k, 2), None, "a reload makes old entries stale");
        assert_eq!(cache.get(&key(b"/etc/passwd", 1), 1), None, "other flags, other key");
        assert_eq!(cache.get(&key(b"/etc/passwe", 0), 1), None);
        cache.put(&k, 2, Cached::Emulate(-7));
        assert_eq!(cache.get(&k, 2), Some(Cached::Emulate(-7)));
        cache.clear();
        assert_eq!(cache.get(&k, 2), None);
    }

    #[test]
    fn keys_separate_lengths_and_operations() {
        let a = KeyBuilder::new(Op::Open, 1).bytes(b"ab").bytes(b"c").finish();
        let b = KeyBuilder::new(Op::Open, 1).bytes(b"a").bytes(b"bc").finish();
        let c = KeyBuilder::new(Op::Connect, 1).bytes(b"ab").bytes(b"c").finish();
        assert_ne!(a, b);
        assert_ne!(a, c);
        // Every length around the 8- and 16-byte steps hashes differently.
        let long = [b'x'; 40];
        let keys: std::vec::Vec<Key> = (0..40).map(|n| key(&long[..n], 0)).collect();
        for (i, k) in keys.iter().enumerate() {
            assert!(keys[i + 1..].iter().all(|o| o.hash != k.hash));
        }
    }

    #[test]
    fn bounded_table_evicts_and_keeps_answering() {
        let cache: Cache<8> = Cache::new();
        let keys: std::vec::Vec<Key> = (0..100u64).map(|i| key(b"/tmp/f", i)).collect();
        for k in &keys {
            cache.put(k, 1, Cached::Allow);
        }
        let hits = keys.iter().filter(|k| cache.get(k, 1).is_some()).count();
        assert!(hits > 0 && hits <= 8, "{hits} hits in an 8-slot table");
    }

    /// Readers racing writers never see a torn entry: every hit is the value written
    /// for exactly that key.
    #[test]
    fn concurrent_readers_never_see_torn_entries() {
        let cache: Arc<Cache<4>> = Arc::new(Cache::new());
        let keys: std::vec::Vec<Key> = (0..16u64).map(|i| key(b"/k", i)).collect();
        let writers: std::vec::Vec<_> = (0..2)
            .map(|t| {
                let (cache, keys) = (Arc::clone(&cache), keys.clone());
                std::thread::spawn(move || {
                    for round in 0..20_000usize {
                        let i = (round * 7 + t) % keys.len();
                        cache.put(&keys[i], 1, Cached::Emulate(i as i64));
                    }
                })
            })
            .collect();
        for round in 0..200_000usize {
            let i = round % keys.len();
            if let Some(hit) = cache.get(&keys[i], 1) {
                assert_eq!(hit, Cached::Emulate(i as i64));
            }
        }
        for w in writers {
            w.join().unwrap();
        }
    }
}
