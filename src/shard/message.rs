//! What crosses between shards. Requests carry a [`ReplyTo`]; the answering
//! shard sends [`ShardMsg::Reply`] back to it.
//!
//! Routing's and the queues' messages carry their own payload types (a
//! [`Pick`], a SEND on its way, queue messages): naming them here ties the
//! shard to those layers by type only. What a message does is decided in
//! `crate::dispatch`, above all three.

use std::sync::Arc;

use serde_json::Value;

use crate::metadata::ClientIdx;
use crate::query::Query;
use crate::routing::pick::Pick;

/// Where an answer goes: the asking shard and its request number.
#[derive(Debug, Clone, Copy)]
pub struct ReplyTo {
    pub shard: usize,
    pub req: u64,
}

/// One identified connection anywhere in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: usize,
    pub client: ClientIdx,
    /// The connection's id on its shard, so a stale reference to a slot that
    /// a newer client has reused never reaches that client.
    pub conn: u64,
}

/// One connection anywhere in the process, before or after it has a client
/// slot: what the name registry records, so a name can be claimed before the
/// client is added to its shard's store (it is added and made reachable in
/// one step once the name is its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub shard: usize,
    pub conn: u64,
}

impl From<ConnRef> for ConnId {
    fn from(c: ConnRef) -> ConnId {
        ConnId {
            shard: c.shard,
            conn: c.conn,
        }
    }
}

/// A dispatch packet (op 4) to deliver: encoded lazily by each receiving
/// shard, once per encoding its recipients use.
#[derive(Debug)]
pub struct Dispatch {
    pub t: &'static str,
    pub d: Value,
}

