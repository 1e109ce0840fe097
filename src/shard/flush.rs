//! The shard's list of connections with frames to write. A frame queued on
//! a connection whose own task has nothing of its own to write (no
//! unfinished tail, no pong or close of tungstenite's) does not wake that
//! task: the connection goes on this list, and the shard's flusher writes
//! it out from a task queue of lower priority than the readers.
//!
//! Why: waking a task per recipient costs a task poll each, and writing as
//! soon as a frame is queued means one `send` per frame when messages
//! arrive one at a time. The flusher gives way to readers (its task queue
//! is preempted as soon as a socket is readable), so under load several
//! messages queue per connection before it is written, and they go out in
//! one `send`; idle, it runs as soon as the readers are done, so latency
//! does not grow.

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
