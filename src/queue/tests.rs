//! The queue state machine without a runtime: deterministic scenarios and a
//! property test that no message is ever lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::json;

use super::msg::Who;
use super::state::{AckError, Action, Consumer, Message, MsgId, Queue};
use crate::metadata::{MetaValue, Metadata};
use crate::query::Query;
use crate::shard::{ConnRef, Dispatch};

const ACK: Duration = Duration::from_secs(10);
const DLQ: Duration = Duration::from_secs(20);

fn conn(n: u32) -> Who {
    Who::here(ConnRef {
        shard: 0,
        client: n,
        conn: n as u64,
    })
}

fn consumer(n: u32, color: &str) -> Arc<Consumer> {
    let mut metadata = Metadata::new();
    metadata.insert("color", MetaValue::plain(json!(color)));
    Arc::new(Consumer {
        conn: conn(n),
        app: "app".into(),
        restricted: false,
        metadata: Arc::new(metadata),
    })
}

fn msg(id: MsgId, color: Option<&str>) -> Arc<Message> {
    let target = match color {
        Some(c) => {
            json!({"application": "app", "ops": [{"path": "/color", "op": "$eq", "to": {"value": c}}]})
        }
        None => json!({"application": "app"}),
    };
    Arc::new(Message {
        id,
        target: Arc::new(Query::parse(&target).unwrap()),
        packet: Arc::new(Dispatch {
            t: "QUEUE",
            d: json!({"id": id}),
        }),
        bytes: 100 + id as usize,
    })
}

fn delivered(out: &[Action]) -> Vec<(u32, MsgId)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Deliver { to, msg } => Some((to.conn.client, msg.id)),
            _ => None,
        })
        .collect()
}

fn revoked(out: &[Action]) -> Vec<(u32, MsgId)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Revoke { from, id } => Some((from.conn.client, *id)),
            _ => None,
        })
        .collect()
}