#[derive(Debug)]
pub enum ShardMsg {
    /// SEND, first (or, with `avg`, second) round: reply with this shard's
    /// [`Pick`].
    Pick {
        reply_to: ReplyTo,
        query: Arc<Query>,
        avg: Option<f64>,
        /// Also describe each client named (the `<client>` object), so an
        /// origin that needs it (the proxy, a selector in QUERY_NODES) saves
        /// a round trip to the chosen client's shard.
        describe: bool,
    },
    /// Deliver to one client of this shard, without an answer (queue
    /// confirms and deliveries, which have their own way to notice a loss).
    Deliver {
        target: ConnRef,
        packet: Arc<Dispatch>,
    },
    /// SEND, last step: deliver to one client of this shard; if it has
    /// gone, choose again from here (see [`crate::routing::router::OneSend`]).
    SendOne {
        target: ConnRef,
        job: Box<crate::routing::router::OneSend>,
    },
    /// SEND, last step, when the directory says this shard alone can
    /// choose (it holds every match, or was drawn in proportion to its
    /// share): choose among this shard's matches of `query` and deliver;
    /// if none is left, choose again from here.
    PickSend {
        query: Arc<Query>,
        job: Box<crate::routing::router::OneSend>,
        /// A miss here means the directory was behind (it counted matches
        /// here, or this shard was chosen from a remembered answer): the
        /// SEND is chosen again, asking afresh (see
        /// [`crate::routing::router::pick_send`]).
        retry: bool,
    },
    /// On a value's directory home: which shards hold clients in these
    /// buckets. Replies `Located`, and the asker is told to forget the
    /// answer when a bucket changes.
    Locate {
        reply_to: ReplyTo,
        keys: Vec<crate::metadata::ValueKey>,
    },
    /// Invalid (op 3) for one client of this shard.
    Invalid {
        to: ConnRef,
        error: &'static str,
        extra: Value,
    },
    /// BROADCAST: deliver to every local match; reply with the count.
    Broadcast {
        reply_to: ReplyTo,
        query: Arc<Query>,
        packet: Arc<Dispatch>,
    },
    /// QUERY_NODES / HTTP query: reply with the `<client>` objects of the
    /// local matches, as many as `cap` allows, and how many matched.
    Nodes {
        reply_to: ReplyTo,
        query: Arc<Query>,
        cap: NodesCap,
    },
    /// Claim the name (app, client) for a connection; this shard owns the
    /// name's registry entry. Replies `Claimed`.
    Claim {
        reply_to: ReplyTo,
        app: Box<str>,
        client: Box<str>,
        owner: ConnId,
    },
    /// Give a name back when its connection ends.
    Release {
        app: Box<str>,
        client: Box<str>,
        owner: ConnId,
    },
    /// CLIENT_CONNECTED / CLIENT_DISCONNECTED for this shard's subscribers.
    ClientEvent {
        packet: Arc<Dispatch>,
    },
    Reply {
        req: u64,
        from: usize,
        reply: Reply,
    },
    /// Reply with this shard's metrics snapshot.
    Metrics {
        reply_to: ReplyTo,
    },
    /// Say goodbye to every client and stop.
    Shutdown,
    /// Queues: a message for the queue side of a shard (src/queue).
    Queue(crate::queue::QueueMsg),
    /// Queues: a question to the queue side of a shard; replies `Queue`.
    QueueAsk {
        reply_to: ReplyTo,
        ask: crate::queue::QueueAsk,
    },
    /// The cluster's members changed: the new view, from the shard that
    /// runs the gossip (see [`crate::cluster`]).
    ClusterView(Arc<crate::cluster::ClusterView>),
    /// Reply with this shard's verified links to other nodes.
    Links {
        reply_to: ReplyTo,
    },
    /// Another node's clients per application (from the shard whose link
    /// received it).
    RemoteApps {
        node: (std::net::SocketAddr, u64),
        apps: Arc<crate::cluster::NodeApps>,
    },
    /// Reply with this shard's clients per application.
    AppCounts {
        reply_to: ReplyTo,
    },
    /// Deliver to one client of this shard and reply whether it was still
    /// there (`Delivered(1)` or `(0)`): a SEND another node waits on.
    DeliverAsk {
        reply_to: ReplyTo,
        target: ConnRef,
        packet: Arc<Dispatch>,
    },
    /// On a name's owner shard of its home node: `holder`'s claim of the
    /// name across the cluster (`stale`: an entry in the way found no
    /// longer held). Replies `ClusterClaim`.
    ClusterClaim {
        reply_to: ReplyTo,
        app: Box<str>,
        client: Box<str>,
        holder: crate::cluster::claims::Holder,
        stale: Option<crate::cluster::claims::Holder>,
    },
    /// Another node's connection gave a name homed here back.
    ClusterRelease {
        app: Box<str>,
        client: Box<str>,
        holder: crate::cluster::claims::Holder,
    },
    /// Whether a connection of this node holds the name; replies `Claimed`.
    HoldsName {
        reply_to: ReplyTo,
        app: Box<str>,
        client: Box<str>,
    },
    /// Close one of this shard's connections with an error (op 8).
    CloseConn {
        conn: u64,
        error: String,
    },
    /// Send `count` clients of this shard away (goodbye, reason
    /// `load balancing`).
    SendAway {
        count: u64,
    },
    /// A node's counts of indexed values homed on this node, whose table
    /// is on this shard (see `crate::routing::homes`).
    NodeValues {
        from: crate::cluster::values::NodeRef,
        counts: Vec<(crate::cluster::values::Key, crate::metadata::Count)>,
    },
    /// On the shard keeping these value keys' table: which nodes hold
    /// them. Replies `Holders`.
    NodeHolders {
        reply_to: ReplyTo,
        keys: Vec<crate::cluster::values::Key>,
        restricted: bool,
    },
}

impl ShardMsg {
    /// Every [`ShardMsg::kind`], in the order of its index.
    pub const KINDS: [&'static str; 41] = [
        "pick",
        "deliver",
        "send_one",
        "invalid",
        "broadcast",
        "nodes",
        "claim",
        "release",
        "client_event",
        "metrics",
        "shutdown",
        "queue",
        "queue_ask",
        "reply_pick",
        "reply_delivered",
        "reply_nodes",
        "reply_claimed",
        "reply_metrics",
        "reply_queue",
        "pick_send",
        "locate",
        "reply_located",
        "directory_apps",
        "directory_values",
        "directory_forget",
        "cluster_view",
        "links",
        "reply_links",
        "deliver_ask",
        "remote_apps",
        "app_counts",
        "reply_app_counts",
        "cluster_claim",
        "cluster_release",
        "holds_name",
        "close_conn",
        "send_away",
        "reply_cluster_claim",
        "node_values",
        "node_holders",
        "reply_node_holders",
    ];

