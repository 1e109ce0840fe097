//! Indexed values homed over the nodes of a cluster: which nodes hold
//! clients with a given indexed value (`/user_id $eq 123`), kept on the
//! value's home node, so that a SEND to a unique id asks that one node and
//! then only the holders (pure code: no I/O, no clock).
//!
//! It is the routing directory's value part (`routing::directory`) one
//! level up. Within a node, the value's home shard knows the node's exact
//! count of clients in each bucket; it publishes that count to the value's
//! home node ([`ClusterView::home`] of the key's bytes, [`encode_key`]),
//! which keeps, per key, each holding node's count ([`HomeTable`]).
//! Counts are absolute, so a count sent twice, or again after a doubt,
//! changes nothing.
//!
//! - **Publishing** ([`Outbox`]): counts that changed are batched and sent
//!   to each key's home; a send that fails stays due; when the live members
//!   change, the keys whose home moved go to their new home, and when a link
//!   comes up again, the keys told over it go again (what was in flight on
//!   a lost link may be lost), zeros included: a key whose count fell to
//!   zero is kept for a while after its zero went, for that.
//! - **Keeping** ([`HomeTable`]): a node's entries go when it goes down or
//!   runs again as a new run; entries of keys no longer homed here go when
//!   the members change (the new home hears them from the holders).
//!
//! A home that just became one (it joined, or another left) does not know
//! every holder until they have all re-published: whoever asks it must
//! not take "nobody" for an answer, and a new home says it is not settled
//! yet (see `routing::homes`).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::SocketAddr;

use foldhash::fast::{FixedState, RandomState};

use crate::cluster::{ClusterView, MemberState};
use crate::metadata::{Count, Kind, ScalarKey, ValueKey, set_holder};

/// One run of a node: its gossip address and boot.
pub type NodeRef = (SocketAddr, u64);

/// A value key as bytes ([`encode_key`]): what nodes exchange and hash.
pub type Key = Box<[u8]>;

/// Where a key's count goes: its home node, `None` for this node.
pub type Dest = Option<NodeRef>;

type Map<K, V> = HashMap<K, V, RandomState>;
type Set<K> = HashSet<K, RandomState>;

/// The bytes of `key`, the same on every node and every build: the
/// rendezvous hash of the home and the tables' key. Length-prefixed
/// fields, so no two keys share bytes.
pub fn encode_key(key: &ValueKey) -> Key {
    let mut out = Vec::with_capacity(16 + key.app.len() + key.key.len());
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    string(&mut out, &key.app);
    string(&mut out, &key.key);
    out.push(match key.kind {
        Kind::Eq => 0,
        Kind::Member => 1,
    });
    match &key.scalar {
        ScalarKey::Bool(b) => out.extend([0, u8::from(*b)]),
        ScalarKey::Int(n) => {
            out.push(1);
            out.extend_from_slice(&n.to_le_bytes());
        }
        ScalarKey::UInt(n) => {
            out.push(2);
            out.extend_from_slice(&n.to_le_bytes());
        }
        ScalarKey::Float(bits) => {
            out.push(3);
            out.extend_from_slice(&bits.to_le_bytes());
        }
        ScalarKey::Str(s) => {
            out.push(4);
            string(&mut out, s);
        }
        // Build metadata is cleared in the key, so equal precedence is
        // equal text.
        ScalarKey::Version(v) => {
            out.push(5);
            string(&mut out, &v.to_string());
        }
    }
    out.into_boxed_slice()
}

/// The shard of a home node that keeps `key`'s entry. Within one node
/// only (every shard of a node runs the same build), so a seeded hash.
pub fn table_shard(key: &[u8], shards: usize) -> usize {
    (FixedState::with_seed(0x484f_4d45_4e4f_4445).hash_one(key) % shards.max(1) as u64) as usize
}

