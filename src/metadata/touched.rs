//! What a store mutation changed, for whoever keeps a view of the store
//! elsewhere (the routing directory: other shards must learn which
//! applications and indexed values this shard holds).
//!
//! The store only notes *what* was touched; the reader asks the store for
//! the current counts ([`ClientStore::app_count`],
//! [`ClientStore::value_count`]) when it publishes. Absolute counts make a
//! published view idempotent and let many changes to one key cost one
//! message.
//!
//! [`ClientStore::app_count`]: super::ClientStore::app_count
//! [`ClientStore::value_count`]: super::ClientStore::value_count

use std::sync::Arc;

use super::ScalarKey;
pub use super::index::Kind;

/// One indexed value of one application: the unit the directory counts.
/// Matches exactly the store's index buckets, so a count from the store is
/// the number of clients an index probe on this key would return.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueKey {
    pub app: Arc<str>,
    /// The top-level metadata key.
    pub key: Box<str>,
    /// Equality bucket (`$eq`, `$in`) or membership bucket (`$contains`).
    pub kind: Kind,
    pub scalar: ScalarKey,
}

/// Something whose count may have changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Touched {
    /// The number of clients of this application.
    App(Arc<str>),
    /// The number of clients of an application in one index bucket.
    Value(ValueKey),
}

/// Clients counted apart by whether they are restricted: a query reaches
/// restricted clients only when it asks to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub open: u32,
    pub restricted: u32,
}

/// Sets holder `from`'s count of `key` in a table of holders per key (the
/// routing directory's shards, the value homes' nodes): a zero count
/// removes `from`, and the key once nobody holds it.
pub fn set_holder<K, H, S>(
    table: &mut std::collections::HashMap<K, Vec<(H, Count)>, S>,
    key: K,
    from: H,
    count: Count,
) where
    K: std::hash::Hash + Eq,
    H: PartialEq,
    S: std::hash::BuildHasher,
{
    if count.is_zero() {
        if let Some(holders) = table.get_mut(&key) {
            holders.retain(|(h, _)| *h != from);
            if holders.is_empty() {
                table.remove(&key);
            }
        }
        return;
    }
    let holders = table.entry(key).or_default();
    match holders.iter_mut().find(|(h, _)| *h == from) {
        Some(entry) => entry.1 = count,
        None => holders.push((from, count)),
    }
}

impl Count {
    /// The clients a query with this `restricted` flag can reach.
    pub fn reachable(self, include_restricted: bool) -> u64 {
        u64::from(self.open)
            + if include_restricted {
                u64::from(self.restricted)
            } else {
                0
            }
    }

    pub fn is_zero(self) -> bool {
        self.open == 0 && self.restricted == 0
    }
}
