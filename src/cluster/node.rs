//! Who a node is, and what this node knows of the others: pure types, no
//! I/O.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A node as the cluster knows it: carried in every gossip packet (keep it
/// small), so everything here is what the others need without asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Where it gossips: `--cluster-addr`. Two identities with one address
    /// are two runs of one node; the later run wins ([`NodeId::boot`]).
    pub addr: SocketAddr,
    /// This run of the node: the start time in microseconds since the Unix
    /// epoch (exact as a JSON number in JavaScript until the year 2255), plus one each time the node renews its identity after the
    /// others declared it down (a pause longer than the failure timeout).
    pub boot: u64,
    /// `--node-name`.
    pub name: String,
    /// Its shard count.
    pub shards: u16,
    /// The UDP port of each shard's link endpoint, by shard, on
    /// `addr`'s IP.
    pub links: Vec<u16>,
}

impl NodeId {
    /// The identity to announce to a seed we know by address only: foca
    /// accepts an announce addressed to any identity with the receiver's
    /// address, and the answer carries the real one.
    pub fn seed(addr: SocketAddr) -> NodeId {
        NodeId {
            addr,
            boot: 0,
            name: String::new(),
            shards: 0,
            links: Vec::new(),
        }
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    /// A node the others declared down comes back as a new run of itself
    /// instead of staying out.
    fn renew(&self) -> Option<NodeId> {
        Some(NodeId {
            boot: self.boot.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &NodeId) -> bool {
        self.boot > adversary.boot
    }
}

/// A member's state as SWIM sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; declared down unless it refutes within the suspicion
    /// timeout (`--cluster-down-after`).
    Suspect,
    /// Declared down: out of every route. Kept in the list for a while so
    /// that stale news of it is recognised.
    Down,
}

impl MemberState {
    pub const ALL: [MemberState; 3] = [MemberState::Alive, MemberState::Suspect, MemberState::Down];

    pub fn label(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

impl From<foca::State> for MemberState {
    fn from(state: foca::State) -> MemberState {
        match state {
            foca::State::Alive => MemberState::Alive,
            foca::State::Suspect => MemberState::Suspect,
            foca::State::Down => MemberState::Down,
        }
    }
}

/// One other node, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub state: MemberState,
    /// When this node saw it enter `state`, in ms since the Unix epoch.
    pub since_ms: u64,
}

/// What this node knows of the cluster, as every shard holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// This node; `None` when clustering is off.
    pub this: Option<NodeId>,
    /// The other nodes, alive, suspect and recently down, by address.
    pub members: Vec<Member>,
}

impl ClusterView {
    /// Members in each state, in [`MemberState::ALL`]'s order.
    pub fn counts(&self) -> [u64; 3] {
        let mut counts = [0; 3];
        for m in &self.members {
            counts[m.state as usize] += 1;
        }
        counts
    }

    /// The body of `GET /api/v1/cluster`.
    pub fn to_json(&self) -> Value {
        let Some(this) = &self.this else {
            return json!({"enabled": false, "members": []});
        };
        let node = |id: &NodeId| {
            json!({
                "name": id.name,
                "addr": id.addr.to_string(),
                "boot": id.boot,
                "shards": id.shards,
                "link_ports": id.links,
            })
        };
        let members: Vec<Value> = self
            .members
            .iter()
            .map(|m| {
                let mut v = node(&m.id);
                v["state"] = m.state.label().into();
                v["since"] = m.since_ms.into();
                v
            })
            .collect();
        json!({"enabled": true, "node": node(this), "members": members})
    }

    /// The member that is run `node` (gossip address, boot) of another
    /// node, unless it is down.
    pub fn live_member(&self, node: (SocketAddr, u64)) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| (m.id.addr, m.id.boot) == node && m.state != MemberState::Down)
    }

    /// The home of `key` among this node and the live (not down) members
    /// with links, by rendezvous hashing over their gossip addresses: every
    /// node that sees the same members computes the same home, and when a
    /// member comes or goes only the keys homed on it move. `None`: this
    /// node is the home (always so with clustering off). Hashed by address
    /// alone, so a node that restarts on its address is the home of the
    /// same keys again.
    pub fn home(&self, key: &[u8]) -> Option<&NodeId> {
        let this = self.this.as_ref()?;
        let mut best = (rendezvous_score(this.addr, key), None);
        for m in &self.members {
            if m.state == MemberState::Down || m.id.links.is_empty() {
                continue;
            }
            let score = rendezvous_score(m.id.addr, key);
            if score > best.0 {
                best = (score, Some(&m.id));
            }
        }
        best.1
    }
}