/// Whether `node` is known to be gone in `view`: declared down, or its
/// address runs again as a later run. A node the view does not know yet is
/// not gone (its first counts may arrive before the news of it).
pub fn gone(view: &ClusterView, node: NodeRef) -> bool {
    if view
        .this
        .as_ref()
        .is_some_and(|t| t.addr == node.0 && t.boot != node.1)
    {
        return true;
    }
    view.members.iter().any(|m| {
        m.id.addr == node.0
            && (m.id.boot > node.1 || (m.id.boot == node.1 && m.state == MemberState::Down))
    })
}

/// Whether `node` is this node or a live member of `view`, this very run.
pub fn live(view: &ClusterView, node: NodeRef) -> bool {
    view.this.as_ref().is_some_and(|t| (t.addr, t.boot) == node) || view.live_member(node).is_some()
}

/// The home of `key` in `view` as a [`Dest`].
pub fn home(view: &ClusterView, key: &[u8]) -> Dest {
    view.home(key).map(|n| (n.addr, n.boot))
}

/// Who holds clients in some value buckets, as their homes answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holders {
    /// Each holding node's count, by node.
    pub nodes: Vec<(NodeRef, u64)>,
    /// Every home asked answered, as the home of the keys it was asked
    /// about, and had been home long enough to have heard from every
    /// holder: a node left out holds none (but for changes in flight).
    pub settled: bool,
}

impl Holders {
    /// Both answers together.
    pub fn merge(&mut self, other: Holders) {
        for (node, n) in other.nodes {
            match self.nodes.iter_mut().find(|(held, _)| *held == node) {
                Some(entry) => entry.1 += n,
                None => self.nodes.push((node, n)),
            }
        }
        self.nodes.sort_unstable();
        self.settled &= other.settled;
    }
}

/// On a home node (one shard's part): each key's holding nodes and their
/// counts.
#[derive(Debug, Default)]
pub struct HomeTable {
    entries: Map<Key, Vec<(NodeRef, Count)>>,
}

impl HomeTable {
    /// Node `from`'s counts now.
    pub fn apply(&mut self, from: NodeRef, counts: impl IntoIterator<Item = (Key, Count)>) {
        for (key, count) in counts {
            set_holder(&mut self.entries, key, from, count);
        }
    }

    /// The nodes holding clients in `keys`' buckets that a query with this
    /// `restricted` flag reaches, with their counts summed over the keys.
    pub fn holders(&self, keys: &[Key], include_restricted: bool) -> Vec<(NodeRef, u64)> {
        let mut out: Vec<(NodeRef, u64)> = Vec::new();
        for &(node, count) in keys.iter().filter_map(|k| self.entries.get(k)).flatten() {
            let n = count.reachable(include_restricted);
            if n == 0 {
                continue;
            }
            match out.iter_mut().find(|(held, _)| *held == node) {
                Some(entry) => entry.1 += n,
                None => out.push((node, n)),
            }
        }
        out.sort_unstable();
        out
    }

    /// After the members changed: keeps the entries of live nodes' current
    /// runs, for keys still homed here.
    pub fn retain(&mut self, view: &ClusterView) {
        self.entries.retain(|key, holders| {
            if home(view, key).is_some() {
                return false;
            }
            holders.retain(|(node, _)| live(view, *node));
            !holders.is_empty()
        });
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What a node told the homes of the keys it holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    count: Count,
    /// The home last sent this key's count; `None`: none yet (or not
    /// since this node's run changed).
    told: Option<Dest>,
    /// When zero was last sent ([`Outbox::advance`]'s tick): the key is
    /// kept, so that a link that comes up again sends the zero again, until
    /// a lost link would have been noticed.
    zeroed: Option<u64>,
}

/// On a node (one shard's part: the keys whose local home it is): its
/// count of each key, and what the keys' homes have been told.
#[derive(Debug, Default)]
pub struct Outbox {
    held: Map<Key, Held>,
    /// Keys whose count (or home) changed since they were last sent.
    due: Set<Key>,
    /// The run of this node the homes were told about.
    boot: Option<u64>,
    /// Calls of [`Outbox::advance`] so far.
    tick: u64,
    /// Keys sent as zero, oldest first, with the tick they were sent at.
    zeroes: std::collections::VecDeque<(u64, Key)>,
}

impl Outbox {
    /// This node's count of `key` now.
    pub fn set(&mut self, key: Key, count: Count) {
        match self.held.get_mut(&key) {
            Some(held) if held.count == count => return,
            Some(held) => {
                held.count = count;
                held.zeroed = None;
            }
            None if count.is_zero() => return,
            None => {
                let told = None;
                let zeroed = None;
                self.held.insert(
                    key.clone(),
                    Held {
                        count,
                        told,
                        zeroed,
                    },
                );
            }
        }
        self.due.insert(key);
    }

