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
