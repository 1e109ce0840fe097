//! SEND, BROADCAST and QUERY_NODES across shards: the query runs where the
//! clients live, only summaries travel, and the owning shard delivers.
//! Only the shards the directory names are asked ([`locate`]); when one
//! shard can make a SEND's whole choice, the packet goes straight there.

use std::rc::Rc;
use std::sync::Arc;

use serde_json::Value;

use crate::protocol::errors;
use crate::query::Query;
use crate::routing::directory::Next;
use crate::routing::locate::{Lookup, locate};
use crate::routing::pick::{Pick, choose, global_average};
use crate::routing::pipeline::Slot;
use crate::shard::{ConnRef, Dispatch, NodeList, NodesCap, Picked, Reply, Shard, ShardMsg};

/// How many times one SEND (or proxy pick) may choose a client. A choice is
/// tried again only when its client turned out to be gone (it disconnected
/// between the pick and the delivery, or a shard the directory named had
/// lost its match), and a gone client is out of every later pick, so a
/// retry succeeds unless clients leave faster than a pick takes; the bound
/// keeps one SEND from chasing such churn for ever. The last choice asks
/// every shard, trusting no directory.
pub const MAX_PICKS: usize = 8;

/// A SEND (or a BROADCAST a selector narrows to one client) on its way. It
/// travels with the packet to the chosen client's shard, so that if that
/// client has gone by then, the shard can choose again among the rest and,
/// failing that, answer the sender `no_route` itself: the origin hands the
/// packet over and goes on, without waiting to hear that it arrived.
#[derive(Debug)]
pub struct OneSend {
    pub query: Arc<Query>,
    pub packet: Arc<Dispatch>,
    /// Whom to answer `no_route`, and with what; `None` for a droppable
    /// query (nobody is told).
    pub no_route: Option<NoRoute>,
    /// Choices left (see [`MAX_PICKS`]).
    picks_left: usize,
    /// A choice missed: the next one asks the directory afresh, trusting
    /// no remembered answer.
    ask_afresh: bool,
    /// In a cluster: every other node is asked, trusting no node's table
    /// of applications (set once a choice that trusted them found
    /// nothing, before `no_route` is answered).
    pub(crate) everywhere: bool,
}

impl OneSend {
    pub fn new(query: Arc<Query>, packet: Arc<Dispatch>, no_route: Option<NoRoute>) -> OneSend {
        OneSend {
            query,
            packet,
            no_route,
            picks_left: MAX_PICKS,
            ask_afresh: false,
            everywhere: false,
        }
    }
}

/// The sender of a SEND and what it sent, for its `no_route` answer: the
/// packet as received (contract §6).
#[derive(Debug)]
pub struct NoRoute {
    pub sender: ConnRef,
    /// `SEND` or `BROADCAST`.
    pub kind: &'static str,
    /// The target as sent.
    pub target: Value,
    pub had_nonce: bool,
    pub had_payload: bool,
}

impl NoRoute {
    /// The `extra_info` of the answer: the packet put back together.
    fn extra_info(self, packet: &Dispatch) -> Value {
        let mut d = serde_json::Map::new();
        d.insert("target".into(), self.target);
        for (key, present) in [("nonce", self.had_nonce), ("payload", self.had_payload)] {
            if present {
                d.insert(key.into(), packet.d[key].clone());
            }
        }
        serde_json::json!({"op": crate::protocol::op::DISPATCH, "t": self.kind, "d": d})
    }
}

