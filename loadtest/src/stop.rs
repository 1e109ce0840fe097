//! Stopping, in the manner of mini-redis's `Shutdown`: every connection task
//! holds a [`Stop`]; triggering the [`StopSwitch`] tells them all to close,
//! and the switch can wait (bounded) until the last `Stop` is dropped, which
//! means every connection has finished closing.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Held by every task that must close on request.
#[derive(Clone)]
pub struct Stop {
    signal: watch::Receiver<bool>,
    // Never sent on: its drop is the "this task is done" signal.
    _alive: mpsc::Sender<()>,
}

impl Stop {
    /// Resolves once a stop was requested (at once if it already was).
    pub async fn wait(&mut self) {
        // An error means the switch is gone, which is also a stop.
        let _ = self.signal.wait_for(|stopped| *stopped).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.signal.borrow()
    }
}

pub struct StopSwitch {
    signal: watch::Sender<bool>,
    alive: mpsc::Receiver<()>,
    template: Option<Stop>,
}

impl StopSwitch {
    pub fn new() -> StopSwitch {
        let (signal, receiver) = watch::channel(false);
        let (alive_tx, alive) = mpsc::channel(1);
        StopSwitch {
            signal,
            alive,
            template: Some(Stop {
                signal: receiver,
                _alive: alive_tx,
            }),
        }
    }

    /// A new handle for a task. Panics after [`StopSwitch::stop_and_wait`].
    pub fn handle(&self) -> Stop {
        self.template.clone().expect("handle taken after stop")
    }

    /// Tells every task to stop, then waits until all have dropped their
    /// handles or `grace` has passed. Returns whether all finished in time.
    pub async fn stop_and_wait(&mut self, grace: Duration) -> bool {
        let _ = self.signal.send(true);
        self.template = None;
        tokio::time::timeout(grace, self.alive.recv()).await.is_ok()
    }
}

impl Default for StopSwitch {
    fn default() -> Self {
        StopSwitch::new()
    }
}
