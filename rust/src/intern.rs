//! Values that repeat across actions and sessions (an action's name, URL and method, the keys
//! of its timings and its resources' URLs, vital names), stored once per sessionizer and
//! shared by reference: open sessions are what fills a collector's memory, and most of their
//! text is the same few hundred strings.
//!
//! A value is looked up by a borrowed form of it (`&str`, or an action's fields as the record
//! holds them): nothing is allocated for a value the table has already.
use hashbrown::HashTable;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, OnceLock};

/// The tables' hash: foldhash, keyed at random per table, not `SipHash`. The values come from
/// clients (action names, URLs, session ids, user agents), so the hash must stay keyed: with a
/// secret key an attacker cannot compute colliding values offline (the denial of service that
/// matters here; foldhash says it is minimally resistant to it); `SipHash`-1-3 was a tenth of
/// ingest's instructions. The key comes from the operating system's random source (through
/// std's `RandomState`, whose keys it draws once per thread), not from foldhash's own default
/// seed, which mixes stack and heap addresses and the clock.
#[derive(Clone, Debug)]
pub struct HashState(foldhash::fast::SeedableRandomState);

impl Default for HashState {
    fn default() -> Self {
        static SHARED: OnceLock<foldhash::SharedSeed> = OnceLock::new();
        let shared = SHARED.get_or_init(|| foldhash::SharedSeed::from_u64(os_random_u64()));
        HashState(foldhash::fast::SeedableRandomState::with_seed(os_random_u64(), shared))
    }
}

impl BuildHasher for HashState {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    #[inline]
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// 64 random bits: std's `RandomState` is keyed from the operating system's random source
/// (once per thread, then a new key each call), so what it makes of a constant is random.
fn os_random_u64() -> u64 {
    std::hash::RandomState::new().hash_one(0u64)
}

/// How a table hashes a value; the borrowed forms that find it hash the same fields the same
/// way (see [`Table::find_or`]).
pub trait TableHash {
    fn table_hash(&self, state: &HashState) -> u64;
}

impl TableHash for str {
    fn table_hash(&self, state: &HashState) -> u64 {
        state.hash_one(self)
    }
}

/// One table of shared values. Values no session holds any more are dropped when the table
/// has doubled since it was last pruned, so it stays within twice what open sessions use.
#[derive(Debug)]
pub struct Table<T: ?Sized> {
    set: HashTable<Entry<T>>,
    state: HashState,
    prune_at: usize,
}

#[derive(Debug)]
struct Entry<T: ?Sized> {
    value: Arc<T>,
    /// The value is known to be what the sessionizer's scrubbing and truncating make of it:
    /// text equal to it needs neither (see [`Table::find_verbatim`]).
    verbatim: bool,
}

const MIN_PRUNE: usize = 4096;

impl<T: ?Sized> Default for Table<T> {
    fn default() -> Self {
        Table { set: HashTable::new(), state: HashState::default(), prune_at: MIN_PRUNE }
    }
}

impl<T: ?Sized + TableHash> Table<T> {
    /// The state to hash a borrowed form with, for [`Table::find_or`].
    pub fn state(&self) -> &HashState {
        &self.state
    }

    /// The shared value whose hash is `hash` (its [`TableHash`]) and that `eq` accepts; made
    /// by `make` when there is none.
    pub fn find_or(&mut self, hash: u64, eq: impl FnMut(&Arc<T>) -> bool, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        self.find_or_mark(hash, eq, make, false)
    }

    /// [`Table::find_or`], marking the value as verbatim when `verbatim` (the caller found it
    /// unchanged by scrubbing and truncating).
    pub fn find_or_mark(&mut self, hash: u64, mut eq: impl FnMut(&Arc<T>) -> bool, make: impl FnOnce() -> Arc<T>, verbatim: bool) -> Arc<T> {
        if let Some(e) = self.set.find_mut(hash, |e| eq(&e.value)) {
            e.verbatim |= verbatim;
            return Arc::clone(&e.value);
        }
        if self.set.len() >= self.prune_at {
            self.set.retain(|e| Arc::strong_count(&e.value) > 1);
            self.prune_at = (2 * self.set.len()).max(MIN_PRUNE);
        }
        let value = make();
        let state = &self.state;
        self.set.insert_unique(hash, Entry { value: Arc::clone(&value), verbatim }, |e| e.value.table_hash(state));
        value
    }

    /// The shared value `eq` accepts if it is marked verbatim: then text as sent that equals it
    /// is already scrubbed and truncated (the scrubber is the sessionizer's own and fixed, as
    /// are the tables), and scrubbing it again, the costly part of an action, is skipped.
    pub fn find_verbatim(&self, hash: u64, mut eq: impl FnMut(&Arc<T>) -> bool) -> Option<&Arc<T>> {
        self.set.find(hash, |e| e.verbatim && eq(&e.value)).map(|e| &e.value)
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

impl<T: ?Sized + TableHash + Eq> Table<T> {
    /// The shared copy of `value` (an `Arc` made elsewhere, after a restore).
    pub fn share(&mut self, value: &Arc<T>) -> Arc<T> {
        let hash = value.table_hash(&self.state);
        self.find_or(hash, |v| **v == **value, || Arc::clone(value))
    }
}

impl Table<str> {
    pub fn str(&mut self, s: &str) -> Arc<str> {
        let hash = s.table_hash(&self.state);
        self.find_or(hash, |v| &**v == s, || Arc::from(s))
    }
}

/// Hashes the fields of a value one after the other (a value and its borrowed forms write
/// the same fields, as the same types, in the same order, so they hash alike).
pub fn hash_fields(state: &HashState, write: impl FnOnce(&mut <HashState as BuildHasher>::Hasher)) -> u64 {
    let mut h = state.build_hasher();
    write(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_its_own_random_key() {
        let (a, b) = (HashState::default(), HashState::default());
        assert_ne!(a.hash_one("sid-00000001"), b.hash_one("sid-00000001"));
        assert_eq!(a.hash_one("sid-00000001"), a.clone().hash_one("sid-00000001"));
    }

    #[test]
    fn equal_values_share_one_copy_and_unused_ones_are_pruned() {
        let mut t: Table<str> = Table::default();
        let a = t.str("https://shop.example.com/");
        let b = t.str("https://shop.example.com/");
        assert!(Arc::ptr_eq(&a, &b));
        for i in 0..2 * MIN_PRUNE {
            t.str(&format!("u{i}"));
        }
        assert!(t.len() <= MIN_PRUNE + 2, "{}", t.len());
        assert!(Arc::ptr_eq(&a, &t.str("https://shop.example.com/")));
        let c: Arc<str> = Arc::from("https://shop.example.com/");
        assert!(Arc::ptr_eq(&a, &t.share(&c)));
    }
}