/// SEND: hands `job.packet` to one matching client (or to its shard, which
/// delivers it). Returns false when no client matches; the sender has then
/// been answered `no_route` unless the query is droppable. A chosen client
/// found gone is counted as a re-pick and the choice is made again among the
/// clients that remain, here or (see [`OneSend`]) on its shard.
///
/// With a `slot`, the packet is handed over only on the slot's turn, so that
/// the SENDs of one connection, picked concurrently, are handed over in the
/// order they were read (see [`super::pipeline`]).
pub async fn send(shard: &Shard, mut job: Box<OneSend>, slot: Option<&Slot>) -> bool {
    if super::remote::spans_nodes(shard, &job.query, job.everywhere) {
        return super::remote::send(shard, job, slot).await;
    }
    while job.picks_left > 0 {
        job.picks_left -= 1;
        let lookup = match (job.picks_left, job.ask_afresh) {
            (0, _) => Lookup::Everywhere,
            (_, true) => Lookup::Exact,
            (_, false) => Lookup::MayRemember,
        };
        let chosen = pick_once(shard, job.query.clone(), false, lookup).await;
        if matches!(chosen, Chosen::NoMatch) {
            break;
        }
        // Another turn of this loop follows a miss.
        job.ask_afresh = true;
        if matches!(chosen, Chosen::Lost) {
            shard.metrics.repick();
            continue;
        }
        if let Some(slot) = slot {
            slot.turn().await;
        }
        let delivered = match chosen {
            Chosen::Found(target, _) if target.shard != shard.id => {
                shard.on_shard(target.shard, ShardMsg::SendOne { target, job });
                return true;
            }
            Chosen::Found(target, _) => shard.deliver(target, &job.packet),
            Chosen::Shard(to, query, retry) if to != shard.id => {
                shard.on_shard(to, ShardMsg::PickSend { query, job, retry });
                return true;
            }
            // A lone holder the directory knows only by its application
            // has no match: no other shard can have one either.
            Chosen::Shard(_, query, retry) => match deliver_here(shard, &query, &job.packet) {
                false if !retry => break,
                delivered => delivered,
            },
            Chosen::NoMatch | Chosen::Lost => unreachable!("handled above"),
        };
        if delivered {
            return true;
        }
        shard.metrics.repick();
    }
    if super::remote::may_be_elsewhere(shard, &job) {
        job.everywhere = true;
        return Box::pin(super::remote::send(shard, job, slot)).await;
    }
    answer_no_route(shard, job.no_route, &job.packet);
    false
}

/// On the chosen client's shard: delivers a SEND, or if the client has gone,
/// chooses again.
pub fn deliver_one(shard: &Rc<Shard>, target: ConnRef, job: Box<OneSend>) {
    if !shard.deliver(target, &job.packet) {
        choose_again(shard, job);
    }
}

/// On the shard the directory chose: delivers a SEND to one of its own
/// matches of `query`. If it has none: with `retry` (the directory counted
/// matches here, or the choice came from a remembered answer) the
/// directory was behind, so the SEND is chosen again, asking afresh;
/// without (this shard was the lone holder of the application), nothing
/// matches anywhere.
pub fn pick_send(shard: &Rc<Shard>, query: Arc<Query>, job: Box<OneSend>, retry: bool) {
    if deliver_here(shard, &query, &job.packet) {
        return;
    }
    if retry || super::remote::may_be_elsewhere(shard, &job) {
        choose_again(shard, job);
    } else {
        answer_no_route(shard, job.no_route, &job.packet);
        shard.metrics.unrouted();
    }
}

/// A SEND that missed on this shard is chosen again from here, in a task
/// of this shard (the origin has moved on).
fn choose_again(shard: &Rc<Shard>, mut job: Box<OneSend>) {
    shard.metrics.repick();
    job.ask_afresh = true;
    let shard = shard.clone();
    glommio::spawn_local(async move {
        if !send(&shard, job, None).await {
            shard.metrics.unrouted();
        }
    })
    .detach();
}

/// Chooses among this shard's own matches of `query`, as [`choose`] would
/// over every shard when no other shard has a match, and delivers.
fn deliver_here(shard: &Shard, query: &Query, packet: &Dispatch) -> bool {
    let (mut pick, mut named) = shard.pick_local(query, None, false);
    if query
        .selector
        .as_ref()
        .is_some_and(|s| s.kind == crate::query::SelectorKind::Avg)
    {
        let Some(avg) = global_average([&pick]) else {
            return false;
        };
        (pick, named) = shard.pick_local(query, Some(avg), false);
    }
    let Some((_, client)) = choose(query, &[pick], &mut shard.rng.borrow_mut()) else {
        return false;
    };
    let Some(conn) = named.iter().find(|p| p.idx == client).map(|p| p.conn) else {
        return false;
    };
    let target = ConnRef {
        shard: shard.id,
        client,
        conn,
    };
    shard.deliver(target, packet)
}

