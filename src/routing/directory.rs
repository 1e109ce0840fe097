//! The routing directory: which shards can hold a client matching a query,
//! so that routing asks those and no others (pure code: no I/O, no clock).
//!
//! Two parts, both fed by the *absolute* counts a shard publishes about its
//! own clients (see [`crate::metadata::Touched`]):
//!
//! - **Applications, replicated.** Every shard keeps every other shard's
//!   client count per application. A shard that gains its first client of an
//!   application, or loses its last, tells every other shard at once, so
//!   the set of shards holding an application is never behind what a client
//!   could have been told; plain count changes in between are batched (they
//!   only weigh the proportional draw of an app-wide SEND).
//! - **Values, partitioned.** Each indexed value of an application
//!   ([`ValueKey`]) has a home shard chosen by hash; the home keeps each
//!   shard's count of clients in that bucket. Every change is published at
//!   once, so the home is exact for whatever was applied before the question
//!   reached it. A SEND to `/user_id $eq 123` asks the one home and then only
//!   the shards it names.
//! - **Answers remembered.** A shard remembers the answers homes gave it,
//!   and a home remembers who it answered: when a bucket changes, the home
//!   tells those shards to forget it. A remembered answer may lag behind a
//!   change by the time the home takes it to tell them, so only a SEND uses
//!   one, and only when a miss sends it back to ask the home afresh (see
//!   [`Place::remembered`]): it is never trusted to say "nobody", which is
//!   why empty answers are not remembered.
//!
//! Nothing here assumes the holders are threads: a node of a cluster can be
//! one more holder, publishing and answering the same messages.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::{FixedState, RandomState};

use crate::metadata::{Count, Touched, ValueKey, set_holder};

/// What one shard tells another about its own clients.
#[derive(Debug)]
pub enum DirMsg {
    /// Shard `from` now holds these many clients of these applications.
    Apps {
        from: usize,
        counts: Vec<(Arc<str>, Count)>,
    },
    /// Shard `from` now holds these many clients in these value buckets,
    /// all homed on the receiver.
    Values {
        from: usize,
        counts: Vec<(ValueKey, Count)>,
    },
    /// The home `from` no longer stands by what it answered about these
    /// buckets: they changed. `seq` orders it against its answers
    /// ([`Located::seq`]).
    Forget {
        from: usize,
        seq: u64,
        keys: Vec<ValueKey>,
    },
}

/// A home's answer about some value buckets.
#[derive(Debug, Default)]
pub struct Located {
    /// Each bucket's holders with their counts, in the order asked.
    pub holders: Vec<Vec<(usize, Count)>>,
    /// The home's count of changes it had told watchers of when it
    /// answered: a forget with a higher one came after the answer.
    pub seq: u64,
}

impl Located {
    /// The holders a query with this `restricted` flag can reach, with
    /// their counts, summed over the buckets.
    pub fn reachable(&self, include_restricted: bool) -> Vec<(usize, u64)> {
        reachable(self.holders.iter().flatten(), include_restricted)
    }
}

fn reachable<'a>(
    holders: impl Iterator<Item = &'a (usize, Count)>,
    include_restricted: bool,
) -> Vec<(usize, u64)> {
    holders
        .map(|&(shard, c)| (shard, c.reachable(include_restricted)))
        .filter(|&(_, count)| count > 0)
        .collect()
}

/// How many other homes' answers a shard remembers; past it, it forgets
/// them all and starts again (asking costs a round trip, not a mistake).
pub const REMEMBERED_MAX: usize = 1 << 16;

impl DirMsg {
    /// The label of the cross-shard message counter.
    pub fn kind(&self) -> &'static str {
        match self {
            DirMsg::Apps { .. } => "directory_apps",
            DirMsg::Values { .. } => "directory_values",
            DirMsg::Forget { .. } => "directory_forget",
        }
    }
}

/// The shard that keeps the directory entry of `key`, among `shards`.
pub fn home_of(key: &ValueKey, shards: usize) -> usize {
    // A fixed seed: every shard must compute the same home. (The maps
    // below are seeded at random, so crafted values can skew which shard
    // is home, not make a lookup slow.)
    (FixedState::with_seed(HOME_SEED).hash_one(key) % shards as u64) as usize
}