    /// What the message is, as an index into [`ShardMsg::KINDS`]: the
    /// label of the cross-shard message counter.
    ///
    /// (A test below checks that every index names its variant.)
    pub fn kind(&self) -> usize {
        match self {
            ShardMsg::Pick { .. } => 0,
            ShardMsg::Deliver { .. } => 1,
            ShardMsg::SendOne { .. } => 2,
            ShardMsg::Invalid { .. } => 3,
            ShardMsg::Broadcast { .. } => 4,
            ShardMsg::Nodes { .. } => 5,
            ShardMsg::Claim { .. } => 6,
            ShardMsg::Release { .. } => 7,
            ShardMsg::ClientEvent { .. } => 8,
            ShardMsg::Metrics { .. } => 9,
            ShardMsg::Shutdown => 10,
            ShardMsg::Queue(_) => 11,
            ShardMsg::QueueAsk { .. } => 12,
            ShardMsg::Reply { reply, .. } => match reply {
                Reply::Pick(..) => 13,
                Reply::Delivered(_) => 14,
                Reply::Nodes(_) => 15,
                Reply::Claimed(_) => 16,
                Reply::Metrics(_) => 17,
                Reply::Queue(_) => 18,
                Reply::Located(_) => 21,
                Reply::Links(_) => 27,
                Reply::AppCounts(_) => 31,
                Reply::ClusterClaim(_) => 37,
                Reply::Holders(_) => 40,
            },
            ShardMsg::PickSend { .. } => 19,
            ShardMsg::Locate { .. } => 20,
            ShardMsg::ClusterView(_) => 25,
            ShardMsg::Links { .. } => 26,
            ShardMsg::DeliverAsk { .. } => 28,
            ShardMsg::RemoteApps { .. } => 29,
            ShardMsg::AppCounts { .. } => 30,
            ShardMsg::ClusterClaim { .. } => 32,
            ShardMsg::ClusterRelease { .. } => 33,
            ShardMsg::HoldsName { .. } => 34,
            ShardMsg::CloseConn { .. } => 35,
            ShardMsg::SendAway { .. } => 36,
            ShardMsg::NodeValues { .. } => 38,
            ShardMsg::NodeHolders { .. } => 39,
        }
    }

    /// The counter label of a directory message (which travels on its own
    /// lane, see [`crate::routing::locate`]).
    pub fn directory_kind(msg: &crate::routing::directory::DirMsg) -> usize {
        use crate::routing::directory::DirMsg;
        match msg {
            DirMsg::Apps { .. } => 22,
            DirMsg::Values { .. } => 23,
            DirMsg::Forget { .. } => 24,
        }
    }
}

/// How much one QUERY_NODES / HTTP query answer may hold
/// (`--max-query-results`, and half of `--max-outbound-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct NodesCap {
    /// Clients.
    pub count: usize,
    /// Bytes of `<client>` objects, as JSON.
    pub bytes: usize,
}

impl NodesCap {
    pub fn new(config: &crate::config::Config) -> NodesCap {
        NodesCap {
            count: config.max_query_results,
            bytes: config.max_query_answer_bytes(),
        }
    }
}

/// One shard's part of a QUERY_NODES / HTTP query answer.
#[derive(Debug, Default)]
pub struct NodeList {
    /// `<client>` objects with their size as JSON, within the cap.
    pub nodes: Vec<(Value, usize)>,
    /// Every local match, described or not.
    pub matched: u64,
}

/// A client a shard's [`Pick`] names.
#[derive(Debug)]
pub struct Picked {
    pub idx: ClientIdx,
    /// Its connection id: the origin delivers to this connection only, so a
    /// slot reused in between is never mistaken for it.
    pub conn: u64,
    /// Its `<client>` object, when asked for.
    pub node: Option<Value>,
}

