//! A duplicate (application, client id) refused across the cluster.
//!
//! Each name has a home node, `ClusterView::home` of its
//! [`claims::key`]. At identify, once the name is claimed in this node's
//! own registry, it is claimed at its home: there the name's owner shard
//! decides, one claim at a time, against the home's own clients and the
//! other nodes' claims (`shard::names`). A refusal is the same error and
//! close as a local duplicate. When its connection ends, the name is given
//! back to its home (a one-way frame).
//!
//! Failures, chosen for availability:
//! - A home that does not answer within `--cluster-request-timeout` (down,
//!   unreachable, slow): the identify goes ahead, counted in
//!   `singyeong_cluster_claims_unconfirmed_total`, and the claim is made
//!   again in the background at the name's home under the latest view
//!   (every 0.5 s, 20 times at most, while the name is held); if that
//!   home refuses, the client is closed with the duplicate error.
//!   Refusing at once would lock out every client whose name is homed on
//!   a dying node, at the very moment the clients of that node reconnect
//!   elsewhere.
//! - A claim of another node found in the way is checked with that node
//!   before refusing: a node no longer live, or that says it does not hold
//!   the name, loses the entry (a release lost with its link must not keep
//!   a name forever). A node that does not answer keeps it.
//! - When the members change, homes drop the claims of nodes that left and
//!   of names no longer homed on them, and each node claims again, at the
//!   new home, the names whose home moved (until the home answers, as
//!   above: a node that just joined may not be linked yet). A name taken
//!   meanwhile on another node (a duplicate that slipped through the
//!   change) makes the new home refuse: that client is closed with the
//!   duplicate error.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::ClusterView;
use crate::cluster::claims::{self, Holder};
use crate::cluster::frame::{Frame, Request, Response};
use crate::cluster::link::PeerShard;
use crate::protocol::errors;
use crate::shard::{ClaimOutcome, ConnId, Reply, Shard, ShardMsg};

/// Claims made again at once after a change of members, per shard.
const RECLAIM_BATCH: usize = 64;
/// A claim no home answered (a link to a node that just joined is not up
/// yet, say) is made again this often, this many times, while the name is
/// still held here.
const RETRY: Duration = Duration::from_millis(500);
const RETRIES: usize = 20;

/// Where `key` is homed under `view`: its node's address and run (this
/// node's for itself; `None` outside a cluster).
fn home_of(view: &ClusterView, key: &[u8]) -> Option<(SocketAddr, u64)> {
    let this = view.this.as_ref()?;
    let home = view.home(key).unwrap_or(this);
    Some((home.addr, home.boot))
}

/// At identify, after this node's own registry gave the name to `owner`:
/// whether the cluster lets it have it (outside a cluster, always). A
/// claim the home did not answer is let through and made again in the
/// background (see [`claim_until_answered`]).
pub async fn claim(shard: &Rc<Shard>, app: &str, client: &str, owner: ConnId) -> bool {
    let view = shard.cluster.view();
    let Some(this) = &view.this else {
        return true;
    };
    let holder = Holder {
        addr: this.addr,
        boot: this.boot,
        shard: owner.shard as u32,
        conn: owner.conn,
    };
    match claim_at_home(shard, &view, app, client, holder).await {
        Some(true) => true,
        Some(false) => {
            shard.metrics.claim_refused();
            false
        }
        None => {
            shard.metrics.claim_unconfirmed();
            tracing::debug!(app, client, "cluster: the name's home did not answer");
            let (shard, app, client) = (shard.clone(), app.to_string(), client.to_string());
            glommio::spawn_local(async move {
                glommio::timer::sleep(RETRY).await;
                if holds(&shard, &app, &client).await {
                    claim_until_answered(&shard, &app, &client, holder, owner).await;
                }
            })
            .detach();
            true
        }
    }
}

