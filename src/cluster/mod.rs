//! The cluster: several nodes (processes, usually on several machines)
//! that form one message bus, with no master.
//!
//! - [`node`]: who a node is and what this node knows of the others (pure).
//! - [`seal`]: gossip packets signed with the cluster secret (pure).
//! - [`gossip`]: membership, SWIM over UDP, run on shard 0.
//! - [`frame`]: frames on the links between nodes, and their codec (pure).
//! - [`tls`]: the links' TLS, and the proof of the secret.
//! - [`link`]: each shard's QUIC endpoint and its links to the
//!   counterpart shards of the other nodes.
//! - [`balance`]: how many clients a crowded node sends away (pure).
//! - [`claims`]: which other node holds each name homed here (pure).
//! - [`values`]: indexed values homed over the nodes, and which nodes
//!   hold them (pure).
//!
//! Every shard holds the latest [`ClusterView`], published by shard 0's
//! gossip through the mesh whenever a member's state changes; its links
//! follow each new view.

pub mod balance;
pub mod claims;
pub mod frame;
pub mod gossip;
pub mod link;
pub mod node;
pub mod seal;
pub mod tls;
pub mod values;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;

pub use gossip::{Gossip, GossipStats, RejectReason, Settings};
pub use node::{ClusterView, MemberState, NodeId};