#[derive(Debug)]
pub enum Reply {
    /// A shard's pick, with the connection of each client it names.
    Pick(Pick, Vec<Picked>),
    Delivered(u64),
    Nodes(NodeList),
    Claimed(bool),
    Metrics(Box<crate::metrics::Snapshot>),
    Queue(crate::queue::QueueReply),
    /// The holders of the buckets asked about, with counts.
    Located(crate::routing::directory::Located),
    Links(Vec<crate::cluster::link::LinkInfo>),
    AppCounts(Vec<(Arc<str>, usize)>),
    ClusterClaim(super::names::ClaimOutcome),
    /// The nodes holding clients in the value buckets asked about.
    Holders(crate::cluster::values::Holders),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_labelled_by_its_own_name() {
        let reply_to = ReplyTo { shard: 0, req: 0 };
        let owner = ConnId { shard: 0, conn: 0 };
        let holder = crate::cluster::claims::Holder {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            boot: 1,
            shard: 0,
            conn: 0,
        };
        let cases = [
            (ShardMsg::Metrics { reply_to }, "metrics"),
            (ShardMsg::Shutdown, "shutdown"),
            (
                ShardMsg::Release {
                    app: "a".into(),
                    client: "c".into(),
                    owner,
                },
                "release",
            ),
            (
                ShardMsg::Claim {
                    reply_to,
                    app: "a".into(),
                    client: "c".into(),
                    owner,
                },
                "claim",
            ),
            (
                ShardMsg::Reply {
                    req: 0,
                    from: 1,
                    reply: Reply::Claimed(true),
                },
                "reply_claimed",
            ),
            (
                ShardMsg::Reply {
                    req: 0,
                    from: 1,
                    reply: Reply::Delivered(1),
                },
                "reply_delivered",
            ),
            (ShardMsg::SendAway { count: 1 }, "send_away"),
            (
                ShardMsg::CloseConn {
                    conn: 1,
                    error: String::new(),
                },
                "close_conn",
            ),
            (
                ShardMsg::HoldsName {
                    reply_to,
                    app: "a".into(),
                    client: "c".into(),
                },
                "holds_name",
            ),
            (
                ShardMsg::ClusterRelease {
                    app: "a".into(),
                    client: "c".into(),
                    holder,
                },
                "cluster_release",
            ),
            (
                ShardMsg::ClusterClaim {
                    reply_to,
                    app: "a".into(),
                    client: "c".into(),
                    holder,
                    stale: None,
                },
                "cluster_claim",
            ),
            (
                ShardMsg::Reply {
                    req: 0,
                    from: 1,
                    reply: Reply::ClusterClaim(super::super::ClaimOutcome::Granted),
                },
                "reply_cluster_claim",
            ),
        ];
        for (msg, name) in cases {
            assert_eq!(ShardMsg::KINDS[msg.kind()], name);
        }
        let located = ShardMsg::Reply {
            req: 0,
            from: 1,
            reply: Reply::Located(Default::default()),
        };
        assert_eq!(ShardMsg::KINDS[located.kind()], "reply_located");
        let holders = ShardMsg::NodeHolders {
            reply_to,
            keys: Vec::new(),
            restricted: false,
        };
        assert_eq!(ShardMsg::KINDS[holders.kind()], "node_holders");
        let values = ShardMsg::NodeValues {
            from: ("127.0.0.1:1".parse().unwrap(), 1),
            counts: Vec::new(),
        };
        assert_eq!(ShardMsg::KINDS[values.kind()], "node_values");
        let reply = ShardMsg::Reply {
            req: 0,
            from: 1,
            reply: Reply::Holders(Default::default()),
        };
        assert_eq!(ShardMsg::KINDS[reply.kind()], "reply_node_holders");
        use crate::routing::directory::DirMsg;
        for msg in [
            DirMsg::Apps {
                from: 0,
                counts: Vec::new(),
            },
            DirMsg::Values {
                from: 0,
                counts: Vec::new(),
            },
            DirMsg::Forget {
                from: 0,
                seq: 0,
                keys: Vec::new(),
            },
        ] {
            assert_eq!(ShardMsg::KINDS[ShardMsg::directory_kind(&msg)], msg.kind());
        }
    }
}
