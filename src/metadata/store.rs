//! The clients connected to one shard, with their metadata and indexes.
//!
//! # Layout
//!
//! - `slots`: one [`ClientEntry`] per client, addressed by [`ClientIdx`];
//!   freed slots are reused (LIFO) so the vector stays as dense as the peak.
//! - [`Apps`]: interned app names; per app two client sets (unrestricted,
//!   restricted), the *groups*. Answers queries without a probe.
//! - [`ValueIndex`]: (metadata key, normalised value) → per-group client sets,
//!   for equality (`$eq`, `$in`) and membership (`$contains`). Every
//!   top-level key is indexed except `last_heartbeat_time`.
//!
//! Every mutation of a value goes through one private path that unindexes
//! the old value and indexes the new one, so the indexes always equal what a
//! scan would find (`debug_check_consistency` verifies exactly that).
//!
//! # Memory per client
//!
//! Measured with a counting allocator over a million clients: about
//! 1.1 KiB for an idle client carrying only the reserved keys, of which
//! ~690 B is its `Metadata` (96 B per entry plus boxed keys and strings),
//! 64 B its slot, and the rest index postings: ~30 B per
//! membership in a large bucket (app, `encoding`, `restricted`, ...) and
//! ~150 B for a bucket of its own (a unique value such as `ip`). Each
//! distinct value is stored once per shard, never per client.
//!
//! Single-threaded by design (one store per shard): no locks, no I/O, no
//! clock. App names are `Arc<str>` only so that the store stays `Send` for
//! whoever builds it before moving it onto its executor; the atomic count is
//! touched once per connect and disconnect.

use std::sync::Arc;

use serde_json::Value;

use super::apps::{Apps, Group, group_of, is_restricted};
use super::candidates::Candidates;
use super::client_set::ClientSet;
use super::index::{Kind, ValueIndex, is_indexed};
use super::scalar::{IndexKeys, ScalarKey, index_keys, probe_keys};
use super::touched::{Count, Touched, ValueKey};
use super::validate::RESERVED_KEYS;
use super::{IndexPlan, MetaValue, Metadata, Probe};

/// A client's slot in its shard's store; reused after the client leaves.
pub type ClientIdx = u32;

/// The reserved key mirroring [`ClientEntry::restricted`].
const RESTRICTED_KEY: &str = "restricted";

#[derive(Debug, Clone)]
pub struct ClientEntry {
    /// Shared with every client of the same app on this shard.
    pub app_id: Arc<str>,
    pub client_id: Box<str>,
    /// Decides the client's group; mirrored in the `restricted` metadata key.
    pub restricted: bool,
    pub metadata: Metadata,
    group: Group,
}

#[derive(Debug, Default)]
pub struct ClientStore {
    slots: Vec<Option<ClientEntry>>,
    free: Vec<ClientIdx>,
    len: usize,
    apps: Apps,
    index: ValueIndex,
    /// What changed since [`ClientStore::take_touched`] last asked, when
    /// someone keeps a view of this store (see [`ClientStore::note_changes`]).
    touched: Option<Vec<Touched>>,
}

