//! What a client's own shard remembers of its queues: credits it has asked
//! for, messages delivered to it and not yet acked, cancels still on their
//! way. Pure bookkeeping; [`super::owner`] sends the mesh messages.
//!
//! A queue is tracked only while the owner may still hold something of
//! this connection on it: a waiting credit, an unacked delivery, or a
//! delivery that may be in flight behind a cancel. Then, when the client
//! disconnects, the owner is told about exactly those queues. Once none of
//! these remain the entry goes, so a long-lived connection that uses a new
//! queue name per request does not grow without bound.
//!
//! Mesh messages between two shards arrive in the order they were sent, so
//! the owner's answers (deliveries, revocations, the end of a cancel) come
//! back in the order it produced them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::state::{Consumer, MsgId};

/// One connection's queues on its own shard.
#[derive(Debug, Default)]
pub struct ClientQueues {
    /// The connection this belongs to (client slots are reused).
    pub conn: u64,
    queues: HashMap<Arc<str>, Holding>,
    /// Waiting credits on every queue together (each is an entry in an
    /// owner's line, so they are bounded per connection too).
    credits: usize,
    /// The snapshot last sent to owners; rebuilt after a metadata update.
    pub snapshot: Option<Arc<Consumer>>,
}

#[derive(Debug, Default)]
struct Holding {
    /// Credits asked for and not yet used by a delivery that arrived here.
    credits: u32,
    /// Delivered here, not acked, not taken back by the owner.
    held: HashSet<MsgId>,
    /// Cancels sent whose end the owner has not yet reported: a delivery
    /// that used one of the cancelled credits may still be on its way.
    cancelling: u32,
}

impl Holding {
    fn is_empty(&self) -> bool {
        self.credits == 0 && self.held.is_empty() && self.cancelling == 0
    }
}

impl ClientQueues {
    pub fn new(conn: u64) -> ClientQueues {
        ClientQueues {
            conn,
            ..ClientQueues::default()
        }
    }

    /// QUEUE_REQUEST: one more credit, unless the client already holds
    /// `max` on that queue.
    pub fn request(&mut self, queue: &Arc<str>, max: usize) -> bool {
        let h = self.queues.entry(queue.clone()).or_default();
        if h.credits as usize >= max {
            return false;
        }
        h.credits += 1;
        self.credits += 1;
        true
    }

    /// Waiting credits on every queue together.
    pub fn credits(&self) -> usize {
        self.credits
    }

    /// The owner refused a QUEUE_REQUEST (no room for a new queue): the
    /// credit it added is taken back.
    pub fn refused(&mut self, queue: &str) {
        let mut taken = 0;
        self.change(queue, |h| {
            taken = h.credits.min(1);
            h.credits -= taken;
        });
        self.credits -= taken as usize;
    }

    /// QUEUE_REQUEST_CANCEL: drops the credits. True when the owner must be
    /// told (it may hold credits of this connection); its answer comes back
    /// through [`ClientQueues::cancelled`].
    pub fn cancel(&mut self, queue: &str) -> bool {
        let Some(h) = self.queues.get_mut(queue) else {
            return false; // nothing asked for, nothing to withdraw
        };
        self.credits -= h.credits as usize;
        h.credits = 0;
        h.cancelling += 1;
        true
    }

    /// The owner has applied a cancel: every delivery it made before is
    /// already here.
    pub fn cancelled(&mut self, queue: &str) {
        self.change(queue, |h| h.cancelling = h.cancelling.saturating_sub(1));
    }

    /// A delivery arrived: it used one credit (none left after a cancel).
    pub fn delivered(&mut self, queue: &Arc<str>, id: MsgId) {
        let h = self.queues.entry(queue.clone()).or_default();
        let used = h.credits.min(1);
        h.credits -= used;
        self.credits -= used as usize;
        h.held.insert(id);
    }

    /// The client acked `id` (whether the owner agrees or not, the client
    /// no longer counts on holding it).
    pub fn acked(&mut self, queue: &str, id: MsgId) {
        self.change(queue, |h| {
            h.held.remove(&id);
        });
    }

    /// The owner took `id` back (ack timeout).
    pub fn revoked(&mut self, queue: &str, id: MsgId) {
        self.change(queue, |h| {
            h.held.remove(&id);
        });
    }

