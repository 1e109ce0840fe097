//! One connection's SENDs and BROADCASTs in flight.
//!
//! Routing a SEND across shards waits for their answers (the pick); a
//! connection that waited for each SEND before reading the next would be
//! capped at one cross-core round trip per message. So each SEND is routed
//! in a task of its own while the connection reads on, with two rules:
//!
//! - **Bounded:** at most `max` routings in flight per connection. Past it
//!   the connection stops reading ([`Pipeline::enter`] waits), which is
//!   TCP's own backpressure on the sender.
//! - **In order where it shows:** picks run concurrently, but each routing
//!   hands its packet over (to the recipient's connection, or to the mesh
//!   towards its shard, which keeps order per pair of shards) only once
//!   every routing entered before it has handed over or given up
//!   ([`Slot::turn`]). So messages from one sender reach one recipient in
//!   the order sent.
//!
//! A routing whose hand-over is a message to another node passes its turn
//! on as soon as that message is on the link ([`Slot::pass_turn`]), before
//! the node answers: the link keeps the order, and the node hands over in
//! arrival order (a pipeline per link on the answering side). Should the
//! node answer that its match had gone, the SEND is chosen again without
//! the turn: only then can a later SEND overtake it.
//!
//! A heartbeat waits until nothing is in flight ([`Pipeline::drained`]), so
//! its ack still follows the outcome (a `no_route`, say) of every SEND sent
//! before it, as clients that use a heartbeat to sync expect.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

pub struct Pipeline {
    max: usize,
    /// Slots handed out and not yet dropped.
    in_flight: Cell<usize>,
    /// The number the next slot gets.
    next: Cell<u64>,
    /// The slot whose turn it is to hand over.
    serving: Cell<u64>,
    /// Slots that finished before their turn came (they gave up early, for
    /// instance a SEND that matched nothing): skipped when it comes.
    finished_early: RefCell<BTreeSet<u64>>,
    /// Tasks waiting for their turn, by slot number.
    turn_wakers: RefCell<Vec<(u64, Waker)>>,
    /// The connection's task, waiting for room (or for nothing in flight).
    room_waker: Cell<Option<Waker>>,
}

impl Pipeline {
    pub fn new(max: usize) -> Rc<Pipeline> {
        Rc::new(Pipeline {
            max: max.max(1),
            in_flight: Cell::new(0),
            next: Cell::new(0),
            serving: Cell::new(0),
            finished_early: RefCell::new(BTreeSet::new()),
            turn_wakers: RefCell::new(Vec::new()),
            room_waker: Cell::new(None),
        })
    }

