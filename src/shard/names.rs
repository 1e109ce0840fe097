//! The name registry: which connection holds each (application id, client
//! id), so that a name is connected at most once. The registry is
//! partitioned across shards by a hash of the name; a connection claims
//! its name from the owning shard before it joins, and gives it back when
//! it ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use super::{ConnId, Reply, Shard, ShardMsg};

/// (application id, client id): unique among connected clients.
type ClientName = (Box<str>, Box<str>);

/// This shard's part of the registry.
#[derive(Default)]
pub(super) struct Names {
    held: RefCell<HashMap<ClientName, ConnId>>,
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
}
