//! The name registry: which connection holds each (application id, client
//! id), so that a name is connected at most once. The registry is
//! partitioned across shards by a hash of the name; a connection claims
//! its name from the owning shard before it joins, and gives it back when
//! it ends.
//!
//! In a cluster, each name also has a home node (see
//! `crate::cluster::claims`); the name's owner shard on its home keeps
//! which other node holds it, beside this node's own holders, so that one
//! shard decides every claim of the name, local or not, in turn.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use super::{ConnId, Reply, Shard, ShardMsg};
use crate::cluster::claims::{ClaimTable, Holder, Name as ClientName};

/// This shard's part of the registry.
#[derive(Default)]
pub(super) struct Names {
    held: RefCell<HashMap<ClientName, ConnId>>,
    /// Names homed on this node that other nodes hold.
    remote: RefCell<ClaimTable>,
}

/// What a name's owner shard on its home node says to a cluster claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    Granted,
    /// A client of the home node itself holds it.
    HeldHere,
    /// Another node holds it, as far as the home knows.
    HeldBy(Holder),
}

impl Shard {
    /// The shard that owns the registry entry of (app, client).
    pub fn name_owner(&self, app: &str, client: &str) -> usize {
        // A fixed-key hash: every shard must compute the same owner.
        let mut h = std::hash::DefaultHasher::new();
        (app, client).hash(&mut h);
        (h.finish() % self.shards() as u64) as usize
    }

    /// Claims (app, client) for `owner`; false if another connection has it.
    pub async fn claim_name(&self, app: &str, client: &str, owner: ConnId) -> bool {
        let to = self.name_owner(app, client);
        let reply = self
            .ask(to, |reply_to| ShardMsg::Claim {
                reply_to,
                app: app.into(),
                client: client.into(),
                owner,
            })
            .await;
        matches!(reply, Reply::Claimed(true))
    }

    pub fn release_name(&self, app: &str, client: &str, owner: ConnId) {
        self.on_shard(
            self.name_owner(app, client),
            ShardMsg::Release {
                app: app.into(),
                client: client.into(),
                owner,
            },
        );
    }

    /// On the owning shard ([`ShardMsg::Claim`]): records (app, client) as
    /// `owner`'s unless another connection holds it; whether it did.
    pub fn record_claim(&self, app: Box<str>, client: Box<str>, owner: ConnId) -> bool {
        let mut held = self.names.held.borrow_mut();
        let key = (app, client);
        let free = !held.contains_key(&key);
        if free {
            held.insert(key, owner);
        }
        free
    }

    /// On the owning shard ([`ShardMsg::Release`]): forgets (app, client)
    /// if `owner` still holds it (a newer connection may have it now).
    pub fn record_release(&self, app: Box<str>, client: Box<str>, owner: ConnId) {
        let mut held = self.names.held.borrow_mut();
        let key = (app, client);
        if held.get(&key) == Some(&owner) {
            held.remove(&key);
        }
    }

    /// On the name's owner shard of its home node
    /// ([`ShardMsg::ClusterClaim`]): `holder`'s claim of (app, client).
    /// A claim by this node (its clients are in `held` already) is checked
    /// against other nodes' and not recorded; another node's against this
    /// node's clients and the other nodes'. `stale`: an entry in the way
    /// that its node said it no longer holds (see `ClaimTable::claim`).
    pub fn record_cluster_claim(
        &self,
        app: Box<str>,
        client: Box<str>,
        holder: Holder,
        stale: Option<Holder>,
    ) -> ClaimOutcome {
        let view = self.cluster.view();
        let this = view.this.as_ref().map(|t| t.addr);
        let name = (app, client);
        let mut remote = self.names.remote.borrow_mut();
        if Some(holder.addr) == this {
            return match remote.holder(&name).copied() {
                Some(h) if Some(h) == stale => {
                    remote.release(&name, &h);
                    ClaimOutcome::Granted
                }
                Some(h) => ClaimOutcome::HeldBy(h),
                None => ClaimOutcome::Granted,
            };
        }
        if self.names.held.borrow().contains_key(&name) {
            return ClaimOutcome::HeldHere;
        }
        match remote.claim(name, holder, stale.as_ref()) {
            Ok(()) => ClaimOutcome::Granted,
            Err(h) => ClaimOutcome::HeldBy(h),
        }
    }

    /// On the name's owner shard of its home node
    /// ([`ShardMsg::ClusterRelease`]): another node's connection gave it back.
    pub fn record_cluster_release(&self, app: Box<str>, client: Box<str>, holder: Holder) {
        self.names
            .remote
            .borrow_mut()
            .release(&(app, client), &holder);
    }

    /// Whether a connection of this node holds (app, client), on the name's
    /// owner shard ([`ShardMsg::HoldsName`]).
    pub fn holds_name(&self, app: Box<str>, client: Box<str>) -> bool {
        self.names.held.borrow().contains_key(&(app, client))
    }

    /// The names this shard's part of the registry holds for this node's
    /// connections.
    pub fn held_names(&self) -> Vec<(ClientName, ConnId)> {
        let held = self.names.held.borrow();
        held.iter()
            .map(|(name, owner)| (name.clone(), *owner))
            .collect()
    }

    /// Keeps the other nodes' claims `keep` says.
    pub fn retain_cluster_claims(&self, keep: impl FnMut(&ClientName, &Holder) -> bool) {
        self.names.remote.borrow_mut().retain(keep);
    }

    /// Other nodes' claims this shard keeps, for `/metrics`.
    pub fn cluster_claims(&self) -> usize {
        self.names.remote.borrow().len()
    }
}
