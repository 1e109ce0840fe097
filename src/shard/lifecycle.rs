//! How connections end without asking to: the heartbeat reaper closes the
//! silent and the stuck, and shutdown says goodbye to everyone.

use serde_json::Value;

use super::Shard;
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
}