    /// This node runs as `boot`: after a new run (the others declared it
    /// down and dropped its entries), every key goes again.
    pub fn set_boot(&mut self, boot: u64) {
        if self.boot.replace(boot).is_some_and(|was| was != boot) {
            for (key, held) in &mut self.held {
                held.told = None;
                self.due.insert(key.clone());
            }
        }
    }

    /// The live members changed: keys whose home is not the one last told
    /// go to their home.
    pub fn rehome(&mut self, home: impl Fn(&[u8]) -> Dest) {
        for (key, held) in &self.held {
            if held.told != Some(home(key)) {
                self.due.insert(key.clone());
            }
        }
    }

    /// A link to `node` came up (again): what went over the last one may
    /// not have arrived, so the keys told there go again (zeros too, for
    /// as long as they are kept, see [`Outbox::advance`]).
    pub fn relinked(&mut self, node: NodeRef) {
        for (key, held) in &self.held {
            if held.told == Some(Some(node)) {
                self.due.insert(key.clone());
            }
        }
    }

    /// Whether some counts wait to be sent.
    pub fn is_due(&self) -> bool {
        !self.due.is_empty()
    }

    /// Sends what is due, one batch per home: `send` says whether the batch
    /// went out; one that did not stays due. A key whose count fell to zero
    /// is sent as zero and kept a while ([`Outbox::advance`]); one whose
    /// home never heard of it is forgotten at once.
    pub fn flush(
        &mut self,
        home: impl Fn(&[u8]) -> Dest,
        mut send: impl FnMut(Dest, Vec<(Key, Count)>) -> bool,
    ) {
        let mut batches: Vec<(Dest, Vec<(Key, Count)>)> = Vec::new();
        for key in self.due.drain() {
            let Some(held) = self.held.get(&key) else {
                continue;
            };
            let dest = home(&key);
            if held.count.is_zero() && held.told != Some(dest) {
                self.held.remove(&key);
                continue;
            }
            let count = held.count;
            match batches.iter_mut().find(|(d, _)| *d == dest) {
                Some((_, batch)) => batch.push((key, count)),
                None => batches.push((dest, vec![(key, count)])),
            }
        }
        for (dest, batch) in batches {
            let keys: Vec<Key> = batch.iter().map(|(k, _)| k.clone()).collect();
            if !send(dest, batch) {
                self.due.extend(keys);
                continue;
            }
            for key in keys {
                if let Some(held) = self.held.get_mut(&key) {
                    held.told = Some(dest);
                    if held.count.is_zero() {
                        held.zeroed = Some(self.tick);
                        self.zeroes.push_back((self.tick, key));
                    }
                }
            }
        }
    }