impl ClientStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a client. The `restricted` metadata key is set from the flag, so
    /// the two cannot disagree. The caller has already checked that
    /// (`app_id`, `client_id`) is not connected (that check spans shards).
    pub fn insert(
        &mut self,
        app_id: &str,
        client_id: &str,
        restricted: bool,
        mut metadata: Metadata,
    ) -> ClientIdx {
        let idx = match self.free.pop() {
            Some(idx) => idx,
            None => {
                self.slots.push(None);
                ClientIdx::try_from(self.slots.len() - 1)
                    .expect("fewer than 2^32 clients per shard")
            }
        };
        metadata.insert(RESTRICTED_KEY, MetaValue::plain(Value::Bool(restricted)));
        // Entries live for the whole connection: give back growth slack.
        metadata.shrink_to_fit();
        let (app, group) = self.apps.join(app_id, restricted, idx);
        note(&mut self.touched, || Touched::App(app.clone()));
        for (key, value) in metadata.iter().filter(|(k, _)| is_indexed(k)) {
            let keys = index_keys(value);
            note_value(&mut self.touched, &app, key, &keys);
            self.index.add(key, keys, group, idx);
        }
        self.slots[idx as usize] = Some(ClientEntry {
            app_id: app,
            client_id: client_id.into(),
            restricted,
            metadata,
            group,
        });
        self.len += 1;
        idx
    }

    pub fn remove(&mut self, idx: ClientIdx) -> Option<ClientEntry> {
        let entry = self.slots.get_mut(idx as usize)?.take()?;
        self.unindex_all(idx, &entry);
        note(&mut self.touched, || Touched::App(entry.app_id.clone()));
        self.apps.leave(entry.group, idx);
        self.free.push(idx);
        self.len -= 1;
        Some(entry)
    }

    pub fn get(&self, idx: ClientIdx) -> Option<&ClientEntry> {
        self.slots.get(idx as usize)?.as_ref()
    }

    /// Merges validated values (new keys overwrite old), indexes included.
    pub fn merge(&mut self, idx: ClientIdx, values: Vec<(String, MetaValue)>) {
        for (key, value) in values {
            self.set_value(idx, &key, value);
        }
    }

    /// Keeps only the reserved keys, then merges `values`. Keys present in
    /// both keep their index entries when the value is unchanged.
    pub fn replace(&mut self, idx: ClientIdx, values: Vec<(String, MetaValue)>) {
        let Some(entry) = self.get(idx) else {
            return;
        };
        let dropped: Vec<Box<str>> = entry
            .metadata
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !RESERVED_KEYS.contains(k) && !values.iter().any(|(n, _)| n == k))
            .map(Box::from)
            .collect();
        for key in dropped {
            self.remove_value(idx, &key);
        }
        self.merge(idx, values);
    }

    /// Sets one server-owned key without validation. `last_heartbeat_time`
    /// is not indexed, so a heartbeat costs one binary search in the
    /// client's metadata and no allocation.
    pub fn set_reserved(&mut self, idx: ClientIdx, key: &str, value: MetaValue) {
        self.set_value(idx, key, value);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (ClientIdx, &ClientEntry)> {
        // Slot numbers fit in ClientIdx: `insert` checked it.
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| Some((i as ClientIdx, slot.as_ref()?)))
    }

    /// The clients of `app` (every app when `None`), without restricted ones
    /// unless `include_restricted`, and, with a plan, exactly those whose
    /// value at the probe's key satisfies the probe (`$eq` semantics of
    /// [`ScalarKey`]; probe values that are not scalars match nothing).
    pub fn candidates(
        &self,
        app: Option<&str>,
        include_restricted: bool,
        plan: Option<&IndexPlan>,
    ) -> Candidates<'_> {
        let app = match app {
            Some(name) => match self.apps.id(name) {
                Some(id) => Some(id),
                None => return Candidates::default(),
            },
            None => None,
        };
        let Some(plan) = plan else {
            return Candidates::from_sets(self.group_sets(app, include_restricted));
        };
        let (key, kind, scalars) = probe_scalars(&plan.probe);
        if !is_indexed(key) {
            let matching = self
                .group_sets(app, include_restricted)
                .into_iter()
                .flat_map(|set| set.iter())
                .filter(|&idx| {
                    self.get(idx)
                        .is_some_and(|e| entry_matches(e, key, kind, &scalars))
                })
                .collect();
            return Candidates::from_scan(matching);
        }
        let mut sets = Vec::new();
        for scalar in &scalars {
            if let Some(postings) = self.index.lookup(key, kind, scalar) {
                postings.select(app, include_restricted, &mut sets);
            }
        }
        Candidates::from_sets(sets)
    }

    /// The non-empty group sets passing the app and restricted filters.
    fn group_sets(&self, app: Option<u32>, include_restricted: bool) -> Vec<&ClientSet> {
        let keep = |(g, set): &(Group, &ClientSet)| {
            (include_restricted || !is_restricted(*g)) && !set.is_empty()
        };
        match app {
            Some(id) => [group_of(id, false), group_of(id, true)]
                .into_iter()
                .filter_map(|g| Some((g, self.apps.clients(g)?)))
                .filter(keep)
                .map(|(_, set)| set)
                .collect(),
            None => self
                .apps
                .groups()
                .filter(keep)
                .map(|(_, set)| set)
                .collect(),
        }
    }

    /// Sets `key` to `value`, moving the client between index buckets.
    fn set_value(&mut self, idx: ClientIdx, key: &str, value: MetaValue) {
        let Some(entry) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        let regroup = match (key, &value.value) {
            (RESTRICTED_KEY, Value::Bool(b)) => (*b != entry.restricted).then_some(*b),
            _ => None,
        };
        if is_indexed(key) {
            if let Some(old) = entry.metadata.get(key) {
                if *old == value {
                    return;
                }
                let keys = index_keys(old);
                note_value(&mut self.touched, &entry.app_id, key, &keys);
                self.index.remove(key, keys, entry.group, idx);
            }
            let keys = index_keys(&value);
            note_value(&mut self.touched, &entry.app_id, key, &keys);
            self.index.add(key, keys, entry.group, idx);
        }
        entry.metadata.insert(key, value);
        if let Some(restricted) = regroup {
            self.regroup(idx, restricted);
        }
    }

    fn remove_value(&mut self, idx: ClientIdx, key: &str) {
        let Some(entry) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        if let Some(old) = entry.metadata.remove(key)
            && is_indexed(key)
        {
            let keys = index_keys(&old);
            note_value(&mut self.touched, &entry.app_id, key, &keys);
            self.index.remove(key, keys, entry.group, idx);
        }
    }

    /// Moves a client to its app's other group (its restricted flag changed):
    /// every index entry names the group, so all of them move.
    fn regroup(&mut self, idx: ClientIdx, restricted: bool) {
        let Some(mut entry) = self.slots.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        self.unindex_all(idx, &entry);
        self.apps.leave(entry.group, idx);
        let (app, group) = self.apps.join(&entry.app_id, restricted, idx);
        (entry.app_id, entry.group, entry.restricted) = (app, group, restricted);
        note(&mut self.touched, || Touched::App(entry.app_id.clone()));
        for (key, value) in entry.metadata.iter().filter(|(k, _)| is_indexed(k)) {
            let keys = index_keys(value);
            note_value(&mut self.touched, &entry.app_id, key, &keys);
            self.index.add(key, keys, group, idx);
        }
        self.slots[idx as usize] = Some(entry);
    }

    fn unindex_all(&mut self, idx: ClientIdx, entry: &ClientEntry) {
        for (key, value) in entry.metadata.iter().filter(|(k, _)| is_indexed(k)) {
            let keys = index_keys(value);
            note_value(&mut self.touched, &entry.app_id, key, &keys);
            self.index.remove(key, keys, entry.group, idx);
        }
    }

    /// From now on, note every application and index bucket whose count a
    /// mutation may change, for [`ClientStore::take_touched`]. Off by
    /// default: a store nobody mirrors pays nothing.
    pub fn note_changes(&mut self) {
        self.touched.get_or_insert_default();
    }

    /// What was touched since the last call (possibly with repeats, and
    /// possibly unchanged in the end: read the counts to know).
    pub fn take_touched(&mut self) -> Vec<Touched> {
        self.touched
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether anything was touched since [`ClientStore::take_touched`].
    pub fn has_touched(&self) -> bool {
        self.touched.as_ref().is_some_and(|t| !t.is_empty())
    }

    /// Every application with clients in this store, and how many.
    pub fn app_counts(&self) -> impl Iterator<Item = (&Arc<str>, usize)> {
        self.apps.counts()
    }

    /// How many clients of `app` this store holds.
    pub fn app_count(&self, app: &str) -> Count {
        let Some(id) = self.apps.id(app) else {
            return Count::default();
        };
        let len = |restricted| {
            self.apps
                .clients(group_of(id, restricted))
                .map_or(0, |set| set.len() as u32)
        };
        Count {
            open: len(false),
            restricted: len(true),
        }
    }

    /// How many clients of the key's application sit in its index bucket.
    pub fn value_count(&self, vk: &ValueKey) -> Count {
        let Some(id) = self.apps.id(&vk.app) else {
            return Count::default();
        };
        let Some(postings) = self.index.lookup(&vk.key, vk.kind, &vk.scalar) else {
            return Count::default();
        };
        let mut count = Count::default();
        for (group, set) in postings.groups().filter(|(g, _)| *g >> 1 == id) {
            match is_restricted(group) {
                true => count.restricted = set.len() as u32,
                false => count.open = set.len() as u32,
            }
        }
        count
    }

    // For the consistency check (consistency.rs).
    pub(super) fn parts(&self) -> (&[Option<ClientEntry>], &[ClientIdx], &Apps, &ValueIndex) {
        (&self.slots, &self.free, &self.apps, &self.index)
    }
}