const HOME_SEED: u64 = 0x5349_4e47_5945_4f4e;

type Map<K, V> = HashMap<K, V, RandomState>;
type Set<K> = HashSet<K, RandomState>;

/// Where a match for a query can be.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    /// The shards to ask, ascending.
    pub shards: Vec<usize>,
    /// When known, each of those shards' exact number of matches (same
    /// order), which lets an app-wide or single-value SEND draw its shard
    /// without asking any.
    pub counts: Option<Vec<u64>>,
    /// Some of it comes from answers this shard remembers, which can lag
    /// behind a change: good for choosing where a SEND goes when a miss
    /// there makes it ask again, not for saying where nothing is.
    pub remembered: bool,
}

impl Place {
    pub fn everywhere(shards: usize) -> Place {
        Place {
            shards: (0..shards).collect(),
            counts: None,
            remembered: false,
        }
    }

    /// From `(shard, count)` pairs (any order, repeats summed, zeros
    /// dropped); `exact` when the counts are the numbers of matches.
    pub fn from_counts(mut holders: Vec<(usize, u64)>, exact: bool) -> Place {
        holders.sort_unstable_by_key(|&(shard, _)| shard);
        let mut merged: Vec<(usize, u64)> = Vec::with_capacity(holders.len());
        for (shard, count) in holders {
            match merged.last_mut() {
                Some((last, sum)) if *last == shard => *sum += count,
                _ => merged.push((shard, count)),
            }
        }
        merged.retain(|&(_, count)| count > 0);
        Place {
            shards: merged.iter().map(|&(shard, _)| shard).collect(),
            counts: exact.then(|| merged.iter().map(|&(_, count)| count).collect()),
            remembered: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// What a choice does here; `may_choose_alone` is false when the
    /// choice must see every match (`optional`, a description).
    pub fn next(&self, may_choose_alone: bool, rng: &mut fastrand::Rng) -> Next {
        if may_choose_alone && let Some(shard) = self.lone_or_drawn(rng) {
            let retry = self.counts.is_some() || self.remembered;
            return Next::Alone { shard, retry };
        }
        match self.remembered {
            true => Next::LocateAgain,
            false => Next::Ask,
        }
    }

    /// The shard that can make the whole choice alone, if there is one:
    /// the only holder (no other shard has a match, so its own choice is
    /// the global one, whatever the rule), or a holder drawn in proportion
    /// to exact counts (a uniform choice: each match has probability
    /// 1/total, as in [`super::pick::choose`]).
    pub fn lone_or_drawn(&self, rng: &mut fastrand::Rng) -> Option<usize> {
        if let [only] = self.shards.as_slice() {
            return Some(*only);
        }
        let counts = self.counts.as_ref()?;
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let mut target = rng.u64(..total);
        for (&shard, &count) in self.shards.iter().zip(counts) {
            if target < count {
                return Some(shard);
            }
            target -= count;
        }
        None
    }
}

/// What one choice of a SEND does with a [`Place`] ([`Place::next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// `shard` chooses alone among its own matches. `retry`: a miss there
    /// means the directory was behind (it counted matches there, or the
    /// place was remembered), so the SEND is chosen again, asking afresh;
    /// otherwise `shard` was the lone holder of the application and a miss
    /// there means nothing matches anywhere.
    Alone { shard: usize, retry: bool },
    /// Ask the place's shards for their picks (none: nothing matches).
    Ask,
    /// The place rests on remembered answers, which may miss a new match:
    /// locate again, asking the homes, before asking or giving up.
    LocateAgain,
}

/// One shard's part of the directory, and what it has told the others.
#[derive(Debug)]
pub struct Directory {
    me: usize,
    shards: usize,
    /// The other shards' client counts per application, indexed by shard
    /// (this shard's own entry stays zero: its store is the truth). An
    /// application leaves the map when no other shard holds it.
    apps: Map<Arc<str>, Vec<Count>>,
    /// The value buckets homed here: each holding shard's count.
    values: Map<ValueKey, Vec<(usize, Count)>>,
    /// What the other shards last heard of this shard's applications.
    published: Map<Arc<str>, Count>,
    /// Applications whose count changed since, without crossing zero: they
    /// go out with the next batch.
    unpublished: Set<Arc<str>>,
    /// For the buckets homed here: the shards that remember an answer
    /// about each (none for this shard itself).
    watchers: Map<ValueKey, Vec<usize>>,
    /// Changes of watched buckets so far (see [`Located::seq`]).
    seq: u64,
    /// Forgets to send: (watcher, bucket).
    forgets: Vec<(usize, ValueKey)>,
    /// Other homes' answers, by bucket.
    remembered: Map<ValueKey, Vec<(usize, Count)>>,
    /// By home: the highest `seq` of its forgets taken in.
    forgotten: Vec<u64>,
    /// In a cluster: the buckets homed here whose count for the whole node
    /// may have changed since [`Directory::take_node_totals`] (the node's
    /// count goes to the value's home node, see `routing::homes`).
    node_totals: Option<Set<ValueKey>>,
}

impl Directory {
    pub fn new(me: usize, shards: usize) -> Directory {
        Directory {
            me,
            shards,
            apps: Map::default(),
            values: Map::default(),
            published: Map::default(),
            unpublished: Set::default(),
            watchers: Map::default(),
            seq: 0,
            forgets: Vec::new(),
            remembered: Map::default(),
            forgotten: vec![0; shards],
            node_totals: None,
        }
    }