    /// Waits for room, then takes the next slot.
    pub async fn enter(self: &Rc<Self>) -> Slot {
        poll_fn(|cx| {
            if self.in_flight.get() < self.max {
                Poll::Ready(())
            } else {
                self.room_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        self.enter_now()
    }

    /// Takes the next slot at once, however many are in flight: for
    /// callers bounded elsewhere (requests from another node, bounded by
    /// what its link may hold), which must take slots in arrival order.
    pub fn enter_now(self: &Rc<Self>) -> Slot {
        let n = self.next.get();
        self.next.set(n + 1);
        let ahead = self.in_flight.get();
        self.in_flight.set(ahead + 1);
        Slot {
            pipeline: self.clone(),
            n,
            ahead,
            passed: Cell::new(false),
        }
    }

    /// Nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.get() == 0
    }

    /// Waits until nothing is in flight.
    pub async fn drained(&self) {
        poll_fn(|cx| {
            if self.in_flight.get() == 0 {
                Poll::Ready(())
            } else {
                self.room_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    fn leave(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        if let Some(w) = self.room_waker.take() {
            w.wake();
        }
    }

    /// Slot `n` has handed over (or given up): the turn passes on once
    /// every slot before it has too.
    fn pass(&self, n: u64) {
        if n != self.serving.get() {
            self.finished_early.borrow_mut().insert(n);
            return;
        }
        // Pass the turn on, past slots that finished early.
        let mut serving = n + 1;
        {
            let mut early = self.finished_early.borrow_mut();
            while early.remove(&serving) {
                serving += 1;
            }
        }
        self.serving.set(serving);
        let mut wakers = self.turn_wakers.borrow_mut();
        if let Some(i) = wakers.iter().position(|(m, _)| *m == serving) {
            wakers.swap_remove(i).1.wake();
        }
    }
}

/// One routing's place in its connection's pipeline; dropping it ends the
/// routing (and passes the turn on).
pub struct Slot {
    pipeline: Rc<Pipeline>,
    n: u64,
    /// Routings of the same connection still in flight when this one
    /// entered: more than none means the pipeline saved a wait.
    pub ahead: usize,
    /// The turn was passed on before the slot ended.
    passed: Cell<bool>,
}

impl Slot {
    /// Waits until every routing entered before this one has handed over
    /// (at once if this one has passed its turn on already).
    pub async fn turn(&self) {
        poll_fn(|cx| {
            let p = &self.pipeline;
            if self.passed.get() || p.serving.get() == self.n {
                return Poll::Ready(());
            }
            let mut wakers = p.turn_wakers.borrow_mut();
            match wakers.iter_mut().find(|(m, _)| *m == self.n) {
                Some((_, w)) => w.clone_from(cx.waker()),
                None => wakers.push((self.n, cx.waker().clone())),
            }
            Poll::Pending
        })
        .await
    }

    /// Hands the turn on while this routing is still in flight (its packet
    /// is on its way in order; it waits for an answer now). Only once.
    pub fn pass_turn(&self) {
        if !self.passed.replace(true) {
            self.pipeline.pass(self.n);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pass_turn();
        self.pipeline.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    #[test]
    fn turns_come_in_entry_order_whatever_order_slots_ask() {
        let p = Pipeline::new(8);
        let (a, b, c) = block_on(async { (p.enter().await, p.enter().await, p.enter().await) });
        // c and b ask before a hands over: neither may go.
        let mut c_turn = Box::pin(c.turn());
        assert!(block_on(poll_once(c_turn.as_mut())).is_none());
        let mut b_turn = Box::pin(b.turn());
        assert!(block_on(poll_once(b_turn.as_mut())).is_none());
        assert!(block_on(poll_once(a.turn())).is_some());
        drop(a);
        assert!(block_on(poll_once(b_turn.as_mut())).is_some());
        assert!(block_on(poll_once(c_turn.as_mut())).is_none());
        drop(b_turn);
        drop(b);
        assert!(block_on(poll_once(c_turn.as_mut())).is_some());
    }

    #[test]
    fn a_slot_that_gives_up_early_is_skipped() {
        let p = Pipeline::new(8);
        let (a, b, c) = block_on(async { (p.enter().await, p.enter().await, p.enter().await) });
        drop(b); // matched nothing: never hands over
        let mut c_turn = Box::pin(c.turn());
        assert!(block_on(poll_once(c_turn.as_mut())).is_none());
        drop(a);
        assert!(block_on(poll_once(c_turn.as_mut())).is_some());
    }

    #[test]
    fn a_passed_turn_moves_on_while_the_slot_stays_in_flight() {
        let p = Pipeline::new(2);
        let (a, b) = block_on(async { (p.enter().await, p.enter().await) });
        let mut b_turn = Box::pin(b.turn());
        assert!(block_on(poll_once(b_turn.as_mut())).is_none());
        a.pass_turn();
        a.pass_turn();
        assert!(block_on(poll_once(b_turn.as_mut())).is_some());
        // a still holds its room until it ends.
        assert!(block_on(poll_once(Box::pin(p.enter()))).is_none());
        let c = p.enter_now();
        assert_eq!(c.ahead, 2, "entered at once past the bound");
        drop(b_turn);
        drop(b);
        let mut c_turn = Box::pin(c.turn());
        assert!(
            block_on(poll_once(c_turn.as_mut())).is_some(),
            "a passed, b ended"
        );
        drop(c_turn);
        drop((a, c));
        assert!(p.is_idle());
    }

    #[test]
    fn entering_waits_for_room() {
        let p = Pipeline::new(2);
        let (a, _b) = block_on(async { (p.enter().await, p.enter().await) });
        let mut third = Box::pin(p.enter());
        assert!(block_on(poll_once(third.as_mut())).is_none());
        drop(a);
        let third = block_on(poll_once(third.as_mut())).expect("room");
        assert_eq!(third.ahead, 1);
        let mut drained = Box::pin(p.drained());
        assert!(block_on(poll_once(drained.as_mut())).is_none());
        drop((_b, third));
        assert!(block_on(poll_once(drained.as_mut())).is_some());
    }
}
