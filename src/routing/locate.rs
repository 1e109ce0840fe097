//! This shard's end of the routing directory ([`super::directory`]): asking
//! where a query's matches can be, and telling the other shards what this
//! shard's clients are.
//!
//! Directory messages travel on a lane of their own, beside the shard mesh,
//! so that a shard can take in everything already sent to it before it
//! reads its copy ([`catch_up`]) without handling any other message out of
//! turn. That is what makes the directory exact where it must be: a shard
//! publishes a change before anything about it (READY, a heartbeat ack)
//! goes out, so anything a client does after hearing of it reaches a
//! directory that has it.
//!
//! A SEND to a unique id costs three messages when the value's home is
//! another shard and the answer is not remembered: the question, its
//! answer, and the packet to the holder. The home could forward the packet
//! itself (two), but the origin must hand a connection's packets over in
//! the order they were read (see [`super::pipeline`]), and a home that must
//! gather picks from several holders before forwarding would let a later
//! packet overtake an earlier one. So the origin asks first, then hands
//! over on its turn. It remembers the answer until the home says it
//! changed ([`DirMsg::Forget`]), so later SENDs to the same id cost the
//! packet alone: one message, and no wait for another shard.
//!
//! A remembered answer can lag behind a change: the home tells its
//! askers to forget only once it has taken the change in. That is safe for
//! a SEND and nothing else: a SEND sent to a shard that no longer has the
//! match is chosen again there, asking the homes afresh, so it is never
//! lost nor answered `no_route` wrongly. BROADCAST, QUERY_NODES and the
//! SENDs that must see every match at once (a `key`, a selector,
//! `optional`) always ask.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::metadata::{ValueKey, probe_value_keys};
use crate::query::Query;
use crate::routing::directory::{DirMsg, Directory, Located, Place, home_of};
use crate::shard::{Mesh, Reply, Shard, ShardMsg};

/// How long a count change that crosses no zero may wait before it is
/// published: many connects and disconnects then cost one message per
/// shard. Such counts only weigh the draw among shards that all hold the
/// application, so a few milliseconds late is harmless.
const APP_BATCH: Duration = Duration::from_millis(5);

/// Directory messages one turn of the lane's task takes in.
const LANE_BATCH: usize = 256;

/// A shard's directory state, present when there is more than one shard.
pub struct DirectoryLink {
    table: RefCell<Directory>,
    lane: Mesh<DirMsg>,
    /// Application counts wait for the batch ([`flush_loop`]).
    due: Cell<bool>,
    flusher: Cell<Option<Waker>>,
}

impl DirectoryLink {
    pub fn new(me: usize, lane: Mesh<DirMsg>) -> DirectoryLink {
        DirectoryLink {
            table: RefCell::new(Directory::new(me, lane.shards())),
            lane,
            due: Cell::new(false),
            flusher: Cell::new(None),
        }
    }

    /// In a cluster: note the node-wide counts of the buckets homed here,
    /// for [`DirectoryLink::take_node_totals`].
    pub fn track_node_totals(&self) {
        self.table.borrow_mut().track_node_totals();
    }

    /// The node-wide count of each bucket homed here that changed since
    /// the last call (see `routing::homes`).
    pub fn take_node_totals(&self) -> Vec<(ValueKey, crate::metadata::Count)> {
        self.table.borrow_mut().take_node_totals()
    }

    /// Entries held: applications replicated, value buckets homed here,
    /// other homes' answers remembered.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let table = self.table.borrow();
        let (apps, values) = table.sizes();
        (apps, values, table.remembered())
    }
}

/// Takes in every directory message already sent to this shard (and
/// sends the forgets the changes among them owe).
pub fn catch_up(shard: &Shard) {
    let Some(link) = &shard.directory else { return };
    let forgets = {
        let mut table = link.table.borrow_mut();
        link.lane.drain(shard.id, |msg| table.apply(msg));
        table.take_forgets()
    };
    send(shard, link, forgets);
}

/// Publishes what the last store mutations changed. Called after every
/// mutation of the store, before anything about it is sent to a client.
pub fn publish(shard: &Shard) {
    let Some(link) = &shard.directory else {
        // One shard: it is the node, and in a cluster the value homes
        // hear of its changes.
        super::homes::note_store(shard);
        return;
    };
    let touched = shard.store.borrow_mut().take_touched();
    if touched.is_empty() {
        return;
    }
    let out = {
        let store = shard.store.borrow();
        link.table.borrow_mut().record(
            touched,
            |app| store.app_count(app),
            |key| store.value_count(key),
        )
    };
    send(shard, link, out);
    if link.table.borrow().has_unpublished()
        && !link.due.replace(true)
        && let Some(waker) = link.flusher.take()
    {
        waker.wake();
    }
}

/// Queues directory messages; the receivers are woken with the shard's
/// other messages ([`Shard::wake_loop`]). Nothing waits for them to be
/// taken in: readers catch up first ([`catch_up`]).
fn send(shard: &Shard, link: &DirectoryLink, out: Vec<(usize, DirMsg)>) {
    for (to, msg) in out {
        shard.metrics.cross_shard(ShardMsg::directory_kind(&msg));
        link.lane.push(to, msg);
        shard.defer_wake(to);
    }
}