/// Claims the name for `holder` at its home under the latest view until a
/// home answers ([`RETRIES`] times at most, while this node still holds
/// the name). A refusal closes this node's client with the duplicate
/// error: another node took the name while its home could not tell.
async fn claim_until_answered(
    shard: &Shard,
    app: &str,
    client: &str,
    holder: Holder,
    owner: ConnId,
) {
    for _ in 0..RETRIES {
        let view = shard.cluster.view();
        match claim_at_home(shard, &view, app, client, holder).await {
            Some(true) => return,
            Some(false) => {
                tracing::info!(
                    app,
                    client,
                    "cluster: another node holds this name; closing this node's client"
                );
                shard.metrics.duplicate_closed();
                shard.on_shard(
                    owner.shard,
                    ShardMsg::CloseConn {
                        conn: owner.conn,
                        error: errors::already_registered(client, app),
                    },
                );
                return;
            }
            None => {}
        }
        glommio::timer::sleep(RETRY).await;
        if !holds(shard, app, client).await {
            return;
        }
    }
    tracing::warn!(app, client, "cluster: no home answered this name's claim");
}

/// Whether a connection of this node holds the name.
async fn holds(shard: &Shard, app: &str, client: &str) -> bool {
    let reply = shard
        .ask(shard.name_owner(app, client), |reply_to| {
            ShardMsg::HoldsName {
                reply_to,
                app: app.into(),
                client: client.into(),
            }
        })
        .await;
    matches!(reply, Reply::Claimed(true))
}

/// `holder`'s claim at the name's home under `view`: granted or not, or
/// `None` when the home did not answer.
async fn claim_at_home(
    shard: &Shard,
    view: &ClusterView,
    app: &str,
    client: &str,
    holder: Holder,
) -> Option<bool> {
    let Some(home) = view.home(&claims::key(app, client)) else {
        return Some(decide(shard, app, client, holder).await);
    };
    let endpoint = shard.cluster.links()?;
    let request = Request::Claim {
        app: app.to_string(),
        client: client.to_string(),
        shard: holder.shard,
        conn: holder.conn,
    };
    let deadline = shard.config.cluster_request_timeout;
    match endpoint
        .request(&PeerShard::of(home, shard.id), request, deadline)
        .await
    {
        Ok(Response::Claimed(granted)) => Some(granted),
        _ => None,
    }
}

/// On the name's home: `holder`'s claim, decided by the name's owner shard.
/// Another node's claim in the way is checked with that node first.
async fn decide(shard: &Shard, app: &str, client: &str, holder: Holder) -> bool {
    let ask = |stale: Option<Holder>| {
        shard.ask(shard.name_owner(app, client), move |reply_to| {
            ShardMsg::ClusterClaim {
                reply_to,
                app: app.into(),
                client: client.into(),
                holder,
                stale,
            }
        })
    };
    match ask(None).await {
        Reply::ClusterClaim(ClaimOutcome::Granted) => true,
        Reply::ClusterClaim(ClaimOutcome::HeldBy(other)) => {
            if still_held(shard, app, client, &other).await {
                return false;
            }
            matches!(
                ask(Some(other)).await,
                Reply::ClusterClaim(ClaimOutcome::Granted)
            )
        }
        _ => false,
    }
}

/// Whether `other`'s node still holds the name: a node no longer live (or
/// a run of it that ended) holds nothing; one that does not answer is
/// taken to hold it.
async fn still_held(shard: &Shard, app: &str, client: &str, other: &Holder) -> bool {
    let view = shard.cluster.view();
    let Some(node) = view.live_member((other.addr, other.boot)) else {
        return false;
    };
    let Some(endpoint) = shard.cluster.links() else {
        return true;
    };
    let request = Request::Holds {
        app: app.to_string(),
        client: client.to_string(),
    };
    let deadline = shard.config.cluster_request_timeout;
    !matches!(
        endpoint
            .request(&PeerShard::of(&node.id, shard.id), request, deadline)
            .await,
        Ok(Response::Claimed(false))
    )
}

