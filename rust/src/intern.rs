//! Values that repeat across actions and sessions (an action's name, URL and method, the keys
//! of its timings and its resources' URLs, vital names), stored once per sessionizer and
//! shared by reference: open sessions are what fills a collector's memory, and most of their
//! text is the same few hundred strings.
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

/// One table of shared values. Values no session holds any more are dropped when the table
/// has doubled since it was last pruned, so it stays within twice what open sessions use.
#[derive(Debug)]
pub struct Table<T: ?Sized> {
    set: HashSet<Arc<T>>,
    prune_at: usize,
}

const MIN_PRUNE: usize = 4096;

impl<T: ?Sized + Eq + Hash> Default for Table<T> {
    fn default() -> Self {
        Table { set: HashSet::new(), prune_at: MIN_PRUNE }
    }
}

impl<T: ?Sized + Eq + Hash> Table<T> {
    /// The shared copy of `value`, made from `make` when there is none.
    pub fn get_or(&mut self, value: &T, make: impl FnOnce() -> Arc<T>) -> Arc<T> {
        match self.set.get(value) {
            Some(v) => Arc::clone(v),
            None => self.insert(make()),
        }
    }

    /// The shared copy of `value` (an `Arc` made elsewhere, after a restore).
    pub fn share(&mut self, value: &Arc<T>) -> Arc<T> {
        self.get_or(value, || Arc::clone(value))
    }

    fn insert(&mut self, v: Arc<T>) -> Arc<T> {
        if self.set.len() >= self.prune_at {
            self.set.retain(|v| Arc::strong_count(v) > 1);
            self.prune_at = (2 * self.set.len()).max(MIN_PRUNE);
        }
        self.set.insert(Arc::clone(&v));
        v
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

impl Table<str> {
    pub fn str(&mut self, s: &str) -> Arc<str> {
        self.get_or(s, || Arc::from(s))
    }
}

impl<T: Eq + Hash> Table<T> {
    /// The shared copy of an owned value (moved in when it is new).
    pub fn owned(&mut self, value: T) -> Arc<T> {
        match self.set.get(&value) {
            Some(v) => Arc::clone(v),
            None => self.insert(Arc::new(value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
