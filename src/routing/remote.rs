//! Routing across nodes, both halves: what a shard asks the other nodes
//! of the cluster for a SEND, a BROADCAST or a QUERY_NODES, and what it
//! does when another node asks it. A node answers for all of its shards,
//! as a shard answers for its clients, so the asking side merges node
//! answers exactly as it merges shard answers.
//!
//! Each request goes over this shard's link to its counterpart shard on
//! the other node (see `cluster::link`), with a deadline
//! (`--cluster-request-timeout`): a node that does not answer in time, or
//! whose link is down, counts as having no match and is counted in
//! `/metrics`; it never holds up the others.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::MemberState;
use crate::cluster::frame::{Frame, Request, Response, json_bytes, parse_json};
use crate::cluster::link::{Endpoint, PeerShard, RemoteError};
use crate::query::Query;
use crate::query::SelectorKind;
use crate::routing::pick::{Pick, choose, global_average};
use crate::routing::pipeline::{Pipeline, Slot};
use crate::routing::router::{self, MAX_PICKS, OneSend};
use crate::shard::{Dispatch, NodeList, NodesCap, Reply, Shard, ShardMsg};

/// How often shard 0 checks whether this node's clients per application
/// changed, and sends the table to the other nodes if so.
const APPS_EVERY: Duration = Duration::from_millis(100);
/// How often the table is sent even unchanged.
const APPS_REFRESH: Duration = Duration::from_secs(5);

/// One shard of every other live node that may hold clients of `app`
/// (`None`: any application): the one this shard links to.
fn targets(shard: &Shard, app: Option<&str>) -> Vec<PeerShard> {
    let view = shard.cluster.view();
    view.members
        .iter()
        .filter(|m| m.state != MemberState::Down && !m.id.links.is_empty())
        .filter(|m| shard.cluster.may_hold(m.id.addr, m.id.boot, app))
        .map(|m| PeerShard::of(&m.id, shard.id))
        .collect()
}

/// Whether another live node may hold a match of `query` (`everywhere`:
/// whatever the nodes' tables of applications say).
pub fn spans_nodes(shard: &Shard, query: &Query, everywhere: bool) -> bool {
    let app = if everywhere {
        None
    } else {
        query.application.as_deref()
    };
    shard.cluster.links().is_some() && !targets(shard, app).is_empty()
}

/// Whether a SEND that found no match among the nodes whose tables it
/// trusted should ask the others before answering `no_route`: their tables
/// may be behind a client that just connected.
pub fn may_be_elsewhere(shard: &Shard, job: &OneSend) -> bool {
    !job.everywhere && spans_nodes(shard, &job.query, true)
}

/// Sends `request` to every other live node at once and gathers what each
/// answered, in the members' order, within the deadline. (Every node: a
/// BROADCAST or QUERY_NODES must not miss a client that connected a
/// moment ago, which a node's table of applications may not show yet.)
pub async fn ask_all(shard: &Shard, request: Request) -> Vec<Result<Response, RemoteError>> {
    ask_each(shard, &targets(shard, None), request).await
}

