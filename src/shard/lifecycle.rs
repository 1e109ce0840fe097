//! How connections end without asking to: the heartbeat reaper closes the
//! silent and the stuck, shutdown says goodbye to everyone, and a crowded
//! cluster node sends some clients away.

use std::sync::Arc;

use serde_json::Value;

use super::{ConnId, Shard};
use crate::protocol;

impl Shard {
    /// Closes every connection whose last heartbeat is older than the
    /// timeout (contract §8). Runs on the shard's reaper timer.
    pub fn reap(&self, now: std::time::Instant) {
        let timeout = self.config.heartbeat_timeout();
        for conn in self.registry.conns.borrow().values() {
            if conn.abort_if_stuck(now) {
                continue;
            }
            if !conn.is_closing() && now.duration_since(conn.last_heartbeat()) > timeout {
                conn.fail(protocol::errors::HEARTBEAT_TOO_LONG, Value::Null);
            }
        }
    }

    /// Says goodbye to every connection ([`super::ShardMsg::Shutdown`]);
    /// the shard's loop stops once it sees [`Shard::is_shutting_down`].
    pub fn shutdown(&self) {
        self.shutting_down.set(true);
        for conn in self.registry.conns.borrow().values() {
            conn.goodbye(protocol::errors::SHUTDOWN);
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Sends goodbye (`reason`) to `count` of this shard's identified
    /// clients that are not closing already, chosen at random (so that a
    /// client a load balancer keeps bringing back here is not always the
    /// one sent away), and takes them out of routing at once: what this
    /// node counts and tells the others drops now, not when they close.
    /// Returns who they were and their connections, for the name
    /// registries.
    pub fn send_away(&self, count: usize, reason: &str) -> Vec<(Arc<str>, Box<str>, ConnId)> {
        let mut chosen: Vec<_> = self
            .clients()
            .iter()
            .filter(|(_, conn)| !conn.is_closing())
            .map(|(idx, conn)| (*idx, conn.clone()))
            .collect();
        let count = count.min(chosen.len());
        // A partial Fisher-Yates shuffle: the first `count` are a uniform
        // sample.
        let mut rng = self.rng.borrow_mut();
        for i in 0..count {
            let j = rng.usize(i..chosen.len());
            chosen.swap(i, j);
        }
        drop(rng);
        chosen.truncate(count);
        let mut gone = Vec::with_capacity(count);
        for (idx, conn) in chosen {
            let name = self
                .store
                .borrow()
                .get(idx)
                .map(|e| (e.app_id.clone(), e.client_id.clone()));
            conn.goodbye(reason);
            self.unroute(idx);
            if let Some((app, client)) = name {
                let owner = ConnId {
                    shard: self.id,
                    conn: conn.id,
                };
                gone.push((app, client, owner));
            }
        }
        gone
    }

    /// Closes this shard's connection `conn` with error `error`, if it is
    /// still open ([`super::ShardMsg::CloseConn`]).
    pub fn close_with_error(&self, conn: u64, error: &str) {
        let conn = self.registry.conns.borrow().get(&conn).cloned();
        if let Some(conn) = conn {
            if let Some(idx) = conn.client() {
                self.unroute(idx);
            }
            conn.fail(error, Value::Null);
        }
    }
}
