//! The shard API through which work crosses cores: [`Shard::on_shard`]
//! sends one message, [`Shard::ask`] asks one shard and waits for its
//! answer, [`Shard::scatter`] asks every shard and gathers the answers.
//! The mesh ([`super::mesh`]) carries the messages; this file pairs each
//! answer with the request waiting for it.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::{Reply, ReplyTo, Shard, ShardMsg};

/// How a shard answers a request addressed to itself. What the answer is
/// belongs to the layers above the shard (routing, queues, the name
/// registry; see `crate::dispatch`), so the shard is handed the function
/// when it is built instead of importing them.
pub type Answer = fn(&Shard, ShardMsg) -> Option<Reply>;

/// Shards with messages queued by this one and not yet woken.
#[derive(Default)]
pub(super) struct Wakes {
    due: RefCell<Vec<usize>>,
    waiter: Cell<Option<Waker>>,
}

impl Wakes {
    fn defer(&self, to: usize) {
        let mut due = self.due.borrow_mut();
        if due.contains(&to) {
            return;
        }
        due.push(to);
        if due.len() == 1
            && let Some(waiter) = self.waiter.take()
        {
            waiter.wake();
        }
    }
}

/// Replies collected for one request.
pub(super) struct Gather {
    expected: usize,
    replies: RefCell<Vec<(usize, Reply)>>,
    waker: Cell<Option<Waker>>,
}

impl Shard {
    /// Sends one message to shard `to` (which may be this one). Every
    /// message between shards goes through here, so that what crosses
    /// cores is counted (`singyeong_cross_shard_messages_total`). Another
    /// shard is woken later, once for everything sent to it in the
    /// meantime ([`Shard::flush_wakes`]).
    pub fn on_shard(&self, to: usize, msg: ShardMsg) {
        if to == self.id {
            self.mesh.send(to, msg);
            return;
        }
        self.metrics.cross_shard(msg.kind());
        self.mesh.push(to, msg);
        self.defer_wake(to);
    }

    /// Has [`Shard::wake_loop`] wake shard `to` (another shard) soon.
    pub fn defer_wake(&self, to: usize) {
        self.wakes.defer(to);
    }

    /// Wakes the shards this shard has queued messages for since it last
    /// did. Waking a parked shard is the dear part of a message between
    /// shards (PERF.md, "Cross-shard latency"), so a shard that sends a
    /// burst (a connection's pipelined SENDs, a mesh batch's replies)
    /// wakes each receiver once for all of it. Called before this shard
    /// writes to a client (by the connection task and the flusher), so
    /// that whatever a client is told after a message was sent, the
    /// message's receiver is already awake to handle it before the client
    /// can act; and by [`Shard::wake_loop`] otherwise.
    pub fn flush_wakes(&self) {
        if self.wakes.due.borrow().is_empty() {
            return;
        }
        let due = std::mem::take(&mut *self.wakes.due.borrow_mut());
        for to in due {
            self.mesh.wake(to);
            (self.above.wake_lane)(self, to);
        }
    }

    /// Wakes receivers ([`Shard::flush_wakes`]) after the tasks ready when
    /// the first message was queued have run, when nothing wrote to a
    /// client before. Runs for the shard's life.
    pub async fn wake_loop(&self) {
        loop {
            poll_fn(|cx| {
                if self.wakes.due.borrow().is_empty() {
                    self.wakes.waiter.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            self.flush_wakes();
        }
    }

    /// Asks every shard the question `make` builds and waits for all answers,
    /// returned indexed by shard.
    pub async fn scatter(&self, make: impl Fn(ReplyTo) -> ShardMsg) -> Vec<Reply> {
        let all: Vec<usize> = (0..self.shards()).collect();
        self.ask_some(&all, make).await
    }

    /// Asks each of `shards` (ascending, distinct) and waits for all
    /// answers, returned in the same order.
    pub async fn ask_some(
        &self,
        shards: &[usize],
        make: impl Fn(ReplyTo) -> ShardMsg,
    ) -> Vec<Reply> {
        let mut replies = self.ask_shards(shards, make).await;
        replies.sort_by_key(|(shard, _)| *shard);
        replies.into_iter().map(|(_, r)| r).collect()
    }

    /// Asks one shard (which may be this one) and waits for its answer.
    pub async fn ask(&self, to: usize, make: impl Fn(ReplyTo) -> ShardMsg) -> Reply {
        let mut replies = self.ask_shards(&[to], make).await;
        replies.pop().expect("one shard asked, one answer").1
    }

    /// Sends the request to each of `shards` and gathers `(shard, reply)`.
    /// This shard answers directly, without a trip through its own inbox.
    async fn ask_shards(
        &self,
        shards: &[usize],
        make: impl Fn(ReplyTo) -> ShardMsg,
    ) -> Vec<(usize, Reply)> {
        let req = self.next_req.get();
        self.next_req.set(req + 1);
        let reply_to = ReplyTo {
            shard: self.id,
            req,
        };
        let remote = shards.len() - usize::from(shards.contains(&self.id));
        let gather = Rc::new(Gather {
            expected: remote,
            replies: RefCell::new(Vec::with_capacity(shards.len())),
            waker: Cell::new(None),
        });
        if remote > 0 {
            self.pending.borrow_mut().insert(req, gather.clone());
            for &shard in shards.iter().filter(|&&s| s != self.id) {
                self.on_shard(shard, make(reply_to));
            }
        }
        let local = shards.contains(&self.id).then(|| {
            (self.above.answer)(self, make(reply_to)).expect("every request has an answer")
        });
        // Removes the pending entry even if the waiting task is dropped.
        let _guard = PendingGuard { shard: self, req };
        poll_fn(|cx| {
            if gather.replies.borrow().len() >= gather.expected {
                Poll::Ready(())
            } else {
                gather.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        let mut replies = std::mem::take(&mut *gather.replies.borrow_mut());
        replies.extend(local.map(|r| (self.id, r)));
        replies
    }

    /// Hands a reply from shard `from` to the request `req` waiting for
    /// it. A reply nobody waits for any more (its task was dropped) is
    /// let go.
    pub fn take_reply(&self, req: u64, from: usize, reply: Reply) {
        if let Some(gather) = self.pending.borrow().get(&req) {
            gather.replies.borrow_mut().push((from, reply));
            if gather.replies.borrow().len() >= gather.expected
                && let Some(w) = gather.waker.take()
            {
                w.wake();
            }
        }
    }

    /// Answers the request `request` and sends the answer back to whoever
    /// asked.
    pub fn reply(&self, reply_to: ReplyTo, request: ShardMsg) {
        if let Some(reply) = (self.above.answer)(self, request) {
            self.on_shard(
                reply_to.shard,
                ShardMsg::Reply {
                    req: reply_to.req,
                    from: self.id,
                    reply,
                },
            );
        }
    }

    /// Messages waiting in this shard's inbox.
    pub fn mesh_depth(&self) -> usize {
        self.mesh.depth(self.id)
    }
}

struct PendingGuard<'a> {
    shard: &'a Shard,
    req: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shard.pending.borrow_mut().remove(&self.req);
    }
}
