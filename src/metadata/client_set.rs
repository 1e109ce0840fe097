//! A set of client slots with O(1) length and O(1) random access.
//!
//! Most index buckets are tiny (a high-cardinality key such as `ip` gives one
//! bucket per client), so a set starts as a plain vector (4 bytes per member,
//! removal by a short linear scan) and becomes an `IndexSet` (O(1) insert,
//! `swap_remove` and `get_index`) once it grows past [`SMALL_MAX`]. Both keep
//! members densely packed, which is what makes `nth` O(1).

use std::hash::{BuildHasherDefault, Hasher};

use indexmap::IndexSet;

use super::store::ClientIdx;

/// Above this many members a set switches to hashing. A linear scan of 32
/// `u32`s is a few cache lines, cheaper than hashing.
const SMALL_MAX: usize = 32;
/// A large set falls back to a vector below this size (hysteresis, so a set
/// hovering around the limit does not convert back and forth).
const LARGE_MIN: usize = SMALL_MAX / 2;

#[derive(Debug, Clone)]
pub enum ClientSet {
    Small(Vec<ClientIdx>),
    Large(Box<IndexSet<ClientIdx, BuildHasherDefault<SlotHasher>>>),
}

impl Default for ClientSet {
    fn default() -> Self {
        ClientSet::Small(Vec::new())
    }
}

impl ClientSet {
    pub fn len(&self) -> usize {
        match self {
            ClientSet::Small(v) => v.len(),
            ClientSet::Large(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `idx`; the caller guarantees it is not a member (every member is
    /// added once per bucket by construction, so a check would be wasted).
    pub fn insert(&mut self, idx: ClientIdx) {
        match self {
            ClientSet::Small(v) => {
                debug_assert!(!v.contains(&idx), "slot {idx} inserted twice");
                if v.len() < SMALL_MAX {
                    // Most buckets of a high-cardinality key hold one client:
                    // don't let the first push reserve room for four.
                    if v.capacity() == 0 {
                        v.reserve_exact(1);
                    }
                    v.push(idx);
                } else {
                    let mut set =
                        IndexSet::with_capacity_and_hasher(v.len() * 2, Default::default());
                    set.extend(v.iter().copied());
                    set.insert(idx);
                    *self = ClientSet::Large(Box::new(set));
                }
            }
            ClientSet::Large(s) => {
                let added = s.insert(idx);
                debug_assert!(added, "slot {idx} inserted twice");
            }
        }
    }

    /// Removes `idx`, returning whether it was a member.
    pub fn remove(&mut self, idx: ClientIdx) -> bool {
        match self {
            ClientSet::Small(v) => match v.iter().position(|&m| m == idx) {
                Some(i) => {
                    v.swap_remove(i);
                    true
                }
                None => false,
            },
            ClientSet::Large(s) => {
                let removed = s.swap_remove(&idx);
                if s.len() < LARGE_MIN {
                    *self = ClientSet::Small(s.iter().copied().collect());
                }
                removed
            }
        }
    }

    /// The `i`-th member in the set's (arbitrary but stable) order.
    pub fn get(&self, i: usize) -> Option<ClientIdx> {
        match self {
            ClientSet::Small(v) => v.get(i).copied(),
            ClientSet::Large(s) => s.get_index(i).copied(),
        }
    }

    /// For the consistency check: no duplicates, and each representation
    /// within its size range.
    pub fn check(&self) -> Result<(), String> {
        let mut members: Vec<ClientIdx> = self.iter().collect();
        members.sort_unstable();
        members.dedup();
        if members.len() != self.len() {
            return Err(format!("client set has duplicates: {self:?}"));
        }
        match self {
            ClientSet::Small(v) if v.len() > SMALL_MAX => Err(format!("small set of {}", v.len())),
            ClientSet::Large(s) if s.len() < LARGE_MIN => Err(format!("large set of {}", s.len())),
            _ => Ok(()),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = ClientIdx> + '_ {
        let (small, large) = match self {
            ClientSet::Small(v) => (Some(v.iter().copied()), None),
            ClientSet::Large(s) => (None, Some(s.iter().copied())),
        };
        small
            .into_iter()
            .flatten()
            .chain(large.into_iter().flatten())
    }
}

/// Hashes slot indices, which the store hands out itself (not attacker
/// chosen), so no DoS-resistant hashing is needed: one multiply spreads the
/// bits, and folding the high half down feeds both the bucket index (low
/// bits) and hashbrown's control byte (top bits).
#[derive(Default)]
pub struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than a u32 is hashed; stay correct.
        for &b in bytes {
            self.write_u32(u32::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        let h = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}