    /// From now on, note the buckets homed here whose node-wide count may
    /// change, for [`Directory::take_node_totals`].
    pub fn track_node_totals(&mut self) {
        self.node_totals.get_or_insert_default();
    }

    /// The node-wide count now of each bucket homed here that changed
    /// since the last call (every shard's clients in it).
    pub fn take_node_totals(&mut self) -> Vec<(ValueKey, Count)> {
        let Some(changed) = self.node_totals.as_mut() else {
            return Vec::new();
        };
        let changed = std::mem::take(changed);
        changed
            .into_iter()
            .map(|key| {
                let total = self.values.get(&key).map_or(Count::default(), |holders| {
                    holders.iter().fold(Count::default(), |sum, (_, c)| Count {
                        open: sum.open + c.open,
                        restricted: sum.restricted + c.restricted,
                    })
                });
                (key, total)
            })
            .collect()
    }

    /// Takes in what this shard's store says was touched; returns the
    /// messages that must go out now. Value counts always go at once (to
    /// their home, or straight into this shard's part when it is the home);
    /// an application's count goes at once when it crosses zero, taking
    /// every pending application with it, and otherwise waits for
    /// [`Directory::flush_apps`] (see [`Directory::has_unpublished`]).
    pub fn record(
        &mut self,
        mut touched: Vec<Touched>,
        app_count: impl Fn(&str) -> Count,
        value_count: impl Fn(&ValueKey) -> Count,
    ) -> Vec<(usize, DirMsg)> {
        // Usually a handful: sorting beats hashing each one.
        touched.sort_unstable();
        touched.dedup();
        let mut by_home: Vec<(usize, Vec<(ValueKey, Count)>)> = Vec::new();
        let mut urgent = false;
        for what in touched {
            match what {
                Touched::Value(key) => {
                    let count = value_count(&key);
                    let home = home_of(&key, self.shards);
                    if home == self.me {
                        self.set_value(key, self.me, count);
                    } else if let Some((_, counts)) = by_home.iter_mut().find(|(h, _)| *h == home) {
                        counts.push((key, count));
                    } else {
                        by_home.push((home, vec![(key, count)]));
                    }
                }
                Touched::App(app) => {
                    let before = self.published.get(&app).copied().unwrap_or_default();
                    let now = app_count(&app);
                    urgent |= crosses_zero(before, now);
                    if now != before {
                        self.unpublished.insert(app);
                    } else {
                        self.unpublished.remove(&app);
                    }
                }
            }
        }
        let mut out: Vec<(usize, DirMsg)> = by_home
            .into_iter()
            .map(|(home, counts)| {
                let from = self.me;
                (home, DirMsg::Values { from, counts })
            })
            .collect();
        if urgent {
            out.extend(self.flush_apps(app_count));
        }
        out.extend(self.take_forgets());
        out
    }