/// A connection of this node gave its name back: its home forgets this
/// node's claim (one-way; a frame lost with its link leaves an entry that
/// the next claim of the name checks with this node, see [`decide`]).
pub fn release(shard: &Shard, app: &str, client: &str, owner: ConnId) {
    let view = shard.cluster.view();
    // Homed here, this node's own claims are its registry's entries alone.
    let Some(home) = view.home(&claims::key(app, client)) else {
        return;
    };
    let Some(endpoint) = shard.cluster.links() else {
        return;
    };
    let frame = Frame::Release {
        app: app.to_string(),
        client: client.to_string(),
        shard: owner.shard as u32,
        conn: owner.conn,
    };
    let _ = endpoint.send_frame(&PeerShard::of(home, shard.id), &frame);
}

/// Another node's [`Frame::Release`], for the name's owner shard here.
pub fn take_release(
    shard: &Shard,
    peer: &PeerShard,
    app: String,
    client: String,
    s: u32,
    conn: u64,
) {
    let holder = Holder {
        addr: peer.addr,
        boot: peer.boot,
        shard: s,
        conn,
    };
    shard.on_shard(
        shard.name_owner(&app, &client),
        ShardMsg::ClusterRelease {
            app: app.into(),
            client: client.into(),
            holder,
        },
    );
}

/// Another node's [`Request::Claim`] or [`Request::Holds`].
pub async fn answer(shard: &Shard, peer: &PeerShard, request: Request) -> Response {
    match request {
        Request::Claim {
            app,
            client,
            shard: s,
            conn,
        } => {
            // Not homed here by this node's view: the claimant's view is
            // behind or ahead of ours. Granted without an entry; the
            // claimant claims again at the name's home once its view
            // moves the name there.
            if shard
                .cluster
                .view()
                .home(&claims::key(&app, &client))
                .is_some()
            {
                return Response::Claimed(true);
            }
            let holder = Holder {
                addr: peer.addr,
                boot: peer.boot,
                shard: s,
                conn,
            };
            Response::Claimed(decide(shard, &app, &client, holder).await)
        }
        Request::Holds { app, client } => Response::Claimed(holds(shard, &app, &client).await),
        _ => Response::Refused("not a claim".into()),
    }
}

/// A new view of the cluster ([`ShardMsg::ClusterView`]): this shard's
/// part of the homes drops the claims of nodes that left and of names
/// homed elsewhere now, and this node claims again, at their new home, the
/// names of this shard's part of its registry whose home moved.
pub fn view_changed(shard: &Rc<Shard>, view: Arc<ClusterView>) {
    let old = shard.cluster.view();
    shard.cluster.set_view(view.clone());
    shard.retain_cluster_claims(|(app, client), holder| {
        view.home(&claims::key(app, client)).is_none()
            && view.live_member((holder.addr, holder.boot)).is_some()
    });
    let Some(this) = view.this.clone() else {
        return;
    };
    // A new run of this node (it was declared down, and renewed itself):
    // the homes dropped every claim of the old one.
    let renewed = old.this.as_ref().map(|t| (t.addr, t.boot)) != Some((this.addr, this.boot));
    let moved: Vec<_> = shard
        .held_names()
        .into_iter()
        .filter(|((app, client), _)| {
            let key = claims::key(app, client);
            renewed || home_of(&old, &key) != home_of(&view, &key)
        })
        .collect();
    if moved.is_empty() {
        return;
    }
    let shard = shard.clone();
    glommio::spawn_local(async move {
        for batch in moved.chunks(RECLAIM_BATCH) {
            let tasks: Vec<_> = batch
                .iter()
                .cloned()
                .map(|((app, client), owner)| {
                    let shard = shard.clone();
                    let holder = Holder {
                        addr: this.addr,
                        boot: this.boot,
                        shard: owner.shard as u32,
                        conn: owner.conn,
                    };
                    glommio::spawn_local(async move {
                        claim_until_answered(&shard, &app, &client, holder, owner).await;
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
        }
    })
    .detach();
}