impl ClientEntry {
    pub(super) fn group(&self) -> Group {
        self.group
    }
}

fn note(touched: &mut Option<Vec<Touched>>, what: impl FnOnce() -> Touched) {
    if let Some(touched) = touched {
        touched.push(what());
    }
}

/// Notes every bucket a value's index keys name.
fn note_value(touched: &mut Option<Vec<Touched>>, app: &Arc<str>, key: &str, keys: &IndexKeys) {
    let Some(touched) = touched else { return };
    let (kind, scalars) = match keys {
        IndexKeys::None => return,
        IndexKeys::Eq(k) => (Kind::Eq, std::slice::from_ref(k)),
        IndexKeys::Member(ks) => (Kind::Member, ks.as_slice()),
    };
    touched.extend(scalars.iter().map(|scalar| {
        Touched::Value(ValueKey {
            app: app.clone(),
            key: key.into(),
            kind,
            scalar: scalar.clone(),
        })
    }));
}

/// The directory keys a probe on `app` can match: one per distinct scalar.
pub fn probe_value_keys(app: &Arc<str>, probe: &Probe) -> Vec<ValueKey> {
    let (key, kind, scalars) = probe_scalars(probe);
    if !is_indexed(key) {
        return Vec::new();
    }
    scalars
        .into_iter()
        .map(|scalar| ValueKey {
            app: app.clone(),
            key: key.into(),
            kind,
            scalar,
        })
        .collect()
}