    /// The forgets owed to watchers of buckets that changed, one message
    /// per watcher.
    pub fn take_forgets(&mut self) -> Vec<(usize, DirMsg)> {
        let mut out: Vec<(usize, DirMsg)> = Vec::new();
        for (watcher, key) in self.forgets.drain(..) {
            match out.iter_mut().find(|(w, _)| *w == watcher) {
                Some((_, DirMsg::Forget { keys, .. })) => keys.push(key),
                _ => out.push((
                    watcher,
                    DirMsg::Forget {
                        from: self.me,
                        seq: self.seq,
                        keys: vec![key],
                    },
                )),
            }
        }
        out
    }

    /// Whether some application counts wait for [`Directory::flush_apps`].
    pub fn has_unpublished(&self) -> bool {
        !self.unpublished.is_empty()
    }

    /// Tells every other shard this shard's current count of each
    /// application changed since it last did.
    pub fn flush_apps(&mut self, app_count: impl Fn(&str) -> Count) -> Vec<(usize, DirMsg)> {
        if self.unpublished.is_empty() {
            return Vec::new();
        }
        let mut counts = Vec::with_capacity(self.unpublished.len());
        for app in self.unpublished.drain() {
            let now = app_count(&app);
            if now.is_zero() {
                self.published.remove(&app);
            } else {
                self.published.insert(app.clone(), now);
            }
            counts.push((app, now));
        }
        let me = self.me;
        (0..self.shards)
            .filter(|&shard| shard != me)
            .map(|shard| {
                let counts = counts.clone();
                (shard, DirMsg::Apps { from: me, counts })
            })
            .collect()
    }

    /// Takes in another shard's (or this shard's own, for values homed
    /// here) published counts.
    pub fn apply(&mut self, msg: DirMsg) {
        match msg {
            DirMsg::Apps { from, counts } => {
                for (app, count) in counts {
                    self.set_app(app, from, count);
                }
            }
            DirMsg::Values { from, counts } => {
                for (key, count) in counts {
                    self.set_value(key, from, count);
                }
            }
            DirMsg::Forget { from, seq, keys } => {
                for key in &keys {
                    self.remembered.remove(key);
                }
                if let Some(last) = self.forgotten.get_mut(from) {
                    *last = (*last).max(seq);
                }
            }
        }
    }

    fn set_app(&mut self, app: Arc<str>, from: usize, count: Count) {
        if from == self.me || from >= self.shards {
            return;
        }
        if count.is_zero() {
            if let Some(row) = self.apps.get_mut(&app) {
                row[from] = count;
                if row.iter().all(|c| c.is_zero()) {
                    self.apps.remove(&app);
                }
            }
            return;
        }
        self.apps
            .entry(app)
            .or_insert_with(|| vec![Count::default(); self.shards])[from] = count;
    }

    fn set_value(&mut self, key: ValueKey, from: usize, count: Count) {
        if let Some(changed) = &mut self.node_totals {
            changed.insert(key.clone());
        }
        if let Some(watchers) = self.watchers.remove(&key) {
            self.seq += 1;
            self.forgets
                .extend(watchers.into_iter().map(|w| (w, key.clone())));
        }
        set_holder(&mut self.values, key, from, count);
    }

    /// The shards holding clients of `app` a query can reach, with their
    /// counts; `own` is this shard's count (from its store).
    pub fn app_holders(
        &self,
        app: &str,
        include_restricted: bool,
        own: Count,
    ) -> Vec<(usize, u64)> {
        let mut holders = Vec::new();
        if let Some(row) = self.apps.get(app) {
            holders.extend(
                row.iter()
                    .enumerate()
                    .map(|(shard, c)| (shard, c.reachable(include_restricted))),
            );
        }
        holders.push((self.me, own.reachable(include_restricted)));
        holders.retain(|&(_, count)| count > 0);
        holders
    }

    /// The shards holding clients in the buckets of `keys` (all homed
    /// here) a query can reach, with their counts, summed over the keys.
    pub fn value_holders(&self, keys: &[ValueKey], include_restricted: bool) -> Vec<(usize, u64)> {
        reachable(
            keys.iter().filter_map(|key| self.values.get(key)).flatten(),
            include_restricted,
        )
    }