/// The next datagram on `socket` into `buf`: its length and sender. A
/// failed receive is logged (`what`: the socket's use) and retried after
/// a pause, so a transient error cannot spin a shard.
pub(crate) async fn next_datagram(
    socket: &glommio::net::UdpSocket,
    buf: &mut [u8],
    what: &str,
) -> (usize, SocketAddr) {
    loop {
        match socket.recv_from(buf).await {
            Ok(got) => return got,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: {what} receive failed");
                glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a cluster node sets up before its shards start: its run id, and
/// one link socket per shard, so that the gossip can advertise every
/// shard's port from the start.
pub struct Prepared {
    pub boot: u64,
    /// The gossip socket, bound on `--cluster-addr` (for shard 0).
    pub gossip: UdpSocket,
    pub gossip_addr: SocketAddr,
    /// Each shard's link socket, and its port.
    pub sockets: Vec<UdpSocket>,
    pub ports: Vec<u16>,
    /// The links' certificate, key and CA, shared by every shard.
    pub tls: Arc<tls::LinkTls>,
}

impl Prepared {
    /// Binds the gossip socket on `addr` (without SO_REUSEPORT: a second
    /// process on the same address is refused instead of sharing it) and
    /// `shards` link sockets on its IP, on ports the kernel picks.
    pub fn bind(addr: SocketAddr, shards: usize, config: &Config) -> Result<Prepared, String> {
        let tls = match (&config.cluster_cert, &config.cluster_key) {
            (Some(cert), Some(key)) => tls::LinkTls::load(cert, key, config.cluster_ca.as_deref())?,
            _ => tls::LinkTls::generated()?,
        };
        let gossip = UdpSocket::bind(addr).map_err(|e| e.to_string())?;
        let gossip_addr = gossip.local_addr().map_err(|e| e.to_string())?;
        let sockets = (0..shards)
            .map(|i| {
                let port = config.cluster_link_port.map_or(0, |base| base + i as u16);
                let at = SocketAddr::new(addr.ip(), port);
                link::bind_socket(at).map_err(|e| format!("cannot bind a link socket on {at}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ports = sockets
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        let boot = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Ok(Prepared {
            boot,
            gossip,
            gossip_addr,
            sockets,
            ports,
            tls: Arc::new(tls),
        })
    }
}

/// A shard's share of the cluster: the view, its link endpoint, and on
/// shard 0 the gossip.
#[derive(Default)]
pub struct ShardCluster {
    view: RefCell<Arc<ClusterView>>,
    gossip: RefCell<Option<Rc<Gossip>>>,
    links: RefCell<Option<Rc<link::Endpoint>>>,
    /// Each other node's clients per application, as it last sent them,
    /// by (gossip address, run).
    remote_apps: RefCell<HashMap<(SocketAddr, u64), Arc<NodeApps>>>,
    /// This shard's part of the indexed values homed over the nodes.
    pub values: RefCell<ValueState>,
}

/// A shard's part of the indexed values homed over the nodes (see
/// [`values`] and `routing::homes`).
#[derive(Debug, Default)]
pub struct ValueState {
    /// The keys whose home is this node and whose table is on this shard.
    pub table: values::HomeTable,
    /// This node's counts of the keys this shard is the local home of.
    pub outbox: values::Outbox,
    /// With one shard (no routing directory): the value keys the store
    /// touched since the outbox last took them.
    pub touched: Vec<crate::metadata::ValueKey>,
    /// The nodes keys were homed over when they last moved (this node and
    /// the live members with links), and since when.
    homes: Vec<values::NodeRef>,
    pub homes_since: Option<Instant>,
}

impl ValueState {
    /// A new view: when the nodes that keys are homed over changed, the
    /// table keeps what is still this node's of live runs, and the outbox
    /// sends each key whose home moved to its new home.
    fn set_view(&mut self, view: &ClusterView) {
        let Some(this) = &view.this else { return };
        let mut homes: Vec<values::NodeRef> = view
            .members
            .iter()
            .filter(|m| m.state != MemberState::Down && !m.id.links.is_empty())
            .map(|m| (m.id.addr, m.id.boot))
            .chain([(this.addr, this.boot)])
            .collect();
        homes.sort_unstable();
        if homes == self.homes {
            return;
        }
        self.homes = homes;
        self.homes_since = Some(Instant::now());
        self.table.retain(view);
        self.outbox.set_boot(this.boot);
        self.outbox.rehome(|key| values::home(view, key));
    }
}

/// A node of the cluster as the links name it: its gossip address and run.
pub type NodeKey = (SocketAddr, u64);

/// One node's clients per application.
pub type NodeApps = HashMap<String, u64>;

impl ShardCluster {
    /// What this node knows of the cluster now.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// A new view from the gossip: the links follow it at once.
    pub fn set_view(&self, view: Arc<ClusterView>) {
        if let Some(links) = self.links() {
            if let Some(this) = &view.this {
                links.set_boot(this.boot);
            }
            links.reconcile(&view);
        }
        // Tables of nodes that left (or ran again as a new run) go.
        self.remote_apps
            .borrow_mut()
            .retain(|node, _| view.live_member(*node).is_some());
        self.values.borrow_mut().set_view(&view);
        *self.view.borrow_mut() = view;
    }

    /// Every other node's latest table of clients per application.
    pub fn remote_apps(&self) -> HashMap<(SocketAddr, u64), Arc<NodeApps>> {
        self.remote_apps.borrow().clone()
    }

    /// Another node's latest table of clients per application.
    pub fn set_remote_apps(&self, node: (SocketAddr, u64), apps: Arc<NodeApps>) {
        self.remote_apps.borrow_mut().insert(node, apps);
    }

    /// Whether node (`addr`, `boot`) may hold clients of `app`: yes unless
    /// its table says none (a node not heard from yet may).
    pub fn may_hold(&self, addr: SocketAddr, boot: u64, app: Option<&str>) -> bool {
        let Some(app) = app else { return true };
        self.remote_apps
            .borrow()
            .get(&(addr, boot))
            .is_none_or(|apps| apps.get(app).is_some_and(|&n| n > 0))
    }

    pub fn set_links(&self, links: Rc<link::Endpoint>) {
        *self.links.borrow_mut() = Some(links);
    }

    pub fn links(&self) -> Option<Rc<link::Endpoint>> {
        self.links.borrow().clone()
    }

    /// On the shard that runs it: the gossip.
    pub fn set_gossip(&self, gossip: Rc<Gossip>) {
        *self.gossip.borrow_mut() = Some(gossip);
    }

    pub fn gossip(&self) -> Option<Rc<Gossip>> {
        self.gossip.borrow().clone()
    }

    /// For `/metrics`: gossip counters and members by state, from the
    /// shard that runs the gossip.
    pub fn stats(&self) -> Option<ClusterStats> {
        let gossip = self.gossip.borrow();
        let gossip = gossip.as_ref()?;
        Some(ClusterStats {
            gossip: gossip.stats(),
            members: self.view.borrow().counts(),
        })
    }
}

/// The body of `GET /api/v1/cluster`: the view, each member with the
/// links this node's shards have to it (`links`: shard here, shard there,
/// round trip) and how many it should have (`links_expected`).
pub fn describe(
    view: &ClusterView,
    links: &[(usize, link::LinkInfo)],
    apps: &HashMap<(SocketAddr, u64), Arc<NodeApps>>,
) -> serde_json::Value {
    let mut json = view.to_json();
    let shards = view.this.as_ref().map_or(1, |t| t.shards as usize);
    let Some(members) = json["members"].as_array_mut() else {
        return json;
    };
    for (member, out) in view.members.iter().zip(members) {
        let rows: Vec<serde_json::Value> = links
            .iter()
            .filter(|(_, l)| l.peer.addr == member.id.addr && l.peer.boot == member.id.boot)
            .map(|(shard, l)| {
                serde_json::json!({
                    "shard": shard,
                    "peer_shard": l.peer.shard,
                    "rtt_us": l.rtt.as_micros() as u64,
                    "queued_bytes": l.queued,
                    "cwnd": l.cwnd,
                    "lost_packets": l.lost_packets,
                })
            })
            .collect();
        out["links"] = rows.into();
        out["links_expected"] = link::link_count(shards, member.id.links.len()).into();
        out["clients"] = apps
            .get(&(member.id.addr, member.id.boot))
            .map_or(serde_json::Value::Null, |a| a.values().sum::<u64>().into());
    }
    json
}

/// The cluster's part of a metrics snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    pub gossip: GossipStats,
    /// Other nodes by state, in [`MemberState::ALL`]'s order.
    pub members: [u64; 3],
}