fn checks(out: &[Action]) -> Vec<MsgId> {
    out.iter()
        .filter_map(|a| match a {
            Action::Check { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

#[test]
fn longest_waiting_matching_consumer_gets_the_message() {
    let t = Instant::now();
    let mut q = Queue::new(ACK, DLQ);
    let mut out = Vec::new();
    q.request(consumer(1, "red"), t, &mut out);
    q.request(consumer(2, "blue"), t, &mut out);
    q.request(consumer(3, "blue"), t, &mut out);
    q.push(msg(10, Some("blue")), t, &mut out);
    q.push(msg(11, None), t, &mut out);
    assert_eq!(delivered(&out), vec![(2, 10), (1, 11)]);
}

#[test]
fn unmatched_message_does_not_block_the_ones_behind() {
    let t = Instant::now();
    let mut q = Queue::new(ACK, DLQ);
    let mut out = Vec::new();
    q.push(msg(1, Some("green")), t, &mut out);
    q.push(msg(2, Some("red")), t, &mut out);
    assert_eq!(checks(&out), vec![1, 2]);
    out.clear();
    q.request(consumer(1, "red"), t, &mut out);
    assert_eq!(delivered(&out), vec![(1, 2)]);
    assert_eq!(q.depth(), 1);
}

#[test]
fn a_queue_handed_over_gives_back_its_credits_and_offers_what_is_not_in_flight() {
    let t = Instant::now();
    let mut q = Queue::new(ACK, DLQ);
    let mut out = Vec::new();
    q.request(consumer(1, "red"), t, &mut out);
    q.push(msg(1, None), t, &mut out); // in flight to 1
    q.push(msg(2, Some("green")), t, &mut out); // pending
    q.push(msg(3, Some("blue")), t, &mut out);
    q.checked(3, 0, 0, t, &mut out); // dead-lettered
    for _ in 0..2 {
        q.request(consumer(2, "red"), t, &mut out);
    }
    q.request(consumer(3, "red"), t, &mut out);
    assert_eq!(delivered(&out), vec![(1, 1)]);
    assert_eq!((q.depth(), q.in_flight(), q.dead_letters()), (1, 1, 1));

    let mut credits = q.withdraw_credits();
    credits.sort_by_key(|(who, _)| who.conn.client);
    assert_eq!(credits, vec![(conn(2), 2), (conn(3), 1)]);
    assert_eq!(q.credits(), 0);
    // A message pushed now waits: nobody's credit is left here.
    out.clear();
    q.push(msg(4, None), t, &mut out);
    assert!(delivered(&out).is_empty());

    let ids: Vec<MsgId> = q.movable(10).iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![2, 3, 4], "pending and dead, not in flight");
    assert_eq!(q.movable(2).len(), 2);
    let bytes = q.bytes();
    assert_eq!(q.moved(3).map(|m| m.id), Some(3));
    assert_eq!(q.bytes(), bytes - msg(3, None).bytes);
    assert!(q.moved(3).is_none(), "once");
    assert!(q.moved(1).is_none(), "in flight: stays");
    assert!(q.moved(2).is_some() && q.moved(4).is_some());
    // What was in flight is acked as usual; then nothing is left.
    assert!(q.ack(conn(1), 1).is_ok());
    assert!(q.is_idle());
    // No return of the moved dead letter is pending.
    out.clear();
    q.tick(t + DLQ * 2, &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn ack_rules_and_timeout_redelivery() {
    let t = Instant::now();
    let mut q = Queue::new(ACK, DLQ);
    let mut out = Vec::new();
    q.request(consumer(1, "red"), t, &mut out);
    q.push(msg(1, None), t, &mut out);
    assert_eq!(q.ack(conn(2), 1).unwrap_err(), AckError::NotYours);
    assert_eq!(q.ack(conn(1), 99).unwrap_err(), AckError::Unknown);
    // Not acked in time: taken back (its consumer is told), back in line,
    // to the next credit.
    out.clear();
    q.tick(t + ACK - Duration::from_millis(1), &mut out);
    assert!(out.is_empty());
    q.tick(t + ACK, &mut out);
    assert!(delivered(&out).is_empty());
    assert_eq!(revoked(&out), vec![(1, 1)]);
    assert_eq!(q.depth(), 1);
    q.request(consumer(2, "red"), t + ACK, &mut out);
    assert_eq!(delivered(&out), vec![(2, 1)]);
    assert_eq!(q.ack(conn(1), 1).unwrap_err(), AckError::NotYours);
    assert!(q.ack(conn(2), 1).is_ok());
    assert_eq!(q.ack(conn(2), 1).unwrap_err(), AckError::Unknown);
    assert!(q.is_idle());
    assert_eq!(q.stats().redelivered, 1);
}

#[test]
fn disconnect_redelivers_at_once_and_drops_credits() {
    let t = Instant::now();
    let mut q = Queue::new(ACK, DLQ);
    let mut out = Vec::new();
    q.request(consumer(1, "red"), t, &mut out);
    q.request(consumer(1, "red"), t, &mut out);
    q.request(consumer(2, "red"), t, &mut out);
    q.push(msg(1, None), t, &mut out);
    out.clear();
    q.gone(conn(1), t, &mut out);
    assert_eq!(delivered(&out), vec![(2, 1)]);
    assert!(revoked(&out).is_empty(), "nobody left to tell");
    assert_eq!(q.credits(), 0);
}

#[test]
fn a_timed_out_message_is_revoked_before_it_is_redelivered_to_the_same_client() {
    let t = Instant::now();
    let mut q = Queue::new(ACK, DLQ);
    let mut out = Vec::new();
    q.request(consumer(1, "red"), t, &mut out);
    q.request(consumer(1, "red"), t, &mut out);
    q.push(msg(1, None), t, &mut out);
    out.clear();
    q.tick(t + ACK, &mut out);
    // The consumer's shard must drop 1 before it counts 1 as held again.
    assert!(matches!(
        out.as_slice(),
        [Action::Revoke { from, id: 1 }, Action::Deliver { to, msg }]
            if from.conn.client == 1 && to.conn.client == 1 && msg.id == 1
    ));
}

#[test]
fn idle_only_when_nothing_is_held_and_nobody_waits() {
    let t = Instant::now();
    let mut q = Queue::new(ACK, DLQ);
    let mut out = Vec::new();
    assert!(q.is_idle());
    q.request(consumer(1, "red"), t, &mut out);
    assert!(!q.is_idle(), "a credit waits");
    q.cancel(conn(1));
    assert!(q.is_idle());
    q.push(msg(1, Some("blue")), t, &mut out);
    assert!(!q.is_idle(), "pending");
    q.checked(1, 0, 0, t, &mut out);
    assert_eq!(q.dead_letters(), 1);
    assert!(!q.is_idle(), "dead-lettered");
    out.clear();
    q.request(consumer(2, "blue"), t, &mut out);
    q.tick(t + DLQ, &mut out);
    assert_eq!(delivered(&out), vec![(2, 1)]);
    assert!(!q.is_idle(), "in flight");
    q.ack(conn(2), 1).unwrap();
    assert!(q.is_idle());
    assert_eq!(q.next_deadline(), None);
}

#[test]
fn dead_letters_return_after_dlq_time() {
    let t = Instant::now();
    let mut q = Queue::new(ACK, DLQ);
    let mut out = Vec::new();
    q.push(msg(1, Some("red")), t, &mut out);
    q.checked(1, 0, 0, t, &mut out);
    assert_eq!(q.dead_letters(), 1);
    // A matching consumer now waits, but the message is dead-lettered.
    out.clear();
    q.request(consumer(1, "red"), t, &mut out);
    assert!(delivered(&out).is_empty());
    q.tick(t + DLQ, &mut out);
    assert_eq!(delivered(&out), vec![(1, 1)]);
}

#[test]
fn metadata_update_lets_waiting_credits_match() {
    let t = Instant::now();
    let mut q = Queue::new(ACK, DLQ);
    let mut out = Vec::new();
    q.request(consumer(1, "red"), t, &mut out);
    q.push(msg(1, Some("blue")), t, &mut out);
    assert!(delivered(&out).is_empty());
    q.update(consumer(1, "blue"), t, &mut out);
    assert_eq!(delivered(&out), vec![(1, 1)]);
}

#[test]
fn cancel_withdraws_credits() {
    let t = Instant::now();
    let mut q = Queue::new(ACK, DLQ);
    let mut out = Vec::new();
    q.request(consumer(1, "red"), t, &mut out);
    q.cancel(conn(1));
    q.push(msg(1, None), t, &mut out);
    assert!(delivered(&out).is_empty());
}

#[derive(Debug, Clone)]
enum Step {
    Push(Option<u8>),
    Request(u8, u8),
    Cancel(u8),
    Ack(u8, u8),
    Gone(u8),
    Check(u8, bool),
    Advance(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        proptest::option::of(0..3u8).prop_map(Step::Push),
        (0..4u8, 0..3u8).prop_map(|(c, k)| Step::Request(c, k)),
        (0..4u8).prop_map(Step::Cancel),
        (0..4u8, 0..40u8).prop_map(|(c, i)| Step::Ack(c, i)),
        (0..4u8).prop_map(Step::Gone),
        (0..40u8, any::<bool>()).prop_map(|(i, m)| Step::Check(i, m)),
        (0..30u8).prop_map(Step::Advance),
    ]
}

const COLORS: [&str; 3] = ["red", "blue", "green"];

proptest! {
    /// Every message ever pushed is in exactly one place (pending, in
    /// flight, dead or acked), every delivery goes to a credit that was
    /// waiting, and no pending message matches a waiting credit.
    #[test]
    fn no_message_is_lost(steps in proptest::collection::vec(step(), 1..120)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut q = Queue::new(ACK, DLQ);
        let mut out = Vec::new();
        let mut next = 1u64;
        let mut acked = std::collections::BTreeSet::new();
        let mut inflight_of: std::collections::HashMap<MsgId, u32> = Default::default();
        let mut colors = [0u8; 4];
        for s in steps {
            out.clear();
            match s {
                Step::Push(c) => {
                    q.push(msg(next, c.map(|c| COLORS[c as usize])), now, &mut out);
                    next += 1;
                }
                Step::Request(c, k) => {
                    colors[c as usize] = k;
                    q.request(consumer(c as u32, COLORS[k as usize]), now, &mut out);
                }
                Step::Cancel(c) => q.cancel(conn(c as u32)),
                Step::Ack(c, i) => {
                    let id = i as u64;
                    let expect_ok = inflight_of.get(&id) == Some(&(c as u32));
                    let r = q.ack(conn(c as u32), id);
                    prop_assert_eq!(r.is_ok(), expect_ok);
                    if r.is_ok() {
                        acked.insert(id);
                        inflight_of.remove(&id);
                    }
                }
                Step::Gone(c) => q.gone(conn(c as u32), now, &mut out),
                Step::Check(i, m) => q.checked(i as u64, u64::from(m), 0, now, &mut out),
                Step::Advance(s) => {
                    now += Duration::from_secs(s as u64);
                    q.tick(now, &mut out);
                }
            }
            let (pending, inflight, dead) = q.ids();
            // Revocations name the consumer the message was delivered to.
            for (c, id) in revoked(&out) {
                prop_assert_eq!(inflight_of.get(&id), Some(&c));
            }
            // Deliveries reported match the in-flight set.
            inflight_of.retain(|id, _| inflight.contains(id));
            for (c, id) in delivered(&out) {
                inflight_of.insert(id, c);
            }
            let mut all: Vec<MsgId> = pending.iter().chain(&inflight).chain(&dead).copied().collect();
            all.extend(acked.iter().copied());
            all.sort();
            let expected: Vec<MsgId> = (1..next).collect();
            prop_assert_eq!(all, expected);
            prop_assert_eq!(inflight_of.len(), inflight.len());
            // The byte count is exactly the footprint of what is held.
            let held: usize = pending.iter().chain(&inflight).chain(&dead)
                .map(|&id| 100 + id as usize).sum();
            prop_assert_eq!(q.bytes(), held);
            q.check_invariant();
            let _ = colors;
        }
    }
}
