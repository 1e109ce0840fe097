//! The value indexes: (metadata key, normalised value) → clients, per group.
//!
//! Two maps per metadata key, keyed by [`ScalarKey`]:
//! - `eq`: the client's value *is* that scalar (or version), for `$eq`/`$in`;
//! - `member`: the scalar is an element of the client's list, or a key of its
//!   map, for `$contains`.
//!
//! A bucket holds one client set per group (app × restricted), sorted by
//! group. Keying by value first and by app second means a query without an
//! application does one hash lookup, not one per app; a query with one does
//! a binary search over that value's groups (usually one or two).

use std::collections::HashMap;

use super::apps::{Group, group_of, is_restricted};
use super::client_set::ClientSet;
use super::scalar::{IndexKeys, ScalarKey};
use super::store::ClientIdx;

/// The only key never indexed: it changes on every heartbeat, is unique per
/// client and is not something queries route on.
pub const UNINDEXED_KEY: &str = "last_heartbeat_time";

pub fn is_indexed(key: &str) -> bool {
    key != UNINDEXED_KEY
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Eq,
    Member,
}

/// The clients of one (key, value), split by group; only non-empty groups,
/// sorted by group number.
#[derive(Debug, Default)]
pub struct Postings(Vec<(Group, ClientSet)>);

impl Postings {
    fn insert(&mut self, group: Group, idx: ClientIdx) {
        match self.0.binary_search_by_key(&group, |(g, _)| *g) {
            Ok(i) => self.0[i].1.insert(idx),
            Err(i) => {
                let mut set = ClientSet::default();
                set.insert(idx);
                self.0.insert(i, (group, set));
            }
        }
    }

    fn remove(&mut self, group: Group, idx: ClientIdx) {
        if let Ok(i) = self.0.binary_search_by_key(&group, |(g, _)| *g) {
            self.0[i].1.remove(idx);
            if self.0[i].1.is_empty() {
                self.0.remove(i);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends the sets passing the app and restricted filters to `out`.
    pub fn select<'a>(
        &'a self,
        app: Option<u32>,
        include_restricted: bool,
        out: &mut Vec<&'a ClientSet>,
    ) {
        let keep = |g: Group| include_restricted || !is_restricted(g);
        match app {
            None => out.extend(self.0.iter().filter(|(g, _)| keep(*g)).map(|(_, s)| s)),
            Some(app) => {
                // The app's two groups are adjacent: start at the first.
                let first = group_of(app, false);
                let start = self.0.partition_point(|(g, _)| *g < first);
                let app_groups = self.0[start..].iter().take_while(|(g, _)| *g >> 1 == app);
                out.extend(app_groups.filter(|(g, _)| keep(*g)).map(|(_, s)| s));
            }
        }
    }

    pub fn groups(&self) -> impl Iterator<Item = (Group, &ClientSet)> {
        self.0.iter().map(|(g, s)| (*g, s))
    }
}

#[derive(Debug, Default)]
struct KeyIndex {
    eq: HashMap<ScalarKey, Postings>,
    member: HashMap<ScalarKey, Postings>,
}

impl KeyIndex {
    fn map(&mut self, kind: Kind) -> &mut HashMap<ScalarKey, Postings> {
        match kind {
            Kind::Eq => &mut self.eq,
            Kind::Member => &mut self.member,
        }
    }
}

#[derive(Debug, Default)]
pub struct ValueIndex {
    keys: HashMap<Box<str>, KeyIndex>,
}

impl ValueIndex {
    /// Adds `idx` (of `group`) under every key of its value at `key`.
    pub fn add(&mut self, key: &str, keys: IndexKeys, group: Group, idx: ClientIdx) {
        let Some((kind, scalars)) = split(keys) else {
            return;
        };
        let index = match self.keys.get_mut(key) {
            Some(index) => index,
            None => self.keys.entry(key.into()).or_default(),
        };
        let map = index.map(kind);
        for scalar in scalars {
            map.entry(scalar).or_default().insert(group, idx);
        }
    }

    /// Undoes [`ValueIndex::add`] with the same arguments, dropping buckets
    /// and key entries that become empty (so memory follows live clients).
    pub fn remove(&mut self, key: &str, keys: IndexKeys, group: Group, idx: ClientIdx) {
        let Some((kind, scalars)) = split(keys) else {
            return;
        };
        let Some(index) = self.keys.get_mut(key) else {
            return;
        };
        let map = index.map(kind);
        for scalar in scalars {
            if let Some(postings) = map.get_mut(&scalar) {
                postings.remove(group, idx);
                if postings.is_empty() {
                    map.remove(&scalar);
                }
            }
        }
        if index.eq.is_empty() && index.member.is_empty() {
            self.keys.remove(key);
        }
    }

    pub fn lookup(&self, key: &str, kind: Kind, scalar: &ScalarKey) -> Option<&Postings> {
        let index = self.keys.get(key)?;
        match kind {
            Kind::Eq => index.eq.get(scalar),
            Kind::Member => index.member.get(scalar),
        }
    }

    /// Every bucket, for the consistency check.
    pub fn buckets(&self) -> impl Iterator<Item = (&str, Kind, &ScalarKey, &Postings)> {
        self.keys.iter().flat_map(|(key, index)| {
            let eq = index.eq.iter().map(move |(s, p)| (&**key, Kind::Eq, s, p));
            let member = index
                .member
                .iter()
                .map(move |(s, p)| (&**key, Kind::Member, s, p));
            eq.chain(member)
        })
    }

    /// Number of metadata keys with at least one bucket.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

/// The bucket kind and keys of a value; `None` when it adds nothing (so no
/// empty key entry is ever created).
fn split(keys: IndexKeys) -> Option<(Kind, impl Iterator<Item = ScalarKey>)> {
    // One iterator type for both arms, without allocating for the scalar.
    match keys {
        IndexKeys::None => None,
        IndexKeys::Member(ks) if ks.is_empty() => None,
        IndexKeys::Eq(k) => Some((Kind::Eq, Some(k).into_iter().chain(Vec::new()))),
        IndexKeys::Member(ks) => Some((Kind::Member, None.into_iter().chain(ks))),
    }
}
