//! The exact wire text of every queue error: the `error` of invalid (op 3).
//! `extra_info` carries the details (queue, id, limit).

/// QUEUE on a queue already holding `max_queue_length` messages, or whose
/// message would take it past `max_queue_bytes` (`extra_info` names the
/// limit).
pub const QUEUE_FULL: &str = "queue full";
/// QUEUE whose message would take the server's queues past
/// `max_total_queue_bytes`.
pub const SERVER_QUEUES_FULL: &str = "server queue memory full";
/// QUEUE or QUEUE_REQUEST that would create a queue past `max_queues`.
pub const TOO_MANY_QUEUES: &str = "too many queues";
/// A queue name longer than `max_queue_name_length` bytes, in any queue
/// dispatch.
pub const QUEUE_NAME_TOO_LONG: &str = "queue name too long";
/// QUEUE whose payload is larger than `max_queue_message_size`.
pub const MESSAGE_TOO_LARGE: &str = "queue message too large";
/// QUEUE_REQUEST from a client already holding `max_queue_length`
/// credits on that queue (it could never use more), or
/// `max_queue_requests` on every queue together.
pub const TOO_MANY_CREDITS: &str = "too many queue requests";
/// QUEUE_ACK of an id that is not delivered and unacked.
pub const UNKNOWN_MESSAGE: &str = "unknown queue message";
/// QUEUE_ACK of a message delivered to another client.
pub const NOT_YOUR_MESSAGE: &str = "queue message delivered to another client";
/// QUEUE that will not be confirmed because the log cannot be written.
/// `extra_info` has the queue, the nonce and the cause; with an `id` the
/// message was queued before the write failed (it stays queued and is
/// written once the log recovers, so it may still be delivered), without
/// one it was refused and not queued.
pub const STORAGE_FAILED: &str = "queue storage failed";
/// QUEUE whose message the queue log cannot represent (e.g. a queue name
/// longer than the log's 65,535 bytes): not queued, not confirmed.
/// `extra_info` has the queue, the nonce and the cause.
pub const NOT_STORABLE: &str = "queue message cannot be stored";
/// QUEUE or QUEUE_REQUEST whose queue's owner, another node of the
/// cluster, cannot be reached now (its link is down): not queued, no
/// credit taken. `extra_info` has the queue (and the nonce).
pub const OWNER_UNREACHABLE: &str = "queue owner unreachable";

/// The constant for an error's wire text, as another node of the cluster
/// names it.
pub fn known(text: &str) -> Option<&'static str> {
    [
        QUEUE_FULL,
        SERVER_QUEUES_FULL,
        TOO_MANY_QUEUES,
        QUEUE_NAME_TOO_LONG,
        MESSAGE_TOO_LARGE,
        TOO_MANY_CREDITS,
        UNKNOWN_MESSAGE,
        NOT_YOUR_MESSAGE,
        STORAGE_FAILED,
        NOT_STORABLE,
        OWNER_UNREACHABLE,
    ]
    .into_iter()
    .find(|e| *e == text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_a_node_may_send_is_known_by_its_text_and_nothing_else() {
        for e in [
            QUEUE_FULL,
            SERVER_QUEUES_FULL,
            TOO_MANY_QUEUES,
            QUEUE_NAME_TOO_LONG,
            MESSAGE_TOO_LARGE,
            TOO_MANY_CREDITS,
            UNKNOWN_MESSAGE,
            NOT_YOUR_MESSAGE,
            STORAGE_FAILED,
            NOT_STORABLE,
            OWNER_UNREACHABLE,
        ] {
            // A copy of the text, as a frame brings it.
            let text: String = e.chars().collect();
            assert_eq!(known(&text), Some(e));
        }
        assert_eq!(known("queue ful"), None);
        assert_eq!(known(""), None);
    }
}