    /// On the home of `keys`: the answer to shard `asker`, which will be
    /// told to forget each bucket that has holders when it changes.
    pub fn answer(&mut self, keys: &[ValueKey], asker: usize) -> Located {
        let holders: Vec<Vec<(usize, Count)>> = keys
            .iter()
            .map(|key| self.values.get(key).cloned().unwrap_or_default())
            .collect();
        if asker != self.me {
            for (key, holders) in keys.iter().zip(&holders) {
                if holders.is_empty() {
                    continue;
                }
                let watchers = self.watchers.entry(key.clone()).or_default();
                if !watchers.contains(&asker) {
                    watchers.push(asker);
                }
            }
        }
        Located {
            holders,
            seq: self.seq,
        }
    }

    /// Keeps the answer of `home` about `keys`, unless it has since told
    /// this shard to forget something newer than the answer (the forget
    /// may have been about these very buckets). Empty answers are not
    /// kept (see [`Place::remembered`]).
    pub fn remember(&mut self, home: usize, keys: Vec<ValueKey>, answer: Located) {
        if self.forgotten.get(home).is_none_or(|&seq| seq > answer.seq)
            || keys.len() > REMEMBERED_MAX
        {
            return;
        }
        if self.remembered.len() + keys.len() > REMEMBERED_MAX {
            self.remembered.clear();
        }
        for (key, holders) in keys.into_iter().zip(answer.holders) {
            if !holders.is_empty() {
                self.remembered.insert(key, holders);
            }
        }
    }

    /// The remembered holders of every bucket of `keys` a query can reach,
    /// or `None` when one of them is not remembered.
    pub fn remembered_holders(
        &self,
        keys: &[ValueKey],
        include_restricted: bool,
    ) -> Option<Vec<(usize, u64)>> {
        let mut all = Vec::new();
        for key in keys {
            all.extend(reachable(
                self.remembered.get(key)?.iter(),
                include_restricted,
            ));
        }
        Some(all)
    }

    /// Entries held: applications replicated and value buckets homed here.
    pub fn sizes(&self) -> (usize, usize) {
        (self.apps.len(), self.values.len())
    }

    /// Other homes' answers remembered, by bucket.
    pub fn remembered(&self) -> usize {
        self.remembered.len()
    }
}

/// Whether a count became zero or stopped being zero, for either kind of
/// client: the change that decides whether a shard is asked at all.
fn crosses_zero(before: Count, now: Count) -> bool {
    (before.open == 0) != (now.open == 0) || (before.restricted == 0) != (now.restricted == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Kind, ScalarKey};
    use std::cell::RefCell;

    fn key(app: &str, user: i64) -> ValueKey {
        ValueKey {
            app: app.into(),
            key: "user_id".into(),
            kind: Kind::Eq,
            scalar: ScalarKey::Int(user),
        }
    }

    fn open(n: u32) -> Count {
        Count {
            open: n,
            restricted: 0,
        }
    }

    /// A little world of shards with fake stores, delivering every message.
    struct World {
        dirs: Vec<Directory>,
        apps: Vec<RefCell<HashMap<String, Count>>>,
        values: Vec<RefCell<HashMap<ValueKey, Count>>>,
    }

    impl World {
        fn new(shards: usize) -> World {
            World {
                dirs: (0..shards).map(|me| Directory::new(me, shards)).collect(),
                apps: (0..shards).map(|_| RefCell::default()).collect(),
                values: (0..shards).map(|_| RefCell::default()).collect(),
            }
        }

        /// A client with `user` joins (+1) or leaves (-1) `app` on `shard`;
        /// returns the messages sent, after delivering them.
        fn change(&mut self, shard: usize, app: &str, user: i64, delta: i32) -> Vec<&'static str> {
            let add = |c: &mut Count| c.open = (c.open as i32 + delta) as u32;
            add(self.apps[shard].borrow_mut().entry(app.into()).or_default());
            add(self.values[shard]
                .borrow_mut()
                .entry(key(app, user))
                .or_default());
            let touched = vec![Touched::App(app.into()), Touched::Value(key(app, user))];
            let (apps, values) = (&self.apps[shard], &self.values[shard]);
            let out = self.dirs[shard].record(
                touched,
                |a| apps.borrow().get(a).copied().unwrap_or_default(),
                |k| values.borrow().get(k).copied().unwrap_or_default(),
            );
            self.deliver(out)
        }

        fn flush(&mut self, shard: usize) -> Vec<&'static str> {
            let apps = &self.apps[shard];
            let out =
                self.dirs[shard].flush_apps(|a| apps.borrow().get(a).copied().unwrap_or_default());
            self.deliver(out)
        }

