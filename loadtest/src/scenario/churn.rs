//! `churn`: targeted traffic (see [`super::targeted`]) while the churner
//! disconnects receivers at `--churn-rate` per second; each reconnects at
//! once as a new client with the same metadata. Senders avoid receivers
//! they know are away, so what is lost is what was in flight to a client
//! as it left, or sent in the moment before the tool marked it away: the
//! report counts those as losses, failed reconnects apart, and misroutes
//! (a delivery to a client a message was not for) should stay 0.

use std::time::Duration;

use tokio::time::Instant;

use crate::traffic::Churn;

/// How often the churner wakes; each wake kicks what the rate makes due.
const TICK: Duration = Duration::from_millis(10);

/// Kicks receivers (drawn from `receivers`) at `rate` per second until
/// `deadline`.
pub async fn churner(churn: &Churn, receivers: &[u64], rate: f64, deadline: Instant) {
    if receivers.is_empty() {
        return;
    }
    let started = Instant::now();
    let mut rng = fastrand::Rng::new();
    let mut kicked = 0u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < deadline {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while kicked < due {
            kicked += 1;
            // A receiver still reconnecting is skipped: draw another, a few times.
            for _ in 0..8 {
                if churn.kick(receivers[rng.usize(..receivers.len())]) {
                    break;
                }
            }
        }
    }
}
