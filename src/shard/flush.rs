//! The shard's list of connections with frames to write. A frame queued on
//! a connection whose own task has nothing of its own to write (no
//! unfinished tail, no pong or close of tungstenite's) does not wake that
//! task: the connection goes on this list, and the shard's flusher
//! (`gateway::flush_loop`) writes it.
//!
//! Why: waking a task per recipient costs a task poll each, and the
//! flusher runs in a task queue of its own: glommio runs the ready tasks of
//! each queue in turn, so the frames routed by every reader that was ready
//! are queued before the flusher writes them (several per write when
//! messages come in faster than they go out), and a busy flusher shares the
//! core with the readers instead of holding them up. A connection busy
//! awaiting another shard is written meanwhile, too.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::ConnHandle;

#[derive(Default)]
pub struct FlushList {
    conns: RefCell<Vec<Rc<ConnHandle>>>,
    waker: Cell<Option<Waker>>,
}

impl FlushList {
    /// Puts a connection on the list (the caller makes sure it is there at
    /// most once) and wakes the flusher.
    pub fn schedule(&self, conn: Rc<ConnHandle>) {
        self.conns.borrow_mut().push(conn);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Waits until the list is not empty, then moves it into `into` (an
    /// empty vector whose allocation the flusher keeps reusing).
    pub async fn take(&self, into: &mut Vec<Rc<ConnHandle>>) {
        poll_fn(|cx| {
            let mut conns = self.conns.borrow_mut();
            if conns.is_empty() {
                self.waker.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
            std::mem::swap(&mut *conns, into);
            Poll::Ready(())
        })
        .await
    }
}