/// Wakes shard `to`'s directory lane task (called by [`Shard::wake_loop`]).
pub fn wake(shard: &Shard, to: usize) {
    if let Some(link) = &shard.directory {
        link.lane.wake(to);
    }
}

/// How [`locate`] may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Every shard: a last try that trusts nothing but the shards
    /// themselves.
    Everywhere,
    /// What the directory says now: the homes are asked.
    Exact,
    /// Remembered answers may stand in for asking a home (see the module
    /// doc): only for a SEND that chooses again on a miss.
    MayRemember,
}

/// Where a match for `query` can be. Without an application, on one shard,
/// or [`Lookup::Everywhere`]: every shard. With an indexed equality or
/// membership op: the shards the value's home names. Otherwise: the shards
/// holding clients of the application.
pub async fn locate(shard: &Shard, query: &Query, lookup: Lookup) -> Place {
    let (Some(link), Some(app)) = (&shard.directory, &query.application) else {
        return Place::everywhere(shard.shards());
    };
    if lookup == Lookup::Everywhere {
        return Place::everywhere(shard.shards());
    }
    catch_up(shard);
    // Counts are numbers of matches when the narrowing step is the whole
    // query and the rule is a uniform draw.
    let uniform = query.key.is_none() && query.selector.is_none();
    if let Some(plan) = query.index_plan() {
        let keys = probe_value_keys(&Arc::from(app.as_str()), &plan.probe);
        if !keys.is_empty() {
            let mut by_home: BTreeMap<usize, Vec<ValueKey>> = BTreeMap::new();
            for key in keys {
                by_home
                    .entry(home_of(&key, shard.shards()))
                    .or_default()
                    .push(key);
            }
            let may_remember = lookup == Lookup::MayRemember;
            let mut holders = Vec::new();
            let mut remembered = false;
            for (home, keys) in by_home {
                if home != shard.id
                    && may_remember
                    && let Some(known) = link
                        .table
                        .borrow()
                        .remembered_holders(&keys, query.restricted)
                {
                    holders.extend(known);
                    remembered = true;
                    continue;
                }
                holders.extend(holders_at(shard, link, home, keys, query.restricted).await);
            }
            let mut place = Place::from_counts(holders, uniform && plan.exact);
            place.remembered = remembered;
            return place;
        }
    }
    let own = shard.store.borrow().app_count(app);
    let holders = link.table.borrow().app_holders(app, query.restricted, own);
    Place::from_counts(holders, uniform && query.ops.is_empty())
}

/// The holders of `keys` according to their home `home`, remembered when
/// it is another shard.
async fn holders_at(
    shard: &Shard,
    link: &DirectoryLink,
    home: usize,
    keys: Vec<ValueKey>,
    restricted: bool,
) -> Vec<(usize, u64)> {
    if home == shard.id {
        return link.table.borrow().value_holders(&keys, restricted);
    }
    let reply = shard
        .ask(home, |reply_to| ShardMsg::Locate {
            reply_to,
            keys: keys.clone(),
        })
        .await;
    let Reply::Located(answer) = reply else {
        return Vec::new();
    };
    let holders = answer.reachable(restricted);
    // Forgets the home sent before this answer reached us are taken in
    // first, so one about these buckets stops the answer being kept.
    catch_up(shard);
    link.table.borrow_mut().remember(home, keys, answer);
    holders
}

/// On a value's home: who holds clients in these buckets, for shard
/// `asker` (told to forget them when they change).
pub fn answer_locate(shard: &Shard, keys: &[ValueKey], asker: usize) -> Located {
    catch_up(shard);
    match &shard.directory {
        Some(link) => link.table.borrow_mut().answer(keys, asker),
        None => Located::default(),
    }
}

/// Takes in directory messages as they arrive (between [`catch_up`]s).
pub async fn receive_loop(shard: Rc<Shard>) {
    let Some(link) = &shard.directory else { return };
    let mut batch = Vec::with_capacity(LANE_BATCH);
    loop {
        link.lane.recv_batch(shard.id, &mut batch, LANE_BATCH).await;
        let forgets = {
            let mut table = link.table.borrow_mut();
            for msg in batch.drain(..) {
                table.apply(msg);
            }
            table.take_forgets()
        };
        send(&shard, link, forgets);
        glommio::yield_if_needed().await;
    }
}

/// Publishes batched application counts, `APP_BATCH` after the first
/// change that waits.
pub async fn flush_loop(shard: Rc<Shard>) {
    let Some(link) = &shard.directory else { return };
    loop {
        poll_fn(|cx| {
            if link.due.get() {
                Poll::Ready(())
            } else {
                link.flusher.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        glommio::timer::sleep(APP_BATCH).await;
        link.due.set(false);
        let out = {
            let store = shard.store.borrow();
            link.table
                .borrow_mut()
                .flush_apps(|app| store.app_count(app))
        };
        send(&shard, link, out);
    }
}