/// Answers the sender of `packet` that nothing matched (if it asked to be).
pub(crate) fn answer_no_route(shard: &Shard, no_route: Option<NoRoute>, packet: &Dispatch) {
    let Some(no_route) = no_route else { return };
    let to = no_route.sender;
    let extra = no_route.extra_info(packet);
    if to.shard == shard.id {
        shard.invalid_to(to, errors::NO_ROUTE, extra);
    } else {
        shard.on_shard(
            to.shard,
            ShardMsg::Invalid {
                to,
                error: errors::NO_ROUTE,
                extra,
            },
        );
    }
}

/// BROADCAST: every matching client receives `packet`; returns how many
/// (none: the sender has been answered `no_route`, unless `no_route` is
/// `None`). A selector narrows the matches to one client, as for SEND.
/// `slot` as for [`send`].
pub async fn broadcast(
    shard: &Shard,
    query: Arc<Query>,
    packet: Arc<Dispatch>,
    no_route: Option<NoRoute>,
    slot: Option<&Slot>,
) -> u64 {
    if query.selector.is_some() {
        let job = Box::new(OneSend::new(query, packet, no_route));
        return u64::from(send(shard, job, slot).await);
    }
    // A broadcast hands over as it asks: it keeps the turn until every
    // shard has delivered, so nothing the connection sent later overtakes
    // it (nor its `optional` second round).
    if let Some(slot) = slot {
        slot.turn().await;
    }
    let mut count = broadcast_round(shard, &query, &packet).await;
    if count == 0 && query.optional {
        count = broadcast_round(shard, &Arc::new(relaxed(&query)), &packet).await;
    }
    if count == 0 {
        answer_no_route(shard, no_route, &packet);
    }
    count
}

/// One round of a BROADCAST: this node's shards and the other nodes at
/// once.
async fn broadcast_round(shard: &Shard, query: &Arc<Query>, packet: &Arc<Dispatch>) -> u64 {
    let (here, elsewhere) = futures_lite::future::zip(
        local_broadcast_round(shard, query, packet),
        super::remote::broadcast(shard, query, packet),
    )
    .await;
    here + elsewhere
}

/// One round of a BROADCAST among this node's clients.
pub(crate) async fn local_broadcast_round(
    shard: &Shard,
    query: &Arc<Query>,
    packet: &Arc<Dispatch>,
) -> u64 {
    let place = locate(shard, query, Lookup::Exact).await;
    shard
        .ask_some(&place.shards, |reply_to| ShardMsg::Broadcast {
            reply_to,
            query: query.clone(),
            packet: packet.clone(),
        })
        .await
        .into_iter()
        .map(|r| match r {
            Reply::Delivered(n) => n,
            _ => 0,
        })
        .sum()
}

/// A QUERY_NODES / HTTP query answer: the clients described, and how many
/// matched in all.
#[derive(Debug, Default)]
pub struct Nodes {
    pub nodes: Vec<Value>,
    pub matched: u64,
}

impl Nodes {
    /// Fewer clients described than matched: the cap cut the answer.
    pub fn truncated(&self) -> bool {
        (self.nodes.len() as u64) < self.matched
    }
}

/// QUERY_NODES and the HTTP query API: the matching clients' descriptions,
/// at most what `--max-query-results` and the answer's byte budget allow
/// (with a selector: the one client it selects). Each shard stops
/// describing at the cap and only counts the rest, so a query matching a
/// million clients builds a bounded answer. A cut answer is counted.
pub async fn nodes(shard: &Shard, query: Arc<Query>) -> Nodes {
    let found = nodes_uncounted(shard, query, NodesCap::new(&shard.config)).await;
    if found.truncated() {
        shard
            .metrics
            .limit_refused(crate::metrics::Limit::QueryResults);
    }
    found
}

