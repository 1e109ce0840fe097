//! 신경 (singyeong): a thread-per-core, io_uring message bus.
//!
//! # Layout
//!
//! Pure core (no I/O, no clock; `now` is passed in):
//! - [`protocol`]: packets, opcodes, the three wire encodings, error texts.
//! - [`metadata`]: typed metadata values, update validation, the per-shard
//!   store of clients with its indexes.
//! - [`query`]: the query language: parsing both dialects, evaluation,
//!   selectors, rendezvous hashing, index planning.
//! - [`routing::pick`]: the decomposable choice of a SEND's recipient.
//! - [`routing::directory`]: which shards can hold a match: application
//!   counts replicated on every shard, indexed values homed by hash.
//! - [`cluster::node`], [`cluster::seal`], [`cluster::frame`]: who a node
//!   is and what this node knows of the others; gossip packets signed
//!   with the secret; the frames of links between nodes;
//!   [`cluster::balance`], [`cluster::claims`]: how many clients a crowded
//!   node sends away, and which node holds each name homed here.
//! - [`cluster::values`]: indexed values homed over the nodes, and which
//!   nodes hold each.
//!
//! Runtime (glommio, one executor per shard):
//! - [`server`]: starts the shards and stops them on a signal.
//! - [`shard`]: one shard's state (its connections, clients, part of the
//!   name registry) and the API through which work crosses to other
//!   shards; the lowest runtime layer, calling into none of those after it.
//! - [`dispatch`]: where each message between shards goes: to routing,
//!   the queues, or the shard's own registries.
//! - [`http`]: HTTP/1.1 on the shared port, the API, the websocket upgrade.
//! - [`gateway`]: one websocket connection: framing, then its session.
//! - [`routing::router`]: SEND / BROADCAST / QUERY_NODES across shards
//!   (the asking half); [`routing::answer`]: what each shard answers;
//!   [`routing::locate`]: asking and keeping current the directory.
//! - [`queue`]: work queues: a pure state machine per queue, owner shards,
//!   timers, and the write-ahead log with recovery; in a cluster, one
//!   owner node per queue ([`queue::cluster`]).
//! - [`proxy`]: `POST /api/v1/proxy`: a request routed like SEND, sent to
//!   the chosen client's address with hyper, the answer relayed back.
//! - [`cluster`]: the cluster's membership, gossiped over UDP by shard 0
//!   and published to every shard; [`cluster::link`]: each shard's QUIC
//!   links to its counterparts on the other nodes; [`routing::remote`]:
//!   routing across nodes, narrowed by [`routing::homes`] (asking and
//!   keeping current the values' home nodes).
//! - [`node`]: a node's cluster duties beyond routing: load balancing by
//!   goodbye, and each name claimed at its home node so that a duplicate
//!   is refused across the cluster.
//! - [`config`]: flags, environment, file, defaults.
//! - [`metrics`]: per-shard counters and their Prometheus rendering.

pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod gateway;
pub mod http;
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod proxy;
pub mod query;
pub mod queue;
pub mod routing;
pub mod server;
pub mod shard;
