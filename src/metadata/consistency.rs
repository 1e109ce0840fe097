//! A from-scratch recomputation of every index, compared with the live ones.
//!
//! Slow (it rebuilds everything); meant for tests, which call it after every
//! mutation to prove that incremental index maintenance never drifts.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::apps::{Group, is_restricted};
use super::client_set::ClientSet;
use super::index::{Kind, is_indexed};
use super::scalar::{IndexKeys, ScalarKey, index_keys};
use super::store::{ClientIdx, ClientStore};

type Buckets = BTreeMap<(String, Kind, ScalarKey, Group), BTreeSet<ClientIdx>>;

impl ClientStore {
    /// Checks every invariant of the store; `Err` describes the first broken
    /// one.
    #[doc(hidden)]
    pub fn debug_check_consistency(&self) -> Result<(), String> {
        let (slots, free, apps, index) = self.parts();
        check_slots(slots.iter().map(Option::is_some), free, self.len())?;

        let mut groups: BTreeMap<Group, BTreeSet<ClientIdx>> = BTreeMap::new();
        let mut buckets = Buckets::new();
        for (idx, entry) in self.iter() {
            let group = entry.group();
            if apps.name(group >> 1) != Some(&entry.app_id) {
                return Err(format!(
                    "client {idx}: group {group} is not app {}",
                    entry.app_id
                ));
            }
            if is_restricted(group) != entry.restricted {
                return Err(format!("client {idx}: group {group} vs restricted flag"));
            }
            if entry.metadata.get("restricted").map(|v| &v.value)
                != Some(&Value::Bool(entry.restricted))
            {
                return Err(format!(
                    "client {idx}: restricted key does not mirror the flag"
                ));
            }
            groups.entry(group).or_default().insert(idx);
            for (key, value) in entry.metadata.iter().filter(|(k, _)| is_indexed(k)) {
                let (kind, scalars) = match index_keys(value) {
                    IndexKeys::None => continue,
                    IndexKeys::Eq(k) => (Kind::Eq, vec![k]),
                    IndexKeys::Member(ks) => (Kind::Member, ks),
                };
                for scalar in scalars {
                    let members = buckets
                        .entry((key.to_owned(), kind, scalar, group))
                        .or_default();
                    members.insert(idx);
                }
            }
        }

        let mut live_groups = BTreeMap::new();
        for (group, set) in apps.groups() {
            set.check()?;
            if !set.is_empty() {
                live_groups.insert(group, set_of(set));
            }
        }
        if live_groups != groups {
            return Err(format!("app groups {live_groups:?}, expected {groups:?}"));
        }
        let app_count = groups.keys().map(|g| g >> 1).collect::<BTreeSet<_>>().len();
        if apps.interned() != app_count {
            return Err(format!(
                "{} apps interned, {app_count} live",
                apps.interned()
            ));
        }

        let mut live_buckets = Buckets::new();
        for (key, kind, scalar, postings) in index.buckets() {
            let mut last = None;
            for (group, set) in postings.groups() {
                set.check()?;
                if set.is_empty() || last >= Some(group) {
                    return Err(format!(
                        "bucket {key}/{scalar:?}: empty or unsorted group {group}"
                    ));
                }
                last = Some(group);
                live_buckets.insert((key.to_owned(), kind, scalar.clone(), group), set_of(set));
            }
            if last.is_none() {
                return Err(format!("bucket {key}/{scalar:?} is empty"));
            }
        }
        if live_buckets != buckets {
            return Err(format!("index {live_buckets:?}, expected {buckets:?}"));
        }
        let key_count = buckets
            .keys()
            .map(|(k, ..)| k)
            .collect::<BTreeSet<_>>()
            .len();
        if index.key_count() != key_count {
            return Err(format!(
                "{} keys indexed, {key_count} in use",
                index.key_count()
            ));
        }
        Ok(())
    }
}

/// Live slots, free list and length agree.
fn check_slots(
    live: impl Iterator<Item = bool>,
    free: &[ClientIdx],
    len: usize,
) -> Result<(), String> {
    let mut empty = BTreeSet::new();
    let mut live_count = 0;
    for (i, is_live) in live.enumerate() {
        if is_live {
            live_count += 1;
        } else {
            empty.insert(i as ClientIdx);
        }
    }
    let listed: BTreeSet<ClientIdx> = free.iter().copied().collect();
    if listed.len() != free.len() || listed != empty {
        return Err(format!("free list {free:?}, empty slots {empty:?}"));
    }
    if live_count != len {
        return Err(format!("len {len}, {live_count} live slots"));
    }
    Ok(())
}

fn set_of(set: &ClientSet) -> BTreeSet<ClientIdx> {
    set.iter().collect()
}