    /// One more tick (the caller's clock, e.g. one per flush period):
    /// keys sent as zero more than `linger` ticks ago, and zero since, are
    /// forgotten. `linger` must cover the time a lost link takes to be
    /// noticed (a zero sent just before is sent again when it comes up
    /// again, [`Outbox::relinked`]); churn of that long is what is kept.
    pub fn advance(&mut self, linger: u64) {
        self.tick += 1;
        while let Some((at, _)) = self.zeroes.front()
            && at + linger < self.tick
        {
            let Some((at, key)) = self.zeroes.pop_front() else {
                break;
            };
            if self
                .held
                .get(&key)
                .is_some_and(|h| h.count.is_zero() && h.zeroed == Some(at))
            {
                self.held.remove(&key);
            }
        }
    }

    /// Keys held (counted here: non-zero, or zero and kept a while).
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::node::{Member, NodeId};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn key(user: i64) -> Key {
        encode_key(&ValueKey {
            app: "a".into(),
            key: "user_id".into(),
            kind: Kind::Eq,
            scalar: ScalarKey::Int(user),
        })
    }

    fn open(n: u32) -> Count {
        Count {
            open: n,
            restricted: 0,
        }
    }

    fn id(port: u16, boot: u64) -> NodeId {
        NodeId {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            boot,
            name: format!("n{port}"),
            shards: 1,
            links: vec![port + 1],
        }
    }

