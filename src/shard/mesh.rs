//! The cross-shard mesh: one lock-free inbox per shard, woken through
//! glommio's own cross-thread waker path.
//!
//! A sender pushes onto the target's `SegQueue` and wakes the waker the
//! target registered when it last found its inbox empty. glommio routes a
//! wake from a foreign thread to the owning executor's notifier (an eventfd
//! its reactor sleeps on), so a sleeping shard wakes up without anyone ever
//! blocking an executor thread. `AtomicWaker` takes the waker on the first
//! wake, so a burst of messages costs one wakeup and the receiver drains them
//! in a batch.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::SegQueue;

struct Inbox<M> {
    queue: SegQueue<M>,
    waker: AtomicWaker,
}

/// Handles to every shard's inbox. Cheap to clone; `Send` when `M` is.
pub struct Mesh<M> {
    inboxes: Arc<[Inbox<M>]>,
}

impl<M> Clone for Mesh<M> {
    fn clone(&self) -> Self {
        Mesh {
            inboxes: self.inboxes.clone(),
        }
    }
}

impl<M> Mesh<M> {
    pub fn new(shards: usize) -> Mesh<M> {
        Mesh {
            inboxes: (0..shards)
                .map(|_| Inbox {
                    queue: SegQueue::new(),
                    waker: AtomicWaker::new(),
                })
                .collect(),
        }
    }

    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Messages waiting in shard `shard`'s inbox.
    pub fn depth(&self, shard: usize) -> usize {
        self.inboxes[shard].queue.len()
    }

    /// Queues `msg` for shard `to` and wakes it if it is waiting.
    pub fn send(&self, to: usize, msg: M) {
        self.push(to, msg);
        self.wake(to);
    }

    /// Queues `msg` for shard `to` without waking it: the caller wakes it
    /// later ([`Mesh::wake`]), once for everything it queued meanwhile.
    pub fn push(&self, to: usize, msg: M) {
        self.inboxes[to].queue.push(msg);
    }

    /// Wakes shard `to` if it is waiting for its inbox.
    pub fn wake(&self, to: usize) {
        self.inboxes[to].waker.wake();
    }

    /// Hands every message already in shard `me`'s inbox to `f`, without
    /// waiting.
    pub fn drain(&self, me: usize, mut f: impl FnMut(M)) {
        while let Some(msg) = self.inboxes[me].queue.pop() {
            f(msg);
        }
    }

    /// Waits until shard `me` has at least one message, then moves up to
    /// `max` of them into `batch`.
    pub async fn recv_batch(&self, me: usize, batch: &mut Vec<M>, max: usize) {
        let inbox = &self.inboxes[me];
        poll_fn(|cx| {
            if !inbox.queue.is_empty() {
                return Poll::Ready(());
            }
            inbox.waker.register(cx.waker());
            // A message pushed between the check and the registration would
            // have found no waker: look again.
            if inbox.queue.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        while batch.len() < max {
            match inbox.queue.pop() {
                Some(msg) => batch.push(msg),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    #[test]
    fn messages_cross_executors_and_wake_the_receiver() {
        let mesh: Mesh<u32> = Mesh::new(2);
        let rx = mesh.clone();
        let receiver = LocalExecutorBuilder::default()
            .spawn(move || async move {
                let mut got = Vec::new();
                let mut batch = Vec::new();
                while got.len() < 1000 {
                    rx.recv_batch(1, &mut batch, 64).await;
                    got.append(&mut batch);
                }
                got
            })
            .unwrap();
        let tx = mesh.clone();
        let sender = std::thread::spawn(move || {
            for i in 0..1000 {
                tx.send(1, i);
                if i % 100 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        });
        sender.join().unwrap();
        let got = receiver.join().unwrap();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }
}
