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

use std::collections::HashMap;
use std::sync::Arc;

use super::state::{Consumer, MsgId};
use crate::cluster::NodeKey;

/// Credits to ask for again: (queue, its owner node, how many).
pub type AskAgain = (Arc<str>, Option<NodeKey>, u32);

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
    /// Delivered here, not acked, not taken back by the owner; each with
    /// the node that delivered it (`None`: this one), where its ack goes.
    held: HashMap<MsgId, Option<NodeKey>>,
    /// The node holding the credits and cancels (`None`: this one): the
    /// queue's owner when they were sent.
    at: Option<NodeKey>,
    /// Credits counted here that could not be sent to the owner (its link
    /// was down): sent again by [`ClientQueues::settle`].
    unsent: u32,
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

    /// QUEUE_REQUEST: one more credit, asked of the owner `at`, unless the
    /// client already holds `max` on that queue.
    pub fn request(&mut self, queue: &Arc<str>, max: usize, at: Option<NodeKey>) -> bool {
        let h = self.queues.entry(queue.clone()).or_default();
        if h.credits as usize >= max {
            return false;
        }
        h.at = at;
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

    /// QUEUE_REQUEST_CANCEL: drops the credits. `Some(node)` when that
    /// node must be told (it may hold credits of this connection); its
    /// answer comes back through [`ClientQueues::cancelled`].
    pub fn cancel(&mut self, queue: &str) -> Option<Option<NodeKey>> {
        // Nothing asked for: nothing to withdraw.
        let h = self.queues.get_mut(queue)?;
        self.credits -= h.credits as usize;
        h.credits = 0;
        h.cancelling += 1;
        Some(h.at)
    }

    /// The owner has applied a cancel: every delivery it made before is
    /// already here.
    pub fn cancelled(&mut self, queue: &str) {
        self.change(queue, |h| h.cancelling = h.cancelling.saturating_sub(1));
    }

    /// A delivery from node `from` arrived: it used one credit (none left
    /// after a cancel).
    pub fn delivered(&mut self, queue: &Arc<str>, id: MsgId, from: Option<NodeKey>) {
        let h = self.queues.entry(queue.clone()).or_default();
        let used = h.credits.min(1);
        h.credits -= used;
        self.credits -= used as usize;
        h.held.insert(id, from);
    }

    /// The client acked `id` (whether the owner agrees or not, the client
    /// no longer counts on holding it): the node that delivered it, if it
    /// was held.
    pub fn acked(&mut self, queue: &str, id: MsgId) -> Option<Option<NodeKey>> {
        let mut from = None;
        self.change(queue, |h| from = h.held.remove(&id));
        from
    }

    /// The node holding `credits` of the credits on `queue` dropped them
    /// (it no longer owns the queue): how many to ask the owner `at` for
    /// again (none that the client has used or cancelled meanwhile).
    pub fn rehome(&mut self, queue: &str, credits: u32, at: Option<NodeKey>) -> u32 {
        let mut again = 0;
        self.change(queue, |h| {
            again = credits.min(h.credits);
            h.at = at;
        });
        again
    }

    /// `n` credits on `queue` could not be sent to the owner.
    pub fn unsent(&mut self, queue: &str, n: u32) {
        self.change(queue, |h| h.unsent = (h.unsent + n).min(h.credits));
    }

    /// After the cluster changed, and now and then: for each queue whose
    /// credits sat with a node that is no longer `alive`, the credits to
    /// ask its owner (`owner`) for again (a cancel sent there will never be
    /// answered, and what that node delivered is its to deliver again when
    /// it returns, so both are forgotten); and credits that could not be
    /// sent, to send to the owner now.
    pub fn settle(
        &mut self,
        alive: impl Fn(NodeKey) -> bool,
        owner: impl Fn(&str) -> Option<NodeKey>,
    ) -> Vec<AskAgain> {
        let gone = |n: &Option<NodeKey>| n.is_some_and(|n| !alive(n));
        let mut again = Vec::new();
        self.queues.retain(|name, h| {
            h.held.retain(|_, from| !gone(from));
            let unsent = std::mem::take(&mut h.unsent).min(h.credits);
            if gone(&h.at) {
                h.cancelling = 0;
                h.at = owner(name);
                if h.credits > 0 {
                    again.push((name.clone(), h.at, h.credits));
                }
            } else if unsent > 0 {
                h.at = owner(name);
                again.push((name.clone(), h.at, unsent));
            }
            !h.is_empty()
        });
        again
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

    /// Queues with waiting credits, each with the node holding them:
    /// their owners match against the client's metadata.
    pub fn requesting(&self) -> Vec<(Arc<str>, Option<NodeKey>)> {
        self.queues
            .iter()
            .filter(|(_, h)| h.credits > 0)
            .map(|(q, h)| (q.clone(), h.at))
            .collect()
    }

    /// Every queue on which a node may hold something of this connection,
    /// with each such node (credits, cancels, deliveries): the ones to
    /// tell when it goes.
    pub fn tracked(self) -> Vec<(Arc<str>, Option<NodeKey>)> {
        let mut out = Vec::new();
        for (name, h) in self.queues {
            let mut nodes: Vec<Option<NodeKey>> = vec![h.at];
            for from in h.held.into_values() {
                if !nodes.contains(&from) {
                    nodes.push(from);
                }
            }
            out.extend(nodes.into_iter().map(|n| (name.clone(), n)));
        }
        out
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
            assert!(c.request(&name, 10, None));
            assert_eq!(c.waiting_on(), vec![name.to_string()]);
            c.delivered(&name, i, None);
            assert!(c.waiting_on().is_empty());
            assert_eq!(c.len(), 1, "held until acked");
            c.acked(&name, i);
        }
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn credits_are_bounded() {
        let mut c = ClientQueues::new(1);
        assert!(c.request(&q("a"), 2, None));
        assert!(c.request(&q("a"), 2, None));
        assert!(!c.request(&q("a"), 2, None));
        c.delivered(&q("a"), 1, None);
        assert!(c.request(&q("a"), 2, None));
    }

    #[test]
    fn a_cancelled_queue_stays_tracked_until_the_owner_answers() {
        let mut c = ClientQueues::new(1);
        assert!(c.cancel("never").is_none(), "nothing to cancel");
        c.request(&q("a"), 5, None);
        assert!(c.cancel("a").is_some());
        assert!(c.waiting_on().is_empty());
        // A delivery made before the owner saw the cancel.
        c.delivered(&q("a"), 7, None);
        c.cancelled("a");
        assert_eq!(c.len(), 1, "7 is still held");
        c.acked("a", 7);
        assert!(c.is_empty());
        // Cancel with nothing in flight: gone when the owner answers.
        c.request(&q("b"), 5, None);
        c.cancel("b");
        assert_eq!(c.tracked_names(), vec!["b".to_string()]);
        c.cancelled("b");
        assert!(c.is_empty());
    }

    #[test]
    fn credits_are_counted_across_queues() {
        let mut c = ClientQueues::new(1);
        for name in ["a", "a", "b", "c"] {
            c.request(&q(name), 5, None);
        }
        assert_eq!(c.credits(), 4);
        c.delivered(&q("a"), 1, None);
        assert_eq!(c.credits(), 3);
        c.cancel("a");
        assert_eq!(c.credits(), 2);
        // A delivery after the cancel uses no credit.
        c.delivered(&q("a"), 2, None);
        assert_eq!(c.credits(), 2);
        c.refused("b");
        c.refused("b");
        assert_eq!(c.credits(), 1);
    }

    #[test]
    fn a_refused_request_is_taken_back() {
        let mut c = ClientQueues::new(1);
        c.request(&q("a"), 5, None);
        c.refused("a");
        assert!(
            c.is_empty(),
            "nothing is owed for a queue that was never made"
        );
        c.request(&q("b"), 5, None);
        c.request(&q("b"), 5, None);
        c.refused("b");
        assert_eq!(c.waiting_on(), vec!["b".to_string()]);
        c.refused("zzz");
    }

    #[test]
    fn revoked_and_redelivered_messages() {
        let mut c = ClientQueues::new(1);
        c.request(&q("a"), 5, None);
        c.request(&q("a"), 5, None);
        c.delivered(&q("a"), 1, None);
        // Ack timeout: taken back, then delivered again with the second
        // credit; the revocation arrives first.
        c.revoked("a", 1);
        assert_eq!(c.len(), 1);
        c.delivered(&q("a"), 1, None);
        assert!(c.waiting_on().is_empty());
        c.revoked("a", 1);
        assert!(c.is_empty());
        // An ack of something never held changes nothing.
        c.acked("zzz", 3);
        assert!(c.is_empty());
    }

    fn node(port: u16) -> Option<NodeKey> {
        Some((([127, 0, 0, 1], port).into(), 1))
    }

    #[test]
    fn acks_go_to_the_node_that_delivered() {
        let mut c = ClientQueues::new(1);
        c.request(&q("a"), 5, node(1));
        c.request(&q("a"), 5, node(1));
        c.delivered(&q("a"), 10, node(1));
        c.delivered(&q("a"), 11, None);
        assert_eq!(c.acked("a", 11), Some(None));
        assert_eq!(c.acked("a", 10), Some(node(1)));
        assert_eq!(c.acked("a", 12), None, "never held");
    }

    #[test]
    fn credits_with_a_node_that_went_are_asked_again_of_the_owner() {
        let mut c = ClientQueues::new(1);
        c.request(&q("a"), 5, node(1));
        c.request(&q("a"), 5, node(1));
        c.request(&q("b"), 5, node(2));
        c.delivered(&q("a"), 10, node(1));
        c.request(&q("c"), 5, node(1));
        c.cancel("c");
        let again = c.settle(|n| Some(n) != node(1), |_| node(3));
        assert_eq!(again, vec![(q("a"), node(3), 1)]);
        assert_eq!(c.credits(), 2);
        // Its delivery and the cancel it will never answer are forgotten.
        assert_eq!(c.acked("a", 10), None);
        let mut tracked = c.clone_tracked();
        tracked.sort();
        assert_eq!(tracked, vec![(q("a"), node(3)), (q("b"), node(2))]);
        // Nothing changes while the nodes stay.
        assert!(c.settle(|_| true, |_| None).is_empty());
    }

    #[test]
    fn credits_not_sent_are_sent_at_the_next_settling() {
        let mut c = ClientQueues::new(1);
        for _ in 0..3 {
            c.request(&q("a"), 5, node(1));
        }
        c.unsent("a", 2);
        c.delivered(&q("a"), 10, node(1));
        let again = c.settle(|_| true, |_| node(2));
        assert_eq!(again, vec![(q("a"), node(2), 2)]);
        assert!(c.settle(|_| true, |_| node(2)).is_empty(), "once");
        // Never more than the credits left.
        c.unsent("a", 9);
        c.delivered(&q("a"), 11, node(2));
        assert_eq!(c.settle(|_| true, |_| node(2)), vec![(q("a"), node(2), 1)]);
    }

    #[test]
    fn rehomed_credits_are_those_not_used_meanwhile() {
        let mut c = ClientQueues::new(1);
        for _ in 0..3 {
            c.request(&q("a"), 5, node(1));
        }
        c.delivered(&q("a"), 10, node(1));
        assert_eq!(c.rehome("a", 3, node(2)), 2);
        assert_eq!(c.requesting(), vec![(q("a"), node(2))]);
        assert_eq!(c.rehome("zzz", 3, None), 0);
    }

    impl ClientQueues {
        fn clone_tracked(&self) -> Vec<(Arc<str>, Option<NodeKey>)> {
            self.queues.iter().map(|(n, h)| (n.clone(), h.at)).collect()
        }

        fn tracked_names(&self) -> Vec<String> {
            self.queues.keys().map(|k| k.to_string()).collect()
        }
    }
}