/// A node's score for `key` in rendezvous hashing: FNV-1a over the
/// address and the key, finished by a 64-bit mixer. Written out rather
/// than taken from `std`, whose hasher may change between Rust releases:
/// nodes built by different releases must agree.
fn rendezvous_score(addr: SocketAddr, key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match addr.ip() {
        std::net::IpAddr::V4(ip) => eat(&ip.octets()),
        std::net::IpAddr::V6(ip) => eat(&ip.octets()),
    }
    eat(&addr.port().to_le_bytes());
    eat(&[0xff]);
    eat(key);
    // splitmix64's finaliser: FNV's low bits alone are poorly mixed.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Turns foca's member list, read after each change, into a
/// [`ClusterView`], remembering since when each member is in its state.
#[derive(Debug, Default)]
pub struct Roster {
    seen: HashMap<NodeId, (MemberState, u64)>,
}

impl Roster {
    /// The view of `members` (foca's whole membership state, down members
    /// included) at `now_ms`.
    pub fn view(
        &mut self,
        this: &NodeId,
        members: impl Iterator<Item = (NodeId, MemberState)>,
        now_ms: u64,
    ) -> ClusterView {
        let mut seen = HashMap::with_capacity(self.seen.len());
        let mut list = Vec::new();
        for (id, state) in members {
            let since = match self.seen.get(&id) {
                Some(&(was, since)) if was == state => since,
                _ => now_ms,
            };
            seen.insert(id.clone(), (state, since));
            list.push(Member {
                id,
                state,
                since_ms: since,
            });
        }
        list.sort_by(|a, b| a.id.addr.cmp(&b.id.addr).then(a.id.boot.cmp(&b.id.boot)));
        self.seen = seen;
        ClusterView {
            this: Some(this.clone()),
            members: list,
        }
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn node(port: u16, boot: u64) -> NodeId {
        NodeId {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            boot,
            name: format!("n{port}"),
            shards: 2,
            links: vec![port + 1, port + 2],
        }
    }

    #[test]
    fn a_later_run_wins_its_address_and_a_renewal_beats_the_run_it_renews() {
        let old = node(7000, 10);
        let new = node(7000, 11);
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        let renewed = old.renew().unwrap();
        assert_eq!(renewed.addr(), old.addr());
        assert!(renewed.win_addr_conflict(&old));
        assert_ne!(renewed, old);
    }

    #[test]
    fn a_seed_has_the_address_alone() {
        let seed = NodeId::seed(SocketAddr::from(([10, 0, 0, 1], 7000)));
        assert_eq!(seed.addr(), SocketAddr::from(([10, 0, 0, 1], 7000)));
        assert!(node(7000, 1).win_addr_conflict(&NodeId::seed(node(7000, 1).addr)));
    }

    #[test]
    fn the_roster_keeps_when_a_member_entered_its_state() {
        let me = node(1, 1);
        let (a, b) = (node(2, 1), node(3, 1));
        let mut roster = Roster::default();
        let v = roster.view(
            &me,
            [
                (b.clone(), MemberState::Alive),
                (a.clone(), MemberState::Alive),
            ]
            .into_iter(),
            100,
        );
        assert_eq!(v.members.len(), 2);
        assert_eq!(v.members[0].id, a, "sorted by address");
        assert_eq!(v.counts(), [2, 0, 0]);
        let v = roster.view(
            &me,
            [
                (a.clone(), MemberState::Alive),
                (b.clone(), MemberState::Suspect),
            ]
            .into_iter(),
            200,
        );
        assert_eq!(v.members[0].since_ms, 100, "unchanged state keeps its time");
        assert_eq!(v.members[1].since_ms, 200);
        assert_eq!(v.counts(), [1, 1, 0]);
        // A member that leaves foca's list leaves the view; coming back is
        // a new entry.
        let v = roster.view(&me, [(a.clone(), MemberState::Alive)].into_iter(), 300);
        assert_eq!(v.members.len(), 1);
        let v = roster.view(
            &me,
            [(b, MemberState::Alive), (a, MemberState::Alive)].into_iter(),
            400,
        );
        assert_eq!(v.members[1].since_ms, 400);
    }

    fn view_of(this: NodeId, others: &[(NodeId, MemberState)]) -> ClusterView {
        ClusterView {
            this: Some(this),
            members: others
                .iter()
                .map(|(id, state)| Member {
                    id: id.clone(),
                    state: *state,
                    since_ms: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn a_live_member_is_that_run_of_the_node_and_not_down() {
        let view = view_of(
            node(7000, 1),
            &[
                (node(7010, 2), MemberState::Suspect),
                (node(7020, 1), MemberState::Down),
            ],
        );
        let at = |port, boot| (SocketAddr::from(([127, 0, 0, 1], port)), boot);
        assert_eq!(
            view.live_member(at(7010, 2)).map(|m| m.state),
            Some(MemberState::Suspect)
        );
        assert!(view.live_member(at(7010, 1)).is_none(), "an earlier run");
        assert!(view.live_member(at(7020, 1)).is_none(), "down");
        assert!(
            view.live_member(at(7000, 1)).is_none(),
            "this node is no member"
        );
    }

    #[test]
    fn every_node_agrees_on_a_home_and_only_a_leaving_nodes_keys_move() {
        let nodes: Vec<NodeId> = (0..4).map(|i| node(7000 + i * 10, 1)).collect();
        let seen_from = |me: usize, down: Option<usize>| {
            let others: Vec<(NodeId, MemberState)> = (0..4)
                .filter(|&i| i != me)
                .map(|i| {
                    let state = match down == Some(i) {
                        true => MemberState::Down,
                        false => MemberState::Alive,
                    };
                    (nodes[i].clone(), state)
                })
                .collect();
            view_of(nodes[me].clone(), &others)
        };
        let home = |view: &ClusterView, key: &[u8]| {
            view.home(key)
                .map_or_else(|| view.this.as_ref().unwrap().addr, |n| n.addr)
        };
        let mut per_node = [0; 4];
        for k in 0..2000u32 {
            let key = k.to_le_bytes();
            let homes: Vec<_> = (0..4).map(|me| home(&seen_from(me, None), &key)).collect();
            assert!(homes.windows(2).all(|w| w[0] == w[1]), "key {k}: {homes:?}");
            per_node[nodes.iter().position(|n| n.addr == homes[0]).unwrap()] += 1;
            // Node 3 goes down: its keys move, no other key does.
            let after = home(&seen_from(0, Some(3)), &key);
            if homes[0] != nodes[3].addr {
                assert_eq!(after, homes[0], "key {k} moved");
            } else {
                assert_ne!(after, nodes[3].addr);
            }
        }
        // Roughly even (each near 500).
        assert!(
            per_node.iter().all(|&n| (350..650).contains(&n)),
            "{per_node:?}"
        );
    }

    #[test]
    fn a_restarted_node_is_the_home_of_the_same_keys_and_a_linkless_one_of_none() {
        let a = node(7000, 1);
        let b = node(7010, 1);
        let key = (0..100u32)
            .map(|k| k.to_le_bytes())
            .find(|k| {
                view_of(a.clone(), &[(b.clone(), MemberState::Alive)])
                    .home(k)
                    .is_some()
            })
            .expect("some key is homed on b");
        let again = node(7010, 2);
        let view = view_of(a.clone(), &[(again.clone(), MemberState::Suspect)]);
        assert_eq!(view.home(&key), Some(&again));
        let linkless = NodeId {
            links: Vec::new(),
            ..node(7010, 2)
        };
        assert_eq!(
            view_of(a, &[(linkless, MemberState::Alive)]).home(&key),
            None
        );
        assert_eq!(ClusterView::default().home(&key), None);
    }

    #[test]
    fn the_json_names_each_member_and_its_state() {
        let me = node(1, 1);
        let mut roster = Roster::default();
        let v = roster.view(&me, [(node(2, 5), MemberState::Down)].into_iter(), 7);
        let j = v.to_json();
        assert_eq!(j["enabled"], true);
        assert_eq!(j["node"]["name"], "n1");
        assert_eq!(j["members"][0]["addr"], "127.0.0.1:2");
        assert_eq!(j["members"][0]["state"], "down");
        assert_eq!(j["members"][0]["boot"], 5);
        assert_eq!(j["members"][0]["since"], 7);
        assert_eq!(ClusterView::default().to_json()["enabled"], false);
    }
}