    #[test]
    fn keys_encode_apart() {
        let k = |app: &str, path: &str, kind, scalar| {
            encode_key(&ValueKey {
                app: app.into(),
                key: path.into(),
                kind,
                scalar,
            })
        };
        let all = [
            k("a", "b", Kind::Eq, ScalarKey::Int(1)),
            k("a", "b", Kind::Member, ScalarKey::Int(1)),
            k("a", "b", Kind::Eq, ScalarKey::UInt(1)),
            k("a", "b", Kind::Eq, ScalarKey::Float(1)),
            k("a", "b", Kind::Eq, ScalarKey::Bool(true)),
            k("a", "b", Kind::Eq, ScalarKey::Str("1".into())),
            k("ab", "", Kind::Eq, ScalarKey::Str("1".into())),
            k("a", "b1", Kind::Eq, ScalarKey::Str("".into())),
            k(
                "a",
                "b",
                Kind::Eq,
                ScalarKey::Version(Box::new("1.0.0".parse().unwrap())),
            ),
        ];
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
        // Fixed bytes: every node, whatever its build, homes it alike.
        assert_eq!(
            &*k("a", "b", Kind::Eq, ScalarKey::Int(1)),
            &[
                1, 0, 0, 0, b'a', 1, 0, 0, 0, b'b', 0, 1, 1, 0, 0, 0, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn a_home_sums_holders_over_keys_and_forgets_zeros() {
        let (n1, n2) = ((id(1, 1).addr, 1), (id(2, 1).addr, 1));
        let mut t = HomeTable::default();
        t.apply(n1, [(key(1), open(2)), (key(2), open(1))]);
        t.apply(n2, [(key(2), Count::default()), (key(1), open(1))]);
        assert_eq!(t.holders(&[key(1), key(2)], false), vec![(n1, 3), (n2, 1)]);
        t.apply(n1, [(key(1), Count::default())]);
        assert_eq!(t.holders(&[key(1)], false), vec![(n2, 1)]);
        t.apply(
            n2,
            [(
                key(1),
                Count {
                    open: 0,
                    restricted: 1,
                },
            )],
        );
        assert_eq!(t.holders(&[key(1)], false), vec![]);
        assert_eq!(t.holders(&[key(1)], true), vec![(n2, 1)]);
        t.apply(n2, [(key(1), Count::default())]);
        t.apply(n1, [(key(2), Count::default())]);
        assert!(t.is_empty());
    }

    #[test]
    fn gone_and_live_follow_the_view() {
        let me = id(1, 5);
        let view = ClusterView {
            this: Some(me.clone()),
            members: vec![
                Member {
                    id: id(2, 3),
                    state: MemberState::Alive,
                    since_ms: 0,
                },
                Member {
                    id: id(3, 3),
                    state: MemberState::Down,
                    since_ms: 0,
                },
            ],
        };
        let at = |port: u16, boot| (id(port, boot).addr, boot);
        assert!(live(&view, at(1, 5)) && !gone(&view, at(1, 5)));
        assert!(gone(&view, at(1, 4)), "an earlier run of this node");
        assert!(live(&view, at(2, 3)) && !gone(&view, at(2, 3)));
        assert!(gone(&view, at(2, 2)) && !live(&view, at(2, 2)));
        assert!(!gone(&view, at(2, 4)), "a later run not heard of yet");
        assert!(gone(&view, at(3, 3)) && !live(&view, at(3, 3)));
        assert!(!gone(&view, at(9, 1)) && !live(&view, at(9, 1)));
    }

    /// Flushes `o` with every send taken, `home` the home of every key:
    /// what went, batch by batch.
    fn flushed(o: &mut Outbox, home: Dest) -> Vec<(Dest, Vec<(Key, Count)>)> {
        let mut sent = Vec::new();
        o.flush(
            |_| home,
            |d, b| {
                sent.push((d, b));
                true
            },
        );
        sent
    }

    #[test]
    fn an_outbox_sends_changes_once_and_a_failed_send_again() {
        let n1: NodeRef = (id(2, 1).addr, 1);
        let h: Dest = Some(n1);
        let mut o = Outbox::default();
        o.set_boot(1);
        o.set(key(1), open(1));
        o.set(key(1), open(2));
        o.set(key(2), open(1));
        let mut sent = Vec::new();
        o.flush(
            |_| h,
            |d, mut b| {
                b.sort_by(|x, y| x.0.cmp(&y.0));
                sent.push((d, b));
                false
            },
        );
        assert_eq!(sent, vec![(h, vec![(key(1), open(2)), (key(2), open(1))])]);
        assert!(o.is_due(), "a failed batch stays due");
        sent = flushed(&mut o, h);
        assert_eq!(sent.len(), 1);
        assert!(!o.is_due());
        // Nothing changed: nothing goes.
        o.set(key(1), open(2));
        assert!(!o.is_due());
        // Zero goes once; the key is kept, so that a link that comes up
        // again sends the zero again, then forgotten.
        o.set(key(2), Count::default());
        sent = flushed(&mut o, h);
        assert_eq!(sent, vec![(h, vec![(key(2), Count::default())])]);
        assert_eq!(o.len(), 2);
        o.advance(1);
        o.relinked(n1);
        sent = flushed(&mut o, h);
        let mut resent = sent[0].1.clone();
        resent.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(resent, vec![(key(1), open(2)), (key(2), Count::default())]);
        o.advance(1);
        assert_eq!(o.len(), 2, "kept for `linger` ticks after the last zero");
        o.advance(1);
        assert_eq!(o.len(), 1);
        // A key that comes and goes before it is sent costs nothing.
        o.set(key(3), open(1));
        o.set(key(3), Count::default());
        sent = flushed(&mut o, h);
        assert!(sent.is_empty());
        assert_eq!(o.len(), 1);
        // A new home, a link up again, a new run: the keys go again.
        let n2: NodeRef = (id(3, 1).addr, 1);
        let h2: Dest = Some(n2);
        o.rehome(|_| h2);
        sent = flushed(&mut o, h2);
        assert_eq!(sent, vec![(h2, vec![(key(1), open(2))])]);
        o.relinked(n1);
        assert!(!o.is_due(), "nothing was told over that link");
        o.relinked(n2);
        assert!(o.is_due());
        o.flush(|_| h2, |_, _| true);
        o.set_boot(1);
        assert!(!o.is_due());
        o.set_boot(2);
        assert!(o.is_due());
    }

    /// A cluster of nodes, each with one outbox and one home table, and
    /// a membership each node sees alike.
    struct World {
        ids: Vec<NodeId>,
        up: Vec<bool>,
        /// Each node's clients per key (what its store says).
        clients: Vec<BTreeMap<i64, u32>>,
        outboxes: Vec<Outbox>,
        tables: Vec<HomeTable>,
    }

    #[derive(Debug, Clone)]
    enum Step {
        Set {
            node: usize,
            user: i64,
            n: u32,
        },
        Flush {
            node: usize,
            fail: bool,
        },
        Down(usize),
        Up(usize),
        Restart(usize),
        Relink {
            node: usize,
            to: usize,
        },
        /// A flush whose frames to `to` are lost on a link that then
        /// comes up again.
        Lossy {
            node: usize,
            to: usize,
        },
        /// Time passes: zeros kept long enough are forgotten.
        Tick,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..4usize, 0..12i64, 0..3u32).prop_map(|(node, user, n)| Step::Set { node, user, n }),
            3 => (0..4usize, any::<bool>()).prop_map(|(node, fail)| Step::Flush { node, fail }),
            1 => (0..4usize).prop_map(Step::Down),
            1 => (0..4usize).prop_map(Step::Up),
            1 => (0..4usize).prop_map(Step::Restart),
            1 => (0..4usize, 0..4usize).prop_map(|(node, to)| Step::Relink { node, to }),
            1 => (0..4usize, 0..4usize).prop_map(|(node, to)| Step::Lossy { node, to }),
            1 => Just(Step::Tick),
        ]
    }

    impl World {
        fn new(n: usize) -> World {
            let mut w = World {
                ids: (0..n).map(|i| id(7000 + 10 * i as u16, 1)).collect(),
                up: vec![true; n],
                clients: vec![BTreeMap::new(); n],
                outboxes: (0..n).map(|_| Outbox::default()).collect(),
                tables: (0..n).map(|_| HomeTable::default()).collect(),
            };
            for i in 0..n {
                w.outboxes[i].set_boot(1);
            }
            w
        }

        fn view(&self, me: usize) -> ClusterView {
            ClusterView {
                this: Some(self.ids[me].clone()),
                members: (0..self.ids.len())
                    .filter(|&i| i != me)
                    .map(|i| Member {
                        id: self.ids[i].clone(),
                        state: match self.up[i] {
                            true => MemberState::Alive,
                            false => MemberState::Down,
                        },
                        since_ms: 0,
                    })
                    .collect(),
            }
        }

        fn node(&self, i: usize) -> NodeRef {
            (self.ids[i].addr, self.ids[i].boot)
        }

        /// Every live node takes in the new membership.
        fn members_changed(&mut self) {
            for i in 0..self.ids.len() {
                if !self.up[i] {
                    continue;
                }
                let view = self.view(i);
                self.tables[i].retain(&view);
                self.outboxes[i].set_boot(self.ids[i].boot);
                self.outboxes[i].rehome(|k| home(&view, k));
            }
        }

        fn flush(&mut self, i: usize, fail: bool) {
            self.flush_losing(i, fail, None);
        }

        /// A flush; frames to `lost` vanish though they were sent.
        fn flush_losing(&mut self, i: usize, fail: bool, lost: Option<usize>) {
            let view = self.view(i);
            let from = self.node(i);
            let mut out = Vec::new();
            self.outboxes[i].flush(
                |k| home(&view, k),
                |dest, batch| {
                    // A failed send reaches nobody (only other nodes' can).
                    if fail && dest.is_some() {
                        return false;
                    }
                    out.push((dest, batch));
                    true
                },
            );
            for (dest, batch) in out {
                let to = match dest {
                    None => i,
                    Some(node) => (0..self.ids.len()).find(|&j| self.node(j) == node).unwrap(),
                };
                // A frame to a node that is down (or an earlier run) is
                // lost; a node takes counts from runs it does not know gone.
                if lost != Some(to) && self.up[to] && !gone(&self.view(to), from) {
                    self.tables[to].apply(from, batch);
                }
            }
        }

        fn run(&mut self, s: Step) {
            match s {
                Step::Set { node, user, n } if self.up[node] => {
                    self.clients[node].insert(user, n);
                    self.outboxes[node].set(key(user), open(n));
                }
                Step::Flush { node, fail } if self.up[node] => self.flush(node, fail),
                Step::Down(node) if self.up[node] && self.up.iter().filter(|u| **u).count() > 1 => {
                    // A dead node loses its clients and its tables.
                    self.up[node] = false;
                    self.clients[node].clear();
                    self.outboxes[node] = Outbox::default();
                    self.tables[node] = HomeTable::default();
                    self.members_changed();
                }
                Step::Up(node) | Step::Restart(node) if !self.up[node] => {
                    self.up[node] = true;
                    self.ids[node].boot += 1;
                    self.outboxes[node].set_boot(self.ids[node].boot);
                    self.members_changed();
                }
                Step::Restart(node) => {
                    // Down and up again before anyone noticed the gap: a
                    // new run replaces the old one at once.
                    self.clients[node].clear();
                    self.outboxes[node] = Outbox::default();
                    self.tables[node] = HomeTable::default();
                    self.ids[node].boot += 1;
                    self.outboxes[node].set_boot(self.ids[node].boot);
                    self.members_changed();
                }
                Step::Lossy { node, to } if self.up[node] && self.up[to] && node != to => {
                    self.flush_losing(node, false, Some(to));
                    let to = self.node(to);
                    self.outboxes[node].relinked(to);
                }
                Step::Tick => {
                    for outbox in &mut self.outboxes {
                        outbox.advance(2);
                    }
                }
                Step::Relink { node, to } if self.up[node] && self.up[to] => {
                    let to = self.node(to);
                    self.outboxes[node].relinked(to);
                }
                _ => {}
            }
        }

        /// Flushes every node until nothing is due (links all up).
        fn settle(&mut self) {
            for i in 0..self.ids.len() {
                if self.up[i] {
                    self.flush(i, false);
                }
            }
        }

        /// For every user: the home (as any live node sees it) knows
        /// exactly the live holders and their counts.
        fn check(&self) -> Result<(), TestCaseError> {
            let first = (0..self.ids.len()).find(|&i| self.up[i]).unwrap();
            for user in 0..12 {
                let k = key(user);
                let mut expected: Vec<(NodeRef, u64)> = (0..self.ids.len())
                    .filter(|&i| self.up[i])
                    .filter_map(|i| {
                        let n = *self.clients[i].get(&user)?;
                        (n > 0).then(|| (self.node(i), u64::from(n)))
                    })
                    .collect();
                expected.sort_unstable();
                let view = self.view(first);
                let at = match home(&view, &k) {
                    None => first,
                    Some(node) => (0..self.ids.len()).find(|&j| self.node(j) == node).unwrap(),
                };
                prop_assert!(self.up[at]);
                prop_assert_eq!(
                    self.tables[at].holders(&[k], false),
                    expected,
                    "user {}",
                    user
                );
            }
            // Bounded: nothing held for keys nobody holds or homed elsewhere.
            for i in (0..self.ids.len()).filter(|&i| self.up[i]) {
                let total: usize = self
                    .clients
                    .iter()
                    .map(|c| c.values().filter(|n| **n > 0).count())
                    .sum();
                prop_assert!(self.tables[i].len() <= total);
                prop_assert!(self.outboxes[i].len() <= self.clients[i].len());
            }
            Ok(())
        }
    }

    proptest! {
        #[test]
        fn after_any_joins_leaves_and_publishes_the_home_knows_exactly_the_holders(
            steps in prop::collection::vec(step(), 0..60),
        ) {
            let mut w = World::new(4);
            for s in steps {
                w.run(s);
            }
            w.settle();
            w.check()?;
        }
    }
}