async fn nodes_uncounted(shard: &Shard, query: Arc<Query>, cap: NodesCap) -> Nodes {
    if query.selector.is_some() {
        let strict = Arc::new(Query {
            optional: false,
            ..(*query).clone()
        });
        let Some(node) = pick_described(shard, strict).await else {
            // `optional` drops the selector with the ops: every client of
            // the application.
            return match query.optional {
                true => nodes_round(shard, &Arc::new(relaxed(&query)), cap).await,
                false => Nodes::default(),
            };
        };
        let nodes = vec![node];
        let matched = nodes.len() as u64;
        return Nodes { nodes, matched };
    }
    let mut found = nodes_round(shard, &query, cap).await;
    if found.matched == 0 && query.optional {
        found = nodes_round(shard, &Arc::new(relaxed(&query)), cap).await;
    }
    found
}

/// Asks every shard of this node that can hold a match, and the other
/// nodes, for their parts, and keeps what fits the cap as a whole: this
/// node's clients first, in shard order, then the other nodes'.
async fn nodes_round(shard: &Shard, query: &Arc<Query>, cap: NodesCap) -> Nodes {
    let (mut lists, elsewhere) = futures_lite::future::zip(
        local_node_lists(shard, query, cap),
        super::remote::nodes(shard, query, cap),
    )
    .await;
    lists.extend(elsewhere);
    merge_node_lists(lists, cap)
}

/// QUERY_NODES among this node's clients only (what another node asks).
pub(crate) async fn local_nodes(shard: &Shard, query: &Arc<Query>, cap: NodesCap) -> Nodes {
    merge_node_lists(local_node_lists(shard, query, cap).await, cap)
}

async fn local_node_lists(shard: &Shard, query: &Arc<Query>, cap: NodesCap) -> Vec<NodeList> {
    let place = locate(shard, query, Lookup::Exact).await;
    shard
        .ask_some(&place.shards, |reply_to| ShardMsg::Nodes {
            reply_to,
            query: query.clone(),
            cap,
        })
        .await
        .into_iter()
        .filter_map(|reply| match reply {
            Reply::Nodes(list) => Some(list),
            _ => None,
        })
        .collect()
}

fn merge_node_lists(lists: Vec<NodeList>, cap: NodesCap) -> Nodes {
    let mut out = Nodes::default();
    let mut bytes = 0;
    let mut full = false;
    for list in lists {
        out.matched += list.matched;
        for (node, size) in list.nodes {
            full = full || out.nodes.len() >= cap.count || bytes + size > cap.bytes;
            if full {
                break;
            }
            bytes += size;
            out.nodes.push(node);
        }
    }
    out
}

/// Chooses the one client a SEND would go to, over every shard, with its
/// `<client>` object when `describe` asks for it (the proxy, a selector in
/// QUERY_NODES). A choice whose client has gone is made again.
pub async fn pick_described(shard: &Shard, query: Arc<Query>) -> Option<Value> {
    if super::remote::spans_nodes(shard, &query, true) {
        return super::remote::describe(shard, query).await;
    }
    for attempt in 0..MAX_PICKS {
        if attempt > 0 {
            shard.metrics.repick();
        }
        let lookup = match attempt + 1 == MAX_PICKS {
            true => Lookup::Everywhere,
            false => Lookup::Exact,
        };
        match pick_once(shard, query.clone(), true, lookup).await {
            Chosen::Found(_, node) => return node,
            Chosen::NoMatch => return None,
            Chosen::Lost | Chosen::Shard(..) => continue,
        }
    }
    None
}

/// The outcome of one choice over every shard.
enum Chosen {
    Found(ConnRef, Option<Value>),
    /// This shard alone can choose, with this query (the one asked, or its
    /// `optional` fallback): it holds every match, or was drawn in
    /// proportion to its share of them. Never when describing. `true` when
    /// a miss there means the directory was behind (see [`pick_send`]).
    Shard(usize, Arc<Query>, bool),
    /// No client matches.
    NoMatch,
    /// A client was chosen but its shard no longer names it (it left
    /// between the shard's answer and the choice): choose again.
    Lost,
}