        /// Delivers `out`, and the forgets it causes.
        fn deliver(&mut self, out: Vec<(usize, DirMsg)>) -> Vec<&'static str> {
            let mut kinds = Vec::new();
            let mut out = out;
            while !out.is_empty() {
                kinds.extend(out.iter().map(|(_, m)| m.kind()));
                let mut caused = Vec::new();
                for (to, msg) in out {
                    self.dirs[to].apply(msg);
                    caused.extend(self.dirs[to].take_forgets());
                }
                out = caused;
            }
            kinds
        }

        /// Where `app` is, as shard `asker` sees it.
        fn app_place(&self, asker: usize, app: &str) -> Vec<(usize, u64)> {
            let own = self.apps[asker]
                .borrow()
                .get(app)
                .copied()
                .unwrap_or_default();
            let mut holders = self.dirs[asker].app_holders(app, false, own);
            holders.sort();
            holders
        }

        fn value_place(&self, app: &str, user: i64) -> Vec<(usize, u64)> {
            let k = key(app, user);
            let home = home_of(&k, self.dirs.len());
            let mut holders = self.dirs[home].value_holders(&[k], false);
            holders.sort();
            holders
        }
    }

    #[test]
    fn the_first_and_last_client_of_an_app_are_told_at_once_the_rest_batched() {
        let mut w = World::new(4);
        let sent = w.change(2, "a", 1, 1);
        // Three "apps" (one per other shard); the value went to its home,
        // unless shard 2 is the home.
        assert_eq!(sent.iter().filter(|k| **k == "directory_apps").count(), 3);
        for asker in 0..4 {
            assert_eq!(w.app_place(asker, "a"), vec![(2, 1)]);
        }
        // A second client: no zero crossed, nothing about the app goes yet.
        let sent = w.change(2, "a", 2, 1);
        assert!(!sent.contains(&"directory_apps"));
        assert!(w.dirs[2].has_unpublished());
        assert_eq!(w.app_place(0, "a"), vec![(2, 1)]);
        assert_eq!(w.flush(2), vec!["directory_apps"; 3]);
        assert!(!w.dirs[2].has_unpublished());
        assert_eq!(w.app_place(0, "a"), vec![(2, 2)]);
        // Both leave: the last one is told at once, with the pending count.
        w.change(2, "a", 2, -1);
        assert!(w.change(2, "a", 1, -1).contains(&"directory_apps"));
        for asker in 0..4 {
            assert_eq!(w.app_place(asker, "a"), vec![]);
        }
        // Memory follows the clients.
        assert_eq!(
            w.dirs.iter().map(|d| d.sizes()).collect::<Vec<_>>(),
            vec![(0, 0); 4]
        );
    }

    #[test]
    fn a_value_home_knows_every_holder_exactly() {
        let mut w = World::new(8);
        w.change(1, "a", 7, 1);
        w.change(5, "a", 7, 1);
        w.change(5, "a", 7, 1);
        w.change(6, "b", 7, 1);
        assert_eq!(w.value_place("a", 7), vec![(1, 1), (5, 2)]);
        assert_eq!(w.value_place("b", 7), vec![(6, 1)]);
        assert_eq!(w.value_place("a", 8), vec![]);
        w.change(5, "a", 7, -1);
        w.change(1, "a", 7, -1);
        assert_eq!(w.value_place("a", 7), vec![(5, 1)]);
        w.change(5, "a", 7, -1);
        w.change(6, "b", 7, -1);
        assert_eq!(w.value_place("a", 7), vec![]);
        assert!(w.dirs.iter().all(|d| d.sizes().1 == 0));
    }

    #[test]
    fn repeated_touches_cost_one_entry_per_message() {
        let mut d = Directory::new(0, 2);
        let (_, k) = user_homed(2, |home| home == 1);
        let touched = vec![Touched::Value(k.clone()); 5];
        let out = d.record(touched, |_| Count::default(), |_| open(3));
        let [(1, DirMsg::Values { from: 0, counts })] = out.as_slice() else {
            panic!("one message to the home: {out:?}");
        };
        assert_eq!(counts, &vec![(k, open(3))]);
    }

    /// The first user id of application "a" whose bucket's home, among
    /// `shards`, passes `home`.
    fn user_homed(shards: usize, home: impl Fn(usize) -> bool) -> (i64, ValueKey) {
        (0..)
            .map(|u| (u, key("a", u)))
            .find(|(_, k)| home(home_of(k, shards)))
            .unwrap()
    }

    /// Shard 0 asks the home of a bucket and remembers the answer.
    fn ask_and_remember(w: &mut World, asker: usize, k: &ValueKey) -> Vec<(usize, u64)> {
        let home = home_of(k, w.dirs.len());
        let answer = w.dirs[home].answer(std::slice::from_ref(k), asker);
        let holders = answer.reachable(false);
        w.dirs[asker].remember(home, vec![k.clone()], answer);
        holders
    }

    #[test]
    fn a_remembered_answer_is_forgotten_when_its_bucket_changes() {
        let mut w = World::new(4);
        // A user on shard 3; an asker that is not the home.
        let (user, k) = user_homed(4, |home| ![0, 3].contains(&home));
        w.change(3, "a", user, 1);
        assert_eq!(ask_and_remember(&mut w, 0, &k), vec![(3, 1)]);
        assert_eq!(
            w.dirs[0].remembered_holders(std::slice::from_ref(&k), false),
            Some(vec![(3, 1)])
        );
        assert_eq!(w.dirs[0].remembered(), 1);
        // The user moves to shard 1 (leaves 3, joins 1): the home tells the
        // asker, once, to forget.
        let sent = w.change(3, "a", user, -1);
        assert_eq!(
            sent.iter().filter(|k| **k == "directory_forget").count(),
            1,
            "{sent:?}"
        );
        let sent: Vec<_> = w.change(1, "a", user, 1);
        assert!(!sent.contains(&"directory_forget"), "told once: {sent:?}");
        assert_eq!(
            w.dirs[0].remembered_holders(std::slice::from_ref(&k), false),
            None
        );
        // Asked again, the new answer is remembered.
        assert_eq!(ask_and_remember(&mut w, 0, &k), vec![(1, 1)]);
        assert_eq!(w.dirs[0].remembered(), 1);
    }

    #[test]
    fn an_answer_older_than_a_forget_taken_in_is_not_remembered() {
        let mut w = World::new(2);
        let (user, k) = user_homed(2, |home| home == 1);
        w.change(1, "a", user, 1);
        // Shard 0 is answered, but before the answer arrives the bucket
        // changes and the forget (sent on another lane) overtakes it.
        let answer = w.dirs[1].answer(std::slice::from_ref(&k), 0);
        assert!(w.change(1, "a", user, 1).contains(&"directory_forget"));
        w.dirs[0].remember(1, vec![k.clone()], answer);
        assert_eq!(w.dirs[0].remembered(), 0);
    }

    #[test]
    fn empty_answers_and_the_home_itself_are_not_remembered() {
        let mut w = World::new(2);
        let (user, k) = user_homed(2, |home| home == 1);
        assert_eq!(ask_and_remember(&mut w, 0, &k), vec![]);
        assert_eq!(w.dirs[0].remembered(), 0);
        // Nobody watches an empty bucket, so a holder arriving sends no
        // forget, and asking again finds it.
        assert!(!w.change(0, "a", user, 1).contains(&"directory_forget"));
        assert_eq!(ask_and_remember(&mut w, 0, &k), vec![(0, 1)]);
        // The home answering itself registers no watcher.
        w.dirs[1].answer(std::slice::from_ref(&k), 1);
        assert!(w.dirs[1].watchers.get(&k).is_some_and(|w| w == &vec![0]));
    }

    #[test]
    fn remembering_is_bounded() {
        let mut d = Directory::new(0, 2);
        let answer = || Located {
            holders: vec![vec![(1, open(1))]],
            seq: 0,
        };
        for user in 0..(REMEMBERED_MAX as i64 + 10) {
            d.remember(1, vec![key("a", user)], answer());
            assert!(d.remembered() <= REMEMBERED_MAX);
        }
        assert!(d.remembered() < 20, "starts again when full");
        // One answer bigger than the whole table (a `$in` with that many
        // values) is not kept at all.
        let many: Vec<ValueKey> = (0..=REMEMBERED_MAX as i64).map(|u| key("b", u)).collect();
        let holders = vec![vec![(1, open(1))]; many.len()];
        d.remember(1, many, Located { holders, seq: 0 });
        assert!(d.remembered() < 20);
    }

    #[test]
    fn restricted_clients_count_only_for_restricted_queries() {
        let mut d = Directory::new(0, 2);
        d.apply(DirMsg::Apps {
            from: 1,
            counts: vec![(
                "a".into(),
                Count {
                    open: 0,
                    restricted: 2,
                },
            )],
        });
        assert_eq!(d.app_holders("a", false, Count::default()), vec![]);
        assert_eq!(d.app_holders("a", true, Count::default()), vec![(1, 2)]);
        assert_eq!(d.app_holders("a", false, open(1)), vec![(0, 1)]);
    }

    #[test]
    fn a_restricted_flag_crossing_zero_is_urgent_too() {
        assert!(crosses_zero(
            open(1),
            Count {
                open: 1,
                restricted: 1
            }
        ));
        assert!(!crosses_zero(open(1), open(2)));
        assert!(crosses_zero(open(1), open(0)));
    }

    #[test]
    fn a_remembered_place_only_ever_sends_somewhere_that_retries() {
        let mut rng = fastrand::Rng::with_seed(3);
        let remembered = |holders, exact| Place {
            remembered: true,
            ..Place::from_counts(holders, exact)
        };
        // Fresh: a lone application holder decides for good; counted
        // matches retry on a miss; several uncounted holders are asked.
        let lone = Place::from_counts(vec![(2, 1)], false);
        assert_eq!(
            lone.next(true, &mut rng),
            Next::Alone {
                shard: 2,
                retry: false
            }
        );
        let counted = Place::from_counts(vec![(2, 1)], true);
        assert_eq!(
            counted.next(true, &mut rng),
            Next::Alone {
                shard: 2,
                retry: true
            }
        );
        let several = Place::from_counts(vec![(1, 1), (2, 1)], false);
        assert_eq!(several.next(true, &mut rng), Next::Ask);
        assert_eq!(lone.next(false, &mut rng), Next::Ask);
        assert_eq!(
            Place::from_counts(vec![], true).next(true, &mut rng),
            Next::Ask
        );
        // Remembered: always a retry, and never "ask these" or "nothing
        // matches" on its word.
        let lone = remembered(vec![(2, 1)], false);
        assert_eq!(
            lone.next(true, &mut rng),
            Next::Alone {
                shard: 2,
                retry: true
            }
        );
        assert!(matches!(
            remembered(vec![(1, 1), (2, 3)], true).next(true, &mut rng),
            Next::Alone { retry: true, .. }
        ));
        for place in [
            remembered(vec![], true),
            remembered(vec![(1, 1), (2, 1)], false),
        ] {
            assert_eq!(place.next(true, &mut rng), Next::LocateAgain, "{place:?}");
        }
        assert_eq!(lone.next(false, &mut rng), Next::LocateAgain);
    }

    #[test]
    fn places_merge_holders_and_draw_in_proportion() {
        let place = Place::from_counts(vec![(3, 1), (1, 2), (3, 1), (2, 0)], true);
        assert_eq!(place.shards, vec![1, 3]);
        assert_eq!(place.counts, Some(vec![2, 2]));
        let mut rng = fastrand::Rng::with_seed(7);
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            hits[place.lone_or_drawn(&mut rng).unwrap()] += 1;
        }
        assert_eq!(hits[0] + hits[2], 0);
        assert!((1700..2300).contains(&hits[1]), "{hits:?}");
        // Without exact counts only a lone holder decides alone.
        let inexact = Place::from_counts(vec![(1, 2), (3, 2)], false);
        assert_eq!(inexact.lone_or_drawn(&mut rng), None);
        let lone = Place::from_counts(vec![(3, 5)], false);
        assert_eq!(lone.lone_or_drawn(&mut rng), Some(3));
        assert!(Place::from_counts(vec![(1, 0)], true).is_empty());
    }
}