/// A probe's key, bucket kind, and the distinct keys its values can match.
/// Duplicates (`[1, 1.0]`) are removed so each bucket is counted once.
fn probe_scalars(probe: &Probe) -> (&str, Kind, Vec<ScalarKey>) {
    let (key, kind, mut scalars): (_, _, Vec<ScalarKey>) = match probe {
        Probe::Eq { key, value } => (key, Kind::Eq, probe_keys(value).collect()),
        Probe::In { key, values } => (key, Kind::Eq, values.iter().flat_map(probe_keys).collect()),
        // List elements and map keys are untyped JSON: no version reading.
        Probe::Contains { key, value } => (
            key,
            Kind::Member,
            ScalarKey::of_json(value).into_iter().collect(),
        ),
    };
    scalars.sort_unstable();
    scalars.dedup();
    (key, kind, scalars)
}

/// Whether one client satisfies a probe, by the same keys the index uses
/// (for unindexed keys, which are answered by a scan).
fn entry_matches(entry: &ClientEntry, key: &str, kind: Kind, scalars: &[ScalarKey]) -> bool {
    let Some(value) = entry.metadata.get(key) else {
        return false;
    };
    match (kind, index_keys(value)) {
        (Kind::Eq, IndexKeys::Eq(k)) => scalars.contains(&k),
        (Kind::Member, IndexKeys::Member(ks)) => ks.iter().any(|k| scalars.contains(k)),
        _ => false,
    }
}