/// One choice: asks the directory where matches can be (`lookup`), then
/// either names the one shard that can choose alone, or asks those shards
/// for their picks and combines them.
async fn pick_once(shard: &Shard, query: Arc<Query>, describe: bool, lookup: Lookup) -> Chosen {
    let mut query = query;
    let mut lookup = lookup;
    loop {
        // A remembered answer may miss a new match: only a uniform choice
        // may rest on it, never one that must see every match (a `key`,
        // a selector, `optional`, a description).
        if lookup == Lookup::MayRemember
            && (describe || query.optional || query.key.is_some() || query.selector.is_some())
        {
            lookup = Lookup::Exact;
        }
        let place = locate(shard, &query, lookup).await;
        // An `optional` query needs to know that nothing matches before it
        // relaxes: it asks.
        let alone = !describe && !query.optional;
        match place.next(alone, &mut shard.rng.borrow_mut()) {
            Next::Alone { shard: to, retry } => return Chosen::Shard(to, query, retry),
            Next::LocateAgain => {
                lookup = Lookup::Exact;
                continue;
            }
            Next::Ask => {}
        }
        if !place.is_empty() {
            let picks = pick_round(shard, &query, None, describe, &place.shards).await;
            if total(&picks) > 0 {
                return combine(shard, &query, picks, describe, &place.shards).await;
            }
        }
        if !query.optional {
            return Chosen::NoMatch;
        }
        query = Arc::new(relaxed(&query));
    }
}

/// Combines the picks of `shards` (a second round for `$avg`).
async fn combine(
    shard: &Shard,
    query: &Arc<Query>,
    mut picks: Vec<ShardPick>,
    describe: bool,
    shards: &[usize],
) -> Chosen {
    if query
        .selector
        .as_ref()
        .is_some_and(|s| s.kind == crate::query::SelectorKind::Avg)
    {
        let Some(avg) = global_average(picks.iter().map(|(p, _)| p)) else {
            return Chosen::NoMatch;
        };
        picks = pick_round(shard, query, Some(avg), describe, shards).await;
    }
    let only_picks: Vec<Pick> = picks.iter().map(|(p, _)| p.clone()).collect();
    let Some((nth, client)) = choose(query, &only_picks, &mut shard.rng.borrow_mut()) else {
        return Chosen::NoMatch;
    };
    let picked = picks
        .into_iter()
        .nth(nth)
        .and_then(|(_, named)| named.into_iter().find(|p| p.idx == client));
    match picked {
        Some(picked) => Chosen::Found(
            ConnRef {
                shard: shards[nth],
                client,
                conn: picked.conn,
            },
            picked.node,
        ),
        None => Chosen::Lost,
    }
}

type ShardPick = (Pick, Vec<Picked>);

/// This node's matches of `query`, summed up as one pick: what the nodes
/// of a cluster compare to choose one of them for a SEND. `avg`: the
/// cluster's average, in a `$avg` selector's second round.
pub(crate) async fn node_pick(shard: &Shard, query: &Arc<Query>, avg: Option<f64>) -> Pick {
    let place = locate(shard, query, Lookup::Exact).await;
    if place.is_empty() {
        return Pick::default();
    }
    let picks: Vec<Pick> = pick_round(shard, query, avg, false, &place.shards)
        .await
        .into_iter()
        .map(|(pick, _)| pick)
        .collect();
    crate::routing::pick::summarize(query, &picks)
}