async fn ask_each(
    shard: &Shard,
    peers: &[PeerShard],
    request: Request,
) -> Vec<Result<Response, RemoteError>> {
    let Some(endpoint) = shard.cluster.links() else {
        return peers
            .iter()
            .map(|_| Err(RemoteError::NotConnected))
            .collect();
    };
    let deadline = shard.config.cluster_request_timeout;
    let asks: Vec<_> = peers
        .iter()
        .map(|peer| {
            let (endpoint, peer, request) = (endpoint.clone(), peer.clone(), request.clone());
            glommio::spawn_local(async move { endpoint.request(&peer, request, deadline).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(asks.len());
    for ask in asks {
        answers.push(ask.await);
    }
    answers
}

/// Asks one node, calling `sent` once the request is on its way.
async fn ask_then(
    shard: &Shard,
    peer: &PeerShard,
    request: Request,
    sent: impl FnOnce(),
) -> Result<Response, RemoteError> {
    let Some(endpoint) = shard.cluster.links() else {
        sent();
        return Err(RemoteError::NotConnected);
    };
    let deadline = shard.config.cluster_request_timeout;
    endpoint.request_then(peer, request, deadline, sent).await
}

/// Where a SEND, or the choice of one client to describe, stands across
/// the nodes of a cluster.
struct Choosing {
    /// The query, relaxed once an `optional` query found no match.
    query: Arc<Query>,
    relaxed: bool,
    /// Every live node is asked, trusting no node's table of applications.
    everywhere: bool,
    /// The homes of the query's indexed values may narrow the nodes asked
    /// (see [`by_values`]): until a choice they narrowed finds no match or
    /// misses, then the tables of applications do.
    by_values: bool,
}

impl Choosing {
    fn new(query: Arc<Query>, everywhere: bool) -> Choosing {
        Choosing {
            query,
            relaxed: false,
            everywhere,
            by_values: !everywhere,
        }
    }
}

/// What the homes of a query's indexed values say of where its matches
/// are.
enum Narrowed {
    /// One node holds every match: it can choose alone, whatever the rule
    /// (`None`: this node).
    Lone(Option<PeerShard>),
    /// These other nodes, and maybe this one, hold the matches.
    Peers(Vec<PeerShard>),
    /// Nothing to narrow by: no indexed value in the query, a home not
    /// settled or not answering, or no holder at all (which a home that is
    /// behind may say of a client that connected a moment ago, so the
    /// choice asks by the tables of applications before `no_route`).
    Unknown,
}

/// Asks the homes of `query`'s indexed values which nodes hold them.
async fn by_values(shard: &Shard, query: &Query) -> Narrowed {
    let Some(found) = super::homes::lookup(shard, query).await else {
        return Narrowed::Unknown;
    };
    let view = shard.cluster.view();
    let Some(this) = view.this.as_ref() else {
        return Narrowed::Unknown;
    };
    if !found.settled || found.nodes.is_empty() {
        return Narrowed::Unknown;
    }
    let holds = |addr, boot| found.nodes.iter().any(|(node, _)| *node == (addr, boot));
    let here = holds(this.addr, this.boot);
    let peers: Vec<PeerShard> = targets(shard, None)
        .into_iter()
        .filter(|p| holds(p.addr, p.boot))
        .collect();
    // `$avg` needs every node's average first, even from a lone holder.
    let alone = query
        .selector
        .as_ref()
        .is_none_or(|s| s.kind != SelectorKind::Avg);
    match (here, peers.as_slice()) {
        (false, []) => Narrowed::Unknown,
        (true, []) if alone => Narrowed::Lone(None),
        (false, [only]) if alone => Narrowed::Lone(Some(only.clone())),
        _ => Narrowed::Peers(peers),
    }
}

/// One choice of a node: every node sums its matches up as one pick (this
/// node's first), and one node is drawn among them exactly as a shard is
/// among shards (so the choice is uniform over clients, not nodes; `key`
/// and selectors take the best of the nodes' best). A query on indexed
/// values asks only the nodes their homes name, or, when one node holds
/// them all, sends it straight there ([`by_values`]). Otherwise, nodes
/// whose table says they hold no client of the application are skipped
/// until nothing is found, then asked too, in case their table was behind;
/// `optional` relaxes only once no node has a match. `None`: no node has one. The
/// node is `None` for this one; with the cluster's average for `$avg`.
async fn choose_node(shard: &Shard, c: &mut Choosing) -> Option<(Option<PeerShard>, Option<f64>)> {
    loop {
        let app = match c.everywhere {
            true => None,
            false => c.query.application.as_deref(),
        };
        let peers = match c.by_values {
            true => match by_values(shard, &c.query).await {
                Narrowed::Lone(node) => return Some((node, None)),
                Narrowed::Peers(peers) => peers,
                Narrowed::Unknown => {
                    c.by_values = false;
                    continue;
                }
            },
            false => targets(shard, app),
        };
        let mut picks = summaries(shard, &peers, &c.query, None).await;
        if picks.iter().all(|p| p.count == 0) {
            if c.by_values {
                c.by_values = false;
                continue;
            }
            if !c.everywhere && targets(shard, None).len() > peers.len() {
                c.everywhere = true;
                continue;
            }
            if c.query.optional && !c.relaxed {
                c.relaxed = true;
                c.query = Arc::new(router::relaxed(&c.query));
                continue;
            }
            return None;
        }
        let avg = match c.query.selector.as_ref().map(|s| s.kind) {
            Some(SelectorKind::Avg) => {
                let avg = global_average(&picks)?;
                picks = summaries(shard, &peers, &c.query, Some(avg)).await;
                Some(avg)
            }
            _ => None,
        };
        let (nth, _) = choose(&c.query, &picks, &mut shard.rng.borrow_mut())?;
        let node = nth.checked_sub(1).map(|n| peers[n].clone());
        return Some((node, avg));
    }
}

/// SEND in a cluster: a node is chosen ([`choose_node`]) and delivers,
/// choosing its own client by the same rule. A node whose matches had gone
/// by then, or that does not answer, is passed over and the choice made
/// again. The sender hears `no_route` only when no node has a match.
///
/// One sender's SENDs keep their order across nodes: the request goes on
/// the link on the slot's turn, which passes on at once (the link keeps
/// the order, and the node delivers in arrival order), so a connection's
/// SENDs to other nodes are pipelined like its SENDs to other shards.
pub async fn send(shard: &Shard, job: Box<OneSend>, slot: Option<&Slot>) -> bool {
    let mut c = Choosing::new(job.query.clone(), job.everywhere);
    for _ in 0..MAX_PICKS {
        let Some((node, avg)) = choose_node(shard, &mut c).await else {
            break;
        };
        let delivered = match node {
            None => router::deliver_on_node(shard, &c.query, avg, &job.packet, slot).await,
            Some(peer) => {
                let request = Request::Send {
                    query: json_bytes(&c.query.to_json()),
                    avg,
                    event: job.packet.t.to_string(),
                    payload: json_bytes(&job.packet.d),
                };
                if let Some(slot) = slot {
                    slot.turn().await;
                }
                let answer = ask_then(shard, &peer, request, || {
                    slot.inspect(|s| s.pass_turn());
                })
                .await;
                matches!(answer, Ok(Response::Delivered(1)))
            }
        };
        if delivered {
            return true;
        }
        // The homes may have been behind: the next choice trusts them no
        // more.
        c.by_values = false;
        shard.metrics.repick();
    }
    router::answer_no_route(shard, job.no_route, &job.packet);
    false
}

/// The `<client>` object of the one client a SEND would go to, over every
/// node (the proxy, a selector in QUERY_NODES).
pub async fn describe(shard: &Shard, query: Arc<Query>) -> Option<Value> {
    let mut c = Choosing::new(query, false);
    for _ in 0..MAX_PICKS {
        let (node, avg) = choose_node(shard, &mut c).await?;
        let found = match node {
            None => router::describe_on_node(shard, &c.query, avg).await,
            Some(peer) => {
                let request = Request::Describe {
                    query: json_bytes(&c.query.to_json()),
                    avg,
                };
                match ask_each(shard, &[peer], request).await.pop() {
                    Some(Ok(Response::Nodes { nodes, .. })) => node_list(&nodes, 0)
                        .nodes
                        .into_iter()
                        .next()
                        .map(|(n, _)| n),
                    _ => None,
                }
            }
        };
        if found.is_some() {
            return found;
        }
        c.by_values = false;
        shard.metrics.repick();
    }
    None
}

/// Every node's pick, this node's first, then `peers`' in order (a node
/// that does not answer counts as having no match).
async fn summaries(
    shard: &Shard,
    peers: &[PeerShard],
    query: &Arc<Query>,
    avg: Option<f64>,
) -> Vec<Pick> {
    let request = Request::Pick {
        query: json_bytes(&query.to_json()),
        avg,
    };
    let (here, there) = futures_lite::future::zip(
        router::node_pick(shard, query, avg),
        ask_each(shard, peers, request),
    )
    .await;
    std::iter::once(here)
        .chain(there.into_iter().map(|answer| match answer {
            Ok(Response::Pick {
                count,
                keyed,
                selected,
                sum,
                numeric,
            }) => Pick {
                count,
                // The client index means nothing here: the node chooses
                // its own client again when it delivers.
                random: (count > 0).then_some(0),
                keyed: keyed.map(|score| (score, 0)),
                selected: selected.map(|value| (value, 0)),
                sum,
                numeric,
            },
            _ => Pick::default(),
        }))
        .collect()
}

/// BROADCAST on the other nodes: how many clients they delivered to.
pub async fn broadcast(shard: &Shard, query: &Query, packet: &Dispatch) -> u64 {
    if shard.cluster.links().is_none() {
        return 0;
    }
    let request = Request::Broadcast {
        query: json_bytes(&query.to_json()),
        event: packet.t.to_string(),
        payload: json_bytes(&packet.d),
    };
    ask_all(shard, request)
        .await
        .into_iter()
        .map(|answer| match answer {
            Ok(Response::Delivered(n)) => n,
            _ => 0,
        })
        .sum()
}

/// QUERY_NODES on the other nodes: each node's part, as a shard's.
pub async fn nodes(shard: &Shard, query: &Query, cap: NodesCap) -> Vec<NodeList> {
    if shard.cluster.links().is_none() {
        return Vec::new();
    }
    let request = Request::Nodes {
        query: json_bytes(&query.to_json()),
        count: cap.count.min(u32::MAX as usize) as u32,
        bytes: cap.bytes.min(u32::MAX as usize) as u32,
    };
    // In the members' order (by address), whatever order they answered in.
    ask_all(shard, request)
        .await
        .into_iter()
        .filter_map(|answer| match answer {
            Ok(Response::Nodes { nodes, matched }) => Some(node_list(&nodes, matched)),
            _ => None,
        })
        .collect()
}

/// A node's answer as a shard's: each client with its size as JSON.
fn node_list(nodes: &[u8], matched: u64) -> NodeList {
    let nodes = match parse_json(nodes) {
        Ok(Value::Array(nodes)) => nodes,
        _ => Vec::new(),
    };
    NodeList {
        nodes: nodes
            .into_iter()
            .map(|node| {
                let size = json_bytes(&node).len();
                (node, size)
            })
            .collect(),
        matched,
    }
}

/// On shard 0: sends this node's clients per application to the other
/// nodes whenever it changes (checked every [`APPS_EVERY`]), to a node as
/// soon as its link is up, and to all every [`APPS_REFRESH`].
pub async fn share_apps(shard: Rc<Shard>) {
    let mut last: Option<Vec<(String, u64)>> = None;
    let mut told: Vec<PeerShard> = Vec::new();
    let mut refreshed = Instant::now();
    loop {
        glommio::timer::sleep(APPS_EVERY).await;
        let Some(endpoint) = shard.cluster.links() else {
            continue;
        };
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for reply in shard
            .scatter(|reply_to| ShardMsg::AppCounts { reply_to })
            .await
        {
            if let Reply::AppCounts(apps) = reply {
                for (app, n) in apps {
                    *counts.entry(app.to_string()).or_default() += n as u64;
                }
            }
        }
        let counts: Vec<(String, u64)> = counts.into_iter().collect();
        let peers = endpoint.peers();
        let changed = last.as_ref() != Some(&counts);
        let refresh = refreshed.elapsed() >= APPS_REFRESH;
        let to: Vec<&PeerShard> = peers
            .iter()
            .filter(|p| changed || refresh || !told.contains(p))
            .collect();
        if to.is_empty() {
            continue;
        }
        let frame = Frame::Apps {
            counts: counts.clone(),
        };
        for peer in to {
            let _ = endpoint.send_frame(peer, &frame);
        }
        if refresh || changed {
            refreshed = Instant::now();
        }
        last = Some(counts);
        told = peers;
    }
}

/// A client of this node connected or left: the other nodes' subscribers
/// hear of it over this shard's links (one-way; a node whose link is down
/// misses it, as a disconnected subscriber would).
pub fn announce(shard: &Shard, packet: &Dispatch) {
    let Some(endpoint) = shard.cluster.links() else {
        return;
    };
    let payload = &packet.d["payload"];
    let frame = Frame::ClientEvent {
        event: packet.t.to_string(),
        app: payload["app"].as_str().unwrap_or_default().to_string(),
        client: payload["client_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    for peer in targets(shard, None) {
        let _ = endpoint.send_frame(&peer, &frame);
    }
}

/// Another node's one-way frame: its table of clients per application,
/// a client event for this node's subscribers, a name given back, or its
/// counts of values homed here.
pub fn take_notice(shard: &Shard, peer: PeerShard, notice: Frame) {
    match notice {
        Frame::Apps { counts } => take_apps(shard, peer, counts),
        Frame::Release {
            app,
            client,
            shard: s,
            conn,
        } => crate::node::claims::take_release(shard, &peer, app, client, s, conn),
        Frame::Values { counts } => super::homes::take_frame(shard, &peer, counts),
        Frame::ClientEvent { event, app, client } => {
            let Some(t) = ["CLIENT_CONNECTED", "CLIENT_DISCONNECTED"]
                .into_iter()
                .find(|e| *e == event)
            else {
                return;
            };
            let packet = Arc::new(Dispatch {
                t,
                d: serde_json::json!({"nonce": null, "payload": {"app": app, "client_id": client}}),
            });
            for to in 0..shard.shards() {
                shard.on_shard(
                    to,
                    ShardMsg::ClientEvent {
                        packet: packet.clone(),
                    },
                );
            }
        }
        _ => {}
    }
}

/// Another node's table of clients per application, for every shard of
/// this node.
fn take_apps(shard: &Shard, peer: PeerShard, counts: Vec<(String, u64)>) {
    let apps = Arc::new(counts.into_iter().collect::<crate::cluster::NodeApps>());
    for to in 0..shard.shards() {
        let msg = ShardMsg::RemoteApps {
            node: (peer.addr, peer.boot),
            apps: apps.clone(),
        };
        if to == shard.id {
            shard
                .cluster
                .set_remote_apps((peer.addr, peer.boot), apps.clone());
        } else {
            shard.on_shard(to, msg);
        }
    }
}

/// The SENDs each link brings, in the order they arrived: a pipeline per
/// link, so that this node hands them over in that order (see
/// `routing::pipeline`) while it chooses their clients concurrently.
#[derive(Default)]
pub struct ArrivalOrder(RefCell<HashMap<PeerShard, Rc<Pipeline>>>);

impl ArrivalOrder {
    /// Pipelines kept before idle ones are dropped.
    const KEPT: usize = 64;

    /// The slot of a SEND that just arrived from `peer` (`None` for other
    /// requests). Taken at once, so in arrival order.
    pub fn slot(&self, peer: &PeerShard, request: &Request) -> Option<Slot> {
        if !matches!(request, Request::Send { .. }) {
            return None;
        }
        let mut pipelines = self.0.borrow_mut();
        if pipelines.len() > Self::KEPT {
            pipelines.retain(|_, p| !p.is_idle());
        }
        let pipeline = pipelines
            .entry(peer.clone())
            .or_insert_with(|| Pipeline::new(1));
        Some(pipeline.enter_now())
    }
}

/// Answers a request from another node, among this node's own clients
/// only (an answer never asks further nodes). `order`: a SEND's place in
/// its link's arrival order ([`ArrivalOrder`]).
pub fn answer(
    shard: Rc<Shard>,
    endpoint: Rc<Endpoint>,
    peer: PeerShard,
    id: u64,
    request: Request,
    order: Option<Slot>,
) {
    glommio::spawn_local(async move {
        let response = match request {
            Request::Broadcast {
                query,
                event,
                payload,
            } => match parse_dispatch(&query, &event, &payload) {
                Ok((query, packet)) => Response::Delivered(
                    router::local_broadcast_round(&shard, &query, &packet).await,
                ),
                Err(e) => Response::Refused(e),
            },
            Request::Pick { query, avg } => match parse_query(&query) {
                Ok(query) => {
                    let pick = router::node_pick(&shard, &Arc::new(query), avg).await;
                    Response::Pick {
                        count: pick.count,
                        keyed: pick.keyed.map(|(score, _)| score),
                        selected: pick.selected.map(|(value, _)| value),
                        sum: pick.sum,
                        numeric: pick.numeric,
                    }
                }
                Err(e) => Response::Refused(e),
            },
            Request::Send {
                query,
                avg,
                event,
                payload,
            } => match parse_dispatch(&query, &event, &payload) {
                Ok((query, packet)) => Response::Delivered(u64::from(
                    router::deliver_on_node(&shard, &query, avg, &packet, order.as_ref()).await,
                )),
                Err(e) => Response::Refused(e),
            },
            Request::QueueCounts { targets } => {
                crate::queue::cluster::answer_counts(&shard, &targets).await
            }
            request @ (Request::Claim { .. } | Request::Holds { .. }) => {
                crate::node::claims::answer(&shard, &peer, request).await
            }
            Request::Describe { query, avg } => match parse_query(&query) {
                Ok(query) => {
                    let found = router::describe_on_node(&shard, &Arc::new(query), avg).await;
                    let nodes: Vec<Value> = found.into_iter().collect();
                    Response::Nodes {
                        matched: nodes.len() as u64,
                        nodes: json_bytes(&Value::Array(nodes)),
                    }
                }
                Err(e) => Response::Refused(e),
            },
            Request::Nodes {
                query,
                count,
                bytes,
            } => match parse_query(&query) {
                Ok(query) => {
                    let cap = NodesCap {
                        count: (count as usize).min(shard.config.max_query_results),
                        bytes: (bytes as usize).min(shard.config.max_query_answer_bytes()),
                    };
                    let found = super::router::local_nodes(&shard, &Arc::new(query), cap).await;
                    Response::Nodes {
                        nodes: json_bytes(&Value::Array(found.nodes)),
                        matched: found.matched,
                    }
                }
                Err(e) => Response::Refused(e),
            },
            Request::Holders { keys, restricted } => {
                super::homes::answer(&shard, keys, restricted).await
            }
        };
        endpoint.respond(&peer, id, response);
    })
    .detach();
}

/// The query and dispatch of a SEND or BROADCAST another node asks for.
fn parse_dispatch(
    query: &[u8],
    event: &str,
    payload: &[u8],
) -> Result<(Arc<Query>, Arc<Dispatch>), String> {
    let query = parse_query(query)?;
    let t = event_name(event).ok_or_else(|| format!("unknown event {event:?}"))?;
    let d = parse_json(payload)?;
    Ok((Arc::new(query), Arc::new(Dispatch { t, d })))
}

pub(crate) fn parse_query(bytes: &[u8]) -> Result<Query, String> {
    Query::parse(&parse_json(bytes)?).map_err(|e| format!("bad query: {e}"))
}

/// The dispatch names a node may be asked to deliver.
fn event_name(event: &str) -> Option<&'static str> {
    ["SEND", "BROADCAST"].into_iter().find(|e| *e == event)
}
