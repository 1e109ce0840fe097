//! The answer of [`ClientStore::candidates`](super::ClientStore::candidates):
//! a union of disjoint client sets, borrowed from the store.
//!
//! The sets come from app groups or index buckets, and are disjoint by
//! construction (a client is in one group, and has one value per key), so
//! the length is a sum and `nth` walks the sets: both cost O(sets touched),
//! never O(clients). Only a probe on an unindexed key is answered by a scan,
//! whose result is then held as a list.

use super::client_set::ClientSet;
use super::store::ClientIdx;

#[derive(Debug, Clone, Default)]
pub struct Candidates<'a> {
    sets: Vec<&'a ClientSet>,
    /// Clients found by scanning (unindexed keys only).
    scanned: Vec<ClientIdx>,
    len: usize,
}

impl<'a> Candidates<'a> {
    pub(super) fn from_sets(sets: Vec<&'a ClientSet>) -> Self {
        let len = sets.iter().map(|s| s.len()).sum();
        Candidates {
            sets,
            scanned: Vec::new(),
            len,
        }
    }

    pub(super) fn from_scan(scanned: Vec<ClientIdx>) -> Self {
        Candidates {
            sets: Vec::new(),
            len: scanned.len(),
            scanned,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `i`-th candidate (for `i < len()`), in the same order as
    /// [`Candidates::iter`]; lets a router draw a uniformly random candidate
    /// without collecting them.
    pub fn nth(&self, mut i: usize) -> Option<ClientIdx> {
        if i < self.scanned.len() {
            return Some(self.scanned[i]);
        }
        i -= self.scanned.len();
        for set in &self.sets {
            if i < set.len() {
                return set.get(i);
            }
            i -= set.len();
        }
        None
    }

    pub fn iter(&self) -> impl Iterator<Item = ClientIdx> + '_ {
        let sets = self.sets.iter().flat_map(|s| s.iter());
        self.scanned.iter().copied().chain(sets)
    }
}

impl<'a> IntoIterator for Candidates<'a> {
    type Item = ClientIdx;
    type IntoIter = Box<dyn Iterator<Item = ClientIdx> + 'a>;

    /// The same order as [`Candidates::iter`], without borrowing the
    /// candidates (so a caller can return the iterator).
    fn into_iter(self) -> Self::IntoIter {
        let sets = self.sets.into_iter().flat_map(|s| s.iter());
        Box::new(self.scanned.into_iter().chain(sets))
    }
}