    /// Queues with waiting credits, sorted (the `<client>` object's
    /// `queues`).
    pub fn waiting_on(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, h)| h.credits > 0)
            .map(|(q, _)| q.to_string())
            .collect();
        names.sort();
        names
    }

    /// Queues with waiting credits: their owners match against the
    /// client's metadata.
    pub fn requesting(&self) -> Vec<Arc<str>> {
        self.queues
            .iter()
            .filter(|(_, h)| h.credits > 0)
            .map(|(q, _)| q.clone())
            .collect()
    }

    /// Every queue whose owner may hold something of this connection: the
    /// ones to tell when it goes.
    pub fn tracked(self) -> Vec<Arc<str>> {
        self.queues.into_keys().collect()
    }

    /// How many queues are tracked.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    fn change(&mut self, queue: &str, f: impl FnOnce(&mut Holding)) {
        if let Some(h) = self.queues.get_mut(queue) {
            f(h);
            if h.is_empty() {
                self.queues.remove(queue);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str) -> Arc<str> {
        name.into()
    }

    #[test]
    fn a_queue_is_forgotten_once_nothing_is_owed() {
        let mut c = ClientQueues::new(1);
        for i in 0..1000u64 {
            let name = q(&format!("reply-{i}"));
            assert!(c.request(&name, 10));
            assert_eq!(c.waiting_on(), vec![name.to_string()]);
            c.delivered(&name, i);
            assert!(c.waiting_on().is_empty());
            assert_eq!(c.len(), 1, "held until acked");
            c.acked(&name, i);
        }
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn credits_are_bounded() {
        let mut c = ClientQueues::new(1);
        assert!(c.request(&q("a"), 2));
        assert!(c.request(&q("a"), 2));
        assert!(!c.request(&q("a"), 2));
        c.delivered(&q("a"), 1);
        assert!(c.request(&q("a"), 2));
    }

    #[test]
    fn a_cancelled_queue_stays_tracked_until_the_owner_answers() {
        let mut c = ClientQueues::new(1);
        assert!(!c.cancel("never"), "nothing to cancel");
        c.request(&q("a"), 5);
        assert!(c.cancel("a"));
        assert!(c.waiting_on().is_empty());
        // A delivery made before the owner saw the cancel.
        c.delivered(&q("a"), 7);
        c.cancelled("a");
        assert_eq!(c.len(), 1, "7 is still held");
        c.acked("a", 7);
        assert!(c.is_empty());
        // Cancel with nothing in flight: gone when the owner answers.
        c.request(&q("b"), 5);
        c.cancel("b");
        assert_eq!(c.tracked_names(), vec!["b".to_string()]);
        c.cancelled("b");
        assert!(c.is_empty());
    }

    #[test]
    fn credits_are_counted_across_queues() {
        let mut c = ClientQueues::new(1);
        for name in ["a", "a", "b", "c"] {
            c.request(&q(name), 5);
        }
        assert_eq!(c.credits(), 4);
        c.delivered(&q("a"), 1);
        assert_eq!(c.credits(), 3);
        c.cancel("a");
        assert_eq!(c.credits(), 2);
        // A delivery after the cancel uses no credit.
        c.delivered(&q("a"), 2);
        assert_eq!(c.credits(), 2);
        c.refused("b");
        c.refused("b");
        assert_eq!(c.credits(), 1);
    }

    #[test]
    fn a_refused_request_is_taken_back() {
        let mut c = ClientQueues::new(1);
        c.request(&q("a"), 5);
        c.refused("a");
        assert!(
            c.is_empty(),
            "nothing is owed for a queue that was never made"
        );
        c.request(&q("b"), 5);
        c.request(&q("b"), 5);
        c.refused("b");
        assert_eq!(c.waiting_on(), vec!["b".to_string()]);
        c.refused("zzz");
    }

    #[test]
    fn revoked_and_redelivered_messages() {
        let mut c = ClientQueues::new(1);
        c.request(&q("a"), 5);
        c.request(&q("a"), 5);
        c.delivered(&q("a"), 1);
        // Ack timeout: taken back, then delivered again with the second
        // credit; the revocation arrives first.
        c.revoked("a", 1);
        assert_eq!(c.len(), 1);
        c.delivered(&q("a"), 1);
        assert!(c.waiting_on().is_empty());
        c.revoked("a", 1);
        assert!(c.is_empty());
        // An ack of something never held changes nothing.
        c.acked("zzz", 3);
        assert!(c.is_empty());
    }

    impl ClientQueues {
        fn tracked_names(&self) -> Vec<String> {
            self.queues.keys().map(|k| k.to_string()).collect()
        }
    }
}