/// One of this node's matches, chosen by the rule [`node_pick`] summed
/// them up by (uniformly, by `key`, by the selector with the cluster's
/// `avg`), with its `<client>` object when `describe`: what the node of a
/// cluster chosen for a SEND (or a description) does. `None`: no match
/// left here.
async fn choose_on_node(
    shard: &Shard,
    query: &Arc<Query>,
    avg: Option<f64>,
    describe: bool,
) -> Option<Chosen> {
    let place = locate(shard, query, Lookup::Exact).await;
    if place.is_empty() {
        return None;
    }
    let picks = pick_round(shard, query, avg, describe, &place.shards).await;
    let only_picks: Vec<Pick> = picks.iter().map(|(p, _)| p.clone()).collect();
    let (nth, client) = choose(query, &only_picks, &mut shard.rng.borrow_mut())?;
    let picked = picks
        .into_iter()
        .nth(nth)
        .and_then(|(_, named)| named.into_iter().find(|p| p.idx == client));
    Some(match picked {
        Some(picked) => Chosen::Found(
            ConnRef {
                shard: place.shards[nth],
                client,
                conn: picked.conn,
            },
            picked.node,
        ),
        None => Chosen::Lost,
    })
}

/// Delivers `packet` to one of this node's matches ([`choose_on_node`])
/// and says whether it did. A chosen client gone meanwhile is chosen again
/// among the rest of this node's.
///
/// With a `slot`, the packet is handed over on its turn, and the turn
/// passed on once it is (see [`super::pipeline`]).
pub(crate) async fn deliver_on_node(
    shard: &Shard,
    query: &Arc<Query>,
    avg: Option<f64>,
    packet: &Arc<Dispatch>,
    slot: Option<&Slot>,
) -> bool {
    for _ in 0..MAX_PICKS {
        let chosen = choose_on_node(shard, query, avg, false).await;
        if let (Some(slot), Some(Chosen::Found(..))) = (slot, &chosen) {
            slot.turn().await;
        }
        let delivered = match chosen {
            None => return false,
            Some(Chosen::Found(target, _)) if target.shard == shard.id => {
                let delivered = shard.deliver(target, packet);
                slot.inspect(|s| s.pass_turn());
                delivered
            }
            Some(Chosen::Found(target, _)) => {
                let mut ask = std::pin::pin!(shard.ask(target.shard, |reply_to| {
                    ShardMsg::DeliverAsk {
                        reply_to,
                        target,
                        packet: packet.clone(),
                    }
                }));
                // The first poll puts the packet on the mesh, in order.
                let first = futures_lite::future::poll_once(ask.as_mut()).await;
                slot.inspect(|s| s.pass_turn());
                let reply = match first {
                    Some(reply) => reply,
                    None => ask.await,
                };
                matches!(reply, Reply::Delivered(1))
            }
            Some(_) => false,
        };
        if delivered {
            return true;
        }
        shard.metrics.repick();
    }
    false
}

/// The `<client>` object of one of this node's matches
/// ([`choose_on_node`]).
pub(crate) async fn describe_on_node(
    shard: &Shard,
    query: &Arc<Query>,
    avg: Option<f64>,
) -> Option<Value> {
    for _ in 0..MAX_PICKS {
        match choose_on_node(shard, query, avg, true).await? {
            Chosen::Found(_, node) => return node,
            _ => shard.metrics.repick(),
        }
    }
    None
}

/// The picks of `shards`, in their order.
async fn pick_round(
    shard: &Shard,
    query: &Arc<Query>,
    avg: Option<f64>,
    describe: bool,
    shards: &[usize],
) -> Vec<ShardPick> {
    shard
        .ask_some(shards, |reply_to| ShardMsg::Pick {
            reply_to,
            query: query.clone(),
            avg,
            describe,
        })
        .await
        .into_iter()
        .map(|r| match r {
            Reply::Pick(pick, named) => (pick, named),
            _ => (Pick::default(), Vec::new()),
        })
        .collect()
}

fn total(picks: &[ShardPick]) -> u64 {
    picks.iter().map(|(p, _)| p.count).sum()
}

/// The fallback of an `optional` query: same application and restricted
/// rule, no ops, no selector.
pub(crate) fn relaxed(query: &Query) -> Query {
    Query {
        ops: Vec::new(),
        selector: None,
        optional: false,
        ..query.clone()
    }
}
